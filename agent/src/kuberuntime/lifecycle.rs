//! Container lifecycle hooks (postStart, preStop) as kubelet runs them (`pkg/kubelet/lifecycle`):
//! exec through CRI ExecSync, httpGet against the pod, or sleep.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mk_cri::{CriClient, api};

/// A port given by number or by the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port: {name} in {}", container.name))
        }
    }
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<u16, String> {
    let request = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let mut builder = hyper::Request::get(path)
            .header("Host", format!("{host}:{port}"))
            .header("User-Agent", "kube-lifecycle/1.33");
        for (k, v) in headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let req = builder
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok::<u16, String>(status)
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

/// Runs a hook. `timeout` bounds it (preStop: the grace period). Returns kubelet's error text.
pub async fn run(
    cri: &CriClient,
    handler: &LifecycleHandler,
    container: &Container,
    container_id: &str,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &handler.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        let resp = cri
            .exec_sync(api::ExecSyncRequest {
                container_id: container_id.to_string(),
                cmd: cmd.clone(),
                timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            })
            .await
            .map_err(|e| format!("command '{}' failed: {e}", cmd.join(" ")))?;
        if resp.exit_code != 0 {
            return Err(format!(
                "command '{}' exited with {}: {}",
                cmd.join(" "),
                resp.exit_code,
                String::from_utf8_lossy(&resp.stderr).trim()
            ));
        }
        return Ok(());
    }
    if let Some(get) = &handler.http_get {
        let host = get
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| pod_ip.map(String::from))
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = resolve_port(&get.port, container)?;
        let headers: Vec<(String, String)> = get
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let status = http_get(&host, port, &path, &headers, timeout)
            .await
            .map_err(|e| format!("HTTP lifecycle hook ({path}) failed: {e}"))?;
        if !(200..400).contains(&status) {
            return Err(format!(
                "HTTP lifecycle hook ({path}) for Container \"{}\" failed - error: received status code {status}",
                container.name
            ));
        }
        return Ok(());
    }
    if let Some(sleep) = &handler.sleep {
        let wanted = Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0));
        tokio::time::sleep(wanted.min(timeout)).await;
        return Ok(());
    }
    Err("a lifecycle handler needs exec, httpGet or sleep".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]})).expect("c")
    }

    #[test]
    fn ports_by_number_or_name() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("9090".into()), &c),
            Ok(9090)
        );
        assert!(resolve_port(&IntOrString::String("grpc".into()), &c).is_err());
    }

    #[tokio::test]
    async fn http_hook_succeeds_on_2xx_and_fails_otherwise() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(body.as_bytes()).await;
            }
        });
        let handler: LifecycleHandler =
            serde_json::from_value(serde_json::json!({"httpGet": {"path": "/hook", "port": port}}))
                .expect("h");
        let cri = CriClient::new(
            "unix:///nonexistent.sock",
            Duration::from_secs(1),
            Default::default(),
        )
        .expect("client");
        let c = container();
        assert_eq!(
            run(
                &cri,
                &handler,
                &c,
                "id",
                Some("127.0.0.1"),
                Duration::from_secs(2)
            )
            .await,
            Ok(())
        );
        let err = run(
            &cri,
            &handler,
            &c,
            "id",
            Some("127.0.0.1"),
            Duration::from_secs(2),
        )
        .await
        .expect_err("500");
        assert!(err.contains("received status code 500"), "{err}");
    }
}
