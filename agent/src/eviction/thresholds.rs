//! Eviction signals and thresholds as kubelet parses and evaluates them (`pkg/kubelet/eviction/api`
//! and the threshold half of `helpers.go`): `evictionHard`, `evictionSoft` with
//! `evictionSoftGracePeriod`, `evictionMinimumReclaim`; which thresholds an observation meets; when a
//! threshold was first met (soft grace periods) and when a node condition was last seen (the pressure
//! transition period). Everything here is pure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::KubeletConfiguration;
use crate::quantity::{Format, Quantity, QuantityError};

/// An eviction signal (`memory.available`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    pub const ALL: [Signal; 9] = [
        Signal::MemoryAvailable,
        Signal::AllocatableMemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::ContainerFsAvailable,
        Signal::ContainerFsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// kubelet's name of the signal (the `eviction_signal` label of `kubelet_evictions`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::AllocatableMemoryAvailable => "allocatableMemory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::ContainerFsAvailable => "containerfs.available",
            Signal::ContainerFsInodesFree => "containerfs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// kubelet's `signalToResource`: what evicting a pod reclaims.
    pub fn resource(self) -> Resource {
        match self {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Resource::Memory,
            Signal::NodeFsAvailable | Signal::ImageFsAvailable | Signal::ContainerFsAvailable => {
                Resource::EphemeralStorage
            }
            Signal::NodeFsInodesFree
            | Signal::ImageFsInodesFree
            | Signal::ContainerFsInodesFree => Resource::Inodes,
            Signal::PidAvailable => Resource::Pids,
        }
    }

    /// kubelet's `signalToNodeCondition`.
    pub fn condition(self) -> Condition {
        match self.resource() {
            Resource::Memory => Condition::MemoryPressure,
            Resource::EphemeralStorage | Resource::Inodes => Condition::DiskPressure,
            Resource::Pids => Condition::PidPressure,
        }
    }

    /// Memory signals are reclaimed before every other (`byEvictionPriority`).
    fn is_memory(self) -> bool {
        self.resource() == Resource::Memory
    }
}

/// What evicting a pod reclaims (kubelet's `signalToResource` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Memory,
    EphemeralStorage,
    Inodes,
    Pids,
}

impl Resource {
    /// kubelet's resource name, as eviction messages print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
            Resource::Inodes => "inodes",
            Resource::Pids => "pids",
        }
    }
}

/// A node pressure condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    MemoryPressure,
    DiskPressure,
    PidPressure,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::MemoryPressure => "MemoryPressure",
            Condition::DiskPressure => "DiskPressure",
            Condition::PidPressure => "PIDPressure",
        }
    }
}

/// Which pressure conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

impl Pressure {
    pub fn from_conditions(conditions: &[Condition]) -> Self {
        Self {
            memory: conditions.contains(&Condition::MemoryPressure),
            disk: conditions.contains(&Condition::DiskPressure),
            pid: conditions.contains(&Condition::PidPressure),
        }
    }

    /// The conditions that hold, memory first.
    pub fn conditions(&self) -> Vec<Condition> {
        [
            (self.memory, Condition::MemoryPressure),
            (self.disk, Condition::DiskPressure),
            (self.pid, Condition::PidPressure),
        ]
        .into_iter()
        .filter_map(|(on, c)| on.then_some(c))
        .collect()
    }

    pub fn any(&self) -> bool {
        self.memory || self.disk || self.pid
    }
}

/// A threshold: an absolute quantity or a fraction of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    Quantity(Quantity),
    /// Stored as kubelet stores it (`float32`): 0.1 for `10%`.
    Percentage(f32),
}

impl ThresholdValue {
    /// `evictionapi.GetThresholdQuantity`: the value as a quantity of `capacity`.
    pub fn quantity(&self, capacity: &Quantity) -> Quantity {
        match self {
            ThresholdValue::Quantity(q) => *q,
            ThresholdValue::Percentage(p) => {
                // int64(float64(capacity.Value()) * float64(percentage)), truncated as Go converts.
                let units = (capacity.value() as f64 * f64::from(*p)) as i64;
                Quantity::new(units, Format::BinarySI)
            }
        }
    }
}

/// As the configuration writes it: `100Mi`, `10%`.
impl std::fmt::Display for ThresholdValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThresholdValue::Quantity(q) => write!(f, "{q}"),
            // Stored as f32: 0.15 is 0.150000006; three decimals of a percent are what is meant.
            ThresholdValue::Percentage(p) => {
                write!(f, "{}%", (f64::from(*p) * 100_000.0).round() / 1000.0)
            }
        }
    }
}

/// As kubelet's flags write it: `memory.available<100Mi`, with a soft threshold's grace period
/// after it (`memory.available<500Mi for 1m30s`).
impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}<{}", self.signal.as_str(), self.value)?;
        if !self.is_hard() {
            write!(f, " for {:?}", self.grace_period)?;
        }
        Ok(())
    }
}

/// One eviction threshold (`evictionapi.Threshold`; the operator is always `LessThan`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: ThresholdValue,
    /// Zero for a hard threshold; how long a soft one must hold before pods are evicted.
    pub grace_period: Duration,
    /// Once met, the threshold stays met until this much more than its value is available.
    pub min_reclaim: Option<ThresholdValue>,
}

impl Threshold {
    /// `isHardEvictionThreshold`.
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }

    /// The threshold as a quantity of `capacity`; with `min_reclaim`, plus the minimum reclaim.
    pub fn quantity(&self, capacity: &Quantity, with_min_reclaim: bool) -> Quantity {
        let mut quantity = self.value.quantity(capacity);
        if with_min_reclaim && let Some(min) = &self.min_reclaim {
            quantity.add(&min.quantity(capacity));
        }
        quantity
    }
}

/// `threshold_quantity(value, capacity)` as the node's allocatable computation names it.
pub fn threshold_quantity(value: &ThresholdValue, capacity: &Quantity) -> Quantity {
    value.quantity(capacity)
}

/// A threshold setting kubelet would refuse: `field` is the configuration field, `key` the signal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("{field}[{key}]: unsupported eviction signal {key}")]
    UnknownSignal { field: &'static str, key: String },
    #[error("{field}[{key}]: {message}")]
    Invalid {
        field: &'static str,
        key: String,
        message: String,
    },
    #[error(
        "evictionSoftGracePeriod[{signal}]: grace period must be specified for the soft eviction threshold {signal}"
    )]
    MissingGracePeriod { signal: String },
}

impl ThresholdError {
    /// The configuration field's path (`evictionHard[memory.available]`).
    pub fn field_path(&self) -> String {
        match self {
            ThresholdError::UnknownSignal { field, key }
            | ThresholdError::Invalid { field, key, .. } => format!("{field}[{key}]"),
            ThresholdError::MissingGracePeriod { signal } => {
                format!("evictionSoftGracePeriod[{signal}]")
            }
        }
    }

    /// The message without the field's path.
    pub fn reason(&self) -> String {
        match self {
            ThresholdError::UnknownSignal { key, .. } => {
                format!("unsupported eviction signal {key}")
            }
            ThresholdError::Invalid { message, .. } => message.clone(),
            ThresholdError::MissingGracePeriod { signal } => {
                format!("grace period must be specified for the soft eviction threshold {signal}")
            }
        }
    }
}

fn signal(field: &'static str, key: &str) -> Result<Signal, ThresholdError> {
    Signal::parse(key).ok_or_else(|| ThresholdError::UnknownSignal {
        field,
        key: key.to_string(),
    })
}

fn parse_percentage(text: &str) -> Result<f32, String> {
    let number: f32 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("invalid percentage {text:?}: {e}"))?;
    let fraction = number / 100.0;
    if fraction.is_nan() {
        return Err(format!("invalid percentage {text:?}"));
    }
    Ok(fraction)
}

/// `parseThresholdStatement`: `None` for `0%` and `100%`, which disable the signal.
fn parse_statement(
    field: &'static str,
    key: &str,
    text: &str,
) -> Result<Option<Threshold>, ThresholdError> {
    let signal = signal(field, key)?;
    let invalid = |message: String| ThresholdError::Invalid {
        field,
        key: key.to_string(),
        message,
    };
    let value = if text.ends_with('%') {
        if text == "0%" || text == "100%" {
            return Ok(None);
        }
        let fraction = parse_percentage(text).map_err(invalid)?;
        if fraction < 0.0 {
            return Err(invalid(format!(
                "eviction percentage threshold {key} must be >= 0%: {text}"
            )));
        }
        if fraction > 1.0 {
            return Err(invalid(format!(
                "eviction percentage threshold {key} must be <= 100%: {text}"
            )));
        }
        ThresholdValue::Percentage(fraction)
    } else {
        let q: Quantity = text
            .parse()
            .map_err(|e: QuantityError| invalid(e.to_string()))?;
        if q.is_negative() || q.is_zero() {
            return Err(invalid(format!(
                "eviction threshold {key} must be positive: {text}"
            )));
        }
        ThresholdValue::Quantity(q)
    };
    Ok(Some(Threshold {
        signal,
        value,
        grace_period: Duration::ZERO,
        min_reclaim: None,
    }))
}

fn parse_statements(
    field: &'static str,
    map: &BTreeMap<String, String>,
) -> Result<Vec<Threshold>, ThresholdError> {
    let mut thresholds = Vec::new();
    for (key, text) in map {
        if let Some(t) = parse_statement(field, key, text)? {
            thresholds.push(t);
        }
    }
    Ok(thresholds)
}

/// `parseGracePeriods`: Go durations, not negative.
fn parse_grace_periods(
    map: &BTreeMap<String, String>,
) -> Result<BTreeMap<Signal, Duration>, ThresholdError> {
    const FIELD: &str = "evictionSoftGracePeriod";
    map.iter()
        .map(|(key, text)| {
            let signal = signal(FIELD, key)?;
            let invalid = |message: String| ThresholdError::Invalid {
                field: FIELD,
                key: key.clone(),
                message,
            };
            if text.trim_start().starts_with('-') {
                return Err(invalid(format!(
                    "invalid eviction grace period specified: {text}, must be a positive value"
                )));
            }
            let period = crate::config::parse_duration(text).map_err(invalid)?;
            Ok((signal, period))
        })
        .collect()
}

/// `parseMinimumReclaims`: a positive percentage or a quantity that is not negative.
fn parse_minimum_reclaims(
    map: &BTreeMap<String, String>,
) -> Result<BTreeMap<Signal, ThresholdValue>, ThresholdError> {
    const FIELD: &str = "evictionMinimumReclaim";
    map.iter()
        .map(|(key, text)| {
            let signal = signal(FIELD, key)?;
            let invalid = |message: String| ThresholdError::Invalid {
                field: FIELD,
                key: key.clone(),
                message,
            };
            if text.ends_with('%') {
                let fraction = parse_percentage(text).map_err(invalid)?;
                if fraction <= 0.0 {
                    return Err(invalid(format!(
                        "eviction percentage minimum reclaim {key} must be positive: {text}"
                    )));
                }
                return Ok((signal, ThresholdValue::Percentage(fraction)));
            }
            let q: Quantity = text
                .parse()
                .map_err(|e: QuantityError| invalid(e.to_string()))?;
            if q.is_negative() {
                return Err(invalid(format!(
                    "negative eviction minimum reclaim specified for {key}"
                )));
            }
            Ok((signal, ThresholdValue::Quantity(q)))
        })
        .collect()
}

/// The parsed eviction thresholds, hard ones first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvictionThresholds(pub Vec<Threshold>);

impl EvictionThresholds {
    /// Parses `evictionHard` alone with kubelet's rules: `0%` and `100%` disable a signal, other
    /// percentages must lie in [0, 100], quantities must be positive.
    pub fn parse(hard: &BTreeMap<String, String>) -> Result<Self, ThresholdError> {
        parse_statements("evictionHard", hard).map(Self)
    }

    /// kubelet's `ParseThresholdConfig`: `evictionHard`, then `evictionSoft` (each soft threshold
    /// needs its `evictionSoftGracePeriod`), with `evictionMinimumReclaim` attached to every
    /// threshold of its signal.
    pub fn parse_all(
        hard: &BTreeMap<String, String>,
        soft: &BTreeMap<String, String>,
        soft_grace_periods: &BTreeMap<String, String>,
        minimum_reclaims: &BTreeMap<String, String>,
    ) -> Result<Self, ThresholdError> {
        let mut thresholds = parse_statements("evictionHard", hard)?;
        let mut soft = parse_statements("evictionSoft", soft)?;
        let periods = parse_grace_periods(soft_grace_periods)?;
        let reclaims = parse_minimum_reclaims(minimum_reclaims)?;
        for threshold in &mut soft {
            let period = periods.get(&threshold.signal).ok_or_else(|| {
                ThresholdError::MissingGracePeriod {
                    signal: threshold.signal.as_str().to_string(),
                }
            })?;
            threshold.grace_period = *period;
        }
        thresholds.extend(soft);
        for threshold in &mut thresholds {
            threshold.min_reclaim = reclaims.get(&threshold.signal).copied();
        }
        Ok(Self(thresholds))
    }

    /// Every eviction threshold of the configuration.
    pub fn from_config(config: &KubeletConfiguration) -> Result<Self, ThresholdError> {
        Self::parse_all(
            &config.eviction_hard,
            &config.eviction_soft,
            &config.eviction_soft_grace_period,
            &config.eviction_minimum_reclaim,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a signal measures now: the available amount out of a capacity, and when it was measured
/// (kubelet's `signalObservation`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalObservation {
    pub available: Quantity,
    pub capacity: Quantity,
    /// When the stats were taken, if known.
    pub time: Option<jiff::Timestamp>,
}

/// The observation of every signal measured in one pass.
pub type Observations = BTreeMap<Signal, SignalObservation>;

/// `thresholdsMet`: the thresholds whose value (plus the minimum reclaim, when `enforce_min_reclaim`)
/// exceeds what is available. A signal without an observation meets nothing.
pub fn thresholds_met(
    thresholds: &[Threshold],
    observations: &Observations,
    enforce_min_reclaim: bool,
) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| {
            observations.get(&t.signal).is_some_and(|observed| {
                t.quantity(&observed.capacity, enforce_min_reclaim) > observed.available
            })
        })
        .copied()
        .collect()
}

/// `mergeThresholds`: `a` then what of `b` is not in it.
pub fn merge_thresholds(a: Vec<Threshold>, b: &[Threshold]) -> Vec<Threshold> {
    let mut merged = a;
    for t in b {
        if !merged.iter().any(|m| same_threshold(m, t)) {
            merged.push(*t);
        }
    }
    merged
}

/// `hasThreshold`'s comparison: signal, grace period and value (not the minimum reclaim).
fn same_threshold(a: &Threshold, b: &Threshold) -> bool {
    a.signal == b.signal && a.grace_period == b.grace_period && a.value == b.value
}

/// When each threshold currently met was first met (`thresholdsObservedAt`).
pub type FirstObserved = Vec<(Threshold, Instant)>;

/// `thresholdsFirstObservedAt`: the thresholds met now, each with the time it was first met (now if
/// it was not met before).
pub fn thresholds_first_observed_at(
    met: &[Threshold],
    before: &FirstObserved,
    now: Instant,
) -> FirstObserved {
    met.iter()
        .map(|t| {
            let at = before
                .iter()
                .find(|(b, _)| b == t)
                .map_or(now, |(_, at)| *at);
            (*t, at)
        })
        .collect()
}

/// `thresholdsMetGracePeriod`: the thresholds met for at least their grace period.
pub fn thresholds_met_grace_period(first_observed: &FirstObserved, now: Instant) -> Vec<Threshold> {
    first_observed
        .iter()
        .filter(|(t, at)| now.saturating_duration_since(*at) >= t.grace_period)
        .map(|(t, _)| *t)
        .collect()
}

/// `nodeConditions`: the conditions of the thresholds met.
pub fn node_conditions(thresholds: &[Threshold]) -> Vec<Condition> {
    let mut conditions: Vec<Condition> = Vec::new();
    for t in thresholds {
        let c = t.signal.condition();
        if !conditions.contains(&c) {
            conditions.push(c);
        }
    }
    conditions
}

/// When each condition was last observed (`nodeConditionsObservedAt`).
pub type LastObserved = BTreeMap<Condition, Instant>;

/// `nodeConditionsLastObservedAt`: the conditions observed now at `now`, the others at their last time.
pub fn node_conditions_last_observed_at(
    conditions: &[Condition],
    before: &LastObserved,
    now: Instant,
) -> LastObserved {
    let mut last = before.clone();
    for c in conditions {
        last.insert(*c, now);
    }
    last
}

/// `nodeConditionsObservedSince`: the conditions observed within `period` before `now`.
pub fn node_conditions_observed_since(
    last: &LastObserved,
    period: Duration,
    now: Instant,
) -> Vec<Condition> {
    last.iter()
        .filter(|(_, at)| now.saturating_duration_since(**at) < period)
        .map(|(c, _)| *c)
        .collect()
}

/// `thresholdsUpdatedStats`: the thresholds whose signal was measured again since the last pass
/// (or whose measurement has no time).
pub fn thresholds_updated_stats(
    thresholds: &[Threshold],
    observations: &Observations,
    last: &Observations,
) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| {
            let Some(observed) = observations.get(&t.signal) else {
                return false;
            };
            match (observed.time, last.get(&t.signal)) {
                (None, _) | (_, None) => true,
                (Some(now), Some(previous)) => previous.time.is_none_or(|then| now > then),
            }
        })
        .copied()
        .collect()
}

/// `sort.Sort(byEvictionPriority(thresholds))`: memory signals first (a stable sort, so the rest
/// keep their order).
pub fn sort_by_eviction_priority(thresholds: &mut [Threshold]) {
    thresholds.sort_by_key(|t| !t.signal.is_memory());
}

/// `getReclaimableThreshold`: the first threshold (every signal has a resource to reclaim).
pub fn reclaimable_threshold(thresholds: &[Threshold]) -> Option<(Threshold, Resource)> {
    thresholds.first().map(|t| (*t, t.signal.resource()))
}
