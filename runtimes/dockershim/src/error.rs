//! Errors: [`DockerShimError`] for setting the shim up and serving it, [`OpError`] for one CRI
//! operation (turned into a gRPC status for the caller).

use bollard::errors::Error as DockerError;
use tonic::{Code, Status};

/// What can go wrong connecting to dockerd or serving the CRI socket.
#[derive(Debug, thiserror::Error)]
pub enum DockerShimError {
    /// The docker endpoint is not `unix:///path` or an absolute path.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint {
        endpoint: String,
        reason: &'static str,
    },
    /// dockerd did not answer (or its API version could not be negotiated).
    #[error("connecting to dockerd at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: DockerError,
    },
    /// A Docker API call failed.
    #[error("{context}: {source}")]
    Docker {
        context: String,
        #[source]
        source: DockerError,
    },
    /// Binding, serving or stopping the CRI server failed.
    #[error(transparent)]
    Server(#[from] mk_cri::server::ServeError),
    /// The streaming server (Exec / Attach / PortForward) could not start.
    #[error(transparent)]
    Streaming(#[from] mk_streaming::StreamingError),
    /// [`crate::DockerShim::serve_unix`] was called outside a tokio runtime.
    #[error("the CRI server must be started from within a tokio runtime")]
    NoRuntime,
}

/// The failure of one CRI operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{context}: {source}")]
    Docker {
        context: String,
        #[source]
        source: DockerError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A CNI plugin chain failed (ADD / DEL of a pod's network).
    #[error("{context}: {source}")]
    Cni {
        context: String,
        #[source]
        source: mk_cni::CniError,
    },
}

impl OpError {
    pub(crate) fn docker(context: impl Into<String>, source: DockerError) -> Self {
        Self::Docker {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Io { .. } | Self::Cni { .. } => Code::Internal,
            Self::Docker { source, .. } => match docker_status_code(source) {
                Some(400) => Code::InvalidArgument,
                Some(404) => Code::NotFound,
                Some(409) => Code::FailedPrecondition,
                Some(_) => Code::Internal,
                // No answer at all: the daemon is down or restarting.
                None => Code::Unavailable,
            },
        }
    }
}

impl From<OpError> for Status {
    fn from(err: OpError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

/// The HTTP status dockerd answered, if it answered.
pub(crate) fn docker_status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        DockerError::JsonDataError { .. } | DockerError::JsonSerdeError { .. } => Some(500),
        _ => None,
    }
}

/// True when dockerd answered 404 (no such container / image / exec).
pub(crate) fn is_not_found(err: &DockerError) -> bool {
    docker_status_code(err) == Some(404)
}

/// True when dockerd answered 409 (name in use, removal in progress, image in use).
pub(crate) fn is_conflict(err: &DockerError) -> bool {
    docker_status_code(err) == Some(409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(status_code: u16) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code,
            message: "x".into(),
        }
    }

    #[test]
    fn docker_answers_map_to_grpc_codes() {
        let code = |e| Status::from(OpError::docker("op", e)).code();
        assert_eq!(code(server_error(404)), Code::NotFound);
        assert_eq!(code(server_error(400)), Code::InvalidArgument);
        assert_eq!(code(server_error(409)), Code::FailedPrecondition);
        assert_eq!(code(server_error(500)), Code::Internal);
        assert_eq!(code(DockerError::RequestTimeoutError), Code::Unavailable);
        assert!(is_not_found(&server_error(404)));
        assert!(is_conflict(&server_error(409)));
    }
}
