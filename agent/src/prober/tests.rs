//! The manager end to end: exec probes against the fake CRI runtime, network probes against local
//! listeners, with real (short) periods.

use std::sync::atomic::{AtomicUsize, Ordering};

use mk_cri::api;
use mk_fake_runtime::{ExecResult, FakeRuntime, Op, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::events::PodEvent;
use crate::test_cri;

const WAIT: Duration = Duration::from_secs(8);

struct Harness {
    _dir: tempfile::TempDir,
    fake: FakeRuntime,
    _server: ServerHandle,
    cri: CriClient,
    manager: ProbeManager,
    metrics: ProbeMetrics,
    wake: mpsc::UnboundedReceiver<String>,
    events: mpsc::Receiver<PodEvent>,
    sandbox: Option<(String, api::PodSandboxConfig)>,
    attempt: u32,
}

impl Harness {
    async fn start() -> Self {
        let crate::test_cri::FakeCri {
            dir,
            fake,
            server,
            cri,
        } = crate::test_cri::serve_fake(&["busybox"]);
        let (events, events_rx) = EventRecorder::with_queue(1000);
        let (tx, wake) = mpsc::unbounded_channel();
        let metrics = ProbeMetrics::default();
        let manager = ProbeManager::build(cri.clone(), events, metrics.clone(), tx, false);
        Self {
            _dir: dir,
            fake,
            _server: server,
            cri,
            manager,
            metrics,
            wake,
            events: events_rx,
            sandbox: None,
            attempt: 0,
        }
    }

    /// Creates and starts a new instance of container `name`; returns its ID.
    async fn run_container(&mut self, name: &str) -> String {
        if self.sandbox.is_none() {
            let config = api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            };
            let id = test_cri::run_sandbox(&self.cri, &config).await;
            self.sandbox = Some((id, config));
        }
        let Some((sandbox_id, sandbox_config)) = self.sandbox.clone() else {
            panic!("no sandbox");
        };
        self.attempt += 1;
        let container = test_cri::sleeping_container(name, self.attempt, "busybox");
        test_cri::start_container(&self.cri, &sandbox_id, &sandbox_config, container).await
    }

    fn update(&self, name: &str, id: &str, running: bool) {
        self.manager.update_containers(
            "uid-1",
            Some("127.0.0.1"),
            &[ProbedContainer {
                name,
                id,
                started_at: now_ns(),
                running,
            }],
        );
    }

    async fn next_wake(&mut self) -> String {
        tokio::time::timeout(WAIT, self.wake.recv())
            .await
            .expect("woken in time")
            .expect("wake channel open")
    }

    fn drain_events(&mut self) -> Vec<PodEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    fn count(&self, probe_type: ProbeType, result: &'static str) -> u64 {
        self.metrics
            .probe_total
            .get_or_create(&metrics::ProbeResultLabels {
                probe_type: probe_type.as_str(),
                result,
                container: "app".into(),
                pod: "web".into(),
                namespace: "default".into(),
                pod_uid: "uid-1".into(),
            })
            .get()
    }
}

fn pod(container: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
        "spec": {"containers": [container]}
    }))
    .expect("pod")
}

fn exec_probe(extra: serde_json::Value) -> serde_json::Value {
    let mut probe =
        serde_json::json!({"exec": {"command": ["cat", "$(FILE)"]}, "periodSeconds": 1});
    if let (Some(p), Some(e)) = (probe.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    probe
}

async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

#[tokio::test]
async fn exec_handler_results() {
    let mut h = Harness::start().await;
    let id = h.run_container("app").await;
    let second = Duration::from_secs(1);
    let cmd = vec!["cat".to_string(), "/tmp/healthy".to_string()];

    h.fake
        .set_exec_result_for("app", ExecResult::exit(0).with_stdout("ok"));
    assert_eq!(
        exec::probe(&h.cri, &id, &cmd, second).await.expect("probe"),
        Outcome::Success("ok".into())
    );
    h.fake.set_exec_result_for(
        "app",
        ExecResult::exit(1)
            .with_stdout("out;")
            .with_stderr("no such file"),
    );
    assert_eq!(
        exec::probe(&h.cri, &id, &cmd, second).await.expect("probe"),
        Outcome::Failure("out;no such file".into())
    );
    h.fake.set_exec_result_for(
        "app",
        ExecResult::exit(0).with_delay(Duration::from_secs(3)),
    );
    let started = Instant::now();
    assert_eq!(
        exec::probe(&h.cri, &id, &cmd, second).await.expect("probe"),
        Outcome::Failure("command \"cat /tmp/healthy\" timed out".into())
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        exec::probe(&h.cri, "missing", &cmd, second).await,
        Err(ProbeError::Cri(_))
    ));
}

#[tokio::test]
async fn liveness_failure_after_threshold_then_a_new_container_resets() {
    let mut h = Harness::start().await;
    h.fake.set_exec_result_for(
        "app",
        ExecResult::exit(1).with_stderr("cat: /tmp/healthy: No such file or directory"),
    );
    let spec = pod(serde_json::json!({
        "name": "app",
        "env": [{"name": "FILE", "value": "/tmp/healthy"}],
        "livenessProbe": exec_probe(serde_json::json!({
            "failureThreshold": 2,
            "terminationGracePeriodSeconds": 7
        }))
    }));
    h.manager.add_pod(&spec);
    assert_eq!(h.manager.worker_count(), 1);
    let first = h.run_container("app").await;
    h.update("app", &first, true);
    assert!(h.manager.liveness_failures("uid-1").is_empty());

    assert_eq!(h.next_wake().await, "uid-1");
    let failures = h.manager.liveness_failures("uid-1");
    assert_eq!(
        failures,
        vec![LivenessFailure {
            probe_type: ProbeType::Liveness,
            container_name: "app".into(),
            container_id: first.clone(),
            message: "cat: /tmp/healthy: No such file or directory".into(),
            grace_override: Some(7),
        }]
    );
    assert_eq!(
        failures[0].kill_message(true),
        "Container app failed liveness probe, will be restarted"
    );
    assert_eq!(h.count(ProbeType::Liveness, metrics::RESULT_FAILED), 2);
    // The command was expanded with the container's env.
    let execs: Vec<String> = h
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::ExecSync)
        .map(|c| c.target)
        .collect();
    assert_eq!(execs.len(), 2, "on hold after the failure");
    let events = h.drain_events();
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e.reason, "Unhealthy");
        assert_eq!(e.field_path, "spec.containers{app}");
        assert_eq!(
            e.message,
            "Liveness probe failed: cat: /tmp/healthy: No such file or directory"
        );
    }
    // Level-triggered: still reported on the next turn.
    assert_eq!(h.manager.liveness_failures("uid-1").len(), 1);
    // Not once the failed instance is seen exited.
    h.update("app", &first, false);
    assert!(h.manager.liveness_failures("uid-1").is_empty());

    // The restarted container starts over with liveness success and gets probed again.
    h.fake.set_exec_result_for("app", ExecResult::exit(0));
    let second = h.run_container("app").await;
    h.update("app", &second, true);
    assert!(h.manager.liveness_failures("uid-1").is_empty());
    assert!(
        eventually(WAIT, || h
            .count(ProbeType::Liveness, metrics::RESULT_SUCCESSFUL)
            >= 1)
        .await
    );
    assert!(h.manager.liveness_failures("uid-1").is_empty());
}

#[tokio::test]
async fn readiness_is_false_until_the_success_threshold() {
    let mut h = Harness::start().await;
    h.fake.set_exec_result_for("app", ExecResult::exit(0));
    let spec = pod(serde_json::json!({
        "name": "app",
        "env": [{"name": "FILE", "value": "/tmp/ready"}],
        "readinessProbe": exec_probe(serde_json::json!({"successThreshold": 2}))
    }));
    h.manager.add_pod(&spec);
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(false));
    assert_eq!(h.manager.readiness("uid-1", "other"), None);
    assert_eq!(h.manager.started("uid-1", "app"), None);
    let id = h.run_container("app").await;
    h.update("app", &id, true);
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(false));
    assert_eq!(
        h.manager.status("uid-1", "app", true),
        ProbeStatus {
            started: true,
            ready: false
        }
    );

    assert_eq!(h.next_wake().await, "uid-1");
    // Two successes were needed.
    assert_eq!(h.count(ProbeType::Readiness, metrics::RESULT_SUCCESSFUL), 2);
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(true));
    assert_eq!(
        h.manager.status("uid-1", "app", true),
        ProbeStatus {
            started: true,
            ready: true
        }
    );
    // Readiness failures flip it back after the failure threshold (3), waking again.
    h.fake.set_exec_result_for("app", ExecResult::exit(1));
    assert_eq!(h.next_wake().await, "uid-1");
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(false));
    assert!(h.count(ProbeType::Readiness, metrics::RESULT_FAILED) >= 3);
    assert!(
        h.manager.liveness_failures("uid-1").is_empty(),
        "readiness never kills"
    );

    // A stopped container is not ready.
    h.fake.set_exec_result_for("app", ExecResult::exit(0));
    h.update("app", &id, false);
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(false));
    assert_eq!(
        h.manager.status("uid-1", "app", false),
        ProbeStatus {
            started: false,
            ready: false
        }
    );
}

/// Answers every connection with a fixed HTTP response and counts the requests.
async fn http_server(status: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, hits)
}

#[tokio::test]
async fn startup_gates_the_other_probes_then_stops() {
    let mut h = Harness::start().await;
    h.fake.set_exec_result_for("app", ExecResult::exit(0));
    // The startup probe connects to a port nobody listens on yet.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let (http_port, hits) = http_server(200).await;
    let spec = pod(serde_json::json!({
        "name": "app",
        "env": [{"name": "FILE", "value": "/tmp/x"}],
        "ports": [{"name": "web", "containerPort": http_port}],
        "startupProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": exec_probe(serde_json::json!({"failureThreshold": 1})),
        "readinessProbe": {"httpGet": {"port": "web", "path": "/ready"}, "periodSeconds": 1}
    }));
    h.manager.add_pod(&spec);
    assert_eq!(h.manager.worker_count(), 3);
    let id = h.run_container("app").await;
    h.update("app", &id, true);

    assert!(
        eventually(WAIT, || h.count(ProbeType::Startup, metrics::RESULT_FAILED)
            >= 2)
        .await
    );
    assert_eq!(h.manager.started("uid-1", "app"), Some(false));
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(false));
    assert_eq!(
        h.manager.status("uid-1", "app", true),
        ProbeStatus {
            started: false,
            ready: false
        }
    );
    assert_eq!(
        h.fake.call_count(Op::ExecSync),
        0,
        "liveness waits for startup"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "readiness waits for startup"
    );
    let message = h
        .drain_events()
        .into_iter()
        .map(|e| e.message)
        .find(|m| m.starts_with("Startup probe failed: "))
        .expect("an Unhealthy event");
    assert_eq!(
        message,
        format!("Startup probe failed: dial tcp 127.0.0.1:{port}: connect: connection refused")
    );

    // The app comes up: startup succeeds and wakes the worker.
    let _listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    assert_eq!(h.next_wake().await, "uid-1");
    assert_eq!(h.manager.started("uid-1", "app"), Some(true));
    // The pod worker's next turn runs the readiness probe at once.
    h.update("app", &id, true);
    assert_eq!(h.next_wake().await, "uid-1");
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(true));
    assert!(hits.load(Ordering::SeqCst) >= 1);
    assert!(
        eventually(WAIT, || h.fake.call_count(Op::ExecSync) >= 1).await,
        "liveness runs once started"
    );
    // The startup probe stopped.
    let startups = h.count(ProbeType::Startup, metrics::RESULT_SUCCESSFUL)
        + h.count(ProbeType::Startup, metrics::RESULT_FAILED);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        h.count(ProbeType::Startup, metrics::RESULT_SUCCESSFUL)
            + h.count(ProbeType::Startup, metrics::RESULT_FAILED),
        startups
    );
    assert_eq!(h.count(ProbeType::Startup, metrics::RESULT_SUCCESSFUL), 1);

    // Termination stops liveness and startup for good; readiness goes on.
    h.manager.stop_liveness_and_startup("uid-1");
    h.manager.add_pod(&spec);
    assert_eq!(h.manager.worker_count(), 1);
    assert_eq!(h.manager.started("uid-1", "app"), None);
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(true));
    h.manager.remove_pod("uid-1");
    assert_eq!(h.manager.worker_count(), 0);
    assert_eq!(h.manager.readiness("uid-1", "app"), None);
}

#[tokio::test]
async fn startup_failure_is_reported_for_a_kill() {
    let mut h = Harness::start().await;
    let (port, _hits) = http_server(503).await;
    let spec = pod(serde_json::json!({
        "name": "app",
        "startupProbe": {"httpGet": {"port": port, "path": "/started"}, "periodSeconds": 1, "failureThreshold": 2}
    }));
    h.manager.add_pod(&spec);
    let id = h.run_container("app").await;
    h.update("app", &id, true);
    assert_eq!(h.next_wake().await, "uid-1");
    let failures = h.manager.liveness_failures("uid-1");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].probe_type, ProbeType::Startup);
    assert_eq!(
        failures[0].message,
        "HTTP probe failed with statuscode: 503"
    );
    assert_eq!(failures[0].grace_override, None);
    assert_eq!(
        failures[0].kill_message(false),
        "Container app failed startup probe"
    );
    assert!(
        h.drain_events()
            .iter()
            .any(|e| e.message == "Startup probe failed: HTTP probe failed with statuscode: 503")
    );
}

#[tokio::test]
async fn deletion_ends_liveness_quietly() {
    let mut h = Harness::start().await;
    h.fake.set_exec_result_for("app", ExecResult::exit(1));
    let mut spec = pod(serde_json::json!({
        "name": "app",
        "env": [{"name": "FILE", "value": "/tmp/x"}],
        "livenessProbe": exec_probe(serde_json::json!({"failureThreshold": 1}))
    }));
    h.manager.add_pod(&spec);
    spec.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    h.manager.add_pod(&spec);
    let id = h.run_container("app").await;
    h.update("app", &id, true);
    assert!(eventually(WAIT, || h.manager.worker_count() == 0).await);
    assert!(h.manager.liveness_failures("uid-1").is_empty());
    assert_eq!(h.fake.call_count(Op::ExecSync), 0);
}

#[tokio::test]
async fn errors_count_as_unknown_and_keep_the_result() {
    let mut h = Harness::start().await;
    let spec = pod(serde_json::json!({
        "name": "app",
        "readinessProbe": {"httpGet": {"port": "missing"}, "periodSeconds": 1}
    }));
    h.manager.add_pod(&spec);
    let id = h.run_container("app").await;
    h.update("app", &id, true);
    assert!(
        eventually(WAIT, || h
            .count(ProbeType::Readiness, metrics::RESULT_UNKNOWN)
            >= 1)
        .await
    );
    assert_eq!(h.manager.readiness("uid-1", "app"), Some(false));
    let event = h.drain_events().into_iter().next().expect("an event");
    assert_eq!(event.reason, "Unhealthy");
    assert_eq!(
        event.message,
        "Readiness probe errored and resulted in unknown state: port \"missing\" not found in the container's ports"
    );
}

#[tokio::test]
async fn a_pod_without_probes_is_not_tracked() {
    let h = Harness::start().await;
    let spec = pod(serde_json::json!({"name": "app", "image": "busybox"}));
    h.manager.add_pod(&spec);
    h.manager.update_containers(
        "uid-1",
        Some("10.0.0.1"),
        &[ProbedContainer {
            name: "app",
            id: "c1",
            started_at: 1,
            running: true,
        }],
    );
    assert!(h.manager.inner.pods().is_empty(), "nothing kept for it");
    assert_eq!(h.manager.worker_count(), 0);
    assert_eq!(
        h.manager.status("uid-1", "app", true),
        ProbeStatus {
            started: true,
            ready: true
        }
    );
    assert!(h.manager.liveness_failures("uid-1").is_empty());
}

#[tokio::test]
async fn retain_pods_and_latest_instances() {
    let h = Harness::start().await;
    let spec = pod(serde_json::json!({
        "name": "app",
        "readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 1}
    }));
    h.manager.add_pod(&spec);
    h.manager.add_pod(&spec);
    assert_eq!(h.manager.worker_count(), 1, "add_pod is idempotent");
    h.manager.retain_pods(|uid| uid == "uid-1");
    assert_eq!(h.manager.worker_count(), 1);
    h.manager.retain_pods(|_| false);
    assert_eq!(h.manager.worker_count(), 0);

    let observed = ObservedPod {
        sandboxes: vec![],
        containers: vec![
            crate::kuberuntime::observe::ObservedContainer {
                id: "new".into(),
                name: "app".into(),
                state: Some(ContainerState::Running),
                started_at: 5,
                ..Default::default()
            },
            crate::kuberuntime::observe::ObservedContainer {
                id: "old".into(),
                name: "app".into(),
                state: Some(ContainerState::Exited),
                ..Default::default()
            },
        ],
    };
    assert_eq!(
        ProbedContainer::latest(&observed),
        vec![ProbedContainer {
            name: "app",
            id: "new",
            started_at: 5,
            running: true
        }]
    );
}
