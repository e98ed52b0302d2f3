//! Remote operations with the real `tc-agent` binary against the fake controller, which hands
//! out its orders with every answer (redelivery is normal) and records the reports: `exec`
//! (exit codes, separate output tails, at most once, timeouts that kill the process group, an
//! agent killed mid-run), `allowedTasks`, reboot and shutdown through harmless configured
//! commands and a test boot id, Wake-on-LAN to a loopback socket, `collectLogs` and orders past
//! their deadline.

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use common::{BOOTSTRAP_TOKEN, FakeController, agent_command, wait_for};
use tc_proto::Timestamp;
use tc_proto::task::{ExecOrder, TaskAction, TaskOrder, TaskRunState, WakeOrder};

const WAIT: Duration = Duration::from_secs(60);

/// A `tc-agent` process with its work directory, configuration file and log.
struct Agent {
    child: Child,
    log: PathBuf,
}

/// The work directory of a test: state, configuration, scripts, a boot id.
struct Work {
    temp: tempfile::TempDir,
}

impl Work {
    fn new(extra_config: &str) -> Work {
        let temp = tempfile::tempdir().unwrap();
        let work = Work { temp };
        std::fs::write(work.path("bootstrap.token"), format!("{BOOTSTRAP_TOKEN}\n")).unwrap();
        std::fs::write(work.path("boot_id"), "boot-1\n").unwrap();
        std::fs::write(
            work.path("agent.yaml"),
            format!(
                "bootstrapTokenFile: bootstrap.token\nname: task-test\nmachineId: task-test-machine\n\
                 bootIdFile: boot_id\n{extra_config}"
            ),
        )
        .unwrap();
        work
    }

    fn path(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    fn start(&self, fake: &FakeController, arguments: &[&str]) -> Agent {
        let runs = std::fs::read_dir(self.temp.path())
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with("agent-"))
            })
            .count();
        let log = self.path(&format!("agent-{runs}.log"));
        let child = agent_command(&fake.url(), None, &self.path("state"))
            .arg("--config")
            .arg(self.path("agent.yaml"))
            .args(arguments)
            .current_dir(self.temp.path())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the tc-agent binary starts");
        Agent { child, log }
    }

    /// Lines of a file the test's commands append to (empty when it does not exist).
    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the agent with SIGKILL, as a crash or a power cut would stop it.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn order(id: &str, action: TaskAction) -> TaskOrder {
    TaskOrder {
        id: id.into(),
        task: id.split('/').next().unwrap().into(),
        action,
        not_after: None,
    }
}

fn shell(script: &str, timeout_seconds: u32) -> TaskAction {
    TaskAction::Exec(ExecOrder {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout_seconds,
        working_dir: None,
    })
}

/// Waits for the final report of `id`.
async fn final_report(
    fake: &FakeController,
    agent: &Agent,
    id: &str,
) -> tc_proto::task::TaskReport {
    wait_for(
        WAIT,
        || fake.final_report(id).is_some(),
        || {
            format!(
                "reports: {:?}\nlog:\n{}",
                fake.state().task_reports,
                agent.log()
            )
        },
    )
    .await;
    fake.final_report(id).unwrap()
}

/// Waits until the orders were handed out `rounds` more times (each time a chance to run them
/// again).
async fn wait_for_redeliveries(fake: &FakeController, agent: &Agent, rounds: usize) {
    let served = fake.state().orders_served;
    wait_for(
        WAIT,
        || fake.state().orders_served >= served + rounds,
        || agent.log(),
    )
    .await;
}

/// True when the process does not exist any more or is a zombie.
fn process_is_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_exit_codes_and_separate_output_and_runs_each_order_once() {
    let fake = FakeController::start();
    let work = Work::new("");
    let count = work.path("count");
    fake.add_order(order(
        "hello/1",
        shell(
            &format!(
                "echo hello >> {}; echo to-stdout; echo to-stderr >&2",
                count.display()
            ),
            30,
        ),
    ));
    fake.add_order(order(
        "broken/1",
        shell(
            &format!(
                "echo broken >> {}; echo partial; echo oops >&2; exit 7",
                count.display()
            ),
            30,
        ),
    ));
    let agent = work.start(&fake, &[]);

    let hello = final_report(&fake, &agent, "hello/1").await;
    assert_eq!(hello.state, TaskRunState::Succeeded, "{hello:?}");
    assert_eq!(hello.exit_code, Some(0));
    assert_eq!(hello.stdout, "to-stdout");
    assert_eq!(hello.stderr, "to-stderr");
    assert!(hello.started_at.is_some() && hello.finished_at.is_some());
    let broken = final_report(&fake, &agent, "broken/1").await;
    assert_eq!(broken.state, TaskRunState::Failed, "{broken:?}");
    assert_eq!(broken.exit_code, Some(7));
    assert_eq!(broken.stdout, "partial");
    assert_eq!(broken.stderr, "oops");
    assert_eq!(broken.message.as_deref(), Some("exited with code 7"));
    // The start was reported too, before the end.
    let states: Vec<_> = fake
        .task_reports("hello/1")
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states.first(), Some(&TaskRunState::Running), "{states:?}");

    // Delivered again and again, and after a restart: never run again.
    wait_for_redeliveries(&fake, &agent, 3).await;
    agent.kill();
    let agent = work.start(&fake, &[]);
    wait_for_redeliveries(&fake, &agent, 3).await;
    let mut runs = work.lines("count");
    runs.sort();
    assert_eq!(runs, ["broken", "hello"], "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_commands_whole_process_group() {
    let fake = FakeController::start();
    let work = Work::new("");
    let late = work.path("late");
    let child_pid = work.path("child.pid");
    fake.add_order(order(
        "slow/1",
        shell(
            &format!(
                "(sleep 3; touch {}) & echo $! > {}; echo started; sleep 60",
                late.display(),
                child_pid.display()
            ),
            1,
        ),
    ));
    let agent = work.start(&fake, &[]);
    let report = final_report(&fake, &agent, "slow/1").await;
    assert_eq!(report.state, TaskRunState::Failed, "{report:?}");
    assert_eq!(
        report.message.as_deref(),
        Some("timed out after 1 s and was killed")
    );
    assert_eq!(report.exit_code, None);
    assert_eq!(report.stdout, "started");
    // The background child went with the group, so the file it would write never comes.
    let pid = std::fs::read_to_string(&child_pid).unwrap();
    wait_for(
        Duration::from_secs(10),
        || process_is_gone(pid.trim()),
        || format!("the background child {pid} survived the timeout"),
    )
    .await;
    assert!(!late.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_exec_reports_interrupted_and_does_not_run_it_again() {
    let fake = FakeController::start();
    let work = Work::new("");
    let runs = work.path("runs");
    let pid = work.path("pid");
    fake.add_order(order(
        "long/1",
        shell(
            &format!(
                "echo run >> {}; echo $$ > {}; exec sleep 120",
                runs.display(),
                pid.display()
            ),
            600,
        ),
    ));
    let agent = work.start(&fake, &[]);
    wait_for(
        WAIT,
        || work.lines("runs").len() == 1 && std::fs::metadata(&pid).is_ok_and(|m| m.len() > 0),
        || agent.log(),
    )
    .await;
    wait_for(
        WAIT,
        || {
            fake.task_reports("long/1")
                .iter()
                .any(|r| r.state == TaskRunState::Running)
        },
        || agent.log(),
    )
    .await;
    agent.kill();
    // The command lives on in its own process group: end it as a reboot would.
    let command_pid: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(command_pid).unwrap(),
        rustix::process::Signal::KILL,
    );

    let agent = work.start(&fake, &[]);
    let report = final_report(&fake, &agent, "long/1").await;
    assert_eq!(report.state, TaskRunState::Interrupted, "{report:?}");
    let message = report.message.unwrap();
    assert!(
        message.contains("stopped while running `exec` and did not run it again"),
        "{message}"
    );
    assert!(report.started_at.is_some());
    wait_for_redeliveries(&fake, &agent, 3).await;
    assert_eq!(work.lines("runs"), ["run"], "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_tasks_refuses_exec_and_unknown_actions_fail_without_running() {
    let fake = FakeController::start();
    let work = Work::new("allowedTasks: [exec, collectLogs]\n");
    let ran = work.path("ran");
    fake.add_order(order(
        "refused/1",
        shell(&format!("touch {}", ran.display()), 30),
    ));
    fake.add_order(order("future/1", TaskAction::Unknown));
    // The flag wins over the file.
    let agent = work.start(&fake, &["--allowed-tasks", "reboot,collectLogs"]);
    let report = final_report(&fake, &agent, "refused/1").await;
    assert_eq!(report.state, TaskRunState::Failed, "{report:?}");
    assert_eq!(
        report.message.as_deref(),
        Some("`exec` is not in this agent's allowedTasks")
    );
    let unknown = final_report(&fake, &agent, "future/1").await;
    assert_eq!(unknown.state, TaskRunState::Failed);
    assert_eq!(
        unknown.message.as_deref(),
        Some("this agent does not know the action")
    );
    wait_for_redeliveries(&fake, &agent, 3).await;
    assert!(!ran.exists(), "the refused command ran");
    // Reported once: a redelivery is answered from the journal, not refused again.
    assert_eq!(fake.task_reports("refused/1").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allowed_tasks_value_stops_the_agent_with_a_clear_error() {
    let fake = FakeController::start();
    let work = Work::new("allowedTasks: [reboot, format-disk]\n");
    let mut agent = work.start(&fake, &[]);
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{}", agent.log());
    assert!(
        agent
            .log()
            .contains("allowedTasks: `format-disk` is not an action"),
        "{}",
        agent.log()
    );
}

fn append(path: &std::path::Path, text: &str) {
    let before = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{before}{text}")).unwrap();
}

/// A power command that logs its run, and writes a new boot id when `new-boot` exists (as a
/// real reboot would give the next start), or fails when `fail` exists.
fn power_config(work: &Work) -> String {
    let script = work.path("power.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1\" >> {log}\n\
             if [ -e {fail} ]; then echo no-permission >&2; exit 4; fi\n\
             if [ -e {new} ]; then echo \"boot-$(date +%s%N)\" > {boot}; fi\nexit 0\n",
            log = work.path("power.log").display(),
            fail = work.path("fail").display(),
            new = work.path("new-boot").display(),
            boot = work.path("boot_id").display(),
        ),
    )
    .unwrap();
    format!(
        "rebootCommand: [/bin/sh, {0}, reboot]\nshutdownCommand: [/bin/sh, {0}, shutdown]\n",
        script.display()
    )
}

/// Runs the power order `id` until the agent reported it going down with `going`, then
/// restarts the agent (the machine came back, or not) and returns the final report.
async fn power_cycle(
    fake: &FakeController,
    work: &Work,
    agent: Agent,
    id: &str,
    action: TaskAction,
    going: &str,
) -> (Agent, tc_proto::task::TaskReport) {
    fake.add_order(order(id, action));
    wait_for(
        WAIT,
        || {
            fake.task_reports(id)
                .iter()
                .any(|r| r.state == TaskRunState::Running && r.message.as_deref() == Some(going))
        },
        || format!("{:?}\n{}", fake.state().task_reports, agent.log()),
    )
    .await;
    agent.kill();
    let agent = work.start(fake, &[]);
    let report = final_report(fake, &agent, id).await;
    (agent, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_succeeds_on_a_new_boot_and_fails_when_the_machine_did_not_restart() {
    let fake = FakeController::start();
    let work = Work::new("");
    let config = power_config(&work);
    append(&work.path("agent.yaml"), &config);
    let agent = work.start(&fake, &[]);

    std::fs::write(work.path("new-boot"), "").unwrap();
    let (agent, report) = power_cycle(
        &fake,
        &work,
        agent,
        "restart/1",
        TaskAction::Reboot,
        "rebooting",
    )
    .await;
    assert_eq!(report.state, TaskRunState::Succeeded, "{report:?}");
    assert_eq!(report.message.as_deref(), Some("rebooted"));

    std::fs::remove_file(work.path("new-boot")).unwrap();
    let (agent, report) = power_cycle(
        &fake,
        &work,
        agent,
        "restart/2",
        TaskAction::Reboot,
        "rebooting",
    )
    .await;
    assert_eq!(report.state, TaskRunState::Failed, "{report:?}");
    let message = report.message.unwrap();
    assert!(message.contains("the machine did not restart"), "{message}");

    // A command that fails is reported at once, with its output.
    std::fs::write(work.path("fail"), "").unwrap();
    fake.add_order(order("restart/3", TaskAction::Reboot));
    let report = final_report(&fake, &agent, "restart/3").await;
    assert_eq!(report.state, TaskRunState::Failed, "{report:?}");
    assert_eq!(report.exit_code, Some(4));
    assert_eq!(report.stderr, "no-permission");
    assert!(report.message.unwrap().contains("the reboot command"));
    wait_for_redeliveries(&fake, &agent, 3).await;
    assert_eq!(work.lines("power.log"), ["reboot", "reboot", "reboot"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_succeeds_when_the_machine_comes_back_on_a_new_boot() {
    let fake = FakeController::start();
    let work = Work::new("");
    let config = power_config(&work);
    append(&work.path("agent.yaml"), &config);
    let agent = work.start(&fake, &[]);

    std::fs::write(work.path("new-boot"), "").unwrap();
    let (agent, report) = power_cycle(
        &fake,
        &work,
        agent,
        "off/1",
        TaskAction::Shutdown,
        "shutting down",
    )
    .await;
    assert_eq!(report.state, TaskRunState::Succeeded, "{report:?}");
    assert_eq!(report.message.as_deref(), Some("came back after shutdown"));

    std::fs::remove_file(work.path("new-boot")).unwrap();
    let (agent, report) = power_cycle(
        &fake,
        &work,
        agent,
        "off/2",
        TaskAction::Shutdown,
        "shutting down",
    )
    .await;
    assert_ne!(report.state, TaskRunState::Succeeded, "{report:?}");
    assert_eq!(report.state, TaskRunState::Failed, "{report:?}");
    wait_for_redeliveries(&fake, &agent, 3).await;
    assert_eq!(work.lines("power.log"), ["shutdown", "shutdown"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_sends_the_magic_packet_to_the_configured_address() {
    let fake = FakeController::start();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let port = socket.local_addr().unwrap().port();
    let work = Work::new(&format!(
        "wakeOnLan:\n  address: 127.0.0.1\n  port: {port}\n"
    ));
    let wake = |mac: &str| {
        TaskAction::Wake(WakeOrder {
            target: "front-desk-2".into(),
            mac: mac.into(),
            broadcast: "192.0.2.255".into(),
        })
    };
    fake.add_order(order("wake/1/wake/front-desk-2", wake("00:1a:2B:3c:4d:5e")));
    fake.add_order(order("wake/1/wake/bad", wake("00:1a:2b")));
    let agent = work.start(&fake, &[]);

    let receiver = tokio::task::spawn_blocking(move || {
        let mut buffer = [0u8; 512];
        let (length, _) = socket
            .recv_from(&mut buffer)
            .expect("a magic packet arrives");
        buffer[..length].to_vec()
    });
    let packet = receiver.await.unwrap();
    let mut expected = vec![0xFF; 6];
    for _ in 0..16 {
        expected.extend_from_slice(&[0x00, 0x1A, 0x2B, 0x3C, 0x4D, 0x5E]);
    }
    assert_eq!(packet.len(), 102);
    assert_eq!(packet, expected);
    let report = final_report(&fake, &agent, "wake/1/wake/front-desk-2").await;
    assert_eq!(report.state, TaskRunState::Succeeded, "{report:?}");
    assert_eq!(
        report.message.unwrap(),
        format!("magic packet for 00:1a:2B:3c:4d:5e sent to 127.0.0.1:{port}")
    );
    let bad = final_report(&fake, &agent, "wake/1/wake/bad").await;
    assert_eq!(bad.state, TaskRunState::Failed);
    assert!(
        bad.message
            .unwrap()
            .contains("`00:1a:2b` is not a MAC address")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_logs_sends_the_recent_log_and_the_journals() {
    let fake = FakeController::start();
    let work = Work::new("");
    let agent = work.start(&fake, &[]);
    // Wait until the agent is enrolled and heartbeating, then ask.
    wait_for(WAIT, || !fake.state().heartbeats.is_empty(), || agent.log()).await;
    fake.add_order(order("logs/1", TaskAction::CollectLogs));
    let report = final_report(&fake, &agent, "logs/1").await;
    assert_eq!(report.state, TaskRunState::Succeeded, "{report:?}");
    let logs = report.logs.unwrap();
    assert!(logs.len() <= tc_proto::task::MAX_TASK_LOGS_BYTES);
    assert!(logs.contains("agent starting"), "{logs}");
    assert!(logs.contains("order started"), "{logs}");
    assert!(logs.contains("==> package journal"), "{logs}");
    assert!(logs.contains("==> tasks journal"), "{logs}");
    assert!(logs.contains("\"id\": \"logs/1\""), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_past_its_deadline_is_neither_run_nor_reported() {
    let fake = FakeController::start();
    let work = Work::new("");
    let ran = work.path("ran");
    let mut expired = order("late/1", shell(&format!("touch {}", ran.display()), 30));
    expired.not_after = Some(Timestamp::from_unix_millis(
        Timestamp::now().unix_millis() - 3_600_000,
    ));
    fake.add_order(expired);
    fake.add_order(order("logs/1", TaskAction::CollectLogs));
    let agent = work.start(&fake, &[]);
    final_report(&fake, &agent, "logs/1").await;
    wait_for_redeliveries(&fake, &agent, 3).await;
    assert!(!ran.exists());
    assert!(fake.task_reports("late/1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_retried_until_the_controller_takes_them_also_after_a_restart() {
    let fake = FakeController::start();
    let work = Work::new("");
    let runs = work.path("runs");
    fake.state().task_report_status = Some(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    fake.add_order(order(
        "retry/1",
        shell(&format!("echo run >> {}; echo done", runs.display()), 30),
    ));
    let agent = work.start(&fake, &[]);
    wait_for(
        WAIT,
        || work.lines("runs").len() == 1 && fake.state().task_report_posts >= 3,
        || agent.log(),
    )
    .await;
    // Finished while the controller refused every report; the report waits in the journal.
    let journal = std::fs::read_to_string(work.path("state/tasks.json")).unwrap();
    assert!(journal.contains("\"Finished\""), "{journal}");
    agent.kill();
    fake.state().task_report_status = None;
    let agent = work.start(&fake, &[]);
    let report = final_report(&fake, &agent, "retry/1").await;
    assert_eq!(report.state, TaskRunState::Succeeded, "{report:?}");
    assert_eq!(report.stdout, "done");
    wait_for_redeliveries(&fake, &agent, 3).await;
    assert_eq!(work.lines("runs"), ["run"]);
    wait_for(
        WAIT,
        || {
            std::fs::read_to_string(work.path("state/tasks.json"))
                .is_ok_and(|journal| journal.contains("\"Reported\""))
        },
        || agent.log(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_controller_refuses_with_a_4xx_is_dropped_not_retried() {
    let fake = FakeController::start();
    let work = Work::new("");
    fake.state().task_report_status = Some(axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    fake.add_order(order("refused-report/1", TaskAction::CollectLogs));
    let agent = work.start(&fake, &[]);
    wait_for(
        WAIT,
        || {
            std::fs::read_to_string(work.path("state/tasks.json"))
                .is_ok_and(|journal| journal.contains("\"Reported\""))
        },
        || agent.log(),
    )
    .await;
    let posts = fake.state().task_report_posts;
    fake.state().task_report_status = None;
    wait_for_redeliveries(&fake, &agent, 3).await;
    assert_eq!(fake.state().task_report_posts, posts, "{}", agent.log());
    assert!(fake.task_reports("refused-report/1").is_empty());
    assert!(
        agent.log().contains("refused the task reports"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_run_side_by_side_and_do_not_hold_up_package_installs() {
    let fake = FakeController::start();
    let work = Work::new("");
    // Each waits for the other to have started: they finish only if both run at once.
    let wait_for_each_other = |me: &str, other: &str| {
        shell(
            &format!(
                "touch {me}; while [ ! -e {other} ]; do sleep 0.05; done; \
                 while [ ! -e {go} ]; do sleep 0.05; done; echo {name}",
                me = work.path(me).display(),
                other = work.path(other).display(),
                go = work.path("go").display(),
                name = me,
            ),
            60,
        )
    };
    fake.add_order(order("left/1", wait_for_each_other("left", "right")));
    fake.add_order(order("right/1", wait_for_each_other("right", "left")));
    let agent = work.start(&fake, &[]);
    wait_for(
        WAIT,
        || work.path("left").exists() && work.path("right").exists(),
        || agent.log(),
    )
    .await;
    // Both still running (they wait for `go`): a package is installed meanwhile.
    let package = fake.package(
        "kiosk",
        "1.0.0",
        common::package_zip("1.0.0"),
        tc_proto::Hooks::default(),
    );
    let revision = fake.set_desired(vec![package]);
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", revision),
        || agent.log(),
    )
    .await;
    assert!(fake.final_report("left/1").is_none());
    std::fs::write(work.path("go"), "").unwrap();
    for (id, name) in [("left/1", "left"), ("right/1", "right")] {
        let report = final_report(&fake, &agent, id).await;
        assert_eq!(report.state, TaskRunState::Succeeded, "{report:?}");
        assert_eq!(report.stdout, name);
    }
}
