//! Unified diffs of what an apply would change, over the part of an object an applier owns.

use serde_json::{Map, Value, json};
use similar::TextDiff;

use crate::api::ApplyItem;
use crate::output::to_yaml;

/// Lines of context around each change.
const CONTEXT_LINES: usize = 3;

/// The part of an object an applier owns, as YAML: name, labels, annotations and spec. Server-set
/// metadata and status are left out, so only real changes show.
pub fn owned_yaml(object: &Value) -> String {
    let metadata = object.get("metadata").cloned().unwrap_or(json!({}));
    let mut owned = Map::new();
    for key in ["name", "labels", "annotations"] {
        match metadata.get(key) {
            Some(Value::Object(map)) if map.is_empty() => {}
            Some(value) => {
                owned.insert(key.to_string(), value.clone());
            }
            None => {}
        }
    }
    let mut view = Map::new();
    view.insert("metadata".into(), Value::Object(owned));
    if let Some(spec) = object.get("spec") {
        view.insert("spec".into(), spec.clone());
    }
    to_yaml(&Value::Object(view))
}

/// The unified diff between `before` (the live object, absent when it would be created) and
/// `after` (the applied object, absent when it would be pruned), or `None` when they own the
/// same content.
pub fn render_diff(
    reference: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Option<String> {
    let old = before.map(owned_yaml).unwrap_or_default();
    let new = after.map(owned_yaml).unwrap_or_default();
    if old == new {
        return None;
    }
    let diff = TextDiff::from_lines(&old, &new);
    let text = diff
        .unified_diff()
        .context_radius(CONTEXT_LINES)
        .header(
            &format!("{reference} (live)"),
            &format!("{reference} (applied)"),
        )
        .to_string();
    Some(text)
}

/// The diff of one item of a dry-run apply.
pub fn item_diff(item: &ApplyItem) -> Option<String> {
    let reference = item.reference();
    match item.action.as_str() {
        "pruned" => render_diff(
            &reference,
            item.existing.as_ref().or(item.object.as_ref()),
            None,
        ),
        _ => render_diff(&reference, item.existing.as_ref(), item.object.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(max_unavailable: &str, labels: Value, resource_version: &str) -> Value {
        json!({
            "apiVersion": "thinfleet.io/v1",
            "kind": "ClientGroup",
            "metadata": {"name": "front-desk", "labels": labels, "resourceVersion": resource_version,
                         "generation": 3, "uid": "u-1"},
            "spec": {"selector": {"matchLabels": {"site": "berlin"}}, "priority": 0,
                     "rollout": {"maxUnavailable": max_unavailable}},
            "status": {"observedGeneration": 3, "desired": 4}
        })
    }

    #[test]
    fn owned_yaml_keeps_only_what_an_applier_writes() {
        let yaml = owned_yaml(&group("25%", json!({}), "9"));
        assert!(!yaml.contains("resourceVersion"), "{yaml}");
        assert!(!yaml.contains("status"), "{yaml}");
        assert!(!yaml.contains("labels"), "{yaml}");
        assert!(yaml.contains("name: front-desk"), "{yaml}");
        assert!(yaml.contains("maxUnavailable"), "{yaml}");
    }

    #[test]
    fn server_fields_alone_make_no_diff() {
        assert_eq!(
            render_diff(
                "clientgroup/front-desk",
                Some(&group("25%", json!({}), "9")),
                Some(&group("25%", json!({}), "10"))
            ),
            None
        );
    }

    #[test]
    fn a_changed_field_gives_a_unified_diff_with_headers() {
        let diff = render_diff(
            "clientgroup/front-desk",
            Some(&group("25%", json!({"tier": "gold"}), "9")),
            Some(&group("50%", json!({"tier": "gold"}), "9")),
        )
        .unwrap();
        let lines: Vec<&str> = diff.lines().collect();
        assert_eq!(lines[0], "--- clientgroup/front-desk (live)");
        assert_eq!(lines[1], "+++ clientgroup/front-desk (applied)");
        assert!(lines[2].starts_with("@@ "), "{diff}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with('-') && l.contains("25%")),
            "{diff}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with('+') && l.contains("50%")),
            "{diff}"
        );
    }

    #[test]
    fn created_and_pruned_objects_diff_against_nothing() {
        let created = ApplyItem {
            kind: "ClientGroup".into(),
            name: "front-desk".into(),
            action: "created".into(),
            object: Some(group("25%", json!({}), "1")),
            existing: None,
        };
        let diff = item_diff(&created).unwrap();
        assert!(diff.lines().skip(3).all(|l| l.starts_with('+')), "{diff}");
        let pruned = ApplyItem {
            action: "pruned".into(),
            existing: Some(group("25%", json!({}), "1")),
            object: None,
            ..created.clone()
        };
        let diff = item_diff(&pruned).unwrap();
        assert!(diff.lines().skip(3).all(|l| l.starts_with('-')), "{diff}");
        let unchanged = ApplyItem {
            action: "unchanged".into(),
            existing: Some(group("25%", json!({}), "1")),
            ..created
        };
        assert_eq!(item_diff(&unchanged), None);
    }
}
