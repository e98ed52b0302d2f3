//! The README's story, end to end, with the real binaries as separate processes: `tc-controller
//! --demo` (which starts three real `tc-agent` processes) watching a copy of the example fleet, and
//! `tcadm` reading the fleet. Enrol and converge; roll a new version out with `maxUnavailable`
//! respected (checked from the event history); roll back when a health check fails; remove a package
//! and prune its release.
//!
//! This is the slowest suite (about a minute). It needs the `tc-agent` and `tcadm` binaries, which
//! `cargo test --workspace` builds before running any test.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::demo::{Fleet, copy_dir};

#[test]
fn a_fleet_converges_rolls_out_rolls_back_and_prunes() {
    let mut fleet = Fleet::start();
    let root = fleet.root.clone();

    // 1. Three agents enrol and converge on the example fleet.
    fleet.wait_until(
        "three clients run everything they should",
        Duration::from_secs(60),
        |f| {
            f.installed("demo-kiosk-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-2", "kiosk-browser", "1.4.2")
                && f.installed("demo-office-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-1", "wallpaper", "1.0.0")
                && ["demo-kiosk-1", "demo-kiosk-2", "demo-office-1"]
                    .iter()
                    .all(|c| f.installed(c, "vpn-profile", "2.0.1"))
        },
    );
    let table = fleet.tcadm(&["get", "clients"]);
    assert_eq!(
        table.lines().filter(|l| l.contains(" Online ")).count(),
        3,
        "{table}"
    );

    // 2. Roll 1.5.0 out to front-desk (maxUnavailable 50% of 2 members = 1 at a time).
    fleet.edit(
        "manifests/groups.yaml",
        "{ name: kiosk-browser, version: \"~1.4\" }",
        "{ name: kiosk-browser, version: \"^1.5\" }",
    );
    fleet.wait_until("front-desk runs 1.5.0", Duration::from_secs(60), |f| {
        f.installed("demo-kiosk-1", "kiosk-browser", "1.5.0")
            && f.installed("demo-kiosk-2", "kiosk-browser", "1.5.0")
    });
    assert!(
        fleet.installed("demo-office-1", "kiosk-browser", "1.4.2"),
        "back-office must keep ~1.4"
    );
    // From the history: never two front-desk members between "assigned 1.5.0" and "installed 1.5.0".
    let mut changing = std::collections::BTreeSet::new();
    let mut most = 0;
    for event in fleet.events_of("Client") {
        let (client, message) = (
            event["object"]["name"].as_str().unwrap(),
            event["message"].as_str().unwrap(),
        );
        if !client.starts_with("demo-kiosk") {
            continue;
        }
        if event["reason"] == "Assigned" && message.contains("kiosk-browser 1.4.2 -> 1.5.0") {
            changing.insert(client.to_string());
        }
        if event["reason"] == "Installed" && message.contains("kiosk-browser 1.5.0") {
            changing.remove(client);
        }
        most = most.max(changing.len());
    }
    assert_eq!(most, 1, "front-desk had {most} members updating at once");
    let rollout = fleet.tcadm(&["rollout", "status", "clientgroup", "front-desk"]);
    assert!(rollout.contains("successfully rolled out"), "{rollout}");

    // 3. 1.6.0 fails its health check: the first member rolls back to 1.5.0 and reports Failed; the
    // rollout stops there, so the second member keeps 1.5.0.
    let broken = root.join("examples/packages/kiosk-browser-1.6.0");
    copy_dir(&root.join("examples/packages/kiosk-browser-1.5.0"), &broken);
    std::fs::write(broken.join("VERSION"), "1.6.0\n").unwrap();
    std::fs::write(
        broken.join("health.sh"),
        "#!/bin/sh\necho 'kiosk-browser 1.6.0 crashed at start-up' >&2\nexit 1\n",
    )
    .unwrap();
    let release = std::fs::read_to_string(root.join("manifests/releases.yaml")).unwrap();
    let start = release.find("apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: kiosk-browser-1.5.0").unwrap();
    let end = start + release[start..].find("---").unwrap();
    let new_release = release[start..end].replace("1.5.0", "1.6.0");
    std::fs::write(
        root.join("manifests/releases.yaml"),
        format!("{release}---\n{new_release}"),
    )
    .unwrap();
    fleet.edit(
        "manifests/groups.yaml",
        "{ name: kiosk-browser, version: \"^1.5\" }",
        "{ name: kiosk-browser, version: \"^1.6\" }",
    );
    fleet.wait_until(
        "one front-desk member reports 1.6.0 failed",
        Duration::from_secs(60),
        |f| {
            f.reports().iter().any(|(c, p, v, s, _)| {
                c.starts_with("demo-kiosk") && p == "kiosk-browser" && v == "1.6.0" && s == "Failed"
            })
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let reports = fleet.reports();
    let kiosk: Vec<_> = reports
        .iter()
        .filter(|(c, p, ..)| c.starts_with("demo-kiosk") && p == "kiosk-browser")
        .collect();
    let failed: Vec<_> = kiosk
        .iter()
        .filter(|(_, _, _, s, _)| s == "Failed")
        .collect();
    assert_eq!(failed.len(), 1, "{kiosk:?}");
    assert_eq!(
        failed[0].4.as_deref(),
        Some("1.5.0"),
        "the failed member must run 1.5.0 again: {kiosk:?}"
    );
    let other = kiosk.iter().find(|(c, ..)| *c != failed[0].0).unwrap();
    assert_eq!(
        (other.2.as_str(), other.3.as_str()),
        ("1.5.0", "Installed"),
        "{kiosk:?}"
    );
    let group = fleet.json(&["get", "clientgroups", "front-desk"]);
    let degraded = group["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("MembersFailed")),
        "{group}"
    );
    let history = fleet.events_of("Client");
    let failure = history
        .iter()
        .find(|e| e["reason"] == "InstallFailed")
        .unwrap();
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("crashed at start-up"),
        "{failure}"
    );

    // Pinning the good version again clears the failure.
    fleet.edit(
        "manifests/groups.yaml",
        "{ name: kiosk-browser, version: \"^1.6\" }",
        "{ name: kiosk-browser, version: \"=1.5.0\" }",
    );
    fleet.wait_until(
        "front-desk is back on 1.5.0",
        Duration::from_secs(60),
        |f| {
            f.installed("demo-kiosk-1", "kiosk-browser", "1.5.0")
                && f.installed("demo-kiosk-2", "kiosk-browser", "1.5.0")
        },
    );

    // 4. Drop the wallpaper from front-desk and its release from the repo: the agents remove it and
    // the release is pruned once nothing uses it.
    fleet.edit(
        "manifests/groups.yaml",
        "    - { name: wallpaper, version: \"^1\" }\n",
        "",
    );
    let release = std::fs::read_to_string(root.join("manifests/releases.yaml")).unwrap();
    let start = release.find("---\napiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: wallpaper-1.0.0").unwrap();
    let end = start
        + 4
        + release[start + 4..]
            .find("---")
            .map_or(release.len() - start - 4, |i| i);
    std::fs::write(
        root.join("manifests/releases.yaml"),
        format!("{}{}", &release[..start], &release[end..]),
    )
    .unwrap();
    fleet.wait_until(
        "no client reports the wallpaper",
        Duration::from_secs(60),
        |f| !f.reports().iter().any(|(_, p, ..)| p == "wallpaper"),
    );
    fleet.wait_until(
        "the wallpaper release is pruned",
        Duration::from_secs(30),
        |f| {
            !f.tcadm(&["get", "packagereleases", "-o", "name"])
                .contains("wallpaper")
        },
    );

    // Ctrl-C stops the controller and its agents.
    let status = Command::new("kill")
        .args(["-INT", &fleet.controller.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = fleet.controller.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}
