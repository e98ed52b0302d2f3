//! Identities of simulated agents: a deterministic Ed25519 key and uid per agent, enrolment and
//! sessions over the real protocol, and seeding a fleet straight into a store.
//!
//! Keys come from the fleet seed and the agent's index (`Ed25519KeyPair::from_seed_unchecked`),
//! so the process that seeds a store and the process that drives the agents agree on a million
//! identities without exchanging them. A seeded fleet's agents hold session tokens minted with
//! the controller's session key (read from its data directory), so that a benchmark measures
//! heartbeats with identity, not a million handshakes; an enrolled fleet gets its sessions from
//! the controller ([`SimFleet::enroll`], [`SimFleet::open_sessions`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ring::signature::{Ed25519KeyPair, KeyPair};
use tc_api::{Client, ClientPhase, ClientSpec, Timestamp};
use tc_controller::session::{SessionKey, format_uid};
use tc_proto::identity::{base64url_encode, enrollment_message, session_message};
use tc_proto::{
    EnrollRequest, EnrollResponse, EnrollState, Load, PROTOCOL_VERSION, SessionRequest,
    SessionResponse,
};
use tc_store::Store;

use super::http::{self, Connection};
use super::{Histogram, SimAgent, SimError, SimFleet, Tls, exchange, inventory};

/// How long the session tokens of a seeded fleet last: longer than any benchmark.
pub const SEEDED_SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The identity of one simulated agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Index of the agent in its fleet.
    pub index: u64,
    /// Client name on the controller (the host name).
    pub name: String,
    /// Machine identity.
    pub machine_id: String,
    /// The uid its client is seeded with.
    pub uid: u128,
    /// The seed of its Ed25519 key pair.
    pub key_seed: [u8; 32],
}

/// The identity of agent `index` of fleet `seed`.
pub fn credentials(seed: u64, index: u64) -> Credentials {
    let mut key_seed = [0u8; 32];
    for (n, chunk) in key_seed.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&inventory::draw(seed, index, 40 + n as u64).to_le_bytes());
    }
    let uid = (u128::from(inventory::draw(seed, index, 50)) << 64)
        | u128::from(inventory::draw(seed, index, 51));
    Credentials {
        index,
        name: inventory::hostname(seed, index),
        machine_id: inventory::machine_id(seed, index),
        uid,
        key_seed,
    }
}

impl Credentials {
    /// The agent's key pair.
    pub fn key_pair(&self) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&self.key_seed).expect("32-byte seeds make keys")
    }

    /// The agent's public key, base64url, as enrolment sends it.
    pub fn public_key(&self) -> String {
        base64url_encode(self.key_pair().public_key().as_ref())
    }
}

/// The session key of the controller whose data directory this is (made if missing, as the
/// controller makes it at its first start).
pub fn session_key(data_dir: &Path) -> Result<SessionKey, SimError> {
    SessionKey::load_or_create(data_dir).map_err(|source| SimError::Io {
        what: format!("session key in {}", data_dir.display()),
        source,
    })
}

/// How [`seed_store`] creates clients.
#[derive(Clone, Debug)]
pub struct SeedOptions {
    /// Fleet seed (the same one the driving [`SimFleet::seeded`] uses).
    pub seed: u64,
    /// How many clients.
    pub count: u64,
    /// Clients per transaction.
    pub batch: usize,
    /// Store the clients as a running fleet would have them: inventory reported, `Online`, last
    /// heartbeat `now`. Otherwise they are freshly enrolled (`Enrolled`, no inventory).
    pub inventory_reported: bool,
    /// Creation time and last heartbeat.
    pub now: Timestamp,
}

/// The client objects of agents `range` of a seeded fleet, public keys computed on all cores.
fn seeded_clients(options: &SeedOptions, range: std::ops::Range<u64>) -> Vec<Client> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let indexes: Vec<u64> = range.collect();
    let per_thread = indexes.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = indexes
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&i| seeded_client(options, i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("seeding thread"))
            .collect()
    })
}

fn seeded_client(options: &SeedOptions, index: u64) -> Client {
    let credentials = credentials(options.seed, index);
    let mut client = Client::new(
        &credentials.name,
        ClientSpec {
            machine_id: credentials.machine_id.clone(),
            public_key: credentials.public_key(),
            agent_labels: inventory::labels(options.seed, index),
            ..Default::default()
        },
    );
    client.metadata.uid = Some(format_uid(credentials.uid));
    if options.inventory_reported {
        let inventory = inventory::inventory(options.seed, index);
        let status = &mut client.status;
        status.inventory_hash = tc_proto::inventory_hash(&inventory);
        status.inventory = Some(inventory);
        status.phase = ClientPhase::Online;
        status.last_heartbeat = Some(options.now);
        client.refresh_labels();
    }
    client
}

/// Creates the clients of a seeded fleet in the store, `batch` per transaction, and returns how
/// many were created. Each client has its agent's public key and a uid of its own, so that the
/// driving process can mint its sessions. With `inventory_reported`, every client's liveness is
/// recorded again at the end (one transaction), so that a controller started right after sees a
/// fleet that was heartbeating until then, however long seeding took.
pub fn seed_store(store: &dyn Store, options: &SeedOptions) -> Result<u64, SimError> {
    let mut created = 0;
    let mut index = 0;
    while index < options.count {
        let end = (index + options.batch.max(1) as u64).min(options.count);
        let batch = seeded_clients(options, index..end);
        created += store.create_clients(batch, options.now)?.len() as u64;
        index = end;
    }
    if options.inventory_reported {
        let now = Timestamp::now();
        let liveness = (0..options.count)
            .map(|i| tc_store::Liveness {
                name: inventory::hostname(options.seed, i),
                last_heartbeat: now,
                load: Load::default(),
            })
            .collect();
        store.put_liveness(liveness)?;
    }
    Ok(created)
}

/// Figures of an HTTP enrolment run.
#[derive(Clone, Debug)]
pub struct EnrolReport {
    /// Agents enrolled.
    pub enrolled: u64,
    /// Agents whose enrolment waits for an admin (they are not in the fleet).
    pub pending: u64,
    /// Failed enrolments.
    pub errors: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency of each enrolment.
    pub latency: Histogram,
}

/// What one enrolment request got.
enum Enrolment {
    Enrolled(EnrollResponse),
    Pending,
    /// Rate-limited: try again after this long.
    Later(Duration),
    Failed,
}

async fn enrol_one(
    connection: &mut Option<Connection>,
    server: SocketAddr,
    tls: Option<&Tls>,
    bootstrap_token: &str,
    seed: u64,
    index: u64,
    timeout: Duration,
) -> Enrolment {
    let credentials = credentials(seed, index);
    let public_key = credentials.public_key();
    let token_hash = tc_controller::tokens::hash(bootstrap_token);
    let message = enrollment_message(&credentials.machine_id, &public_key, &token_hash);
    let request = EnrollRequest {
        protocol_version: PROTOCOL_VERSION,
        bootstrap_token: bootstrap_token.to_string(),
        machine_id: credentials.machine_id.clone(),
        name: credentials.name.clone(),
        hostname: credentials.name.clone(),
        labels: inventory::labels(seed, index),
        signature: base64url_encode(credentials.key_pair().sign(&message).as_ref()),
        public_key,
        previous_client_token: None,
    };
    let body = serde_json::to_vec(&request).expect("enrolments serialize");
    let host = server.to_string();
    let bytes = http::build_request(
        "POST",
        "/agent/v1/enroll",
        &host,
        None,
        Some("application/json"),
        &body,
    );
    match exchange(connection, server, tls, &bytes, timeout).await {
        // The controller's enrolment rate limit: its `Retry-After` is about a second at the
        // configured rates.
        Ok(response) if response.status == 429 => Enrolment::Later(Duration::from_secs(1)),
        Ok(response) if response.status == 200 || response.status == 202 => {
            match serde_json::from_slice::<EnrollResponse>(&response.body) {
                Ok(answer) if answer.state == EnrollState::Enrolled => Enrolment::Enrolled(answer),
                Ok(answer) if answer.state == EnrollState::Pending => Enrolment::Pending,
                _ => Enrolment::Failed,
            }
        }
        _ => Enrolment::Failed,
    }
}

impl SimFleet {
    /// The agents of a fleet seeded with [`seed_store`]: the same seed and count, with session
    /// tokens minted with the controller's session key ([`session_key`]). With
    /// `inventory_known`, agents start by sending only their inventory hash.
    pub fn seeded(seed: u64, count: u64, inventory_known: bool, sessions: &SessionKey) -> SimFleet {
        let expires = Timestamp::now().plus(SEEDED_SESSION_LIFETIME);
        let agents = (0..count)
            .map(|index| {
                let credentials = credentials(seed, index);
                let token = sessions.mint(credentials.uid, 0, expires);
                SimAgent::new(seed, index, credentials.name, token, inventory_known)
            })
            .collect();
        SimFleet {
            agents: Arc::new(agents),
        }
    }

    /// Enrols `count` agents over HTTP with the bootstrap token, `concurrency` at a time, each
    /// with its own key; an enrolment the controller rate-limits is tried again after the wait it
    /// asks for, within `timeout`. Agent `i` has identity `i` of fleet `seed` (a different seed
    /// gives different machines). Agents whose enrolment waits for approval are counted, not
    /// kept.
    pub async fn enroll(
        servers: &[SocketAddr],
        tls: Option<&Tls>,
        bootstrap_token: &str,
        seed: u64,
        count: u64,
        concurrency: usize,
        timeout: Duration,
    ) -> Result<(SimFleet, EnrolReport), SimError> {
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = vec![];
        for worker in 0..concurrency.max(1) {
            let server = servers[worker % servers.len()];
            let next = next.clone();
            let bootstrap_token = bootstrap_token.to_string();
            let tls = tls.cloned();
            tasks.push(tokio::spawn(async move {
                let mut enrolled = vec![];
                let mut latency = Histogram::default();
                let (mut pending, mut errors) = (0u64, 0u64);
                let mut connection: Option<Connection> = None;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        break;
                    }
                    let deadline = Instant::now() + timeout;
                    loop {
                        let sent = Instant::now();
                        match enrol_one(
                            &mut connection,
                            server,
                            tls.as_ref(),
                            &bootstrap_token,
                            seed,
                            index,
                            timeout,
                        )
                        .await
                        {
                            Enrolment::Enrolled(answer) => {
                                latency.record(sent.elapsed());
                                match answer.session {
                                    Some(session) => enrolled.push(SimAgent::new(
                                        seed,
                                        index,
                                        answer.client_name,
                                        session.token,
                                        false,
                                    )),
                                    None => errors += 1,
                                }
                            }
                            Enrolment::Pending => pending += 1,
                            Enrolment::Later(wait) if Instant::now() + wait < deadline => {
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                            Enrolment::Later(_) | Enrolment::Failed => errors += 1,
                        }
                        break;
                    }
                }
                (enrolled, latency, pending, errors)
            }));
        }
        let mut agents = vec![];
        let mut latency = Histogram::default();
        let (mut pending, mut errors) = (0, 0);
        for task in tasks {
            let (enrolled, histogram, waiting, failed) = task.await.map_err(|e| SimError::Io {
                what: "enrolment task".into(),
                source: std::io::Error::other(e),
            })?;
            agents.extend(enrolled);
            latency.merge(&histogram);
            pending += waiting;
            errors += failed;
        }
        agents.sort_by_key(|a| a.index);
        let report = EnrolReport {
            enrolled: agents.len() as u64,
            pending,
            errors,
            elapsed: started.elapsed(),
            latency,
        };
        Ok((
            SimFleet {
                agents: Arc::new(agents),
            },
            report,
        ))
    }

    /// Opens a new session for every agent over the protocol (a challenge, signed with the
    /// agent's key), and returns the fleet with the new session tokens. The fleet must not be
    /// running.
    pub async fn open_sessions(
        &self,
        server: SocketAddr,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> Result<SimFleet, SimError> {
        let host = server.to_string();
        let mut connection: Option<Connection> = None;
        let mut agents = Vec::with_capacity(self.agents.len());
        for agent in self.agents.iter() {
            let credentials = credentials(agent.seed, agent.index);
            let mut request = SessionRequest {
                protocol_version: PROTOCOL_VERSION,
                client_name: agent.name.clone(),
                challenge: String::new(),
                signature: String::new(),
            };
            let what = format!("session of {}", agent.name);
            let challenge = post_session(
                &mut connection,
                server,
                tls,
                &host,
                &request,
                timeout,
                &what,
            )
            .await?
            .challenge
            .ok_or_else(|| status_error(&what, 200, "no challenge in the answer"))?;
            let message = session_message(&agent.name, &challenge.value);
            request.signature = base64url_encode(credentials.key_pair().sign(&message).as_ref());
            request.challenge = challenge.value;
            let session = post_session(
                &mut connection,
                server,
                tls,
                &host,
                &request,
                timeout,
                &what,
            )
            .await?
            .session
            .ok_or_else(|| status_error(&what, 200, "no session in the answer"))?;
            let state = agent.state.lock().expect("agent lock");
            agents.push(SimAgent::new(
                agent.seed,
                agent.index,
                agent.name.clone(),
                session.token,
                state.inventory_known,
            ));
        }
        Ok(SimFleet {
            agents: Arc::new(agents),
        })
    }
}

fn status_error(what: &str, status: u16, body: &str) -> SimError {
    SimError::Status {
        what: what.to_string(),
        status,
        body: body.to_string(),
    }
}

async fn post_session(
    connection: &mut Option<Connection>,
    server: SocketAddr,
    tls: Option<&Tls>,
    host: &str,
    request: &SessionRequest,
    timeout: Duration,
    what: &str,
) -> Result<SessionResponse, SimError> {
    let body = serde_json::to_vec(request).expect("session requests serialize");
    let bytes = http::build_request(
        "POST",
        "/agent/v1/session",
        host,
        None,
        Some("application/json"),
        &body,
    );
    let response = exchange(connection, server, tls, &bytes, timeout)
        .await
        .map_err(|source| SimError::Io {
            what: what.to_string(),
            source,
        })?;
    if response.status != 200 {
        return Err(status_error(
            what,
            response.status,
            &super::body_start(&response.body),
        ));
    }
    serde_json::from_slice(&response.body)
        .map_err(|error| status_error(what, 200, &error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_deterministic_and_distinct() {
        let a = credentials(1, 0);
        assert_eq!(a, credentials(1, 0));
        assert_ne!(a.key_seed, credentials(1, 1).key_seed);
        assert_ne!(a.uid, credentials(2, 0).uid);
        assert_eq!(a.public_key(), credentials(1, 0).public_key());
        assert_ne!(a.public_key(), credentials(1, 1).public_key());
        assert_eq!(a.public_key().len(), 43);
    }

    #[test]
    fn seeded_sessions_name_the_seeded_uid() {
        let key = SessionKey::from_secret(b"secret");
        let fleet = SimFleet::seeded(3, 2, true, &key);
        let claims = key
            .verify(fleet.agents()[1].token(), Timestamp::now())
            .unwrap();
        assert_eq!(claims.uid, credentials(3, 1).uid);
        assert_eq!(claims.generation, 0);
    }
}
