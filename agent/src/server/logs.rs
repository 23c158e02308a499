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
//! * Following polls the file ([`DEFAULT_TIMING`]) instead of using inotify; `still_running` is
//!   asked at the first end of file and then about once a second while waiting.
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
        let flag = |name: &str| first(name).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
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
        let limit_bytes = limit_bytes
            .map(|n| positive("limitBytes", n))
            .transpose()?;
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
    let (timestamp, offset) = parse_timestamp(raw_timestamp).ok_or("unexpected timestamp format")?;
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
            if end.is_none() {
                end = Some(next);
            } else {
                let header = &joined[at + 1..joined.len().min(at + 1 + HEADER_MAX)];
                if classify(header) {
                    return Ok((record_end, end.unwrap_or(size)));
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
                .and_then(|s| Timestamp::now().checked_sub(SignedDuration::from_secs(s)).ok())
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
enum Read_ {
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
        if matches!(read, Read_::Done) {
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
                    reader = BufReader::with_capacity(
                        CHUNK,
                        tokio::fs::File::from_std(opened.file),
                    );
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
) -> Result<Read_, LogError> {
    loop {
        if stop_at.is_some_and(|end| *pos >= end) {
            return Ok(Read_::Eof);
        }
        let n = reader
            .read_until(b'\n', line)
            .await
            .map_err(LogError::io("reading", path))?;
        *pos += n as u64;
        if line.last() != Some(&b'\n') {
            return Ok(Read_::Eof);
        }
        let limited = writer.record(path, line).is_err();
        line.clear();
        if limited {
            return Ok(Read_::Done);
        }
        if writer.buf.len() >= CHUNK && !writer.flush(out).await {
            return Ok(Read_::Done);
        }
    }
}

#[cfg(test)]
mod tests;
