//! Container and pod sandbox stats, read from the kernel as containerd and cAdvisor do (see
//! [`crate::cgroups`]): a container's CPU, memory and process figures come from its cgroup files
//! (found through `/proc/<pid>/cgroup` of its init process, whose PID Docker's inspect gives once
//! and is then cached and re-checked on every read), a pod's network figures from
//! `/proc/<pid>/net/dev` of its pause process (none for a pod in the host's network namespace;
//! also in CNI mode, where Docker's stats API knows of no network). Only when those files cannot
//! be read (the shim does not see the host's `/sys/fs/cgroup` or `/proc`) are Docker's one-shot
//! stats asked instead (`stream=false`, `one-shot=true`: about a second per container on Docker
//! 20.10), which is logged once.
//!
//! Samples are cached per container for
//! [`DockerShimConfig::stats_cache_ttl`](crate::DockerShimConfig); CPU usage in nano-cores is
//! derived from the previous sample of the same container. ListPodSandboxStats lists the running
//! containers once for all sandboxes and computes the sandboxes concurrently. The writable
//! layer's usage is not reported (Docker only computes it with a costly `size=true` inspection).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use bollard::models::{ContainerInspectResponse, ContainerStatsResponse};
use bollard::query_parameters::StatsOptions;
use futures::TryStreamExt;
use futures::future::try_join_all;
use k8s_cri::v1 as api;
use tokio::sync::Semaphore;

use crate::DockerShim;
use crate::cgroups::{CgroupError, CgroupReader, InterfaceUsage};
use crate::error::{OpError, is_not_found};
use crate::labels::{ContainerLabels, SandboxLabels, TYPE_CONTAINER, TYPE_SANDBOX};
use crate::{convert, sandbox};

/// How many containers' stats are fetched from dockerd's stats API at once (the fallback).
const STATS_CONCURRENCY: usize = 8;
/// How many containers are inspected at once for their PID.
const INSPECT_CONCURRENCY: usize = 16;

/// One container's resource usage at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Usage {
    pub timestamp: i64,
    pub cpu_total_ns: Option<u64>,
    pub nano_cores: Option<u64>,
    pub memory_usage: Option<u64>,
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub processes: Option<u64>,
    pub interfaces: Vec<api::NetworkInterfaceUsage>,
}

/// The last sample and the init PID of each container, and what bounds the calls to dockerd.
#[derive(Debug)]
pub(crate) struct StatsCache {
    samples: Mutex<HashMap<String, (Instant, Usage)>>,
    /// Container ID → host PID of its init process (checked against `/proc/<pid>/cgroup` on
    /// every read).
    pids: Mutex<HashMap<String, u32>>,
    reader: CgroupReader,
    inspections: Semaphore,
    docker_stats: Semaphore,
    /// Whether the fallback to Docker's stats API has been logged.
    fallback_logged: AtomicBool,
}

impl Default for StatsCache {
    /// A cache reading the host's `/sys/fs/cgroup` and `/proc`.
    fn default() -> Self {
        Self::with_reader(CgroupReader::default())
    }
}

impl StatsCache {
    pub(crate) fn with_reader(reader: CgroupReader) -> Self {
        Self {
            samples: Mutex::default(),
            pids: Mutex::default(),
            reader,
            inspections: Semaphore::new(INSPECT_CONCURRENCY),
            docker_stats: Semaphore::new(STATS_CONCURRENCY),
            fallback_logged: AtomicBool::new(false),
        }
    }

    fn fresh(&self, id: &str, ttl: std::time::Duration) -> Option<Usage> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples
            .get(id)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, usage)| usage.clone())
    }

    /// Stores a new sample, deriving its CPU rate from the previous one.
    fn store(&self, id: &str, mut usage: Usage) -> Usage {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, previous)) = samples.get(id) {
            usage.nano_cores = nano_cores(previous, &usage);
        }
        samples.insert(id.to_string(), (Instant::now(), usage.clone()));
        usage
    }

    fn pid(&self, id: &str) -> Option<u32> {
        let pids = self.pids.lock().unwrap_or_else(PoisonError::into_inner);
        pids.get(id).copied()
    }

    fn set_pid(&self, id: &str, pid: Option<u32>) {
        let mut pids = self.pids.lock().unwrap_or_else(PoisonError::into_inner);
        match pid {
            Some(pid) => pids.insert(id.to_string(), pid),
            None => pids.remove(id),
        };
    }

    fn forget_except(&self, keep: &HashSet<String>) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.retain(|id, _| keep.contains(id));
        let mut pids = self.pids.lock().unwrap_or_else(PoisonError::into_inner);
        pids.retain(|id, _| keep.contains(id));
    }

    /// Says (once) that a running container's cgroups could not be read.
    fn log_fallback(&self, id: &str, err: &CgroupError) {
        if !self.fallback_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                container = id,
                error = %err,
                "cannot read container usage from the kernel's cgroup files: asking dockerd's \
                 (much slower) stats API instead; this is logged once"
            );
        } else {
            tracing::debug!(container = id, error = %err, "stats from dockerd's stats API");
        }
    }
}

/// Where a container's usage came from, or why it did not.
enum KernelUsage {
    Read(Usage),
    /// Docker says it does not run (or it is gone).
    NotRunning,
    /// Its cgroup files cannot be read: Docker's stats API has to tell.
    Unreadable(CgroupError),
}

/// The host PID of a running container's init process, from its inspection.
fn running_pid(inspect: &ContainerInspectResponse) -> Option<u32> {
    let state = inspect.state.as_ref()?;
    if state.running != Some(true) {
        return None;
    }
    u32::try_from(state.pid?).ok().filter(|pid| *pid > 0)
}

/// CPU use between two samples, in billionths of a core.
pub(crate) fn nano_cores(previous: &Usage, current: &Usage) -> Option<u64> {
    let elapsed = current.timestamp.checked_sub(previous.timestamp)?;
    if elapsed <= 0 {
        return None;
    }
    let used = current.cpu_total_ns?.checked_sub(previous.cpu_total_ns?)?;
    let rate = u128::from(used) * 1_000_000_000 / elapsed.unsigned_abs() as u128;
    u64::try_from(rate).ok()
}

/// The usage in one answer of Docker's stats API (cgroup v1 or v2 key names).
pub(crate) fn usage_of(stats: &ContainerStatsResponse) -> Usage {
    let timestamp = stats
        .read
        .as_deref()
        .map(convert::docker_time_ns)
        .filter(|t| *t > 0)
        .unwrap_or_else(convert::now_ns);
    let memory = stats.memory_stats.as_ref();
    let stat = |keys: &[&str]| -> Option<u64> {
        let map = memory?.stats.as_ref()?;
        keys.iter().find_map(|k| map.get(*k).copied())
    };
    let memory_usage = memory.and_then(|m| m.usage);
    let inactive_file = stat(&["total_inactive_file", "inactive_file"]).unwrap_or(0);
    let mut interfaces: Vec<api::NetworkInterfaceUsage> = stats
        .networks
        .iter()
        .flatten()
        .map(|(name, n)| api::NetworkInterfaceUsage {
            name: name.clone(),
            rx_bytes: n.rx_bytes.map(|value| api::UInt64Value { value }),
            rx_errors: n.rx_errors.map(|value| api::UInt64Value { value }),
            tx_bytes: n.tx_bytes.map(|value| api::UInt64Value { value }),
            tx_errors: n.tx_errors.map(|value| api::UInt64Value { value }),
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Usage {
        timestamp,
        cpu_total_ns: stats
            .cpu_stats
            .as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage),
        nano_cores: None,
        memory_usage,
        working_set: memory_usage.map(|u| u.saturating_sub(inactive_file)),
        rss: stat(&["total_rss", "rss", "anon"]),
        page_faults: stat(&["total_pgfault", "pgfault"]),
        major_page_faults: stat(&["total_pgmajfault", "pgmajfault"]),
        processes: stats.pids_stats.as_ref().and_then(|p| p.current),
        interfaces,
    }
}

/// A usage read from the kernel at `timestamp`; `interfaces` are the pod's network.
fn usage_of_cgroup(
    timestamp: i64,
    cgroup: &crate::cgroups::CgroupUsage,
    interfaces: Vec<InterfaceUsage>,
) -> Usage {
    let mut interfaces: Vec<api::NetworkInterfaceUsage> = interfaces
        .into_iter()
        .map(|i| api::NetworkInterfaceUsage {
            name: i.name,
            rx_bytes: value(Some(i.rx_bytes)),
            rx_errors: value(Some(i.rx_errors)),
            tx_bytes: value(Some(i.tx_bytes)),
            tx_errors: value(Some(i.tx_errors)),
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Usage {
        timestamp,
        cpu_total_ns: Some(cgroup.cpu_total_ns),
        nano_cores: None,
        memory_usage: Some(cgroup.memory_usage),
        working_set: Some(cgroup.working_set),
        rss: cgroup.rss,
        page_faults: cgroup.page_faults,
        major_page_faults: cgroup.major_page_faults,
        processes: cgroup.processes,
        interfaces,
    }
}

fn value(v: Option<u64>) -> Option<api::UInt64Value> {
    v.map(|value| api::UInt64Value { value })
}

fn cpu(usage: &Usage) -> api::CpuUsage {
    api::CpuUsage {
        timestamp: usage.timestamp,
        usage_core_nano_seconds: value(usage.cpu_total_ns),
        usage_nano_cores: value(usage.nano_cores),
    }
}

fn memory(usage: &Usage) -> api::MemoryUsage {
    api::MemoryUsage {
        timestamp: usage.timestamp,
        working_set_bytes: value(usage.working_set),
        available_bytes: None,
        usage_bytes: value(usage.memory_usage),
        rss_bytes: value(usage.rss),
        page_faults: value(usage.page_faults),
        major_page_faults: value(usage.major_page_faults),
    }
}

fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.fold(None, |acc, v| match (acc, v) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    })
}

/// The pod's usage: the sum of its containers' (pause included), the pause container's network.
pub(crate) fn pod_usage(pause: &Usage, containers: &[&Usage]) -> Usage {
    let all: Vec<&Usage> = std::iter::once(pause)
        .chain(containers.iter().copied())
        .collect();
    Usage {
        timestamp: all
            .iter()
            .map(|u| u.timestamp)
            .max()
            .unwrap_or(pause.timestamp),
        cpu_total_ns: sum(all.iter().map(|u| u.cpu_total_ns)),
        nano_cores: sum(all.iter().map(|u| u.nano_cores)),
        memory_usage: sum(all.iter().map(|u| u.memory_usage)),
        working_set: sum(all.iter().map(|u| u.working_set)),
        rss: sum(all.iter().map(|u| u.rss)),
        page_faults: sum(all.iter().map(|u| u.page_faults)),
        major_page_faults: sum(all.iter().map(|u| u.major_page_faults)),
        processes: sum(all.iter().map(|u| u.processes)),
        interfaces: pause.interfaces.clone(),
    }
}

fn container_attributes(id: &str, labels: &ContainerLabels) -> api::ContainerAttributes {
    api::ContainerAttributes {
        id: id.to_string(),
        metadata: Some(labels.metadata.clone()),
        labels: labels.labels.clone(),
        annotations: labels.annotations.clone(),
    }
}

fn container_stats(
    id: &str,
    labels: &ContainerLabels,
    usage: Option<&Usage>,
) -> api::ContainerStats {
    api::ContainerStats {
        attributes: Some(container_attributes(id, labels)),
        cpu: usage.map(cpu),
        memory: usage.map(memory),
        writable_layer: None,
        swap: None,
    }
}

impl DockerShim {
    /// The usage of a running container (None when it does not run), from the cache if fresh.
    /// `network`: also read the interfaces of its network namespace (for a pause container).
    async fn usage(&self, id: &str, network: bool) -> Result<Option<Usage>, OpError> {
        let cache = &self.inner.stats;
        if let Some(usage) = cache.fresh(id, self.config().stats_cache_ttl) {
            return Ok(Some(usage));
        }
        match self.kernel_usage(id, network).await? {
            KernelUsage::Read(usage) => Ok(Some(cache.store(id, usage))),
            KernelUsage::NotRunning => Ok(None),
            KernelUsage::Unreadable(err) => {
                let usage = self.docker_usage(id).await?;
                if usage.is_some() {
                    cache.log_fallback(id, &err);
                }
                Ok(usage.map(|usage| cache.store(id, usage)))
            }
        }
    }

    /// The usage of a container from its cgroup files, through its cached PID (re-inspected
    /// when that PID no longer designates the container).
    async fn kernel_usage(&self, id: &str, network: bool) -> Result<KernelUsage, OpError> {
        let cache = &self.inner.stats;
        let mut cached = cache.pid(id);
        loop {
            let from_cache = cached.is_some();
            let pid = match cached.take() {
                Some(pid) => pid,
                None => match self.container_pid(id).await? {
                    Some(pid) => pid,
                    None => {
                        cache.set_pid(id, None);
                        return Ok(KernelUsage::NotRunning);
                    }
                },
            };
            let timestamp = convert::now_ns();
            match cache.reader.usage(pid, id) {
                Ok(cgroup) => {
                    cache.set_pid(id, Some(pid));
                    let interfaces = if network {
                        self.interfaces(id, pid)
                    } else {
                        Vec::new()
                    };
                    return Ok(KernelUsage::Read(usage_of_cgroup(
                        timestamp, &cgroup, interfaces,
                    )));
                }
                // A cached PID gone stale: the container restarted or exited; ask Docker again.
                Err(err) if err.is_stale_pid() && from_cache => {
                    cache.set_pid(id, None);
                }
                // A PID Docker just gave that does not check out: either the container exited
                // meanwhile or this process does not see the host's PIDs; Docker's stats tell.
                Err(err) => {
                    cache.set_pid(id, None);
                    return Ok(KernelUsage::Unreadable(err));
                }
            }
        }
    }

    /// The interfaces of the network namespace of a pause container's process `pid` (none in the
    /// host's namespace, or when they cannot be read).
    fn interfaces(&self, id: &str, pid: u32) -> Vec<InterfaceUsage> {
        match self.inner.stats.reader.network(pid) {
            Ok(interfaces) => interfaces.unwrap_or_default(),
            Err(err) => {
                tracing::debug!(sandbox = id, error = %err, "no network stats");
                Vec::new()
            }
        }
    }

    /// The host PID of a running container's init process (None when it does not run).
    async fn container_pid(&self, id: &str) -> Result<Option<u32>, OpError> {
        // Never closed: an error cannot happen, and would only mean no bound.
        let _permit = self.inner.stats.inspections.acquire().await;
        match self.docker().inspect_container(id, None).await {
            Ok(inspect) => Ok(running_pid(&inspect)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(OpError::docker(format!("inspecting container {id}"), e)),
        }
    }

    /// The usage of a container according to Docker's stats API.
    async fn docker_usage(&self, id: &str) -> Result<Option<Usage>, OpError> {
        let _permit = self.inner.stats.docker_stats.acquire().await;
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let answer = self.docker().stats(id, Some(options)).try_next().await;
        match answer {
            Ok(Some(stats)) => {
                let usage = usage_of(&stats);
                if usage.cpu_total_ns.is_none() && usage.memory_usage.is_none() {
                    return Ok(None); // not running
                }
                Ok(Some(usage))
            }
            Ok(None) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(OpError::docker(format!("stats of container {id}"), e)),
        }
    }

    /// Remembers the PID of an inspected container unless one is known already (it is checked
    /// when read anyway).
    fn note_pid(&self, id: &str, inspect: &ContainerInspectResponse) {
        let cache = &self.inner.stats;
        if cache.pid(id).is_none()
            && let Some(pid) = running_pid(inspect)
        {
            cache.set_pid(id, Some(pid));
        }
    }

    pub(crate) async fn container_stats(&self, id: &str) -> Result<api::ContainerStats, OpError> {
        let (inspect, labels) = self
            .inspect_cri_container(id)
            .await?
            .ok_or_else(|| OpError::NotFound(format!("container {id} not found")))?;
        let full = inspect.id.clone().unwrap_or_else(|| id.to_string());
        let usage = if sandbox::is_running_state(inspect.state.as_ref()) {
            self.note_pid(&full, &inspect);
            self.usage(&full, false).await?
        } else {
            None
        };
        Ok(container_stats(&full, &labels, usage.as_ref()))
    }

    pub(crate) async fn list_container_stats(
        &self,
        filter: Option<api::ContainerStatsFilter>,
    ) -> Result<Vec<api::ContainerStats>, OpError> {
        let filter = filter.unwrap_or_default();
        let containers = self
            .list_containers(Some(api::ContainerFilter {
                id: filter.id,
                state: None,
                pod_sandbox_id: filter.pod_sandbox_id,
                label_selector: filter.label_selector,
            }))
            .await?;
        // Inspections and Docker's stats API are bounded by the cache's semaphores.
        try_join_all(containers.into_iter().map(|c| async move {
            let running = c.state == api::ContainerState::ContainerRunning as i32;
            let usage = if running {
                self.usage(&c.id, false).await?
            } else {
                None
            };
            let attributes = api::ContainerAttributes {
                id: c.id,
                metadata: c.metadata,
                labels: c.labels,
                annotations: c.annotations,
            };
            Ok::<_, OpError>(api::ContainerStats {
                attributes: Some(attributes),
                cpu: usage.as_ref().map(cpu),
                memory: usage.as_ref().map(memory),
                writable_layer: None,
                swap: None,
            })
        }))
        .await
    }

    /// The running containers of the sandboxes, by sandbox ID: one Docker list call
    /// (`sandbox_id` non-empty: that sandbox's only).
    async fn running_containers(
        &self,
        sandbox_id: &str,
    ) -> Result<HashMap<String, Vec<(String, ContainerLabels)>>, OpError> {
        let summaries = self
            .list_docker(TYPE_CONTAINER, &HashMap::new(), sandbox_id, true)
            .await?;
        let mut by_sandbox: HashMap<String, Vec<(String, ContainerLabels)>> = HashMap::new();
        for summary in summaries {
            let (Some(id), Some(labels)) = (
                summary.id,
                summary.labels.as_ref().and_then(ContainerLabels::decode),
            ) else {
                continue;
            };
            by_sandbox
                .entry(labels.sandbox_id.clone())
                .or_default()
                .push((id, labels));
        }
        Ok(by_sandbox)
    }

    /// The stats of a sandbox whose running containers are `containers`.
    async fn sandbox_stats(
        &self,
        id: &str,
        labels: SandboxLabels,
        running: bool,
        containers: Vec<(String, ContainerLabels)>,
    ) -> Result<api::PodSandboxStats, OpError> {
        let attributes = api::PodSandboxAttributes {
            id: id.to_string(),
            metadata: Some(labels.metadata),
            labels: labels.labels,
            annotations: labels.annotations,
        };
        let mut stats = api::PodSandboxStats {
            attributes: Some(attributes),
            linux: None,
            windows: None,
        };
        if !running {
            return Ok(stats);
        }
        let (usages, pause) = futures::try_join!(
            try_join_all(containers.iter().map(|(cid, _)| self.usage(cid, false))),
            self.usage(id, true),
        )?;
        let pause = pause.unwrap_or_default();
        let present: Vec<&Usage> = usages.iter().flatten().collect();
        let pod = pod_usage(&pause, &present);
        let network = (!pod.interfaces.is_empty()).then(|| api::NetworkUsage {
            timestamp: pod.timestamp,
            default_interface: pod
                .interfaces
                .iter()
                .find(|i| i.name == "eth0")
                .or(pod.interfaces.first())
                .cloned(),
            interfaces: pod.interfaces.clone(),
        });
        stats.linux = Some(api::LinuxPodSandboxStats {
            cpu: Some(cpu(&pod)),
            memory: Some(memory(&pod)),
            network,
            process: Some(api::ProcessUsage {
                timestamp: pod.timestamp,
                process_count: value(pod.processes),
            }),
            containers: containers
                .iter()
                .zip(usages.iter())
                .map(|((cid, labels), usage)| container_stats(cid, labels, usage.as_ref()))
                .collect(),
        });
        Ok(stats)
    }

    pub(crate) async fn pod_sandbox_stats(
        &self,
        id: &str,
    ) -> Result<api::PodSandboxStats, OpError> {
        let (inspect, labels) = self
            .inspect_sandbox(id)
            .await?
            .ok_or_else(|| OpError::NotFound(format!("pod sandbox {id} not found")))?;
        let full = inspect.id.clone().unwrap_or_else(|| id.to_string());
        let running = sandbox::is_running(&inspect);
        let containers = if running {
            self.note_pid(&full, &inspect);
            self.running_containers(&full)
                .await?
                .remove(&full)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.sandbox_stats(&full, labels, running, containers).await
    }

    pub(crate) async fn list_pod_sandbox_stats(
        &self,
        filter: Option<api::PodSandboxStatsFilter>,
    ) -> Result<Vec<api::PodSandboxStats>, OpError> {
        let filter = filter.unwrap_or_default();
        let summaries = self
            .list_docker(TYPE_SANDBOX, &filter.label_selector, "", false)
            .await?;
        let sandboxes: Vec<(String, SandboxLabels, bool)> = summaries
            .iter()
            .filter_map(|s| {
                let id = s.id.clone()?;
                let labels = SandboxLabels::decode(s.labels.as_ref()?)?;
                let running =
                    s.state.as_ref().map(|st| st.to_string()).as_deref() == Some("running");
                Some((id, labels, running))
            })
            .filter(|(id, labels, _)| {
                id.starts_with(&filter.id)
                    && convert::selector_matches(&filter.label_selector, &labels.labels)
            })
            .collect();
        // One list call for the containers of all the sandboxes.
        let mut containers = if sandboxes.iter().any(|(_, _, running)| *running) {
            self.running_containers("").await?
        } else {
            HashMap::new()
        };
        let all = try_join_all(sandboxes.into_iter().map(|(id, labels, running)| {
            let own = containers.remove(&id).unwrap_or_default();
            async move { self.sandbox_stats(&id, labels, running, own).await }
        }))
        .await?;
        // Samples of containers that are gone are of no further use.
        if filter.id.is_empty() && filter.label_selector.is_empty() {
            let mut keep = HashSet::new();
            for s in &all {
                if let Some(a) = &s.attributes {
                    keep.insert(a.id.clone());
                }
                for c in s.linux.iter().flat_map(|l| l.containers.iter()) {
                    if let Some(a) = &c.attributes {
                        keep.insert(a.id.clone());
                    }
                }
            }
            self.inner.stats.forget_except(&keep);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{
        ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerNetworkStats,
        ContainerPidsStats,
    };

    use super::*;

    fn docker_stats() -> ContainerStatsResponse {
        ContainerStatsResponse {
            read: Some("2026-11-24T13:43:48Z".into()),
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(5_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(10_000),
                stats: Some(HashMap::from([
                    ("total_inactive_file".to_string(), 4_000),
                    ("total_rss".to_string(), 3_000),
                    ("total_pgfault".to_string(), 7),
                    ("total_pgmajfault".to_string(), 1),
                ])),
                ..Default::default()
            }),
            networks: Some(HashMap::from([(
                "eth0".to_string(),
                ContainerNetworkStats {
                    rx_bytes: Some(100),
                    tx_bytes: Some(200),
                    ..Default::default()
                },
            )])),
            pids_stats: Some(ContainerPidsStats {
                current: Some(2),
                limit: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn docker_stats_mapping() {
        let usage = usage_of(&docker_stats());
        assert_eq!(usage.timestamp, 1_795_527_828_000_000_000);
        assert_eq!(usage.cpu_total_ns, Some(5_000_000));
        assert_eq!(usage.memory_usage, Some(10_000));
        assert_eq!(usage.working_set, Some(6_000));
        assert_eq!(usage.rss, Some(3_000));
        assert_eq!(usage.page_faults, Some(7));
        assert_eq!(usage.major_page_faults, Some(1));
        assert_eq!(usage.processes, Some(2));
        assert_eq!(usage.interfaces.len(), 1);
        assert_eq!(
            usage.interfaces[0].rx_bytes,
            Some(api::UInt64Value { value: 100 })
        );
    }

    #[test]
    fn cgroup_usage_mapping() {
        let cgroup = crate::cgroups::CgroupUsage {
            cpu_total_ns: 5_000_000,
            memory_usage: 10_000,
            working_set: 6_000,
            rss: Some(3_000),
            page_faults: Some(7),
            major_page_faults: None,
            processes: Some(2),
        };
        let interface = |name: &str| InterfaceUsage {
            name: name.into(),
            rx_bytes: 100,
            rx_errors: 1,
            tx_bytes: 200,
            tx_errors: 2,
        };
        let usage = usage_of_cgroup(42, &cgroup, vec![interface("net1"), interface("eth0")]);
        assert_eq!(usage.timestamp, 42);
        assert_eq!(usage.cpu_total_ns, Some(5_000_000));
        assert_eq!(usage.nano_cores, None);
        assert_eq!(usage.memory_usage, Some(10_000));
        assert_eq!(usage.working_set, Some(6_000));
        assert_eq!(usage.rss, Some(3_000));
        assert_eq!(usage.page_faults, Some(7));
        assert_eq!(usage.major_page_faults, None);
        assert_eq!(usage.processes, Some(2));
        let names: Vec<&str> = usage.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "net1"]);
        assert_eq!(
            usage.interfaces[0].tx_errors,
            Some(api::UInt64Value { value: 2 })
        );
    }

    #[test]
    fn pid_of_running_containers_only() {
        use bollard::models::ContainerState;
        let inspect = |running: bool, pid: i64| ContainerInspectResponse {
            state: Some(ContainerState {
                running: Some(running),
                pid: Some(pid),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(running_pid(&inspect(true, 1234)), Some(1234));
        assert_eq!(running_pid(&inspect(false, 1234)), None);
        assert_eq!(running_pid(&inspect(true, 0)), None);
        assert_eq!(running_pid(&inspect(true, -1)), None);
        assert_eq!(running_pid(&ContainerInspectResponse::default()), None);
    }

    #[test]
    fn cpu_rate_from_two_samples() {
        let first = Usage {
            timestamp: 1_000_000_000,
            cpu_total_ns: Some(0),
            ..Default::default()
        };
        let second = Usage {
            timestamp: 3_000_000_000,
            cpu_total_ns: Some(1_000_000_000),
            ..Default::default()
        };
        // 1 s of CPU over 2 s: half a core.
        assert_eq!(nano_cores(&first, &second), Some(500_000_000));
        assert_eq!(nano_cores(&second, &first), None);
        let cache = StatsCache::default();
        assert_eq!(cache.store("c", first).nano_cores, None);
        assert_eq!(cache.store("c", second).nano_cores, Some(500_000_000));
        assert!(
            cache
                .fresh("c", std::time::Duration::from_secs(60))
                .is_some()
        );
        assert!(cache.fresh("c", std::time::Duration::ZERO).is_none());
    }

    #[test]
    fn pod_usage_sums_containers() {
        let pause = Usage {
            timestamp: 5,
            cpu_total_ns: Some(1),
            working_set: Some(10),
            interfaces: vec![api::NetworkInterfaceUsage {
                name: "eth0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let app = Usage {
            timestamp: 6,
            cpu_total_ns: Some(2),
            working_set: Some(20),
            processes: Some(3),
            ..Default::default()
        };
        let pod = pod_usage(&pause, &[&app]);
        assert_eq!(pod.timestamp, 6);
        assert_eq!(pod.cpu_total_ns, Some(3));
        assert_eq!(pod.working_set, Some(30));
        assert_eq!(pod.processes, Some(3));
        assert_eq!(pod.rss, None);
        assert_eq!(pod.interfaces.len(), 1);
    }
}
