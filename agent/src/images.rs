//! Making sure a container's image is present, per its imagePullPolicy (kubelet's `EnsureImageExists`),
//! with kubelet's pull back-off and its limit on concurrent pulls.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::Container;
use mk_cri::{CriClient, CriError, api};

use crate::backoff::Backoff;

/// Why an image is not available. The `reason()` is what the container's waiting state shows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("Container image \"{0}\" is not present with pull policy of Never")]
    NeverPull(String),
    #[error("Back-off pulling image \"{image}\"")]
    BackOff {
        image: String,
        remaining: std::time::Duration,
    },
    #[error("Failed to pull image \"{image}\": {message}")]
    Pull { image: String, message: String },
    #[error("Failed to inspect image \"{image}\": {message}")]
    Inspect { image: String, message: String },
}

impl ImageError {
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::NeverPull(_) => "ErrImageNeverPull",
            ImageError::BackOff { .. } => "ImagePullBackOff",
            ImageError::Pull { .. } => "ErrImagePull",
            ImageError::Inspect { .. } => "ImageInspectError",
        }
    }
}

pub struct ImageManager {
    cri: CriClient,
    backoff: Mutex<Backoff>,
    /// kubelet's serializeImagePulls / maxParallelImagePulls: how many pulls may run at once.
    pulls: Option<tokio::sync::Semaphore>,
}

/// The image to create the container from, and what it took to have it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ensured {
    /// The image ID the runtime knows it by.
    pub image_ref: String,
    /// Seconds the pull took, when the image was pulled.
    pub pulled_seconds: Option<f64>,
    /// The image's configured user, for the runAsNonRoot check.
    pub uid: Option<i64>,
    pub username: String,
}

impl Ensured {
    fn from_image(image: &api::Image, pulled_seconds: Option<f64>) -> Self {
        Self {
            image_ref: image.id.clone(),
            pulled_seconds,
            uid: image.uid.as_ref().map(|u| u.value),
            username: image.username.clone(),
        }
    }
}

/// The registry host of an image reference, as Docker reads it (`docker.io` for `busybox`).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Credentials for `image` from `.dockerconfigjson` documents (imagePullSecrets), in order.
pub fn pull_credentials(image: &str, docker_configs: &[serde_json::Value]) -> Vec<api::AuthConfig> {
    let registry = registry_of(image);
    let mut out = Vec::new();
    for config in docker_configs {
        let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
            continue;
        };
        for (server, entry) in auths {
            let host = server
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default();
            let matches = host == registry
                || (registry == "docker.io"
                    && (host == "index.docker.io" || host == "registry-1.docker.io"));
            if !matches {
                continue;
            }
            let field = |k: &str| {
                entry
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            out.push(api::AuthConfig {
                username: field("username"),
                password: field("password"),
                auth: field("auth"),
                // kubelet's keyring passes no server address (containerd 1.6 would parse it as a URL).
                server_address: String::new(),
                identity_token: field("identitytoken"),
                registry_token: field("registrytoken"),
            });
        }
    }
    out
}

fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

impl ImageManager {
    /// `max_parallel_pulls`: 1 when pulls are serialized (kubelet's default), None for no limit.
    pub fn new(cri: CriClient, max_parallel_pulls: Option<usize>) -> Self {
        Self {
            cri,
            backoff: Mutex::new(Backoff::default()),
            pulls: max_parallel_pulls.map(|n| tokio::sync::Semaphore::new(n.max(1))),
        }
    }

    async fn present(&self, image: &str) -> Result<Option<api::Image>, CriError> {
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
        Ok(status.image)
    }

    /// Ensures the image of `container` is present; returns the image reference to create it from.
    /// `backoff_scope` separates back-off entries per pod (kubelet keys them by pod and image).
    pub async fn ensure(
        &self,
        container: &Container,
        backoff_scope: &str,
        credentials: &[api::AuthConfig],
        on_pull: impl FnOnce(),
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
                Some(found) => Ok(Ensured::from_image(&found, None)),
                None => Err(ImageError::NeverPull(image)),
            };
        }
        let key = format!("{backoff_scope}_{image}");
        let remaining = self
            .backoff
            .lock()
            .ok()
            .and_then(|b| b.remaining_since_update(&key, now_ns()));
        if let Some(remaining) = remaining {
            return Err(ImageError::BackOff { image, remaining });
        }
        on_pull();
        let started = std::time::Instant::now();
        let _permit = match &self.pulls {
            Some(limit) => limit.acquire().await.ok(),
            None => None,
        };
        // kubelet tries each matching credential in turn, then anonymously.
        let attempts: Vec<Option<api::AuthConfig>> = credentials
            .iter()
            .cloned()
            .map(Some)
            .chain(std::iter::once(None))
            .collect();
        let mut errors: Vec<String> = Vec::new();
        for auth in attempts {
            let result = self
                .cri
                .pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: None,
                })
                .await;
            match result {
                Ok(_) => {
                    if let Ok(mut b) = self.backoff.lock() {
                        b.forget(&key);
                    }
                    let seconds = started.elapsed().as_secs_f64();
                    let pulled = self
                        .present(&image)
                        .await
                        .map_err(|e| ImageError::Inspect {
                            image: image.clone(),
                            message: e.message(),
                        })?;
                    return match pulled {
                        Some(found) => Ok(Ensured::from_image(&found, Some(seconds))),
                        None => Err(ImageError::Inspect {
                            image: image.clone(),
                            message: "pulled image not found".into(),
                        }),
                    };
                }
                Err(e) => {
                    let message = e.message();
                    if !errors.contains(&message) {
                        errors.push(message);
                    }
                }
            }
        }
        if let Ok(mut b) = self.backoff.lock() {
            b.next(&key, now_ns());
        }
        Err(ImageError::Pull {
            image,
            message: errors.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_as_docker_reads_it() {
        for (image, host) in [
            ("busybox", "docker.io"),
            ("library/busybox:1", "docker.io"),
            ("quay.io/x/y:1", "quay.io"),
            ("localhost:5000/app:1", "localhost:5000"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000"),
            ("localhost/app", "localhost"),
        ] {
            assert_eq!(registry_of(image), host, "{image}");
        }
    }

    #[test]
    fn credentials_match_the_image_registry() {
        let config = serde_json::json!({"auths": {
            "127.0.0.1:5000": {"username": "u", "password": "p", "auth": "dTpw"},
            "https://index.docker.io/v1/": {"auth": "aHViOmh1Yg=="},
            "quay.io": {"username": "q"}
        }});
        let local = pull_credentials("127.0.0.1:5000/app:1", std::slice::from_ref(&config));
        assert_eq!(local.len(), 1);
        assert_eq!(
            (local[0].username.as_str(), local[0].password.as_str()),
            ("u", "p")
        );
        let hub = pull_credentials("busybox:1.36", std::slice::from_ref(&config));
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].auth, "aHViOmh1Yg==");
        assert!(pull_credentials("ghcr.io/x:1", &[config]).is_empty());
    }
}
