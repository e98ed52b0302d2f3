//! What each action does. Every function returns the order's report without times (the runner
//! stamps them); none touches the journal.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tc_proto::task::{
    ExecOrder, MAX_EXEC_TIMEOUT_SECONDS, MAX_TASK_LOGS_BYTES, MAX_TASK_OUTPUT_BYTES, TaskReport,
    TaskRunState, WakeOrder, tail,
};
use tokio::process::Command;

use crate::config::tasks::WakeOnLan;
use crate::hooks::{End, Finished, Supervised};
use crate::state::{StateDir, check_dir, read_file};

/// How long a reboot or shutdown command may take to return.
pub const POWER_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The working directory of `exec` orders that name none: `<state-dir>/tasks/`.
pub fn default_working_dir(dir: &StateDir) -> PathBuf {
    dir.root().join("tasks")
}

/// A report of `id` in `state` with `message`.
pub fn report(id: &str, state: TaskRunState, message: impl Into<String>) -> TaskReport {
    let mut report = TaskReport::new(id, state);
    report.message = Some(tail(&message.into(), tc_proto::limits::MAX_MESSAGE_BYTES).to_owned());
    report
}

/// Runs an `exec` order: `command` (no shell) in its own process group in the working directory,
/// killed with its group at the timeout. Exit 0 is `Succeeded`.
pub async fn exec(id: &str, order: &ExecOrder, dir: &StateDir) -> TaskReport {
    let Some((program, arguments)) = order.command.split_first() else {
        return report(id, TaskRunState::Failed, "the command is empty");
    };
    let working_dir = match &order.working_dir {
        Some(path) => PathBuf::from(path),
        None => match ensure_private_dir(&default_working_dir(dir)) {
            Ok(path) => path,
            Err(message) => return report(id, TaskRunState::Failed, message),
        },
    };
    let seconds = order.timeout_seconds.clamp(1, MAX_EXEC_TIMEOUT_SECONDS);
    let mut command = Command::new(program);
    command
        .args(arguments)
        .current_dir(&working_dir)
        .env("TC_TASK_ID", id);
    let process = match Supervised::spawn(&mut command) {
        Ok(process) => process,
        Err(error) => {
            return report(
                id,
                TaskRunState::Failed,
                format!(
                    "cannot run `{program}` in {}: {error}",
                    working_dir.display()
                ),
            );
        }
    };
    let finished = process.wait(Duration::from_secs(u64::from(seconds))).await;
    command_report(id, finished, seconds, "the command")
}

/// The report of a finished command: `Succeeded` on exit 0, else `Failed` saying why.
fn command_report(id: &str, finished: Finished, seconds: u32, what: &str) -> TaskReport {
    let (state, exit_code, message) = match finished.end {
        End::Exited(status) => exit_outcome(status),
        End::TimedOut => (
            TaskRunState::Failed,
            None,
            Some(format!("timed out after {seconds} s and was killed")),
        ),
        End::WaitFailed(error) => (
            TaskRunState::Failed,
            None,
            Some(format!("cannot wait for {what}: {error}")),
        ),
    };
    let mut report = TaskReport::new(id, state);
    report.exit_code = exit_code;
    report.message = message;
    report.stdout = tail(&finished.stdout, MAX_TASK_OUTPUT_BYTES).to_owned();
    report.stderr = tail(&finished.stderr, MAX_TASK_OUTPUT_BYTES).to_owned();
    report
}

fn exit_outcome(status: ExitStatus) -> (TaskRunState, Option<i32>, Option<String>) {
    match (status.code(), status.signal()) {
        (Some(0), _) => (TaskRunState::Succeeded, Some(0), None),
        (Some(code), _) => (
            TaskRunState::Failed,
            Some(code),
            Some(format!("exited with code {code}")),
        ),
        (None, Some(signal)) => (
            TaskRunState::Failed,
            None,
            Some(format!("killed by signal {signal}")),
        ),
        (None, None) => (TaskRunState::Failed, None, Some(status.to_string())),
    }
}

/// Creates `path` (mode 0700) unless it exists, and checks the agent can trust it.
fn ensure_private_dir(path: &Path) -> Result<PathBuf, String> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(format!("cannot create {}: {error}", path.display())),
    }
    check_dir(path).map_err(|error| error.to_string())?;
    Ok(path.to_owned())
}

/// Runs the reboot or shutdown command `command`. `Ok` when it exited 0 (the machine is going
/// down); else the final `Failed` report with its output.
pub async fn power(id: &str, command: &[String], action: &str) -> Result<(), TaskReport> {
    let Some((program, arguments)) = command.split_first() else {
        return Err(report(
            id,
            TaskRunState::Failed,
            format!("the {action} command is empty"),
        ));
    };
    let mut process = Command::new(program);
    process.args(arguments);
    let process = Supervised::spawn(&mut process).map_err(|error| {
        report(
            id,
            TaskRunState::Failed,
            format!("cannot run the {action} command `{program}`: {error}"),
        )
    })?;
    let seconds = u32::try_from(POWER_COMMAND_TIMEOUT.as_secs()).unwrap_or(u32::MAX);
    let finished = process.wait(POWER_COMMAND_TIMEOUT).await;
    let mut report = command_report(id, finished, seconds, "the command");
    if report.state == TaskRunState::Succeeded {
        return Ok(());
    }
    report.message = Some(format!(
        "the {action} command `{}` failed: {}",
        command.join(" "),
        report.message.as_deref().unwrap_or("")
    ));
    Err(report)
}

/// Reads the id of the current boot from `path` (trimmed, not empty).
pub fn boot_id(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the boot id from {}: {error}", path.display()))?;
    let id = text.trim();
    if id.is_empty() {
        return Err(format!("{} is empty; expected the boot id", path.display()));
    }
    Ok(id.to_owned())
}

/// The Wake-on-LAN magic packet for `mac` (`aa:bb:cc:dd:ee:ff` or with `-`): six bytes 0xFF,
/// then the address sixteen times.
pub fn magic_packet(mac: &str) -> Result<[u8; 102], String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let bytes: Vec<u8> = parts
        .iter()
        .filter(|part| part.len() == 2)
        .filter_map(|part| u8::from_str_radix(part, 16).ok())
        .collect();
    if parts.len() != 6 || bytes.len() != 6 {
        return Err(format!(
            "`{mac}` is not a MAC address (expected six hex bytes such as aa:bb:cc:dd:ee:ff)"
        ));
    }
    let mut packet = [0xFF; 102];
    for chunk in packet[6..].chunks_mut(6) {
        chunk.copy_from_slice(&bytes);
    }
    Ok(packet)
}

/// Sends the magic packet of a `wake` order by UDP broadcast, to the order's broadcast address
/// or the configured one.
pub fn wake(id: &str, order: &WakeOrder, config: &WakeOnLan) -> TaskReport {
    let failed = |message: String| report(id, TaskRunState::Failed, message);
    let packet = match magic_packet(&order.mac) {
        Ok(packet) => packet,
        Err(message) => return failed(message),
    };
    let address: IpAddr = match config.address {
        Some(address) => address,
        None => match order.broadcast.trim().parse() {
            Ok(address) => address,
            Err(_) => {
                return failed(format!("`{}` is not a broadcast address", order.broadcast));
            }
        },
    };
    let target = SocketAddr::new(address, config.port);
    let bind: SocketAddr = if address.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sent = UdpSocket::bind(bind).and_then(|socket| {
        socket.set_broadcast(true)?;
        socket.send_to(&packet, target)
    });
    match sent {
        Ok(_) => report(
            id,
            TaskRunState::Succeeded,
            format!("magic packet for {} sent to {target}", order.mac),
        ),
        Err(error) => failed(format!(
            "cannot send the magic packet for {} to {target}: {error}",
            order.mac
        )),
    }
}

/// The agent's recent log, then the package journal and the tasks journal as they are on disk,
/// trimmed to [`MAX_TASK_LOGS_BYTES`] (the tail is kept).
pub fn collect_logs(id: &str, dir: &StateDir) -> TaskReport {
    let mut text = String::from("==> agent log (recent) <==\n");
    text.push_str(
        &super::logs::recent()
            .unwrap_or_else(|| "(this process keeps no log in memory)\n".to_owned()),
    );
    for (title, path) in [
        ("package journal", dir.journal()),
        ("tasks journal", super::journal::path(dir)),
    ] {
        text.push_str(&format!("\n==> {title} ({}) <==\n", path.display()));
        match read_file(&path) {
            Ok(Some(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(None) => text.push_str("(none)\n"),
            Err(error) => text.push_str(&format!("(cannot read it: {error})\n")),
        }
    }
    let mut report = report(
        id,
        TaskRunState::Succeeded,
        format!("{} bytes of logs", text.len().min(MAX_TASK_LOGS_BYTES)),
    );
    report.logs = Some(tail(&text, MAX_TASK_LOGS_BYTES).to_owned());
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_packets_repeat_the_mac_sixteen_times_after_six_ff() {
        let packet = magic_packet("00:1A:2b:3c:4d:5e").unwrap();
        assert_eq!(packet[..6], [0xFF; 6]);
        for copy in packet[6..].chunks(6) {
            assert_eq!(copy, [0x00, 0x1A, 0x2B, 0x3C, 0x4D, 0x5E]);
        }
        assert_eq!(magic_packet("00-1a-2b-3c-4d-5e").unwrap(), packet);
        for bad in [
            "",
            "00:1a:2b:3c:4d",
            "00:1a:2b:3c:4d:5e:6f",
            "0:1a:2b:3c:4d:5e",
            "zz:1a:2b:3c:4d:5e",
        ] {
            let error = magic_packet(bad).unwrap_err();
            assert!(error.contains("is not a MAC address"), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn exec_reports_exit_codes_and_separate_output_tails() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        let order = ExecOrder {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo out; echo err >&2; pwd; exit 3".into(),
            ],
            timeout_seconds: 10,
            working_dir: None,
        };
        let report = exec("t/1", &order, &dir).await;
        assert_eq!(report.state, TaskRunState::Failed);
        assert_eq!(report.exit_code, Some(3));
        let working = default_working_dir(&dir).canonicalize().unwrap();
        assert_eq!(report.stdout, format!("out\n{}", working.display()));
        assert_eq!(report.stderr, "err");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&working).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let missing = ExecOrder {
            command: vec!["/nonexistent/program".into()],
            timeout_seconds: 10,
            working_dir: None,
        };
        let report = exec("t/2", &missing, &dir).await;
        assert_eq!(report.state, TaskRunState::Failed);
        assert!(
            report
                .message
                .unwrap()
                .contains("cannot run `/nonexistent/program`")
        );
    }
}
