//! Container output into CRI log files.
//!
//! Docker keeps each container's output in its json-file log (bounded by
//! [`DockerShimConfig::docker_log_max_size`](crate::DockerShimConfig)). For every started
//! container the shim runs one task that follows that log through Docker's logs API
//! (`follow`, `timestamps`, stdout + stderr) and appends each entry to the container's CRI
//! `log_path` as `<RFC3339Nano> <stdout|stderr> <F|P> <message>` lines, the format kubelet and log
//! shippers read. Docker's own timestamps are kept, so the lines carry the time the output was
//! produced, not the time it was copied. A Docker entry that does not end in a newline (a line
//! longer than Docker's 16 KiB buffer, or output flushed without one) becomes a `P` (partial) line.
//!
//! Following from the json-file means nothing is lost when the follower starts late (a container
//! that exits at once) or when the shim restarts: [`DockerShim::resume_logs`] starts a follower
//! for every started container, skipping the entries up to the last timestamp already in the CRI
//! file. ReopenContainerLog (after kubelet rotated the file) makes the follower open `log_path`
//! afresh.
//!
//! TTY containers: Docker gives their output as one raw stream; it is written as `stdout` lines.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::{ListContainersOptions, LogsOptions};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::error::OpError;
use crate::{DockerShim, DockerShimError, labels};

/// Which stream a CRI log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Appends the CRI log lines of one output chunk to `out`: every complete line (ending in `\n`)
/// as `<timestamp> <stream> F <line>\n`, a trailing remainder without newline as
/// `<timestamp> <stream> P <remainder>\n`. An empty chunk writes nothing.
pub fn format_cri_lines(out: &mut Vec<u8>, timestamp: &str, stream: LogStream, chunk: &[u8]) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (line, tag, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], b'F', &rest[i + 1..]),
            None => (rest, b'P', &rest[rest.len()..]),
        };
        out.extend_from_slice(timestamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.push(b' ');
        out.push(tag);
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = next;
    }
}

/// Splits one entry of Docker's logs (with `timestamps=true`: `<RFC3339Nano> <payload>`) into its
/// timestamp (with its value in ns) and payload. None when it does not start with a timestamp.
pub fn split_docker_timestamp(entry: &[u8]) -> Option<(&str, i128, &[u8])> {
    let space = entry.iter().position(|b| *b == b' ')?;
    let text = std::str::from_utf8(&entry[..space]).ok()?;
    let ts: jiff::Timestamp = text.parse().ok()?;
    Some((text, ts.as_nanosecond(), &entry[space + 1..]))
}

/// The timestamp (ns) of the last line of a CRI log file, if it has one.
pub fn last_timestamp(path: &Path) -> Option<i128> {
    const TAIL: u64 = 64 * 1024;
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    tail.split(|b| *b == b'\n')
        .rev()
        .filter(|line| !line.is_empty())
        .find_map(|line| split_docker_timestamp(line).map(|(_, ns, _)| ns))
}

/// Creates a CRI log file (and its directory) if absent.
pub(crate) fn create_log_file(path: &Path) -> Result<(), OpError> {
    LogFile::open(path)
        .map(drop)
        .map_err(|e| OpError::io(format!("creating log file {}", path.display()), e))
}

/// An open CRI log file that ReopenContainerLog can swap for a fresh one.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Option<File>,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut log = Self {
            path: path.to_path_buf(),
            file: None,
        };
        log.reopen()?;
        Ok(log)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(bytes),
            None => Ok(()),
        }
    }
}

type SharedLog = Arc<Mutex<LogFile>>;

/// The followers of this shim, by container ID.
#[derive(Debug, Default)]
pub(crate) struct LogFollowers {
    active: Mutex<HashMap<String, (SharedLog, JoinHandle<()>)>>,
}

impl LogFollowers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SharedLog, JoinHandle<()>)>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every follower (the shim is shutting down; a later shim resumes them).
    pub(crate) fn abort_all(&self) {
        for (_, (_, task)) in self.lock().drain() {
            task.abort();
        }
    }

    /// Waits (at most `limit`) until the follower of `container_id`, if one runs, has copied
    /// everything: its task ends when Docker's log stream of the stopped container does.
    pub(crate) async fn wait_drained(&self, container_id: &str, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let running = self
                .lock()
                .get(container_id)
                .is_some_and(|(_, task)| !task.is_finished());
            if !running || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.lock()
            .values()
            .filter(|(_, t)| !t.is_finished())
            .count()
    }
}

impl DockerShim {
    /// Starts following `container_id`'s output into `log_path` (creating the file), unless a
    /// follower already runs for it. Entries up to `after_ns` (already copied) are skipped.
    pub(crate) fn follow_logs(
        &self,
        container_id: &str,
        log_path: &Path,
        after_ns: Option<i128>,
    ) -> Result<(), OpError> {
        let mut active = self.inner.logs.lock();
        if let Some((_, task)) = active.get(container_id)
            && !task.is_finished()
        {
            return Ok(());
        }
        // Followers of containers that stopped are of no further use.
        active.retain(|_, (_, task)| !task.is_finished());
        let log = LogFile::open(log_path)
            .map_err(|e| OpError::io(format!("opening log file {}", log_path.display()), e))?;
        let log = Arc::new(Mutex::new(log));
        let task = tokio::spawn(copy_logs(
            self.clone(),
            container_id.to_string(),
            log.clone(),
            after_ns,
        ));
        active.insert(container_id.to_string(), (log, task));
        Ok(())
    }

    /// Reopens the CRI log file of a container (kubelet renamed it to rotate it). Starts a
    /// follower when none runs.
    pub(crate) fn reopen_log(&self, container_id: &str, log_path: &Path) -> Result<(), OpError> {
        let shared = self
            .inner
            .logs
            .lock()
            .get(container_id)
            .filter(|(_, task)| !task.is_finished())
            .map(|(log, _)| log.clone());
        match shared {
            Some(log) => log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reopen()
                .map_err(|e| OpError::io(format!("reopening log file {}", log_path.display()), e)),
            None => self.follow_logs(container_id, log_path, last_timestamp(log_path)),
        }
    }

    /// Starts copying the output of the shim's existing containers into their CRI log files, from
    /// where each file ends (used when a shim starts, e.g. after the agent restarted): running
    /// containers, and exited ones whose log file is still there (for output they wrote while
    /// no follower ran). Returns how many followers it started.
    pub async fn resume_logs(&self) -> Result<usize, DockerShimError> {
        let filters = crate::convert::docker_label_filters(
            labels::TYPE_CONTAINER,
            &HashMap::new(),
            &[(labels::INSTANCE, &self.config().instance)],
        );
        let summaries = self
            .docker()
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|source| DockerShimError::Docker {
                context: "listing containers".into(),
                source,
            })?;
        let mut started = 0;
        for summary in summaries {
            let (Some(id), Some(docker_labels)) = (summary.id, summary.labels) else {
                continue;
            };
            let Some(cri) = labels::ContainerLabels::decode(&docker_labels) else {
                continue;
            };
            let state = summary.state.map(|s| s.to_string()).unwrap_or_default();
            let path = Path::new(&cri.log_path);
            let wanted = match state.as_str() {
                "running" | "paused" | "restarting" => true,
                "exited" | "dead" => path.exists(),
                _ => false,
            };
            if cri.log_path.is_empty() || !wanted {
                continue;
            }
            match self.follow_logs(&id, path, last_timestamp(path)) {
                Ok(()) => started += 1,
                Err(e) => tracing::warn!(container = %id, error = %e, "cannot resume its log"),
            }
        }
        Ok(started)
    }

    /// Forgets the follower of a removed container (its stream ends by itself).
    pub(crate) fn forget_logs(&self, container_id: &str) {
        self.inner.logs.lock().remove(container_id);
    }
}

/// Copies Docker's log of one container into its CRI log file until the container has stopped
/// and its log is drained. A broken stream (dockerd restarting) is resumed after the last entry
/// copied.
async fn copy_logs(shim: DockerShim, id: String, log: SharedLog, mut after_ns: Option<i128>) {
    let mut final_pass = false;
    loop {
        let since = after_ns.map_or(0, |ns| {
            i32::try_from(ns / 1_000_000_000).unwrap_or(i32::MAX)
        });
        let options = LogsOptions {
            follow: !final_pass,
            stdout: true,
            stderr: true,
            since,
            timestamps: true,
            ..Default::default()
        };
        let mut stream = shim.docker().logs(&id, Some(options));
        // What an earlier pass copied is skipped; within a pass every entry is written: Docker
        // timestamps stdout and stderr entries as each stream's copier reads them, so a stdout
        // entry may follow a later-stamped stderr one (seen under load: the stdout line lost).
        let copied_until = after_ns;
        let mut broken = false;
        let mut buffer = Vec::new();
        while let Some(item) = stream.next().await {
            let (stream_kind, entry) = match item {
                Ok(LogOutput::StdOut { message }) => (LogStream::Stdout, message),
                Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                Ok(LogOutput::Console { message }) => (LogStream::Stdout, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => {
                    if crate::error::is_not_found(&e) {
                        return; // removed
                    }
                    tracing::debug!(container = %id, error = %e, "log stream broke");
                    broken = true;
                    break;
                }
            };
            buffer.clear();
            match split_docker_timestamp(&entry) {
                Some((text, ns, payload)) => {
                    if copied_until.is_some_and(|after| ns <= after) {
                        continue;
                    }
                    after_ns = Some(after_ns.map_or(ns, |after| after.max(ns)));
                    format_cri_lines(&mut buffer, text, stream_kind, payload);
                }
                None => {
                    let now = jiff::Timestamp::now();
                    let text = now.to_string();
                    format_cri_lines(&mut buffer, &text, stream_kind, &entry);
                }
            }
            let written = log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(&buffer);
            if let Err(e) = written {
                tracing::warn!(container = %id, error = %e, "writing CRI log failed");
            }
        }
        if final_pass {
            return;
        }
        // The stream ended: either the container stopped (then read once more without follow, for
        // anything written as it stopped) or the connection broke (then resume while it runs).
        match shim.docker().inspect_container(&id, None).await {
            Ok(inspect) => {
                let running = inspect
                    .state
                    .as_ref()
                    .and_then(|s| s.running)
                    .unwrap_or(false);
                if running {
                    if !broken {
                        tracing::debug!(container = %id, "log stream ended while running");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                } else {
                    final_pass = true;
                }
            }
            Err(e) if crate::error::is_not_found(&e) => return,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(timestamp: &str, stream: LogStream, chunk: &[u8]) -> String {
        let mut out = Vec::new();
        format_cri_lines(&mut out, timestamp, stream, chunk);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn complete_and_partial_lines() {
        let ts = "2026-11-24T13:43:48.123456789Z";
        assert_eq!(
            lines(ts, LogStream::Stdout, b"hello\n"),
            format!("{ts} stdout F hello\n")
        );
        assert_eq!(
            lines(ts, LogStream::Stderr, b"no newline"),
            format!("{ts} stderr P no newline\n")
        );
        assert_eq!(
            lines(ts, LogStream::Stdout, b"a\nb\n\nc"),
            format!("{ts} stdout F a\n{ts} stdout F b\n{ts} stdout F \n{ts} stdout P c\n")
        );
        assert_eq!(lines(ts, LogStream::Stdout, b""), "");
    }

    #[test]
    fn docker_timestamps_are_split_off() {
        let entry = b"2026-11-24T13:43:48.1Z hello world\n";
        let (text, ns, payload) = split_docker_timestamp(entry).unwrap_or(("", 0, b""));
        assert_eq!(text, "2026-11-24T13:43:48.1Z");
        assert_eq!(ns, 1_795_527_828_100_000_000);
        assert_eq!(payload, b"hello world\n");
        assert!(split_docker_timestamp(b"no timestamp here").is_none());
        assert!(split_docker_timestamp(b"nospace").is_none());
    }

    #[test]
    fn last_timestamp_of_a_cri_log() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("0.log");
        assert_eq!(last_timestamp(&path), None);
        std::fs::write(
            &path,
            "2026-11-24T13:43:48Z stdout F one\n2026-11-24T13:43:49.5Z stderr P two\n",
        )?;
        assert_eq!(last_timestamp(&path), Some(1_795_527_829_500_000_000));
        Ok(())
    }

    #[test]
    fn log_file_reopens_after_rotation() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c").join("0.log");
        let mut log = LogFile::open(&path)?;
        log.write(b"first\n")?;
        std::fs::rename(&path, dir.path().join("rotated"))?;
        log.write(b"second\n")?;
        log.reopen()?;
        log.write(b"third\n")?;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("rotated"))?,
            "first\nsecond\n"
        );
        assert_eq!(std::fs::read_to_string(&path)?, "third\n");
        Ok(())
    }
}
