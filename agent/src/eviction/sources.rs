//! What the eviction manager reads and reclaims through on a real node: the stats provider's
//! summary (and whether the image filesystem is the node's), container garbage collection's
//! `collect`, and kubelet's `DeleteUnusedImages` over image garbage collection's classification.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use mk_cri::{CriClient, api};
use tokio::sync::{Mutex, watch};

use super::manager::{NodeReclaim, ObserveError, ReclaimError, StatsSource};
use crate::container_gc::ContainerGc;
use crate::image_gc::GcError;
use crate::image_gc::manager::list_images;
use crate::image_gc::policy::{ImageRecords, ImageState};
use crate::sources::PodSet;
use crate::stats::StatsProvider;
use crate::stats::types::Summary;

/// The stats provider's full summary; the image filesystem is dedicated when the runtime's image
/// filesystem mount point is on another device than the root directory.
pub struct ProviderStats {
    pub provider: StatsProvider,
    pub cri: CriClient,
    pub root_dir: PathBuf,
}

/// The device of `path`, or of its nearest existing ancestor.
fn device(path: &Path) -> std::io::Result<u64> {
    let mut candidate = path;
    loop {
        match std::fs::metadata(candidate) {
            Ok(meta) => return Ok(meta.dev()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match candidate.parent() {
                Some(parent) => candidate = parent,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

impl ProviderStats {
    async fn dedicated_image_fs(&self) -> Result<bool, ObserveError> {
        let info = self
            .cri
            .image_fs_info(api::ImageFsInfoRequest {})
            .await
            .map_err(ObserveError::ImageFsInfo)?;
        let mountpoint = info
            .image_filesystems
            .into_iter()
            .filter_map(|f| f.fs_id.map(|id| id.mountpoint))
            .find(|m| !m.is_empty())
            .ok_or(ObserveError::NoImageFs)?;
        let root = self.root_dir.clone();
        let image = PathBuf::from(&mountpoint);
        let (root_dev, image_dev) =
            tokio::task::spawn_blocking(move || (device(&root), device(&image)))
                .await
                .map_err(|e| ObserveError::Stat {
                    path: PathBuf::from(&mountpoint),
                    source: std::io::Error::other(e),
                })?;
        let stat = |path: PathBuf| move |source| ObserveError::Stat { path, source };
        let root_dev = root_dev.map_err(stat(self.root_dir.clone()))?;
        let image_dev = image_dev.map_err(stat(PathBuf::from(&mountpoint)))?;
        let dedicated = root_dev != image_dev;
        tracing::info!(
            image_fs = %mountpoint,
            node_fs = %self.root_dir.display(),
            dedicated,
            "eviction manager: image filesystem detected"
        );
        Ok(dedicated)
    }
}

impl StatsSource for ProviderStats {
    fn summary(&self) -> BoxFuture<'_, Result<Summary, ObserveError>> {
        async move { Ok(self.provider.summary(false).await?) }.boxed()
    }

    fn has_dedicated_image_fs(&self) -> BoxFuture<'_, Result<bool, ObserveError>> {
        self.dedicated_image_fs().boxed()
    }
}

/// kubelet's `DeleteUnusedImages`: every image no container uses, that is neither pinned nor the
/// sandbox image and was first seen at least `imageMinimumGCAge` ago, least recently used first.
/// First sightings are recorded from [`ImageReclaim::detect`] (at start) and every reclaim, as
/// kubelet's image manager records them.
pub struct ImageReclaim {
    cri: CriClient,
    min_age: Duration,
    records: Mutex<ImageRecords>,
}

impl ImageReclaim {
    pub fn new(cri: CriClient, min_age: Duration) -> Self {
        Self {
            cri,
            min_age,
            records: Mutex::new(ImageRecords::default()),
        }
    }

    /// Lists the images and records them (first seen now, unless seen before).
    pub async fn detect(&self) -> Result<Vec<ImageState>, GcError> {
        let listed = list_images(&self.cri).await?;
        Ok(self.records.lock().await.detect(&listed, SystemTime::now()))
    }

    /// Removes the unused images; returns their IDs. A failed removal is logged and skipped.
    pub async fn delete_unused(&self) -> Result<Vec<String>, GcError> {
        tracing::info!("attempting to delete unused images");
        let now = SystemTime::now();
        let states = self.detect().await?;
        let mut candidates = unused_images(&states, self.min_age, now);
        candidates.sort_by_key(|i| (i.last_used, i.first_detected));
        let mut removed = Vec::new();
        for image in candidates {
            tracing::info!(image_id = %image.id, size = image.size, "removing image to free bytes");
            match self
                .cri
                .remove_image(api::RemoveImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.id.clone(),
                        ..Default::default()
                    }),
                })
                .await
            {
                Ok(_) => {
                    self.records.lock().await.forget(&image.id);
                    removed.push(image.id);
                }
                Err(e) => {
                    tracing::error!(image_id = %image.id, error = %e, "failed to remove image");
                }
            }
        }
        Ok(removed)
    }
}

/// The images [`ImageReclaim::delete_unused`] may remove at `now`.
pub fn unused_images(states: &[ImageState], min_age: Duration, now: SystemTime) -> Vec<ImageState> {
    states
        .iter()
        .filter(|i| !i.in_use && !i.protected)
        .filter(|i| now.duration_since(i.first_detected).unwrap_or_default() >= min_age)
        .cloned()
        .collect()
}

/// Node-level disk reclaim on a real node: container garbage collection's `collect` (with the
/// sources' readiness), then [`ImageReclaim`].
pub struct GcReclaim {
    pub containers: ContainerGc,
    pub images: ImageReclaim,
    /// The pods the sources want: `synced` once every source has listed.
    pub desired: watch::Receiver<PodSet>,
}

impl NodeReclaim for GcReclaim {
    fn delete_unused_containers(&self) -> BoxFuture<'_, Result<(), ReclaimError>> {
        async move {
            let all_sources_ready = self.desired.borrow().synced;
            let round = self.containers.collect(all_sources_ready).await?;
            tracing::info!(
                containers = round.containers.len(),
                sandboxes = round.sandboxes.len(),
                "eviction manager: deleted unused containers"
            );
            Ok(())
        }
        .boxed()
    }

    fn delete_unused_images(&self) -> BoxFuture<'_, Result<(), ReclaimError>> {
        async move {
            let removed = self.images.delete_unused().await?;
            tracing::info!(
                images = removed.len(),
                "eviction manager: deleted unused images"
            );
            Ok(())
        }
        .boxed()
    }
}
