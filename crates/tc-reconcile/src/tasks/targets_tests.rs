use std::collections::BTreeMap;

use tc_api::task::TaskTargets;
use tc_api::{ClientGroup, LabelSelector, ObjectMeta};

use super::targets::{TargetError, Targets, resolve_targets};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn group(name: &str, selector: &str) -> ClientGroup {
    ClientGroup {
        api_version: "thinfleet.io/v1".into(),
        kind: "ClientGroup".into(),
        metadata: ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: tc_api::ClientGroupSpec {
            selector: LabelSelector::parse(selector).unwrap(),
            ..Default::default()
        },
        status: None,
    }
}

fn fleet() -> Vec<(String, BTreeMap<String, String>)> {
    vec![
        (
            "kiosk-3".into(),
            labels(&[("site", "berlin"), ("role", "kiosk")]),
        ),
        (
            "kiosk-1".into(),
            labels(&[("site", "berlin"), ("role", "kiosk")]),
        ),
        (
            "desk-1".into(),
            labels(&[("site", "paris"), ("role", "desk")]),
        ),
        (
            "desk-2".into(),
            labels(&[("site", "berlin"), ("role", "desk")]),
        ),
        ("lab-1".into(), labels(&[("site", "lab")])),
    ]
}

fn resolve(targets: &TaskTargets, groups: &[ClientGroup]) -> Result<Targets, TargetError> {
    let fleet = fleet();
    resolve_targets(
        targets,
        groups,
        fleet.iter().map(|(name, labels)| {
            (name.as_str(), move |key: &str| {
                labels.get(key).map(String::as_str)
            })
        }),
    )
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

#[test]
fn targets_are_the_sorted_union_of_selector_names_and_group_members() {
    let groups = [group("paris", "site=paris"), group("kiosks", "role=kiosk")];
    let targets = TaskTargets {
        selector: Some(LabelSelector::parse("site=lab").unwrap()),
        clients: names(&["desk-2", "kiosk-1", "ghost-9", "desk-2", "attic-1"]),
        group: Some("kiosks".into()),
    };
    assert_eq!(
        resolve(&targets, &groups).unwrap(),
        Targets {
            clients: names(&["desk-2", "kiosk-1", "kiosk-3", "lab-1"]),
            unknown: names(&["attic-1", "ghost-9"]),
        }
    );
}

#[test]
fn each_part_alone_and_the_empty_selector() {
    let groups = [group("paris", "site=paris")];
    let only_group = TaskTargets {
        group: Some("paris".into()),
        ..Default::default()
    };
    assert_eq!(
        resolve(&only_group, &groups).unwrap().clients,
        names(&["desk-1"])
    );
    let everyone = TaskTargets {
        selector: Some(LabelSelector::default()),
        ..Default::default()
    };
    assert_eq!(
        resolve(&everyone, &groups).unwrap().clients,
        names(&["desk-1", "desk-2", "kiosk-1", "kiosk-3", "lab-1"])
    );
    let not_kiosks = TaskTargets {
        selector: Some(LabelSelector::parse("site=berlin,role!=kiosk").unwrap()),
        ..Default::default()
    };
    assert_eq!(
        resolve(&not_kiosks, &groups).unwrap().clients,
        names(&["desk-2"])
    );
    let nobody = TaskTargets {
        clients: names(&["ghost-1"]),
        ..Default::default()
    };
    assert_eq!(
        resolve(&nobody, &groups).unwrap(),
        Targets {
            clients: vec![],
            unknown: names(&["ghost-1"])
        }
    );
}

#[test]
fn a_missing_group_is_an_error_naming_it() {
    let targets = TaskTargets {
        clients: names(&["kiosk-1"]),
        group: Some("gone".into()),
        ..Default::default()
    };
    let error = resolve(&targets, &[group("paris", "site=paris")]).unwrap_err();
    assert_eq!(error, TargetError::UnknownGroup("gone".into()));
    assert!(error.to_string().contains("`gone`"));
}

/// The controller's shape: a name and a `&dyn Fn` label lookup per client.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<&'a str> + 'a>;

fn lookups(fleet: &[(String, BTreeMap<String, String>)]) -> Vec<(&str, Lookup<'_>)> {
    fleet
        .iter()
        .map(|(name, labels)| {
            let lookup: Lookup<'_> = Box::new(move |key: &str| labels.get(key).map(String::as_str));
            (name.as_str(), lookup)
        })
        .collect()
}

#[test]
fn label_lookups_may_be_trait_objects() {
    let fleet = fleet();
    let lookups = lookups(&fleet);
    let targets = TaskTargets {
        selector: Some(LabelSelector::parse("role=desk").unwrap()),
        ..Default::default()
    };
    let resolved = resolve_targets(
        &targets,
        &[],
        lookups.iter().map(|(name, lookup)| (*name, &**lookup)),
    )
    .unwrap();
    assert_eq!(resolved.clients, names(&["desk-1", "desk-2"]));
}
