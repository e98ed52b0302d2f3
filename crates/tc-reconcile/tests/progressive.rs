//! Progressive delivery, the pure decisions: the share each step admits, how a rollout moves
//! through its steps on an injected clock, the planner's step cap and failure threshold, the
//! group's rollout history and undo, and maintenance windows resolved to intervals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tc_api::rollout::{
    MaintenanceWindow, PauseStep, ROLLOUT_HISTORY_KEPT, RolloutOutcome, RolloutStep, Step,
};
use tc_api::{IntOrPercent, RolloutPause, Timestamp};
use tc_proto::activation::Window;
use tc_reconcile::progressive::{
    CANARY_LABEL, GroupRollouts, PackageProgress, RolloutState, UndoPin, Wait, advance,
    member_rank, next_wake, parse_steps, step_cap, threshold_exceeded, window_errors,
    window_intervals,
};
use tc_reconcile::{Assignment, ClientDesire, ClientRollout, GroupBudget, Want, plan_rollout};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn at(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn versions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn clients(n: u32) -> RolloutStep {
    RolloutStep {
        clients: Some(n),
        ..Default::default()
    }
}

fn percent(p: u32) -> RolloutStep {
    RolloutStep {
        percent: Some(p),
        ..Default::default()
    }
}

fn pause(duration: Option<&str>) -> RolloutStep {
    RolloutStep {
        pause: Some(PauseStep {
            duration: duration.map(str::to_string),
        }),
        ..Default::default()
    }
}

/// `[{clients: 1}, {pause: {duration: 1h}}, {percent: 10}, {pause: {}}, {percent: 100}]`.
fn canary_steps() -> Vec<Step> {
    parse_steps(&[
        clients(1),
        pause(Some("1h")),
        percent(10),
        pause(None),
        percent(100),
    ])
}

/// What a share step waits for.
fn share(step: usize, admitted: usize, done: usize, needed: usize) -> Wait {
    Wait::Share {
        step,
        admitted,
        done,
        needed,
    }
}

fn progress(eligible: usize, converged: usize, failed: usize) -> PackageProgress {
    PackageProgress {
        eligible,
        converged,
        failed,
    }
}

/// A fresh rollout of `app` 2.0 begun at `now`.
fn rollout(now: Timestamp) -> RolloutState {
    let mut group = GroupRollouts::default();
    assert!(group.begin(&versions(&[("app", "2.0")]), 1, None, now));
    group.current.expect("begin starts a rollout")
}

// ---------------------------------------------------------------------------------------------
// Steps and the share each admits.

#[test]
fn steps_parse_in_order_and_an_invalid_step_is_skipped() {
    assert_eq!(
        canary_steps(),
        vec![
            Step::Clients(1),
            Step::Pause(Some(HOUR)),
            Step::Percent(10),
            Step::Pause(None),
            Step::Percent(100),
        ]
    );
    assert_eq!(
        parse_steps(&[clients(0), percent(20), pause(Some("soon"))]),
        vec![Step::Percent(20)]
    );
}

#[test]
fn step_cap_is_the_share_of_the_last_share_step_at_or_before_the_step() {
    let steps = canary_steps();
    let caps: Vec<Option<usize>> = (0..6).map(|step| step_cap(&steps, step, 40)).collect();
    // clients 1, its pause, 10% of 40, its pause, 100%, past the end.
    assert_eq!(
        caps,
        vec![Some(1), Some(1), Some(4), Some(4), Some(40), None]
    );
    assert_eq!(step_cap(&[], 0, 40), None, "no steps: no cap");
    // A percentage rounds up; a count is bounded by the members.
    assert_eq!(step_cap(&[Step::Percent(10)], 0, 41), Some(5));
    assert_eq!(step_cap(&[Step::Percent(1)], 0, 1), Some(1));
    assert_eq!(step_cap(&[Step::Clients(50)], 0, 40), Some(40));
    // A pause before any share step admits nobody yet.
    let paused_first = [Step::Pause(None), Step::Clients(3)];
    assert_eq!(step_cap(&paused_first, 0, 40), Some(0));
    assert_eq!(step_cap(&paused_first, 1, 40), Some(3));
}

// ---------------------------------------------------------------------------------------------
// Moving through the steps.

#[test]
fn a_share_step_is_done_when_every_package_reaches_its_share_then_the_timed_pause_runs_its_duration()
 {
    let steps = canary_steps();
    let t0 = at("2026-03-27T12:00:00Z");
    let mut state = rollout(t0);
    assert_eq!((state.step, state.step_started_at), (0, t0));

    // Nobody runs it yet: the canary step waits for one member.
    let wait = advance(&steps, &mut state, 40, &[progress(40, 0, 0)], None, t0);
    assert_eq!(wait, share(0, 1, 0, 1));
    // One package there, the other not: the slowest package decides.
    let t1 = at("2026-03-27T12:10:00Z");
    let wait = advance(
        &steps,
        &mut state,
        40,
        &[progress(40, 1, 0), progress(40, 0, 0)],
        None,
        t1,
    );
    assert_eq!(wait, share(0, 1, 0, 1));
    assert_eq!((state.step, state.step_started_at), (0, t0));

    // Both there (one failed, which counts as done within the threshold): on to the pause,
    // which starts now.
    let t2 = at("2026-03-27T12:20:00Z");
    let wait = advance(
        &steps,
        &mut state,
        40,
        &[progress(40, 1, 0), progress(40, 0, 1)],
        None,
        t2,
    );
    let until = at("2026-03-27T13:20:00Z");
    assert_eq!(wait, Wait::PauseUntil { step: 1, until });
    assert_eq!(next_wake(&wait), Some(until));
    assert_eq!((state.step, state.step_started_at), (1, t2));

    // A millisecond before the end it still waits; at the end exactly it passes.
    let before = at("2026-03-27T13:19:59.999Z");
    let both = [progress(40, 1, 0), progress(40, 1, 0)];
    let wait = advance(&steps, &mut state, 40, &both, None, before);
    assert_eq!(wait, Wait::PauseUntil { step: 1, until });
    assert_eq!(state.step, 1);
    let wait = advance(&steps, &mut state, 40, &both, None, until);
    assert_eq!(wait, share(2, 4, 1, 4));
    assert_eq!((state.step, state.step_started_at), (2, until));
    assert_eq!(next_wake(&wait), None);
}

#[test]
fn a_share_step_needs_only_the_members_that_get_the_package_when_fewer_than_it_admits() {
    let steps = [Step::Percent(50), Step::Pause(None)];
    let t0 = at("2026-03-27T12:00:00Z");
    let mut state = rollout(t0);
    // 50% of 40 is 20, but only 3 members get this package: 3 done is enough.
    let wait = advance(&steps, &mut state, 40, &[progress(3, 2, 0)], None, t0);
    assert_eq!(wait, share(0, 20, 2, 3));
    let wait = advance(&steps, &mut state, 40, &[progress(3, 2, 1)], None, t0);
    assert_eq!(wait, Wait::PauseUntilResumed { step: 1 });
}

#[test]
fn an_indefinite_pause_waits_for_a_resume_of_that_very_step() {
    let steps = canary_steps();
    let t0 = at("2026-03-27T12:00:00Z");
    let mut state = rollout(t0);
    state.step = 2;
    let four = [progress(40, 4, 0)];
    let wait = advance(&steps, &mut state, 40, &four, None, t0);
    assert_eq!(wait, Wait::PauseUntilResumed { step: 3 });
    assert_eq!(next_wake(&wait), None);

    // Days later, still waiting; a resume given for another step does not count.
    let later = at("2026-04-10T12:00:00Z");
    state.resumed = Some(1);
    let wait = advance(&steps, &mut state, 40, &four, None, later);
    assert_eq!(wait, Wait::PauseUntilResumed { step: 3 });
    assert_eq!((state.step, state.step_started_at), (3, t0));

    state.resumed = Some(3);
    let wait = advance(&steps, &mut state, 40, &four, None, later);
    assert_eq!(wait, share(4, 40, 4, 40));
    assert_eq!((state.step, state.step_started_at), (4, later));
}

#[test]
fn past_the_last_step_the_rest_follow() {
    let steps = [Step::Clients(1)];
    let t0 = at("2026-03-27T12:00:00Z");
    let mut state = rollout(t0);
    let wait = advance(&steps, &mut state, 40, &[progress(40, 1, 0)], None, t0);
    assert_eq!(wait, Wait::Rest);
    assert_eq!(state.step, 1);
    assert_eq!(state.finished, None);
}

#[test]
fn a_rollout_is_complete_once_every_member_runs_it_whatever_steps_remain() {
    let steps = canary_steps();
    let t0 = at("2026-03-27T12:00:00Z");
    let t1 = at("2026-03-27T12:05:00Z");
    let mut state = rollout(t0);
    let all = [progress(40, 40, 0), progress(12, 12, 0)];
    assert_eq!(
        advance(&steps, &mut state, 40, &all, None, t1),
        Wait::Complete
    );
    assert_eq!(state.finished, Some((t1, RolloutOutcome::Complete)));
    assert_eq!(
        state.step,
        steps.len(),
        "the remaining steps are moot: the rollout is past them"
    );
    // Later calls keep the time it completed at.
    let t2 = at("2026-03-27T13:00:00Z");
    assert_eq!(
        advance(&steps, &mut state, 40, &all, None, t2),
        Wait::Complete
    );
    assert_eq!(state.finished, Some((t1, RolloutOutcome::Complete)));
    // Complete even while paused: nothing is left to hold back.
    assert_eq!(
        advance(&steps, &mut state, 40, &all, Some(Wait::Paused), t2),
        Wait::Complete
    );
}

#[test]
fn a_completed_rollout_goes_on_when_a_new_member_joins() {
    let steps = canary_steps();
    let t0 = at("2026-03-27T12:00:00Z");
    let mut state = rollout(t0);
    assert_eq!(
        advance(&steps, &mut state, 40, &[progress(40, 40, 0)], None, t0),
        Wait::Complete
    );
    let t1 = at("2026-03-28T12:00:00Z");
    let wait = advance(&steps, &mut state, 41, &[progress(41, 40, 0)], None, t1);
    assert_ne!(wait, Wait::Complete);
    assert_eq!(state.finished, None, "no longer complete");
    // Its steps are behind it: a member joining later follows within the budget, no pause
    // holds it.
    assert_eq!(wait, Wait::Rest);
}

#[test]
fn a_held_rollout_never_advances_and_the_threshold_marks_it_failed_until_released() {
    let steps = canary_steps();
    let t0 = at("2026-03-27T12:00:00Z");
    let mut state = rollout(t0);
    let one = [progress(40, 1, 0)];

    // Paused: the canary step is satisfied, yet it stays.
    let t1 = at("2026-03-27T12:10:00Z");
    assert_eq!(
        advance(&steps, &mut state, 40, &one, Some(Wait::Paused), t1),
        Wait::Paused
    );
    assert_eq!(
        (state.step, state.step_started_at, state.finished),
        (0, t0, None)
    );

    // Past the threshold: it stays and is marked failed, with the time it first was.
    let t2 = at("2026-03-27T12:20:00Z");
    let t3 = at("2026-03-27T12:30:00Z");
    let failing = [progress(40, 1, 2)];
    for now in [t2, t3] {
        assert_eq!(
            advance(
                &steps,
                &mut state,
                40,
                &failing,
                Some(Wait::FailureThreshold),
                now
            ),
            Wait::FailureThreshold
        );
    }
    assert_eq!(state.step, 0);
    assert_eq!(state.finished, Some((t2, RolloutOutcome::Failed)));

    // Released (a retry, a higher threshold): no longer failed, and it moves on.
    let t4 = at("2026-03-27T12:40:00Z");
    let wait = advance(&steps, &mut state, 40, &one, None, t4);
    assert_eq!(state.finished, None);
    assert_eq!(
        wait,
        Wait::PauseUntil {
            step: 1,
            until: t4.plus(HOUR)
        }
    );
}

#[test]
fn a_rollout_stopped_at_the_threshold_that_then_completes_is_complete() {
    // Past the threshold, then the failed members retried and now run the versions.
    let steps = canary_steps();
    let t0 = at("2026-03-27T12:00:00Z");
    let mut state = rollout(t0);
    let failing = [progress(4, 1, 3)];
    let held = Some(Wait::FailureThreshold);
    assert_eq!(
        advance(&steps, &mut state, 4, &failing, held, t0),
        Wait::FailureThreshold
    );
    let t1 = at("2026-03-27T13:00:00Z");
    assert_eq!(
        advance(&steps, &mut state, 4, &[progress(4, 4, 0)], None, t1),
        Wait::Complete
    );
    assert_eq!(state.finished, Some((t1, RolloutOutcome::Complete)));
    // So the history keeps it as complete, and an undo can return to it.
    let mut group = GroupRollouts {
        current: Some(state),
        ..Default::default()
    };
    group.begin(
        &versions(&[("app", "3.0")]),
        2,
        None,
        at("2026-03-28T12:00:00Z"),
    );
    assert_eq!(group.history[0].outcome, RolloutOutcome::Complete);
    assert!(group.undo_target().is_some());
}

// ---------------------------------------------------------------------------------------------
// Canaries first.

#[test]
fn member_rank_puts_canaries_first_and_is_a_stable_hash_not_the_alphabet() {
    assert_eq!(CANARY_LABEL, "thinfleet.io/canary");
    // Stable: the same name ranks the same on every call (and every controller: FNV-1a, whose
    // published value for "a" is 0xaf63dc4c8601ec8c).
    assert_eq!(member_rank("a", false), (true, 0xaf63_dc4c_8601_ec8c));
    assert_eq!(member_rank("a", true), (false, 0xaf63_dc4c_8601_ec8c));
    assert_eq!(member_rank("pc-17", false), member_rank("pc-17", false));

    let names: Vec<String> = (0..20).map(|i| format!("pc-{i:02}")).collect();
    let canary = |name: &str| name == "pc-19" || name == "pc-07";
    let mut ranked = names.clone();
    ranked.sort_by_key(|name| member_rank(name, canary(name)));
    let mut again = names.clone();
    again.reverse();
    again.sort_by_key(|name| member_rank(name, canary(name)));
    assert_eq!(
        ranked, again,
        "the order does not depend on the input order"
    );
    let mut first_two = ranked[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, ["pc-07", "pc-19"], "canaries first");
    let rest = &ranked[2..];
    let mut alphabetical = rest.to_vec();
    alphabetical.sort();
    assert_ne!(rest, alphabetical, "spread, not alphabetical");
}

// ---------------------------------------------------------------------------------------------
// The planner: the step's cap and the failure threshold.

const V1: &[(&str, &str)] = &[("app", "1.0")];
const V2: &[(&str, &str)] = &[("app", "2.0")];
const APP: &[&str] = &["app"];

/// A member of group 0 that wants `wants` (package, version) and is assigned `has`.
fn member(
    name: &str,
    wants: &[(&str, &str)],
    has: &[(&str, &str)],
    unavailable: &[&str],
    failed: &[&str],
) -> ClientRollout {
    let packages = wants
        .iter()
        .map(|(package, version)| {
            (
                package.to_string(),
                Want {
                    version: version.to_string(),
                    group: Some("g".to_string()),
                },
            )
        })
        .collect();
    let list = |names: &[&str]| -> Arc<[String]> {
        let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        names.sort();
        names.into()
    };
    ClientRollout {
        name: name.into(),
        groups: vec![0].into(),
        desire: Arc::new(ClientDesire {
            packages,
            ..Default::default()
        }),
        assigned: Arc::new(versions(has)),
        unavailable: list(unavailable),
        failed: list(failed),
    }
}

/// Group `g` asking for `packages`, rolling `app` out to 2.0 under `step_cap`.
fn stepped(
    max_unavailable: usize,
    packages: &[&str],
    step_cap: Option<usize>,
    threshold: Option<IntOrPercent>,
) -> GroupBudget {
    let mut packages: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    packages.sort();
    let mut group = GroupBudget::new("g", max_unavailable, false, packages);
    group.targets = group
        .packages
        .iter()
        .map(|p| (p == "app").then(|| "2.0".to_string()))
        .collect();
    group.step_cap = step_cap;
    group.failure_threshold = threshold;
    group
}

/// Members (input order) that the plan gives `app` 2.0.
fn given_app(clients: &[ClientRollout], plan: &[Arc<Assignment>]) -> Vec<String> {
    clients
        .iter()
        .zip(plan)
        .filter(|(_, assignment)| assignment.get("app").map(String::as_str) == Some("2.0"))
        .map(|(client, _)| client.name.to_string())
        .collect()
}

/// `count` members `prefix-i` that want app 2.0 and are assigned `has`.
fn members(
    prefix: &str,
    count: usize,
    has: &[(&str, &str)],
    unavailable: &[&str],
    failed: &[&str],
) -> Vec<ClientRollout> {
    (0..count)
        .map(|i| member(&format!("{prefix}-{i}"), V2, has, unavailable, failed))
        .collect()
}

/// `count` members `prefix-i` assigned app 1.0 (converged) that want 2.0.
fn waiting(prefix: &str, count: usize) -> Vec<ClientRollout> {
    members(prefix, count, V1, &[], &[])
}

#[test]
fn a_step_admits_only_its_share_in_the_order_given() {
    let group = stepped(10, APP, Some(1), None);
    let mut fleet = waiting("pc", 5);
    fleet.reverse();
    let plan = plan_rollout(std::slice::from_ref(&group), &fleet);
    // The first given, not the first by name; the others keep 1.0.
    assert_eq!(given_app(&fleet, &plan), ["pc-4"]);
    assert!(plan[1..].iter().all(|a| **a == versions(V1)));
    // Without a step, the same fleet goes as far as maxUnavailable lets it.
    let open = stepped(10, APP, None, None);
    assert_eq!(given_app(&fleet, &plan_rollout(&[open], &fleet)).len(), 5);
}

#[test]
fn members_already_at_the_target_count_toward_the_step() {
    // One member already has 2.0 (still installing); one healthy with it.
    let mut fleet = vec![
        member("done", V2, V2, &[], &[]),
        member("busy", V2, V2, APP, &[]),
    ];
    fleet.extend(waiting("pc", 4));
    let plan = plan_rollout(&[stepped(10, APP, Some(2), None)], &fleet);
    assert_eq!(given_app(&fleet, &plan), ["done", "busy"], "full");
    let plan = plan_rollout(&[stepped(10, APP, Some(3), None)], &fleet);
    assert_eq!(given_app(&fleet, &plan), ["done", "busy", "pc-0"]);
}

#[test]
fn the_step_caps_only_the_rollouts_version() {
    // A pause before any share step: nobody is admitted to app 2.0, but another package of the
    // group (no rollout target) and a removal go ahead.
    let group = stepped(10, &["app", "tool"], Some(0), None);
    let fleet = vec![
        member(
            "a",
            &[("app", "2.0"), ("tool", "3.0")],
            &[("app", "1.0"), ("tool", "2.0"), ("old", "1.0")],
            &[],
            &[],
        ),
        // Another version of app than the rollout's (an older one a member still wants).
        member("b", &[("app", "1.5")], &[("app", "1.0")], &[], &[]),
    ];
    let plan = plan_rollout(&[group], &fleet);
    assert_eq!(*plan[0], versions(&[("app", "1.0"), ("tool", "3.0")]));
    assert_eq!(*plan[1], versions(&[("app", "1.5")]));
}

#[test]
fn max_unavailable_still_bounds_each_step() {
    let fleet = waiting("pc", 12);
    let plan = plan_rollout(&[stepped(2, APP, Some(10), None)], &fleet);
    assert_eq!(given_app(&fleet, &plan), ["pc-0", "pc-1"]);
}

#[test]
fn without_a_threshold_one_failure_holds_the_release_back_from_every_further_member() {
    let mut fleet = vec![member("broken", V2, V2, APP, APP)];
    fleet.extend(waiting("pc", 3));
    // A member that joins later and wants the release.
    fleet.push(member("new", V2, &[], &[], &[]));
    let plan = plan_rollout(&[stepped(10, APP, None, None)], &fleet);
    assert_eq!(
        given_app(&fleet, &plan),
        ["broken"],
        "the one that failed keeps it"
    );
    assert_eq!(*plan[4], versions(&[]), "the new member does not get it");
}

fn failed_at_target(count: usize) -> Vec<ClientRollout> {
    members("failed", count, V2, APP, APP)
}

#[test]
fn a_count_threshold_tolerates_that_many_failures() {
    let threshold = Some(IntOrPercent::Int(2));
    let mut fleet = failed_at_target(2);
    fleet.extend(waiting("pc", 3));
    let plan = plan_rollout(&[stepped(10, APP, None, threshold)], &fleet);
    assert_eq!(
        given_app(&fleet, &plan),
        ["failed-0", "failed-1", "pc-0", "pc-1", "pc-2"]
    );

    let mut fleet = failed_at_target(3);
    fleet.extend(waiting("pc", 3));
    let plan = plan_rollout(&[stepped(10, APP, None, threshold)], &fleet);
    assert_eq!(
        given_app(&fleet, &plan),
        ["failed-0", "failed-1", "failed-2"]
    );
}

#[test]
fn a_percentage_threshold_counts_the_members_given_the_target_so_far_rounded_down() {
    let threshold = Some(IntOrPercent::Percent(10));
    let healthy = |count: usize| members("ok", count, V2, &[], &[]);
    // 2 of 20 given 2.0 failed: 10% of 20 is 2, tolerated.
    let mut fleet = failed_at_target(2);
    fleet.extend(healthy(18));
    fleet.extend(waiting("pc", 1));
    let plan = plan_rollout(&[stepped(10, APP, None, threshold)], &fleet);
    assert_eq!(plan[20].get("app").map(String::as_str), Some("2.0"));

    // 2 of 19: 10% of 19 rounds down to 1, held back.
    let mut fleet = failed_at_target(2);
    fleet.extend(healthy(17));
    fleet.extend(waiting("pc", 1));
    let plan = plan_rollout(&[stepped(10, APP, None, threshold)], &fleet);
    assert_eq!(plan[19].get("app").map(String::as_str), Some("1.0"));
}

#[test]
fn with_a_threshold_failed_members_take_no_room_under_max_unavailable() {
    // One member failed at an older release (so 2.0 itself has not failed), maxUnavailable 1.
    let stuck = member("stuck", V2, &[("app", "1.9")], APP, APP);
    let mut fleet = vec![stuck];
    fleet.extend(waiting("pc", 3));
    // Without a threshold it holds the only room.
    let plan = plan_rollout(&[stepped(1, APP, None, None)], &fleet);
    assert_eq!(given_app(&fleet, &plan), ["stuck"]);
    // With one (even of zero) it does not: one more member goes.
    let tolerant = stepped(1, APP, None, Some(IntOrPercent::Int(0)));
    let plan = plan_rollout(&[tolerant], &fleet);
    assert_eq!(given_app(&fleet, &plan), ["stuck", "pc-0"]);
}

#[test]
fn threshold_exceeded_edges() {
    use IntOrPercent::{Int, Percent};
    let cases: [(Option<IntOrPercent>, usize, usize, bool); 12] = [
        (None, 0, 0, false),
        (None, 1, 100, true),
        (Some(Int(0)), 0, 10, false),
        (Some(Int(0)), 1, 10, true),
        (Some(Int(2)), 2, 2, false),
        (Some(Int(2)), 3, 100, true),
        (Some(Percent(10)), 1, 9, true),
        (Some(Percent(10)), 1, 10, false),
        (Some(Percent(10)), 2, 19, true),
        (Some(Percent(100)), 5, 5, false),
        (Some(Percent(0)), 1, 1000, true),
        (Some(Percent(50)), 1, 0, true),
    ];
    for (threshold, failed, given, exceeded) in cases {
        assert_eq!(
            threshold_exceeded(threshold, failed, given),
            exceeded,
            "{threshold:?} failed {failed} of {given}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// History and undo.

fn complete(group: &mut GroupRollouts, now: Timestamp) {
    let state = group.current.as_mut().expect("a current rollout");
    let done = state.versions.len();
    let progress = vec![progress(done, done, 0); done];
    assert_eq!(advance(&[], state, 1, &progress, None, now), Wait::Complete);
}

#[test]
fn begin_records_the_previous_rollout_and_ignores_the_same_versions() {
    let v1 = versions(&[("app", "1.0")]);
    let v2 = versions(&[("app", "2.0")]);
    let v3 = versions(&[("app", "3.0"), ("tool", "1.0")]);
    let t = |h: u32| at(&format!("2026-03-27T{h:02}:00:00Z"));
    let mut group = GroupRollouts::default();
    assert!(group.begin(&v1, 1, Some("alice".into()), t(1)));
    // The same versions again (a spec change that resolves alike): nothing starts.
    assert!(!group.begin(&v1, 2, Some("bob".into()), t(2)));
    let current = group.current.as_ref().unwrap();
    assert_eq!((current.revision, current.generation), (1, 1));
    assert_eq!(current.by.as_deref(), Some("alice"));
    assert!(group.history.is_empty());

    complete(&mut group, t(3));
    assert!(group.begin(&v2, 3, None, t(4)));
    assert!(group.begin(&v3, 4, None, t(5)));
    let current = group.current.as_ref().unwrap();
    assert_eq!(
        (current.revision, current.step, current.started_at),
        (3, 0, t(5))
    );
    let outcomes: Vec<_> = group
        .history
        .iter()
        .map(|r| (r.revision, r.outcome, r.finished_at, r.generation))
        .collect();
    assert_eq!(
        outcomes,
        [
            (2, RolloutOutcome::Superseded, Some(t(5)), 3),
            (1, RolloutOutcome::Complete, Some(t(3)), 1),
        ]
    );
    assert_eq!(group.history[1].by.as_deref(), Some("alice"));

    // The API's list: the current one first, still progressing.
    let records = group.records();
    assert_eq!(records.len(), 3);
    assert_eq!(
        (
            records[0].revision,
            records[0].outcome,
            records[0].finished_at
        ),
        (3, RolloutOutcome::Progressing, None)
    );
    assert_eq!(records[0].versions, v3);
    assert_eq!(records[1..], group.history[..]);
}

#[test]
fn history_keeps_the_newest_rollouts_only() {
    let mut group = GroupRollouts::default();
    let start = at("2026-03-27T00:00:00Z");
    for n in 1..=30u64 {
        let now = start.plus(Duration::from_secs(n * 60));
        assert!(group.begin(&versions(&[("app", &n.to_string())]), n, None, now));
    }
    assert_eq!(group.current.as_ref().unwrap().revision, 30);
    assert_eq!(group.history.len(), ROLLOUT_HISTORY_KEPT);
    let revisions: Vec<u64> = group.history.iter().map(|r| r.revision).collect();
    let expected: Vec<u64> = (10..=29).rev().collect();
    assert_eq!(revisions, expected, "newest first, the oldest dropped");
}

#[test]
fn undo_returns_to_the_last_completed_rollout_with_other_versions() {
    let v1 = versions(&[("app", "1.0")]);
    let v2 = versions(&[("app", "2.0")]);
    let v3 = versions(&[("app", "3.0")]);
    let t = |h: u32| at(&format!("2026-03-27T{h:02}:00:00Z"));
    let mut group = GroupRollouts::default();
    assert_eq!(group.undo_target(), None, "nothing to undo to");
    group.begin(&v1, 1, None, t(1));
    complete(&mut group, t(2));
    assert_eq!(
        group.undo_target(),
        None,
        "the current one is not in the history"
    );
    group.begin(&v2, 2, None, t(3));
    group.begin(&v3, 3, None, t(4));
    // v2 was superseded: the undo goes back to v1.
    let target = group.undo_target().expect("v1 completed");
    assert_eq!((target.revision, &target.versions), (1, &v1));

    // Undo: pin v1 at generation 3.
    group.undo = Some(UndoPin {
        versions: target.versions.clone(),
        generation: 3,
        by: RolloutPause {
            by: "admin".into(),
            time: t(5),
        },
    });
    let resolved = v3.clone();
    assert_eq!(group.target(resolved.clone(), 3), v1);
    assert!(group.undo.is_some(), "held while the spec does not change");
    assert!(group.begin(&v1, 3, None, t(5)));
    assert_eq!(group.history[0].versions, v3);
    assert_eq!(group.history[0].outcome, RolloutOutcome::Undone);
    let current = group.current.as_ref().unwrap();
    assert_eq!((current.revision, &current.versions), (4, &v1));
    // Back at v1, an undo would not return to v1 again; nothing else completed.
    assert_eq!(group.undo_target(), None);

    // The group's spec moves on: the pin is dropped and the resolved versions count again.
    assert_eq!(group.target(resolved.clone(), 4), v3);
    assert_eq!(group.undo, None);
    assert_eq!(group.target(resolved, 3), v3, "a dropped pin stays dropped");
}

#[test]
fn a_rollout_that_failed_at_the_threshold_is_recorded_failed_unless_undone() {
    let v1 = versions(&[("app", "1.0")]);
    let v2 = versions(&[("app", "2.0")]);
    let t = |h: u32| at(&format!("2026-03-27T{h:02}:00:00Z"));
    let fail = |group: &mut GroupRollouts, now| {
        let state = group.current.as_mut().unwrap();
        let held = advance(
            &[],
            state,
            4,
            &[progress(4, 1, 3)],
            Some(Wait::FailureThreshold),
            now,
        );
        assert_eq!(held, Wait::FailureThreshold);
    };
    let mut group = GroupRollouts::default();
    group.begin(&v1, 1, None, t(1));
    fail(&mut group, t(2));
    assert_eq!(group.records()[0].outcome, RolloutOutcome::Failed);
    group.begin(&v2, 2, None, t(3));
    assert_eq!(group.history[0].outcome, RolloutOutcome::Failed);
    assert_eq!(group.history[0].finished_at, Some(t(2)));

    // Failed, then undone back to v1: recorded as undone.
    fail(&mut group, t(4));
    group.undo = Some(UndoPin {
        versions: v1.clone(),
        generation: 2,
        by: RolloutPause {
            by: "admin".into(),
            time: t(5),
        },
    });
    group.begin(&v1, 2, None, t(5));
    assert_eq!(group.history[0].outcome, RolloutOutcome::Undone);
    assert_eq!(group.history[0].versions, v2);
}

// ---------------------------------------------------------------------------------------------
// Maintenance windows.

fn window(schedule: &str, duration: &str, zone: Option<&str>) -> MaintenanceWindow {
    MaintenanceWindow {
        schedule: schedule.into(),
        duration: duration.into(),
        time_zone: zone.map(str::to_string),
    }
}

fn win(start: &str, end: &str) -> Window {
    Window {
        start: at(start),
        end: at(end),
    }
}

fn starts(windows: &[Window]) -> Vec<String> {
    windows.iter().map(|w| w.start.to_string()).collect()
}

fn weeknights_berlin() -> Vec<MaintenanceWindow> {
    vec![window("0 22 * * 1-5", "6h", Some("Europe/Berlin"))]
}

#[test]
fn weeknight_windows_in_berlin_follow_local_time_into_summer_time() {
    // Monday 2026-03-23; summer time starts on Sunday 2026-03-29.
    let now = at("2026-03-23T12:00:00Z");
    let windows = window_intervals(&weeknights_berlin(), now, 14 * DAY, 100);
    assert_eq!(
        starts(&windows),
        [
            "2026-03-23T21:00:00.000Z",
            "2026-03-24T21:00:00.000Z",
            "2026-03-25T21:00:00.000Z",
            "2026-03-26T21:00:00.000Z",
            "2026-03-27T21:00:00.000Z",
            "2026-03-30T20:00:00.000Z",
            "2026-03-31T20:00:00.000Z",
            "2026-04-01T20:00:00.000Z",
            "2026-04-02T20:00:00.000Z",
            "2026-04-03T20:00:00.000Z",
        ]
    );
    for w in &windows {
        assert_eq!(w.end, w.start.plus(6 * HOUR));
    }
}

#[test]
fn weeknight_windows_in_berlin_follow_local_time_back_to_winter_time() {
    // Monday 2026-10-19; winter time returns on Sunday 2026-10-25.
    let now = at("2026-10-19T12:00:00Z");
    let windows = window_intervals(&weeknights_berlin(), now, 14 * DAY, 100);
    assert_eq!(
        starts(&windows),
        [
            "2026-10-19T20:00:00.000Z",
            "2026-10-20T20:00:00.000Z",
            "2026-10-21T20:00:00.000Z",
            "2026-10-22T20:00:00.000Z",
            "2026-10-23T20:00:00.000Z",
            "2026-10-26T21:00:00.000Z",
            "2026-10-27T21:00:00.000Z",
            "2026-10-28T21:00:00.000Z",
            "2026-10-29T21:00:00.000Z",
            "2026-10-30T21:00:00.000Z",
        ]
    );
}

#[test]
fn a_window_open_now_is_included_and_one_just_closed_is_not() {
    let open = window_intervals(&weeknights_berlin(), at("2026-03-24T01:00:00Z"), DAY, 100);
    assert_eq!(open[0], win("2026-03-23T21:00:00Z", "2026-03-24T03:00:00Z"));
    assert_eq!(open.len(), 2);
    // At its end exactly it is closed: the next one comes first.
    let closed = window_intervals(&weeknights_berlin(), at("2026-03-24T03:00:00Z"), DAY, 100);
    assert_eq!(starts(&closed), ["2026-03-24T21:00:00.000Z"]);
    // At its start exactly it is open.
    let opening = window_intervals(&weeknights_berlin(), at("2026-03-24T21:00:00Z"), HOUR, 100);
    assert_eq!(starts(&opening), ["2026-03-24T21:00:00.000Z"]);
}

#[test]
fn overlapping_windows_merge_and_the_limit_truncates() {
    // 22:00-04:00 and 02:00-05:00 UTC: one window 22:00-05:00 a night.
    let windows = [
        window("0 22 * * *", "6h", None),
        window("0 2 * * *", "3h", None),
    ];
    let now = at("2026-03-23T12:00:00Z");
    let merged = window_intervals(&windows, now, 3 * DAY, 100);
    assert_eq!(
        merged,
        [
            win("2026-03-23T22:00:00Z", "2026-03-24T05:00:00Z"),
            win("2026-03-24T22:00:00Z", "2026-03-25T05:00:00Z"),
            win("2026-03-25T22:00:00Z", "2026-03-26T05:00:00Z"),
        ]
    );
    assert_eq!(window_intervals(&windows, now, 3 * DAY, 2), merged[..2]);
    let all = window_intervals(&weeknights_berlin(), now, 14 * DAY, 100);
    assert_eq!(
        window_intervals(&weeknights_berlin(), now, 14 * DAY, 3),
        all[..3]
    );
}

#[test]
fn an_invalid_window_is_skipped_and_named_by_its_path() {
    let now = at("2026-03-23T12:00:00Z");
    let valid = window("0 22 * * 1-5", "6h", Some("Europe/Berlin"));
    let windows = [
        window("61 * * * *", "1h", None),
        valid.clone(),
        window("0 3 * * *", "1h", Some("Mars/Olympus_Mons")),
    ];
    assert_eq!(
        window_intervals(&windows, now, 7 * DAY, 100),
        window_intervals(&[valid], now, 7 * DAY, 100)
    );
    let errors = window_errors(&windows);
    let paths: Vec<&str> = errors.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.rollout.maintenanceWindows[0].schedule",
            "spec.rollout.maintenanceWindows[2].timeZone",
        ]
    );
    assert!(errors[0].1.contains("minute"), "{}", errors[0].1);
    assert!(errors[1].1.contains("Mars/Olympus_Mons"), "{}", errors[1].1);
    assert!(window_errors(&windows[1..2]).is_empty());
}

#[test]
fn a_window_is_read_in_its_time_zone() {
    let now = at("2026-01-05T12:00:00Z");
    let evenings = [window("0 22 * * *", "1h", Some("America/New_York"))];
    let new_york = window_intervals(&evenings, now, DAY, 100);
    let utc = window_intervals(&[window("0 22 * * *", "1h", None)], now, DAY, 100);
    assert_eq!(starts(&new_york), ["2026-01-06T03:00:00.000Z"]);
    assert_eq!(starts(&utc), ["2026-01-05T22:00:00.000Z"]);
}

#[test]
fn a_window_whose_local_start_is_skipped_by_spring_forward_opens_after_the_gap() {
    // 02:30 does not exist in Berlin on 2026-03-29: the schedule fires once, at 03:00 CEST.
    let half_past_two = [window("30 2 * * *", "1h", Some("Europe/Berlin"))];
    let windows = window_intervals(&half_past_two, at("2026-03-28T12:00:00Z"), 3 * DAY, 100);
    assert_eq!(
        starts(&windows),
        [
            "2026-03-29T01:00:00.000Z",
            "2026-03-30T00:30:00.000Z",
            "2026-03-31T00:30:00.000Z",
        ]
    );
    // 02:30 happens twice on 2026-10-25: the window opens once, in the first pass (CEST).
    let windows = window_intervals(&half_past_two, at("2026-10-24T12:00:00Z"), 2 * DAY, 100);
    assert_eq!(
        starts(&windows),
        ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]
    );
}

#[test]
fn windows_are_resolved_alike_whatever_their_order_in_the_list() {
    // Weeknights 22:00-04:00 and every afternoon 14:00-15:00 (UTC), the two nearest asked for:
    // today's afternoon and tonight, however many weeknights the first schedule has ahead.
    let nights = window("0 22 * * 1-5", "6h", None);
    let afternoons = window("0 14 * * *", "1h", None);
    let now = at("2026-03-23T12:00:00Z");
    let expected = [
        win("2026-03-23T14:00:00Z", "2026-03-23T15:00:00Z"),
        win("2026-03-23T22:00:00Z", "2026-03-24T04:00:00Z"),
    ];
    let list = [nights.clone(), afternoons.clone()];
    assert_eq!(window_intervals(&list, now, 14 * DAY, 2), expected);
    let list = [afternoons, nights];
    assert_eq!(window_intervals(&list, now, 14 * DAY, 2), expected);
}

#[test]
fn a_rollout_of_no_versions_gives_its_place_to_the_first_real_one() {
    let t0 = at("2026-03-27T12:00:00Z");
    let t1 = at("2026-03-27T12:05:00Z");
    let mut group = GroupRollouts::default();
    // The group exists before its release: it resolves to nothing.
    assert!(group.begin(&BTreeMap::new(), 1, None, t0));
    let kiosk: BTreeMap<String, String> = [("kiosk".to_string(), "1.0.0".to_string())].into();
    assert!(group.begin(&kiosk, 1, None, t1));
    let current = group.current.as_ref().unwrap();
    assert_eq!(
        (current.revision, &current.versions, current.started_at),
        (1, &kiosk, t1),
        "still the group's first rollout, whose steps are skipped"
    );
    assert!(group.history.is_empty(), "{:?}", group.history);
}
