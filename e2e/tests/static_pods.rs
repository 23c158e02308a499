//! Static pods end to end: the real agent binary, a real containerd, manifests in a folder.
//! Run through `e2e/run-tests.sh`.

use std::time::{Duration, Instant};

use mk_e2e::{Agent, UID_LABEL, busybox_pod, container_state, periods};

/// The grace periods the manifests of `edited_manifest_replaces_the_pod_and_removed_file_stops_it`
/// give.
const APP_GRACE: Duration = Duration::from_secs(5);
const STUBBORN_GRACE: Duration = Duration::from_secs(3);

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
        .wait_pod("web", periods().static_pod_start(), running)
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
    let deadline = Instant::now() + periods().container_output();
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
    // RFC 3339 with nanoseconds: containerd writes `Z`, cri-o a `+00:00` offset.
    assert!(
        mk_e2e::cri_checks::is_rfc3339_nano(fields[0]),
        "timestamp in {first:?}"
    );
    assert_eq!(&fields[1..], &["stdout", "F", "started"], "{first:?}");

    // Metrics under kubelet's names (the gauges follow the next PLEG relist).
    let deadline = Instant::now() + periods().relist_seen();
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
        // kubelet counts static pods apart: one static pod, none from an API server.
        "kubelet_desired_pods{static=\"true\"} 1",
        "kubelet_desired_pods{static=\"\"} 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    // The process collector's figures are the agent's own: its resident memory as /proc says.
    let served_rss: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("process_resident_memory_bytes");
    let pid = agent.pid().expect("the agent runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let ratio = served_rss / (rss_kib * 1024.0);
    assert!(
        (0.5..2.0).contains(&ratio),
        "process_resident_memory_bytes {served_rss} vs VmRSS {rss_kib} KiB"
    );
    assert_eq!(agent.get("/healthz").await?, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_manifest_replaces_the_pod_and_removed_file_stops_it() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-edit")?;
    agent.write_manifest("app.yaml", &busybox_pod("app", "Always", 5, RUNNING))?;
    let first_uid = agent
        .wait_pod("app", periods().static_pod_start(), running)
        .await?;

    agent.write_manifest(
        "app.yaml",
        &busybox_pod("app", "Always", 5, &RUNNING.replace("tick", "tock")),
    )?;
    let second_uid = agent
        .wait_pod("app", periods().static_pod_replace(APP_GRACE), |p| {
            running(p).filter(|uid| *uid != first_uid)
        })
        .await?;
    assert_ne!(first_uid, second_uid, "an edited manifest is a new pod");
    // The old pod's sandbox goes away.
    let deadline = Instant::now() + periods().leftovers_removed();
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
            STUBBORN_GRACE.as_secs() as u32,
            "trap '' TERM; while true; do sleep 1; done",
        ),
    )?;
    agent
        .wait_pod("stubborn", periods().static_pod_start(), running)
        .await?;
    let started = Instant::now();
    agent.remove_manifest("stubborn.yaml")?;
    agent.remove_manifest("app.yaml")?;
    // The agent's guarantee: the folder is read within fileCheckFrequency, the workload gets its
    // whole grace period, then it is killed and the pod removed.
    let bound = periods().static_pod_removed(STUBBORN_GRACE);
    agent.wait_pod_gone("stubborn", bound).await?;
    let took = started.elapsed();
    agent
        .wait_pod_gone("app", periods().static_pod_removed(APP_GRACE))
        .await?;
    // Not before the grace period (less the one second kubelet's own timestamps may lose).
    assert!(
        took >= STUBBORN_GRACE - Duration::from_secs(1),
        "stopped before its grace period: {took:?}"
    );
    assert!(
        took < bound,
        "grace period {STUBBORN_GRACE:?}, removal took {took:?} (bound {bound:?})"
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
    let p = periods();
    let t0 = Instant::now();
    let mut reasons_before_first_restart = Vec::new();
    agent
        .wait_pod(
            "crash",
            p.static_pod_start() + p.restart_immediate(),
            |pod| {
                let (_, reason, n) = container_state(pod)?;
                if n == 0 && !reasons_before_first_restart.contains(&reason) {
                    reasons_before_first_restart.push(reason);
                }
                (n >= 1).then_some(())
            },
        )
        .await?;
    let first_restart = t0.elapsed();
    assert!(
        !reasons_before_first_restart
            .iter()
            .any(|r| r == "CrashLoopBackOff"),
        "the first restart was backed off: {reasons_before_first_restart:?}"
    );
    // The second run exits at once; the agent backs off and says so.
    let backed_off = agent
        .wait_pod("crash", p.restart_immediate() + p.exit_reported(), |pod| {
            container_state(pod)
                .filter(|(_, r, n)| r == "CrashLoopBackOff" && *n == 1)
                .map(|_| pod.clone())
        })
        .await?;
    let (kind, reason, _) = container_state(&backed_off).expect("state");
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("waiting", "CrashLoopBackOff")
    );
    let cs = &backed_off
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
    let second_finished = last.finished_at.clone().expect("finishedAt").0;

    // The back-off is counted from the run's finish, as the runtime recorded it: the next start
    // may not come earlier (the runtime's own timestamps, so no polling delay enters the check).
    let t1 = Instant::now();
    let third_started = agent
        .wait_pod("crash", p.restart_after_backoff(1), |pod| {
            let cs = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
            if cs.restart_count < 2 {
                return None;
            }
            let state = cs.state.as_ref()?;
            let started = match (&state.running, &state.terminated) {
                (Some(r), _) => r.started_at.clone(),
                (_, Some(t)) => t.started_at.clone(),
                // Already backed off again: the run that started is the last one.
                _ if cs.restart_count == 2 => cs
                    .last_state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .started_at
                    .clone(),
                _ => None,
            };
            Some(started)
        })
        .await?;
    let second_restart = t1.elapsed();
    assert!(
        first_restart < p.static_pod_start() + p.restart_immediate(),
        "first restart took {first_restart:?}"
    );
    if let Some(third_started) = third_started {
        let waited = third_started.0.duration_since(second_finished);
        // Status timestamps have whole seconds: allow the one second they may lose.
        let least = jiff::SignedDuration::try_from(p.backoff_initial - Duration::from_secs(1))?;
        assert!(
            waited >= least,
            "restarted {waited:?} after the run finished, before its back-off of {:?}",
            p.backoff_initial
        );
    } else {
        panic!("the restarted container has no startedAt (waited {second_restart:?})");
    }
    // Then the back-off doubles.
    agent
        .wait_pod("crash", p.restart_immediate() + p.exit_reported(), |pod| {
            let cs = pod
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
        .wait_pod("good", periods().static_pod_start(), running)
        .await?;

    // The unknown image: ErrImagePull, then ImagePullBackOff; the pod stays Pending. ErrImagePull
    // is shown only until the pod worker's next sync (`Periods::err_image_pull_visible`): the wait
    // polls every `TRANSIENT_POLL`, far inside that window, and records every reason it sees.
    let mut seen = Vec::new();
    agent
        .wait_pod_closely("noimage", periods().pull_failure_then_backoff(), |p| {
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
        .wait_pod("keep", periods().static_pod_start(), running)
        .await?;
    let before = agent.sandboxes().await?;
    let containers_before = agent.containers().await?;
    assert_eq!(before.len(), 1);

    agent.kill();
    // While the agent is down, a pod's manifest disappears: the restarted agent must clean it up.
    agent.write_manifest("gone.yaml", &busybox_pod("gone", "Always", 2, RUNNING))?;
    agent.spawn()?;
    agent
        .wait_pod("gone", periods().static_pod_start(), running)
        .await?;
    agent.kill();
    agent.remove_manifest("gone.yaml")?;
    agent.spawn()?;

    let pod_again = agent
        .wait_pod("keep", periods().static_pod_start(), running)
        .await?;
    assert_eq!(pod_again, uid);
    // The restarted agent finds the orphan at its first relist and stops it within its grace.
    agent
        .wait_pod_gone(
            "gone",
            periods().agent_up() + periods().static_pod_removed(Duration::from_secs(2)),
        )
        .await?;
    let deadline = Instant::now() + periods().leftovers_removed();
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

/// The value of an agent counter in its `/metrics` (OpenMetrics name, `_total` included).
async fn counter(agent: &Agent, name: &str) -> anyhow::Result<u64> {
    let text = agent.get("/metrics").await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0))
}

/// Whether the agent's runtime serves CRI container events: containerd 1.6 refuses the call at
/// once (Unimplemented); containerd 2.x accepts it and answers with its first event; the Docker
/// adapter answers at once.
async fn runtime_serves_events(agent: &Agent) -> anyhow::Result<bool> {
    let cri = agent.cri();
    tokio::select! {
        answer = cri.container_events() => match answer {
            Ok(_) => Ok(true),
            Err(e) if e.is_unimplemented() => Ok(false),
            Err(e) => Err(e.into()),
        },
        () = tokio::time::sleep(ESTABLISHED_AFTER) => Ok(true),
    }
}

/// How long the agent waits before it counts a subscription that was neither refused nor
/// answered as open (`ESTABLISHED_AFTER` in agent/src/pleg/events.rs).
const ESTABLISHED_AFTER: Duration = Duration::from_secs(2);

/// The PID of the process whose command line is exactly `argv`.
fn pid_of(argv: &[&str]) -> Option<u32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            (std::fs::read(entry.path().join("cmdline")).ok()? == wanted).then_some(pid)
        })
}

/// A container whose process is killed from outside (`kill -9`, as the OOM killer or an operator
/// would) is restarted. With a runtime that serves container events the agent relists only every
/// 300 s, so the restart can only come from the event: the relist count must not move. Without
/// events it comes from the next 1 s relist. The kill-to-running time is printed for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_is_restarted_from_the_runtime_event() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-kill")?;
    // A command line no other test runs.
    let seconds = format!("{}", 400_000 + std::process::id() % 100_000);
    let script = format!("exec sleep {seconds}");
    agent.write_manifest("victim.yaml", &busybox_pod("victim", "Always", 2, &script))?;
    let p = periods();
    agent
        .wait_pod("victim", p.static_pod_start(), running)
        .await?;
    // Asked once the agent runs: on Docker its adapter's socket exists from then on.
    let events = runtime_serves_events(&agent).await?;
    let (success, errors) = (
        "kubelet_evented_pleg_connection_success_count",
        "kubelet_evented_pleg_connection_error_count",
    );
    let relists = "kubelet_pleg_relist_interval_seconds_count";
    if events {
        assert!(
            counter(&agent, success).await? >= 1,
            "the agent follows the events"
        );
    } else {
        assert_eq!(counter(&agent, success).await?, 0);
        assert!(
            counter(&agent, errors).await? >= 1,
            "the refusal was noticed"
        );
    }
    let pid = pid_of(&["sleep", &seconds]).expect("the container's process is on this host");
    // Quiet first: with events, the relist that follows the stream's opening (or one that retries
    // a pod read too early) is done once a whole relist period passes without one.
    let mut relists_before = counter(&agent, relists).await?;
    if events {
        let deadline = Instant::now() + p.relist_seen();
        loop {
            tokio::time::sleep(p.pleg_relist * 2).await;
            let now = counter(&agent, relists).await?;
            if now == relists_before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent keeps relisting: {now} relists"
            );
            relists_before = now;
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    assert!(status.success(), "kill -9 {pid}");
    let killed = Instant::now();
    agent
        .wait_pod("victim", p.restart_immediate(), |pod| {
            container_state(pod).filter(|(state, _, n)| state == "running" && *n == 1)
        })
        .await?;
    let latency = killed.elapsed();
    let mode = if events { "events" } else { "1 s relist" };
    println!("kill -9 to running again: {latency:?} ({mode})");
    if events {
        assert_eq!(
            counter(&agent, relists).await?,
            relists_before,
            "no relist ran between the kill and the restart: the event woke the worker"
        );
        assert!(
            latency
                < p.pleg_relist + mk_e2e::periods::allow(mk_e2e::periods::work::CONTAINER_START),
            "{latency:?}"
        );
    }
    agent.assert_alive();
    Ok(())
}
