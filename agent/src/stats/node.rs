//! The node's own figures, as cAdvisor gives kubelet those of the root cgroup: CPU and memory of the
//! root cgroup (memory available = capacity − working set), the host's network interfaces
//! (`/proc/net/dev`, without loopback and the containers' veth ends), the boot time, and the task
//! limit and count (`rlimit`).

use std::path::Path;

use super::cgroup;
use super::types::InterfaceStats;
use crate::node::host::{self, HostPaths};

/// Interfaces cAdvisor leaves out of a network namespace's figures.
const IGNORED_INTERFACE_PREFIXES: [&str; 4] = ["lo", "veth", "docker", "nerdctl"];
/// The interface kubelet reports inline as the default one.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// The root cgroup's memory, with `limit_bytes` set to the machine's memory (the root has no limit
/// of its own): usage, working set, RSS and faults from the root memory cgroup on cgroup v1;
/// from `/proc/meminfo` on a unified hierarchy, whose root has no `memory.current`.
pub fn root_memory(cgroup_mount: &Path, paths: &HostPaths) -> Option<cgroup::MemoryUsage> {
    let meminfo = host::parse_meminfo(&std::fs::read_to_string(paths.proc.join("meminfo")).ok()?);
    let total = meminfo.total?;
    let mut usage = if cgroup::is_unified(cgroup_mount) {
        let used = total.saturating_sub(meminfo.free?);
        cgroup::MemoryUsage {
            usage_bytes: used,
            working_set_bytes: used.saturating_sub(meminfo.inactive_file.unwrap_or(0)),
            ..Default::default()
        }
    } else {
        cgroup::memory(&cgroup::memory_dir(cgroup_mount, "/")).ok()?
    };
    usage.limit_bytes = Some(total);
    Some(usage)
}

/// The root cgroup's cumulative CPU time.
pub fn root_cpu_nanos(cgroup_mount: &Path) -> Option<u64> {
    cgroup::cpu_usage_nanos(&cgroup::cpu_dir(cgroup_mount, "/")).ok()
}

/// The interfaces of `/proc/net/dev` text, cAdvisor's ignored ones left out, sorted by name.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    let mut interfaces: Vec<InterfaceStats> = text
        .lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if IGNORED_INTERFACE_PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
            {
                return None;
            }
            let fields: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
            Some(InterfaceStats {
                name: name.to_string(),
                rx_bytes: fields.first().copied(),
                rx_errors: fields.get(2).copied(),
                tx_bytes: fields.get(8).copied(),
                tx_errors: fields.get(10).copied(),
            })
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    interfaces
}

/// The host's interfaces (the agent's network namespace).
pub fn host_interfaces(paths: &HostPaths) -> Vec<InterfaceStats> {
    std::fs::read_to_string(paths.proc.join("net/dev"))
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
pub fn parse_boot_time(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

pub fn boot_time(paths: &HostPaths) -> Option<i64> {
    parse_boot_time(&std::fs::read_to_string(paths.proc.join("stat")).ok()?)
}
