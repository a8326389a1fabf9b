//! The OpenID Connect provider that Synapse's single sign-on uses
//! (CONTRACT.md section 7): authorization code flow with PKCE, DAARION Auth
//! behind it, and back-channel logout. `http::oidc` parses requests and
//! renders pages; the steps of a sign-in and their rules are here:
//!
//! 1. [`Provider::authorize`]: Synapse sends the browser with its client id,
//!    redirect URI, state, nonce and PKCE challenge; we keep them as a
//!    sign-in under way, bound to this browser by a cookie, and send the
//!    browser to DAARION's sign-in page with our own single-use `state`.
//! 2. [`Provider::returned`]: DAARION posts an access token (or
//!    `access_denied`) back; it is checked exactly as section 3 checks one,
//!    and the browser that brought it gets a one-time proof.
//! 3. [`Provider::review`]: only a browser holding both the cookie of step 1
//!    and the proof of step 2 gets on: the person's account is made sure of
//!    (created now if needed) and they see, on our origin, whom they are
//!    about to be signed in as. [`Provider::finish`]: they confirm (the same
//!    cookie and proof again), and only then is a code issued and the
//!    browser sent back to Synapse.
//! 4. [`Provider::token`]: Synapse redeems the code, once, for an ID token.
//!
//! Why both the cookie and the proof: DAARION "uses its own session", so a
//! sign-in link (step 1's redirect, with our `state`) that one person sends
//! to another would otherwise let the sender's browser finish the sign-in
//! with the receiver's DAARION session. The cookie lives only in the
//! starting browser, the proof only in the browser DAARION answered in;
//! a browser with one and not the other ends the sign-in.
//!
//! Codes, states, proofs and access tokens are random, kept as hashes, in
//! the database, so any replica can serve any step.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use crate::accounts::{AccountError, Accounts, PasswordError};
use crate::config::Settings;
use crate::secret::Secret;
use crate::signing::{random_secret, Signer, ID_TOKEN_TTL_S};
use crate::sso::{Claims, Refusal, Sso};
use crate::store::{
    Begun, CodeGrant, Pending, Returned, Review, SignInLimits, Store, StoreError, TokenOwner,
};

/// How long a browser has from Synapse's redirect to coming back from DAARION.
const SIGN_IN_TTL_MS: i64 = 10 * 60 * 1000;
/// Codes are redeemed by Synapse at once; a minute is plenty.
const CODE_TTL_MS: i64 = 60 * 1000;
const ACCESS_TOKEN_TTL_S: i64 = 10 * 60;
/// A replaced key stays published this long: tokens it signed live 5
/// minutes, and Synapse allows 2 more of leeway.
const KEEP_RETIRED_KEY_MS: i64 = 60 * 60 * 1000;
/// How long a published key set is reused before reading it again.
const JWKS_CACHE_MS: i64 = 5_000;
/// The longest `state` and `nonce` a client may have kept for it. Synapse
/// sends about 40 characters; anything longer is refused before anything
/// is stored.
pub const MAX_CLIENT_VALUE_BYTES: usize = 512;
/// Sign-ins under way at once (each lives [`SIGN_IN_TTL_MS`]): from one
/// client address (a busy office behind one address stays far below), and
/// in all. Beyond them authorize answers "too many" and stores nothing.
const SIGN_IN_LIMITS: SignInLimits = SignInLimits {
    per_address: 100,
    total: 20_000,
};

/// Where a person proves who they are (step 1's destination).
enum SignInStep {
    /// DAARION's hosted page (`AUTH_LOGIN_URL`), which posts an access
    /// token back to `/v1/sso/return`.
    DaarionPage(Url),
    /// The service's own page, `/v1/sso/sign-in` (email and password,
    /// checked with DAARION Auth's login API), when DAARION has no page.
    OwnPage,
}

pub struct Provider {
    signer: Arc<Signer>,
    client_secret: Secret,
    redirect_uris: Vec<String>,
    step: SignInStep,
    /// `{PUBLIC_URL}/v1/sso/return`, where DAARION hands the person back.
    return_to: String,
    /// Where the browser-binding cookie is sent: `{PUBLIC_URL path}/v1/sso/`.
    cookie_path: String,
    secure_cookies: bool,
    /// `SIGN_IN_START_URL`.
    start_url: Option<String>,
    store: Store,
    jwks: std::sync::Mutex<Option<(i64, Value)>>,
}

/// A browser sign-in step that did not get through, for a page of its own.
#[derive(Debug, PartialEq, Eq)]
pub enum SignInError {
    /// Unknown client, or a redirect URI not listed: nobody to send back to.
    BadRequest(String),
    /// The sign-in expired or was used already.
    Expired,
    /// DAARION's answer and the start of the sign-in are in two browsers:
    /// the sign-in was ended (someone may have sent this link).
    OtherBrowser,
    /// Too many sign-ins under way from this address, or in all.
    TooMany {
        retry_after: u64,
    },
    /// The person said "not me" on the confirmation page.
    Cancelled,
    /// The own sign-in page: DAARION says the email or password is wrong.
    WrongPassword,
    /// The own sign-in page: too many failed attempts for this account or
    /// from this address.
    Limited {
        retry_after: u64,
    },
    /// The own sign-in page: DAARION Auth cannot check passwords now.
    DaarionUnavailable {
        retry_after: u64,
    },
    /// DAARION refused: the person gave up, or the token is not valid.
    Refused,
    Deactivated,
    Unavailable {
        retry_after: u64,
    },
    Failed,
}

/// A token-endpoint refusal (RFC 6749 section 5.2).
#[derive(Debug, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }

    fn invalid_grant(description: &str) -> OAuthError {
        OAuthError::new(400, "invalid_grant", description)
    }
}

/// Where to send the browser next, and the cookie binding a new sign-in
/// to it (name, value).
#[derive(Debug)]
pub struct Next {
    pub location: String,
    pub cookie: Option<(String, Secret)>,
}

/// Whom a sign-in is about to sign in, for the person to confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub localpart: String,
    pub display_name: Option<String>,
    /// The origin the browser goes on to (Synapse's), which the
    /// confirmation form must be allowed to reach.
    pub client_origin: String,
}

/// The token endpoint's answer. No `Debug`: it is made of secrets.
#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub id_token: String,
    pub scope: &'static str,
}

impl Provider {
    pub fn new(settings: &Settings, signer: Arc<Signer>, store: Store) -> Option<Provider> {
        let oidc = &settings.oidc;
        let public_url = oidc.public_url.clone()?;
        let base = public_url.as_str().trim_end_matches('/').to_string();
        let step = match (&oidc.auth_login_url, &settings.auth_password_login_url) {
            (Some(url), _) => SignInStep::DaarionPage(url.clone()),
            (None, Some(_)) => SignInStep::OwnPage,
            (None, None) => return None,
        };
        Some(Provider {
            signer,
            client_secret: oidc.client_secret.clone()?,
            redirect_uris: oidc.redirect_uris.clone(),
            step,
            return_to: format!("{base}/v1/sso/return"),
            cookie_path: format!("{}/v1/sso/", public_url.path().trim_end_matches('/')),
            secure_cookies: public_url.scheme() == "https",
            start_url: oidc.sign_in_start_url.as_ref().map(|u| u.to_string()),
            store,
            jwks: std::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        self.signer.issuer()
    }

    /// Now, by the clock the signer dates its tokens with.
    fn now_ms(&self) -> i64 {
        self.signer.clock().now_ms()
    }

    /// Where the binding cookie is sent. `/` on https: the `__Host-`
    /// prefix (see [`Provider::cookie_name`]) requires it.
    pub fn cookie_path(&self) -> &str {
        if self.secure_cookies {
            "/"
        } else {
            &self.cookie_path
        }
    }

    /// The name of the cookie that binds the sign-in with this state to the
    /// browser: one per sign-in, so two tabs do not undo each other. On
    /// https it is a `__Host-` cookie, which only this origin itself can
    /// set: a sibling subdomain cannot plant one.
    pub fn cookie_name(&self, state: &str) -> String {
        let name = cookie_name(state);
        if self.secure_cookies {
            format!("__Host-{name}")
        } else {
            name
        }
    }

    /// `{PUBLIC_URL}/v1/sso/continue`, where the confirmation form posts.
    pub fn continue_url(&self) -> String {
        format!("{}/v1/sso/continue", self.issuer())
    }

    /// Where people start signing in, if the operator said
    /// (`SIGN_IN_START_URL`).
    pub fn start_url(&self) -> Option<&str> {
        self.start_url.as_deref()
    }

    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
    }

    pub fn discovery(&self) -> Value {
        let issuer = self.issuer();
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/oidc/authorize"),
            "token_endpoint": format!("{issuer}/oidc/token"),
            "jwks_uri": format!("{issuer}/oidc/jwks"),
            "userinfo_endpoint": format!("{issuer}/oidc/userinfo"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            // The key in use first; the others too, so that a Synapse that
            // read this document once (it keeps it until restarted) still
            // accepts tokens after the operator changes the kind of key.
            "id_token_signing_alg_values_supported": self.algorithms(),
            "scopes_supported": ["openid", "profile"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid",
                                 "preferred_username", "name"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "backchannel_logout_supported": true,
            "backchannel_logout_session_supported": true,
        })
    }

    fn algorithms(&self) -> Vec<&'static str> {
        let current = self.signer.alg_name();
        let mut algs = vec![current];
        algs.extend(
            ["RS256", "ES256", "EdDSA"]
                .into_iter()
                .filter(|a| *a != current),
        );
        algs
    }

    /// The published keys: the one in use and those retired less than an
    /// hour ago (read from the database, so every replica publishes the
    /// same set; reused for a few seconds).
    pub async fn jwks(&self) -> Result<Value, StoreError> {
        let now = self.now_ms();
        if let Some((at, jwks)) = self.jwks.lock().expect("never poisoned").clone() {
            if now - at < JWKS_CACHE_MS {
                return Ok(jwks);
            }
        }
        let keys: Vec<Value> = self
            .store
            .published_keys(now - KEEP_RETIRED_KEY_MS)
            .await?
            .iter()
            .filter_map(|k| serde_json::from_str(k).ok())
            .collect();
        let jwks = json!({ "keys": keys });
        *self.jwks.lock().expect("never poisoned") = Some((now, jwks.clone()));
        Ok(jwks)
    }

    /// Step 1: the authorization request (query parameters), from the
    /// browser at `client_addr`.
    pub async fn authorize(
        &self,
        q: &HashMap<String, String>,
        client_addr: &str,
    ) -> Result<Next, SignInError> {
        let client_id = q.get("client_id").map(String::as_str).unwrap_or("");
        if !bool::from(
            client_id
                .as_bytes()
                .ct_eq(self.signer.client_id().as_bytes()),
        ) {
            return Err(SignInError::BadRequest("unknown client".into()));
        }
        let redirect_uri = q.get("redirect_uri").map(String::as_str).unwrap_or("");
        if !self.redirect_uris.iter().any(|u| u == redirect_uri) {
            return Err(SignInError::BadRequest("redirect URI not allowed".into()));
        }
        let client_state = q.get("state").cloned();
        let nonce = q.get("nonce").cloned();
        // Kept for ten minutes for whoever asks: never more than a little.
        if [&client_state, &nonce]
            .iter()
            .any(|v| v.as_ref().is_some_and(|v| v.len() > MAX_CLIENT_VALUE_BYTES))
        {
            return Err(SignInError::BadRequest(format!(
                "state or nonce longer than {MAX_CLIENT_VALUE_BYTES} bytes"
            )));
        }
        // From here on, refusals go back to the client (RFC 6749 4.1.2.1).
        let back = |error: &str, description: &str| Next {
            location: with_query(
                redirect_uri,
                &[
                    ("error", Some(error)),
                    ("error_description", Some(description)),
                    ("state", client_state.as_deref()),
                ],
            ),
            cookie: None,
        };
        if q.get("response_type").map(String::as_str) != Some("code") {
            return Ok(back(
                "unsupported_response_type",
                "only the authorization code flow is offered",
            ));
        }
        let scopes = q.get("scope").map(String::as_str).unwrap_or("");
        if !scopes.split(' ').any(|s| s == "openid") {
            return Ok(back("invalid_scope", "the openid scope is required"));
        }
        let code_challenge = q.get("code_challenge").filter(|c| !c.is_empty()).cloned();
        let method = q.get("code_challenge_method").map(String::as_str);
        match (&code_challenge, method) {
            (None, None) => {}
            (Some(c), Some("S256")) if is_pkce_value(c) => {}
            (Some(_), Some("S256")) => {
                return Ok(back("invalid_request", "code_challenge is malformed"))
            }
            (None, Some(_)) => {
                return Ok(back(
                    "invalid_request",
                    "code_challenge_method without a code_challenge",
                ))
            }
            (Some(_), _) => {
                return Ok(back(
                    "invalid_request",
                    "only the S256 code challenge method is offered",
                ))
            }
        }
        let state = random_secret();
        let binding = random_secret();
        let pending = Pending {
            state_hash: digest(&state),
            binding_hash: digest(&binding),
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            client_state,
            nonce,
            code_challenge,
            person: None,
            proof_hash: None,
            client_addr: client_addr.to_string(),
            expires_at: self.now_ms() + SIGN_IN_TTL_MS,
        };
        let begun = self
            .store
            .begin_sign_in(&pending, SIGN_IN_LIMITS, self.now_ms())
            .await
            .map_err(|_| SignInError::Unavailable { retry_after: 5 })?;
        if begun == Begun::TooMany {
            tracing::warn!(client_addr, "too many sign-ins under way: refused");
            return Err(SignInError::TooMany {
                retry_after: (SIGN_IN_TTL_MS / 1000 / 10) as u64,
            });
        }
        let location = match &self.step {
            SignInStep::DaarionPage(url) => with_query(
                url.as_str(),
                &[
                    ("return_to", Some(&self.return_to)),
                    ("state", Some(&state)),
                ],
            ),
            SignInStep::OwnPage => with_query(&self.sign_in_url(), &[("state", Some(&state))]),
        };
        Ok(Next {
            location,
            cookie: Some((self.cookie_name(&state), Secret::new(binding))),
        })
    }

    /// Step 2: DAARION hands the person back (`access_token` or `error`,
    /// and our `state`). Only records who it is, and hands this browser a
    /// one-time proof; the browser then continues at [`Provider::review`]
    /// on our own origin, where its cookie is sent.
    pub async fn returned(
        &self,
        sso: &Sso,
        form: &HashMap<String, String>,
    ) -> Result<Next, SignInError> {
        let state = form.get("state").ok_or(SignInError::Expired)?;
        let state_hash = digest(state);
        let unavailable = |_| SignInError::Unavailable { retry_after: 5 };
        // DAARION said no, or handed back something that is not its token:
        // the sign-in ends (if it was one).
        let refuse = |state_hash: String| async move {
            match self.store.drop_sign_in(&state_hash, self.now_ms()).await {
                Ok(true) => Err(SignInError::Refused),
                Ok(false) => Err(SignInError::Expired),
                Err(e) => Err(unavailable(e)),
            }
        };
        let Some(token) = form.get("access_token").filter(|t| !t.is_empty()) else {
            // `error=access_denied`, or nothing usable.
            return refuse(state_hash).await;
        };
        let claims: Claims = match sso.verify(token).await {
            Ok(claims) => claims,
            Err(Refusal::Invalid(reason)) => {
                tracing::info!("DAARION's access token at sign-in is not valid: {reason}");
                return refuse(state_hash).await;
            }
            Err(Refusal::KeysUnavailable) => {
                return Err(SignInError::Unavailable { retry_after: 5 })
            }
        };
        self.hand_back(state, claims).await
    }

    /// `{PUBLIC_URL}/v1/sso/sign-in`, the service's own sign-in page.
    pub fn sign_in_url(&self) -> String {
        format!("{}/v1/sso/sign-in", self.issuer())
    }

    /// The form token of the own sign-in page for the browser holding
    /// `binding` (its cookie): only that browser can post the form.
    pub fn form_token(binding: &str) -> String {
        digest(&format!("sign-in-form:{binding}"))
    }

    /// Step 2 on the service's own page, first half: the sign-in with
    /// `state` is under way in this browser (`binding`, its cookie); the
    /// form token for its form. A browser without the cookie (a link sent
    /// by someone else) gets nothing; nor does anyone when DAARION has a
    /// page of its own (`AUTH_LOGIN_URL`): people sign in there, and this
    /// page must not be a way round it.
    pub async fn sign_in_form(
        &self,
        state: &str,
        binding: Option<&str>,
    ) -> Result<String, SignInError> {
        if !matches!(self.step, SignInStep::OwnPage) {
            return Err(SignInError::BadRequest(
                "the service's own sign-in page is not in use: AUTH_LOGIN_URL is set".into(),
            ));
        }
        let binding = binding.ok_or(SignInError::OtherBrowser)?;
        let bound = self
            .store
            .sign_in_bound(&digest(state), &digest(binding), self.now_ms())
            .await
            .map_err(|_| SignInError::Unavailable { retry_after: 5 })?;
        if !bound {
            return Err(SignInError::Expired);
        }
        Ok(Provider::form_token(binding))
    }

    /// Step 2 on the service's own page: the form's `email` and `password`,
    /// posted with `state` and the form token `form` by the browser holding
    /// `binding`, from `client`. DAARION Auth's login API checks them
    /// (`Accounts::sign_in_with_password`); the person and the DAARION
    /// session of that login are handed on as DAARION's page would.
    pub async fn password_sign_in(
        &self,
        accounts: &Accounts,
        sso: &Sso,
        form: &HashMap<String, String>,
        binding: Option<&str>,
        client: std::net::IpAddr,
    ) -> Result<Next, SignInError> {
        let state = form.get("state").ok_or(SignInError::Expired)?;
        let token = self.sign_in_form(state, binding).await?;
        let posted = form.get("form").map(String::as_str).unwrap_or("");
        if !bool::from(posted.as_bytes().ct_eq(token.as_bytes())) {
            return Err(SignInError::OtherBrowser);
        }
        let email = form.get("email").map(|e| e.trim()).unwrap_or("");
        let password = Secret::new(form.get("password").cloned().unwrap_or_default());
        if email.is_empty() || password.expose().is_empty() || password.expose().len() > 1024 {
            return Err(SignInError::WrongPassword);
        }
        let signed_in = accounts
            .sign_in_with_password(sso, email, &password, Some(client))
            .await
            .map_err(|e| match e {
                PasswordError::UnknownUser | PasswordError::WrongPassword => {
                    SignInError::WrongPassword
                }
                PasswordError::Limited { retry_after } => SignInError::Limited {
                    retry_after: retry_after.as_secs().max(1),
                },
                PasswordError::Deactivated => SignInError::Deactivated,
                PasswordError::Unavailable { retry_after } => SignInError::DaarionUnavailable {
                    retry_after: retry_after.as_secs().max(1),
                },
                PasswordError::NotConfigured => SignInError::Unavailable { retry_after: 60 },
                PasswordError::Failed => SignInError::Failed,
            })?;
        self.hand_back(state, signed_in.claims).await
    }

    /// The end of step 2, whichever page the person signed in on: records
    /// whom DAARION named (once per state) and sends this browser on to
    /// [`Provider::review`] with a one-time proof.
    async fn hand_back(&self, state: &str, claims: Claims) -> Result<Next, SignInError> {
        let unavailable = |_| SignInError::Unavailable { retry_after: 5 };
        let state_hash = digest(state);
        let who = Returned {
            user_id: claims.sub,
            preferred_username: claims.preferred_username,
            name: claims.name,
            picture: claims.picture,
            email: claims.email,
            daarion_sid: claims.sid,
        };
        // Unknown, expired or used already: a state is used once.
        let proof = random_secret();
        if !self
            .store
            .sign_in_returned(&state_hash, &who, &digest(&proof), self.now_ms())
            .await
            .map_err(unavailable)?
        {
            return Err(SignInError::Expired);
        }
        Ok(Next {
            location: with_query(
                &self.continue_url(),
                &[("state", Some(state)), ("proof", Some(&proof))],
            ),
            cookie: None,
        })
    }

    /// Step 3, first half: in the browser that began the sign-in (`binding`,
    /// its cookie) and brought DAARION's answer (`proof`), makes sure of the
    /// account and says whom the person is about to be signed in as.
    pub async fn review(
        &self,
        accounts: &Accounts,
        state: &str,
        binding: Option<&str>,
        proof: &str,
    ) -> Result<Confirm, SignInError> {
        let unavailable = |_| SignInError::Unavailable { retry_after: 5 };
        let binding_hash = binding.map(digest);
        let pending = match self
            .store
            .review_sign_in(
                &digest(state),
                binding_hash.as_deref(),
                &digest(proof),
                self.now_ms(),
            )
            .await
            .map_err(unavailable)?
        {
            Review::Ours(pending) => pending,
            Review::Ended => {
                tracing::warn!(
                    "a sign-in's DAARION answer came to a browser that did not start it: ended"
                );
                return Err(SignInError::OtherBrowser);
            }
            Review::Unknown => return Err(SignInError::Expired),
        };
        let account = active(accounts, &pending).await?;
        Ok(Confirm {
            localpart: account.localpart,
            display_name: account.display_name,
            client_origin: origin_of(&pending.redirect_uri),
        })
    }

    /// Step 3, second half: the person confirmed (`consent`) or said "not
    /// me". The sign-in is taken once, by the browser holding both the
    /// cookie and the proof; on consent the code is issued.
    pub async fn finish(
        &self,
        accounts: &Accounts,
        state: &str,
        binding: Option<&str>,
        proof: &str,
        consent: bool,
    ) -> Result<Next, SignInError> {
        let unavailable = |_| SignInError::Unavailable { retry_after: 5 };
        let Some(binding) = binding else {
            return Err(SignInError::OtherBrowser);
        };
        let pending = self
            .store
            .take_sign_in(
                &digest(state),
                &digest(binding),
                &digest(proof),
                self.now_ms(),
            )
            .await
            .map_err(unavailable)?
            .ok_or(SignInError::Expired)?;
        if !consent {
            return Err(SignInError::Cancelled);
        }
        let who = pending.person.clone().ok_or(SignInError::Expired)?;
        // Again: the person may have been deleted while the page was open.
        let account = active(accounts, &pending).await?;
        let code = random_secret();
        let now = self.now_ms();
        let grant = CodeGrant {
            code_hash: digest(&code),
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            nonce: pending.nonce.clone(),
            user_id: who.user_id.clone(),
            localpart: account.localpart,
            name: account.display_name,
            sid: random_secret(),
            auth_time: now,
            expires_at: now + CODE_TTL_MS,
        };
        self.store
            .issue_code(&grant, who.daarion_sid.as_deref())
            .await
            .map_err(unavailable)?;
        Ok(Next {
            location: with_query(
                &pending.redirect_uri,
                &[
                    ("code", Some(&code)),
                    ("state", pending.client_state.as_deref()),
                ],
            ),
            cookie: None,
        })
    }

    /// Step 4: the token request (form fields; `basic`: the decoded
    /// `Authorization: Basic` credentials, if sent).
    pub async fn token(
        &self,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<TokenResponse, OAuthError> {
        let (client_id, secret) = match (basic, form.get("client_secret")) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::new(
                    400,
                    "invalid_request",
                    "use one client authentication method",
                ))
            }
            (Some((id, secret)), None) => (id, secret),
            (None, Some(secret)) => (
                form.get("client_id").cloned().unwrap_or_default(),
                secret.clone(),
            ),
            (None, None) => {
                return Err(OAuthError::new(
                    401,
                    "invalid_client",
                    "client authentication is required",
                ))
            }
        };
        let id_ok = client_id
            .as_bytes()
            .ct_eq(self.signer.client_id().as_bytes());
        let secret_ok = secret
            .as_bytes()
            .ct_eq(self.client_secret.expose().as_bytes());
        if !bool::from(id_ok & secret_ok) {
            return Err(OAuthError::new(
                401,
                "invalid_client",
                "client authentication failed",
            ));
        }
        if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "only authorization_code is offered",
            ));
        }
        let code = form
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| OAuthError::new(400, "invalid_request", "code is required"))?;
        let unavailable = |_| OAuthError::new(503, "temporarily_unavailable", "retry later");
        let now = self.now_ms();
        let verifier = form.get("code_verifier");
        let redirect_uri = form.get("redirect_uri");
        let mut refusal = None;
        let access_token = random_secret();
        // Redeemed (deleted) whatever follows: a code is tried once.
        let grant = self
            .store
            .redeem_code(&digest(code), |grant| {
                refusal = check_grant(grant, now, &client_id, redirect_uri, verifier).err();
                refusal.is_none().then(|| {
                    let owner = TokenOwner {
                        user_id: grant.user_id.clone(),
                        localpart: grant.localpart.clone(),
                        name: grant.name.clone(),
                    };
                    (
                        digest(&access_token),
                        owner,
                        now + ACCESS_TOKEN_TTL_S * 1000,
                    )
                })
            })
            .await
            .map_err(unavailable)?
            .ok_or_else(|| OAuthError::invalid_grant("the code is unknown or was used"))?;
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: ACCESS_TOKEN_TTL_S,
            id_token: self.id_token(&grant, now / 1000),
            scope: "openid profile",
        })
    }

    /// The userinfo of the person an access token was issued for.
    pub async fn userinfo(&self, access_token: &str) -> Result<Option<Value>, StoreError> {
        let owner = self
            .store
            .access_token_owner(&digest(access_token), self.now_ms())
            .await?;
        Ok(owner
            .map(|o| json!({"sub": o.user_id, "preferred_username": o.localpart, "name": o.name})))
    }

    fn id_token(&self, grant: &CodeGrant, now: i64) -> String {
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": grant.user_id,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + ID_TOKEN_TTL_S,
            "auth_time": grant.auth_time / 1000,
            "sid": grant.sid,
            "preferred_username": grant.localpart,
        });
        if let Some(nonce) = &grant.nonce {
            claims["nonce"] = json!(nonce);
        }
        if let Some(name) = &grant.name {
            claims["name"] = json!(name);
        }
        self.signer.sign(&claims, None)
    }
}

/// The account of the person a returned sign-in names, made sure of.
async fn active(
    accounts: &Accounts,
    pending: &Pending,
) -> Result<crate::accounts::ActiveAccount, SignInError> {
    let who = pending.person.as_ref().ok_or(SignInError::Expired)?;
    let claims = Claims {
        sub: who.user_id.clone(),
        preferred_username: who.preferred_username.clone(),
        name: who.name.clone(),
        picture: who.picture.clone(),
        email: who.email.clone(),
        sid: who.daarion_sid.clone(),
    };
    accounts.active(&claims).await.map_err(|e| match e {
        AccountError::Deactivated => SignInError::Deactivated,
        AccountError::BadSubject => SignInError::Refused,
        AccountError::Unavailable { retry_after, .. } => SignInError::Unavailable {
            retry_after: retry_after.map_or(5, |d| d.as_secs().max(1)),
        },
        AccountError::Failed(_) => SignInError::Failed,
    })
}

/// `scheme://host[:port]` of a URL (the URL itself if it does not parse:
/// the redirect URIs are the operator's, checked at start-up).
fn origin_of(url: &str) -> String {
    Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| url.to_string())
}

/// Whether the code may be redeemed by this request.
fn check_grant(
    grant: &CodeGrant,
    now: i64,
    client_id: &str,
    redirect_uri: Option<&String>,
    verifier: Option<&String>,
) -> Result<(), OAuthError> {
    if grant.expires_at <= now {
        return Err(OAuthError::invalid_grant("the code expired"));
    }
    if grant.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "the code was issued to another client",
        ));
    }
    if redirect_uri != Some(&grant.redirect_uri) {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    match (&grant.code_challenge, verifier) {
        (None, None) => Ok(()),
        (Some(challenge), Some(verifier)) if pkce_matches(challenge, verifier) => Ok(()),
        (Some(_), Some(_)) => Err(OAuthError::invalid_grant("code_verifier does not match")),
        (Some(_), None) => Err(OAuthError::invalid_grant("code_verifier is required")),
        (None, Some(_)) => Err(OAuthError::invalid_grant(
            "code_verifier without a code_challenge in the authorization request",
        )),
    }
}

/// The name of the cookie that binds the sign-in with this state to the
/// browser: one per sign-in, so two tabs do not undo each other.
fn cookie_name(state: &str) -> String {
    format!("mp_sso_{}", &digest(state)[..16])
}

/// RFC 7636: `BASE64URL(SHA256(verifier)) == challenge`, the verifier being
/// 43 to 128 unreserved characters.
pub fn pkce_matches(challenge: &str, verifier: &str) -> bool {
    if !is_pkce_value(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

fn is_pkce_value(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// How a handed-out secret is stored.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `base` with these query parameters added (None: left out).
fn with_query(base: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut url = match Url::parse(base) {
        Ok(url) => url,
        Err(_) => return base.to_string(),
    };
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in params {
            if let Some(v) = v {
                pairs.append_pair(k, v);
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_as_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(challenge, verifier));
        assert!(!pkce_matches(
            challenge,
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx"
        ));
        assert!(!pkce_matches(challenge, "short"));
        assert!(!pkce_matches(challenge, &format!("{verifier} ")));
    }

    #[test]
    fn secrets_are_random_and_stored_as_hashes() {
        let (a, b) = (random_secret(), random_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), a);
        assert!(cookie_name(&a).starts_with("mp_sso_"));
    }

    #[test]
    fn query_parameters_are_encoded() {
        assert_eq!(
            with_query(
                "https://h/cb?x=1",
                &[("state", Some("a b&c")), ("skip", None)]
            ),
            "https://h/cb?x=1&state=a+b%26c"
        );
    }
}
