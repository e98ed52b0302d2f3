//! Untrusted manifests never panic the decoder: arbitrary text and mutations of a valid manifest
//! either decode or fail with positions inside the input, and never more than the cap of errors.

use proptest::prelude::*;
use tc_api::{MAX_ERRORS, decode_objects};

const VALID: &str = "apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: front-desk
  labels: { team: ops }
spec:
  selector:
    matchLabels: { site: berlin }
    matchExpressions:
      - { key: arch, operator: In, values: [x86_64] }
  packages:
    - { name: kiosk-browser, version: \"^1.4\" }
  rollout: { maxUnavailable: 25% }
---
apiVersion: thinfleet.io/v1
kind: PackageRelease
metadata: { name: kiosk-browser-1.4.2 }
spec:
  package: kiosk-browser
  version: 1.4.2
  artifact: { sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 }
  hooks: { healthCheck: { command: [./health.sh], timeoutSeconds: 30 } }
";

fn check(text: &str) {
    if let Err(errors) = decode_objects("fuzz.yaml", text) {
        assert!(!errors.errors().is_empty(), "{errors}");
        assert!(errors.errors().len() <= MAX_ERRORS, "{errors}");
        let lines = text.lines().count().max(1) + 1;
        for error in errors.errors() {
            assert!(
                error.line >= 1 && error.line <= lines,
                "line {} of {lines}: {error}",
                error.line
            );
            assert!(error.column >= 1, "{error}");
            assert!(!error.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        check(&text);
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in "[a-z:{}\\[\\],&*!|>'\"#\\- \\n0-9.%^~=]{0,400}") {
        check(&text);
    }

    #[test]
    fn mutated_manifests_never_panic(
        cut in 0usize..VALID.len(),
        position in 0usize..VALID.len(),
        insert in "[:{}\\[\\]&*!|>'\"#\\- \\n\\t]{1,4}",
    ) {
        check(&VALID[..cut]);
        let mut mutated = VALID.to_string();
        let position = (0..=position).rev().find(|p| mutated.is_char_boundary(*p)).unwrap_or(0);
        mutated.insert_str(position, &insert);
        check(&mutated);
    }
}
