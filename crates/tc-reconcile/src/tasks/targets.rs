//! Which clients a run targets: the union of a label selector's matches, named clients and a
//! group's members, resolved once when the run starts.

use std::collections::HashMap;

use tc_api::ClientGroup;
use tc_api::task::TaskTargets;

/// The clients a run targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// The clients, sorted by name, each once.
    pub clients: Vec<String>,
    /// Names in `spec.targets.clients` that no client has, sorted, each once (the caller
    /// reports them; they are not targets).
    pub unknown: Vec<String>,
}

/// Why a run's targets could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// `spec.targets.group` names a group that does not exist.
    #[error("spec.targets.group: ClientGroup `{0}` does not exist")]
    UnknownGroup(String),
}

/// Resolves a task's targets over the fleet.
///
/// `clients` yields each client's name and a lookup of its labels (the controller passes its
/// compact clients, e.g. `|key| client.labels.get(key)`, without building maps). A client is a
/// target when the selector matches it, its name is listed, or the group's `spec.selector`
/// matches it. One pass over the clients; names are compared exactly.
pub fn resolve_targets<'c, C, L>(
    targets: &TaskTargets,
    groups: &[ClientGroup],
    clients: C,
) -> Result<Targets, TargetError>
where
    C: IntoIterator<Item = (&'c str, L)>,
    L: Fn(&str) -> Option<&'c str>,
{
    let group_selector = match &targets.group {
        None => None,
        Some(name) => Some(
            &groups
                .iter()
                .find(|group| group.metadata.name == *name)
                .ok_or_else(|| TargetError::UnknownGroup(name.clone()))?
                .spec
                .selector,
        ),
    };
    // Named clients, and whether one was seen.
    let mut named: HashMap<&str, bool> = targets
        .clients
        .iter()
        .map(|name| (name.as_str(), false))
        .collect();
    let mut selected = Vec::new();
    for (name, labels) in clients {
        let mut hit = false;
        if let Some(seen) = named.get_mut(name) {
            *seen = true;
            hit = true;
        }
        hit = hit
            || targets
                .selector
                .as_ref()
                .is_some_and(|selector| selector.matches_with(&labels))
            || group_selector.is_some_and(|selector| selector.matches_with(&labels));
        if hit {
            selected.push(name.to_string());
        }
    }
    selected.sort_unstable();
    selected.dedup();
    let mut unknown: Vec<String> = named
        .into_iter()
        .filter(|(_, seen)| !seen)
        .map(|(name, _)| name.to_string())
        .collect();
    unknown.sort_unstable();
    Ok(Targets {
        clients: selected,
        unknown,
    })
}
