//! Progressive delivery as tcadm shows it: a group's rollout history, the `status.rollout` of a
//! group with steps, maintenance windows or activation on reboot, and the routes behind
//! `tcadm rollout history|undo|activate-now`.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use tc_api::rollout::{ActivationPolicy, RolloutHistory, RolloutOutcome, RolloutStatus};
use tc_api::{ClientGroup, Timestamp};

use crate::api::{API_PREFIX, ApiClient, ApiError};
use crate::format::Table;

impl ApiClient {
    /// `GET /apis/thinfleet.io/v1/clientgroups/NAME/rollouts`: the group's rollouts, newest
    /// first.
    pub fn rollout_history(&self, name: &str) -> Result<RolloutHistory, ApiError> {
        self.get_json(&format!("{API_PREFIX}/clientgroups/{name}/rollouts"), &[])
    }
}

/// A time to the second, `2026-12-07T21:00:00Z`.
pub fn time_text(time: Timestamp) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(time.unix_millis()))
        .to_string()
}

/// Versions as `kiosk@1.4.2,vpn@2.0.1`, or `<none>`.
pub fn versions_text(versions: &BTreeMap<String, String>) -> String {
    if versions.is_empty() {
        return "<none>".into();
    }
    versions
        .iter()
        .map(|(package, version)| format!("{package}@{version}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn outcome_text(outcome: RolloutOutcome) -> &'static str {
    match outcome {
        RolloutOutcome::Progressing => "Progressing",
        RolloutOutcome::Complete => "Complete",
        RolloutOutcome::Failed => "Failed",
        RolloutOutcome::Superseded => "Superseded",
        RolloutOutcome::Undone => "Undone",
    }
}

/// The table of `tcadm rollout history`: one row per rollout, newest first (as the controller
/// answers, sorted again so that an older controller's order does not matter).
pub fn history_table(history: &RolloutHistory) -> Table {
    let mut items: Vec<_> = history.items.iter().collect();
    items.sort_by_key(|record| std::cmp::Reverse(record.revision));
    let mut table = Table::new(&[
        "REVISION", "VERSIONS", "STARTED", "FINISHED", "BY", "OUTCOME",
    ]);
    for record in items {
        table.push(vec![
            record.revision.to_string(),
            versions_text(&record.versions),
            time_text(record.started_at),
            record.finished_at.map_or_else(|| "-".into(), time_text),
            record.by.clone().unwrap_or_else(|| "-".into()),
            outcome_text(record.outcome).into(),
        ]);
    }
    table
}

/// Whether a group's rollouts are progressive: steps, maintenance windows or activation on
/// reboot. Only then do `rollout status` and `describe` show `status.rollout`.
pub fn is_progressive(group: &ClientGroup) -> bool {
    let spec = &group.spec.rollout;
    !spec.steps.is_empty()
        || !spec.maintenance_windows.is_empty()
        || spec.activation != ActivationPolicy::Immediate
        || group
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .is_some_and(|r| r.steps > 0 || r.staged > 0 || r.undone_to.is_some())
}

/// `step 3 of 5`, `past the last of 5 steps`, or None for a rollout without steps.
pub fn step_text(rollout: &RolloutStatus) -> Option<String> {
    let step = rollout.step?;
    if rollout.steps == 0 {
        return None;
    }
    Some(if step >= rollout.steps {
        format!("past the last of {} steps", rollout.steps)
    } else {
        format!("step {} of {}", step + 1, rollout.steps)
    })
}

/// `staged on 812 of 1000, activates 2026-12-07T21:00:00Z`, or None when nothing is staged.
pub fn staged_text(rollout: &RolloutStatus, members: u32) -> Option<String> {
    if rollout.staged == 0 {
        return None;
    }
    let mut text = format!("staged on {} of {members}", rollout.staged);
    if let Some(at) = rollout.activates_at {
        text.push_str(&format!(", activates {}", time_text(at)));
    }
    Some(text)
}

/// The facts of a group's current rollout, as `(field, value)` pairs: revision and versions,
/// step, counts, what it waits for, staged members, an undo's versions and an activate-now.
pub fn rollout_fields(group: &ClientGroup) -> Vec<(&'static str, String)> {
    let Some(status) = &group.status else {
        return vec![];
    };
    let Some(rollout) = &status.rollout else {
        return vec![];
    };
    let mut fields = vec![
        (
            "Revision",
            format!(
                "{} ({}, started {})",
                rollout.revision,
                versions_text(&rollout.versions),
                time_text(rollout.started_at)
            ),
        ),
        (
            "Step",
            step_text(rollout).unwrap_or_else(|| "<no steps>".into()),
        ),
        (
            "Members",
            format!(
                "{} admitted, {} updated, {} failed",
                rollout.admitted, rollout.updated, rollout.failed
            ),
        ),
    ];
    if let Some(staged) = staged_text(rollout, status.desired) {
        fields.push(("Staged", staged));
    }
    if let Some(until) = rollout.paused_until {
        fields.push(("Paused Until", time_text(until)));
    }
    if let Some(versions) = &rollout.undone_to {
        fields.push(("Undone To", versions_text(versions)));
    }
    if let Some(asked) = &rollout.activate_now {
        fields.push((
            "Activate Now",
            format!("asked by {} at {}", asked.by, time_text(asked.time)),
        ));
    }
    if !rollout.message.is_empty() {
        fields.push(("Message", rollout.message.clone()));
    }
    fields
}

/// The lines `rollout status` prints under its summary for a progressive group:
/// `  step 3 of 5: 100 admitted, 97 updated, 1 failed`, the message, and the staged members.
pub fn status_lines(group: &ClientGroup) -> Vec<String> {
    if !is_progressive(group) {
        return vec![];
    }
    let Some(status) = &group.status else {
        return vec![];
    };
    let Some(rollout) = &status.rollout else {
        return vec![];
    };
    let counts = format!(
        "{} admitted, {} updated, {} failed",
        rollout.admitted, rollout.updated, rollout.failed
    );
    let mut lines = vec![match step_text(rollout) {
        Some(step) => format!("  rollout {}: {step}: {counts}", rollout.revision),
        None => format!("  rollout {}: {counts}", rollout.revision),
    }];
    if !rollout.message.is_empty() {
        lines.push(format!("  {}", rollout.message));
    }
    if let Some(staged) = staged_text(rollout, status.desired) {
        lines.push(format!("  {staged}"));
    }
    if let Some(versions) = &rollout.undone_to {
        lines.push(format!("  undone to {}", versions_text(versions)));
    }
    if let Some(asked) = &rollout.activate_now {
        lines.push(format!(
            "  activate-now asked by {} at {}",
            asked.by,
            time_text(asked.time)
        ));
    }
    lines
}

/// Whether the group's rollout waits at a pause step (`Progressing` reason `StepPaused`).
pub fn at_pause_step(group: &ClientGroup) -> bool {
    group.status.as_ref().is_some_and(|status| {
        tc_api::meta::find_condition(&status.conditions, "Progressing")
            .is_some_and(|c| c.reason == STEP_PAUSED)
    })
}

/// The `Progressing` reason of a rollout waiting at a pause step.
pub const STEP_PAUSED: &str = "StepPaused";

/// What `rollout status` and `--watch` add to a rollout that waits: ` (paused)` for a pause by
/// the manifest or `rollout pause`, ` (step 2 of 2: paused until ...)` at a pause step.
pub fn pause_note(group: &ClientGroup) -> String {
    if crate::describe::is_paused(group) {
        return " (paused)".into();
    }
    if !at_pause_step(group) {
        return String::new();
    }
    let message = group
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .map(|r| r.message.as_str())
        .unwrap_or_default();
    if message.is_empty() {
        " (paused at a step)".into()
    } else {
        format!(" ({message})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_api::rollout::RolloutRecord;
    use tc_api::{ClientGroupStatus, ObjectMeta, RolloutPause};

    const NOW: u64 = 1_796_677_200_000; // 2026-12-07T21:00:00Z

    fn rollout() -> RolloutStatus {
        RolloutStatus {
            revision: 3,
            versions: BTreeMap::from([("kiosk".into(), "1.5.0".into())]),
            started_at: Timestamp::from_unix_millis(NOW - 3_600_000),
            step: Some(2),
            steps: 5,
            step_started_at: None,
            admitted: 100,
            updated: 97,
            failed: 1,
            staged: 812,
            activates_at: Some(Timestamp::from_unix_millis(NOW)),
            activate_now: None,
            undone_to: None,
            paused_until: None,
            message: "step 3 of 5: 97 of 100 members updated (the step admits 100)".into(),
        }
    }

    fn group(rollout: Option<RolloutStatus>) -> ClientGroup {
        ClientGroup {
            api_version: "thinfleet.io/v1".into(),
            kind: "ClientGroup".into(),
            metadata: ObjectMeta::named("front-desk"),
            spec: Default::default(),
            status: Some(ClientGroupStatus {
                desired: 1000,
                rollout,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn status_lines_give_step_counts_message_and_staged_members() {
        assert_eq!(
            status_lines(&group(Some(rollout()))),
            [
                "  rollout 3: step 3 of 5: 100 admitted, 97 updated, 1 failed",
                "  step 3 of 5: 97 of 100 members updated (the step admits 100)",
                "  staged on 812 of 1000, activates 2026-12-07T21:00:00Z",
            ]
        );
        let mut past = rollout();
        past.step = Some(5);
        past.staged = 0;
        past.message.clear();
        past.undone_to = Some(BTreeMap::from([("kiosk".into(), "1.4.2".into())]));
        past.activate_now = Some(RolloutPause {
            by: "lead".into(),
            time: Timestamp::from_unix_millis(NOW),
        });
        assert_eq!(
            status_lines(&group(Some(past))),
            [
                "  rollout 3: past the last of 5 steps: 100 admitted, 97 updated, 1 failed",
                "  undone to kiosk@1.4.2",
                "  activate-now asked by lead at 2026-12-07T21:00:00Z",
            ]
        );
        // A group without steps, windows or staged members has nothing more to say.
        let mut plain = rollout();
        plain.step = None;
        plain.steps = 0;
        plain.staged = 0;
        assert!(status_lines(&group(Some(plain))).is_empty());
        assert!(status_lines(&group(None)).is_empty());
    }

    #[test]
    fn describe_fields_name_every_fact_that_is_set() {
        let mut undone = rollout();
        undone.undone_to = Some(BTreeMap::from([("kiosk".into(), "1.4.2".into())]));
        undone.paused_until = Some(Timestamp::from_unix_millis(NOW));
        let fields = rollout_fields(&group(Some(undone)));
        let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "Revision",
                "Step",
                "Members",
                "Staged",
                "Paused Until",
                "Undone To",
                "Message"
            ]
        );
        assert_eq!(fields[0].1, "3 (kiosk@1.5.0, started 2026-12-07T20:00:00Z)");
        assert_eq!(fields[1].1, "step 3 of 5");
        assert_eq!(fields[5].1, "kiosk@1.4.2");
        assert!(rollout_fields(&group(None)).is_empty());
    }

    #[test]
    fn history_rows_are_newest_first_with_dashes_for_what_is_unknown() {
        let record = |revision: u64, outcome, finished: bool| RolloutRecord {
            revision,
            versions: BTreeMap::from([("kiosk".into(), format!("1.{revision}.0"))]),
            started_at: Timestamp::from_unix_millis(NOW + revision * 1000),
            finished_at: finished.then(|| Timestamp::from_unix_millis(NOW + revision * 1000 + 500)),
            by: finished.then(|| "lead".into()),
            outcome,
            generation: revision,
        };
        let history = RolloutHistory {
            group: "front-desk".into(),
            items: vec![
                record(1, RolloutOutcome::Complete, true),
                record(2, RolloutOutcome::Progressing, false),
            ],
        };
        assert_eq!(
            history_table(&history).render(),
            "REVISION   VERSIONS      STARTED                FINISHED               BY     OUTCOME\n\
             2          kiosk@1.2.0   2026-12-07T21:00:02Z   -                      -      Progressing\n\
             1          kiosk@1.1.0   2026-12-07T21:00:01Z   2026-12-07T21:00:01Z   lead   Complete\n"
        );
    }
}
