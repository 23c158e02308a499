//! The garbage collection loop against the fake CRI runtime. The image filesystem is measured by
//! a stand-in for statvfs: a fixed capacity holding nothing but the fake's images.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mk_cri::{CriClient, api};
use mk_fake_runtime::{FakeRuntime, Op, ServerHandle};

use super::manager::{classify, normalize_reference, sandbox_images};
use super::*;
use crate::test_cri;

const MI: u64 = 1024 * 1024;

struct Harness {
    _dir: tempfile::TempDir,
    fake: FakeRuntime,
    _server: ServerHandle,
    cri: CriClient,
}

impl Harness {
    fn start() -> Self {
        let test_cri::FakeCri {
            dir,
            fake,
            server,
            cri,
        } = test_cri::serve_fake(&[]);
        Self {
            _dir: dir,
            fake,
            _server: server,
            cri,
        }
    }

    /// A manager whose image filesystem is `capacity` bytes holding only the fake's images.
    fn manager(&self, policy: ImageGcPolicy, capacity: u64) -> ImageGcManager {
        let fake = self.fake.clone();
        ImageGcManager::new(self.cri.clone(), policy).with_fs_stat(Arc::new(move |_| {
            let used: u64 = fake.images().iter().map(|i| i.size).sum();
            Ok(FsUsage {
                capacity,
                available: capacity.saturating_sub(used),
            })
        }))
    }

    /// Runs a container of `image` in a new sandbox of `pod` (labelled for another node: any
    /// container of the runtime keeps its image).
    async fn run_container(&self, pod: &str, image: &str) -> String {
        let config = api::PodSandboxConfig {
            labels: HashMap::from([(
                crate::kuberuntime::labels::NODE_NAME.to_string(),
                "another-node".to_string(),
            )]),
            ..test_cri::sandbox_config(pod)
        };
        let sandbox = test_cri::run_sandbox(&self.cri, &config).await;
        let container = test_cri::sleeping_container("main", 0, image);
        test_cri::start_container(&self.cri, &sandbox, &config, container).await
    }

    async fn remove_container(&self, id: &str) {
        self.cri
            .remove_container(api::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("remove container");
    }
}

fn policy(high: u8, low: u8, min_age: Duration, max_age: Duration) -> ImageGcPolicy {
    ImageGcPolicy {
        high_threshold_percent: high,
        low_threshold_percent: low,
        min_age,
        max_age,
    }
}

fn removed_ids(round: &Round) -> Vec<&str> {
    round.removed.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test]
async fn over_the_threshold_unused_images_go_least_recently_used_first() {
    let h = Harness::start();
    let pause = h.fake.add_image_with_size("registry.k8s.io/pause:3.10", MI);
    assert!(h.fake.set_image_pinned("registry.k8s.io/pause:3.10", true));
    let busybox = h.fake.add_image_with_size("busybox:1.36", 10 * MI);
    let stopped = h.fake.add_image_with_size("nginx:1", 10 * MI);
    let old1 = h.fake.add_image_with_size("old:1", 20 * MI);
    let old2 = h.fake.add_image_with_size("old:2", 20 * MI);
    // Both never used and first detected in the same round: the tie is broken by ID.
    let (first, second) = if old1 < old2 {
        (old1, old2)
    } else {
        (old2, old1)
    };
    h.run_container("web", "busybox:1.36").await;
    let exited = h.run_container("job", "nginx:1").await;
    h.cri
        .stop_container(api::StopContainerRequest {
            container_id: exited,
            timeout: 0,
        })
        .await
        .expect("stop");
    // 61 MiB of 100: 61% ≥ 60%; down to below 50% frees at least 11 MiB: one old image.
    let gc = h.manager(policy(60, 50, Duration::ZERO, Duration::ZERO), 100 * MI);
    let round = gc.garbage_collect(SystemTime::now()).await.expect("round");
    assert_eq!(round.images, 5);
    assert_eq!(round.usage_percent, 61);
    assert_eq!(round.bytes_to_free, 11 * MI);
    assert_eq!(removed_ids(&round), vec![first.as_str()], "{round:?}");
    assert_eq!(round.freed, 20 * MI);
    assert_eq!(round.shortfall(), 0);
    assert!(round.removed.iter().all(|r| r.reason == Reason::Space));
    for kept in [&pause, &busybox, &stopped, &second] {
        assert!(h.fake.has_image(kept), "{kept} kept");
    }
    assert!(!h.fake.has_image(&first));

    // Everything unused: only the pinned image and the ones containers use (running or
    // exited) are left; what could not be freed is the shortfall.
    let all = h.manager(policy(1, 0, Duration::ZERO, Duration::ZERO), 100 * MI);
    let round = all.garbage_collect(SystemTime::now()).await.expect("round");
    assert_eq!(removed_ids(&round), vec![second.as_str()]);
    assert_eq!(round.bytes_to_free, 41 * MI);
    assert_eq!(round.shortfall(), 21 * MI);
    let left: Vec<String> = h.fake.images().into_iter().map(|i| i.id).collect();
    assert_eq!(left.len(), 3);
    for kept in [&pause, &busybox, &stopped] {
        assert!(left.contains(kept), "{kept} kept");
    }
}

#[tokio::test]
async fn under_the_threshold_nothing_is_removed() {
    let h = Harness::start();
    h.fake.add_image_with_size("a:1", 10 * MI);
    h.fake.add_image_with_size("b:1", 10 * MI);
    let gc = h.manager(policy(85, 80, Duration::ZERO, Duration::ZERO), 100 * MI);
    let round = gc.garbage_collect(SystemTime::now()).await.expect("round");
    assert_eq!(round.usage_percent, 20);
    assert_eq!(round.bytes_to_free, 0);
    assert!(round.removed.is_empty());
    assert_eq!(h.fake.call_count(Op::RemoveImage), 0);
}

#[tokio::test]
async fn images_younger_than_the_minimum_age_wait() {
    let h = Harness::start();
    let young = h.fake.add_image_with_size("young:1", 50 * MI);
    let gc = h.manager(
        policy(10, 5, Duration::from_secs(120), Duration::ZERO),
        100 * MI,
    );
    let start = SystemTime::now();
    let round = gc.garbage_collect(start).await.expect("round");
    assert!(round.removed.is_empty(), "first seen now: too young");
    assert_eq!(round.shortfall(), round.bytes_to_free);
    let round = gc
        .garbage_collect(start + Duration::from_secs(119))
        .await
        .expect("round");
    assert!(round.removed.is_empty(), "119 s old");
    let round = gc
        .garbage_collect(start + Duration::from_secs(120))
        .await
        .expect("round");
    assert_eq!(removed_ids(&round), vec![young.as_str()]);
    assert!(!h.fake.has_image(&young));
}

#[tokio::test]
async fn images_unused_past_the_maximum_age_go_whatever_the_usage() {
    let h = Harness::start();
    let idle = h.fake.add_image_with_size("idle:1", MI);
    let used = h.fake.add_image_with_size("used:1", MI);
    let container = h.run_container("p", "used:1").await;
    let start = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let gc = h
        .manager(policy(85, 80, Duration::ZERO, hour), 1000 * MI)
        .with_began(start);
    assert!(
        gc.garbage_collect(start)
            .await
            .expect("round")
            .removed
            .is_empty()
    );
    h.remove_container(&container).await;
    // Not before an hour has passed since GC began.
    let round = gc.garbage_collect(start + hour).await.expect("round");
    assert!(round.removed.is_empty());
    let round = gc
        .garbage_collect(start + hour + Duration::from_secs(1))
        .await
        .expect("round");
    assert_eq!(round.bytes_to_free, 0, "far under the high threshold");
    assert_eq!(removed_ids(&round), vec![idle.as_str(), used.as_str()]);
    assert!(round.removed.iter().all(|r| r.reason == Reason::Age));
    assert!(h.fake.images().is_empty());
}

#[tokio::test]
async fn the_last_use_is_remembered_between_rounds() {
    let h = Harness::start();
    let was_used = h.fake.add_image_with_size("was-used:1", 10 * MI);
    let container = h.run_container("p", "was-used:1").await;
    let never = h.fake.add_image_with_size("never:1", 10 * MI);
    let gc = h.manager(policy(15, 10, Duration::ZERO, Duration::ZERO), 100 * MI);
    let start = SystemTime::now();
    let round = gc.garbage_collect(start).await.expect("round");
    assert_eq!(removed_ids(&round), vec![never.as_str()]);
    h.fake.add_image_with_size("never:2", 10 * MI);
    h.remove_container(&container).await;
    // Both unused now: the one never used goes first, although detected later.
    let round = gc
        .garbage_collect(start + Duration::from_secs(300))
        .await
        .expect("round");
    assert_eq!(round.bytes_to_free, 10 * MI);
    assert!(h.fake.has_image(&was_used));
    assert!(!h.fake.has_image("never:2"));
}

#[tokio::test]
async fn a_failed_removal_is_counted_and_the_next_image_takes_its_place() {
    let h = Harness::start();
    let first = h.fake.add_image_with_size("a:1", 30 * MI);
    let second = h.fake.add_image_with_size("b:1", 30 * MI);
    let gc = h.manager(policy(50, 40, Duration::ZERO, Duration::ZERO), 100 * MI);
    // Both first detected now: ties are broken by ID.
    let (first, second) = if first < second {
        (first, second)
    } else {
        (second, first)
    };
    h.fake.fail_next(Op::RemoveImage, tonic::Code::Internal);
    let round = gc.garbage_collect(SystemTime::now()).await.expect("round");
    assert_eq!(round.failed, 1);
    assert_eq!(removed_ids(&round), vec![second.as_str()]);
    assert_eq!(round.shortfall(), 0);
    assert!(h.fake.has_image(&first));
    // The next round picks the image up again.
    let round = gc.garbage_collect(SystemTime::now()).await.expect("round");
    assert_eq!(round.bytes_to_free, 0, "30% < 50%");
}

#[tokio::test]
async fn runtime_failures_end_the_round_with_an_error() {
    let h = Harness::start();
    h.fake.add_image_with_size("a:1", 90 * MI);
    let gc = h.manager(policy(50, 40, Duration::ZERO, Duration::ZERO), 100 * MI);
    h.fake.fail_next(Op::ListImages, tonic::Code::Unavailable);
    assert!(matches!(
        gc.garbage_collect(SystemTime::now()).await,
        Err(GcError::ListImages(_))
    ));
    h.fake.fail_next(Op::ImageFsInfo, tonic::Code::Internal);
    assert!(matches!(
        gc.garbage_collect(SystemTime::now()).await,
        Err(GcError::ImageFsInfo(_))
    ));
    let zero = h
        .manager(policy(50, 40, Duration::ZERO, Duration::ZERO), 0)
        .with_fs_stat(Arc::new(|_| {
            Ok(FsUsage {
                capacity: 0,
                available: 0,
            })
        }));
    assert!(matches!(
        zero.garbage_collect(SystemTime::now()).await,
        Err(GcError::InvalidCapacity { .. })
    ));
    let missing = h
        .manager(policy(50, 40, Duration::ZERO, Duration::ZERO), 0)
        .with_fs_stat(Arc::new(|_| Err(nix::errno::Errno::ENOENT)));
    match missing.garbage_collect(SystemTime::now()).await {
        Err(GcError::Statvfs { mountpoint, .. }) => assert_eq!(
            mountpoint,
            std::path::Path::new(mk_fake_runtime::IMAGE_FS_MOUNTPOINT)
        ),
        other => panic!("expected a statvfs error, got {other:?}"),
    }
    assert_eq!(h.fake.images().len(), 1, "nothing removed");
}

#[test]
fn statvfs_measures_a_real_filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let usage = manager::statvfs_usage(dir.path()).expect("statvfs");
    assert!(usage.capacity > 0);
    assert!(usage.available <= usage.capacity);
}

#[test]
fn sandbox_images_from_the_runtime_status() {
    let info = HashMap::from([
        ("podInfraImage".to_string(), "registry.k8s.io/pause:3.10".to_string()),
        (
            "config".to_string(),
            r#"{"sandboxImage":"mini-kubelet.local/pause:3.10","pinnedImages":{"sandbox":"x/pause:1"}}"#
                .to_string(),
        ),
    ]);
    assert_eq!(
        sandbox_images(&info),
        vec![
            "registry.k8s.io/pause:3.10",
            "mini-kubelet.local/pause:3.10",
            "x/pause:1"
        ]
    );
    assert!(sandbox_images(&HashMap::new()).is_empty());
    let garbled = HashMap::from([("config".to_string(), "not json".to_string())]);
    assert!(sandbox_images(&garbled).is_empty());
}

#[test]
fn references_are_normalized_like_docker() {
    let hex = "a".repeat(64);
    for (reference, normalized) in [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        (
            "docker.io/library/busybox:1.36",
            "docker.io/library/busybox:1.36",
        ),
        ("quay.io/x/y", "quay.io/x/y:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost/app:2", "localhost/app:2"),
        ("busybox@sha256:bb", "docker.io/library/busybox@sha256:bb"),
        ("sha256:abc", "sha256:abc"),
    ] {
        assert_eq!(normalize_reference(reference), normalized, "{reference}");
    }
    assert_eq!(normalize_reference(&hex), format!("sha256:{hex}"));
}

#[test]
fn containers_keep_their_images_by_id_or_by_name() {
    let image = |id: &str, tag: &str, pinned: bool| api::Image {
        id: id.into(),
        repo_tags: vec![tag.into()],
        repo_digests: vec![format!(
            "{}@sha256:d{id}",
            tag.split(':').next().unwrap_or("")
        )],
        size: MI,
        pinned,
        ..Default::default()
    };
    let images = vec![
        image("sha256:1", "docker.io/library/busybox:1.36", false),
        image("sha256:2", "docker.io/library/nginx:1", false),
        image("sha256:3", "mini-kubelet.local/pause:3.10", false),
        image("sha256:4", "registry.k8s.io/pause:3.9", true),
        image("sha256:5", "docker.io/library/redis:7", false),
        image("sha256:6", "docker.io/library/alpine:3", false),
    ];
    let container = |image_ref: &str, spec: &str| api::Container {
        image_ref: image_ref.into(),
        image: Some(api::ImageSpec {
            image: spec.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let containers = vec![
        container("sha256:1", "sha256:1"),
        // The Docker adapter's image_ref can be a digest; the spec the name it was created from.
        container("docker.io/library/nginx@sha256:dsha256:2", ""),
        container("", "redis:7"),
    ];
    let listed = classify(
        &images,
        &containers,
        &["mini-kubelet.local/pause:3.10".to_string()],
    );
    let flags: Vec<(bool, bool)> = listed.iter().map(|l| (l.in_use, l.protected)).collect();
    assert_eq!(
        flags,
        vec![
            (true, false),
            (true, false),
            (false, true),
            (false, true),
            (true, false),
            (false, false),
        ]
    );
}

#[test]
fn a_high_threshold_of_100_turns_gc_off() {
    let config = crate::config::KubeletConfiguration {
        image_gc_high_threshold_percent: 100,
        ..Default::default()
    };
    assert!(!ImageGcPolicy::from_config(&config).enabled());
    let default = ImageGcPolicy::from_config(&crate::config::KubeletConfiguration::default());
    assert!(default.enabled());
    assert_eq!(
        (
            default.high_threshold_percent,
            default.low_threshold_percent
        ),
        (85, 80)
    );
    assert_eq!(default.min_age, Duration::from_secs(120));
    assert!(default.max_age.is_zero());
}

/// kubelet's `DeleteUnusedImages`, the eviction manager's disk reclaim: every unused image past
/// imageMinimumGCAge goes, whatever the thresholds (even with garbage collection off), and the
/// minimum age counts from the first sighting of the manager's periodic rounds, which it shares.
#[tokio::test]
async fn delete_unused_images_removes_every_unused_image_past_the_minimum_age() {
    let h = Harness::start();
    let pause = h.fake.add_image_with_size("registry.k8s.io/pause:3.10", MI);
    assert!(h.fake.set_image_pinned("registry.k8s.io/pause:3.10", true));
    let used = h.fake.add_image_with_size("busybox:1.36", 10 * MI);
    let unused1 = h.fake.add_image_with_size("old:1", 20 * MI);
    let unused2 = h.fake.add_image_with_size("old:2", 20 * MI);
    h.run_container("web", "busybox:1.36").await;

    // Off (high threshold 100) and a minimum age of an hour: a first reclaim only records.
    let min_age = Duration::from_secs(3600);
    let gc = h.manager(policy(100, 80, min_age, Duration::ZERO), 100 * MI);
    assert_eq!(
        gc.delete_unused_images().await.expect("reclaim"),
        Vec::new(),
        "nothing is old enough yet"
    );
    // A periodic round an hour and a second ago saw them first: the reclaim may now remove them.
    let earlier = SystemTime::now() - min_age - Duration::from_secs(1);
    let fresh = h.manager(policy(100, 80, min_age, Duration::ZERO), 100 * MI);
    let round = fresh.garbage_collect(earlier).await.expect("round");
    assert!(round.removed.is_empty(), "off: the round only records");
    let removed = fresh.delete_unused_images().await.expect("reclaim");
    let mut ids: Vec<&str> = removed.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![unused1.as_str(), unused2.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    for kept in [&pause, &used] {
        assert!(h.fake.has_image(kept), "{kept} kept");
    }
    assert!(!h.fake.has_image(&unused1) && !h.fake.has_image(&unused2));
}
