//! Who a Summary's figures belong to in the runtime and in the cgroup tree: each pod's running
//! containers and its sandbox, with their runtime IDs, images and cgroups. cAdvisor labels its
//! series with exactly these (`id` = cgroup, `name` = runtime ID, `image`), so `/metrics/cadvisor`
//! renders a Summary with them.

use std::collections::HashMap;
use std::path::Path;

use mk_cri::api;

use super::cgroup;
use super::provider::StatsConfig;
use crate::kuberuntime::labels;

/// A container or sandbox as cAdvisor names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The runtime's ID.
    pub id: String,
    /// The image as the runtime reports it (empty for a sandbox).
    pub image: String,
    /// Its cgroup (`/kubepods/burstable/pod<uid>/<id>`), found in the memory hierarchy; empty when
    /// none was found.
    pub cgroup: String,
}

/// The identities of the pods of one Summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// (pod UID, container name) → the running container.
    pub containers: HashMap<(String, String), Identity>,
    /// Pod UID → its ready sandbox.
    pub sandboxes: HashMap<String, Identity>,
    /// Pod UID → the pod's cgroup.
    pub pods: HashMap<String, String>,
}

impl Identities {
    pub fn container(&self, uid: &str, name: &str) -> Option<&Identity> {
        self.containers.get(&(uid.to_owned(), name.to_owned()))
    }
}

/// Finds the cgroups of `sandboxes` and running `containers` under their pods' cgroups (blocking:
/// reads the cgroup tree). A container the runtime reports by image ID is named by that image's
/// first tag among `images`, as cAdvisor names it.
pub fn identify(
    config: &StatsConfig,
    sandboxes: &[api::PodSandbox],
    containers: &[api::Container],
    images: &[api::Image],
) -> Identities {
    let mut found = Identities::default();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    let mut pod_cgroup = |uid: &str| -> Option<(String, Vec<String>)> {
        if !found.pods.contains_key(uid) {
            let dir = cgroup::find_pod_cgroup_dir(&config.cgroup_mount, &config.cgroups, uid)?;
            children.insert(
                uid.to_owned(),
                child_names(&cgroup::memory_dir(&config.cgroup_mount, &dir)),
            );
            found.pods.insert(uid.to_owned(), dir);
        }
        let dir = found.pods.get(uid)?.clone();
        Some((dir, children.get(uid).cloned().unwrap_or_default()))
    };
    let mut sandbox_ids = Vec::new();
    for sandbox in sandboxes
        .iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
    {
        let Some(uid) = sandbox.metadata.as_ref().map(|m| m.uid.clone()) else {
            continue;
        };
        let cgroup = pod_cgroup(&uid)
            .map(|(dir, names)| child_cgroup(&dir, &names, &sandbox.id))
            .unwrap_or_default();
        sandbox_ids.push((
            uid,
            Identity {
                id: sandbox.id.clone(),
                image: String::new(),
                cgroup,
            },
        ));
    }
    let mut container_ids = Vec::new();
    for container in containers {
        let (Some(uid), Some(name)) = (
            container.labels.get(labels::POD_UID),
            container.metadata.as_ref().map(|m| m.name.clone()),
        ) else {
            continue;
        };
        let image = container
            .image
            .as_ref()
            .map(|spec| {
                if spec.user_specified_image.is_empty() {
                    spec.image.clone()
                } else {
                    spec.user_specified_image.clone()
                }
            })
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| container.image_ref.clone());
        let image = image_name(images, image);
        let cgroup = pod_cgroup(uid)
            .map(|(dir, names)| child_cgroup(&dir, &names, &container.id))
            .unwrap_or_default();
        container_ids.push((
            (uid.clone(), name),
            Identity {
                id: container.id.clone(),
                image,
                cgroup,
            },
        ));
    }
    found.sandboxes.extend(sandbox_ids);
    found.containers.extend(container_ids);
    found
}

/// `image` itself, or when it is an image ID (`sha256:<hex>` as containerd says, bare hex as cri-o
/// says), the first tag of that image (the ID when untagged).
fn image_name(images: &[api::Image], image: String) -> String {
    let hex = image.strip_prefix("sha256:").unwrap_or(&image);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return image;
    }
    images
        .iter()
        .find(|i| i.id.strip_prefix("sha256:").unwrap_or(&i.id) == hex)
        .and_then(|i| i.repo_tags.first().cloned())
        .unwrap_or(image)
}

fn child_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup of the runtime object `id` under its pod's cgroup `dir`: the child whose name holds
/// the ID, whatever the runtime's prefix or suffix (`<id>`, `crio-<id>`, `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`); empty when there is none.
fn child_cgroup(dir: &str, names: &[String], id: &str) -> String {
    if id.is_empty() {
        return String::new();
    }
    names
        .iter()
        .find(|n| n.contains(id) && !n.contains("conmon"))
        .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_id_is_named_by_its_first_tag() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let images = [
            api::Image {
                id: format!("sha256:{a}"),
                repo_tags: vec!["docker.io/library/nginx:1".into(), "nginx:one".into()],
                ..Default::default()
            },
            // cri-o's IDs are bare.
            api::Image {
                id: b.clone(),
                repo_tags: vec!["busybox:1.36".into()],
                ..Default::default()
            },
        ];
        assert_eq!(
            image_name(&images, format!("sha256:{a}")),
            "docker.io/library/nginx:1"
        );
        assert_eq!(image_name(&images, a.clone()), "docker.io/library/nginx:1");
        assert_eq!(image_name(&images, b.clone()), "busybox:1.36");
        assert_eq!(image_name(&images, format!("sha256:{b}")), "busybox:1.36");
        let unknown = format!("sha256:{}", "c".repeat(64));
        assert_eq!(image_name(&images, unknown.clone()), unknown);
        assert_eq!(image_name(&images, "busybox:1.36".into()), "busybox:1.36");
    }

    #[test]
    fn a_child_cgroup_is_found_by_its_id_whatever_the_runtime_calls_it() {
        let names: Vec<String> = [
            "abc123",
            "crio-def456",
            "crio-conmon-def456",
            "cri-containerd-0789.scope",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let dir = "/kubepods/burstable/podu";
        assert_eq!(
            child_cgroup(dir, &names, "abc123"),
            "/kubepods/burstable/podu/abc123"
        );
        assert_eq!(
            child_cgroup(dir, &names, "def456"),
            "/kubepods/burstable/podu/crio-def456"
        );
        assert_eq!(
            child_cgroup(dir, &names, "0789"),
            "/kubepods/burstable/podu/cri-containerd-0789.scope"
        );
        assert_eq!(child_cgroup(dir, &names, "missing"), "");
        assert_eq!(child_cgroup(dir, &names, ""), "");
    }
}
