//! Progressive delivery in the controller: each group's rollouts (kept as the setting
//! `rollouts/{group}`, one JSON record of [`GroupRollouts`]), the steps a reconcile pass applies,
//! the activation (maintenance windows, onReboot, activate-now) its members are served, and the
//! admin routes: undo, history, activate-now, and the resume of a pause step.
//!
//! The records are read and written under [`Rollouts::records`] (an async lock held by a pass
//! from its start to its end and by each route), so that a route's change is never overwritten
//! by a pass that read the record before it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tc_api::rollout::{RolloutStatus, Step};
use tc_api::{
    ClientGroup, ClientGroupStatus, ConditionStatus, Event, EventType, IntOrPercent, Kind,
    ObjectRef, Timestamp,
};
use tc_proto::activation::{Activation, MAX_WINDOWS, WINDOW_HORIZON_DAYS};
use tc_reconcile::ReleaseCatalog;
use tc_reconcile::progressive::{
    GroupRollouts, PackageProgress, Wait, advance, parse_steps, step_cap, window_intervals,
};
use tc_store::Store;

pub mod routes;

/// Settings key prefix of the groups' rollout records.
pub const ROLLOUTS_SETTING: &str = "rollouts/";

/// The rollout records of every group, and the activations last served.
#[derive(Default)]
pub struct Rollouts {
    /// Loaded at the first pass; `None` until then.
    pub records: tokio::sync::Mutex<Option<BTreeMap<String, GroupRollouts>>>,
    /// The activation each group's members were last served (kept so that an unchanged one is
    /// the same `Arc` and costs no comparison per client).
    activations: Mutex<BTreeMap<String, Arc<Activation>>>,
}

/// Reads every record. Blocking.
pub fn load(store: &dyn Store) -> tc_store::Result<BTreeMap<String, GroupRollouts>> {
    let mut records = BTreeMap::new();
    for (key, value) in store.list_settings(ROLLOUTS_SETTING)? {
        let record: GroupRollouts =
            serde_json::from_str(&value).map_err(|error| tc_store::StoreError::Corrupt {
                key: key.clone(),
                message: error.to_string(),
            })?;
        records.insert(key[ROLLOUTS_SETTING.len()..].to_string(), record);
    }
    Ok(records)
}

/// Writes (or with `None`, deletes) a group's record. Blocking.
pub fn save(
    store: &dyn Store,
    group: &str,
    record: Option<&GroupRollouts>,
) -> tc_store::Result<()> {
    let value = record.map(|r| serde_json::to_string(r).expect("rollout records serialize"));
    store.put_setting(&format!("{ROLLOUTS_SETTING}{group}"), value.as_deref())
}

/// What a pass counted of one group for its rollout.
#[derive(Clone, Debug, Default)]
pub struct GroupCounts {
    /// Per package of the group's spec.
    pub progress: Vec<PackageProgress>,
    /// Members with a staged change.
    pub staged: u32,
    /// The earliest activation time they reported.
    pub activates_at: Option<Timestamp>,
}

/// What a pass applies of one group's progressive delivery.
#[derive(Clone, Debug, Default)]
pub struct GroupPlan {
    /// Its steps, parsed.
    pub steps: Vec<Step>,
    /// The current step of its rollout.
    pub step: usize,
    /// The versions the rollout brings its packages to.
    pub targets: BTreeMap<String, String>,
    /// Its failure threshold.
    pub failure_threshold: Option<IntOrPercent>,
    /// The activation its members are served (None: at once).
    pub activation: Option<Arc<Activation>>,
    /// Its priority (the member's activation comes from its highest-priority group that has one).
    pub priority: i32,
}

impl GroupPlan {
    /// How many members the current step admits, out of `members`.
    pub fn cap(&self, members: usize) -> Option<usize> {
        step_cap(&self.steps, self.step, members)
    }
}

/// Before a pass: resolves each group's rollout versions (an undo's pin overlays the group's
/// requirements for the pass), starts new rollouts, and works out the activations. Returns a plan
/// per group (in `groups` order) and whether a record changed.
pub fn prepare(
    rollouts: &Rollouts,
    records: &mut BTreeMap<String, GroupRollouts>,
    groups: &mut [ClientGroup],
    catalog: &ReleaseCatalog,
    now: Timestamp,
    events: &mut Vec<Event>,
) -> (Vec<GroupPlan>, Vec<String>) {
    let mut changed = Vec::new();
    let mut plans = Vec::with_capacity(groups.len());
    let mut served = rollouts.activations.lock().expect("activations lock");
    for group in groups.iter_mut() {
        let name = group.metadata.name.clone();
        let generation = group.metadata.generation.unwrap_or(0);
        let resolved: BTreeMap<String, String> = group
            .spec
            .packages
            .iter()
            .filter_map(|p| {
                let req = p.version_req().ok()?;
                let info = catalog.resolve(&p.name, &req)?;
                Some((p.name.clone(), info.version.to_string()))
            })
            .collect();
        let record = records.entry(name.clone()).or_default();
        let had_undo = record.undo.is_some();
        let targets = record.target(resolved, generation);
        if let Some(undo) = &record.undo {
            // The pin holds for this pass: the group asks for exactly the undone-to versions.
            for package in &mut group.spec.packages {
                if let Some(version) = undo.versions.get(&package.name) {
                    package.version = format!("={version}");
                }
            }
        }
        let mut dirty = had_undo != record.undo.is_some();
        if record.begin(&targets, generation, group.metadata.managed_by.clone(), now) {
            dirty = true;
            let current = record.current.as_ref().expect("just begun");
            if current.revision > 1 || !targets.is_empty() {
                events.push(Event::new(
                    now,
                    ObjectRef::new(Kind::ClientGroup, &name),
                    EventType::Normal,
                    "RolloutStarted",
                    format!(
                        "rollout {} started: {}{}",
                        current.revision,
                        versions_text(&targets),
                        if group.spec.rollout.steps.is_empty() {
                            String::new()
                        } else {
                            format!(" in {} steps", group.spec.rollout.steps.len())
                        }
                    ),
                ));
            }
        }
        if dirty {
            changed.push(name.clone());
        }
        let current = record
            .current
            .as_ref()
            .expect("a record has a rollout once begun");
        let rollout = &group.spec.rollout;
        let activate_now = current.activate_now.is_some();
        let activation = if !rollout.maintenance_windows.is_empty() {
            Some(Activation {
                windows: window_intervals(
                    &rollout.maintenance_windows,
                    now,
                    Duration::from_secs(WINDOW_HORIZON_DAYS * 24 * 3600),
                    MAX_WINDOWS,
                ),
                windowed: true,
                on_reboot: false,
                now: activate_now,
            })
        } else if rollout.activation == tc_api::rollout::ActivationPolicy::OnReboot {
            Some(Activation {
                on_reboot: true,
                now: activate_now,
                ..Default::default()
            })
        } else {
            None
        };
        let activation = activation.map(|activation| match served.get(&name) {
            Some(last) if **last == activation => last.clone(),
            _ => {
                let activation = Arc::new(activation);
                served.insert(name.clone(), activation.clone());
                activation
            }
        });
        plans.push(GroupPlan {
            steps: steps_of(group, current),
            step: current.step,
            targets: current.versions.clone(),
            failure_threshold: rollout.failure_threshold,
            activation,
            priority: group.spec.priority,
        });
    }
    let names: std::collections::BTreeSet<&str> =
        groups.iter().map(|g| g.metadata.name.as_str()).collect();
    served.retain(|name, _| names.contains(name.as_str()));
    (plans, changed)
}

/// The steps of a group's rollout. A group's first rollout has none (as Argo Rollouts skips
/// the steps of an initial deployment): it installs what the group asks for on members that
/// run nothing of it yet, where there is nothing to compare a canary with.
pub(crate) fn steps_of(
    group: &ClientGroup,
    state: &tc_reconcile::progressive::RolloutState,
) -> Vec<Step> {
    if state.revision <= 1 {
        return Vec::new();
    }
    parse_steps(&group.spec.rollout.steps)
}

/// The activation of a client that is a member of `member_of`: that of its highest-priority
/// group that has one (ties: the first by name, as groups are listed).
pub fn activation_of(plans: &[GroupPlan], member_of: &[usize]) -> Option<Arc<Activation>> {
    member_of
        .iter()
        .filter_map(|&g| {
            let plan = plans.get(g)?;
            plan.activation.as_ref().map(|a| (plan.priority, a))
        })
        .fold(
            None::<(i32, &Arc<Activation>)>,
            |best, (priority, activation)| match best {
                Some((p, _)) if p >= priority => best,
                _ => Some((priority, activation)),
            },
        )
        .map(|(_, activation)| activation.clone())
}

/// After a pass: moves each group's rollout through its steps with the pass's counts, fills
/// `status.rollout` and the `Progressing` condition of steps and pauses. Returns the groups whose
/// record changed, the events, whether a step moved (another pass applies its share at once)
/// and when the next timed pause ends.
pub fn finish(
    records: &mut BTreeMap<String, GroupRollouts>,
    groups: &[ClientGroup],
    counts: &[GroupCounts],
    statuses: &mut [ClientGroupStatus],
    now: Timestamp,
) -> (Vec<String>, Vec<Event>, bool, Option<Timestamp>) {
    let mut changed = Vec::new();
    let mut events = Vec::new();
    let mut moved = false;
    let mut wake: Option<Timestamp> = None;
    for ((group, counts), status) in groups.iter().zip(counts).zip(statuses.iter_mut()) {
        let progress = &counts.progress;
        let name = &group.metadata.name;
        let Some(record) = records.get_mut(name) else {
            continue;
        };
        let Some(state) = record.current.as_mut() else {
            continue;
        };
        let before = state.clone();
        let steps = steps_of(group, state);
        // Only the packages whose rollout version this pass counted (those that resolve).
        let counted: Vec<PackageProgress> = group
            .spec
            .packages
            .iter()
            .zip(progress)
            .filter(|(p, _)| state.versions.contains_key(&p.name))
            .map(|(_, progress)| *progress)
            .collect();
        let past_threshold =
            status.failed > 0 && tc_reconcile::status::past_threshold(group, status);
        let held = if past_threshold {
            Some(Wait::FailureThreshold)
        } else if group.spec.paused {
            Some(Wait::Paused)
        } else {
            None
        };
        let members = status.desired as usize;
        let wait = advance(&steps, state, members, &counted, held, now);
        if state.step != before.step {
            moved = true;
            status.last_progress_time = Some(now);
            events.push(Event::new(
                now,
                ObjectRef::new(Kind::ClientGroup, name),
                EventType::Normal,
                "StepReached",
                match steps.get(state.step) {
                    Some(step) => format!(
                        "rollout {}: step {} of {} ({})",
                        state.revision,
                        state.step + 1,
                        steps.len(),
                        step_text(step)
                    ),
                    None => format!(
                        "rollout {}: past its last step; the remaining members follow",
                        state.revision
                    ),
                },
            ));
        }
        if let Wait::PauseUntil { until, .. } = wait {
            wake = Some(wake.map_or(until, |w| w.min(until)));
        }
        if *state != before {
            changed.push(name.clone());
        }
        let message = wait_text(&wait, &steps, name);
        status.rollout = Some(RolloutStatus {
            revision: state.revision,
            versions: state.versions.clone(),
            started_at: state.started_at,
            step: (!steps.is_empty()).then(|| state.step.min(steps.len()) as u32),
            steps: steps.len() as u32,
            step_started_at: (!steps.is_empty()).then_some(state.step_started_at),
            admitted: step_cap(&steps, state.step, members).unwrap_or(members) as u32,
            updated: counted.iter().map(|p| p.converged).min().unwrap_or(members) as u32,
            failed: counted.iter().map(|p| p.failed).max().unwrap_or(0) as u32,
            staged: counts.staged,
            activates_at: counts.activates_at,
            activate_now: state.activate_now.clone(),
            undone_to: record.undo.as_ref().map(|u| u.versions.clone()),
            paused_until: match wait {
                Wait::PauseUntil { until, .. } => Some(until),
                _ => None,
            },
            message: message.clone(),
        });
        let paused_step = matches!(
            wait,
            Wait::PauseUntil { .. } | Wait::PauseUntilResumed { .. }
        );
        if paused_step || matches!(wait, Wait::Share { .. }) {
            let condition = tc_api::Condition {
                type_: "Progressing".into(),
                status: if paused_step {
                    ConditionStatus::False
                } else {
                    ConditionStatus::True
                },
                reason: if paused_step {
                    "StepPaused"
                } else {
                    "RollingOut"
                }
                .into(),
                message,
                last_transition_time: now,
                observed_generation: group.metadata.generation,
            };
            // A step that waits for its members is progress held within the deadline's reach;
            // a pause is no lack of progress.
            let keep = tc_api::meta::find_condition(&status.conditions, "Progressing")
                .is_some_and(|c| c.reason == "ProgressDeadlineExceeded" && !paused_step);
            if !keep {
                tc_api::meta::set_condition(&mut status.conditions, condition);
            }
        }
    }
    (changed, events, moved, wake)
}

fn versions_text(versions: &BTreeMap<String, String>) -> String {
    if versions.is_empty() {
        return "no packages".into();
    }
    versions
        .iter()
        .map(|(package, version)| format!("{package} {version}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn step_text(step: &Step) -> String {
    match step {
        Step::Clients(n) => format!("clients: {n}"),
        Step::Percent(p) => format!("percent: {p}"),
        Step::Pause(Some(d)) => format!("pause {}", humantime::format_duration(*d)),
        Step::Pause(None) => "pause until resumed".into(),
    }
}

/// What a rollout waits for, in words.
fn wait_text(wait: &Wait, steps: &[Step], group: &str) -> String {
    let of = |step: usize| format!("step {} of {}", step + 1, steps.len());
    match wait {
        Wait::Complete => "complete: every member runs the rollout's versions".into(),
        Wait::FailureThreshold => format!(
            "stopped at the failure threshold: fix the release, `tcadm rollout retry clientgroup \
             {group}` or `tcadm rollout undo clientgroup {group}`"
        ),
        Wait::Paused => "paused: no new assignments".into(),
        Wait::Share {
            step,
            admitted,
            done,
            needed,
        } => format!(
            "{}: {done} of {needed} members updated (the step admits {admitted})",
            of(*step)
        ),
        Wait::PauseUntil { step, until } => format!("{}: paused until {until}", of(*step)),
        Wait::PauseUntilResumed { step } => format!(
            "{}: paused until `tcadm rollout resume clientgroup {group}`",
            of(*step)
        ),
        Wait::Rest if steps.is_empty() => {
            "rolling out: members follow within maxUnavailable".into()
        }
        Wait::Rest => "past the last step: the remaining members follow".into(),
    }
}
