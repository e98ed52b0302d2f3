//! The watched directory as the source of truth: drift made through the API is undone, ownership
//! is never a trap, one conflicting object does not block the others, the watcher settles, and
//! pending prunes are carried out.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A controller watching a fresh directory, set up by `files` before it starts.
async fn watching(
    files: &[(&str, &str)],
    adjust: impl FnOnce(&mut tc_testkit::Config),
) -> (TestController, Api, tempfile::TempDir, PathBuf) {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in files {
        write(&dir, name, content);
    }
    let watched = dir.clone();
    let controller = TestController::start_with(move |config| {
        config.manifests_dir = Some(watched);
        adjust(config);
    })
    .await;
    let api = Api::admin(&controller);
    (controller, api, manifests, dir)
}

async fn source(api: &Api) -> Value {
    let (status, source) = api.get("/apis/thinfleet.io/v1/sources/fleet").await;
    assert_eq!(status, StatusCode::OK, "{source}");
    source
}

async fn group(api: &Api, name: &str) -> (StatusCode, Value) {
    api.get(&format!("/apis/thinfleet.io/v1/clientgroups/{name}"))
        .await
}

async fn events(api: &Api, query: &str) -> Vec<Value> {
    let (_, list) = api
        .get(&format!("/apis/thinfleet.io/v1/events?{query}"))
        .await;
    list["items"].as_array().unwrap().clone()
}

/// Waits until the source has been read and applied again after this call (a sync that started
/// later), so that a test can look at what a sync did without sleeping.
async fn next_sync(api: &Api) -> Value {
    let before = source(api).await["lastAttemptTime"].clone();
    eventually(WAIT, || async {
        let now = source(api).await;
        (now["lastAttemptTime"] != before && !now["syncPending"].as_bool().unwrap()).then_some(now)
    })
    .await
}

/// The bug: `tcadm delete cg back-office` deleted a group its file still defines; it stayed
/// deleted, and its clients lost their packages.
#[tokio::test]
async fn a_group_deleted_through_the_api_is_restored_at_once_and_its_members_keep_their_packages() {
    let zip = package_zip("kiosk 1.0.0");
    let (controller, api, _temp, dir) = watching(&[], |_| {}).await;
    std::fs::write(dir.join("kiosk-1.0.0.zip"), &zip).unwrap();
    write(
        &dir,
        "releases.yaml",
        "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata: { name: kiosk-1.0.0 }\nspec:\n  package: kiosk\n  version: 1.0.0\n  artifact: { path: kiosk-1.0.0.zip }\n",
    );
    write(
        &dir,
        "groups.yaml",
        &group_yaml("back-office", "{}", &[("kiosk", "=1.0.0")], "1"),
    );
    let (status, enrolled) = Api::with_token(&controller, "")
        .enroll(controller.bootstrap_token(), "m-1", "office-1", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let client = eventually(WAIT, || async {
        let (_, client) = api.get("/apis/thinfleet.io/v1/clients/office-1").await;
        (client["status"]["desired"][0]["version"] == "1.0.0").then_some(client)
    })
    .await;
    let revision = client["status"]["desiredRevision"].clone();
    let (_, before) = group(&api, "back-office").await;

    let response = api
        .http
        .delete(format!(
            "{}/apis/thinfleet.io/v1/clientgroups/back-office",
            api.base
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let warning = response
        .headers()
        .get("warning")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        warning.starts_with("299 - \"clientgroup/back-office is defined in ")
            && warning.contains("groups.yaml of the watched directory `fleet`, which restored it"),
        "{warning}"
    );
    // Put back in the same transaction: never missing, a new object.
    let (status, after) = group(&api, "back-office").await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_ne!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert!(
        after["metadata"]["managedBy"]
            .as_str()
            .unwrap()
            .starts_with("dir:")
    );
    let restored = events(&api, "kind=ClientGroup&name=back-office").await;
    let restored = restored
        .iter()
        .find(|e| e["reason"] == "DriftCorrected")
        .unwrap_or_else(|| panic!("no DriftCorrected event: {restored:?}"));
    assert_eq!(restored["type"], "Normal");
    assert!(
        restored["message"]
            .as_str()
            .unwrap()
            .contains("groups.yaml"),
        "{restored}"
    );
    // The member's assignment never changed: once the group has status again, the client still
    // has the same desired revision.
    eventually(WAIT, || async {
        let (_, group) = group(&api, "back-office").await;
        group["status"]["desired"].as_u64().filter(|&n| n == 1)
    })
    .await;
    let (_, client) = api.get("/apis/thinfleet.io/v1/clients/office-1").await;
    assert_eq!(client["status"]["desiredRevision"], revision, "{client}");
    assert_eq!(client["status"]["desired"][0]["version"], "1.0.0");
    assert_eq!(source(&api).await["driftCorrections"], 1);
}

/// The bug: after one `tcadm apply --force` on a directory object, every later directory sync
/// failed as a whole (the other files' changes were refused too).
#[tokio::test]
async fn a_forced_apply_is_taken_back_and_never_blocks_the_directory() {
    let (_controller, api, _temp, dir) = watching(
        &[
            ("a.yaml", &group_yaml("alpha", "{}", &[], "1")),
            ("b.yaml", &group_yaml("beta", "{}", &[], "1")),
        ],
        // Only the wake-up of the API write can bring the sync this soon.
        |config| config.resync_interval = Duration::from_secs(3600),
    )
    .await;
    let (status, result) = api
        .apply(
            &group_yaml("alpha", "{ matchLabels: { site: rome } }", &[], "1"),
            "?force=true",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let warning = result["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("a.yaml of the watched directory `fleet`, which takes it back")
            && warning.contains("thinfleet.io/reconcile: disabled"),
        "{result}"
    );
    let alpha = eventually(WAIT, || async {
        let (_, alpha) = group(&api, "alpha").await;
        alpha["metadata"]["managedBy"]
            .as_str()
            .unwrap()
            .starts_with("dir:")
            .then_some(alpha)
    })
    .await;
    assert!(
        alpha["spec"]["selector"]["matchLabels"].is_null(),
        "{alpha}"
    );
    // The event follows the write that restored it.
    let restored: Vec<Value> = eventually(WAIT, || async {
        let restored: Vec<Value> = events(&api, "kind=ClientGroup&name=alpha")
            .await
            .into_iter()
            .filter(|e| e["reason"] == "DriftCorrected")
            .collect();
        (!restored.is_empty()).then_some(restored)
    })
    .await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    let message = restored[0]["message"].as_str().unwrap();
    assert!(
        message.contains("a.yaml")
            && message.contains("spec")
            && message.contains("manager taken back from `admin`"),
        "{message}"
    );

    // The other files still apply.
    write(
        &dir,
        "b.yaml",
        &group_yaml("beta", "{ matchLabels: { site: oslo } }", &[], "1"),
    );
    eventually(WAIT, || async {
        let (_, beta) = group(&api, "beta").await;
        (beta["spec"]["selector"]["matchLabels"]["site"] == "oslo").then_some(())
    })
    .await;
    let status = source(&api).await;
    assert!(status["error"].is_null(), "{status}");
    assert_eq!(status["driftCorrections"], 1, "{status}");
}

#[tokio::test]
async fn objects_marked_reconcile_disabled_are_left_alone_until_the_mark_goes() {
    let marked = group_yaml("gamma", "{}", &[], "1").replace(
        "  name: gamma\n",
        "  name: gamma\n  annotations: { thinfleet.io/reconcile: disabled }\n",
    );
    let (_controller, api, _temp, _dir) = watching(
        &[
            ("a.yaml", &group_yaml("alpha", "{}", &[], "1")),
            ("c.yaml", &marked),
        ],
        |_| {},
    )
    .await;
    // Marked in its file: not created.
    assert_eq!(group(&api, "gamma").await.0, StatusCode::NOT_FOUND);

    // Marked on the stored object through the API: left as the API wrote it.
    let taken = group_yaml("alpha", "{ matchLabels: { site: rome } }", &[], "1").replace(
        "  name: alpha\n",
        "  name: alpha\n  annotations: { thinfleet.io/reconcile: disabled }\n",
    );
    let (status, result) = api.apply(&taken, "?force=true").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert!(
        result["warnings"][0]
            .as_str()
            .unwrap()
            .contains("which leaves it alone"),
        "{result}"
    );
    let status = next_sync(&api).await;
    let (_, alpha) = group(&api, "alpha").await;
    assert_eq!(alpha["metadata"]["managedBy"], "admin", "{alpha}");
    assert_eq!(alpha["spec"]["selector"]["matchLabels"]["site"], "rome");
    let skipped: Vec<(&str, &str)> = status["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("alpha", "ReconcileDisabled"),
            ("gamma", "ReconcileDisabled")
        ],
        "{status}"
    );

    // Deleting the object deletes its mark: the next sync brings the file's version back.
    let (status, _) = api
        .request(
            reqwest::Method::DELETE,
            "/apis/thinfleet.io/v1/clientgroups/alpha",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let alpha = eventually(WAIT, || async {
        let (status, alpha) = group(&api, "alpha").await;
        (status == StatusCode::OK).then_some(alpha)
    })
    .await;
    assert!(
        alpha["spec"]["selector"]["matchLabels"].is_null(),
        "{alpha}"
    );
    let restored = eventually(WAIT, || async {
        let restored = events(&api, "kind=ClientGroup&name=alpha").await;
        restored
            .into_iter()
            .find(|e| e["reason"] == "DriftCorrected")
    })
    .await;
    assert!(
        restored["message"].as_str().unwrap().contains("re-created"),
        "{restored}"
    );
}

/// The bug: one object the directory could not apply (a changed release) refused the whole
/// directory, so every other file's changes waited with it.
#[tokio::test]
async fn a_conflict_in_one_object_is_reported_once_with_its_place_and_the_others_apply() {
    let (_controller, api, _temp, dir) = watching(&[], |_| {}).await;
    std::fs::write(dir.join("kiosk.zip"), package_zip("kiosk 1.0.0")).unwrap();
    let release = "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata: { name: kiosk-1.0.0 }\nspec:\n  package: kiosk\n  version: 1.0.0\n  artifact: { path: kiosk.zip }\n";
    write(&dir, "releases.yaml", &format!("# releases\n{release}"));
    write(&dir, "groups.yaml", &group_yaml("alpha", "{}", &[], "1"));
    next_sync(&api).await;
    // The same commit rebuilds the zip of a published release and changes a group.
    std::fs::write(dir.join("kiosk.zip"), package_zip("kiosk 1.0.0, rebuilt")).unwrap();
    write(
        &dir,
        "groups.yaml",
        &group_yaml("alpha", "{ matchLabels: { site: oslo } }", &[], "1"),
    );
    eventually(WAIT, || async {
        let (_, alpha) = group(&api, "alpha").await;
        (alpha["spec"]["selector"]["matchLabels"]["site"] == "oslo").then_some(())
    })
    .await;
    let status = eventually(WAIT, || async {
        let status = source(&api).await;
        status["conflicts"].is_array().then_some(status)
    })
    .await;
    let conflict = &status["conflicts"][0];
    assert_eq!(conflict["name"], "kiosk-1.0.0", "{status}");
    assert!(
        conflict["file"]
            .as_str()
            .unwrap()
            .ends_with("releases.yaml")
            && conflict["line"] == 2
            && conflict["column"] == 1,
        "{conflict}"
    );
    assert!(
        conflict["message"].as_str().unwrap().contains("immutable"),
        "{conflict}"
    );
    assert!(status["error"].is_null(), "{status}");
    // Reported once, however many syncs see it.
    next_sync(&api).await;
    next_sync(&api).await;
    let warnings: Vec<Value> = events(&api, "kind=PackageRelease&name=kiosk-1.0.0")
        .await
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["reason"], "SyncConflict");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("releases.yaml:2:1: packagerelease/kiosk-1.0.0 is immutable"),
        "{}",
        warnings[0]
    );
}

/// The bug: the controller's own reads of the directory woke its watcher, so a broken directory
/// was re-applied (and its error logged) about three times a second forever.
#[tokio::test]
async fn a_failing_directory_backs_off_and_reading_it_wakes_nothing() {
    let (_controller, api, _temp, dir) = watching(
        &[("a.yaml", "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: a }\nspec: { paused: sometimes }\n")],
        |config| {
            config.watch_debounce = Duration::from_millis(20);
            config.resync_interval = Duration::from_secs(3600);
        },
    )
    .await;
    let failing = eventually(WAIT, || async {
        let status = source(&api).await;
        (status["failures"].as_u64() >= Some(6)).then_some(status)
    })
    .await;
    let failures = failing["failures"].as_u64().unwrap();
    let attempt = failing["lastAttemptTime"].as_str().unwrap();
    let retry = failing["nextRetryTime"].as_str().unwrap();
    let delay = millis(retry) - millis(attempt);
    assert_eq!(delay, 20 << (failures - 1), "{failing}");
    // Reading every file (what the controller itself does at every attempt) is not a change.
    for _ in 0..10 {
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::read_to_string(entry.unwrap().path()).unwrap();
        }
    }
    let next = eventually(WAIT, || async {
        let status = source(&api).await;
        (status["failures"].as_u64() > Some(failures)).then_some(status)
    })
    .await;
    assert!(
        millis(next["lastAttemptTime"].as_str().unwrap()) >= millis(retry),
        "tried again before its retry time: {failing} then {next}"
    );
    // The error was recorded once.
    let warnings: Vec<Value> = events(&api, "kind=ManifestSource&name=fleet")
        .await
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");

    // A fix is a change: applied at once, and the recovery is recorded.
    write(&dir, "a.yaml", &group_yaml("a", "{}", &[], "1"));
    let fixed = eventually(WAIT, || async {
        let status = source(&api).await;
        status["error"].is_null().then_some(status)
    })
    .await;
    assert!(
        fixed["failures"].is_null() && fixed["nextRetryTime"].is_null(),
        "{fixed}"
    );
    let recovered = events(&api, "kind=ManifestSource&name=fleet").await;
    assert_eq!(
        recovered.last().map(|e| e["reason"].as_str()),
        Some(Some("Synced")),
        "{recovered:?}"
    );
    assert!(
        recovered.iter().any(|e| e["reason"] == "Applied"),
        "{recovered:?}"
    );
}

fn millis(time: &str) -> i64 {
    let time: tc_api::Timestamp = serde_json::from_value(json!(time)).unwrap();
    time.unix_millis() as i64
}

#[tokio::test]
async fn the_source_status_names_revision_objects_and_pending_syncs() {
    let (_controller, api, _temp, dir) = watching(
        &[("a.yaml", &group_yaml("alpha", "{}", &[], "1"))],
        |config| config.watch_debounce = Duration::from_secs(2),
    )
    .await;
    let (_, list) = api.get("/apis/thinfleet.io/v1/sources").await;
    assert_eq!(list["kind"], "ManifestSourceList");
    let status = &list["items"][0];
    assert_eq!(status["name"], "fleet");
    assert!(status["manager"].as_str().unwrap().starts_with("dir:"));
    let first = status["revision"].as_str().unwrap().to_string();
    assert!(first.starts_with("sha256:"), "{status}");
    assert_eq!(
        status["objects"],
        json!([{ "kind": "ClientGroup", "name": "alpha", "file": dir.join("a.yaml").display().to_string() }])
    );
    assert_eq!(status["syncPending"], false);
    let (missing, error) = api.get("/apis/thinfleet.io/v1/sources/nope").await;
    assert_eq!(missing, StatusCode::NOT_FOUND);
    assert!(
        error["message"].as_str().unwrap().contains("fleet"),
        "{error}"
    );

    // A change is pending from the moment the watcher sees it until it is applied.
    write(&dir, "b.yaml", &group_yaml("beta", "{}", &[], "1"));
    eventually(WAIT, || async {
        source(&api).await["syncPending"].as_bool().filter(|p| *p)
    })
    .await;
    let applied = eventually(WAIT, || async {
        let status = source(&api).await;
        (status["syncPending"] == false).then_some(status)
    })
    .await;
    assert_eq!(applied["objects"].as_array().unwrap().len(), 2);
    assert_ne!(applied["revision"], first.as_str());
    let synced = events(&api, "kind=ManifestSource&name=fleet").await;
    assert!(
        synced.iter().any(|e| e["reason"] == "Synced"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("clientgroup/beta created")),
        "{synced:?}"
    );
}

/// The bug: a prune deferred because clients still ran the release was retried only by the watched
/// directory; an API apply's deferred prune was never carried out, and nothing showed it pending.
#[tokio::test]
async fn a_deferred_prune_is_recorded_on_the_release_and_carried_out_later_for_api_applies_too() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let zip = package_zip("vpn 2.0.1");
    let sha = sha256_hex(&zip);
    api.put_blob(zip).await;
    let with_vpn = format!(
        "{}{}",
        release_yaml("vpn", "2.0.1", &sha),
        group_yaml("g", "{}", &[("vpn", "=2.0.1")], "1")
    );
    let (status, result) = api.apply(&with_vpn, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    // Another manager's group keeps the release assigned for a while.
    let keeper = group_yaml("keeper", "{}", &[("vpn", "=2.0.1")], "1");
    api.apply(&keeper, "?fieldManager=other").await;
    let (status, _) = Api::with_token(&controller, "")
        .enroll(controller.bootstrap_token(), "m-1", "c-1", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(WAIT, || async {
        let (_, client) = api.get("/apis/thinfleet.io/v1/clients/c-1").await;
        (client["status"]["desired"][0]["version"] == "2.0.1").then_some(())
    })
    .await;

    let without = group_yaml("g", "{}", &[], "1");
    let (_, result) = api.apply(&without, "?prune=true").await;
    assert_eq!(result["pendingPrunes"][0]["name"], "vpn-2.0.1", "{result}");
    let pending = |release: &Value| {
        release["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PrunePending")
            .cloned()
    };
    let (_, release) = api
        .get("/apis/thinfleet.io/v1/packagereleases/vpn-2.0.1")
        .await;
    let condition = pending(&release).unwrap_or_else(|| panic!("{release}"));
    assert_eq!(condition["status"], "True");
    assert!(
        condition["message"].as_str().unwrap().contains("`admin`"),
        "{condition}"
    );

    // Applying the release again cancels the prune.
    let (_, result) = api.apply(&with_vpn, "").await;
    assert!(result["pendingPrunes"].is_null(), "{result}");
    let (_, release) = api
        .get("/apis/thinfleet.io/v1/packagereleases/vpn-2.0.1")
        .await;
    assert!(pending(&release).is_none(), "{release}");

    // Pruned once no client runs it, without another apply.
    let (_, result) = api.apply(&without, "?prune=true").await;
    assert_eq!(result["pendingPrunes"][0]["name"], "vpn-2.0.1", "{result}");
    api.request(
        reqwest::Method::DELETE,
        "/apis/thinfleet.io/v1/clientgroups/keeper",
        None,
    )
    .await;
    let pruned = eventually(WAIT, || async {
        let pruned = events(&api, "kind=PackageRelease&name=vpn-2.0.1").await;
        pruned.into_iter().find(|e| e["reason"] == "Pruned")
    })
    .await;
    assert!(
        pruned["message"]
            .as_str()
            .unwrap()
            .contains("once no client"),
        "{pruned}"
    );
    let (status, _) = api
        .get("/apis/thinfleet.io/v1/packagereleases/vpn-2.0.1")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The bug: a dry run needed the artifact's blob uploaded first, so `tcadm diff` uploaded zips.
#[tokio::test]
async fn a_dry_run_accepts_a_declared_artifact_that_is_not_uploaded_yet() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let sha = sha256_hex(&package_zip("never uploaded"));
    let manifest = format!(
        "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata: {{ name: kiosk-1.0.0 }}\nspec:\n  package: kiosk\n  version: 1.0.0\n  artifact: {{ path: kiosk.zip, sha256: {sha} }}\n"
    );
    let (status, result) = api.apply(&manifest, "?dryRun=true").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        actions(&result),
        vec![("created".into(), "PackageRelease/kiosk-1.0.0".into())]
    );
    assert!(
        result["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not on the controller yet"),
        "{result}"
    );
    // A real apply still needs the blob.
    let (status, _) = api.apply(&manifest, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}
