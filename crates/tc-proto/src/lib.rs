//! Wire types of the agent protocol (`/agent/v1`), shared by `tc-agent` and `tc-controller`.
//!
//! The protocol is versioned on its own ([`PROTOCOL_VERSION`]), independently of the resource API.
//! Wire types accept unknown fields so that a newer agent can talk to an older controller and the
//! other way round; fields added later must have a default.
//!
//! Version 2 binds a client's identity to a key pair made on the client ([`identity`]): enrolment
//! carries the public key and a signature, agent requests carry short-lived session tokens
//! obtained with `POST /agent/v1/session`, and everything an agent sends is bounded
//! ([`limits`]).

pub mod activation;
pub mod history;
pub mod identity;
pub mod limits;
pub mod task;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the agent protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 2;

/// The first protocol version with key-bound identities and sessions; controllers refuse
/// enrolments of older agents (a client token or a machine id alone no longer identifies a
/// client).
pub const IDENTITY_PROTOCOL_VERSION: u32 = 2;

/// Path prefix of the agent API on the controller.
pub const AGENT_API_PREFIX: &str = "/agent/v1";

/// A point in time with millisecond precision, written as RFC 3339 UTC (`2026-11-22T01:20:00.000Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The last time RFC 3339 can write, 9999-12-31T23:59:59.999Z: every way of making a
    /// timestamp stops there, so that every timestamp can be written.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Milliseconds since the Unix epoch (at most [`Timestamp::MAX`]).
    pub fn from_unix_millis(millis: u64) -> Self {
        Timestamp(millis.min(Self::MAX.0))
    }

    /// Converts a `SystemTime`; times before the epoch become the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Timestamp::from_unix_millis(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> u64 {
        self.0
    }

    /// This time plus `duration` (saturating).
    pub fn plus(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Timestamp::from_unix_millis(self.0.saturating_add(millis))
    }

    /// How long after `earlier` this time is; zero if it is not after.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.system_time())
        )
    }
}

impl std::str::FromStr for Timestamp {
    type Err = humantime::TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_rfc3339_weak(text).map(Self::from_system_time)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|error| {
            serde::de::Error::custom(format!("`{text}` is not an RFC 3339 timestamp: {error}"))
        })
    }
}

#[cfg(feature = "schemars")]
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// One command run by the agent inside an extracted package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    /// Program and arguments; a relative program is resolved inside the package directory.
    pub command: Vec<String>,
    /// The hook is killed and counts as failed after this many seconds.
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u32,
}

fn default_hook_timeout() -> u32 {
    60
}

/// The optional lifecycle hooks of a package release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hooks {
    /// Runs in the extracted (not yet active) version before activation; failure aborts the install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_install: Option<Hook>,
    /// Runs after the version became `current`; failure rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<Hook>,
    /// Runs last; failure rolls back to the previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Hook>,
    /// Runs in the active version before it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_remove: Option<Hook>,
}

impl Hooks {
    /// True when no hook is set.
    pub fn is_empty(&self) -> bool {
        self == &Hooks::default()
    }
}

/// [`Hooks`] as they arrive in a desired package: a hook or a hook field a newer controller adds
/// is ignored, as unknown fields are everywhere on the wire, rather than making the whole answer
/// unreadable to an older agent. Manifests keep refusing unknown fields ([`Hooks`] itself).
fn hooks_from_wire<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Hooks, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct WireHook {
        command: Vec<String>,
        #[serde(default = "default_hook_timeout")]
        timeout_seconds: u32,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct WireHooks {
        #[serde(default)]
        pre_install: Option<WireHook>,
        #[serde(default)]
        post_install: Option<WireHook>,
        #[serde(default)]
        health_check: Option<WireHook>,
        #[serde(default)]
        pre_remove: Option<WireHook>,
    }

    let hook = |wire: Option<WireHook>| {
        wire.map(|hook| Hook {
            command: hook.command,
            timeout_seconds: hook.timeout_seconds,
        })
    };
    let wire = WireHooks::deserialize(deserializer)?;
    Ok(Hooks {
        pre_install: hook(wire.pre_install),
        post_install: hook(wire.post_install),
        health_check: hook(wire.health_check),
        pre_remove: hook(wire.pre_remove),
    })
}

/// The state of one package on a client, as the agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum PackageState {
    /// Active and, if it has a health check, healthy.
    Installed,
    /// Being downloaded, extracted or activated.
    Installing,
    /// The last attempt failed; the previous version (if any) is active.
    Failed,
    /// Being removed.
    Removing,
}

impl fmt::Display for PackageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PackageState::Installed => "Installed",
            PackageState::Installing => "Installing",
            PackageState::Failed => "Failed",
            PackageState::Removing => "Removing",
        })
    }
}

/// One package as reported by an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PackageReport {
    /// Package name.
    pub name: String,
    /// The version this report is about: the active one when `Installed`, the target otherwise.
    pub version: String,
    /// Where that version stands.
    pub state: PackageState,
    /// The version that is active right now, if any (differs from `version` while updating or after
    /// a failed update that rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<String>,
    /// Human-readable detail: the failure reason with the tail of a hook's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the package entered this state.
    pub since: Timestamp,
    /// The change to `version` (state `Installing`) or the removal (state `Removing`) is
    /// downloaded and verified and waits for its activation ([`activation`]). Absent from agents
    /// that predate progressive delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<activation::Staged>,
}

/// A disk as seen by the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Disk {
    /// Device name.
    pub name: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// File system type.
    pub file_system: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Free space in bytes, rounded down to a multiple of 64 MiB so that it does not change the
    /// inventory hash on every write.
    pub available_bytes: u64,
}

/// A network interface as seen by the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkInterface {
    /// Interface name (`eth0`).
    pub name: String,
    /// Hardware address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// Addresses with prefix length (`192.0.2.10/24`).
    pub addresses: Vec<String>,
}

/// The hardware and software inventory of a client. It only changes when the machine does: the
/// values that move all the time (load, uptime) travel in [`Load`] instead, so the inventory hash is
/// stable and the full inventory is sent only when something really changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Inventory {
    /// Host name.
    pub hostname: String,
    /// Operating system name (`Debian GNU/Linux`).
    pub os_name: String,
    /// Operating system version (`12`).
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// CPU brand string.
    pub cpu_model: String,
    /// Logical CPU count.
    pub cpu_cores: u32,
    /// Physical memory in bytes.
    pub memory_total_bytes: u64,
    /// Disks.
    pub disks: Vec<Disk>,
    /// Network interfaces.
    pub network_interfaces: Vec<NetworkInterface>,
    /// When the machine booted (uptime = now - boot time).
    pub boot_time: Option<Timestamp>,
    /// Version of the tc-agent binary.
    pub agent_version: String,
}

/// Fast-moving figures sent with every heartbeat (never part of the inventory hash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Load {
    /// Average CPU use over the last interval, 0..=100.
    pub cpu_percent: f32,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Seconds since boot.
    pub uptime_seconds: u64,
}

/// `POST /agent/v1/enroll`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct EnrollRequest {
    /// Protocol version spoken by the agent.
    pub protocol_version: u32,
    /// A bootstrap token: it lets a new machine ask to join, nothing more.
    pub bootstrap_token: String,
    /// The machine identity (`/etc/machine-id`). Not a credential: a machine id enrolled under
    /// another key makes a pending client an admin decides on.
    pub machine_id: String,
    /// Preferred client name (the host name by default); the controller may adjust it.
    pub name: String,
    /// Host name.
    pub hostname: String,
    /// Labels from the agent's own configuration (labels the bootstrap token imposes win).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The agent's Ed25519 public key, base64url (32 bytes). Empty from agents of protocol 1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// Ed25519 signature (base64url) of [`identity::enrollment_message`] over the machine id,
    /// the public key and the SHA-256 of the bootstrap token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
    /// The client token an agent of protocol 1 was given, when it still has it: proves that
    /// this key belongs to the client enrolled before identities existed, which then keeps its
    /// name, labels and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_client_token: Option<String>,
}

/// Where an enrolment stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum EnrollState {
    /// The client is enrolled: a session comes with the answer, or from `POST session`.
    /// (Answers of protocol-1 controllers carry no state and mean this.)
    #[default]
    Enrolled,
    /// The client waits for an admin (`tcadm approve`); ask again after `retryAfterSeconds`.
    Pending,
    /// Refused: an admin denied it, or the machine was decommissioned. Answered with HTTP 403.
    Denied,
}

/// Why a client waits for an admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum PendingReason {
    /// The bootstrap token, or the controller, requires an admin's approval of new clients.
    ApprovalRequired,
    /// The machine id is already enrolled under another key: a cloned image or a re-imaged
    /// machine. An admin approves it as a new client or as the replacement of the old one.
    DuplicateMachineId,
    /// A reason this build does not know (from a newer controller).
    #[serde(other)]
    Other,
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PendingReason::ApprovalRequired => "ApprovalRequired",
            PendingReason::DuplicateMachineId => "DuplicateMachineId",
            PendingReason::Other => "Other",
        })
    }
}

/// A session: the bearer token of agent requests until it expires.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The token, sent as `Authorization: Bearer`.
    pub token: String,
    /// When the controller stops accepting it.
    pub expires_at: Timestamp,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &"...")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn default_heartbeat_seconds() -> u32 {
    30
}

/// Answer to an enrolment (HTTP 200 when enrolled, 202 when pending; a denial is a 403 with an
/// error body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    /// Where the enrolment stands.
    #[serde(default)]
    pub state: EnrollState,
    /// The client's name on the controller.
    #[serde(default)]
    pub client_name: String,
    /// Why the client waits (`Pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<PendingReason>,
    /// The reason for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When to ask again (`Pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
    /// A first session, for a client enrolled by this very request. An agent whose key was
    /// enrolled before gets none: it opens one with `POST session`, which proves it holds the key
    /// now (an enrolment request could have been recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// Heartbeat interval to use until told otherwise.
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u32,
    /// The bearer token handed out by controllers of protocol 1 (no state, no session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

/// `POST /agent/v1/session`: without `challenge`, asks for a challenge; with the challenge and
/// a signature of [`identity::session_message`] over it, asks for a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SessionRequest {
    /// Protocol version spoken by the agent.
    pub protocol_version: u32,
    /// The client's name, as enrolment answered it.
    pub client_name: String,
    /// The challenge the controller gave, unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub challenge: String,
    /// Ed25519 signature (base64url) of the session message over the challenge.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

/// A challenge to sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    /// The opaque challenge.
    pub value: String,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
}

/// Answer to `POST /agent/v1/session`: a challenge, or a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SessionResponse {
    /// The challenge to sign (first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<Challenge>,
    /// The session (second step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
}

/// `POST /agent/v1/heartbeat`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    /// Protocol version spoken by the agent.
    pub protocol_version: u32,
    /// The desired revision the package reports below were produced for. Reports for an older
    /// revision are not taken as proof that the current assignment is done.
    pub observed_revision: u64,
    /// Every package thinfleet manages on this client.
    #[serde(default)]
    pub packages: Vec<PackageReport>,
    /// Hash of the inventory (see [`inventory_hash`]).
    pub inventory_hash: String,
    /// The full inventory, only when the hash changed or the controller asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Load figures.
    #[serde(default)]
    pub load: Load,
    /// The client was told to decommission, has removed every package thinfleet installed, and
    /// is about to delete its identity and stop: the controller deletes it and keeps its machine
    /// id and key from enrolling again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub decommissioned: bool,
}

pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

/// One package a client should run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DesiredPackage {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Lowercase hex sha256 of the zip.
    pub sha256: String,
    /// Size of the zip in bytes.
    pub size: u64,
    /// Where to download it, relative to the controller URL (`/blobs/sha256/<hex>`).
    pub url: String,
    /// Lifecycle hooks. A hook or hook field this version does not know is ignored.
    #[serde(
        default,
        skip_serializing_if = "Hooks::is_empty",
        deserialize_with = "hooks_from_wire"
    )]
    pub hooks: Hooks,
    /// Which attempt at this release: the controller raises it when an admin retries a failed
    /// release. After an install of a release failed, the agent does not install the same release
    /// (sha256) again until this changes. Absent (0) from controllers that predate it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The minisign signature of the zip (the whole `.minisig` text) from the release, if an admin
    /// signed it. Agents with trusted keys refuse a package whose signature is missing or does not
    /// verify. Absent from controllers that predate it and for unsigned releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Everything a client should run, at a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    /// Increases every time the client's desired packages change.
    pub revision: u64,
    /// The packages, sorted by name.
    pub packages: Vec<DesiredPackage>,
    /// The client is to be decommissioned: remove every package thinfleet installed (running
    /// `preRemove`), report that with `decommissioned`, delete the identity and stop for good.
    #[serde(default, skip_serializing_if = "is_false")]
    pub decommission: bool,
    /// When updates and removals may be activated ([`activation`]). Absent: at once.
    #[serde(default, skip_serializing_if = "activation::Activation::is_default")]
    pub activation: activation::Activation,
}

/// Answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// What the client should run.
    pub desired: DesiredState,
    /// When to send the next heartbeat, jitter included.
    pub next_heartbeat_millis: u64,
    /// The controller wants the full inventory with the next heartbeat.
    #[serde(default)]
    pub send_inventory: bool,
    /// Remote operations the client has not reported started yet ([`task`]). Absent (empty)
    /// from controllers that predate tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<task::TaskOrder>,
}

/// Answer of `GET /agent/v1/desired?afterRevision=N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DesiredResponse {
    /// The desired state; its revision equals `afterRevision` when the wait timed out unchanged.
    pub desired: DesiredState,
    /// True when the revision is newer than the one asked after.
    pub changed: bool,
    /// The controller asks for the load history: send it with `POST /agent/v1/history`, then
    /// long-poll again. Absent (false) from controllers that predate it; agents that predate it
    /// ignore it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub send_history: bool,
    /// Remote operations the client has not reported started yet ([`task`]); a new one answers
    /// a waiting long-poll at once. Absent (empty) from controllers that predate tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<task::TaskOrder>,
}

/// Answer of `GET /agent/v1/releases/{package}/{version}`: the release of a package version the
/// client runs. An agent whose journal was lost (and rebuilt from the installed packages) asks for
/// it before removing that version, since `preRemove` must run first. Controllers that predate it
/// answer 404, as for a release they do not have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReleaseInfo {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Lowercase hex sha256 of the zip.
    pub sha256: String,
    /// Lifecycle hooks.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
}

/// Error body of the agent API (the same shape as the admin API's `Status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorStatus {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`Unauthorized`, `BadRequest`, `SessionExpired`,
    /// `SessionRevoked`, `Denied`, `Decommissioned`, `TooManyRequests`, ...).
    pub reason: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// `reason` of a 401 for an expired session: open a new one with `POST session`.
pub const REASON_SESSION_EXPIRED: &str = "SessionExpired";

/// `reason` of a 401 for a session that was revoked (its client deleted, or its key replaced):
/// a new session cannot be had with the same key; enrol again.
pub const REASON_SESSION_REVOKED: &str = "SessionRevoked";

/// `reason` of a 403 refusing an enrolment an admin denied.
pub const REASON_DENIED: &str = "Denied";

/// `reason` of a 403 refusing an enrolment of a decommissioned machine.
pub const REASON_DECOMMISSIONED: &str = "Decommissioned";

/// An error with its causes, for a message: HTTP and database clients keep the cause (a timeout,
/// a certificate that does not verify) out of their own `Display`. A cause whose text the message
/// already holds is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A stable hash of an inventory: FNV-1a over its canonical JSON-free field walk, in hex.
///
/// Uses a fixed algorithm (not `std`'s randomly seeded hasher) so agent and controller agree across
/// restarts and builds.
pub fn inventory_hash(inventory: &Inventory) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = Fnv1a::default();
    inventory.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// 64-bit FNV-1a, small and deterministic.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_rfc3339() {
        let time = Timestamp::from_unix_millis(1_795_000_000_123);
        let text = time.to_string();
        assert_eq!(text, "2026-11-18T11:06:40.123Z");
        assert_eq!(text.parse::<Timestamp>().unwrap(), time);
        let json = serde_json::to_string(&time).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), time);
    }

    /// Found by schemathesis: a credential asked to expire in 17,000 years made a timestamp that
    /// RFC 3339 cannot write, and writing it panicked (a 500). Every timestamp stops at the year
    /// 9999 now, and can be written and read back.
    #[test]
    fn far_future_timestamps_stop_at_the_last_writable_time() {
        let far = Timestamp::now().plus(Duration::from_secs(539_316_815_062));
        assert_eq!(far, Timestamp::MAX);
        assert_eq!(far.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(far.to_string().parse::<Timestamp>().unwrap(), far);
        assert_eq!(Timestamp::from_unix_millis(u64::MAX), Timestamp::MAX);
        assert_eq!(Timestamp::MAX.plus(Duration::MAX), Timestamp::MAX);
    }

    /// The wire promises that agents read answers of a newer controller: a hook kind or a hook
    /// field added later made `deny_unknown_fields` on `Hooks` refuse the whole desired state.
    /// It is ignored now, on the wire only: a manifest's hooks still refuse unknown fields.
    #[test]
    fn a_desired_package_with_hooks_of_a_newer_controller_is_read() {
        let json = r#"{"name":"kiosk","version":"1.1.0","sha256":"ab","size":3,"url":"/b",
            "hooks":{"postInstall":{"command":["./post"],"timeoutSeconds":5,"runAs":"kiosk"},
                     "healthCheck":{"command":["./health"]},
                     "preActivate":{"command":["./later"]}}}"#;
        let package: DesiredPackage = serde_json::from_str(json).unwrap();
        assert_eq!(
            package.hooks,
            Hooks {
                post_install: Some(Hook {
                    command: vec!["./post".into()],
                    timeout_seconds: 5,
                }),
                health_check: Some(Hook {
                    command: vec!["./health".into()],
                    timeout_seconds: 60,
                }),
                ..Hooks::default()
            }
        );
        let written = serde_json::to_string(&package).unwrap();
        assert_eq!(
            serde_json::from_str::<DesiredPackage>(&written).unwrap(),
            package
        );
        let without: DesiredPackage = serde_json::from_str(
            r#"{"name":"kiosk","version":"1","sha256":"ab","size":3,"url":"/b"}"#,
        )
        .unwrap();
        assert!(without.hooks.is_empty());
        let error = serde_json::from_str::<Hooks>(r#"{"preActivate":{"command":["x"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `preActivate`"), "{error}");
        let error = serde_json::from_str::<Hook>(r#"{"command":["x"],"runAs":"kiosk"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `runAs`"), "{error}");
    }

    #[test]
    fn timestamp_rejects_garbage_with_the_text() {
        let error = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(error.to_string().contains("`yesterday`"), "{error}");
    }

    #[test]
    fn inventory_hash_is_stable_and_sensitive() {
        let mut inventory = Inventory {
            hostname: "kiosk-1".into(),
            cpu_cores: 2,
            ..Default::default()
        };
        let first = inventory_hash(&inventory);
        assert_eq!(first, inventory_hash(&inventory.clone()));
        inventory.memory_total_bytes = 2 << 30;
        assert_ne!(first, inventory_hash(&inventory));
        assert_eq!(first.len(), 16);
    }

    #[test]
    fn heartbeat_accepts_unknown_fields_from_newer_agents() {
        let request: HeartbeatRequest = serde_json::from_str(
            r#"{"protocolVersion":2,"observedRevision":3,"inventoryHash":"x","futureField":true}"#,
        )
        .unwrap();
        assert_eq!(request.observed_revision, 3);
        assert!(request.packages.is_empty());
    }

    #[test]
    fn enrolment_answers_of_protocol_1_controllers_mean_enrolled_with_a_client_token() {
        let answer: EnrollResponse = serde_json::from_str(
            r#"{"clientName":"kiosk-1","clientToken":"t","heartbeatSeconds":15}"#,
        )
        .unwrap();
        assert_eq!(answer.state, EnrollState::Enrolled);
        assert_eq!(answer.client_token.as_deref(), Some("t"));
        assert_eq!(answer.heartbeat_seconds, 15);
        assert!(answer.session.is_none());
    }

    #[test]
    fn unknown_pending_reasons_and_fields_from_newer_controllers_are_accepted() {
        let answer: EnrollResponse = serde_json::from_str(
            r#"{"state":"Pending","clientName":"k","reason":"SomethingNew","retryAfterSeconds":5,"future":1}"#,
        )
        .unwrap();
        assert_eq!(answer.state, EnrollState::Pending);
        assert_eq!(answer.reason, Some(PendingReason::Other));
        let desired: DesiredState =
            serde_json::from_str(r#"{"revision":3,"packages":[],"decommission":true}"#).unwrap();
        assert!(desired.decommission);
        let plain = serde_json::to_string(&DesiredState::default()).unwrap();
        assert!(!plain.contains("decommission"), "{plain}");
    }

    #[test]
    fn enrolment_requests_of_protocol_1_agents_have_no_key() {
        let request: EnrollRequest = serde_json::from_str(
            r#"{"protocolVersion":1,"bootstrapToken":"b","machineId":"m","name":"n","hostname":"h"}"#,
        )
        .unwrap();
        assert!(request.public_key.is_empty() && request.signature.is_empty());
    }

    #[test]
    fn sessions_do_not_print_their_token() {
        let session = Session {
            token: "secret".into(),
            expires_at: Timestamp::EPOCH,
        };
        assert!(!format!("{session:?}").contains("secret"));
    }

    #[test]
    fn hooks_default_timeout_is_sixty_seconds() {
        let hook: Hook = serde_json::from_str(r#"{"command":["./health.sh"]}"#).unwrap();
        assert_eq!(hook.timeout_seconds, 60);
    }
}
