//! Files the agent keeps for a pod under `<rootDir>/pods/<uid>/`: the managed `/etc/hosts` and each
//! container instance's termination-message file, mounted into the containers as kubelet does, and
//! the reading of termination messages (with `FallbackToLogsOnError`) once a container exits.

use std::path::{Path, PathBuf};

use mk_cri::api;

/// kubelet's limits on a termination message.
const MAX_MESSAGE_BYTES: usize = 4096;
const FALLBACK_LOG_BYTES: usize = 2048;
const FALLBACK_LOG_LINES: usize = 80;

pub fn pod_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid)
}

/// Writes the pod's hosts file and returns the mount that puts it at `/etc/hosts`.
pub fn write_hosts(root_dir: &Path, uid: &str, content: &str) -> std::io::Result<api::Mount> {
    let dir = pod_dir(root_dir, uid);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("etc-hosts");
    std::fs::write(&path, content)?;
    Ok(api::Mount {
        container_path: "/etc/hosts".into(),
        host_path: path.to_string_lossy().into_owned(),
        ..Default::default()
    })
}

fn termination_file(root_dir: &Path, uid: &str, container: &str, attempt: u32) -> PathBuf {
    pod_dir(root_dir, uid)
        .join("containers")
        .join(container)
        .join(format!("termination-log-{attempt}"))
}

/// Creates the (empty, world-writable) termination-message file of a container instance and returns
/// its mount at `terminationMessagePath`.
pub fn termination_mount(
    root_dir: &Path,
    uid: &str,
    container: &str,
    attempt: u32,
    container_path: &str,
) -> std::io::Result<api::Mount> {
    use std::os::unix::fs::PermissionsExt;
    let path = termination_file(root_dir, uid, container, attempt);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, b"")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(api::Mount {
        container_path: container_path.to_string(),
        host_path: path.to_string_lossy().into_owned(),
        ..Default::default()
    })
}

/// The content of CRI log lines (`<time> <stream> <P|F> <message>`), partial lines joined.
pub fn log_content(cri_log: &str) -> String {
    let mut out = String::new();
    for line in cri_log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag, msg) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next().unwrap_or_default(),
        );
        out.push_str(msg);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

fn tail(text: &str, max_lines: usize, max_bytes: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let mut joined = lines[start..].join("\n");
    if joined.len() > max_bytes {
        let mut cut = joined.len() - max_bytes;
        while !joined.is_char_boundary(cut) {
            cut += 1;
        }
        joined = joined[cut..].to_string();
    }
    joined
}

/// kubelet's termination message: the file's content (at most 4 KiB), or with
/// `FallbackToLogsOnError` and a failed, message-less container, the tail of its log.
pub fn termination_message(
    root_dir: &Path,
    uid: &str,
    container: &str,
    attempt: u32,
    policy: &str,
    exit_code: i32,
    log_file: &Path,
) -> String {
    let path = termination_file(root_dir, uid, container, attempt);
    let mut message = std::fs::read(&path).unwrap_or_default();
    message.truncate(MAX_MESSAGE_BYTES);
    let message = String::from_utf8_lossy(&message).into_owned();
    if message.is_empty() && exit_code != 0 && policy == "FallbackToLogsOnError" {
        let log = std::fs::read_to_string(log_file).unwrap_or_default();
        return tail(&log_content(&log), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_from_the_file_or_the_log_tail() {
        let root = tempfile::tempdir().expect("tmp");
        let log = root.path().join("0.log");
        std::fs::write(&log, "2026-01-01T00:00:00Z stdout F first\n2026-01-01T00:00:01Z stderr P par\n2026-01-01T00:00:01Z stderr F tial\n").expect("log");
        let m = termination_mount(root.path(), "u", "c", 0, "/dev/termination-log").expect("mount");
        assert_eq!(m.container_path, "/dev/termination-log");
        assert_eq!(
            termination_message(root.path(), "u", "c", 0, "File", 1, &log),
            ""
        );
        assert_eq!(
            termination_message(root.path(), "u", "c", 0, "FallbackToLogsOnError", 1, &log),
            "first\npartial"
        );
        assert_eq!(
            termination_message(root.path(), "u", "c", 0, "FallbackToLogsOnError", 0, &log),
            "",
            "only on failure"
        );
        std::fs::write(&m.host_path, "bye").expect("write");
        assert_eq!(
            termination_message(root.path(), "u", "c", 0, "FallbackToLogsOnError", 1, &log),
            "bye"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines_and_bytes() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text, 80, 2048);
        assert!(t.starts_with("line 20\n") && t.ends_with("line 99"));
        assert_eq!(tail(&"x".repeat(5000), 80, 2048).len(), 2048);
    }
}
