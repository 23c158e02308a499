//! A read-only view of this node's Node object as the API server last returned it, for the parts of
//! the agent that need its labels, taints or allocatable (pod admission).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint};
use tokio::sync::watch;

use super::resources::ResourceList;
use crate::quantity::Quantity;

/// Cheap to clone; every clone sees the latest Node. `None` until the node is registered or read.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    rx: watch::Receiver<Option<Node>>,
}

impl NodeHandle {
    pub(crate) fn new(rx: watch::Receiver<Option<Node>>) -> Self {
        Self { rx }
    }

    /// A handle that always shows `node` (tests, or running without an API server).
    pub fn fixed(node: Option<Node>) -> Self {
        let (_tx, rx) = watch::channel(node);
        Self { rx }
    }

    /// The Node as last seen.
    pub fn node(&self) -> Option<Node> {
        self.rx.borrow().clone()
    }

    /// The node's UID, once known.
    pub fn uid(&self) -> Option<String> {
        self.rx
            .borrow()
            .as_ref()
            .and_then(|n| n.metadata.uid.clone())
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.rx
            .borrow()
            .as_ref()
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    pub fn taints(&self) -> Vec<Taint> {
        self.rx
            .borrow()
            .as_ref()
            .and_then(|n| n.spec.as_ref()?.taints.clone())
            .unwrap_or_default()
    }

    /// `status.allocatable`, parsed (entries that do not parse are left out).
    pub fn allocatable(&self) -> ResourceList {
        self.rx
            .borrow()
            .as_ref()
            .and_then(|n| n.status.as_ref()?.allocatable.as_ref())
            .map(|list| {
                list.iter()
                    .filter_map(|(k, v)| Some((k.clone(), Quantity::from_api(v).ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until a Node is known and returns it; `None` if the node agent stopped first.
    pub async fn wait_for_node(&mut self) -> Option<Node> {
        self.rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|node| node.clone())
    }

    /// A receiver that is notified whenever the Node changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Node>> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[tokio::test]
    async fn exposes_labels_taints_and_allocatable() {
        let empty = NodeHandle::fixed(None);
        assert!(empty.node().is_none() && empty.labels().is_empty() && empty.taints().is_empty());
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                uid: Some("u".into()),
                labels: Some(BTreeMap::from([("a".into(), "b".into())])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: "k".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".into(), ApiQuantity("3900m".into())),
                    ("bad".into(), ApiQuantity("x".into())),
                ])),
                ..Default::default()
            }),
        };
        let (tx, rx) = watch::channel(None);
        let mut handle = NodeHandle::new(rx);
        let waiter = tokio::spawn({
            let mut h = handle.clone();
            async move { h.wait_for_node().await }
        });
        tx.send_replace(Some(node));
        assert_eq!(
            waiter
                .await
                .expect("join")
                .and_then(|n| n.metadata.uid.clone()),
            Some("u".into())
        );
        assert_eq!(handle.uid().as_deref(), Some("u"));
        assert_eq!(handle.labels()["a"], "b");
        assert_eq!(handle.taints()[0].key, "k");
        let alloc = handle.allocatable();
        assert_eq!(alloc["cpu"].milli_value(), 3900);
        assert!(!alloc.contains_key("bad"));
        drop(tx);
        assert!(
            handle.wait_for_node().await.is_some(),
            "a known node is returned at once"
        );
    }
}
