//! An agent's file (`agent.message`'s `attachment`) as Matrix content:
//! fetched through the avatar fetcher's SSRF guard, uploaded once per
//! content, described with `info`.

use serde_json::Value;

use super::outcome::Outcome;
use super::Drained;
use crate::avatar::AvatarFetcher;
use crate::domain::agent::Attachment;
use crate::store::Store;
use crate::synapse::Synapse;

/// Why a file is not Matrix content (yet).
#[allow(dead_code)] // Retry: made by the fetch that comes next
pub enum Attach {
    /// It never will be: the reason.
    Refused(String),
    /// Not now (the host or Synapse unavailable).
    Retry(Outcome<Drained>),
}

/// The `m.image` / `m.file` / `m.audio` / `m.video` content of the file
/// (without `body`).
pub async fn content_for(
    _fetcher: &AvatarFetcher,
    _file: &Attachment,
    _store: &Store,
    _synapse: &Synapse,
    _now: i64,
) -> Result<Value, Attach> {
    Err(Attach::Refused("attachments are not supported yet".into()))
}
