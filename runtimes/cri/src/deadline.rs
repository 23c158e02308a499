//! The caller's gRPC deadline, answered as gRPC says: `DEADLINE_EXCEEDED`.
//!
//! tonic's server enforces the `grpc-timeout` header itself, but answers an expired one with
//! `CANCELLED` ("Timeout expired"). A CRI client (kubelet, crictl, critest) that sees that answer
//! before its own deadline fires reports a cancelled call instead of a timed-out one. This layer sits
//! inside tonic's own timeout with a deadline taken no later than tonic's, so it answers first, with
//! `DEADLINE_EXCEEDED`; the handler's future is dropped, which cancels its work, as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;
use tower::{Layer, Service};

/// The `grpc-timeout` request header (gRPC over HTTP/2: `TimeoutValue TimeoutUnit`).
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Wraps a gRPC service so that a call outliving its `grpc-timeout` is answered `DEADLINE_EXCEEDED`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let timeout = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let call = self.inner.call(req);
        match timeout {
            None => Box::pin(call),
            Some(timeout) => {
                // The deadline is fixed now, before tonic's own timer starts (it is created after
                // this `call` returns), so this one never fires later than tonic's.
                let timed = tokio::time::timeout(timeout, call);
                Box::pin(async move {
                    match timed.await {
                        Ok(answer) => answer,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                            "the caller's deadline ({timeout:?}) passed before the call finished"
                        ))
                        .into_http()),
                    }
                })
            }
        }
    }
}

/// Parses a `grpc-timeout` value: up to 8 ASCII digits and one unit of `H`, `M`, `S`, `m`, `u`, `n`.
/// Anything else is ignored (no deadline), as tonic does.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        let table: &[(&str, Option<Duration>)] = &[
            ("1m", Some(Duration::from_millis(1))),
            ("2H", Some(Duration::from_secs(7200))),
            ("3M", Some(Duration::from_secs(180))),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("250u", Some(Duration::from_micros(250))),
            ("7n", Some(Duration::from_nanos(7))),
            ("m", None),
            ("", None),
            ("123456789S", None),
            ("10x", None),
            ("-1S", None),
            ("1.5S", None),
            ("١S", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_grpc_timeout(value), *want, "{value:?}");
        }
    }

    /// A handler that answers after `delay`.
    fn slow_handler(
        delay: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = impl Future<
            Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
        > + Send
                 + 'static,
    > + Clone {
        tower::service_fn(move |_: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok(http::Response::new(tonic::body::Body::default()))
        })
    }

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::new(());
        if let Some(timeout) = timeout {
            request.headers_mut().insert(
                GRPC_TIMEOUT,
                http::HeaderValue::from_str(timeout).expect("header value"),
            );
        }
        request
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn an_expired_deadline_is_answered_deadline_exceeded() {
        use tower::ServiceExt;
        let service = DeadlineLayer.layer(slow_handler(Duration::from_millis(300)));
        let response = service
            .clone()
            .oneshot(request(Some("20m")))
            .await
            .expect("infallible");
        assert_eq!(
            grpc_status(&response),
            Some(&*(tonic::Code::DeadlineExceeded as i32).to_string()),
            "{response:?}"
        );

        // Within its deadline, or without one, the handler's own answer goes through.
        let response = service
            .clone()
            .oneshot(request(Some("30S")))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&response), None, "{response:?}");
        let response = service.oneshot(request(None)).await.expect("infallible");
        assert_eq!(grpc_status(&response), None, "{response:?}");
    }
}
