//! Who may be a client: approving or denying pending enrolments, decommissioning clients, and the
//! machine identities kept from enrolling (decommissioned, denied, or deleted clients) until an
//! admin allows them again.
//!
//! Blocks are stored as settings (`blockedMachine/{machine id}/{public key}`) and held in memory;
//! there are few, and every enrolment checks them.

use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use tc_api::{
    API_VERSION, AuditObject, BlockReason, BlockedMachine, Client, ClientPhase, Event, EventType,
    Kind, ObjectRef, Timestamp,
};
use tc_store::Store;

use crate::Controller;
use crate::audit::Note;
use crate::error::ApiError;
use crate::fleet::{ClientSlot, Served};

/// Settings key prefix of blocked machine identities.
const BLOCK_SETTING: &str = "blockedMachine/";

/// The `kind` of events about machine identities.
pub const MACHINE_KIND: &str = "Machine";

fn block_key(block: &BlockedMachine) -> String {
    let key = if block.public_key.is_empty() {
        "-"
    } else {
        block.public_key.as_str()
    };
    format!("{BLOCK_SETTING}{}/{key}", block.machine_id)
}

/// The machine identities kept from enrolling.
#[derive(Debug, Default)]
pub struct Blocks {
    blocks: Mutex<Vec<BlockedMachine>>,
}

impl Blocks {
    /// Loads the stored blocks. Blocking.
    pub fn open(store: &dyn Store) -> tc_store::Result<Blocks> {
        let mut blocks = vec![];
        for (key, value) in store.list_settings(BLOCK_SETTING)? {
            let block =
                serde_json::from_str(&value).map_err(|error| tc_store::StoreError::Corrupt {
                    key,
                    message: error.to_string(),
                })?;
            blocks.push(block);
        }
        Ok(Blocks {
            blocks: Mutex::new(blocks),
        })
    }

    /// The block that refuses an enrolment with this machine id and key, if any.
    pub fn refusing(&self, machine_id: &str, public_key: &str) -> Option<BlockedMachine> {
        self.blocks
            .lock()
            .expect("blocks lock")
            .iter()
            .find(|block| block.refuses(machine_id, public_key))
            .cloned()
    }

    /// Every block.
    pub fn list(&self) -> Vec<BlockedMachine> {
        self.blocks.lock().expect("blocks lock").clone()
    }

    /// Adds a block, durably. Blocking.
    pub fn add(&self, store: &dyn Store, block: BlockedMachine) -> tc_store::Result<()> {
        let value = serde_json::to_string(&block).expect("blocks serialize");
        store.put_setting(&block_key(&block), Some(&value))?;
        let mut blocks = self.blocks.lock().expect("blocks lock");
        blocks.retain(|b| block_key(b) != block_key(&block));
        blocks.push(block);
        Ok(())
    }

    /// Removes every block of a machine id; returns them. Blocking.
    pub fn allow(
        &self,
        store: &dyn Store,
        machine_id: &str,
    ) -> tc_store::Result<Vec<BlockedMachine>> {
        let mut blocks = self.blocks.lock().expect("blocks lock");
        let (removed, kept): (Vec<_>, Vec<_>) = blocks
            .drain(..)
            .partition(|block| block.machine_id == machine_id);
        *blocks = kept;
        for block in &removed {
            if let Err(error) = store.put_setting(&block_key(block), None) {
                // Put back what could not be removed durably.
                blocks.extend(removed.iter().cloned());
                return Err(error);
            }
        }
        Ok(removed)
    }
}

/// The 403 answer to an enrolment a block refuses.
pub fn refusal(block: &BlockedMachine) -> ApiError {
    let (reason, what) = match block.reason {
        BlockReason::Decommissioned => (
            tc_proto::REASON_DECOMMISSIONED,
            format!("machine id {} was decommissioned", block.machine_id),
        ),
        BlockReason::Denied => (
            tc_proto::REASON_DENIED,
            format!("the enrolment of client `{}` was denied", block.client),
        ),
        BlockReason::Deleted => (
            tc_proto::REASON_DENIED,
            format!(
                "client `{}` was deleted and its credential revoked",
                block.client
            ),
        ),
    };
    ApiError::forbidden(format!(
        "{what} (since {}); an admin can allow it again with `tcadm allow machine {}`",
        block.since, block.machine_id
    ))
    .with_reason(reason)
    .with_retry_after(std::time::Duration::from_secs(600))
}

/// The stored client and its slot, or 404.
async fn load(
    controller: &Arc<Controller>,
    name: &str,
) -> Result<(Arc<ClientSlot>, Client), ApiError> {
    let missing = || ApiError::not_found(format!("client/{name} not found"));
    let slot = controller.fleet.get(name).ok_or_else(missing)?;
    let store = controller.store.clone();
    let lookup = name.to_string();
    let stored = tokio::task::spawn_blocking(move || store.get_client(&lookup))
        .await??
        .ok_or_else(missing)?;
    let client = slot.state.lock().expect("client lock").overlay(stored);
    Ok((slot, client))
}

/// Deletes a client from the store and the fleet (its sessions stop at once) and keeps its key
/// (and, with `whole_machine`, its machine id) from enrolling again. Callers hold the enrolment
/// lock.
pub async fn delete_and_block(
    controller: &Arc<Controller>,
    name: &str,
    reason: BlockReason,
    whole_machine: bool,
    now: Timestamp,
) -> Result<Option<(Client, Option<BlockedMachine>)>, ApiError> {
    let worker = controller.clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let Some(client) = worker.store.delete_client(&name)? else {
            return Ok(None);
        };
        worker.fleet.remove(&name);
        let spec = &client.spec;
        if spec.public_key.is_empty() && !whole_machine {
            return Ok(Some((client, None)));
        }
        let block = BlockedMachine {
            machine_id: spec.machine_id.clone(),
            public_key: spec.public_key.clone(),
            whole_machine,
            reason,
            client: name,
            since: now,
        };
        worker.blocks.add(&*worker.store, block.clone())?;
        Ok(Some((client, Some(block))))
    })
    .await?
}

/// Body of `POST .../clients/{name}/approve`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApproveRequest {
    /// Approve the pending client as the replacement of this client: it takes the pending
    /// client's key (and machine id) and keeps its name, labels and status.
    #[serde(default)]
    pub replace: Option<String>,
}

fn client_event(name: &str, type_: EventType, reason: &str, message: String) -> Event {
    Event::new(
        Timestamp::now(),
        ObjectRef::new(Kind::Client, name),
        type_,
        reason,
        message,
    )
}

/// `POST /apis/thinfleet.io/v1/clients/{name}/approve`: a pending client becomes a client
/// (groups select it, its agent gets a session), or, with `replace`, the new credential of
/// another client.
pub async fn approve(
    State(controller): State<Arc<Controller>>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<(Extension<Note>, Json<Client>), ApiError> {
    let request: ApproveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request(format!("invalid approval: {error}")))?
    };
    let _guard = controller.enroll_lock.lock().await;
    let (_, mut client) = load(&controller, &name).await?;
    let Some(pending) = client.spec.pending.clone() else {
        return Err(ApiError::conflict(format!(
            "client/{name} is not pending approval"
        )));
    };
    let Some(old) = request.replace else {
        client.spec.pending = None;
        client.status.phase = ClientPhase::Enrolled;
        controller
            .persister
            .write_objects(vec![client.clone()])
            .await
            .map_err(ApiError::internal)?;
        controller.fleet.insert(&client);
        controller
            .record(vec![client_event(
                &name,
                EventType::Normal,
                "Approved",
                format!(
                    "enrolment approved ({}: {})",
                    pending.reason, pending.message
                ),
            )])
            .await;
        controller.clients_changed.notify_one();
        controller.reconcile_wake.notify_one();
        return Ok((
            Extension(Note::object("Client", &name, "approved")),
            Json(client),
        ));
    };
    if old == name {
        return Err(ApiError::bad_request(
            "a pending client cannot replace itself; approve it without --replace",
        ));
    }
    let (_, mut target) = load(&controller, &old).await?;
    if target.spec.pending.is_some() {
        return Err(ApiError::conflict(format!(
            "client/{old} is pending approval itself; approve or deny it first"
        )));
    }
    if target.spec.decommission {
        return Err(ApiError::conflict(format!(
            "client/{old} is being decommissioned; approve client/{name} as a new client instead"
        )));
    }
    // The pending client goes first, so that its key is free for the client it replaces.
    let store = controller.store.clone();
    let lookup = name.clone();
    tokio::task::spawn_blocking(move || store.delete_client(&lookup)).await??;
    controller.fleet.remove(&name);
    let old_machine = target.spec.machine_id.clone();
    target.spec.public_key = client.spec.public_key.clone();
    target.spec.machine_id = client.spec.machine_id.clone();
    target.spec.credential_generation = target.spec.credential_generation.wrapping_add(1);
    controller
        .persister
        .write_objects(vec![target.clone()])
        .await
        .map_err(ApiError::internal)?;
    controller.fleet.insert(&target);
    let machine = if old_machine == target.spec.machine_id {
        format!("machine id {old_machine}")
    } else {
        format!("machine id {old_machine} -> {}", target.spec.machine_id)
    };
    controller
        .record(vec![
            client_event(
                &name,
                EventType::Normal,
                "Approved",
                format!("approved as the replacement of client/{old}"),
            ),
            client_event(
                &old,
                EventType::Normal,
                "KeyReplaced",
                format!(
                    "the key of pending client/{name} replaces this client's ({machine}); \
                     sessions of the old key are revoked"
                ),
            ),
        ])
        .await;
    controller.clients_changed.notify_one();
    let note = Note {
        objects: vec![
            AuditObject::new("Client", &name).changed(format!("its key replaces client/{old}'s")),
            AuditObject::new("Client", &old)
                .changed(format!("key replaced by pending client/{name}'s")),
        ],
        message: None,
    };
    Ok((Extension(note), Json(target)))
}

/// `POST /apis/thinfleet.io/v1/clients/{name}/deny`: a pending client is deleted, and its key (and
/// its machine id, unless another client holds it) refused until an admin allows it.
pub async fn deny(
    State(controller): State<Arc<Controller>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Client>, ApiError> {
    let _guard = controller.enroll_lock.lock().await;
    let (_, client) = load(&controller, &name).await?;
    if client.spec.pending.is_none() {
        return Err(ApiError::conflict(format!(
            "client/{name} is not pending approval; delete or decommission it instead"
        )));
    }
    let store = controller.store.clone();
    let machine_id = client.spec.machine_id.clone();
    let others = tokio::task::spawn_blocking(move || store.clients_by_machine_id(&machine_id))
        .await??
        .into_iter()
        .any(|other| other.metadata.name != name);
    let now = Timestamp::now();
    let deleted = delete_and_block(&controller, &name, BlockReason::Denied, !others, now).await?;
    let Some((_, block)) = deleted else {
        return Err(ApiError::not_found(format!("client/{name} not found")));
    };
    let scope = match &block {
        Some(block) if block.whole_machine => format!("machine id {} refused", block.machine_id),
        _ => "its key refused (another client holds the machine id)".to_string(),
    };
    controller
        .record(vec![client_event(
            &name,
            EventType::Normal,
            "Denied",
            format!(
                "enrolment denied; {scope} until `tcadm allow machine {}`",
                client.spec.machine_id
            ),
        )])
        .await;
    Ok(Json(client))
}

/// `POST /apis/thinfleet.io/v1/clients/{name}/decommission`: the agent is told (in its desired
/// state) to remove everything thinfleet installed and stop; when it reports that, the client is
/// deleted and its machine id and key refused until an admin allows them.
pub async fn decommission(
    State(controller): State<Arc<Controller>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Client>, ApiError> {
    let _guard = controller.enroll_lock.lock().await;
    let (slot, mut client) = load(&controller, &name).await?;
    if client.spec.pending.is_some() {
        return Err(ApiError::conflict(format!(
            "client/{name} is pending approval; deny it instead"
        )));
    }
    if client.spec.decommission {
        return Ok(Json(client));
    }
    client.spec.decommission = true;
    client.status.phase = ClientPhase::Decommissioning;
    client.status.desired = vec![];
    client.status.desired_revision += 1;
    controller
        .persister
        .write_objects(vec![client.clone()])
        .await
        .map_err(ApiError::internal)?;
    controller.fleet.insert(&client);
    let revision = client.status.desired_revision;
    {
        let mut state = slot.state.lock().expect("client lock");
        state.served = Served {
            revision,
            packages: Arc::from([]),
            decommission: true,
            activation: None,
        };
    }
    slot.revision.send_replace(revision);
    controller
        .record(vec![client_event(
            &name,
            EventType::Normal,
            "DecommissionRequested",
            "the agent is told to remove every package thinfleet installed and stop".into(),
        )])
        .await;
    controller.reconcile_wake.notify_one();
    Ok(Json(client))
}

/// Called when a decommissioning client's agent reports that it removed everything: deletes the
/// client and blocks its machine id and key.
pub async fn finish_decommission(
    controller: &Arc<Controller>,
    slot: &Arc<ClientSlot>,
) -> Result<(), ApiError> {
    let _guard = controller.enroll_lock.lock().await;
    if slot.is_removed() {
        return Ok(());
    }
    let now = Timestamp::now();
    let deleted = delete_and_block(
        controller,
        &slot.name,
        BlockReason::Decommissioned,
        true,
        now,
    )
    .await?;
    if let Some((client, _)) = deleted {
        controller
            .record(vec![client_event(
                &slot.name,
                EventType::Normal,
                "Decommissioned",
                format!(
                    "the agent removed every package thinfleet installed and stopped; the client \
                     is deleted, and machine id {} is refused until `tcadm allow machine {}`",
                    client.spec.machine_id, client.spec.machine_id
                ),
            )])
            .await;
        controller.reconcile_wake.notify_one();
    }
    Ok(())
}

/// `GET /apis/thinfleet.io/v1/blockedmachines`.
pub async fn list_blocked(State(controller): State<Arc<Controller>>) -> Json<Value> {
    let items = controller.blocks.list();
    Json(json!({ "apiVersion": API_VERSION, "kind": "BlockedMachineList", "items": items }))
}

/// `DELETE /apis/thinfleet.io/v1/blockedmachines/{machineId}`: the machine id (with every key
/// refused with it) may enrol again.
pub async fn allow(
    State(controller): State<Arc<Controller>>,
    UrlPath(machine_id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let _guard = controller.enroll_lock.lock().await;
    let worker = controller.clone();
    let lookup = machine_id.clone();
    let removed =
        tokio::task::spawn_blocking(move || worker.blocks.allow(&*worker.store, &lookup)).await??;
    if removed.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("machine id {machine_id} is not refused"),
        ));
    }
    controller
        .record(vec![Event::new(
            Timestamp::now(),
            ObjectRef {
                kind: MACHINE_KIND.into(),
                name: machine_id.clone(),
            },
            EventType::Normal,
            "Allowed",
            format!("machine id {machine_id} may enrol again"),
        )])
        .await;
    Ok(Json(
        json!({ "apiVersion": API_VERSION, "kind": "BlockedMachineList", "items": removed }),
    ))
}
