//! What every outbound HTTP client of the service starts from: its name
//! in `User-Agent`, a deadline per request, and at most 5 s to connect.
//! Each client adds its own rules (the avatar fetcher: no redirects, no
//! proxy, its resolver) before building.

use std::time::Duration;

/// A client builder with the service's defaults; `timeout` bounds each
/// request, answer included.
pub fn client(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("matrix-provisioner/", env!("CARGO_PKG_VERSION")))
}
