//! The volume manager, after kubelet's `pkg/kubelet/volumemanager` and the in-tree plugins
//! `emptyDir`, `hostPath`, `configMap`, `secret`, `downwardAPI` and `projected`.
//!
//! [`VolumeManager::setup`] runs on every sync of a pod: it creates (first time) or refreshes
//! (later) every volume of the pod under
//! `<root_dir>/pods/<uid>/volumes/kubernetes.io~<plugin>/<volume name>` and returns the
//! [`PodVolumes`] from which [`VolumeManager::mounts_for`] builds a container's CRI mounts.
//! [`VolumeManager::teardown`] unmounts and removes everything of a pod once its containers are
//! gone.
//!
//! - **emptyDir**: a directory, mode 0777; `medium: Memory` mounts a tmpfs there with
//!   `size=` the smallest of sizeLimit, the pod's memory limit and the node's allocatable memory
//!   (kubelet's `calculateEmptyDirMemorySize`). `sizeLimit` of a disk-backed emptyDir is not
//!   enforced (kubelet enforces it by eviction, which this agent does not do for volumes).
//! - **hostPath**: not materialized; the host path itself is mounted, after kubelet's type check
//!   (`DirectoryOrCreate` / `FileOrCreate` create it).
//! - **configMap**, **secret**, **downwardAPI**, **projected**: files written by the
//!   [`atomic_writer`] (`..data` swap), refreshed on every `setup`, so an update of the source
//!   reaches the files without restarting the container (except for subPath mounts, as in
//!   kubelet). Secret, downwardAPI and projected volumes live on a tmpfs mounted once at the
//!   volume directory, configMap volumes on disk, as kubelet's wrapped emptyDirs.
//! - **projected serviceAccountToken**: requested through the TokenRequest API, bound to the pod,
//!   cached and re-requested when 80 % of its lifetime has passed or after 24 h ([`token`]).
//! - **fsGroup**: when `spec.securityContext.fsGroup` is set, volume contents get that group and
//!   group permissions and directories the setgid bit (kubelet's `SetVolumeOwnership`, policy
//!   `Always`).
//!
//! A volume that was set up once and fails to refresh (a deleted Secret, an unreachable API
//! server) keeps its last contents and stays usable: its error is reported in
//! [`PodVolumes::refresh_errors`] (one `FailedMount` event each, as kubelet's reconciler emits)
//! without failing `setup`. A volume that was never set up fails `setup`.

pub mod atomic_writer;
pub mod downward;
mod error;
pub mod host;
pub mod mounts;
pub mod sources;
pub mod token;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, ProjectedVolumeSource, Secret, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use kube::Api;
use mk_cri::api;

pub use atomic_writer::{AtomicWriter, FileProjection, Payload, WriteOutcome};
pub use downward::Allocatable;
pub use error::{SetUpError, VolumeError};

use crate::quantity::{Format, Quantity};

/// kubelet's default `--root-dir`.
pub const DEFAULT_ROOT_DIR: &str = "/var/lib/kubelet";
/// The default mode of configMap, secret, downwardAPI and projected files (API default 0644).
pub const DEFAULT_FILE_MODE: i32 = 0o644;
/// The default lifetime of a projected service-account token (API default).
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// The in-tree plugins this agent implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VolumePlugin {
    EmptyDir,
    HostPath,
    ConfigMap,
    Secret,
    DownwardApi,
    Projected,
}

impl VolumePlugin {
    /// The plugin's directory name under `volumes/` (kubelet's escaped plugin name).
    pub fn dir_name(self) -> &'static str {
        match self {
            VolumePlugin::EmptyDir => "kubernetes.io~empty-dir",
            VolumePlugin::HostPath => "kubernetes.io~host-path",
            VolumePlugin::ConfigMap => "kubernetes.io~configmap",
            VolumePlugin::Secret => "kubernetes.io~secret",
            VolumePlugin::DownwardApi => "kubernetes.io~downward-api",
            VolumePlugin::Projected => "kubernetes.io~projected",
        }
    }

    /// Mounted read-only whatever the volumeMount says (kubelet's `Attributes.ReadOnly`).
    pub fn read_only(self) -> bool {
        matches!(
            self,
            VolumePlugin::ConfigMap
                | VolumePlugin::Secret
                | VolumePlugin::DownwardApi
                | VolumePlugin::Projected
        )
    }

    /// Managed by kubelet, so the runtime may relabel it for SELinux.
    pub fn selinux_relabel(self) -> bool {
        self != VolumePlugin::HostPath
    }

    /// Written through the atomic writer.
    fn projected_files(self) -> bool {
        self.read_only()
    }

    /// Kept on a tmpfs (kubelet wraps these plugins in a memory-backed emptyDir).
    fn memory_backed(self) -> bool {
        matches!(
            self,
            VolumePlugin::Secret | VolumePlugin::DownwardApi | VolumePlugin::Projected
        )
    }
}

/// One set-up volume: what a CRI mount of it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedVolume {
    pub plugin: VolumePlugin,
    /// The volume directory, or the host path of a hostPath volume.
    pub host_path: PathBuf,
    /// The plugin mounts it read-only (configMap, secret, downwardAPI, projected).
    pub read_only: bool,
    /// The runtime should relabel it for SELinux (every volume but hostPath).
    pub selinux_relabel: bool,
}

/// The volumes of a pod, after [`VolumeManager::setup`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    /// By volume name.
    pub volumes: BTreeMap<String, MountedVolume>,
    /// Volumes set up earlier whose refresh failed: they keep their previous contents and stay
    /// mountable. One `FailedMount` warning event each.
    pub refresh_errors: Vec<VolumeError>,
}

impl PodVolumes {
    pub fn get(&self, name: &str) -> Option<&MountedVolume> {
        self.volumes.get(name)
    }
}

/// The volume manager (cheap to clone; one per agent).
#[derive(Clone)]
pub struct VolumeManager {
    inner: Arc<Inner>,
}

struct Inner {
    root_dir: PathBuf,
    client: Option<kube::Client>,
    tokens: token::TokenCache,
    allocatable: RwLock<Option<Allocatable>>,
    host_allocatable: OnceLock<Allocatable>,
}

impl std::fmt::Debug for VolumeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeManager")
            .field("root_dir", &self.inner.root_dir)
            .field("api_server", &self.inner.client.is_some())
            .finish()
    }
}

/// What a volume becomes, once its sources are read.
enum Plan {
    EmptyDir { memory: bool, size: Option<u64> },
    HostPath { path: String, kind: String },
    Files(Payload),
}

struct Planned {
    name: String,
    plugin: Option<VolumePlugin>,
    plan: Result<Plan, SetUpError>,
}

enum Outcome {
    Ready(MountedVolume),
    Stale(MountedVolume, SetUpError),
    Failed(SetUpError),
}

/// What the blocking part of `setup` needs to know about the pod.
struct PodContext {
    pod_dir: PathBuf,
    fs_group: Option<u32>,
    /// `size=` of the tmpfs of secret, downwardAPI and projected volumes.
    wrapper_size: Option<u64>,
}

impl PodContext {
    fn volume_dir(&self, plugin: VolumePlugin, name: &str) -> PathBuf {
        self.pod_dir
            .join("volumes")
            .join(plugin.dir_name())
            .join(name)
    }

    fn empty_dir_meta(&self, name: &str) -> PathBuf {
        self.pod_dir
            .join("plugins")
            .join(VolumePlugin::EmptyDir.dir_name())
            .join(name)
    }
}

impl VolumeManager {
    /// A manager keeping pod volumes under `root_dir` (kubelet's `--root-dir`). Without a client,
    /// configMap, secret and service-account-token volumes fail with a clear error.
    pub fn new(root_dir: impl Into<PathBuf>, client: Option<kube::Client>) -> Self {
        Self {
            inner: Arc::new(Inner {
                root_dir: root_dir.into(),
                client,
                tokens: token::TokenCache::default(),
                allocatable: RwLock::new(None),
                host_allocatable: OnceLock::new(),
            }),
        }
    }

    pub fn root_dir(&self) -> &Path {
        &self.inner.root_dir
    }

    /// `<root_dir>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.inner.root_dir.join("pods").join(uid)
    }

    /// `<root_dir>/pods/<uid>/volumes/<plugin dir>/<name>`.
    pub fn volume_dir(&self, uid: &str, plugin: VolumePlugin, name: &str) -> PathBuf {
        self.pod_dir(uid)
            .join("volumes")
            .join(plugin.dir_name())
            .join(name)
    }

    /// The node's allocatable resources (`node.status.allocatable`): unset container limits in
    /// downwardAPI `resourceFieldRef`s and the default size of memory-backed volumes. Until this
    /// is called, the host's CPU count and MemTotal stand in.
    pub fn set_node_allocatable(&self, allocatable: &BTreeMap<String, ApiQuantity>) {
        let parsed: Allocatable = allocatable
            .iter()
            .filter_map(|(k, v)| Quantity::from_api(v).ok().map(|q| (k.clone(), q)))
            .collect();
        if let Ok(mut slot) = self.inner.allocatable.write() {
            *slot = Some(parsed);
        }
    }

    fn allocatable(&self) -> Allocatable {
        if let Ok(slot) = self.inner.allocatable.read()
            && let Some(a) = slot.as_ref()
        {
            return a.clone();
        }
        self.inner
            .host_allocatable
            .get_or_init(|| {
                let mut a = Allocatable::new();
                if let Ok(n) = std::thread::available_parallelism() {
                    let n = i64::try_from(n.get()).unwrap_or(1);
                    a.insert("cpu".into(), Quantity::new(n, Format::DecimalSI));
                }
                if let Some(bytes) = host::host_memory_bytes() {
                    a.insert("memory".into(), Quantity::bytes(bytes));
                }
                a
            })
            .clone()
    }

    /// Creates or refreshes every volume of `pod`. Called on every sync of the pod (idempotent);
    /// the pod's worker must not run it concurrently with [`Self::teardown`] of the same pod.
    pub async fn setup(&self, pod: &Pod) -> Result<PodVolumes, VolumeError> {
        let uid = valid_uid(pod.metadata.uid.as_deref()).ok_or(VolumeError::NoPodUid)?;
        self.inner.tokens.gc();
        let allocatable = self.allocatable();
        let fs_group = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group)
            .and_then(|g| {
                u32::try_from(g)
                    .inspect_err(|_| tracing::warn!(fs_group = g, "fsGroup out of range; ignored"))
                    .ok()
            });
        let mut planned = Vec::new();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let (plugin, plan) = self.plan(pod, volume, fs_group, &allocatable).await;
            planned.push(Planned {
                name: volume.name.clone(),
                plugin,
                plan,
            });
        }
        let ctx = PodContext {
            pod_dir: self.pod_dir(uid),
            fs_group,
            wrapper_size: memory_volume_size(pod, None, &allocatable),
        };
        let pod_key = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        tokio::task::spawn_blocking(move || materialize_all(&ctx, planned, &pod_key))
            .await
            .map_err(|e| VolumeError::PodDir(format!("volume setup task failed: {e}")))?
    }

    /// What `volume` becomes: reads its sources (API server, pod fields). `None` as plugin: a
    /// volume type this agent does not support.
    async fn plan(
        &self,
        pod: &Pod,
        volume: &Volume,
        fs_group: Option<u32>,
        allocatable: &Allocatable,
    ) -> (Option<VolumePlugin>, Result<Plan, SetUpError>) {
        let namespace = namespace_of(pod);
        if let Some(src) = &volume.empty_dir {
            let plan = match src.medium.as_deref().unwrap_or_default() {
                "" => Ok(Plan::EmptyDir {
                    memory: false,
                    size: None,
                }),
                "Memory" => Ok(Plan::EmptyDir {
                    memory: true,
                    size: memory_volume_size(pod, src.size_limit.as_ref(), allocatable),
                }),
                m if m.starts_with("HugePages") => {
                    Err(SetUpError::Unsupported("emptyDir with medium HugePages"))
                }
                other => Err(SetUpError::UnknownMedium(other.to_string())),
            };
            return (Some(VolumePlugin::EmptyDir), plan);
        }
        if let Some(src) = &volume.host_path {
            return (
                Some(VolumePlugin::HostPath),
                Ok(Plan::HostPath {
                    path: src.path.clone(),
                    kind: src.type_.clone().unwrap_or_default(),
                }),
            );
        }
        if let Some(src) = &volume.config_map {
            let optional = src.optional.unwrap_or(false);
            let plan = async {
                let cm = self.config_map(namespace, &src.name, optional).await?;
                sources::configmap_payload(
                    src.items.as_deref(),
                    &cm,
                    src.default_mode.unwrap_or(DEFAULT_FILE_MODE),
                    optional,
                )
            }
            .await;
            return (Some(VolumePlugin::ConfigMap), plan.map(Plan::Files));
        }
        if let Some(src) = &volume.secret {
            let optional = src.optional.unwrap_or(false);
            let name = src.secret_name.clone().unwrap_or_default();
            let plan = async {
                let secret = self.secret(namespace, &name, optional).await?;
                sources::secret_payload(
                    src.items.as_deref(),
                    &secret,
                    src.default_mode.unwrap_or(DEFAULT_FILE_MODE),
                    optional,
                )
            }
            .await;
            return (Some(VolumePlugin::Secret), plan.map(Plan::Files));
        }
        if let Some(src) = &volume.downward_api {
            let plan = downward::collect(
                src.items.as_deref().unwrap_or_default(),
                pod,
                src.default_mode.unwrap_or(DEFAULT_FILE_MODE),
                allocatable,
            );
            return (Some(VolumePlugin::DownwardApi), plan.map(Plan::Files));
        }
        if let Some(src) = &volume.projected {
            let plan = self.projected(pod, src, fs_group, allocatable).await;
            return (Some(VolumePlugin::Projected), plan.map(Plan::Files));
        }
        (None, Err(SetUpError::Unsupported(source_kind(volume))))
    }

    /// kubelet's projected `collectData`: every source is tried; errors are aggregated.
    async fn projected(
        &self,
        pod: &Pod,
        src: &ProjectedVolumeSource,
        fs_group: Option<u32>,
        allocatable: &Allocatable,
    ) -> Result<Payload, SetUpError> {
        let namespace = namespace_of(pod);
        let default_mode = src.default_mode.unwrap_or(DEFAULT_FILE_MODE);
        let mut payload = Payload::new();
        let mut errors = Vec::new();
        for source in src.sources.iter().flatten() {
            let part = if let Some(s) = &source.secret {
                let optional = s.optional.unwrap_or(false);
                match self.secret(namespace, &s.name, optional).await {
                    Ok(secret) => {
                        sources::secret_payload(s.items.as_deref(), &secret, default_mode, optional)
                    }
                    Err(e) => Err(e),
                }
            } else if let Some(c) = &source.config_map {
                let optional = c.optional.unwrap_or(false);
                match self.config_map(namespace, &c.name, optional).await {
                    Ok(cm) => {
                        sources::configmap_payload(c.items.as_deref(), &cm, default_mode, optional)
                    }
                    Err(e) => Err(e),
                }
            } else if let Some(d) = &source.downward_api {
                downward::collect(
                    d.items.as_deref().unwrap_or_default(),
                    pod,
                    default_mode,
                    allocatable,
                )
            } else if let Some(t) = &source.service_account_token {
                // With an fsGroup the token is 0600 and SetVolumeOwnership makes it 0640.
                let mode = if fs_group.is_some() {
                    0o600
                } else {
                    default_mode
                };
                let key = token::TokenKey {
                    namespace: namespace.to_string(),
                    service_account: service_account_of(pod).to_string(),
                    audiences: t
                        .audience
                        .iter()
                        .filter(|a| !a.is_empty())
                        .cloned()
                        .collect(),
                    expiration_seconds: t
                        .expiration_seconds
                        .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
                    pod_name: pod.metadata.name.clone().unwrap_or_default(),
                    pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
                };
                self.inner
                    .tokens
                    .get(self.inner.client.as_ref(), &key)
                    .await
                    .map(|token| {
                        Payload::from([(t.path.clone(), FileProjection::new(token, mode))])
                    })
            } else if source.cluster_trust_bundle.is_some() {
                Err(SetUpError::UnsupportedProjection("clusterTrustBundle"))
            } else if source.pod_certificate.is_some() {
                Err(SetUpError::UnsupportedProjection("podCertificate"))
            } else {
                continue;
            };
            match part {
                Ok(p) => payload.extend(p),
                Err(e) => errors.push(e),
            }
        }
        match SetUpError::from_list(errors) {
            Some(e) => Err(e),
            None => Ok(payload),
        }
    }

    /// The configMap, an empty one when it is missing and `optional`.
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<ConfigMap, SetUpError> {
        let client = self
            .inner
            .client
            .as_ref()
            .ok_or_else(|| SetUpError::NoApiServer {
                kind: "configmap",
                name: name.to_string(),
            })?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(cm)) => Ok(cm),
            Ok(None) if optional => Ok(ConfigMap::default()),
            Ok(None) => Err(SetUpError::ConfigMapNotFound(name.to_string())),
            Err(e) => Err(SetUpError::Api(api_message(&e))),
        }
    }

    /// The secret, an empty one when it is missing and `optional`.
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Secret, SetUpError> {
        let client = self
            .inner
            .client
            .as_ref()
            .ok_or_else(|| SetUpError::NoApiServer {
                kind: "secret",
                name: name.to_string(),
            })?;
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) if optional => Ok(Secret::default()),
            Ok(None) => Err(SetUpError::SecretNotFound(name.to_string())),
            Err(e) => Err(SetUpError::Api(api_message(&e))),
        }
    }

    /// The CRI mounts of `container`'s volumeMounts. A `subPathExpr` is an error here (use
    /// [`Self::mounts_for_with_env`]).
    pub fn mounts_for(
        &self,
        container: &Container,
        pod_volumes: &PodVolumes,
    ) -> Result<Vec<api::Mount>, VolumeError> {
        mounts::container_mounts(container, pod_volumes, None)
    }

    /// As [`Self::mounts_for`], expanding `subPathExpr` over the container's resolved
    /// environment.
    pub fn mounts_for_with_env(
        &self,
        container: &Container,
        pod_volumes: &PodVolumes,
        env: &[(String, String)],
    ) -> Result<Vec<api::Mount>, VolumeError> {
        mounts::container_mounts(container, pod_volumes, Some(env))
    }

    /// Unmounts every mount under `<root_dir>/pods/<uid>` (tmpfs volumes) and removes the
    /// directory. Idempotent. Call only when no container of the pod runs any more.
    pub async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        let uid = valid_uid(Some(pod_uid)).ok_or_else(|| VolumeError::TearDown {
            uid: pod_uid.to_string(),
            detail: "invalid pod UID".into(),
        })?;
        self.inner.tokens.forget_pod(uid);
        let pod_dir = self.pod_dir(uid);
        let uid_owned = uid.to_string();
        tokio::task::spawn_blocking(move || teardown_pod_dir(&pod_dir))
            .await
            .map_err(|e| format!("teardown task failed: {e}"))
            .and_then(|r| r)
            .map_err(|detail| VolumeError::TearDown {
                uid: uid_owned,
                detail,
            })
    }

    /// The pod directories under `<root_dir>/pods` whose UID is not in `live_uids` (pods removed
    /// while the agent was down): tear them down once the runtime holds nothing of them.
    pub fn orphaned_pod_dirs<'a>(
        &self,
        live_uids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let live: BTreeSet<&str> = live_uids.into_iter().collect();
        let Ok(entries) = std::fs::read_dir(self.inner.root_dir.join("pods")) else {
            return Vec::new();
        };
        let mut orphans: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|uid| !live.contains(uid.as_str()))
            .collect();
        orphans.sort();
        orphans
    }
}

/// A UID usable as a directory name (never empty, `.`/`..` or with a `/`).
fn valid_uid(uid: Option<&str>) -> Option<&str> {
    uid.filter(|u| !u.is_empty() && *u != "." && *u != ".." && !u.contains('/'))
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

fn service_account_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(s.service_account.as_deref().filter(|n| !n.is_empty()))
        })
        .unwrap_or("default")
}

/// The volume source's field name, for the "not supported" error.
fn source_kind(v: &Volume) -> &'static str {
    let kinds: [(&'static str, bool); 11] = [
        ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
        ("csi", v.csi.is_some()),
        ("ephemeral", v.ephemeral.is_some()),
        ("image", v.image.is_some()),
        ("nfs", v.nfs.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("gitRepo", v.git_repo.is_some()),
        ("fc", v.fc.is_some()),
        ("rbd", v.rbd.is_some()),
        ("cephfs", v.cephfs.is_some()),
        ("flexVolume", v.flex_volume.is_some()),
    ];
    kinds
        .iter()
        .find(|(_, set)| *set)
        .map_or("(none or unknown)", |(k, _)| k)
}

/// kubelet's `calculateEmptyDirMemorySize`: the node's allocatable memory, lowered to the pod's
/// memory limit and then to the volume's sizeLimit when those are positive and smaller.
fn memory_volume_size(
    pod: &Pod,
    size_limit: Option<&ApiQuantity>,
    allocatable: &Allocatable,
) -> Option<u64> {
    let mut size: Option<i64> = allocatable
        .get("memory")
        .map(Quantity::value)
        .filter(|v| *v > 0);
    let mut lower = |candidate: Option<i64>| {
        if let Some(c) = candidate.filter(|c| *c > 0)
            && size.is_none_or(|s| c <= s)
        {
            size = Some(c);
        }
    };
    lower(pod_memory_limit(pod));
    lower(
        size_limit
            .and_then(|q| Quantity::from_api(q).ok())
            .map(|q| q.value()),
    );
    size.and_then(|s| u64::try_from(s).ok())
}

/// The pod's memory limit when every container declares one (kubelet's pod cgroup limit): the
/// larger of the app containers' (and sidecars') sum and the largest init container, plus the
/// pod overhead.
fn pod_memory_limit(pod: &Pod) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &Container| -> Option<i64> {
        let q = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        Quantity::from_api(q)
            .ok()
            .map(|q| q.value())
            .filter(|v| *v > 0)
    };
    let mut sum: i64 = 0;
    for c in &spec.containers {
        sum = sum.saturating_add(limit(c)?);
    }
    let mut max_init: i64 = 0;
    for c in spec.init_containers.iter().flatten() {
        let l = limit(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sum = sum.saturating_add(l);
        } else {
            max_init = max_init.max(l);
        }
    }
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get("memory"))
        .and_then(|q| Quantity::from_api(q).ok())
        .map_or(0, |q| q.value());
    Some(sum.max(max_init).saturating_add(overhead))
}

/// The API server's message of a failed request (Go's `err.Error()` of a `StatusError`).
pub(crate) fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// A random number for data-directory names and jitter (no cryptographic use).
pub(crate) fn random_u32() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = RandomState::new().hash_one((n, std::time::SystemTime::now()));
    u32::try_from(h & u64::from(u32::MAX)).unwrap_or(0)
}

fn materialize_all(
    ctx: &PodContext,
    planned: Vec<Planned>,
    pod_key: &str,
) -> Result<PodVolumes, VolumeError> {
    for dir in [
        ctx.pod_dir.clone(),
        ctx.pod_dir.join("volumes"),
        ctx.pod_dir.join("plugins"),
    ] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(|e| VolumeError::PodDir(error::go_path_error("mkdir", &dir, &e)))?;
    }
    let mut volumes = PodVolumes::default();
    let mut failures = Vec::new();
    for p in planned {
        match materialize(ctx, &p.name, p.plugin, p.plan) {
            Outcome::Ready(v) => {
                volumes.volumes.insert(p.name, v);
            }
            Outcome::Stale(v, cause) => {
                tracing::warn!(pod = pod_key, volume = %p.name, error = %cause, "volume refresh failed; keeping its previous contents");
                volumes.volumes.insert(p.name.clone(), v);
                volumes.refresh_errors.push(VolumeError::SetUp {
                    volume: p.name,
                    cause,
                });
            }
            Outcome::Failed(cause) => failures.push(VolumeError::SetUp {
                volume: p.name,
                cause,
            }),
        }
    }
    match VolumeError::from_list(failures) {
        Some(e) => Err(e),
        None => Ok(volumes),
    }
}

fn mounted(plugin: VolumePlugin, host_path: PathBuf) -> MountedVolume {
    MountedVolume {
        plugin,
        host_path,
        read_only: plugin.read_only(),
        selinux_relabel: plugin.selinux_relabel(),
    }
}

fn materialize(
    ctx: &PodContext,
    name: &str,
    plugin: Option<VolumePlugin>,
    plan: Result<Plan, SetUpError>,
) -> Outcome {
    let Some(plugin) = plugin else {
        return Outcome::Failed(plan.err().unwrap_or(SetUpError::Unsupported("unknown")));
    };
    if plugin.projected_files() {
        let dir = ctx.volume_dir(plugin, name);
        let was_set_up = atomic_writer::has_data(&dir)
            && (!plugin.memory_backed() || host::is_tmpfs_mount(&dir));
        let result = match plan {
            Ok(Plan::Files(payload)) => write_files(ctx, plugin, name, &dir, &payload),
            Ok(_) => Err(SetUpError::Unsupported("mismatched plan")),
            Err(e) => Err(e),
        };
        return match result {
            Ok(()) => Outcome::Ready(mounted(plugin, dir)),
            Err(e) if was_set_up => Outcome::Stale(mounted(plugin, dir), e),
            Err(e) => {
                if let Err(cleanup) =
                    remove_volume(&dir, &ctx.empty_dir_meta(&format!("wrapped_{name}")))
                {
                    tracing::warn!(volume = name, error = %cleanup, "cannot clean up after failed volume setup");
                }
                Outcome::Failed(e)
            }
        };
    }
    let result = match plan {
        Ok(Plan::HostPath { path, kind }) => {
            host::check_host_path(&path, &kind).map(|()| mounted(plugin, PathBuf::from(path)))
        }
        Ok(Plan::EmptyDir { memory, size }) => {
            let dir = ctx.volume_dir(plugin, name);
            let ownership = ctx.fs_group.map(|g| (g, false));
            ensure_empty_dir(&dir, &ctx.empty_dir_meta(name), memory, size, ownership)
                .map(|()| mounted(plugin, dir))
        }
        Ok(Plan::Files(_)) => Err(SetUpError::Unsupported("mismatched plan")),
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => Outcome::Ready(v),
        Err(e) => Outcome::Failed(e),
    }
}

/// The wrapped emptyDir, then the atomic write (fsGroup applied before the swap).
fn write_files(
    ctx: &PodContext,
    plugin: VolumePlugin,
    name: &str,
    dir: &Path,
    payload: &Payload,
) -> Result<(), SetUpError> {
    let memory = plugin.memory_backed();
    ensure_empty_dir(
        dir,
        &ctx.empty_dir_meta(&format!("wrapped_{name}")),
        memory,
        if memory { ctx.wrapper_size } else { None },
        None,
    )?;
    let writer = AtomicWriter::new(dir);
    let set_perms = ctx
        .fs_group
        .map(|g| move || host::set_volume_ownership(dir, g, true));
    let outcome = writer.write(
        payload,
        set_perms
            .as_ref()
            .map(|f| f as &dyn Fn() -> Result<(), SetUpError>),
    )?;
    if outcome == WriteOutcome::Written {
        tracing::debug!(volume = name, dir = %dir.display(), "volume contents updated");
    }
    Ok(())
}

/// kubelet's emptyDir `SetUpAt`: nothing to do when marked ready and still in place; else the
/// directory (0777), the tmpfs for memory, the fsGroup ownership, and the ready marker.
fn ensure_empty_dir(
    dir: &Path,
    meta_dir: &Path,
    memory: bool,
    size: Option<u64>,
    ownership: Option<(u32, bool)>,
) -> Result<(), SetUpError> {
    if host::is_ready(meta_dir) {
        let in_place = if memory {
            host::is_tmpfs_mount(dir)
        } else {
            dir.is_dir()
        };
        if in_place {
            return Ok(());
        }
        tracing::warn!(dir = %dir.display(), "volume is marked ready but is not in place; setting it up again");
    }
    host::setup_dir(dir)?;
    if memory && !host::is_tmpfs_mount(dir) {
        host::mount_tmpfs(dir, size)?;
    }
    if let Some((gid, read_only)) = ownership {
        host::set_volume_ownership(dir, gid, read_only)?;
    }
    host::set_ready(meta_dir)
}

/// Unmounts and removes one volume directory and its metadata.
fn remove_volume(dir: &Path, meta_dir: &Path) -> Result<(), String> {
    if host::is_tmpfs_mount(dir) {
        host::unmount(dir)?;
    }
    host::remove_one_filesystem(dir)?;
    host::remove_one_filesystem(meta_dir)
}

fn teardown_pod_dir(pod_dir: &Path) -> Result<(), String> {
    let canonical = match std::fs::canonicalize(pod_dir) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error::go_path_error("lstat", pod_dir, &e)),
    };
    let points = host::mount_points_under(&canonical)
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mut errors: Vec<String> = points
        .iter()
        .filter_map(|p| host::unmount(p).err())
        .collect();
    let left = host::mount_points_under(&canonical)
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    if !left.is_empty() {
        errors.push(format!(
            "still mounted: {}",
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Err(errors.join("; "));
    }
    if !errors.is_empty() {
        tracing::warn!(errors = %errors.join("; "), "unmount errors during teardown");
    }
    host::remove_one_filesystem(&canonical)
}
