use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;

const UA: &str = "kube-probe/1.33";

fn action(port: IntOrString, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        port,
        path: Some(path.into()),
        ..Default::default()
    }
}

fn container() -> Container {
    Container {
        name: "app".into(),
        ports: Some(vec![ContainerPort {
            name: Some("web".into()),
            container_port: 8080,
            ..Default::default()
        }]),
        ..Default::default()
    }
}

#[test]
fn requests_are_built_like_kubelets() {
    let c = container();
    let r = build_request(
        &action(IntOrString::String("web".into()), "/healthz?full=1"),
        &c,
        Some("10.0.0.5"),
        UA,
    )
    .expect("request");
    assert_eq!(r.url.as_str(), "http://10.0.0.5:8080/healthz?full=1");
    assert_eq!(r.host, None);
    assert_eq!(
        r.headers.get(USER_AGENT).map(|v| v.as_bytes()),
        Some(UA.as_bytes())
    );
    assert_eq!(
        r.headers.get(ACCEPT).map(|v| v.as_bytes()),
        Some(&b"*/*"[..])
    );

    // (scheme, host, path, pod IP) -> URL
    let table = [
        (None, None, "", Some("10.0.0.5"), "http://10.0.0.5:8080/"),
        (
            Some("HTTPS"),
            None,
            "ready",
            Some("10.0.0.5"),
            "https://10.0.0.5:8080/ready",
        ),
        (
            Some("HTTP"),
            Some("example.com"),
            "/x",
            None,
            "http://example.com:8080/x",
        ),
        (None, None, "/", Some("fd00::5"), "http://[fd00::5]:8080/"),
    ];
    for (scheme, host, path, ip, want) in table {
        let mut a = action(IntOrString::Int(8080), path);
        a.scheme = scheme.map(String::from);
        a.host = host.map(String::from);
        let r = build_request(&a, &c, ip, UA).expect("request");
        assert_eq!(r.url.as_str(), want);
    }

    assert!(matches!(
        build_request(&action(IntOrString::Int(80), "/"), &c, None, UA),
        Err(ProbeError::NoPodIp)
    ));
    assert!(matches!(
        build_request(
            &action(IntOrString::String("nope".into()), "/"),
            &c,
            Some("10.0.0.5"),
            UA
        ),
        Err(ProbeError::PortNotFound(_))
    ));
}

#[test]
fn user_headers_override_defaults() {
    let mut a = action(IntOrString::Int(80), "/");
    a.http_headers = Some(vec![
        HTTPHeader {
            name: "Host".into(),
            value: "svc.example".into(),
        },
        HTTPHeader {
            name: "User-Agent".into(),
            value: "custom".into(),
        },
        HTTPHeader {
            name: "Accept".into(),
            value: String::new(),
        },
        HTTPHeader {
            name: "X-Token".into(),
            value: "a".into(),
        },
        HTTPHeader {
            name: "X-Token".into(),
            value: "b".into(),
        },
    ]);
    let r = build_request(&a, &container(), Some("10.0.0.5"), UA).expect("request");
    assert_eq!(r.host.as_deref(), Some("svc.example"));
    assert!(r.headers.get(HOST).is_none());
    assert_eq!(
        r.headers.get(USER_AGENT).map(|v| v.as_bytes()),
        Some(&b"custom"[..])
    );
    assert!(
        r.headers.get(ACCEPT).is_none(),
        "an empty Accept removes it"
    );
    assert_eq!(r.headers.get_all("x-token").iter().count(), 2);

    a.http_headers = Some(vec![HTTPHeader {
        name: "bad header".into(),
        value: "x".into(),
    }]);
    assert!(matches!(
        build_request(&a, &container(), Some("10.0.0.5"), UA),
        Err(ProbeError::InvalidHeader { .. })
    ));
}

#[test]
fn status_classification() {
    let table = [
        (200, Outcome::Success("ok".into())),
        (204, Outcome::Success("ok".into())),
        (299, Outcome::Success("ok".into())),
        (
            301,
            Outcome::Warning("Probe terminated redirects, Response body: ok".into()),
        ),
        (
            399,
            Outcome::Warning("Probe terminated redirects, Response body: ok".into()),
        ),
        (
            199,
            Outcome::Failure("HTTP probe failed with statuscode: 199".into()),
        ),
        (
            400,
            Outcome::Failure("HTTP probe failed with statuscode: 400".into()),
        ),
        (
            500,
            Outcome::Failure("HTTP probe failed with statuscode: 500".into()),
        ),
    ];
    for (status, want) in table {
        assert_eq!(classify(status, "ok"), want, "{status}");
    }
}

/// What the test server answers for a path: status, extra header lines, body, delay.
type Route = (u16, String, String, Duration);

/// A tiny HTTP/1.1 server (plain or TLS) recording each request's head.
struct Server {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(
        tls: Option<TlsAcceptor>,
        route: impl Fn(&str) -> Route + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let route = Arc::new(route);
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let route = route.clone();
                let seen = seen.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                answer(stream, &*route, &seen).await;
                            }
                        }
                        None => answer(stream, &*route, &seen).await,
                    }
                });
            }
        });
        Self { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }

    fn url(&self, scheme: &str, path: &str) -> HttpRequest {
        let mut a = action(IntOrString::Int(i32::from(self.port)), path);
        a.scheme = Some(scheme.into());
        build_request(&a, &container(), Some("127.0.0.1"), UA).expect("request")
    }
}

async fn answer<S>(
    stream: S,
    route: &(dyn Fn(&str) -> Route + Send + Sync),
    seen: &Mutex<Vec<String>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    seen.lock().expect("lock").push(head);
    let (status, extra, body, delay) = route(&path);
    tokio::time::sleep(delay).await;
    let response = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let mut stream = reader.into_inner();
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn ok(body: &str) -> Route {
    (200, String::new(), body.into(), Duration::ZERO)
}

fn tls() -> TlsConnector {
    insecure_tls().expect("tls client")
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn statuses_bodies_and_headers_over_http() {
    let server = Server::start(None, |path| match path {
        "/ok" => ok("fine"),
        "/fail" => (500, String::new(), "secret details".into(), Duration::ZERO),
        "/big" => ok(&"x".repeat(MAX_BODY * 3)),
        _ => (404, String::new(), String::new(), Duration::ZERO),
    })
    .await;
    assert_eq!(
        probe(&server.url("HTTP", "/ok"), SECOND, &tls())
            .await
            .expect("probe"),
        Outcome::Success("fine".into())
    );
    assert_eq!(
        probe(&server.url("HTTP", "/fail"), SECOND, &tls())
            .await
            .expect("probe"),
        Outcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    let Outcome::Success(body) = probe(&server.url("HTTP", "/big"), SECOND, &tls())
        .await
        .expect("probe")
    else {
        panic!("big body");
    };
    assert_eq!(body.len(), MAX_BODY, "body is limited");

    let head = server.heads().into_iter().next().expect("a request");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("GET /ok HTTP/1.1\r\n"), "{head}");
    assert!(
        lower.contains(&format!("host: 127.0.0.1:{}\r\n", server.port)),
        "{head}"
    );
    assert!(lower.contains("user-agent: kube-probe/1.33\r\n"), "{head}");
    assert!(lower.contains("accept: */*\r\n"), "{head}");
    assert!(lower.contains("connection: close\r\n"), "{head}");
    assert!(!lower.contains("accept-encoding"), "{head}");
}

#[tokio::test]
async fn custom_host_header_is_sent() {
    let server = Server::start(None, |_| ok("")).await;
    let mut a = action(IntOrString::Int(i32::from(server.port)), "/");
    a.http_headers = Some(vec![HTTPHeader {
        name: "Host".into(),
        value: "svc.example".into(),
    }]);
    let r = build_request(&a, &container(), Some("127.0.0.1"), UA).expect("request");
    assert!(probe(&r, SECOND, &tls()).await.expect("probe").is_success());
    let head = server.heads().remove(0).to_ascii_lowercase();
    assert!(head.contains("host: svc.example\r\n"), "{head}");
    assert_eq!(head.matches("host:").count(), 1, "{head}");
}

#[tokio::test]
async fn https_without_certificate_verification() {
    let cert = CertificateDer::from(include_bytes!("../testdata/cert.der").to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        include_bytes!("../testdata/key.der").to_vec(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    let server = Server::start(Some(TlsAcceptor::from(Arc::new(config))), |_| ok("secure")).await;
    assert_eq!(
        probe(&server.url("HTTPS", "/"), SECOND, &tls())
            .await
            .expect("probe"),
        Outcome::Success("secure".into())
    );
    // Plain HTTP against the TLS port is a failure, not an error.
    let outcome = probe(&server.url("HTTP", "/"), SECOND, &tls())
        .await
        .expect("probe");
    assert!(matches!(outcome, Outcome::Failure(_)), "{outcome:?}");
}

#[tokio::test]
async fn redirects_on_the_same_host_are_followed_others_are_a_warning() {
    let other = Server::start(None, |_| ok("elsewhere")).await;
    let other_port = other.port;
    let server = Server::start(None, move |path| match path {
        "/old" => (
            302,
            "Location: /new\r\n".into(),
            String::new(),
            Duration::ZERO,
        ),
        "/new" => ok("moved"),
        "/broken" => (
            301,
            "Location: /fail\r\n".into(),
            String::new(),
            Duration::ZERO,
        ),
        "/fail" => (503, String::new(), String::new(), Duration::ZERO),
        "/away" => (
            302,
            format!("Location: http://localhost:{other_port}/\r\n"),
            "see other".into(),
            Duration::ZERO,
        ),
        "/loop" => (
            307,
            "Location: /loop\r\n".into(),
            String::new(),
            Duration::ZERO,
        ),
        "/nolocation" => (302, String::new(), "stay".into(), Duration::ZERO),
        _ => ok(""),
    })
    .await;
    let run = |path: &'static str| {
        let request = server.url("HTTP", path);
        async move { probe(&request, SECOND, &tls()).await.expect("probe") }
    };
    assert_eq!(run("/old").await, Outcome::Success("moved".into()));
    assert_eq!(
        run("/broken").await,
        Outcome::Failure("HTTP probe failed with statuscode: 503".into())
    );
    assert_eq!(
        run("/away").await,
        Outcome::Warning("Probe terminated redirects, Response body: see other".into())
    );
    assert!(other.heads().is_empty(), "the other host is not asked");
    let Outcome::Failure(message) = run("/loop").await else {
        panic!("redirect loop");
    };
    assert!(message.ends_with("stopped after 10 redirects"), "{message}");
    assert_eq!(
        run("/nolocation").await,
        Outcome::Warning("Probe terminated redirects, Response body: stay".into())
    );
}

#[tokio::test]
async fn refused_and_slow_are_failures() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let request = build_request(
        &action(IntOrString::Int(i32::from(port)), "/healthz"),
        &container(),
        Some("127.0.0.1"),
        UA,
    )
    .expect("request");
    assert_eq!(
        probe(&request, SECOND, &tls()).await.expect("probe"),
        Outcome::Failure(format!(
            "Get \"http://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: connection refused"
        ))
    );

    let slow = Server::start(None, |_| {
        (200, String::new(), String::new(), Duration::from_secs(5))
    })
    .await;
    let started = std::time::Instant::now();
    let outcome = probe(&slow.url("HTTP", "/"), Duration::from_millis(300), &tls())
        .await
        .expect("probe");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        outcome,
        Outcome::Failure(format!(
            "Get \"http://127.0.0.1:{}/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            slow.port
        ))
    );
}
