//! Test harness: a fake controller on 127.0.0.1 speaking the agent protocol as controllers of
//! protocol 1 did (a client token handed out at enrolment, no sessions: agents still work with
//! them) and serving blobs (with Range support and a way to cut a download short), and builders
//! for package zips. The real controller's protocol is tested in `real_controller.rs`.

#![allow(dead_code)]

pub mod real;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tc_agent::download::sha256_hex;
use tc_agent::state::StateDir;
use tc_proto::activation::Activation;
use tc_proto::task::{TaskOrder, TaskReport, TaskReports, check_reports};
use tc_proto::{
    DesiredPackage, DesiredResponse, DesiredState, EnrollRequest, ErrorStatus, HeartbeatRequest,
    HeartbeatResponse, Hook, Hooks, PackageReport, PackageState,
};
use tokio::sync::{oneshot, watch};

/// The bootstrap token the fake controller accepts.
pub const BOOTSTRAP_TOKEN: &str = "bootstrap-secret";

/// What the fake controller knows and records.
pub struct FakeState {
    /// The desired state handed to every client.
    pub desired: DesiredState,
    /// Blobs by sha256.
    pub blobs: HashMap<String, Vec<u8>>,
    /// Client tokens that are accepted.
    pub tokens: HashSet<String>,
    /// Every enrolment request received.
    pub enrolments: Vec<EnrollRequest>,
    /// Every heartbeat received.
    pub heartbeats: Vec<HeartbeatRequest>,
    /// The `Range` header of every blob request (`None` when absent).
    pub blob_ranges: Vec<Option<String>>,
    /// The `Authorization` header of every blob request (`None` when absent).
    pub blob_authorizations: Vec<Option<String>>,
    /// Blobs are served only with a valid client token (as the controller does by default).
    pub blobs_need_token: bool,
    /// When set, the next blob answer is cut after this many bytes (the connection drops).
    pub truncate_next_blob: Option<usize>,
    /// The heartbeat interval handed out.
    pub heartbeat_millis: u64,
    /// Ask for the full inventory with the next heartbeat.
    pub send_inventory_next: bool,
    /// Long-polls received.
    pub long_polls: usize,
    /// Client tokens handed out at enrolment are this followed by a number.
    pub token_prefix: String,
    /// Task orders handed out with every heartbeat and long-poll answer (again and again, until
    /// a test takes them away: redelivery is normal).
    pub orders: Vec<TaskOrder>,
    /// How many answers carried orders.
    pub orders_served: usize,
    /// Every task report received, in order.
    pub task_reports: Vec<TaskReport>,
    /// When set, task reports are answered with this status and not stored.
    pub task_report_status: Option<StatusCode>,
    /// Task report requests received (stored or not).
    pub task_report_posts: usize,
}

struct Shared {
    state: Mutex<FakeState>,
    revision: watch::Sender<u64>,
}

/// A fake controller. It runs on its own thread and runtime, so that [`FakeController::stop`]
/// drops every connection at once, as a controller that goes away would.
pub struct FakeController {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl FakeController {
    /// Starts a fake controller on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                desired: DesiredState::default(),
                blobs: HashMap::new(),
                tokens: HashSet::new(),
                enrolments: Vec::new(),
                heartbeats: Vec::new(),
                blob_ranges: Vec::new(),
                blob_authorizations: Vec::new(),
                blobs_need_token: false,
                truncate_next_blob: None,
                heartbeat_millis: 200,
                send_inventory_next: false,
                long_polls: 0,
                token_prefix: "client-token-".into(),
                orders: Vec::new(),
                orders_served: 0,
                task_reports: Vec::new(),
                task_report_status: None,
                task_report_posts: 0,
            }),
            revision: watch::channel(0).0,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fake = FakeController {
            shared,
            addr,
            running: None,
        };
        fake.serve(listener);
        fake
    }

    /// The controller URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Locks the recorded state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.shared.state.lock().unwrap()
    }

    /// Replaces the desired state, bumping the revision, and wakes the long-polls.
    pub fn set_desired(&self, packages: Vec<DesiredPackage>) -> u64 {
        self.set_desired_with(packages, Activation::default())
    }

    /// Replaces the desired state with `packages` under `activation`, bumping the revision, and
    /// wakes the long-polls.
    pub fn set_desired_with(&self, packages: Vec<DesiredPackage>, activation: Activation) -> u64 {
        let revision = {
            let mut state = self.state();
            state.desired = DesiredState {
                activation,
                revision: state.desired.revision + 1,
                packages,
                decommission: false,
            };
            state.desired.revision
        };
        self.shared.revision.send_replace(revision);
        revision
    }

    /// Registers a blob and returns a desired package pointing at it.
    pub fn package(&self, name: &str, version: &str, zip: Vec<u8>, hooks: Hooks) -> DesiredPackage {
        let sha256 = sha256_hex(&zip);
        let size = zip.len() as u64;
        self.state().blobs.insert(sha256.clone(), zip);
        DesiredPackage {
            name: name.into(),
            version: version.into(),
            url: format!("/blobs/sha256/{sha256}"),
            sha256,
            size,
            hooks,
            attempt: 0,
            signature: None,
        }
    }

    /// Stops serving and drops every open connection.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            thread.join().unwrap();
        }
    }

    /// Serves again on the same port (after [`FakeController::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let mut attempts = 0;
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(error) if attempts < 100 => {
                    attempts += 1;
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("cannot listen on {} again: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Adds a task order, handed out from the next answer on.
    pub fn add_order(&self, order: TaskOrder) {
        self.state().orders.push(order);
    }

    /// The reports received for order `id`, in order.
    pub fn task_reports(&self, id: &str) -> Vec<TaskReport> {
        self.state()
            .task_reports
            .iter()
            .filter(|report| report.id == id)
            .cloned()
            .collect()
    }

    /// The final report received for order `id`, if any.
    pub fn final_report(&self, id: &str) -> Option<TaskReport> {
        self.task_reports(id)
            .into_iter()
            .rfind(|report| report.state.is_final())
    }

    /// The last heartbeat's report for `name`, with the heartbeat's observed revision.
    pub fn last_report(&self, name: &str) -> Option<(u64, PackageReport)> {
        let state = self.state();
        let heartbeat = state.heartbeats.last()?;
        heartbeat
            .packages
            .iter()
            .find(|report| report.name == name)
            .map(|report| (heartbeat.observed_revision, report.clone()))
    }

    /// True when the last heartbeat says `name` is installed at `version` for `revision`.
    pub fn reports_installed(&self, name: &str, version: &str, revision: u64) -> bool {
        self.last_report(name).is_some_and(|(observed, report)| {
            observed == revision
                && report.state == PackageState::Installed
                && report.version == version
        })
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let shared = self.shared.clone();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = axum::serve(listener, router(shared)) => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime drops every connection task.
        });
        self.running = Some((stop_tx, thread));
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.stop();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/agent/v1/enroll", post(enroll))
        .route("/agent/v1/heartbeat", post(heartbeat))
        .route("/agent/v1/desired", get(desired))
        .route("/agent/v1/tasks/report", post(task_report))
        .route("/blobs/sha256/{sha}", get(blob))
        .with_state(shared)
}

fn error(status: StatusCode, reason: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorStatus {
            code: status.as_u16(),
            reason: reason.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

fn authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    shared.state.lock().unwrap().tokens.contains(token)
}

async fn enroll(State(shared): State<Arc<Shared>>, Json(request): Json<EnrollRequest>) -> Response {
    if request.bootstrap_token != BOOTSTRAP_TOKEN {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "invalid bootstrap token",
        );
    }
    let mut state = shared.state.lock().unwrap();
    let token = format!("{}{}", state.token_prefix, state.enrolments.len() + 1);
    state.tokens.insert(token.clone());
    let name = request.name.clone();
    state.enrolments.push(request);
    // A protocol-1 answer: no state, no session, a client token.
    Json(serde_json::json!({
        "clientName": name,
        "clientToken": token,
        "heartbeatSeconds": 1,
    }))
    .into_response()
}

async fn heartbeat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(request): Json<HeartbeatRequest>,
) -> Response {
    if !authorised(&shared, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "unknown client token",
        );
    }
    let mut state = shared.state.lock().unwrap();
    state.heartbeats.push(request);
    let send_inventory = std::mem::take(&mut state.send_inventory_next);
    let tasks = served_orders(&mut state);
    Json(HeartbeatResponse {
        desired: state.desired.clone(),
        next_heartbeat_millis: state.heartbeat_millis,
        send_inventory,
        tasks,
    })
    .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DesiredQuery {
    after_revision: u64,
}

async fn desired(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<DesiredQuery>,
) -> Response {
    if !authorised(&shared, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "unknown client token",
        );
    }
    shared.state.lock().unwrap().long_polls += 1;
    let mut revisions = shared.revision.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if *revisions.borrow_and_update() != query.after_revision {
                return;
            }
            if revisions.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    let (desired, tasks) = {
        let mut state = shared.state.lock().unwrap();
        (state.desired.clone(), served_orders(&mut state))
    };
    let changed = desired.revision != query.after_revision;
    Json(DesiredResponse {
        desired,
        changed,
        send_history: false,
        tasks,
    })
    .into_response()
}

/// The orders to hand out with an answer, counted.
fn served_orders(state: &mut FakeState) -> Vec<TaskOrder> {
    if !state.orders.is_empty() {
        state.orders_served += 1;
    }
    state.orders.clone()
}

async fn task_report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(reports): Json<TaskReports>,
) -> Response {
    if !authorised(&shared, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "unknown client token",
        );
    }
    if let Err(message) = check_reports(&reports) {
        return error(StatusCode::BAD_REQUEST, "BadRequest", &message);
    }
    let mut state = shared.state.lock().unwrap();
    state.task_report_posts += 1;
    if let Some(status) = state.task_report_status {
        return error(status, "Refused", "the test refuses task reports");
    }
    state.task_reports.extend(reports.reports);
    StatusCode::NO_CONTENT.into_response()
}

async fn blob(
    State(shared): State<Arc<Shared>>,
    UrlPath(sha): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let needs_token = shared.state.lock().unwrap().blobs_need_token;
    if needs_token && !authorised(&shared, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "blobs need a client token",
        );
    }
    let (data, truncate) = {
        let mut state = shared.state.lock().unwrap();
        state.blob_ranges.push(range.clone());
        state.blob_authorizations.push(authorization);
        let Some(data) = state.blobs.get(&sha).cloned() else {
            return error(StatusCode::NOT_FOUND, "NotFound", "no such blob");
        };
        (data, state.truncate_next_blob.take())
    };
    let total = data.len();
    let start = range
        .as_deref()
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse::<usize>().ok());
    let (status, body_bytes, content_range) = match start {
        Some(start) if start >= total => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{total}"))
                .body(Body::empty())
                .unwrap();
        }
        Some(start) => (
            StatusCode::PARTIAL_CONTENT,
            data[start..].to_vec(),
            Some(format!("bytes {start}-{}/{total}", total - 1)),
        ),
        None => (StatusCode::OK, data, None),
    };
    let length = body_bytes.len();
    let body = match truncate {
        Some(cut) if cut < length => {
            use futures_util::StreamExt;
            let first = Bytes::from(body_bytes[..cut].to_vec());
            // The first part goes out, then the connection breaks a moment later.
            let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(first)]).chain(
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(std::io::Error::other("connection dropped by the test"))
                }),
            );
            Body::from_stream(stream)
        }
        _ => Body::from(body_bytes),
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, length)
        .header(header::ETAG, format!("\"sha256:{sha}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(content_range) = content_range {
        response = response.header(header::CONTENT_RANGE, content_range);
    }
    response.body(body).unwrap()
}

/// One entry of a test zip.
pub enum Entry<'a> {
    /// A file with its unix mode.
    File(&'a str, &'a [u8], u32),
    /// A directory.
    Dir(&'a str),
    /// A symbolic link and its target.
    Link(&'a str, &'a str),
}

/// Builds a zip in memory.
pub fn build_zip(entries: &[Entry<'_>]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for entry in entries {
        match entry {
            Entry::File(name, content, mode) => {
                writer
                    .start_file(*name, options.unix_permissions(*mode))
                    .unwrap();
                writer.write_all(content).unwrap();
            }
            Entry::Dir(name) => writer.add_directory(*name, options).unwrap(),
            Entry::Link(name, target) => writer.add_symlink(*name, *target, options).unwrap(),
        }
    }
    writer.finish().unwrap().into_inner()
}

/// A package zip for `version`: `VERSION`, an executable `bin/app`, a nested data file and a
/// `health.sh` script.
pub fn package_zip(version: &str) -> Vec<u8> {
    let app = format!("#!/bin/sh\necho app {version}\n");
    let readme = format!("readme of {version}\n");
    build_zip(&[
        Entry::File("VERSION", version.as_bytes(), 0o644),
        Entry::Dir("bin/"),
        Entry::File("bin/app", app.as_bytes(), 0o755),
        Entry::File("share/doc/readme.txt", readme.as_bytes(), 0o644),
        Entry::File("health.sh", b"#!/bin/sh\necho healthy\n", 0o755),
    ])
}

/// A hook running a shell snippet.
pub fn shell_hook(script: &str, timeout_seconds: u32) -> Hook {
    Hook {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout_seconds,
    }
}

/// Hooks that append `<hook> <version>` to `log` (outside the package).
pub fn logging_hooks(log: &Path) -> Hooks {
    let line = |hook: &str| {
        shell_hook(
            &format!("echo {hook} $TC_PACKAGE_VERSION >> {}", log.display()),
            10,
        )
    };
    Hooks {
        pre_install: Some(line("preInstall")),
        post_install: Some(line("postInstall")),
        health_check: Some(line("healthCheck")),
        pre_remove: Some(line("preRemove")),
    }
}

/// Lines of a hook log (empty when it does not exist).
pub fn read_log(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The version `current` points to.
pub fn current_version(dir: &StateDir, name: &str) -> Option<String> {
    std::fs::read_link(dir.current(name))
        .ok()
        .map(|target| target.to_string_lossy().into_owned())
}

/// Asserts that `current` points to `version` and that the version is complete.
pub fn assert_active_complete(dir: &StateDir, name: &str, version: &str) {
    assert_eq!(
        current_version(dir, name).as_deref(),
        Some(version),
        "current of {name}"
    );
    assert_complete(dir, name, version);
}

/// Asserts that the files of `version` (as built by [`package_zip`]) are all there.
pub fn assert_complete(dir: &StateDir, name: &str, version: &str) {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.current(name).parent().unwrap().join(version);
    assert_eq!(
        std::fs::read_to_string(root.join("VERSION")).unwrap(),
        version
    );
    assert_eq!(
        std::fs::read_to_string(root.join("bin/app")).unwrap(),
        format!("#!/bin/sh\necho app {version}\n")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("share/doc/readme.txt")).unwrap(),
        format!("readme of {version}\n")
    );
    let mode = std::fs::metadata(root.join("bin/app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "bin/app keeps its executable bit");
}

/// Names in a directory, sorted (empty when it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Hooks of a release whose health check fails with `kiosk session dead`; `postInstall` appends
/// `postInstall <version>` to `log` first.
pub fn failing_release_hooks(log: &Path) -> Hooks {
    Hooks {
        post_install: Some(shell_hook(
            &format!("echo postInstall $TC_PACKAGE_VERSION >> {}", log.display()),
            10,
        )),
        health_check: Some(shell_hook("echo kiosk session dead >&2; exit 1", 10)),
        ..Hooks::default()
    }
}

/// True when the last heartbeat reports `kiosk` `Failed` at `version` for `revision` with the
/// health check's message, and 1.0.0 still active.
pub fn reports_failed(fake: &FakeController, version: &str, revision: u64) -> bool {
    fake.last_report("kiosk").is_some_and(|(observed, report)| {
        observed == revision
            && report.state == PackageState::Failed
            && report.version == version
            && report.active_version.as_deref() == Some("1.0.0")
            && report
                .message
                .as_deref()
                .is_some_and(|message| message.contains("kiosk session dead"))
    })
}

/// Waits until the failure of `kiosk` `version` is reported for `revision`, then until `rounds`
/// more heartbeats and long-polls have reached the controller, and checks that each of those
/// heartbeats still reports the failure.
pub async fn wait_for_failed_rounds(
    fake: &FakeController,
    rounds: usize,
    version: &str,
    revision: u64,
) {
    let summary = || {
        let state = fake.state();
        format!(
            "{} heartbeats, {} long-polls, last: {:?}",
            state.heartbeats.len(),
            state.long_polls,
            state.heartbeats.last()
        )
    };
    wait_for(
        Duration::from_secs(60),
        || reports_failed(fake, version, revision),
        summary,
    )
    .await;
    let (heartbeats, polls) = {
        let state = fake.state();
        (state.heartbeats.len(), state.long_polls)
    };
    wait_for(
        Duration::from_secs(60),
        || {
            let state = fake.state();
            state.heartbeats.len() >= heartbeats + rounds && state.long_polls >= polls + rounds
        },
        summary,
    )
    .await;
    // Copied out so that a failed assertion does not poison the lock the server uses.
    let seen = fake.state().heartbeats[heartbeats..].to_vec();
    for heartbeat in &seen {
        let report = heartbeat
            .packages
            .iter()
            .find(|report| report.name == "kiosk");
        assert!(
            heartbeat.observed_revision == revision
                && report.is_some_and(|report| {
                    report.state == PackageState::Failed && report.version == version
                }),
            "every heartbeat reports the failure: {heartbeat:?}"
        );
    }
}

/// Polls `condition` every 50 ms until it holds, or panics after `timeout` with `context()`.
pub async fn wait_for(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            panic!("condition not met within {timeout:?}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real `tc-agent` binary as the tests run it: `--server` (with `--ca-cert-hash` for an
/// HTTPS controller) and `--state-dir`, info logs on standard error, retries after 100 ms, no
/// fault injection and no proxy from the environment, nothing on standard input or output.
/// Callers add the rest (token, machine id, labels) and where standard error goes.
pub fn agent_command(
    server: &str,
    ca_cert_hash: Option<&str>,
    state: &Path,
) -> std::process::Command {
    agent_command_for(
        Path::new(env!("CARGO_BIN_EXE_tc-agent")),
        server,
        ca_cert_hash,
        state,
    )
}

/// [`agent_command`] for the agent binary `binary` (another release's, in `compat.rs`).
pub fn agent_command_for(
    binary: &Path,
    server: &str,
    ca_cert_hash: Option<&str>,
    state: &Path,
) -> std::process::Command {
    let mut command = std::process::Command::new(binary);
    command.args(["--server", server]);
    if let Some(hash) = ca_cert_hash {
        command.args(["--ca-cert-hash", hash]);
    }
    command
        .arg("--state-dir")
        .arg(state)
        .env_remove("TC_AGENT_FAULT")
        .env_remove("RUST_LOG")
        .env("TC_AGENT_LOG", "info")
        .env("TC_AGENT_RETRY_MILLIS", "100")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    for proxy in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(proxy);
    }
    command
}
