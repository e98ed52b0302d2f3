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
    PackageRelease, Timestamp,
};
use tc_proto::DesiredPackage;
use tc_reconcile::{
    Assignment as PlannedAssignment, ClientDesire, ClientRollout, Convergence, GroupBudget,
    GroupTally, ReleaseCatalog, desired_for_client, plan_rollout_from,
};
use tc_store::{ClientStatusEntry, Store, Write};

use crate::Controller;
use crate::fleet::{ClientSlot, LiveStatus, Served};

/// Runs passes when woken, and at least every `resync` interval, until shutdown.
pub async fn run(controller: Arc<Controller>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let started = Instant::now();
        if let Err(error) = pass(&controller).await {
            tracing::error!(%error, "reconcile pass failed");
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
            _ = tokio::time::sleep(controller.config.resync_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Longest spacing of passes woken by agents' reports.
const MAX_REPORT_SPACING: Duration = Duration::from_secs(5);

/// Every client group.
fn list_groups(store: &dyn Store) -> tc_store::Result<Vec<ClientGroup>> {
    let objects = store.list(Kind::ClientGroup)?;
    Ok(objects
        .into_iter()
        .filter_map(|object| match object {
            Object::ClientGroup(group) => Some(group),
            Object::PackageRelease(_) => None,
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
            Object::ClientGroup(_) => None,
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

    /// What a client assigned `assigned` at `revision` is served. A package whose release is
    /// gone from the catalog keeps the details `previous` served it with, so that deleting a
    /// release never makes agents remove a package (such a list is the client's own).
    pub fn served(
        &mut self,
        assigned: &[AssignedPackage],
        revision: u64,
        catalog: &ReleaseCatalog,
        previous: &Served,
    ) -> Served {
        if let Some(packages) = self.lists.get(assigned) {
            return Served {
                revision,
                packages: packages.clone(),
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
        Served { revision, packages }
    }
}

/// One reconcile pass.
pub async fn pass(controller: &Arc<Controller>) -> Result<(), String> {
    let started = Instant::now();
    let now = Timestamp::now();
    let store = controller.store.clone();
    let (groups, releases) = tokio::task::spawn_blocking(move || -> tc_store::Result<_> {
        Ok((list_groups(&*store)?, list_releases(&*store)?))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let catalog = ReleaseCatalog::new(&releases);
    let loaded = started.elapsed();

    let slots = controller.fleet.slots();
    let cache = std::mem::take(&mut *controller.served_cache.lock().expect("cache lock"))
        .for_releases(&releases);
    let controller_cache = controller.clone();
    let context = Context {
        offline_after_missed: controller.config.offline_after_missed,
        started_at: controller.started_at,
        now,
    };
    let (outcome, groups) = tokio::task::spawn_blocking(move || {
        let mut cache = cache;
        let outcome = compute(&groups, &catalog, &slots, &context, &mut cache);
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
    } = outcome;
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
            statuses.push(change.status);
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
    controller
        .persister
        .record_later(std::mem::take(&mut events));

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

    for (phase, count) in [
        ("Pending", phases[0]),
        ("Online", phases[1]),
        ("Offline", phases[2]),
    ] {
        controller.metrics.set_clients(phase, count);
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
    Ok(())
}

fn describe_assignment(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> String {
    let mut parts = vec![];
    for (name, version) in after {
        match before.get(name) {
            None => parts.push(format!("install {name} {version}")),
            Some(old) if old != version => parts.push(format!("update {name} {old} -> {version}")),
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
                assignment.transition.change.clone(),
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
}

/// A client's status to persist (a new assignment, a phase change), and what to serve it once
/// that is persisted.
struct Change {
    slot: Arc<ClientSlot>,
    status: ClientStatusEntry,
    publish: Option<Served>,
}

impl Change {
    fn new(slot: &Arc<ClientSlot>, status: &LiveStatus, publish: Option<Served>) -> Change {
        Change {
            slot: slot.clone(),
            status: ClientStatusEntry {
                name: slot.name.to_string(),
                status: status.to_status(None),
            },
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
    /// Clients Pending, Online and Offline.
    phases: [usize; 3],
    /// Clients looked at.
    clients: usize,
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
    /// Groups to count a conflict against (once per conflict naming them).
    conflict_groups: Vec<usize>,
}

/// A client that wants another assignment, for the rollout plan.
struct Wanting {
    slot: Arc<ClientSlot>,
    membership: usize,
    convergence: Convergence,
    /// Its phase changed in this pass (to be persisted whatever the plan decides).
    phase_changed: bool,
}

/// How a pass changed the assignment of clients, shared by the clients it changed alike.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Transition {
    /// The group that wants the change, if any (removals have none).
    owner: Option<String>,
    /// What changed (`install kiosk 1.0.0, update vpn 1.0.0 -> 2.0.0`).
    change: String,
}

fn assigned_map(assigned: &[AssignedPackage]) -> BTreeMap<String, String> {
    assigned
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect()
}

fn assigned_version<'a>(assigned: &'a [AssignedPackage], package: &str) -> Option<&'a str> {
    assigned
        .iter()
        .find(|p| p.name == package)
        .map(|p| p.version.as_str())
}

/// The pure part of a pass: decides, applies the decisions to the in-memory clients (their
/// served state only where nothing needs persisting first), and returns what to persist and
/// publish.
fn compute(
    groups: &[ClientGroup],
    catalog: &ReleaseCatalog,
    slots: &[Arc<ClientSlot>],
    context: &Context,
    cache: &mut ServedCache,
) -> Outcome {
    let now = context.now;
    let mut outcome = Outcome {
        changes: vec![],
        events: vec![],
        group_statuses: vec![],
        phases: [0; 3],
        clients: slots.len(),
    };
    let mut memberships: Vec<Arc<[usize]>> = vec![];
    let mut membership_ids: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut desires: Vec<Desire> = vec![];
    let mut desire_ids: HashMap<u64, Vec<usize>> = HashMap::new();
    let hasher = std::collections::hash_map::RandomState::new();
    let mut tallies: Vec<GroupTally> = groups
        .iter()
        .map(|group| GroupTally::new(group, catalog))
        .collect();
    let mut member_counts = vec![0usize; groups.len()];
    let mut unavailable = vec![0usize; groups.len()];
    let mut conflicts = vec![0usize; groups.len()];
    let mut wanting: Vec<Wanting> = vec![];
    let mut rollouts: Vec<ClientRollout> = vec![];
    let mut member_of: Vec<usize> = vec![];

    for slot in slots {
        let mut guard = slot.state.lock().expect("client lock");
        let state = &mut *guard;
        // Into a buffer reused for every client (no allocation per client).
        member_of.clear();
        member_of.extend(
            groups
                .iter()
                .enumerate()
                .filter(|(_, group)| state.labels.matches(&group.spec.selector))
                .map(|(index, _)| index),
        );
        let membership = match membership_ids.get(member_of.as_slice()) {
            Some(&id) => id,
            None => {
                memberships.push(member_of.as_slice().into());
                membership_ids.insert(member_of.clone(), memberships.len() - 1);
                memberships.len() - 1
            }
        };
        let member_of: &[usize] = &memberships[membership];

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
        outcome.phases[match state.status.phase {
            ClientPhase::Pending => 0,
            ClientPhase::Online => 1,
            ClientPhase::Offline => 2,
        }] += 1;

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
                let mut conflict_groups = vec![];
                for conflict in &desire.conflicts {
                    for (index, group) in groups.iter().enumerate() {
                        if conflict.groups.contains(&group.metadata.name) {
                            conflict_groups.push(index);
                        }
                    }
                }
                desires.push(Desire {
                    membership,
                    assigned: state.status.desired.clone(),
                    assigned_map: Arc::new(assigned),
                    desire: Arc::new(desire),
                    wants_change,
                    conflict_groups,
                });
                desire_ids.entry(key).or_default().push(desires.len() - 1);
                desires.len() - 1
            }
        };
        let desire = &desires[id];
        for &g in member_of {
            member_counts[g] += 1;
        }
        for &g in &desire.conflict_groups {
            conflicts[g] += 1;
        }
        let convergence = state.status.convergence();
        if convergence.is_unavailable() {
            for &g in member_of {
                unavailable[g] += 1;
            }
        }
        if desire.wants_change {
            rollouts.push(ClientRollout {
                name: slot.name.clone(),
                groups: memberships[membership].clone(),
                desire: desire.desire.clone(),
                assigned: desire.assigned_map.clone(),
                unavailable: convergence.is_unavailable(),
            });
            wanting.push(Wanting {
                slot: slot.clone(),
                membership,
                convergence,
                phase_changed,
            });
            continue;
        }
        for &g in member_of {
            tallies[g].add(
                |package| assigned_version(&state.status.desired, package),
                &convergence,
            );
        }
        if phase_changed {
            outcome.changes.push(Change::new(slot, &state.status, None));
        }
        // Keep the served state in line with the catalog (at start-up, after a release changed),
        // sharing one package list among clients with the same assignment.
        let served = cache.served(
            &state.status.desired,
            state.status.desired_revision,
            catalog,
            &state.served,
        );
        if !Arc::ptr_eq(&served.packages, &state.served.packages) {
            let moved = served.revision != state.served.revision;
            state.served = served;
            if moved {
                slot.revision.send_replace(state.served.revision);
            }
        }
    }

    let budgets: Vec<GroupBudget> = groups
        .iter()
        .zip(&member_counts)
        .map(|(group, &count)| GroupBudget {
            name: group.metadata.name.clone(),
            max_unavailable: group.spec.rollout.max_unavailable.resolve(count),
            paused: group.spec.paused,
        })
        .collect();
    let next = plan_rollout_from(&budgets, unavailable, &rollouts);
    let progressing = Convergence::Progressing;
    let mut assignments = vec![];
    // Clients planned alike share their new assignment (keyed by its address), and clients that
    // moved alike share the description of the move. Every address stays a key of one list only:
    // `next` and `rollouts` hold their `Arc`s until the loop is over.
    let mut assigned_lists: HashMap<usize, Arc<[AssignedPackage]>> = HashMap::new();
    let mut transitions: HashMap<(usize, usize, usize), Arc<Transition>> = HashMap::new();
    for ((client, rollout), next) in wanting.into_iter().zip(&rollouts).zip(&next) {
        let mut state = client.slot.state.lock().expect("client lock");
        let member_of: &[usize] = &memberships[client.membership];
        // Decided on what the client was assigned when the pass looked at it.
        let unchanged = state.status.desired.len() == rollout.assigned.len()
            && state
                .status
                .desired
                .iter()
                .all(|p| rollout.assigned.get(&p.name) == Some(&p.version));
        if *next != rollout.assigned && unchanged {
            state.status.desired = assigned_lists
                .entry(Arc::as_ptr(next) as usize)
                .or_insert_with(|| {
                    next.iter()
                        .map(|(name, version)| AssignedPackage {
                            name: name.clone(),
                            version: version.clone(),
                            attempt: 0,
                        })
                        .collect()
                })
                .clone();
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
                        change: describe_assignment(&rollout.assigned, next),
                    })
                })
                .clone();
            assignments.push(Assignment {
                client: client.slot.name.clone(),
                transition,
            });
            // A client given a new assignment has not converged on it yet, whatever it reported
            // for the previous one.
            for &g in member_of {
                tallies[g].add(
                    |package| next.get(package).map(String::as_str),
                    &progressing,
                );
            }
            let served = cache.served(
                &state.status.desired,
                state.status.desired_revision,
                catalog,
                &state.served,
            );
            outcome
                .changes
                .push(Change::new(&client.slot, &state.status, Some(served)));
            continue;
        }
        for &g in member_of {
            tallies[g].add(
                |package| assigned_version(&state.status.desired, package),
                &client.convergence,
            );
        }
        if client.phase_changed {
            outcome
                .changes
                .push(Change::new(&client.slot, &state.status, None));
        }
    }
    outcome.events.extend(assignment_events(assignments, now));
    outcome.group_statuses = groups
        .iter()
        .zip(tallies)
        .zip(&conflicts)
        .map(|((group, tally), &conflicts)| tally.finish(group, conflicts, now))
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
        let served = cache.served(
            &state.status.desired,
            state.status.desired_revision,
            &catalog,
            &state.served,
        );
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
        }
    }

    #[test]
    fn no_client_goes_offline_for_heartbeats_missed_while_the_controller_was_down() {
        let fleet = Fleet::default();
        let now = Timestamp::from_unix_millis(1_000_000_000);
        let long_ago = Timestamp::from_unix_millis(1_000_000_000 - 3_600_000);
        fleet.insert(&client("a", "x", Some(long_ago)), None);
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
            &mut Default::default(),
        );
        assert!(outcome.changes.is_empty());
        assert_eq!(outcome.phases, [0, 1, 0]);

        // Up for 100 s (> 90 s) without a heartbeat from it: Offline, persisted, with an event.
        let running = Timestamp::from_unix_millis(now.unix_millis() - 100_000);
        let outcome = compute(
            &groups,
            &catalog,
            &slots,
            &context(now, running),
            &mut Default::default(),
        );
        assert_eq!(outcome.phases, [0, 0, 1]);
        assert_eq!(outcome.changes.len(), 1);
        assert_eq!(outcome.changes[0].status.status.phase, ClientPhase::Offline);
        assert!(outcome.changes[0].publish.is_none());
        assert_eq!(outcome.events[0].reason, "Offline");
    }

    #[test]
    fn a_pass_assigns_within_the_budget_and_shares_served_lists() {
        let fleet = Fleet::default();
        let now = Timestamp::from_unix_millis(1_000_000_000);
        for name in ["a", "b", "c", "d"] {
            fleet.insert(&client(name, "berlin", Some(now)), None);
        }
        fleet.insert(&client("e", "paris", Some(now)), None);
        let groups = [group("berlin", "site=berlin", &[("kiosk", "^1")])];
        let catalog = ReleaseCatalog::new(&[release("kiosk", "1.0.0")]);
        let slots = fleet.slots();
        let mut cache = ServedCache::default();
        let outcome = compute(&groups, &catalog, &slots, &context(now, now), &mut cache);
        // New installs take no budget: every member is assigned, the other client nothing.
        let mut assigned: Vec<&str> = outcome
            .changes
            .iter()
            .map(|c| c.status.name.as_str())
            .collect();
        assigned.sort();
        assert_eq!(assigned, ["a", "b", "c", "d"]);
        assert!(
            outcome
                .changes
                .iter()
                .map(|c| &c.status)
                .all(|s| s.status.desired_revision == 1
                    && s.status.desired
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
        assert_eq!(served.len(), 4);
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
        assert_eq!(lists.len(), 4);
        assert!(lists.iter().all(|list| Arc::ptr_eq(list, &lists[0])));
        let status = &outcome.group_statuses[0];
        assert_eq!((status.desired, status.updated, status.ready), (4, 4, 0));
        assert_eq!(
            outcome
                .events
                .iter()
                .filter(|e| e.reason == "Assigned")
                .count(),
            4
        );

        // Nothing is served before it is published; a second pass decides nothing new.
        assert_eq!(slots[0].state.lock().unwrap().served.revision, 0);
        let again = compute(&groups, &catalog, &slots, &context(now, now), &mut cache);
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
