//! DAARION's NATS JetStream as this service reaches it (CONTRACT.md section
//! 12): the one connection (credentials, TLS, reconnects in the
//! background), the streams and their subjects, the durable consumers of
//! the inbound streams, publishing what goes back to DAARION.city with
//! JetStream's acknowledgement, and the dead-letter subject. The only code
//! that knows NATS's names; the edge that consumes (`nats`) and the
//! delivery job (`jobs::deliver`) ask it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use async_nats::{ConnectOptions, Event, HeaderMap};
use bytes::Bytes;

use crate::config::{NatsAuth, NatsSettings, Settings};
use crate::secret::Secret;

/// An inbound stream: DAARION Auth's events (section 2).
pub const AUTH_STREAM: &str = "DAARION_AUTH";
pub const AUTH_SUBJECTS: &str = "daarion.auth.events.>";
/// An inbound stream: DAARION.city's events (sections 8, 9 and 13).
pub const CITY_STREAM: &str = "DAARION_CITY";
pub const CITY_SUBJECTS: &str = "daarion.city.events.>";
/// What goes back to DAARION.city: `matrix.events.<type>`.
pub const OUT_STREAM: &str = "MATRIX_EVENTS";
pub const OUT_SUBJECTS: &str = "matrix.events.>";
const OUT_PREFIX: &str = "matrix.events.";
/// Where a message that can never be accepted is copied:
/// `matrix-provisioner.dead.<original subject>`. The stream is the
/// service's own (created with the others when allowed), so dead letters
/// are kept; without it they are only published.
pub const DEAD_STREAM: &str = "MATRIX_PROVISIONER_DEAD";
pub const DEAD_SUBJECTS: &str = "matrix-provisioner.dead.>";
const DEAD_PREFIX: &str = "matrix-provisioner.dead.";
/// The header of a dead letter that says why: `<code>: <sentence>`.
pub const ERROR_HEADER: &str = "Mp-Error";

/// How long re-publishing an event id is a no-op in the streams the service
/// creates. A re-publish follows a crash between JetStream's ack and the
/// outbox's row being marked, i.e. once the job's lease ran out.
const OUT_DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);
/// How long the streams the service creates keep messages.
const KEEP_EVENTS: Duration = Duration::from_secs(7 * 24 * 3600);
const KEEP_DEAD: Duration = Duration::from_secs(30 * 24 * 3600);
/// A consumer's messages handed out and not acknowledged yet, per consumer
/// (every replica's together): enough to fill several group commits.
const MAX_ACK_PENDING: i64 = 4096;

/// Why NATS did not do something; the words never carry a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BusError(String);

impl BusError {
    fn new(what: &str, e: impl std::fmt::Display) -> BusError {
        BusError(format!("{what}: {e}"))
    }
}

/// The connection to NATS and its JetStream.
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: NatsSettings,
    /// Signs what is published (`X-Daarion-Signature`, the first key of
    /// `CITY_WEBHOOK_SECRET`); None: published unsigned.
    signing_key: Option<Secret>,
    /// Messages of each inbound stream not handed to the consumer yet, as
    /// last seen (the consumer lag).
    pending: Mutex<BTreeMap<&'static str, i64>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("servers", &self.settings.urls_redacted())
            .field("state", &self.state())
            .finish()
    }
}

/// Whether JetStream took a published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Stored,
    /// JetStream had this id already (within the duplicate window).
    Duplicate,
}

impl Bus {
    /// None when `NATS_URL` is not set. The connection is made in the
    /// background and kept up for ever (reconnecting), so the service
    /// starts, and takes webhooks, while NATS is down.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Option<Bus>> {
        let Some(nats) = settings.nats.clone() else {
            return Ok(None);
        };
        let mut options = ConnectOptions::new()
            .name("matrix-provisioner")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move { log_event(event) });
        options = match &nats.auth {
            NatsAuth::None => options,
            NatsAuth::CredsFile(path) => options.credentials_file(path).await.map_err(|e| {
                // The kind only: the file's lines are the credentials.
                anyhow::anyhow!(
                    "NATS_CREDS_FILE: {} is not a credentials file ({})",
                    path.display(),
                    e.kind()
                )
            })?,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_string())
            }
            NatsAuth::Token(token) => options.token(token.expose().to_string()),
        };
        if let Some(ca) = &nats.tls_ca_file {
            if !ca.is_file() {
                anyhow::bail!("NATS_TLS_CA_FILE: {} is not a readable file", ca.display());
            }
            options = options.add_root_certificates(ca.clone());
        }
        let mut servers = Vec::new();
        for url in nats.servers() {
            servers.push(url.parse::<async_nats::ServerAddr>().map_err(|_| {
                anyhow::anyhow!("NATS_URL: {} is not a NATS URL", nats.urls_redacted())
            })?);
        }
        let client = options.connect(servers).await.map_err(|e| {
            anyhow::anyhow!("cannot connect to NATS at {}: {e}", nats.urls_redacted())
        })?;
        tracing::info!(servers = %nats.urls_redacted(), "NATS: connecting");
        let js = jetstream::new(client.clone());
        Ok(Some(Bus {
            client,
            js,
            signing_key: settings.city.webhook_secrets.first().cloned(),
            settings: nats,
            pending: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    /// `connected`, `connecting` (not connected yet since the start) or
    /// `disconnected` (reconnecting).
    pub fn state(&self) -> &'static str {
        match self.client.connection_state() {
            State::Connected => "connected",
            State::Pending => "connecting",
            State::Disconnected => "disconnected",
        }
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Sends what the client holds (acknowledgements included) to NATS.
    pub async fn flush(&self) {
        if self.connected() {
            if let Err(e) = self.client.flush().await {
                tracing::warn!("NATS: cannot flush on the way out: {e}");
            }
        }
    }

    /// Creates the streams of section 12 (and the dead letters') that are
    /// missing; an existing stream is left as its owner made it.
    pub async fn create_streams(&self) -> Result<(), BusError> {
        let events = |name: &str, subjects: &str, keep: Duration| stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            storage: stream::StorageType::File,
            max_age: keep,
            ..Default::default()
        };
        let configs = [
            events(AUTH_STREAM, AUTH_SUBJECTS, KEEP_EVENTS),
            events(CITY_STREAM, CITY_SUBJECTS, KEEP_EVENTS),
            stream::Config {
                duplicate_window: OUT_DUPLICATE_WINDOW,
                ..events(OUT_STREAM, OUT_SUBJECTS, KEEP_EVENTS)
            },
            events(DEAD_STREAM, DEAD_SUBJECTS, KEEP_DEAD),
        ];
        for config in configs {
            let name = config.name.clone();
            self.js
                .get_or_create_stream(config)
                .await
                .map_err(|e| BusError::new(&format!("cannot create stream {name}"), e))?;
        }
        Ok(())
    }

    /// The durable pull consumer `NATS_CONSUMER` on `stream`, created when
    /// missing (every replica binds the same one and JetStream splits the
    /// messages among them).
    pub async fn consumer(&self, stream: &str) -> Result<consumer::PullConsumer, BusError> {
        let name = &self.settings.consumer;
        let found = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| BusError::new(&format!("stream {stream}"), e))?;
        found
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    max_ack_pending: MAX_ACK_PENDING,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::new(&format!("consumer {name} on stream {stream}"), e))
    }

    /// Publishes one event for DAARION.city (`kind` its type, `id` its
    /// envelope id, `body` the envelope) to `matrix.events.<kind>`, signed
    /// as on HTTP, with `Nats-Msg-Id` = `id`; returns once JetStream stored
    /// it (or already had it).
    pub async fn publish_event(
        &self,
        kind: &str,
        id: &str,
        body: &str,
    ) -> Result<Published, BusError> {
        let subject = format!("{OUT_PREFIX}{kind}");
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        if let Some(key) = &self.signing_key {
            let t = chrono::Utc::now().timestamp();
            let signature = crate::domain::signature::sign(key.expose(), t, body.as_bytes());
            headers.insert(crate::domain::signature::HEADER, signature.as_str());
        }
        let publish = PublishMessage::build()
            .payload(Bytes::from(body.to_string()))
            .headers(headers)
            .message_id(id);
        let what = format!("publishing to {subject}");
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| BusError::new(&what, e))?
            .await
            .map_err(|e| BusError::new(&what, e))?;
        Ok(if ack.duplicate {
            Published::Duplicate
        } else {
            Published::Stored
        })
    }

    /// Copies `message` (taken from `stream`) to
    /// `matrix-provisioner.dead.<its subject>` with its headers and an
    /// `Mp-Error` header saying why (`code: sentence`). When a stream keeps
    /// dead letters, returns once it stored the copy (`Nats-Msg-Id` makes a
    /// second copy of the same message a no-op); otherwise once NATS has it.
    pub async fn dead_letter(
        &self,
        stream: &str,
        message: &jetstream::Message,
        code: &str,
        reason: &str,
    ) -> Result<(), BusError> {
        let subject = format!("{DEAD_PREFIX}{}", message.subject);
        let mut headers = message.headers.clone().unwrap_or_default();
        // A header value is one line of printable text.
        let why: String = format!("{code}: {reason}")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        headers.insert(ERROR_HEADER, why.as_str());
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let what = format!("dead-lettering to {subject}");
        let kept = match self.js.stream_by_subject(subject.clone()).await {
            Ok(_) => true,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamByNameErrorKind::NotFound
                ) =>
            {
                false
            }
            Err(e) => return Err(BusError::new(&what, e)),
        };
        if kept {
            let publish = PublishMessage::build()
                .payload(message.payload.clone())
                .headers(headers)
                .message_id(format!("{stream}:{sequence}"));
            self.js
                .send_publish(subject, publish)
                .await
                .map_err(|e| BusError::new(&what, e))?
                .await
                .map_err(|e| BusError::new(&what, e))?;
        } else {
            self.client
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
                .map_err(|e| BusError::new(&what, e))?;
            self.client
                .flush()
                .await
                .map_err(|e| BusError::new(&what, e))?;
        }
        Ok(())
    }

    /// Records the consumer lag of an inbound stream.
    pub fn set_pending(&self, stream: &'static str, pending: u64) {
        let mut all = self.pending.lock().expect("not poisoned");
        all.insert(stream, pending.min(i64::MAX as u64) as i64);
    }

    /// The consumer lag of each inbound stream, as last seen.
    pub fn pending(&self) -> Vec<(String, i64)> {
        let all = self.pending.lock().expect("not poisoned");
        all.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}

/// The connection's events, in the service's log (none carries a secret).
fn log_event(event: Event) {
    match event {
        Event::Connected => tracing::info!("NATS: connected"),
        Event::Disconnected => tracing::warn!("NATS: disconnected; reconnecting"),
        Event::LameDuckMode => tracing::warn!("NATS: the server is going away (lame duck mode)"),
        other => tracing::warn!("NATS: {other}"),
    }
}
