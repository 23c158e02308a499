//! The exec / attach protocol (`channel.k8s.io` v1–v4) over a SPDY connection: the client opens
//! an `error` stream and one stream per requested pipe (`stdin`, `stdout`, `stderr`, and `resize`
//! with a TTY from v3 on); the server runs the session, closes the output streams, then reports
//! the outcome on the `error` stream (v4: a JSON `metav1.Status`; earlier: the error's text).

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::runtime::{Streams, TerminalSize, pipe};
use crate::spdy::{Connection, Stream, StreamWriter};

/// The versions served, newest first (as the kubelet's streaming server).
pub(crate) const PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "v4.channel.k8s.io" => Some(Self::V4),
            "v3.channel.k8s.io" => Some(Self::V3),
            "v2.channel.k8s.io" => Some(Self::V2),
            "channel.k8s.io" | "" => Some(Self::V1),
            _ => None,
        }
    }
}

/// Which pipes the session has, from the CRI request behind the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    ExitCode(i32),
    Error(String),
}

/// The streams the client opened, once all expected ones are there.
#[derive(Default)]
struct ClientStreams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl ClientStreams {
    fn complete(&self, opts: Options, version: Version) -> bool {
        self.error.is_some()
            && (!opts.stdin || self.stdin.is_some())
            && (!opts.stdout || self.stdout.is_some())
            && (!opts.stderr || self.stderr.is_some())
            && (!(opts.tty && version >= Version::V3) || self.resize.is_some())
    }
}

/// Serves one exec/attach session on `conn`; `run` is the runtime's part.
pub(crate) async fn serve<F, Fut>(
    mut conn: Connection,
    version: Version,
    opts: Options,
    creation_timeout: Duration,
    run: F,
) where
    F: FnOnce(Streams) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let Some(streams) = collect(&mut conn, version, opts, creation_timeout).await else {
        conn.close(DRAIN).await;
        return;
    };
    let ClientStreams {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    } = streams;
    let Some(error) = error else {
        conn.close(DRAIN).await;
        return;
    };

    let stdin = stdin.map(|stream| stream.split().0);
    let (resize_rx, resize_task) = match resize {
        Some(stream) => {
            let (tx, rx) = mpsc::channel(8);
            (Some(rx), Some(tokio::spawn(read_resizes(stream, tx))))
        }
        None => (None, None),
    };
    let outcome = run_session(
        opts.tty,
        stdin,
        stdout.map(|s| s.writer()),
        stderr.map(|s| s.writer()),
        resize_rx,
        run,
    )
    .await;
    abort(resize_task);

    let writer = error.writer();
    if let Some(report) = error_report(version, &outcome) {
        let _ = writer.write(report.as_bytes()).await;
    }
    let _ = writer.close().await;
    conn.close(DRAIN).await;
}

fn abort<T>(task: Option<JoinHandle<T>>) {
    if let Some(task) = task {
        task.abort();
    }
}

/// Where a session's output goes: a SPDY stream, or a WebSocket channel.
pub(crate) trait OutputSink: Send + Sync + 'static {
    /// Sends `data`; false once the client is gone.
    fn send(&self, data: &[u8]) -> impl Future<Output = bool> + Send;
    /// Ends this output (where the transport can say so).
    fn finish(&self) -> impl Future<Output = ()> + Send;
}

impl OutputSink for StreamWriter {
    async fn send(&self, data: &[u8]) -> bool {
        self.write(data).await.is_ok()
    }

    async fn finish(&self) {
        let _ = self.close().await;
    }
}

/// The transport-independent part of exec/attach: pipes between the client's streams and the
/// runtime, the runtime's run, and the output drained before the outcome is returned.
pub(crate) async fn run_session<I, O, F, Fut>(
    tty: bool,
    stdin: Option<I>,
    stdout: Option<O>,
    stderr: Option<O>,
    resize: Option<mpsc::Receiver<TerminalSize>>,
    run: F,
) -> Outcome
where
    I: AsyncRead + Unpin + Send + 'static,
    O: OutputSink,
    F: FnOnce(Streams) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut pumps = Vec::new();
    let (stdin_pipe, stdin_pump) = match stdin {
        Some(source) => {
            let (ours, theirs) = pipe();
            (Some(theirs), Some(tokio::spawn(pump_in(source, ours))))
        }
        None => (None, None),
    };
    let mut output = |sink: Option<O>| {
        sink.map(|sink| {
            let (ours, theirs) = pipe();
            pumps.push(tokio::spawn(pump_out(ours, sink)));
            theirs
        })
    };
    let stdout_pipe = output(stdout);
    let stderr_pipe = output(stderr);

    let outcome = run(Streams {
        stdin: stdin_pipe,
        stdout: stdout_pipe,
        stderr: stderr_pipe,
        tty,
        resize,
    })
    .await;

    // The runtime dropped its pipe ends: the pumps send what is left and end their outputs.
    for pump in pumps {
        if tokio::time::timeout(OUTPUT_FLUSH, pump).await.is_err() {
            tracing::warn!(
                "exec/attach output still open {OUTPUT_FLUSH:?} after the session ended"
            );
        }
    }
    abort(stdin_pump);
    outcome
}

/// How long the client gets to read the last frames and leave.
const DRAIN: Duration = Duration::from_secs(5);
/// How long output may still flow after the runtime returned.
const OUTPUT_FLUSH: Duration = Duration::from_secs(10);

async fn collect(
    conn: &mut Connection,
    version: Version,
    opts: Options,
    creation_timeout: Duration,
) -> Option<ClientStreams> {
    let deadline = tokio::time::Instant::now() + creation_timeout;
    let mut streams = ClientStreams::default();
    while !streams.complete(opts, version) {
        let stream = match tokio::time::timeout_at(deadline, conn.accept()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return None,
            Err(_) => {
                tracing::warn!(
                    "exec/attach client did not create its streams within {creation_timeout:?}"
                );
                return None;
            }
        };
        let kind = stream
            .headers
            .get("streamtype")
            .unwrap_or_default()
            .to_owned();
        let slot = match kind.as_str() {
            "error" => &mut streams.error,
            "stdin" => &mut streams.stdin,
            "stdout" => &mut streams.stdout,
            "stderr" => &mut streams.stderr,
            "resize" => &mut streams.resize,
            other => {
                tracing::warn!(stream_type = other, "unexpected exec/attach stream type");
                continue;
            }
        };
        *slot = Some(stream);
    }
    Some(streams)
}

/// Client → runtime: copies the client's stdin into the pipe, then closes the pipe (EOF).
async fn pump_in<I: AsyncRead + Unpin>(mut source: I, mut pipe: tokio::io::DuplexStream) {
    let _ = tokio::io::copy(&mut source, &mut pipe).await;
    let _ = pipe.shutdown().await;
}

/// Runtime → client: copies the pipe into the sink until EOF, then ends it.
pub(crate) async fn pump_out<R: AsyncRead + Unpin, O: OutputSink>(mut pipe: R, sink: O) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !sink.send(&buf[..n]).await {
                    return;
                }
            }
        }
    }
    sink.finish().await;
}

/// Parses the concatenated JSON sizes of the `resize` stream.
async fn read_resizes(mut stream: Stream, tx: mpsc::Sender<TerminalSize>) {
    let mut buf = Vec::new();
    while let Some(chunk) = stream.recv().await {
        buf.extend_from_slice(&chunk);
        let (sizes, used) = parse_sizes(&buf);
        buf.drain(..used);
        for size in sizes {
            if tx.send(size).await.is_err() {
                return;
            }
        }
        if buf.len() > 4096 {
            tracing::warn!("resize stream carries no terminal sizes: ignoring it");
            return;
        }
    }
}

/// The complete sizes at the start of `buf`, and how many bytes they took.
pub(crate) fn parse_sizes(buf: &[u8]) -> (Vec<TerminalSize>, usize) {
    let mut sizes = Vec::new();
    let mut iter = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    let mut used = 0;
    // Stops at an incomplete message (or garbage: the length cap of the caller gives up on it).
    while let Some(Ok(size)) = iter.next() {
        sizes.push(size);
        used = iter.byte_offset();
    }
    (sizes, used)
}

/// What goes on the error stream: nothing for v1–v3 successes, a `metav1.Status` for v4.
pub(crate) fn error_report(version: Version, outcome: &Outcome) -> Option<String> {
    if version < Version::V4 {
        return match outcome {
            Outcome::Success | Outcome::ExitCode(0) => None,
            Outcome::ExitCode(code) => Some(format!(
                "command terminated with non-zero exit code: exit status {code}"
            )),
            Outcome::Error(message) => Some(message.clone()),
        };
    }
    let status = match outcome {
        Outcome::Success | Outcome::ExitCode(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::ExitCode(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Error(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }),
    };
    Some(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_completeness() {
        assert_eq!(Version::from_name("v4.channel.k8s.io"), Some(Version::V4));
        assert_eq!(Version::from_name(""), Some(Version::V1));
        assert_eq!(Version::from_name("v5.channel.k8s.io"), None);
        // Nothing at all: not even the error stream.
        let none = Options {
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        };
        assert!(!ClientStreams::default().complete(none, Version::V4));
    }

    #[test]
    fn resize_messages_parse_across_chunk_boundaries() {
        let (sizes, used) = parse_sizes(br#"{"Width":80,"Height":24}{"Width":100,"He"#);
        assert_eq!(
            sizes,
            [TerminalSize {
                width: 80,
                height: 24
            }]
        );
        assert_eq!(used, 24);
        assert_eq!(parse_sizes(b"").0, []);
    }

    #[test]
    fn error_stream_reports_follow_the_protocol_version() {
        assert_eq!(error_report(Version::V3, &Outcome::Success), None);
        assert_eq!(
            error_report(Version::V2, &Outcome::Error("no such container".into())),
            Some("no such container".into())
        );
        let success: serde_json::Value =
            serde_json::from_str(&error_report(Version::V4, &Outcome::ExitCode(0)).expect("v4"))
                .expect("json");
        assert_eq!(success["status"], "Success");
        let failed: serde_json::Value =
            serde_json::from_str(&error_report(Version::V4, &Outcome::ExitCode(3)).expect("v4"))
                .expect("json");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let internal: serde_json::Value = serde_json::from_str(
            &error_report(Version::V4, &Outcome::Error("boom".into())).expect("v4"),
        )
        .expect("json");
        assert_eq!(internal["reason"], "InternalError");
        assert_eq!(internal["code"], 500);
    }
}
