//! Which pods stop in which group, with which grace period (pure): kubelet's `migrateConfig` and
//! `groupByPriority` (`pkg/kubelet/nodeshutdown/nodeshutdown_manager.go`).
//!
//! The configuration becomes priority bands sorted from low to high: `shutdownGracePeriodByPodPriority`
//! as given, or else `shutdownGracePeriod` split into a band at priority 0 (what is left after the
//! critical pods' share) and one at 2000000000 (`shutdownGracePeriodCriticalPods`). A pod goes to
//! the band of the highest priority at or below its own (`spec.priority`, 0 when unset; below the
//! lowest band: the lowest). As in kubelet, only the numeric priority counts: a static pod whose
//! manifest names a priority class but sets no `priority` is in the lowest band.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::config::{KubeletConfiguration, ShutdownGracePeriodByPodPriority};

/// kubelet's `scheduling.DefaultPriorityWhenNoDefaultClassExists`.
pub const DEFAULT_PRIORITY: i32 = 0;
/// kubelet's `scheduling.SystemCriticalPriority`: the lowest priority of critical pods.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// The priority bands of `config`, sorted by priority (low to high); empty when graceful node
/// shutdown is off.
pub fn bands(config: &KubeletConfiguration) -> Vec<ShutdownGracePeriodByPodPriority> {
    let mut bands = if config.shutdown_grace_period_by_pod_priority.is_empty()
        || !config.graceful_node_shutdown_based_on_pod_priority()
    {
        migrate_config(
            config.shutdown_grace_period,
            config.shutdown_grace_period_critical_pods,
        )
    } else {
        config.shutdown_grace_period_by_pod_priority.clone()
    };
    if !config.graceful_node_shutdown() {
        bands.clear();
    }
    bands.sort_by_key(|b| b.priority);
    bands
}

/// kubelet's `migrateConfig`: `shutdownGracePeriod` and `shutdownGracePeriodCriticalPods` as two
/// bands (whole seconds, truncated); none when the period is zero or smaller than the critical
/// pods' share.
pub fn migrate_config(
    period: Duration,
    critical: Duration,
) -> Vec<ShutdownGracePeriodByPodPriority> {
    if period.is_zero() {
        return Vec::new();
    }
    let Some(regular) = period.checked_sub(critical) else {
        return Vec::new();
    };
    let seconds = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    vec![
        ShutdownGracePeriodByPodPriority {
            priority: DEFAULT_PRIORITY,
            shutdown_grace_period_seconds: seconds(regular),
        },
        ShutdownGracePeriodByPodPriority {
            priority: SYSTEM_CRITICAL_PRIORITY,
            shutdown_grace_period_seconds: seconds(period - regular),
        },
    ]
}

/// The whole shutdown budget: every band's seconds (kubelet's `periodRequested`, the inhibit delay
/// it asks logind for).
pub fn total_budget(bands: &[ShutdownGracePeriodByPodPriority]) -> Duration {
    let seconds: i64 = bands
        .iter()
        .map(|b| b.shutdown_grace_period_seconds.max(0))
        .fold(0, i64::saturating_add);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// A pod to stop, and the seconds it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct PodShutdown {
    pub pod: Arc<Pod>,
    /// The band's seconds, or the pod's own `terminationGracePeriodSeconds` when that is shorter.
    pub grace_seconds: i64,
}

/// The pods of one band, stopped together; the band waits for them at most `budget`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub priority: i32,
    pub budget_seconds: i64,
    pub pods: Vec<PodShutdown>,
}

impl Group {
    /// How long the manager waits for the group's pods before it moves on.
    pub fn budget(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.budget_seconds).unwrap_or(0))
    }
}

/// A pod's `spec.priority`, 0 when unset.
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// kubelet's `groupByPriority`: one group per band (in band order, empty ones included), each pod in
/// the band of the highest priority at or below its own.
pub fn group_by_priority(
    bands: &[ShutdownGracePeriodByPodPriority],
    pods: impl IntoIterator<Item = Arc<Pod>>,
) -> Vec<Group> {
    let mut groups: Vec<Group> = bands
        .iter()
        .map(|b| Group {
            priority: b.priority,
            budget_seconds: b.shutdown_grace_period_seconds,
            pods: Vec::new(),
        })
        .collect();
    if groups.is_empty() {
        return groups;
    }
    for pod in pods {
        let priority = priority(&pod);
        // The first band at or above the pod's priority...
        let mut index = groups.partition_point(|g| g.priority < priority);
        // ...above the highest band: the highest; between two bands: the lower one.
        if index == groups.len() {
            index = groups.len() - 1;
        } else if index > 0 && groups[index].priority > priority {
            index -= 1;
        }
        let group = &mut groups[index];
        let own = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        let grace_seconds = match own {
            Some(own) if own <= group.budget_seconds => own,
            _ => group.budget_seconds,
        };
        group.pods.push(PodShutdown { pod, grace_seconds });
    }
    groups
}
