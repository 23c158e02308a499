//! A small client for the streaming URLs, as client-go's SPDY executor and port-forwarder use
//! them: enough for tests and tools to run a command, attach, or forward one connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::spdy::StreamWriter;
use crate::spdy::{Connection, Headers, Role, Stream};
use crate::{StreamingError, TerminalSize};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What an exec / attach session produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's content: empty, or (v4) a JSON `metav1.Status`.
    pub error: String,
}

/// What to send and which pipes to open.
#[derive(Debug, Default, Clone)]
pub struct SessionInput {
    /// Written to stdin, which is then closed (kept open with `tty`); `None`: no stdin stream.
    pub stdin: Option<Vec<u8>>,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Upgrades `url` (`http://host:port/path`) to SPDY/3.1 offering `protocols`; the connection and
/// the protocol the server chose.
pub async fn connect(
    url: &str,
    protocols: &[&str],
) -> Result<(Connection, Option<String>), StreamingError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| client_error(format!("only http:// URLs are served: {url}")))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| client_error(format!("connect {authority}: {e}")))?;
    upgrade(tcp, authority, path, &[], protocols).await
}

/// Upgrades an established connection `io` (plain or TLS) to SPDY/3.1 with a POST of `path`,
/// extra request `headers` (e.g. `Authorization`) and the offered `protocols`.
pub async fn upgrade<T>(
    mut io: T,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    protocols: &[&str],
) -> Result<(Connection, Option<String>), StreamingError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    for protocol in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {protocol}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| client_error(format!("send upgrade request: {e}")))?;

    // The response head, byte by byte: SPDY frames may follow it directly.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = io
            .read_u8()
            .await
            .map_err(|e| client_error(format!("read upgrade response: {e}")))?;
        head.push(byte);
        if head.len() > 16 * 1024 {
            return Err(client_error("upgrade response head too large".into()));
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 101") {
        return Err(client_error(format!("upgrade refused: {status_line}")));
    }
    let protocol = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-stream-protocol-version")
            .then(|| value.trim().to_owned())
    });
    let conn = Connection::with_role(io, Role::Client, Duration::from_secs(3600))
        .map_err(|e| client_error(e.to_string()))?;
    Ok((conn, protocol))
}

async fn open(
    conn: &Connection,
    kind: &str,
    extra: &[(&str, String)],
) -> Result<Stream, StreamingError> {
    let mut headers = Headers::new();
    headers.push("streamType", kind);
    for (name, value) in extra {
        headers.push(name, value.clone());
    }
    conn.open(headers, REPLY_TIMEOUT)
        .await
        .map_err(|e| client_error(format!("open {kind} stream: {e}")))
}

/// The exec/attach protocol this client speaks.
pub const EXEC_PROTOCOL: &str = "v4.channel.k8s.io";
/// The port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Runs one exec or attach session at `url` with protocol v4 (as `kubectl exec` does).
pub async fn run_session(url: &str, input: SessionInput) -> Result<SessionOutput, StreamingError> {
    let (conn, _) = connect(url, &[EXEC_PROTOCOL]).await?;
    session(conn, input).await
}

/// Runs one exec or attach session on an upgraded connection (see [`upgrade`]).
pub async fn session(
    conn: Connection,
    input: SessionInput,
) -> Result<SessionOutput, StreamingError> {
    let mut error = open(&conn, "error", &[]).await?;
    let stdin = match &input.stdin {
        Some(_) => Some(open(&conn, "stdin", &[]).await?),
        None => None,
    };
    let mut stdout = match input.stdout {
        true => Some(open(&conn, "stdout", &[]).await?),
        false => None,
    };
    let mut stderr = match input.stderr && !input.tty {
        true => Some(open(&conn, "stderr", &[]).await?),
        false => None,
    };
    let _resize = match input.tty {
        true => {
            let resize = open(&conn, "resize", &[]).await?;
            let size = br#"{"Width":80,"Height":24}"#;
            let _ = resize.writer().write(size).await;
            Some(resize)
        }
        false => None,
    };
    if let (Some(stream), Some(data)) = (&stdin, &input.stdin) {
        let writer = stream.writer();
        writer
            .write(data)
            .await
            .map_err(|e| client_error(e.to_string()))?;
        // Without a terminal the end of the data is the end of stdin. On a terminal, as with
        // kubectl, stdin stays open until the session ends: runtimes cut a TTY's output when its
        // input closes.
        if !input.tty {
            writer
                .close()
                .await
                .map_err(|e| client_error(e.to_string()))?;
        }
    }
    let limit = 16 << 20;
    let (out, err, status) = tokio::join!(
        async {
            match stdout.as_mut() {
                Some(s) => s.read_to_end(limit).await,
                None => Vec::new(),
            }
        },
        async {
            match stderr.as_mut() {
                Some(s) => s.read_to_end(limit).await,
                None => Vec::new(),
            }
        },
        error.read_to_end(limit),
    );
    conn.close(Duration::from_secs(1)).await;
    Ok(SessionOutput {
        stdout: out,
        stderr: err,
        error: String::from_utf8_lossy(&status).into_owned(),
    })
}

/// The local ends of an interactive exec / attach session (as client-go's `StreamOptions`):
/// data flows both ways while the command runs.
pub struct Interactive<I, O, E> {
    /// Sent to the command's stdin as it is read; the stdin stream is closed at its EOF (also
    /// with `tty`, as client-go does). `None`: no stdin stream.
    pub stdin: Option<I>,
    /// Where the command's stdout (with `tty`, the terminal's output) is written as it comes.
    pub stdout: Option<O>,
    /// Where the command's stderr is written; not opened with `tty`.
    pub stderr: Option<E>,
    pub tty: bool,
    /// With `tty`: terminal sizes to send on the `resize` stream, the initial size first, then
    /// each resize. `None`: the resize stream is opened but carries nothing.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// Runs one interactive exec or attach session at `url` with protocol v4; the error stream's
/// content (empty, or a JSON `metav1.Status`).
pub async fn run_interactive<I, O, E>(
    url: &str,
    session: Interactive<I, O, E>,
) -> Result<String, StreamingError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let (conn, _) = connect(url, &[EXEC_PROTOCOL]).await?;
    interactive(conn, session).await
}

/// Runs one interactive session on an upgraded connection (see [`upgrade`]): stdin and the
/// terminal sizes are sent while stdout and stderr are written out; returns once the server has
/// ended the output streams and reported on the error stream.
pub async fn interactive<I, O, E>(
    conn: Connection,
    session: Interactive<I, O, E>,
) -> Result<String, StreamingError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let Interactive {
        stdin,
        stdout,
        stderr,
        tty,
        resize,
    } = session;
    let mut error = open(&conn, "error", &[]).await?;
    let stdin = match stdin {
        Some(source) => Some((source, open(&conn, "stdin", &[]).await?)),
        None => None,
    };
    let stdout = match stdout {
        Some(sink) => Some((sink, open(&conn, "stdout", &[]).await?)),
        None => None,
    };
    let stderr = match stderr.filter(|_| !tty) {
        Some(sink) => Some((sink, open(&conn, "stderr", &[]).await?)),
        None => None,
    };
    let resize_stream = match tty {
        true => Some(open(&conn, "resize", &[]).await?),
        false => None,
    };
    // The sending sides run as tasks: stdin may never end (a terminal), they stop with the session.
    let stdin_task =
        stdin.map(|(source, stream)| tokio::spawn(send_stdin(source, stream.writer())));
    let resize_task = match (resize_stream.as_ref(), resize) {
        (Some(stream), Some(sizes)) => Some(tokio::spawn(send_sizes(sizes, stream.writer()))),
        _ => None,
    };
    let limit = 16 << 20;
    let (_, _, status) = tokio::join!(copy_out(stdout), copy_out(stderr), error.read_to_end(limit));
    for task in [stdin_task, resize_task].into_iter().flatten() {
        task.abort();
    }
    conn.close(Duration::from_secs(1)).await;
    Ok(String::from_utf8_lossy(&status).into_owned())
}

/// The `resize` stream's message for `size`: client-go's `TerminalSize` as Go encodes it (JSON,
/// fields in declaration order).
pub fn resize_message(size: TerminalSize) -> Vec<u8> {
    format!(r#"{{"Width":{},"Height":{}}}"#, size.width, size.height).into_bytes()
}

async fn send_stdin<I: AsyncRead + Unpin>(mut source: I, writer: StreamWriter) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if writer.write(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("reading the session's stdin: {e}");
                break;
            }
        }
    }
    let _ = writer.close().await;
}

async fn send_sizes(mut sizes: mpsc::Receiver<TerminalSize>, writer: StreamWriter) {
    while let Some(size) = sizes.recv().await {
        if writer.write(&resize_message(size)).await.is_err() {
            return;
        }
    }
}

/// Writes what the stream carries into `sink` until the server ends it. Once the sink fails the
/// rest is read and dropped (as client-go does), so the other streams keep flowing.
async fn copy_out<O: AsyncWrite + Unpin>(target: Option<(O, Stream)>) {
    let Some((mut sink, mut stream)) = target else {
        return;
    };
    let mut sink_ok = true;
    while let Some(chunk) = stream.recv().await {
        if sink_ok {
            let written = async {
                sink.write_all(&chunk).await?;
                sink.flush().await
            };
            if let Err(e) = written.await {
                tracing::warn!("writing the session's output: {e}");
                sink_ok = false;
            }
        }
    }
}

/// Forwards one connection to `port` through the port-forward `url`: sends `request`, closes the
/// sending side, and returns everything received and the error stream's text.
pub async fn forward_once(
    url: &str,
    port: u16,
    request: &[u8],
) -> Result<(Vec<u8>, String), StreamingError> {
    let (conn, _) = connect(url, &[PORT_FORWARD_PROTOCOL]).await?;
    forward(conn, port, request).await
}

/// Forwards one connection to `port` over an upgraded port-forward connection (see [`upgrade`]).
pub async fn forward(
    conn: Connection,
    port: u16,
    request: &[u8],
) -> Result<(Vec<u8>, String), StreamingError> {
    let ids = [("port", port.to_string()), ("requestID", "0".to_owned())];
    let mut error = open(&conn, "error", &ids).await?;
    error
        .writer()
        .close()
        .await
        .map_err(|e| client_error(e.to_string()))?;
    let mut data = open(&conn, "data", &ids).await?;
    let writer = data.writer();
    writer
        .write(request)
        .await
        .map_err(|e| client_error(e.to_string()))?;
    writer
        .close()
        .await
        .map_err(|e| client_error(e.to_string()))?;
    let limit = 16 << 20;
    let (received, failure) = tokio::join!(data.read_to_end(limit), error.read_to_end(limit));
    conn.close(Duration::from_secs(1)).await;
    Ok((received, String::from_utf8_lossy(&failure).into_owned()))
}

fn client_error(message: String) -> StreamingError {
    StreamingError::Client(message)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_cri::v1 as api;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    use super::*;
    use crate::remotecommand::parse_sizes;
    use crate::{StreamingConfig, StreamingRuntime, StreamingServer, Streams};

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Never(String);

    /// exec `converse`: answers each stdin line `L` with `got-L` and exits with the number of
    /// lines at stdin's EOF. exec `sizes N`: prints the first N terminal sizes as `WxH` lines.
    struct Conversation;

    impl StreamingRuntime for Conversation {
        type Error = Never;

        async fn exec(
            &self,
            _container_id: &str,
            cmd: &[String],
            mut streams: Streams,
        ) -> Result<i32, Never> {
            let mut stdout = streams.stdout.take().ok_or(Never("no stdout".into()))?;
            match cmd.first().map(String::as_str) {
                Some("converse") => {
                    let stdin = streams.stdin.take().ok_or(Never("no stdin".into()))?;
                    let mut lines = BufReader::new(stdin).lines();
                    let mut count = 0;
                    while let Ok(Some(line)) = lines.next_line().await {
                        count += 1;
                        let _ = stdout.write_all(format!("got-{line}\n").as_bytes()).await;
                    }
                    Ok(count)
                }
                Some("sizes") => {
                    let wanted: usize = cmd.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
                    let mut sizes = streams.resize.take().ok_or(Never("no resize".into()))?;
                    for _ in 0..wanted {
                        let Some(size) = sizes.recv().await else {
                            break;
                        };
                        let line = format!("{}x{}\n", size.width, size.height);
                        let _ = stdout.write_all(line.as_bytes()).await;
                    }
                    Ok(0)
                }
                _ => Err(Never(format!("cannot run {cmd:?}"))),
            }
        }

        async fn attach(&self, _container_id: &str, _streams: Streams) -> Result<(), Never> {
            Err(Never("no attach".into()))
        }

        async fn port_forward(
            &self,
            _pod_sandbox_id: &str,
            _port: u16,
            _stream: DuplexStream,
        ) -> Result<(), Never> {
            Err(Never("no port-forward".into()))
        }
    }

    async fn url(server: &StreamingServer, cmd: &[&str], stdin: bool, tty: bool) -> String {
        server
            .get_exec(&api::ExecRequest {
                container_id: "c1".into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                stdin,
                stdout: true,
                stderr: !tty,
                tty,
            })
            .expect("url")
            .url
    }

    const STEP: Duration = Duration::from_secs(10);

    async fn next_line(lines: &mut tokio::io::Lines<BufReader<DuplexStream>>) -> Option<String> {
        tokio::time::timeout(STEP, lines.next_line())
            .await
            .expect("a line within the step's limit")
            .expect("readable")
    }

    #[test]
    fn resize_messages_are_what_the_server_parses() {
        let size = TerminalSize {
            width: 100,
            height: 40,
        };
        let message = resize_message(size);
        assert_eq!(message, br#"{"Width":100,"Height":40}"#);
        let mut two = message.clone();
        two.extend(resize_message(TerminalSize {
            width: 1,
            height: 65535,
        }));
        let (sizes, used) = parse_sizes(&two);
        assert_eq!(used, two.len());
        assert_eq!(
            sizes,
            [
                size,
                TerminalSize {
                    width: 1,
                    height: 65535
                }
            ]
        );
    }

    #[tokio::test]
    async fn stdin_is_streamed_while_output_flows_back() {
        let server = StreamingServer::start(StreamingConfig::default(), Arc::new(Conversation))
            .await
            .expect("server");
        let url = url(&server, &["converse"], true, false).await;
        let (mut input, stdin) = tokio::io::duplex(1024);
        let (stdout, output) = tokio::io::duplex(1024);
        let session = tokio::spawn(async move {
            run_interactive(
                &url,
                Interactive {
                    stdin: Some(stdin),
                    stdout: Some(stdout),
                    stderr: Some(tokio::io::sink()),
                    tty: false,
                    resize: None,
                },
            )
            .await
        });
        let mut lines = BufReader::new(output).lines();
        // Each line is written only after the answer to the previous one came back: a client
        // that read stdin to its end before sending would never see the first answer.
        input.write_all(b"one\n").await.expect("write");
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("got-one"));
        input.write_all(b"two\n").await.expect("write");
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("got-two"));
        drop(input);
        let error = tokio::time::timeout(STEP, session)
            .await
            .expect("the session ends at stdin's EOF")
            .expect("task")
            .expect("session");
        let status: serde_json::Value = serde_json::from_str(&error).expect("status");
        assert_eq!(status["details"]["causes"][0]["message"], "2", "{status}");
        assert_eq!(next_line(&mut lines).await, None);
    }

    #[tokio::test]
    async fn terminal_sizes_go_on_the_resize_stream_as_they_come() {
        let server = StreamingServer::start(StreamingConfig::default(), Arc::new(Conversation))
            .await
            .expect("server");
        let url = url(&server, &["sizes", "2"], true, true).await;
        let (sizes, rx) = mpsc::channel(4);
        let (_input, stdin) = tokio::io::duplex(1024);
        let (stdout, output) = tokio::io::duplex(1024);
        let session = tokio::spawn(async move {
            run_interactive(
                &url,
                Interactive {
                    stdin: Some(stdin),
                    stdout: Some(stdout),
                    stderr: None::<tokio::io::Sink>,
                    tty: true,
                    resize: Some(rx),
                },
            )
            .await
        });
        let mut lines = BufReader::new(output).lines();
        let size = |width, height| TerminalSize { width, height };
        sizes.send(size(100, 40)).await.expect("send");
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("100x40"));
        sizes.send(size(120, 50)).await.expect("send");
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("120x50"));
        // The command ends while stdin is still open (a terminal's never ends): so does the
        // session.
        let error = tokio::time::timeout(STEP, session)
            .await
            .expect("the session ends with the command")
            .expect("task")
            .expect("session");
        let status: serde_json::Value = serde_json::from_str(&error).expect("status");
        assert_eq!(status["status"], "Success", "{status}");
    }
}
