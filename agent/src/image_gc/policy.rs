//! The pure half of image garbage collection: what the manager knows of each image (first seen,
//! last seen in use), and which images to remove, in which order, given the image filesystem's
//! usage, the clock and the policy. No I/O here.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::config::KubeletConfiguration;

/// kubelet's `ImageGCPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGcPolicy {
    /// Collect when the image filesystem's usage reaches this percentage.
    pub high_threshold_percent: u8,
    /// Free down to below this percentage.
    pub low_threshold_percent: u8,
    /// Never remove an image first seen less than this long ago.
    pub min_age: Duration,
    /// Remove images unused for longer than this, whatever the usage (zero: never).
    pub max_age: Duration,
}

impl ImageGcPolicy {
    /// The policy of a validated configuration (out-of-range percentages are clamped).
    pub fn from_config(config: &KubeletConfiguration) -> Self {
        let percent = |p: i32| u8::try_from(p.clamp(0, 100)).unwrap_or(100);
        Self {
            high_threshold_percent: percent(config.image_gc_high_threshold_percent),
            low_threshold_percent: percent(config.image_gc_low_threshold_percent),
            min_age: config.image_minimum_gc_age,
            max_age: config.image_maximum_gc_age,
        }
    }

    /// kubelet starts no image garbage collection at all when the high threshold is 100.
    pub fn enabled(&self) -> bool {
        self.high_threshold_percent < 100
    }
}

/// An image as a garbage collection round sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    /// The runtime's image ID.
    pub id: String,
    pub size: u64,
    /// When the manager first listed the image.
    pub first_detected: SystemTime,
    /// When a container was last seen using it; None if never.
    pub last_used: Option<SystemTime>,
    /// A container in the runtime uses it now.
    pub in_use: bool,
    /// Never collected: pinned by the runtime, or the sandbox (pause) image.
    pub protected: bool,
}

/// What the images listed in a round are, for [`ImageRecords::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    pub id: String,
    pub size: u64,
    pub in_use: bool,
    pub protected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    first_detected: SystemTime,
    last_used: Option<SystemTime>,
}

/// kubelet's `imageRecords`: per image ID, when it was first detected and last seen in use. In
/// memory only, as kubelet's: after a restart every image counts as new.
#[derive(Debug, Clone, Default)]
pub struct ImageRecords {
    records: HashMap<String, Record>,
}

impl ImageRecords {
    /// Records a listing taken at `now` and returns the images with what is known of them. Images
    /// no longer listed are forgotten.
    pub fn detect(&mut self, listed: &[ListedImage], now: SystemTime) -> Vec<ImageState> {
        let present: HashSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
        self.records.retain(|id, _| present.contains(id.as_str()));
        listed
            .iter()
            .map(|image| {
                let record = self.records.entry(image.id.clone()).or_insert(Record {
                    first_detected: now,
                    last_used: None,
                });
                if image.in_use {
                    record.last_used = Some(now);
                }
                ImageState {
                    id: image.id.clone(),
                    size: image.size,
                    first_detected: record.first_detected,
                    last_used: record.last_used,
                    in_use: image.in_use,
                    protected: image.protected,
                }
            })
            .collect()
    }

    /// Forgets a removed image.
    pub fn forget(&mut self, id: &str) {
        self.records.remove(id);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Why an image is removed (kubelet's `image_garbage_collected_total` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Unused for longer than imageMaximumGCAge.
    Age,
    /// The image filesystem is over the high threshold.
    Space,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Space => "space",
        }
    }
}

/// One image to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub id: String,
    pub size: u64,
    pub reason: Reason,
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// May the image be removed at all: not in use now, not protected.
fn collectable(image: &ImageState) -> bool {
    !image.in_use && !image.protected
}

/// kubelet's `freeOldImages`: the unused images not used for longer than `max_age` (never used:
/// since first detected), once `max_age` has passed since garbage collection began (the
/// records are in memory: before that, "unused" only means "not seen in use since start").
/// Empty when `max_age` is zero.
pub fn old_images(
    policy: &ImageGcPolicy,
    images: &[ImageState],
    now: SystemTime,
    began: SystemTime,
) -> Vec<Removal> {
    if policy.max_age.is_zero() || since(now, began) <= policy.max_age {
        return Vec::new();
    }
    let mut old: Vec<&ImageState> = images
        .iter()
        .filter(|i| collectable(i))
        .filter(|i| since(now, i.last_used.unwrap_or(i.first_detected)) > policy.max_age)
        .collect();
    old.sort_by(|a, b| eviction_order(a, b));
    old.into_iter()
        .map(|i| Removal {
            id: i.id.clone(),
            size: i.size,
            reason: Reason::Age,
        })
        .collect()
}

/// The image filesystem's size, as statvfs gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    pub available: u64,
}

impl FsUsage {
    /// kubelet's `100 - available*100/capacity` (integer division: rounds the usage up); None
    /// for a zero capacity.
    pub fn usage_percent(&self) -> Option<u64> {
        if self.capacity == 0 {
            return None;
        }
        let available = u128::from(self.available.min(self.capacity));
        let free_percent = available * 100 / u128::from(self.capacity);
        Some(100 - u64::try_from(free_percent).unwrap_or(100))
    }
}

/// Why no space plan could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid capacity 0 on image filesystem")]
    InvalidCapacity,
}

/// What freeing space takes, when the image filesystem is over the high threshold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpacePlan {
    pub usage_percent: u64,
    /// Zero when under the high threshold.
    pub bytes_to_free: u64,
    /// Every collectable image old enough, in eviction order (least recently used first, ties:
    /// first detected first). Remove them in order until `bytes_to_free` bytes are freed: when
    /// a removal fails, the next one takes its place.
    pub candidates: Vec<Removal>,
}

impl SpacePlan {
    /// The candidates a round removes when every removal succeeds.
    pub fn planned(&self) -> &[Removal] {
        let mut freed = 0u64;
        let mut count = 0;
        for removal in &self.candidates {
            if freed >= self.bytes_to_free {
                break;
            }
            freed = freed.saturating_add(removal.size);
            count += 1;
        }
        &self.candidates[..count]
    }

    /// The bytes the candidates free at most.
    pub fn eligible_bytes(&self) -> u64 {
        self.candidates
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.size))
    }
}

/// kubelet's space-based collection: when the usage is at or over the high threshold, free
/// `capacity × (100 − low)% − available` bytes with the unused, unprotected images first detected
/// at least `min_age` ago, least recently used first.
pub fn free_space(
    policy: &ImageGcPolicy,
    fs: FsUsage,
    images: &[ImageState],
    now: SystemTime,
) -> Result<SpacePlan, PlanError> {
    let usage_percent = fs.usage_percent().ok_or(PlanError::InvalidCapacity)?;
    if usage_percent < u64::from(policy.high_threshold_percent) {
        return Ok(SpacePlan {
            usage_percent,
            ..SpacePlan::default()
        });
    }
    let target =
        u128::from(fs.capacity) * u128::from(100 - policy.low_threshold_percent.min(100)) / 100;
    let available = u128::from(fs.available.min(fs.capacity));
    let bytes_to_free = u64::try_from(target.saturating_sub(available)).unwrap_or(u64::MAX);
    Ok(SpacePlan {
        usage_percent,
        bytes_to_free,
        candidates: unused_images(policy, images, now),
    })
}

/// The images that may go to free space, in the order they go: not in use, not protected, first
/// seen at least `imageMinimumGCAge` ago, least recently used first. What a round over the high
/// threshold removes until it has freed enough, and what kubelet's `DeleteUnusedImages` (the
/// eviction manager's disk reclaim) removes entirely.
pub fn unused_images(
    policy: &ImageGcPolicy,
    images: &[ImageState],
    now: SystemTime,
) -> Vec<Removal> {
    let mut eligible: Vec<&ImageState> = images
        .iter()
        .filter(|i| collectable(i))
        .filter(|i| since(now, i.first_detected) >= policy.min_age)
        .collect();
    eligible.sort_by(|a, b| eviction_order(a, b));
    eligible
        .into_iter()
        .map(|i| Removal {
            id: i.id.clone(),
            size: i.size,
            reason: Reason::Space,
        })
        .collect()
}

/// kubelet's `byLastUsedAndDetected`: never used before used, least recently used first, ties
/// broken by first detected (then by ID, so the order is total).
fn eviction_order(a: &ImageState, b: &ImageState) -> std::cmp::Ordering {
    a.last_used
        .cmp(&b.last_used)
        .then(a.first_detected.cmp(&b.first_detected))
        .then_with(|| a.id.cmp(&b.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn policy(high: u8, low: u8, min_age: u64, max_age: u64) -> ImageGcPolicy {
        ImageGcPolicy {
            high_threshold_percent: high,
            low_threshold_percent: low,
            min_age: Duration::from_secs(min_age),
            max_age: Duration::from_secs(max_age),
        }
    }

    fn image(id: &str, size: u64, detected: u64, used: Option<u64>) -> ImageState {
        ImageState {
            id: id.into(),
            size,
            first_detected: t(detected),
            last_used: used.map(t),
            in_use: false,
            protected: false,
        }
    }

    fn ids(removals: &[Removal]) -> Vec<&str> {
        removals.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn usage_percent_is_kubelets() {
        for (capacity, available, usage) in [
            (100, 100, Some(0)),
            (100, 0, Some(100)),
            (100, 15, Some(85)),
            (100, 151, Some(0)),
            (1000, 155, Some(85)), // 15.5% free: 100 - 15
            (3, 1, Some(67)),
            (0, 0, None),
            (u64::MAX, u64::MAX / 2, Some(51)),
        ] {
            assert_eq!(
                FsUsage {
                    capacity,
                    available
                }
                .usage_percent(),
                usage,
                "{capacity} {available}"
            );
        }
    }

    #[test]
    fn space_plans() {
        struct Case {
            name: &'static str,
            policy: ImageGcPolicy,
            fs: FsUsage,
            images: Vec<ImageState>,
            now: u64,
            bytes_to_free: u64,
            candidates: Vec<&'static str>,
            planned: Vec<&'static str>,
        }
        let fs = |capacity: u64, available: u64| FsUsage {
            capacity: capacity * MI,
            available: available * MI,
        };
        let in_use = |mut i: ImageState| {
            i.in_use = true;
            i.last_used = Some(t(1000));
            i
        };
        let protected = |mut i: ImageState| {
            i.protected = true;
            i
        };
        let cases = vec![
            Case {
                name: "under the high threshold: nothing",
                policy: policy(85, 80, 0, 0),
                fs: fs(100, 16),
                images: vec![image("a", MI, 0, None)],
                now: 1000,
                bytes_to_free: 0,
                candidates: vec![],
                planned: vec![],
            },
            Case {
                name: "at the high threshold: down to below the low one, LRU first",
                policy: policy(85, 80, 0, 0),
                fs: fs(100, 15),
                images: vec![
                    image("recent", 3 * MI, 0, Some(900)),
                    image("never", 3 * MI, 10, None),
                    image("old", 3 * MI, 0, Some(100)),
                ],
                now: 1000,
                bytes_to_free: 5 * MI,
                candidates: vec!["never", "old", "recent"],
                planned: vec!["never", "old"],
            },
            Case {
                name: "ties broken by first detected",
                policy: policy(50, 40, 0, 0),
                fs: fs(100, 10),
                images: vec![
                    image("b", MI, 20, Some(500)),
                    image("a", MI, 10, Some(500)),
                    image("c", MI, 5, Some(600)),
                ],
                now: 1000,
                bytes_to_free: 50 * MI,
                candidates: vec!["a", "b", "c"],
                planned: vec!["a", "b", "c"],
            },
            Case {
                name: "in use, protected and young images are skipped",
                policy: policy(85, 80, 120, 0),
                fs: fs(100, 0),
                images: vec![
                    in_use(image("used", 5 * MI, 0, None)),
                    protected(image("pause", MI, 0, None)),
                    image("young", 2 * MI, 900, None),
                    image("just-old-enough", 2 * MI, 880, None),
                ],
                now: 1000,
                bytes_to_free: 20 * MI,
                candidates: vec!["just-old-enough"],
                planned: vec!["just-old-enough"],
            },
            Case {
                name: "one big image is enough",
                policy: policy(90, 10, 0, 0),
                fs: fs(100, 5),
                images: vec![
                    image("small", MI, 0, Some(10)),
                    image("big", 90 * MI, 0, Some(5)),
                ],
                now: 1000,
                bytes_to_free: 85 * MI,
                candidates: vec!["big", "small"],
                planned: vec!["big"],
            },
            Case {
                name: "high 1 low 0: everything unused goes",
                policy: policy(1, 0, 0, 0),
                fs: fs(100, 98),
                images: vec![image("x", MI, 0, None), image("y", MI, 1, None)],
                now: 0,
                bytes_to_free: 2 * MI,
                candidates: vec!["x", "y"],
                planned: vec!["x", "y"],
            },
            Case {
                name: "available above capacity counts as empty",
                policy: policy(0, 0, 0, 0),
                fs: fs(100, 200),
                images: vec![image("x", MI, 0, None)],
                now: 0,
                bytes_to_free: 0,
                candidates: vec!["x"],
                planned: vec![],
            },
        ];
        for case in cases {
            let plan = free_space(&case.policy, case.fs, &case.images, t(case.now))
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(plan.bytes_to_free, case.bytes_to_free, "{}", case.name);
            assert_eq!(ids(&plan.candidates), case.candidates, "{}", case.name);
            assert_eq!(ids(plan.planned()), case.planned, "{}", case.name);
            assert!(plan.candidates.iter().all(|r| r.reason == Reason::Space));
        }
    }

    #[test]
    fn zero_capacity_is_an_error() {
        let zero = FsUsage {
            capacity: 0,
            available: 0,
        };
        assert_eq!(
            free_space(&policy(85, 80, 0, 0), zero, &[], t(0)),
            Err(PlanError::InvalidCapacity)
        );
    }

    #[test]
    fn old_images_wait_for_max_age_since_start() {
        let p = policy(85, 80, 60, 3600);
        let images = vec![
            image("never-used", MI, 0, None),
            image("used-long-ago", MI, 0, Some(100)),
            image("used-lately", MI, 0, Some(3000)),
            image("new", MI, 3000, None),
            ImageState {
                in_use: true,
                ..image("running", MI, 0, Some(4000))
            },
            ImageState {
                protected: true,
                ..image("pinned", MI, 0, None)
            },
        ];
        // Not before max age has passed since GC began.
        assert!(old_images(&p, &images, t(3600), t(0)).is_empty());
        let old = old_images(&p, &images, t(3800), t(0));
        assert_eq!(ids(&old), vec!["never-used", "used-long-ago"]);
        assert!(old.iter().all(|r| r.reason == Reason::Age));
        // Off when max age is zero.
        assert!(old_images(&policy(85, 80, 0, 0), &images, t(99_999), t(0)).is_empty());
    }

    #[test]
    fn records_remember_first_detection_and_last_use() {
        let mut records = ImageRecords::default();
        let listed = |id: &str, in_use: bool| ListedImage {
            id: id.into(),
            size: MI,
            in_use,
            protected: false,
        };
        let first = records.detect(&[listed("a", false), listed("b", true)], t(0));
        assert_eq!(first[0].first_detected, t(0));
        assert_eq!(first[0].last_used, None);
        assert_eq!(first[1].last_used, Some(t(0)));
        let second = records.detect(&[listed("a", true), listed("b", false)], t(300));
        assert_eq!(second[0].first_detected, t(0));
        assert_eq!(second[0].last_used, Some(t(300)));
        assert_eq!(
            second[1].last_used,
            Some(t(0)),
            "kept from the last sighting"
        );
        assert!(!second[1].in_use);
        // Gone images are forgotten; when they come back they are new.
        records.detect(&[listed("a", false)], t(600));
        assert_eq!(records.len(), 1);
        let back = records.detect(&[listed("a", false), listed("b", false)], t(900));
        assert_eq!(back[1].first_detected, t(900));
        assert_eq!(back[1].last_used, None);
        records.forget("a");
        assert_eq!(records.len(), 1);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn arb_image(index: usize) -> impl Strategy<Value = ImageState> {
            (
                1..50u64,
                0..1000u64,
                proptest::option::of(0..1000u64),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(move |(size, detected, used, in_use, protected)| {
                    ImageState {
                        id: format!("sha256:{index:04}"),
                        size: size * MI,
                        first_detected: t(detected),
                        last_used: used.map(|u| t(u.max(detected))),
                        in_use,
                        protected,
                    }
                })
        }

        fn arb_images() -> impl Strategy<Value = Vec<ImageState>> {
            (0..12usize).prop_flat_map(|n| (0..n).map(arb_image).collect::<Vec<_>>())
        }

        proptest! {
            #[test]
            fn space_plan_is_safe_and_sufficient(
                images in arb_images(),
                high in 0..=99u8,
                low_below in 1..=100u8,
                min_age in 0..1500u64,
                capacity in 1..2000u64,
                available_fraction in 0..=100u64,
            ) {
                let low = high.saturating_sub(low_below);
                let p = policy(high, low, min_age, 0);
                let fs = FsUsage { capacity: capacity * MI, available: capacity * MI * available_fraction / 100 };
                let now = t(1000);
                let plan = free_space(&p, fs, &images, now).expect("capacity > 0");
                // Never an image in use, protected, or younger than the minimum age.
                for removal in &plan.candidates {
                    let image = images.iter().find(|i| i.id == removal.id).expect("listed");
                    prop_assert!(!image.in_use && !image.protected);
                    prop_assert!(since(now, image.first_detected) >= p.min_age);
                }
                // Over the high threshold, every eligible image is a candidate, in LRU order.
                let over = plan.usage_percent >= u64::from(high);
                let eligible = images.iter().filter(|i| collectable(i) && since(now, i.first_detected) >= p.min_age).count();
                prop_assert_eq!(plan.candidates.len(), if over { eligible } else { 0 });
                for pair in plan.candidates.windows(2) {
                    let a = images.iter().find(|i| i.id == pair[0].id).expect("listed");
                    let b = images.iter().find(|i| i.id == pair[1].id).expect("listed");
                    prop_assert!((a.last_used, a.first_detected) <= (b.last_used, b.first_detected));
                }
                // Over the high threshold: the planned removals free enough when the candidates
                // can, and no more images than needed.
                let planned = plan.planned();
                let freed: u64 = planned.iter().map(|r| r.size).sum();
                if over {
                    prop_assert!(freed >= plan.bytes_to_free || planned.len() == plan.candidates.len());
                    if let Some((last, rest)) = planned.split_last() {
                        let before: u64 = rest.iter().map(|r| r.size).sum();
                        prop_assert!(before < plan.bytes_to_free, "{} not needed", last.id);
                    }
                    // After freeing bytes_to_free, usage is down to the low threshold (give or
                    // take the percent kubelet's integer arithmetic rounds).
                    let after = FsUsage { capacity: fs.capacity, available: fs.available.min(fs.capacity) + plan.bytes_to_free };
                    prop_assert!(after.usage_percent().unwrap_or(0) <= u64::from(low) + 1);
                } else {
                    prop_assert!(planned.is_empty());
                    prop_assert_eq!(plan.bytes_to_free, 0);
                }
            }

            #[test]
            fn old_images_are_unused_and_old(
                images in arb_images(),
                max_age in 1..2000u64,
                elapsed in 0..3000u64,
            ) {
                let p = policy(85, 80, 0, max_age);
                let now = t(1000 + elapsed);
                let old = old_images(&p, &images, now, t(1000));
                if elapsed <= max_age {
                    prop_assert!(old.is_empty());
                }
                for removal in &old {
                    let image = images.iter().find(|i| i.id == removal.id).expect("listed");
                    prop_assert!(collectable(image));
                    prop_assert!(since(now, image.last_used.unwrap_or(image.first_detected)) > p.max_age);
                }
            }
        }
    }
}
