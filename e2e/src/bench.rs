//! What the benchmarks share: percentiles, the printed summary line, the agent's resident memory, and
//! the raw CRI floor — a pod started by hand (RunPodSandbox → CreateContainer → StartContainer), the
//! least any agent pays on the same runtime in the same run.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use mk_cri::api;

use crate::{BUSYBOX, NODE_LABEL, cri};

/// The `p`th percentile (nearest rank) of sorted values; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints one line: count, median, p99, min and max of `ms` (milliseconds).
pub fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<48} n={:<3} median {:>7.1} ms   p99 {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.first().copied().unwrap_or(f64::NAN),
        ms.last().copied().unwrap_or(f64::NAN),
    );
}

/// A process's resident memory in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A pod started by hand through CRI.
pub struct RawPod {
    uid: String,
    sandbox: String,
    /// From the first CRI call to StartContainer's answer.
    pub elapsed_ms: f64,
}

/// Starts pod `i` by hand through CRI, with its logs under `logs`.
pub async fn start_raw_pod(i: usize, logs: &Path) -> Result<RawPod> {
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
    Ok(RawPod {
        uid,
        sandbox,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

impl RawPod {
    /// Stops and removes the pod, and its cgroups.
    pub async fn remove(self) -> Result<()> {
        let cri = cri();
        cri.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: self.sandbox.clone(),
        })
        .await?;
        cri.remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: self.sandbox,
        })
        .await?;
        crate::cri_checks::remove_pod_cgroups(&self.uid);
        Ok(())
    }
}

/// `n` raw pods started at once; each one's time from the common start to its StartContainer
/// answer (what a node that gets `n` pods at once could at best do), after which all are removed.
pub async fn raw_floor_at_once(n: usize, logs: &Path) -> Result<Vec<f64>> {
    let started = Instant::now();
    let pods = futures::future::join_all((0..n).map(|i| async move {
        let pod = start_raw_pod(i, logs).await;
        (pod, started.elapsed().as_secs_f64() * 1000.0)
    }))
    .await;
    let mut ms = Vec::with_capacity(n);
    let mut first_error = None;
    for (pod, elapsed) in pods {
        match pod {
            Ok(pod) => {
                ms.push(elapsed);
                pod.remove().await?;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(ms),
    }
}
