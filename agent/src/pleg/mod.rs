//! The pod lifecycle event generator. It relists every sandbox and container (every second, or
//! every five minutes while it follows the runtime's container events), compares with the previous
//! listing, refreshes the pod cache entries of the pods that changed (asking the runtime only about
//! objects whose state changed, or that a worker asked to be read again), and wakes their workers.
//!
//! With the runtime's events (CRI `GetContainerEvents`: containerd 2.x, the Docker adapter; what
//! upstream kubelet keeps behind its alpha `EventedPLEG` gate) each event makes it list only the
//! pod the event names; a worker that waits for a state newer than its last turn gets its pod
//! listed at once. When the stream breaks, or the runtime does not serve it, relisting every second
//! takes over until the stream is back. It also keeps the running pod and container gauges and
//! tells `/healthz` whether relisting is alive.

mod events;

use std::collections::{BTreeSet, HashMap, HashSet};
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

pub use events::{ESTABLISHED_AFTER, Feed, UNIMPLEMENTED_RETRY};

/// kubelet's relist threshold: PLEG is unhealthy when no relist completed for 3 minutes.
pub const RELIST_THRESHOLD: Duration = Duration::from_secs(180);
/// kubelet's relist period while container events are followed (`eventedPlegRelistPeriod`): the
/// safety net for an event the runtime never sent.
pub const EVENTED_RELIST_PERIOD: Duration = Duration::from_secs(300);
/// kubelet's relist threshold while container events are followed (`eventedPlegRelistThreshold`).
pub const EVENTED_RELIST_THRESHOLD: Duration = Duration::from_secs(600);
/// More pods than this changed at once are read with one listing of everything.
const TARGETED_MAX: usize = 8;

/// The runtime's view of the node after one relist.
#[derive(Debug, Clone, Default)]
pub struct Relist {
    /// Pods the runtime holds for this node, by UID.
    pub pods: HashMap<String, RuntimePod>,
}

/// Liveness of the relist loop, shared with the HTTP server.
#[derive(Clone)]
pub struct PlegHealth {
    last_relist_ms: Arc<AtomicI64>,
    threshold_ms: Arc<AtomicI64>,
}

impl Default for PlegHealth {
    fn default() -> Self {
        Self {
            last_relist_ms: Arc::default(),
            threshold_ms: Arc::new(AtomicI64::new(millis(RELIST_THRESHOLD))),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PlegHealth {
    /// Records a completed relist; `threshold` is how long the next one may take to come.
    fn mark(&self, threshold: Duration) {
        self.threshold_ms
            .store(millis(threshold), Ordering::Relaxed);
        self.last_relist_ms
            .store(jiff::Timestamp::now().as_millisecond(), Ordering::Relaxed);
    }

    /// `Err(message)` when no relist completed within the threshold.
    pub fn check(&self) -> Result<(), String> {
        let last = self.last_relist_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Err("pleg has yet to be successful".into());
        }
        let threshold = self.threshold_ms.load(Ordering::Relaxed);
        let ago = jiff::Timestamp::now().as_millisecond() - last;
        if ago > threshold {
            return Err(format!(
                "pleg was last seen active {}s ago; threshold is {}s",
                ago / 1000,
                threshold / 1000
            ));
        }
        Ok(())
    }
}

/// The states of one pod's sandboxes and containers, by ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodObjects {
    sandboxes: HashMap<String, i32>,
    containers: HashMap<String, i32>,
}

impl PodObjects {
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.sandboxes
            .keys()
            .chain(self.containers.keys())
            .map(String::as_str)
    }
}

type Snapshot = HashMap<String, PodObjects>;

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
    /// The relist period without container events (kubelet's 1 s).
    pub period: Duration,
    /// Follow the runtime's container events when it serves them (`EventedPLEG`).
    pub evented: bool,
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

    /// Forgets one object.
    fn forget(&mut self, id: &str) {
        self.containers.remove(id);
        self.sandbox_ips.remove(id);
    }
}

/// What the PLEG knows of the runtime between relists.
#[derive(Default)]
struct Observer {
    /// The last listing's objects, by pod UID.
    previous: Snapshot,
    /// The pods the runtime holds, for the housekeeping of orphans.
    runtime: HashMap<String, RuntimePod>,
    inspector: Inspector,
}

/// Groups a listing by pod UID (this node's objects only).
fn group<'a>(
    sandboxes: &'a [api::PodSandbox],
    containers: &'a [api::Container],
    node_name: &str,
) -> (Snapshot, HashMap<&'a str, Listed<'a>>) {
    let mut snapshot: Snapshot = HashMap::new();
    let mut pods: HashMap<&str, Listed<'_>> = HashMap::new();
    for s in sandboxes
        .iter()
        .filter(|s| labels::owned_by(&s.labels, node_name))
    {
        let Some(uid) = s.labels.get(labels::POD_UID) else {
            continue;
        };
        snapshot
            .entry(uid.clone())
            .or_default()
            .sandboxes
            .insert(s.id.clone(), s.state);
        pods.entry(uid).or_default().sandboxes.push(s);
    }
    for c in containers
        .iter()
        .filter(|c| labels::owned_by(&c.labels, node_name))
    {
        let Some(uid) = c.labels.get(labels::POD_UID) else {
            continue;
        };
        snapshot
            .entry(uid.clone())
            .or_default()
            .containers
            .insert(c.id.clone(), c.state);
        pods.entry(uid).or_default().containers.push(c);
    }
    (snapshot, pods)
}

/// What the next round of the loop reads.
#[derive(Default)]
struct Due {
    /// Everything.
    all: bool,
    /// These pods.
    pods: BTreeSet<String>,
}

impl Pleg {
    /// Inspects the pods `uids` of a listing and leaves their state in the cache.
    async fn refresh(
        &self,
        inspector: &mut Inspector,
        uids: impl Iterator<Item = &String>,
        pods: &HashMap<&str, Listed<'_>>,
        started: Instant,
    ) {
        let empty = Listed::default();
        for uid in uids {
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
                    tracing::warn!(podUID = %uid, error = %e, "cannot read pod state from the runtime");
                    self.cache.set_error(uid, e.to_string(), started);
                    inspector.failed.insert(uid.clone());
                }
            }
        }
    }

    /// Containers a worker changed without changing their state (resized in place) are read
    /// again; returns the pods they belong to.
    fn take_refresh_requests(&self, inspector: &mut Inspector) -> Vec<String> {
        let refresh = self.cache.take_refresh_requests();
        for id in refresh.values().flatten() {
            inspector.containers.remove(id);
        }
        refresh.into_keys().collect()
    }

    /// Lists the runtime once, refreshes the cache entries of the pods that changed, and returns
    /// the UIDs that changed.
    async fn relist(&self, obs: &mut Observer) -> Result<Vec<String>, CriError> {
        let started = Instant::now();
        let refresh = self.take_refresh_requests(&mut obs.inspector);
        // Every pod is read now: what workers waited for is served by this relist.
        self.cache.take_wanted();
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
        let (snapshot, pods) = group(&sandboxes, &containers, &self.node_name);
        let mut changed = changed_pods(&obs.previous, &snapshot);
        changed.extend(obs.inspector.failed.drain());
        changed.extend(refresh);
        changed.sort();
        changed.dedup();
        self.refresh(&mut obs.inspector, changed.iter(), &pods, started)
            .await;
        let live_sandboxes: HashSet<&str> = sandboxes.iter().map(|s| s.id.as_str()).collect();
        let live_containers: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        obs.inspector.retain(&live_sandboxes, &live_containers);
        self.cache.complete(started);
        obs.previous = snapshot;
        obs.runtime = runtime_pods(&sandboxes, &self.node_name);
        Ok(changed)
    }

    /// Lists only the pods `uids` and leaves their state in the cache (read now, changed or not:
    /// a worker may be waiting for it); returns those that changed.
    async fn relist_pods(
        &self,
        obs: &mut Observer,
        mut uids: BTreeSet<String>,
    ) -> Result<Vec<String>, CriError> {
        let started = Instant::now();
        uids.extend(self.take_refresh_requests(&mut obs.inspector));
        let mut changed = Vec::new();
        for uid in uids {
            let selector = HashMap::from([(labels::POD_UID.to_string(), uid.clone())]);
            let sandboxes = self
                .cri
                .list_pod_sandbox(api::ListPodSandboxRequest {
                    filter: Some(api::PodSandboxFilter {
                        label_selector: selector.clone(),
                        ..Default::default()
                    }),
                })
                .await?
                .items;
            let containers = self
                .cri
                .list_containers(api::ListContainersRequest {
                    filter: Some(api::ContainerFilter {
                        label_selector: selector,
                        ..Default::default()
                    }),
                })
                .await?
                .containers;
            let (mut snapshot, pods) = group(&sandboxes, &containers, &self.node_name);
            let now = snapshot.remove(&uid).unwrap_or_default();
            let before = obs.previous.remove(&uid).unwrap_or_default();
            for gone in before.ids().filter(|id| !now.ids().any(|n| n == *id)) {
                obs.inspector.forget(gone);
            }
            let failed = obs.inspector.failed.remove(&uid);
            if before != now || failed {
                changed.push(uid.clone());
            }
            self.refresh(&mut obs.inspector, std::iter::once(&uid), &pods, started)
                .await;
            match runtime_pods(&sandboxes, &self.node_name).remove(&uid) {
                Some(pod) => obs.runtime.insert(uid.clone(), pod),
                None => obs.runtime.remove(&uid),
            };
            if now != PodObjects::default() {
                obs.previous.insert(uid, now);
            }
        }
        Ok(changed)
    }

    /// Sets the running pod and container gauges from the last listing.
    fn count(&self, snapshot: &Snapshot) {
        let ready = api::PodSandboxState::SandboxReady as i32;
        let running_pods = snapshot
            .values()
            .flat_map(|p| p.sandboxes.values())
            .filter(|state| **state == ready)
            .count();
        self.metrics
            .running_pods
            .set(i64::try_from(running_pods).unwrap_or(i64::MAX));
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        for state in snapshot.values().flat_map(|p| p.containers.values()) {
            *by_state
                .entry(ContainerState::from(*state).metric_label())
                .or_default() += 1;
        }
        for state in ["created", "running", "exited", "unknown"] {
            self.metrics
                .running_containers
                .get_or_create(&StateLabels {
                    container_state: state,
                })
                .set(by_state.get(state).copied().unwrap_or(0));
        }
    }

    /// Relists until `cancel`, sending the UIDs of changed pods on `events` (after their cache entry
    /// was refreshed) and the runtime's pods on `relists` after each relist.
    pub async fn run(
        self,
        events: mpsc::Sender<String>,
        relists: watch::Sender<Option<Relist>>,
        cancel: CancellationToken,
    ) {
        let mut obs = Observer::default();
        let (feed_tx, mut feed) = mpsc::channel(1024);
        let mut feed_open = self.evented;
        if self.evented {
            tokio::spawn(events::follow(
                self.cri.clone(),
                feed_tx,
                cancel.child_token(),
            ));
        }
        let mut evented = false;
        let mut next_relist = Instant::now();
        let mut last_start: Option<Instant> = None;
        let mut failing = false;
        loop {
            let mut due = Due::default();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(next_relist) => due.all = true,
                message = feed.recv(), if feed_open => match message {
                    Some(message) => self.absorb(message, &mut evented, &mut due),
                    None => feed_open = false,
                },
                () = self.cache.wanted(), if evented => {}
            }
            // Everything else that is already waiting joins this round.
            while let Ok(message) = feed.try_recv() {
                self.absorb(message, &mut evented, &mut due);
            }
            if evented {
                due.pods.extend(self.cache.take_wanted());
            }
            let started = Instant::now();
            let result = if due.all || due.pods.len() > TARGETED_MAX {
                if let Some(last) = last_start {
                    self.metrics
                        .pleg_relist_interval
                        .observe(started.duration_since(last).as_secs_f64());
                }
                last_start = Some(started);
                let result = self.relist(&mut obs).await;
                if result.is_ok() {
                    self.metrics
                        .pleg_relist_duration
                        .observe(started.elapsed().as_secs_f64());
                    let threshold = if evented {
                        EVENTED_RELIST_THRESHOLD
                    } else {
                        RELIST_THRESHOLD
                    };
                    self.health.mark(threshold);
                }
                // A failed relist is tried again after the short period, as is one that left a
                // pod unread (an error, or a sandbox without its IP yet): no event may follow.
                let period = if evented && result.is_ok() {
                    EVENTED_RELIST_PERIOD
                } else {
                    self.period
                };
                next_relist = Instant::now() + period;
                result
            } else if due.pods.is_empty() {
                continue;
            } else {
                self.relist_pods(&mut obs, due.pods).await
            };
            if result.is_err() || !obs.inspector.failed.is_empty() {
                next_relist = next_relist.min(Instant::now() + self.period);
            }
            match result {
                Ok(changed) => {
                    if failing {
                        tracing::info!("container runtime is reachable again");
                        failing = false;
                    }
                    self.count(&obs.previous);
                    relists.send_replace(Some(Relist {
                        pods: obs.runtime.clone(),
                    }));
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
        }
    }

    /// Takes in one message of the event follower.
    fn absorb(&self, message: Feed, evented: &mut bool, due: &mut Due) {
        match message {
            Feed::Up => {
                tracing::info!(
                    relist_period_seconds = EVENTED_RELIST_PERIOD.as_secs(),
                    "following the container runtime's events"
                );
                self.metrics.evented_pleg_connection_success.inc();
                *evented = true;
                // What changed before the stream opened is read now.
                due.all = true;
            }
            Feed::Changed(Some(uid)) => {
                due.pods.insert(uid);
            }
            Feed::Changed(None) => due.all = true,
            Feed::Down {
                error,
                unimplemented,
            } => {
                if *evented {
                    tracing::warn!(%error, relist_period_seconds = self.period.as_secs_f64(), "container event stream ended; relisting until it is back");
                } else if unimplemented {
                    tracing::info!(%error, relist_period_seconds = self.period.as_secs_f64(), "the container runtime serves no container events; relisting");
                } else {
                    tracing::debug!(%error, "cannot follow the container runtime's events");
                }
                self.metrics.evented_pleg_connection_error.inc();
                if *evented {
                    // Events may have been missed.
                    due.all = true;
                }
                *evented = false;
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
                let objects = PodObjects {
                    sandboxes: HashMap::new(),
                    containers: objs.iter().map(|(id, s)| (id.to_string(), *s)).collect(),
                };
                (uid.to_string(), objects)
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
