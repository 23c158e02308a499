use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation_type: &'static str,
}

fn runtime_histogram() -> Histogram {
    // kubelet: metrics.ExponentialBuckets(.005, 2.5, 14)
    Histogram::new(exponential_buckets(0.005, 2.5, 14))
}

/// kubelet's runtime operation metrics, labelled by `operation_type` (`run_podsandbox`, `pull_image`, ...).
#[derive(Clone)]
pub struct CriMetrics {
    operations: Family<OperationLabels, Counter>,
    errors: Family<OperationLabels, Counter>,
    durations: Family<OperationLabels, Histogram, fn() -> Histogram>,
}

impl Default for CriMetrics {
    fn default() -> Self {
        Self {
            operations: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(runtime_histogram),
        }
    }
}

impl CriMetrics {
    /// Registers the families under kubelet's names in a registry whose prefix is `kubelet`.
    pub fn register(&self, kubelet_registry: &mut Registry) {
        kubelet_registry.register(
            "runtime_operations",
            "Cumulative number of runtime operations by operation type.",
            self.operations.clone(),
        );
        kubelet_registry.register(
            "runtime_operations_errors",
            "Cumulative number of runtime operation errors by operation type.",
            self.errors.clone(),
        );
        kubelet_registry.register(
            "runtime_operations_duration_seconds",
            "Duration in seconds of runtime operations. Broken down by operation type.",
            self.durations.clone(),
        );
    }

    pub(crate) fn observe(&self, operation_type: &'static str, elapsed: Duration, failed: bool) {
        let labels = OperationLabels { operation_type };
        self.operations.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// Number of calls recorded for one operation (for tests and benchmarks).
    pub fn operation_count(&self, operation_type: &'static str) -> u64 {
        self.operations
            .get_or_create(&OperationLabels { operation_type })
            .get()
    }

    /// Number of failed calls recorded for one operation.
    pub fn error_count(&self, operation_type: &'static str) -> u64 {
        self.errors
            .get_or_create(&OperationLabels { operation_type })
            .get()
    }
}
