//! A small client for the streaming URLs, as client-go's SPDY executor and port-forwarder use
//! them: enough for tests and tools to run a command, attach, or forward one connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::StreamingError;
use crate::spdy::{Connection, Headers, Role, Stream};

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
