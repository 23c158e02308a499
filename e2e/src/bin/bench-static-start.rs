//! Benchmark: time from a static pod manifest written to its container running, against the raw CRI
//! floor (RunPodSandbox → CreateContainer → StartContainer called directly) on the same runtime in the
//! same run. Also prints the agent's resident memory with the pods running.
//!
//! Run it through `e2e/scripts/bench-static-start.sh` (which starts containerd and builds release
//! binaries); `MK_E2E_CRI_ENDPOINT` names the runtime, `MK_E2E_AGENT_BIN` the agent binary.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mk_cri::api;
use mk_e2e::{Agent, BUSYBOX, NODE_LABEL, busybox_pod, cri};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<44} n={:<3} median {:>7.1} ms   p99 {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.first().copied().unwrap_or(f64::NAN),
        ms.last().copied().unwrap_or(f64::NAN),
    );
}

/// One pod started by hand through CRI, as the floor any agent pays.
async fn raw_cri_pod(i: usize, logs: &std::path::Path) -> Result<f64> {
    let cri = cri();
    let uid = format!("bench-raw-{}-{i}", std::process::id());
    let labels = HashMap::from([(NODE_LABEL.to_string(), "bench-raw".to_string())]);
    let sandbox_config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: uid.clone(),
            uid: uid.clone(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("raw{i}"),
        log_directory: logs.join(&uid).to_string_lossy().into_owned(),
        labels: labels.clone(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = Instant::now();
    let sandbox = cri
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .pod_sandbox_id;
    let container = cri
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(api::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "trap 'exit 0' TERM; while true; do sleep 1; done".into(),
                ],
                log_path: "main/0.log".into(),
                labels,
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await?
        .container_id;
    cri.start_container(api::StartContainerRequest {
        container_id: container,
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    cri.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await?;
    cri.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await?;
    for controller in [
        "cpu", "cpuacct", "memory", "pids", "blkio", "devices", "freezer", "cpuset", "systemd",
    ] {
        let _ = std::fs::remove_dir(format!(
            "/sys/fs/cgroup/{controller}/kubepods/besteffort/pod{uid}"
        ));
    }
    Ok(elapsed)
}

async fn running_container_of(agent: &Agent, pod_name: &str) -> Result<bool> {
    let full = format!("{pod_name}-{}", agent.node);
    Ok(agent.containers().await?.iter().any(|c| {
        c.state == api::ContainerState::ContainerRunning as i32
            && c.labels.get("io.kubernetes.pod.name") == Some(&full)
    }))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
        raw.push(raw_cri_pod(i, logs.path()).await?);
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
