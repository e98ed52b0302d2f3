//! Artifacts of the releases in an apply: blobs already stored, files and package directories on
//! the controller's disk (the watched directory), URLs fetched once, and digests a dry run accepts
//! without their blob.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::StatusCode;
use futures_util::StreamExt;
use tc_api::{ArtifactStatus, Cause, Object, SourcedObject};
use tc_proto::error_chain;

use super::{ApplyRequest, ArtifactPaths};
use crate::Controller;
use crate::blobs::BlobStore;
use crate::error::ApiError;

/// Artifact digests by path, valid while the path's fingerprint (sizes, times, inodes and names
/// of everything below it) stays the same.
#[derive(Debug, Default)]
pub struct ArtifactCache {
    entries: Mutex<HashMap<PathBuf, (u64, ArtifactStatus)>>,
}

impl ArtifactCache {
    fn get(&self, path: &Path, fingerprint: u64) -> Option<ArtifactStatus> {
        let entries = self.entries.lock().expect("artifact cache lock");
        entries
            .get(path)
            .filter(|(known, _)| *known == fingerprint)
            .map(|(_, status)| status.clone())
    }

    fn insert(&self, path: PathBuf, fingerprint: u64, status: ArtifactStatus) {
        self.entries
            .lock()
            .expect("artifact cache lock")
            .insert(path, (fingerprint, status));
    }
}

/// A fingerprint of a file or of a directory tree: names, types, sizes, modes, inodes and
/// modification and change times. Any write changes the change time, so a digest cached under a
/// fingerprint stays valid while the fingerprint does.
fn fingerprint(path: &Path) -> std::io::Result<u64> {
    use std::hash::{Hash, Hasher};
    fn visit(path: &Path, hasher: &mut std::hash::DefaultHasher) -> std::io::Result<()> {
        let metadata = std::fs::metadata(path)?;
        metadata.len().hash(hasher);
        metadata.is_dir().hash(hasher);
        metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .hash(hasher);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            (
                metadata.ino(),
                metadata.mode(),
                metadata.ctime(),
                metadata.ctime_nsec(),
            )
                .hash(hasher);
        }
        if metadata.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            for entry in entries {
                entry.file_name().hash(hasher);
                visit(&entry, hasher)?;
            }
        }
        Ok(())
    }
    let mut hasher = std::hash::DefaultHasher::new();
    visit(path, &mut hasher)?;
    Ok(hasher.finish())
}

/// Artifacts resolved for an apply.
#[derive(Default)]
pub(super) struct Resolved {
    /// Release name -> artifact in the blob store.
    pub(super) artifacts: BTreeMap<String, ArtifactStatus>,
    /// Release name -> incoming sha256, also where the blob is not stored yet (dry run).
    pub(super) digests: BTreeMap<String, String>,
    /// Artifacts a dry run accepted without their blob.
    pub(super) warnings: Vec<String>,
}

impl Resolved {
    fn insert(&mut self, name: &str, sha256: String, size: u64) {
        self.digests.insert(name.to_string(), sha256.clone());
        self.artifacts
            .insert(name.to_string(), ArtifactStatus { sha256, size });
    }
}

/// The error for the artifact of the release `name` defined by `sourced`.
fn artifact_error(sourced: &SourcedObject, name: &str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("{}: packagerelease/{name}: {message}", sourced.file),
    )
    .with_causes(vec![Cause {
        file: Some(sourced.file.clone()),
        line: Some(sourced.position.line),
        column: Some(sourced.position.column),
        field: Some("spec.artifact".into()),
        message,
    }])
}

/// Fills in `artifact.signature` of each release whose `artifact.path` names a zip on the
/// controller (the watched directory) with the `ZIP.minisig` file beside it, when the manifest
/// gives none and that file exists. A package directory packed by the controller has no such
/// file: its release carries the signature of the packed zip in the manifest, or none.
pub(super) fn attach_signatures(
    decoded: &mut [SourcedObject],
    request: &ApplyRequest,
) -> Result<(), ApiError> {
    if request.artifact_paths != ArtifactPaths::RelativeToManifest {
        return Ok(());
    }
    for sourced in decoded.iter_mut() {
        let file = sourced.file.clone();
        let Object::PackageRelease(release) = &mut sourced.object else {
            continue;
        };
        let artifact = &release.spec.artifact;
        let (Some(path), None) = (&artifact.path, &artifact.signature) else {
            continue;
        };
        let full = resolve_relative(&file, path);
        if !full.is_file() {
            continue;
        }
        let mut minisig = full.into_os_string();
        minisig.push(".minisig");
        let minisig = PathBuf::from(minisig);
        let text = match std::fs::read_to_string(&minisig) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                let name = release.metadata.name.clone();
                return Err(artifact_error(
                    sourced,
                    &name,
                    format!("cannot read {}: {error}", minisig.display()),
                ));
            }
        };
        if let Err(reason) = tc_api::resources::check_signature(&text) {
            let name = release.metadata.name.clone();
            return Err(artifact_error(
                sourced,
                &name,
                format!("{} {reason}", minisig.display()),
            ));
        }
        release.spec.artifact.signature = Some(text);
    }
    Ok(())
}

/// With `--require-signed`: refuses the request when a release in it has no signature, naming
/// every such release and its file.
pub(super) fn check_signed(decoded: &[SourcedObject]) -> Result<(), ApiError> {
    let mut causes = vec![];
    let mut messages = vec![];
    for sourced in decoded {
        let Object::PackageRelease(release) = &sourced.object else {
            continue;
        };
        if release.spec.artifact.signature.is_some() {
            continue;
        }
        let message = format!(
            "packagerelease/{} has no spec.artifact.signature, and this controller accepts only \
             signed releases (--require-signed): sign the zip with `tcadm sign --key KEY ZIP`",
            release.metadata.name
        );
        messages.push(format!("{}: {message}", sourced.file));
        causes.push(Cause {
            file: Some(sourced.file.clone()),
            line: Some(sourced.position.line),
            column: Some(sourced.position.column),
            field: Some("spec.artifact.signature".into()),
            message,
        });
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, messages.join("\n")).with_causes(causes))
}

/// Blobs fetched from `artifact.url`s, by release name.
pub(super) type Fetched = BTreeMap<String, crate::blobs::BlobInfo>;

impl Controller {
    /// Fetches the `artifact.url` of every release whose blob is not stored yet (not in a dry
    /// run). Called before the apply lock is taken, so that a slow URL holds up no other apply;
    /// each fetch is bounded by [`crate::Config::artifact_connect_timeout`] and
    /// [`crate::Config::artifact_fetch_timeout`].
    pub(super) async fn fetch_url_artifacts(
        &self,
        decoded: &[SourcedObject],
        request: &ApplyRequest,
    ) -> Result<Fetched, ApiError> {
        let mut fetched = Fetched::new();
        if request.dry_run {
            return Ok(fetched);
        }
        for sourced in decoded {
            let Object::PackageRelease(release) = &sourced.object else {
                continue;
            };
            let artifact = &release.spec.artifact;
            let (None, Some(url)) = (&artifact.path, &artifact.url) else {
                continue;
            };
            let declared = artifact.sha256.as_deref();
            if let Some(sha) = declared
                && self.blobs.stat(sha).await.is_some()
            {
                continue;
            }
            let name = &release.metadata.name;
            let info = self
                .fetch_url(url, declared)
                .await
                .map_err(|e| artifact_error(sourced, name, format!("fetching {url}: {e}")))?;
            fetched.insert(name.clone(), info);
        }
        Ok(fetched)
    }

    /// Imports (or, in a dry run, only checks) the artifact of every release; `fetched` holds the
    /// blobs of `artifact.url`s fetched before.
    pub(super) async fn resolve_artifacts(
        &self,
        decoded: &[SourcedObject],
        request: &ApplyRequest,
        mut fetched: Fetched,
    ) -> Result<Resolved, ApiError> {
        let mut resolved = Resolved::default();
        for sourced in decoded {
            let Object::PackageRelease(release) = &sourced.object else {
                continue;
            };
            let artifact = &release.spec.artifact;
            let name = &release.metadata.name;
            let fail = |message: String| artifact_error(sourced, name, message);
            let declared = artifact.sha256.as_deref();
            // A blob already in the store satisfies any source.
            if let Some(sha) = declared
                && let Some(size) = self.blobs.stat(sha).await
            {
                resolved.insert(name, sha.to_string(), size);
                continue;
            }
            let info = match (&artifact.path, &artifact.url, &request.artifact_paths) {
                (Some(path), _, ArtifactPaths::RelativeToManifest) => {
                    let full = resolve_relative(&sourced.file, path);
                    let print = match &request.artifact_cache {
                        Some(_) => {
                            let path = full.clone();
                            tokio::task::spawn_blocking(move || fingerprint(&path).ok()).await?
                        }
                        None => None,
                    };
                    if let Some(status) =
                        self.cached_artifact(request, &full, print, declared).await
                    {
                        resolved.insert(name, status.sha256, status.size);
                        continue;
                    }
                    let info = if full.is_dir() {
                        // A package source directory: packed reproducibly, so its sha256 is stable.
                        let dir = full.clone();
                        let bytes = tokio::task::spawn_blocking(move || tc_pack::pack_dir(&dir))
                            .await?
                            .map_err(|e| fail(format!("packing {}: {e}", full.display())))?;
                        self.blobs.put_bytes(bytes, declared, request.dry_run).await
                    } else if request.dry_run {
                        BlobStore::digest_file(&full).await
                    } else {
                        self.blobs.put_file(&full, declared).await
                    }
                    .map_err(|e| fail(format!("artifact {}: {e}", full.display())))?;
                    if let (Some(cache), Some(print), false) =
                        (&request.artifact_cache, print, request.dry_run)
                    {
                        cache.insert(
                            full,
                            print,
                            ArtifactStatus {
                                sha256: info.sha256.clone(),
                                size: info.size,
                            },
                        );
                    }
                    info
                }
                (Some(_), _, ArtifactPaths::UploadedOnly)
                    if request.dry_run && declared.is_some() =>
                {
                    // `tcadm diff` and `apply --dry-run` hash local zips without uploading them.
                    let sha = declared.unwrap_or_default();
                    resolved.digests.insert(name.clone(), sha.to_string());
                    resolved.warnings.push(format!(
                        "packagerelease/{name}: blob sha256:{sha} is not on the controller yet; \
                         applying uploads it first"
                    ));
                    continue;
                }
                (Some(path), _, ArtifactPaths::UploadedOnly) => {
                    return Err(fail(format!(
                        "artifact.path `{path}` is not on the controller: upload the zip first (`tcadm apply` does this, \
                         or `tcadm push FILE`) and give its sha256"
                    )));
                }
                (None, Some(url), _) => {
                    if request.dry_run {
                        continue;
                    }
                    // Never fetched here, under the apply lock: the blob was fetched before, or
                    // was stored then and has gone since.
                    fetched.remove(name.as_str()).ok_or_else(|| {
                        fail(format!(
                            "the blob of {url} is no longer in the blob store; apply again"
                        ))
                    })?
                }
                (None, None, _) => {
                    return Err(fail(format!(
                        "blob sha256:{} is not in the blob store; upload it with `tcadm push` or PUT /blobs",
                        declared.unwrap_or("?")
                    )));
                }
            };
            resolved.insert(name, info.sha256, info.size);
        }
        Ok(resolved)
    }

    /// The artifact imported before from `path`, if the path is unchanged since and its blob is
    /// still stored.
    async fn cached_artifact(
        &self,
        request: &ApplyRequest,
        path: &Path,
        print: Option<u64>,
        declared: Option<&str>,
    ) -> Option<ArtifactStatus> {
        let status = request.artifact_cache.as_ref()?.get(path, print?)?;
        if declared.is_some_and(|d| d != status.sha256) {
            return None;
        }
        self.blobs.stat(&status.sha256).await?;
        Some(status)
    }

    async fn fetch_url(
        &self,
        url: &str,
        expected: Option<&str>,
    ) -> Result<crate::blobs::BlobInfo, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let stream = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| error_chain(&e)));
        self.blobs
            .put_stream(stream, expected)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `path` relative to the directory of `manifest` (absolute paths stay as they are).
fn resolve_relative(manifest: &str, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    Path::new(manifest)
        .parent()
        .unwrap_or(Path::new("."))
        .join(path)
}
