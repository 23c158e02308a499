//! GetContainerEvents from Docker's event stream: create / start / die / destroy of the shim's
//! containers (pause containers included, as containerd reports sandboxes), each with the status
//! of the pod's sandbox and of all its containers at the time the event is forwarded.

use std::collections::HashMap;

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use k8s_cri::v1 as api;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::DockerShim;
use crate::container;
use crate::error::OpError;
use crate::labels::{self, TYPE_CONTAINER, TYPE_SANDBOX};

/// Events buffered per subscriber before the stream waits for the subscriber.
const EVENT_BUFFER: usize = 1024;

pub(crate) type EventStream = ReceiverStream<Result<api::ContainerEventResponse, Status>>;

/// The CRI event type of a Docker container action.
pub(crate) fn event_type(action: &str) -> Option<api::ContainerEventType> {
    match action {
        "create" => Some(api::ContainerEventType::ContainerCreatedEvent),
        "start" => Some(api::ContainerEventType::ContainerStartedEvent),
        "die" => Some(api::ContainerEventType::ContainerStoppedEvent),
        "destroy" => Some(api::ContainerEventType::ContainerDeletedEvent),
        _ => None,
    }
}

impl DockerShim {
    pub(crate) fn container_events(&self) -> EventStream {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let shim = self.clone();
        // Events from the moment of the call on, even those that happen before the request to
        // dockerd is made (dockerd replays them from `since`).
        let now = jiff::Timestamp::now();
        let since = format!("{}.{:09}", now.as_second(), now.subsec_nanosecond());
        tokio::spawn(async move {
            let mut label_filters = vec![labels::TYPE.to_string()];
            if !shim.config().instance.is_empty() {
                label_filters.push(format!("{}={}", labels::INSTANCE, shim.config().instance));
            }
            let filters = HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("label".to_string(), label_filters),
                (
                    "event".to_string(),
                    ["create", "start", "die", "destroy"]
                        .map(String::from)
                        .to_vec(),
                ),
            ]);
            let options = EventsOptions {
                filters: Some(filters),
                since: Some(since),
                until: None,
            };
            let mut events = std::pin::pin!(shim.docker().events(Some(options)));
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = events.next() => next,
                };
                let answer = match next {
                    Some(Ok(event)) => match shim.event_response(event).await {
                        Ok(Some(response)) => Ok(response),
                        Ok(None) => continue,
                        Err(e) => Err(Status::from(e)),
                    },
                    Some(Err(e)) => Err(Status::unavailable(format!("docker event stream: {e}"))),
                    None => Err(Status::unavailable("docker event stream ended")),
                };
                let last = answer.is_err();
                if tx.send(answer).await.is_err() || last {
                    return;
                }
            }
        });
        ReceiverStream::new(rx)
    }

    async fn event_response(
        &self,
        event: EventMessage,
    ) -> Result<Option<api::ContainerEventResponse>, OpError> {
        let Some(kind) = event.action.as_deref().and_then(event_type) else {
            return Ok(None);
        };
        let actor = event.actor.unwrap_or_default();
        let id = actor.id.unwrap_or_default();
        let attributes = actor.attributes.unwrap_or_default();
        let sandbox_id = match attributes.get(labels::TYPE).map(String::as_str) {
            Some(TYPE_SANDBOX) => id.clone(),
            Some(TYPE_CONTAINER) => attributes
                .get(labels::SANDBOX_ID)
                .cloned()
                .unwrap_or_default(),
            _ => return Ok(None),
        };
        let sandbox_status = match self.inspect_sandbox(&sandbox_id).await {
            Ok(Some((inspect, labels))) => Some(self.sandbox_status_of(&inspect, labels).await),
            Ok(None) | Err(OpError::InvalidArgument(_)) => None,
            Err(e) => return Err(e),
        };
        let mut statuses = Vec::new();
        if !sandbox_id.is_empty() {
            let members = self
                .list_docker(TYPE_CONTAINER, &HashMap::new(), &sandbox_id, false)
                .await?;
            for member in members.iter().filter_map(|m| m.id.as_deref()) {
                if let Some((inspect, labels)) = self.inspect_cri_container(member).await? {
                    statuses.push(container::container_status(&inspect, labels, None));
                }
            }
        }
        Ok(Some(api::ContainerEventResponse {
            container_id: id,
            container_event_type: kind as i32,
            created_at: event.time_nano.unwrap_or(0),
            pod_sandbox_status: sandbox_status,
            containers_statuses: statuses,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_actions_to_cri_events() {
        assert_eq!(
            event_type("die"),
            Some(api::ContainerEventType::ContainerStoppedEvent)
        );
        assert_eq!(
            event_type("destroy"),
            Some(api::ContainerEventType::ContainerDeletedEvent)
        );
        assert_eq!(event_type("exec_start: sh"), None);
    }
}
