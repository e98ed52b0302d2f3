//! Who may be a client: `token create|list|revoke`, `approve`, `deny`, `decommission` and
//! `allow machine`.

use std::collections::BTreeMap;

use serde_json::json;
use tc_api::{BootstrapToken, BootstrapTokenCreated, BootstrapTokenRequest, Kind, Timestamp};

use crate::cli::{
    AllowArgs, ApproveArgs, ClientArgs, DocumentFormat, TokenCreateArgs, TokenListArgs,
    TokenRevokeArgs,
};
use crate::commands::Context;
use crate::error::{CliError, EXIT_OK};
use crate::format::{Table, age};
use crate::labels::{LabelChange, parse_label_args};
use crate::output::{to_json, to_yaml};

fn client_only(args: &ClientArgs, command: &str) -> Result<(), CliError> {
    if args.kind == Kind::Client {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "`{command}` takes a client (`tcadm {command} client NAME`), not a {}",
        args.kind.as_str().to_ascii_lowercase()
    )))
}

/// `token create`: prints the secret alone (for `> berlin.token`), the token and how to join on
/// standard error; with `-o`, the whole answer.
pub fn token_create(context: &mut Context<'_>, args: &TokenCreateArgs) -> Result<u8, CliError> {
    let mut labels = BTreeMap::new();
    if !args.labels.is_empty() {
        for change in parse_label_args(&args.labels).map_err(|e| CliError::Usage(e.to_string()))? {
            match change {
                LabelChange::Set { key, value } => {
                    labels.insert(key, value);
                }
                LabelChange::Remove { key } => {
                    return Err(CliError::Usage(format!(
                        "--label {key}-: a token imposes labels; give key=value"
                    )));
                }
            }
        }
    }
    let request = BootstrapTokenRequest {
        name: args.name.clone(),
        ttl_seconds: args.ttl.map(|ttl| ttl.as_secs().max(1)),
        max_uses: args.max_uses,
        labels,
        require_approval: args.require_approval,
    };
    let created = context.client()?.create_bootstrap_token(&request)?;
    match args.output {
        Some(DocumentFormat::Yaml) => write!(context.out, "{}", to_yaml(&created))?,
        Some(DocumentFormat::Json) => writeln!(context.out, "{}", to_json(&created))?,
        None => {
            writeln!(context.out, "{}", created.token)?;
            eprintln!("{}", describe_created(&created));
        }
    }
    Ok(EXIT_OK)
}

/// What `token create` says on standard error: the token and how an agent joins with it.
pub fn describe_created(created: &BootstrapTokenCreated) -> String {
    let token = &created.bootstrap_token;
    let mut text = format!(
        "bootstrap token `{}` created ({}); its secret is shown once, above.\n",
        token.name,
        limits(token)
    );
    text.push_str(&format!(
        "Enrol an agent with it: tc-agent --server {}",
        created.join.server
    ));
    if let Some(hash) = &created.join.ca_cert_hash {
        text.push_str(&format!(" --ca-cert-hash {hash}"));
    }
    text.push_str(" --bootstrap-token-file FILE");
    text
}

/// A token's expiry, uses, labels and approval, in words.
fn limits(token: &BootstrapToken) -> String {
    let mut parts = vec![match token.expires {
        Some(at) => format!("expires {at}"),
        None => "no expiry".into(),
    }];
    parts.push(match token.max_uses {
        Some(max) => format!("{} of {max} uses", token.uses),
        None => format!("{} uses, unlimited", token.uses),
    });
    if !token.labels.is_empty() {
        parts.push(format!("imposes {}", labels_text(&token.labels)));
    }
    if token.require_approval {
        parts.push("enrolments need approval".into());
    }
    parts.join(", ")
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The table of `token list`.
pub fn tokens_table(tokens: &[BootstrapToken], now: Timestamp) -> Table {
    let mut table = Table::new(&["NAME", "USES", "EXPIRES", "LABELS", "APPROVAL", "AGE"]);
    for token in tokens {
        let uses = match token.max_uses {
            Some(max) => format!("{}/{max}", token.uses),
            None => token.uses.to_string(),
        };
        let expires = match token.expires {
            Some(at) if at <= now => "expired".to_string(),
            Some(at) => format!("in {}", age(Some(now), at, "-")),
            None => "never".to_string(),
        };
        table.push(vec![
            token.name.clone(),
            uses,
            expires,
            if token.labels.is_empty() {
                "<none>".into()
            } else {
                labels_text(&token.labels)
            },
            if token.require_approval {
                "required"
            } else {
                "-"
            }
            .into(),
            age(Some(token.creation_timestamp), now, "-"),
        ]);
    }
    table
}

/// `token list`.
pub fn token_list(context: &mut Context<'_>, args: &TokenListArgs) -> Result<u8, CliError> {
    let tokens = context.client()?.bootstrap_tokens()?;
    let list =
        json!({ "apiVersion": tc_api::API_VERSION, "kind": "BootstrapTokenList", "items": tokens });
    match args.output {
        Some(DocumentFormat::Yaml) => write!(context.out, "{}", to_yaml(&list))?,
        Some(DocumentFormat::Json) => writeln!(context.out, "{}", to_json(&list))?,
        None if tokens.is_empty() => eprintln!("No bootstrap tokens."),
        None => write!(
            context.out,
            "{}",
            tokens_table(&tokens, Timestamp::now()).render()
        )?,
    }
    Ok(EXIT_OK)
}

/// `token revoke NAME`.
pub fn token_revoke(context: &mut Context<'_>, args: &TokenRevokeArgs) -> Result<u8, CliError> {
    let token = context.client()?.revoke_bootstrap_token(&args.name)?;
    writeln!(
        context.out,
        "bootstrap token `{}` revoked (it enrolled {} client(s); they stay)",
        token.name, token.uses
    )?;
    Ok(EXIT_OK)
}

/// `approve client NAME [--replace OLD]`.
pub fn approve(context: &mut Context<'_>, args: &ApproveArgs) -> Result<u8, CliError> {
    client_only(&args.client, "approve")?;
    let body = args.replace.as_ref().map(|old| json!({ "replace": old }));
    let client = context
        .client()?
        .client_action(&args.client.name, "approve", body)?;
    if args.replace.is_some() {
        writeln!(
            context.out,
            "client/{} approved as the new key of client/{}; client/{} is gone",
            args.client.name, client.metadata.name, args.client.name
        )?;
    } else {
        writeln!(context.out, "client/{} approved", client.metadata.name)?;
    }
    Ok(EXIT_OK)
}

/// `deny client NAME`.
pub fn deny(context: &mut Context<'_>, args: &ClientArgs) -> Result<u8, CliError> {
    client_only(args, "deny")?;
    let client = context.client()?.client_action(&args.name, "deny", None)?;
    writeln!(
        context.out,
        "client/{} denied; machine id {} refused until `tcadm allow machine {}`",
        args.name, client.spec.machine_id, client.spec.machine_id
    )?;
    Ok(EXIT_OK)
}

/// `decommission client NAME`.
pub fn decommission(context: &mut Context<'_>, args: &ClientArgs) -> Result<u8, CliError> {
    client_only(args, "decommission")?;
    context
        .client()?
        .client_action(&args.name, "decommission", None)?;
    writeln!(
        context.out,
        "client/{} decommissioning: its agent removes every package thinfleet installed and \
         stops; the client is then deleted and its machine id refused",
        args.name
    )?;
    Ok(EXIT_OK)
}

/// `allow machine ID`.
pub fn allow(context: &mut Context<'_>, args: &AllowArgs) -> Result<u8, CliError> {
    let removed = context.client()?.allow_machine(&args.id)?;
    let clients: Vec<&str> = removed.iter().map(|block| block.client.as_str()).collect();
    writeln!(
        context.out,
        "machine {} may enrol again (it was refused as {})",
        args.id,
        clients.join(", ")
    )?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str) -> BootstrapToken {
        BootstrapToken {
            name: name.into(),
            creation_timestamp: Timestamp::from_unix_millis(1_000),
            expires: None,
            max_uses: None,
            uses: 3,
            labels: BTreeMap::new(),
            require_approval: false,
        }
    }

    #[test]
    fn the_token_table_shows_uses_expiry_labels_and_approval() {
        let now = Timestamp::from_unix_millis(3_600_000);
        let mut berlin = token("berlin");
        berlin.max_uses = Some(10);
        berlin.expires = Some(Timestamp::from_unix_millis(3_600_000 + 7_200_000));
        berlin.labels = BTreeMap::from([("site".to_string(), "berlin".to_string())]);
        berlin.require_approval = true;
        let mut old = token("old");
        old.expires = Some(Timestamp::from_unix_millis(10));
        let table = tokens_table(&[token("default"), berlin, old], now);
        assert_eq!(
            table.rows[0],
            ["default", "3", "never", "<none>", "-", "59m"]
        );
        assert_eq!(
            table.rows[1],
            [
                "berlin",
                "3/10",
                "in 120m",
                "site=berlin",
                "required",
                "59m"
            ]
        );
        assert_eq!(table.rows[2][2], "expired");
    }

    #[test]
    fn a_created_token_is_described_with_how_to_join() {
        let created = BootstrapTokenCreated {
            token: "s3cret".into(),
            bootstrap_token: token("berlin"),
            join: tc_api::JoinMaterial {
                server: "https://controller:7130".into(),
                token: "s3cret".into(),
                ca_cert_hash: Some("sha256:ab".into()),
            },
        };
        let text = describe_created(&created);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains(
                "tc-agent --server https://controller:7130 --ca-cert-hash sha256:ab \
                 --bootstrap-token-file FILE"
            ),
            "{text}"
        );
    }
}
