//! Named admin credentials: `credential create|list|revoke|rotate`.

use serde_json::json;
use tc_api::{Credential, CredentialCreated, CredentialRequest, Timestamp};

use crate::cli::{CredentialCommand, DocumentFormat};
use crate::commands::Context;
use crate::error::{CliError, EXIT_OK};
use crate::format::{Table, age};
use crate::output::{to_json, to_yaml};

/// Runs a `credential` subcommand.
pub fn run(context: &mut Context<'_>, command: &CredentialCommand) -> Result<u8, CliError> {
    match command {
        CredentialCommand::Create(args) => {
            let request = CredentialRequest {
                name: args.name.clone(),
                role: args.role,
                expires_seconds: args.expires.map(|ttl| ttl.as_secs().max(1)),
            };
            let created = context.client()?.create_credential(&request)?;
            print_token(context, &created, "created")
        }
        CredentialCommand::Rotate(args) => {
            let rotated = context.client()?.rotate_credential(&args.name)?;
            print_token(
                context,
                &rotated,
                "rotated: the old token is refused from now on",
            )
        }
        CredentialCommand::Revoke(args) => {
            let credential = context.client()?.revoke_credential(&args.name)?;
            writeln!(
                context.out,
                "credential `{}` (role {}) revoked; its token is refused from now on",
                credential.name, credential.role
            )?;
            Ok(EXIT_OK)
        }
        CredentialCommand::List(args) => {
            let credentials = context.client()?.credentials()?;
            let list = json!({ "apiVersion": tc_api::API_VERSION, "kind": "CredentialList",
                "items": credentials });
            match args.output {
                Some(DocumentFormat::Yaml) => write!(context.out, "{}", to_yaml(&list))?,
                Some(DocumentFormat::Json) => writeln!(context.out, "{}", to_json(&list))?,
                None if credentials.is_empty() => eprintln!(
                    "No credentials (the break-glass token of data/admin.token is not listed)."
                ),
                None => write!(
                    context.out,
                    "{}",
                    credentials_table(&credentials, Timestamp::now()).render()
                )?,
            }
            Ok(EXIT_OK)
        }
    }
}

/// Prints the token alone on standard output (for `> helpdesk.token`), what it is on standard
/// error.
fn print_token(
    context: &mut Context<'_>,
    created: &CredentialCreated,
    what: &str,
) -> Result<u8, CliError> {
    writeln!(context.out, "{}", created.token)?;
    eprintln!("{}", describe(created, what));
    Ok(EXIT_OK)
}

/// What `credential create|rotate` says on standard error.
pub fn describe(created: &CredentialCreated, what: &str) -> String {
    let credential = &created.credential;
    let expires = match credential.expires {
        Some(at) => format!("expires {at}"),
        None => "no expiry".into(),
    };
    format!(
        "credential `{}` (role {}, {expires}) {what}; its token is shown once, above.\n\
         Use it with: tcadm --token TOKEN, or TCADM_TOKEN=TOKEN in the environment",
        credential.name, credential.role
    )
}

/// The table of `credential list`.
pub fn credentials_table(credentials: &[Credential], now: Timestamp) -> Table {
    let mut table = Table::new(&["NAME", "ROLE", "EXPIRES", "ROTATED", "AGE"]);
    for credential in credentials {
        let expires = match credential.expires {
            Some(at) if at <= now => "expired".to_string(),
            Some(at) => format!("in {}", age(Some(now), at, "-")),
            None => "never".to_string(),
        };
        let rotated = match credential.rotated {
            Some(at) => format!("{} ago", age(Some(at), now, "-")),
            None => "-".to_string(),
        };
        table.push(vec![
            credential.name.clone(),
            credential.role.to_string(),
            expires,
            rotated,
            age(Some(credential.creation_timestamp), now, "-"),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_api::Role;

    fn credential(name: &str, role: Role) -> Credential {
        Credential {
            name: name.into(),
            role,
            creation_timestamp: Timestamp::from_unix_millis(1_000),
            rotated: None,
            expires: None,
        }
    }

    #[test]
    fn the_credential_table_shows_role_expiry_and_rotation() {
        let now = Timestamp::from_unix_millis(3_600_000);
        let mut desk = credential("helpdesk", Role::Viewer);
        desk.expires = Some(Timestamp::from_unix_millis(3_600_000 + 7_200_000));
        let mut old = credential("old", Role::Admin);
        old.expires = Some(Timestamp::from_unix_millis(10));
        old.rotated = Some(Timestamp::from_unix_millis(1_800_000));
        let table = credentials_table(&[desk, old], now);
        assert_eq!(table.rows[0], ["helpdesk", "viewer", "in 120m", "-", "59m"]);
        assert_eq!(table.rows[1], ["old", "admin", "expired", "30m ago", "59m"]);
    }

    #[test]
    fn a_created_credential_is_described_without_its_token() {
        let created = CredentialCreated {
            token: "s3cret".into(),
            credential: credential("helpdesk", Role::Operator),
        };
        let text = describe(&created, "created");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.starts_with("credential `helpdesk` (role operator, no expiry) created"));
    }
}
