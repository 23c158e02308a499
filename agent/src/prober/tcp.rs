//! The tcpSocket handler, and the Go-style network error texts the other handlers share.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Outcome;

/// Go's `net.JoinHostPort`: IPv6 literals are bracketed.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An I/O error in the words Go's `net` package uses (`connect: connection refused`), which is
/// what users know from kubelet's probe messages.
pub fn net_error(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        io::ErrorKind::HostUnreachable => "connect: no route to host".into(),
        io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        io::ErrorKind::ConnectionReset => "read: connection reset by peer".into(),
        io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => err.to_string(),
    }
}

/// Connects to `host:port` within `timeout`; a connection is success, anything else a failure
/// (kubelet's `DoTCPProbe`).
pub async fn probe(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, TcpStream::connect(addr.as_str())).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Outcome::Success(String::new())
        }
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {}", net_error(&e))),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_joining() {
        assert_eq!(join_host_port("10.0.0.5", 8080), "10.0.0.5:8080");
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("db.local", 5432), "db.local:5432");
    }

    #[test]
    fn go_error_words() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(net_error(&refused), "connect: connection refused");
        let other = io::Error::other("boom");
        assert_eq!(net_error(&other), "boom");
    }

    #[tokio::test]
    async fn open_port_succeeds_closed_port_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            probe("127.0.0.1", port, Duration::from_secs(1)).await,
            Outcome::Success(String::new())
        );
        drop(listener);
        assert_eq!(
            probe("127.0.0.1", port, Duration::from_secs(1)).await,
            Outcome::Failure(format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }

    #[tokio::test]
    async fn unreachable_address_times_out() {
        // A blackholed TEST-NET address: the SYN goes nowhere (or the network is unreachable).
        let started = std::time::Instant::now();
        let outcome = probe("192.0.2.1", 81, Duration::from_millis(300)).await;
        let Outcome::Failure(message) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert!(message.starts_with("dial tcp 192.0.2.1:81: "), "{message}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
