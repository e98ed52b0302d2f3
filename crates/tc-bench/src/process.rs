//! Processes under test: starting this binary's server subcommands, pinning to CPUs, file
//! descriptor limits, and memory and CPU figures from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Soft and hard limit of open files after [`raise_open_files`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the most an unprivileged process may raise the soft one to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (child processes inherit it).
pub fn raise_open_files() -> OpenFiles {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum;
    if limit.current != hard {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: hard,
                maximum: hard,
            },
        );
    }
    let now = getrlimit(Resource::Nofile);
    OpenFiles {
        soft: now.current.unwrap_or(u64::MAX),
        hard: now.maximum.unwrap_or(u64::MAX),
    }
}

/// Number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread (and the threads it starts later) to one CPU; false when that is not
/// possible (the CPU does not exist or the call is refused).
pub fn pin_current_thread(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return false;
    }
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

/// Memory and CPU of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Peak resident set size, bytes.
    pub rss_peak_bytes: u64,
    /// User plus system CPU time of every thread that ever ran, seconds (clock-tick resolution).
    pub cpu_seconds: f64,
    /// CPU time of the threads alive now, seconds (nanosecond resolution, from schedstat).
    pub live_thread_cpu_seconds: f64,
}

/// Reads [`ProcessFigures`] of `pid` from `/proc`.
pub fn figures(pid: u32) -> Option<ProcessFigures> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let per_second = rustix::param::clock_ticks_per_second().max(1) as f64;
    let cpu_seconds = (ticks(14) + ticks(15)) as f64 / per_second;
    let mut live_nanos = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                live_nanos += text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Some(ProcessFigures {
        rss_bytes: kib("VmRSS:"),
        rss_peak_bytes: kib("VmHWM:"),
        cpu_seconds,
        live_thread_cpu_seconds: live_nanos as f64 / 1e9,
    })
}

/// A server subcommand of this binary running as a child process. It prints `LISTENING <addr>`
/// once it listens and stops when its standard input closes.
pub struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Its log (standard error).
    pub log: PathBuf,
}

/// This executable.
pub fn this_binary() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))
}

impl Server {
    /// Starts `tc-bench <args>`, waiting at most `ready_within` for it to listen.
    pub async fn start(
        args: &[String],
        log: &Path,
        ready_within: Duration,
    ) -> Result<Server, String> {
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(this_binary()?)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TC_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start tc-bench {}: {e}", args.join(" ")))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(ready_within, lines.next_line())
            .await
            .map_err(|_| format!("tc-bench {} did not start within {ready_within:?}", args[0]))?
            .map_err(|e| format!("reading from tc-bench {}: {e}", args[0]))?;
        let addr = line
            .as_deref()
            .and_then(|l| l.strip_prefix("LISTENING "))
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("tc-bench {} failed to start: {}", args[0], log_tail(log)))?;
        // Nothing else is printed; keep draining in case that changes.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let stdin = child.stdin.take();
        Ok(Server {
            child,
            stdin,
            addr,
            pid,
            log: log.to_path_buf(),
        })
    }

    /// Current memory and CPU figures.
    pub fn figures(&self) -> ProcessFigures {
        figures(self.pid).unwrap_or_default()
    }

    /// Closes its standard input and waits (at most 2 minutes) until it has stopped.
    pub async fn stop(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!(
                "the server exited with {status}: {}",
                log_tail(&self.log)
            )),
            Ok(Err(error)) => Err(format!("waiting for the server: {error}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err("the server did not stop within 2 minutes".into())
            }
        }
    }
}

/// The last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs `tc-bench <args>` to completion (at most `within`) and returns its standard output.
pub async fn run_to_end(args: &[String], within: Duration) -> Result<String, String> {
    let output = tokio::time::timeout(
        within,
        Command::new(this_binary()?)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("tc-bench {} took longer than {within:?}", args[0]))?
    .map_err(|e| format!("cannot run tc-bench {}: {e}", args[0]))?;
    if !output.status.success() {
        return Err(format!(
            "tc-bench {} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Polls `GET /readyz` until it answers 200, at most `within`.
pub async fn wait_ready(
    addr: SocketAddr,
    tls: Option<&tc_testkit::sim::Tls>,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let request =
        tc_testkit::sim::http::build_request("GET", "/readyz", &addr.to_string(), None, None, b"");
    loop {
        if let Ok(mut connection) = tc_testkit::sim::http::Connection::connect_with(addr, tls).await
            && let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_secs(5), connection.request(&request)).await
            && response.status == 200
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!(
                "the controller at {addr} was not ready within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pinning decided for a run: the server's CPU and the load generator's, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinning {
    /// CPU of the server process.
    pub server: Option<usize>,
    /// CPU of the load generator thread.
    pub generator: Option<usize>,
}

impl Pinning {
    /// Server on CPU 0, generator on CPU 1, when wanted and there are two CPUs.
    pub fn decide(wanted: bool) -> Pinning {
        if wanted && cpus() >= 2 {
            Pinning {
                server: Some(0),
                generator: Some(1),
            }
        } else {
            Pinning {
                server: None,
                generator: None,
            }
        }
    }

    /// How it reads in a report.
    pub fn describe(&self) -> String {
        match (self.server, self.generator) {
            (Some(s), Some(g)) => format!("server on CPU {s}, load generator on CPU {g}"),
            _ => "none".into(),
        }
    }
}
