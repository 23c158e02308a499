//! The agent's configuration: a subset of `kubelet.config.k8s.io/v1beta1` KubeletConfiguration with
//! kubelet's field names and defaults. One pipeline, as kubelet's: the file is loaded ([`load`]),
//! the command-line flags are applied onto it ([`flags`]), then everything is validated once
//! ([`validate`], [`upstream`] for the upstream fields the agent does not implement), every
//! error naming its field's path. `mini-kubelet config validate|reference` ([`command`]) prints
//! the outcome; `/configz` serves it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod command;
mod duration;
pub mod flags;
pub mod load;
pub mod reference;
pub mod upstream;
pub mod validate;

use duration::go_duration;
pub use duration::{GoDuration, format_duration, parse_duration};
pub use flags::FlagOverrides;
pub use load::Loaded;

pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KIND: &str = "KubeletConfiguration";

/// One field's problem: its path (`kubeReserved[cpu]`, `evictionHard[memory.available]`,
/// `authentication.x509.clientCAFile`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem of a configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Why the configuration could not be loaded, or what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML/JSON: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: field {field}: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// The configuration (file and flags) loaded but is not valid: every problem found.
    #[error("invalid configuration ({source_name}):\n{errors}")]
    Invalid {
        /// The file, or "flags" without one.
        source_name: String,
        errors: FieldErrors,
    },
}

impl ConfigError {
    /// Every field's problem (one for a wrong type, none for an unreadable file).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => Vec::new(),
            ConfigError::Field { field, message, .. } => vec![FieldError::new(field, message)],
            ConfigError::Invalid { errors, .. } => errors.0.clone(),
        }
    }
}

/// The KubeletConfiguration fields this agent reads. Field names and defaults are kubelet's.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeletConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub static_pod_path: Option<PathBuf>,
    pub container_runtime_endpoint: String,
    pub read_only_port: u16,
    pub healthz_port: u16,
    pub healthz_bind_address: String,
    pub address: String,
    pub pod_logs_dir: PathBuf,
    pub max_pods: u32,
    #[serde(with = "go_duration")]
    pub sync_frequency: Duration,
    #[serde(with = "go_duration")]
    pub file_check_frequency: Duration,
    #[serde(with = "go_duration")]
    pub runtime_request_timeout: Duration,
    pub cgroup_root: String,
    /// How the pods' cgroups are named and made: `cgroupfs` (paths such as
    /// `/kubepods/burstable/pod<uid>`) or `systemd` (slices such as
    /// `kubepods-burstable-pod<uid>.slice`). It must match the runtime's driver.
    pub cgroup_driver: String,
    /// Whether the agent makes the QoS cgroups (`kubepods`, `kubepods/burstable`,
    /// `kubepods/besteffort`) and a cgroup per pod holding the pod's limits.
    #[serde(rename = "cgroupsPerQOS")]
    pub cgroups_per_qos: bool,
    /// What node allocatable is enforced on: `pods` puts the node's allocatable cpu and memory
    /// on the `kubepods` cgroup; `none` (or an empty list) enforces nothing.
    pub enforce_node_allocatable: Vec<String>,
    pub serialize_image_pulls: bool,
    /// With serializeImagePulls false: at most this many pulls at once (unset: no limit).
    pub max_parallel_image_pulls: Option<u32>,
    pub register_node: bool,
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// Resource name → quantity (`cpu: 100m`, `memory: 256Mi`).
    pub kube_reserved: BTreeMap<String, String>,
    pub system_reserved: BTreeMap<String, String>,
    /// Signal → threshold (`memory.available: 100Mi`, `nodefs.available: 10%`).
    pub eviction_hard: BTreeMap<String, String>,
    /// Signal → soft threshold: pods are evicted once it has held for its grace period.
    pub eviction_soft: BTreeMap<String, String>,
    /// Signal → how long its soft threshold must hold (a Go duration); every soft threshold needs one.
    pub eviction_soft_grace_period: BTreeMap<String, String>,
    /// How long a pressure condition stays true after its threshold was last met (0: 5m).
    #[serde(with = "go_duration")]
    pub eviction_pressure_transition_period: Duration,
    /// The longest grace period (seconds) a pod evicted for a soft threshold gets.
    pub eviction_max_pod_grace_period: i32,
    /// Signal → how much more than its threshold must be available before a met threshold is
    /// resolved (`nodefs.available: 500Mi`, `imagefs.available: 2%`).
    pub eviction_minimum_reclaim: BTreeMap<String, String>,
    #[serde(with = "go_duration")]
    pub node_status_update_frequency: Duration,
    #[serde(with = "go_duration")]
    pub node_status_report_frequency: Duration,
    pub node_lease_duration_seconds: i32,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The resolv.conf pods with dnsPolicy Default (or no clusterDNS) use.
    pub resolv_conf: PathBuf,
    /// The kubelet port (TLS; logs, exec, attach, port-forward); 0 turns it off.
    pub port: u16,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// Renew the client certificate through CertificateSigningRequests before it expires.
    pub rotate_certificates: bool,
    /// Get the kubelet port's serving certificate from a `kubernetes.io/kubelet-serving`
    /// CertificateSigningRequest (approved by an operator) instead of a self-signed one.
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: bool,
    pub authentication: Authentication,
    pub authorization: Authorization,
    /// Feature gates by name. The agent knows `EventedPLEG` (on unless set false here: follow the
    /// runtime's container events where it serves them), `GracefulNodeShutdown` and
    /// `GracefulNodeShutdownBasedOnPodPriority` (on unless set false, as in kubelet); any other
    /// gate is reported at start-up and ignored.
    pub feature_gates: BTreeMap<String, bool>,
    /// A container's log file is rotated once it reaches this size (a quantity; a negative one
    /// turns rotation off, as kubelet's).
    pub container_log_max_size: String,
    /// The most log files a container keeps: the live one and the rotated ones (at least 2).
    pub container_log_max_files: i32,
    /// How often the containers' log files are checked for rotation (at least 3 s).
    #[serde(with = "go_duration")]
    pub container_log_monitor_interval: Duration,
    /// How many containers' logs are rotated at once (at least 1).
    pub container_log_max_workers: i32,
    /// Image garbage collection runs when the image filesystem's usage reaches this percentage
    /// (0–100; 100 turns image garbage collection off).
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: i32,
    /// ...and frees images until the usage would be below this one (0–100, below the high one).
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: i32,
    /// An unused image is not garbage collected before it is this old (since first seen).
    #[serde(rename = "imageMinimumGCAge", with = "go_duration")]
    pub image_minimum_gc_age: Duration,
    /// An image unused for longer than this is removed whatever the disk usage (0: never).
    #[serde(rename = "imageMaximumGCAge", with = "go_duration")]
    pub image_maximum_gc_age: Duration,
    /// Graceful node shutdown: how long the node's pods get to stop when the agent is told the
    /// node shuts down (SIGTERM), all priority groups together (0 turns the feature off).
    #[serde(with = "go_duration")]
    pub shutdown_grace_period: Duration,
    /// The part of `shutdownGracePeriod` kept for critical pods (priority ≥ 2000000000), which
    /// stop after the others.
    #[serde(with = "go_duration")]
    pub shutdown_grace_period_critical_pods: Duration,
    /// Instead of the two above: the seconds pods get by priority band, each band from its
    /// priority up to the next one's (the lowest band also takes anything lower).
    pub shutdown_grace_period_by_pod_priority: Vec<ShutdownGracePeriodByPodPriority>,
    /// component-base's LoggingConfiguration: `format` (text or json) and `verbosity` (klog's
    /// -v), read by the agent's logging set-up.
    pub logging: Logging,
}

/// `logging`, with kubelet's names and defaults (text, verbosity 0).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Logging {
    /// `text` or `json`.
    pub format: String,
    /// klog's verbosity: 0-2 info, 3-4 debug, 5+ trace.
    pub verbosity: u8,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            format: "text".into(),
            verbosity: 0,
        }
    }
}

/// One band of `shutdownGracePeriodByPodPriority`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ShutdownGracePeriodByPodPriority {
    /// The lowest pod priority of the band.
    pub priority: i32,
    /// How long the band's pods get to stop (and the band waits for them).
    pub shutdown_grace_period_seconds: i64,
}

/// The feature gates the agent knows.
pub const KNOWN_FEATURE_GATES: &[&str] = &[
    EVENTED_PLEG,
    GRACEFUL_NODE_SHUTDOWN,
    GRACEFUL_NODE_SHUTDOWN_BASED_ON_POD_PRIORITY,
];
/// kubelet's gate of graceful node shutdown (on by default, as in kubelet).
pub const GRACEFUL_NODE_SHUTDOWN: &str = "GracefulNodeShutdown";
/// kubelet's gate of `shutdownGracePeriodByPodPriority` (on by default, as in kubelet).
pub const GRACEFUL_NODE_SHUTDOWN_BASED_ON_POD_PRIORITY: &str =
    "GracefulNodeShutdownBasedOnPodPriority";
/// Follow the runtime's container events instead of relisting every second (kubelet's alpha gate
/// of that name; on by default here).
pub const EVENTED_PLEG: &str = "EventedPLEG";

/// `authentication` (the kubelet port's), with KubeletConfiguration v1beta1's defaults.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Authentication {
    pub x509: X509Authentication,
    pub webhook: WebhookAuthentication,
    pub anonymous: AnonymousAuthentication,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default)]
pub struct X509Authentication {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WebhookAuthentication {
    /// Bearer tokens are checked with TokenReviews.
    pub enabled: bool,
}

impl Default for WebhookAuthentication {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct AnonymousAuthentication {
    pub enabled: bool,
}

/// `authorization`: `Webhook` (SubjectAccessReviews, the default) or `AlwaysAllow`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Authorization {
    pub mode: String,
}

impl Default for Authorization {
    fn default() -> Self {
        Self {
            mode: "Webhook".into(),
        }
    }
}

impl Default for KubeletConfiguration {
    fn default() -> Self {
        Self {
            api_version: None,
            kind: None,
            static_pod_path: None,
            container_runtime_endpoint: "unix:///run/containerd/containerd.sock".into(),
            read_only_port: 0,
            healthz_port: 10248,
            healthz_bind_address: "127.0.0.1".into(),
            address: "0.0.0.0".into(),
            pod_logs_dir: "/var/log/pods".into(),
            max_pods: 110,
            sync_frequency: Duration::from_secs(60),
            file_check_frequency: Duration::from_secs(20),
            runtime_request_timeout: Duration::from_secs(120),
            cgroup_root: "/".into(),
            cgroup_driver: "cgroupfs".into(),
            cgroups_per_qos: true,
            enforce_node_allocatable: vec!["pods".into()],
            serialize_image_pulls: true,
            max_parallel_image_pulls: None,
            register_node: true,
            register_with_taints: Vec::new(),
            kube_reserved: BTreeMap::new(),
            system_reserved: BTreeMap::new(),
            eviction_hard: [
                ("memory.available", "100Mi"),
                ("nodefs.available", "10%"),
                ("nodefs.inodesFree", "5%"),
                ("imagefs.available", "15%"),
                ("imagefs.inodesFree", "5%"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            eviction_soft: BTreeMap::new(),
            eviction_soft_grace_period: BTreeMap::new(),
            eviction_pressure_transition_period: Duration::from_secs(300),
            eviction_max_pod_grace_period: 0,
            eviction_minimum_reclaim: BTreeMap::new(),
            node_status_update_frequency: Duration::from_secs(10),
            node_status_report_frequency: Duration::from_secs(300),
            node_lease_duration_seconds: 40,
            cluster_dns: Vec::new(),
            cluster_domain: String::new(),
            resolv_conf: "/etc/resolv.conf".into(),
            port: 10250,
            tls_cert_file: None,
            tls_private_key_file: None,
            rotate_certificates: false,
            server_tls_bootstrap: false,
            authentication: Authentication::default(),
            authorization: Authorization::default(),
            feature_gates: BTreeMap::new(),
            container_log_max_size: "10Mi".into(),
            container_log_max_files: 5,
            container_log_monitor_interval: Duration::from_secs(10),
            container_log_max_workers: 1,
            image_gc_high_threshold_percent: 85,
            image_gc_low_threshold_percent: 80,
            image_minimum_gc_age: Duration::from_secs(120),
            image_maximum_gc_age: Duration::ZERO,
            shutdown_grace_period: Duration::ZERO,
            shutdown_grace_period_critical_pods: Duration::ZERO,
            shutdown_grace_period_by_pod_priority: Vec::new(),
            logging: Logging::default(),
        }
    }
}

impl KubeletConfiguration {
    /// Whether the PLEG follows the runtime's container events where it serves them.
    pub fn evented_pleg(&self) -> bool {
        self.feature_gates
            .get(EVENTED_PLEG)
            .copied()
            .unwrap_or(true)
    }

    /// Whether graceful node shutdown may be configured (its gate, on unless set false).
    pub fn graceful_node_shutdown(&self) -> bool {
        self.feature_gates
            .get(GRACEFUL_NODE_SHUTDOWN)
            .copied()
            .unwrap_or(true)
    }

    /// Whether `shutdownGracePeriodByPodPriority` may be used (its gate, on unless set false).
    pub fn graceful_node_shutdown_based_on_pod_priority(&self) -> bool {
        self.feature_gates
            .get(GRACEFUL_NODE_SHUTDOWN_BASED_ON_POD_PRIORITY)
            .copied()
            .unwrap_or(true)
    }

    /// Feature gates set in the file that the agent does not know.
    pub fn unknown_feature_gates(&self) -> Vec<&str> {
        self.feature_gates
            .keys()
            .map(String::as_str)
            .filter(|gate| !KNOWN_FEATURE_GATES.contains(gate))
            .collect()
    }

    /// `containerLogMaxSize` in bytes; None when rotation is off (a negative size) or the
    /// quantity does not parse (which [`KubeletConfiguration::parse`] refuses).
    pub fn container_log_max_bytes(&self) -> Option<u64> {
        let quantity: crate::quantity::Quantity = self.container_log_max_size.parse().ok()?;
        u64::try_from(quantity.value()).ok()
    }

    /// How many image pulls may run at once: 1 when serialized, else maxParallelImagePulls.
    pub fn parallel_pull_limit(&self) -> Option<usize> {
        if self.serialize_image_pulls {
            return Some(1);
        }
        self.max_parallel_image_pulls.map(|n| n as usize)
    }
}

/// The configuration the agent runs with, and the upstream fields it ignored (to warn about).
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub config: KubeletConfiguration,
    /// Fields set in the file that the agent accepts and ignores, each with why.
    pub ignored: Vec<FieldError>,
}

/// kubelet's pipeline: load `file` (or start from the defaults), apply `flags`, validate
/// everything once. Every problem is reported together, each with its field's path.
pub fn resolve(file: Option<&Path>, flags: &FlagOverrides) -> Result<Effective, ConfigError> {
    let loaded = match file {
        Some(path) => load::load(path)?,
        None => Loaded::defaults(),
    };
    loaded.finish(flags)
}

impl KubeletConfiguration {
    /// Reads a KubeletConfiguration file without flags: [`resolve`] with none.
    pub fn load(path: &Path) -> Result<Effective, ConfigError> {
        resolve(Some(path), &FlagOverrides::default())
    }

    /// Parses and validates `text` as the file `path` (no flags).
    pub fn parse(text: &str, path: &Path) -> Result<Effective, ConfigError> {
        load::parse(text, path)?.finish(&FlagOverrides::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Effective, ConfigError> {
        KubeletConfiguration::parse(text, Path::new("kubelet.yaml"))
    }

    /// Every error of `text`, or a panic when it is valid.
    fn errors(text: &str) -> Vec<FieldError> {
        match parse(text) {
            Ok(_) => panic!("{text}: expected errors"),
            Err(e) => {
                let errors = e.field_errors();
                assert!(!errors.is_empty(), "{text}: {e}");
                errors
            }
        }
    }

    /// The fields of `text`'s errors.
    fn error_fields(text: &str) -> Vec<String> {
        errors(text).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn empty_file_gives_kubelet_defaults() {
        let loaded = parse("").expect("empty config");
        assert_eq!(loaded.config, KubeletConfiguration::default());
        assert_eq!(loaded.config.healthz_port, 10248);
        assert_eq!(loaded.config.max_pods, 110);
        assert_eq!(loaded.config.file_check_frequency, Duration::from_secs(20));
        assert_eq!(
            loaded.config.runtime_request_timeout,
            Duration::from_secs(120)
        );
        assert_eq!(loaded.config.pod_logs_dir, PathBuf::from("/var/log/pods"));
    }

    #[test]
    fn reads_kubelet_field_names_and_go_durations() {
        let loaded = parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             staticPodPath: /etc/kubernetes/manifests\ncontainerRuntimeEndpoint: unix:///run/crio/crio.sock\n\
             readOnlyPort: 10255\nmaxPods: 30\nsyncFrequency: 1m30s\nfileCheckFrequency: 5s\n\
             runtimeRequestTimeout: 2m0s\npodLogsDir: /tmp/pods\n",
        )
        .expect("valid config");
        let c = loaded.config;
        assert_eq!(
            c.static_pod_path,
            Some(PathBuf::from("/etc/kubernetes/manifests"))
        );
        assert_eq!(c.container_runtime_endpoint, "unix:///run/crio/crio.sock");
        assert_eq!(c.read_only_port, 10255);
        assert_eq!(c.max_pods, 30);
        assert_eq!(c.sync_frequency, Duration::from_secs(90));
        assert_eq!(c.file_check_frequency, Duration::from_secs(5));
        assert_eq!(c.pod_logs_dir, PathBuf::from("/tmp/pods"));
        assert!(loaded.ignored.is_empty());
    }

    #[test]
    fn certificate_fields_keep_kubelet_names() {
        let c = parse("rotateCertificates: true\nserverTLSBootstrap: true\n")
            .expect("valid config")
            .config;
        assert!(c.rotate_certificates);
        assert!(c.server_tls_bootstrap);
        let d = KubeletConfiguration::default();
        assert!(!d.rotate_certificates && !d.server_tls_bootstrap);
    }

    #[test]
    fn json_is_accepted_too() {
        let loaded = parse(r#"{"kind":"KubeletConfiguration","maxPods":7}"#).expect("json");
        assert_eq!(loaded.config.max_pods, 7);
    }

    #[test]
    fn evented_pleg_is_on_unless_its_gate_is_false() {
        assert!(KubeletConfiguration::default().evented_pleg());
        let loaded = parse("featureGates: {EventedPLEG: false}\n").expect("valid");
        assert!(!loaded.config.evented_pleg());
        assert!(loaded.ignored.is_empty());
        // A gate the agent does not know would silently do nothing: refused.
        let errors = errors("featureGates: {EventedPLEG: false, NoSuchGate: true}\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "featureGates[NoSuchGate]");
    }

    #[test]
    fn harmless_unknown_fields_are_warnings_semantic_ones_are_refused() {
        let loaded = parse(
            "maxPods: 10\nclusterDNS: [10.0.0.10]\nkubeAPIQPS: 5\nnoSuchField: 1\n\
             cpuManagerPolicy: none\n",
        )
        .expect("harmless unknown fields are warnings");
        assert_eq!(loaded.config.max_pods, 10);
        assert_eq!(loaded.config.cluster_dns, vec!["10.0.0.10"]);
        let warned: Vec<&str> = loaded.ignored.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(warned, ["kubeAPIQPS", "noSuchField"]);
        assert_eq!(
            error_fields(
                "staticPodURL: http://x\nimageServiceEndpoint: unix:///x\ncpuManagerPolicy: static\n"
            ),
            ["cpuManagerPolicy", "imageServiceEndpoint", "staticPodURL"]
        );
    }

    #[test]
    fn wrong_type_fails_with_the_field_path() {
        let err = parse("maxPods: lots\n").expect_err("wrong type");
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "maxPods"),
            "{err}"
        );
        let err = parse("syncFrequency: soon\n").expect_err("bad duration");
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "syncFrequency"),
            "{err}"
        );
    }

    #[test]
    fn wrong_values_fail_with_the_field_path() {
        for (text, expected) in [
            ("kind: Pod\n", "kind"),
            ("apiVersion: v1\n", "apiVersion"),
            ("maxPods: 0\n", "maxPods"),
            (
                "containerRuntimeEndpoint: tcp://1.2.3.4:5\n",
                "containerRuntimeEndpoint",
            ),
            ("healthzBindAddress: localhost\n", "healthzBindAddress"),
            ("readOnlyPort: 70000\n", "readOnlyPort"),
            ("maxParallelImagePulls: 3\n", "maxParallelImagePulls"),
            ("readOnlyPort: 10250\n", "readOnlyPort"),
            ("healthzPort: 10250\n", "healthzPort"),
            ("clusterDNS: [10.0.0.10, dns]\n", "clusterDNS[1]"),
            ("address: somewhere\n", "address"),
            ("tlsCertFile: /x.crt\n", "tlsPrivateKeyFile"),
            ("authorization: {mode: RBAC}\n", "authorization.mode"),
            ("logging: {format: xml}\n", "logging.format"),
            ("logging: {verbosity: 300}\n", "logging.verbosity"),
            ("kubeReserved: {cpu: lots}\n", "kubeReserved[cpu]"),
            (
                "systemReserved: {memory: \"-1Gi\"}\n",
                "systemReserved[memory]",
            ),
            ("kubeReserved: {gpu: \"1\"}\n", "kubeReserved[gpu]"),
            (
                "evictionMaxPodGracePeriod: -1\n",
                "evictionMaxPodGracePeriod",
            ),
        ] {
            assert_eq!(error_fields(text), [expected], "{text}");
        }
    }

    #[test]
    fn container_log_rotation_has_kubelet_defaults_and_names() {
        let d = KubeletConfiguration::default();
        assert_eq!(d.container_log_max_size, "10Mi");
        assert_eq!(d.container_log_max_bytes(), Some(10 * 1024 * 1024));
        assert_eq!(d.container_log_max_files, 5);
        assert_eq!(d.container_log_monitor_interval, Duration::from_secs(10));
        assert_eq!(d.container_log_max_workers, 1);
        let loaded = parse(
            "containerLogMaxSize: 1Mi\ncontainerLogMaxFiles: 3\n\
             containerLogMonitorInterval: 3s\ncontainerLogMaxWorkers: 4\n",
        )
        .expect("valid config");
        assert!(loaded.ignored.is_empty());
        let c = loaded.config;
        assert_eq!(c.container_log_max_bytes(), Some(1024 * 1024));
        assert_eq!(c.container_log_max_files, 3);
        assert_eq!(c.container_log_monitor_interval, Duration::from_secs(3));
        assert_eq!(c.container_log_max_workers, 4);
        let decimal = parse("containerLogMaxSize: 5M\n").expect("valid").config;
        assert_eq!(decimal.container_log_max_bytes(), Some(5_000_000));
        let off = parse("containerLogMaxSize: \"-1\"\n")
            .expect("valid")
            .config;
        assert_eq!(
            off.container_log_max_bytes(),
            None,
            "negative: rotation off"
        );
    }

    #[test]
    fn container_log_rotation_values_are_validated() {
        for (text, expected) in [
            ("containerLogMaxSize: ten\n", "containerLogMaxSize"),
            ("containerLogMaxSize: 10Xi\n", "containerLogMaxSize"),
            ("containerLogMaxFiles: 1\n", "containerLogMaxFiles"),
            ("containerLogMaxFiles: -5\n", "containerLogMaxFiles"),
            (
                "containerLogMonitorInterval: 2s\n",
                "containerLogMonitorInterval",
            ),
            (
                "containerLogMonitorInterval: 2999ms\n",
                "containerLogMonitorInterval",
            ),
            (
                "containerLogMonitorInterval: soon\n",
                "containerLogMonitorInterval",
            ),
            ("containerLogMaxWorkers: 0\n", "containerLogMaxWorkers"),
            ("containerLogMaxFiles: many\n", "containerLogMaxFiles"),
        ] {
            assert_eq!(error_fields(text), [expected], "{text}");
        }
        for text in [
            "containerLogMaxFiles: 2\n",
            "containerLogMonitorInterval: 3s\n",
            "containerLogMaxWorkers: 1\n",
            "containerLogMaxSize: \"0\"\n",
        ] {
            assert!(parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn image_gc_has_kubelet_defaults_and_names() {
        let d = KubeletConfiguration::default();
        assert_eq!(d.image_gc_high_threshold_percent, 85);
        assert_eq!(d.image_gc_low_threshold_percent, 80);
        assert_eq!(d.image_minimum_gc_age, Duration::from_secs(120));
        assert_eq!(d.image_maximum_gc_age, Duration::ZERO);
        let loaded = parse(
            "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\n\
             imageMinimumGCAge: 0s\nimageMaximumGCAge: 1h30m\n",
        )
        .expect("valid config");
        assert!(loaded.ignored.is_empty(), "{:?}", loaded.ignored);
        let c = loaded.config;
        assert_eq!(c.image_gc_high_threshold_percent, 1);
        assert_eq!(c.image_gc_low_threshold_percent, 0);
        assert_eq!(c.image_minimum_gc_age, Duration::ZERO);
        assert_eq!(c.image_maximum_gc_age, Duration::from_secs(5400));
    }

    #[test]
    fn image_gc_values_are_validated() {
        for (text, expected) in [
            (
                "imageGCHighThresholdPercent: 101\n",
                "imageGCHighThresholdPercent",
            ),
            (
                "imageGCHighThresholdPercent: -1\n",
                "imageGCHighThresholdPercent",
            ),
            (
                "imageGCHighThresholdPercent: 90\nimageGCLowThresholdPercent: -1\n",
                "imageGCLowThresholdPercent",
            ),
            (
                "imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 101\n",
                "imageGCLowThresholdPercent",
            ),
            (
                "imageGCLowThresholdPercent: 85\n",
                "imageGCLowThresholdPercent",
            ),
            (
                "imageGCLowThresholdPercent: 90\n",
                "imageGCLowThresholdPercent",
            ),
            (
                "imageGCHighThresholdPercent: 70\n",
                "imageGCLowThresholdPercent",
            ),
            (
                "imageGCHighThresholdPercent: lots\n",
                "imageGCHighThresholdPercent",
            ),
            ("imageMinimumGCAge: soon\n", "imageMinimumGCAge"),
            ("imageMaximumGCAge: 1m\n", "imageMaximumGCAge"),
            (
                "imageMinimumGCAge: 5m\nimageMaximumGCAge: 5m\n",
                "imageMaximumGCAge",
            ),
        ] {
            assert_eq!(error_fields(text), [expected], "{text}");
        }
        for text in [
            "imageGCHighThresholdPercent: 100\n",
            "imageGCHighThresholdPercent: 81\n",
            "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\n",
            "imageMaximumGCAge: 2m1s\n",
            "imageMaximumGCAge: \"0\"\nimageMinimumGCAge: 0s\n",
        ] {
            assert!(parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn graceful_node_shutdown_is_off_by_default_and_keeps_kubelet_names() {
        let d = KubeletConfiguration::default();
        assert_eq!(d.shutdown_grace_period, Duration::ZERO);
        assert_eq!(d.shutdown_grace_period_critical_pods, Duration::ZERO);
        assert!(d.shutdown_grace_period_by_pod_priority.is_empty());
        assert!(d.graceful_node_shutdown() && d.graceful_node_shutdown_based_on_pod_priority());
        let loaded = parse("shutdownGracePeriod: 30s\nshutdownGracePeriodCriticalPods: 10s\n")
            .expect("valid config");
        assert!(loaded.ignored.is_empty(), "{:?}", loaded.ignored);
        assert_eq!(loaded.config.shutdown_grace_period, Duration::from_secs(30));
        assert_eq!(
            loaded.config.shutdown_grace_period_critical_pods,
            Duration::from_secs(10)
        );
        let loaded = parse(
            "shutdownGracePeriodByPodPriority:\n- priority: 100000\n  shutdownGracePeriodSeconds: 60\n\
             - priority: 0\n  shutdownGracePeriodSeconds: 30\n",
        )
        .expect("valid config");
        assert!(loaded.ignored.is_empty(), "{:?}", loaded.ignored);
        assert_eq!(
            loaded.config.shutdown_grace_period_by_pod_priority,
            vec![
                ShutdownGracePeriodByPodPriority {
                    priority: 100_000,
                    shutdown_grace_period_seconds: 60
                },
                ShutdownGracePeriodByPodPriority {
                    priority: 0,
                    shutdown_grace_period_seconds: 30
                },
            ]
        );
        let gates = parse("featureGates: {GracefulNodeShutdown: true, GracefulNodeShutdownBasedOnPodPriority: true}\n")
            .expect("valid");
        assert!(gates.config.unknown_feature_gates().is_empty());
    }

    #[test]
    fn graceful_node_shutdown_values_are_validated_as_kubelet_does() {
        for (text, expected, want) in [
            (
                "shutdownGracePeriod: 10s\nshutdownGracePeriodCriticalPods: 20s\n",
                "shutdownGracePeriodCriticalPods",
                "20s must be <= shutdownGracePeriod 10s",
            ),
            (
                "shutdownGracePeriodCriticalPods: 5s\n",
                "shutdownGracePeriodCriticalPods",
                "5s must be <= shutdownGracePeriod 0s",
            ),
            (
                "shutdownGracePeriod: 500ms\n",
                "shutdownGracePeriod",
                "500ms must be either zero or otherwise >= 1 sec",
            ),
            (
                "shutdownGracePeriod: 10s\nshutdownGracePeriodCriticalPods: 10ms\n",
                "shutdownGracePeriodCriticalPods",
                "10ms must be either zero or otherwise >= 1 sec",
            ),
            (
                "shutdownGracePeriod: soon\n",
                "shutdownGracePeriod",
                "invalid duration",
            ),
            (
                "shutdownGracePeriod: 10s\nfeatureGates: {GracefulNodeShutdown: false}\n",
                "shutdownGracePeriod",
                "requires feature gate GracefulNodeShutdown",
            ),
            (
                "shutdownGracePeriod: 10s\nshutdownGracePeriodByPodPriority: [{priority: 0, shutdownGracePeriodSeconds: 5}]\n",
                "shutdownGracePeriodByPodPriority",
                "Cannot specify both shutdownGracePeriodByPodPriority and shutdownGracePeriod at the same time",
            ),
            (
                "shutdownGracePeriodByPodPriority: [{priority: 0, shutdownGracePeriodSeconds: 5}]\n\
                 featureGates: {GracefulNodeShutdownBasedOnPodPriority: false}\n",
                "shutdownGracePeriodByPodPriority",
                "requires feature gate GracefulNodeShutdownBasedOnPodPriority",
            ),
            (
                "shutdownGracePeriodByPodPriority: [{priority: high}]\n",
                "shutdownGracePeriodByPodPriority[0].priority",
                "invalid type",
            ),
        ] {
            let errors = errors(text);
            assert!(
                errors
                    .iter()
                    .any(|e| e.field == expected && e.message.contains(want)),
                "{text}: {errors:?}"
            );
        }
        for text in [
            "shutdownGracePeriod: 10s\nshutdownGracePeriodCriticalPods: 10s\n",
            "shutdownGracePeriod: 1s\n",
            "shutdownGracePeriod: \"0\"\nshutdownGracePeriodCriticalPods: 0s\n",
            "shutdownGracePeriodByPodPriority: [{priority: 0, shutdownGracePeriodSeconds: 5}]\n",
        ] {
            assert!(parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn malformed_yaml_is_a_syntax_error() {
        assert!(matches!(
            parse("maxPods: [1,\n"),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
