//! What a pod's cgroup holds (kubelet's `ResourceConfigForPod`, `cm/helpers_linux.go`): cpu shares
//! from the pod's cpu requests, a CFS quota from its cpu limits and a memory limit from its memory
//! limits — the quota and memory limit only when every container (or the pod, with pod-level
//! `spec.resources`) declares one. Pure: the pod in, the numbers out.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::kuberuntime::security::{milli_cpu_to_quota, milli_cpu_to_shares};
use crate::qos::{QosClass, qos_class};
use crate::quantity::Quantity;

/// kubelet's CFS period (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;
/// kubelet's `MinShares`.
pub const MIN_SHARES: u64 = 2;

/// The settings of one cgroup; None leaves the kernel's value (no limit) alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceConfig {
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per `cpu_period`.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
}

impl ResourceConfig {
    /// cgroup v2's `cpu.weight` for these shares (runc's `ConvertCPUSharesToCgroupV2Value`).
    pub fn cpu_weight(&self) -> Option<u64> {
        self.cpu_shares.map(shares_to_weight)
    }

    /// cgroup v2's `cpu.max` (`"<quota> <period>"`, `"max <period>"`).
    pub fn cpu_max(&self) -> Option<String> {
        let period = self.cpu_period.unwrap_or(CPU_PERIOD_US);
        match self.cpu_quota {
            Some(quota) if quota > 0 => Some(format!("{quota} {period}")),
            Some(_) => Some(format!("max {period}")),
            None => None,
        }
    }

    /// The larger of two configs, field by field (a limit that is unset in either is unset): the
    /// values a pod cgroup must hold while its containers move from one to the other.
    pub fn max(&self, other: &Self) -> Self {
        fn larger<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            }
        }
        Self {
            cpu_shares: self.cpu_shares.max(other.cpu_shares),
            cpu_quota: larger(self.cpu_quota, other.cpu_quota),
            cpu_period: self.cpu_period.or(other.cpu_period),
            memory: larger(self.memory, other.memory),
        }
    }
}

/// runc's conversion of cgroup v1 cpu shares [2, 262144] to a v2 weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

fn resource(
    map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
    name: &str,
) -> Option<Quantity> {
    map.and_then(|m| m.get(name))
        .and_then(|q| Quantity::from_api(q).ok())
}

fn container_value(c: &Container, limits: bool, name: &str) -> Option<Quantity> {
    let r = c.resources.as_ref()?;
    let lim = resource(r.limits.as_ref(), name);
    if limits {
        lim
    } else {
        // A limit without a request defaults the request (API defaulting; static pods may not be).
        resource(r.requests.as_ref(), name).or(lim)
    }
}

fn amount(q: &Quantity, milli: bool) -> i64 {
    if milli { q.milli_value() } else { q.value() }
}

/// kubelet's `PodRequests`/`PodLimits` for one resource (cpu in millicores): the app containers'
/// sum (with restartable init containers), at least any init container's, plus the overhead; the
/// pod-level value when `spec.resources` sets it. Also whether every container declares it.
fn pod_total(pod: &Pod, limits: bool, name: &str) -> (i64, bool) {
    let milli = name == "cpu";
    let Some(spec) = pod.spec.as_ref() else {
        return (0, false);
    };
    let pod_level = spec.resources.as_ref().and_then(|r| {
        if limits {
            resource(r.limits.as_ref(), name)
        } else {
            resource(r.requests.as_ref(), name).or_else(|| resource(r.limits.as_ref(), name))
        }
    });
    let mut declared = true;
    let mut sum = 0i64;
    let mut init_max = 0i64;
    let mut sidecars = 0i64;
    for c in spec.init_containers.iter().flatten() {
        let value = container_value(c, limits, name);
        declared &= value.is_some();
        let v = value.as_ref().map_or(0, |q| amount(q, milli));
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars += v;
            sum += v;
        } else {
            init_max = init_max.max(sidecars + v);
        }
    }
    for c in &spec.containers {
        let value = container_value(c, limits, name);
        declared &= value.is_some();
        sum += value.as_ref().map_or(0, |q| amount(q, milli));
    }
    if let Some(q) = pod_level {
        return (amount(&q, milli), true);
    }
    let overhead = resource(spec.overhead.as_ref(), name).map_or(0, |q| amount(&q, milli));
    (sum.max(init_max) + overhead, declared)
}

/// kubelet's `ResourceConfigForPod` (cpu and memory; hugepages are not managed).
pub fn for_pod(pod: &Pod) -> ResourceConfig {
    let (cpu_requests, _) = pod_total(pod, false, "cpu");
    let (cpu_limits, cpu_declared) = pod_total(pod, true, "cpu");
    let (memory_limits, memory_declared) = pod_total(pod, true, "memory");
    let shares = u64::try_from(milli_cpu_to_shares(cpu_requests)).unwrap_or(MIN_SHARES);
    let quota = milli_cpu_to_quota(cpu_limits, CPU_PERIOD_US as i64);
    match qos_class(pod) {
        QosClass::Guaranteed => ResourceConfig {
            cpu_shares: Some(shares),
            cpu_quota: Some(quota),
            cpu_period: Some(CPU_PERIOD_US),
            memory: Some(memory_limits),
        },
        QosClass::Burstable => ResourceConfig {
            cpu_shares: Some(shares),
            cpu_quota: (cpu_declared && cpu_limits > 0).then_some(quota),
            cpu_period: (cpu_declared && cpu_limits > 0).then_some(CPU_PERIOD_US),
            memory: (memory_declared && memory_limits > 0).then_some(memory_limits),
        },
        QosClass::BestEffort => ResourceConfig {
            cpu_shares: Some(MIN_SHARES),
            ..ResourceConfig::default()
        },
    }
}

/// The pod's cpu request in millicores (for the burstable QoS cgroup's shares).
pub fn cpu_request_milli(pod: &Pod) -> i64 {
    pod_total(pod, false, "cpu").0
}

/// The `kubepods` cgroup under `enforceNodeAllocatable: [pods]`: node allocatable as kubelet
/// enforces it (capacity minus kubeReserved and systemReserved; hard eviction thresholds are not
/// subtracted, so pods can use enough to trigger eviction before the kernel's OOM killer).
pub fn for_node_allocatable(cpu_milli: i64, memory_bytes: i64) -> ResourceConfig {
    ResourceConfig {
        cpu_shares: Some(u64::try_from(milli_cpu_to_shares(cpu_milli)).unwrap_or(MIN_SHARES)),
        cpu_quota: None,
        cpu_period: None,
        memory: (memory_bytes > 0).then_some(memory_bytes),
    }
}

/// The burstable QoS cgroup's shares: its pods' cpu requests together (kubelet's
/// `setCPUCgroupConfig`); BestEffort gets the least.
pub fn burstable_shares(cpu_requests_milli: i64) -> u64 {
    u64::try_from(milli_cpu_to_shares(cpu_requests_milli)).unwrap_or(MIN_SHARES)
}
