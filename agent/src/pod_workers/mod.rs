//! Pod workers (kubelet's `pod_workers.go`): one task per pod UID, each walking its pod through
//! syncing → terminating → terminated → finished. This module is the registry: it hands each worker
//! the latest pod, tells it when the pod is no longer wanted, starts workers for pods found in the
//! runtime that nobody wants (orphans, straight into termination), restarts a UID that comes back
//! after its worker finished, and holds back a static pod's new UID until every older pod of the same
//! full name has finished (kubelet's `allowStaticPodStart`: never two copies of one static pod).

pub mod applied;
pub mod flows;
pub mod killer;
pub mod runtime_manager;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::kuberuntime::observe::RuntimePod;
use crate::metrics::Metrics;
use crate::pod_cache::PodCache;
use crate::pod_workers::runtime_manager::RuntimeManager;
use crate::prober::ProbeManager;
use crate::sources::{self, PodSet, pod_key};
use crate::status::StatusManager;

pub use killer::{KillOutcome, KillRequest, PodKiller};
pub use worker::{KillPod, Phase, Update};

/// What every pod worker shares.
pub struct WorkerContext {
    /// Carries out actions through CRI.
    pub runtime: RuntimeManager,
    /// Every pod's observed runtime state, refreshed by the PLEG.
    pub cache: PodCache,
    pub status: StatusManager,
    /// Liveness, readiness and startup probes.
    pub prober: ProbeManager,
    pub metrics: Metrics,
    /// `containerd`, `cri-o`, `docker`: the prefix of container IDs in pod status.
    pub runtime_name: String,
    /// kubelet's `syncFrequency`: a syncing pod is looked at again at least this often.
    pub resync: Duration,
}

struct Worker {
    updates: watch::Sender<Update>,
    wakes: Arc<worker::Wakes>,
    phase: watch::Receiver<Phase>,
    /// `name_namespace`, kubelet's pod full name.
    full_name: String,
    task: JoinHandle<()>,
}

/// kubelet's pod full name, `name_namespace`.
fn full_name(pod: &Pod) -> String {
    format!(
        "{}_{}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default()
    )
}

/// Owns the workers, keyed by pod UID.
pub struct PodWorkers {
    ctx: Arc<WorkerContext>,
    workers: HashMap<String, Worker>,
    /// The pods last asked for.
    desired: PodSet,
    finished: mpsc::UnboundedSender<String>,
}

impl PodWorkers {
    /// The registry, and the receiver of the UIDs whose workers finished (hand each to
    /// [`PodWorkers::on_finished`]).
    pub fn new(ctx: Arc<WorkerContext>) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (finished, finished_rx) = mpsc::unbounded_channel();
        let workers = Self {
            ctx,
            workers: HashMap::new(),
            desired: PodSet::default(),
            finished,
        };
        (workers, finished_rx)
    }

    fn spawn(&mut self, uid: &str, update: Update) {
        let (updates, updates_rx) = watch::channel(update.clone());
        let (phase_tx, phase) = watch::channel(Phase::Syncing);
        let wakes = Arc::new(worker::Wakes::default());
        let channels = worker::Channels {
            updates: updates_rx,
            wakes: wakes.clone(),
            phase: phase_tx,
            finished: self.finished.clone(),
        };
        // Every line the worker logs carries the pod's `pod` and `podUID`.
        let meta = &update.pod.metadata;
        let span = crate::logging::pod_span(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default(),
            uid,
        );
        let task = tokio::spawn(tracing::Instrument::instrument(
            worker::run(self.ctx.clone(), uid.to_string(), channels),
            span,
        ));
        self.workers.insert(
            uid.to_string(),
            Worker {
                updates,
                wakes,
                phase,
                full_name: full_name(&update.pod),
                task,
            },
        );
    }

    /// Starts a worker for a wanted pod unless it is a static pod whose full name an older pod still
    /// holds.
    fn start_if_allowed(&mut self, uid: &str, pod: &Arc<Pod>) {
        if sources::is_static(pod) {
            let name = full_name(pod);
            if let Some((older, _)) = self.workers.iter().find(|(_, w)| w.full_name == name) {
                tracing::debug!(pod = %pod_key(pod), podUID = uid, older = %older, "static pod waits until the older pod of its name has terminated");
                return;
            }
        }
        self.spawn(
            uid,
            Update {
                pod: pod.clone(),
                removed: false,
                kill: None,
            },
        );
    }

    /// Brings the workers in line with the wanted pods: new pods get a worker, changed pods are sent
    /// their new version, pods no longer wanted are terminated and removed.
    pub fn update(&mut self, desired: &PodSet) {
        self.desired = desired.clone();
        self.reap();
        for (uid, pod) in &desired.pods {
            match self.workers.get(uid) {
                Some(w) => {
                    w.updates.send_if_modified(|current| {
                        if current.removed {
                            // A UID being removed does not come back to life; it starts again once its
                            // worker has finished (kubelet's restart-requested).
                            tracing::info!(pod = %pod_key(pod), podUID = uid, "pod added again while terminating; it restarts once terminated");
                            return false;
                        }
                        // The newest object is kept either way (the worker takes it at its next
                        // turn; holding on to an older one kept two copies of the pod alive), but
                        // only a change that matters to the pod's sync wakes the worker.
                        let wake = meaningful_change(&current.pod, pod);
                        current.pod = pod.clone();
                        wake
                    });
                }
                None => self.start_if_allowed(uid, pod),
            }
        }
        for (uid, w) in &self.workers {
            if !desired.pods.contains_key(uid) {
                w.updates.send_if_modified(|current| {
                    let changed = !current.removed;
                    current.removed = true;
                    changed
                });
            }
        }
        let static_pods = desired
            .pods
            .values()
            .filter(|p| sources::is_static(p))
            .count();
        self.ctx
            .metrics
            .set_desired_pods(desired.pods.len() - static_pods, static_pods);
    }

    /// A worker finished: forget it, and start what waited for it (the same UID added again, a
    /// static pod's newer UID).
    pub fn on_finished(&mut self, uid: &str) {
        if self
            .workers
            .get(uid)
            .is_some_and(|w| *w.phase.borrow() == Phase::Finished || w.task.is_finished())
        {
            self.workers.remove(uid);
        }
        self.start_waiting();
    }

    /// Starts workers for wanted pods that have none.
    fn start_waiting(&mut self) {
        let waiting: Vec<(String, Arc<Pod>)> = self
            .desired
            .pods
            .iter()
            .filter(|(uid, _)| !self.workers.contains_key(*uid))
            .map(|(uid, pod)| (uid.clone(), pod.clone()))
            .collect();
        for (uid, pod) in waiting {
            self.start_if_allowed(&uid, &pod);
        }
    }

    /// Asks a pod's worker to stop the pod and fail it (see [`KillPod`]). Returns the worker's phase
    /// to wait on, or `None` when no worker runs the pod. A second request for the same pod keeps the
    /// first one's status.
    pub fn kill(&mut self, uid: &str, kill: KillPod) -> Option<watch::Receiver<Phase>> {
        let w = self.workers.get(uid)?;
        w.updates.send_if_modified(|current| {
            if current.kill.is_some() {
                return false;
            }
            current.kill = Some(kill);
            true
        });
        Some(w.phase.clone())
    }

    /// Wakes a pod's worker: its cache entry was refreshed with a changed runtime state.
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

    /// Terminates and removes pods the runtime holds that nobody wants (removed while the agent was
    /// down, or left by a crash). Their workers start in termination with what the runtime's labels
    /// say about them; the grace period comes from their containers' annotations.
    pub fn clean_up_orphans(&mut self, runtime_pods: &HashMap<String, RuntimePod>) {
        self.reap();
        for (uid, found) in runtime_pods {
            if self.desired.pods.contains_key(uid) || self.workers.contains_key(uid) {
                continue;
            }
            tracing::info!(pod = %format!("{}/{}", found.namespace, found.name), podUID = %uid, "cleaning up pod that is no longer desired");
            let orphan = Pod {
                metadata: ObjectMeta {
                    name: Some(found.name.clone()),
                    namespace: Some(found.namespace.clone()),
                    uid: Some(uid.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            self.spawn(
                uid,
                Update {
                    pod: Arc::new(orphan),
                    removed: true,
                    kill: None,
                },
            );
        }
        self.start_waiting();
    }

    /// Forgets workers whose task ended without finishing (a panic), so the pod can start again.
    pub fn reap(&mut self) {
        self.workers.retain(|uid, w| {
            let ended = w.task.is_finished();
            if ended && *w.phase.borrow() != Phase::Finished {
                tracing::error!(
                    podUID = %uid,
                    "pod worker ended unexpectedly; it will be started again"
                );
            }
            !ended
        });
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
/// turn. The readiness-gate conditions other controllers set in the status do count, and so does a
/// new generation (its status reports `observedGeneration`, also for a resize still pending).
fn meaningful_change(old: &Pod, new: &Pod) -> bool {
    if old.spec != new.spec || old.metadata.generation != new.metadata.generation {
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

#[cfg(test)]
pub(crate) mod test_context;
#[cfg(test)]
mod tests;
