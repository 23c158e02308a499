use std::path::PathBuf;

use crate::CriError;

/// A parsed CRI endpoint. Only unix sockets are supported, as with the upstream kubelet on Linux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
}

/// Parses kubelet's endpoint syntax: `unix:///run/containerd/containerd.sock`. A bare absolute path is
/// accepted too (kubelet used to accept it with a deprecation warning).
pub fn parse_endpoint(raw: &str) -> Result<Endpoint, CriError> {
    let invalid = |reason: &'static str| CriError::Endpoint {
        endpoint: raw.to_string(),
        reason,
    };
    if let Some(rest) = raw.strip_prefix("unix://") {
        if rest.is_empty() {
            return Err(invalid("empty socket path"));
        }
        if !rest.starts_with('/') {
            return Err(invalid("socket path must be absolute (unix:///path)"));
        }
        return Ok(Endpoint::Unix(PathBuf::from(rest)));
    }
    if raw.starts_with('/') {
        return Ok(Endpoint::Unix(PathBuf::from(raw)));
    }
    if raw.contains("://") {
        return Err(invalid("only unix:// endpoints are supported"));
    }
    Err(invalid("expected unix:///path/to/socket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_syntax() {
        assert_eq!(
            parse_endpoint("unix:///run/containerd/containerd.sock").ok(),
            Some(Endpoint::Unix("/run/containerd/containerd.sock".into()))
        );
        assert_eq!(
            parse_endpoint("/var/run/crio/crio.sock").ok(),
            Some(Endpoint::Unix("/var/run/crio/crio.sock".into()))
        );
    }

    #[test]
    fn rejects_other_schemes_and_relative_paths() {
        for bad in [
            "tcp://127.0.0.1:1234",
            "unix://",
            "unix://relative.sock",
            "containerd.sock",
            "",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(CriError::Endpoint { .. })),
                "{bad:?} should be rejected"
            );
        }
    }
}
