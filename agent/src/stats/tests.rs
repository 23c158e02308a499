//! The Summary: its JSON against kubelet's, its assembly from CRI answers (sandbox stats and the
//! container-stats fallback with pod cgroups), CPU rates, the filesystem walks, and a whole scrape
//! over the fake CRI runtime with recorded cgroup files, logs and volumes in a temporary tree.

use crate::cm::{CgroupDriver, CgroupSettings};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use mk_cri::{CriClient, CriMetrics, api};
use mk_fake_runtime::{FakeRuntime, Op, ServerHandle};

use super::fs::{self, DiskUsage, FsInfo};
use super::node;
use super::provider::{
    CpuRates, PodCgroup, RuntimeUsage, ephemeral_storage, pod_drafts, remove_terminated_pods,
};
use super::types::*;
use super::{StatsConfig, StatsProvider, cgroup};
use crate::kuberuntime::labels;
use crate::node::host::HostPaths;
use crate::test_cri;

const NODE: &str = "node-a";
const S: i64 = 1_000_000_000;
/// 2024-05-01T10:00:00Z in nanoseconds.
const T0: i64 = 1_714_557_600 * S;

/// A provider whose runtime cannot be reached (every scrape fails).
pub(crate) fn unreachable_provider() -> StatsProvider {
    let cri = CriClient::new(
        "unix:///nonexistent/mk-stats-test.sock",
        Duration::from_secs(1),
        CriMetrics::default(),
    )
    .expect("CRI client");
    StatsProvider::new(
        cri,
        StatsConfig {
            node_name: NODE.into(),
            root_dir: "/nonexistent".into(),
            pod_logs_dir: "/nonexistent/logs".into(),
            cgroup_mount: "/nonexistent/cgroup".into(),
            cgroups: layout(Path::new("/nonexistent/cgroup"), CgroupDriver::Cgroupfs),
            host: HostPaths::under(Path::new("/nonexistent")),
        },
    )
}

fn time(s: &str) -> Time {
    Time(s.parse().expect("timestamp"))
}

// ---------------------------------------------------------------------------------------------
// JSON

/// A Summary as kubelet 1.3x writes it (trimmed to one pod and one container).
const KUBELET_SAMPLE: &str = r#"{
  "node": {
    "nodeName": "node-a",
    "systemContainers": [
      {"name": "pods", "startTime": "2024-05-01T09:00:00Z",
       "cpu": {"time": "2024-05-01T10:00:00Z", "usageNanoCores": 21046512, "usageCoreNanoSeconds": 3035208512000},
       "memory": {"time": "2024-05-01T10:00:00Z", "availableBytes": 7826456576, "usageBytes": 364871680,
                  "workingSetBytes": 188465152, "rssBytes": 135983104, "pageFaults": 50362, "majorPageFaults": 12}}
    ],
    "startTime": "2024-05-01T08:00:00Z",
    "cpu": {"time": "2024-05-01T10:00:00Z", "usageNanoCores": 120372400, "usageCoreNanoSeconds": 19563853000000},
    "memory": {"time": "2024-05-01T10:00:00Z", "availableBytes": 6342221824, "usageBytes": 3498422272,
               "workingSetBytes": 1670705152, "rssBytes": 712728576, "pageFaults": 108537, "majorPageFaults": 165},
    "network": {"time": "2024-05-01T10:00:00Z", "name": "eth0", "rxBytes": 4711, "rxErrors": 0, "txBytes": 815, "txErrors": 0,
                "interfaces": [{"name": "eth0", "rxBytes": 4711, "rxErrors": 0, "txBytes": 815, "txErrors": 0}]},
    "fs": {"time": "2024-05-01T10:00:00Z", "availableBytes": 64215228416, "capacityBytes": 101241290752,
           "usedBytes": 37009285120, "inodesFree": 6108339, "inodes": 6291456, "inodesUsed": 183117},
    "runtime": {"imageFs": {"time": "2024-05-01T10:00:00Z", "availableBytes": 64215228416, "capacityBytes": 101241290752,
                            "usedBytes": 1325629440, "inodesFree": 6108339, "inodes": 6291456, "inodesUsed": 21536}},
    "rlimit": {"time": "2024-05-01T10:00:00Z", "maxpid": 4194304, "curproc": 412}
  },
  "pods": [
    {
      "podRef": {"name": "web", "namespace": "default", "uid": "0d2f2a0c-1c23-4d77-9a53-4b36b0a4b2a1"},
      "startTime": "2024-05-01T09:30:00Z",
      "containers": [
        {"name": "app", "startTime": "2024-05-01T09:30:01Z",
         "cpu": {"time": "2024-05-01T10:00:00Z", "usageNanoCores": 1023560, "usageCoreNanoSeconds": 2263960000},
         "memory": {"time": "2024-05-01T10:00:00Z", "usageBytes": 71000064, "workingSetBytes": 68567040,
                    "rssBytes": 1327104, "pageFaults": 17754, "majorPageFaults": 3},
         "rootfs": {"time": "2024-05-01T10:00:00Z", "availableBytes": 64215228416, "capacityBytes": 101241290752,
                    "usedBytes": 24576, "inodesFree": 6108339, "inodes": 6291456, "inodesUsed": 7},
         "logs": {"time": "2024-05-01T10:00:00Z", "availableBytes": 64215228416, "capacityBytes": 101241290752,
                  "usedBytes": 8192, "inodesFree": 6108339, "inodes": 6291456, "inodesUsed": 1}}
      ],
      "cpu": {"time": "2024-05-01T10:00:00Z", "usageNanoCores": 1100000, "usageCoreNanoSeconds": 2300000000},
      "memory": {"time": "2024-05-01T10:00:00Z", "usageBytes": 71500000, "workingSetBytes": 69000000,
                 "rssBytes": 1400000, "pageFaults": 17800, "majorPageFaults": 3},
      "network": {"time": "2024-05-01T10:00:00Z", "name": "eth0", "rxBytes": 1466, "rxErrors": 0, "txBytes": 866, "txErrors": 0,
                  "interfaces": [{"name": "eth0", "rxBytes": 1466, "rxErrors": 0, "txBytes": 866, "txErrors": 0}]},
      "volume": [
        {"time": "2024-05-01T10:00:00Z", "availableBytes": 64215228416, "capacityBytes": 101241290752,
         "usedBytes": 1052672, "inodesFree": 6108339, "inodes": 6291456, "inodesUsed": 2, "name": "scratch"}
      ],
      "ephemeral-storage": {"time": "2024-05-01T10:00:00Z", "availableBytes": 64215228416, "capacityBytes": 101241290752,
                            "usedBytes": 1085440, "inodesFree": 6108339, "inodes": 6291456, "inodesUsed": 10},
      "process_stats": {"process_count": 2}
    }
  ]
}"#;

fn node_fs_stats(used: u64, inodes_used: u64) -> FsStats {
    FsStats {
        time: time("2024-05-01T10:00:00Z"),
        available_bytes: Some(64_215_228_416),
        capacity_bytes: Some(101_241_290_752),
        used_bytes: Some(used),
        inodes_free: Some(6_108_339),
        inodes: Some(6_291_456),
        inodes_used: Some(inodes_used),
    }
}

fn eth0(rx: u64, tx: u64) -> InterfaceStats {
    InterfaceStats {
        name: "eth0".into(),
        rx_bytes: Some(rx),
        rx_errors: Some(0),
        tx_bytes: Some(tx),
        tx_errors: Some(0),
    }
}

fn cpu(nano_cores: u64, total: u64) -> Option<CpuStats> {
    Some(CpuStats {
        time: time("2024-05-01T10:00:00Z"),
        usage_nano_cores: Some(nano_cores),
        usage_core_nano_seconds: Some(total),
    })
}

fn memory(
    available: Option<u64>,
    usage: u64,
    ws: u64,
    rss: u64,
    pf: u64,
    mpf: u64,
) -> Option<MemoryStats> {
    Some(MemoryStats {
        time: time("2024-05-01T10:00:00Z"),
        available_bytes: available,
        usage_bytes: Some(usage),
        working_set_bytes: Some(ws),
        rss_bytes: Some(rss),
        page_faults: Some(pf),
        major_page_faults: Some(mpf),
    })
}

fn sample_summary() -> Summary {
    Summary {
        node: NodeStats {
            node_name: "node-a".into(),
            system_containers: vec![ContainerStats {
                name: "pods".into(),
                start_time: time("2024-05-01T09:00:00Z"),
                cpu: cpu(21_046_512, 3_035_208_512_000),
                memory: memory(
                    Some(7_826_456_576),
                    364_871_680,
                    188_465_152,
                    135_983_104,
                    50_362,
                    12,
                ),
                rootfs: None,
                logs: None,
            }],
            start_time: time("2024-05-01T08:00:00Z"),
            cpu: cpu(120_372_400, 19_563_853_000_000),
            memory: memory(
                Some(6_342_221_824),
                3_498_422_272,
                1_670_705_152,
                712_728_576,
                108_537,
                165,
            ),
            network: Some(NetworkStats {
                time: time("2024-05-01T10:00:00Z"),
                default_interface: Some(eth0(4711, 815)),
                interfaces: vec![eth0(4711, 815)],
            }),
            fs: Some(node_fs_stats(37_009_285_120, 183_117)),
            runtime: Some(RuntimeStats {
                image_fs: Some(node_fs_stats(1_325_629_440, 21_536)),
            }),
            rlimit: Some(RlimitStats {
                time: time("2024-05-01T10:00:00Z"),
                max_pid: Some(4_194_304),
                num_of_running_processes: Some(412),
            }),
        },
        pods: vec![PodStats {
            pod_ref: PodReference {
                name: "web".into(),
                namespace: "default".into(),
                uid: "0d2f2a0c-1c23-4d77-9a53-4b36b0a4b2a1".into(),
            },
            start_time: time("2024-05-01T09:30:00Z"),
            containers: vec![ContainerStats {
                name: "app".into(),
                start_time: time("2024-05-01T09:30:01Z"),
                cpu: cpu(1_023_560, 2_263_960_000),
                memory: memory(None, 71_000_064, 68_567_040, 1_327_104, 17_754, 3),
                rootfs: Some(node_fs_stats(24_576, 7)),
                logs: Some(node_fs_stats(8_192, 1)),
            }],
            cpu: cpu(1_100_000, 2_300_000_000),
            memory: memory(None, 71_500_000, 69_000_000, 1_400_000, 17_800, 3),
            network: Some(NetworkStats {
                time: time("2024-05-01T10:00:00Z"),
                default_interface: Some(eth0(1466, 866)),
                interfaces: vec![eth0(1466, 866)],
            }),
            volume_stats: vec![VolumeStats {
                fs: node_fs_stats(1_052_672, 2),
                name: "scratch".into(),
            }],
            ephemeral_storage: Some(node_fs_stats(1_085_440, 10)),
            process_stats: Some(ProcessStats {
                process_count: Some(2),
            }),
        }],
    }
}

#[test]
fn json_names_are_kubelets() {
    let ours = serde_json::to_value(sample_summary()).expect("serialize");
    let kubelet: serde_json::Value = serde_json::from_str(KUBELET_SAMPLE).expect("sample");
    assert_eq!(
        ours,
        kubelet,
        "ours:\n{}",
        serde_json::to_string_pretty(&ours).unwrap_or_default()
    );
    // And kubelet's document reads back into the same value.
    let parsed: Summary = serde_json::from_str(KUBELET_SAMPLE).expect("parse kubelet's");
    assert_eq!(parsed, sample_summary());
}

#[test]
fn absent_figures_are_left_out_and_times_are_whole_seconds() {
    let network = NetworkStats {
        time: Time(Timestamp::from_nanosecond(i128::from(T0 + 123_456_789)).expect("ts")),
        default_interface: None,
        interfaces: vec![InterfaceStats {
            name: "net1".into(),
            rx_bytes: Some(1),
            ..Default::default()
        }],
    };
    let v = serde_json::to_value(&network).expect("serialize");
    // Go's inlined default interface: an empty name when there is no eth0.
    assert_eq!(
        v,
        serde_json::json!({"time": "2024-05-01T10:00:00Z", "name": "", "interfaces": [{"name": "net1", "rxBytes": 1}]})
    );
    let back: NetworkStats = serde_json::from_value(v).expect("parse");
    assert_eq!(back.default_interface, None);
    let fs = FsStats::at(time("2024-05-01T10:00:00Z"));
    assert_eq!(
        serde_json::to_value(&fs).expect("serialize"),
        serde_json::json!({"time": "2024-05-01T10:00:00Z"})
    );
}

// ---------------------------------------------------------------------------------------------
// CPU rates

#[test]
fn cpu_rate_needs_two_samples_a_window_apart() {
    let mut rates = CpuRates::default();
    assert_eq!(rates.rate("c", T0, 10 * S as u64), None, "first sample");
    // 100 ms later: too soon, no rate yet.
    assert_eq!(rates.rate("c", T0 + S / 10, 10 * S as u64 + 1), None);
    // 2 s after the first: 1 s of CPU → half a core.
    assert_eq!(
        rates.rate("c", T0 + 2 * S, 11 * S as u64),
        Some(500_000_000)
    );
    // Soon after: the last rate, unchanged.
    assert_eq!(
        rates.rate("c", T0 + 2 * S + 1000, 11 * S as u64),
        Some(500_000_000)
    );
    // 4 s after that: 4 s of CPU over 4 s → one core.
    assert_eq!(
        rates.rate("c", T0 + 6 * S, 15 * S as u64),
        Some(1_000_000_000)
    );
    // The counter went back (restarted container): no rate until the next window.
    assert_eq!(rates.rate("c", T0 + 8 * S, S as u64), None);
    assert_eq!(
        rates.rate("c", T0 + 10 * S, 2 * S as u64),
        Some(500_000_000)
    );
    // Keys are independent.
    assert_eq!(rates.rate("other", T0 + 10 * S, 0), None);
}

// ---------------------------------------------------------------------------------------------
// Assembly

fn sandbox(
    id: &str,
    name: &str,
    uid: &str,
    created: i64,
    ready: bool,
    node: &str,
) -> api::PodSandbox {
    api::PodSandbox {
        id: id.into(),
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        state: if ready {
            api::PodSandboxState::SandboxReady as i32
        } else {
            api::PodSandboxState::SandboxNotready as i32
        },
        created_at: created,
        labels: HashMap::from([(labels::NODE_NAME.to_string(), node.to_string())]),
        ..Default::default()
    }
}

fn container(id: &str, sandbox: &str, name: &str, created: i64) -> api::Container {
    api::Container {
        id: id.into(),
        pod_sandbox_id: sandbox.into(),
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        state: api::ContainerState::ContainerRunning as i32,
        created_at: created,
        labels: HashMap::from([(labels::NODE_NAME.to_string(), NODE.to_string())]),
        ..Default::default()
    }
}

fn u(value: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value })
}

fn cri_container_stats(id: &str, at: i64, cpu_total: u64, ws: u64) -> api::ContainerStats {
    api::ContainerStats {
        attributes: Some(api::ContainerAttributes {
            id: id.into(),
            ..Default::default()
        }),
        cpu: Some(api::CpuUsage {
            timestamp: at,
            usage_core_nano_seconds: u(cpu_total),
            usage_nano_cores: None,
        }),
        memory: Some(api::MemoryUsage {
            timestamp: at,
            working_set_bytes: u(ws),
            available_bytes: None,
            usage_bytes: u(ws + 1000),
            rss_bytes: u(ws / 2),
            page_faults: u(10),
            major_page_faults: u(1),
        }),
        writable_layer: Some(api::FilesystemUsage {
            timestamp: at,
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: "/var/lib/runtime/snapshots".into(),
            }),
            used_bytes: u(4096),
            inodes_used: u(3),
        }),
        swap: None,
    }
}

fn cri_sandbox_stats(
    id: &str,
    at: i64,
    containers: Vec<api::ContainerStats>,
) -> api::PodSandboxStats {
    api::PodSandboxStats {
        attributes: Some(api::PodSandboxAttributes {
            id: id.into(),
            ..Default::default()
        }),
        linux: Some(api::LinuxPodSandboxStats {
            cpu: Some(api::CpuUsage {
                timestamp: at,
                usage_core_nano_seconds: u(7 * S as u64),
                usage_nano_cores: u(250_000_000),
            }),
            memory: Some(api::MemoryUsage {
                timestamp: at,
                working_set_bytes: u(64 << 20),
                available_bytes: u(64 << 20),
                usage_bytes: u(70 << 20),
                rss_bytes: u(1 << 20),
                page_faults: u(500),
                major_page_faults: u(2),
            }),
            network: Some(api::NetworkUsage {
                timestamp: at,
                default_interface: Some(api::NetworkInterfaceUsage {
                    name: "eth0".into(),
                    rx_bytes: u(100),
                    rx_errors: u(0),
                    tx_bytes: u(200),
                    tx_errors: u(0),
                }),
                interfaces: vec![api::NetworkInterfaceUsage {
                    name: "eth0".into(),
                    rx_bytes: u(100),
                    rx_errors: u(0),
                    tx_bytes: u(200),
                    tx_errors: u(0),
                }],
            }),
            process: Some(api::ProcessUsage {
                timestamp: at,
                process_count: u(3),
            }),
            containers,
        }),
        windows: None,
    }
}

fn no_cgroup(_: &str) -> Option<PodCgroup> {
    None
}

#[test]
fn newest_or_ready_sandbox_per_pod() {
    let kept = remove_terminated_pods(vec![
        sandbox("old", "web", "u1", T0, false, NODE),
        sandbox("new", "web", "u2", T0 + S, false, NODE),
        sandbox("ready", "db", "u3", T0, true, NODE),
        sandbox("stale", "db", "u4", T0 + S, false, NODE),
    ]);
    let mut ids: Vec<&str> = kept.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["new", "ready"]);
}

#[test]
fn pods_from_sandbox_stats() {
    let now = Timestamp::from_nanosecond(i128::from(T0 + 60 * S)).expect("ts");
    let sandboxes = vec![
        sandbox("s1", "web", "u1", T0, true, NODE),
        sandbox("s2", "theirs", "u2", T0, true, "node-b"),
        // Not ready and nothing running: gone from the summary.
        sandbox("s3", "done", "u3", T0, false, NODE),
    ];
    let containers = vec![
        container("c1", "s1", "app", T0 + S),
        container("c2", "s1", "sidecar", T0 + 2 * S),
    ];
    let usage = RuntimeUsage::Sandboxes(vec![cri_sandbox_stats(
        "s1",
        T0 + 60 * S,
        vec![
            cri_container_stats("c1", T0 + 60 * S, 5 * S as u64, 50 << 20),
            cri_container_stats("c2", T0 + 60 * S, S as u64, 10 << 20),
        ],
    )]);
    let mut rates = CpuRates::default();
    let drafts = pod_drafts(
        NODE,
        sandboxes.clone(),
        containers.clone(),
        &usage,
        &no_cgroup,
        &mut rates,
        now,
        false,
    );
    assert_eq!(drafts.len(), 1, "{drafts:#?}");
    let pod = &drafts[0].stats;
    assert_eq!(pod.pod_ref.name, "web");
    assert_eq!(pod.pod_ref.uid, "u1");
    assert_eq!(pod.start_time, time("2024-05-01T10:00:00Z"));
    let pod_cpu = pod.cpu.as_ref().expect("pod cpu");
    assert_eq!(pod_cpu.usage_core_nano_seconds, Some(7 * S as u64));
    assert_eq!(
        pod_cpu.usage_nano_cores,
        Some(250_000_000),
        "the runtime's rate is taken as is"
    );
    let pod_memory = pod.memory.as_ref().expect("pod memory");
    assert_eq!(pod_memory.working_set_bytes, Some(64 << 20));
    assert_eq!(pod_memory.available_bytes, Some(64 << 20));
    assert_eq!(pod_memory.major_page_faults, Some(2));
    let network = pod.network.as_ref().expect("network");
    assert_eq!(
        network.default_interface.as_ref().map(|i| i.rx_bytes),
        Some(Some(100))
    );
    assert_eq!(network.interfaces.len(), 1);
    assert_eq!(
        pod.process_stats.as_ref().and_then(|p| p.process_count),
        Some(3)
    );
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "sidecar"]);
    let app = &pod.containers[0];
    assert_eq!(app.start_time, time("2024-05-01T10:00:01Z"));
    assert_eq!(
        app.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(5 * S as u64)
    );
    assert_eq!(
        app.cpu.as_ref().and_then(|c| c.usage_nano_cores),
        None,
        "one sample: no rate yet"
    );
    assert_eq!(
        app.memory.as_ref().and_then(|m| m.working_set_bytes),
        Some(50 << 20)
    );
    assert_eq!(
        app.memory.as_ref().and_then(|m| m.rss_bytes),
        Some(25 << 20)
    );
    let rootfs = app.rootfs.as_ref().expect("writable layer");
    assert_eq!(
        (rootfs.used_bytes, rootfs.inodes_used),
        (Some(4096), Some(3))
    );
    assert_eq!(
        drafts[0].rootfs_mounts[0].as_deref(),
        Some("/var/lib/runtime/snapshots")
    );

    // A second scrape 10 s later: the container's rate from its two samples.
    let later = Timestamp::from_nanosecond(i128::from(T0 + 70 * S)).expect("ts");
    let usage = RuntimeUsage::Sandboxes(vec![cri_sandbox_stats(
        "s1",
        T0 + 70 * S,
        vec![
            cri_container_stats("c1", T0 + 70 * S, 10 * S as u64, 50 << 20),
            cri_container_stats("c2", T0 + 70 * S, S as u64, 10 << 20),
        ],
    )]);
    let drafts = pod_drafts(
        NODE,
        sandboxes.clone(),
        containers.clone(),
        &usage,
        &no_cgroup,
        &mut rates,
        later,
        false,
    );
    let app = &drafts[0].stats.containers[0];
    assert_eq!(
        app.cpu.as_ref().and_then(|c| c.usage_nano_cores),
        Some(500_000_000)
    );
    assert_eq!(
        drafts[0].stats.containers[1]
            .cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores),
        Some(0)
    );

    // CPU and memory only: no network, process count or writable layer.
    let drafts = pod_drafts(
        NODE, sandboxes, containers, &usage, &no_cgroup, &mut rates, later, true,
    );
    let pod = &drafts[0].stats;
    assert!(pod.network.is_none() && pod.process_stats.is_none());
    assert!(
        pod.containers
            .iter()
            .all(|c| c.rootfs.is_none() && c.cpu.is_some() && c.memory.is_some())
    );
}

/// Sandbox stats without the pod's CPU (cri-o 1.36): the pod's CPU is its containers' sum, its
/// memory still the runtime's.
#[test]
fn a_pod_figure_the_sandbox_stats_lack_comes_from_its_containers() {
    let now = Timestamp::from_nanosecond(i128::from(T0 + 60 * S)).expect("ts");
    let sandboxes = vec![sandbox("s1", "web", "u1", T0, true, NODE)];
    let containers = vec![
        container("c1", "s1", "app", T0 + S),
        container("c2", "s1", "sidecar", T0 + 2 * S),
    ];
    let mut stats = cri_sandbox_stats(
        "s1",
        T0 + 60 * S,
        vec![
            cri_container_stats("c1", T0 + 60 * S, 5 * S as u64, 50 << 20),
            cri_container_stats("c2", T0 + 60 * S, S as u64, 10 << 20),
        ],
    );
    if let Some(linux) = stats.linux.as_mut() {
        linux.cpu = None;
    }
    let usage = RuntimeUsage::Sandboxes(vec![stats]);
    let drafts = pod_drafts(
        NODE,
        sandboxes,
        containers,
        &usage,
        &no_cgroup,
        &mut CpuRates::default(),
        now,
        true,
    );
    let pod = &drafts[0].stats;
    assert_eq!(
        pod.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(6 * S as u64)
    );
    assert_eq!(
        pod.memory.as_ref().and_then(|m| m.working_set_bytes),
        Some(64 << 20),
        "the runtime's own pod memory is kept"
    );
}

#[test]
fn pods_from_container_stats_and_pod_cgroups() {
    let now = Timestamp::from_nanosecond(i128::from(T0 + 60 * S)).expect("ts");
    let sandboxes = vec![
        sandbox("s1", "web", "u1", T0, true, NODE),
        sandbox("s2", "db", "u2", T0, true, NODE),
    ];
    let containers = vec![
        container("c1", "s1", "app", T0 + S),
        container("c2", "s2", "main", T0 + S),
        container("c3", "s2", "helper", T0 + S),
    ];
    let usage = RuntimeUsage::Containers(vec![
        cri_container_stats("c1", T0 + 60 * S, 5 * S as u64, 50 << 20),
        cri_container_stats("c2", T0 + 60 * S, 2 * S as u64, 10 << 20),
        cri_container_stats("c3", T0 + 60 * S, 3 * S as u64, 20 << 20),
    ]);
    // web has a pod cgroup; db has none (its containers' figures are summed).
    let cgroups = |uid: &str| {
        (uid == "u1").then_some(PodCgroup {
            cpu_nanos: Some(6 * S as u64),
            memory: Some(cgroup::MemoryUsage {
                usage_bytes: 60 << 20,
                working_set_bytes: 55 << 20,
                rss_bytes: 40 << 20,
                page_faults: 9,
                major_page_faults: 0,
                limit_bytes: Some(128 << 20),
            }),
            processes: Some(2),
        })
    };
    let mut rates = CpuRates::default();
    let drafts = pod_drafts(
        NODE, sandboxes, containers, &usage, &cgroups, &mut rates, now, false,
    );
    let names: Vec<&str> = drafts
        .iter()
        .map(|d| d.stats.pod_ref.name.as_str())
        .collect();
    assert_eq!(names, ["db", "web"]);
    let db = &drafts[0].stats;
    let web = &drafts[1].stats;
    assert_eq!(
        web.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(6 * S as u64)
    );
    let web_memory = web.memory.as_ref().expect("memory");
    assert_eq!(web_memory.working_set_bytes, Some(55 << 20));
    assert_eq!(
        web_memory.available_bytes,
        Some(73 << 20),
        "limit − working set"
    );
    assert_eq!(
        web.process_stats.as_ref().and_then(|p| p.process_count),
        Some(2)
    );
    assert!(web.network.is_none(), "no network without sandbox stats");
    assert_eq!(
        db.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(5 * S as u64)
    );
    assert_eq!(
        db.memory.as_ref().and_then(|m| m.working_set_bytes),
        Some(30 << 20)
    );
    let db_names: Vec<&str> = db.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(db_names, ["helper", "main"]);
}

#[test]
fn ephemeral_storage_sums_layers_logs_and_local_volumes() {
    let info = FsInfo {
        capacity_bytes: 1000,
        usage_bytes: 400,
        available_bytes: 500,
        inodes: 100,
        inodes_free: 60,
    };
    let at = time("2024-05-01T10:00:00Z");
    let container = |layer: Option<(u64, u64)>, logs: (u64, u64)| ContainerStats {
        name: "c".into(),
        start_time: at.clone(),
        cpu: None,
        memory: None,
        rootfs: layer.map(|(b, i)| FsStats {
            used_bytes: Some(b),
            inodes_used: Some(i),
            ..FsStats::at(at.clone())
        }),
        logs: Some(info.stats(
            at.clone(),
            Some(DiskUsage {
                bytes: logs.0,
                inodes: logs.1,
            }),
        )),
    };
    let total = ephemeral_storage(
        Some(&info),
        at.clone(),
        &[container(Some((10, 1)), (20, 2)), container(None, (30, 3))],
        [DiskUsage {
            bytes: 40,
            inodes: 4,
        }]
        .into_iter(),
    );
    assert_eq!(total.used_bytes, Some(100));
    assert_eq!(total.inodes_used, Some(10));
    assert_eq!(total.capacity_bytes, Some(1000));
    assert_eq!(total.available_bytes, Some(500));
}

// ---------------------------------------------------------------------------------------------
// Filesystems and host files

#[test]
fn disk_usage_counts_blocks_inodes_and_hard_links_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("vol");
    std::fs::create_dir_all(root.join("sub")).expect("mkdir");
    std::fs::write(root.join("sub/a"), vec![7u8; 100_000]).expect("write");
    std::fs::hard_link(root.join("sub/a"), root.join("b")).expect("link");
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).expect("symlink");
    let u = fs::disk_usage(&root).expect("du");
    // vol, sub, a (b is the same inode), the link.
    assert_eq!(u.inodes, 4);
    assert!(u.bytes >= 100_000, "{u:?}");
    assert!(
        u.bytes < 100_000 + 64 * 1024,
        "the symlink is not followed: {u:?}"
    );
    assert!(fs::disk_usage(&dir.path().join("missing")).is_err());
}

#[test]
fn log_files_directly_in_the_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("0.log"), vec![b'x'; 5000]).expect("write");
    std::fs::write(
        dir.path().join("0.log.20240501-100000.gz"),
        vec![b'x'; 3000],
    )
    .expect("write");
    std::fs::create_dir(dir.path().join("nested")).expect("mkdir");
    std::fs::write(dir.path().join("nested/other.log"), vec![b'x'; 90_000]).expect("write");
    let u = fs::files_usage(dir.path()).expect("usage");
    assert_eq!(u.inodes, 2);
    assert!((8000..90_000).contains(&u.bytes), "{u:?}");
    assert_eq!(fs::files_usage(&dir.path().join("missing")), None);
}

#[test]
fn pod_volumes_and_which_are_ephemeral() {
    let root = tempfile::tempdir().expect("tmp");
    let volumes = root.path().join("pods/u1/volumes");
    for (plugin, name) in [
        ("kubernetes.io~empty-dir", "scratch"),
        ("kubernetes.io~configmap", "cfg"),
        ("kubernetes.io~secret", "creds"),
    ] {
        std::fs::create_dir_all(volumes.join(plugin).join(name)).expect("mkdir");
    }
    std::fs::write(
        volumes.join("kubernetes.io~empty-dir/scratch/data"),
        vec![1u8; 1 << 20],
    )
    .expect("write");
    let at = time("2024-05-01T10:00:00Z");
    let found = fs::pod_volumes(root.path(), "u1", &at);
    let names: Vec<(&str, bool)> = found
        .iter()
        .map(|v| (v.stats.name.as_str(), v.ephemeral))
        .collect();
    assert_eq!(names, [("cfg", true), ("creds", false), ("scratch", true)]);
    let scratch = &found[2].stats.fs;
    assert!(
        scratch.used_bytes.is_some_and(|b| b >= 1 << 20),
        "{scratch:?}"
    );
    assert_eq!(scratch.inodes_used, Some(2));
    assert!(scratch.capacity_bytes.is_some_and(|c| c > 0));
    assert!(fs::pod_volumes(root.path(), "other", &at).is_empty());
}

#[test]
fn host_interfaces_and_boot_time() {
    let net_dev = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0\n  \
eth0: 9876543   5432    1    0    0     0          0         0  1234567    4321    2    0    0     0       0          0\n\
vethabc:   10      1    0    0    0     0          0         0       20       2    0    0    0     0       0          0\n  \
ens5:    77       7    0    0    0     0          0         0       88       8    3    0    0     0       0          0\n";
    let interfaces = node::parse_net_dev(net_dev);
    assert_eq!(
        interfaces,
        vec![
            InterfaceStats {
                name: "ens5".into(),
                rx_bytes: Some(77),
                rx_errors: Some(0),
                tx_bytes: Some(88),
                tx_errors: Some(3),
            },
            InterfaceStats {
                name: "eth0".into(),
                rx_bytes: Some(9_876_543),
                rx_errors: Some(1),
                tx_bytes: Some(1_234_567),
                tx_errors: Some(2),
            },
        ]
    );
    assert_eq!(
        node::parse_boot_time("cpu  1 2 3\nbtime 1714550400\nprocesses 5\n"),
        Some(1_714_550_400)
    );
    assert_eq!(node::parse_boot_time("cpu 1\n"), None);
}

#[test]
fn process_count_and_pod_cgroup_lookup() {
    let mount = tempfile::tempdir().expect("tmp");
    let pod = mount.path().join("memory/kubepods/burstable/podu1");
    std::fs::create_dir_all(pod.join("ctr1")).expect("mkdir");
    std::fs::write(pod.join("cgroup.procs"), "").expect("write");
    std::fs::write(pod.join("ctr1/cgroup.procs"), "10\n11\n").expect("write");
    assert_eq!(cgroup::process_count(&pod).expect("count"), 2);
    let cgroupfs = layout(mount.path(), CgroupDriver::Cgroupfs);
    assert_eq!(
        cgroup::find_pod_cgroup_dir(mount.path(), &cgroupfs, "u1").as_deref(),
        Some("/kubepods/burstable/podu1")
    );
    assert_eq!(
        cgroup::find_pod_cgroup_dir(mount.path(), &cgroupfs, "u2"),
        None
    );
    // With the systemd driver the pod's cgroup is a slice, its UID's dashes written as `_`.
    let slice = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podu_3.slice";
    std::fs::create_dir_all(mount.path().join("memory").join(slice)).expect("mkdir");
    let systemd = layout(mount.path(), CgroupDriver::Systemd);
    assert_eq!(
        cgroup::find_pod_cgroup_dir(mount.path(), &systemd, "u-3"),
        Some(format!("/{slice}"))
    );
    assert_eq!(
        cgroup::find_pod_cgroup_dir(mount.path(), &systemd, "u1"),
        None
    );
    assert_eq!(systemd.kubepods_dir(), "/kubepods.slice");
}

fn layout(mount: &Path, driver: CgroupDriver) -> CgroupSettings {
    CgroupSettings {
        driver,
        cgroup_root: "/".into(),
        cgroups_per_qos: true,
        mount: mount.to_path_buf(),
    }
}

// ---------------------------------------------------------------------------------------------
// A whole scrape over the fake runtime

struct Harness {
    dir: tempfile::TempDir,
    fake: FakeRuntime,
    _server: ServerHandle,
    cri: CriClient,
    provider: StatsProvider,
}

impl Harness {
    fn start() -> Self {
        let test_cri::FakeCri {
            dir,
            fake,
            server,
            cri,
        } = test_cri::serve_fake(&[]);
        let root = dir.path();
        let provider = StatsProvider::new(
            cri.clone(),
            StatsConfig {
                node_name: NODE.into(),
                root_dir: root.join("root"),
                pod_logs_dir: root.join("logs"),
                cgroup_mount: root.join("cgroup"),
                cgroups: layout(&root.join("cgroup"), CgroupDriver::Cgroupfs),
                host: HostPaths::under(&root.join("host")),
            },
        );
        Self {
            dir,
            fake,
            _server: server,
            cri,
            provider,
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    /// A running pod `pod` (UID `uid-<pod>`) of `node` with containers `names`.
    async fn run_pod(&self, pod: &str, node: &str, names: &[&str]) {
        let node_label = HashMap::from([(labels::NODE_NAME.to_string(), node.to_string())]);
        let config = api::PodSandboxConfig {
            labels: node_label.clone(),
            ..test_cri::sandbox_config(pod)
        };
        let sandbox = test_cri::run_sandbox(&self.cri, &config).await;
        for name in names {
            let container = api::ContainerConfig {
                labels: node_label.clone(),
                ..test_cri::sleeping_container(name, 0, "busybox")
            };
            test_cri::start_container(&self.cri, &sandbox, &config, container).await;
        }
    }
}

#[tokio::test]
async fn scrape_over_the_fake_runtime() {
    let h = Harness::start();
    h.fake.add_image_with_size("busybox", 5 << 20);
    h.run_pod("web", NODE, &["app", "sidecar"]).await;
    h.run_pod("db", NODE, &["main"]).await;
    h.run_pod("elsewhere", "node-b", &["main"]).await;
    // Host files: /proc, the root cgroup and web's pod cgroup (v1 layout).
    h.write(
        "host/proc/meminfo",
        b"MemTotal: 1000 kB\nMemFree: 400 kB\nInactive(file): 100 kB\n",
    );
    h.write("host/proc/stat", b"cpu 1 2 3\nbtime 1714550400\n");
    h.write("host/proc/loadavg", b"0.10 0.20 0.30 2/345 6789\n");
    h.write("host/proc/sys/kernel/pid_max", b"4194304\n");
    h.write("host/proc/sys/kernel/threads-max", b"95000\n");
    h.write(
        "host/proc/net/dev",
        b"h1\nh2\n  eth0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n",
    );
    h.write("cgroup/memory/memory.usage_in_bytes", b"512000\n");
    h.write(
        "cgroup/memory/memory.stat",
        b"total_rss 100\ntotal_inactive_file 12000\n",
    );
    h.write("cgroup/cpuacct/cpuacct.usage", b"99000000000\n");
    h.write("cgroup/memory/kubepods/memory.usage_in_bytes", b"300000\n");
    h.write("cgroup/memory/kubepods/memory.stat", b"total_rss 10\n");
    h.write("cgroup/cpuacct/kubepods/cpuacct.usage", b"5000\n");
    let web_memory = "cgroup/memory/kubepods/besteffort/poduid-web";
    h.write(
        &format!("{web_memory}/memory.usage_in_bytes"),
        b"70000000\n",
    );
    h.write(
        &format!("{web_memory}/memory.stat"),
        b"total_rss 1000000\ntotal_inactive_file 2000000\ntotal_pgfault 7\n",
    );
    h.write(&format!("{web_memory}/cgroup.procs"), b"101\n");
    h.write(&format!("{web_memory}/ctr/cgroup.procs"), b"102\n103\n");
    h.write(
        "cgroup/cpuacct/kubepods/besteffort/poduid-web/cpuacct.usage",
        b"4200000000\n",
    );
    // Logs, a volume and the hosts file of web.
    h.write("logs/default_web_uid-web/app/0.log", &vec![b'l'; 10_000]);
    h.write("logs/default_web_uid-web/sidecar/0.log", &[b'l'; 100]);
    h.write(
        "root/pods/uid-web/volumes/kubernetes.io~empty-dir/scratch/data",
        &vec![0u8; 200_000],
    );
    h.write("root/pods/uid-web/etc-hosts", b"127.0.0.1 localhost\n");

    let summary = h.provider.summary(false).await.expect("summary");
    // One scrape: a handful of CRI calls, none per container.
    let calls = |op| h.fake.call_count(op);
    assert_eq!(calls(Op::ListPodSandbox), 1);
    assert_eq!(calls(Op::ListContainers), 1);
    assert_eq!(calls(Op::ListPodSandboxStats), 1);
    assert_eq!(calls(Op::ListContainerStats), 1);
    assert_eq!(calls(Op::ImageFsInfo), 1);
    assert_eq!(
        calls(Op::ContainerStats) + calls(Op::ContainerStatus) + calls(Op::PodSandboxStatus),
        0
    );

    let node = &summary.node;
    assert_eq!(node.node_name, NODE);
    assert_eq!(node.start_time, time("2024-05-01T08:00:00Z"));
    assert_eq!(
        node.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(99 * S as u64)
    );
    let node_memory = node.memory.as_ref().expect("node memory");
    assert_eq!(node_memory.working_set_bytes, Some(500_000));
    assert_eq!(
        node_memory.available_bytes,
        Some(1_024_000 - 500_000),
        "MemTotal − working set"
    );
    assert_eq!(node.system_containers.len(), 1);
    assert_eq!(node.system_containers[0].name, "pods");
    assert_eq!(
        node.system_containers[0]
            .memory
            .as_ref()
            .and_then(|m| m.usage_bytes),
        Some(300_000)
    );
    assert_eq!(node.network.as_ref().map(|n| n.interfaces.len()), Some(1));
    let rlimit = node.rlimit.as_ref().expect("rlimit");
    assert_eq!(
        (rlimit.max_pid, rlimit.num_of_running_processes),
        (Some(95_000), Some(345))
    );
    let node_fs = node
        .fs
        .as_ref()
        .expect("node fs (the temporary directory's filesystem)");
    assert!(node_fs.capacity_bytes.is_some_and(|c| c > 0) && node_fs.used_bytes.is_some());
    let image_fs = node
        .runtime
        .as_ref()
        .and_then(|r| r.image_fs.as_ref())
        .expect("imageFs");
    assert_eq!(image_fs.used_bytes, Some(5 << 20));

    let names: Vec<&str> = summary
        .pods
        .iter()
        .map(|p| p.pod_ref.name.as_str())
        .collect();
    assert_eq!(names, ["db", "web"], "only this node's pods");
    let web = &summary.pods[1];
    assert_eq!(web.pod_ref.uid, "uid-web");
    let web_memory = web.memory.as_ref().expect("pod memory from its cgroup");
    assert_eq!(web_memory.working_set_bytes, Some(68_000_000));
    assert_eq!(web_memory.page_faults, Some(7));
    assert_eq!(
        web.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(4_200_000_000)
    );
    assert_eq!(
        web.process_stats.as_ref().and_then(|p| p.process_count),
        Some(3)
    );
    let container_names: Vec<&str> = web.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(container_names, ["app", "sidecar"]);
    let app_logs = web.containers[0].logs.as_ref().expect("app logs");
    assert!(
        app_logs.used_bytes.is_some_and(|b| b >= 10_000),
        "{app_logs:?}"
    );
    assert_eq!(app_logs.inodes_used, Some(1));
    assert_eq!(web.volume_stats.len(), 1);
    let scratch = &web.volume_stats[0];
    assert_eq!(scratch.name, "scratch");
    let scratch_bytes = scratch.fs.used_bytes.expect("used");
    assert!(scratch_bytes >= 200_000, "{scratch:?}");
    // Ephemeral storage: the logs, the emptyDir and the hosts file (the fake's layers are empty).
    let logs: u64 = web
        .containers
        .iter()
        .filter_map(|c| c.logs.as_ref()?.used_bytes)
        .sum();
    let hosts = fs::disk_usage(&h.path("root/pods/uid-web/etc-hosts"))
        .expect("hosts")
        .bytes;
    let ephemeral = web.ephemeral_storage.as_ref().expect("ephemeral-storage");
    assert_eq!(ephemeral.used_bytes, Some(logs + scratch_bytes + hosts));
    // db has no cgroup: its containers' (zero) figures summed.
    let db = &summary.pods[0];
    assert_eq!(
        db.memory.as_ref().and_then(|m| m.working_set_bytes),
        Some(0)
    );
    assert!(db.volume_stats.is_empty());

    // The fake lacks ListPodSandboxStats: it is not asked again.
    h.fake.clear_calls();
    let only = h.provider.summary(true).await.expect("cpu and memory");
    assert_eq!(calls(Op::ListPodSandboxStats), 0);
    assert_eq!(calls(Op::ImageFsInfo), 0);
    assert_eq!(calls(Op::ListContainerStats), 1);
    let node = &only.node;
    assert!(
        node.fs.is_none()
            && node.runtime.is_none()
            && node.network.is_none()
            && node.rlimit.is_none()
    );
    assert!(node.cpu.is_some() && node.memory.is_some());
    for pod in &only.pods {
        assert!(
            pod.volume_stats.is_empty() && pod.ephemeral_storage.is_none() && pod.network.is_none()
        );
        assert!(pod.process_stats.is_none());
        assert!(
            pod.containers
                .iter()
                .all(|c| c.logs.is_none() && c.rootfs.is_none())
        );
    }
    assert_eq!(
        only.pods[1]
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes),
        Some(68_000_000)
    );
}

#[tokio::test]
async fn scrape_fails_when_the_runtime_is_down() {
    let err = unreachable_provider()
        .summary(false)
        .await
        .expect_err("no runtime");
    assert!(matches!(err, super::StatsError::ListPodSandbox(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The handler

async fn get(router: axum::Router, path: &str) -> (axum::http::StatusCode, String) {
    use tower::ServiceExt as _;
    let resp = router
        .oneshot(
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn server_state(stats: StatsProvider) -> crate::server::ServerState {
    crate::server::ServerState {
        status: crate::status::StatusManager::default(),
        registry: std::sync::Arc::new(crate::metrics::Metrics::default().registry()),
        probes: std::sync::Arc::new(crate::metrics::Metrics::default().probes_registry()),
        pleg: crate::pleg::PlegHealth::default(),
        stats,
    }
}

#[tokio::test]
async fn served_on_the_read_only_port() {
    let h = Harness::start();
    h.fake.add_image("busybox");
    h.run_pod("web", NODE, &["app"]).await;
    let router = crate::server::read_only_router(server_state(h.provider.clone()));
    let (code, body) = get(router.clone(), "/stats/summary").await;
    assert_eq!(code, axum::http::StatusCode::OK, "{body}");
    let summary: Summary = serde_json::from_str(&body).expect("a Summary");
    assert_eq!(summary.node.node_name, NODE);
    assert_eq!(summary.pods.len(), 1);
    assert!(summary.pods[0].ephemeral_storage.is_some());
    let (code, body) = get(router.clone(), "/stats/summary?only_cpu_and_memory=true").await;
    assert_eq!(code, axum::http::StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["pods"][0].get("ephemeral-storage").is_none(), "{v}");
    assert!(v["pods"][0].get("containers").is_some(), "{v}");

    let (code, body) = get(
        crate::server::read_only_router(server_state(unreachable_provider())),
        "/stats/summary",
    )
    .await;
    assert_eq!(code, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.starts_with("Internal Error: failed to list pod sandboxes"),
        "{body}"
    );
}

#[test]
fn only_cpu_and_memory_query() {
    use crate::server::stats_summary::only_cpu_and_memory;
    assert!(only_cpu_and_memory(Some("only_cpu_and_memory=true")));
    assert!(!only_cpu_and_memory(Some("only_cpu_and_memory=1")));
    assert!(!only_cpu_and_memory(Some(
        "only_cpu_and_memory=true&only_cpu_and_memory=true"
    )));
    assert!(!only_cpu_and_memory(None));
}
