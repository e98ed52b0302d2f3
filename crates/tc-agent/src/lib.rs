//! The thinfleet agent: enrols a thin client with the controller, reports its inventory and
//! package states, and converges the packages it runs to the desired state with a crash-safe
//! install engine.
//!
//! The binary `tc-agent` is thin glue around [`client::run`] and [`status::render`].

pub mod backoff;
pub mod client;
pub mod config;
pub mod download;
pub mod engine;
pub mod enrol;
pub mod extract;
pub mod fault;
pub mod history;
pub mod hooks;
pub mod identity;
pub mod inventory;
pub mod selfupdate;
pub mod signature;
pub mod state;
pub mod status;
pub mod tasks;

/// Installs rustls' *ring* crypto provider as the process default. Call it once before any
/// HTTP client is built; later calls are harmless.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
