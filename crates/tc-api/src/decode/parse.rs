//! Parsing YAML event by event into JSON values with the position of every field, within limits.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Number, Value};

use super::{DecodeError, Document, Limits, Position};

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
    // Every position the parser reports is moved inside the input before it is used: those of
    // events onto its end when past it (O(1) each), that of an error inside its line too (once).
    let end = end_of(text);
    let fail = |position: Position, message: String| {
        let position = within(text, position);
        DecodeError {
            file: file.to_string(),
            line: position.line,
            column: position.column,
            field: None,
            message,
        }
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
        let position = Position::of(&span).min(end);
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

/// The parser reads as if a line break followed the last line, so what it finds at the end of a
/// file without one (a syntax error, the start of a mapping there) names the line after the last;
/// and it counts the columns of a directive (`%TAG ...`) in bytes, not characters. Positions are
/// therefore moved inside the input, with lines broken as YAML breaks them (`\n`, `\r\n` or
/// `\r`) and columns counted in characters.
///
/// The position just after the last character of `text`.
fn end_of(text: &str) -> Position {
    let mut end = Position { line: 1, column: 1 };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            end = Position {
                line: end.line + 1,
                column: 1,
            };
        } else {
            end.column += 1;
        }
    }
    end
}

/// `position` moved onto the end of the last line of `text` when it names a line after it, and
/// onto the end of its line when its column lies past that.
fn within(text: &str, position: Position) -> Position {
    let wanted = position.line.max(1);
    let mut line = 1;
    let mut width = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' || c == '\r' {
            if line == wanted {
                break;
            }
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            line += 1;
            width = 0;
        } else {
            width += 1;
        }
    }
    if wanted > line {
        Position {
            line,
            column: width + 1,
        }
    } else {
        Position {
            line: wanted,
            column: position.column.clamp(1, width + 1),
        }
    }
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
