//! Graceful node shutdown, as kubelet's node shutdown manager (`pkg/kubelet/nodeshutdown`) does it.
//!
//! Upstream the trigger is logind's `PrepareForShutdown` signal, with an inhibitor lock delaying the
//! shutdown; this agent has no logind to ask, so the trigger is SIGTERM (what systemd sends the
//! agent's unit when the machine goes down), and only when `shutdownGracePeriod` (or
//! `shutdownGracePeriodByPodPriority`) is set. Then:
//!
//! 1. the node is shutting down ([`ShutdownStatus`]): its Ready condition turns False with
//!    kubelet's `node is shutting down` (the node module pushes it at once), and new pods are
//!    rejected (`NodeShutdown`, `Pod was rejected as the node is shutting down.`);
//! 2. the node's pods stop group by group, lowest priority first ([`plan`]): each pod with the
//!    group's seconds or its own `terminationGracePeriodSeconds` if shorter, through the pod
//!    workers' [`crate::pod_workers::PodKiller`]; its status becomes Failed, reason `Terminated`,
//!    message `Pod was terminated in response to imminent node shutdown.`, with the
//!    `DisruptionTarget` condition. A group waits for its pods or its seconds, whichever comes
//!    first ([`manager`]);
//! 3. pods still stopping when their group's seconds ran out may finish within the rest of the
//!    budget; when joined to a cluster, the agent then waits (within the budget, at least 2 s)
//!    until the API server shows the node NotReady and the node's pods in a terminal phase, and
//!    exits (exit code 0).
//!
//! SIGTERM again during the sequence (or SIGINT) stops the agent at once (`main.rs`); kubelet has
//! no such case.
//!
//! The start and end times go to `kubelet_graceful_shutdown_start_time_seconds` /
//! `kubelet_graceful_shutdown_end_time_seconds` and to kubelet's `graceful_node_shutdown_state`
//! file in the root directory ([`state_file`]), from which the gauges are restored at the next start.

pub mod manager;
pub mod plan;
pub mod state_file;

#[cfg(test)]
mod tests;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;

use crate::admission::Rejection;
use crate::config::KubeletConfiguration;

pub use manager::{ManagerOptions, ShutdownManager};

/// The status reason of a pod stopped for the node's shutdown (kubelet's `nodeShutdownReason`).
pub const NODE_SHUTDOWN_REASON: &str = "Terminated";
/// ...and its message (kubelet's `nodeShutdownMessage`).
pub const NODE_SHUTDOWN_MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
/// The reason of a pod rejected while the node shuts down (`nodeShutdownNotAdmittedReason`).
pub const NOT_ADMITTED_REASON: &str = "NodeShutdown";
/// ...and its message (`nodeShutdownNotAdmittedMessage`).
pub const NOT_ADMITTED_MESSAGE: &str = "Pod was rejected as the node is shutting down.";
/// Why the node is not ready while it shuts down (the error of kubelet's `ShutdownStatus`, which
/// the Ready condition's message carries).
pub const NODE_NOT_READY_MESSAGE: &str = "node is shutting down";

/// True when `config` asks for graceful node shutdown (`shutdownGracePeriod` > 0 or priority
/// bands), so SIGTERM starts the shutdown sequence instead of leaving the pods running.
pub fn enabled(config: &KubeletConfiguration) -> bool {
    !plan::bands(config).is_empty()
}

/// Whether the node is shutting down, for the parts of the agent that behave differently then
/// (admission, the node's Ready condition). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownStatus {
    rx: watch::Receiver<bool>,
}

/// Flips [`ShutdownStatus`]: held by the shutdown manager.
#[derive(Debug)]
pub struct ShutdownSwitch {
    tx: watch::Sender<bool>,
}

/// A switch and the status it flips.
pub fn channel() -> (ShutdownSwitch, ShutdownStatus) {
    let (tx, rx) = watch::channel(false);
    (ShutdownSwitch { tx }, ShutdownStatus { rx })
}

impl ShutdownSwitch {
    /// The node is shutting down from now on (it does not come back: the agent exits after).
    pub fn begin(&self) {
        self.tx.send_replace(true);
    }
}

impl ShutdownStatus {
    /// A status that never turns (graceful node shutdown off, tests).
    pub fn never() -> Self {
        let (_tx, rx) = watch::channel(false);
        Self { rx }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.rx.borrow()
    }

    /// kubelet's `ShutdownStatus()`: the reason the node is not ready, while it shuts down.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        self.is_shutting_down().then_some(NODE_NOT_READY_MESSAGE)
    }

    /// kubelet's shutdown admit handler: every new pod is rejected while the node shuts down.
    pub fn admit(&self) -> Result<(), Rejection> {
        if self.is_shutting_down() {
            return Err(Rejection {
                reason: NOT_ADMITTED_REASON.into(),
                message: NOT_ADMITTED_MESSAGE.into(),
            });
        }
        Ok(())
    }

    /// Returns once the status changed since last seen; never when nothing can change it any more.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// kubelet's graceful shutdown gauges (seconds since the epoch, 0 when unknown).
#[derive(Debug, Clone, Default)]
pub struct ShutdownMetrics {
    pub start_time: Gauge<f64, AtomicU64>,
    pub end_time: Gauge<f64, AtomicU64>,
}

impl ShutdownMetrics {
    /// Registers `graceful_shutdown_start_time_seconds` and `graceful_shutdown_end_time_seconds`
    /// in `registry` (the `kubelet` one).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "graceful_shutdown_start_time_seconds",
            "Last graceful shutdown start time since unix epoch in seconds",
            self.start_time.clone(),
        );
        registry.register(
            "graceful_shutdown_end_time_seconds",
            "Last graceful shutdown end time since unix epoch in seconds",
            self.end_time.clone(),
        );
    }
}
