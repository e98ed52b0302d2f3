//! The agent side of the protocol (`/agent/v1`) and the agent's main loop.
//!
//! Three loops run side by side in one task:
//!
//! * the protocol loop enrols once (see [`crate::enrol`] for enrolment and sessions), then sends
//!   heartbeats (package reports, inventory hash, the
//!   full inventory only when the hash changed or the controller asked, load) and, between
//!   heartbeats, waits on the long-poll so that a new desired state arrives at once. A heartbeat
//!   is also sent as soon as the package reports change. When the controller is unreachable it
//!   retries with exponential backoff and jitter, and catches up when it is back;
//! * the engine loop converges to the latest desired state (also the one remembered in the
//!   journal, so work continues while the controller is away) and wakes up when a failed package
//!   is due for a retry, and when a maintenance window opens for a change it staged;
//! * the task runner ([`crate::tasks::TaskRunner`]) carries out the orders that come with
//!   heartbeat and long-poll answers, and reports on them, without holding up either loop.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use tc_proto::task::TaskOrder;
use tc_proto::{
    DesiredState, EnrollResponse, HeartbeatRequest, PROTOCOL_VERSION, Timestamp, inventory_hash,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backoff::{Backoff, Retry};
use crate::config::{AgentConfig, CaTrust};
use crate::download::{Fetcher, error_chain};
use crate::engine::{Engine, EngineError, EngineOptions, Snapshot};
use crate::history::Ring;
use crate::identity::{Identity, KeyOrigin};
use crate::inventory::{AGENT_VERSION, Collector};
use crate::state::{
    ConnectionStatus, Credentials, Decommissioned, ErrorRecord, StateDir, StateError, read_file,
    read_json, write_atomic, write_json,
};

mod api;

pub use api::{ApiError, ControllerClient, decode_answer};

/// Where the system's machine identity is read from.
pub const SYSTEM_MACHINE_ID: &str = "/etc/machine-id";

/// A long-poll answer that comes back faster than this without a newer revision means the
/// controller does not hold requests; the agent then waits for the next heartbeat instead of
/// polling again at once.
const MIN_LONG_POLL: Duration = Duration::from_secs(1);

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent has no credentials and no bootstrap token to get them.
    #[error(
        "not enrolled with {server} and no bootstrap token configured (use --bootstrap-token-file)"
    )]
    NotEnrolled {
        /// The controller.
        server: Url,
    },
    /// The state directory could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The install engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The HTTP client could not be built.
    #[error("cannot set up HTTP: {0}")]
    Http(String),
    /// The controller's CA could not be set up.
    #[error("cannot set up trust in the controller: {0}")]
    Trust(#[from] tc_trust::TrustError),
}

/// Where the agent keeps the CA certificate it pinned (in its state directory).
pub const PINNED_CA_FILE: &str = "ca.crt";

/// Builds the HTTP client shared by the protocol and the downloads (with rustls on the *ring*
/// provider, installed here if nothing installed a provider before).
///
/// It follows no redirect: a redirect would replay an enrolment (with its bootstrap token) or a
/// heartbeat (with the inventory) to whatever host it names. A 3xx is an error the agent reports.
///
/// An `https://` server is trusted through `ca`: a CA file, or a pinned fingerprint. With a pin,
/// the CA certificate of the first handshake that verified is stored as
/// `<state_dir>/ca.crt` (mode 0600), and from the next start on exactly that certificate is
/// trusted — as long as it still has the configured fingerprint.
pub fn http_client(
    server: &Url,
    ca: Option<&CaTrust>,
    state_dir: &Path,
) -> Result<reqwest::Client, AgentError> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(format!("tc-agent/{AGENT_VERSION}"))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10));
    if server.scheme() == "https" {
        let ca = ca.ok_or_else(|| {
            AgentError::Http(format!(
                "{server} is https and no CA is configured (--ca-cert-hash or --ca-file)"
            ))
        })?;
        builder = builder.use_preconfigured_tls(tls_config(ca, state_dir)?);
    }
    builder
        .build()
        .map_err(|error| AgentError::Http(error_chain(&error)))
}

/// The rustls configuration for `ca` (HTTP/1.1 only: the agent's client speaks nothing else).
fn tls_config(ca: &CaTrust, state_dir: &Path) -> Result<rustls::ClientConfig, AgentError> {
    use tc_trust::{CaCertHash, Trust};
    let alpn = [tc_trust::ALPN_HTTP1];
    let pin = match ca {
        CaTrust::File(path) => {
            return Ok(tc_trust::client_config(
                &Trust::from_pem_file(path)?,
                &alpn,
                None,
            )?);
        }
        CaTrust::Pinned(pins) if pins.len() > 1 => {
            // A CA being replaced: the chain is checked against every fingerprint at each
            // connection, so that the switch to the new CA needs nothing here.
            return Ok(tc_trust::client_config(
                &Trust::Pinned(pins.clone()),
                &alpn,
                None,
            )?);
        }
        CaTrust::Pinned(pins) => pins[0],
    };
    let stored = state_dir.join(PINNED_CA_FILE);
    // Read like every file of the state directory: a link planted there is refused, not followed.
    let kept = read_file(&stored).and_then(|pem| match pem {
        Some(pem) => tc_trust::parse_pem_certificates(&pem)
            .map(Some)
            .map_err(|error| StateError::io(&stored)(std::io::Error::other(error))),
        None => Ok(None),
    });
    if let Some(kept) = kept.transpose() {
        match kept {
            Ok(certificates)
                if certificates.len() == 1
                    && CaCertHash::of_certificate(&certificates[0]).ok() == Some(pin) =>
            {
                let trust = Trust::CaCertificates(certificates);
                return Ok(tc_trust::client_config(&trust, &alpn, None)?);
            }
            Ok(_) => tracing::warn!(
                path = %stored.display(),
                ca_cert_hash = %pin,
                "the stored CA certificate does not have the configured fingerprint; pinning again"
            ),
            Err(error) => {
                tracing::warn!(%error, "the stored CA certificate is unusable; pinning again")
            }
        }
    }
    let on_pinned: tc_trust::OnPinned = Box::new(move |certificate| {
        let pem = tc_trust::certificate_pem(certificate);
        match write_atomic(&stored, pem.as_bytes(), 0o600) {
            Ok(()) => {
                tracing::info!(path = %stored.display(), ca_cert_hash = %pin, "pinned the controller's CA")
            }
            Err(error) => tracing::warn!(%error, "cannot store the pinned CA certificate"),
        }
    });
    Ok(tc_trust::client_config(
        &Trust::Pinned(vec![pin]),
        &alpn,
        Some(on_pinned),
    )?)
}

/// Everything the main loop needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The resolved configuration.
    pub config: AgentConfig,
    /// Engine tunables.
    pub engine: EngineOptions,
    /// Backoff while the controller is unreachable.
    pub retry: Backoff,
    /// Client-side timeout of the long-poll (a bit above what the controller holds it).
    pub long_poll_timeout: Duration,
    /// Heartbeat intervals asked by the controller are kept within these bounds.
    pub heartbeat_bounds: (Duration, Duration),
    /// How long a shutdown waits for the install engine to finish the current package.
    pub shutdown_grace: Duration,
}

impl RunOptions {
    /// Production defaults for `config`.
    pub fn new(config: AgentConfig) -> Self {
        let engine = EngineOptions {
            trusted_keys: config.trusted_keys.clone(),
            boot_id_file: config.tasks.boot_id_file.clone(),
            ..EngineOptions::default()
        };
        RunOptions {
            config,
            engine,
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            long_poll_timeout: Duration::from_secs(75),
            heartbeat_bounds: (Duration::from_secs(1), Duration::from_secs(3600)),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// How a run of the agent ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// Stopped (shutdown asked, or the install engine ended).
    Stopped,
    /// The client was decommissioned, now or before this start: everything thinfleet installed
    /// is removed, the identity is gone, and the agent does not run again.
    Decommissioned(Decommissioned),
    /// A `thinfleet-agent` release was committed (or unassigned): the agent restarts into the
    /// binary that should now run ([`crate::selfupdate::restart`]).
    Restart,
    /// In check-in mode: a heartbeat was accepted.
    CheckedIn,
}

/// Runs the agent until `shutdown` completes or the client is decommissioned. Returns an error
/// only for problems a retry cannot fix (no credentials and no bootstrap token, an unusable state
/// directory).
///
/// On shutdown the install engine is given [`RunOptions::shutdown_grace`] to finish the package
/// it is working on; after that it is dropped mid-step, which the journal recovers from at the
/// next start like any other interruption.
pub async fn run(
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunOutcome, AgentError> {
    let dir = StateDir::new(&options.config.state_dir);
    if let Some(mark) = Decommissioned::load(&dir)? {
        return Ok(RunOutcome::Decommissioned(mark));
    }
    let engine = Engine::open(dir.clone(), options.engine.clone())?;
    let (identity, origin) = Identity::load_or_create(&dir)?;
    match origin {
        KeyOrigin::Loaded => {}
        KeyOrigin::Created => {
            tracing::info!(public_key = %identity.public_key(), "made this client's key pair")
        }
        KeyOrigin::Replaced(reason) => {
            tracing::error!(%reason, public_key = %identity.public_key(),
            "the identity key was unusable: made a new one; the controller shows this machine as \
             a pending client (machine id enrolled under another key) until an admin approves it")
        }
    }
    let (fetcher, controller) = connect(&options)?;
    let tasks = crate::tasks::TaskRunner::open(
        dir.clone(),
        options.config.tasks.clone(),
        controller.clone(),
        fetcher.clone(),
        options.retry,
    )?;
    let (orders_tx, orders_rx) = mpsc::channel(16);
    let (desired_tx, desired_rx) = watch::channel(engine.journal().desired.clone());
    let (reports_tx, reports_rx) = watch::channel(engine.snapshot());
    let (stop_tx, stop_rx) = watch::channel(false);
    let history_interval = options.config.history_interval;
    let history = history_ring(&options, &dir);
    let protocol = ProtocolLoop::new(
        &options,
        &dir,
        (fetcher.clone(), controller),
        identity,
        &history,
        orders_tx,
        false,
    );
    tracing::info!(server = %options.config.server, state_dir = %options.config.state_dir.display(), version = AGENT_VERSION, "agent starting");
    let engine = engine_loop(engine, fetcher, desired_rx, reports_tx, stop_rx);
    tokio::pin!(engine);
    let sampler = crate::history::sample_forever(&history, &dir, history_interval);
    let tasks = tasks.run(orders_rx);
    let result = tokio::select! {
        result = protocol.run(desired_tx, reports_rx) => result,
        restart = &mut engine => {
            save_history(&history, &dir);
            return Ok(if restart { RunOutcome::Restart } else { RunOutcome::Stopped });
        }
        () = sampler => unreachable!("sampling never ends"),
        () = tasks => unreachable!("the task runner never ends"),
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(RunOutcome::Stopped)
        }
    };
    // The samples since the last save (a decommissioned client's identity and state are gone).
    if !matches!(result, Ok(RunOutcome::Decommissioned(_))) {
        save_history(&history, &dir);
    }
    stop_tx.send_replace(true);
    if tokio::time::timeout(options.shutdown_grace, &mut engine)
        .await
        .is_err()
    {
        tracing::warn!("an install step was still running; it is recovered at the next start");
    }
    result
}

/// The load history as saved in `dir`, sampled at the configured interval.
fn history_ring(options: &RunOptions, dir: &StateDir) -> std::sync::Mutex<Ring> {
    std::sync::Mutex::new(Ring::load(
        dir,
        u32::try_from(options.config.history_interval.as_secs()).unwrap_or(u32::MAX),
    ))
}

/// The downloads and the controller's agent API over one HTTP client that trusts the configured
/// CA.
fn connect(options: &RunOptions) -> Result<(Fetcher, ControllerClient), AgentError> {
    let http = http_client(
        &options.config.server,
        options.config.ca.as_ref(),
        &options.config.state_dir,
    )?;
    let fetcher = Fetcher::new(
        http.clone(),
        options.config.server.clone(),
        options.engine.download.clone(),
    );
    Ok((
        fetcher,
        ControllerClient::new(http, options.config.server.clone()),
    ))
}

/// Check-in mode ([`crate::selfupdate::CHECK_IN_ENV`]): the new binary of a self-update proves
/// that it can reach the controller with the client's identity. It opens a session if needed and
/// sends heartbeats (retrying like the agent does) until one is accepted, then returns. It reports
/// the journal as the running agent wrote it and changes nothing of the state directory but the
/// session and the connection record: no install engine, no tasks.
pub async fn check_in(options: RunOptions) -> Result<(), AgentError> {
    let dir = StateDir::new(&options.config.state_dir);
    let journal = crate::state::Journal::load(&dir)?.unwrap_or_default();
    let snapshot = Snapshot {
        observed_revision: journal.observed_revision,
        packages: journal.reports(),
    };
    let (identity, _) = Identity::load_or_create(&dir)?;
    let (fetcher, controller) = connect(&options)?;
    let (orders_tx, _orders_rx) = mpsc::channel(16);
    let (desired_tx, _desired_rx) = watch::channel(journal.desired.clone());
    let (_reports_tx, reports_rx) = watch::channel(snapshot);
    let history = history_ring(&options, &dir);
    let protocol = ProtocolLoop::new(
        &options,
        &dir,
        (fetcher, controller),
        identity,
        &history,
        orders_tx,
        true,
    );
    tracing::info!(server = %options.config.server, version = AGENT_VERSION, "checking in");
    protocol.run(desired_tx, reports_rx).await.map(|_| ())
}

/// Saves the load history (at shutdown: samples are otherwise saved now and then).
fn save_history(history: &std::sync::Mutex<Ring>, dir: &StateDir) {
    let ring = history.lock().expect("history lock").clone();
    if let Err(error) = ring.save(dir) {
        tracing::warn!(%error, "cannot save the load history");
    }
}

/// Converges to the latest desired state until `stop` turns true (checked between packages).
/// Returns true when it stopped for the agent to restart into another binary.
async fn engine_loop(
    mut engine: Engine,
    fetcher: Fetcher,
    mut desired_rx: watch::Receiver<Option<DesiredState>>,
    reports_tx: watch::Sender<Snapshot>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut failures = Retry::new(Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
    ));
    loop {
        if *stop.borrow_and_update() {
            return false;
        }
        if engine.restart_requested() {
            return true;
        }
        let desired = desired_rx.borrow_and_update().clone();
        let mut wait = None;
        if let Some(desired) = desired {
            let watcher = desired_rx.clone();
            let stopping = stop.clone();
            let mut progress = |snapshot: &Snapshot| {
                reports_tx.send_if_modified(|current| {
                    let changed = current != snapshot;
                    if changed {
                        *current = snapshot.clone();
                    }
                    changed
                });
                !watcher.has_changed().unwrap_or(false) && !*stopping.borrow()
            };
            match engine.converge(&desired, &fetcher, &mut progress).await {
                Ok(()) if engine.restart_requested() => return true,
                Ok(()) => failures.reset(),
                Err(error) => {
                    let delay = failures.next_delay();
                    tracing::error!(%error, retry_in = ?delay, "install engine failed");
                    wait = Some(delay);
                }
            }
        }
        let now = Timestamp::now();
        // A retry that is due, or a staged change whose window opens: whichever comes first.
        let wait = wait.or_else(|| {
            [engine.next_retry_at(now), engine.next_activation_at(now)]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.since(now))
        });
        tokio::select! {
            changed = desired_rx.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
            _ = stop.changed() => {}
            () = sleep_or_forever(wait) => {}
        }
    }
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

pub(crate) struct ProtocolLoop<'a> {
    pub(crate) options: &'a RunOptions,
    pub(crate) dir: StateDir,
    pub(crate) controller: ControllerClient,
    /// Shares the session token with the downloads.
    fetcher: Fetcher,
    pub(crate) connection: ConnectionTracker,
    pub(crate) retry: Retry,
    /// The client's key.
    pub(crate) identity: Identity,
    /// The client token of credentials written before identities, sent once with the next
    /// enrolment to keep the client it names.
    pub(crate) previous_client_token: Option<String>,
    /// The desired revision that told the agent to decommission.
    decommission: Option<u64>,
    /// The load history, sent when the controller asks for it.
    history: &'a std::sync::Mutex<Ring>,
    /// When the load history was last sent.
    history_sent_at: Option<Instant>,
    /// Hands the controller's task orders to the task runner.
    orders: mpsc::Sender<Vec<TaskOrder>>,
    /// Check-in mode: stop after the first accepted heartbeat.
    check_in_only: bool,
}

impl<'a> ProtocolLoop<'a> {
    /// The loop of a start, before anything was sent; `check_in_only` stops it after the first
    /// accepted heartbeat.
    fn new(
        options: &'a RunOptions,
        dir: &StateDir,
        (fetcher, controller): (Fetcher, ControllerClient),
        identity: Identity,
        history: &'a std::sync::Mutex<Ring>,
        orders: mpsc::Sender<Vec<TaskOrder>>,
        check_in_only: bool,
    ) -> Self {
        ProtocolLoop {
            options,
            dir: dir.clone(),
            controller,
            fetcher,
            connection: ConnectionTracker::load(dir.clone(), options.config.server.as_str()),
            retry: Retry::new(options.retry),
            identity,
            previous_client_token: None,
            decommission: None,
            history,
            history_sent_at: None,
            orders,
            check_in_only,
        }
    }

    async fn run(
        mut self,
        desired_tx: watch::Sender<Option<DesiredState>>,
        mut reports_rx: watch::Receiver<Snapshot>,
    ) -> Result<RunOutcome, AgentError> {
        let mut credentials = self.enrolled(false).await?;
        self.fetcher
            .set_token(credentials.bearer().map(str::to_owned));
        let mut collector = Collector::new();
        let mut known_revision = desired_tx
            .borrow()
            .as_ref()
            .map_or(0, |desired| desired.revision);
        let mut sent_hash: Option<String> = None;
        // Always send the full inventory once after a start: the controller may have lost it.
        let mut send_inventory = true;
        let mut checked_in = false;
        let (min_interval, max_interval) = self.options.heartbeat_bounds;
        loop {
            let snapshot = reports_rx.borrow_and_update().clone();
            // Told to decommission, and the engine removed everything for that revision.
            let decommissioned = self.decommission.is_some_and(|revision| {
                snapshot.observed_revision == revision && snapshot.packages.is_empty()
            });
            credentials = self.fresh(credentials).await?;
            self.fetcher
                .set_token(credentials.bearer().map(str::to_owned));
            let inventory = collector.inventory();
            let hash = inventory_hash(&inventory);
            let include = send_inventory || sent_hash.as_deref() != Some(hash.as_str());
            let request = HeartbeatRequest {
                protocol_version: PROTOCOL_VERSION,
                observed_revision: snapshot.observed_revision,
                packages: snapshot.packages,
                inventory_hash: hash.clone(),
                inventory: include.then_some(inventory),
                load: collector.load(),
                decommissioned,
            };
            let bearer = credentials.bearer().unwrap_or_default().to_owned();
            let interval = match self.controller.heartbeat(&bearer, &request).await {
                Ok(_) if decommissioned => return self.finish_decommission(&credentials),
                Ok(_) if self.check_in_only => return Ok(RunOutcome::CheckedIn),
                Ok(response) => {
                    if !checked_in {
                        // The binary that runs reaches the controller: its launches count afresh.
                        checked_in = true;
                        crate::selfupdate::launched_fine(&self.dir);
                    }
                    self.connection.succeeded();
                    self.retry.reset();
                    if include {
                        sent_hash = Some(hash);
                    }
                    send_inventory = response.send_inventory;
                    if response.desired.decommission && self.decommission.is_none() {
                        tracing::warn!(
                            revision = response.desired.revision,
                            "told to decommission: removing every package thinfleet installed"
                        );
                    }
                    self.decommission = response
                        .desired
                        .decommission
                        .then_some(response.desired.revision);
                    deliver(&desired_tx, response.desired, &mut known_revision);
                    self.hand_over(response.tasks);
                    Duration::from_millis(response.next_heartbeat_millis)
                        .clamp(min_interval, max_interval)
                }
                // Refused after the final report: the controller has deleted the client.
                Err(error) if error.is_unauthorized() && decommissioned => {
                    return self.finish_decommission(&credentials);
                }
                Err(error) if error.is_unauthorized() => {
                    self.connection.failed(&error.to_string());
                    tracing::warn!(%error, "the controller refused the session");
                    credentials = self.recover(credentials).await?;
                    self.fetcher
                        .set_token(credentials.bearer().map(str::to_owned));
                    send_inventory = true;
                    continue;
                }
                Err(error) => {
                    self.connection.failed(&error.to_string());
                    let delay = self.retry.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "heartbeat failed");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            self.wait_for_next_heartbeat(
                Instant::now() + interval,
                &credentials,
                &desired_tx,
                &mut reports_rx,
                &mut known_revision,
            )
            .await;
        }
    }

    /// Long-polls for desired-state changes until the heartbeat is due or the reports change.
    async fn wait_for_next_heartbeat(
        &mut self,
        deadline: Instant,
        credentials: &Credentials,
        desired_tx: &watch::Sender<Option<DesiredState>>,
        reports_rx: &mut watch::Receiver<Snapshot>,
        known_revision: &mut u64,
    ) {
        let mut poll_retry = Retry::new(self.options.retry);
        loop {
            let started = Instant::now();
            let asked = *known_revision;
            let poll = self.controller.desired(
                credentials.bearer().unwrap_or_default(),
                asked,
                self.options.long_poll_timeout,
            );
            let result = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = reports_rx.changed() => {
                    if changed.is_err() {
                        // The engine stopped; heartbeats go on with the last reports.
                        tokio::time::sleep_until(deadline).await;
                    }
                    return;
                }
                result = poll => result,
            };
            match result {
                Ok(response) => {
                    poll_retry.reset();
                    let advanced = response.desired.revision != asked;
                    deliver(desired_tx, response.desired, known_revision);
                    let had_orders = !response.tasks.is_empty();
                    self.hand_over(response.tasks);
                    // Answered at once on purpose: send the history, then poll on.
                    if response.send_history {
                        self.send_history(credentials).await;
                        continue;
                    }
                    // Answered with orders: poll on (the next order of a run may follow soon),
                    // at most once a second.
                    if had_orders {
                        tokio::time::sleep_until((started + MIN_LONG_POLL).min(deadline)).await;
                        if Instant::now() >= deadline {
                            return;
                        }
                        continue;
                    }
                    if !advanced && started.elapsed() < MIN_LONG_POLL {
                        self.wait_until(deadline, reports_rx).await;
                        return;
                    }
                }
                Err(error) if error.is_unauthorized() => return,
                Err(error) => {
                    let delay = poll_retry.next_delay();
                    tracing::debug!(%error, retry_in = ?delay, "long-poll failed");
                    let resume = (Instant::now() + delay).min(deadline);
                    tokio::select! {
                        () = tokio::time::sleep_until(resume) => {}
                        _ = reports_rx.changed() => return,
                    }
                    if Instant::now() >= deadline {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the load history the controller asked for, at most once a second (a controller
    /// asking without end does not make the agent send without end). A failure is logged, not
    /// retried: the controller asks again when someone looks.
    async fn send_history(&mut self, credentials: &Credentials) {
        if let Some(sent) = self.history_sent_at {
            tokio::time::sleep_until(sent + MIN_LONG_POLL).await;
        }
        self.history_sent_at = Some(Instant::now());
        let upload = self
            .history
            .lock()
            .expect("history lock")
            .history()
            .to_upload(&credentials.client_name);
        let bearer = credentials.bearer().unwrap_or_default();
        match self.controller.history(bearer, &upload).await {
            Ok(()) => tracing::debug!(samples = upload.count, "sent the load history"),
            Err(error) => tracing::info!(%error, "the controller did not take the load history"),
        }
    }

    /// Hands task orders to the task runner without waiting: when it is behind, the orders are
    /// dropped here, and the controller sends them again.
    fn hand_over(&self, orders: Vec<TaskOrder>) {
        if !orders.is_empty() && self.orders.try_send(orders).is_err() {
            tracing::debug!("the task runner is busy; its orders come again with the next answer");
        }
    }

    async fn wait_until(&self, deadline: Instant, reports_rx: &mut watch::Receiver<Snapshot>) {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            _ = reports_rx.changed() => {}
        }
    }
}

/// Checks an enrolment answer before its credentials are stored. The session token (or a
/// protocol-1 client token) is sent back in the `Authorization` header of every later request,
/// and the client name in every session request: a token that cannot be sent (empty, or not
/// printable ASCII without spaces, as the controller's tokens are) or a name that is empty,
/// overlong or has control characters would make each of them fail, with no way back to
/// enrolment.
pub fn check_enrollment(response: &EnrollResponse) -> Result<(), String> {
    let name = &response.client_name;
    if name.trim().is_empty()
        || name.len() > tc_proto::limits::MAX_HOSTNAME_BYTES
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "the controller's enrolment answer has an unusable client name {name:?}"
        ));
    }
    if let Some(session) = &response.session {
        check_bearer(&session.token, "session token")?;
    }
    if let Some(token) = &response.client_token {
        check_bearer(token, "client token")?;
    }
    Ok(())
}

/// Checks a bearer token the controller handed out: it must be sendable in a header.
pub fn check_bearer(token: &str, what: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!("the controller's answer has an empty {what}"));
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(format!(
            "the controller's answer has a {what} that is not printable ASCII without spaces, \
             which cannot be sent back"
        ));
    }
    Ok(())
}

/// Records the controller's desired revision (what the long-poll asks after) and hands the
/// desired state to the engine when it differs from the one the engine has. Revision 0 means the
/// controller has not computed an assignment for this client yet (a new or reset controller): it
/// carries no information, and acting on its empty package list would remove everything the
/// machine runs, so the engine does not get it.
///
/// A desired state that says to decommission is handed over without packages, whatever it
/// lists: everything thinfleet installed goes.
pub fn deliver(
    desired_tx: &watch::Sender<Option<DesiredState>>,
    mut desired: DesiredState,
    known_revision: &mut u64,
) {
    *known_revision = desired.revision;
    if desired.revision == 0 {
        return;
    }
    if desired.decommission {
        desired.packages.clear();
    }
    if desired_tx.borrow().as_ref() != Some(&desired) {
        tracing::info!(
            revision = desired.revision,
            packages = desired.packages.len(),
            "new desired state"
        );
        desired_tx.send_replace(Some(desired));
    }
}

/// The machine identity: the override, `/etc/machine-id`, or an id generated once and kept in
/// the state directory.
pub fn machine_id(config: &AgentConfig, dir: &StateDir) -> Result<String, StateError> {
    if let Some(id) = &config.machine_id {
        return Ok(id.clone());
    }
    let id_in = |bytes: Option<Vec<u8>>| {
        let text = String::from_utf8(bytes?).ok()?;
        Some(text.trim().to_owned()).filter(|id| !id.is_empty())
    };
    if let Some(id) = id_in(std::fs::read(SYSTEM_MACHINE_ID).ok()) {
        return Ok(id);
    }
    // The generated one is read without following a link: a link planted there would send the
    // first line of any file to the controller.
    if let Some(id) = id_in(read_file(&dir.machine_id())?) {
        return Ok(id);
    }
    let id = format!(
        "{:016x}{:016x}",
        crate::backoff::random_u64(),
        crate::backoff::random_u64()
    );
    write_atomic(&dir.machine_id(), format!("{id}\n").as_bytes(), 0o644)?;
    Ok(id)
}

/// Keeps `connection.json` in step with the last error, writing only when it changes.
pub(crate) struct ConnectionTracker {
    dir: StateDir,
    status: ConnectionStatus,
}

impl ConnectionTracker {
    fn load(dir: StateDir, server: &str) -> Self {
        let status = read_json::<ConnectionStatus>(&dir.connection())
            .ok()
            .flatten()
            .filter(|status| status.server == server)
            .unwrap_or_else(|| ConnectionStatus {
                server: server.to_owned(),
                last_error: None,
            });
        ConnectionTracker { dir, status }
    }

    pub(crate) fn succeeded(&mut self) {
        if self.status.last_error.take().is_some() {
            tracing::info!("controller reachable");
            self.write();
        }
    }

    pub(crate) fn failed(&mut self, message: &str) {
        if self.status.last_error.as_ref().map(|e| e.message.as_str()) != Some(message) {
            self.status.last_error = Some(ErrorRecord {
                message: message.to_owned(),
                at: Timestamp::now(),
            });
            self.write();
        }
    }

    fn write(&self) {
        if let Err(error) = write_json(&self.dir.connection(), &self.status, 0o644) {
            tracing::warn!(%error, "cannot record the connection status");
        }
    }
}
