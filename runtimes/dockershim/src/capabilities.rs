//! Capabilities, `ALL` and privileged containers on hosts where root does not hold every
//! capability (a bounding set without CAP_SYS_RESOURCE, as on the project's machines, or dockerd
//! inside a restricted container). Docker grants a privileged container — and a `ALL` capability
//! add — every capability the kernel knows, which runc then cannot apply there, so such
//! containers never start. containerd and cri-o grant "all capabilities of the current process"
//! instead; the shim does the same: on such hosts it expands `ALL` to the host's bounding set, and
//! runs privileged containers as unprivileged Docker containers with those capabilities, no
//! seccomp, no masked or read-only paths, every device allowed and the host's devices added.
//! Where root holds every capability, Docker's own `privileged` is used unchanged.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bollard::models::DeviceMapping;

/// Capability names by bit number (linux/capability.h), as Docker spells them without `CAP_`.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities this process (root, beside dockerd) may grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostCapabilities {
    /// The bit numbers in the bounding set.
    bits: Vec<usize>,
    /// Every capability the kernel knows is in the set: Docker's own handling works.
    complete: bool,
}

impl HostCapabilities {
    /// This process's bounding set, read once. Unreadable: assume a complete set (Docker's own
    /// handling then decides).
    pub(crate) fn current() -> &'static Self {
        static CURRENT: OnceLock<HostCapabilities> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let bounding = status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
            let caps = match (bounding, last) {
                (Some(bounding), Some(last)) => Self::from_mask(bounding, last),
                _ => Self::from_mask(u64::MAX, (NAMES.len() - 1) as u32),
            };
            if !caps.complete {
                tracing::warn!(
                    granted = caps.bits.len(),
                    "root's capability bounding set is incomplete here: privileged containers \
                     and `ALL` get this host's capabilities (as containerd does) instead of \
                     Docker's every-capability set, which could not start"
                );
            }
            caps
        })
    }

    /// From a CapBnd mask and the kernel's last capability number.
    pub(crate) fn from_mask(mask: u64, last_cap: u32) -> Self {
        let known = (last_cap as usize + 1).min(NAMES.len());
        let bits: Vec<usize> = (0..known).filter(|bit| mask & (1u64 << bit) != 0).collect();
        let complete = bits.len() == known;
        Self { bits, complete }
    }

    /// Whether Docker's own `privileged` / `ALL` work here.
    pub(crate) fn complete(&self) -> bool {
        self.complete
    }

    /// The names of the capabilities held, up to bit `limit` (the newest Docker knows).
    fn names(&self, limit: usize) -> Vec<String> {
        self.bits
            .iter()
            .filter(|bit| **bit <= limit)
            .map(|bit| NAMES[*bit].to_owned())
            .collect()
    }
}

/// How a container's privileges are expressed to Docker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Privileges {
    /// Docker's `Privileged`.
    pub docker_privileged: bool,
    /// Privileged emulated (see the module docs): no masks, all devices.
    pub emulated: bool,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
}

/// The newest capability (bit number) an engine of Docker API `version` knows: 20.10 (API 1.41)
/// stops at AUDIT_READ and refuses PERFMON, BPF and CHECKPOINT_RESTORE.
pub(crate) fn newest_known_capability(api_version: &str) -> usize {
    let minor = api_version
        .split_once('.')
        .and_then(|(_, minor)| minor.parse::<u32>().ok())
        .unwrap_or(0);
    if minor <= 41 { 37 } else { NAMES.len() - 1 }
}

/// The Docker settings for a CRI `privileged` flag and capability lists on `host`, for an engine
/// knowing capabilities up to bit `known`.
pub(crate) fn privileges(
    privileged: bool,
    add: &[String],
    drop: &[String],
    host: &HostCapabilities,
    known: usize,
) -> Privileges {
    let upper = |caps: &[String]| -> Option<Vec<String>> {
        (!caps.is_empty()).then(|| {
            caps.iter()
                .map(|c| c.trim_start_matches("CAP_").to_uppercase())
                .collect()
        })
    };
    if privileged {
        return if host.complete {
            Privileges {
                docker_privileged: true,
                ..Default::default()
            }
        } else {
            Privileges {
                docker_privileged: false,
                emulated: true,
                cap_add: Some(host.names(known)),
                cap_drop: None,
            }
        };
    }
    let mut cap_add = upper(add);
    if !host.complete
        && let Some(list) = cap_add.as_mut()
        && list.iter().any(|c| c == "ALL")
    {
        list.retain(|c| c != "ALL");
        for name in host.names(known) {
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
    Privileges {
        docker_privileged: false,
        emulated: false,
        cap_add,
        cap_drop: upper(drop),
    }
}

/// The device cgroup rule of a privileged container: every device.
pub(crate) const ALL_DEVICES_RULE: &str = "a *:* rwm";

/// The host's device nodes as Docker device mappings, as Docker adds them to privileged
/// containers (`/dev` without pts, shm, mqueue, fd and the nodes every container gets anyway).
pub(crate) fn host_devices() -> Vec<DeviceMapping> {
    let mut found = Vec::new();
    walk_devices(Path::new("/dev"), &mut found);
    found
        .into_iter()
        .map(|path| {
            let path = path.to_string_lossy().into_owned();
            DeviceMapping {
                path_on_host: Some(path.clone()),
                path_in_container: Some(path),
                cgroup_permissions: Some("rwm".into()),
            }
        })
        .collect()
}

/// Nodes Docker creates in every container: adding them again would clash.
const DEFAULT_NODES: [&str; 8] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/console",
    "/dev/ptmx",
];

fn walk_devices(dir: &Path, found: &mut Vec<PathBuf>) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            let skip = ["pts", "shm", "mqueue", "fd", "hugepages"]
                .iter()
                .any(|name| entry.file_name() == *name);
            if !skip {
                walk_devices(&path, found);
            }
        } else if (kind.is_char_device() || kind.is_block_device())
            && !DEFAULT_NODES.iter().any(|d| path == Path::new(d))
        {
            found.push(path);
        }
    }
    found.sort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// This project's machines: every capability up to 40 but SYS_RESOURCE (bit 24).
    fn no_sys_resource() -> HostCapabilities {
        HostCapabilities::from_mask(0x1ff_feff_ffff, 40)
    }

    #[test]
    fn bounding_sets_parse() {
        let full = HostCapabilities::from_mask(0x1ff_ffff_ffff, 40);
        assert!(full.complete);
        assert_eq!(full.bits.len(), 41);
        let partial = no_sys_resource();
        assert!(!partial.complete);
        assert_eq!(partial.bits.len(), 40);
        assert!(!partial.names(40).contains(&"SYS_RESOURCE".to_owned()));
        assert_eq!(partial.names(37).len(), 37);
        // An older kernel knows fewer capabilities: its full set is complete.
        assert!(HostCapabilities::from_mask(0x3f_ffff_ffff, 37).complete);
    }

    #[test]
    fn privileged_uses_docker_where_it_can_and_emulates_where_it_cannot() {
        let full = HostCapabilities::from_mask(0x1ff_ffff_ffff, 40);
        let docker = privileges(true, &[], &[], &full, 40);
        assert!(docker.docker_privileged && !docker.emulated);

        let emulated = privileges(true, &[], &[], &no_sys_resource(), 37);
        assert!(!emulated.docker_privileged && emulated.emulated);
        let added = emulated.cap_add.expect("capabilities listed");
        assert!(added.contains(&"NET_ADMIN".to_owned()));
        assert!(!added.contains(&"SYS_RESOURCE".to_owned()));
        assert!(!added.contains(&"PERFMON".to_owned()));
        assert_eq!(newest_known_capability("1.41"), 37);
        assert_eq!(newest_known_capability("1.47"), 40);
    }

    #[test]
    fn all_expands_to_the_host_set_only_where_docker_would_fail() {
        let full = HostCapabilities::from_mask(0x1ff_ffff_ffff, 40);
        let plain = privileges(
            false,
            &strings(&["all", "CAP_net_admin"]),
            &strings(&["NET_RAW"]),
            &full,
            40,
        );
        assert_eq!(plain.cap_add, Some(strings(&["ALL", "NET_ADMIN"])));
        assert_eq!(plain.cap_drop, Some(strings(&["NET_RAW"])));

        let expanded = privileges(false, &strings(&["ALL"]), &[], &no_sys_resource(), 40);
        let added = expanded.cap_add.expect("capabilities listed");
        assert_eq!(added.len(), 40);
        assert!(!added.contains(&"ALL".to_owned()));
        let none = privileges(false, &[], &strings(&["ALL"]), &no_sys_resource(), 40);
        assert_eq!(none.cap_add, None);
        assert_eq!(none.cap_drop, Some(strings(&["ALL"])));
    }

    #[test]
    fn host_devices_skip_the_default_nodes() {
        let devices = host_devices();
        assert!(
            devices
                .iter()
                .all(|d| d.path_on_host.as_deref() != Some("/dev/null"))
        );
        assert!(devices.iter().all(|d| {
            d.path_on_host == d.path_in_container && d.cgroup_permissions.as_deref() == Some("rwm")
        }));
    }
}
