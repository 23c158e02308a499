//! The static pod source: a folder of manifests, watched with inotify and rescanned every
//! `fileCheckFrequency`. Every change republishes the whole set; a file that fails to decode is logged
//! once per change and skipped, leaving every other pod as it was.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{PodSet, manifest, pod_key, pod_uid};

/// One file's decoding result, remembered so an unchanged broken file is reported once, not every scan.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    error: Option<String>,
}

/// Reads every manifest in `dir`. Returns the pods and the per-file errors.
pub fn scan(dir: &Path, node_name: &str) -> std::io::Result<(PodSet, Vec<(PathBuf, String)>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            // kubelet ignores hidden files (editors' swap files among them).
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut pods: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let mut errors = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push((file, format!("unreadable: {e}")));
                continue;
            }
        };
        match manifest::decode(&text, &file, node_name) {
            Ok(pod) => {
                let key = pod_key(&pod);
                if let Some(first) = names.get(&key) {
                    errors.push((
                        file,
                        format!(
                            "pod {key} is already defined by {}; ignored",
                            first.display()
                        ),
                    ));
                    continue;
                }
                names.insert(key, file.clone());
                pods.insert(pod_uid(&pod).to_string(), Arc::new(pod));
            }
            Err(e) => errors.push((file, e.to_string())),
        }
    }
    Ok((PodSet { pods, synced: true }, errors))
}

/// Watches `dir` until `cancel` fires, publishing the full pod set on `tx` whenever it changes.
pub async fn run(
    dir: PathBuf,
    node_name: String,
    period: Duration,
    tx: watch::Sender<PodSet>,
    cancel: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let mut watcher: Option<RecommendedWatcher> = None;
    let mut reported: HashMap<PathBuf, Seen> = HashMap::new();
    let mut missing_reported = false;
    loop {
        if watcher.is_none() {
            watcher = start_watcher(&dir, changed.clone());
        }
        match scan(&dir, &node_name) {
            Ok((set, errors)) => {
                missing_reported = false;
                report_errors(&mut reported, errors);
                tx.send_if_modified(|current| {
                    let differs = !current.synced
                        || current.pods.len() != set.pods.len()
                        || current.pods.keys().ne(set.pods.keys());
                    if differs {
                        tracing::info!(path = %dir.display(), pods = set.pods.len(), "static pods updated");
                        *current = set;
                    }
                    differs
                });
            }
            Err(e) => {
                if !missing_reported {
                    tracing::warn!(path = %dir.display(), error = %e, "unable to read static pod path; retrying");
                    missing_reported = true;
                }
                watcher = None;
                // An unreadable folder holds no pods: kubelet drops them too.
                tx.send_if_modified(|current| {
                    let differs = !current.synced || !current.pods.is_empty();
                    *current = PodSet {
                        pods: BTreeMap::new(),
                        synced: true,
                    };
                    differs
                });
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed.notified() => {
                // Let a burst of writes (editors write, rename, chmod) settle before rescanning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// Whether an inotify event can mean a manifest changed. Opening, reading and closing a file
/// unwritten are not changes: the scan itself does all three (and lists the folder), so waking on
/// them made every scan trigger the next one, without end.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn start_watcher(dir: &Path, changed: Arc<Notify>) -> Option<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error (e.g. a queue overflow) may hide changes: rescan.
        if event.as_ref().map_or(true, |e| is_change(&e.kind)) {
            changed.notify_one();
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot create inotify watcher; relying on rescans"))
    .ok()?;
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::debug!(path = %dir.display(), error = %e, "cannot watch static pod path yet");
            None
        }
    }
}

/// Logs each broken manifest once per content change.
fn report_errors(reported: &mut HashMap<PathBuf, Seen>, errors: Vec<(PathBuf, String)>) {
    let mut still_broken = HashMap::new();
    for (file, error) in errors {
        let meta = std::fs::metadata(&file).ok();
        let seen = Seen {
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.map(|m| m.len()).unwrap_or(0),
            error: Some(error.clone()),
        };
        if reported.get(&file) != Some(&seen) {
            tracing::error!(file = %file.display(), reason = %error, "skipping invalid static pod manifest");
        }
        still_broken.insert(file, seen);
    }
    *reported = still_broken;
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME}\nspec:\n  containers: [{name: c, image: busybox:1.36}]\n";

    #[test]
    fn scan_keeps_good_manifests_beside_bad_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), POD.replace("NAME", "a")).expect("write");
        std::fs::write(dir.path().join("b.yaml"), "this: [is not, a pod").expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), POD.replace("NAME", "h")).expect("write");
        std::fs::write(dir.path().join("c.json"), r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"c"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}"#).expect("write");
        let (set, errors) = scan(dir.path(), "n1").expect("scan");
        let mut names: Vec<_> = set
            .pods
            .values()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        assert_eq!(names, vec!["a-n1", "c-n1"]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].0.ends_with("b.yaml"));
        assert!(errors[0].1.contains("not valid YAML"), "{}", errors[0].1);
    }

    #[test]
    fn duplicate_pod_names_keep_the_first_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("1.yaml"), POD.replace("NAME", "same")).expect("write");
        std::fs::write(dir.path().join("2.yaml"), POD.replace("NAME", "same")).expect("write");
        let (set, errors) = scan(dir.path(), "n1").expect("scan");
        assert_eq!(set.pods.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].1.contains("already defined"));
    }

    #[tokio::test]
    async fn watcher_wakes_on_writes_but_not_on_the_scans_own_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), POD.replace("NAME", "a")).expect("write");
        let changed = Arc::new(Notify::new());
        let _watcher = start_watcher(dir.path(), changed.clone()).expect("watcher");
        let woken = |changed: Arc<Notify>| async move {
            tokio::time::timeout(Duration::from_millis(500), changed.notified())
                .await
                .is_ok()
        };
        // What a scan does: list the folder, stat and read every file.
        scan(dir.path(), "n1").expect("scan");
        assert!(!woken(changed.clone()).await, "reading is not a change");
        std::fs::write(dir.path().join("b.yaml"), POD.replace("NAME", "b")).expect("write");
        assert!(woken(changed.clone()).await, "a new file is a change");
        tokio::time::sleep(Duration::from_millis(100)).await;
        while woken(changed.clone()).await {}
        std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
        assert!(woken(changed).await, "a removal is a change");
    }

    #[tokio::test]
    async fn run_publishes_additions_edits_and_removals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = watch::channel(PodSet::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            dir.path().to_path_buf(),
            "n1".into(),
            Duration::from_secs(3600),
            tx,
            cancel.clone(),
        ));
        let wait = |rx: &mut watch::Receiver<PodSet>, want: usize| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    rx.wait_for(|s| s.synced && s.pods.len() == want),
                )
                .await
                .expect("no update within 5s")
                .expect("sender alive")
                .clone()
            }
        };
        wait(&mut rx, 0).await;
        std::fs::write(dir.path().join("a.yaml"), POD.replace("NAME", "a")).expect("write");
        let first = wait(&mut rx, 1).await;
        std::fs::write(
            dir.path().join("a.yaml"),
            POD.replace("NAME", "a").replace("1.36", "1.37"),
        )
        .expect("write");
        let mut rx2 = rx.clone();
        let edited = tokio::time::timeout(
            Duration::from_secs(5),
            rx2.wait_for(|s| s.pods.len() == 1 && s.pods.keys().ne(first.pods.keys())),
        )
        .await
        .expect("edit seen")
        .expect("sender alive")
        .clone();
        assert_ne!(edited.pods.keys().next(), first.pods.keys().next());
        std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
        wait(&mut rx, 0).await;
        cancel.cancel();
        task.await.expect("task");
    }
}
