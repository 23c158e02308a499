//! Pod events (Pulling, Pulled, Created, Started, Killing, BackOff, Failed, ...). Recording never blocks
//! pod work: events go to the log at once and onto a bounded queue that a sink (the API server's events
//! API, when the agent is joined to a cluster) drains; when the queue is full the event is dropped, as
//! kubelet's rate-limited recorder does.

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// `spec.containers{name}` style field path, or empty for the pod itself.
    pub field_path: String,
    pub kind: EventType,
    pub reason: String,
    pub message: String,
}

#[derive(Clone)]
pub struct EventRecorder {
    queue: Option<mpsc::Sender<PodEvent>>,
}

impl EventRecorder {
    /// A recorder that only logs.
    pub fn log_only() -> Self {
        Self { queue: None }
    }

    /// A recorder that also queues events (up to `capacity`) for a sink.
    pub fn with_queue(capacity: usize) -> (Self, mpsc::Receiver<PodEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { queue: Some(tx) }, rx)
    }

    pub fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let event = PodEvent {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            field_path: container
                .map(|c| format!("spec.containers{{{c}}}"))
                .unwrap_or_default(),
            kind,
            reason: reason.to_string(),
            message: message.into(),
        };
        let pod_ref = format!("{}/{}", event.namespace, event.pod_name);
        match kind {
            EventType::Normal => {
                // kubelet logs the events it records at V(3).
                tracing::info!(v = 3, pod = %pod_ref, container = container.unwrap_or(""), reason, message = %event.message, "Event occurred")
            }
            EventType::Warning => {
                tracing::warn!(pod = %pod_ref, container = container.unwrap_or(""), reason, message = %event.message, "Event occurred")
            }
        }
        if let Some(queue) = &self.queue {
            // A full queue drops the event rather than stall the pod worker.
            let _ = queue.try_send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_events_carry_the_pod_and_container_and_never_block() {
        let (rec, mut rx) = EventRecorder::with_queue(1);
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}}),
        )
        .expect("pod");
        rec.record(
            &pod,
            Some("c"),
            EventType::Warning,
            "BackOff",
            "back-off 10s",
        );
        rec.record(&pod, None, EventType::Normal, "Dropped", "queue full");
        let e = rx.try_recv().expect("first event queued");
        assert_eq!(
            (
                e.namespace.as_str(),
                e.pod_name.as_str(),
                e.pod_uid.as_str()
            ),
            ("ns", "p", "u")
        );
        assert_eq!(e.field_path, "spec.containers{c}");
        assert_eq!(e.reason, "BackOff");
        assert!(rx.try_recv().is_err(), "second event dropped, not blocking");
    }
}
