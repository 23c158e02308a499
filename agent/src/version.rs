//! The version the agent reports as kubelet's (node info, probe user agent): a leaf module so any
//! subsystem can name it without depending on another.

/// The version this agent reports as `nodeInfo.kubeletVersion`: the Kubernetes minor whose kubelet
/// behaviour it follows, with the agent's own version as semver build metadata (as k3s does with
/// `+k3s1`). Build metadata does not take part in version comparisons, so tools that compare node
/// versions (version-skew checks, `kubectl`, kubeadm) treat it as exactly v1.33.0: the oldest API
/// level `k8s-openapi` 0.29 targets, which keeps the node within the supported skew (the kubelet
/// may be up to three minors older than the API server, never newer).
pub const KUBELET_VERSION: &str = concat!("v1.33.0+mini.", env!("CARGO_PKG_VERSION"));
