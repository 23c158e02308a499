//! Merging the sources' pod sets into the one desired state the pod workers follow. Pods are keyed by
//! UID; the merged set is synced once every source is.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::PodSet;

/// Merges several sets: union by UID (the first source wins a clash), synced when all are.
pub fn merge<'a>(sets: impl IntoIterator<Item = &'a PodSet> + Clone) -> PodSet {
    let mut merged = PodSet {
        synced: sets.clone().into_iter().all(|s| s.synced),
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

/// True when two sets hold the very same pods (the same decoded objects, not just equal ones).
pub fn same(a: &PodSet, b: &PodSet) -> bool {
    a.synced == b.synced
        && a.pods.len() == b.pods.len()
        && a.pods
            .iter()
            .zip(&b.pods)
            .all(|((ua, pa), (ub, pb))| ua == ub && Arc::ptr_eq(pa, pb))
}

/// Republishes the merge of `sources` on `tx` whenever one of them changes, until `cancel`. A change
/// that leaves the merged set as it was (a source republishing the same pods) wakes nobody.
pub async fn run(
    mut sources: Vec<watch::Receiver<PodSet>>,
    tx: watch::Sender<PodSet>,
    cancel: CancellationToken,
) {
    let mut first = true;
    loop {
        let merged = {
            let borrowed: Vec<_> = sources
                .iter_mut()
                .map(|rx| rx.borrow_and_update())
                .collect();
            merge(borrowed.iter().map(|b| &**b))
        };
        tx.send_if_modified(|current| {
            let changed = first || !same(current, &merged);
            if changed {
                *current = merged;
            }
            changed
        });
        first = false;
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

    #[tokio::test]
    async fn republishing_the_same_pods_wakes_nobody() {
        let (file_tx, file_rx) = watch::channel(PodSet::default());
        let (api_tx, api_rx) = watch::channel(PodSet::default());
        let (tx, mut rx) = watch::channel(PodSet::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(vec![file_rx, api_rx], tx, cancel.clone()));
        let wait = |rx: &mut watch::Receiver<PodSet>| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
                    .await
                    .is_ok()
            }
        };
        assert!(wait(&mut rx).await, "the first merge is published");
        rx.borrow_and_update();
        let pods = set(&["a"], true);
        file_tx.send_replace(pods.clone());
        api_tx.send_replace(set(&[], true));
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            rx.wait_for(|s| s.synced && s.pods.len() == 1),
        )
        .await
        .expect("merged")
        .expect("alive");
        rx.borrow_and_update();
        // The same pods again (same objects): no new value.
        file_tx.send_replace(pods.clone());
        api_tx.send_replace(set(&[], true));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!rx.has_changed().expect("alive"), "nothing changed");
        // Another object for the same UID (an edited pod): published.
        file_tx.send_replace(set(&["a"], true));
        assert!(wait(&mut rx).await, "a new pod object is published");
        cancel.cancel();
        task.await.expect("task");
    }
}
