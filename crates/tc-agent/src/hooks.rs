//! Running a package's lifecycle hooks with a timeout and the tail of their output.
//!
//! A hook runs in its own process group with the package directory as working directory, stdin
//! closed, and stdout and stderr captured together (only the last [`OUTPUT_TAIL_BYTES`] are kept).
//! [`Supervised`] is that machinery on its own (process group, timeout, tails of stdout and
//! stderr kept apart as well), which the remote operations' `exec` uses too.
//! When it exceeds its timeout the whole process group is killed, so a script's children do not
//! outlive it. A hook that exits normally may leave background processes behind (a service it
//! started); the agent then stops reading their output shortly after the hook itself exited.
//!
//! The program is resolved as follows: an absolute path is used as is; a path with a `/` is taken
//! relative to the package directory; a bare name is taken from the package directory when such
//! a file exists there, else looked up in `PATH`.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tc_proto::Hook;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// How much of a hook's combined output is kept for the report.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// How long the output of a hook is still read after it exited (its background children may keep
/// the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Which lifecycle hook is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// `preInstall`.
    PreInstall,
    /// `postInstall`.
    PostInstall,
    /// `healthCheck`.
    HealthCheck,
    /// `preRemove`.
    PreRemove,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::PreInstall => "preInstall",
            HookKind::PostInstall => "postInstall",
            HookKind::HealthCheck => "healthCheck",
            HookKind::PreRemove => "preRemove",
        })
    }
}

/// The package a hook runs for, exported to the hook as environment variables.
#[derive(Clone, Debug)]
pub struct HookContext<'a> {
    /// `TC_PACKAGE_NAME`.
    pub package: &'a str,
    /// `TC_PACKAGE_VERSION`.
    pub version: &'a str,
    /// `TC_PACKAGE_DIR`, also the working directory.
    pub directory: &'a Path,
    /// `TC_PREVIOUS_VERSION`, when another version was active before.
    pub previous_version: Option<&'a str>,
}

/// Why a hook did not succeed. Each variant carries the tail of the hook's output.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook has no command.
    #[error("{kind} has an empty command")]
    EmptyCommand {
        /// The hook.
        kind: HookKind,
    },
    /// The process could not be started.
    #[error("{kind}: cannot run `{program}`: {source}")]
    Spawn {
        /// The hook.
        kind: HookKind,
        /// The resolved program.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the process failed.
    #[error("{kind}: cannot wait for the process: {source}")]
    Wait {
        /// The hook.
        kind: HookKind,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The hook exited unsuccessfully.
    #[error("{kind} failed ({status}){}", tail_suffix(.output))]
    Failed {
        /// The hook.
        kind: HookKind,
        /// How it exited.
        status: ExitStatus,
        /// The tail of its output.
        output: String,
    },
    /// The hook ran longer than its timeout and was killed.
    #[error("{kind} timed out after {seconds}s and was killed{}", tail_suffix(.output))]
    TimedOut {
        /// The hook.
        kind: HookKind,
        /// The timeout.
        seconds: u32,
        /// The tail of its output.
        output: String,
    },
}

fn tail_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; output: {output}")
    }
}

/// A started hook. Dropping it kills its process group.
pub struct RunningHook {
    kind: HookKind,
    timeout_seconds: u32,
    process: Supervised,
}

/// Starts `hook` for `context`.
pub fn spawn(
    kind: HookKind,
    hook: &Hook,
    context: &HookContext<'_>,
) -> Result<RunningHook, HookError> {
    let Some((program, arguments)) = hook.command.split_first() else {
        return Err(HookError::EmptyCommand { kind });
    };
    let program = resolve_program(program, context.directory);
    let mut command = Command::new(&program);
    command
        .args(arguments)
        .current_dir(context.directory)
        .env("TC_PACKAGE_NAME", context.package)
        .env("TC_PACKAGE_VERSION", context.version)
        .env("TC_PACKAGE_DIR", context.directory)
        .env("TC_HOOK", kind.to_string());
    if let Some(previous) = context.previous_version {
        command.env("TC_PREVIOUS_VERSION", previous);
    }
    let process = Supervised::spawn(&mut command).map_err(|source| HookError::Spawn {
        kind,
        program: program.clone(),
        source,
    })?;
    Ok(RunningHook {
        kind,
        timeout_seconds: hook.timeout_seconds,
        process,
    })
}

impl RunningHook {
    /// Waits for the hook to finish or time out; on success returns the tail of its output
    /// (stdout and stderr together).
    pub async fn wait(self) -> Result<String, HookError> {
        let kind = self.kind;
        let timeout = Duration::from_secs(u64::from(self.timeout_seconds));
        let finished = self.process.wait(timeout).await;
        match finished.end {
            End::Exited(status) if status.success() => Ok(finished.combined),
            End::Exited(status) => Err(HookError::Failed {
                kind,
                status,
                output: finished.combined,
            }),
            End::TimedOut => Err(HookError::TimedOut {
                kind,
                seconds: self.timeout_seconds,
                output: finished.combined,
            }),
            End::WaitFailed(source) => Err(HookError::Wait { kind, source }),
        }
    }
}

/// Runs `hook` to completion.
pub async fn run(
    kind: HookKind,
    hook: &Hook,
    context: &HookContext<'_>,
) -> Result<String, HookError> {
    spawn(kind, hook, context)?.wait().await
}

/// A process the agent runs (a hook, a task's command) in its own process group, with stdin
/// closed and stdout and stderr captured. Dropping it before it exited kills its whole group.
pub struct Supervised {
    child: Child,
    process_group: Option<rustix::process::Pid>,
}

/// How a [`Supervised`] process ended, with the tails of its output (each at most
/// [`OUTPUT_TAIL_BYTES`], lossily decoded and trimmed).
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub end: End,
    /// The tail of its standard output.
    pub stdout: String,
    /// The tail of its standard error.
    pub stderr: String,
    /// The tail of both, interleaved as they were read.
    pub combined: String,
}

/// How a [`Supervised`] process ended.
#[derive(Debug)]
pub enum End {
    /// It exited (or a signal ended it).
    Exited(ExitStatus),
    /// It ran past its timeout; its process group was killed.
    TimedOut,
    /// Waiting for it failed; its process group was killed.
    WaitFailed(std::io::Error),
}

impl Supervised {
    /// Starts `command` in a process group of its own, with stdin closed and stdout and stderr
    /// piped.
    pub fn spawn(command: &mut Command) -> std::io::Result<Supervised> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn()?;
        let process_group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        Ok(Supervised {
            child,
            process_group,
        })
    }

    /// Waits for the process to exit, at most `timeout`; past it the whole process group is
    /// killed. After a normal exit its output is still read for a short while
    /// ([`OUTPUT_GRACE`]), and what it left running in the background is left alone.
    pub async fn wait(mut self, timeout: Duration) -> Finished {
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        let mut output = Output::default();
        let run = async {
            let mut out_buffer = [0u8; 1024];
            let mut err_buffer = [0u8; 1024];
            loop {
                tokio::select! {
                    status = self.child.wait() => return status,
                    read = read_some(&mut stdout, &mut out_buffer) => output.out(&out_buffer[..read]),
                    read = read_some(&mut stderr, &mut err_buffer) => output.err(&err_buffer[..read]),
                }
            }
        };
        let end = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(status)) => {
                // The process itself is done; forget the group so that dropping does not kill
                // what it deliberately left running.
                self.process_group = None;
                End::Exited(status)
            }
            Ok(Err(error)) => {
                self.kill();
                End::WaitFailed(error)
            }
            Err(_) => {
                self.kill();
                let _ = self.child.wait().await;
                End::TimedOut
            }
        };
        drain(&mut stdout, &mut stderr, &mut output).await;
        Finished {
            end,
            stdout: output.stdout.text(),
            stderr: output.stderr.text(),
            combined: output.combined.text(),
        }
    }

    /// Kills the process's whole group.
    fn kill(&mut self) {
        if let Some(group) = self.process_group.take() {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(group) = self.process_group.take() {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Reads from a pipe; once it is closed (or absent) never completes, so that `select!` keeps
/// waiting on the others.
async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buffer: &mut [u8]) -> usize {
    match pipe {
        Some(reader) => match reader.read(buffer).await {
            Ok(0) | Err(_) => {
                *pipe = None;
                std::future::pending().await
            }
            Ok(read) => read,
        },
        None => std::future::pending().await,
    }
}

/// Reads what is left in the pipes, for at most [`OUTPUT_GRACE`].
async fn drain<A: AsyncRead + Unpin, B: AsyncRead + Unpin>(
    stdout: &mut Option<A>,
    stderr: &mut Option<B>,
    output: &mut Output,
) {
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        let mut out_buffer = [0u8; 1024];
        let mut err_buffer = [0u8; 1024];
        while stdout.is_some() || stderr.is_some() {
            tokio::select! {
                read = read_some(stdout, &mut out_buffer) => output.out(&out_buffer[..read]),
                read = read_some(stderr, &mut err_buffer) => output.err(&err_buffer[..read]),
            }
        }
    })
    .await;
}

/// The tails of a process's output: each stream, and both together.
#[derive(Default)]
struct Output {
    stdout: Tail,
    stderr: Tail,
    combined: Tail,
}

impl Output {
    fn out(&mut self, data: &[u8]) {
        self.stdout.push(data);
        self.combined.push(data);
    }

    fn err(&mut self, data: &[u8]) {
        self.stderr.push(data);
        self.combined.push(data);
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        let excess = self.bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
        self.bytes.drain(..excess);
    }

    fn text(&self) -> String {
        let (front, back) = self.bytes.as_slices();
        let mut bytes = Vec::with_capacity(self.bytes.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

fn resolve_program(program: &str, directory: &Path) -> PathBuf {
    let path = Path::new(program);
    if path.is_absolute() {
        path.to_owned()
    } else if program.contains('/') {
        directory.join(path)
    } else {
        let local = directory.join(path);
        if local.is_file() {
            local
        } else {
            path.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, timeout_seconds: u32) -> Hook {
        Hook {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout_seconds,
        }
    }

    fn context(directory: &Path) -> HookContext<'_> {
        HookContext {
            package: "kiosk",
            version: "1.0.0",
            directory,
            previous_version: Some("0.9.0"),
        }
    }

    #[tokio::test]
    async fn successful_hook_returns_its_output_and_sees_the_environment() {
        let temp = tempfile::tempdir().unwrap();
        let hook = shell(
            "echo $TC_PACKAGE_NAME $TC_PACKAGE_VERSION $TC_PREVIOUS_VERSION $TC_HOOK; echo err >&2",
            10,
        );
        let output = run(HookKind::PostInstall, &hook, &context(temp.path()))
            .await
            .unwrap();
        assert!(output.contains("kiosk 1.0.0 0.9.0 postInstall"), "{output}");
        assert!(output.contains("err"), "{output}");
    }

    #[tokio::test]
    async fn failing_hook_reports_status_and_output_tail() {
        let temp = tempfile::tempdir().unwrap();
        let hook = shell("echo something broke; exit 3", 10);
        let error = run(HookKind::HealthCheck, &hook, &context(temp.path()))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("healthCheck failed"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("something broke"), "{text}");
    }

    #[tokio::test]
    async fn output_keeps_only_the_tail() {
        let temp = tempfile::tempdir().unwrap();
        let hook = shell(
            "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done",
            10,
        );
        let output = run(HookKind::PostInstall, &hook, &context(temp.path()))
            .await
            .unwrap();
        assert!(output.len() <= OUTPUT_TAIL_BYTES);
        assert!(output.ends_with("line-1999"), "{output}");
        assert!(!output.contains("line-0\n"));
    }

    #[tokio::test]
    async fn relative_program_runs_inside_the_package_directory() {
        let temp = tempfile::tempdir().unwrap();
        let script = temp.path().join("check.sh");
        std::fs::write(&script, "#!/bin/sh\necho in $(pwd)\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hook = Hook {
            command: vec!["./check.sh".into()],
            timeout_seconds: 10,
        };
        let output = run(HookKind::HealthCheck, &hook, &context(temp.path()))
            .await
            .unwrap();
        let canonical = temp.path().canonicalize().unwrap();
        assert!(
            output.contains(&canonical.display().to_string()),
            "{output}"
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let temp = tempfile::tempdir().unwrap();
        let hook = Hook {
            command: vec!["./nope.sh".into()],
            timeout_seconds: 10,
        };
        let error = run(HookKind::PreInstall, &hook, &context(temp.path()))
            .await
            .unwrap_err();
        assert!(matches!(error, HookError::Spawn { .. }), "{error}");
        assert!(error.to_string().contains("nope.sh"), "{error}");
    }

    #[tokio::test]
    async fn empty_command_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let hook = Hook {
            command: vec![],
            timeout_seconds: 10,
        };
        let error = run(HookKind::PreRemove, &hook, &context(temp.path()))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "preRemove has an empty command");
    }

    #[tokio::test]
    async fn hook_over_its_timeout_is_killed_with_its_children() {
        let temp = tempfile::tempdir().unwrap();
        let child_pid_file = temp.path().join("child.pid");
        let hook = shell(
            &format!(
                "sleep 60 & echo $! > {}; echo waiting; wait",
                child_pid_file.display()
            ),
            1,
        );
        let started = std::time::Instant::now();
        let error = run(HookKind::HealthCheck, &hook, &context(temp.path()))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(error, HookError::TimedOut { seconds: 1, .. }),
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("healthCheck timed out after 1s"), "{text}");
        assert!(text.contains("waiting"), "{text}");
        let pid = std::fs::read_to_string(&child_pid_file).unwrap();
        assert!(
            process_is_gone(pid.trim()),
            "the hook's child {pid} survived"
        );
    }

    /// True when the process does not exist any more or is a zombie waiting for its parent.
    fn process_is_gone(pid: &str) -> bool {
        for _ in 0..50 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                    if state.starts_with('Z') || state.starts_with('X') {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[tokio::test]
    async fn hook_that_daemonises_does_not_block_completion() {
        let temp = tempfile::tempdir().unwrap();
        let pid_file = temp.path().join("daemon.pid");
        let hook = shell(
            &format!("sleep 30 & echo $! > {}; echo started", pid_file.display()),
            10,
        );
        let started = std::time::Instant::now();
        let output = run(HookKind::PostInstall, &hook, &context(temp.path()))
            .await
            .unwrap();
        assert!(output.contains("started"), "{output}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
