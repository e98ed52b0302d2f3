//! Downloads against a fake blob server: verification, resume with Range, size checks.

mod common;

use std::time::Duration;

use common::{FakeController, list, package_zip};
use tc_agent::backoff::Backoff;
use tc_agent::download::{DownloadError, DownloadOptions, Fetcher};
use tc_proto::Hooks;

fn fetcher(fake: &FakeController) -> Fetcher {
    Fetcher::new(
        tc_agent::client::http_client(
            &tc_agent::config::parse_server(&fake.url()).unwrap(),
            None,
            std::path::Path::new("unused: the fake controller is plain HTTP"),
        )
        .unwrap(),
        tc_agent::config::parse_server(&fake.url()).unwrap(),
        DownloadOptions {
            attempts: 3,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            idle_timeout: Duration::from_secs(5),
        },
    )
}

#[tokio::test]
async fn verified_download_is_renamed_into_place() {
    let fake = FakeController::start();
    let zip = package_zip("1.0.0");
    let package = fake.package("kiosk", "1.0.0", zip.clone(), Hooks::default());
    let temp = tempfile::tempdir().unwrap();
    let path = fetcher(&fake).fetch(&package, temp.path()).await.unwrap();
    assert_eq!(path, temp.path().join(format!("{}.zip", package.sha256)));
    assert_eq!(std::fs::read(&path).unwrap(), zip);
    assert_eq!(list(temp.path()), [format!("{}.zip", package.sha256)]);
}

#[tokio::test]
async fn wrong_sha256_is_refused_and_nothing_is_kept() {
    let fake = FakeController::start();
    let mut package = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let real = package.sha256.clone();
    // Serve the right bytes under a URL, but expect another digest.
    package.sha256 = "0".repeat(64);
    package.url = format!("/blobs/sha256/{real}");
    let temp = tempfile::tempdir().unwrap();
    let error = fetcher(&fake)
        .fetch(&package, temp.path())
        .await
        .unwrap_err();
    assert!(matches!(error, DownloadError::Checksum { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("sha256 mismatch"), "{message}");
    assert!(message.contains(&real), "{message}");
    assert!(list(temp.path()).is_empty(), "{:?}", list(temp.path()));
}

#[tokio::test]
async fn truncated_download_resumes_with_a_range_request() {
    let fake = FakeController::start();
    let zip = package_zip("1.0.0");
    let half = zip.len() / 2;
    let package = fake.package("kiosk", "1.0.0", zip.clone(), Hooks::default());
    fake.state().truncate_next_blob = Some(half);
    let temp = tempfile::tempdir().unwrap();
    let path = fetcher(&fake).fetch(&package, temp.path()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), zip);
    let ranges = fake.state().blob_ranges.clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let resumed_from: usize = ranges[1]
        .as_deref()
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse().ok())
        .unwrap_or_else(|| panic!("second request without a usable Range: {ranges:?}"));
    assert!(
        resumed_from > 0 && resumed_from <= half,
        "resumed from {resumed_from}"
    );
}

#[tokio::test]
async fn partial_file_from_an_earlier_run_is_resumed() {
    let fake = FakeController::start();
    let zip = package_zip("1.0.0");
    let package = fake.package("kiosk", "1.0.0", zip.clone(), Hooks::default());
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(
        temp.path().join(format!("{}.part", package.sha256)),
        &zip[..100],
    )
    .unwrap();
    let path = fetcher(&fake).fetch(&package, temp.path()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), zip);
    assert_eq!(fake.state().blob_ranges, [Some("bytes=100-".to_owned())]);
}

#[tokio::test]
async fn size_mismatch_is_refused() {
    let fake = FakeController::start();
    let zip = package_zip("1.0.0");
    let real_size = zip.len() as u64;
    for claimed in [real_size + 10, real_size - 10] {
        let mut package = fake.package("kiosk", "1.0.0", zip.clone(), Hooks::default());
        package.size = claimed;
        let temp = tempfile::tempdir().unwrap();
        let error = fetcher(&fake)
            .fetch(&package, temp.path())
            .await
            .unwrap_err();
        assert!(
            matches!(error, DownloadError::SizeMismatch { expected, actual }
                if expected == claimed && actual == real_size),
            "{error}"
        );
        assert!(list(temp.path()).is_empty(), "{:?}", list(temp.path()));
    }
}

#[tokio::test]
async fn client_token_goes_to_the_controller_only() {
    let controller = FakeController::start();
    let elsewhere = FakeController::start();
    let fetcher = fetcher(&controller);
    fetcher.set_token(Some("client-token-7".into()));
    let temp = tempfile::tempdir().unwrap();

    let local = controller.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    fetcher.fetch(&local, temp.path()).await.unwrap();
    assert_eq!(
        controller.state().blob_authorizations,
        [Some("Bearer client-token-7".to_owned())]
    );

    let mut remote = elsewhere.package("kiosk", "2.0.0", package_zip("2.0.0"), Hooks::default());
    remote.url = format!("{}{}", elsewhere.url(), remote.url);
    fetcher.fetch(&remote, temp.path()).await.unwrap();
    assert_eq!(elsewhere.state().blob_authorizations, [None]);
}

#[tokio::test]
async fn missing_blob_fails_without_retrying_and_says_why() {
    let fake = FakeController::start();
    let mut package = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    package.url = format!("/blobs/sha256/{}", "f".repeat(64));
    let temp = tempfile::tempdir().unwrap();
    let error = fetcher(&fake)
        .fetch(&package, temp.path())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("404"), "{message}");
    assert!(message.contains("no such blob"), "{message}");
    assert_eq!(fake.state().blob_ranges.len(), 1);
}

#[tokio::test]
async fn unreachable_server_gives_up_after_the_configured_attempts() {
    let mut fake = FakeController::start();
    let package = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let fetcher = fetcher(&fake);
    fake.stop();
    let temp = tempfile::tempdir().unwrap();
    let error = fetcher.fetch(&package, temp.path()).await.unwrap_err();
    assert!(
        matches!(error, DownloadError::GaveUp { attempts: 3, .. }),
        "{error}"
    );
}
