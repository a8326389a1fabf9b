//! The image a person, a City Room or an agent should show for DAARION's
//! `avatar_url`: fetched safely (SSRF-safe, size-limited), uploaded once
//! and reused while its content hash is unchanged. Each job then points
//! its profile or room at the recorded image.

use super::outcome::Outcome;
use crate::avatar::{AvatarFetcher, FetchError};
use crate::store::{AppliedAvatar, JobKind, Store};
use crate::synapse::{Synapse, SynapseError};

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Image {
    /// DAARION.city has no avatar for it.
    None,
    /// This upload.
    Shown { mxc: String, sha256: String },
    /// The image cannot be used (not an image, too large, refused by
    /// Synapse): none is shown, and it is fetched again only when the URL
    /// changes.
    Refused(String),
    /// Not fetched now (its host is down): keep what is shown, try later.
    Unavailable(String),
}

/// The image for `url`, reusing `known` (the last upload's mxc and hash)
/// when the content is the same.
async fn image_for(
    avatars: &AvatarFetcher,
    synapse: &Synapse,
    url: Option<&str>,
    known: (Option<&str>, Option<&str>),
) -> Result<Image, SynapseError> {
    let Some(url) = url else {
        return Ok(Image::None);
    };
    let image = match avatars.fetch(url).await {
        Ok(image) => image,
        Err(FetchError::Refused(reason)) => return Ok(Image::Refused(reason)),
        Err(FetchError::Unavailable(reason)) => return Ok(Image::Unavailable(reason)),
    };
    if let (Some(mxc), Some(sha)) = known {
        if sha == image.sha256 {
            return Ok(Image::Shown {
                mxc: mxc.to_string(),
                sha256: image.sha256,
            });
        }
    }
    match synapse
        .upload_media(&image.bytes, image.content_type, image.filename())
        .await
    {
        Ok(mxc) => Ok(Image::Shown {
            mxc,
            sha256: image.sha256,
        }),
        Err(e @ SynapseError::Refused { .. }) => {
            Ok(Image::Refused(format!("Synapse refused the upload: {e}")))
        }
        Err(e) => Err(e),
    }
}

impl Image {
    /// The record after this outcome for `wanted`; `current` is kept when
    /// the image could not be fetched now.
    fn applied(self, wanted: Option<String>, current: AppliedAvatar) -> AppliedAvatar {
        match self {
            Image::None => AppliedAvatar::default(),
            Image::Shown { mxc, sha256 } => AppliedAvatar {
                url: wanted,
                mxc: Some(mxc),
                sha256: Some(sha256),
                error: None,
            },
            Image::Refused(reason) => AppliedAvatar {
                url: wanted,
                error: Some(reason),
                ..AppliedAvatar::default()
            },
            Image::Unavailable(reason) => AppliedAvatar {
                error: Some(reason),
                ..current
            },
        }
    }
}

/// The avatar of a person, a City Room or an agent (`kind`, `key`) after
/// following DAARION's `wanted` URL from `current`: fetched and uploaded
/// when the URL changed (reused by content hash), and recorded.
pub async fn follow<S>(
    deps: (&AvatarFetcher, &Synapse, &Store),
    kind: JobKind,
    key: &str,
    wanted: Option<String>,
    current: AppliedAvatar,
) -> Result<AppliedAvatar, Outcome<S>> {
    let (avatars, synapse, store) = deps;
    if wanted == current.url {
        return Ok(current);
    }
    let known = (current.mxc.as_deref(), current.sha256.as_deref());
    let image = image_for(avatars, synapse, wanted.as_deref(), known).await?;
    if let Image::Unavailable(reason) = &image {
        // Keep what is shown and go on with the rest; the next run (a full
        // pass at the latest) tries again.
        tracing::info!(kind = kind.as_str(), subject = %key, "avatar not fetched: {reason}");
    }
    let applied = image.applied(wanted, current);
    store.record_avatar_of(kind, key, &applied).await?;
    Ok(applied)
}
