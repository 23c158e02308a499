//! Pod workers: one task per pod. Each turn observes the pod through CRI, asks the pure sync core what
//! to do, does it, and publishes the pod's status. Only a pod's own worker calls mutating CRI methods for
//! that pod.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use mk_cri::{CriClient, api};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::envvars;
use crate::events::{EventRecorder, EventType};
use crate::images::ImageManager;
use crate::kuberuntime::observe::{
    ContainerState, ObservedContainer, ObservedPod, SandboxState, observe_pod,
};
use crate::kuberuntime::{
    container_config, labels, lifecycle, pod_files, sandbox_config, security,
};
use crate::metrics::{ContainerErrorLabels, ContainerTypeLabels, Metrics, OperationLabels};
use crate::prober::ProbedContainer;
use crate::qos;
use crate::sources::{PodSet, pod_key};
use crate::status::{StatusContext, StatusManager, WaitingReason};
use crate::sync::{self, PodActions};
use crate::volumes::PodVolumes;

/// kubelet's `minimumGracePeriodInSeconds`.
const MIN_GRACE_SECONDS: i64 = 2;
/// Retry delay after a sync that failed on the runtime.
const ERROR_RETRY: Duration = Duration::from_secs(2);

/// What every pod worker shares.
pub struct WorkerContext {
    pub cri: CriClient,
    pub images: ImageManager,
    pub status: StatusManager,
    pub metrics: Metrics,
    pub events: EventRecorder,
    pub node_name: String,
    /// `containerd`, `cri-o`, `docker`: the prefix of container IDs in pod status.
    pub runtime_name: String,
    pub pod_logs_dir: PathBuf,
    pub cgroup_root: String,
    pub cgroup_mount: PathBuf,
    pub host_ip: Option<String>,
    pub resync: Duration,
    /// The API server, when the agent is joined to a cluster (for env and volume sources).
    pub client: Option<kube::Client>,
    /// The pods' volumes.
    pub volumes: crate::volumes::VolumeManager,
    /// Liveness, readiness and startup probes.
    pub prober: crate::prober::ProbeManager,
    /// kubelet's `--root-dir`: per-pod files live under `<root_dir>/pods/<uid>`.
    pub root_dir: PathBuf,
    /// clusterDNS, clusterDomain and the host's resolv.conf.
    pub dns: security::DnsSettings,
    /// The Node as last read (allocatable, for the downward API).
    pub node: watch::Receiver<Option<k8s_openapi::api::core::v1::Node>>,
}

#[derive(Clone)]
enum Desired {
    Run(Arc<Pod>),
    Terminate,
}

struct Worker {
    tx: watch::Sender<Desired>,
    wakes: Arc<Wakes>,
    task: JoinHandle<()>,
}

/// Why a worker should look again, besides a new spec or its timer.
#[derive(Default)]
struct Wakes {
    /// The runtime changed (PLEG): the worker syncs only if its pod's runtime state really differs
    /// from what it last saw (most events are echoes of its own actions).
    runtime: Notify,
    /// A probe result changed: always sync.
    probe: Notify,
}

/// Owns the workers, keyed by pod UID.
pub struct PodWorkers {
    ctx: Arc<WorkerContext>,
    workers: HashMap<String, Worker>,
}

impl PodWorkers {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        Self {
            ctx,
            workers: HashMap::new(),
        }
    }

    fn spawn(&mut self, uid: &str, desired: Desired) {
        let (tx, rx) = watch::channel(desired);
        let wakes = Arc::new(Wakes::default());
        let task = tokio::spawn(run_worker(self.ctx.clone(), rx, wakes.clone()));
        self.workers
            .insert(uid.to_string(), Worker { tx, wakes, task });
    }

    /// Brings the workers in line with the desired pods: new pods get a worker, changed pods are sent
    /// their new spec, pods no longer desired are terminated.
    pub fn update(&mut self, desired: &PodSet) {
        self.reap();
        for (uid, pod) in &desired.pods {
            match self.workers.get(uid) {
                Some(w) => {
                    w.tx.send_if_modified(|current| match current {
                        Desired::Run(old) if !meaningful_change(old, pod) => false,
                        _ => {
                            *current = Desired::Run(pod.clone());
                            true
                        }
                    });
                }
                None => self.spawn(uid, Desired::Run(pod.clone())),
            }
        }
        for (uid, w) in &self.workers {
            if !desired.pods.contains_key(uid) {
                w.tx.send_if_modified(|current| {
                    let changed = !matches!(current, Desired::Terminate);
                    *current = Desired::Terminate;
                    changed
                });
            }
        }
        self.ctx
            .metrics
            .desired_pods
            .set(i64::try_from(desired.pods.len()).unwrap_or(i64::MAX));
    }

    /// Wakes a pod's worker for a runtime (PLEG) event.
    pub fn wake(&self, uid: &str) {
        if let Some(w) = self.workers.get(uid) {
            w.wakes.runtime.notify_one();
        }
    }

    /// Wakes a pod's worker for a changed probe result.
    pub fn wake_for_probe(&self, uid: &str) {
        if let Some(w) = self.workers.get(uid) {
            w.wakes.probe.notify_one();
        }
    }

    /// Starts termination for pods the runtime holds that nobody wants (removed while the agent was
    /// down, or left by a crash). `identity` maps such a UID to its namespace and name.
    pub fn clean_up_orphans(
        &mut self,
        runtime_pods: &HashMap<String, (String, String)>,
        desired: &PodSet,
    ) {
        self.reap();
        for (uid, (namespace, name)) in runtime_pods {
            if desired.pods.contains_key(uid) || self.workers.contains_key(uid) {
                continue;
            }
            tracing::info!(pod = %format!("{namespace}/{name}"), uid, "cleaning up pod that is no longer desired");
            let orphan: Pod = Pod {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: Some(uid.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            self.spawn(uid, Desired::Run(Arc::new(orphan)));
            if let Some(w) = self.workers.get(uid) {
                w.tx.send_replace(Desired::Terminate);
            }
        }
    }

    /// Forgets workers whose task ended (terminated pods).
    pub fn reap(&mut self) {
        self.workers.retain(|_, w| !w.task.is_finished());
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

/// True when a new version of a pod asks for something different. Status-only updates (the echo of
/// the agent's own status writes) and resourceVersion bumps are not: they would only cause a useless
/// turn. The readiness-gate conditions other controllers set in the status do count.
fn meaningful_change(old: &Pod, new: &Pod) -> bool {
    if old.spec != new.spec {
        return true;
    }
    let (a, b) = (&old.metadata, &new.metadata);
    if a.labels != b.labels
        || a.annotations != b.annotations
        || a.deletion_timestamp != b.deletion_timestamp
        || a.deletion_grace_period_seconds != b.deletion_grace_period_seconds
    {
        return true;
    }
    let gates: Vec<&str> = new
        .spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .map(|g| g.condition_type.as_str())
        .collect();
    let gate_conditions = |p: &Pod| -> Vec<(String, String)> {
        p.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .filter(|c| gates.contains(&c.type_.as_str()))
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect()
    };
    gate_conditions(old) != gate_conditions(new)
}

/// A worker's memory between turns.
struct WorkerState {
    backoff: Backoff,
    reasons: HashMap<String, WaitingReason>,
    cache: HashMap<String, ObservedContainer>,
    first_seen: Instant,
    start_time: Timestamp,
    started_reported: bool,
    last_status: Option<PodStatus>,
    /// The last volume set-up error reported, so an unchanged one is not re-posted every turn.
    last_mount_error: Option<String>,
    /// The runtime state the last turn ended with.
    last_observed: Option<ObservedPod>,
}

fn now_ns() -> i64 {
    i64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

async fn run_worker(ctx: Arc<WorkerContext>, mut rx: watch::Receiver<Desired>, wakes: Arc<Wakes>) {
    let mut state = WorkerState {
        backoff: Backoff::default(),
        reasons: HashMap::new(),
        cache: HashMap::new(),
        first_seen: Instant::now(),
        start_time: Timestamp::now(),
        started_reported: false,
        last_status: None,
        last_mount_error: None,
        last_observed: None,
    };
    let mut current: Option<Arc<Pod>> = None;
    loop {
        let desired = rx.borrow_and_update().clone();
        match desired {
            Desired::Terminate => {
                let pod = current.unwrap_or_default();
                terminate(&ctx, &pod, &mut state).await;
                return;
            }
            Desired::Run(pod) => {
                let operation = if current.is_none() { "create" } else { "sync" };
                let started = Instant::now();
                let next = if pod.metadata.deletion_timestamp.is_some() {
                    sync_deleting(&ctx, &pod, &mut state).await
                } else {
                    sync_pod(&ctx, &pod, &mut state).await
                };
                ctx.metrics
                    .pod_worker_duration
                    .get_or_create(&OperationLabels {
                        operation_type: operation,
                    })
                    .observe(started.elapsed().as_secs_f64());
                let deadline = tokio::time::Instant::now() + next;
                loop {
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { return } else { break },
                        _ = wakes.probe.notified() => break,
                        _ = wakes.runtime.notified() => {
                            if runtime_changed(&ctx, &pod, &mut state).await {
                                break;
                            }
                        }
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                current = Some(pod);
            }
        }
    }
}

fn container_spec<'a>(pod: &'a Pod, name: &str) -> Option<(&'a Container, bool)> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .map(|c| (c, false))
        .chain(spec.init_containers.iter().flatten().map(|c| (c, true)))
        .find(|(c, _)| c.name == name)
}

fn sandbox_options(ctx: &WorkerContext) -> sandbox_config::SandboxOptions<'_> {
    sandbox_config::SandboxOptions {
        node_name: &ctx.node_name,
        pod_logs_dir: &ctx.pod_logs_dir,
        cgroup_root: &ctx.cgroup_root,
        dns: &ctx.dns,
    }
}

/// True when the pod's containers or sandboxes differ from what the last turn saw.
async fn runtime_changed(ctx: &WorkerContext, pod: &Pod, state: &mut WorkerState) -> bool {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    match observe_pod(&ctx.cri, uid, &ctx.node_name, &mut state.cache).await {
        Ok(now) => state.last_observed.as_ref() != Some(&now),
        Err(_) => true,
    }
}

/// One turn for a running pod. Returns when the worker should look again at the latest.
async fn sync_pod(ctx: &WorkerContext, pod: &Pod, state: &mut WorkerState) -> Duration {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let observed = match observe_pod(&ctx.cri, &uid, &ctx.node_name, &mut state.cache).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(pod = %pod_key(pod), error = %e, "cannot read pod state from the runtime");
            return ERROR_RETRY;
        }
    };
    let observed = run_probes(ctx, pod, observed, state).await;
    let Some(volumes) = set_up_volumes(ctx, pod, state).await else {
        publish_status(ctx, pod, &observed, state, false);
        return ERROR_RETRY;
    };
    let now = now_ns();
    state.backoff.gc(now);
    let actions = sync::compute(pod, &observed, &state.backoff, now);
    // What the decision was made on: a runtime event that shows anything else (our own actions
    // included) earns another turn, so nothing that happened meanwhile goes unseen.
    state.last_observed = Some(observed.clone());
    let mut next = ctx.resync;
    let acted = !actions.changes_nothing();
    if let Err(retry) = execute(ctx, pod, &observed, &actions, &volumes, state).await {
        next = next.min(retry);
    }
    for w in &actions.backoff {
        next = next.min(w.remaining + Duration::from_millis(50));
    }
    let observed = if acted {
        match observe_pod(&ctx.cri, &uid, &ctx.node_name, &mut state.cache).await {
            Ok(o) => o,
            Err(_) => observed,
        }
    } else {
        observed
    };
    let ip = pod_ip(ctx, pod, &observed);
    ctx.prober
        .update_containers(&uid, ip.as_deref(), &ProbedContainer::latest(&observed));
    publish_status(ctx, pod, &observed, state, false);
    next
}

/// Sets up (or refreshes) the pod's volumes before anything starts, as kubelet's WaitForAttachAndMount.
/// A volume that cannot be set up keeps the pod waiting, with a `FailedMount` event per change of
/// the error.
async fn set_up_volumes(
    ctx: &WorkerContext,
    pod: &Pod,
    state: &mut WorkerState,
) -> Option<PodVolumes> {
    if let Some(allocatable) = ctx
        .node
        .borrow()
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.allocatable.as_ref())
    {
        ctx.volumes.set_node_allocatable(allocatable);
    }
    let (volumes, errors): (Option<PodVolumes>, Vec<String>) = match ctx.volumes.setup(pod).await {
        Ok(v) => {
            let errors = v.refresh_errors.iter().map(|e| e.to_string()).collect();
            (Some(v), errors)
        }
        Err(e) => (
            None,
            e.failed_mounts().iter().map(|f| f.to_string()).collect(),
        ),
    };
    let summary = errors.join("\n");
    if !errors.is_empty() && state.last_mount_error.as_deref() != Some(summary.as_str()) {
        for message in &errors {
            ctx.events
                .record(pod, None, EventType::Warning, "FailedMount", message);
        }
    }
    state.last_mount_error = (!errors.is_empty()).then_some(summary);
    volumes
}

/// The address probes and hooks reach the pod at: the node's for host-network pods, else the sandbox's.
fn pod_ip(ctx: &WorkerContext, pod: &Pod, observed: &ObservedPod) -> Option<String> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return ctx.host_ip.clone();
    }
    observed
        .latest_sandbox()
        .filter(|s| s.state == SandboxState::Ready)
        .and_then(|s| s.ips.first().cloned())
}

/// Keeps the pod's probes in step with its containers and kills the containers whose liveness or
/// startup probe failed (the sync core then restarts them, with back-off). Returns the state to sync.
async fn run_probes(
    ctx: &WorkerContext,
    pod: &Pod,
    observed: ObservedPod,
    state: &mut WorkerState,
) -> ObservedPod {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    ctx.prober.add_pod(pod);
    let ip = pod_ip(ctx, pod, &observed);
    ctx.prober
        .update_containers(&uid, ip.as_deref(), &ProbedContainer::latest(&observed));
    let failures = ctx.prober.liveness_failures(&uid);
    if failures.is_empty() {
        return observed;
    }
    let will_restart = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Never");
    for failure in &failures {
        ctx.events.record(
            pod,
            Some(&failure.container_name),
            EventType::Normal,
            "Killing",
            failure.kill_message(will_restart),
        );
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(failure.grace_override)
            .unwrap_or_else(|| grace_seconds(pod));
        stop_container(
            ctx,
            pod,
            &failure.container_name,
            &failure.container_id,
            grace,
            ip.as_deref(),
        )
        .await;
    }
    match observe_pod(&ctx.cri, &uid, &ctx.node_name, &mut state.cache).await {
        Ok(o) => o,
        Err(_) => observed,
    }
}

/// One turn for a pod the API server is deleting: stop it within its deletion grace period, report
/// the final status, and tell the status manager it may be deleted.
async fn sync_deleting(ctx: &WorkerContext, pod: &Pod, state: &mut WorkerState) -> Duration {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let observed = match observe_pod(&ctx.cri, &uid, &ctx.node_name, &mut state.cache).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(pod = %pod_key(pod), error = %e, "cannot read pod state from the runtime");
            return ERROR_RETRY;
        }
    };
    ctx.prober.stop_liveness_and_startup(&uid);
    let live = |o: &ObservedPod| {
        o.containers
            .iter()
            .any(|c| c.state() != ContainerState::Exited)
            || o.sandboxes.iter().any(|s| s.state == SandboxState::Ready)
    };
    let observed = if live(&observed) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or_else(|| grace_seconds(pod))
            .max(MIN_GRACE_SECONDS);
        publish_status(ctx, pod, &observed, state, true);
        kill_pod(ctx, pod, &observed, grace).await;
        match observe_pod(&ctx.cri, &uid, &ctx.node_name, &mut state.cache).await {
            Ok(o) => o,
            Err(_) => return ERROR_RETRY,
        }
    } else {
        observed
    };
    publish_status(ctx, pod, &observed, state, true);
    if live(&observed) {
        return ERROR_RETRY;
    }
    ctx.status.mark_terminated(&uid);
    ctx.resync
}

/// Fills the messages of exited containers from their termination-message files (or log tails).
fn fill_termination_messages(ctx: &WorkerContext, pod: &Pod, observed: &mut ObservedPod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let log_dir = sandbox_config::log_dir_of(pod, &ctx.pod_logs_dir);
    for c in observed
        .containers
        .iter_mut()
        .filter(|c| c.state() == ContainerState::Exited && c.message.is_empty())
    {
        let policy = container_spec(pod, &c.name)
            .and_then(|(spec, _)| spec.termination_message_policy.clone())
            .unwrap_or_else(|| "File".into());
        let log = log_dir.join(&c.name).join(format!("{}.log", c.attempt));
        c.message = pod_files::termination_message(
            &ctx.root_dir,
            &uid,
            &c.name,
            c.attempt,
            &policy,
            c.exit_code,
            &log,
        );
    }
}

fn publish_status(
    ctx: &WorkerContext,
    pod: &Pod,
    observed: &ObservedPod,
    state: &mut WorkerState,
    terminating: bool,
) {
    let mut observed = observed.clone();
    fill_termination_messages(ctx, pod, &mut observed);
    let observed = &observed;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let probes: HashMap<String, (bool, bool)> = observed
        .containers
        .iter()
        .map(|c| {
            let s = ctx
                .prober
                .status(&uid, &c.name, c.state() == ContainerState::Running);
            (c.name.clone(), (s.started, s.ready))
        })
        .collect();
    let status_ctx = StatusContext {
        probes: &probes,
        runtime_name: &ctx.runtime_name,
        reasons: &state.reasons,
        host_ip: ctx.host_ip.as_deref(),
        start_time: state.start_time,
        terminating,
    };
    let status = crate::status::compute(
        pod,
        observed,
        &status_ctx,
        state.last_status.as_ref(),
        Timestamp::now(),
    );
    let all_running = pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().all(|c| {
            observed
                .latest(&c.name)
                .is_some_and(|o| o.state() == ContainerState::Running)
        })
    });
    if all_running && !state.started_reported {
        state.started_reported = true;
        ctx.metrics
            .pod_start_duration
            .observe(state.first_seen.elapsed().as_secs_f64());
        ctx.metrics.started_pods.inc();
        tracing::info!(pod = %pod_key(pod), seconds = state.first_seen.elapsed().as_secs_f64(), "pod started");
    }
    if state.last_status.as_ref() != Some(&status) {
        ctx.status.set(Arc::new(pod.clone()), status.clone());
        state.last_status = Some(status);
    }
}

fn grace_seconds(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(crate::sources::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
        .max(MIN_GRACE_SECONDS)
}

/// Does what the sync core decided. An error returns how soon to retry.
async fn execute(
    ctx: &WorkerContext,
    pod: &Pod,
    observed: &ObservedPod,
    actions: &PodActions,
    volumes: &PodVolumes,
    state: &mut WorkerState,
) -> Result<(), Duration> {
    for id in &actions.remove_containers {
        remove_container(ctx, id).await;
    }
    for id in &actions.remove_sandboxes {
        remove_sandbox(ctx, id).await;
    }
    let grace = grace_seconds(pod);
    for kill in &actions.kill {
        ctx.events.record(
            pod,
            Some(&kill.name),
            EventType::Normal,
            "Killing",
            format!("Stopping container {}", kill.name),
        );
        let ip = observed
            .latest_sandbox()
            .and_then(|s| s.ips.first())
            .map(String::as_str);
        stop_container(ctx, pod, &kill.name, &kill.id, grace, ip).await;
    }
    if actions.kill_pod {
        kill_pod(ctx, pod, observed, grace).await;
    }
    let pod_name = pod_key(pod);
    for w in &actions.backoff {
        state.reasons.insert(
            w.name.clone(),
            WaitingReason {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {} restarting failed container={} pod={}_{}({})",
                    humantime::format_duration(w.backoff),
                    w.name,
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.uid.as_deref().unwrap_or_default(),
                ),
            },
        );
        ctx.events.record(
            pod,
            Some(&w.name),
            EventType::Warning,
            "BackOff",
            "Back-off restarting failed container",
        );
    }
    if actions.start.is_empty() {
        return Ok(());
    }
    let sandbox_request = sandbox_config::build(
        pod,
        actions.create_sandbox.unwrap_or(0),
        &sandbox_options(ctx),
    );
    let Some(sandbox_cfg) = sandbox_request.config.clone() else {
        return Ok(());
    };
    let sandbox_id = match (&actions.sandbox_id, actions.create_sandbox) {
        (_, Some(attempt)) => match ctx.cri.run_pod_sandbox(sandbox_request).await {
            Ok(resp) => {
                tracing::info!(pod = %pod_name, sandbox = %resp.pod_sandbox_id, attempt, "created pod sandbox");
                resp.pod_sandbox_id
            }
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e}");
                ctx.events.record(
                    pod,
                    None,
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    &message,
                );
                for start in &actions.start {
                    state.reasons.insert(
                        start.name.clone(),
                        WaitingReason {
                            reason: "ContainerCreating".into(),
                            message: message.clone(),
                        },
                    );
                }
                return Err(ERROR_RETRY * 2);
            }
        },
        (Some(id), None) => id.clone(),
        (None, None) => return Ok(()),
    };
    let pod_ips = sandbox_ips(ctx, &sandbox_id).await;
    let mut result = Ok(());
    for start in &actions.start {
        let Some((container, init)) = container_spec(pod, &start.name) else {
            continue;
        };
        let sandbox = SandboxRef {
            id: &sandbox_id,
            config: &sandbox_cfg,
            ips: &pod_ips,
            volumes,
        };
        if let Err(retry) = start_container(ctx, pod, container, init, start, &sandbox, state).await
        {
            result = Err(retry);
        }
    }
    result
}

/// The sandbox a container is started in.
struct SandboxRef<'a> {
    id: &'a str,
    config: &'a api::PodSandboxConfig,
    ips: &'a [String],
    /// The pod's volumes, set up before anything was started.
    volumes: &'a PodVolumes,
}

/// Why a container could not be started: the waiting reason, the message, and when to retry.
struct StartError {
    reason: &'static str,
    message: String,
    retry: Duration,
}

impl StartError {
    fn new(reason: &'static str, message: impl Into<String>, retry: Duration) -> Self {
        Self {
            reason,
            message: message.into(),
            retry,
        }
    }
}

/// `.dockerconfigjson` documents of the pod's imagePullSecrets.
async fn pull_secret_configs(ctx: &WorkerContext, pod: &Pod) -> Vec<serde_json::Value> {
    let (Some(client), Some(spec)) = (ctx.client.as_ref(), pod.spec.as_ref()) else {
        return Vec::new();
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let mut configs = Vec::new();
    for reference in spec.image_pull_secrets.iter().flatten() {
        match api.get_opt(&reference.name).await {
            Ok(Some(secret)) => {
                let data = secret.data.unwrap_or_default();
                if let Some(json) = data
                    .get(".dockerconfigjson")
                    .and_then(|b| serde_json::from_slice(&b.0).ok())
                {
                    configs.push(json);
                }
            }
            // kubelet pulls without a missing secret and says so.
            Ok(None) => {
                tracing::warn!(pod = %pod_key(pod), secret = %reference.name, "image pull secret not found; pulling without it")
            }
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), secret = %reference.name, error = %e, "cannot read image pull secret")
            }
        }
    }
    configs
}

fn node_memory_capacity(ctx: &WorkerContext) -> i64 {
    let from_node = ctx
        .node
        .borrow()
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("memory"))
        .and_then(|q| crate::quantity::Quantity::from_api(q).ok())
        .map(|q| q.value());
    from_node.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<i64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    })
}

/// Pulls the image and builds the container's CRI config: environment, user checks and mounts.
async fn prepare_container(
    ctx: &WorkerContext,
    pod: &Pod,
    container: &Container,
    start: &sync::ContainerStart,
    sandbox: &SandboxRef<'_>,
) -> Result<api::CreateContainerRequest, StartError> {
    let image = container.image.as_deref().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let configs = pull_secret_configs(ctx, pod).await;
    let credentials = crate::images::pull_credentials(image, &configs);
    let pulling = || {
        ctx.events.record(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
    };
    let ensured = match ctx
        .images
        .ensure(container, uid, &credentials, pulling)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let retry = match &e {
                // Report ErrImagePull for a moment, then ImagePullBackOff until the next real pull.
                crate::images::ImageError::Pull { .. } => Duration::from_secs(2),
                crate::images::ImageError::BackOff { remaining, .. } => {
                    ctx.events.record(
                        pod,
                        Some(&container.name),
                        EventType::Normal,
                        "BackOff",
                        e.to_string(),
                    );
                    *remaining + Duration::from_millis(50)
                }
                _ => crate::backoff::INITIAL,
            };
            if matches!(e, crate::images::ImageError::Pull { .. }) {
                ctx.events.record(
                    pod,
                    Some(&container.name),
                    EventType::Warning,
                    "Failed",
                    e.to_string(),
                );
            }
            return Err(StartError::new(e.reason(), e.to_string(), retry));
        }
    };
    let pulled = match ensured.pulled_seconds {
        Some(seconds) => format!("Successfully pulled image \"{image}\" in {seconds:.3}s"),
        None => format!("Container image \"{image}\" already present on machine"),
    };
    ctx.events.record(
        pod,
        Some(&container.name),
        EventType::Normal,
        "Pulled",
        pulled,
    );

    let config_error =
        |message: String| StartError::new("CreateContainerConfigError", message, ERROR_RETRY);
    security::verify_run_as_non_root(pod, container, ensured.uid, &ensured.username)
        .map_err(config_error)?;
    let objects = envvars::fetch(ctx.client.as_ref(), pod, container)
        .await
        .map_err(|e| config_error(e.to_string()))?;
    let facts = envvars::PodFacts {
        pod_ips: sandbox.ips.to_vec(),
        host_ips: ctx.host_ip.iter().cloned().collect(),
        allocatable: ctx
            .node
            .borrow()
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default(),
    };
    let env = envvars::resolve(pod, container, &objects, &facts)
        .map_err(|e| config_error(e.to_string()))?;

    let mut mounts = ctx
        .volumes
        .mounts_for_with_env(container, sandbox.volumes, &env)
        .map_err(|e| config_error(e.to_string()))?;
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let file_error = |e: std::io::Error| config_error(format!("preparing pod files: {e}"));
    if !host_network {
        let hosts = security::hosts_file(pod, sandbox.ips, &ctx.dns.cluster_domain);
        mounts.push(pod_files::write_hosts(&ctx.root_dir, uid, &hosts).map_err(file_error)?);
    }
    if let Some(path) = container
        .termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        mounts.push(
            pod_files::termination_mount(&ctx.root_dir, uid, &container.name, start.attempt, path)
                .map_err(file_error)?,
        );
    }
    Ok(container_config::build(container_config::ContainerInputs {
        pod,
        container,
        start,
        sandbox_id: sandbox.id,
        sandbox_config: sandbox.config.clone(),
        image_ref: &ensured.image_ref,
        node_name: &ctx.node_name,
        env,
        mounts,
        memory_capacity: node_memory_capacity(ctx),
    }))
}

/// Pulls, creates and starts one container; on failure records the waiting reason and an event.
async fn start_container(
    ctx: &WorkerContext,
    pod: &Pod,
    container: &Container,
    init: bool,
    start: &sync::ContainerStart,
    sandbox: &SandboxRef<'_>,
    state: &mut WorkerState,
) -> Result<(), Duration> {
    let container_type = if init { "init_container" } else { "container" };
    let result = async {
        let request = prepare_container(ctx, pod, container, start, sandbox).await?;
        let id = ctx
            .cri
            .create_container(request)
            .await
            .map_err(|e| StartError::new("CreateContainerError", e.message(), ERROR_RETRY))?
            .container_id;
        ctx.events.record(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Created",
            format!("Created container {}", container.name),
        );
        if let Some(finished_at) = start.replaces_finished_at {
            state
                .backoff
                .next(&sync::actions::backoff_key(pod, container), finished_at);
        }
        ctx.cri
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| StartError::new("RunContainerError", e.message(), ERROR_RETRY))?;
        if let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let grace = grace_seconds(pod);
            let limit = Duration::from_secs(u64::try_from(grace).unwrap_or(30));
            let ip = sandbox.ips.first().map(String::as_str);
            if let Err(message) = lifecycle::run(&ctx.cri, hook, container, &id, ip, limit).await {
                let message = format!("PostStartHook failed: {message}");
                ctx.events.record(
                    pod,
                    Some(&container.name),
                    EventType::Warning,
                    "FailedPostStartHook",
                    &message,
                );
                stop_container(ctx, pod, &container.name, &id, grace, ip).await;
                return Err(StartError::new("PostStartHookError", message, ERROR_RETRY));
            }
        }
        Ok::<String, StartError>(id)
    }
    .await;
    match result {
        Ok(_id) => {
            ctx.metrics
                .started_containers
                .get_or_create(&ContainerTypeLabels { container_type })
                .inc();
            ctx.events.record(
                pod,
                Some(&container.name),
                EventType::Normal,
                "Started",
                format!("Started container {}", container.name),
            );
            state.reasons.remove(&container.name);
            Ok(())
        }
        Err(e) => {
            // kubelet: image failures say "Error: <reason>", the others "Error: <message>".
            let text = match e.reason {
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "ImageInspectError" => {
                    e.reason.to_string()
                }
                _ => e.message.clone(),
            };
            ctx.events.record(
                pod,
                Some(&container.name),
                EventType::Warning,
                "Failed",
                format!("Error: {text}"),
            );
            ctx.metrics
                .started_containers_errors
                .get_or_create(&ContainerErrorLabels {
                    container_type,
                    code: e.reason.to_string(),
                })
                .inc();
            state.reasons.insert(
                container.name.clone(),
                WaitingReason {
                    reason: e.reason.into(),
                    message: e.message,
                },
            );
            Err(e.retry)
        }
    }
}

/// The sandbox's IPs (the pod IPs the downward API and env refer to).
async fn sandbox_ips(ctx: &WorkerContext, sandbox_id: &str) -> Vec<String> {
    let resp = ctx
        .cri
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            verbose: false,
        })
        .await;
    let Ok(Some(network)) = resp.map(|r| r.status.and_then(|s| s.network)) else {
        return Vec::new();
    };
    std::iter::once(network.ip)
        .chain(network.additional_ips.into_iter().map(|ip| ip.ip))
        .filter(|ip| !ip.is_empty())
        .collect()
}

/// Stops a container as kubelet's `killContainer`: the preStop hook first, inside the grace period,
/// then StopContainer (SIGTERM, SIGKILL when the rest of the grace period ends).
async fn stop_container(
    ctx: &WorkerContext,
    pod: &Pod,
    name: &str,
    id: &str,
    grace: i64,
    pod_ip: Option<&str>,
) {
    let mut grace = grace;
    let spec = container_spec(pod, name).map(|(c, _)| c);
    if let Some((container, hook)) =
        spec.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)))
    {
        let started = Instant::now();
        let limit = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        if let Err(message) = lifecycle::run(&ctx.cri, hook, container, id, pod_ip, limit).await {
            ctx.events.record(
                pod,
                Some(name),
                EventType::Warning,
                "FailedPreStopHook",
                format!("PreStopHook failed: {message}"),
            );
        }
        let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(grace);
        grace = (grace - spent).max(MIN_GRACE_SECONDS);
    }
    let request = api::StopContainerRequest {
        container_id: id.to_string(),
        timeout: grace,
    };
    warn_unless_gone(ctx.cri.stop_container(request).await, "stop container", id);
}

/// Logs a failed clean-up call; an object already gone is not a failure.
fn warn_unless_gone<T>(result: Result<T, mk_cri::CriError>, what: &str, id: &str) {
    if let Err(e) = result
        && !e.is_not_found()
    {
        tracing::warn!(id, error = %e, "failed to {what}");
    }
}

async fn remove_container(ctx: &WorkerContext, id: &str) {
    let request = api::RemoveContainerRequest {
        container_id: id.to_string(),
    };
    warn_unless_gone(
        ctx.cri.remove_container(request).await,
        "remove container",
        id,
    );
}

async fn remove_sandbox(ctx: &WorkerContext, id: &str) {
    let request = api::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    warn_unless_gone(
        ctx.cri.remove_pod_sandbox(request).await,
        "remove pod sandbox",
        id,
    );
}

/// Stops every live container (in parallel, each with the grace period) and every ready sandbox.
async fn kill_pod(ctx: &WorkerContext, pod: &Pod, observed: &ObservedPod, grace: i64) {
    let live: Vec<&ObservedContainer> = observed
        .containers
        .iter()
        .filter(|c| c.state() != ContainerState::Exited)
        .collect();
    for c in &live {
        ctx.events.record(
            pod,
            Some(&c.name),
            EventType::Normal,
            "Killing",
            format!("Stopping container {}", c.name),
        );
    }
    let ip = observed
        .latest_sandbox()
        .and_then(|s| s.ips.first())
        .map(String::as_str);
    futures::future::join_all(
        live.iter()
            .map(|c| stop_container(ctx, pod, &c.name, &c.id, grace, ip)),
    )
    .await;
    for s in observed
        .sandboxes
        .iter()
        .filter(|s| s.state == SandboxState::Ready)
    {
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: s.id.clone(),
        };
        warn_unless_gone(
            ctx.cri.stop_pod_sandbox(request).await,
            "stop pod sandbox",
            &s.id,
        );
    }
}

/// Stops and removes everything the runtime holds for the pod, then its cgroups and log directory.
async fn terminate(ctx: &WorkerContext, pod: &Pod, state: &mut WorkerState) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod_key(pod);
    let started = Instant::now();
    let observed = loop {
        match observe_pod(&ctx.cri, &uid, &ctx.node_name, &mut state.cache).await {
            Ok(o) => break o,
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "cannot read pod state to terminate it; retrying");
                tokio::time::sleep(ERROR_RETRY).await;
            }
        }
    };
    // An orphan has no spec: use the grace period recorded on its containers.
    let grace = if pod.spec.is_some() {
        grace_seconds(pod)
    } else {
        observed
            .containers
            .iter()
            .filter_map(|c| c.grace_period)
            .max()
            .unwrap_or(crate::sources::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
            .max(MIN_GRACE_SECONDS)
    };
    publish_status(ctx, pod, &observed, state, true);
    kill_pod(ctx, pod, &observed, grace).await;
    for c in &observed.containers {
        remove_container(ctx, &c.id).await;
    }
    for s in &observed.sandboxes {
        remove_sandbox(ctx, &s.id).await;
    }
    let parents: Vec<String> = if pod.spec.is_some() {
        vec![qos::pod_cgroup_parent(pod, &ctx.cgroup_root)]
    } else {
        let root = ctx.cgroup_root.trim_end_matches('/');
        ["", "/burstable", "/besteffort"]
            .iter()
            .map(|q| format!("{root}/kubepods{q}/pod{uid}"))
            .collect()
    };
    for parent in parents {
        qos::remove_pod_cgroups(&ctx.cgroup_mount, &parent);
    }
    let log_dir = sandbox_config::log_dir_of(pod, &ctx.pod_logs_dir);
    if let Err(e) = std::fs::remove_dir_all(&log_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %log_dir.display(), error = %e, "cannot remove pod log directory");
    }
    // Volumes go last: nothing may still use them (this also removes the pod's own files).
    for attempt in 1..=5 {
        match ctx.volumes.teardown(&uid).await {
            Ok(()) => break,
            Err(e) => {
                ctx.events.record(
                    pod,
                    None,
                    EventType::Warning,
                    "FailedUnmount",
                    e.to_string(),
                );
                if attempt == 5 {
                    tracing::error!(pod = %name, error = %e, "giving up tearing down the pod's volumes");
                } else {
                    tokio::time::sleep(ERROR_RETRY).await;
                }
            }
        }
    }
    ctx.status.remove(&uid);
    ctx.prober.remove_pod(&uid);
    tracing::info!(pod = %name, seconds = started.elapsed().as_secs_f64(), "pod terminated and removed");
}

/// The pods the runtime holds, by UID, with their namespace and name (from the sandbox labels).
pub fn runtime_pods(
    sandboxes: &[api::PodSandbox],
    node_name: &str,
) -> HashMap<String, (String, String)> {
    sandboxes
        .iter()
        .filter(|s| labels::owned_by(&s.labels, node_name))
        .filter_map(|s| {
            let uid = s.labels.get(labels::POD_UID)?.clone();
            let ns = s
                .labels
                .get(labels::POD_NAMESPACE)
                .cloned()
                .unwrap_or_default();
            let name = s.labels.get(labels::POD_NAME).cloned().unwrap_or_default();
            Some((uid, (ns, name)))
        })
        .collect()
}
