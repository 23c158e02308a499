//! The agent's Prometheus metrics under kubelet's names, types, labels and buckets, so existing
//! dashboards and alerts keep working.

pub mod process;
mod unsuffixed_counter;

pub use unsuffixed_counter::UnsuffixedCounter;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub container_state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerTypeLabels {
    pub container_type: &'static str,
}

/// `kubelet_desired_pods`' label: `"true"` for static pods (not from the API server), `""` for the
/// others, as kubelet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StaticLabels {
    pub r#static: &'static str,
}

/// `kubelet_evictions`' label: the signal whose threshold was met (`memory.available`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    pub eviction_signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerErrorLabels {
    pub container_type: &'static str,
    pub code: String,
}

fn pod_start_histogram() -> Histogram {
    // kubelet's pod start buckets.
    Histogram::new([
        0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
        300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
    ])
}

/// client_golang's `DefBuckets`, kubelet's buckets for its histograms that name none of their own
/// (pod worker, PLEG relist, prober durations).
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub fn default_buckets_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// Every metric the agent exports. Cheap to clone; all clones share the same values.
#[derive(Clone)]
pub struct Metrics {
    pub cri: mk_cri::CriMetrics,
    pub running_pods: Gauge,
    pub running_containers: Family<StateLabels, Gauge>,
    pub pod_start_duration: Histogram,
    pub pod_worker_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub pleg_relist_duration: Histogram,
    pub pleg_relist_interval: Histogram,
    /// Container event streams opened and lost (kubelet's `evented_pleg_connection_*_count`, no
    /// `_total`).
    pub evented_pleg_connection_success: UnsuffixedCounter,
    pub evented_pleg_connection_error: UnsuffixedCounter,
    pub started_pods: Counter,
    pub started_containers: Family<ContainerTypeLabels, Counter>,
    pub started_containers_errors: Family<ContainerErrorLabels, Counter>,
    /// `kubelet_desired_pods{static=""|"true"}`: see [`Metrics::set_desired_pods`].
    pub desired_pods: Family<StaticLabels, Gauge>,
    /// `kubelet_evictions` (no `_total`): pods evicted, by eviction signal.
    pub evictions: Family<EvictionLabels, UnsuffixedCounter>,
    /// `prober_probe_total` and `prober_probe_duration_seconds` (unprefixed, as kubelet's).
    pub prober: crate::prober::ProbeMetrics,
    /// `kubelet_graceful_shutdown_start_time_seconds` and `..._end_time_seconds`.
    pub shutdown: crate::nodeshutdown::ShutdownMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            cri: mk_cri::CriMetrics::default(),
            running_pods: Gauge::default(),
            running_containers: Family::default(),
            pod_start_duration: pod_start_histogram(),
            pod_worker_duration: Family::new_with_constructor(default_buckets_histogram),
            pleg_relist_duration: default_buckets_histogram(),
            pleg_relist_interval: default_buckets_histogram(),
            evented_pleg_connection_success: UnsuffixedCounter::default(),
            evented_pleg_connection_error: UnsuffixedCounter::default(),
            started_pods: Counter::default(),
            started_containers: Family::default(),
            started_containers_errors: Family::default(),
            desired_pods: Family::default(),
            evictions: Family::default(),
            prober: crate::prober::ProbeMetrics::default(),
            shutdown: crate::nodeshutdown::ShutdownMetrics::default(),
        };
        // Both series from the start, as a gauge: 0 until the first pod sources' update.
        metrics.set_desired_pods(0, 0);
        metrics
    }
}

impl Metrics {
    /// Sets `kubelet_desired_pods`: kubelet always serves both series, `static=""` for pods from the
    /// API server and `static="true"` for static pods.
    pub fn set_desired_pods(&self, api: usize, static_pods: usize) {
        for (label, count) in [("", api), ("true", static_pods)] {
            self.desired_pods
                .get_or_create(&StaticLabels { r#static: label })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// A registry holding every metric with kubelet's `kubelet_` prefix.
    pub fn registry(&self) -> Registry {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("kubelet");
        self.cri.register(r);
        r.register(
            "running_pods",
            "Number of pods that have a running pod sandbox",
            self.running_pods.clone(),
        );
        r.register(
            "running_containers",
            "Number of containers currently running",
            self.running_containers.clone(),
        );
        r.register(
            "pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            self.pod_start_duration.clone(),
        );
        r.register(
            "pod_worker_duration_seconds",
            "Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync",
            self.pod_worker_duration.clone(),
        );
        r.register(
            "pleg_relist_duration_seconds",
            "Duration in seconds for relisting pods in PLEG",
            self.pleg_relist_duration.clone(),
        );
        r.register(
            "pleg_relist_interval_seconds",
            "Interval in seconds between relisting in PLEG",
            self.pleg_relist_interval.clone(),
        );
        r.register(
            "evented_pleg_connection_success_count",
            "The number of times a streaming client was obtained to receive CRI Events",
            self.evented_pleg_connection_success.clone(),
        );
        r.register(
            "evented_pleg_connection_error_count",
            "The number of errors encountered during the establishment of streaming connection with the CRI runtime",
            self.evented_pleg_connection_error.clone(),
        );
        r.register(
            "started_pods",
            "Cumulative number of pods started",
            self.started_pods.clone(),
        );
        r.register(
            "started_containers",
            "Cumulative number of containers started",
            self.started_containers.clone(),
        );
        r.register(
            "started_containers_errors",
            "Cumulative number of errors when starting containers",
            self.started_containers_errors.clone(),
        );
        r.register(
            "desired_pods",
            "The number of pods the kubelet is being instructed to run. static is true if the pod is not from the apiserver",
            self.desired_pods.clone(),
        );
        r.register(
            "evictions",
            "Cumulative number of pod evictions by eviction signal",
            self.evictions.clone(),
        );
        self.shutdown.register(r);
        root
    }

    /// `/metrics/probes`' registry, as kubelet's: the prober's two metrics (under their bare
    /// names) and `process_start_time_seconds`.
    pub fn probes_registry(&self) -> Registry {
        let mut root = Registry::default();
        self.prober.register(&mut root);
        let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        start.set(process_start_time_seconds());
        root.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
        root
    }
}

/// When this process started, in seconds since the epoch: the boot time (`btime` in `/proc/stat`)
/// plus the process's start in clock ticks after boot (`/proc/self/stat` field 22); now, where
/// `/proc` cannot say.
pub fn process_start_time_seconds() -> f64 {
    let from_proc = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let (_, rest) = stat.rsplit_once(')')?;
        let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        let boot: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let ticks = rustix::param::clock_ticks_per_second();
        (ticks > 0).then(|| boot + start_ticks / ticks as f64)
    };
    from_proc().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    })
}

/// The stability level component-base prints before a metric's help text: every metric the agent
/// serves is `ALPHA` upstream but `prober_probe_total` (`BETA`); `/metrics/resource`' are
/// `STABLE` and written there.
fn stability(family: &str) -> &'static str {
    match family {
        "prober_probe_total" => "BETA",
        _ => "ALPHA",
    }
}

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes the registry for a scraper in the classic Prometheus text format (0.0.4), the only one
/// kubelet serves (its handler does not offer OpenMetrics): a counter's metadata named as its
/// samples, no `# EOF`, help texts after component-base's stability level (`[ALPHA] `) and as
/// registered (prometheus-client's added period removed). Every sample has kubelet's name: `kubelet_started_pods_total` (a
/// [`Counter`] registered as `started_pods`) and `kubelet_evictions` (an [`UnsuffixedCounter`]
/// registered as `evictions`).
pub fn encode(registry: &Registry) -> Result<(String, &'static str), std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok((to_classic_text(&text), TEXT_CONTENT_TYPE))
}

/// `/metrics` as kubelet serves it: [`encode`] of the registry, then the process collector's
/// families ([`process`], read now).
pub fn encode_with_process(registry: &Registry) -> Result<(String, &'static str), std::fmt::Error> {
    let (mut text, content_type) = encode(registry)?;
    match process::sample() {
        Some(sample) => text.push_str(&process::render(&sample)),
        None => tracing::debug!("/proc/self/stat unreadable: no process metrics"),
    }
    Ok((text, content_type))
}

/// The sample's metric name: what precedes its labels or its value.
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

fn to_classic_text(openmetrics: &str) -> String {
    let samples: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(sample_name)
        .collect();
    // Counters whose samples are `<name>_total`: the classic format names the family so too.
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|name| samples.contains(format!("{name}_total").as_str()))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        let line = renamed.as_deref().unwrap_or(line);
        match line
            .strip_prefix("# HELP ")
            .and_then(|rest| rest.split_once(' '))
        {
            Some((name, help)) => {
                // prometheus-client ends every help text with a period; kubelet's are as written.
                let help = help.strip_suffix('.').unwrap_or(help);
                out.push_str(&format!("# HELP {name} [{}] {help}", stability(name)));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_kubelet_names_in_the_classic_format() {
        let m = Metrics::default();
        m.running_pods.set(2);
        m.running_containers
            .get_or_create(&StateLabels {
                container_state: "running",
            })
            .set(3);
        m.started_pods.inc();
        let registry = m.registry();
        let (text, ct) = encode(&registry).expect("encode");
        assert!(text.contains("kubelet_running_pods 2"), "{text}");
        assert!(
            text.contains("kubelet_running_containers{container_state=\"running\"} 3"),
            "{text}"
        );
        assert_eq!(ct, TEXT_CONTENT_TYPE);
        assert!(
            text.contains("# TYPE kubelet_started_pods_total counter"),
            "{text}"
        );
        assert!(text.contains("kubelet_started_pods_total 1"), "{text}");
        assert!(text.contains("# TYPE kubelet_pod_start_duration_seconds histogram"));
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# HELP kubelet_started_pods_total [ALPHA] Cumulative number of pods started\n"
            ),
            "{text}"
        );
        assert!(!text.contains("prober_probe"), "on /metrics/probes: {text}");
    }

    #[test]
    fn probes_registry_is_kubelets_metrics_probes() {
        let m = Metrics::default();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let (text, _) = encode(&m.probes_registry()).expect("encode");
        assert!(!text.contains("kubelet_"), "{text}");
        let start: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("process_start_time_seconds");
        // This test process started before the test did, and not days before (clock ticks are
        // 1/100 s; boot time is whole seconds).
        assert!(
            start <= before + 1.0 && start > before - 86_400.0,
            "{start} vs {before}"
        );
        assert!(
            text.contains("# HELP process_start_time_seconds [ALPHA] Start time of the process since unix epoch in seconds.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_start_time_seconds gauge"),
            "{text}"
        );
    }
}
