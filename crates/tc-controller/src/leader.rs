//! Leadership of controller replicas on one PostgreSQL database: exactly one replica leads (it
//! runs the reconcile pass, the task loop and the watched directory, and alone writes); the
//! others follow and serve (see [`crate::follower`]) and take over when its lease expires.
//!
//! A replica takes the lease before it opens as the leader ([`wait`]), so it starts from what
//! the previous leader committed; from then on its store is fenced (`PgStore::fence`): a write
//! committed after another replica took the lease over is impossible. The lease row also records
//! where the leader serves (`--advertise-url`), for the followers to forward to. The leader
//! renews its lease every third of its time to live ([`keep`]); when it finds the lease taken by
//! another replica it stops, and its supervisor (systemd, Kubernetes) starts it again, as a
//! follower. A database that cannot be reached is not a loss of the lease: writes fail (503) and
//! renewing goes on until the database is back. A leader stopping cleanly gives the lease up, so
//! a follower takes over at once.
//!
//! The replicas must share the files of the data directory that the database does not hold (the
//! CA, the session key, the admin and bootstrap tokens): [`check_shared_files`] records their
//! fingerprints in the database at the first start and refuses a replica whose files differ.

use std::sync::Arc;
use std::time::Duration;

use tc_store::{LeaseState, PgStore, Store};
use tokio::sync::watch;

use crate::ServeError;

/// How long a lease lasts unless renewed: another replica takes over at most this long (and one
/// poll) after the leader stops renewing.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often a standby tries to take the lease.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// This replica's name in the lease: the configured name (the host's by default) and a random
/// part, new at every start, so that a restarted process never passes for its predecessor.
pub fn holder_name(configured: Option<&str>) -> String {
    let base = configured
        .map(str::to_string)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_string())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "controller".to_string());
    format!("{base}/{}", &crate::tokens::generate()[..8])
}

/// The lease this replica holds.
#[derive(Clone, Debug)]
pub struct Leadership {
    store: Arc<PgStore>,
    /// This replica's name in the lease.
    pub holder: String,
    /// The epoch it took the lease at.
    pub epoch: u64,
    /// Where it serves, for the followers (recorded with the lease).
    pub url: Option<String>,
}

async fn acquire(
    store: &Arc<PgStore>,
    holder: &str,
    url: Option<&str>,
) -> Result<LeaseState, tc_store::StoreError> {
    let (store, holder, url) = (store.clone(), holder.to_string(), url.map(str::to_string));
    tokio::task::spawn_blocking(move || {
        store.acquire_lease_serving(&holder, url.as_deref(), LEASE_TTL)
    })
    .await
    .map_err(|e| tc_store::StoreError::Database(format!("take the leader lease: {e}")))?
}

/// Waits until this replica holds the lease and fences `store` at the epoch taken; `None` when
/// `shutdown` came first. With `give_way`, a lease another replica holds ends the wait with
/// [`ServeError::NotLeading`] (the replica follows again, see [`crate::follower`]) instead.
pub async fn wait(
    store: Arc<PgStore>,
    holder: String,
    url: Option<String>,
    give_way: bool,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Leadership>, ServeError> {
    let mut announced = None::<String>;
    loop {
        match acquire(&store, &holder, url.as_deref()).await {
            Ok(LeaseState::Held { epoch }) => {
                store.fence(&holder, epoch);
                tracing::info!(replica = %holder, epoch, "took the leader lease: this replica serves");
                return Ok(Some(Leadership {
                    store,
                    holder,
                    epoch,
                    url,
                }));
            }
            Ok(LeaseState::HeldBy { holder: leader, .. }) if give_way => {
                return Err(ServeError::NotLeading(leader));
            }
            Ok(LeaseState::HeldBy {
                holder: leader,
                expires_in,
            }) => {
                if announced.as_deref() != Some(leader.as_str()) {
                    tracing::info!(replica = %holder, leader = %leader,
                        lease_expires_in = ?expires_in,
                        "another replica leads; waiting for its lease");
                    announced = Some(leader);
                }
            }
            Err(error) => tracing::warn!(replica = %holder, %error,
                "cannot reach the database to take the leader lease; trying again"),
        }
        tokio::select! {
            () = tokio::time::sleep(STANDBY_POLL) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return Ok(None);
                }
            }
        }
    }
}

/// Renews the lease every third of its time to live until `stopping`; returns an error saying
/// who took it when another replica did (the controller then stops). On a clean stop the caller
/// gives the lease up ([`Leadership::release`]) once its last writes are flushed.
pub async fn keep(
    leadership: Leadership,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), String> {
    let every = LEASE_TTL / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            changed = stopping.changed() => {
                if changed.is_err() || *stopping.borrow() {
                    break;
                }
                continue;
            }
        }
        match acquire(
            &leadership.store,
            &leadership.holder,
            leadership.url.as_deref(),
        )
        .await
        {
            Ok(LeaseState::Held { epoch }) if epoch == leadership.epoch => {}
            Ok(LeaseState::Held { epoch }) => {
                return Err(format!(
                    "the leader lease moved to epoch {epoch} (this replica took epoch {})",
                    leadership.epoch
                ));
            }
            Ok(LeaseState::HeldBy { holder, .. }) => {
                return Err(format!(
                    "replica {holder} took the leader lease over from {}",
                    leadership.holder
                ));
            }
            Err(error) => tracing::warn!(replica = %leadership.holder, %error,
                "cannot renew the leader lease; writes fail until the database is back"),
        }
    }
    Ok(())
}

/// [`keep`] running from the moment the lease is taken; stopped when dropped before
/// [`Keeper::into_parts`].
pub struct Keeper {
    task: Option<tokio::task::JoinHandle<()>>,
    lost: Option<tokio::sync::oneshot::Receiver<String>>,
}

impl Keeper {
    /// Starts renewing `leadership` until `stopping`.
    pub fn start(leadership: Leadership, stopping: watch::Receiver<bool>) -> Keeper {
        let (lost_tx, lost) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            if let Err(reason) = keep(leadership, stopping).await {
                let _ = lost_tx.send(reason);
            }
        });
        Keeper {
            task: Some(task),
            lost: Some(lost),
        }
    }

    /// The renewing task, and what says why the lease was lost if it is.
    pub fn into_parts(
        mut self,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Receiver<String>,
    ) {
        (
            self.task.take().expect("a keeper's task"),
            self.lost.take().expect("a keeper's receiver"),
        )
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Leadership {
    /// The store this replica leads (for the change feed's upkeep and announcements).
    pub fn store(&self) -> &Arc<PgStore> {
        &self.store
    }

    /// Gives the lease up (a clean stop), so that a standby takes over without waiting.
    pub async fn release(&self) {
        let (store, holder) = (self.store.clone(), self.holder.clone());
        match tokio::task::spawn_blocking(move || store.release_lease(&holder)).await {
            Ok(Ok(())) => tracing::info!(replica = %self.holder, "gave the leader lease up"),
            Ok(Err(error)) => tracing::warn!(replica = %self.holder, %error,
                "cannot give the leader lease up: another replica takes over when it expires"),
            Err(error) => tracing::warn!(%error, "cannot give the leader lease up"),
        }
    }
}

/// A file of the data directory that every replica must have the same.
pub struct SharedFile {
    /// What it is, for messages.
    pub what: &'static str,
    /// Where it is.
    pub path: std::path::PathBuf,
    /// Its fingerprint; `None` when it does not exist (yet).
    pub fingerprint: Option<String>,
    /// The fingerprint of the file it replaced, when it replaces the recorded one legitimately
    /// (the CA after `tc-controller ca rotate`: `pki/previous-ca.crt`).
    pub replaced: Option<String>,
}

fn fingerprint(path: &std::path::Path) -> Result<Option<String>, ServeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(crate::tokens::hash(text.trim()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ServeError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The files of `config`'s data directory the replicas share: the CA the controller generated
/// (not a certificate given with `--tls-cert`, which each replica may have its own of), the
/// session key, the admin token and the bootstrap token file.
pub fn shared_files(
    config: &crate::Config,
    admin_token: &str,
) -> Result<Vec<SharedFile>, ServeError> {
    let dir = &config.data_dir;
    let mut files = Vec::new();
    if matches!(config.tls, crate::tls::TlsMode::Generated { .. }) {
        let path = dir.join("pki/ca.crt");
        files.push(SharedFile {
            what: "CA certificate",
            fingerprint: fingerprint(&path)?,
            replaced: fingerprint(&dir.join("pki/previous-ca.crt"))?,
            path,
        });
    }
    let path = dir.join(crate::session::SESSION_KEY_FILE);
    files.push(SharedFile {
        what: "session key",
        fingerprint: fingerprint(&path)?,
        replaced: None,
        path,
    });
    files.push(SharedFile {
        what: "admin token",
        path: dir.join("admin.token"),
        fingerprint: Some(crate::tokens::hash(admin_token)),
        replaced: None,
    });
    let path = dir.join("bootstrap.token");
    files.push(SharedFile {
        what: "bootstrap token file",
        fingerprint: fingerprint(&path)?,
        replaced: None,
        path,
    });
    Ok(files)
}

/// Records the fingerprints of `files` in the store at the first start on this database, and
/// refuses (naming the file) when one differs from what another replica recorded, or is missing
/// here.
pub fn check_shared_files(store: &dyn Store, files: &[SharedFile]) -> Result<(), ServeError> {
    for file in files {
        let key = format!("replicas/{}", file.what.replace(' ', "-"));
        let recorded = store.get_setting(&key)?;
        let problem = match (&recorded, &file.fingerprint) {
            (Some(recorded), Some(ours)) if recorded == ours => continue,
            (None, None) => continue,
            (None, Some(ours)) => {
                store.put_setting(&key, Some(ours))?;
                continue;
            }
            // The successor of the recorded file (a rotated CA): the others need it now.
            (Some(recorded), Some(ours)) if file.replaced.as_ref() == Some(recorded) => {
                tracing::info!(file = %file.path.display(),
                    "this replica's {} replaces the one recorded for the replicas", file.what);
                store.put_setting(&key, Some(ours))?;
                continue;
            }
            (Some(_), Some(_)) => "differs from the one the other replicas of this database use",
            (Some(_), None) => "is missing, and the other replicas of this database have one",
        };
        return Err(ServeError::Replica(format!(
            "this replica's {} ({}) {problem}: copy it from a replica that runs (README, \
             \"Running several replicas\")",
            file.what,
            file.path.display()
        )));
    }
    Ok(())
}
