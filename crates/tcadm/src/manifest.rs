//! Reading manifests from files, directories and standard input; decoding them locally so errors
//! name the real file; and preparing releases whose artifact is a local zip for upload.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tc_api::decode::{Document, Limits, decode_document, join_path, parse_documents_until_error};
use tc_api::{Cause, DecodeError, DecodeErrors, Kind, Object, Position, decode_objects};

use crate::api::{ApiError, FileBody};

/// Extensions taken from a directory.
pub const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The name used for standard input.
pub const STDIN_NAME: &str = "-";

/// A manifest file as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// The name shown in errors: the path as given or found, or `-`.
    pub name: String,
    /// Where relative artifact paths start: the file's directory (the current one for stdin).
    pub base_dir: PathBuf,
    /// The text, as it will be sent.
    pub content: String,
    /// Lines inserted into `content` (numbers in the new text, ascending), so that positions the
    /// server reports can be mapped back to the file on disk.
    pub inserted_lines: Vec<usize>,
    /// True when `content` no longer follows the file's lines (a release rewritten as JSON);
    /// positions from the server are then left as they are.
    pub rewritten: bool,
}

impl ManifestFile {
    /// A file with this name, directory and text.
    pub fn new(name: impl Into<String>, base_dir: impl Into<PathBuf>, content: String) -> Self {
        ManifestFile {
            name: name.into(),
            base_dir: base_dir.into(),
            content,
            inserted_lines: vec![],
            rewritten: false,
        }
    }

    /// The line in the file on disk that `line` of `content` came from.
    pub fn original_line(&self, line: usize) -> usize {
        let before = self.inserted_lines.iter().filter(|&&l| l < line).count();
        line - before
    }

    /// The body sent to the apply call.
    pub fn body(&self) -> FileBody {
        FileBody {
            name: self.name.clone(),
            content: self.content.clone(),
        }
    }
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A path could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Documents are invalid: every error found (up to the cap), each naming file, line, column
    /// and field.
    #[error(transparent)]
    Decode(DecodeErrors),
    /// Standard input was named twice.
    #[error("`-` (standard input) can be given only once")]
    StdinTwice,
    /// Nothing to apply.
    #[error("no objects found in {0}")]
    NoObjects(String),
}

impl From<DecodeErrors> for ManifestError {
    fn from(errors: DecodeErrors) -> Self {
        ManifestError::Decode(errors)
    }
}

impl From<DecodeError> for ManifestError {
    fn from(error: DecodeError) -> Self {
        ManifestError::Decode(error.into())
    }
}

/// Reads every manifest named by `paths`: files as they are, directories for their `*.yaml`,
/// `*.yml` and `*.json` files (sorted by name; subdirectories only with `recursive`), and `-`
/// from `stdin`.
pub fn collect_files(
    paths: &[String],
    recursive: bool,
    stdin: &mut dyn Read,
) -> Result<Vec<ManifestFile>, ManifestError> {
    let mut files = vec![];
    let mut stdin_read = false;
    for path in paths {
        if path == STDIN_NAME {
            if stdin_read {
                return Err(ManifestError::StdinTwice);
            }
            stdin_read = true;
            let mut content = String::new();
            stdin
                .read_to_string(&mut content)
                .map_err(|source| ManifestError::Read {
                    path: "standard input".into(),
                    source,
                })?;
            let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            files.push(ManifestFile::new(STDIN_NAME, base_dir, content));
            continue;
        }
        let metadata = fs::metadata(path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            collect_dir(Path::new(path), recursive, &mut files)?;
        } else {
            files.push(read_file(Path::new(path))?);
        }
    }
    Ok(files)
}

fn collect_dir(
    dir: &Path,
    recursive: bool,
    files: &mut Vec<ManifestFile>,
) -> Result<(), ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    entries.sort();
    for path in entries {
        let metadata = fs::metadata(&path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if metadata.is_dir() {
            if recursive {
                collect_dir(&path, recursive, files)?;
            }
        } else if is_manifest_name(&path) {
            files.push(read_file(&path)?);
        }
    }
    Ok(())
}

/// True for `*.yaml`, `*.yml` and `*.json`.
pub fn is_manifest_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn read_file(path: &Path) -> Result<ManifestFile, ManifestError> {
    let content = fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(ManifestFile::new(
        path.display().to_string(),
        base_dir,
        content,
    ))
}

/// An object decoded from a manifest, with its document for position lookups.
#[derive(Clone, Debug)]
pub struct DecodedObject {
    /// Index of the file in the list given to [`decode_files`].
    pub file: usize,
    /// The object.
    pub object: Object,
    /// Its document (shared by the items of a `List` document).
    pub document: Arc<Document>,
    /// Where the object is in its document: empty, or `items[3]` for an item of a list.
    pub path: String,
    /// Where the object starts.
    pub position: Position,
}

impl DecodedObject {
    /// The position of `field` of this object.
    pub fn position_of(&self, field: &str) -> Position {
        self.document.position_of(&join_path(&self.path, field))
    }

    /// An error about `field` of this object, at the field's position.
    pub fn error(&self, field: &str, message: impl Into<String>) -> DecodeError {
        self.document.error(&join_path(&self.path, field), message)
    }
}

/// Decodes every file, as the server would, reporting every error found (up to the cap, in file
/// order); one error anywhere fails the whole set. `List` documents (as `get -o yaml` prints
/// them) give their items, with their own positions. An object defined twice is an error at its
/// second definition.
pub fn decode_files(files: &[ManifestFile]) -> Result<Vec<DecodedObject>, ManifestError> {
    let mut decoded: Vec<DecodedObject> = vec![];
    let mut errors = DecodeErrors::new();
    let mut seen: BTreeMap<(Kind, String), (String, Position)> = BTreeMap::new();
    for (index, file) in files.iter().enumerate() {
        let (documents, parse_error) =
            parse_documents_until_error(&file.name, &file.content, &Limits::default());
        for document in documents {
            let document = Arc::new(document);
            for item in decode_document(&document, &mut errors) {
                let key = (item.object.kind(), item.object.name().to_string());
                if let Some((other_file, other)) = seen.get(&key) {
                    errors.push(DecodeError {
                        file: file.name.clone(),
                        line: item.position.line,
                        column: item.position.column,
                        field: None,
                        message: format!(
                            "{} is also defined at {other_file}:{}:{}",
                            item.object.reference(),
                            other.line,
                            other.column
                        ),
                    });
                    continue;
                }
                seen.insert(key, (file.name.clone(), item.position));
                decoded.push(DecodedObject {
                    file: index,
                    object: item.object,
                    document: document.clone(),
                    path: item.path,
                    position: item.position,
                });
            }
        }
        if let Some(error) = parse_error {
            errors.push(error);
        }
    }
    Ok(errors.into_result(decoded)?)
}

/// A release's zip on the admin's disk, to be uploaded before the apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalArtifact {
    /// `packagerelease/NAME`.
    pub release: String,
    /// The zip, or the package directory it was packed from.
    pub path: PathBuf,
    /// The zip packed from a directory (`None` when `path` is a zip file).
    pub packed: Option<Vec<u8>>,
    /// Its lowercase hex sha256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Removes `.` and resolves `..` against the components before it, without touching the file
/// system, so messages show `zips/kiosk.zip` rather than `fleet/../zips/kiosk.zip`.
pub fn normalize_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let last = out.components().next_back();
                match last {
                    Some(Component::Normal(_)) => {
                        out.pop();
                    }
                    Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                    _ => out.push(".."),
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Hashes a file: its lowercase hex sha256 and its size.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((hex(context.finish().as_ref()), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the releases whose `artifact.path` names a local zip, hashes each zip, and writes its
/// `sha256` into the manifest text (keeping `path`) so the server can find the uploaded blob.
/// A `sha256` already in the manifest must match the file.
///
/// A release as `tcadm get -o yaml|json` prints it carries its `status`: its artifact is on the
/// controller already, and its `path` names a file on the disk of whoever applied it (the
/// watched directory, or another admin's checkout), usually not here. When that path does not
/// exist here, nothing is uploaded and the digest the controller recorded is sent, so the
/// release applies back unchanged.
pub fn prepare_artifacts(
    files: &mut [ManifestFile],
    decoded: &[DecodedObject],
) -> Result<Vec<LocalArtifact>, ManifestError> {
    let mut artifacts = vec![];
    // The digest written into each release that has none: `kind/name` -> sha256.
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    // Per file: (position of the `path` key, sha256) of each insertion.
    let mut insertions: BTreeMap<usize, Vec<(Position, String)>> = BTreeMap::new();
    // The signature (`ZIP.minisig` beside a local zip) written into each release that has none:
    // `kind/name` -> minisig text; and the files that hold such releases.
    let mut signatures: BTreeMap<String, String> = BTreeMap::new();
    let mut signed_files: BTreeSet<usize> = BTreeSet::new();
    for item in decoded {
        let Object::PackageRelease(release) = &item.object else {
            continue;
        };
        let Some(relative) = &release.spec.artifact.path else {
            continue;
        };
        let file = &files[item.file];
        let path = normalize_path(&file.base_dir.join(relative));
        let declared = release.spec.artifact.sha256.as_ref();
        let stored = release
            .status
            .as_ref()
            .and_then(|status| status.artifact.as_ref())
            .map(|artifact| &artifact.sha256);
        if !path.exists()
            && let Some(stored) = stored
        {
            if declared.is_none() {
                digests.insert(item.object.reference(), stored.clone());
                insertions
                    .entry(item.file)
                    .or_default()
                    .push((item.position_of("spec.artifact.path"), stored.clone()));
            }
            continue;
        }
        let (sha256, size, packed) = if path.is_dir() {
            // A package source directory, packed the same way the controller packs it.
            let bytes = tc_pack::pack_dir(&path).map_err(|error| {
                item.error(
                    "spec.artifact.path",
                    format!("packing `{relative}`: {error}"),
                )
            })?;
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            (hex(digest.as_ref()), bytes.len() as u64, Some(bytes))
        } else if path.is_file() {
            let (sha256, size) = sha256_file(&path).map_err(|source| ManifestError::Read {
                path: path.display().to_string(),
                source,
            })?;
            if release.spec.artifact.signature.is_none()
                && let Some(signature) = crate::sign::read_signature_beside(&path)
                    .map_err(|error| item.error("spec.artifact.signature", error.to_string()))?
            {
                signatures.insert(item.object.reference(), signature);
                signed_files.insert(item.file);
            }
            (sha256, size, None)
        } else {
            return Err(item
                .error(
                    "spec.artifact.path",
                    format!(
                        "`{relative}` is neither a zip nor a package directory (looked at {})",
                        path.display()
                    ),
                )
                .into());
        };
        match declared {
            Some(given) if *given != sha256 => {
                return Err(item
                    .error(
                        "spec.artifact.sha256",
                        format!("`{relative}` has sha256 {sha256}, not {given}"),
                    )
                    .into());
            }
            Some(_) => {}
            None => {
                digests.insert(item.object.reference(), sha256.clone());
                insertions
                    .entry(item.file)
                    .or_default()
                    .push((item.position_of("spec.artifact.path"), sha256.clone()));
            }
        }
        artifacts.push(LocalArtifact {
            release: item.object.reference(),
            path,
            packed,
            sha256,
            size,
        });
    }
    let edited: BTreeSet<usize> = insertions
        .keys()
        .copied()
        .chain(signed_files.iter().copied())
        .collect();
    for index in edited {
        let file = &mut files[index];
        let expected: Vec<Object> = decoded
            .iter()
            .filter(|d| d.file == index)
            .map(|d| with_signature(&with_sha256(&d.object, &digests), &signatures))
            .collect();
        // A signature is several lines: a file that gains one is sent as JSON documents.
        if !signed_files.contains(&index)
            && let Some(file_insertions) = insertions.get_mut(&index)
        {
            file_insertions.sort();
            insert_sha256(file, file_insertions);
        }
        let matches = !signed_files.contains(&index)
            && decode_objects(&file.name, &file.content).is_ok_and(|objects| {
                objects.len() == expected.len()
                    && objects
                        .iter()
                        .zip(&expected)
                        .all(|(got, want)| got.object == *want)
            });
        if !matches {
            // The text could not be edited in place (unusual formatting): send the objects as
            // JSON documents instead.
            let parts: Vec<String> = expected
                .iter()
                .map(|o| serde_json::to_string(o).expect("objects serialize to JSON"))
                .collect();
            file.content = parts.join("\n---\n");
            file.content.push('\n');
            file.inserted_lines.clear();
            file.rewritten = true;
        }
    }
    Ok(artifacts)
}

/// The object with `artifact.signature` set from `signatures` (by `kind/name`), if it has an
/// entry.
fn with_signature(object: &Object, signatures: &BTreeMap<String, String>) -> Object {
    let mut object = object.clone();
    let reference = object.reference();
    if let Object::PackageRelease(release) = &mut object
        && release.spec.artifact.signature.is_none()
        && let Some(signature) = signatures.get(&reference)
    {
        release.spec.artifact.signature = Some(signature.clone());
    }
    object
}

/// The object with `artifact.sha256` set from `digests` (by `kind/name`), if it has an entry.
fn with_sha256(object: &Object, digests: &BTreeMap<String, String>) -> Object {
    let mut object = object.clone();
    let reference = object.reference();
    if let Object::PackageRelease(release) = &mut object
        && release.spec.artifact.sha256.is_none()
        && let Some(sha256) = digests.get(&reference)
    {
        release.spec.artifact.sha256 = Some(sha256.clone());
    }
    object
}

/// Inserts `sha256: "HEX"` before each `path` key: on its own line with the same indentation in a
/// block mapping, or as `"sha256": "HEX", ` inside a flow mapping (JSON included), which adds no
/// line.
fn insert_sha256(file: &mut ManifestFile, insertions: &[(Position, String)]) {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(file.content.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut edits: Vec<(usize, String, bool)> = vec![];
    for (position, sha256) in insertions {
        let Some(&line_start) = line_starts.get(position.line.saturating_sub(1)) else {
            continue;
        };
        let line_text = &file.content[line_start..];
        let offset = line_start
            + line_text
                .char_indices()
                .nth(position.column.saturating_sub(1))
                .map(|(i, _)| i)
                .unwrap_or(0);
        let before = file.content[..offset].trim_end();
        let in_flow = before.ends_with('{') || before.ends_with(',');
        if in_flow {
            edits.push((offset, format!("\"sha256\": \"{sha256}\", "), false));
        } else {
            let indent: String = file.content[line_start..offset]
                .chars()
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            edits.push((offset, format!("sha256: \"{sha256}\"\n{indent}"), true));
        }
    }
    // Apply from the end so earlier offsets stay valid; count inserted lines from the start.
    let mut added_lines = 0;
    let mut inserted_lines = vec![];
    for (offset, _, adds_line) in &edits {
        if *adds_line {
            let line = file.content[..*offset].matches('\n').count() + 1;
            inserted_lines.push(line + added_lines);
            added_lines += 1;
        }
    }
    for (offset, text, _) in edits.iter().rev() {
        file.content.insert_str(*offset, text);
    }
    file.inserted_lines = inserted_lines;
}

/// Maps the positions in a server error back to the files on disk (undoing inserted lines).
pub fn map_server_error(error: ApiError, files: &[ManifestFile]) -> ApiError {
    match error {
        ApiError::Status {
            code,
            reason,
            message,
            causes,
        } => {
            let causes = causes
                .into_iter()
                .map(|cause| map_cause(cause, files))
                .collect();
            ApiError::Status {
                code,
                reason,
                message,
                causes,
            }
        }
        other => other,
    }
}

fn map_cause(mut cause: Cause, files: &[ManifestFile]) -> Cause {
    if let (Some(name), Some(line)) = (&cause.file, cause.line)
        && let Some(file) = files.iter().find(|f| &f.name == name && !f.rewritten)
    {
        cause.line = Some(file.original_line(line));
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "\
apiVersion: thinfleet.io/v1
kind: PackageRelease
metadata:
  name: kiosk-1.0.0
spec:
  package: kiosk
  version: 1.0.0
  artifact:
    path: kiosk.zip
";

    fn sandbox(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    fn collect(paths: &[&Path], recursive: bool) -> Vec<ManifestFile> {
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        collect_files(&paths, recursive, &mut io::empty()).unwrap()
    }

    #[test]
    fn directories_give_their_manifests_sorted_and_recurse_only_when_asked() {
        let dir = sandbox(&[
            ("b.yaml", b""),
            ("a.yml", b""),
            ("c.json", b""),
            ("notes.txt", b""),
            ("sub/d.yaml", b""),
        ]);
        let names = |files: Vec<ManifestFile>| -> Vec<String> {
            files
                .iter()
                .map(|f| {
                    Path::new(&f.name)
                        .strip_prefix(dir.path())
                        .unwrap()
                        .display()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(
            names(collect(&[dir.path()], false)),
            ["a.yml", "b.yaml", "c.json"]
        );
        assert_eq!(
            names(collect(&[dir.path()], true)),
            ["a.yml", "b.yaml", "c.json", "sub/d.yaml"]
        );
    }

    #[test]
    fn standard_input_is_read_once() {
        let paths = vec!["-".to_string()];
        let files = collect_files(&paths, false, &mut "kind: x\n".as_bytes()).unwrap();
        assert_eq!(files[0].name, "-");
        assert_eq!(files[0].content, "kind: x\n");
        let twice = vec!["-".to_string(), "-".to_string()];
        assert!(matches!(
            collect_files(&twice, false, &mut io::empty()),
            Err(ManifestError::StdinTwice)
        ));
    }

    #[test]
    fn a_missing_path_is_a_read_error() {
        let paths = vec!["/nonexistent/fleet.yaml".to_string()];
        let error = collect_files(&paths, false, &mut io::empty()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/fleet.yaml")
        );
    }

    #[test]
    fn a_duplicate_object_names_both_places() {
        let group = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: {name: g}\nspec: {selector: {}}\n";
        let files = vec![
            ManifestFile::new("a.yaml", ".", group.to_string()),
            ManifestFile::new("b.yaml", ".", format!("# comment\n{group}")),
        ];
        let error = decode_files(&files).unwrap_err();
        assert_eq!(
            error.to_string(),
            "b.yaml:2:1: clientgroup/g is also defined at a.yaml:1:1"
        );
    }

    #[test]
    fn block_style_releases_get_their_digest_on_a_new_line() {
        let dir = sandbox(&[
            ("fleet/kiosk.zip", b"zip bytes"),
            ("fleet/r.yaml", RELEASE.as_bytes()),
        ]);
        let mut files = collect(&[&dir.path().join("fleet/r.yaml")], false);
        let decoded = decode_files(&files).unwrap();
        let artifacts = prepare_artifacts(&mut files, &decoded).unwrap();
        let (sha, size) = sha256_file(&dir.path().join("fleet/kiosk.zip")).unwrap();
        assert_eq!(size, 9);
        assert_eq!(artifacts.len(), 1);
        assert_eq!(artifacts[0].sha256, sha);
        assert_eq!(artifacts[0].release, "packagerelease/kiosk-1.0.0");
        assert!(files[0].content.ends_with(&format!(
            "  artifact:\n    sha256: \"{sha}\"\n    path: kiosk.zip\n"
        )));
        assert_eq!(files[0].inserted_lines, vec![9]);
        assert!(!files[0].rewritten);
        assert_eq!(files[0].original_line(8), 8);
        assert_eq!(files[0].original_line(9), 9);
        assert_eq!(files[0].original_line(10), 9);
    }

    #[test]
    fn flow_style_and_json_releases_get_their_digest_inline() {
        let flow = RELEASE.replace(
            "  artifact:\n    path: kiosk.zip\n",
            "  artifact: { path: kiosk.zip }\n",
        );
        let json = r#"{"apiVersion": "thinfleet.io/v1", "kind": "PackageRelease",
 "metadata": {"name": "kiosk-1.0.0"},
 "spec": {"package": "kiosk", "version": "1.0.0", "artifact": {"path": "kiosk.zip"}}}
"#;
        for text in [flow.as_str(), json] {
            let dir = sandbox(&[("kiosk.zip", b"zip"), ("r.yaml", text.as_bytes())]);
            let mut files = collect(&[&dir.path().join("r.yaml")], false);
            let decoded = decode_files(&files).unwrap();
            prepare_artifacts(&mut files, &decoded).unwrap();
            let (sha, _) = sha256_file(&dir.path().join("kiosk.zip")).unwrap();
            assert!(
                files[0]
                    .content
                    .contains(&format!("\"sha256\": \"{sha}\", ")),
                "{}",
                files[0].content
            );
            assert!(files[0].inserted_lines.is_empty());
            assert!(!files[0].rewritten);
        }
    }

    #[test]
    fn a_wrong_digest_or_missing_zip_is_an_error_at_the_field() {
        let dir = sandbox(&[("kiosk.zip", b"zip"), ("r.yaml", RELEASE.as_bytes())]);
        let wrong = RELEASE.replace(
            "    path: kiosk.zip\n",
            &format!("    path: kiosk.zip\n    sha256: {}\n", "a".repeat(64)),
        );
        fs::write(dir.path().join("wrong.yaml"), wrong).unwrap();
        let mut files = collect(&[&dir.path().join("wrong.yaml")], false);
        let decoded = decode_files(&files).unwrap();
        let error = prepare_artifacts(&mut files, &decoded)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("wrong.yaml:10:5: spec.artifact.sha256: `kiosk.zip` has sha256"),
            "{error}"
        );

        fs::remove_file(dir.path().join("kiosk.zip")).unwrap();
        let mut files = collect(&[&dir.path().join("r.yaml")], false);
        let decoded = decode_files(&files).unwrap();
        let error = prepare_artifacts(&mut files, &decoded)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("r.yaml:9:5: spec.artifact.path: `kiosk.zip` is neither a zip nor a package directory"),
            "{error}"
        );
    }

    #[test]
    fn paths_are_normalized_lexically() {
        let check = |input: &str, expected: &str| {
            assert_eq!(
                normalize_path(Path::new(input)),
                PathBuf::from(expected),
                "{input}"
            );
        };
        check("fleet/../zips/kiosk.zip", "zips/kiosk.zip");
        check("./fleet/./kiosk.zip", "fleet/kiosk.zip");
        check("../up/kiosk.zip", "../up/kiosk.zip");
        check("a/../../b", "../b");
        check("/srv/../kiosk.zip", "/kiosk.zip");
        check("/../kiosk.zip", "/kiosk.zip");
        check("a/..", ".");
    }

    #[test]
    fn lists_printed_by_get_are_applied_item_by_item() {
        let list = r#"apiVersion: thinfleet.io/v1
kind: ClientGroupList
items:
- apiVersion: thinfleet.io/v1
  kind: ClientGroup
  metadata: {name: a}
  spec: {selector: {}}
- apiVersion: thinfleet.io/v1
  kind: ClientGroup
  metadata: {name: b}
  spec: {selector: {}}
"#;
        let paths = vec!["-".to_string()];
        let files = collect_files(&paths, false, &mut list.as_bytes()).unwrap();
        // Sent as it is, so the server's positions are the file's own.
        assert_eq!(files[0].content, list);
        assert!(!files[0].rewritten);
        let decoded = decode_files(&files).unwrap();
        let names: Vec<(String, usize)> = decoded
            .iter()
            .map(|d| (d.object.reference(), d.position.line))
            .collect();
        assert_eq!(
            names,
            [("clientgroup/a".into(), 4), ("clientgroup/b".into(), 8)]
        );
        assert_eq!(decoded[1].position_of("spec.selector").line, 11);

        // An error in an item names the item's own line.
        let bad = list.replace("metadata: {name: b}", "metadata: {name: B}");
        let files = collect_files(&paths, false, &mut bad.as_bytes()).unwrap();
        let error = decode_files(&files).unwrap_err().to_string();
        assert!(
            error.starts_with("-:10:14: items[1].metadata.name: `B` is not a valid name"),
            "{error}"
        );
    }

    #[test]
    fn releases_printed_by_get_keep_the_digest_the_controller_recorded() {
        let sha = "a".repeat(64);
        let printed = format!(
            "{RELEASE}status:\n  artifact:\n    sha256: {sha}\n    size: 3\n",
            RELEASE = RELEASE.replace("path: kiosk.zip", "path: ../packages/kiosk.zip")
        );
        let dir = sandbox(&[("r.yaml", printed.as_bytes())]);
        let mut files = collect(&[&dir.path().join("r.yaml")], false);
        let decoded = decode_files(&files).unwrap();
        let artifacts = prepare_artifacts(&mut files, &decoded).unwrap();
        assert!(artifacts.is_empty(), "nothing to upload: {artifacts:?}");
        assert!(
            files[0].content.contains(&format!(
                "  artifact:\n    sha256: \"{sha}\"\n    path: ../packages/kiosk.zip\n"
            )),
            "{}",
            files[0].content
        );
        assert!(!files[0].rewritten);

        // Without a recorded digest, a missing zip is still an error.
        let dir = sandbox(&[("r.yaml", RELEASE.as_bytes())]);
        let mut files = collect(&[&dir.path().join("r.yaml")], false);
        let decoded = decode_files(&files).unwrap();
        assert!(prepare_artifacts(&mut files, &decoded).is_err());
    }

    #[test]
    fn every_bad_document_of_every_file_is_reported() {
        let group = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: {name: g}\nspec: {selector: {}}\n";
        let files = vec![
            ManifestFile::new(
                "a.yaml",
                ".",
                group.replace("{name: g}", "{name: G}")
                    + "---\n"
                    + &group.replace("{}}", "{}, paused: 3}"),
            ),
            ManifestFile::new("b.yaml", ".", format!("{group}---\n{group}")),
        ];
        let Err(ManifestError::Decode(errors)) = decode_files(&files) else {
            panic!("expected decode errors")
        };
        let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "a.yaml:3:12: metadata.name: `G` is not a valid name: use at most 63 lowercase \
                 letters, digits, `-` and `.`, starting and ending with a letter or digit",
                "a.yaml:9:22: spec.paused: invalid type: integer `3`, expected a boolean",
                "b.yaml:5:1: clientgroup/g is also defined at b.yaml:1:1",
            ]
        );
    }

    #[test]
    fn server_positions_are_mapped_back_past_inserted_lines() {
        let mut file = ManifestFile::new("r.yaml", ".", String::new());
        file.inserted_lines = vec![9];
        let error = ApiError::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "bad".into(),
            causes: vec![Cause {
                file: Some("r.yaml".into()),
                line: Some(12),
                column: Some(3),
                field: None,
                message: "bad".into(),
            }],
        };
        let mapped = map_server_error(error, &[file]);
        assert_eq!(mapped.to_string(), "r.yaml:11:3: bad");
    }
}
