//! README's metrics lists (between `<!-- metrics-list:begin -->` and `<!-- metrics-list:end -->`
//! for `/metrics`, `<!-- probe-metrics-list:…` for `/metrics/probes`) are the agent's registries
//! (and `<!-- cadvisor-metrics-list:…` what `/metrics/cadvisor` renders of a full fixture):
//! every metric an endpoint serves is listed with its name, type and labels as a scraper sees them
//! in the classic text format, and nothing else is listed. And what is served is kubelet's:
//! [`KUBELET`] and [`KUBELET_PROBES`] list upstream's names, types, labels, buckets and stability
//! levels (`pkg/kubelet/metrics/metrics.go`, `pkg/kubelet/prober/prober_manager.go`,
//! `pkg/kubelet/server/server.go`).
//!
//! prometheus-client leaves a family with no series out of the encoding altogether (no `# TYPE`
//! line), so a label family is only served after its first use. The test gives every family one
//! series first: the CRI families through one real (failing) call of the agent's CRI client, the
//! others directly. [`Metrics`] and its parts are destructured without `..`, so a new field does
//! not compile until it is given a series here too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mk_cri::{CriClient, api};

use crate::metrics::{
    self, ContainerErrorLabels, ContainerTypeLabels, EvictionLabels, Metrics, OperationLabels,
    StateLabels,
};
use crate::nodeshutdown::ShutdownMetrics;
use crate::prober::metrics::{ProbeDurationLabels, ProbeMetrics, ProbeResultLabels};

const README: &str = include_str!("../../README.md");
/// README's list of `/metrics`.
const METRICS_LIST: &str = "metrics-list";
/// README's list of `/metrics/probes`.
const PROBES_LIST: &str = "probe-metrics-list";
/// README's list of `/metrics/cadvisor`.
const CADVISOR_LIST: &str = "cadvisor-metrics-list";

/// One metric as served or as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: String,
    labels: BTreeSet<String>,
}

/// The agent's metrics with one series in every family.
async fn used_metrics() -> Metrics {
    let m = Metrics::default();
    let Metrics {
        cri,
        running_pods: _,
        running_containers,
        pod_start_duration: _,
        pod_worker_duration,
        pleg_relist_duration: _,
        pleg_relist_interval: _,
        evented_pleg_connection_success: _,
        evented_pleg_connection_error: _,
        started_pods: _,
        started_containers,
        started_containers_errors,
        desired_pods: _,
        evictions,
        prober,
        shutdown,
    } = &m;
    // A call to a runtime that is not there: counted, timed and counted as an error.
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("unix://{}", dir.path().join("absent.sock").display());
    let client = CriClient::new(&endpoint, Duration::from_secs(5), cri.clone()).expect("client");
    let call = client
        .version(api::VersionRequest {
            version: "v1".into(),
        })
        .await;
    assert!(call.is_err(), "no runtime listens on {endpoint}");
    running_containers
        .get_or_create(&StateLabels {
            container_state: "running",
        })
        .set(1);
    pod_worker_duration
        .get_or_create(&OperationLabels {
            operation_type: "sync",
        })
        .observe(0.1);
    started_containers
        .get_or_create(&ContainerTypeLabels {
            container_type: "container",
        })
        .inc();
    started_containers_errors
        .get_or_create(&ContainerErrorLabels {
            container_type: "container",
            code: "CreateContainerError".into(),
        })
        .inc();
    evictions
        .get_or_create(&EvictionLabels {
            eviction_signal: "memory.available",
        })
        .inc();
    m.set_desired_pods(2, 1);
    let ProbeMetrics {
        probe_total,
        probe_duration,
    } = prober;
    probe_total
        .get_or_create(&ProbeResultLabels {
            probe_type: "Liveness",
            result: "successful",
            container: "c".into(),
            pod: "p".into(),
            namespace: "default".into(),
            pod_uid: "u".into(),
        })
        .inc();
    probe_duration
        .get_or_create(&ProbeDurationLabels {
            probe_type: "Liveness",
            container: "c".into(),
            pod: "p".into(),
            namespace: "default".into(),
        })
        .observe(0.1);
    let ShutdownMetrics {
        start_time: _,
        end_time: _,
    } = shutdown;
    m
}

/// The label names of a sample line (`name{a="x",b="y"} 1`), without a histogram's `le`.
fn sample_labels(line: &str) -> BTreeSet<String> {
    let Some((_, rest)) = line.split_once('{') else {
        return BTreeSet::new();
    };
    let (inside, _) = rest.rsplit_once('}').unwrap_or_default();
    inside
        .split("\",")
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, _)| key.trim().to_string())
        .filter(|key| !key.is_empty() && key != "le")
        .collect()
}

/// What the registry serves: each `# TYPE` line's name and type, and the labels of its samples.
fn served(text: &str) -> BTreeMap<String, Entry> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            out.insert(
                name.to_string(),
                Entry {
                    kind: kind.to_string(),
                    labels: BTreeSet::new(),
                },
            );
            current = Some(name.to_string());
        } else if !line.starts_with('#')
            && let Some(entry) = current.as_ref().and_then(|n| out.get_mut(n))
        {
            entry.labels.extend(sample_labels(line));
        }
    }
    out
}

/// A README list: table rows `` | `name` | type | `label`, `label` | what | `` (`—`: no labels)
/// between `<!-- {marker}:begin -->` and `<!-- {marker}:end -->`.
fn documented(marker: &str) -> BTreeMap<String, Entry> {
    let begin = format!("<!-- {marker}:begin -->");
    let end = format!("<!-- {marker}:end -->");
    assert_eq!(
        README.matches(&begin).count(),
        1,
        "README needs one {begin}"
    );
    assert_eq!(README.matches(&end).count(), 1, "README needs one {end}");
    let (_, rest) = README.split_once(&begin).unwrap_or_default();
    let (list, _) = rest.split_once(&end).unwrap_or_default();
    let mut out = BTreeMap::new();
    for row in list.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(
            cells.len() >= 5,
            "README metrics row with too few cells: {row}"
        );
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty() && l != "—")
            .collect();
        let entry = Entry {
            kind: cells[2].to_string(),
            labels,
        };
        assert!(
            out.insert(name.clone(), entry).is_none(),
            "README lists {name} twice"
        );
    }
    out
}

#[tokio::test]
async fn label_families_are_served_only_once_used() {
    let unused = Metrics::default().registry();
    let (text, _) = metrics::encode(&unused).expect("encode");
    assert!(!text.contains("# TYPE kubelet_evictions "), "{text}");
    assert!(text.contains("# TYPE kubelet_running_pods gauge"), "{text}");
    let used = used_metrics().await.registry();
    let (text, _) = metrics::encode(&used).expect("encode");
    assert!(text.contains("# TYPE kubelet_evictions counter"), "{text}");
}

#[tokio::test]
async fn readme_metrics_lists_are_the_registries() {
    let used = used_metrics().await;
    let (text, _) = metrics::encode_with_process(&used.registry()).expect("encode");
    readme_list_matches(&text, METRICS_LIST);
    let (text, _) = metrics::encode(&used.probes_registry()).expect("encode");
    readme_list_matches(&text, PROBES_LIST);
}

/// `/metrics/cadvisor` is rendered from the stats, not a registry: its fixture has every series.
#[test]
fn readme_cadvisor_list_is_what_is_rendered() {
    let (summary, ids) = crate::server::cadvisor_metrics::fixture();
    readme_list_matches(
        &crate::server::cadvisor_metrics::render(&summary, &ids),
        CADVISOR_LIST,
    );
}

fn readme_list_matches(text: &str, marker: &str) {
    let served = served(text);
    let documented = documented(marker);
    assert!(!documented.is_empty(), "README's {marker} has no rows");
    let mut problems = Vec::new();
    for (name, entry) in &served {
        match documented.get(name) {
            None => problems.push(format!("served but not in README: {name} {entry:?}")),
            Some(listed) if listed != entry => {
                problems.push(format!("{name}: README says {listed:?}, served {entry:?}"));
            }
            Some(_) => {}
        }
    }
    for name in documented.keys().filter(|n| !served.contains_key(*n)) {
        problems.push(format!("in README but not served: {name}"));
    }
    assert!(
        problems.is_empty(),
        "README's {marker} and the registry disagree:\n{}",
        problems.join("\n")
    );
}

/// kubelet's metric: name, type, label names, (histograms) bucket bounds and stability level.
struct Kubelet {
    name: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    buckets: Buckets,
    stability: &'static str,
}

/// A histogram's bounds: literal, or kubelet's `metrics.ExponentialBuckets(.005, 2.5, 14)`.
#[derive(Clone, Copy)]
enum Buckets {
    None,
    Literal(&'static [f64]),
    Runtime,
}

impl Buckets {
    fn bounds(self) -> Vec<f64> {
        match self {
            Buckets::None => Vec::new(),
            Buckets::Literal(b) => b.to_vec(),
            Buckets::Runtime => exponential_buckets(0.005, 2.5, 14),
        }
    }
}

const fn metric(
    name: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
) -> Kubelet {
    Kubelet {
        name,
        kind,
        labels,
        buckets: Buckets::None,
        stability: "ALPHA",
    }
}

/// `k` at another stability level than `ALPHA`.
const fn at(stability: &'static str, k: Kubelet) -> Kubelet {
    Kubelet { stability, ..k }
}

const fn histogram(
    name: &'static str,
    labels: &'static [&'static str],
    buckets: Buckets,
) -> Kubelet {
    Kubelet {
        name,
        kind: "histogram",
        labels,
        buckets,
        stability: "ALPHA",
    }
}

/// client_golang's `DefBuckets`.
const DEF_BUCKETS: Buckets = Buckets::Literal(&[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
]);
/// client_golang's `ExponentialBuckets`: `start`, then each bound `factor` times the one before.
fn exponential_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    std::iter::successors(Some(start), |b| Some(b * factor))
        .take(count)
        .collect()
}

/// `podStartupDurationBuckets`.
const POD_START_BUCKETS: Buckets = Buckets::Literal(&[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
]);

/// Upstream's definitions of every metric the agent serves, as kubelet's Prometheus text names
/// them (a counter's `_total` only where kubelet's name has it).
const KUBELET: &[Kubelet] = &[
    metric("kubelet_running_pods", "gauge", &[]),
    metric("kubelet_running_containers", "gauge", &["container_state"]),
    metric("kubelet_desired_pods", "gauge", &["static"]),
    metric("kubelet_started_pods_total", "counter", &[]),
    metric(
        "kubelet_started_containers_total",
        "counter",
        &["container_type"],
    ),
    metric(
        "kubelet_started_containers_errors_total",
        "counter",
        &["container_type", "code"],
    ),
    histogram("kubelet_pod_start_duration_seconds", &[], POD_START_BUCKETS),
    histogram(
        "kubelet_pod_worker_duration_seconds",
        &["operation_type"],
        DEF_BUCKETS,
    ),
    histogram("kubelet_pleg_relist_duration_seconds", &[], DEF_BUCKETS),
    histogram("kubelet_pleg_relist_interval_seconds", &[], DEF_BUCKETS),
    metric(
        "kubelet_evented_pleg_connection_success_count",
        "counter",
        &[],
    ),
    metric(
        "kubelet_evented_pleg_connection_error_count",
        "counter",
        &[],
    ),
    metric(
        "kubelet_runtime_operations_total",
        "counter",
        &["operation_type"],
    ),
    metric(
        "kubelet_runtime_operations_errors_total",
        "counter",
        &["operation_type"],
    ),
    histogram(
        "kubelet_runtime_operations_duration_seconds",
        &["operation_type"],
        Buckets::Runtime,
    ),
    metric("kubelet_evictions", "counter", &["eviction_signal"]),
    metric("kubelet_graceful_shutdown_start_time_seconds", "gauge", &[]),
    metric("kubelet_graceful_shutdown_end_time_seconds", "gauge", &[]),
    // client_golang's process collector (legacyregistry registers it), Linux.
    at("", metric("process_cpu_seconds_total", "counter", &[])),
    at("", metric("process_max_fds", "gauge", &[])),
    at(
        "",
        metric("process_network_receive_bytes_total", "counter", &[]),
    ),
    at(
        "",
        metric("process_network_transmit_bytes_total", "counter", &[]),
    ),
    at("", metric("process_open_fds", "gauge", &[])),
    at("", metric("process_resident_memory_bytes", "gauge", &[])),
    at("", metric("process_start_time_seconds", "gauge", &[])),
    at("", metric("process_virtual_memory_bytes", "gauge", &[])),
    at("", metric("process_virtual_memory_max_bytes", "gauge", &[])),
];

/// What kubelet serves on `/metrics/probes`.
const KUBELET_PROBES: &[Kubelet] = &[
    at(
        "BETA",
        metric(
            "prober_probe_total",
            "counter",
            &[
                "probe_type",
                "result",
                "container",
                "pod",
                "namespace",
                "pod_uid",
            ],
        ),
    ),
    histogram(
        "prober_probe_duration_seconds",
        &["probe_type", "container", "pod", "namespace"],
        DEF_BUCKETS,
    ),
    metric("process_start_time_seconds", "gauge", &[]),
];

/// The `le` bounds a histogram's `_bucket` samples carry, `+Inf` left out, in order of appearance
/// for the first label set.
fn served_buckets(text: &str, name: &str) -> Vec<f64> {
    let bucket = format!("{name}_bucket{{");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&bucket)) {
        let Some((_, rest)) = line.split_once("le=\"") else {
            continue;
        };
        let (le, _) = rest.split_once('"').unwrap_or_default();
        if le == "+Inf" {
            break;
        }
        out.push(le.parse::<f64>().expect("numeric le"));
    }
    out
}

/// What a sample's name is: the part before its labels or value.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn every_served_metric_is_kubelets_name_type_labels_and_buckets() {
    let used = used_metrics().await;
    for (encoded, kubelet) in [
        (metrics::encode_with_process(&used.registry()), KUBELET),
        (metrics::encode(&used.probes_registry()), KUBELET_PROBES),
    ] {
        let (text, _) = encoded.expect("encode");
        let family = |k: &Kubelet| k.name;
        let served = served(&text);
        let mut problems = Vec::new();
        let names: BTreeSet<&str> = kubelet.iter().map(family).collect();
        for name in served.keys().filter(|n| !names.contains(n.as_str())) {
            problems.push(format!("served, not a kubelet metric: {name}"));
        }
        let samples = sample_names(&text);
        for k in kubelet {
            let Some(entry) = served.get(family(k)) else {
                problems.push(format!("kubelet's {} is not served", k.name));
                continue;
            };
            // client_golang's own collectors' help texts carry no stability level.
            let help = match k.stability {
                "" => format!("# HELP {} ", k.name),
                level => format!("# HELP {} [{level}] ", k.name),
            };
            if !text.lines().any(|l| {
                l.strip_prefix(&help)
                    .is_some_and(|rest| !k.stability.is_empty() || !rest.starts_with('['))
            }) {
                problems.push(format!("{}: no help line starting {help:?}", k.name));
            }
            if entry.kind != k.kind {
                problems.push(format!(
                    "{}: type {} (kubelet: {})",
                    k.name, entry.kind, k.kind
                ));
            }
            let labels: BTreeSet<String> = k.labels.iter().map(|l| l.to_string()).collect();
            if entry.labels != labels {
                problems.push(format!(
                    "{}: labels {:?} (kubelet: {labels:?})",
                    k.name, entry.labels
                ));
            }
            // The series Prometheus stores are the samples' names: kubelet's, suffixes aside.
            let expected: Vec<String> = if k.kind == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{}{s}", k.name))
                    .collect()
            } else {
                vec![k.name.to_string()]
            };
            for sample in expected.iter().filter(|s| !samples.contains(*s)) {
                problems.push(format!("{}: no sample named {sample}", k.name));
            }
            if k.kind == "histogram" {
                let buckets = served_buckets(&text, k.name);
                let expected = k.buckets.bounds();
                let same = buckets.len() == expected.len()
                    && buckets
                        .iter()
                        .zip(&expected)
                        .all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs());
                if !same {
                    problems.push(format!(
                        "{}: buckets {buckets:?} (kubelet: {expected:?})",
                        k.name
                    ));
                }
            }
        }
        let stray: Vec<&String> = samples
            .iter()
            .filter(|s| {
                !kubelet.iter().any(|k| {
                    *s == k.name
                        || (k.kind == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|suffix| **s == format!("{}{suffix}", k.name)))
                })
            })
            .collect();
        if !stray.is_empty() {
            problems.push(format!("samples under no kubelet name: {stray:?}"));
        }
        assert!(
            problems.is_empty(),
            "the served metrics differ from kubelet's:\n{}",
            problems.join("\n")
        );
    }
}

#[tokio::test]
async fn desired_pods_counts_static_pods_apart_as_kubelet() {
    let m = Metrics::default();
    m.set_desired_pods(3, 1);
    let (text, _) = metrics::encode(&m.registry()).expect("encode");
    assert!(
        text.contains("\nkubelet_desired_pods{static=\"\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("\nkubelet_desired_pods{static=\"true\"} 1\n"),
        "{text}"
    );
    m.set_desired_pods(0, 0);
    let (text, _) = metrics::encode(&m.registry()).expect("encode");
    assert!(
        text.contains("\nkubelet_desired_pods{static=\"\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("\nkubelet_desired_pods{static=\"true\"} 0\n"),
        "{text}"
    );
}
