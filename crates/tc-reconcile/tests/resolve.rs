//! Version resolution and the desired package set of a client.

mod common;

use common::{group, map, release};
use proptest::prelude::*;
use tc_api::resources::parse_version_req;
use tc_reconcile::{Conflict, ReleaseCatalog, Want, desired_for_client};

#[test]
fn resolution_table() {
    let releases = [
        release("kiosk", "1.3.9", true),
        release("kiosk", "1.4.0", true),
        release("kiosk", "1.4.2", true),
        release("kiosk", "1.5.0-beta.1", true),
        release("kiosk", "1.6.0", false), // not ready: its artifact is not imported
        release("kiosk", "2.0.0", true),
        release("vpn", "2.0.1", true),
    ];
    let catalog = ReleaseCatalog::new(&releases);
    assert_eq!(catalog.len(), 6);
    let cases = [
        ("kiosk", "^1.4", Some("1.4.2")),
        ("kiosk", "~1.3", Some("1.3.9")),
        ("kiosk", "1.4.0", Some("1.4.0")),
        ("kiosk", "=1.4.0", Some("1.4.0")),
        ("kiosk", ">=1.4, <2", Some("1.4.2")),
        ("kiosk", "*", Some("2.0.0")),
        ("kiosk", "^1.6", None),
        ("kiosk", ">=1.5.0-beta.0, <1.6", Some("1.5.0-beta.1")),
        ("kiosk", "^3", None),
        ("vpn", "=2.0.1", Some("2.0.1")),
        ("missing", "*", None),
    ];
    for (package, requirement, expected) in cases {
        let req = parse_version_req(requirement).unwrap();
        let got = catalog
            .resolve(package, &req)
            .map(|info| info.version.to_string());
        assert_eq!(got.as_deref(), expected, "{package} {requirement}");
    }
    assert_eq!(
        catalog
            .resolve("kiosk", &parse_version_req("1.4.2").unwrap())
            .unwrap()
            .release,
        "kiosk-1.4.2"
    );
}

#[test]
fn priority_and_conflicts() {
    let releases = [
        release("kiosk", "1.0.0", true),
        release("kiosk", "2.0.0", true),
        release("vpn", "1.0.0", true),
    ];
    let catalog = ReleaseCatalog::new(&releases);
    let base = group("base", 0, &[("kiosk", "^1"), ("vpn", "*")]);
    let override_high = group("override", 5, &[("kiosk", "^2")]);
    let tie_same = group("tie-same", 0, &[("kiosk", "=1.0.0")]);
    let tie_other = group("tie-other", 0, &[("kiosk", "^2")]);

    let desire = desired_for_client(&[&base, &override_high], &catalog, &map(&[]));
    assert_eq!(
        desire.packages["kiosk"],
        Want {
            version: "2.0.0".into(),
            group: Some("override".into())
        }
    );
    assert_eq!(desire.packages["vpn"].version, "1.0.0");
    assert!(desire.conflicts.is_empty());

    // Same priority, same resolved version: no conflict.
    let desire = desired_for_client(&[&base, &tie_same], &catalog, &map(&[]));
    assert!(desire.conflicts.is_empty());
    assert_eq!(desire.packages["kiosk"].version, "1.0.0");

    // Same priority, different versions: conflict, client keeps what it has.
    let desire = desired_for_client(&[&base, &tie_other], &catalog, &map(&[("kiosk", "1.0.0")]));
    assert_eq!(
        desire.conflicts,
        vec![Conflict {
            package: "kiosk".into(),
            groups: vec!["base".into(), "tie-other".into()]
        }]
    );
    assert_eq!(
        desire.packages["kiosk"],
        Want {
            version: "1.0.0".into(),
            group: None
        }
    );
    // ... and a client without it gets nothing for that package.
    let desire = desired_for_client(&[&base, &tie_other], &catalog, &map(&[]));
    assert!(!desire.packages.contains_key("kiosk"));
    assert_eq!(desire.packages["vpn"].version, "1.0.0");
}

#[test]
fn unresolvable_requirements_keep_the_current_version_and_unwanted_packages_go() {
    let releases = [release("kiosk", "1.0.0", true)];
    let catalog = ReleaseCatalog::new(&releases);
    let wants_missing = group("g", 0, &[("kiosk", "^9")]);
    let desire = desired_for_client(
        &[&wants_missing],
        &catalog,
        &map(&[("kiosk", "1.0.0"), ("old-tool", "0.1.0")]),
    );
    assert_eq!(
        desire.packages["kiosk"],
        Want {
            version: "1.0.0".into(),
            group: None
        }
    );
    assert_eq!(desire.unresolved.len(), 1);
    assert!(!desire.packages.contains_key("old-tool"));
}

proptest! {
    #[test]
    fn resolve_returns_the_highest_matching_ready_version(
        versions in prop::collection::vec((0u64..3, 0u64..4, 0u64..4, any::<bool>(), any::<bool>()), 1..12),
        req in (0u64..3, 0u64..4, 0usize..4),
    ) {
        let releases: Vec<_> = versions
            .iter()
            .map(|(major, minor, patch, pre, ready)| {
                let version = if *pre { format!("{major}.{minor}.{patch}-rc.1") } else { format!("{major}.{minor}.{patch}") };
                release("p", &version, *ready)
            })
            .collect();
        let catalog = ReleaseCatalog::new(&releases);
        let text = match req.2 {
            0 => format!("^{}.{}", req.0, req.1),
            1 => format!("~{}.{}", req.0, req.1),
            2 => format!(">={}.{}.0", req.0, req.1),
            _ => format!("={}.{}.0", req.0, req.1),
        };
        let requirement = parse_version_req(&text).unwrap();
        let expected = releases
            .iter()
            .filter(|r| r.status.is_some())
            .filter_map(|r| r.spec.semver())
            .filter(|v| requirement.matches(v))
            .max();
        let got = catalog.resolve("p", &requirement).map(|info| info.version.clone());
        prop_assert_eq!(got.clone(), expected);
        // A requirement without a pre-release never resolves to one.
        prop_assert!(got.is_none_or(|v| v.pre.is_empty()));
    }
}
