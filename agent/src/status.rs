//! Pod status: computing a v1 `PodStatus` from the spec and what the runtime holds (after kubelet's
//! `generateAPIPodStatus`), and the status manager, the single owner of every pod's latest status
//! (with the `PodResizePending` condition the sync loop sets).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::admission::PendingReason;
use crate::kuberuntime::observe::{ContainerState, ObservedContainer, ObservedPod, SandboxState};
use crate::qos;
use crate::sync::resize::{self, Resize};

/// The pod condition of a resize being carried out (kubelet's `PodResizeInProgress`).
pub const RESIZE_IN_PROGRESS: &str = "PodResizeInProgress";
/// The pod condition of a resize not admitted (kubelet's `PodResizePending`).
pub const RESIZE_PENDING: &str = "PodResizePending";

/// Why a container is not running, as the pod worker last saw it (kubelet's reason cache):
/// `ErrImagePull`, `ImagePullBackOff`, `CrashLoopBackOff`, `CreateContainerError`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingReason {
    pub reason: String,
    pub message: String,
}

/// Inputs of [`compute`] beyond the pod and its observed state.
pub struct StatusContext<'a> {
    /// Runtime name for container IDs (`containerd://<id>`).
    pub runtime_name: &'a str,
    pub reasons: &'a HashMap<String, WaitingReason>,
    pub host_ip: Option<&'a str>,
    pub start_time: Timestamp,
    /// The pod is being terminated by the agent.
    pub terminating: bool,
    /// Probe results by container name (started, ready); a running container absent here is ready.
    pub probes: &'a HashMap<String, (bool, bool)>,
    /// Why the last in-place resize of a container failed, while it still has to be done.
    pub resize_error: Option<&'a str>,
}

fn time(ns: i64) -> Option<Time> {
    (ns > 0)
        .then(|| Timestamp::from_nanosecond(i128::from(ns)).ok().map(Time))
        .flatten()
}

fn terminated(c: &ObservedContainer, runtime: &str) -> ContainerStateTerminated {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: c.exit_code,
        reason: Some(reason),
        message: (!c.message.is_empty()).then(|| c.message.clone()),
        started_at: time(c.started_at),
        finished_at: time(c.finished_at),
        container_id: Some(format!("{runtime}://{}", c.id)),
        signal: None,
    }
}

fn waiting(reason: &str, message: Option<&str>) -> ApiState {
    ApiState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: message.filter(|m| !m.is_empty()).map(String::from),
        }),
        ..Default::default()
    }
}

fn container_status(
    spec: &Container,
    observed: &ObservedPod,
    ctx: &StatusContext<'_>,
    default_reason: &str,
) -> ContainerStatus {
    let latest = observed.latest(&spec.name);
    let cached = ctx.reasons.get(&spec.name);
    let mut status = ContainerStatus {
        name: spec.name.clone(),
        image: spec.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        ..Default::default()
    };
    let Some(latest) = latest else {
        status.state = Some(match cached {
            Some(r) => waiting(&r.reason, Some(&r.message)),
            None => waiting(default_reason, None),
        });
        return status;
    };
    status.restart_count = latest.restart_count;
    status.image_id = latest.image_ref.clone();
    status.container_id = Some(format!("{}://{}", ctx.runtime_name, latest.id));
    // kubelet's convertContainerStatusResources: what a running container runs with (cpu and the
    // memory limit as applied, the rest as allocated); the allocation otherwise.
    status.allocated_resources = spec.resources.as_ref().and_then(|r| r.requests.clone());
    status.resources = Some(match latest.resources {
        Some(applied) if latest.state() == ContainerState::Running => {
            applied.to_status(spec.resources.as_ref())
        }
        _ => spec.resources.clone().unwrap_or_default(),
    });
    let previous = observed
        .previous(&spec.name)
        .filter(|p| p.state() == ContainerState::Exited);
    match latest.state() {
        ContainerState::Running => {
            status.state = Some(ApiState {
                running: Some(ContainerStateRunning {
                    started_at: time(latest.started_at),
                }),
                ..Default::default()
            });
            let (started, ready) = ctx.probes.get(&spec.name).copied().unwrap_or((true, true));
            status.ready = ready && !ctx.terminating;
            status.started = Some(started);
            status.last_state = previous.map(|p| ApiState {
                terminated: Some(terminated(p, ctx.runtime_name)),
                ..Default::default()
            });
        }
        ContainerState::Exited => match cached {
            // It will be restarted: waiting, with the run that ended as lastState.
            Some(r) => {
                status.state = Some(waiting(&r.reason, Some(&r.message)));
                status.last_state = Some(ApiState {
                    terminated: Some(terminated(latest, ctx.runtime_name)),
                    ..Default::default()
                });
            }
            None => {
                status.state = Some(ApiState {
                    terminated: Some(terminated(latest, ctx.runtime_name)),
                    ..Default::default()
                });
                status.last_state = previous.map(|p| ApiState {
                    terminated: Some(terminated(p, ctx.runtime_name)),
                    ..Default::default()
                });
            }
        },
        ContainerState::Created | ContainerState::Unknown => {
            status.state = Some(match cached {
                Some(r) => waiting(&r.reason, Some(&r.message)),
                None => waiting(default_reason, None),
            });
            status.last_state = previous.map(|p| ApiState {
                terminated: Some(terminated(p, ctx.runtime_name)),
                ..Default::default()
            });
        }
    }
    status
}

/// kubelet's `getPhase` over the app containers' statuses.
pub fn phase(
    restart_policy: &str,
    statuses: &[ContainerStatus],
    init_done: bool,
    init_failed: bool,
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    let (mut pending, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let state = s.state.as_ref();
        if state.and_then(|st| st.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(t) = state.and_then(|st| st.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            // Waiting to restart after a previous run.
            stopped += 1;
        } else {
            pending += 1;
        }
    }
    match () {
        _ if pending > 0 => "Pending",
        _ if running > 0 => "Running",
        _ if stopped > 0 => match restart_policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        },
        _ => "Pending",
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    now: &Time,
    previous: Option<&PodStatus>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the condition's status is unchanged.
    let last = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(String::from) },
        last_transition_time: Some(last.unwrap_or_else(|| now.clone())),
        ..Default::default()
    }
}

/// kubelet's `DisruptionTarget` condition of a pod the node itself terminates (eviction, node
/// shutdown): reason `TerminationByKubelet`, with the message the pod's status gives.
pub fn disruption_target(message: &str, now: &Time, previous: Option<&PodStatus>) -> PodCondition {
    let mut c = condition(DISRUPTION_TARGET, true, None, now, previous);
    c.reason = Some("TerminationByKubelet".into());
    c.message = Some(message.into());
    c
}

/// The condition type of [`disruption_target`].
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// True while a running container (an app container or a native sidecar) runs with other cpu or
/// memory settings than its allocated resources give: an in-place resize is being carried out.
pub fn resize_in_progress(pod: &Pod, observed: &ObservedPod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers
        .iter()
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| crate::sync::actions::is_sidecar(c)),
        )
        .any(|c| {
            observed
                .latest(&c.name)
                .filter(|o| o.state() == ContainerState::Running)
                .is_some_and(|running| resize::decide(pod, c, running) != Resize::Keep)
        })
}

/// Computes the pod's status. `previous` keeps condition transition times stable.
pub fn compute(
    pod: &Pod,
    observed: &ObservedPod,
    ctx: &StatusContext<'_>,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let Some(spec) = pod.spec.as_ref() else {
        return PodStatus::default();
    };
    // A pod being terminated is not restarted: its phase follows how its containers ended.
    let policy = if ctx.terminating {
        "Never"
    } else {
        spec.restart_policy.as_deref().unwrap_or("Always")
    };
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let init_statuses: Vec<ContainerStatus> = inits
        .iter()
        .map(|c| container_status(c, observed, ctx, "PodInitializing"))
        .collect();
    let init_succeeded = |(spec, s): (&Container, &ContainerStatus)| {
        let state = s.state.as_ref();
        if crate::sync::actions::is_sidecar(spec) {
            // A native sidecar counts once it has started.
            return state.and_then(|st| st.running.as_ref()).is_some() && s.started == Some(true);
        }
        state
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    };
    let init_done = inits.iter().zip(init_statuses.iter()).all(init_succeeded);
    let init_failed = policy == "Never"
        && inits.iter().zip(init_statuses.iter()).any(|(spec, s)| {
            !crate::sync::actions::is_sidecar(spec)
                && s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0)
        });
    let app_default = if init_done {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, observed, ctx, app_default))
        .collect();
    let phase = phase(policy, &statuses, init_done, init_failed);
    let sandbox_ready = observed
        .latest_sandbox()
        .is_some_and(|s| s.state == SandboxState::Ready);
    let containers_ready = statuses.iter().all(|s| s.ready);
    let now_time = Time(now);
    let finished = matches!(phase, "Succeeded" | "Failed");
    // Readiness gates: conditions other controllers set on the pod must be True as well.
    let gates_ready = spec.readiness_gates.iter().flatten().all(|gate| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == gate.condition_type))
            .is_some_and(|c| c.status == "True")
    });
    let ready_reason = if finished {
        "PodCompleted"
    } else if containers_ready {
        "ReadinessGatesNotReady"
    } else {
        "ContainersNotReady"
    };
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            &now_time,
            previous,
        ),
        condition(
            "Initialized",
            init_done,
            Some(if finished {
                "PodCompleted"
            } else {
                "ContainersNotInitialized"
            }),
            &now_time,
            previous,
        ),
        condition(
            "Ready",
            containers_ready && gates_ready && !finished,
            Some(ready_reason),
            &now_time,
            previous,
        ),
        condition(
            "ContainersReady",
            containers_ready && !finished,
            Some(if finished {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            &now_time,
            previous,
        ),
        condition("PodScheduled", true, None, &now_time, previous),
    ];
    if !finished && resize_in_progress(pod, observed) {
        let mut in_progress = condition(RESIZE_IN_PROGRESS, true, None, &now_time, previous);
        if let Some(error) = ctx.resize_error {
            in_progress.reason = Some("Error".into());
            in_progress.message = Some(error.to_string());
        }
        conditions.push(in_progress);
    }
    let generation = pod.metadata.generation;
    for c in &mut conditions {
        c.observed_generation = generation;
    }
    let ips: Vec<String> = if spec.host_network.unwrap_or(false) {
        ctx.host_ip.map(String::from).into_iter().collect()
    } else {
        observed
            .latest_sandbox()
            .filter(|s| s.state == SandboxState::Ready)
            .map(|s| s.ips.clone())
            .unwrap_or_default()
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        host_ip: ctx.host_ip.map(String::from),
        host_ips: ctx
            .host_ip
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip: ip.into() }]),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        qos_class: Some(qos::qos_class(pod).as_str().into()),
        start_time: Some(Time(ctx.start_time)),
        observed_generation: generation,
        ..Default::default()
    }
}

/// The single owner of the pods' statuses. Pod workers write; the sync loop adds the
/// `PodResizePending` condition of a resize it did not admit; the HTTP server and the API status syncer
/// read (that condition merged in), the latter woken through [`StatusManager::changes`].
#[derive(Clone)]
pub struct StatusManager {
    inner: Arc<RwLock<Inner>>,
    version: Arc<tokio::sync::watch::Sender<u64>>,
}

/// One pod's entry: the pod as its worker last saw it, its latest status, and whether the worker has
/// finished terminating it (all its containers stopped), which allows its deletion from the API.
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub pod: Arc<Pod>,
    pub status: PodStatus,
    pub terminated: bool,
}

/// A resize the sync loop did not admit, for the pod generation that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingResize {
    pub reason: PendingReason,
    pub message: String,
    pub generation: Option<i64>,
}

#[derive(Default)]
struct Inner {
    /// Pod UID → entry.
    entries: BTreeMap<String, PodEntry>,
    /// Pod UID → its `PodResizePending` condition.
    resize_pending: BTreeMap<String, PodCondition>,
}

impl Inner {
    /// The entry as read: with its pending resize, unless the pod is terminal.
    fn read(&self, uid: &str, entry: &PodEntry) -> PodEntry {
        let mut entry = entry.clone();
        let terminal = matches!(entry.status.phase.as_deref(), Some("Succeeded" | "Failed"));
        if let Some(pending) = self.resize_pending.get(uid).filter(|_| !terminal) {
            let conditions = entry.status.conditions.get_or_insert_with(Vec::new);
            conditions.retain(|c| c.type_ != RESIZE_PENDING);
            conditions.push(pending.clone());
        }
        entry
    }
}

impl Default for StatusManager {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            version: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl StatusManager {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub fn set(&self, pod: Arc<Pod>, status: PodStatus) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Ok(mut inner) = self.inner.write() {
            let terminated = inner.entries.get(&uid).is_some_and(|e| e.terminated);
            inner.entries.insert(
                uid,
                PodEntry {
                    pod,
                    status,
                    terminated,
                },
            );
        }
        self.bump();
    }

    /// Sets (or with `None` clears) the pod's `PodResizePending` condition. Returns whether it
    /// changed; its transition time is kept while it stays set.
    pub fn set_resize_pending(&self, uid: &str, pending: Option<&PendingResize>) -> bool {
        let changed = self.inner.write().is_ok_and(|mut inner| {
            let Some(pending) = pending else {
                return inner.resize_pending.remove(uid).is_some();
            };
            let previous = inner.resize_pending.get(uid);
            let same = previous.is_some_and(|c| {
                c.reason.as_deref() == Some(pending.reason.as_str())
                    && c.message.as_deref() == Some(pending.message.as_str())
                    && c.observed_generation == pending.generation
            });
            if same {
                return false;
            }
            let since = previous
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| Time(Timestamp::now()));
            inner.resize_pending.insert(
                uid.to_string(),
                PodCondition {
                    type_: RESIZE_PENDING.into(),
                    status: "True".into(),
                    reason: Some(pending.reason.as_str().into()),
                    message: Some(pending.message.clone()),
                    observed_generation: pending.generation,
                    last_transition_time: Some(since),
                    last_probe_time: None,
                },
            );
            true
        });
        if changed {
            self.bump();
        }
        changed
    }

    /// Records that the pod's worker stopped all its containers.
    pub fn mark_terminated(&self, uid: &str) {
        if let Ok(mut inner) = self.inner.write()
            && let Some(entry) = inner.entries.get_mut(uid)
        {
            entry.terminated = true;
        }
        self.bump();
    }

    pub fn get(&self, uid: &str) -> Option<PodStatus> {
        let inner = self.inner.read().ok()?;
        inner.entries.get(uid).map(|e| inner.read(uid, e).status)
    }

    pub fn remove(&self, uid: &str) {
        if let Ok(mut inner) = self.inner.write() {
            inner.entries.remove(uid);
            inner.resize_pending.remove(uid);
        }
        self.bump();
    }

    /// A copy of every entry.
    pub fn entries(&self) -> Vec<PodEntry> {
        self.inner
            .read()
            .map(|inner| {
                inner
                    .entries
                    .iter()
                    .map(|(uid, e)| inner.read(uid, e))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Notifies on every change.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Every pod with its latest status, as `/pods` serves them.
    pub fn pods(&self) -> Vec<Pod> {
        self.entries()
            .into_iter()
            .map(|e| {
                let mut pod = (*e.pod).clone();
                pod.status = Some(e.status);
                pod
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
