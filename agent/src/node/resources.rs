//! Capacity, allocatable and the hard eviction thresholds, computed as kubelet's container manager
//! (`GetNodeAllocatableReservation`) and eviction manager (`thresholdsMet`, node conditions with a
//! pressure transition period) do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::host::{FsStats, HostInfo, HostUsage};
use crate::quantity::{Format, Quantity, QuantityError};

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// kubelet's `evictionPressureTransitionPeriod` default: a pressure condition stays true this long
/// after its threshold was last met.
pub const PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);

/// Resource name → quantity.
pub type ResourceList = BTreeMap<String, Quantity>;

/// A reservation or eviction setting that kubelet would refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourceConfigError {
    #[error("{field}[{key}]: {source}")]
    Quantity {
        field: &'static str,
        key: String,
        source: QuantityError,
    },
    #[error("{field}[{key}]: resource quantity cannot be negative: {value}")]
    Negative {
        field: &'static str,
        key: String,
        value: String,
    },
    #[error("evictionHard[{signal}]: unsupported eviction signal")]
    UnknownSignal { signal: String },
    #[error("evictionHard[{signal}]: {message}")]
    Threshold { signal: String, message: String },
}

/// Parses `kubeReserved` / `systemReserved` (`field` names the setting in errors).
pub fn parse_reserved(
    field: &'static str,
    map: &BTreeMap<String, String>,
) -> Result<ResourceList, ResourceConfigError> {
    map.iter()
        .map(|(key, text)| {
            let q: Quantity = text
                .parse()
                .map_err(|source| ResourceConfigError::Quantity {
                    field,
                    key: key.clone(),
                    source,
                })?;
            if q.is_negative() {
                return Err(ResourceConfigError::Negative {
                    field,
                    key: key.clone(),
                    value: text.clone(),
                });
            }
            Ok((key.clone(), q))
        })
        .collect()
}

/// An eviction signal (`memory.available`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    AllocatableMemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    ContainerFsAvailable,
    ContainerFsInodesFree,
    PidAvailable,
}

impl Signal {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "memory.available" => Self::MemoryAvailable,
            "allocatableMemory.available" => Self::AllocatableMemoryAvailable,
            "nodefs.available" => Self::NodeFsAvailable,
            "nodefs.inodesFree" => Self::NodeFsInodesFree,
            "imagefs.available" => Self::ImageFsAvailable,
            "imagefs.inodesFree" => Self::ImageFsInodesFree,
            "containerfs.available" => Self::ContainerFsAvailable,
            "containerfs.inodesFree" => Self::ContainerFsInodesFree,
            "pid.available" => Self::PidAvailable,
            _ => return None,
        })
    }
}

/// A threshold: an absolute quantity or a fraction of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    Quantity(Quantity),
    /// 0 < p ≤ 1, stored as kubelet stores it (`float32`).
    Percentage(f32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: ThresholdValue,
}

/// The parsed `evictionHard` setting.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvictionThresholds(pub Vec<Threshold>);

impl EvictionThresholds {
    /// Parses `evictionHard` with kubelet's rules: `0%` and `100%` disable a signal, other
    /// percentages must lie in [0, 100], quantities must be positive.
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self, ResourceConfigError> {
        let mut thresholds = Vec::new();
        for (name, text) in map {
            let signal = Signal::parse(name).ok_or_else(|| ResourceConfigError::UnknownSignal {
                signal: name.clone(),
            })?;
            let invalid = |message: String| ResourceConfigError::Threshold {
                signal: name.clone(),
                message,
            };
            let value = if text.ends_with('%') {
                if text == "0%" || text == "100%" {
                    continue;
                }
                let number: f32 = text
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|e| invalid(format!("invalid percentage {text:?}: {e}")))?;
                let fraction = number / 100.0;
                if fraction.is_nan() || fraction < 0.0 {
                    return Err(invalid(format!(
                        "eviction percentage threshold must be >= 0%: {text}"
                    )));
                }
                if fraction > 1.0 {
                    return Err(invalid(format!(
                        "eviction percentage threshold must be <= 100%: {text}"
                    )));
                }
                ThresholdValue::Percentage(fraction)
            } else {
                let q: Quantity = text
                    .parse()
                    .map_err(|e: QuantityError| invalid(e.to_string()))?;
                if q.is_negative() || q.is_zero() {
                    return Err(invalid(format!(
                        "eviction threshold must be positive: {text}"
                    )));
                }
                ThresholdValue::Quantity(q)
            };
            thresholds.push(Threshold { signal, value });
        }
        Ok(Self(thresholds))
    }
}

/// `evictionapi.GetThresholdQuantity`: the threshold as a quantity of `capacity`.
pub fn threshold_quantity(value: &ThresholdValue, capacity: &Quantity) -> Quantity {
    match value {
        ThresholdValue::Quantity(q) => *q,
        ThresholdValue::Percentage(p) => {
            // int64(float64(capacity.Value()) * float64(percentage)), truncated as Go converts.
            let bytes = (capacity.value() as f64 * f64::from(*p)) as i64;
            Quantity::new(bytes, Format::BinarySI)
        }
    }
}

/// The node's capacity as kubelet reports it: `cpu` (cores), `memory` and `ephemeral-storage`
/// (bytes, binary format) and `pods` (`maxPods`). Unknown memory or storage is left out.
pub fn capacity(host: &HostInfo, fs: Option<&FsStats>, max_pods: u32) -> ResourceList {
    let mut list = ResourceList::new();
    list.insert(
        CPU.into(),
        Quantity::new_milli(i64::from(host.cpus) * 1000, Format::DecimalSI),
    );
    if let Some(bytes) = host.memory_bytes {
        list.insert(MEMORY.into(), Quantity::bytes(bytes));
    }
    if let Some(fs) = fs {
        list.insert(EPHEMERAL_STORAGE.into(), Quantity::bytes(fs.capacity_bytes));
    }
    list.insert(
        PODS.into(),
        Quantity::new(i64::from(max_pods), Format::DecimalSI),
    );
    list
}

/// `hardEvictionReservation`: memory and ephemeral storage held back for the hard thresholds.
pub fn hard_eviction_reservation(
    thresholds: &EvictionThresholds,
    capacity: &ResourceList,
) -> ResourceList {
    let mut reservation = ResourceList::new();
    for threshold in &thresholds.0 {
        let resource = match threshold.signal {
            Signal::MemoryAvailable => MEMORY,
            Signal::NodeFsAvailable => EPHEMERAL_STORAGE,
            _ => continue,
        };
        let cap = capacity.get(resource).copied().unwrap_or_default();
        reservation.insert(resource.into(), threshold_quantity(&threshold.value, &cap));
    }
    reservation
}

/// Allocatable = capacity − systemReserved − kubeReserved − hard eviction reservation, per
/// resource, never below zero; resources without a reservation equal their capacity. Only
/// resources present in `capacity` appear (a `pid` reservation affects nothing here).
pub fn allocatable(
    capacity: &ResourceList,
    kube_reserved: &ResourceList,
    system_reserved: &ResourceList,
    thresholds: &EvictionThresholds,
) -> ResourceList {
    let eviction = hard_eviction_reservation(thresholds, capacity);
    capacity
        .iter()
        .map(|(name, cap)| {
            let mut reservation = Quantity::new(0, Format::DecimalSI);
            for list in [system_reserved, kube_reserved, &eviction] {
                if let Some(q) = list.get(name) {
                    reservation.add(q);
                }
            }
            let mut value = *cap;
            value.sub(&reservation);
            if value.is_negative() {
                value.set_zero();
            }
            (name.clone(), value)
        })
        .collect()
}

/// Which pressure conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// (available, capacity) of a signal, when observed.
fn observe(signal: Signal, usage: &HostUsage) -> Option<(Quantity, Quantity)> {
    let bytes = |available: u64, capacity: u64| {
        Some((Quantity::bytes(available), Quantity::bytes(capacity)))
    };
    let count = |available: u64, capacity: u64| {
        let q = |n: u64| Quantity::new(i64::try_from(n).unwrap_or(i64::MAX), Format::DecimalSI);
        Some((q(available), q(capacity)))
    };
    match signal {
        Signal::MemoryAvailable => bytes(usage.memory_available_bytes?, usage.memory_total_bytes?),
        // The kubepods cgroup is not measured; the signal is never met.
        Signal::AllocatableMemoryAvailable => None,
        // Without a dedicated image filesystem kubelet observes the root filesystem for all three.
        Signal::NodeFsAvailable | Signal::ImageFsAvailable | Signal::ContainerFsAvailable => {
            let fs = usage.fs?;
            bytes(fs.available_bytes, fs.capacity_bytes)
        }
        Signal::NodeFsInodesFree | Signal::ImageFsInodesFree | Signal::ContainerFsInodesFree => {
            let fs = usage.fs?;
            count(fs.inodes_free, fs.inodes)
        }
        Signal::PidAvailable => {
            let max = usage.pid_max?;
            count(max.saturating_sub(usage.tasks?), max)
        }
    }
}

/// `thresholdsMet`: the pressure conditions whose thresholds are crossed right now
/// (threshold > available).
pub fn thresholds_met(thresholds: &EvictionThresholds, usage: &HostUsage) -> Pressure {
    let mut pressure = Pressure::default();
    for threshold in &thresholds.0 {
        let Some((available, capacity)) = observe(threshold.signal, usage) else {
            continue;
        };
        if threshold_quantity(&threshold.value, &capacity) <= available {
            continue;
        }
        match threshold.signal {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => pressure.memory = true,
            Signal::PidAvailable => pressure.pid = true,
            _ => pressure.disk = true,
        }
    }
    pressure
}

/// Keeps a pressure condition true for a transition period after its threshold was last met, as the
/// eviction manager's `nodeConditionsObservedSince` does, so the condition does not flap.
#[derive(Debug, Clone)]
pub struct PressureTracker {
    period: Duration,
    memory: Option<Instant>,
    disk: Option<Instant>,
    pid: Option<Instant>,
}

impl Default for PressureTracker {
    fn default() -> Self {
        Self::new(PRESSURE_TRANSITION_PERIOD)
    }
}

impl PressureTracker {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            memory: None,
            disk: None,
            pid: None,
        }
    }

    /// Records the thresholds met at `now` and returns the conditions to report.
    pub fn observe(&mut self, met: Pressure, now: Instant) -> Pressure {
        let period = self.period;
        let track = |last: &mut Option<Instant>, met: bool| {
            if met {
                *last = Some(now);
            }
            last.is_some_and(|at| now.saturating_duration_since(at) < period)
        };
        Pressure {
            memory: track(&mut self.memory, met.memory),
            disk: track(&mut self.disk, met.disk),
            pid: track(&mut self.pid, met.pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn q(text: &str) -> Quantity {
        text.parse().expect("test quantity")
    }

    fn host(cpus: u32, memory: u64) -> HostInfo {
        HostInfo {
            cpus,
            memory_bytes: Some(memory),
            ..Default::default()
        }
    }

    fn fs(capacity: u64, available: u64) -> FsStats {
        FsStats {
            capacity_bytes: capacity,
            available_bytes: available,
            inodes: 1_000_000,
            inodes_free: 900_000,
        }
    }

    fn strings(list: &ResourceList) -> BTreeMap<&str, String> {
        list.iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect()
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn capacity_is_reported_like_kubelet() {
        let cap = capacity(
            &host(4, 16_393_035_776),
            Some(&fs(100 * GIB, 50 * GIB)),
            110,
        );
        assert_eq!(
            strings(&cap),
            BTreeMap::from([
                ("cpu", "4".to_string()),
                ("ephemeral-storage", "100Gi".to_string()),
                ("memory", "16008824Ki".to_string()),
                ("pods", "110".to_string()),
            ])
        );
        let without = capacity(&HostInfo::default(), None, 10);
        assert!(!without.contains_key(MEMORY) && !without.contains_key(EPHEMERAL_STORAGE));
    }

    #[test]
    fn allocatable_subtracts_reservations_and_default_eviction_thresholds() {
        let cap = capacity(&host(4, 16 * GIB), Some(&fs(100 * GIB, 50 * GIB)), 110);
        let kube = parse_reserved(
            "kubeReserved",
            &map(&[("cpu", "100m"), ("memory", "256Mi")]),
        )
        .expect("valid");
        let system = parse_reserved(
            "systemReserved",
            &map(&[
                ("cpu", "0.5"),
                ("memory", "1Gi"),
                ("ephemeral-storage", "1Gi"),
                ("pid", "100"),
            ]),
        )
        .expect("valid");
        let eviction = EvictionThresholds::parse(&map(&[
            ("memory.available", "100Mi"),
            ("nodefs.available", "10%"),
            ("nodefs.inodesFree", "5%"),
            ("imagefs.available", "15%"),
        ]))
        .expect("kubelet defaults");
        let alloc = allocatable(&cap, &kube, &system, &eviction);
        // 10% of 100Gi as kubelet computes it: float32(0.1) widened to float64, truncated.
        let ten_percent = (107_374_182_400f64 * f64::from(0.1f32)) as i64;
        let storage = 100 * GIB as i64 - GIB as i64 - ten_percent;
        assert_eq!(
            strings(&alloc),
            BTreeMap::from([
                ("cpu", "3400m".to_string()),
                ("ephemeral-storage", storage.to_string()),
                ("memory", "15004Mi".to_string()),
                ("pods", "110".to_string()),
            ])
        );
        assert_eq!(
            ten_percent, 10_737_418_400,
            "float32 rounding shows in the last digits"
        );
    }

    #[test]
    fn allocatable_is_never_negative() {
        let cap = capacity(&host(1, GIB), Some(&fs(GIB, GIB)), 5);
        let kube = parse_reserved("kubeReserved", &map(&[("cpu", "2"), ("memory", "2Gi")]))
            .expect("valid");
        let alloc = allocatable(
            &cap,
            &kube,
            &ResourceList::new(),
            &EvictionThresholds::default(),
        );
        assert_eq!(alloc[CPU].to_string(), "0");
        assert_eq!(alloc[MEMORY].to_string(), "0");
        assert_eq!(alloc[EPHEMERAL_STORAGE].to_string(), "1Gi");
        assert_eq!(alloc[PODS].to_string(), "5");
    }

    #[test]
    fn percentage_of_memory_is_binary() {
        let cap = capacity(&host(2, 8 * GIB), None, 110);
        let eviction =
            EvictionThresholds::parse(&map(&[("memory.available", "50%")])).expect("valid");
        let alloc = allocatable(&cap, &ResourceList::new(), &ResourceList::new(), &eviction);
        assert_eq!(alloc[MEMORY].to_string(), "4Gi");
    }

    #[test]
    fn threshold_parsing_follows_kubelet() {
        let parsed = EvictionThresholds::parse(&map(&[
            ("memory.available", "0%"),
            ("nodefs.available", "100%"),
            ("pid.available", "1000"),
        ]))
        .expect("valid");
        assert_eq!(
            parsed.0,
            vec![Threshold {
                signal: Signal::PidAvailable,
                value: ThresholdValue::Quantity(q("1000"))
            }],
            "0% and 100% disable a signal"
        );
        for bad in [
            map(&[("memory.available", "0")]),
            map(&[("memory.available", "-1Mi")]),
            map(&[("memory.available", "150%")]),
            map(&[("memory.available", "-5%")]),
            map(&[("memory.available", "lots")]),
            map(&[("memory.free", "1Mi")]),
        ] {
            assert!(EvictionThresholds::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(parse_reserved("kubeReserved", &map(&[("cpu", "-1")])).is_err());
        assert!(parse_reserved("kubeReserved", &map(&[("cpu", "x")])).is_err());
    }

    fn usage(mem_available: u64, fs_available: u64, inodes_free: u64, tasks: u64) -> HostUsage {
        HostUsage {
            memory_available_bytes: Some(mem_available),
            memory_total_bytes: Some(16 * GIB),
            fs: Some(FsStats {
                capacity_bytes: 100 * GIB,
                available_bytes: fs_available,
                inodes: 1_000_000,
                inodes_free,
            }),
            pid_max: Some(32_768),
            tasks: Some(tasks),
        }
    }

    #[test]
    fn pressure_against_hard_thresholds() {
        let t = EvictionThresholds::parse(&map(&[
            ("memory.available", "100Mi"),
            ("nodefs.available", "10%"),
            ("nodefs.inodesFree", "5%"),
            ("imagefs.available", "15%"),
            ("pid.available", "10%"),
        ]))
        .expect("valid");
        let healthy = usage(8 * GIB, 50 * GIB, 900_000, 500);
        assert_eq!(thresholds_met(&t, &healthy), Pressure::default());
        let low_memory = usage(50 << 20, 50 * GIB, 900_000, 500);
        assert_eq!(
            thresholds_met(&t, &low_memory),
            Pressure {
                memory: true,
                ..Default::default()
            }
        );
        // 12% free: only the imagefs threshold (15%) is crossed, which is the root fs here.
        let disk = usage(8 * GIB, 12 * GIB, 900_000, 500);
        assert_eq!(
            thresholds_met(&t, &disk),
            Pressure {
                disk: true,
                ..Default::default()
            }
        );
        let inodes = usage(8 * GIB, 50 * GIB, 10_000, 500);
        assert!(thresholds_met(&t, &inodes).disk);
        let pids = usage(8 * GIB, 50 * GIB, 900_000, 32_000);
        assert_eq!(
            thresholds_met(&t, &pids),
            Pressure {
                pid: true,
                ..Default::default()
            }
        );
        // Nothing observed: nothing met.
        assert_eq!(
            thresholds_met(&t, &HostUsage::default()),
            Pressure::default()
        );
    }

    #[test]
    fn pressure_stays_for_the_transition_period() {
        let start = Instant::now();
        let mut tracker = PressureTracker::new(Duration::from_secs(300));
        let on = Pressure {
            memory: true,
            ..Default::default()
        };
        let off = Pressure::default();
        assert_eq!(tracker.observe(off, start), off);
        assert_eq!(tracker.observe(on, start), on);
        assert_eq!(tracker.observe(off, start + Duration::from_secs(299)), on);
        assert_eq!(tracker.observe(off, start + Duration::from_secs(300)), off);
    }
}
