//! Image references: docker-style normalization and the fake's deterministic image IDs and digests.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Default size reported for images added without an explicit size (10 MiB).
pub const DEFAULT_IMAGE_SIZE: u64 = 10 * 1024 * 1024;

/// One image in the fake store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeImage {
    /// `sha256:<64 hex>`, derived deterministically from the reference the image was added under.
    pub id: String,
    /// Normalized tags (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// Normalized digests (`docker.io/library/busybox@sha256:...`).
    pub repo_digests: Vec<String>,
    pub size: u64,
    pub pinned: bool,
}

impl FakeImage {
    /// The image a reference names once pulled: the same reference always yields the same ID.
    pub(crate) fn for_reference(normalized: &str, size: u64) -> Self {
        let id = format!("sha256:{}", hex64(&format!("image:{normalized}")));
        let (repo_tags, repo_digests) = if normalized.contains('@') {
            (Vec::new(), vec![normalized.to_string()])
        } else {
            let repo = repository(normalized);
            let digest = format!("{repo}@sha256:{}", hex64(&format!("digest:{normalized}")));
            (vec![normalized.to_string()], vec![digest])
        };
        Self {
            id,
            repo_tags,
            repo_digests,
            size,
            pinned: false,
        }
    }

    /// True when `reference` (an ID, or a reference in any spelling) names this image.
    pub(crate) fn matches(&self, reference: &str) -> bool {
        if let Some(id) = as_image_id(reference) {
            return id == self.id;
        }
        let normalized = normalize(reference);
        self.repo_tags.contains(&normalized) || self.repo_digests.contains(&normalized)
    }

    pub(crate) fn to_api(&self) -> k8s_cri::v1::Image {
        k8s_cri::v1::Image {
            id: self.id.clone(),
            repo_tags: self.repo_tags.clone(),
            repo_digests: self.repo_digests.clone(),
            size: self.size,
            uid: None,
            username: String::new(),
            spec: Some(k8s_cri::v1::ImageSpec {
                image: self.id.clone(),
                ..Default::default()
            }),
            pinned: self.pinned,
        }
    }
}

/// `sha256:<64 hex>` (or the bare 64 hex digits) is an image ID rather than a reference.
pub(crate) fn as_image_id(reference: &str) -> Option<String> {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Docker-style normalization, as containerd's CRI plugin does: `busybox` becomes
/// `docker.io/library/busybox:latest`, `quay.io/x/y` becomes `quay.io/x/y:latest`; a digest
/// reference keeps its digest and drops any tag. Image IDs are returned as they are.
pub fn normalize(reference: &str) -> String {
    let reference = reference.trim();
    if let Some(id) = as_image_id(reference) {
        return id;
    }
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (name, tag) = match name_and_tag.rfind(':') {
        Some(colon) if !name_and_tag[colon..].contains('/') => {
            (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
        }
        _ => (name_and_tag, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let mut normalized = if domain == "docker.io" && !path.contains('/') {
        format!("{domain}/library/{path}")
    } else {
        format!("{domain}/{path}")
    };
    match (digest, tag) {
        (Some(digest), _) => {
            normalized.push('@');
            normalized.push_str(digest);
        }
        (None, Some(tag)) if !tag.is_empty() => {
            normalized.push(':');
            normalized.push_str(tag);
        }
        (None, _) => normalized.push_str(":latest"),
    }
    normalized
}

/// The repository part of a normalized reference (`docker.io/library/busybox`).
fn repository(normalized: &str) -> &str {
    let name = normalized.split('@').next().unwrap_or(normalized);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

/// 64 hex digits derived deterministically from `input` (not a real SHA-256; good enough for IDs).
pub(crate) fn hex64(input: &str) -> String {
    (0u8..4)
        .map(|salt| {
            let mut hasher = DefaultHasher::new();
            salt.hash(&mut hasher);
            input.hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

/// 64 random hex digits, the shape of containerd's sandbox and container IDs.
pub(crate) fn random_hex64() -> String {
    (0..4)
        .map(|_| format!("{:016x}", fastrand::u64(..)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        for (raw, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            (
                "nginx:1.25@sha256:abcd",
                "docker.io/library/nginx@sha256:abcd",
            ),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
        let id = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize(&id), id);
        assert_eq!(normalize(&"A".repeat(64)), id);
    }

    #[test]
    fn same_reference_same_id_and_lookup_by_any_spelling() {
        let a = FakeImage::for_reference(&normalize("busybox"), 1);
        let b = FakeImage::for_reference(&normalize("docker.io/library/busybox:latest"), 1);
        assert_eq!(a, b);
        assert!(a.id.starts_with("sha256:") && a.id.len() == 71);
        assert!(a.matches("busybox"));
        assert!(a.matches("busybox:latest"));
        assert!(a.matches(&a.id));
        assert!(a.matches(&a.repo_digests[0]));
        assert!(!a.matches("busybox:1.36"));
        assert!(a.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    }

    #[test]
    fn random_ids_are_64_hex() {
        let id = random_hex64();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, random_hex64());
    }
}
