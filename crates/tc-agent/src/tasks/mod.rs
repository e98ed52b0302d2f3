//! Remote operations (`Task`s) on the agent's side: the controller's orders arrive with heartbeat
//! and long-poll answers, and the agent reports on them with `POST /agent/v1/tasks/report`.
//!
//! * [`journal`] — `tasks.json`: an order is journaled `Started` (and fsynced) before its side
//!   effect, so it runs at most once per id across crashes; redeliveries are answered from it.
//! * [`runner`] — the loop beside the install engine's: takes orders, runs up to four at a time,
//!   sends the reports until the controller took them.
//! * [`actions`] — `exec` (own process group, timeout, separate stdout and stderr tails, through
//!   [`crate::hooks::Supervised`]), `reboot` and `shutdown` (the configured command; the result
//!   is known after the next boot, from the boot id), `wake` (a Wake-on-LAN magic packet),
//!   `collectLogs`.
//! * [`logs`] — the agent's recent log lines kept in memory for `collectLogs`.
//!
//! Which actions run, and how, is configured in [`crate::config::tasks`].

pub mod actions;
pub mod journal;
pub mod logs;
pub mod runner;

pub use runner::TaskRunner;
