//! Builders shared by the reconcile tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use tc_api::{
    API_VERSION, Artifact, ArtifactStatus, ClientGroup, ClientGroupSpec, IntOrPercent,
    LabelSelector, ObjectMeta, PackageRelease, PackageReleaseSpec, PackageReleaseStatus,
    PackageRequirement, RolloutSpec,
};

pub fn release(package: &str, version: &str, ready: bool) -> PackageRelease {
    PackageRelease {
        api_version: API_VERSION.into(),
        kind: "PackageRelease".into(),
        metadata: ObjectMeta::named(format!("{package}-{version}")),
        spec: PackageReleaseSpec {
            package: package.into(),
            version: version.into(),
            artifact: Artifact {
                sha256: Some(format!("{:0>64}", version.replace(['.', '-'], ""))),
                ..Default::default()
            },
            hooks: Default::default(),
        },
        status: ready.then(|| PackageReleaseStatus {
            artifact: Some(ArtifactStatus {
                sha256: format!("{:0>64}", version.replace(['.', '-'], "")),
                size: 10,
            }),
            conditions: vec![],
        }),
    }
}

pub fn group(name: &str, priority: i32, packages: &[(&str, &str)]) -> ClientGroup {
    ClientGroup {
        api_version: API_VERSION.into(),
        kind: "ClientGroup".into(),
        metadata: ObjectMeta::named(name),
        spec: ClientGroupSpec {
            selector: LabelSelector::everything(),
            priority,
            packages: packages
                .iter()
                .map(|(name, version)| PackageRequirement {
                    name: name.to_string(),
                    version: version.to_string(),
                })
                .collect(),
            rollout: RolloutSpec {
                max_unavailable: IntOrPercent::Int(1),
                ..Default::default()
            },
            ..Default::default()
        },
        status: None,
    }
}

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
