//! The pure part of log rotation: given a container's live log file, its size, the names beside
//! it and the time, which files to remove, which to compress and what to rename the live file to.
//! The rules are kubelet's (`pkg/kubelet/logs/container_log_manager.go`):
//!
//! * the rotated files of `0.log` are the names starting with `0.log.`; rotation names them
//!   `0.log.<YYYYMMDD-HHMMSS>` (local time) and compression adds `.gz`;
//! * leftovers of an interrupted rotation are removed first: temporary files (`.tmp`) and
//!   uncompressed files whose `.gz` already exists;
//! * of the rotated files in use, sorted by name (oldest first), only the newest `maxFiles - 2`
//!   are kept, so that after the rename there are at most `maxFiles - 1` rotated files beside the
//!   live one; the oldest go first, so that a reader following the newest is not disturbed;
//! * the kept ones that are not compressed yet are gzipped, and the live file is renamed without
//!   compression (the runtime may write on into it until it reopened its log, and a follower
//!   reads it to its end): the newest rotated file is the only uncompressed one.

use jiff::civil::DateTime;

/// The suffix of a rotated file: `strftime` for Go's `20060102-150405`.
pub const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";
/// The suffix of a compressed rotated file.
pub const COMPRESS_SUFFIX: &str = ".gz";
/// The suffix of the file a compression writes before it is renamed.
pub const TMP_SUFFIX: &str = ".tmp";

/// kubelet's `LogRotatePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotatePolicy {
    /// The live file is rotated once it holds this many bytes (`containerLogMaxSize`).
    pub max_size: u64,
    /// At most this many files per container: the live one and the rotated ones
    /// (`containerLogMaxFiles`, at least 2).
    pub max_files: usize,
}

/// The file operations of one rotation, in order: remove, compress, rename the live file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// File names to remove: leftovers first, then the oldest rotated files beyond the limit.
    pub remove: Vec<String>,
    /// Rotated file names to gzip into `<name>.gz` (the original removed), oldest first.
    pub compress: Vec<String>,
    /// The name the live file is renamed to.
    pub rotate_to: String,
}

/// What to do with a container's log this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The live file is below `max_size`.
    UnderLimit,
    /// A rotated file of this round's timestamp exists already (a rotation within the same
    /// second): renaming onto it would lose it, so the rotation waits for the next round.
    NameTaken(String),
    Rotate(Plan),
}

/// Decides the rotation of the live log file `live` (a file name, e.g. `0.log`) of `size` bytes,
/// given the names of the other entries of its directory, at local time `now`.
pub fn decide(
    policy: LogRotatePolicy,
    live: &str,
    size: u64,
    siblings: &[String],
    now: DateTime,
) -> Decision {
    if size < policy.max_size {
        return Decision::UnderLimit;
    }
    let prefix = format!("{live}.");
    let rotated: Vec<&str> = siblings
        .iter()
        .map(String::as_str)
        .filter(|name| name.starts_with(&prefix))
        .collect();
    let (mut in_use, unused): (Vec<&str>, Vec<&str>) =
        rotated.iter().partition(|name| is_in_use(name, &rotated));
    in_use.sort_unstable();
    let keep = policy.max_files.saturating_sub(2);
    let excess = in_use.len().saturating_sub(keep);
    let (old, kept) = in_use.split_at(excess);

    let rotate_to = format!("{live}.{}", now.strftime(TIMESTAMP_FORMAT));
    let compressed_name = format!("{rotate_to}{COMPRESS_SUFFIX}");
    if kept
        .iter()
        .any(|name| *name == rotate_to || *name == compressed_name)
    {
        return Decision::NameTaken(rotate_to);
    }
    let mut remove: Vec<String> = unused.iter().map(|s| s.to_string()).collect();
    remove.sort_unstable();
    remove.extend(old.iter().map(|s| s.to_string()));
    Decision::Rotate(Plan {
        remove,
        compress: kept
            .iter()
            .filter(|name| !name.ends_with(COMPRESS_SUFFIX))
            .map(|s| s.to_string())
            .collect(),
        rotate_to,
    })
}

/// Whether a rotated file is still part of the container's log (kubelet's `isInUse`): temporary
/// files never are, compressed ones always, an uncompressed one unless its `.gz` exists (the
/// compression finished but the original was not removed yet).
fn is_in_use(name: &str, rotated: &[&str]) -> bool {
    if name.ends_with(TMP_SUFFIX) {
        return false;
    }
    if name.ends_with(COMPRESS_SUFFIX) {
        return true;
    }
    let compressed = format!("{name}{COMPRESS_SUFFIX}");
    !rotated.contains(&compressed.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;

    fn now() -> DateTime {
        jiff::civil::date(2026, 12, 4).at(9, 5, 7, 0)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn rotate(remove: &[&str], compress: &[&str]) -> Decision {
        Decision::Rotate(Plan {
            remove: names(remove),
            compress: names(compress),
            rotate_to: "0.log.20261204-090507".into(),
        })
    }

    #[test]
    fn timestamp_is_kubelets_format() {
        assert_eq!(
            now().strftime(TIMESTAMP_FORMAT).to_string(),
            "20261204-090507"
        );
    }

    #[test]
    fn decisions() {
        let policy = LogRotatePolicy {
            max_size: 10 * MI,
            max_files: 5,
        };
        let cases: Vec<(&str, LogRotatePolicy, u64, Vec<&str>, Decision)> = vec![
            (
                "below the limit: nothing, leftovers included",
                policy,
                10 * MI - 1,
                vec!["0.log.20261204-080000.tmp"],
                Decision::UnderLimit,
            ),
            (
                "at the limit, first rotation",
                policy,
                10 * MI,
                vec![],
                rotate(&[], &[]),
            ),
            (
                "the previous rotated file is compressed, other logs of the dir ignored",
                policy,
                11 * MI,
                vec![
                    "1.log",
                    "0.log.20261204-080000",
                    "1.log.20261204-070000",
                    "10.log.20261204-070000",
                ],
                rotate(&[], &["0.log.20261204-080000"]),
            ),
            (
                "max 5 files: 3 rotated kept before the rename, oldest removed first",
                policy,
                11 * MI,
                vec![
                    "0.log.20261204-050000.gz",
                    "0.log.20261204-080000",
                    "0.log.20261204-060000.gz",
                    "0.log.20261204-070000.gz",
                    "0.log.20261204-040000.gz",
                ],
                rotate(
                    &["0.log.20261204-040000.gz", "0.log.20261204-050000.gz"],
                    &["0.log.20261204-080000"],
                ),
            ),
            (
                "leftovers: temporary files and originals whose .gz exists",
                policy,
                11 * MI,
                vec![
                    "0.log.20261204-070000",
                    "0.log.20261204-070000.gz",
                    "0.log.20261204-080000",
                    "0.log.20261204-080000.gz.tmp",
                    "0.log.20261204-080000.tmp",
                ],
                rotate(
                    &[
                        "0.log.20261204-070000",
                        "0.log.20261204-080000.gz.tmp",
                        "0.log.20261204-080000.tmp",
                    ],
                    &["0.log.20261204-080000"],
                ),
            ),
            (
                "max 2 files: every rotated file goes before the rename",
                LogRotatePolicy {
                    max_size: MI,
                    max_files: 2,
                },
                MI,
                vec!["0.log.20261204-070000.gz", "0.log.20261204-080000"],
                rotate(&["0.log.20261204-070000.gz", "0.log.20261204-080000"], &[]),
            ),
            (
                "max 3 files with 1Mi: one rotated file kept and compressed",
                LogRotatePolicy {
                    max_size: MI,
                    max_files: 3,
                },
                2 * MI,
                vec!["0.log.20261204-070000.gz", "0.log.20261204-080000"],
                rotate(&["0.log.20261204-070000.gz"], &["0.log.20261204-080000"]),
            ),
            (
                "a rotation within the same second waits",
                policy,
                11 * MI,
                vec!["0.log.20261204-090507.gz"],
                Decision::NameTaken("0.log.20261204-090507".into()),
            ),
            (
                "...unless that file is removed this round anyway",
                LogRotatePolicy {
                    max_size: MI,
                    max_files: 2,
                },
                MI,
                vec!["0.log.20261204-090507"],
                rotate(&["0.log.20261204-090507"], &[]),
            ),
            (
                "size zero rotates even an empty file, as kubelet",
                LogRotatePolicy {
                    max_size: 0,
                    max_files: 5,
                },
                0,
                vec![],
                rotate(&[], &[]),
            ),
        ];
        for (name, policy, size, siblings, expected) in cases {
            let siblings = names(&siblings);
            assert_eq!(
                decide(policy, "0.log", size, &siblings, now()),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn files_never_exceed_max_files_over_many_rotations() {
        // Simulate rounds: each rotation's plan applied to a set of names.
        for max_files in 2..7 {
            let policy = LogRotatePolicy {
                max_size: 1,
                max_files,
            };
            let mut files: Vec<String> = Vec::new();
            for round in 0..20u32 {
                let at = jiff::civil::date(2026, 1, 1).at(0, 0, 0, 0)
                    + jiff::Span::new().seconds(i64::from(round) * 3);
                let Decision::Rotate(plan) = decide(policy, "0.log", 5, &files, at) else {
                    panic!("round {round}: no rotation");
                };
                files.retain(|f| !plan.remove.contains(f));
                for name in &plan.compress {
                    files.retain(|f| f != name);
                    files.push(format!("{name}{COMPRESS_SUFFIX}"));
                }
                files.push(plan.rotate_to.clone());
                // The live file is there again after the reopen.
                assert!(files.len() < max_files, "{max_files}: {files:?}");
                let uncompressed: Vec<&String> = files
                    .iter()
                    .filter(|f| !f.ends_with(COMPRESS_SUFFIX))
                    .collect();
                assert_eq!(
                    uncompressed,
                    vec![&plan.rotate_to],
                    "only the newest is plain"
                );
            }
        }
    }
}
