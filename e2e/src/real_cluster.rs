//! What the tests that only a real control plane can answer (`e2e/tests/real_cluster.rs`) need:
//! the control plane `MK_E2E_CONTROLPLANE` names (they fail with instructions without it), its
//! kubectl run as the administrator — one-shot, streaming (`logs -f`, `port-forward`, `attach`) or
//! in a terminal (`exec -it`) —, a namespace per test that is removed with the test's nodes
//! afterwards, and polling waits on what the controllers report.

use std::fmt::Display;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, ServiceAccount};
use kube::Api;
use kube::api::ListParams;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::cluster::{CONTROLPLANE_VAR, Cluster, ControlPlane};
use crate::{Agent, periods};

/// A second tag of the local busybox image (the same image), for "rolled to a new image":
/// `e2e/scripts/containerd-up.sh` tags it after importing busybox.
pub const BUSYBOX_SECOND_TAG: &str = "mini-kubelet.local/busybox:1.36-b";

/// How often the waits on the API server poll.
const API_POLL: Duration = Duration::from_millis(250);

/// The real control plane, and a client of it as its administrator.
pub struct RealCluster {
    pub cluster: Cluster,
    pub control_plane: ControlPlane,
    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub server: String,
}

impl RealCluster {
    /// Connects to the control plane of `MK_E2E_CONTROLPLANE`; fails with instructions when it is
    /// not set (these tests never fall back to the stand-in).
    pub async fn start() -> Result<Self> {
        let Some(control_plane) = ControlPlane::from_env()? else {
            bail!(
                "{CONTROLPLANE_VAR} is not set: these tests need a real control plane. Run them \
                 through e2e/run-tests.sh, or start one with e2e/scripts/controlplane-up.sh DIR and \
                 set {CONTROLPLANE_VAR}=DIR"
            );
        };
        let env_file = control_plane.dir.join("controlplane.env");
        let server = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {}", env_file.display()))?
            .lines()
            .find_map(|l| l.strip_prefix("SERVER="))
            .map(str::to_string)
            .with_context(|| format!("{} lacks SERVER", env_file.display()))?;
        Ok(Self {
            cluster: Cluster::start().await?,
            control_plane,
            server,
        })
    }

    /// The API server's port.
    pub fn api_port(&self) -> Result<u16> {
        self.server
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("no port in {}", self.server))
    }

    /// `kubectl ARGS` as the administrator, not yet started; killed when dropped.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.control_plane.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.control_plane.admin_kubeconfig)
            .args(args)
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl with `input` on its stdin, bounded by `timeout`; its output whatever its exit.
    pub async fn kubectl_output(
        &self,
        args: &[&str],
        input: &[u8],
        timeout: Duration,
    ) -> Result<Output> {
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.control_plane.kubectl.display()))?;
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // kubectl may exit without reading all of it; that is its answer, not an error here.
            let _ = stdin.write_all(&input).await;
        });
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .with_context(|| {
                format!("kubectl {} took longer than {timeout:?}", args.join(" "))
            })??;
        let _ = writer.await;
        Ok(output)
    }

    /// Runs kubectl, bounded by `timeout`; its stdout, or an error with its stderr.
    pub async fn kubectl_within(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let output = self.kubectl_output(args, b"", timeout).await?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs a kubectl command that talks to the API server only ([`periods::Periods::kubectl`]).
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_within(args, periods().kubectl()).await
    }

    /// `kubectl apply` of `manifest` (JSON is YAML).
    pub async fn apply(&self, manifest: &serde_json::Value) -> Result<String> {
        let text = serde_json::to_vec(manifest)?;
        let output = self
            .kubectl_output(&["apply", "-f", "-"], &text, periods().kubectl())
            .await?;
        if !output.status.success() {
            bail!(
                "kubectl apply failed ({}): {}\nmanifest: {manifest:#}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts a long-running kubectl (`logs -f`, `port-forward`, `attach`) whose stdout is read
    /// line by line; with `input`, that is written to its stdin, which stays open (an attached
    /// container's stdin would see EOF otherwise) until the stream is dropped.
    pub async fn kubectl_stream(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<KubectlStream> {
        let mut child = self
            .kubectl_command(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.control_plane.kubectl.display()))?;
        let mut stdin = child.stdin.take();
        if let (Some(input), Some(stdin)) = (input, stdin.as_mut()) {
            stdin.write_all(input).await.context("writing to kubectl")?;
            stdin.flush().await?;
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf).await
                    && n > 0
                {
                    stderr
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdout = child.stdout.take().context("kubectl's stdout")?;
        Ok(KubectlStream {
            command: args.join(" "),
            child,
            _stdin: stdin,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            stderr,
        })
    }

    /// Runs kubectl in a terminal of `rows` × `cols` (a pseudo-terminal python3's `pty` module
    /// opens; `kubectl exec -t` and `attach -t` need one): once the terminal showed `prompt`,
    /// types `input`; returns once it showed `expect` and then kubectl exited (`wait_exit`) or
    /// at once (kubectl is then killed). Fails after `timeout` with what the terminal showed.
    #[allow(clippy::too_many_arguments)]
    pub async fn kubectl_in_terminal(
        &self,
        args: &[&str],
        (rows, cols): (u16, u16),
        prompt: &str,
        input: &str,
        expect: &str,
        wait_exit: bool,
        timeout: Duration,
    ) -> Result<TerminalSession> {
        let mut command = Command::new("python3");
        command
            .arg("-c")
            .arg(PTY_DRIVER)
            .arg(timeout.as_secs_f64().to_string())
            .arg(format!("{rows}x{cols}"))
            .arg(prompt)
            .arg(input)
            .arg(expect)
            .arg(if wait_exit { "1" } else { "0" })
            .arg(&self.control_plane.kubectl)
            .arg("--kubeconfig")
            .arg(&self.control_plane.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The driver ends itself at `timeout`; this bound only guards against the driver hanging.
        let output = tokio::time::timeout(timeout + periods().kubectl(), command.output())
            .await
            .context("the terminal driver did not end")?
            .context("running python3 (needed to give kubectl a terminal)")?;
        let report = String::from_utf8_lossy(&output.stderr).into_owned();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "kubectl {} in a terminal: {report}\nthe terminal showed:\n{shown}",
                args.join(" ")
            );
        }
        let exit_code = report
            .lines()
            .find_map(|l| l.strip_prefix("exit="))
            .and_then(|c| c.trim().parse().ok());
        Ok(TerminalSession { shown, exit_code })
    }

    /// Creates a namespace for one test (`<prefix>-<pid>-<n>`) and waits for its `default`
    /// ServiceAccount. It is deleted when the returned guard is dropped, with the nodes handed to
    /// [`TestNamespace::remove_when_done`].
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let name = crate::unique_node(prefix);
        self.kubectl(&["create", "namespace", &name]).await?;
        let guard = TestNamespace {
            name: name.clone(),
            cluster_objects: Vec::new(),
            kubectl: self.control_plane.kubectl.clone(),
            kubeconfig: self.control_plane.admin_kubeconfig.clone(),
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(self.cluster.client.clone(), &name);
        wait_until(
            format!("the default ServiceAccount of namespace {name}"),
            periods().namespace_ready(),
            || async {
                Ok(match accounts.get_opt("default").await? {
                    Some(_) => ControlFlow::Break(()),
                    None => ControlFlow::Continue("absent".to_string()),
                })
            },
        )
        .await?;
        Ok(guard)
    }

    /// Starts an agent joined as a node (see [`Agent::join`]), whose Node is removed with `space`,
    /// and waits until it is Ready.
    pub async fn join(&self, prefix: &str, space: &mut TestNamespace) -> Result<Agent> {
        let agent = Agent::join(prefix, &self.cluster, "")?;
        space.remove_when_done(format!("node/{}", agent.node));
        self.wait_node_ready(&agent).await?;
        Ok(agent)
    }

    /// The setting of most tests: the control plane, a namespace `<prefix>-…` and a Ready node
    /// `<prefix>-…` (see [`RealCluster::join`]). Bind them in this order, `let (rc, space, agent)`:
    /// bindings drop in reverse, so the agent stops before its namespace and Node are deleted.
    pub async fn with_node(prefix: &str) -> Result<(RealCluster, TestNamespace, Agent)> {
        let rc = RealCluster::start().await?;
        let mut space = rc.namespace(prefix).await?;
        let agent = rc.join(prefix, &mut space).await?;
        Ok((rc, space, agent))
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.cluster.client.clone())
    }

    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        self.cluster.pods(namespace)
    }

    /// Polls the node until `check` returns Some; fails after `timeout` with the node's last
    /// conditions and taints, and the end of the agent's log.
    pub async fn wait_node<T>(
        &self,
        agent: &Agent,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Node) -> Option<T>,
    ) -> Result<T> {
        let nodes = self.nodes();
        let deadline = Instant::now() + timeout;
        loop {
            let last = match nodes.get_opt(&agent.node).await? {
                Some(node) => match check(&node) {
                    Some(v) => return Ok(v),
                    None => describe_node(&node),
                },
                None => "(absent)".to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "node {}: {what}: not reached within {timeout:?}; last seen: {last}\n\
                     agent log (end):\n{}",
                    agent.node,
                    log_tail(&agent.log(), 80)
                );
            }
            tokio::time::sleep(API_POLL).await;
        }
    }

    /// Waits until the agent's node is Ready.
    pub async fn wait_node_ready(&self, agent: &Agent) -> Result<Node> {
        self.wait_node(agent, "Ready", periods().node_ready(), |n| {
            (ready_status(n) == Some("True")).then(|| n.clone())
        })
        .await
    }

    /// The pods of `namespace` matching `selector` (`key=value,...`; empty: all).
    pub async fn list_pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
        Ok(self
            .pods(namespace)
            .list(&ListParams::default().labels(selector))
            .await?
            .items)
    }
}

/// A kubectl that keeps running (`logs -f`, `port-forward`, `attach`): its stdout read line by line.
pub struct KubectlStream {
    command: String,
    child: Child,
    _stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl KubectlStream {
    /// Reads lines until one satisfies `check`, returns it; fails after `timeout`, or when kubectl
    /// ends first, with everything it printed.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if check(&line) {
                        return Ok(line);
                    }
                }
                Ok(Ok(None)) => bail!(
                    "kubectl {} ended ({:?}) before printing the expected line; it printed:\n{}\n{}",
                    self.command,
                    self.child.try_wait().ok().flatten(),
                    self.seen.join("\n"),
                    self.stderr()
                ),
                Ok(Err(e)) => return Err(e).context("reading kubectl's output"),
                Err(_) => bail!(
                    "kubectl {} did not print the expected line within {timeout:?}; it printed:\n{}\n{}",
                    self.command,
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// What kubectl wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ends kubectl (as a user's ctrl-c would).
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("stopping kubectl")
    }
}

/// What a terminal showed to kubectl's user, and kubectl's exit code if it exited.
#[derive(Debug)]
pub struct TerminalSession {
    pub shown: String,
    pub exit_code: Option<i32>,
}

/// Gives kubectl a pseudo-terminal of a set size, types into it once a prompt showed, and reads
/// it until the expected text (and, if asked, kubectl's exit). Everything the terminal showed goes
/// to stdout; `exit=<code>` (or `exit=killed`) and any failure to stderr. Exits 1 when the
/// expected text never showed.
const PTY_DRIVER: &str = r#"
import fcntl, os, pty, select, signal, struct, sys, termios, time
timeout, size, prompt, typed, expect, wait_exit = sys.argv[1:7]
argv = sys.argv[7:]
rows, cols = (int(x) for x in size.split("x"))
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.execv(argv[0], argv)
deadline = time.monotonic() + float(timeout)
shown, sent, seen, status = b"", False, False, None
while time.monotonic() < deadline:
    if not sent and prompt.encode() in shown:
        os.write(fd, typed.encode())
        sent = True
    if sent and expect.encode() in shown:
        seen = True
        if wait_exit != "1":
            break
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            break
        shown += data
# The terminal ends (EIO) when kubectl's files are closed, which is before kubectl is a zombie
# that waitpid can reap: wait for its exit up to the same deadline instead of looking once.
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done != 0 or time.monotonic() >= deadline:
        break
    time.sleep(0.02)
if done == 0:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.stderr.write("exit=killed\n")
else:
    sys.stderr.write("exit=%d\n" % os.waitstatus_to_exitcode(status))
sys.stdout.write(shown.decode(errors="replace"))
if not seen:
    sys.stderr.write("the terminal never showed %r after %r was typed (prompt seen: %s)\n"
                     % (expect, typed, sent))
    sys.exit(1)
if wait_exit == "1" and done == 0:
    sys.stderr.write("kubectl did not exit within %s s\n" % timeout)
    sys.exit(1)
"#;

/// A namespace of one test, deleted on drop together with the cluster-scoped objects handed to
/// [`TestNamespace::remove_when_done`] (the test's nodes, ClusterRoles …). Declare it before the
/// test's agents, so that they are stopped (dropped) first and do not register their nodes again.
/// `MK_E2E_KEEP=1` keeps everything for a post-mortem.
pub struct TestNamespace {
    pub name: String,
    cluster_objects: Vec<String>,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// Deletes the cluster-scoped object `kind/name` after the test.
    pub fn remove_when_done(&mut self, object: impl Into<String>) {
        self.cluster_objects.push(object.into());
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("MK_E2E_KEEP").is_ok_and(|v| v == "1") {
            return;
        }
        let namespace = format!("namespace/{}", self.name);
        let mut command = std::process::Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "--wait=false", "--ignore-not-found"])
            .arg(&namespace)
            .args(&self.cluster_objects)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Best effort: a failed clean-up leaves objects of a finished test in a throwaway cluster.
        let _ = command.status();
    }
}

/// Polls `check` every [`API_POLL`] until it breaks with a value; fails after `timeout` with the
/// last state it described. Errors of `check` end the wait at once.
pub async fn wait_until<T, F, Fut>(what: impl Display, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<ControlFlow<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await? {
            ControlFlow::Break(v) => return Ok(v),
            ControlFlow::Continue(state) => state,
        };
        if Instant::now() > deadline {
            bail!("{what}: not reached within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(API_POLL).await;
    }
}

/// The node's Ready condition status (`True`, `False`, `Unknown`).
pub fn ready_status(node: &Node) -> Option<&str> {
    condition(node, "Ready").map(|c| c.status.as_str())
}

pub fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// Whether the node carries the taint `key` with `effect`.
pub fn has_taint(node: &Node, key: &str, effect: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key && t.effect == effect))
}

fn describe_node(node: &Node) -> String {
    fn each<T>(items: Option<&Vec<T>>, show: impl Fn(&T) -> String) -> Vec<String> {
        items
            .map(|v| v.iter().map(show).collect())
            .unwrap_or_default()
    }
    let conditions = each(
        node.status.as_ref().and_then(|s| s.conditions.as_ref()),
        |c| {
            let reason = c.reason.as_deref().unwrap_or("");
            format!("{}={} ({reason})", c.type_, c.status)
        },
    );
    let taints = each(node.spec.as_ref().and_then(|s| s.taints.as_ref()), |t| {
        format!("{}:{}", t.key, t.effect)
    });
    format!("conditions {conditions:?}, taints {taints:?}")
}

/// The last `n` lines of `text`.
pub fn log_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The phase of a pod.
pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// True when the pod is Running and every container is ready.
pub fn running_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running")
        && pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

/// The pod's name.
pub fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}
