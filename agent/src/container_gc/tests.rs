//! Container garbage collection: the pure policy as tables (and properties), the manager against
//! the fake CRI runtime with real pod and log directories.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mk_cri::{CriClient, api};
use mk_fake_runtime::{FakeRuntime, Op, ServerHandle};
use tokio::sync::watch;

use super::policy::*;
use super::*;
use crate::cm::{CgroupDriver, CgroupSettings, PodCgroups};
use crate::kuberuntime::labels;
use crate::kuberuntime::observe::{ContainerState, RuntimePod};
use crate::pleg::Relist;
use crate::sources::PodSet;
use crate::status::StatusManager;
use crate::test_cri;
use crate::volumes::VolumeManager;

// ---------- the policy ----------

const S: i64 = 1_000_000_000;
/// "Now" of the policy tables, in nanoseconds.
const NOW: i64 = 1_000_000 * S;

fn c(id: &str, uid: &str, name: &str, state: ContainerState, age_s: i64) -> ListedContainer {
    ListedContainer {
        id: id.into(),
        pod_uid: uid.into(),
        name: name.into(),
        sandbox_id: format!("sb-{uid}"),
        state,
        created_at: NOW - age_s * S,
        attempt: 0,
    }
}

fn exited(id: &str, uid: &str, age_s: i64) -> ListedContainer {
    c(id, uid, "main", ContainerState::Exited, age_s)
}

fn sb(id: &str, uid: &str, ready: bool, age_s: i64) -> ListedSandbox {
    ListedSandbox {
        id: id.into(),
        pod_uid: uid.into(),
        ready,
        created_at: NOW - age_s * S,
        attempt: 0,
    }
}

const PERIODIC: Mode = Mode {
    all_sources_ready: true,
    evict_non_deleted: false,
};
const RECLAIM: Mode = Mode {
    all_sources_ready: true,
    evict_non_deleted: true,
};
const NOT_READY: Mode = Mode {
    all_sources_ready: false,
    evict_non_deleted: false,
};

fn policy(min_age_s: u64, per_container: i32, node: i32) -> GcPolicy {
    GcPolicy {
        min_age: Duration::from_secs(min_age_s),
        max_per_pod_container: per_container,
        max_containers: node,
    }
}

fn states(pairs: &[(&str, PodState)]) -> impl Fn(&str) -> PodState {
    let map: HashMap<String, PodState> = pairs.iter().map(|(u, s)| (u.to_string(), *s)).collect();
    move |uid: &str| map.get(uid).copied().unwrap_or(PodState::Busy)
}

fn ids(removals: &[Removal]) -> Vec<&str> {
    removals.iter().map(|r| r.id.as_str()).collect()
}

#[test]
fn default_policy_is_kubelets() {
    assert_eq!(GcPolicy::default(), policy(0, 1, -1));
}

#[test]
fn container_tables() {
    use ContainerState::{Created, Exited, Running, Unknown};
    use PodState::{Active, Busy, Removed, Terminated};
    struct Case {
        name: &'static str,
        policy: GcPolicy,
        mode: Mode,
        pods: Vec<(&'static str, PodState)>,
        containers: Vec<ListedContainer>,
        removed: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "a running container and the newest dead instance stay",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Active)],
            containers: vec![
                exited("a0", "p", 40),
                exited("a1", "p", 30),
                exited("a2", "p", 20),
                c("a3", "p", "main", Running, 10),
            ],
            removed: vec!["a0", "a1"],
        },
        Case {
            name: "with the newest instance dead, it alone stays",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Active)],
            containers: vec![
                exited("a1", "p", 30),
                exited("a0", "p", 40),
                exited("a2", "p", 20),
            ],
            removed: vec!["a0", "a1"],
        },
        Case {
            name: "one unit per container name and per pod",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Active), ("q", Active)],
            containers: vec![
                exited("p0", "p", 40),
                exited("p1", "p", 30),
                c("s0", "p", "side", Exited, 35),
                exited("q0", "q", 40),
            ],
            removed: vec!["p0"],
        },
        Case {
            name: "younger than the minimum age: not dead enough to count",
            policy: policy(25, 1, -1),
            mode: PERIODIC,
            pods: vec![("p", Active)],
            containers: vec![
                exited("a0", "p", 50),
                exited("a1", "p", 40),
                exited("a2", "p", 20),
                exited("a3", "p", 10),
            ],
            removed: vec!["a0"],
        },
        Case {
            name: "a running pod's newest instance just created is being started: kept, and so is the dead one before",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Active)],
            containers: vec![exited("a0", "p", 30), c("a1", "p", "main", Created, 1)],
            removed: vec![],
        },
        Case {
            name: "an older created instance never started is dead",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Active)],
            containers: vec![
                c("a0", "p", "main", Created, 30),
                exited("a1", "p", 20),
                c("a2", "p", "main", Running, 10),
            ],
            removed: vec!["a0"],
        },
        Case {
            name: "unknown state: left alone",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Active)],
            containers: vec![c("a0", "p", "main", Unknown, 30), exited("a1", "p", 20)],
            removed: vec![],
        },
        Case {
            name: "a pod a worker may hold is not touched",
            policy: GcPolicy::default(),
            mode: RECLAIM,
            pods: vec![("p", Busy)],
            containers: vec![
                exited("a0", "p", 30),
                exited("a1", "p", 20),
                exited("a2", "p", 10),
            ],
            removed: vec![],
        },
        Case {
            name: "a removed pod loses every dead container, oldest first; a running one stays",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Removed)],
            containers: vec![
                exited("a1", "p", 20),
                exited("a0", "p", 30),
                c("b0", "p", "side", Running, 30),
            ],
            removed: vec!["a0", "a1"],
        },
        Case {
            name: "before every source has listed, a removed pod only gets the limits",
            policy: GcPolicy::default(),
            mode: NOT_READY,
            pods: vec![("p", Removed)],
            containers: vec![exited("a0", "p", 30), exited("a1", "p", 20)],
            removed: vec!["a0"],
        },
        Case {
            name: "a terminated pod keeps its newest dead instance in periodic rounds",
            policy: GcPolicy::default(),
            mode: PERIODIC,
            pods: vec![("p", Terminated)],
            containers: vec![exited("a0", "p", 30), exited("a1", "p", 20)],
            removed: vec!["a0"],
        },
        Case {
            name: "reclaiming disk, a terminated pod loses every dead container",
            policy: GcPolicy::default(),
            mode: RECLAIM,
            pods: vec![("p", Terminated), ("q", Active)],
            containers: vec![
                exited("a0", "p", 30),
                exited("a1", "p", 20),
                exited("q0", "q", 20),
            ],
            removed: vec!["a0", "a1"],
        },
        Case {
            name: "no per-container limit",
            policy: policy(0, -1, -1),
            mode: PERIODIC,
            pods: vec![("p", Active)],
            containers: vec![exited("a0", "p", 30), exited("a1", "p", 20)],
            removed: vec![],
        },
        Case {
            name: "a limit of 0 keeps a running pod's last dead instance, not a terminated pod's",
            policy: policy(0, 0, -1),
            mode: PERIODIC,
            pods: vec![("p", Active), ("t", Terminated)],
            containers: vec![
                exited("a0", "p", 30),
                exited("a1", "p", 20),
                exited("t0", "t", 30),
                exited("t1", "t", 20),
            ],
            removed: vec!["a0", "t0", "t1"],
        },
        Case {
            name: "node limit: an equal share per unit first",
            policy: policy(0, -1, 4),
            mode: PERIODIC,
            pods: vec![("p", Active), ("q", Active)],
            containers: vec![
                exited("p0", "p", 50),
                exited("p1", "p", 40),
                exited("p2", "p", 30),
                exited("q0", "q", 45),
                exited("q1", "q", 35),
                exited("q2", "q", 25),
            ],
            removed: vec!["p0", "q0"],
        },
        Case {
            name: "node limit: then the oldest, whatever their unit",
            policy: policy(0, -1, 2),
            mode: PERIODIC,
            pods: vec![("t", Terminated), ("u", Terminated), ("v", Terminated)],
            containers: vec![
                exited("t0", "t", 50),
                exited("t1", "t", 10),
                exited("u0", "u", 30),
                exited("v0", "v", 20),
            ],
            removed: vec!["t0", "u0"],
        },
        Case {
            name: "node limit: never a running pod's last dead instance",
            policy: policy(0, -1, 1),
            mode: PERIODIC,
            pods: vec![("p", Active), ("t", Terminated)],
            containers: vec![exited("p0", "p", 50), exited("t0", "t", 10)],
            removed: vec!["t0"],
        },
    ];
    for case in cases {
        let removals = containers_to_remove(
            &case.policy,
            case.mode,
            &case.containers,
            states(&case.pods),
            NOW,
        );
        assert_eq!(ids(&removals), case.removed, "{}", case.name);
    }
}

#[test]
fn removal_reasons() {
    let removals = containers_to_remove(
        &policy(0, 1, 1),
        PERIODIC,
        &[
            exited("r0", "r", 30),
            exited("a0", "a", 40),
            exited("a1", "a", 30),
            exited("t0", "t", 60),
            exited("u0", "u", 50),
        ],
        states(&[
            ("r", PodState::Removed),
            ("a", PodState::Active),
            ("t", PodState::Terminated),
            ("u", PodState::Terminated),
        ]),
        NOW,
    );
    let reasons: Vec<(&str, Reason)> = removals.iter().map(|r| (r.id.as_str(), r.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            ("r0", Reason::PodRemoved),
            ("a0", Reason::PerContainerLimit),
            ("t0", Reason::NodeLimit),
            ("u0", Reason::NodeLimit),
        ]
    );
}

#[test]
fn sandbox_tables() {
    use PodState::{Active, Busy, Removed, Terminated};
    struct Case {
        name: &'static str,
        mode: Mode,
        pods: Vec<(&'static str, PodState)>,
        sandboxes: Vec<ListedSandbox>,
        holding: Vec<&'static str>,
        removed: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "a running pod keeps its newest sandbox and inactive older ones go, oldest first",
            mode: PERIODIC,
            pods: vec![("p", Active)],
            sandboxes: vec![
                sb("s1", "p", false, 30),
                sb("s0", "p", false, 40),
                sb("s2", "p", true, 10),
            ],
            holding: vec![],
            removed: vec!["s0", "s1"],
        },
        Case {
            name: "an older sandbox holding a container is active",
            mode: PERIODIC,
            pods: vec![("p", Active)],
            sandboxes: vec![sb("s0", "p", false, 40), sb("s1", "p", true, 10)],
            holding: vec!["s0"],
            removed: vec![],
        },
        Case {
            name: "the newest sandbox stays even when dead",
            mode: PERIODIC,
            pods: vec![("p", Active)],
            sandboxes: vec![sb("s0", "p", false, 40), sb("s1", "p", false, 10)],
            holding: vec![],
            removed: vec!["s0"],
        },
        Case {
            name: "a removed pod loses every inactive sandbox",
            mode: PERIODIC,
            pods: vec![("p", Removed)],
            sandboxes: vec![
                sb("s0", "p", false, 40),
                sb("s1", "p", false, 10),
                sb("s2", "p", true, 5),
            ],
            holding: vec![],
            removed: vec!["s0", "s1"],
        },
        Case {
            name: "a terminated pod's last sandbox goes only when reclaiming",
            mode: RECLAIM,
            pods: vec![("t", Terminated), ("u", Terminated)],
            sandboxes: vec![sb("t0", "t", false, 40), sb("u0", "u", false, 40)],
            holding: vec!["u0"],
            removed: vec!["t0"],
        },
        Case {
            name: "periodic: a terminated pod keeps its newest sandbox",
            mode: PERIODIC,
            pods: vec![("t", Terminated)],
            sandboxes: vec![sb("t0", "t", false, 40)],
            holding: vec![],
            removed: vec![],
        },
        Case {
            name: "busy pods are not touched",
            mode: RECLAIM,
            pods: vec![("b", Busy)],
            sandboxes: vec![sb("b0", "b", false, 40), sb("b1", "b", false, 10)],
            holding: vec![],
            removed: vec![],
        },
        Case {
            name: "before the sources listed, a removed pod keeps its newest sandbox",
            mode: NOT_READY,
            pods: vec![("p", Removed)],
            sandboxes: vec![sb("s0", "p", false, 40), sb("s1", "p", false, 10)],
            holding: vec![],
            removed: vec!["s0"],
        },
    ];
    for case in cases {
        let holding: HashSet<String> = case.holding.iter().map(|s| s.to_string()).collect();
        let removals =
            sandboxes_to_remove(case.mode, &case.sandboxes, &holding, states(&case.pods));
        assert_eq!(ids(&removals), case.removed, "{}", case.name);
    }
}

#[test]
fn classification() {
    let desired = PodFacts {
        desired: true,
        ..PodFacts::default()
    };
    assert_eq!(classify(&desired, true), PodState::Active);
    let terminated = PodFacts {
        terminated: true,
        has_status: true,
        in_relist: true,
        ..desired
    };
    assert_eq!(classify(&terminated, true), PodState::Terminated);
    let gone = PodFacts {
        settled: true,
        ..PodFacts::default()
    };
    assert!(gone.is_candidate());
    assert_eq!(classify(&gone, true), PodState::Removed);
    assert_eq!(
        classify(&gone, false),
        PodState::Busy,
        "unknown until the sources listed"
    );
    assert_eq!(
        classify(&PodFacts::default(), true),
        PodState::Busy,
        "a candidate not yet settled"
    );
    for held in [
        PodFacts {
            has_status: true,
            ..gone
        },
        PodFacts {
            in_relist: true,
            ..gone
        },
        PodFacts {
            has_sandbox: true,
            ..gone
        },
    ] {
        assert!(!held.is_candidate());
        assert_eq!(classify(&held, true), PodState::Busy, "{held:?}");
    }
}

#[test]
fn candidates_settle() {
    let mut candidates = Candidates::default();
    let t0 = Instant::now();
    let settle = Duration::from_secs(60);
    let set = |uids: &[&str]| uids.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    assert!(candidates.update(set(&["a"]), t0, settle).is_empty());
    let t1 = t0 + Duration::from_secs(30);
    assert!(candidates.update(set(&["a", "b"]), t1, settle).is_empty());
    let t2 = t0 + settle;
    assert_eq!(
        candidates.update(set(&["a", "b"]), t2, settle),
        HashSet::from(["a".to_string()])
    );
    // `a` stopped being a candidate once (wanted again, a worker's status): it starts over.
    let t3 = t2 + Duration::from_secs(1);
    assert!(candidates.update(set(&["b"]), t3, settle).is_empty());
    let t4 = t1 + settle;
    assert_eq!(
        candidates.update(set(&["a", "b"]), t4, settle),
        HashSet::from(["b".to_string()])
    );
    assert_eq!(candidates.len(), 2);
    assert!(candidates.update(set(&[]), t4, settle).is_empty());
    assert!(candidates.is_empty());
}

#[test]
fn log_dir_names() {
    assert_eq!(log_dir_uid("default_web-node_0123abcd"), Some("0123abcd"));
    assert_eq!(
        log_dir_pod("default_web-node_0123abcd").as_deref(),
        Some("default/web-node")
    );
    assert_eq!(log_dir_uid("nouid_"), None);
    assert_eq!(log_dir_uid("plain"), None);
    assert_eq!(log_dir_uid("a_b_.."), None);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = ContainerState> {
        prop_oneof![
            Just(ContainerState::Created),
            Just(ContainerState::Running),
            Just(ContainerState::Exited),
            Just(ContainerState::Unknown),
        ]
    }

    fn pod_state() -> impl Strategy<Value = PodState> {
        prop_oneof![
            Just(PodState::Active),
            Just(PodState::Terminated),
            Just(PodState::Removed),
            Just(PodState::Busy),
        ]
    }

    fn listing() -> impl Strategy<Value = (Vec<ListedContainer>, Vec<PodState>)> {
        let container = (0..3usize, 0..2usize, state(), 0..100i64);
        (
            proptest::collection::vec(container, 0..24),
            proptest::collection::vec(pod_state(), 3),
        )
            .prop_map(|(cs, pods)| {
                let containers = cs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (pod, name, state, age))| ListedContainer {
                        id: format!("c{i}"),
                        pod_uid: format!("p{pod}"),
                        name: format!("n{name}"),
                        sandbox_id: format!("s{pod}"),
                        state,
                        created_at: NOW - age * S,
                        attempt: u32::try_from(i).unwrap_or(0),
                    })
                    .collect();
                (containers, pods)
            })
    }

    proptest! {
        /// Whatever the listing, the policy and the mode: nothing running, unknown, too young or
        /// of a busy pod goes; no ID twice; a running pod keeps its newest dead instance of each
        /// container and the instance being started; the per-container limit holds for pods
        /// not removed; the node limit holds unless running pods' last instances fill it.
        #[test]
        fn invariants(
            (containers, pods) in listing(),
            per_container in -1i32..3,
            node in -1i32..6,
            min_age in 0u64..60,
            ready in any::<bool>(),
            reclaim in any::<bool>(),
        ) {
            let gc = GcPolicy {
                min_age: Duration::from_secs(min_age),
                max_per_pod_container: per_container,
                max_containers: node,
            };
            let mode = Mode { all_sources_ready: ready, evict_non_deleted: reclaim };
            let state_of = |uid: &str| {
                let i: usize = uid.trim_start_matches('p').parse().unwrap_or(0);
                pods.get(i).copied().unwrap_or(PodState::Busy)
            };
            let removals = containers_to_remove(&gc, mode, &containers, state_of, NOW);
            let removed: HashSet<&str> = removals.iter().map(|r| r.id.as_str()).collect();
            prop_assert_eq!(removed.len(), removals.len(), "an ID twice");
            let min_age_ns = i64::try_from(gc.min_age.as_nanos()).unwrap_or(i64::MAX);
            for c in &containers {
                if !removed.contains(c.id.as_str()) {
                    continue;
                }
                prop_assert!(!matches!(c.state, ContainerState::Running | ContainerState::Unknown));
                prop_assert!(c.created_at <= NOW - min_age_ns, "too young: {:?}", c);
                prop_assert_ne!(state_of(&c.pod_uid), PodState::Busy);
            }
            // Per (pod, name), newest first.
            let mut units: HashMap<(&str, &str), Vec<&ListedContainer>> = HashMap::new();
            for c in &containers {
                units.entry((c.pod_uid.as_str(), c.name.as_str())).or_default().push(c);
            }
            let mut left_total = 0usize;
            let mut protected = 0usize;
            for ((uid, _), mut unit) in units {
                unit.sort_by_key(|c| std::cmp::Reverse((c.created_at, c.attempt)));
                let pod = state_of(uid);
                let active = pod == PodState::Active;
                let in_flight = |c: &ListedContainer| {
                    active && c.state == ContainerState::Created && c.id == unit[0].id
                };
                let evictable: Vec<&ListedContainer> = unit
                    .iter()
                    .copied()
                    .filter(|c| matches!(c.state, ContainerState::Exited | ContainerState::Created))
                    .filter(|c| c.created_at <= NOW - min_age_ns)
                    .filter(|c| !in_flight(c))
                    .collect();
                prop_assert!(!removed.contains(unit[0].id.as_str()) || !in_flight(unit[0]), "in flight");
                if active && let Some(newest_dead) = evictable.first() {
                    prop_assert!(!removed.contains(newest_dead.id.as_str()), "newest dead instance of a running pod");
                    protected += 1;
                }
                let whole_pod = mode.all_sources_ready
                    && (pod == PodState::Removed || (reclaim && pod == PodState::Terminated));
                if pod == PodState::Busy || whole_pod {
                    continue;
                }
                let left = evictable.iter().filter(|c| !removed.contains(c.id.as_str())).count();
                left_total += left;
                if let Ok(max) = usize::try_from(per_container) {
                    let limit = if active { max.max(1) } else { max };
                    prop_assert!(left <= limit, "unit {:?} keeps {}", unit, left);
                }
            }
            if let Ok(max) = usize::try_from(node) {
                prop_assert!(left_total <= max.max(protected), "{} left on the node", left_total);
            }
        }
    }
}

// ---------- the manager, on the fake runtime ----------

const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";

struct Harness {
    dir: tempfile::TempDir,
    fake: FakeRuntime,
    _server: ServerHandle,
    cri: CriClient,
    desired: watch::Sender<PodSet>,
    relists: watch::Sender<Option<Relist>>,
    status: StatusManager,
}

impl Harness {
    fn start() -> Self {
        let test_cri::FakeCri {
            dir,
            fake,
            server,
            cri,
        } = test_cri::serve_fake(&["busybox"]);
        let (desired, _) = watch::channel(PodSet {
            synced: true,
            ..PodSet::default()
        });
        let (relists, _) = watch::channel(None);
        Self {
            dir,
            fake,
            _server: server,
            cri,
            desired,
            relists,
            status: StatusManager::default(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// A recorded cgroup v2 tree (the unified hierarchy's top holds `cgroup.controllers`).
    fn cgroup_mount(&self) -> PathBuf {
        let mount = self.dir.path().join("cgroup");
        std::fs::create_dir_all(&mount).expect("cgroup mount");
        std::fs::write(mount.join("cgroup.controllers"), "cpu memory pids").expect("controllers");
        mount
    }

    fn cgroups(&self) -> PodCgroups {
        PodCgroups::new(&CgroupSettings {
            driver: CgroupDriver::Cgroupfs,
            cgroup_root: "/".into(),
            cgroups_per_qos: true,
            mount: self.cgroup_mount(),
        })
    }

    /// Pod `uid`'s cgroup under `qos` (`""` for Guaranteed), as the agent made it (its control
    /// files are gone: they vanish with `rmdir` on a real cgroup filesystem).
    fn pod_cgroup(&self, qos: &str, uid: &str) -> PathBuf {
        let dir = self
            .cgroup_mount()
            .join("kubepods")
            .join(qos)
            .join(format!("pod{uid}"));
        std::fs::create_dir_all(&dir).expect("pod cgroup");
        dir
    }

    fn gc(&self, policy: GcPolicy, settle: Duration) -> ContainerGc {
        ContainerGc::new(
            GcSources {
                cri: self.cri.clone(),
                node_name: NODE.into(),
                pod_logs_dir: self.logs(),
                volumes: VolumeManager::new(self.root(), None),
                cgroups: self.cgroups(),
                desired: self.desired.subscribe(),
                relists: self.relists.subscribe(),
                status: self.status.clone(),
            },
            policy,
            settle,
        )
    }

    fn want(&self, uids: &[&str]) {
        self.desired.send_replace(PodSet {
            synced: true,
            pods: uids
                .iter()
                .map(|uid| (uid.to_string(), Arc::new(pod(uid))))
                .collect(),
        });
    }

    fn relisted(&self, uids: &[&str]) {
        self.relists.send_replace(Some(Relist {
            pods: uids
                .iter()
                .map(|uid| (uid.to_string(), RuntimePod::default()))
                .collect(),
        }));
    }

    fn log_dir(&self, uid: &str) -> PathBuf {
        self.logs().join(format!("default_{uid}-name_{uid}"))
    }

    /// A sandbox of pod `uid` labelled for `node` (none: made by another tool), logging under
    /// the pod's log directory.
    async fn sandbox(&self, uid: &str, node: Option<&str>, attempt: u32) -> SandboxRef {
        // Runtimes reserve names per sandbox name: each node's sandbox of a UID has its own.
        let mut config = test_cri::sandbox_config(&format!("{uid}-{}", node.unwrap_or("none")));
        if let Some(m) = config.metadata.as_mut() {
            m.uid = uid.into();
            m.attempt = attempt;
        }
        if let Some(node) = node {
            config.labels = HashMap::from([
                (labels::POD_UID.to_string(), uid.to_string()),
                (labels::POD_NAME.to_string(), format!("{uid}-name")),
                (labels::POD_NAMESPACE.to_string(), "default".to_string()),
                (labels::NODE_NAME.to_string(), node.to_string()),
            ]);
        }
        config.log_directory = self.log_dir(uid).display().to_string();
        let id = test_cri::run_sandbox(&self.cri, &config).await;
        SandboxRef { id, config }
    }

    /// Container `name` (instance `attempt`) of pod `uid` for `node` in `sandbox`: running when
    /// `running`, else exited. Its log file exists.
    async fn container(
        &self,
        sandbox: &SandboxRef,
        uid: &str,
        node: &str,
        name: &str,
        attempt: u32,
        running: bool,
    ) -> String {
        let mut config = test_cri::sleeping_container(name, attempt, "busybox");
        config.labels = HashMap::from([
            (labels::POD_UID.to_string(), uid.to_string()),
            (labels::POD_NAME.to_string(), format!("{uid}-name")),
            (labels::POD_NAMESPACE.to_string(), "default".to_string()),
            (labels::CONTAINER_NAME.to_string(), name.to_string()),
            (labels::NODE_NAME.to_string(), node.to_string()),
        ]);
        config.log_path = format!("{name}/{attempt}.log");
        let log = PathBuf::from(&sandbox.config.log_directory).join(&config.log_path);
        std::fs::create_dir_all(log.parent().expect("log dir")).expect("log dir");
        std::fs::write(&log, "log\n").expect("log file");
        let id = test_cri::start_container(&self.cri, &sandbox.id, &sandbox.config, config).await;
        if !running {
            self.fake.exit_container(&id, 1, None).expect("exit");
        }
        id
    }

    async fn stop_sandbox(&self, id: &str) {
        self.cri
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .expect("stop sandbox");
    }

    fn container_ids(&self) -> HashSet<String> {
        self.fake.containers().into_iter().map(|c| c.id).collect()
    }

    fn sandbox_ids(&self) -> HashSet<String> {
        self.fake.sandboxes().into_iter().map(|s| s.id).collect()
    }

    /// A pod directory with a file, as a pod's `etc-hosts`.
    fn pod_dir(&self, uid: &str) -> PathBuf {
        let dir = self.root().join("pods").join(uid);
        std::fs::create_dir_all(&dir).expect("pod dir");
        std::fs::write(dir.join("etc-hosts"), "127.0.0.1 localhost\n").expect("pod file");
        dir
    }
}

struct SandboxRef {
    id: String,
    config: api::PodSandboxConfig,
}

fn pod(uid: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{uid}-name")),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    }
}

#[tokio::test]
async fn a_running_pod_keeps_its_running_container_and_newest_dead_instance() {
    let h = Harness::start();
    h.want(&["p"]);
    h.relisted(&["p"]);
    let s = h.sandbox("p", Some(NODE), 0).await;
    let mut ids = Vec::new();
    for attempt in 0..3 {
        ids.push(h.container(&s, "p", NODE, "main", attempt, false).await);
    }
    ids.push(h.container(&s, "p", NODE, "main", 3, true).await);
    let side = h.container(&s, "p", NODE, "side", 0, false).await;
    let rotated = h.log_dir("p").join("main/0.log.20260101-000000.gz");
    std::fs::write(&rotated, "old").expect("rotated log");

    let round = h
        .gc(GcPolicy::default(), Duration::ZERO)
        .garbage_collect(PERIODIC)
        .await
        .expect("round");

    assert_eq!(round.containers, vec![ids[0].clone(), ids[1].clone()]);
    assert_eq!(round.failed, 0);
    assert_eq!(
        h.container_ids(),
        HashSet::from([ids[2].clone(), ids[3].clone(), side])
    );
    assert!(
        !h.log_dir("p").join("main/0.log").exists(),
        "its log goes with it"
    );
    assert!(!rotated.exists(), "and its rotated logs");
    assert!(!h.log_dir("p").join("main/1.log").exists());
    assert!(
        h.log_dir("p").join("main/2.log").exists(),
        "the --previous log stays"
    );
    assert!(h.log_dir("p").join("main/3.log").exists());
    assert!(h.log_dir("p").exists());
    assert_eq!(h.sandbox_ids().len(), 1);
}

#[tokio::test]
async fn older_inactive_sandboxes_of_a_running_pod_go() {
    let h = Harness::start();
    h.want(&["p"]);
    h.relisted(&["p"]);
    let empty = h.sandbox("p", Some(NODE), 0).await;
    h.stop_sandbox(&empty.id).await;
    let holding = h.sandbox("p", Some(NODE), 1).await;
    let dead = h.container(&holding, "p", NODE, "main", 0, false).await;
    h.stop_sandbox(&holding.id).await;
    let current = h.sandbox("p", Some(NODE), 2).await;
    let running = h.container(&current, "p", NODE, "main", 1, true).await;

    let round = h
        .gc(GcPolicy::default(), Duration::ZERO)
        .garbage_collect(PERIODIC)
        .await
        .expect("round");

    assert!(round.containers.is_empty(), "{round:?}");
    assert_eq!(round.sandboxes, vec![empty.id.clone()]);
    assert_eq!(
        h.sandbox_ids(),
        HashSet::from([holding.id.clone(), current.id.clone()])
    );
    assert_eq!(h.container_ids(), HashSet::from([dead, running]));
}

#[tokio::test]
async fn another_nodes_objects_are_left_alone() {
    let h = Harness::start();
    // Even with the UID of a pod of this node: the node label decides.
    h.want(&["p"]);
    h.relisted(&["p"]);
    let mine = h.sandbox("p", Some(NODE), 0).await;
    let my_old = h.container(&mine, "p", NODE, "main", 0, false).await;
    let my_new = h.container(&mine, "p", NODE, "main", 1, false).await;
    let old = h.sandbox("p", Some(OTHER_NODE), 5).await;
    h.stop_sandbox(&old.id).await;
    let theirs = h.sandbox("p", Some(OTHER_NODE), 6).await;
    let mut their_containers = HashSet::new();
    for attempt in 0..3 {
        their_containers.insert(
            h.container(&theirs, "p", OTHER_NODE, "main", attempt, false)
                .await,
        );
    }
    h.stop_sandbox(&theirs.id).await;
    // A removed pod of the other node, with nothing of it desired here.
    let gone = h.sandbox("g", Some(OTHER_NODE), 0).await;
    their_containers.insert(h.container(&gone, "g", OTHER_NODE, "main", 0, false).await);
    their_containers.insert(h.container(&gone, "g", OTHER_NODE, "main", 1, false).await);
    h.stop_sandbox(&gone.id).await;

    let gc = h.gc(GcPolicy::default(), Duration::ZERO);
    for _ in 0..2 {
        let round = gc.collect(true).await.expect("round");
        assert!(round.sandboxes.is_empty(), "{round:?}");
        assert!(!round.containers.contains(&my_new));
    }
    let mut left = their_containers.clone();
    left.insert(my_new);
    assert_eq!(h.container_ids(), left, "only {my_old} of this node went");
    assert_eq!(
        h.sandbox_ids(),
        HashSet::from([mine.id, old.id, theirs.id, gone.id])
    );
    assert!(
        h.log_dir("g").exists(),
        "the other node's pod log directory stays"
    );
}

#[tokio::test]
async fn a_removed_pods_leftovers_go_once_it_stayed_removed_for_the_settle_time() {
    let h = Harness::start();
    h.want(&["keep"]);
    let settle = Duration::from_secs(60);
    let gc = h.gc(GcPolicy::default(), settle);
    // A container of this node whose pod has no sandbox of it (another tool made the sandbox).
    let foreign = h.sandbox("foreign", None, 0).await;
    let dead = h.container(&foreign, "x", NODE, "main", 0, false).await;
    let running = h.container(&foreign, "x", NODE, "side", 0, true).await;
    let pod_dir = h.pod_dir("x");
    let log_dir = h.log_dir("x");
    std::fs::create_dir_all(log_dir.join("main")).expect("log dir");
    // The desired pod's directories are never touched.
    let kept_dir = h.pod_dir("keep");
    let kept_logs = h.log_dir("keep");
    std::fs::create_dir_all(&kept_logs).expect("log dir");

    let t0 = Instant::now();
    let round = gc.garbage_collect_at(PERIODIC, t0).await.expect("round");
    assert!(round.is_empty(), "a fresh candidate waits: {round:?}");
    let round = gc
        .garbage_collect_at(PERIODIC, t0 + settle / 2)
        .await
        .expect("round");
    assert!(round.is_empty(), "{round:?}");

    let round = gc
        .garbage_collect_at(PERIODIC, t0 + settle)
        .await
        .expect("round");
    assert_eq!(round.containers, vec![dead.clone()]);
    assert!(
        round.pod_dirs.is_empty(),
        "the runtime still held a container of it"
    );
    assert!(pod_dir.exists());
    assert!(
        h.container_ids().contains(&running),
        "a running container stays"
    );

    // Its running container stopped (by whoever runs it) and went.
    h.cri
        .remove_container(api::RemoveContainerRequest {
            container_id: running,
        })
        .await
        .expect("remove");
    let round = gc
        .garbage_collect_at(PERIODIC, t0 + settle + Duration::from_secs(1))
        .await
        .expect("round");
    assert_eq!(round.pod_dirs, vec!["x".to_string()]);
    assert_eq!(round.log_dirs, vec![log_dir.clone()]);
    assert!(!pod_dir.exists());
    assert!(!log_dir.exists());
    assert!(kept_dir.exists() && kept_logs.exists());
    assert!(
        h.log_dir("foreign").exists(),
        "a pod with a sandbox in the runtime (any node) keeps its log directory"
    );
}

#[tokio::test]
async fn a_pod_a_worker_may_hold_is_left_alone() {
    let h = Harness::start();
    h.want(&[]);
    let gc = h.gc(GcPolicy::default(), Duration::ZERO);
    // In the last relist (an orphan's worker terminates it): its dead containers and dead
    // sandboxes are the worker's to remove.
    h.relisted(&["r"]);
    let s = h.sandbox("r", Some(NODE), 0).await;
    let r0 = h.container(&s, "r", NODE, "main", 0, false).await;
    let r1 = h.container(&s, "r", NODE, "main", 1, false).await;
    h.stop_sandbox(&s.id).await;
    let r_old = h.sandbox("r", Some(NODE), 1).await;
    h.stop_sandbox(&r_old.id).await;
    // Out of the relist but with a sandbox: the same.
    let q = h.sandbox("q", Some(NODE), 0).await;
    let q0 = h.container(&q, "q", NODE, "main", 0, false).await;
    h.stop_sandbox(&q.id).await;
    // Nothing in the runtime, but the status manager holds it: a worker is finishing it.
    h.status.set(Arc::new(pod("w")), PodStatus::default());
    let w_dir = h.pod_dir("w");
    let w_logs = h.log_dir("w");
    std::fs::create_dir_all(&w_logs).expect("log dir");

    for _ in 0..3 {
        let round = gc.collect(true).await.expect("round");
        assert!(round.is_empty(), "{round:?}");
    }
    assert_eq!(h.container_ids(), HashSet::from([r0, r1, q0]));
    assert_eq!(h.sandbox_ids().len(), 3);
    assert!(w_dir.exists() && w_logs.exists());

    // Its worker finished: the pod's directories go.
    h.status.remove("w");
    let round = gc.collect(true).await.expect("round");
    assert_eq!(round.pod_dirs, vec!["w".to_string()]);
    assert!(!w_dir.exists() && !w_logs.exists());
}

#[tokio::test]
async fn nothing_of_unknown_pods_goes_before_the_sources_listed() {
    let h = Harness::start();
    h.desired.send_replace(PodSet::default());
    let gc = h.gc(GcPolicy::default(), Duration::ZERO);
    let dir = h.pod_dir("x");
    let foreign = h.sandbox("foreign", None, 0).await;
    let x0 = h.container(&foreign, "x", NODE, "main", 0, false).await;
    for _ in 0..2 {
        let round = gc.collect(true).await.expect("round");
        assert!(round.is_empty(), "{round:?}");
    }
    assert!(dir.exists());
    assert!(h.container_ids().contains(&x0));
    // Listed: the pod really is gone.
    h.want(&[]);
    let round = gc.collect(true).await.expect("round");
    assert_eq!(round.containers, vec![x0]);
}

#[tokio::test]
async fn reclaiming_disk_empties_terminated_pods() {
    let h = Harness::start();
    h.want(&["t", "p"]);
    h.relisted(&["t", "p"]);
    h.status.set(Arc::new(pod("t")), PodStatus::default());
    h.status.mark_terminated("t");
    let t = h.sandbox("t", Some(NODE), 0).await;
    let t0 = h.container(&t, "t", NODE, "main", 0, false).await;
    let t1 = h.container(&t, "t", NODE, "main", 1, false).await;
    h.stop_sandbox(&t.id).await;
    let p = h.sandbox("p", Some(NODE), 0).await;
    let p0 = h.container(&p, "p", NODE, "main", 0, false).await;
    let p1 = h.container(&p, "p", NODE, "main", 1, true).await;
    let gc = h.gc(GcPolicy::default(), Duration::ZERO);

    let round = gc.garbage_collect(PERIODIC).await.expect("round");
    assert_eq!(round.containers, vec![t0]);
    assert!(round.sandboxes.is_empty());

    let round = gc.collect(true).await.expect("reclaim");
    assert_eq!(round.containers, vec![t1]);
    assert_eq!(round.sandboxes, vec![t.id]);
    assert_eq!(h.container_ids(), HashSet::from([p0, p1]));
    assert_eq!(h.sandbox_ids(), HashSet::from([p.id]));
}

#[tokio::test]
async fn a_failed_removal_is_counted_and_retried() {
    let h = Harness::start();
    h.want(&["p"]);
    h.relisted(&["p"]);
    let s = h.sandbox("p", Some(NODE), 0).await;
    let a0 = h.container(&s, "p", NODE, "main", 0, false).await;
    let a1 = h.container(&s, "p", NODE, "main", 1, false).await;
    let gc = h.gc(GcPolicy::default(), Duration::ZERO);
    h.fake.fail_next(Op::RemoveContainer, tonic::Code::Internal);
    let round = gc.garbage_collect(PERIODIC).await.expect("round");
    assert_eq!(round.failed, 1);
    assert!(round.containers.is_empty());
    assert!(h.container_ids().contains(&a0));

    let round = gc.garbage_collect(PERIODIC).await.expect("round");
    assert_eq!(round.containers, vec![a0]);
    assert_eq!(h.container_ids(), HashSet::from([a1]));

    h.fake.fail_next(Op::ListContainers, tonic::Code::Internal);
    assert!(matches!(
        gc.garbage_collect(PERIODIC).await,
        Err(GcError::ListContainers(_))
    ));
}

#[tokio::test]
async fn the_loop_collects_every_period() {
    let h = Harness::start();
    h.want(&["p"]);
    h.relisted(&["p"]);
    let s = h.sandbox("p", Some(NODE), 0).await;
    let a0 = h.container(&s, "p", NODE, "main", 0, false).await;
    let period = Duration::from_millis(100);
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(
        h.gc(GcPolicy::default(), period)
            .run(period, cancel.clone()),
    );
    // The first round runs at once and finds one dead instance: it stays.
    let calls_before = h.fake.call_count(Op::ListContainers);
    let a1 = h.container(&s, "p", NODE, "main", 1, false).await;
    // Rounds keep coming: a second dead instance goes within a period and a round's work
    // (deadline: 50 periods).
    let deadline = Instant::now() + period * 50;
    while h.container_ids().contains(&a0) {
        assert!(
            Instant::now() < deadline,
            "the dead instance was not collected within {:?}",
            period * 50
        );
        tokio::time::sleep(period / 10).await;
    }
    assert!(h.fake.call_count(Op::ListContainers) > calls_before);
    assert_eq!(h.container_ids(), HashSet::from([a1]));
    cancel.cancel();
    task.await.expect("the loop ends when cancelled");
}

#[test]
fn the_period_is_kubelets_unless_the_test_variable_says_otherwise() {
    // The variable is not set in unit tests.
    if std::env::var(PERIOD_ENV).is_err() {
        assert_eq!(period_from_env(), CONTAINER_GC_PERIOD);
    }
    assert_eq!(CONTAINER_GC_PERIOD, Duration::from_secs(60));
}

#[tokio::test]
async fn a_removed_pods_cgroup_goes_before_its_directory() {
    let h = Harness::start();
    h.want(&["keep"]);
    let gc = h.gc(GcPolicy::default(), Duration::ZERO);
    // Removed while the agent was down: its directory and cgroup are left.
    let dir = h.pod_dir("x");
    let cgroup = h.pod_cgroup("burstable", "x");
    // Wanted: its cgroup stays.
    let kept_dir = h.pod_dir("keep");
    let kept = h.pod_cgroup("", "keep");
    // Another agent's pod on the same host (no directory here): its cgroup is not ours to touch.
    let other = h.pod_cgroup("besteffort", "other");

    let round = gc.collect(true).await.expect("round");
    assert_eq!(round.pod_cgroups, vec!["x".to_string()]);
    assert_eq!(round.pod_dirs, vec!["x".to_string()]);
    assert_eq!(round.failed, 0, "{round:?}");
    assert!(!cgroup.exists() && !dir.exists());
    assert!(kept.exists() && kept_dir.exists());
    assert!(other.exists());

    // A cgroup that cannot go keeps the directory for the next round.
    let dir = h.pod_dir("y");
    let stuck = h.pod_cgroup("besteffort", "y");
    std::fs::write(stuck.join("left-behind"), "").expect("a file rmdir refuses");
    let round = gc.collect(true).await.expect("round");
    assert_eq!(round.failed, 1, "{round:?}");
    assert!(round.pod_dirs.is_empty() && round.pod_cgroups.is_empty());
    assert!(dir.exists());
    std::fs::remove_file(stuck.join("left-behind")).expect("rm");
    let round = gc.collect(true).await.expect("round");
    assert_eq!(round.pod_cgroups, vec!["y".to_string()]);
    assert_eq!(round.pod_dirs, vec!["y".to_string()]);
    assert!(!stuck.exists() && !dir.exists());
}
