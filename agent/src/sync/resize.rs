//! The in-place resize decision for one running container (kubelet's `computePodResizeAction`): the
//! resources the pod spec allocates against those applied to the container, and the container's
//! resize policy choosing between an update through CRI and a restart.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::kuberuntime::observe::ObservedContainer;
use crate::kuberuntime::resources::ContainerResources;

/// A running container whose cpu and memory settings are changed in place (CRI
/// `UpdateContainerResources`), without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUpdate {
    /// The CRI id of the running instance.
    pub id: String,
    pub name: String,
    /// What is applied now.
    pub from: ContainerResources,
    /// What the allocated resources convert to (as at creation).
    pub to: ContainerResources,
}

/// What a running container needs for its resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resize {
    /// Nothing: it runs with what is allocated, or what it runs with is not known.
    Keep,
    Update(ResourceUpdate),
    /// The resize policy of a changed resource is `RestartContainer`.
    Restart,
}

/// The container's `resizePolicy` for `resource` (`cpu`, `memory`); `NotRequired` by default.
fn restart_required(container: &Container, resource: &str) -> bool {
    container
        .resize_policy
        .iter()
        .flatten()
        .find(|p| p.resource_name == resource)
        .is_some_and(|p| p.restart_policy == "RestartContainer")
}

/// Decides what `running`, an instance of `container`, needs so that it runs with the resources
/// `pod` gives it. An instance whose applied resources are unknown is left alone, as kubelet does
/// when the runtime reports none.
pub fn decide(pod: &Pod, container: &Container, running: &ObservedContainer) -> Resize {
    let Some(applied) = running.resources else {
        return Resize::Keep;
    };
    let desired = ContainerResources::desired(pod, container);
    let cpu = applied.cpu_differs(&desired);
    let memory = applied.memory_differs(&desired);
    if !cpu && !memory {
        return Resize::Keep;
    }
    if (cpu && restart_required(container, "cpu"))
        || (memory && restart_required(container, "memory"))
    {
        return Resize::Restart;
    }
    Resize::Update(ResourceUpdate {
        id: running.id.clone(),
        name: container.name.clone(),
        from: applied,
        to: desired,
    })
}

/// The kill reason of a restart a resize policy asks for (kubelet's wording).
pub fn restart_reason(name: &str) -> String {
    format!("Container {name} resize requires restart")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: serde_json::Value, policy: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{
                "name": "c", "image": "i", "resources": resources, "resizePolicy": policy,
            }]},
        }))
        .expect("pod")
    }

    fn running(applied: Option<ContainerResources>) -> ObservedContainer {
        ObservedContainer {
            id: "c-0".into(),
            name: "c".into(),
            resources: applied,
            ..Default::default()
        }
    }

    fn applied(resources: serde_json::Value) -> ContainerResources {
        let p = pod(resources, serde_json::json!([]));
        ContainerResources::desired(&p, &p.spec.as_ref().expect("spec").containers[0])
    }

    #[test]
    fn policy_table() {
        let old = applied(serde_json::json!({"limits": {"cpu": "100m", "memory": "64Mi"}}));
        let cpu_up = serde_json::json!({"limits": {"cpu": "300m", "memory": "64Mi"}});
        let mem_up = serde_json::json!({"limits": {"cpu": "100m", "memory": "128Mi"}});
        let both = serde_json::json!({"limits": {"cpu": "300m", "memory": "128Mi"}});
        let same = serde_json::json!({"limits": {"cpu": "100m", "memory": "64Mi"}});
        let restart =
            |r: &str| serde_json::json!([{"resourceName": r, "restartPolicy": "RestartContainer"}]);
        let not_required = serde_json::json!([
            {"resourceName": "cpu", "restartPolicy": "NotRequired"},
            {"resourceName": "memory", "restartPolicy": "NotRequired"},
        ]);
        // (resources, policy, expected: "keep" | "update" | "restart")
        let table = [
            (&same, serde_json::json!([]), "keep"),
            (&same, restart("cpu"), "keep"),
            (&cpu_up, serde_json::json!([]), "update"),
            (&cpu_up, not_required.clone(), "update"),
            (&cpu_up, restart("memory"), "update"),
            (&cpu_up, restart("cpu"), "restart"),
            (&mem_up, restart("cpu"), "update"),
            (&mem_up, restart("memory"), "restart"),
            (&both, restart("memory"), "restart"),
            (&both, not_required, "update"),
        ];
        for (resources, policy, expected) in table {
            let p = pod(resources.clone(), policy.clone());
            let c = &p.spec.as_ref().expect("spec").containers[0];
            let got = match decide(&p, c, &running(Some(old))) {
                Resize::Keep => "keep",
                Resize::Update(u) => {
                    assert_eq!((u.id.as_str(), u.from), ("c-0", old));
                    assert_eq!(u.to, ContainerResources::desired(&p, c));
                    "update"
                }
                Resize::Restart => "restart",
            };
            assert_eq!(got, expected, "{resources} with policy {policy}");
        }
    }

    #[test]
    fn unknown_applied_resources_are_left_alone() {
        let p = pod(
            serde_json::json!({"limits": {"cpu": "300m"}}),
            serde_json::json!([]),
        );
        let c = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(decide(&p, c, &running(None)), Resize::Keep);
    }
}
