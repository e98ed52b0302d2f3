//! Command-line arguments, as typed and validated by clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tc_api::Kind;

/// Help text listing the exit codes.
pub const EXIT_CODES_HELP: &str = "\
Connection:
  Each setting comes from the first of: its flag, its environment variable, the context
  (--context/TCADM_CONTEXT, else currentContext of the config file), the local defaults.
  --server/TCADM_SERVER; --token/TCADM_TOKEN or --token-file/TCADM_TOKEN_FILE;
  --certificate-authority/TCADM_CA_FILE or --ca-cert-hash/TCADM_CA_CERT_HASH.
  With no server from any of them, tcadm talks to https://127.0.0.1:7130 with the token in
  ./data/admin.token (the local quickstart); a local controller (localhost or a loopback
  address) with no CA given is verified with ./data/pki/ca.crt.

Exit codes:
  0  success
  1  `diff` found changes; `apply --wait` or `rollout status` saw a failed rollout or timed out;
     `run`, `reboot`, `shutdown`, `wake` or `logs`: a client failed, expired or was interrupted
  2  usage error: bad arguments, or manifests that cannot be read or decoded
  3  server, network or authentication error";

/// Manage a thinfleet fleet of thin clients declaratively, kubectl style.
#[derive(Debug, Parser)]
#[command(name = "tcadm", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Controller URL [default: the context's, else https://127.0.0.1:7130].
    #[arg(long, global = true, env = "TCADM_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Admin bearer token [default: from --token-file or the context's token file, else the
    /// content of ./data/admin.token with the default server].
    #[arg(
        long,
        global = true,
        env = "TCADM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// PEM file of the CA that signs the controller's certificate [default for a local
    /// controller: ./data/pki/ca.crt].
    #[arg(
        long,
        global = true,
        env = "TCADM_CA_FILE",
        value_name = "FILE",
        conflicts_with = "ca_cert_hash"
    )]
    pub certificate_authority: Option<PathBuf>,
    /// Fingerprint of the controller's CA, `sha256:<hex>` (printed by the controller at start).
    #[arg(
        long,
        global = true,
        env = "TCADM_CA_CERT_HASH",
        value_name = "sha256:HEX",
        value_parser = parse_ca_cert_hash
    )]
    pub ca_cert_hash: Option<tc_trust::CaCertHash>,
    /// File holding the admin bearer token (used when no --token is given), so that no token
    /// appears on a command line.
    #[arg(long, global = true, env = "TCADM_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The config file of contexts [default: $XDG_CONFIG_HOME/thinfleet/config.yaml, else
    /// ~/.config/thinfleet/config.yaml].
    #[arg(long, global = true, env = "TCADM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The context of the config file to use [default: its currentContext].
    #[arg(long, global = true, env = "TCADM_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Which of the options above were typed on the command line (filled in by `main`).
    #[arg(skip)]
    pub on_command_line: OnCommandLine,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn parse_ca_cert_hash(text: &str) -> Result<tc_trust::CaCertHash, String> {
    text.parse()
        .map_err(|error: tc_trust::TrustError| error.to_string())
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests, atomically.
    Apply(ApplyArgs),
    /// Show what `apply` would change, as a unified diff (exit 1 when there are changes).
    Diff(DiffArgs),
    /// List objects or show one, as a table, YAML, JSON or names.
    Get(GetArgs),
    /// Show everything about one object, with its recent events.
    Describe(DescribeArgs),
    /// Delete objects named in manifests or on the command line.
    Delete(DeleteArgs),
    /// Set (`key=value`) or remove (`key-`) admin labels of a client.
    Label(LabelArgs),
    /// Upload a package zip and print a PackageRelease for it.
    Push(PushArgs),
    /// Sign a package zip with a minisign secret key (writes ZIP.minisig), or make a key pair.
    Sign(SignArgs),
    /// Follow the rollout of a client group.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Run a command on clients and print each client's result as it arrives. Role operator.
    Run(crate::task_cli::RunArgs),
    /// Reboot clients; each succeeds when it is back on a new boot. Role operator.
    Reboot(crate::task_cli::PowerArgs),
    /// Power clients off. Role operator.
    Shutdown(crate::task_cli::PowerArgs),
    /// Wake clients with Wake-on-LAN, sent by an online neighbour on their segment. Role operator.
    Wake(crate::task_cli::PowerArgs),
    /// Have a client send its recent agent log and journal, and print them. Role operator.
    Logs(crate::task_cli::LogsArgs),
    /// Manage bootstrap tokens for enrolling agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage named admin credentials and their roles (viewer, operator, admin).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Approve a pending client: as a client of its own, or with --replace as the new key of an
    /// existing client (a re-imaged or replaced machine).
    Approve(ApproveArgs),
    /// Deny a pending client: it is deleted and its key (and its machine id, unless another
    /// client holds it) refused until `tcadm allow machine`.
    Deny(ClientArgs),
    /// Tell a client's agent to remove every package thinfleet installed and stop; the client is
    /// then deleted and its machine id refused until `tcadm allow machine`.
    Decommission(ClientArgs),
    /// Let a refused machine id (decommissioned, denied, or a deleted client's) enrol again.
    Allow(AllowArgs),
    /// Show and edit the config file's contexts (server, CA and token file by name).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    Completion(CompletionArgs),
    /// Print the client version, and the server version when reachable.
    Version(VersionArgs),
}

/// Manifest sources.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct FileArgs {
    /// A manifest file, a directory of `*.yaml`, `*.yml` and `*.json` files, or `-` for standard
    /// input; may be repeated.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub filenames: Vec<String>,
    /// Also read the subdirectories of directories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The manifests.
    #[command(flatten)]
    pub files: FileArgs,
    /// Validate and report without writing anything (local zips are hashed, not uploaded).
    #[arg(long)]
    pub dry_run: bool,
    /// Delete objects applied earlier by the same manager that are absent from these manifests.
    #[arg(long)]
    pub prune: bool,
    /// Take over objects managed by someone else.
    #[arg(long)]
    pub force: bool,
    /// Wait until the affected client groups are rolled out (or failed).
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// How long `--wait` waits (`30s`, `5m`, `1h`).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, requires = "wait")]
    pub timeout: Duration,
    /// The manager recorded on the objects; `--prune` deletes only what this manager applied
    /// [default: the credential, `credential:<name>`, or `admin` for the break-glass token].
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub field_manager: Option<String>,
}

/// Arguments of `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The manifests.
    #[command(flatten)]
    pub files: FileArgs,
    /// Include the objects an `apply --prune` would delete.
    #[arg(long)]
    pub prune: bool,
    /// Diff as if taking over objects managed by someone else.
    #[arg(long)]
    pub force: bool,
    /// The manager the apply would record [default: the credential's, as for `apply`].
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub field_manager: Option<String>,
}

/// What `get` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Objects of a kind.
    Kind(Kind),
    /// Events.
    Events,
    /// Watched manifest directories.
    Sources,
    /// The audit trail.
    Audit,
}

/// True for the names of watched manifest directories as a resource: `sources`, `source`.
fn is_source_word(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "sources" | "source" | "manifestsource" | "manifestsources"
    )
}

/// Parses a resource name: a kind name or short name (`cg`, `pr`, `client`), `events` or
/// `sources`.
pub fn parse_resource(text: &str) -> Result<Resource, String> {
    if let Some(kind) = Kind::parse(text) {
        return Ok(Resource::Kind(kind));
    }
    if is_source_word(text) {
        return Ok(Resource::Sources);
    }
    match text.to_ascii_lowercase().as_str() {
        "events" | "event" | "ev" => Ok(Resource::Events),
        "audit" => Ok(Resource::Audit),
        _ => Err(format!(
            "unknown resource `{text}`; use clients, clientgroups (cg), packagereleases (pr), tasks, events, sources or audit"
        )),
    }
}

/// What `describe` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescribeKind {
    /// An object of a kind.
    Object(Kind),
    /// A watched manifest directory.
    Source,
}

/// Parses what `describe` takes: a kind or short name, or `source`.
pub fn parse_describe_kind(text: &str) -> Result<DescribeKind, String> {
    if is_source_word(text) {
        return Ok(DescribeKind::Source);
    }
    Kind::parse(text).map(DescribeKind::Object).ok_or_else(|| {
        format!(
            "unknown kind `{text}`; use client, clientgroup (cg), packagerelease (pr), task or source"
        )
    })
}

/// What `get events --for` names: an object, or a watched directory (`source/NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSubject {
    /// The subject kind as events name it (`Client`, `ClientGroup`, `PackageRelease`,
    /// `ManifestSource`).
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// Subjects of events and audit entries that are not objects of a kind: the word (singular,
/// lower case) and the subject kind as they name it.
const OTHER_SUBJECTS: &[(&str, &str)] = &[
    ("source", "ManifestSource"),
    ("credential", "Credential"),
    ("bootstraptoken", "BootstrapToken"),
    ("token", "BootstrapToken"),
    ("blockedmachine", "BlockedMachine"),
    ("machine", "BlockedMachine"),
    ("blob", "Blob"),
];

/// Parses `KIND/NAME` for events and audit entries, where KIND may also be `source`,
/// `credential`, `token` (a bootstrap token), `machine` (a blocked machine) or `blob`.
pub fn parse_event_subject(text: &str) -> Result<EventSubject, String> {
    if let Some((kind, name)) = text.split_once('/') {
        let word = kind.to_ascii_lowercase();
        let word = word.strip_suffix('s').unwrap_or(&word);
        let other = if is_source_word(kind) {
            Some("ManifestSource")
        } else {
            OTHER_SUBJECTS
                .iter()
                .find(|(w, _)| *w == word)
                .map(|(_, subject)| *subject)
        };
        if let Some(subject) = other {
            if name.is_empty() {
                return Err(format!("`{text}` has no name after the `/`"));
            }
            return Ok(EventSubject {
                kind: subject.into(),
                name: name.to_string(),
            });
        }
    }
    let (kind, name) = parse_object_ref(text).map_err(|error| {
        format!(
            "{error}; `source/NAME` names a watched directory, and credential/, token/, \
             machine/ and blob/ the other subjects of events and audit entries"
        )
    })?;
    Ok(EventSubject {
        kind: kind.as_str().to_string(),
        name,
    })
}

/// Parses a kind name or short name.
pub fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::parse(text).ok_or_else(|| {
        format!("unknown kind `{text}`; use client, clientgroup (cg), packagerelease (pr) or task")
    })
}

/// Parses `KIND/NAME`.
pub fn parse_object_ref(text: &str) -> Result<(Kind, String), String> {
    let (kind, name) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not KIND/NAME (for example client/kiosk-1)"))?;
    if name.is_empty() {
        return Err(format!("`{text}` has no name after the `/`"));
    }
    Ok((parse_kind(kind)?, name.to_string()))
}

/// Parses a duration such as `30s`, `5m` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("`{text}` is not a duration such as 30s, 5m or 1h: {error}"))
}

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The table with more columns.
    Wide,
    /// YAML that `apply -f -` accepts back.
    Yaml,
    /// JSON as the API returns it.
    Json,
    /// `kind/name`, one per line.
    Name,
    /// One JSON document per line (`get audit`: the export).
    Jsonl,
}

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// clients, clientgroups (cg), packagereleases (pr), tasks, events, sources or audit.
    #[arg(value_name = "RESOURCE", value_parser = parse_resource)]
    pub resource: Resource,
    /// Show only this object.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Label selector, as in kubectl (`site=berlin,tier in (a,b),!legacy`); agent versions also
    /// compare by semver (`thinfleet.io/agent-version<0.3.0`, `<=`, `>`, `>=`).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format [default: a table].
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// Keep polling every 2 seconds and print what changed, until interrupted.
    #[arg(short = 'w', long = "watch")]
    pub watch: bool,
    /// For events: only those of this object (`client/kiosk-1`) or watched directory
    /// (`source/manifests`).
    #[arg(long = "for", value_name = "KIND/NAME", value_parser = parse_event_subject)]
    pub for_object: Option<EventSubject>,
    /// For audit: only the writes of this credential (`admin` for the break-glass token) or
    /// watched directory (`dir:/srv/manifests`).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// For audit: only this action (apply, delete, label, approve, retry, createCredential, ...).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// For audit: only the newest N entries.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// Arguments of `describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// client, clientgroup (cg), packagerelease (pr), task or source.
    #[arg(value_name = "KIND", value_parser = parse_describe_kind)]
    pub kind: DescribeKind,
    /// The object's name.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Arguments of `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Delete the objects defined in these manifests (files, directories or `-`).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", conflicts_with_all = ["kind", "names"])]
    pub filenames: Vec<String>,
    /// Also read the subdirectories of directories.
    #[arg(short = 'R', long, requires = "filenames")]
    pub recursive: bool,
    /// client, clientgroup (cg), packagerelease (pr) or task.
    #[arg(value_name = "KIND", value_parser = parse_kind, required_unless_present = "filenames")]
    pub kind: Option<Kind>,
    /// Names of the objects to delete.
    #[arg(
        value_name = "NAME",
        requires = "kind",
        required_unless_present = "filenames"
    )]
    pub names: Vec<String>,
    /// Succeed for objects that do not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

/// Arguments of `label`.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Always `client`: labels of groups and releases come from their manifests.
    #[arg(value_name = "KIND", value_parser = parse_kind)]
    pub kind: Kind,
    /// The client's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// `key=value` to set a label, `key-` to remove it.
    #[arg(value_name = "KEY=VALUE|KEY-", required = true)]
    pub labels: Vec<String>,
}

/// Arguments of `sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The minisign secret key (from `tcadm sign --generate-key` or `minisign -G`).
    #[arg(long, value_name = "FILE", conflicts_with = "generate_key")]
    pub key: Option<PathBuf>,
    /// A file holding the password of an encrypted secret key (else `TCADM_SIGN_PASSWORD`;
    /// unencrypted keys need neither).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Write a new unencrypted key pair NAME.key (secret) and NAME.pub instead of signing.
    #[arg(long, value_name = "NAME")]
    pub generate_key: Option<PathBuf>,
    /// The zip to sign; the signature goes to ZIP.minisig.
    #[arg(value_name = "ZIP", required_unless_present = "generate_key")]
    pub zip: Option<PathBuf>,
}

/// Arguments of `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The package zip.
    #[arg(value_name = "FILE.zip")]
    pub file: PathBuf,
    /// Package name [default: from the file name, `kiosk-browser-1.4.2.zip` gives `kiosk-browser`].
    #[arg(long, value_name = "NAME")]
    pub package: Option<String>,
    /// Release version [default: from the file name, `kiosk-browser-1.4.2.zip` gives `1.4.2`].
    #[arg(long = "version", value_name = "SEMVER")]
    pub release_version: Option<String>,
    /// Name of the PackageRelease [default: PACKAGE-VERSION].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

pub use crate::rollout_cli::{
    RolloutCommand, RolloutHistoryArgs, RolloutStatusArgs, RolloutTargetArgs,
};

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token for enrolling agents: its secret is printed once, on standard
    /// output (the join material with -o yaml|json).
    Create(TokenCreateArgs),
    /// List bootstrap tokens (never their secrets).
    List(TokenListArgs),
    /// Revoke a bootstrap token: enrolments with it are refused (clients it enrolled stay).
    Revoke(TokenRevokeArgs),
}

/// `credential` subcommands.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Create a named credential with a role: its token is printed once, on standard output.
    Create(CredentialCreateArgs),
    /// List credentials (never their tokens).
    List(TokenListArgs),
    /// Revoke a credential: its token is refused from now on.
    Revoke(CredentialNameArgs),
    /// Give a credential a new token (printed once); the old one is refused from now on.
    Rotate(CredentialNameArgs),
}

/// Arguments of `credential create`.
#[derive(Debug, Args)]
pub struct CredentialCreateArgs {
    /// The credential's name (a DNS label, e.g. `helpdesk`); `admin` is the break-glass token.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// What it may do: `viewer` reads, `operator` also labels clients and retries rollouts,
    /// `admin` may do everything.
    #[arg(long, value_name = "ROLE")]
    pub role: tc_api::Role,
    /// How long it can be used, from now and from each rotation (`90d`, `12h`) [default: no
    /// expiry].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires: Option<Duration>,
}

/// A credential named on the command line.
#[derive(Debug, Args)]
pub struct CredentialNameArgs {
    /// The credential's name (`tcadm credential list`).
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Output formats of commands that print one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DocumentFormat {
    /// YAML.
    Yaml,
    /// JSON as the API returns it.
    Json,
}

/// Arguments of `token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The token's name [default: `token-` and characters of its hash].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How long it can be used (`24h`, `7d`) [default: no expiry].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// How many clients it may enrol [default: unlimited].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_uses: Option<u32>,
    /// A label it imposes on every client it enrols (wins over the agent's own); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Clients it enrols wait as Pending until `tcadm approve`.
    #[arg(long)]
    pub require_approval: bool,
    /// Print the whole answer (token, its settings and the join material) instead of the secret.
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Option<DocumentFormat>,
}

/// Arguments of `token list`.
#[derive(Debug, Args)]
pub struct TokenListArgs {
    /// Output format [default: a table].
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Option<DocumentFormat>,
}

/// Arguments of `token revoke`.
#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's name (`tcadm token list`).
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// A client named on the command line (`client NAME`).
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Always `client`.
    #[arg(value_name = "KIND", value_parser = parse_kind)]
    pub kind: Kind,
    /// The client's name.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Arguments of `approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The pending client.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Approve it as the replacement of this client, which takes the new key and keeps its
    /// name, labels and status (the pending client goes).
    #[arg(long, value_name = "OLD")]
    pub replace: Option<String>,
}

/// What `allow` lets in again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AllowTarget {
    /// A machine id.
    Machine,
}

/// Arguments of `allow`.
#[derive(Debug, Args)]
pub struct AllowArgs {
    /// Always `machine`.
    #[arg(value_name = "WHAT")]
    pub target: AllowTarget,
    /// The machine id (as the refusal and `GET .../blockedmachines` name it).
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Arguments of `completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Arguments of `version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print only the client version; do not contact the server.
    #[arg(long)]
    pub client: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::{CommandFactory, FromArgMatches};

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(line.split_whitespace())
    }

    #[test]
    fn config_commands_parse_and_typed_options_are_told_apart() {
        let line = [
            "tcadm",
            "config",
            "set-context",
            "desk",
            "--server",
            "x:1",
            "--token-file",
            "t",
        ];
        let matches = Cli::command().try_get_matches_from(line).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Config(ConfigCommand::SetContext(args)) = &cli.command else {
            panic!("not set-context")
        };
        assert_eq!(args.name, "desk");
        assert_eq!(
            OnCommandLine::from_matches(&matches),
            OnCommandLine {
                server: true,
                token_file: true,
                ..OnCommandLine::default()
            }
        );
        let cli = parse("tcadm --context ops --config c.yaml config use-context ops").unwrap();
        assert_eq!(cli.context.as_deref(), Some("ops"));
        assert!(matches!(
            cli.command,
            Command::Config(ConfigCommand::UseContext(_))
        ));
        assert!(parse("tcadm config get-contexts").is_ok());
        assert!(parse("tcadm config current-context").is_ok());
        assert!(parse("tcadm config set-context").is_err());
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn apply_takes_files_and_flags() {
        let cli = parse("tcadm apply -f a.yaml -f dir -R --prune --wait --timeout 90s").unwrap();
        let Command::Apply(args) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(args.files.filenames, ["a.yaml", "dir"]);
        assert!(args.files.recursive && args.prune && args.wait);
        assert!(!args.dry_run && !args.force);
        assert_eq!(args.timeout, Duration::from_secs(90));
        assert_eq!(args.field_manager, None);
        let cli = parse("tcadm apply -f -").unwrap();
        let Command::Apply(args) = cli.command else {
            panic!("not apply")
        };
        assert!(!args.wait);
        assert_eq!(args.timeout, Duration::from_secs(300));
    }

    #[test]
    fn apply_usage_errors() {
        let kind = |line: &str| parse(line).unwrap_err().kind();
        assert_eq!(kind("tcadm apply"), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind("tcadm apply -f a.yaml --timeout 1m"),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind("tcadm apply -f a.yaml --dry-run --wait"),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind("tcadm apply -f a.yaml --wait --timeout soon"),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn get_understands_short_names_and_formats() {
        let cli = parse("tcadm get cg front-desk -o yaml").unwrap();
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert_eq!(args.resource, Resource::Kind(Kind::ClientGroup));
        assert_eq!(args.name.as_deref(), Some("front-desk"));
        assert_eq!(args.output, Some(OutputFormat::Yaml));

        let cli = parse("tcadm get events --for client/kiosk-1 -w").unwrap();
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert_eq!(args.resource, Resource::Events);
        assert_eq!(
            args.for_object,
            Some(EventSubject {
                kind: "Client".into(),
                name: "kiosk-1".into()
            })
        );
        assert!(args.watch);

        for (text, resource) in [
            ("clients", Resource::Kind(Kind::Client)),
            ("client", Resource::Kind(Kind::Client)),
            ("pr", Resource::Kind(Kind::PackageRelease)),
            ("PackageReleases", Resource::Kind(Kind::PackageRelease)),
            ("event", Resource::Events),
        ] {
            assert_eq!(parse_resource(text), Ok(resource), "{text}");
        }
        assert!(parse_resource("pods").is_err());
        assert_eq!(
            parse("tcadm get pods").unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            parse("tcadm get clients -o table").unwrap_err().kind(),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn delete_takes_files_or_kind_and_names() {
        let cli = parse("tcadm delete cg a b --ignore-not-found").unwrap();
        let Command::Delete(args) = cli.command else {
            panic!("not delete")
        };
        assert_eq!(args.kind, Some(Kind::ClientGroup));
        assert_eq!(args.names, ["a", "b"]);
        assert!(args.ignore_not_found);
        assert!(parse("tcadm delete -f fleet/ -R").is_ok());
        assert!(parse("tcadm delete").is_err());
        assert!(parse("tcadm delete cg").is_err());
        assert!(parse("tcadm delete -f x.yaml cg a").is_err());
    }

    #[test]
    fn connection_flags_are_global() {
        let cli = parse("tcadm get clients --server http://h:1 --token t").unwrap();
        assert_eq!(cli.server.as_deref(), Some("http://h:1"));
        assert_eq!(cli.token.as_deref(), Some("t"));
    }

    #[test]
    fn other_commands_parse() {
        assert!(parse("tcadm label client kiosk-1 rack=7 old-").is_ok());
        assert!(parse("tcadm label client kiosk-1").is_err());
        assert!(parse("tcadm push kiosk-1.0.0.zip --package kiosk --version 1.0.0").is_ok());
        assert!(parse("tcadm rollout status cg front-desk --watch --timeout 10m").is_ok());
        assert!(parse("tcadm rollout retry clientgroup front-desk").is_ok());
        assert!(parse("tcadm token create").is_ok());
        let cli = parse(
            "tcadm token create --name berlin --ttl 24h --max-uses 10 --label site=berlin \
             --label tier=a --require-approval -o yaml",
        )
        .unwrap();
        let Command::Token(TokenCommand::Create(args)) = cli.command else {
            panic!("not token create")
        };
        assert_eq!(args.name.as_deref(), Some("berlin"));
        assert_eq!(args.ttl, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(args.max_uses, Some(10));
        assert_eq!(args.labels, ["site=berlin", "tier=a"]);
        assert!(args.require_approval);
        assert!(parse("tcadm token create --max-uses 0").is_err());
        assert!(parse("tcadm token list").is_ok());
        assert!(parse("tcadm token revoke berlin").is_ok());
        assert!(parse("tcadm token revoke").is_err());
        let cli = parse("tcadm approve client kiosk-2 --replace kiosk-1").unwrap();
        let Command::Approve(args) = cli.command else {
            panic!("not approve")
        };
        assert_eq!(args.client.name, "kiosk-2");
        assert_eq!(args.replace.as_deref(), Some("kiosk-1"));
        assert!(parse("tcadm deny client kiosk-2").is_ok());
        assert!(parse("tcadm decommission client kiosk-1").is_ok());
        assert!(parse("tcadm allow machine 0123abcd").is_ok());
        assert!(parse("tcadm allow client 0123abcd").is_err());
        assert!(parse("tcadm completion zsh").is_ok());
        assert!(parse("tcadm completion tcsh").is_err());
        assert!(parse("tcadm version --client").is_ok());
        assert!(parse("tcadm describe pr kiosk-1.0.0").is_ok());
        assert!(parse("tcadm describe pods x").is_err());
    }

    #[test]
    fn the_field_manager_is_only_sent_when_given() {
        let cli = parse("tcadm diff -f a.yaml").unwrap();
        let Command::Diff(args) = cli.command else {
            panic!("not diff")
        };
        assert_eq!(args.field_manager, None);
        assert!(
            Cli::try_parse_from(["tcadm", "apply", "-f", "a.yaml", "--field-manager", ""]).is_err()
        );
        let cli = parse("tcadm diff -f a.yaml --field-manager ci").unwrap();
        let Command::Diff(args) = cli.command else {
            panic!("not diff")
        };
        assert_eq!(args.field_manager.as_deref(), Some("ci"));
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("3  server, network or authentication error"));
    }

    #[test]
    fn sources_are_a_resource_to_get_describe_and_follow_events_of() {
        let cli = parse("tcadm get sources").unwrap();
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert_eq!(args.resource, Resource::Sources);
        let cli = parse("tcadm describe source manifests").unwrap();
        let Command::Describe(args) = cli.command else {
            panic!("not describe")
        };
        assert_eq!(args.kind, DescribeKind::Source);
        assert_eq!(
            parse_event_subject("source/manifests"),
            Ok(EventSubject {
                kind: "ManifestSource".into(),
                name: "manifests".into()
            })
        );
        assert_eq!(
            parse_event_subject("cg/front-desk").map(|s| s.kind),
            Ok("ClientGroup".into())
        );
        assert!(parse_event_subject("source/").is_err());
        assert!(
            parse_event_subject("pods/x")
                .unwrap_err()
                .contains("source/NAME")
        );
        assert_eq!(
            parse_describe_kind("pr"),
            Ok(DescribeKind::Object(Kind::PackageRelease))
        );
    }

    #[test]
    fn object_references_need_kind_and_name() {
        assert_eq!(
            parse_object_ref("cg/front-desk"),
            Ok((Kind::ClientGroup, "front-desk".into()))
        );
        assert!(parse_object_ref("front-desk").is_err());
        assert!(parse_object_ref("cg/").is_err());
        assert!(parse_object_ref("pods/x").is_err());
    }
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts as a table; `*` marks the current one.
    GetContexts,
    /// Print the name of the current context.
    CurrentContext,
    /// Make a context the current one.
    UseContext(UseContextArgs),
    /// Create a context or update the settings typed with it: --server, --ca-cert-hash or
    /// --certificate-authority, --token-file (the file and its directory are created with modes
    /// 0600 and 0700; environment variables are not stored).
    SetContext(SetContextArgs),
}

/// Arguments of `config use-context`.
#[derive(Debug, Args)]
pub struct UseContextArgs {
    /// The context.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Arguments of `config set-context`: the context's settings are the global options
/// `--server`, `--ca-cert-hash` or `--certificate-authority` and `--token-file`, taken only from
/// the command line (never from the environment).
#[derive(Debug, Args)]
pub struct SetContextArgs {
    /// The context.
    #[arg(value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub name: String,
}

/// Which connection options were typed on the command line (not taken from the environment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnCommandLine {
    /// `--server`.
    pub server: bool,
    /// `--token`.
    pub token: bool,
    /// `--token-file`.
    pub token_file: bool,
    /// `--certificate-authority`.
    pub certificate_authority: bool,
    /// `--ca-cert-hash`.
    pub ca_cert_hash: bool,
}

impl OnCommandLine {
    /// Reads the sources of the values from clap's matches.
    pub fn from_matches(matches: &clap::ArgMatches) -> Self {
        let typed = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(clap::parser::ValueSource::CommandLine)
            )
        };
        OnCommandLine {
            server: typed("server"),
            token: typed("token"),
            token_file: typed("token_file"),
            certificate_authority: typed("certificate_authority"),
            ca_cert_hash: typed("ca_cert_hash"),
        }
    }
}
