//! Object metadata and conditions, shared by every kind, and the causes of an error `Status`.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use tc_proto::Timestamp;

/// The API group and version of every thinfleet resource.
pub const API_VERSION: &str = "thinfleet.io/v1";

/// Metadata of an object. `name`, `labels` and `annotations` are written by admins; the rest is set by
/// the controller and ignored on apply (except `resourceVersion`, which is a precondition when given).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Name, a DNS label: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    /// Labels, matched by selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Server-set unique id, fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Server-set; increases when `spec` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Server-set; changes on every write. When sent with a write it is a precondition: the write is
    /// refused with 409 if the stored object has another version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Server-set creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Timestamp>,
    /// Server-set: who applied the object last (`tcadm`, `dir:<path>`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

impl ObjectMeta {
    /// Metadata with only a name.
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Drops every server-set field, keeping what an admin writes.
    pub fn clear_server_fields(&mut self) {
        self.uid = None;
        self.generation = None;
        self.resource_version = None;
        self.creation_timestamp = None;
        self.managed_by = None;
    }
}

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// A Kubernetes-style condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// `Ready`, `Progressing`, `Degraded`, `Converged`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// One CamelCase word for machines.
    pub reason: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Timestamp,
    /// The generation of the object this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
}

/// Sets a condition in a list, keeping `lastTransitionTime` unless the status changes.
/// Returns true when anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time;
            }
            if *existing == condition {
                return false;
            }
            *existing = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// One cause of an error `Status` (under `details.causes`), or of a watched directory's error:
/// where in which manifest, and what. Fields the controller does not know are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cause {
    /// The manifest file, as named in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Line, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Column, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// Field path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    #[serde(default)]
    pub message: String,
}

impl From<&crate::DecodeError> for Cause {
    fn from(error: &crate::DecodeError) -> Self {
        Cause {
            file: Some(error.file.clone()),
            line: Some(error.line),
            column: Some(error.column),
            field: error.field.clone(),
            message: error.message.clone(),
        }
    }
}

/// `file:line:column: field: message`, leaving out what is unknown.
impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            f.write_str(file)?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(column) = self.column {
                    write!(f, ":{column}")?;
                }
            }
            f.write_str(": ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// For `skip_serializing_if`: a flag that is not set is left out.
pub fn is_false(value: &bool) -> bool {
    !*value
}

/// For `skip_serializing_if`: a counter that is still zero is left out.
pub fn is_zero(value: &u32) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(status: ConditionStatus, reason: &str, at: u64) -> Condition {
        Condition {
            type_: "Ready".into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Timestamp::from_unix_millis(at),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = vec![];
        assert!(set_condition(
            &mut conditions,
            condition(ConditionStatus::False, "Waiting", 1)
        ));
        assert!(!set_condition(
            &mut conditions,
            condition(ConditionStatus::False, "Waiting", 2)
        ));
        assert_eq!(conditions[0].last_transition_time.unix_millis(), 1);
        assert!(set_condition(
            &mut conditions,
            condition(ConditionStatus::False, "Other", 3)
        ));
        assert_eq!(conditions[0].last_transition_time.unix_millis(), 1);
        assert!(set_condition(
            &mut conditions,
            condition(ConditionStatus::True, "Done", 4)
        ));
        assert_eq!(conditions[0].last_transition_time.unix_millis(), 4);
        assert_eq!(conditions.len(), 1);
    }
}
