//! Rollouts as admins see and steer them: retrying the releases that failed on a group's
//! members, and why a client runs what it runs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tc_api::{Client, ClientGroup, Event, EventType, Kind, Object, ObjectRef, Timestamp};
use tc_reconcile::ReleaseCatalog;

use crate::Controller;
use crate::error::ApiError;
use crate::reconcile::RetryRequest;

/// `POST /apis/thinfleet.io/v1/clientgroups/{name}/retry`: every member of the group whose
/// install of one of the group's packages failed tries that release once more (its agent does not
/// retry a failed release on its own). Answers, once that is committed, which packages of which
/// clients were retried.
pub async fn retry(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = controller.store.clone();
    let lookup = name.clone();
    tokio::task::spawn_blocking(move || store.get(Kind::ClientGroup, &lookup))
        .await??
        .ok_or_else(|| ApiError::not_found(format!("clientgroup/{name} not found")))?;
    let (done, answer) = tokio::sync::oneshot::channel();
    controller
        .retries
        .lock()
        .expect("retries lock")
        .push(RetryRequest {
            group: name.clone(),
            done,
        });
    controller.reconcile_wake.notify_one();
    let retried = answer.await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconcile pass that was to carry out the retry failed; try again",
        )
    })?;
    let message = if retried.is_empty() {
        "retry asked for: no member reports a failed package of this group".to_string()
    } else {
        let mut releases: Vec<String> = retried
            .iter()
            .map(|r| format!("{} {}", r.package, r.version))
            .collect();
        releases.sort();
        releases.dedup();
        format!(
            "retry of {} asked for on {} member(s)",
            releases.join(", "),
            retried
                .iter()
                .map(|r| r.client.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        )
    };
    controller
        .record(vec![Event::new(
            Timestamp::now(),
            ObjectRef::new(Kind::ClientGroup, &name),
            EventType::Normal,
            "RetryRequested",
            message.clone(),
        )])
        .await;
    Ok(Json(json!({
        "kind": "RetryResult",
        "group": name,
        "message": message,
        "retried": retried,
    })))
}

impl Controller {
    /// `client` with the groups that select it and, per package, why it runs (or is to run) its
    /// version, from the current groups and releases.
    pub async fn explained(&self, mut client: Client) -> Result<Client, ApiError> {
        // Pending and decommissioning clients are members of no group: nothing to explain.
        if client.spec.pending.is_some() || client.spec.decommission {
            return Ok(client);
        }
        let store = self.store.clone();
        let (groups, releases) = tokio::task::spawn_blocking(move || -> tc_store::Result<_> {
            Ok((
                store.list(Kind::ClientGroup)?,
                store.list(Kind::PackageRelease)?,
            ))
        })
        .await??;
        let groups: Vec<ClientGroup> = groups
            .into_iter()
            .filter_map(|object| match object {
                Object::ClientGroup(group) => Some(group),
                Object::PackageRelease(_) => None,
            })
            .filter(|group| group.spec.selector.matches(&client.metadata.labels))
            .collect();
        let releases: Vec<tc_api::PackageRelease> = releases
            .into_iter()
            .filter_map(|object| match object {
                Object::PackageRelease(release) => Some(release),
                Object::ClientGroup(_) => None,
            })
            .collect();
        let catalog = ReleaseCatalog::new(&releases);
        let assigned = client
            .status
            .desired
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        let selecting: Vec<&ClientGroup> = groups.iter().collect();
        client.status.decisions = tc_reconcile::explain(&selecting, &catalog, &assigned);
        client.status.groups = groups.iter().map(|g| g.metadata.name.clone()).collect();
        Ok(client)
    }
}
