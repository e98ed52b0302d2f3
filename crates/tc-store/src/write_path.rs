//! The object write path both stores share: what an `Apply`, a `Status` write or a `Delete`
//! does to the stored object (pure decisions; each store reads the stored object, takes the
//! next resourceVersion when the outcome writes, and writes the outcome in its transaction), and
//! how objects and uids are made.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde::de::DeserializeOwned;
use tc_api::{ClientGroup, Kind, Object, PackageRelease, Timestamp};

use crate::{Result, StoreError, WriteOutcome};

/// Decides what an `Apply` does, given the stored object (if any).
///
/// `revision` is the resourceVersion the object gets if the apply writes it; the caller advances
/// the store-wide counter only when the outcome is `Created` or `Configured`. Incoming status and
/// server-set metadata are ignored, except `resourceVersion`, which is a precondition.
pub(crate) fn apply_object(
    stored: Option<&Object>,
    incoming: Object,
    manager: &str,
    now: Timestamp,
    revision: u64,
) -> Result<WriteOutcome> {
    let kind = incoming.kind();
    if let Some(expected) = incoming.meta().resource_version.as_deref() {
        check_precondition(kind, incoming.name(), stored, expected)?;
    }
    let mut object = incoming;
    object.clear_status();
    let meta = object.meta_mut();
    meta.clear_server_fields();
    meta.resource_version = Some(revision.to_string());
    meta.managed_by = Some(manager.to_string());
    let Some(stored) = stored else {
        let meta = object.meta_mut();
        meta.uid = Some(new_uid(kind.as_str(), &meta.name, now, revision));
        meta.generation = Some(1);
        meta.creation_timestamp = Some(now);
        return Ok(WriteOutcome::Created(object));
    };
    let spec_changed = stored.spec_json() != object.spec_json();
    let stored_meta = stored.meta();
    if !spec_changed
        && stored_meta.labels == object.meta().labels
        && stored_meta.annotations == object.meta().annotations
        && stored_meta.managed_by.as_deref() == Some(manager)
    {
        return Ok(WriteOutcome::Unchanged(stored.clone()));
    }
    copy_status(&mut object, stored);
    let meta = object.meta_mut();
    meta.uid.clone_from(&stored_meta.uid);
    meta.creation_timestamp = stored_meta.creation_timestamp;
    let generation = stored_meta.generation.unwrap_or(1);
    meta.generation = Some(if spec_changed {
        generation.saturating_add(1)
    } else {
        generation
    });
    Ok(WriteOutcome::Configured(object))
}

/// Decides what a `Status` write does: `Missing` when the object is gone, `Unchanged` when the
/// status is equal, otherwise `Configured` with the stored object carrying the new status and
/// `revision`.
pub(crate) fn write_status(
    stored: Option<&Object>,
    incoming: &Object,
    revision: u64,
) -> WriteOutcome {
    let Some(stored) = stored else {
        return WriteOutcome::Missing;
    };
    let mut object = stored.clone();
    copy_status(&mut object, incoming);
    if object == *stored {
        return WriteOutcome::Unchanged(stored.clone());
    }
    object.meta_mut().resource_version = Some(revision.to_string());
    WriteOutcome::Configured(object)
}

/// Decides what a `Delete` does: `Deleted` with the last state, `Missing` for a missing object
/// without precondition, `NotFound` for a missing object with one, `Conflict` on a stale one.
pub(crate) fn delete_object(
    stored: Option<&Object>,
    kind: Kind,
    name: &str,
    precondition: Option<&str>,
) -> Result<WriteOutcome> {
    match (stored, precondition) {
        (None, None) => Ok(WriteOutcome::Missing),
        (None, Some(_)) => Err(StoreError::NotFound {
            kind: kind.as_str().to_string(),
            name: name.to_string(),
        }),
        (Some(stored), precondition) => {
            if let Some(expected) = precondition {
                check_precondition(kind, name, Some(stored), expected)?;
            }
            Ok(WriteOutcome::Deleted(stored.clone()))
        }
    }
}

/// Refuses a write whose expected resourceVersion is not the stored one.
pub(crate) fn check_precondition(
    kind: Kind,
    name: &str,
    stored: Option<&Object>,
    expected: &str,
) -> Result<()> {
    let actual = stored.and_then(|object| object.meta().resource_version.as_deref());
    if actual == Some(expected) {
        return Ok(());
    }
    Err(StoreError::Conflict {
        kind: kind.as_str().to_string(),
        name: name.to_string(),
        expected: expected.to_string(),
        actual: actual.unwrap_or("none").to_string(),
    })
}

/// Sets `target`'s status to `source`'s (both are of one kind, as they share a key).
pub(crate) fn copy_status(target: &mut Object, source: &Object) {
    match (target, source) {
        (Object::ClientGroup(target), Object::ClientGroup(source)) => {
            target.status.clone_from(&source.status);
        }
        (Object::PackageRelease(target), Object::PackageRelease(source)) => {
            target.status.clone_from(&source.status);
        }
        (target, _) => target.clear_status(),
    }
}

/// A unique id shaped like a UUID: creation time, the revision of the creating write (unique in
/// this store) and a hash of kind and name (to tell apart objects of different stores).
pub(crate) fn new_uid(kind: &str, name: &str, now: Timestamp, revision: u64) -> String {
    let mut hasher = DefaultHasher::new();
    kind.hash(&mut hasher);
    name.hash(&mut hasher);
    let hash = hasher.finish() & 0xffff_ffff;
    let bits = (u128::from(now.unix_millis() & 0xffff_ffff_ffff) << 80)
        | (u128::from(revision & 0xffff_ffff_ffff) << 32)
        | u128::from(hash);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Decodes an object as the kind its key names (never guessing from the JSON).
pub(crate) fn decode_object(kind: Kind, key: &str, bytes: &[u8]) -> Result<Object> {
    let key = format!("objects/{key}");
    match kind {
        Kind::ClientGroup => decode::<ClientGroup>(&key, bytes).map(Object::ClientGroup),
        Kind::PackageRelease => decode::<PackageRelease>(&key, bytes).map(Object::PackageRelease),
        Kind::Task => decode::<tc_api::Task>(&key, bytes).map(Object::Task),
        Kind::Client => Err(StoreError::Corrupt {
            key,
            message: "clients are not stored as objects".into(),
        }),
    }
}

/// Decodes a JSON record; `key` names it in the error (formatted only then).
pub(crate) fn decode<T: DeserializeOwned>(key: impl std::fmt::Display, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        key: key.to_string(),
        message: error.to_string(),
    })
}
