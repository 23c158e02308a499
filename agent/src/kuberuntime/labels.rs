//! kubelet's CRI labels and annotations. Everything the agent creates carries them, so state can be
//! rebuilt from ListPodSandbox / ListContainers after a restart, and tools such as crictl show the pod.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use md5::{Digest, Md5};

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Which agent created the object. Objects without it (made by an upstream kubelet) are adopted by any
/// agent; objects with another node's name are left to that agent (several hollow agents may share one
/// runtime).
pub const NODE_NAME: &str = "io.mini-kubelet.node-name";

pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const CONTAINER_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";
pub const CONTAINER_TERMINATION_MESSAGE_POLICY: &str =
    "io.kubernetes.container.terminationMessagePolicy";
pub const POD_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
pub const CONTAINER_IS_INIT: &str = "io.mini-kubelet.container.init";

/// The name kubelet gives the sandbox's own entry in container-level views.
pub const POD_INFRA_CONTAINER_NAME: &str = "POD";

/// Labels of a pod's sandbox.
pub fn sandbox_labels(pod: &Pod, node_name: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(
        POD_NAME.into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(
        POD_NAMESPACE.into(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    labels.insert(POD_UID.into(), pod.metadata.uid.clone().unwrap_or_default());
    labels.insert(NODE_NAME.into(), node_name.into());
    labels
}

/// Labels of one of a pod's containers.
pub fn container_labels(pod: &Pod, container: &str, node_name: &str) -> HashMap<String, String> {
    HashMap::from([
        (
            POD_NAME.into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            POD_NAMESPACE.into(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        ),
        (POD_UID.into(), pod.metadata.uid.clone().unwrap_or_default()),
        (CONTAINER_NAME.into(), container.into()),
        (NODE_NAME.into(), node_name.into()),
    ])
}

fn hash_of(container: &Container) -> String {
    let mut hasher = Md5::new();
    hasher.update(serde_json::to_vec(container).unwrap_or_default());
    hex::encode(&hasher.finalize()[..8])
}

/// A hash of the container's spec without its resources and their resize policy, which an in-place
/// resize changes without a restart; a running container whose hash differs is restarted.
pub fn container_hash(container: &Container) -> String {
    let mut hashed = container.clone();
    hashed.resources = None;
    hashed.resize_policy = None;
    hash_of(&hashed)
}

/// True when a container's hash annotation is that of `container`: its hash, or the one agents
/// before in-place resize recorded (of the whole spec, resources included), so that upgrading the
/// agent restarts nothing. A container of such an agent is restarted by its first resize.
pub fn hash_matches(hash: &str, container: &Container) -> bool {
    hash == container_hash(container) || hash == hash_of(container)
}

/// True when this agent may manage an object carrying `labels`.
pub fn owned_by(labels: &HashMap<String, String>, node_name: &str) -> bool {
    labels.contains_key(POD_UID) && labels.get(NODE_NAME).is_none_or(|n| n == node_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_by_node_label() {
        let mut labels = HashMap::from([(POD_UID.to_string(), "u".to_string())]);
        assert!(
            owned_by(&labels, "a"),
            "upstream kubelet objects are adopted"
        );
        labels.insert(NODE_NAME.into(), "a".into());
        assert!(owned_by(&labels, "a"));
        assert!(!owned_by(&labels, "b"));
        assert!(
            !owned_by(&HashMap::new(), "a"),
            "objects of no pod are not ours"
        );
    }

    #[test]
    fn hash_changes_with_the_spec() {
        let a: Container = serde_json::from_str(r#"{"name":"c","image":"x:1"}"#).expect("c");
        let b: Container = serde_json::from_str(r#"{"name":"c","image":"x:2"}"#).expect("c");
        assert_eq!(container_hash(&a), container_hash(&a.clone()));
        assert_ne!(container_hash(&a), container_hash(&b));
    }

    #[test]
    fn hash_leaves_resources_out_and_accepts_the_old_whole_spec_hash() {
        let a: Container = serde_json::from_str(r#"{"name":"c","image":"x:1"}"#).expect("c");
        let resized: Container = serde_json::from_str(
            r#"{"name":"c","image":"x:1","resources":{"limits":{"cpu":"1"}},
                "resizePolicy":[{"resourceName":"cpu","restartPolicy":"NotRequired"}]}"#,
        )
        .expect("c");
        assert_eq!(container_hash(&a), container_hash(&resized));
        // An agent before in-place resize hashed the whole spec.
        let old = hash_of(&resized);
        assert_ne!(old, container_hash(&resized));
        assert!(hash_matches(&old, &resized));
        assert!(hash_matches(&container_hash(&a), &resized));
        assert!(!hash_matches(&old, &a), "the old hash of other resources");
    }
}
