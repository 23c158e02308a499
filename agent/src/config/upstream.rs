//! The fields of upstream's KubeletConfiguration (k8s.io/kubelet/config/v1beta1) that the agent
//! does not implement, each classified on purpose: accepted and ignored (with why), or refused
//! at start-up unless set to the value that means what the agent does anyway. A field that is
//! neither here nor in [`super::KubeletConfiguration`] is unknown: a warning.

use super::load::UnknownField;
use super::{FieldError, parse_duration};

/// What the agent does with an upstream field it does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Accepted, no effect: why that is harmless.
    Ignored(&'static str),
    /// Refused at start-up, unless unset (null, "", [], {}) or one of these values (compared as
    /// text; durations by their length): the behaviour the agent has.
    Refused {
        unless: &'static [&'static str],
        why: &'static str,
    },
}

/// One upstream field the agent does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamField {
    /// Its path (`memorySwap.swapBehavior`); a field below it counts as it.
    pub path: &'static str,
    pub rule: Rule,
}

const fn ignored(path: &'static str, why: &'static str) -> UpstreamField {
    UpstreamField {
        path,
        rule: Rule::Ignored(why),
    }
}

const fn refused(
    path: &'static str,
    unless: &'static [&'static str],
    why: &'static str,
) -> UpstreamField {
    UpstreamField {
        path,
        rule: Rule::Refused { unless, why },
    }
}

/// Every upstream KubeletConfiguration field the agent does not implement, in upstream's order.
pub const UPSTREAM_FIELDS: &[UpstreamField] = &[
    refused(
        "enableServer",
        &["true"],
        "the kubelet port is always served; turn it off with port: 0",
    ),
    ignored(
        "httpCheckFrequency",
        "only used with staticPodURL, which is refused",
    ),
    refused(
        "staticPodURL",
        &[],
        "static pods from a URL are not implemented (use staticPodPath)",
    ),
    refused(
        "staticPodURLHeader",
        &[],
        "static pods from a URL are not implemented",
    ),
    refused(
        "tlsCipherSuites",
        &[],
        "the kubelet port's cipher suites are rustls' defaults and cannot be chosen",
    ),
    refused(
        "tlsCurvePreferences",
        &[],
        "the kubelet port's key exchanges are rustls' defaults and cannot be chosen",
    ),
    refused(
        "tlsMinVersion",
        &["VersionTLS12"],
        "the kubelet port accepts TLS 1.2 and 1.3; another minimum is not implemented",
    ),
    ignored(
        "registryPullQPS",
        "image pulls are not rate limited (serializeImagePulls / maxParallelImagePulls bound them)",
    ),
    ignored("registryBurst", "image pulls are not rate limited"),
    refused(
        "imagePullCredentialsVerificationPolicy",
        &["NeverVerify"],
        "images present on the node are used without checking pull credentials (NeverVerify)",
    ),
    refused(
        "preloadedImagesVerificationAllowlist",
        &[],
        "pull credentials of present images are never verified",
    ),
    ignored("eventRecordQPS", "events are not rate limited"),
    ignored("eventBurst", "events are not rate limited"),
    refused(
        "enableDebuggingHandlers",
        &["true"],
        "logs, exec, attach and port-forward are always served on the kubelet port",
    ),
    ignored(
        "enableContentionProfiling",
        "there are no profiling endpoints",
    ),
    ignored(
        "oomScoreAdj",
        "the agent leaves its own oom_score_adj as it was started",
    ),
    ignored(
        "streamingConnectionIdleTimeout",
        "deprecated upstream, where it has no effect either",
    ),
    ignored(
        "volumeStatsAggPeriod",
        "volume usage is measured when stats are asked for",
    ),
    refused(
        "kubeletCgroups",
        &[],
        "the agent does not move itself into a cgroup",
    ),
    refused(
        "systemCgroups",
        &[],
        "the agent does not move system processes into a cgroup",
    ),
    refused(
        "cpuManagerPolicy",
        &["none", "None"],
        "only the none CPU manager policy is implemented (no exclusive CPUs)",
    ),
    refused(
        "singleProcessOOMKill",
        &["true"],
        "the agent does not set memory.oom.group (a container's processes are OOM killed one by one)",
    ),
    refused(
        "cpuManagerPolicyOptions",
        &[],
        "only the none CPU manager policy is implemented",
    ),
    ignored("cpuManagerReconcilePeriod", "no CPU manager (policy none)"),
    ignored("draManagerReconcilePeriod", "no DRA manager"),
    refused(
        "memoryManagerPolicy",
        &["None", "none"],
        "only the None memory manager policy is implemented",
    ),
    refused(
        "topologyManagerPolicy",
        &["none"],
        "only the none topology manager policy is implemented (no NUMA alignment)",
    ),
    ignored("topologyManagerScope", "no topology manager (policy none)"),
    refused(
        "topologyManagerPolicyOptions",
        &[],
        "only the none topology manager policy is implemented",
    ),
    refused(
        "qosReserved",
        &[],
        "reserving resources for guaranteed pods (QOSReserved) is not implemented",
    ),
    ignored(
        "hairpinMode",
        "pod networking, hairpin traffic included, is the runtime's (CNI)",
    ),
    refused(
        "podCIDR",
        &[],
        "the agent does not hand a pod CIDR to the runtime; its network plugin assigns addresses",
    ),
    refused(
        "podPidsLimit",
        &["-1"],
        "a per-pod PID limit is not implemented",
    ),
    refused("runOnce", &["false"], "run-once mode is not implemented"),
    refused(
        "cpuCFSQuota",
        &["true"],
        "CPU limits are always enforced with CFS quota",
    ),
    refused(
        "cpuCFSQuotaPeriod",
        &["100ms"],
        "the CFS quota period is the kernel's 100ms",
    ),
    refused(
        "nodeStatusMaxImages",
        &["50"],
        "the node status lists at most 50 images (kubelet's default)",
    ),
    ignored(
        "maxOpenFiles",
        "the agent does not change its own open-file limit",
    ),
    ignored(
        "contentType",
        "the API client's content type is the kube crate's (JSON)",
    ),
    ignored("kubeAPIQPS", "API requests are not rate limited"),
    ignored("kubeAPIBurst", "API requests are not rate limited"),
    refused(
        "mergeDefaultEvictionSettings",
        &["false"],
        "evictionHard as written replaces the defaults (merging them in is not implemented)",
    ),
    refused(
        "podsPerCore",
        &["0"],
        "a pods-per-core limit is not implemented",
    ),
    ignored(
        "enableControllerAttachDetach",
        "the agent attaches no volumes itself; attachable volumes are the controller's",
    ),
    refused(
        "protectKernelDefaults",
        &["false"],
        "checking the kernel's settings (and failing on a difference) is not implemented",
    ),
    ignored(
        "makeIPTablesUtilChains",
        "the agent makes no iptables chains",
    ),
    ignored(
        "iptablesMasqueradeBit",
        "deprecated upstream, where it has no effect either",
    ),
    ignored(
        "iptablesDropBit",
        "deprecated upstream, where it has no effect either",
    ),
    ignored(
        "failSwapOn",
        "the agent does not check swap; pods get no swap from it either",
    ),
    refused(
        "memorySwap.swapBehavior",
        &["NoSwap"],
        "giving pods swap (LimitedSwap) is not implemented",
    ),
    ignored(
        "configMapAndSecretChangeDetectionStrategy",
        "ConfigMaps and Secrets are read the agent's own way",
    ),
    refused(
        "reservedSystemCPUs",
        &[],
        "a static list of reserved CPUs is not implemented (use kubeReserved / systemReserved)",
    ),
    ignored("showHiddenMetricsForVersion", "the agent hides no metrics"),
    refused(
        "systemReservedCgroup",
        &[],
        "enforcing systemReserved on a cgroup is not implemented",
    ),
    refused(
        "kubeReservedCgroup",
        &[],
        "enforcing kubeReserved on a cgroup is not implemented",
    ),
    ignored(
        "allowedUnsafeSysctls",
        "the agent does not refuse pods for unsafe sysctls; the runtime applies what pods ask",
    ),
    ignored("volumePluginDir", "there are no FlexVolume plugins"),
    refused(
        "providerID",
        &[],
        "the agent does not set the Node's spec.providerID",
    ),
    ignored(
        "kernelMemcgNotification",
        "memory is sampled every eviction period instead",
    ),
    ignored(
        "enableSystemLogHandler",
        "there is no /logs/ endpoint for the node's own logs",
    ),
    refused(
        "enableSystemLogQuery",
        &["false"],
        "node log queries (/logs/) are not implemented",
    ),
    refused(
        "crashLoopBackOff",
        &[],
        "the crash-loop back-off is fixed: 10s doubling to 300s",
    ),
    refused(
        "reservedMemory",
        &[],
        "only the None memory manager policy is implemented",
    ),
    ignored(
        "enableProfilingHandler",
        "there are no /debug/pprof endpoints",
    ),
    ignored(
        "enableDebugFlagsHandler",
        "there is no /debug/flags endpoint",
    ),
    refused(
        "seccompDefault",
        &["false"],
        "RuntimeDefault as every pod's default seccomp profile is not implemented",
    ),
    ignored(
        "memoryThrottlingFactor",
        "MemoryQoS (cgroup v2 memory.high) is not implemented",
    ),
    refused(
        "memoryReservationPolicy",
        &["None"],
        "MemoryQoS memory protection is not implemented",
    ),
    ignored("tracing", "the agent exports no traces"),
    refused(
        "localStorageCapacityIsolation",
        &["true"],
        "turning local ephemeral storage accounting off is not implemented",
    ),
    refused(
        "imageServiceEndpoint",
        &[],
        "images are managed over containerRuntimeEndpoint; a separate image service is not implemented",
    ),
    ignored("failCgroupV1", "the agent runs on cgroup v1 and v2 alike"),
    refused(
        "userNamespaces.idsPerPod",
        &["65536"],
        "only kubelet's default user namespace size is implemented",
    ),
    ignored(
        "authentication.webhook.cacheTTL",
        "TokenReview answers are cached for the agent's own period",
    ),
    ignored(
        "authorization.webhook.cacheAuthorizedTTL",
        "SubjectAccessReview answers are cached for the agent's own period",
    ),
    ignored(
        "authorization.webhook.cacheUnauthorizedTTL",
        "SubjectAccessReview answers are cached for the agent's own period",
    ),
    ignored(
        "logging.flushFrequency",
        "log lines are written as they come",
    ),
    refused(
        "logging.vmodule",
        &[],
        "per-module verbosity is not implemented (set logging.verbosity)",
    ),
    ignored(
        "logging.options",
        "format options of component-base's logging are not implemented",
    ),
];

/// The rule of a field of the file the struct does not have; None: not an upstream field.
pub fn rule_of(path: &str) -> Option<&'static UpstreamField> {
    UPSTREAM_FIELDS.iter().find(|f| {
        path == f.path
            || path
                .strip_prefix(f.path)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The unknown fields judged: refused ones are errors; ignored and unknown ones, warnings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Judged {
    pub refused: Vec<FieldError>,
    pub ignored: Vec<FieldError>,
}

/// Judges every field of the file that the struct does not have.
pub fn judge(unknown: &[UnknownField]) -> Judged {
    let mut judged = Judged::default();
    let mut leaves = Vec::new();
    for field in unknown {
        flatten(&field.path, &field.value, &mut leaves);
    }
    for field in &leaves {
        if is_unset(&field.value) {
            continue;
        }
        match rule_of(&field.path).map(|f| f.rule) {
            None => judged.ignored.push(FieldError::new(
                &field.path,
                "unknown field (not a KubeletConfiguration v1beta1 field this agent knows), ignored",
            )),
            Some(Rule::Ignored(why)) => judged.ignored.push(FieldError::new(
                &field.path,
                format!("accepted and ignored: {why}"),
            )),
            Some(Rule::Refused { unless, why }) => {
                if !unless.iter().any(|accepted| same(&field.value, accepted)) {
                    judged.refused.push(FieldError::new(
                        &field.path,
                        format!("{} is not supported: {why}", render(&field.value)),
                    ));
                }
            }
        }
    }
    judged
}

/// A section the struct does not have (`memorySwap`, `authorization.webhook`) is judged by its
/// fields, unless a rule names the section itself.
fn flatten(path: &str, value: &serde_json::Value, out: &mut Vec<UnknownField>) {
    match value {
        serde_json::Value::Object(map)
            if !map.is_empty() && !UPSTREAM_FIELDS.iter().any(|f| f.path == path) =>
        {
            for (key, value) in map {
                flatten(&format!("{path}.{key}"), value, out);
            }
        }
        _ => out.push(UnknownField {
            path: path.to_string(),
            value: value.clone(),
        }),
    }
}

fn is_unset(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn render(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn same(value: &serde_json::Value, accepted: &str) -> bool {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return false,
    };
    if text == accepted {
        return true;
    }
    matches!(
        (parse_duration(&text), parse_duration(accepted)),
        (Ok(a), Ok(b)) if a == b
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(path: &str, value: serde_json::Value) -> UnknownField {
        UnknownField {
            path: path.into(),
            value,
        }
    }

    #[test]
    fn refuses_semantic_fields_unless_set_to_what_the_agent_does() {
        use serde_json::json;
        let judged = judge(&[
            field("staticPodURL", json!("http://x/pods")),
            field("cpuManagerPolicy", json!("static")),
            field("topologyManagerPolicy", json!("best-effort")),
            field("memoryManagerPolicy", json!("Static")),
            field("protectKernelDefaults", json!(true)),
            field("cpuCFSQuotaPeriod", json!("50ms")),
            field("memorySwap", json!({"swapBehavior": "LimitedSwap"})),
            field(
                "logging.vmodule",
                json!([{"filePattern": "x", "verbosity": 4}]),
            ),
            // Accepted: the agent's own behaviour, or unset.
            field("cpuManagerPolicy", json!("none")),
            field("topologyManagerPolicy", json!("none")),
            field("memoryManagerPolicy", json!("None")),
            field("protectKernelDefaults", json!(false)),
            field("cpuCFSQuotaPeriod", json!("0.1s")),
            field("enableServer", json!(true)),
            field("memorySwap", json!({"swapBehavior": "NoSwap"})),
            field("staticPodURL", json!("")),
            field("nodeStatusMaxImages", json!(50)),
        ]);
        let paths: Vec<&str> = judged.refused.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            paths,
            [
                "staticPodURL",
                "cpuManagerPolicy",
                "topologyManagerPolicy",
                "memoryManagerPolicy",
                "protectKernelDefaults",
                "cpuCFSQuotaPeriod",
                "memorySwap.swapBehavior",
                "logging.vmodule",
            ]
        );
        assert!(
            judged.refused[1]
                .message
                .contains("\"static\" is not supported"),
            "{}",
            judged.refused[1]
        );
        assert!(judged.ignored.is_empty(), "{:?}", judged.ignored);
    }

    #[test]
    fn harmless_and_unknown_fields_are_warnings() {
        use serde_json::json;
        let judged = judge(&[
            field("kubeAPIQPS", json!(50)),
            field("authentication.webhook.cacheTTL", json!("2m0s")),
            field(
                "authorization.webhook",
                json!({"cacheAuthorizedTTL": "5m0s"}),
            ),
            field("tracing.endpoint", json!("localhost:4317")),
            field("noSuchField", json!(1)),
        ]);
        assert!(judged.refused.is_empty(), "{:?}", judged.refused);
        let paths: Vec<&str> = judged.ignored.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kubeAPIQPS",
                "authentication.webhook.cacheTTL",
                "authorization.webhook.cacheAuthorizedTTL",
                "tracing.endpoint",
                "noSuchField"
            ]
        );
        assert!(judged.ignored[4].message.contains("unknown field"));
    }

    #[test]
    fn no_upstream_field_is_listed_twice_or_is_one_the_agent_reads() {
        let mut seen = std::collections::BTreeSet::new();
        let known = serde_json::to_value(super::super::KubeletConfiguration::default())
            .expect("serializable");
        for f in UPSTREAM_FIELDS {
            assert!(seen.insert(f.path), "{} listed twice", f.path);
            let top = f.path.split('.').next().unwrap_or(f.path);
            // A nested rule under a section the agent reads (authentication.webhook.cacheTTL)
            // is fine; a top-level field the agent reads must not be here.
            if !f.path.contains('.') {
                assert!(
                    known.get(top).is_none(),
                    "{} is a field the agent reads",
                    f.path
                );
            }
        }
    }
}
