//! The OpenAPI 3.1 document of the API. Component schemas come from the same types the server
//! uses (schemars), so the description cannot drift from what is served.

use serde_json::{Value, json};
use tc_api::{
    BlockedMachine, BootstrapToken, BootstrapTokenCreated, BootstrapTokenRequest, Client,
    ClientGroup, Event, PackageRelease, SourceStatus,
};

fn schema_of<T: schemars::JsonSchema>(components: &mut serde_json::Map<String, Value>) -> Value {
    let generator = schemars::SchemaGenerator::new(
        schemars::generate::SchemaSettings::openapi3()
            .with(|s| s.definitions_path = "#/components/schemas/".into()),
    );
    let mut generator = generator;
    let schema = generator.subschema_for::<T>().to_value();
    for (name, definition) in generator.take_definitions(true) {
        components.insert(name, definition);
    }
    schema
}

fn error_responses(codes: &[u16]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|code| {
            (
                code.to_string(),
                json!({ "description": crate::error::reason(axum::http::StatusCode::from_u16(*code).expect("valid code")),
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } }),
            )
        })
        .collect()
}

fn ok(schema: Value, extra: &[u16]) -> Value {
    let mut responses = error_responses(extra);
    responses.insert(
        "200".into(),
        json!({ "description": "OK", "content": { "application/json": { "schema": schema } } }),
    );
    Value::Object(responses)
}

/// Builds the document.
pub fn document() -> Value {
    let mut components = serde_json::Map::new();
    let group = schema_of::<ClientGroup>(&mut components);
    let release = schema_of::<PackageRelease>(&mut components);
    let client = schema_of::<Client>(&mut components);
    let event = schema_of::<Event>(&mut components);
    let source = schema_of::<SourceStatus>(&mut components);
    let token = schema_of::<BootstrapToken>(&mut components);
    let token_request = schema_of::<BootstrapTokenRequest>(&mut components);
    let token_created = schema_of::<BootstrapTokenCreated>(&mut components);
    let blocked = schema_of::<BlockedMachine>(&mut components);
    components.insert(
        "Status".into(),
        json!({ "type": "object", "required": ["kind", "code", "reason", "message"], "properties": {
            "kind": { "const": "Status" }, "apiVersion": { "type": "string" }, "status": { "type": "string" },
            "code": { "type": "integer" }, "reason": { "type": "string" }, "message": { "type": "string" },
            "details": { "type": "object" } } }),
    );
    let list = |item: &Value| json!({ "type": "object", "properties": { "apiVersion": { "type": "string" }, "kind": { "type": "string" }, "items": { "type": "array", "items": item } } });
    let name_param = json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 63 } });
    let selector_param =
        json!({ "name": "labelSelector", "in": "query", "schema": { "type": "string" } });
    let auth = &[400, 401, 403];
    let mut paths = serde_json::Map::new();
    for (plural, schema) in [
        ("clientgroups", &group),
        ("packagereleases", &release),
        ("clients", &client),
    ] {
        paths.insert(
            format!("/apis/thinfleet.io/v1/{plural}"),
            json!({ "get": { "summary": format!("List {plural}"), "parameters": [selector_param], "responses": ok(list(schema), auth) } }),
        );
        let mut item = json!({
            "get": { "summary": format!("Read one of {plural}"), "parameters": [name_param], "responses": ok(schema.clone(), &[400, 401, 403, 404]) },
            "delete": { "summary": format!("Delete one of {plural}"), "parameters": [name_param], "responses": ok(schema.clone(), &[400, 401, 403, 404, 409]) },
        });
        if plural == "clients" {
            item["patch"] = json!({ "summary": "Set or remove admin labels (JSON merge patch of metadata.labels)", "parameters": [name_param],
                "requestBody": { "required": true, "content": { "application/merge-patch+json": { "schema": { "type": "object" } }, "application/json": { "schema": { "type": "object" } } } },
                "responses": ok(client.clone(), &[400, 401, 403, 404, 415, 422]) });
        }
        paths.insert(format!("/apis/thinfleet.io/v1/{plural}/{{name}}"), item);
    }
    let flag = |name: &str| json!({ "name": name, "in": "query", "schema": { "type": "boolean" } });
    paths.insert("/apis/thinfleet.io/v1/apply".into(), json!({ "post": {
        "summary": "Atomic multi-object apply", 
        "parameters": [flag("dryRun"), flag("force"), flag("prune"), { "name": "fieldManager", "in": "query", "schema": { "type": "string" } }],
        "requestBody": { "required": true, "content": {
            "application/yaml": { "schema": { "type": "string" } },
            "application/json": { "schema": { "type": "object", "properties": { "files": { "type": "array", "items": { "type": "object", "required": ["name", "content"], "properties": { "name": { "type": "string" }, "content": { "type": "string" } } } } } } } } },
        "responses": ok(json!({ "type": "object" }), &[400, 401, 403, 409, 413, 415, 422]) } }));
    paths.insert("/apis/thinfleet.io/v1/events".into(), json!({ "get": { "summary": "Events, oldest first",
        "parameters": [ { "name": "kind", "in": "query", "schema": { "type": "string" } }, { "name": "name", "in": "query", "schema": { "type": "string" } },
                        { "name": "afterSeq", "in": "query", "schema": { "type": "integer", "minimum": 0 } }, { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0 } } ],
        "responses": ok(list(&event), auth) } }));
    paths.insert("/apis/thinfleet.io/v1/clientgroups/{name}/retry".into(), json!({ "post": {
        "summary": "Retry the releases that failed on the group's members (each failed package once more)",
        "parameters": [name_param],
        "responses": ok(json!({ "type": "object", "properties": { "kind": { "type": "string" }, "group": { "type": "string" }, "message": { "type": "string" },
            "retried": { "type": "array", "items": { "type": "object", "properties": { "client": { "type": "string" }, "package": { "type": "string" }, "version": { "type": "string" }, "attempt": { "type": "integer" } } } } } }),
            &[400, 401, 403, 404, 503]) } }));
    paths.insert("/apis/thinfleet.io/v1/sources".into(), json!({ "get": { "summary": "Watched manifest directories", "responses": ok(list(&source), auth) } }));
    // One source is its status with `kind` and `apiVersion` added.
    let one_source = json!({ "allOf": [source, { "type": "object", "properties": { "kind": { "const": "ManifestSource" }, "apiVersion": { "type": "string" } } }] });
    paths.insert("/apis/thinfleet.io/v1/sources/{name}".into(), json!({ "get": { "summary": "One watched manifest directory (named by its base name)",
        "parameters": [ { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": ok(one_source, &[401, 403, 404]) } }));
    paths.insert("/apis/thinfleet.io/v1/bootstraptokens".into(), json!({
        "post": { "summary": "Create a bootstrap token (its secret and the join material are answered once)",
            "requestBody": { "required": false, "content": { "application/json": { "schema": token_request } } },
            "responses": ok(token_created, &[400, 401, 403, 409, 422]) },
        "get": { "summary": "List bootstrap tokens (no secrets)", "responses": ok(list(&token), auth) } }));
    let token_name =
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    paths.insert(
        "/apis/thinfleet.io/v1/bootstraptokens/{name}".into(),
        json!({ "delete": { "summary": "Revoke a bootstrap token",
        "parameters": [token_name], "responses": ok(token, &[401, 403, 404]) } }),
    );
    for (action, summary, body) in [
        (
            "approve",
            "Approve a pending client, as a new client or (replace) as the new key of another",
            true,
        ),
        (
            "deny",
            "Deny a pending client: deleted, its key (and machine id) refused",
            false,
        ),
        (
            "decommission",
            "Tell the client's agent to remove what thinfleet installed and stop; then delete it and refuse its machine id",
            false,
        ),
    ] {
        let mut operation = json!({ "summary": summary, "parameters": [name_param], "responses": ok(client.clone(), &[400, 401, 403, 404, 409]) });
        if body {
            operation["requestBody"] = json!({ "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "replace": { "type": "string" } }, "additionalProperties": false } } } });
        }
        paths.insert(
            format!("/apis/thinfleet.io/v1/clients/{{name}}/{action}"),
            json!({ "post": operation }),
        );
    }
    paths.insert("/apis/thinfleet.io/v1/blockedmachines".into(), json!({ "get": { "summary": "Machine identities refused at enrolment", "responses": ok(list(&blocked), auth) } }));
    paths.insert("/apis/thinfleet.io/v1/blockedmachines/{machineId}".into(), json!({ "delete": { "summary": "Allow a machine id to enrol again",
        "parameters": [ { "name": "machineId", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": ok(list(&blocked), &[401, 403, 404]) } }));
    paths.insert("/blobs".into(), json!({ "put": { "summary": "Upload a blob", "parameters": [ { "name": "sha256", "in": "query", "schema": { "type": "string", "pattern": "^[0-9a-f]{64}$" } } ],
        "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
        "responses": ok(json!({ "type": "object", "properties": { "sha256": { "type": "string" }, "size": { "type": "integer" } } }), &[400, 401, 403, 413, 422]) } }));
    paths.insert("/blobs/sha256/{hex}".into(), json!({ "get": { "summary": "Download a blob (Range, ETag)", "parameters": [ { "name": "hex", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{64}$" } } ],
        "responses": { "200": { "description": "The blob", "content": { "application/zip": {} } }, "206": { "description": "A range of the blob" }, "304": { "description": "Not modified" }, "401": { "description": "Unauthorized" }, "404": { "description": "No such blob" }, "416": { "description": "Range not satisfiable" } } } }));
    for (path, summary, codes) in [
        (
            "/agent/v1/enroll",
            "Enrol an agent (200 enrolled, 202 pending)",
            &[400, 401, 403, 413, 415, 422, 429][..],
        ),
        (
            "/agent/v1/session",
            "A session challenge, or a session for a signed challenge",
            &[400, 401, 413, 415, 422],
        ),
        (
            "/agent/v1/heartbeat",
            "Agent heartbeat",
            &[400, 401, 403, 413, 415, 422],
        ),
    ] {
        let mut operation = json!({ "summary": summary, "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object" } } } }, "responses": ok(json!({ "type": "object" }), codes) });
        // Enrolment and sessions are how an agent comes by a token: they need none.
        if path != "/agent/v1/heartbeat" {
            operation["security"] = json!([]);
        }
        paths.insert(path.into(), json!({ "post": operation }));
    }
    paths.insert("/agent/v1/desired".into(), json!({ "get": { "summary": "Long-poll for a new desired state",
        "parameters": [ { "name": "afterRevision", "in": "query", "schema": { "type": "integer", "minimum": 0 } }, { "name": "timeoutSeconds", "in": "query", "schema": { "type": "integer", "minimum": 0 } } ],
        "responses": ok(json!({ "type": "object" }), &[400, 401, 403]) } }));
    for (path, summary) in [
        ("/healthz", "Liveness"),
        ("/readyz", "Readiness"),
        ("/metrics", "Prometheus metrics"),
        (
            "/version",
            "Controller version and the fingerprint of its CA (`caCertHash`)",
        ),
        ("/openapi.json", "This document"),
    ] {
        paths.insert(path.into(), json!({ "get": { "summary": summary, "security": [], "responses": { "200": { "description": "OK" } } } }));
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "thinfleet controller", "version": env!("CARGO_PKG_VERSION") },
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": { "schemas": components, "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
    })
}
