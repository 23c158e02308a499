//! The CRI streaming server: what `k8s.io/kubelet/pkg/cri/streaming` is to containerd, cri-o and
//! the old dockershim. The CRI calls Exec, Attach and PortForward do not stream themselves; they
//! return a URL. A client (the kubelet proxying `kubectl exec`, `crictl`, `critest`) upgrades that
//! URL to SPDY/3.1 and speaks the Kubernetes stream protocols over it:
//!
//! * exec / attach: `v4.channel.k8s.io` (and v3, v2, v1): `error`, `stdin`, `stdout`, `stderr` and
//!   `resize` streams; the outcome (success, non-zero exit code with the code, or an error) is a
//!   `metav1.Status` on the error stream;
//! * port-forward: `portforward.k8s.io`: one `error` + `data` stream pair per connection.
//!
//! The runtime supplies the sessions through [`StreamingRuntime`]; the server owns tokens (single
//! use, one minute, 1000 in flight), the upgrade, the SPDY framing and the protocols.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo<R: mk_streaming::StreamingRuntime>(runtime: Arc<R>) -> Result<(), mk_streaming::StreamingError> {
//! use mk_streaming::{StreamingConfig, StreamingServer};
//! let server = StreamingServer::start(StreamingConfig::default(), runtime).await?;
//! let answer = server.get_exec(&k8s_cri::v1::ExecRequest {
//!     container_id: "abc".into(),
//!     cmd: vec!["date".into()],
//!     stdout: true,
//!     ..Default::default()
//! })?;
//! println!("client connects to {}", answer.url);
//! # Ok(()) }
//! ```
//!
//! Both transports the kubelet's streaming server offers are served: SPDY/3.1 upgrades, and
//! WebSocket upgrades — exec/attach over `channel.k8s.io` v1–v5 (binary, and base64 for v1–v4)
//! and port-forward as SPDY tunnelled through the WebSocket (`SPDY/3.1+portforward.k8s.io`, what
//! client-go's WebSocket dialer and the API server speak). Not served: TLS (the server listens on
//! loopback by default; the kubelet proxies to it) and the legacy channel-per-port WebSocket
//! port-forward.

mod cache;
pub mod client;
mod portforward;
mod remotecommand;
mod runtime;
mod server;
pub mod spdy;
mod ws;

#[cfg(test)]
mod session_tests;

use std::net::SocketAddr;

pub use runtime::{StreamingRuntime, Streams, TerminalSize};
pub use server::{StreamingConfig, StreamingServer};

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("streaming server cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("too many in-flight streaming requests (at most {0})")]
    TooManyRequests(usize),
    #[error("no randomness for a streaming token: {0}")]
    Random(String),
    #[error("streaming client: {0}")]
    Client(String),
}
