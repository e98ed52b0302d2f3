//! The task tables: runs, results and logs survive a reopen, list by run, and go with their
//! run, on every backend.

use tc_api::Timestamp;
use tc_api::task::{TaskClientState, TaskResult};
use tc_proto::task::{TaskAction, WakeOrder};
use tc_store::{StoredTaskRun, StoredTaskTarget};

#[macro_use]
mod common;

use common::Backend;

fn run(task: &str, run: u64, targets: &[&str]) -> StoredTaskRun {
    StoredTaskRun {
        task: task.into(),
        task_uid: "uid-1".into(),
        run,
        started_at: Timestamp::from_unix_millis(run),
        deadline: Timestamp::from_unix_millis(run + 60_000),
        max_concurrent: 2,
        action: TaskAction::Reboot,
        targets: targets
            .iter()
            .map(|client| StoredTaskTarget {
                client: (*client).into(),
                wake: None,
            })
            .collect(),
    }
}

fn result(task: &str, run: u64, client: &str, state: TaskClientState) -> TaskResult {
    TaskResult {
        task: task.into(),
        run,
        client: client.into(),
        state,
        exit_code: Some(3),
        stdout: "out".into(),
        ..Default::default()
    }
}

fn runs_results_and_logs_survive_a_reopen_and_go_with_their_run<B: Backend>() {
    let dir = B::place();
    {
        let store = B::open(&dir);
        let mut wake = run("wake-floor", 2_000, &["a"]);
        wake.action = TaskAction::Wake(WakeOrder {
            target: String::new(),
            mac: String::new(),
            broadcast: String::new(),
        });
        wake.targets[0].wake = Some((
            "b".into(),
            WakeOrder {
                target: "a".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                broadcast: "192.0.2.255".into(),
            },
        ));
        store.put_task_run(&wake).unwrap();
        store
            .put_task_run(&run("restart", 1_000, &["a", "b"]))
            .unwrap();
        store.put_task_run(&run("restart", 30_000, &["a"])).unwrap();
        // A task whose name extends another's is not listed with it.
        store
            .put_task_run(&run("restart-2", 5_000, &["a"]))
            .unwrap();
        let results = [
            result("restart", 1_000, "a", TaskClientState::Succeeded),
            result("restart", 1_000, "b", TaskClientState::Failed),
            result("restart", 30_000, "a", TaskClientState::Running),
        ];
        store
            .put_task_results(&results, &[(1, "log line\n".into())])
            .unwrap();
        // A later result replaces the earlier one.
        store
            .put_task_results(
                &[result("restart", 30_000, "a", TaskClientState::Interrupted)],
                &[],
            )
            .unwrap();
        assert_eq!(store.task_runs("wake-floor").unwrap(), vec![wake]);
    }
    let store = B::open(&dir);
    let runs = store.task_runs("restart").unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run).collect::<Vec<_>>(),
        vec![1_000, 30_000]
    );
    let first = store.task_results("restart", 1_000).unwrap();
    assert_eq!(
        first
            .iter()
            .map(|r| (r.client.as_str(), r.state))
            .collect::<Vec<_>>(),
        vec![
            ("a", TaskClientState::Succeeded),
            ("b", TaskClientState::Failed)
        ]
    );
    assert_eq!(
        store
            .task_result("restart", 30_000, "a")
            .unwrap()
            .unwrap()
            .state,
        TaskClientState::Interrupted
    );
    assert_eq!(
        store.task_logs("restart", 1_000, "b").unwrap().as_deref(),
        Some("log line\n")
    );
    assert_eq!(store.task_logs("restart", 1_000, "a").unwrap(), None);

    // Runs older than 30 000 go with their results and logs; the newer one stays.
    assert_eq!(store.remove_task_runs("restart", Some(30_000)).unwrap(), 1);
    assert!(store.task_results("restart", 1_000).unwrap().is_empty());
    assert_eq!(store.task_logs("restart", 1_000, "b").unwrap(), None);
    assert_eq!(store.task_results("restart", 30_000).unwrap().len(), 1);
    assert_eq!(store.task_runs("restart-2").unwrap().len(), 1);
    // Every run of a deleted task goes; other tasks keep theirs.
    assert_eq!(store.remove_task_runs("restart", None).unwrap(), 1);
    assert!(store.task_runs("restart").unwrap().is_empty());
    assert_eq!(store.task_runs("restart-2").unwrap().len(), 1);
}

conformance!(runs_results_and_logs_survive_a_reopen_and_go_with_their_run,);
