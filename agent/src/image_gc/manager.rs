//! kubelet's `realImageGCManager`: every [`IMAGE_GC_PERIOD`], starting when the agent starts,
//! the runtime's images are listed and recorded (first detected, last seen in use by any
//! container of the runtime, whatever its node or state: a runtime may be shared), images unused
//! for longer than imageMaximumGCAge are removed, and when the image filesystem's usage is at or
//! over imageGCHighThresholdPercent the least recently used images are removed until it would be
//! below imageGCLowThresholdPercent. Pinned images and the runtime's sandbox (pause) image are
//! never removed. A failed removal is logged and the round goes on with the next image.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mk_cri::{CriClient, CriError, api};
use nix::errno::Errno;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::policy::{
    FsUsage, ImageGcPolicy, ImageRecords, ImageState, ListedImage, PlanError, Removal, free_space,
    old_images, unused_images,
};
use crate::config::KubeletConfiguration;

/// kubelet's `ImageGCPeriod`.
pub const IMAGE_GC_PERIOD: Duration = Duration::from_secs(5 * 60);

/// Reads the capacity and the available bytes of the filesystem mounted at a path.
pub type FsStatter = Arc<dyn Fn(&Path) -> Result<FsUsage, Errno> + Send + Sync>;

/// Why a garbage collection round could not run (or not to its end).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing images: {0}")]
    ListImages(#[source] CriError),
    #[error("listing containers: {0}")]
    ListContainers(#[source] CriError),
    #[error("reading the runtime's status: {0}")]
    Status(#[source] CriError),
    #[error("reading the image filesystem: {0}")]
    ImageFsInfo(#[source] CriError),
    #[error("the runtime reports no image filesystem")]
    NoImageFilesystem,
    #[error("statvfs {}: {source}", mountpoint.display())]
    Statvfs {
        mountpoint: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("invalid capacity 0 on image filesystem {}", mountpoint.display())]
    InvalidCapacity { mountpoint: PathBuf },
    #[error("the filesystem task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Images listed.
    pub images: usize,
    /// The image filesystem's usage before the space-based removals.
    pub usage_percent: u64,
    /// What the usage asked to free (zero under the high threshold).
    pub bytes_to_free: u64,
    /// Removed images, in order.
    pub removed: Vec<Removal>,
    /// Bytes the space-based removals freed.
    pub freed: u64,
    /// Removals that failed.
    pub failed: usize,
}

impl Round {
    /// Bytes still to free after the round (kubelet's "Failed to garbage collect required
    /// amount of images").
    pub fn shortfall(&self) -> u64 {
        self.bytes_to_free.saturating_sub(self.freed)
    }
}

/// The image filesystem's size through statvfs (kubelet asks cAdvisor, which does the same).
// The block counts and sizes are `fsblkcnt_t` / `c_ulong`: u64 on 64-bit Linux, narrower elsewhere.
#[allow(clippy::useless_conversion)]
pub fn statvfs_usage(mountpoint: &Path) -> Result<FsUsage, Errno> {
    let stat = nix::sys::statvfs::statvfs(mountpoint)?;
    let fragment = u64::from(stat.fragment_size());
    Ok(FsUsage {
        capacity: u64::from(stat.blocks()).saturating_mul(fragment),
        available: u64::from(stat.blocks_available()).saturating_mul(fragment),
    })
}

/// The sandbox (pause) image(s) the runtime names in its verbose status: `podInfraImage` (the
/// Docker adapter), `config.sandboxImage` (containerd 1.x), `config.pinnedImages.sandbox`
/// (containerd 2.x, which pins it too).
pub fn sandbox_images(info: &HashMap<String, String>) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(image) = info.get("podInfraImage").filter(|i| !i.is_empty()) {
        names.push(image.clone());
    }
    if let Some(config) = info
        .get("config")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
    {
        for pointer in ["/sandboxImage", "/pinnedImages/sandbox"] {
            if let Some(image) = config
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .filter(|i| !i.is_empty())
            {
                names.push(image.to_owned());
            }
        }
    }
    names
}

/// An image reference in one spelling: IDs as `sha256:<hex>`, names docker-normalized
/// (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize_reference(reference: &str) -> String {
    let reference = reference.trim();
    if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        return format!("sha256:{reference}");
    }
    if reference.starts_with("sha256:") {
        return reference.to_owned();
    }
    let (name, suffix) = match reference.split_once('@') {
        Some((name, digest)) => (name, format!("@{digest}")),
        None => {
            let last = reference.rsplit('/').next().unwrap_or(reference);
            if last.contains(':') {
                (reference, String::new())
            } else {
                (reference, ":latest".to_owned())
            }
        }
    };
    let name = match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            name.to_owned()
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    format!("{name}{suffix}")
}

/// Every name of an image, normalized: its ID, tags and digests.
fn image_names(image: &api::Image) -> impl Iterator<Item = String> + '_ {
    std::iter::once(image.id.as_str())
        .chain(image.repo_tags.iter().map(String::as_str))
        .chain(image.repo_digests.iter().map(String::as_str))
        .filter(|n| !n.is_empty())
        .map(normalize_reference)
}

/// The runtime's images, classified against every container of the runtime (of any node, in any
/// state) and the sandbox images its status names.
pub async fn list_images(cri: &CriClient) -> Result<Vec<ListedImage>, GcError> {
    let images = cri
        .list_images(api::ListImagesRequest { filter: None })
        .await
        .map_err(GcError::ListImages)?
        .images;
    let containers = cri
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .map_err(GcError::ListContainers)?
        .containers;
    let status = cri
        .status(api::StatusRequest { verbose: true })
        .await
        .map_err(GcError::Status)?;
    Ok(classify(
        &images,
        &containers,
        &sandbox_images(&status.info),
    ))
}

/// The images a round sees: in use when a container's image (its ID or the reference it was
/// created from) names it; protected when pinned or one of the sandbox images.
pub fn classify(
    images: &[api::Image],
    containers: &[api::Container],
    sandbox_images: &[String],
) -> Vec<ListedImage> {
    let used: HashSet<String> = containers
        .iter()
        .flat_map(|c| {
            [
                Some(c.image_ref.as_str()),
                c.image.as_ref().map(|spec| spec.image.as_str()),
            ]
        })
        .flatten()
        .filter(|r| !r.is_empty())
        .map(normalize_reference)
        .collect();
    let sandbox: HashSet<String> = sandbox_images
        .iter()
        .map(|s| normalize_reference(s))
        .collect();
    images
        .iter()
        .map(|image| ListedImage {
            id: image.id.clone(),
            size: image.size,
            in_use: image_names(image).any(|n| used.contains(&n)),
            protected: image.pinned || image_names(image).any(|n| sandbox.contains(&n)),
        })
        .collect()
}

/// Garbage collects the runtime's unused images. One per agent, shared (as kubelet's image GC
/// manager) by the periodic rounds and the eviction manager's disk reclaim
/// ([`Self::delete_unused_images`]), so both know each image since the same first sighting.
pub struct ImageGcManager {
    cri: CriClient,
    policy: ImageGcPolicy,
    period: Duration,
    fs_stat: FsStatter,
    /// Held only between awaits, never across one.
    records: std::sync::Mutex<ImageRecords>,
    /// When garbage collection began (imageMaximumGCAge counts from there at the earliest).
    began: SystemTime,
}

impl ImageGcManager {
    pub fn new(cri: CriClient, policy: ImageGcPolicy) -> Self {
        Self {
            cri,
            policy,
            period: IMAGE_GC_PERIOD,
            fs_stat: Arc::new(statvfs_usage),
            records: std::sync::Mutex::default(),
            began: SystemTime::now(),
        }
    }

    /// Measures the image filesystem with `fs_stat` instead of statvfs (tests).
    pub fn with_fs_stat(mut self, fs_stat: FsStatter) -> Self {
        self.fs_stat = fs_stat;
        self
    }

    /// Counts imageMaximumGCAge from `began` instead of now (tests).
    pub fn with_began(mut self, began: SystemTime) -> Self {
        self.began = began;
        self
    }

    pub fn policy(&self) -> &ImageGcPolicy {
        &self.policy
    }

    /// Runs a round at once and then every period until `cancel` (a round under way finishes).
    /// With the high threshold at 100 (garbage collection off, as kubelet) the rounds only record
    /// the images, as kubelet's image manager keeps detecting them for the eviction manager.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if !self.policy.enabled() {
            tracing::info!(
                "imageGCHighThresholdPercent is set 100, image garbage collection is off"
            );
            let mut ticks = tokio::time::interval(self.period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if let Err(e) = self.detect(SystemTime::now()).await {
                    tracing::warn!(error = %e, "listing the images failed");
                }
            }
        }
        tracing::info!(
            high_threshold = self.policy.high_threshold_percent,
            low_threshold = self.policy.low_threshold_percent,
            min_age = ?self.policy.min_age,
            max_age = ?self.policy.max_age,
            period = ?self.period,
            "image garbage collection started"
        );
        let mut ticks = tokio::time::interval(self.period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failed_before = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let failure = match self.garbage_collect(SystemTime::now()).await {
                Ok(round) if round.shortfall() > 0 => Some(format!(
                    "Failed to garbage collect required amount of images. Attempted to free {} \
                     bytes, but only found {} bytes eligible to free.",
                    round.bytes_to_free, round.freed
                )),
                Ok(round) if round.failed > 0 => {
                    Some(format!("{} image removals failed", round.failed))
                }
                Ok(round) => {
                    tracing::debug!(?round, "image garbage collection round");
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            match &failure {
                Some(err) if failed_before => {
                    tracing::error!(error = %err, "Image garbage collection failed multiple times in a row");
                }
                Some(err) => tracing::error!(
                    error = %err,
                    "Image garbage collection failed once. Stats initialization may not have completed yet"
                ),
                None => {}
            }
            failed_before = failure.is_some();
        }
    }

    /// Lists the runtime's images and records them (first seen at `now` unless seen before).
    async fn detect(&self, now: SystemTime) -> Result<Vec<ImageState>, GcError> {
        let listed = list_images(&self.cri).await?;
        Ok(self.records().detect(&listed, now))
    }

    fn records(&self) -> std::sync::MutexGuard<'_, ImageRecords> {
        // A panic while recording leaves records that are still whole: go on with them.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// kubelet's `DeleteUnusedImages`, the eviction manager's disk reclaim: removes every image
    /// that may go ([`unused_images`]: unused, unprotected, older than imageMinimumGCAge), least
    /// recently used first, whatever the thresholds. A failed removal is logged and skipped.
    pub async fn delete_unused_images(&self) -> Result<Vec<Removal>, GcError> {
        let now = SystemTime::now();
        let states = self.detect(now).await?;
        let mut round = Round {
            images: states.len(),
            ..Round::default()
        };
        for removal in unused_images(&self.policy, &states, now) {
            self.remove(removal, &mut round).await;
        }
        Ok(round.removed)
    }

    /// One round at `now`: detect, remove old images, then free space if over the threshold.
    pub async fn garbage_collect(&self, now: SystemTime) -> Result<Round, GcError> {
        let states = self.detect(now).await?;
        let mut round = Round {
            images: states.len(),
            ..Round::default()
        };

        for removal in old_images(&self.policy, &states, now, self.began) {
            self.remove(removal, &mut round).await;
        }

        let fs = self.image_fs().await?;
        let remaining: Vec<_> = states
            .into_iter()
            .filter(|s| !round.removed.iter().any(|r| r.id == s.id))
            .collect();
        let plan = free_space(&self.policy, fs.1, &remaining, now).map_err(|e| match e {
            PlanError::InvalidCapacity => GcError::InvalidCapacity {
                mountpoint: fs.0.clone(),
            },
        })?;
        round.usage_percent = plan.usage_percent;
        round.bytes_to_free = plan.bytes_to_free;
        if plan.bytes_to_free == 0 {
            return Ok(round);
        }
        tracing::info!(
            usage = plan.usage_percent,
            high_threshold = self.policy.high_threshold_percent,
            amount_to_free = plan.bytes_to_free,
            low_threshold = self.policy.low_threshold_percent,
            "Disk usage on image filesystem is over the high threshold, trying to free bytes down to the low threshold"
        );
        for removal in plan.candidates {
            if round.freed >= plan.bytes_to_free {
                break;
            }
            let size = removal.size;
            if self.remove(removal, &mut round).await {
                round.freed = round.freed.saturating_add(size);
            }
        }
        Ok(round)
    }

    /// Removes one image; a failure is logged and counted.
    async fn remove(&self, removal: Removal, round: &mut Round) -> bool {
        tracing::info!(
            image_id = %removal.id,
            size = removal.size,
            reason = removal.reason.as_str(),
            "Removing image to free bytes"
        );
        let result = self
            .cri
            .remove_image(api::RemoveImageRequest {
                image: Some(api::ImageSpec {
                    image: removal.id.clone(),
                    ..Default::default()
                }),
            })
            .await;
        match result {
            Ok(_) => {
                self.records().forget(&removal.id);
                round.removed.push(removal);
                true
            }
            Err(e) => {
                tracing::error!(image_id = %removal.id, error = %e, "Failed to remove image");
                round.failed += 1;
                false
            }
        }
    }

    /// The image filesystem's mount point (CRI ImageFsInfo) and its size (statvfs).
    async fn image_fs(&self) -> Result<(PathBuf, FsUsage), GcError> {
        let info = self
            .cri
            .image_fs_info(api::ImageFsInfoRequest {})
            .await
            .map_err(GcError::ImageFsInfo)?;
        let filesystem = info
            .image_filesystems
            .into_iter()
            .find(|f| f.fs_id.as_ref().is_some_and(|id| !id.mountpoint.is_empty()))
            .ok_or(GcError::NoImageFilesystem)?;
        let mountpoint =
            PathBuf::from(filesystem.fs_id.map(|id| id.mountpoint).unwrap_or_default());
        let used = filesystem.used_bytes.map(|u| u.value);
        let usage = {
            let (stat, path) = (self.fs_stat.clone(), mountpoint.clone());
            tokio::task::spawn_blocking(move || stat(&path)).await?
        }
        .map_err(|source| GcError::Statvfs {
            mountpoint: mountpoint.clone(),
            source,
        })?;
        tracing::debug!(
            mountpoint = %mountpoint.display(),
            capacity = usage.capacity,
            available = usage.available,
            images_used = used,
            "image filesystem"
        );
        Ok((mountpoint, usage))
    }
}

/// Starts image garbage collection as the configuration asks (detection only when
/// imageGCHighThresholdPercent is 100, as kubelet) and returns the manager, for the eviction
/// manager's disk reclaim.
pub fn spawn(
    cri: CriClient,
    config: &KubeletConfiguration,
    cancel: CancellationToken,
) -> Arc<ImageGcManager> {
    let manager = Arc::new(ImageGcManager::new(cri, ImageGcPolicy::from_config(config)));
    tokio::spawn(manager.clone().run(cancel));
    manager
}
