//! Container log rotation end to end (kubelet's containerLogManager): the real agent with
//! `containerLogMaxSize: 1Mi`, `containerLogMaxFiles: 3`, `containerLogMonitorInterval: 3s`, a
//! static pod writing about 2 MB/s on the real runtime, its log directory sampled for 30 s, and a
//! `kubectl logs -f`-like follow of `/containerLogs` through the kubelet port (the read-only port
//! does not serve logs, as kubelet's) reading on across rotations. Runs on containerd and again on
//! the Docker adapter (`MK_E2E_RUNTIME=docker`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mk_e2e::kubelet_port::{ClientIdentity, client_identity, connect};
use mk_e2e::periods::{allow, work};
use mk_e2e::{Agent, busybox_pod, container_state, periods};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const MIB: u64 = 1024 * 1024;
/// The rotation settings the test gives the agent (its KubeletConfiguration lines below).
const MAX_SIZE: u64 = MIB;
const MAX_FILES: u64 = 3;
const MONITOR_INTERVAL: Duration = Duration::from_secs(3);
const SAMPLING: Duration = Duration::from_secs(30);
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Every 0.1 s: a `tick N` line and 200 lines of 1000 `x`: at most 2 MB/s of output.
const WRITER: &str = "trap \"exit 0\" TERM; x=xxxxxxxxxx; x=$x$x$x$x$x$x$x$x$x$x; \
    x=$x$x$x$x$x$x$x$x$x$x; i=0; while true; do i=$((i+1)); echo \"tick $i\"; j=0; \
    while [ $j -lt 200 ]; do echo $x; j=$((j+1)); done; sleep 0.1; done";
/// What the writer adds to its log file per second at most: 201 lines per 0.1 s of at most 1001
/// bytes each, plus the CRI prefix of each line (`<RFC3339Nano> stdout F `, at most 45 bytes).
const WRITE_RATE_MAX: u64 = 10 * 201 * (1001 + 45);

/// How large one log file can grow: the live file is rotated by the first round after it reached
/// maxSize, and rounds come every monitor interval plus the round's work (CRI calls and the
/// compression of the previous file); the newest rotated file stays uncompressed and so holds as
/// much. Compressed files are at most as large as what they compress.
fn file_bound() -> u64 {
    let gap = MONITOR_INTERVAL + allow(work::CRI_CALL);
    MAX_SIZE + WRITE_RATE_MAX * gap.as_millis() as u64 / 1000
}

/// `GET path` on the kubelet port as HTTP/1.0 (the answer is not chunked: its body is the log
/// stream as is); returns the stream positioned after the response head.
async fn open_follow(
    agent: &Agent,
    identity: &ClientIdentity,
    path: &str,
) -> Result<BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let mut tls = connect(agent, Some(identity)).await?;
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut reader = BufReader::new(tls);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "follow answered {head:?}"
    );
    ensure!(
        !head.to_ascii_lowercase().contains("chunked"),
        "a chunked answer to HTTP/1.0: {head:?}"
    );
    Ok(reader)
}

/// The tick numbers a follow received, in order, and when each arrived.
type Ticks = Arc<Mutex<Vec<(u64, Instant)>>>;

fn ticks_so_far(ticks: &Ticks) -> Vec<(u64, Instant)> {
    ticks.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// One look at the container's log directory.
#[derive(Debug, Default)]
struct Sample {
    files: usize,
    bytes: u64,
    live_bytes: u64,
    /// Rotated files that are not compressed (nor temporary, nor already compressed and about
    /// to be removed).
    plain_rotated: Vec<String>,
    rotated: Vec<String>,
}

fn sample(dir: &Path) -> Result<Sample> {
    let mut out = Sample::default();
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else {
            continue; // removed meanwhile
        };
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        out.files += 1;
        out.bytes += meta.len();
        if name == "0.log" {
            out.live_bytes = meta.len();
        }
        names.insert(name);
    }
    for name in &names {
        let Some(rest) = name.strip_prefix("0.log.") else {
            continue;
        };
        if rest.ends_with(".tmp") {
            continue;
        }
        out.rotated.push(name.clone());
        if !rest.ends_with(".gz") && !names.contains(&format!("{name}.gz")) {
            out.plain_rotated.push(name.clone());
        }
    }
    Ok(out)
}

/// The rotation timestamp of a rotated file name.
fn stamp(name: &str) -> &str {
    let rest = name.strip_prefix("0.log.").unwrap_or(name);
    rest.strip_suffix(".gz").unwrap_or(rest)
}

/// Decompresses `path` with gzip; None when the file is gone already.
fn gunzip(path: &Path) -> Result<Option<String>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    ensure!(
        bytes.starts_with(&[0x1f, 0x8b]),
        "{} is not gzip",
        path.display()
    );
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes));
    let output = child.wait_with_output()?;
    let _ = writer.join();
    ensure!(
        output.status.success(),
        "gzip -dc {} failed",
        path.display()
    );
    Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_rotated_compressed_bounded_and_followed() -> Result<()> {
    let identity = client_identity("e2e-admin", "system:masters")?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &identity.ca_pem)?;
    let mut agent = Agent::start_with(
        "e2e-logrot",
        None,
        &format!(
            "authorization:\n  mode: AlwaysAllow\nauthentication:\n  x509:\n    clientCAFile: {}\n\
             containerLogMaxSize: 1Mi\ncontainerLogMaxFiles: {MAX_FILES}\n\
             containerLogMonitorInterval: {}s\n",
            ca.display(),
            MONITOR_INTERVAL.as_secs()
        ),
    )?;
    agent.write_manifest("logs.yaml", &busybox_pod("logs", "Always", 2, WRITER))?;
    let uid = agent
        .wait_pod("logs", periods().static_pod_start(), |pod| {
            let (state, _, _) = container_state(pod)?;
            (state == "running").then(|| pod.metadata.uid.clone().unwrap_or_default())
        })
        .await?;
    let pod = format!("logs-{}", agent.node);
    let log_dir: PathBuf = agent
        .pod_logs_dir()
        .join(format!("default_{pod}_{uid}"))
        .join("main");

    // The follow: every `tick N` line it receives, with its arrival time.
    let mut stream = open_follow(
        &agent,
        &identity,
        &format!("/containerLogs/default/{pod}/main?follow=true"),
    )
    .await?;
    let ticks: Ticks = Arc::default();
    let received = ticks.clone();
    let follower = tokio::spawn(async move {
        let mut line = Vec::new();
        loop {
            line.clear();
            match stream.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(n) = line
                .strip_prefix(b"tick ")
                .and_then(|rest| std::str::from_utf8(rest).ok())
                .and_then(|rest| rest.trim().parse::<u64>().ok())
            {
                received
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((n, Instant::now()));
            }
        }
    });

    let bound_files = MAX_FILES as usize;
    let bound_bytes = MAX_FILES * file_bound();
    let started = Instant::now();
    let mut samples = 0;
    let (mut max_files, mut max_bytes, mut max_live) = (0, 0, 0);
    let mut rotated_seen: BTreeSet<String> = BTreeSet::new();
    let mut first_rotation_at: Option<Instant> = None;
    let mut checked_gz = 0;
    while started.elapsed() < SAMPLING {
        let s = sample(&log_dir)?;
        samples += 1;
        max_files = max_files.max(s.files);
        max_bytes = max_bytes.max(s.bytes);
        max_live = max_live.max(s.live_bytes);
        ensure!(
            s.files <= bound_files,
            "{} files in {}: {:?}",
            s.files,
            log_dir.display(),
            s.rotated
        );
        ensure!(
            s.live_bytes <= file_bound(),
            "the live file holds {} bytes (bound {})",
            s.live_bytes,
            file_bound()
        );
        ensure!(
            s.bytes <= bound_bytes,
            "{} bytes in {} (bound {bound_bytes})",
            s.bytes,
            log_dir.display()
        );
        // Every rotated file is compressed but the newest.
        let newest = s.rotated.iter().map(|n| stamp(n)).max().unwrap_or_default();
        ensure!(
            s.plain_rotated.len() <= 1 && s.plain_rotated.iter().all(|n| stamp(n) == newest),
            "uncompressed rotated files {:?} among {:?}",
            s.plain_rotated,
            s.rotated
        );
        for name in &s.rotated {
            if rotated_seen.insert(stamp(name).to_owned()) && !ticks_so_far(&ticks).is_empty() {
                first_rotation_at.get_or_insert_with(Instant::now);
            }
            if name.ends_with(".gz")
                && checked_gz < 3
                && let Some(text) = gunzip(&log_dir.join(name))?
            {
                let first = text.lines().next().unwrap_or_default();
                ensure!(
                    first.splitn(4, ' ').count() == 4 && text.contains(" tick "),
                    "{name} holds no CRI log lines: {first:?}"
                );
                checked_gz += 1;
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    agent.assert_alive();

    // The follow goes on receiving lines after the rotations it lived through.
    let rotation_at = first_rotation_at.context("no rotation happened while following")?;
    let deadline = Instant::now() + periods().container_output();
    let received = loop {
        let received = ticks_so_far(&ticks);
        let after = received.iter().filter(|(_, at)| *at > rotation_at).count();
        if after > 0
            && received
                .last()
                .is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(1))
        {
            break received;
        }
        if Instant::now() > deadline {
            bail!(
                "the follow stopped receiving: {} ticks, last {:?}",
                received.len(),
                received.last()
            );
        }
        tokio::time::sleep(periods::POLL).await;
    };
    follower.abort();
    let numbers: Vec<u64> = received.iter().map(|(n, _)| *n).collect();
    let gaps = numbers.windows(2).filter(|w| w[1] != w[0] + 1).count();
    let rotations = rotated_seen.len();
    println!(
        "log rotation on {}: {samples} samples over {:?}; files max {max_files} (bound {bound_files}); \
         bytes max {max_bytes} (bound {bound_bytes}), live file max {max_live} (maxSize {MAX_SIZE}); \
         {rotations} rotated files seen, {checked_gz} gz checked; follow received ticks {:?}..{:?} \
         ({} lines, {gaps} gaps), {} after the first rotation it saw",
        mk_e2e::runtime_name(),
        started.elapsed(),
        numbers.first(),
        numbers.last(),
        numbers.len(),
        received.iter().filter(|(_, at)| *at > rotation_at).count(),
    );
    ensure!(rotations >= 2, "only {rotations} rotations in {SAMPLING:?}");
    ensure!(checked_gz >= 1, "no compressed file was seen");
    ensure!(
        gaps == 0,
        "the follow lost lines across rotations: {gaps} gaps"
    );
    Ok(())
}
