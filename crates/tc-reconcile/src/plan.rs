//! The plan of an apply: what it would create, configure, leave unchanged or prune.

use std::collections::{BTreeMap, BTreeSet};

use tc_api::{Kind, Object, PackageRelease};

/// What an apply does to one object (kubectl wording).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// New object.
    Create,
    /// Existing object whose spec, labels, annotations or manager change.
    Configure,
    /// Existing object, same content.
    Unchanged,
    /// Existing object of the same manager, absent from the applied set.
    Prune,
}

impl Action {
    /// The past-tense word printed per object: `created`, `configured`, `unchanged`, `pruned`.
    pub fn past_tense(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Configure => "configured",
            Action::Unchanged => "unchanged",
            Action::Prune => "pruned",
        }
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanItem {
    /// What happens.
    pub action: Action,
    /// The incoming object (for `Prune`, the existing one).
    pub object: Object,
    /// The stored object, if any.
    pub existing: Option<Object>,
}

/// A whole plan, in the order of the applied objects, prunes last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The steps.
    pub items: Vec<PlanItem>,
}

impl Plan {
    /// True when nothing would change.
    pub fn is_noop(&self) -> bool {
        self.items
            .iter()
            .all(|item| item.action == Action::Unchanged)
    }
}

/// Options of an apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Delete objects this manager applied before that are absent now.
    pub prune: bool,
    /// Take over objects managed by someone else.
    pub force: bool,
}

/// Why an apply is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The same object appears twice in one apply.
    #[error("{kind}/{name} appears more than once in this apply")]
    Duplicate {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
    },
    /// The object is managed by someone else.
    #[error(
        "{kind}/{name} is managed by `{manager}`; apply it from there, or use --force \
         (fieldManager `{requested}` then takes it over)"
    )]
    ManagerConflict {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
        /// Its current manager.
        manager: String,
        /// The manager of this apply.
        requested: String,
    },
    /// A release's content would change.
    #[error("packagerelease/{name} is immutable: {reason}; publish a new version instead")]
    ImmutableRelease {
        /// Release name.
        name: String,
        /// What would change.
        reason: String,
    },
    /// Two releases claim the same package and version.
    #[error("packagerelease/{name} and packagerelease/{other} are both {package} {version}")]
    DuplicateRelease {
        /// One release.
        name: String,
        /// The other.
        other: String,
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
}

/// What would change in a release that must not change, if anything. `incoming_sha256` is the
/// digest of the incoming artifact when known (computed from a path, or declared).
pub fn release_change(
    existing: &PackageRelease,
    incoming: &PackageRelease,
    incoming_sha256: Option<&str>,
) -> Option<String> {
    let (old, new) = (&existing.spec, &incoming.spec);
    if old.package != new.package {
        return Some(format!(
            "package would change from `{}` to `{}`",
            old.package, new.package
        ));
    }
    if old.version != new.version {
        return Some(format!(
            "version would change from `{}` to `{}`",
            old.version, new.version
        ));
    }
    if old.hooks != new.hooks {
        return Some("hooks would change".into());
    }
    let stored = existing
        .status
        .as_ref()
        .and_then(|s| s.artifact.as_ref())
        .map(|a| a.sha256.as_str());
    let stored = stored.or(old.artifact.sha256.as_deref());
    let incoming = incoming_sha256.or(new.artifact.sha256.as_deref());
    match (stored, incoming) {
        (Some(stored), Some(incoming)) if stored != incoming => Some(format!(
            "its artifact would change from sha256 {stored} to {incoming}"
        )),
        _ => None,
    }
}

/// Plans an apply of `incoming` by `manager` over the `existing` objects (of every kind).
///
/// Checks first, for the whole set, so that one refusal means nothing is applied: duplicates in
/// the request, objects of another manager (unless `force`), changed releases, and two releases of
/// the same package version. `digests` maps release names to the sha256 of their incoming artifact
/// where the caller computed one.
pub fn plan(
    existing: &[Object],
    incoming: &[Object],
    manager: &str,
    options: &PlanOptions,
    digests: &BTreeMap<String, String>,
) -> Result<Plan, Vec<PlanError>> {
    let stored: BTreeMap<(Kind, &str), &Object> =
        existing.iter().map(|o| ((o.kind(), o.name()), o)).collect();
    let mut errors = vec![];
    let mut seen = BTreeSet::new();
    let mut items = vec![];
    for object in incoming {
        let key = (object.kind(), object.name());
        if !seen.insert(key) {
            errors.push(PlanError::Duplicate {
                kind: key.0,
                name: key.1.to_string(),
            });
            continue;
        }
        let Some(current) = stored.get(&key) else {
            items.push(PlanItem {
                action: Action::Create,
                object: object.clone(),
                existing: None,
            });
            continue;
        };
        let current_manager = current.meta().managed_by.as_deref();
        if let Some(current_manager) = current_manager
            && current_manager != manager
            && !options.force
        {
            errors.push(PlanError::ManagerConflict {
                kind: key.0,
                name: key.1.to_string(),
                manager: current_manager.to_string(),
                requested: manager.to_string(),
            });
            continue;
        }
        if let (Object::PackageRelease(old), Object::PackageRelease(new)) = (current, object)
            && let Some(reason) =
                release_change(old, new, digests.get(object.name()).map(String::as_str))
        {
            errors.push(PlanError::ImmutableRelease {
                name: object.name().to_string(),
                reason,
            });
            continue;
        }
        let action = if object.same_content(current) && current_manager == Some(manager) {
            Action::Unchanged
        } else {
            Action::Configure
        };
        items.push(PlanItem {
            action,
            object: object.clone(),
            existing: Some((*current).clone()),
        });
    }
    if options.prune {
        for object in existing {
            if object.meta().managed_by.as_deref() == Some(manager)
                && !seen.contains(&(object.kind(), object.name()))
            {
                items.push(PlanItem {
                    action: Action::Prune,
                    object: object.clone(),
                    existing: Some(object.clone()),
                });
            }
        }
    }
    // Two releases of one package version in the resulting set.
    let mut result: BTreeMap<(Kind, &str), &Object> = stored.clone();
    for item in &items {
        let key = (item.object.kind(), item.object.name());
        if item.action == Action::Prune {
            result.remove(&key);
        } else {
            result.insert(key, &item.object);
        }
    }
    let mut versions: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for object in result.values() {
        if let Object::PackageRelease(release) = object
            && let Some(other) = versions.insert(
                (&release.spec.package, &release.spec.version),
                object.name(),
            )
        {
            errors.push(PlanError::DuplicateRelease {
                name: object.name().to_string(),
                other: other.to_string(),
                package: release.spec.package.clone(),
                version: release.spec.version.clone(),
            });
        }
    }
    if errors.is_empty() {
        Ok(Plan { items })
    } else {
        Err(errors)
    }
}
