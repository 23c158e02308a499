//! Container and sandbox garbage collection, as kubelet's `containerGC`
//! (`pkg/kubelet/container/container_gc.go`, `pkg/kubelet/kuberuntime/kuberuntime_gc.go`):
//! every minute, dead containers beyond `--maximum-dead-containers-per-container` per container
//! (and `--maximum-dead-containers` per node) older than `--minimum-container-ttl-duration`,
//! inactive sandboxes older than a pod's newest one, and what removed pods left behind: their
//! dead containers and sandboxes, pod directories under `<root-dir>/pods/<uid>` and log
//! directories under `podLogsDir`.
//!
//! * [`policy`]: the pure decision (listing × pod states × policy → what to remove, in order);
//! * [`manager`]: the loop through CRI (ListContainers, ListPodSandbox, ContainerStatus,
//!   RemoveContainer, RemovePodSandbox), the volume manager's teardown and the log directories,
//!   and [`ContainerGc::collect`] for the eviction manager's disk reclaim.
//!
//! It shares the node with the pod workers, which stop and remove every pod nobody wants: it
//! never touches a pod a worker may still act on, nor another node's objects on a shared runtime.

pub mod manager;
pub mod policy;

#[cfg(test)]
mod tests;

pub use manager::{
    CONTAINER_GC_PERIOD, ContainerGc, GcError, GcSources, PERIOD_ENV, Round, period_from_env, spawn,
};
pub use policy::{GcPolicy, Mode, PodState, Reason};
