//! The order pods are evicted in, as kubelet ranks them (`rankMemoryPressure`,
//! `rankDiskPressureFunc`, `rankPIDPressure` and their comparisons in `helpers.go`): the first pod
//! of the ranking is evicted first. Pure: pods and their stats in, an order out.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Volume};

use super::thresholds::{Resource, Signal};
use crate::quantity::{Format, Quantity};
use crate::stats::types::{FsStats, MemoryStats, PodStats};

/// Each pod's stats by UID.
pub type PodStatsMap = HashMap<String, PodStats>;

/// Which of a pod's filesystem figures a disk ranking adds up (kubelet's `fsStatsType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsStatsType {
    /// The containers' writable layers.
    Root,
    /// The containers' logs.
    Logs,
    /// hostPath and local ephemeral volumes (emptyDir on disk, gitRepo, configMap).
    LocalVolumeSource,
    /// Image layers (kubelet lists them; no pod figure measures them).
    Images,
}

/// How pods are ranked for a signal (kubelet's `buildSignalToRankFunc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranking {
    Memory,
    Pid,
    Disk {
        measure: Vec<FsStatsType>,
        resource: Resource,
    },
}

impl Ranking {
    /// The ranking for `signal`; `dedicated_image_fs` when the images are on a filesystem other
    /// than the node's (a separate container filesystem is not supported, as without kubelet's
    /// `KubeletSeparateDiskGC`).
    pub fn for_signal(signal: Signal, dedicated_image_fs: bool) -> Self {
        use FsStatsType::*;
        let disk = |measure: &[FsStatsType]| Ranking::Disk {
            measure: measure.to_vec(),
            resource: signal.resource(),
        };
        match signal {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Ranking::Memory,
            Signal::PidAvailable => Ranking::Pid,
            _ if !dedicated_image_fs => disk(&[Images, Root, Logs, LocalVolumeSource]),
            Signal::NodeFsAvailable
            | Signal::NodeFsInodesFree
            | Signal::ContainerFsAvailable
            | Signal::ContainerFsInodesFree => disk(&[Logs, LocalVolumeSource]),
            Signal::ImageFsAvailable | Signal::ImageFsInodesFree => disk(&[Root, Images]),
        }
    }

    /// Sorts `pods` so the first is the one to evict first.
    pub fn rank(&self, pods: &mut [Arc<Pod>], stats: &PodStatsMap) {
        match self {
            Ranking::Memory => rank_memory_pressure(pods, stats),
            Ranking::Pid => rank_pid_pressure(pods, stats),
            Ranking::Disk { measure, resource } => {
                rank_disk_pressure(pods, stats, measure, *resource)
            }
        }
    }
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// `cmpBool`: true before false.
fn true_first(a: bool, b: bool) -> Ordering {
    b.cmp(&a)
}

/// `corev1helpers.PodPriority`: the pod's priority, 0 when unset.
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// `priority`: lower priority first.
fn by_priority(a: &Pod, b: &Pod) -> Ordering {
    priority(a).cmp(&priority(b))
}

/// `v1resource.GetResourceRequestQuantity` for memory and ephemeral storage (bytes); zero for
/// resources pods cannot request (inodes, pids).
pub fn request(pod: &Pod, resource: Resource) -> Quantity {
    let name = match resource {
        Resource::Memory => "memory",
        Resource::EphemeralStorage => "ephemeral-storage",
        Resource::Inodes | Resource::Pids => return Quantity::new(0, Format::DecimalSI),
    };
    Quantity::new(crate::admission::pod_request(pod, name), Format::BinarySI)
}

/// `memoryUsage`: the working set, zero when unknown.
pub fn memory_usage(memory: Option<&MemoryStats>) -> Quantity {
    Quantity::bytes(memory.and_then(|m| m.working_set_bytes).unwrap_or(0))
}

/// Pods whose stats are missing go first; otherwise `cmp` decides.
fn with_stats<'a>(
    stats: &'a PodStatsMap,
    a: &Pod,
    b: &Pod,
    cmp: impl FnOnce(&'a PodStats, &'a PodStats) -> Ordering,
) -> Ordering {
    match (stats.get(uid(a)), stats.get(uid(b))) {
        (Some(sa), Some(sb)) => cmp(sa, sb),
        (sa, sb) => true_first(sa.is_none(), sb.is_none()),
    }
}

/// `exceedMemoryRequests`: pods using more memory than they request first.
fn exceeds_memory_requests(stats: &PodStatsMap, a: &Pod, b: &Pod) -> Ordering {
    with_stats(stats, a, b, |sa, sb| {
        let exceeds = |pod: &Pod, s: &PodStats| {
            memory_usage(s.memory.as_ref()) > request(pod, Resource::Memory)
        };
        true_first(exceeds(a, sa), exceeds(b, sb))
    })
}

/// `memory`: the larger use of memory above the request first.
fn by_memory_above_request(stats: &PodStatsMap, a: &Pod, b: &Pod) -> Ordering {
    with_stats(stats, a, b, |sa, sb| {
        let above = |pod: &Pod, s: &PodStats| {
            let mut usage = memory_usage(s.memory.as_ref());
            usage.sub(&request(pod, Resource::Memory));
            usage
        };
        above(b, sb).cmp(&above(a, sa))
    })
}

/// `process`: the most processes first.
fn by_processes(stats: &PodStatsMap, a: &Pod, b: &Pod) -> Ordering {
    with_stats(stats, a, b, |sa, sb| {
        let count = |s: &PodStats| {
            s.process_stats
                .as_ref()
                .and_then(|p| p.process_count)
                .unwrap_or(0)
        };
        count(sb).cmp(&count(sa))
    })
}

/// `rankMemoryPressure`: pods over their memory requests, then by priority, then by use above
/// the request.
pub fn rank_memory_pressure(pods: &mut [Arc<Pod>], stats: &PodStatsMap) {
    pods.sort_by(|a, b| {
        exceeds_memory_requests(stats, a, b)
            .then_with(|| by_priority(a, b))
            .then_with(|| by_memory_above_request(stats, a, b))
    });
}

/// `rankPIDPressure`: by priority, then the most processes.
pub fn rank_pid_pressure(pods: &mut [Arc<Pod>], stats: &PodStatsMap) {
    pods.sort_by(|a, b| by_priority(a, b).then_with(|| by_processes(stats, a, b)));
}

/// Bytes and inodes of a disk figure (`diskUsage`, `inodeUsage`).
fn fs_usage(fs: Option<&FsStats>) -> (Quantity, Quantity) {
    let fs = fs.cloned();
    let used = fs.as_ref().and_then(|f| f.used_bytes).unwrap_or(0);
    let inodes = fs.as_ref().and_then(|f| f.inodes_used).unwrap_or(0);
    (
        Quantity::bytes(used),
        Quantity::new(i64::try_from(inodes).unwrap_or(i64::MAX), Format::DecimalSI),
    )
}

/// `IsLocalEphemeralVolume` or hostPath (`localVolumeNames`).
fn is_local(volume: &Volume) -> bool {
    volume.host_path.is_some()
        || volume.git_repo.is_some()
        || volume.config_map.is_some()
        || volume
            .empty_dir
            .as_ref()
            .is_some_and(|e| e.medium.as_deref().unwrap_or_default().is_empty())
}

/// `podDiskUsage`: the pod's bytes and inodes on the figures `measure` names.
pub fn pod_disk_usage(
    stats: &PodStats,
    pod: &Pod,
    measure: &[FsStatsType],
) -> (Quantity, Quantity) {
    let mut disk = Quantity::new(0, Format::BinarySI);
    let mut inodes = Quantity::new(0, Format::DecimalSI);
    let mut add = |(d, i): (Quantity, Quantity)| {
        disk.add(&d);
        inodes.add(&i);
    };
    for c in &stats.containers {
        if measure.contains(&FsStatsType::Root) {
            add(fs_usage(c.rootfs.as_ref()));
        }
        if measure.contains(&FsStatsType::Logs) {
            add(fs_usage(c.logs.as_ref()));
        }
    }
    if measure.contains(&FsStatsType::LocalVolumeSource) {
        let volumes = pod.spec.as_ref().map(|s| s.volumes.iter().flatten());
        for volume in volumes.into_iter().flatten().filter(|v| is_local(v)) {
            if let Some(v) = stats.volume_stats.iter().find(|v| v.name == volume.name) {
                add(fs_usage(Some(&v.fs)));
            }
        }
    }
    (disk, inodes)
}

fn disk_of(stats: &PodStats, pod: &Pod, measure: &[FsStatsType], resource: Resource) -> Quantity {
    let (disk, inodes) = pod_disk_usage(stats, pod, measure);
    if resource == Resource::Inodes {
        inodes
    } else {
        disk
    }
}

/// `rankDiskPressureFunc`: pods over their request of the resource first, then by priority,
/// then by use above the ephemeral-storage request (kubelet subtracts that request from inode
/// counts too).
pub fn rank_disk_pressure(
    pods: &mut [Arc<Pod>],
    stats: &PodStatsMap,
    measure: &[FsStatsType],
    resource: Resource,
) {
    let exceeds = |a: &Pod, b: &Pod| {
        with_stats(stats, a, b, |sa, sb| {
            let over = |pod: &Pod, s: &PodStats| {
                disk_of(s, pod, measure, resource) > request(pod, resource)
            };
            true_first(over(a, sa), over(b, sb))
        })
    };
    let above = |a: &Pod, b: &Pod| {
        with_stats(stats, a, b, |sa, sb| {
            let above = |pod: &Pod, s: &PodStats| {
                let mut usage = disk_of(s, pod, measure, resource);
                usage.sub(&request(pod, Resource::EphemeralStorage));
                usage
            };
            above(b, sb).cmp(&above(a, sa))
        })
    };
    pods.sort_by(|a, b| {
        exceeds(a, b)
            .then_with(|| by_priority(a, b))
            .then_with(|| above(a, b))
    });
}
