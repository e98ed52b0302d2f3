//! Bootstrap tokens: named, with an expiry, a use count, labels they impose and whether their
//! enrolments need approval; stored as the SHA-256 of their secret only (settings
//! `bootstrapToken/{name}`), and held in memory (they are few) for enrolments.
//!
//! `data/bootstrap.token` holds the token named `default`, made at first start. The file and the
//! token stay in step: deleting the file revokes the token it held (at the next start), revoking
//! that token deletes the file, and a token written into the file by hand becomes `default` (the
//! one it replaces is revoked). The setting `bootstrapTokenFile` remembers which token the file
//! held; `-` once it holds none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tc_api::{
    API_VERSION, BootstrapToken, BootstrapTokenCreated, BootstrapTokenRequest, Event, EventType,
    JoinMaterial, ObjectRef, Timestamp,
};
use tc_store::Store;

use crate::audit::Note;
use crate::error::ApiError;
use crate::{Controller, tokens};

/// Settings key prefix of stored bootstrap tokens.
pub const TOKEN_SETTING: &str = "bootstrapToken/";

/// Settings key of the unnamed token hashes of earlier versions (a JSON array), migrated at start.
const LEGACY_HASHES_SETTING: &str = "bootstrapTokenHashes";

/// Settings key of the hash of the token `data/bootstrap.token` holds (`-` for none).
const FILE_SETTING: &str = "bootstrapTokenFile";

/// The name of the token in `data/bootstrap.token`.
pub const DEFAULT_TOKEN: &str = "default";

/// A token as stored: what is listed, and the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredToken {
    #[serde(flatten)]
    token: BootstrapToken,
    /// Lowercase hex SHA-256 of the secret.
    sha256: String,
}

/// Why a bootstrap token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No token has this secret (never had one, or it was revoked).
    #[error("invalid bootstrap token (unknown or revoked)")]
    Unknown,
    /// Expired.
    #[error("bootstrap token `{name}` expired at {at}")]
    Expired {
        /// The token.
        name: String,
        /// When.
        at: Timestamp,
    },
    /// Used as often as it may be.
    #[error("bootstrap token `{name}` has enrolled {max} clients, its maximum")]
    Exhausted {
        /// The token.
        name: String,
        /// Its maximum.
        max: u32,
    },
}

/// The bootstrap tokens of a controller.
#[derive(Debug)]
pub struct BootstrapTokens {
    tokens: Mutex<BTreeMap<String, StoredToken>>,
    /// `data/bootstrap.token`.
    file: PathBuf,
}

fn setting_key(name: &str) -> String {
    format!("{TOKEN_SETTING}{name}")
}

fn put(store: &dyn Store, stored: &StoredToken) -> tc_store::Result<()> {
    let value = serde_json::to_string(stored).expect("tokens serialize");
    store.put_setting(&setting_key(&stored.token.name), Some(&value))
}

fn fresh(name: &str, sha256: String, now: Timestamp) -> StoredToken {
    StoredToken {
        token: BootstrapToken {
            name: name.to_string(),
            creation_timestamp: now,
            expires: None,
            max_uses: None,
            uses: 0,
            labels: BTreeMap::new(),
            require_approval: false,
        },
        sha256,
    }
}

/// What [`BootstrapTokens::open`] did, for the start-up log.
#[derive(Debug, Default)]
pub struct Opened {
    /// The file's token was made now (first start).
    pub created_file: bool,
    /// Tokens revoked because the file no longer holds them.
    pub revoked: Vec<String>,
}

impl BootstrapTokens {
    /// Loads the stored tokens, migrates the unnamed hashes of earlier versions, and brings the
    /// tokens and `file` in step (see the module documentation). Blocking.
    pub fn open(
        store: &dyn Store,
        file: &Path,
        now: Timestamp,
    ) -> Result<(BootstrapTokens, Opened), crate::ServeError> {
        let io = |source| crate::ServeError::Io {
            path: file.display().to_string(),
            source,
        };
        let mut tokens = BTreeMap::new();
        for (key, value) in store.list_settings(TOKEN_SETTING)? {
            match serde_json::from_str::<StoredToken>(&value) {
                Ok(stored) => {
                    tokens.insert(stored.token.name.clone(), stored);
                }
                Err(error) => {
                    return Err(tc_store::StoreError::Corrupt {
                        key,
                        message: error.to_string(),
                    }
                    .into());
                }
            }
        }
        if let Some(text) = store.get_setting(LEGACY_HASHES_SETTING)? {
            let hashes: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
            for hash in hashes {
                if tokens.values().any(|t| t.sha256 == hash) {
                    continue;
                }
                let name = format!("token-{}", &hash[..hash.len().min(8)]);
                let stored = fresh(&name, hash, now);
                put(store, &stored)?;
                tokens.insert(name, stored);
            }
            store.put_setting(LEGACY_HASHES_SETTING, None)?;
        }
        let mut opened = Opened::default();
        let marker = store.get_setting(FILE_SETTING)?;
        let in_file = match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => None,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(io(error)),
        };
        let mut revoke_marked =
            |tokens: &mut BTreeMap<String, StoredToken>, marker: &str| -> tc_store::Result<()> {
                let held = tokens
                    .iter()
                    .find(|(_, t)| t.sha256 == marker)
                    .map(|(name, _)| name.clone());
                if let Some(name) = held {
                    store.put_setting(&setting_key(&name), None)?;
                    tokens.remove(&name);
                    opened.revoked.push(name);
                }
                Ok(())
            };
        let adopt = match (marker.as_deref(), in_file) {
            (Some(marker), Some(secret)) if tokens::hash(&secret) == marker => None,
            (Some(marker), Some(secret)) => {
                revoke_marked(&mut tokens, marker)?;
                Some(secret)
            }
            (Some(marker), None) => {
                if marker != "-" {
                    revoke_marked(&mut tokens, marker)?;
                    store.put_setting(FILE_SETTING, Some("-"))?;
                }
                None
            }
            (None, Some(secret)) => Some(secret),
            (None, None) => {
                let (secret, _) = tokens::load_or_create(file).map_err(io)?;
                opened.created_file = true;
                Some(secret)
            }
        };
        if let Some(secret) = adopt {
            let hash = tokens::hash(&secret);
            let existing = tokens
                .iter()
                .find(|(_, t)| t.sha256 == hash)
                .map(|(name, _)| name.clone());
            match existing {
                // A migrated unnamed token is the file's: it becomes `default`.
                Some(name) if name.starts_with("token-") && !tokens.contains_key(DEFAULT_TOKEN) => {
                    let mut stored = tokens.remove(&name).expect("found");
                    store.put_setting(&setting_key(&name), None)?;
                    stored.token.name = DEFAULT_TOKEN.to_string();
                    put(store, &stored)?;
                    tokens.insert(DEFAULT_TOKEN.to_string(), stored);
                }
                Some(_) => {}
                None => {
                    let name = if tokens.contains_key(DEFAULT_TOKEN) {
                        format!("{DEFAULT_TOKEN}-{}", &hash[..8])
                    } else {
                        DEFAULT_TOKEN.to_string()
                    };
                    let stored = fresh(&name, hash.clone(), now);
                    put(store, &stored)?;
                    tokens.insert(name, stored);
                }
            }
            store.put_setting(FILE_SETTING, Some(&hash))?;
        }
        Ok((
            BootstrapTokens {
                tokens: Mutex::new(tokens),
                file: file.to_path_buf(),
            },
            opened,
        ))
    }

    /// The token with this secret, if it may enrol a new client at `now`.
    pub fn check(&self, secret: &str, now: Timestamp) -> Result<BootstrapToken, TokenRefusal> {
        let token = self.find(secret)?;
        if let Some(at) = token.expires
            && now >= at
        {
            return Err(TokenRefusal::Expired {
                name: token.name,
                at,
            });
        }
        Ok(token)
    }

    /// The token with this secret, whatever its expiry and uses.
    fn find(&self, secret: &str) -> Result<BootstrapToken, TokenRefusal> {
        if secret.is_empty() {
            return Err(TokenRefusal::Unknown);
        }
        let hash = tokens::hash(secret);
        self.tokens
            .lock()
            .expect("token lock")
            .values()
            .find(|stored| stored.sha256 == hash)
            .map(|stored| stored.token.clone())
            .ok_or(TokenRefusal::Unknown)
    }

    /// Whether `token` may enrol one more client.
    pub fn check_uses(token: &BootstrapToken) -> Result<(), TokenRefusal> {
        match token.max_uses {
            Some(max) if token.uses >= max => Err(TokenRefusal::Exhausted {
                name: token.name.clone(),
                max,
            }),
            _ => Ok(()),
        }
    }

    /// Counts an enrolment made with the token `name`, durably. Callers hold the controller's
    /// enrolment lock. Blocking.
    pub fn record_use(&self, store: &dyn Store, name: &str) -> tc_store::Result<()> {
        let mut tokens = self.tokens.lock().expect("token lock");
        let Some(stored) = tokens.get_mut(name) else {
            return Ok(());
        };
        let mut updated = stored.clone();
        updated.token.uses = updated.token.uses.saturating_add(1);
        put(store, &updated)?;
        *stored = updated;
        Ok(())
    }

    /// Every token, by name.
    pub fn list(&self) -> Vec<BootstrapToken> {
        self.tokens
            .lock()
            .expect("token lock")
            .values()
            .map(|stored| stored.token.clone())
            .collect()
    }

    /// Makes a token; returns its secret with it. Blocking.
    fn create(
        &self,
        store: &dyn Store,
        request: &BootstrapTokenRequest,
        now: Timestamp,
    ) -> Result<(String, BootstrapToken), ApiError> {
        let secret = tokens::generate();
        let hash = tokens::hash(&secret);
        let name = match &request.name {
            Some(name) => name.clone(),
            None => format!("token-{}", &hash[..8]),
        };
        let invalid = |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message);
        if !tc_api::validate::is_dns_label(&name) {
            return Err(invalid(format!(
                "name: `{name}` is not a valid name: use at most 63 lowercase letters, digits and \
                 `-`, starting and ending with a letter or digit"
            )));
        }
        if let Err(error) = tc_proto::limits::check_labels(&request.labels, "labels") {
            return Err(invalid(error.to_string()));
        }
        let mut errors = tc_api::validate::Errors::default();
        tc_api::resources::refuse_system_labels(&request.labels, "labels", &mut errors);
        if let Err(errors) = errors.into_result() {
            return Err(invalid(errors.to_string()));
        }
        if request.ttl_seconds == Some(0) {
            return Err(invalid("ttlSeconds: must be at least 1".into()));
        }
        if request.max_uses == Some(0) {
            return Err(invalid("maxUses: must be at least 1".into()));
        }
        let mut tokens = self.tokens.lock().expect("token lock");
        if tokens.contains_key(&name) {
            return Err(ApiError::conflict(format!(
                "bootstrap token `{name}` already exists; revoke it first or choose another name"
            )));
        }
        let mut stored = fresh(&name, hash, now);
        stored.token.expires = request
            .ttl_seconds
            .map(|seconds| now.plus(Duration::from_secs(seconds)));
        stored.token.max_uses = request.max_uses;
        stored.token.labels = request.labels.clone();
        stored.token.require_approval = request.require_approval;
        put(store, &stored)?;
        let token = stored.token.clone();
        tokens.insert(name, stored);
        Ok((secret, token))
    }

    /// Revokes (deletes) the token `name`; the file is deleted when it held that token. Blocking.
    fn revoke(&self, store: &dyn Store, name: &str) -> Result<BootstrapToken, ApiError> {
        let mut tokens = self.tokens.lock().expect("token lock");
        let Some(stored) = tokens.get(name).cloned() else {
            return Err(ApiError::not_found(format!(
                "bootstrap token `{name}` not found; `tcadm token list` shows them"
            )));
        };
        store.put_setting(&setting_key(name), None)?;
        tokens.remove(name);
        if store.get_setting(FILE_SETTING)?.as_deref() == Some(stored.sha256.as_str()) {
            match std::fs::remove_file(&self.file) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => tracing::warn!(file = %self.file.display(), %error,
                    "the revoked token's file could not be deleted"),
            }
            store.put_setting(FILE_SETTING, Some("-"))?;
        }
        Ok(stored.token)
    }
}

/// `GET /apis/thinfleet.io/v1/bootstraptokens`: every token, without secrets.
pub async fn list(State(controller): State<Arc<Controller>>) -> Json<Value> {
    let items = controller.bootstrap.list();
    Json(json!({ "apiVersion": API_VERSION, "kind": "BootstrapTokenList", "items": items }))
}

/// `POST /apis/thinfleet.io/v1/bootstraptokens`: a new token, answered with its secret and the
/// join material (the only time the secret is shown). An empty body makes a token with the
/// defaults.
pub async fn create(
    State(controller): State<Arc<Controller>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(Extension<Note>, Json<BootstrapTokenCreated>), ApiError> {
    let request: BootstrapTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BootstrapTokenRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request(format!("invalid token request: {error}")))?
    };
    let now = Timestamp::now();
    let _guard = controller.enroll_lock.lock().await;
    let worker = controller.clone();
    let (secret, token) =
        tokio::task::spawn_blocking(move || worker.bootstrap.create(&*worker.store, &request, now))
            .await??;
    drop(_guard);
    controller
        .record(vec![Event::new(
            now,
            ObjectRef {
                kind: "BootstrapToken".into(),
                name: token.name.clone(),
            },
            EventType::Normal,
            "Created",
            describe(&token),
        )])
        .await;
    let ca_cert_hash = controller.join_ca_cert_hash();
    let join = JoinMaterial {
        server: server_url(&headers, &uri, ca_cert_hash.is_some()),
        token: secret.clone(),
        ca_cert_hash,
    };
    let note = Note::object("BootstrapToken", &token.name, describe(&token));
    Ok((
        Extension(note),
        Json(BootstrapTokenCreated {
            token: secret,
            bootstrap_token: token,
            join,
        }),
    ))
}

/// `DELETE /apis/thinfleet.io/v1/bootstraptokens/{name}`: revokes a token (new enrolments with
/// it are refused; clients it enrolled stay).
pub async fn revoke(
    State(controller): State<Arc<Controller>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<BootstrapToken>, ApiError> {
    let _guard = controller.enroll_lock.lock().await;
    let worker = controller.clone();
    let lookup = name.clone();
    let token =
        tokio::task::spawn_blocking(move || worker.bootstrap.revoke(&*worker.store, &lookup))
            .await??;
    drop(_guard);
    controller
        .record(vec![Event::new(
            Timestamp::now(),
            ObjectRef {
                kind: "BootstrapToken".into(),
                name,
            },
            EventType::Normal,
            "Revoked",
            format!(
                "bootstrap token `{}` revoked after {} enrolment(s)",
                token.name, token.uses
            ),
        )])
        .await;
    Ok(Json(token))
}

/// A token in a sentence, for events.
fn describe(token: &BootstrapToken) -> String {
    let mut text = format!("bootstrap token `{}` created", token.name);
    if let Some(at) = token.expires {
        text.push_str(&format!(", expires {at}"));
    }
    if let Some(max) = token.max_uses {
        text.push_str(&format!(", at most {max} enrolment(s)"));
    }
    if !token.labels.is_empty() {
        let labels: Vec<String> = token
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        text.push_str(&format!(", imposes {}", labels.join(",")));
    }
    if token.require_approval {
        text.push_str(", enrolments need approval");
    }
    text
}

/// The controller's URL as the request reached it.
/// The controller's URL as this request reached it: the `Host` header (HTTP/1.1) or the
/// `:authority` (HTTP/2, which hyper hands over as the URI's authority), with the scheme of the
/// controller's transport.
fn server_url(headers: &HeaderMap, uri: &axum::http::Uri, tls: bool) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()))
        .unwrap_or("127.0.0.1:7130");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_store::RedbStore;

    fn at(millis: u64) -> Timestamp {
        Timestamp::from_unix_millis(millis)
    }

    struct Setup {
        _dir: tempfile::TempDir,
        store: RedbStore,
        file: PathBuf,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb")).unwrap();
        let file = dir.path().join("bootstrap.token");
        Setup {
            _dir: dir,
            store,
            file,
        }
    }

    fn names(tokens: &BootstrapTokens) -> Vec<String> {
        tokens.list().into_iter().map(|t| t.name).collect()
    }

    #[test]
    fn the_first_start_writes_the_default_token_and_later_starts_keep_it() {
        let setup = setup();
        let (tokens, opened) = BootstrapTokens::open(&setup.store, &setup.file, at(1)).unwrap();
        assert!(opened.created_file);
        let secret = std::fs::read_to_string(&setup.file).unwrap();
        assert_eq!(tokens.check(secret.trim(), at(2)).unwrap().name, "default");
        let (tokens, opened) = BootstrapTokens::open(&setup.store, &setup.file, at(3)).unwrap();
        assert!(!opened.created_file && opened.revoked.is_empty());
        assert_eq!(names(&tokens), ["default"]);
    }

    #[test]
    fn deleting_the_token_file_revokes_its_token_for_good() {
        let setup = setup();
        let (tokens, _) = BootstrapTokens::open(&setup.store, &setup.file, at(1)).unwrap();
        let secret = std::fs::read_to_string(&setup.file).unwrap();
        assert!(tokens.check(secret.trim(), at(2)).is_ok());
        std::fs::remove_file(&setup.file).unwrap();
        let (tokens, opened) = BootstrapTokens::open(&setup.store, &setup.file, at(3)).unwrap();
        assert_eq!(opened.revoked, ["default"]);
        assert_eq!(
            tokens.check(secret.trim(), at(4)),
            Err(TokenRefusal::Unknown)
        );
        assert!(
            !setup.file.exists(),
            "no new token is made after the first start"
        );
        let (tokens, opened) = BootstrapTokens::open(&setup.store, &setup.file, at(5)).unwrap();
        assert!(opened.revoked.is_empty() && !opened.created_file);
        assert!(names(&tokens).is_empty());
    }

    #[test]
    fn a_token_written_into_the_file_replaces_the_default() {
        let setup = setup();
        let (tokens, _) = BootstrapTokens::open(&setup.store, &setup.file, at(1)).unwrap();
        let old = std::fs::read_to_string(&setup.file).unwrap();
        drop(tokens);
        std::fs::write(&setup.file, "my-own-token\n").unwrap();
        let (tokens, opened) = BootstrapTokens::open(&setup.store, &setup.file, at(2)).unwrap();
        assert_eq!(opened.revoked, ["default"]);
        assert_eq!(tokens.check("my-own-token", at(3)).unwrap().name, "default");
        assert_eq!(tokens.check(old.trim(), at(3)), Err(TokenRefusal::Unknown));
    }

    #[test]
    fn unnamed_hashes_of_earlier_versions_become_named_tokens() {
        let setup = setup();
        std::fs::write(&setup.file, "file-token\n").unwrap();
        let hashes =
            serde_json::to_string(&[tokens::hash("file-token"), tokens::hash("other")]).unwrap();
        setup
            .store
            .put_setting(LEGACY_HASHES_SETTING, Some(&hashes))
            .unwrap();
        let (tokens, _) = BootstrapTokens::open(&setup.store, &setup.file, at(1)).unwrap();
        let other = format!("token-{}", &tokens::hash("other")[..8]);
        assert_eq!(tokens.check("file-token", at(2)).unwrap().name, "default");
        assert_eq!(tokens.check("other", at(2)).unwrap().name, other);
        assert_eq!(
            setup.store.get_setting(LEGACY_HASHES_SETTING).unwrap(),
            None
        );
        assert_eq!(names(&tokens), ["default", other.as_str()]);
    }

    #[test]
    fn tokens_expire_count_their_uses_and_are_revoked() {
        let setup = setup();
        let (tokens, _) = BootstrapTokens::open(&setup.store, &setup.file, at(1)).unwrap();
        let request = BootstrapTokenRequest {
            name: Some("berlin".into()),
            ttl_seconds: Some(60),
            max_uses: Some(1),
            labels: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
            require_approval: true,
        };
        let (secret, token) = tokens.create(&setup.store, &request, at(1_000)).unwrap();
        assert_eq!(token.expires, Some(at(61_000)));
        assert!(matches!(
            tokens.create(&setup.store, &request, at(1_000)),
            Err(error) if error.code == StatusCode::CONFLICT
        ));
        let found = tokens.check(&secret, at(2_000)).unwrap();
        assert!(found.require_approval);
        BootstrapTokens::check_uses(&found).unwrap();
        tokens.record_use(&setup.store, "berlin").unwrap();
        let used = tokens.check(&secret, at(2_000)).unwrap();
        assert_eq!(
            BootstrapTokens::check_uses(&used),
            Err(TokenRefusal::Exhausted {
                name: "berlin".into(),
                max: 1
            })
        );
        assert_eq!(
            tokens.check(&secret, at(61_000)),
            Err(TokenRefusal::Expired {
                name: "berlin".into(),
                at: at(61_000)
            })
        );
        // Uses and everything else survive a restart; the secret is not stored.
        let (reopened, _) = BootstrapTokens::open(&setup.store, &setup.file, at(3_000)).unwrap();
        assert_eq!(reopened.check(&secret, at(3_000)).unwrap().uses, 1);
        let stored = setup
            .store
            .get_setting("bootstrapToken/berlin")
            .unwrap()
            .unwrap();
        assert!(!stored.contains(&secret));
        reopened.revoke(&setup.store, "berlin").unwrap();
        assert_eq!(
            reopened.check(&secret, at(3_000)),
            Err(TokenRefusal::Unknown)
        );
        assert!(
            reopened.revoke(&setup.store, "berlin").is_err(),
            "revoked once"
        );
        // Revoking `default` deletes the file that held it.
        reopened.revoke(&setup.store, "default").unwrap();
        assert!(!setup.file.exists());
    }

    #[test]
    fn invalid_token_requests_are_refused_with_the_field() {
        let setup = setup();
        let (tokens, _) = BootstrapTokens::open(&setup.store, &setup.file, at(1)).unwrap();
        for (request, field) in [
            (
                BootstrapTokenRequest {
                    name: Some("Berlin Site".into()),
                    ..Default::default()
                },
                "name",
            ),
            (
                BootstrapTokenRequest {
                    labels: BTreeMap::from([("bad key!".to_string(), "v".to_string())]),
                    ..Default::default()
                },
                "labels",
            ),
            (
                BootstrapTokenRequest {
                    max_uses: Some(0),
                    ..Default::default()
                },
                "maxUses",
            ),
        ] {
            let error = tokens.create(&setup.store, &request, at(2)).unwrap_err();
            assert_eq!(error.code, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(error.message.starts_with(field), "{}", error.message);
        }
        assert_eq!(names(&tokens), ["default"]);
    }
}
