//! Mirror pods: the API's read-only picture of each static pod, as kubelet keeps them. Each static pod
//! gets a pod of the same name and namespace carrying `kubernetes.io/config.mirror: <manifest hash>`
//! and an owner reference to the Node; a deleted mirror is recreated, a mirror of an older manifest is
//! replaced, and a mirror whose static pod went away is deleted. The static pods themselves run whether
//! or not the API server answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api_code;
use crate::sources::{CONFIG_MIRROR_ANNOTATION, PodSet, pod_key};

const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, Default, PartialEq)]
pub struct MirrorPlan {
    /// Static pods that need a mirror.
    pub create: Vec<Arc<Pod>>,
    /// Mirrors to delete: (namespace, name, uid).
    pub delete: Vec<(String, String, String)>,
}

fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_MIRROR_ANNOTATION)
        .map(String::as_str)
}

/// Decides which mirrors to create and delete.
pub fn plan(statics: &PodSet, mirrors: &BTreeMap<String, Arc<Pod>>) -> MirrorPlan {
    let mut out = MirrorPlan::default();
    let by_key: BTreeMap<String, &Arc<Pod>> =
        statics.pods.values().map(|p| (pod_key(p), p)).collect();
    let mut covered = std::collections::HashSet::new();
    for mirror in mirrors.values() {
        let key = pod_key(mirror);
        let wanted = by_key.get(&key).is_some_and(|s| {
            mirror_hash(mirror) == s.metadata.uid.as_deref()
                && mirror.metadata.deletion_timestamp.is_none()
        });
        covered.insert(key.clone());
        if !wanted {
            out.delete.push((
                mirror.metadata.namespace.clone().unwrap_or_default(),
                mirror.metadata.name.clone().unwrap_or_default(),
                mirror.metadata.uid.clone().unwrap_or_default(),
            ));
        }
    }
    for (key, pod) in by_key {
        // A stale mirror of the same name is deleted first; the new one comes on the next round.
        if !covered.contains(&key) {
            out.create.push(pod.clone());
        }
    }
    out
}

/// The mirror pod of a static pod.
pub fn mirror_of(pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(
        CONFIG_MIRROR_ANNOTATION.into(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.into(),
                uid: node_uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: pod.spec.clone(),
        status: None,
    }
}

pub async fn run(
    client: kube::Client,
    node_name: String,
    mut statics: watch::Receiver<PodSet>,
    mut mirrors: watch::Receiver<BTreeMap<String, Arc<Pod>>>,
    cancel: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node_uid: Option<String> = None;
    loop {
        let set = statics.borrow_and_update().clone();
        let current = mirrors.borrow_and_update().clone();
        let plan = plan(&set, &current);
        for (namespace, name, uid) in &plan.delete {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let params = super::delete_now(uid);
            match api.delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(pod = %format!("{namespace}/{name}"), "deleted outdated mirror pod")
                }
                Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
                Err(e) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "failed to delete mirror pod")
                }
            }
        }
        if !plan.create.is_empty() && node_uid.is_none() {
            match nodes.get_opt(&node_name).await {
                Ok(Some(node)) => node_uid = node.metadata.uid,
                Ok(None) => tracing::debug!("node not registered yet; mirror pods wait for it"),
                Err(e) => tracing::debug!(error = %e, "cannot read the node for mirror pods"),
            }
        }
        if let Some(uid) = &node_uid {
            for pod in &plan.create {
                let mirror = mirror_of(pod, &node_name, uid);
                let api: Api<Pod> = Api::namespaced(
                    client.clone(),
                    mirror.metadata.namespace.as_deref().unwrap_or("default"),
                );
                match api.create(&PostParams::default(), &mirror).await {
                    Ok(_) => tracing::info!(pod = %pod_key(pod), "created mirror pod"),
                    Err(e) if api_code(&e) == Some(409) => {}
                    Err(e) => {
                        tracing::warn!(pod = %pod_key(pod), error = %e, "failed to create mirror pod")
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = statics.changed() => if r.is_err() { return },
            r = mirrors.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, mirror_of_hash: Option<&str>, deleting: bool) -> Arc<Pod> {
        let mut v = serde_json::json!({"metadata": {"name": name, "namespace": "kube-system", "uid": uid}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
        if let Some(h) = mirror_of_hash {
            v["metadata"]["annotations"] = serde_json::json!({CONFIG_MIRROR_ANNOTATION: h});
        }
        if deleting {
            v["metadata"]["deletionTimestamp"] = serde_json::json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    fn statics(pods: &[Arc<Pod>]) -> PodSet {
        PodSet {
            pods: pods
                .iter()
                .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p.clone()))
                .collect(),
            synced: true,
        }
    }

    fn mirrors(pods: &[Arc<Pod>]) -> BTreeMap<String, Arc<Pod>> {
        pods.iter()
            .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p.clone()))
            .collect()
    }

    #[test]
    fn creates_missing_replaces_stale_deletes_orphaned() {
        let s = pod("etcd-n1", "hash2", None, false);
        // Missing: create.
        let p = plan(&statics(std::slice::from_ref(&s)), &BTreeMap::new());
        assert_eq!(p.create.len(), 1);
        assert!(p.delete.is_empty());
        // Up to date: nothing.
        let p = plan(
            &statics(std::slice::from_ref(&s)),
            &mirrors(&[pod("etcd-n1", "m1", Some("hash2"), false)]),
        );
        assert_eq!(p, MirrorPlan::default());
        // Stale (older manifest): delete now, create next round.
        let p = plan(
            &statics(std::slice::from_ref(&s)),
            &mirrors(&[pod("etcd-n1", "m1", Some("hash1"), false)]),
        );
        assert_eq!(
            p.delete,
            vec![(
                "kube-system".to_string(),
                "etcd-n1".to_string(),
                "m1".to_string()
            )]
        );
        assert!(p.create.is_empty());
        // Being deleted by a user: delete for good, then recreate.
        let p = plan(
            &statics(std::slice::from_ref(&s)),
            &mirrors(&[pod("etcd-n1", "m1", Some("hash2"), true)]),
        );
        assert_eq!(p.delete.len(), 1);
        // Orphaned: delete.
        let p = plan(
            &statics(&[]),
            &mirrors(&[pod("etcd-n1", "m1", Some("hash2"), false)]),
        );
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn mirror_carries_hash_and_node_owner() {
        let m = mirror_of(&pod("etcd-n1", "hash2", None, false), "n1", "node-uid");
        assert_eq!(mirror_hash(&m), Some("hash2"));
        let owner = &m.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "n1", "node-uid")
        );
        assert!(m.metadata.uid.is_none());
    }
}
