//! The resource kinds: `ClientGroup`, `PackageRelease` and `Client` (in [`crate::client`]).

use std::collections::BTreeSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tc_proto::{Hook, Hooks, Timestamp};

pub use crate::client::*;
use crate::meta::{API_VERSION, Condition, ObjectMeta};
use crate::selector::LabelSelector;
pub use crate::task::Task;
use crate::validate::{Errors, validate_labels, validate_name, validate_object_name};

/// Longest hook timeout accepted (one day).
pub const MAX_HOOK_TIMEOUT_SECONDS: u32 = 86_400;

// ---------------------------------------------------------------------------------------------
// ClientGroup

/// Which clients run which packages, and how changes roll out to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientGroup {
    /// Always `thinfleet.io/v1`.
    pub api_version: String,
    /// Always `ClientGroup`.
    pub kind: String,
    /// Name, labels, annotations.
    pub metadata: ObjectMeta,
    /// What the admin wants.
    pub spec: ClientGroupSpec,
    /// What the controller observed; ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ClientGroupStatus>,
}

/// The admin-written part of a `ClientGroup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientGroupSpec {
    /// Which clients belong to the group; `{}` selects every client.
    pub selector: LabelSelector,
    /// When two groups pin the same package for a client, the higher priority wins.
    #[serde(default)]
    pub priority: i32,
    /// The packages the members run.
    #[serde(default)]
    pub packages: Vec<PackageRequirement>,
    /// How a change reaches the members.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Agent settings for the members.
    #[serde(default)]
    pub agent: AgentSpec,
    /// When true, members get no new assignments from this group.
    #[serde(default)]
    pub paused: bool,
}

/// One package of a group, with the versions it accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageRequirement {
    /// Package name.
    pub name: String,
    /// A semver requirement (`^1.4`, `~2.0`, `>=1.2, <2`, `*`); a bare full version (`1.4.2`)
    /// means exactly that version.
    pub version: String,
}

impl PackageRequirement {
    /// Parses `version` as a requirement (a bare `X.Y.Z` is exact).
    pub fn version_req(&self) -> Result<semver::VersionReq, semver::Error> {
        parse_version_req(&self.version)
    }
}

/// Parses a version requirement; a bare full version `X.Y.Z[-pre]` means `=X.Y.Z[-pre]`, as an admin
/// pinning a version expects.
pub fn parse_version_req(text: &str) -> Result<semver::VersionReq, semver::Error> {
    let trimmed = text.trim();
    if semver::Version::parse(trimmed).is_ok() {
        return semver::VersionReq::parse(&format!("={trimmed}"));
    }
    semver::VersionReq::parse(trimmed)
}

/// Rollout settings of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// How many members may be changing at once: a count (`2`) or a percentage of the members
    /// (`25%`, rounded up). At least one member always may change.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrPercent,
    /// Seconds a rollout may go without progress before the group reports
    /// `Progressing=False` with reason `ProgressDeadlineExceeded` (1 to 2592000, default 600).
    #[serde(default = "default_progress_deadline_seconds")]
    pub progress_deadline_seconds: u32,
    /// Steps of each rollout (`[{clients: 1}, {pause: {duration: 1h}}, {percent: 10}, {pause:
    /// {}}, {percent: 100}]`): each admits a share of the members to the new versions, waits
    /// until they run them healthy, then goes on. Without steps every member is admitted at once
    /// (within `maxUnavailable`). After the last step the rest of the members follow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::rollout::RolloutStep>,
    /// How many members may fail to install a new version (a count, or a percentage of the
    /// members given it so far) before the rollout stops with `FailureThresholdExceeded`. Absent:
    /// the first failure stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<IntOrPercent>,
    /// When members may activate updates and removals; outside them they download and verify
    /// the new versions ahead. Absent: at any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<crate::rollout::MaintenanceWindow>,
    /// `immediate` (the default) or `onReboot`: staged at once, activated at the next boot.
    #[serde(
        default,
        skip_serializing_if = "crate::rollout::ActivationPolicy::is_immediate"
    )]
    pub activation: crate::rollout::ActivationPolicy,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            max_unavailable: default_max_unavailable(),
            progress_deadline_seconds: default_progress_deadline_seconds(),
            steps: Vec::new(),
            failure_threshold: None,
            maintenance_windows: Vec::new(),
            activation: Default::default(),
        }
    }
}

/// Default of `rollout.progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;

fn default_progress_deadline_seconds() -> u32 {
    DEFAULT_PROGRESS_DEADLINE_SECONDS
}

fn default_max_unavailable() -> IntOrPercent {
    IntOrPercent::Percent(25)
}

/// Agent settings of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    /// Seconds between heartbeats (5 to 86400).
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u32,
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            heartbeat_seconds: default_heartbeat_seconds(),
        }
    }
}

/// Default heartbeat interval in seconds.
pub const DEFAULT_HEARTBEAT_SECONDS: u32 = 30;

fn default_heartbeat_seconds() -> u32 {
    DEFAULT_HEARTBEAT_SECONDS
}

/// A count or a percentage, as `maxUnavailable: 2` or `maxUnavailable: 25%`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    /// An absolute count.
    Int(u32),
    /// A percentage, 0 to 100.
    Percent(u32),
}

impl IntOrPercent {
    /// The count this stands for out of `total`: percentages round up; never less than 1.
    pub fn resolve(self, total: usize) -> usize {
        let count = match self {
            IntOrPercent::Int(count) => count as usize,
            IntOrPercent::Percent(percent) => (total * percent as usize).div_ceil(100),
        };
        count.max(1)
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(count) => write!(f, "{count}"),
            IntOrPercent::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl std::str::FromStr for IntOrPercent {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is neither a count (`2`) nor a percentage (`25%`)");
        match text.strip_suffix('%') {
            Some(number) => {
                let percent: u32 = number.trim().parse().map_err(|_| bad())?;
                if percent > 100 {
                    return Err(format!("`{text}` is more than 100%"));
                }
                Ok(IntOrPercent::Percent(percent))
            }
            None => text.parse().map(IntOrPercent::Int).map_err(|_| bad()),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Int(count) => serializer.serialize_u32(*count),
            IntOrPercent::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a count (`2`) or a percentage (`25%`)")
        })? {
            Raw::Int(count) => Ok(IntOrPercent::Int(count)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A count or a percentage such as `25%`.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]{1,3}%$" }
            ]
        })
    }
}

/// Observed state of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientGroupStatus {
    /// The `generation` this status was computed for.
    #[serde(default)]
    pub observed_generation: u64,
    /// Members of the group.
    #[serde(default)]
    pub desired: u32,
    /// Members whose assignment includes the group's current packages.
    #[serde(default)]
    pub updated: u32,
    /// Members that report the group's current packages installed and healthy.
    #[serde(default)]
    pub ready: u32,
    /// Members that report a failure for one of the group's packages.
    #[serde(default)]
    pub failed: u32,
    /// Members changing one of the group's packages right now, or failed on one (each package's
    /// rollout counts them against `maxUnavailable`).
    #[serde(default)]
    pub unavailable: u32,
    /// Members whose agent missed three heartbeats.
    #[serde(default)]
    pub offline: u32,
    /// The version each requirement resolves to, and how its rollout stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<ResolvedPackage>,
    /// Members that are not ready yet, with what each is waiting for (the first few by name;
    /// `desired - ready` says how many there are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WaitingMember>,
    /// When the rollout last made progress (a new generation or resolved version, members
    /// assigned, updated or ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Timestamp>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Who paused the rollout through the API (`tcadm rollout pause`), and when; the pause holds
    /// until `tcadm rollout resume`, whatever the manifests say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<RolloutPause>,
    /// Where the current rollout stands: its step, progress and what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
}

/// A pause of a group's rollout asked for through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPause {
    /// Who paused it (a credential's name).
    pub by: String,
    /// When.
    pub time: Timestamp,
}

/// A member a rollout waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitingMember {
    /// The client.
    pub name: String,
    /// What it waits for: `offline`, `installing kiosk 1.5.0`, `kiosk 1.5.0 failed: ...`,
    /// `queued for kiosk 1.5.0` (waiting for room under `maxUnavailable`, or held back).
    pub reason: String,
}

/// What one requirement of a group resolves to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolvedPackage {
    /// Package name.
    pub name: String,
    /// The requirement.
    pub version: String,
    /// The highest ready release that satisfies it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_version: Option<String>,
    /// Members assigned the resolved version (by this group).
    #[serde(default)]
    pub updated: u32,
    /// Members changing this package or failed on it.
    #[serde(default)]
    pub unavailable: u32,
    /// Members whose install of this package failed.
    #[serde(default)]
    pub failed: u32,
    /// Releases of this package that failed on members: not handed to further members until the
    /// requirement changes or an admin retries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_versions: Vec<String>,
    /// Other groups that decide this package for some members: higher priority ones
    /// (`overriddenBy`) and ones of the same priority that pin another version (`conflictsWith`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridden_by: Vec<String>,
    /// See `overriddenBy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts_with: Vec<String>,
    /// Members for which another group decides this package.
    #[serde(default)]
    pub overridden: u32,
}

// ---------------------------------------------------------------------------------------------
// PackageRelease

/// One version of one zip package. Immutable once created: publish a new version instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageRelease {
    /// Always `thinfleet.io/v1`.
    pub api_version: String,
    /// Always `PackageRelease`.
    pub kind: String,
    /// Name, labels, annotations.
    pub metadata: ObjectMeta,
    /// What the admin published.
    pub spec: PackageReleaseSpec,
    /// What the controller observed; ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PackageReleaseStatus>,
}

/// The admin-written part of a `PackageRelease`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageReleaseSpec {
    /// Package name, a DNS label.
    pub package: String,
    /// Semantic version of this release.
    pub version: String,
    /// Where the zip comes from.
    pub artifact: Artifact,
    /// Commands the agent runs around installation.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
}

impl PackageReleaseSpec {
    /// The parsed version (valid after validation).
    pub fn semver(&self) -> Option<semver::Version> {
        semver::Version::parse(&self.version).ok()
    }
}

/// The zip of a release: a file next to the manifest, a URL, or a blob already uploaded (only
/// `sha256`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// Path of the zip, or of a directory packed into a reproducible zip, relative to the manifest
    /// file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http(s)://` URL of the zip, fetched once by the controller (needs `sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Lowercase hex sha256 of the zip. Required with `url` and alone; computed for `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The minisign signature of the zip: the whole text of the `.minisig` file written by
    /// `tcadm sign` or `minisign -S`. Agents configured with trusted keys install only releases
    /// whose signature verifies with one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

pub use crate::signature::{MAX_SIGNATURE_BYTES, check_signature};

/// Observed state of a release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageReleaseStatus {
    /// The artifact in the blob store, once imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
    /// `Ready` when the artifact is in the blob store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An imported artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactStatus {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// True for 64 lowercase hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Kinds and the object enum

/// The kinds of resource.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Kind {
    /// [`ClientGroup`].
    ClientGroup,
    /// [`PackageRelease`].
    PackageRelease,
    /// [`Client`].
    Client,
    /// [`Task`].
    Task,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::ClientGroup,
        Kind::PackageRelease,
        Kind::Client,
        Kind::Task,
    ];

    /// The `kind` string (`ClientGroup`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ClientGroup => "ClientGroup",
            Kind::PackageRelease => "PackageRelease",
            Kind::Client => "Client",
            Kind::Task => "Task",
        }
    }

    /// The REST resource name (`clientgroups`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ClientGroup => "clientgroups",
            Kind::PackageRelease => "packagereleases",
            Kind::Client => "clients",
            Kind::Task => "tasks",
        }
    }

    /// Parses a kind from its name, its plural, its lowercase singular or a short name
    /// (`cg`, `pr`, `client`), as kubectl does.
    pub fn parse(text: &str) -> Option<Kind> {
        match text.to_ascii_lowercase().as_str() {
            "clientgroup" | "clientgroups" | "cg" => Some(Kind::ClientGroup),
            "packagerelease" | "packagereleases" | "pr" => Some(Kind::PackageRelease),
            "client" | "clients" => Some(Kind::Client),
            "task" | "tasks" => Some(Kind::Task),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object an admin can apply: a `ClientGroup`, a `PackageRelease` or a `Task`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Object {
    /// A client group.
    ClientGroup(ClientGroup),
    /// A package release.
    PackageRelease(PackageRelease),
    /// A remote operation.
    Task(Task),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::ClientGroup(_) => Kind::ClientGroup,
            Object::PackageRelease(_) => Kind::PackageRelease,
            Object::Task(_) => Kind::Task,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::ClientGroup(group) => &group.metadata,
            Object::PackageRelease(release) => &release.metadata,
            Object::Task(task) => &task.metadata,
        }
    }

    /// The object's metadata, mutable.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::ClientGroup(group) => &mut group.metadata,
            Object::PackageRelease(release) => &mut release.metadata,
            Object::Task(task) => &mut task.metadata,
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.meta().name
    }

    /// `kind/name`, lowercase kind, as kubectl prints it (`clientgroup/front-desk`).
    pub fn reference(&self) -> String {
        format!(
            "{}/{}",
            self.kind().as_str().to_ascii_lowercase(),
            self.name()
        )
    }

    /// The spec as JSON, for comparisons that decide whether `generation` moves.
    pub fn spec_json(&self) -> serde_json::Value {
        let spec = match self {
            Object::ClientGroup(group) => serde_json::to_value(&group.spec),
            Object::PackageRelease(release) => serde_json::to_value(&release.spec),
            Object::Task(task) => serde_json::to_value(&task.spec),
        };
        spec.expect("specs serialize to JSON")
    }

    /// True when `spec`, `labels` and `annotations` (what an applier owns) equal `other`'s.
    pub fn same_content(&self, other: &Object) -> bool {
        self.kind() == other.kind()
            && self.spec_json() == other.spec_json()
            && self.meta().labels == other.meta().labels
            && self.meta().annotations == other.meta().annotations
    }

    /// Removes the status (written only by the controller).
    pub fn clear_status(&mut self) {
        match self {
            Object::ClientGroup(group) => group.status = None,
            Object::PackageRelease(release) => release.status = None,
            Object::Task(task) => task.status = None,
        }
    }

    /// Checks every field; errors carry field paths.
    pub fn validate(&self) -> Result<(), Errors> {
        let mut errors = Errors::default();
        let (api_version, kind) = match self {
            Object::ClientGroup(group) => (&group.api_version, &group.kind),
            Object::PackageRelease(release) => (&release.api_version, &release.kind),
            Object::Task(task) => (&task.api_version, &task.kind),
        };
        if api_version != API_VERSION {
            errors.push(
                "apiVersion",
                format!("must be `{API_VERSION}`, not `{api_version}`"),
            );
        }
        if kind != self.kind().as_str() {
            errors.push("kind", format!("must be `{}`", self.kind()));
        }
        validate_meta(self.meta(), &mut errors);
        match self {
            Object::ClientGroup(group) => validate_group_spec(&group.spec, &mut errors),
            Object::PackageRelease(release) => validate_release_spec(&release.spec, &mut errors),
            Object::Task(task) => crate::task::validate_task_spec(&task.spec, &mut errors),
        }
        errors.into_result()
    }
}

fn validate_meta(meta: &ObjectMeta, errors: &mut Errors) {
    validate_object_name(&meta.name, "metadata.name", errors);
    validate_labels(&meta.labels, "metadata.labels", errors);
    if let Some(version) = &meta.resource_version
        && version.parse::<u64>().is_err()
    {
        errors.push(
            "metadata.resourceVersion",
            format!("`{version}` is not a resource version"),
        );
    }
}

fn validate_group_spec(spec: &ClientGroupSpec, errors: &mut Errors) {
    spec.selector.validate("spec.selector", errors);
    let mut seen = BTreeSet::new();
    for (index, package) in spec.packages.iter().enumerate() {
        let path = format!("spec.packages[{index}]");
        validate_name(&package.name, &format!("{path}.name"), errors);
        if !seen.insert(&package.name) {
            errors.push(
                format!("{path}.name"),
                format!("package `{}` is listed twice in this group", package.name),
            );
        }
        if let Err(error) = package.version_req() {
            errors.push(
                format!("{path}.version"),
                format!("`{}` is not a semver requirement: {error}", package.version),
            );
        }
    }
    match spec.rollout.max_unavailable {
        IntOrPercent::Int(0) | IntOrPercent::Percent(0) => errors.push(
            "spec.rollout.maxUnavailable",
            "must allow at least one member to change (use `paused: true` to stop a rollout)",
        ),
        _ => {}
    }
    let deadline = spec.rollout.progress_deadline_seconds;
    if !(1..=2_592_000).contains(&deadline) {
        errors.push(
            "spec.rollout.progressDeadlineSeconds",
            format!("{deadline} is outside 1..=2592000 seconds"),
        );
    }
    crate::rollout::validate(&spec.rollout, errors);
    let heartbeat = spec.agent.heartbeat_seconds;
    if !(5..=86_400).contains(&heartbeat) {
        errors.push(
            "spec.agent.heartbeatSeconds",
            format!("{heartbeat} is outside 5..=86400 seconds"),
        );
    }
}

fn validate_hook(hook: &Option<Hook>, path: &str, errors: &mut Errors) {
    let Some(hook) = hook else { return };
    if hook.command.is_empty() || hook.command[0].trim().is_empty() {
        errors.push(format!("{path}.command"), "needs a program to run");
    }
    if hook.timeout_seconds == 0 || hook.timeout_seconds > MAX_HOOK_TIMEOUT_SECONDS {
        errors.push(
            format!("{path}.timeoutSeconds"),
            format!(
                "{} is outside 1..={MAX_HOOK_TIMEOUT_SECONDS} seconds",
                hook.timeout_seconds
            ),
        );
    }
}

fn validate_release_spec(spec: &PackageReleaseSpec, errors: &mut Errors) {
    validate_name(&spec.package, "spec.package", errors);
    if let Err(error) = semver::Version::parse(&spec.version) {
        errors.push(
            "spec.version",
            format!("`{}` is not a semantic version: {error}", spec.version),
        );
    }
    let artifact = &spec.artifact;
    if artifact.path.is_some() && artifact.url.is_some() {
        errors.push("spec.artifact", "give either `path` or `url`, not both");
    }
    if let Some(path) = &artifact.path
        && path.trim().is_empty()
    {
        errors.push("spec.artifact.path", "is empty");
    }
    if let Some(url) = &artifact.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(
                "spec.artifact.url",
                format!("`{url}` is not an http:// or https:// URL"),
            );
        }
        if artifact.sha256.is_none() {
            errors.push("spec.artifact.sha256", "is required with `url`");
        }
    }
    match &artifact.sha256 {
        Some(sha) if !is_sha256_hex(sha) => errors.push(
            "spec.artifact.sha256",
            format!("`{sha}` is not 64 lowercase hex digits"),
        ),
        None if artifact.path.is_none() && artifact.url.is_none() => errors.push(
            "spec.artifact",
            "needs `path`, `url` or the `sha256` of an uploaded blob",
        ),
        _ => {}
    }
    if let Some(signature) = &artifact.signature
        && let Err(reason) = check_signature(signature)
    {
        errors.push("spec.artifact.signature", reason);
    }
    validate_hook(&spec.hooks.pre_install, "spec.hooks.preInstall", errors);
    validate_hook(&spec.hooks.post_install, "spec.hooks.postInstall", errors);
    validate_hook(&spec.hooks.health_check, "spec.hooks.healthCheck", errors);
    validate_hook(&spec.hooks.pre_remove, "spec.hooks.preRemove", errors);
    if spec.package == AGENT_PACKAGE {
        for (hook, path) in [
            (&spec.hooks.pre_install, "spec.hooks.preInstall"),
            (&spec.hooks.post_install, "spec.hooks.postInstall"),
            (&spec.hooks.health_check, "spec.hooks.healthCheck"),
            (&spec.hooks.pre_remove, "spec.hooks.preRemove"),
        ] {
            if hook.is_some() {
                errors.push(
                    path,
                    format!(
                        "a {AGENT_PACKAGE} release runs no hooks: it is the agent itself, and its \
                         new binary checking in with the controller is its health check"
                    ),
                );
            }
        }
    }
}

/// The reserved package name of the agent's own releases: its zip holds the `tc-agent` binary,
/// which agents install beside the running one and restart into once it checked in.
pub const AGENT_PACKAGE: &str = "thinfleet-agent";

#[cfg(test)]
mod tests {
    use super::*;
    use tc_proto::Inventory;

    #[test]
    fn int_or_percent_resolves_rounding_up_and_at_least_one() {
        let cases = [
            ("25%", 10, 3),
            ("25%", 4, 1),
            ("25%", 0, 1),
            ("100%", 7, 7),
            ("1%", 1000, 10),
            ("33%", 10, 4),
            ("2", 10, 2),
            ("0", 10, 1),
            ("5", 3, 5),
        ];
        for (text, total, expected) in cases {
            let value: IntOrPercent = text.parse().unwrap();
            assert_eq!(value.resolve(total), expected, "{text} of {total}");
        }
        assert!("101%".parse::<IntOrPercent>().is_err());
        assert!("-1".parse::<IntOrPercent>().is_err());
        assert!("half".parse::<IntOrPercent>().is_err());
    }

    #[test]
    fn bare_version_is_exact_and_operators_are_semver() {
        let exact = parse_version_req("1.4.2").unwrap();
        assert!(exact.matches(&"1.4.2".parse().unwrap()));
        assert!(!exact.matches(&"1.4.3".parse().unwrap()));
        let caret = parse_version_req("^1.4").unwrap();
        assert!(caret.matches(&"1.9.0".parse().unwrap()));
        assert!(!caret.matches(&"2.0.0".parse().unwrap()));
        assert!(parse_version_req("not a version").is_err());
    }

    #[test]
    fn sanitized_label_values_are_valid() {
        assert_eq!(sanitize_label_value("Debian GNU/Linux"), "Debian_GNU_Linux");
        assert_eq!(sanitize_label_value(" x86_64 "), "x86_64");
        assert_eq!(sanitize_label_value("(!)"), "");
    }

    #[test]
    fn client_labels_merge_with_admin_winning() {
        let mut client = Client::new(
            "kiosk-1",
            ClientSpec {
                machine_id: "m".into(),
                agent_labels: [
                    ("site".into(), "berlin".into()),
                    ("rack".into(), "1".into()),
                ]
                .into(),
                admin_labels: [("site".into(), "paris".into())].into(),
                ..Default::default()
            },
        );
        client.status.inventory = Some(Inventory {
            hostname: "kiosk-1".into(),
            arch: "x86_64".into(),
            ..Default::default()
        });
        client.refresh_labels();
        let labels = &client.metadata.labels;
        assert_eq!(labels["site"], "paris");
        assert_eq!(labels["rack"], "1");
        assert_eq!(labels["thinfleet.io/arch"], "x86_64");
        assert_eq!(labels["thinfleet.io/hostname"], "kiosk-1");
        assert!(!labels.contains_key("thinfleet.io/os"));
    }
}
