use std::path::PathBuf;

/// Why serving the fake runtime or driving one of its test controls failed.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("the fake CRI runtime must be served from within a tokio runtime")]
    NoRuntime,
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fake CRI server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("fake CRI server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("no {kind} with ID {id:?}")]
    NotFound { kind: &'static str, id: String },
    #[error("container {id:?} is not running (it is {state})")]
    NotRunning { id: String, state: &'static str },
    #[error("invalid IPv4 pod CIDR {0:?} (expected a.b.c.d/8..30)")]
    InvalidCidr(String),
}
