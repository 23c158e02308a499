//! What only a real cluster can show: the agent joined to the real control plane that
//! `e2e/scripts/controlplane-up.sh` starts (`MK_E2E_CONTROLPLANE`; these tests fail with
//! instructions without it), seen as its users see it.
//! - kubectl through the API server to the node's port: the API server's own client certificate,
//!   authorized by the agent with a real SubjectAccessReview (logs, exec, attach, port-forward),
//!   and the resource metrics a metrics pipeline scrapes;
//! - workloads the real scheduler and controllers drive: a Deployment of 20 replicas rolled out and
//!   scaled to zero, a DaemonSet, a failing Job, a StatefulSet;
//! - node lifecycle: a stopped agent's node turns NotReady, is tainted, its pod evicted; the agent
//!   back cleans up and reports Ready;
//! - a pod calling the API with its projected service-account token.
//!
//! Several tests' nodes join the same control plane: every workload is pinned to its test's node
//! (nodeSelector `kubernetes.io/hostname`) and lives in its test's own namespace.
//! Run through `e2e/run-tests.sh`.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use mk_cri::api;
use mk_e2e::real_cluster::{
    BUSYBOX_SECOND_TAG, RealCluster, has_taint, log_tail, name, phase, ready_status, running_ready,
    wait_until,
};
use mk_e2e::{Agent, BUSYBOX, periods};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A workload that stops at once on SIGTERM.
const RUNNING: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";
/// The grace period of every workload here (their containers exit on SIGTERM).
const GRACE: Duration = Duration::from_secs(2);

/// A pod spec pinned to `node`, with one busybox container `main` running `script`.
fn pod_spec(node: &str, restart_policy: &str, script: &str) -> serde_json::Value {
    json!({
        "nodeSelector": {"kubernetes.io/hostname": node},
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": GRACE.as_secs(),
        "containers": [{
            "name": "main",
            "image": BUSYBOX,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script],
        }],
    })
}

fn pod(namespace: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": spec,
    })
}

/// The restart count of the pod's container `container`.
fn restarts(pod: &Pod, container: &str) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
        .map(|c| c.restart_count)
}

/// Waits until the pod satisfies `check`, failing with its last status and the agent's log.
async fn wait_pod(
    rc: &RealCluster,
    agent: &Agent,
    namespace: &str,
    pod_name: &str,
    timeout: Duration,
    check: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    rc.cluster
        .wait_pod(namespace, pod_name, timeout, |p| {
            check(p).then(|| p.clone())
        })
        .await
        .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))
}

/// The agent's containers in the runtime, by state.
async fn containers(agent: &Agent, state: api::ContainerState) -> Result<Vec<api::Container>> {
    Ok(agent
        .containers()
        .await?
        .into_iter()
        .filter(|c| c.state == state as i32)
        .collect())
}

/// The pod a runtime container belongs to (kubelet's label).
fn container_pod(c: &api::Container) -> String {
    c.labels
        .get("io.kubernetes.pod.name")
        .cloned()
        .unwrap_or_default()
}

/// Waits until the agent has no container and no sandbox left in the runtime.
async fn wait_runtime_empty(agent: &Agent, timeout: Duration) -> Result<()> {
    wait_until(
        format!("the runtime objects of node {}", agent.node),
        timeout,
        || async {
            let containers = agent.containers().await?;
            let sandboxes = agent.sandboxes().await?;
            Ok(if containers.is_empty() && sandboxes.is_empty() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!(
                    "{} containers ({:?}), {} sandboxes",
                    containers.len(),
                    containers.iter().map(container_pod).collect::<Vec<_>>(),
                    sandboxes.len()
                ))
            })
        },
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_exec_attach_and_port_forward_reach_the_pod_through_the_api_server()
-> Result<()> {
    let (rc, space, agent) = RealCluster::with_node("rc-kubectl").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();

    // main: fails once (for --previous), then prints five lines and a tick a second (for logs,
    // --tail and -f). echo: echoes what its stdin receives (attach -i). shell: a shell on a
    // terminal (attach -it). srv: a web server and an echo server (port-forward).
    let main = "if [ -e /data/ran ]; then echo second-run; else touch /data/ran; echo first-run; \
                exit 1; fi; for i in 1 2 3 4 5; do echo \"line $i\"; done; trap 'exit 0' TERM; \
                i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 1; done";
    let srv = "mkdir -p /www && seq 1 40000 > /www/numbers && httpd -p 8080 -h /www && \
               exec nc -ll -p 9000 -e cat";
    let container = |name: &str, command: serde_json::Value| json!({"name": name, "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": command});
    let mut spec = pod_spec(&agent.node, "Always", main);
    spec["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    spec["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    let containers_json = spec["containers"].as_array_mut().context("containers")?;
    let mut echo = container(
        "echo",
        json!(["sh", "-c", "while read line; do echo \"got: $line\"; done"]),
    );
    echo["stdin"] = json!(true);
    let mut shell = container("shell", json!(["sh"]));
    shell["stdin"] = json!(true);
    shell["tty"] = json!(true);
    containers_json.extend([echo, shell, container("srv", json!(["sh", "-c", srv]))]);
    rc.apply(&pod(ns, "talk", spec)).await?;
    // The first instance of main exits at once and is restarted without back-off.
    wait_pod(
        &rc,
        &agent,
        ns,
        "talk",
        periods().scheduled_pod_start() + periods().restart_immediate(),
        |p| running_ready(p) && restarts(p, "main") == Some(1),
    )
    .await?;
    let to_node = periods().kubectl_to_node();

    // kubectl logs: the running instance's output, then its last lines, then the one before.
    let logs = rc
        .kubectl_within(&["logs", "-n", ns, "talk", "-c", "main"], to_node)
        .await?;
    ensure!(
        logs.starts_with("second-run\nline 1\nline 2\nline 3\nline 4\nline 5\n"),
        "kubectl logs:\n{logs}"
    );
    ensure!(!logs.contains("first-run"), "kubectl logs:\n{logs}");
    let tail = rc
        .kubectl_within(
            &["logs", "-n", ns, "talk", "-c", "main", "--tail=2"],
            to_node,
        )
        .await?;
    let tail_lines: Vec<&str> = tail.lines().collect();
    ensure!(
        tail_lines.len() == 2 && tail_lines.iter().all(|l| l.starts_with("tick ")),
        "kubectl logs --tail=2:\n{tail}"
    );
    let previous = rc
        .kubectl_within(
            &["logs", "-n", ns, "talk", "-c", "main", "--previous"],
            to_node,
        )
        .await?;
    ensure!(
        previous == "first-run\n",
        "kubectl logs --previous:\n{previous}"
    );

    // kubectl logs -f: once it printed what was there, a line written afterwards (straight into
    // the container's stdout) follows.
    let mut follow = rc
        .kubectl_stream(&["logs", "-f", "-n", ns, "talk", "-c", "main"], None)
        .await?;
    follow.read_until(to_node, |l| l == "line 5").await?;
    rc.kubectl_within(
        &[
            "exec",
            "-n",
            ns,
            "talk",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "echo followed > /proc/1/fd/1",
        ],
        to_node,
    )
    .await?;
    follow
        .read_until(to_node + periods().container_output(), |l| l == "followed")
        .await?;
    follow.stop().await?;

    // kubectl exec -i: stdin in, stdout and stderr out, the exit code back.
    let out = rc
        .kubectl_output(
            &[
                "exec", "-i", "-n", ns, "talk", "-c", "main", "--", "tr", "a-z", "A-Z",
            ],
            b"hello through the api server\n",
            to_node,
        )
        .await?;
    ensure!(
        out.status.success() && out.stdout == b"HELLO THROUGH THE API SERVER\n",
        "kubectl exec -i: {out:?}"
    );
    let out = rc
        .kubectl_output(
            &[
                "exec",
                "-n",
                ns,
                "talk",
                "-c",
                "main",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 7",
            ],
            b"",
            to_node,
        )
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(7)
            && out.stdout == b"out\n"
            && stderr.contains("err\n")
            && stderr.contains("command terminated with exit code 7"),
        "kubectl exec with exit code 7: {out:?}"
    );

    // kubectl exec -it in a terminal: a shell on a terminal of the user's size, which ends with
    // the user's `exit`.
    let session = rc
        .kubectl_in_terminal(
            &[
                "exec", "-i", "-t", "-n", ns, "talk", "-c", "main", "--", "sh",
            ],
            (40, 100),
            "# ",
            "stty size; tty; echo typed-$((6*7)); exit\r",
            "typed-42",
            true,
            to_node,
        )
        .await?;
    ensure!(
        session.exit_code == Some(0)
            && session.shown.contains("40 100")
            && session.shown.contains("/dev/pts/"),
        "kubectl exec -it: {session:?}"
    );

    // kubectl attach -i: what the user types reaches the container's stdin; its answer comes back.
    let mut attach = rc
        .kubectl_stream(
            &["attach", "-i", "-n", ns, "talk", "-c", "echo"],
            Some(b"hello attach\n"),
        )
        .await?;
    attach
        .read_until(to_node, |l| l == "got: hello attach")
        .await?;
    attach.stop().await?;
    // kubectl attach -it: the shell on the container's terminal.
    let session = rc
        .kubectl_in_terminal(
            &["attach", "-i", "-t", "-n", ns, "talk", "-c", "shell"],
            (40, 100),
            "If you don't see a command prompt",
            "echo attached-$((6*7))\r",
            "attached-42",
            false,
            to_node,
        )
        .await?;
    ensure!(session.shown.contains("attached-42"), "{session:?}");

    // kubectl port-forward: a file served in the pod, and bytes echoed back, both through the
    // API server and the node.
    let mut forward = rc
        .kubectl_stream(
            &["port-forward", "-n", ns, "pod/talk", ":8080", ":9000"],
            None,
        )
        .await?;
    let mut ports = std::collections::HashMap::new();
    while ports.len() < 2 {
        let line = forward
            .read_until(to_node, |l| l.starts_with("Forwarding from 127.0.0.1:"))
            .await?;
        // "Forwarding from 127.0.0.1:LOCAL -> REMOTE"
        let (local, remote) = line
            .trim_start_matches("Forwarding from 127.0.0.1:")
            .split_once(" -> ")
            .with_context(|| format!("unexpected line {line:?}"))?;
        ports.insert(remote.trim().to_string(), local.trim().parse::<u16>()?);
    }
    let http = reqwest::Client::builder().timeout(to_node).build()?;
    let body = http
        .get(format!("http://127.0.0.1:{}/numbers", ports["8080"]))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let expected: String = (1..=40000).map(|i| format!("{i}\n")).collect();
    ensure!(
        body == expected,
        "port-forward to 8080 returned {} bytes, {} expected",
        body.len(),
        expected.len()
    );
    let mut echo = tokio::net::TcpStream::connect(("127.0.0.1", ports["9000"])).await?;
    let sent: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    echo.write_all(&sent).await?;
    let mut received = vec![0u8; sent.len()];
    tokio::time::timeout(to_node, echo.read_exact(&mut received))
        .await
        .context("the echoed bytes did not all come back")??;
    ensure!(received == sent, "port-forward to 9000 changed the bytes");
    drop(echo);
    forward.stop().await?;
    Ok(())
}

/// The HTTP status and body of a GET to the agent's kubelet port with curl's `auth` arguments.
async fn kubelet_get(agent: &Agent, path: &str, auth: &[&str]) -> Result<(u16, String)> {
    let serving = agent.dir.path().join("root/pki/kubelet.crt");
    let timeout = periods().kubectl_to_node();
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            &timeout.as_secs().to_string(),
            "--cacert",
        ])
        .arg(&serving)
        .args(auth)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{}{path}", agent.kubelet_port))
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    ensure!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status code")?;
    Ok((code.parse()?, body.to_string()))
}

/// `kubectl top pod` reads the metrics.k8s.io API, which only metrics-server (an aggregated API
/// server) serves: it is not part of this control plane, and there is no image of it here and no
/// registry to pull one from. Nor can the API server's node proxy show the endpoint
/// (`kubectl get --raw /api/v1/nodes/<node>/proxy/metrics/resource`): it refuses nodes whose
/// address is loopback ("address not allowed"). So this test scrapes `/metrics/resource` on the
/// node's port as metrics-server would, and checks who the agent lets in: the API server's
/// kubelet client (bound to `system:kubelet-api-admin`), and a ServiceAccount only once RBAC
/// grants it `nodes/metrics` — both decided by real TokenReviews and SubjectAccessReviews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_metrics_are_served_to_whom_rbac_allows() -> Result<()> {
    let (rc, mut space, agent) = RealCluster::with_node("rc-metrics").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    rc.apply(&pod(ns, "busy", pod_spec(&agent.node, "Always", RUNNING)))
        .await?;
    wait_pod(
        &rc,
        &agent,
        ns,
        "busy",
        periods().scheduled_pod_start(),
        running_ready,
    )
    .await?;

    let pki = rc.control_plane.dir.join("pki");
    let (cert, key) = (
        pki.join("apiserver-kubelet-client.crt"),
        pki.join("apiserver-kubelet-client.key"),
    );
    let api_server = [
        "--cert",
        cert.to_str().context("path")?,
        "--key",
        key.to_str().context("path")?,
    ];
    let series = format!(
        "container_cpu_usage_seconds_total{{container=\"main\",namespace=\"{ns}\",pod=\"busy\"}}"
    );
    // The pod's first stats are there from the relist after its start.
    let body = wait_until(
        "the pod's series in /metrics/resource",
        periods().relist_seen() + periods().kubectl_to_node(),
        || async {
            let (code, body) = kubelet_get(&agent, "/metrics/resource", &api_server).await?;
            ensure!(code == 200, "the API server's identity got {code}: {body}");
            Ok(if body.contains(&series) {
                ControlFlow::Break(body)
            } else {
                ControlFlow::Continue(body)
            })
        },
    )
    .await?;
    for metric in [
        "node_cpu_usage_seconds_total",
        "node_memory_working_set_bytes",
        "pod_memory_working_set_bytes",
        "container_memory_working_set_bytes",
    ] {
        ensure!(body.contains(metric), "{metric} missing:\n{body}");
    }

    rc.kubectl(&["create", "serviceaccount", "-n", ns, "metrics-reader"])
        .await?;
    let token = rc
        .kubectl(&["create", "token", "-n", ns, "metrics-reader"])
        .await?;
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let user = format!("system:serviceaccount:{ns}:metrics-reader");
    let (code, body) = kubelet_get(&agent, "/metrics/resource", &["-H", &bearer]).await?;
    ensure!(
        code == 403
            && body.contains(&format!(
                "Forbidden (user={user}, verb=get, resource=nodes, subresource=metrics)"
            )),
        "a ServiceAccount without RBAC got {code}: {body}"
    );
    // Granted nodes/metrics, it is let in once the agent asks again.
    let role = format!("{ns}-node-metrics");
    space.remove_when_done(format!("clusterrole/{role}"));
    space.remove_when_done(format!("clusterrolebinding/{role}"));
    rc.kubectl(&[
        "create",
        "clusterrole",
        &role,
        "--verb=get",
        "--resource=nodes/metrics",
    ])
    .await?;
    rc.kubectl(&[
        "create",
        "clusterrolebinding",
        &role,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount={ns}:metrics-reader"),
    ])
    .await?;
    wait_until(
        "the granted ServiceAccount let in",
        periods().authz_denial_expired(),
        || async {
            let (code, body) = kubelet_get(&agent, "/metrics/resource", &["-H", &bearer]).await?;
            Ok(match code {
                200 if body.contains(&series) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(format!("{code}: {}", log_tail(&body, 3))),
            })
        },
    )
    .await?;
    Ok(())
}

/// A `kubectl top` quantity: CPU in millicores ("249m", "1"), memory in MiB ("33Mi", "1Gi").
fn top_quantity(text: &str) -> Option<u64> {
    let (digits, scale) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let n: u64 = digits.parse().ok()?;
    match scale {
        "" => Some(n * 1000),
        "m" | "Mi" => Some(n),
        "Ki" => Some(n / 1024),
        "Gi" => Some(n * 1024),
        _ => None,
    }
}

/// Runs `kubectl ARGS` (a `kubectl top`) until `pick` finds the CPU and memory columns in its one
/// row, and returns them in millicores and MiB. metrics-server answers "metrics not available yet"
/// until it has scraped enough samples.
async fn wait_top(
    rc: &RealCluster,
    args: &[&str],
    pick: impl for<'a> Fn(&[&'a str]) -> Option<(&'a str, &'a str)>,
) -> Result<(u64, u64)> {
    wait_until(
        format!("kubectl {}", args.join(" ")),
        periods().top_shows_pod(),
        || async {
            let shown = match rc.kubectl(args).await {
                Ok(out) => out,
                Err(e) => return Ok(ControlFlow::Continue(format!("{e:#}"))),
            };
            let row: Vec<&str> = shown.split_whitespace().collect();
            let figures = pick(&row)
                .and_then(|(cpu, memory)| Some((top_quantity(cpu)?, top_quantity(memory)?)));
            Ok(match figures {
                Some(figures) => ControlFlow::Break(figures),
                None => ControlFlow::Continue(shown),
            })
        },
    )
    .await
}

/// `kubectl top pod` and `kubectl top node` through the real metrics-server, which scrapes the
/// node's `/metrics/resource` with its own identity (RBAC `nodes/metrics`, judged by the agent
/// with a real SubjectAccessReview) and serves `metrics.k8s.io` behind the API server's
/// aggregator: the figures are what the container really uses — a busy loop capped at 250m by its
/// CPU limit, and a shell holding a 32 MiB string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_shows_what_the_pod_and_node_use() -> Result<()> {
    let (rc, space, agent) = RealCluster::with_node("rc-top").await?;
    let ns = space.name.as_str();
    let burn = "x=$(head -c 33554432 /dev/zero | tr '\\0' a); trap 'exit 0' TERM; \
                while true; do :; done";
    let mut spec = pod_spec(&agent.node, "Always", burn);
    spec["containers"][0]["resources"] = json!({"limits": {"cpu": "250m", "memory": "256Mi"}});
    rc.apply(&pod(ns, "burn", spec)).await?;
    wait_pod(
        &rc,
        &agent,
        ns,
        "burn",
        periods().scheduled_pod_start(),
        running_ready,
    )
    .await?;

    let args = [
        "top",
        "pod",
        "burn",
        "-n",
        ns,
        "--containers",
        "--no-headers",
    ];
    let (cpu, memory) = wait_top(&rc, &args, |row| match row {
        ["burn", "main", cpu, memory] => Some((*cpu, *memory)),
        _ => None,
    })
    .await?;
    ensure!(
        (50..=300).contains(&cpu),
        "kubectl top pod: {cpu}m CPU for a busy loop capped at 250m"
    );
    ensure!(
        (32..=256).contains(&memory),
        "kubectl top pod: {memory}Mi for a shell holding 32 MiB"
    );

    // The node's CPU is a rate between two scrapes too (there is no start time to count from).
    let args = ["top", "node", &agent.node, "--no-headers"];
    let (node_cpu, node_memory) = wait_top(&rc, &args, |row| match row {
        [name, cpu, _, memory, _] if *name == agent.node => Some((*cpu, *memory)),
        _ => None,
    })
    .await?;
    println!("kubectl top: pod {cpu}m {memory}Mi, node {node_cpu}m {node_memory}Mi");
    // The node's figures are the whole machine's (its root cgroup), which holds the pod.
    ensure!(
        node_cpu >= cpu / 2 && node_memory >= memory,
        "kubectl top node: {node_cpu}m CPU, {node_memory}Mi beside the pod's {cpu}m, {memory}Mi"
    );
    Ok(())
}

/// `kubectl rollout status` of `object`, bounded by `timeout`.
async fn rollout_status(
    rc: &RealCluster,
    agent: &Agent,
    namespace: &str,
    object: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = format!("--timeout={}s", timeout.as_secs());
    rc.kubectl_within(
        &["rollout", "status", "-n", namespace, object, &deadline],
        timeout + periods().kubectl(),
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_of_20_replicas_runs_rolls_to_a_new_image_and_scales_to_zero() -> Result<()> {
    const REPLICAS: u32 = 20;
    const SURGE: u32 = 5;
    let (rc, space, agent) = RealCluster::with_node("rc-deploy").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    let second = agent
        .cri()
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: BUSYBOX_SECOND_TAG.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?;
    ensure!(
        second.image.is_some(),
        "{BUSYBOX_SECOND_TAG} is not in the runtime: start containerd with this branch's \
         e2e/scripts/containerd-up.sh, which tags it"
    );

    let deployments: Api<Deployment> = Api::namespaced(rc.cluster.client.clone(), ns);
    rc.apply(&json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": SURGE, "maxUnavailable": SURGE}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": pod_spec(&agent.node, "Always", RUNNING),
            },
        },
    }))
    .await?;
    let ready = periods().controller_pods_ready(REPLICAS);
    rollout_status(&rc, &agent, ns, "deployment/web", ready).await?;
    let pods = rc.list_pods(ns, "app=web").await?;
    ensure!(
        pods.len() == REPLICAS as usize
            && pods.iter().all(|p| running_ready(p)
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(agent.node.as_str())),
        "pods: {:?}",
        pods.iter().map(|p| (name(p), phase(p))).collect::<Vec<_>>()
    );
    let running = containers(&agent, api::ContainerState::ContainerRunning).await?;
    ensure!(
        running.len() == REPLICAS as usize,
        "{} containers run",
        running.len()
    );

    // Rolled to a new image: the rollout completes, every pod runs the new one, the old ones
    // are gone from the API and from the runtime.
    let started = Instant::now();
    rc.kubectl(&[
        "set",
        "image",
        "-n",
        ns,
        "deployment/web",
        &format!("main={BUSYBOX_SECOND_TAG}"),
    ])
    .await?;
    let rollout = periods().rollout(REPLICAS, REPLICAS.div_ceil(SURGE), GRACE);
    rollout_status(&rc, &agent, ns, "deployment/web", rollout).await?;
    let new_pods = wait_until(
        "only the new pods left",
        periods().controller_pods_deleted(REPLICAS, GRACE),
        || async {
            let pods = rc.list_pods(ns, "app=web").await?;
            let new = pods
                .iter()
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.containers
                            .iter()
                            .all(|c| c.image.as_deref() == Some(BUSYBOX_SECOND_TAG))
                    }) && running_ready(p)
                })
                .count();
            Ok(if pods.len() == REPLICAS as usize && new == pods.len() {
                ControlFlow::Break(
                    pods.iter()
                        .map(|p| name(p).to_string())
                        .collect::<BTreeSet<_>>(),
                )
            } else {
                ControlFlow::Continue(format!("{} pods, {new} new and ready", pods.len()))
            })
        },
    )
    .await?;
    wait_until(
        "only the new pods' containers in the runtime",
        periods().leftovers_removed(),
        || async {
            let all = agent.containers().await?;
            let pods: BTreeSet<String> = all.iter().map(container_pod).collect();
            Ok(if all.len() == REPLICAS as usize && pods == new_pods {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{} containers of pods {pods:?}", all.len()))
            })
        },
    )
    .await?;
    eprintln!("rolled out in {:?}", started.elapsed());
    let deployment = deployments.get("web").await?;
    let status = deployment.status.context("deployment status")?;
    ensure!(
        status.updated_replicas == Some(REPLICAS as i32)
            && status.ready_replicas == Some(REPLICAS as i32)
            && status.available_replicas == Some(REPLICAS as i32),
        "{status:?}"
    );

    // Scaled to zero: no pod left in the API, no container or sandbox on the node.
    rc.kubectl(&["scale", "-n", ns, "deployment/web", "--replicas=0"])
        .await?;
    wait_until(
        "no pod left",
        periods().controller_pods_deleted(REPLICAS, GRACE),
        || async {
            let pods = rc.list_pods(ns, "app=web").await?;
            Ok(if pods.is_empty() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{} pods", pods.len()))
            })
        },
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))?;
    wait_runtime_empty(&agent, periods().leftovers_removed()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_on_the_node() -> Result<()> {
    let (rc, space, agent) = RealCluster::with_node("rc-ds").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    rc.apply(&json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agentd", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": "agentd"}},
            "template": {
                "metadata": {"labels": {"app": "agentd"}},
                "spec": pod_spec(&agent.node, "Always", RUNNING),
            },
        },
    }))
    .await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(rc.cluster.client.clone(), ns);
    wait_until(
        "the DaemonSet ready on the node",
        periods().controller_pods_ready(1),
        || async {
            let status = daemonsets.get("agentd").await?.status.unwrap_or_default();
            Ok(
                if status.desired_number_scheduled == 1 && status.number_ready == 1 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(format!("{status:?}"))
                },
            )
        },
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))?;
    let pods = rc.list_pods(ns, "app=agentd").await?;
    ensure!(
        pods.len() == 1
            && running_ready(&pods[0])
            && pods[0].spec.as_ref().and_then(|s| s.node_name.as_deref())
                == Some(agent.node.as_str()),
        "{pods:?}"
    );
    let running = containers(&agent, api::ContainerState::ContainerRunning).await?;
    ensure!(
        running.len() == 1 && container_pod(&running[0]) == name(&pods[0]),
        "{running:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_whose_pods_fail_ends_failed_with_its_failures_counted() -> Result<()> {
    const BACKOFF_LIMIT: u32 = 1;
    let (rc, space, agent) = RealCluster::with_node("rc-job").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    rc.apply(&json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "fails", "namespace": ns},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "template": {"spec": pod_spec(&agent.node, "Never", "echo failing; exit 3")},
        },
    }))
    .await?;
    let jobs: Api<Job> = Api::namespaced(rc.cluster.client.clone(), ns);
    let status = wait_until(
        "the Job Failed",
        periods().job_failed(BACKOFF_LIMIT + 1),
        || async {
            let status = jobs.get("fails").await?.status.unwrap_or_default();
            let failed = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Failed" && c.status == "True");
            Ok(if failed {
                ControlFlow::Break(status)
            } else {
                ControlFlow::Continue(format!("{status:?}"))
            })
        },
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))?;
    let condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .context("Failed condition")?;
    ensure!(
        condition.reason.as_deref() == Some("BackoffLimitExceeded"),
        "{status:?}"
    );
    ensure!(
        status.failed == Some(BACKOFF_LIMIT as i32 + 1)
            && status.succeeded.unwrap_or(0) == 0
            && status.active.unwrap_or(0) == 0,
        "{status:?}"
    );
    let pods = rc.list_pods(ns, "job-name=fails").await?;
    ensure!(
        pods.len() == BACKOFF_LIMIT as usize + 1
            && pods.iter().all(|p| phase(p) == Some("Failed")
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.first())
                    .and_then(|c| c.state.as_ref()?.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 3)),
        "{:?}",
        pods.iter()
            .map(|p| (name(p), &p.status))
            .collect::<Vec<_>>()
    );
    let logs = rc
        .kubectl_within(
            &["logs", "-n", ns, "job/fails"],
            periods().kubectl_to_node(),
        )
        .await?;
    ensure!(logs == "failing\n", "kubectl logs job/fails: {logs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pod_hostname_is_its_name() -> Result<()> {
    let (rc, space, agent) = RealCluster::with_node("rc-sts").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    rc.apply(&json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db", "namespace": ns},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 80}]},
    }))
    .await?;
    rc.apply(&json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": ns},
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": pod_spec(&agent.node, "Always", &format!("hostname; {RUNNING}")),
            },
        },
    }))
    .await?;
    let sets: Api<StatefulSet> = Api::namespaced(rc.cluster.client.clone(), ns);
    wait_until(
        "the StatefulSet ready",
        periods().controller_pods_ready(1),
        || async {
            let status = sets.get("db").await?.status.unwrap_or_default();
            Ok(if status.ready_replicas == Some(1) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{status:?}"))
            })
        },
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))?;
    let to_node = periods().kubectl_to_node();
    let inside = rc
        .kubectl_within(&["exec", "-n", ns, "db-0", "--", "hostname"], to_node)
        .await?;
    ensure!(inside == "db-0\n", "hostname in db-0: {inside:?}");
    let logs = rc
        .kubectl_within(&["logs", "-n", ns, "db-0"], to_node)
        .await?;
    ensure!(logs == "db-0\n", "db-0's own output: {logs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_is_tainted_its_pod_evicted_and_cleaned_up_when_the_agent_returns()
-> Result<()> {
    let rc = RealCluster::start().await?;
    let mut space = rc.namespace("rc-lifecycle").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    let mut agent = rc.join("rc-lost", &mut space).await?;
    // The node lifecycle controller stops tainting in a zone where most nodes are unhealthy, and
    // everywhere when every node is: the stopped nodes of other tests must not count. So this
    // test's node shares a zone of its own with a second, healthy node.
    let witness = rc.join("rc-witness", &mut space).await?;
    for a in [&agent, &witness] {
        rc.kubectl(&[
            "label",
            "node",
            &a.node,
            &format!("topology.kubernetes.io/zone={ns}"),
        ])
        .await?;
    }
    let mut spec = pod_spec(&agent.node, "Always", RUNNING);
    spec["tolerations"] = json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 0},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 0},
    ]);
    rc.apply(&pod(ns, "doomed", spec)).await?;
    wait_pod(
        &rc,
        &agent,
        ns,
        "doomed",
        periods().scheduled_pod_start(),
        running_ready,
    )
    .await?;

    // The agent stops; its containers keep running.
    agent.kill();
    let killed = Instant::now();
    rc.wait_node(
        &agent,
        "NotReady (Ready Unknown)",
        periods().node_unreachable(),
        |n| (ready_status(n) == Some("Unknown")).then_some(()),
    )
    .await?;
    eprintln!("node Unknown {:?} after the kill", killed.elapsed());
    rc.wait_node(
        &agent,
        "tainted unreachable:NoExecute",
        periods().node_taint_changed(),
        |n| has_taint(n, "node.kubernetes.io/unreachable", "NoExecute").then_some(()),
    )
    .await?;
    let evicted = wait_pod(&rc, &agent, ns, "doomed", periods().taint_eviction(), |p| {
        p.metadata.deletion_timestamp.is_some()
    })
    .await?;
    let by_taint = evicted
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "DisruptionTarget"
                    && c.reason.as_deref() == Some("DeletionByTaintManager")
            })
        });
    ensure!(by_taint, "not evicted by the taint: {:?}", evicted.status);
    ensure!(
        !containers(&agent, api::ContainerState::ContainerRunning)
            .await?
            .is_empty(),
        "the pod's container stopped while its agent was down"
    );

    // The agent is back: it stops the evicted pod, completes its deletion, reports Ready, and the
    // controller lifts the taint.
    agent.spawn()?;
    rc.wait_node_ready(&agent).await?;
    rc.cluster
        .wait_pod_deleted(
            ns,
            "doomed",
            periods().agent_up() + periods().api_pod_deleted(GRACE),
        )
        .await
        .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 80)))?;
    wait_runtime_empty(&agent, periods().leftovers_removed()).await?;
    rc.wait_node(
        &agent,
        "the unreachable taint lifted",
        periods().node_taint_changed(),
        |n| (!has_taint(n, "node.kubernetes.io/unreachable", "NoExecute")).then_some(()),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_calls_the_api_with_its_projected_service_account_token() -> Result<()> {
    let (rc, space, agent) = RealCluster::with_node("rc-token").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    // The namespace's default ServiceAccount may read pods, nothing else.
    rc.kubectl(&[
        "create",
        "role",
        "-n",
        ns,
        "pod-reader",
        "--verb=get",
        "--resource=pods",
    ])
    .await?;
    rc.kubectl(&[
        "create",
        "rolebinding",
        "-n",
        ns,
        "pod-reader",
        "--role=pod-reader",
        &format!("--serviceaccount={ns}:default"),
    ])
    .await?;
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "echo \"namespace=$(cat {sa}/namespace)\"; grep -c 'BEGIN CERTIFICATE' {sa}/ca.crt; {RUNNING}"
    );
    rc.apply(&pod(ns, "caller", pod_spec(&agent.node, "Always", &script)))
        .await?;
    wait_pod(
        &rc,
        &agent,
        ns,
        "caller",
        periods().scheduled_pod_start(),
        running_ready,
    )
    .await?;
    let to_node = periods().kubectl_to_node();
    let logs = wait_until(
        "the pod's namespace and CA in its log",
        periods().container_output() + to_node * 2,
        || async {
            let logs = rc
                .kubectl_within(&["logs", "-n", ns, "caller"], to_node)
                .await?;
            Ok(if logs.lines().count() >= 2 {
                ControlFlow::Break(logs)
            } else {
                ControlFlow::Continue(logs)
            })
        },
    )
    .await?;
    ensure!(logs.starts_with(&format!("namespace={ns}\n1\n")), "{logs}");
    // The token and CA bundle the agent mounted, as the pod sees them.
    let token = rc
        .kubectl_within(
            &[
                "exec",
                "-n",
                ns,
                "caller",
                "--",
                "cat",
                &format!("{sa}/token"),
            ],
            to_node,
        )
        .await?;
    let ca = rc
        .kubectl_within(
            &[
                "exec",
                "-n",
                ns,
                "caller",
                "--",
                "cat",
                &format!("{sa}/ca.crt"),
            ],
            to_node,
        )
        .await?;
    // Called with them (the pod's busybox wget cannot complete a TLS handshake with this
    // API server, so curl on the node makes the calls the pod would make): the pod may read
    // itself, and nothing its ServiceAccount was not granted.
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca)?;
    let port = rc.api_port()?;
    let call = |path: String| {
        let ca_file = ca_file.clone();
        let auth = format!("Authorization: Bearer {}", token.trim());
        let url = format!("https://127.0.0.1:{port}{path}");
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "-w", "\nHTTP %{http_code}", "--cacert"])
                .arg(&ca_file)
                .args(["-H", &auth, &url])
                .output()
                .await?;
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    let own = call(format!("/api/v1/namespaces/{ns}/pods/caller")).await?;
    let read_back = own
        .strip_suffix("\nHTTP 200")
        .and_then(|body| serde_json::from_str::<Pod>(body).ok());
    ensure!(
        read_back.is_some_and(|p| p.metadata.name.as_deref() == Some("caller")),
        "the pod's token could not read the pod:\n{own}"
    );
    let secrets = call(format!("/api/v1/namespaces/{ns}/secrets")).await?;
    ensure!(
        secrets.ends_with("HTTP 403"),
        "the token was not limited to its ServiceAccount's rights:\n{secrets}"
    );

    // The token the agent mounted is a bound token of this pod (the API server says so).
    let review: TokenReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token.trim()},
    }))?;
    let reviews: Api<TokenReview> = Api::all(rc.cluster.client.clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await?
        .status
        .context("TokenReview status")?;
    let user = answer.user.clone().unwrap_or_default();
    let extra = user.extra.clone().unwrap_or_default();
    ensure!(
        answer.authenticated == Some(true)
            && user.username.as_deref()
                == Some(format!("system:serviceaccount:{ns}:default").as_str())
            && extra.get("authentication.kubernetes.io/pod-name")
                == Some(&vec!["caller".to_string()])
            && extra.get("authentication.kubernetes.io/node-name")
                == Some(&vec![agent.node.clone()]),
        "{answer:?}"
    );
    Ok(())
}

/// The cpu quota and memory limit of the container `main` of `pod`, as its cgroup (v1) holds them.
async fn cgroup_limits(rc: &RealCluster, ns: &str, pod: &str) -> Result<(String, String)> {
    let out = rc
        .kubectl_within(
            &[
                "exec",
                "-n",
                ns,
                pod,
                "-c",
                "main",
                "--",
                "cat",
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ],
            periods().kubectl_to_node(),
        )
        .await?;
    let mut lines = out.lines().map(|l| l.trim().to_string());
    Ok((
        lines.next().context("no cpu quota")?,
        lines.next().context("no memory limit")?,
    ))
}

/// The resources the pod's status reports for its container `main` (kubelet's
/// `status.containerStatuses[].resources` and `allocatedResources`), as JSON.
fn reported_resources(pod: &Pod) -> serde_json::Value {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "main"));
    json!({
        "resources": status.and_then(|c| c.resources.clone()),
        "allocated": status.and_then(|c| c.allocated_resources.clone()),
        "id": status.and_then(|c| c.container_id.clone()),
    })
}

fn has_condition(pod: &Pod, kind: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_resize_changes_the_running_container_and_its_reported_resources() -> Result<()> {
    let (rc, space, agent) = RealCluster::with_node("rc-resize").await?;
    let ns = space.name.clone();
    let ns = ns.as_str();
    let mut spec = pod_spec(&agent.node, "Always", RUNNING);
    spec["containers"][0]["resources"] = json!({
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    });
    spec["containers"][0]["resizePolicy"] = json!([
        {"resourceName": "cpu", "restartPolicy": "NotRequired"},
        {"resourceName": "memory", "restartPolicy": "NotRequired"},
    ]);
    rc.apply(&pod(ns, "grow", spec)).await?;
    let before = wait_pod(
        &rc,
        &agent,
        ns,
        "grow",
        periods().scheduled_pod_start(),
        running_ready,
    )
    .await?;
    let (quota, memory) = cgroup_limits(&rc, ns, "grow").await?;
    ensure!(
        quota == "20000" && memory == (128u64 << 20).to_string(),
        "before the resize the cgroup holds quota {quota}, memory {memory}"
    );
    let id = reported_resources(&before)["id"].clone();

    rc.kubectl(&[
        "patch",
        "pod",
        "-n",
        ns,
        "grow",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"main","resources":{"requests":{"cpu":"150m","memory":"96Mi"},"limits":{"cpu":"300m","memory":"192Mi"}}}]}}"#,
    ])
    .await?;
    // The resize is admitted at the next sync of the pod and applied through
    // UpdateContainerResources; the status follows at the next relist.
    let after = wait_pod(&rc, &agent, ns, "grow", periods().resize_applied(), |p| {
        let r = reported_resources(p);
        r["resources"]["limits"]["cpu"] == json!("300m")
            && r["resources"]["limits"]["memory"] == json!("192Mi")
            && r["allocated"]["cpu"] == json!("150m")
            && !has_condition(p, "PodResizeInProgress")
            && !has_condition(p, "PodResizePending")
    })
    .await?;
    ensure!(
        reported_resources(&after)["id"] == id && restarts(&after, "main") == Some(0),
        "the resize restarted the container: {:?} -> {:?}",
        id,
        reported_resources(&after)
    );
    let (quota, memory) = cgroup_limits(&rc, ns, "grow").await?;
    ensure!(
        quota == "30000" && memory == (192u64 << 20).to_string(),
        "after the resize the cgroup holds quota {quota}, memory {memory}"
    );

    // More cpu than is left next to another pod's request is not admitted now: PodResizePending,
    // reason Deferred (the API server itself refuses more than the node's allocatable).
    let mut other = pod_spec(&agent.node, "Always", RUNNING);
    other["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    rc.apply(&pod(ns, "other", other)).await?;
    wait_pod(
        &rc,
        &agent,
        ns,
        "other",
        periods().scheduled_pod_start(),
        running_ready,
    )
    .await?;
    rc.kubectl(&[
        "patch",
        "pod",
        "-n",
        ns,
        "grow",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"main","resources":{"requests":{"cpu":"1500m"},"limits":{"cpu":"1500m"}}}]}}"#,
    ])
    .await?;
    let pending = wait_pod(&rc, &agent, ns, "grow", periods().resize_refused(), |p| {
        has_condition(p, "PodResizePending")
    })
    .await?;
    let reason = pending
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodResizePending"))
        .and_then(|c| c.reason.clone());
    ensure!(reason.as_deref() == Some("Deferred"), "{reason:?}");
    ensure!(running_ready(&pending) && restarts(&pending, "main") == Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_bootstrap_serves_the_kubelet_port_with_a_certificate_the_cluster_ca_signed()
-> Result<()> {
    let rc = RealCluster::start().await?;
    let mut space = rc.namespace("rc-serving").await?;
    let agent = Agent::join("rc-serving", &rc.cluster, "serverTLSBootstrap: true\n")?;
    space.remove_when_done(format!("node/{}", agent.node));
    rc.wait_node_ready(&agent).await?;
    // The node asks for a kubernetes.io/kubelet-serving certificate as system:node:<name>; the
    // controller-manager does not approve those (as on kubeadm): the operator does.
    let user = format!("system:node:{}", agent.node);
    let csr = wait_until(
        format!("a kubelet-serving CertificateSigningRequest of {user}"),
        periods().serving_csr_sent() + periods().kubectl(),
        || async {
            let list = rc
                .kubectl(&[
                    "get",
                    "csr",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.spec.signerName} {.spec.username}{\"\\n\"}{end}",
                ])
                .await?;
            Ok(list
                .lines()
                .find(|l| l.ends_with(&format!(" kubernetes.io/kubelet-serving {user}")))
                .and_then(|l| l.split(' ').next())
                .map_or(ControlFlow::Continue(list.clone()), |n| {
                    ControlFlow::Break(n.to_string())
                }))
        },
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 60)))?;
    space.remove_when_done(format!("csr/{csr}"));
    rc.kubectl(&["certificate", "approve", &csr]).await?;
    // Signed, it is served: a client that trusts only the cluster CA completes the handshake.
    let url = format!("https://127.0.0.1:{}/healthz", agent.kubelet_port);
    let ca = rc.control_plane.ca_cert.display().to_string();
    wait_until(
        "the kubelet port serving the issued certificate",
        periods().csr_issued(),
        || async {
            let out = tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    &ca,
                    &url,
                ])
                .output()
                .await?;
            Ok(if out.status.success() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(String::from_utf8_lossy(&out.stderr).into_owned())
            })
        },
    )
    .await
    .with_context(|| format!("agent log (end):\n{}", log_tail(&agent.log(), 60)))?;
    let pair = agent.dir.path().join("root/pki/kubelet-server-current.pem");
    ensure!(pair.exists(), "{} missing", pair.display());
    Ok(())
}
