//! Where the controller keeps its state: the embedded redb file in the data directory (the
//! default), or a PostgreSQL database (`--store postgres://…`).

use std::path::Path;

use tc_store::PgSettings;

/// The environment variable that may hold the PostgreSQL password (when neither the URL nor
/// `--store-password-file` gives it).
pub const PASSWORD_ENV: &str = "TC_CONTROLLER_STORE_PASSWORD";

/// Which store the controller opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// `<data-dir>/thinfleet.redb`.
    #[default]
    Redb,
    /// A PostgreSQL database.
    Postgres(PgSettings),
}

/// What is wrong with a `--store` setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreLocationError {
    /// Neither `redb` nor a PostgreSQL URL (the value is not repeated: it may carry a password).
    #[error(
        "--store: expected `redb` or a PostgreSQL URL starting with postgres:// or postgresql://"
    )]
    Unknown,
    /// The password file cannot be read.
    #[error("--store-password-file {path}: {message}")]
    PasswordFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A password file given for the redb store.
    #[error("--store-password-file is for a PostgreSQL store; --store is redb")]
    PasswordForRedb,
    /// A CA file given for the redb store.
    #[error("--store-ca-file is for a PostgreSQL store; --store is redb")]
    CaFileForRedb,
}

impl StoreLocation {
    /// Reads `--store` (`redb`, or a URL), with the password from `password_file` (its first
    /// line), else from `password_env` (the value of [`PASSWORD_ENV`]), else none (the URL's, or
    /// none for trust or peer authentication); `ca_file` (`--store-ca-file`) holds the CA
    /// certificates that signed the database server's (TLS, the server verified).
    pub fn parse(
        value: &str,
        password_file: Option<&Path>,
        password_env: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<StoreLocation, StoreLocationError> {
        if value == "redb" {
            if password_file.is_some() {
                return Err(StoreLocationError::PasswordForRedb);
            }
            if ca_file.is_some() {
                return Err(StoreLocationError::CaFileForRedb);
            }
            return Ok(StoreLocation::Redb);
        }
        if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
            return Err(StoreLocationError::Unknown);
        }
        let password = match password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    StoreLocationError::PasswordFile {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    }
                })?;
                let line = text.lines().next().unwrap_or_default();
                if line.is_empty() {
                    return Err(StoreLocationError::PasswordFile {
                        path: path.display().to_string(),
                        message: "its first line is empty".into(),
                    });
                }
                Some(line.to_string())
            }
            None => password_env.filter(|password| !password.is_empty()),
        };
        Ok(StoreLocation::Postgres(PgSettings {
            password,
            ca_file: ca_file.map(Path::to_path_buf),
            ..PgSettings::new(value)
        }))
    }
}

/// Says at start whether the store's connections are encrypted, and warns when they cross a
/// network in plain text (the store's password and every client's state would).
pub fn log_encryption(store: &tc_store::PgStore) {
    if store.encrypted() {
        tracing::info!(
            "the connections to PostgreSQL use TLS; the server's certificate is verified"
        );
    } else if let Some(host) = store.plain_text_host() {
        tracing::warn!(%host, "the connections to PostgreSQL are not encrypted: give --store-ca-file (the CA that signed the server's certificate) to use TLS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_is_the_default_and_a_url_selects_postgresql() {
        assert_eq!(StoreLocation::default(), StoreLocation::Redb);
        assert_eq!(
            StoreLocation::parse("redb", None, Some("ignored".into()), None),
            Ok(StoreLocation::Redb)
        );
        let StoreLocation::Postgres(settings) =
            StoreLocation::parse("postgres://tc@db:5432/thinfleet", None, None, None).unwrap()
        else {
            panic!("expected PostgreSQL");
        };
        assert_eq!(settings.url, "postgres://tc@db:5432/thinfleet");
        assert_eq!(settings.password, None);
    }

    #[test]
    fn the_password_comes_from_the_file_else_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let password = |location: StoreLocation| match location {
            StoreLocation::Postgres(settings) => settings.password,
            StoreLocation::Redb => panic!("expected PostgreSQL"),
        };
        let url = "postgresql://tc@db/thinfleet";
        assert_eq!(
            password(StoreLocation::parse(url, Some(&file), Some("env".into()), None).unwrap()),
            Some("s3cret".into())
        );
        assert_eq!(
            password(StoreLocation::parse(url, None, Some("env".into()), None).unwrap()),
            Some("env".into())
        );
        assert_eq!(
            password(StoreLocation::parse(url, None, Some(String::new()), None).unwrap()),
            None
        );
        // The password never shows in the settings' debug form.
        let debug = format!(
            "{:?}",
            StoreLocation::parse(url, Some(&file), None, None).unwrap()
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn bad_settings_are_refused_without_repeating_the_value() {
        let error = StoreLocation::parse("postgress://tc:pw@db/x", None, None, None).unwrap_err();
        assert_eq!(error, StoreLocationError::Unknown);
        assert!(!error.to_string().contains("pw@"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(matches!(
            StoreLocation::parse("postgres://db/x", Some(&missing), None, None),
            Err(StoreLocationError::PasswordFile { .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(
            StoreLocation::parse("postgres://db/x", Some(&empty), None, None),
            Err(StoreLocationError::PasswordFile { .. })
        ));
        assert_eq!(
            StoreLocation::parse("redb", Some(&empty), None, None),
            Err(StoreLocationError::PasswordForRedb)
        );
        assert_eq!(
            StoreLocation::parse("redb", None, None, Some(&empty)),
            Err(StoreLocationError::CaFileForRedb)
        );
        // The CA file is the store's to read when it connects.
        let StoreLocation::Postgres(settings) =
            StoreLocation::parse("postgres://db/x", None, None, Some(&empty)).unwrap()
        else {
            panic!("expected PostgreSQL");
        };
        assert_eq!(settings.ca_file.as_deref(), Some(empty.as_path()));
    }
}
