//! Posts the agent's pod events to the API server (core/v1 Events), as kubelet's event recorder:
//! source `kubelet` on this host, repeated events (same pod, container, reason, message) counted on the
//! existing Event rather than posted again, and a steady rate (kubelet's eventRecordQPS 50) so a burst
//! never floods the API server. Pod work never waits for this: the recorder drops events when its queue
//! is full.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::PodEvent;

const QPS_INTERVAL: Duration = Duration::from_millis(20);
/// How long a posted event may be counted up instead of posted anew (kubelet's aggregation window).
const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);

/// The Event object for a pod event.
pub fn event_object(e: &PodEvent, node_name: &str, now: Timestamp) -> Event {
    let nanos = now.as_nanosecond();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", e.pod_name, nanos)),
            namespace: Some(e.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(e.pod_name.clone()),
            namespace: Some(e.namespace.clone()),
            uid: Some(e.pod_uid.clone()),
            field_path: (!e.field_path.is_empty()).then(|| e.field_path.clone()),
            ..Default::default()
        },
        reason: Some(e.reason.clone()),
        message: Some(e.message.clone()),
        type_: Some(e.kind.as_str().into()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(node_name.into()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node_name.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    }
}

type Key = (String, String, String, String);

pub async fn run(
    client: kube::Client,
    node_name: String,
    mut queue: mpsc::Receiver<PodEvent>,
    cancel: CancellationToken,
) {
    let mut posted: HashMap<Key, (String, i32, Timestamp)> = HashMap::new();
    let mut pace = tokio::time::interval(QPS_INTERVAL);
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = queue.recv() => match e { Some(e) => e, None => return },
        };
        pace.tick().await;
        let now = Timestamp::now();
        posted.retain(|_, (_, _, at)| now.duration_since(*at).unsigned_abs() < AGGREGATION_WINDOW);
        let api: Api<Event> = Api::namespaced(client.clone(), &event.namespace);
        let key = (
            event.pod_uid.clone(),
            event.field_path.clone(),
            event.reason.clone(),
            event.message.clone(),
        );
        if let Some((name, count, _)) = posted.get(&key).cloned() {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    posted.insert(key, (name, count + 1, now));
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "cannot count up event; posting a new one"),
            }
        }
        let object = event_object(&event, &node_name, now);
        let name = object.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                posted.insert(key, (name, 1, now));
            }
            Err(e) => tracing::debug!(error = %e, reason = %event.reason, "cannot post event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    #[test]
    fn event_names_the_pod_container_and_source() {
        let e = PodEvent {
            namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            field_path: "spec.containers{c}".into(),
            kind: EventType::Warning,
            reason: "BackOff".into(),
            message: "Back-off restarting failed container".into(),
        };
        let obj = event_object(&e, "n1", Timestamp::UNIX_EPOCH);
        assert_eq!(obj.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(obj.involved_object.uid.as_deref(), Some("u"));
        assert_eq!(
            obj.involved_object.field_path.as_deref(),
            Some("spec.containers{c}")
        );
        assert_eq!(obj.type_.as_deref(), Some("Warning"));
        assert_eq!(obj.source.and_then(|s| s.host).as_deref(), Some("n1"));
        assert!(obj.metadata.name.expect("name").starts_with("p."));
    }
}
