//! Semantic-version precedence (semver.org §11) on text, without allocating: the ordering
//! operators of label selectors compare `thinfleet.io/agent-version` with it for every client a
//! selector is matched against (group membership in every reconcile pass, client listings), so
//! it parses both sides in place instead of building `semver::Version`s.

use std::cmp::Ordering;

/// A version as borrowed parts: `MAJOR.MINOR.PATCH[-PRE]` (build metadata dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRef<'a> {
    major: u64,
    minor: u64,
    patch: u64,
    /// The pre-release identifiers, dot-separated; empty for a release.
    pre: &'a str,
}

impl<'a> VersionRef<'a> {
    /// Parses a semantic version (`1.2.3`, `1.2.3-rc.1`, `1.2.3+build.5`); None when the text
    /// is not one (`1.2`, `v1.2.3`, `01.2.3`, `1.2.3-`, `1.2.3-01`).
    pub fn parse(text: &'a str) -> Option<VersionRef<'a>> {
        let core_and_pre = match text.split_once('+') {
            Some((head, build)) => {
                if !identifiers_valid(build, false) {
                    return None;
                }
                head
            }
            None => text,
        };
        let (core, pre) = match core_and_pre.split_once('-') {
            Some((core, pre)) => {
                if !identifiers_valid(pre, true) {
                    return None;
                }
                (core, pre)
            }
            None => (core_and_pre, ""),
        };
        let mut numbers = core.split('.');
        let major = numeric(numbers.next()?)?;
        let minor = numeric(numbers.next()?)?;
        let patch = numeric(numbers.next()?)?;
        if numbers.next().is_some() {
            return None;
        }
        Some(VersionRef {
            major,
            minor,
            patch,
            pre,
        })
    }

    /// Precedence: numbers first, a pre-release before its release, pre-release identifiers
    /// compared one by one (numeric ones as numbers and before alphanumeric ones, a shorter
    /// list before a longer one it starts).
    pub fn precedence(&self, other: &VersionRef<'_>) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => compare_pre(self.pre, other.pre),
            })
    }
}

/// The precedence of two version texts; None when either is not a semantic version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    Some(VersionRef::parse(a)?.precedence(&VersionRef::parse(b)?))
}

/// A numeric part: digits, no leading zero, within u64.
fn numeric(part: &str) -> Option<u64> {
    let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits || (part.len() > 1 && part.starts_with('0')) {
        return None;
    }
    part.parse().ok()
}

/// Dot-separated non-empty identifiers of `[0-9A-Za-z-]`; pre-release numeric identifiers have
/// no leading zero.
fn identifiers_valid(text: &str, pre_release: bool) -> bool {
    text.split('.').all(|identifier| {
        !identifier.is_empty()
            && identifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !(pre_release
                && identifier.len() > 1
                && identifier.starts_with('0')
                && identifier.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = compare_identifier(x, y);
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn compare_identifier(x: &str, y: &str) -> Ordering {
    let x_numeric = x.bytes().all(|b| b.is_ascii_digit());
    let y_numeric = y.bytes().all(|b| b.is_ascii_digit());
    match (x_numeric, y_numeric) {
        // No leading zeros: a longer number is a bigger one, of any length.
        (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => x.cmp(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_is_in_order() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "1.10.0",
            "2.0.0",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare_versions(a, b), Some(i.cmp(&j)), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn build_metadata_does_not_count_and_invalid_versions_do_not_compare() {
        assert_eq!(
            compare_versions("1.2.0+build.5", "1.2.0"),
            Some(Ordering::Equal)
        );
        for bad in [
            "",
            "1",
            "1.2",
            "v1.2.3",
            "01.2.3",
            "1.02.3",
            "1.2.3.4",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3-a..b",
            "1.2.3+",
            "1.2.3_x",
            "1.2.x",
            "-1.2.3",
            "dev",
            "1.2.3-a_b",
        ] {
            assert_eq!(VersionRef::parse(bad), None, "{bad:?}");
            assert_eq!(compare_versions(bad, "1.2.3"), None, "{bad:?}");
        }
    }
}
