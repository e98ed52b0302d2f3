//! Clients in parts, as the redb store keeps them (see its documentation): the object
//! (`clients`, with the machine id and public key as columns that the indexes cover), the status
//! (`client_status`), the inventory (`client_inventory`) and the liveness (`client_liveness`).
//! Reads put them together with the redb store's own functions, so both stores answer alike.

use postgres::Row;
use postgres::Transaction;
use postgres::fallible_iterator::FallibleIterator;
use tc_api::{Client, ClientStatus, Inventory, Timestamp};
use tc_proto::Load;

use super::{changes, db, encode, int, lock_counter, set_counter, uint};
use crate::redb_store::{ClientObject, Live, StatusRecord, assemble, set_liveness};
use crate::write_path::{decode, new_uid};
use crate::{PUBLIC_KEY_KIND, Result, StoreError};

/// The columns [`client_of_row`] reads, from `clients` joined with its parts; `{inventory}` is
/// the inventory column or `NULL::text` when the inventory is not wanted.
fn select(with_inventory: bool) -> String {
    let (inventory, join) = if with_inventory {
        (
            "i.inventory",
            "LEFT JOIN client_inventory i ON i.name = c.name",
        )
    } else {
        ("NULL::text", "")
    };
    format!(
        "SELECT c.name, c.object, s.status, {inventory}, l.last_heartbeat_millis, l.load
         FROM clients c
         LEFT JOIN client_status s ON s.name = c.name
         {join}
         LEFT JOIN client_liveness l ON l.name = c.name"
    )
}

fn liveness_of(name: &str, millis: Option<i64>, load: Option<&str>) -> Result<Option<Live>> {
    match (millis, load) {
        (Some(millis), Some(load)) => {
            let at =
                Timestamp::from_unix_millis(uint(format_args!("client_liveness/{name}"), millis)?);
            let load: Load = decode(format_args!("client_liveness/{name}"), load.as_bytes())?;
            Ok(Some((at, load)))
        }
        _ => Ok(None),
    }
}

/// A client put together from a row of [`select`].
fn client_of_row(row: &Row) -> Result<Client> {
    let name: &str = row.get(0);
    let object: &str = row.get(1);
    let client: Client = decode(format_args!("clients/{name}"), object.as_bytes())?;
    let status = row
        .get::<_, Option<&str>>(2)
        .map(|text| decode::<ClientStatus>(format_args!("client_status/{name}"), text.as_bytes()))
        .transpose()?;
    let inventory = row
        .get::<_, Option<&str>>(3)
        .map(|text| decode::<Inventory>(format_args!("client_inventory/{name}"), text.as_bytes()))
        .transpose()?;
    let liveness = liveness_of(name, row.get(4), row.get(5))?;
    Ok(assemble(client, status, inventory, liveness))
}

/// One client, as `Store::get_client` returns it.
pub(super) fn read_client(txn: &mut Transaction<'_>, name: &str) -> Result<Option<Client>> {
    let row = txn
        .query_opt(&format!("{} WHERE c.name = $1", select(true)), &[&name])
        .map_err(db(format_args!("read client {name}")))?;
    row.as_ref().map(client_of_row).transpose()
}

/// The clients matching `filter` (a condition on `c`, with `$1`; `TRUE` for all), in name order.
pub(super) fn read_clients(
    txn: &mut Transaction<'_>,
    filter: &str,
    value: Option<&str>,
) -> Result<Vec<Client>> {
    let sql = format!("{} WHERE {filter} ORDER BY c.name", select(true));
    let rows = match value {
        Some(value) => txn.query(&sql, &[&value]),
        None => txn.query(&sql, &[]),
    }
    .map_err(db("read clients"))?;
    rows.iter().map(client_of_row).collect()
}

/// The clients named, without inventory, in name order (the names that are not clients are
/// left out): one statement, whatever their number.
pub(super) fn read_named(txn: &mut Transaction<'_>, names: &[String]) -> Result<Vec<Client>> {
    let sql = format!("{} WHERE c.name = ANY($1) ORDER BY c.name", select(false));
    let rows = txn.query(&sql, &[&names]).map_err(db("read clients"))?;
    rows.iter().map(client_of_row).collect()
}

/// Streams every client without inventory, in name order, to `send` (which returns false when
/// the receiver is gone).
pub(super) fn stream_clients(
    txn: &mut Transaction<'_>,
    send: &mut dyn FnMut(Client) -> bool,
) -> Result<()> {
    let sql = format!("{} ORDER BY c.name", select(false));
    let mut rows = txn
        .query_raw(&sql, std::iter::empty::<&str>())
        .map_err(db("scan clients"))?;
    while let Some(row) = rows.next().map_err(db("scan clients"))? {
        if !send(client_of_row(&row)?) {
            break;
        }
    }
    Ok(())
}

fn already_exists(kind: &str, name: &str) -> StoreError {
    StoreError::AlreadyExists {
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

/// Refuses a public key another client holds.
fn check_key(txn: &mut Transaction<'_>, name: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Ok(());
    }
    let holder = txn
        .query_opt("SELECT name FROM clients WHERE public_key = $1", &[&key])
        .map_err(db("read the key index"))?;
    match holder {
        Some(row) if row.get::<_, &str>(0) != name => {
            Err(already_exists(PUBLIC_KEY_KIND, row.get::<_, &str>(0)))
        }
        _ => Ok(()),
    }
}

/// Writes a client's object row (insert or replace).
fn write_object(txn: &mut Transaction<'_>, client: &Client) -> Result<()> {
    let name = &client.metadata.name;
    let text = encode(format_args!("clients/{name}"), &ClientObject::of(client))?;
    let key = Some(client.spec.public_key.as_str()).filter(|key| !key.is_empty());
    txn.execute(
        "INSERT INTO clients (name, machine_id, public_key, object) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET machine_id = excluded.machine_id,
             public_key = excluded.public_key, object = excluded.object",
        &[name, &client.spec.machine_id, &key, &text],
    )
    .map_err(db(format_args!("write clients/{name}")))?;
    Ok(())
}

/// Drops the records a client of this name left: status, inventory, liveness, load history.
pub(super) fn clear_parts(txn: &mut Transaction<'_>, name: &str) -> Result<()> {
    for table in [
        "client_status",
        "client_inventory",
        "client_liveness",
        "client_history",
    ] {
        txn.execute(&format!("DELETE FROM {table} WHERE name = $1"), &[&name])
            .map_err(db(format_args!("remove {table}/{name}")))?;
    }
    Ok(())
}

fn put_inventory(txn: &mut Transaction<'_>, name: &str, inventory: &Inventory) -> Result<()> {
    let text = encode(format_args!("client_inventory/{name}"), inventory)?;
    txn.execute(
        "INSERT INTO client_inventory (name, inventory) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET inventory = excluded.inventory",
        &[&name, &text],
    )
    .map_err(db(format_args!("write client_inventory/{name}")))?;
    Ok(())
}

fn recorded_inventory(txn: &mut Transaction<'_>, name: &str) -> Result<Option<Inventory>> {
    let row = txn
        .query_opt(
            "SELECT inventory FROM client_inventory WHERE name = $1",
            &[&name],
        )
        .map_err(db(format_args!("read client_inventory/{name}")))?;
    row.map(|row| {
        decode(
            format_args!("client_inventory/{name}"),
            row.get::<_, &str>(0).as_bytes(),
        )
    })
    .transpose()
}

/// Records `heartbeat` when it is newer than the recorded liveness; returns the liveness then
/// recorded.
fn advance_liveness(
    txn: &mut Transaction<'_>,
    name: &str,
    heartbeat: Option<Live>,
) -> Result<Option<Live>> {
    let row = txn
        .query_opt(
            "SELECT last_heartbeat_millis, load FROM client_liveness WHERE name = $1",
            &[&name],
        )
        .map_err(db(format_args!("read client_liveness/{name}")))?;
    let recorded = match &row {
        Some(row) => liveness_of(name, row.get(0), row.get(1))?,
        None => None,
    };
    match heartbeat {
        Some((at, load)) if recorded.is_none_or(|(recorded_at, _)| at > recorded_at) => {
            write_liveness(txn, name, at, &load)?;
            Ok(Some((at, load)))
        }
        _ => Ok(recorded),
    }
}

fn write_liveness(txn: &mut Transaction<'_>, name: &str, at: Timestamp, load: &Load) -> Result<()> {
    let text = encode(format_args!("client_liveness/{name}"), load)?;
    txn.execute(
        "INSERT INTO client_liveness (name, last_heartbeat_millis, load) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET last_heartbeat_millis = excluded.last_heartbeat_millis,
             load = excluded.load",
        &[&name, &int("heartbeat", at.unix_millis())?, &text],
    )
    .map_err(db(format_args!("write client_liveness/{name}")))?;
    Ok(())
}

/// Records a status apart from the object: the status record, the inventory when given, the
/// liveness when newer. Returns the liveness then recorded.
pub(super) fn record_status(
    txn: &mut Transaction<'_>,
    name: &str,
    status: &ClientStatus,
) -> Result<Option<Live>> {
    let text = encode(
        format_args!("client_status/{name}"),
        &StatusRecord::of(status),
    )?;
    txn.execute(
        "INSERT INTO client_status (name, status) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET status = excluded.status",
        &[&name, &text],
    )
    .map_err(db(format_args!("write client_status/{name}")))?;
    if let Some(inventory) = &status.inventory {
        put_inventory(txn, name, inventory)?;
    }
    advance_liveness(txn, name, status.last_heartbeat.map(|at| (at, status.load)))
}

pub(super) fn exists(txn: &mut Transaction<'_>, name: &str) -> Result<bool> {
    Ok(txn
        .query_opt("SELECT 1 FROM clients WHERE name = $1", &[&name])
        .map_err(db(format_args!("read clients/{name}")))?
        .is_some())
}

/// Creates clients (`Store::create_clients`), in one transaction with the revision locked, in a
/// fixed number of statements whatever their number (a fleet is seeded or imported in batches of
/// thousands): nothing is written when a name or a key is taken, here or earlier in the batch.
pub(super) fn create(
    txn: &mut Transaction<'_>,
    clients: Vec<Client>,
    now: Timestamp,
) -> Result<Vec<Client>> {
    let start = lock_counter(txn, "revision")?;
    let mut names = std::collections::HashSet::with_capacity(clients.len());
    let mut keys = std::collections::HashMap::new();
    for client in &clients {
        let name = client.metadata.name.as_str();
        if !names.insert(name) {
            return Err(already_exists("Client", name));
        }
        let key = client.spec.public_key.as_str();
        if !key.is_empty()
            && let Some(holder) = keys.insert(key, name)
        {
            return Err(already_exists(PUBLIC_KEY_KIND, holder));
        }
    }
    let names: Vec<&str> = clients.iter().map(|c| c.metadata.name.as_str()).collect();
    if let Some(row) = txn
        .query_opt(
            "SELECT name FROM clients WHERE name = ANY($1) ORDER BY name LIMIT 1",
            &[&names],
        )
        .map_err(db("read clients"))?
    {
        return Err(already_exists("Client", row.get::<_, &str>(0)));
    }
    let wanted_keys: Vec<&str> = keys.keys().copied().collect();
    if !wanted_keys.is_empty()
        && let Some(row) = txn
            .query_opt(
                "SELECT name FROM clients WHERE public_key = ANY($1) ORDER BY name LIMIT 1",
                &[&wanted_keys],
            )
            .map_err(db("read the key index"))?
    {
        return Err(already_exists(PUBLIC_KEY_KIND, row.get::<_, &str>(0)));
    }
    let mut revision = start;
    let mut created = Vec::with_capacity(clients.len());
    let (mut machines, mut public_keys, mut objects) = (Vec::new(), Vec::new(), Vec::new());
    let mut statuses = Vec::with_capacity(clients.len());
    let (mut inventory_names, mut inventories) = (Vec::new(), Vec::new());
    let (mut live_names, mut live_at, mut live_loads) = (Vec::new(), Vec::new(), Vec::new());
    for mut client in clients {
        let name = client.metadata.name.clone();
        revision = revision.saturating_add(1);
        let metadata = &mut client.metadata;
        if metadata.uid.is_none() {
            metadata.uid = Some(new_uid("Client", &name, now, revision));
        }
        metadata.creation_timestamp = Some(now);
        metadata.resource_version = Some(revision.to_string());
        objects.push(encode(
            format_args!("clients/{name}"),
            &ClientObject::of(&client),
        )?);
        machines.push(client.spec.machine_id.clone());
        public_keys.push(Some(client.spec.public_key.clone()).filter(|key| !key.is_empty()));
        let status = &client.status;
        statuses.push(encode(
            format_args!("client_status/{name}"),
            &StatusRecord::of(status),
        )?);
        if let Some(inventory) = &status.inventory {
            inventory_names.push(name.clone());
            inventories.push(encode(format_args!("client_inventory/{name}"), inventory)?);
        }
        // Nothing is recorded for a new client: its heartbeat, if any, is its liveness.
        let liveness = status.last_heartbeat.map(|at| (at, status.load));
        if let Some((at, load)) = &liveness {
            live_names.push(name.clone());
            live_at.push(int("heartbeat", at.unix_millis())?);
            live_loads.push(encode(format_args!("client_liveness/{name}"), load)?);
        }
        set_liveness(&mut client.status, liveness);
        created.push(client);
    }
    let names: Vec<&str> = created.iter().map(|c| c.metadata.name.as_str()).collect();
    txn.execute(
        "INSERT INTO clients (name, machine_id, public_key, object)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
        &[&names, &machines, &public_keys, &objects],
    )
    .map_err(db("write clients"))?;
    // What clients of these names left behind (a client deleted and enrolled again).
    for table in [
        "client_status",
        "client_inventory",
        "client_liveness",
        "client_history",
    ] {
        txn.execute(
            &format!("DELETE FROM {table} WHERE name = ANY($1)"),
            &[&names],
        )
        .map_err(db(format_args!("remove from {table}")))?;
    }
    txn.execute(
        "INSERT INTO client_status (name, status) SELECT * FROM unnest($1::text[], $2::text[])",
        &[&names, &statuses],
    )
    .map_err(db("write client_status"))?;
    if !inventory_names.is_empty() {
        txn.execute(
            "INSERT INTO client_inventory (name, inventory)
             SELECT * FROM unnest($1::text[], $2::text[])",
            &[&inventory_names, &inventories],
        )
        .map_err(db("write client_inventory"))?;
    }
    if !live_names.is_empty() {
        txn.execute(
            "INSERT INTO client_liveness (name, last_heartbeat_millis, load)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
            &[&live_names, &live_at, &live_loads],
        )
        .map_err(db("write client_liveness"))?;
    }
    if revision != start {
        set_counter(txn, "revision", revision)?;
    }
    changes::record(txn, changes::CLIENT, &names)?;
    Ok(created)
}

/// The stored metadata of a client (its object), if any.
fn stored_meta(txn: &mut Transaction<'_>, name: &str) -> Result<Option<tc_api::ObjectMeta>> {
    #[derive(serde::Deserialize)]
    struct Head {
        metadata: tc_api::ObjectMeta,
    }
    let row = txn
        .query_opt("SELECT object FROM clients WHERE name = $1", &[&name])
        .map_err(db(format_args!("read clients/{name}")))?;
    row.map(|row| {
        decode::<Head>(
            format_args!("clients/{name}"),
            row.get::<_, &str>(0).as_bytes(),
        )
        .map(|head| head.metadata)
    })
    .transpose()
}

/// Upserts clients (`Store::put_clients`), sorted by name, with the revision locked.
pub(super) fn put(txn: &mut Transaction<'_>, clients: Vec<Client>) -> Result<Vec<Client>> {
    let start = lock_counter(txn, "revision")?;
    let mut revision = start;
    let mut result = Vec::with_capacity(clients.len());
    for mut client in clients {
        let name = client.metadata.name.clone();
        let stored = stored_meta(txn, &name)?;
        check_key(txn, &name, &client.spec.public_key)?;
        revision = revision.saturating_add(1);
        let metadata = &mut client.metadata;
        match stored {
            Some(stored) => {
                metadata.uid = stored.uid;
                metadata.creation_timestamp = stored.creation_timestamp;
            }
            None => {
                clear_parts(txn, &name)?;
                let created = *metadata
                    .creation_timestamp
                    .get_or_insert_with(Timestamp::now);
                if metadata.uid.is_none() {
                    metadata.uid = Some(new_uid("Client", &name, created, revision));
                }
            }
        }
        metadata.resource_version = Some(revision.to_string());
        write_object(txn, &client)?;
        let liveness = record_status(txn, &name, &client.status)?;
        if client.status.inventory.is_none() {
            client.status.inventory = recorded_inventory(txn, &name)?;
        }
        set_liveness(&mut client.status, liveness);
        result.push(client);
    }
    if revision != start {
        set_counter(txn, "revision", revision)?;
    }
    let names: Vec<&str> = result.iter().map(|c| c.metadata.name.as_str()).collect();
    changes::record(txn, changes::CLIENT, &names)?;
    Ok(result)
}

/// Deletes a client with all its records (`Store::delete_client`).
pub(super) fn delete(txn: &mut Transaction<'_>, name: &str) -> Result<Option<Client>> {
    let revision = lock_counter(txn, "revision")?;
    let Some(client) = read_client(txn, name)? else {
        return Ok(None);
    };
    txn.execute("DELETE FROM clients WHERE name = $1", &[&name])
        .map_err(db(format_args!("delete clients/{name}")))?;
    clear_parts(txn, name)?;
    set_counter(txn, "revision", revision.saturating_add(1))?;
    changes::record(txn, changes::CLIENT, &[name])?;
    Ok(Some(client))
}

/// Records the statuses of `entries` (names sorted, each once) whose client exists, as
/// [`record_status`] does one by one, in a fixed number of statements whatever their number (a
/// reconcile pass writes thousands at once); returns how many were recorded.
pub(super) fn record_statuses(
    txn: &mut Transaction<'_>,
    entries: &[crate::ClientStatusEntry],
) -> Result<usize> {
    let mut names = Vec::with_capacity(entries.len());
    let mut statuses = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = entry.name.as_str();
        names.push(name);
        statuses.push(encode(
            format_args!("client_status/{name}"),
            &StatusRecord::of(&entry.status),
        )?);
    }
    // A client has a status record from its creation until its deletion (in the same
    // transactions as its object): its record is updated in place, which finds and locks each
    // row once (an upsert would look for it twice, first to insert).
    let mut recorded: std::collections::HashSet<String> = txn
        .query(
            "UPDATE client_status AS c SET status = u.s
             FROM unnest($1::text[], $2::text[]) AS u (n, s)
             WHERE c.name = u.n
             RETURNING c.name",
            &[&names, &statuses],
        )
        .map_err(db("write client_status"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if recorded.len() < names.len() {
        // The others get one if their client exists: a client deleted meanwhile (or never
        // enrolled) is not brought back.
        let (rest_names, rest_statuses): (Vec<&str>, Vec<&str>) = names
            .iter()
            .zip(&statuses)
            .filter(|(name, _)| !recorded.contains(**name))
            .map(|(name, status)| (*name, status.as_str()))
            .unzip();
        let inserted = txn
            .query(
                "INSERT INTO client_status (name, status)
                 SELECT u.n, u.s FROM unnest($1::text[], $2::text[]) AS u (n, s)
                 WHERE EXISTS (SELECT 1 FROM clients WHERE clients.name = u.n)
                 ON CONFLICT (name) DO UPDATE SET status = excluded.status
                 RETURNING name",
                &[&rest_names, &rest_statuses],
            )
            .map_err(db("write client_status"))?;
        recorded.extend(inserted.iter().map(|row| row.get::<_, String>(0)));
    }
    let (mut inventory_names, mut inventories) = (Vec::new(), Vec::new());
    let (mut live_names, mut live_at, mut live_loads) = (Vec::new(), Vec::new(), Vec::new());
    let mut status_names = Vec::with_capacity(recorded.len());
    let mut revisions = Vec::with_capacity(recorded.len());
    for entry in entries
        .iter()
        .filter(|entry| recorded.contains(&entry.name))
    {
        let (name, status) = (entry.name.as_str(), &entry.status);
        status_names.push(name);
        revisions.push(int("desired revision", status.desired_revision)?);
        if let Some(inventory) = &status.inventory {
            inventory_names.push(name);
            inventories.push(encode(format_args!("client_inventory/{name}"), inventory)?);
        }
        if let Some(at) = status.last_heartbeat {
            live_names.push(name);
            live_at.push(int("heartbeat", at.unix_millis())?);
            live_loads.push(encode(
                format_args!("client_liveness/{name}"),
                &status.load,
            )?);
        }
    }
    if status_names.is_empty() {
        return Ok(0);
    }
    if !inventory_names.is_empty() {
        txn.execute(
            "INSERT INTO client_inventory (name, inventory)
             SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (name) DO UPDATE SET inventory = excluded.inventory",
            &[&inventory_names, &inventories],
        )
        .map_err(db("write client_inventory"))?;
    }
    if !live_names.is_empty() {
        // Only a newer heartbeat replaces the recorded one. The rows recorded as new already are
        // left out before the upsert, which would lock each of them (and dirty its page) only to
        // find it has nothing to do: a status write usually carries the heartbeat recorded last.
        txn.execute(
            "INSERT INTO client_liveness (name, last_heartbeat_millis, load)
             SELECT u.n, u.at, u.load
             FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u (n, at, load)
             LEFT JOIN client_liveness AS l ON l.name = u.n
             WHERE l.name IS NULL OR l.last_heartbeat_millis < u.at
             ON CONFLICT (name) DO UPDATE SET last_heartbeat_millis = excluded.last_heartbeat_millis,
                 load = excluded.load
             WHERE client_liveness.last_heartbeat_millis < excluded.last_heartbeat_millis",
            &[&live_names, &live_at, &live_loads],
        )
        .map_err(db("write client_liveness"))?;
    }
    changes::record_statuses(txn, &status_names, &revisions)?;
    Ok(status_names.len())
}

/// Writes the liveness of `entries` (names sorted, each once) in one statement
/// (`Store::put_liveness`).
pub(super) fn write_livenesses(
    txn: &mut Transaction<'_>,
    entries: &[crate::Liveness],
) -> Result<()> {
    let names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
    let at = entries
        .iter()
        .map(|entry| int("heartbeat", entry.last_heartbeat.unix_millis()))
        .collect::<Result<Vec<i64>>>()?;
    let loads = entries
        .iter()
        .map(|entry| encode(format_args!("client_liveness/{}", entry.name), &entry.load))
        .collect::<Result<Vec<String>>>()?;
    txn.execute(
        "INSERT INTO client_liveness (name, last_heartbeat_millis, load)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
         ON CONFLICT (name) DO UPDATE SET last_heartbeat_millis = excluded.last_heartbeat_millis,
             load = excluded.load",
        &[&names, &at, &loads],
    )
    .map_err(db("write client_liveness"))?;
    Ok(())
}
