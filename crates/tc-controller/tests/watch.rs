//! The watched manifest directory.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

async fn group_names(api: &Api) -> Vec<String> {
    let (_, list) = api.get("/apis/thinfleet.io/v1/clientgroups").await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn source(api: &Api) -> Value {
    let (_, sources) = api.get("/apis/thinfleet.io/v1/sources").await;
    sources["items"][0].clone()
}

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[tokio::test]
async fn the_directory_is_applied_on_start_and_on_every_change() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path().to_path_buf();
    write(&dir, "groups/a.yaml", &group_yaml("alpha", "{}", &[], "1"));
    // Artifacts given as paths are read relative to the manifest and imported.
    let zip = package_zip("kiosk 1.0.0");
    std::fs::create_dir_all(dir.join("packages")).unwrap();
    std::fs::write(dir.join("packages/kiosk-1.0.0.zip"), &zip).unwrap();
    write(
        &dir,
        "releases/kiosk.yml",
        "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata: { name: kiosk-1.0.0 }\nspec:\n  package: kiosk\n  version: 1.0.0\n  artifact: { path: ../packages/kiosk-1.0.0.zip }\n",
    );
    write(&dir, ".git/ignored.yaml", "not: [valid");
    let watched = dir.clone();
    let controller =
        TestController::start_with(move |config| config.manifests_dir = Some(watched)).await;
    let api = Api::admin(&controller);
    assert_eq!(group_names(&api).await, vec!["alpha"]);
    let (_, release) = api
        .get("/apis/thinfleet.io/v1/packagereleases/kiosk-1.0.0")
        .await;
    assert_eq!(release["status"]["artifact"]["sha256"], sha256_hex(&zip));
    assert!(
        release["metadata"]["managedBy"]
            .as_str()
            .unwrap()
            .starts_with("dir:")
    );

    // Add a file.
    write(&dir, "groups/b.yaml", &group_yaml("beta", "{}", &[], "1"));
    eventually(Duration::from_secs(10), || async {
        (group_names(&api).await == vec!["alpha", "beta"]).then_some(())
    })
    .await;

    // Change a file.
    write(
        &dir,
        "groups/b.yaml",
        &group_yaml("beta", "{ matchLabels: { site: rome } }", &[], "1"),
    );
    eventually(Duration::from_secs(10), || async {
        let (_, group) = api.get("/apis/thinfleet.io/v1/clientgroups/beta").await;
        (group["spec"]["selector"]["matchLabels"]["site"] == "rome").then_some(())
    })
    .await;

    // Delete a file: its object is pruned.
    std::fs::remove_file(dir.join("groups/b.yaml")).unwrap();
    eventually(Duration::from_secs(10), || async {
        (group_names(&api).await == vec!["alpha"]).then_some(())
    })
    .await;
    // The source status is updated right after the apply that pruned it.
    let status = eventually(Duration::from_secs(10), || async {
        let status = source(&api).await;
        (status["objects"].as_array().map(Vec::len) == Some(2)).then_some(status)
    })
    .await;
    assert!(status["error"].is_null(), "{status}");
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_state_and_says_where() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path().to_path_buf();
    write(&dir, "a.yaml", &group_yaml("alpha", "{}", &[], "1"));
    write(&dir, "b.yaml", &group_yaml("beta", "{}", &[], "1"));
    let watched = dir.clone();
    let controller =
        TestController::start_with(move |config| config.manifests_dir = Some(watched)).await;
    let api = Api::admin(&controller);
    assert_eq!(group_names(&api).await, vec!["alpha", "beta"]);

    // b.yaml breaks and a.yaml changes in the same commit: nothing is applied, nothing pruned.
    write(
        &dir,
        "b.yaml",
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: beta }\nspec:\n  selector: {}\n  paused: sometimes\n",
    );
    write(
        &dir,
        "a.yaml",
        &group_yaml("alpha", "{ matchLabels: { x: y } }", &[], "1"),
    );
    let status = eventually(Duration::from_secs(10), || async {
        let status = source(&api).await;
        status["error"].is_string().then_some(status)
    })
    .await;
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("b.yaml:6:3: spec.paused"), "{error}");
    assert_eq!(status["causes"][0]["line"], 6);
    assert_eq!(group_names(&api).await, vec!["alpha", "beta"]);
    let (_, alpha) = api.get("/apis/thinfleet.io/v1/clientgroups/alpha").await;
    assert!(
        alpha["spec"]["selector"]["matchLabels"].is_null(),
        "a.yaml was applied despite b.yaml: {alpha}"
    );
    let (_, events) = api
        .get("/apis/thinfleet.io/v1/events?kind=ManifestSource")
        .await;
    let warnings: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{events}");
    assert_eq!(warnings[0]["reason"], "ApplyFailed");

    // Fixing it applies everything and clears the error.
    write(&dir, "b.yaml", &group_yaml("beta", "{}", &[], "1"));
    eventually(Duration::from_secs(10), || async {
        source(&api).await["error"].is_null().then_some(())
    })
    .await;
    let (_, alpha) = api.get("/apis/thinfleet.io/v1/clientgroups/alpha").await;
    assert_eq!(alpha["spec"]["selector"]["matchLabels"]["x"], "y");
}

#[tokio::test]
async fn emptying_the_directory_prunes_nothing() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path().to_path_buf();
    write(&dir, "a.yaml", &group_yaml("alpha", "{}", &[], "1"));
    let watched = dir.clone();
    let controller =
        TestController::start_with(move |config| config.manifests_dir = Some(watched)).await;
    let api = Api::admin(&controller);
    assert_eq!(group_names(&api).await, vec!["alpha"]);
    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    write(&dir, "notes.yaml", "# only a comment\n");
    let status = eventually(Duration::from_secs(10), || async {
        let status = source(&api).await;
        status["error"].is_string().then_some(status)
    })
    .await;
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("no manifests found"),
        "{status}"
    );
    assert_eq!(group_names(&api).await, vec!["alpha"]);
}

#[tokio::test]
async fn the_api_cannot_silently_take_over_directory_objects() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path().to_path_buf();
    write(&dir, "a.yaml", &group_yaml("alpha", "{}", &[], "1"));
    let watched = dir.clone();
    let controller =
        TestController::start_with(move |config| config.manifests_dir = Some(watched)).await;
    let api = Api::admin(&controller);
    let (status, error) = api
        .apply(
            &group_yaml("alpha", "{ matchLabels: { a: b } }", &[], "1"),
            "",
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("managed by `dir:"),
        "{error}"
    );
}

#[tokio::test]
async fn the_example_fleet_applies_and_directory_artifacts_pack_reproducibly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifests = root.join("manifests");
    let watched = manifests.clone();
    let controller =
        TestController::start_with(move |config| config.manifests_dir = Some(watched)).await;
    let api = Api::admin(&controller);
    assert!(
        source(&api).await["error"].is_null(),
        "{}",
        source(&api).await
    );
    assert_eq!(
        group_names(&api).await,
        vec!["back-office", "everyone", "front-desk"]
    );
    let (_, releases) = api.get("/apis/thinfleet.io/v1/packagereleases").await;
    let releases = releases["items"].as_array().unwrap();
    assert_eq!(releases.len(), 4);
    for release in releases {
        let dir = manifests.join(release["spec"]["artifact"]["path"].as_str().unwrap());
        let packed = tc_pack::pack_dir(&dir).unwrap();
        assert_eq!(
            release["status"]["artifact"]["sha256"],
            sha256_hex(&packed),
            "{}",
            dir.display()
        );
    }
}
