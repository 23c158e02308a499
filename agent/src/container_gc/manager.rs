//! kubelet's `realContainerGC`: every [`CONTAINER_GC_PERIOD`] (kubelet's `ContainerGCPeriod`)
//! the runtime's containers and sandboxes are listed, this node's are sorted by pod, each pod is
//! classified from the pod set the sources want, the PLEG's last relist and the status manager
//! (see [`policy::classify`]), and what the policy picks is removed: a container with its log
//! files (as kubelet's `removeContainer`), then the sandboxes left empty, then the pod and log
//! directories of removed pods, each after the pod's cgroup (kubelet's
//! `cleanupOrphanedPodCgroups`: a pod removed while the agent was down, or whose cgroup could not
//! go with it). A failed removal is logged and tried again next round.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mk_cri::{CriClient, CriError, api};
use tokio::sync::{Mutex, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::policy::{
    self, Candidates, GcPolicy, ListedContainer, ListedSandbox, Mode, PodFacts, PodState, Removal,
};
use crate::cm::PodCgroups;
use crate::kuberuntime::labels;
use crate::kuberuntime::observe::ContainerState;
use crate::pleg::Relist;
use crate::sources::PodSet;
use crate::status::StatusManager;
use crate::volumes::VolumeManager;

/// kubelet's `ContainerGCPeriod`.
pub const CONTAINER_GC_PERIOD: Duration = Duration::from_secs(60);

/// **Test only**: the period of container garbage collection as a Go duration (`2s`), instead of
/// kubelet's fixed minute. kubelet has no setting for it; the end-to-end tests shorten it.
pub const PERIOD_ENV: &str = "MK_CONTAINER_GC_PERIOD";

/// Why a garbage collection round could not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing containers: {0}")]
    ListContainers(#[source] CriError),
    #[error("listing pod sandboxes: {0}")]
    ListSandboxes(#[source] CriError),
}

/// What one round removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Removed container IDs, in order.
    pub containers: Vec<String>,
    /// Removed sandbox IDs, in order.
    pub sandboxes: Vec<String>,
    /// UIDs whose pod directory was torn down.
    pub pod_dirs: Vec<String>,
    /// UIDs whose pod cgroup was removed (before their directory).
    pub pod_cgroups: Vec<String>,
    /// Removed pod log directories.
    pub log_dirs: Vec<PathBuf>,
    /// Removals that failed (tried again next round).
    pub failed: usize,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.sandboxes.is_empty()
            && self.pod_dirs.is_empty()
            && self.pod_cgroups.is_empty()
            && self.log_dirs.is_empty()
            && self.failed == 0
    }
}

/// What garbage collection reads and acts through.
pub struct GcSources {
    pub cri: CriClient,
    /// Objects labelled with another node's name are never touched.
    pub node_name: String,
    /// `podLogsDir`.
    pub pod_logs_dir: PathBuf,
    /// Owns `<root-dir>/pods/<uid>`; tears a removed pod's directory down.
    pub volumes: VolumeManager,
    /// The pods' cgroups: a removed pod's goes before its directory (the directory is what says
    /// the pod was this agent's: the host's cgroup tree may hold other agents' pods).
    pub cgroups: PodCgroups,
    /// The pods the sources want on this node.
    pub desired: watch::Receiver<PodSet>,
    /// The PLEG's last relist.
    pub relists: watch::Receiver<Option<Relist>>,
    /// The pods' statuses (an entry while a worker holds a pod).
    pub status: StatusManager,
}

/// Garbage collects this node's dead containers and sandboxes and removed pods' directories.
/// Cheap to clone; rounds (periodic or asked for) run one at a time.
#[derive(Clone)]
pub struct ContainerGc {
    inner: Arc<Inner>,
}

struct Inner {
    sources: GcSources,
    policy: GcPolicy,
    /// How long a pod must look removed before its leftovers go.
    settle: Duration,
    candidates: Mutex<Candidates>,
}

/// One round's view of the runtime.
#[derive(Default)]
struct Listing {
    /// This node's containers and sandboxes.
    containers: Vec<ListedContainer>,
    sandboxes: Vec<ListedSandbox>,
    /// Pod UIDs with a sandbox, or with a container, of any node.
    sandbox_uids: HashSet<String>,
    container_uids: HashSet<String>,
    /// The sandbox of every container of any node, by container ID.
    container_sandboxes: HashMap<String, String>,
    /// `namespace/name` by pod UID, from the labels.
    names: HashMap<String, String>,
}

impl Listing {
    fn new(
        node_name: &str,
        sandboxes: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
    ) -> Self {
        let mut listing = Listing::default();
        let name_of = |labels: &HashMap<String, String>| {
            let label = |key| labels.get(key).map(String::as_str).unwrap_or_default();
            format!(
                "{}/{}",
                label(labels::POD_NAMESPACE),
                label(labels::POD_NAME)
            )
        };
        for s in sandboxes {
            let uid = s
                .labels
                .get(labels::POD_UID)
                .cloned()
                .or_else(|| s.metadata.as_ref().map(|m| m.uid.clone()))
                .unwrap_or_default();
            if !uid.is_empty() {
                listing.sandbox_uids.insert(uid.clone());
            }
            if !labels::owned_by(&s.labels, node_name) {
                continue;
            }
            listing.names.insert(uid.clone(), name_of(&s.labels));
            listing.sandboxes.push(ListedSandbox {
                ready: s.state == api::PodSandboxState::SandboxReady as i32,
                created_at: s.created_at,
                attempt: s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                id: s.id,
                pod_uid: uid,
            });
        }
        for c in containers {
            listing
                .container_sandboxes
                .insert(c.id.clone(), c.pod_sandbox_id.clone());
            if let Some(uid) = c.labels.get(labels::POD_UID) {
                listing.container_uids.insert(uid.clone());
            }
            if !labels::owned_by(&c.labels, node_name) {
                continue;
            }
            let uid = c.labels.get(labels::POD_UID).cloned().unwrap_or_default();
            listing
                .names
                .entry(uid.clone())
                .or_insert_with(|| name_of(&c.labels));
            listing.containers.push(ListedContainer {
                name: c
                    .labels
                    .get(labels::CONTAINER_NAME)
                    .cloned()
                    .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
                    .unwrap_or_default(),
                attempt: c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                state: ContainerState::from(c.state),
                created_at: c.created_at,
                sandbox_id: c.pod_sandbox_id,
                id: c.id,
                pod_uid: uid,
            });
        }
        listing
    }
}

/// Reads the period from [`PERIOD_ENV`] (test only); kubelet's minute otherwise.
pub fn period_from_env() -> Duration {
    match std::env::var(PERIOD_ENV) {
        Ok(text) => match crate::config::parse_duration(&text) {
            Ok(period) if !period.is_zero() => {
                tracing::warn!(period = ?period, "{PERIOD_ENV} is set: container garbage collection runs at this test-only period");
                period
            }
            Ok(_) | Err(_) => {
                tracing::warn!(value = %text, "{PERIOD_ENV} is not a positive duration; ignored");
                CONTAINER_GC_PERIOD
            }
        },
        Err(_) => CONTAINER_GC_PERIOD,
    }
}

fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

impl ContainerGc {
    /// A collector whose pods look removed only after `settle` (use the period).
    pub fn new(sources: GcSources, policy: GcPolicy, settle: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                sources,
                policy,
                settle,
                candidates: Mutex::new(Candidates::default()),
            }),
        }
    }

    pub fn policy(&self) -> &GcPolicy {
        &self.inner.policy
    }

    /// kubelet's `DeleteAllUnusedContainers`, for the eviction manager's disk reclaim: a round
    /// that also removes every dead container and inactive sandbox of pods their workers have
    /// terminated (Succeeded, Failed, evicted, not yet deleted from the API). Removed pods'
    /// leftovers go only when `all_sources_ready` and the agent's own sources have listed their
    /// pods. Waits for a round under way to end first.
    pub async fn collect(&self, all_sources_ready: bool) -> Result<Round, GcError> {
        tracing::info!("Attempting to delete unused containers");
        self.garbage_collect(Mode {
            all_sources_ready,
            evict_non_deleted: true,
        })
        .await
    }

    /// One round (kubelet's `GarbageCollect`). `mode.all_sources_ready` is anded with the
    /// agent's own sources having listed their pods.
    pub async fn garbage_collect(&self, mode: Mode) -> Result<Round, GcError> {
        self.garbage_collect_at(mode, Instant::now()).await
    }

    pub(super) async fn garbage_collect_at(
        &self,
        mode: Mode,
        now: Instant,
    ) -> Result<Round, GcError> {
        let sources = &self.inner.sources;
        let mut candidates = self.inner.candidates.lock().await;
        let mode = Mode {
            all_sources_ready: mode.all_sources_ready && sources.desired.borrow().synced,
            ..mode
        };
        // What says a worker holds a pod is read before the runtime is listed: a pod that
        // appears in between is one the listing shows.
        let desired: HashSet<String> = sources.desired.borrow().pods.keys().cloned().collect();
        let relisted: HashSet<String> = sources
            .relists
            .borrow()
            .as_ref()
            .map(|r| r.pods.keys().cloned().collect())
            .unwrap_or_default();
        let statuses: HashMap<String, bool> = sources
            .status
            .entries()
            .into_iter()
            .filter_map(|e| Some((e.pod.metadata.uid.clone()?, e.terminated)))
            .collect();
        let listing = self.list().await?;
        let pod_dirs = self.pod_dirs(&desired).await;
        let log_dirs = self.log_dirs().await;

        let uids: HashSet<&str> = listing
            .containers
            .iter()
            .map(|c| c.pod_uid.as_str())
            .chain(listing.sandboxes.iter().map(|s| s.pod_uid.as_str()))
            .chain(pod_dirs.iter().map(String::as_str))
            .chain(log_dirs.iter().map(|(_, uid)| uid.as_str()))
            .collect();
        let facts_of = |uid: &str| PodFacts {
            desired: desired.contains(uid),
            terminated: statuses.get(uid).copied().unwrap_or(false),
            has_status: statuses.contains_key(uid),
            in_relist: relisted.contains(uid),
            has_sandbox: listing.sandbox_uids.contains(uid),
            settled: false,
        };
        let fresh: Vec<String> = if mode.all_sources_ready {
            uids.iter()
                .filter(|uid| facts_of(uid).is_candidate())
                .map(|uid| uid.to_string())
                .collect()
        } else {
            Vec::new()
        };
        let settled = candidates.update(fresh, now, self.inner.settle);
        let states: HashMap<String, PodState> = uids
            .iter()
            .map(|uid| {
                let facts = PodFacts {
                    settled: settled.contains(*uid),
                    ..facts_of(uid)
                };
                (
                    uid.to_string(),
                    policy::classify(&facts, mode.all_sources_ready),
                )
            })
            .collect();
        let state_of = |uid: &str| states.get(uid).copied().unwrap_or(PodState::Busy);

        let mut round = Round::default();
        let removals = policy::containers_to_remove(
            &self.inner.policy,
            mode,
            &listing.containers,
            state_of,
            now_ns(),
        );
        for removal in &removals {
            if !self.still_removable(removal) {
                continue;
            }
            if self.remove_container(removal, &listing).await {
                round.containers.push(removal.id.clone());
            } else {
                round.failed += 1;
            }
        }

        let removed: HashSet<&str> = round.containers.iter().map(String::as_str).collect();
        let holding: HashSet<String> = listing
            .container_sandboxes
            .iter()
            .filter(|(id, _)| !removed.contains(id.as_str()))
            .map(|(_, sandbox)| sandbox.clone())
            .collect();
        for removal in policy::sandboxes_to_remove(mode, &listing.sandboxes, &holding, state_of) {
            if !self.still_removable(&removal) {
                continue;
            }
            if self.remove_sandbox(&removal, &listing).await {
                round.sandboxes.push(removal.id);
            } else {
                round.failed += 1;
            }
        }

        // Directories go once the runtime holds nothing of the pod (of any node).
        let gone = |uid: &str| {
            state_of(uid) == PodState::Removed
                && !listing.container_uids.contains(uid)
                && !listing.sandbox_uids.contains(uid)
                && self.still_gone(uid)
        };
        for uid in pod_dirs.iter().filter(|uid| gone(uid)) {
            let pod = listing.names.get(uid).cloned().or_else(|| {
                log_dirs
                    .iter()
                    .find(|(_, u)| u == uid)
                    .and_then(|(path, _)| policy::log_dir_pod(&file_name(path)))
            });
            let pod = pod.as_deref().unwrap_or("unknown");
            match self.remove_pod_cgroup(uid, pod).await {
                Some(true) => round.pod_cgroups.push(uid.clone()),
                Some(false) => {}
                None => {
                    round.failed += 1;
                    continue;
                }
            }
            let path = sources.volumes.pod_dir(uid);
            tracing::info!(pod = %pod, podUID = %uid, path = %path.display(), "Removing orphaned pod directory");
            match sources.volumes.teardown(uid).await {
                Ok(()) => round.pod_dirs.push(uid.clone()),
                Err(e) => {
                    tracing::error!(podUID = %uid, path = %path.display(), error = %e, "Failed to remove orphaned pod directory");
                    round.failed += 1;
                }
            }
        }
        for (path, uid) in log_dirs.iter().filter(|(_, uid)| gone(uid)) {
            let pod = policy::log_dir_pod(&file_name(path));
            tracing::info!(pod = %pod.as_deref().unwrap_or("unknown"), podUID = %uid, path = %path.display(), "Removing pod logs directory");
            let target = path.clone();
            match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(target)).await {
                Ok(Ok(())) => round.log_dirs.push(path.clone()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(Err(e)) => {
                    tracing::error!(podUID = %uid, path = %path.display(), error = %e, "Failed to remove pod logs directory");
                    round.failed += 1;
                }
                Err(e) => {
                    tracing::error!(podUID = %uid, path = %path.display(), error = %e, "Failed to remove pod logs directory");
                    round.failed += 1;
                }
            }
        }
        Ok(round)
    }

    /// Every container and sandbox of the runtime (of any node: another node's pod UID keeps
    /// its pod's directories).
    async fn list(&self) -> Result<Listing, GcError> {
        let cri = &self.inner.sources.cri;
        let sandboxes = cri
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await
            .map_err(GcError::ListSandboxes)?
            .items;
        let containers = cri
            .list_containers(api::ListContainersRequest { filter: None })
            .await
            .map_err(GcError::ListContainers)?
            .containers;
        Ok(Listing::new(
            &self.inner.sources.node_name,
            sandboxes,
            containers,
        ))
    }

    /// The UIDs of the pod directories of pods not wanted here.
    async fn pod_dirs(&self, desired: &HashSet<String>) -> Vec<String> {
        let volumes = self.inner.sources.volumes.clone();
        let desired = desired.clone();
        tokio::task::spawn_blocking(move || {
            volumes.orphaned_pod_dirs(desired.iter().map(String::as_str))
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "listing pod directories failed");
            Vec::new()
        })
    }

    /// Removes a removed pod's cgroup, killing what is left in it: whether there was one, `None`
    /// when it could not go (its directory stays for the next round).
    async fn remove_pod_cgroup(&self, uid: &str, pod: &str) -> Option<bool> {
        let cgroups = self.inner.sources.cgroups.clone();
        let target = uid.to_string();
        match tokio::task::spawn_blocking(move || cgroups.destroy_pod(&target)).await {
            Ok(Ok(removed)) => {
                if removed {
                    tracing::info!(pod = %pod, podUID = %uid, "Removed orphaned pod cgroup");
                }
                Some(removed)
            }
            Ok(Err(e)) => {
                tracing::error!(pod = %pod, podUID = %uid, error = %e, "Failed to remove orphaned pod cgroup");
                None
            }
            Err(e) => {
                tracing::error!(pod = %pod, podUID = %uid, error = %e, "Failed to remove orphaned pod cgroup");
                None
            }
        }
    }

    /// The pod log directories with their pod UIDs.
    async fn log_dirs(&self) -> Vec<(PathBuf, String)> {
        let dir = self.inner.sources.pod_logs_dir.clone();
        tokio::task::spawn_blocking(move || read_log_dirs(&dir))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "listing pod log directories failed");
                Vec::new()
            })
    }

    /// Nothing says a worker took the pod since the round's snapshot (a UID wanted again, a
    /// worker that published its status). Only removals of whole pods depend on it.
    fn still_removable(&self, removal: &Removal) -> bool {
        match removal.reason {
            policy::Reason::PodRemoved => self.still_gone(&removal.pod_uid),
            _ => true,
        }
    }

    fn still_gone(&self, uid: &str) -> bool {
        let sources = &self.inner.sources;
        !sources.desired.borrow().pods.contains_key(uid) && sources.status.get(uid).is_none()
    }

    /// kubelet's `removeContainer`: its log files (the CRI log path and its rotations), then the
    /// container. Gone already counts as removed.
    async fn remove_container(&self, removal: &Removal, listing: &Listing) -> bool {
        let cri = &self.inner.sources.cri;
        let container = listing.containers.iter().find(|c| c.id == removal.id);
        let pod = listing
            .names
            .get(&removal.pod_uid)
            .map_or("unknown", String::as_str);
        tracing::info!(
            pod = %pod,
            podUID = %removal.pod_uid,
            container = %container.map_or("", |c| c.name.as_str()),
            attempt = container.map_or(0, |c| c.attempt),
            container_id = %removal.id,
            reason = removal.reason.as_str(),
            "Removing container"
        );
        let status = cri
            .container_status(api::ContainerStatusRequest {
                container_id: removal.id.clone(),
                verbose: false,
            })
            .await;
        let log_path = match status {
            Ok(resp) => resp.status.map(|s| s.log_path).unwrap_or_default(),
            Err(e) if e.is_not_found() => return true,
            Err(e) => {
                tracing::error!(pod = %pod, container_id = %removal.id, error = %e, "Failed to remove container");
                return false;
            }
        };
        if !log_path.is_empty() {
            let path = PathBuf::from(&log_path);
            match tokio::task::spawn_blocking(move || remove_log_files(&path)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = %pod, container_id = %removal.id, path = %log_path, error = %e, "Failed to remove container log files");
                }
                Err(e) => {
                    tracing::warn!(pod = %pod, container_id = %removal.id, error = %e, "Failed to remove container log files");
                }
            }
        }
        match cri
            .remove_container(api::RemoveContainerRequest {
                container_id: removal.id.clone(),
            })
            .await
        {
            Ok(_) => true,
            Err(e) if e.is_not_found() => true,
            Err(e) => {
                tracing::error!(pod = %pod, container_id = %removal.id, error = %e, "Failed to remove container");
                false
            }
        }
    }

    async fn remove_sandbox(&self, removal: &Removal, listing: &Listing) -> bool {
        let pod = listing
            .names
            .get(&removal.pod_uid)
            .map_or("unknown", String::as_str);
        tracing::info!(pod = %pod, podUID = %removal.pod_uid, sandbox_id = %removal.id, reason = removal.reason.as_str(), "Removing pod sandbox");
        let cri = &self.inner.sources.cri;
        // As kubelet: stopped first, in case nobody did (its network is torn down then).
        match cri
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: removal.id.clone(),
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return true,
            Err(e) => {
                tracing::error!(pod = %pod, sandbox_id = %removal.id, error = %e, "Failed to stop sandbox before removing");
                return false;
            }
        }
        match cri
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: removal.id.clone(),
            })
            .await
        {
            Ok(_) => true,
            Err(e) if e.is_not_found() => true,
            Err(e) => {
                tracing::error!(pod = %pod, sandbox_id = %removal.id, error = %e, "Failed to remove pod sandbox");
                false
            }
        }
    }

    /// Runs a round at once and then every `period` until `cancel`; a round under way finishes.
    pub async fn run(self, period: Duration, cancel: CancellationToken) {
        let policy = self.inner.policy;
        tracing::info!(
            min_age = ?policy.min_age,
            max_per_pod_container = policy.max_per_pod_container,
            max_containers = policy.max_containers,
            period = ?period,
            "container garbage collection started"
        );
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let mode = Mode {
                all_sources_ready: self.inner.sources.desired.borrow().synced,
                evict_non_deleted: false,
            };
            match self.garbage_collect(mode).await {
                Ok(round) => {
                    tracing::debug!(
                        containers = round.containers.len(),
                        sandboxes = round.sandboxes.len(),
                        pod_dirs = round.pod_dirs.len(),
                        pod_cgroups = round.pod_cgroups.len(),
                        log_dirs = round.log_dirs.len(),
                        failed = round.failed,
                        all_sources_ready = mode.all_sources_ready,
                        "container garbage collection round"
                    );
                    if round.failed > 0 {
                        tracing::warn!(
                            failed = round.failed,
                            "Container garbage collection left removals to retry next round"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "Container garbage collection failed"),
            }
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The directories of `pod_logs_dir` with the pod UID their name ends with.
fn read_log_dirs(pod_logs_dir: &Path) -> Vec<(PathBuf, String)> {
    let entries = match std::fs::read_dir(pod_logs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %pod_logs_dir.display(), error = %e, "cannot read the pod logs directory");
            return Vec::new();
        }
    };
    let mut dirs: Vec<(PathBuf, String)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let uid = policy::log_dir_uid(&name)?.to_owned();
            Some((e.path(), uid))
        })
        .collect();
    dirs.sort();
    dirs
}

/// kubelet's container log manager `Clean`: the log file and every file named after it
/// (`<path>*`: its rotations, compressed or not).
fn remove_log_files(log_path: &Path) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (log_path.parent(), log_path.file_name()) else {
        return Ok(());
    };
    let name = name.to_string_lossy().into_owned();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&name)
            && entry.file_type().is_ok_and(|t| !t.is_dir())
        {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Starts container garbage collection with kubelet's period (or [`PERIOD_ENV`]'s, in tests) and
/// returns the handle the eviction manager reclaims disk through ([`ContainerGc::collect`]).
pub fn spawn(sources: GcSources, policy: GcPolicy, cancel: CancellationToken) -> ContainerGc {
    let period = period_from_env();
    let gc = ContainerGc::new(sources, policy, period);
    tokio::spawn(gc.clone().run(period, cancel));
    gc
}
