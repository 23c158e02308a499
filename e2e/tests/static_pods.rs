//! Static pods end to end: the real agent binary, a real containerd, manifests in a folder.
//! Run through `e2e/run-tests.sh`.

use std::time::{Duration, Instant};

use mk_e2e::{Agent, UID_LABEL, busybox_pod, container_state};

const RUNNING: &str = "trap 'exit 0' TERM; echo started; while true; do echo tick; sleep 1; done";

fn running(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let (state, _, _) = container_state(pod)?;
    let status = pod.status.as_ref()?;
    (state == "running" && status.phase.as_deref() == Some("Running"))
        .then(|| pod.metadata.uid.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_becomes_a_running_container_with_cri_logs() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-run")?;
    agent.write_manifest("web.yaml", &busybox_pod("web", "Always", 5, RUNNING))?;
    let uid = agent
        .wait_pod("web", Duration::from_secs(30), running)
        .await?;

    // Through CRI: one ready sandbox and one running container carrying the pod's UID.
    let sandboxes = agent.sandboxes().await?;
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    assert_eq!(sandboxes[0].labels.get(UID_LABEL), Some(&uid));
    let containers = agent.containers().await?;
    assert_eq!(containers.len(), 1);
    assert_eq!(
        containers[0].state,
        mk_cri::api::ContainerState::ContainerRunning as i32
    );

    // Through /pods: the status a user reads.
    let pod = agent.pod("web").await?.expect("pod listed");
    let status = pod.status.expect("status");
    assert!(
        status
            .pod_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{:?}",
        status.pod_ip
    );
    let cs = &status.container_statuses.expect("container statuses")[0];
    assert_eq!(
        cs.container_id.as_deref(),
        Some(format!("{}://{}", mk_e2e::runtime_name(), containers[0].id).as_str())
    );
    assert!(cs.image_id.contains("sha256:"), "{}", cs.image_id);
    assert!(cs.ready);
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));

    // The CRI log file in kubelet's layout, with CRI-format lines.
    let log = agent
        .pod_logs_dir()
        .join(format!("default_web-{}_{uid}", agent.node))
        .join("main/0.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("tick") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first = text.lines().next().unwrap_or_default();
    let fields: Vec<&str> = first.splitn(4, ' ').collect();
    assert_eq!(fields.len(), 4, "CRI log line {first:?}");
    assert!(
        fields[0].contains('T') && fields[0].ends_with('Z'),
        "timestamp in {first:?}"
    );
    assert_eq!(&fields[1..], &["stdout", "F", "started"], "{first:?}");

    // Metrics under kubelet's names (the gauges follow the next PLEG relist, within a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics = agent.get("/metrics").await?;
    while !metrics.contains("kubelet_running_pods 1") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = agent.get("/metrics").await?;
    }
    for name in [
        "kubelet_running_pods 1",
        "kubelet_running_containers{container_state=\"running\"} 1",
        "kubelet_runtime_operations_total{operation_type=\"run_podsandbox\"}",
        "kubelet_runtime_operations_duration_seconds_bucket",
        "kubelet_pod_start_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert_eq!(agent.get("/healthz").await?, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_manifest_replaces_the_pod_and_removed_file_stops_it() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-edit")?;
    agent.write_manifest("app.yaml", &busybox_pod("app", "Always", 5, RUNNING))?;
    let first_uid = agent
        .wait_pod("app", Duration::from_secs(30), running)
        .await?;

    agent.write_manifest(
        "app.yaml",
        &busybox_pod("app", "Always", 5, &RUNNING.replace("tick", "tock")),
    )?;
    let second_uid = agent
        .wait_pod("app", Duration::from_secs(30), |p| {
            running(p).filter(|uid| *uid != first_uid)
        })
        .await?;
    assert_ne!(first_uid, second_uid, "an edited manifest is a new pod");
    // The old pod's sandbox goes away.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sandboxes = agent.sandboxes().await?;
        let old: Vec<_> = sandboxes
            .iter()
            .filter(|s| s.labels.get(UID_LABEL) == Some(&first_uid))
            .collect();
        if old.is_empty() {
            assert_eq!(sandboxes.len(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old sandbox still present: {old:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A workload that ignores SIGTERM is killed when its grace period (3 s) ends.
    agent.write_manifest(
        "stubborn.yaml",
        &busybox_pod(
            "stubborn",
            "Always",
            3,
            "trap '' TERM; while true; do sleep 1; done",
        ),
    )?;
    agent
        .wait_pod("stubborn", Duration::from_secs(30), running)
        .await?;
    let started = Instant::now();
    agent.remove_manifest("stubborn.yaml")?;
    agent.remove_manifest("app.yaml")?;
    agent
        .wait_pod_gone("stubborn", Duration::from_secs(20))
        .await?;
    agent.wait_pod_gone("app", Duration::from_secs(5)).await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "stopped before its grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(12),
        "grace period 3 s, removal took {took:?}"
    );
    assert!(agent.sandboxes().await?.is_empty(), "sandboxes left behind");
    assert!(
        agent.containers().await?.is_empty(),
        "containers left behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_restarts_with_growing_backoff() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-crash")?;
    agent.write_manifest(
        "crash.yaml",
        &busybox_pod("crash", "Always", 2, "echo dying; exit 1"),
    )?;
    // The first restart is immediate, the second waits out a 10 s back-off.
    let t0 = Instant::now();
    agent
        .wait_pod("crash", Duration::from_secs(20), |p| {
            container_state(p).filter(|(_, _, n)| *n >= 1)
        })
        .await?;
    let first_restart = t0.elapsed();
    let (kind, reason, _) = agent
        .wait_pod("crash", Duration::from_secs(10), |p| {
            container_state(p).filter(|(_, r, n)| r == "CrashLoopBackOff" && *n == 1)
        })
        .await?;
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("waiting", "CrashLoopBackOff")
    );
    let pod = agent.pod("crash").await?.expect("pod");
    let cs = &pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .expect("statuses")[0];
    let message = cs
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(message.contains("back-off 10s"), "{message}");
    let last = cs
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 1);

    let t1 = Instant::now();
    agent
        .wait_pod("crash", Duration::from_secs(25), |p| {
            container_state(p).filter(|(_, _, n)| *n >= 2)
        })
        .await?;
    let second_restart = t1.elapsed();
    assert!(
        first_restart < Duration::from_secs(8),
        "first restart took {first_restart:?}"
    );
    assert!(
        second_restart >= Duration::from_secs(7),
        "second restart came after only {second_restart:?}"
    );
    // Then the back-off doubles.
    agent
        .wait_pod("crash", Duration::from_secs(10), |p| {
            let cs = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .clone();
            let m = cs.state?.waiting?.message?;
            m.contains("back-off 20s").then_some(())
        })
        .await?;
    assert_eq!(
        agent.sandboxes().await?.len(),
        1,
        "restarts reuse the sandbox"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_takes_down_good_pods() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-bad")?;
    agent.write_manifest("good.yaml", &busybox_pod("good", "Always", 2, RUNNING))?;
    agent.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: broken\nspec: [",
    )?;
    agent.write_manifest(
        "noimage.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: noimage}\nspec:\n  containers:\n  - {name: c, image: 'mini-kubelet.local/does-not-exist:1.0'}\n",
    )?;
    let good_uid = agent
        .wait_pod("good", Duration::from_secs(30), running)
        .await?;

    // The unknown image: ErrImagePull, then ImagePullBackOff; the pod stays Pending.
    let mut seen = Vec::new();
    agent
        .wait_pod("noimage", Duration::from_secs(30), |p| {
            let (_, reason, _) = container_state(p)?;
            if !seen.contains(&reason) {
                seen.push(reason.clone());
            }
            (reason == "ImagePullBackOff").then_some(())
        })
        .await?;
    assert!(
        seen.iter().any(|r| r == "ErrImagePull"),
        "reasons seen: {seen:?}"
    );
    let pod = agent.pod("noimage").await?.expect("pod");
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));

    // The malformed manifest is reported with its file name and reason and skipped.
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("broken.yaml"))
        .unwrap_or_else(|| panic!("no log line names broken.yaml:\n{log}"));
    assert!(
        line.contains("invalid static pod manifest") && line.contains("YAML"),
        "{line}"
    );
    assert!(agent.pod("broken").await?.is_none());

    // The good pod never restarted and the agent is healthy.
    let good = agent.pod("good").await?.expect("good pod");
    assert_eq!(running(&good), Some(good_uid));
    assert_eq!(container_state(&good).map(|s| s.2), Some(0));
    assert_eq!(agent.get("/healthz").await?, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_running_pods() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-adopt")?;
    agent.write_manifest("keep.yaml", &busybox_pod("keep", "Always", 2, RUNNING))?;
    let uid = agent
        .wait_pod("keep", Duration::from_secs(30), running)
        .await?;
    let before = agent.sandboxes().await?;
    let containers_before = agent.containers().await?;
    assert_eq!(before.len(), 1);

    agent.kill();
    // While the agent is down, a pod's manifest disappears: the restarted agent must clean it up.
    agent.write_manifest("gone.yaml", &busybox_pod("gone", "Always", 2, RUNNING))?;
    agent.spawn()?;
    agent
        .wait_pod("gone", Duration::from_secs(30), running)
        .await?;
    agent.kill();
    agent.remove_manifest("gone.yaml")?;
    agent.spawn()?;

    let pod_again = agent
        .wait_pod("keep", Duration::from_secs(30), running)
        .await?;
    assert_eq!(pod_again, uid);
    agent.wait_pod_gone("gone", Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = agent.sandboxes().await?;
        if after.len() == 1 {
            assert_eq!(
                after[0].id, before[0].id,
                "the running sandbox was adopted, not recreated"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected only the adopted sandbox, found {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let containers_after = agent.containers().await?;
    assert_eq!(containers_after.len(), 1, "{containers_after:?}");
    assert_eq!(
        containers_after[0].id, containers_before[0].id,
        "the container was not restarted"
    );
    let pod = agent.pod("keep").await?.expect("pod");
    assert_eq!(
        container_state(&pod).map(|s| s.2),
        Some(0),
        "restartCount stays 0"
    );
    Ok(())
}
