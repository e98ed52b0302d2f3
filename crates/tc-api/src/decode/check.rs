//! Collecting every error of one object: serde stops at the first, so the failing node is
//! neutralised (removed, or replaced by a placeholder of the right type from the kind's JSON
//! Schema) and the object deserialized again, within a budget; then it is validated.

use std::sync::OnceLock;

use serde_json::{Map, Value};
use serde_path_to_error::Segment;

use std::collections::HashMap;

use super::{DecodeError, DecodeErrors, Document, join_path};
use crate::meta::API_VERSION;
use crate::resources::{ClientGroup, Kind, Object, PackageRelease};

/// How many nodes the decoder may deserialize again, per object, while it looks for more than
/// the first error of that object (each further error costs one more pass over the object). An
/// object of a few dozen nodes gets every error found; a huge one gets only a few passes, so
/// collecting errors keeps decoding linear in the size of the input.
const RETRY_NODE_BUDGET: usize = 2_000_000;

/// Decodes and validates the object `value` found at `prefix` in `document`, adding every error
/// found to `errors`.
pub(super) fn decode_one(
    document: &Document,
    prefix: &str,
    value: &Value,
    errors: &mut DecodeErrors,
) -> Option<Object> {
    let mut check = ObjectCheck {
        document,
        prefix,
        found: vec![],
        neutralised: vec![],
        complete: true,
    };
    let object = check.decode(value, errors.room());
    if !check.complete {
        errors.mark_stopped_early();
    }
    let clean = check.found.is_empty() && check.complete;
    let mut found = check.found;
    found.sort_by_key(|e| (e.line, e.column));
    for error in found {
        errors.push(error);
    }
    object.filter(|_| clean)
}

/// The errors of one object as they are found.
struct ObjectCheck<'a> {
    document: &'a Document,
    /// Where the object is in the document (`""`, or `items[3]` in a list).
    prefix: &'a str,
    found: Vec<DecodeError>,
    /// Paths (relative to the object) whose value the decoder replaced or removed to get past an
    /// error; errors under them are consequences of that, not reported.
    neutralised: Vec<String>,
    /// False when the decoder stopped looking before it had seen the whole object.
    complete: bool,
}

impl ObjectCheck<'_> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        let error = self.document.error(&join_path(self.prefix, field), message);
        self.found.push(error);
    }

    fn is_neutralised(&self, path: &str) -> bool {
        self.neutralised.iter().any(|base| is_within(path, base))
    }

    /// Checks apiVersion and kind, deserializes the object collecting errors, and validates it.
    /// `room` is how many more errors the request would still list.
    fn decode(&mut self, value: &Value, room: usize) -> Option<Object> {
        let Value::Object(map) = value else {
            self.error(
                "",
                "a manifest document must be a mapping with apiVersion and kind",
            );
            return None;
        };
        let api_version_ok = match map.get("apiVersion") {
            Some(Value::String(version)) if version == API_VERSION => true,
            Some(Value::String(version)) => {
                self.error(
                    "apiVersion",
                    format!("unsupported apiVersion `{version}`; expected `{API_VERSION}`"),
                );
                false
            }
            Some(_) => {
                self.error("apiVersion", "must be a string");
                false
            }
            None => {
                self.error("", "missing field `apiVersion`");
                false
            }
        };
        let kind = match map.get("kind") {
            Some(Value::String(kind)) => kind,
            Some(_) => {
                self.error("kind", "must be a string");
                return None;
            }
            None => {
                self.error("", "missing field `kind`");
                return None;
            }
        };
        let kind = match Kind::parse(kind).filter(|k| k.as_str() == kind) {
            Some(Kind::Client) => {
                self.error(
                    "kind",
                    "Client objects are created when an agent enrols, not by manifests \
                     (set labels with `tcadm label client NAME key=value`)",
                );
                return None;
            }
            Some(kind) => kind,
            None => {
                self.error(
                    "kind",
                    format!("unknown kind `{kind}`; expected `ClientGroup` or `PackageRelease`"),
                );
                return None;
            }
        };
        // A wrong apiVersion is reported once; the rest of the object is still checked.
        let corrected;
        let value = if api_version_ok {
            value
        } else {
            let mut copy = value.clone();
            copy["apiVersion"] = Value::String(API_VERSION.into());
            self.neutralised.push("apiVersion".into());
            corrected = copy;
            &corrected
        };
        let passes = room.saturating_sub(self.found.len()) + 1;
        let object = match kind {
            Kind::ClientGroup => self
                .deserialize::<ClientGroup>(value, kind, passes)
                .map(Object::ClientGroup),
            Kind::PackageRelease => self
                .deserialize::<PackageRelease>(value, kind, passes)
                .map(Object::PackageRelease),
            Kind::Task => self
                .deserialize::<crate::task::Task>(value, kind, passes)
                .map(Object::Task),
            Kind::Client => None,
        }?;
        if let Err(errors) = object.validate() {
            for error in errors.0 {
                if !self.is_neutralised(&error.path) {
                    self.error(&error.path, error.message);
                }
            }
        }
        Some(object)
    }

    /// Deserializes `value` as `T`, reporting each error and getting past it by neutralising the
    /// failing node (an unknown field removed, a wrong value replaced by a placeholder of the
    /// right type taken from the kind's JSON Schema, a missing field filled in), then trying again,
    /// at most `passes` times (fewer for a large object). Returns the object, with placeholders
    /// where values were wrong, so it can still be validated.
    fn deserialize<T: serde::de::DeserializeOwned>(
        &mut self,
        value: &Value,
        kind: Kind,
        passes: usize,
    ) -> Option<T> {
        let error = match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(object) => return Some(object),
            Err(error) => error,
        };
        let passes = passes.min((RETRY_NODE_BUDGET / count_nodes(value)).max(1));
        let schema = kind_schema(kind);
        let mut working = value.clone();
        let mut attempts: HashMap<String, u8> = HashMap::new();
        let mut next = Some(error);
        for _ in 0..passes {
            let Some(error) = next.take() else {
                break;
            };
            let segments: Vec<Segment> = error.path().iter().cloned().collect();
            let path = segments_path(&segments);
            let message = error.into_inner().to_string();
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'))
                .map(str::to_string);
            let target = match &missing {
                Some(field) => join_path(&path, field),
                None => path.clone(),
            };
            if !self.is_neutralised(&target) {
                self.error(&path, message);
            }
            let attempt = attempts.entry(target.clone()).or_insert(0);
            let fixed = neutralise(
                &mut working,
                schema,
                &segments,
                missing.as_deref(),
                *attempt,
            );
            *attempt += 1;
            if !fixed {
                break;
            }
            self.neutralised.push(target);
            match serde_path_to_error::deserialize::<_, T>(&working) {
                Ok(object) => return Some(object),
                Err(error) => next = Some(error),
            }
        }
        self.complete = false;
        None
    }
}

/// True when `path` is `base` or lies under it.
fn is_within(path: &str, base: &str) -> bool {
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// A serde path as the position index spells it: `spec.packages[0].version`, empty for the root.
fn segments_path(segments: &[Segment]) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            Segment::Map { key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Enum { .. } => {}
            Segment::Unknown => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push('?');
            }
        }
    }
    path
}

/// The number of nodes of a value (at least 1).
fn count_nodes(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

/// The node at `segments`, if the value has one there.
fn node_mut<'v>(value: &'v mut Value, segments: &[Segment]) -> Option<&'v mut Value> {
    let mut node = value;
    for segment in segments {
        node = match segment {
            Segment::Map { key } => node.as_object_mut()?.get_mut(key)?,
            Segment::Seq { index } => node.as_array_mut()?.get_mut(*index)?,
            Segment::Enum { .. } => node,
            Segment::Unknown => return None,
        };
    }
    Some(node)
}

/// Gets past the error at `segments` (or, with `missing`, the missing field `missing` of the
/// mapping there): the first attempt puts a placeholder of the right type in place, a later one
/// removes the node (optional fields), after that it gives up. List items are never removed, so
/// the positions of the items after them stay right. Returns false when nothing could be done.
fn neutralise(
    working: &mut Value,
    schema: &Value,
    segments: &[Segment],
    missing: Option<&str>,
    attempt: u8,
) -> bool {
    if let Some(field) = missing {
        if attempt > 0 {
            return false;
        }
        let mut target = segments.to_vec();
        target.push(Segment::Map { key: field.into() });
        let placeholder = schema_at(schema, &target)
            .map(|s| placeholder(schema, s, 0))
            .unwrap_or(Value::Null);
        return match (node_mut(working, segments), placeholder) {
            (_, Value::Null) => false,
            (Some(Value::Object(map)), placeholder) => {
                map.insert(field.into(), placeholder);
                true
            }
            _ => false,
        };
    }
    if segments.is_empty() || attempt > 1 {
        return false;
    }
    if attempt == 0
        && let Some(node_schema) = schema_at(schema, segments)
    {
        let placeholder = placeholder(schema, node_schema, 0);
        if !placeholder.is_null()
            && let Some(node) = node_mut(working, segments)
        {
            *node = placeholder;
            return true;
        }
    }
    let (last, parent) = segments.split_last().expect("not empty");
    match (last, node_mut(working, parent)) {
        (Segment::Map { key }, Some(Value::Object(map))) => map.remove(key).is_some(),
        _ => false,
    }
}

/// The JSON Schema of a kind, generated once.
fn kind_schema(kind: Kind) -> &'static Value {
    static GROUP: OnceLock<Value> = OnceLock::new();
    static RELEASE: OnceLock<Value> = OnceLock::new();
    static TASK: OnceLock<Value> = OnceLock::new();
    // Only the kinds manifests carry get here; `Client` has no schema.
    let (cell, kind) = match kind {
        Kind::PackageRelease => (&RELEASE, Kind::PackageRelease),
        Kind::Task => (&TASK, Kind::Task),
        Kind::ClientGroup | Kind::Client => (&GROUP, Kind::ClientGroup),
    };
    cell.get_or_init(|| crate::schema::schema(kind).expect("manifest kinds have a schema"))
}

/// Follows `$ref`s within `root`.
fn resolve_ref<'s>(root: &'s Value, mut schema: &'s Value) -> Option<&'s Value> {
    for _ in 0..8 {
        match schema.get("$ref").and_then(Value::as_str) {
            None => return Some(schema),
            Some(reference) => schema = root.pointer(reference.strip_prefix('#')?)?,
        }
    }
    None
}

/// The schema of the node at `segments`, if the schema describes one there.
fn schema_at<'s>(root: &'s Value, segments: &[Segment]) -> Option<&'s Value> {
    let mut current = root;
    for segment in segments {
        current = match segment {
            Segment::Map { key } => schema_child(root, current, 0, &|s: &'s Value| {
                s.get("properties")
                    .and_then(|p| p.get(key.as_str()))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
            })?,
            Segment::Seq { .. } => schema_child(root, current, 0, &|s: &'s Value| {
                s.get("items").filter(|i| i.is_object())
            })?,
            Segment::Enum { .. } => continue,
            Segment::Unknown => return None,
        };
    }
    Some(current)
}

/// The child schema `pick` finds in `schema` or in one of its `anyOf`/`oneOf`/`allOf` branches.
fn schema_child<'s>(
    root: &'s Value,
    schema: &'s Value,
    depth: usize,
    pick: &dyn Fn(&'s Value) -> Option<&'s Value>,
) -> Option<&'s Value> {
    if depth > 8 {
        return None;
    }
    let schema = resolve_ref(root, schema)?;
    if let Some(child) = pick(schema) {
        return Some(child);
    }
    ["anyOf", "oneOf", "allOf"]
        .iter()
        .filter_map(|key| schema.get(*key).and_then(Value::as_array))
        .flatten()
        .find_map(|branch| schema_child(root, branch, depth + 1, pick))
}

/// The smallest value `schema` accepts (an empty string, zero, false, an empty list, a mapping
/// with placeholders for its required fields, the first of an enum); `Null` when it cannot tell.
fn placeholder(root: &Value, schema: &Value, depth: usize) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    let Some(schema) = resolve_ref(root, schema) else {
        return Value::Null;
    };
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            return branches
                .iter()
                .map(|branch| placeholder(root, branch, depth + 1))
                .find(|value| !value.is_null())
                .unwrap_or(Value::Null);
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => vec![],
    };
    match types.into_iter().find(|t| *t != "null") {
        Some("string") if schema.get("format").and_then(Value::as_str) == Some("date-time") => {
            Value::String("1970-01-01T00:00:00Z".into())
        }
        Some("string") => Value::String(String::new()),
        Some("integer" | "number") => {
            Value::from(schema.get("minimum").and_then(Value::as_i64).unwrap_or(0))
        }
        Some("boolean") => Value::Bool(false),
        Some("array") => Value::Array(vec![]),
        Some("object") => {
            let mut map = Map::new();
            let required = schema.get("required").and_then(Value::as_array);
            for key in required.into_iter().flatten().filter_map(Value::as_str) {
                let value = schema
                    .get("properties")
                    .and_then(|p| p.get(key))
                    .map(|s| placeholder(root, s, depth + 1))
                    .unwrap_or(Value::Null);
                if !value.is_null() {
                    map.insert(key.into(), value);
                }
            }
            Value::Object(map)
        }
        _ => Value::Null,
    }
}
