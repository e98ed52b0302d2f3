//! The fleet simulator: many virtual agents in one process, speaking the real agent protocol over
//! real HTTP to a real controller.
//!
//! Every virtual agent has its own identity (an Ed25519 key, [`identity`]), enrolment and session
//! token, and a realistic inventory
//! ([`inventory::inventory`]) that it sends once and afterwards only by hash. Heartbeats follow a
//! jittered schedule (open loop: a slow controller makes requests late, not fewer) over a bounded
//! pool of keep-alive connections. A share of the agents waits on the desired-state long-poll,
//! each on its own HTTP/1.1 connection or multiplexed over HTTP/2 (h2c). Agents that are told to
//! run new packages download the blobs with their own session, verify size and sha256, and report
//! the packages `Installed` with the `observedRevision` they were produced for.
//!
//! A fleet is either enrolled over HTTP ([`SimFleet::enroll`]), or seeded straight into a store
//! ([`seed_store`], through the batch enrolment [`tc_store::Store::create_clients`]) and then
//! driven by a [`SimFleet::seeded`] with the same seed, which knows every key and mints every
//! session with the controller's session key.

pub mod h2;
pub mod http;
pub mod identity;
pub mod inventory;
pub mod stats;
mod tasks;
pub mod tls;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tc_api::Timestamp;
use tc_proto::{
    DesiredResponse, DesiredState, HeartbeatRequest, HeartbeatResponse, Load, PROTOCOL_VERSION,
    PackageReport, PackageState,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::http::Connection;
pub use self::identity::{
    Credentials, EnrolReport, SeedOptions, credentials, seed_store, session_key,
};
pub use self::stats::Histogram;
pub use self::tls::Tls;

/// What went wrong setting up a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A request could not be sent or answered.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The controller answered with an error.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        /// What was being done.
        what: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The store refused the seeded clients.
    #[error("seeding the store: {0}")]
    Store(#[from] tc_store::StoreError),
}

/// How the long-polls travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One HTTP/1.1 connection per waiting agent, as real agents do.
    Http1,
    /// HTTP/2 without TLS (prior knowledge), this many waiting agents per connection, as behind
    /// an HTTP/2 reverse proxy (the controller accepts h2c on its port).
    Http2 {
        /// Concurrent long-polls per connection (the server allows 200 streams).
        streams_per_connection: usize,
    },
}

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Controller addresses; connections are spread over them (several loopback addresses give
    /// more ephemeral ports than one).
    pub servers: Vec<SocketAddr>,
    /// Mean heartbeat interval.
    pub interval: Duration,
    /// Each interval is drawn from `interval * (1 ± jitter)`.
    pub jitter: f64,
    /// Keep-alive connections that carry heartbeats and install reports.
    pub connections: usize,
    /// Share of the agents (0.0..=1.0) that also wait on the long-poll.
    pub long_poll_share: f64,
    /// How the long-polls travel.
    pub long_poll_transport: Transport,
    /// `timeoutSeconds` of each long-poll.
    pub long_poll_timeout: Duration,
    /// Download, verify and report packages the agents are told to run.
    pub install: bool,
    /// Concurrent blob downloads.
    pub downloads: usize,
    /// Longest wait for one heartbeat, enrolment or download.
    pub request_timeout: Duration,
    /// Seed of the schedule.
    pub seed: u64,
    /// TLS to the servers (`None`: cleartext HTTP/1.1 and h2c).
    pub tls: Option<Tls>,
    /// Answer task orders: report each new one started and succeeded.
    pub answer_tasks: bool,
    /// Connections that carry task reports, each one report at a time (real agents report each
    /// over its own connection, all at once).
    pub task_report_connections: usize,
}

impl SimConfig {
    /// Heartbeats every `interval` (±10 %) over 64 connections to `server`; no long-polls, no
    /// installs.
    pub fn new(server: SocketAddr, interval: Duration) -> SimConfig {
        SimConfig {
            servers: vec![server],
            interval,
            jitter: 0.1,
            connections: 64,
            long_poll_share: 0.0,
            long_poll_transport: Transport::Http1,
            long_poll_timeout: Duration::from_secs(60),
            install: false,
            downloads: 32,
            request_timeout: Duration::from_secs(30),
            seed: 1,
            tls: None,
            answer_tasks: false,
            task_report_connections: 256,
        }
    }
}

/// How an agent learned a desired revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Via {
    /// It has not learned one yet.
    #[default]
    Nothing,
    /// From a heartbeat answer.
    Heartbeat,
    /// From the long-poll.
    LongPoll,
}

#[derive(Debug, Default)]
struct AgentState {
    /// The controller has this agent's inventory; heartbeats carry only its hash.
    inventory_known: bool,
    /// Hash of the inventory, computed on first use.
    inventory_hash: Option<Box<str>>,
    /// Reports sent with every heartbeat.
    packages: Vec<PackageReport>,
    /// The desired revision the reports are for.
    observed_revision: u64,
    /// The newest desired state learned.
    desired: Option<Arc<DesiredState>>,
    learned_at: Option<Instant>,
    learned_by: Via,
    /// An install job for this agent is queued or running.
    installing: bool,
    /// The newest revision whose `Installed` report the controller acknowledged.
    converged_revision: u64,
    converged_at: Option<Instant>,
    /// Ids of the task orders received.
    tasks_seen: Vec<Box<str>>,
    /// When the first task order arrived.
    task_received_at: Option<Instant>,
    /// When the controller first acknowledged a task report.
    task_recorded_at: Option<Instant>,
}

/// One virtual agent.
#[derive(Debug)]
pub struct SimAgent {
    index: u64,
    seed: u64,
    name: String,
    token: String,
    state: Mutex<AgentState>,
}

impl SimAgent {
    fn new(seed: u64, index: u64, name: String, token: String, inventory_known: bool) -> Self {
        SimAgent {
            index,
            seed,
            name,
            token,
            state: Mutex::new(AgentState {
                inventory_known,
                ..AgentState::default()
            }),
        }
    }

    /// The client name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The heartbeat body this agent would send now.
    fn heartbeat_body(&self, out: &mut Vec<u8>, load_draw: u64) -> bool {
        let mut state = self.state.lock().expect("agent lock");
        let include_inventory = !state.inventory_known;
        let inventory = include_inventory.then(|| inventory::inventory(self.seed, self.index));
        let hash = match (&state.inventory_hash, &inventory) {
            (Some(hash), _) => hash.to_string(),
            (None, Some(inventory)) => tc_proto::inventory_hash(inventory),
            (None, None) => tc_proto::inventory_hash(&inventory::inventory(self.seed, self.index)),
        };
        state.inventory_hash = Some(hash.clone().into_boxed_str());
        let memory = 1u64 << 30;
        let request = HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            observed_revision: state.observed_revision,
            packages: state.packages.clone(),
            inventory_hash: hash,
            inventory,
            decommissioned: false,
            load: Load {
                cpu_percent: (load_draw % 1000) as f32 / 10.0,
                memory_used_bytes: memory / 4 + (load_draw >> 10) % (memory / 2),
                uptime_seconds: 3_600 + (load_draw >> 20) % 3_000_000,
            },
        };
        drop(state);
        out.clear();
        serde_json::to_writer(&mut *out, &request).expect("heartbeats serialize");
        include_inventory
    }
}

/// What one agent has seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentView {
    /// The client name.
    pub name: String,
    /// The newest desired revision learned.
    pub desired_revision: u64,
    /// When it was learned.
    pub learned_at: Option<Instant>,
    /// How it was learned.
    pub learned_by: Via,
    /// The newest revision whose `Installed` report the controller acknowledged.
    pub converged_revision: u64,
    /// When that acknowledgement arrived.
    pub converged_at: Option<Instant>,
    /// Installed packages as `name@version`.
    pub installed: Vec<String>,
}

/// What [`RunningSim::wait_for`] sees of an agent, borrowed from its state.
#[derive(Debug)]
pub struct Progress<'a> {
    /// The newest desired revision learned.
    pub desired_revision: u64,
    /// The newest revision whose `Installed` report the controller acknowledged.
    pub converged_revision: u64,
    /// The agent's package reports.
    pub packages: &'a [PackageReport],
}

impl Progress<'_> {
    /// Whether the agent reports `name` `version` installed.
    pub fn has_installed(&self, name: &str, version: &str) -> bool {
        self.packages
            .iter()
            .any(|p| p.state == PackageState::Installed && p.name == name && p.version == version)
    }
}

/// A fleet of virtual agents.
#[derive(Clone, Debug)]
pub struct SimFleet {
    agents: Arc<Vec<SimAgent>>,
}

impl SimFleet {
    /// Number of agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// True when the fleet has no agents.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The agents.
    pub fn agents(&self) -> &[SimAgent] {
        &self.agents
    }

    /// A complete heartbeat request of agent `index` as it would be sent now, for load generators
    /// that replay prepared requests ([`hammer`]).
    pub fn heartbeat_request(&self, index: usize, host: &str) -> Vec<u8> {
        let agent = &self.agents[index];
        let mut body = Vec::new();
        agent.heartbeat_body(&mut body, inventory::draw(agent.seed, agent.index, 99));
        http::build_request(
            "POST",
            "/agent/v1/heartbeat",
            host,
            Some(&agent.token),
            Some("application/json"),
            &body,
        )
    }

    /// Marks every agent's inventory as known to the controller (or not).
    pub fn set_inventory_known(&self, known: bool) {
        for agent in self.agents.iter() {
            agent.state.lock().expect("agent lock").inventory_known = known;
        }
    }

    /// What every agent has seen, in fleet order.
    pub fn views(&self) -> Vec<AgentView> {
        self.agents
            .iter()
            .map(|agent| {
                let state = agent.state.lock().expect("agent lock");
                AgentView {
                    name: agent.name.clone(),
                    desired_revision: state.desired.as_ref().map_or(0, |d| d.revision),
                    learned_at: state.learned_at,
                    learned_by: state.learned_by,
                    converged_revision: state.converged_revision,
                    converged_at: state.converged_at,
                    installed: state
                        .packages
                        .iter()
                        .filter(|p| p.state == PackageState::Installed)
                        .map(|p| format!("{}@{}", p.name, p.version))
                        .collect(),
                }
            })
            .collect()
    }

    /// Starts heartbeats, long-polls and installs as configured.
    pub fn start(&self, config: SimConfig) -> RunningSim {
        assert!(!config.servers.is_empty(), "a simulation needs a server");
        let (stop, stopping) = watch::channel(false);
        let (jobs, job_receiver) = mpsc::channel::<Job>(config.connections.max(1) * 8);
        let (installs, install_receiver) = mpsc::unbounded_channel::<u32>();
        let (task_orders, task_receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            agents: self.agents.clone(),
            histograms: (0..config.connections.max(1))
                .map(|_| Mutex::new(Histogram::default()))
                .collect(),
            dispatch_lag: Mutex::new(Histogram::default()),
            counters: Counters::default(),
            jobs: jobs.clone(),
            installs,
            task_orders,
            errors: Mutex::new(vec![]),
            config,
        });
        let mut tasks = vec![];
        let job_receiver = Arc::new(tokio::sync::Mutex::new(job_receiver));
        for worker in 0..shared.config.connections.max(1) {
            tasks.push(tokio::spawn(pool_worker(
                shared.clone(),
                worker,
                job_receiver.clone(),
                stopping.clone(),
            )));
        }
        if shared.config.answer_tasks {
            let task_receiver = Arc::new(tokio::sync::Mutex::new(task_receiver));
            for worker in 0..shared.config.task_report_connections.max(1) {
                tasks.push(tokio::spawn(tasks::report_worker(
                    shared.clone(),
                    worker,
                    task_receiver.clone(),
                    stopping.clone(),
                )));
            }
        }
        if shared.config.install {
            let install_receiver = Arc::new(tokio::sync::Mutex::new(install_receiver));
            for worker in 0..shared.config.downloads.max(1) {
                tasks.push(tokio::spawn(install_worker(
                    shared.clone(),
                    worker,
                    install_receiver.clone(),
                    stopping.clone(),
                )));
            }
        }
        tasks.push(tokio::spawn(scheduler(
            shared.clone(),
            jobs,
            stopping.clone(),
        )));
        let waiting = ((self.agents.len() as f64) * shared.config.long_poll_share.clamp(0.0, 1.0))
            .round() as usize;
        match shared.config.long_poll_transport {
            Transport::Http1 => {
                for index in 0..waiting {
                    tasks.push(tokio::spawn(long_poll_http1(
                        shared.clone(),
                        index,
                        stopping.clone(),
                    )));
                }
            }
            Transport::Http2 {
                streams_per_connection,
            } => {
                let per = streams_per_connection.max(1);
                let servers = &shared.config.servers;
                for (connection, first) in (0..waiting).step_by(per).enumerate() {
                    tasks.push(tokio::spawn(long_poll_http2(
                        shared.clone(),
                        (first..(first + per).min(waiting)).collect(),
                        servers[connection % servers.len()],
                        stopping.clone(),
                    )));
                }
            }
        }
        RunningSim {
            stop,
            tasks,
            shared,
            fleet: self.clone(),
        }
    }
}

/// Counters of a running simulation.
#[derive(Debug, Default)]
struct Counters {
    heartbeats: AtomicU64,
    heartbeat_errors: AtomicU64,
    reports: AtomicU64,
    inventories_sent: AtomicU64,
    long_polls_waiting: AtomicU64,
    long_polls_answered: AtomicU64,
    long_polls_changed: AtomicU64,
    long_poll_errors: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
    download_errors: AtomicU64,
    installs: AtomicU64,
    install_failures: AtomicU64,
    late_dispatches: AtomicU64,
    task_orders: AtomicU64,
    task_reports: AtomicU64,
    task_report_errors: AtomicU64,
}

/// A point-in-time copy of a simulation's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimSnapshot {
    /// Heartbeats and reports answered 200.
    pub heartbeats: u64,
    /// Heartbeats and reports that failed (I/O, timeout, non-200).
    pub heartbeat_errors: u64,
    /// Install reports sent (a subset of `heartbeats`).
    pub reports: u64,
    /// Heartbeats that carried the full inventory.
    pub inventories_sent: u64,
    /// Long-polls currently sent and not answered.
    pub long_polls_waiting: u64,
    /// Long-polls answered.
    pub long_polls_answered: u64,
    /// Long-polls answered with a newer revision.
    pub long_polls_changed: u64,
    /// Long-polls that failed.
    pub long_poll_errors: u64,
    /// Blobs downloaded and verified.
    pub downloads: u64,
    /// Bytes of verified blobs.
    pub download_bytes: u64,
    /// Downloads that failed or did not verify.
    pub download_errors: u64,
    /// Install jobs finished with every package installed.
    pub installs: u64,
    /// Install jobs with a failed package.
    pub install_failures: u64,
    /// Heartbeats dispatched more than 100 ms after they were due (the generator fell behind).
    pub late_dispatches: u64,
    /// Task orders received (each once).
    pub task_orders: u64,
    /// Task reports the controller acknowledged.
    pub task_reports: u64,
    /// Task reports that failed.
    pub task_report_errors: u64,
}

impl SimSnapshot {
    /// Every kind of error added up.
    pub fn errors(&self) -> u64 {
        self.heartbeat_errors
            + self.long_poll_errors
            + self.download_errors
            + self.install_failures
            + self.task_report_errors
    }
}

enum Job {
    Heartbeat { agent: u32, dispatched: Instant },
    Report { agent: u32, dispatched: Instant },
}

struct Shared {
    agents: Arc<Vec<SimAgent>>,
    config: SimConfig,
    /// One per pool connection, so recording never contends.
    histograms: Vec<Mutex<Histogram>>,
    dispatch_lag: Mutex<Histogram>,
    counters: Counters,
    jobs: mpsc::Sender<Job>,
    installs: mpsc::UnboundedSender<u32>,
    /// Task orders to report on.
    task_orders: mpsc::UnboundedSender<(u32, Vec<tc_proto::task::TaskOrder>)>,
    /// The first few error messages, for diagnosis.
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, counter: &AtomicU64, message: impl FnOnce() -> String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < 10 {
            errors.push(message());
        }
    }

    /// Takes in a desired state an agent was given.
    fn learn(&self, agent: u32, desired: DesiredState, via: Via) {
        let mut state = self.agents[agent as usize]
            .state
            .lock()
            .expect("agent lock");
        let newer = state
            .desired
            .as_ref()
            .is_none_or(|known| desired.revision > known.revision);
        if !newer {
            return;
        }
        let differs_from_reports = desired.revision != state.observed_revision;
        state.desired = Some(Arc::new(desired));
        state.learned_at = Some(Instant::now());
        state.learned_by = via;
        if self.config.install && differs_from_reports && !state.installing {
            state.installing = true;
            let _ = self.installs.send(agent);
        }
    }
}

/// A simulation in progress. Dropping it without [`RunningSim::stop`] aborts its tasks.
pub struct RunningSim {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    fleet: SimFleet,
}

impl RunningSim {
    /// The counters now.
    pub fn snapshot(&self) -> SimSnapshot {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SimSnapshot {
            heartbeats: get(&c.heartbeats),
            heartbeat_errors: get(&c.heartbeat_errors),
            reports: get(&c.reports),
            inventories_sent: get(&c.inventories_sent),
            long_polls_waiting: get(&c.long_polls_waiting),
            long_polls_answered: get(&c.long_polls_answered),
            long_polls_changed: get(&c.long_polls_changed),
            long_poll_errors: get(&c.long_poll_errors),
            downloads: get(&c.downloads),
            download_bytes: get(&c.download_bytes),
            download_errors: get(&c.download_errors),
            installs: get(&c.installs),
            install_failures: get(&c.install_failures),
            late_dispatches: get(&c.late_dispatches),
            task_orders: get(&c.task_orders),
            task_reports: get(&c.task_reports),
            task_report_errors: get(&c.task_report_errors),
        }
    }

    /// Per agent: when its first task order arrived and when the controller first
    /// acknowledged its report.
    pub fn task_times(&self) -> Vec<(Option<Instant>, Option<Instant>)> {
        self.shared
            .agents
            .iter()
            .map(|agent| {
                let state = agent.state.lock().expect("agent lock");
                (state.task_received_at, state.task_recorded_at)
            })
            .collect()
    }

    /// Heartbeat latencies (from dispatch to answer) recorded since the last call, and resets them.
    pub fn take_latencies(&self) -> Histogram {
        let mut total = Histogram::default();
        for histogram in &self.shared.histograms {
            let taken = std::mem::take(&mut *histogram.lock().expect("histogram lock"));
            total.merge(&taken);
        }
        total
    }

    /// How late heartbeats were dispatched against their schedule, since the last call.
    pub fn take_dispatch_lag(&self) -> Histogram {
        std::mem::take(&mut *self.shared.dispatch_lag.lock().expect("lag lock"))
    }

    /// The first few errors seen.
    pub fn error_samples(&self) -> Vec<String> {
        self.shared.errors.lock().expect("errors lock").clone()
    }

    /// The fleet being driven.
    pub fn fleet(&self) -> &SimFleet {
        &self.fleet
    }

    /// Queues an immediate heartbeat of every agent (for example so that all of them are known
    /// `Online` before a measurement).
    pub async fn heartbeat_all(&self) {
        for agent in 0..self.shared.agents.len() {
            let job = Job::Heartbeat {
                agent: agent as u32,
                dispatched: Instant::now(),
            };
            if self.shared.jobs.send(job).await.is_err() {
                return;
            }
        }
    }

    /// Waits until `done` holds for every agent, checking every `every`, at most `timeout`;
    /// false on timeout. `done` must stay true for an agent once it is (as "has revision 2" does).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        every: Duration,
        done: impl Fn(&Progress<'_>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let agents = &self.fleet.agents;
        // Agents before `from` were done at an earlier look and stay done, so every agent is
        // looked at about once however long the wait: watching must not load the machine whose
        // latency it measures.
        let mut from = 0;
        loop {
            while from < agents.len() && {
                let state = agents[from].state.lock().expect("agent lock");
                done(&Progress {
                    desired_revision: state.desired.as_ref().map_or(0, |d| d.revision),
                    converged_revision: state.converged_revision,
                    packages: &state.packages,
                })
            } {
                from += 1;
            }
            if from == agents.len() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Stops every task (in-flight requests are abandoned) and returns the final counters.
    pub async fn stop(mut self) -> SimSnapshot {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                // The task is stuck in a request; dropping the handle would leave it running.
            }
        }
        self.snapshot()
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One exchange on a lazily (re)connected keep-alive connection, bounded by `timeout`.
async fn exchange(
    connection: &mut Option<Connection>,
    server: SocketAddr,
    tls: Option<&Tls>,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<http::Response> {
    let result = tokio::time::timeout(timeout, async {
        if connection.as_ref().is_none_or(Connection::is_closed) {
            *connection = Some(Connection::connect_with(server, tls).await?);
        }
        connection
            .as_mut()
            .expect("connected above")
            .request(request)
            .await
    })
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in time",
        ))
    });
    if result.is_err() {
        *connection = None;
    }
    result
}

fn body_start(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// Dispatches heartbeats on schedule: each agent's first one at a random point of the first
/// interval, each later one an interval (± jitter) after the previous one was due.
async fn scheduler(shared: Arc<Shared>, jobs: mpsc::Sender<Job>, mut stop: watch::Receiver<bool>) {
    let config = &shared.config;
    let interval = config.interval.as_micros().max(1) as u64;
    let jitter = config.jitter.clamp(0.0, 0.9);
    let mut queue: BinaryHeap<Reverse<(u64, u32)>> = (0..shared.agents.len())
        .map(|agent| {
            let first = inventory::draw(config.seed, agent as u64, 30) % interval;
            Reverse((first, agent as u32))
        })
        .collect();
    let start = tokio::time::Instant::now();
    let mut round: u64 = 0;
    loop {
        let now = start.elapsed().as_micros() as u64;
        while let Some(&Reverse((due, agent))) = queue.peek() {
            if due > now {
                break;
            }
            queue.pop();
            let lag = start.elapsed().as_micros() as u64 - due.min(now);
            shared
                .dispatch_lag
                .lock()
                .expect("lag lock")
                .record_micros(lag);
            if lag > 100_000 {
                shared
                    .counters
                    .late_dispatches
                    .fetch_add(1, Ordering::Relaxed);
            }
            let job = Job::Heartbeat {
                agent,
                dispatched: Instant::now(),
            };
            tokio::select! {
                sent = jobs.send(job) => if sent.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            round = round.wrapping_add(1);
            let fraction = (inventory::draw(config.seed, u64::from(agent), round) >> 11) as f64
                / (1u64 << 53) as f64;
            let next = (interval as f64 * (1.0 - jitter + 2.0 * jitter * fraction)) as u64;
            queue.push(Reverse((due + next.max(1), agent)));
        }
        let Some(&Reverse((due, _))) = queue.peek() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(start + Duration::from_micros(due)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One connection of the heartbeat pool.
async fn pool_worker(
    shared: Arc<Shared>,
    worker: usize,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    mut stop: watch::Receiver<bool>,
) {
    let server = shared.config.servers[worker % shared.config.servers.len()];
    let host = server.to_string();
    let mut connection: Option<Connection> = None;
    let mut body = Vec::with_capacity(4096);
    let mut request = Vec::with_capacity(4096);
    let mut draws: u64 = inventory::mix(worker as u64);
    loop {
        let job = {
            let mut receiver = tokio::select! {
                receiver = jobs.lock() => receiver,
                _ = stop.wait_for(|s| *s) => return,
            };
            tokio::select! {
                job = receiver.recv() => job,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let Some(job) = job else { return };
        let (agent, dispatched, report) = match job {
            Job::Heartbeat { agent, dispatched } => (agent, dispatched, false),
            Job::Report { agent, dispatched } => (agent, dispatched, true),
        };
        let sim_agent = &shared.agents[agent as usize];
        draws = inventory::mix(draws);
        let with_inventory = sim_agent.heartbeat_body(&mut body, draws);
        let reported_revision = sim_agent
            .state
            .lock()
            .expect("agent lock")
            .observed_revision;
        http::write_request(
            &mut request,
            "POST",
            "/agent/v1/heartbeat",
            &host,
            Some(&sim_agent.token),
            Some("application/json"),
            &body,
        );
        let counters = &shared.counters;
        let result = tokio::select! {
            result = exchange(&mut connection, server, shared.config.tls.as_ref(), &request, shared.config.request_timeout) => result,
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok(response) if response.status == 200 => {
                let mut answer: HeartbeatResponse = match serde_json::from_slice(&response.body) {
                    Ok(answer) => answer,
                    Err(error) => {
                        shared.error(&counters.heartbeat_errors, || {
                            format!("heartbeat answer unreadable: {error}")
                        });
                        continue;
                    }
                };
                shared.histograms[worker]
                    .lock()
                    .expect("histogram lock")
                    .record(dispatched.elapsed());
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                if with_inventory {
                    counters.inventories_sent.fetch_add(1, Ordering::Relaxed);
                }
                {
                    let mut state = sim_agent.state.lock().expect("agent lock");
                    if with_inventory {
                        state.inventory_known = true;
                    }
                    if answer.send_inventory {
                        state.inventory_known = false;
                    }
                    if report {
                        counters.reports.fetch_add(1, Ordering::Relaxed);
                    }
                    let all_installed = state
                        .packages
                        .iter()
                        .all(|p| p.state == PackageState::Installed);
                    let current = state.desired.as_ref().map_or(0, |d| d.revision);
                    if all_installed
                        && reported_revision == current
                        && reported_revision > state.converged_revision
                    {
                        state.converged_revision = reported_revision;
                        state.converged_at = Some(Instant::now());
                    }
                }
                if !answer.tasks.is_empty() {
                    tasks::take_orders(&shared, agent, std::mem::take(&mut answer.tasks));
                }
                shared.learn(agent, answer.desired, Via::Heartbeat);
            }
            Ok(response) => shared.error(&counters.heartbeat_errors, || {
                format!(
                    "heartbeat of {}: HTTP {}: {}",
                    sim_agent.name,
                    response.status,
                    body_start(&response.body)
                )
            }),
            Err(error) => shared.error(&counters.heartbeat_errors, || {
                format!("heartbeat of {}: {error}", sim_agent.name)
            }),
        }
    }
}

/// Waits on the long-poll for agent `agent` over its own HTTP/1.1 connection.
async fn long_poll_http1(shared: Arc<Shared>, agent: usize, mut stop: watch::Receiver<bool>) {
    let servers = &shared.config.servers;
    let server = servers[agent % servers.len()];
    let host = server.to_string();
    let sim_agent = &shared.agents[agent];
    let timeout_seconds = shared.config.long_poll_timeout.as_secs().max(1);
    let mut connection: Option<Connection> = None;
    let counters = &shared.counters;
    loop {
        if *stop.borrow() {
            return;
        }
        let after = current_revision(sim_agent);
        let request = http::build_request(
            "GET",
            &format!("/agent/v1/desired?afterRevision={after}&timeoutSeconds={timeout_seconds}"),
            &host,
            Some(&sim_agent.token),
            None,
            b"",
        );
        counters.long_polls_waiting.fetch_add(1, Ordering::Relaxed);
        let limit = Duration::from_secs(timeout_seconds + 30);
        let result = tokio::select! {
            result = exchange(&mut connection, server, shared.config.tls.as_ref(), &request, limit) => result,
            _ = stop.wait_for(|s| *s) => {
                counters.long_polls_waiting.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        counters.long_polls_waiting.fetch_sub(1, Ordering::Relaxed);
        let failed = match result {
            Ok(response) if response.status == 200 => {
                long_poll_answer(&shared, agent, &response.body);
                false
            }
            Ok(response) => {
                shared.error(&counters.long_poll_errors, || {
                    format!(
                        "long-poll of {}: HTTP {}: {}",
                        sim_agent.name,
                        response.status,
                        body_start(&response.body)
                    )
                });
                true
            }
            Err(error) => {
                shared.error(&counters.long_poll_errors, || {
                    format!("long-poll of {}: {error}", sim_agent.name)
                });
                true
            }
        };
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn current_revision(agent: &SimAgent) -> u64 {
    agent
        .state
        .lock()
        .expect("agent lock")
        .desired
        .as_ref()
        .map_or(0, |d| d.revision)
}

fn long_poll_answer(shared: &Shared, agent: usize, body: &[u8]) {
    let counters = &shared.counters;
    match serde_json::from_slice::<DesiredResponse>(body) {
        Ok(mut answer) => {
            counters.long_polls_answered.fetch_add(1, Ordering::Relaxed);
            if !answer.tasks.is_empty() {
                tasks::take_orders(shared, agent as u32, std::mem::take(&mut answer.tasks));
            }
            if answer.changed {
                counters.long_polls_changed.fetch_add(1, Ordering::Relaxed);
                shared.learn(agent as u32, answer.desired, Via::LongPoll);
            }
        }
        Err(error) => shared.error(&counters.long_poll_errors, || {
            format!("long-poll answer unreadable: {error}")
        }),
    }
}

/// The long-polls of `agents`, as streams of one HTTP/2 connection (opened again when it
/// breaks), driven by one task: the answers that arrive together are read together, and the
/// agents' next long-polls leave together in one write, as from a reverse proxy.
async fn long_poll_http2(
    shared: Arc<Shared>,
    agents: Vec<usize>,
    server: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let timeout_seconds = shared.config.long_poll_timeout.as_secs().max(1);
    // An answer is due within the long-poll timeout; a connection that keeps one waiting much
    // longer is taken for dead.
    let limit = Duration::from_secs(timeout_seconds + 30);
    let counters = &shared.counters;
    let mut connection: Option<h2::Connection> = None;
    // Agents (by their index in `agents`) to send a long-poll for, and those to retry later.
    let mut due: Vec<usize> = (0..agents.len()).collect();
    let mut retry: Vec<usize> = vec![];
    let mut retry_at = Instant::now();
    let mut answers: Vec<h2::Answer> = vec![];
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = stop.wait_for(|s| *s);
    tokio::pin!(stopping);
    let mut path = String::new();
    loop {
        if connection.is_none() && !due.is_empty() {
            match h2::Connection::connect_with(server, shared.config.tls.as_ref()).await {
                Ok(opened) => connection = Some(opened),
                Err(error) => {
                    for &slot in &due {
                        shared.error(&counters.long_poll_errors, || {
                            format!(
                                "long-poll of {} (h2 connect): {error}",
                                shared.agents[agents[slot]].name
                            )
                        });
                    }
                    retry.append(&mut due);
                    retry_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        if let Some(open) = connection.as_mut() {
            let mut sent = 0;
            while open.can_send() && sent < due.len() {
                let agent = &shared.agents[agents[due[sent]]];
                path.clear();
                let _ = write!(
                    path,
                    "/agent/v1/desired?afterRevision={}&timeoutSeconds={timeout_seconds}",
                    current_revision(agent)
                );
                open.get(&path, &agent.token, due[sent]);
                sent += 1;
            }
            if sent > 0 {
                counters
                    .long_polls_waiting
                    .fetch_add(sent as u64, Ordering::Relaxed);
                due.drain(..sent);
            }
            if let Err(error) = open.flush().await {
                open.fail(&error, &mut answers);
            }
        }
        if answers.is_empty() {
            let pause = tokio::time::sleep_until(retry_at.into());
            let reading = async {
                match connection.as_mut() {
                    Some(open) => open.read().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = reading => {
                    let open = connection.as_mut().expect("a connection was read");
                    if let Err(error) = result.and_then(|()| open.answers(&mut answers)) {
                        open.fail(&error, &mut answers);
                    }
                }
                _ = pause, if !retry.is_empty() => due.append(&mut retry),
                _ = watchdog.tick() => {
                    if let Some(open) = connection.as_mut()
                        && open.oldest().is_some_and(|sent| sent.elapsed() > limit)
                    {
                        let error = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer in {limit:?}"),
                        );
                        open.fail(&error, &mut answers);
                    }
                }
                _ = &mut stopping => break,
            }
        }
        if connection
            .as_ref()
            .is_some_and(|open| !open.can_send() && open.in_flight() == 0)
        {
            connection = None;
        }
        counters
            .long_polls_waiting
            .fetch_sub(answers.len() as u64, Ordering::Relaxed);
        for answer in answers.drain(..) {
            let agent = agents[answer.tag];
            let failure = match answer.result {
                Ok((200, body)) => {
                    long_poll_answer(&shared, agent, &body);
                    None
                }
                Ok((status, body)) => Some(format!(
                    "long-poll of {}: HTTP {status}: {}",
                    shared.agents[agent].name,
                    body_start(&body)
                )),
                Err(error) => Some(format!(
                    "long-poll of {} (h2): {error}",
                    shared.agents[agent].name
                )),
            };
            match failure {
                None => due.push(answer.tag),
                Some(message) => {
                    shared.error(&counters.long_poll_errors, || message);
                    if retry.is_empty() {
                        retry_at = Instant::now() + Duration::from_secs(1);
                    }
                    retry.push(answer.tag);
                }
            }
        }
    }
    if let Some(open) = connection {
        counters
            .long_polls_waiting
            .fetch_sub(open.in_flight() as u64, Ordering::Relaxed);
    }
}

/// Downloads, verifies and "installs" what agents were told to run, then queues their report.
async fn install_worker(
    shared: Arc<Shared>,
    worker: usize,
    installs: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<u32>>>,
    mut stop: watch::Receiver<bool>,
) {
    let server = shared.config.servers[worker % shared.config.servers.len()];
    let host = server.to_string();
    let mut connection: Option<Connection> = None;
    let counters = &shared.counters;
    loop {
        let agent = {
            let mut receiver = tokio::select! {
                receiver = installs.lock() => receiver,
                _ = stop.wait_for(|s| *s) => return,
            };
            tokio::select! {
                agent = receiver.recv() => agent,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let Some(agent) = agent else { return };
        let sim_agent = &shared.agents[agent as usize];
        let (target, installed) = {
            let state = sim_agent.state.lock().expect("agent lock");
            (state.desired.clone(), state.packages.clone())
        };
        let Some(target) = target else { continue };
        let mut reports = vec![];
        let mut failed = false;
        for package in &target.packages {
            let have = installed.iter().any(|p| {
                p.name == package.name
                    && p.version == package.version
                    && p.state == PackageState::Installed
            });
            let outcome = if have {
                Ok(())
            } else {
                let request = http::build_request(
                    "GET",
                    &package.url,
                    &host,
                    Some(&sim_agent.token),
                    None,
                    b"",
                );
                let download = tokio::select! {
                    result = download(&mut connection, server, shared.config.tls.as_ref(), &request, shared.config.request_timeout) => result,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match download {
                    Ok((size, digest)) if size == package.size && digest == package.sha256 => {
                        counters.downloads.fetch_add(1, Ordering::Relaxed);
                        counters.download_bytes.fetch_add(size, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok((size, digest)) => {
                        let message = format!(
                            "{}: got {size} bytes with sha256 {digest}, expected {} bytes with {}",
                            package.url, package.size, package.sha256
                        );
                        shared.error(&counters.download_errors, || message.clone());
                        Err(message)
                    }
                    Err(error) => {
                        let message = format!("{}: {error}", package.url);
                        shared.error(&counters.download_errors, || message.clone());
                        Err(message)
                    }
                }
            };
            failed |= outcome.is_err();
            reports.push(PackageReport {
                staged: None,
                name: package.name.clone(),
                version: package.version.clone(),
                state: if outcome.is_ok() {
                    PackageState::Installed
                } else {
                    PackageState::Failed
                },
                active_version: outcome.is_ok().then(|| package.version.clone()),
                message: outcome.err(),
                since: Timestamp::now(),
            });
        }
        if failed {
            counters.install_failures.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.installs.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut state = sim_agent.state.lock().expect("agent lock");
            state.packages = reports;
            state.observed_revision = target.revision;
            let newest = state.desired.as_ref().map_or(0, |d| d.revision);
            if newest > target.revision && !failed {
                let _ = shared.installs.send(agent);
            } else {
                state.installing = false;
            }
        }
        let job = Job::Report {
            agent,
            dispatched: Instant::now(),
        };
        tokio::select! {
            _ = shared.jobs.send(job) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Downloads one blob and returns its size and lowercase hex sha256.
async fn download(
    connection: &mut Option<Connection>,
    server: SocketAddr,
    tls: Option<&Tls>,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<(u64, String)> {
    let result = tokio::time::timeout(timeout, async {
        if connection.as_ref().is_none_or(Connection::is_closed) {
            *connection = Some(Connection::connect_with(server, tls).await?);
        }
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        let head = connection
            .as_mut()
            .expect("connected above")
            .exchange(request, &mut |chunk| {
                context.update(chunk);
                size += chunk.len() as u64;
            })
            .await?;
        if head.status != 200 {
            return Err(std::io::Error::other(format!("HTTP {}", head.status)));
        }
        let digest = context.finish();
        Ok((size, hex(digest.as_ref())))
    })
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "download too slow",
        ))
    });
    if result.is_err() {
        *connection = None;
    }
    result
}

/// Figures of [`measure_downloads`].
#[derive(Clone, Debug)]
pub struct DownloadReport {
    /// Verified bytes.
    pub bytes: u64,
    /// Downloads that failed or did not verify.
    pub errors: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl DownloadReport {
    /// Verified bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A blob to download: where, and what it must be.
#[derive(Clone, Copy, Debug)]
pub struct BlobSpec<'a> {
    /// Its URL path (`/blobs/sha256/<hex>`).
    pub url: &'a str,
    /// Its lowercase hex sha256.
    pub sha256: &'a str,
    /// Its size in bytes.
    pub size: u64,
}

/// Blob throughput as the simulated agents see it: `concurrency` connections download `blob`
/// (with `token`) and verify its size and sha256, the same way installs do, until `total`
/// downloads are done.
pub async fn measure_downloads(
    server: SocketAddr,
    tls: Option<&Tls>,
    token: &str,
    blob: BlobSpec<'_>,
    concurrency: usize,
    total: u64,
) -> DownloadReport {
    let BlobSpec { url, sha256, size } = blob;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let request = Arc::new(http::build_request(
        "GET",
        url,
        &server.to_string(),
        Some(token),
        None,
        b"",
    ));
    let mut tasks = vec![];
    for _ in 0..concurrency.max(1) {
        let (next, request, sha256) = (next.clone(), request.clone(), sha256.to_string());
        let tls = tls.cloned();
        tasks.push(tokio::spawn(async move {
            let mut connection = None;
            let (mut bytes, mut errors) = (0u64, 0u64);
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match download(
                    &mut connection,
                    server,
                    tls.as_ref(),
                    &request,
                    Duration::from_secs(120),
                )
                .await
                {
                    Ok((got, digest)) if got == size && digest == sha256 => bytes += got,
                    _ => errors += 1,
                }
            }
            (bytes, errors)
        }));
    }
    let mut report = DownloadReport {
        bytes: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (bytes, errors) = task.await.unwrap_or((0, 1));
        report.bytes += bytes;
        report.errors += errors;
    }
    report.elapsed = started.elapsed();
    report
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Figures of a [`hammer`] run.
#[derive(Clone, Debug)]
pub struct HammerReport {
    /// Requests answered 200 inside the measured window.
    pub requests: u64,
    /// Requests that failed or were answered otherwise, inside the window.
    pub errors: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of every request of the window.
    pub latency: Histogram,
    /// The first few errors.
    pub error_samples: Vec<String>,
}

impl HammerReport {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A closed-loop load generator: `connections` keep-alive connections each send the next prepared
/// request as soon as the previous one is answered. Connection `c` replays requests `c`,
/// `c + connections`, ... in turn. Nothing is counted during `warmup`; then for `duration`.
pub async fn hammer(
    servers: &[SocketAddr],
    tls: Option<&Tls>,
    requests: Arc<Vec<Vec<u8>>>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> HammerReport {
    assert!(!requests.is_empty(), "hammer needs requests");
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = vec![];
    for c in 0..connections.max(1) {
        let server = servers[c % servers.len()];
        let requests = requests.clone();
        let step = connections.max(1);
        let tls = tls.cloned();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::default();
            let mut ok = 0u64;
            let mut errors = 0u64;
            let mut samples = vec![];
            let mut connection: Option<Connection> = None;
            let mut next = c % requests.len();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = exchange(
                    &mut connection,
                    server,
                    tls.as_ref(),
                    &requests[next],
                    Duration::from_secs(10),
                )
                .await;
                let done = Instant::now();
                let counted = sent >= measure_from && done <= end;
                match result {
                    Ok(response) if response.status == 200 => {
                        if counted {
                            ok += 1;
                            latency.record(done - sent);
                        }
                    }
                    Ok(response) => {
                        if counted {
                            errors += 1;
                        }
                        if samples.len() < 3 {
                            samples.push(format!(
                                "HTTP {}: {}",
                                response.status,
                                body_start(&response.body)
                            ));
                        }
                    }
                    Err(error) => {
                        if counted {
                            errors += 1;
                        }
                        if samples.len() < 3 {
                            samples.push(error.to_string());
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                next = (next + step) % requests.len();
            }
            (ok, errors, latency, samples)
        }));
    }
    let mut report = HammerReport {
        requests: 0,
        errors: 0,
        elapsed: duration,
        latency: Histogram::default(),
        error_samples: vec![],
    };
    for task in tasks {
        if let Ok((ok, errors, latency, samples)) = task.await {
            report.requests += ok;
            report.errors += errors;
            report.latency.merge(&latency);
            if report.error_samples.len() < 10 {
                report.error_samples.extend(samples);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_names_are_client_names() {
        let a = credentials(1, 0);
        assert_eq!(a, credentials(1, 0));
        assert!(tc_api::validate::is_dns_label(&a.name), "{}", a.name);
    }
}
