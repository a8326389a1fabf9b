//! Typed settings from the environment (CONTRACT.md section 1 plus our own
//! tuning knobs). Every secret can also come from `NAME_FILE`, and secrets are
//! wrapped in [`Secret`] so that `Debug`, logs and errors cannot print them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::Url;

use crate::domain::localpart::DEFAULT_RESERVED;
use crate::secret::{redact_url, Secret};

/// CONTRACT.md section 7.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The service's base URL as browsers and Synapse reach it; the issuer.
    pub public_url: Option<Url>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// Compared exactly.
    pub redirect_uris: Vec<String>,
    /// Synapse's `idp_id`; Synapse calls the provider `oidc-<idp_id>`.
    pub idp_id: String,
    pub signing_key: Option<Secret>,
    /// DAARION Auth's sign-in page.
    pub auth_login_url: Option<Url>,
}

impl OidcSettings {
    /// The `auth_provider` of the external id Synapse's OpenID login looks
    /// people up by.
    pub fn auth_provider(&self) -> String {
        format!("oidc-{}", self.idp_id)
    }

    /// The first setting the provider cannot work without, if one is missing.
    pub fn missing_setting(&self) -> Option<&'static str> {
        if self.public_url.is_none() {
            Some("PUBLIC_URL")
        } else if self.client_secret.is_none() {
            Some("OIDC_CLIENT_SECRET")
        } else if self.auth_login_url.is_none() {
            Some("AUTH_LOGIN_URL")
        } else {
            None
        }
    }
}

/// A setting that is missing or malformed; the message is one line naming it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a sync pass does about a profile changed in Matrix by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftPolicy {
    /// Put DAARION's profile back (the default).
    Enforce,
    /// Count it in the summary and log it, change nothing.
    Report,
    /// Do not look (full passes then make no Synapse calls when nothing changed).
    Off,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    /// May contain a password: print it with [`Settings::database_url_redacted`].
    pub database_url: Secret,
    pub synapse_url: Url,
    pub synapse_public_url: Url,
    pub server_name: String,
    pub registration_secret: Secret,
    pub synapse_jwt_secret: Option<Secret>,
    /// `iss` / `aud` put into Synapse login tokens; set them only when
    /// Synapse's `jwt_config` has `issuer` / `audiences` (Synapse refuses an
    /// `aud` it was not told to expect).
    pub synapse_jwt_issuer: Option<String>,
    pub synapse_jwt_audience: Option<String>,
    /// An admin access token given by the operator; when absent the service
    /// runs its own admin account (see `synapse::admin_token`).
    pub synapse_admin_token: Option<Secret>,
    pub synapse_admin_user: String,
    pub webhook_secrets: Vec<Secret>,
    pub auth_jwt_secret: Option<Secret>,
    pub auth_jwks_url: Option<Url>,
    /// The OpenID provider for Synapse's single sign-on (CONTRACT.md
    /// section 7); it is on when `PUBLIC_URL`, `OIDC_CLIENT_SECRET` and
    /// `AUTH_LOGIN_URL` are all set.
    pub oidc: OidcSettings,
    pub auth_jwt_issuer: Option<String>,
    pub auth_jwt_audience: Option<String>,
    /// The least time between two JWKS downloads caused by unknown `kid`s,
    /// so a flood of forged tokens cannot flood DAARION Auth.
    pub auth_jwks_min_refresh: Duration,
    /// Peers whose `X-Forwarded-For` is believed when telling Synapse who
    /// logs in (`/v1/sso/session`); others are taken at their address.
    pub trusted_proxies: Vec<IpAddr>,
    pub auth_api_url: Option<Url>,
    pub auth_api_token: Option<Secret>,
    pub admin_api_token: Option<Secret>,
    pub avatar_allowed_hosts: Vec<String>,
    /// Largest avatar downloaded (`AVATAR_MAX_BYTES`, default 5 MiB).
    pub avatar_max_bytes: usize,
    /// Whole download, redirects included (`AVATAR_TIMEOUT_SECONDS`, default 10).
    pub avatar_timeout: Duration,
    /// Redirects followed, each checked again (`AVATAR_MAX_REDIRECTS`, default 3).
    pub avatar_max_redirects: usize,
    /// `PROFILE_DRIFT`: `enforce` (default), `report` or `off`.
    pub profile_drift: DriftPolicy,
    /// People asked of DAARION's user API per page (`SYNC_PAGE_SIZE`, default 500).
    pub sync_page_size: usize,
    /// How long a sync pass waits for one person's work while Synapse keeps
    /// asking for retries (`SYNC_JOB_WAIT_SECONDS`, default 120). After the
    /// first person runs out, the pass stops waiting: the rest stays queued.
    pub sync_job_wait: Duration,
    pub reserved_localparts: Vec<String>,
    pub worker_concurrency: usize,
    pub synapse_max_concurrency: usize,
    pub synapse_timeout: Duration,
    pub job_lease: Duration,
    pub retry_max_delay: Duration,
    /// How long a person known only from events without a username waits
    /// for one before their account is named after their user id
    /// (`USERNAME_GRACE_SECONDS`, default 30).
    pub username_grace: Duration,
    /// How long in-flight requests and jobs get to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    pub db_max_connections: u32,
    /// Webhook intake writer tasks; 0 = the back end's default.
    pub intake_writers: usize,
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment in production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let env = Env { lookup: &lookup };
        let synapse_url = env.url("SYNAPSE_URL")?.unwrap_or_else(|| {
            Url::parse("http://127.0.0.1:8008").expect("default SYNAPSE_URL is a valid URL")
        });
        let server_name = env.required("SYNAPSE_SERVER_NAME")?;
        if server_name.contains(['@', '/', ' ']) || server_name.len() > 230 {
            return Err(ConfigError(format!(
                "SYNAPSE_SERVER_NAME is not a valid Matrix server name: {server_name:?}"
            )));
        }
        let reserved_localparts = match env.get("RESERVED_LOCALPARTS") {
            Some(list) => split_list(&list),
            None => DEFAULT_RESERVED.iter().map(|s| s.to_string()).collect(),
        };
        let synapse_admin_user = env
            .get("SYNAPSE_ADMIN_USER")
            .unwrap_or_else(|| "matrix-provisioner".to_string());
        let synapse_public_url = env
            .url("SYNAPSE_PUBLIC_URL")?
            .unwrap_or(synapse_url.clone());
        Ok(Settings {
            bind: env
                .parsed("BIND")?
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7030))),
            database_url: Secret::new(
                env.get("DATABASE_URL")
                    .unwrap_or_else(|| "sqlite://matrix-provisioner.db".to_string()),
            ),
            synapse_url,
            server_name,
            registration_secret: env
                .secret("SYNAPSE_REGISTRATION_SECRET")?
                .ok_or_else(|| ConfigError("SYNAPSE_REGISTRATION_SECRET is required".into()))?,
            synapse_jwt_secret: env.secret("SYNAPSE_JWT_SECRET")?,
            synapse_jwt_issuer: env.get("SYNAPSE_JWT_ISSUER"),
            synapse_jwt_audience: env.get("SYNAPSE_JWT_AUDIENCE"),
            synapse_admin_token: env.secret("SYNAPSE_ADMIN_TOKEN")?,
            synapse_admin_user,
            webhook_secrets: env
                .secret("AUTH_WEBHOOK_SECRET")?
                .map(|s| {
                    split_list(s.expose())
                        .into_iter()
                        .map(Secret::new)
                        .collect()
                })
                .unwrap_or_default(),
            auth_jwt_secret: env.secret("AUTH_JWT_SECRET")?,
            auth_jwks_url: env.url("AUTH_JWKS_URL")?,
            oidc: OidcSettings {
                public_url: env.url("PUBLIC_URL")?,
                client_id: env
                    .get("OIDC_CLIENT_ID")
                    .unwrap_or_else(|| "synapse".into()),
                client_secret: env.secret("OIDC_CLIENT_SECRET")?,
                redirect_uris: env
                    .get("OIDC_REDIRECT_URIS")
                    .map(|s| split_list(&s))
                    .unwrap_or_else(|| {
                        vec![format!(
                            "{}/_synapse/client/oidc/callback",
                            synapse_public_url.as_str().trim_end_matches('/')
                        )]
                    }),
                idp_id: env.get("OIDC_IDP_ID").unwrap_or_else(|| "daarion".into()),
                signing_key: env.secret("OIDC_SIGNING_KEY")?,
                auth_login_url: env.url("AUTH_LOGIN_URL")?,
            },
            synapse_public_url,
            auth_jwt_issuer: env.get("AUTH_JWT_ISSUER"),
            auth_jwt_audience: env.get("AUTH_JWT_AUDIENCE"),
            auth_jwks_min_refresh: Duration::from_secs(
                env.positive("AUTH_JWKS_MIN_REFRESH_SECONDS")?.unwrap_or(5) as u64,
            ),
            trusted_proxies: env
                .get("TRUSTED_PROXIES")
                .map(|s| {
                    split_list(&s)
                        .iter()
                        .map(|ip| {
                            ip.parse().map_err(|_| {
                                ConfigError(format!(
                                    "TRUSTED_PROXIES must list IP addresses, not {ip:?}"
                                ))
                            })
                        })
                        .collect::<Result<Vec<IpAddr>, ConfigError>>()
                })
                .transpose()?
                .unwrap_or_default(),
            auth_api_url: env.url("AUTH_API_URL")?,
            auth_api_token: env.secret("AUTH_API_TOKEN")?,
            admin_api_token: env.secret("ADMIN_API_TOKEN")?,
            avatar_allowed_hosts: env
                .get("AVATAR_ALLOWED_HOSTS")
                .map(|s| split_list(&s))
                .unwrap_or_default(),
            avatar_max_bytes: env.positive("AVATAR_MAX_BYTES")?.unwrap_or(5 * 1024 * 1024),
            avatar_timeout: Duration::from_secs(
                env.positive("AVATAR_TIMEOUT_SECONDS")?.unwrap_or(10) as u64,
            ),
            avatar_max_redirects: env.parsed("AVATAR_MAX_REDIRECTS")?.unwrap_or(3),
            profile_drift: match env.get("PROFILE_DRIFT").as_deref() {
                None | Some("enforce") => DriftPolicy::Enforce,
                Some("report") => DriftPolicy::Report,
                Some("off") => DriftPolicy::Off,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "PROFILE_DRIFT must be `enforce`, `report` or `off`, not {other:?}"
                    )))
                }
            },
            sync_page_size: env.positive("SYNC_PAGE_SIZE")?.unwrap_or(500).min(10_000),
            sync_job_wait: Duration::from_secs(
                env.positive("SYNC_JOB_WAIT_SECONDS")?.unwrap_or(120) as u64,
            ),
            reserved_localparts,
            worker_concurrency: env.positive("WORKER_CONCURRENCY")?.unwrap_or(8),
            synapse_max_concurrency: env.positive("SYNAPSE_MAX_CONCURRENCY")?.unwrap_or(16),
            synapse_timeout: Duration::from_secs(
                env.positive("SYNAPSE_TIMEOUT_SECONDS")?.unwrap_or(15) as u64,
            ),
            job_lease: Duration::from_secs(env.positive("JOB_LEASE_SECONDS")?.unwrap_or(120) as u64),
            retry_max_delay: Duration::from_secs(
                env.positive("RETRY_MAX_DELAY_SECONDS")?.unwrap_or(300) as u64,
            ),
            username_grace: Duration::from_secs(
                env.positive("USERNAME_GRACE_SECONDS")?.unwrap_or(30) as u64,
            ),
            shutdown_timeout: Duration::from_secs(
                env.positive("SHUTDOWN_TIMEOUT_SECONDS")?.unwrap_or(30) as u64,
            ),
            db_max_connections: env.positive("DB_MAX_CONNECTIONS")?.unwrap_or(0) as u32,
            intake_writers: env.positive("INTAKE_WRITERS")?.unwrap_or(0),
            log_format: match env.get("LOG_FORMAT").as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "LOG_FORMAT must be `text` or `json`, not {other:?}"
                    )))
                }
            },
        })
    }

    /// The database URL with any password blanked, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact_url(self.database_url.expose())
    }

    /// `@{localpart}:{server_name}`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    /// A plain setting; empty counts as unset.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError(format!("{name} is required")))
    }

    /// `NAME`, else the contents of the file named by `NAME_FILE` (one
    /// trailing newline removed, as editors and `echo` add one).
    fn secret(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        if let Some(value) = self.get(name) {
            return Ok(Some(Secret::new(value)));
        }
        let file_var = format!("{name}_FILE");
        let Some(path) = self.get(&file_var) else {
            return Ok(None);
        };
        let content = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("{file_var}: cannot read {path}: {e}")))?;
        let value = content.strip_suffix('\n').unwrap_or(&content);
        let value = value.strip_suffix('\r').unwrap_or(value);
        if value.is_empty() {
            return Err(ConfigError(format!("{file_var}: {path} is empty")));
        }
        Ok(Some(Secret::new(value)))
    }

    fn url(&self, name: &str) -> Result<Option<Url>, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        let url = Url::parse(raw.trim_end_matches('/'))
            .map_err(|e| ConfigError(format!("{name} is not a valid URL ({e}): {raw:?}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError(format!(
                "{name} must be an http or https URL: {raw:?}"
            )));
        }
        Ok(Some(url))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.get(name)
            .map(|raw| {
                raw.trim()
                    .parse()
                    .map_err(|e| ConfigError(format!("{name} is malformed ({e}): {raw:?}")))
            })
            .transpose()
    }

    fn positive(&self, name: &str) -> Result<Option<usize>, ConfigError> {
        match self.parsed::<usize>(name)? {
            Some(0) => Err(ConfigError(format!("{name} must be at least 1"))),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("SYNAPSE_SERVER_NAME", "daarion.space"),
        ("SYNAPSE_REGISTRATION_SECRET", "s3cret"),
    ];

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(MINIMAL).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:7030");
        assert_eq!(s.database_url.expose(), "sqlite://matrix-provisioner.db");
        assert_eq!(s.synapse_url.as_str(), "http://127.0.0.1:8008/");
        assert_eq!(s.synapse_public_url, s.synapse_url);
        assert!(s.webhook_secrets.is_empty());
        assert_eq!(s.avatar_max_bytes, 5 * 1024 * 1024);
        assert_eq!(s.profile_drift, DriftPolicy::Enforce);
    }

    #[test]
    fn profile_settings_are_checked() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("PROFILE_DRIFT", "report"));
        pairs.push(("AVATAR_MAX_BYTES", "1024"));
        pairs.push(("AVATAR_ALLOWED_HOSTS", "cdn.local:8080, 127.0.0.1"));
        let s = settings(&pairs).unwrap();
        assert_eq!(s.profile_drift, DriftPolicy::Report);
        assert_eq!(s.avatar_max_bytes, 1024);
        assert_eq!(s.avatar_allowed_hosts, ["cdn.local:8080", "127.0.0.1"]);
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("PROFILE_DRIFT", "fix"));
        assert!(settings(&pairs)
            .unwrap_err()
            .to_string()
            .starts_with("PROFILE_DRIFT "));
    }

    #[test]
    fn missing_required_settings_are_named() {
        let err = settings(&[("SYNAPSE_REGISTRATION_SECRET", "x")]).unwrap_err();
        assert_eq!(err.to_string(), "SYNAPSE_SERVER_NAME is required");
        let err = settings(&[("SYNAPSE_SERVER_NAME", "x")]).unwrap_err();
        assert_eq!(err.to_string(), "SYNAPSE_REGISTRATION_SECRET is required");
    }

    #[test]
    fn malformed_settings_are_named() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("BIND", "not-an-address"));
        assert!(settings(&pairs)
            .unwrap_err()
            .to_string()
            .starts_with("BIND "));
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("SYNAPSE_URL", "ftp://x"));
        assert!(settings(&pairs)
            .unwrap_err()
            .to_string()
            .starts_with("SYNAPSE_URL "));
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("WORKER_CONCURRENCY", "0"));
        assert!(settings(&pairs)
            .unwrap_err()
            .to_string()
            .starts_with("WORKER_CONCURRENCY "));
    }

    #[test]
    fn sso_settings_parse() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("TRUSTED_PROXIES", "127.0.0.1, ::1"));
        pairs.push(("SYNAPSE_JWT_AUDIENCE", "matrix"));
        let s = settings(&pairs).unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.synapse_jwt_audience.as_deref(), Some("matrix"));
        assert_eq!(s.synapse_jwt_issuer, None);
        assert_eq!(s.auth_jwks_min_refresh, Duration::from_secs(5));
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("TRUSTED_PROXIES", "10.0.0.0/8"));
        assert!(settings(&pairs)
            .unwrap_err()
            .to_string()
            .starts_with("TRUSTED_PROXIES "));
    }

    #[test]
    fn secrets_come_from_files_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let path = path.to_str().unwrap();
        let mut pairs = MINIMAL.to_vec();
        pairs.retain(|(k, _)| *k != "SYNAPSE_REGISTRATION_SECRET");
        pairs.push(("SYNAPSE_REGISTRATION_SECRET_FILE", path));
        pairs.push(("AUTH_WEBHOOK_SECRET", "new, old"));
        let s = settings(&pairs).unwrap();
        assert_eq!(s.registration_secret.expose(), "from-file");
        let keys: Vec<_> = s.webhook_secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(keys, ["new", "old"]);

        let mut pairs = MINIMAL.to_vec();
        pairs.push(("ADMIN_API_TOKEN_FILE", "/nonexistent/file"));
        assert!(settings(&pairs)
            .unwrap_err()
            .to_string()
            .starts_with("ADMIN_API_TOKEN_FILE: cannot read"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("DATABASE_URL", "postgres://u:pw-database@h/db"));
        pairs.push(("AUTH_WEBHOOK_SECRET", "hook-secret"));
        pairs.push(("AUTH_JWT_SECRET", "daarion-jwt-secret"));
        pairs.push(("SYNAPSE_JWT_SECRET", "synapse-jwt-secret"));
        let s = settings(&pairs).unwrap();
        let debug = format!("{s:?}");
        for secret in [
            "s3cret",
            "pw-database",
            "hook-secret",
            "daarion-jwt-secret",
            "synapse-jwt-secret",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
        assert_eq!(s.database_url_redacted(), "postgres://u:***@h/db");
    }
}
