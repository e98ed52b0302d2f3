//! The commands: each reads its arguments, talks to the controller and writes its output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tc_api::task::TaskActionKind as TaskAction;
use tc_api::{
    API_VERSION, Artifact, Client, ClientGroup, Kind, Object, ObjectMeta, PackageRelease,
    PackageReleaseSpec, Timestamp,
};

use crate::api::{ApiClient, ApiError, ApplyOptions, ApplyResult, Connection};
use crate::cli::{
    ApplyArgs, Cli, Command, DeleteArgs, DescribeArgs, DescribeKind, DiffArgs, FileArgs, LabelArgs,
    PushArgs, TokenCommand,
};
use crate::describe::{MAX_EVENTS, describe_client_with, describe_group, describe_release};
use crate::diff::item_diff;
use crate::enrollment;
use crate::error::{CliError, EXIT_CHANGES_OR_FAILED, EXIT_OK, EXIT_SERVER};
use crate::get::get;
use crate::labels::{label_patch, parse_label_args};
use crate::manifest::{
    DecodedObject, LocalArtifact, ManifestError, ManifestFile, collect_files, decode_files,
    map_server_error, prepare_artifacts, sha256_file,
};
use crate::output::{Style, one_line, print_stderr, terminal_safe, to_yaml};
use crate::rollout::{ExpectedRelease, RolloutState, awaiting_source_sync, rollout_state};
use crate::rollout_commands;
use crate::sign::read_signature_beside;
use crate::sources::fetch_sources;
use crate::views::reference;

/// How often `get --watch` polls.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// How often rollouts are polled while waiting for them.
pub const ROLLOUT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What every command can use: the connection, standard input and output, and styles.
pub struct Context<'a> {
    /// Server and token.
    pub connection: Connection,
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard input, for `-f -`.
    pub stdin: &'a mut dyn Read,
    /// Decoration of standard output.
    pub out_style: Style,
    /// Decoration of standard error.
    pub err_style: Style,
    /// Whether progress bars may be drawn (standard error is a terminal).
    pub progress_bars: bool,
}

impl Context<'_> {
    /// A client of the controller's API.
    pub(crate) fn client(&self) -> Result<ApiClient, CliError> {
        Ok(ApiClient::new(self.connection.clone())?)
    }

    fn warn(&self, message: &str) {
        print_stderr(self.err_style, &self.err_style.yellow("warning:"), message);
    }

    fn report(&self, error: &dyn std::fmt::Display) {
        print_stderr(
            self.err_style,
            &self.err_style.error("error:"),
            &error.to_string(),
        );
    }

    /// A line on standard error without a prefix (notes, progress of uploads).
    pub fn note(&self, message: &str) {
        print_stderr(self.err_style, "", message);
    }
}

/// Runs a command; the result is the exit code, or the error to print.
pub fn run(cli: Cli, context: &mut Context<'_>) -> Result<u8, CliError> {
    let settings = crate::contexts::Settings::from_cli(&cli);
    match cli.command {
        Command::Config(command) => crate::contexts::run(&settings, &command, context.out),
        Command::Apply(args) => apply(context, &args),
        Command::Diff(args) => diff(context, &args),
        Command::Get(args) => get(context, &args),
        Command::Describe(args) => describe(context, &args),
        Command::Delete(args) => delete(context, &args),
        Command::Label(args) => label(context, &args),
        Command::Push(args) => push(context, &args),
        Command::Sign(args) => crate::sign::run(&args).map(|()| EXIT_OK),
        Command::Rollout(command) => rollout_commands::run(context, &command),
        Command::Run(args) => crate::run_commands::run(context, &args),
        Command::Reboot(args) => crate::run_commands::power(context, TaskAction::Reboot, &args),
        Command::Shutdown(args) => crate::run_commands::power(context, TaskAction::Shutdown, &args),
        Command::Wake(args) => crate::run_commands::power(context, TaskAction::Wake, &args),
        Command::Logs(args) => crate::run_commands::logs(context, &args),
        Command::Credential(command) => crate::credentials::run(context, &command),
        Command::Token(TokenCommand::Create(args)) => enrollment::token_create(context, &args),
        Command::Token(TokenCommand::List(args)) => enrollment::token_list(context, &args),
        Command::Token(TokenCommand::Revoke(args)) => enrollment::token_revoke(context, &args),
        Command::Approve(args) => enrollment::approve(context, &args),
        Command::Deny(args) => enrollment::deny(context, &args),
        Command::Decommission(args) => enrollment::decommission(context, &args),
        Command::Allow(args) => enrollment::allow(context, &args),
        Command::Completion(args) => {
            clap_complete::generate(args.shell, &mut Cli::command(), "tcadm", context.out);
            Ok(EXIT_OK)
        }
        Command::Version(args) => version(context, args.client),
    }
}

// ---------------------------------------------------------------------------------------------
// apply and diff

/// Manifests read, decoded and prepared for the apply call: local zips hashed (their digests in
/// the manifests) and, for a real apply, uploaded.
struct Prepared {
    files: Vec<ManifestFile>,
    decoded: Vec<DecodedObject>,
}

fn read_manifests(
    context: &mut Context<'_>,
    args: &FileArgs,
    upload: bool,
) -> Result<Prepared, CliError> {
    let mut files = collect_files(&args.filenames, args.recursive, context.stdin)?;
    let decoded = decode_files(&files)?;
    if decoded.is_empty() {
        return Err(ManifestError::NoObjects(args.filenames.join(", ")).into());
    }
    let artifacts = prepare_artifacts(&mut files, &decoded)?;
    if upload && !artifacts.is_empty() {
        upload_artifacts(context, &artifacts)?;
    }
    Ok(Prepared { files, decoded })
}

/// Uploads each local zip the controller does not have yet.
fn upload_artifacts(context: &Context<'_>, artifacts: &[LocalArtifact]) -> Result<(), CliError> {
    let client = context.client()?;
    let mut done = BTreeSet::new();
    for artifact in artifacts {
        if !done.insert(artifact.sha256.clone()) || client.blob_exists(&artifact.sha256)? {
            continue;
        }
        let info = match &artifact.packed {
            Some(bytes) => client.upload_blob_bytes(bytes.clone(), &artifact.sha256)?,
            None => client.upload_blob(&artifact.path, &artifact.sha256)?,
        };
        if info.sha256 != artifact.sha256 {
            return Err(ApiError::Protocol {
                url: format!("{}/blobs", client.server()),
                message: format!(
                    "uploaded {} as sha256 {}, but the controller stored {}",
                    artifact.path.display(),
                    artifact.sha256,
                    info.sha256
                ),
            }
            .into());
        }
        context.note(&format!(
            "{}: uploaded {} ({}, sha256 {})",
            artifact.release,
            artifact.path.display(),
            crate::format::human_size(artifact.size),
            artifact.sha256
        ));
    }
    Ok(())
}

fn send_apply(
    context: &Context<'_>,
    prepared: &Prepared,
    options: &ApplyOptions,
) -> Result<ApplyResult, CliError> {
    let client = context.client()?;
    let bodies: Vec<_> = prepared.files.iter().map(ManifestFile::body).collect();
    client
        .apply(&bodies, options)
        .map_err(|error| map_server_error(error, &prepared.files).into())
}

fn apply(context: &mut Context<'_>, args: &ApplyArgs) -> Result<u8, CliError> {
    // A dry run writes nothing, not even blobs: the controller checks the hashed digests.
    let prepared = read_manifests(context, &args.files, !args.dry_run)?;
    let options = ApplyOptions {
        dry_run: args.dry_run,
        force: args.force,
        prune: args.prune,
        field_manager: args.field_manager.clone().unwrap_or_default(),
    };
    let result = send_apply(context, &prepared, &options)?;
    let suffix = if result.dry_run || args.dry_run {
        " (dry run)"
    } else {
        ""
    };
    for item in &result.items {
        writeln!(
            context.out,
            "{} {}{suffix}",
            item.reference(),
            context.out_style.action(&item.action)
        )?;
    }
    for prune in &result.pending_prunes {
        writeln!(
            context.out,
            "{} prune deferred: still assigned to {} client(s), pruned once none runs it{suffix}",
            prune.reference(),
            prune.clients
        )?;
    }
    if result.pending_prunes.is_empty() {
        // A controller that lists deferred prunes only as sentences.
        for note in &result.deferred {
            context.note(&format!("note: {note}"));
        }
    }
    for warning in &result.warnings {
        context.warn(warning);
    }
    if args.wait {
        return wait_for_rollouts(context, &result, &prepared.decoded, args.timeout);
    }
    Ok(EXIT_OK)
}

fn diff(context: &mut Context<'_>, args: &DiffArgs) -> Result<u8, CliError> {
    // Nothing is uploaded: the dry run accepts the digests of local zips not uploaded yet.
    let prepared = read_manifests(context, &args.files, false)?;
    let options = ApplyOptions {
        dry_run: true,
        force: args.force,
        prune: args.prune,
        field_manager: args.field_manager.clone().unwrap_or_default(),
    };
    let result = send_apply(context, &prepared, &options)?;
    let mut changed = false;
    for item in &result.items {
        if let Some(text) = item_diff(item) {
            changed = true;
            write!(context.out, "{}", context.out_style.diff(&text))?;
        }
    }
    // Prunes an apply would defer are deletions all the same, only later.
    for prune in &result.pending_prunes {
        let item = crate::api::ApplyItem {
            kind: prune.kind.clone(),
            name: prune.name.clone(),
            action: "pruned".into(),
            object: None,
            existing: prune.object.clone(),
        };
        if let Some(text) = item_diff(&item) {
            changed = true;
            write!(context.out, "{}", context.out_style.diff(&text))?;
            context.note(&format!(
                "note: {} is still assigned to {} client(s); apply --prune deletes it once none runs it",
                prune.reference(),
                prune.clients
            ));
        }
    }
    Ok(if changed {
        EXIT_CHANGES_OR_FAILED
    } else {
        EXIT_OK
    })
}

// ---------------------------------------------------------------------------------------------
// waiting for rollouts

/// Shows rollout progress: bars on a terminal, otherwise one line whenever the counts change.
struct RolloutDisplay {
    bars: Option<(MultiProgress, BTreeMap<String, [ProgressBar; 3]>)>,
    last_line: BTreeMap<String, String>,
}

impl RolloutDisplay {
    fn new(names: &[String], progress_bars: bool) -> Self {
        let bars = progress_bars.then(|| {
            let multi = MultiProgress::new();
            let width = names.iter().map(String::len).max().unwrap_or(0);
            let style =
                ProgressStyle::with_template(&format!("{{prefix:{width}}}  {{bar:30}}  {{msg}}"))
                    .expect("the progress template is valid")
                    .progress_chars("=> ");
            let mut groups = BTreeMap::new();
            for name in names {
                let make = |prefix: &str| {
                    let bar = multi.add(ProgressBar::new(1));
                    bar.set_style(style.clone());
                    bar.set_prefix(one_line(prefix).into_owned());
                    bar
                };
                groups.insert(name.clone(), [make(name), make(""), make("")]);
            }
            (multi, groups)
        });
        RolloutDisplay {
            bars,
            last_line: BTreeMap::new(),
        }
    }

    /// Shows the state of one group; a line goes to `out` when a rollout in progress changed.
    fn show(
        &mut self,
        out: &mut dyn Write,
        name: &str,
        group: &ClientGroup,
        state: &RolloutState,
    ) -> io::Result<()> {
        let status = group.status.clone().unwrap_or_default();
        if let Some((_, groups)) = &self.bars {
            if let Some(bars) = groups.get(name) {
                let counts = [
                    ("updated", status.updated),
                    ("ready", status.ready),
                    ("failed", status.failed),
                ];
                for (bar, (label, value)) in bars.iter().zip(counts) {
                    // An empty bar for a group without members, rather than a full one.
                    bar.set_message(format!("{value}/{} {label}", status.desired));
                    bar.set_length(u64::from(status.desired.max(1)));
                    bar.set_position(u64::from(value));
                }
            }
            return Ok(());
        }
        let RolloutState::Progressing(text) = state else {
            return Ok(());
        };
        let paused = crate::progressive::pause_note(group);
        let line = format!("Waiting for clientgroup \"{name}\" rollout to finish: {text}{paused}");
        if self.last_line.get(name) != Some(&line) {
            // The text carries the group's conditions, with messages from clients.
            writeln!(out, "{}", terminal_safe(&line))?;
            self.last_line.insert(name.to_string(), line);
        }
        Ok(())
    }

    /// Shows a wait that is not yet about the group's members (line mode only).
    fn note(&mut self, out: &mut dyn Write, name: &str, text: &str) -> io::Result<()> {
        if self.bars.is_some() {
            return Ok(());
        }
        let line = format!("Waiting for clientgroup \"{name}\" rollout to finish: {text}");
        if self.last_line.get(name) != Some(&line) {
            // The text carries the group's conditions, with messages from clients.
            writeln!(out, "{}", terminal_safe(&line))?;
            self.last_line.insert(name.to_string(), line);
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some((multi, groups)) = self.bars.take() {
            for bars in groups.values() {
                for bar in bars {
                    bar.finish_and_clear();
                }
            }
            let _ = multi.clear();
        }
    }
}

/// The groups an apply affects: its groups, and the groups that require the package of a new
/// release with a version it satisfies.
fn affected_groups(
    client: &ApiClient,
    result: &ApplyResult,
    decoded: &[DecodedObject],
) -> Result<(Vec<String>, Vec<ExpectedRelease>), CliError> {
    let mut names: BTreeSet<String> = result
        .items
        .iter()
        .filter(|i| i.kind == "ClientGroup" && i.action != "pruned")
        .map(|i| i.name.clone())
        .collect();
    let expected: Vec<ExpectedRelease> = result
        .items
        .iter()
        .filter(|i| {
            i.kind == "PackageRelease" && (i.action == "created" || i.action == "configured")
        })
        .filter_map(|i| {
            decoded.iter().find_map(|d| match &d.object {
                Object::PackageRelease(release) if release.metadata.name == i.name => {
                    Some(ExpectedRelease {
                        package: release.spec.package.clone(),
                        version: release.spec.semver()?,
                    })
                }
                _ => None,
            })
        })
        .collect();
    if !expected.is_empty() {
        let groups: Vec<ClientGroup> = client.list_typed(Kind::ClientGroup, None)?;
        for group in groups {
            let affected = group.spec.packages.iter().any(|requirement| {
                expected.iter().any(|release| {
                    release.package == requirement.name
                        && requirement
                            .version_req()
                            .is_ok_and(|req| req.matches(&release.version))
                })
            });
            if affected {
                names.insert(group.metadata.name.clone());
            }
        }
    }
    Ok((names.into_iter().collect(), expected))
}

fn wait_for_rollouts(
    context: &mut Context<'_>,
    result: &ApplyResult,
    decoded: &[DecodedObject],
    timeout: Duration,
) -> Result<u8, CliError> {
    let client = context.client()?;
    let (names, expected) = affected_groups(&client, result, decoded)?;
    if names.is_empty() {
        return Ok(EXIT_OK);
    }
    let mut stderr = io::stderr();
    let done = follow_rollouts(context, &client, &names, &expected, timeout, &mut stderr)?;
    for name in done {
        writeln!(context.out, "clientgroup/{name} rolled out")?;
    }
    Ok(EXIT_OK)
}

/// Polls the groups until every one is complete (returns their names), one fails, or the time is
/// up (both errors).
pub(crate) fn follow_rollouts(
    context: &Context<'_>,
    client: &ApiClient,
    names: &[String],
    expected: &[ExpectedRelease],
    timeout: Duration,
    lines: &mut dyn Write,
) -> Result<Vec<String>, CliError> {
    let deadline = Instant::now() + timeout;
    let mut display = RolloutDisplay::new(names, context.progress_bars);
    let outcome = loop {
        let mut waiting = vec![];
        let mut failure = None;
        let sources = fetch_sources(client);
        for name in names {
            if let Some(text) = awaiting_source_sync(name, &sources) {
                display.note(lines, name, &text)?;
                waiting.push(format!("clientgroup/{name} ({text})"));
                continue;
            }
            let group: ClientGroup = match client.get_typed(Kind::ClientGroup, name) {
                Ok(group) => group,
                Err(error) => {
                    failure = Some(CliError::from(error));
                    break;
                }
            };
            let state = rollout_state(&group, expected);
            display.show(lines, name, &group, &state)?;
            match state {
                RolloutState::Complete => {}
                RolloutState::Progressing(text) => {
                    waiting.push(format!("clientgroup/{name} ({text})"))
                }
                RolloutState::Failed(message) => {
                    failure = Some(CliError::Failed(format!(
                        "clientgroup/{name} rollout failed: {message}"
                    )));
                    break;
                }
                RolloutState::Stalled(message) => {
                    failure = Some(CliError::Failed(format!(
                        "clientgroup/{name} rollout stalled: {message}"
                    )));
                    break;
                }
            }
        }
        if let Some(error) = failure {
            break Err(error);
        }
        if waiting.is_empty() {
            break Ok(names.to_vec());
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(CliError::Failed(format!(
                "timed out after {} waiting for {}",
                humantime::format_duration(timeout),
                waiting.join(", ")
            )));
        }
        thread::sleep(ROLLOUT_POLL_INTERVAL.min(deadline - now));
    };
    display.finish();
    outcome
}

// ---------------------------------------------------------------------------------------------
// describe, delete, label

fn describe(context: &mut Context<'_>, args: &DescribeArgs) -> Result<u8, CliError> {
    let client = context.client()?;
    let now = Timestamp::now();
    let name = args.name.as_str();
    let kind = match args.kind {
        DescribeKind::Object(kind) => kind,
        DescribeKind::Source => return crate::sources::describe(context, name),
    };
    let text = match kind {
        Kind::Client => {
            let object: Client = client.get_typed(Kind::Client, name)?;
            let events = client.events(Some(Kind::Client), Some(name), None, Some(MAX_EVENTS))?;
            // A controller that predates tasks has no such route: no section then.
            let results = match client.client_tasks(name) {
                Err(error) if error.is_not_found() => Vec::new(),
                other => other?,
            };
            let tasks = crate::tasks::client_tasks_table(&results, now);
            describe_client_with(&object, &[("Tasks", &tasks)], &events, now)
        }
        Kind::ClientGroup => {
            let group: ClientGroup = client.get_typed(Kind::ClientGroup, name)?;
            let selector = group.spec.selector.to_string();
            let selector = (!selector.is_empty()).then_some(selector.as_str());
            let members: Vec<Client> = client.list_typed(Kind::Client, selector)?;
            let events =
                client.events(Some(Kind::ClientGroup), Some(name), None, Some(MAX_EVENTS))?;
            describe_group(&group, &members, &events, now)
        }
        Kind::PackageRelease => {
            let release: PackageRelease = client.get_typed(Kind::PackageRelease, name)?;
            let groups: Vec<ClientGroup> = client.list_typed(Kind::ClientGroup, None)?;
            let events = client.events(
                Some(Kind::PackageRelease),
                Some(name),
                None,
                Some(MAX_EVENTS),
            )?;
            describe_release(&release, &groups, &events, now)
        }
        Kind::Task => {
            let task: tc_api::Task = client.get_typed(Kind::Task, name)?;
            let events = client.events(Some(Kind::Task), Some(name), None, Some(MAX_EVENTS))?;
            let sample = crate::run_commands::newest_run_sample(&client, &task)?;
            crate::tasks::describe_task(&task, &sample, &events, now)
        }
    };
    write!(context.out, "{text}")?;
    Ok(EXIT_OK)
}

fn delete(context: &mut Context<'_>, args: &DeleteArgs) -> Result<u8, CliError> {
    let targets: Vec<(Kind, String)> = if args.filenames.is_empty() {
        let kind = args
            .kind
            .ok_or_else(|| CliError::Usage("give KIND NAME... or -f FILE".into()))?;
        args.names.iter().map(|n| (kind, n.clone())).collect()
    } else {
        let files = collect_files(&args.filenames, args.recursive, context.stdin)?;
        decode_files(&files)?
            .iter()
            .map(|d| (d.object.kind(), d.object.name().to_string()))
            .collect()
    };
    let client = context.client()?;
    let mut failures = 0;
    for (kind, name) in targets {
        match client.delete_with_warnings(kind, &name) {
            Ok((_, warnings)) => {
                writeln!(context.out, "{} deleted", reference(kind.as_str(), &name))?;
                for warning in warnings {
                    context.warn(&warning);
                }
            }
            Err(error) if error.is_not_found() && args.ignore_not_found => {}
            Err(error @ (ApiError::Unreachable { .. } | ApiError::Unauthorized { .. })) => {
                return Err(error.into());
            }
            Err(error) => {
                context.report(&error);
                failures += 1;
            }
        }
    }
    if failures > 0 {
        return Err(CliError::Reported {
            count: failures,
            code: EXIT_SERVER,
        });
    }
    Ok(EXIT_OK)
}

fn label(context: &mut Context<'_>, args: &LabelArgs) -> Result<u8, CliError> {
    if args.kind != Kind::Client {
        return Err(CliError::Usage(format!(
            "labels of a {} come from its manifest: edit metadata.labels there and apply it",
            args.kind.as_str().to_ascii_lowercase()
        )));
    }
    let changes = parse_label_args(&args.labels).map_err(|e| CliError::Usage(e.to_string()))?;
    let client = context.client()?;
    client.patch_client(&args.name, &label_patch(&changes))?;
    writeln!(context.out, "client/{} labeled", args.name)?;
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------------
// push, version

/// Splits a zip's file name into package and version: `kiosk-browser-1.4.2.zip` gives
/// `kiosk-browser` and `1.4.2`.
pub fn guess_package_and_version(path: &Path) -> Option<(String, String)> {
    let stem = path.file_name()?.to_str()?;
    let stem = stem
        .strip_suffix(".zip")
        .or_else(|| stem.strip_suffix(".ZIP"))
        .unwrap_or(stem);
    stem.match_indices('-').find_map(|(index, _)| {
        let (package, version) = (&stem[..index], &stem[index + 1..]);
        let parsed = semver::Version::parse(version).ok()?;
        (!package.is_empty()).then(|| (package.to_string(), parsed.to_string()))
    })
}

/// A release name for `package` at `version`: `kiosk-browser-1.4.2` (build metadata `+` becomes
/// `-`, and upper case is lowered, so the name is valid).
pub fn release_name(package: &str, version: &str) -> String {
    format!("{package}-{version}")
        .to_ascii_lowercase()
        .replace('+', "-")
}

fn push(context: &mut Context<'_>, args: &PushArgs) -> Result<u8, CliError> {
    let guess = guess_package_and_version(&args.file);
    let package = args
        .package
        .clone()
        .or_else(|| guess.as_ref().map(|g| g.0.clone()));
    let version = args
        .release_version
        .clone()
        .or_else(|| guess.as_ref().map(|g| g.1.clone()));
    let (Some(package), Some(version)) = (package, version) else {
        return Err(CliError::Usage(format!(
            "cannot tell package and version from the file name `{}`; pass --package and --version",
            args.file.display()
        )));
    };
    if !args.file.is_file() {
        return Err(CliError::Usage(format!(
            "{} is not a file",
            args.file.display()
        )));
    }
    let (sha256, size) = sha256_file(&args.file).map_err(|source| ManifestError::Read {
        path: args.file.display().to_string(),
        source,
    })?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| release_name(&package, &version));
    let release = PackageRelease {
        api_version: API_VERSION.into(),
        kind: Kind::PackageRelease.as_str().into(),
        metadata: ObjectMeta::named(name),
        spec: PackageReleaseSpec {
            package,
            version,
            artifact: Artifact {
                path: None,
                url: None,
                sha256: Some(sha256.clone()),
                signature: read_signature_beside(&args.file)?,
            },
            hooks: Default::default(),
        },
        status: None,
    };
    Object::PackageRelease(release.clone())
        .validate()
        .map_err(|errors| CliError::Usage(format!("the release would be invalid: {errors}")))?;
    let client = context.client()?;
    let had_it = client.blob_exists(&sha256)?;
    if !had_it {
        let info = client.upload_blob(&args.file, &sha256)?;
        if info.sha256 != sha256 {
            return Err(ApiError::Protocol {
                url: format!("{}/blobs", client.server()),
                message: format!("the controller stored sha256 {}, not {sha256}", info.sha256),
            }
            .into());
        }
    }
    let file_name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let note = if had_it {
        "already on the controller"
    } else {
        "uploaded"
    };
    writeln!(
        context.out,
        "# {file_name}: {note}, sha256 {sha256}, {size} bytes.\n\
         # Apply with `tcadm apply -f -`, or paste into your manifests."
    )?;
    write!(context.out, "{}", to_yaml(&release))?;
    Ok(EXIT_OK)
}

fn version(context: &mut Context<'_>, client_only: bool) -> Result<u8, CliError> {
    writeln!(context.out, "Client Version: {}", env!("CARGO_PKG_VERSION"))?;
    if client_only {
        return Ok(EXIT_OK);
    }
    match context.client().and_then(|c| Ok(c.server_version()?)) {
        Ok(version) => writeln!(context.out, "Server Version: {version}")?,
        Err(error) => context.warn(&format!("no server version: {error}")),
    }
    Ok(EXIT_OK)
}

/// Whether progress bars can be drawn: standard error is a terminal.
pub fn progress_bars_possible() -> bool {
    io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_and_version_come_from_the_file_name() {
        let guess = |name: &str| guess_package_and_version(Path::new(name));
        assert_eq!(
            guess("dist/kiosk-browser-1.4.2.zip"),
            Some(("kiosk-browser".into(), "1.4.2".into()))
        );
        assert_eq!(
            guess("vpn-profile-2.0.1-rc.1.zip"),
            Some(("vpn-profile".into(), "2.0.1-rc.1".into()))
        );
        assert_eq!(guess("tool-1.0.zip"), None);
        assert_eq!(guess("1.0.0.zip"), None);
        assert_eq!(guess("-1.0.0.zip"), None);
    }

    #[test]
    fn release_names_are_valid_object_names() {
        assert_eq!(release_name("kiosk", "1.4.2"), "kiosk-1.4.2");
        assert_eq!(
            release_name("kiosk", "1.4.2+Build.5"),
            "kiosk-1.4.2-build.5"
        );
        assert!(tc_api::validate::is_object_name(&release_name(
            "kiosk",
            "1.0.0-rc.1+b7"
        )));
    }
}
