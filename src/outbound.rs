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

/// Why a body was not read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("is too large")]
    TooLarge,
    #[error("broke off")]
    BrokeOff,
}

/// The body, at most `limit` bytes of it. A declared length over the limit
/// is refused unread; a body without one (chunked) is read a chunk at a
/// time and given up as soon as it passes the limit, so an answer of no
/// stated size is never taken in whole just to find it too large.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(16 * 1024).min(limit as u64) as usize);
    while let Some(chunk) = response.chunk().await.map_err(|_| ReadError::BrokeOff)? {
        if body.len() + chunk.len() > limit {
            // Dropping the response closes the connection: nothing more is read.
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
