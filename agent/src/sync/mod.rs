//! Pod sync: the pure decision of what to do for a pod ([`actions::compute`]), with the in-place
//! resize decision for a running container ([`resize::decide`]), and nothing else. The I/O around it
//! lives in the pod workers.

pub mod actions;
pub mod resize;

pub use actions::{
    ContainerStart, KillContainer, PodActions, PodFailure, ProbeFailure, SyncInputs, Waiting,
    compute, compute_with, deadline_remaining,
};
pub use resize::ResourceUpdate;
