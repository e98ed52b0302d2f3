//! The leader lease of controller replicas sharing one database, and the fence that keeps a
//! replica that lost it from writing.
//!
//! The lease is one row (`leader`, migration 0003): holder, epoch, expiry. Taking and renewing it
//! is one `UPDATE` that succeeds only when the row is free, expired or already the caller's, with
//! times from the server's clock alone (replicas' clocks never compare). The epoch grows by one
//! each time the holder changes. The lease's queries run on a connection of their own, so that a
//! renewal never waits behind the store's other work. The holder may record the URL it serves at
//! with the lease ([`PgStore::acquire_lease_serving`]), for the others to find
//! ([`PgStore::leader`]).
//!
//! Fencing: once [`PgStore::fence`] is called, every transaction that wrote anything checks,
//! just before its commit, that the row still names this holder at this epoch, reading it
//! `FOR SHARE`. A takeover (an `UPDATE` of the row) waits for such a transaction to end, and a
//! transaction that checks after a takeover sees the new holder and rolls back with
//! [`StoreError::NotLeader`]: a replica that was paused or cut off while another took over cannot
//! write a single row after the takeover.

use std::time::Duration;

use postgres::Transaction;

use super::{PgStore, db, uint};
use crate::{Result, StoreError};

/// Who holds the leader lease, as an attempt to take or renew it found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// The caller holds it, at this epoch, until the time-to-live it asked for has passed.
    Held {
        /// The epoch (one more at every change of holder).
        epoch: u64,
    },
    /// Another replica holds it.
    HeldBy {
        /// That replica's name.
        holder: String,
        /// How long until its lease expires unless it renews it.
        expires_in: Duration,
    },
}

/// The holder and epoch a fenced store's writes must still match when they commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fence {
    holder: String,
    epoch: i64,
}

/// Whole milliseconds of `duration` as PostgreSQL's `bigint`, at least 1.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

impl PgStore {
    /// Takes the leader lease for `holder` for `ttl`, or renews it when `holder` has it already.
    /// It is taken only when nobody holds it or its holder's lease expired. A holder renewing
    /// keeps its epoch, even after its lease expired, as long as nobody else took it meanwhile.
    /// The URL recorded with the lease is cleared (see [`PgStore::acquire_lease_serving`]).
    pub fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<LeaseState> {
        self.acquire_lease_serving(holder, None, ttl)
    }

    /// Takes or renews the leader lease as [`PgStore::acquire_lease`] does, and when the caller
    /// then holds it, records `url` as where it serves (`None`: unknown), for the other replicas
    /// to find with [`PgStore::leader`].
    pub fn acquire_lease_serving(
        &self,
        holder: &str,
        url: Option<&str>,
        ttl: Duration,
    ) -> Result<LeaseState> {
        if holder.is_empty() {
            return Err(StoreError::Database(
                "a lease holder needs a name".to_string(),
            ));
        }
        let (holder, ttl) = (holder.to_string(), millis(ttl));
        let url = url.map(str::to_string);
        self.lease_pool.run("take the leader lease", move |client| {
            let taken = client
                .query_opt(
                    "UPDATE leader SET
                         epoch = CASE WHEN holder = $1 THEN epoch ELSE epoch + 1 END,
                         holder = $1,
                         expires_at = now() + $2::bigint * interval '1 millisecond',
                         url = $3
                     WHERE id = 1 AND (holder = $1 OR expires_at <= now())
                     RETURNING epoch",
                    &[&holder, &ttl, &url],
                )
                .map_err(db("take the leader lease"))?;
            if let Some(row) = taken {
                return Ok(LeaseState::Held {
                    epoch: uint("leader/epoch", row.get(0))?,
                });
            }
            let row = client
                .query_one(
                    "SELECT holder,
                            greatest(0, (extract(epoch FROM expires_at - now()) * 1000)::bigint)
                     FROM leader WHERE id = 1",
                    &[],
                )
                .map_err(db("read the leader lease"))?;
            Ok(LeaseState::HeldBy {
                holder: row.get(0),
                expires_in: Duration::from_millis(uint("leader/expires_at", row.get(1))?),
            })
        })
    }

    /// Gives the lease up when `holder` has it, so that another replica can take it at once (a
    /// controller stopping cleanly), and clears the URL it recorded. Its epoch is kept: the next
    /// holder's is one more.
    pub fn release_lease(&self, holder: &str) -> Result<()> {
        let holder = holder.to_string();
        self.lease_pool
            .run("give the leader lease up", move |client| {
                client
                    .execute(
                        "UPDATE leader SET expires_at = '-infinity', url = NULL
                         WHERE id = 1 AND holder = $1",
                        &[&holder],
                    )
                    .map_err(db("give the leader lease up"))?;
                Ok(())
            })
    }

    /// Who holds the leader lease, with the URL it recorded (see
    /// [`PgStore::acquire_lease_serving`]); `None` when nobody holds an unexpired lease.
    pub fn leader(&self) -> Result<Option<(String, Option<String>)>> {
        self.txn("read the leader lease", |txn| {
            let row = txn
                .query_opt(
                    "SELECT holder, url FROM leader
                     WHERE id = 1 AND holder <> '' AND expires_at > now()",
                    &[],
                )
                .map_err(db("read the leader lease"))?;
            Ok(row.map(|row| (row.get(0), row.get(1))))
        })
    }

    /// From now on, every transaction of this store that writes commits only while `holder`
    /// holds the lease at `epoch` (see the module's documentation); one that finds otherwise
    /// writes nothing and fails with [`StoreError::NotLeader`].
    pub fn fence(&self, holder: &str, epoch: u64) {
        let fence = Fence {
            holder: holder.to_string(),
            epoch: i64::try_from(epoch).unwrap_or(i64::MAX),
        };
        *self
            .fence
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fence);
    }

    /// The fence, if any, for a transaction about to start.
    pub(super) fn current_fence(&self) -> Option<Fence> {
        self.fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Fails with [`StoreError::NotLeader`] when `txn` wrote anything and the lease is no longer
/// `fence`'s; holds the lease row (`FOR SHARE`) until the transaction ends, so no takeover
/// commits between this check and the commit.
pub(super) fn check(txn: &mut Transaction<'_>, fence: &Fence, what: &str) -> Result<()> {
    let wrote: bool = txn
        .query_one("SELECT pg_current_xact_id_if_assigned() IS NOT NULL", &[])
        .map_err(db(format_args!("{what}: check the leader lease")))?
        .get(0);
    if !wrote {
        return Ok(());
    }
    let row = txn
        .query_one(
            "SELECT holder, epoch FROM leader WHERE id = 1 FOR SHARE",
            &[],
        )
        .map_err(db(format_args!("{what}: check the leader lease")))?;
    let (holder, epoch): (String, i64) = (row.get(0), row.get(1));
    if holder == fence.holder && epoch == fence.epoch {
        return Ok(());
    }
    Err(StoreError::NotLeader(format!(
        "{what}: this controller ({}) no longer leads: {holder} took the leader lease (epoch \
         {epoch}, ours was {}); nothing was written",
        fence.holder, fence.epoch
    )))
}
