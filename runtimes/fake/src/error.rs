/// Why serving the fake runtime or driving one of its test controls failed.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("the fake CRI runtime must be served from within a tokio runtime")]
    NoRuntime,
    #[error("fake CRI server: {0}")]
    Server(#[from] mk_cri::server::ServeError),
    #[error("no {kind} with ID {id:?}")]
    NotFound { kind: &'static str, id: String },
    #[error("container {id:?} is not running (it is {state})")]
    NotRunning { id: String, state: &'static str },
    #[error("invalid IPv4 pod CIDR {0:?} (expected a.b.c.d/8..30)")]
    InvalidCidr(String),
}
