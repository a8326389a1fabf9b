//! The service's Prometheus metrics: one process-wide registry and a small
//! function per event worth counting, so any module records with one line
//! (`metrics::webhook("accepted", "")`) and `/metrics` renders them all.
//!
//! Why process-wide (a `LazyLock`) rather than a registry threaded through
//! every constructor: the counters are touched from the HTTP handlers, the
//! worker, the Synapse client and command-line passes (`sync-profiles`), and
//! a counter is a process fact anyway. Gauges that describe the database
//! (queue depth, people by state) are not kept here but read from the store
//! at scrape time, so they are right on every replica and in tests that run
//! several services in one process.
//!
//! Label values are always from small fixed sets (outcomes, error codes,
//! endpoint names, route patterns): never user ids, paths with ids, or
//! anything a caller controls.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Seconds; Synapse calls range from a few ms (lookups) to seconds (media,
/// bcrypt at registration) up to the client timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

struct Metrics {
    registry: Registry,
    webhooks: IntCounterVec,
    synapse_calls: IntCounterVec,
    synapse_latency: HistogramVec,
    provisioning: IntCounterVec,
    jobs: IntCounterVec,
    sync: IntCounterVec,
    token_exchanges: IntCounterVec,
    sign_ins: IntCounterVec,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    messages: IntCounterVec,
    transactions: IntCounterVec,
    city_delay: HistogramVec,
    city_deliveries: IntCounterVec,
    nats_messages: IntCounterVec,
    admin_token_refusals: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let histogram_in = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            histogram_in(name, help, labels, LATENCY_BUCKETS)
        };
        Metrics {
            webhooks: counter(
                "matrix_provisioner_webhooks_total",
                "Webhook deliveries by outcome (accepted, duplicate, ignored, refused) and error code of refusals.",
                &["outcome", "code"],
            ),
            synapse_calls: counter(
                "matrix_provisioner_synapse_requests_total",
                "Requests sent to Synapse by endpoint and outcome (ok, unavailable, refused).",
                &["endpoint", "outcome"],
            ),
            synapse_latency: histogram(
                "matrix_provisioner_synapse_request_duration_seconds",
                "Time from sending a request to Synapse to having read its answer.",
                &["endpoint", "outcome"],
            ),
            provisioning: counter(
                "matrix_provisioner_provisioning_total",
                "Worker job outcomes: done (by the person's resulting state), retry, failed.",
                &["outcome", "state"],
            ),
            jobs: counter(
                "matrix_provisioner_jobs_total",
                "Worker job outcomes by kind of subject (person, room): done (by the subject's resulting state), retry, wait, failed.",
                &["kind", "outcome", "state"],
            ),
            sync: counter(
                "matrix_provisioner_profile_sync_total",
                "Profile sync results by outcome.",
                &["outcome"],
            ),
            token_exchanges: counter(
                "matrix_provisioner_token_exchanges_total",
                "SSO token exchanges by kind (login_token, session) and outcome (ok or the error code).",
                &["kind", "outcome"],
            ),
            sign_ins: counter(
                "matrix_provisioner_sign_ins_total",
                "Steps of \"Continue with DAARION\" (authorize, return, continue, token) by outcome (ok, or what went wrong).",
                &["step", "outcome"],
            ),
            http_requests: counter(
                "matrix_provisioner_http_requests_total",
                "HTTP requests served, by route pattern and status code.",
                &["route", "status"],
            ),
            http_latency: histogram(
                "matrix_provisioner_http_request_duration_seconds",
                "Time to answer HTTP requests, by route pattern.",
                &["route"],
            ),
            messages: counter(
                "matrix_provisioner_messages_total",
                "Messages by direction (to_matrix: agents' messages; to_city: people's messages and presence for DAARION.city) and outcome (sent, failed, delivered, retried).",
                &["direction", "outcome"],
            ),
            transactions: counter(
                "matrix_provisioner_appservice_transactions_total",
                "Transactions from Synapse by outcome (applied, duplicate, refused, unavailable).",
                &["outcome"],
            ),
            city_delay: histogram_in(
                "matrix_provisioner_city_delivery_delay_seconds",
                "Time from Synapse's transaction to DAARION.city's 2xx, per event.",
                &[],
                DELAY_BUCKETS,
            ),
            city_deliveries: counter(
                "matrix_provisioner_city_deliveries_total",
                "Events for DAARION.city by transport (http: CITY_EVENTS_URL; nats: JetStream) and outcome (delivered; duplicate: JetStream had the id already; retried).",
                &["transport", "outcome"],
            ),
            nats_messages: counter(
                "matrix_provisioner_nats_messages_total",
                "Messages taken from JetStream by stream and outcome (accepted, duplicate, ignored; dead: refused, copied to the dead-letter subject and terminated, with the error code; retried: handed back because the event could not be stored).",
                &["stream", "outcome", "code"],
            ),
            admin_token_refusals: {
                let c = counter(
                    "matrix_provisioner_synapse_admin_token_refusals_total",
                    "Synapse refusing the service's admin token, by reason: unknown_token (an admin API call answered M_UNKNOWN_TOKEN; the service takes or obtains another), replacement_refused (the token taken or obtained instead was refused too), login_refused (logging the admin account in, or registering it, was refused: no token can be obtained).",
                    &["reason"],
                );
                // Every reason present from the start, so an alert sees the first
                // refusal as an increase from 0 (deploy/prometheus/alerts.yml).
                for reason in ADMIN_TOKEN_REFUSALS {
                    c.with_label_values(&[reason]);
                }
                c
            },
            registry,
        }
    }
}

/// The reasons of [`admin_token_refused`].
const ADMIN_TOKEN_REFUSALS: [&str; 3] = ["unknown_token", "replacement_refused", "login_refused"];

/// Seconds; from a few ms (DAARION.city up) to an hour (down for a while).
const DELAY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
];

/// A message either way: `direction` is `to_matrix` or `to_city`;
/// `outcome` is `sent`, `failed`, `delivered` or `retried`.
pub fn message(direction: &str, outcome: &str) {
    METRICS
        .messages
        .with_label_values(&[direction, outcome])
        .inc();
}

/// A transaction from Synapse: `applied`, `duplicate`, `refused`, `unavailable`.
pub fn transaction(outcome: &str) {
    METRICS.transactions.with_label_values(&[outcome]).inc();
}

/// Synapse refused the admin token (`unknown_token`), the one taken or
/// obtained instead (`replacement_refused`), or the login or registration
/// that would obtain one (`login_refused`).
pub fn admin_token_refused(reason: &str) {
    debug_assert!(ADMIN_TOKEN_REFUSALS.contains(&reason), "{reason}");
    METRICS
        .admin_token_refusals
        .with_label_values(&[reason])
        .inc();
}

/// An event reached DAARION.city `ms` after Synapse's transaction brought it.
pub fn city_delivery_delay(ms: i64) {
    METRICS
        .city_delay
        .with_label_values::<&str>(&[])
        .observe(ms.max(0) as f64 / 1000.0);
}

/// An event for DAARION.city taken or not by one transport: `transport`
/// is `http` or `nats`; `outcome` is `delivered`, `duplicate` or `retried`.
pub fn city_delivery(transport: &str, outcome: &str) {
    METRICS
        .city_deliveries
        .with_label_values(&[transport, outcome])
        .inc();
}

/// A message taken from JetStream's `stream`: `outcome` is `accepted`,
/// `duplicate`, `ignored`, `dead` (with the refusal's `code`) or `retried`.
pub fn nats_message(stream: &str, outcome: &str, code: &str) {
    METRICS
        .nats_messages
        .with_label_values(&[stream, outcome, code])
        .inc();
}

/// A webhook delivery: `outcome` is `accepted`, `duplicate`, `ignored` or
/// `refused`; `code` is the error code of a refusal, else empty.
pub fn webhook(outcome: &str, code: &str) {
    METRICS.webhooks.with_label_values(&[outcome, code]).inc();
}

/// One request to Synapse. `endpoint` is a fixed name (see
/// `synapse::endpoint_name`), `outcome` is `ok`, `unavailable` or `refused`.
pub fn synapse_call(endpoint: &str, outcome: &str, elapsed: Duration) {
    METRICS
        .synapse_calls
        .with_label_values(&[endpoint, outcome])
        .inc();
    METRICS
        .synapse_latency
        .with_label_values(&[endpoint, outcome])
        .observe(elapsed.as_secs_f64());
}

/// A worker job's outcome: `done` (with the subject's resulting `state`),
/// `retry`, `wait` or `failed`. People's jobs are also counted in the
/// older `matrix_provisioner_provisioning_total`, which dashboards use.
pub fn job(kind: &str, outcome: &str, state: &str) {
    METRICS
        .jobs
        .with_label_values(&[kind, outcome, state])
        .inc();
    if kind == "person" {
        METRICS
            .provisioning
            .with_label_values(&[outcome, state])
            .inc();
    }
}

/// Profile sync results, e.g. `updated`, `unchanged`, `failed`, `deactivated`
/// (the sync pass chooses; keep the set small). `n` at once for summaries.
pub fn sync(outcome: &str, n: u64) {
    METRICS.sync.with_label_values(&[outcome]).inc_by(n);
}

/// An SSO token exchange: `kind` is `login_token` or `session`, `outcome`
/// is `ok` or the error code answered (`invalid_token`, `user_deactivated`,
/// `homeserver_unavailable`, …).
pub fn token_exchange(kind: &str, outcome: &str) {
    METRICS
        .token_exchanges
        .with_label_values(&[kind, outcome])
        .inc();
}

/// A step of the OpenID sign-in: `step` is `authorize`, `return`,
/// `review`, `confirm` or `token`; `outcome` is `ok` or a fixed word for what went
/// wrong.
pub fn sign_in(step: &str, outcome: &str) {
    METRICS.sign_ins.with_label_values(&[step, outcome]).inc();
}

/// An HTTP request answered; `route` is the matched pattern
/// (`/v1/users/{user_id}`), or `unmatched`.
pub fn http_request(route: &str, status: u16, elapsed: Duration) {
    METRICS
        .http_requests
        .with_label_values(&[route, &status.to_string()])
        .inc();
    METRICS
        .http_latency
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
}

/// What the database says at scrape time, as plain numbers (the HTTP
/// layer reads them; this module knows no store type).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Jobs by state: `ready`, `scheduled`, `running`, `failed`.
    pub queue: Vec<(&'static str, i64)>,
    pub people: Vec<(String, i64)>,
    pub rooms: Vec<(String, i64)>,
    pub agents: Vec<(String, i64)>,
    /// Messages not delivered yet, by direction (`to_matrix`, `to_city`)
    /// and state (`pending`, `failed`).
    pub outbox: Vec<(&'static str, &'static str, i64)>,
    /// Age in seconds of the oldest message not delivered yet, by
    /// direction (0: none).
    pub outbox_oldest_seconds: Vec<(&'static str, i64)>,
}

/// What the NATS connection says at scrape time (present when NATS is
/// configured).
#[derive(Debug, Clone, Default)]
pub struct NatsGauges {
    pub connected: bool,
    /// Messages of each inbound stream not handed to the consumer yet.
    pub pending: Vec<(String, i64)>,
}

/// The Prometheus text exposition of every metric, plus the gauges read
/// at scrape time: whether Synapse answered its health check, what the
/// database says (`snapshot`; None when it could not be read: those gauges
/// are left out rather than reporting stale numbers), and NATS's connection
/// and consumer lag (`nats`; None when NATS is not configured). The gauges
/// are built per scrape, so concurrent scrapes of different services never
/// mix.
pub fn render(
    snapshot: Option<Snapshot>,
    synapse_reachable: bool,
    nats: Option<NatsGauges>,
) -> String {
    let mut families = METRICS.registry.gather();
    let reachable = prometheus::IntGauge::new(
        "matrix_provisioner_synapse_reachable",
        "1 when Synapse answered its health check at scrape time, else 0 (webhooks are still accepted and queued).",
    )
    .expect("valid metric");
    reachable.set(synapse_reachable as i64);
    families.extend(reachable.collect());
    if let Some(nats) = nats {
        let connected = prometheus::IntGauge::new(
            "matrix_provisioner_nats_connected",
            "1 while the connection to NATS is up, else 0 (present when NATS_URL is set).",
        )
        .expect("valid metric");
        connected.set(nats.connected as i64);
        families.extend(connected.collect());
        let pending = IntGaugeVec::new(
            Opts::new(
                "matrix_provisioner_nats_consumer_pending",
                "Messages of each inbound JetStream stream not yet handed to the service's consumer (its lag), as last seen.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        for (stream, n) in &nats.pending {
            pending.with_label_values(&[stream]).set(*n);
        }
        // Unknown until a consumer was seen (an empty family does not
        // encode).
        if !nats.pending.is_empty() {
            families.extend(pending.collect());
        }
    }
    if let Some(s) = snapshot {
        families.extend(database_gauges(s));
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding of metrics cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The gauges of a database snapshot. Every state of people, rooms and
/// agents is always present, so dashboards see zeros, not gaps.
fn database_gauges(s: Snapshot) -> Vec<prometheus::proto::MetricFamily> {
    let by_state = |name: &str, help: &str, always: &[&str], counts: &[(String, i64)]| {
        let gauge = IntGaugeVec::new(Opts::new(name, help), &["state"]).expect("valid metric");
        for state in always {
            gauge.with_label_values(&[state]).set(0);
        }
        for (state, n) in counts {
            gauge.with_label_values(&[state]).set(*n);
        }
        gauge.collect()
    };
    let queue: Vec<(String, i64)> = s.queue.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    let mut families = by_state(
        "matrix_provisioner_queue_jobs",
        "Jobs in the durable queue by state (ready, scheduled, running, failed), read at scrape time.",
        &[],
        &queue,
    );
    families.extend(by_state(
        "matrix_provisioner_people",
        "People known to the service by state (pending, provisioned, failed, deactivated), read at scrape time.",
        &["pending", "provisioned", "failed", "deactivated"],
        &s.people,
    ));
    families.extend(by_state(
        "matrix_provisioner_rooms",
        "City Rooms known to the service by state (pending, ready, closed, failed), read at scrape time.",
        &["pending", "ready", "closed", "failed"],
        &s.rooms,
    ));
    families.extend(by_state(
        "matrix_provisioner_agents",
        "Agents known to the service by state (pending, ready, deactivated, failed), read at scrape time.",
        &["pending", "ready", "deactivated", "failed"],
        &s.agents,
    ));
    let outbox = IntGaugeVec::new(
        Opts::new(
            "matrix_provisioner_outbox_messages",
            "Messages not delivered yet by direction (to_matrix, to_city) and state (pending, failed), read at scrape time.",
        ),
        &["direction", "state"],
    )
    .expect("valid metric");
    for (direction, state, n) in &s.outbox {
        outbox.with_label_values(&[direction, state]).set(*n);
    }
    let oldest = IntGaugeVec::new(
        Opts::new(
            "matrix_provisioner_outbox_oldest_seconds",
            "Age of the oldest message not delivered yet, by direction (0: none), read at scrape time.",
        ),
        &["direction"],
    )
    .expect("valid metric");
    for (direction, seconds) in &s.outbox_oldest_seconds {
        oldest.with_label_values(&[direction]).set(*seconds);
    }
    families.extend(outbox.collect());
    families.extend(oldest.collect());
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_in_text_format() {
        webhook("refused", "invalid_signature");
        synapse_call("admin_user_get", "ok", Duration::from_millis(12));
        job("person", "done", "provisioned");
        sync("updated", 3);
        token_exchange("login_token", "ok");
        admin_token_refused("login_refused");
        let text = render(
            Some(Snapshot {
                queue: vec![
                    ("ready", 2),
                    ("scheduled", 1),
                    ("running", 0),
                    ("failed", 4),
                ],
                people: vec![("provisioned".into(), 7)],
                rooms: vec![("ready".into(), 3)],
                agents: vec![("ready".into(), 2)],
                outbox: vec![("to_city", "pending", 5), ("to_matrix", "pending", 0)],
                outbox_oldest_seconds: vec![("to_city", 60), ("to_matrix", 0)],
            }),
            true,
            Some(NatsGauges {
                connected: true,
                pending: vec![("DAARION_CITY".into(), 12)],
            }),
        );
        nats_message("DAARION_AUTH", "dead", "bad_request");
        city_delivery("nats", "delivered");
        let bare = render(None, true, None);
        assert!(bare.contains(
            r#"matrix_provisioner_nats_messages_total{code="bad_request",outcome="dead",stream="DAARION_AUTH"}"#
        ));
        assert!(bare.contains(
            r#"matrix_provisioner_city_deliveries_total{outcome="delivered",transport="nats"}"#
        ));
        // Without NATS configured, no NATS gauge.
        assert!(!bare.contains("matrix_provisioner_nats_connected"));
        // Never connected: no lag known yet.
        let never = render(None, true, Some(NatsGauges::default()));
        assert!(never.contains("matrix_provisioner_nats_connected 0"));
        assert!(!never.contains("matrix_provisioner_nats_consumer_pending"));
        for line in [
            r#"matrix_provisioner_webhooks_total{code="invalid_signature",outcome="refused"}"#,
            r#"matrix_provisioner_synapse_requests_total{endpoint="admin_user_get",outcome="ok"}"#,
            r#"matrix_provisioner_synapse_request_duration_seconds_bucket{endpoint="admin_user_get",outcome="ok",le="0.025"}"#,
            r#"matrix_provisioner_provisioning_total{outcome="done",state="provisioned"}"#,
            r#"matrix_provisioner_profile_sync_total{outcome="updated"}"#,
            r#"matrix_provisioner_rooms{state="ready"} 3"#,
            r#"matrix_provisioner_rooms{state="closed"} 0"#,
            r#"matrix_provisioner_jobs_total{kind="person",outcome="done",state="provisioned"}"#,
            r#"matrix_provisioner_token_exchanges_total{kind="login_token",outcome="ok"}"#,
            r#"matrix_provisioner_queue_jobs{state="failed"} 4"#,
            r#"matrix_provisioner_people{state="provisioned"} 7"#,
            r#"matrix_provisioner_people{state="pending"} 0"#,
            "matrix_provisioner_synapse_reachable 1",
            // Present before any refusal (alerts see the first one).
            r#"matrix_provisioner_synapse_admin_token_refusals_total{reason="unknown_token"}"#,
            r#"matrix_provisioner_synapse_admin_token_refusals_total{reason="replacement_refused"}"#,
            r#"matrix_provisioner_synapse_admin_token_refusals_total{reason="login_refused"}"#,
            r#"matrix_provisioner_agents{state="ready"} 2"#,
            r#"matrix_provisioner_outbox_messages{direction="to_city",state="pending"} 5"#,
            r#"matrix_provisioner_outbox_oldest_seconds{direction="to_city"} 60"#,
            "matrix_provisioner_nats_connected 1",
            r#"matrix_provisioner_nats_consumer_pending{stream="DAARION_CITY"} 12"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Without a snapshot the database gauges are absent, not stale.
        let text = render(None, false, None);
        assert!(!text.contains("matrix_provisioner_queue_jobs{"));
        assert!(text.contains("matrix_provisioner_synapse_reachable 0"));
    }
}
