//! The grpc handler: `grpc.health.v1.Health/Check` over plaintext HTTP/2 within the probe's
//! timeout, `SERVING` is success (kubelet's `pkg/probe/grpc`, with its messages).

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Outcome;
use super::tcp::join_host_port;

/// A duration as Go prints it, for the messages (`1s`, `300ms`).
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{d:?}")
    }
}

/// An error with its sources, `outer: inner: innermost`.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

pub async fn probe(
    host: &str,
    port: u16,
    service: &str,
    timeout: Duration,
    user_agent: &str,
) -> Outcome {
    let addr = join_host_port(host, port);
    let within = go_duration(timeout);
    let deadline = Instant::now() + timeout;
    let endpoint = match Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent(user_agent))
    {
        Ok(e) => e.connect_timeout(timeout),
        Err(e) => {
            return Outcome::Failure(format!(
                "error: failed to connect service at {addr:?}: {}",
                chain(&e)
            ));
        }
    };
    let channel = match tokio::time::timeout_at(deadline, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "error: failed to connect service at {addr:?}: {}",
                chain(&e)
            ));
        }
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {addr:?} within {within}: context deadline exceeded"
            ));
        }
    };
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let timed_out = || {
        Outcome::Failure(format!(
            "timeout: health rpc did not complete within {within}"
        ))
    };
    match tokio::time::timeout_at(deadline, client.check(request)).await {
        Err(_) => timed_out(),
        Ok(Err(status)) => match status.code() {
            Code::Unimplemented => Outcome::Failure(format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                status.message()
            )),
            Code::DeadlineExceeded => timed_out(),
            Code::Cancelled if Instant::now() >= deadline => timed_out(),
            code => Outcome::Failure(format!(
                "error: health rpc probe failed: rpc error: code = {code:?} desc = {}",
                status.message()
            )),
        },
        Ok(Ok(response)) => {
            let status = response.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Outcome::Success("service healthy".into())
            } else {
                let name = ServingStatus::try_from(status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                Outcome::Failure(format!("service unhealthy (responded with {name:?})"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    const UA: &str = "kube-probe/1.33";

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(300)), "300ms");
    }

    #[tokio::test]
    async fn serving_not_serving_and_unknown_services() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("ready", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("draining", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let second = Duration::from_secs(1);
        assert_eq!(
            probe("127.0.0.1", port, "", second, UA).await,
            Outcome::Success("service healthy".into())
        );
        assert_eq!(
            probe("127.0.0.1", port, "ready", second, UA).await,
            Outcome::Success("service healthy".into())
        );
        assert_eq!(
            probe("127.0.0.1", port, "draining", second, UA).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let Outcome::Failure(message) = probe("127.0.0.1", port, "missing", second, UA).await
        else {
            panic!("unknown service must fail");
        };
        assert!(
            message.starts_with("error: health rpc probe failed: rpc error: code = NotFound"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn no_server_and_no_health_service_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let Outcome::Failure(message) =
            probe("127.0.0.1", port, "", Duration::from_secs(1), UA).await
        else {
            panic!("nothing listens");
        };
        assert!(
            message.starts_with(&format!(
                "error: failed to connect service at \"127.0.0.1:{port}\""
            )),
            "{message}"
        );

        // A gRPC server without the health service (the fake CRI runtime).
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let router = tonic::transport::Server::builder()
            .add_service(mk_fake_runtime::FakeRuntime::new().runtime_service());
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        let Outcome::Failure(message) =
            probe("127.0.0.1", port, "", Duration::from_secs(1), UA).await
        else {
            panic!("no health service");
        };
        assert!(
            message.starts_with("error: this server does not implement the grpc health protocol"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts TCP but never speaks HTTP/2.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let started = std::time::Instant::now();
        let Outcome::Failure(message) =
            probe("127.0.0.1", port, "", Duration::from_millis(500), UA).await
        else {
            panic!("silent server");
        };
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(message.starts_with("timeout: "), "{message}");
    }
}
