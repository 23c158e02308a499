//! The pod lifecycle event generator: relists every sandbox and container every second, compares with
//! the previous listing, refreshes the pod cache entries of the pods that changed (asking the runtime
//! only about objects whose state changed, or that a worker asked to be read again), and wakes their
//! workers. It also keeps the running pod and
//! container gauges and tells `/healthz` whether relisting is alive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use mk_cri::{CriClient, CriError, api};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::kuberuntime::labels;
use crate::kuberuntime::observe::{
    ContainerState, ObservedContainer, ObservedPod, RuntimePod, SandboxState, from_status,
    is_host_network, runtime_pods, sandbox_from_list, sandbox_ips,
};
use crate::metrics::{Metrics, StateLabels};
use crate::pod_cache::PodCache;

/// kubelet's relist threshold: PLEG is unhealthy when no relist completed for 3 minutes.
pub const RELIST_THRESHOLD: Duration = Duration::from_secs(180);

/// The runtime's view of the node after one relist.
#[derive(Debug, Clone, Default)]
pub struct Relist {
    /// Pods the runtime holds for this node, by UID.
    pub pods: HashMap<String, RuntimePod>,
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
    /// Where each relist leaves every pod's observed state for the workers.
    pub cache: PodCache,
}

/// What the PLEG remembers between relists so that an unchanged object costs no CRI call.
#[derive(Default)]
struct Inspector {
    /// ContainerStatus answers by container ID, with the listed state they were read in (a
    /// container's status only changes with its state).
    containers: HashMap<String, (i32, ObservedContainer)>,
    /// Sandbox IPs by sandbox ID (fixed for a sandbox's life).
    sandbox_ips: HashMap<String, Vec<String>>,
    /// Pods whose last inspection failed: inspected again at the next relist.
    failed: HashSet<String>,
    /// Set by an inspection that found a ready sandbox without its IPs yet.
    ip_pending: bool,
}

/// One pod's objects in a listing.
#[derive(Default)]
struct Listed<'a> {
    sandboxes: Vec<&'a api::PodSandbox>,
    containers: Vec<&'a api::Container>,
}

impl Inspector {
    /// Builds one pod's observed state from the listing, asking the runtime only about what changed.
    async fn inspect(
        &mut self,
        cri: &CriClient,
        listed: &Listed<'_>,
    ) -> Result<ObservedPod, CriError> {
        let mut observed = ObservedPod {
            sandboxes: listed
                .sandboxes
                .iter()
                .map(|s| sandbox_from_list(s))
                .collect(),
            containers: Vec::with_capacity(listed.containers.len()),
        };
        observed.sort();
        if let Some(latest) = observed.sandboxes.first_mut()
            && latest.state == SandboxState::Ready
        {
            match self.sandbox_ips.get(&latest.id) {
                Some(ips) => latest.ips = ips.clone(),
                None => {
                    let request = api::PodSandboxStatusRequest {
                        pod_sandbox_id: latest.id.clone(),
                        verbose: false,
                    };
                    match cri.pod_sandbox_status(request).await {
                        Ok(resp) => {
                            let host_network = is_host_network(resp.status.as_ref());
                            latest.ips = sandbox_ips(resp.status);
                            if latest.ips.is_empty() && !host_network {
                                // Listed ready before its network was set up (a RunPodSandbox
                                // still in its CNI ADD): not remembered, asked again next relist.
                                self.ip_pending = true;
                            } else {
                                self.sandbox_ips
                                    .insert(latest.id.clone(), latest.ips.clone());
                            }
                        }
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        for c in &listed.containers {
            if let Some((state, known)) = self.containers.get(&c.id)
                && *state == c.state
            {
                observed.containers.push(known.clone());
                continue;
            }
            let request = api::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            };
            let status = match cri.container_status(request).await {
                Ok(resp) => resp.status,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let Some(status) = status else { continue };
            let container = from_status(status, &c.pod_sandbox_id);
            self.containers
                .insert(c.id.clone(), (c.state, container.clone()));
            observed.containers.push(container);
        }
        observed.sort();
        Ok(observed)
    }

    /// Forgets objects the runtime no longer lists.
    fn retain(&mut self, sandboxes: &HashSet<&str>, containers: &HashSet<&str>) {
        self.containers
            .retain(|id, _| containers.contains(id.as_str()));
        self.sandbox_ips
            .retain(|id, _| sandboxes.contains(id.as_str()));
    }
}

impl Pleg {
    /// Lists the runtime once, refreshes the cache entries of the pods that changed, and returns the
    /// new snapshot, the listing's pods and the UIDs that changed.
    async fn relist(
        &self,
        previous: &Snapshot,
        inspector: &mut Inspector,
    ) -> Result<(Snapshot, Relist, Vec<String>), CriError> {
        let started = Instant::now();
        // Containers changed without a change of state (resized in place) are read again.
        let refresh = self.cache.take_refresh_requests();
        for id in refresh.values().flatten() {
            inspector.containers.remove(id);
        }
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
        let mut pods: HashMap<&str, Listed<'_>> = HashMap::new();
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
            pods.entry(uid).or_default().sandboxes.push(s);
            if s.state == api::PodSandboxState::SandboxReady as i32 {
                running_pods += 1;
            }
        }
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
            pods.entry(uid).or_default().containers.push(c);
            *by_state
                .entry(ContainerState::from(c.state).metric_label())
                .or_default() += 1;
        }
        let mut changed = changed_pods(previous, &snapshot);
        changed.extend(inspector.failed.drain());
        changed.extend(refresh.into_keys());
        changed.sort();
        changed.dedup();
        let empty = Listed::default();
        for uid in &changed {
            let listed = pods.get(uid.as_str()).unwrap_or(&empty);
            inspector.ip_pending = false;
            match inspector.inspect(&self.cri, listed).await {
                Ok(observed) => {
                    self.cache.set(uid, observed, started);
                    if inspector.ip_pending {
                        inspector.failed.insert(uid.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(uid, error = %e, "cannot read pod state from the runtime");
                    self.cache.set_error(uid, e.to_string(), started);
                    inspector.failed.insert(uid.clone());
                }
            }
        }
        let live_sandboxes: HashSet<&str> = sandboxes.iter().map(|s| s.id.as_str()).collect();
        let live_containers: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        inspector.retain(&live_sandboxes, &live_containers);
        self.cache.complete(started);

        self.metrics.running_pods.set(running_pods);
        for state in ["created", "running", "exited", "unknown"] {
            self.metrics
                .running_containers
                .get_or_create(&StateLabels {
                    container_state: state,
                })
                .set(by_state.get(state).copied().unwrap_or(0));
        }
        let relist = Relist {
            pods: runtime_pods(&sandboxes, &self.node_name),
        };
        Ok((snapshot, relist, changed))
    }

    /// Relists until `cancel`, sending the UIDs of changed pods on `events` (after their cache entry
    /// was refreshed) and each full listing on `relists`.
    pub async fn run(
        self,
        events: mpsc::Sender<String>,
        relists: watch::Sender<Option<Relist>>,
        cancel: CancellationToken,
    ) {
        let mut previous: Snapshot = HashMap::new();
        let mut inspector = Inspector::default();
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
            match self.relist(&previous, &mut inspector).await {
                Ok((snapshot, relist, changed)) => {
                    self.metrics
                        .pleg_relist_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.health.mark();
                    if failing {
                        tracing::info!("container runtime is reachable again");
                        failing = false;
                    }
                    previous = snapshot;
                    relists.send_replace(Some(relist));
                    for uid in changed {
                        if events.send(uid).await.is_err() {
                            return;
                        }
                    }
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
