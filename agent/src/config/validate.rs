//! Step three of the pipeline: every check of the effective configuration (file and flags
//! together), kubelet's messages where it has them. Nothing stops at the first problem: each
//! comes back with its field's path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::{
    API_VERSION, FieldError, GRACEFUL_NODE_SHUTDOWN, GRACEFUL_NODE_SHUTDOWN_BASED_ON_POD_PRIORITY,
    KIND, KNOWN_FEATURE_GATES, KubeletConfiguration, format_duration,
};
use crate::eviction::EvictionThresholds;

/// The `cgroupDriver` values.
pub const CGROUP_DRIVERS: &[&str] = &["cgroupfs", "systemd"];
/// The `logging.format` values.
pub const LOGGING_FORMATS: &[&str] = &["text", "json"];
/// The resources `kubeReserved` / `systemReserved` may name (besides `hugepages-<size>`).
pub const RESERVABLE_RESOURCES: &[&str] = &["cpu", "memory", "ephemeral-storage", "pid"];

/// Every problem of `config`; empty when it is valid.
pub fn validate(config: &KubeletConfiguration) -> Vec<FieldError> {
    let mut errors = Vec::new();
    type_meta(config, &mut errors);
    periods(config, &mut errors);
    endpoints(config, &mut errors);
    server(config, &mut errors);
    image_pulls(config, &mut errors);
    log_rotation(config, &mut errors);
    image_gc(config, &mut errors);
    reservations(config, &mut errors);
    eviction(config, &mut errors);
    shutdown(config, &mut errors);
    cgroups(config, &mut errors);
    feature_gates(config, &mut errors);
    logging(config, &mut errors);
    errors
}

fn type_meta(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    if let Some(v) = &c.api_version
        && v != API_VERSION
    {
        errors.push(FieldError::new(
            "apiVersion",
            format!("expected {API_VERSION:?}, got {v:?}"),
        ));
    }
    if let Some(k) = &c.kind
        && k != KIND
    {
        errors.push(FieldError::new(
            "kind",
            format!("expected {KIND:?}, got {k:?}"),
        ));
    }
}

fn periods(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    if c.max_pods == 0 {
        errors.push(FieldError::new("maxPods", "must be greater than 0"));
    }
    for (name, value) in [
        ("syncFrequency", c.sync_frequency),
        ("fileCheckFrequency", c.file_check_frequency),
        ("nodeStatusUpdateFrequency", c.node_status_update_frequency),
        ("runtimeRequestTimeout", c.runtime_request_timeout),
    ] {
        if value.is_zero() {
            errors.push(FieldError::new(name, "must be greater than 0"));
        }
    }
    if c.node_lease_duration_seconds <= 0 {
        errors.push(FieldError::new(
            "nodeLeaseDurationSeconds",
            "must be greater than 0",
        ));
    }
}

fn ip(errors: &mut Vec<FieldError>, field: &str, text: &str) {
    if text.parse::<IpAddr>().is_err() {
        errors.push(FieldError::new(
            field,
            format!("{text:?} is not an IP address"),
        ));
    }
}

fn endpoints(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    if let Err(e) = mk_cri::parse_endpoint(&c.container_runtime_endpoint) {
        errors.push(FieldError::new("containerRuntimeEndpoint", e.to_string()));
    }
    ip(errors, "healthzBindAddress", &c.healthz_bind_address);
    ip(errors, "address", &c.address);
    for (i, dns) in c.cluster_dns.iter().enumerate() {
        ip(errors, &format!("clusterDNS[{i}]"), dns);
    }
}

fn server(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    // Ports are u16 (a wrong one fails when the file is read). The kubelet and read-only ports
    // both bind `address`; the healthz port binds `healthzBindAddress`, which overlaps `address`
    // when they are equal or `address` is a wildcard.
    if c.port != 0 && c.port == c.read_only_port {
        errors.push(FieldError::new(
            "readOnlyPort",
            format!("{} is already port", c.read_only_port),
        ));
    }
    let overlapping = c.healthz_bind_address == c.address
        || c.address
            .parse::<IpAddr>()
            .is_ok_and(|a| a.is_unspecified());
    if overlapping && c.healthz_port != 0 {
        for (name, port) in [("port", c.port), ("readOnlyPort", c.read_only_port)] {
            if port == c.healthz_port {
                errors.push(FieldError::new(
                    "healthzPort",
                    format!("{port} is already {name} (on an overlapping address)"),
                ));
            }
        }
    }
    if !matches!(c.authorization.mode.as_str(), "Webhook" | "AlwaysAllow") {
        errors.push(FieldError::new(
            "authorization.mode",
            format!(
                "{:?} is not supported (Webhook or AlwaysAllow)",
                c.authorization.mode
            ),
        ));
    }
    if c.tls_cert_file.is_some() != c.tls_private_key_file.is_some() {
        let missing = if c.tls_cert_file.is_none() {
            "tlsCertFile"
        } else {
            "tlsPrivateKeyFile"
        };
        errors.push(FieldError::new(
            missing,
            "tlsCertFile and tlsPrivateKeyFile go together",
        ));
    }
}

fn image_pulls(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    if c.serialize_image_pulls && c.max_parallel_image_pulls.is_some_and(|n| n > 1) {
        errors.push(FieldError::new(
            "maxParallelImagePulls",
            "must be 1 or unset when serializeImagePulls is true",
        ));
    }
    if c.max_parallel_image_pulls == Some(0) {
        errors.push(FieldError::new(
            "maxParallelImagePulls",
            "must be greater than 0",
        ));
    }
}

fn log_rotation(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    if let Err(e) = c
        .container_log_max_size
        .parse::<crate::quantity::Quantity>()
    {
        errors.push(FieldError::new("containerLogMaxSize", e.to_string()));
    }
    if c.container_log_max_files < 2 {
        errors.push(FieldError::new(
            "containerLogMaxFiles",
            "must be greater than or equal to 2",
        ));
    }
    if c.container_log_monitor_interval < Duration::from_secs(3) {
        errors.push(FieldError::new(
            "containerLogMonitorInterval",
            "must be a positive time duration greater than or equal to 3s",
        ));
    }
    if c.container_log_max_workers < 1 {
        errors.push(FieldError::new(
            "containerLogMaxWorkers",
            "must be greater than or equal to 1",
        ));
    }
}

/// kubelet's checks of the image garbage collection fields (its messages).
fn image_gc(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    let (high, low) = (
        c.image_gc_high_threshold_percent,
        c.image_gc_low_threshold_percent,
    );
    let high_ok = (0..=100).contains(&high);
    let low_ok = (0..=100).contains(&low);
    if !high_ok {
        errors.push(FieldError::new(
            "imageGCHighThresholdPercent",
            format!("{high} must be between 0 and 100, inclusive"),
        ));
    }
    if !low_ok {
        errors.push(FieldError::new(
            "imageGCLowThresholdPercent",
            format!("{low} must be between 0 and 100, inclusive"),
        ));
    }
    if high_ok && low_ok && low >= high {
        errors.push(FieldError::new(
            "imageGCLowThresholdPercent",
            format!("{low} must be less than imageGCHighThresholdPercent {high}"),
        ));
    }
    let (min_age, max_age) = (c.image_minimum_gc_age, c.image_maximum_gc_age);
    if !max_age.is_zero() && max_age <= min_age {
        errors.push(FieldError::new(
            "imageMaximumGCAge",
            format!(
                "{} must be greater than imageMinimumGCAge {}",
                format_duration(max_age),
                format_duration(min_age)
            ),
        ));
    }
}

/// `kubeReserved` / `systemReserved`: known resources, valid non-negative quantities.
fn reservations(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    for (name, map) in [
        ("kubeReserved", &c.kube_reserved),
        ("systemReserved", &c.system_reserved),
    ] {
        for (key, text) in map {
            let path = format!("{name}[{key}]");
            if !RESERVABLE_RESOURCES.contains(&key.as_str()) && !key.starts_with("hugepages-") {
                errors.push(FieldError::new(
                    &path,
                    format!(
                        "unsupported resource {key:?} (cpu, memory, ephemeral-storage, pid, \
                         hugepages-<size>)"
                    ),
                ));
                continue;
            }
            match text.parse::<crate::quantity::Quantity>() {
                Err(e) => errors.push(FieldError::new(&path, e.to_string())),
                Ok(q) if q.is_negative() => errors.push(FieldError::new(
                    &path,
                    format!("resource quantity cannot be negative: {text}"),
                )),
                Ok(_) => {}
            }
        }
    }
}

/// Every eviction setting, one entry at a time so that every bad one is reported.
fn eviction(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    let none = BTreeMap::new();
    let one = |k: &String, v: &String| BTreeMap::from([(k.clone(), v.clone())]);
    let mut push = |r: Result<EvictionThresholds, crate::eviction::ThresholdError>| {
        if let Err(e) = r {
            errors.push(FieldError::new(e.field_path(), e.reason()));
        }
    };
    for (k, v) in &c.eviction_hard {
        push(EvictionThresholds::parse_all(
            &one(k, v),
            &none,
            &none,
            &none,
        ));
    }
    let mut grace = BTreeMap::new();
    for (k, v) in &c.eviction_soft_grace_period {
        let r = EvictionThresholds::parse_all(&none, &none, &one(k, v), &none);
        if r.is_ok() {
            grace.insert(k.clone(), v.clone());
        }
        push(r);
    }
    for (k, v) in &c.eviction_soft {
        if c.eviction_soft_grace_period.contains_key(k) && !grace.contains_key(k) {
            continue; // its grace period is wrong, which is reported already
        }
        push(EvictionThresholds::parse_all(
            &none,
            &one(k, v),
            &grace,
            &none,
        ));
    }
    for (k, v) in &c.eviction_minimum_reclaim {
        push(EvictionThresholds::parse_all(
            &none,
            &none,
            &none,
            &one(k, v),
        ));
    }
    if c.eviction_max_pod_grace_period < 0 {
        errors.push(FieldError::new(
            "evictionMaxPodGracePeriod",
            "must be greater than or equal to 0",
        ));
    }
}

/// kubelet's checks of the graceful node shutdown fields (its messages).
fn shutdown(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    let (period, critical) = (
        c.shutdown_grace_period,
        c.shutdown_grace_period_critical_pods,
    );
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if critical > period {
        errors.push(FieldError::new(
            "shutdownGracePeriodCriticalPods",
            format!(
                "{} must be <= shutdownGracePeriod {}",
                show(critical),
                show(period)
            ),
        ));
    }
    for (name, value) in [
        ("shutdownGracePeriod", period),
        ("shutdownGracePeriodCriticalPods", critical),
    ] {
        if !value.is_zero() && value < Duration::from_secs(1) {
            errors.push(FieldError::new(
                name,
                format!("{} must be either zero or otherwise >= 1 sec", show(value)),
            ));
        }
    }
    let periods_set = !(period.is_zero() && critical.is_zero());
    if periods_set && !c.graceful_node_shutdown() {
        errors.push(FieldError::new(
            "shutdownGracePeriod",
            format!(
                "specifying shutdownGracePeriod or shutdownGracePeriodCriticalPods requires \
                 feature gate {GRACEFUL_NODE_SHUTDOWN}"
            ),
        ));
    }
    if !c.shutdown_grace_period_by_pod_priority.is_empty() {
        if !c.graceful_node_shutdown_based_on_pod_priority() {
            errors.push(FieldError::new(
                "shutdownGracePeriodByPodPriority",
                format!(
                    "Specifying shutdownGracePeriodByPodPriority requires feature gate \
                     {GRACEFUL_NODE_SHUTDOWN_BASED_ON_POD_PRIORITY}"
                ),
            ));
        }
        if periods_set {
            errors.push(FieldError::new(
                "shutdownGracePeriodByPodPriority",
                "Cannot specify both shutdownGracePeriodByPodPriority and shutdownGracePeriod \
                 at the same time",
            ));
        }
    }
}

/// `cgroupDriver`, `cgroupsPerQOS`, `enforceNodeAllocatable` (kubelet's rules; enforcing the
/// reservations on their own cgroups is not implemented).
fn cgroups(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    if !CGROUP_DRIVERS.contains(&c.cgroup_driver.as_str()) {
        errors.push(FieldError::new(
            "cgroupDriver",
            format!(
                "{:?} is not supported (cgroupfs or systemd)",
                c.cgroup_driver
            ),
        ));
    }
    let enforce = &c.enforce_node_allocatable;
    let mut seen = Vec::new();
    for (i, option) in enforce.iter().enumerate() {
        let path = format!("enforceNodeAllocatable[{i}]");
        match option.as_str() {
            "pods" | "none" => {}
            "system-reserved"
            | "system-reserved-compressible"
            | "kube-reserved"
            | "kube-reserved-compressible" => errors.push(FieldError::new(
                &path,
                format!(
                    "{option:?} is not supported: enforcing reservations on their own cgroups \
                     is not implemented (pods or none)"
                ),
            )),
            other => errors.push(FieldError::new(
                &path,
                format!("invalid option {other:?} (pods or none)"),
            )),
        }
        if seen.contains(&option) {
            errors.push(FieldError::new(
                &path,
                format!("duplicate option {option:?}"),
            ));
        }
        seen.push(option);
    }
    if enforce.len() > 1 && enforce.iter().any(|o| o == "none") {
        errors.push(FieldError::new(
            "enforceNodeAllocatable",
            "none cannot be combined with other options",
        ));
    }
    if !c.cgroups_per_qos && enforce.iter().any(|o| o != "none") {
        errors.push(FieldError::new(
            "enforceNodeAllocatable",
            "enforceNodeAllocatable is not supported unless cgroupsPerQOS is true",
        ));
    }
}

/// Feature gates the agent does not know change nothing here: refused, so that nobody relies
/// on one that silently does nothing.
fn feature_gates(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    for gate in c.unknown_feature_gates() {
        errors.push(FieldError::new(
            format!("featureGates[{gate}]"),
            format!(
                "feature gate unknown to this agent (it knows {})",
                KNOWN_FEATURE_GATES.join(", ")
            ),
        ));
    }
}

fn logging(c: &KubeletConfiguration, errors: &mut Vec<FieldError>) {
    if !LOGGING_FORMATS.contains(&c.logging.format.as_str()) {
        errors.push(FieldError::new(
            "logging.format",
            format!("{:?} is not supported (text or json)", c.logging.format),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, KubeletConfiguration};

    fn fields(text: &str) -> Vec<String> {
        match KubeletConfiguration::parse(text, std::path::Path::new("kubelet.yaml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.field_errors().into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn every_error_is_reported_together_with_its_path() {
        let text = "maxPods: 0\nsyncFrequency: \"0\"\nkubeReserved: {cpu: lots, memory: \"-1\"}\n\
                    systemReserved: {pid: many}\n\
                    evictionHard: {memory.available: lots, nodefs.available: 200%}\n\
                    evictionSoft: {memory.available: 1Gi, imagefs.available: 20%}\n\
                    evictionSoftGracePeriod: {memory.available: soon}\n\
                    evictionMinimumReclaim: {nodefs.available: \"-1Gi\"}\n\
                    containerLogMaxFiles: 1\nimageGCHighThresholdPercent: 101\n\
                    shutdownGracePeriod: 500ms\ncgroupDriver: openrc\n\
                    staticPodURL: http://x\nprotectKernelDefaults: true\n";
        let err = KubeletConfiguration::parse(text, std::path::Path::new("kubelet.yaml"))
            .expect_err("invalid");
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let mut got = fields(text);
        got.sort();
        assert_eq!(
            got,
            [
                "cgroupDriver",
                "containerLogMaxFiles",
                "evictionHard[memory.available]",
                "evictionHard[nodefs.available]",
                "evictionMinimumReclaim[nodefs.available]",
                "evictionSoftGracePeriod[imagefs.available]",
                "evictionSoftGracePeriod[memory.available]",
                "imageGCHighThresholdPercent",
                "kubeReserved[cpu]",
                "kubeReserved[memory]",
                "maxPods",
                "protectKernelDefaults",
                "shutdownGracePeriod",
                "staticPodURL",
                "syncFrequency",
                "systemReserved[pid]",
            ]
        );
        // The message lists them one per line, after the file's name.
        let text = err.to_string();
        assert!(
            text.starts_with("invalid configuration (kubelet.yaml):\n"),
            "{text}"
        );
        assert!(text.contains("\n  kubeReserved[cpu]: "), "{text}");
    }

    #[test]
    fn cgroup_settings_follow_kubelet() {
        for (text, expected) in [
            ("cgroupDriver: systemd\n", vec![]),
            ("cgroupDriver: cgroupfs\n", vec![]),
            ("cgroupDriver: openrc\n", vec!["cgroupDriver"]),
            ("enforceNodeAllocatable: []\n", vec![]),
            ("enforceNodeAllocatable: [none]\n", vec![]),
            ("enforceNodeAllocatable: [pods]\n", vec![]),
            (
                "enforceNodeAllocatable: [pods, kube-reserved]\n",
                vec!["enforceNodeAllocatable[1]"],
            ),
            (
                "enforceNodeAllocatable: [system-reserved-compressible]\n",
                vec!["enforceNodeAllocatable[0]"],
            ),
            (
                "enforceNodeAllocatable: [pods, pods]\n",
                vec!["enforceNodeAllocatable[1]"],
            ),
            (
                "enforceNodeAllocatable: [pods, none]\n",
                vec!["enforceNodeAllocatable"],
            ),
            (
                "enforceNodeAllocatable: [everything]\n",
                vec!["enforceNodeAllocatable[0]"],
            ),
            ("cgroupsPerQOS: false\n", vec!["enforceNodeAllocatable"]),
            ("cgroupsPerQOS: false\nenforceNodeAllocatable: []\n", vec![]),
            (
                "cgroupsPerQOS: false\nenforceNodeAllocatable: [none]\n",
                vec![],
            ),
        ] {
            assert_eq!(fields(text), expected, "{text}");
        }
        let c = KubeletConfiguration::default();
        assert_eq!(
            (c.cgroup_driver.as_str(), c.cgroups_per_qos),
            ("cgroupfs", true)
        );
        assert_eq!(c.enforce_node_allocatable, ["pods"]);
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn refused_upstream_fields_name_their_path() {
        for (text, expected) in [
            ("staticPodURL: http://x/pods\n", "staticPodURL"),
            ("cpuManagerPolicy: static\n", "cpuManagerPolicy"),
            (
                "topologyManagerPolicy: restricted\n",
                "topologyManagerPolicy",
            ),
            ("memoryManagerPolicy: Static\n", "memoryManagerPolicy"),
            ("protectKernelDefaults: true\n", "protectKernelDefaults"),
            (
                "featureGates: {CPUManager: true}\n",
                "featureGates[CPUManager]",
            ),
            (
                "memorySwap: {swapBehavior: LimitedSwap}\n",
                "memorySwap.swapBehavior",
            ),
            (
                "logging: {vmodule: [{filePattern: x, verbosity: 2}]}\n",
                "logging.vmodule",
            ),
            ("podPidsLimit: 100\n", "podPidsLimit"),
            (
                "systemReservedCgroup: /system.slice\n",
                "systemReservedCgroup",
            ),
        ] {
            assert_eq!(fields(text), [expected], "{text}");
        }
        // Set to what the agent does anyway: accepted.
        for text in [
            "cpuManagerPolicy: none\n",
            "topologyManagerPolicy: none\n",
            "memoryManagerPolicy: None\n",
            "protectKernelDefaults: false\n",
            "podPidsLimit: -1\n",
            "enableServer: true\nenableDebuggingHandlers: true\n",
            "featureGates: {EventedPLEG: true, GracefulNodeShutdown: true}\n",
        ] {
            assert_eq!(fields(text), Vec::<String>::new(), "{text}");
        }
    }
}
