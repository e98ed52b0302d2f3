//! Named admin credentials and their roles, as the controller serves them and `tcadm` reads them
//! (never a credential's token, apart from the one answer that creates or rotates it).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Timestamp;

/// What a credential may do. Ordered: each role may do everything the roles below it may.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but secrets (every admin `GET`).
    Viewer,
    /// A viewer that may also label clients and retry failed rollouts.
    Operator,
    /// Everything: apply, delete, tokens, credentials, admission, blob uploads.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// Its name (`viewer`, `operator`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not a role: use viewer, operator or admin"))
    }
}

/// A named credential: a bearer token for the admin API with a role. The controller stores only
/// the SHA-256 of its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// Its name (a DNS label); `admin` is the break-glass token of `data/admin.token`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was created.
    pub creation_timestamp: Timestamp,
    /// When its token was last replaced (`rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated: Option<Timestamp>,
    /// After this, its token is refused (401).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// Body of `POST /apis/thinfleet.io/v1/credentials`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRequest {
    /// The credential's name (a DNS label; not `admin`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lifetime in seconds, from creation and from each rotation [default: no expiry].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expires_seconds: Option<u64>,
}

/// Answer to creating or rotating a credential: the only time its token is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialCreated {
    /// The bearer token.
    pub token: String,
    /// The credential as listed.
    pub credential: Credential,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("viewer, operator or admin")
        );
    }
}
