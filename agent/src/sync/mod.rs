//! Pod sync: the pure decision of what to do for a pod ([`actions::compute`]) and nothing else. The
//! I/O around it lives in the pod workers.

pub mod actions;

pub use actions::{
    ContainerStart, KillContainer, PodActions, PodFailure, ProbeFailure, SyncInputs, Waiting,
    compute, compute_with, deadline_remaining,
};
