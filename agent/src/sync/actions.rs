//! `desired pod × observed runtime state → actions`, after kubelet's `computePodActions`.
//!
//! Pure: no I/O, time passed in. The pod workers execute the result through CRI.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::backoff::Backoff;
use crate::kuberuntime::labels::container_hash;
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
    pub backoff: Vec<Waiting>,
    /// Dead containers beyond the newest two per name (kubelet keeps one dead instance for lastState).
    pub remove_containers: Vec<String>,
    /// Old sandboxes no kept container belongs to.
    pub remove_sandboxes: Vec<String>,
}

impl PodActions {
    /// True when nothing changes in the runtime (back-off waits aside).
    pub fn changes_nothing(&self) -> bool {
        !self.kill_pod
            && self.create_sandbox.is_none()
            && self.kill.is_empty()
            && self.start.is_empty()
            && self.remove_containers.is_empty()
            && self.remove_sandboxes.is_empty()
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

fn init_progress<'a>(pod: &'a Pod, observed: &ObservedPod, policy: &str) -> InitProgress<'a> {
    let inits = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref());
    for init in inits.into_iter().flatten() {
        let latest = observed.latest(&init.name);
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

/// Decides what to do for `pod` given what the runtime holds for it.
pub fn compute(pod: &Pod, observed: &ObservedPod, backoff: &Backoff, now: i64) -> PodActions {
    let mut actions = PodActions::default();
    let Some(spec) = pod.spec.as_ref() else {
        return actions;
    };
    let policy = restart_policy(pod);
    garbage(&mut actions, pod, observed);

    let ready: Vec<_> = observed
        .sandboxes
        .iter()
        .filter(|s| s.state == SandboxState::Ready)
        .collect();
    let latest_sandbox = observed.latest_sandbox();
    let sandbox_changed = match latest_sandbox {
        None => true,
        Some(latest) => ready.len() != 1 || latest.state != SandboxState::Ready,
    };

    if sandbox_changed {
        let attempt = latest_sandbox.map_or(0, |s| s.attempt + 1);
        actions.kill_pod = latest_sandbox.is_some();
        // A pod that never restarts is not given a second sandbox once its containers ran.
        if policy == "Never" && latest_sandbox.is_some() && !observed.containers.is_empty() {
            return actions;
        }
        match init_progress(pod, observed, policy) {
            InitProgress::Failed => return actions,
            InitProgress::Next(init) => {
                actions.create_sandbox = Some(attempt);
                plan_start(
                    &mut actions,
                    pod,
                    init,
                    true,
                    observed.latest(&init.name),
                    backoff,
                    now,
                );
                return actions;
            }
            InitProgress::Running | InitProgress::Done => {}
        }
        for c in &spec.containers {
            let latest = observed.latest(&c.name);
            if policy == "OnFailure" && succeeded(latest) {
                continue;
            }
            plan_start(&mut actions, pod, c, false, latest, backoff, now);
        }
        if !actions.start.is_empty() || !actions.backoff.is_empty() {
            actions.create_sandbox = Some(attempt);
        }
        return actions;
    }

    let sandbox_id = latest_sandbox.map(|s| s.id.clone());
    actions.sandbox_id = sandbox_id.clone();
    let in_current = |c: &&ObservedContainer| Some(&c.sandbox_id) == sandbox_id.as_ref();

    match init_progress(pod, observed, policy) {
        InitProgress::Failed => {
            actions.kill_pod = true;
            return actions;
        }
        InitProgress::Running => return actions,
        InitProgress::Next(init) => {
            let latest = observed.latest(&init.name);
            if let Some(c) = latest.filter(|c| c.state() == ContainerState::Unknown) {
                actions.kill.push(KillContainer {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    reason: "Container is in unknown state, try killing it before restart".into(),
                });
            }
            plan_start(&mut actions, pod, init, true, latest, backoff, now);
            return actions;
        }
        InitProgress::Done => {}
    }

    let mut keep = 0;
    for c in &spec.containers {
        let latest = observed.latest(&c.name).filter(in_current);
        match latest.map(|l| l.state()) {
            Some(ContainerState::Running) => {
                let running = latest.expect("matched Some");
                if running.hash.is_empty() || running.hash == container_hash(c) {
                    keep += 1;
                } else {
                    actions.kill.push(KillContainer {
                        id: running.id.clone(),
                        name: c.name.clone(),
                        reason: format!(
                            "Container {} definition changed, will be restarted",
                            c.name
                        ),
                    });
                    plan_start(
                        &mut actions,
                        pod,
                        c,
                        false,
                        observed.latest(&c.name),
                        backoff,
                        now,
                    );
                }
            }
            state => {
                let latest_any = observed.latest(&c.name);
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
                if should_start(policy, latest_any) {
                    plan_start(&mut actions, pod, c, false, latest_any, backoff, now);
                }
            }
        }
    }
    if keep == 0 && actions.start.is_empty() && actions.backoff.is_empty() {
        // Every container is dead and none will restart: the pod is done, stop its sandbox.
        actions.kill_pod = true;
        actions.kill.clear();
    }
    actions
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
