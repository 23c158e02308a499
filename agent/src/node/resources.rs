//! Capacity and allocatable, computed as kubelet's container manager does
//! (`GetNodeAllocatableReservation`, with the hard eviction thresholds of [`crate::eviction`]).

use std::collections::BTreeMap;

use super::host::{FsStats, HostInfo};
pub use crate::eviction::thresholds::{
    EvictionThresholds, Pressure, Signal, Threshold, ThresholdError, ThresholdValue,
    threshold_quantity,
};
use crate::quantity::{Format, Quantity, QuantityError};

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

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
    #[error(transparent)]
    Eviction(#[from] ThresholdError),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
    fn reservations_are_validated() {
        assert!(parse_reserved("kubeReserved", &map(&[("cpu", "-1")])).is_err());
        assert!(parse_reserved("kubeReserved", &map(&[("cpu", "x")])).is_err());
        assert!(parse_reserved("systemReserved", &map(&[("memory", "1Gi")])).is_ok());
    }
}
