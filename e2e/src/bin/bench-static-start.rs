//! Benchmark: time from a static pod manifest written to its container running, against the raw CRI
//! floor (RunPodSandbox → CreateContainer → StartContainer called directly) on the same runtime in the
//! same run. Also prints the agent's resident memory with the pods running.
//!
//! Run it through `e2e/scripts/bench-static-start.sh` (which starts containerd and builds release
//! binaries); `MK_E2E_CRI_ENDPOINT` names the runtime, `MK_E2E_AGENT_BIN` the agent binary.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mk_cri::api;
use mk_e2e::bench::{rss_kib, start_raw_pod, summary};
use mk_e2e::{Agent, busybox_pod};

async fn running_container_of(agent: &Agent, pod_name: &str) -> Result<bool> {
    let full = format!("{pod_name}-{}", agent.node);
    Ok(agent.containers().await?.iter().any(|c| {
        c.state == api::ContainerState::ContainerRunning as i32
            && c.labels.get("io.kubernetes.pod.name") == Some(&full)
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(10);
    let logs = tempfile::tempdir()?;
    println!(
        "runtime {}; agent {}",
        mk_e2e::endpoint(),
        mk_e2e::agent_binary().display()
    );

    let mut raw = Vec::new();
    for i in 0..n {
        let pod = start_raw_pod(i, logs.path()).await?;
        raw.push(pod.elapsed_ms);
        pod.remove().await?;
    }

    let agent = Agent::start("bench")?;
    // Let the agent connect and finish its first relist before timing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent
        .get("/healthz")
        .await
        .map(|b| b != "ok")
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            bail!("agent not healthy:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut agent_ms = Vec::new();
    for i in 0..n {
        let name = format!("bench{i}");
        let started = Instant::now();
        agent.write_manifest(
            &format!("{name}.yaml"),
            &busybox_pod(
                &name,
                "Always",
                2,
                "trap 'exit 0' TERM; while true; do sleep 1; done",
            ),
        )?;
        loop {
            if running_container_of(&agent, &name).await? {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{name} not running after 60 s:\n{}", agent.log());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        agent_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = agent.pid().and_then(rss_kib);

    println!();
    summary("raw CRI floor (sandbox+create+start)", raw);
    summary("agent: manifest written -> container running", agent_ms);
    if let Some(kib) = rss {
        println!(
            "agent resident memory with {n} pods running: {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    Ok(())
}
