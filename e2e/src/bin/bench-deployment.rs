//! Benchmark of the agent as a node of the real control plane that `MK_E2E_CONTROLPLANE` names (run it
//! through `e2e/scripts/bench-deployment.sh`, which builds release binaries and starts containerd and
//! the control plane):
//! 1. agent start → its Node Ready, joining as the harness makes nodes join;
//! 2. for each N given (default 30 100): a Deployment of N replicas pinned to the node, scheduled by
//!    the real scheduler, created by the real ReplicaSet controller: each pod's time from its creation
//!    (its ADDED event on a watch) to `phase: Running` seen on the same watch (median, p99), next to
//!    the raw CRI floor for N pods started at once on the same containerd, measured in the same run;
//! 3. the agent's resident memory with the N pods running: when the last one ran, and after the
//!    node rested 100 s.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use mk_e2e::bench::{raw_floor_at_once, rss_kib, summary};
use mk_e2e::cluster::Cluster;
use mk_e2e::{Agent, BUSYBOX};

/// How long the node rests with a Deployment's pods running before its memory is read again: past
/// the HTTP client's idle connections (90 s in hyper's pool) and three status resyncs.
const SETTLE: Duration = Duration::from_secs(100);

/// How long a benchmark step may take before it is called failed.
const STEP: Duration = Duration::from_secs(600);

async fn wait_until<F, Fut>(what: &str, agent: &mut Agent, mut done: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    while !done().await? {
        agent.assert_alive();
        if started.elapsed() > STEP {
            bail!("{what}: not within {STEP:?}\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed())
}

fn deployment(name: &str, node: &str, replicas: usize) -> Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "main",
                        "image": BUSYBOX,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                    }],
                },
            },
        },
    }))?)
}

/// Creates a Deployment of `n` replicas and returns each pod's creation → Running time (ms).
async fn run_deployment(
    cluster: &Cluster,
    agent: &mut Agent,
    ns: &str,
    n: usize,
) -> Result<Vec<f64>> {
    let name = format!("bench-{n}");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let selector = format!("app={name}");
    let rv = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = pods
        .watch(&WatchParams::default().labels(&selector), &rv)
        .await?
        .boxed();
    Api::<Deployment>::namespaced(cluster.client.clone(), ns)
        .create(&PostParams::default(), &deployment(&name, &agent.node, n)?)
        .await?;
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + STEP;
    while running.len() < n {
        agent.assert_alive();
        let event = tokio::time::timeout_at(deadline.into(), watch.try_next()).await;
        let event = match event {
            Ok(Ok(Some(event))) => event,
            // The API server ends watches now and then: resume from where we were.
            Ok(Ok(None)) => {
                watch = pods
                    .watch(&WatchParams::default().labels(&selector), &rv)
                    .await?
                    .boxed();
                continue;
            }
            _ => bail!(
                "only {} of {n} pods Running within {STEP:?}\n{}",
                running.len(),
                agent.log()
            ),
        };
        match event {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                let pod_name = p.metadata.name.clone().unwrap_or_default();
                let t0 = *created.entry(pod_name.clone()).or_insert_with(Instant::now);
                let is_running =
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if is_running && !running.contains_key(&pod_name) {
                    running.insert(pod_name, t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
            WatchEvent::Error(e) => bail!("watch error: {e:?}"),
            _ => {}
        }
    }
    Ok(running.into_values().collect())
}

/// Deletes the Deployment and waits until its pods are gone from the API and the runtime.
async fn remove_deployment(cluster: &Cluster, agent: &mut Agent, ns: &str, n: usize) -> Result<()> {
    let name = format!("bench-{n}");
    Api::<Deployment>::namespaced(cluster.client.clone(), ns)
        .delete(&name, &DeleteParams::foreground())
        .await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let selector = format!("app={name}");
    let client_pods = pods.clone();
    wait_until("pods deleted", agent, || {
        let pods = client_pods.clone();
        let selector = selector.clone();
        async move {
            Ok(pods
                .list_metadata(&ListParams::default().labels(&selector))
                .await?
                .items
                .is_empty())
        }
    })
    .await?;
    let cri = agent.cri();
    let node = agent.node.clone();
    wait_until("containers removed", agent, || {
        let cri = cri.clone();
        let node = node.clone();
        async move {
            let containers = cri
                .list_containers(mk_cri::api::ListContainersRequest {
                    filter: Some(mk_cri::api::ContainerFilter {
                        label_selector: HashMap::from([(mk_e2e::NODE_LABEL.to_string(), node)]),
                        ..Default::default()
                    }),
                })
                .await?;
            Ok(containers.containers.is_empty())
        }
    })
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("each argument is a replica count"))
        .collect::<Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![30, 100]
    } else {
        sizes
    };
    let cluster = Cluster::start().await?;
    if cluster.control_plane.is_none() {
        bail!(
            "set MK_E2E_CONTROLPLANE to a controlplane-up.sh directory (bench-deployment.sh does)"
        );
    }
    println!(
        "runtime {}; agent {}",
        mk_e2e::endpoint(),
        mk_e2e::agent_binary().display()
    );

    let started = Instant::now();
    let mut agent = Agent::join("bench-deploy", &cluster, "maxPods: 110\n")?;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node_name = agent.node.clone();
    wait_until("node Ready", &mut agent, || {
        let nodes = nodes.clone();
        let node_name = node_name.clone();
        async move {
            Ok(nodes.get_opt(&node_name).await?.is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }))
        }
    })
    .await?;
    println!(
        "agent start -> node Ready: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let ns = format!("bench-{}", std::process::id());
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(cluster.client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &ns);
    wait_until("default ServiceAccount", &mut agent, || {
        let accounts = accounts.clone();
        async move { Ok(accounts.get_opt("default").await?.is_some()) }
    })
    .await?;

    let logs = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for &n in &sizes {
        let agent_ms = run_deployment(&cluster, &mut agent, &ns, n).await?;
        let rss = agent.pid().and_then(rss_kib);
        // The node at rest with the pods: the start burst's connections and buffers are gone.
        tokio::time::sleep(SETTLE).await;
        agent.assert_alive();
        let settled = agent.pid().and_then(rss_kib);
        remove_deployment(&cluster, &mut agent, &ns, n).await?;
        let raw = raw_floor_at_once(n, logs.path()).await?;
        rows.push((n, agent_ms, raw, rss, settled));
    }
    println!();
    let mib =
        |kib: Option<u64>| kib.map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    for (n, agent_ms, raw, rss, settled) in rows {
        summary(&format!("raw CRI floor, {n} pods at once"), raw);
        summary(
            &format!("Deployment of {n}: pod created -> Running"),
            agent_ms,
        );
        println!(
            "agent resident memory with the {n} pods running: {} MiB when the last one ran, {} MiB {} s later",
            mib(rss),
            mib(settled),
            SETTLE.as_secs()
        );
    }
    Api::<Namespace>::all(cluster.client.clone())
        .delete(&ns, &DeleteParams::default())
        .await?;
    Ok(())
}
