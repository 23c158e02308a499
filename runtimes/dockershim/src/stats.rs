//! Container and pod sandbox stats from Docker's one-shot stats (`stream=false`, `one-shot=true`:
//! one cgroup read, no second sample), cached per container for
//! [`DockerShimConfig::stats_cache_ttl`](crate::DockerShimConfig) so that a node full of pods
//! answers ListContainerStats / ListPodSandboxStats quickly. CPU usage in nano-cores is derived
//! from the previous sample of the same container. The writable layer's usage is not reported
//! (Docker only computes it with a costly `size=true` inspection).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures::{StreamExt, TryStreamExt};
use k8s_cri::v1 as api;

use crate::DockerShim;
use crate::error::{OpError, is_not_found};
use crate::labels::{ContainerLabels, SandboxLabels, TYPE_CONTAINER, TYPE_SANDBOX};
use crate::{convert, sandbox};

/// How many containers' stats are fetched from dockerd at once.
const STATS_CONCURRENCY: usize = 8;

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

#[derive(Debug, Default)]
pub(crate) struct StatsCache {
    samples: Mutex<HashMap<String, (Instant, Usage)>>,
}

impl StatsCache {
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

    fn forget_except(&self, keep: &std::collections::HashSet<String>) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.retain(|id, _| keep.contains(id));
    }
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
    async fn usage(&self, id: &str) -> Result<Option<Usage>, OpError> {
        let cache = &self.inner.stats;
        if let Some(usage) = cache.fresh(id, self.config().stats_cache_ttl) {
            return Ok(Some(usage));
        }
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
                Ok(Some(cache.store(id, usage)))
            }
            Ok(None) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(OpError::docker(format!("stats of container {id}"), e)),
        }
    }

    pub(crate) async fn container_stats(&self, id: &str) -> Result<api::ContainerStats, OpError> {
        let (inspect, labels) = self
            .inspect_cri_container(id)
            .await?
            .ok_or_else(|| OpError::NotFound(format!("container {id} not found")))?;
        let full = inspect.id.unwrap_or_else(|| id.to_string());
        let usage = if sandbox::is_running_state(inspect.state.as_ref()) {
            self.usage(&full).await?
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
        let stats: Vec<api::ContainerStats> = futures::stream::iter(containers)
            .map(|c| async move {
                let running = c.state == api::ContainerState::ContainerRunning as i32;
                let usage = if running {
                    self.usage(&c.id).await?
                } else {
                    None
                };
                let attributes = api::ContainerAttributes {
                    id: c.id.clone(),
                    metadata: c.metadata.clone(),
                    labels: c.labels.clone(),
                    annotations: c.annotations.clone(),
                };
                Ok::<_, OpError>(api::ContainerStats {
                    attributes: Some(attributes),
                    cpu: usage.as_ref().map(cpu),
                    memory: usage.as_ref().map(memory),
                    writable_layer: None,
                    swap: None,
                })
            })
            .buffered(STATS_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(stats)
    }

    async fn sandbox_stats(
        &self,
        id: &str,
        labels: SandboxLabels,
        running: bool,
    ) -> Result<api::PodSandboxStats, OpError> {
        let attributes = api::PodSandboxAttributes {
            id: id.to_string(),
            metadata: Some(labels.metadata.clone()),
            labels: labels.labels.clone(),
            annotations: labels.annotations.clone(),
        };
        let mut stats = api::PodSandboxStats {
            attributes: Some(attributes),
            linux: None,
            windows: None,
        };
        if !running {
            return Ok(stats);
        }
        let containers = self
            .list_docker(TYPE_CONTAINER, &HashMap::new(), id, true)
            .await?;
        let ids: Vec<(String, ContainerLabels)> = containers
            .iter()
            .filter_map(|c| {
                let labels = ContainerLabels::decode(c.labels.as_ref()?)?;
                Some((c.id.clone()?, labels))
            })
            .collect();
        let container_ids: Vec<String> = ids.iter().map(|(cid, _)| cid.clone()).collect();
        let usages: Vec<Option<Usage>> = futures::stream::iter(container_ids)
            .map(|cid| async move { self.usage(&cid).await })
            .buffered(STATS_CONCURRENCY)
            .try_collect()
            .await?;
        let pause = self.usage(id).await?.unwrap_or_default();
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
            containers: ids
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
        self.sandbox_stats(&full, labels, sandbox::is_running(&inspect))
            .await
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
        let all =
            futures::stream::iter(sandboxes)
                .map(|(id, labels, running)| async move {
                    self.sandbox_stats(&id, labels, running).await
                })
                .buffered(2)
                .try_collect::<Vec<_>>()
                .await?;
        // Samples of containers that are gone are of no further use.
        if filter.id.is_empty() && filter.label_selector.is_empty() {
            let mut keep = std::collections::HashSet::new();
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
