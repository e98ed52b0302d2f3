use jiff::Timestamp as Instant;
use jiff::tz::TimeZone;
use proptest::prelude::*;
use tc_api::Timestamp;

use super::schedule::{Schedule, ScheduleError};

fn utc(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn schedule(cron: &str, zone: &str) -> Schedule {
    Schedule::parse(cron, Some(zone)).unwrap()
}

/// Fire times strictly after `from` and up to `until`.
fn fires(schedule: &Schedule, from: &str, until: &str) -> Vec<Timestamp> {
    let until = utc(until);
    let mut at = utc(from);
    let mut out = Vec::new();
    while let Some(next) = schedule.next_after(at) {
        if next > until {
            break;
        }
        assert!(next > at, "{next} is not after {at}");
        out.push(next);
        at = next;
    }
    out
}

/// The local wall-clock times (`2026-03-29T03:00`) of instants in `zone`.
fn local(times: &[Timestamp], zone: &str) -> Vec<String> {
    let zone = TimeZone::get(zone).unwrap();
    times
        .iter()
        .map(|at| {
            let instant = Instant::from_millisecond(at.unix_millis() as i64).unwrap();
            instant
                .to_zoned(zone.clone())
                .datetime()
                .strftime("%Y-%m-%dT%H:%M")
                .to_string()
        })
        .collect()
}

fn text(times: &[Timestamp]) -> Vec<String> {
    times.iter().map(ToString::to_string).collect()
}

#[test]
fn bad_expressions_and_zones_say_what_is_wrong() {
    let error = Schedule::parse("61 * * * *", None).unwrap_err();
    let message = error.to_string();
    assert_eq!(
        message,
        "cron expression `61 * * * *`: minute field `61` (0-59): Component error: Number out of bounds."
    );
    let message = Schedule::parse("0 7 * * MON-XYZ", None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("day-of-week field"), "{message}");
    let message = Schedule::parse("0 24 * * *", None).unwrap_err().to_string();
    assert!(message.contains("hour field"), "{message}");
    assert_eq!(
        Schedule::parse("0 0 7 * * *", None).unwrap_err(),
        ScheduleError::FieldCount {
            cron: "0 0 7 * * *".into(),
            found: 6
        }
    );
    assert!(matches!(
        Schedule::parse("  ", None),
        Err(ScheduleError::FieldCount { found: 0, .. })
    ));
    let error = Schedule::parse("0 7 * * *", Some("Europe/Atlantis")).unwrap_err();
    assert_eq!(
        error,
        ScheduleError::UnknownTimeZone("Europe/Atlantis".into())
    );
    assert!(error.to_string().contains("`Europe/Atlantis`"));
    assert_eq!(
        Schedule::parse("0 0 30 2 *", None).unwrap_err(),
        ScheduleError::NeverFires {
            cron: "0 0 30 2 *".into()
        }
    );
}

#[test]
fn utc_is_the_default_zone_and_fire_times_are_strictly_after() {
    let hourly = Schedule::parse("0 * * * *", None).unwrap();
    let fire = utc("2026-06-01T10:00:00Z");
    assert_eq!(
        hourly.next_after(utc("2026-06-01T09:59:59.999Z")),
        Some(fire)
    );
    assert_eq!(
        hourly.next_after(fire),
        Some(utc("2026-06-01T11:00:00Z")),
        "strictly after"
    );
    assert_eq!(
        hourly.next_after(utc("2026-06-01T10:00:00.001Z")),
        Some(utc("2026-06-01T11:00:00Z"))
    );
    assert_eq!(hourly.last_at_or_before(fire), Some(fire));
    assert_eq!(
        hourly.last_at_or_before(utc("2026-06-01T10:59:59.999Z")),
        Some(fire)
    );
    assert_eq!(
        Schedule::parse("@daily", Some("UTC"))
            .unwrap()
            .next_after(fire),
        Some(utc("2026-06-02T00:00:00Z"))
    );
}

#[test]
fn names_ranges_steps_and_lists() {
    let every = Schedule::parse("0-30/15 9,17 * JAN-MAR MON-FRI", None).unwrap();
    // 2026-01-01 is a Thursday.
    assert_eq!(
        text(&fires(
            &every,
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z"
        )),
        [
            "2026-01-01T09:00:00.000Z",
            "2026-01-01T09:15:00.000Z",
            "2026-01-01T09:30:00.000Z",
            "2026-01-01T17:00:00.000Z",
            "2026-01-01T17:15:00.000Z",
            "2026-01-01T17:30:00.000Z",
        ]
    );
    // Weekend skipped; April is outside JAN-MAR.
    assert_eq!(
        every.next_after(utc("2026-01-02T17:30:00Z")),
        Some(utc("2026-01-05T09:00:00Z"))
    );
    assert_eq!(
        every.next_after(utc("2026-03-31T17:30:00Z")),
        Some(utc("2027-01-01T09:00:00Z"))
    );
}

#[test]
fn both_day_fields_restricted_match_either_day_vixie_or() {
    let thirteenth_or_friday = Schedule::parse("0 0 13 * FRI", None).unwrap();
    assert_eq!(
        text(&fires(
            &thirteenth_or_friday,
            "2026-01-01T00:00:00Z",
            "2026-01-31T00:00:00Z"
        )),
        [
            "2026-01-02T00:00:00.000Z",
            "2026-01-09T00:00:00.000Z",
            "2026-01-13T00:00:00.000Z", // a Tuesday
            "2026-01-16T00:00:00.000Z",
            "2026-01-23T00:00:00.000Z",
            "2026-01-30T00:00:00.000Z",
        ]
    );
}

#[test]
fn weekday_mornings_in_berlin_follow_the_local_clock() {
    let mornings = schedule("0 7 * * 1-5", "Europe/Berlin");
    // CET (UTC+1) until 2026-03-29, CEST (UTC+2) after: 06:00 UTC, then 05:00 UTC.
    assert_eq!(
        text(&fires(
            &mornings,
            "2026-03-26T12:00:00Z",
            "2026-03-31T12:00:00Z"
        )),
        [
            "2026-03-27T06:00:00.000Z", // Friday, CET
            "2026-03-30T05:00:00.000Z", // Monday, CEST; no weekend
            "2026-03-31T05:00:00.000Z",
        ]
    );
    // And back on 2026-10-25 (a Sunday).
    assert_eq!(
        text(&fires(
            &mornings,
            "2026-10-22T12:00:00Z",
            "2026-10-27T12:00:00Z"
        )),
        [
            "2026-10-23T05:00:00.000Z",
            "2026-10-26T06:00:00.000Z",
            "2026-10-27T06:00:00.000Z",
        ]
    );
}

#[test]
fn berlin_spring_forward_a_skipped_fixed_time_fires_once_right_after_the_gap() {
    // 2026-03-29 02:00 CET becomes 03:00 CEST (01:00 UTC).
    for cron in ["0 2 * * *", "30 2 * * *"] {
        let nightly = schedule(cron, "Europe/Berlin");
        let times = fires(&nightly, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z");
        assert_eq!(times.len(), 3, "{cron}: one a day: {:?}", text(&times));
        assert_eq!(times[1], utc("2026-03-29T01:00:00Z"), "{cron}");
        assert_eq!(local(&times[1..2], "Europe/Berlin"), ["2026-03-29T03:00"]);
    }
    let half_past = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        text(&fires(
            &half_past,
            "2026-03-27T12:00:00Z",
            "2026-03-30T12:00:00Z"
        )),
        [
            "2026-03-28T01:30:00.000Z",
            "2026-03-29T01:00:00.000Z",
            "2026-03-30T00:30:00.000Z",
        ]
    );
}

#[test]
fn berlin_fall_back_a_repeated_fixed_time_fires_once() {
    // 2026-10-25 03:00 CEST becomes 02:00 CET (01:00 UTC): 02:00-02:59 happens twice.
    let half_past = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        text(&fires(
            &half_past,
            "2026-10-23T12:00:00Z",
            "2026-10-26T12:00:00Z"
        )),
        [
            "2026-10-24T00:30:00.000Z",
            "2026-10-25T00:30:00.000Z", // CEST, the first pass
            "2026-10-26T01:30:00.000Z", // CET
        ]
    );
    // From inside the second pass, the repeated 02:30 has already fired.
    assert_eq!(
        half_past.next_after(utc("2026-10-25T01:10:00Z")),
        Some(utc("2026-10-26T01:30:00Z"))
    );
    assert_eq!(
        half_past.last_at_or_before(utc("2026-10-25T01:45:00Z")),
        Some(utc("2026-10-25T00:30:00Z"))
    );
}

/// The local half hours from `first` for `count` steps (no DST involved in the reference).
fn half_hours(day: &str, hours: std::ops::Range<u32>, skip: &[&str]) -> Vec<String> {
    hours
        .flat_map(|hour| [0, 30].map(|minute| format!("{day}T{hour:02}:{minute:02}")))
        .filter(|time| !skip.contains(&time.as_str()))
        .collect()
}

#[test]
fn every_half_hour_across_berlin_transitions_has_no_duplicate_and_only_the_skipped_gap() {
    let every = schedule("*/30 * * * *", "Europe/Berlin");
    // Spring: local 00:00 .. 05:30 on 2026-03-29; 02:00 and 02:30 do not exist.
    let spring = fires(&every, "2026-03-28T22:59:59Z", "2026-03-29T03:30:00Z");
    assert_eq!(
        local(&spring, "Europe/Berlin"),
        half_hours(
            "2026-03-29",
            0..6,
            &["2026-03-29T02:00", "2026-03-29T02:30"]
        )
    );
    assert!(
        spring
            .windows(2)
            .all(|w| w[1].since(w[0]).as_secs() == 1800)
    );
    // Autumn: local 00:00 .. 04:30 on 2026-10-25; each local time once, the repeated
    // 02:00 and 02:30 in their first pass only.
    let autumn = fires(&every, "2026-10-24T21:59:59Z", "2026-10-25T03:30:00Z");
    assert_eq!(
        local(&autumn, "Europe/Berlin"),
        half_hours("2026-10-25", 0..5, &[])
    );
    let gaps: Vec<u64> = autumn
        .windows(2)
        .map(|w| w[1].since(w[0]).as_secs())
        .collect();
    assert_eq!(gaps.iter().filter(|gap| **gap != 1800).count(), 1);
    assert!(gaps.contains(&5400), "02:30 CEST to 03:00 CET: {gaps:?}");
}

#[test]
fn new_york_transitions_follow_the_same_rules() {
    // 2026-03-08 02:00 EST becomes 03:00 EDT (07:00 UTC).
    let half_past_two = schedule("30 2 * * *", "America/New_York");
    assert_eq!(
        text(&fires(
            &half_past_two,
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z"
        )),
        [
            "2026-03-07T07:30:00.000Z",
            "2026-03-08T07:00:00.000Z",
            "2026-03-09T06:30:00.000Z",
        ]
    );
    // 2026-11-01 02:00 EDT becomes 01:00 EST (06:00 UTC): 01:00-01:59 happens twice.
    let half_past_one = schedule("30 1 * * *", "America/New_York");
    assert_eq!(
        text(&fires(
            &half_past_one,
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z"
        )),
        [
            "2026-10-31T05:30:00.000Z",
            "2026-11-01T05:30:00.000Z",
            "2026-11-02T06:30:00.000Z",
        ]
    );
    let quarter = schedule("*/15 1 * * *", "America/New_York");
    let times = fires(&quarter, "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z");
    assert_eq!(
        local(&times, "America/New_York"),
        [
            "2026-11-01T01:00",
            "2026-11-01T01:15",
            "2026-11-01T01:30",
            "2026-11-01T01:45"
        ]
    );
}

const CRONS: [&str; 6] = [
    "*/30 * * * *",
    "30 2 * * *",
    "0 2 * * *",
    "0 7 * * 1-5",
    "*/15 1-3 * * *",
    "0 0 13 * FRI",
];
const ZONES: [&str; 4] = [
    "Europe/Berlin",
    "America/New_York",
    "UTC",
    "Australia/Sydney",
];

proptest! {
    #[test]
    fn next_and_last_agree(
        cron in 0..CRONS.len(),
        zone in 0..ZONES.len(),
        // 2026-01-01 .. 2027-01-01, to the millisecond.
        at in 1_767_225_600_000u64..1_798_761_600_000u64,
    ) {
        let schedule = schedule(CRONS[cron], ZONES[zone]);
        let at = Timestamp::from_unix_millis(at);
        let last = schedule.last_at_or_before(at).unwrap();
        let next = schedule.next_after(at).unwrap();
        prop_assert!(last <= at && at < next);
        prop_assert_eq!(schedule.next_after(last), Some(next), "no fire time between");
        prop_assert_eq!(
            schedule.next_after(Timestamp::from_unix_millis(last.unix_millis() - 1)),
            Some(last)
        );
        prop_assert_eq!(schedule.last_at_or_before(next), Some(next));
    }
}

/// Every 7 minutes 13 seconds across each transition day: the backward and forward searches
/// agree (the proptest above rarely lands on these days).
#[test]
fn next_and_last_agree_across_every_transition() {
    let days = [
        ("Europe/Berlin", "2026-03-28T20:00:00Z"),
        ("Europe/Berlin", "2026-10-24T20:00:00Z"),
        ("America/New_York", "2026-03-08T02:00:00Z"),
        ("America/New_York", "2026-11-01T02:00:00Z"),
    ];
    for (zone, from) in days {
        for cron in CRONS
            .iter()
            .chain(&["*/15 * * * *", "0,30 2 * * *", "59 1 * * *"])
        {
            let schedule = schedule(cron, zone);
            let mut at = utc(from);
            for _ in 0..(12 * 3600 / 433) {
                let last = schedule.last_at_or_before(at).unwrap();
                let next = schedule.next_after(at).unwrap();
                assert!(last <= at && at < next, "{cron} {zone} at {at}");
                assert_eq!(
                    schedule.next_after(last),
                    Some(next),
                    "{cron} {zone} at {at}"
                );
                assert_eq!(schedule.last_at_or_before(next), Some(next));
                at = at.plus(std::time::Duration::from_secs(433));
            }
        }
    }
}

#[test]
fn a_pattern_that_never_fires_is_refused() {
    for cron in ["0 0 31 2,4,6 *", "0 0 30 2 *"] {
        assert!(matches!(
            Schedule::parse(cron, Some("Europe/Berlin")),
            Err(ScheduleError::NeverFires { .. })
        ));
    }
}
