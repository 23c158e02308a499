//! `/metrics/resource`: the kubelet's resource metrics, what metrics-server scrapes for
//! `kubectl top` and the Horizontal Pod Autoscaler — node, pod and container CPU time and memory
//! working set, with the sample time, in the Prometheus text format and kubelet's metric names.
//! Containers' figures come from the runtime (CRI ListContainerStats, and ListContainers for their
//! start times, as kubelet's CRI stats provider takes them); a pod's are the sum of its
//! containers'; the node's are the root cgroup's (cgroup v1 or v2).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use mk_cri::{CriClient, api};

/// One container's sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// Nanoseconds since the epoch.
    pub timestamp_ns: i64,
    pub cpu_ns: Option<u64>,
    pub working_set: Option<u64>,
    /// When the container was created (nanoseconds since the epoch), if the runtime listed it.
    pub started_ns: Option<i64>,
}

/// The node's sample (root cgroup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeSample {
    pub timestamp_ns: i64,
    pub cpu_ns: Option<u64>,
    pub working_set: Option<u64>,
}

/// Reads the root cgroup's CPU time and memory working set under `root` (`/sys/fs/cgroup`).
pub fn node_sample(root: &Path, now_ns: i64) -> NodeSample {
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    let stat = |text: &str, key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
    };
    let (cpu_ns, working_set) = if root.join("cgroup.controllers").exists() {
        // cgroup v2: the root has no memory.current; the node's memory is /proc/meminfo's.
        let cpu = read("cpu.stat")
            .and_then(|t| stat(&t, "usage_usec"))
            .map(|us| us.saturating_mul(1000));
        (cpu, meminfo_working_set())
    } else {
        let cpu = read("cpuacct/cpuacct.usage").and_then(|t| t.trim().parse().ok());
        let usage: Option<u64> =
            read("memory/memory.usage_in_bytes").and_then(|t| t.trim().parse().ok());
        let inactive = read("memory/memory.stat")
            .and_then(|t| stat(&t, "total_inactive_file"))
            .unwrap_or(0);
        (cpu, usage.map(|u| u.saturating_sub(inactive)))
    };
    NodeSample {
        timestamp_ns: now_ns,
        cpu_ns,
        working_set,
    }
}

/// MemTotal − MemAvailable, for cgroup v2 roots.
fn meminfo_working_set() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(field("MemTotal")?.saturating_sub(field("MemAvailable")?) * 1024)
}

/// The runtime's container samples, named by their kubelet labels.
pub async fn container_samples(cri: &CriClient) -> Result<Vec<ContainerSample>, mk_cri::CriError> {
    let stats = cri
        .list_container_stats(api::ListContainerStatsRequest { filter: None })
        .await?
        .stats;
    let created: HashMap<String, i64> = cri
        .list_containers(api::ListContainersRequest { filter: None })
        .await?
        .containers
        .into_iter()
        .map(|c| (c.id, c.created_at))
        .collect();
    Ok(stats
        .iter()
        .filter_map(|s| {
            let mut sample = sample_of(s)?;
            let id = s.attributes.as_ref().map(|a| a.id.as_str());
            sample.started_ns = id.and_then(|id| created.get(id)).copied();
            Some(sample)
        })
        .collect())
}

fn sample_of(stats: &api::ContainerStats) -> Option<ContainerSample> {
    let attributes = stats.attributes.as_ref()?;
    let label = |key: &str| attributes.labels.get(key).cloned();
    let cpu = stats.cpu.as_ref();
    let memory = stats.memory.as_ref();
    Some(ContainerSample {
        namespace: label("io.kubernetes.pod.namespace")?,
        pod: label("io.kubernetes.pod.name")?,
        container: label("io.kubernetes.container.name")?,
        timestamp_ns: cpu
            .map(|c| c.timestamp)
            .or(memory.map(|m| m.timestamp))
            .unwrap_or_default(),
        cpu_ns: cpu
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value),
        working_set: memory
            .and_then(|m| m.working_set_bytes.as_ref())
            .map(|v| v.value),
        started_ns: None,
    })
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A pod's CPU time, working set and latest sample time: its containers' summed.
type PodSum = (Option<u64>, Option<u64>, i64);

/// The text exposition (format 0.0.4), as the kubelet writes it.
pub fn render(node: &NodeSample, containers: &[ContainerSample], scrape_error: bool) -> String {
    let mut out = String::new();
    let ms = |ns: i64| ns / 1_000_000;
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64, i64)>| {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value, ts) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {}", ms(ts));
        }
    };
    let container_labels = |c: &ContainerSample| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(&c.container),
            escape(&c.namespace),
            escape(&c.pod)
        )
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        containers
            .iter()
            .filter_map(|c| Some((container_labels(c), seconds(c.cpu_ns?), c.timestamp_ns)))
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        containers
            .iter()
            .filter_map(|c| Some((container_labels(c), c.working_set? as f64, c.timestamp_ns)))
            .collect(),
    );
    // Stamped with the start time itself, as kubelet does.
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        containers
            .iter()
            .filter_map(|c| {
                let started = c.started_ns.filter(|&ns| ns > 0)?;
                // Whole seconds and the fraction apart: exact where a plain division is not.
                let secs =
                    (started / 1_000_000_000) as f64 + (started % 1_000_000_000) as f64 / 1e9;
                Some((container_labels(c), secs, started))
            })
            .collect(),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        node.cpu_ns
            .map(|cpu| (String::new(), seconds(cpu), node.timestamp_ns))
            .into_iter()
            .collect(),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        node.working_set
            .map(|ws| (String::new(), ws as f64, node.timestamp_ns))
            .into_iter()
            .collect(),
    );
    // Pods: the sums of their containers.
    let mut pods: BTreeMap<(String, String), PodSum> = BTreeMap::new();
    for c in containers {
        let entry = pods
            .entry((c.namespace.clone(), c.pod.clone()))
            .or_insert((None, None, 0));
        if let Some(cpu) = c.cpu_ns {
            entry.0 = Some(entry.0.unwrap_or(0) + cpu);
        }
        if let Some(ws) = c.working_set {
            entry.1 = Some(entry.1.unwrap_or(0) + ws);
        }
        entry.2 = entry.2.max(c.timestamp_ns);
    }
    let pod_labels =
        |ns: &str, pod: &str| format!("{{namespace=\"{}\",pod=\"{}\"}}", escape(ns), escape(pod));
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        pods.iter()
            .filter_map(|((ns, pod), (cpu, _, ts))| {
                Some((pod_labels(ns, pod), seconds((*cpu)?), *ts))
            })
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        pods.iter()
            .filter_map(|((ns, pod), (_, ws, ts))| Some((pod_labels(ns, pod), (*ws)? as f64, *ts)))
            .collect(),
    );
    let _ = writeln!(
        out,
        "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE scrape_error gauge");
    let _ = writeln!(out, "scrape_error {}", u8::from(scrape_error));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pod: &str, container: &str, cpu: u64, ws: u64) -> ContainerSample {
        ContainerSample {
            namespace: "default".into(),
            pod: pod.into(),
            container: container.into(),
            timestamp_ns: 1_700_000_000_123_000_000,
            cpu_ns: Some(cpu),
            working_set: Some(ws),
            started_ns: Some(1_699_999_990_250_000_000),
        }
    }

    #[test]
    fn kubelet_names_labels_timestamps_and_pod_sums() {
        let node = NodeSample {
            timestamp_ns: 1_700_000_000_500_000_000,
            cpu_ns: Some(2_500_000_000),
            working_set: Some(1024),
        };
        let text = render(
            &node,
            &[
                sample("web", "app", 1_500_000_000, 100),
                sample("web", "sidecar", 500_000_000, 50),
            ],
            false,
        );
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1.5 1700000000123\n"
        ), "{text}");
        assert!(text.contains(
            "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 2 1700000000123\n"
        ));
        assert!(
            text.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 150 ")
        );
        assert!(text.contains(
            "container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1699999990.25 1699999990250\n"
        ), "{text}");
        assert!(text.contains("node_cpu_usage_seconds_total 2.5 1700000000500\n"));
        assert!(text.contains("node_memory_working_set_bytes 1024 1700000000500\n"));
        assert!(text.contains("# TYPE container_memory_working_set_bytes gauge\n"));
        assert!(text.ends_with("scrape_error 0\n"));
    }

    #[test]
    fn containers_without_kubelet_labels_are_left_out() {
        let stats = api::ContainerStats {
            attributes: Some(api::ContainerAttributes {
                id: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(sample_of(&stats), None);
    }

    #[test]
    fn node_figures_from_a_cgroup_v1_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("cpuacct")).expect("dir");
        std::fs::create_dir_all(dir.path().join("memory")).expect("dir");
        std::fs::write(dir.path().join("cpuacct/cpuacct.usage"), "42000000000\n").expect("w");
        std::fs::write(dir.path().join("memory/memory.usage_in_bytes"), "1000\n").expect("w");
        std::fs::write(
            dir.path().join("memory/memory.stat"),
            "cache 5\ntotal_inactive_file 300\n",
        )
        .expect("w");
        let node = node_sample(dir.path(), 7);
        assert_eq!(node.cpu_ns, Some(42_000_000_000));
        assert_eq!(node.working_set, Some(700));
        let v2 = tempfile::tempdir().expect("tempdir");
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory\n").expect("w");
        std::fs::write(v2.path().join("cpu.stat"), "usage_usec 3000\nuser_usec 1\n").expect("w");
        assert_eq!(node_sample(v2.path(), 7).cpu_ns, Some(3_000_000));
    }
}
