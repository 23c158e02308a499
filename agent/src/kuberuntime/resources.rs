//! A container's cpu and memory settings as the runtime applies them — the part of CRI
//! `LinuxContainerResources` an in-place resize changes — compared and reported as kubelet does
//! (`computePodResizeAction`, `convertContainerStatusResources`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use mk_cri::api;

use super::security;
use crate::quantity::{Format, Quantity};

/// kubelet's `MinShares`: cpu shares at or below it all mean "the least".
const MIN_SHARES: i64 = 2;
/// kubelet's `MinMilliCPULimit`: the least cpu limit a CFS quota can express.
const MIN_CPU_LIMIT_MILLI: i64 = 10;
const SHARES_PER_CPU: i64 = 1024;

/// The resize-relevant settings of a container in CRI terms. Zero means unset (no quota, no memory
/// limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub memory_limit: i64,
}

impl From<&api::LinuxContainerResources> for ContainerResources {
    fn from(r: &api::LinuxContainerResources) -> Self {
        Self {
            cpu_shares: r.cpu_shares,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period,
            memory_limit: r.memory_limit_in_bytes,
        }
    }
}

impl ContainerResources {
    /// What a ContainerStatus answer says is applied; `None` when the runtime reports nothing (no
    /// `resources`, or all of it zero, which no container the agent created has: shares are at least
    /// 2).
    pub fn reported(status: Option<&api::ContainerResources>) -> Option<Self> {
        let linux = status?.linux.as_ref()?;
        let r = Self::from(linux);
        (r != Self::default()).then_some(r)
    }

    /// The settings the agent applies for `container` of `pod`: the conversion used to create it.
    pub fn desired(pod: &Pod, container: &Container) -> Self {
        // The node's memory capacity only feeds the OOM score, which is not part of this view.
        Self::from(&security::container_resources(pod, container, 0))
    }

    /// The cpu request the shares stand for, in millicores (kubelet's `sharesToMilliCPU`); 0 when
    /// the shares are at the minimum or unset.
    pub fn cpu_request_milli(&self) -> i64 {
        if self.cpu_shares < MIN_SHARES {
            return 0;
        }
        // Rounded up: shares are the request × 1.024 rounded down, so this gives the request back.
        (self.cpu_shares * 1000 + SHARES_PER_CPU - 1) / SHARES_PER_CPU
    }

    /// The cpu limit the CFS quota stands for, in millicores; 0 without a quota.
    pub fn cpu_limit_milli(&self) -> i64 {
        if self.cpu_quota <= 0 || self.cpu_period <= 0 {
            return 0;
        }
        self.cpu_quota * 1000 / self.cpu_period
    }

    fn memory(&self) -> i64 {
        self.memory_limit.max(0)
    }

    /// True when `other` has another cpu request (shares) or cpu limit (quota over period).
    pub fn cpu_differs(&self, other: &Self) -> bool {
        self.cpu_shares.max(MIN_SHARES) != other.cpu_shares.max(MIN_SHARES)
            || self.cpu_limit_milli() != other.cpu_limit_milli()
    }

    /// True when `other` has another memory limit.
    pub fn memory_differs(&self, other: &Self) -> bool {
        self.memory() != other.memory()
    }

    /// True when going from `self` to `to` lowers a limit or the shares (such updates go first, so
    /// the node is never asked for the sum of old and new).
    pub fn shrinks_to(&self, to: &Self) -> bool {
        let lowers = |from: i64, to: i64| to > 0 && (from <= 0 || to < from);
        to.cpu_shares < self.cpu_shares
            || lowers(self.cpu_limit_milli(), to.cpu_limit_milli())
            || lowers(self.memory(), to.memory())
    }

    /// A running container's `status.resources`: the allocated resources, with the cpu request and
    /// limit and the memory limit as applied where those are set. As kubelet, an applied value at or
    /// below the least the runtime can hold (2 shares, a 10m quota) does not replace an allocated
    /// value at or below it either.
    pub fn to_status(&self, allocated: Option<&ResourceRequirements>) -> ResourceRequirements {
        let mut status = allocated.cloned().unwrap_or_default();
        let allocated_milli = |list: &BTreeMap<String, ApiQuantity>| {
            list.get("cpu")
                .and_then(|q| Quantity::from_api(q).ok())
                .map_or(0, |q| q.milli_value())
        };
        if let Some(limits) = status.limits.as_mut() {
            let applied = self.cpu_limit_milli();
            if applied > 0
                && (applied > MIN_CPU_LIMIT_MILLI || allocated_milli(limits) > MIN_CPU_LIMIT_MILLI)
            {
                limits.insert("cpu".into(), cpu(applied));
            }
            if self.memory() > 0 {
                limits.insert("memory".into(), bytes(self.memory()));
            }
        }
        if let Some(requests) = status.requests.as_mut() {
            let applied = self.cpu_request_milli();
            if applied > 0 && (applied > MIN_SHARES || allocated_milli(requests) > MIN_SHARES) {
                requests.insert("cpu".into(), cpu(applied));
            }
        }
        status
    }
}

/// For logs: `cpu request 300m, cpu limit 500m, memory limit 256Mi`.
impl std::fmt::Display for ContainerResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_none = |q: Option<ApiQuantity>| q.map_or_else(|| "none".to_string(), |q| q.0);
        let positive = |v: i64| (v > 0).then_some(v);
        write!(
            f,
            "cpu request {}, cpu limit {}, memory limit {}",
            or_none(positive(self.cpu_request_milli()).map(cpu)),
            or_none(positive(self.cpu_limit_milli()).map(cpu)),
            or_none(positive(self.memory()).map(bytes)),
        )
    }
}

fn cpu(milli: i64) -> ApiQuantity {
    Quantity::new_milli(milli, Format::DecimalSI).to_api()
}

fn bytes(value: i64) -> ApiQuantity {
    Quantity::new(value, Format::BinarySI).to_api()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]},
        }))
        .expect("pod")
    }

    fn desired(resources: serde_json::Value) -> ContainerResources {
        let p = pod(resources);
        let c = &p.spec.as_ref().expect("spec").containers[0];
        ContainerResources::desired(&p, c)
    }

    #[test]
    fn desired_settings_are_the_creation_conversion() {
        let r = desired(serde_json::json!({
            "requests": {"cpu": "250m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        }));
        assert_eq!(
            r,
            ContainerResources {
                cpu_shares: 256,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit: 128 << 20,
            }
        );
        assert_eq!(r.cpu_request_milli(), 250);
        assert_eq!(r.cpu_limit_milli(), 500);
        assert_eq!(
            r.to_string(),
            "cpu request 250m, cpu limit 500m, memory limit 128Mi"
        );
        let unlimited = desired(serde_json::json!({"requests": {"cpu": "1"}}));
        assert_eq!(
            unlimited.to_string(),
            "cpu request 1, cpu limit none, memory limit none"
        );
    }

    #[test]
    fn shares_give_the_request_back_for_every_millicore_value() {
        for milli in 2..5000 {
            let shares = security::milli_cpu_to_shares(milli);
            let r = ContainerResources {
                cpu_shares: shares,
                ..Default::default()
            };
            assert_eq!(r.cpu_request_milli(), milli, "{milli}m = {shares} shares");
        }
    }

    #[test]
    fn comparison_follows_kubelets_special_cases() {
        // (a, b, cpu differs, memory differs)
        let base = desired(serde_json::json!({"limits": {"cpu": "300m", "memory": "128Mi"}}));
        let table = [
            (
                serde_json::json!({"limits": {"cpu": "300m", "memory": "128Mi"}}),
                false,
                false,
            ),
            (
                serde_json::json!({"limits": {"cpu": "400m", "memory": "128Mi"}}),
                true,
                false,
            ),
            (
                serde_json::json!({"limits": {"cpu": "300m", "memory": "256Mi"}}),
                false,
                true,
            ),
            (
                serde_json::json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "300m", "memory": "128Mi"}}),
                true,
                false,
            ),
        ];
        for (resources, cpu, memory) in table {
            let other = desired(resources.clone());
            assert_eq!(base.cpu_differs(&other), cpu, "{resources}");
            assert_eq!(base.memory_differs(&other), memory, "{resources}");
        }
        // Requests at or below the minimum shares are all the same request.
        let one = desired(serde_json::json!({"requests": {"cpu": "1m"}}));
        let none = desired(serde_json::json!({}));
        assert!(!one.cpu_differs(&none));
        // Limits below the minimum quota are all the same limit.
        let tiny = desired(serde_json::json!({"limits": {"cpu": "1m"}}));
        let ten = desired(serde_json::json!({"limits": {"cpu": "10m"}}));
        assert_eq!(tiny.cpu_limit_milli(), 10);
        assert!(!tiny.cpu_differs(&ContainerResources {
            cpu_shares: tiny.cpu_shares,
            ..ten
        }));
    }

    #[test]
    fn nothing_reported_is_unknown() {
        assert_eq!(ContainerResources::reported(None), None);
        let empty = api::ContainerResources {
            linux: Some(api::LinuxContainerResources::default()),
            windows: None,
        };
        assert_eq!(ContainerResources::reported(Some(&empty)), None);
        let some = api::ContainerResources {
            linux: Some(api::LinuxContainerResources {
                cpu_shares: 2,
                ..Default::default()
            }),
            windows: None,
        };
        assert_eq!(
            ContainerResources::reported(Some(&some)).map(|r| r.cpu_shares),
            Some(2)
        );
    }

    #[test]
    fn shrinking_is_any_lower_limit_or_request() {
        let small = desired(serde_json::json!({"limits": {"cpu": "200m", "memory": "64Mi"}}));
        let big = desired(serde_json::json!({"limits": {"cpu": "400m", "memory": "128Mi"}}));
        assert!(big.shrinks_to(&small));
        assert!(!small.shrinks_to(&big));
        let unlimited = desired(serde_json::json!({"requests": {"cpu": "200m"}}));
        assert!(
            unlimited.shrinks_to(&small),
            "a new limit where there was none lowers it"
        );
        assert!(!small.shrinks_to(&small));
    }

    #[test]
    fn status_resources_are_applied_cpu_and_memory_over_the_allocation() {
        let p = pod(serde_json::json!({
            "requests": {"cpu": "300m", "memory": "64Mi", "ephemeral-storage": "1Gi"},
            "limits": {"cpu": "300m", "memory": "128Mi"},
        }));
        let allocated = p.spec.as_ref().expect("spec").containers[0]
            .resources
            .clone();
        // The runtime still runs the old settings: 100m, 1 cpu limit, 256Mi.
        let applied = ContainerResources {
            cpu_shares: 102,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            memory_limit: 256 << 20,
        };
        let status = applied.to_status(allocated.as_ref());
        let get = |list: &Option<BTreeMap<String, ApiQuantity>>, k: &str| {
            list.as_ref()
                .and_then(|l| l.get(k))
                .map(|q| q.0.clone())
                .unwrap_or_default()
        };
        assert_eq!(get(&status.requests, "cpu"), "100m");
        assert_eq!(get(&status.requests, "memory"), "64Mi", "as allocated");
        assert_eq!(get(&status.requests, "ephemeral-storage"), "1Gi");
        assert_eq!(get(&status.limits, "cpu"), "1");
        assert_eq!(get(&status.limits, "memory"), "256Mi");
        // No limits allocated: none reported, whatever the runtime holds.
        let requests_only = ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_string(),
                ApiQuantity("100m".into()),
            )])),
            ..Default::default()
        };
        assert_eq!(applied.to_status(Some(&requests_only)).limits, None);
        assert_eq!(applied.to_status(None), ResourceRequirements::default());
        // At the least the runtime can hold, the allocated value stays.
        let least = ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_string(),
                ApiQuantity("1m".into()),
            )])),
            limits: Some(BTreeMap::from([(
                "cpu".to_string(),
                ApiQuantity("5m".into()),
            )])),
            ..Default::default()
        };
        let held = ContainerResources {
            cpu_shares: 2,
            cpu_quota: 1000,
            cpu_period: 100_000,
            memory_limit: 0,
        };
        assert_eq!(held.to_status(Some(&least)), least);
    }
}
