//! `/metrics/cadvisor` (read-only and kubelet ports): the container metrics kubelet serves from its
//! embedded cAdvisor, with cAdvisor's names, help texts and labels (`container`, `id` = cgroup,
//! `image`, `name` = runtime ID, `namespace`, `pod`, and `interface` on network series), which
//! dashboards and recording rules (kube-prometheus' `container_cpu_usage_seconds_total{image!=""}`, …) select on. Rendered
//! from the stats provider's full Summary: the node's root cgroup (`id="/"`), each pod's cgroup
//! (`container=""`), each running container, and each pod's network on its sandbox, as cAdvisor
//! reports them on a containerd node. Each sample carries its stat's time, as cAdvisor's do.
//!
//! Not rendered (cAdvisor has them; the Summary does not carry them): per-CPU and throttling
//! figures, memory cache/swap/failures, block I/O, `container_spec_*`, filesystem device series,
//! `machine_*`.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};

use super::ServerState;
use super::resource_metrics::{epoch_seconds, escape, millis};
use crate::stats::identities::{Identities, Identity};
use crate::stats::types::{CpuStats, MemoryStats, NetworkStats, Summary};

/// The labels of one series, in cAdvisor's order.
#[derive(Debug, Clone, Default)]
struct Labels<'a> {
    container: &'a str,
    id: &'a str,
    image: &'a str,
    name: &'a str,
    namespace: &'a str,
    pod: &'a str,
}

impl Labels<'_> {
    fn render(&self, interface: Option<&str>) -> String {
        let mut out = format!(
            "{{container=\"{}\",id=\"{}\",image=\"{}\"",
            escape(self.container),
            escape(self.id),
            escape(self.image)
        );
        if let Some(interface) = interface {
            let _ = write!(out, ",interface=\"{}\"", escape(interface));
        }
        let _ = write!(
            out,
            ",name=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(self.name),
            escape(self.namespace),
            escape(self.pod)
        );
        out
    }
}

/// One cgroup's figures and who it is.
struct Series<'a> {
    labels: Labels<'a>,
    cpu: Option<&'a CpuStats>,
    memory: Option<&'a MemoryStats>,
    network: Option<&'a NetworkStats>,
    start_seconds: Option<(f64, i128)>,
}

/// A container or sandbox the runtime did not list (any more): labels left empty.
static UNKNOWN: Identity = Identity {
    id: String::new(),
    image: String::new(),
    cgroup: String::new(),
};

/// The series of a Summary: the node's root cgroup, then per pod its cgroup, its sandbox's
/// network and its containers.
fn series<'a>(summary: &'a Summary, ids: &'a Identities) -> Vec<Series<'a>> {
    let node = &summary.node;
    let mut all = vec![Series {
        labels: Labels {
            id: "/",
            ..Labels::default()
        },
        cpu: node.cpu.as_ref(),
        memory: node.memory.as_ref(),
        network: node.network.as_ref(),
        start_seconds: None,
    }];
    for pod in &summary.pods {
        let (namespace, name, uid) = (
            pod.pod_ref.namespace.as_str(),
            pod.pod_ref.name.as_str(),
            pod.pod_ref.uid.as_str(),
        );
        let pod_cgroup = ids.pods.get(uid).map(String::as_str).unwrap_or_default();
        all.push(Series {
            labels: Labels {
                id: pod_cgroup,
                namespace,
                pod: name,
                ..Labels::default()
            },
            cpu: pod.cpu.as_ref(),
            memory: pod.memory.as_ref(),
            network: None,
            start_seconds: None,
        });
        let sandbox = ids.sandboxes.get(uid).unwrap_or(&UNKNOWN);
        all.push(Series {
            labels: Labels {
                id: if sandbox.cgroup.is_empty() {
                    pod_cgroup
                } else {
                    &sandbox.cgroup
                },
                name: &sandbox.id,
                namespace,
                pod: name,
                ..Labels::default()
            },
            cpu: None,
            memory: None,
            network: pod.network.as_ref(),
            start_seconds: None,
        });
        for container in &pod.containers {
            let identity = ids.container(uid, &container.name).unwrap_or(&UNKNOWN);
            let start = &container.start_time;
            all.push(Series {
                labels: Labels {
                    container: &container.name,
                    id: &identity.cgroup,
                    image: &identity.image,
                    name: &identity.id,
                    namespace,
                    pod: name,
                },
                cpu: container.cpu.as_ref(),
                memory: container.memory.as_ref(),
                network: None,
                start_seconds: (start.0.as_nanosecond() > 0)
                    .then(|| (epoch_seconds(start), millis(start))),
            });
        }
    }
    all
}

/// Serves [`render`] of the stats provider's full Summary.
pub async fn handler(State(state): State<ServerState>) -> Response {
    match state.stats.summary_with_identities().await {
        Ok((summary, ids)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::TEXT_CONTENT_TYPE,
            )],
            render(&summary, &ids),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(uri = "/metrics/cadvisor", error = %e, "HTTP InternalServerError serving");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to get the container stats: {e}"),
            )
                .into_response()
        }
    }
}

/// The text exposition (format 0.0.4) of `summary`, labelled with `ids`.
pub fn render(summary: &Summary, ids: &Identities) -> String {
    let all = series(summary, ids);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64, i128)>| {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value, ts) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {ts}");
        }
    };
    let per_series = |value: &dyn Fn(&Series) -> Option<(f64, i128)>| -> Vec<(String, f64, i128)> {
        all.iter()
            .filter_map(|s| value(s).map(|(v, t)| (s.labels.render(None), v, t)))
            .collect()
    };
    let memory = |pick: fn(&MemoryStats) -> Option<u64>| {
        move |s: &Series| {
            let m = s.memory?;
            Some((pick(m)? as f64, millis(&m.time)))
        }
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed in seconds.",
        per_series(&|s| {
            let cpu = s.cpu?;
            Some((cpu.usage_core_nano_seconds? as f64 / 1e9, millis(&cpu.time)))
        }),
    );
    family(
        "container_memory_usage_bytes",
        "gauge",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        per_series(&memory(|m| m.usage_bytes)),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set in bytes.",
        per_series(&memory(|m| m.working_set_bytes)),
    );
    family(
        "container_memory_rss",
        "gauge",
        "Size of RSS in bytes.",
        per_series(&memory(|m| m.rss_bytes)),
    );
    let network = |pick: fn(&crate::stats::types::InterfaceStats) -> Option<u64>| {
        all.iter()
            .flat_map(|s| {
                s.network.into_iter().flat_map(move |net| {
                    net.interfaces.iter().filter_map(move |i| {
                        Some((
                            s.labels.render(Some(&i.name)),
                            pick(i)? as f64,
                            millis(&net.time),
                        ))
                    })
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        "container_network_receive_bytes_total",
        "counter",
        "Cumulative count of bytes received",
        network(|i| i.rx_bytes),
    );
    family(
        "container_network_receive_errors_total",
        "counter",
        "Cumulative count of errors encountered while receiving",
        network(|i| i.rx_errors),
    );
    family(
        "container_network_transmit_bytes_total",
        "counter",
        "Cumulative count of bytes transmitted",
        network(|i| i.tx_bytes),
    );
    family(
        "container_network_transmit_errors_total",
        "counter",
        "Cumulative count of errors encountered while transmitting",
        network(|i| i.tx_errors),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds.",
        per_series(&|s| s.start_seconds),
    );
    out
}

/// A Summary and its identities with every series and figure `render` has (the metrics-list test).
#[cfg(test)]
pub(crate) fn fixture() -> (Summary, Identities) {
    (tests::summary(), tests::identities())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn summary() -> Summary {
        let cpu =
            |total: u64, t: &str| serde_json::json!({"time": t, "usageCoreNanoSeconds": total});
        let memory = |ws: u64, t: &str| serde_json::json!({"time": t, "usageBytes": ws + 50, "workingSetBytes": ws, "rssBytes": ws / 2});
        let t = "2023-11-14T22:13:20.123Z";
        serde_json::from_value(serde_json::json!({
            "node": {
                "nodeName": "n", "startTime": "2023-11-14T22:00:00Z",
                "cpu": cpu(2_500_000_000, t), "memory": memory(1024, t),
                "network": {"time": t, "name": "eth0", "interfaces": [{"name": "eth0", "rxBytes": 7, "txBytes": 9, "rxErrors": 0, "txErrors": 1}]},
            },
            "pods": [{
                "podRef": {"name": "web", "namespace": "default", "uid": "u"},
                "startTime": "2023-11-14T22:00:00Z",
                "cpu": cpu(2_000_000_000, t), "memory": memory(150, t),
                "network": {"time": t, "name": "eth0", "interfaces": [{"name": "eth0", "rxBytes": 3, "txBytes": 4}]},
                "containers": [
                    {"name": "app", "startTime": "2023-11-14T22:13:10.25Z", "cpu": cpu(1_500_000_000, t), "memory": memory(100, t)},
                    {"name": "gone", "startTime": "2023-11-14T22:13:10Z"},
                ]
            }]
        }))
        .expect("summary")
    }

    pub(super) fn identities() -> Identities {
        let pod = "/kubepods/burstable/podu";
        Identities {
            containers: [(
                ("u".to_owned(), "app".to_owned()),
                Identity {
                    id: "c1".into(),
                    image: "docker.io/library/nginx:1".into(),
                    cgroup: format!("{pod}/c1"),
                },
            )]
            .into(),
            sandboxes: [(
                "u".to_owned(),
                Identity {
                    id: "s1".into(),
                    image: String::new(),
                    cgroup: format!("{pod}/s1"),
                },
            )]
            .into(),
            pods: [("u".to_owned(), pod.to_owned())].into(),
        }
    }

    #[test]
    fn cadvisor_names_labels_and_timestamps() {
        let text = render(&summary(), &identities());
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter\n",
            "container_cpu_usage_seconds_total{container=\"\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"} 2.5 1700000000123\n",
            "container_cpu_usage_seconds_total{container=\"\",id=\"/kubepods/burstable/podu\",image=\"\",name=\"\",namespace=\"default\",pod=\"web\"} 2 1700000000123\n",
            "container_cpu_usage_seconds_total{container=\"app\",id=\"/kubepods/burstable/podu/c1\",image=\"docker.io/library/nginx:1\",name=\"c1\",namespace=\"default\",pod=\"web\"} 1.5 1700000000123\n",
            "container_memory_working_set_bytes{container=\"app\",id=\"/kubepods/burstable/podu/c1\",image=\"docker.io/library/nginx:1\",name=\"c1\",namespace=\"default\",pod=\"web\"} 100 1700000000123\n",
            "container_memory_usage_bytes{container=\"app\",id=\"/kubepods/burstable/podu/c1\",image=\"docker.io/library/nginx:1\",name=\"c1\",namespace=\"default\",pod=\"web\"} 150 1700000000123\n",
            "container_memory_rss{container=\"\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"} 512 1700000000123\n",
            "container_network_receive_bytes_total{container=\"\",id=\"/\",image=\"\",interface=\"eth0\",name=\"\",namespace=\"\",pod=\"\"} 7 1700000000123\n",
            "container_network_transmit_errors_total{container=\"\",id=\"/\",image=\"\",interface=\"eth0\",name=\"\",namespace=\"\",pod=\"\"} 1 1700000000123\n",
            "container_network_receive_bytes_total{container=\"\",id=\"/kubepods/burstable/podu/s1\",image=\"\",interface=\"eth0\",name=\"s1\",namespace=\"default\",pod=\"web\"} 3 1700000000123\n",
            "container_start_time_seconds{container=\"app\",id=\"/kubepods/burstable/podu/c1\",image=\"docker.io/library/nginx:1\",name=\"c1\",namespace=\"default\",pod=\"web\"} 1699999990.25 1699999990250\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // A container the runtime no longer lists keeps its series, with empty runtime labels;
        // a figure the Summary lacks has no sample.
        assert!(text.contains(
            "container_start_time_seconds{container=\"gone\",id=\"\",image=\"\",name=\"\",namespace=\"default\",pod=\"web\"} 1699999990 1699999990000\n"
        ), "{text}");
        assert!(!text.contains(
            "container=\"gone\",id=\"\",image=\"\",name=\"\",namespace=\"default\",pod=\"web\"} 0"
        ));
        // The pod's receive errors are not in the Summary: no sample for them.
        assert!(
            !text
                .contains("receive_errors_total{container=\"\",id=\"/kubepods/burstable/podu/s1\"")
        );
    }
}
