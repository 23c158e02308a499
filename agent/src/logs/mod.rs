//! Container log rotation, as kubelet's `containerLogManager` (`pkg/kubelet/logs`):
//! `containerLogMaxSize`, `containerLogMaxFiles`, `containerLogMonitorInterval`,
//! `containerLogMaxWorkers`.
//!
//! * [`rotation`]: the pure decision (file names, size, time → remove / compress / rename);
//! * `files`: the blocking file operations (gzip with `flate2`);
//! * [`container_log_manager`]: the loop over the runtime's running containers through CRI
//!   (ListContainers, ContainerStatus, ReopenContainerLog).
//!
//! Readers of the logs (`/containerLogs`, [`crate::server::logs`]) follow a file across its
//! rotation: they read the renamed file to its end before they open the new one.

pub mod container_log_manager;
mod files;
pub mod rotation;

#[cfg(test)]
mod tests;

pub use container_log_manager::{ContainerLogManager, Outcome, RotationError, Round, spawn};
pub use files::{FileError, remove_all as remove_container_log};
pub use rotation::{Decision, LogRotatePolicy, Plan, decide};
