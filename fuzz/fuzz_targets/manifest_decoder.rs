//! Arbitrary bytes (lossily UTF-8) through the manifest decoder, `tc_api::decode_objects`, the
//! path every manifest takes (tcadm, the API's apply, the watched directory).
//!
//! Asserts:
//! * it never panics (and, with the runner's `-timeout` and `-rss_limit_mb`, never hangs or
//!   balloons: hostile input is refused quickly);
//! * a refusal lists between 1 and `MAX_ERRORS` errors, each naming this file and a line and
//!   column inside the input, with a message;
//! * the limits only refuse: decoding under tight limits either fails or gives exactly what the
//!   default limits give;
//! * what decodes is stable: the objects, written as JSON (as `tcadm get -o json` prints them)
//!   and decoded again, are the same objects.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tc_api::decode::{Limits, decode_objects_with};
use tc_api::{DecodeErrors, MAX_ERRORS, SourcedObject, decode_objects};

const FILE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let decoded = decode_objects(FILE, &text);
    check(&text, &decoded);

    let tight = tight_limits(&text);
    let limited = decode_objects_with(FILE, &text, &tight);
    check(&text, &limited);
    if let Ok(objects) = &limited {
        assert!(text.len() <= tight.max_bytes);
        assert_eq!(
            Ok(objects),
            decoded.as_ref(),
            "tight limits {tight:?} changed what decodes"
        );
    }

    if let Ok(objects) = &decoded {
        for sourced in objects {
            round_trip(sourced);
        }
    }
});

/// Limits well under the defaults, derived from the input so every limit is reached sometimes.
fn tight_limits(text: &str) -> Limits {
    let n = text.len();
    Limits {
        max_bytes: n.saturating_sub(n % 7),
        max_scalar_bytes: 4 + n % 61,
        max_depth: 1 + n % 9,
        max_nodes: 2 + n % 97,
    }
}

/// The invariants of one result.
fn check(text: &str, result: &Result<Vec<SourcedObject>, DecodeErrors>) {
    match result {
        Ok(objects) => {
            for sourced in objects {
                assert_eq!(sourced.file, FILE);
                assert_inside(
                    text,
                    sourced.position.line,
                    sourced.position.column,
                    "object",
                );
            }
        }
        Err(errors) => {
            let listed = errors.errors();
            assert!(!listed.is_empty(), "a refusal lists an error: {errors}");
            assert!(listed.len() <= MAX_ERRORS, "{} errors listed", listed.len());
            for error in listed {
                assert_eq!(error.file, FILE);
                assert!(!error.message.trim().is_empty(), "empty message: {error:?}");
                assert_inside(text, error.line, error.column, &error.to_string());
                let shown = error.to_string();
                assert!(
                    shown.starts_with(&format!("{FILE}:{}:{}: ", error.line, error.column)),
                    "{shown}"
                );
            }
        }
    }
}

/// `line` and `column` (from 1) lie inside `text` or just past its end, counting line breaks
/// as YAML does (`\n`, `\r\n` or `\r`) and columns in characters.
fn assert_inside(text: &str, line: usize, column: usize, what: &str) {
    let lines = yaml_lines(text);
    assert!(
        line >= 1 && line <= lines.len(),
        "line {line} outside the {} lines of the input: {what}",
        lines.len()
    );
    let width = lines[line - 1];
    assert!(
        column >= 1 && column <= width + 1,
        "column {column} outside line {line} of {width} characters: {what}"
    );
}

/// The length in characters of every line of `text` (there is always at least one).
fn yaml_lines(text: &str) -> Vec<usize> {
    let mut lines = vec![0];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(0);
            }
            '\n' => lines.push(0),
            _ => *lines.last_mut().expect("never empty") += 1,
        }
    }
    lines
}

/// An object written as JSON decodes to the same object.
fn round_trip(sourced: &SourcedObject) {
    let json = serde_json::to_string(&sourced.object).expect("objects serialize");
    let again = decode_objects("again.json", &json)
        .unwrap_or_else(|errors| panic!("{json}\ndoes not decode again:\n{errors}"));
    assert_eq!(again.len(), 1, "{json}");
    assert_eq!(again[0].object, sourced.object, "{json}");
}
