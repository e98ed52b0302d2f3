//! thinfleet resource types, validation, label selectors and manifest decoding.
//!
//! Pure: no I/O, no async runtime, no HTTP, no database. Everything here is tested as plain
//! functions.

pub mod audit;
pub mod client;
pub mod credential;
pub mod decode;
pub mod enrollment;
pub mod event;
pub mod history;
pub mod meta;
pub mod resources;
pub mod rollout;
pub mod schema;
pub mod selector;
pub mod signature;
pub mod source;
pub mod task;
pub mod validate;
pub mod version_order;

pub use audit::{AuditEntry, AuditObject, AuditOutcome};
pub use credential::{Credential, CredentialCreated, CredentialRequest, Role};
pub use decode::{
    DecodeError, DecodeErrors, Limits, MAX_ERRORS, Position, SourcedObject, decode_objects,
};
pub use enrollment::{
    BlockReason, BlockedMachine, BootstrapToken, BootstrapTokenCreated, BootstrapTokenRequest,
    JoinMaterial,
};
pub use event::{Event, EventType, ObjectRef};
pub use history::{ClientHistory, HistorySample};
pub use meta::{API_VERSION, Cause, Condition, ConditionStatus, ObjectMeta, Timestamp};
pub use resources::{
    AgentSpec, Artifact, ArtifactStatus, AssignedPackage, Client, ClientGroup, ClientGroupSpec,
    ClientGroupStatus, ClientPhase, ClientSpec, ClientStatus, IntOrPercent, Kind, Object,
    PackageDecision, PackageRelease, PackageReleaseSpec, PackageReleaseStatus, PackageRequirement,
    PendingEnrollment, ResolvedPackage, RolloutPause, RolloutSpec, Task, WaitingMember,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
pub use source::{SkippedObject, SourceObject, SourcePendingPrune, SourceStatus};
pub use tc_proto::{Hook, Hooks, Inventory, PackageReport, PackageState, PendingReason};
