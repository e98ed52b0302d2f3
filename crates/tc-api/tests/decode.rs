//! Table-driven tests of manifest decoding: good documents decode, every bad one reports the
//! expected file:line:column and field.

use std::time::{Duration, Instant};

use tc_api::decode::{Limits, decode_objects_with};
use tc_api::{IntOrPercent, Object, SelectorOperator, decode_objects};

const GROUP: &str = r#"apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: front-desk
  labels: { team: ops }
spec:
  selector:
    matchLabels: { site: berlin }
    matchExpressions:
      - { key: thinfleet.io/arch, operator: In, values: [x86_64] }
  priority: 10
  packages:
    - { name: kiosk-browser, version: "^1.4" }
    - name: vpn-profile
      version: "=2.0.1"
  rollout:
    maxUnavailable: 25%
  agent:
    heartbeatSeconds: 30
"#;

const RELEASE: &str = r#"---
apiVersion: thinfleet.io/v1
kind: PackageRelease
metadata:
  name: kiosk-browser-1.4.2
spec:
  package: kiosk-browser
  version: 1.4.2
  artifact:
    path: ../packages/kiosk-browser-1.4.2.zip
  hooks:
    healthCheck: { command: ["./health.sh"], timeoutSeconds: 30 }
"#;

#[test]
fn decodes_a_group_and_a_release_from_one_stream() {
    let text = format!("{GROUP}{RELEASE}");
    let objects = decode_objects("fleet.yaml", &text).unwrap();
    assert_eq!(objects.len(), 2);
    let Object::ClientGroup(group) = &objects[0].object else {
        panic!("expected a group")
    };
    assert_eq!(group.metadata.name, "front-desk");
    assert_eq!(group.metadata.labels["team"], "ops");
    assert_eq!(group.spec.priority, 10);
    assert_eq!(group.spec.packages[1].version, "=2.0.1");
    assert_eq!(
        group.spec.rollout.max_unavailable,
        IntOrPercent::Percent(25)
    );
    assert_eq!(
        group.spec.selector.match_expressions[0].operator,
        SelectorOperator::In
    );
    let Object::PackageRelease(release) = &objects[1].object else {
        panic!("expected a release")
    };
    assert_eq!(release.spec.version, "1.4.2");
    assert_eq!(
        release
            .spec
            .hooks
            .health_check
            .as_ref()
            .unwrap()
            .timeout_seconds,
        30
    );
    assert_eq!(objects[1].position.line, 20);
}

#[test]
fn json_documents_decode_too() {
    let json = r#"{"apiVersion":"thinfleet.io/v1","kind":"ClientGroup","metadata":{"name":"all"},
                   "spec":{"selector":{},"rollout":{"maxUnavailable":2}}}"#;
    let objects = decode_objects("all.json", json).unwrap();
    let Object::ClientGroup(group) = &objects[0].object else {
        panic!()
    };
    assert!(group.spec.selector.is_empty());
    assert_eq!(group.spec.rollout.max_unavailable, IntOrPercent::Int(2));
}

#[test]
fn empty_documents_and_comments_are_skipped() {
    let text = format!("# just a comment\n---\n---\n{GROUP}---\n# trailing\n");
    assert_eq!(decode_objects("f.yaml", &text).unwrap().len(), 1);
    assert!(decode_objects("f.yaml", "").unwrap().is_empty());
}

#[test]
fn null_values_mean_unset() {
    let text = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: a, labels: }\nspec:\n  selector: {}\n  packages:\n  # - { name: kiosk, version: \"^1\" }\n";
    let objects = decode_objects("a.yaml", text).unwrap();
    let Object::ClientGroup(group) = &objects[0].object else {
        panic!()
    };
    assert!(group.spec.packages.is_empty());
    let missing = decode_objects(
        "a.yaml",
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\nspec: { selector: {} }\n",
    )
    .unwrap_err();
    assert!(
        missing.errors()[0]
            .message
            .contains("missing field `metadata`"),
        "{missing}"
    );
}

#[test]
fn anchors_and_aliases_within_limits_work() {
    let text = r#"apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata: { name: a, labels: &l { site: berlin } }
spec:
  selector: { matchLabels: *l }
"#;
    let objects = decode_objects("a.yaml", text).unwrap();
    let Object::ClientGroup(group) = &objects[0].object else {
        panic!()
    };
    assert_eq!(group.spec.selector.match_labels["site"], "berlin");
}

/// One bad document: what to replace in GROUP or RELEASE, and what must be reported.
struct Bad {
    name: &'static str,
    text: String,
    line: usize,
    column: usize,
    field: Option<&'static str>,
    message: &'static str,
}

fn group_with(from: &str, to: &str) -> String {
    assert!(GROUP.contains(from), "{from}");
    GROUP.replacen(from, to, 1)
}

fn release_with(from: &str, to: &str) -> String {
    assert!(RELEASE.contains(from), "{from}");
    RELEASE.replacen(from, to, 1)
}

#[test]
fn bad_documents_report_file_line_column_and_field() {
    let cases = vec![
        Bad {
            name: "unknown field in spec",
            text: group_with("  priority: 10\n", "  priority: 10\n  colour: blue\n"),
            line: 12,
            column: 3,
            field: Some("spec.colour"),
            message: "unknown field `colour`",
        },
        Bad {
            name: "unknown field in a list item",
            text: group_with(
                "      version: \"=2.0.1\"",
                "      version: \"=2.0.1\"\n      pin: true",
            ),
            line: 16,
            column: 7,
            field: Some("spec.packages[1].pin"),
            message: "unknown field `pin`",
        },
        Bad {
            name: "wrong type",
            text: group_with("priority: 10", "priority: high"),
            line: 11,
            column: 3,
            field: Some("spec.priority"),
            message: "invalid type",
        },
        Bad {
            name: "bad semver requirement",
            text: group_with("\"^1.4\"", "\"one point four\""),
            line: 13,
            column: 30,
            field: Some("spec.packages[0].version"),
            message: "not a semver requirement",
        },
        Bad {
            name: "bad percentage",
            text: group_with("25%", "250%"),
            line: 17,
            column: 5,
            field: Some("spec.rollout.maxUnavailable"),
            message: "more than 100%",
        },
        Bad {
            name: "zero maxUnavailable",
            text: group_with("25%", "0"),
            line: 17,
            column: 5,
            field: Some("spec.rollout.maxUnavailable"),
            message: "at least one member",
        },
        Bad {
            name: "bad name",
            text: group_with("name: front-desk", "name: Front_Desk"),
            line: 4,
            column: 3,
            field: Some("metadata.name"),
            message: "not a valid name",
        },
        Bad {
            name: "In without values",
            text: group_with("operator: In, values: [x86_64]", "operator: In"),
            line: 10,
            column: 9,
            field: Some("spec.selector.matchExpressions[0].values"),
            message: "needs at least one value",
        },
        Bad {
            name: "unknown operator",
            text: group_with("operator: In", "operator: Near"),
            line: 10,
            column: 35,
            field: Some("spec.selector.matchExpressions[0].operator"),
            message: "unknown variant `Near`",
        },
        Bad {
            name: "bad label key",
            text: group_with("team: ops", "\"bad key\": ops"),
            line: 5,
            column: 13,
            field: Some("metadata.labels.bad key"),
            message: "not a valid label key",
        },
        Bad {
            name: "duplicate package",
            text: group_with("name: vpn-profile", "name: kiosk-browser"),
            line: 14,
            column: 7,
            field: Some("spec.packages[1].name"),
            message: "listed twice",
        },
        Bad {
            name: "heartbeat too short",
            text: group_with("heartbeatSeconds: 30", "heartbeatSeconds: 1"),
            line: 19,
            column: 5,
            field: Some("spec.agent.heartbeatSeconds"),
            message: "outside 5..=86400",
        },
        Bad {
            name: "missing spec",
            text: "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: x }\n".into(),
            line: 1,
            column: 1,
            field: None,
            message: "missing field `spec`",
        },
        Bad {
            name: "wrong apiVersion",
            text: group_with("thinfleet.io/v1", "thinfleet.io/v2"),
            line: 1,
            column: 1,
            field: Some("apiVersion"),
            message: "unsupported apiVersion `thinfleet.io/v2`",
        },
        Bad {
            name: "unknown kind",
            text: group_with("kind: ClientGroup", "kind: Deployment"),
            line: 2,
            column: 1,
            field: Some("kind"),
            message: "unknown kind `Deployment`",
        },
        Bad {
            name: "client objects are not applied",
            text: group_with("kind: ClientGroup", "kind: Client"),
            line: 2,
            column: 1,
            field: Some("kind"),
            message: "created when an agent enrols",
        },
        Bad {
            name: "release with a bad version",
            text: release_with("version: 1.4.2", "version: 1.4"),
            line: 8,
            column: 3,
            field: Some("spec.version"),
            message: "invalid type",
        },
        Bad {
            name: "release with a non-semver version",
            text: release_with("version: 1.4.2", "version: one"),
            line: 8,
            column: 3,
            field: Some("spec.version"),
            message: "not a semantic version",
        },
        Bad {
            name: "url without sha256",
            text: release_with(
                "path: ../packages/kiosk-browser-1.4.2.zip",
                "url: https://example.com/k.zip",
            ),
            line: 9,
            column: 3,
            field: Some("spec.artifact.sha256"),
            message: "required with `url`",
        },
        Bad {
            name: "bad sha256",
            text: release_with("path: ../packages/kiosk-browser-1.4.2.zip", "sha256: XYZ"),
            line: 10,
            column: 5,
            field: Some("spec.artifact.sha256"),
            message: "64 lowercase hex",
        },
        Bad {
            name: "hook timeout of zero",
            text: release_with("timeoutSeconds: 30", "timeoutSeconds: 0"),
            line: 12,
            column: 46,
            field: Some("spec.hooks.healthCheck.timeoutSeconds"),
            message: "outside 1..=86400",
        },
        Bad {
            name: "hooks on the agent's own release",
            text: release_with("package: kiosk-browser", "package: thinfleet-agent"),
            line: 12,
            column: 5,
            field: Some("spec.hooks.healthCheck"),
            message: "a thinfleet-agent release runs no hooks",
        },
        Bad {
            name: "unknown hook",
            text: release_with("healthCheck:", "livenessProbe:"),
            line: 12,
            column: 5,
            field: Some("spec.hooks.livenessProbe"),
            message: "unknown field `livenessProbe`",
        },
        Bad {
            name: "syntax error",
            text: group_with("  priority: 10\n", "  priority: [10\n"),
            line: 12,
            column: 11,
            field: None,
            message: "YAML syntax error",
        },
        Bad {
            name: "duplicate key",
            text: group_with("  priority: 10\n", "  priority: 10\n  priority: 11\n"),
            line: 12,
            column: 3,
            field: None,
            message: "duplicate key `priority`",
        },
        Bad {
            name: "a scalar document",
            text: "just a string\n".into(),
            line: 1,
            column: 1,
            field: None,
            message: "must be a mapping",
        },
    ];
    let mut failures = vec![];
    for case in &cases {
        match decode_objects("m.yaml", &case.text) {
            Ok(_) => failures.push(format!("{}: decoded, expected an error", case.name)),
            Err(errors) if errors.errors().len() != 1 => {
                failures.push(format!("{}: expected one error, got:\n{errors}", case.name))
            }
            Err(errors) => {
                let error = &errors.errors()[0];
                let got = (
                    error.file.as_str(),
                    error.line,
                    error.column,
                    error.field.as_deref(),
                );
                let want = ("m.yaml", case.line, case.column, case.field);
                if got != want || !error.message.contains(case.message) {
                    failures.push(format!(
                        "{}: got {got:?} `{}`, want {want:?} containing `{}`",
                        case.name, error.message, case.message
                    ));
                }
                let display = error.to_string();
                assert!(
                    display.starts_with(&format!("m.yaml:{}:{}: ", error.line, error.column)),
                    "{display}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn one_bad_document_fails_the_whole_file() {
    let text = format!("{GROUP}{}", release_with("version: 1.4.2", "version: one"));
    let errors = decode_objects("two.yaml", &text).unwrap_err();
    let error = errors.first().unwrap();
    assert_eq!(
        (error.line, error.field.as_deref()),
        (27, Some("spec.version"))
    );
}

fn assert_refused_quickly(name: &str, text: &str, message: &str) {
    assert_refused_quickly_with(name, text, &[message]);
}

fn assert_refused_quickly_with(name: &str, text: &str, messages: &[&str]) {
    let started = Instant::now();
    let errors = decode_objects_with("hostile.yaml", text, &Limits::default()).unwrap_err();
    let elapsed = started.elapsed();
    let error = errors.first().unwrap();
    assert!(
        messages.iter().any(|m| error.message.contains(m)),
        "{name}: {error}"
    );
    // Generous bound: the point is "not minutes, not gigabytes", on a shared machine.
    assert!(elapsed < Duration::from_secs(5), "{name} took {elapsed:?}");
}

#[test]
fn billion_laughs_is_refused() {
    let mut text = String::from(
        "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        let items = [previous.as_str(); 10].join(",");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    assert_refused_quickly("billion laughs", &text, "more than 1000000 nodes");
}

#[test]
fn deep_nesting_is_refused() {
    let depth = 100_000;
    let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // The parser's own recursion guard or ours, whichever trips first.
    assert_refused_quickly_with(
        "flow nesting",
        &text,
        &["deeper than the limit of 64", "recursion limit exceeded"],
    );
    let mut block = String::new();
    for level in 0..200 {
        block.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
    }
    assert_refused_quickly("block nesting", &block, "deeper than the limit");
}

#[test]
fn huge_scalars_and_files_are_refused() {
    let text = format!(
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: \"{}\"\n",
        "x".repeat(4 << 20)
    );
    assert_refused_quickly("long string", &text, "longer than the limit");
    let big = "# padding\n".repeat(2 << 20);
    assert_refused_quickly("big file", &big, "more than the limit");
}

/// Where `needle` first starts in `text`, as (line, column) from 1.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in the text"));
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..offset].matches('\n').count() + 1,
        offset - line_start + 1,
    )
}

/// One expected error: file, (line, column), field path, part of the message.
type Expected<'a> = (&'a str, (usize, usize), Option<&'a str>, &'a str);

/// Asserts that `errors` are exactly `expected`, in this order.
#[track_caller]
fn assert_errors(errors: &tc_api::DecodeErrors, expected: &[Expected<'_>]) {
    let got: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "got:\n{}\nwant:\n{expected:#?}",
        got.join("\n")
    );
    for (error, (file, (line, column), field, message)) in errors.errors().iter().zip(expected) {
        assert_eq!(
            (
                error.file.as_str(),
                error.line,
                error.column,
                error.field.as_deref()
            ),
            (*file, *line, *column, *field),
            "got:\n{}",
            got.join("\n")
        );
        assert!(
            error.message.contains(message),
            "`{error}` does not say `{message}`; got:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(errors.summary(), None, "{errors}");
}

const MANY_MISTAKES: &str = r#"apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: Front_Desk
  labels: { "bad key": ops }
  owner: me
spec:
  selector:
    matchExpressions:
      - { key: arch, operator: Near, values: [x86_64] }
      - { key: site, operator: In }
  priority: high
  colour: blue
  packages:
    - { name: kiosk, version: "one point four" }
  rollout:
    maxUnavailable: 250%
  agent:
    heartbeatSeconds: 1
"#;

#[test]
fn every_mistake_of_a_document_is_reported_in_file_order() {
    let text = MANY_MISTAKES;
    let errors = decode_objects("g.yaml", text).unwrap_err();
    assert_errors(
        &errors,
        &[
            (
                "g.yaml",
                at(text, "name: Front"),
                Some("metadata.name"),
                "not a valid name",
            ),
            (
                "g.yaml",
                at(text, "\"bad key\""),
                Some("metadata.labels.bad key"),
                "not a valid label key",
            ),
            (
                "g.yaml",
                at(text, "owner"),
                Some("metadata.owner"),
                "unknown field `owner`",
            ),
            (
                "g.yaml",
                at(text, "operator: Near"),
                Some("spec.selector.matchExpressions[0].operator"),
                "unknown variant `Near`",
            ),
            (
                "g.yaml",
                at(text, "{ key: site"),
                Some("spec.selector.matchExpressions[1].values"),
                "needs at least one value",
            ),
            (
                "g.yaml",
                at(text, "priority"),
                Some("spec.priority"),
                "invalid type",
            ),
            (
                "g.yaml",
                at(text, "colour"),
                Some("spec.colour"),
                "unknown field `colour`",
            ),
            (
                "g.yaml",
                at(text, "version: \"one"),
                Some("spec.packages[0].version"),
                "not a semver requirement",
            ),
            (
                "g.yaml",
                at(text, "maxUnavailable"),
                Some("spec.rollout.maxUnavailable"),
                "more than 100%",
            ),
            (
                "g.yaml",
                at(text, "heartbeatSeconds"),
                Some("spec.agent.heartbeatSeconds"),
                "outside 5..=86400",
            ),
        ],
    );
    // The display is one `file:line:column: field.path: message` line per error.
    let display = errors.to_string();
    assert_eq!(display.lines().count(), 10, "{display}");
    assert!(
        display
            .lines()
            .all(|line| line.starts_with("g.yaml:") && line.split(": ").count() >= 3),
        "{display}"
    );
}

#[test]
fn missing_fields_wrong_types_and_hooks_are_all_reported() {
    let text = r#"apiVersion: thinfleet.io/v2
kind: PackageRelease
metadata:
  labels: { team: 7 }
spec:
  version: "1.0"
  artifact:
    sha256: XYZ
  hooks:
    healthCheck: { command: [], timeoutSeconds: 0 }
    livenessProbe: { command: [./probe] }
"#;
    let errors = decode_objects("r.yaml", text).unwrap_err();
    assert_errors(
        &errors,
        &[
            (
                "r.yaml",
                (1, 1),
                Some("apiVersion"),
                "unsupported apiVersion `thinfleet.io/v2`",
            ),
            (
                "r.yaml",
                at(text, "metadata"),
                Some("metadata"),
                "missing field `name`",
            ),
            (
                "r.yaml",
                at(text, "team: 7"),
                Some("metadata.labels.team"),
                "invalid type",
            ),
            (
                "r.yaml",
                at(text, "spec"),
                Some("spec"),
                "missing field `package`",
            ),
            (
                "r.yaml",
                at(text, "version"),
                Some("spec.version"),
                "not a semantic version",
            ),
            (
                "r.yaml",
                at(text, "sha256"),
                Some("spec.artifact.sha256"),
                "64 lowercase hex",
            ),
            (
                "r.yaml",
                at(text, "command: []"),
                Some("spec.hooks.healthCheck.command"),
                "needs a program",
            ),
            (
                "r.yaml",
                at(text, "timeoutSeconds: 0"),
                Some("spec.hooks.healthCheck.timeoutSeconds"),
                "outside 1..=86400",
            ),
            (
                "r.yaml",
                at(text, "livenessProbe"),
                Some("spec.hooks.livenessProbe"),
                "unknown field `livenessProbe`",
            ),
        ],
    );
}

#[test]
fn wrong_values_are_replaced_by_placeholders_that_cause_no_further_errors() {
    // A wrong mapping, an unknown enum value and a bad timestamp deep in the status: each is
    // reported once, and what the decoder put in their place (an empty selector, the first
    // condition status, the epoch) is not reported again.
    let text = r#"apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata: { name: a }
spec:
  selector: 5
  packages: [ { name: k, version: "^1" }, 7 ]
status:
  conditions:
    - { type: Ready, status: Maybe, reason: X, lastTransitionTime: yesterday }
"#;
    let errors = decode_objects("s.yaml", text).unwrap_err();
    assert_errors(
        &errors,
        &[
            (
                "s.yaml",
                at(text, "selector"),
                Some("spec.selector"),
                "invalid type",
            ),
            (
                "s.yaml",
                at(text, "7 ]"),
                Some("spec.packages[1]"),
                "invalid type",
            ),
            (
                "s.yaml",
                at(text, "status: Maybe"),
                Some("status.conditions[0].status"),
                "unknown variant `Maybe`",
            ),
            (
                "s.yaml",
                at(text, "lastTransitionTime"),
                Some("status.conditions[0].lastTransitionTime"),
                "not an RFC 3339 timestamp",
            ),
        ],
    );
}

#[test]
fn errors_of_several_documents_and_files_come_in_file_order() {
    let first = format!(
        "{}{}",
        group_with("priority: 10", "priority: high"),
        release_with("version: 1.4.2", "version: one")
    );
    let second = format!(
        "{}---\napiVersion: thinfleet.io/v1\nkind: [\n",
        group_with("name: front-desk", "name: Front")
    );
    let mut errors = tc_api::DecodeErrors::new();
    let limits = Limits::default();
    let good = tc_api::decode::decode_objects_into("a.yaml", &first, &limits, &mut errors);
    assert!(good.is_empty());
    let good = tc_api::decode::decode_objects_into("b.yaml", &second, &limits, &mut errors);
    assert!(good.is_empty());
    let release_version = at(&first, "version: one");
    assert_errors(
        &errors,
        &[
            ("a.yaml", (11, 3), Some("spec.priority"), "invalid type"),
            (
                "a.yaml",
                release_version,
                Some("spec.version"),
                "not a semantic version",
            ),
            ("b.yaml", (4, 3), Some("metadata.name"), "not a valid name"),
            ("b.yaml", (23, 1), None, "YAML syntax error"),
        ],
    );
}

#[test]
fn errors_are_capped_per_request_and_the_rest_counted() {
    // 120 documents with one mistake each: the first 50 are listed, the other 70 counted.
    let bad = group_with("priority: 10", "priority: high");
    let text: String = (0..120).map(|_| format!("---\n{bad}")).collect();
    let errors = decode_objects("many.yaml", &text).unwrap_err();
    assert_eq!(errors.errors().len(), tc_api::MAX_ERRORS);
    assert_eq!(errors.not_listed(), 70);
    let lines: Vec<usize> = errors.errors().iter().map(|e| e.line).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{lines:?}");
    assert_eq!(
        errors.summary().as_deref(),
        Some("and 70 more errors not listed (at most 50 are listed per request)")
    );
    assert!(
        errors
            .to_string()
            .ends_with("\nand 70 more errors not listed (at most 50 are listed per request)")
    );

    // One document with 200 bad labels: validation finds them all, 50 are listed.
    let labels: String = (0..200)
        .map(|i| format!("    \"bad key {i}\": x\n"))
        .collect();
    let text = group_with("  labels: { team: ops }\n", &format!("  labels:\n{labels}"));
    let errors = decode_objects("labels.yaml", &text).unwrap_err();
    assert_eq!(errors.errors().len(), 50);
    assert_eq!(errors.not_listed(), 150);
    assert!(
        errors
            .errors()
            .iter()
            .all(|e| e.message.contains("not a valid label key"))
    );
}

#[test]
fn a_document_with_a_huge_number_of_mistakes_costs_a_bounded_number_of_passes() {
    // Each unknown field costs one more deserialization pass over the object. A large object gets
    // only as many passes as the work budget allows (fewer than the cap), so decoding stays
    // linear in its size; what was found is listed, with a note that more may follow.
    let unknown: String = (0..100_000).map(|i| format!("  unknown{i}: x\n")).collect();
    let text = group_with("  priority: 10\n", &unknown);
    let errors = decode_objects("hostile.yaml", &text).unwrap_err();
    assert!(errors.errors().len() < tc_api::MAX_ERRORS, "{errors}");
    assert!(
        errors
            .errors()
            .iter()
            .all(|e| e.message.starts_with("unknown field `unknown")),
        "{errors}"
    );
    assert_eq!(
        errors.summary().as_deref(),
        Some("further errors may follow once these are fixed")
    );
    // A small object with the same kind of mistakes has every one of them listed.
    let unknown: String = (0..20).map(|i| format!("  unknown{i}: x\n")).collect();
    let text = group_with("  priority: 10\n", &unknown);
    let errors = decode_objects("small.yaml", &text).unwrap_err();
    assert_eq!(errors.errors().len(), 20, "{errors}");
    assert_eq!(errors.summary(), None);

    // Many small documents with several mistakes each: once the cap is reached, each further
    // document is looked at no more than it takes to count it.
    let text: String = (0..2_000)
        .map(|_| format!("---\n{MANY_MISTAKES}"))
        .collect();
    let errors = decode_objects("many.yaml", &text).unwrap_err();
    assert_eq!(errors.errors().len(), tc_api::MAX_ERRORS);
    assert!(errors.not_listed() >= 2_000 - 5, "{}", errors.not_listed());
    assert!(
        errors.summary().unwrap().starts_with("and at least 1"),
        "{errors}"
    );
}

const LIST: &str = r#"apiVersion: thinfleet.io/v1
kind: ClientGroupList
items:
- apiVersion: thinfleet.io/v1
  kind: ClientGroup
  metadata:
    name: a
  spec:
    selector: {}
- apiVersion: thinfleet.io/v1
  kind: ClientGroup
  metadata:
    name: b
  spec:
    selector: {}
    priority: 3
"#;

#[test]
fn list_documents_give_their_items_with_their_own_positions() {
    let objects = decode_objects("list.yaml", LIST).unwrap();
    let names: Vec<(&str, usize)> = objects
        .iter()
        .map(|o| (o.object.name(), o.position.line))
        .collect();
    assert_eq!(names, [("a", 4), ("b", 10)]);

    let bad = LIST.replace("priority: 3", "priority: high");
    let errors = decode_objects("list.yaml", &bad).unwrap_err();
    assert_errors(
        &errors,
        &[(
            "list.yaml",
            at(&bad, "priority"),
            Some("items[1].spec.priority"),
            "invalid type",
        )],
    );

    let bad = LIST
        .replace("kind: ClientGroupList\n", "kind: List\ncolour: red\n")
        .replace("name: a", "name: A");
    let errors = decode_objects("list.yaml", &bad).unwrap_err();
    assert_errors(
        &errors,
        &[
            (
                "list.yaml",
                (3, 1),
                Some("colour"),
                "unknown field `colour`",
            ),
            (
                "list.yaml",
                at(&bad, "name: A"),
                Some("items[0].metadata.name"),
                "not a valid name",
            ),
        ],
    );

    let errors = decode_objects(
        "list.yaml",
        "apiVersion: thinfleet.io/v1\nkind: List\nitems: 3\n",
    )
    .unwrap_err();
    assert_errors(
        &errors,
        &[(
            "list.yaml",
            (3, 1),
            Some("items"),
            "must be a list of objects",
        )],
    );
}

/// The fuzzer's first find: a syntax error at the very end of a file whose last line has no line
/// break was reported on a line after the last one (`x.yaml:2:1` for a file of one line), which
/// editors cannot jump to. It is reported just after the last character instead.
#[test]
fn syntax_error_at_the_end_of_a_file_without_a_final_newline_is_reported_inside_it() {
    let cases = [
        ("a: b\nc", (2, 2)),
        ("- a\nb", (2, 2)),
        ("a:\n  b\nc", (3, 2)),
        ("a: |\n b\r\nc", (3, 2)),
        ("[a", (1, 3)),
        ("{a: b", (1, 6)),
        // With a final line break the end of the file is the start of the empty last line.
        ("a: b\nc\n", (3, 1)),
    ];
    for (text, expected) in cases {
        let errors = decode_objects("x.yaml", text).unwrap_err();
        let error = errors.first().unwrap();
        assert_eq!((error.line, error.column), expected, "{text:?}: {error}");
    }
}

/// Found by fuzzing too: the parser counts the columns of a directive in bytes, so a syntax error
/// after non-ASCII text in one (`%é` followed by a control character) named a column past the end
/// of its line. Its column is kept within the line (at worst just after its last character).
#[test]
fn syntax_error_in_a_directive_with_non_ascii_text_is_reported_inside_its_line() {
    for (text, expected) in [("%\u{fffd}\0\n", (1, 4)), ("%éééé\0\r\nx", (1, 7))] {
        let errors = decode_objects("x.yaml", text).unwrap_err();
        let error = errors.first().unwrap();
        assert!(error.message.contains("unprintable"), "{error}");
        assert_eq!((error.line, error.column), expected, "{text:?}: {error}");
    }
}

/// Found by fuzzing as well: an error about a whole document that ends its file without a final
/// line break (`? ` is a mapping with one empty key) was placed where the parser saw the mapping
/// start, on the line after the last one. Every position the parser reports is kept inside the
/// input, not only those of syntax errors.
#[test]
fn document_error_at_the_end_of_a_file_without_a_final_newline_is_reported_inside_it() {
    for (text, expected) in [("? ", (1, 3)), ("\n\n? ", (3, 3))] {
        let errors = decode_objects("x.yaml", text).unwrap_err();
        let error = errors.first().unwrap();
        assert!(
            error.message.contains("missing field `apiVersion`"),
            "{error}"
        );
        assert_eq!((error.line, error.column), expected, "{text:?}: {error}");
    }
}

/// A signature made by `minisign -S` (a `.minisig` file), as a YAML block scalar.
const SIGNATURE: &str = "untrusted comment: signature from minisign secret key
RUSUGzAijdwTU925mX/MFY/YS04sloQ/SRui8LwJpg9Jl4kmag59UXtIFfTMRWcS2u//kDjBJxFOLHxbg11FtdJvgyWOiV5bwgU=
trusted comment: timestamp:1796534031\tfile:a.zip\thashed
sT3WPBVD9J0UfhIm8ab9NhZ5SGpWp8vidEBujPnm6a2NkrJ4a0vrXxuQIWtoKxCZJOAB3vaSKTMNz4Ukobf7Cg==
";

fn release_signed_with(signature: &str) -> String {
    let indented: String = signature
        .lines()
        .map(|line| format!("      {line}\n"))
        .collect();
    release_with(
        "    path: ../packages/kiosk-browser-1.4.2.zip\n",
        &format!("    path: ../packages/kiosk-browser-1.4.2.zip\n    signature: |\n{indented}"),
    )
}

#[test]
fn a_release_carries_its_minisign_signature() {
    let objects = decode_objects("r.yaml", &release_signed_with(SIGNATURE)).unwrap();
    let Object::PackageRelease(release) = &objects[0].object else {
        panic!("not a release");
    };
    assert_eq!(release.spec.artifact.signature.as_deref(), Some(SIGNATURE));
}

#[test]
fn a_signature_that_is_not_minisign_is_refused_with_its_field() {
    let garbled = SIGNATURE.replace("RUSUGzAij", "RUSU!!Aij");
    let errors = decode_objects("r.yaml", &release_signed_with(&garbled)).unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("spec.artifact.signature"), "{text}");
    assert!(text.contains("is not a minisign signature"), "{text}");

    let errors = decode_objects("r.yaml", &release_signed_with("just some words\n")).unwrap_err();
    assert!(
        errors.to_string().contains("spec.artifact.signature"),
        "{errors}"
    );
}

#[test]
fn an_oversized_signature_is_refused() {
    let padded = SIGNATURE.replace(
        "trusted comment: timestamp",
        &format!("trusted comment: {}timestamp", "x".repeat(5000)),
    );
    let errors = decode_objects("r.yaml", &release_signed_with(&padded)).unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("spec.artifact.signature"), "{text}");
    assert!(text.contains("4096 bytes"), "{text}");
}
