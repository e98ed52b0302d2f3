//! The change feed (migration 0004): every transaction that writes clients, objects or settings
//! records one row per changed item in `changes` and notifies channel `thinfleet_changes`, so
//! that controller replicas sharing the database can follow each other's writes. A follower
//! opens a [`ChangeListener`], reads [`PgStore::changes_after`] the last sequence number it saw,
//! and reads again each time the listener wakes.
//!
//! Sequence numbers are handed out in commit order: a writer takes [`CHANGES_LOCK`] (a
//! transaction-scoped advisory lock) just before inserting its rows, and keeps it until its
//! transaction ends. Without it a transaction could take number 11, commit after another took 12
//! and committed, and a reader that had already moved past 12 would never see 11. Writers of
//! clients and objects are already serialised by the revision counter; the lock adds only the
//! short tail of each transaction (its change rows, its fence check, its commit) for the others.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Transaction};

use super::{PgStore, classify, db, uint};
use crate::{Result, StoreError};

/// The kind of a change to a client (its object, status or inventory); the name is the client's.
pub(super) const CLIENT: &str = "client";
/// The kind of a change to a client's status alone (what it is assigned, what it reports); the
/// name is the client's. Its object (metadata, spec) is as it was.
pub(super) const STATUS: &str = "status";
/// The kind of a change to an object; the name is `Kind/name`, as `ClientGroup/front-desk`.
pub(super) const OBJECT: &str = "object";
/// The kind of a change to a setting; the name is its key.
pub(super) const SETTING: &str = "setting";

/// The channel writers notify at commit.
const CHANNEL: &str = "thinfleet_changes";

/// An arbitrary constant identifying the change feed's lock among advisory locks.
const CHANGES_LOCK: i64 = 0x7466_6368_616e_6765;

/// The `meta` row holding the highest sequence number pruned.
const PRUNED_THROUGH: &str = "changes_pruned_through";

/// How often the listener's thread looks up from the connection to see whether its
/// [`ChangeListener`] was dropped.
const LISTEN_TICK: Duration = Duration::from_millis(200);

/// How long checking a listening connection that went quiet may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number: numbers grow in commit order, with gaps (rolled back transactions).
    pub seq: u64,
    /// What changed: `"client"`, `"object"`, `"setting"`, or a kind given to
    /// [`PgStore::announce`].
    pub kind: String,
    /// Which one: the client's name, `Kind/name` of an object, the setting's key, or an
    /// announced name.
    pub name: String,
    /// Of a `"status"` change: the client's desired revision as the change recorded it (none
    /// for changes recorded before the store kept it; [`PgStore::desired_revisions`] reads it
    /// then). None for other kinds.
    pub revision: Option<u64>,
}

/// What [`PgStore::changes_after`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesPage {
    /// The changes found, oldest first.
    pub changes: Vec<Change>,
    /// False when changes after the number asked about were pruned already: the reader missed
    /// some and must reload everything (resync), then go on from [`ChangesPage::latest`].
    pub complete: bool,
    /// The newest change's sequence number when the page was read (0 when none): a reader that
    /// reloaded everything goes on after it; more changes are left to read when it is beyond
    /// the last of [`ChangesPage::changes`].
    pub latest: u64,
}

/// Records a change of `kind` for each of `names` (in that order) in `txn`, and notifies
/// [`CHANNEL`] at its commit; nothing when `names` is empty. One statement for all the rows,
/// after the lock that orders sequence numbers by commit.
pub(super) fn record<S: AsRef<str>>(
    txn: &mut Transaction<'_>,
    kind: &str,
    names: &[S],
) -> Result<()> {
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    insert(txn, kind, &names, None)
}

/// Records a [`STATUS`] change for each of `names`, with the desired revision each was given
/// (`revisions`, in the same order), as [`record`] does.
pub(super) fn record_statuses(
    txn: &mut Transaction<'_>,
    names: &[&str],
    revisions: &[i64],
) -> Result<()> {
    insert(txn, STATUS, names, Some(revisions))
}

fn insert(
    txn: &mut Transaction<'_>,
    kind: &str,
    names: &[&str],
    revisions: Option<&[i64]>,
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGES_LOCK])
        .map_err(db("lock the change feed"))?;
    // unnest pads the shorter array with NULLs: no revisions, NULL revisions.
    let revisions = revisions.unwrap_or(&[]);
    txn.execute(
        "WITH recorded AS (
             INSERT INTO changes (kind, name, revision)
             SELECT $1::text, n, r
             FROM unnest($2::text[], $4::bigint[]) WITH ORDINALITY AS u (n, r, i)
             WHERE n IS NOT NULL ORDER BY i
             RETURNING 1
         )
         SELECT pg_notify($3, '')",
        &[&kind, &names, &CHANNEL, &revisions],
    )
    .map_err(db(format_args!("record {kind} changes")))?;
    Ok(())
}

impl PgStore {
    /// The clients named (without inventory), as [`crate::Store::get_client`] reads them, in
    /// one statement: a follower reads the clients a page of changes names at once.
    pub fn clients_named(&self, names: &[String]) -> Result<Vec<tc_api::Client>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let names = names.to_vec();
        self.txn("read clients", move |txn| {
            super::clients::read_named(txn, &names)
        })
    }

    /// The desired revision of each client named that has a status record, in name order:
    /// what a follower needs of a `status` change (read by the database from the JSON, so that
    /// nothing else of the status travels).
    pub fn desired_revisions(&self, names: &[String]) -> Result<Vec<(String, u64)>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let names = names.to_vec();
        self.txn("read desired revisions", move |txn| {
            let rows = txn
                .query(
                    "SELECT name, COALESCE((status::jsonb ->> 'desiredRevision')::bigint, 0)
                     FROM client_status WHERE name = ANY($1) ORDER BY name",
                    &[&names],
                )
                .map_err(db("read desired revisions"))?;
            rows.iter()
                .map(|row| {
                    let name: String = row.get(0);
                    let revision = uint(format_args!("client_status/{name}"), row.get(1))?;
                    Ok((name, revision))
                })
                .collect()
        })
    }

    /// The sequence number of the newest change (0 when none), pruned ones included: a reader
    /// starting now reads [`PgStore::changes_after`] it.
    pub fn latest_change(&self) -> Result<u64> {
        self.txn("read the latest change", latest)
    }

    /// The changes with a sequence number above `after`, oldest first, at most `limit` of
    /// them. [`ChangesPage::complete`] is false when changes above `after` were pruned already
    /// (`after` is below the highest number [`PgStore::prune_changes`] removed).
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<ChangesPage> {
        // Numbers are bigints: none is above one beyond them.
        let after_db = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.txn("read changes", move |txn| {
            let rows = txn
                .query(
                    "SELECT seq, kind, name, revision FROM changes
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after_db, &limit],
                )
                .map_err(db("read changes"))?;
            let changes = rows
                .iter()
                .map(|row| {
                    Ok(Change {
                        seq: uint("changes/seq", row.get(0))?,
                        kind: row.get(1),
                        name: row.get(2),
                        revision: row
                            .get::<_, Option<i64>>(3)
                            .map(|revision| uint("changes/revision", revision))
                            .transpose()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            // Read after the rows (each statement sees the latest commits): a prune in between
            // makes the page look incomplete (a needless reload), never complete when it is not.
            let pruned = pruned_through(txn)?;
            let latest = latest(txn)?;
            Ok(ChangesPage {
                changes,
                complete: after >= pruned,
                latest,
            })
        })
    }

    /// Records a change of `kind` for each of `names` and notifies the listeners, as a write
    /// would: for instance `"wake"` for clients whose long-polls must answer now on every
    /// replica. Nothing when `names` is empty. A fenced store (see [`PgStore::fence`]) announces
    /// only while it holds the lease.
    pub fn announce(&self, kind: &str, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let (kind, names) = (kind.to_string(), names.to_vec());
        self.txn("announce changes", move |txn| record(txn, &kind, &names))
    }

    /// Deletes the changes older than `keep` (by the database's clock), and any older in number
    /// than those, so that what is kept is every change after one number; returns how many were
    /// deleted. Readers behind the deleted ones learn it from [`ChangesPage::complete`].
    pub fn prune_changes(&self, keep: Duration) -> Result<usize> {
        let keep = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        self.txn("prune changes", move |txn| {
            let through: Option<i64> = txn
                .query_one(
                    "SELECT max(seq) FROM changes
                     WHERE at < now() - $1::bigint * interval '1 millisecond'",
                    &[&keep],
                )
                .map_err(db("find changes to prune"))?
                .get(0);
            let Some(through) = through else {
                return Ok(0);
            };
            let deleted = txn
                .execute("DELETE FROM changes WHERE seq <= $1", &[&through])
                .map_err(db("prune changes"))?;
            txn.execute(
                "UPDATE meta SET value = greatest(value, $2) WHERE key = $1",
                &[&PRUNED_THROUGH, &through],
            )
            .map_err(db(format_args!("write meta/{PRUNED_THROUGH}")))?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }

    /// A connection of its own that listens on the change feed's channel. Open it before
    /// reading [`PgStore::changes_after`], so that no change committed in between goes
    /// unnoticed.
    pub fn listen(&self) -> Result<ChangeListener> {
        ChangeListener::open(self.connector.clone())
    }
}

/// The newest change's sequence number, or the highest pruned when every change was pruned.
fn latest(txn: &mut Transaction<'_>) -> Result<u64> {
    let row = txn
        .query_one(
            "SELECT greatest(
                 (SELECT coalesce(max(seq), 0) FROM changes),
                 (SELECT value FROM meta WHERE key = $1))",
            &[&PRUNED_THROUGH],
        )
        .map_err(db("read the latest change"))?;
    uint("changes/seq", row.get(0))
}

fn pruned_through(txn: &mut Transaction<'_>) -> Result<u64> {
    let row = txn
        .query_one("SELECT value FROM meta WHERE key = $1", &[&PRUNED_THROUGH])
        .map_err(db(format_args!("read meta/{PRUNED_THROUGH}")))?;
    uint(format_args!("meta/{PRUNED_THROUGH}"), row.get(0))
}

/// What the listening thread found, for [`ChangeListener::wait`].
#[derive(Default)]
struct Heard {
    /// A notification arrived since the last wait that returned true.
    notified: bool,
    /// The connection was lost: why.
    lost: Option<String>,
}

/// A connection listening on the change feed's channel ([`PgStore::listen`]).
///
/// The connection belongs to a thread of its own (as the store's do, so that the listener can be
/// used from any thread, async runtimes' included); [`ChangeListener::wait`] waits for what that
/// thread hears. Notifications arriving between waits are not lost: the next wait returns at
/// once. The thread ends shortly after the listener is dropped.
pub struct ChangeListener {
    heard: Arc<(Mutex<Heard>, Condvar)>,
    dropped: Arc<AtomicBool>,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeListener").finish_non_exhaustive()
    }
}

impl ChangeListener {
    /// Connects with `connector` on a new thread and listens; returns once the server confirmed
    /// the `LISTEN`.
    fn open(connector: super::tls::Connector) -> Result<ChangeListener> {
        let heard = Arc::new((Mutex::new(Heard::default()), Condvar::new()));
        let dropped = Arc::new(AtomicBool::new(false));
        let (ready, started) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let (thread_heard, thread_dropped) = (Arc::clone(&heard), Arc::clone(&dropped));
        std::thread::Builder::new()
            .name("tc-store-pg-listen".into())
            .spawn(move || {
                let client = connector
                    .connect()
                    .map_err(|e| {
                        classify(
                            format!("listen for changes: connect: {}", tc_proto::error_chain(&e)),
                            &e,
                        )
                    })
                    .and_then(|mut client| {
                        client
                            .batch_execute(&format!("LISTEN {CHANNEL}"))
                            .map_err(db("listen for changes"))?;
                        Ok(client)
                    });
                match client {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        listen(client, &thread_heard, &thread_dropped);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(|e| StoreError::Database(format!("start the listening thread: {e}")))?;
        started.recv().map_err(|_| {
            StoreError::Database("listen for changes: the listening thread stopped".into())
        })??;
        Ok(ChangeListener { heard, dropped })
    }

    /// Blocks until a notification arrives (true) or `timeout` passes (false). Fails with
    /// [`StoreError::Unavailable`] once the connection is lost: the caller then opens a new
    /// listener and reads [`PgStore::changes_after`] its last sequence number.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let (heard, signal) = &*self.heard;
        let guard = heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut guard, _) = signal
            .wait_timeout_while(guard, timeout, |heard| {
                !heard.notified && heard.lost.is_none()
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.notified {
            guard.notified = false;
            return Ok(true);
        }
        match &guard.lost {
            Some(why) => Err(StoreError::Unavailable(why.clone())),
            None => Ok(false),
        }
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Relaxed);
    }
}

/// The listening thread: passes notifications on until the connection is lost or the listener
/// dropped.
fn listen(mut client: Client, heard: &(Mutex<Heard>, Condvar), dropped: &AtomicBool) {
    let (state, signal) = heard;
    let tell = |change: &dyn Fn(&mut Heard)| {
        let mut state = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut state);
        signal.notify_all();
    };
    while !dropped.load(Ordering::Relaxed) {
        let started = Instant::now();
        let next = client.notifications().timeout_iter(LISTEN_TICK).next();
        let lost = match next {
            Ok(Some(_)) => {
                tell(&|heard| heard.notified = true);
                None
            }
            // Nothing before the tick's end; or, sooner, the connection ended: check it.
            Ok(None) if client.is_closed() => Some("the connection was closed".to_string()),
            Ok(None) if started.elapsed() < LISTEN_TICK => client
                .is_valid(CHECK_TIMEOUT)
                .err()
                .map(|e| format!("the connection was lost: {e}")),
            Ok(None) => None,
            Err(e) => Some(format!("the connection was lost: {e}")),
        };
        if let Some(why) = lost {
            tell(&|heard| heard.lost = Some(format!("listen for changes: {why}")));
            return;
        }
    }
}
