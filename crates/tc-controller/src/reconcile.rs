//! The reconcile loop: level-based and idempotent. Whatever woke it (an apply, a client's new
//! labels or package states, the periodic resync), a pass recomputes what every client should run
//! from the current objects and reports, assigns what the rollout budget allows, and updates group
//! status. It never needs to know why it ran.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tc_api::{
    AssignedPackage, Client, ClientGroup, ClientPhase, Event, EventType, Kind, Object, ObjectRef,
    PackageRelease, Timestamp,
};
use tc_proto::{DesiredPackage, DesiredState};
use tc_reconcile::status::{MemberState, group_status};
use tc_reconcile::{
    ClientRollout, Convergence, GroupBudget, ReleaseCatalog, convergence, desired_for_client,
    plan_rollout,
};
use tc_store::{Store, Write};

use crate::Controller;
use crate::fleet::ClientSlot;

/// Runs passes when woken, and at least every `resync` interval, until shutdown.
pub async fn run(controller: Arc<Controller>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(error) = pass(&controller).await {
            tracing::error!(%error, "reconcile pass failed");
        }
        tokio::select! {
            _ = controller.reconcile_wake.notified() => {
                // Let a burst of triggers (many heartbeats reporting at once) coalesce.
                tokio::time::sleep(controller.config.reconcile_debounce).await;
            }
            _ = tokio::time::sleep(controller.config.resync_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

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

/// What a pass decided for one client.
struct ClientChange {
    slot: Arc<ClientSlot>,
    assigned: Option<BTreeMap<String, String>>,
    went_offline: bool,
    heartbeat_seconds: u32,
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
    let catalog = Arc::new(ReleaseCatalog::new(&releases));

    let slots = controller.fleet.slots();
    let config = controller.config.clone();
    let compute_groups = groups.clone();
    let compute_catalog = catalog.clone();
    let (changes, group_statuses, events) = tokio::task::spawn_blocking(move || {
        compute(&compute_groups, &compute_catalog, &slots, now, &config)
    })
    .await
    .map_err(|e| e.to_string())?;

    // Apply the decisions to the live clients, persist them, and only then serve them to agents.
    let mut to_persist: Vec<Client> = vec![];
    let mut to_publish: Vec<(Arc<ClientSlot>, Arc<DesiredState>)> = vec![];
    let mut events = events;
    for change in &changes {
        let mut state = change.slot.state.lock().expect("client lock");
        state.heartbeat_seconds = change.heartbeat_seconds;
        let mut dirty = false;
        if change.went_offline && state.client.status.phase == ClientPhase::Online {
            state.client.status.phase = ClientPhase::Offline;
            events.push(Event::new(
                now,
                ObjectRef::new(Kind::Client, &state.client.metadata.name),
                EventType::Warning,
                "Offline",
                "missed three heartbeats",
            ));
            dirty = true;
        }
        if let Some(assigned) = &change.assigned {
            let status = &mut state.client.status;
            let before: BTreeMap<String, String> = status
                .desired
                .iter()
                .map(|p| (p.name.clone(), p.version.clone()))
                .collect();
            if &before != assigned {
                status.desired = assigned
                    .iter()
                    .map(|(name, version)| AssignedPackage {
                        name: name.clone(),
                        version: version.clone(),
                    })
                    .collect();
                status.desired_revision += 1;
                events.push(Event::new(
                    now,
                    ObjectRef::new(Kind::Client, &state.client.metadata.name),
                    EventType::Normal,
                    "Assigned",
                    describe_assignment(&before, assigned),
                ));
                dirty = true;
            }
        }
        let desired = build_desired(&state.client, &catalog, &state.desired);
        if *desired != *state.desired {
            to_publish.push((change.slot.clone(), desired));
        }
        if dirty {
            to_persist.push(state.client.clone());
        }
    }
    controller.persister.write(to_persist).await?;
    for (slot, desired) in to_publish {
        let revision = desired.revision;
        slot.state.lock().expect("client lock").desired = desired;
        slot.revision.send_replace(revision);
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

    let mut phases = BTreeMap::from([("Online", 0usize), ("Offline", 0), ("Pending", 0)]);
    for (_, slot) in controller.fleet.slots() {
        let phase = slot.state.lock().expect("client lock").client.status.phase;
        *phases
            .entry(match phase {
                ClientPhase::Online => "Online",
                ClientPhase::Offline => "Offline",
                ClientPhase::Pending => "Pending",
            })
            .or_default() += 1;
    }
    for (phase, count) in phases {
        controller.metrics.set_clients(phase, count);
    }
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

type GroupStatuses = Vec<tc_api::ClientGroupStatus>;

/// The pure part of a pass, on snapshots.
fn compute(
    groups: &[ClientGroup],
    catalog: &ReleaseCatalog,
    slots: &[(String, Arc<ClientSlot>)],
    now: Timestamp,
    config: &crate::Config,
) -> (Vec<ClientChange>, GroupStatuses, Vec<Event>) {
    struct Snapshot {
        labels: BTreeMap<String, String>,
        assigned: BTreeMap<String, String>,
        convergence: Convergence,
        phase: ClientPhase,
        last_heartbeat: Option<Timestamp>,
        heartbeat_seconds: u32,
    }
    let snapshots: Vec<Snapshot> = slots
        .iter()
        .map(|(_, slot)| {
            let state = slot.state.lock().expect("client lock");
            let status = &state.client.status;
            Snapshot {
                labels: state.client.metadata.labels.clone(),
                assigned: status
                    .desired
                    .iter()
                    .map(|p| (p.name.clone(), p.version.clone()))
                    .collect(),
                convergence: convergence(status),
                phase: status.phase,
                last_heartbeat: status.last_heartbeat,
                heartbeat_seconds: state.heartbeat_seconds,
            }
        })
        .collect();
    let membership: Vec<Vec<usize>> = snapshots
        .iter()
        .map(|s| {
            groups
                .iter()
                .enumerate()
                .filter(|(_, g)| g.spec.selector.matches(&s.labels))
                .map(|(i, _)| i)
                .collect()
        })
        .collect();
    let mut member_counts = vec![0usize; groups.len()];
    for groups_of_client in &membership {
        for &g in groups_of_client {
            member_counts[g] += 1;
        }
    }
    let budgets: Vec<GroupBudget> = groups
        .iter()
        .zip(&member_counts)
        .map(|(g, &count)| GroupBudget {
            name: g.metadata.name.clone(),
            max_unavailable: g.spec.rollout.max_unavailable.resolve(count),
            paused: g.spec.paused,
        })
        .collect();
    let mut conflicts_per_group = vec![0usize; groups.len()];
    let inputs: Vec<ClientRollout> = slots
        .iter()
        .zip(&snapshots)
        .zip(&membership)
        .map(|(((name, _), snapshot), member_of)| {
            let member_groups: Vec<&ClientGroup> = member_of.iter().map(|&i| &groups[i]).collect();
            let desire = desired_for_client(&member_groups, catalog, &snapshot.assigned);
            for conflict in &desire.conflicts {
                for (index, group) in groups.iter().enumerate() {
                    if conflict.groups.contains(&group.metadata.name) {
                        conflicts_per_group[index] += 1;
                    }
                }
            }
            ClientRollout {
                name: name.clone(),
                groups: member_of.clone(),
                desire,
                assigned: snapshot.assigned.clone(),
                unavailable: snapshot.convergence.is_unavailable(),
            }
        })
        .collect();
    let next = plan_rollout(&budgets, &inputs);

    let mut changes = vec![];
    for (index, ((_, slot), snapshot)) in slots.iter().zip(&snapshots).enumerate() {
        let heartbeat_seconds = membership[index]
            .iter()
            .map(|&g| groups[g].spec.agent.heartbeat_seconds)
            .min()
            .unwrap_or(tc_api::resources::DEFAULT_HEARTBEAT_SECONDS);
        let offline_after = Duration::from_secs(
            u64::from(snapshot.heartbeat_seconds.max(heartbeat_seconds))
                * u64::from(config.offline_after_missed),
        );
        let went_offline = snapshot.phase == ClientPhase::Online
            && snapshot
                .last_heartbeat
                .is_some_and(|seen| now.since(seen) > offline_after);
        let assigned = (next[index] != snapshot.assigned).then(|| next[index].clone());
        changes.push(ClientChange {
            slot: slot.clone(),
            assigned,
            went_offline,
            heartbeat_seconds,
        });
    }

    // Group status from the assignments just decided: a client given a new assignment in this pass
    // has not converged on it yet, whatever it reported for the previous one.
    let progressing = Convergence::Progressing;
    let mut statuses = vec![];
    for (g, group) in groups.iter().enumerate() {
        let members: Vec<MemberState<'_>> = membership
            .iter()
            .enumerate()
            .filter(|(_, groups_of_client)| groups_of_client.contains(&g))
            .map(|(c, _)| {
                let fresh = next[c] == snapshots[c].assigned;
                MemberState {
                    assigned: &next[c],
                    convergence: if fresh {
                        &snapshots[c].convergence
                    } else {
                        &progressing
                    },
                }
            })
            .collect();
        statuses.push(group_status(
            group,
            catalog,
            &members,
            conflicts_per_group[g],
            now,
        ));
    }
    (changes, statuses, vec![])
}

/// The desired state served to a client: its assignment with download details. A package whose
/// release is gone from the catalog keeps the details it was last served with, so that deleting a
/// release never makes agents remove a package.
pub fn build_desired(
    client: &Client,
    catalog: &ReleaseCatalog,
    previous: &DesiredState,
) -> Arc<DesiredState> {
    let packages = client
        .status
        .desired
        .iter()
        .filter_map(
            |assigned| match catalog.exact(&assigned.name, &assigned.version) {
                Some(info) => Some(DesiredPackage {
                    name: info.package.clone(),
                    version: info.version.to_string(),
                    sha256: info.sha256.clone(),
                    size: info.size,
                    url: format!("/blobs/sha256/{}", info.sha256),
                    hooks: info.hooks.clone(),
                }),
                None => previous
                    .packages
                    .iter()
                    .find(|p| p.name == assigned.name && p.version == assigned.version)
                    .cloned(),
            },
        )
        .collect();
    Arc::new(DesiredState {
        revision: client.status.desired_revision,
        packages,
    })
}

/// Builds every client's served desired state at start-up.
pub fn initial_desired(controller: &Controller, store: &dyn Store) -> tc_store::Result<()> {
    let catalog = ReleaseCatalog::new(&list_releases(store)?);
    for (_, slot) in controller.fleet.slots() {
        let mut state = slot.state.lock().expect("client lock");
        let desired = build_desired(&state.client, &catalog, &state.desired);
        slot.revision.send_replace(desired.revision);
        state.desired = desired;
    }
    Ok(())
}
