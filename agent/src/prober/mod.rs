//! Container probes (liveness, readiness, startup), after kubelet's `pkg/kubelet/prober`.
//!
//! The [`ProbeManager`] runs one task per (pod, container, probe type) that has a probe in the
//! spec. Each task probes on its period and keeps kubelet's cached result for the current
//! container instance: readiness is false until the probe first succeeds, liveness succeeds and
//! startup is unknown until decided; a result flips only after `successThreshold` /
//! `failureThreshold` identical results in a row; while a startup probe has not succeeded the
//! other probes do not run, and once it has it stops. A new container ID resets everything, so
//! `initialDelaySeconds` counts from each container's start.
//!
//! The pod worker drives it:
//!
//! * [`ProbeManager::add_pod`] on every turn (cheap when nothing changed: it also carries the
//!   deletion timestamp, on which liveness and startup probing stops quietly);
//! * [`ProbeManager::update_containers`] with what it observed (container IDs, start times,
//!   running or not, the pod IP) before computing the status;
//! * [`ProbeManager::status`] (or [`ProbeManager::started`] / [`ProbeManager::readiness`]) for
//!   each container's `started` and `ready`;
//! * [`ProbeManager::liveness_failures`] for containers to kill and restart;
//! * [`ProbeManager::stop_liveness_and_startup`] when terminating and
//!   [`ProbeManager::remove_pod`] when the pod is gone.
//!
//! Whenever a cached result changes, the pod's UID is sent on the wake channel.

mod exec;
mod grpc;
mod http;
pub mod metrics;
pub mod spec;
pub mod state;
mod tcp;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use mk_cri::CriClient;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsConnector;

use crate::events::{EventRecorder, EventType};
use crate::kuberuntime::observe::{ContainerState, ObservedPod};
use metrics::{ProbeIdentity, RESULT_FAILED, RESULT_SUCCESSFUL, RESULT_UNKNOWN};
use state::{Decision, Gate, ProbeState};

pub use metrics::ProbeMetrics;
pub use spec::{Handler, ProbeSpec, ProbeType};
pub use state::ProbeResult;

/// Event reason of a failed (or errored) probe.
pub const REASON_UNHEALTHY: &str = "Unhealthy";
/// Event reason of a probe that succeeded with a warning (a redirect to another host).
pub const REASON_PROBE_WARNING: &str = "ProbeWarning";
/// How often kubelet retries a probe that errored before giving up on this turn.
const MAX_PROBE_RETRIES: usize = 3;

/// What one probe run found (kubelet's `probe.Result` with its output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(String),
    /// Success, with a warning worth an event.
    Warning(String),
    Failure(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_) | Outcome::Warning(_))
    }
}

/// Why a probe could not be run at all. Such a run counts as `unknown` and leaves the cached
/// result alone (kubelet discards it).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("port {0:?} not found in the container's ports")]
    PortNotFound(String),
    #[error("invalid port number: {0}")]
    InvalidPort(i64),
    #[error("the pod has no IP to probe")]
    NoPodIp,
    #[error("invalid probe URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("invalid HTTP header {name:?}")]
    InvalidHeader { name: String },
    #[error("missing probe handler")]
    MissingHandler,
    #[error("cannot set up TLS for HTTPS probes: {0}")]
    Tls(String),
    #[error("{0}")]
    Http(String),
    #[error(transparent)]
    Cri(#[from] mk_cri::CriError),
}

/// The latest instance of one container, as the pod worker observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbedContainer<'a> {
    pub name: &'a str,
    /// The runtime's container ID (without the `containerd://` prefix).
    pub id: &'a str,
    /// Nanoseconds since the epoch; 0 when unknown.
    pub started_at: i64,
    pub running: bool,
}

impl<'a> ProbedContainer<'a> {
    /// The newest instance of each container of an observed pod.
    pub fn latest(observed: &'a ObservedPod) -> Vec<ProbedContainer<'a>> {
        let mut seen = HashSet::new();
        observed
            .containers
            .iter()
            .filter(|c| seen.insert(c.name.as_str()))
            .map(|c| ProbedContainer {
                name: &c.name,
                id: &c.id,
                started_at: c.started_at,
                running: c.state() == ContainerState::Running,
            })
            .collect()
    }
}

/// A running container whose liveness or startup probe failed: the pod worker kills it (and
/// restarts it if the restart policy says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessFailure {
    /// [`ProbeType::Liveness`] or [`ProbeType::Startup`].
    pub probe_type: ProbeType,
    pub container_name: String,
    pub container_id: String,
    /// The output of the failing probe (`HTTP probe failed with statuscode: 500`).
    pub message: String,
    /// The probe-level `terminationGracePeriodSeconds`, which replaces the pod's for this kill
    /// (the pod's deletion grace period still wins, as in kubelet).
    pub grace_override: Option<i64>,
}

impl LivenessFailure {
    /// kubelet's kill message, the `Killing` event's text:
    /// `Container app failed liveness probe, will be restarted`.
    pub fn kill_message(&self, will_restart: bool) -> String {
        let probe = match self.probe_type {
            ProbeType::Startup => "startup",
            _ => "liveness",
        };
        let mut message = format!("Container {} failed {probe} probe", self.container_name);
        if will_restart {
            message.push_str(", will be restarted");
        }
        message
    }
}

/// A container's `started` and `ready` as kubelet's `UpdatePodStatus` computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeStatus {
    pub started: bool,
    pub ready: bool,
}

/// Runs the pods' probes and caches their results. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ProbeManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProbeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeManager")
            .field("pods", &self.inner.pods().len())
            .finish()
    }
}

struct Inner {
    cri: CriClient,
    events: EventRecorder,
    metrics: ProbeMetrics,
    wake: mpsc::UnboundedSender<String>,
    tls: Result<TlsConnector, String>,
    user_agent: String,
    created: Instant,
    /// kubelet spreads the first probes of a freshly started agent over a period.
    jitter: bool,
    pods: Mutex<HashMap<String, PodProbes>>,
}

struct PodProbes {
    pod: Arc<Pod>,
    pod_ip: Option<String>,
    /// Containers with at least one probe, by name.
    containers: HashMap<String, ContainerProbes>,
    /// Liveness and startup probing was stopped for termination: not restarted by `add_pod`.
    liveness_stopped: bool,
}

struct ContainerProbes {
    spec: Arc<Container>,
    instance: Option<Instance>,
    /// Indexed by [`ProbeType::index`].
    slots: [Option<Slot>; 3],
}

#[derive(Debug, Clone)]
struct Instance {
    id: String,
    started_at: i64,
    running: bool,
}

struct Slot {
    spec: Arc<ProbeSpec>,
    state: ProbeState,
    trigger: Arc<Notify>,
    task: JoinHandle<()>,
}

impl ContainerProbes {
    fn slot(&self, probe_type: ProbeType) -> Option<&Slot> {
        self.slots[probe_type.index()].as_ref()
    }

    /// kubelet's `isContainerStarted` for the current instance (running or not): its startup
    /// probe succeeded, or it has none.
    fn started(&self) -> bool {
        let Some(instance) = &self.instance else {
            return false;
        };
        match self.slot(ProbeType::Startup) {
            None => true,
            Some(slot) => slot.state.result_for(&instance.id) == Some(ProbeResult::Success),
        }
    }

    fn running_instance(&self) -> Option<&Instance> {
        self.instance.as_ref().filter(|i| i.running)
    }
}

fn identity(pod: &Pod, container: &str, probe_type: ProbeType) -> ProbeIdentity {
    ProbeIdentity {
        probe_type,
        container: container.to_string(),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

fn now_ns() -> i64 {
    i64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

impl ProbeManager {
    /// A manager probing through `cri` (exec probes), recording `Unhealthy` / `ProbeWarning`
    /// events on `events`, counting in `metrics`, and sending a pod's UID on `wake` whenever one
    /// of its cached results changes.
    pub fn new(
        cri: CriClient,
        events: EventRecorder,
        metrics: ProbeMetrics,
        wake: mpsc::UnboundedSender<String>,
    ) -> Self {
        Self::build(cri, events, metrics, wake, true)
    }

    fn build(
        cri: CriClient,
        events: EventRecorder,
        metrics: ProbeMetrics,
        wake: mpsc::UnboundedSender<String>,
        jitter: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cri,
                events,
                metrics,
                wake,
                tls: http::insecure_tls().map_err(|e| e.to_string()),
                user_agent: spec::user_agent(crate::version::KUBELET_VERSION),
                created: Instant::now(),
                jitter,
                pods: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the probe workers of a pod's containers that have probes (idempotent: existing
    /// workers are kept, and the stored pod is refreshed, e.g. with its deletion timestamp).
    /// Must be called from within a tokio runtime.
    pub fn add_pod(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(pod = %crate::sources::pod_key(pod), podUID = uid, "probe workers need a tokio runtime; pod not probed");
            return;
        };
        let mut pods = self.inner.pods();
        // A pod without probes needs nothing here: no entry, no copy of the pod, no comparison of
        // it on every turn (a pod's probes cannot change without its UID changing).
        if !pods.contains_key(uid)
            && !spec::probed_containers(pod)
                .any(|c| ProbeType::ALL.iter().any(|t| t.of(c).is_some()))
        {
            return;
        }
        let entry = pods.entry(uid.to_string()).or_insert_with(|| PodProbes {
            pod: Arc::new(pod.clone()),
            pod_ip: None,
            containers: HashMap::new(),
            liveness_stopped: false,
        });
        if *entry.pod != *pod {
            entry.pod = Arc::new(pod.clone());
        }
        for container in spec::probed_containers(pod) {
            for probe_type in ProbeType::ALL {
                let Some(probe) = probe_type.of(container) else {
                    continue;
                };
                if entry.liveness_stopped && probe_type != ProbeType::Readiness {
                    continue;
                }
                let probes = entry
                    .containers
                    .entry(container.name.clone())
                    .or_insert_with(|| ContainerProbes {
                        spec: Arc::new(container.clone()),
                        instance: None,
                        slots: Default::default(),
                    });
                if *probes.spec != *container {
                    probes.spec = Arc::new(container.clone());
                }
                if probes.slot(probe_type).is_some() {
                    continue;
                }
                let spec = Arc::new(ProbeSpec::from_probe(probe));
                let mut state = ProbeState::new(probe_type);
                if let Some(instance) = &probes.instance {
                    state.observe(&instance.id, instance.running);
                }
                let trigger = Arc::new(Notify::new());
                let key = WorkerKey {
                    uid: uid.to_string(),
                    container: container.name.clone(),
                    probe_type,
                };
                let task = runtime.spawn(tracing::Instrument::instrument(
                    run_worker(
                        Arc::downgrade(&self.inner),
                        key,
                        spec.period,
                        trigger.clone(),
                    ),
                    crate::logging::pod_span_for(pod),
                ));
                probes.slots[probe_type.index()] = Some(Slot {
                    spec,
                    state,
                    trigger,
                    task,
                });
            }
        }
    }

    /// Tells the probes what the pod worker observed: the latest instance of each container and
    /// the pod IP (the default host of httpGet, tcpSocket and grpc probes). A new container ID
    /// resets that container's results at once. As kubelet's `UpdatePodStatus` does, a started,
    /// running container that is not ready yet gets its readiness probe run now.
    pub fn update_containers(
        &self,
        pod_uid: &str,
        pod_ip: Option<&str>,
        containers: &[ProbedContainer<'_>],
    ) {
        let mut pods = self.inner.pods();
        let Some(entry) = pods.get_mut(pod_uid) else {
            return;
        };
        entry.pod_ip = pod_ip.filter(|ip| !ip.is_empty()).map(String::from);
        for (name, probes) in &mut entry.containers {
            let Some(seen) = containers.iter().find(|c| c.name == name) else {
                continue;
            };
            probes.instance = Some(Instance {
                id: seen.id.to_string(),
                started_at: seen.started_at,
                running: seen.running,
            });
            for slot in probes.slots.iter_mut().flatten() {
                slot.state.observe(seen.id, seen.running);
            }
            if seen.running
                && probes.started()
                && let Some(slot) = probes.slot(ProbeType::Readiness)
                && slot.state.result_for(seen.id) != Some(ProbeResult::Success)
            {
                slot.trigger.notify_one();
            }
        }
    }

    /// Stops the liveness and startup probes of a pod being terminated (kubelet's
    /// `StopLivenessAndStartup`); their results are forgotten, so nothing more is killed.
    pub fn stop_liveness_and_startup(&self, pod_uid: &str) {
        let mut pods = self.inner.pods();
        let Some(entry) = pods.get_mut(pod_uid) else {
            return;
        };
        entry.liveness_stopped = true;
        for (name, probes) in &mut entry.containers {
            for probe_type in [ProbeType::Liveness, ProbeType::Startup] {
                if let Some(slot) = probes.slots[probe_type.index()].take() {
                    slot.task.abort();
                    self.inner
                        .metrics
                        .forget(&identity(&entry.pod, name, probe_type));
                }
            }
        }
    }

    /// Stops every probe of a pod and forgets its results and metric series.
    pub fn remove_pod(&self, pod_uid: &str) {
        let removed = self.inner.pods().remove(pod_uid);
        if let Some(entry) = removed {
            self.inner.forget(&entry);
        }
    }

    /// Removes the pods `keep` says no to (kubelet's `CleanupPods`).
    pub fn retain_pods(&self, keep: impl Fn(&str) -> bool) {
        let removed: Vec<PodProbes> = {
            let mut pods = self.inner.pods();
            let gone: Vec<String> = pods.keys().filter(|uid| !keep(uid)).cloned().collect();
            gone.iter().filter_map(|uid| pods.remove(uid)).collect()
        };
        for entry in &removed {
            self.inner.forget(entry);
        }
    }

    /// The container's readiness by its readiness probe: `None` when it has none (then a running,
    /// started container is ready); `Some(false)` until the probe succeeds for the current
    /// instance, while it is not running, and while it has not started.
    pub fn readiness(&self, pod_uid: &str, container_name: &str) -> Option<bool> {
        let pods = self.inner.pods();
        let probes = pods.get(pod_uid)?.containers.get(container_name)?;
        let slot = probes.slot(ProbeType::Readiness)?;
        Some(match probes.running_instance() {
            Some(i) if probes.started() => {
                slot.state.result_for(&i.id) == Some(ProbeResult::Success)
            }
            _ => false,
        })
    }

    /// Whether the container started by its startup probe: `None` when it has none (then a
    /// running container has started); `Some(false)` until the probe succeeds for the current
    /// instance and while it is not running.
    pub fn started(&self, pod_uid: &str, container_name: &str) -> Option<bool> {
        let pods = self.inner.pods();
        let probes = pods.get(pod_uid)?.containers.get(container_name)?;
        let slot = probes.slot(ProbeType::Startup)?;
        Some(match probes.running_instance() {
            Some(i) => slot.state.result_for(&i.id) == Some(ProbeResult::Success),
            None => false,
        })
    }

    /// A container's `started` and `ready` for its status, as kubelet's `UpdatePodStatus`:
    /// `started` = running and (no startup probe or it succeeded); `ready` = started and (no
    /// readiness probe or it succeeded). `running` is the container's observed state.
    pub fn status(&self, pod_uid: &str, container_name: &str, running: bool) -> ProbeStatus {
        let started = running && self.started(pod_uid, container_name).unwrap_or(true);
        let ready = started && self.readiness(pod_uid, container_name).unwrap_or(true);
        ProbeStatus { started, ready }
    }

    /// The running containers of a pod whose liveness or startup probe failed (after its
    /// failure threshold), ordered by container name. Level-triggered like kubelet's results
    /// cache: a failure is reported until a new container instance replaces the failed one (or the
    /// instance is seen not running), so a kill that failed is retried on the next turn.
    pub fn liveness_failures(&self, pod_uid: &str) -> Vec<LivenessFailure> {
        let pods = self.inner.pods();
        let Some(entry) = pods.get(pod_uid) else {
            return Vec::new();
        };
        let mut failures: Vec<LivenessFailure> = Vec::new();
        for (name, probes) in &entry.containers {
            let Some(instance) = probes.running_instance() else {
                continue;
            };
            for probe_type in [ProbeType::Liveness, ProbeType::Startup] {
                let Some(slot) = probes.slot(probe_type) else {
                    continue;
                };
                if slot.state.result_for(&instance.id) != Some(ProbeResult::Failure) {
                    continue;
                }
                if let Some(message) = slot.state.failure_message() {
                    failures.push(LivenessFailure {
                        probe_type,
                        container_name: name.clone(),
                        container_id: instance.id.clone(),
                        message: message.to_string(),
                        grace_override: slot.spec.termination_grace_period_seconds,
                    });
                }
            }
        }
        failures.sort_by(|a, b| {
            (&a.container_name, a.probe_type).cmp(&(&b.container_name, b.probe_type))
        });
        failures
    }

    /// How many probe workers are running (for tests and debugging).
    pub fn worker_count(&self) -> usize {
        self.inner
            .pods()
            .values()
            .flat_map(|p| p.containers.values())
            .flat_map(|c| c.slots.iter().flatten())
            .filter(|s| !s.task.is_finished())
            .count()
    }
}

#[derive(Debug, Clone)]
struct WorkerKey {
    uid: String,
    container: String,
    probe_type: ProbeType,
}

/// What one probe run needs, copied out of the shared state.
struct Target {
    pod: Arc<Pod>,
    container: Arc<Container>,
    spec: Arc<ProbeSpec>,
    container_id: String,
    pod_ip: Option<String>,
}

impl Inner {
    fn pods(&self) -> MutexGuard<'_, HashMap<String, PodProbes>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, uid: &str) {
        // A closed channel means the agent is shutting down.
        let _ = self.wake.send(uid.to_string());
    }

    fn forget(&self, entry: &PodProbes) {
        for (name, probes) in &entry.containers {
            for slot in probes.slots.iter().flatten() {
                slot.task.abort();
                self.metrics
                    .forget(&identity(&entry.pod, name, slot.state.probe_type()));
            }
        }
    }

    /// One turn of a worker. Returns whether the worker goes on.
    async fn probe_once(&self, key: &WorkerKey) -> bool {
        let target = {
            let mut pods = self.pods();
            let Some(entry) = pods.get_mut(&key.uid) else {
                return false;
            };
            let deleting = entry.pod.metadata.deletion_timestamp.is_some();
            let Some(probes) = entry.containers.get_mut(&key.container) else {
                return false;
            };
            let Some(instance) = probes.instance.clone() else {
                return true;
            };
            let container_started = probes.started();
            let Some(slot) = probes.slots[key.probe_type.index()].as_mut() else {
                return false;
            };
            let gate = Gate {
                running: instance.running,
                seconds_running: Gate::seconds_between(instance.started_at, now_ns()),
                container_started,
                deleting,
            };
            match slot.state.decide(&gate, slot.spec.initial_delay_seconds) {
                Decision::Wait => return true,
                Decision::Finish => {
                    tracing::debug!(podUID = %key.uid, container = %key.container, probe = %key.probe_type,
                        "pod deletion requested; probe result set to success and probing stopped");
                    if slot.state.finish() {
                        self.wake(&key.uid);
                    }
                    return false;
                }
                Decision::Probe => Target {
                    pod: entry.pod.clone(),
                    container: probes.spec.clone(),
                    spec: slot.spec.clone(),
                    container_id: instance.id,
                    pod_ip: entry.pod_ip.clone(),
                },
            }
        };

        let started = Instant::now();
        let outcome = self.run_with_retries(&target).await;
        let seconds = started.elapsed().as_secs_f64();
        let who = identity(&target.pod, &key.container, key.probe_type);
        let kind = key.probe_type.as_str();
        let event = |reason: &str, message: String| {
            self.events.record(
                &target.pod,
                Some(&key.container),
                EventType::Warning,
                reason,
                message,
            );
        };
        let (result, message) = match outcome {
            Ok(Outcome::Success(output)) => {
                tracing::trace!(podUID = %key.uid, container = %key.container, probe = kind, output, "probe succeeded");
                self.metrics.observe(&who, RESULT_SUCCESSFUL, seconds);
                (ProbeResult::Success, None)
            }
            Ok(Outcome::Warning(output)) => {
                event(
                    REASON_PROBE_WARNING,
                    format!("{kind} probe warning: {output}"),
                );
                self.metrics.observe(&who, RESULT_SUCCESSFUL, seconds);
                (ProbeResult::Success, None)
            }
            Ok(Outcome::Failure(output)) => {
                event(REASON_UNHEALTHY, format!("{kind} probe failed: {output}"));
                self.metrics.observe(&who, RESULT_FAILED, seconds);
                (ProbeResult::Failure, Some(output))
            }
            Err(e) => {
                event(
                    REASON_UNHEALTHY,
                    format!("{kind} probe errored and resulted in unknown state: {e}"),
                );
                self.metrics.observe(&who, RESULT_UNKNOWN, seconds);
                return true;
            }
        };

        let changed = {
            let mut pods = self.pods();
            let Some(slot) = pods
                .get_mut(&key.uid)
                .and_then(|e| e.containers.get_mut(&key.container))
                .and_then(|c| c.slots[key.probe_type.index()].as_mut())
            else {
                return false;
            };
            if slot.state.container_id() != Some(target.container_id.as_str()) {
                // A new container arrived meanwhile: this result is about the old one.
                return true;
            }
            slot.state.record(
                result,
                message,
                target.spec.success_threshold,
                target.spec.failure_threshold,
            )
        };
        if changed {
            tracing::info!(v = 1, podUID = %key.uid, container = %key.container, probe = kind, result = ?result,
                "probe result changed");
            self.wake(&key.uid);
        }
        true
    }

    /// Runs the probe, retrying one that errored (kubelet's `runProbeWithRetries`).
    async fn run_with_retries(&self, target: &Target) -> Result<Outcome, ProbeError> {
        let mut last = self.run(target).await;
        for _ in 1..MAX_PROBE_RETRIES {
            if last.is_ok() {
                break;
            }
            last = self.run(target).await;
        }
        last
    }

    async fn run(&self, target: &Target) -> Result<Outcome, ProbeError> {
        let timeout = target.spec.timeout;
        let pod_ip = target.pod_ip.as_deref().filter(|ip| !ip.is_empty());
        match &target.spec.handler {
            Handler::Exec { command } => {
                let env = target.container.env.as_deref().unwrap_or_default();
                let command = spec::expand_command(command, env);
                exec::probe(&self.cri, &target.container_id, &command, timeout).await
            }
            Handler::HttpGet(action) => {
                let request =
                    http::build_request(action, &target.container, pod_ip, &self.user_agent)?;
                let tls = self.tls.as_ref().map_err(|e| ProbeError::Tls(e.clone()))?;
                http::probe(&request, timeout, tls).await
            }
            Handler::TcpSocket(action) => {
                let port = spec::resolve_port(&action.port, &target.container)?;
                let host = action
                    .host
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .or(pod_ip)
                    .ok_or(ProbeError::NoPodIp)?;
                Ok(tcp::probe(host, port, timeout).await)
            }
            Handler::Grpc { port, service } => {
                let port = spec::number_port(*port)?;
                let host = pod_ip.ok_or(ProbeError::NoPodIp)?;
                Ok(grpc::probe(host, port, service, timeout, &self.user_agent).await)
            }
            Handler::Missing => Err(ProbeError::MissingHandler),
        }
    }
}

/// A probe worker: after an optional jitter, one turn per period (a manual trigger runs a turn at
/// once and restarts the period), until its pod or probe is gone or it decides to stop.
async fn run_worker(inner: Weak<Inner>, key: WorkerKey, period: Duration, trigger: Arc<Notify>) {
    let jitter = match inner.upgrade() {
        Some(i) => i.jitter && i.created.elapsed() < period,
        None => return,
    };
    if jitter {
        tokio::time::sleep(period.mul_f64(fastrand::f64())).await;
    }
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = trigger.notified() => ticker.reset(),
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !inner.probe_once(&key).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
