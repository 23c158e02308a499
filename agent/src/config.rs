//! The agent's configuration: a subset of `kubelet.config.k8s.io/v1beta1` KubeletConfiguration with
//! kubelet's field names and defaults, loaded from YAML or JSON, then overridden by command-line flags.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KIND: &str = "KubeletConfiguration";

/// Why the configuration could not be loaded.
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
}

/// A Go-style duration ("20s", "1m0s", "2m30s") as KubeletConfiguration writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a Go duration string ("0", "20s", "1m0s", "100ms").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} (expected e.g. \"20s\" or \"1m0s\"): {e}"))
}

/// The KubeletConfiguration fields this agent reads. Field names and defaults are kubelet's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeletConfiguration {
    pub api_version: Option<String>,
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
    /// runtime's container events where it serves them); any other gate is reported at start-up
    /// and ignored.
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
}

/// The feature gates the agent knows.
pub const KNOWN_FEATURE_GATES: &[&str] = &[EVENTED_PLEG];
/// Follow the runtime's container events instead of relisting every second (kubelet's alpha gate
/// of that name; on by default here).
pub const EVENTED_PLEG: &str = "EventedPLEG";

/// `authentication` (the kubelet port's), with KubeletConfiguration v1beta1's defaults.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Authentication {
    pub x509: X509Authentication,
    pub webhook: WebhookAuthentication,
    pub anonymous: AnonymousAuthentication,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct X509Authentication {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct AnonymousAuthentication {
    pub enabled: bool,
}

/// `authorization`: `Webhook` (SubjectAccessReviews, the default) or `AlwaysAllow`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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

mod go_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::GoDuration::deserialize(deserializer).map(|d| d.0)
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
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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
        }
    }
}

/// The result of loading a file: the configuration and the unknown fields that were ignored.
#[derive(Debug)]
pub struct Loaded {
    pub config: KubeletConfiguration,
    pub unknown_fields: Vec<String>,
}

impl KubeletConfiguration {
    /// Whether the PLEG follows the runtime's container events where it serves them.
    pub fn evented_pleg(&self) -> bool {
        self.feature_gates
            .get(EVENTED_PLEG)
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

    /// Reads a KubeletConfiguration file. A wrong type or value fails with the field's path; unknown
    /// fields are returned so the caller can warn about them.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let value = if value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            value
        };
        let mut unknown = BTreeSet::new();
        let mut record = |field: serde_ignored::Path<'_>| {
            unknown.insert(field.to_string());
        };
        let ignored = serde_ignored::Deserializer::new(&value, &mut record);
        let config: KubeletConfiguration =
            serde_path_to_error::deserialize(ignored).map_err(|e| ConfigError::Field {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate(path)?;
        Ok(Loaded {
            config,
            unknown_fields: unknown.into_iter().collect(),
        })
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let field = |field: &str, message: String| ConfigError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        if let Some(v) = &self.api_version
            && v != API_VERSION
        {
            return Err(field(
                "apiVersion",
                format!("expected {API_VERSION:?}, got {v:?}"),
            ));
        }
        if let Some(k) = &self.kind
            && k != KIND
        {
            return Err(field("kind", format!("expected {KIND:?}, got {k:?}")));
        }
        if self.serialize_image_pulls && self.max_parallel_image_pulls.is_some_and(|n| n > 1) {
            return Err(field(
                "maxParallelImagePulls",
                "must be 1 or unset when serializeImagePulls is true".into(),
            ));
        }
        if self.max_parallel_image_pulls == Some(0) {
            return Err(field(
                "maxParallelImagePulls",
                "must be greater than 0".into(),
            ));
        }
        if self.max_pods == 0 {
            return Err(field("maxPods", "must be greater than 0".into()));
        }
        if self.sync_frequency.is_zero() {
            return Err(field("syncFrequency", "must be greater than 0".into()));
        }
        if self.file_check_frequency.is_zero() {
            return Err(field("fileCheckFrequency", "must be greater than 0".into()));
        }
        if self.node_lease_duration_seconds <= 0 {
            return Err(field(
                "nodeLeaseDurationSeconds",
                "must be greater than 0".into(),
            ));
        }
        if self.node_status_update_frequency.is_zero() {
            return Err(field(
                "nodeStatusUpdateFrequency",
                "must be greater than 0".into(),
            ));
        }
        if self.runtime_request_timeout.is_zero() {
            return Err(field(
                "runtimeRequestTimeout",
                "must be greater than 0".into(),
            ));
        }
        if let Err(e) = mk_cri::parse_endpoint(&self.container_runtime_endpoint) {
            return Err(field("containerRuntimeEndpoint", e.to_string()));
        }
        if self
            .healthz_bind_address
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            return Err(field(
                "healthzBindAddress",
                format!("{:?} is not an IP address", self.healthz_bind_address),
            ));
        }
        if !matches!(self.authorization.mode.as_str(), "Webhook" | "AlwaysAllow") {
            return Err(field(
                "authorization.mode",
                format!(
                    "{:?} is not supported (Webhook or AlwaysAllow)",
                    self.authorization.mode
                ),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_private_key_file.is_some() {
            return Err(field(
                "tlsCertFile",
                "tlsCertFile and tlsPrivateKeyFile go together".into(),
            ));
        }
        if let Err(e) = self
            .container_log_max_size
            .parse::<crate::quantity::Quantity>()
        {
            return Err(field("containerLogMaxSize", e.to_string()));
        }
        if self.container_log_max_files < 2 {
            return Err(field(
                "containerLogMaxFiles",
                "must be greater than or equal to 2".into(),
            ));
        }
        if self.container_log_monitor_interval < Duration::from_secs(3) {
            return Err(field(
                "containerLogMonitorInterval",
                "must be a positive time duration greater than or equal to 3s".into(),
            ));
        }
        if self.container_log_max_workers < 1 {
            return Err(field(
                "containerLogMaxWorkers",
                "must be greater than or equal to 1".into(),
            ));
        }
        self.validate_image_gc(path)?;
        if self.address.parse::<std::net::IpAddr>().is_err() {
            return Err(field(
                "address",
                format!("{:?} is not an IP address", self.address),
            ));
        }
        Ok(())
    }
}

impl KubeletConfiguration {
    /// kubelet's checks of the image garbage collection fields (its messages).
    fn validate_image_gc(&self, path: &Path) -> Result<(), ConfigError> {
        let field = |field: &str, message: String| ConfigError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        let (high, low) = (
            self.image_gc_high_threshold_percent,
            self.image_gc_low_threshold_percent,
        );
        if !(0..=100).contains(&high) {
            return Err(field(
                "imageGCHighThresholdPercent",
                format!("{high} must be between 0 and 100, inclusive"),
            ));
        }
        if !(0..=100).contains(&low) {
            return Err(field(
                "imageGCLowThresholdPercent",
                format!("{low} must be between 0 and 100, inclusive"),
            ));
        }
        if low >= high {
            return Err(field(
                "imageGCLowThresholdPercent",
                format!("{low} must be less than imageGCHighThresholdPercent {high}"),
            ));
        }
        let (min_age, max_age) = (self.image_minimum_gc_age, self.image_maximum_gc_age);
        if !max_age.is_zero() && max_age <= min_age {
            return Err(field(
                "imageMaximumGCAge",
                format!(
                    "{} must be greater than imageMinimumGCAge {}",
                    humantime::format_duration(max_age),
                    humantime::format_duration(min_age)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        KubeletConfiguration::parse(text, Path::new("kubelet.yaml"))
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
        assert!(loaded.unknown_fields.is_empty());
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
        let loaded =
            parse("featureGates: {EventedPLEG: false, NoSuchGate: true}\n").expect("valid");
        assert!(!loaded.config.evented_pleg());
        assert_eq!(loaded.config.unknown_feature_gates(), vec!["NoSuchGate"]);
        assert!(loaded.unknown_fields.is_empty());
    }

    #[test]
    fn unknown_fields_are_reported_not_fatal() {
        let loaded = parse("maxPods: 10\nclusterDNS: [10.0.0.10]\nstaticPodURL: http://x\nimageServiceEndpoint: unix:///x\n")
            .expect("unknown fields are warnings");
        assert_eq!(loaded.config.max_pods, 10);
        assert_eq!(loaded.config.cluster_dns, vec!["10.0.0.10"]);
        assert_eq!(
            loaded.unknown_fields,
            vec!["imageServiceEndpoint", "staticPodURL"]
        );
    }

    #[test]
    fn wrong_type_fails_with_the_field_path() {
        let err = parse("maxPods: lots\n").expect_err("wrong type");
        match err {
            ConfigError::Field { field, .. } => assert_eq!(field, "maxPods"),
            other => panic!("unexpected error {other}"),
        }
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
        ] {
            match parse(text) {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, expected, "{text}"),
                other => panic!("{text}: expected a field error, got {other:?}"),
            }
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
        assert!(loaded.unknown_fields.is_empty());
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
            match parse(text) {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, expected, "{text}"),
                other => panic!("{text}: expected a field error, got {other:?}"),
            }
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
        assert!(
            loaded.unknown_fields.is_empty(),
            "{:?}",
            loaded.unknown_fields
        );
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
            match parse(text) {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, expected, "{text}"),
                other => panic!("{text}: expected a field error, got {other:?}"),
            }
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
    fn malformed_yaml_is_a_syntax_error() {
        assert!(matches!(
            parse("maxPods: [1,\n"),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
