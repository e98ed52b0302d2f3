//! The OpenAPI 3.1 document of the API. Component schemas come from the same types the server
//! uses (schemars), so the description cannot drift from what is served.
//!
//! Every operation lists every status it can answer with, each error a JSON `Status` (see
//! [`crate::error::json_errors`]): 401 and 403 on authenticated routes; 400 for a path or query
//! parameter that does not parse; 400, 415 and 422 for a JSON body that is not JSON, not sent as
//! JSON, or not of the right shape; 413 for a body over the limit. `schemathesis` checks it
//! against the running controller in CI (`.ci/run`).

use serde_json::{Value, json};
use tc_api::{
    BlockedMachine, BootstrapToken, BootstrapTokenCreated, BootstrapTokenRequest, Client,
    ClientGroup, Credential, CredentialCreated, CredentialRequest, Event, PackageRelease,
    SourceStatus,
};
use tc_proto::{
    DesiredResponse, EnrollRequest, EnrollResponse, HeartbeatRequest, HeartbeatResponse,
    ReleaseInfo, SessionRequest, SessionResponse,
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

/// `responses` with one more successful answer, `code`, of `schema` in JSON.
fn with_response(mut responses: Value, code: &str, description: &str, schema: Value) -> Value {
    responses[code] = json!({ "description": description, "content": { "application/json": { "schema": schema } } });
    responses
}

/// A request body of `schema` in JSON (`application/json`).
fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

/// Statuses of an authenticated route with a path parameter.
const READ: &[u16] = &[400, 401, 403, 404];

/// Statuses of an authenticated route whose JSON body is checked by the `Json` extractor.
const JSON_BODY: &[u16] = &[400, 401, 403, 413, 415, 422];

/// The largest value of a `u64` query parameter.
const U64_MAX: u64 = u64::MAX;

/// Builds the document.
pub fn document() -> Value {
    let mut components = serde_json::Map::new();
    let group = schema_of::<ClientGroup>(&mut components);
    let release = schema_of::<PackageRelease>(&mut components);
    let client = schema_of::<Client>(&mut components);
    let event = schema_of::<Event>(&mut components);
    let source = schema_of::<SourceStatus>(&mut components);
    let enroll_request = schema_of::<EnrollRequest>(&mut components);
    let enroll_response = schema_of::<EnrollResponse>(&mut components);
    let heartbeat_request = schema_of::<HeartbeatRequest>(&mut components);
    let heartbeat_response = schema_of::<HeartbeatResponse>(&mut components);
    let desired_response = schema_of::<DesiredResponse>(&mut components);
    let release_info = schema_of::<ReleaseInfo>(&mut components);
    let session_request = schema_of::<SessionRequest>(&mut components);
    let session_response = schema_of::<SessionResponse>(&mut components);
    let token = schema_of::<BootstrapToken>(&mut components);
    let token_request = schema_of::<BootstrapTokenRequest>(&mut components);
    let token_created = schema_of::<BootstrapTokenCreated>(&mut components);
    let blocked = schema_of::<BlockedMachine>(&mut components);
    let credential = schema_of::<Credential>(&mut components);
    let credential_request = schema_of::<CredentialRequest>(&mut components);
    let credential_created = schema_of::<CredentialCreated>(&mut components);
    let audit_entry = schema_of::<tc_api::AuditEntry>(&mut components);
    let client_history = schema_of::<tc_api::ClientHistory>(&mut components);
    let history_upload = schema_of::<tc_proto::history::HistoryUpload>(&mut components);
    let task = schema_of::<tc_api::Task>(&mut components);
    let task_result = schema_of::<tc_api::task::TaskResult>(&mut components);
    let task_reports = schema_of::<tc_proto::task::TaskReports>(&mut components);
    components.insert(
        "Status".into(),
        json!({ "type": "object", "required": ["kind", "code", "reason", "message"], "properties": {
            "kind": { "const": "Status" }, "apiVersion": { "type": "string" }, "status": { "type": "string" },
            "code": { "type": "integer" }, "reason": { "type": "string" }, "message": { "type": "string" },
            "details": { "type": "object" } } }),
    );
    let status_content =
        json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } });
    let list = |item: &Value| json!({ "type": "object", "properties": { "apiVersion": { "type": "string" }, "kind": { "type": "string" }, "items": { "type": "array", "items": item } } });
    let name_param = json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 63 } });
    let selector_param = json!({ "name": "labelSelector", "in": "query", "schema": { "type": "string" },
        "description": "A label selector in kubectl `-l` syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, \
            `k notin (a,b)`, `k`, `!k`, comma-separated (all must hold); and the version comparisons \
            `<`, `<=`, `>`, `>=` by semver precedence, only on `thinfleet.io/agent-version` \
            (`thinfleet.io/agent-version<0.3.0`)." });
    let auth = &[400, 401, 403];
    let mut paths = serde_json::Map::new();
    for (plural, schema) in [
        ("clientgroups", &group),
        ("packagereleases", &release),
        ("clients", &client),
        ("tasks", &task),
    ] {
        paths.insert(
            format!("/apis/thinfleet.io/v1/{plural}"),
            json!({ "get": { "summary": format!("List {plural}"), "parameters": [selector_param], "responses": ok(list(schema), auth) } }),
        );
        let mut item = json!({
            "get": { "summary": format!("Read one of {plural}"), "parameters": [name_param], "responses": ok(schema.clone(), READ) },
            "delete": { "summary": format!("Delete one of {plural}"), "parameters": [name_param], "responses": ok(schema.clone(), &[400, 401, 403, 404, 409]) },
        });
        if plural == "clients" {
            // `null` removes a label.
            let labels =
                json!({ "type": "object", "additionalProperties": { "type": ["string", "null"] } });
            let patch = json!({ "type": "object", "additionalProperties": false, "properties": {
                "metadata": { "type": "object", "additionalProperties": false, "properties": { "labels": labels } } } });
            item["patch"] = json!({ "summary": "Set or remove admin labels (JSON merge patch of metadata.labels)", "parameters": [name_param],
                "requestBody": { "required": true, "content": { "application/merge-patch+json": { "schema": patch }, "application/json": { "schema": patch } } },
                "responses": ok(client.clone(), &[400, 401, 403, 404, 413, 415, 422]) });
        }
        paths.insert(format!("/apis/thinfleet.io/v1/{plural}/{{name}}"), item);
    }
    {
        let tasks = paths
            .get_mut("/apis/thinfleet.io/v1/tasks")
            .expect("tasks are listed");
        tasks["post"] = json!({ "summary": "Create a task (operator): a Task in JSON or YAML; an existing name is a conflict",
            "requestBody": { "required": true, "content": { "application/json": { "schema": task.clone() }, "application/yaml": { "schema": { "type": "string" } } } },
            "responses": with_response(ok(task.clone(), &[400, 401, 403, 409, 413]), "201", "Created", task.clone()) });
    }
    let state_param = json!({ "name": "state", "in": "query", "schema": { "type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed", "Expired", "Interrupted"] } });
    let run_param = json!({ "name": "run", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } });
    let client_param =
        json!({ "name": "client", "in": "path", "required": true, "schema": { "type": "string" } });
    paths.insert("/apis/thinfleet.io/v1/tasks/{name}/results".into(), json!({ "get": {
        "summary": "The targets of a task's run (the newest unless `run`) with their states, exit codes, output tails and messages, by client name; `continue` names the last client of a full page",
        "parameters": [name_param, run_param, state_param,
            { "name": "after", "in": "query", "schema": { "type": "string" } },
            { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": U64_MAX } }],
        "responses": ok(list(&task_result), READ) } }));
    paths.insert("/apis/thinfleet.io/v1/tasks/{name}/results/{client}/logs".into(), json!({ "get": {
        "summary": "The log and journal a client's collectLogs sent (operator)",
        "parameters": [name_param, client_param, run_param],
        "responses": { "200": { "description": "The logs", "content": { "text/plain": { "schema": { "type": "string" } } } },
            "400": { "description": "Bad request", "content": status_content }, "401": { "description": "Unauthorized", "content": status_content },
            "403": { "description": "Forbidden", "content": status_content }, "404": { "description": "No such run or no logs", "content": status_content } } } }));
    paths.insert(
        "/apis/thinfleet.io/v1/clients/{name}/tasks".into(),
        json!({ "get": {
        "summary": "A client's results in the task runs the controller keeps, newest first",
        "parameters": [name_param], "responses": ok(list(&task_result), READ) } }),
    );
    paths.insert("/apis/thinfleet.io/v1/clients/{name}/history".into(), json!({ "get": {
        "summary": "A client's load history (24 h of CPU, memory, disk and temperature at one-minute resolution): fresh from an online client's agent within `wait` seconds, else the last one stored (`fresh: false`)",
        "parameters": [name_param, { "name": "wait", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": crate::history::MAX_WAIT_SECONDS, "default": crate::history::DEFAULT_WAIT_SECONDS } }],
        "responses": ok(client_history, READ) } }));
    let flag = |name: &str| json!({ "name": name, "in": "query", "schema": { "type": "boolean" } });
    // Any manager but the watched directory's (`dir:...`).
    let manager = json!({ "name": "fieldManager", "in": "query", "schema": { "type": "string", "minLength": 1, "pattern": "^(?!dir:)" } });
    paths.insert("/apis/thinfleet.io/v1/apply".into(), json!({ "post": {
        "summary": "Atomic multi-object apply",
        "parameters": [flag("dryRun"), flag("force"), flag("prune"), manager],
        "requestBody": { "required": true, "content": {
            "application/yaml": { "schema": { "type": "string" } },
            "application/json": { "schema": { "type": "object", "required": ["files"], "properties": { "files": { "type": "array", "items": { "type": "object", "required": ["name", "content"], "properties": { "name": { "type": "string" }, "content": { "type": "string" } } } } } } } } },
        "responses": ok(json!({ "type": "object" }), &[400, 401, 403, 409, 413, 422]) } }));
    paths.insert("/apis/thinfleet.io/v1/events".into(), json!({ "get": { "summary": "Events, oldest first",
        "parameters": [ { "name": "kind", "in": "query", "schema": { "type": "string" } }, { "name": "name", "in": "query", "schema": { "type": "string" } },
                        { "name": "afterSeq", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } }, { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } } ],
        "responses": ok(list(&event), auth) } }));
    let mut audit_responses = ok(list(&audit_entry), auth);
    audit_responses["200"]["content"]["application/jsonl"] = json!({ "schema": { "type": "string", "description": "one AuditEntry per line (format=jsonl)" } });
    let text = json!({ "type": "string" });
    paths.insert("/apis/thinfleet.io/v1/audit".into(), json!({ "get": {
        "summary": "The audit trail (every write with who, from where, what and how it ended), oldest first; role viewer",
        "parameters": [ { "name": "by", "in": "query", "schema": text }, { "name": "kind", "in": "query", "schema": text },
                        { "name": "name", "in": "query", "schema": text }, { "name": "action", "in": "query", "schema": text },
                        { "name": "afterSeq", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } },
                        { "name": "format", "in": "query", "schema": { "enum": ["json", "jsonl"] } } ],
        "responses": audit_responses } }));
    paths.insert("/apis/thinfleet.io/v1/clientgroups/{name}/retry".into(), json!({ "post": {
        "summary": "Retry the releases that failed on the group's members (each failed package once more)",
        "parameters": [name_param],
        "responses": ok(json!({ "type": "object", "properties": { "kind": { "type": "string" }, "group": { "type": "string" }, "message": { "type": "string" },
            "retried": { "type": "array", "items": { "type": "object", "properties": { "client": { "type": "string" }, "package": { "type": "string" }, "version": { "type": "string" }, "attempt": { "type": "integer" } } } } } }),
            &[400, 401, 403, 404, 503]) } }));
    for (verb, summary) in [
        (
            "pause",
            "Pause the group's rollout: no member gets a new version until it is resumed (kept across applies); role operator",
        ),
        (
            "resume",
            "Resume a rollout paused with pause; role operator",
        ),
    ] {
        paths.insert(format!("/apis/thinfleet.io/v1/clientgroups/{{name}}/{verb}"), json!({ "post": {
            "summary": summary,
            "parameters": [name_param],
            "responses": ok(json!({ "type": "object", "properties": { "kind": { "type": "string" }, "group": { "type": "string" },
                "paused": { "type": "boolean" }, "message": { "type": "string" } } }), &[400, 401, 403, 404, 409]) } }));
    }
    paths.insert("/apis/thinfleet.io/v1/clientgroups/{name}/undo".into(), json!({ "post": {
        "summary": "Return the group to the versions of its last completed rollout before the current one, until its spec changes; role operator",
        "parameters": [name_param],
        "responses": ok(json!({ "type": "object", "properties": { "kind": { "type": "string" }, "group": { "type": "string" },
            "versions": { "type": "object", "additionalProperties": { "type": "string" } }, "message": { "type": "string" } } }), &[400, 401, 403, 404, 409]) } }));
    paths.insert("/apis/thinfleet.io/v1/clientgroups/{name}/activate-now".into(), json!({ "post": {
        "summary": "Members activate the current rollout's staged changes at once, whatever their maintenance windows or reboots; role operator",
        "parameters": [name_param],
        "responses": ok(json!({ "type": "object", "properties": { "kind": { "type": "string" }, "group": { "type": "string" },
            "revision": { "type": "integer" }, "message": { "type": "string" } } }), &[400, 401, 403, 404, 409]) } }));
    paths.insert("/apis/thinfleet.io/v1/clientgroups/{name}/rollouts".into(), json!({ "get": {
        "summary": "The group's rollouts, the current one first: when, which versions, by whom, outcome",
        "parameters": [name_param],
        "responses": ok(json!({ "type": "object", "properties": { "group": { "type": "string" },
            "items": { "type": "array", "items": { "type": "object", "properties": {
                "revision": { "type": "integer" }, "versions": { "type": "object", "additionalProperties": { "type": "string" } },
                "startedAt": { "type": "string" }, "finishedAt": { "type": "string" }, "by": { "type": "string" },
                "outcome": { "enum": ["Progressing", "Complete", "Failed", "Superseded", "Undone"] }, "generation": { "type": "integer" } } } } } }), READ) } }));
    paths.insert("/apis/thinfleet.io/v1/sources".into(), json!({ "get": { "summary": "Watched manifest directories", "responses": ok(list(&source), &[401, 403]) } }));
    // One source is its status with `kind` and `apiVersion` added.
    let one_source = json!({ "allOf": [source, { "type": "object", "properties": { "kind": { "const": "ManifestSource" }, "apiVersion": { "type": "string" } } }] });
    paths.insert("/apis/thinfleet.io/v1/sources/{name}".into(), json!({ "get": { "summary": "One watched manifest directory (named by its base name)",
        "parameters": [ { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": ok(one_source, READ) } }));
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
    paths.insert("/apis/thinfleet.io/v1/credentials".into(), json!({
        "post": { "summary": "Create a named credential with a role (its token is answered once); role admin",
            "requestBody": json_body(credential_request),
            "responses": ok(credential_created.clone(), &[400, 401, 403, 409, 422]) },
        "get": { "summary": "List credentials (no tokens); role viewer", "responses": ok(list(&credential), &[401, 403]) } }));
    paths.insert(
        "/apis/thinfleet.io/v1/credentials/{name}".into(),
        json!({ "delete": { "summary": "Revoke a credential; role admin",
        "parameters": [token_name], "responses": ok(credential, &[401, 403, 404]) } }),
    );
    paths.insert("/apis/thinfleet.io/v1/credentials/{name}/rotate".into(), json!({ "post": {
        "summary": "Give a credential a new token (answered once; the old one is refused from now on); role admin",
        "parameters": [token_name], "responses": ok(credential_created, &[401, 403, 404]) } }));
    paths.insert("/apis/thinfleet.io/v1/blockedmachines".into(), json!({ "get": { "summary": "Machine identities refused at enrolment", "responses": ok(list(&blocked), auth) } }));
    paths.insert("/apis/thinfleet.io/v1/blockedmachines/{machineId}".into(), json!({ "delete": { "summary": "Allow a machine id to enrol again",
        "parameters": [ { "name": "machineId", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": ok(list(&blocked), &[401, 403, 404]) } }));
    paths.insert("/blobs".into(), json!({ "put": { "summary": "Upload a blob", "parameters": [ { "name": "sha256", "in": "query", "schema": { "type": "string", "pattern": "^[0-9a-f]{64}$" } } ],
        "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
        "responses": ok(json!({ "type": "object", "required": ["sha256", "size"], "properties": { "sha256": { "type": "string" }, "size": { "type": "integer" } } }), &[400, 401, 403, 413, 422]) } }));
    let blob = |summary: &str, content: bool| {
        let mut responses = error_responses(&[400, 401, 404, 416]);
        let body = if content {
            json!({ "application/zip": { "schema": { "type": "string", "format": "binary" } } })
        } else {
            json!({})
        };
        responses.insert(
            "200".into(),
            json!({ "description": "The blob", "content": body }),
        );
        responses.insert(
            "206".into(),
            json!({ "description": "A range of the blob", "content": body }),
        );
        responses.insert(
            "304".into(),
            json!({ "description": "Not modified (If-None-Match)" }),
        );
        json!({ "summary": summary, "parameters": [
            { "name": "hex", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{64}$" } },
            { "name": "Range", "in": "header", "schema": { "type": "string" } },
            { "name": "If-None-Match", "in": "header", "schema": { "type": "string" } } ],
            "responses": responses })
    };
    paths.insert("/blobs/sha256/{hex}".into(), json!({ "get": blob("Download a blob (Range, ETag)", true), "head": blob("A blob's size and ETag", false) }));
    // Enrolment and sessions are how an agent comes by a token: they need none.
    paths.insert("/agent/v1/enroll".into(), json!({ "post": { "summary": "Enrol an agent (200 enrolled, 202 pending; the bootstrap token and a signature are in the body)", "security": [],
        "requestBody": json_body(enroll_request.clone()),
        "responses": with_response(ok(enroll_response.clone(), &[400, 401, 403, 413, 415, 422, 429]), "202", "Pending: an admin has to approve the client", enroll_response) } }));
    paths.insert("/agent/v1/session".into(), json!({ "post": { "summary": "A session challenge, or a session for a signed challenge", "security": [],
        "requestBody": json_body(session_request), "responses": ok(session_response, &[400, 401, 403, 413, 415, 422]) } }));
    paths.insert("/agent/v1/heartbeat".into(), json!({ "post": { "summary": "Agent heartbeat (a session token)",
        "requestBody": json_body(heartbeat_request), "responses": ok(heartbeat_response, JSON_BODY) } }));
    paths.insert("/agent/v1/desired".into(), json!({ "get": { "summary": "Long-poll for a new desired state (a client token)",
        "parameters": [ { "name": "afterRevision", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } }, { "name": "timeoutSeconds", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } } ],
        "responses": ok(desired_response, auth) } }));
    paths.insert("/agent/v1/tasks/report".into(), json!({ "post": { "summary": "What the agent says about its task orders (a session token): states, exit codes, output tails, logs; orders not given to this client are ignored",
        "requestBody": json_body(task_reports),
        "responses": ok(json!({ "type": "object", "required": ["accepted"], "properties": { "accepted": { "type": "integer", "minimum": 0 } } }), &[400, 401, 403, 413, 415, 422, 503]) } }));
    paths.insert("/agent/v1/history".into(), json!({ "post": { "summary": "The load history the controller asked for with sendHistory (a session token); refused with nothing stored for another client (403), broken limits (400, 413) or when not asked (409)",
        "requestBody": json_body(history_upload),
        "responses": ok(json!({ "type": "object", "required": ["samples"], "properties": { "samples": { "type": "integer", "minimum": 0 } } }), &[400, 401, 403, 404, 409, 413, 415, 422]) } }));
    paths.insert("/agent/v1/releases/{package}/{version}".into(), json!({ "get": {
        "summary": "The release (digest and hooks) of a package version this client reports running, for an agent that rebuilt its journal",
        "parameters": [ { "name": "package", "in": "path", "required": true, "schema": { "type": "string" } }, { "name": "version", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": ok(release_info, READ) } }));
    let plain = |summary: &str, content_type: &str| {
        json!({ "get": { "summary": summary, "security": [], "responses": {
        "200": { "description": "OK", "content": { content_type: { "schema": { "type": "string" } } } } } } })
    };
    paths.insert("/healthz".into(), plain("Liveness", "text/plain"));
    paths.insert(
        "/metrics".into(),
        plain("Prometheus metrics", "application/openmetrics-text"),
    );
    paths.insert("/readyz".into(), json!({ "get": { "summary": "Readiness: 503 until the watched directory was applied once", "security": [], "responses": {
        "200": { "description": "OK", "content": { "text/plain": { "schema": { "type": "string" } } } },
        "503": { "description": "Starting", "content": status_content } } } }));
    paths.insert("/version".into(), json!({ "get": { "summary": "Controller version", "security": [], "responses": {
        "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object", "required": ["version"], "properties": { "version": { "type": "string" } } } } } } } } }));
    paths.insert("/openapi.json".into(), json!({ "get": { "summary": "This document", "security": [], "responses": {
        "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } } } } }));
    // The role each admin operation needs, from the route table the server enforces.
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            if let Some(role) = crate::credentials::documented_role(method, path) {
                let text = if path.starts_with("/blobs/sha256/") {
                    "Any credential, or an agent's session token.".to_string()
                } else {
                    format!("Needs a credential with role {role} or above.")
                };
                operation["description"] = Value::String(text);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "thinfleet controller", "version": env!("CARGO_PKG_VERSION") },
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": { "schemas": components, "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
    })
}
