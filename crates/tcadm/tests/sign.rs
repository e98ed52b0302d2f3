//! `tcadm sign` makes minisign key pairs and signatures that Debian's `minisign` tool verifies;
//! `tcadm apply` sends the `ZIP.minisig` beside a local zip with its release, which a controller
//! started with `--require-signed` insists on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tc_testkit::{PackageFile, TestController, build_zip};

struct Fleet {
    controller: TestController,
    _runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn start(require_signed: bool) -> Fleet {
        Fleet::start_with(require_signed, None)
    }

    /// A fleet whose controller also applies the manifests in `watched`.
    fn start_with(require_signed: bool, watched: Option<PathBuf>) -> Fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let controller = runtime.block_on(TestController::start_with(move |config| {
            config.require_signed = require_signed;
            config.manifests_dir = watched;
        }));
        Fleet {
            controller,
            _runtime: runtime,
            dir: tempfile::tempdir().expect("scratch directory"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tcadm(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tcadm"))
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("TCADM_SERVER", self.controller.url())
            .env("TCADM_TOKEN", self.controller.admin_token())
            .env(
                "TCADM_CA_CERT_HASH",
                self.controller.ca_cert_hash().expect("an HTTPS controller"),
            )
            .output()
            .expect("tcadm runs")
    }
}

#[track_caller]
fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{output:#?}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn zip() -> Vec<u8> {
    build_zip(&[PackageFile {
        path: "VERSION",
        content: b"1.0.0\n",
        mode: 0o644,
    }])
}

/// Debian's `minisign`; these tests need it (`.ci/run` installs it).
fn minisign() -> Command {
    let found = Command::new("minisign")
        .arg("-v")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "the `minisign` binary is missing: install it (apt-get install minisign) to run this test"
    );
    Command::new("minisign")
}

fn minisign_verifies(public: &Path, zip: &Path) -> bool {
    minisign()
        .arg("-V")
        .arg("-p")
        .arg(public)
        .arg("-m")
        .arg(zip)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn a_signature_by_tcadm_sign_verifies_with_minisign() {
    let fleet = Fleet::start(false);
    let out = ok(&fleet.tcadm(&["sign", "--generate-key", "admin"]));
    let public = std::fs::read_to_string(fleet.path("admin.pub")).unwrap();
    let base64 = public.lines().nth(1).unwrap();
    assert!(base64.starts_with("RW"), "{public}");
    assert!(out.contains(base64), "{out}");
    // A second run never overwrites a key.
    let again = fleet.tcadm(&["sign", "--generate-key", "admin"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{again:#?}"
    );

    std::fs::write(fleet.path("kiosk.zip"), zip()).unwrap();
    ok(&fleet.tcadm(&["sign", "--key", "admin.key", "kiosk.zip"]));
    let signature = std::fs::read_to_string(fleet.path("kiosk.zip.minisig")).unwrap();
    assert!(signature.contains("file:kiosk.zip"), "{signature}");
    assert!(minisign_verifies(
        &fleet.path("admin.pub"),
        &fleet.path("kiosk.zip")
    ));

    // The minisign tool signs with the key tcadm made, too.
    std::fs::write(fleet.path("other.zip"), zip()).unwrap();
    let signed = minisign()
        .arg("-S")
        .arg("-s")
        .arg(fleet.path("admin.key"))
        .arg("-m")
        .arg(fleet.path("other.zip"))
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:#?}");
    assert!(minisign_verifies(
        &fleet.path("admin.pub"),
        &fleet.path("other.zip")
    ));

    // The same signature does not verify a changed zip.
    let mut changed = zip();
    changed.extend_from_slice(b"appended");
    std::fs::write(fleet.path("kiosk.zip"), changed).unwrap();
    assert!(!minisign_verifies(
        &fleet.path("admin.pub"),
        &fleet.path("kiosk.zip")
    ));
}

#[test]
fn a_key_made_by_minisign_signs_with_tcadm() {
    let fleet = Fleet::start(false);
    let status = minisign()
        .args(["-G", "-W", "-p"])
        .arg(fleet.path("tool.pub"))
        .arg("-s")
        .arg(fleet.path("tool.key"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:#?}");
    std::fs::write(fleet.path("kiosk.zip"), zip()).unwrap();
    ok(&fleet.tcadm(&["sign", "--key", "tool.key", "kiosk.zip"]));
    assert!(minisign_verifies(
        &fleet.path("tool.pub"),
        &fleet.path("kiosk.zip")
    ));
}

#[test]
fn signing_with_something_that_is_not_a_key_fails_clearly() {
    let fleet = Fleet::start(false);
    std::fs::write(fleet.path("kiosk.zip"), zip()).unwrap();
    std::fs::write(fleet.path("bogus.key"), "not a key\n").unwrap();
    let run = fleet.tcadm(&["sign", "--key", "bogus.key", "kiosk.zip"]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("bogus.key"), "{run:#?}");
    assert!(!fleet.path("kiosk.zip.minisig").exists());
}

const RELEASE: &str = "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  \
    name: kiosk-1.0.0\nspec:\n  package: kiosk\n  version: 1.0.0\n  artifact:\n    \
    path: kiosk.zip\n";

#[test]
fn apply_sends_the_signature_beside_a_local_zip_and_require_signed_refuses_unsigned_releases() {
    let fleet = Fleet::start(true);
    std::fs::write(fleet.path("kiosk.zip"), zip()).unwrap();
    std::fs::write(fleet.path("release.yaml"), RELEASE).unwrap();

    let refused = fleet.tcadm(&["apply", "-f", "release.yaml"]);
    assert!(!refused.status.success(), "{refused:#?}");
    let error = stderr(&refused);
    assert!(
        error.contains("release.yaml")
            && error.contains("packagerelease/kiosk-1.0.0")
            && error.contains("--require-signed"),
        "{error}"
    );

    ok(&fleet.tcadm(&["sign", "--generate-key", "admin"]));
    ok(&fleet.tcadm(&["sign", "--key", "admin.key", "kiosk.zip"]));
    ok(&fleet.tcadm(&["apply", "-f", "release.yaml"]));
    let stored: Value = serde_json::from_str(&ok(&fleet.tcadm(&[
        "get",
        "pr",
        "kiosk-1.0.0",
        "-o",
        "json",
    ])))
    .unwrap();
    let signature = std::fs::read_to_string(fleet.path("kiosk.zip.minisig")).unwrap();
    assert_eq!(stored["spec"]["artifact"]["signature"], signature.as_str());
}

#[test]
fn push_prints_a_release_with_the_signature_beside_the_zip() {
    let fleet = Fleet::start(false);
    std::fs::write(fleet.path("kiosk-1.0.0.zip"), zip()).unwrap();
    ok(&fleet.tcadm(&["sign", "--generate-key", "admin"]));
    ok(&fleet.tcadm(&["sign", "--key", "admin.key", "kiosk-1.0.0.zip"]));
    let printed = ok(&fleet.tcadm(&["push", "kiosk-1.0.0.zip"]));
    let objects = tc_api::decode_objects("push", &printed).unwrap();
    let tc_api::Object::PackageRelease(release) = &objects[0].object else {
        panic!("not a release: {printed}");
    };
    let signature = std::fs::read_to_string(fleet.path("kiosk-1.0.0.zip.minisig")).unwrap();
    assert_eq!(
        release.spec.artifact.signature.as_deref(),
        Some(&*signature)
    );
}

#[test]
fn the_watched_directory_takes_the_signature_beside_a_zip() {
    let watched = tempfile::tempdir().unwrap();
    let fleet = Fleet::start_with(true, Some(watched.path().to_owned()));
    ok(&fleet.tcadm(&["sign", "--generate-key", "admin"]));
    std::fs::write(watched.path().join("kiosk.zip"), zip()).unwrap();
    let key = fleet.path("admin.key");
    let zip_path = watched.path().join("kiosk.zip");
    ok(&fleet.tcadm(&[
        "sign",
        "--key",
        key.to_str().unwrap(),
        zip_path.to_str().unwrap(),
    ]));
    std::fs::write(watched.path().join("release.yaml"), RELEASE).unwrap();
    let signature = std::fs::read_to_string(watched.path().join("kiosk.zip.minisig")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let run = fleet.tcadm(&["get", "pr", "kiosk-1.0.0", "-o", "json"]);
        if run.status.success() {
            let stored: Value = serde_json::from_slice(&run.stdout).unwrap();
            assert_eq!(stored["spec"]["artifact"]["signature"], signature.as_str());
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watched release never appeared: {run:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
