//! The version the agent reports as kubelet's (node info, probe user agent): a leaf module so any
//! subsystem can name it without depending on another.

/// The version this agent reports as `nodeInfo.kubeletVersion`: a Kubernetes minor whose kubelet
/// behaviour it follows, with the agent's own version as semver build metadata (as k3s does with
/// `+k3s1`). Build metadata does not take part in version comparisons, so tools that compare node
/// versions (version-skew checks, `kubectl`, kubeadm) treat it as exactly v1.34.0. The agent is
/// built against the v1.37 API (k8s-openapi's `latest`) and follows kubelet up to it (pod-level
/// resources, beta in 1.34, included); a kubelet may be up to three minors older than its API
/// server and never newer, so v1.34 is within the supported skew of API servers v1.34 to v1.37,
/// where v1.33 was outside it for the v1.37 control plane the e2e runs against.
pub const KUBELET_VERSION: &str = concat!("v1.34.0+mini.", env!("CARGO_PKG_VERSION"));
