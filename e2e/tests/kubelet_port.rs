//! The kubelet port end to end: the real agent serving TLS with client-certificate
//! authentication, a static pod on the real runtime, and what the API server would ask of it —
//! container logs, exec and port-forward proxied to the runtime's streaming server. Runs on
//! containerd and again on the Docker adapter (`MK_E2E_RUNTIME=docker`).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mk_e2e::kubelet_port::{client_identity, connect, get};
use mk_e2e::{Agent, busybox_pod, container_state};
use mk_streaming::client::{
    EXEC_PROTOCOL, PORT_FORWARD_PROTOCOL, SessionInput, forward, session, upgrade,
};

const SCRIPT: &str = "echo line-1; echo line-2; echo line-3; mkdir -p /www; echo pong > /www/ping; exec httpd -f -p 8080 -h /www";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exec_and_port_forward_through_the_kubelet_port() -> Result<()> {
    let admin = client_identity("e2e-admin", "system:masters")?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &admin.ca_pem)?;
    let mut agent = Agent::start_with(
        "e2e-port",
        None,
        &format!(
            "authorization:\n  mode: AlwaysAllow\nauthentication:\n  x509:\n    clientCAFile: {}\n",
            ca.display()
        ),
    )?;
    agent.write_manifest("web.yaml", &busybox_pod("web", "Always", 2, SCRIPT))?;
    agent
        .wait_pod("web", mk_e2e::periods().static_pod_start(), |pod| {
            let (state, _, _) = container_state(pod)?;
            (state == "running").then_some(())
        })
        .await?;
    let pod = format!("web-{}", agent.node);

    // Without a client certificate (anonymous is off): 401. With one: the pod list.
    let (code, _) = get(&agent, None, "/pods").await?;
    ensure!(code == 401, "anonymous /pods answered {code}");
    let (code, body) = get(&agent, Some(&admin), "/pods").await?;
    ensure!(code == 200 && body.contains(&pod), "/pods: {code} {body}");

    // Logs, with kubelet's options.
    let mut logs = String::new();
    let deadline = std::time::Instant::now() + mk_e2e::periods().container_output();
    while std::time::Instant::now() < deadline {
        let (code, body) = get(
            &agent,
            Some(&admin),
            &format!("/containerLogs/default/{pod}/main?tailLines=2"),
        )
        .await?;
        ensure!(code == 200, "containerLogs: {code} {body}");
        logs = body;
        if logs == "line-2\nline-3\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(logs == "line-2\nline-3\n", "tailLines=2 gave {logs:?}");
    let (_, stamped) = get(
        &agent,
        Some(&admin),
        &format!("/containerLogs/default/{pod}/main?timestamps=true&limitBytes=200"),
    )
    .await?;
    let first = stamped.lines().next().unwrap_or_default();
    ensure!(
        first.ends_with(" line-1") && first.contains('T') && first.contains('Z'),
        "timestamps=true: {stamped:?}"
    );
    let (code, _) = get(
        &agent,
        Some(&admin),
        &format!("/containerLogs/default/{pod}/nope"),
    )
    .await?;
    ensure!(code == 400, "an unknown container answered {code}");
    let (code, _) = get(&agent, Some(&admin), "/containerLogs/default/absent/main").await?;
    ensure!(code == 404, "an unknown pod answered {code}");

    // Resource metrics, as metrics-server reads them: the pod's container and the node.
    let mut metrics = String::new();
    let wanted = format!(
        "container_memory_working_set_bytes{{container=\"main\",namespace=\"default\",pod=\"{pod}\"}} "
    );
    // Stats come from the runtime, asked on each scrape.
    let deadline = std::time::Instant::now() + mk_e2e::periods().runtime_settles();
    while std::time::Instant::now() < deadline {
        let (code, body) = get(&agent, Some(&admin), "/metrics/resource").await?;
        ensure!(code == 200, "/metrics/resource: {code} {body}");
        metrics = body;
        if metrics.contains(&wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&wanted))
        .with_context(|| format!("no {wanted} in {metrics}"))?;
    let bytes: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("working set value")?;
    ensure!(bytes > 0.0 && bytes < 256.0 * 1024.0 * 1024.0, "{line}");
    ensure!(
        metrics.contains("\nnode_cpu_usage_seconds_total "),
        "{metrics}"
    );
    ensure!(
        metrics.contains(&format!(
            "pod_cpu_usage_seconds_total{{namespace=\"default\",pod=\"{pod}\"}} "
        )),
        "{metrics}"
    );
    ensure!(metrics.contains("\nscrape_error 0\n"), "{metrics}");

    // cAdvisor's container metrics: the running container with its runtime ID, image name (not an
    // image ID) and cgroup (which holds the ID, whatever the runtime's prefix), and the node's root
    // cgroup.
    let (code, cadvisor) = get(&agent, Some(&admin), "/metrics/cadvisor").await?;
    ensure!(code == 200, "/metrics/cadvisor: {code} {cadvisor}");
    let line = cadvisor
        .lines()
        .find(|l| {
            l.starts_with("container_memory_working_set_bytes{container=\"main\",")
                && l.contains(&format!("namespace=\"default\",pod=\"{pod}\"}}"))
        })
        .with_context(|| format!("no working set of main in {cadvisor}"))?;
    let label = |name: &str| -> String {
        let key = format!("{name}=\"");
        line.split_once(&key)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_default()
    };
    let (id, image, runtime_id) = (label("id"), label("image"), label("name"));
    ensure!(
        !runtime_id.is_empty() && image.contains("busybox") && id.contains(&runtime_id),
        "container labels: {line}"
    );
    println!("/metrics/cadvisor: {line}");
    ensure!(
        cadvisor.contains(
            "\ncontainer_cpu_usage_seconds_total{container=\"\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"} "
        ),
        "{cadvisor}"
    );

    // Exec, proxied to the runtime's streaming server.
    let tls = connect(&agent, Some(&admin)).await?;
    let path = format!(
        "/exec/default/{pod}/main?command=sh&command=-c&command=echo%20out%3B%20echo%20err%20%3E%262&stdout=1&stderr=1"
    );
    let (conn, protocol) = upgrade(tls, "127.0.0.1", &path, &[], &[EXEC_PROTOCOL]).await?;
    ensure!(protocol.as_deref() == Some(EXEC_PROTOCOL), "{protocol:?}");
    let out = session(
        conn,
        SessionInput {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        out.stdout == b"out\n" && out.stderr == b"err\n",
        "exec: {out:?}"
    );

    // Port-forward to the pod's web server.
    let mut answer = String::new();
    // httpd starts listening shortly after the container started.
    let deadline = std::time::Instant::now() + mk_e2e::periods().runtime_settles();
    while std::time::Instant::now() < deadline {
        let tls = connect(&agent, Some(&admin)).await?;
        let (conn, _) = upgrade(
            tls,
            "127.0.0.1",
            &format!("/portForward/default/{pod}"),
            &[],
            &[PORT_FORWARD_PROTOCOL],
        )
        .await?;
        let (data, error) = forward(conn, 8080, b"GET /ping HTTP/1.0\r\n\r\n").await?;
        answer = String::from_utf8_lossy(&data).into_owned();
        if answer.ends_with("pong\n") && error.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "port-forward through the kubelet port: {answer:?}\nagent log:\n{}",
        agent.log()
    )
}
