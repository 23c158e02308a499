//! Property tests of the pure sync core: random pods × random runtime states × random probe
//! failures and deadlines, checked against the invariants pod sync must never break.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ContainerResizePolicy, PodSpec, ResourceRequirements};
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::kuberuntime::observe::{ObservedSandbox, SandboxState};
use crate::kuberuntime::resources::ContainerResources;

const S: i64 = 1_000_000_000;
const NOW: i64 = 1_000 * S;

#[derive(Debug, Clone)]
struct Case {
    pod: Pod,
    observed: ObservedPod,
    backoff: Backoff,
    pod_start_time: Option<i64>,
    probe_failures: Vec<ProbeFailure>,
}

impl Case {
    fn inputs(&self) -> SyncInputs<'_> {
        SyncInputs {
            pod: &self.pod,
            observed: &self.observed,
            backoff: &self.backoff,
            now: NOW,
            pod_start_time: self.pod_start_time,
            probe_failures: &self.probe_failures,
        }
    }

    fn spec(&self) -> &PodSpec {
        self.pod.spec.as_ref().expect("generated pods have a spec")
    }

    fn inits(&self) -> &[Container] {
        self.spec().init_containers.as_deref().unwrap_or_default()
    }

    fn is_app(&self, name: &str) -> bool {
        self.spec().containers.iter().any(|c| c.name == name)
    }
}

/// The resources a generated container may have: none, or one of a few request / limit sets.
fn resource_profiles() -> Vec<Option<ResourceRequirements>> {
    let set = |json: serde_json::Value| Some(serde_json::from_value(json).expect("resources"));
    vec![
        None,
        set(serde_json::json!({"requests": {"cpu": "100m", "memory": "64Mi"}})),
        set(serde_json::json!({"limits": {"cpu": "200m", "memory": "128Mi"}})),
        set(
            serde_json::json!({"requests": {"cpu": "300m"}, "limits": {"cpu": "500m", "memory": "256Mi"}}),
        ),
    ]
}

/// The resize policies a generated container may have.
fn resize_policies() -> Vec<Option<Vec<ContainerResizePolicy>>> {
    let policy = |resource: &str, restart: &str| ContainerResizePolicy {
        resource_name: resource.into(),
        restart_policy: restart.into(),
    };
    vec![
        None,
        Some(vec![policy("cpu", "RestartContainer")]),
        Some(vec![policy("memory", "RestartContainer")]),
        Some(vec![
            policy("cpu", "NotRequired"),
            policy("memory", "NotRequired"),
        ]),
    ]
}

/// 1–3 app containers, 0–2 init containers (each maybe a native sidecar), any restart policy, an
/// optional active deadline; each container with some resources and resize policy.
fn pods() -> impl Strategy<Value = Pod> {
    (
        1..=3usize,
        prop::collection::vec(any::<bool>(), 0..=2),
        prop::sample::select(vec!["Always", "OnFailure", "Never"]),
        prop::option::of(0..120i64),
        prop::collection::vec((0..4usize, 0..4usize), 5),
    )
        .prop_map(|(apps, sidecars, policy, deadline, resources)| {
            let mut resources = resources.into_iter();
            let mut container = |name: String| {
                let (profile, resize) = resources.next().unwrap_or_default();
                Container {
                    name,
                    image: Some("busybox:1.36".into()),
                    resources: resource_profiles()[profile].clone(),
                    resize_policy: resize_policies()[resize].clone(),
                    ..Default::default()
                }
            };
            let inits: Vec<Container> = sidecars
                .iter()
                .enumerate()
                .map(|(i, &sidecar)| Container {
                    restart_policy: sidecar.then(|| "Always".to_string()),
                    ..container(format!("init{i}"))
                })
                .collect();
            Pod {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some("p".into()),
                    namespace: Some("ns".into()),
                    uid: Some("u1".into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    restart_policy: Some(policy.into()),
                    active_deadline_seconds: deadline,
                    containers: (0..apps).map(|i| container(format!("app{i}"))).collect(),
                    init_containers: (!inits.is_empty()).then_some(inits),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
}

/// One container instance: which spec name, state, exit code, sandbox, creation time, attempt,
/// whether it runs an outdated spec, how long ago it finished, and the resources applied to it
/// (unknown, or those of a resource profile).
type InstanceSeed = (Index, usize, i32, Index, i64, u32, bool, i64, Option<usize>);

fn instance_seeds() -> impl Strategy<Value = Vec<InstanceSeed>> {
    prop::collection::vec(
        (
            any::<Index>(),
            0..4usize,
            prop::sample::select(vec![0, 1, 137]),
            any::<Index>(),
            0..20i64,
            0..5u32,
            prop::bool::weighted(0.15),
            0..400i64,
            prop::option::of(0..4usize),
        ),
        0..=6,
    )
}

fn cases() -> impl Strategy<Value = Case> {
    (
        pods(),
        // Sandboxes: attempt, ready, creation time.
        prop::collection::vec((0..3u32, any::<bool>(), 0..10i64), 0..=2),
        instance_seeds(),
        // Probe failures: which instances, plus maybe one for an instance the runtime no longer has.
        prop::collection::vec(any::<Index>(), 0..3),
        any::<bool>(),
        prop::option::of(0..200i64),
        // Crash-loop back-off entries: which container, how long ago the last restart was.
        prop::collection::vec((any::<Index>(), 0..700i64), 0..3),
    )
        .prop_map(
            |(pod, sandboxes, seeds, failed, ghost, started_ago, backoffs)| {
                let spec = pod.spec.clone().expect("generated pods have a spec");
                let all: Vec<Container> = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                    .cloned()
                    .collect();
                let sandboxes: Vec<ObservedSandbox> = sandboxes
                    .into_iter()
                    .enumerate()
                    .map(|(i, (attempt, ready, created))| ObservedSandbox {
                        id: format!("s{i}"),
                        attempt,
                        state: if ready {
                            SandboxState::Ready
                        } else {
                            SandboxState::NotReady
                        },
                        created_at: created * S,
                        ips: vec![],
                    })
                    .collect();
                let states = [
                    ContainerState::Created,
                    ContainerState::Running,
                    ContainerState::Exited,
                    ContainerState::Unknown,
                ];
                // Containers live in sandboxes: none without one.
                let containers: Vec<ObservedContainer> = if sandboxes.is_empty() {
                    vec![]
                } else {
                    seeds
                        .into_iter()
                        .enumerate()
                        .map(
                            |(
                                i,
                                (name, state, exit, sandbox, created, attempt, stale, ago, applied),
                            )| {
                                let spec = name.get(&all);
                                let applied = applied.map(|profile| {
                                    let created = Container {
                                        resources: resource_profiles()[profile].clone(),
                                        ..spec.clone()
                                    };
                                    ContainerResources::desired(&pod, &created)
                                });
                                let state = states[state];
                                let exited = state == ContainerState::Exited;
                                ObservedContainer {
                                    id: format!("c{i}"),
                                    name: spec.name.clone(),
                                    sandbox_id: sandbox.get(&sandboxes).id.clone(),
                                    attempt,
                                    state: Some(state),
                                    created_at: created * S,
                                    started_at: created * S,
                                    finished_at: if exited { NOW - ago * S } else { 0 },
                                    exit_code: if exited { exit } else { 0 },
                                    hash: if stale {
                                        "stale".into()
                                    } else {
                                        container_hash(spec)
                                    },
                                    restart_count: i32::try_from(attempt).expect("small"),
                                    resources: applied,
                                    ..Default::default()
                                }
                            },
                        )
                        .collect()
                };
                let mut probe_failures: Vec<ProbeFailure> = if containers.is_empty() {
                    vec![]
                } else {
                    failed
                        .iter()
                        .map(|i| {
                            let c = i.get(&containers);
                            ProbeFailure {
                                container_id: c.id.clone(),
                                container_name: c.name.clone(),
                                message: format!("Container {} failed liveness probe", c.name),
                            }
                        })
                        .collect()
                };
                if ghost {
                    probe_failures.push(ProbeFailure {
                        container_id: "gone".into(),
                        container_name: all[0].name.clone(),
                        message: "Container gone failed startup probe".into(),
                    });
                }
                let mut backoff = Backoff::default();
                for (which, ago) in backoffs {
                    backoff.next(&backoff_key(&pod, which.get(&all)), NOW - ago * S);
                }
                let mut observed = ObservedPod {
                    sandboxes,
                    containers,
                };
                observed.sort();
                Case {
                    pod,
                    observed,
                    backoff,
                    pod_start_time: started_ago.map(|ago| NOW - ago * S),
                    probe_failures,
                }
            },
        )
}

fn killed(actions: &PodActions, c: &ObservedContainer) -> bool {
    actions.kill_pod || actions.kill.iter().any(|k| k.id == c.id)
}

proptest! {
    /// Applying the actions never leaves two running instances of a container: a start of a name
    /// whose running instance is not stopped first is a violation, as is starting a name twice. In a
    /// kept sandbox, older instances still running are stopped as well.
    #[test]
    fn never_two_running_instances_of_a_container(case in cases()) {
        let actions = compute_with(&case.inputs());
        let mut running: HashMap<&str, usize> = HashMap::new();
        for c in &case.observed.containers {
            if c.state() == ContainerState::Running && !killed(&actions, c) {
                *running.entry(c.name.as_str()).or_default() += 1;
            }
        }
        let mut started: HashMap<&str, usize> = HashMap::new();
        for s in &actions.start {
            *started.entry(s.name.as_str()).or_default() += 1;
        }
        for (name, n) in &started {
            prop_assert_eq!(*n, 1, "{} started twice: {:?}", name, actions);
            prop_assert!(
                !running.contains_key(name),
                "{} started while an instance keeps running: {:?}",
                name,
                actions
            );
        }
        if actions.sandbox_id.is_some() && !actions.kill_pod {
            for (name, n) in &running {
                prop_assert!(*n <= 1, "{} left running {} times: {:?}", name, n, actions);
            }
        }
    }

    /// App containers start only in a sandbox where every (non-sidecar) init container has
    /// succeeded; a new sandbox starts with its first init container, or its app containers when it
    /// has none.
    #[test]
    fn app_containers_start_only_after_init_containers_succeeded(case in cases()) {
        let actions = compute_with(&case.inputs());
        let inits = case.inits();
        let apps: Vec<&ContainerStart> = actions.start.iter().filter(|s| !s.init).collect();
        for s in &actions.start {
            prop_assert_eq!(s.init, !case.is_app(&s.name), "init flag of {}", s.name);
        }
        if actions.create_sandbox.is_some() {
            if let Some(first) = inits.first() {
                for s in &actions.start {
                    prop_assert_eq!(&s.name, &first.name, "new sandbox: {:?}", actions);
                }
            }
            return Ok(());
        }
        if apps.is_empty() {
            return Ok(());
        }
        let sandbox = actions.sandbox_id.as_deref();
        prop_assert!(sandbox.is_some(), "a start with neither a new nor a kept sandbox: {:?}", actions);
        let sandbox = sandbox.expect("checked");
        for init in inits.iter().filter(|c| !is_sidecar(c)) {
            let done = latest_in(&case.observed, &init.name, sandbox)
                .is_some_and(|c| c.state() == ContainerState::Exited && c.exit_code == 0);
            prop_assert!(done, "app started before {} succeeded in {}: {:?}", init.name, sandbox, actions);
        }
    }

    /// A pod being stopped for good, or failed, gets nothing started and no new sandbox.
    #[test]
    fn a_failed_or_stopped_pod_starts_nothing(case in cases()) {
        let actions = compute_with(&case.inputs());
        let past_deadline =
            deadline_remaining(&case.pod, case.pod_start_time, NOW) == Some(Duration::ZERO);
        prop_assert_eq!(actions.fail_pod.is_some(), past_deadline);
        if actions.fail_pod.is_some() {
            prop_assert!(actions.kill_pod);
            prop_assert!(actions.create_sandbox.is_none() && actions.start.is_empty(), "{:?}", actions);
        }
        if actions.kill_pod && actions.create_sandbox.is_none() {
            prop_assert!(actions.start.is_empty(), "{:?}", actions);
        }
        if actions.create_sandbox.is_none() && actions.sandbox_id.is_none() {
            prop_assert!(actions.start.is_empty(), "a start with no sandbox: {:?}", actions);
        }
    }

    /// Starts name spec containers; kills and removals name instances the runtime has, and only dead
    /// ones are removed.
    #[test]
    fn actions_target_only_known_containers(case in cases()) {
        let actions = compute_with(&case.inputs());
        let spec = case.spec();
        for s in &actions.start {
            let known = spec
                .containers
                .iter()
                .chain(case.inits())
                .any(|c| c.name == s.name);
            prop_assert!(known, "start of unknown {}", s.name);
        }
        let by_id = |id: &str| case.observed.containers.iter().find(|c| c.id == id);
        for k in &actions.kill {
            prop_assert!(by_id(&k.id).is_some(), "kill of unknown {}", k.id);
        }
        for id in &actions.remove_containers {
            let c = by_id(id);
            prop_assert!(c.is_some_and(|c| c.state() == ContainerState::Exited), "removal of {}", id);
        }
        let mut ids: Vec<&str> = actions.kill.iter().map(|k| k.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), actions.kill.len(), "an instance killed twice: {:?}", actions);
    }

    /// An in-place update only ever targets the running, newest instance of a container in the kept
    /// sandbox, one not stopped in the same turn nor replaced by a start, in a pod that keeps running;
    /// and each container is updated at most once.
    #[test]
    fn updates_target_only_running_kept_instances(case in cases()) {
        let actions = compute_with(&case.inputs());
        if actions.update_resources.is_empty() {
            return Ok(());
        }
        prop_assert!(!actions.kill_pod && actions.fail_pod.is_none(), "{:?}", actions);
        let sandbox = actions.sandbox_id.as_deref();
        prop_assert!(sandbox.is_some(), "an update with no kept sandbox: {:?}", actions);
        let sandbox = sandbox.expect("checked");
        let mut names: Vec<&str> = Vec::new();
        for u in &actions.update_resources {
            let current = latest_in(&case.observed, &u.name, sandbox);
            prop_assert!(
                current.is_some_and(|c| c.id == u.id && c.state() == ContainerState::Running),
                "update of {} which is not the running instance: {:?}", u.id, actions
            );
            prop_assert!(!actions.kill.iter().any(|k| k.id == u.id), "updated and killed: {:?}", actions);
            prop_assert!(!actions.start.iter().any(|s| s.name == u.name), "updated and started: {:?}", actions);
            prop_assert!(u.from != u.to, "an update that changes nothing: {:?}", u);
            names.push(&u.name);
        }
        names.sort_unstable();
        names.dedup();
        prop_assert_eq!(names.len(), actions.update_resources.len(), "{:?}", actions);
    }

    /// A resize only restarts a container whose resize policy says `RestartContainer` for a resource
    /// that changed: a `NotRequired` change never kills.
    #[test]
    fn a_not_required_resize_never_kills(case in cases()) {
        let actions = compute_with(&case.inputs());
        let spec = case.spec();
        for k in actions.kill.iter().filter(|k| k.reason.ends_with("resize requires restart")) {
            let container = spec.containers.iter().chain(case.inits()).find(|c| c.name == k.name);
            let instance = case.observed.containers.iter().find(|c| c.id == k.id);
            prop_assert!(container.is_some() && instance.is_some(), "{:?}", k);
            let (container, instance) = (container.expect("checked"), instance.expect("checked"));
            let applied = instance.resources.expect("a resize needs known resources");
            let desired = ContainerResources::desired(&case.pod, container);
            let restarts = |resource: &str| {
                container.resize_policy.iter().flatten().any(|p| {
                    p.resource_name == resource && p.restart_policy == "RestartContainer"
                })
            };
            prop_assert!(
                (applied.cpu_differs(&desired) && restarts("cpu"))
                    || (applied.memory_differs(&desired) && restarts("memory")),
                "{} restarted for a resize its policy does not restart for: {:?}", k.name, actions
            );
        }
    }

    /// Once the runtime holds what an update applied, the next turn has nothing more to update.
    #[test]
    fn an_applied_update_is_not_repeated(case in cases()) {
        let actions = compute_with(&case.inputs());
        if actions.update_resources.is_empty() {
            return Ok(());
        }
        let mut after = case.clone();
        for c in &mut after.observed.containers {
            if let Some(u) = actions.update_resources.iter().find(|u| u.id == c.id) {
                c.resources = Some(u.to);
            }
        }
        let again = compute_with(&after.inputs());
        for u in &again.update_resources {
            prop_assert!(
                !actions.update_resources.iter().any(|done| done.id == u.id),
                "{} updated twice: {:?} then {:?}", u.id, actions, again
            );
        }
    }

    /// Same inputs, same decision; and `compute` is `compute_with` without probes or a deadline.
    #[test]
    fn compute_is_deterministic(case in cases()) {
        let inputs = case.inputs();
        prop_assert_eq!(compute_with(&inputs), compute_with(&inputs));
        prop_assert_eq!(
            compute(&case.pod, &case.observed, &case.backoff, NOW),
            compute_with(&SyncInputs { pod_start_time: None, probe_failures: &[], ..inputs })
        );
    }
}
