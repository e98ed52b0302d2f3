//! The JSON Schemas shipped in `schemas/` match the types.

use std::path::PathBuf;

use tc_api::Kind;
use tc_api::schema::{schema, schema_files};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

#[test]
fn shipped_schemas_are_up_to_date() {
    let dir = schema_dir();
    let bless = std::env::var_os("THINFLEET_BLESS").is_some();
    for (name, text) in schema_files() {
        let path = dir.join(&name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == text,
            "{} is out of date; regenerate with THINFLEET_BLESS=1 cargo test -p tc-api --test schema",
            path.display()
        );
    }
}

#[test]
fn schemas_forbid_unknown_fields_and_pin_the_kind() {
    let group = schema(Kind::ClientGroup).unwrap();
    assert_eq!(group["additionalProperties"], false);
    assert_eq!(group["properties"]["kind"]["const"], "ClientGroup");
    assert_eq!(
        group["$defs"]["ClientGroupSpec"]["additionalProperties"],
        false
    );
    assert!(group["$defs"]["ClientGroupSpec"]["properties"]["packages"].is_object());
    let release = schema(Kind::PackageRelease).unwrap();
    assert_eq!(release["properties"]["kind"]["const"], "PackageRelease");
    assert!(release["$defs"]["Hooks"]["properties"]["healthCheck"].is_object());
    assert!(schema(Kind::Client).is_none());
}
