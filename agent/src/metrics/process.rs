//! The process metrics kubelet's `/metrics` carries from client_golang's process collector
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …: what the kubelet dashboards
//! chart for the node agent's own CPU and memory), read from `/proc/self` at each scrape, with
//! client_golang's names, types and help texts (no stability level: they are not component-base
//! metrics). The Go runtime's `go_*` collector has no counterpart in a Rust process.

use std::fmt::Write as _;

/// What `/proc/self` says of this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub virtual_memory_bytes: f64,
    pub resident_memory_bytes: f64,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub virtual_memory_max_bytes: Option<f64>,
    pub start_time_seconds: f64,
    pub network: Option<(f64, f64)>,
}

/// Reads this process's figures; `None` when `/proc/self/stat` cannot be read or parsed.
pub fn sample() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    let page_size = rustix::param::page_size() as u64;
    let mut sample = from_stat(&stat, ticks, page_size)?;
    sample.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as f64);
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        sample.max_fds = soft_limit(&limits, "Max open files");
        sample.virtual_memory_max_bytes = soft_limit(&limits, "Max address space");
    }
    sample.start_time_seconds = super::process_start_time_seconds();
    sample.network = std::fs::read_to_string("/proc/self/net/dev")
        .ok()
        .and_then(|dev| network_bytes(&dev));
    Some(sample)
}

/// CPU time (utime + stime), virtual size and resident pages of a `/proc/<pid>/stat` line.
fn from_stat(stat: &str, ticks: u64, page_size: u64) -> Option<ProcessSample> {
    // The fields after the command name, which is in parentheses and may hold spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
    let (utime, stime, vsize, rss) = (field(11)?, field(12)?, field(20)?, field(21)?);
    if ticks == 0 {
        return None;
    }
    Some(ProcessSample {
        cpu_seconds: (utime + stime) as f64 / ticks as f64,
        virtual_memory_bytes: vsize as f64,
        resident_memory_bytes: rss.saturating_mul(page_size) as f64,
        ..ProcessSample::default()
    })
}

/// The soft limit of one `/proc/<pid>/limits` row (`unlimited` as client_golang reports it: the
/// largest u64).
fn soft_limit(limits: &str, row: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    let soft = line[row.len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX as f64);
    }
    soft.parse::<u64>().ok().map(|v| v as f64)
}

/// Bytes received and sent over every interface of the process's network namespace
/// (`/proc/<pid>/net/dev`), as client_golang sums them.
fn network_bytes(dev: &str) -> Option<(f64, f64)> {
    let mut totals = None;
    for line in dev.lines().skip(2) {
        let Some((_, counters)) = line.split_once(':') else {
            continue;
        };
        let values: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let (Some(rx), Some(tx)) = (values.first(), values.get(8)) {
            let (r, t) = totals.get_or_insert((0.0, 0.0));
            *r += *rx as f64;
            *t += *tx as f64;
        }
    }
    totals
}

/// The text exposition of a sample (classic format 0.0.4, client_golang's help texts).
pub fn render(sample: &ProcessSample) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        Some(sample.cpu_seconds),
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        sample.max_fds,
    );
    family(
        "process_network_receive_bytes_total",
        "counter",
        "Number of bytes received by the process over the network.",
        sample.network.map(|(rx, _)| rx),
    );
    family(
        "process_network_transmit_bytes_total",
        "counter",
        "Number of bytes sent by the process over the network.",
        sample.network.map(|(_, tx)| tx),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        sample.open_fds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        Some(sample.resident_memory_bytes),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        Some(sample.start_time_seconds),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        Some(sample.virtual_memory_bytes),
    );
    family(
        "process_virtual_memory_max_bytes",
        "gauge",
        "Maximum amount of virtual memory available in bytes.",
        sample.virtual_memory_max_bytes,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_limits_and_net_dev_as_client_golang_reads_them() {
        let stat = "4242 (mini kubelet) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 12 0 \
                    12345 104857600 9000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = from_stat(stat, 100, 4096).expect("stat");
        assert_eq!(s.cpu_seconds, 4.0);
        assert_eq!(s.virtual_memory_bytes, 104_857_600.0);
        assert_eq!(s.resident_memory_bytes, 9000.0 * 4096.0);
        assert_eq!(from_stat("garbage", 100, 4096), None);

        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024.0));
        assert_eq!(
            soft_limit(limits, "Max address space"),
            Some(u64::MAX as f64)
        );
        assert_eq!(soft_limit(limits, "Max locked memory"), None);

        let dev = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                   lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  \
                   eth0: 2000 20 0 0 0 0 0 0 3000 30 0 0 0 0 0 0\n";
        assert_eq!(network_bytes(dev), Some((2100.0, 3100.0)));
    }

    #[test]
    fn this_process_is_rendered() {
        let sample = sample().expect("/proc/self");
        assert!(sample.resident_memory_bytes > 0.0);
        assert!(sample.open_fds.is_some_and(|n| n >= 3.0));
        let text = render(&sample);
        assert!(
            text.contains(
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes "
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
    }
}
