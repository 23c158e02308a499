//! A container's resource usage read straight from the kernel, as containerd and cAdvisor do:
//! the cgroups its init process (Docker's `State.Pid`) belongs to (`/proc/<pid>/cgroup`), their
//! counters under the cgroup mount, and for a pod the network interfaces of the pause process's
//! network namespace (`/proc/<pid>/net/dev`).
//!
//! * cgroup v2 (`<cgroup root>/cgroup.controllers` exists): `cpu.stat` (`usage_usec`),
//!   `memory.current`, `memory.stat` (`inactive_file`, `anon`, `pgfault`, `pgmajfault`),
//!   `pids.current`, all in the directory of the `0::<path>` line.
//! * cgroup v1: `cpuacct/<path>/cpuacct.usage`, `memory/<path>/memory.usage_in_bytes` and
//!   `memory.stat` (`total_inactive_file`, `total_rss`, `total_pgfault`, `total_pgmajfault`),
//!   `pids/<path>/pids.current`, each controller under its own path. A hierarchy is looked for
//!   under the controller's name (`cpuacct`, also the symlink next to a combined `cpu,cpuacct`
//!   mount) and then under the combined name of its `/proc/<pid>/cgroup` line.
//! * The working set is the usage less the inactive file cache (never below 0), as kubelet and
//!   cAdvisor compute it.
//!
//! Every file is parsed by a pure function; [`CgroupReader`] takes the cgroup and proc roots so
//! that it can read a fake tree. The files are kernel pseudo-files: reading them never waits on a
//! disk, so they are read synchronously.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the host's cgroup hierarchies are mounted.
pub(crate) const HOST_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where the host's procfs is mounted.
pub(crate) const HOST_PROC_ROOT: &str = "/proc";

/// `ESRCH`: what reading a file of a process that is exiting may answer.
const NO_SUCH_PROCESS: i32 = 3;

/// Why a container's usage could not be read from the kernel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    /// The process has exited (its `/proc` entry is gone).
    #[error("process {pid} is gone")]
    ProcessGone { pid: u32 },
    /// The process is not (or no longer) in the container's cgroups: the PID was reused.
    #[error("process {pid} is not in the cgroups of container {id}")]
    NotTheContainer { pid: u32, id: String },
    /// `/proc/<pid>/cgroup` names no cgroup of this controller.
    #[error("process {pid} is in no {controller} cgroup")]
    NoController { pid: u32, controller: &'static str },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: &'static str },
}

impl CgroupError {
    /// True when the PID no longer designates the container (it exited, or the PID was reused):
    /// asking Docker for the current PID may help.
    pub(crate) fn is_stale_pid(&self) -> bool {
        matches!(
            self,
            Self::ProcessGone { .. } | Self::NotTheContainer { .. }
        )
    }
}

/// A container's usage according to its cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupUsage {
    /// CPU time used since the cgroup was created, in nanoseconds.
    pub cpu_total_ns: u64,
    /// Memory charged to the cgroup (page cache included).
    pub memory_usage: u64,
    /// [`Self::memory_usage`] less the inactive file cache.
    pub working_set: u64,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// Tasks in the cgroup (absent without the pids controller).
    pub processes: Option<u64>,
}

/// The counters of one network interface (`/proc/<pid>/net/dev`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The cgroups of a process, from `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProcessCgroups {
    /// The cgroup v2 path (`0::<path>`).
    pub unified: Option<String>,
    /// cgroup v1: controller → (the hierarchy's controllers as the line lists them, path).
    pub v1: HashMap<String, (String, String)>,
}

impl ProcessCgroups {
    /// True when one of the paths contains `id` (a container's cgroup is named after its ID
    /// with both of Docker's cgroup drivers: `/<parent>/<id>`, `…/docker-<id>.scope`).
    pub(crate) fn names(&self, id: &str) -> bool {
        !id.is_empty()
            && self
                .unified
                .iter()
                .chain(self.v1.values().map(|(_, path)| path))
                .any(|path| path.contains(id))
    }
}

/// Parses `/proc/<pid>/cgroup`: v1 lines `N:controller[,controller]:path`, the v2 line `0::path`;
/// named hierarchies (`name=systemd`) are ignored.
pub(crate) fn parse_proc_cgroup(text: &str) -> ProcessCgroups {
    let mut cgroups = ProcessCgroups::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            if hierarchy == "0" {
                cgroups.unified = Some(path.to_string());
            }
            continue;
        }
        for controller in controllers.split(',') {
            if controller.is_empty() || controller.starts_with("name=") {
                continue;
            }
            cgroups.v1.insert(
                controller.to_string(),
                (controllers.to_string(), path.to_string()),
            );
        }
    }
    cgroups
}

/// Parses a flat-keyed file (`memory.stat`, `cpu.stat`: `key value` lines); lines whose value is
/// not a number are skipped.
pub(crate) fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(char::is_whitespace)?;
            Some((key, value.trim().parse().ok()?))
        })
        .collect()
}

/// Parses a single-value file (`memory.current`, `cpuacct.usage`, `pids.current`).
pub(crate) fn parse_single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The working set: the usage less the inactive file cache, floored at 0.
pub(crate) fn working_set(usage: u64, inactive_file: u64) -> u64 {
    usage.saturating_sub(inactive_file)
}

/// Parses `/proc/<pid>/net/dev`, leaving out the loopback interface and unreadable lines.
pub(crate) fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .filter_map(|line| {
            // The two header lines have no `name:` prefix before their `|` columns.
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name.contains('|') || name == "lo" {
                return None;
            }
            let counters: Vec<u64> = counters
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit:
            // bytes packets errs drop fifo colls carrier compressed.
            if counters.len() < 16 {
                return None;
            }
            Some(InterfaceUsage {
                name: name.to_string(),
                rx_bytes: counters[0],
                rx_errors: counters[2],
                tx_bytes: counters[8],
                tx_errors: counters[10],
            })
        })
        .collect()
}

/// Reads containers' usage from a cgroup mount and a procfs.
#[derive(Debug)]
pub(crate) struct CgroupReader {
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    /// Whether the cgroup root is a cgroup v2 mount, found out on first use.
    unified: OnceLock<bool>,
}

impl Default for CgroupReader {
    /// The host's: `/sys/fs/cgroup` and `/proc`.
    fn default() -> Self {
        Self::new(HOST_CGROUP_ROOT, HOST_PROC_ROOT)
    }
}

impl CgroupReader {
    pub(crate) fn new(cgroup_root: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            cgroup_root: cgroup_root.into(),
            proc_root: proc_root.into(),
            unified: OnceLock::new(),
        }
    }

    fn is_unified(&self) -> bool {
        *self
            .unified
            .get_or_init(|| self.cgroup_root.join("cgroup.controllers").exists())
    }

    /// The cgroups of process `pid`, checked to be those of container `id`.
    pub(crate) fn cgroups_of(&self, pid: u32, id: &str) -> Result<ProcessCgroups, CgroupError> {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if is_gone(&source) {
                CgroupError::ProcessGone { pid }
            } else {
                CgroupError::Read { path, source }
            }
        })?;
        let cgroups = parse_proc_cgroup(&text);
        if !cgroups.names(id) {
            return Err(CgroupError::NotTheContainer {
                pid,
                id: id.to_string(),
            });
        }
        Ok(cgroups)
    }

    /// The usage of container `id`, whose init process is `pid`.
    pub(crate) fn usage(&self, pid: u32, id: &str) -> Result<CgroupUsage, CgroupError> {
        let cgroups = self.cgroups_of(pid, id)?;
        if self.is_unified() {
            self.usage_v2(pid, &cgroups)
        } else {
            self.usage_v1(pid, &cgroups)
        }
    }

    fn usage_v2(&self, pid: u32, cgroups: &ProcessCgroups) -> Result<CgroupUsage, CgroupError> {
        let path = cgroups
            .unified
            .as_deref()
            .ok_or(CgroupError::NoController {
                pid,
                controller: "unified",
            })?;
        let dir = under(&self.cgroup_root, path);
        let cpu_stat = dir.join("cpu.stat");
        let usage_usec = *parse_flat_keyed(&read(&cpu_stat)?)
            .get("usage_usec")
            .ok_or(CgroupError::Parse {
                path: cpu_stat,
                what: "no usage_usec",
            })?;
        let memory_usage = read_single(&dir.join("memory.current"))?;
        let memory_stat = read(&dir.join("memory.stat"))?;
        let memory_stat = parse_flat_keyed(&memory_stat);
        Ok(CgroupUsage {
            cpu_total_ns: usage_usec.saturating_mul(1000),
            memory_usage,
            working_set: working_set(
                memory_usage,
                memory_stat.get("inactive_file").copied().unwrap_or(0),
            ),
            rss: memory_stat.get("anon").copied(),
            page_faults: memory_stat.get("pgfault").copied(),
            major_page_faults: memory_stat.get("pgmajfault").copied(),
            processes: read_single(&dir.join("pids.current")).ok(),
        })
    }

    fn usage_v1(&self, pid: u32, cgroups: &ProcessCgroups) -> Result<CgroupUsage, CgroupError> {
        let cpu_total_ns = read_single(&self.v1_file(pid, cgroups, "cpuacct", "cpuacct.usage")?)?;
        let memory_usage =
            read_single(&self.v1_file(pid, cgroups, "memory", "memory.usage_in_bytes")?)?;
        let memory_stat = read(&self.v1_file(pid, cgroups, "memory", "memory.stat")?)?;
        let memory_stat = parse_flat_keyed(&memory_stat);
        let processes = self
            .v1_file(pid, cgroups, "pids", "pids.current")
            .and_then(|path| read_single(&path))
            .ok();
        Ok(CgroupUsage {
            cpu_total_ns,
            memory_usage,
            working_set: working_set(
                memory_usage,
                memory_stat.get("total_inactive_file").copied().unwrap_or(0),
            ),
            rss: memory_stat.get("total_rss").copied(),
            page_faults: memory_stat.get("total_pgfault").copied(),
            major_page_faults: memory_stat.get("total_pgmajfault").copied(),
            processes,
        })
    }

    /// The path of `file` in the v1 `controller` cgroup: under the hierarchy named after the
    /// controller (a separate mount, or the symlink to a combined one), else under the combined
    /// name (`cpu,cpuacct`).
    fn v1_file(
        &self,
        pid: u32,
        cgroups: &ProcessCgroups,
        controller: &'static str,
        file: &str,
    ) -> Result<PathBuf, CgroupError> {
        let (hierarchy, path) = cgroups
            .v1
            .get(controller)
            .ok_or(CgroupError::NoController { pid, controller })?;
        let by_controller = under(&self.cgroup_root.join(controller), path).join(file);
        if by_controller.exists() || hierarchy == controller {
            return Ok(by_controller);
        }
        Ok(under(&self.cgroup_root.join(hierarchy), path).join(file))
    }

    /// The interfaces of the network namespace of process `pid` (loopback left out); None when
    /// that is the namespace this process runs in (the host's, for a host-network pod).
    pub(crate) fn network(&self, pid: u32) -> Result<Option<Vec<InterfaceUsage>>, CgroupError> {
        let process = self.proc_root.join(pid.to_string());
        let link = process.join("ns/net");
        let namespace = std::fs::read_link(&link).map_err(|source| {
            if is_gone(&source) {
                CgroupError::ProcessGone { pid }
            } else {
                CgroupError::Read { path: link, source }
            }
        })?;
        let own = self.proc_root.join("self/ns/net");
        let own =
            std::fs::read_link(&own).map_err(|source| CgroupError::Read { path: own, source })?;
        if namespace == own {
            return Ok(None);
        }
        Ok(Some(parse_net_dev(&read(&process.join("net/dev"))?)))
    }
}

/// `path` (absolute, as `/proc/<pid>/cgroup` gives it) under `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(NO_SUCH_PROCESS)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_single(path: &Path) -> Result<u64, CgroupError> {
    parse_single(&read(path)?).ok_or_else(|| CgroupError::Parse {
        path: path.to_path_buf(),
        what: "not a number",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "a1e2c9d311e9f6ae943082f74a94443aa44512030a5aeb774e30198d583ea6b3";

    fn v1_proc_cgroup(parent: &str) -> String {
        format!(
            "9:name=systemd:{parent}/{ID}\n8:pids:{parent}/{ID}\n4:memory:{parent}/{ID}\n\
             2:cpuacct:{parent}/{ID}\n1:cpu:{parent}/{ID}\n0::{parent}/{ID}\n"
        )
    }

    /// A controller, its hierarchy's controllers, its path.
    type Controller<'a> = (&'a str, &'a str, &'a str);

    #[test]
    fn proc_cgroup_lines() {
        let cases: &[(&str, &str, Option<&str>, &[Controller])] = &[
            (
                "separate v1 controllers, hybrid unified line",
                "9:name=systemd:/a\n2:cpuacct:/k/x\n1:cpu:/k/x\n4:memory:/k/x\n0::/k/x\n",
                Some("/k/x"),
                &[
                    ("cpuacct", "cpuacct", "/k/x"),
                    ("cpu", "cpu", "/k/x"),
                    ("memory", "memory", "/k/x"),
                ],
            ),
            (
                "combined cpu,cpuacct (systemd driver)",
                "3:cpu,cpuacct:/kubepods.slice/docker-x.scope\n5:pids:/p\n",
                None,
                &[
                    ("cpu", "cpu,cpuacct", "/kubepods.slice/docker-x.scope"),
                    ("cpuacct", "cpu,cpuacct", "/kubepods.slice/docker-x.scope"),
                    ("pids", "pids", "/p"),
                ],
            ),
            (
                "pure v2",
                "0::/system.slice/docker-x.scope\n",
                Some("/system.slice/docker-x.scope"),
                &[],
            ),
            (
                "named hierarchies and junk ignored",
                "1:name=systemd:/s\n\ngarbage\n2:net_cls,net_prio:/n:with:colons\n",
                None,
                &[
                    ("net_cls", "net_cls,net_prio", "/n:with:colons"),
                    ("net_prio", "net_cls,net_prio", "/n:with:colons"),
                ],
            ),
        ];
        for (what, text, unified, v1) in cases {
            let parsed = parse_proc_cgroup(text);
            assert_eq!(parsed.unified.as_deref(), *unified, "{what}");
            let expected: HashMap<String, (String, String)> = v1
                .iter()
                .map(|(c, h, p)| ((*c).to_string(), ((*h).to_string(), (*p).to_string())))
                .collect();
            assert_eq!(parsed.v1, expected, "{what}");
        }
    }

    #[test]
    fn proc_cgroup_names_the_container() {
        let cases = [
            (v1_proc_cgroup("/kubepods/besteffort/podu"), ID, true),
            (format!("0::/kubepods.slice/docker-{ID}.scope\n"), ID, true),
            (
                format!("0::/kubepods.slice/docker-{ID}.scope\n"),
                "b0b0",
                false,
            ),
            (
                "1:name=systemd:/x/b0b0\n0::/other\n".to_string(),
                "b0b0",
                false,
            ),
            ("0::/x\n".to_string(), "", false),
        ];
        for (text, id, expected) in cases {
            assert_eq!(
                parse_proc_cgroup(&text).names(id),
                expected,
                "{text} / {id}"
            );
        }
    }

    #[test]
    fn flat_keyed_and_single_values() {
        let stat = parse_flat_keyed(
            "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nnr_periods 0\nbogus x\n\n",
        );
        assert_eq!(stat.get("usage_usec"), Some(&1234));
        assert_eq!(stat.get("system_usec"), Some(&234));
        assert_eq!(stat.get("bogus"), None);
        assert_eq!(stat.len(), 4);
        let cases = [
            ("42\n", Some(42)),
            (" 7 ", Some(7)),
            ("max\n", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_single(text), expected, "{text:?}");
        }
    }

    #[test]
    fn working_set_floors_at_zero() {
        let cases = [(100, 30, 70), (100, 0, 100), (10, 30, 0), (0, 0, 0)];
        for (usage, inactive, expected) in cases {
            assert_eq!(working_set(usage, inactive), expected);
        }
    }

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    1090      13    1    0    0     0          0         0      656       8    2    0    0     0       0          0
 net1: 5 0 0 0 0 0 0 0 6 0 0 0 0 0 0 0
 short: 1 2 3
";

    #[test]
    fn net_dev_lines() {
        let interfaces = parse_net_dev(NET_DEV);
        assert_eq!(
            interfaces,
            vec![
                InterfaceUsage {
                    name: "eth0".into(),
                    rx_bytes: 1090,
                    rx_errors: 1,
                    tx_bytes: 656,
                    tx_errors: 2,
                },
                InterfaceUsage {
                    name: "net1".into(),
                    rx_bytes: 5,
                    rx_errors: 0,
                    tx_bytes: 6,
                    tx_errors: 0,
                },
            ]
        );
        assert!(parse_net_dev("").is_empty());
    }

    /// A fake host: `proc/` and `cgroup/` under a temporary directory.
    struct FakeHost {
        dir: tempfile::TempDir,
    }

    impl FakeHost {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn write(&self, path: &str, text: &str) {
            let path = self.dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }

        fn symlink(&self, path: &str, target: &str) {
            let path = self.dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink(target, path).expect("symlink");
        }

        fn reader(&self) -> CgroupReader {
            CgroupReader::new(self.dir.path().join("cgroup"), self.dir.path().join("proc"))
        }

        fn v1_memory(&self, dir: &str) {
            self.write(
                &format!("cgroup/memory/{dir}/memory.usage_in_bytes"),
                "10000\n",
            );
            self.write(
                &format!("cgroup/memory/{dir}/memory.stat"),
                "cache 4000\nrss 2000\ninactive_file 1\ntotal_cache 4000\ntotal_rss 3000\n\
                 total_inactive_file 4000\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
            );
        }
    }

    fn expected_v1(processes: Option<u64>) -> CgroupUsage {
        CgroupUsage {
            cpu_total_ns: 5_000_000,
            memory_usage: 10_000,
            working_set: 6_000,
            rss: Some(3_000),
            page_faults: Some(7),
            major_page_faults: Some(1),
            processes,
        }
    }

    #[test]
    fn v1_with_separate_cpu_and_cpuacct_mounts() {
        let host = FakeHost::new();
        let dir = format!("kubepods/besteffort/podu/{ID}");
        host.write(
            "proc/42/cgroup",
            &v1_proc_cgroup("/kubepods/besteffort/podu"),
        );
        host.write(&format!("cgroup/cpuacct/{dir}/cpuacct.usage"), "5000000\n");
        host.v1_memory(&dir);
        host.write(&format!("cgroup/pids/{dir}/pids.current"), "2\n");
        let reader = host.reader();
        assert_eq!(reader.usage(42, ID).expect("usage"), expected_v1(Some(2)));
    }

    #[test]
    fn v1_with_a_combined_cpu_cpuacct_mount() {
        let host = FakeHost::new();
        let dir = format!("kubepods.slice/docker-{ID}.scope");
        host.write(
            "proc/42/cgroup",
            &format!("4:memory:/{dir}\n3:cpu,cpuacct:/{dir}\n1:name=systemd:/{dir}\n"),
        );
        host.write(
            &format!("cgroup/cpu,cpuacct/{dir}/cpuacct.usage"),
            "5000000\n",
        );
        host.v1_memory(&dir);
        // Without the `cpuacct` symlink, the combined name is found from the line.
        assert_eq!(
            host.reader().usage(42, ID).expect("usage"),
            expected_v1(None)
        );
        // With it (as systemd sets it up), likewise.
        host.symlink("cgroup/cpuacct", "cpu,cpuacct");
        assert_eq!(
            host.reader().usage(42, ID).expect("usage"),
            expected_v1(None)
        );
    }

    #[test]
    fn v2_files() {
        let host = FakeHost::new();
        let dir = format!("system.slice/docker-{ID}.scope");
        host.write("cgroup/cgroup.controllers", "cpu memory pids\n");
        host.write("proc/42/cgroup", &format!("0::/{dir}\n"));
        host.write(
            &format!("cgroup/{dir}/cpu.stat"),
            "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n",
        );
        host.write(&format!("cgroup/{dir}/memory.current"), "10000\n");
        host.write(
            &format!("cgroup/{dir}/memory.stat"),
            "anon 3000\nfile 4000\ninactive_file 4000\npgfault 7\npgmajfault 1\n",
        );
        host.write(&format!("cgroup/{dir}/pids.current"), "2\n");
        assert_eq!(
            host.reader().usage(42, ID).expect("usage"),
            expected_v1(Some(2))
        );
    }

    #[test]
    fn stale_pids_and_missing_files() {
        let host = FakeHost::new();
        let reader = host.reader();
        assert!(matches!(
            reader.usage(42, ID),
            Err(CgroupError::ProcessGone { pid: 42 })
        ));
        host.write("proc/42/cgroup", "4:memory:/other\n0::/other\n");
        let err = reader.usage(42, ID).expect_err("not the container");
        assert!(err.is_stale_pid(), "{err}");
        // The right process, but no cgroup files readable (not the host's cgroup mount).
        host.write("proc/43/cgroup", &v1_proc_cgroup("/k"));
        let err = reader.usage(43, ID).expect_err("no files");
        assert!(
            matches!(err, CgroupError::Read { .. }) && !err.is_stale_pid(),
            "{err}"
        );
        // No memory controller at all.
        host.write("proc/44/cgroup", &format!("2:cpuacct:/{ID}\n"));
        host.write(&format!("cgroup/cpuacct/{ID}/cpuacct.usage"), "1\n");
        let err = reader.usage(44, ID).expect_err("no memory cgroup");
        assert!(
            matches!(
                err,
                CgroupError::NoController {
                    controller: "memory",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn network_of_a_pod_namespace_only() {
        let host = FakeHost::new();
        host.symlink("proc/self/ns/net", "net:[4026531833]");
        host.symlink("proc/42/ns/net", "net:[4026532185]");
        host.write("proc/42/net/dev", NET_DEV);
        host.symlink("proc/43/ns/net", "net:[4026531833]");
        host.write("proc/43/net/dev", NET_DEV);
        let reader = host.reader();
        let pod = reader.network(42).expect("network").expect("own namespace");
        assert_eq!(
            pod.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["eth0", "net1"]
        );
        assert_eq!(reader.network(43).expect("network"), None, "host network");
        assert!(matches!(
            reader.network(44),
            Err(CgroupError::ProcessGone { pid: 44 })
        ));
    }
}
