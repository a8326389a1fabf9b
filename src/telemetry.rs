//! Logging and request ids. Lines are readable by default and JSON with
//! `LOG_FORMAT=json`; the level comes from `RUST_LOG` (default `info`).
//!
//! Libraries that may print request details at debug/trace (hyper, reqwest,
//! h2, rustls, sqlx, actix) are capped unless `RUST_LOG` names them itself:
//! `RUST_LOG=debug` shows our own debug lines, not every header and SQL
//! statement of the process.
//!
//! The request id of the HTTP request (or worker job) being served lives in
//! a task-local, so the Synapse client can forward it without every function
//! in between passing it along; the same id is a field of the enclosing
//! tracing span, so every log line of the request carries it.

use std::future::Future;

use rand::Rng;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The header a caller may set, and that we return and forward to Synapse.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Targets capped at the given level unless `RUST_LOG` mentions them.
const QUIET: &[(&str, &str)] = &[
    ("sqlx", "warn"),
    ("hyper", "info"),
    ("hyper_util", "info"),
    ("h2", "info"),
    ("reqwest", "info"),
    ("rustls", "info"),
    ("mio", "info"),
    ("actix_http", "info"),
    ("actix_server", "warn"),
];

pub fn init(format: LogFormat) {
    let filter = EnvFilter::new(filter_directives(std::env::var("RUST_LOG").ok().as_deref()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests build several apps in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `RUST_LOG` (or `info`) plus a cap for each quiet target it does not name.
fn filter_directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let mut directives = vec![base.to_string()];
    for (target, level) in QUIET {
        let named = base.split(',').any(|d| {
            let name = d.split(['=', '[']).next().unwrap_or("").trim();
            name == *target || name.starts_with(&format!("{target}::"))
        });
        if !named {
            directives.push(format!("{target}={level}"));
        }
    }
    directives.join(",")
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request or job this task is serving, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(String::clone).ok()
}

/// Runs `future` with `id` as the current request id.
pub async fn with_request_id<F: Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// `tokio::spawn` for work a request or job starts: the task carries the
/// current request id (forwarded to Synapse as `X-Request-Id`) and runs in
/// the current tracing span, so its log lines and Synapse calls are the
/// request's. A bare `tokio::spawn` starts with neither.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let future = future.instrument(tracing::Span::current());
    match request_id() {
        Some(id) => tokio::spawn(REQUEST_ID.scope(id, future)),
        None => tokio::spawn(future),
    }
}

/// A fresh id: 16 random hex digits (64 bits: unique enough to find a
/// request in the logs, short enough to read).
pub fn new_request_id() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// A caller's id is kept if it is at most 64 characters of
/// `[A-Za-z0-9-_.]`: anything else could forge log lines or carry junk.
pub fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_libraries_are_capped_unless_named() {
        let d = filter_directives(Some("debug"));
        assert!(d.starts_with("debug,"));
        assert!(d.contains("sqlx=warn") && d.contains("hyper=info") && d.contains("reqwest=info"));
        let d = filter_directives(Some("debug,reqwest=trace"));
        assert!(d.contains("reqwest=trace") && !d.contains("reqwest=info"));
        assert!(d.contains("hyper_util=info"));
        assert!(filter_directives(None).starts_with("info,"));
        assert!(filter_directives(Some("  ")).starts_with("info,"));
        // The result parses.
        let _ = EnvFilter::try_new(filter_directives(Some("debug,sqlx::query=info"))).unwrap();
    }

    #[test]
    fn request_ids_from_callers_are_checked() {
        assert!(is_sane_request_id("abc-DEF_123.x"));
        assert!(is_sane_request_id(&"a".repeat(64)));
        assert!(!is_sane_request_id(&"a".repeat(65)));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id("a b"));
        assert!(!is_sane_request_id("a\nb"));
        assert!(!is_sane_request_id("ünï"));
        let id = new_request_id();
        assert_eq!(id.len(), 16);
        assert!(is_sane_request_id(&id));
    }

    #[tokio::test]
    async fn the_request_id_is_task_local() {
        assert_eq!(request_id(), None);
        let inner = with_request_id("r1".into(), async { request_id() }).await;
        assert_eq!(inner.as_deref(), Some("r1"));
        assert_eq!(request_id(), None);
    }

    #[tokio::test]
    async fn spawned_work_keeps_the_request_id() {
        let seen = with_request_id("r2".into(), async {
            spawn(async { request_id() }).await.unwrap()
        })
        .await;
        assert_eq!(seen.as_deref(), Some("r2"));
        assert_eq!(spawn(async { request_id() }).await.unwrap(), None);
    }
}
