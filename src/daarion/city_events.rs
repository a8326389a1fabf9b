//! DAARION.city's receiver of what happens in Matrix (CONTRACT.md section
//! 9, `CITY_EVENTS_URL`): events POSTed with the envelope and signature of
//! section 2, signed with the first key of `CITY_WEBHOOK_SECRET`.

use chrono::Utc;
use reqwest::StatusCode;
use url::Url;

use crate::config::Settings;
use crate::secret::Secret;

/// Why DAARION.city's event receiver did not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("DAARION.city's event receiver timed out")]
    TimedOut,
    #[error("DAARION.city's event receiver cannot be connected to")]
    CannotConnect,
    #[error("the request to DAARION.city's event receiver failed")]
    RequestFailed,
    /// Anything but a `2xx`.
    #[error("DAARION.city's event receiver answered {0}")]
    Refused(StatusCode),
}

pub struct CityEvents {
    http: reqwest::Client,
    url: Url,
    secret: Secret,
}

impl std::fmt::Debug for CityEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CityEvents")
            .field("url", &crate::secret::redact_url(self.url.as_str()))
            .finish()
    }
}

impl CityEvents {
    /// None when `CITY_EVENTS_URL` is not set. It needs a key to sign with.
    pub fn new(settings: &Settings) -> anyhow::Result<Option<CityEvents>> {
        let Some(url) = settings.city.events_url.clone() else {
            return Ok(None);
        };
        let secret = settings
            .city
            .webhook_secrets
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("CITY_EVENTS_URL needs CITY_WEBHOOK_SECRET to sign"))?;
        let http = super::client()?;
        Ok(Some(CityEvents { http, url, secret }))
    }

    /// POSTs one event (`body`, the envelope as JSON); Err says why it was
    /// not taken.
    pub async fn deliver(&self, body: &str) -> Result<(), DeliveryError> {
        let t = Utc::now().timestamp();
        let signature = crate::domain::signature::sign(self.secret.expose(), t, body.as_bytes());
        let response = self
            .http
            .post(self.url.clone())
            .header("Content-Type", "application/json")
            .header(crate::domain::signature::HEADER, signature)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    DeliveryError::TimedOut
                } else if e.is_connect() {
                    DeliveryError::CannotConnect
                } else {
                    DeliveryError::RequestFailed
                }
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Refused(status))
        }
    }
}
