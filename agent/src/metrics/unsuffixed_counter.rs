//! A counter served under its registered name, for kubelet's counters whose names do not end in
//! `_total` (`kubelet_evictions`, `kubelet_evented_pleg_connection_success_count`).
//!
//! prometheus-client's [`Counter`] writes its sample as `<name>_total` (OpenMetrics' rule), so a
//! counter registered as `evictions` would be scraped as `kubelet_evictions_total` where kubelet's
//! Prometheus text has `kubelet_evictions`. This type keeps the `counter` type in the `# TYPE` line
//! and writes the sample as the encoder writes a gauge's: the family's name, its labels, the value.
//! Counters whose kubelet names end in `_total` stay plain [`Counter`]s registered without the suffix.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A monotonic counter whose sample carries no `_total` suffix. Cheap to clone; clones share the
/// value.
#[derive(Clone, Debug, Default)]
pub struct UnsuffixedCounter(Counter);

impl UnsuffixedCounter {
    /// Adds one; returns the value before.
    pub fn inc(&self) -> u64 {
        self.0.inc()
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for UnsuffixedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for UnsuffixedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The gauge path writes `<prefix>_<name>{labels} <value>`: no suffix.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::EvictionLabels;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    fn registry_with_evictions() -> (Registry, Family<EvictionLabels, UnsuffixedCounter>) {
        let evictions: Family<EvictionLabels, UnsuffixedCounter> = Family::default();
        let mut root = Registry::default();
        root.sub_registry_with_prefix("kubelet").register(
            "evictions",
            "Cumulative number of pod evictions by eviction signal",
            evictions.clone(),
        );
        (root, evictions)
    }

    #[test]
    fn served_as_a_counter_under_its_own_name() {
        let (registry, evictions) = registry_with_evictions();
        evictions
            .get_or_create(&EvictionLabels {
                eviction_signal: "memory.available",
            })
            .inc();
        let expected = "# HELP kubelet_evictions [ALPHA] Cumulative number of pod evictions by eviction signal\n\
                        # TYPE kubelet_evictions counter\n\
                        kubelet_evictions{eviction_signal=\"memory.available\"} 1\n";
        let (text, _) = crate::metrics::encode(&registry).expect("encode");
        assert_eq!(text, expected);
    }

    #[test]
    fn counts_and_serves_an_unlabelled_counter() {
        let c = UnsuffixedCounter::default();
        assert_eq!(c.inc(), 0);
        c.inc();
        assert_eq!(c.get(), 2);
        let mut root = Registry::default();
        root.sub_registry_with_prefix("kubelet").register(
            "evented_pleg_connection_success_count",
            "The number of times a streaming client was obtained to receive CRI Events",
            c.clone(),
        );
        let (text, _) = crate::metrics::encode(&root).expect("encode");
        assert!(
            text.contains("# TYPE kubelet_evented_pleg_connection_success_count counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nkubelet_evented_pleg_connection_success_count 2\n"),
            "{text}"
        );
        assert!(!text.contains("_total"), "{text}");
    }
}
