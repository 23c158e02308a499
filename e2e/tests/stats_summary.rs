//! `/stats/summary` end to end: the real agent on the real runtime (containerd, or the Docker adapter
//! with `MK_E2E_RUNTIME=docker`), a static pod whose container fills a memory-backed emptyDir with
//! 64 MiB (tmpfs pages are charged to the container's memory cgroup and are not reclaimable file
//! pages, so they stay in its working set), writes 8 MiB into a disk emptyDir and some log lines,
//! then burns a little CPU every second. The Summary is read on the read-only port and on the
//! kubelet port (TLS, client certificate, `nodes/stats`), parsed into kubelet's types (unknown
//! fields refused, so a misnamed field fails), and its figures are checked against what the
//! container really holds and against the host's own `/proc/meminfo`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mk_e2e::kubelet_port::{client_identity, get};
use mk_e2e::periods::{allow, work};
use mk_e2e::{Agent, BUSYBOX, container_state, periods};
use serde::Deserialize;

const MIB: u64 = 1024 * 1024;
/// What the container puts into the memory-backed emptyDir.
const MEMORY_HELD: u64 = 64 * MIB;
/// What it writes into the disk emptyDir.
const DISK_WRITTEN: u64 = 8 * MIB;
/// Above the tmpfs pages, what else the container's working set may hold: busybox, its shell, the
/// disk emptyDir's pages if they were activated, kernel memory.
const WORKING_SET_SLACK: u64 = DISK_WRITTEN + 24 * MIB;

/// kubelet's Summary (stats/v1alpha1) as the test reads it: every field the agent may write, none
/// other. The fields name the schema; not every one is checked.
#[allow(dead_code)]
mod kubelet {
    use super::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Summary {
        pub node: NodeStats,
        pub pods: Vec<PodStats>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct NodeStats {
        pub node_name: String,
        #[serde(default)]
        pub system_containers: Vec<ContainerStats>,
        pub start_time: String,
        pub cpu: Option<CpuStats>,
        pub memory: Option<MemoryStats>,
        pub network: Option<NetworkStats>,
        pub fs: Option<FsStats>,
        pub runtime: Option<RuntimeStats>,
        pub rlimit: Option<RlimitStats>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct RuntimeStats {
        pub image_fs: Option<FsStats>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RlimitStats {
        pub time: String,
        pub maxpid: Option<i64>,
        pub curproc: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PodStats {
        pub pod_ref: PodReference,
        pub start_time: String,
        pub containers: Vec<ContainerStats>,
        pub cpu: Option<CpuStats>,
        pub memory: Option<MemoryStats>,
        pub network: Option<NetworkStats>,
        #[serde(default)]
        pub volume: Vec<VolumeStats>,
        #[serde(rename = "ephemeral-storage")]
        pub ephemeral_storage: Option<FsStats>,
        #[serde(rename = "process_stats")]
        pub process_stats: Option<ProcessStats>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PodReference {
        pub name: String,
        pub namespace: String,
        pub uid: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProcessStats {
        pub process_count: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ContainerStats {
        pub name: String,
        pub start_time: String,
        pub cpu: Option<CpuStats>,
        pub memory: Option<MemoryStats>,
        pub rootfs: Option<FsStats>,
        pub logs: Option<FsStats>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct CpuStats {
        pub time: String,
        pub usage_nano_cores: Option<u64>,
        pub usage_core_nano_seconds: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct MemoryStats {
        pub time: String,
        pub available_bytes: Option<u64>,
        pub usage_bytes: Option<u64>,
        pub working_set_bytes: Option<u64>,
        pub rss_bytes: Option<u64>,
        pub page_faults: Option<u64>,
        pub major_page_faults: Option<u64>,
    }

    /// The default interface's fields are inlined.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct NetworkStats {
        pub time: String,
        pub name: String,
        pub rx_bytes: Option<u64>,
        pub rx_errors: Option<u64>,
        pub tx_bytes: Option<u64>,
        pub tx_errors: Option<u64>,
        #[serde(default)]
        pub interfaces: Vec<InterfaceStats>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct InterfaceStats {
        pub name: String,
        pub rx_bytes: Option<u64>,
        pub rx_errors: Option<u64>,
        pub tx_bytes: Option<u64>,
        pub tx_errors: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct FsStats {
        pub time: String,
        pub available_bytes: Option<u64>,
        pub capacity_bytes: Option<u64>,
        pub used_bytes: Option<u64>,
        pub inodes_free: Option<u64>,
        pub inodes: Option<u64>,
        pub inodes_used: Option<u64>,
    }

    /// FsStats inlined, and the volume's name.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct VolumeStats {
        pub time: String,
        pub available_bytes: Option<u64>,
        pub capacity_bytes: Option<u64>,
        pub used_bytes: Option<u64>,
        pub inodes_free: Option<u64>,
        pub inodes: Option<u64>,
        pub inodes_used: Option<u64>,
        pub name: String,
    }
}

use kubelet::Summary;

/// The pod: fills `/mem` (tmpfs), writes `/scratch/data`, logs, then works a little every second.
fn manifest() -> String {
    let script = format!(
        "trap \"exit 0\" TERM; \
         dd if=/dev/zero of=/mem/blob bs=1048576 count={mem} 2>/dev/null; \
         dd if=/dev/zero of=/scratch/data bs=1048576 count={disk} 2>/dev/null; sync; \
         i=0; while [ $i -lt 50 ]; do echo \"log line $i of the stats test\"; i=$((i+1)); done; \
         echo filled; \
         while true; do j=0; while [ $j -lt 3000 ]; do j=$((j+1)); done; sleep 1; done",
        mem = MEMORY_HELD / MIB,
        disk = DISK_WRITTEN / MIB,
    );
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stats\nspec:\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    \
         command: [sh, -c, '{script}']\n    volumeMounts:\n    - {{name: mem, mountPath: /mem}}\n    \
         - {{name: scratch, mountPath: /scratch}}\n  volumes:\n  - name: mem\n    emptyDir:\n      \
         medium: Memory\n      sizeLimit: 128Mi\n  - name: scratch\n    emptyDir: {{}}\n"
    )
}

/// The Summary from the read-only port, parsed.
async fn summary(agent: &Agent, query: &str) -> Result<Summary> {
    let body = agent.get(&format!("/stats/summary{query}")).await?;
    serde_json::from_str(&body).with_context(|| format!("parsing the Summary: {body}"))
}

fn pod<'a>(summary: &'a Summary, name: &str) -> Result<&'a kubelet::PodStats> {
    summary
        .pods
        .iter()
        .find(|p| p.pod_ref.name == name)
        .with_context(|| format!("no pod {name} in {summary:#?}"))
}

fn mem_total() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("MemTotal")?;
    Ok(kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_reports_what_the_pod_really_uses() -> Result<()> {
    let admin = client_identity("e2e-admin", "system:masters")?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &admin.ca_pem)?;
    let mut agent = Agent::start_with(
        "e2e-stats",
        None,
        &format!(
            "authorization:\n  mode: AlwaysAllow\nauthentication:\n  x509:\n    clientCAFile: {}\n",
            ca.display()
        ),
    )?;
    agent.write_manifest("stats.yaml", &manifest())?;
    let pod_name = format!("stats-{}", agent.node);
    let api_pod = agent
        .wait_pod("stats", periods().static_pod_start(), |pod| {
            let (state, _, _) = container_state(pod)?;
            (state == "running").then(|| pod.clone())
        })
        .await?;
    agent
        .wait_output(&api_pod, "main", 0, "filled", periods().container_output())
        .await?;
    let uid = api_pod.metadata.uid.clone().unwrap_or_default();

    // The full Summary, from the read-only port.
    let first = summary(&agent, "").await?;
    println!("summary: {first:#?}");
    ensure!(
        first.node.node_name == agent.node,
        "{:?}",
        first.node.node_name
    );
    let stats = pod(&first, &pod_name)?;
    ensure!(
        stats.pod_ref.namespace == "default" && stats.pod_ref.uid == uid,
        "{:?}",
        stats.pod_ref
    );
    ensure!(
        first
            .pods
            .iter()
            .all(|p| p.pod_ref.name.ends_with(&agent.node)),
        "another node's pod in the Summary: {:?}",
        first
            .pods
            .iter()
            .map(|p| &p.pod_ref.name)
            .collect::<Vec<_>>()
    );
    let main = stats
        .containers
        .iter()
        .find(|c| c.name == "main")
        .context("no container main")?;
    // Start times: the node booted before the pod's sandbox, which came before its container.
    let time =
        |t: &str| -> Result<jiff::Timestamp> { t.parse().with_context(|| format!("time {t:?}")) };
    let now = jiff::Timestamp::now();
    ensure!(
        time(&first.node.start_time)? < time(&stats.start_time)?
            && time(&stats.start_time)? <= time(&main.start_time)?
            && time(&main.start_time)? <= now,
        "start times: node {}, pod {}, container {}",
        first.node.start_time,
        stats.start_time,
        main.start_time
    );

    // Memory: the tmpfs pages are in the container's and the pod's working set.
    let ws = main
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .context("container working set")?;
    println!("container working set: {} MiB", ws / MIB);
    ensure!(
        (MEMORY_HELD..MEMORY_HELD + WORKING_SET_SLACK).contains(&ws),
        "container working set {ws} for {MEMORY_HELD} held"
    );
    let pod_ws = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .context("pod working set")?;
    println!("pod working set: {} MiB", pod_ws / MIB);
    ensure!(
        (MEMORY_HELD..MEMORY_HELD + WORKING_SET_SLACK + 8 * MIB).contains(&pod_ws),
        "pod working set {pod_ws}"
    );
    for memory in [main.memory.as_ref(), stats.memory.as_ref()]
        .into_iter()
        .flatten()
    {
        ensure!(memory.usage_bytes >= memory.working_set_bytes, "{memory:?}");
    }
    // The pods' cgroup (`kubepods`, shared by every agent here) holds this pod.
    let pods_cgroup = first
        .node
        .system_containers
        .iter()
        .find(|c| c.name == "pods")
        .context("no system container pods")?;
    ensure!(
        pods_cgroup
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes)
            >= Some(pod_ws),
        "{pods_cgroup:?}"
    );

    // Volumes: what was written, by name; capacity from the filesystem under them.
    let volume = |name: &str| {
        stats
            .volume
            .iter()
            .find(|v| v.name == name)
            .with_context(|| format!("no volume {name} in {:?}", stats.volume))
    };
    let scratch = volume("scratch")?;
    let scratch_used = scratch.used_bytes.context("scratch usedBytes")?;
    println!(
        "emptyDir scratch: {scratch_used} bytes used, {:?} inodes",
        scratch.inodes_used
    );
    ensure!(
        scratch_used >= DISK_WRITTEN,
        "scratch usedBytes {scratch_used}"
    );
    ensure!(scratch.inodes_used >= Some(2), "{scratch:?}");
    ensure!(
        scratch.capacity_bytes.is_some_and(|c| c >= scratch_used),
        "{scratch:?}"
    );
    let mem = volume("mem")?;
    let mem_used = mem.used_bytes.context("mem usedBytes")?;
    println!(
        "emptyDir mem (tmpfs): {mem_used} bytes used of {:?}",
        mem.capacity_bytes
    );
    ensure!(mem_used >= MEMORY_HELD, "mem usedBytes {mem_used}");
    ensure!(
        mem.capacity_bytes == Some(128 * MIB),
        "the tmpfs's size: {mem:?}"
    );

    // Logs and ephemeral storage (the disk emptyDir and the logs; the tmpfs one is memory).
    let logs = main.logs.as_ref().context("container logs")?;
    let logs_used = logs.used_bytes.context("logs usedBytes")?;
    println!("container logs: {logs_used} bytes");
    ensure!(logs_used > 0 && logs.inodes_used >= Some(1), "{logs:?}");
    let ephemeral = stats
        .ephemeral_storage
        .as_ref()
        .context("ephemeral-storage")?;
    let ephemeral_used = ephemeral.used_bytes.context("ephemeral usedBytes")?;
    println!("ephemeral-storage: {ephemeral_used} bytes");
    ensure!(
        ephemeral_used >= scratch_used + logs_used
            && ephemeral_used < scratch_used + logs_used + mem_used,
        "ephemeral-storage {ephemeral_used}: scratch {scratch_used} + logs {logs_used}, without the tmpfs"
    );
    if let Some(rootfs) = &main.rootfs {
        println!("container rootfs: {:?} bytes used", rootfs.used_bytes);
        ensure!(rootfs.capacity_bytes.is_some_and(|c| c > 0), "{rootfs:?}");
    }
    if let Some(processes) = stats.process_stats.as_ref().and_then(|p| p.process_count) {
        println!("pod processes: {processes}");
        ensure!(processes >= 1, "process_count {processes}");
    }
    if let Some(network) = &stats.network {
        println!(
            "pod network: {} interfaces, default {:?}",
            network.interfaces.len(),
            network.name
        );
    }

    // The node: memory against the host's own figures, its filesystems, its task limits.
    let total = mem_total()?;
    let node_memory = first.node.memory.as_ref().context("node memory")?;
    let available = node_memory.available_bytes.context("node availableBytes")?;
    let node_ws = node_memory
        .working_set_bytes
        .context("node workingSetBytes")?;
    println!(
        "node memory: {} MiB available, {} MiB working set, {} MiB total",
        available / MIB,
        node_ws / MIB,
        total / MIB
    );
    ensure!(
        available <= total && available + node_ws == total,
        "{node_memory:?} with MemTotal {total}"
    );
    ensure!(node_ws >= pod_ws, "the node's working set holds the pod's");
    let node_fs = first.node.fs.as_ref().context("node fs")?;
    ensure!(
        node_fs
            .capacity_bytes
            .is_some_and(|c| c > 0 && node_fs.available_bytes.is_some_and(|a| a <= c)),
        "{node_fs:?}"
    );
    ensure!(node_fs.used_bytes.is_some_and(|u| u > 0), "{node_fs:?}");
    let image_fs = first
        .node
        .runtime
        .as_ref()
        .and_then(|r| r.image_fs.as_ref())
        .context("imageFs")?;
    println!("imageFs: {image_fs:?}");
    ensure!(
        image_fs.capacity_bytes.is_some_and(|c| c > 0),
        "{image_fs:?}"
    );
    let rlimit = first.node.rlimit.as_ref().context("rlimit")?;
    ensure!(
        rlimit.maxpid > Some(0) && rlimit.curproc > Some(0),
        "{rlimit:?}"
    );

    // CPU: the counters move between scrapes, and a rate appears once two samples are a second apart.
    let cpu_of = |s: &Summary| -> Result<(u64, Option<u64>, Option<u64>)> {
        let main = pod(s, &pod_name)?
            .containers
            .iter()
            .find(|c| c.name == "main")
            .and_then(|c| c.cpu.as_ref())
            .context("container cpu")?;
        let node = s.node.cpu.as_ref().context("node cpu")?;
        Ok((
            main.usage_core_nano_seconds
                .context("usageCoreNanoSeconds")?,
            main.usage_nano_cores,
            node.usage_nano_cores,
        ))
    };
    let (cpu_first, _, _) = cpu_of(&first)?;
    let pod_cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .context("pod cpu")?;
    ensure!(
        pod_cpu >= cpu_first,
        "pod cpu {pod_cpu} < its container's {cpu_first}"
    );
    // The container works every second; the runtime samples its cgroup on each request (the Docker
    // adapter keeps a sample for up to a second).
    let deadline = Instant::now() + Duration::from_secs(2) + allow(work::CRI_CALL * 2);
    let (cpu_later, rate, node_rate) = loop {
        let s = summary(&agent, "").await?;
        let (total, rate, node_rate) = cpu_of(&s)?;
        if total > cpu_first && rate.is_some() && node_rate.is_some() {
            break (total, rate, node_rate);
        }
        if Instant::now() > deadline {
            bail!(
                "CPU figures did not move: first {cpu_first} ns, now {total} ns, rate {rate:?}, node rate {node_rate:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    println!(
        "container cpu: {cpu_first} → {cpu_later} ns, {rate:?} nano-cores; node {node_rate:?} nano-cores"
    );

    // CPU and memory only: no filesystems, volumes or network.
    let only = summary(&agent, "?only_cpu_and_memory=true").await?;
    ensure!(
        only.node.fs.is_none() && only.node.runtime.is_none() && only.node.network.is_none(),
        "{:?}",
        only.node
    );
    ensure!(
        only.node.cpu.is_some() && only.node.memory.is_some(),
        "{:?}",
        only.node
    );
    let stats = pod(&only, &pod_name)?;
    ensure!(
        stats.volume.is_empty() && stats.ephemeral_storage.is_none() && stats.network.is_none(),
        "{stats:?}"
    );
    ensure!(
        stats.memory.as_ref().and_then(|m| m.working_set_bytes) >= Some(MEMORY_HELD),
        "{stats:?}"
    );
    ensure!(
        stats
            .containers
            .iter()
            .all(|c| c.rootfs.is_none() && c.logs.is_none() && c.cpu.is_some()),
        "{stats:?}"
    );

    // The kubelet port: authenticated (nodes/stats), the same document.
    let (code, _) = get(&agent, None, "/stats/summary").await?;
    ensure!(code == 401, "anonymous /stats/summary answered {code}");
    let (code, body) = get(
        &agent,
        Some(&admin),
        "/stats/summary?only_cpu_and_memory=true",
    )
    .await?;
    ensure!(
        code == 200,
        "/stats/summary on the kubelet port: {code} {body}"
    );
    let over_tls: Summary = serde_json::from_str(&body).context("parsing the Summary")?;
    ensure!(
        pod(&over_tls, &pod_name)?.containers.len() == 1,
        "{over_tls:?}"
    );
    agent.assert_alive();
    Ok(())
}
