//! Pod admission, as kubelet's admit handlers: first the eviction manager's
//! ([`crate::eviction::admit`]: no BestEffort pod under memory pressure, only critical pods under
//! disk or PID pressure), then the predicate admit handler: a pod that does not fit the node is never
//! started; it is failed with kubelet's reason (`OutOfpods`, `OutOfcpu`, `OutOfmemory`,
//! `NodeAffinity`, `TaintToleration`) and message. Like kubelet, only `NoExecute` taints are checked
//! (`NoSchedule` is the scheduler's business), and static pods skip the taint check. A running pod's
//! in-place resize is admitted by the same resource fit, or left pending (`Infeasible`, `Deferred`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodStatus, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use crate::quantity::Quantity;
use crate::sources::is_static;

/// What admission needs to know of the node.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Allocatable resources; a resource absent here is not checked.
    pub allocatable: BTreeMap<String, ApiQuantity>,
    /// The eviction manager's pressure conditions.
    pub pressure: crate::eviction::Pressure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

impl Rejection {
    /// The status kubelet gives a rejected pod.
    pub fn status(&self) -> PodStatus {
        PodStatus {
            phase: Some("Failed".into()),
            reason: Some(self.reason.clone()),
            message: Some(format!("Pod was rejected: {}", self.message)),
            ..Default::default()
        }
    }
}

fn quantity(q: Option<&ApiQuantity>, milli: bool) -> i64 {
    q.and_then(|q| Quantity::from_api(q).ok())
        .map(|q| if milli { q.milli_value() } else { q.value() })
        .unwrap_or(0)
}

/// A pod's request of one resource: the larger of its app containers' sum and any init container's
/// request, plus the pod overhead (kubelet's `PodRequests`). cpu in millicores, others in units.
pub fn pod_request(pod: &Pod, resource: &str) -> i64 {
    let milli = resource == "cpu";
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let request = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        let requested = r
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(resource));
        // An API pod is defaulted (request = limit); a static pod may not be.
        let limit = r
            .and_then(|r| r.limits.as_ref())
            .and_then(|m| m.get(resource));
        quantity(requested.or(limit), milli)
    };
    let app: i64 = spec.containers.iter().map(request).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(request)
        .max()
        .unwrap_or(0);
    let overhead = quantity(spec.overhead.as_ref().and_then(|o| o.get(resource)), milli);
    app.max(init) + overhead
}

fn insufficient(resource: &str, requested: i64, used: i64, capacity: i64) -> Rejection {
    Rejection {
        reason: format!("OutOf{resource}"),
        message: format!(
            "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeView) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key)))
        && fields.iter().all(|r| {
            let name = node.name.clone();
            r.key == "metadata.name" && requirement_matches(r, Some(&name))
        })
}

/// nodeSelector and required node affinity against the node's labels.
pub fn matches_node(pod: &Pod, node: &NodeView) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok =
        required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)));
    selector_ok && affinity_ok
}

/// kubelet's `ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

const FITTED: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// kubelet's resource fit: the pod's requests next to those of `others` within the node's
/// allocatable.
fn fits(pod: &Pod, node: &NodeView, others: &[&Pod]) -> Result<(), Rejection> {
    for resource in FITTED {
        let requested = pod_request(pod, resource);
        if requested == 0 {
            continue;
        }
        let Some(capacity) = node.allocatable.get(resource) else {
            continue;
        };
        let capacity = quantity(Some(capacity), resource == "cpu");
        let used: i64 = others.iter().map(|p| pod_request(p, resource)).sum();
        if requested + used > capacity {
            return Err(insufficient(resource, requested, used, capacity));
        }
    }
    Ok(())
}

/// Why a resize was not admitted: kubelet's `PodResizePending` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingReason {
    /// The resized pod cannot fit the node even alone.
    Infeasible,
    /// It does not fit next to the other pods now; it may once they leave or shrink.
    Deferred,
}

impl PendingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PendingReason::Infeasible => "Infeasible",
            PendingReason::Deferred => "Deferred",
        }
    }
}

/// A resize left pending, with kubelet's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizeRejection {
    pub reason: PendingReason,
    pub message: String,
}

/// Decides whether a running pod may have the resources its spec now asks for (kubelet's resize
/// admission): `resized` is the pod with those resources, `others` the other admitted, still
/// running pods with their allocated resources.
pub fn admit_resize(
    resized: &Pod,
    node: &NodeView,
    others: &[&Pod],
) -> Result<(), ResizeRejection> {
    for resource in FITTED {
        let requested = pod_request(resized, resource);
        let Some(capacity) = node.allocatable.get(resource) else {
            continue;
        };
        let capacity = quantity(Some(capacity), resource == "cpu");
        if requested > capacity {
            return Err(ResizeRejection {
                reason: PendingReason::Infeasible,
                message: format!(
                    "Node didn't have enough capacity: {resource}, requested: {requested}, capacity: {capacity}"
                ),
            });
        }
    }
    fits(resized, node, others).map_err(|r| ResizeRejection {
        reason: PendingReason::Deferred,
        message: r.message,
    })
}

/// Decides whether `pod` may run next to `others` (the admitted, still running pods).
pub fn admit(pod: &Pod, node: &NodeView, others: &[&Pod]) -> Result<(), Rejection> {
    // kubelet's first admit handler is the eviction manager's.
    crate::eviction::admit::admit(pod, node.pressure)?;
    let unsupported = crate::unsupported::check(pod);
    if !unsupported.fatal.is_empty() {
        return Err(Rejection {
            reason: "UnsupportedPodSpec".into(),
            message: format!(
                "mini-kubelet cannot honour {}",
                unsupported.fatal.join("; ")
            ),
        });
    }
    if let Some(capacity) = node.allocatable.get("pods") {
        let capacity = quantity(Some(capacity), false);
        let used = i64::try_from(others.len()).unwrap_or(i64::MAX);
        if used + 1 > capacity {
            return Err(insufficient("pods", 1, used, capacity));
        }
    }
    fits(pod, node, others)?;
    if !matches_node(pod, node) {
        return Err(Rejection {
            reason: "NodeAffinity".into(),
            message:
                "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
                    .into(),
        });
    }
    if !is_static(pod) {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let untolerated = node
            .taints
            .iter()
            .filter(|t| t.effect == "NoExecute")
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)));
        if untolerated {
            return Err(Rejection {
                reason: "TaintToleration".into(),
                message: "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = serde_json::json!([{"name": "c", "image": "i:1"}]);
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "uid": "u", "annotations": {"kubernetes.io/config.source": "api"}}, "spec": spec})).expect("pod")
    }

    fn node() -> NodeView {
        NodeView {
            name: "n1".into(),
            labels: BTreeMap::from([
                ("disk".to_string(), "ssd".to_string()),
                ("zone".to_string(), "a".to_string()),
            ]),
            taints: vec![],
            allocatable: BTreeMap::from([
                ("pods".to_string(), ApiQuantity("2".into())),
                ("cpu".to_string(), ApiQuantity("1".into())),
                ("memory".to_string(), ApiQuantity("1Gi".into())),
            ]),
            ..Default::default()
        }
    }

    fn reason(r: Result<(), Rejection>) -> String {
        r.err()
            .map(|r| r.reason)
            .unwrap_or_else(|| "admitted".into())
    }

    #[test]
    fn resource_table() {
        let small = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]}),
        );
        let big_cpu = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "600m"}}}]}),
        );
        let big_mem = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "2Gi"}}}]}),
        );
        let none = pod(serde_json::json!({}));
        let n = node();
        assert_eq!(reason(admit(&small, &n, &[])), "admitted");
        assert_eq!(reason(admit(&big_cpu, &n, &[&small])), "OutOfcpu");
        assert_eq!(reason(admit(&big_mem, &n, &[])), "OutOfmemory");
        assert_eq!(reason(admit(&none, &n, &[&none, &none])), "OutOfpods");
        let err = admit(&big_cpu, &n, &[&small]).expect_err("rejected");
        assert_eq!(
            err.message,
            "Node didn't have enough resource: cpu, requested: 600, used: 500, capacity: 1000"
        );
        assert_eq!(
            err.status().message.as_deref(),
            Some(
                "Pod was rejected: Node didn't have enough resource: cpu, requested: 600, used: 500, capacity: 1000"
            )
        );
        assert_eq!(err.status().phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn resize_is_admitted_deferred_or_infeasible() {
        let cpu = |request: &str| {
            pod(
                serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": request}}}]}),
            )
        };
        let n = node();
        let other = cpu("400m");
        assert_eq!(admit_resize(&cpu("600m"), &n, &[&other]), Ok(()));
        assert_eq!(
            admit_resize(&cpu("700m"), &n, &[&other]),
            Err(ResizeRejection {
                reason: PendingReason::Deferred,
                message: "Node didn't have enough resource: cpu, requested: 700, used: 400, capacity: 1000".into(),
            })
        );
        assert_eq!(
            admit_resize(&cpu("1500m"), &n, &[]),
            Err(ResizeRejection {
                reason: PendingReason::Infeasible,
                message: "Node didn't have enough capacity: cpu, requested: 1500, capacity: 1000"
                    .into(),
            })
        );
        // The pod count does not matter: the pod is already running.
        let none = pod(serde_json::json!({}));
        assert_eq!(
            admit_resize(&cpu("100m"), &n, &[&none, &none, &none]),
            Ok(())
        );
    }

    #[test]
    fn unsupported_isolation_is_rejected() {
        let p = pod(serde_json::json!({"hostUsers": false}));
        let err = admit(&p, &node(), &[]).expect_err("rejected");
        assert_eq!(err.reason, "UnsupportedPodSpec");
        assert!(err.message.contains("spec.hostUsers"), "{}", err.message);
    }

    #[test]
    fn init_containers_count_by_their_maximum() {
        let p = pod(serde_json::json!({
            "initContainers": [{"name": "i", "image": "i", "resources": {"requests": {"cpu": "900m"}}}],
            "containers": [{"name": "a", "image": "i", "resources": {"requests": {"cpu": "100m"}}}, {"name": "b", "image": "i", "resources": {"requests": {"cpu": "200m"}}}]
        }));
        assert_eq!(pod_request(&p, "cpu"), 900);
    }

    #[test]
    fn node_selector_and_affinity_table() {
        let n = node();
        let cases = [
            (serde_json::json!({"nodeSelector": {"disk": "ssd"}}), true),
            (serde_json::json!({"nodeSelector": {"disk": "hdd"}}), false),
            (
                serde_json::json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "gpu", "operator": "DoesNotExist"}]}
                ]}}}}),
                true,
            ),
            (
                serde_json::json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}
                ]}}}}),
                false,
            ),
            (
                serde_json::json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                ]}}}}),
                true,
            ),
        ];
        for (spec, ok) in cases {
            let r = admit(&pod(spec.clone()), &n, &[]);
            assert_eq!(r.is_ok(), ok, "{spec}");
            if !ok {
                assert_eq!(reason(r), "NodeAffinity");
            }
        }
    }

    #[test]
    fn only_untolerated_no_execute_taints_reject() {
        let mut n = node();
        n.taints = vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }];
        assert_eq!(
            reason(admit(&pod(serde_json::json!({})), &n, &[])),
            "admitted",
            "NoSchedule is the scheduler's"
        );
        n.taints.push(Taint {
            key: "evict".into(),
            value: None,
            effect: "NoExecute".into(),
            ..Default::default()
        });
        assert_eq!(
            reason(admit(&pod(serde_json::json!({})), &n, &[])),
            "TaintToleration"
        );
        let tolerant = pod(
            serde_json::json!({"tolerations": [{"key": "evict", "operator": "Exists", "effect": "NoExecute"}]}),
        );
        assert_eq!(reason(admit(&tolerant, &n, &[])), "admitted");
        let mut static_pod = pod(serde_json::json!({}));
        static_pod.metadata.annotations = Some(BTreeMap::from([(
            "kubernetes.io/config.source".to_string(),
            "file".to_string(),
        )]));
        assert_eq!(
            reason(admit(&static_pod, &n, &[])),
            "admitted",
            "static pods skip the taint check"
        );
    }
}
