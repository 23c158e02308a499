//! Merging the sources' pod sets into the one desired state the pod workers follow. Pods are keyed by
//! UID; the merged set is synced once every source is.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::PodSet;

/// Merges several sets: union by UID (the first source wins a clash), synced when all are.
pub fn merge(sets: &[PodSet]) -> PodSet {
    let mut merged = PodSet {
        synced: sets.iter().all(|s| s.synced),
        ..Default::default()
    };
    for set in sets {
        for (uid, pod) in &set.pods {
            merged
                .pods
                .entry(uid.clone())
                .or_insert_with(|| pod.clone());
        }
    }
    merged
}

/// Republishes the merge of `sources` on `tx` whenever one of them changes, until `cancel`.
pub async fn run(
    mut sources: Vec<watch::Receiver<PodSet>>,
    tx: watch::Sender<PodSet>,
    cancel: CancellationToken,
) {
    loop {
        let sets: Vec<PodSet> = sources
            .iter_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .collect();
        tx.send_replace(merge(&sets));
        let changes = sources.iter_mut().map(|rx| Box::pin(rx.changed()));
        tokio::select! {
            _ = cancel.cancelled() => return,
            (result, _, _) = futures::future::select_all(changes) => {
                if result.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn set(uids: &[&str], synced: bool) -> PodSet {
        PodSet {
            pods: uids
                .iter()
                .map(|u| (u.to_string(), Arc::new(Default::default())))
                .collect(),
            synced,
        }
    }

    #[test]
    fn union_by_uid_synced_when_all_are() {
        let m = merge(&[set(&["a", "b"], true), set(&["b", "c"], false)]);
        assert_eq!(m.pods.keys().collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert!(!m.synced);
        assert!(merge(&[set(&[], true), set(&["x"], true)]).synced);
    }
}
