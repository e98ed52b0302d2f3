//! Label selector matching and `-l` parsing.

use std::collections::BTreeMap;

use proptest::prelude::*;
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
    prop::sample::select(vec!["site", "arch", "tier", "example.com/rack"]).prop_map(String::from)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "x86_64"]).prop_map(String::from)
}

fn requirement_strategy() -> impl Strategy<Value = LabelSelectorRequirement> {
    use SelectorOperator::*;
    (
        key(),
        prop::sample::select(vec![In, NotIn, Exists, DoesNotExist]),
        prop::collection::btree_set(value(), 1..3),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values: match operator {
                In | NotIn => values.into_iter().collect(),
                Exists | DoesNotExist => vec![],
            },
        })
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
