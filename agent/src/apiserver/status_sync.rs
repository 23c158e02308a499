//! Pushes pod statuses from the status manager to the API server: `pods/status` is patched only when
//! a pod's status changed (strategic merge, the pod's UID as precondition; the resize conditions the
//! agent no longer sets are deleted explicitly, as a merge keeps what it is not told), static pods report through
//! their mirror pods, and pods the API is deleting are deleted for good (grace 0, UID precondition) once
//! their worker has stopped every container.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api_code;
use crate::sources::{CONFIG_MIRROR_ANNOTATION, is_static};
use crate::status::{PodEntry, RESIZE_IN_PROGRESS, RESIZE_PENDING, StatusManager};

const RESYNC: Duration = Duration::from_secs(10);

/// Where a pod's status goes: the pod itself, or the mirror pod of a static pod.
fn target(
    entry: &PodEntry,
    mirrors: &BTreeMap<String, Arc<Pod>>,
) -> Option<(String, String, String)> {
    let pod = &entry.pod;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if !is_static(pod) {
        return Some((
            namespace,
            name,
            pod.metadata.uid.clone().unwrap_or_default(),
        ));
    }
    let hash = pod.metadata.uid.as_deref().unwrap_or_default();
    mirrors
        .values()
        .find(|m| {
            m.metadata.namespace.as_deref() == Some(namespace.as_str())
                && m.metadata.name.as_deref() == Some(name.as_str())
                && m.metadata.deletion_timestamp.is_none()
                && m.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(CONFIG_MIRROR_ANNOTATION))
                    .is_some_and(|h| h == hash)
        })
        .and_then(|m| Some((namespace, name, m.metadata.uid.clone()?)))
}

/// The strategic merge patch kubelet sends: the status, with the UID as precondition. Conditions
/// are merged by type, so the resize conditions the status lacks get a `$patch: delete` (a no-op
/// where the API server has none).
pub fn status_patch(uid: &str, status: &PodStatus) -> serde_json::Value {
    let mut patch = serde_json::json!({"metadata": {"uid": uid}, "status": status});
    let present = |kind: &str| status.conditions.iter().flatten().any(|c| c.type_ == kind);
    let deletions: Vec<serde_json::Value> = [RESIZE_PENDING, RESIZE_IN_PROGRESS]
        .into_iter()
        .filter(|kind| !present(kind))
        .map(|kind| serde_json::json!({"type": kind, "$patch": "delete"}))
        .collect();
    if let Some(status) = patch.get_mut("status").and_then(|s| s.as_object_mut()) {
        let conditions = status
            .entry("conditions")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let Some(list) = conditions.as_array_mut() {
            list.extend(deletions);
        }
    }
    patch
}

pub async fn run(
    client: kube::Client,
    status: StatusManager,
    mirrors: watch::Receiver<BTreeMap<String, Arc<Pod>>>,
    cancel: CancellationToken,
) {
    let mut changes = status.changes();
    let mut synced: HashMap<String, PodStatus> = HashMap::new();
    let mut deleted: HashMap<String, ()> = HashMap::new();
    loop {
        let entries = status.entries();
        let mirror_pods = mirrors.borrow().clone();
        let live: Vec<String> = entries
            .iter()
            .filter_map(|e| target(e, &mirror_pods).map(|t| t.2))
            .collect();
        synced.retain(|uid, _| live.contains(uid));
        for entry in &entries {
            let Some((namespace, name, uid)) = target(entry, &mirror_pods) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            if synced.get(&uid) != Some(&entry.status) {
                let patch = status_patch(&uid, &entry.status);
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    Ok(_) => {
                        synced.insert(uid.clone(), entry.status.clone());
                    }
                    Err(e) if matches!(api_code(&e), Some(404 | 409)) => {
                        tracing::debug!(pod = %format!("{namespace}/{name}"), podUID = %uid, error = %e, "pod gone or replaced; status not written");
                        synced.insert(uid.clone(), entry.status.clone());
                    }
                    Err(e) => {
                        tracing::warn!(pod = %format!("{namespace}/{name}"), podUID = %uid, error = %e, "failed to update pod status; will retry");
                    }
                }
            }
            let deleting =
                entry.pod.metadata.deletion_timestamp.is_some() && !is_static(&entry.pod);
            if deleting && entry.terminated && !deleted.contains_key(&uid) {
                let params = super::delete_now(&uid);
                match api.delete(&name, &params).await {
                    Ok(_) => {
                        tracing::info!(pod = %format!("{namespace}/{name}"), podUID = %uid, "pod terminated; deleted from the API server");
                        deleted.insert(uid.clone(), ());
                    }
                    Err(e) if matches!(api_code(&e), Some(404 | 409)) => {
                        deleted.insert(uid.clone(), ());
                    }
                    Err(e) => {
                        tracing::warn!(pod = %format!("{namespace}/{name}"), podUID = %uid, error = %e, "failed to delete terminated pod; will retry")
                    }
                }
            }
        }
        deleted.retain(|uid, _| live.contains(uid));
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "ns", "uid": uid, "annotations": annotations}})).expect("pod")
    }

    fn entry(p: Pod) -> PodEntry {
        PodEntry {
            pod: Arc::new(p),
            status: PodStatus::default(),
            terminated: false,
        }
    }

    #[test]
    fn api_pods_report_to_themselves_and_static_pods_to_their_mirror() {
        let api_pod = entry(pod(
            "a",
            "u1",
            serde_json::json!({"kubernetes.io/config.source": "api"}),
        ));
        assert_eq!(
            target(&api_pod, &BTreeMap::new()),
            Some(("ns".into(), "a".into(), "u1".into()))
        );

        let static_pod = entry(pod(
            "s-node",
            "hash1",
            serde_json::json!({"kubernetes.io/config.source": "file"}),
        ));
        assert_eq!(
            target(&static_pod, &BTreeMap::new()),
            None,
            "no mirror yet: nothing to write"
        );
        let mut mirrors = BTreeMap::new();
        mirrors.insert(
            "m1".to_string(),
            Arc::new(pod(
                "s-node",
                "m1",
                serde_json::json!({CONFIG_MIRROR_ANNOTATION: "stale"}),
            )),
        );
        assert_eq!(
            target(&static_pod, &mirrors),
            None,
            "a mirror of another manifest version is not ours"
        );
        mirrors.insert(
            "m2".to_string(),
            Arc::new(pod(
                "s-node",
                "m2",
                serde_json::json!({CONFIG_MIRROR_ANNOTATION: "hash1"}),
            )),
        );
        assert_eq!(
            target(&static_pod, &mirrors),
            Some(("ns".into(), "s-node".into(), "m2".into()))
        );
    }

    #[test]
    fn patch_carries_uid_precondition() {
        let status = PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        };
        let p = status_patch("u1", &status);
        assert_eq!(p["metadata"]["uid"], "u1");
        assert_eq!(p["status"]["phase"], "Running");
    }

    #[test]
    fn patch_deletes_the_resize_conditions_the_status_lacks() {
        let condition = |kind: &str| k8s_openapi::api::core::v1::PodCondition {
            type_: kind.into(),
            status: "True".into(),
            ..Default::default()
        };
        let status = PodStatus {
            conditions: Some(vec![condition("Ready"), condition(RESIZE_IN_PROGRESS)]),
            ..Default::default()
        };
        let p = status_patch("u1", &status);
        assert_eq!(
            p["status"]["conditions"],
            serde_json::json!([
                {"type": "Ready", "status": "True"},
                {"type": "PodResizeInProgress", "status": "True"},
                {"type": "PodResizePending", "$patch": "delete"},
            ])
        );
        let p = status_patch("u1", &PodStatus::default());
        assert_eq!(
            p["status"]["conditions"],
            serde_json::json!([
                {"type": "PodResizePending", "$patch": "delete"},
                {"type": "PodResizeInProgress", "$patch": "delete"},
            ])
        );
    }
}
