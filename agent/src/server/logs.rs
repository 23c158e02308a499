//! Reading container logs for `/containerLogs/{namespace}/{pod}/{container}`.
//!
//! This is kubelet's `pkg/kubelet/kuberuntime/logs` (`ReadLogs`) together with the query handling
//! of the kubelet server's `getContainerLogs`: [`LogOptions::from_query`] decodes and validates the
//! query string the way kubelet decodes `v1.PodLogOptions` from `url.Values`, and [`stream_log`]
//! copies a CRI-format log file into a channel of byte chunks (the HTTP body).
//!
//! A CRI log file holds one record per line:
//! `<RFC 3339 timestamp> <stdout|stderr> <tags> <content>`, where the first `:`-separated tag is
//! `P` for a partial record (the runtime split a long line, or the output was flushed without a
//! newline; the record's own newline is not part of the content) or `F` for the record that ends
//! a line. The output is the contents, so `P` records join up with the following record(s) into
//! the line the container wrote. Records that are not in this format are skipped (logged at debug
//! level), as upstream does.
//!
//! Differences from upstream, all deliberate:
//! * `tailLines` and `sinceSeconds`/`sinceTime` work on whole lines (a run of `P` records and the
//!   `F` record ending it; a trailing run of `P` records counts as a line too), where upstream
//!   counts records and may start in the middle of a split line. With `timestamps`, each line gets
//!   the timestamp of its first record, as upstream does.
//! * Following polls the file (every 100 ms) instead of watching it with inotify; `still_running`
//!   is asked at the first end of file and then about once a second while waiting.
//! * On rotation, the renamed file is read to its end before the new file is opened.
//! * Only the CRI format is read (all runtimes of this project write it), not Docker's json-file.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

/// Log options of a `/containerLogs` request (kubelet's `v1.PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `follow`: keep streaming new output until the container stops.
    pub follow: bool,
    /// `previous`: the caller reads the log of the previous instance of the container; the
    /// reading itself is the same.
    pub previous: bool,
    /// `sinceSeconds` or `sinceTime`: only lines written at or after this time.
    pub since: Option<Since>,
    /// `timestamps`: prefix each line with its timestamp and a space.
    pub timestamps: bool,
    /// `tailLines` (or the legacy `tail`): only the last so many lines.
    pub tail_lines: Option<u64>,
    /// `limitBytes`: stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// Where the output starts in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `sinceSeconds`: relative to when streaming starts.
    Seconds(u64),
    /// `sinceTime` (RFC 3339), as a `jiff` timestamp like `k8s-openapi`'s `Time`.
    Time(Timestamp),
}

/// Why a log request failed.
///
/// Upstream answers [`LogError::UndecodableOption`] with 400 ("Unable to decode query."),
/// [`LogError::InvalidOption`] with 422 ("Invalid request.") and I/O errors with 500.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A query parameter that does not parse (an integer or time that is not one).
    #[error("query parameter {name}={value:?} cannot be decoded: {reason}")]
    UndecodableOption {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// Options that parse but fail kubelet's validation (`ValidatePodLogOptions`).
    #[error("invalid log option {name}: {reason}")]
    InvalidOption { name: &'static str, reason: String },
    /// Reading the log file failed.
    #[error("{action} log file {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LogError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

impl LogOptions {
    /// Decodes the query string of a `/containerLogs` request as kubelet does: the first value of
    /// each parameter counts; booleans are false only when absent, `0` or `false` (any case), so
    /// an empty value is true; integers are decimal `i64`; `sinceTime` is RFC 3339 (empty or
    /// `null` means unset, but still counts as given for the exclusivity check); the legacy `tail`
    /// parameter overrides `tailLines`, `tail=all` meaning all lines. Unknown parameters are
    /// ignored. Validation: `tailLines >= 0`, `limitBytes >= 1`, `sinceSeconds >= 1`, and at most
    /// one of `sinceSeconds` and `sinceTime`.
    pub fn from_query(query: &[(String, String)]) -> Result<Self, LogError> {
        let first = |name: &str| {
            query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let flag =
            |name: &str| first(name).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
        let tail_lines = match first("tail") {
            Some("all") => None,
            Some(tail) if !tail.is_empty() => Some(("tail", tail)),
            _ => first("tailLines").map(|v| ("tailLines", v)),
        };
        let tail_lines = tail_lines
            .map(|(name, value)| integer(name, value))
            .transpose()?;
        let limit_bytes = first("limitBytes")
            .map(|v| integer("limitBytes", v))
            .transpose()?;
        let since_seconds = first("sinceSeconds")
            .map(|v| integer("sinceSeconds", v))
            .transpose()?;
        let since_time = first("sinceTime").map(parse_since_time).transpose()?;

        let tail_lines = tail_lines
            .map(|n| {
                u64::try_from(n).map_err(|_| LogError::InvalidOption {
                    name: "tailLines",
                    reason: format!("{n}: must be greater than or equal to 0"),
                })
            })
            .transpose()?;
        let limit_bytes = limit_bytes.map(|n| positive("limitBytes", n)).transpose()?;
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(LogError::InvalidOption {
                    name: "sinceSeconds",
                    reason: "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
                });
            }
            (Some(seconds), None) => Some(Since::Seconds(positive("sinceSeconds", seconds)?)),
            (None, Some(time)) => time.map(Since::Time),
            (None, None) => None,
        };
        Ok(Self {
            follow: flag("follow"),
            previous: flag("previous"),
            since,
            timestamps: flag("timestamps"),
            tail_lines,
            limit_bytes,
        })
    }
}

fn integer(name: &'static str, value: &str) -> Result<i64, LogError> {
    value
        .parse::<i64>()
        .map_err(|e| LogError::UndecodableOption {
            name,
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

fn positive(name: &'static str, n: i64) -> Result<u64, LogError> {
    u64::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| LogError::InvalidOption {
            name,
            reason: format!("{n}: must be greater than 0"),
        })
}

/// `metav1.Time`'s query-parameter decoding: empty or `null` is the zero time (no bound).
fn parse_since_time(value: &str) -> Result<Option<Timestamp>, LogError> {
    if value.is_empty() || value == "null" {
        return Ok(None);
    }
    value
        .parse::<Timestamp>()
        .map(Some)
        .map_err(|e| LogError::UndecodableOption {
            name: "sinceTime",
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// One parsed CRI log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record<'a> {
    timestamp: Timestamp,
    /// The offset the runtime wrote the timestamp with (kept for `timestamps`).
    offset: Offset,
    stream: Stream,
    partial: bool,
    /// The content: without the newline for a partial record, with it for a full one (unless the
    /// record is the incomplete last line of the file).
    content: &'a [u8],
}

/// Parses one CRI log record (`line` including its newline), as upstream's `parseCRILog`.
fn parse_record(line: &[u8]) -> Result<Record<'_>, &'static str> {
    let (raw_timestamp, rest) = split_space(line).ok_or("timestamp is not found")?;
    let (timestamp, offset) =
        parse_timestamp(raw_timestamp).ok_or("unexpected timestamp format")?;
    let (stream, rest) = split_space(rest).ok_or("stream type is not found")?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err("unexpected stream type"),
    };
    let (tags, mut content) = split_space(rest).ok_or("log tag is not found")?;
    // Later tags are for forward compatibility; only the first one means anything.
    let partial = tags.split(|b| *b == b':').next() == Some(b"P");
    if partial && let Some(stripped) = content.strip_suffix(b"\n") {
        content = stripped;
    }
    Ok(Record {
        timestamp,
        offset,
        stream,
        partial,
        content,
    })
}

fn split_space(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == b' ')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// An RFC 3339 timestamp and the offset it is written with (`Z` or `±hh:mm`).
fn parse_timestamp(raw: &[u8]) -> Option<(Timestamp, Offset)> {
    let text = std::str::from_utf8(raw).ok()?;
    let timestamp = text.parse::<Timestamp>().ok()?;
    if text.ends_with(['Z', 'z']) {
        return Some((timestamp, Offset::UTC));
    }
    let suffix = text.get(text.len().checked_sub(6)?..)?.as_bytes();
    let [sign, h1, h2, b':', m1, m2] = *suffix else {
        return None;
    };
    let sign = match sign {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = [h1, h2, m1, m2];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let [h1, h2, m1, m2] = digits.map(|d| i32::from(d - b'0'));
    let seconds = sign * ((h1 * 10 + h2) * 3600 + (m1 * 10 + m2) * 60);
    Some((timestamp, Offset::from_seconds(seconds).ok()?))
}

/// Upstream's output format, `2006-01-02T15:04:05.000000000Z07:00`: nanoseconds always, and the
/// offset the runtime wrote.
fn write_timestamp(out: &mut BytesMut, timestamp: Timestamp, offset: Offset) {
    use std::fmt::Write as _;
    let dt = offset.to_datetime(timestamp);
    // Writing into a BytesMut does not fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond()
    );
    let seconds = offset.seconds();
    if seconds == 0 {
        out.extend_from_slice(b"Z");
    } else {
        let sign = if seconds < 0 { '-' } else { '+' };
        let abs = seconds.unsigned_abs();
        let _ = write!(out, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60);
    }
}

/// How often following looks at the file, asks whether the container still runs, and how much
/// `tailLines` reads at a time from the end.
#[derive(Debug, Clone, Copy)]
struct Timing {
    poll: Duration,
    running_check: Duration,
    tail_block: usize,
}

/// Poll the file every 100 ms, ask `still_running` once a second, tail in 64 KiB blocks.
const DEFAULT_TIMING: Timing = Timing {
    poll: Duration::from_millis(100),
    running_check: Duration::from_secs(1),
    tail_block: 64 * 1024,
};

/// Output is sent in chunks of about this size (smaller at the end of the file).
const CHUNK: usize = 32 * 1024;

/// How much of a record [`find_tail`] looks at to classify it (timestamp, stream and tags).
const HEADER_MAX: usize = 256;

/// The `still_running` of [`stream_log`] for a CRI container: whether the runtime reports it
/// running (an error counts as not running).
pub async fn container_running(cri: mk_cri::CriClient, id: String) -> bool {
    cri.container_status(mk_cri::api::ContainerStatusRequest {
        container_id: id,
        verbose: false,
    })
    .await
    .ok()
    .and_then(|r| r.status)
    .is_some_and(|s| s.state == mk_cri::api::ContainerState::ContainerRunning as i32)
}

/// Streams the CRI log file at `path` into `out` according to `opts`.
///
/// Without `follow`, the file is read to its end (with `tailLines`: to the end it had when the
/// request came) and the function returns. With `follow`, it keeps polling for new records,
/// follows rotation (the file renamed and a new one created at `path`: the old one is read to its
/// end first, then the new one from its start; a file that shrank is read again from its start)
/// and returns once `still_running` has reported false and what is left has been read.
/// `still_running` is called only when following, at the first end of file and then about once a
/// second while waiting. Returns `Ok` as well when `out` is closed or `limitBytes` is reached.
pub async fn stream_log<F, Fut>(
    path: &Path,
    opts: &LogOptions,
    out: Sender<Bytes>,
    still_running: F,
) -> Result<(), LogError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    stream_log_with(path, opts, out, still_running, DEFAULT_TIMING).await
}

/// The identity of a file: a rotated log is a different file at the same path.
type FileId = (u64, u64);

/// An open log file positioned where reading starts.
struct Opened {
    file: std::fs::File,
    id: FileId,
    start: u64,
    /// With `tailLines`: the end of the last complete record when the tail was found.
    end: u64,
}

fn open_blocking(path: &Path, tail: Option<u64>, block: usize) -> io::Result<Opened> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let (start, end) = match tail {
        Some(n) => find_tail(&mut file, n, block)?,
        None => (0, meta.len()),
    };
    file.seek(SeekFrom::Start(start))?;
    Ok(Opened {
        file,
        id: (meta.dev(), meta.ino()),
        start,
        end,
    })
}

async fn open(path: &Path, tail: Option<u64>, block: usize) -> io::Result<Opened> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || open_blocking(&owned, tail, block))
        .await
        .map_err(io::Error::other)?
}

/// Finds where the last `n` lines of a CRI log start, reading backwards from the end in blocks of
/// `block` bytes. Returns that offset and the end of the last complete record (an incomplete last
/// record, without its newline yet, is not counted). A line is a run of `P` records and the `F`
/// record ending it; `P` records after the last `F` count as one line; records that do not parse
/// do not count.
fn find_tail<R: Read + Seek>(file: &mut R, n: u64, block: usize) -> io::Result<(u64, u64)> {
    let size = file.seek(SeekFrom::End(0))?;
    let block = block.max(1);
    let mut chunk = vec![0; block];
    // The current block followed by up to HEADER_MAX bytes of the block after it, so that a record
    // starting near the end of the block can be classified.
    let mut joined = Vec::with_capacity(block + HEADER_MAX);
    let mut lookahead: Vec<u8> = Vec::new();
    // End of the last complete record, once its newline has been seen.
    let mut end: Option<u64> = None;
    // End of the record before which the scan is (the record starting after the newline found).
    let mut record_end = 0;
    let mut lines = 0;
    let mut seen_full = false;

    // Returns whether the record [_, record_end) with this header is where the tail starts.
    let mut classify = |header: &[u8]| {
        let header = match header.iter().position(|b| *b == b'\n') {
            Some(at) => &header[..=at],
            None => header,
        };
        let ends_line = match parse_record(header) {
            Ok(record) if !record.partial => {
                seen_full = true;
                true
            }
            // The partial records after the last full one: the line being written.
            Ok(_) => !seen_full && lines == 0,
            Err(_) => false,
        };
        if !ends_line {
            return false;
        }
        if lines == n {
            return true;
        }
        lines += 1;
        false
    };

    let mut right = size;
    while right > 0 {
        let left = right.saturating_sub(block as u64);
        let len = usize::try_from(right - left).map_err(io::Error::other)?;
        file.seek(SeekFrom::Start(left))?;
        file.read_exact(&mut chunk[..len])?;
        joined.clear();
        joined.extend_from_slice(&chunk[..len]);
        joined.extend_from_slice(&lookahead);
        for at in (0..len).rev().filter(|at| joined[*at] == b'\n') {
            let next = left + at as u64 + 1;
            match end {
                // The last newline: what follows it is not a complete record yet.
                None => end = Some(next),
                Some(end) => {
                    let header = &joined[at + 1..joined.len().min(at + 1 + HEADER_MAX)];
                    if classify(header) {
                        return Ok((record_end, end));
                    }
                }
            }
            record_end = next;
        }
        joined.truncate(HEADER_MAX);
        std::mem::swap(&mut lookahead, &mut joined);
        right = left;
    }
    // The first record of the file.
    match end {
        Some(end) if classify(&lookahead) => Ok((record_end, end)),
        Some(end) => Ok((0, end)),
        None => Ok((0, 0)),
    }
}

/// Turns records into output: since-filtering, timestamps and the byte limit.
struct Writer {
    since: Option<Timestamp>,
    timestamps: bool,
    remaining: Option<u64>,
    /// The next record starts a line.
    at_line_start: bool,
    /// The current line is before `since`.
    skip_line: bool,
    buf: BytesMut,
}

/// `limitBytes` is reached.
struct LimitReached;

impl Writer {
    fn new(opts: &LogOptions) -> Self {
        let since = opts.since.map(|since| match since {
            Since::Time(time) => time,
            Since::Seconds(seconds) => i64::try_from(seconds)
                .ok()
                .and_then(|s| {
                    Timestamp::now()
                        .checked_sub(SignedDuration::from_secs(s))
                        .ok()
                })
                .unwrap_or(Timestamp::MIN),
        });
        Self {
            since,
            timestamps: opts.timestamps,
            remaining: opts.limit_bytes,
            at_line_start: true,
            skip_line: false,
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    fn record(&mut self, path: &Path, line: &[u8]) -> Result<(), LimitReached> {
        let record = match parse_record(line) {
            Ok(record) => record,
            Err(reason) => {
                tracing::debug!(
                    path = %path.display(),
                    line = %String::from_utf8_lossy(line).trim_end(),
                    reason,
                    "skipping a log line that is not in CRI format"
                );
                return Ok(());
            }
        };
        let starts_line = self.at_line_start;
        self.at_line_start = !record.partial;
        if starts_line {
            self.skip_line = self.since.is_some_and(|since| record.timestamp < since);
        }
        if self.skip_line {
            return Ok(());
        }
        if starts_line && self.timestamps {
            let mut prefix = BytesMut::with_capacity(40);
            write_timestamp(&mut prefix, record.timestamp, record.offset);
            prefix.extend_from_slice(b" ");
            self.push(&prefix)?;
        }
        self.push(record.content)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), LimitReached> {
        let Some(remaining) = self.remaining.as_mut() else {
            self.buf.extend_from_slice(bytes);
            return Ok(());
        };
        let take = usize::try_from(*remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
        self.buf.extend_from_slice(&bytes[..take]);
        *remaining -= take as u64;
        if *remaining == 0 {
            return Err(LimitReached);
        }
        Ok(())
    }

    /// Sends what is buffered; false when the receiver is gone.
    async fn flush(&mut self, out: &Sender<Bytes>) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        out.send(self.buf.split().freeze()).await.is_ok()
    }
}

/// What reading up to the end of the file came to.
enum ReadOutcome {
    /// The end of the file (or of the tail); the buffer may hold an incomplete record.
    Eof,
    /// `limitBytes` reached or the receiver gone: the stream is over.
    Done,
}

async fn stream_log_with<F, Fut>(
    path: &Path,
    opts: &LogOptions,
    out: Sender<Bytes>,
    mut still_running: F,
    timing: Timing,
) -> Result<(), LogError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    // Like upstream: symlinks resolved once, rotation is watched for at the file they lead to.
    let path = tokio::fs::canonicalize(path)
        .await
        .map_err(LogError::io("resolving", path))?;
    let path = path.as_path();
    let opened = open(path, opts.tail_lines, timing.tail_block)
        .await
        .map_err(LogError::io("opening", path))?;
    // Without follow, a tail is the last lines of the file as it was.
    let stop_at = (!opts.follow && opts.tail_lines.is_some()).then_some(opened.end);
    let mut file_id = opened.id;
    let mut pos = opened.start;
    let mut reader = BufReader::with_capacity(CHUNK, tokio::fs::File::from_std(opened.file));
    let mut writer = Writer::new(opts);
    let mut line = Vec::new();
    let mut last_check: Option<Instant> = None;
    let mut finishing = false;
    let mut rotated = false;

    loop {
        let read = read_records(
            &mut reader,
            &mut line,
            &mut pos,
            stop_at,
            &mut writer,
            &out,
            path,
        )
        .await?;
        if matches!(read, ReadOutcome::Done) {
            writer.flush(&out).await;
            return Ok(());
        }
        if !opts.follow || finishing {
            // Upstream writes an incomplete last line too once nothing more will come.
            if !line.is_empty() {
                let _ = writer.record(path, &line);
            }
            writer.flush(&out).await;
            return Ok(());
        }
        if !writer.flush(&out).await {
            return Ok(());
        }

        if rotated {
            // The old file has been read to its end: go on with the new one.
            match open(path, None, timing.tail_block).await {
                Ok(opened) => {
                    if !line.is_empty() {
                        let _ = writer.record(path, &line);
                        line.clear();
                    }
                    tracing::debug!(path = %path.display(), "following the rotated log file");
                    file_id = opened.id;
                    pos = 0;
                    reader =
                        BufReader::with_capacity(CHUNK, tokio::fs::File::from_std(opened.file));
                    rotated = false;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => rotated = false,
                Err(e) => return Err(LogError::io("reopening", path)(e)),
            }
        }
        match tokio::fs::metadata(path).await {
            Ok(meta) if (meta.dev(), meta.ino()) != file_id => {
                // Read the renamed file to its end once more before switching.
                rotated = true;
                continue;
            }
            Ok(meta) if meta.len() < pos => {
                tracing::debug!(path = %path.display(), "log file truncated, reading it from the start");
                let opened = open(path, None, timing.tail_block)
                    .await
                    .map_err(LogError::io("reopening", path))?;
                line.clear();
                file_id = opened.id;
                pos = 0;
                reader = BufReader::with_capacity(CHUNK, tokio::fs::File::from_std(opened.file));
                continue;
            }
            Ok(_) => {}
            // Renamed away and not created again yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot stat the log file");
            }
        }

        if last_check.is_none_or(|at| at.elapsed() >= timing.running_check) {
            last_check = Some(Instant::now());
            let running = tokio::select! {
                running = still_running() => running,
                () = out.closed() => return Ok(()),
            };
            if !running {
                // Read what is left, then stop.
                finishing = true;
                continue;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(timing.poll) => {}
            () = out.closed() => return Ok(()),
        }
    }
}

/// Reads and writes complete records until the end of the file (or `stop_at`). An incomplete
/// last record stays in `line`, to be completed by the next call.
async fn read_records(
    reader: &mut BufReader<tokio::fs::File>,
    line: &mut Vec<u8>,
    pos: &mut u64,
    stop_at: Option<u64>,
    writer: &mut Writer,
    out: &Sender<Bytes>,
    path: &Path,
) -> Result<ReadOutcome, LogError> {
    loop {
        if stop_at.is_some_and(|end| *pos >= end) {
            return Ok(ReadOutcome::Eof);
        }
        let n = reader
            .read_until(b'\n', line)
            .await
            .map_err(LogError::io("reading", path))?;
        *pos += n as u64;
        if line.last() != Some(&b'\n') {
            return Ok(ReadOutcome::Eof);
        }
        let limited = writer.record(path, line).is_err();
        line.clear();
        if limited {
            return Ok(ReadOutcome::Done);
        }
        if writer.buf.len() >= CHUNK && !writer.flush(out).await {
            return Ok(ReadOutcome::Done);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::sync::mpsc;

    use super::*;

    const FAST: Timing = Timing {
        poll: Duration::from_millis(5),
        running_check: Duration::from_millis(20),
        tail_block: 7,
    };
    const WAIT: Duration = Duration::from_secs(5);

    fn query(text: &str) -> Vec<(String, String)> {
        text.split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("test timestamp")
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Fails {
        Decode(&'static str),
        Invalid(&'static str),
    }

    #[test]
    fn options_from_query() {
        let defaults = LogOptions::default();
        let cases: Vec<(&str, Result<LogOptions, Fails>)> = vec![
            ("", Ok(defaults.clone())),
            (
                "container=c&insecureSkipTLSVerifyBackend=true&stream=All",
                Ok(defaults.clone()),
            ),
            (
                "follow=true",
                Ok(LogOptions {
                    follow: true,
                    ..defaults.clone()
                }),
            ),
            (
                "follow=1",
                Ok(LogOptions {
                    follow: true,
                    ..defaults.clone()
                }),
            ),
            (
                "follow=TRUE",
                Ok(LogOptions {
                    follow: true,
                    ..defaults.clone()
                }),
            ),
            // Anything but 0/false is true, the empty value included.
            (
                "follow=",
                Ok(LogOptions {
                    follow: true,
                    ..defaults.clone()
                }),
            ),
            (
                "follow",
                Ok(LogOptions {
                    follow: true,
                    ..defaults.clone()
                }),
            ),
            (
                "follow=yes",
                Ok(LogOptions {
                    follow: true,
                    ..defaults.clone()
                }),
            ),
            ("follow=false", Ok(defaults.clone())),
            ("follow=False", Ok(defaults.clone())),
            ("follow=0", Ok(defaults.clone())),
            // The first value counts.
            ("follow=0&follow=1", Ok(defaults.clone())),
            (
                "previous=true&timestamps=1",
                Ok(LogOptions {
                    previous: true,
                    timestamps: true,
                    ..defaults.clone()
                }),
            ),
            (
                "tailLines=10",
                Ok(LogOptions {
                    tail_lines: Some(10),
                    ..defaults.clone()
                }),
            ),
            (
                "tailLines=0",
                Ok(LogOptions {
                    tail_lines: Some(0),
                    ..defaults.clone()
                }),
            ),
            (
                "tailLines=+3",
                Ok(LogOptions {
                    tail_lines: Some(3),
                    ..defaults.clone()
                }),
            ),
            ("tailLines=-1", Err(Fails::Invalid("tailLines"))),
            ("tailLines=ten", Err(Fails::Decode("tailLines"))),
            ("tailLines=", Err(Fails::Decode("tailLines"))),
            (
                "tailLines=99999999999999999999",
                Err(Fails::Decode("tailLines")),
            ),
            // The legacy `tail` overrides `tailLines`; `all` means no limit.
            (
                "tailLines=10&tail=5",
                Ok(LogOptions {
                    tail_lines: Some(5),
                    ..defaults.clone()
                }),
            ),
            ("tailLines=10&tail=all", Ok(defaults.clone())),
            (
                "tailLines=10&tail=",
                Ok(LogOptions {
                    tail_lines: Some(10),
                    ..defaults.clone()
                }),
            ),
            ("tail=-2", Err(Fails::Invalid("tailLines"))),
            ("tail=x", Err(Fails::Decode("tail"))),
            (
                "limitBytes=1",
                Ok(LogOptions {
                    limit_bytes: Some(1),
                    ..defaults.clone()
                }),
            ),
            ("limitBytes=0", Err(Fails::Invalid("limitBytes"))),
            ("limitBytes=-4", Err(Fails::Invalid("limitBytes"))),
            ("limitBytes=1.5", Err(Fails::Decode("limitBytes"))),
            (
                "sinceSeconds=60",
                Ok(LogOptions {
                    since: Some(Since::Seconds(60)),
                    ..defaults.clone()
                }),
            ),
            ("sinceSeconds=0", Err(Fails::Invalid("sinceSeconds"))),
            ("sinceSeconds=-1", Err(Fails::Invalid("sinceSeconds"))),
            ("sinceSeconds=1m", Err(Fails::Decode("sinceSeconds"))),
            (
                "sinceTime=2024-01-01T00:00:00Z",
                Ok(LogOptions {
                    since: Some(Since::Time(ts("2024-01-01T00:00:00Z"))),
                    ..defaults.clone()
                }),
            ),
            (
                "sinceTime=2024-01-01T00:00:00.25-02:00",
                Ok(LogOptions {
                    since: Some(Since::Time(ts("2024-01-01T02:00:00.25Z"))),
                    ..defaults.clone()
                }),
            ),
            ("sinceTime=", Ok(defaults.clone())),
            ("sinceTime=null", Ok(defaults.clone())),
            ("sinceTime=yesterday", Err(Fails::Decode("sinceTime"))),
            (
                "sinceTime=2024-01-01T00:00:00",
                Err(Fails::Decode("sinceTime")),
            ),
            (
                "sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z",
                Err(Fails::Invalid("sinceSeconds")),
            ),
            // An empty sinceTime still counts as given.
            (
                "sinceSeconds=5&sinceTime=",
                Err(Fails::Invalid("sinceSeconds")),
            ),
            (
                "follow=1&previous=0&timestamps=true&tailLines=3&limitBytes=100&sinceSeconds=7",
                Ok(LogOptions {
                    follow: true,
                    previous: false,
                    since: Some(Since::Seconds(7)),
                    timestamps: true,
                    tail_lines: Some(3),
                    limit_bytes: Some(100),
                }),
            ),
        ];
        for (text, want) in cases {
            let got = LogOptions::from_query(&query(text)).map_err(|e| match e {
                LogError::UndecodableOption { name, .. } => Fails::Decode(name),
                LogError::InvalidOption { name, .. } => Fails::Invalid(name),
                LogError::Io { .. } => panic!("{text}: I/O error {e}"),
            });
            assert_eq!(got, want, "query {text:?}");
        }
    }

    #[test]
    fn option_errors_name_the_parameter() {
        let err = LogOptions::from_query(&query("limitBytes=abc")).expect_err("undecodable");
        assert_eq!(
            err.to_string(),
            "query parameter limitBytes=\"abc\" cannot be decoded: invalid digit found in string"
        );
        let err = LogOptions::from_query(&query("sinceSeconds=0")).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid log option sinceSeconds: 0: must be greater than 0"
        );
    }

    #[test]
    fn records_parse() {
        struct Want {
            stream: Stream,
            partial: bool,
            content: &'static str,
            offset_seconds: i32,
        }
        let full = |stream, content| Want {
            stream,
            partial: false,
            content,
            offset_seconds: 0,
        };
        let partial = |stream, content| Want {
            stream,
            partial: true,
            content,
            offset_seconds: 0,
        };
        let cases: Vec<(&str, Want)> = vec![
            (
                "2016-10-06T00:17:09.669794202Z stdout P log content 1\n",
                partial(Stream::Stdout, "log content 1"),
            ),
            (
                "2016-10-06T00:17:09.669794203Z stderr F log content 2\n",
                full(Stream::Stderr, "log content 2\n"),
            ),
            (
                "2016-10-06T00:17:09Z stdout F \n",
                full(Stream::Stdout, "\n"),
            ),
            (
                "2016-10-06T00:17:09Z stdout P \n",
                partial(Stream::Stdout, ""),
            ),
            (
                "2016-10-06T00:17:09Z stdout F  two  spaces \n",
                full(Stream::Stdout, " two  spaces \n"),
            ),
            (
                "2016-10-06T00:17:09Z stdout F:x:y future tags\n",
                full(Stream::Stdout, "future tags\n"),
            ),
            (
                "2016-10-06T00:17:09Z stderr P:x split\n",
                partial(Stream::Stderr, "split"),
            ),
            // An unknown first tag is not partial.
            (
                "2016-10-06T00:17:09Z stdout X other\n",
                full(Stream::Stdout, "other\n"),
            ),
            // The incomplete last line of a file.
            (
                "2016-10-06T00:17:09Z stdout F no newline yet",
                full(Stream::Stdout, "no newline yet"),
            ),
            (
                "2016-10-06T05:47:09.5+05:30 stdout F local\n",
                Want {
                    offset_seconds: 19800,
                    ..full(Stream::Stdout, "local\n")
                },
            ),
            (
                "2016-10-05T17:17:09-07:00 stderr F west\n",
                Want {
                    offset_seconds: -25200,
                    ..full(Stream::Stderr, "west\n")
                },
            ),
        ];
        for (line, want) in cases {
            let record = parse_record(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(record.stream, want.stream, "{line:?}");
            assert_eq!(record.partial, want.partial, "{line:?}");
            assert_eq!(record.content, want.content.as_bytes(), "{line:?}");
            assert_eq!(record.offset.seconds(), want.offset_seconds, "{line:?}");
        }
        assert_eq!(
            parse_record(b"2016-10-06T05:47:09.5+05:30 stdout F x\n").map(|r| r.timestamp),
            Ok(ts("2016-10-06T00:17:09.5Z"))
        );
    }

    #[test]
    fn malformed_records_are_rejected() {
        let cases = [
            ("", "timestamp is not found"),
            ("\n", "timestamp is not found"),
            ("just some text\n", "unexpected timestamp format"),
            (
                "2016-10-06 stdout F date only\n",
                "unexpected timestamp format",
            ),
            (
                "2016-10-06T00:17:09 stdout F no offset\n",
                "unexpected timestamp format",
            ),
            (
                "2016-10-06T00:17:09Z[UTC] stdout F annotation\n",
                "unexpected timestamp format",
            ),
            (
                "{\"log\":\"docker-json\\n\",\"stream\":\"stdout\"}\n",
                "timestamp is not found",
            ),
            ("2016-10-06T00:17:09Z\n", "timestamp is not found"),
            ("2016-10-06T00:17:09Z \n", "stream type is not found"),
            ("2016-10-06T00:17:09Z stdin F x\n", "unexpected stream type"),
            ("2016-10-06T00:17:09Z stdout\n", "stream type is not found"),
            ("2016-10-06T00:17:09Z stdout F\n", "log tag is not found"),
        ];
        for (line, want) in cases {
            assert_eq!(parse_record(line.as_bytes()), Err(want), "{line:?}");
        }
    }

    #[test]
    fn timestamps_are_written_with_nanoseconds_and_the_original_offset() {
        let cases = [
            (
                "2016-10-06T00:17:09.669794202Z",
                "2016-10-06T00:17:09.669794202Z",
            ),
            ("2016-10-06T00:17:09Z", "2016-10-06T00:17:09.000000000Z"),
            (
                "2016-10-06T00:17:09.5+05:30",
                "2016-10-06T00:17:09.500000000+05:30",
            ),
            (
                "2016-10-06T00:17:09.000001-07:00",
                "2016-10-06T00:17:09.000001000-07:00",
            ),
            (
                "2016-10-06T00:17:09+00:00",
                "2016-10-06T00:17:09.000000000Z",
            ),
        ];
        for (raw, want) in cases {
            let (timestamp, offset) = parse_timestamp(raw.as_bytes()).expect("valid timestamp");
            let mut out = BytesMut::new();
            write_timestamp(&mut out, timestamp, offset);
            assert_eq!(&out[..], want.as_bytes(), "{raw}");
        }
    }

    /// Five lines: `one`, `two` (split in two records), `three` (written with an offset), an
    /// empty line and `four` (two partial records still waiting for their end), with a line that is
    /// not CRI format in between.
    const LOG: &str = "\
2024-01-01T00:00:00.000000001Z stdout F one
2024-01-01T00:00:01Z stderr P tw
2024-01-01T00:00:02Z stderr F o
not a cri line
2024-01-01T02:00:03.5+02:00 stdout F three
2024-01-01T00:00:04Z stdout F 
2024-01-01T00:00:05Z stdout P fou
2024-01-01T00:00:06Z stdout P r
";
    const LINES: [&str; 5] = ["one\n", "two\n", "three\n", "\n", "four"];

    fn log_file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, content).expect("write log");
        (dir, path)
    }

    fn append(path: &Path, content: &str) {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open log for appending");
        file.write_all(content.as_bytes()).expect("append to log");
    }

    /// Reads `path` without following, checking that `still_running` is never asked.
    async fn read_all(path: &Path, opts: &LogOptions) -> Result<String, LogError> {
        let (tx, mut rx) = mpsc::channel(4);
        let asked = AtomicUsize::new(0);
        let running = || {
            asked.fetch_add(1, Ordering::SeqCst);
            async { true }
        };
        let (result, out) = tokio::join!(stream_log_with(path, opts, tx, running, FAST), async {
            let mut out = Vec::new();
            while let Some(chunk) = rx.recv().await {
                out.extend_from_slice(&chunk);
            }
            out
        });
        assert_eq!(
            asked.load(Ordering::SeqCst),
            0,
            "still_running asked without follow"
        );
        result.map(|()| String::from_utf8(out).expect("utf-8 output"))
    }

    fn opts(text: &str) -> LogOptions {
        LogOptions::from_query(&query(text)).expect("valid options")
    }

    #[tokio::test]
    async fn reads_whole_lines_skipping_malformed_ones() {
        let (_dir, path) = log_file(LOG);
        assert_eq!(
            read_all(&path, &opts("")).await.expect("read"),
            LINES.concat()
        );
    }

    #[tokio::test]
    async fn stream_is_send_for_the_server() {
        let (_dir, path) = log_file(LOG);
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(async move {
            stream_log(&path, &LogOptions::default(), tx, || async { false }).await
        });
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk);
        }
        task.await.expect("task").expect("stream");
        assert_eq!(out, LINES.concat().as_bytes());
    }

    #[tokio::test]
    async fn tail_counts_whole_lines() {
        let (_dir, path) = log_file(LOG);
        for n in 0..=7 {
            let want = LINES[LINES.len().saturating_sub(n)..].concat();
            let got = read_all(&path, &opts(&format!("tailLines={n}")))
                .await
                .expect("read");
            assert_eq!(got, want, "tailLines={n}");
        }
    }

    #[test]
    fn tail_start_is_the_same_for_any_block_size() {
        // Offsets of the line starts in LOG: "one", "two" (its first record), "three" (after the
        // malformed line, which belongs to the line before), "", "four".
        let starts: Vec<u64> = [0, 1, 2, 4, 5, 6]
            .iter()
            .map(|&i| {
                LOG.split_inclusive('\n')
                    .take(i)
                    .map(str::len)
                    .sum::<usize>() as u64
            })
            .collect();
        let size = LOG.len() as u64;
        let want = |n: u64| match n {
            0 => size,
            1 => starts[5],
            2 => starts[4],
            3 => starts[3] - "not a cri line\n".len() as u64,
            4 => starts[1],
            _ => 0,
        };
        for block in [1, 2, 3, 5, 8, 13, 40, 41, 64, 100, 4096] {
            for n in 0..=6 {
                let mut cursor = io::Cursor::new(LOG.as_bytes());
                let got = find_tail(&mut cursor, n, block).expect("find tail");
                assert_eq!(got, (want(n), size), "tail {n} with blocks of {block}");
            }
        }
    }

    #[test]
    fn tail_ignores_an_incomplete_last_record() {
        let log = "2024-01-01T00:00:00Z stdout F one\n2024-01-01T00:00:01Z stdout F tw";
        let complete = "2024-01-01T00:00:00Z stdout F one\n".len() as u64;
        for block in [1, 4, 4096] {
            let mut cursor = io::Cursor::new(log.as_bytes());
            assert_eq!(
                find_tail(&mut cursor, 1, block).expect("tail"),
                (0, complete)
            );
            let mut cursor = io::Cursor::new(log.as_bytes());
            assert_eq!(
                find_tail(&mut cursor, 0, block).expect("tail"),
                (complete, complete)
            );
        }
        let mut cursor = io::Cursor::new(&b""[..]);
        assert_eq!(find_tail(&mut cursor, 3, 16).expect("tail"), (0, 0));
        let mut cursor = io::Cursor::new(&b"no newline at all"[..]);
        assert_eq!(find_tail(&mut cursor, 3, 4).expect("tail"), (0, 0));
    }

    #[tokio::test]
    async fn incomplete_last_record_is_read_without_tail_only() {
        let (_dir, path) =
            log_file("2024-01-01T00:00:00Z stdout F one\n2024-01-01T00:00:01Z stdout F tw");
        assert_eq!(read_all(&path, &opts("")).await.expect("read"), "one\ntw");
        assert_eq!(
            read_all(&path, &opts("tailLines=1")).await.expect("read"),
            "one\n"
        );
        assert_eq!(
            read_all(&path, &opts("tailLines=0")).await.expect("read"),
            ""
        );
    }

    #[tokio::test]
    async fn tail_reads_a_large_file_from_the_end() {
        let mut log = String::new();
        for i in 0..20_000 {
            log.push_str(&format!("2024-01-01T00:00:00.{i:09}Z stdout F line {i}\n"));
        }
        let (_dir, path) = log_file(&log);
        let got = read_all(&path, &opts("tailLines=3")).await.expect("read");
        assert_eq!(got, "line 19997\nline 19998\nline 19999\n");
        let got = read_all(&path, &opts("")).await.expect("read");
        assert_eq!(got.lines().count(), 20_000);
    }

    #[tokio::test]
    async fn timestamps_prefix_each_line_once() {
        let (_dir, path) = log_file(LOG);
        let want = "\
2024-01-01T00:00:00.000000001Z one
2024-01-01T00:00:01.000000000Z two
2024-01-01T02:00:03.500000000+02:00 three
2024-01-01T00:00:04.000000000Z 
2024-01-01T00:00:05.000000000Z four";
        assert_eq!(
            read_all(&path, &opts("timestamps=true"))
                .await
                .expect("read"),
            want
        );
        let got = read_all(&path, &opts("timestamps=true&tailLines=2"))
            .await
            .expect("read");
        assert_eq!(
            got,
            "2024-01-01T00:00:04.000000000Z \n2024-01-01T00:00:05.000000000Z four"
        );
    }

    #[tokio::test]
    async fn since_time_drops_whole_earlier_lines() {
        let (_dir, path) = log_file(LOG);
        let cases = [
            ("2023-12-31T00:00:00Z", LINES.concat()),
            // Equal is not before.
            ("2024-01-01T00:00:01Z", LINES[1..].concat()),
            // `two` started before, though its second record is after.
            ("2024-01-01T00:00:01.5Z", LINES[2..].concat()),
            ("2024-01-01T02:00:03.5+02:00", LINES[2..].concat()),
            ("2024-01-01T00:00:05.5Z", String::new()),
        ];
        for (since, want) in cases {
            let got = read_all(&path, &opts(&format!("sinceTime={since}")))
                .await
                .expect("read");
            assert_eq!(got, want, "sinceTime={since}");
        }
        // tailLines picks the lines first, sinceTime filters them.
        let got = read_all(&path, &opts("tailLines=4&sinceTime=2024-01-01T00:00:03Z"))
            .await
            .expect("read");
        assert_eq!(got, LINES[2..].concat());
    }

    #[tokio::test]
    async fn since_seconds_is_relative_to_now() {
        let now = Timestamp::now();
        let (_dir, path) = log_file(&format!(
            "2000-01-01T00:00:00Z stdout F old\n{now} stdout F new\n"
        ));
        assert_eq!(
            read_all(&path, &opts("sinceSeconds=3600"))
                .await
                .expect("read"),
            "new\n"
        );
        let all = read_all(&path, &opts(&format!("sinceSeconds={}", i64::MAX)))
            .await
            .expect("read");
        assert_eq!(all, "old\nnew\n");
    }

    #[tokio::test]
    async fn limit_bytes_cuts_the_output() {
        let (_dir, path) = log_file(LOG);
        let cases = [
            ("limitBytes=1", "o"),
            ("limitBytes=4", "one\n"),
            ("limitBytes=6", "one\ntw"),
            ("limitBytes=1000", "one\ntwo\nthree\n\nfour"),
            ("limitBytes=10&timestamps=1", "2024-01-01"),
            ("limitBytes=2&tailLines=1", "fo"),
        ];
        for (text, want) in cases {
            assert_eq!(
                read_all(&path, &opts(text)).await.expect("read"),
                want,
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = read_all(&dir.path().join("missing.log"), &opts(""))
            .await
            .expect_err("missing file");
        assert!(
            matches!(&err, LogError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
    }

    /// A follow stream running in a task, with the container's state under the test's control.
    struct Following {
        rx: mpsc::Receiver<Bytes>,
        running: Arc<AtomicBool>,
        asked: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<Result<(), LogError>>,
        received: Vec<u8>,
    }

    impl Following {
        fn start(path: &Path, query_text: &str, timing: Timing) -> Self {
            let (tx, rx) = mpsc::channel(4);
            let running = Arc::new(AtomicBool::new(true));
            let asked = Arc::new(AtomicUsize::new(0));
            let opts = opts(&format!("follow=true&{query_text}"));
            let path = path.to_owned();
            let (flag, count) = (running.clone(), asked.clone());
            let task = tokio::spawn(async move {
                let still_running = move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    let running = flag.load(Ordering::SeqCst);
                    async move { running }
                };
                stream_log_with(&path, &opts, tx, still_running, timing).await
            });
            Self {
                rx,
                running,
                asked,
                task,
                received: Vec::new(),
            }
        }

        /// Waits until the output so far is `want`.
        async fn expect(&mut self, want: &str) {
            let deadline = tokio::time::Instant::now() + WAIT;
            while self.received.len() < want.len() {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(chunk)) => self.received.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            assert_eq!(String::from_utf8_lossy(&self.received), want);
        }

        /// Waits for the stream to end, returning what it sent after the last `expect`.
        async fn finish(mut self) -> (Result<(), LogError>, String) {
            let mut rest = Vec::new();
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv()).await {
                    Ok(Some(chunk)) => rest.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(_) => panic!("the stream did not end"),
                }
            }
            let result = tokio::time::timeout(WAIT, self.task)
                .await
                .expect("the task did not end")
                .expect("task");
            (result, String::from_utf8(rest).expect("utf-8 output"))
        }
    }

    #[tokio::test]
    async fn follow_streams_appended_records() {
        let (_dir, path) = log_file("2024-01-01T00:00:00Z stdout F one\n");
        let mut following = Following::start(&path, "", FAST);
        following.expect("one\n").await;
        append(
            &path,
            "2024-01-01T00:00:01Z stderr F two\n2024-01-01T00:00:02Z stdout P thr",
        );
        following.expect("one\ntwo\n").await;
        // The record is written in two pieces; it is read once it is complete.
        append(&path, "ee\n2024-01-01T00:00:03Z stdout F !\n");
        following.expect("one\ntwo\nthree!\n").await;
        following.running.store(false, Ordering::SeqCst);
        let (result, rest) = following.finish().await;
        result.expect("stream");
        assert_eq!(rest, "");
    }

    #[tokio::test]
    async fn follow_starts_at_the_tail() {
        let (_dir, path) = log_file(LOG);
        let mut following = Following::start(&path, "tailLines=2", FAST);
        following.expect("\nfour").await;
        append(
            &path,
            "2024-01-01T00:00:07Z stdout F !\n2024-01-01T00:00:08Z stdout F five\n",
        );
        following.expect("\nfour!\nfive\n").await;
        following.running.store(false, Ordering::SeqCst);
        following.finish().await.0.expect("stream");
    }

    #[tokio::test]
    async fn follow_survives_rotation() {
        let (dir, path) = log_file("2024-01-01T00:00:00Z stdout F one\n");
        let mut following = Following::start(&path, "timestamps=1", FAST);
        following
            .expect("2024-01-01T00:00:00.000000000Z one\n")
            .await;
        // Kubelet renames the file; the runtime writes on into it until it reopens `0.log`.
        let rotated = dir.path().join("0.log.20240101-000001");
        std::fs::rename(&path, &rotated).expect("rotate");
        append(&rotated, "2024-01-01T00:00:01Z stdout F two\n");
        std::fs::write(&path, "2024-01-01T00:00:02Z stderr F three\n").expect("new log");
        following
            .expect(
                "2024-01-01T00:00:00.000000000Z one\n\
                 2024-01-01T00:00:01.000000000Z two\n\
                 2024-01-01T00:00:02.000000000Z three\n",
            )
            .await;
        // And it goes on following the new file.
        append(&path, "2024-01-01T00:00:03Z stdout F four\n");
        following
            .expect(
                "2024-01-01T00:00:00.000000000Z one\n\
                 2024-01-01T00:00:01.000000000Z two\n\
                 2024-01-01T00:00:02.000000000Z three\n\
                 2024-01-01T00:00:03.000000000Z four\n",
            )
            .await;
        following.running.store(false, Ordering::SeqCst);
        following.finish().await.0.expect("stream");
    }

    #[tokio::test]
    async fn follow_rereads_a_truncated_file() {
        let (_dir, path) = log_file("2024-01-01T00:00:00Z stdout F a long first line\n");
        let mut following = Following::start(&path, "", FAST);
        following.expect("a long first line\n").await;
        std::fs::write(&path, "2024-01-01T00:00:01Z stdout F new\n").expect("truncate");
        following.expect("a long first line\nnew\n").await;
        following.running.store(false, Ordering::SeqCst);
        following.finish().await.0.expect("stream");
    }

    #[tokio::test]
    async fn stopped_container_ends_the_stream_after_draining() {
        let (_dir, path) = log_file("2024-01-01T00:00:00Z stdout F one\n");
        let mut following = Following::start(&path, "", FAST);
        following.expect("one\n").await;
        // The last output lands just before the container is seen to have stopped.
        append(
            &path,
            "2024-01-01T00:00:01Z stdout F last\n2024-01-01T00:00:02Z stdout F words",
        );
        following.running.store(false, Ordering::SeqCst);
        let (result, rest) = following.finish().await;
        result.expect("stream");
        // What the file holds is drained, the incomplete record too.
        assert_eq!(rest, "last\nwords");
    }

    #[tokio::test]
    async fn stopped_container_ends_the_stream_at_once() {
        let (_dir, path) = log_file(LOG);
        let mut following = Following::start(&path, "", FAST);
        following.running.store(false, Ordering::SeqCst);
        following.expect(&LINES.concat()).await;
        let (result, rest) = following.finish().await;
        result.expect("stream");
        assert_eq!(rest, "");
    }

    #[tokio::test]
    async fn still_running_is_asked_at_the_first_end_of_file_then_per_interval() {
        let (_dir, path) = log_file("2024-01-01T00:00:00Z stdout F one\n");
        let timing = Timing {
            running_check: Duration::from_secs(3600),
            ..FAST
        };
        let mut following = Following::start(&path, "", timing);
        following.expect("one\n").await;
        // Many polls later, still the single first question.
        tokio::time::sleep(FAST.poll * 10).await;
        append(&path, "2024-01-01T00:00:01Z stdout F two\n");
        following.expect("one\ntwo\n").await;
        assert_eq!(following.asked.load(Ordering::SeqCst), 1);
        following.task.abort();
    }

    #[tokio::test]
    async fn closed_receiver_ends_following() {
        let (_dir, path) = log_file("2024-01-01T00:00:00Z stdout F one\n");
        let mut following = Following::start(&path, "", FAST);
        following.expect("one\n").await;
        drop(following.rx);
        let result = tokio::time::timeout(WAIT, following.task)
            .await
            .expect("the stream did not end")
            .expect("task");
        result.expect("stream");
        // The container was never reported stopped.
        assert!(following.running.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn closed_receiver_ends_reading() {
        let mut log = String::new();
        for i in 0..10_000 {
            log.push_str(&format!("2024-01-01T00:00:00Z stdout F line {i}\n"));
        }
        let (_dir, path) = log_file(&log);
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            stream_log_with(&path, &LogOptions::default(), tx, || async { true }, FAST).await
        });
        let first = rx.recv().await.expect("a first chunk");
        assert!(first.starts_with(b"line 0\n"));
        drop(rx);
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the stream did not end")
            .expect("task")
            .expect("stream");
    }
}
