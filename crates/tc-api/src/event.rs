//! Events: the audit trail and each client's update history.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Timestamp;
use crate::resources::Kind;

/// Whether an event is routine or a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// Routine.
    Normal,
    /// Something an operator should look at.
    Warning,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        })
    }
}

/// A reference to an object by kind and name.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// `ClientGroup`, `PackageRelease`, `Client`, or another subject such as `ManifestSource`.
    pub kind: String,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// A reference to `kind/name`.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ObjectRef {
            kind: kind.as_str().to_string(),
            name: name.into(),
        }
    }
}

/// Something that happened to an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Sequence number, increasing; assigned by the store.
    #[serde(default)]
    pub seq: u64,
    /// When it happened.
    pub time: Timestamp,
    /// What it happened to.
    pub object: ObjectRef,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: EventType,
    /// One CamelCase word (`Installed`, `UpdateFailed`, `Conflict`, ...).
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

impl Event {
    /// A new event (sequence number assigned when stored).
    pub fn new(
        time: Timestamp,
        object: ObjectRef,
        type_: EventType,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Event {
            seq: 0,
            time,
            object,
            type_,
            reason: reason.into(),
            message: message.into(),
        }
    }
}
