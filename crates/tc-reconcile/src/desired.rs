//! What one client should run: the union of the requirements of the groups that select it, with
//! group priority deciding between groups that pin the same package.

use std::collections::BTreeMap;

use tc_api::{ClientGroup, PackageRequirement};

use crate::catalog::ReleaseCatalog;

/// One package a client should run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Exact version.
    pub version: String,
    /// The group whose requirement decided it; `None` when the client keeps what it has because of
    /// a conflict or an unresolvable requirement.
    pub group: Option<String>,
}

/// Two or more groups of the same priority pin one package to different versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The package.
    pub package: String,
    /// The tied groups, sorted.
    pub groups: Vec<String>,
}

/// A requirement no ready release satisfies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The package.
    pub package: String,
    /// The group asking.
    pub group: String,
    /// The requirement.
    pub requirement: String,
}

/// Everything a client should run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientDesire {
    /// Package name -> what to run.
    pub packages: BTreeMap<String, Want>,
    /// Ties between groups (the client keeps its current version of those packages).
    pub conflicts: Vec<Conflict>,
    /// Requirements that resolve to nothing (the client keeps its current version).
    pub unresolved: Vec<Unresolved>,
}

/// Computes what a client should run.
///
/// `groups` are the groups that select the client (see `LabelSelector::matches`); `assigned` is
/// what it is assigned now (package -> version). Per package, the requirement of the group with the
/// highest `priority` wins. On a tie between requirements that resolve to different versions, the
/// client keeps what it has and a [`Conflict`] is reported. A requirement that resolves to no ready
/// release also keeps what the client has. Packages no group asks for are not in the result (they
/// are to be removed).
pub fn desired_for_client(
    groups: &[&ClientGroup],
    catalog: &ReleaseCatalog,
    assigned: &BTreeMap<String, String>,
) -> ClientDesire {
    let mut candidates: BTreeMap<&str, Vec<(&ClientGroup, &PackageRequirement)>> = BTreeMap::new();
    for group in groups {
        for requirement in &group.spec.packages {
            candidates
                .entry(requirement.name.as_str())
                .or_default()
                .push((group, requirement));
        }
    }
    let mut desire = ClientDesire::default();
    for (package, mut asks) in candidates {
        let top = asks
            .iter()
            .map(|(group, _)| group.spec.priority)
            .max()
            .unwrap_or_default();
        asks.retain(|(group, _)| group.spec.priority == top);
        asks.sort_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
        let keep_current = |desire: &mut ClientDesire| {
            if let Some(version) = assigned.get(package) {
                desire.packages.insert(
                    package.to_string(),
                    Want {
                        version: version.clone(),
                        group: None,
                    },
                );
            }
        };
        // Resolve every tied requirement; a tie is only a conflict when they disagree.
        let mut resolved: Vec<(&ClientGroup, Option<String>)> = vec![];
        for (group, requirement) in &asks {
            let version = requirement
                .version_req()
                .ok()
                .and_then(|req| catalog.resolve(package, &req))
                .map(|info| info.version.to_string());
            if version.is_none() {
                desire.unresolved.push(Unresolved {
                    package: package.to_string(),
                    group: group.metadata.name.clone(),
                    requirement: requirement.version.clone(),
                });
            }
            resolved.push((group, version));
        }
        let first = resolved[0].1.clone();
        if resolved.iter().any(|(_, version)| *version != first) {
            desire.conflicts.push(Conflict {
                package: package.to_string(),
                groups: resolved
                    .iter()
                    .map(|(group, _)| group.metadata.name.clone())
                    .collect(),
            });
            keep_current(&mut desire);
            continue;
        }
        match first {
            Some(version) => {
                let group = Some(resolved[0].0.metadata.name.clone());
                desire
                    .packages
                    .insert(package.to_string(), Want { version, group });
            }
            None => keep_current(&mut desire),
        }
    }
    desire
}
