//! Resolution of version requirements against the ready releases.

use std::collections::BTreeMap;

use semver::{Version, VersionReq};
use tc_api::{Hooks, PackageRelease};

/// What an agent needs to know about a ready release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// The PackageRelease object's name.
    pub release: String,
    /// Package name.
    pub package: String,
    /// Its version.
    pub version: Version,
    /// Lowercase hex sha256 of the zip.
    pub sha256: String,
    /// Size of the zip.
    pub size: u64,
    /// Lifecycle hooks.
    pub hooks: Hooks,
    /// The minisign signature of the zip (`spec.artifact.signature`), if the release is signed.
    pub signature: Option<String>,
}

/// The ready releases, by package, newest last.
#[derive(Clone, Debug, Default)]
pub struct ReleaseCatalog {
    by_package: BTreeMap<String, Vec<ReleaseInfo>>,
}

impl ReleaseCatalog {
    /// Indexes the releases whose artifact is in the blob store (`status.artifact` set). When two
    /// releases claim the same package and version, the one with the smaller object name wins.
    pub fn new<'a>(releases: impl IntoIterator<Item = &'a PackageRelease>) -> Self {
        let mut by_package: BTreeMap<String, Vec<ReleaseInfo>> = BTreeMap::new();
        for release in releases {
            let Some(artifact) = release.status.as_ref().and_then(|s| s.artifact.as_ref()) else {
                continue;
            };
            let Some(version) = release.spec.semver() else {
                continue;
            };
            by_package
                .entry(release.spec.package.clone())
                .or_default()
                .push(ReleaseInfo {
                    release: release.metadata.name.clone(),
                    package: release.spec.package.clone(),
                    version,
                    sha256: artifact.sha256.clone(),
                    size: artifact.size,
                    hooks: release.spec.hooks.clone(),
                    signature: release.spec.artifact.signature.clone(),
                });
        }
        for infos in by_package.values_mut() {
            infos.sort_by(|a, b| {
                a.version
                    .cmp(&b.version)
                    .then_with(|| b.release.cmp(&a.release))
            });
            infos.dedup_by(|later, earlier| later.version == earlier.version);
        }
        ReleaseCatalog { by_package }
    }

    /// The highest ready release of `package` that satisfies `requirement`. Pre-releases are only
    /// chosen when the requirement names a pre-release of the same major.minor.patch (semver's
    /// rule).
    pub fn resolve(&self, package: &str, requirement: &VersionReq) -> Option<&ReleaseInfo> {
        self.by_package
            .get(package)?
            .iter()
            .rev()
            .find(|info| requirement.matches(&info.version))
    }

    /// The ready release of an exact version.
    pub fn exact(&self, package: &str, version: &str) -> Option<&ReleaseInfo> {
        let version = Version::parse(version).ok()?;
        self.by_package
            .get(package)?
            .iter()
            .find(|info| info.version == version)
    }

    /// Number of ready releases.
    pub fn len(&self) -> usize {
        self.by_package.values().map(Vec::len).sum()
    }

    /// True when no release is ready.
    pub fn is_empty(&self) -> bool {
        self.by_package.is_empty()
    }
}
