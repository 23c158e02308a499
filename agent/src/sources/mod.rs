//! Pod sources: where desired pods come from. Each source publishes its complete set of pods; the
//! agent merges the sets by UID into one desired state.

pub mod apiserver;
pub mod defaults;
pub mod file;
pub mod manifest;
pub mod merge;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

/// Annotation naming the source a pod came from (`file`, `api`), as kubelet sets it.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation holding the hash that identifies a static pod's manifest content.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation recording when the agent first saw the pod.
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
/// Annotation kubelet puts on mirror pods.
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The complete set of pods one source wants on this node, keyed by UID.
#[derive(Debug, Clone, Default)]
pub struct PodSet {
    pub pods: BTreeMap<String, Arc<Pod>>,
    /// False until the source has completed its first full listing; orphan clean-up waits for it so a
    /// restarting agent does not kill pods it simply has not read yet.
    pub synced: bool,
}

/// The UID of a pod, or an empty string for a pod that has none.
pub fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// `namespace/name`, for logs.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// True for a pod that came from a static manifest.
pub fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|s| s != "api")
}
