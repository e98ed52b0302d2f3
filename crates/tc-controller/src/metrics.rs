//! Prometheus metrics, one registry per controller instance (tests run several).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    /// Clients by phase.
    pub clients: Family<Vec<(String, String)>, Gauge>,
    /// Heartbeats answered.
    pub heartbeats: Counter,
    /// Applies by result (`ok`, `error`, `dry_run`).
    pub applies: Family<Vec<(String, String)>, Counter>,
    /// Apply duration, seconds.
    pub apply_seconds: Histogram,
    /// Reconcile passes.
    pub reconciles: Counter,
    /// Reconcile pass duration, seconds.
    pub reconcile_seconds: Histogram,
    /// Blob bytes sent to agents and admins.
    pub blob_bytes_served: Counter,
    /// Enrolments.
    pub enrolments: Counter,
    /// Enrolments refused, by reason (`rateLimited`, `badToken`, `badSignature`, `blocked`,
    /// `invalid`).
    pub enrolments_refused: Family<Vec<(String, String)>, Counter>,
    /// Sessions opened (a signed challenge answered with a session token).
    pub sessions: Counter,
    /// Events about clients dropped because a client sent more than its share.
    pub client_events_dropped: Counter,
    /// Group commits of client state (heartbeat reports and liveness flushes share them).
    pub client_write_batches: Counter,
    /// Audit entries that could not be stored (the database failed).
    pub audit_failures: Counter,
}

impl Metrics {
    /// Registers the accept loop's counters.
    pub fn register_connections(&mut self, connections: &crate::server::ConnectionMetrics) {
        self.registry.register(
            "connections_refused",
            "Connections closed at once because --max-connections were open",
            connections.refused.clone(),
        );
        self.registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            connections.handshake_failures.clone(),
        );
        self.registry.register(
            "connections_timed_out",
            "Connections closed for sending nothing in time or for being idle",
            connections.timed_out.clone(),
        );
        self.registry.register(
            "connections_open",
            "Connections being served",
            connections.open.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("thinfleet");
        let clients = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register("clients", "Clients by phase", clients.clone());
        let heartbeats = Counter::default();
        registry.register("heartbeats", "Heartbeats answered", heartbeats.clone());
        let applies = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("applies", "Applies by result", applies.clone());
        let apply_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "apply_duration_seconds",
            "Apply duration",
            apply_seconds.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile passes", reconciles.clone());
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile pass duration",
            reconcile_seconds.clone(),
        );
        let blob_bytes_served = Counter::default();
        registry.register(
            "blob_bytes_served",
            "Blob bytes served",
            blob_bytes_served.clone(),
        );
        let enrolments = Counter::default();
        registry.register("enrolments", "Agent enrolments", enrolments.clone());
        let enrolments_refused = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "enrolments_refused",
            "Enrolments refused, by reason",
            enrolments_refused.clone(),
        );
        let sessions = Counter::default();
        registry.register("sessions", "Agent sessions opened", sessions.clone());
        let client_events_dropped = Counter::default();
        registry.register(
            "client_events_dropped",
            "Events about clients dropped by the per-client event rate limit",
            client_events_dropped.clone(),
        );
        let client_write_batches = Counter::default();
        registry.register(
            "client_write_batches",
            "Group commits of client state to the store",
            client_write_batches.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit entries that could not be stored",
            audit_failures.clone(),
        );
        Metrics {
            registry,
            clients,
            heartbeats,
            applies,
            apply_seconds,
            reconciles,
            reconcile_seconds,
            blob_bytes_served,
            enrolments,
            enrolments_refused,
            sessions,
            client_events_dropped,
            client_write_batches,
            audit_failures,
        }
    }
}

impl Metrics {
    /// Counts an apply.
    pub fn apply(&self, result: &str, seconds: f64) {
        self.applies
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
        self.apply_seconds.observe(seconds);
    }

    /// Counts an audit entry that could not be stored.
    pub fn audit_failed(&self) {
        self.audit_failures.inc();
    }

    /// Counts a refused enrolment.
    pub fn enrolment_refused(&self, reason: &str) {
        self.enrolments_refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// Sets the number of clients in a phase.
    pub fn set_clients(&self, phase: &str, count: usize) {
        self.clients
            .get_or_create(&vec![("phase".to_string(), phase.to_string())])
            .set(count as i64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("metrics encode into a string");
        text
    }
}
