use std::time::Duration;

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("invalid CRI endpoint {endpoint:?}: {reason}")]
    Endpoint {
        endpoint: String,
        reason: &'static str,
    },
    #[error("CRI {op}: runtime unavailable: {message}")]
    Unavailable { op: &'static str, message: String },
    #[error("CRI {op}: timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("CRI {op}: not found: {message}")]
    NotFound { op: &'static str, message: String },
    #[error("CRI {op}: {code:?}: {message}")]
    Status {
        op: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl CriError {
    pub fn from_status(op: &'static str, status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::Unavailable => CriError::Unavailable { op, message },
            tonic::Code::NotFound => CriError::NotFound { op, message },
            tonic::Code::DeadlineExceeded => CriError::Status {
                op,
                code: tonic::Code::DeadlineExceeded,
                message,
            },
            code => CriError::Status { op, code, message },
        }
    }

    /// True when the object the call named does not exist (removal of something already gone).
    pub fn is_not_found(&self) -> bool {
        match self {
            CriError::NotFound { .. } => true,
            // containerd 1.6 answers some lookups of unknown IDs with Unknown + "not found".
            CriError::Status { message, .. } => message.contains("not found"),
            _ => false,
        }
    }

    /// True when the runtime does not implement the call (containerd 1.6's GetContainerEvents).
    pub fn is_unimplemented(&self) -> bool {
        matches!(
            self,
            CriError::Status {
                code: tonic::Code::Unimplemented,
                ..
            }
        )
    }

    /// True when the runtime could not be reached at all (socket missing, daemon down, timeout).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CriError::Unavailable { .. } | CriError::Timeout { .. }
        )
    }

    /// The short message the runtime gave, without the operation prefix.
    pub fn message(&self) -> String {
        match self {
            CriError::Unavailable { message, .. }
            | CriError::NotFound { message, .. }
            | CriError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}
