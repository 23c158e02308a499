//! The eviction manager's tests: kubelet's own cases (`helpers_test.go`, `eviction_manager_test.go`)
//! for parsing, the threshold bookkeeping, ranking, messages and admission, all pure; then the
//! manager itself driving the real pod workers against the fake CRI runtime, with the node's usage
//! injected through [`StatsSource`] and the disk reclaim recorded through [`NodeReclaim`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::admit::{admit, condition_message, is_critical};
use super::manager::{
    EvictionConfig, NodeReclaim, ObserveError, ReclaimError, StatsSource, Tracker,
    eviction_grace_period,
};
use super::message::eviction_message;
use super::ranking::{FsStatsType, Ranking, rank_disk_pressure, rank_memory_pressure};
use super::signals::observe;
use super::thresholds::*;
use crate::quantity::Quantity;
use crate::stats::types::{
    ContainerStats, FsStats, MemoryStats, NodeStats, PodReference, PodStats, ProcessStats,
    RlimitStats, RuntimeStats, Summary, VolumeStats,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn q(text: &str) -> Quantity {
    text.parse().expect("test quantity")
}

fn bytes(text: &str) -> u64 {
    u64::try_from(q(text).value()).expect("positive")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const T0: i64 = 1_700_000_000;

fn time(second: i64) -> Time {
    Time(jiff::Timestamp::from_second(T0 + second).expect("time"))
}

/// An API pod named `name` (its UID too) with one container of the same name.
fn pod(name: &str, priority: i32, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Arc<Pod> {
    pod_with(name, priority, requests, limits, serde_json::json!([]))
}

fn pod_with(
    name: &str,
    priority: i32,
    requests: &[(&str, &str)],
    limits: &[(&str, &str)],
    volumes: serde_json::Value,
) -> Arc<Pod> {
    let list = |pairs: &[(&str, &str)]| -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect()
    };
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name, "namespace": "default", "uid": name,
            "annotations": {"kubernetes.io/config.source": "api"},
        },
        "spec": {
            "priority": priority,
            "volumes": volumes,
            "containers": [{
                "name": name, "image": "busybox",
                "resources": {"requests": list(requests), "limits": list(limits)},
            }],
        },
    }))
    .expect("test pod");
    Arc::new(pod)
}

fn pod_ref(pod: &Pod) -> PodReference {
    PodReference {
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: "default".into(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

fn memory(working_set: u64, at: i64) -> MemoryStats {
    MemoryStats {
        time: time(at),
        available_bytes: None,
        usage_bytes: Some(working_set),
        working_set_bytes: Some(working_set),
        rss_bytes: None,
        page_faults: None,
        major_page_faults: None,
    }
}

fn container_stats(name: &str) -> ContainerStats {
    ContainerStats {
        name: name.into(),
        start_time: time(0),
        cpu: None,
        memory: None,
        rootfs: None,
        logs: None,
    }
}

fn empty_pod_stats(pod: &Pod) -> PodStats {
    PodStats {
        pod_ref: pod_ref(pod),
        start_time: time(0),
        containers: vec![],
        cpu: None,
        memory: None,
        network: None,
        volume_stats: vec![],
        ephemeral_storage: None,
        process_stats: None,
    }
}

/// kubelet's `newPodMemoryStats`: the pod and its one container use `working_set`.
fn memory_stats(pod: &Pod, working_set: &str) -> PodStats {
    let ws = bytes(working_set);
    let name = pod.metadata.name.clone().unwrap_or_default();
    PodStats {
        containers: vec![ContainerStats {
            memory: Some(memory(ws, 0)),
            ..container_stats(&name)
        }],
        memory: Some(memory(ws, 0)),
        ..empty_pod_stats(pod)
    }
}

fn used(b: u64, inodes: u64) -> FsStats {
    FsStats {
        used_bytes: Some(b),
        inodes_used: Some(inodes),
        ..FsStats::at(time(0))
    }
}

/// kubelet's `newPodDiskStats`: rootfs and logs of its container, and every volume using `volume`.
fn disk_stats(pod: &Pod, rootfs: &str, logs: &str, volume: &str) -> PodStats {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    PodStats {
        containers: vec![ContainerStats {
            rootfs: Some(used(bytes(rootfs), 0)),
            logs: Some(used(bytes(logs), 0)),
            ..container_stats(&name)
        }],
        volume_stats: volumes
            .iter()
            .map(|v| VolumeStats {
                fs: used(bytes(volume), 0),
                name: v.name.clone(),
            })
            .collect(),
        ..empty_pod_stats(pod)
    }
}

/// kubelet's `newPodInodeStats`.
fn inode_stats(pod: &Pod, rootfs: u64, logs: u64, volume: u64) -> PodStats {
    let mut stats = disk_stats(pod, "0", "0", "0");
    stats.containers[0].rootfs = Some(used(0, rootfs));
    stats.containers[0].logs = Some(used(0, logs));
    for v in &mut stats.volume_stats {
        v.fs = used(0, volume);
    }
    stats
}

fn node_stats() -> NodeStats {
    NodeStats {
        node_name: "node".into(),
        system_containers: vec![],
        start_time: time(0),
        cpu: None,
        memory: None,
        network: None,
        fs: None,
        runtime: None,
        rlimit: None,
    }
}

/// kubelet's `makeMemoryStats`: `available` available and as much again in use, at `at`.
fn memory_summary(available: &str, pods: Vec<PodStats>, at: i64) -> Summary {
    let b = bytes(available);
    Summary {
        node: NodeStats {
            memory: Some(MemoryStats {
                available_bytes: Some(b),
                ..memory(b, at)
            }),
            ..node_stats()
        },
        pods,
    }
}

fn fs(available: u64, capacity: u64, inodes_free: u64, inodes: u64, at: i64) -> FsStats {
    FsStats {
        available_bytes: Some(available),
        capacity_bytes: Some(capacity),
        inodes_free: Some(inodes_free),
        inodes: Some(inodes),
        ..FsStats::at(time(at))
    }
}

/// Node and image filesystems with `available` bytes of twice as much (kubelet's `makeDiskStats`).
fn disk_summary(nodefs: &str, imagefs: &str, pods: Vec<PodStats>, at: i64) -> Summary {
    let (n, i) = (bytes(nodefs), bytes(imagefs));
    Summary {
        node: NodeStats {
            fs: Some(fs(n, n * 2, 1_000_000, 2_000_000, at)),
            runtime: Some(RuntimeStats {
                image_fs: Some(fs(i, i * 2, 1_000_000, 2_000_000, at)),
            }),
            ..node_stats()
        },
        pods,
    }
}

fn names(pods: &[Arc<Pod>]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn hard(signal: Signal, value: &str) -> Threshold {
    Threshold {
        signal,
        value: ThresholdValue::Quantity(q(value)),
        grace_period: Duration::ZERO,
        min_reclaim: None,
    }
}

fn config(thresholds: Vec<Threshold>) -> EvictionConfig {
    EvictionConfig {
        thresholds: EvictionThresholds(thresholds),
        pressure_transition_period: Duration::from_secs(300),
        max_pod_grace_period_seconds: 5,
        monitoring_period: Duration::from_secs(10),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing (kubelet's TestParseThresholdConfig)

#[test]
fn thresholds_parse_as_kubelet_parses_them() {
    let all = EvictionThresholds::parse_all(
        &map(&[("memory.available", "150Mi"), ("nodefs.available", "10%")]),
        &map(&[("memory.available", "300Mi")]),
        &map(&[("memory.available", "30s")]),
        &map(&[("memory.available", "0"), ("nodefs.available", "5%")]),
    )
    .expect("valid");
    assert_eq!(
        all.0,
        vec![
            Threshold {
                min_reclaim: Some(ThresholdValue::Quantity(q("0"))),
                ..hard(Signal::MemoryAvailable, "150Mi")
            },
            Threshold {
                signal: Signal::NodeFsAvailable,
                value: ThresholdValue::Percentage(0.1),
                grace_period: Duration::ZERO,
                min_reclaim: Some(ThresholdValue::Percentage(0.05)),
            },
            Threshold {
                grace_period: Duration::from_secs(30),
                min_reclaim: Some(ThresholdValue::Quantity(q("0"))),
                ..hard(Signal::MemoryAvailable, "300Mi")
            },
        ]
    );
    assert!(!all.0[2].is_hard() && all.0[0].is_hard());
    let none = EvictionThresholds::parse_all(&map(&[]), &map(&[]), &map(&[]), &map(&[]));
    assert_eq!(none, Ok(EvictionThresholds::default()));
    // 0% and 100% disable a signal.
    let disabled = EvictionThresholds::parse(&map(&[
        ("memory.available", "0%"),
        ("nodefs.available", "100%"),
    ]))
    .expect("valid");
    assert!(disabled.is_empty());
    let defaults = EvictionThresholds::from_config(&crate::config::KubeletConfiguration::default())
        .expect("kubelet's defaults");
    let signals: Vec<&str> = defaults.0.iter().map(|t| t.signal.as_str()).collect();
    assert_eq!(
        signals,
        [
            "imagefs.available",
            "imagefs.inodesFree",
            "memory.available",
            "nodefs.available",
            "nodefs.inodesFree"
        ]
    );
}

#[test]
fn bad_thresholds_name_their_field() {
    let empty = map(&[]);
    for (hard, soft, grace, reclaim, path) in [
        (
            map(&[("mem.available", "150Mi")]),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            "evictionHard[mem.available]",
        ),
        (
            map(&[("memory.available", "-150Mi")]),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            "evictionHard[memory.available]",
        ),
        (
            map(&[("memory.available", "0")]),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            "evictionHard[memory.available]",
        ),
        (
            map(&[("memory.available", "150%")]),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            "evictionHard[memory.available]",
        ),
        (
            map(&[("memory.available", "-15%")]),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            "evictionHard[memory.available]",
        ),
        (
            map(&[("memory.available", "lots")]),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            "evictionHard[memory.available]",
        ),
        (
            empty.clone(),
            map(&[("memory.available", "-150Mi")]),
            map(&[("memory.available", "30s")]),
            empty.clone(),
            "evictionSoft[memory.available]",
        ),
        // A soft threshold without a grace period.
        (
            empty.clone(),
            map(&[("memory.available", "300Mi")]),
            empty.clone(),
            empty.clone(),
            "evictionSoftGracePeriod[memory.available]",
        ),
        (
            empty.clone(),
            map(&[("memory.available", "300Mi")]),
            map(&[("memory.available", "-30s")]),
            empty.clone(),
            "evictionSoftGracePeriod[memory.available]",
        ),
        (
            empty.clone(),
            map(&[("memory.available", "300Mi")]),
            map(&[("memory.available", "soon")]),
            empty.clone(),
            "evictionSoftGracePeriod[memory.available]",
        ),
        (
            empty.clone(),
            empty.clone(),
            map(&[("memory.free", "30s")]),
            empty.clone(),
            "evictionSoftGracePeriod[memory.free]",
        ),
        (
            empty.clone(),
            empty.clone(),
            empty.clone(),
            map(&[("memory.available", "-300Mi")]),
            "evictionMinimumReclaim[memory.available]",
        ),
        (
            empty.clone(),
            empty.clone(),
            empty.clone(),
            map(&[("memory.available", "0%")]),
            "evictionMinimumReclaim[memory.available]",
        ),
        (
            empty.clone(),
            empty.clone(),
            empty.clone(),
            map(&[("memory.available", "-5%")]),
            "evictionMinimumReclaim[memory.available]",
        ),
    ] {
        let err = EvictionThresholds::parse_all(&hard, &soft, &grace, &reclaim).expect_err(path);
        assert_eq!(err.field_path(), path, "{err}");
    }
}

#[test]
fn a_malformed_threshold_fails_the_configuration_with_its_path() {
    let path = std::path::Path::new("kubelet.yaml");
    for (text, field) in [
        (
            "evictionHard:\n  memory.available: lots\n",
            "evictionHard[memory.available]",
        ),
        (
            "evictionSoft:\n  memory.available: 300Mi\n",
            "evictionSoftGracePeriod[memory.available]",
        ),
        (
            "evictionMinimumReclaim:\n  pid.available: \"-1\"\n",
            "evictionMinimumReclaim[pid.available]",
        ),
    ] {
        let err = crate::config::KubeletConfiguration::parse(text, path).expect_err(text);
        let fields: Vec<String> = err.field_errors().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, [field], "{text}");
    }
    let loaded = crate::config::KubeletConfiguration::parse(
        "evictionSoft:\n  memory.available: 300Mi\nevictionSoftGracePeriod:\n  memory.available: 1m30s\n\
         evictionMaxPodGracePeriod: 20\nevictionPressureTransitionPeriod: 30s\n\
         evictionMinimumReclaim:\n  memory.available: 50Mi\n",
        path,
    )
    .expect("valid");
    assert!(loaded.ignored.is_empty(), "{:?}", loaded.ignored);
    let c = EvictionConfig::from_config(&loaded.config).expect("valid");
    assert_eq!(c.max_pod_grace_period_seconds, 20);
    assert_eq!(c.pressure_transition_period, Duration::from_secs(30));
    let soft = c.thresholds.0.iter().find(|t| !t.is_hard()).expect("soft");
    assert_eq!(soft.grace_period, Duration::from_secs(90));
    assert_eq!(soft.min_reclaim, Some(ThresholdValue::Quantity(q("50Mi"))));
    // kubelet's defaults: 5m of transition, and 0s means the default.
    let defaults = EvictionConfig::from_config(&crate::config::KubeletConfiguration::default())
        .expect("defaults");
    assert_eq!(
        defaults.pressure_transition_period,
        Duration::from_secs(300)
    );
    assert_eq!(defaults.max_pod_grace_period_seconds, 0);
    let zero = crate::config::KubeletConfiguration {
        eviction_pressure_transition_period: Duration::ZERO,
        ..Default::default()
    };
    assert_eq!(
        EvictionConfig::from_config(&zero)
            .expect("valid")
            .pressure_transition_period,
        Duration::from_secs(300)
    );
}

// ---------------------------------------------------------------------------------------------
// Thresholds met, grace periods, minimum reclaim, transition period

fn observation(available: &str, capacity: &str, at: Option<i64>) -> SignalObservation {
    SignalObservation {
        available: q(available),
        capacity: q(capacity),
        time: at.map(|s| time(s).0),
    }
}

fn memory_observed(available: &str, at: i64) -> Observations {
    Observations::from([(
        Signal::MemoryAvailable,
        observation(available, "8Gi", Some(at)),
    )])
}

#[test]
fn thresholds_met_with_and_without_minimum_reclaim() {
    // kubelet's TestThresholdsMet.
    let t = Threshold {
        min_reclaim: Some(ThresholdValue::Quantity(q("500Mi"))),
        ..hard(Signal::MemoryAvailable, "1Gi")
    };
    for (available, enforce, met) in [
        ("3Gi", false, false),
        ("500Mi", false, true),
        ("1Gi", false, false),
        ("1.2Gi", false, false),
        ("1.2Gi", true, true),
        ("2Gi", true, false),
    ] {
        let obs = memory_observed(available, 0);
        assert_eq!(
            thresholds_met(&[t], &obs, enforce).len() == 1,
            met,
            "{available} enforce={enforce}"
        );
    }
    // A signal without an observation meets nothing.
    assert!(
        thresholds_met(
            &[hard(Signal::NodeFsAvailable, "1Gi")],
            &memory_observed("0", 0),
            false
        )
        .is_empty()
    );
    // Percentages of capacity (kubelet's TestPercentageThresholdsMet): 10% of 1000Mi is 100Mi.
    let pct = Threshold {
        value: ThresholdValue::Percentage(0.1),
        ..hard(Signal::MemoryAvailable, "1")
    };
    let obs = |available| {
        Observations::from([(
            Signal::MemoryAvailable,
            observation(available, "1000Mi", None),
        )])
    };
    assert_eq!(thresholds_met(&[pct], &obs("99Mi"), false).len(), 1);
    assert!(thresholds_met(&[pct], &obs("101Mi"), false).is_empty());
}

#[test]
fn memory_pressure_sequence_follows_kubelets() {
    // kubelet's TestMemoryPressure, for the bookkeeping: hard 1Gi, soft 2Gi held for 2 minutes,
    // 5 minutes of transition.
    let soft = Threshold {
        grace_period: Duration::from_secs(120),
        ..hard(Signal::MemoryAvailable, "2Gi")
    };
    let hard_1g = hard(Signal::MemoryAvailable, "1Gi");
    let config = config(vec![hard_1g, soft]);
    let start = Instant::now();
    let mut tracker = Tracker::default();
    let mut pass = |available: &str, minutes: u64| {
        let at = i64::try_from(minutes * 60).expect("seconds");
        tracker.observe(
            &config,
            &memory_observed(available, at),
            start + Duration::from_secs(minutes * 60),
        )
    };
    let memory = vec![Condition::MemoryPressure];
    let p = pass("2Gi", 0);
    assert!(p.conditions.is_empty() && p.thresholds.is_empty());
    let p = pass("1500Mi", 1);
    assert_eq!(
        p.conditions, memory,
        "the soft threshold is met: pressure at once"
    );
    assert!(
        p.thresholds.is_empty(),
        "but nothing to act on before its grace period"
    );
    let p = pass("1500Mi", 4);
    assert_eq!(p.thresholds, vec![soft], "grace period over");
    let p = pass("3Gi", 24);
    assert!(p.conditions.is_empty() && p.thresholds.is_empty());
    let p = pass("500Mi", 25);
    assert_eq!(p.conditions, memory);
    assert_eq!(
        p.thresholds,
        vec![hard_1g],
        "hard at once; the soft one starts its grace period"
    );
    let p = pass("2Gi", 26);
    assert_eq!(
        p.conditions, memory,
        "the transition period holds the condition"
    );
    assert!(p.thresholds.is_empty());
    let p = pass("2Gi", 31);
    assert!(p.conditions.is_empty(), "transition period over");
}

#[test]
fn a_met_threshold_holds_until_its_minimum_reclaim_is_available() {
    // kubelet's TestMinReclaim.
    let t = Threshold {
        min_reclaim: Some(ThresholdValue::Quantity(q("500Mi"))),
        ..hard(Signal::MemoryAvailable, "1Gi")
    };
    let config = config(vec![t]);
    let start = Instant::now();
    let mut tracker = Tracker::default();
    let mut pass = |available: &str, s: u64| {
        tracker
            .observe(
                &config,
                &memory_observed(available, i64::try_from(s).expect("s")),
                start + Duration::from_secs(s),
            )
            .thresholds
    };
    assert!(pass("2Gi", 0).is_empty());
    assert_eq!(pass("500Mi", 10), vec![t]);
    assert_eq!(pass("1.2Gi", 20), vec![t], "above 1Gi, below 1Gi + 500Mi");
    assert!(pass("2Gi", 30).is_empty());
    assert!(
        pass("1.2Gi", 40).is_empty(),
        "resolved: not met again above 1Gi"
    );
}

#[test]
fn a_threshold_is_acted_on_only_for_fresh_stats() {
    // kubelet's TestThresholdsUpdatedStats: the same measurement twice is acted on once.
    let t = hard(Signal::MemoryAvailable, "1Gi");
    let config = config(vec![t]);
    let start = Instant::now();
    let mut tracker = Tracker::default();
    let first = tracker.observe(&config, &memory_observed("500Mi", 10), start);
    assert_eq!(first.thresholds, vec![t]);
    let same = tracker.observe(
        &config,
        &memory_observed("500Mi", 10),
        start + Duration::from_secs(1),
    );
    assert!(same.thresholds.is_empty(), "stale stats");
    assert_eq!(same.conditions, vec![Condition::MemoryPressure]);
    let fresh = tracker.observe(
        &config,
        &memory_observed("500Mi", 11),
        start + Duration::from_secs(2),
    );
    assert_eq!(fresh.thresholds, vec![t]);
    // Without a time, every pass acts.
    let untimed =
        Observations::from([(Signal::MemoryAvailable, observation("500Mi", "8Gi", None))]);
    assert_eq!(thresholds_updated_stats(&[t], &untimed, &untimed), vec![t]);
}

#[test]
fn conditions_and_priorities_of_signals() {
    let all = [
        hard(Signal::PidAvailable, "10"),
        hard(Signal::NodeFsAvailable, "1Gi"),
        hard(Signal::MemoryAvailable, "1Gi"),
        hard(Signal::ImageFsInodesFree, "10"),
    ];
    assert_eq!(
        node_conditions(&all),
        vec![
            Condition::PidPressure,
            Condition::DiskPressure,
            Condition::MemoryPressure
        ]
    );
    let mut sorted = all.to_vec();
    sort_by_eviction_priority(&mut sorted);
    assert_eq!(sorted[0].signal, Signal::MemoryAvailable, "memory first");
    assert_eq!(
        reclaimable_threshold(&sorted).map(|(_, r)| r),
        Some(Resource::Memory)
    );
    assert_eq!(Signal::NodeFsInodesFree.resource(), Resource::Inodes);
    assert_eq!(Signal::PidAvailable.resource().as_str(), "pids");
    assert_eq!(
        Pressure::from_conditions(&[Condition::DiskPressure, Condition::MemoryPressure])
            .conditions(),
        vec![Condition::MemoryPressure, Condition::DiskPressure]
    );
    for signal in Signal::ALL {
        assert_eq!(Signal::parse(signal.as_str()), Some(signal));
    }
}

// ---------------------------------------------------------------------------------------------
// Observations (kubelet's TestMakeSignalObservations)

#[test]
fn signals_are_observed_from_the_summary() {
    let mut summary = disk_summary("2Gi", "3Gi", vec![], 5);
    summary.node.memory = Some(MemoryStats {
        available_bytes: Some(bytes("1Gi")),
        ..memory(bytes("3Gi"), 5)
    });
    summary.node.rlimit = Some(RlimitStats {
        time: time(5),
        max_pid: Some(32768),
        num_of_running_processes: Some(1000),
    });
    let obs = observe(&summary);
    let get = |s: Signal| obs.get(&s).copied().expect("observed");
    assert_eq!(
        get(Signal::MemoryAvailable),
        observation("1Gi", "4Gi", Some(5))
    );
    assert_eq!(
        get(Signal::NodeFsAvailable),
        observation("2Gi", "4Gi", Some(5))
    );
    assert_eq!(
        get(Signal::ImageFsAvailable),
        observation("3Gi", "6Gi", Some(5))
    );
    assert_eq!(
        get(Signal::NodeFsInodesFree),
        observation("1000000", "2000000", Some(5))
    );
    assert_eq!(
        get(Signal::PidAvailable),
        observation("31768", "32768", Some(5))
    );
    assert!(
        !obs.contains_key(&Signal::AllocatableMemoryAvailable),
        "no pods cgroup limit"
    );
    assert!(
        observe(&Summary {
            node: node_stats(),
            pods: vec![]
        })
        .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Ranking (kubelet's TestOrderedBy*)

#[test]
fn memory_ranking_puts_pods_over_requests_first_then_priority_then_usage() {
    // kubelet's TestOrderedByPriorityMemory.
    let pods = [
        pod("above-requests-low-priority-high-usage", -1, &[], &[]),
        pod("above-requests-low-priority-low-usage", -1, &[], &[]),
        pod(
            "above-requests-high-priority-high-usage",
            1,
            &[("memory", "100Mi")],
            &[],
        ),
        pod(
            "above-requests-high-priority-low-usage",
            1,
            &[("memory", "100Mi")],
            &[],
        ),
        pod(
            "below-requests-low-priority-high-usage",
            -1,
            &[("memory", "1Gi")],
            &[],
        ),
        pod(
            "below-requests-low-priority-low-usage",
            -1,
            &[("memory", "1Gi")],
            &[],
        ),
        pod(
            "below-requests-high-priority-high-usage",
            1,
            &[("memory", "1Gi")],
            &[],
        ),
        pod(
            "below-requests-high-priority-low-usage",
            1,
            &[("memory", "1Gi")],
            &[],
        ),
    ];
    let usage = [
        "500Mi", "50Mi", "600Mi", "150Mi", "800Mi", "200Mi", "800Mi", "200Mi",
    ];
    let stats = pods
        .iter()
        .zip(usage)
        .map(|(p, u)| {
            (
                p.metadata.uid.clone().unwrap_or_default(),
                memory_stats(p, u),
            )
        })
        .collect();
    let mut ranked: Vec<Arc<Pod>> = pods.iter().rev().cloned().collect();
    rank_memory_pressure(&mut ranked, &stats);
    assert_eq!(names(&ranked), names(&pods));

    // kubelet's TestOrderedByMemory: usage above request (no priorities).
    let pods = [
        pod("best-effort-high", 0, &[], &[]),
        pod("best-effort-low", 0, &[], &[]),
        pod(
            "burstable-high",
            0,
            &[("memory", "100Mi")],
            &[("memory", "1Gi")],
        ),
        pod(
            "burstable-low",
            0,
            &[("memory", "100Mi")],
            &[("memory", "1Gi")],
        ),
        pod(
            "guaranteed-high",
            0,
            &[("memory", "1Gi")],
            &[("memory", "1Gi")],
        ),
        pod(
            "guaranteed-low",
            0,
            &[("memory", "1Gi")],
            &[("memory", "1Gi")],
        ),
    ];
    let usage = ["500Mi", "300Mi", "800Mi", "300Mi", "800Mi", "200Mi"];
    let stats = pods
        .iter()
        .zip(usage)
        .map(|(p, u)| {
            (
                p.metadata.uid.clone().unwrap_or_default(),
                memory_stats(p, u),
            )
        })
        .collect();
    let mut ranked = pods.to_vec();
    rank_memory_pressure(&mut ranked, &stats);
    assert_eq!(
        names(&ranked),
        [
            "burstable-high",
            "best-effort-high",
            "best-effort-low",
            "burstable-low",
            "guaranteed-high",
            "guaranteed-low"
        ]
    );

    // A pod without stats goes first (kubelet's TestStatsNotFoundForPod).
    let unknown = pod("no-stats", 100, &[("memory", "1Gi")], &[]);
    let mut ranked = vec![pods[0].clone(), unknown.clone()];
    rank_memory_pressure(&mut ranked, &stats);
    assert_eq!(names(&ranked)[0], "no-stats");
}

#[test]
fn pid_ranking_is_priority_then_processes() {
    // kubelet's TestOrderedByPriorityProcess.
    let pods = [
        pod("low-priority-high-usage", -1, &[], &[]),
        pod("low-priority-low-usage", -1, &[], &[]),
        pod("high-priority-high-usage", 1, &[], &[]),
        pod("high-priority-low-usage", 1, &[], &[]),
    ];
    let stats = pods
        .iter()
        .zip([20, 6, 20, 5])
        .map(|(p, n)| {
            let s = PodStats {
                process_stats: Some(ProcessStats {
                    process_count: Some(n),
                }),
                ..empty_pod_stats(p)
            };
            (p.metadata.uid.clone().unwrap_or_default(), s)
        })
        .collect();
    let mut ranked: Vec<Arc<Pod>> = pods.iter().rev().cloned().collect();
    Ranking::for_signal(Signal::PidAvailable, false).rank(&mut ranked, &stats);
    assert_eq!(names(&ranked), names(&pods));
}

#[test]
fn disk_ranking_measures_what_the_filesystems_hold() {
    // kubelet's TestOrderedbyDisk (usage above the ephemeral-storage request).
    let empty_dir = serde_json::json!([{"name": "local-volume", "emptyDir": {}}]);
    let mk = |name: &str, req: Option<&str>, lim: Option<&str>| {
        let r: Vec<(&str, &str)> = req.map(|v| ("ephemeral-storage", v)).into_iter().collect();
        let l: Vec<(&str, &str)> = lim.map(|v| ("ephemeral-storage", v)).into_iter().collect();
        pod_with(name, 0, &r, &l, empty_dir.clone())
    };
    let pods = [
        mk("best-effort-high", None, None),
        mk("best-effort-low", None, None),
        mk("burstable-high", Some("100Mi"), Some("400Mi")),
        mk("burstable-low", Some("100Mi"), Some("400Mi")),
        mk("guaranteed-high", Some("400Mi"), Some("400Mi")),
        mk("guaranteed-low", Some("400Mi"), Some("400Mi")),
    ];
    let usage = [
        ("50Mi", "100Mi", "150Mi"),
        ("25Mi", "25Mi", "50Mi"),
        ("150Mi", "150Mi", "50Mi"),
        ("25Mi", "35Mi", "50Mi"),
        ("225Mi", "100Mi", "50Mi"),
        ("25Mi", "45Mi", "50Mi"),
    ];
    let stats = pods
        .iter()
        .zip(usage)
        .map(|(p, (r, l, v))| {
            (
                p.metadata.uid.clone().unwrap_or_default(),
                disk_stats(p, r, l, v),
            )
        })
        .collect();
    let all = [
        FsStatsType::Root,
        FsStatsType::Logs,
        FsStatsType::LocalVolumeSource,
    ];
    let mut ranked = pods.to_vec();
    rank_disk_pressure(&mut ranked, &stats, &all, Resource::EphemeralStorage);
    assert_eq!(
        names(&ranked),
        [
            "best-effort-high",
            "burstable-high",
            "best-effort-low",
            "burstable-low",
            "guaranteed-high",
            "guaranteed-low"
        ]
    );
    // Only the logs and volumes count for nodefs when the images have their own filesystem:
    // burstable-high's 150Mi writable layer no longer counts.
    let mut ranked = pods.to_vec();
    Ranking::for_signal(Signal::NodeFsAvailable, true).rank(&mut ranked, &stats);
    assert_eq!(names(&ranked)[..2], ["best-effort-high", "burstable-high"]);
    assert_eq!(
        Ranking::for_signal(Signal::ImageFsAvailable, true),
        Ranking::Disk {
            measure: vec![FsStatsType::Root, FsStatsType::Images],
            resource: Resource::EphemeralStorage
        }
    );

    // kubelet's TestOrderedbyInodes.
    let low = pod_with("low", 0, &[], &[], empty_dir.clone());
    let medium = pod_with("medium", 0, &[], &[], empty_dir.clone());
    let high = pod_with("high", 0, &[], &[], empty_dir);
    let stats = [
        (&low, inode_stats(&low, 50_000, 100_000, 50_000)),
        (&medium, inode_stats(&medium, 100_000, 150_000, 50_000)),
        (&high, inode_stats(&high, 200_000, 150_000, 50_000)),
    ]
    .into_iter()
    .map(|(p, s)| (p.metadata.uid.clone().unwrap_or_default(), s))
    .collect();
    let mut ranked = vec![low, medium, high];
    Ranking::for_signal(Signal::NodeFsInodesFree, false).rank(&mut ranked, &stats);
    assert_eq!(names(&ranked), ["high", "medium", "low"]);
}

// ---------------------------------------------------------------------------------------------
// Messages, grace periods, admission

#[test]
fn the_eviction_message_is_kubelets() {
    let hog = pod("hog", 0, &[("memory", "10Mi")], &[]);
    let stats = memory_stats(&hog, "150Mi");
    let thresholds = [hard(Signal::MemoryAvailable, "100Mi")];
    let obs = Observations::from([(Signal::MemoryAvailable, observation("80Mi", "8Gi", None))]);
    assert_eq!(
        eviction_message(Resource::Memory, &hog, Some(&stats), &thresholds, &obs),
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. \
         Container hog was using 150Mi, request is 10Mi, has larger consumption of memory. "
    );
    let best_effort = pod("x", 0, &[], &[]);
    let stats = memory_stats(&best_effort, "150Mi");
    assert_eq!(
        eviction_message(
            Resource::Memory,
            &best_effort,
            Some(&stats),
            &thresholds,
            &obs
        ),
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. \
         Container x was using 150Mi, request is 0, has larger consumption of memory. "
    );
    // Under its request: no container part; no stats: none either.
    let modest = pod("modest", 0, &[("memory", "1Gi")], &[]);
    let stats = memory_stats(&modest, "150Mi");
    let bare = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. ";
    assert_eq!(
        eviction_message(Resource::Memory, &modest, Some(&stats), &thresholds, &obs),
        bare
    );
    assert_eq!(
        eviction_message(Resource::Memory, &modest, None, &thresholds, &obs),
        bare
    );
    // A percentage threshold is printed as the quantity it is of the capacity.
    let pct = [Threshold {
        value: ThresholdValue::Percentage(0.1),
        ..hard(Signal::NodeFsAvailable, "1")
    }];
    let disk_obs =
        Observations::from([(Signal::NodeFsAvailable, observation("5Gi", "100Gi", None))]);
    let writer = pod("writer", 0, &[], &[]);
    let stats = disk_stats(&writer, "300Mi", "100Mi", "0");
    assert_eq!(
        eviction_message(
            Resource::EphemeralStorage,
            &writer,
            Some(&stats),
            &pct,
            &disk_obs
        ),
        "The node was low on resource: ephemeral-storage. Threshold quantity: 10737418400, \
         available: 5Gi. Container writer was using 400Mi, request is 0, has larger consumption \
         of ephemeral-storage. "
    );
}

#[test]
fn grace_periods_of_hard_and_soft_evictions() {
    let hard_t = hard(Signal::MemoryAvailable, "1Gi");
    let soft_t = Threshold {
        grace_period: Duration::from_secs(60),
        ..hard_t
    };
    let mut own = (*pod("p", 0, &[], &[])).clone();
    assert_eq!(
        eviction_grace_period(&hard_t, 30, &own),
        1,
        "hard: immediate"
    );
    assert_eq!(
        eviction_grace_period(&soft_t, 30, &own),
        30,
        "no own period: the maximum"
    );
    own.spec
        .as_mut()
        .expect("spec")
        .termination_grace_period_seconds = Some(10);
    assert_eq!(
        eviction_grace_period(&soft_t, 30, &own),
        10,
        "the pod's own when shorter"
    );
    assert_eq!(
        eviction_grace_period(&soft_t, 5, &own),
        5,
        "capped by the maximum"
    );
    assert_eq!(
        eviction_grace_period(&soft_t, 0, &own),
        0,
        "kubelet's default maximum, 0"
    );
}

#[test]
fn admission_under_pressure_follows_kubelets_admit_handler() {
    // kubelet's TestAdmitUnderNodeConditions.
    let best_effort = pod("best-effort", 0, &[], &[]);
    let burstable = pod(
        "burstable",
        0,
        &[("memory", "100Mi")],
        &[("memory", "200Mi")],
    );
    let tolerant: Arc<Pod> = {
        let mut p = (*pod("tolerant", 0, &[], &[])).clone();
        p.spec.as_mut().expect("spec").tolerations = Some(vec![serde_json::from_value(
            serde_json::json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        )
        .expect("toleration")]);
        Arc::new(p)
    };
    let critical = pod("critical", 2_000_000_000, &[], &[]);
    let memory = Pressure {
        memory: true,
        ..Default::default()
    };
    let disk = Pressure {
        disk: true,
        ..Default::default()
    };
    let both = Pressure {
        memory: true,
        disk: true,
        pid: false,
    };
    let ok = |p: &Arc<Pod>, pressure| admit(p, pressure).is_ok();
    for p in [&best_effort, &burstable, &tolerant, &critical] {
        assert!(ok(p, Pressure::default()), "no pressure admits all");
    }
    assert!(!ok(&best_effort, memory));
    assert!(ok(&burstable, memory));
    assert!(ok(&tolerant, memory), "tolerates the memory-pressure taint");
    assert!(ok(&critical, memory));
    for pressure in [disk, both] {
        assert!(!ok(&best_effort, pressure));
        assert!(!ok(&burstable, pressure));
        assert!(!ok(&tolerant, pressure));
        assert!(ok(&critical, pressure));
    }
    let rejection = admit(&best_effort, memory).expect_err("refused");
    assert_eq!(rejection.reason, "Evicted");
    assert_eq!(
        rejection.message,
        "The node had condition: [MemoryPressure]. "
    );
    assert_eq!(
        rejection.status().message.as_deref(),
        Some("Pod was rejected: The node had condition: [MemoryPressure]. ")
    );
    assert_eq!(
        condition_message(&both.conditions()),
        "The node had condition: [MemoryPressure DiskPressure]. "
    );
    // Static and mirror pods are critical; API pods below system-critical priority are not.
    let mut static_pod = (*best_effort).clone();
    static_pod.metadata.annotations = Some(map(&[("kubernetes.io/config.source", "file")]));
    assert!(is_critical(&static_pod));
    let mut mirror = (*best_effort).clone();
    mirror
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("kubernetes.io/config.mirror".into(), "x".into());
    assert!(is_critical(&mirror));
    assert!(!is_critical(&pod("high", 1_999_999_999, &[], &[])));
    // The agent's admission runs this handler first.
    let view = crate::admission::NodeView {
        pressure: memory,
        ..Default::default()
    };
    let refused = crate::admission::admit(&best_effort, &view, &[]).expect_err("refused");
    assert_eq!(refused.reason, "Evicted");
}

// ---------------------------------------------------------------------------------------------
// The manager on the fake runtime

mod node {
    //! A test node: the real PLEG, pod cache, pod workers and runtime manager against the fake CRI
    //! runtime, driven as the agent's sync loop drives them (without admission), with the
    //! eviction manager's seams injected.

    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Pod;

    use mk_fake_runtime::{FakeRuntime, ServerHandle};
    use tokio::sync::{mpsc, watch};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use crate::events::{EventRecorder, PodEvent};

    use crate::kuberuntime::labels;
    use crate::metrics::Metrics;

    use crate::pod_workers::PodKiller;
    use crate::pod_workers::test_context::{RunningNode, TestContext, run_node, test_context};

    use crate::sources::PodSet;
    use crate::status::StatusManager;

    pub const NODE: &str = "eviction-node";
    /// kubelet's PLEG relist period.
    const RELIST: Duration = Duration::from_secs(1);
    /// A pod's start: a relist to be seen, a turn, a relist to see the result.
    pub const CONVERGE: Duration = Duration::from_secs(5);

    pub struct TestNode {
        pub fake: FakeRuntime,
        pub desired: watch::Sender<PodSet>,
        pub status: StatusManager,
        pub killer: PodKiller,
        pub metrics: Metrics,
        pub events: EventRecorder,
        pub event_queue: mpsc::Receiver<PodEvent>,
        cancel: CancellationToken,
        driver: JoinHandle<()>,
        _server: ServerHandle,
        _dir: tempfile::TempDir,
    }

    impl TestNode {
        pub fn start(pods: &[&Arc<Pod>]) -> Self {
            let fake = FakeRuntime::new();
            fake.add_image("busybox");
            fake.add_image("registry.k8s.io/pause:3.10");
            let dir = tempfile::tempdir().expect("tempdir");
            let root: &Path = dir.path();
            let server = fake.serve_unix(root.join("cri.sock")).expect("serve");
            let endpoint = format!("unix://{}", root.join("cri.sock").display());
            let (events, event_queue) = EventRecorder::with_queue(64);
            let TestContext {
                ctx,
                metrics,
                status,
                probe_results: probe_rx,
                pleg,
            } = test_context(&endpoint, root, NODE, events.clone(), RELIST, false);
            let cancel = CancellationToken::new();
            let RunningNode {
                desired: desired_tx,
                killer,
                driver,
            } = run_node(ctx, pleg, probe_rx, (), cancel.clone());
            desired_tx.send_replace(PodSet {
                pods: pods
                    .iter()
                    .map(|p| (p.metadata.uid.clone().unwrap_or_default(), Arc::clone(p)))
                    .collect(),
                synced: true,
            });
            Self {
                fake,
                desired: desired_tx,
                status,
                killer,
                metrics,
                events,
                event_queue,
                cancel,
                driver,
                _server: server,
                _dir: dir,
            }
        }

        pub fn running(&self, uid: &str) -> bool {
            let of_pod = |l: &std::collections::HashMap<String, String>| {
                l.get(labels::POD_UID).map(String::as_str) == Some(uid)
            };
            self.fake.sandboxes().iter().any(|s| {
                of_pod(s.labels()) && s.state == mk_fake_runtime::api::PodSandboxState::SandboxReady
            }) && self.fake.containers().iter().any(|c| {
                of_pod(c.labels())
                    && c.state == mk_fake_runtime::api::ContainerState::ContainerRunning
            })
        }

        pub fn stopped(&self, uid: &str) -> bool {
            let of_pod = |l: &std::collections::HashMap<String, String>| {
                l.get(labels::POD_UID).map(String::as_str) == Some(uid)
            };
            !self.fake.sandboxes().iter().any(|s| {
                of_pod(s.labels()) && s.state == mk_fake_runtime::api::PodSandboxState::SandboxReady
            }) && !self.fake.containers().iter().any(|c| {
                of_pod(c.labels())
                    && c.state == mk_fake_runtime::api::ContainerState::ContainerRunning
            })
        }

        /// The value of a counter of the node's metrics (OpenMetrics line prefix).
        pub fn counter(&self, series: &str) -> u64 {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry())
                .expect("encode");
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0)
        }

        pub async fn stop(self) {
            self.cancel.cancel();
            let _ = self.driver.await;
        }
    }

    /// Polls `check` every 100 ms of virtual time until it holds, failing after `within`.
    pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if check() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {within:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

use node::{CONVERGE, TestNode, eventually};

/// Summaries handed out in order; the last one stays. An entry of `None` fails that observation.
struct ScriptedStats {
    summaries: Mutex<Vec<Option<Summary>>>,
    dedicated_image_fs: bool,
    calls: Mutex<usize>,
}

impl ScriptedStats {
    fn new(dedicated_image_fs: bool) -> Arc<Self> {
        Arc::new(Self {
            summaries: Mutex::new(vec![]),
            dedicated_image_fs,
            calls: Mutex::new(0),
        })
    }

    fn then(&self, summary: Option<Summary>) {
        self.summaries.lock().expect("lock").push(summary);
    }

    fn calls(&self) -> usize {
        *self.calls.lock().expect("lock")
    }
}

impl StatsSource for ScriptedStats {
    fn summary(&self) -> BoxFuture<'_, Result<Summary, ObserveError>> {
        *self.calls.lock().expect("lock") += 1;
        let mut queue = self.summaries.lock().expect("lock");
        let next = if queue.len() > 1 {
            queue.remove(0)
        } else {
            queue.first().cloned().flatten()
        };
        async move { next.ok_or(ObserveError::NoImageFs) }.boxed()
    }

    fn has_dedicated_image_fs(&self) -> BoxFuture<'_, Result<bool, ObserveError>> {
        let d = self.dedicated_image_fs;
        async move { Ok(d) }.boxed()
    }
}

/// Records the reclaims, in order; after the images, the stats show `after_images` when set.
struct RecordingReclaim {
    calls: Mutex<Vec<&'static str>>,
    stats: Arc<ScriptedStats>,
    after_images: Option<Summary>,
}

impl NodeReclaim for RecordingReclaim {
    fn delete_unused_containers(&self) -> BoxFuture<'_, Result<(), ReclaimError>> {
        self.calls.lock().expect("lock").push("containers");
        async { Ok(()) }.boxed()
    }

    fn delete_unused_images(&self) -> BoxFuture<'_, Result<(), ReclaimError>> {
        self.calls.lock().expect("lock").push("images");
        if let Some(summary) = &self.after_images {
            let mut queue = self.stats.summaries.lock().expect("lock");
            queue.clear();
            queue.push(Some(summary.clone()));
        }
        async { Ok(()) }.boxed()
    }
}

fn manager(
    node: &TestNode,
    config: EvictionConfig,
    stats: Arc<ScriptedStats>,
    reclaim: Arc<RecordingReclaim>,
) -> (super::EvictionManager, super::PressureView) {
    let (tx, view) = super::PressureView::channel();
    let pods = super::ActivePods {
        pods: node.desired.subscribe(),
        status: node.status.clone(),
    };
    let m = super::EvictionManager::new(
        config,
        super::EvictionSources {
            stats,
            reclaim,
            killer: node.killer.clone(),
            pods,
            events: node.events.clone(),
            metrics: node.metrics.clone(),
        },
        tx,
    );
    (m, view)
}

fn recording(stats: &Arc<ScriptedStats>, after_images: Option<Summary>) -> Arc<RecordingReclaim> {
    Arc::new(RecordingReclaim {
        calls: Mutex::new(vec![]),
        stats: stats.clone(),
        after_images,
    })
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// A static pod (from a manifest: critical) with one container.
fn static_pod(name: &str) -> Arc<Pod> {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         containers:\n  - name: {name}\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    \
         command: [sleep, infinity]\n"
    );
    let pod = crate::sources::manifest::decode(
        &yaml,
        std::path::Path::new(&format!("/etc/manifests/{name}.yaml")),
        node::NODE,
    )
    .expect("manifest");
    Arc::new(pod)
}

#[tokio::test(start_paused = true)]
async fn memory_pressure_evicts_the_burstable_hog_never_the_static_pod_nor_the_guaranteed_one() {
    let guaranteed = pod(
        "guaranteed",
        0,
        &[("memory", "200Mi"), ("cpu", "100m")],
        &[("memory", "200Mi"), ("cpu", "100m")],
    );
    let hog = pod("hog", 0, &[("memory", "10Mi")], &[]);
    let system = static_pod("system");
    let node = TestNode::start(&[&guaranteed, &hog, &system]);
    eventually("the pods run", CONVERGE, || {
        [&guaranteed, &hog, &system]
            .iter()
            .all(|p| node.running(&uid(p)))
    })
    .await;
    let usage = |available: &str, at: i64| {
        let system_stats = memory_stats(&system, "1Gi");
        memory_summary(
            available,
            vec![
                memory_stats(&guaranteed, "100Mi"),
                memory_stats(&hog, "300Mi"),
                system_stats,
            ],
            at,
        )
    };
    let stats = ScriptedStats::new(false);
    let reclaim = recording(&stats, None);
    let (mut manager, pressure) = manager(
        &node,
        config(vec![hard(Signal::MemoryAvailable, "100Mi")]),
        stats.clone(),
        reclaim.clone(),
    );

    stats.then(Some(usage("2Gi", 1)));
    assert!(
        manager.synchronize().await.is_none(),
        "no pressure, no eviction"
    );
    assert!(!pressure.is_under_memory_pressure());

    // The hog crosses the threshold. The static pod uses the most above its request, yet it is
    // critical: the hog, over its request, goes.
    *stats.summaries.lock().expect("lock") = vec![Some(usage("80Mi", 2))];
    let started = tokio::time::Instant::now();
    let evicted = manager.synchronize().await.expect("a pod is evicted");
    assert_eq!(uid(&evicted.pod), "hog");
    assert_eq!(evicted.signal, Signal::MemoryAvailable);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a hard eviction gives the pod the minimum grace period: {:?}",
        started.elapsed()
    );
    let message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: \
                   80Mi. Container hog was using 300Mi, request is 10Mi, has larger consumption of memory. ";
    assert_eq!(evicted.message, message);
    assert!(
        node.stopped("hog"),
        "the pass returns once the pod is stopped"
    );
    assert!(
        node.status
            .entries()
            .iter()
            .any(|e| e.pod.metadata.uid.as_deref() == Some("hog") && e.terminated),
        "...and cleaned up (its volumes torn down)"
    );
    let status = node.status.get("hog").expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(status.message.as_deref(), Some(message));
    let disruption = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("DisruptionTarget");
    assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));
    assert!(pressure.is_under_memory_pressure());
    assert!(!pressure.is_under_disk_pressure() && !pressure.is_under_pid_pressure());
    assert_eq!(
        node.counter("kubelet_evictions{eviction_signal=\"memory.available\"}"),
        1
    );
    let mut node = node;
    let mut evicted_events = vec![];
    while let Ok(e) = node.event_queue.try_recv() {
        if e.reason == "Evicted" {
            evicted_events.push(e);
        }
    }
    assert_eq!(evicted_events.len(), 1, "{evicted_events:?}");
    assert_eq!(evicted_events[0].pod_name, "hog");
    assert_eq!(evicted_events[0].kind, crate::events::EventType::Warning);
    assert_eq!(evicted_events[0].message, message);
    // Under memory pressure a BestEffort pod is refused, a Burstable one admitted.
    assert!(admit(&pod("late", 0, &[], &[]), pressure.current()).is_err());
    assert!(
        admit(
            &pod("late-burstable", 0, &[("memory", "1Mi")], &[]),
            pressure.current()
        )
        .is_ok()
    );

    // Memory comes back: nothing more is evicted; the condition holds for the transition period.
    *stats.summaries.lock().expect("lock") = vec![Some(usage("2Gi", 3))];
    assert!(manager.synchronize().await.is_none());
    assert!(pressure.is_under_memory_pressure(), "transition period");
    assert!(node.running("guaranteed") && node.running(&uid(&system)));
    tokio::time::advance(Duration::from_secs(300)).await;
    *stats.summaries.lock().expect("lock") = vec![Some(usage("2Gi", 400))];
    assert!(manager.synchronize().await.is_none());
    assert!(
        !pressure.is_under_memory_pressure(),
        "transition period over"
    );
    assert!(admit(&pod("late", 0, &[], &[]), pressure.current()).is_ok());

    // Pressure again, with only the static pod and the guaranteed one left: the guaranteed one
    // goes (the static one never), then nothing is left to evict.
    *stats.summaries.lock().expect("lock") = vec![Some(usage("80Mi", 401))];
    let evicted = manager
        .synchronize()
        .await
        .expect("the guaranteed pod is evicted");
    assert_eq!(uid(&evicted.pod), "guaranteed");
    *stats.summaries.lock().expect("lock") = vec![Some(usage("80Mi", 402))];
    assert!(
        manager.synchronize().await.is_none(),
        "a critical pod is never evicted"
    );
    assert!(node.running(&uid(&system)));
    assert_eq!(
        node.counter("kubelet_evictions{eviction_signal=\"memory.available\"}"),
        2
    );
    assert!(
        reclaim.calls.lock().expect("lock").is_empty(),
        "memory has no node-level reclaim"
    );
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_soft_threshold_evicts_only_after_its_grace_period() {
    let burstable = pod("burstable", 0, &[("memory", "10Mi")], &[]);
    let node = TestNode::start(&[&burstable]);
    eventually("the pod runs", CONVERGE, || node.running("burstable")).await;
    let stats = ScriptedStats::new(false);
    let soft = Threshold {
        grace_period: Duration::from_secs(60),
        ..hard(Signal::MemoryAvailable, "1Gi")
    };
    let (mut manager, pressure) = manager(
        &node,
        config(vec![soft]),
        stats.clone(),
        recording(&stats, None),
    );
    for second in 0..6 {
        *stats.summaries.lock().expect("lock") = vec![Some(memory_summary(
            "500Mi",
            vec![memory_stats(&burstable, "100Mi")],
            second * 10,
        ))];
        assert!(
            manager.synchronize().await.is_none(),
            "within the grace period ({second})"
        );
        assert!(pressure.is_under_memory_pressure(), "pressure at once");
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    assert!(node.running("burstable"));
    *stats.summaries.lock().expect("lock") = vec![Some(memory_summary(
        "500Mi",
        vec![memory_stats(&burstable, "100Mi")],
        60,
    ))];
    let evicted = manager.synchronize().await.expect("evicted after 60 s");
    assert_eq!(uid(&evicted.pod), "burstable");
    assert!(node.stopped("burstable"));
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn disk_pressure_reclaims_containers_then_images_before_evicting() {
    let writer = pod_with(
        "writer",
        0,
        &[],
        &[],
        serde_json::json!([{"name": "scratch", "emptyDir": {}}]),
    );
    let quiet = pod("quiet", 0, &[], &[]);
    let node = TestNode::start(&[&writer, &quiet]);
    eventually("the pods run", CONVERGE, || {
        node.running("writer") && node.running("quiet")
    })
    .await;
    let pods = || {
        vec![
            disk_stats(&writer, "10Mi", "1Mi", "900Mi"),
            disk_stats(&quiet, "1Mi", "1Mi", "0"),
        ]
    };
    let nodefs = hard(Signal::NodeFsAvailable, "1Gi");

    // Reclaim frees enough: nobody is evicted.
    let stats = ScriptedStats::new(false);
    stats.then(Some(disk_summary("500Mi", "10Gi", pods(), 1)));
    let reclaim = recording(&stats, Some(disk_summary("5Gi", "10Gi", pods(), 2)));
    let (mut m, pressure) = manager(&node, config(vec![nodefs]), stats.clone(), reclaim.clone());
    assert!(
        m.synchronize().await.is_none(),
        "the reclaim resolved the pressure"
    );
    assert_eq!(
        *reclaim.calls.lock().expect("lock"),
        ["containers", "images"]
    );
    assert!(
        pressure.is_under_disk_pressure(),
        "the pass saw the pressure"
    );
    assert!(node.running("writer") && node.running("quiet"));

    // Reclaim does not free enough: the pod using the most disk goes.
    let stats = ScriptedStats::new(false);
    stats.then(Some(disk_summary("500Mi", "10Gi", pods(), 3)));
    let reclaim = recording(&stats, None);
    let (mut m, _) = manager(&node, config(vec![nodefs]), stats.clone(), reclaim.clone());
    let evicted = m.synchronize().await.expect("evicted");
    assert_eq!(uid(&evicted.pod), "writer");
    assert_eq!(
        *reclaim.calls.lock().expect("lock"),
        ["containers", "images"]
    );
    assert!(evicted.message.starts_with(
        "The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, available: 500Mi. "
    ), "{}", evicted.message);
    assert_eq!(
        node.counter("kubelet_evictions{eviction_signal=\"nodefs.available\"}"),
        1
    );

    // With a dedicated image filesystem, nodefs pressure has nothing to reclaim.
    let stats = ScriptedStats::new(true);
    stats.then(Some(disk_summary("500Mi", "10Gi", pods(), 4)));
    let reclaim = recording(&stats, None);
    let (mut m, _) = manager(&node, config(vec![nodefs]), stats.clone(), reclaim.clone());
    let evicted = m.synchronize().await.expect("evicted");
    assert_eq!(uid(&evicted.pod), "quiet");
    assert!(reclaim.calls.lock().expect("lock").is_empty());
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stats_failure_skips_the_pass() {
    let hog = pod("hog", 0, &[], &[]);
    let node = TestNode::start(&[&hog]);
    eventually("the pod runs", CONVERGE, || node.running("hog")).await;
    let stats = ScriptedStats::new(false);
    stats.then(None);
    stats.then(Some(memory_summary(
        "10Mi",
        vec![memory_stats(&hog, "1Gi")],
        1,
    )));
    let (mut m, pressure) = manager(
        &node,
        config(vec![hard(Signal::MemoryAvailable, "100Mi")]),
        stats.clone(),
        recording(&stats, None),
    );
    assert!(
        m.synchronize().await.is_none(),
        "no stats: the pass is skipped"
    );
    assert!(!pressure.is_under_memory_pressure());
    assert!(node.running("hog"));
    assert_eq!(stats.calls(), 1);
    let evicted = m.synchronize().await.expect("the next pass acts");
    assert_eq!(uid(&evicted.pod), "hog");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_loop_observes_every_monitoring_period_and_stops_when_cancelled() {
    let hog = pod("hog", 0, &[], &[]);
    let node = TestNode::start(&[&hog]);
    eventually("the pod runs", CONVERGE, || node.running("hog")).await;
    let stats = ScriptedStats::new(false);
    stats.then(Some(memory_summary(
        "2Gi",
        vec![memory_stats(&hog, "1Gi")],
        1,
    )));
    let (m, pressure) = manager(
        &node,
        config(vec![hard(Signal::MemoryAvailable, "100Mi")]),
        stats.clone(),
        recording(&stats, None),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(m.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(stats.calls(), 4, "at 0, 10, 20 and 30 s");
    // Pressure: the next pass evicts.
    *stats.summaries.lock().expect("lock") = vec![Some(memory_summary(
        "10Mi",
        vec![memory_stats(&hog, "1Gi")],
        40,
    ))];
    let mut rx = pressure.subscribe();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|p| p.memory))
        .await
        .expect("pressure within a monitoring period")
        .expect("manager alive");
    eventually("the hog is evicted", CONVERGE, || node.stopped("hog")).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the loop ends when cancelled")
        .expect("no panic");
    node.stop().await;
}

#[test]
fn thresholds_print_as_the_configuration_writes_them() {
    let all = EvictionThresholds::parse_all(
        &map(&[("memory.available", "100Mi"), ("nodefs.available", "15%")]),
        &map(&[("memory.available", "500Mi")]),
        &map(&[("memory.available", "1m30s")]),
        &map(&[]),
    )
    .expect("thresholds");
    let mut printed: Vec<String> = all.0.iter().map(ToString::to_string).collect();
    printed.sort();
    assert_eq!(
        printed,
        [
            "memory.available<100Mi",
            "memory.available<500Mi for 90s",
            "nodefs.available<15%",
        ]
    );
}
