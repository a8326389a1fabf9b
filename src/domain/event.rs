//! DAARION Auth webhook events (CONTRACT.md section 2): the raw JSON shape and
//! [`Event::parse`], the only way to get a validated event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use sha2::Digest;

/// Synapse refuses longer display names (`MAX_DISPLAYNAME_LEN`); we cut rather
/// than fail the whole account over a long name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
const MAX_ID_BYTES: usize = 255;
pub(super) const MAX_URL_BYTES: usize = 2048;
/// RFC 5321's longest address.
const MAX_EMAIL_BYTES: usize = 320;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Registered,
    Updated,
    Deleted,
    /// The person signed out of a DAARION session (CONTRACT.md section 7):
    /// end the Matrix sessions opened from it.
    SignedOut,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Registered => "user.registered",
            EventKind::Updated => "user.updated",
            EventKind::Deleted => "user.deleted",
            EventKind::SignedOut => "user.signed_out",
        }
    }
}

/// A field of `user.updated`: absent leaves it alone, `null` clears it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Patch<T> {
    #[default]
    Unchanged,
    Clear,
    Set(T),
}

impl<T> Patch<T> {
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Patch<U> {
        match self {
            Patch::Unchanged => Patch::Unchanged,
            Patch::Clear => Patch::Clear,
            Patch::Set(v) => Patch::Set(f(v)),
        }
    }
}

/// Distinguishes an absent field (`Patch::Unchanged`, via `#[serde(default)]`)
/// from an explicit `null`.
pub(super) fn patch<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Patch<T>, D::Error> {
    Ok(match Option::<T>::deserialize(d)? {
        None => Patch::Clear,
        Some(v) => Patch::Set(v),
    })
}

#[derive(Debug, Deserialize)]
pub struct RawEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
    pub data: RawData,
}

#[derive(Debug, Deserialize)]
pub struct RawData {
    pub user_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "patch")]
    pub display_name: Patch<String>,
    #[serde(default, deserialize_with = "patch")]
    pub avatar_url: Patch<String>,
    #[serde(default, deserialize_with = "patch")]
    pub email: Patch<String>,
    /// `user.signed_out`: the DAARION session (absent or null: every one).
    #[serde(default)]
    pub session_id: Option<String>,
}

/// What a DAARION user looks like in an event, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub kind: EventKind,
    /// Milliseconds since the epoch; orders events of one person.
    pub created_at_ms: i64,
    pub user_id: String,
    pub username: Option<String>,
    pub display_name: Patch<String>,
    pub avatar_url: Patch<String>,
    /// Lower case; for password sign-in by address and, when an operator
    /// chooses it, for naming (never shown in Matrix otherwise).
    pub email: Patch<String>,
    /// `user.signed_out`: which DAARION session; None: every one.
    pub session_id: Option<String>,
}

/// The result of parsing a signed body.
#[derive(Debug)]
pub enum Parsed {
    Event(Event),
    /// A well-formed event of a type we do not handle; acknowledged, not stored.
    Ignored {
        id: String,
    },
}

/// Why a body is refused: `Malformed` is a 400, `Unacceptable` a 422.
#[derive(Debug, PartialEq, Eq)]
pub enum EventError {
    Malformed(String),
    Unacceptable(String),
}

impl Event {
    pub fn parse(body: &[u8]) -> Result<Parsed, EventError> {
        let raw: RawEvent = serde_json::from_slice(body)
            .map_err(|e| EventError::Malformed(format!("body is not a valid event: {e}")))?;
        if !valid_id(&raw.id) {
            return Err(unacceptable("id must be 1 to 255 printable characters"));
        }
        let kind = match raw.kind.as_str() {
            "user.registered" => EventKind::Registered,
            "user.updated" => EventKind::Updated,
            "user.deleted" => EventKind::Deleted,
            "user.signed_out" => EventKind::SignedOut,
            _ => return Ok(Parsed::Ignored { id: raw.id }),
        };
        let created_at = timestamp(&raw.created_at, "created_at")?;
        build(raw.id, kind, created_at, raw.data).map(Parsed::Event)
    }

    /// The event that brings a person to what DAARION Auth's user API lists
    /// (CONTRACT.md section 5), so a sync pass goes through the same intake
    /// and last-writer-wins rules as webhooks:
    /// - `created_at` is the person's `updated_at`, so a newer webhook still
    ///   wins over an older listing and the other way round;
    /// - the id is derived from the person and `updated_at`, so listing an
    ///   unchanged person again is a duplicate;
    /// - the listing is a full snapshot: a missing or null field means "none";
    /// - `deleted: false` counts as a registration at `updated_at`: the
    ///   person exists as of then, which revives them only if they were
    ///   deleted before that (a `user.updated` never revives).
    pub fn from_listing(user: ListedUser) -> Result<Event, EventError> {
        let created_at = timestamp(&user.updated_at, "updated_at")?;
        let id = format!("sync:{}:{created_at}", user.user_id);
        let id = if valid_id(&id) {
            id
        } else {
            // Long or odd user ids still get a stable, valid id.
            let digest = sha2::Sha256::digest(user.user_id.as_bytes());
            format!("sync:{}:{created_at}", hex::encode(digest))
        };
        let kind = if user.deleted {
            EventKind::Deleted
        } else {
            EventKind::Registered
        };
        let snapshot = |v: Option<String>| v.map_or(Patch::Clear, Patch::Set);
        let data = RawData {
            user_id: user.user_id,
            username: user.username,
            display_name: snapshot(user.display_name),
            avatar_url: snapshot(user.avatar_url),
            // Absent from a listing: DAARION's user API may not give it.
            email: user.email.map_or(Patch::Unchanged, Patch::Set),
            session_id: None,
        };
        build(id, kind, created_at, data)
    }
}

/// One person in DAARION Auth's user API (CONTRACT.md section 5).
#[derive(Debug, Clone, Deserialize)]
pub struct ListedUser {
    pub user_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    pub updated_at: String,
    #[serde(default)]
    pub deleted: bool,
}

pub(super) fn unacceptable(message: &str) -> EventError {
    EventError::Unacceptable(message.to_string())
}

pub(super) fn timestamp(raw: &str, field: &str) -> Result<i64, EventError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
        .map_err(|_| EventError::Unacceptable(format!("{field} must be an RFC 3339 timestamp")))
}

/// The checks and clean-up every event goes through, whatever its source.
fn build(
    id: String,
    kind: EventKind,
    created_at_ms: i64,
    data: RawData,
) -> Result<Event, EventError> {
    if !valid_id(&data.user_id) {
        return Err(unacceptable(
            "data.user_id must be 1 to 255 printable characters",
        ));
    }
    if let Patch::Set(url) = &data.avatar_url {
        if url.len() > MAX_URL_BYTES {
            return Err(unacceptable("data.avatar_url is longer than 2048 bytes"));
        }
    }
    if let Patch::Set(email) = &data.email {
        if email.len() > MAX_EMAIL_BYTES {
            return Err(unacceptable("data.email is longer than 320 bytes"));
        }
    }
    if data.session_id.as_deref().is_some_and(|s| !valid_id(s)) {
        return Err(unacceptable(
            "data.session_id must be 1 to 255 printable characters",
        ));
    }
    Ok(Event {
        id,
        kind,
        created_at_ms,
        user_id: data.user_id,
        username: data.username.filter(|u| !u.trim().is_empty()),
        display_name: data.display_name.map(clean_display_name),
        avatar_url: data
            .avatar_url
            .map(|u| u.trim().to_string())
            .map(|u| if u.is_empty() { None } else { Some(u) })
            .flatten_clear(),
        email: data.email.map(|e| clean_email(&e)).flatten_clear(),
        session_id: data.session_id,
    })
}

impl Event {
    /// The registration an SSO login stands in for when DAARION's webhook
    /// has not arrived (lost or late), built from the access token's claims.
    /// Its `created_at` is 0, so every real event wins over it field by
    /// field, and its id is fixed per person, so repeated logins are
    /// duplicates. `None` when `user_id` is not an acceptable id.
    pub fn sso_registration(
        user_id: &str,
        username: Option<&str>,
        display_name: Option<&str>,
        avatar_url: Option<&str>,
        email: Option<&str>,
    ) -> Option<Event> {
        if !valid_id(user_id) {
            return None;
        }
        let display_name = display_name
            .map(|n| clean_display_name(n.to_string()))
            .filter(|n| !n.is_empty());
        let avatar_url = avatar_url
            .map(str::trim)
            .filter(|u| !u.is_empty() && u.len() <= MAX_URL_BYTES);
        Some(Event {
            id: format!("sso:{user_id}"),
            kind: EventKind::Registered,
            created_at_ms: 0,
            user_id: user_id.to_string(),
            username: username
                .map(str::trim)
                .filter(|u| !u.is_empty() && u.len() <= MAX_ID_BYTES)
                .map(str::to_string),
            display_name: display_name.map_or(Patch::Unchanged, Patch::Set),
            avatar_url: avatar_url.map_or(Patch::Unchanged, |u| Patch::Set(u.to_string())),
            email: email
                .filter(|e| e.len() <= MAX_EMAIL_BYTES)
                .and_then(clean_email)
                .map_or(Patch::Unchanged, Patch::Set),
            session_id: None,
        })
    }
}

impl Patch<Option<String>> {
    /// `Set(None)` (an empty string) means the same as `null`.
    pub(super) fn flatten_clear(self) -> Patch<String> {
        match self {
            Patch::Unchanged => Patch::Unchanged,
            Patch::Clear | Patch::Set(None) => Patch::Clear,
            Patch::Set(Some(v)) => Patch::Set(v),
        }
    }
}

/// The rule for DAARION ids (`data.user_id`, a token's `sub`): 1 to 255
/// bytes, printable.
pub fn valid_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

/// Trimmed and lower case (addresses compare case-insensitively); None
/// when nothing is left.
pub fn clean_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    (!email.is_empty() && !email.chars().any(char::is_control)).then_some(email)
}

/// Control characters out, surrounding space trimmed, at most 256 characters.
pub(super) fn clean_display_name(name: String) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_DISPLAY_NAME_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Parsed, EventError> {
        Event::parse(json.as_bytes())
    }

    fn event(json: &str) -> Event {
        match parse(json).unwrap() {
            Parsed::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn sign_outs_name_a_session_or_every_one() {
        let one = event(
            r#"{"id":"e1","type":"user.signed_out","created_at":"2026-11-24T10:00:00Z",
                "data":{"user_id":"u_1","session_id":"sess_9"}}"#,
        );
        assert_eq!(one.kind, EventKind::SignedOut);
        assert_eq!(one.session_id.as_deref(), Some("sess_9"));
        for all in [
            r#"{"id":"e2","type":"user.signed_out","created_at":"2026-11-24T10:00:00Z","data":{"user_id":"u_1"}}"#,
            r#"{"id":"e3","type":"user.signed_out","created_at":"2026-11-24T10:00:00Z","data":{"user_id":"u_1","session_id":null}}"#,
        ] {
            assert_eq!(event(all).session_id, None, "{all}");
        }
        let bad = r#"{"id":"e4","type":"user.signed_out","created_at":"2026-11-24T10:00:00Z",
                      "data":{"user_id":"u_1","session_id":"a\u0007b"}}"#;
        assert!(matches!(parse(bad), Err(EventError::Unacceptable(_))));
    }

    #[test]
    fn contract_example_parses() {
        let e = event(
            r#"{"id":"evt_01JDAQ6Y3S8Z","type":"user.registered","created_at":"2026-11-24T10:00:00Z",
            "data":{"user_id":"u_7f3c2a","username":"olena","display_name":"Олена Петренко",
            "avatar_url":"https://cdn.daarion.city/avatars/u_7f3c2a.png","email":"olena@example.com","extra":1},
            "unknown":true}"#,
        );
        assert_eq!(e.kind, EventKind::Registered);
        assert_eq!(e.user_id, "u_7f3c2a");
        assert_eq!(e.username.as_deref(), Some("olena"));
        assert_eq!(e.display_name, Patch::Set("Олена Петренко".into()));
        assert_eq!(e.email, Patch::Set("olena@example.com".into()));
        assert_eq!(e.created_at_ms, 1_795_514_400_000);
        let shouted = event(
            r#"{"id":"e","type":"user.updated","created_at":"2026-11-24T10:00:00Z",
            "data":{"user_id":"u","email":" Olena@Example.COM "}}"#,
        );
        assert_eq!(shouted.email, Patch::Set("olena@example.com".into()));
        let long = format!(
            r#"{{"id":"e","type":"user.updated","created_at":"2026-11-24T10:00:00Z",
            "data":{{"user_id":"u","email":"{}@x.y"}}}}"#,
            "a".repeat(320)
        );
        assert!(matches!(parse(&long), Err(EventError::Unacceptable(_))));
    }

    #[test]
    fn absent_and_null_fields_differ() {
        let e = event(
            r#"{"id":"e","type":"user.updated","created_at":"2026-11-24T10:00:00+02:00",
            "data":{"user_id":"u","display_name":null}}"#,
        );
        assert_eq!(e.display_name, Patch::Clear);
        assert_eq!(e.avatar_url, Patch::Unchanged);
        let e = event(
            r#"{"id":"e","type":"user.updated","created_at":"2026-11-24T10:00:00Z",
            "data":{"user_id":"u","avatar_url":" "}}"#,
        );
        assert_eq!(e.avatar_url, Patch::Clear);
    }

    #[test]
    fn unknown_types_are_ignored() {
        assert!(matches!(
            parse(r#"{"id":"e1","type":"user.logged_in","created_at":"x","data":{"user_id":""}}"#),
            Ok(Parsed::Ignored { id }) if id == "e1"
        ));
    }

    #[test]
    fn shapes_and_values_are_refused_differently() {
        for bad in [
            "",
            "[]",
            "{}",
            "not json",
            r#"{"id":"e","type":"user.updated"}"#,
        ] {
            assert!(matches!(parse(bad), Err(EventError::Malformed(_))), "{bad}");
        }
        for bad in [
            r#"{"id":"e","type":"user.updated","created_at":"yesterday","data":{"user_id":"u"}}"#,
            r#"{"id":"e","type":"user.updated","created_at":"2026-11-24T10:00:00Z","data":{"user_id":""}}"#,
            r#"{"id":"e","type":"user.updated","created_at":"2026-11-24T10:00:00Z","data":{"user_id":"  "}}"#,
            r#"{"id":"","type":"user.updated","created_at":"2026-11-24T10:00:00Z","data":{"user_id":"u"}}"#,
            r#"{"id":"e","type":"user.updated","created_at":"2026-11-24T10:00:00Z","data":{"user_id":"a\u0000b"}}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(EventError::Unacceptable(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn display_names_are_cleaned_and_capped() {
        let long = "я".repeat(300);
        let e = event(&format!(
            r#"{{"id":"e","type":"user.registered","created_at":"2026-11-24T10:00:00Z",
            "data":{{"user_id":"u","display_name":" a\u0007b {long}"}}}}"#
        ));
        let Patch::Set(name) = e.display_name else {
            panic!()
        };
        assert!(name.starts_with("ab я"));
        assert_eq!(name.chars().count(), MAX_DISPLAY_NAME_CHARS);
    }

    #[test]
    fn sso_registrations_lose_to_every_real_event() {
        let e = Event::sso_registration(
            "u_1",
            Some(" olena "),
            Some(" \u{7}Олена "),
            Some(""),
            Some(" Olena@Example.COM "),
        )
        .unwrap();
        assert_eq!(e.id, "sso:u_1");
        assert_eq!(e.created_at_ms, 0);
        assert_eq!(e.username.as_deref(), Some("olena"));
        assert_eq!(e.display_name, Patch::Set("Олена".into()));
        assert_eq!(e.avatar_url, Patch::Unchanged);
        assert_eq!(e.email, Patch::Set("olena@example.com".into()));
        assert!(Event::sso_registration(" ", None, None, None, None).is_none());

        let real = event(
            r#"{"id":"r","type":"user.updated","created_at":"2026-11-24T10:00:00Z",
            "data":{"user_id":"u_1","display_name":"Real"}}"#,
        );
        for order in [[&e, &real], [&real, &e]] {
            let mut w = crate::domain::person::Wanted::default();
            for ev in order {
                w.apply(ev);
            }
            assert_eq!(w.display_name.as_deref(), Some("Real"));
            assert_eq!(w.username.as_deref(), Some("olena"));
        }
    }

    fn listed(json: &str) -> Result<Event, EventError> {
        Event::from_listing(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn listings_are_full_snapshots_with_stable_ids() {
        let e = listed(
            r#"{"user_id":"u_1","username":"olena","display_name":" Олена ","updated_at":"2026-11-24T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::Registered);
        assert_eq!(e.id, "sync:u_1:1795514400000");
        assert_eq!(e.created_at_ms, 1_795_514_400_000);
        assert_eq!(e.display_name, Patch::Set("Олена".into()));
        // Absent in a listing means "none", unlike in a webhook.
        assert_eq!(e.avatar_url, Patch::Clear);
        let again = listed(
            r#"{"user_id":"u_1","display_name":"x","updated_at":"2026-11-24T10:00:00Z","deleted":true}"#,
        )
        .unwrap();
        assert_eq!(again.kind, EventKind::Deleted);
        assert_eq!(again.id, e.id);
    }

    #[test]
    fn listings_are_checked_like_webhooks() {
        assert!(listed(r#"{"user_id":"","updated_at":"2026-11-24T10:00:00Z"}"#).is_err());
        assert!(listed(r#"{"user_id":"u","updated_at":"soon"}"#).is_err());
        let long = "u".repeat(255);
        let e = listed(&format!(
            r#"{{"user_id":"{long}","updated_at":"2026-11-24T10:00:00Z"}}"#
        ))
        .unwrap();
        assert!(e.id.len() <= 255 && e.id.starts_with("sync:"));
    }
}
