//! The pod workers against the fake CRI runtime, with tokio's paused clock: each test a scenario a
//! kubelet engineer would name. A test "node" is the real PLEG, pod cache, workers and runtime
//! manager; its driver is the agent's sync loop without admission. Deadlines are in virtual time and
//! derived from the agent's periods (relist, housekeeping, grace periods).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use mk_fake_runtime::{FakeRuntime, Op, ServerHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::events::EventRecorder;
use crate::kuberuntime::labels;
use crate::sources::manifest;
use test_context::HOUSEKEEPING;

const NODE: &str = "test-node";
/// kubelet's PLEG relist period.
const RELIST: Duration = Duration::from_secs(1);
/// kubelet's runtime request timeout.
const CRI_TIMEOUT: Duration = Duration::from_secs(120);
/// A pod's start takes a relist to be seen, a turn, and a relist to see the result.
const CONVERGE: Duration = Duration::from_secs(5);

fn static_pod(name: &str, command: &str, grace: i64) -> Arc<Pod> {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         terminationGracePeriodSeconds: {grace}\n  containers:\n  - name: app\n    image: busybox\n    \
         imagePullPolicy: IfNotPresent\n    command: [sh, -c, {command:?}]\n"
    );
    let pod = manifest::decode(
        &yaml,
        Path::new(&format!("/etc/manifests/{name}.yaml")),
        NODE,
    )
    .expect("test manifest");
    Arc::new(pod)
}

fn with_policy(pod: &Arc<Pod>, policy: &str) -> Arc<Pod> {
    let mut pod = (**pod).clone();
    if let Some(spec) = pod.spec.as_mut() {
        spec.restart_policy = Some(policy.into());
    }
    // A new content, a new static pod UID.
    let uid = format!(
        "{}-{policy}",
        pod.metadata.uid.as_deref().unwrap_or_default()
    );
    pod.metadata.uid = Some(uid);
    Arc::new(pod)
}

fn with_image(pod: &Arc<Pod>, image: &str) -> Arc<Pod> {
    let mut pod = (**pod).clone();
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].image = Some(image.into());
        spec.containers[0].image_pull_policy = Some("IfNotPresent".into());
    }
    let suffix: String = image.chars().filter(char::is_ascii_alphanumeric).collect();
    let uid = format!(
        "{}-{suffix}",
        pod.metadata.uid.as_deref().unwrap_or_default()
    );
    pod.metadata.uid = Some(uid);
    Arc::new(pod)
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn set(pods: &[&Arc<Pod>]) -> PodSet {
    PodSet {
        pods: pods.iter().map(|p| (uid(p), Arc::clone(p))).collect(),
        synced: true,
    }
}

/// Publishes the workers' phases after every turn of the sync loop.
struct PublishPhases(watch::Sender<BTreeMap<String, Phase>>);

impl test_context::LoopHooks for PublishPhases {
    fn after_turn(&mut self, workers: &PodWorkers) {
        let phases = workers
            .workers
            .iter()
            .map(|(uid, w)| (uid.clone(), *w.phase.borrow()))
            .collect();
        self.0.send_replace(phases);
    }
}

/// One run of the agent's pod machinery against a fake runtime that outlives it.
struct Agent {
    desired: watch::Sender<PodSet>,
    phases: watch::Receiver<BTreeMap<String, Phase>>,
    status: crate::status::StatusManager,
    metrics: Metrics,
    killer: PodKiller,
    cancel: CancellationToken,
    driver: JoinHandle<()>,
}

impl Agent {
    fn start(endpoint: &str, root: &Path, desired: PodSet) -> Agent {
        Self::start_with(endpoint, root, desired, false)
    }

    /// `evented`: the PLEG follows the runtime's container events where it serves them.
    fn start_with(endpoint: &str, root: &Path, desired: PodSet, evented: bool) -> Agent {
        let test_context::TestContext {
            ctx,
            metrics,
            status,
            probe_results: probe_rx,
            pleg,
        } = test_context::test_context(
            endpoint,
            root,
            NODE,
            EventRecorder::log_only(),
            RELIST,
            evented,
        );
        let cancel = CancellationToken::new();
        let (phases_tx, phases) = watch::channel(BTreeMap::new());
        let test_context::RunningNode {
            desired: desired_tx,
            killer,
            driver,
        } = test_context::run_node(
            ctx,
            pleg,
            probe_rx,
            PublishPhases(phases_tx),
            cancel.clone(),
        );
        desired_tx.send_replace(desired);
        Agent {
            desired: desired_tx,
            phases,
            status,
            metrics,
            killer,
            cancel,
            driver,
        }
    }

    fn want(&self, pods: &[&Arc<Pod>]) {
        self.desired.send_replace(set(pods));
    }

    fn phase(&self, uid: &str) -> Option<Phase> {
        self.phases.borrow().get(uid).copied()
    }

    fn pod_phase(&self, uid: &str) -> Option<String> {
        self.status.get(uid).and_then(|s| s.phase)
    }

    fn waiting_reason(&self, uid: &str) -> Option<String> {
        self.status
            .get(uid)?
            .container_statuses?
            .first()?
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .reason
            .clone()
    }

    /// The value of a counter of the agent's metrics, by its sample's name as served.
    fn counter(&self, name: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry())
            .expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// How many worker turns (syncing, any outcome) ran: `kubelet_pod_worker_duration_seconds_count`.
    fn worker_turns(&self) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry())
            .expect("encode");
        text.lines()
            .filter(|l| l.starts_with("kubelet_pod_worker_duration_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Stops the agent as a crash would: its workers end where they are, pods keep running.
    async fn kill(self) {
        self.cancel.cancel();
        let _ = self.driver.await;
        // Let the workers see their registry gone.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fake runtime served on a socket in a temporary directory, restartable.
struct Runtime {
    fake: FakeRuntime,
    dir: tempfile::TempDir,
    server: Option<ServerHandle>,
}

impl Runtime {
    fn start() -> Runtime {
        let fake = FakeRuntime::new();
        fake.add_image("busybox");
        fake.add_image("registry.k8s.io/pause:3.10");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = fake.serve_unix(dir.path().join("cri.sock")).expect("serve");
        Runtime {
            fake,
            dir,
            server: Some(server),
        }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("cri.sock").display())
    }

    fn agent(&self, desired: &[&Arc<Pod>]) -> Agent {
        Agent::start(&self.endpoint(), self.dir.path(), set(desired))
    }

    /// An agent whose PLEG follows the runtime's container events.
    fn evented_agent(&self, desired: &[&Arc<Pod>]) -> Agent {
        Agent::start_with(&self.endpoint(), self.dir.path(), set(desired), true)
    }

    /// Full relists (unfiltered ListPodSandbox calls) in the call log.
    fn full_relists(&self) -> usize {
        self.fake
            .calls()
            .iter()
            .filter(|c| c.op == Op::ListPodSandbox && c.target.is_empty())
            .count()
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("shutdown");
        }
    }

    fn serve(&mut self) {
        self.server = Some(
            self.fake
                .serve_unix(self.dir.path().join("cri.sock"))
                .expect("serve"),
        );
    }

    fn sandboxes_of(&self, uid: &str) -> Vec<mk_fake_runtime::FakeSandbox> {
        self.fake
            .sandboxes()
            .into_iter()
            .filter(|s| s.labels().get(labels::POD_UID).map(String::as_str) == Some(uid))
            .collect()
    }

    fn ready_sandboxes_of(&self, uid: &str) -> Vec<mk_fake_runtime::FakeSandbox> {
        self.sandboxes_of(uid)
            .into_iter()
            .filter(|s| s.state == mk_fake_runtime::api::PodSandboxState::SandboxReady)
            .collect()
    }

    fn running_containers_of(&self, uid: &str) -> Vec<mk_fake_runtime::FakeContainer> {
        self.fake
            .containers()
            .into_iter()
            .filter(|c| c.labels().get(labels::POD_UID).map(String::as_str) == Some(uid))
            .filter(|c| c.state == mk_fake_runtime::api::ContainerState::ContainerRunning)
            .collect()
    }

    fn is_running(&self, uid: &str) -> bool {
        self.ready_sandboxes_of(uid).len() == 1 && self.running_containers_of(uid).len() == 1
    }

    fn holds_nothing_of(&self, uid: &str) -> bool {
        self.sandboxes_of(uid).is_empty()
            && !self
                .fake
                .containers()
                .iter()
                .any(|c| c.labels().get(labels::POD_UID).map(String::as_str) == Some(uid))
    }
}

/// Polls `check` every 100 ms of virtual time until it holds, failing after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const RUN: &str = "sleep infinity";

#[tokio::test(start_paused = true)]
async fn a_pod_starts_and_stays_running_without_further_runtime_writes() {
    let rt = Runtime::start();
    let web = static_pod("web", RUN, 30);
    let agent = rt.agent(&[&web]);
    eventually("web runs", CONVERGE, || rt.is_running(&uid(&web))).await;
    eventually("web reported Running", CONVERGE, || {
        agent.pod_phase(&uid(&web)).as_deref() == Some("Running")
    })
    .await;
    rt.fake.clear_calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = rt.fake.calls();
    let relists = rt.fake.call_count(Op::ListPodSandbox);
    assert!(relists >= 9, "{relists} relists in 10 s");
    assert_eq!(rt.fake.call_count(Op::ListContainers), relists);
    let others: Vec<_> = calls
        .iter()
        .filter(|c| !matches!(c.op, Op::ListPodSandbox | Op::ListContainers))
        .collect();
    assert!(
        others.is_empty(),
        "an idle pod costs only the relist: {others:?}"
    );
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn orphan_is_cleaned_up_after_an_agent_restart() {
    let rt = Runtime::start();
    let keep = static_pod("keep", RUN, 30);
    let gone = static_pod("gone", RUN, 2);
    let agent = rt.agent(&[&keep, &gone]);
    eventually("both run", CONVERGE, || {
        rt.is_running(&uid(&keep)) && rt.is_running(&uid(&gone))
    })
    .await;
    let kept_sandbox = rt.ready_sandboxes_of(&uid(&keep))[0].id.clone();
    agent.kill().await;

    // The manifest of `gone` disappeared while the agent was down.
    let agent = rt.agent(&[&keep]);
    eventually(
        "the orphan is stopped and removed",
        RELIST + HOUSEKEEPING + Duration::from_secs(2) + CONVERGE,
        || rt.holds_nothing_of(&uid(&gone)),
    )
    .await;
    assert_eq!(
        rt.ready_sandboxes_of(&uid(&keep))[0].id,
        kept_sandbox,
        "the wanted pod was adopted, not recreated"
    );
    assert_eq!(rt.fake.call_count(Op::RunPodSandbox), 2);
    eventually("the orphan's worker finished", CONVERGE, || {
        agent.phase(&uid(&gone)).is_none()
    })
    .await;
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn fifty_orphans_are_all_cleaned_up_after_an_agent_restart() {
    let rt = Runtime::start();
    let pods: Vec<Arc<Pod>> = (0..50)
        .map(|i| static_pod(&format!("p{i}"), RUN, 2))
        .collect();
    let refs: Vec<&Arc<Pod>> = pods.iter().collect();
    let agent = rt.agent(&refs);
    eventually("50 pods run", CONVERGE * 4, || {
        pods.iter().all(|p| rt.is_running(&uid(p)))
    })
    .await;
    agent.kill().await;

    let agent = rt.agent(&[]);
    eventually(
        "every orphan is removed",
        RELIST + HOUSEKEEPING + Duration::from_secs(2) + CONVERGE * 4,
        || rt.fake.sandboxes().is_empty() && rt.fake.containers().is_empty(),
    )
    .await;
    eventually("every orphan worker finished", CONVERGE, || {
        agent.phases.borrow().is_empty()
    })
    .await;
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn same_uid_added_again_while_terminating_restarts_once_terminated() {
    let rt = Runtime::start();
    let web = static_pod("web", RUN, 30);
    let agent = rt.agent(&[&web]);
    eventually("web runs", CONVERGE, || rt.is_running(&uid(&web))).await;
    let first = rt.ready_sandboxes_of(&uid(&web))[0].id.clone();
    // Termination takes a while: the container takes 5 s to stop.
    rt.fake
        .set_op_latency(Op::StopContainer, Some(Duration::from_secs(5)));
    agent.want(&[]);
    eventually("termination begins", CONVERGE, || {
        agent.phase(&uid(&web)) == Some(Phase::Terminating)
    })
    .await;
    // The manifest is moved back (same content, same UID) inside the grace period.
    agent.want(&[&web]);
    rt.fake.set_op_latency(Op::StopContainer, None);
    eventually(
        "the pod runs again in a new sandbox",
        Duration::from_secs(5) + CONVERGE * 2,
        || {
            let ready = rt.ready_sandboxes_of(&uid(&web));
            ready.len() == 1 && ready[0].id != first && rt.is_running(&uid(&web))
        },
    )
    .await;
    assert_eq!(agent.phase(&uid(&web)), Some(Phase::Syncing));
    assert!(
        rt.fake.sandbox(&first).is_none(),
        "the first sandbox was removed"
    );
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn same_uid_added_again_after_it_finished_starts_again() {
    let rt = Runtime::start();
    let web = static_pod("web", RUN, 2);
    let agent = rt.agent(&[&web]);
    eventually("web runs", CONVERGE, || rt.is_running(&uid(&web))).await;
    agent.want(&[]);
    eventually("web is removed", CONVERGE * 2, || {
        rt.holds_nothing_of(&uid(&web)) && agent.phase(&uid(&web)).is_none()
    })
    .await;
    assert!(agent.status.get(&uid(&web)).is_none(), "its status is gone");
    agent.want(&[&web]);
    eventually("web runs again", CONVERGE, || rt.is_running(&uid(&web))).await;
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn static_pod_edited_twice_within_its_grace_period_never_runs_twice() {
    let rt = Runtime::start();
    let v1 = static_pod("etcd", RUN, 30);
    let v2 = with_policy(&v1, "OnFailure");
    let v3 = with_image(&v1, "busybox:latest");
    let agent = rt.agent(&[&v1]);
    eventually("v1 runs", CONVERGE, || rt.is_running(&uid(&v1))).await;
    rt.fake
        .set_op_latency(Op::StopContainer, Some(Duration::from_secs(8)));
    agent.want(&[&v2]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.want(&[&v3]);
    // While v1 terminates, neither newer version may start.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rt.holds_nothing_of(&uid(&v1)) {
            break;
        }
        assert!(
            rt.sandboxes_of(&uid(&v2)).is_empty() && rt.sandboxes_of(&uid(&v3)).is_empty(),
            "a newer etcd started while the old one still ran"
        );
        assert_eq!(agent.phase(&uid(&v3)), None, "v3 waits for v1");
    }
    rt.fake.set_op_latency(Op::StopContainer, None);
    eventually("v3 runs", Duration::from_secs(8) + CONVERGE * 2, || {
        rt.is_running(&uid(&v3))
    })
    .await;
    assert!(rt.holds_nothing_of(&uid(&v1)));
    assert!(
        rt.sandboxes_of(&uid(&v2)).is_empty(),
        "the intermediate version never ran"
    );
    let names: Vec<_> = rt
        .fake
        .sandboxes()
        .into_iter()
        .filter(|s| s.state == mk_fake_runtime::api::PodSandboxState::SandboxReady)
        .collect();
    assert_eq!(names.len(), 1);
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn pod_deleted_while_its_image_pulls_is_terminated_without_starting() {
    let rt = Runtime::start();
    let slow = with_image(&static_pod("slow", RUN, 2), "example.com/big:1");
    rt.fake
        .set_op_latency(Op::PullImage, Some(Duration::from_secs(600)));
    let agent = rt.agent(&[&slow]);
    eventually("the pull has begun", CONVERGE, || {
        rt.fake.call_count(Op::PullImage) == 1
    })
    .await;
    agent.want(&[]);
    eventually(
        "the pod is removed long before the pull could end",
        CONVERGE * 2,
        || rt.holds_nothing_of(&uid(&slow)) && agent.phase(&uid(&slow)).is_none(),
    )
    .await;
    assert_eq!(rt.fake.call_count(Op::CreateContainer), 0);
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn runtime_unavailable_for_thirty_seconds_then_back() {
    let mut rt = Runtime::start();
    let a = static_pod("a", RUN, 2);
    let b = static_pod("b", RUN, 2);
    let agent = rt.agent(&[&a]);
    eventually("a runs", CONVERGE, || rt.is_running(&uid(&a))).await;
    rt.stop().await;
    // While the runtime is down, a is removed and b is added.
    agent.want(&[&b]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(rt.is_running(&uid(&a)), "nothing could be done meanwhile");
    rt.serve();
    eventually("the node converges", CONVERGE * 3, || {
        rt.holds_nothing_of(&uid(&a)) && rt.is_running(&uid(&b))
    })
    .await;
    eventually("b is reported Running", CONVERGE, || {
        agent.pod_phase(&uid(&b)).as_deref() == Some("Running")
    })
    .await;
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn agent_restart_with_pods_in_every_state() {
    let rt = Runtime::start();
    rt.fake.set_unpullable("example.com/missing:1");
    let running = static_pod("running", RUN, 2);
    let done = with_policy(&static_pod("done", "exit 0", 2), "Never");
    let crashing = static_pod("crashing", "exit 1", 2);
    let removed = static_pod("removed", RUN, 2);
    let no_image = with_image(&static_pod("noimage", RUN, 2), "example.com/missing:1");
    let all = [&running, &done, &crashing, &removed, &no_image];
    let agent = rt.agent(&all);
    eventually("every pod reached its state", CONVERGE * 3, || {
        rt.is_running(&uid(&running))
            && rt.is_running(&uid(&removed))
            && agent.pod_phase(&uid(&done)).as_deref() == Some("Succeeded")
            && agent.phase(&uid(&done)) == Some(Phase::Terminated)
            && agent.waiting_reason(&uid(&crashing)).as_deref() == Some("CrashLoopBackOff")
            && matches!(
                agent.waiting_reason(&uid(&no_image)).as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
    })
    .await;
    let running_sandbox = rt.ready_sandboxes_of(&uid(&running))[0].id.clone();
    let done_containers = rt.fake.containers().len();
    agent.kill().await;

    let agent = rt.agent(&[&running, &done, &crashing, &no_image]);
    eventually(
        "the restarted agent converges",
        HOUSEKEEPING + CONVERGE * 3,
        || {
            rt.holds_nothing_of(&uid(&removed))
                && agent.pod_phase(&uid(&done)).as_deref() == Some("Succeeded")
                && agent.phase(&uid(&done)) == Some(Phase::Terminated)
                && agent.pod_phase(&uid(&running)).as_deref() == Some("Running")
        },
    )
    .await;
    assert_eq!(
        rt.ready_sandboxes_of(&uid(&running))[0].id,
        running_sandbox,
        "the running pod was adopted"
    );
    let done_now = rt
        .fake
        .containers()
        .iter()
        .filter(|c| c.labels().get(labels::POD_UID) == Some(&uid(&done)))
        .count();
    assert_eq!(done_now, 1, "the completed pod was not run again");
    assert!(rt.fake.containers().len() <= done_containers + 1);
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn a_completed_pod_does_no_more_work() {
    let rt = Runtime::start();
    let job = with_policy(&static_pod("job", "exit 0", 2), "Never");
    let agent = rt.agent(&[&job]);
    eventually("the job succeeded and was terminated", CONVERGE * 2, || {
        agent.pod_phase(&uid(&job)).as_deref() == Some("Succeeded")
            && agent.phase(&uid(&job)) == Some(Phase::Terminated)
    })
    .await;
    assert!(
        !rt.sandboxes_of(&uid(&job)).is_empty(),
        "its exited container and sandbox stay for its logs until the pod is removed"
    );
    rt.fake.clear_calls();
    tokio::time::sleep(Duration::from_secs(130)).await;
    let work: Vec<_> = rt
        .fake
        .calls()
        .into_iter()
        .filter(|c| !matches!(c.op, Op::ListPodSandbox | Op::ListContainers))
        .collect();
    assert!(work.is_empty(), "a terminated pod made calls: {work:?}");
    agent.want(&[]);
    eventually("removing it cleans up", CONVERGE, || {
        rt.holds_nothing_of(&uid(&job))
    })
    .await;
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn err_image_pull_stays_visible_before_image_pull_back_off() {
    let rt = Runtime::start();
    rt.fake.set_unpullable("example.com/missing:1");
    let pod = with_image(&static_pod("noimage", RUN, 2), "example.com/missing:1");
    let agent = rt.agent(&[&pod]);
    eventually("ErrImagePull is reported", CONVERGE, || {
        agent.waiting_reason(&uid(&pod)).as_deref() == Some("ErrImagePull")
    })
    .await;
    tokio::time::sleep(
        crate::pod_workers::runtime_manager::ERR_IMAGE_PULL_VISIBLE - Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        agent.waiting_reason(&uid(&pod)).as_deref(),
        Some("ErrImagePull")
    );
    eventually("then ImagePullBackOff", CONVERGE, || {
        agent.waiting_reason(&uid(&pod)).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    agent.kill().await;
}

/// Every CRI call a worker makes fails once, or hangs until the request timeout: the pod still
/// comes up, and a removed pod is still cleaned up.
#[tokio::test(start_paused = true)]
async fn every_worker_cri_call_may_fail_or_hang_once() {
    let ops = [
        Op::ImageStatus,
        Op::RunPodSandbox,
        Op::PodSandboxStatus,
        Op::CreateContainer,
        Op::StartContainer,
        Op::ContainerStatus,
        Op::ListPodSandbox,
        Op::ListContainers,
        Op::StopContainer,
        Op::StopPodSandbox,
        Op::RemoveContainer,
        Op::RemovePodSandbox,
    ];
    let mut failures: HashMap<&str, String> = HashMap::new();
    for op in ops {
        for hang in [false, true] {
            let rt = Runtime::start();
            let pod = static_pod("p", RUN, 2);
            if hang {
                rt.fake.set_op_latency(op, Some(CRI_TIMEOUT * 2));
            } else {
                rt.fake.fail_next(op, tonic::Code::Unavailable);
            }
            let agent = rt.agent(&[&pod]);
            let up = CRI_TIMEOUT + CONVERGE * 4;
            let deadline = tokio::time::Instant::now() + up;
            while !rt.is_running(&uid(&pod)) && tokio::time::Instant::now() < deadline {
                if hang && tokio::time::Instant::now() > deadline - up / 2 {
                    rt.fake.set_op_latency(op, None);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rt.fake.set_op_latency(op, None);
            if !rt.is_running(&uid(&pod)) {
                failures.insert(op.as_str(), format!("hang={hang}: pod never ran"));
                agent.kill().await;
                continue;
            }
            // The same fault on the way out.
            if hang {
                rt.fake.set_op_latency(op, Some(CRI_TIMEOUT * 2));
            } else {
                rt.fake.fail_next(op, tonic::Code::Unavailable);
            }
            agent.want(&[]);
            let deadline = tokio::time::Instant::now() + up;
            while !rt.holds_nothing_of(&uid(&pod)) && tokio::time::Instant::now() < deadline {
                if hang && tokio::time::Instant::now() > deadline - up / 2 {
                    rt.fake.set_op_latency(op, None);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !rt.holds_nothing_of(&uid(&pod)) {
                failures.insert(op.as_str(), format!("hang={hang}: pod never removed"));
            }
            agent.kill().await;
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(start_paused = true)]
async fn active_deadline_fails_and_stops_the_pod() {
    let rt = Runtime::start();
    let mut pod = (*static_pod("deadline", RUN, 2)).clone();
    if let Some(spec) = pod.spec.as_mut() {
        spec.active_deadline_seconds = Some(5);
    }
    let pod = Arc::new(pod);
    let agent = rt.agent(&[&pod]);
    eventually("the pod runs", CONVERGE, || rt.is_running(&uid(&pod))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rt.is_running(&uid(&pod)), "not before its deadline");
    eventually(
        "the pod fails at its deadline",
        Duration::from_secs(2) + CONVERGE,
        || {
            agent.phase(&uid(&pod)) == Some(Phase::Terminated)
                && rt.ready_sandboxes_of(&uid(&pod)).is_empty()
                && rt.running_containers_of(&uid(&pod)).is_empty()
        },
    )
    .await;
    let status = agent.status.get(&uid(&pod)).expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    agent.kill().await;
}

/// The node stops a pod it still wants (eviction, node shutdown): the pod's grace period gives way
/// to the node's, its status says Failed with the node's reason and a DisruptionTarget condition,
/// and it stays terminated (not restarted) until it is removed.
#[tokio::test(start_paused = true)]
async fn a_pod_the_node_kills_fails_with_the_nodes_reason_and_stays_down() {
    let rt = Runtime::start();
    // Ignores SIGTERM: it stops at the end of the grace period only.
    let pod = static_pod("evicted", "trap '' TERM; while true; do sleep 1; done", 30);
    let other = static_pod("kept", RUN, 2);
    let agent = rt.agent(&[&pod, &other]);
    eventually("the pods run", CONVERGE, || {
        rt.is_running(&uid(&pod)) && rt.is_running(&uid(&other))
    })
    .await;
    let kill = KillPod {
        failure: crate::sync::PodFailure {
            reason: "Evicted".into(),
            message: "The node was low on resource: memory.".into(),
        },
        grace_seconds: Some(3),
        disruption: true,
    };
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(3) + CONVERGE,
        agent.killer.kill(&uid(&pod), kill.clone()),
    )
    .await
    .expect("the kill completes within the node's grace period");
    assert_eq!(outcome, KillOutcome::Terminated);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the node's 3 s, not the pod's 30 s"
    );
    assert!(rt.running_containers_of(&uid(&pod)).is_empty());
    assert!(rt.ready_sandboxes_of(&uid(&pod)).is_empty());
    let status = agent.status.get(&uid(&pod)).expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        status.message.as_deref(),
        Some("The node was low on resource: memory.")
    );
    let disruption = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("DisruptionTarget condition");
    assert_eq!(disruption.status, "True");
    assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));
    // Still wanted, yet not started again; the other pod is untouched.
    tokio::time::sleep(CONVERGE).await;
    assert_eq!(agent.phase(&uid(&pod)), Some(Phase::Terminated));
    assert!(rt.running_containers_of(&uid(&pod)).is_empty());
    assert!(rt.is_running(&uid(&other)));
    // A second kill of a terminated pod returns at once; a pod without a worker is not running.
    assert_eq!(
        agent.killer.kill(&uid(&pod), kill.clone()).await,
        KillOutcome::Terminated
    );
    assert_eq!(
        agent.killer.kill("no-such-uid", kill).await,
        KillOutcome::NotRunning
    );
    // Removed at last: its worker finishes and the runtime holds nothing of it.
    agent.want(&[&other]);
    eventually("the killed pod is removed", CONVERGE + HOUSEKEEPING, || {
        rt.holds_nothing_of(&uid(&pod))
    })
    .await;
    agent.kill().await;
}

/// The CRI cost of an idle node with 110 pods (kubelet's maxPods): each relist is two list calls and
/// nothing else, and a worker turn (every pod resyncs once a minute) makes no CRI call at all. Prints
/// the figures.
#[tokio::test(start_paused = true)]
async fn an_idle_node_costs_two_cri_calls_per_relist_and_none_per_worker_turn() {
    let rt = Runtime::start();
    let pods: Vec<Arc<Pod>> = (0..110)
        .map(|i| static_pod(&format!("idle{i}"), RUN, 2))
        .collect();
    let refs: Vec<&Arc<Pod>> = pods.iter().collect();
    let agent = rt.agent(&refs);
    eventually("110 pods run", CONVERGE * 6, || {
        pods.iter().all(|p| rt.is_running(&uid(p)))
    })
    .await;
    tokio::time::sleep(CONVERGE).await;
    rt.fake.clear_calls();
    let turns_before = agent.worker_turns();
    // Two resync periods: every worker turns at least once.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let turns = agent.worker_turns() - turns_before;
    let relists = rt.fake.call_count(Op::ListPodSandbox);
    let calls = rt.fake.calls();
    let in_turns = calls
        .iter()
        .filter(|c| !matches!(c.op, Op::ListPodSandbox | Op::ListContainers))
        .count();
    println!(
        "110 idle pods, 120 s: {relists} relists, {:.2} CRI calls per relist, {turns} worker turns, \
         {in_turns} CRI calls in worker turns",
        (calls.len() - in_turns) as f64 / relists.max(1) as f64,
    );
    assert!(turns >= 110, "every pod resynced: {turns} turns");
    assert_eq!(rt.fake.call_count(Op::ListContainers), relists);
    assert_eq!(in_turns, 0, "worker turns made CRI calls");
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_container_is_ready_and_started_like_its_running_instance() {
    let rt = Runtime::start();
    let pod = static_pod("restarts", "sleep infinity", 2);
    let agent = rt.agent(&[&pod]);
    eventually("the pod runs", CONVERGE, || rt.is_running(&uid(&pod))).await;
    let first = rt.running_containers_of(&uid(&pod));
    assert_eq!(first.len(), 1);
    rt.fake
        .exit_container(&first[0].id, 1, None)
        .expect("exit the container");
    // Restarted at once (the first restart has no back-off); the exited instance stays listed
    // beside the running one, and must not decide its status.
    let ready_again = |agent: &Agent| {
        agent
            .status
            .get(&uid(&pod))
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .is_some_and(|c| {
                c.restart_count == 1
                    && c.ready
                    && c.started == Some(true)
                    && c.state.and_then(|s| s.running).is_some()
            })
    };
    eventually(
        "the restarted container is reported ready and started",
        CONVERGE * 2,
        || ready_again(&agent),
    )
    .await;
    agent.kill().await;
}

/// With the runtime's container events, a container that dies is seen from its event: the PLEG
/// lists nothing while the node is idle, and the restart comes well before any relist could.
#[tokio::test(start_paused = true)]
async fn with_container_events_a_dead_container_restarts_without_a_relist() {
    let rt = Runtime::start();
    rt.fake.enable_container_events();
    let web = static_pod("web", RUN, 30);
    let agent = rt.evented_agent(&[&web]);
    eventually("web runs", CONVERGE, || rt.is_running(&uid(&web))).await;
    eventually("the event stream is open", CONVERGE, || {
        agent.counter("kubelet_evented_pleg_connection_success_count") == 1
    })
    .await;
    // Past the relist that follows the stream's opening and the turns of the start.
    tokio::time::sleep(CONVERGE).await;
    rt.fake.clear_calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        rt.full_relists(),
        0,
        "an idle node is not relisted: {:?}",
        rt.fake.calls()
    );
    let killed = rt.running_containers_of(&uid(&web))[0].id.clone();
    rt.fake.exit_container(&killed, 137, None).expect("running");
    // A relisting PLEG would need up to RELIST to see it; the event is seen at once.
    eventually("web's container restarted", RELIST / 2, || {
        rt.running_containers_of(&uid(&web))
            .iter()
            .any(|c| c.id != killed)
    })
    .await;
    assert_eq!(rt.full_relists(), 0, "the restart came from the event");
    agent.kill().await;
}

/// When the event stream breaks the PLEG relists every second, and it follows the events again
/// once the runtime serves them.
#[tokio::test(start_paused = true)]
async fn a_broken_event_stream_falls_back_to_relisting_until_it_is_back() {
    let rt = Runtime::start();
    rt.fake.enable_container_events();
    let web = static_pod("web", RUN, 30);
    let agent = rt.evented_agent(&[&web]);
    eventually("web runs", CONVERGE, || rt.is_running(&uid(&web))).await;
    eventually("the event stream is open", CONVERGE, || {
        agent.counter("kubelet_evented_pleg_connection_success_count") == 1
    })
    .await;

    // The runtime drops the stream and, for a while, refuses a new one.
    rt.fake.disable_container_events();
    rt.fake.clear_calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let relists = rt.full_relists();
    assert!(relists >= 9, "{relists} relists in 10 s without events");
    let killed = rt.running_containers_of(&uid(&web))[0].id.clone();
    rt.fake.exit_container(&killed, 137, None).expect("running");
    eventually("restarted by the relisting PLEG", CONVERGE, || {
        rt.running_containers_of(&uid(&web))
            .iter()
            .any(|c| c.id != killed)
    })
    .await;

    // Served again: the PLEG asks again within its retry period and stops relisting.
    rt.fake.enable_container_events();
    eventually(
        "the event stream is open again",
        crate::pleg::UNIMPLEMENTED_RETRY + CONVERGE,
        || agent.counter("kubelet_evented_pleg_connection_success_count") == 2,
    )
    .await;
    tokio::time::sleep(CONVERGE).await;
    rt.fake.clear_calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rt.full_relists(), 0, "events again: no relisting");

    // A stream that ends (a runtime restart) is opened again after a short pause.
    rt.fake.restart_container_events();
    eventually("the event stream is open a third time", CONVERGE, || {
        agent.counter("kubelet_evented_pleg_connection_success_count") == 3
    })
    .await;
    agent.kill().await;
}

#[tokio::test(start_paused = true)]
async fn lines_a_pod_worker_logs_carry_pod_and_pod_uid() {
    // This test's thread is the runtime's: the workers' lines are captured here.
    let (log, _guard) = crate::logging::testing::capture(
        crate::logging::Format::Text,
        crate::logging::TRACE_VERBOSITY,
    );
    let rt = Runtime::start();
    let web = static_pod("web", RUN, 30);
    let agent = rt.agent(&[&web]);
    eventually("web runs", CONVERGE, || rt.is_running(&uid(&web))).await;
    let name = web.metadata.name.clone().unwrap_or_default();
    let pod = format!("pod=\"default/{name}\"");
    let pod_uid = format!("podUID=\"{}\"", uid(&web));
    let lines = log.lines();
    // The worker's own lines (its sandbox, its container) name neither: its span does.
    let about: Vec<&String> = lines.iter().filter(|l| l.contains(&pod_uid)).collect();
    assert!(
        about.iter().any(|l| l.contains("\"created pod sandbox\"")),
        "{lines:#?}"
    );
    assert!(about.iter().all(|l| l.contains(&pod)), "{about:#?}");
    agent.kill().await;
}
