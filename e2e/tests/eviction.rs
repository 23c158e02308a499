//! The eviction manager end to end (kubelet's `pkg/kubelet/eviction`) on the real runtime: a
//! memory hog in a Burstable pod is evicted before a Guaranteed pod when `memory.available` crosses
//! the hard threshold; the node reports MemoryPressure; a BestEffort pod is refused while it holds.
//!
//! The pods are API pods (static pods are critical and never evicted). The threshold is set just
//! under what the machine has available when the test starts ([`MARGIN`] below the agent's own
//! measure, as cAdvisor's: capacity − the root cgroup's working set), and the hog writes
//! [`HOG_MIB`] into a memory-backed emptyDir when the test tells it to (a file in a hostPath
//! directory), which charges its pod and takes the node's available memory [`HOG_MIB`] −
//! [`MARGIN`] below the threshold: room for the rest of the machine to move either way.
//!
//! The agent runs with kubelet's monitoring period (10 s): the harness starts agents with no
//! environment of their own, so the test-only `MK_EVICTION_MONITORING_PERIOD` is not used here.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::Api;
use kube::api::ListParams;
use mk_e2e::cluster::Cluster;
use mk_e2e::periods::{allow, work};
use mk_e2e::{Agent, BUSYBOX, periods};

/// kubelet's `evictionMonitoringPeriod`, the agent's `MONITORING_PERIOD`
/// (`agent/src/eviction/manager.rs`): signals are observed at least this often.
const MONITORING_PERIOD: Duration = Duration::from_secs(10);
/// How far under the available memory the threshold is set (MiB): the machine is shared (builds,
/// other tests), and its available memory was seen to move by several hundred MiB within seconds.
const MARGIN: u64 = 2048;
/// What the hog writes into its memory-backed emptyDir (MiB): the node ends [`HOG_MIB`] −
/// [`MARGIN`] under the threshold, and back [`MARGIN`] over it once the hog is gone.
const HOG_MIB: u64 = 4096;
/// The Burstable hog's memory request.
const HOG_REQUEST: &str = "16Mi";
const MIB: u64 = 1 << 20;

/// `memory.available` as the agent measures it (cAdvisor's root cgroup, `agent/src/stats/node.rs`):
/// the machine's memory less the root cgroup's working set (usage less inactive file pages) on
/// cgroup v1; free plus inactive file pages from `/proc/meminfo` on a unified hierarchy.
fn node_memory_available() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let field = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    let total = field("MemTotal").context("no MemTotal")?;
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.usage_in_bytes").exists() {
        let usage: u64 = std::fs::read_to_string(v1.join("memory.usage_in_bytes"))?
            .trim()
            .parse()?;
        let stat = std::fs::read_to_string(v1.join("memory.stat"))?;
        let inactive_file: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("total_inactive_file "))
            .context("no total_inactive_file in memory.stat")?
            .trim()
            .parse()?;
        let working_set = usage.saturating_sub(inactive_file);
        return Ok(total.saturating_sub(working_set));
    }
    let free = field("MemFree").context("no MemFree")?;
    Ok(free + field("Inactive(file)").unwrap_or(0))
}

/// The node's available memory in the agent's own summary (what its eviction manager reads).
async fn agent_memory_available(agent: &Agent) -> Result<u64> {
    let body = agent.get("/stats/summary").await?;
    let summary: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("parsing /stats/summary: {body}"))?;
    summary
        .pointer("/node/memory/availableBytes")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no node.memory.availableBytes in {body}"))
}

fn pod_json(value: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(value)?)
}

fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref()?.phase.clone()
}

fn running_ready(p: &Pod) -> Option<()> {
    let ready = p
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .all(|c| c.ready);
    (phase(p).as_deref() == Some("Running") && ready).then_some(())
}

fn condition(node: &Node, kind: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

async fn wait_node<T>(
    cluster: &Cluster,
    agent: &mut Agent,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&Node) -> Option<T>,
) -> Result<T> {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        agent.assert_alive();
        if let Some(node) = nodes.get_opt(&agent.node).await?
            && let Some(v) = check(&node)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "node {}: {what} not within {timeout:?}\nagent log:\n{}",
                agent.node,
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burstable_memory_hog_is_evicted_before_a_guaranteed_pod() -> Result<()> {
    let cluster = Cluster::start().await?;
    let available = node_memory_available()?;
    let threshold_mib = (available / MIB)
        .checked_sub(MARGIN)
        .context("less memory available than the margin")?;
    println!(
        "memory.available at start: {} MiB; evictionHard memory.available: {threshold_mib}Mi",
        available / MIB
    );
    let mut agent = Agent::join(
        "e2e-evict",
        &cluster,
        &format!("evictionHard:\n  memory.available: {threshold_mib}Mi\n"),
    )?;
    wait_node(&cluster, &mut agent, "Ready", periods().node_ready(), |n| {
        (condition(n, "Ready").as_deref() == Some("True")).then_some(())
    })
    .await?;
    let ns = "default";
    let trigger = agent.dir.path().join("trigger");
    std::fs::create_dir_all(&trigger)?;
    let guaranteed = format!("guaranteed-{}", agent.node);
    let hog = format!("hog-{}", agent.node);
    let besteffort = format!("besteffort-{}", agent.node);
    cluster
        .create_pod(
            ns,
            pod_json(serde_json::json!({
                "metadata": {"name": guaranteed},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "main", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "64Mi"},
                            "limits": {"cpu": "50m", "memory": "64Mi"},
                        },
                    }],
                },
            }))?,
            &agent.node,
        )
        .await?;
    let hog_script = format!(
        "while [ ! -e /trigger/go ]; do sleep 0.1; done; \
         dd if=/dev/zero of=/mem/fill bs=1M count={HOG_MIB} 2>/dev/null; echo filled; \
         exec sleep 3600"
    );
    cluster
        .create_pod(
            ns,
            pod_json(serde_json::json!({
                "metadata": {"name": hog},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "hog", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", hog_script],
                        "resources": {"requests": {"memory": HOG_REQUEST}},
                        "volumeMounts": [
                            {"name": "mem", "mountPath": "/mem"},
                            {"name": "trigger", "mountPath": "/trigger"},
                        ],
                    }],
                    "volumes": [
                        {"name": "mem", "emptyDir": {"medium": "Memory"}},
                        {"name": "trigger", "hostPath": {"path": trigger.display().to_string(), "type": "Directory"}},
                    ],
                },
            }))?,
            &agent.node,
        )
        .await?;
    for name in [&guaranteed, &hog] {
        cluster
            .wait_pod(ns, name, periods().api_pod_start(), running_ready)
            .await?;
    }
    let qos = |p: &Pod| p.status.as_ref().and_then(|s| s.qos_class.clone());
    assert_eq!(
        qos(&cluster.pods(ns).get(&guaranteed).await?).as_deref(),
        Some("Guaranteed")
    );
    assert_eq!(
        qos(&cluster.pods(ns).get(&hog).await?).as_deref(),
        Some("Burstable")
    );
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node = nodes.get(&agent.node).await?;
    assert_eq!(condition(&node, "MemoryPressure").as_deref(), Some("False"));
    let seen = agent_memory_available(&agent).await?;
    println!(
        "the agent's memory.available before the hog: {} MiB (threshold {threshold_mib} MiB)",
        seen / MIB
    );
    ensure!(
        seen > threshold_mib * MIB,
        "the machine's available memory fell by more than the {MARGIN} MiB margin before the hog \
         ran ({} MiB at start, {} MiB now): something else on the machine took it",
        available / MIB,
        seen / MIB
    );

    // The hog fills its memory; the test watches the agent's own measure cross the threshold.
    std::fs::write(trigger.join("go"), b"")?;
    let triggered = Instant::now();
    let cross_deadline = triggered + allow(work::CONTAINER_START);
    let crossed = loop {
        let now = agent_memory_available(&agent).await?;
        if now < threshold_mib * MIB {
            println!(
                "memory.available {} MiB < {threshold_mib} MiB, {:?} after the trigger",
                now / MIB,
                triggered.elapsed()
            );
            break Instant::now();
        }
        let status = cluster.pods(ns).get(&hog).await?;
        if phase(&status).as_deref() == Some("Failed") {
            // Evicted before this poll saw the crossing.
            break Instant::now();
        }
        ensure!(
            Instant::now() < cross_deadline,
            "memory.available still {} MiB (threshold {threshold_mib} MiB) {:?} after the hog was \
             told to write {HOG_MIB} MiB: the machine freed memory meanwhile",
            now / MIB,
            triggered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Evicted within a monitoring period, the hard eviction's grace period (the runtime's
    // minimum) and the stop, and its status pushed.
    let bound = MONITORING_PERIOD
        + periods().min_grace
        + periods().pleg_relist
        + allow(work::CRI_CALL * 2 + work::POD_STOP + work::API_CALL * 2);
    let evicted = cluster
        .wait_pod(ns, &hog, bound, |p| {
            (phase(p).as_deref() == Some("Failed")).then(|| p.clone())
        })
        .await?;
    let evicted_at = Instant::now();
    let took = evicted_at - crossed;
    println!(
        "the hog was evicted {took:?} after memory.available crossed the threshold (monitoring \
         period {MONITORING_PERIOD:?}, bound {bound:?})"
    );
    let status = evicted.status.clone().unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    let message = status.message.clone().unwrap_or_default();
    println!("eviction message: {message}");
    let prefix = format!(
        "The node was low on resource: memory. Threshold quantity: {threshold_mib}Mi, available: "
    );
    assert!(message.starts_with(&prefix), "{message}");
    // The usage figure depends on the machine.
    assert!(
        message.contains("Container hog was using ")
            && message.ends_with(&format!(
                ", request is {HOG_REQUEST}, has larger consumption of memory. "
            )),
        "{message}"
    );
    let disruption = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget")
        .context("no DisruptionTarget condition")?;
    assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));

    // The Evicted event.
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), ns);
    let deadline = Instant::now() + periods().event_posted();
    loop {
        let list = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={hog}")))
            .await?;
        if let Some(e) = list
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some("Evicted"))
        {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert_eq!(e.message.as_deref(), Some(message.as_str()));
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no Evicted event for {hog}: {:?}",
            list.items
                .iter()
                .map(|e| e.reason.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The node reports MemoryPressure (it holds for evictionPressureTransitionPeriod, 5 min).
    let pressure_bound = periods().node_status_update + allow(work::API_CALL * 2);
    wait_node(
        &cluster,
        &mut agent,
        "MemoryPressure=True",
        pressure_bound,
        |n| (condition(n, "MemoryPressure").as_deref() == Some("True")).then_some(()),
    )
    .await?;
    if let Some(cp) = &cluster.control_plane {
        // kubelet does not taint its node for pressure: the node lifecycle controller does
        // (TaintNodesByCondition), from the condition.
        let taint = wait_node(
            &cluster,
            &mut agent,
            "the memory-pressure taint",
            mk_e2e::periods::control_plane::NODE_MONITOR_PERIOD + allow(work::API_CALL * 2),
            |n| {
                n.spec.as_ref()?.taints.as_ref()?.iter().find_map(|t| {
                    (t.key == "node.kubernetes.io/memory-pressure").then(|| t.effect.clone())
                })
            },
        )
        .await?;
        assert_eq!(taint, "NoSchedule");
        println!(
            "the controller-manager of {} tainted the node node.kubernetes.io/memory-pressure:NoSchedule",
            cp.dir.display()
        );
    }

    // While it holds, a BestEffort pod is refused.
    cluster
        .create_pod(
            ns,
            pod_json(serde_json::json!({
                "metadata": {"name": besteffort},
                "spec": {
                    "containers": [{
                        "name": "main", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "3600"],
                    }],
                },
            }))?,
            &agent.node,
        )
        .await?;
    let refused = cluster
        .wait_pod(ns, &besteffort, periods().api_pod_rejected(), |p| {
            (phase(p).as_deref() == Some("Failed")).then(|| p.clone())
        })
        .await?;
    let status = refused.status.unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was rejected: The node had condition: [MemoryPressure]. ")
    );

    // The Guaranteed pod kept running through it all, for a monitoring period after the hog went.
    let kept_until = evicted_at + MONITORING_PERIOD;
    while Instant::now() < kept_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let g = cluster.pods(ns).get(&guaranteed).await?;
    assert!(
        running_ready(&g).is_some(),
        "the Guaranteed pod did not survive: {:?}\nagent log:\n{}",
        g.status,
        agent.log()
    );
    let metrics = agent.get("/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|l| l == "kubelet_evictions{eviction_signal=\"memory.available\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("evictions"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    for name in [&guaranteed, &hog, &besteffort] {
        cluster.delete_pod(ns, name).await?;
    }
    Ok(())
}
