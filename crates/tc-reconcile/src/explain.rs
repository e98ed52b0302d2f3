//! Why a client runs what it runs: per package, the group and requirement that decide its
//! version (and the groups they override), a conflict or an unresolvable requirement, and what an
//! assignment that is not made yet waits for. It explains with the same functions that decide
//! ([`desired_for_client`]) and the groups' rollout status, so the answer cannot drift from the
//! decision.

use std::collections::BTreeSet;

use tc_api::{ClientGroup, PackageDecision};

use crate::catalog::ReleaseCatalog;
use crate::desired::desired_for_client;
use crate::rollout::Assignment;

/// The decisions for one client. `groups` are the groups that select it (any order);
/// `assigned` is what it is assigned now.
pub fn explain(
    groups: &[&ClientGroup],
    catalog: &ReleaseCatalog,
    assigned: &Assignment,
) -> Vec<PackageDecision> {
    let desire = desired_for_client(groups, catalog, assigned);
    let requirement_of = |group: &ClientGroup, package: &str| {
        group
            .spec
            .packages
            .iter()
            .find(|p| p.name == package)
            .map(|p| p.version.clone())
    };
    // Every package a selecting group asks for (decided, tied or unresolvable) or the client has.
    let packages: BTreeSet<&String> = desire
        .packages
        .keys()
        .chain(assigned.keys())
        .chain(desire.conflicts.iter().map(|c| &c.package))
        .chain(desire.unresolved.iter().map(|u| &u.package))
        .collect();
    let mut decisions = vec![];
    for package in packages {
        let want = desire.packages.get(package);
        let have = assigned.get(package).cloned();
        let keeps = || match &have {
            Some(version) => format!("keeps {version}"),
            None => "installs nothing".to_string(),
        };
        let mut decision = PackageDecision {
            package: package.clone(),
            desired: want.map(|w| w.version.clone()),
            assigned: have.clone(),
            ..Default::default()
        };
        if let Some(conflict) = desire.conflicts.iter().find(|c| c.package == *package) {
            let sides: Vec<String> = conflict
                .groups
                .iter()
                .filter_map(|name| groups.iter().find(|g| g.metadata.name == *name))
                .map(|g| {
                    let requirement = requirement_of(g, package).unwrap_or_default();
                    let resolved = tc_api::resources::parse_version_req(&requirement)
                        .ok()
                        .and_then(|req| catalog.resolve(package, &req))
                        .map(|info| info.version.to_string())
                        .unwrap_or_else(|| "nothing".into());
                    format!("{} (`{requirement}` -> {resolved})", g.metadata.name)
                })
                .collect();
            decision.reason = format!(
                "conflict: groups {} have the same priority and pin different versions; {}",
                sides.join(", "),
                keeps()
            );
            decisions.push(decision);
            continue;
        }
        let Some(want) = want else {
            decision.reason = "no group asks for it any more: to be removed".into();
            decisions.push(decision);
            continue;
        };
        let Some(owner) = want
            .group
            .as_deref()
            .and_then(|name| groups.iter().find(|g| g.metadata.name == name))
        else {
            let unresolved: Vec<String> = desire
                .unresolved
                .iter()
                .filter(|u| u.package == *package)
                .map(|u| format!("`{}` of group {}", u.requirement, u.group))
                .collect();
            decision.reason = format!(
                "no ready release satisfies {}; {}",
                unresolved.join(", "),
                keeps()
            );
            decisions.push(decision);
            continue;
        };
        decision.group = Some(owner.metadata.name.clone());
        decision.requirement = requirement_of(owner, package);
        let overridden: Vec<String> = groups
            .iter()
            .filter(|g| g.metadata.name != owner.metadata.name)
            .filter_map(|g| {
                requirement_of(g, package).map(|requirement| {
                    format!(
                        "{} (`{requirement}`, priority {})",
                        g.metadata.name, g.spec.priority
                    )
                })
            })
            .collect();
        let mut reason = format!(
            "group {} (`{}`, priority {}) resolves it to {}",
            owner.metadata.name,
            decision.requirement.as_deref().unwrap_or_default(),
            owner.spec.priority,
            want.version
        );
        if !overridden.is_empty() {
            reason.push_str(&format!("; overrides {}", overridden.join(", ")));
        }
        if have.as_deref() != Some(want.version.as_str()) {
            reason.push_str("; ");
            reason.push_str(&pending(groups, owner, package, &want.version));
        }
        decision.reason = reason;
        decisions.push(decision);
    }
    decisions
}

/// What an assignment of `package` `version` waits for, judged from the groups' status.
fn pending(groups: &[&ClientGroup], owner: &ClientGroup, package: &str, version: &str) -> String {
    if owner.spec.paused {
        return format!("not assigned: group {} is paused", owner.metadata.name);
    }
    let asking = groups.iter().filter_map(|g| {
        let status = g.status.as_ref()?;
        let resolved = status.packages.iter().find(|p| p.name == package)?;
        Some((g, status, resolved))
    });
    for (group, _, resolved) in asking.clone() {
        if resolved.failed_versions.iter().any(|v| v == version) {
            return format!(
                "held back: {package} {version} failed on members of group {} \
                 (`tcadm rollout retry clientgroup {}` tries it again)",
                group.metadata.name, group.metadata.name
            );
        }
    }
    for (group, status, resolved) in asking {
        let max = group
            .spec
            .rollout
            .max_unavailable
            .resolve(status.desired as usize);
        if resolved.unavailable as usize >= max {
            return format!(
                "waiting for room: {} of {} members of group {} are unavailable for {package} \
                 (maxUnavailable {})",
                resolved.unavailable, status.desired, group.metadata.name, max
            );
        }
    }
    "to be assigned at the next reconcile pass".into()
}
