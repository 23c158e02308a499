//! Writing cgroups on the filesystem, cgroup v1 (one hierarchy per controller, `cpu.shares`,
//! `cpu.cfs_quota_us`, `memory.limit_in_bytes`) or v2 (the unified hierarchy, `cpu.weight`,
//! `cpu.max`, `memory.max`, controllers enabled through `cgroup.subtree_control`). The mount point is
//! a parameter, so tests run on recorded trees in a temporary directory.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::CgroupError;
use super::resource_config::ResourceConfig;

/// Which cgroup layout the host mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// The v1 controllers a pod cgroup is made in (runc makes the others under them).
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];
/// The v2 controllers the pods' subtree needs.
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// The cgroup filesystem at `mount` (`/sys/fs/cgroup`).
#[derive(Debug, Clone)]
pub struct CgroupFs {
    mount: PathBuf,
    version: CgroupVersion,
}

impl CgroupFs {
    /// v2 when the mount is the unified hierarchy itself (`cgroup.controllers` at its top and no
    /// per-controller directories); a hybrid host (v1 controllers, v2 at `unified/`) is v1.
    pub fn detect(mount: &Path) -> Self {
        let version =
            if mount.join("cgroup.controllers").is_file() && !mount.join("memory").is_dir() {
                CgroupVersion::V2
            } else {
                CgroupVersion::V1
            };
        Self {
            mount: mount.to_path_buf(),
            version,
        }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The directories of cgroup `dir` (`/kubepods/burstable`), one per distinct v1 hierarchy
    /// (`cpu` and `cpuacct` are often one), or the unified one.
    pub fn dirs(&self, dir: &str) -> Vec<PathBuf> {
        let relative = dir.trim_start_matches('/');
        match self.version {
            CgroupVersion::V2 => vec![self.mount.join(relative)],
            CgroupVersion::V1 => {
                let mut roots: Vec<PathBuf> = Vec::new();
                for controller in V1_CONTROLLERS {
                    let root = self.mount.join(controller);
                    if !root.is_dir() {
                        continue;
                    }
                    let root = std::fs::canonicalize(&root).unwrap_or(root);
                    if !roots.contains(&root) {
                        roots.push(root);
                    }
                }
                roots.into_iter().map(|r| r.join(relative)).collect()
            }
        }
    }

    /// The directories of cgroup `dir` in every hierarchy mounted on v1 (`blkio`, `devices`,
    /// `freezer`, `name=systemd`, `unified`… as well: the runtime makes its containers' cgroups
    /// in all of them), or the unified one.
    pub fn all_dirs(&self, dir: &str) -> Vec<PathBuf> {
        let relative = dir.trim_start_matches('/');
        match self.version {
            CgroupVersion::V2 => vec![self.mount.join(relative)],
            CgroupVersion::V1 => {
                let Ok(entries) = std::fs::read_dir(&self.mount) else {
                    return self.dirs(dir);
                };
                let mut roots: Vec<PathBuf> = Vec::new();
                for entry in entries.filter_map(Result::ok) {
                    let root = entry.path();
                    if !root.is_dir() {
                        continue;
                    }
                    let root = std::fs::canonicalize(&root).unwrap_or(root);
                    if !roots.contains(&root) {
                        roots.push(root);
                    }
                }
                roots.sort();
                roots.into_iter().map(|r| r.join(relative)).collect()
            }
        }
    }

    /// The directory of `dir` in `controller`'s hierarchy (v1), or the unified one.
    pub fn controller_dir(&self, controller: &str, dir: &str) -> PathBuf {
        let relative = dir.trim_start_matches('/');
        match self.version {
            CgroupVersion::V2 => self.mount.join(relative),
            CgroupVersion::V1 => self.mount.join(controller).join(relative),
        }
    }

    /// Whether the cgroup exists (its memory directory, which every pod cgroup has).
    pub fn exists(&self, dir: &str) -> bool {
        self.controller_dir("memory", dir).is_dir()
    }

    /// Makes the cgroup (and its parents) where missing, then writes `config` into it.
    pub fn ensure(&self, dir: &str, config: &ResourceConfig) -> Result<(), CgroupError> {
        for path in self.dirs(dir) {
            std::fs::create_dir_all(&path).map_err(|source| CgroupError::Io {
                action: "creating",
                path: path.clone(),
                source,
            })?;
        }
        if self.version == CgroupVersion::V2 {
            self.enable_controllers(dir)?;
        }
        self.apply(dir, config)
    }

    /// cgroup v2: a cgroup's controllers come from its parent's `cgroup.subtree_control`, so each
    /// ancestor enables them for its children. A controller the host lacks is skipped.
    fn enable_controllers(&self, dir: &str) -> Result<(), CgroupError> {
        let available =
            std::fs::read_to_string(self.mount.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&str> = V2_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let components: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
        let mut parent = self.mount.clone();
        for component in components {
            let control = parent.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            for controller in &wanted {
                if enabled.split_whitespace().any(|e| e == *controller) {
                    continue;
                }
                write(&control, &format!("+{controller}"))?;
            }
            parent = parent.join(component);
        }
        Ok(())
    }

    /// Writes `config` into an existing cgroup. Unset limits are written as "no limit", so a pod
    /// whose limit went away (an in-place resize) loses it here too.
    pub fn apply(&self, dir: &str, config: &ResourceConfig) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V1 => {
                let cpu = self.controller_dir("cpu", dir);
                if let Some(shares) = config.cpu_shares {
                    write(&cpu.join("cpu.shares"), &shares.to_string())?;
                }
                if let Some(period) = config.cpu_period {
                    write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
                }
                let quota = config.cpu_quota.filter(|q| *q > 0).unwrap_or(-1);
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                let memory = self.controller_dir("memory", dir);
                let limit = config.memory.filter(|m| *m > 0).unwrap_or(-1);
                write(&memory.join("memory.limit_in_bytes"), &limit.to_string())?;
            }
            CgroupVersion::V2 => {
                let path = self.mount.join(dir.trim_start_matches('/'));
                if let Some(weight) = config.cpu_weight() {
                    write(&path.join("cpu.weight"), &weight.to_string())?;
                }
                let cpu_max = config
                    .cpu_max()
                    .unwrap_or_else(|| format!("max {}", super::resource_config::CPU_PERIOD_US));
                write(&path.join("cpu.max"), &cpu_max)?;
                let memory = config
                    .memory
                    .filter(|m| *m > 0)
                    .map_or_else(|| "max".to_string(), |m| m.to_string());
                write(&path.join("memory.max"), &memory)?;
            }
        }
        Ok(())
    }

    /// What the cgroup holds now (cpu shares, quota, period, memory limit), as [`ResourceConfig`].
    pub fn read(&self, dir: &str) -> Result<ResourceConfig, CgroupError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|source| CgroupError::Io {
                    action: "reading",
                    path,
                    source,
                })
        };
        match self.version {
            CgroupVersion::V1 => {
                let cpu = self.controller_dir("cpu", dir);
                let memory = self.controller_dir("memory", dir);
                let quota: i64 = read(cpu.join("cpu.cfs_quota_us"))?.parse().unwrap_or(-1);
                let limit: i64 = read(memory.join("memory.limit_in_bytes"))?
                    .parse()
                    .unwrap_or(-1);
                Ok(ResourceConfig {
                    cpu_shares: read(cpu.join("cpu.shares"))?.parse().ok(),
                    cpu_quota: (quota > 0).then_some(quota),
                    cpu_period: read(cpu.join("cpu.cfs_period_us"))?.parse().ok(),
                    // The kernel's "no limit" is a huge page-aligned number.
                    memory: (limit > 0 && limit < i64::MAX / 2).then_some(limit),
                })
            }
            CgroupVersion::V2 => {
                let path = self.mount.join(dir.trim_start_matches('/'));
                let cpu_max = read(path.join("cpu.max"))?;
                let mut parts = cpu_max.split_whitespace();
                let quota = parts.next().and_then(|q| q.parse::<i64>().ok());
                let period = parts.next().and_then(|p| p.parse::<u64>().ok());
                let weight: Option<u64> = read(path.join("cpu.weight"))?.parse().ok();
                Ok(ResourceConfig {
                    // v2 keeps a weight; shares cannot be read back exactly.
                    cpu_shares: weight.map(weight_to_shares),
                    cpu_quota: quota,
                    cpu_period: period,
                    memory: read(path.join("memory.max"))?.parse().ok(),
                })
            }
        }
    }

    /// The names of the cgroup's child cgroups (from its memory directory).
    pub fn children(&self, dir: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.controller_dir("memory", dir)) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// The processes still in the cgroup or below it.
    pub fn pids(&self, dir: &str) -> Vec<i32> {
        let mut pids = Vec::new();
        for path in walk(&self.controller_dir("memory", dir)) {
            if let Ok(text) = std::fs::read_to_string(path.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Removes the cgroup and everything below it in every hierarchy, children first. A cgroup
    /// that still has processes cannot be removed: the error says so (the caller kills them).
    pub fn remove(&self, dir: &str) -> Result<(), CgroupError> {
        let mut first_error = None;
        for root in self.all_dirs(dir) {
            let mut all = walk(&root);
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for path in all {
                match std::fs::remove_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(source) => {
                        first_error.get_or_insert(CgroupError::Io {
                            action: "removing",
                            path,
                            source,
                        });
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A directory and every directory below it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return out;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// The inverse of [`super::resource_config::shares_to_weight`], for reading back.
fn weight_to_shares(weight: u64) -> u64 {
    if weight <= 1 {
        return super::resource_config::MIN_SHARES;
    }
    2 + ((weight - 1) * 262_142) / 9999
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}
