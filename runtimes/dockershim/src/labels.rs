//! How CRI objects are recorded in Docker labels, so that every List/Status call (and an agent
//! adopting pods after a restart) works from Docker alone, without any state of the shim.
//!
//! * The CRI labels of a sandbox or container are Docker labels under their own keys (so
//!   `docker ps --filter label=io.kubernetes.pod.name=web` works). As with dockershim, labels the
//!   image itself declares show up among them too, since Docker merges them into the container's.
//! * CRI annotations are labels under [`ANNOTATION_PREFIX`].
//! * The shim's own bookkeeping lives under [`PREFIX`]: the object kind ([`TYPE`] =
//!   [`TYPE_SANDBOX`] or [`TYPE_CONTAINER`]), the CRI metadata, the creation time in ns, the
//!   sandbox's log directory / the container's log path, the sandbox of a container, etc.
//!
//! CRI labels or annotations whose key starts with [`PREFIX`] are refused (InvalidArgument).

use std::collections::HashMap;

use k8s_cri::v1 as api;

/// The prefix of every label the shim sets for itself.
pub const PREFIX: &str = "io.mini-kubelet.cri.";
/// [`TYPE_SANDBOX`] or [`TYPE_CONTAINER`]; containers without it are not the shim's.
pub const TYPE: &str = "io.mini-kubelet.cri.type";
/// The value of [`TYPE`] on pause containers.
pub const TYPE_SANDBOX: &str = "podsandbox";
/// The value of [`TYPE`] on workload containers.
pub const TYPE_CONTAINER: &str = "container";
/// CRI annotations: `io.mini-kubelet.cri.annotation.<key>` = value.
pub const ANNOTATION_PREFIX: &str = "io.mini-kubelet.cri.annotation.";
/// Metadata name (pod name / container name).
pub const NAME: &str = "io.mini-kubelet.cri.name";
/// Sandbox metadata namespace.
pub const NAMESPACE: &str = "io.mini-kubelet.cri.namespace";
/// Sandbox metadata UID.
pub const UID: &str = "io.mini-kubelet.cri.uid";
/// Metadata attempt.
pub const ATTEMPT: &str = "io.mini-kubelet.cri.attempt";
/// Creation time, ns since the epoch, as the shim saw it.
pub const CREATED_AT: &str = "io.mini-kubelet.cri.created-at";
/// The sandbox's CRI log directory.
pub const LOG_DIRECTORY: &str = "io.mini-kubelet.cri.log-directory";
/// The sandbox's runtime handler.
pub const RUNTIME_HANDLER: &str = "io.mini-kubelet.cri.runtime-handler";
/// The sandbox's namespace options: `network=POD,pid=CONTAINER,ipc=POD`.
pub const NAMESPACE_OPTIONS: &str = "io.mini-kubelet.cri.namespace-options";
/// The container's sandbox ID.
pub const SANDBOX_ID: &str = "io.mini-kubelet.cri.sandbox-id";
/// The container's CRI log file (the sandbox's log directory joined with its log path).
pub const LOG_PATH: &str = "io.mini-kubelet.cri.log-path";
/// The container's image as the CRI named it.
pub const IMAGE: &str = "io.mini-kubelet.cri.image";
/// The shim instance that made the container ([`crate::DockerShimConfig::instance`]), when set.
pub const INSTANCE: &str = "io.mini-kubelet.cri.instance";
/// The container's image as the user wrote it in the pod spec (ImageSpec.user_specified_image).
pub const USER_IMAGE: &str = "io.mini-kubelet.cri.user-specified-image";

/// A CRI label or annotation that would collide with the shim's own labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} key {key:?} uses the prefix {PREFIX:?} reserved by the docker shim")]
pub struct ReservedKey {
    pub what: &'static str,
    pub key: String,
}

/// What the labels of a pause container say about its sandbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SandboxLabels {
    pub metadata: api::PodSandboxMetadata,
    pub created_at: i64,
    pub log_directory: String,
    pub runtime_handler: String,
    pub namespaces: api::NamespaceOption,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
}

/// What the labels of a workload container say about it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ContainerLabels {
    pub metadata: api::ContainerMetadata,
    pub sandbox_id: String,
    pub created_at: i64,
    pub log_path: String,
    pub image: String,
    pub user_specified_image: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
}

fn user_labels(
    labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> Result<HashMap<String, String>, ReservedKey> {
    let mut out = HashMap::with_capacity(labels.len() + annotations.len() + 10);
    for (key, value) in labels {
        if key.starts_with(PREFIX) {
            return Err(ReservedKey {
                what: "label",
                key: key.clone(),
            });
        }
        out.insert(key.clone(), value.clone());
    }
    for (key, value) in annotations {
        if key.starts_with(PREFIX) {
            return Err(ReservedKey {
                what: "annotation",
                key: key.clone(),
            });
        }
        out.insert(format!("{ANNOTATION_PREFIX}{key}"), value.clone());
    }
    Ok(out)
}

/// Splits Docker labels into the CRI labels and annotations (dropping the shim's own).
fn split_user(
    docker: &HashMap<String, String>,
) -> (HashMap<String, String>, HashMap<String, String>) {
    let mut labels = HashMap::new();
    let mut annotations = HashMap::new();
    for (key, value) in docker {
        if let Some(annotation) = key.strip_prefix(ANNOTATION_PREFIX) {
            annotations.insert(annotation.to_string(), value.clone());
        } else if !key.starts_with(PREFIX) {
            labels.insert(key.clone(), value.clone());
        }
    }
    (labels, annotations)
}

fn get(docker: &HashMap<String, String>, key: &str) -> String {
    docker.get(key).cloned().unwrap_or_default()
}

fn number<T: std::str::FromStr + Default>(docker: &HashMap<String, String>, key: &str) -> T {
    docker
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The kind recorded on a Docker container, if it is one of the shim's.
pub(crate) fn kind(docker: &HashMap<String, String>) -> Option<&str> {
    docker.get(TYPE).map(String::as_str)
}

impl SandboxLabels {
    pub(crate) fn encode(&self) -> Result<HashMap<String, String>, ReservedKey> {
        let mut out = user_labels(&self.labels, &self.annotations)?;
        out.insert(TYPE.into(), TYPE_SANDBOX.into());
        out.insert(NAME.into(), self.metadata.name.clone());
        out.insert(NAMESPACE.into(), self.metadata.namespace.clone());
        out.insert(UID.into(), self.metadata.uid.clone());
        out.insert(ATTEMPT.into(), self.metadata.attempt.to_string());
        out.insert(CREATED_AT.into(), self.created_at.to_string());
        out.insert(LOG_DIRECTORY.into(), self.log_directory.clone());
        out.insert(RUNTIME_HANDLER.into(), self.runtime_handler.clone());
        out.insert(
            NAMESPACE_OPTIONS.into(),
            encode_namespaces(&self.namespaces),
        );
        Ok(out)
    }

    /// None unless the labels are those of one of the shim's pause containers.
    pub(crate) fn decode(docker: &HashMap<String, String>) -> Option<Self> {
        if kind(docker) != Some(TYPE_SANDBOX) {
            return None;
        }
        let (labels, annotations) = split_user(docker);
        Some(Self {
            metadata: api::PodSandboxMetadata {
                name: get(docker, NAME),
                uid: get(docker, UID),
                namespace: get(docker, NAMESPACE),
                attempt: number(docker, ATTEMPT),
            },
            created_at: number(docker, CREATED_AT),
            log_directory: get(docker, LOG_DIRECTORY),
            runtime_handler: get(docker, RUNTIME_HANDLER),
            namespaces: docker
                .get(NAMESPACE_OPTIONS)
                .map(|v| decode_namespaces(v))
                .unwrap_or_default(),
            labels,
            annotations,
        })
    }
}

impl ContainerLabels {
    pub(crate) fn encode(&self) -> Result<HashMap<String, String>, ReservedKey> {
        let mut out = user_labels(&self.labels, &self.annotations)?;
        out.insert(TYPE.into(), TYPE_CONTAINER.into());
        out.insert(NAME.into(), self.metadata.name.clone());
        out.insert(ATTEMPT.into(), self.metadata.attempt.to_string());
        out.insert(SANDBOX_ID.into(), self.sandbox_id.clone());
        out.insert(CREATED_AT.into(), self.created_at.to_string());
        out.insert(LOG_PATH.into(), self.log_path.clone());
        out.insert(IMAGE.into(), self.image.clone());
        out.insert(USER_IMAGE.into(), self.user_specified_image.clone());
        Ok(out)
    }

    /// None unless the labels are those of one of the shim's workload containers.
    pub(crate) fn decode(docker: &HashMap<String, String>) -> Option<Self> {
        if kind(docker) != Some(TYPE_CONTAINER) {
            return None;
        }
        let (labels, annotations) = split_user(docker);
        Some(Self {
            metadata: api::ContainerMetadata {
                name: get(docker, NAME),
                attempt: number(docker, ATTEMPT),
            },
            sandbox_id: get(docker, SANDBOX_ID),
            created_at: number(docker, CREATED_AT),
            log_path: get(docker, LOG_PATH),
            image: get(docker, IMAGE),
            user_specified_image: get(docker, USER_IMAGE),
            labels,
            annotations,
        })
    }
}

fn mode_name(mode: i32) -> &'static str {
    api::NamespaceMode::try_from(mode)
        .unwrap_or(api::NamespaceMode::Pod)
        .as_str_name()
}

fn mode_value(name: &str) -> i32 {
    api::NamespaceMode::from_str_name(name).unwrap_or(api::NamespaceMode::Pod) as i32
}

/// `network=POD,pid=CONTAINER,ipc=POD` (plus `,target=<id>` when set).
pub(crate) fn encode_namespaces(options: &api::NamespaceOption) -> String {
    let mut out = format!(
        "network={},pid={},ipc={}",
        mode_name(options.network),
        mode_name(options.pid),
        mode_name(options.ipc)
    );
    if !options.target_id.is_empty() {
        out.push_str(",target=");
        out.push_str(&options.target_id);
    }
    out
}

pub(crate) fn decode_namespaces(encoded: &str) -> api::NamespaceOption {
    let mut options = api::NamespaceOption::default();
    for part in encoded.split(',') {
        match part.split_once('=') {
            Some(("network", v)) => options.network = mode_value(v),
            Some(("pid", v)) => options.pid = mode_value(v),
            Some(("ipc", v)) => options.ipc = mode_value(v),
            Some(("target", v)) => options.target_id = v.to_string(),
            _ => {}
        }
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn sandbox_labels_round_trip() {
        let sandbox = SandboxLabels {
            metadata: api::PodSandboxMetadata {
                name: "web".into(),
                uid: "u-1".into(),
                namespace: "default".into(),
                attempt: 3,
            },
            created_at: 1_700_000_000_123_456_789,
            log_directory: "/var/log/pods/default_web_u-1".into(),
            runtime_handler: "runc".into(),
            namespaces: api::NamespaceOption {
                network: api::NamespaceMode::Node as i32,
                pid: api::NamespaceMode::Container as i32,
                ipc: api::NamespaceMode::Pod as i32,
                ..Default::default()
            },
            labels: map(&[("io.kubernetes.pod.name", "web"), ("app", "x")]),
            annotations: map(&[("kubernetes.io/config.source", "file")]),
        };
        let docker = sandbox.encode().expect("no reserved keys");
        assert_eq!(docker.get(TYPE).map(String::as_str), Some(TYPE_SANDBOX));
        assert_eq!(docker.get("app").map(String::as_str), Some("x"));
        assert_eq!(
            docker
                .get("io.mini-kubelet.cri.annotation.kubernetes.io/config.source")
                .map(String::as_str),
            Some("file")
        );
        assert_eq!(SandboxLabels::decode(&docker), Some(sandbox));
        assert_eq!(ContainerLabels::decode(&docker), None);
    }

    #[test]
    fn container_labels_round_trip() {
        let container = ContainerLabels {
            metadata: api::ContainerMetadata {
                name: "app".into(),
                attempt: 1,
            },
            sandbox_id: "abc".into(),
            created_at: 42,
            log_path: "/var/log/pods/x/app/1.log".into(),
            image: "sha256:0123".into(),
            user_specified_image: "busybox".into(),
            labels: map(&[("io.kubernetes.container.name", "app")]),
            annotations: map(&[("io.kubernetes.container.hash", "1234")]),
        };
        let docker = container.encode().expect("no reserved keys");
        assert_eq!(ContainerLabels::decode(&docker), Some(container));
        assert_eq!(SandboxLabels::decode(&docker), None);
    }

    #[test]
    fn foreign_containers_and_image_labels() {
        // Not ours: no type label.
        assert_eq!(ContainerLabels::decode(&map(&[("a", "b")])), None);
        // Labels merged in from the image count as CRI labels; missing numbers decode as 0.
        let decoded = ContainerLabels::decode(&map(&[
            (TYPE, TYPE_CONTAINER),
            ("maintainer", "someone"),
            (ATTEMPT, "not-a-number"),
        ]));
        let decoded = decoded.expect("ours");
        assert_eq!(decoded.metadata.attempt, 0);
        assert_eq!(
            decoded.labels.get("maintainer").map(String::as_str),
            Some("someone")
        );
    }

    #[test]
    fn reserved_keys_are_refused() {
        let sandbox = SandboxLabels {
            labels: map(&[("io.mini-kubelet.cri.type", "container")]),
            ..Default::default()
        };
        assert_eq!(
            sandbox.encode(),
            Err(ReservedKey {
                what: "label",
                key: "io.mini-kubelet.cri.type".into()
            })
        );
        let container = ContainerLabels {
            annotations: map(&[("io.mini-kubelet.cri.x", "y")]),
            ..Default::default()
        };
        assert!(container.encode().is_err());
    }

    #[test]
    fn namespace_options_encoding() {
        let options = api::NamespaceOption {
            network: api::NamespaceMode::Pod as i32,
            pid: api::NamespaceMode::Target as i32,
            ipc: api::NamespaceMode::Node as i32,
            target_id: "c1".into(),
            userns_options: None,
        };
        let encoded = encode_namespaces(&options);
        assert_eq!(encoded, "network=POD,pid=TARGET,ipc=NODE,target=c1");
        assert_eq!(decode_namespaces(&encoded), options);
        assert_eq!(
            decode_namespaces("garbage"),
            api::NamespaceOption::default()
        );
    }
}
