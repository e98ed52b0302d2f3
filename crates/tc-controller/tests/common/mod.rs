//! Helpers for the controller's integration tests.

#![allow(dead_code, unused_imports)]

pub mod demo;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
pub use tc_testkit::protocol::TestIdentity;
pub use tc_testkit::{PackageFile, TestController, build_zip, sha256_hex};

/// A small API client for tests.
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn admin(controller: &TestController) -> Api {
        Api::with_token(controller, controller.admin_token())
    }

    pub fn with_token(controller: &TestController, token: &str) -> Api {
        tc_controller::install_crypto_provider();
        Api {
            base: controller.url(),
            token: token.to_string(),
            http: controller.http_client(),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn apply(&self, yaml: &str, query: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/apis/thinfleet.io/v1/apply{query}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn apply_files(&self, files: &[(&str, &str)], query: &str) -> (StatusCode, Value) {
        let files: Vec<Value> = files
            .iter()
            .map(|(name, content)| json!({"name": name, "content": content}))
            .collect();
        let response = self
            .http
            .post(format!("{}/apis/thinfleet.io/v1/apply{query}", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "files": files }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn put_blob(&self, bytes: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .http
            .put(format!("{}/blobs", self.base))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Enrols with the key of `machine_id` (the same machine id gives the same key, as a
    /// machine that keeps its state directory keeps its key).
    pub async fn enroll(
        &self,
        bootstrap: &str,
        machine_id: &str,
        name: &str,
        labels: Value,
    ) -> (StatusCode, Value) {
        let identity = TestIdentity::new(machine_id);
        self.enroll_with(&identity, bootstrap, machine_id, name, labels)
            .await
    }

    /// Enrols with `identity`.
    pub async fn enroll_with(
        &self,
        identity: &TestIdentity,
        bootstrap: &str,
        machine_id: &str,
        name: &str,
        labels: Value,
    ) -> (StatusCode, Value) {
        let body = identity.enroll_body(bootstrap, machine_id, name, labels);
        self.post_json("/agent/v1/enroll", body).await
    }

    /// Opens a session for `client` with `identity`: asks for a challenge and signs it.
    pub async fn open_session(&self, identity: &TestIdentity, client: &str) -> (StatusCode, Value) {
        let (status, answer) = self
            .post_json(
                "/agent/v1/session",
                json!({ "protocolVersion": 2, "clientName": client }),
            )
            .await;
        if status != StatusCode::OK {
            return (status, answer);
        }
        let challenge = answer["challenge"]["value"].as_str().unwrap();
        self.post_json(
            "/agent/v1/session",
            identity.session_body(client, challenge),
        )
        .await
    }

    /// POSTs JSON without a token.
    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn heartbeat(&self, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, "/agent/v1/heartbeat", Some(body))
            .await
    }
}

/// Creates the credential `name` with `role` as `admin`; returns its token.
pub async fn credential(admin: &Api, name: &str, role: &str) -> String {
    let (status, body) = admin
        .request(
            reqwest::Method::POST,
            "/apis/thinfleet.io/v1/credentials",
            Some(json!({ "name": name, "role": role })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// Names of the items of a list answer, in order.
pub fn item_names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// `[(action, "kind/name")]` of an apply result.
pub fn actions(result: &Value) -> Vec<(String, String)> {
    result["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["action"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    item["kind"].as_str().unwrap(),
                    item["name"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

pub fn group_yaml(
    name: &str,
    selector: &str,
    packages: &[(&str, &str)],
    max_unavailable: &str,
) -> String {
    let packages: String = packages
        .iter()
        .map(|(n, v)| format!("    - {{ name: {n}, version: \"{v}\" }}\n"))
        .collect();
    format!(
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: {name}\nspec:\n  selector: {selector}\n  packages:\n{packages}  rollout:\n    maxUnavailable: {max_unavailable}\n---\n"
    )
}

pub fn release_yaml(package: &str, version: &str, sha256: &str) -> String {
    format!(
        "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: {package}-{version}\nspec:\n  package: {package}\n  version: {version}\n  artifact:\n    sha256: {sha256}\n---\n"
    )
}

/// A tiny valid package whose content depends on `tag`.
pub fn package_zip(tag: &str) -> Vec<u8> {
    build_zip(&[PackageFile {
        path: "README",
        content: tag.as_bytes(),
        mode: 0o644,
    }])
}

/// Polls `check` every 25 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A simulated agent: enrols, heartbeats, and reports what it was told to install.
pub struct SimAgent {
    pub api: Api,
    pub name: String,
    pub revision: u64,
    pub packages: Vec<Value>,
}

impl SimAgent {
    pub async fn enroll(controller: &TestController, machine: &str, labels: Value) -> SimAgent {
        let anonymous = Api::with_token(controller, "");
        let (status, enrolled) = anonymous
            .enroll(controller.bootstrap_token(), machine, machine, labels)
            .await;
        assert_eq!(status, StatusCode::OK, "{enrolled}");
        let name = enrolled["clientName"].as_str().unwrap();
        // A new client gets a session with the answer; a known key opens one.
        let session = match enrolled["session"]["token"].as_str() {
            Some(token) => token.to_string(),
            None => {
                let (status, opened) = anonymous
                    .open_session(&TestIdentity::new(machine), name)
                    .await;
                assert_eq!(status, StatusCode::OK, "{opened}");
                opened["session"]["token"].as_str().unwrap().to_string()
            }
        };
        SimAgent {
            api: Api::with_token(controller, &session),
            name: enrolled["clientName"].as_str().unwrap().to_string(),
            revision: 0,
            packages: vec![],
        }
    }

    /// Heartbeats with the current reports; returns the desired state.
    pub async fn heartbeat(&mut self) -> Value {
        let body = json!({
            "protocolVersion": 1, "observedRevision": self.revision, "packages": self.packages,
            "inventoryHash": "h1", "inventory": { "hostname": self.name, "arch": "x86_64", "osName": "Debian GNU/Linux", "cpuCores": 2 },
        });
        let (status, response) = self.api.heartbeat(body).await;
        assert_eq!(status, StatusCode::OK, "{response}");
        response["desired"].clone()
    }

    /// Heartbeats until the desired state satisfies `check` (at most 5 s).
    pub async fn wait_for(&mut self, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let desired = self.heartbeat().await;
            if check(&desired) {
                return desired;
            }
            assert!(
                Instant::now() < deadline,
                "{} never got the expected desired state: {desired}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Acts on a desired state: reports each package installed (or failed, when `fail` names its
    /// version: then, as a real agent, it still runs the version it had, if any).
    pub fn converge(&mut self, desired: &Value, fail: Option<&str>) {
        self.revision = desired["revision"].as_u64().unwrap();
        let before = std::mem::take(&mut self.packages);
        self.packages = desired["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let failed = fail == Some(p["version"].as_str().unwrap());
                let mut report = json!({ "name": p["name"], "version": p["version"], "state": if failed { "Failed" } else { "Installed" },
                        "message": if failed { "healthCheck exited 1" } else { "" }, "since": "2026-11-22T00:00:00Z" });
                let running = before
                    .iter()
                    .find(|b| b["name"] == p["name"])
                    .and_then(|b| match b["state"].as_str() {
                        Some("Installed") => Some(b["version"].clone()),
                        _ => b.get("activeVersion").cloned(),
                    });
                if failed && let Some(running) = running {
                    report["activeVersion"] = running;
                }
                report
            })
            .collect();
    }
}

pub async fn publish(api: &Api, package: &str, version: &str) -> String {
    let zip = package_zip(&format!("{package}-{version}"));
    let sha = sha256_hex(&zip);
    api.put_blob(zip).await;
    let (status, result) = api.apply(&release_yaml(package, version, &sha), "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    sha
}

pub fn versions(desired: &Value) -> Vec<String> {
    desired["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect()
}

/// A group as the API answers it.
pub async fn group(admin: &Api, name: &str) -> Value {
    let (status, group) = admin
        .get(&format!("/apis/thinfleet.io/v1/clientgroups/{name}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{group}");
    group
}

pub fn condition(group: &Value, type_: &str) -> Value {
    group["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Heartbeats every agent and converges it on what it is served (failing `fail` versions) until
/// nothing changes any more or `rounds` are done.
pub async fn settle(agents: &mut [SimAgent], fail: &[(&str, &str)], rounds: usize) {
    for _ in 0..rounds {
        let mut changed = false;
        for agent in agents.iter_mut() {
            let desired = agent.heartbeat().await;
            if desired["revision"].as_u64().unwrap() != agent.revision {
                let failing = desired["packages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find_map(|p| {
                        fail.iter()
                            .find(|(name, version)| p["name"] == *name && p["version"] == *version)
                            .map(|(_, version)| *version)
                    });
                agent.converge(&desired, failing);
                agent.heartbeat().await;
                changed = true;
            }
        }
        if !changed {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn installed(agent: &SimAgent, package: &str) -> Option<String> {
    agent
        .packages
        .iter()
        .find(|p| p["name"] == package && p["state"] == "Installed")
        .map(|p| p["version"].as_str().unwrap().to_string())
}

/// Copies the files the replicas share (README, "Running several replicas") from `from` to a new
/// data directory `to`.
pub fn copy_shared_files(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.join("pki")).unwrap();
    for file in ["admin.token", "session.key", "bootstrap.token"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(from.join("pki").join(file), to.join("pki").join(file)).unwrap();
    }
}

/// Waits until the controller has made its CA (`data/pki/ca.crt`) and returns a client that
/// trusts exactly that CA, with `timeout`.
pub async fn client_trusting_its_ca(data: &std::path::Path, timeout: Duration) -> reqwest::Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ca = loop {
        if let Ok(certificates) = tc_trust::read_pem_certificates(&data.join("pki/ca.crt")) {
            break certificates;
        }
        assert!(std::time::Instant::now() < deadline, "no CA was created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let config = tc_trust::client_config(
        &tc_trust::Trust::CaCertificates(ca),
        &[tc_trust::ALPN_HTTP1],
        None,
    )
    .unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .build()
        .unwrap()
}
