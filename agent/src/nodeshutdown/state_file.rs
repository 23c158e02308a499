//! kubelet's `graceful_node_shutdown_state` file (`pkg/kubelet/nodeshutdown/storage.go`): when the
//! last shutdown sequence started and ended, as JSON (`{"startTime": ..., "endTime": ...}`, Go's
//! RFC 3339 times, the zero time `0001-01-01T00:00:00Z` for "not yet"), written atomically in the
//! root directory so the gauges survive the reboot that follows.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The file's name in the root directory (kubelet's `localStorageStateFile`).
pub const FILE_NAME: &str = "graceful_node_shutdown_state";
/// Go's zero `time.Time`, as `encoding/json` writes it.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The times of the last shutdown sequence; `None` for one not recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownTimes {
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
}

/// The file as kubelet writes it: RFC 3339 times.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnDisk {
    #[serde(default)]
    start_time: String,
    #[serde(default)]
    end_time: String,
}

/// A recorded time: not Go's zero time, nor empty or unreadable.
fn known(text: &str) -> Option<Timestamp> {
    let zero: Timestamp = GO_ZERO_TIME.parse().ok()?;
    text.parse::<Timestamp>().ok().filter(|t| *t > zero)
}

fn written(t: Option<Timestamp>) -> String {
    t.map_or_else(|| GO_ZERO_TIME.to_string(), |t| t.to_string())
}

/// The state file of a root directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn in_dir(root_dir: &Path) -> Self {
        Self {
            path: root_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded times; nothing recorded when the file does not exist.
    pub fn load(&self) -> Result<ShutdownTimes, StateFileError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ShutdownTimes::default());
            }
            Err(source) => {
                return Err(StateFileError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let on_disk: OnDisk =
            serde_json::from_slice(&text).map_err(|source| StateFileError::Json {
                path: self.path.clone(),
                source,
            })?;
        Ok(ShutdownTimes {
            start: known(&on_disk.start_time),
            end: known(&on_disk.end_time),
        })
    }

    /// Writes `times` atomically (a temporary file in the same directory, synced, renamed).
    pub fn store(&self, times: ShutdownTimes) -> Result<(), StateFileError> {
        let io = |source| StateFileError::Io {
            path: self.path.clone(),
            source,
        };
        let on_disk = OnDisk {
            start_time: written(times.start),
            end_time: written(times.end),
        };
        let text = serde_json::to_vec(&on_disk).map_err(|source| StateFileError::Json {
            path: self.path.clone(),
            source,
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(".tmp-{FILE_NAME}"));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Seconds since the epoch, as kubelet's gauges report a time (`t.Unix()`).
pub fn gauge_value(t: Option<Timestamp>) -> f64 {
    t.map_or(0.0, |t| t.as_second() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_kubelets_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::in_dir(dir.path());
        assert_eq!(
            file.load().expect("absent is empty"),
            ShutdownTimes::default()
        );
        let start: Timestamp = "2026-12-04T19:02:20.5Z".parse().expect("time");
        file.store(ShutdownTimes {
            start: Some(start),
            end: None,
        })
        .expect("store");
        let text = std::fs::read_to_string(file.path()).expect("read");
        assert!(
            text.contains("\"endTime\":\"0001-01-01T00:00:00Z\""),
            "Go's zero time for a missing end: {text}"
        );
        assert_eq!(
            file.load().expect("load"),
            ShutdownTimes {
                start: Some(start),
                end: None
            }
        );
        // What kubelet writes (Go's RFC 3339 with nanoseconds and an offset).
        std::fs::write(
            file.path(),
            r#"{"startTime":"2026-12-04T20:02:20.123456789+01:00","endTime":"2026-12-04T19:02:50Z"}"#,
        )
        .expect("write");
        let times = file.load().expect("kubelet's file");
        assert_eq!(times.start.map(|t| t.as_second()), Some(start.as_second()));
        assert_eq!(gauge_value(times.end), (start.as_second() + 30) as f64);
        assert_eq!(gauge_value(None), 0.0);
        std::fs::write(file.path(), "{not json").expect("write");
        assert!(matches!(file.load(), Err(StateFileError::Json { .. })));
    }
}
