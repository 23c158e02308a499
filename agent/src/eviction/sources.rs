//! What the eviction manager reads and reclaims through on a real node: the stats provider's
//! summary (and whether the image filesystem is the node's), container garbage collection's
//! `collect`, and kubelet's `DeleteUnusedImages` of the agent's one image garbage collector.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use mk_cri::{CriClient, api};
use tokio::sync::watch;

use super::manager::{NodeReclaim, ObserveError, ReclaimError, StatsSource};
use crate::container_gc::ContainerGc;
use crate::image_gc::ImageGcManager;
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

/// Node-level disk reclaim on a real node: container garbage collection's `collect` (with the
/// sources' readiness), then the image garbage collector's `delete_unused_images`.
pub struct GcReclaim {
    pub containers: ContainerGc,
    pub images: Arc<ImageGcManager>,
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
            let removed = self.images.delete_unused_images().await?;
            tracing::info!(
                images = removed.len(),
                "eviction manager: deleted unused images"
            );
            Ok(())
        }
        .boxed()
    }
}
