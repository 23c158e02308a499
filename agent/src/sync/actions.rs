//! `desired pod × observed runtime state → actions`, after kubelet's `computePodActions`.
//!
//! Pure: no I/O, time passed in. The pod workers execute the result through CRI.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::resize::{self, Resize, ResourceUpdate};
use crate::backoff::Backoff;
use crate::kuberuntime::labels::{container_hash, hash_matches};
use crate::kuberuntime::observe::{ContainerState, ObservedContainer, ObservedPod, SandboxState};

/// A container to create and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStart {
    pub name: String,
    pub init: bool,
    /// The restart count (CRI attempt) the new instance gets.
    pub attempt: u32,
    /// When the instance it replaces finished (ns); a restart after a failure advances the back-off.
    pub replaces_finished_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillContainer {
    pub id: String,
    pub name: String,
    pub reason: String,
}

/// A container that should run but must wait for its back-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub name: String,
    pub remaining: Duration,
    pub backoff: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodActions {
    /// Stop every container and the sandbox (before creating a new sandbox, or because the pod is done).
    pub kill_pod: bool,
    /// Create a new sandbox with this attempt number.
    pub create_sandbox: Option<u32>,
    /// The ready sandbox to start containers in, when it is kept.
    pub sandbox_id: Option<String>,
    pub kill: Vec<KillContainer>,
    pub start: Vec<ContainerStart>,
    /// Running containers resized in place (their resize policy needs no restart), the ones that
    /// lower something first. A restart a resize policy asks for is a kill and a start instead.
    pub update_resources: Vec<ResourceUpdate>,
    pub backoff: Vec<Waiting>,
    /// Dead containers beyond the newest two per name (kubelet keeps one dead instance for lastState).
    pub remove_containers: Vec<String>,
    /// Old sandboxes no kept container belongs to.
    pub remove_sandboxes: Vec<String>,
    /// The pod has failed for good (its active deadline passed): the worker records this as the
    /// pod's terminal status. Comes with `kill_pod` and nothing to start.
    pub fail_pod: Option<PodFailure>,
}

/// Why a pod failed as a whole, for `status.reason` / `status.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub reason: String,
    pub message: String,
}

impl PodFailure {
    /// kubelet's active deadline eviction (`activeDeadlineHandler`).
    pub fn deadline_exceeded() -> Self {
        Self {
            reason: "DeadlineExceeded".into(),
            message: "Pod was active on the node longer than the specified deadline".into(),
        }
    }
}

/// A liveness or startup probe that failed for a container instance: the container is killed and its
/// restart policy decides what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The CRI id of the instance the probe ran against; a failure for any other instance (an older
    /// one, one that already stopped) is ignored.
    pub container_id: String,
    pub container_name: String,
    /// The kill reason, e.g. "Container app failed liveness probe, will be restarted".
    pub message: String,
}

/// Everything one sync decision depends on, borrowed from the worker.
#[derive(Debug, Clone, Copy)]
pub struct SyncInputs<'a> {
    pub pod: &'a Pod,
    pub observed: &'a ObservedPod,
    pub backoff: &'a Backoff,
    /// Nanoseconds since the epoch.
    pub now: i64,
    /// When the agent first started the pod (`status.startTime`), ns; `None` before it started.
    pub pod_start_time: Option<i64>,
    /// Containers whose liveness or startup probe failed.
    pub probe_failures: &'a [ProbeFailure],
}

impl PodActions {
    /// True when the turn changes nothing: no runtime action (back-off waits aside) and no pod failure
    /// to record.
    pub fn changes_nothing(&self) -> bool {
        !self.kill_pod
            && self.create_sandbox.is_none()
            && self.kill.is_empty()
            && self.start.is_empty()
            && self.update_resources.is_empty()
            && self.remove_containers.is_empty()
            && self.remove_sandboxes.is_empty()
            && self.fail_pod.is_none()
    }
}

/// The key of a container's crash-loop back-off: pod and container identity plus the spec hash, so an
/// edited container starts afresh (kubelet's `getStableKey`).
pub fn backoff_key(pod: &Pod, container: &Container) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
        container.name,
        container_hash(container)
    )
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn succeeded(c: Option<&ObservedContainer>) -> bool {
    c.is_some_and(|c| c.state() == ContainerState::Exited && c.exit_code == 0)
}

/// kubelet's `ShouldContainerBeRestarted` (deletion is handled by the caller).
fn should_start(policy: &str, latest: Option<&ObservedContainer>) -> bool {
    let Some(c) = latest else { return true };
    match c.state() {
        ContainerState::Running => false,
        ContainerState::Created | ContainerState::Unknown => true,
        ContainerState::Exited => match policy {
            "Never" => false,
            "OnFailure" => c.exit_code != 0,
            _ => true,
        },
    }
}

fn next_attempt(latest: Option<&ObservedContainer>) -> u32 {
    latest.map_or(0, |c| {
        u32::try_from(c.restart_count)
            .unwrap_or(0)
            .max(c.attempt)
            .saturating_add(1)
    })
}

/// Plans a start, or a back-off wait when the previous instance failed too recently.
/// Stops `running` and plans its successor: a changed definition, or a resize whose policy asks
/// for a restart.
fn replace(
    actions: &mut PodActions,
    inputs: &SyncInputs<'_>,
    container: &Container,
    init: bool,
    running: &ObservedContainer,
    reason: String,
) {
    actions.kill.push(KillContainer {
        id: running.id.clone(),
        name: container.name.clone(),
        reason,
    });
    let SyncInputs {
        pod,
        observed,
        backoff,
        now,
        ..
    } = *inputs;
    let latest = observed.latest(&container.name);
    plan_start(actions, pod, container, init, latest, backoff, now);
}

fn plan_start(
    actions: &mut PodActions,
    pod: &Pod,
    container: &Container,
    init: bool,
    latest: Option<&ObservedContainer>,
    backoff: &Backoff,
    now: i64,
) {
    let finished = latest
        .filter(|c| c.state() == ContainerState::Exited)
        .map(|c| c.finished_at);
    if let Some(finished_at) = finished {
        let key = backoff_key(pod, container);
        if let Some(remaining) = backoff.remaining(&key, finished_at, now) {
            actions.backoff.push(Waiting {
                name: container.name.clone(),
                remaining,
                backoff: backoff.current(&key).unwrap_or(remaining),
            });
            return;
        }
    }
    actions.start.push(ContainerStart {
        name: container.name.clone(),
        init,
        attempt: next_attempt(latest),
        replaces_finished_at: finished,
    });
}

enum InitProgress<'a> {
    Done,
    /// An init container is running; nothing else may start.
    Running,
    /// This init container must run next.
    Next(&'a Container),
    /// An init container failed and the pod does not restart: the pod has failed.
    Failed,
}

/// A native sidecar: an init container with `restartPolicy: Always`. It starts in order, the next
/// init container does not wait for it to exit, and it is restarted whenever it stops.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The newest instance of a container in one sandbox. Init containers run once per sandbox, so only
/// the instances in the sandbox at hand tell how far initialization got.
fn latest_in<'o>(
    observed: &'o ObservedPod,
    name: &str,
    sandbox_id: &str,
) -> Option<&'o ObservedContainer> {
    observed
        .containers
        .iter()
        .find(|c| c.name == name && c.sandbox_id == sandbox_id)
}

fn init_progress<'a>(
    pod: &'a Pod,
    observed: &ObservedPod,
    sandbox_id: &str,
    policy: &str,
) -> InitProgress<'a> {
    let inits = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref());
    for init in inits.into_iter().flatten() {
        let latest = latest_in(observed, &init.name, sandbox_id);
        if is_sidecar(init) {
            match latest.map(|c| c.state()) {
                Some(ContainerState::Running) => continue,
                _ => return InitProgress::Next(init),
            }
        }
        match latest.map(|c| c.state()) {
            None | Some(ContainerState::Created) | Some(ContainerState::Unknown) => {
                return InitProgress::Next(init);
            }
            Some(ContainerState::Running) => return InitProgress::Running,
            Some(ContainerState::Exited) if succeeded(latest) => continue,
            Some(ContainerState::Exited) if policy == "Never" => return InitProgress::Failed,
            Some(ContainerState::Exited) => return InitProgress::Next(init),
        }
    }
    InitProgress::Done
}

const NS_PER_SECOND: i64 = 1_000_000_000;

/// How long the pod may still run before `spec.activeDeadlineSeconds` fails it (zero once it has
/// passed); `None` when the pod has no deadline or has not started. The worker wakes up after it.
pub fn deadline_remaining(pod: &Pod, pod_start_time: Option<i64>, now: i64) -> Option<Duration> {
    let seconds = pod.spec.as_ref()?.active_deadline_seconds?;
    let deadline = pod_start_time?.saturating_add(seconds.max(0).saturating_mul(NS_PER_SECOND));
    let left = u64::try_from(deadline.saturating_sub(now)).unwrap_or(0);
    Some(Duration::from_nanos(left))
}

/// Decides what to do for `pod` given what the runtime holds for it, with no probe failures and no
/// active deadline taken into account (see [`compute_with`]).
pub fn compute(pod: &Pod, observed: &ObservedPod, backoff: &Backoff, now: i64) -> PodActions {
    compute_with(&SyncInputs {
        pod,
        observed,
        backoff,
        now,
        pod_start_time: None,
        probe_failures: &[],
    })
}

/// Decides what to do for a pod given what the runtime holds for it, its probes and its deadline.
pub fn compute_with(inputs: &SyncInputs<'_>) -> PodActions {
    let mut actions = PodActions::default();
    let pod = inputs.pod;
    if pod.spec.is_none() {
        return actions;
    }
    garbage(&mut actions, pod, inputs.observed);

    // kubelet's active deadline handler: the pod fails as a whole and nothing runs again.
    if deadline_remaining(pod, inputs.pod_start_time, inputs.now) == Some(Duration::ZERO) {
        actions.kill_pod = true;
        actions.fail_pod = Some(PodFailure::deadline_exceeded());
        return actions;
    }

    let observed = inputs.observed;
    let ready = observed
        .sandboxes
        .iter()
        .filter(|s| s.state == SandboxState::Ready)
        .count();
    match observed.latest_sandbox() {
        Some(sandbox) if ready == 1 && sandbox.state == SandboxState::Ready => {
            in_kept_sandbox(&mut actions, inputs, &sandbox.id);
            actions
                .update_resources
                .sort_by_key(|u| !u.from.shrinks_to(&u.to));
        }
        latest => in_new_sandbox(&mut actions, inputs, latest.map(|s| s.attempt + 1)),
    }
    actions
}

/// The sandbox is missing, dead, or not the only ready one: stop everything and start over in a new
/// sandbox (`attempt` is its attempt number when an old one exists).
fn in_new_sandbox(actions: &mut PodActions, inputs: &SyncInputs<'_>, attempt: Option<u32>) {
    let SyncInputs {
        pod,
        observed,
        backoff,
        now,
        ..
    } = *inputs;
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let policy = restart_policy(pod);
    actions.kill_pod = attempt.is_some()
        || observed
            .containers
            .iter()
            .any(|c| c.state() != ContainerState::Exited);
    // A pod that never restarts is not given a second sandbox once its containers ran.
    if policy == "Never" && attempt.is_some() && !observed.containers.is_empty() {
        return;
    }
    let to_start: Vec<&Container> = spec
        .containers
        .iter()
        .filter(|c| !(policy == "OnFailure" && succeeded(observed.latest(&c.name))))
        .collect();
    let initialized = spec
        .containers
        .iter()
        .any(|c| observed.latest(&c.name).is_some());
    if to_start.is_empty() && initialized {
        // Every app container is done and none restarts: no sandbox just to run init containers.
        return;
    }
    actions.create_sandbox = Some(attempt.unwrap_or(0));
    // A new sandbox starts from scratch: its init containers all run again, first one first, whatever
    // the old sandbox's instances did (kubelet purges them). The attempt numbers carry on.
    if let Some(first) = spec.init_containers.iter().flatten().next() {
        let latest = observed.latest(&first.name);
        plan_start(actions, pod, first, true, latest, backoff, now);
        return;
    }
    for c in to_start {
        plan_start(
            actions,
            pod,
            c,
            false,
            observed.latest(&c.name),
            backoff,
            now,
        );
    }
}

/// The one ready sandbox is kept: run the init containers it still needs, then keep the app
/// containers running according to the restart policy.
fn in_kept_sandbox(actions: &mut PodActions, inputs: &SyncInputs<'_>, sandbox_id: &str) {
    let SyncInputs {
        pod,
        observed,
        backoff,
        now,
        probe_failures,
        ..
    } = *inputs;
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let policy = restart_policy(pod);
    actions.sandbox_id = Some(sandbox_id.to_string());
    let inits = spec.init_containers.iter().flatten();
    let in_spec = |name: &str| {
        spec.containers
            .iter()
            .chain(inits.clone())
            .any(|c| c.name == name)
    };
    let current = |name: &str| latest_in(observed, name, sandbox_id);

    // Only the newest instance of a container in the kept sandbox may run. An older one still running
    // (its stop failed, or a new sandbox was created around it) would run twice once its successor
    // starts, so it is stopped; its successor's fate does not depend on it.
    let mut pending = 0;
    for c in &observed.containers {
        if c.state() == ContainerState::Running
            && in_spec(&c.name)
            && current(&c.name).is_none_or(|latest| latest.id != c.id)
        {
            pending += 1;
            actions.kill.push(KillContainer {
                id: c.id.clone(),
                name: c.name.clone(),
                reason: format!("Container {} was replaced by a newer instance", c.name),
            });
        }
    }

    // A failed liveness or startup probe stops the container. It is not restarted in the same turn
    // (kubelet's computePodActions does restart it at once): the next turn sees it exited and the
    // restart policy and crash-loop back-off decide, as for any other exit, so repeated probe failures
    // back off like crashes do.
    let probe_failure = |c: &ObservedContainer| {
        probe_failures
            .iter()
            .find(|f| f.container_id == c.id && c.state() == ContainerState::Running)
    };
    for init in spec.init_containers.iter().flatten() {
        if let Some(c) = current(&init.name)
            && let Some(failure) = probe_failure(c)
        {
            actions.kill.push(KillContainer {
                id: c.id.clone(),
                name: c.name.clone(),
                reason: failure.message.clone(),
            });
        }
    }

    match init_progress(pod, observed, sandbox_id, policy) {
        InitProgress::Failed => {
            actions.kill_pod = true;
            return;
        }
        InitProgress::Running => {
            resize_sidecars(actions, inputs, sandbox_id);
            return;
        }
        InitProgress::Next(init) => {
            if let Some(c) = current(&init.name).filter(|c| c.state() == ContainerState::Unknown) {
                actions.kill.push(KillContainer {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    reason: "Container is in unknown state, try killing it before restart".into(),
                });
            }
            plan_start(
                actions,
                pod,
                init,
                true,
                observed.latest(&init.name),
                backoff,
                now,
            );
            resize_sidecars(actions, inputs, sandbox_id);
            return;
        }
        InitProgress::Done => {}
    }

    let mut keep = 0;
    for c in &spec.containers {
        let latest = current(&c.name);
        match latest.map(|l| l.state()) {
            Some(ContainerState::Running) => {
                let running = latest.expect("matched Some");
                if !running.hash.is_empty() && !hash_matches(&running.hash, c) {
                    let reason =
                        format!("Container {} definition changed, will be restarted", c.name);
                    replace(actions, inputs, c, false, running, reason);
                } else if let Some(failure) = probe_failure(running) {
                    pending += 1;
                    actions.kill.push(KillContainer {
                        id: running.id.clone(),
                        name: c.name.clone(),
                        reason: failure.message.clone(),
                    });
                } else {
                    match resize::decide(pod, c, running) {
                        Resize::Keep => keep += 1,
                        Resize::Update(update) => {
                            keep += 1;
                            actions.update_resources.push(update);
                        }
                        Resize::Restart => {
                            let reason = resize::restart_reason(&c.name);
                            replace(actions, inputs, c, false, running, reason);
                        }
                    }
                }
            }
            state => {
                if state == Some(ContainerState::Unknown)
                    && let Some(unknown) = latest
                {
                    actions.kill.push(KillContainer {
                        id: unknown.id.clone(),
                        name: c.name.clone(),
                        reason: "Container is in unknown state, try killing it before restart"
                            .into(),
                    });
                }
                // The restart policy looks at the newest instance anywhere (an app container that
                // succeeded in the old sandbox stays done under OnFailure), except a stale one being
                // stopped above: its exit is seen, and decided on, next turn.
                let latest_any = observed.latest(&c.name);
                if latest_any.is_some_and(|l| l.state() == ContainerState::Running) {
                    continue;
                }
                if should_start(policy, latest_any) {
                    plan_start(actions, pod, c, false, latest_any, backoff, now);
                }
            }
        }
    }
    if keep == 0 && pending == 0 && actions.start.is_empty() && actions.backoff.is_empty() {
        // Every container is dead and none will restart: the pod is done, stop its sandbox.
        actions.kill_pod = true;
        actions.kill.clear();
        return;
    }
    resize_sidecars(actions, inputs, sandbox_id);
}

/// Running native sidecars in the kept sandbox are resized as app containers are (kubelet resizes
/// restartable init containers too). One being stopped already (a failed probe) is left to that.
fn resize_sidecars(actions: &mut PodActions, inputs: &SyncInputs<'_>, sandbox_id: &str) {
    let SyncInputs { pod, observed, .. } = *inputs;
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    for init in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| is_sidecar(c))
    {
        let Some(running) = latest_in(observed, &init.name, sandbox_id)
            .filter(|c| c.state() == ContainerState::Running)
        else {
            continue;
        };
        if actions.kill.iter().any(|k| k.id == running.id) {
            continue;
        }
        match resize::decide(pod, init, running) {
            Resize::Keep => {}
            Resize::Update(update) => actions.update_resources.push(update),
            Resize::Restart => {
                let reason = resize::restart_reason(&init.name);
                replace(actions, inputs, init, true, running, reason);
            }
        }
    }
}

/// Dead containers beyond the newest two instances per name, and dead sandboxes nothing kept uses.
fn garbage(actions: &mut PodActions, pod: &Pod, observed: &ObservedPod) {
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    let mut kept_sandboxes: std::collections::HashSet<&str> = Default::default();
    let known = |name: &str| {
        pod.spec.as_ref().is_some_and(|s| {
            s.containers.iter().any(|c| c.name == name)
                || s.init_containers.iter().flatten().any(|c| c.name == name)
        })
    };
    for c in &observed.containers {
        let n = seen.entry(c.name.as_str()).or_default();
        *n += 1;
        let dead = matches!(c.state(), ContainerState::Exited);
        if dead && (*n > 2 || !known(&c.name)) {
            actions.remove_containers.push(c.id.clone());
        } else {
            kept_sandboxes.insert(c.sandbox_id.as_str());
        }
    }
    for s in observed.sandboxes.iter().skip(1) {
        if s.state == SandboxState::NotReady && !kept_sandboxes.contains(s.id.as_str()) {
            actions.remove_sandboxes.push(s.id.clone());
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
