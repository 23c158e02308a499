//! The rotation loop against the fake CRI runtime and a temporary log directory (the fake writes
//! no logs: the tests write the files, and play the runtime's part after a reopen).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mk_cri::{CriClient, api};
use mk_fake_runtime::{FakeRuntime, Op, ServerHandle};

use super::rotation::{COMPRESS_SUFFIX, TIMESTAMP_FORMAT};
use super::*;
use crate::kuberuntime::labels::{NODE_NAME, POD_UID};
use crate::test_cri;

const NODE: &str = "node-a";
const KI: u64 = 1024;

struct Harness {
    dir: tempfile::TempDir,
    fake: FakeRuntime,
    _server: ServerHandle,
    cri: CriClient,
}

impl Harness {
    fn start() -> Self {
        let test_cri::FakeCri {
            dir,
            fake,
            server,
            cri,
        } = test_cri::serve_fake(&["busybox"]);
        Self {
            dir,
            fake,
            _server: server,
            cri,
        }
    }

    fn manager(&self, max_size: u64, max_files: usize, workers: usize) -> ContainerLogManager {
        ContainerLogManager::new(
            self.cri.clone(),
            NODE.into(),
            LogRotatePolicy {
                max_size,
                max_files,
            },
            Duration::from_secs(3),
            workers,
        )
    }

    /// Runs a container of pod `pod` labelled for `node`; returns its ID and log path.
    async fn run_container(&self, pod: &str, node: &str) -> (String, PathBuf) {
        let labels = HashMap::from([
            (POD_UID.to_string(), format!("uid-{pod}")),
            (NODE_NAME.to_string(), node.to_string()),
        ]);
        let log_directory = self.dir.path().join(format!("pods/default_{pod}"));
        let config = api::PodSandboxConfig {
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: labels.clone(),
            ..test_cri::sandbox_config(pod)
        };
        let sandbox = test_cri::run_sandbox(&self.cri, &config).await;
        let container = api::ContainerConfig {
            log_path: "main/0.log".into(),
            labels,
            ..test_cri::sleeping_container("main", 0, "busybox")
        };
        let id = test_cri::start_container(&self.cri, &sandbox, &config, container).await;
        let path = log_directory.join("main/0.log");
        std::fs::create_dir_all(log_directory.join("main")).expect("log dir");
        (id, path)
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("gz"))
        .read_to_string(&mut text)
        .expect("gzip");
    text
}

fn lines(tag: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "2026-12-04T09:05:07.000000000Z stdout F {tag} {i:04} {}\n",
                "x".repeat(40)
            )
        })
        .collect()
}

fn is_rotated_name(name: &str) -> bool {
    name.strip_prefix("0.log.")
        .is_some_and(|ts| jiff::civil::DateTime::strptime(TIMESTAMP_FORMAT, ts).is_ok())
}

/// The messages of CRI log lines, as `/containerLogs` answers them.
fn messages(text: &str) -> String {
    text.lines()
        .map(|l| format!("{}\n", l.splitn(4, ' ').nth(3).unwrap_or_default()))
        .collect()
}

/// Receives from a follower until `received` holds `len` bytes (or 10 s passed).
async fn receive(
    rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
    received: &mut String,
    len: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.len() < len {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(chunk)) => received.push_str(&String::from_utf8_lossy(&chunk)),
            _ => return,
        }
    }
}

#[tokio::test]
async fn a_full_log_is_rotated_compressed_trimmed_and_reopened() {
    let h = Harness::start();
    let (id, live) = h.run_container("web", NODE).await;
    let dir = live.parent().expect("dir").to_path_buf();
    let newest = lines("newest-rotated", 50);
    std::fs::write(dir.join("0.log.20261204-080000"), &newest).expect("write");
    std::fs::write(dir.join("0.log.20261204-070000.gz"), b"old").expect("write");
    std::fs::write(dir.join("0.log.20261204-060000.gz"), b"older").expect("write");
    std::fs::write(dir.join("0.log.20261204-080000.tmp"), b"half").expect("write");
    let current = lines("live", 40);
    std::fs::write(&live, &current).expect("write");

    let round = h.manager(KI, 3, 1).rotate_logs().await.expect("round");
    assert_eq!(
        round,
        Round {
            containers: 1,
            rotated: 1,
            failed: 0
        }
    );
    assert_eq!(h.fake.call_count(Op::ReopenContainerLog), 1);
    let names = names_in(&dir);
    // maxFiles 3: the previous rotated file compressed, the two older ones and the leftover gone,
    // the live file renamed (the runtime creates the new one).
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], "0.log.20261204-080000.gz");
    assert_eq!(gunzip(&dir.join(&names[0])), newest);
    assert!(is_rotated_name(&names[1]), "{names:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join(&names[1])).expect("rotated"),
        current
    );
    assert!(!live.exists());
    let _ = id;
}

#[tokio::test]
async fn a_refused_reopen_renames_the_log_back() {
    let h = Harness::start();
    let (id, live) = h.run_container("web", NODE).await;
    let current = lines("live", 40);
    std::fs::write(&live, &current).expect("write");
    h.fake
        .fail_next(Op::ReopenContainerLog, tonic::Code::Unavailable);
    let manager = h.manager(KI, 5, 1);
    let err = manager
        .rotate_container(&id)
        .await
        .expect_err("reopen fails");
    assert!(matches!(err, RotationError::Reopen { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&live).expect("live"), current);
    assert_eq!(names_in(live.parent().expect("dir")), vec!["0.log"]);
    // The loop goes on: the next round rotates it.
    h.fake
        .fail_next(Op::ReopenContainerLog, tonic::Code::Unavailable);
    let round = manager.rotate_logs().await.expect("round");
    assert_eq!(round.failed, 1);
    let round = manager.rotate_logs().await.expect("round");
    assert_eq!(round.rotated, 1);
    assert!(!live.exists());
}

#[tokio::test]
async fn small_logs_other_nodes_and_stopped_containers_are_left_alone() {
    let h = Harness::start();
    let (_, small) = h.run_container("small", NODE).await;
    std::fs::write(&small, lines("small", 2)).expect("write");
    let (_, theirs) = h.run_container("theirs", "node-b").await;
    std::fs::write(&theirs, lines("theirs", 100)).expect("write");
    let (stopped_id, stopped) = h.run_container("stopped", NODE).await;
    std::fs::write(&stopped, lines("stopped", 100)).expect("write");
    h.fake.exit_container(&stopped_id, 0, None).expect("exit");

    let round = h.manager(KI, 5, 2).rotate_logs().await.expect("round");
    assert_eq!(
        round,
        Round {
            containers: 1,
            rotated: 0,
            failed: 0
        }
    );
    assert_eq!(h.fake.call_count(Op::ReopenContainerLog), 0);
    for path in [&small, &theirs, &stopped] {
        assert_eq!(names_in(path.parent().expect("dir")), vec!["0.log"]);
    }
}

#[tokio::test]
async fn a_missing_log_is_reopened() {
    let h = Harness::start();
    let (id, _live) = h.run_container("web", NODE).await;
    let outcome = h
        .manager(KI, 5, 1)
        .rotate_container(&id)
        .await
        .expect("checked");
    assert_eq!(outcome, Outcome::Reopened);
    assert_eq!(h.fake.call_count(Op::ReopenContainerLog), 1);
}

#[tokio::test]
async fn several_workers_rotate_every_container() {
    let h = Harness::start();
    let mut paths = Vec::new();
    for i in 0..5 {
        let (_, path) = h.run_container(&format!("p{i}"), NODE).await;
        std::fs::write(&path, lines("live", 40)).expect("write");
        paths.push(path);
    }
    let round = h.manager(KI, 2, 2).rotate_logs().await.expect("round");
    assert_eq!(round.rotated, 5);
    for path in paths {
        let names = names_in(path.parent().expect("dir"));
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(is_rotated_name(&names[0]));
    }
}

#[tokio::test]
async fn a_follower_reads_on_across_rotations() {
    use crate::server::logs::{LogOptions, stream_log};

    let h = Harness::start();
    let (id, live) = h.run_container("web", NODE).await;
    std::fs::write(&live, lines("first", 30)).expect("write");
    let opts = LogOptions::from_query(&[("follow".into(), "true".into())]).expect("options");
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let path = live.clone();
    let follower =
        tokio::spawn(async move { stream_log(&path, &opts, tx, || async { true }).await });
    let mut received = String::new();
    let mut expected = messages(&lines("first", 30));
    receive(&mut rx, &mut received, expected.len()).await;
    assert_eq!(received, expected, "before any rotation");
    let manager = h.manager(KI, 3, 1);
    for tag in ["second", "third", "fourth"] {
        let Ok(Outcome::Rotated(rotated)) = manager.rotate_container(&id).await else {
            panic!("{tag}: not rotated");
        };
        // The runtime writes on into the renamed file until it reopened, then into a new one.
        let late = lines(&format!("late-{tag}"), 3);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&rotated)
            .and_then(|mut f| std::io::Write::write_all(&mut f, late.as_bytes()))
            .expect("late lines");
        let new = lines(tag, 30);
        std::fs::write(&live, &new).expect("new log");
        expected.push_str(&messages(&late));
        expected.push_str(&messages(&new));
        receive(&mut rx, &mut received, expected.len()).await;
        assert_eq!(received, expected, "after the rotation before {tag}");
        // A second rotation within the same second would wait for the next round.
        tokio::time::sleep(Duration::from_millis(1001)).await;
    }
    let names = names_in(live.parent().expect("dir"));
    assert_eq!(names.len(), 3, "maxFiles 3: {names:?}");
    assert_eq!(
        names
            .iter()
            .filter(|n| n.ends_with(COMPRESS_SUFFIX))
            .count(),
        1,
        "{names:?}"
    );
    follower.abort();
}
