//! The eviction manager, as kubelet's `pkg/kubelet/eviction`: every monitoring period it observes
//! the node's eviction signals, decides the node's pressure conditions (the one place they are
//! decided: the node status reports them through a [`PressureView`]), and while a threshold is met
//! reclaims node-level resources, then evicts one pod and waits for it to be cleaned up.
//!
//! * [`thresholds`]: signals, `evictionHard` / `evictionSoft` / grace periods / minimum reclaims,
//!   and the pure threshold and condition bookkeeping;
//! * [`signals`]: observations of the signals, and each pod's usage, from a stats summary;
//! * [`ranking`]: the order pods are evicted in (pure);
//! * [`admit`]: kubelet's eviction admit handler (no BestEffort pod under memory pressure, no
//!   pod but critical ones under disk or PID pressure);
//! * [`message`]: kubelet's eviction message;
//! * [`manager`]: the loop, behind two seams: [`manager::StatsSource`] (the node's and pods'
//!   usage) and [`manager::NodeReclaim`] (unused containers and images);
//! * [`sources`]: those seams on a real node (the stats provider, container and image GC).

pub mod admit;
pub mod manager;
pub mod message;
pub mod ranking;
pub mod signals;
pub mod sources;
pub mod thresholds;

#[cfg(test)]
mod tests;

pub use manager::{
    ActivePods, EvictionConfig, EvictionManager, EvictionSources, MONITORING_PERIOD,
    MONITORING_PERIOD_ENV,
};

use tokio::sync::watch;

pub use thresholds::{
    Condition, EvictionThresholds, Pressure, Resource, Signal, Threshold, ThresholdError,
    ThresholdValue,
};

/// kubelet's `Reason` for evicted pods and refused admissions.
pub const REASON: &str = "Evicted";

/// The node's pressure conditions as the eviction manager last decided them. Cheap to clone; every
/// clone sees the latest decision.
#[derive(Debug, Clone)]
pub struct PressureView {
    rx: watch::Receiver<Pressure>,
}

impl PressureView {
    /// A view that never reports pressure (no eviction manager runs).
    pub fn none() -> Self {
        let (_tx, rx) = watch::channel(Pressure::default());
        Self { rx }
    }

    /// The sender the eviction manager publishes through, and the view of it.
    pub fn channel() -> (watch::Sender<Pressure>, Self) {
        let (tx, rx) = watch::channel(Pressure::default());
        (tx, Self { rx })
    }

    pub fn current(&self) -> Pressure {
        *self.rx.borrow()
    }

    /// kubelet's `IsUnderMemoryPressure`.
    pub fn is_under_memory_pressure(&self) -> bool {
        self.rx.borrow().memory
    }

    /// kubelet's `IsUnderDiskPressure`.
    pub fn is_under_disk_pressure(&self) -> bool {
        self.rx.borrow().disk
    }

    /// kubelet's `IsUnderPIDPressure`.
    pub fn is_under_pid_pressure(&self) -> bool {
        self.rx.borrow().pid
    }

    /// A receiver notified at every change.
    pub fn subscribe(&self) -> watch::Receiver<Pressure> {
        self.rx.clone()
    }
}
