//! The ImageService: PullImage, ImageStatus, ListImages, RemoveImage, ImageFsInfo.

use std::collections::HashMap;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::models::ImageInspect;
use bollard::query_parameters::{CreateImageOptions, ListImagesOptions, RemoveImageOptions};
use futures::TryStreamExt;
use k8s_cri::v1 as api;

use crate::error::{OpError, is_conflict, is_not_found};
use crate::{DockerShim, convert};

/// Docker's normalisation of an image reference: `busybox` → `docker.io/library/busybox:latest`,
/// `example.com/x` → `example.com/x:latest`; a digest stays without a tag. Image IDs (`sha256:…`,
/// or 64 bare hex digits) are returned unchanged.
pub fn normalize_reference(reference: &str) -> String {
    let reference = reference.trim();
    if is_image_id(reference) {
        return reference.to_string();
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    // A tag is a `:` after the last `/` (a `:` before it belongs to a registry port).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    let (domain, path) = match repository.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_string())
        }
        _ => ("docker.io", repository.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    out
}

/// `sha256:<64 hex>` or 64 bare hex digits.
pub(crate) fn is_image_id(reference: &str) -> bool {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The CRI's registry credentials as Docker's (`auth` is `base64(user:password)`, which dockerd
/// itself ignores, so it is decoded here).
pub(crate) fn credentials(auth: Option<&api::AuthConfig>) -> Option<DockerCredentials> {
    let auth = auth?;
    let (mut username, mut password) = (auth.username.clone(), auth.password.clone());
    if username.is_empty()
        && password.is_empty()
        && !auth.auth.is_empty()
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(auth.auth.trim())
        && let Ok(decoded) = String::from_utf8(decoded)
        && let Some((user, pass)) = decoded.split_once(':')
    {
        username = user.to_string();
        password = pass.to_string();
    }
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(DockerCredentials {
        username: some(&username),
        password: some(&password),
        serveraddress: some(&auth.server_address),
        identitytoken: some(&auth.identity_token),
        registrytoken: some(&auth.registry_token),
        ..Default::default()
    })
}

/// The CRI image of Docker's inspection.
pub(crate) fn cri_image(inspect: &ImageInspect) -> api::Image {
    let id = inspect.id.clone().unwrap_or_default();
    let user = inspect
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let (uid, username) = image_user(&user);
    api::Image {
        id: id.clone(),
        repo_tags: inspect.repo_tags.clone().unwrap_or_default(),
        repo_digests: inspect.repo_digests.clone().unwrap_or_default(),
        size: inspect
            .size
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        uid,
        username,
        spec: Some(api::ImageSpec {
            image: id,
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The image's `User` as the CRI wants it: a numeric user as uid, a name as username (the group
/// part is dropped), nothing for an empty user.
pub(crate) fn image_user(user: &str) -> (Option<api::Int64Value>, String) {
    let user = user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(value) => (Some(api::Int64Value { value }), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// What a container's status reports as its image reference: the first repo digest, else the ID.
pub(crate) fn image_ref(inspect: &ImageInspect) -> String {
    inspect
        .repo_digests
        .as_ref()
        .and_then(|d| d.first().cloned())
        .or_else(|| inspect.id.clone())
        .unwrap_or_default()
}

impl DockerShim {
    /// Docker's inspection of an image, None when absent.
    pub(crate) async fn inspect_image(
        &self,
        reference: &str,
    ) -> Result<Option<ImageInspect>, OpError> {
        if reference.is_empty() {
            return Err(OpError::InvalidArgument("no image given".into()));
        }
        match self.docker().inspect_image(reference).await {
            Ok(image) => Ok(Some(image)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(OpError::docker(format!("inspecting image {reference}"), e)),
        }
    }

    pub(crate) async fn image_status(
        &self,
        spec: Option<api::ImageSpec>,
    ) -> Result<api::ImageStatusResponse, OpError> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        let image = self.inspect_image(&reference).await?;
        Ok(api::ImageStatusResponse {
            image: image.as_ref().map(cri_image),
            info: HashMap::new(),
        })
    }

    pub(crate) async fn list_images(
        &self,
        filter: Option<api::ImageFilter>,
    ) -> Result<api::ListImagesResponse, OpError> {
        if let Some(reference) = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty())
        {
            let image = self.inspect_image(&reference).await?;
            return Ok(api::ListImagesResponse {
                images: image.as_ref().map(cri_image).into_iter().collect(),
            });
        }
        let summaries = self
            .docker()
            .list_images(Some(ListImagesOptions {
                all: false,
                digests: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| OpError::docker("listing images", e))?;
        // From the list alone (one call): the image's user, which the list lacks, matters to
        // ImageStatus (kubelet's runAsNonRoot check), not to listing.
        let images = summaries
            .into_iter()
            .map(|summary| api::Image {
                spec: Some(api::ImageSpec {
                    image: summary.id.clone(),
                    ..Default::default()
                }),
                id: summary.id,
                repo_tags: summary
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                repo_digests: summary
                    .repo_digests
                    .into_iter()
                    .filter(|d| d != "<none>@<none>")
                    .collect(),
                size: u64::try_from(summary.size).unwrap_or(0),
                uid: None,
                username: String::new(),
                pinned: false,
            })
            .collect();
        Ok(api::ListImagesResponse { images })
    }

    pub(crate) async fn pull_image(
        &self,
        request: api::PullImageRequest,
    ) -> Result<api::PullImageResponse, OpError> {
        let requested = request.image.map(|s| s.image).unwrap_or_default();
        if requested.is_empty() {
            return Err(OpError::InvalidArgument("no image given".into()));
        }
        if is_image_id(&requested) {
            // An ID cannot be pulled: it is there or not.
            return match self.inspect_image(&requested).await? {
                Some(image) => Ok(api::PullImageResponse {
                    image_ref: image.id.unwrap_or(requested),
                }),
                None => Err(OpError::NotFound(format!(
                    "image ID {requested} is not present and cannot be pulled by ID"
                ))),
            };
        }
        let reference = normalize_reference(&requested);
        let options = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        self.docker()
            .create_image(Some(options), None, credentials(request.auth.as_ref()))
            .try_for_each(|progress| async move {
                // dockerd reports pull failures in the stream (HTTP 200 already sent).
                match progress.error_detail.and_then(|d| d.message) {
                    Some(message) => {
                        Err(bollard::errors::Error::DockerStreamError { error: message })
                    }
                    None => Ok(()),
                }
            })
            .await
            .map_err(|e| match &e {
                bollard::errors::Error::DockerStreamError { error }
                    if error.contains("not found") || error.contains("does not exist") =>
                {
                    OpError::NotFound(format!("pulling image {reference}: {error}"))
                }
                _ => OpError::docker(format!("pulling image {reference}"), e),
            })?;
        let image = self.inspect_image(&reference).await?.ok_or_else(|| {
            OpError::NotFound(format!("image {reference} is absent after pulling it"))
        })?;
        tracing::debug!(image = %reference, elapsed = ?started.elapsed(), "pulled image");
        Ok(api::PullImageResponse {
            image_ref: image.id.unwrap_or_default(),
        })
    }

    /// Removes every tag of the image (then the image goes with its last tag), or the image by ID
    /// when it has none. An absent image is not an error; an image used by a container is
    /// (FailedPrecondition), as Docker refuses to remove it.
    pub(crate) async fn remove_image(&self, spec: Option<api::ImageSpec>) -> Result<(), OpError> {
        // Two removals racing: Docker answers the loser 500 "unrecognized image ID" (not 404)
        // when the winner deleted the image between its lookup and its delete.
        fn lost_removal_race(e: &bollard::errors::Error) -> bool {
            matches!(
                e,
                bollard::errors::Error::DockerResponseServerError { status_code: 500, message }
                    if message.contains("unrecognized image ID")
            )
        }
        let reference = spec.map(|s| s.image).unwrap_or_default();
        let image = match self.removal_look(&reference).await? {
            Look::Gone => return Ok(()),
            // Another removal is deleting it: wait for it to finish below.
            Look::Removing => None,
            Look::Present(image) => Some(image),
        };
        let mut wait_for = reference.clone();
        if let Some(image) = image {
            let id = image.id.clone().unwrap_or_default();
            if !id.is_empty() {
                wait_for = id.clone();
            }
            let tags = image.repo_tags.clone().unwrap_or_default();
            let targets = if tags.is_empty() { vec![id] } else { tags };
            for target in targets {
                match self
                    .docker()
                    .remove_image(&target, Some(RemoveImageOptions::default()), None)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) || lost_removal_race(&e) => {}
                    Err(e) if is_conflict(&e) => {
                        return Err(OpError::FailedPrecondition(format!(
                            "removing image {target}: {e}"
                        )));
                    }
                    Err(e) => return Err(OpError::docker(format!("removing image {target}"), e)),
                }
            }
        }
        // A concurrent RemoveImage of the same image may have been the one that deleted it, and
        // Docker answers the others 404 before its deletion has finished: return only once the image
        // is really gone, so ImageStatus right after RemoveImage never finds it (critest checks this).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !matches!(self.removal_look(&wait_for).await?, Look::Gone) {
            if tokio::time::Instant::now() > deadline {
                return Err(OpError::FailedPrecondition(format!(
                    "image {reference} is still present after removal"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// An image as a removal sees it: dockerd answers an inspection of an image whose layers a
    /// concurrent removal already deleted with 500 "layer does not exist".
    async fn removal_look(&self, reference: &str) -> Result<Look, OpError> {
        if reference.is_empty() {
            return Err(OpError::InvalidArgument("no image given".into()));
        }
        match self.docker().inspect_image(reference).await {
            Ok(image) => Ok(Look::Present(Box::new(image))),
            Err(e) if is_not_found(&e) => Ok(Look::Gone),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message,
            }) if message.contains("layer does not exist") => Ok(Look::Removing),
            Err(e) => Err(OpError::docker(format!("inspecting image {reference}"), e)),
        }
    }

    /// The file system of Docker's data root, with the bytes its images take (sum of the image
    /// sizes; layers shared between images count once per image, as `docker images` shows).
    pub(crate) async fn image_fs_info(&self) -> Result<api::ImageFsInfoResponse, OpError> {
        let info = self
            .docker()
            .info()
            .await
            .map_err(|e| OpError::docker("docker info", e))?;
        let summaries = self
            .docker()
            .list_images(Some(ListImagesOptions::default()))
            .await
            .map_err(|e| OpError::docker("listing images", e))?;
        let used: u64 = summaries
            .iter()
            .filter_map(|s| u64::try_from(s.size).ok())
            .sum();
        Ok(api::ImageFsInfoResponse {
            image_filesystems: vec![api::FilesystemUsage {
                timestamp: convert::now_ns(),
                fs_id: Some(api::FilesystemIdentifier {
                    mountpoint: info.docker_root_dir.unwrap_or_default(),
                }),
                used_bytes: Some(api::UInt64Value { value: used }),
                inodes_used: None,
            }],
            container_filesystems: Vec::new(),
        })
    }
}

/// What a removal finds of an image.
enum Look {
    Present(Box<ImageInspect>),
    /// A concurrent removal has deleted its layers and is finishing.
    Removing,
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_docker() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("someone/app:v1", "docker.io/someone/app:v1"),
            (
                "mini-kubelet.local/pause:3.10",
                "mini-kubelet.local/pause:3.10",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
            ("127.0.0.1:5000/team/app:2", "127.0.0.1:5000/team/app:2"),
            (
                "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "docker.io/library/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
            (
                "quay.io/x/y:1@sha256:1111111111111111111111111111111111111111111111111111111111111111",
                "quay.io/x/y:1@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            ),
        ] {
            assert_eq!(normalize_reference(given), want, "{given}");
        }
    }

    #[test]
    fn image_ids_are_left_alone() {
        let id = "sha256:471976c4b36348c584af833390f25fe6d82a114f146497d6717b98893b8b8cab";
        assert!(is_image_id(id));
        assert!(is_image_id(&id[7..]));
        assert_eq!(normalize_reference(id), id);
        assert!(!is_image_id("sha256:abc"));
        assert!(!is_image_id("busybox"));
    }

    #[test]
    fn auth_config_becomes_docker_credentials() {
        assert!(credentials(None).is_none());
        let auth = api::AuthConfig {
            // base64("user:p:w")
            auth: "dXNlcjpwOnc=".into(),
            server_address: "registry.example".into(),
            ..Default::default()
        };
        let creds = credentials(Some(&auth)).unwrap_or_default();
        assert_eq!(creds.username.as_deref(), Some("user"));
        assert_eq!(creds.password.as_deref(), Some("p:w"));
        assert_eq!(creds.serveraddress.as_deref(), Some("registry.example"));
        let explicit = api::AuthConfig {
            username: "a".into(),
            password: "b".into(),
            auth: "dXNlcjpwOnc=".into(),
            ..Default::default()
        };
        let creds = credentials(Some(&explicit)).unwrap_or_default();
        assert_eq!(creds.username.as_deref(), Some("a"));
        assert_eq!(creds.identitytoken, None);
    }

    #[test]
    fn image_users() {
        assert_eq!(image_user(""), (None, String::new()));
        assert_eq!(
            image_user("1000:1000"),
            (Some(api::Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(image_user("app"), (None, "app".to_string()));
    }

    #[test]
    fn image_mapping() {
        let inspect = ImageInspect {
            id: Some("sha256:aa".into()),
            repo_tags: Some(vec!["mini-kubelet.local/busybox:1.36".into()]),
            repo_digests: None,
            size: Some(1234),
            ..Default::default()
        };
        let image = cri_image(&inspect);
        assert_eq!(image.id, "sha256:aa");
        assert_eq!(image.size, 1234);
        assert_eq!(image_ref(&inspect), "sha256:aa");
        let pulled = ImageInspect {
            repo_digests: Some(vec!["docker.io/library/busybox@sha256:bb".into()]),
            ..inspect
        };
        assert_eq!(image_ref(&pulled), "docker.io/library/busybox@sha256:bb");
    }
}
