//! `GetContainerEvents`, when a test turns it on ([`FakeRuntime::enable_container_events`]): after
//! every access to the fake's state, the objects whose state changed since the last access are
//! published as CRI container events (sandboxes too, as containerd reports them), each carrying the
//! pod's sandbox metadata. As with every other state change, auto-exits are noticed lazily: an
//! auto-exiting container's stop event is sent when something next looks at the fake.

use std::collections::HashMap;

use k8s_cri::v1 as api;
use tokio::sync::broadcast;

use crate::state::{State, now_ns};

/// Events kept for a subscriber that lags behind (then it sees an error and must relist).
const EVENT_BUFFER: usize = 4096;

/// What the feed last saw of one object.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    sandbox_id: String,
    metadata: api::PodSandboxMetadata,
    /// 0 created, 1 started, 2 stopped.
    stage: u8,
}

/// The event feed: subscribers and the last state seen of every object.
#[derive(Debug)]
pub(crate) struct EventFeed {
    sender: broadcast::Sender<api::ContainerEventResponse>,
    seen: HashMap<String, Seen>,
}

impl EventFeed {
    pub(crate) fn new(state: &State) -> Self {
        Self {
            sender: broadcast::channel(EVENT_BUFFER).0,
            seen: current(state),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<api::ContainerEventResponse> {
        self.sender.subscribe()
    }

    /// Sends an event for every step each object took since the last call.
    pub(crate) fn publish(&mut self, state: &State) {
        let now = current(state);
        let at = now_ns();
        let send = |id: &str, seen: &Seen, kind: api::ContainerEventType| {
            // No subscriber is no error: the event is simply not wanted.
            let _ = self.sender.send(api::ContainerEventResponse {
                container_id: id.to_string(),
                container_event_type: kind as i32,
                created_at: at,
                pod_sandbox_status: Some(api::PodSandboxStatus {
                    id: seen.sandbox_id.clone(),
                    metadata: Some(seen.metadata.clone()),
                    ..Default::default()
                }),
                containers_statuses: Vec::new(),
            });
        };
        for (id, seen) in &now {
            let from = match self.seen.get(id) {
                Some(old) => old.stage + 1,
                None => 0,
            };
            for stage in from..=seen.stage {
                send(id, seen, STAGES[usize::from(stage)]);
            }
        }
        for (id, seen) in &self.seen {
            if !now.contains_key(id) {
                send(id, seen, api::ContainerEventType::ContainerDeletedEvent);
            }
        }
        self.seen = now;
    }
}

const STAGES: [api::ContainerEventType; 3] = [
    api::ContainerEventType::ContainerCreatedEvent,
    api::ContainerEventType::ContainerStartedEvent,
    api::ContainerEventType::ContainerStoppedEvent,
];

fn current(state: &State) -> HashMap<String, Seen> {
    let sandboxes = state.sandboxes();
    let metadata: HashMap<&str, &api::PodSandboxMetadata> = sandboxes
        .iter()
        .map(|s| (s.id.as_str(), &s.metadata))
        .collect();
    let mut seen: HashMap<String, Seen> = sandboxes
        .iter()
        .map(|s| {
            let stage = match s.state {
                api::PodSandboxState::SandboxReady => 1,
                api::PodSandboxState::SandboxNotready => 2,
            };
            (
                s.id.clone(),
                Seen {
                    sandbox_id: s.id.clone(),
                    metadata: s.metadata.clone(),
                    stage,
                },
            )
        })
        .collect();
    for c in state.containers() {
        let stage = match c.state {
            api::ContainerState::ContainerCreated | api::ContainerState::ContainerUnknown => 0,
            api::ContainerState::ContainerRunning => 1,
            api::ContainerState::ContainerExited => 2,
        };
        let metadata = metadata
            .get(c.sandbox_id.as_str())
            .map(|m| (*m).clone())
            .unwrap_or_default();
        seen.insert(
            c.id.clone(),
            Seen {
                sandbox_id: c.sandbox_id.clone(),
                metadata,
                stage,
            },
        );
    }
    seen
}
