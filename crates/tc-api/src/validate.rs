//! Field validation. Every check reports a field path (`spec.packages[0].version`) so the decoder
//! can turn it into file:line:column.

use std::fmt;

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, dotted, with `[i]` for list items.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// All invalid fields of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    /// Records an invalid field.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `Ok` when nothing was recorded.
    pub fn into_result(self) -> Result<(), Errors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", error.path, error.message)?;
        }
        Ok(())
    }
}

/// Longest DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// True for a DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// True for an object name: like a DNS label, but `.` is allowed inside so that a release can be
/// named after its version (`kiosk-browser-1.4.2`).
pub fn is_object_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Checks an object name (see [`is_object_name`]).
pub fn validate_object_name(name: &str, path: &str, errors: &mut Errors) {
    if !is_object_name(name) {
        errors.push(
            path,
            format!(
                "`{name}` is not a valid name: use at most 63 lowercase letters, digits, `-` and `.`, \
                 starting and ending with a letter or digit"
            ),
        );
    }
}

/// Checks a package name, a DNS label.
pub fn validate_name(name: &str, path: &str, errors: &mut Errors) {
    if !is_dns_label(name) {
        errors.push(
            path,
            format!(
                "`{name}` is not a valid name: use at most 63 lowercase letters, digits and `-`, \
                 starting and ending with a letter or digit"
            ),
        );
    }
}

pub(crate) fn is_label_name_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` and `.`.
pub fn validate_label_key(key: &str, path: &str, errors: &mut Errors) {
    let valid = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name_part(name),
        None => is_label_name_part(key),
    };
    if !valid {
        errors.push(
            path,
            format!(
                "`{key}` is not a valid label key: an optional DNS prefix and `/`, then at most 63 \
                 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
            ),
        );
    }
}

/// Checks a label value: empty, or like a label key's name part.
pub fn validate_label_value(value: &str, path: &str, errors: &mut Errors) {
    if !value.is_empty() && !is_label_name_part(value) {
        errors.push(
            path,
            format!(
                "`{value}` is not a valid label value: at most 63 letters, digits, `-`, `_` or `.`, \
                 starting and ending with a letter or digit"
            ),
        );
    }
}

/// Checks every key and value of a label map.
pub fn validate_labels(
    labels: &std::collections::BTreeMap<String, String>,
    path: &str,
    errors: &mut Errors,
) {
    for (key, value) in labels {
        let entry = format!("{path}.{key}");
        validate_label_key(key, &entry, errors);
        validate_label_value(value, &entry, errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for good in ["a", "kiosk-browser", "a1", "0", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "ä"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn object_names_allow_inner_dots() {
        assert!(is_object_name("kiosk-browser-1.4.2"));
        assert!(!is_object_name(".a"));
        assert!(!is_object_name("a."));
        assert!(!is_object_name("A.b"));
    }

    #[test]
    fn label_keys_and_values() {
        let check_key = |key: &str| {
            let mut errors = Errors::default();
            validate_label_key(key, "k", &mut errors);
            errors.0.is_empty()
        };
        for good in ["site", "thinfleet.io/arch", "a.b_c-d", "example.com/Rack_1"] {
            assert!(check_key(good), "{good}");
        }
        for bad in ["", "/x", "x/", "-x", "a/b/c", "Bad_Prefix/x", "x y"] {
            assert!(!check_key(bad), "{bad}");
        }
        let check_value = |value: &str| {
            let mut errors = Errors::default();
            validate_label_value(value, "v", &mut errors);
            errors.0.is_empty()
        };
        assert!(check_value(""));
        assert!(check_value("x86_64"));
        assert!(!check_value("a b"));
        assert!(!check_value(&"a".repeat(64)));
    }
}
