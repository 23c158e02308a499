//! CRI v1 client for mini-kubelet.
//!
//! Every container runtime (containerd, cri-o, the built-in Docker adapter, the fake runtime) is reached
//! through [`CriClient`]: one tonic channel over a unix socket carrying both the RuntimeService and the
//! ImageService, with kubelet's per-call timeout, transparent reconnection after the runtime restarts,
//! typed errors and kubelet's `kubelet_runtime_operations_*` metrics.

mod client;
mod deadline;
mod endpoint;
mod error;
mod metrics;
pub mod server;

pub use client::{CONTAINER_EVENTS, CriClient, DEFAULT_TIMEOUT};
pub use endpoint::{Endpoint, parse_endpoint};
pub use error::CriError;
pub use metrics::CriMetrics;

/// The CRI v1 messages, re-exported so callers need no direct `k8s-cri` dependency.
pub use k8s_cri::v1 as api;
