//! Benchmark of the agent joined to an API server (the in-process stand-in):
//! 1. time from pod creation to `status.phase: Running` seen through a watch, for N pods created at
//!    once (median, p99);
//! 2. API requests per minute of the idle node with those pods running (every request the stand-in
//!    receives is counted; watches count once when opened).
//!
//! Run it through `e2e/scripts/bench-api-start.sh`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube_standin::{Standin, StandinOptions};
use mk_e2e::Agent;
use mk_e2e::cluster::pod;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let idle_secs: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60);

    // The stand-in's router behind a counting layer.
    let options = StandinOptions {
        service_account_admission: false,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (router, _state) = Standin::app(&options, &addr.to_string());
    let requests = Arc::new(AtomicU64::new(0));
    let by_kind: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let (counter, kinds) = (requests.clone(), by_kind.clone());
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let counter = counter.clone();
            let kinds = kinds.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                let path = req.uri().path().to_string();
                let watch = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
                let kind = format!(
                    "{} {}{}",
                    req.method(),
                    path.split('/')
                        .filter(|s| !s.is_empty())
                        .take(6)
                        .collect::<Vec<_>>()
                        .join("/"),
                    if watch { " (watch)" } else { "" }
                );
                if let Ok(mut k) = kinds.lock() {
                    *k.entry(kind).or_default() += 1;
                }
                next.run(req).await
            }
        },
    ));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        kube_standin::kubeconfig(&format!("http://{addr}")),
    )?;
    let client = kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse()?))?;

    let mut agent = Agent::start_with("bench-api", Some(&kubeconfig), "maxPods: 110\n")?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.get_opt(&agent.node).await?.is_none() {
        agent.assert_alive();
        if Instant::now() > deadline {
            bail!("node never registered:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rv = pods
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = pods.watch(&WatchParams::default(), &rv).await?.boxed();
    let mut created: HashMap<String, Instant> = HashMap::new();
    for i in 0..n {
        let name = format!("bench-{i}");
        let mut p = pod(
            &name,
            "Always",
            2,
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        );
        p.spec.get_or_insert_with(Default::default).node_name = Some(agent.node.clone());
        created.insert(name, Instant::now());
        pods.create(&PostParams::default(), &p).await?;
    }
    let mut running: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.len() < n {
        let event = tokio::time::timeout_at(deadline.into(), watch.try_next()).await;
        let Ok(Ok(Some(event))) = event else {
            bail!(
                "only {} of {n} pods running before the deadline\n{}",
                running.len(),
                agent.log()
            )
        };
        if let WatchEvent::Modified(p) | WatchEvent::Added(p) = event {
            let name = p.metadata.name.clone().unwrap_or_default();
            let is_running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if is_running
                && !running.contains_key(&name)
                && let Some(t0) = created.get(&name)
            {
                running.insert(name, t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let mut ms: Vec<f64> = running.into_values().collect();
    ms.sort_by(f64::total_cmp);
    println!("pod created -> Running seen through a watch, {n} pods created at once:");
    println!(
        "  median {:.0} ms   p99 {:.0} ms   min {:.0} ms   max {:.0} ms",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms[0],
        ms[ms.len() - 1]
    );

    // Idle: let the start-up settle, then count requests for `idle_secs`.
    tokio::time::sleep(Duration::from_secs(15)).await;
    requests.store(0, Ordering::Relaxed);
    if let Ok(mut k) = by_kind.lock() {
        k.clear();
    }
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let count = requests.load(Ordering::Relaxed);
    println!(
        "idle node with {n} pods: {count} API requests in {idle_secs} s = {:.1} per minute",
        count as f64 * 60.0 / idle_secs as f64
    );
    if let Ok(k) = by_kind.lock() {
        let mut rows: Vec<_> = k.iter().collect();
        rows.sort();
        for (kind, c) in rows {
            println!("  {c:>4}  {kind}");
        }
    }
    Ok(())
}
