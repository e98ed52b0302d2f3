//! `tcadm`, the admin CLI of thinfleet: apply manifests, diff them, list and describe objects,
//! label clients, upload packages and follow rollouts.
//!
//! The binary is glue around this library. Everything that decides what to print (tables, ages,
//! label arguments, diffs, rollout judgement, manifest preparation) is a plain function tested on
//! its own; [`commands`] does the I/O.

pub mod api;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contexts;
pub mod credentials;
pub mod describe;
pub mod diff;
pub mod enrollment;
pub mod error;
pub mod format;
pub mod get;
pub mod labels;
pub mod manifest;
pub mod output;
pub mod progressive;
pub mod rollout;
pub mod rollout_cli;
pub mod rollout_commands;
pub mod run_commands;
pub mod sign;
pub mod sources;
pub mod task_api;
pub mod task_cli;
pub mod tasks;
pub mod views;

pub use commands::{Context, run};
pub use error::CliError;
