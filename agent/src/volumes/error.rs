//! The volume manager's errors. [`VolumeError`]'s `Display` is the message of the pod event
//! (`FailedMount` for [`VolumeError::SetUp`], `Failed` / `CreateContainerConfigError` for the mount
//! errors) with kubelet's wording; [`SetUpError`] is the plugin's part of it.

use std::path::Path;

/// Why one volume could not be set up: what follows `MountVolume.SetUp failed for volume "<name>" : `
/// in kubelet's `FailedMount` event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetUpError {
    /// The message kubelet's watching configMap manager gives (singular resource name).
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKeyMissing(String),
    #[error("references non-existent secret key: {0}")]
    SecretKeyMissing(String),
    /// Reading a source from the API server failed (the API server's or the transport's message).
    #[error("{0}")]
    Api(String),
    /// A configMap, secret or service-account token without an API server (standalone agent, static pods).
    #[error(
        "cannot get {kind} \"{name}\": the node agent has no API server connection (without one, only emptyDir, hostPath and downwardAPI volumes can be used)"
    )]
    NoApiServer { kind: &'static str, name: String },
    #[error("failed to fetch token: {0}")]
    TokenFetch(String),
    #[error(
        "token for service account \"{service_account}\" expired and refresh failed: {message}"
    )]
    TokenExpired {
        service_account: String,
        message: String,
    },
    #[error("hostPath type check failed: {0} does not exist")]
    HostPathMissing(String),
    /// `what`: `directory`, `file`, `socket file`, `character device`, `block device`.
    #[error("hostPath type check failed: {path} is not a {what}")]
    HostPathType { path: String, what: &'static str },
    #[error("{0} is an invalid volume type")]
    HostPathInvalidType(String),
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    #[error("fieldPath \"{0}\" does not support subscript")]
    FieldPathSubscript(String),
    #[error("unsupported container resource : {0}")]
    UnsupportedResource(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("invalid quantity {0:?}: {1}")]
    InvalidQuantity(String, String),
    /// A payload path the atomic writer refuses (`invalid path: must not contain '..': ../x`).
    #[error("{0}")]
    InvalidPath(String),
    /// A filesystem operation failed, worded as Go's `*PathError` (`mkdir /x: permission denied`).
    #[error("{0}")]
    Io(String),
    #[error("unknown storage medium \"{0}\"")]
    UnknownMedium(String),
    /// A volume source this agent has no plugin for (persistentVolumeClaim, csi, nfs, image, …).
    #[error("volume type {0} is not supported by this node agent")]
    Unsupported(&'static str),
    /// A projected source this agent has no plugin for (clusterTrustBundle, podCertificate).
    #[error("projected volume source {0} is not supported by this node agent")]
    UnsupportedProjection(&'static str),
    /// Several errors of one volume (a projected volume's sources, a downwardAPI volume's items), as
    /// Go's `utilerrors.NewAggregate` prints them.
    #[error("{}", aggregate(.0))]
    Aggregate(Vec<SetUpError>),
}

fn aggregate(errors: &[SetUpError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl SetUpError {
    /// Go's `*PathError` wording for an I/O failure: `<op> <path>: <lower-case errno text>`.
    pub fn io(op: &str, path: &Path, err: &std::io::Error) -> Self {
        SetUpError::Io(go_path_error(op, path, err))
    }

    /// One error stays itself; several become an [`SetUpError::Aggregate`].
    pub(crate) fn from_list(mut errors: Vec<SetUpError>) -> Option<SetUpError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(SetUpError::Aggregate(errors)),
        }
    }
}

/// `op path: no such file or directory`, as Go prints an `*os.PathError`.
pub(crate) fn go_path_error(op: &str, path: &Path, err: &std::io::Error) -> String {
    format!("{op} {}: {}", path.display(), go_errno_text(err))
}

/// The errno text Go uses (lower-case `strerror`), or the error's own text.
pub(crate) fn go_errno_text(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let desc = nix::errno::Errno::from_raw(code).desc();
            let mut chars = desc.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => err.to_string(),
            }
        }
        None => err.to_string(),
    }
}

/// A volume manager error. `Display` is the pod event's message, as kubelet words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// One volume failed to set up (event reason `FailedMount`):
    /// `MountVolume.SetUp failed for volume "cfg" : configmap "app-config" not found`.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {cause}")]
    SetUp { volume: String, cause: SetUpError },
    /// Several volumes failed to set up; kubelet records one `FailedMount` event per volume (see
    /// [`VolumeError::failed_mounts`]).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<VolumeError>),
    #[error("pod has no UID: its volumes cannot be set up")]
    NoPodUid,
    /// The pod directory could not be created or removed, or a mount under it could not be
    /// unmounted.
    #[error("{0}")]
    PodDir(String),
    #[error("UnmountVolume.TearDown failed for pod \"{uid}\": {detail}")]
    TearDown { uid: String, detail: String },
    /// A volumeMount names a volume the pod does not have (or that was not set up).
    #[error("cannot find volume \"{volume}\" to mount into container \"{container}\"")]
    VolumeNotFound { volume: String, container: String },
    #[error("error SubPath `{0}` must not be an absolute path")]
    SubPathAbsolute(String),
    #[error("unable to provision SubPath `{0}`: must not contain '..'")]
    SubPathBacksteps(String),
    /// Creating the subPath directory failed; `detail` (host paths) is logged, not shown to users,
    /// as kubelet does.
    #[error(
        "failed to create subPath directory for volumeMount \"{mount}\" of container \"{container}\""
    )]
    SubPathCreate {
        mount: String,
        container: String,
        detail: String,
    },
    /// The subPath leads out of its volume (through a symlink) or cannot be resolved; `detail` is
    /// logged, not shown.
    #[error("failed to prepare subPath for volumeMount \"{mount}\" of container \"{container}\"")]
    SubPathPrepare {
        mount: String,
        container: String,
        detail: String,
    },
    /// `subPathExpr` without the container's environment ([`super::VolumeManager::mounts_for`]).
    #[error(
        "subPathExpr is not supported here: volumeMount \"{mount}\" of container \"{container}\" needs the container's environment to expand {expr:?}"
    )]
    SubPathExprUnsupported {
        mount: String,
        container: String,
        expr: String,
    },
    /// `subPathExpr` names variables the container does not define (kubelet's wording).
    #[error("missing value for {0}")]
    SubPathExprMissing(String),
    #[error("invalid MountPropagation mode: \"{0}\"")]
    InvalidPropagation(String),
    #[error("volume \"{0}\" requested recursive read-only mode, but it is not read-only")]
    RecursiveReadOnlyNotReadOnly(String),
    #[error(
        "volume \"{volume}\" requested recursive read-only mode, but it is not compatible with propagation \"{propagation}\""
    )]
    RecursiveReadOnlyPropagation { volume: String, propagation: String },
    #[error("invalid RecursiveReadOnly mode \"{0}\"")]
    InvalidRecursiveReadOnly(String),
}

impl VolumeError {
    /// The individual per-volume errors: one `FailedMount` event each.
    pub fn failed_mounts(&self) -> Vec<&VolumeError> {
        match self {
            VolumeError::Several(list) => list.iter().flat_map(|e| e.failed_mounts()).collect(),
            other => vec![other],
        }
    }

    /// The names of the volumes that are not set up (for kubelet's
    /// `Unable to attach or mount volumes: unmounted volumes=[…]` message).
    pub fn unmounted_volumes(&self) -> Vec<&str> {
        self.failed_mounts()
            .into_iter()
            .filter_map(|e| match e {
                VolumeError::SetUp { volume, .. } => Some(volume.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The event reason kubelet uses for this error: `FailedMount` for set-up errors,
    /// `FailedUnmount` for teardown, and `Failed` for the mount errors of
    /// [`super::VolumeManager::mounts_for`] (kubelet records those as `Error: <message>` and
    /// leaves the container waiting with reason `CreateContainerConfigError`).
    pub fn event_reason(&self) -> &'static str {
        match self {
            VolumeError::SetUp { .. } | VolumeError::Several(_) => "FailedMount",
            VolumeError::NoPodUid | VolumeError::PodDir(_) => "FailedMount",
            VolumeError::TearDown { .. } => "FailedUnmount",
            _ => "Failed",
        }
    }

    pub(crate) fn from_list(mut errors: Vec<VolumeError>) -> Option<VolumeError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(VolumeError::Several(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_kubelet() {
        let e = VolumeError::SetUp {
            volume: "cfg".into(),
            cause: SetUpError::ConfigMapNotFound("app-config".into()),
        };
        assert_eq!(
            e.to_string(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"app-config\" not found"
        );
        let agg = SetUpError::Aggregate(vec![
            SetUpError::SecretNotFound("a".into()),
            SetUpError::ConfigMapNotFound("b".into()),
        ]);
        assert_eq!(
            agg.to_string(),
            "[secret \"a\" not found, configmap \"b\" not found]"
        );
        let err = std::io::Error::from_raw_os_error(2);
        assert_eq!(
            go_path_error("open", Path::new("/x/y"), &err),
            "open /x/y: no such file or directory"
        );
        let several = VolumeError::Several(vec![e.clone(), e.clone()]);
        assert_eq!(several.failed_mounts().len(), 2);
        assert_eq!(several.unmounted_volumes(), vec!["cfg", "cfg"]);
        assert_eq!(several.event_reason(), "FailedMount");
    }
}
