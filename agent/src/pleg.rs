//! The pod lifecycle event generator: relists every sandbox and container every second, compares with
//! the previous listing, and wakes the workers of the pods that changed. It also keeps the running pod
//! and container gauges and tells `/healthz` whether relisting is alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mk_cri::{CriClient, CriError, api};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::kuberuntime::labels;
use crate::kuberuntime::observe::ContainerState;
use crate::metrics::{Metrics, StateLabels};

/// kubelet's relist threshold: PLEG is unhealthy when no relist completed for 3 minutes.
pub const RELIST_THRESHOLD: Duration = Duration::from_secs(180);

/// The runtime's view of the node after one relist.
#[derive(Debug, Clone, Default)]
pub struct Relist {
    /// Pods the runtime holds for this node: UID → (namespace, name).
    pub pods: HashMap<String, (String, String)>,
}

/// Liveness of the relist loop, shared with the HTTP server.
#[derive(Clone, Default)]
pub struct PlegHealth {
    last_relist_ms: Arc<AtomicI64>,
}

impl PlegHealth {
    fn mark(&self) {
        self.last_relist_ms
            .store(jiff::Timestamp::now().as_millisecond(), Ordering::Relaxed);
    }

    /// `Err(message)` when no relist completed within the threshold.
    pub fn check(&self) -> Result<(), String> {
        let last = self.last_relist_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Err("pleg has yet to be successful".into());
        }
        let ago = jiff::Timestamp::now().as_millisecond() - last;
        if ago > RELIST_THRESHOLD.as_millis() as i64 {
            return Err(format!(
                "pleg was last seen active {}s ago; threshold is {}s",
                ago / 1000,
                RELIST_THRESHOLD.as_secs()
            ));
        }
        Ok(())
    }
}

type Snapshot = HashMap<String, HashMap<String, i32>>;

/// Pod UIDs whose sandboxes or containers appeared, vanished or changed state between two listings.
pub fn changed_pods(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut changed: Vec<String> = new
        .iter()
        .filter(|(uid, objects)| old.get(*uid) != Some(objects))
        .map(|(uid, _)| uid.clone())
        .chain(old.keys().filter(|uid| !new.contains_key(*uid)).cloned())
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

pub struct Pleg {
    pub cri: CriClient,
    pub node_name: String,
    pub period: Duration,
    pub metrics: Metrics,
    pub health: PlegHealth,
}

impl Pleg {
    async fn relist(&self) -> Result<(Snapshot, Relist), CriError> {
        let sandboxes = self
            .cri
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await?
            .items;
        let containers = self
            .cri
            .list_containers(api::ListContainersRequest { filter: None })
            .await?
            .containers;
        let mut snapshot: Snapshot = HashMap::new();
        let mut relist = Relist::default();
        let mut running_pods = 0;
        for s in sandboxes
            .iter()
            .filter(|s| labels::owned_by(&s.labels, &self.node_name))
        {
            let Some(uid) = s.labels.get(labels::POD_UID) else {
                continue;
            };
            snapshot
                .entry(uid.clone())
                .or_default()
                .insert(s.id.clone(), s.state);
            if s.state == api::PodSandboxState::SandboxReady as i32 {
                running_pods += 1;
            }
        }
        relist.pods = crate::pod_workers::runtime_pods(&sandboxes, &self.node_name);
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        for c in containers
            .iter()
            .filter(|c| labels::owned_by(&c.labels, &self.node_name))
        {
            let Some(uid) = c.labels.get(labels::POD_UID) else {
                continue;
            };
            snapshot
                .entry(uid.clone())
                .or_default()
                .insert(c.id.clone(), c.state);
            *by_state
                .entry(ContainerState::from(c.state).metric_label())
                .or_default() += 1;
        }
        self.metrics.running_pods.set(running_pods);
        for state in ["created", "running", "exited", "unknown"] {
            self.metrics
                .running_containers
                .get_or_create(&StateLabels {
                    container_state: state,
                })
                .set(by_state.get(state).copied().unwrap_or(0));
        }
        Ok((snapshot, relist))
    }

    /// Relists until `cancel`, sending the UIDs of changed pods on `events` and each full listing on
    /// `relists`.
    pub async fn run(
        self,
        events: mpsc::Sender<String>,
        relists: watch::Sender<Option<Relist>>,
        cancel: CancellationToken,
    ) {
        let mut previous: Snapshot = HashMap::new();
        let mut last_start: Option<Instant> = None;
        let mut failing = false;
        loop {
            let started = Instant::now();
            if let Some(last) = last_start {
                self.metrics
                    .pleg_relist_interval
                    .observe(started.duration_since(last).as_secs_f64());
            }
            last_start = Some(started);
            match self.relist().await {
                Ok((snapshot, relist)) => {
                    self.metrics
                        .pleg_relist_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.health.mark();
                    if failing {
                        tracing::info!("container runtime is reachable again");
                        failing = false;
                    }
                    for uid in changed_pods(&previous, &snapshot) {
                        if events.send(uid).await.is_err() {
                            return;
                        }
                    }
                    previous = snapshot;
                    relists.send_replace(Some(relist));
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "PLEG relist failed; the container runtime may be down");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.period) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(entries: &[(&str, &[(&str, i32)])]) -> Snapshot {
        entries
            .iter()
            .map(|(uid, objs)| {
                (
                    uid.to_string(),
                    objs.iter().map(|(id, s)| (id.to_string(), *s)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn detects_new_changed_and_vanished_pods() {
        let old = snap(&[
            ("a", &[("s1", 0), ("c1", 1)]),
            ("b", &[("s2", 0)]),
            ("gone", &[("s3", 0)]),
        ]);
        let new = snap(&[
            ("a", &[("s1", 0), ("c1", 2)]),
            ("b", &[("s2", 0)]),
            ("new", &[("s4", 0)]),
        ]);
        assert_eq!(changed_pods(&old, &new), vec!["a", "gone", "new"]);
        assert!(changed_pods(&new, &new).is_empty());
    }
}
