//! The image a City Room or an agent should show for DAARION.city's
//! `avatar_url`: fetched like people's avatars (SSRF-safe, size-limited),
//! uploaded once and reused while its content hash is unchanged.

use crate::avatar::{AvatarFetcher, FetchError};
use crate::synapse::{Synapse, SynapseError};

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
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
pub async fn image_for(
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

/// What is recorded of an avatar: the DAARION URL it shows, the upload
/// and its hash, and why it is not shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub url: Option<String>,
    pub mxc: Option<String>,
    pub sha256: Option<String>,
    pub error: Option<String>,
}

impl Image {
    /// The record after this outcome for `wanted`; `current` is kept when
    /// the image could not be fetched now.
    pub fn applied(self, wanted: Option<String>, current: Applied) -> Applied {
        match self {
            Image::None => Applied::default(),
            Image::Shown { mxc, sha256 } => Applied {
                url: wanted,
                mxc: Some(mxc),
                sha256: Some(sha256),
                error: None,
            },
            Image::Refused(reason) => Applied {
                url: wanted,
                error: Some(reason),
                ..Applied::default()
            },
            Image::Unavailable(reason) => Applied {
                error: Some(reason),
                ..current
            },
        }
    }
}
