//! DAARION Auth's login API as it runs (CONTRACT.md section 10):
//! `POST {AUTH_PASSWORD_LOGIN_URL}` with `{"email", "password"}`. The
//! password passes through here once, inside the request body, and is kept
//! nowhere; the tokens of the answer are [`Secret`]s.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::secret::Secret;

/// A sign-in is a person waiting: DAARION gets less time than a listing.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read: a login answer is well under a kilobyte.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What DAARION Auth said about an email and password.
pub enum LoginAnswer {
    /// The person, with their access token (to be verified like any other)
    /// and refresh token (whose `session_id` names the DAARION session).
    SignedIn {
        access_token: Secret,
        refresh_token: Secret,
        user: LoginUser,
    },
    /// `401`: wrong email or password.
    WrongPassword,
    /// `403`: the person is not active.
    Inactive,
    /// Anything else: DAARION cannot answer now (the reason is for logs).
    Unavailable(String),
}

impl std::fmt::Debug for LoginAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginAnswer::SignedIn { user, .. } => f
                .debug_struct("SignedIn")
                .field("user", user)
                .finish_non_exhaustive(),
            LoginAnswer::WrongPassword => f.write_str("WrongPassword"),
            LoginAnswer::Inactive => f.write_str("Inactive"),
            LoginAnswer::Unavailable(reason) => f.debug_tuple("Unavailable").field(reason).finish(),
        }
    }
}

/// The `user` of a successful login.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginUser {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default = "active")]
    pub is_active: bool,
}

fn active() -> bool {
    true
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    refresh_token: String,
    user: LoginUser,
}

/// The client of the login API.
#[derive(Clone)]
pub struct LoginApi {
    url: Url,
    http: reqwest::Client,
}

impl LoginApi {
    pub fn new(url: Url) -> anyhow::Result<LoginApi> {
        Ok(LoginApi {
            url,
            http: crate::outbound::client(TIMEOUT).build()?,
        })
    }

    /// Asks DAARION Auth whether `password` is the password of `email`.
    pub async fn login(&self, email: &str, password: &Secret) -> LoginAnswer {
        let body = serde_json::json!({"email": email, "password": password.expose()});
        let response = match self.http.post(self.url.clone()).json(&body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return unavailable("timed out"),
            Err(_) => return unavailable("cannot be reached"),
        };
        drop(body);
        let status = response.status();
        let bytes = match crate::outbound::read_capped(response, MAX_ANSWER_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) => return unavailable(&format!("broke off its answer ({e})")),
        };
        match status {
            StatusCode::OK => match serde_json::from_slice::<Answer>(&bytes) {
                Ok(a) => LoginAnswer::SignedIn {
                    access_token: Secret::new(a.access_token),
                    refresh_token: Secret::new(a.refresh_token),
                    user: a.user,
                },
                Err(e) => unavailable(&format!("answered 200 without a login in it: {e}")),
            },
            StatusCode::UNAUTHORIZED => LoginAnswer::WrongPassword,
            StatusCode::FORBIDDEN => LoginAnswer::Inactive,
            other => unavailable(&format!("answered {other}")),
        }
    }
}

fn unavailable(reason: &str) -> LoginAnswer {
    LoginAnswer::Unavailable(format!("DAARION Auth's login API {reason}"))
}
