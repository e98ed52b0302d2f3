//! Decoding of manifests: multi-document YAML (JSON is accepted as the YAML subset it is) into
//! typed objects, with every error naming file, line, column and field path.
//!
//! The YAML is parsed event by event (saphyr-parser) into a `serde_json::Value` while an index of
//! field path -> source position is recorded; the typed object is then deserialized from that value
//! with `serde_path_to_error`, whose error path is looked up in the index. Hostile input is bounded
//! before it can cost memory: total size, scalar size, nesting depth and the number of nodes
//! (counting every alias expansion, which stops "billion laughs").
//!
//! Every error of a request is reported at once, in file order, up to [`MAX_ERRORS`]: serde stops
//! at the first error of an object, so the decoder reports it, neutralises the failing node (an
//! unknown field is removed, a wrong value is replaced by a placeholder of the right type taken
//! from the kind's JSON Schema, a missing field is filled in) and deserializes again; then it
//! validates the object, which reports every invalid field. Errors under a neutralised node are
//! consequences and are not reported. The passes per object are bounded by the cap and by
//! `RETRY_NODE_BUDGET`, so a hostile document cannot make decoding slower than linear.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};
use serde_path_to_error::Segment;

use crate::meta::API_VERSION;
use crate::resources::{ClientGroup, Kind, Object, PackageRelease};

/// Bounds on what one manifest file may cost to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, in bytes.
    pub max_bytes: usize,
    /// Largest single scalar (string), in bytes.
    pub max_scalar_bytes: usize,
    /// Deepest nesting of mappings and sequences.
    pub max_depth: usize,
    /// Most nodes in one file, counting each alias expansion in full.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 20,
            max_scalar_bytes: 256 << 10,
            max_depth: 64,
            max_nodes: 1_000_000,
        }
    }
}

/// A line and column in a file, both counted from 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Position {
    fn of(span: &Span) -> Self {
        Position {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// A manifest that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// The file (or `-` for standard input, or a request name).
    pub file: String,
    /// Where, from 1.
    pub line: usize,
    /// Where, from 1.
    pub column: usize,
    /// The field path (`spec.packages[0].version`), when the error is about a field.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Most errors reported for one request (every file of it): a file with hundreds of mistakes,
/// or a hostile one, gives the first fifty in file order and a count of the others.
pub const MAX_ERRORS: usize = 50;

/// How many nodes the decoder may deserialize again, per object, while it looks for more than
/// the first error of that object (each further error costs one more pass over the object). An
/// object of a few dozen nodes gets every error found; a huge one gets only a few passes, so
/// collecting errors keeps decoding linear in the size of the input.
const RETRY_NODE_BUDGET: usize = 2_000_000;

/// Every error found in a request, in file order: at most [`MAX_ERRORS`] are kept, the others
/// are counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeErrors {
    /// The errors kept, in the order they were found (files in request order, each document's
    /// errors by position).
    errors: Vec<DecodeError>,
    /// How many to keep.
    cap: usize,
    /// Errors found beyond `cap`: counted, not kept.
    not_listed: usize,
    /// True when the decoder stopped looking for errors somewhere (the cap was reached, or an
    /// object was too large to look at again), so there may be more than were counted.
    stopped_early: bool,
}

impl Default for DecodeErrors {
    fn default() -> Self {
        DecodeErrors::with_cap(MAX_ERRORS)
    }
}

impl DecodeErrors {
    /// No errors yet; keeps at most [`MAX_ERRORS`].
    pub fn new() -> Self {
        DecodeErrors::default()
    }

    /// No errors yet; keeps at most `cap` (at least one).
    pub fn with_cap(cap: usize) -> Self {
        DecodeErrors {
            errors: vec![],
            cap: cap.max(1),
            not_listed: 0,
            stopped_early: false,
        }
    }

    /// Records an error (only counted once the cap is reached).
    pub fn push(&mut self, error: DecodeError) {
        if self.errors.len() < self.cap {
            self.errors.push(error);
        } else {
            self.not_listed += 1;
        }
    }

    /// Adds every error of `other` after these.
    pub fn extend(&mut self, other: DecodeErrors) {
        for error in other.errors {
            self.push(error);
        }
        self.not_listed += other.not_listed;
        self.stopped_early |= other.stopped_early;
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.not_listed == 0
    }

    /// The errors kept, in file order.
    pub fn errors(&self) -> &[DecodeError] {
        &self.errors
    }

    /// The first error, if any.
    pub fn first(&self) -> Option<&DecodeError> {
        self.errors.first()
    }

    /// How many errors were found beyond the cap.
    pub fn not_listed(&self) -> usize {
        self.not_listed
    }

    /// How many more errors would still be kept.
    pub fn room(&self) -> usize {
        self.cap - self.errors.len()
    }

    /// Notes that the decoder stopped looking for errors before the end of something.
    pub fn mark_stopped_early(&mut self) {
        self.stopped_early = true;
    }

    /// The line that follows the errors when not all of them are listed, such as `and 12 more
    /// errors not listed (at most 50 are listed per request)`.
    pub fn summary(&self) -> Option<String> {
        let cap = self.cap;
        let errors = |n: usize| if n == 1 { "error" } else { "errors" };
        match (self.not_listed, self.stopped_early) {
            (0, false) => None,
            (0, true) => Some("further errors may follow once these are fixed".into()),
            (n, false) => Some(format!(
                "and {n} more {} not listed (at most {cap} are listed per request)",
                errors(n)
            )),
            (n, true) => Some(format!(
                "and at least {n} more {} not listed (at most {cap} are listed per request)",
                errors(n)
            )),
        }
    }

    /// `Ok(value)` when nothing was found.
    pub fn into_result<T>(self, value: T) -> Result<T, DecodeErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<DecodeError> for DecodeErrors {
    fn from(error: DecodeError) -> Self {
        let mut errors = DecodeErrors::new();
        errors.push(error);
        errors
    }
}

impl fmt::Display for DecodeErrors {
    /// One error per line, then the summary line when some are not listed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        if let Some(summary) = self.summary() {
            if !self.errors.is_empty() {
                f.write_str("\n")?;
            }
            f.write_str(&summary)?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeErrors {}

/// One YAML document of a file, as JSON, with the position of every field.
#[derive(Clone, Debug)]
pub struct Document {
    /// The file it came from.
    pub file: String,
    /// Its index in the file, from 0 (empty documents are skipped but still counted).
    pub index: usize,
    /// Where it starts.
    pub start: Position,
    /// Its content.
    pub value: Value,
    /// Field path (`spec.packages[0].version`) -> position of the key or item.
    positions: HashMap<String, Position>,
}

impl Document {
    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn position_of(&self, path: &str) -> Position {
        let mut path = path.trim_start_matches('.');
        loop {
            if let Some(position) = self.positions.get(path) {
                return *position;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.positions.get("").copied().unwrap_or(self.start),
            }
        }
    }

    /// An error about `field` (a path in this document; empty for the whole document), at the
    /// field's position.
    pub fn error(&self, field: &str, message: impl Into<String>) -> DecodeError {
        let field = field.trim_start_matches('.');
        let position = self.position_of(field);
        DecodeError {
            file: self.file.clone(),
            line: position.line,
            column: position.column,
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        }
    }
}

/// An object decoded from a manifest, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcedObject {
    /// The object.
    pub object: Object,
    /// The file.
    pub file: String,
    /// Where it starts: its document, or its item in a `List` document.
    pub position: Position,
}

/// An object of one document: the document itself, or one item of a `List` document.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentObject {
    /// The object.
    pub object: Object,
    /// Where it is in the document: empty for the document itself, `items[3]` for an item of a
    /// list. Field paths of the object are found in the document under this prefix.
    pub path: String,
    /// Where it starts.
    pub position: Position,
}

/// `field` of the object at `prefix` in a document: `items[3].spec.version`.
pub fn join_path(prefix: &str, field: &str) -> String {
    let field = field.trim_start_matches('.');
    if prefix.is_empty() {
        field.to_string()
    } else if field.is_empty() {
        prefix.to_string()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

/// Decodes every object in a manifest file, reporting every error found (up to
/// [`MAX_ERRORS`]). One bad document fails the whole file.
pub fn decode_objects(file: &str, text: &str) -> Result<Vec<SourcedObject>, DecodeErrors> {
    decode_objects_with(file, text, &Limits::default())
}

/// [`decode_objects`] with explicit limits.
pub fn decode_objects_with(
    file: &str,
    text: &str,
    limits: &Limits,
) -> Result<Vec<SourcedObject>, DecodeErrors> {
    let mut errors = DecodeErrors::new();
    let objects = decode_objects_into(file, text, limits, &mut errors);
    errors.into_result(objects)
}

/// Decodes one file of a request, adding its errors to those of the request (so the cap on
/// errors holds for the request as a whole). Returns the objects that decoded; the file (and the
/// request) is good only when `errors` stayed empty.
pub fn decode_objects_into(
    file: &str,
    text: &str,
    limits: &Limits,
    errors: &mut DecodeErrors,
) -> Vec<SourcedObject> {
    let (documents, parse_error) = parse_documents_until_error(file, text, limits);
    let mut objects = vec![];
    for document in &documents {
        objects.extend(
            decode_document(document, errors)
                .into_iter()
                .map(|decoded| SourcedObject {
                    object: decoded.object,
                    file: file.to_string(),
                    position: decoded.position,
                }),
        );
    }
    if let Some(error) = parse_error {
        errors.push(error);
    }
    objects
}

/// Turns one document into validated objects: the document itself, or each item of a `List`
/// document (as `tcadm get -o yaml` prints several objects). Every error found is added to
/// `errors`, by position; only objects without errors are returned.
pub fn decode_document(document: &Document, errors: &mut DecodeErrors) -> Vec<DocumentObject> {
    let Some(items) = list_items(document, errors) else {
        return decode_one(document, "", &document.value, errors)
            .map(|object| DocumentObject {
                object,
                path: String::new(),
                position: document.start,
            })
            .into_iter()
            .collect();
    };
    let mut objects = vec![];
    for (index, item) in items.iter().enumerate() {
        let path = format!("items[{index}]");
        if let Some(object) = decode_one(document, &path, item, errors) {
            let position = document.position_of(&path);
            objects.push(DocumentObject {
                object,
                path,
                position,
            });
        }
    }
    objects
}

/// The items of a `List` document (`kind: List` or `kind: ClientGroupList`, ...), after checking
/// the list itself; `None` when the document is not a list.
fn list_items<'d>(document: &'d Document, errors: &mut DecodeErrors) -> Option<&'d [Value]> {
    let Value::Object(map) = &document.value else {
        return None;
    };
    let kind = map.get("kind").and_then(Value::as_str)?;
    if !kind.ends_with("List") || Kind::parse(kind).is_some() {
        return None;
    }
    let mut found = vec![];
    match map.get("apiVersion") {
        Some(Value::String(version)) if version == API_VERSION => {}
        Some(Value::String(version)) => found.push(document.error(
            "apiVersion",
            format!("unsupported apiVersion `{version}`; expected `{API_VERSION}`"),
        )),
        Some(_) => found.push(document.error("apiVersion", "must be a string")),
        None => found.push(document.error("", "missing field `apiVersion`")),
    }
    for key in map.keys() {
        // `metadata` is what Kubernetes lists carry (a resourceVersion); it says nothing here.
        if !["apiVersion", "kind", "items", "metadata"].contains(&key.as_str()) {
            found.push(document.error(
                key,
                format!("unknown field `{key}`, expected `apiVersion`, `kind` or `items`"),
            ));
        }
    }
    let items = match map.get("items") {
        None => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => {
            found.push(document.error("items", "must be a list of objects"));
            &[][..]
        }
    };
    found.sort_by_key(|e| (e.line, e.column));
    for error in found {
        errors.push(error);
    }
    Some(items)
}

/// Decodes and validates the object `value` found at `prefix` in `document`, adding every error
/// found to `errors`.
fn decode_one(
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
    // Only the kinds manifests carry get here; `Client` has no schema.
    let (cell, kind) = match kind {
        Kind::PackageRelease => (&RELEASE, Kind::PackageRelease),
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

enum Frame {
    Mapping {
        map: Map<String, Value>,
        path: String,
        anchor: usize,
        nodes: usize,
        /// The key read and waiting for its value, with its position.
        pending_key: Option<(String, Position)>,
    },
    Sequence {
        items: Vec<Value>,
        path: String,
        anchor: usize,
        nodes: usize,
    },
}

/// Parses a file into its non-empty documents, within `limits`.
pub fn parse_documents(
    file: &str,
    text: &str,
    limits: &Limits,
) -> Result<Vec<Document>, DecodeError> {
    let mut documents = vec![];
    parse_into(file, text, limits, &mut documents)?;
    Ok(documents)
}

/// Parses a file into its non-empty documents, within `limits`, up to the first error that stops
/// the parser (a YAML syntax error, a limit, a duplicate key): the documents before it, and the
/// error. The documents before can still be checked, so their errors are reported too.
pub fn parse_documents_until_error(
    file: &str,
    text: &str,
    limits: &Limits,
) -> (Vec<Document>, Option<DecodeError>) {
    let mut documents = vec![];
    let error = parse_into(file, text, limits, &mut documents).err();
    (documents, error)
}

fn parse_into(
    file: &str,
    text: &str,
    limits: &Limits,
    documents: &mut Vec<Document>,
) -> Result<(), DecodeError> {
    let fail = |position: Position, message: String| DecodeError {
        file: file.to_string(),
        line: position.line,
        column: position.column,
        field: None,
        message,
    };
    if text.len() > limits.max_bytes {
        return Err(fail(
            Position { line: 1, column: 1 },
            format!(
                "file is {} bytes, more than the limit of {} bytes",
                text.len(),
                limits.max_bytes
            ),
        ));
    }
    let mut stack: Vec<Frame> = vec![];
    let mut anchors: HashMap<usize, (Value, usize)> = HashMap::new();
    let mut positions: HashMap<String, Position> = HashMap::new();
    let mut total_nodes = 0usize;
    let mut document_index = 0usize;
    let mut document_start = Position { line: 1, column: 1 };
    let mut root: Option<Value> = None;

    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|error| {
            let marker = error.marker();
            fail(
                Position {
                    line: marker.line(),
                    column: marker.col() + 1,
                },
                format!("YAML syntax error: {}", error.info()),
            )
        })?;
        let position = Position::of(&span);
        // A completed node: (value, node count, anchor id).
        let completed: Option<(Value, usize, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                document_start = position;
                positions = HashMap::new();
                anchors.clear();
                root = None;
                None
            }
            Event::DocumentEnd => {
                if let Some(value) = root.take()
                    && !value.is_null()
                {
                    documents.push(Document {
                        file: file.to_string(),
                        index: document_index,
                        start: document_start,
                        value,
                        positions: std::mem::take(&mut positions),
                    });
                }
                document_index += 1;
                None
            }
            Event::Alias(id) => {
                let Some((value, nodes)) = anchors.get(&id) else {
                    return Err(fail(position, "alias to an unknown anchor".into()));
                };
                total_nodes += nodes;
                if total_nodes > limits.max_nodes {
                    return Err(fail(
                        position,
                        format!(
                            "document expands to more than {} nodes (aliases are counted in full)",
                            limits.max_nodes
                        ),
                    ));
                }
                Some((value.clone(), *nodes, 0))
            }
            Event::Scalar(text, style, anchor, tag) => {
                if text.len() > limits.max_scalar_bytes {
                    return Err(fail(
                        position,
                        format!(
                            "a scalar of {} bytes is longer than the limit of {} bytes",
                            text.len(),
                            limits.max_scalar_bytes
                        ),
                    ));
                }
                let is_str_tag = tag
                    .as_ref()
                    .is_some_and(|t| t.handle == "!!" && t.suffix == "str")
                    || tag
                        .as_ref()
                        .is_some_and(|t| t.suffix == "tag:yaml.org,2002:str");
                let value = if style == ScalarStyle::Plain && !is_str_tag {
                    resolve_plain_scalar(&text)
                } else {
                    Value::String(text.into_owned())
                };
                total_nodes += 1;
                Some((value, 1, anchor))
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(fail(
                        position,
                        format!(
                            "nesting is deeper than the limit of {} levels",
                            limits.max_depth
                        ),
                    ));
                }
                total_nodes += 1;
                if total_nodes > limits.max_nodes {
                    return Err(fail(
                        position,
                        format!("more than {} nodes", limits.max_nodes),
                    ));
                }
                let path = match stack.last_mut() {
                    None => {
                        positions.insert(String::new(), position);
                        String::new()
                    }
                    Some(parent) => child_path(parent, position, &mut positions)
                        .map_err(|message| fail(position, message))?,
                };
                stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Mapping {
                        map: Map::new(),
                        path,
                        anchor,
                        nodes: 1,
                        pending_key: None,
                    }
                } else {
                    Frame::Sequence {
                        items: vec![],
                        path,
                        anchor,
                        nodes: 1,
                    }
                });
                None
            }
            Event::MappingEnd | Event::SequenceEnd => match stack.pop() {
                Some(Frame::Mapping {
                    map, anchor, nodes, ..
                }) => Some((Value::Object(map), nodes, anchor)),
                Some(Frame::Sequence {
                    items,
                    anchor,
                    nodes,
                    ..
                }) => Some((Value::Array(items), nodes, anchor)),
                None => return Err(fail(position, "unbalanced end of collection".into())),
            },
        };
        let Some((value, nodes, anchor)) = completed else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, (value.clone(), nodes));
        }
        match stack.last_mut() {
            None => root = Some(value),
            Some(Frame::Sequence {
                items,
                path,
                nodes: parent_nodes,
                ..
            }) => {
                positions
                    .entry(format!("{path}[{}]", items.len()))
                    .or_insert(position);
                items.push(value);
                *parent_nodes += nodes;
            }
            Some(Frame::Mapping {
                map,
                path,
                nodes: parent_nodes,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match value {
                        Value::String(key) => key,
                        Value::Null => String::new(),
                        Value::Bool(_) | Value::Number(_) => value.to_string(),
                        Value::Array(_) | Value::Object(_) => {
                            return Err(fail(
                                position,
                                "mapping keys must be plain scalars".into(),
                            ));
                        }
                    };
                    if map.contains_key(&key) {
                        return Err(fail(position, format!("duplicate key `{key}`")));
                    }
                    let key_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    positions.insert(key_path, position);
                    *pending_key = Some((key, position));
                }
                Some((key, _)) => {
                    // A null value means "not set", as in Kubernetes manifests: `packages:` with
                    // every entry commented out is an empty list, not a type error.
                    if !value.is_null() {
                        map.insert(key, value);
                    }
                    *parent_nodes += nodes;
                }
            },
        }
    }
    Ok(())
}

/// The path of a collection that starts inside `parent`; records its position.
fn child_path(
    parent: &mut Frame,
    position: Position,
    positions: &mut HashMap<String, Position>,
) -> Result<String, String> {
    match parent {
        Frame::Sequence { items, path, .. } => {
            let child = format!("{path}[{}]", items.len());
            positions.entry(child.clone()).or_insert(position);
            Ok(child)
        }
        Frame::Mapping {
            path,
            pending_key: Some((key, _)),
            ..
        } => Ok(if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        }),
        Frame::Mapping {
            pending_key: None, ..
        } => Err("mapping keys must be plain scalars".into()),
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema: null, booleans, integers, floats, or a
/// string. Values JSON cannot hold (`.inf`, `.nan`) stay strings.
fn resolve_plain_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(number) = text.parse::<i64>() {
            return Value::Number(number.into());
        }
        if let Ok(number) = text.parse::<u64>() {
            return Value::Number(number.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(number) = u64::from_str_radix(hex, 16)
    {
        return Value::Number(number.into());
    }
    if let Some(octal) = text.strip_prefix("0o")
        && let Ok(number) = u64::from_str_radix(octal, 8)
    {
        return Value::Number(number.into());
    }
    let looks_numeric = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b".eE+-".contains(&b))
        && digits
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if looks_numeric
        && let Ok(float) = text.parse::<f64>()
        && let Some(number) = Number::from_f64(float)
    {
        return Value::Number(number);
    }
    Value::String(text.to_string())
}
