//! The pure decision of container garbage collection (kubelet's `containerGC`,
//! `pkg/kubelet/kuberuntime/kuberuntime_gc.go`): given this node's containers and sandboxes as
//! the runtime lists them and what each pod is to the agent, which to remove, oldest first.
//!
//! * Containers (kubelet's `evictContainers`): the dead ones (exited, or created and never
//!   started) older than `min_age` form one "evict unit" per (pod UID, container name). Units of
//!   removed pods go whole; every other unit keeps its newest `max_per_pod_container` instances;
//!   with `max_containers` set, each unit then keeps `max_containers / units` (at least one) and,
//!   if the node still holds too many, the oldest go whatever their unit.
//! * Sandboxes (kubelet's `evictSandboxes`): a sandbox is active while ready or while any container
//!   is in it. A removed pod loses every inactive sandbox; any other pod keeps its newest sandbox
//!   and loses the older inactive ones.
//!
//! Where the agent is more careful than kubelet (its pod workers run beside this and it cannot
//! ask them): a pod a worker may still be acting on ([`PodState::Busy`]) is not touched at all; a
//! running pod's newest instance of a container that was created but not yet started is being
//! started by its worker and is not dead; containers in an unknown state are left alone (kubelet
//! kills them first); and no limit takes a running pod's last dead instance of a container (its
//! lastState, or its init container's completion, which the sync core reads from it: kubelet's
//! `computePodActions` copes with a collected init container, this sync core would run it again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::kuberuntime::observe::ContainerState;

/// kubelet's `GCPolicy`, from its (deprecated) flags `--minimum-container-ttl-duration`,
/// `--maximum-dead-containers-per-container` and `--maximum-dead-containers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// A dead container younger than this (since its creation) is kept.
    pub min_age: Duration,
    /// Dead instances kept per container of a pod; negative: no limit.
    pub max_per_pod_container: i32,
    /// Dead containers kept on the node; negative: no limit.
    pub max_containers: i32,
}

impl Default for GcPolicy {
    /// kubelet's defaults: no minimum age, one dead instance per container, no node-wide limit.
    fn default() -> Self {
        Self {
            min_age: Duration::ZERO,
            max_per_pod_container: 1,
            max_containers: -1,
        }
    }
}

/// What a pod is to the agent, for garbage collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Wanted on this node; its worker runs it: only dead instances beyond the limits and older
    /// inactive sandboxes go.
    Active,
    /// Wanted, but its worker has terminated it (a Succeeded, Failed or evicted pod the API server
    /// has not deleted yet): as [`PodState::Active`], and when reclaiming disk everything dead goes
    /// (kubelet's `ShouldPodRuntimeBeRemoved`).
    Terminated,
    /// Nobody wants it and no worker holds it, once every source has listed its pods: everything
    /// dead goes, and its directories (kubelet's `ShouldPodContentBeRemoved`).
    Removed,
    /// A worker may still be acting on it (terminating or removing it): nothing of it is touched.
    Busy,
}

/// One container of this node as ListContainers shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedContainer {
    pub id: String,
    pub pod_uid: String,
    /// The container's name in the pod.
    pub name: String,
    pub sandbox_id: String,
    pub state: ContainerState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub attempt: u32,
}

/// One sandbox of this node as ListPodSandbox shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSandbox {
    pub id: String,
    pub pod_uid: String,
    pub ready: bool,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub attempt: u32,
}

/// Why an object is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its pod was removed from the node.
    PodRemoved,
    /// Its pod was terminated and disk is being reclaimed.
    PodTerminated,
    /// More dead instances of the container than `max_per_pod_container`.
    PerContainerLimit,
    /// More dead containers on the node than `max_containers`.
    NodeLimit,
    /// An inactive sandbox older than the pod's newest one.
    OlderSandbox,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PodRemoved => "pod removed",
            Reason::PodTerminated => "pod terminated",
            Reason::PerContainerLimit => "dead instances of the container beyond the limit",
            Reason::NodeLimit => "dead containers of the node beyond the limit",
            Reason::OlderSandbox => "inactive sandbox older than the newest",
        }
    }
}

/// One object to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub id: String,
    pub pod_uid: String,
    pub reason: Reason,
}

/// How a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Every pod source has listed its pods: a pod missing from them is really gone.
    pub all_sources_ready: bool,
    /// Reclaiming disk (kubelet's `DeleteAllUnusedContainers`): terminated pods lose everything
    /// dead too.
    pub evict_non_deleted: bool,
}

/// Newest first: by creation time, then attempt, then ID (a total order).
fn newest_first(a: (i64, u32, &str), b: (i64, u32, &str)) -> std::cmp::Ordering {
    b.cmp(&a)
}

fn container_key(c: &ListedContainer) -> (i64, u32, &str) {
    (c.created_at, c.attempt, c.id.as_str())
}

/// The containers to remove, in order (oldest first within each step).
pub fn containers_to_remove(
    policy: &GcPolicy,
    mode: Mode,
    containers: &[ListedContainer],
    pod_state: impl Fn(&str) -> PodState,
    now_ns: i64,
) -> Vec<Removal> {
    let min_age = i64::try_from(policy.min_age.as_nanos()).unwrap_or(i64::MAX);
    let newest_gc_time = now_ns.saturating_sub(min_age);
    // Each container's newest instance, whatever its state.
    let mut newest: HashMap<(&str, &str), &ListedContainer> = HashMap::new();
    for c in containers {
        let slot = newest
            .entry((c.pod_uid.as_str(), c.name.as_str()))
            .or_insert(c);
        if container_key(c) > container_key(slot) {
            *slot = c;
        }
    }
    let mut units: BTreeMap<(&str, &str), Vec<&ListedContainer>> = BTreeMap::new();
    let mut states: HashMap<&str, PodState> = HashMap::new();
    for c in containers {
        if matches!(c.state, ContainerState::Running | ContainerState::Unknown)
            || c.created_at > newest_gc_time
        {
            continue;
        }
        let state = *states
            .entry(c.pod_uid.as_str())
            .or_insert_with(|| pod_state(&c.pod_uid));
        let key = (c.pod_uid.as_str(), c.name.as_str());
        let in_flight = c.state == ContainerState::Created
            && state == PodState::Active
            && newest.get(&key).is_some_and(|n| n.id == c.id);
        if state == PodState::Busy || in_flight {
            continue;
        }
        units.entry(key).or_default().push(c);
    }
    for unit in units.values_mut() {
        unit.sort_by(|a, b| newest_first(container_key(a), container_key(b)));
    }

    let mut removals = Vec::new();
    if mode.all_sources_ready {
        units.retain(|(uid, _), unit| {
            let reason = match states.get(uid) {
                Some(PodState::Removed) => Reason::PodRemoved,
                Some(PodState::Terminated) if mode.evict_non_deleted => Reason::PodTerminated,
                _ => return true,
            };
            remove_oldest(unit, unit.len(), reason, &mut removals);
            false
        });
    }
    let active = |uid: &str| states.get(uid) == Some(&PodState::Active);
    if let Ok(max) = usize::try_from(policy.max_per_pod_container) {
        enforce_per_unit(
            &mut units,
            max,
            &active,
            Reason::PerContainerLimit,
            &mut removals,
        );
    }
    if let Ok(max) = usize::try_from(policy.max_containers) {
        let total: usize = units.values().map(Vec::len).sum();
        if total > max {
            // Leave an equal number per unit (at least one)...
            let per_unit = (max / units.len().max(1)).max(1);
            enforce_per_unit(
                &mut units,
                per_unit,
                &active,
                Reason::NodeLimit,
                &mut removals,
            );
            // ...and if that is still too many, the oldest go, but never a running pod's last
            // instance of a container.
            let total: usize = units.values().map(Vec::len).sum();
            if total > max {
                let mut flattened: Vec<(&ListedContainer, bool)> = units
                    .iter()
                    .flat_map(|((uid, _), unit)| {
                        let active = active(uid);
                        unit.iter()
                            .enumerate()
                            .map(move |(i, c)| (*c, active && i == 0))
                    })
                    .collect();
                flattened.sort_by(|a, b| newest_first(container_key(a.0), container_key(b.0)));
                let mut excess = total - max;
                for (c, protected) in flattened.iter().rev() {
                    if excess == 0 {
                        break;
                    }
                    if *protected {
                        continue;
                    }
                    removals.push(removal(c, Reason::NodeLimit));
                    excess -= 1;
                }
            }
        }
    }
    removals
}

fn removal(c: &ListedContainer, reason: Reason) -> Removal {
    Removal {
        id: c.id.clone(),
        pod_uid: c.pod_uid.clone(),
        reason,
    }
}

/// Removes the `n` oldest of a unit sorted newest first; keeps the rest in it.
fn remove_oldest(
    unit: &mut Vec<&ListedContainer>,
    n: usize,
    reason: Reason,
    removals: &mut Vec<Removal>,
) {
    let keep = unit.len().saturating_sub(n);
    removals.extend(unit.drain(keep..).rev().map(|c| removal(c, reason)));
}

/// Keeps the newest `max` instances of every unit; a running pod's unit keeps at least one (the
/// sync core reads a completed init container and lastState from it).
fn enforce_per_unit(
    units: &mut BTreeMap<(&str, &str), Vec<&ListedContainer>>,
    max: usize,
    active: &impl Fn(&str) -> bool,
    reason: Reason,
    removals: &mut Vec<Removal>,
) {
    for ((uid, _), unit) in units.iter_mut() {
        let keep = if active(uid) { max.max(1) } else { max };
        if unit.len() > keep {
            let n = unit.len() - keep;
            remove_oldest(unit, n, reason, removals);
        }
    }
}

/// The sandboxes to remove, given the IDs of the sandboxes that still hold a container (of any
/// node) once the containers of the round are removed.
pub fn sandboxes_to_remove(
    mode: Mode,
    sandboxes: &[ListedSandbox],
    holding_containers: &HashSet<String>,
    pod_state: impl Fn(&str) -> PodState,
) -> Vec<Removal> {
    let mut by_pod: BTreeMap<&str, Vec<&ListedSandbox>> = BTreeMap::new();
    for s in sandboxes {
        by_pod.entry(s.pod_uid.as_str()).or_default().push(s);
    }
    let mut removals = Vec::new();
    for (uid, mut pod_sandboxes) in by_pod {
        let state = pod_state(uid);
        let reason = match state {
            PodState::Busy => continue,
            PodState::Removed if mode.all_sources_ready => Reason::PodRemoved,
            PodState::Terminated if mode.all_sources_ready && mode.evict_non_deleted => {
                Reason::PodTerminated
            }
            _ => Reason::OlderSandbox,
        };
        let keep = usize::from(reason == Reason::OlderSandbox);
        pod_sandboxes.sort_by(|a, b| {
            newest_first(
                (a.created_at, a.attempt, a.id.as_str()),
                (b.created_at, b.attempt, b.id.as_str()),
            )
        });
        removals.extend(
            pod_sandboxes
                .iter()
                .skip(keep)
                .rev()
                .filter(|s| !s.ready && !holding_containers.contains(&s.id))
                .map(|s| Removal {
                    id: s.id.clone(),
                    pod_uid: s.pod_uid.clone(),
                    reason,
                }),
        );
    }
    removals
}

/// What the agent knows of a pod UID found in the runtime or on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// In the pod set the sources want on this node.
    pub desired: bool,
    /// Its worker has terminated it (the status manager says so).
    pub terminated: bool,
    /// The status manager holds its status: a worker published it and has not removed the pod.
    pub has_status: bool,
    /// The PLEG's last relist holds it (the pod workers start a worker for any such pod nobody
    /// wants, to terminate and remove it).
    pub in_relist: bool,
    /// A sandbox of the pod UID exists in the runtime, whatever its node.
    pub has_sandbox: bool,
    /// It has been a [`PodFacts::is_candidate`] for at least the settle time.
    pub settled: bool,
}

impl PodFacts {
    /// Nothing says a worker holds it: it may be removed once that has stayed so for a while.
    pub fn is_candidate(&self) -> bool {
        !self.desired && !self.has_status && !self.in_relist && !self.has_sandbox
    }
}

/// What a pod is to garbage collection.
pub fn classify(facts: &PodFacts, all_sources_ready: bool) -> PodState {
    if facts.desired {
        return if facts.terminated {
            PodState::Terminated
        } else {
            PodState::Active
        };
    }
    if all_sources_ready && facts.is_candidate() && facts.settled {
        PodState::Removed
    } else {
        PodState::Busy
    }
}

/// The pod UIDs that have been removal candidates round after round, with when each was first
/// seen as one. A worker finishing a removed pod (its sandbox gone, its files still being torn
/// down) shows no trace in the runtime for a moment: a pod becomes [`PodState::Removed`] only
/// once it stayed a candidate for the settle time.
#[derive(Debug, Default)]
pub struct Candidates {
    since: HashMap<String, Instant>,
}

impl Candidates {
    /// Records the candidates of a round at `now` (forgetting those no longer candidates) and
    /// returns those that have been candidates for at least `settle`.
    pub fn update(
        &mut self,
        candidates: impl IntoIterator<Item = String>,
        now: Instant,
        settle: Duration,
    ) -> HashSet<String> {
        let current: HashSet<String> = candidates.into_iter().collect();
        self.since.retain(|uid, _| current.contains(uid));
        for uid in &current {
            self.since.entry(uid.clone()).or_insert(now);
        }
        self.since
            .iter()
            .filter(|(_, first)| now.saturating_duration_since(**first) >= settle)
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

/// The pod UID of a pod log directory `<namespace>_<name>_<uid>` (kubelet's
/// `parsePodUIDFromLogsDirectory`: what follows the last `_`).
pub fn log_dir_uid(name: &str) -> Option<&str> {
    name.rsplit_once('_')
        .map(|(_, uid)| uid)
        .filter(|uid| !uid.is_empty() && *uid != "." && *uid != "..")
}

/// `namespace/name` from a pod log directory `<namespace>_<name>_<uid>`.
pub fn log_dir_pod(name: &str) -> Option<String> {
    let (rest, _) = name.rsplit_once('_')?;
    let (namespace, pod) = rest.split_once('_')?;
    Some(format!("{namespace}/{pod}"))
}
