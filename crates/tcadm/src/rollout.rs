//! Whether a group's rollout is done, still going, or failed, judged from its status.

use tc_api::meta::find_condition;
use tc_api::{ClientGroup, ConditionStatus, Kind, SourceStatus};

/// The `Degraded` reason that means members failed to install the group's packages.
pub const MEMBERS_FAILED: &str = "MembersFailed";

/// Where a group's rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutState {
    /// Every member runs the current packages and is ready.
    Complete,
    /// Still going; the text says what is awaited.
    Progressing(String),
    /// Members failed past the failure threshold; the text is the `Degraded` message.
    Failed(String),
    /// No progress within `progressDeadlineSeconds`; the text is the `Progressing` message
    /// (whom the rollout waits for).
    Stalled(String),
}

/// The `Progressing` reason of a rollout stopped because more members failed than its
/// `failureThreshold` allows (without one: any member).
pub const FAILURE_THRESHOLD_EXCEEDED: &str = "FailureThresholdExceeded";

/// The `Progressing` reason of a rollout past its deadline.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// A release that was just published: a group that requires its package with a matching version
/// is not rolled out until it resolves to this version or a later one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedRelease {
    /// Package name.
    pub package: String,
    /// The release's version.
    pub version: semver::Version,
}

/// The member counts of a group, as `2 of 5 updated, 1 ready, 0 failed`, with the offline
/// members and whom the rollout waits for when there are any:
/// `..., 1 offline; waiting for kiosk-3 (offline; installing kiosk 1.5.0)`.
pub fn progress_text(group: &ClientGroup) -> String {
    let status = group.status.clone().unwrap_or_default();
    let mut text = format!(
        "{} of {} updated, {} ready, {} failed",
        status.updated, status.desired, status.ready, status.failed
    );
    if status.offline > 0 {
        text.push_str(&format!(", {} offline", status.offline));
    }
    if !status.waiting.is_empty() {
        let names: Vec<String> = status
            .waiting
            .iter()
            .take(3)
            .map(|w| format!("{} ({})", w.name, w.reason))
            .collect();
        let total = status.desired.saturating_sub(status.ready) as usize;
        text.push_str(&format!("; waiting for {}", names.join(", ")));
        if total > names.len() {
            text.push_str(&format!(" and {} more", total - names.len()));
        }
    }
    text
}

/// Judges a group: failed when `Progressing` has reason `FailureThresholdExceeded`, or (for a
/// group without a `failureThreshold`) `Degraded` is true with reason `MembersFailed`; complete when the
/// status is for the current generation, resolves every expected release, and
/// `updated == ready == desired`; progressing otherwise.
pub fn rollout_state(group: &ClientGroup, expected: &[ExpectedRelease]) -> RolloutState {
    let Some(status) = &group.status else {
        return RolloutState::Progressing("waiting for the controller to report status".into());
    };
    let members_failed = find_condition(&status.conditions, "Degraded").filter(|degraded| {
        degraded.status == ConditionStatus::True && degraded.reason == MEMBERS_FAILED
    });
    let threshold_exceeded = find_condition(&status.conditions, "Progressing")
        .filter(|progressing| progressing.reason == FAILURE_THRESHOLD_EXCEEDED);
    // Without a failureThreshold the first failure stops the rollout; with one, failures below
    // it do not (the rollout goes on), so only the controller's verdict counts.
    let failed = threshold_exceeded.is_some()
        || (members_failed.is_some() && group.spec.rollout.failure_threshold.is_none());
    if failed {
        let message = match (members_failed, threshold_exceeded) {
            (Some(degraded), _) if !degraded.message.is_empty() => degraded.message.clone(),
            (_, Some(progressing)) if !progressing.message.is_empty() => {
                progressing.message.clone()
            }
            _ => format!("{} member(s) failed", status.failed),
        };
        return RolloutState::Failed(message);
    }
    let generation = group.metadata.generation.unwrap_or(0);
    if status.observed_generation >= generation
        && let Some(progressing) = find_condition(&status.conditions, "Progressing")
        && progressing.reason == PROGRESS_DEADLINE_EXCEEDED
    {
        return RolloutState::Stalled(progressing.message.clone());
    }
    if status.observed_generation < generation {
        return RolloutState::Progressing(format!(
            "waiting for the controller to observe generation {generation}"
        ));
    }
    for release in expected {
        let Some(requirement) = group
            .spec
            .packages
            .iter()
            .find(|p| p.name == release.package)
        else {
            continue;
        };
        let matches = requirement
            .version_req()
            .is_ok_and(|req| req.matches(&release.version));
        if !matches {
            continue;
        }
        let resolved = status
            .packages
            .iter()
            .find(|p| p.name == release.package)
            .and_then(|p| p.resolved_version.as_deref())
            .and_then(|v| semver::Version::parse(v).ok());
        if resolved.is_none_or(|v| v < release.version) {
            return RolloutState::Progressing(format!(
                "waiting for {}@{} to be resolved",
                release.package, release.version
            ));
        }
    }
    if status.updated == status.desired && status.ready == status.desired {
        RolloutState::Complete
    } else {
        RolloutState::Progressing(progress_text(group))
    }
}

/// Whether the group's rollout must wait for a watched directory first: a source that defines the
/// group has changes it has not applied yet, so the group's status may still be for the
/// directory's previous content (a file changed a moment ago). The text says what is awaited.
pub fn awaiting_source_sync(group: &str, sources: &[SourceStatus]) -> Option<String> {
    sources
        .iter()
        .find(|source| {
            source.sync_pending
                && source
                    .objects
                    .iter()
                    .any(|o| o.kind == Kind::ClientGroup && o.name == group)
        })
        .map(|source| {
            format!(
                "waiting for the watched directory `{}` to apply its changes",
                source.name
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_api::{
        ClientGroupSpec, ClientGroupStatus, Condition, ObjectMeta, PackageRequirement,
        ResolvedPackage, Timestamp,
    };

    fn group(generation: u64, status: Option<ClientGroupStatus>) -> ClientGroup {
        ClientGroup {
            api_version: "thinfleet.io/v1".into(),
            kind: "ClientGroup".into(),
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::named("front-desk")
            },
            spec: ClientGroupSpec {
                packages: vec![PackageRequirement {
                    name: "kiosk".into(),
                    version: "^1.4".into(),
                }],
                ..Default::default()
            },
            status,
        }
    }

    fn status(observed: u64, desired: u32, updated: u32, ready: u32) -> ClientGroupStatus {
        ClientGroupStatus {
            observed_generation: observed,
            desired,
            updated,
            ready,
            packages: vec![ResolvedPackage {
                name: "kiosk".into(),
                version: "^1.4".into(),
                resolved_version: Some("1.4.2".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn degraded(reason: &str) -> Condition {
        Condition {
            type_: "Degraded".into(),
            status: ConditionStatus::True,
            reason: reason.into(),
            message: "kiosk-3 failed to install kiosk 1.4.2".into(),
            last_transition_time: Timestamp::EPOCH,
            observed_generation: Some(2),
        }
    }

    #[test]
    fn complete_needs_the_current_generation_and_every_member_updated_and_ready() {
        assert_eq!(
            rollout_state(&group(2, Some(status(2, 5, 5, 5))), &[]),
            RolloutState::Complete
        );
        assert_eq!(
            rollout_state(&group(2, Some(status(2, 0, 0, 0))), &[]),
            RolloutState::Complete
        );
        assert!(matches!(
            rollout_state(&group(2, Some(status(1, 5, 5, 5))), &[]),
            RolloutState::Progressing(_)
        ));
        assert_eq!(
            rollout_state(&group(2, Some(status(2, 5, 5, 3))), &[]),
            RolloutState::Progressing("5 of 5 updated, 3 ready, 0 failed".into())
        );
        assert!(matches!(
            rollout_state(&group(2, None), &[]),
            RolloutState::Progressing(_)
        ));
    }

    #[test]
    fn members_failed_is_a_failure_and_other_degraded_reasons_are_not() {
        let mut failed = status(2, 5, 5, 4);
        failed.conditions.push(degraded(MEMBERS_FAILED));
        assert_eq!(
            rollout_state(&group(2, Some(failed)), &[]),
            RolloutState::Failed("kiosk-3 failed to install kiosk 1.4.2".into())
        );
        let mut conflict = status(2, 5, 5, 5);
        conflict.conditions.push(degraded("Conflict"));
        assert_eq!(
            rollout_state(&group(2, Some(conflict)), &[]),
            RolloutState::Complete
        );
    }

    #[test]
    fn with_a_failure_threshold_only_the_threshold_fails_the_rollout() {
        let progressing = |reason: &str, message: &str| Condition {
            type_: "Progressing".into(),
            status: ConditionStatus::False,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Timestamp::EPOCH,
            observed_generation: Some(2),
        };
        let mut below = status(2, 5, 4, 3);
        below.failed = 1;
        below.conditions.push(degraded(MEMBERS_FAILED));
        below
            .conditions
            .push(progressing("RollingOut", "4 of 5 members updated"));
        let mut tolerant = group(2, Some(below.clone()));
        tolerant.spec.rollout.failure_threshold = Some(tc_api::IntOrPercent::Int(2));
        assert!(matches!(
            rollout_state(&tolerant, &[]),
            RolloutState::Progressing(_)
        ));
        let mut past = below;
        past.conditions[1] = progressing(
            FAILURE_THRESHOLD_EXCEEDED,
            "3 of 5 members failed to install kiosk 1.4.2; ...",
        );
        tolerant.status = Some(past.clone());
        assert_eq!(
            rollout_state(&tolerant, &[]),
            RolloutState::Failed("kiosk-3 failed to install kiosk 1.4.2".into())
        );
        // The threshold's own message when the Degraded condition says nothing.
        past.conditions.remove(0);
        tolerant.status = Some(past);
        assert_eq!(
            rollout_state(&tolerant, &[]),
            RolloutState::Failed("3 of 5 members failed to install kiosk 1.4.2; ...".into())
        );
    }

    #[test]
    fn a_rollout_past_its_progress_deadline_is_stalled_with_the_reason() {
        let mut stalled = status(2, 5, 5, 4);
        stalled.conditions.push(Condition {
            type_: "Progressing".into(),
            status: ConditionStatus::False,
            reason: PROGRESS_DEADLINE_EXCEEDED.into(),
            message: "no progress since ...; waiting for kiosk-3 (offline)".into(),
            last_transition_time: Timestamp::EPOCH,
            observed_generation: Some(2),
        });
        assert_eq!(
            rollout_state(&group(2, Some(stalled.clone())), &[]),
            RolloutState::Stalled("no progress since ...; waiting for kiosk-3 (offline)".into())
        );
        // A new generation is a new rollout: the old deadline does not count.
        assert!(matches!(
            rollout_state(&group(3, Some(stalled)), &[]),
            RolloutState::Progressing(_)
        ));
    }

    #[test]
    fn progress_names_offline_members_and_whom_it_waits_for() {
        let mut waiting = status(2, 5, 4, 3);
        waiting.offline = 1;
        waiting.waiting = vec![
            tc_api::WaitingMember {
                name: "kiosk-3".into(),
                reason: "offline; installing kiosk 1.4.2".into(),
            },
            tc_api::WaitingMember {
                name: "kiosk-4".into(),
                reason: "queued for kiosk 1.4.2".into(),
            },
        ];
        assert_eq!(
            progress_text(&group(2, Some(waiting))),
            "4 of 5 updated, 3 ready, 0 failed, 1 offline; waiting for kiosk-3 (offline; \
             installing kiosk 1.4.2), kiosk-4 (queued for kiosk 1.4.2)"
        );
    }

    #[test]
    fn a_new_matching_release_must_be_resolved_first() {
        let expected = |version: &str| ExpectedRelease {
            package: "kiosk".into(),
            version: version.parse().unwrap(),
        };
        let done = group(2, Some(status(2, 5, 5, 5)));
        assert!(matches!(
            rollout_state(&done, &[expected("1.4.3")]),
            RolloutState::Progressing(_)
        ));
        assert_eq!(
            rollout_state(&done, &[expected("1.4.2")]),
            RolloutState::Complete
        );
        assert_eq!(
            rollout_state(&done, &[expected("1.4.1")]),
            RolloutState::Complete
        );
        assert_eq!(
            rollout_state(&done, &[expected("2.0.0")]),
            RolloutState::Complete
        );
    }

    #[test]
    fn a_pending_sync_of_the_groups_directory_is_awaited() {
        let source = |pending: bool, group: &str| SourceStatus {
            name: "manifests".into(),
            sync_pending: pending,
            objects: vec![tc_api::SourceObject {
                kind: Kind::ClientGroup,
                name: group.into(),
                file: "groups.yaml".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            awaiting_source_sync("front-desk", &[source(true, "front-desk")]).as_deref(),
            Some("waiting for the watched directory `manifests` to apply its changes")
        );
        assert_eq!(
            awaiting_source_sync("front-desk", &[source(false, "front-desk")]),
            None
        );
        assert_eq!(
            awaiting_source_sync("front-desk", &[source(true, "lab")]),
            None
        );
        assert_eq!(awaiting_source_sync("front-desk", &[]), None);
    }
}
