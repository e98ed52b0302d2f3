//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs; the test fails without them). A live controller with three real `tc-agent`
//! processes: sign in with a token; see the three clients; open one and see its inventory and a
//! load chart with data; watch a client turn Offline in the open page, without reloading, when
//! its agent is killed; pause a rollout as an operator; see no buttons as a viewer; sign out.
//!
//! The run also takes the screenshots the README shows (`docs/console-*.png`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::demo::binary;
use common::*;
use reqwest::StatusCode;
use tc_testkit::browser::Browser;

/// The three agents: name and labels.
const AGENTS: [(&str, &str); 3] = [
    ("kiosk-lobby", "role=front-desk"),
    ("kiosk-ward-3", "role=front-desk"),
    ("office-1", "role=back-office"),
];

/// The client whose page is photographed: its agent starts with a day of history.
const SCREENSHOT_CLIENT: &str = "kiosk-lobby";

/// An agent's saved load history (`history.bin`, as `tc-agent` writes it: magic, layout 1,
/// interval, end, count, 4-byte samples, FNV-1a checksum) of 1,439 one-minute samples ending
/// half a minute ago: a working day's CPU and memory, a slowly filling disk, the temperature
/// following the CPU.
fn day_of_history() -> Vec<u8> {
    let now = tc_api::Timestamp::now().unix_millis();
    let count: u16 = 1_439;
    let mut bytes = b"TCLH".to_vec();
    bytes.push(1);
    bytes.extend_from_slice(&60u32.to_le_bytes());
    bytes.extend_from_slice(&(now - 30_000).to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    for minute in 0..u32::from(count) {
        let hour = f64::from(minute) / 60.0;
        let busy = (((hour - 6.0) / 24.0 * std::f64::consts::TAU).sin()).max(0.0);
        let wobble = (f64::from(minute) / 7.0).sin() * 4.0;
        let cpu = (6.0 + 55.0 * busy + wobble).clamp(0.0, 100.0) as u8;
        let memory = (38.0 + 22.0 * busy + wobble / 2.0).clamp(0.0, 100.0) as u8;
        let disk = (41.0 + f64::from(minute) / 480.0) as u8;
        let temperature = (44.0 + 0.3 * f64::from(cpu)) as u8;
        bytes.extend_from_slice(&[cpu, memory, disk, temperature]);
    }
    let checksum = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Real agents; killed when dropped.
struct Agents {
    children: Vec<(String, Child)>,
    _state: tempfile::TempDir,
}

impl Agents {
    fn start(controller: &TestController) -> Agents {
        let state = tempfile::tempdir().unwrap();
        let token = state.path().join("bootstrap.token");
        std::fs::write(&token, controller.bootstrap_token()).unwrap();
        let mut children = vec![];
        for (name, label) in AGENTS {
            let dir = state.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let log = std::fs::File::create(state.path().join(format!("{name}.log"))).unwrap();
            let mut command = Command::new(binary("tc-agent"));
            if name == SCREENSHOT_CLIENT {
                // As an agent that has run for a day: its saved history, sampled every minute.
                std::fs::write(dir.join("history.bin"), day_of_history()).unwrap();
            } else {
                // A sample a second, so that the chart has data at once.
                command.args(["--history-interval-seconds", "1"]);
            }
            command
                .arg("--server")
                .arg(controller.url())
                .arg("--bootstrap-token-file")
                .arg(&token)
                .arg("--state-dir")
                .arg(&dir)
                .args(["--name", name, "--machine-id", name, "--label", label])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            if let Some(hash) = controller.ca_cert_hash() {
                command.arg("--ca-cert-hash").arg(hash);
            }
            children.push((name.to_string(), command.spawn().unwrap()));
        }
        Agents {
            children,
            _state: state,
        }
    }

    fn kill(&mut self, name: &str) {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// Signs in through the form with `token`; waits for the signed-in overview.
async fn sign_in(browser: &Browser, base: &str, token: &str, who: &str) {
    browser.goto(&format!("{base}/ui")).await.unwrap();
    let field = browser.wait_for("input[name=token]").await.unwrap();
    assert!(browser.url().await.unwrap().contains("/ui/signin"));
    browser.type_text(&field, token).await.unwrap();
    let submit = browser.wait_for("form.signin button").await.unwrap();
    browser.click(&submit).await.unwrap();
    browser.wait_for_text("header .user", who).await.unwrap();
}

async fn sign_out(browser: &Browser) {
    let button = browser
        .wait_for("form[action='/ui/signout'] button")
        .await
        .unwrap();
    browser.click(&button).await.unwrap();
    browser.wait_for("input[name=token]").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let controller = TestController::start_with(|config| config.offline_after_missed = 2).await;
    let base = controller.url();
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk-browser", "1.4.2").await;
    let group = group_yaml(
        "front-desk",
        "{ matchLabels: { role: front-desk } }",
        &[("kiosk-browser", "1.4.2")],
        "1",
    )
    .replace("  rollout:", "  agent: { heartbeatSeconds: 5 }\n  rollout:");
    let everyone = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: everyone\n\
                    spec:\n  selector: {}\n  agent: { heartbeatSeconds: 5 }\n";
    let (status, body) = admin.apply(&format!("{group}{everyone}"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut agents = Agents::start(&controller);
    let browser = Browser::start().await.expect("headless Chromium");

    // Sign in with the break-glass token; the three clients appear, online.
    sign_in(&browser, &base, controller.admin_token(), "admin").await;
    browser.goto(&format!("{base}/ui/clients")).await.unwrap();
    for (name, _) in AGENTS {
        browser.wait_for_text("main tbody", name).await.unwrap();
    }
    let table = browser.wait_for_text("main tbody", "Online").await.unwrap();
    eventually(std::time::Duration::from_secs(30), || async {
        let text = browser
            .text(&browser.wait_for("main tbody").await.unwrap())
            .await
            .unwrap_or_default();
        (text.matches("Online").count() == 3).then_some(())
    })
    .await;
    assert!(table.contains("kiosk-lobby"), "{table}");
    // The front desk converges; the overview shows it.
    eventually(std::time::Duration::from_secs(60), || async {
        let (_, group) = admin
            .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
            .await;
        (group["status"]["ready"] == 2).then_some(())
    })
    .await;
    browser.goto(&format!("{base}/ui")).await.unwrap();
    browser.wait_for_text("main", "front-desk").await.unwrap();
    browser.wait_for_text("main", "Online").await.unwrap();
    browser
        .screenshot(&docs().join("console-overview.png"))
        .await
        .unwrap();

    // A client: its inventory and a chart of its load with data.
    browser
        .goto(&format!("{base}/ui/clients/kiosk-lobby"))
        .await
        .unwrap();
    browser.wait_for_text("main", "Inventory").await.unwrap();
    browser.wait_for_text("main", "Disks").await.unwrap();
    browser
        .wait_for_text("main", "kiosk-browser")
        .await
        .unwrap();
    let chart = browser.wait_for("section.charts svg").await.unwrap();
    let svg = browser
        .execute("return document.querySelector('section.charts svg').outerHTML;")
        .await
        .unwrap();
    let svg = svg.as_str().unwrap();
    assert!(svg.contains('%'), "a chart without units: {svg}");
    // A day of samples from the agent's saved history, drawn across the chart.
    let points = browser
        .execute(
            "const line = document.querySelector('section.charts svg polyline'); \
             return line ? line.getAttribute('points').trim().split(/\\s+/).length : 0;",
        )
        .await
        .unwrap();
    assert!(points.as_u64().unwrap() > 1_000, "{points} points: {svg}");
    browser
        .wait_for_text("section.charts", "CPU temperature")
        .await
        .unwrap();
    assert!(browser.text(&chart).await.is_ok());
    browser
        .execute("document.querySelector('section.charts').scrollIntoView(); return true;")
        .await
        .unwrap();
    browser
        .screenshot(&docs().join("console-client.png"))
        .await
        .unwrap();

    // Its agent is killed: the open page turns Offline by itself.
    browser
        .goto(&format!("{base}/ui/clients/office-1"))
        .await
        .unwrap();
    browser.wait_for_text("main", "Online").await.unwrap();
    let marker = browser
        .execute("window.notReloaded = true; return true;")
        .await
        .unwrap();
    assert_eq!(marker, true);
    agents.kill("office-1");
    browser.wait_for_text("main", "Offline").await.unwrap();
    assert_eq!(
        browser
            .execute("return window.notReloaded === true;")
            .await
            .unwrap(),
        true,
        "the page was reloaded instead of updated in place"
    );

    // An operator pauses the front desk's rollout from its page.
    let lead = credential(&admin, "lead", "operator").await;
    let eyes = credential(&admin, "eyes", "viewer").await;
    sign_out(&browser).await;
    sign_in(&browser, &base, &lead, "lead").await;
    browser
        .goto(&format!("{base}/ui/groups/front-desk"))
        .await
        .unwrap();
    let pause = browser.wait_for("button.pause").await.unwrap();
    browser.click(&pause).await.unwrap();
    browser
        .wait_for_text("main", "rollout paused by lead")
        .await
        .unwrap();
    browser
        .goto(&format!("{base}/ui/groups/front-desk"))
        .await
        .unwrap();
    browser.wait_for_text("main", "yes, by lead").await.unwrap();
    browser.wait_for("button.resume").await.unwrap();
    browser
        .screenshot(&docs().join("console-group.png"))
        .await
        .unwrap();
    let (_, group) = admin
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(group["status"]["pausedBy"]["by"], "lead", "{group}");

    // A viewer sees the same page without a single button.
    sign_out(&browser).await;
    sign_in(&browser, &base, &eyes, "eyes").await;
    for page in [
        "/ui/groups/front-desk",
        "/ui/groups",
        "/ui/clients/kiosk-lobby",
        "/ui",
    ] {
        browser.goto(&format!("{base}{page}")).await.unwrap();
        browser.wait_for("main h1").await.unwrap();
        let buttons = browser
            .find_all("main form[method='post'] button")
            .await
            .unwrap();
        assert!(
            buttons.is_empty(),
            "{page} shows a viewer {} button(s)",
            buttons.len()
        );
    }

    // Signing out ends the session: the console asks for a token again.
    sign_out(&browser).await;
    browser.goto(&format!("{base}/ui/clients")).await.unwrap();
    browser.wait_for("input[name=token]").await.unwrap();
    assert!(browser.url().await.unwrap().contains("/ui/signin"));
    drop(browser);
    drop(agents);
    controller.stop().await;
}
