//! Reads a cgroup's memory and CPU figures from cgroupfs, v1 (one hierarchy per controller, as on these
//! machines' hybrid layout: memory at `<mount>/memory/<parent>`) or v2 (unified: `<mount>/<parent>`), the way
//! cAdvisor does: the working set is usage less inactive file pages (`total_inactive_file` on v1,
//! `inactive_file` on v2).
//!
//! To read a pod's memory: `memory(&memory_dir(cgroup_mount, dir))`, where `cgroup_mount` is the
//! agent's `--cgroup-mount` (default `/sys/fs/cgroup`) and `dir` the pod cgroup's directory in the
//! driver's form (`crate::cm::CgroupSettings::pod_dir_candidates`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// kubelet treats a memory limit above 2^62 as "no limit" (`isMemoryUnlimited`).
const UNLIMITED_ABOVE: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {what:?}")]
    Parse { path: PathBuf, what: String },
    #[error("{0}: neither a cgroup v1 nor a cgroup v2 directory")]
    NotACgroup(PathBuf),
}

impl CgroupError {
    /// The cgroup (or one of its files) does not exist: the container or pod is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CgroupError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
            || matches!(self, CgroupError::NotACgroup(_))
    }
}

/// The memory figures of one cgroup, as cAdvisor reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUsage {
    /// `memory.usage_in_bytes` (v1) / `memory.current` (v2).
    pub usage_bytes: u64,
    /// Usage less inactive file pages, floored at 0: what eviction and the OOM killer look at.
    pub working_set_bytes: u64,
    /// Anonymous and swap cache memory (`total_rss` on v1, `anon` on v2).
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The cgroup's memory limit, `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

impl MemoryUsage {
    /// Bytes left before the limit (kubelet's `availableBytes`), `None` when unlimited.
    pub fn available_bytes(&self) -> Option<u64> {
        self.limit_bytes
            .map(|l| l.saturating_sub(self.working_set_bytes))
    }
}

/// Whether `cgroup_mount` is a unified (v2-only) mount.
pub fn is_unified(cgroup_mount: &Path) -> bool {
    cgroup_mount.join("cgroup.controllers").is_file() && !cgroup_mount.join("memory").is_dir()
}

/// The directory holding the memory controller's files for cgroup `parent` (e.g.
/// `/kubepods/besteffort/pod<uid>`, or a container's `cgroupsPath`).
pub fn memory_dir(cgroup_mount: &Path, parent: &str) -> PathBuf {
    controller_dir(cgroup_mount, &["memory"], parent)
}

/// The directory holding the CPU accounting files for cgroup `parent`.
pub fn cpu_dir(cgroup_mount: &Path, parent: &str) -> PathBuf {
    controller_dir(cgroup_mount, &["cpuacct", "cpu,cpuacct", "cpu"], parent)
}

/// The directory holding the pids controller's files for cgroup `parent`.
pub fn pids_dir(cgroup_mount: &Path, parent: &str) -> PathBuf {
    controller_dir(cgroup_mount, &["pids"], parent)
}

fn controller_dir(cgroup_mount: &Path, controllers: &[&str], parent: &str) -> PathBuf {
    let relative = parent.trim_start_matches('/');
    if is_unified(cgroup_mount) {
        return cgroup_mount.join(relative);
    }
    controllers
        .iter()
        .map(|c| cgroup_mount.join(c))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| cgroup_mount.join(controllers[0]))
        .join(relative)
}

/// Memory figures of the cgroup at `dir` (a v1 memory controller directory or a v2 directory).
pub fn memory(dir: &Path) -> Result<MemoryUsage, CgroupError> {
    if dir.join("memory.usage_in_bytes").exists() {
        memory_v1(dir)
    } else if dir.join("memory.current").exists() || dir.join("memory.stat").exists() {
        memory_v2(dir)
    } else if !dir.exists() {
        Err(CgroupError::Read {
            path: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    } else {
        Err(CgroupError::NotACgroup(dir.to_path_buf()))
    }
}

fn memory_v1(dir: &Path) -> Result<MemoryUsage, CgroupError> {
    let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
    let stat = read_flat_keyed(&dir.join("memory.stat"))?;
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let hierarchical = stat.contains_key("total_rss");
    let pick = |k: &str| {
        if hierarchical {
            get(&format!("total_{k}"))
        } else {
            get(k)
        }
    };
    let limit = read_u64(&dir.join("memory.limit_in_bytes")).ok();
    Ok(MemoryUsage {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get("total_inactive_file")),
        rss_bytes: pick("rss"),
        page_faults: pick("pgfault"),
        major_page_faults: pick("pgmajfault"),
        limit_bytes: limit.filter(|l| *l <= UNLIMITED_ABOVE),
    })
}

fn memory_v2(dir: &Path) -> Result<MemoryUsage, CgroupError> {
    let stat = read_flat_keyed(&dir.join("memory.stat"))?;
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    // The root of a v2 hierarchy has memory.stat but no memory.current.
    let usage = match read_u64(&dir.join("memory.current")) {
        Ok(v) => v,
        Err(e) if e.is_not_found() => get("anon") + get("file") + get("kernel"),
        Err(e) => return Err(e),
    };
    let limit = match std::fs::read_to_string(dir.join("memory.max")) {
        Ok(s) if s.trim() == "max" => None,
        Ok(s) => s.trim().parse::<u64>().ok(),
        Err(_) => None,
    };
    Ok(MemoryUsage {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get("inactive_file")),
        rss_bytes: get("anon"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit_bytes: limit.filter(|l| *l <= UNLIMITED_ABOVE),
    })
}

/// Cumulative CPU time of the cgroup at `dir`, in nanoseconds: `cpuacct.usage` (v1, a cpuacct directory)
/// or `usage_usec` of `cpu.stat` (v2).
pub fn cpu_usage_nanos(dir: &Path) -> Result<u64, CgroupError> {
    let v1 = dir.join("cpuacct.usage");
    if v1.exists() {
        return read_u64(&v1);
    }
    let stat_path = dir.join("cpu.stat");
    let stat = read_flat_keyed(&stat_path)?;
    stat.get("usage_usec")
        .map(|us| us.saturating_mul(1000))
        .ok_or_else(|| CgroupError::Parse {
            path: stat_path,
            what: "usage_usec".into(),
        })
}

/// Number of processes in the cgroup at `dir` and its descendants (the PIDs of every `cgroup.procs`),
/// as cAdvisor counts a container's processes.
pub fn process_count(dir: &Path) -> Result<u64, CgroupError> {
    let own = read(&dir.join("cgroup.procs"))?;
    let mut count = own.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    let children = std::fs::read_dir(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for child in children.filter_map(Result::ok) {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            // A child removed meanwhile counts for nothing.
            count += process_count(&child.path()).unwrap_or(0);
        }
    }
    Ok(count)
}

/// The directory of the pod with UID `uid` when only the UID is known: whichever of its QoS
/// classes' places (in the driver's form: `/kubepods/burstable/pod<uid>`, or
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`) exists in the
/// memory hierarchy.
pub fn find_pod_cgroup_dir(
    cgroup_mount: &Path,
    layout: &crate::cm::CgroupSettings,
    uid: &str,
) -> Option<String> {
    layout
        .pod_dir_candidates(uid)
        .into_iter()
        .find(|dir| memory_dir(cgroup_mount, dir).is_dir())
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        what: text.trim().to_string(),
    })
}

/// A "flat keyed" cgroup file: `key value` per line (memory.stat, cpu.stat).
fn read_flat_keyed(path: &Path) -> Result<HashMap<String, u64>, CgroupError> {
    let text = read(path)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from a burstable pod's memory cgroup on a cgroup v1 host (trimmed).
    const V1_MEMORY_STAT: &str = "cache 0\nrss 0\nrss_huge 0\nshmem 0\nmapped_file 0\npgfault 12\n\
pgmajfault 0\ninactive_anon 0\nactive_anon 0\ninactive_file 0\nactive_file 0\n\
hierarchical_memory_limit 9223372036854771712\ntotal_cache 69541888\ntotal_rss 1327104\n\
total_shmem 67108864\ntotal_mapped_file 0\ntotal_pgfault 17754\ntotal_pgmajfault 3\n\
total_inactive_anon 67239936\ntotal_active_anon 1196032\ntotal_inactive_file 2433024\n\
total_active_file 0\ntotal_unevictable 0\n";

    /// Recorded from a pod's cgroup on a cgroup v2 host (trimmed).
    const V2_MEMORY_STAT: &str = "anon 1359872\nfile 69541888\nkernel 602112\nshmem 67108864\n\
file_mapped 0\nactive_anon 1196032\ninactive_anon 67239936\nactive_file 0\ninactive_file 2433024\n\
pgfault 17754\npgmajfault 3\n";

    fn write(dir: &Path, name: &str, content: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(name), content).expect("write");
    }

    #[test]
    fn v1_memory_as_cadvisor() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = memory_dir(tmp.path(), "/kubepods/burstable/podu1");
        assert_eq!(dir, tmp.path().join("memory/kubepods/burstable/podu1"));
        write(&dir, "memory.usage_in_bytes", "70868992\n");
        write(&dir, "memory.stat", V1_MEMORY_STAT);
        write(&dir, "memory.limit_in_bytes", "9223372036854771712\n");
        let m = memory(&dir).expect("v1 memory");
        assert_eq!(
            m,
            MemoryUsage {
                usage_bytes: 70_868_992,
                working_set_bytes: 70_868_992 - 2_433_024,
                rss_bytes: 1_327_104,
                page_faults: 17_754,
                major_page_faults: 3,
                limit_bytes: None,
            }
        );
        assert_eq!(m.available_bytes(), None);

        write(&dir, "memory.limit_in_bytes", "134217728\n");
        let m = memory(&dir).expect("v1 memory with a limit");
        assert_eq!(m.limit_bytes, Some(134_217_728));
        assert_eq!(m.available_bytes(), Some(134_217_728 - 68_435_968));
    }

    #[test]
    fn working_set_floors_at_zero() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "memory.usage_in_bytes", "1000\n");
        write(
            tmp.path(),
            "memory.stat",
            "total_rss 10\ntotal_inactive_file 5000\n",
        );
        let m = memory(tmp.path()).expect("memory");
        assert_eq!(m.working_set_bytes, 0);
        assert_eq!(m.rss_bytes, 10);
    }

    #[test]
    fn v2_memory_as_cadvisor() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "cgroup.controllers", "cpu memory pids\n");
        let dir = memory_dir(tmp.path(), "/kubepods/podu1");
        assert_eq!(dir, tmp.path().join("kubepods/podu1"));
        write(&dir, "memory.current", "71503872\n");
        write(&dir, "memory.stat", V2_MEMORY_STAT);
        write(&dir, "memory.max", "max\n");
        let m = memory(&dir).expect("v2 memory");
        assert_eq!(
            m,
            MemoryUsage {
                usage_bytes: 71_503_872,
                working_set_bytes: 71_503_872 - 2_433_024,
                rss_bytes: 1_359_872,
                page_faults: 17_754,
                major_page_faults: 3,
                limit_bytes: None,
            }
        );
        write(&dir, "memory.max", "268435456\n");
        assert_eq!(
            memory(&dir).expect("v2 memory").limit_bytes,
            Some(268_435_456)
        );
    }

    #[test]
    fn cpu_v1_and_v2() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("cpu,cpuacct")).expect("mkdir");
        let dir = cpu_dir(tmp.path(), "/kubepods/podu1");
        assert_eq!(dir, tmp.path().join("cpu,cpuacct/kubepods/podu1"));
        write(&dir, "cpuacct.usage", "123456789\n");
        assert_eq!(cpu_usage_nanos(&dir).expect("v1 cpu"), 123_456_789);

        let v2 = tempfile::tempdir().expect("tmp");
        write(v2.path(), "cgroup.controllers", "cpu memory\n");
        let dir = cpu_dir(v2.path(), "/kubepods/podu1");
        write(
            &dir,
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        assert_eq!(cpu_usage_nanos(&dir).expect("v2 cpu"), 2_500_000);
    }

    #[test]
    fn missing_cgroup_is_not_found() {
        let tmp = tempfile::tempdir().expect("tmp");
        let err = memory(&tmp.path().join("memory/gone")).expect_err("gone");
        assert!(err.is_not_found(), "{err}");
        let err = cpu_usage_nanos(&tmp.path().join("cpuacct/gone")).expect_err("gone");
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "memory.usage_in_bytes", "lots\n");
        write(tmp.path(), "memory.stat", "");
        assert!(matches!(memory(tmp.path()), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn reads_this_hosts_root_cgroup() {
        // The agent's own machine: the root memory cgroup is readable on v1 and v2 alike.
        let mount = Path::new("/sys/fs/cgroup");
        if !mount.join("memory").is_dir() && !is_unified(mount) {
            panic!("no cgroup v1 memory hierarchy nor a unified mount at /sys/fs/cgroup");
        }
        let m = memory(&memory_dir(mount, "/")).expect("root memory");
        assert!(m.usage_bytes > 0);
        assert!(m.working_set_bytes <= m.usage_bytes);
        assert!(cpu_usage_nanos(&cpu_dir(mount, "/")).expect("root cpu") > 0);
    }
}
