//! QoS classes and the pod cgroup layout kubelet uses with the cgroupfs driver:
//! `/kubepods/pod<uid>` (Guaranteed), `/kubepods/burstable/pod<uid>`, `/kubepods/besteffort/pod<uid>`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

fn parse(q: &Quantity) -> Option<crate::quantity::Quantity> {
    crate::quantity::Quantity::from_api(q)
        .ok()
        .filter(|q| !q.is_zero())
}

fn resources(c: &Container) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let r = c.resources.clone().unwrap_or_default();
    (r.requests.unwrap_or_default(), r.limits.unwrap_or_default())
}

/// kubelet's `GetPodQOS` for cpu and memory.
pub fn qos_class(pod: &Pod) -> QosClass {
    if let Some(class) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        match class {
            "Guaranteed" => return QosClass::Guaranteed,
            "Burstable" => return QosClass::Burstable,
            "BestEffort" => return QosClass::BestEffort,
            _ => {}
        }
    }
    let Some(spec) = pod.spec.as_ref() else {
        return QosClass::BestEffort;
    };
    if let Some(class) = pod_level_qos(spec.resources.as_ref()) {
        return class;
    }
    let mut any_set = false;
    let mut guaranteed = true;
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        let (mut requests, limits) = resources(c);
        // A limit without a request defaults the request to the limit.
        for (k, v) in &limits {
            requests.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for resource in ["cpu", "memory"] {
            let req = requests.get(resource).and_then(parse);
            let lim = limits.get(resource).and_then(parse);
            if req.is_some() || lim.is_some() {
                any_set = true;
            }
            match (req, lim) {
                (Some(r), Some(l)) if r == l => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any_set, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
    }
}

/// kubelet's `ComputePodQOS` when pod-level resources (`spec.resources`) set cpu or memory: the
/// class comes from them alone; Guaranteed needs cpu and memory limits equal to the requests.
fn pod_level_qos(
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
) -> Option<QosClass> {
    let r = resources?;
    let pick = |map: Option<&BTreeMap<String, Quantity>>| -> BTreeMap<&'static str, crate::quantity::Quantity> {
        ["cpu", "memory"]
            .into_iter()
            .filter_map(|name| Some((name, map?.get(name).and_then(parse)?)))
            .collect()
    };
    let limits = pick(r.limits.as_ref());
    let mut requests = pick(r.requests.as_ref());
    if requests.is_empty() && limits.is_empty() {
        return None;
    }
    // A limit without a request defaults the request (API defaulting; static pods may lack it).
    for (name, q) in &limits {
        requests.entry(name).or_insert(*q);
    }
    let guaranteed =
        limits.len() == 2 && requests.iter().all(|(name, q)| limits.get(name) == Some(q));
    Some(if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]}
        }))
        .expect("pod")
    }

    #[test]
    fn qos_table() {
        let table = [
            (serde_json::json!({}), QosClass::BestEffort),
            (
                serde_json::json!({"requests": {"cpu": "100m"}}),
                QosClass::Burstable,
            ),
            (
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}}),
                QosClass::Guaranteed,
            ),
            (
                serde_json::json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                QosClass::Guaranteed,
            ),
            (
                serde_json::json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                QosClass::Burstable,
            ),
            (
                serde_json::json!({"limits": {"memory": "1Gi"}}),
                QosClass::Burstable,
            ),
            (
                serde_json::json!({"requests": {"cpu": "0"}}),
                QosClass::BestEffort,
            ),
        ];
        for (resources, expected) in table {
            assert_eq!(qos_class(&pod(resources.clone())), expected, "{resources}");
        }
    }

    #[test]
    fn pod_level_resources_decide_the_class_when_set() {
        let with = |pod_resources: serde_json::Value, container: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "uid": "u1"},
                "spec": {"resources": pod_resources,
                    "containers": [{"name": "c", "image": "i", "resources": container}]}
            }))
            .expect("pod")
        };
        let table = [
            // Containers without resources, a pod-level memory limit: Burstable.
            (
                serde_json::json!({"limits": {"memory": "32Mi"}}),
                serde_json::json!({}),
                QosClass::Burstable,
            ),
            // Pod-level cpu and memory limits (requests default to them): Guaranteed, whatever
            // the containers ask.
            (
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}}),
                serde_json::json!({"requests": {"cpu": "100m"}}),
                QosClass::Guaranteed,
            ),
            (
                serde_json::json!({"requests": {"cpu": "500m"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                serde_json::json!({}),
                QosClass::Burstable,
            ),
            // Only other resources at pod level: the containers decide.
            (
                serde_json::json!({"limits": {"hugepages-2Mi": "2Mi"}}),
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}}),
                QosClass::Guaranteed,
            ),
        ];
        for (pod_resources, container, expected) in table {
            assert_eq!(
                qos_class(&with(pod_resources.clone(), container)),
                expected,
                "{pod_resources}"
            );
        }
    }
}
