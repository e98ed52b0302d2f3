//! The few admin calls the scenarios make: upload blobs, apply manifests, read objects.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tc_testkit::sim::http::{Connection, build_request};

/// An admin client of one controller.
pub struct Admin {
    addr: SocketAddr,
    token: String,
    tls: Option<tc_testkit::sim::Tls>,
}

impl Admin {
    /// A client with the admin token.
    pub fn new(addr: SocketAddr, token: &str, tls: Option<tc_testkit::sim::Tls>) -> Admin {
        Admin {
            addr,
            token: token.to_string(),
            tls,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Value, String> {
        let request = build_request(
            method,
            path,
            &self.addr.to_string(),
            Some(&self.token),
            content_type,
            body,
        );
        let response = tokio::time::timeout(Duration::from_secs(300), async {
            let mut connection = Connection::connect_with(self.addr, self.tls.as_ref()).await?;
            connection.request(&request).await
        })
        .await
        .map_err(|_| format!("{method} {path}: no answer within 5 minutes"))?
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let text = String::from_utf8_lossy(&response.body);
        if !(200..300).contains(&response.status) {
            return Err(format!("{method} {path}: HTTP {}: {text}", response.status));
        }
        serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}: {text}"))
    }

    /// Uploads a blob; returns its sha256.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String, String> {
        let answer = self
            .call("PUT", "/blobs", Some("application/zip"), bytes)
            .await?;
        answer["sha256"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("PUT /blobs: no sha256 in {answer}"))
    }

    /// Applies YAML manifests.
    pub async fn apply(&self, yaml: &str) -> Result<Value, String> {
        self.call(
            "POST",
            "/apis/thinfleet.io/v1/apply?fieldManager=tc-bench",
            Some("application/yaml"),
            yaml.as_bytes(),
        )
        .await
    }

    /// The controller's Prometheus metrics: every sample as (name with labels, value).
    pub async fn metrics(&self) -> Result<Vec<(String, f64)>, String> {
        let request = build_request("GET", "/metrics", &self.addr.to_string(), None, None, b"");
        let response = tokio::time::timeout(Duration::from_secs(60), async {
            let mut connection = Connection::connect_with(self.addr, self.tls.as_ref()).await?;
            connection.request(&request).await
        })
        .await
        .map_err(|_| "GET /metrics: no answer within a minute".to_string())?
        .map_err(|e| format!("GET /metrics: {e}"))?;
        Ok(String::from_utf8_lossy(&response.body)
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// POSTs a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        self.call("POST", path, Some("application/json"), &body)
            .await
    }

    /// Reads an object.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        self.call("GET", path, None, b"").await
    }
}

/// A `PackageRelease` manifest.
pub fn release_yaml(package: &str, version: &str, sha256: &str) -> String {
    format!(
        "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: {package}-{version}\n\
         spec:\n  package: {package}\n  version: \"{version}\"\n  artifact:\n    sha256: {sha256}\n---\n"
    )
}

/// A `ClientGroup` selecting every simulated client, with the given packages and heartbeat
/// interval, changing all its members at once.
pub fn group_yaml(name: &str, packages: &[(&str, &str)], heartbeat_seconds: u64) -> String {
    let packages: String = packages
        .iter()
        .map(|(n, v)| format!("    - {{ name: {n}, version: \"{v}\" }}\n"))
        .collect();
    let packages = if packages.is_empty() {
        "  packages: []\n".to_string()
    } else {
        format!("  packages:\n{packages}")
    };
    format!(
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: {name}\nspec:\n  \
         selector: {{ matchLabels: {{ thinfleet.io/simulated: \"true\" }} }}\n{packages}  \
         rollout:\n    maxUnavailable: 100%\n  agent:\n    heartbeatSeconds: {}\n---\n",
        heartbeat_seconds.clamp(5, 86_400)
    )
}
