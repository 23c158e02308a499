//! How pods map onto CRI objects: the labels that let a restarted agent rebuild its view, the observed
//! state read back from the runtime, the sandbox and container configs built from a pod spec, and the
//! container resources a resize compares.

pub mod container_config;
pub mod labels;
pub mod lifecycle;
pub mod observe;
pub mod pod_files;
pub mod resources;
pub mod sandbox_config;
pub mod security;
