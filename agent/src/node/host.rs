//! Facts about the machine, read the way kubelet (through cAdvisor) reads them: CPU count, memory,
//! the filesystem of the root directory, identity strings, and the node's IP address.
//!
//! Every parser takes text so it can be tested on sample `/proc` content; the few functions that touch
//! the system ([`read_host_info`], [`observe_usage`], [`interface_addresses`], [`fs_stats`]) take
//! their paths from a [`HostPaths`], which tests point at a temporary tree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Where the host facts are read from. [`HostPaths::default`] is the real system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    pub proc: PathBuf,
    pub etc: PathBuf,
    pub sys: PathBuf,
    /// Fallback for `os-release` on stateless systems (`/usr/lib`).
    pub usr_lib: PathBuf,
    /// Fallback for `machine-id` (`/var/lib/dbus`).
    pub var_lib: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            etc: "/etc".into(),
            sys: "/sys".into(),
            usr_lib: "/usr/lib".into(),
            var_lib: "/var/lib".into(),
        }
    }
}

impl HostPaths {
    /// The same layout under `root` (for tests): `root/proc`, `root/etc`, ...
    pub fn under(root: &Path) -> Self {
        Self {
            proc: root.join("proc"),
            etc: root.join("etc"),
            sys: root.join("sys"),
            usr_lib: root.join("usr/lib"),
            var_lib: root.join("var/lib"),
        }
    }
}

/// Facts that do not change while the agent runs (cAdvisor's `MachineInfo` plus `os-release`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostInfo {
    /// Logical CPUs (`processor` entries in `/proc/cpuinfo`).
    pub cpus: u32,
    /// `MemTotal` in bytes; `None` when `/proc/meminfo` could not be read.
    pub memory_bytes: Option<u64>,
    /// `SwapTotal` in bytes.
    pub swap_bytes: Option<u64>,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
    /// Go's `GOARCH` spelling (`amd64`, `arm64`).
    pub architecture: String,
}

/// Sizes of one filesystem, from `statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// What the eviction signals are computed from, sampled each status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostUsage {
    /// `memory.available`: `MemFree + Inactive(file)`, i.e. capacity minus the root cgroup's
    /// working set as cAdvisor computes it.
    pub memory_available_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// The filesystem holding the agent's root directory (`nodefs`, also used as `imagefs`).
    pub fs: Option<FsStats>,
    /// min(`kernel.pid_max`, `kernel.threads-max`).
    pub pid_max: Option<u64>,
    /// Tasks that exist now (the total in `/proc/loadavg`).
    pub tasks: Option<u64>,
}

/// `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    pub total: Option<u64>,
    pub free: Option<u64>,
    pub available: Option<u64>,
    pub inactive_file: Option<u64>,
    pub swap_total: Option<u64>,
}

/// Parses `/proc/meminfo` (`MemTotal:  16008824 kB`).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut info = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let Some(Ok(number)) = fields.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match fields.next() {
            Some("kB") => number.saturating_mul(1024),
            None => number,
            Some(_) => continue,
        };
        match key.trim() {
            "MemTotal" => info.total = Some(bytes),
            "MemFree" => info.free = Some(bytes),
            "MemAvailable" => info.available = Some(bytes),
            "Inactive(file)" => info.inactive_file = Some(bytes),
            "SwapTotal" => info.swap_total = Some(bytes),
            _ => {}
        }
    }
    info
}

impl MemInfo {
    /// kubelet's `memory.available`: capacity − working set, where the root working set is
    /// usage (`MemTotal − MemFree`) minus inactive file pages.
    pub fn eviction_available(&self) -> Option<u64> {
        Some(self.free?.saturating_add(self.inactive_file.unwrap_or(0)))
    }
}

/// Counts the `processor : N` entries of `/proc/cpuinfo`.
pub fn count_cpus(cpuinfo: &str) -> u32 {
    let count = cpuinfo
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// `PRETTY_NAME` of an `os-release` file, unquoted; `Linux` when absent (cAdvisor's rule).
pub fn parse_os_release(text: &str) -> String {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("PRETTY_NAME="))
        .map(|value| value.trim().trim_matches(['"', '\'']).to_string())
        .unwrap_or_else(|| "Linux".to_string())
}

/// Go's `GOARCH` name for a Rust target architecture.
pub fn go_arch(rust_arch: &str, little_endian: bool) -> String {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if little_endian => "ppc64le",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        "mips64" if little_endian => "mips64le",
        "mips64" => "mips64",
        "mips" if little_endian => "mipsle",
        other => other,
    }
    .to_string()
}

/// This build's `GOARCH` name.
pub fn architecture() -> String {
    go_arch(std::env::consts::ARCH, cfg!(target_endian = "little"))
}

/// The total task count of `/proc/loadavg` (`0.00 0.01 0.05 1/523 12345` → 523).
pub fn parse_loadavg_tasks(text: &str) -> Option<u64> {
    let field = text.split_whitespace().nth(3)?;
    field.split_once('/')?.1.parse().ok()
}

/// Interfaces carrying an IPv4 default route, in `/proc/net/route` order.
pub fn ipv4_default_route_interfaces(route: &str) -> Vec<String> {
    route
        .lines()
        .filter(|line| !line.starts_with("Iface"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest) = (fields.first()?, fields.get(1)?);
            (u32::from_str_radix(dest, 16).ok()? == 0).then(|| iface.to_string())
        })
        .collect()
}

/// Interfaces carrying an IPv6 default route via a gateway, in `/proc/net/ipv6_route` order.
pub fn ipv6_default_route_interfaces(route: &str) -> Vec<String> {
    route
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (dest, gateway, iface) = (fields.first()?, fields.get(4)?, fields.get(9)?);
            let zero = |hex: &str| u128::from_str_radix(hex, 16).ok() == Some(0);
            (zero(dest) && !zero(gateway)).then(|| iface.to_string())
        })
        .collect()
}

/// One address of a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub interface: String,
    pub ip: IpAddr,
    pub up: bool,
}

/// Go's `net.IP.IsGlobalUnicast`.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4 != Ipv4Addr::BROADCAST
                && !v4.is_unspecified()
                && !v4.is_loopback()
                && !v4.is_multicast()
                && !v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            !v6.is_unspecified()
                && !v6.is_loopback()
                && !v6.is_multicast()
                && !v6.is_unicast_link_local()
                && v6 != Ipv6Addr::UNSPECIFIED
        }
    }
}

/// `utilnet.ChooseHostInterface`: the first global unicast address of an up interface carrying a
/// default route, IPv4 routes first, then IPv6.
pub fn choose_host_ip(
    ipv4_route: &str,
    ipv6_route: &str,
    interfaces: &[InterfaceAddr],
) -> Option<IpAddr> {
    let pick = |ifaces: Vec<String>, want_v4: bool| {
        ifaces.into_iter().find_map(|name| {
            interfaces
                .iter()
                .filter(|a| a.interface == name && a.up && a.ip.is_ipv4() == want_v4)
                .map(|a| a.ip)
                .find(|ip| is_global_unicast(*ip))
        })
    };
    pick(ipv4_default_route_interfaces(ipv4_route), true)
        .or_else(|| pick(ipv6_default_route_interfaces(ipv6_route), false))
}

/// The addresses of the machine's interfaces (`getifaddrs`).
pub fn interface_addresses() -> std::io::Result<Vec<InterfaceAddr>> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter_map(|a| {
            let storage = a.address?;
            let ip = if let Some(v4) = storage.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(storage.as_sockaddr_in6()?.ip())
            };
            Some(InterfaceAddr {
                interface: a.interface_name,
                ip,
                up: a.flags.contains(InterfaceFlags::IFF_UP),
            })
        })
        .collect())
}

/// The node's IP when none is configured: the address of the default route's interface.
pub fn detect_node_ip(paths: &HostPaths) -> Option<IpAddr> {
    let v4 = read_or_empty(&paths.proc.join("net/route"));
    let v6 = read_or_empty(&paths.proc.join("net/ipv6_route"));
    let interfaces = match interface_addresses() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "listing network interfaces failed");
            return None;
        }
    };
    choose_host_ip(&v4, &v6, &interfaces)
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn read_trimmed(path: &Path) -> String {
    read_or_empty(path).trim().to_string()
}

/// Reads the static facts. Missing files give empty strings (or `None` memory), as cAdvisor does.
pub fn read_host_info(paths: &HostPaths) -> HostInfo {
    let cpus = match count_cpus(&read_or_empty(&paths.proc.join("cpuinfo"))) {
        0 => std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        n => n,
    };
    let os_release = std::fs::read_to_string(paths.etc.join("os-release"))
        .or_else(|_| std::fs::read_to_string(paths.usr_lib.join("os-release")))
        .map(|text| parse_os_release(&text))
        .unwrap_or_default();
    let machine_id = match read_trimmed(&paths.etc.join("machine-id")) {
        id if id.is_empty() => read_trimmed(&paths.var_lib.join("dbus/machine-id")),
        id => id,
    };
    let meminfo = parse_meminfo(&read_or_empty(&paths.proc.join("meminfo")));
    HostInfo {
        cpus,
        memory_bytes: meminfo.total,
        swap_bytes: meminfo.swap_total,
        kernel_version: read_trimmed(&paths.proc.join("sys/kernel/osrelease")),
        os_image: os_release,
        machine_id,
        boot_id: read_trimmed(&paths.proc.join("sys/kernel/random/boot_id")),
        system_uuid: read_trimmed(&paths.sys.join("class/dmi/id/product_uuid")),
        architecture: architecture(),
    }
}

/// `statvfs` of `path`, or of its nearest existing ancestor when it does not exist yet.
pub fn fs_stats(path: &Path) -> std::io::Result<FsStats> {
    let mut candidate = path;
    loop {
        match nix::sys::statvfs::statvfs(candidate) {
            Ok(s) => {
                // The field types differ between platforms (u32 or u64).
                #[allow(clippy::useless_conversion)]
                let (frsize, blocks, bavail, files, ffree) = (
                    u64::from(s.fragment_size()),
                    u64::from(s.blocks()),
                    u64::from(s.blocks_available()),
                    u64::from(s.files()),
                    u64::from(s.files_free()),
                );
                return Ok(FsStats {
                    capacity_bytes: blocks.saturating_mul(frsize),
                    available_bytes: bavail.saturating_mul(frsize),
                    inodes: files,
                    inodes_free: ffree,
                });
            }
            Err(nix::errno::Errno::ENOENT) => match candidate.parent() {
                Some(parent) => candidate = parent,
                None => return Err(std::io::Error::from(nix::errno::Errno::ENOENT)),
            },
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
}

fn min_task_limit(pid_max: Option<u64>, threads_max: Option<u64>) -> Option<u64> {
    match (pid_max, threads_max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Samples what the eviction signals are computed from.
pub fn observe_usage(paths: &HostPaths, root_dir: &Path) -> HostUsage {
    let mem = parse_meminfo(&read_or_empty(&paths.proc.join("meminfo")));
    let number = |rel: &str| read_trimmed(&paths.proc.join(rel)).parse::<u64>().ok();
    let fs = match fs_stats(root_dir) {
        Ok(stats) => Some(stats),
        Err(e) => {
            tracing::warn!(path = %root_dir.display(), error = %e, "statvfs failed");
            None
        }
    };
    HostUsage {
        memory_available_bytes: mem.eviction_available(),
        memory_total_bytes: mem.total,
        fs,
        pid_max: min_task_limit(
            number("sys/kernel/pid_max"),
            number("sys/kernel/threads-max"),
        ),
        tasks: parse_loadavg_tasks(&read_or_empty(&paths.proc.join("loadavg"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       16008824 kB\nMemFree:         1203400 kB\n\
        MemAvailable:   11034560 kB\nBuffers:          402884 kB\nCached:          9373304 kB\n\
        Active(file):    4510000 kB\nInactive(file):  5000000 kB\nSwapTotal:       1048572 kB\nHugePages_Total:       0\n";

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(MEMINFO);
        assert_eq!(m.total, Some(16_008_824 * 1024));
        assert_eq!(m.free, Some(1_203_400 * 1024));
        assert_eq!(m.available, Some(11_034_560 * 1024));
        assert_eq!(m.inactive_file, Some(5_000_000 * 1024));
        assert_eq!(m.swap_total, Some(1_048_572 * 1024));
        assert_eq!(m.eviction_available(), Some((1_203_400 + 5_000_000) * 1024));
        assert_eq!(parse_meminfo("garbage\n").total, None);
        assert_eq!(parse_meminfo("").eviction_available(), None);
    }

    #[test]
    fn cpus_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: x\n\n\
                    processor\t: 1\nvendor_id\t: GenuineIntel\n\nprocessor\t: 2\n\nprocessor\t: 3\n";
        assert_eq!(count_cpus(text), 4);
        // arm64 has a trailing block without "processor" entries per core in some kernels.
        assert_eq!(
            count_cpus("processor : 0\nBogoMIPS : 50.00\nHardware : BCM2835\n"),
            1
        );
        assert_eq!(count_cpus(""), 0);
    }

    #[test]
    fn os_release_pretty_name() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(parse_os_release(text), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(parse_os_release("PRETTY_NAME=Alpine\n"), "Alpine");
        assert_eq!(parse_os_release("ID=x\n"), "Linux");
    }

    #[test]
    fn go_architecture_names() {
        assert_eq!(go_arch("x86_64", true), "amd64");
        assert_eq!(go_arch("aarch64", true), "arm64");
        assert_eq!(go_arch("powerpc64", true), "ppc64le");
        assert_eq!(go_arch("s390x", false), "s390x");
        assert_eq!(go_arch("x86", true), "386");
        let this = architecture();
        assert!(!this.is_empty() && this != "x86_64" && this != "aarch64");
    }

    #[test]
    fn loadavg_task_total() {
        assert_eq!(
            parse_loadavg_tasks("0.00 0.01 0.05 1/523 12345\n"),
            Some(523)
        );
        assert_eq!(parse_loadavg_tasks("0.00 0.01\n"), None);
    }

    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
        eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
        eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
    const ROUTE6: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
        fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth1\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
        00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";

    fn addr(interface: &str, ip: &str, up: bool) -> InterfaceAddr {
        InterfaceAddr {
            interface: interface.into(),
            ip: ip.parse().expect("test IP"),
            up,
        }
    }

    #[test]
    fn default_routes_are_parsed() {
        assert_eq!(ipv4_default_route_interfaces(ROUTE), vec!["eth0"]);
        assert_eq!(ipv6_default_route_interfaces(ROUTE6), vec!["eth1"]);
        assert!(ipv4_default_route_interfaces("").is_empty());
    }

    #[test]
    fn host_ip_is_the_default_route_interfaces_global_ipv4() {
        let ifaces = [
            addr("lo", "127.0.0.1", true),
            addr("docker0", "172.17.0.1", true),
            addr("eth0", "fe80::1", true),
            addr("eth0", "169.254.3.3", true),
            addr("eth0", "192.168.1.20", true),
            addr("eth0", "192.168.1.21", true),
        ];
        assert_eq!(
            choose_host_ip(ROUTE, "", &ifaces),
            Some("192.168.1.20".parse().expect("ip"))
        );
    }

    #[test]
    fn host_ip_falls_back_to_ipv6_and_skips_down_interfaces() {
        let ifaces = [
            addr("eth0", "192.168.1.20", false),
            addr("eth1", "2001:db8::5", true),
        ];
        assert_eq!(
            choose_host_ip(ROUTE, ROUTE6, &ifaces),
            Some("2001:db8::5".parse().expect("ip"))
        );
        assert_eq!(choose_host_ip("", "", &ifaces), None);
    }

    #[test]
    fn reads_a_fake_host_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("proc/cpuinfo", "processor : 0\n\nprocessor : 1\n");
        write("proc/meminfo", MEMINFO);
        write("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
        write(
            "proc/sys/kernel/random/boot_id",
            "b0a3d1c2-0000-4000-8000-000000000001\n",
        );
        write("proc/sys/kernel/pid_max", "4194304\n");
        write("proc/sys/kernel/threads-max", "126000\n");
        write("proc/loadavg", "0.10 0.20 0.30 2/600 999\n");
        write("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        write("usr/lib/os-release", "PRETTY_NAME=\"Test OS 1\"\n");
        let paths = HostPaths::under(root);
        let info = read_host_info(&paths);
        assert_eq!(info.cpus, 2);
        assert_eq!(info.memory_bytes, Some(16_008_824 * 1024));
        assert_eq!(info.kernel_version, "6.1.0-18-amd64");
        assert_eq!(
            info.os_image, "Test OS 1",
            "falls back to /usr/lib/os-release"
        );
        assert_eq!(info.machine_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(info.boot_id, "b0a3d1c2-0000-4000-8000-000000000001");
        assert_eq!(info.system_uuid, "", "unreadable product_uuid is empty");

        let usage = observe_usage(&paths, &root.join("var/lib/kubelet/does-not-exist"));
        assert_eq!(usage.pid_max, Some(126_000));
        assert_eq!(usage.tasks, Some(600));
        assert_eq!(usage.memory_total_bytes, Some(16_008_824 * 1024));
        let fs = usage.fs.expect("statvfs of the nearest existing ancestor");
        assert!(fs.capacity_bytes > 0 && fs.available_bytes <= fs.capacity_bytes);
    }
}
