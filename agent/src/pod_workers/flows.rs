//! What a pod worker does in each state (kubelet's `SyncPod`, `SyncTerminatingPod`,
//! `SyncTerminatedPod` and the clean-up of a removed pod). Each flow is handed the pod and the
//! observed state the pod cache holds for it; the runtime work goes through the runtime manager.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::WorkerContext;
use super::runtime_manager::{
    self, ERR_IMAGE_PULL_VISIBLE, ERROR_RETRY, Executed, MIN_GRACE_SECONDS, container_spec,
    grace_seconds,
};
use crate::backoff::Backoff;
use crate::events::EventType;
use crate::kuberuntime::observe::{ContainerState, ObservedPod, SandboxState};
use crate::kuberuntime::{pod_files, sandbox_config};
use crate::prober::ProbedContainer;
use crate::sources::pod_key;
use crate::status::{StatusContext, WaitingReason};
use crate::sync;
use crate::volumes::PodVolumes;

/// A worker's memory between turns.
pub struct WorkerState {
    pub backoff: Backoff,
    pub reasons: HashMap<String, WaitingReason>,
    pub first_seen: Instant,
    pub start_time: Timestamp,
    pub started_reported: bool,
    pub last_status: Option<PodStatus>,
    /// The last volume set-up error reported, so an unchanged one is not re-posted every turn.
    pub last_mount_error: Option<String>,
    /// When each container's image pull last failed (`ErrImagePull` stays visible for a while).
    pub pull_failed_at: HashMap<String, tokio::time::Instant>,
    /// When the worker started the pod, on the monotonic clock (for activeDeadlineSeconds).
    pub started: tokio::time::Instant,
    /// Why the agent failed the pod (activeDeadlineSeconds), once it did.
    pub failure: Option<sync::PodFailure>,
    /// Why the last in-place resize failed, while one is still to be done.
    pub resize_error: Option<String>,
    /// Whether the last status showed a resize being carried out.
    pub resizing: bool,
    /// The node's request to stop and fail the pod, once made.
    pub kill: Option<super::KillPod>,
}

impl Default for WorkerState {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            reasons: HashMap::new(),
            first_seen: Instant::now(),
            start_time: Timestamp::now(),
            started_reported: false,
            last_status: None,
            last_mount_error: None,
            pull_failed_at: HashMap::new(),
            started: tokio::time::Instant::now(),
            failure: None,
            resize_error: None,
            resizing: false,
            kill: None,
        }
    }
}

/// How a sync turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    /// When to look again at the latest, at the latest.
    pub next: Duration,
    /// The pod reached a terminal phase (Succeeded or Failed): it is to be terminated, not synced.
    pub terminal: bool,
}

fn now_ns() -> i64 {
    i64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// True while anything of the pod runs: a running container (or one in an unknown state) or a ready
/// sandbox. A container that was created but never started runs nothing (StopContainer leaves it
/// so); removal takes it away.
pub fn is_live(observed: &ObservedPod) -> bool {
    observed
        .containers
        .iter()
        .any(|c| matches!(c.state(), ContainerState::Running | ContainerState::Unknown))
        || observed
            .sandboxes
            .iter()
            .any(|s| s.state == SandboxState::Ready)
}

/// One turn for a pod that should run (kubelet's `SyncPod`): probes, volumes, the sync core's
/// actions carried out, and the status published.
pub async fn sync_pod(
    ctx: &WorkerContext,
    pod: &Arc<Pod>,
    observed: &ObservedPod,
    state: &mut WorkerState,
) -> SyncOutcome {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let rt = &ctx.runtime;
    // The resources applied to each container: as the runtime reports them, else as last applied.
    let mut observed = observed.clone();
    rt.applied.fill(&mut observed);
    let observed = &observed;
    let (probe_failures, grace_overrides) = probe_failures(ctx, pod, observed);
    let Some(volumes) = set_up_volumes(ctx, pod, state).await else {
        publish_status(ctx, pod, observed, state, false);
        return SyncOutcome {
            next: ERROR_RETRY,
            terminal: false,
        };
    };
    let now = now_ns();
    state.backoff.gc(now);
    // Measured on the monotonic clock since the worker started the pod, so a wall-clock step
    // neither fires nor postpones activeDeadlineSeconds.
    let active = i64::try_from(state.started.elapsed().as_nanos()).unwrap_or(i64::MAX);
    let pod_start_time = Some(now.saturating_sub(active));
    let actions = sync::compute_with(&sync::SyncInputs {
        pod,
        observed,
        backoff: &state.backoff,
        now,
        pod_start_time,
        probe_failures: &probe_failures,
    });
    let mut next = ctx.resync;
    if let Some(failure) = &actions.fail_pod
        && state.failure.is_none()
    {
        tracing::info!(pod = %pod_key(pod), reason = %failure.reason, "{}", failure.message);
        rt.events.record(
            pod,
            None,
            EventType::Warning,
            &failure.reason,
            &failure.message,
        );
        state.failure = Some(failure.clone());
    }
    if let Some(left) = sync::deadline_remaining(pod, pod_start_time, now) {
        next = next.min(left.max(Duration::from_millis(100)));
    }
    let mut executed = Executed::default();
    if let Err(retry) = runtime_manager::execute(
        rt,
        pod,
        observed,
        &actions,
        &volumes,
        &grace_overrides,
        &mut executed,
    )
    .await
    {
        next = next.min(retry);
    }
    for (key, finished_at) in &executed.restarts {
        state.backoff.next(key, *finished_at);
    }
    for id in &executed.resized {
        // Its state did not change: the PLEG reads it again for the resources the runtime reports.
        ctx.cache.request_refresh(&uid, id);
    }
    record_resize_error(ctx, pod, state, &actions, &executed);
    for name in &executed.started {
        state.reasons.remove(name);
        state.pull_failed_at.remove(name);
    }
    for (name, reason, message) in executed.waiting {
        match reason {
            "ErrImagePull" => {
                state
                    .pull_failed_at
                    .insert(name.clone(), tokio::time::Instant::now());
            }
            "ImagePullBackOff" => {
                let shown = state.pull_failed_at.get(&name).map(|t| t.elapsed());
                if let Some(left) = shown.and_then(|s| ERR_IMAGE_PULL_VISIBLE.checked_sub(s))
                    && !left.is_zero()
                {
                    // The pull error itself stays visible a while (see ERR_IMAGE_PULL_VISIBLE).
                    next = next.min(left);
                    continue;
                }
            }
            _ => {}
        }
        state.reasons.insert(
            name,
            WaitingReason {
                reason: reason.into(),
                message,
            },
        );
    }
    for w in &actions.backoff {
        next = next.min(w.remaining + Duration::from_millis(50));
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
                    uid,
                ),
            },
        );
    }
    // The prober was brought up to date with this observed state by `probe_failures`.
    publish_status(ctx, pod, observed, state, false);
    // Terminal only once nothing more will start: the status of the observed state says so and the
    // sync core has nothing left to run.
    let terminal = actions.start.is_empty()
        && actions.backoff.is_empty()
        && actions.create_sandbox.is_none()
        && state
            .last_status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
    SyncOutcome { next, terminal }
}

/// Keeps the error of a failed in-place resize for the `PodResizeInProgress` condition (with a
/// `ResizeError` event when it changes) until no resize is left to do.
fn record_resize_error(
    ctx: &WorkerContext,
    pod: &Pod,
    state: &mut WorkerState,
    actions: &sync::PodActions,
    executed: &Executed,
) {
    if actions.update_resources.is_empty() {
        state.resize_error = None;
        return;
    }
    let error = executed.resize_errors.first().cloned();
    if let Some(message) = error
        .as_ref()
        .filter(|e| state.resize_error.as_ref() != Some(*e))
    {
        ctx.runtime.events.record(
            pod,
            None,
            EventType::Warning,
            "ResizeError",
            format!("Pod resize error: {message}"),
        );
    }
    state.resize_error = error;
}

/// Sets up (or refreshes) the pod's volumes before anything starts, as kubelet's WaitForAttachAndMount.
/// A volume that cannot be set up keeps the pod waiting, with a `FailedMount` event per change of
/// the error.
async fn set_up_volumes(
    ctx: &WorkerContext,
    pod: &Pod,
    state: &mut WorkerState,
) -> Option<PodVolumes> {
    let rt = &ctx.runtime;
    if let Some(allocatable) = rt
        .node
        .borrow()
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.allocatable.as_ref())
    {
        rt.volumes.set_node_allocatable(allocatable);
    }
    let (volumes, errors): (Option<PodVolumes>, Vec<String>) = match rt.volumes.setup(pod).await {
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
            rt.events
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
        return ctx.runtime.host_ip.clone();
    }
    observed
        .latest_sandbox()
        .filter(|s| s.state == SandboxState::Ready)
        .and_then(|s| s.ips.first().cloned())
}

/// Keeps the pod's probes in step with its containers and returns the containers whose liveness or
/// startup probe failed (the sync core kills them; the next turn restarts them with back-off), with
/// the probes' own grace periods by container ID.
fn probe_failures(
    ctx: &WorkerContext,
    pod: &Pod,
    observed: &ObservedPod,
) -> (Vec<sync::ProbeFailure>, HashMap<String, i64>) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    ctx.prober.add_pod(pod);
    let ip = pod_ip(ctx, pod, observed);
    ctx.prober
        .update_containers(&uid, ip.as_deref(), &ProbedContainer::latest(observed));
    let will_restart = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Never");
    let mut overrides = HashMap::new();
    let failures = ctx
        .prober
        .liveness_failures(&uid)
        .into_iter()
        .map(|f| {
            if let Some(grace) = f.grace_override {
                overrides.insert(f.container_id.clone(), grace);
            }
            sync::ProbeFailure {
                message: f.kill_message(will_restart),
                container_id: f.container_id,
                container_name: f.container_name,
            }
        })
        .collect();
    (failures, overrides)
}

/// The grace period a terminating pod gets: the API's deletion grace period, else the spec's, else
/// (an orphan without a spec) the one recorded on its containers.
pub fn termination_grace(pod: &Pod, observed: &ObservedPod) -> i64 {
    if let Some(seconds) = pod.metadata.deletion_grace_period_seconds {
        return seconds.max(MIN_GRACE_SECONDS);
    }
    if pod.spec.is_some() {
        return grace_seconds(pod);
    }
    observed
        .containers
        .iter()
        .filter_map(|c| c.grace_period)
        .max()
        .unwrap_or(crate::sources::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
        .max(MIN_GRACE_SECONDS)
}

/// One turn for a terminating pod (kubelet's `SyncTerminatingPod`): stops every container (preStop
/// hooks, the grace period) and every sandbox. Returns true when nothing of the pod was running,
/// i.e. termination is complete on this observed state.
pub async fn sync_terminating(
    ctx: &WorkerContext,
    pod: &Arc<Pod>,
    observed: &ObservedPod,
    state: &mut WorkerState,
) -> bool {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    ctx.prober.stop_liveness_and_startup(&uid);
    publish_status(ctx, pod, observed, state, true);
    if !is_live(observed) {
        return true;
    }
    let grace = match state.kill.as_ref().and_then(|k| k.grace_seconds) {
        Some(seconds) => seconds.max(MIN_GRACE_SECONDS),
        None => termination_grace(pod, observed),
    };
    runtime_manager::kill_pod(&ctx.runtime, pod, observed, grace).await;
    false
}

/// A terminated pod (kubelet's `SyncTerminatedPod`): its volumes are torn down and the status
/// manager may let the API server delete it. Returns false when the volumes could not be torn down
/// (the caller retries).
pub async fn sync_terminated(ctx: &WorkerContext, pod: &Pod) -> bool {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    ctx.prober.remove_pod(&uid);
    let torn_down = match ctx.runtime.volumes.teardown(&uid).await {
        Ok(()) => true,
        Err(e) => {
            ctx.runtime.events.record(
                pod,
                None,
                EventType::Warning,
                "FailedUnmount",
                e.to_string(),
            );
            false
        }
    };
    ctx.status.mark_terminated(&uid);
    torn_down
}

/// Removes everything the runtime and the node hold for a terminated pod that is no longer wanted:
/// its containers, sandboxes, pod cgroups, log directory, files and status entry.
pub async fn remove_pod(ctx: &WorkerContext, pod: &Pod, observed: &ObservedPod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let rt = &ctx.runtime;
    for c in &observed.containers {
        runtime_manager::remove_container(rt, &c.id).await;
    }
    for s in &observed.sandboxes {
        runtime_manager::remove_sandbox(rt, &s.id).await;
    }
    // A cgroup that cannot go yet keeps the pod's directory: container garbage collection finds
    // the directory of a removed pod and removes the cgroup, then the directory.
    let cgroup_removed = match rt.cgroups.destroy_pod(&uid) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(pod = %pod_key(pod), error = %e, "cannot remove the pod's cgroup; housekeeping tries again");
            false
        }
    };
    let log_dir = sandbox_config::log_dir_of(pod, &rt.pod_logs_dir);
    if let Err(e) = std::fs::remove_dir_all(&log_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %log_dir.display(), error = %e, "cannot remove pod log directory");
    }
    // The pod's own files (hosts, termination messages) and anything a failed teardown left.
    if cgroup_removed && let Err(e) = rt.volumes.teardown(&uid).await {
        tracing::warn!(pod = %pod_key(pod), error = %e, "cannot remove the pod's files");
    }
    ctx.status.remove(&uid);
    ctx.prober.remove_pod(&uid);
}

/// Fills the messages of exited containers from their termination-message files (or log tails).
fn fill_termination_messages(ctx: &WorkerContext, pod: &Pod, observed: &mut ObservedPod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let log_dir = sandbox_config::log_dir_of(pod, &ctx.runtime.pod_logs_dir);
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
            &ctx.runtime.root_dir,
            &uid,
            &c.name,
            c.attempt,
            &policy,
            c.exit_code,
            &log,
        );
    }
}

/// Computes the pod's status from the observed state and hands it to the status manager when it
/// changed.
pub fn publish_status(
    ctx: &WorkerContext,
    pod: &Arc<Pod>,
    observed: &ObservedPod,
    state: &mut WorkerState,
    terminating: bool,
) {
    if pod.spec.is_none() {
        // An orphan: nobody asks for its status.
        return;
    }
    let mut observed = observed.clone();
    fill_termination_messages(ctx, pod, &mut observed);
    ctx.runtime.applied.fill(&mut observed);
    let observed = &observed;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // By name, from each container's newest instance (the list is newest first; an instance
    // that exited before a restart must not decide the running one's readiness).
    let mut probes: HashMap<String, (bool, bool)> = HashMap::new();
    for c in &observed.containers {
        probes.entry(c.name.clone()).or_insert_with(|| {
            let s = ctx
                .prober
                .status(&uid, &c.name, c.state() == ContainerState::Running);
            (s.started, s.ready)
        });
    }
    let status_ctx = StatusContext {
        probes: &probes,
        runtime_name: &ctx.runtime_name,
        reasons: &state.reasons,
        host_ip: ctx.runtime.host_ip.as_deref(),
        start_time: state.start_time,
        terminating,
        resize_error: state.resize_error.as_deref(),
    };
    let mut status = crate::status::compute(
        pod,
        observed,
        &status_ctx,
        state.last_status.as_ref(),
        Timestamp::now(),
    );
    // The node's kill wins over the pod's own failure: it is what stopped the pod.
    if let Some(failure) = state
        .kill
        .as_ref()
        .map(|k| &k.failure)
        .or(state.failure.as_ref())
    {
        status.phase = Some("Failed".into());
        status.reason = Some(failure.reason.clone());
        status.message = Some(failure.message.clone());
    }
    if let Some(kill) = state.kill.as_ref().filter(|k| k.disruption) {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now());
        let condition = crate::status::disruption_target(
            &kill.failure.message,
            &now,
            state.last_status.as_ref(),
        );
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != crate::status::DISRUPTION_TARGET);
        conditions.push(condition);
    }
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
        tracing::info!(
            v = 2,
            seconds = state.first_seen.elapsed().as_secs_f64(),
            "pod started"
        );
    }
    note_resize_progress(ctx, pod, state, &status, terminating);
    if state.last_status.as_ref() != Some(&status) {
        ctx.status.set(Arc::clone(pod), status.clone());
        state.last_status = Some(status);
    }
}

/// Logs when the status starts and stops showing a resize being carried out, with kubelet's
/// `ResizeCompleted` event at the end.
fn note_resize_progress(
    ctx: &WorkerContext,
    pod: &Pod,
    state: &mut WorkerState,
    status: &PodStatus,
    terminating: bool,
) {
    let resizing = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == crate::status::RESIZE_IN_PROGRESS);
    if resizing == state.resizing {
        return;
    }
    state.resizing = resizing;
    let generation = pod.metadata.generation.unwrap_or_default();
    if resizing {
        tracing::info!(pod = %pod_key(pod), generation, "pod resize in progress");
        return;
    }
    if terminating {
        return;
    }
    let summary = crate::allocation::summary(pod);
    tracing::info!(pod = %pod_key(pod), generation, resources = %summary, "pod resize completed");
    ctx.runtime.events.record(
        pod,
        None,
        EventType::Normal,
        "ResizeCompleted",
        format!("Pod resize completed: {summary}"),
    );
}
