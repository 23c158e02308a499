//! The shutdown manager against the fake CRI runtime, with tokio's paused clock: a test node is the
//! real PLEG, pod cache, pod workers and runtime manager, driven by the agent's sync loop without
//! admission (as in `pod_workers/tests.rs`); the manager stops its pods through the same
//! `PodKiller` the agent wires. Plan tables (which pod in which group with which seconds), the
//! admission handler and the read-back of the shutdown from the stand-in API server are here too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use mk_fake_runtime::{FakeRuntime, Op, ServerHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::manager::{ApiTarget, Report};
use super::plan::{self, SYSTEM_CRITICAL_PRIORITY};
use super::state_file::StateFile;
use super::*;
use crate::config::ShutdownGracePeriodByPodPriority;
use crate::events::EventRecorder;
use crate::kuberuntime::labels;
use crate::pod_workers::test_context::{
    LoopHooks, RunningNode, TestContext, run_node, test_context,
};
use crate::pod_workers::{KillPod, KillRequest, PodKiller};
use crate::sources::{PodSet, manifest};
use crate::status::StatusManager;

const NODE: &str = "shutdown-node";
/// kubelet's PLEG relist period.
const RELIST: Duration = Duration::from_secs(1);
/// A pod's start or stop takes a relist to be seen, a turn, and a relist to see the result.
const CONVERGE: Duration = Duration::from_secs(5);

fn bands(regular: i64, critical: i64) -> Vec<ShutdownGracePeriodByPodPriority> {
    plan::migrate_config(
        Duration::from_secs(u64::try_from(regular + critical).expect("seconds")),
        Duration::from_secs(u64::try_from(critical).expect("seconds")),
    )
}

/// An API pod running `command` with `priority` (unset: none) and a grace period.
fn api_pod(name: &str, priority: Option<i32>, grace: i64, command: &str) -> Arc<Pod> {
    let mut spec = serde_json::json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace,
        "containers": [{"name": "app", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", command]}],
    });
    if let Some(p) = priority {
        spec["priority"] = p.into();
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": spec,
    }))
    .expect("pod");
    Arc::new(pod)
}

/// A static pod (priority class named in the manifest, no numeric priority: as kubelet reads it).
fn static_pod(name: &str, grace: i64) -> Arc<Pod> {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\nspec:\n  \
         priorityClassName: system-node-critical\n  terminationGracePeriodSeconds: {grace}\n  \
         containers:\n  - name: app\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    \
         command: [sleep, infinity]\n"
    );
    let pod = manifest::decode(
        &yaml,
        Path::new(&format!("/etc/manifests/{name}.yaml")),
        NODE,
    )
    .expect("manifest");
    Arc::new(pod)
}

/// Pods (UIDs or names) and the seconds each gets.
type PodGraces = Vec<(String, i64)>;

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn set(pods: &[&Arc<Pod>]) -> PodSet {
    PodSet {
        pods: pods.iter().map(|p| (uid(p), Arc::clone(p))).collect(),
        synced: true,
    }
}

/// A kill request the node received: for which pod, with what.
#[derive(Debug, Clone)]
struct Received {
    uid: String,
    kill: KillPod,
}

/// Records the kill requests the sync loop receives.
struct RecordKills(Arc<Mutex<Vec<Received>>>);

impl LoopHooks for RecordKills {
    fn on_kill(&mut self, request: &KillRequest) {
        if let Ok(mut received) = self.0.lock() {
            received.push(Received {
                uid: request.uid.clone(),
                kill: request.kill.clone(),
            });
        }
    }
}

/// A test node on a fake runtime, and a shutdown manager for it.
struct TestNode {
    fake: FakeRuntime,
    dir: tempfile::TempDir,
    _server: ServerHandle,
    desired: watch::Sender<PodSet>,
    status: StatusManager,
    killer: PodKiller,
    received: Arc<Mutex<Vec<Received>>>,
    /// The agent's token: the manager cancels it when the sequence is over.
    cancel: CancellationToken,
    driver: JoinHandle<()>,
}

impl TestNode {
    fn start(pods: &[&Arc<Pod>]) -> Self {
        let fake = FakeRuntime::new();
        fake.add_image("busybox");
        fake.add_image("registry.k8s.io/pause:3.10");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = fake.serve_unix(dir.path().join("cri.sock")).expect("serve");
        let endpoint = format!("unix://{}", dir.path().join("cri.sock").display());
        let root = dir.path();
        let TestContext {
            ctx,
            metrics: _,
            status,
            probe_results: probe_rx,
            pleg,
        } = test_context(
            &endpoint,
            root,
            NODE,
            EventRecorder::log_only(),
            RELIST,
            false,
        );
        let cancel = CancellationToken::new();
        // The PLEG and the workers outlive the agent's token: the manager cancels it at the end,
        // and the test still looks at the node after.
        let node_life = CancellationToken::new();
        let received = Arc::new(Mutex::new(Vec::new()));
        let RunningNode {
            desired: desired_tx,
            killer,
            driver,
        } = run_node(
            ctx,
            pleg,
            probe_rx,
            RecordKills(received.clone()),
            node_life,
        );
        desired_tx.send_replace(set(pods));
        Self {
            fake,
            dir,
            _server: server,
            desired: desired_tx,
            status,
            killer,
            received,
            cancel,
            driver,
        }
    }

    /// A manager for this node with `bands`, its status, and its metrics.
    fn manager(
        &self,
        bands: Vec<ShutdownGracePeriodByPodPriority>,
        api: Option<ApiTarget>,
    ) -> (ShutdownManager, ShutdownStatus, ShutdownMetrics) {
        let (switch, shutdown) = channel();
        let metrics = ShutdownMetrics::default();
        let manager = ShutdownManager::new(ManagerOptions {
            bands,
            switch,
            killer: self.killer.clone(),
            pods: self.desired.subscribe(),
            status: self.status.clone(),
            metrics: metrics.clone(),
            state_file: Some(StateFile::in_dir(self.dir.path())),
            api,
        });
        (manager, shutdown, metrics)
    }

    fn containers_of(&self, uid: &str) -> Vec<mk_fake_runtime::FakeContainer> {
        self.fake
            .containers()
            .into_iter()
            .filter(|c| c.labels().get(labels::POD_UID).map(String::as_str) == Some(uid))
            .collect()
    }

    fn is_running(&self, uid: &str) -> bool {
        self.containers_of(uid)
            .iter()
            .any(|c| c.state == mk_fake_runtime::api::ContainerState::ContainerRunning)
    }

    fn phase(&self, uid: &str) -> Option<String> {
        self.status.get(uid).and_then(|s| s.phase)
    }

    /// The pods (UIDs) of the StopContainer calls so far, in arrival order.
    fn stops(&self) -> Vec<String> {
        let owner: HashMap<String, String> = self
            .fake
            .containers()
            .into_iter()
            .filter_map(|c| Some((c.id.clone(), c.labels().get(labels::POD_UID)?.clone())))
            .collect();
        self.fake
            .calls()
            .into_iter()
            .filter(|c| c.op == Op::StopContainer)
            .filter_map(|c| owner.get(&c.target).cloned())
            .collect()
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.driver.abort();
    }
}

/// Polls `check` every 100 ms of virtual time until it holds, failing after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_stopped_for_the_shutdown(node: &TestNode, pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = node.status.get(&uid(pod)).expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"), "{name}");
    assert_eq!(status.reason.as_deref(), Some("Terminated"), "{name}");
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was terminated in response to imminent node shutdown."),
        "{name}"
    );
    let disruption = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget")
        .unwrap_or_else(|| panic!("{name}: no DisruptionTarget condition"));
    assert_eq!(disruption.status, "True");
    assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));
    assert_eq!(disruption.message.as_deref(), Some(NODE_SHUTDOWN_MESSAGE));
    assert!(!node.is_running(&uid(pod)), "{name} still runs");
}

// ----- the plan (pure) -----

#[test]
fn shutdown_grace_period_splits_into_a_regular_and_a_critical_band() {
    let secs = Duration::from_secs;
    let band = |priority, seconds| ShutdownGracePeriodByPodPriority {
        priority,
        shutdown_grace_period_seconds: seconds,
    };
    for (period, critical, expected) in [
        (secs(0), secs(0), vec![]),
        (secs(0), secs(10), vec![]),
        (
            secs(30),
            secs(10),
            vec![band(0, 20), band(SYSTEM_CRITICAL_PRIORITY, 10)],
        ),
        (
            secs(20),
            secs(0),
            vec![band(0, 20), band(SYSTEM_CRITICAL_PRIORITY, 0)],
        ),
        (
            secs(20),
            secs(20),
            vec![band(0, 0), band(SYSTEM_CRITICAL_PRIORITY, 20)],
        ),
        (secs(10), secs(20), vec![]),
        // Whole seconds, truncated, as kubelet's int64(d / time.Second).
        (
            Duration::from_millis(10_900),
            Duration::from_millis(3_500),
            vec![band(0, 7), band(SYSTEM_CRITICAL_PRIORITY, 3)],
        ),
    ] {
        assert_eq!(
            plan::migrate_config(period, critical),
            expected,
            "{period:?} / {critical:?}"
        );
    }
    assert_eq!(
        plan::total_budget(&plan::migrate_config(secs(30), secs(10))),
        secs(30)
    );
    assert_eq!(plan::total_budget(&[]), Duration::ZERO);
}

#[test]
fn bands_come_from_the_config_sorted_and_off_by_default() {
    let mut config = crate::config::KubeletConfiguration::default();
    assert!(plan::bands(&config).is_empty());
    assert!(!enabled(&config));
    config.shutdown_grace_period = Duration::from_secs(30);
    config.shutdown_grace_period_critical_pods = Duration::from_secs(10);
    assert!(enabled(&config));
    assert_eq!(plan::bands(&config), bands(20, 10));
    let by_priority = crate::config::KubeletConfiguration {
        shutdown_grace_period_by_pod_priority: vec![
            ShutdownGracePeriodByPodPriority {
                priority: 100_000,
                shutdown_grace_period_seconds: 120,
            },
            ShutdownGracePeriodByPodPriority {
                priority: 0,
                shutdown_grace_period_seconds: 60,
            },
        ],
        ..Default::default()
    };
    let priorities: Vec<i32> = plan::bands(&by_priority)
        .iter()
        .map(|b| b.priority)
        .collect();
    assert_eq!(priorities, vec![0, 100_000], "sorted low to high");
    assert_eq!(
        plan::total_budget(&plan::bands(&by_priority)),
        Duration::from_secs(180)
    );
    config
        .feature_gates
        .insert(crate::config::GRACEFUL_NODE_SHUTDOWN.into(), false);
    assert!(!enabled(&config), "the gate turns the feature off");
}

/// kubelet's `groupByPriority` table: each pod in the band of the highest priority at or below
/// its own, the lowest band for anything lower, the highest for anything higher; each pod the
/// band's seconds or its own grace period when shorter.
#[test]
fn pods_go_to_the_band_at_or_below_their_priority_with_the_shorter_grace() {
    let band = |priority, seconds| ShutdownGracePeriodByPodPriority {
        priority,
        shutdown_grace_period_seconds: seconds,
    };
    let bands = [band(1, 10), band(2, 20), band(3, 30), band(4, 40)];
    let pods = [
        ("below-lowest", Some(0), None),
        ("at-lowest", Some(1), None),
        ("at-second", Some(2), Some(5)),
        ("between", Some(3), Some(30)),
        ("at-highest", Some(4), Some(100)),
        ("above-highest", Some(5), Some(39)),
        ("no-priority", None, Some(1)),
        ("negative", Some(-7), Some(0)),
    ];
    let pod = |name: &str, priority: Option<i32>, grace: Option<i64>| {
        let mut spec = serde_json::json!({"containers": []});
        if let Some(p) = priority {
            spec["priority"] = p.into();
        }
        if let Some(g) = grace {
            spec["terminationGracePeriodSeconds"] = g.into();
        }
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "uid": name}, "spec": spec}),
        )
        .expect("pod");
        Arc::new(pod)
    };
    let groups = plan::group_by_priority(
        &bands,
        pods.iter()
            .map(|(name, priority, grace)| pod(name, *priority, *grace)),
    );
    let table: Vec<(i32, i64, PodGraces)> = groups
        .iter()
        .map(|g| {
            (
                g.priority,
                g.budget_seconds,
                g.pods
                    .iter()
                    .map(|p| (uid(&p.pod), p.grace_seconds))
                    .collect(),
            )
        })
        .collect();
    let named = |list: &[(&str, i64)]| -> Vec<(String, i64)> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    };
    assert_eq!(
        table,
        vec![
            (
                1,
                10,
                named(&[
                    ("below-lowest", 10),
                    ("at-lowest", 10),
                    ("no-priority", 1),
                    ("negative", 0)
                ])
            ),
            (2, 20, named(&[("at-second", 5)])),
            (3, 30, named(&[("between", 30)])),
            (4, 40, named(&[("at-highest", 40), ("above-highest", 39)])),
        ]
    );
    assert!(plan::group_by_priority(&[], [pod("p", None, None)]).is_empty());
}

/// The default split: critical pods are those of priority 2000000000 and above; a static pod
/// counts by its numeric priority only (kubelet's behaviour: the class name alone does not make it
/// critical, see kubernetes#133442).
#[test]
fn critical_pods_are_those_of_system_critical_priority() {
    let groups = plan::group_by_priority(
        &bands(20, 10),
        [
            api_pod("regular", None, 30, "sleep infinity"),
            api_pod("short", Some(1000), 3, "sleep infinity"),
            api_pod(
                "cluster-critical",
                Some(2_000_000_000),
                30,
                "sleep infinity",
            ),
            api_pod("node-critical", Some(2_000_001_000), 4, "sleep infinity"),
            api_pod("just-below", Some(1_999_999_999), 30, "sleep infinity"),
            static_pod("etcd", 30),
        ],
    );
    let names = |g: &plan::Group| -> Vec<(String, i64)> {
        g.pods
            .iter()
            .map(|p| {
                (
                    p.pod.metadata.name.clone().unwrap_or_default(),
                    p.grace_seconds,
                )
            })
            .collect()
    };
    assert_eq!(groups.len(), 2);
    assert_eq!(
        names(&groups[0]),
        vec![
            ("regular".to_string(), 20),
            ("short".to_string(), 3),
            ("just-below".to_string(), 20),
            (format!("etcd-{NODE}"), 20),
        ]
    );
    assert_eq!(
        names(&groups[1]),
        vec![
            ("cluster-critical".to_string(), 10),
            ("node-critical".to_string(), 4),
        ]
    );
}

#[test]
fn new_pods_are_rejected_with_kubelets_reason_once_the_node_shuts_down() {
    let (switch, status) = channel();
    assert!(status.admit().is_ok());
    assert_eq!(status.not_ready_reason(), None);
    switch.begin();
    let rejection = status.admit().expect_err("rejected");
    assert_eq!(rejection.reason, "NodeShutdown");
    let pod_status = rejection.status();
    assert_eq!(pod_status.phase.as_deref(), Some("Failed"));
    assert_eq!(
        pod_status.message.as_deref(),
        Some("Pod was rejected: Pod was rejected as the node is shutting down.")
    );
    assert_eq!(status.not_ready_reason(), Some("node is shutting down"));
    assert!(ShutdownStatus::never().admit().is_ok());
}

// ----- the sequence on a test node -----

/// The whole sequence with pods that stop when asked: the node turns at once, the regular pods
/// stop first (each with the smaller of its group's seconds and its own grace period), the
/// critical ones only once those have stopped, every stopped pod fails with kubelet's reason, a
/// pod already completed is left alone, and the manager cancels the agent when done.
#[tokio::test(start_paused = true)]
async fn regular_pods_stop_first_then_critical_ones_and_the_agent_exits() {
    let web = api_pod("web", None, 30, "sleep infinity");
    let quick = api_pod("quick", Some(0), 3, "sleep infinity");
    let etcd = static_pod("etcd", 30);
    let dns = api_pod("dns", Some(2_000_000_000), 5, "sleep infinity");
    let proxy = api_pod("proxy", Some(2_000_001_000), 30, "sleep infinity");
    let done = api_pod("done", None, 30, "exit 0");
    let all = [&web, &quick, &etcd, &dns, &proxy, &done];
    let node = TestNode::start(&all);
    eventually("the pods run and the job completed", CONVERGE, || {
        all[..5].iter().all(|p| node.is_running(&uid(p)))
            && node.phase(&uid(&done)).as_deref() == Some("Succeeded")
    })
    .await;
    let (manager, shutdown, metrics) = node.manager(bands(20, 10), None);
    assert_eq!(manager.budget(), Duration::from_secs(30));
    let trigger = CancellationToken::new();
    let run = tokio::spawn(manager.run(trigger.clone(), node.cancel.clone()));
    assert!(!shutdown.is_shutting_down());
    assert!(
        !node.cancel.is_cancelled(),
        "nothing happens before the trigger"
    );

    let started = Instant::now();
    trigger.cancel();
    let report: Report = tokio::time::timeout(Duration::from_secs(30) + CONVERGE, run)
        .await
        .expect("the sequence ends within its budget")
        .expect("join")
        .expect("a shutdown ran");
    let took = started.elapsed();
    assert!(shutdown.is_shutting_down());
    assert!(node.cancel.is_cancelled(), "the agent is told to exit");
    assert!(!report.aborted && report.reported);
    assert!(
        took < Duration::from_secs(10),
        "pods that stop at once do not wait out the budget: {took:?}"
    );

    let groups: Vec<(i32, PodGraces, bool)> = report
        .groups
        .iter()
        .map(|g| {
            let mut pods = g.pods.clone();
            pods.sort();
            (g.priority, pods, g.timed_out)
        })
        .collect();
    let pods = |list: &[(&Arc<Pod>, i64)]| {
        let mut v: Vec<(String, i64)> = list.iter().map(|(p, s)| (uid(p), *s)).collect();
        v.sort();
        v
    };
    assert_eq!(
        groups,
        vec![
            (0, pods(&[(&web, 20), (&quick, 3), (&etcd, 20)]), false),
            (
                SYSTEM_CRITICAL_PRIORITY,
                pods(&[(&dns, 5), (&proxy, 10)]),
                false
            ),
        ]
    );
    // What the node was asked: every pod with its seconds, critical ones after the regular ones.
    let received = node.received();
    let grace: HashMap<String, Option<i64>> = received
        .iter()
        .map(|r| (r.uid.clone(), r.kill.grace_seconds))
        .collect();
    assert_eq!(grace.len(), 5, "{received:?}");
    assert!(
        !grace.contains_key(&uid(&done)),
        "a completed pod is not stopped"
    );
    assert_eq!(grace[&uid(&quick)], Some(3));
    assert_eq!(grace[&uid(&proxy)], Some(10));
    assert!(received.iter().all(|r| r.kill.disruption
        && r.kill.failure.reason == NODE_SHUTDOWN_REASON
        && r.kill.failure.message == NODE_SHUTDOWN_MESSAGE));
    let critical = [uid(&dns), uid(&proxy)];
    let stops = node.stops();
    let first_critical = stops
        .iter()
        .position(|u| critical.contains(u))
        .expect("critical pods stopped");
    let last_regular = stops
        .iter()
        .rposition(|u| !critical.contains(u))
        .expect("regular pods stopped");
    assert!(
        last_regular < first_critical,
        "every regular container stopped before the first critical one: {stops:?}"
    );
    for pod in &all[..5] {
        assert_stopped_for_the_shutdown(&node, pod);
    }
    assert_eq!(node.phase(&uid(&done)).as_deref(), Some("Succeeded"));

    // The times, to the gauges and kubelet's state file.
    let (start, end) = (metrics.start_time.get(), metrics.end_time.get());
    assert!(start > 0.0 && end >= start, "{start} {end}");
    let times = StateFile::in_dir(node.dir.path())
        .load()
        .expect("state file");
    assert!(times.start.is_some() && times.end >= times.start);
    node.stop().await;
}

/// A group whose pods do not stop in time holds the next group back for exactly its seconds, no
/// less, and the sequence ends when the last group's seconds are up.
#[tokio::test(start_paused = true)]
async fn a_group_that_does_not_stop_in_time_holds_the_next_for_its_seconds() {
    let web = api_pod("web", None, 30, "sleep infinity");
    let proxy = api_pod("proxy", Some(2_000_001_000), 30, "sleep infinity");
    let node = TestNode::start(&[&web, &proxy]);
    eventually("the pods run", CONVERGE, || {
        node.is_running(&uid(&web)) && node.is_running(&uid(&proxy))
    })
    .await;
    // The runtime takes its time over every stop.
    node.fake
        .set_op_latency(Op::StopContainer, Some(Duration::from_secs(100)));
    let (manager, _shutdown, _metrics) = node.manager(bands(10, 5), None);
    let trigger = CancellationToken::new();
    let run = tokio::spawn(manager.run(trigger.clone(), node.cancel.clone()));
    let started = Instant::now();
    trigger.cancel();
    eventually("the regular pod is being stopped", CONVERGE, || {
        node.stops().contains(&uid(&web))
    })
    .await;
    let mut critical_at = None;
    eventually(
        "the critical pod is being stopped",
        Duration::from_secs(10) + CONVERGE,
        || {
            let seen = node.stops().contains(&uid(&proxy));
            if seen && critical_at.is_none() {
                critical_at = Some(started.elapsed());
            }
            seen
        },
    )
    .await;
    let critical_at = critical_at.expect("seen");
    assert!(
        critical_at >= Duration::from_secs(10),
        "the critical group started before the regular group's 10 s: {critical_at:?}"
    );
    assert!(
        critical_at < Duration::from_secs(11),
        "the critical group started late: {critical_at:?}"
    );
    let report = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("the sequence ends with its budget")
        .expect("join")
        .expect("a shutdown ran");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(15) && took < Duration::from_secs(16),
        "10 s + 5 s: {took:?}"
    );
    assert_eq!(report.groups.len(), 2);
    assert!(report.groups.iter().all(|g| g.timed_out));
    assert!(node.cancel.is_cancelled());
    node.stop().await;
}

/// A pod still stopping when its group's seconds ran out may finish within the rest of the
/// budget: the agent waits for it before it exits (kubelet keeps running while the machine goes
/// down; this agent exits instead), and no longer than the budget.
#[tokio::test(start_paused = true)]
async fn a_pod_still_stopping_after_its_groups_time_may_finish_within_the_budget() {
    let web = api_pod("web", None, 30, "sleep infinity");
    let node = TestNode::start(&[&web]);
    eventually("the pod runs", CONVERGE, || node.is_running(&uid(&web))).await;
    // The stop takes 12 s: more than the regular group's 10 s, less than the 20 s budget.
    node.fake
        .set_op_latency(Op::StopContainer, Some(Duration::from_secs(12)));
    let (manager, _shutdown, _metrics) = node.manager(bands(10, 10), None);
    let trigger = CancellationToken::new();
    trigger.cancel();
    let started = Instant::now();
    let report = manager
        .run(trigger, node.cancel.clone())
        .await
        .expect("a shutdown ran");
    let took = started.elapsed();
    assert!(report.groups[0].timed_out);
    assert!(
        took >= Duration::from_secs(12) && took < Duration::from_secs(20),
        "waited for the pod, not for the budget: {took:?}"
    );
    assert_stopped_for_the_shutdown(&node, &web);
    node.stop().await;
}

/// Cancelling the agent during the sequence (a second SIGTERM) ends it at once.
#[tokio::test(start_paused = true)]
async fn cancelling_during_the_sequence_ends_it_at_once() {
    let web = api_pod("web", None, 30, "sleep infinity");
    let node = TestNode::start(&[&web]);
    eventually("the pod runs", CONVERGE, || node.is_running(&uid(&web))).await;
    node.fake
        .set_op_latency(Op::StopContainer, Some(Duration::from_secs(100)));
    let (manager, shutdown, metrics) = node.manager(bands(20, 10), None);
    let trigger = CancellationToken::new();
    let run = tokio::spawn(manager.run(trigger.clone(), node.cancel.clone()));
    trigger.cancel();
    eventually("the pod is being stopped", CONVERGE, || {
        node.stops().contains(&uid(&web))
    })
    .await;
    let cancelled = Instant::now();
    node.cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(1), run)
        .await
        .expect("ends at once")
        .expect("join")
        .expect("a shutdown ran");
    assert!(cancelled.elapsed() < Duration::from_millis(100));
    assert!(report.aborted && report.groups.is_empty(), "{report:?}");
    assert!(shutdown.is_shutting_down());
    assert!(metrics.end_time.get() > 0.0, "the end is recorded");
    node.stop().await;
}

/// Without the trigger nothing is stopped: the agent stopping for another reason leaves the pods.
#[tokio::test(start_paused = true)]
async fn without_the_trigger_nothing_is_stopped() {
    let web = api_pod("web", None, 30, "sleep infinity");
    let node = TestNode::start(&[&web]);
    eventually("the pod runs", CONVERGE, || node.is_running(&uid(&web))).await;
    let (manager, shutdown, metrics) = node.manager(bands(20, 10), None);
    let run = tokio::spawn(manager.run(CancellationToken::new(), node.cancel.clone()));
    node.cancel.cancel();
    let report = run.await.expect("join");
    assert_eq!(report, None);
    assert!(!shutdown.is_shutting_down());
    assert!(node.received().is_empty());
    tokio::time::sleep(CONVERGE).await;
    assert!(node.is_running(&uid(&web)));
    assert_eq!(metrics.start_time.get(), 0.0);
    node.stop().await;
}

/// The gauges start from the state file of the last shutdown, as kubelet's do after a reboot.
#[tokio::test(start_paused = true)]
async fn gauges_start_from_the_last_shutdown_recorded() {
    let node = TestNode::start(&[]);
    let file = StateFile::in_dir(node.dir.path());
    std::fs::write(
        file.path(),
        r#"{"startTime":"2026-12-04T19:00:00Z","endTime":"2026-12-04T19:00:30Z"}"#,
    )
    .expect("write");
    let (manager, _shutdown, metrics) = node.manager(bands(20, 10), None);
    let start: jiff::Timestamp = "2026-12-04T19:00:00Z".parse().expect("time");
    assert_eq!(metrics.start_time.get(), start.as_second() as f64);
    assert_eq!(metrics.end_time.get(), (start.as_second() + 30) as f64);
    // No pods: the sequence ends at once.
    let trigger = CancellationToken::new();
    trigger.cancel();
    let report = manager
        .run(trigger, node.cancel.clone())
        .await
        .expect("a shutdown ran");
    assert!(report.groups.is_empty());
    assert!(metrics.start_time.get() > start.as_second() as f64);
    node.stop().await;
}

// ----- waiting for the API server -----

/// Which pods of the node the agent waits to see terminal on the API server: its own (by UID, a
/// static pod through its mirror pod's annotation), not those it never saw.
#[test]
fn the_agent_waits_for_its_own_pods_to_show_terminal() {
    let listed = |name: &str, uid: &str, mirror_of: Option<&str>, phase: &str| -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(hash) = mirror_of {
            annotations.insert("kubernetes.io/config.mirror".into(), hash.into());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "annotations": annotations},
            "status": {"phase": phase},
        }))
        .expect("pod")
    };
    let pods = [
        listed("running", "u1", None, "Running"),
        listed("failed", "u2", None, "Failed"),
        listed("succeeded", "u3", None, "Succeeded"),
        listed("stranger", "u4", None, "Running"),
        listed("mirror", "m5", Some("hash5"), "Running"),
        listed("mirror-done", "m6", Some("hash6"), "Failed"),
        listed("pending", "u7", None, "Pending"),
    ];
    let known: std::collections::HashSet<String> = ["u1", "u2", "u3", "hash5", "hash6", "u7", "m6"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(
        manager::not_terminal(&pods, &known),
        vec!["ns/running", "ns/mirror", "ns/pending"]
    );
    assert!(manager::not_terminal(&pods, &Default::default()).is_empty());
}

async fn standin() -> (kube_standin::StandinHandle, kube::Client) {
    let standin = kube_standin::Standin::start("127.0.0.1:0", Default::default())
        .await
        .expect("stand-in API server");
    let config = kube::Config::new(standin.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    (standin, client)
}

fn ready_node(status: &str, message: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": NODE},
        "status": {"conditions": [{"type": "Ready", "status": status,
                                   "reason": "KubeletNotReady", "message": message}]},
    }))
    .expect("node")
}

/// Joined to a cluster, the agent exits only once the API server shows the node NotReady for its
/// shutdown and every pod bound to the node terminal, or when the time is up.
#[tokio::test]
async fn the_agent_waits_for_the_api_server_to_show_the_shutdown() {
    let (_standin, client) = standin().await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &ready_node("True", "kubelet is posting ready status"),
        )
        .await
        .expect("node");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut bound = (*api_pod("bound", None, 30, "sleep infinity")).clone();
    bound.metadata.uid = None;
    bound.spec.get_or_insert_with(Default::default).node_name = Some(NODE.into());
    let stranger = {
        let mut p = bound.clone();
        p.metadata.name = Some("stranger".into());
        p
    };
    let bound = Arc::new(
        pods.create(&PostParams::default(), &bound)
            .await
            .expect("pod"),
    );
    // Bound to the node, but never seen by the agent: not waited for.
    pods.create(&PostParams::default(), &stranger)
        .await
        .expect("pod");
    let api = ApiTarget {
        client: client.clone(),
        node_name: NODE.into(),
    };

    // Nothing shows the shutdown: the agent gives up when its time is up (the 1 s budget, but at
    // least REPORT_GRACE after the pods stopped).
    let node = TestNode::start(&[&bound]);
    let band = vec![ShutdownGracePeriodByPodPriority {
        priority: 0,
        shutdown_grace_period_seconds: 1,
    }];
    let (manager, _status, _metrics) = node.manager(band, Some(api.clone()));
    let trigger = CancellationToken::new();
    trigger.cancel();
    let started = std::time::Instant::now();
    let report = manager
        .run(trigger.clone(), node.cancel.clone())
        .await
        .expect("ran");
    let waited = started.elapsed();
    assert!(!report.reported);
    assert!(
        waited >= manager::REPORT_GRACE && waited < manager::REPORT_GRACE + Duration::from_secs(2),
        "{waited:?}"
    );
    node.stop().await;

    // The API server shows it a moment later: the agent exits then (well within its budget).
    let node = TestNode::start(&[&bound]);
    let band = vec![ShutdownGracePeriodByPodPriority {
        priority: 0,
        shutdown_grace_period_seconds: 60,
    }];
    let (manager, _status, _metrics) = node.manager(band, Some(api));
    let run = tokio::spawn(manager.run(trigger, node.cancel.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "the node still shows Ready");
    nodes
        .patch_status(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"conditions": [{"type": "Ready",
                "status": "False", "reason": "KubeletNotReady", "message": "node is shutting down"}]}})),
        )
        .await
        .expect("node status");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "the agent's pod still shows Running");
    pods.patch_status(
        "bound",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"phase": "Failed", "reason": "Terminated"}})),
    )
    .await
    .expect("pod status");
    let report = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("exits once shown")
        .expect("join")
        .expect("ran");
    assert!(report.reported);
    node.stop().await;
}
