//! Versioned migrations: the files of `migrations/` (`NNNN_name.sql`), embedded in the binary,
//! applied in order at open in one transaction, each recorded in `schema_migrations`. A database
//! that records a version this build does not know was written by a newer build: it is refused
//! rather than misread.

use postgres::Client;

use crate::{Result, StoreError};

/// A migration: its version, its name, its SQL.
pub(super) struct Migration {
    pub(super) version: i32,
    pub(super) name: &'static str,
    pub(super) sql: &'static str,
}

/// Every migration, in version order.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "blobs",
        sql: include_str!("migrations/0002_blobs.sql"),
    },
    Migration {
        version: 3,
        name: "leader",
        sql: include_str!("migrations/0003_leader.sql"),
    },
    Migration {
        version: 4,
        name: "changes",
        sql: include_str!("migrations/0004_changes.sql"),
    },
    Migration {
        version: 5,
        name: "room_for_updates",
        sql: include_str!("migrations/0005_room_for_updates.sql"),
    },
    Migration {
        version: 6,
        name: "change_revisions",
        sql: include_str!("migrations/0006_change_revisions.sql"),
    },
];

/// An arbitrary constant identifying the store's migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x7466_6d69_6772_6174;

fn db(what: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |e| StoreError::Database(format!("{what}: {e}"))
}

/// Applies the migrations the database has not had; returns the versions applied now.
pub(super) fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    let mut txn = client.transaction().map_err(db("begin migrations"))?;
    // Controllers starting at once migrate one after the other.
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db("take the migration lock"))?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .map_err(db("create schema_migrations"))?;
    let current: i32 = txn
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .map_err(db("read schema_migrations"))?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StoreError::Database(format!(
            "the database's schema is at version {current}, newer than this build knows \
             ({known}): it was migrated by a newer thinfleet"
        )));
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        txn.batch_execute(migration.sql).map_err(|e| {
            StoreError::Database(format!(
                "migration {:04}_{}: {e}",
                migration.version, migration.name
            ))
        })?;
        txn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .map_err(db("record a migration"))?;
        applied.push(migration.version);
    }
    txn.commit().map_err(db("commit migrations"))?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// Versions are 1, 2, 3... with no gap: a database at version `n` gets every migration above
    /// `n`, so a migration numbered below one already released would never be applied.
    #[test]
    fn migrations_are_numbered_one_after_the_other() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
            assert!(
                migration
                    .sql
                    .lines()
                    .next()
                    .is_some_and(|line| line.starts_with("--")),
                "migration {} starts with a comment saying what it is for",
                migration.name
            );
        }
    }
}
