//! The errors a command ends with, and the exit code of each.

use std::io;

use crate::api::ApiError;
use crate::manifest::ManifestError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: `diff` found changes, or a rollout failed or timed out.
pub const EXIT_CHANGES_OR_FAILED: u8 = 1;
/// Exit code: bad arguments, or manifests that cannot be read or decoded.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server could not be reached, refused the token, or refused the request.
pub const EXIT_SERVER: u8 = 3;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// A manifest cannot be read or decoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The config file cannot be read or written, or names no usable context.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The server could not be reached or refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A rollout failed or did not finish in time.
    #[error("{0}")]
    Failed(String),
    /// Output could not be written (a closed pipe ends the command quietly).
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// Errors were already printed one by one; only the exit code is left.
    #[error("{count} error(s)")]
    Reported {
        /// How many errors were printed.
        count: usize,
        /// The exit code.
        code: u8,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Manifest(_) | CliError::Config(_) => EXIT_USAGE,
            CliError::Api(_) => EXIT_SERVER,
            CliError::Failed(_) | CliError::Output(_) => EXIT_CHANGES_OR_FAILED,
            CliError::Reported { code, .. } => *code,
        }
    }

    /// True when output went to a pipe that was closed (`tcadm get clients | head -1`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(error) if error.kind() == io::ErrorKind::BrokenPipe)
    }

    /// True when the error was already printed.
    pub fn is_reported(&self) -> bool {
        matches!(self, CliError::Reported { .. })
    }

    /// What `main` prints, one `error:` line each: every error of invalid manifests (and the
    /// count of those not listed), or the error on one line.
    pub fn lines(&self) -> Vec<String> {
        match self {
            CliError::Manifest(ManifestError::Decode(errors)) => {
                errors.to_string().lines().map(str::to_string).collect()
            }
            other => vec![other.to_string().replace('\n', " ")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(
            CliError::Manifest(ManifestError::NoObjects("x".into())).exit_code(),
            2
        );
        assert_eq!(
            CliError::Api(ApiError::Unreachable {
                server: "s".into(),
                cause: "c".into()
            })
            .exit_code(),
            3
        );
        assert_eq!(CliError::Failed("x".into()).exit_code(), 1);
        let pipe = CliError::Output(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(pipe.is_broken_pipe());
    }

    #[test]
    fn every_manifest_error_is_a_line_of_its_own() {
        let error = |line: usize| tc_api::DecodeError {
            file: "a.yaml".into(),
            line,
            column: 3,
            field: Some("spec.priority".into()),
            message: "invalid type".into(),
        };
        let mut errors = tc_api::DecodeErrors::with_cap(2);
        for line in [4, 9, 12] {
            errors.push(error(line));
        }
        let lines = CliError::Manifest(ManifestError::Decode(errors)).lines();
        assert_eq!(
            lines,
            [
                "a.yaml:4:3: spec.priority: invalid type",
                "a.yaml:9:3: spec.priority: invalid type",
                "and 1 more error not listed (at most 2 are listed per request)",
            ]
        );
        assert_eq!(
            CliError::Failed("one\ntwo".into()).lines(),
            ["one two".to_string()]
        );
    }
}
