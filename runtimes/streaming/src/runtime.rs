//! What a container runtime provides to the streaming server.

use std::future::Future;

use serde::Deserialize;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// A terminal size sent by the client on the `resize` stream (JSON `{"Width":…,"Height":…}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's streams for one exec or attach session, as plain pipes: read `stdin` until EOF
/// (the client closed it), write `stdout` / `stderr` and drop them when done. With `tty` the
/// terminal's output all goes to `stdout` and `stderr` is `None`.
#[derive(Debug)]
pub struct Streams {
    pub stdin: Option<DuplexStream>,
    pub stdout: Option<DuplexStream>,
    pub stderr: Option<DuplexStream>,
    pub tty: bool,
    /// Terminal resizes, only with `tty`.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// The runtime side of exec, attach and port-forward. Each call returns when the session is
/// over; dropping the streams it was given ends them for the client.
pub trait StreamingRuntime: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs `cmd` in the container; the command's exit code.
    fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        streams: Streams,
    ) -> impl Future<Output = Result<i32, Self::Error>> + Send;

    /// Attaches to the container's main process until it exits or the client leaves.
    fn attach(
        &self,
        container_id: &str,
        streams: Streams,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Connects `stream` to `port` on localhost inside the sandbox's network namespace, copying
    /// both ways until both sides are done (half-closes propagate).
    fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        stream: DuplexStream,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The runtime-facing ends of the session pipes, and the server-facing ends kept by the server.
pub(crate) fn pipe() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(PIPE_BUFFER)
}

const PIPE_BUFFER: usize = 64 * 1024;
