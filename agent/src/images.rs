//! Making sure a container's image is present, per its imagePullPolicy (kubelet's `EnsureImageExists`),
//! with kubelet's pull back-off and optional serialized pulls.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::Container;
use mk_cri::{CriClient, CriError, api};

use crate::backoff::Backoff;

/// Why an image is not available. The `reason()` is what the container's waiting state shows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("Container image \"{0}\" is not present with pull policy of Never")]
    NeverPull(String),
    #[error("Back-off pulling image \"{0}\"")]
    BackOff(String),
    #[error("Failed to pull image \"{image}\": {message}")]
    Pull { image: String, message: String },
    #[error("Failed to inspect image \"{image}\": {message}")]
    Inspect { image: String, message: String },
}

impl ImageError {
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::NeverPull(_) => "ErrImageNeverPull",
            ImageError::BackOff(_) => "ImagePullBackOff",
            ImageError::Pull { .. } => "ErrImagePull",
            ImageError::Inspect { .. } => "ImageInspectError",
        }
    }
}

pub struct ImageManager {
    cri: CriClient,
    backoff: Mutex<Backoff>,
    serialize: Option<tokio::sync::Mutex<()>>,
}

/// What happened, for events and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Ensured {
    Present(String),
    Pulled { image_ref: String, seconds: f64 },
}

impl Ensured {
    pub fn image_ref(&self) -> &str {
        match self {
            Ensured::Present(r) | Ensured::Pulled { image_ref: r, .. } => r,
        }
    }
}

fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

impl ImageManager {
    pub fn new(cri: CriClient, serialize_pulls: bool) -> Self {
        Self {
            cri,
            backoff: Mutex::new(Backoff::default()),
            serialize: serialize_pulls.then(|| tokio::sync::Mutex::new(())),
        }
    }

    async fn present(&self, image: &str) -> Result<Option<String>, CriError> {
        let status = self
            .cri
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?;
        Ok(status.image.map(|i| i.id))
    }

    /// Ensures the image of `container` is present; returns the image reference to create it from.
    /// `backoff_scope` separates back-off entries per pod (kubelet keys them by pod and image).
    pub async fn ensure(
        &self,
        container: &Container,
        backoff_scope: &str,
    ) -> Result<Ensured, ImageError> {
        let image = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .as_deref()
            .unwrap_or("IfNotPresent");
        let present = self
            .present(&image)
            .await
            .map_err(|e| ImageError::Inspect {
                image: image.clone(),
                message: e.message(),
            })?;
        let should_pull = match policy {
            "Always" => true,
            "Never" => false,
            _ => present.is_none(),
        };
        if !should_pull {
            return match present {
                Some(id) => Ok(Ensured::Present(id)),
                None => Err(ImageError::NeverPull(image)),
            };
        }
        let key = format!("{backoff_scope}_{image}");
        let in_backoff = self
            .backoff
            .lock()
            .map(|b| b.remaining_since_update(&key, now_ns()).is_some())
            .unwrap_or(false);
        if in_backoff {
            return Err(ImageError::BackOff(image));
        }
        let started = std::time::Instant::now();
        let _serial = match &self.serialize {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let result = self
            .cri
            .pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await;
        match result {
            Ok(resp) => {
                if let Ok(mut b) = self.backoff.lock() {
                    b.forget(&key);
                }
                Ok(Ensured::Pulled {
                    image_ref: resp.image_ref,
                    seconds: started.elapsed().as_secs_f64(),
                })
            }
            Err(e) => {
                if let Ok(mut b) = self.backoff.lock() {
                    b.next(&key, now_ns());
                }
                Err(ImageError::Pull {
                    image,
                    message: e.message(),
                })
            }
        }
    }
}
