//! kubelet's prober metrics: `prober_probe_total` and `prober_probe_duration_seconds` (no
//! `kubelet_` prefix; kubelet serves them on `/metrics/probes`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::spec::ProbeType;

/// `result` label values of `prober_probe_total`.
pub const RESULT_SUCCESSFUL: &str = "successful";
pub const RESULT_FAILED: &str = "failed";
pub const RESULT_UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeResultLabels {
    pub probe_type: &'static str,
    pub result: &'static str,
    pub container: String,
    pub pod: String,
    pub namespace: String,
    pub pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeDurationLabels {
    pub probe_type: &'static str,
    pub container: String,
    pub pod: String,
    pub namespace: String,
}

/// The prober's metrics. Cheap to clone; clones share the values.
#[derive(Clone, Debug)]
pub struct ProbeMetrics {
    pub probe_total: Family<ProbeResultLabels, Counter>,
    pub probe_duration: Family<ProbeDurationLabels, Histogram, fn() -> Histogram>,
}

impl Default for ProbeMetrics {
    fn default() -> Self {
        Self {
            probe_total: Family::default(),
            // Prometheus' default buckets, as kubelet's histogram has no buckets of its own.
            probe_duration: Family::new_with_constructor(crate::metrics::default_buckets_histogram),
        }
    }
}

/// Who a probe is about, for the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeIdentity {
    pub probe_type: ProbeType,
    pub container: String,
    pub pod: String,
    pub namespace: String,
    pub pod_uid: String,
}

impl ProbeIdentity {
    fn result_labels(&self, result: &'static str) -> ProbeResultLabels {
        ProbeResultLabels {
            probe_type: self.probe_type.as_str(),
            result,
            container: self.container.clone(),
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            pod_uid: self.pod_uid.clone(),
        }
    }

    fn duration_labels(&self) -> ProbeDurationLabels {
        ProbeDurationLabels {
            probe_type: self.probe_type.as_str(),
            container: self.container.clone(),
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

impl ProbeMetrics {
    /// Registers both metrics in `root` under their bare names (`prober_probe_total`,
    /// `prober_probe_duration_seconds`): pass the root registry, not the `kubelet_` sub-registry.
    pub fn register(&self, root: &mut Registry) {
        root.register(
            "prober_probe",
            "Cumulative number of a liveness, readiness or startup probe for a container by result.",
            self.probe_total.clone(),
        );
        root.register(
            "prober_probe_duration_seconds",
            "Duration in seconds for a probe response.",
            self.probe_duration.clone(),
        );
    }

    /// Counts one probe run; as kubelet, the duration is observed for successful and unknown
    /// results only.
    pub(crate) fn observe(&self, who: &ProbeIdentity, result: &'static str, seconds: f64) {
        self.probe_total
            .get_or_create(&who.result_labels(result))
            .inc();
        if result != RESULT_FAILED {
            self.probe_duration
                .get_or_create(&who.duration_labels())
                .observe(seconds);
        }
    }

    /// Drops a stopped worker's series, as kubelet does.
    pub(crate) fn forget(&self, who: &ProbeIdentity) {
        for result in [RESULT_SUCCESSFUL, RESULT_FAILED, RESULT_UNKNOWN] {
            self.probe_total.remove(&who.result_labels(result));
        }
        self.probe_duration.remove(&who.duration_labels());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_under_kubelets_names() {
        let metrics = ProbeMetrics::default();
        let who = ProbeIdentity {
            probe_type: ProbeType::Liveness,
            container: "app".into(),
            pod: "web".into(),
            namespace: "default".into(),
            pod_uid: "u1".into(),
        };
        metrics.observe(&who, RESULT_SUCCESSFUL, 0.02);
        metrics.observe(&who, RESULT_FAILED, 0.5);
        metrics.observe(&who, RESULT_FAILED, 0.5);
        let mut root = Registry::default();
        metrics.register(&mut root);
        let (text, _) = crate::metrics::encode(&root).expect("encode");
        assert!(text.contains("# TYPE prober_probe_total counter"), "{text}");
        assert!(
            text.contains(
                "prober_probe_total{probe_type=\"Liveness\",result=\"failed\",container=\"app\",pod=\"web\",namespace=\"default\",pod_uid=\"u1\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "prober_probe_duration_seconds_count{probe_type=\"Liveness\",container=\"app\",pod=\"web\",namespace=\"default\"} 1"
            ),
            "{text}"
        );
        metrics.forget(&who);
        let (text, _) = crate::metrics::encode(&root).expect("encode");
        assert!(!text.contains("pod=\"web\""), "{text}");
    }
}
