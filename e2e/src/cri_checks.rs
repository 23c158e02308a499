//! Checks shared by the CRI suites of the runtimes (`cri_containerd`, `cri_docker`): unique names,
//! kubelet's namespace options, CRI log lines, and pod cgroup clean-up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail, ensure};
use mk_cri::api;

/// A name no other test (of this process or a concurrent one) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}-{nanos:08x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn kubelet_namespaces() -> api::NamespaceOption {
    // As kubelet does without shareProcessNamespace / hostNetwork: the pod's network and IPC, own PIDs.
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Waits until the CRI log file holds a line whose message is `wanted`, and returns all its lines.
pub async fn wait_for_log_line(path: &Path, wanted: &str) -> Result<Vec<String>> {
    let deadline = Instant::now() + crate::periods().runtime_settles();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.iter().any(|l| l.ends_with(&format!(" {wanted}"))) {
            return Ok(lines);
        }
        if Instant::now() > deadline {
            bail!(
                "no line {wanted:?} in {} in time; it holds {text:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `2026-11-24T13:17:15.435010113Z` or with a `+01:00` offset; the fraction has 1 to 9 digits or
/// none.
pub fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &ts[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        rest = &fraction[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3]
                .bytes()
                .chain(rest[4..6].bytes())
                .all(|c| c.is_ascii_digit()))
}

/// Checks one CRI log line: `<RFC3339Nano> <stdout|stderr> <F|P> <message>`.
pub fn parse_cri_log_line(line: &str) -> Result<(&str, &str, &str)> {
    let mut parts = line.splitn(4, ' ');
    let (Some(ts), Some(stream), Some(tag), Some(msg)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a CRI log line: {line:?}");
    };
    ensure!(is_rfc3339_nano(ts), "bad timestamp {ts:?} in {line:?}");
    ensure!(
        matches!(stream, "stdout" | "stderr"),
        "bad stream in {line:?}"
    );
    ensure!(matches!(tag, "F" | "P"), "bad tag in {line:?}");
    Ok((stream, tag, msg))
}

/// The cgroup directories of a pod (`/kubepods[/burstable|/besteffort]/pod<uid>` in each cgroup
/// v1 hierarchy, or once on cgroup v2), under the cgroup root the test agents use.
pub fn pod_cgroup_dirs(uid: &str) -> Vec<PathBuf> {
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        hierarchies.extend(entries.flatten().map(|h| h.path()));
    }
    let mut dirs = Vec::new();
    for qos in ["", "burstable/", "besteffort/"] {
        let pod = format!("kubepods/{qos}pod{uid}");
        dirs.extend(hierarchies.iter().map(|h| h.join(&pod)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// A pod's cgroup directories that tests made through CRI alone, or that an agent killed by a
/// test left (as kubelet, the agent removes them with the pod): removed with what is below them.
pub fn remove_pod_cgroups(uid: &str) {
    if uid.is_empty() {
        return;
    }
    for dir in pod_cgroup_dirs(uid) {
        let mut all = vec![dir.clone()];
        let mut i = 0;
        while i < all.len() {
            if let Ok(entries) = std::fs::read_dir(&all[i]) {
                all.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        for d in all.iter().rev() {
            if let Err(err) = std::fs::remove_dir(d)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("cleanup: rmdir {}: {err}", d.display());
            }
        }
    }
}

/// The busybox command of a container serving `pong` at `/ping` on `port` (for port-forward).
pub fn web_server_command(port: u16) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("mkdir -p /www && echo pong > /www/ping && exec httpd -f -p {port} -h /www"),
    ]
}

fn v4_status(error_stream: &str) -> Result<serde_json::Value> {
    serde_json::from_str(error_stream)
        .map_err(|e| anyhow::anyhow!("error stream is not a JSON status ({e}): {error_stream:?}"))
}

/// Exec, attach and port-forward through the runtime's streaming server, driven by
/// `mk_streaming::client` (SPDY/3.1 with `v4.channel.k8s.io` / `portforward.k8s.io`, as client-go).
/// `web` serves `/ping` on `port` ([`web_server_command`]); `shell` runs `sh` created with
/// `stdin` and `stdin_once`; both are in `sandbox_id`.
pub async fn check_streaming(
    client: &mk_cri::CriClient,
    sandbox_id: &str,
    web: &str,
    port: u16,
    shell: &str,
) -> Result<()> {
    use mk_streaming::client::{SessionInput, forward_once, run_session};
    let exec = |cmd: &[&str], stdin: bool, stderr: bool, tty: bool| api::ExecRequest {
        container_id: web.into(),
        cmd: cmd.iter().map(|s| (*s).to_string()).collect(),
        stdin,
        stdout: true,
        stderr,
        tty,
    };

    // Separate stdout and stderr, and the exit code in a v4 status.
    let url = client
        .exec(exec(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            true,
            false,
        ))
        .await?
        .url;
    let out = run_session(
        &url,
        SessionInput {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await?;
    ensure!(out.stdout == b"out\n", "exec stdout: {out:?}");
    ensure!(out.stderr == b"err\n", "exec stderr: {out:?}");
    let status = v4_status(&out.error)?;
    ensure!(status["reason"] == "NonZeroExitCode", "{status}");
    ensure!(status["details"]["causes"][0]["message"] == "3", "{status}");
    // A URL serves one session.
    ensure!(
        run_session(&url, SessionInput::default()).await.is_err(),
        "an exec URL was usable twice"
    );

    // Stdin reaches the command and its end is EOF.
    let url = client.exec(exec(&["cat"], true, false, false)).await?.url;
    let out = run_session(
        &url,
        SessionInput {
            stdin: Some(b"fed through stdin\n".to_vec()),
            stdout: true,
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        out.stdout == b"fed through stdin\n",
        "exec with stdin: {out:?}"
    );
    ensure!(v4_status(&out.error)?["status"] == "Success", "{out:?}");

    // A terminal.
    let url = client
        .exec(exec(
            &["sh", "-c", "test -t 1 && echo on-a-tty"],
            true,
            false,
            true,
        ))
        .await?
        .url;
    let out = run_session(
        &url,
        SessionInput {
            stdin: Some(Vec::new()),
            stdout: true,
            tty: true,
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("on-a-tty"),
        "exec with a tty: {out:?}"
    );

    // Attach: what goes into the main process's stdin comes out of its stdout; closing stdin
    // (stdin_once) ends the process and the session.
    let url = client
        .attach(api::AttachRequest {
            container_id: shell.into(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await?
        .url;
    let out = tokio::time::timeout(
        crate::periods().runtime_settles() * 4,
        run_session(
            &url,
            SessionInput {
                stdin: Some(b"echo attached-hello\n".to_vec()),
                stdout: true,
                stderr: true,
                tty: false,
            },
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("attach did not end after stdin closed"))??;
    ensure!(
        out.stdout == b"attached-hello\n",
        "attach stdout: {out:?} ({})",
        String::from_utf8_lossy(&out.stdout)
    );

    // Port-forward to the pod's loopback-reachable server, and to a closed port.
    let forward = api::PortForwardRequest {
        pod_sandbox_id: sandbox_id.into(),
        port: vec![i32::from(port)],
    };
    let deadline = Instant::now() + crate::periods().runtime_settles();
    loop {
        let url = client.port_forward(forward.clone()).await?.url;
        let (data, error) = forward_once(&url, port, b"GET /ping HTTP/1.0\r\n\r\n").await?;
        let body = String::from_utf8_lossy(&data);
        if body.ends_with("pong\n") && error.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("port-forward to {port}: {body:?}, error stream {error:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = client.port_forward(forward).await?.url;
    let (data, error) = forward_once(&url, 1, b"x").await?;
    ensure!(
        data.is_empty() && !error.is_empty(),
        "port-forward to a closed port: {data:?}, error stream {error:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nano_checker() {
        assert!(is_rfc3339_nano("2026-11-24T13:17:15.435010113Z"));
        assert!(is_rfc3339_nano("2026-11-24T13:17:15Z"));
        assert!(!is_rfc3339_nano("2026-11-24 13:17:15Z"));
        assert!(!is_rfc3339_nano("2026-11-24T13:17:15.4350101134Z"));
    }
}
