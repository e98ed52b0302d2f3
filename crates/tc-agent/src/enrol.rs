//! Enrolment, sessions and decommissioning: how the agent becomes a client, proves it at every
//! session, recovers its credentials, and ends.
//!
//! * The client is the key in `identity.key`. Enrolment sends its public key and a signature
//!   binding the machine id and the bootstrap token; a client enrolled by this very request gets
//!   its first session with the answer, a known key opens one by signing a challenge.
//! * A session that expires, or that the controller cannot check any more (its session key was
//!   replaced), is replaced by signing a new challenge: no bootstrap token is involved. A client
//!   the controller no longer knows by this key (deleted, its key replaced) leads to a new
//!   enrolment.
//! * `credentials.json` is a cache: when it is missing or corrupt, the agent enrols again with
//!   its key and is the same client. A pending enrolment (an admin's approval, a machine id
//!   enrolled under another key) is asked about again when the controller says; a refused one
//!   (denied, decommissioned, deleted) is asked about rarely.

use std::time::Duration;

use tc_proto::{EnrollRequest, EnrollState, PROTOCOL_VERSION, SessionRequest, Timestamp};

use crate::client::{AgentError, ApiError, ProtocolLoop, RunOutcome};
use crate::identity::Identity;
use crate::inventory::hostname;
use crate::state::{Credentials, Decommissioned};

/// A session is replaced this long before it expires.
const SESSION_MARGIN: Duration = Duration::from_secs(60);

/// How long the agent waits before asking again about an enrolment the controller refused
/// (denied, decommissioned, deleted) when the controller did not say.
const REFUSED_RETRY: Duration = Duration::from_secs(600);

/// The longest the agent waits before asking again about a pending enrolment.
const MAX_PENDING_WAIT: Duration = Duration::from_secs(600);

impl ProtocolLoop<'_> {
    /// Usable credentials: the stored ones (opening a session for them if they have none), or
    /// new ones from an enrolment, retried until it succeeds. With `force`, the stored ones are
    /// not used.
    pub(crate) async fn enrolled(&mut self, force: bool) -> Result<Credentials, AgentError> {
        let config = &self.options.config;
        if !force && let Some(stored) = Credentials::load_or_set_aside(&self.dir)? {
            if stored.server != config.server.as_str() {
                tracing::warn!(enrolled_with = %stored.server, server = %config.server,
                    "the stored credentials belong to another controller; enrolling again");
            } else if stored.public_key.is_empty() && stored.client_token.is_some() {
                // Written before identities: used as they are with a controller of that time;
                // a controller with identities refuses the token, and the enrolment then proves
                // it once to keep the client.
                self.previous_client_token = stored.client_token.clone();
                return Ok(stored);
            } else if stored.public_key != self.identity.public_key() {
                tracing::warn!(client = %stored.client_name,
                    "the stored credentials are for another key; enrolling again");
            } else if stored.bearer().is_some() {
                return Ok(stored);
            } else if let Some(credentials) = self.with_new_session(stored).await? {
                return Ok(credentials);
            }
        }
        self.enrol().await
    }

    /// Enrols with the bootstrap token until the controller enrols the client.
    async fn enrol(&mut self) -> Result<Credentials, AgentError> {
        let config = &self.options.config;
        let Some(bootstrap_token) = config.bootstrap_token.clone() else {
            return Err(AgentError::NotEnrolled {
                server: config.server.clone(),
            });
        };
        let machine_id = crate::client::machine_id(config, &self.dir)?;
        let mut last_wait_message = String::new();
        loop {
            let token = match bootstrap_token.read() {
                Ok(token) => token,
                Err(error) => {
                    let message = error.to_string();
                    self.connection.failed(&message);
                    let delay = self.retry.next_delay();
                    tracing::warn!(error = %message, retry_in = ?delay, "enrolment failed");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let request = EnrollRequest {
                protocol_version: PROTOCOL_VERSION,
                signature: self.identity.sign_enrollment(&machine_id, &token),
                bootstrap_token: token,
                machine_id: machine_id.clone(),
                name: config.name.clone(),
                hostname: hostname(),
                labels: config.labels.clone(),
                public_key: self.identity.public_key().to_string(),
                previous_client_token: self.previous_client_token.clone(),
            };
            let error = match self.controller.enroll(&request).await {
                Ok(answer)
                    if answer.state == EnrollState::Enrolled
                        && let Err(reason) = crate::client::check_enrollment(&answer) =>
                {
                    // Nothing is stored: the enrolment is tried again.
                    self.controller.protocol_error("enroll", &reason)
                }
                Ok(answer) if answer.state == EnrollState::Enrolled => {
                    let mut credentials = Credentials {
                        server: config.server.to_string(),
                        machine_id: machine_id.clone(),
                        client_name: answer.client_name,
                        public_key: self.identity.public_key().to_string(),
                        session: answer.session,
                        // From a controller of protocol 1, which knows no sessions.
                        client_token: answer.client_token,
                        enrolled_at: Timestamp::now(),
                    };
                    if credentials.bearer().is_none()
                        && let Err(error) = self.open_session(&mut credentials).await
                    {
                        self.wait_after(&error, "opening a session failed").await;
                        continue;
                    }
                    credentials.save(&self.dir)?;
                    self.previous_client_token = None;
                    self.connection.succeeded();
                    self.retry.reset();
                    tracing::info!(client = %credentials.client_name, "enrolled");
                    return Ok(credentials);
                }
                Ok(answer) => {
                    let reason = answer
                        .reason
                        .map_or_else(|| "no reason given".to_string(), |r| r.to_string());
                    let message = format!(
                        "enrolment of client `{}` waits for an admin ({reason}): {}",
                        answer.client_name,
                        answer.message.as_deref().unwrap_or("")
                    );
                    self.connection.failed(&message);
                    if message != last_wait_message {
                        tracing::warn!(%message, "waiting for approval (`tcadm approve client {}`)", answer.client_name);
                        last_wait_message = message;
                    }
                    self.retry.reset();
                    let wait =
                        Duration::from_secs(u64::from(answer.retry_after_seconds.unwrap_or(30)))
                            .clamp(Duration::from_secs(1), MAX_PENDING_WAIT);
                    tokio::time::sleep(crate::backoff::jitter(wait)).await;
                    continue;
                }
                Err(error) => error,
            };
            self.wait_after(&error, "enrolment failed").await;
        }
    }

    /// Records a failed request and waits: as long as the controller asked (`Retry-After`), a
    /// long while after a refusal (403), else the backoff.
    async fn wait_after(&mut self, error: &ApiError, what: &str) {
        self.connection.failed(&error.to_string());
        let delay = match error.retry_after() {
            Some(wait) => wait.clamp(Duration::from_secs(1), Duration::from_secs(3600)),
            None if error.status() == Some(reqwest::StatusCode::FORBIDDEN) => REFUSED_RETRY,
            None => self.retry.next_delay(),
        };
        if error.status() == Some(reqwest::StatusCode::FORBIDDEN) {
            tracing::error!(%error, retry_in = ?delay, "{what}: the controller refuses this machine");
        } else {
            tracing::warn!(%error, retry_in = ?delay, "{what}");
        }
        tokio::time::sleep(delay).await;
    }

    /// Opens a session for `credentials` by signing a challenge with the client's key.
    pub(crate) async fn open_session(
        &mut self,
        credentials: &mut Credentials,
    ) -> Result<(), ApiError> {
        let mut request = SessionRequest {
            protocol_version: PROTOCOL_VERSION,
            client_name: credentials.client_name.clone(),
            challenge: String::new(),
            signature: String::new(),
        };
        let answer = self.controller.session(&request).await?;
        let Some(challenge) = answer.challenge else {
            return Err(self
                .controller
                .protocol_error("session", "no challenge in the answer"));
        };
        request.signature = self
            .identity
            .sign_challenge(&credentials.client_name, &challenge.value);
        request.challenge = challenge.value;
        let answer = self.controller.session(&request).await?;
        let Some(session) = answer.session else {
            return Err(self
                .controller
                .protocol_error("session", "no session in the answer"));
        };
        if let Err(reason) = crate::client::check_bearer(&session.token, "session token") {
            return Err(self.controller.protocol_error("session", &reason));
        }
        tracing::debug!(expires_at = %session.expires_at, "session opened");
        credentials.session = Some(session);
        credentials.client_token = None;
        Ok(())
    }

    /// `credentials` with a new session, saved; `None` when the controller does not know the
    /// client any more (enrol again). Other failures are retried.
    async fn with_new_session(
        &mut self,
        mut credentials: Credentials,
    ) -> Result<Option<Credentials>, AgentError> {
        loop {
            match self.open_session(&mut credentials).await {
                Ok(()) => {
                    credentials.save(&self.dir)?;
                    self.connection.succeeded();
                    self.retry.reset();
                    return Ok(Some(credentials));
                }
                Err(error) if error.is_unauthorized() => {
                    tracing::warn!(%error, "the controller does not know this client's key any more");
                    return Ok(None);
                }
                Err(error) => self.wait_after(&error, "opening a session failed").await,
            }
        }
    }

    /// Credentials whose session is good for a while: the same, or with a new session when it
    /// is about to expire.
    pub(crate) async fn fresh(
        &mut self,
        credentials: Credentials,
    ) -> Result<Credentials, AgentError> {
        let expiring = credentials
            .session
            .as_ref()
            .is_some_and(|session| Timestamp::now().plus(SESSION_MARGIN) >= session.expires_at);
        if !expiring {
            return Ok(credentials);
        }
        match self.with_new_session(credentials.clone()).await? {
            Some(credentials) => Ok(credentials),
            None => self
                .recover_by_enrolling()
                .await
                .or_else(|error| match error {
                    AgentError::NotEnrolled { .. } => Ok(credentials),
                    other => Err(other),
                }),
        }
    }

    /// New credentials after the controller refused a request's token: a new session signed
    /// with the key, else a new enrolment (when a bootstrap token is configured).
    pub(crate) async fn recover(
        &mut self,
        credentials: Credentials,
    ) -> Result<Credentials, AgentError> {
        // Whatever the refusal (expired, or a token the controller cannot check any more: its
        // session key was replaced, or a backup restored), a session signed with the key is
        // tried first: it needs no bootstrap token. A client that was deleted or whose key was
        // replaced refuses it too, and the agent enrols again.
        // (Credentials of a protocol-1 controller hold a client token and no session: that
        // controller has no sessions to open.)
        if !credentials.public_key.is_empty()
            && credentials.session.is_some()
            && let Some(credentials) = self.with_new_session(credentials.clone()).await?
        {
            return Ok(credentials);
        }
        if credentials.public_key.is_empty() {
            self.previous_client_token = credentials.client_token.clone();
        }
        self.recover_by_enrolling()
            .await
            .or_else(|error| match error {
                AgentError::NotEnrolled { .. } => Ok(credentials),
                other => Err(other),
            })
    }

    async fn recover_by_enrolling(&mut self) -> Result<Credentials, AgentError> {
        if self.options.config.bootstrap_token.is_none() {
            let delay = self.retry.next_delay();
            tracing::error!(retry_in = ?delay,
                "the controller refused the session (client deleted or key replaced?) and no \
                 bootstrap token is configured to enrol again");
            tokio::time::sleep(delay).await;
            return Err(AgentError::NotEnrolled {
                server: self.options.config.server.clone(),
            });
        }
        tracing::warn!("the controller refused the session; enrolling again");
        self.enrolled(true).await
    }

    /// Ends a decommissioned agent: marks the state directory (first, so that a crash leaves a
    /// decommissioned agent, never a half one), then deletes the credentials and the key.
    pub(crate) fn finish_decommission(
        &self,
        credentials: &Credentials,
    ) -> Result<RunOutcome, AgentError> {
        let mark = Decommissioned {
            at: Timestamp::now(),
            client_name: credentials.client_name.clone(),
            server: credentials.server.clone(),
        };
        mark.save(&self.dir)?;
        Credentials::delete(&self.dir)?;
        Identity::delete(&self.dir)?;
        tracing::info!(client = %mark.client_name,
            "decommissioned: every package thinfleet installed was removed, and the identity deleted");
        Ok(RunOutcome::Decommissioned(mark))
    }
}
