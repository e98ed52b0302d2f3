//! The web console without a browser: every page and live region answers when signed in and
//! sends to sign-in when not; hostile strings render inert; sessions (cookie attributes,
//! sign-out, expiry, revoked and rotated credentials, the one-time code); CSRF and Origin
//! checks; roles (no buttons for a viewer, and the server refuses its POST) and the audit trail.

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const HOSTILE: &str = "<script>alert(\"x\")</script>' onmouseover='alert(1)";

/// A browser-like console client: keeps the session cookie, follows no redirect.
struct Console {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let at = self.body.find(marker).expect("a form with a CSRF token") + marker.len();
        self.body[at..at + self.body[at..].find('"').unwrap()].to_string()
    }
}

impl Console {
    fn new(controller: &TestController) -> Console {
        tc_controller::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        if let Some(config) = controller.tls_client_config(&[b"http/1.1"]) {
            builder = builder.use_preconfigured_tls((*config).clone());
        }
        Console {
            base: controller.url(),
            http: builder.build().unwrap(),
            cookie: None,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> Page {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", format!("tc_session={cookie}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = request.send().await.unwrap();
        Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(Method::GET, path, &[], None).await
    }

    async fn fragment(&self, path: &str) -> Page {
        self.send(Method::GET, path, &[("hx-request", "true".into())], None)
            .await
    }

    /// A POST from the console's own pages (same Origin).
    async fn post(&self, path: &str, form: &str) -> Page {
        let origin = self.base.clone();
        self.send(
            Method::POST,
            path,
            &[("origin", origin)],
            Some(form.to_string()),
        )
        .await
    }

    /// Signs in with `token`; returns the answer (its cookie is kept).
    async fn sign_in(&mut self, token: &str) -> Page {
        let page = self
            .post("/ui/signin", &format!("token={}", urlencode(token)))
            .await;
        if let Some(cookie) = session_cookie(&page.headers) {
            self.cookie = Some(cookie);
        }
        page
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn set_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_string())
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    let value = set_cookie(headers)?;
    let id = value.strip_prefix("tc_session=")?.split(';').next()?;
    (!id.is_empty()).then(|| id.to_string())
}

/// How many retries of the group `kiosk` were carried out (its `RetryRequested` events).
async fn events(admin: &Api) -> usize {
    let (_, list) = admin
        .get("/apis/thinfleet.io/v1/events?kind=ClientGroup&name=kiosk")
        .await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "RetryRequested")
        .count()
}

async fn audit(admin: &Api) -> Vec<Value> {
    let (status, list) = admin.get("/apis/thinfleet.io/v1/audit").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"].as_array().unwrap().clone()
}

/// A fleet with a group, a release and a client whose agent reports hostile strings.
async fn fleet(controller: &TestController) -> (Api, String) {
    let admin = Api::admin(controller);
    publish(&admin, "browser", "1.0.0").await;
    let (status, body) = admin
        .apply(
            &group_yaml(
                "kiosk",
                "{ matchLabels: { site: berlin } }",
                &[("browser", "1.0.0")],
                "1",
            ),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let agent = SimAgent::enroll(controller, "hostile-1", json!({ "site": "berlin" })).await;
    let inventory = json!({
        "hostname": HOSTILE, "osName": HOSTILE, "osVersion": "12", "arch": "x86_64",
        "cpuModel": HOSTILE, "cpuCores": 2, "memoryTotalBytes": 2_147_483_648u64,
        "disks": [{ "name": HOSTILE, "mountPoint": "/", "fileSystem": "ext4", "totalBytes": 1_000_000_000u64, "availableBytes": 500_000_000u64 }],
        "networkInterfaces": [{ "name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "addresses": ["192.0.2.77/24"] }],
        "agentVersion": HOSTILE,
    });
    let report = json!({ "name": "browser", "version": "1.0.0", "state": "Failed",
        "message": HOSTILE, "since": "2026-11-22T00:00:00Z" });
    let (status, answer) = agent
        .api
        .heartbeat(
            json!({ "protocolVersion": 2, "observedRevision": 0, "packages": [report],
            "inventoryHash": "hostile", "inventory": inventory }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // A task whose result carries hostile output.
    let (status, body) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/tasks",
            Some(json!({ "apiVersion": "thinfleet.io/v1", "kind": "Task", "metadata": { "name": "probe" },
                "spec": { "targets": { "clients": [agent.name] }, "action": "exec",
                          "exec": { "command": ["uname"], "timeoutSeconds": 10 } } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = eventually(Duration::from_secs(10), || async {
        let (_, answer) = agent
            .api
            .heartbeat(
                json!({ "protocolVersion": 2, "observedRevision": 0, "packages": [],
                "inventoryHash": "hostile" }),
            )
            .await;
        answer["tasks"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    let (status, body) = agent
        .api
        .request(
            Method::POST,
            "/agent/v1/tasks/report",
            Some(
                json!({ "reports": [{ "id": id, "state": "Failed", "exitCode": 1,
                "stdout": HOSTILE, "message": HOSTILE }] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (admin, agent.name)
}

fn assert_inert(path: &str, body: &str) {
    assert!(
        !body.contains("<script>alert") && !body.contains("' onmouseover='"),
        "{path} renders a hostile string raw:\n{body}"
    );
}

#[tokio::test]
async fn every_page_and_region_answers_signed_in_renders_hostile_strings_inert_and_sends_others_to_sign_in()
 {
    let controller = TestController::start().await;
    let (admin, client) = fleet(&controller).await;
    let mut console = Console::new(&controller);
    let root = console.get("/").await;
    assert_eq!(
        (root.status, root.location()),
        (StatusCode::SEE_OTHER, "/ui")
    );
    let client_page = format!("/ui/clients/{client}");
    let paths = [
        "/ui".to_string(),
        "/ui/clients".into(),
        "/ui/clients?q=hostile&selector=site%3Dberlin&phase=failed&sort=lastSeen&order=desc".into(),
        "/ui/clients?q=192.0.2.77".into(),
        "/ui/clients?group=kiosk&package=browser%3D1.0.0&sort=phase&page=1".into(),
        client_page.clone(),
        "/ui/groups".into(),
        "/ui/groups/kiosk".into(),
        "/ui/packages".into(),
        "/ui/events".into(),
        "/ui/events?kind=Client&type=Warning&reason=Enrolled".into(),
        "/ui/tasks".into(),
        "/ui/tasks/probe".into(),
        "/ui/tasks/probe?state=Failed".into(),
    ];
    for path in &paths {
        let page = console.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(page.location(), "/ui/signin", "{path}");
        let region = console.fragment(path).await;
        assert_eq!(region.headers["hx-redirect"], "/ui/signin", "{path}");
    }
    let signed = console.sign_in(controller.admin_token()).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    assert_eq!(signed.location(), "/ui");
    for path in &paths {
        let page = console.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(page.body.starts_with("<!doctype html>"), "{path}");
        assert!(page.body.contains("Sign out"), "{path}");
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(page.headers["cache-control"], "no-store");
        assert_inert(path, &page.body);
        let region = console.fragment(path).await;
        assert_eq!(region.status, StatusCode::OK, "{path}");
        assert!(
            region.body.starts_with("<div id=\"live\""),
            "{path}: {}",
            region.body
        );
        assert!(!region.body.contains("<html"), "{path}");
        assert_inert(path, &region.body);
    }
    // The client's page shows what its agent reported, escaped, and the "why" of the API.
    let page = console.get(&client_page).await;
    for text in [
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39; onmouseover=&#39;alert(1)",
        "aa:bb:cc:dd:ee:01",
        "192.0.2.77/24",
        "No history yet",
        "<a href=\"/ui/groups/kiosk\">kiosk</a>",
        "<td><code>site</code></td><td><code>berlin</code></td><td>agent</td>",
    ] {
        assert!(
            page.body.contains(text),
            "{text} missing from\n{}",
            page.body
        );
    }
    let (_, api_client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{client}"))
        .await;
    let reason = api_client["status"]["decisions"][0]["reason"]
        .as_str()
        .unwrap();
    assert!(
        page.body
            .contains(&*reason.replace('"', "&quot;").replace('\'', "&#39;")),
        "{reason}"
    );
    // An address search finds the client by its inventory, a filter that matches nothing none.
    let found = console.get("/ui/clients?q=192.0.2.77").await;
    assert!(found.body.contains("1 client(s) match"), "{}", found.body);
    let none = console.get("/ui/clients?selector=site%3Dparis").await;
    assert!(none.body.contains("0 client(s) match"), "{}", none.body);
    // A bad selector is a clear 400 naming the field.
    let bad = console.get("/ui/clients?selector=%3D%3D%3D").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("label selector:"), "{}", bad.body);
    // Assets: embedded, cached for good; the download link serves the zip to the session.
    let overview = console.get("/ui").await;
    for marker in ["<script src=\"", "<link rel=\"stylesheet\" href=\""] {
        let at = overview.body.find(marker).unwrap() + marker.len();
        let path = &overview.body[at..at + overview.body[at..].find('"').unwrap()];
        let asset = console.get(path).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert_eq!(
            asset.headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(!asset.body.is_empty());
    }
    assert!(!overview.body.contains("<script>"), "no inline script");
    let missing = console.get("/ui/nothing/here").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let unknown = console.get("/ui/clients/nobody").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let packages = console.get("/ui/packages").await;
    let at = packages.body.find("href=\"/ui/blobs/").unwrap() + "href=\"".len();
    let link = &packages.body[at..at + packages.body[at..].find('"').unwrap()];
    let zip = console.get(link).await;
    assert_eq!(zip.status, StatusCode::OK);
    assert_eq!(zip.headers["content-type"], "application/zip");
    console.cookie = None;
    assert_eq!(console.get(link).await.status, StatusCode::SEE_OTHER);
    controller.stop().await;
}

#[tokio::test]
async fn sessions_have_safe_cookies_and_expire() {
    let controller = TestController::start_with(|config| {
        config.console_session_lifetime = Duration::from_secs(2);
    })
    .await;
    let mut console = Console::new(&controller);
    let refused = console.sign_in("not-a-token").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&refused.headers).is_none());
    assert!(
        !refused.body.contains("not-a-token"),
        "the token is not echoed"
    );
    // Cookie attributes.
    let signed = console.sign_in(controller.admin_token()).await;
    let cookie = set_cookie(&signed.headers).unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/ui",
        "Secure",
        "Max-Age=2",
    ] {
        assert!(
            cookie.split("; ").any(|a| a == attribute),
            "{attribute} missing: {cookie}"
        );
    }
    assert!(!signed.location().contains("token"));
    assert_eq!(console.get("/ui").await.status, StatusCode::OK);
    // Expiry: the session stops working once its lifetime is over.
    eventually(Duration::from_secs(10), || {
        let console = &console;
        async move { (console.get("/ui").await.status == StatusCode::SEE_OTHER).then_some(()) }
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn sign_out_revocation_and_rotation_end_sessions() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    // Sign-out ends the session on the server: the old cookie is refused afterwards.
    let mut console = Console::new(&controller);
    console.sign_in(controller.admin_token()).await;
    let page = console.get("/ui").await;
    assert_eq!(page.status, StatusCode::OK);
    let out = console
        .post("/ui/signout", &format!("csrf={}", page.csrf()))
        .await;
    assert_eq!(
        (out.status, out.location()),
        (StatusCode::SEE_OTHER, "/ui/signin")
    );
    assert!(set_cookie(&out.headers).unwrap().contains("Max-Age=0"));
    assert_eq!(console.get("/ui").await.location(), "/ui/signin");
    // A revoked credential ends its sessions; so does a rotated one.
    for (name, change) in [("helpdesk", "revoke"), ("nightshift", "rotate")] {
        let token = credential(&admin, name, "viewer").await;
        let mut console = Console::new(&controller);
        assert_eq!(console.sign_in(&token).await.status, StatusCode::SEE_OTHER);
        let page = console.get("/ui").await;
        assert!(
            page.body.contains(&format!("{name} (viewer)")),
            "{}",
            page.body
        );
        let (method, path) = match change {
            "revoke" => (
                Method::DELETE,
                format!("/apis/thinfleet.io/v1/credentials/{name}"),
            ),
            _ => (
                Method::POST,
                format!("/apis/thinfleet.io/v1/credentials/{name}/rotate"),
            ),
        };
        let (status, body) = admin.request(method, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = console.get("/ui").await;
        assert_eq!(
            (page.status, page.location()),
            (StatusCode::SEE_OTHER, "/ui/signin"),
            "{change}"
        );
    }
    controller.stop().await;
}

#[tokio::test]
async fn forged_posts_are_refused_and_change_nothing_roles_are_enforced_and_audited() {
    let controller = TestController::start().await;
    let (admin, _) = fleet(&controller).await;
    let operator_token = credential(&admin, "opa", "operator").await;
    let viewer_token = credential(&admin, "vera", "viewer").await;
    let mut operator = Console::new(&controller);
    operator.sign_in(&operator_token).await;
    let group = operator.get("/ui/groups/kiosk").await;
    assert!(
        group.body.contains("action=\"/ui/groups/kiosk/retry\""),
        "{}",
        group.body
    );
    let csrf = group.csrf();
    let retries = |entries: &[Value]| {
        entries
            .iter()
            .filter(|e| e["action"] == "retry")
            .cloned()
            .collect::<Vec<Value>>()
    };
    // Without a CSRF token, with a wrong one, from another origin: refused, nothing done.
    let forged = [
        operator.post("/ui/groups/kiosk/retry", "").await,
        operator.post("/ui/groups/kiosk/retry", "csrf=0123").await,
        operator
            .send(
                Method::POST,
                "/ui/groups/kiosk/retry",
                &[("origin", "https://evil.example".into())],
                Some(format!("csrf={csrf}")),
            )
            .await,
        operator.post("/ui/signout", "csrf=wrong").await,
    ];
    for page in &forged {
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    }
    assert_eq!(events(&admin).await, 0);
    assert!(retries(&audit(&admin).await).is_empty());
    assert_eq!(
        operator.get("/ui").await.status,
        StatusCode::OK,
        "still signed in"
    );
    // The operator's retry goes through the API's handler and is audited as the operator.
    let done = operator
        .post("/ui/groups/kiosk/retry", &format!("csrf={csrf}"))
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("retry"), "{}", done.body);
    assert_eq!(events(&admin).await, 1);
    let entries = retries(&audit(&admin).await);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["user"], "opa");
    assert_eq!(entries[0]["role"], "operator");
    assert_eq!(entries[0]["outcome"], "Succeeded");
    assert_eq!(entries[0]["request"], "POST /ui/groups/kiosk/retry");
    assert_eq!(entries[0]["objects"][0]["kind"], "ClientGroup");
    // A viewer sees no buttons, and its POST is refused by the server and recorded as denied.
    let mut viewer = Console::new(&controller);
    viewer.sign_in(&viewer_token).await;
    for path in [
        "/ui",
        "/ui/groups",
        "/ui/groups/kiosk",
        "/ui/clients",
        "/ui/packages",
    ] {
        let page = viewer.get(path).await;
        let posts: Vec<&str> = page
            .body
            .match_indices("method=\"post\"")
            .map(|(at, _)| &page.body[at..at + 60.min(page.body.len() - at)])
            .filter(|form| !form.contains("/ui/signout"))
            .collect();
        assert!(posts.is_empty(), "{path} shows a viewer {posts:?}");
    }
    let viewer_csrf = viewer.get("/ui/groups/kiosk").await.csrf();
    let refused = viewer
        .post("/ui/groups/kiosk/retry", &format!("csrf={viewer_csrf}"))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body.contains("needs role operator"),
        "{}",
        refused.body
    );
    assert_eq!(events(&admin).await, 1, "nothing retried");
    let entries = retries(&audit(&admin).await);
    let denied: Vec<&Value> = entries.iter().filter(|e| e["user"] == "vera").collect();
    assert_eq!(denied.len(), 1, "{entries:?}");
    assert_eq!(denied[0]["outcome"], "Denied");
    assert_eq!(denied[0]["code"], 403);

    // The operator pauses the rollout from the group's page (the status says by whom), the
    // button becomes Resume, and resuming brings Pause back; the viewer may do neither.
    let page = operator.get("/ui/groups/kiosk").await;
    assert!(
        page.body.contains("action=\"/ui/groups/kiosk/pause\""),
        "{}",
        page.body
    );
    assert!(!page.body.contains("action=\"/ui/groups/kiosk/resume\""));
    let refused = viewer
        .post("/ui/groups/kiosk/pause", &format!("csrf={viewer_csrf}"))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let forged = operator.post("/ui/groups/kiosk/pause", "csrf=0123").await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    let done = operator
        .post("/ui/groups/kiosk/pause", &format!("csrf={csrf}"))
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("rollout paused by opa"), "{}", done.body);
    let page = common::eventually(std::time::Duration::from_secs(5), || async {
        let page = operator.get("/ui/groups/kiosk").await;
        page.body.contains("yes, by opa at").then_some(page)
    })
    .await;
    assert!(
        page.body.contains("action=\"/ui/groups/kiosk/resume\""),
        "{}",
        page.body
    );
    assert!(!page.body.contains("action=\"/ui/groups/kiosk/pause\""));
    let done = operator
        .post("/ui/groups/kiosk/resume", &format!("csrf={csrf}"))
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let again = operator
        .post("/ui/groups/kiosk/resume", &format!("csrf={csrf}"))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let steered: Vec<(String, String, String)> = audit(&admin)
        .await
        .iter()
        .filter(|e| e["action"] == "pause" || e["action"] == "resume")
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |u: &str, a: &str, o: &str| (u.to_string(), a.to_string(), o.to_string());
    assert_eq!(
        steered,
        vec![
            row("vera", "pause", "Denied"),
            row("opa", "pause", "Succeeded"),
            row("opa", "resume", "Succeeded"),
            row("opa", "resume", "Failed"),
        ]
    );
    controller.stop().await;
}

#[tokio::test]
async fn the_one_time_code_signs_in_once() {
    let code = "0123456789abcdef0123456789abcdef";
    let controller = TestController::start_with(|config| {
        config.console_sign_in_code = Some(code.to_string());
    })
    .await;
    let mut console = Console::new(&controller);
    let wrong = console.get("/ui/signin/code?code=nope").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&wrong.headers).is_none());
    let first = console.get(&format!("/ui/signin/code?code={code}")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    console.cookie = session_cookie(&first.headers);
    assert!(console.cookie.is_some());
    let page = console.get("/ui").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("admin (admin)"), "{}", page.body);
    let mut other = Console::new(&controller);
    let again = other.get(&format!("/ui/signin/code?code={code}")).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&again.headers).is_none());
    other.cookie = None;
    assert_eq!(other.get("/ui").await.status, StatusCode::SEE_OTHER);
    controller.stop().await;
}

#[tokio::test]
async fn a_client_s_task_buttons_create_tasks_for_operators_and_are_refused_to_viewers() {
    let controller = TestController::start().await;
    let (admin, client) = fleet(&controller).await;
    let operator_token = credential(&admin, "olga", "operator").await;
    let viewer_token = credential(&admin, "vic", "viewer").await;
    let mut operator = Console::new(&controller);
    operator.sign_in(&operator_token).await;
    let page = operator.get(&format!("/ui/clients/{client}")).await;
    for action in ["reboot", "shutdown", "wake", "collectLogs"] {
        assert!(
            page.body
                .contains(&format!("action=\"/ui/clients/{client}/tasks/{action}\"")),
            "{action} button missing:\n{}",
            page.body
        );
    }
    // The client's page lists the task it ran, with its (escaped) output.
    assert!(
        page.body.contains("<a href=\"/ui/tasks/probe\">probe</a>"),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let done = operator
        .post(
            &format!("/ui/clients/{client}/tasks/reboot"),
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let task = done
        .location()
        .strip_prefix("/ui/tasks/")
        .unwrap()
        .to_string();
    let (status, created) = admin
        .get(&format!("/apis/thinfleet.io/v1/tasks/{task}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["spec"]["action"], "reboot");
    assert_eq!(created["spec"]["targets"]["clients"], json!([client]));
    assert_eq!(created["metadata"]["managedBy"], "credential:olga");
    let entry = audit(&admin)
        .await
        .into_iter()
        .find(|e| e["action"] == "create" && e["user"] == "olga")
        .expect("the button's task is in the audit trail");
    assert_eq!(entry["objects"][0]["name"], task.as_str());
    assert_eq!(
        entry["request"],
        format!("POST /ui/clients/{client}/tasks/reboot")
    );
    // Its page shows the client once the run started.
    let path = format!("/ui/tasks/{task}");
    eventually(Duration::from_secs(10), || async {
        let shown = operator.get(&path).await;
        assert_eq!(shown.status, StatusCode::OK);
        shown
            .body
            .contains(&format!("<a href=\"/ui/clients/{client}\">"))
            .then_some(())
    })
    .await;
    // Forged and viewers' posts change nothing.
    let forged = operator
        .post(&format!("/ui/clients/{client}/tasks/shutdown"), "csrf=0123")
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let mut viewer = Console::new(&controller);
    viewer.sign_in(&viewer_token).await;
    let page = viewer.get(&format!("/ui/clients/{client}")).await;
    assert!(
        !page.body.contains("/tasks/reboot"),
        "a viewer sees the buttons"
    );
    let refused = viewer
        .post(
            &format!("/ui/clients/{client}/tasks/shutdown"),
            &format!("csrf={}", page.csrf()),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let (_, tasks) = admin.get("/apis/thinfleet.io/v1/tasks").await;
    let actions: Vec<&str> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["spec"]["action"].as_str().unwrap())
        .collect();
    assert!(!actions.contains(&"shutdown"), "{actions:?}");
    controller.stop().await;
}

#[tokio::test]
async fn a_group_page_shows_its_rollout_step_and_resumes_a_pause_step() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let yaml = group_yaml(
        "ward",
        "{}",
        &[("kiosk", "^1")],
        "100%\n    steps: [{clients: 1}, {pause: {}}, {percent: 100}]",
    );
    assert_eq!(admin.apply(&yaml, "").await.0, StatusCode::OK);
    let mut agents = vec![
        SimAgent::enroll(&controller, "bed-1", json!({})).await,
        SimAgent::enroll(&controller, "bed-2", json!({})).await,
    ];
    settle(&mut agents, &[], 20).await;
    publish(&admin, "kiosk", "1.1.0").await;
    settle(&mut agents, &[], 20).await;
    eventually(Duration::from_secs(20), || async {
        let g = group(&admin, "ward").await;
        (condition(&g, "Progressing")["reason"] == "StepPaused").then_some(())
    })
    .await;
    let mut console = Console::new(&controller);
    console.sign_in(controller.admin_token()).await;
    let page = console.get("/ui/groups/ward").await;
    for expected in [
        "<h2>Rollout 2</h2>",
        "<dt>Step</dt><dd>2 of 3</dd>",
        "<dt>Admitted</dt><dd>1 of 2</dd>",
        "tcadm rollout resume clientgroup ward",
        "action=\"/ui/groups/ward/resume\"",
    ] {
        assert!(page.body.contains(expected), "no {expected}: {}", page.body);
    }
    let csrf = page.csrf();
    console
        .post("/ui/groups/ward/resume", &format!("csrf={csrf}"))
        .await;
    settle(&mut agents, &[], 20).await;
    let versions: Vec<Option<String>> = agents.iter().map(|a| installed(a, "kiosk")).collect();
    assert_eq!(versions, vec![Some("1.1.0".to_string()); 2]);
    controller.stop().await;
}

#[tokio::test]
async fn the_clients_page_shows_agent_versions_and_filters_outdated_agents() {
    let controller = TestController::start().await;
    let mut names = vec![];
    for (machine, version) in [("v1", "0.1.0"), ("v2rc", "0.2.0-rc.1"), ("v2", "0.2.0")] {
        let agent = SimAgent::enroll(&controller, machine, json!({ "site": "berlin" })).await;
        let (status, answer) = agent
            .api
            .heartbeat(json!({ "protocolVersion": 2, "observedRevision": 0, "packages": [],
                "inventoryHash": machine, "inventory": { "hostname": machine, "agentVersion": version } }))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        names.push(agent.name);
    }
    let mut console = Console::new(&controller);
    console.sign_in(controller.admin_token()).await;
    let all = console.get("/ui/clients").await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(all.body.contains("<th>Agent</th>"), "{}", all.body);
    for version in ["0.1.0", "0.2.0-rc.1", "0.2.0"] {
        let cell = format!("<td class=\"agent\">{version}</td>");
        assert!(all.body.contains(&cell), "{version}: {}", all.body);
    }
    // Outdated agents: a pre-release comes before its release.
    for (path, selected) in [
        ("/ui/clients?agent=%3C0.2.0", [true, true, false]),
        ("/ui/clients?agent=%3E%3D0.2.0-rc.1", [false, true, true]),
        ("/ui/clients?agent=0.2.0", [false, false, true]),
        ("/ui/clients?agent=%21%3D0.2.0", [true, true, false]),
        (
            "/ui/clients?selector=thinfleet.io%2Fagent-version%3C%3D0.2.0-rc.1",
            [true, true, false],
        ),
        (
            "/ui/clients?selector=thinfleet.io%2Fagent-version%3E0.1.0&agent=%3C0.2.0",
            [false, true, false],
        ),
    ] {
        let page = console.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        let count = selected.iter().filter(|s| **s).count();
        assert!(
            page.body.contains(&format!("{count} client(s) match")),
            "{path}: {}",
            page.body
        );
        for (name, selected) in names.iter().zip(selected) {
            let link = format!("<a href=\"/ui/clients/{name}\">");
            assert_eq!(page.body.contains(&link), selected, "{path}: {name}");
        }
    }
    // The filter is kept in the form; a bad one is a clear 400.
    let page = console.get("/ui/clients?agent=%3C0.2.0").await;
    assert!(
        page.body.contains("name=\"agent\" value=\"&lt;0.2.0\""),
        "{}",
        page.body
    );
    let bad = console.get("/ui/clients?agent=%3Clatest").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains("agent version: `&lt;latest`")
            && bad.body.contains("needs a semantic version"),
        "{}",
        bad.body
    );
    let bad = console.get("/ui/clients?selector=site%3C3").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body
            .contains("applies only to `thinfleet.io/agent-version`"),
        "{}",
        bad.body
    );
    controller.stop().await;
}
