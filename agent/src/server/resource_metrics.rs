//! `/metrics/resource`: the kubelet's resource metrics, what metrics-server scrapes for
//! `kubectl top` and the Horizontal Pod Autoscaler — node, pod and container CPU time and memory
//! working set, with the sample time, in the Prometheus text format and kubelet's metric names.
//! As kubelet's resource metrics collector, it renders the CPU-and-memory Summary of the stats
//! provider (the same figures `/stats/summary?only_cpu_and_memory=true` gives).

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ServerState;

use crate::stats::types::{CpuStats, MemoryStats, Summary};

pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn nanos(t: &Time) -> i128 {
    t.0.as_nanosecond()
}

/// Seconds since the epoch, whole seconds and the fraction apart: exact where a plain division of
/// the nanoseconds is not.
pub(super) fn epoch_seconds(t: &Time) -> f64 {
    let ns = nanos(t);
    (ns / 1_000_000_000) as f64 + (ns % 1_000_000_000) as f64 / 1e9
}

pub(super) fn millis(t: &Time) -> i128 {
    nanos(t) / 1_000_000
}

fn cpu_sample(cpu: Option<&CpuStats>) -> Option<(f64, &Time)> {
    let cpu = cpu?;
    Some((cpu.usage_core_nano_seconds? as f64 / 1e9, &cpu.time))
}

fn memory_sample(memory: Option<&MemoryStats>) -> Option<(f64, &Time)> {
    let memory = memory?;
    Some((memory.working_set_bytes? as f64, &memory.time))
}

/// Serves [`render`] of the stats provider's CPU-and-memory Summary.
pub async fn handler(State(state): State<ServerState>) -> Response {
    let summary = match state.stats.summary(true).await {
        Ok(summary) => Some(summary),
        Err(e) => {
            tracing::warn!(error = %e, "resource metrics: stats unavailable");
            None
        }
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::TEXT_CONTENT_TYPE,
        )],
        render(summary.as_ref(), summary.is_none()),
    )
        .into_response()
}

/// The text exposition (format 0.0.4), as the kubelet writes it; `scrape_error` when the summary
/// could not be had (then only `scrape_error 1`).
pub fn render(summary: Option<&Summary>, scrape_error: bool) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64, i128)>| {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value, ts) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {ts}");
        }
    };
    if let Some(summary) = summary {
        let pod_labels = |ns: &str, pod: &str| {
            format!("{{namespace=\"{}\",pod=\"{}\"}}", escape(ns), escape(pod))
        };
        let container_labels = |ns: &str, pod: &str, container: &str| {
            format!(
                "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
                escape(container),
                escape(ns),
                escape(pod)
            )
        };
        let containers: Vec<(String, &crate::stats::types::ContainerStats)> = summary
            .pods
            .iter()
            .flat_map(|p| {
                p.containers.iter().map(move |c| {
                    let labels = container_labels(&p.pod_ref.namespace, &p.pod_ref.name, &c.name);
                    (labels, c)
                })
            })
            .collect();
        family(
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the container in core-seconds",
            containers
                .iter()
                .filter_map(|(l, c)| {
                    let (v, t) = cpu_sample(c.cpu.as_ref())?;
                    Some((l.clone(), v, millis(t)))
                })
                .collect(),
        );
        family(
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set of the container in bytes",
            containers
                .iter()
                .filter_map(|(l, c)| {
                    let (v, t) = memory_sample(c.memory.as_ref())?;
                    Some((l.clone(), v, millis(t)))
                })
                .collect(),
        );
        // Stamped with the start time itself, as kubelet does.
        family(
            "container_start_time_seconds",
            "gauge",
            "Start time of the container since unix epoch in seconds",
            containers
                .iter()
                .filter(|(_, c)| nanos(&c.start_time) > 0)
                .map(|(l, c)| {
                    (
                        l.clone(),
                        epoch_seconds(&c.start_time),
                        millis(&c.start_time),
                    )
                })
                .collect(),
        );
        let node = &summary.node;
        family(
            "node_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the node in core-seconds",
            cpu_sample(node.cpu.as_ref())
                .map(|(v, t)| (String::new(), v, millis(t)))
                .into_iter()
                .collect(),
        );
        family(
            "node_memory_working_set_bytes",
            "gauge",
            "Current working set of the node in bytes",
            memory_sample(node.memory.as_ref())
                .map(|(v, t)| (String::new(), v, millis(t)))
                .into_iter()
                .collect(),
        );
        family(
            "pod_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the pod in core-seconds",
            summary
                .pods
                .iter()
                .filter_map(|p| {
                    let (v, t) = cpu_sample(p.cpu.as_ref())?;
                    Some((
                        pod_labels(&p.pod_ref.namespace, &p.pod_ref.name),
                        v,
                        millis(t),
                    ))
                })
                .collect(),
        );
        family(
            "pod_memory_working_set_bytes",
            "gauge",
            "Current working set of the pod in bytes",
            summary
                .pods
                .iter()
                .filter_map(|p| {
                    let (v, t) = memory_sample(p.memory.as_ref())?;
                    Some((
                        pod_labels(&p.pod_ref.namespace, &p.pod_ref.name),
                        v,
                        millis(t),
                    ))
                })
                .collect(),
        );
    }
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

    fn at(ns: i128) -> Time {
        Time(jiff::Timestamp::from_nanosecond(ns).expect("timestamp"))
    }

    fn cpu(seconds_ns: u64, ns: i128) -> Option<CpuStats> {
        Some(CpuStats {
            time: at(ns),
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(seconds_ns),
        })
    }

    fn memory(ws: u64, ns: i128) -> Option<MemoryStats> {
        Some(MemoryStats {
            time: at(ns),
            available_bytes: None,
            usage_bytes: None,
            working_set_bytes: Some(ws),
            rss_bytes: None,
            page_faults: None,
            major_page_faults: None,
        })
    }

    #[test]
    fn kubelet_names_labels_and_timestamps_from_the_summary() {
        let summary: Summary = serde_json::from_value(serde_json::json!({
            "node": {"nodeName": "n", "startTime": "2023-11-14T22:00:00Z"},
            "pods": [{
                "podRef": {"name": "web", "namespace": "default", "uid": "u"},
                "startTime": "2023-11-14T22:00:00Z",
                "containers": [
                    {"name": "app", "startTime": "2023-11-14T22:00:00Z"},
                ]
            }]
        }))
        .expect("summary");
        let mut summary = summary;
        let t = 1_700_000_000_123_000_000;
        summary.node.cpu = cpu(2_500_000_000, 1_700_000_000_500_000_000);
        summary.node.memory = memory(1024, 1_700_000_000_500_000_000);
        let pod = &mut summary.pods[0];
        pod.cpu = cpu(2_000_000_000, t);
        pod.memory = memory(150, t);
        pod.containers[0].cpu = cpu(1_500_000_000, t);
        pod.containers[0].memory = memory(100, t);
        pod.containers[0].start_time = at(1_699_999_990_250_000_000);
        let text = render(Some(&summary), false);
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1.5 1700000000123\n"
        ), "{text}");
        assert!(text.contains(
            "container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 100 1700000000123\n"
        ));
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
    fn a_failed_summary_is_a_scrape_error_alone() {
        assert_eq!(
            render(None, true),
            "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE scrape_error gauge\nscrape_error 1\n"
        );
    }
}
