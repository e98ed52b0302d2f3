//! The reconcile loop: level-based and idempotent. Whatever woke it (an apply, a client's new
//! labels or package states, the periodic resync), a pass recomputes what every client should run
//! from the current objects and reports, assigns what the rollout budget allows, and updates group
//! status. It never needs to know why it ran.
//!
//! A pass is sized for a million clients. It walks the fleet once on a blocking thread, taking
//! each client's lock briefly and copying nothing of clients that need no change: group
//! membership is matched on the compact labels in place, what a client should run is computed
//! once per distinct (groups, assignment) and shared, group status is tallied as it goes, and
//! only clients that want another assignment go through the rollout plan. New assignments are
//! persisted as status records (no client object is rewritten) before agents are served them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tc_api::{
    AssignedPackage, ClientGroup, ClientPhase, Event, EventType, Kind, Object, ObjectRef,
    PackageRelease, PackageReport, PackageState, Timestamp,
};
use tc_proto::DesiredPackage;
use tc_reconcile::{
    Assignment as PlannedAssignment, ClientDesire, ClientRollout, GroupBudget, GroupStanding,
    GroupTally, MemberView, PackageHealth, ReleaseCatalog, desired_for_client, package_health,
    plan_rollout_from,
};
use tc_store::{ClientStatusEntry, Store, Write};

use crate::Controller;
use crate::fleet::{Admission, ClientRuntime, ClientSlot, LiveStatus, Served};

/// Runs passes when woken, and at least every `resync` interval, until shutdown.
pub async fn run(controller: Arc<Controller>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let started = Instant::now();
        let mut resync = controller.config.resync_interval;
        match pass(&controller).await {
            Err(error) => tracing::error!(%error, "reconcile pass failed"),
            // A timed pause step ends, or a maintenance window opens or closes.
            Ok(Some(at)) => {
                resync = resync.min(at.since(Timestamp::now()) + Duration::from_millis(5));
            }
            Ok(None) => {}
        }
        let took = started.elapsed();
        let debounce = controller.config.reconcile_debounce;
        tokio::select! {
            _ = controller.reconcile_wake.notified() => {
                // Let a burst of triggers coalesce.
                tokio::time::sleep(debounce).await;
            }
            _ = controller.clients_changed.notified() => {
                // Reports of many agents coalesce for as long as a pass takes; a change by an
                // admin meanwhile is not held back by that.
                tokio::select! {
                    _ = tokio::time::sleep(debounce.max(took.min(MAX_REPORT_SPACING))) => {}
                    _ = controller.reconcile_wake.notified() => {
                        tokio::time::sleep(debounce).await;
                    }
                }
            }
            _ = tokio::time::sleep(resync) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Longest spacing of passes woken by agents' reports.
const MAX_REPORT_SPACING: Duration = Duration::from_secs(5);

/// Every client group.
pub(crate) fn list_groups(store: &dyn Store) -> tc_store::Result<Vec<ClientGroup>> {
    let objects = store.list(Kind::ClientGroup)?;
    Ok(objects
        .into_iter()
        .filter_map(|object| match object {
            Object::ClientGroup(group) => Some(group),
            _ => None,
        })
        .collect())
}

/// Every package release.
fn list_releases(store: &dyn Store) -> tc_store::Result<Vec<PackageRelease>> {
    let objects = store.list(Kind::PackageRelease)?;
    Ok(objects
        .into_iter()
        .filter_map(|object| match object {
            Object::PackageRelease(release) => Some(release),
            _ => None,
        })
        .collect())
}

/// Served package lists, shared by every client assigned the same packages. Kept from pass to
/// pass while the releases stay the same, so that clients keep the lists they share.
#[derive(Default)]
pub struct ServedCache {
    releases: Vec<PackageRelease>,
    lists: HashMap<Vec<AssignedPackage>, Arc<[DesiredPackage]>>,
}

impl ServedCache {
    /// The cache for `releases`: this one if it was built for them, else an empty one.
    fn for_releases(self, releases: &[PackageRelease]) -> ServedCache {
        if self.releases == releases {
            self
        } else {
            ServedCache {
                releases: releases.to_vec(),
                lists: HashMap::new(),
            }
        }
    }

    /// What `client` is served for what it is assigned now (`status.desired` at
    /// `status.desiredRevision`). A package whose release is gone from the catalog keeps the
    /// details the client was served it with, so that deleting a release never makes agents
    /// remove a package (such a list is the client's own). `activation` is what its groups'
    /// windows make it now: it is served with the new revision, never put into the served state
    /// in place, so that no agent sees a new activation at a revision it already has.
    pub fn served(
        &mut self,
        client: &ClientRuntime,
        catalog: &ReleaseCatalog,
        activation: Option<Arc<tc_proto::activation::Activation>>,
    ) -> Served {
        let assigned: &[AssignedPackage] = &client.status.desired;
        let revision = client.status.desired_revision;
        let previous = &client.served;
        let decommission = client.admission == Admission::Decommissioning;
        if let Some(packages) = self.lists.get(assigned) {
            return Served {
                revision,
                packages: packages.clone(),
                decommission,
                activation,
            };
        }
        let mut complete = true;
        let mut packages = Vec::with_capacity(assigned.len());
        for package in assigned {
            match catalog.exact(&package.name, &package.version) {
                Some(info) => packages.push(DesiredPackage {
                    name: info.package.clone(),
                    version: info.version.to_string(),
                    sha256: info.sha256.clone(),
                    size: info.size,
                    url: format!("/blobs/sha256/{}", info.sha256),
                    hooks: info.hooks.clone(),
                    attempt: package.attempt,
                    signature: info.signature.clone(),
                }),
                None => {
                    complete = false;
                    packages.extend(
                        previous
                            .packages
                            .iter()
                            .find(|p| p.name == package.name && p.version == package.version)
                            .cloned()
                            .map(|p| DesiredPackage {
                                attempt: package.attempt,
                                ..p
                            }),
                    );
                }
            }
        }
        let packages: Arc<[DesiredPackage]> = Arc::from(packages);
        if complete {
            self.lists.insert(assigned.to_vec(), packages.clone());
        }
        Served {
            revision,
            packages,
            decommission,
            activation,
        }
    }
}

/// An admin's request to retry the releases that failed on members of a group: the next pass
/// raises the `attempt` of each failed package of the group on each member that reports it
/// failed, so that agents try it once more, and answers with what it retried once that is
/// committed.
pub struct RetryRequest {
    /// The group.
    pub group: String,
    /// Where the answer goes.
    pub done: tokio::sync::oneshot::Sender<Vec<Retried>>,
}

/// One package retried on one client.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retried {
    /// The client.
    pub client: String,
    /// The package.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The new attempt number.
    pub attempt: u32,
}

/// One reconcile pass; returns when the next one is due at the latest for progressive delivery (a timed
/// pause's end, a maintenance window's start or end).
pub async fn pass(controller: &Arc<Controller>) -> Result<Option<Timestamp>, String> {
    let started = Instant::now();
    let now = Timestamp::now();
    // Held for the whole pass: routes that change a rollout record wait for it.
    let mut records_guard = controller.rollouts.records.lock().await;
    if records_guard.is_none() {
        let store = controller.store.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::progressive::load(&*store))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        *records_guard = Some(loaded);
    }
    let records = records_guard.as_mut().expect("loaded above");
    let retry_requests = std::mem::take(&mut *controller.retries.lock().expect("retries lock"));
    let retry_groups: Vec<String> = retry_requests.iter().map(|r| r.group.clone()).collect();
    let store = controller.store.clone();
    let (groups, releases, pauses) = tokio::task::spawn_blocking(move || -> tc_store::Result<_> {
        let pauses = crate::rollout::load_pauses(&*store)?;
        let mut groups = list_groups(&*store)?;
        crate::rollout::overlay_pauses(&mut groups, &pauses);
        Ok((groups, list_releases(&*store)?, pauses))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let catalog = ReleaseCatalog::new(&releases);
    let mut groups = groups;
    let mut rollout_events = vec![];
    let (plans, mut records_changed) = crate::progressive::prepare(
        &controller.rollouts,
        records,
        &mut groups,
        &catalog,
        now,
        &mut rollout_events,
    );
    // The records of deleted groups go with them.
    let gone: Vec<String> = records
        .keys()
        .filter(|name| !groups.iter().any(|g| &g.metadata.name == *name))
        .cloned()
        .collect();
    for name in &gone {
        records.remove(name);
    }
    records_changed.extend(gone);
    let window_edge = plans
        .iter()
        .filter_map(|plan| plan.activation.as_ref())
        .flat_map(|activation| activation.windows.iter())
        .flat_map(|window| [window.start, window.end])
        .filter(|edge| *edge > now)
        .min();
    let loaded = started.elapsed();

    let slots = controller.fleet.slots();
    let cache = std::mem::take(&mut *controller.served_cache.lock().expect("cache lock"))
        .for_releases(&releases);
    let controller_cache = controller.clone();
    let context = Context {
        offline_after_missed: controller.config.offline_after_missed,
        started_at: controller.started_at,
        now,
        pauses,
        plans,
    };
    let (outcome, groups) = tokio::task::spawn_blocking(move || {
        let mut cache = cache;
        let outcome = compute(
            &groups,
            &catalog,
            &slots,
            &context,
            &retry_groups,
            &mut cache,
        );
        *controller_cache.served_cache.lock().expect("cache lock") = cache;
        (outcome, groups)
    })
    .await
    .map_err(|e| e.to_string())?;
    let computed = started.elapsed();

    // Persist the new assignments, and only then serve them to agents.
    let Outcome {
        changes,
        mut events,
        group_statuses,
        phases,
        clients,
        retried,
        group_counts,
    } = outcome;
    let mut group_statuses = group_statuses;
    // In parts: agents of the first part are answered while the next parts are written.
    let persisted_count = changes.len();
    let published_count = changes.iter().filter(|c| c.publish.is_some()).count();
    let mut changes = changes.into_iter();
    let mut parts = vec![];
    loop {
        let part: Vec<Change> = changes.by_ref().take(PERSIST_PART).collect();
        if part.is_empty() {
            break;
        }
        let mut statuses = Vec::with_capacity(part.len());
        let mut publish = vec![];
        for change in part {
            // The client's status as it is now: a heartbeat that changed it (its phase) since
            // the pass looked, and wrote it, must not be undone by this older copy.
            let status = change
                .slot
                .state
                .lock()
                .expect("client lock")
                .status
                .to_status(None);
            statuses.push(ClientStatusEntry {
                name: change.slot.name.to_string(),
                status,
            });
            if let Some(served) = change.publish {
                publish.push((change.slot, served));
            }
        }
        parts.push((controller.persister.queue_statuses(statuses), publish));
    }
    for (committed, publish) in parts {
        committed.await?;
        for (slot, served) in publish {
            let mut state = slot.state.lock().expect("client lock");
            // A client given yet another assignment meanwhile is served by the pass that gave it.
            if state.status.desired_revision == served.revision {
                let revision = served.revision;
                state.served = served;
                drop(state);
                slot.revision.send_replace(revision);
            }
        }
    }
    let persisted = started.elapsed();
    // Retries are committed: answer who asked.
    for request in retry_requests {
        let answer = retried
            .iter()
            .filter(|(group, _)| *group == request.group)
            .map(|(_, retried)| retried.clone())
            .collect();
        let _ = request.done.send(answer);
    }
    controller
        .persister
        .record_later(std::mem::take(&mut events));

    // Steps move with this pass's counts; their status and records are written with the groups'.
    let (changed, step_events, moved, pause_end) =
        crate::progressive::finish(records, &groups, &group_counts, &mut group_statuses, now);
    records_changed.extend(changed);
    records_changed.sort();
    records_changed.dedup();
    events.extend(rollout_events);
    events.extend(step_events);
    let saved: Vec<(String, Option<tc_reconcile::progressive::GroupRollouts>)> = records_changed
        .into_iter()
        .map(|name| {
            let record = records.get(&name).cloned();
            (name, record)
        })
        .collect();
    drop(records_guard);
    if moved {
        // The next step's share applies at once.
        controller.reconcile_wake.notify_one();
    }

    // Group status, conditions and the events of their transitions.
    let mut writes = vec![];
    for (group, status) in groups.iter().zip(group_statuses) {
        if group.status.as_ref() == Some(&status) {
            continue;
        }
        let previous = group.status.clone().unwrap_or_default();
        for condition in &status.conditions {
            let before = tc_api::meta::find_condition(&previous.conditions, &condition.type_);
            let changed =
                before.is_none_or(|b| b.status != condition.status || b.reason != condition.reason);
            let interesting = condition.type_ != "Progressing" || condition.reason == "Complete";
            // A group without members has nothing to report yet.
            if changed
                && interesting
                && status.desired > 0
                && (before.is_some() || condition.status == tc_api::ConditionStatus::True)
            {
                let warning = condition.type_ == "Degraded"
                    && condition.status == tc_api::ConditionStatus::True;
                events.push(Event::new(
                    now,
                    ObjectRef::new(Kind::ClientGroup, &group.metadata.name),
                    if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    condition.reason.clone(),
                    if condition.message.is_empty() {
                        format!("{} is {:?}", condition.type_, condition.status)
                    } else {
                        condition.message.clone()
                    },
                ));
            }
        }
        let mut updated = group.clone();
        updated.status = Some(status);
        writes.push(Write::Status {
            object: Object::ClientGroup(updated),
        });
    }
    let store = controller.store.clone();
    tokio::task::spawn_blocking(move || -> tc_store::Result<()> {
        for (name, record) in &saved {
            crate::progressive::save(&*store, name, record.as_ref())?;
        }
        if !writes.is_empty() {
            store.write(writes, now)?;
        }
        if !events.is_empty() {
            store.append_events(events)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;

    for (phase, count) in PHASES.iter().zip(phases) {
        controller.metrics.set_clients(&phase.to_string(), count);
    }
    tracing::debug!(
        clients,
        persisted = persisted_count,
        published = published_count,
        load_ms = loaded.as_millis() as u64,
        compute_ms = (computed - loaded).as_millis() as u64,
        persist_and_publish_ms = (persisted - computed).as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "reconcile pass"
    );
    controller.metrics.reconciles.inc();
    controller
        .metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok([pause_end, window_edge].into_iter().flatten().min())
}

/// What changes between two assignments, for events: `install kiosk 1.0.0, update vpn to 2.0.0,
/// remove old 0.9.0`. With `reports`, an update names the version the client really runs (which
/// is not the one it was assigned when that install failed and rolled back):
/// `update vpn 1.0.0 -> 2.0.0`.
fn describe_assignment(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    reports: Option<&[PackageReport]>,
) -> String {
    let mut parts = vec![];
    for (name, version) in after {
        match before.get(name) {
            None => parts.push(format!("install {name} {version}")),
            Some(old) if old != version => {
                let running = reports.map(|reports| {
                    reports
                        .iter()
                        .find(|r| r.name == *name)
                        .and_then(|r| match r.state {
                            PackageState::Installed => Some(r.version.as_str()),
                            _ => r.active_version.as_deref(),
                        })
                });
                match running {
                    None => parts.push(format!("update {name} to {version}")),
                    Some(Some(running)) => {
                        parts.push(format!("update {name} {running} -> {version}"))
                    }
                    // It runs no version of it (a first install that failed).
                    Some(None) => parts.push(format!("install {name} {version}")),
                }
            }
            Some(_) => {}
        }
    }
    for (name, version) in before {
        if !after.contains_key(name) {
            parts.push(format!("remove {name} {version}"));
        }
    }
    parts.join(", ")
}

/// Statuses committed (and their clients served) at a time.
const PERSIST_PART: usize = 4096;

/// Clients of one pass that get an `Assigned` event of their own; the others are counted in one
/// event per change and group, so that a rollout to a large fleet neither floods the event ring
/// (which would drop every other recent event) nor spends its time recording them.
const ASSIGNED_EVENTS_PER_PASS: usize = 100;

/// A new assignment of one client, for its event.
struct Assignment {
    client: Arc<str>,
    /// What changed, and for which group.
    transition: Arc<Transition>,
    /// The client's own description of the change (with the versions it runs), for the clients
    /// that get an event of their own.
    detail: Option<String>,
}

/// The `Assigned` events of a pass: one per client for the first
/// [`ASSIGNED_EVENTS_PER_PASS`] clients (in name order), then one per change and group counting
/// the other clients.
fn assignment_events(assignments: Vec<Assignment>, now: Timestamp) -> Vec<Event> {
    let mut events = vec![];
    // Ordered by owner and change (transitions alike but not shared count together).
    let mut rest: BTreeMap<Arc<Transition>, (Arc<str>, usize)> = BTreeMap::new();
    for (index, assignment) in assignments.into_iter().enumerate() {
        if index < ASSIGNED_EVENTS_PER_PASS {
            events.push(Event::new(
                now,
                ObjectRef::new(Kind::Client, &*assignment.client),
                EventType::Normal,
                "Assigned",
                assignment
                    .detail
                    .unwrap_or_else(|| assignment.transition.change.clone()),
            ));
        } else {
            rest.entry(assignment.transition)
                .or_insert((assignment.client, 0))
                .1 += 1;
        }
    }
    for (transition, (first, count)) in rest {
        let Transition { owner, change } = &*transition;
        let object = match owner {
            Some(group) => ObjectRef::new(Kind::ClientGroup, group.as_str()),
            None => ObjectRef::new(Kind::Client, &*first),
        };
        events.push(Event::new(
            now,
            object,
            EventType::Normal,
            "Assigned",
            format!(
                "{change} on {count} more client(s) (per-client events are kept for the first {ASSIGNED_EVENTS_PER_PASS} of a pass)"
            ),
        ));
    }
    events
}

/// What a pass works with besides the objects.
struct Context {
    offline_after_missed: u32,
    /// Heartbeats missed before this are not held against a client.
    started_at: Timestamp,
    now: Timestamp,
    /// Groups paused through the API (already `spec.paused` in the groups of the pass).
    pauses: BTreeMap<String, tc_api::RolloutPause>,
    /// Progressive delivery, per group (in the order of the groups).
    plans: Vec<crate::progressive::GroupPlan>,
}

/// A client whose status is to be persisted (a new assignment, a phase change), and what to
/// serve it once that is persisted. The status itself is read when the change is queued.
struct Change {
    slot: Arc<ClientSlot>,
    publish: Option<Served>,
}

impl Change {
    fn new(slot: &Arc<ClientSlot>, publish: Option<Served>) -> Change {
        Change {
            slot: slot.clone(),
            publish,
        }
    }
}

/// What a pass decided.
struct Outcome {
    /// Statuses to persist, with what to publish after.
    changes: Vec<Change>,
    /// Events about clients.
    events: Vec<Event>,
    /// One per group, in the order of the groups.
    group_statuses: Vec<tc_api::ClientGroupStatus>,
    /// Clients per phase, in the order of [`PHASES`].
    phases: [usize; PHASES.len()],
    /// Clients looked at.
    clients: usize,
    /// Packages retried, with the group whose retry asked for each.
    retried: Vec<(String, Retried)>,
    /// What each group's rollout counted (in the order of the groups).
    group_counts: Vec<crate::progressive::GroupCounts>,
}

/// What a client with given groups and assignment should run; computed once per distinct pair.
struct Desire {
    membership: usize,
    assigned: Arc<[AssignedPackage]>,
    /// `assigned` as the rollout plan takes it.
    assigned_map: Arc<PlannedAssignment>,
    desire: Arc<ClientDesire>,
    /// Whether that differs from the assignment.
    wants_change: bool,
}

/// A client that wants another assignment, for the rollout plan.
struct Wanting {
    slot: Arc<ClientSlot>,
    membership: usize,
    /// Index into the pass's desires.
    desire: usize,
    /// Its phase changed in this pass (to be persisted whatever the plan decides).
    phase_changed: bool,
}

/// How a pass changed the assignment of clients, shared by the clients it changed alike.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Transition {
    /// The group that wants the change, if any (removals have none).
    owner: Option<String>,
    /// What changed (`install kiosk 1.0.0, update vpn to 2.0.0`).
    change: String,
}

fn assigned_map(assigned: &[AssignedPackage]) -> BTreeMap<String, String> {
    assigned
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect()
}

/// The health of each package of `assigned` (reused buffer), from the client's reports.
fn fill_health(health: &mut Vec<PackageHealth>, status: &LiveStatus) {
    health.clear();
    health.extend(status.desired.iter().map(|assigned| {
        package_health(
            status.observed_revision,
            status.desired_revision,
            assigned,
            &status.packages,
        )
    }));
}

/// The names of the packages of `assigned` whose health matches, shared when there are none.
fn packages_where(
    assigned: &[AssignedPackage],
    health: &[PackageHealth],
    matches: impl Fn(PackageHealth) -> bool,
    none: &Arc<[String]>,
) -> Arc<[String]> {
    if !health.iter().any(|&h| matches(h)) {
        return none.clone();
    }
    assigned
        .iter()
        .zip(health)
        .filter(|(_, h)| matches(**h))
        .map(|(p, _)| p.name.clone())
        .collect()
}

/// Adds a client to the tallies of the groups it is a member of.
fn tally_member(
    tallies: &mut [GroupTally],
    groups: &[ClientGroup],
    member_of: &[usize],
    name: &str,
    status: &LiveStatus,
    desire: &ClientDesire,
    health: &[PackageHealth],
) {
    let member = MemberView {
        name,
        offline: status.phase == ClientPhase::Offline,
        desire,
        assigned: &status.desired,
        health,
        reports: &status.packages,
    };
    for &g in member_of {
        tallies[g].add(&groups[g], &member);
    }
}

/// The budget of every group (`maxUnavailable` resolved once the members are counted).
fn budgets(groups: &[ClientGroup]) -> Vec<GroupBudget> {
    groups
        .iter()
        .map(|group| {
            let mut packages: Vec<String> =
                group.spec.packages.iter().map(|p| p.name.clone()).collect();
            packages.sort();
            packages.dedup();
            GroupBudget::new(&group.metadata.name, 1, group.spec.paused, packages)
        })
        .collect()
}

/// Raises the attempt of every package of `status` that failed and that one of the `retrying`
/// groups the client belongs to asks for, with a new desired revision; returns whether it did.
#[allow(clippy::too_many_arguments)]
fn retry_failed(
    retrying: &[usize],
    budgets: &[GroupBudget],
    groups: &[ClientGroup],
    member_of: &[usize],
    slot: &ClientSlot,
    status: &mut LiveStatus,
    outcome: &mut Outcome,
    now: Timestamp,
) -> bool {
    let mut bumped: Option<Vec<AssignedPackage>> = None;
    for (index, package) in status.desired.iter().enumerate() {
        let health = package_health(
            status.observed_revision,
            status.desired_revision,
            package,
            &status.packages,
        );
        if health != PackageHealth::Failed {
            continue;
        }
        let Some(&group) = member_of
            .iter()
            .find(|g| retrying.contains(g) && budgets[**g].package_index(&package.name).is_some())
        else {
            continue;
        };
        let list = bumped.get_or_insert_with(|| status.desired.to_vec());
        list[index].attempt += 1;
        outcome.retried.push((
            groups[group].metadata.name.clone(),
            Retried {
                client: slot.name.to_string(),
                package: package.name.clone(),
                version: package.version.clone(),
                attempt: list[index].attempt,
            },
        ));
        outcome.events.push(Event::new(
            now,
            ObjectRef::new(Kind::Client, &*slot.name),
            EventType::Normal,
            "Retried",
            format!(
                "retry {} {} (attempt {}) asked for through group {}",
                package.name,
                package.version,
                list[index].attempt + 1,
                groups[group].metadata.name
            ),
        ));
    }
    match bumped {
        Some(list) => {
            status.desired = list.into();
            status.desired_revision += 1;
            true
        }
        None => false,
    }
}

/// The phases counted by a pass (the `thinfleet_clients` gauge).
const PHASES: [ClientPhase; 5] = [
    ClientPhase::Pending,
    ClientPhase::Enrolled,
    ClientPhase::Online,
    ClientPhase::Offline,
    ClientPhase::Decommissioning,
];

/// The position of a phase in [`PHASES`].
fn phase_index(phase: ClientPhase) -> usize {
    match phase {
        ClientPhase::Pending => 0,
        ClientPhase::Enrolled => 1,
        ClientPhase::Online => 2,
        ClientPhase::Offline => 3,
        ClientPhase::Decommissioning => 4,
    }
}

/// The pure part of a pass: decides, applies the decisions to the in-memory clients (their
/// served state only where nothing needs persisting first), and returns what to persist and
/// publish.
fn compute(
    groups: &[ClientGroup],
    catalog: &ReleaseCatalog,
    slots: &[Arc<ClientSlot>],
    context: &Context,
    retry_groups: &[String],
    cache: &mut ServedCache,
) -> Outcome {
    let now = context.now;
    let mut outcome = Outcome {
        changes: vec![],
        events: vec![],
        group_statuses: vec![],
        phases: [0; PHASES.len()],
        clients: slots.len(),
        retried: vec![],
        group_counts: vec![],
    };
    // Groups whose failed releases are to be retried.
    let retrying: Vec<usize> = groups
        .iter()
        .enumerate()
        .filter(|(_, group)| retry_groups.contains(&group.metadata.name))
        .map(|(index, _)| index)
        .collect();
    let mut memberships: Vec<Arc<[usize]>> = vec![];
    let mut membership_ids: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut desires: Vec<Desire> = vec![];
    let mut desire_ids: HashMap<u64, Vec<usize>> = HashMap::new();
    let hasher = std::collections::hash_map::RandomState::new();
    let mut tallies: Vec<GroupTally> = groups
        .iter()
        .map(|group| {
            GroupTally::new(group, catalog)
                .paused_by(context.pauses.get(&group.metadata.name).cloned())
        })
        .collect();
    let mut budgets = budgets(groups);
    let stepped = context.plans.iter().any(|plan| plan.cap(0).is_some());
    for (budget, plan) in budgets.iter_mut().zip(&context.plans) {
        budget.targets = budget
            .packages
            .iter()
            .map(|package| plan.targets.get(package).cloned())
            .collect();
        budget.failure_threshold = plan.failure_threshold;
        // Resolved once the members are counted; set now so that members are counted per
        // target.
        budget.step_cap = plan.cap(0);
    }
    let mut activations: Vec<Option<Arc<tc_proto::activation::Activation>>> = vec![];
    let mut ranks: Vec<(bool, u64)> = vec![];
    let mut standings: Vec<GroupStanding> = budgets.iter().map(GroupStanding::new).collect();
    let mut member_counts = vec![0usize; groups.len()];
    let mut wanting: Vec<Wanting> = vec![];
    let mut rollouts: Vec<ClientRollout> = vec![];
    let mut member_of: Vec<usize> = vec![];
    let mut health: Vec<PackageHealth> = vec![];
    let no_packages: Arc<[String]> = Arc::from(Vec::new());

    for slot in slots {
        let mut guard = slot.state.lock().expect("client lock");
        let state = &mut *guard;
        // Into a buffer reused for every client (no allocation per client).
        member_of.clear();
        // Pending and decommissioning clients are members of no group.
        if state.admission == Admission::Active {
            member_of.extend(
                groups
                    .iter()
                    .enumerate()
                    .filter(|(_, group)| state.labels.matches(&group.spec.selector))
                    .map(|(index, _)| index),
            );
        }
        let membership = match membership_ids.get(member_of.as_slice()) {
            Some(&id) => id,
            None => {
                memberships.push(member_of.as_slice().into());
                membership_ids.insert(member_of.clone(), memberships.len() - 1);
                memberships.len() - 1
            }
        };
        let member_of: &[usize] = &memberships[membership];
        if activations.len() < memberships.len() {
            activations.push(crate::progressive::activation_of(&context.plans, member_of));
        }

        let heartbeat_seconds = member_of
            .iter()
            .map(|&g| groups[g].spec.agent.heartbeat_seconds)
            .min()
            .unwrap_or(tc_api::resources::DEFAULT_HEARTBEAT_SECONDS);
        let offline_after = Duration::from_secs(
            u64::from(state.heartbeat_seconds.max(heartbeat_seconds))
                * u64::from(context.offline_after_missed),
        );
        state.heartbeat_seconds = heartbeat_seconds;
        let mut phase_changed = false;
        if state.status.phase == ClientPhase::Online
            && state
                .status
                .last_heartbeat
                .is_some_and(|seen| now.since(seen.max(context.started_at)) > offline_after)
        {
            state.status.phase = ClientPhase::Offline;
            outcome.events.push(Event::new(
                now,
                ObjectRef::new(Kind::Client, &*slot.name),
                EventType::Warning,
                "Offline",
                "missed three heartbeats",
            ));
            phase_changed = true;
        }
        outcome.phases[phase_index(state.status.phase)] += 1;
        // Its groups' activation changed (a window list, onReboot, activate-now): a new
        // revision carries it to a waiting agent.
        let activation = &activations[membership];
        let same = match (&state.served.activation, activation) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        // Served with the new revision once it is committed; until then waiting agents keep
        // the served state they have (its revision and activation together).
        let mut published_later = false;
        if !same && state.admission == Admission::Active {
            state.status.desired_revision += 1;
            let served = cache.served(state, catalog, activation.clone());
            outcome.changes.push(Change::new(slot, Some(served)));
            phase_changed = false;
            published_later = true;
        }
        let retried = !retrying.is_empty()
            && retry_failed(
                &retrying,
                &budgets,
                groups,
                member_of,
                slot,
                &mut state.status,
                &mut outcome,
                now,
            );
        if retried {
            let served = cache.served(state, catalog, activation.clone());
            outcome.changes.push(Change::new(slot, Some(served)));
        }

        let key = {
            let mut hasher = hasher.build_hasher();
            membership.hash(&mut hasher);
            state.status.desired.hash(&mut hasher);
            hasher.finish()
        };
        let known = desire_ids.get(&key).and_then(|ids| {
            ids.iter().copied().find(|&id| {
                desires[id].membership == membership && desires[id].assigned == state.status.desired
            })
        });
        let id = match known {
            Some(id) => id,
            None => {
                let assigned = assigned_map(&state.status.desired);
                let member_groups: Vec<&ClientGroup> =
                    member_of.iter().map(|&g| &groups[g]).collect();
                let desire = desired_for_client(&member_groups, catalog, &assigned);
                let wants_change = desire.packages.len() != assigned.len()
                    || desire
                        .packages
                        .iter()
                        .any(|(package, want)| assigned.get(package) != Some(&want.version));
                desires.push(Desire {
                    membership,
                    assigned: state.status.desired.clone(),
                    assigned_map: Arc::new(assigned),
                    desire: Arc::new(desire),
                    wants_change,
                });
                desire_ids.entry(key).or_default().push(desires.len() - 1);
                desires.len() - 1
            }
        };
        let desire = &desires[id];
        for &g in member_of {
            member_counts[g] += 1;
        }
        fill_health(&mut health, &state.status);
        let unavailable = packages_where(
            &state.status.desired,
            &health,
            PackageHealth::is_unavailable,
            &no_packages,
        );
        let failed = packages_where(
            &state.status.desired,
            &health,
            |h| h == PackageHealth::Failed,
            &no_packages,
        );
        for &g in member_of {
            standings[g].count_member(&budgets[g], &unavailable, &failed, &desire.assigned_map);
        }
        if desire.wants_change {
            if stepped {
                let canary =
                    state.labels.get(tc_reconcile::progressive::CANARY_LABEL) == Some("true");
                ranks.push(tc_reconcile::progressive::member_rank(&slot.name, canary));
            }
            rollouts.push(ClientRollout {
                name: slot.name.clone(),
                groups: memberships[membership].clone(),
                desire: desire.desire.clone(),
                assigned: desire.assigned_map.clone(),
                unavailable,
                failed,
            });
            wanting.push(Wanting {
                slot: slot.clone(),
                membership,
                desire: id,
                // A retry persists the phase with the rest of the status.
                phase_changed: phase_changed && !retried,
            });
            continue;
        }
        tally_member(
            &mut tallies,
            groups,
            member_of,
            &slot.name,
            &state.status,
            &desire.desire,
            &health,
        );
        if retried {
            // Served once the retry is committed.
            continue;
        }
        if phase_changed {
            outcome.changes.push(Change::new(slot, None));
        }
        // Keep the served state in line with the catalog (at start-up, after a release changed),
        // sharing one package list among clients with the same assignment.
        if published_later {
            continue;
        }
        let served = cache.served(state, catalog, state.served.activation.clone());
        if !Arc::ptr_eq(&served.packages, &state.served.packages) {
            let moved = served.revision != state.served.revision;
            state.served = served;
            if moved {
                slot.revision.send_replace(state.served.revision);
            }
        }
    }

    for (g, (budget, (group, &count))) in budgets
        .iter_mut()
        .zip(groups.iter().zip(&member_counts))
        .enumerate()
    {
        budget.max_unavailable = group.spec.rollout.max_unavailable.resolve(count);
        budget.step_cap = context.plans.get(g).and_then(|plan| plan.cap(count));
    }
    if stepped {
        // Stepped rollouts admit members in rank order: canaries first, then spread.
        let mut order: Vec<usize> = (0..rollouts.len()).collect();
        order.sort_by_key(|&i| ranks[i]);
        let mut taken_rollouts: Vec<Option<ClientRollout>> =
            rollouts.into_iter().map(Some).collect();
        let mut taken_wanting: Vec<Option<Wanting>> = wanting.into_iter().map(Some).collect();
        rollouts = order
            .iter()
            .map(|&i| taken_rollouts[i].take().expect("each once"))
            .collect();
        wanting = order
            .iter()
            .map(|&i| taken_wanting[i].take().expect("each once"))
            .collect();
    }
    let next = plan_rollout_from(&budgets, standings, &rollouts);
    let mut assignments = vec![];
    // Clients planned alike share their new assignment (keyed by the addresses of the planned
    // map and of the old list), and clients that moved alike share the description of the move.
    // Every address stays a key of one list only: `next`, `rollouts` and `desires` hold their
    // `Arc`s until the loop is over.
    let mut assigned_lists: HashMap<(usize, usize), Arc<[AssignedPackage]>> = HashMap::new();
    let mut transitions: HashMap<(usize, usize, usize), Arc<Transition>> = HashMap::new();
    let mut new_health: Vec<PackageHealth> = vec![];
    for ((client, rollout), next) in wanting.into_iter().zip(&rollouts).zip(&next) {
        let mut state = client.slot.state.lock().expect("client lock");
        let member_of: &[usize] = &memberships[client.membership];
        let desire = &desires[client.desire];
        fill_health(&mut health, &state.status);
        // Decided on what the client was assigned when the pass looked at it.
        let unchanged = state.status.desired == desire.assigned;
        if *next != rollout.assigned && unchanged {
            let old = desire.assigned.clone();
            let list = assigned_lists
                .entry((
                    Arc::as_ptr(next) as usize,
                    Arc::as_ptr(&old) as *const u8 as usize,
                ))
                .or_insert_with(|| {
                    next.iter()
                        .map(|(name, version)| AssignedPackage {
                            name: name.clone(),
                            version: version.clone(),
                            // A retry's attempt holds while the version does.
                            attempt: old
                                .iter()
                                .find(|p| p.name == *name && p.version == *version)
                                .map_or(0, |p| p.attempt),
                        })
                        .collect()
                })
                .clone();
            // Packages it keeps keep their health; changed ones have not converged yet.
            new_health.clear();
            new_health.extend(list.iter().map(|package| {
                old.iter()
                    .position(|p| p == package)
                    .map_or(PackageHealth::Progressing, |i| health[i])
            }));
            state.status.desired = list;
            state.status.desired_revision += 1;
            let transition = transitions
                .entry((
                    Arc::as_ptr(&rollout.assigned) as usize,
                    Arc::as_ptr(next) as usize,
                    Arc::as_ptr(&rollout.desire) as usize,
                ))
                .or_insert_with(|| {
                    let owner = next
                        .iter()
                        .filter(|(package, version)| {
                            rollout.assigned.get(*package) != Some(*version)
                        })
                        .find_map(|(package, _)| {
                            rollout.desire.packages.get(package)?.group.clone()
                        });
                    Arc::new(Transition {
                        owner,
                        change: describe_assignment(&rollout.assigned, next, None),
                    })
                })
                .clone();
            let detail = (assignments.len() < ASSIGNED_EVENTS_PER_PASS).then(|| {
                describe_assignment(&rollout.assigned, next, Some(&state.status.packages))
            });
            assignments.push(Assignment {
                client: client.slot.name.clone(),
                transition,
                detail,
            });
            tally_member(
                &mut tallies,
                groups,
                member_of,
                &client.slot.name,
                &state.status,
                &desire.desire,
                &new_health,
            );
            let served = cache.served(&state, catalog, activations[client.membership].clone());
            outcome
                .changes
                .push(Change::new(&client.slot, Some(served)));
            continue;
        }
        tally_member(
            &mut tallies,
            groups,
            member_of,
            &client.slot.name,
            &state.status,
            &desire.desire,
            &health,
        );
        if client.phase_changed {
            outcome.changes.push(Change::new(&client.slot, None));
        }
    }
    outcome.events.extend(assignment_events(assignments, now));
    outcome.group_counts = tallies
        .iter()
        .map(|tally| {
            let (staged, activates_at) = tally.staged();
            crate::progressive::GroupCounts {
                progress: tally.progress().to_vec(),
                staged,
                activates_at,
            }
        })
        .collect();
    outcome.group_statuses = groups
        .iter()
        .zip(tallies)
        .map(|(group, tally)| tally.finish(group, now))
        .collect();
    outcome
}

/// Builds every client's served state at start-up.
pub fn initial_desired(controller: &Controller, store: &dyn Store) -> tc_store::Result<()> {
    let releases = list_releases(store)?;
    let catalog = ReleaseCatalog::new(&releases);
    let mut cache = ServedCache::default().for_releases(&releases);
    for slot in controller.fleet.slots() {
        let mut state = slot.state.lock().expect("client lock");
        let served = cache.served(&state, &catalog, state.served.activation.clone());
        slot.revision.send_replace(served.revision);
        state.served = served;
    }
    *controller.served_cache.lock().expect("cache lock") = cache;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;
    use tc_api::{Client, ClientGroupSpec, ClientSpec, LabelSelector, PackageRequirement};

    fn group(name: &str, selector: &str, packages: &[(&str, &str)]) -> ClientGroup {
        ClientGroup {
            api_version: tc_api::API_VERSION.into(),
            kind: "ClientGroup".into(),
            metadata: tc_api::ObjectMeta::named(name),
            spec: ClientGroupSpec {
                selector: LabelSelector::parse(selector).unwrap(),
                packages: packages
                    .iter()
                    .map(|(name, version)| PackageRequirement {
                        name: name.to_string(),
                        version: version.to_string(),
                    })
                    .collect(),
                ..Default::default()
            },
            status: None,
        }
    }

    fn release(package: &str, version: &str) -> PackageRelease {
        PackageRelease {
            api_version: tc_api::API_VERSION.into(),
            kind: "PackageRelease".into(),
            metadata: tc_api::ObjectMeta::named(format!("{package}-{version}")),
            spec: tc_api::PackageReleaseSpec {
                package: package.into(),
                version: version.into(),
                artifact: tc_api::Artifact {
                    sha256: Some("ab".repeat(32)),
                    ..Default::default()
                },
                hooks: Default::default(),
            },
            status: Some(tc_api::PackageReleaseStatus {
                artifact: Some(tc_api::ArtifactStatus {
                    sha256: "ab".repeat(32),
                    size: 10,
                }),
                conditions: vec![],
            }),
        }
    }

    fn client(name: &str, site: &str, last_heartbeat: Option<Timestamp>) -> Client {
        let mut client = Client::new(
            name,
            ClientSpec {
                machine_id: format!("machine-{name}"),
                agent_labels: BTreeMap::from([("site".to_string(), site.to_string())]),
                ..Default::default()
            },
        );
        client.status.phase = ClientPhase::Online;
        client.status.last_heartbeat = last_heartbeat;
        client
    }

    fn context(now: Timestamp, started_at: Timestamp) -> Context {
        Context {
            offline_after_missed: 3,
            started_at,
            now,
            pauses: BTreeMap::new(),
            plans: vec![],
        }
    }

    #[test]
    fn a_new_activation_is_served_only_with_the_revision_that_carries_it() {
        let fleet = Fleet::default();
        let now = Timestamp::from_unix_millis(1_000_000_000);
        fleet.insert(&client("a", "x", Some(now)));
        let groups = [group("all", "", &[])];
        let catalog = ReleaseCatalog::new(&[]);
        let slots = fleet.slots();
        let before = slots[0].state.lock().unwrap().served.clone();
        let activation = Arc::new(tc_proto::activation::Activation {
            now: true,
            ..Default::default()
        });
        let mut context = context(now, Timestamp::from_unix_millis(0));
        context.plans = vec![crate::progressive::GroupPlan {
            steps: vec![],
            step: 0,
            targets: BTreeMap::new(),
            failure_threshold: None,
            activation: Some(activation.clone()),
            priority: 0,
        }];
        let outcome = compute(
            &groups,
            &catalog,
            &slots,
            &context,
            &[],
            &mut Default::default(),
        );
        // The pass's change carries the activation at a new revision, to be published once the
        // revision is committed.
        assert_eq!(outcome.changes.len(), 1);
        let published = outcome.changes[0].publish.clone().expect("served later");
        assert_eq!(published.revision, before.revision + 1);
        assert_eq!(published.activation.as_deref(), Some(&*activation));
        // Until then a waiting agent is answered what it had: the old revision with the old
        // activation, never the new activation at the old revision.
        let live = slots[0].state.lock().unwrap().served.clone();
        assert_eq!(live, before);
        assert_eq!(slots[0].revision.get(), before.revision);
    }

    #[test]
    fn no_client_goes_offline_for_heartbeats_missed_while_the_controller_was_down() {
        let fleet = Fleet::default();
        let now = Timestamp::from_unix_millis(1_000_000_000);
        let long_ago = Timestamp::from_unix_millis(1_000_000_000 - 3_600_000);
        fleet.insert(&client("a", "x", Some(long_ago)));
        let groups = [group("all", "", &[])];
        let catalog = ReleaseCatalog::new(&[]);
        let slots = fleet.slots();

        // Started 10 s ago: 3 × 30 s have not passed since, whatever the last heartbeat was.
        let just_started = Timestamp::from_unix_millis(now.unix_millis() - 10_000);
        let outcome = compute(
            &groups,
            &catalog,
            &slots,
            &context(now, just_started),
            &[],
            &mut Default::default(),
        );
        assert!(outcome.changes.is_empty());
        assert_eq!(outcome.phases, [0, 0, 1, 0, 0]);

        // Up for 100 s (> 90 s) without a heartbeat from it: Offline, persisted, with an event.
        let running = Timestamp::from_unix_millis(now.unix_millis() - 100_000);
        let outcome = compute(
            &groups,
            &catalog,
            &slots,
            &context(now, running),
            &[],
            &mut Default::default(),
        );
        assert_eq!(outcome.phases, [0, 0, 0, 1, 0]);
        assert_eq!(outcome.changes.len(), 1);
        assert_eq!(
            outcome.changes[0].slot.state.lock().unwrap().status.phase,
            ClientPhase::Offline
        );
        assert!(outcome.changes[0].publish.is_none());
        assert_eq!(outcome.events[0].reason, "Offline");
    }

    #[test]
    fn a_pass_assigns_within_the_budget_and_shares_served_lists() {
        let fleet = Fleet::default();
        let now = Timestamp::from_unix_millis(1_000_000_000);
        for name in ["a", "b", "c", "d"] {
            fleet.insert(&client(name, "berlin", Some(now)));
        }
        fleet.insert(&client("e", "paris", Some(now)));
        let mut berlin = group("berlin", "site=berlin", &[("kiosk", "^1")]);
        berlin.spec.rollout.max_unavailable = tc_api::IntOrPercent::Int(3);
        let groups = [berlin];
        let catalog = ReleaseCatalog::new(&[release("kiosk", "1.0.0")]);
        let slots = fleet.slots();
        let mut cache = ServedCache::default();
        let outcome = compute(
            &groups,
            &catalog,
            &slots,
            &context(now, now),
            &[],
            &mut cache,
        );
        // First installs take room in the budget too: three members are assigned, the fourth
        // waits, the other client gets nothing.
        let mut assigned: Vec<&str> = outcome.changes.iter().map(|c| &*c.slot.name).collect();
        assigned.sort();
        assert_eq!(assigned, ["a", "b", "c"]);
        assert!(
            outcome
                .changes
                .iter()
                .map(|c| c.slot.state.lock().unwrap().status.clone())
                .all(|s| s.desired_revision == 1
                    && *s.desired
                        == [AssignedPackage {
                            name: "kiosk".into(),
                            version: "1.0.0".into(),
                            attempt: 0,
                        }])
        );
        let served: Vec<&Served> = outcome
            .changes
            .iter()
            .filter_map(|c| c.publish.as_ref())
            .collect();
        assert_eq!(served.len(), 3);
        let first = &served[0].packages;
        assert_eq!(first[0].url, format!("/blobs/sha256/{}", "ab".repeat(32)));
        assert!(
            served
                .iter()
                .all(|served| Arc::ptr_eq(&served.packages, first))
        );
        // Clients assigned alike hold one assignment list.
        let lists: Vec<Arc<[AssignedPackage]>> = slots
            .iter()
            .filter(|slot| !slot.state.lock().unwrap().status.desired.is_empty())
            .map(|slot| slot.state.lock().unwrap().status.desired.clone())
            .collect();
        assert_eq!(lists.len(), 3);
        assert!(lists.iter().all(|list| Arc::ptr_eq(list, &lists[0])));
        let status = &outcome.group_statuses[0];
        assert_eq!((status.desired, status.updated, status.ready), (4, 3, 0));
        assert_eq!(status.packages[0].unavailable, 3);
        assert_eq!(
            outcome
                .events
                .iter()
                .filter(|e| e.reason == "Assigned")
                .count(),
            3
        );

        // Nothing is served before it is published; a second pass decides nothing new.
        assert_eq!(slots[0].state.lock().unwrap().served.revision, 0);
        let again = compute(
            &groups,
            &catalog,
            &slots,
            &context(now, now),
            &[],
            &mut cache,
        );
        assert!(again.changes.is_empty());
    }

    #[test]
    fn a_large_pass_records_a_hundred_client_events_and_counts_the_rest() {
        let now = Timestamp::from_unix_millis(1);
        // Each with a transition of its own: alike ones are counted together all the same.
        let assignment = |i: usize, owner: Option<&str>, change: &str| Assignment {
            client: Arc::from(format!("c{i:04}")),
            transition: Arc::new(Transition {
                owner: owner.map(str::to_string),
                change: change.to_string(),
            }),
            detail: None,
        };
        let mut assignments: Vec<Assignment> = (0..240)
            .map(|i| assignment(i, Some("kiosks"), "install kiosk 1.0.0"))
            .collect();
        assignments.extend((240..250).map(|i| assignment(i, None, "remove old 0.9.0")));
        let events = assignment_events(assignments, now);
        assert_eq!(events.len(), 102);
        assert!(events[..100].iter().all(|e| e.object.kind == "Client"
            && e.reason == "Assigned"
            && e.message == "install kiosk 1.0.0"));
        assert_eq!(events[99].object.name, "c0099");
        let grouped: Vec<(&str, &str, &str)> = events[100..]
            .iter()
            .map(|e| {
                (
                    e.object.kind.as_str(),
                    e.object.name.as_str(),
                    e.message.as_str(),
                )
            })
            .collect();
        assert_eq!(grouped[0].0, "Client");
        assert_eq!(grouped[0].1, "c0240");
        assert!(
            grouped[0]
                .2
                .starts_with("remove old 0.9.0 on 10 more client(s)"),
            "{}",
            grouped[0].2
        );
        assert_eq!((grouped[1].0, grouped[1].1), ("ClientGroup", "kiosks"));
        assert!(
            grouped[1]
                .2
                .starts_with("install kiosk 1.0.0 on 140 more client(s)"),
            "{}",
            grouped[1].2
        );

        // Small passes keep one event per client.
        let few = assignment_events(
            vec![assignment(1, Some("kiosks"), "install kiosk 1.0.0")],
            now,
        );
        assert_eq!(few.len(), 1);
        assert_eq!(few[0].object.name, "c0001");
    }
}
