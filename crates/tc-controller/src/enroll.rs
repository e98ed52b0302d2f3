//! Enrolment and sessions (`POST /agent/v1/enroll`, `POST /agent/v1/session`), and the
//! authentication of every other agent request by its session token.
//!
//! A client is its key: enrolment registers the public key an agent proves it holds; a session
//! is opened by signing a challenge with that key; every other request carries the session
//! token, checked with one HMAC. A bootstrap token only lets a new machine ask to join, and a
//! machine id is never a credential: a machine id enrolled under another key makes a pending
//! client an admin decides on.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tc_api::{
    BootstrapToken, Client, ClientSpec, Event, EventType, Kind, ObjectRef, PendingEnrollment,
    PendingReason, Timestamp,
};
use tc_proto::identity::{enrollment_message, session_message};
use tc_proto::{
    Challenge, EnrollRequest, EnrollResponse, EnrollState, IDENTITY_PROTOCOL_VERSION,
    REASON_SESSION_EXPIRED, REASON_SESSION_REVOKED, Session, SessionRequest, SessionResponse,
};

use crate::bootstrap::{BootstrapTokens, TokenRefusal};
use crate::error::ApiError;
use crate::fleet::{Admission, ClientSlot};
use crate::session::{SessionError, SignatureError, verify_signature};
use crate::{Controller, admission, tokens};

/// The address a request came from (the peer of the connection), when the server recorded it.
pub struct SourceAddress(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for SourceAddress {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SourceAddress(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// Authenticates an agent request by its session token: 401 without one, with an expired one
/// (`SessionExpired`) or one whose client was deleted or whose key was replaced
/// (`SessionRevoked`); 403 for the admin token.
pub fn authenticate_client(
    controller: &Controller,
    headers: &HeaderMap,
) -> Result<Arc<ClientSlot>, ApiError> {
    let token = tokens::bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "missing bearer token: enrol, then open a session (POST /agent/v1/session)",
        )
    })?;
    match controller.session_key.verify(token, Timestamp::now()) {
        Ok(claims) => {
            let revoked = |why: &str| {
                ApiError::unauthorized(format!("session revoked: {why}; enrol again"))
                    .with_reason(REASON_SESSION_REVOKED)
            };
            let slot = controller
                .fleet
                .by_uid(claims.uid)
                .ok_or_else(|| revoked("the client was deleted"))?;
            if slot.generation() != claims.generation {
                return Err(revoked("the client's key was replaced"));
            }
            Ok(slot)
        }
        Err(SessionError::Expired(at)) => Err(ApiError::unauthorized(format!(
            "session expired at {at}; open a new one (POST /agent/v1/session)"
        ))
        .with_reason(REASON_SESSION_EXPIRED)),
        Err(_) => {
            if controller.credentials.is_known(token) {
                return Err(ApiError::forbidden(
                    "an admin credential cannot be used on agent routes",
                ));
            }
            Err(ApiError::unauthorized(
                "invalid session token: enrol, then open a session (POST /agent/v1/session)",
            ))
        }
    }
}

/// The client an agent request authenticates as: an extractor that reads the bearer token in
/// place (the `HeaderMap` extractor would copy every header of every agent request).
pub struct AuthenticatedClient(pub Arc<ClientSlot>);

impl FromRequestParts<Arc<Controller>> for AuthenticatedClient {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        controller: &Arc<Controller>,
    ) -> Result<Self, Self::Rejection> {
        authenticate_client(controller, &parts.headers).map(AuthenticatedClient)
    }
}

fn signature_error(error: SignatureError) -> ApiError {
    match error {
        SignatureError::MalformedKey | SignatureError::Malformed => {
            ApiError::bad_request(error.to_string())
        }
        SignatureError::Mismatch => {
            ApiError::unauthorized(error.to_string()).with_reason("InvalidSignature")
        }
    }
}

fn token_error(refusal: TokenRefusal) -> ApiError {
    ApiError::unauthorized(refusal.to_string()).with_reason("InvalidBootstrapToken")
}

/// An answer to an enrolment: 200 when enrolled, 202 (with `Retry-After`) when pending.
fn answer(response: EnrollResponse) -> Response {
    match response.state {
        EnrollState::Pending => {
            let retry = response.retry_after_seconds.unwrap_or(30);
            let mut answer = (StatusCode::ACCEPTED, Json(response)).into_response();
            answer.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry),
            );
            answer
        }
        _ => Json(response).into_response(),
    }
}

/// What an enrolment finds out about the key and machine id before it decides.
enum Known {
    /// A client holds this key.
    Key(Client),
    /// A client enrolled before identities, whose agent proved its old client token.
    Legacy(Client),
    /// No client holds the key; these clients hold the machine id.
    New(Vec<Client>),
}

/// `POST /agent/v1/enroll`.
pub async fn enroll(
    State(controller): State<Arc<Controller>>,
    SourceAddress(source): SourceAddress,
    Json(request): Json<EnrollRequest>,
) -> Result<Response, ApiError> {
    let now = Timestamp::now();
    let refused = |reason: &str| controller.metrics.enrolment_refused(reason);
    if let Err(wait) = controller.enroll_limiter.check(source, now) {
        refused("rateLimited");
        return Err(ApiError::too_many_requests(
            "too many enrolments at once; try again later",
            wait,
        ));
    }
    if let Err(error) = tc_proto::limits::check_enroll(&request) {
        refused("invalid");
        return Err(error.into());
    }
    if request.public_key.is_empty() || request.protocol_version < IDENTITY_PROTOCOL_VERSION {
        refused("invalid");
        return Err(ApiError::bad_request(format!(
            "this controller enrols agents of protocol {IDENTITY_PROTOCOL_VERSION} or later, which \
             prove a key pair made on the client (publicKey, signature); upgrade tc-agent"
        ))
        .with_reason("ProtocolVersion"));
    }
    let machine_id = request.machine_id.trim().to_string();
    let message = enrollment_message(
        &machine_id,
        &request.public_key,
        &tokens::hash(&request.bootstrap_token),
    );
    if let Err(error) = verify_signature(&request.public_key, &message, &request.signature) {
        refused("badSignature");
        return Err(signature_error(error));
    }
    let token = controller
        .bootstrap
        .check(&request.bootstrap_token, now)
        .map_err(|refusal| {
            refused("badToken");
            token_error(refusal)
        })?;
    let _guard = controller.enroll_lock.lock().await;
    if let Some(block) = controller.blocks.refusing(&machine_id, &request.public_key) {
        refused("blocked");
        return Err(admission::refusal(&block));
    }
    let known = {
        let store = controller.store.clone();
        let key = request.public_key.clone();
        let machine = machine_id.clone();
        let previous = request.previous_client_token.clone();
        tokio::task::spawn_blocking(move || -> tc_store::Result<Known> {
            if let Some(client) = store.client_by_public_key(&key)? {
                return Ok(Known::Key(client));
            }
            let holders = store.clients_by_machine_id(&machine)?;
            if let Some(previous) = previous {
                let hash = tokens::hash(&previous);
                for holder in &holders {
                    let setting = format!(
                        "{}{}",
                        tc_store::LEGACY_CLIENT_TOKEN_SETTING,
                        holder.metadata.name
                    );
                    if holder.spec.public_key.is_empty()
                        && store.get_setting(&setting)?.as_deref() == Some(hash.as_str())
                    {
                        return Ok(Known::Legacy(holder.clone()));
                    }
                }
            }
            Ok(Known::New(holders))
        })
        .await??
    };
    let response = match known {
        Known::Key(client) => known_key(&controller, client, &request, &machine_id).await?,
        Known::Legacy(client) => adopt(&controller, client, &request, now).await?,
        Known::New(holders) => {
            BootstrapTokens::check_uses(&token).map_err(|refusal| {
                refused("badToken");
                token_error(refusal)
            })?;
            enrol_new(&controller, &request, machine_id, &token, holders, now).await?
        }
    };
    drop(_guard);
    controller.clients_changed.notify_one();
    Ok(answer(response))
}

fn enrolled(controller: &Controller, client: &Client, session: Option<Session>) -> EnrollResponse {
    let heartbeat_seconds = controller
        .fleet
        .get(&client.metadata.name)
        .map(|slot| slot.state.lock().expect("client lock").heartbeat_seconds)
        .unwrap_or(tc_api::resources::DEFAULT_HEARTBEAT_SECONDS);
    EnrollResponse {
        state: EnrollState::Enrolled,
        client_name: client.metadata.name.clone(),
        reason: None,
        message: None,
        retry_after_seconds: None,
        session,
        heartbeat_seconds,
        client_token: None,
    }
}

fn pending(controller: &Controller, client: &Client) -> EnrollResponse {
    let pending = client.spec.pending.as_ref();
    EnrollResponse {
        state: EnrollState::Pending,
        client_name: client.metadata.name.clone(),
        reason: pending.map(|p| p.reason),
        message: pending.map(|p| p.message.clone()),
        retry_after_seconds: Some(controller.config.pending_retry_after.as_secs().max(1) as u32),
        session: None,
        heartbeat_seconds: tc_api::resources::DEFAULT_HEARTBEAT_SECONDS,
        client_token: None,
    }
}

/// A session for a client, valid for the configured lifetime.
fn session_for(controller: &Controller, client: &Client, now: Timestamp) -> Option<Session> {
    let uid = client
        .metadata
        .uid
        .as_deref()
        .and_then(crate::session::parse_uid)?;
    let expires = now.plus(controller.config.session_lifetime);
    controller.metrics.sessions.inc();
    Some(Session {
        token: controller
            .session_key
            .mint(uid, client.spec.credential_generation, expires),
        expires_at: expires,
    })
}

/// The key is enrolled already: the same client (its agent lost its credentials, or asks whether
/// it was approved). Its labels follow what the agent declares now. No session comes with the
/// answer: the agent opens one by signing a challenge, so that a recorded enrolment request is
/// worth nothing.
async fn known_key(
    controller: &Arc<Controller>,
    stored: Client,
    request: &EnrollRequest,
    machine_id: &str,
) -> Result<EnrollResponse, ApiError> {
    let Some(slot) = controller.fleet.get(&stored.metadata.name) else {
        return Err(ApiError::internal(format!(
            "client/{} is stored but not in memory",
            stored.metadata.name
        )));
    };
    let mut client = slot.state.lock().expect("client lock").overlay(stored);
    if client.spec.pending.is_some() {
        return Ok(pending(controller, &client));
    }
    if client.spec.agent_labels != request.labels || client.spec.machine_id != machine_id {
        client.spec.agent_labels = request.labels.clone();
        client.spec.machine_id = machine_id.to_string();
        client.refresh_labels();
        controller
            .persister
            .write_objects(vec![client.clone()])
            .await
            .map_err(ApiError::internal)?;
        controller.fleet.insert(&client);
    }
    Ok(enrolled(controller, &client, None))
}

/// A client enrolled before identities, whose upgraded agent proved its old client token: it
/// keeps its name, labels and status and is bound to the agent's key from now on.
async fn adopt(
    controller: &Arc<Controller>,
    stored: Client,
    request: &EnrollRequest,
    now: Timestamp,
) -> Result<EnrollResponse, ApiError> {
    let name = stored.metadata.name.clone();
    let mut client = match controller.fleet.get(&name) {
        Some(slot) => slot.state.lock().expect("client lock").overlay(stored),
        None => stored,
    };
    client.spec.public_key = request.public_key.clone();
    client.spec.agent_labels = request.labels.clone();
    client.refresh_labels();
    controller
        .persister
        .write_objects(vec![client.clone()])
        .await
        .map_err(ApiError::internal)?;
    let store = controller.store.clone();
    let setting = format!("{}{name}", tc_store::LEGACY_CLIENT_TOKEN_SETTING);
    tokio::task::spawn_blocking(move || store.put_setting(&setting, None)).await??;
    controller.fleet.insert(&client);
    controller
        .record(vec![Event::new(
            now,
            ObjectRef::new(Kind::Client, &name),
            EventType::Normal,
            "KeyBound",
            "the upgraded agent proved its client token; the client is bound to its key",
        )])
        .await;
    let session = session_for(controller, &client, now);
    Ok(enrolled(controller, &client, session))
}

/// A key never seen: a new client, pending when the machine id is enrolled under another key
/// or approval is required.
async fn enrol_new(
    controller: &Arc<Controller>,
    request: &EnrollRequest,
    machine_id: String,
    token: &BootstrapToken,
    holders: Vec<Client>,
    now: Timestamp,
) -> Result<EnrollResponse, ApiError> {
    let pending = if !holders.is_empty() {
        let enrolled_as: Vec<String> = holders.iter().map(|c| c.metadata.name.clone()).collect();
        Some(PendingEnrollment {
            reason: PendingReason::DuplicateMachineId,
            message: format!(
                "machine id already enrolled under another key (as {}): cloned image or \
                 re-imaged machine; approve it as a new client, or with --replace as the \
                 replacement of the old one, or deny it",
                enrolled_as.join(", ")
            ),
            enrolled_as,
            since: now,
        })
    } else if controller.config.require_approval || token.require_approval {
        let by = if token.require_approval {
            format!("bootstrap token `{}`", token.name)
        } else {
            "the controller".to_string()
        };
        Some(PendingEnrollment {
            reason: PendingReason::ApprovalRequired,
            message: format!("{by} requires an admin's approval of new clients"),
            enrolled_as: vec![],
            since: now,
        })
    } else {
        None
    };
    let base = client_name(&request.name, &request.hostname);
    let mut name = base.clone();
    let mut suffix = 2;
    while controller.fleet.get(&name).is_some() {
        let tail = format!("-{suffix}");
        name = format!(
            "{}{tail}",
            &base[..base.len().min(63 - tail.len())].trim_end_matches('-')
        );
        suffix += 1;
    }
    let client = Client::new(
        &name,
        ClientSpec {
            machine_id,
            public_key: request.public_key.clone(),
            credential_generation: 0,
            bootstrap_token: Some(token.name.clone()),
            pending: pending.clone(),
            decommission: false,
            agent_labels: request.labels.clone(),
            // Labels the token imposes are admin labels: they win over the agent's, and the
            // agent cannot change them.
            admin_labels: token.labels.clone(),
        },
    );
    let worker = controller.clone();
    let token_name = token.name.clone();
    let client = tokio::task::spawn_blocking(move || -> Result<Client, ApiError> {
        worker.bootstrap.record_use(&*worker.store, &token_name)?;
        Ok(worker.store.create_client(client, now)?)
    })
    .await??;
    controller.fleet.insert(&client);
    controller.metrics.enrolments.inc();
    let (type_, reason, message) = match &pending {
        Some(pending) if pending.reason == PendingReason::DuplicateMachineId => (
            EventType::Warning,
            "DuplicateMachineId",
            format!(
                "agent on {} waits for approval: {}",
                request.hostname, pending.message
            ),
        ),
        Some(pending) => (
            EventType::Normal,
            "EnrolmentPending",
            format!(
                "agent on {} waits for approval: {}",
                request.hostname, pending.message
            ),
        ),
        None => (
            EventType::Normal,
            "Enrolled",
            format!(
                "agent on {} enrolled with bootstrap token `{}`",
                request.hostname, token.name
            ),
        ),
    };
    // Concurrent enrolments record their events in one transaction.
    let event = Event::new(
        now,
        ObjectRef::new(Kind::Client, &name),
        type_,
        reason,
        message,
    );
    if let Err(error) = controller
        .persister
        .write_statuses(vec![], vec![event])
        .await
    {
        tracing::error!(%error, "recording an enrolment event failed");
    }
    if pending.is_some() {
        return Ok(self::pending(controller, &client));
    }
    let session = session_for(controller, &client, now);
    Ok(enrolled(controller, &client, session))
}

/// A valid client name from what the agent asked for.
pub fn client_name(requested: &str, hostname: &str) -> String {
    let source = if requested.trim().is_empty() {
        hostname
    } else {
        requested
    };
    let mut name: String = source
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    name = name
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.is_empty() {
        "client".to_string()
    } else {
        name
    }
}

/// `POST /agent/v1/session`: a challenge, or for a challenge signed with the client's key, a
/// session.
pub async fn session(
    State(controller): State<Arc<Controller>>,
    Json(request): Json<SessionRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    tc_proto::limits::check_session(&request)?;
    let now = Timestamp::now();
    let name = request.client_name.as_str();
    let not_enrolled = || {
        ApiError::unauthorized(format!(
            "client `{name}` has no credential (deleted, denied or waiting for approval); enrol \
             again"
        ))
        .with_reason(REASON_SESSION_REVOKED)
    };
    let slot = controller.fleet.get(name).ok_or_else(not_enrolled)?;
    if slot.uid == 0 || slot.state.lock().expect("client lock").admission == Admission::Pending {
        return Err(not_enrolled());
    }
    if request.challenge.is_empty() {
        let expires = now.plus(controller.config.challenge_lifetime);
        return Ok(Json(SessionResponse {
            challenge: Some(Challenge {
                value: controller.session_key.challenge(slot.uid, expires),
                expires_at: expires,
            }),
            session: None,
        }));
    }
    match controller
        .session_key
        .check_challenge(&request.challenge, slot.uid, now)
    {
        Ok(()) => {}
        Err(SessionError::Expired(at)) => {
            return Err(ApiError::unauthorized(format!(
                "the challenge expired at {at}; ask for a new one"
            ))
            .with_reason("ChallengeExpired"));
        }
        Err(_) => {
            return Err(ApiError::unauthorized(
                "not a challenge this controller issued to this client; ask for a new one",
            )
            .with_reason("InvalidChallenge"));
        }
    }
    // Read before the stored key: a key replaced in between makes the session useless.
    let generation = slot.generation();
    let store = controller.store.clone();
    let lookup = name.to_string();
    let stored = tokio::task::spawn_blocking(move || store.get_client(&lookup))
        .await??
        .ok_or_else(not_enrolled)?;
    if stored.spec.public_key.is_empty() || stored.spec.credential_generation != generation {
        return Err(not_enrolled());
    }
    let message = session_message(name, &request.challenge);
    verify_signature(&stored.spec.public_key, &message, &request.signature)
        .map_err(signature_error)?;
    let expires = now.plus(controller.config.session_lifetime);
    controller.metrics.sessions.inc();
    Ok(Json(SessionResponse {
        challenge: None,
        session: Some(Session {
            token: controller.session_key.mint(slot.uid, generation, expires),
            expires_at: expires,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_sanitized() {
        assert_eq!(
            client_name("", "Kiosk_01.example.com"),
            "kiosk-01.example.com"
        );
        assert_eq!(client_name("Front Desk", "h"), "front-desk");
        assert_eq!(client_name("--", ""), "client");
        assert_eq!(client_name(&"a".repeat(100), "").len(), 63);
    }
}
