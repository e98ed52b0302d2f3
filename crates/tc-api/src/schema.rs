//! JSON Schemas of the manifest kinds, for editors (yaml-language-server) and for the API.

use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};

use crate::resources::{ClientGroup, Kind, PackageRelease};

/// The JSON Schema (draft 2020-12) of a manifest kind, pretty-printed, or `None` for `Client`,
/// which is not written by admins.
pub fn schema_json(kind: Kind) -> Option<String> {
    let schema = match kind {
        Kind::ClientGroup => generate::<ClientGroup>(kind),
        Kind::PackageRelease => generate::<PackageRelease>(kind),
        Kind::Client => return None,
    };
    Some(serde_json::to_string_pretty(&schema).expect("schemas serialize") + "\n")
}

fn generate<T: JsonSchema>(kind: Kind) -> serde_json::Value {
    let generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    // Pin apiVersion and kind so an editor flags a typo in either.
    if let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        properties.insert(
            "apiVersion".into(),
            serde_json::json!({ "const": crate::API_VERSION, "description": "Always `thinfleet.io/v1`." }),
        );
        properties.insert(
            "kind".into(),
            serde_json::json!({ "const": kind.as_str(), "description": format!("Always `{kind}`.") }),
        );
    }
    schema
}

/// The file name a schema is shipped under (`clientgroup.schema.json`).
pub fn schema_file_name(kind: Kind) -> String {
    format!("{}.schema.json", kind.as_str().to_ascii_lowercase())
}
