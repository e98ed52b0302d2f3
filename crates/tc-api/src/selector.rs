//! Kubernetes label selectors: `matchLabels` and `matchExpressions`, with version comparisons
//! (`Lt`, `Le`, `Gt`, `Ge`) on [`AGENT_VERSION_LABEL`] besides Kubernetes' operators.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::client::AGENT_VERSION_LABEL;
use crate::validate::{Errors, validate_label_key, validate_label_value};
use crate::version_order::VersionRef;

/// Selects clients by their labels. Every part must hold (AND); `{}` selects every client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Each key must have exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Each expression must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One expression of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the key's value is tested.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn` (at least one); exactly one semantic version for `Lt`, `Le`,
    /// `Gt` and `Ge`; empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Operators of a selector expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label is a semantic version lower than the one value (`<`). Only on
    /// `thinfleet.io/agent-version`; a value that is no semantic version, or no value, never
    /// matches.
    Lt,
    /// The label is a semantic version lower than or equal to the one value (`<=`).
    Le,
    /// The label is a semantic version greater than the one value (`>`).
    Gt,
    /// The label is a semantic version greater than or equal to the one value (`>=`).
    Ge,
}

impl SelectorOperator {
    /// True for the version comparisons (`Lt`, `Le`, `Gt`, `Ge`).
    pub fn is_ordering(self) -> bool {
        matches!(
            self,
            SelectorOperator::Lt
                | SelectorOperator::Le
                | SelectorOperator::Gt
                | SelectorOperator::Ge
        )
    }

    /// The `-l` spelling of a version comparison.
    fn symbol(self) -> &'static str {
        match self {
            SelectorOperator::Lt => "<",
            SelectorOperator::Le => "<=",
            SelectorOperator::Gt => ">",
            SelectorOperator::Ge => ">=",
            SelectorOperator::In => "in",
            SelectorOperator::NotIn => "notin",
            SelectorOperator::Exists => "",
            SelectorOperator::DoesNotExist => "!",
        }
    }
}

impl LabelSelector {
    /// A selector that matches every set of labels.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// True when the selector matches `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// True when the selector matches the labels that `label` looks up (for labels kept in
    /// another shape than a map, such as the controller's compact clients).
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| label(key) == Some(value.as_str()))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches_with(&label))
    }

    /// True when the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Checks keys, values and operator arity; errors are reported under `path`.
    pub fn validate(&self, path: &str, errors: &mut Errors) {
        for (key, value) in &self.match_labels {
            let entry = format!("{path}.matchLabels.{key}");
            validate_label_key(key, &entry, errors);
            validate_label_value(value, &entry, errors);
        }
        for (index, requirement) in self.match_expressions.iter().enumerate() {
            let entry = format!("{path}.matchExpressions[{index}]");
            validate_label_key(&requirement.key, &format!("{entry}.key"), errors);
            match requirement.operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    if requirement.values.is_empty() {
                        errors.push(
                            format!("{entry}.values"),
                            format!(
                                "operator {:?} needs at least one value",
                                requirement.operator
                            ),
                        );
                    }
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                    if !requirement.values.is_empty() {
                        errors.push(
                            format!("{entry}.values"),
                            format!("operator {:?} takes no values", requirement.operator),
                        );
                    }
                }
                SelectorOperator::Lt
                | SelectorOperator::Le
                | SelectorOperator::Gt
                | SelectorOperator::Ge => {
                    validate_ordering(requirement, &entry, errors);
                }
            }
            for (value_index, value) in requirement.values.iter().enumerate() {
                validate_label_value(value, &format!("{entry}.values[{value_index}]"), errors);
            }
        }
    }
}

/// The checks of a version comparison: its key, one value, a semantic version.
fn validate_ordering(requirement: &LabelSelectorRequirement, entry: &str, errors: &mut Errors) {
    let operator = requirement.operator;
    if requirement.key != AGENT_VERSION_LABEL {
        errors.push(
            format!("{entry}.operator"),
            format!(
                "operator {operator:?} (`{}`) compares versions and applies only to \
                 `{AGENT_VERSION_LABEL}`, not to `{}`; use In, NotIn, Exists or DoesNotExist",
                operator.symbol(),
                requirement.key
            ),
        );
    }
    match requirement.values.as_slice() {
        [value] => {
            if VersionRef::parse(value).is_none() {
                errors.push(
                    format!("{entry}.values[0]"),
                    format!(
                        "operator {operator:?} needs a semantic version \
                         (MAJOR.MINOR.PATCH, optionally -PRERELEASE), not `{value}`"
                    ),
                );
            }
        }
        values => errors.push(
            format!("{entry}.values"),
            format!(
                "operator {operator:?} takes exactly one value, not {}",
                values.len()
            ),
        ),
    }
}

impl LabelSelectorRequirement {
    /// True when this expression holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// True when this expression holds for the labels that `label` looks up.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = label(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
            SelectorOperator::Lt
            | SelectorOperator::Le
            | SelectorOperator::Gt
            | SelectorOperator::Ge => self.compares(value),
        }
    }

    /// A version comparison: the label's value and the bound are semantic versions in the
    /// operator's order.
    fn compares(&self, value: Option<&str>) -> bool {
        let (Some(value), [bound]) = (value, self.values.as_slice()) else {
            return false;
        };
        let (Some(value), Some(bound)) = (VersionRef::parse(value), VersionRef::parse(bound))
        else {
            return false;
        };
        let order = value.precedence(&bound);
        match self.operator {
            SelectorOperator::Lt => order.is_lt(),
            SelectorOperator::Le => order.is_le(),
            SelectorOperator::Gt => order.is_gt(),
            SelectorOperator::Ge => order.is_ge(),
            _ => false,
        }
    }
}

/// Error of [`LabelSelector::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector `{selector}`: {message}")]
pub struct SelectorParseError {
    /// The text that was parsed.
    pub selector: String,
    /// What is wrong with it.
    pub message: String,
}

impl LabelSelector {
    /// Parses the kubectl `-l` syntax: comma-separated `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a,b)`, `k` and `!k`; and the version comparisons `k<v`, `k<=v`, `k>v` and
    /// `k>=v` (only on `thinfleet.io/agent-version`).
    pub fn parse(text: &str) -> Result<Self, SelectorParseError> {
        let fail = |message: String| SelectorParseError {
            selector: text.to_string(),
            message,
        };
        let mut selector = LabelSelector::default();
        for term in split_terms(text).map_err(&fail)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                LabelSelectorRequirement {
                    key: key.trim().to_string(),
                    operator: SelectorOperator::DoesNotExist,
                    values: vec![],
                }
            } else if let Some((key, operator, value)) = parse_ordering_term(term) {
                LabelSelectorRequirement {
                    key,
                    operator,
                    values: vec![value],
                }
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelSelectorRequirement {
                    key: key.trim().to_string(),
                    operator: SelectorOperator::NotIn,
                    values: vec![value.trim().to_string()],
                }
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                selector
                    .match_labels
                    .insert(key.trim().to_string(), value.trim().to_string());
                continue;
            } else if let Some((key, operator, values)) = parse_set_term(term) {
                LabelSelectorRequirement {
                    key,
                    operator,
                    values,
                }
            } else if term
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                LabelSelectorRequirement {
                    key: term.to_string(),
                    operator: SelectorOperator::Exists,
                    values: vec![],
                }
            } else {
                return Err(fail(format!("cannot understand `{term}`")));
            };
            selector.match_expressions.push(requirement);
        }
        let mut errors = Errors::default();
        selector.validate("selector", &mut errors);
        match errors.into_result() {
            Ok(()) => Ok(selector),
            Err(errors) => Err(fail(errors.to_string())),
        }
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = vec![];
    let mut depth = 0usize;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced `)`")?,
            ',' if depth == 0 => {
                terms.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    terms.push(&text[start..]);
    Ok(terms)
}

/// `k<v`, `k<=v`, `k>v`, `k>=v`.
fn parse_ordering_term(term: &str) -> Option<(String, SelectorOperator, String)> {
    let at = term.find(['<', '>'])?;
    let (key, rest) = term.split_at(at);
    let (operator, value) = if let Some(value) = rest.strip_prefix("<=") {
        (SelectorOperator::Le, value)
    } else if let Some(value) = rest.strip_prefix(">=") {
        (SelectorOperator::Ge, value)
    } else if let Some(value) = rest.strip_prefix('<') {
        (SelectorOperator::Lt, value)
    } else {
        (SelectorOperator::Gt, &rest[1..])
    };
    Some((key.trim().to_string(), operator, value.trim().to_string()))
}

fn parse_set_term(term: &str) -> Option<(String, SelectorOperator, Vec<String>)> {
    let open = term.find('(')?;
    let inner = term[open + 1..].strip_suffix(')')?;
    let mut head = term[..open].split_whitespace();
    let key = head.next()?.to_string();
    let operator = match head.next()? {
        "in" => SelectorOperator::In,
        "notin" => SelectorOperator::NotIn,
        _ => return None,
    };
    if head.next().is_some() {
        return None;
    }
    let values = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    Some((key, operator, values))
}

impl fmt::Display for LabelSelector {
    /// Writes the selector in the `-l` syntax accepted by [`LabelSelector::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for requirement in &self.match_expressions {
            let key = &requirement.key;
            terms.push(match requirement.operator {
                SelectorOperator::In => format!("{key} in ({})", requirement.values.join(",")),
                SelectorOperator::NotIn => {
                    format!("{key} notin ({})", requirement.values.join(","))
                }
                SelectorOperator::Exists => key.clone(),
                SelectorOperator::DoesNotExist => format!("!{key}"),
                operator => format!("{key}{}{}", operator.symbol(), requirement.values.join(",")),
            });
        }
        f.write_str(&terms.join(","))
    }
}
