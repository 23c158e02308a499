//! kubelet's eviction admit handler (`managerImpl.Admit`): while the node has a pressure condition,
//! critical pods are admitted; under memory pressure alone, pods that are not BestEffort (and
//! BestEffort pods tolerating the `node.kubernetes.io/memory-pressure` NoSchedule taint) are
//! admitted; every other pod is refused with reason `Evicted` and `The node had condition:
//! [MemoryPressure]. `.

use k8s_openapi::api::core::v1::{Pod, Taint};

use super::REASON;
use super::thresholds::{Condition, Pressure};
use crate::admission::{Rejection, tolerates};
use crate::qos::{QosClass, qos_class};
use crate::sources::{CONFIG_MIRROR_ANNOTATION, is_static};

/// `scheduling.SystemCriticalPriority`: priorities at or above it are system-critical.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// The taint the node lifecycle controller puts on a node with MemoryPressure.
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";

/// kubelet's `IsCriticalPod`: a static pod, a mirror pod, or a system-critical priority.
pub fn is_critical(pod: &Pod) -> bool {
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION));
    let priority = pod.spec.as_ref().and_then(|s| s.priority);
    is_static(pod) || mirror || priority.is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// kubelet's `nodeConditionMessageFmt` with Go's formatting of the condition list.
pub fn condition_message(conditions: &[Condition]) -> String {
    let names: Vec<&str> = conditions.iter().map(|c| c.as_str()).collect();
    format!("The node had condition: [{}]. ", names.join(" "))
}

/// Admits `pod` under the node's `pressure`, or refuses it as kubelet's eviction manager does.
pub fn admit(pod: &Pod, pressure: Pressure) -> Result<(), Rejection> {
    let conditions = pressure.conditions();
    if conditions.is_empty() || is_critical(pod) {
        return Ok(());
    }
    if conditions == [Condition::MemoryPressure] {
        if qos_class(pod) != QosClass::BestEffort {
            return Ok(());
        }
        let taint = Taint {
            key: TAINT_MEMORY_PRESSURE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref());
        if tolerations
            .unwrap_or_default()
            .iter()
            .any(|t| tolerates(t, &taint))
        {
            return Ok(());
        }
    }
    tracing::info!(pod = %crate::sources::pod_key(pod), podUID = crate::sources::pod_uid(pod), conditions = ?conditions, "failed to admit pod to node");
    Err(Rejection {
        reason: REASON.into(),
        message: condition_message(&conditions),
    })
}
