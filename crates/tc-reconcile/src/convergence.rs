//! Whether a client finished what it was assigned, judged only from fresh reports.

use tc_api::{AssignedPackage, ClientStatus, PackageReport, PackageState};

/// Where a client stands with respect to its current assignment.
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
    /// True when the client counts as unavailable for a rollout (anything but converged).
    pub fn is_unavailable(&self) -> bool {
        *self != Convergence::Converged
    }
}

/// Judges a client's convergence. Reports made for an older desired revision prove nothing about
/// the current assignment, so they count as `Progressing` (never as done).
pub fn convergence(status: &ClientStatus) -> Convergence {
    convergence_of(
        status.observed_revision,
        status.desired_revision,
        &status.desired,
        &status.packages,
    )
}

/// [`convergence`] from the parts of a status it reads, for callers that keep a status of their
/// own shape (the controller's compact in-memory clients).
pub fn convergence_of(
    observed_revision: u64,
    desired_revision: u64,
    desired: &[AssignedPackage],
    packages: &[PackageReport],
) -> Convergence {
    if observed_revision < desired_revision {
        return Convergence::Progressing;
    }
    for assigned in desired {
        let report = packages.iter().find(|p| p.name == assigned.name);
        match report {
            Some(report)
                if report.state == PackageState::Failed && report.version == assigned.version =>
            {
                return Convergence::Failed {
                    package: assigned.name.clone(),
                    message: report.message.clone().unwrap_or_default(),
                };
            }
            Some(report)
                if report.state == PackageState::Installed
                    && report.version == assigned.version => {}
            _ => return Convergence::Progressing,
        }
    }
    let leftover = packages
        .iter()
        .any(|p| !desired.iter().any(|d| d.name == p.name));
    if leftover {
        Convergence::Progressing
    } else {
        Convergence::Converged
    }
}
