//! Whether a client finished what it was assigned, package by package.
//!
//! A package is done when the client reports it `Installed` at the assigned version. Such a
//! report stays true when the client's assignment later changes for *other* packages, so it
//! counts even before the client has reported on its newest assignment (an offline client whose
//! other packages changed still runs this one). A failure counts only from a report made for the
//! current assignment: after an admin retries, the old failure proves nothing.

use tc_api::{AssignedPackage, ClientStatus, PackageReport, PackageState};

/// Where one assigned package of a client stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageHealth {
    /// Reported installed and healthy at the assigned version.
    Converged,
    /// Not (yet) reported done.
    Progressing,
    /// A report for the current assignment says it failed (the client runs its previous version).
    Failed,
}

impl PackageHealth {
    /// True when the package counts as unavailable for its rollout.
    pub fn is_unavailable(self) -> bool {
        self != PackageHealth::Converged
    }
}

/// The health of the assigned package `assigned`, from the client's reports.
pub fn package_health(
    observed_revision: u64,
    desired_revision: u64,
    assigned: &AssignedPackage,
    packages: &[PackageReport],
) -> PackageHealth {
    match packages.iter().find(|p| p.name == assigned.name) {
        Some(report)
            if report.state == PackageState::Installed && report.version == assigned.version =>
        {
            PackageHealth::Converged
        }
        Some(report)
            if report.state == PackageState::Failed
                && report.version == assigned.version
                && observed_revision >= desired_revision =>
        {
            PackageHealth::Failed
        }
        _ => PackageHealth::Progressing,
    }
}

/// Where a client stands with respect to its whole current assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Convergence {
    /// Every assigned package is reported `Installed` at its assigned version, nothing else is
    /// left, and the reports are for the current desired revision.
    Converged,
    /// The client has not (freshly) reported the assignment done yet.
    Progressing,
    /// A fresh report says an assigned package failed (the client runs its previous version).
    Failed {
        /// The failed package.
        package: String,
        /// The agent's reason.
        message: String,
    },
}

impl Convergence {
    /// True when the client as a whole has not converged.
    pub fn is_unavailable(&self) -> bool {
        *self != Convergence::Converged
    }
}

/// Judges a client's convergence on its whole assignment.
pub fn convergence(status: &ClientStatus) -> Convergence {
    convergence_of(
        status.observed_revision,
        status.desired_revision,
        &status.desired,
        &status.packages,
    )
}

/// [`convergence`] from the parts of a status it reads, for callers that keep a status of their
/// own shape (the controller's compact in-memory clients). Reports made for an older desired
/// revision prove nothing about the assignment as a whole (a removal may still be pending), so
/// the client is `Progressing` until it reports on the current one.
pub fn convergence_of(
    observed_revision: u64,
    desired_revision: u64,
    desired: &[AssignedPackage],
    packages: &[PackageReport],
) -> Convergence {
    for assigned in desired {
        if package_health(observed_revision, desired_revision, assigned, packages)
            == PackageHealth::Failed
        {
            let report = packages.iter().find(|p| p.name == assigned.name);
            return Convergence::Failed {
                package: assigned.name.clone(),
                message: report.and_then(|r| r.message.clone()).unwrap_or_default(),
            };
        }
    }
    if observed_revision < desired_revision {
        return Convergence::Progressing;
    }
    let done = desired.iter().all(|assigned| {
        package_health(observed_revision, desired_revision, assigned, packages)
            == PackageHealth::Converged
    });
    let leftover = packages
        .iter()
        .any(|p| !desired.iter().any(|d| d.name == p.name));
    if done && !leftover {
        Convergence::Converged
    } else {
        Convergence::Progressing
    }
}
