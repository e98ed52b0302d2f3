//! Arguments of `tcadm label`: `key=value` sets a label, `key-` removes it.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use tc_api::validate::{Errors, validate_label_key, validate_label_value};

/// One change requested on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelChange {
    /// Set `key` to `value`.
    Set {
        /// The label key.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Remove `key`.
    Remove {
        /// The label key.
        key: String,
    },
}

impl LabelChange {
    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            LabelChange::Set { key, .. } | LabelChange::Remove { key } => key,
        }
    }
}

/// A label argument that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelArgError {
    /// Neither `key=value` nor `key-`.
    #[error("`{0}` is neither `key=value` nor `key-`")]
    Malformed(String),
    /// The key or the value breaks the label rules.
    #[error("`{argument}`: {message}")]
    Invalid {
        /// The argument as typed.
        argument: String,
        /// What is wrong with it.
        message: String,
    },
    /// The same key appears twice.
    #[error("label `{0}` is given more than once")]
    Duplicate(String),
    /// No argument at all.
    #[error("give at least one `key=value` or `key-`")]
    Empty,
}

/// Parses label arguments, checking keys and values against the label rules.
pub fn parse_label_args(arguments: &[String]) -> Result<Vec<LabelChange>, LabelArgError> {
    if arguments.is_empty() {
        return Err(LabelArgError::Empty);
    }
    let mut seen = BTreeSet::new();
    let mut changes = vec![];
    for argument in arguments {
        let change = if let Some((key, value)) = argument.split_once('=') {
            LabelChange::Set {
                key: key.to_string(),
                value: value.to_string(),
            }
        } else if let Some(key) = argument.strip_suffix('-') {
            LabelChange::Remove {
                key: key.to_string(),
            }
        } else {
            return Err(LabelArgError::Malformed(argument.clone()));
        };
        let mut errors = Errors::default();
        validate_label_key(change.key(), "key", &mut errors);
        if let LabelChange::Set { value, .. } = &change {
            validate_label_value(value, "value", &mut errors);
        }
        if let Some(error) = errors.0.first() {
            return Err(LabelArgError::Invalid {
                argument: argument.clone(),
                message: error.message.clone(),
            });
        }
        if !seen.insert(change.key().to_string()) {
            return Err(LabelArgError::Duplicate(change.key().to_string()));
        }
        changes.push(change);
    }
    Ok(changes)
}

/// The JSON merge patch that applies `changes` to a client's admin labels.
pub fn label_patch(changes: &[LabelChange]) -> Value {
    let mut labels = Map::new();
    for change in changes {
        match change {
            LabelChange::Set { key, value } => {
                labels.insert(key.clone(), Value::String(value.clone()));
            }
            LabelChange::Remove { key } => {
                labels.insert(key.clone(), Value::Null);
            }
        }
    }
    json!({ "metadata": { "labels": labels } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Vec<LabelChange>, LabelArgError> {
        let arguments: Vec<String> = arguments.iter().map(|a| a.to_string()).collect();
        parse_label_args(&arguments)
    }

    #[test]
    fn sets_and_removals_become_a_merge_patch() {
        let changes = parse(&["rack=7", "old-", "site=", "example.com/tier=gold"]).unwrap();
        assert_eq!(
            label_patch(&changes),
            json!({"metadata": {"labels": {
                "rack": "7", "old": null, "site": "", "example.com/tier": "gold"
            }}})
        );
    }

    #[test]
    fn a_dash_inside_a_key_is_not_a_removal() {
        assert_eq!(
            parse(&["a-b=c"]).unwrap(),
            vec![LabelChange::Set {
                key: "a-b".into(),
                value: "c".into()
            }]
        );
        assert!(matches!(
            parse(&["a=b-"]),
            Err(LabelArgError::Invalid { .. })
        ));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(parse(&[]), Err(LabelArgError::Empty));
        assert_eq!(
            parse(&["rack"]),
            Err(LabelArgError::Malformed("rack".into()))
        );
        assert_eq!(
            parse(&["rack=1", "rack-"]),
            Err(LabelArgError::Duplicate("rack".into()))
        );
        assert!(matches!(
            parse(&["Bad Key=1"]),
            Err(LabelArgError::Invalid { .. })
        ));
        assert!(matches!(
            parse(&["key=has space"]),
            Err(LabelArgError::Invalid { .. })
        ));
        assert!(matches!(parse(&["-"]), Err(LabelArgError::Invalid { .. })));
    }
}
