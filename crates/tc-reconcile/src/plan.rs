//! The plan of an apply: what it would create, configure, leave unchanged or prune.
//!
//! An API apply is planned atomically: one refusal means nothing is applied. The watched
//! directory's apply is *authoritative* ([`PlanOptions::authoritative`]): the directory is the
//! source of truth for the objects its files define, so it takes them back from any other manager,
//! a conflict of one object skips only that object, and objects marked
//! `thinfleet.io/reconcile: disabled` are left alone.

use std::collections::{BTreeMap, BTreeSet};

use tc_api::{Kind, Object, PackageRelease};

/// The annotation that takes an object out of the watched directory's hands when its value is
/// [`RECONCILE_DISABLED`], set in the file or on the stored object.
pub const RECONCILE_ANNOTATION: &str = "thinfleet.io/reconcile";

/// The value of [`RECONCILE_ANNOTATION`] that disables reconciling from the directory.
pub const RECONCILE_DISABLED: &str = "disabled";

/// True when the object is marked `thinfleet.io/reconcile: disabled`.
pub fn reconcile_disabled(object: &Object) -> bool {
    object
        .meta()
        .annotations
        .get(RECONCILE_ANNOTATION)
        .is_some_and(|value| value == RECONCILE_DISABLED)
}

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
    /// Objects an authoritative apply leaves alone, in the order they were met (never filled for
    /// other applies, which refuse instead).
    pub skipped: Vec<Skipped>,
}

/// An object an authoritative apply leaves alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Why.
    pub reason: SkipReason,
}

/// Why an object is left alone.
#[derive(Clone, Debug, PartialEq)]
pub enum SkipReason {
    /// Marked `thinfleet.io/reconcile: disabled`.
    ReconcileDisabled {
        /// The marker is in the incoming object (the file); otherwise on the stored object.
        in_source: bool,
        /// What the apply would have done otherwise.
        would: Action,
    },
    /// A conflict of this object alone: a changed release, or a second release of one package
    /// version.
    Conflict(PlanError),
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
    /// The apply of a source of truth (the watched directory): objects of other managers are taken
    /// back (as with `force`); a changed release or a second release of one package version skips
    /// that object only ([`SkipReason::Conflict`]); objects marked
    /// `thinfleet.io/reconcile: disabled`, incoming or stored, are neither created, updated nor
    /// pruned ([`SkipReason::ReconcileDisabled`]).
    pub authoritative: bool,
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
    #[error("{}", manager_conflict_message(kind, name, manager, requested))]
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
    /// A task without a schedule would change: it ran (or runs) as it was.
    #[error(
        "task/{name} cannot change: only a task with a `schedule` can (its next runs use the \
         new spec); delete it and create a new one"
    )]
    ImmutableTask {
        /// Task name.
        name: String,
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

fn manager_conflict_message(kind: &Kind, name: &str, manager: &str, requested: &str) -> String {
    let reference = format!("{kind}/{name}");
    if manager.starts_with("dir:") {
        format!(
            "{reference} is managed by `{manager}`: it is defined in the watched directory, which \
             takes it back at its next sync even after --force. Change it in its file; to take it \
             out of the directory's hands, remove it from the file or annotate it \
             `{RECONCILE_ANNOTATION}: {RECONCILE_DISABLED}` (in the file, or applied with --force)"
        )
    } else {
        format!(
            "{reference} is managed by `{manager}`; apply it from there, or use --force \
             (fieldManager `{requested}` then takes it over)"
        )
    }
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
/// where the caller computed one. An [authoritative](PlanOptions::authoritative) apply refuses only
/// duplicates in the request; changed releases and second releases of a version are skipped one by
/// one, and objects marked `thinfleet.io/reconcile: disabled` are left alone.
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
    let mut skipped = vec![];
    let mut seen = BTreeSet::new();
    let mut items = vec![];
    let force = options.force || options.authoritative;
    for object in incoming {
        let key = (object.kind(), object.name());
        if !seen.insert(key) {
            errors.push(PlanError::Duplicate {
                kind: key.0,
                name: key.1.to_string(),
            });
            continue;
        }
        let current = stored.get(&key).copied();
        if options.authoritative {
            let in_source = reconcile_disabled(object);
            if in_source || current.is_some_and(reconcile_disabled) {
                let would = match current {
                    None => Action::Create,
                    Some(current)
                        if object.same_content(current)
                            && current.meta().managed_by.as_deref() == Some(manager) =>
                    {
                        Action::Unchanged
                    }
                    Some(_) => Action::Configure,
                };
                skipped.push(Skipped {
                    kind: key.0,
                    name: key.1.to_string(),
                    reason: SkipReason::ReconcileDisabled { in_source, would },
                });
                continue;
            }
        }
        let Some(current) = current else {
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
            && !force
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
            let error = PlanError::ImmutableRelease {
                name: object.name().to_string(),
                reason,
            };
            if options.authoritative {
                skipped.push(Skipped {
                    kind: key.0,
                    name: key.1.to_string(),
                    reason: SkipReason::Conflict(error),
                });
            } else {
                errors.push(error);
            }
            continue;
        }
        if let (Object::Task(old), Object::Task(new)) = (current, object)
            && old.spec != new.spec
            && (old.spec.schedule.is_none() || new.spec.schedule.is_none())
        {
            let error = PlanError::ImmutableTask {
                name: object.name().to_string(),
            };
            if options.authoritative {
                skipped.push(Skipped {
                    kind: key.0,
                    name: key.1.to_string(),
                    reason: SkipReason::Conflict(error),
                });
            } else {
                errors.push(error);
            }
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
            existing: Some(current.clone()),
        });
    }
    if options.prune {
        for object in existing {
            if object.meta().managed_by.as_deref() == Some(manager)
                && !seen.contains(&(object.kind(), object.name()))
            {
                if options.authoritative && reconcile_disabled(object) {
                    skipped.push(Skipped {
                        kind: object.kind(),
                        name: object.name().to_string(),
                        reason: SkipReason::ReconcileDisabled {
                            in_source: false,
                            would: Action::Prune,
                        },
                    });
                    continue;
                }
                items.push(PlanItem {
                    action: Action::Prune,
                    object: object.clone(),
                    existing: Some(object.clone()),
                });
            }
        }
    }
    if options.authoritative {
        skip_second_releases(&stored, &mut items, &mut skipped);
    } else {
        errors.extend(second_releases(&stored, &items));
    }
    if errors.is_empty() {
        Ok(Plan { items, skipped })
    } else {
        Err(errors)
    }
}

/// Two releases of one package version in the set the plan would leave.
fn second_releases(stored: &BTreeMap<(Kind, &str), &Object>, items: &[PlanItem]) -> Vec<PlanError> {
    let mut result: BTreeMap<(Kind, &str), &Object> = stored.clone();
    for item in items {
        let key = (item.object.kind(), item.object.name());
        if item.action == Action::Prune {
            result.remove(&key);
        } else {
            result.insert(key, &item.object);
        }
    }
    let mut errors = vec![];
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
    errors
}

/// For an authoritative plan: a created release whose package version another release already
/// has (stored and kept, or created earlier in the plan) is skipped. Configured releases keep
/// their package and version (they are immutable), so only creations can collide.
fn skip_second_releases(
    stored: &BTreeMap<(Kind, &str), &Object>,
    items: &mut Vec<PlanItem>,
    skipped: &mut Vec<Skipped>,
) {
    let pruned: BTreeSet<(Kind, &str)> = items
        .iter()
        .filter(|item| item.action == Action::Prune)
        .map(|item| (item.object.kind(), item.object.name()))
        .collect();
    let mut versions: BTreeMap<(String, String), String> = stored
        .iter()
        .filter(|(key, _)| !pruned.contains(key))
        .filter_map(|(_, object)| match object {
            Object::PackageRelease(release) => Some((
                (release.spec.package.clone(), release.spec.version.clone()),
                release.metadata.name.clone(),
            )),
            Object::ClientGroup(_) | Object::Task(_) => None,
        })
        .collect();
    items.retain(|item| {
        let (Action::Create, Object::PackageRelease(release)) = (item.action, &item.object) else {
            return true;
        };
        let key = (release.spec.package.clone(), release.spec.version.clone());
        match versions.get(&key) {
            Some(other) => {
                skipped.push(Skipped {
                    kind: Kind::PackageRelease,
                    name: release.metadata.name.clone(),
                    reason: SkipReason::Conflict(PlanError::DuplicateRelease {
                        name: release.metadata.name.clone(),
                        other: other.clone(),
                        package: release.spec.package.clone(),
                        version: release.spec.version.clone(),
                    }),
                });
                false
            }
            None => {
                versions.insert(key, release.metadata.name.clone());
                true
            }
        }
    });
}
