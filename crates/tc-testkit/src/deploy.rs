//! Checks of the deployment files shipped in `deploy/`.

use std::path::Path;
use std::process::Command;

/// Runs `systemd-analyze verify` on the unit file at `path` and panics unless it passes without a
/// warning. The file's name is the unit's name (`tc-agent.service`), as systemd reads it.
///
/// `systemd-analyze` must be installed: without it this panics with how to install it, rather than
/// let the test pass without checking anything.
pub fn verify_unit(path: &Path) {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let output = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
    {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run systemd-analyze ({error}): it is needed to check {name}; install it \
             (Debian and Ubuntu: `apt-get install systemd`)"
        ),
    };
    assert!(
        output.status.success(),
        "systemd-analyze verify {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "systemd-analyze verify {name} warned: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
