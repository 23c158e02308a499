//! Pod and QoS cgroups end to end (kubelet's `cgroupsPerQOS`, the default): the real agent on the
//! real runtime (containerd, the Docker adapter with `MK_E2E_RUNTIME=docker`, containerd 2.x), with
//! the host's cgroup filesystem read directly. These machines run cgroup v1 with the `cgroupfs`
//! driver; the test reads v2 files where the host is v2.
//!
//! - a Guaranteed pod of two containers gets `kubepods/pod<uid>` holding the sum of their limits
//!   (CFS quota, memory limit) and their requests' shares, its containers' processes inside it; a
//!   Burstable pod gets `kubepods/burstable/pod<uid>` with shares and no limits; both cgroups go
//!   when the manifests go;
//! - a pod-level memory limit (`spec.resources.limits.memory`, no container limit) OOM-kills a
//!   container that stays under its own (absent) limit: the kill is the pod cgroup's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use mk_e2e::periods::periods;
use mk_e2e::{Agent, BUSYBOX, container_state};

const MIB: i64 = 1024 * 1024;
const MOUNT: &str = "/sys/fs/cgroup";

fn unified() -> bool {
    Path::new(MOUNT).join("cgroup.controllers").is_file()
        && !Path::new(MOUNT).join("memory").is_dir()
}

/// The directory of cgroup `dir` for `controller` (v1) or the unified one (v2).
fn cgroup_dir(controller: &str, dir: &str) -> PathBuf {
    if unified() {
        Path::new(MOUNT).join(dir)
    } else {
        Path::new(MOUNT).join(controller).join(dir)
    }
}

fn read(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// (cpu quota in µs or None, memory limit in bytes or None, cpu shares/weight).
fn limits(dir: &str) -> Result<(Option<i64>, Option<i64>, i64)> {
    if unified() {
        let cpu_max = read(&cgroup_dir("cpu", dir).join("cpu.max"))?;
        let quota = cpu_max
            .split_whitespace()
            .next()
            .and_then(|q| q.parse().ok());
        let memory = read(&cgroup_dir("memory", dir).join("memory.max"))?
            .parse()
            .ok();
        let weight = read(&cgroup_dir("cpu", dir).join("cpu.weight"))?.parse()?;
        return Ok((quota, memory, weight));
    }
    let quota: i64 = read(&cgroup_dir("cpu", dir).join("cpu.cfs_quota_us"))?.parse()?;
    let memory: i64 = read(&cgroup_dir("memory", dir).join("memory.limit_in_bytes"))?.parse()?;
    let shares = read(&cgroup_dir("cpu", dir).join("cpu.shares"))?.parse()?;
    Ok((
        (quota > 0).then_some(quota),
        // The kernel's "unlimited" is a page-aligned i64::MAX.
        (memory < i64::MAX / 2).then_some(memory),
        shares,
    ))
}

/// The processes in the cgroup and below it (memory hierarchy).
fn procs(dir: &str) -> Vec<String> {
    fn walk(path: &Path, out: &mut Vec<String>) {
        if let Ok(text) = std::fs::read_to_string(path.join("cgroup.procs")) {
            out.extend(text.lines().map(str::to_string));
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&cgroup_dir("memory", dir), &mut out);
    out
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn all_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

fn guaranteed_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cg-guaranteed\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: a\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    resources:\n      \
         limits: {{cpu: 300m, memory: 48Mi}}\n  \
         - name: b\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    resources:\n      \
         limits: {{cpu: 200m, memory: 16Mi}}\n"
    )
}

fn burstable_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cg-burstable\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    resources:\n      \
         requests: {{cpu: 100m}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_cgroups_hold_the_limits_the_pods_asked_for_and_go_with_them() -> Result<()> {
    let mut agent = Agent::start("e2e-cgroups")?;
    agent.write_manifest("guaranteed.yaml", &guaranteed_manifest())?;
    agent.write_manifest("burstable.yaml", &burstable_manifest())?;
    let start = periods().static_pod_start();
    let guaranteed = agent
        .wait_pod("cg-guaranteed", start, |p| {
            all_running(p).then(|| p.clone())
        })
        .await?;
    let burstable = agent
        .wait_pod("cg-burstable", start, |p| all_running(p).then(|| p.clone()))
        .await?;

    // kubepods holds node allocatable (no reservations here: the machine's memory).
    let (_, kubepods_memory, _) = limits("kubepods")?;
    let meminfo = read(Path::new("/proc/meminfo"))?;
    let total_kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("MemTotal")?;
    ensure!(
        kubepods_memory == Some(total_kib * 1024),
        "kubepods memory limit {kubepods_memory:?}, MemTotal {} bytes",
        total_kib * 1024
    );

    let g_dir = format!("kubepods/pod{}", uid(&guaranteed));
    let (quota, memory, shares) = limits(&g_dir)?;
    println!("{g_dir}: quota {quota:?} memory {memory:?} shares/weight {shares}");
    ensure!(
        quota == Some(50_000),
        "pod cpu quota {quota:?}, want 500m = 50000 µs per 100 ms"
    );
    ensure!(
        memory == Some(64 * MIB),
        "pod memory limit {memory:?}, want 48Mi + 16Mi"
    );
    let want_shares = if unified() {
        1 + (512 - 2) * 9999 / 262_142
    } else {
        512
    };
    ensure!(
        shares == want_shares,
        "pod cpu shares/weight {shares}, want {want_shares}"
    );
    let in_pod = procs(&g_dir);
    ensure!(
        in_pod.len() >= 2,
        "the pod's containers' processes are not in its cgroup {g_dir}: {in_pod:?}"
    );

    let b_dir = format!("kubepods/burstable/pod{}", uid(&burstable));
    let (quota, memory, shares) = limits(&b_dir)?;
    println!("{b_dir}: quota {quota:?} memory {memory:?} shares/weight {shares}");
    ensure!(
        quota.is_none() && memory.is_none(),
        "a Burstable pod without limits got {quota:?} {memory:?}"
    );
    let want_shares = if unified() {
        1 + (102 - 2) * 9999 / 262_142
    } else {
        102
    };
    ensure!(
        shares == want_shares,
        "burstable pod shares/weight {shares}, want {want_shares}"
    );
    ensure!(!procs(&b_dir).is_empty(), "no process in {b_dir}");

    agent.remove_manifest("guaranteed.yaml")?;
    agent.remove_manifest("burstable.yaml")?;
    let gone = periods().static_pod_removed(std::time::Duration::from_secs(1));
    agent.wait_pod_gone("cg-guaranteed", gone).await?;
    agent.wait_pod_gone("cg-burstable", gone).await?;
    // The cgroups go with the pods' removal, which follows the pods leaving /pods.
    let deadline = std::time::Instant::now() + gone;
    loop {
        let left: Vec<&String> = [&g_dir, &b_dir]
            .into_iter()
            .filter(|d| cgroup_dir("memory", d).exists() || cgroup_dir("cpu", d).exists())
            .collect();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "pod cgroups {left:?} still exist after the pods were removed\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(mk_e2e::periods::POLL).await;
    }
    Ok(())
}

/// How often the cgroup's own memory limit was hit: v1 `memory.failcnt` (counted where the limit
/// is, not in the child whose process was killed, as v1's `oom_kill` is), v2 `memory.events`'
/// hierarchical `oom_kill`.
fn limit_hits(dir: &str) -> Result<u64> {
    if unified() {
        let text = read(&cgroup_dir("memory", dir).join("memory.events"))?;
        return text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no oom_kill in memory.events: {text}"));
    }
    Ok(read(&cgroup_dir("memory", dir).join("memory.failcnt"))?.parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_level_memory_limit_oom_kills_a_container_under_its_own_limit() -> Result<()> {
    let mut agent = Agent::start("e2e-cgroup-oom")?;
    // The container has no limit of its own; the pod may use 32 MiB. `tail` keeps all of a
    // newline-free input: reading /dev/zero it grows until something stops it. It is the
    // container's main process, so the kill ends the container.
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cg-oom\nspec:\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 1\n  resources:\n    limits: {{memory: 32Mi}}\n  \
         containers:\n  - name: hog\n    image: {BUSYBOX}\n    \
         command: [sh, -c, 'echo started; exec tail /dev/zero']\n"
    );
    agent.write_manifest("oom.yaml", &manifest)?;
    let pod = agent
        .wait_pod(
            "cg-oom",
            periods().static_pod_start() + periods().exit_reported(),
            |p| {
                let (state, _, _) = container_state(p)?;
                (state == "terminated").then(|| p.clone())
            },
        )
        .await?;
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .context("terminated state")?;
    println!(
        "hog: exit {} reason {:?}",
        terminated.exit_code, terminated.reason
    );
    ensure!(
        terminated.exit_code == 137,
        "the container was not killed (exit {}, reason {:?})",
        terminated.exit_code,
        terminated.reason
    );
    // A Burstable pod (a limit and no request): its cgroup is under burstable, and the OOM kill
    // was its cgroup's, the container having no limit to hit.
    let dir = format!("kubepods/burstable/pod{}", uid(&pod));
    let (_, memory, _) = limits(&dir)?;
    ensure!(
        memory == Some(32 * MIB),
        "pod memory limit {memory:?}, want 32Mi"
    );
    let hits = limit_hits(&dir)?;
    ensure!(hits >= 1, "the pod cgroup {dir} never reached its limit");
    // The container's own cgroup (below the pod's) has no limit: the pod's did the killing.
    let container_limits: Vec<Option<i64>> = std::fs::read_dir(cgroup_dir("memory", &dir))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| limits(&format!("{dir}/{}", e.file_name().to_string_lossy())).map(|l| l.1))
        .collect::<Result<_>>()?;
    ensure!(
        container_limits.iter().all(Option::is_none),
        "a container cgroup under {dir} has a memory limit: {container_limits:?}"
    );
    agent.remove_manifest("oom.yaml")?;
    agent
        .wait_pod_gone(
            "cg-oom",
            periods().static_pod_removed(std::time::Duration::from_secs(1)),
        )
        .await?;
    Ok(())
}

/// The agent started with the driver the runtime does not use: where the runtime reports its
/// driver (CRI `RuntimeConfig`: containerd 2.x, cri-o) the agent refuses to start, naming both;
/// where it does not (containerd 1.x), the configured driver is used and the log says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_cgroup_driver_the_runtime_does_not_use_is_a_start_up_error() -> Result<()> {
    let endpoint = mk_e2e::endpoint();
    let reported = mk_e2e::cri()
        .runtime_config(mk_cri::api::RuntimeConfigRequest {})
        .await
        .ok()
        .and_then(|r| r.linux)
        .map(|l| l.cgroup_driver);
    let (configured, runtime) = match reported {
        Some(d) if d == mk_cri::api::CgroupDriver::Systemd as i32 => ("cgroupfs", Some("systemd")),
        Some(_) => ("systemd", Some("cgroupfs")),
        None => ("cgroupfs", None),
    };
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             containerRuntimeEndpoint: {endpoint}\ncgroupDriver: {configured}\nreadOnlyPort: 0\n\
             healthzPort: 0\nport: 0\nstaticPodPath: {}\npodLogsDir: {}\n",
            dir.path().join("manifests").display(),
            dir.path().join("logs").display(),
        ),
    )?;
    std::fs::create_dir_all(dir.path().join("manifests"))?;
    let log = dir.path().join("agent.log");
    let mut child = std::process::Command::new(mk_e2e::agent_binary())
        .arg("--config")
        .arg(&config)
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--hostname-override")
        .arg("e2e-cgroup-driver")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let deadline = std::time::Instant::now() + periods().agent_up() + periods().agent_up();
    let outcome = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(status) = child.try_wait()? {
            break (Some(status), text);
        }
        if runtime.is_none()
            && text.contains("does not report its cgroup driver")
            && text.contains("QoS cgroups ready")
        {
            break (None, text);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!("the agent neither refused to start nor started within the deadline:\n{text}");
        }
        tokio::time::sleep(mk_e2e::periods::POLL).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let (status, text) = outcome;
    match runtime {
        Some(runtime) => {
            let status = status.context("the agent kept running")?;
            ensure!(!status.success(), "the agent exited 0:\n{text}");
            let want = format!(
                "cgroupDriver is \"{configured}\" but the container runtime uses \"{runtime}\""
            );
            ensure!(
                text.contains(&want),
                "no {want:?} in the agent's log:\n{text}"
            );
            println!(
                "refused as expected: {}",
                text.lines()
                    .rev()
                    .find(|l| l.contains("cgroupDriver"))
                    .unwrap_or_default()
            );
        }
        None => ensure!(
            status.is_none(),
            "the agent exited ({status:?}) on a runtime that reports no driver:\n{text}"
        ),
    }
    Ok(())
}
