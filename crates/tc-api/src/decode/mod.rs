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

mod check;
mod errors;
mod parse;

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::meta::API_VERSION;
use crate::resources::{Kind, Object};

pub use errors::{DecodeErrors, MAX_ERRORS};
pub use parse::{parse_documents, parse_documents_until_error};

use check::decode_one;
use saphyr_parser::Span;

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
