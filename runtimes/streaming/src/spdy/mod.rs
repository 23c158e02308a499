//! The server side of SPDY/3.1 as Kubernetes uses it (`moby/spdystream`): after an HTTP upgrade
//! the client opens streams (SYN_STREAM with headers such as `streamType`), each answered with a
//! SYN_REPLY; data flows both ways in DATA frames, each direction ending with FIN. Like
//! spdystream, no flow-control windows are enforced (TCP's back-pressure is the only one).

mod connection;
mod frame;
mod headers;

pub use connection::{Connection, Role, Stream, StreamWriter};
pub use frame::{RST_CANCEL, RST_PROTOCOL_ERROR};
pub use headers::Headers;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY connection closed")]
    Closed,
}
