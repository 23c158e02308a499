//! One pod's worker: a task that walks the pod through kubelet's states — syncing, terminating,
//! terminated, finished — reading the pod's observed state from the pod cache and never listing the
//! runtime itself.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::WorkerContext;
use super::flows::{self, WorkerState};
use crate::metrics::OperationLabels;
use crate::pod_cache::CachedPod;
use crate::sync;

/// What the registry tells a worker: the last pod it was given, and whether that pod is still wanted.
#[derive(Debug, Clone)]
pub struct Update {
    pub pod: Arc<Pod>,
    /// Nobody wants the pod any more: terminate it and remove what the runtime holds for it.
    pub removed: bool,
    /// The node stops the pod though it is still wanted, and fails it (eviction, node shutdown).
    pub kill: Option<KillPod>,
}

impl Update {
    /// True when the pod is to be terminated: removed, being deleted by the API server, or killed by
    /// the node.
    pub fn terminate(&self) -> bool {
        self.removed || self.kill.is_some() || self.pod.metadata.deletion_timestamp.is_some()
    }
}

/// The node's request to stop a pod that is still wanted and fail it (kubelet's `KillPodOptions`
/// with a status function, as the eviction manager and the node shutdown manager use them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillPod {
    /// The pod's terminal status: phase `Failed` with this reason and message.
    pub failure: sync::PodFailure,
    /// Seconds the pod gets to stop instead of its own grace period (the caller bounds it by the
    /// pod's own when kubelet does); at least the runtime manager's minimum.
    pub grace_seconds: Option<i64>,
    /// Adds the `DisruptionTarget` condition (reason `TerminationByKubelet`) with the message.
    pub disruption: bool,
}

/// kubelet's pod worker states. A UID only ever moves forward through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The pod should run: each turn syncs it towards its spec.
    Syncing,
    /// Its containers and sandboxes are being stopped.
    Terminating,
    /// Nothing of it runs; its volumes are torn down. A terminal pod that is still wanted stays here,
    /// doing nothing, until it is removed.
    Terminated,
    /// Removed from the runtime and the node; the worker has ended.
    Finished,
}

/// Why a syncing worker should look again, besides a new pod or its timer.
#[derive(Default)]
pub struct Wakes {
    /// The PLEG refreshed the pod's cache entry because its runtime state changed.
    pub runtime: Notify,
    /// A probe result changed.
    pub probe: Notify,
}

/// The channels a worker is driven and observed through.
pub struct Channels {
    pub updates: watch::Receiver<Update>,
    pub wakes: Arc<Wakes>,
    pub phase: watch::Sender<Phase>,
    /// The worker sends its pod's UID here when it has finished.
    pub finished: mpsc::UnboundedSender<String>,
}

/// Waits until termination of the pod is requested.
async fn termination_requested(mut updates: watch::Receiver<Update>) {
    if updates.wait_for(Update::terminate).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits for a cache entry of the pod read after `after`, unless the pod's update changes first
/// (then `None`: the caller looks at the new update).
async fn newer_state(
    ctx: &WorkerContext,
    uid: &str,
    after: Option<Instant>,
    updates: &mut watch::Receiver<Update>,
) -> Option<CachedPod> {
    tokio::select! {
        cached = ctx.cache.get_newer_than(uid, after) => Some(cached),
        _ = updates.changed() => None,
    }
}

/// The worker's task: runs until the pod is finished or the registry drops it.
pub async fn run(ctx: Arc<WorkerContext>, uid: String, mut ch: Channels) {
    let mut state = WorkerState::default();
    let mut phase = Phase::Syncing;
    // When the last turn that may have changed the runtime ended: the next turn decides on a state
    // read after it.
    let mut last_turn: Option<Instant> = None;
    let mut reported_error: Option<String> = None;
    let mut torn_down = false;
    let mut operation = "create";
    let set_phase = |ch: &Channels, phase: Phase| {
        ch.phase.send_replace(phase);
    };
    loop {
        if ch.updates.has_changed().is_err() {
            // The registry is gone (the agent stops): pods are left as they are, as kubelet does.
            return;
        }
        let update = ch.updates.borrow_and_update().clone();
        if let Some(kill) = &update.kill
            && state.kill.is_none()
            && phase < Phase::Terminated
        {
            tracing::info!(reason = %kill.failure.reason, grace = ?kill.grace_seconds, "{}", kill.failure.message);
            state.kill = Some(kill.clone());
        }
        if phase == Phase::Syncing && update.terminate() {
            phase = Phase::Terminating;
            set_phase(&ch, phase);
        }
        match phase {
            Phase::Syncing => {
                let Some(cached) = newer_state(&ctx, &uid, last_turn, &mut ch.updates).await else {
                    continue;
                };
                if let Some(error) = cached.error {
                    if reported_error.as_ref() != Some(&error) {
                        tracing::warn!(%error, "pod state unknown; waiting for the runtime");
                        reported_error = Some(error);
                    }
                    last_turn = Some(cached.read_at);
                    continue;
                }
                reported_error = None;
                let started = std::time::Instant::now();
                let outcome = tokio::select! {
                    outcome = flows::sync_pod(&ctx, &update.pod, &cached.observed, &mut state) => Some(outcome),
                    // A pod deleted while, say, its image pulls: stop the turn, terminate at once.
                    () = termination_requested(ch.updates.clone()) => None,
                };
                ctx.metrics
                    .pod_worker_duration
                    .get_or_create(&OperationLabels {
                        operation_type: operation,
                    })
                    .observe(started.elapsed().as_secs_f64());
                operation = "sync";
                last_turn = Some(Instant::now());
                match outcome {
                    None => {}
                    Some(outcome) if outcome.terminal => {
                        tracing::info!(v = 2, "pod reached a terminal phase; terminating it");
                        phase = Phase::Terminating;
                        set_phase(&ch, phase);
                    }
                    Some(outcome) => wait_for_wake(&mut ch, outcome.next).await,
                }
            }
            Phase::Terminating => {
                let cached = ctx.cache.get_newer_than(&uid, last_turn).await;
                if cached.error.is_some() {
                    last_turn = Some(cached.read_at);
                    continue;
                }
                let done =
                    flows::sync_terminating(&ctx, &update.pod, &cached.observed, &mut state).await;
                last_turn = Some(Instant::now());
                if done {
                    phase = Phase::Terminated;
                    set_phase(&ch, phase);
                }
            }
            Phase::Terminated => {
                if !torn_down {
                    torn_down = flows::sync_terminated(&ctx, &update.pod).await;
                    if !torn_down {
                        tokio::select! {
                            _ = ch.updates.changed() => {}
                            () = tokio::time::sleep(crate::pod_workers::runtime_manager::ERROR_RETRY) => {}
                        }
                        continue;
                    }
                }
                if update.removed {
                    let cached = ctx.cache.get_newer_than(&uid, last_turn).await;
                    if cached.error.is_some() {
                        last_turn = Some(cached.read_at);
                        continue;
                    }
                    if flows::is_live(&cached.observed) {
                        // Something started after all (a call that was in flight when the pod was
                        // removed): stop it again.
                        phase = Phase::Terminating;
                        set_phase(&ch, phase);
                        continue;
                    }
                    flows::remove_pod(&ctx, &update.pod, &cached.observed).await;
                    tracing::info!(
                        v = 2,
                        seconds = state.first_seen.elapsed().as_secs_f64(),
                        "pod terminated and removed"
                    );
                    set_phase(&ch, Phase::Finished);
                    // The registry may be gone when the agent stops; nothing to tell then.
                    let _ = ch.finished.send(uid);
                    return;
                }
                // Terminal but still wanted: nothing to do until that changes.
                if ch.updates.changed().await.is_err() {
                    return;
                }
            }
            Phase::Finished => return,
        }
    }
}

/// Waits for a reason to sync again: a new pod, a runtime or probe wake, or the turn's timer.
async fn wait_for_wake(ch: &mut Channels, next: Duration) {
    tokio::select! {
        _ = ch.updates.changed() => {}
        () = ch.wakes.probe.notified() => {}
        () = ch.wakes.runtime.notified() => {}
        () = tokio::time::sleep(next) => {}
    }
}
