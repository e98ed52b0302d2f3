//! Label selector matching and `-l` parsing.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tc_api::resources::AGENT_VERSION_LABEL;
use tc_api::version_order::compare_versions;
use tc_api::{LabelSelector, LabelSelectorRequirement, SelectorOperator};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

#[test]
fn matching_table() {
    use SelectorOperator::*;
    let berlin_x86 = labels(&[("site", "berlin"), ("arch", "x86_64")]);
    let paris = labels(&[("site", "paris")]);
    let none = labels(&[]);
    let cases: Vec<(&str, LabelSelector, [bool; 3])> = vec![
        (
            "empty selects all",
            LabelSelector::everything(),
            [true, true, true],
        ),
        (
            "matchLabels",
            LabelSelector {
                match_labels: labels(&[("site", "berlin")]),
                ..Default::default()
            },
            [true, false, false],
        ),
        (
            "In",
            LabelSelector {
                match_expressions: vec![requirement("site", In, &["berlin", "paris"])],
                ..Default::default()
            },
            [true, true, false],
        ),
        (
            "NotIn matches absent keys",
            LabelSelector {
                match_expressions: vec![requirement("site", NotIn, &["berlin"])],
                ..Default::default()
            },
            [false, true, true],
        ),
        (
            "Exists",
            LabelSelector {
                match_expressions: vec![requirement("arch", Exists, &[])],
                ..Default::default()
            },
            [true, false, false],
        ),
        (
            "DoesNotExist",
            LabelSelector {
                match_expressions: vec![requirement("arch", DoesNotExist, &[])],
                ..Default::default()
            },
            [false, true, true],
        ),
        (
            "all parts must hold",
            LabelSelector {
                match_labels: labels(&[("site", "paris")]),
                match_expressions: vec![requirement("arch", Exists, &[])],
            },
            [false, false, false],
        ),
    ];
    for (name, selector, expected) in cases {
        let got = [
            selector.matches(&berlin_x86),
            selector.matches(&paris),
            selector.matches(&none),
        ];
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn parse_table() {
    use SelectorOperator::*;
    let selector = LabelSelector::parse(
        "site=berlin, tier==gold,arch in (x86_64, aarch64),env notin (dev),gpu,!legacy,rack!=3",
    )
    .unwrap();
    assert_eq!(
        selector.match_labels,
        labels(&[("site", "berlin"), ("tier", "gold")])
    );
    assert_eq!(
        selector.match_expressions,
        vec![
            requirement("arch", In, &["x86_64", "aarch64"]),
            requirement("env", NotIn, &["dev"]),
            requirement("gpu", Exists, &[]),
            requirement("legacy", DoesNotExist, &[]),
            requirement("rack", NotIn, &["3"]),
        ]
    );
    assert!(LabelSelector::parse("").unwrap().is_empty());
    for bad in ["a in (b", "a in ()", "bad key=x", "a=b c", "a)=b"] {
        let error = LabelSelector::parse(bad).unwrap_err();
        assert_eq!(error.selector, bad);
    }
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "site",
        "arch",
        "tier",
        "example.com/rack",
        AGENT_VERSION_LABEL,
    ])
    .prop_map(String::from)
}

/// Versions with pre-releases, numbers past 9, one that is not semver and one that is no version.
const VERSIONS: [&str; 9] = [
    "0.1.0",
    "0.2.0-rc.1",
    "0.2.0-rc.2",
    "0.2.0-rc.10",
    "0.2.0",
    "0.10.0",
    "1.0.0",
    "1.0",
    "dev",
];

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(
        ["a", "b", "c", "x86_64"]
            .into_iter()
            .chain(VERSIONS)
            .collect::<Vec<_>>(),
    )
    .prop_map(String::from)
}

fn bound() -> impl Strategy<Value = String> {
    prop::sample::select(VERSIONS[..7].to_vec()).prop_map(String::from)
}

fn requirement_strategy() -> impl Strategy<Value = LabelSelectorRequirement> {
    use SelectorOperator::*;
    let set = (
        key(),
        prop::sample::select(vec![In, NotIn, Exists, DoesNotExist]),
        prop::collection::btree_set(value(), 1..3),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values: match operator {
                In | NotIn => values.into_iter().collect(),
                _ => vec![],
            },
        });
    let ordering =
        (prop::sample::select(vec![Lt, Le, Gt, Ge]), bound()).prop_map(|(operator, bound)| {
            LabelSelectorRequirement {
                key: AGENT_VERSION_LABEL.into(),
                operator,
                values: vec![bound],
            }
        });
    prop_oneof![set, ordering]
}

fn selector_strategy() -> impl Strategy<Value = LabelSelector> {
    (
        prop::collection::btree_map(key(), value(), 0..3),
        prop::collection::vec(requirement_strategy(), 0..4),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// The definition, written independently: every label pair and every expression must hold.
fn reference_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in &selector.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in &selector.match_expressions {
        let present = labels.get(&r.key);
        let ok = match r.operator {
            SelectorOperator::In => matches!(present, Some(v) if r.values.iter().any(|x| x == v)),
            SelectorOperator::NotIn => {
                !matches!(present, Some(v) if r.values.iter().any(|x| x == v))
            }
            SelectorOperator::Exists => present.is_some(),
            SelectorOperator::DoesNotExist => present.is_none(),
            ordering => {
                let bound = semver::Version::parse(&r.values[0]).unwrap();
                match present.map(|v| semver::Version::parse(v)) {
                    Some(Ok(version)) => {
                        let order = version.cmp_precedence(&bound);
                        match ordering {
                            SelectorOperator::Lt => order.is_lt(),
                            SelectorOperator::Le => order.is_le(),
                            SelectorOperator::Gt => order.is_gt(),
                            _ => order.is_ge(),
                        }
                    }
                    _ => false,
                }
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

proptest! {
    #[test]
    fn matches_agrees_with_the_definition(
        selector in selector_strategy(),
        labels in prop::collection::btree_map(key(), value(), 0..4),
    ) {
        prop_assert_eq!(selector.matches(&labels), reference_matches(&selector, &labels));
    }

    #[test]
    fn display_parses_back_to_an_equivalent_selector(
        selector in selector_strategy(),
        labels in prop::collection::btree_map(key(), value(), 0..4),
    ) {
        let parsed = LabelSelector::parse(&selector.to_string()).unwrap();
        prop_assert_eq!(parsed.matches(&labels), selector.matches(&labels));
    }

    #[test]
    fn adding_a_requirement_never_selects_more(
        selector in selector_strategy(),
        extra in requirement_strategy(),
        labels in prop::collection::btree_map(key(), value(), 0..4),
    ) {
        let mut narrower = selector.clone();
        narrower.match_expressions.push(extra);
        prop_assert!(!narrower.matches(&labels) || selector.matches(&labels));
    }
}

#[test]
fn agent_versions_compare_by_semver_precedence() {
    let version = |v: &str| labels(&[(AGENT_VERSION_LABEL, v), ("site", "berlin")]);
    let outdated = LabelSelector::parse("thinfleet.io/agent-version<0.2.0").unwrap();
    // Pre-releases come before their release; numbers compare as numbers, not as text.
    for (v, expected) in [
        ("0.1.0", true),
        ("0.1.99", true),
        ("0.2.0-rc.1", true),
        ("0.2.0", false),
        ("0.2.1", false),
        ("0.10.0", false),
        ("1.0.0-alpha", false),
    ] {
        assert_eq!(outdated.matches(&version(v)), expected, "{v} < 0.2.0");
    }
    let cases = [
        (
            "thinfleet.io/agent-version<=0.2.0",
            ["0.2.0", "0.2.0-rc.1"],
            ["0.2.1", "0.10.0"],
        ),
        (
            "thinfleet.io/agent-version>0.2.0-rc.2",
            ["0.2.0-rc.10", "0.2.0"],
            ["0.2.0-rc.2", "0.2.0-rc.1"],
        ),
        (
            "thinfleet.io/agent-version>=0.2.0",
            ["0.2.0", "0.10.0"],
            ["0.2.0-rc.10", "0.1.0"],
        ),
        (
            "thinfleet.io/agent-version=0.2.0",
            ["0.2.0", "0.2.0"],
            ["0.2.0-rc.1", "0.20.0"],
        ),
        (
            "thinfleet.io/agent-version!=0.2.0",
            ["0.1.0", "dev"],
            ["0.2.0", "0.2.0"],
        ),
        (
            "thinfleet.io/agent-version in (0.1.0,0.2.0)",
            ["0.1.0", "0.2.0"],
            ["0.3.0", "dev"],
        ),
        (
            "thinfleet.io/agent-version>=0.1.0,thinfleet.io/agent-version<0.2.0",
            ["0.1.0", "0.2.0-rc.1"],
            ["0.2.0", "0.0.9"],
        ),
        (
            "site=berlin,thinfleet.io/agent-version<1.0.0",
            ["0.9.0", "0.1.0"],
            ["1.0.0", "dev"],
        ),
    ];
    for (text, selected, not_selected) in cases {
        let selector = LabelSelector::parse(text).unwrap();
        for v in selected {
            assert!(selector.matches(&version(v)), "{text} should select {v}");
        }
        for v in not_selected {
            assert!(
                !selector.matches(&version(v)),
                "{text} should not select {v}"
            );
        }
    }
}

#[test]
fn versions_that_are_not_semver_and_missing_versions_match_no_comparison() {
    let none = labels(&[("site", "berlin")]);
    for v in ["dev", "1.0", "v1.0.0", "01.0.0", "1.0.0-"] {
        let labels = labels(&[(AGENT_VERSION_LABEL, v)]);
        for op in ["<", "<=", ">", ">="] {
            let selector =
                LabelSelector::parse(&format!("{AGENT_VERSION_LABEL}{op}0.2.0")).unwrap();
            assert!(!selector.matches(&labels), "{v} {op} 0.2.0");
            assert!(!selector.matches(&none), "no version {op} 0.2.0");
        }
        // It still has the label: existence tests see it.
        assert!(
            LabelSelector::parse(AGENT_VERSION_LABEL)
                .unwrap()
                .matches(&labels)
        );
    }
    let unreported = LabelSelector::parse(&format!("!{AGENT_VERSION_LABEL}")).unwrap();
    assert!(unreported.matches(&none));
    assert!(!unreported.matches(&labels(&[(AGENT_VERSION_LABEL, "0.1.0")])));
}

#[test]
fn ordering_parses_into_expressions_and_prints_back() {
    use SelectorOperator::*;
    let selector = LabelSelector::parse(
        "thinfleet.io/agent-version<0.2.0, thinfleet.io/agent-version <= 1.0.0-rc.1,\
         thinfleet.io/agent-version>0.1.0,thinfleet.io/agent-version>=0.0.1",
    )
    .unwrap();
    assert_eq!(
        selector.match_expressions,
        vec![
            requirement(AGENT_VERSION_LABEL, Lt, &["0.2.0"]),
            requirement(AGENT_VERSION_LABEL, Le, &["1.0.0-rc.1"]),
            requirement(AGENT_VERSION_LABEL, Gt, &["0.1.0"]),
            requirement(AGENT_VERSION_LABEL, Ge, &["0.0.1"]),
        ]
    );
    assert_eq!(
        selector.to_string(),
        "thinfleet.io/agent-version<0.2.0,thinfleet.io/agent-version<=1.0.0-rc.1,\
         thinfleet.io/agent-version>0.1.0,thinfleet.io/agent-version>=0.0.1"
    );
    // As a ClientGroup's selector writes it.
    let yaml: LabelSelector = serde_json::from_value(serde_json::json!({
        "matchExpressions": [{ "key": AGENT_VERSION_LABEL, "operator": "Lt", "values": ["0.2.0"] }]
    }))
    .unwrap();
    assert_eq!(
        yaml.match_expressions[0],
        requirement(AGENT_VERSION_LABEL, Lt, &["0.2.0"])
    );
}

#[test]
fn ordering_on_other_keys_or_without_a_version_is_refused_saying_where() {
    let error = LabelSelector::parse("site=berlin,rack<3").unwrap_err();
    assert!(
        error
            .message
            .contains("selector.matchExpressions[0].operator")
            && error
                .message
                .contains("applies only to `thinfleet.io/agent-version`")
            && error.message.contains("not to `rack`"),
        "{error}"
    );
    let error = LabelSelector::parse("thinfleet.io/agent-version<latest").unwrap_err();
    assert!(
        error
            .message
            .contains("selector.matchExpressions[0].values[0]")
            && error.message.contains("needs a semantic version")
            && error.message.contains("`latest`"),
        "{error}"
    );
    for bad in [
        "thinfleet.io/agent-version<",
        "thinfleet.io/agent-version<1.2",
        "thinfleet.io/agent-version<1.2.0+build",
        "thinfleet.io/agent-version<<1.2.0",
        "<1.2.0",
        "thinfleet.io/agent-version=<1.2.0",
    ] {
        let error = LabelSelector::parse(bad).unwrap_err();
        assert_eq!(error.selector, bad);
    }
    let mut errors = tc_api::validate::Errors::default();
    LabelSelector {
        match_expressions: vec![requirement(
            AGENT_VERSION_LABEL,
            SelectorOperator::Ge,
            &["0.1.0", "0.2.0"],
        )],
        ..Default::default()
    }
    .validate("spec.selector", &mut errors);
    let text = errors.to_string();
    assert!(
        text.contains("spec.selector.matchExpressions[0].values")
            && text.contains("exactly one value"),
        "{text}"
    );
}

proptest! {
    #[test]
    fn version_precedence_agrees_with_the_semver_crate(
        a in (0u64..3, 0u64..12, 0u64..3, prop::option::of("(alpha|beta|rc|[0-9]{1,2})(\\.(alpha|[0-9]{1,2}))?")),
        b in (0u64..3, 0u64..12, 0u64..3, prop::option::of("(alpha|beta|rc|[0-9]{1,2})(\\.(alpha|[0-9]{1,2}))?")),
    ) {
        let text = |(major, minor, patch, pre): (u64, u64, u64, Option<String>)| match pre {
            Some(pre) => format!("{major}.{minor}.{patch}-{pre}"),
            None => format!("{major}.{minor}.{patch}"),
        };
        let (a, b) = (text(a), text(b));
        let expected = match (semver::Version::parse(&a), semver::Version::parse(&b)) {
            (Ok(x), Ok(y)) => Some(x.cmp_precedence(&y)),
            _ => None,
        };
        prop_assert_eq!(compare_versions(&a, &b), expected, "{} vs {}", a, b);
    }
}
