//! The API server pod source: kube-runtime's watcher on every namespace's pods with
//! `fieldSelector=spec.nodeName=<node>`. It survives disconnects, relists and 410 Gone by itself (the
//! watcher relists); a relist republishes the whole set, and unchanged pods keep running because the
//! pod workers compare specs, not events.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION, PodSet, pod_uid};

/// True for a mirror pod: the API's picture of a static pod, never run from the API.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION))
}

fn mark_source(mut pod: Pod) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CONFIG_SOURCE_ANNOTATION.into(), "api".into());
    pod
}

/// Applies one watcher event to the pods being built (`pending`, during a relist) or the published set.
/// Returns true when the published set changed.
fn apply(
    event: watcher::Event<Pod>,
    published: &mut PodSet,
    pending: &mut Option<BTreeMap<String, Arc<Pod>>>,
    mirrors: &mut BTreeMap<String, Arc<Pod>>,
    mirrors_pending: &mut Option<BTreeMap<String, Arc<Pod>>>,
) -> bool {
    match event {
        watcher::Event::Init => {
            *pending = Some(BTreeMap::new());
            *mirrors_pending = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(pod) => {
            let uid = pod_uid(&pod).to_string();
            if is_mirror(&pod) {
                mirrors_pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(uid, Arc::new(pod));
            } else {
                pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(uid, Arc::new(mark_source(pod)));
            }
            false
        }
        watcher::Event::InitDone => {
            *mirrors = mirrors_pending.take().unwrap_or_default();
            published.pods = pending.take().unwrap_or_default();
            published.synced = true;
            true
        }
        watcher::Event::Apply(pod) => {
            let uid = pod_uid(&pod).to_string();
            if is_mirror(&pod) {
                mirrors.insert(uid, Arc::new(pod));
                return true;
            }
            let pod = Arc::new(mark_source(pod));
            let changed = published.pods.get(&uid).is_none_or(|old| **old != *pod);
            published.pods.insert(uid, pod);
            changed
        }
        watcher::Event::Delete(pod) => {
            let uid = pod_uid(&pod).to_string();
            mirrors.remove(&uid).is_some() | published.pods.remove(&uid).is_some()
        }
    }
}

/// Watches the node's pods until `cancel`, publishing the pods to run on `tx` and the mirror pods on
/// `mirrors_tx`.
pub async fn run(
    client: kube::Client,
    node_name: String,
    tx: watch::Sender<PodSet>,
    mirrors_tx: watch::Sender<BTreeMap<String, Arc<Pod>>>,
    cancel: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node_name}"))
        .any_semantic();
    // Nothing here reads managedFields, often the largest part of a pod object: kept, they were
    // held in every copy of every pod.
    let mut stream = watcher(api, config)
        .default_backoff()
        .modify(|pod| pod.metadata.managed_fields = None)
        .boxed();
    let mut published = PodSet::default();
    let mut pending = None;
    let mut mirrors = BTreeMap::new();
    let mut mirrors_pending = None;
    let mut failing = false;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            None => return,
            Some(Ok(event)) => {
                if failing {
                    tracing::info!("API server pod watch recovered");
                    failing = false;
                }
                let is_init_done = matches!(event, watcher::Event::InitDone);
                if apply(
                    event,
                    &mut published,
                    &mut pending,
                    &mut mirrors,
                    &mut mirrors_pending,
                ) {
                    if is_init_done {
                        tracing::info!(
                            pods = published.pods.len(),
                            "listed the node's pods from the API server"
                        );
                    }
                    tx.send_replace(published.clone());
                    mirrors_tx.send_replace(mirrors.clone());
                }
            }
            Some(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "API server pod watch failed; retrying with back-off (running pods are kept)");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, image: &str, mirror: bool) -> Pod {
        let mut annotations = serde_json::Map::new();
        if mirror {
            annotations.insert(CONFIG_MIRROR_ANNOTATION.into(), "hash".into());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid, "annotations": annotations},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .expect("pod")
    }

    #[test]
    fn relist_replaces_the_set_and_mirrors_are_kept_apart() {
        let mut published = PodSet::default();
        let (mut pending, mut mirrors, mut mirrors_pending) = (None, BTreeMap::new(), None);
        let mut feed = |e| {
            apply(
                e,
                &mut published,
                &mut pending,
                &mut mirrors,
                &mut mirrors_pending,
            )
        };
        assert!(!feed(watcher::Event::Init));
        assert!(!feed(watcher::Event::InitApply(pod("a", "x:1", false))));
        assert!(!feed(watcher::Event::InitApply(pod("m", "x:1", true))));
        assert!(feed(watcher::Event::InitDone));
        assert!(
            !feed(watcher::Event::Apply(pod("a", "x:1", false))),
            "same pod again is no change"
        );
        assert!(feed(watcher::Event::Apply(pod("b", "x:1", false))));
        // A relist (after 410 Gone) that no longer holds b drops it; a is unchanged.
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(pod("a", "x:1", false)));
        assert!(feed(watcher::Event::InitDone));
        assert!(
            feed(watcher::Event::Apply(pod("m", "x:1", true))),
            "a mirror pod appears"
        );
        assert!(feed(watcher::Event::Delete(pod("m", "x:1", true))));
        assert!(
            !feed(watcher::Event::Delete(pod("zz", "x:1", false))),
            "deleting an unknown pod changes nothing"
        );
        assert_eq!(published.pods.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(published.synced);
        assert!(mirrors.is_empty());
        let a = &published.pods["a"];
        assert!(
            !crate::sources::is_static(a),
            "API pods are marked with source api"
        );
    }
}
