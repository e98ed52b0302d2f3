use proptest::prelude::*;
use tc_api::Timestamp;
use tc_api::resources::IntOrPercent;
use tc_api::task::{TaskClientState, TaskRunStatus};

use super::dispatch::{ClientRun, Counts, Dispatch, free_slots, plan_dispatch, run_counts};

const NOW: Timestamp = Timestamp::EPOCH;

fn deadline() -> Timestamp {
    Timestamp::from_unix_millis(60_000)
}

fn run(state: TaskClientState, offered: bool) -> ClientRun {
    ClientRun { state, offered }
}

fn pending(count: usize) -> Vec<ClientRun> {
    vec![run(TaskClientState::Pending, false); count]
}

#[test]
fn offers_in_order_up_to_the_limit_counting_offered_and_running() {
    use TaskClientState::*;
    let runs = [
        run(Succeeded, false),
        run(Running, false),
        run(Pending, true),
        run(Pending, false),
        run(Failed, false),
        run(Pending, false),
        run(Pending, false),
    ];
    // Limit 3: two active, one slot.
    assert_eq!(
        plan_dispatch(&runs, Some(IntOrPercent::Int(3)), deadline(), NOW),
        Dispatch {
            offer: vec![3],
            expire: vec![]
        }
    );
    assert_eq!(
        free_slots(&runs, Some(IntOrPercent::Int(3)), deadline(), NOW),
        1
    );
    // 50 % of 7 is 4 (rounded up): two slots.
    assert_eq!(
        plan_dispatch(&runs, Some(IntOrPercent::Percent(50)), deadline(), NOW).offer,
        vec![3, 5]
    );
    // No limit: every pending one not yet offered.
    assert_eq!(
        plan_dispatch(&runs, None, deadline(), NOW).offer,
        vec![3, 5, 6]
    );
    // Already at the limit.
    assert_eq!(
        plan_dispatch(&runs, Some(IntOrPercent::Int(2)), deadline(), NOW),
        Dispatch::default()
    );
}

#[test]
fn at_the_deadline_every_pending_client_expires_and_none_is_offered() {
    use TaskClientState::*;
    let runs = [
        run(Pending, true),
        run(Running, false),
        run(Pending, false),
        run(Succeeded, false),
    ];
    for now in [deadline(), Timestamp::from_unix_millis(90_000)] {
        assert_eq!(
            plan_dispatch(&runs, None, deadline(), now),
            Dispatch {
                offer: vec![],
                expire: vec![0, 2]
            }
        );
        assert_eq!(free_slots(&runs, None, deadline(), now), 0);
    }
}

#[test]
fn counts_by_state_fill_a_run_status() {
    use TaskClientState::*;
    let runs = [
        run(Pending, true),
        run(Pending, false),
        run(Running, false),
        run(Succeeded, false),
        run(Failed, false),
        run(Failed, false),
        run(Expired, false),
        run(Interrupted, false),
    ];
    let counts = run_counts(&runs);
    assert_eq!(
        counts,
        Counts {
            pending: 2,
            running: 1,
            succeeded: 1,
            failed: 2,
            expired: 1,
            interrupted: 1
        }
    );
    let mut status = TaskRunStatus {
        run: 1,
        started_at: NOW,
        deadline: deadline(),
        completed_at: None,
        targets: 0,
        pending: 0,
        running: 0,
        succeeded: 0,
        failed: 0,
        expired: 0,
        interrupted: 0,
    };
    counts.fill(&mut status);
    assert_eq!((status.targets, status.finished()), (8, 5));
    assert_eq!((status.pending, status.failed), (2, 2));
}

#[test]
fn fifty_thousand_clients_plan_in_one_pass() {
    let mut runs = pending(50_000);
    for run in runs.iter_mut().take(10_000) {
        run.state = TaskClientState::Succeeded;
    }
    let dispatch = plan_dispatch(&runs, Some(IntOrPercent::Percent(10)), deadline(), NOW);
    assert_eq!(dispatch.offer.len(), 5_000);
    assert_eq!(dispatch.offer[0], 10_000);
    assert_eq!(run_counts(&runs).pending, 40_000);
}

fn any_state() -> impl Strategy<Value = ClientRun> {
    (0..TaskClientState::ALL.len(), any::<bool>()).prop_map(|(state, offered)| {
        let state = TaskClientState::ALL[state];
        run(state, offered && state == TaskClientState::Pending)
    })
}

proptest! {
    #[test]
    fn dispatch_never_exceeds_the_limit_nor_offers_after_the_deadline(
        runs in proptest::collection::vec(any_state(), 0..200),
        limit in proptest::option::of(prop_oneof![
            (1u32..50).prop_map(IntOrPercent::Int),
            (1u32..=100).prop_map(IntOrPercent::Percent),
        ]),
        now in 0u64..120_000,
    ) {
        let now = Timestamp::from_unix_millis(now);
        let dispatch = plan_dispatch(&runs, limit, deadline(), now);
        let active_before = runs.iter().filter(|run| run.is_active()).count();
        let cap = limit.map_or(runs.len(), |limit| limit.resolve(runs.len()));
        if now >= deadline() {
            prop_assert!(dispatch.offer.is_empty());
            let pending: Vec<usize> = (0..runs.len())
                .filter(|index| runs[*index].state == TaskClientState::Pending)
                .collect();
            prop_assert_eq!(dispatch.expire, pending);
        } else {
            prop_assert!(dispatch.expire.is_empty());
            prop_assert!(dispatch.offer.windows(2).all(|w| w[0] < w[1]));
            for index in &dispatch.offer {
                prop_assert!(runs[*index].state == TaskClientState::Pending && !runs[*index].offered);
            }
            let active_after = active_before + dispatch.offer.len();
            prop_assert!(active_after <= cap.max(active_before));
            // Work-conserving: stops short only at the limit or when nothing is left.
            let waiting = runs.iter().filter(|run| run.state == TaskClientState::Pending && !run.offered).count();
            prop_assert!(active_after >= cap || dispatch.offer.len() == waiting);
            // The first ones in order.
            let first: Vec<usize> = (0..runs.len())
                .filter(|index| runs[*index].state == TaskClientState::Pending && !runs[*index].offered)
                .take(dispatch.offer.len())
                .collect();
            prop_assert_eq!(&dispatch.offer, &first);
            prop_assert_eq!(free_slots(&runs, limit, deadline(), now), cap.saturating_sub(active_before));
        }
    }
}
