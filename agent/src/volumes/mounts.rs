//! A container's CRI mounts from its volumeMounts (kubelet's `makeMounts` for volumes): mount path,
//! read-only (asked for, or forced by the plugin), subPath / subPathExpr, mount propagation and
//! recursive read-only.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, VolumeMount};
use mk_cri::api;

use super::error::VolumeError;
use super::{MountedVolume, PodVolumes};

/// The CRI mounts of `container`. `env` is the container's environment, needed only for
/// `subPathExpr` (without it such a mount is an error).
pub fn container_mounts(
    container: &Container,
    volumes: &PodVolumes,
    env: Option<&[(String, String)]>,
) -> Result<Vec<api::Mount>, VolumeError> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| one_mount(container, m, volumes, env))
        .collect()
}

fn one_mount(
    container: &Container,
    mount: &VolumeMount,
    volumes: &PodVolumes,
    env: Option<&[(String, String)]>,
) -> Result<api::Mount, VolumeError> {
    let volume: &MountedVolume =
        volumes
            .get(&mount.name)
            .ok_or_else(|| VolumeError::VolumeNotFound {
                volume: mount.name.clone(),
                container: container.name.clone(),
            })?;
    let mut host_path = volume.host_path.clone();
    let sub_path = match mount.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
        Some(expr) => match env {
            Some(env) => expand_sub_path_expr(expr, env)?,
            None => {
                return Err(VolumeError::SubPathExprUnsupported {
                    mount: mount.name.clone(),
                    container: container.name.clone(),
                    expr: expr.to_string(),
                });
            }
        },
        None => mount.sub_path.clone().unwrap_or_default(),
    };
    if !sub_path.is_empty() {
        host_path = resolve_sub_path(&host_path, &sub_path, &mount.name, &container.name)?;
    }
    let container_path = if mount.mount_path.starts_with('/') {
        mount.mount_path.clone()
    } else {
        format!("/{}", mount.mount_path)
    };
    let propagation = propagation(mount.mount_propagation.as_deref())?;
    let readonly = mount.read_only.unwrap_or(false) || volume.read_only;
    let recursive_read_only = match mount.recursive_read_only.as_deref() {
        None | Some("" | "Disabled") => false,
        // Whether the runtime can do it is not known here: as kubelet with a runtime that cannot.
        Some("IfPossible") => false,
        Some("Enabled") => {
            if !readonly {
                return Err(VolumeError::RecursiveReadOnlyNotReadOnly(
                    mount.name.clone(),
                ));
            }
            if propagation != api::MountPropagation::PropagationPrivate {
                return Err(VolumeError::RecursiveReadOnlyPropagation {
                    volume: mount.name.clone(),
                    propagation: mount.mount_propagation.clone().unwrap_or_default(),
                });
            }
            true
        }
        Some(other) => return Err(VolumeError::InvalidRecursiveReadOnly(other.to_string())),
    };
    Ok(api::Mount {
        container_path,
        host_path: host_path.to_string_lossy().into_owned(),
        readonly,
        selinux_relabel: volume.selinux_relabel,
        propagation: propagation as i32,
        recursive_read_only,
        ..Default::default()
    })
}

/// kubelet's `translateMountPropagation`.
pub fn propagation(mode: Option<&str>) -> Result<api::MountPropagation, VolumeError> {
    match mode {
        None | Some("None") => Ok(api::MountPropagation::PropagationPrivate),
        Some("HostToContainer") => Ok(api::MountPropagation::PropagationHostToContainer),
        Some("Bidirectional") => Ok(api::MountPropagation::PropagationBidirectional),
        Some(other) => Err(VolumeError::InvalidPropagation(other.to_string())),
    }
}

/// `$(VAR)` expansion of a subPathExpr over the container's environment; every referenced
/// variable must be set and non-empty (kubelet's `ExpandContainerVolumeMounts`).
pub fn expand_sub_path_expr(expr: &str, env: &[(String, String)]) -> Result<String, VolumeError> {
    let mut missing = std::collections::BTreeSet::new();
    let out = crate::kuberuntime::container_config::expand_with(expr, |name| {
        match env.iter().rev().find(|(k, _)| k == name) {
            Some((_, v)) if !v.is_empty() => Some(v.clone()),
            _ => {
                missing.insert(name.to_string());
                Some(String::new())
            }
        }
    });
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(VolumeError::SubPathExprMissing(
            missing.into_iter().collect::<Vec<_>>().join(", "),
        ))
    }
}

/// The host path of `sub_path` inside the volume at `volume_path`: relative, without `..`,
/// created as a directory (with the volume's mode) when missing, and, with every symlink
/// resolved, still inside the volume. The resolved path is returned, so the runtime does not
/// follow links the container may change later (kubelet bind-mounts an opened file descriptor
/// instead; a rename race between this check and the runtime's mount remains).
pub fn resolve_sub_path(
    volume_path: &Path,
    sub_path: &str,
    mount_name: &str,
    container_name: &str,
) -> Result<PathBuf, VolumeError> {
    if Path::new(sub_path).is_absolute() {
        return Err(VolumeError::SubPathAbsolute(sub_path.to_string()));
    }
    if sub_path.split('/').any(|c| c == "..") {
        return Err(VolumeError::SubPathBacksteps(sub_path.to_string()));
    }
    let prepare_error = |detail: String| {
        tracing::warn!(mount = mount_name, container = container_name, %detail, "cannot prepare subPath");
        VolumeError::SubPathPrepare {
            mount: mount_name.to_string(),
            container: container_name.to_string(),
            detail,
        }
    };
    let root = fs::canonicalize(volume_path)
        .map_err(|e| prepare_error(format!("{}: {e}", volume_path.display())))?;
    let target = volume_path.join(sub_path);
    match fs::metadata(&target) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            safe_make_dir(&root, sub_path).map_err(|detail| {
                tracing::warn!(mount = mount_name, container = container_name, %detail, "cannot create subPath directory");
                VolumeError::SubPathCreate {
                    mount: mount_name.to_string(),
                    container: container_name.to_string(),
                    detail,
                }
            })?;
        }
        Err(e) => return Err(prepare_error(format!("{}: {e}", target.display()))),
    }
    let resolved = fs::canonicalize(&target)
        .map_err(|e| prepare_error(format!("{}: {e}", target.display())))?;
    if !resolved.starts_with(&root) {
        return Err(prepare_error(format!(
            "subpath {} not within volume path {}",
            resolved.display(),
            root.display()
        )));
    }
    Ok(resolved)
}

/// Creates the missing directories of `sub_path` under `root` one component at a time, refusing
/// to follow a symlink out of `root`; new directories get `root`'s mode (setgid included).
fn safe_make_dir(root: &Path, sub_path: &str) -> Result<(), String> {
    let perm = fs::metadata(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .permissions()
        .mode()
        & 0o7777;
    let mut current = root.to_path_buf();
    for component in Path::new(sub_path).components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let next = current.join(name);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => current = next,
            Ok(m) if m.file_type().is_symlink() => {
                let resolved =
                    fs::canonicalize(&next).map_err(|e| format!("{}: {e}", next.display()))?;
                if !resolved.starts_with(root) || !resolved.is_dir() {
                    return Err(format!(
                        "{} leads to {}, outside the volume or not a directory",
                        next.display(),
                        resolved.display()
                    ));
                }
                current = resolved;
            }
            Ok(_) => return Err(format!("{} is not a directory", next.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&next).map_err(|e| format!("mkdir {}: {e}", next.display()))?;
                fs::set_permissions(&next, fs::Permissions::from_mode(perm))
                    .map_err(|e| format!("chmod {}: {e}", next.display()))?;
                current = next;
            }
            Err(e) => return Err(format!("{}: {e}", next.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::{MountedVolume, VolumePlugin};
    use serde_json::json;

    fn volumes(dir: &Path) -> PodVolumes {
        let mut v = PodVolumes::default();
        v.volumes.insert(
            "data".into(),
            MountedVolume {
                plugin: VolumePlugin::EmptyDir,
                host_path: dir.join("data"),
                read_only: false,
                selinux_relabel: true,
            },
        );
        v.volumes.insert(
            "cfg".into(),
            MountedVolume {
                plugin: VolumePlugin::ConfigMap,
                host_path: dir.join("cfg"),
                read_only: true,
                selinux_relabel: true,
            },
        );
        v
    }

    fn container(mounts: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "volumeMounts": mounts})).expect("container")
    }

    #[test]
    fn mounts_carry_paths_modes_and_propagation() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("data")).expect("mkdir");
        fs::create_dir_all(dir.path().join("cfg")).expect("mkdir");
        let v = volumes(dir.path());
        let c = container(json!([
            {"name": "data", "mountPath": "/data"},
            {"name": "data", "mountPath": "/ro", "readOnly": true, "mountPropagation": "HostToContainer"},
            {"name": "cfg", "mountPath": "/etc/cfg", "mountPropagation": "None"},
            {"name": "data", "mountPath": "/shared", "mountPropagation": "Bidirectional"},
            {"name": "data", "mountPath": "/rro", "readOnly": true, "recursiveReadOnly": "Enabled"}
        ]));
        let mounts = container_mounts(&c, &v, None).expect("mounts");
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].container_path, "/data");
        assert_eq!(
            mounts[0].host_path,
            dir.path().join("data").to_string_lossy()
        );
        assert!(!mounts[0].readonly);
        assert!(mounts[0].selinux_relabel);
        assert_eq!(
            mounts[0].propagation,
            api::MountPropagation::PropagationPrivate as i32
        );
        assert!(mounts[1].readonly);
        assert_eq!(
            mounts[1].propagation,
            api::MountPropagation::PropagationHostToContainer as i32
        );
        // configMap volumes are always read-only
        assert!(mounts[2].readonly);
        assert_eq!(
            mounts[3].propagation,
            api::MountPropagation::PropagationBidirectional as i32
        );
        assert!(mounts[4].recursive_read_only);

        let bad = container(json!([{"name": "nope", "mountPath": "/x"}]));
        assert_eq!(
            container_mounts(&bad, &v, None)
                .expect_err("missing volume")
                .to_string(),
            "cannot find volume \"nope\" to mount into container \"c\""
        );
        let bad =
            container(json!([{"name": "data", "mountPath": "/x", "mountPropagation": "Sideways"}]));
        assert_eq!(
            container_mounts(&bad, &v, None)
                .expect_err("propagation")
                .to_string(),
            "invalid MountPropagation mode: \"Sideways\""
        );
        let bad =
            container(json!([{"name": "data", "mountPath": "/x", "recursiveReadOnly": "Enabled"}]));
        assert!(container_mounts(&bad, &v, None).is_err());
    }

    #[test]
    fn sub_path_is_created_inside_the_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("mkdir");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o2777)).expect("chmod");
        let v = volumes(dir.path());
        let c = container(json!([{"name": "data", "mountPath": "/logs", "subPath": "app/logs"}]));
        let mounts = container_mounts(&c, &v, None).expect("mounts");
        let created = fs::canonicalize(data.join("app/logs")).expect("created");
        assert_eq!(mounts[0].host_path, created.to_string_lossy());
        assert_eq!(
            fs::metadata(&created).expect("meta").permissions().mode() & 0o7777,
            0o2777
        );
        // an existing file is used as it is
        fs::write(data.join("file.conf"), "x").expect("write");
        let c = container(json!([{"name": "data", "mountPath": "/f", "subPath": "file.conf"}]));
        let mounts = container_mounts(&c, &v, None).expect("mounts");
        assert!(mounts[0].host_path.ends_with("/data/file.conf"));
        // a symlink inside the volume is fine
        std::os::unix::fs::symlink("app", data.join("inside")).expect("symlink");
        let c = container(json!([{"name": "data", "mountPath": "/i", "subPath": "inside/logs"}]));
        let mounts = container_mounts(&c, &v, None).expect("mounts");
        assert_eq!(mounts[0].host_path, created.to_string_lossy());
    }

    #[test]
    fn sub_path_escapes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("mkdir");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        let v = volumes(dir.path());
        let err = |sub: &str| {
            let c = container(json!([{"name": "data", "mountPath": "/x", "subPath": sub}]));
            container_mounts(&c, &v, None).expect_err(sub).to_string()
        };
        assert_eq!(
            err("../outside"),
            "unable to provision SubPath `../outside`: must not contain '..'"
        );
        assert_eq!(
            err("a/../../outside"),
            "unable to provision SubPath `a/../../outside`: must not contain '..'"
        );
        assert_eq!(
            err("/etc"),
            "error SubPath `/etc` must not be an absolute path"
        );
        // a symlink out of the volume, to an existing target or to create a directory through
        std::os::unix::fs::symlink(&outside, data.join("escape")).expect("symlink");
        assert_eq!(
            err("escape"),
            "failed to prepare subPath for volumeMount \"data\" of container \"c\""
        );
        assert_eq!(
            err("escape/new"),
            "failed to create subPath directory for volumeMount \"data\" of container \"c\""
        );
        assert!(!outside.join("new").exists());
        std::os::unix::fs::symlink("/etc/hostname", data.join("host")).expect("symlink");
        assert_eq!(
            err("host"),
            "failed to prepare subPath for volumeMount \"data\" of container \"c\""
        );
    }

    #[test]
    fn sub_path_expr_needs_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("data")).expect("mkdir");
        let v = volumes(dir.path());
        let c = container(
            json!([{"name": "data", "mountPath": "/x", "subPathExpr": "$(POD_NAME)/logs"}]),
        );
        let err = container_mounts(&c, &v, None).expect_err("no env");
        assert!(matches!(err, VolumeError::SubPathExprUnsupported { .. }));
        assert!(err.to_string().contains("subPathExpr is not supported"));
        let env = vec![("POD_NAME".to_string(), "web-0".to_string())];
        let mounts = container_mounts(&c, &v, Some(&env)).expect("mounts");
        assert!(mounts[0].host_path.ends_with("/data/web-0/logs"));
        let err = container_mounts(&c, &v, Some(&[])).expect_err("missing");
        assert_eq!(err.to_string(), "missing value for POD_NAME");
        assert_eq!(
            expand_sub_path_expr("$$(A)-$(A)", &[("A".into(), "1".into())]).expect("expand"),
            "$(A)-1"
        );
    }
}
