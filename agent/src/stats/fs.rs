//! Filesystem figures of the Summary, as kubelet's volume metrics (`MetricsDu`) and host stats
//! provider take them: bytes a directory tree occupies on disk (allocated blocks, hard links once,
//! not crossing into other filesystems) and its inode count; the size of the filesystem holding a
//! path (`statvfs`); the pod's volumes under `<root_dir>/pods/<uid>/volumes/<plugin>/<name>`; the
//! container logs under the pod log directory.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::types::{FsStats, VolumeStats};
use crate::kuberuntime::pod_files;
use crate::volumes::host::is_tmpfs_mount;

/// A filesystem's size (`statvfs`), as cAdvisor's `FsInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsInfo {
    pub capacity_bytes: u64,
    /// Bytes in use: capacity less free blocks (reserved blocks count as used).
    pub usage_bytes: u64,
    /// Bytes an unprivileged writer may still use.
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// `statvfs` of the filesystem holding `path`.
pub fn fs_info(path: &Path) -> std::io::Result<FsInfo> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    // The field types differ between platforms (u32 or u64).
    #[allow(clippy::useless_conversion)]
    let (frsize, blocks, bfree, bavail, files, ffree) = (
        u64::from(s.fragment_size()),
        u64::from(s.blocks()),
        u64::from(s.blocks_free()),
        u64::from(s.blocks_available()),
        u64::from(s.files()),
        u64::from(s.files_free()),
    );
    Ok(FsInfo {
        capacity_bytes: blocks.saturating_mul(frsize),
        usage_bytes: blocks.saturating_sub(bfree).saturating_mul(frsize),
        available_bytes: bavail.saturating_mul(frsize),
        inodes: files,
        inodes_free: ffree,
    })
}

impl FsInfo {
    /// FsStats with this filesystem's size and `used` (bytes, inodes) of some part of it.
    pub fn stats(&self, time: Time, used: Option<DiskUsage>) -> FsStats {
        FsStats {
            time,
            available_bytes: Some(self.available_bytes),
            capacity_bytes: Some(self.capacity_bytes),
            used_bytes: used.map(|u| u.bytes),
            inodes_free: Some(self.inodes_free),
            inodes: Some(self.inodes),
            inodes_used: used.map(|u| u.inodes),
        }
    }
}

/// What a file tree occupies (`du -s -x`, and its inode count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
}

impl std::ops::Add for DiskUsage {
    type Output = DiskUsage;
    fn add(self, other: DiskUsage) -> DiskUsage {
        DiskUsage {
            bytes: self.bytes.saturating_add(other.bytes),
            inodes: self.inodes.saturating_add(other.inodes),
        }
    }
}

/// The blocks (`st_blocks` × 512) and inodes of `path` and everything under it on the same
/// filesystem, hard links counted once; symbolic links are not followed. Entries that vanish during
/// the walk count for nothing.
pub fn disk_usage(path: &Path) -> std::io::Result<DiskUsage> {
    let root = std::fs::symlink_metadata(path)?;
    let mut seen = HashSet::new();
    let mut total = DiskUsage::default();
    let mut stack = vec![(path.to_path_buf(), root)];
    while let Some((p, meta)) = stack.pop() {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total.bytes = total
            .bytes
            .saturating_add(meta.blocks().saturating_mul(512));
        total.inodes += 1;
        if !meta.is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&p) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let child = entry.path();
            if let Ok(m) = std::fs::symlink_metadata(&child)
                && m.dev() == meta.dev()
            {
                stack.push((child, m));
            }
        }
    }
    Ok(total)
}

/// The summed usage of the regular files directly in `dir` (kubelet's `fileMetricsByDir`: a
/// container's log files, or the pod log directory's own files); `None` when `dir` cannot be read.
pub fn files_usage(dir: &Path) -> Option<DiskUsage> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut total = DiskUsage::default();
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(u) = disk_usage(&entry.path()) {
            total = total + u;
        }
    }
    Some(total)
}

/// One pod volume's figures, and whether it counts as local ephemeral storage.
#[derive(Debug, Clone, PartialEq)]
pub struct PodVolume {
    pub stats: VolumeStats,
    /// kubelet's `IsLocalEphemeralVolume`: a disk-backed emptyDir or a configMap.
    pub ephemeral: bool,
}

/// The pod's materialized volumes (`<root_dir>/pods/<uid>/volumes/<plugin>/<name>`), sorted by name.
pub fn pod_volumes(root_dir: &Path, uid: &str, time: &Time) -> Vec<PodVolume> {
    let dir = pod_files::pod_dir(root_dir, uid).join("volumes");
    let Ok(plugins) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut volumes = Vec::new();
    for plugin in plugins.filter_map(Result::ok) {
        let plugin_name = plugin.file_name().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(plugin.path()) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let (Ok(used), Ok(info)) = (disk_usage(&path), fs_info(&path)) else {
                continue;
            };
            let ephemeral = match plugin_name.as_str() {
                "kubernetes.io~empty-dir" => !is_tmpfs_mount(&path),
                "kubernetes.io~configmap" => true,
                _ => false,
            };
            volumes.push(PodVolume {
                stats: VolumeStats {
                    fs: info.stats(time.clone(), Some(used)),
                    name: entry.file_name().to_string_lossy().into_owned(),
                },
                ephemeral,
            });
        }
    }
    volumes.sort_by(|a, b| a.stats.name.cmp(&b.stats.name));
    volumes
}

/// The pod's hosts file (`<root_dir>/pods/<uid>/etc-hosts`), when the agent wrote one.
pub fn etc_hosts_usage(root_dir: &Path, uid: &str) -> Option<DiskUsage> {
    disk_usage(&pod_files::pod_dir(root_dir, uid).join("etc-hosts")).ok()
}
