//! matrix-provisioner: DAARION Auth users become Matrix (Synapse) accounts.
//!
//! Data flows one way: `http` and `nats` (edges, parsing) → `domain` (pure rules) →
//! `store` (database, durable queue) → `jobs` (worker) → `synapse` (the one
//! Synapse client). `app` wires them together from `config`;
//! `secret` (values never printed) is the bottom, usable by all.

/// A column holding one of a few words: `as_str` and `FromStr` of `$ty`
/// from one table, so the two directions cannot disagree.
macro_rules! column_words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = ();
            fn from_str(s: &str) -> std::result::Result<Self, ()> {
                match s {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(()),
                }
            }
        }
    };
}

pub mod accounts;
pub mod app;
pub mod avatar;
pub mod bus;
pub mod clock;
pub mod config;
pub mod daarion;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod nats;
pub mod oidc;
pub mod outbound;
pub mod passes;
pub mod secret;
pub mod signing;
pub mod sso;
pub mod store;
pub mod synapse;
pub mod telemetry;

/// Milliseconds since the Unix epoch, by the system clock. The service's
/// parts ask their [`clock::Clock`] instead, which tests can move.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
