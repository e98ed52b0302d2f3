//! Every error of a request, in file order, up to a cap.

use std::fmt;

use super::DecodeError;

/// Most errors reported for one request (every file of it): a file with hundreds of mistakes,
/// or a hostile one, gives the first fifty in file order and a count of the others.
pub const MAX_ERRORS: usize = 50;
/// Every error found in a request, in file order: at most [`MAX_ERRORS`] are kept, the others
/// are counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeErrors {
    /// The errors kept, in the order they were found (files in request order, each document's
    /// errors by position).
    errors: Vec<DecodeError>,
    /// How many to keep.
    cap: usize,
    /// Errors found beyond `cap`: counted, not kept.
    not_listed: usize,
    /// True when the decoder stopped looking for errors somewhere (the cap was reached, or an
    /// object was too large to look at again), so there may be more than were counted.
    stopped_early: bool,
}

impl Default for DecodeErrors {
    fn default() -> Self {
        DecodeErrors::with_cap(MAX_ERRORS)
    }
}

impl DecodeErrors {
    /// No errors yet; keeps at most [`MAX_ERRORS`].
    pub fn new() -> Self {
        DecodeErrors::default()
    }

    /// No errors yet; keeps at most `cap` (at least one).
    pub fn with_cap(cap: usize) -> Self {
        DecodeErrors {
            errors: vec![],
            cap: cap.max(1),
            not_listed: 0,
            stopped_early: false,
        }
    }

    /// Records an error (only counted once the cap is reached).
    pub fn push(&mut self, error: DecodeError) {
        if self.errors.len() < self.cap {
            self.errors.push(error);
        } else {
            self.not_listed += 1;
        }
    }

    /// Adds every error of `other` after these.
    pub fn extend(&mut self, other: DecodeErrors) {
        for error in other.errors {
            self.push(error);
        }
        self.not_listed += other.not_listed;
        self.stopped_early |= other.stopped_early;
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.not_listed == 0
    }

    /// The errors kept, in file order.
    pub fn errors(&self) -> &[DecodeError] {
        &self.errors
    }

    /// The first error, if any.
    pub fn first(&self) -> Option<&DecodeError> {
        self.errors.first()
    }

    /// How many errors were found beyond the cap.
    pub fn not_listed(&self) -> usize {
        self.not_listed
    }

    /// How many more errors would still be kept.
    pub fn room(&self) -> usize {
        self.cap - self.errors.len()
    }

    /// Notes that the decoder stopped looking for errors before the end of something.
    pub fn mark_stopped_early(&mut self) {
        self.stopped_early = true;
    }

    /// The line that follows the errors when not all of them are listed, such as `and 12 more
    /// errors not listed (at most 50 are listed per request)`.
    pub fn summary(&self) -> Option<String> {
        let cap = self.cap;
        let errors = |n: usize| if n == 1 { "error" } else { "errors" };
        match (self.not_listed, self.stopped_early) {
            (0, false) => None,
            (0, true) => Some("further errors may follow once these are fixed".into()),
            (n, false) => Some(format!(
                "and {n} more {} not listed (at most {cap} are listed per request)",
                errors(n)
            )),
            (n, true) => Some(format!(
                "and at least {n} more {} not listed (at most {cap} are listed per request)",
                errors(n)
            )),
        }
    }

    /// `Ok(value)` when nothing was found.
    pub fn into_result<T>(self, value: T) -> Result<T, DecodeErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<DecodeError> for DecodeErrors {
    fn from(error: DecodeError) -> Self {
        let mut errors = DecodeErrors::new();
        errors.push(error);
        errors
    }
}

impl fmt::Display for DecodeErrors {
    /// One error per line, then the summary line when some are not listed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        if let Some(summary) = self.summary() {
            if !self.errors.is_empty() {
                f.write_str("\n")?;
            }
            f.write_str(&summary)?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeErrors {}
