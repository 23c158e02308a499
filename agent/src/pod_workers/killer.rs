//! The handle other subsystems (the eviction manager, the node shutdown manager) use to have the
//! node stop a pod that is still wanted: a request goes to the sync loop, which owns the pod
//! workers, and the caller waits until the pod's worker has terminated it.

use tokio::sync::{mpsc, oneshot, watch};

use super::{KillPod, Phase};

/// A kill request on its way to the sync loop.
#[derive(Debug)]
pub struct KillRequest {
    pub uid: String,
    pub kill: KillPod,
    /// The worker's phase, or `None` when no worker runs the pod.
    pub reply: oneshot::Sender<Option<watch::Receiver<Phase>>>,
}

/// How a kill request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillOutcome {
    /// Nothing of the pod runs any more.
    Terminated,
    /// No worker runs the pod (it finished, or was never started).
    NotRunning,
    /// The agent is stopping; the request was not carried out.
    AgentStopping,
}

/// Sends kill requests to the sync loop (cheap to clone).
#[derive(Debug, Clone)]
pub struct PodKiller {
    tx: mpsc::UnboundedSender<KillRequest>,
}

impl PodKiller {
    /// The handle and the receiver the sync loop serves.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<KillRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Has the pod stopped and failed as `kill` says; returns once its worker has terminated it
    /// (callers bound the wait with a timeout of their own).
    pub async fn kill(&self, uid: &str, kill: KillPod) -> KillOutcome {
        let (reply, answer) = oneshot::channel();
        let request = KillRequest {
            uid: uid.to_string(),
            kill,
            reply,
        };
        if self.tx.send(request).is_err() {
            return KillOutcome::AgentStopping;
        }
        let Ok(phase) = answer.await else {
            return KillOutcome::AgentStopping;
        };
        let Some(mut phase) = phase else {
            return KillOutcome::NotRunning;
        };
        let ended = phase.wait_for(|p| *p >= Phase::Terminated).await.is_err();
        // The worker's task ended: it finished the pod, or the agent stops.
        if ended && *phase.borrow() < Phase::Terminated {
            return KillOutcome::AgentStopping;
        }
        KillOutcome::Terminated
    }
}
