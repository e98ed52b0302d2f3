use std::collections::BTreeSet;

use proptest::prelude::*;
use tc_api::Timestamp;
use tc_api::task::{TaskSchedule, TaskSpec};

use super::run::{DueRun, MAX_MISSED_COUNTED, due_run};
use super::schedule::Schedule;

fn utc(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn millis(text: &str) -> u64 {
    utc(text).unix_millis()
}

fn scheduled(cron: &str, deadline_seconds: u32) -> (TaskSpec, Schedule) {
    let spec = TaskSpec {
        schedule: Some(TaskSchedule {
            cron: cron.into(),
            time_zone: None,
        }),
        deadline_seconds,
        ..Default::default()
    };
    let schedule = Schedule::parse(cron, None).unwrap();
    (spec, schedule)
}

#[test]
fn a_task_without_a_schedule_runs_once_named_by_its_creation() {
    let spec = TaskSpec {
        deadline_seconds: 60,
        ..Default::default()
    };
    let created = utc("2026-06-01T10:00:00.123Z");
    let later = utc("2026-06-03T10:00:00Z");
    assert_eq!(
        due_run(&spec, None, created, None, later),
        DueRun {
            start: Some(created.unix_millis()),
            missed: 0,
            next: None
        },
        "started however late: the deadline counts from the start"
    );
    assert_eq!(
        due_run(&spec, None, created, Some(created.unix_millis()), later),
        DueRun::default()
    );
    let suspended = TaskSpec {
        suspend: true,
        ..spec
    };
    assert_eq!(
        due_run(&suspended, None, created, None, later),
        DueRun::default()
    );
}

#[test]
fn a_scheduled_task_starts_each_fire_time_after_its_creation() {
    let (spec, hourly) = scheduled("0 * * * *", 600);
    let created = utc("2026-06-01T10:05:00Z");
    let due = |last_run, now| due_run(&spec, Some(&hourly), created, last_run, utc(now));
    assert_eq!(
        due(None, "2026-06-01T10:30:00Z"),
        DueRun {
            start: None,
            missed: 0,
            next: Some(utc("2026-06-01T11:00:00Z"))
        },
        "10:00 is before the task existed"
    );
    assert_eq!(
        due(None, "2026-06-01T11:00:00Z"),
        DueRun {
            start: Some(millis("2026-06-01T11:00:00Z")),
            missed: 0,
            next: Some(utc("2026-06-01T12:00:00Z"))
        }
    );
    let started = Some(millis("2026-06-01T11:00:00Z"));
    assert_eq!(due(started, "2026-06-01T11:09:00Z").start, None);
}

#[test]
fn only_the_newest_missed_fire_time_starts_and_only_within_the_deadline() {
    let (spec, hourly) = scheduled("0 * * * *", 600);
    let created = utc("2026-06-01T09:00:00Z");
    let last_run = Some(millis("2026-06-01T11:00:00Z"));
    // Down from 11:30 to 14:05: 12:00 and 13:00 are missed, 14:00 is 5 minutes late.
    assert_eq!(
        due_run(
            &spec,
            Some(&hourly),
            created,
            last_run,
            utc("2026-06-01T14:05:00Z")
        ),
        DueRun {
            start: Some(millis("2026-06-01T14:00:00Z")),
            missed: 2,
            next: Some(utc("2026-06-01T15:00:00Z"))
        }
    );
    // At 14:10:00.001 the 14:00 run is more than 600 s late: nothing starts, three missed.
    assert_eq!(
        due_run(
            &spec,
            Some(&hourly),
            created,
            last_run,
            utc("2026-06-01T14:10:00.001Z")
        ),
        DueRun {
            start: None,
            missed: 3,
            next: Some(utc("2026-06-01T15:00:00Z"))
        }
    );
    assert_eq!(
        due_run(
            &spec,
            Some(&hourly),
            created,
            last_run,
            utc("2026-06-01T14:10:00Z")
        )
        .start,
        Some(millis("2026-06-01T14:00:00Z")),
        "exactly the deadline is still in time"
    );
}

#[test]
fn suspended_or_unparsed_schedules_start_nothing() {
    let (mut spec, hourly) = scheduled("0 * * * *", 600);
    spec.suspend = true;
    let created = utc("2026-06-01T09:30:00Z");
    assert_eq!(
        due_run(
            &spec,
            Some(&hourly),
            created,
            None,
            utc("2026-06-01T12:01:00Z")
        ),
        DueRun {
            start: None,
            missed: 3,
            next: Some(utc("2026-06-01T13:00:00Z"))
        }
    );
    spec.suspend = false;
    assert_eq!(
        due_run(&spec, None, created, None, utc("2026-06-01T12:01:00Z")),
        DueRun::default()
    );
}

#[test]
fn missed_runs_are_counted_up_to_a_bound_without_walking_the_whole_outage() {
    let (spec, every_minute) = scheduled("* * * * *", 30);
    let created = utc("2025-06-01T00:00:00Z");
    let due = due_run(
        &spec,
        Some(&every_minute),
        created,
        None,
        utc("2026-06-01T00:00:10Z"),
    );
    assert_eq!(
        due,
        DueRun {
            start: Some(millis("2026-06-01T00:00:00Z")),
            missed: MAX_MISSED_COUNTED,
            next: Some(utc("2026-06-01T00:01:00Z"))
        }
    );
}

proptest! {
    /// A controller that ticks at arbitrary times, records each started run and sometimes
    /// crashes before recording (asking again with the same `last_run`) never starts a run
    /// twice, never starts one in the future or past its deadline, and gets the same answer
    /// after a crash.
    #[test]
    fn due_run_never_starts_a_run_twice(
        cron in 0..4usize,
        deadline_seconds in 1u32..7200,
        steps in proptest::collection::vec((1u64..5_400_000, any::<bool>()), 1..40),
    ) {
        let crons = ["*/30 * * * *", "0 * * * *", "15 2 * * *", "*/7 9-17 * * MON-FRI"];
        let (spec, schedule) = scheduled(crons[cron], deadline_seconds);
        let created = utc("2026-03-27T22:13:00Z");
        let mut now = created.unix_millis();
        let mut last_run = None;
        let mut started = BTreeSet::new();
        for (advance, crash) in steps {
            now += advance;
            let at = Timestamp::from_unix_millis(now);
            let due = due_run(&spec, Some(&schedule), created, last_run, at);
            prop_assert_eq!(due, due_run(&spec, Some(&schedule), created, last_run, at));
            prop_assert!(due.next.is_some_and(|next| next > at));
            if let Some(run) = due.start {
                prop_assert!(run <= now && now - run <= u64::from(deadline_seconds) * 1000);
                prop_assert!(run > last_run.unwrap_or(created.unix_millis()));
                if crash {
                    // Crashed before recording: the restart is asked again, later.
                    continue;
                }
                prop_assert!(started.insert(run), "run {} started twice", run);
                last_run = Some(run);
            }
        }
    }
}
