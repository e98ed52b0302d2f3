//! Decoding of manifests: multi-document YAML (JSON is accepted as the YAML subset it is) into
//! typed objects, with every error naming file, line, column and field path.
//!
//! The YAML is parsed event by event (saphyr-parser) into a `serde_json::Value` while an index of
//! field path -> source position is recorded; the typed object is then deserialized from that value
//! with `serde_path_to_error`, whose error path is looked up in the index. Hostile input is bounded
//! before it can cost memory: total size, scalar size, nesting depth and the number of nodes
//! (counting every alias expansion, which stops "billion laughs").

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

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

    fn error(&self, field: &str, message: impl Into<String>) -> DecodeError {
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
    /// Where its document starts.
    pub position: Position,
}

/// Decodes every object in a manifest file. One bad document fails the whole file.
pub fn decode_objects(file: &str, text: &str) -> Result<Vec<SourcedObject>, DecodeError> {
    decode_objects_with(file, text, &Limits::default())
}

/// [`decode_objects`] with explicit limits.
pub fn decode_objects_with(
    file: &str,
    text: &str,
    limits: &Limits,
) -> Result<Vec<SourcedObject>, DecodeError> {
    parse_documents(file, text, limits)?
        .iter()
        .map(|document| {
            Ok(SourcedObject {
                object: decode_object(document)?,
                file: file.to_string(),
                position: document.start,
            })
        })
        .collect()
}

/// Turns one document into a validated object.
pub fn decode_object(document: &Document) -> Result<Object, DecodeError> {
    let Value::Object(map) = &document.value else {
        return Err(document.error(
            "",
            "a manifest document must be a mapping with apiVersion and kind",
        ));
    };
    match map.get("apiVersion") {
        Some(Value::String(version)) if version == API_VERSION => {}
        Some(Value::String(version)) => {
            return Err(document.error(
                "apiVersion",
                format!("unsupported apiVersion `{version}`; expected `{API_VERSION}`"),
            ));
        }
        Some(_) => return Err(document.error("apiVersion", "must be a string")),
        None => return Err(document.error("", "missing field `apiVersion`")),
    }
    let kind = match map.get("kind") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(document.error("kind", "must be a string")),
        None => return Err(document.error("", "missing field `kind`")),
    };
    let object = match Kind::parse(kind).filter(|k| k.as_str() == kind) {
        Some(Kind::ClientGroup) => deserialize::<ClientGroup>(document).map(Object::ClientGroup)?,
        Some(Kind::PackageRelease) => {
            deserialize::<PackageRelease>(document).map(Object::PackageRelease)?
        }
        Some(Kind::Client) => {
            return Err(document.error(
                "kind",
                "Client objects are created when an agent enrols, not by manifests \
                 (set labels with `tcadm label client NAME key=value`)",
            ));
        }
        None => {
            return Err(document.error(
                "kind",
                format!("unknown kind `{kind}`; expected `ClientGroup` or `PackageRelease`"),
            ));
        }
    };
    if let Err(errors) = object.validate() {
        let first = &errors.0[0];
        let mut message = first.message.clone();
        if errors.0.len() > 1 {
            message.push_str(&format!(" (and {} more: {})", errors.0.len() - 1, {
                let rest: Vec<String> = errors.0[1..]
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect();
                rest.join("; ")
            }));
        }
        return Err(document.error(&first.path, message));
    }
    Ok(object)
}

fn deserialize<T: serde::de::DeserializeOwned>(document: &Document) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(&document.value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        document.error(if path == "." { "" } else { &path }, message)
    })
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
    let mut documents = vec![];
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
    Ok(documents)
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
