//! JSON Schemas of the manifest kinds, for editors (yaml-language-server) and for the API.
//!
//! The repository ships them under `schemas/`; a test fails when the shipped files differ from
//! what the types generate (regenerate with `THINFLEET_BLESS=1 cargo test -p tc-api schema`).

use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Value, json};

use crate::resources::{ClientGroup, Kind, PackageRelease};

/// The schema files shipped in `schemas/`, as (file name, pretty JSON).
pub fn schema_files() -> Vec<(String, String)> {
    let group = generate::<ClientGroup>(Kind::ClientGroup);
    let release = generate::<PackageRelease>(Kind::PackageRelease);
    let task = generate::<crate::task::Task>(Kind::Task);
    let combined = combine(&[&group, &release, &task]);
    [
        ("clientgroup", group),
        ("packagerelease", release),
        ("task", task),
        ("thinfleet", combined),
    ]
    .into_iter()
    .map(|(name, schema)| {
        let text = serde_json::to_string_pretty(&schema).expect("schemas serialize") + "\n";
        (format!("{name}.schema.json"), text)
    })
    .collect()
}

/// The schema of one manifest kind; `None` for `Client`, which admins do not write.
pub fn schema(kind: Kind) -> Option<Value> {
    match kind {
        Kind::ClientGroup => Some(generate::<ClientGroup>(kind)),
        Kind::PackageRelease => Some(generate::<PackageRelease>(kind)),
        Kind::Task => Some(generate::<crate::task::Task>(kind)),
        Kind::Client => None,
    }
}

fn generate<T: JsonSchema>(kind: Kind) -> Value {
    let generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    schema["$id"] = json!(format!(
        "https://thinfleet.io/schemas/{}.schema.json",
        kind.as_str().to_ascii_lowercase()
    ));
    // Pin apiVersion and kind so an editor flags a typo in either.
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert(
            "apiVersion".into(),
            json!({ "const": crate::API_VERSION, "description": "Always `thinfleet.io/v1`." }),
        );
        properties.insert(
            "kind".into(),
            json!({ "const": kind.as_str(), "description": format!("Always `{kind}`.") }),
        );
    }
    schema
}

/// One schema accepting any manifest kind, for files that mix kinds: each document is checked
/// against the schema its `kind` names.
fn combine(schemas: &[&Value]) -> Value {
    let mut definitions = serde_json::Map::new();
    let mut branches = vec![];
    for schema in schemas {
        let mut schema = (*schema).clone();
        if let Some(Value::Object(defs)) = schema.as_object_mut().and_then(|s| s.remove("$defs")) {
            definitions.extend(defs);
        }
        let object = schema.as_object_mut().expect("schemas are objects");
        object.remove("$schema");
        object.remove("$id");
        let kind = object["properties"]["kind"]["const"].clone();
        branches.push(json!({
            "if": { "properties": { "kind": { "const": kind } }, "required": ["kind"] },
            "then": schema,
        }));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://thinfleet.io/schemas/thinfleet.schema.json",
        "title": "thinfleet manifest",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": { "const": crate::API_VERSION },
            "kind": { "enum": ["ClientGroup", "PackageRelease", "Task"] }
        },
        "allOf": branches,
        "$defs": definitions,
    })
}
