//! [`StatsProvider`]: one Summary from a handful of CRI calls (ListPodSandbox, ListContainers,
//! ListPodSandboxStats — or ListContainerStats where the runtime lacks it — and ImageFsInfo), the
//! cgroup files and the filesystems, as kubelet's CRI stats provider builds it.
//!
//! * Pods are this node's sandboxes (label `io.mini-kubelet.node-name`), the newest of each pod name
//!   unless several are ready (kubelet's `removeTerminatedPods`); containers are the running ones.
//! * Pod CPU, memory, network and process count come from ListPodSandboxStats. A runtime that does
//!   not implement it (the fake) or fails it is asked ListContainerStats instead, and the pod's
//!   figures come from its cgroup (or are its containers' summed when it has none); its network is
//!   then left out.
//! * `usageNanoCores` a runtime does not give is derived from the previous cumulative CPU time of the
//!   same container, pod or node (kept here, at least [`MIN_RATE_WINDOW`] apart), so a first scrape
//!   may leave it out.
//! * Filesystems (left out with `only_cpu_and_memory`): the container's writable layer from the
//!   runtime plus `statvfs` of its filesystem, its log files, the pod's volumes, its
//!   ephemeral-storage sum, the node filesystem (of the root directory), the image filesystem.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use mk_cri::{CriClient, CriError, api};

use super::cgroup;
use super::fs::{self, DiskUsage, FsInfo};
use super::identities::Identities;
use super::node;
use super::types::{
    ContainerStats, CpuStats, FsStats, InterfaceStats, MemoryStats, NetworkStats, NodeStats,
    PodReference, PodStats, ProcessStats, RlimitStats, RuntimeStats, SYSTEM_CONTAINER_PODS,
    Summary,
};
use crate::kuberuntime::labels;
use crate::kuberuntime::sandbox_config::pod_log_dir;
use crate::node::host::{self, HostPaths};

/// The shortest interval a CPU rate is computed over; a caller coming sooner gets the last rate.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);
/// CPU samples of containers and pods not seen for this long are forgotten (kubelet's cache period).
const CPU_CACHE_PERIOD: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("failed to list pod sandboxes: {0}")]
    ListPodSandbox(#[source] CriError),
    #[error("failed to list containers: {0}")]
    ListContainers(#[source] CriError),
    #[error("failed to list container stats: {0}")]
    ListContainerStats(#[source] CriError),
    #[error("reading host figures: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Where the provider finds what it reads.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    pub node_name: String,
    /// The agent's root directory (`--root-dir`): the node filesystem and the pods' volumes.
    pub root_dir: PathBuf,
    /// KubeletConfiguration `podLogsDir`.
    pub pod_logs_dir: PathBuf,
    /// Where cgroupfs is mounted (`/sys/fs/cgroup`).
    pub cgroup_mount: PathBuf,
    /// The pods' cgroup layout (`cgroupDriver`, `cgroupRoot`, `cgroupsPerQOS`).
    pub cgroups: crate::cm::CgroupSettings,
    pub host: HostPaths,
}

/// Gathers the Summary; cheap to clone (one shared CPU-rate cache).
#[derive(Clone)]
pub struct StatsProvider {
    inner: Arc<Inner>,
}

struct Inner {
    cri: CriClient,
    config: StatsConfig,
    rates: Mutex<CpuRates>,
    /// The runtime answered Unimplemented to ListPodSandboxStats: do not ask again.
    no_sandbox_stats: AtomicBool,
}

impl std::fmt::Debug for StatsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsProvider")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// The runtime's usage figures: per sandbox (with its containers') or per container only.
#[derive(Debug, Clone)]
pub(crate) enum RuntimeUsage {
    Sandboxes(Vec<api::PodSandboxStats>),
    Containers(Vec<api::ContainerStats>),
}

/// A pod cgroup's figures, when the runtime gives none for the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PodCgroup {
    pub cpu_nanos: Option<u64>,
    pub memory: Option<cgroup::MemoryUsage>,
    pub processes: Option<u64>,
}

/// A pod's stats before the filesystem figures are added, with the filesystem each container's
/// writable layer is on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodDraft {
    pub stats: PodStats,
    pub rootfs_mounts: Vec<Option<String>>,
}

impl StatsProvider {
    pub fn new(cri: CriClient, config: StatsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cri,
                config,
                rates: Mutex::default(),
                no_sandbox_stats: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &StatsConfig {
        &self.inner.config
    }

    /// The node's Summary (kubelet's `/stats/summary`); with `only_cpu_and_memory`, only CPU and
    /// memory of the node, its system containers, the pods and their containers (kubelet's
    /// `GetCPUAndMemoryStats`).
    pub async fn summary(&self, only_cpu_and_memory: bool) -> Result<Summary, StatsError> {
        Ok(self.gather(only_cpu_and_memory, false).await?.0)
    }

    /// The full Summary with the runtime IDs, images and cgroups of its pods' containers and
    /// sandboxes (`/metrics/cadvisor`'s labels).
    pub async fn summary_with_identities(&self) -> Result<(Summary, Identities), StatsError> {
        self.gather(false, true).await
    }

    async fn gather(
        &self,
        only_cpu_and_memory: bool,
        identify: bool,
    ) -> Result<(Summary, Identities), StatsError> {
        let cri = &self.inner.cri;
        let mine = HashMap::from([(
            labels::NODE_NAME.to_string(),
            self.inner.config.node_name.clone(),
        )]);
        let (sandboxes, containers, usage, image_fs) = tokio::join!(
            cri.list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: mine.clone(),
                    ..Default::default()
                }),
            }),
            cri.list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    state: Some(api::ContainerStateValue {
                        state: api::ContainerState::ContainerRunning as i32,
                    }),
                    label_selector: mine.clone(),
                    ..Default::default()
                }),
            }),
            self.runtime_usage(&mine),
            async {
                if only_cpu_and_memory {
                    return None;
                }
                match cri.image_fs_info(api::ImageFsInfoRequest {}).await {
                    Ok(r) => r.image_filesystems.into_iter().next(),
                    Err(e) => {
                        tracing::debug!(error = %e, "stats: image filesystem unavailable");
                        None
                    }
                }
            },
        );
        let sandboxes = sandboxes.map_err(StatsError::ListPodSandbox)?.items;
        let containers = containers.map_err(StatsError::ListContainers)?.containers;
        let usage = usage?;
        // The images' names, for containers the runtime reports by image ID (containerd 1.x).
        let images = if identify {
            match cri
                .list_images(api::ListImagesRequest { filter: None })
                .await
            {
                Ok(r) => r.images,
                Err(e) => {
                    tracing::debug!(error = %e, "stats: listing the images failed");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let inner = self.inner.clone();
        let gathered = tokio::task::spawn_blocking(move || {
            let identities = if identify {
                super::identities::identify(&inner.config, &sandboxes, &containers, &images)
            } else {
                Identities::default()
            };
            let summary =
                inner.assemble(sandboxes, containers, usage, image_fs, only_cpu_and_memory);
            (summary, identities)
        })
        .await?;
        Ok(gathered)
    }

    /// ListPodSandboxStats, or ListContainerStats where the runtime lacks it or fails it.
    async fn runtime_usage(
        &self,
        selector: &HashMap<String, String>,
    ) -> Result<RuntimeUsage, StatsError> {
        let cri = &self.inner.cri;
        if !self.inner.no_sandbox_stats.load(Ordering::Relaxed) {
            let request = api::ListPodSandboxStatsRequest {
                filter: Some(api::PodSandboxStatsFilter {
                    label_selector: selector.clone(),
                    ..Default::default()
                }),
            };
            match cri.list_pod_sandbox_stats(request).await {
                Ok(r) => return Ok(RuntimeUsage::Sandboxes(r.stats)),
                Err(e) if e.is_unimplemented() => {
                    tracing::info!(
                        "the runtime does not implement ListPodSandboxStats: pod figures come \
                         from ListContainerStats and the pods' cgroups"
                    );
                    self.inner.no_sandbox_stats.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ListPodSandboxStats failed; using ListContainerStats");
                }
            }
        }
        let request = api::ListContainerStatsRequest {
            filter: Some(api::ContainerStatsFilter {
                label_selector: selector.clone(),
                ..Default::default()
            }),
        };
        cri.list_container_stats(request)
            .await
            .map(|r| RuntimeUsage::Containers(r.stats))
            .map_err(StatsError::ListContainerStats)
    }
}

impl Inner {
    /// Builds the Summary from the runtime's answers, reading cgroups and filesystems (blocking).
    fn assemble(
        &self,
        sandboxes: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
        usage: RuntimeUsage,
        image_fs: Option<api::FilesystemUsage>,
        only_cpu_and_memory: bool,
    ) -> Summary {
        let config = &self.config;
        let now = Timestamp::now();
        let now_ns = timestamp_ns(now);
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        let pod_cgroup = |uid: &str| read_pod_cgroup(config, uid, !only_cpu_and_memory);
        let drafts = pod_drafts(
            &config.node_name,
            sandboxes,
            containers,
            &usage,
            &pod_cgroup,
            &mut rates,
            now,
            only_cpu_and_memory,
        );
        let mut node = self.node_cpu_memory(&mut rates, now);
        rates.forget_older_than(now_ns, CPU_CACHE_PERIOD);
        drop(rates);
        let pods = if only_cpu_and_memory {
            drafts.into_iter().map(|d| d.stats).collect()
        } else {
            let node_fs = fs::fs_info(&config.root_dir)
                .inspect_err(|e| {
                    tracing::debug!(path = %config.root_dir.display(), error = %e, "stats: statvfs failed");
                })
                .ok();
            self.add_node_extras(&mut node, node_fs, image_fs, now);
            let mut mounts = HashMap::new();
            drafts
                .into_iter()
                .map(|d| self.with_filesystems(d, node_fs.as_ref(), &mut mounts, now))
                .collect()
        };
        Summary { node, pods }
    }

    /// The node's CPU and memory (root cgroup) and its `pods` system container.
    fn node_cpu_memory(&self, rates: &mut CpuRates, now: Timestamp) -> NodeStats {
        let config = &self.config;
        let time = Time(now);
        let now_ns = timestamp_ns(now);
        let boot = node::boot_time(&config.host)
            .and_then(|s| Timestamp::from_second(s).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let cpu = node::root_cpu_nanos(&config.cgroup_mount).map(|total| CpuStats {
            time: time.clone(),
            usage_nano_cores: rates.rate("node", now_ns, total),
            usage_core_nano_seconds: Some(total),
        });
        let memory = node::root_memory(&config.cgroup_mount, &config.host)
            .map(|m| memory_of_cgroup(&m, time.clone()));
        let pods_parent = config.cgroups.kubepods_dir();
        let pods_dir = cgroup::memory_dir(&config.cgroup_mount, &pods_parent);
        let system_containers = match std::fs::metadata(&pods_dir) {
            Ok(meta) => {
                use std::os::unix::fs::MetadataExt as _;
                let started = Timestamp::from_second(meta.ctime()).unwrap_or(boot);
                let cpu =
                    cgroup::cpu_usage_nanos(&cgroup::cpu_dir(&config.cgroup_mount, &pods_parent))
                        .ok()
                        .map(|total| CpuStats {
                            time: time.clone(),
                            usage_nano_cores: rates.rate("system/pods", now_ns, total),
                            usage_core_nano_seconds: Some(total),
                        });
                let memory = cgroup::memory(&pods_dir)
                    .ok()
                    .map(|m| memory_of_cgroup(&m, time.clone()));
                vec![ContainerStats {
                    name: SYSTEM_CONTAINER_PODS.into(),
                    start_time: Time(started),
                    cpu,
                    memory,
                    rootfs: None,
                    logs: None,
                }]
            }
            Err(_) => Vec::new(),
        };
        NodeStats {
            node_name: config.node_name.clone(),
            system_containers,
            start_time: Time(boot),
            cpu,
            memory,
            network: None,
            fs: None,
            runtime: None,
            rlimit: None,
        }
    }

    /// The node's network, filesystems and task figures.
    fn add_node_extras(
        &self,
        node: &mut NodeStats,
        node_fs: Option<FsInfo>,
        image_fs: Option<api::FilesystemUsage>,
        now: Timestamp,
    ) {
        let config = &self.config;
        let time = Time(now);
        node.network = network_of(time.clone(), node::host_interfaces(&config.host));
        node.fs = node_fs.map(|info| FsStats {
            used_bytes: Some(info.usage_bytes),
            inodes_used: Some(info.inodes.saturating_sub(info.inodes_free)),
            ..info.stats(time.clone(), None)
        });
        node.runtime = image_fs.map(|fs| RuntimeStats {
            image_fs: Some(image_fs_stats(&fs)),
        });
        let usage = host::observe_usage(&config.host, &config.root_dir);
        node.rlimit = Some(RlimitStats {
            time,
            max_pid: usage.pid_max.and_then(|v| i64::try_from(v).ok()),
            num_of_running_processes: usage.tasks.and_then(|v| i64::try_from(v).ok()),
        });
    }

    /// Adds the containers' rootfs and logs, the volumes and the ephemeral-storage sum.
    fn with_filesystems(
        &self,
        draft: PodDraft,
        node_fs: Option<&FsInfo>,
        mounts: &mut HashMap<String, Option<FsInfo>>,
        now: Timestamp,
    ) -> PodStats {
        let config = &self.config;
        let time = Time(now);
        let PodDraft {
            mut stats,
            rootfs_mounts,
        } = draft;
        let pod_ref = stats.pod_ref.clone();
        let log_dir = pod_log_dir(
            &config.pod_logs_dir,
            &pod_ref.namespace,
            &pod_ref.name,
            &pod_ref.uid,
        );
        for (container, mount) in stats.containers.iter_mut().zip(rootfs_mounts) {
            if let (Some(rootfs), Some(mount)) = (container.rootfs.as_mut(), mount) {
                let info = *mounts
                    .entry(mount.clone())
                    .or_insert_with(|| fs::fs_info(Path::new(&mount)).ok());
                if let Some(info) = info {
                    rootfs.available_bytes = Some(info.available_bytes);
                    rootfs.capacity_bytes = Some(info.capacity_bytes);
                    rootfs.inodes_free = Some(info.inodes_free);
                    rootfs.inodes = Some(info.inodes);
                }
            }
            container.logs =
                fs::files_usage(&log_dir.join(&container.name)).map(|used| match node_fs {
                    Some(info) => info.stats(time.clone(), Some(used)),
                    None => FsStats {
                        used_bytes: Some(used.bytes),
                        inodes_used: Some(used.inodes),
                        ..FsStats::at(time.clone())
                    },
                });
        }
        let volumes = fs::pod_volumes(&config.root_dir, &pod_ref.uid, &time);
        let ephemeral_volumes: Vec<DiskUsage> = volumes
            .iter()
            .filter(|v| v.ephemeral)
            .map(|v| DiskUsage {
                bytes: v.stats.fs.used_bytes.unwrap_or(0),
                inodes: v.stats.fs.inodes_used.unwrap_or(0),
            })
            .collect();
        let extra = [
            fs::files_usage(&log_dir),
            fs::etc_hosts_usage(&config.root_dir, &pod_ref.uid),
        ];
        stats.ephemeral_storage = Some(ephemeral_storage(
            node_fs,
            time,
            &stats.containers,
            ephemeral_volumes
                .iter()
                .copied()
                .chain(extra.into_iter().flatten()),
        ));
        stats.volume_stats = volumes.into_iter().map(|v| v.stats).collect();
        stats
    }
}

/// The pod cgroup's figures (process count only when `processes`), found by the pod's UID.
fn read_pod_cgroup(config: &StatsConfig, uid: &str, processes: bool) -> Option<PodCgroup> {
    let parent = cgroup::find_pod_cgroup_dir(&config.cgroup_mount, &config.cgroups, uid)?;
    let memory_dir = cgroup::memory_dir(&config.cgroup_mount, &parent);
    Some(PodCgroup {
        cpu_nanos: cgroup::cpu_usage_nanos(&cgroup::cpu_dir(&config.cgroup_mount, &parent)).ok(),
        memory: cgroup::memory(&memory_dir).ok(),
        processes: processes
            .then(|| cgroup::process_count(&memory_dir).ok())
            .flatten(),
    })
}

/// The cumulative CPU time last seen per container, pod and node, and the rate derived from it.
#[derive(Debug, Default)]
pub(crate) struct CpuRates {
    samples: HashMap<String, CpuSample>,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at_ns: i64,
    total: u64,
    rate: Option<u64>,
}

impl CpuRates {
    /// The CPU use of `key` in nano-cores between its previous sample and this one (`total`
    /// nanoseconds at `at_ns`); the last rate when the previous sample is younger than
    /// [`MIN_RATE_WINDOW`]; `None` on a first sample or after the counter went back (a restart).
    pub(crate) fn rate(&mut self, key: &str, at_ns: i64, total: u64) -> Option<u64> {
        let min_window = i64::try_from(MIN_RATE_WINDOW.as_nanos()).unwrap_or(i64::MAX);
        let fresh = CpuSample {
            at_ns,
            total,
            rate: None,
        };
        let Some(previous) = self.samples.get_mut(key) else {
            self.samples.insert(key.to_string(), fresh);
            return None;
        };
        if total < previous.total || at_ns < previous.at_ns {
            *previous = fresh;
            return None;
        }
        let elapsed = at_ns - previous.at_ns;
        if elapsed < min_window {
            return previous.rate;
        }
        let rate =
            u128::from(total - previous.total) * 1_000_000_000 / elapsed.unsigned_abs() as u128;
        let rate = u64::try_from(rate).ok();
        *previous = CpuSample { at_ns, total, rate };
        rate
    }

    fn forget_older_than(&mut self, now_ns: i64, period: Duration) {
        let period = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX);
        self.samples
            .retain(|_, s| now_ns.saturating_sub(s.at_ns) <= period);
    }
}

pub(crate) fn timestamp_ns(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

/// A CRI timestamp (nanoseconds since the epoch) as a Time.
pub(crate) fn time_of(ns: i64) -> Time {
    Time(Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn value(v: &Option<api::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|v| v.value)
}

/// kubelet's `removeTerminatedPods`: per pod name and namespace, the ready sandboxes, else the newest.
pub(crate) fn remove_terminated_pods(mut sandboxes: Vec<api::PodSandbox>) -> Vec<api::PodSandbox> {
    sandboxes.sort_by_key(|s| s.created_at);
    let mut by_pod: BTreeMap<(String, String), Vec<api::PodSandbox>> = BTreeMap::new();
    for s in sandboxes {
        let m = s.metadata.clone().unwrap_or_default();
        by_pod.entry((m.namespace, m.name)).or_default().push(s);
    }
    let ready = api::PodSandboxState::SandboxReady as i32;
    by_pod
        .into_values()
        .flat_map(|mut group| {
            if group.iter().any(|s| s.state == ready) {
                group.retain(|s| s.state == ready);
                group
            } else {
                group.pop().into_iter().collect()
            }
        })
        .collect()
}

fn is_other_nodes(labels_of: &HashMap<String, String>, node_name: &str) -> bool {
    labels_of
        .get(labels::NODE_NAME)
        .is_some_and(|n| n != node_name)
}

/// The pods' CPU and memory (and network and process count unless `only_cpu_and_memory`) and
/// their running containers' CPU, memory and writable layer, from the runtime's answers; the
/// pod's cgroup (`pod_cgroup(uid)`) where the runtime gives no pod figures.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pod_drafts(
    node_name: &str,
    sandboxes: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    usage: &RuntimeUsage,
    pod_cgroup: &dyn Fn(&str) -> Option<PodCgroup>,
    rates: &mut CpuRates,
    now: Timestamp,
    only_cpu_and_memory: bool,
) -> Vec<PodDraft> {
    let now_ns = timestamp_ns(now);
    let sandboxes = remove_terminated_pods(
        sandboxes
            .into_iter()
            .filter(|s| !is_other_nodes(&s.labels, node_name))
            .collect(),
    );
    let running = api::ContainerState::ContainerRunning as i32;
    let mut containers_of: HashMap<String, Vec<api::Container>> = HashMap::new();
    for c in containers {
        if c.state == running && !is_other_nodes(&c.labels, node_name) {
            containers_of
                .entry(c.pod_sandbox_id.clone())
                .or_default()
                .push(c);
        }
    }
    let (sandbox_usage, container_usage): (
        HashMap<&str, &api::PodSandboxStats>,
        HashMap<&str, &api::ContainerStats>,
    ) = match usage {
        RuntimeUsage::Sandboxes(stats) => (
            stats
                .iter()
                .filter_map(|s| Some((s.attributes.as_ref()?.id.as_str(), s)))
                .collect(),
            stats
                .iter()
                .flat_map(|s| s.linux.iter().flat_map(|l| l.containers.iter()))
                .filter_map(|c| Some((c.attributes.as_ref()?.id.as_str(), c)))
                .collect(),
        ),
        RuntimeUsage::Containers(stats) => (
            HashMap::new(),
            stats
                .iter()
                .filter_map(|c| Some((c.attributes.as_ref()?.id.as_str(), c)))
                .collect(),
        ),
    };
    let ready = api::PodSandboxState::SandboxReady as i32;
    let mut drafts = Vec::new();
    for sandbox in sandboxes {
        let mut own = containers_of.remove(&sandbox.id).unwrap_or_default();
        own.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        let with_usage: Vec<(&api::Container, &api::ContainerStats)> = own
            .iter()
            .filter_map(|c| Some((c, *container_usage.get(c.id.as_str())?)))
            .collect();
        if sandbox.state != ready && with_usage.is_empty() {
            continue;
        }
        let meta = sandbox.metadata.clone().unwrap_or_default();
        let mut rootfs_mounts = Vec::new();
        let container_stats: Vec<ContainerStats> = with_usage
            .iter()
            .map(|(c, s)| {
                let (stats, mount) = container_of(c, s, rates, now, only_cpu_and_memory);
                rootfs_mounts.push(mount);
                stats
            })
            .collect();
        let mut stats = PodStats {
            pod_ref: PodReference {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
            },
            start_time: time_of(sandbox.created_at),
            containers: container_stats,
            cpu: None,
            memory: None,
            network: None,
            volume_stats: Vec::new(),
            ephemeral_storage: None,
            process_stats: None,
        };
        let pod_key = format!("pod/{}", stats.pod_ref.uid);
        if let Some(linux) = sandbox_usage
            .get(sandbox.id.as_str())
            .and_then(|s| s.linux.as_ref())
        {
            stats.cpu = linux.cpu.as_ref().map(|c| cpu_of(c, &pod_key, rates));
            stats.memory = linux.memory.as_ref().map(memory_of);
            if !only_cpu_and_memory {
                stats.network = linux.network.as_ref().and_then(network_of_cri);
                stats.process_stats = linux.process.as_ref().map(|p| ProcessStats {
                    process_count: value(&p.process_count),
                });
            }
        }
        // What the runtime's sandbox stats lack (cri-o 1.36 gives a sandbox entry without CPU):
        // the pod cgroup's figures, else its containers' sum.
        if (stats.cpu.is_none() || stats.memory.is_none())
            && let Some(cg) = pod_cgroup(&stats.pod_ref.uid)
        {
            let time = Time(now);
            if stats.cpu.is_none() {
                stats.cpu = cg.cpu_nanos.map(|total| CpuStats {
                    time: time.clone(),
                    usage_nano_cores: rates.rate(&pod_key, now_ns, total),
                    usage_core_nano_seconds: Some(total),
                });
            }
            if stats.memory.is_none() {
                stats.memory = cg.memory.map(|m| memory_of_cgroup(&m, time));
            }
            if !only_cpu_and_memory && stats.process_stats.is_none() {
                stats.process_stats = cg.processes.map(|n| ProcessStats {
                    process_count: Some(n),
                });
            }
        }
        if stats.cpu.is_none() || stats.memory.is_none() {
            let (cpu, memory) = summed(&stats.containers);
            stats.cpu = stats.cpu.take().or(cpu);
            stats.memory = stats.memory.take().or(memory);
        }
        drafts.push(PodDraft {
            stats,
            rootfs_mounts,
        });
    }
    drafts.sort_by(|a, b| a.stats.pod_ref.cmp(&b.stats.pod_ref));
    drafts
}

fn name_of(c: &api::Container) -> &str {
    c.metadata.as_ref().map_or("", |m| m.name.as_str())
}

/// A container's CPU, memory and writable layer (`rootfs` without its filesystem's size yet), and
/// the mount point of that filesystem.
fn container_of(
    c: &api::Container,
    s: &api::ContainerStats,
    rates: &mut CpuRates,
    now: Timestamp,
    only_cpu_and_memory: bool,
) -> (ContainerStats, Option<String>) {
    let key = format!("container/{}", c.id);
    // As kubelet: a container the runtime gives no CPU or memory for shows zeros.
    let cpu = match &s.cpu {
        Some(cpu) => cpu_of(cpu, &key, rates),
        None => CpuStats {
            time: Time(now),
            usage_nano_cores: Some(0),
            usage_core_nano_seconds: Some(0),
        },
    };
    let memory = match &s.memory {
        Some(m) => memory_of(m),
        None => MemoryStats {
            working_set_bytes: Some(0),
            ..empty_memory(Time(now))
        },
    };
    let layer = s.writable_layer.as_ref().filter(|_| !only_cpu_and_memory);
    let rootfs = layer.map(|w| FsStats {
        used_bytes: value(&w.used_bytes),
        inodes_used: value(&w.inodes_used),
        ..FsStats::at(time_of(w.timestamp))
    });
    let mount = layer
        .and_then(|w| w.fs_id.as_ref())
        .map(|id| id.mountpoint.clone())
        .filter(|m| !m.is_empty());
    (
        ContainerStats {
            name: name_of(c).to_string(),
            start_time: time_of(c.created_at),
            cpu: Some(cpu),
            memory: Some(memory),
            rootfs,
            logs: None,
        },
        mount,
    )
}

/// CRI CPU figures; the rate derived from `key`'s previous sample when the runtime gives none.
fn cpu_of(cpu: &api::CpuUsage, key: &str, rates: &mut CpuRates) -> CpuStats {
    let total = value(&cpu.usage_core_nano_seconds);
    let derived = total.and_then(|t| rates.rate(key, cpu.timestamp, t));
    CpuStats {
        time: time_of(cpu.timestamp),
        usage_nano_cores: value(&cpu.usage_nano_cores).or(derived),
        usage_core_nano_seconds: total,
    }
}

fn empty_memory(time: Time) -> MemoryStats {
    MemoryStats {
        time,
        available_bytes: None,
        usage_bytes: None,
        working_set_bytes: None,
        rss_bytes: None,
        page_faults: None,
        major_page_faults: None,
    }
}

fn memory_of(m: &api::MemoryUsage) -> MemoryStats {
    MemoryStats {
        time: time_of(m.timestamp),
        available_bytes: value(&m.available_bytes),
        usage_bytes: value(&m.usage_bytes),
        working_set_bytes: value(&m.working_set_bytes),
        rss_bytes: value(&m.rss_bytes),
        page_faults: value(&m.page_faults),
        major_page_faults: value(&m.major_page_faults),
    }
}

pub(crate) fn memory_of_cgroup(m: &cgroup::MemoryUsage, time: Time) -> MemoryStats {
    MemoryStats {
        time,
        available_bytes: m.available_bytes(),
        usage_bytes: Some(m.usage_bytes),
        working_set_bytes: Some(m.working_set_bytes),
        rss_bytes: Some(m.rss_bytes),
        page_faults: Some(m.page_faults),
        major_page_faults: Some(m.major_page_faults),
    }
}

/// A pod's CPU and memory as its containers' sum (kubelet, when the pod has no cgroup figures).
fn summed(containers: &[ContainerStats]) -> (Option<CpuStats>, Option<MemoryStats>) {
    let add = |a: Option<u64>, b: Option<u64>| Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0)));
    let mut cpu: Option<CpuStats> = None;
    let mut memory: Option<MemoryStats> = None;
    for c in containers {
        if let Some(cc) = &c.cpu {
            let sum = cpu.get_or_insert_with(|| CpuStats {
                time: cc.time.clone(),
                usage_nano_cores: None,
                usage_core_nano_seconds: None,
            });
            sum.time = cc.time.clone();
            sum.usage_core_nano_seconds =
                add(sum.usage_core_nano_seconds, cc.usage_core_nano_seconds);
            sum.usage_nano_cores = add(sum.usage_nano_cores, cc.usage_nano_cores);
        }
        if let Some(cm) = &c.memory {
            let sum = memory.get_or_insert_with(|| empty_memory(cm.time.clone()));
            sum.time = cm.time.clone();
            sum.available_bytes = add(sum.available_bytes, cm.available_bytes);
            sum.usage_bytes = add(sum.usage_bytes, cm.usage_bytes);
            sum.working_set_bytes = add(sum.working_set_bytes, cm.working_set_bytes);
            sum.rss_bytes = add(sum.rss_bytes, cm.rss_bytes);
            sum.page_faults = add(sum.page_faults, cm.page_faults);
            sum.major_page_faults = add(sum.major_page_faults, cm.major_page_faults);
        }
    }
    (cpu, memory)
}

fn interface_of(i: &api::NetworkInterfaceUsage) -> InterfaceStats {
    InterfaceStats {
        name: i.name.clone(),
        rx_bytes: value(&i.rx_bytes),
        rx_errors: value(&i.rx_errors),
        tx_bytes: value(&i.tx_bytes),
        tx_errors: value(&i.tx_errors),
    }
}

fn network_of_cri(n: &api::NetworkUsage) -> Option<NetworkStats> {
    let interfaces: Vec<InterfaceStats> = n.interfaces.iter().map(interface_of).collect();
    if interfaces.is_empty() && n.default_interface.is_none() {
        return None;
    }
    Some(NetworkStats {
        time: time_of(n.timestamp),
        default_interface: n.default_interface.as_ref().map(interface_of),
        interfaces,
    })
}

/// The node's interfaces, `eth0` as the default one (cAdvisor's default interface name).
fn network_of(time: Time, interfaces: Vec<InterfaceStats>) -> Option<NetworkStats> {
    if interfaces.is_empty() {
        return None;
    }
    Some(NetworkStats {
        time,
        default_interface: interfaces
            .iter()
            .find(|i| i.name == node::DEFAULT_INTERFACE)
            .cloned(),
        interfaces,
    })
}

/// CRI ImageFsInfo's first filesystem with the size of its mount point's filesystem.
fn image_fs_stats(fs: &api::FilesystemUsage) -> FsStats {
    let info = fs
        .fs_id
        .as_ref()
        .and_then(|id| fs::fs_info(Path::new(&id.mountpoint)).ok());
    let time = time_of(fs.timestamp);
    FsStats {
        used_bytes: value(&fs.used_bytes),
        inodes_used: value(&fs.inodes_used),
        ..match info {
            Some(info) => info.stats(time, None),
            None => FsStats::at(time),
        }
    }
}

/// kubelet's `calcEphemeralStorage`: the node filesystem's size, and the containers' writable
/// layers and logs plus `extra` (local ephemeral volumes, the pod's own log files, its hosts file)
/// as used.
pub(crate) fn ephemeral_storage(
    node_fs: Option<&FsInfo>,
    time: Time,
    containers: &[ContainerStats],
    extra: impl Iterator<Item = DiskUsage>,
) -> FsStats {
    let mut result = match node_fs {
        Some(info) => info.stats(time, None),
        None => FsStats::at(time),
    };
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
    };
    for c in containers {
        for fs in [&c.rootfs, &c.logs].into_iter().flatten() {
            result.used_bytes = add(result.used_bytes, fs.used_bytes);
            result.inodes_used = add(result.inodes_used, fs.inodes_used);
        }
    }
    for u in extra {
        result.used_bytes = add(result.used_bytes, Some(u.bytes));
        result.inodes_used = add(result.inodes_used, Some(u.inodes));
    }
    result
}
