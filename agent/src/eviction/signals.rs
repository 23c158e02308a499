//! The eviction signals observed from a stats summary (kubelet's `makeSignalObservations`), and each
//! pod's usage from the same summary (its `statsFunc`).

use std::collections::HashMap;

use jiff::Timestamp;

use super::thresholds::{Observations, Signal, SignalObservation};
use crate::quantity::{Format, Quantity};
use crate::stats::types::{FsStats, PodStats, SYSTEM_CONTAINER_PODS, Summary};

fn bytes(n: u64) -> Quantity {
    Quantity::bytes(n)
}

fn count(n: u64) -> Quantity {
    Quantity::new(i64::try_from(n).unwrap_or(i64::MAX), Format::DecimalSI)
}

fn at(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<Timestamp> {
    Some(time.0)
}

/// The byte and inode observations of one filesystem.
fn filesystem(
    fs: &FsStats,
    available: Signal,
    inodes_free: Signal,
    observations: &mut Observations,
) {
    if let (Some(avail), Some(capacity)) = (fs.available_bytes, fs.capacity_bytes) {
        observations.insert(
            available,
            SignalObservation {
                available: bytes(avail),
                capacity: bytes(capacity),
                time: at(&fs.time),
            },
        );
    }
    if let (Some(free), Some(inodes)) = (fs.inodes_free, fs.inodes) {
        observations.insert(
            inodes_free,
            SignalObservation {
                available: count(free),
                capacity: count(inodes),
                time: at(&fs.time),
            },
        );
    }
}

/// `makeSignalObservations`: every signal the summary measures. `memory.available` is the node's
/// available memory out of available + working set; `allocatableMemory.available` the same of the
/// pods' cgroup (when it has a limit); `nodefs.*` the root directory's filesystem; `imagefs.*` the
/// runtime's image filesystem; `pid.available` the task limit less the tasks.
pub fn observe(summary: &Summary) -> Observations {
    let mut observations = Observations::new();
    let node = &summary.node;
    let memory_signals = node
        .memory
        .iter()
        .map(|m| (Signal::MemoryAvailable, m))
        .chain(
            node.system_containers
                .iter()
                .filter(|c| c.name == SYSTEM_CONTAINER_PODS)
                .filter_map(|c| c.memory.as_ref())
                .map(|m| (Signal::AllocatableMemoryAvailable, m)),
        );
    for (signal, memory) in memory_signals {
        if let (Some(available), Some(working_set)) =
            (memory.available_bytes, memory.working_set_bytes)
        {
            observations.insert(
                signal,
                SignalObservation {
                    available: bytes(available),
                    capacity: bytes(available.saturating_add(working_set)),
                    time: at(&memory.time),
                },
            );
        }
    }
    if let Some(fs) = &node.fs {
        filesystem(
            fs,
            Signal::NodeFsAvailable,
            Signal::NodeFsInodesFree,
            &mut observations,
        );
    }
    if let Some(fs) = node.runtime.as_ref().and_then(|r| r.image_fs.as_ref()) {
        filesystem(
            fs,
            Signal::ImageFsAvailable,
            Signal::ImageFsInodesFree,
            &mut observations,
        );
    }
    if let Some(rlimit) = &node.rlimit
        && let (Some(max), Some(running)) = (rlimit.max_pid, rlimit.num_of_running_processes)
    {
        let available = max.saturating_sub(running);
        observations.insert(
            Signal::PidAvailable,
            SignalObservation {
                available: Quantity::new(available, Format::DecimalSI),
                capacity: Quantity::new(max, Format::DecimalSI),
                time: at(&rlimit.time),
            },
        );
    }
    observations
}

/// Each pod's stats by UID (kubelet's `cachedStatsFunc`).
pub fn pod_stats(summary: &Summary) -> HashMap<String, PodStats> {
    summary
        .pods
        .iter()
        .map(|p| (p.pod_ref.uid.clone(), p.clone()))
        .collect()
}
