//! The pod cache (kubelet's `kubecontainer.Cache`): every pod's observed runtime state, written by the
//! PLEG once per relist and read by the pod workers, which never list the runtime themselves.
//!
//! Each entry records when the state it holds was read (the start of the relist that read it), and
//! the cache records the start of the last relist that completed for every pod. A worker that acted at
//! time `t` asks for a state newer than `t` ([`PodCache::get_newer_than`]) and so never decides twice on
//! a picture taken before its own actions.
//!
//! The PLEG reads a container's status again only when its state changes; a worker that changed a
//! container without changing its state (an in-place resize) asks for it to be read again
//! ([`PodCache::request_refresh`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::kuberuntime::observe::ObservedPod;

/// One pod's state as the PLEG last read it.
#[derive(Debug, Clone)]
pub struct CachedPod {
    /// Empty when the runtime holds nothing for the pod.
    pub observed: Arc<ObservedPod>,
    /// Why the pod's state could not be read, when it could not.
    pub error: Option<String>,
    /// When the state was read (the start of that relist).
    pub read_at: Instant,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, CachedPod>,
    /// Every pod not in `pods` had nothing in the runtime as of this instant, and every entry in
    /// `pods` was still current then.
    complete_at: Option<Instant>,
    /// Containers to read again at the next relist, by pod UID.
    refresh: HashMap<String, Vec<String>>,
    /// Pods a worker waits for a newer state of.
    wanted: HashSet<String>,
}

/// Shared between the PLEG (writer) and the pod workers (readers). Cheap to clone.
#[derive(Clone)]
pub struct PodCache {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every write, so waiting readers look again.
    version: Arc<watch::Sender<u64>>,
    /// Signalled when a pod joins `wanted`.
    wanted: Arc<Notify>,
}

impl Default for PodCache {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            version: Arc::new(watch::channel(0).0),
            wanted: Arc::default(),
        }
    }
}

impl PodCache {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Records a pod's state as read at `read_at`. An empty state stays until a complete relist
    /// says the same of every pod it does not hold.
    pub fn set(&self, uid: &str, observed: ObservedPod, read_at: Instant) {
        self.with(|inner| {
            inner.pods.insert(
                uid.to_string(),
                CachedPod {
                    observed: Arc::new(observed),
                    error: None,
                    read_at,
                },
            );
        });
        self.bump();
    }

    /// Records that a pod's state could not be read at `read_at` (the last good state is kept).
    pub fn set_error(&self, uid: &str, error: String, read_at: Instant) {
        self.with(|inner| {
            let entry = inner
                .pods
                .entry(uid.to_string())
                .or_insert_with(|| CachedPod {
                    observed: Arc::default(),
                    error: None,
                    read_at,
                });
            entry.error = Some(error);
            entry.read_at = read_at;
        });
        self.bump();
    }

    /// Marks the whole cache current as of `at`: a relist that started then has completed.
    pub fn complete(&self, at: Instant) {
        self.with(|inner| {
            inner.complete_at = Some(at);
            inner.pods.retain(|_, entry| {
                entry.error.is_some() || entry.read_at > at || !entry.observed.is_empty()
            });
        });
        self.bump();
    }

    /// The pod's state if it was read after `after` (or the whole cache is newer).
    pub fn get_if_newer(&self, uid: &str, after: Option<Instant>) -> Option<CachedPod> {
        self.with(|inner| {
            let newer = |t: Instant| after.is_none_or(|a| t > a);
            match inner.pods.get(uid) {
                Some(entry) if newer(entry.read_at) || inner.complete_at.is_some_and(newer) => {
                    Some(entry.clone())
                }
                Some(_) => None,
                None => inner
                    .complete_at
                    .filter(|t| newer(*t))
                    .map(|read_at| CachedPod {
                        observed: Arc::default(),
                        error: None,
                        read_at,
                    }),
            }
        })
    }

    /// Waits until the cache holds a state of the pod read after `after` (kubelet's `GetNewerThan`).
    /// `None` asks for any complete state.
    pub async fn get_newer_than(&self, uid: &str, after: Option<Instant>) -> CachedPod {
        let mut changes = self.version.subscribe();
        let mut asked = false;
        loop {
            changes.borrow_and_update();
            if let Some(entry) = self.get_if_newer(uid, after) {
                return entry;
            }
            if !asked {
                // A PLEG that follows the runtime's events lists this pod at once; one that
                // relists every second serves it with its next relist.
                self.with(|inner| inner.wanted.insert(uid.to_string()));
                self.wanted.notify_one();
                asked = true;
            }
            if changes.changed().await.is_err() {
                // Unreachable while `self` holds the sender; answer what there is.
                return CachedPod {
                    observed: Arc::default(),
                    error: Some("pod cache closed".into()),
                    read_at: Instant::now(),
                };
            }
        }
    }

    /// Asks for the status of container `id` of pod `uid` to be read again at the next relist, though
    /// its state did not change.
    pub fn request_refresh(&self, uid: &str, id: &str) {
        self.with(|inner| {
            inner
                .refresh
                .entry(uid.to_string())
                .or_default()
                .push(id.to_string());
        });
    }

    /// The refreshes asked for since the last call: container IDs by pod UID.
    pub fn take_refresh_requests(&self) -> HashMap<String, Vec<String>> {
        self.with(|inner| std::mem::take(&mut inner.refresh))
    }

    /// Waits until a worker waits for a newer state of some pod.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// The pods workers wait for a newer state of, since the last call.
    pub fn take_wanted(&self) -> HashSet<String> {
        self.with(|inner| std::mem::take(&mut inner.wanted))
    }

    /// The UIDs the cache holds an entry for.
    #[cfg(test)]
    fn uids(&self) -> Vec<String> {
        self.with(|inner| inner.pods.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kuberuntime::observe::{ObservedSandbox, SandboxState};
    use std::time::Duration;

    fn one_sandbox() -> ObservedPod {
        ObservedPod {
            sandboxes: vec![ObservedSandbox {
                id: "s".into(),
                attempt: 0,
                state: SandboxState::Ready,
                created_at: 1,
                ips: vec![],
            }],
            containers: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_waits_for_a_state_read_after_its_action() {
        let cache = PodCache::default();
        let t0 = Instant::now();
        cache.set("a", one_sandbox(), t0);
        cache.complete(t0);
        assert!(cache.get_if_newer("a", None).is_some());
        tokio::time::advance(Duration::from_millis(10)).await;
        let acted = Instant::now();
        assert!(cache.get_if_newer("a", Some(acted)).is_none());

        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_newer_than("a", Some(acted)).await })
        };
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        tokio::time::advance(Duration::from_millis(10)).await;
        // A relist that started after the action completes without any change to the pod.
        let t1 = Instant::now();
        cache.complete(t1);
        let got = reader.await.expect("reader");
        assert_eq!(*got.observed, one_sandbox());
        assert_eq!(got.read_at, t0);
    }

    #[test]
    fn refresh_requests_are_handed_out_once() {
        let cache = PodCache::default();
        cache.request_refresh("a", "c1");
        cache.request_refresh("a", "c2");
        cache.request_refresh("b", "c3");
        let mut taken: Vec<(String, Vec<String>)> =
            cache.take_refresh_requests().into_iter().collect();
        taken.sort();
        assert_eq!(
            taken,
            vec![
                ("a".to_string(), vec!["c1".to_string(), "c2".to_string()]),
                ("b".to_string(), vec!["c3".to_string()]),
            ]
        );
        assert!(cache.take_refresh_requests().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_pod_is_empty_once_a_relist_completed() {
        let cache = PodCache::default();
        assert!(cache.get_if_newer("x", None).is_none());
        cache.complete(Instant::now());
        let got = cache.get_if_newer("x", None).expect("complete");
        assert_eq!(*got.observed, ObservedPod::default());
        // An empty state read for one pod answers a reader waiting for it...
        let before = Instant::now();
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        cache.set("a", one_sandbox(), Instant::now());
        cache.set("a", ObservedPod::default(), Instant::now());
        let got = cache.get_if_newer("a", Some(before)).expect("read after");
        assert!(got.observed.is_empty());
        // ...and is dropped once a complete relist says as much of every pod it does not hold.
        cache.complete(Instant::now());
        assert!(cache.uids().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_asks_for_its_pod() {
        let cache = PodCache::default();
        let t0 = Instant::now();
        cache.complete(t0);
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_newer_than("a", Some(t0)).await })
        };
        // The PLEG is told, and a state of that pod read now answers the reader.
        cache.wanted().await;
        assert_eq!(cache.take_wanted(), HashSet::from(["a".to_string()]));
        cache.set("a", one_sandbox(), Instant::now());
        let got = reader.await.expect("reader");
        assert_eq!(*got.observed, one_sandbox());
        assert!(cache.take_wanted().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_keeps_the_last_state_and_is_reported() {
        let cache = PodCache::default();
        let t0 = Instant::now();
        cache.set("a", one_sandbox(), t0);
        tokio::time::advance(Duration::from_millis(5)).await;
        cache.set_error("a", "boom".into(), Instant::now());
        let got = cache.get_if_newer("a", Some(t0)).expect("newer");
        assert_eq!(got.error.as_deref(), Some("boom"));
        assert_eq!(*got.observed, one_sandbox());
    }
}
