//! Graceful node shutdown end to end (kubelet's `shutdownGracePeriod` and
//! `shutdownGracePeriodCriticalPods`): the real agent binary on the real runtime is sent SIGTERM, as
//! systemd does when the machine goes down, and the tests look at what a user would see: the Node
//! and the pods on the API server, the containers in the runtime, the agent's exit status and when
//! it came. Without the feature SIGTERM leaves the pods running and the agent exits at once.
//! Run through `e2e/run-tests.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use mk_cri::api;
use mk_e2e::cluster::{Cluster, pod};
use mk_e2e::periods::{allow, work};
use mk_e2e::{Agent, BUSYBOX, busybox_pod, container_state, periods};

/// The budget of the test node: 20 s in all, the last 10 s for critical pods.
const SHUTDOWN_CONFIG: &str = "shutdownGracePeriod: 20s\nshutdownGracePeriodCriticalPods: 10s\n";
const BUDGET: Duration = Duration::from_secs(20);
const REGULAR_BUDGET: Duration = Duration::from_secs(10);
/// After its last group the agent waits up to this long for the API server to show the shutdown
/// (`REPORT_GRACE` in agent/src/nodeshutdown/manager.rs), then exits.
const REPORT_GRACE: Duration = Duration::from_secs(2);
/// What the agent may take after its budget: showing the shutdown, and its own exit.
fn exit_margin() -> Duration {
    REPORT_GRACE + allow(work::API_CALL)
}

/// Writes a line and exits on SIGTERM (at most a second later: the shell runs the trap after its
/// `sleep`).
fn stops_on_term(name: &str) -> String {
    format!(
        "trap 'echo {name} got SIGTERM; exit 0' TERM; echo started; while true; do sleep 1; done"
    )
}
/// Ignores SIGTERM: only the end of its grace period stops it.
const IGNORES_TERM: &str = "trap '' TERM; while true; do sleep 1; done";

/// A critical static pod, as kubeadm writes them: the priority class and its numeric priority
/// (kubelet ranks pods by the number only; a static pod has no admission to fill it in).
fn critical_static_pod(name: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\nspec:\n  \
         priorityClassName: system-node-critical\n  priority: 2000001000\n  \
         terminationGracePeriodSeconds: 30\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    \
         imagePullPolicy: IfNotPresent\n    command: [sh, -c, \"{script}\"]\n"
    )
}

fn running(p: &Pod) -> Option<()> {
    let (state, _, _) = container_state(p)?;
    (state == "running" && p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(())
}

/// Sends SIGTERM to the agent's process; returns when (just before it was sent).
fn sigterm(agent: &Agent) -> anyhow::Result<Instant> {
    let pid = agent.pid().context("the agent runs")?;
    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid}");
    Ok(sent)
}

/// Waits until the agent's process has exited; returns its wait status (as waitpid(2) gives it:
/// 0 is exit code 0) and when it was seen gone. The harness reaps it later, so until then the
/// kernel keeps it as a zombie whose `/proc/<pid>/stat` holds the status (field 52).
async fn wait_exited(agent: &Agent, timeout: Duration) -> anyhow::Result<(i32, Instant)> {
    let pid = agent.pid().context("the agent runs")?;
    let deadline = Instant::now() + timeout;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("the agent's process {pid} was reaped by someone else"))?;
        // `pid (comm) state ...`: the fields after the command name, the state first.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.first() == Some(&"Z") {
            let status = fields
                .get(49)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("no exit status in {stat}"))?;
            return Ok((status, Instant::now()));
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not exit within {timeout:?}; its log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_node_ready(cluster: &Cluster, agent: &mut Agent) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let timeout = periods().node_ready();
    let deadline = Instant::now() + timeout;
    loop {
        agent.assert_alive();
        if let Some(node) = nodes.get_opt(&agent.node).await?
            && ready_condition(&node).is_some_and(|c| c.status == "True")
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {} not Ready within {timeout:?}\n{}",
            agent.node,
            agent.log()
        );
        tokio::time::sleep(periods::POLL).await;
    }
}

fn ready_condition(node: &Node) -> Option<k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

/// The pod's status says the node stopped it for its shutdown, as kubelet's does.
fn assert_stopped_for_shutdown(p: &Pod) {
    let name = p.metadata.name.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase.as_deref(),
        Some("Failed"),
        "{name}: {status:?}"
    );
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
        .unwrap_or_else(|| panic!("{name}: no DisruptionTarget condition: {status:?}"));
    assert_eq!(disruption.status, "True");
    assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));
}

/// The pod's containers in the runtime, with their statuses (finish times).
async fn container_statuses(
    agent: &Agent,
    pod_name: &str,
) -> anyhow::Result<Vec<api::ContainerStatus>> {
    let cri = agent.cri();
    let mut statuses = Vec::new();
    for c in agent.containers().await? {
        if c.labels.get("io.kubernetes.pod.name").map(String::as_str) != Some(pod_name) {
            continue;
        }
        let status = cri
            .container_status(api::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .await?
            .status
            .context("container status")?;
        statuses.push(status);
    }
    Ok(statuses)
}

/// Nanoseconds since the epoch.
fn epoch_nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn seconds(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// kubelet's graceful node shutdown on SIGTERM: the node turns NotReady on the API server, new
/// pods are refused, the regular pods stop first (a stubborn one holds its group for exactly the
/// group's 10 s, not its own 30 s), then the critical static pod; every stopped pod is Failed with
/// kubelet's reason on the API server before the agent exits, nothing of them runs in the runtime,
/// and the agent exits 0 within the budget. Prints the time from SIGTERM to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_regular_pods_then_critical_ones_and_the_agent_exits() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut agent = Agent::join("e2e-shutdown", &cluster, SHUTDOWN_CONFIG)?;
    wait_node_ready(&cluster, &mut agent).await?;
    let ns = "default";
    let regular = format!("regular-{}", agent.node);
    let stubborn = format!("stubborn-{}", agent.node);
    cluster
        .create_pod(
            ns,
            pod(&regular, "Always", 30, &stops_on_term("regular")),
            &agent.node,
        )
        .await?;
    cluster
        .create_pod(ns, pod(&stubborn, "Always", 30, IGNORES_TERM), &agent.node)
        .await?;
    agent.write_manifest(
        "critical.yaml",
        &critical_static_pod("critical", &stops_on_term("critical")),
    )?;
    let critical = format!("critical-{}", agent.node);
    for name in [&regular, &stubborn] {
        cluster
            .wait_pod(ns, name, periods().api_pod_start(), running)
            .await?;
    }
    // Its mirror pod runs too (the agent waits for it to show Failed before it exits).
    cluster
        .wait_pod(
            "kube-system",
            &critical,
            periods().mirror_created(),
            running,
        )
        .await?;

    let wall = std::time::SystemTime::now();
    let signalled = sigterm(&agent)?;
    // The node reports NotReady at once, not at its next status update (10 s).
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let within = allow(work::API_CALL);
    loop {
        let node = nodes.get(&agent.node).await?;
        if ready_condition(&node).is_some_and(|c| {
            c.status == "False"
                && c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("node is shutting down"))
        }) {
            break;
        }
        anyhow::ensure!(
            signalled.elapsed() < within,
            "the node did not report its shutdown within {within:?}; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(periods::POLL).await;
    }
    println!(
        "SIGTERM to NotReady on the API server: {:?}",
        signalled.elapsed()
    );
    // A pod bound to the node while it shuts down is refused.
    let late = format!("late-{}", agent.node);
    cluster
        .create_pod(
            ns,
            pod(&late, "Always", 30, &stops_on_term("late")),
            &agent.node,
        )
        .await?;
    let (status, exited) = wait_exited(&agent, BUDGET + exit_margin()).await?;
    let took = exited - signalled;
    println!("SIGTERM to exit: {took:?} (budget {BUDGET:?})");
    assert_eq!(
        status,
        0,
        "the agent exits cleanly; its log:\n{}",
        agent.log()
    );
    assert!(
        took >= REGULAR_BUDGET,
        "the stubborn pod holds the regular group for its 10 s: exited after {took:?}"
    );

    // The API server already shows it all: the agent waited for that before exiting.
    let ready = ready_condition(&nodes.get(&agent.node).await?).context("Ready condition")?;
    assert_eq!(ready.status, "False", "{ready:?}");
    assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
    assert!(
        ready
            .message
            .as_deref()
            .is_some_and(|m| m.contains("node is shutting down")),
        "{ready:?}"
    );
    for name in [&regular, &stubborn] {
        assert_stopped_for_shutdown(&cluster.pods(ns).get(name).await?);
    }
    assert_stopped_for_shutdown(&cluster.pods("kube-system").get(&critical).await?);
    let refused = cluster
        .pods(ns)
        .get(&late)
        .await?
        .status
        .unwrap_or_default();
    assert_eq!(refused.phase.as_deref(), Some("Failed"), "{refused:?}");
    assert_eq!(refused.reason.as_deref(), Some("NodeShutdown"));
    assert_eq!(
        refused.message.as_deref(),
        Some("Pod was rejected: Pod was rejected as the node is shutting down.")
    );

    // In the runtime: everything stopped, regular pods before the critical one.
    // (`said`: the line its SIGTERM handler wrote, for the pods that stop on SIGTERM.)
    let finished = |statuses: &[api::ContainerStatus], name: &str, said: Option<&str>| {
        let [status] = statuses else {
            bail!("{name}: expected one container, found {}", statuses.len());
        };
        anyhow::ensure!(
            status.state == api::ContainerState::ContainerExited as i32,
            "{name} still runs"
        );
        if let Some(line) = said {
            let log = std::fs::read_to_string(&status.log_path)
                .with_context(|| format!("{name}'s log {}", status.log_path))?;
            anyhow::ensure!(
                log.contains(line),
                "{name} was not stopped by SIGTERM:\n{log}"
            );
        }
        Ok(status.finished_at)
    };
    let regular_done = finished(
        &container_statuses(&agent, &regular).await?,
        &regular,
        Some("regular got SIGTERM"),
    )?;
    let stubborn_done = finished(
        &container_statuses(&agent, &stubborn).await?,
        &stubborn,
        None,
    )?;
    let critical_done = finished(
        &container_statuses(&agent, &critical).await?,
        &critical,
        Some("critical got SIGTERM"),
    )?;
    let sent = epoch_nanos(wall);
    println!(
        "after SIGTERM: regular stopped at {:.2} s, stubborn at {:.2} s, critical at {:.2} s",
        seconds(regular_done - sent),
        seconds(stubborn_done - sent),
        seconds(critical_done - sent),
    );
    assert!(
        regular_done < critical_done,
        "the regular pod stops before the critical one"
    );
    let regular_budget = i64::try_from(REGULAR_BUDGET.as_nanos())?;
    assert!(
        critical_done - sent >= regular_budget,
        "the critical pod was stopped before the regular group's 10 s were up"
    );
    // The stubborn pod got its group's 10 s, not its own 30 s.
    assert!(
        stubborn_done - sent >= regular_budget,
        "the stubborn pod was killed before its 10 s"
    );
    assert!(
        stubborn_done - sent < regular_budget + i64::try_from(allow(work::CRI_CALL).as_nanos())?,
        "the stubborn pod had more than its group's 10 s"
    );
    for s in agent.sandboxes().await? {
        assert_ne!(
            s.state,
            api::PodSandboxState::SandboxReady as i32,
            "a sandbox is still ready: {s:?}"
        );
    }
    Ok(())
}

/// Without graceful node shutdown (the default) SIGTERM stops the agent at once and leaves its pods
/// running, as kubelet does. Prints the time from SIGTERM to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_graceful_shutdown_sigterm_leaves_the_pods_running() -> anyhow::Result<()> {
    let mut agent = Agent::start("e2e-noshutdown")?;
    agent.write_manifest(
        "keeper.yaml",
        &busybox_pod("keeper", "Always", 30, &stops_on_term("keeper")),
    )?;
    agent
        .wait_pod("keeper", periods().static_pod_start(), running)
        .await?;
    let signalled = sigterm(&agent)?;
    let (status, exited) = wait_exited(&agent, Duration::from_secs(5)).await?;
    println!(
        "SIGTERM to exit without graceful shutdown: {:?}",
        exited - signalled
    );
    assert_eq!(
        status,
        0,
        "the agent exits cleanly; its log:\n{}",
        agent.log()
    );
    let containers = agent.containers().await?;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(
        containers[0].state,
        api::ContainerState::ContainerRunning as i32,
        "the pod keeps running"
    );
    Ok(())
}

/// A second SIGTERM during the shutdown sequence stops the agent at once (kubelet has no such
/// notion; this agent's choice), without waiting for the pod being stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_shutdown_exits_at_once() -> anyhow::Result<()> {
    let mut agent = Agent::start_with("e2e-shutdown2", None, SHUTDOWN_CONFIG)?;
    agent.write_manifest(
        "stubborn.yaml",
        &busybox_pod("stubborn", "Always", 30, IGNORES_TERM),
    )?;
    agent
        .wait_pod("stubborn", periods().static_pod_start(), running)
        .await?;
    sigterm(&agent)?;
    // The sequence is under way: the stubborn pod is being stopped (it takes its group's 10 s).
    let deadline = Instant::now() + allow(work::CRI_CALL);
    while !agent
        .log()
        .contains("Shutdown manager killing pod with gracePeriod")
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the shutdown sequence did not start; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(periods::POLL).await;
    }
    agent.assert_alive();
    let again = sigterm(&agent)?;
    let (status, exited) = wait_exited(&agent, REGULAR_BUDGET).await?;
    let took = exited - again;
    println!("second SIGTERM to exit: {took:?}");
    assert_eq!(
        status,
        0,
        "the agent exits cleanly; its log:\n{}",
        agent.log()
    );
    assert!(
        took < allow(work::CRI_CALL),
        "the agent waited for the pod: {took:?}"
    );
    Ok(())
}
