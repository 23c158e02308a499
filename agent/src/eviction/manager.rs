//! The eviction manager's loop (kubelet's `managerImpl.Start` and `synchronize`): every monitoring
//! period, observe the signals, track which thresholds are met (soft ones for their grace period,
//! met ones until their minimum reclaim is available again) and the pressure conditions (for the
//! pressure transition period), publish the conditions, and while a threshold is met reclaim
//! node-level resources for disk signals, then evict the first pod of the signal's ranking that is
//! not critical — one pod per pass — and wait for it to be cleaned up before the next pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::REASON;
use super::admit::is_critical;
use super::message::eviction_message;
use super::ranking::Ranking;
use super::signals;
use super::thresholds::{
    Condition, EvictionThresholds, FirstObserved, LastObserved, Observations, Pressure, Resource,
    Signal, Threshold, ThresholdError, merge_thresholds, node_conditions,
    node_conditions_last_observed_at, node_conditions_observed_since, reclaimable_threshold,
    sort_by_eviction_priority, thresholds_first_observed_at, thresholds_met,
    thresholds_met_grace_period, thresholds_updated_stats,
};
use crate::config::KubeletConfiguration;
use crate::events::{EventRecorder, EventType};
use crate::metrics::{EvictionLabels, Metrics};
use crate::pod_workers::{KillOutcome, KillPod, PodKiller};
use crate::sources::{PodSet, pod_key};
use crate::stats::types::Summary;
use crate::status::StatusManager;
use crate::sync::PodFailure;

/// kubelet's `evictionMonitoringPeriod` (it has no setting for it).
pub const MONITORING_PERIOD: Duration = Duration::from_secs(10);
/// **Test only**: the monitoring period as a Go duration (`1s`) instead of kubelet's fixed 10 s;
/// kubelet has no such setting, the end-to-end tests shorten it.
pub const MONITORING_PERIOD_ENV: &str = "MK_EVICTION_MONITORING_PERIOD";
/// kubelet's `evictionPressureTransitionPeriod` default (also what `0s` means).
pub const DEFAULT_PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);
/// kubelet's `podCleanupTimeout`: how long an evicted pod may take to be cleaned up (stopped,
/// its volumes torn down: a memory-backed emptyDir frees its memory then) before the next pass
/// runs anyway.
pub const POD_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// kubelet's `immediateEvictionGracePeriodSeconds`: the grace period of a hard eviction (the pod
/// workers raise it to the runtime manager's minimum).
pub const IMMEDIATE_EVICTION_GRACE_PERIOD_SECONDS: i64 = 1;
/// kubelet's `killPodNow` waits at least this long for a kill (its 10 s for the runtime's SIGKILL).
const MIN_KILL_TIMEOUT_SECONDS: i64 = 10;

/// What the manager is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    pub thresholds: EvictionThresholds,
    /// `evictionPressureTransitionPeriod`.
    pub pressure_transition_period: Duration,
    /// `evictionMaxPodGracePeriod`: the longest grace period of a soft eviction.
    pub max_pod_grace_period_seconds: i64,
    /// How often the signals are observed.
    pub monitoring_period: Duration,
}

impl EvictionConfig {
    /// The configuration's thresholds and periods, with the monitoring period of
    /// [`MONITORING_PERIOD_ENV`] when set. `containerfs.*` thresholds are ignored with a warning
    /// (kubelet derives them from the nodefs ones: without a separate container filesystem they
    /// are the nodefs signals).
    pub fn from_config(config: &KubeletConfiguration) -> Result<Self, ThresholdError> {
        let mut thresholds = EvictionThresholds::from_config(config)?;
        thresholds.0.retain(|t| {
            let container_fs = matches!(
                t.signal,
                Signal::ContainerFsAvailable | Signal::ContainerFsInodesFree
            );
            if container_fs {
                tracing::warn!(signal = t.signal.as_str(), "eviction manager: found a containerfs threshold; ignoring it (the container filesystem is the node filesystem)");
            }
            !container_fs
        });
        let transition = match config.eviction_pressure_transition_period {
            Duration::ZERO => DEFAULT_PRESSURE_TRANSITION_PERIOD,
            period => period,
        };
        Ok(Self {
            thresholds,
            pressure_transition_period: transition,
            max_pod_grace_period_seconds: i64::from(config.eviction_max_pod_grace_period),
            monitoring_period: monitoring_period_from_env(),
        })
    }
}

/// Reads the monitoring period from [`MONITORING_PERIOD_ENV`] (test only); kubelet's 10 s
/// otherwise.
pub fn monitoring_period_from_env() -> Duration {
    match std::env::var(MONITORING_PERIOD_ENV) {
        Ok(text) => match crate::config::parse_duration(&text) {
            Ok(period) if !period.is_zero() => {
                tracing::warn!(period = ?period, "{MONITORING_PERIOD_ENV} is set: the eviction manager observes at this test-only period");
                period
            }
            Ok(_) | Err(_) => {
                tracing::warn!(value = %text, "{MONITORING_PERIOD_ENV} is not a positive duration; ignored");
                MONITORING_PERIOD
            }
        },
        Err(_) => MONITORING_PERIOD,
    }
}

/// Why the node's usage could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Stats(#[from] crate::stats::StatsError),
    #[error("reading the image filesystem: {0}")]
    ImageFsInfo(#[source] mk_cri::CriError),
    #[error("the runtime reports no image filesystem")]
    NoImageFs,
    #[error("stat {}: {source}", path.display())]
    Stat {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a node-level reclaim failed.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error("deleting unused containers: {0}")]
    Containers(#[from] crate::container_gc::GcError),
    #[error("deleting unused images: {0}")]
    Images(#[from] crate::image_gc::GcError),
}

/// Where the manager reads the node's and the pods' usage (kubelet's `SummaryProvider` and
/// `DiskInfoProvider`).
pub trait StatsSource: Send + Sync {
    /// A fresh summary: node memory, filesystems and tasks, each pod's memory, disk and processes.
    fn summary(&self) -> BoxFuture<'_, Result<Summary, ObserveError>>;
    /// Whether the images are on a filesystem other than the node's (asked until it answers).
    fn has_dedicated_image_fs(&self) -> BoxFuture<'_, Result<bool, ObserveError>>;
}

/// How the node reclaims disk without evicting pods (kubelet's `ContainerGC` and `ImageGC`).
pub trait NodeReclaim: Send + Sync {
    /// kubelet's `DeleteAllUnusedContainers`.
    fn delete_unused_containers(&self) -> BoxFuture<'_, Result<(), ReclaimError>>;
    /// kubelet's `DeleteUnusedImages`.
    fn delete_unused_images(&self) -> BoxFuture<'_, Result<(), ReclaimError>>;
}

/// The pods eviction may pick from: those the sync loop runs (with their allocated resources) whose
/// status is not terminal yet (kubelet's `getAllocatedPods`).
#[derive(Clone)]
pub struct ActivePods {
    pub pods: watch::Receiver<PodSet>,
    pub status: StatusManager,
}

impl ActivePods {
    pub fn get(&self) -> Vec<Arc<Pod>> {
        let pods = self.pods.borrow();
        pods.pods
            .iter()
            .filter(|(uid, _)| {
                !self
                    .status
                    .get(uid)
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p == "Succeeded" || p == "Failed")
            })
            .map(|(_, pod)| pod.clone())
            .collect()
    }

    /// kubelet's `PodIsFinished`: the pod's worker has torn it down (its status entry is marked
    /// terminated, which happens once its volumes are torn down), or it is gone.
    pub fn is_cleaned_up(&self, uid: &str) -> bool {
        self.status
            .entries()
            .iter()
            .find(|e| e.pod.metadata.uid.as_deref() == Some(uid))
            .is_none_or(|e| e.terminated)
    }

    /// kubelet's `waitForPodsCleanup`: until the pod is cleaned up, at most `timeout`.
    pub async fn wait_for_cleanup(&self, uid: &str, timeout: Duration) -> bool {
        let mut changes = self.status.changes();
        let cleaned = async {
            loop {
                if self.is_cleaned_up(uid) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, cleaned).await.is_ok()
    }
}

/// The grace period an evicted pod gets (kubelet 1.37's rule): a hard eviction
/// [`IMMEDIATE_EVICTION_GRACE_PERIOD_SECONDS`]; a soft one `evictionMaxPodGracePeriod`, or the
/// pod's own `terminationGracePeriodSeconds` when that is shorter. The pod workers raise it to the
/// runtime manager's minimum (2 s).
pub fn eviction_grace_period(threshold: &Threshold, max_pod_grace_seconds: i64, pod: &Pod) -> i64 {
    if threshold.is_hard() {
        return IMMEDIATE_EVICTION_GRACE_PERIOD_SECONDS;
    }
    match pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
    {
        Some(own) => max_pod_grace_seconds.min(own),
        None => max_pod_grace_seconds,
    }
}

/// What one pass decided from its observations: the conditions to report and the thresholds to act
/// on (grace periods met, stats updated since the last pass).
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    pub conditions: Vec<Condition>,
    pub thresholds: Vec<Threshold>,
}

/// The threshold and condition bookkeeping between passes (the state of kubelet's `managerImpl`).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    first_observed: FirstObserved,
    conditions_last_observed: LastObserved,
    /// Thresholds met (grace periods included) and not yet resolved.
    met: Vec<Threshold>,
    last_observations: Observations,
}

impl Tracker {
    /// The first half of kubelet's `synchronize`, pure: `observations` taken at `now`.
    pub fn observe(
        &mut self,
        config: &EvictionConfig,
        observations: &Observations,
        now: Instant,
    ) -> Pass {
        let mut met = thresholds_met(&config.thresholds.0, observations, false);
        if !self.met.is_empty() {
            // Met before and not resolved until the minimum reclaim is available.
            let unresolved = thresholds_met(&self.met, observations, true);
            met = merge_thresholds(met, &unresolved);
        }
        let first_observed = thresholds_first_observed_at(&met, &self.first_observed, now);
        let observed_now = node_conditions(&met);
        let last_observed =
            node_conditions_last_observed_at(&observed_now, &self.conditions_last_observed, now);
        let mut conditions =
            node_conditions_observed_since(&last_observed, config.pressure_transition_period, now);
        conditions.sort();
        let grace_met = thresholds_met_grace_period(&first_observed, now);
        self.first_observed = first_observed;
        self.conditions_last_observed = last_observed;
        self.met = grace_met.clone();
        let thresholds =
            thresholds_updated_stats(&grace_met, observations, &self.last_observations);
        self.last_observations = observations.clone();
        Pass {
            conditions,
            thresholds,
        }
    }
}

/// What the manager works with.
pub struct EvictionManager {
    pub config: EvictionConfig,
    pub stats: Arc<dyn StatsSource>,
    pub reclaim: Arc<dyn NodeReclaim>,
    pub killer: PodKiller,
    pub pods: ActivePods,
    pub events: EventRecorder,
    pub metrics: Metrics,
    pub pressure: watch::Sender<Pressure>,
    tracker: Tracker,
    dedicated_image_fs: Option<bool>,
}

/// A pod the manager evicted.
#[derive(Debug, Clone)]
pub struct Evicted {
    pub pod: Arc<Pod>,
    pub signal: Signal,
    pub message: String,
}

impl EvictionManager {
    /// A manager publishing the node's pressure conditions on `pressure`.
    pub fn new(
        config: EvictionConfig,
        sources: EvictionSources,
        pressure: watch::Sender<Pressure>,
    ) -> Self {
        Self {
            config,
            stats: sources.stats,
            reclaim: sources.reclaim,
            killer: sources.killer,
            pods: sources.pods,
            events: sources.events,
            metrics: sources.metrics,
            pressure,
            tracker: Tracker::default(),
            dedicated_image_fs: None,
        }
    }

    /// Observes, and evicts, every monitoring period until `cancel`; right after an eviction
    /// (and its clean-up) the next pass runs at once, as kubelet's.
    pub async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(
            thresholds = %self
                .config
                .thresholds
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            period = ?self.config.monitoring_period,
            transition = ?self.config.pressure_transition_period,
            "eviction manager: starting control loop"
        );
        loop {
            let evicted = tokio::select! {
                () = cancel.cancelled() => return,
                evicted = self.synchronize() => evicted,
            };
            if evicted.is_some() {
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.config.monitoring_period) => {}
            }
        }
    }

    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn publish(&self, conditions: &[Condition]) {
        let pressure = Pressure::from_conditions(conditions);
        self.pressure.send_if_modified(|current| {
            if *current == pressure {
                return false;
            }
            tracing::info!(from = ?current.conditions(), to = ?pressure.conditions(), "eviction manager: node pressure conditions changed");
            *current = pressure;
            true
        });
    }

    /// One pass (kubelet's `synchronize`); the pod evicted, if any, once it is cleaned up (or its
    /// clean-up timed out). A failure to observe skips the pass with a logged error.
    pub async fn synchronize(&mut self) -> Option<Evicted> {
        if self.config.thresholds.is_empty() {
            return None;
        }
        let dedicated = match self.dedicated_image_fs {
            Some(d) => d,
            None => match self.stats.has_dedicated_image_fs().await {
                Ok(d) => {
                    self.dedicated_image_fs = Some(d);
                    d
                }
                Err(e) => {
                    tracing::error!(error = %e, "eviction manager: failed to get HasDedicatedImageFs");
                    return None;
                }
            },
        };
        let active = self.pods.get();
        let summary = match self.stats.summary().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "eviction manager: failed to get summary stats");
                return None;
            }
        };
        let observations = signals::observe(&summary);
        tracing::debug!(observations = ?observations, "eviction manager: observations");
        let pass = self
            .tracker
            .observe(&self.config, &observations, Self::now());
        self.publish(&pass.conditions);
        let mut thresholds = pass.thresholds;
        if thresholds.is_empty() {
            tracing::debug!("eviction manager: no resources are starved");
            return None;
        }
        sort_by_eviction_priority(&mut thresholds);
        let (threshold, resource) = reclaimable_threshold(&thresholds)?;
        tracing::info!(
            resource = resource.as_str(),
            signal = threshold.signal.as_str(),
            "eviction manager: attempting to reclaim"
        );
        if self
            .reclaim_node_level_resources(threshold.signal, resource, dedicated)
            .await
        {
            tracing::info!(
                resource = resource.as_str(),
                "eviction manager: able to reduce resource pressure without evicting pods"
            );
            return None;
        }
        tracing::info!(
            resource = resource.as_str(),
            "eviction manager: must evict pod(s) to reclaim"
        );
        if active.is_empty() {
            tracing::error!(
                "eviction manager: eviction thresholds have been met, but no pods are active to evict"
            );
            return None;
        }
        let stats = signals::pod_stats(&summary);
        let mut ranked = active;
        Ranking::for_signal(threshold.signal, dedicated).rank(&mut ranked, &stats);
        tracing::info!(pods = ?ranked.iter().map(|p| pod_key(p)).collect::<Vec<_>>(), "eviction manager: pods ranked for eviction");
        for pod in ranked {
            let grace =
                eviction_grace_period(&threshold, self.config.max_pod_grace_period_seconds, &pod);
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            let message =
                eviction_message(resource, &pod, stats.get(uid), &thresholds, &observations);
            let span = crate::logging::pod_span_for(&pod);
            if tracing::Instrument::instrument(self.evict_pod(&pod, grace, &message), span).await {
                self.metrics
                    .evictions
                    .get_or_create(&EvictionLabels {
                        eviction_signal: threshold.signal.as_str(),
                    })
                    .inc();
                tracing::info!(pod = %pod_key(&pod), "eviction manager: pods evicted, waiting for pod to be cleaned up");
                if self.pods.wait_for_cleanup(uid, POD_CLEANUP_TIMEOUT).await {
                    tracing::info!(pod = %pod_key(&pod), "eviction manager: pods successfully cleaned up");
                } else {
                    tracing::info!(pod = %pod_key(&pod), "eviction manager: timed out waiting for pods to be cleaned up");
                }
                return Some(Evicted {
                    pod,
                    signal: threshold.signal,
                    message,
                });
            }
        }
        tracing::info!("eviction manager: unable to evict any pods from the node");
        None
    }

    /// kubelet's `reclaimNodeLevelResources`: for disk signals, delete unused containers, then
    /// unused images; true when no threshold (with its minimum reclaim) is met any more.
    async fn reclaim_node_level_resources(
        &self,
        signal: Signal,
        resource: Resource,
        dedicated_image_fs: bool,
    ) -> bool {
        let reclaims = match signal {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable | Signal::PidAvailable => {
                false
            }
            // With a dedicated image filesystem, nodefs pressure has nothing to delete but logs.
            Signal::NodeFsAvailable | Signal::NodeFsInodesFree if dedicated_image_fs => false,
            _ => true,
        };
        if !reclaims {
            return false;
        }
        for result in [
            self.reclaim.delete_unused_containers().await,
            self.reclaim.delete_unused_images().await,
        ] {
            if let Err(e) = result {
                tracing::info!(resource = resource.as_str(), error = %e, "eviction manager: unexpected error when attempting to reduce resource pressure");
            }
        }
        let summary = match self.stats.summary().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "eviction manager: failed to get summary stats after resource reclaim");
                return false;
            }
        };
        let observations = signals::observe(&summary);
        thresholds_met(&self.config.thresholds.0, &observations, true).is_empty()
    }

    /// kubelet's `evictPod`: never a critical pod; a Warning event `Evicted`, then the pod is
    /// stopped and failed with the message (and a DisruptionTarget condition), waiting for it to
    /// be stopped (kubelet's `killPodNow`: its grace period and a half, at least 10 s).
    async fn evict_pod(&self, pod: &Arc<Pod>, grace: i64, message: &str) -> bool {
        if is_critical(pod) {
            tracing::error!(pod = %pod_key(pod), "eviction manager: cannot evict a critical pod");
            return false;
        }
        self.events
            .record(pod, None, EventType::Warning, REASON, message);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        tracing::info!(grace, message, "evicting pod");
        let kill = self.killer.kill(
            &uid,
            KillPod {
                failure: PodFailure {
                    reason: REASON.into(),
                    message: message.to_string(),
                },
                grace_seconds: Some(grace),
                disruption: true,
            },
        );
        let kill_timeout = (grace + grace / 2).max(MIN_KILL_TIMEOUT_SECONDS);
        let kill_timeout = Duration::from_secs(u64::try_from(kill_timeout).unwrap_or(u64::MAX));
        match tokio::time::timeout(kill_timeout, kill).await {
            Ok(KillOutcome::Terminated) => {
                tracing::info!(pod = %pod_key(pod), "eviction manager: pod is evicted successfully");
            }
            Ok(KillOutcome::NotRunning) => {
                tracing::info!(pod = %pod_key(pod), "eviction manager: the evicted pod was not running");
            }
            Ok(KillOutcome::AgentStopping) => {
                tracing::info!(pod = %pod_key(pod), "eviction manager: the agent is stopping");
            }
            Err(_) => {
                self.events.record(
                    pod,
                    None,
                    EventType::Warning,
                    "ExceededGracePeriod",
                    "Container runtime did not kill the pod within specified grace period.",
                );
                tracing::error!(pod = %pod_key(pod), "eviction manager: pod failed to evict: timeout waiting to kill pod");
            }
        }
        true
    }
}

/// Everything [`spawn`] needs.
pub struct EvictionSources {
    pub stats: Arc<dyn StatsSource>,
    pub reclaim: Arc<dyn NodeReclaim>,
    pub killer: PodKiller,
    pub pods: ActivePods,
    pub events: EventRecorder,
    pub metrics: Metrics,
}

/// Starts the eviction manager publishing on `pressure` (its [`super::PressureView`] is the node's
/// conditions). No thresholds: nothing starts and the node never reports pressure.
pub fn spawn(
    config: EvictionConfig,
    sources: EvictionSources,
    pressure: watch::Sender<Pressure>,
    cancel: CancellationToken,
) {
    if config.thresholds.is_empty() {
        tracing::info!("eviction manager: no eviction thresholds; not started");
        return;
    }
    tokio::spawn(EvictionManager::new(config, sources, pressure).run(cancel));
}
