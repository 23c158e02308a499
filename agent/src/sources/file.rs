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

/// What tells a file's content changed without reading it: the file it is (device, inode), its size,
/// and its modification and change times. A rewrite in place, a rename over it, a symlink pointed
/// elsewhere, a truncation all change at least one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nsecs: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsecs);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// File times tick with the kernel's coarse clock (several milliseconds): a same-size rewrite
    /// within one tick of the previous write keeps the fingerprint. Such a recent fingerprint is not
    /// trusted; the bytes are compared instead until the file has been left alone for a while.
    fn is_racy(&self, now: SystemTime, window: Duration) -> bool {
        let now_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(i128::MAX);
        now_ns - self.mtime_ns.max(self.ctime_ns) < window.as_nanos() as i128
    }
}

/// How long after its last change a file's fingerprint is not trusted on its own.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A file as last read and decoded.
struct Cached {
    fingerprint: Fingerprint,
    /// The fingerprint was taken within [`RACY_WINDOW`] of the file's last change.
    racy: bool,
    bytes: Vec<u8>,
    decoded: Result<Arc<Pod>, String>,
}

/// Scans a static pod folder, remembering every file it decoded: a rescan reads only the files whose
/// fingerprint changed (or was too recent to trust), and decodes only those whose bytes changed.
/// An unchanged folder costs one directory listing and one `stat` per file.
pub struct Scanner {
    dir: PathBuf,
    node_name: String,
    cache: HashMap<PathBuf, Cached>,
    racy_window: Duration,
    /// Files read (opened) and decoded so far: for tests.
    reads: u64,
    decodes: u64,
}

impl Scanner {
    pub fn new(dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            node_name: node_name.into(),
            cache: HashMap::new(),
            racy_window: RACY_WINDOW,
            reads: 0,
            decodes: 0,
        }
    }

    /// Reads every manifest of the folder. Returns the pods and the per-file errors.
    pub fn scan(&mut self) -> std::io::Result<(PodSet, Vec<(PathBuf, String)>)> {
        let mut files: Vec<(PathBuf, std::fs::Metadata)> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                // kubelet ignores hidden files (editors' swap files among them).
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            // Following symlinks, as kubelet does.
            .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m)))
            .filter(|(_, m)| m.is_file())
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let now = SystemTime::now();
        let mut previous = std::mem::take(&mut self.cache);
        let mut pods: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
        let mut names: HashMap<String, PathBuf> = HashMap::new();
        let mut errors = Vec::new();
        for (file, meta) in files {
            let fingerprint = Fingerprint::of(&meta);
            let cached = previous.remove(&file);
            let entry = match cached {
                Some(c) if c.fingerprint == fingerprint && !c.racy => c,
                cached => {
                    self.reads += 1;
                    let bytes = match std::fs::read(&file) {
                        Ok(b) => b,
                        Err(e) => {
                            errors.push((file, format!("unreadable: {e}")));
                            continue;
                        }
                    };
                    let decoded = match cached {
                        Some(c) if c.bytes == bytes => c.decoded,
                        _ => {
                            self.decodes += 1;
                            decode(&bytes, &file, &self.node_name)
                        }
                    };
                    Cached {
                        fingerprint,
                        racy: fingerprint.is_racy(now, self.racy_window),
                        bytes,
                        decoded,
                    }
                }
            };
            match &entry.decoded {
                Ok(pod) => {
                    let key = pod_key(pod);
                    if let Some(first) = names.get(&key) {
                        errors.push((
                            file.clone(),
                            format!(
                                "pod {key} is already defined by {}; ignored",
                                first.display()
                            ),
                        ));
                    } else {
                        names.insert(key, file.clone());
                        pods.insert(pod_uid(pod).to_string(), pod.clone());
                    }
                }
                Err(e) => errors.push((file.clone(), e.clone())),
            }
            self.cache.insert(file, entry);
        }
        Ok((PodSet { pods, synced: true }, errors))
    }
}

fn decode(bytes: &[u8], file: &Path, node_name: &str) -> Result<Arc<Pod>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("unreadable: {e}"))?;
    manifest::decode(text, file, node_name)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Reads every manifest in `dir` once. Returns the pods and the per-file errors.
pub fn scan(dir: &Path, node_name: &str) -> std::io::Result<(PodSet, Vec<(PathBuf, String)>)> {
    Scanner::new(dir, node_name).scan()
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
    let mut scanner = Scanner::new(&dir, node_name);
    loop {
        if watcher.is_none() {
            watcher = start_watcher(&dir, changed.clone());
        }
        match scanner.scan() {
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
        assert_eq!(names(&set), vec!["a-n1", "c-n1"]);
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

    fn names(set: &PodSet) -> Vec<String> {
        let mut names: Vec<_> = set
            .pods
            .values()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        names
    }

    /// A scanner that trusts every fingerprint at once (files written by a test are seconds young).
    fn trusting(dir: &Path) -> Scanner {
        let mut scanner = Scanner::new(dir, "n1");
        scanner.racy_window = Duration::ZERO;
        scanner
    }

    #[test]
    fn rescan_of_an_unchanged_folder_reads_and_decodes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a", "b", "c"] {
            std::fs::write(
                dir.path().join(format!("{name}.yaml")),
                POD.replace("NAME", name),
            )
            .expect("write");
        }
        std::fs::write(dir.path().join("bad.yaml"), "this: [is not, a pod").expect("write");
        let mut scanner = trusting(dir.path());
        let (first, errors) = scanner.scan().expect("scan");
        assert_eq!(names(&first), vec!["a-n1", "b-n1", "c-n1"]);
        assert_eq!(errors.len(), 1);
        assert_eq!((scanner.reads, scanner.decodes), (4, 4));
        let (second, errors) = scanner.scan().expect("rescan");
        assert_eq!(
            (scanner.reads, scanner.decodes),
            (4, 4),
            "nothing read again"
        );
        assert_eq!(errors.len(), 1, "the broken file is still reported");
        assert!(
            first
                .pods
                .iter()
                .zip(&second.pods)
                .all(|((u1, p1), (u2, p2))| u1 == u2 && Arc::ptr_eq(p1, p2)),
            "the same decoded pods are reused"
        );
    }

    #[test]
    fn touched_but_unchanged_file_is_read_but_not_decoded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, POD.replace("NAME", "a")).expect("write");
        let mut scanner = trusting(dir.path());
        scanner.scan().expect("scan");
        // Same bytes written again: new times, same content.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, POD.replace("NAME", "a")).expect("rewrite");
        let (set, _) = scanner.scan().expect("rescan");
        assert_eq!(names(&set), vec!["a-n1"]);
        assert_eq!((scanner.reads, scanner.decodes), (2, 1));
    }

    #[test]
    fn changed_added_and_removed_files_are_picked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), POD.replace("NAME", "a")).expect("write");
        std::fs::write(dir.path().join("b.yaml"), POD.replace("NAME", "b")).expect("write");
        let mut scanner = trusting(dir.path());
        let (first, _) = scanner.scan().expect("scan");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(
            dir.path().join("a.yaml"),
            POD.replace("NAME", "a")
                .replace("busybox:1.36", "busybox:1.36.1"),
        )
        .expect("edit");
        std::fs::remove_file(dir.path().join("b.yaml")).expect("rm");
        std::fs::write(dir.path().join("c.yaml"), POD.replace("NAME", "c")).expect("write");
        let (second, _) = scanner.scan().expect("rescan");
        assert_eq!(names(&second), vec!["a-n1", "c-n1"]);
        assert_eq!((scanner.reads, scanner.decodes), (4, 4));
        let image = |set: &PodSet| {
            set.pods
                .values()
                .find(|p| p.metadata.name.as_deref() == Some("a-n1"))
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.containers[0].image.clone())
        };
        assert_eq!(image(&first).as_deref(), Some("busybox:1.36"));
        assert_eq!(image(&second).as_deref(), Some("busybox:1.36.1"));
    }

    #[test]
    fn same_size_replacement_is_picked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.yaml");
        let v1 = POD.replace("NAME", "a");
        let v2 = v1.replace("1.36", "1.37");
        let v3 = v1.replace("1.36", "1.38");
        assert_eq!(v1.len(), v2.len());
        let image = |set: &PodSet| {
            set.pods
                .values()
                .next()
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default()
        };
        // Renamed over the old file (as editors and config tools do): another inode, at once.
        std::fs::write(&file, &v1).expect("write");
        let mut scanner = trusting(dir.path());
        assert_eq!(image(&scanner.scan().expect("scan").0), "busybox:1.36");
        std::fs::write(dir.path().join(".a.tmp"), &v2).expect("write tmp");
        std::fs::rename(dir.path().join(".a.tmp"), &file).expect("rename");
        assert_eq!(image(&scanner.scan().expect("rescan").0), "busybox:1.37");
        // Rewritten in place right after the scan, possibly within the same tick of the file
        // times: the young fingerprint is not trusted, the bytes are compared.
        let mut scanner = Scanner::new(dir.path(), "n1");
        assert_eq!(image(&scanner.scan().expect("scan").0), "busybox:1.37");
        std::fs::write(&file, &v3).expect("rewrite in place");
        assert_eq!(image(&scanner.scan().expect("rescan").0), "busybox:1.38");
        assert_eq!(scanner.decodes, 2);
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
        Scanner::new(dir.path(), "n1").scan().expect("scan");
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
