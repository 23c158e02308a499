//! crictl, the tool operators reach for on a node, against the built-in Docker adapter served alone
//! (`mini-kubelet dockershim --listen unix://…`, as README.md "Docker, built in" shows it): the habits
//! `crictl pods`, `ps`, `images`, `inspect`/`inspectp`/`inspecti`, `logs`, `exec` (ExecSync and the
//! streaming server, with stdin), `version`, and `stopp`/`rmp`, on a pod this test created through
//! CRI, with their table and JSON output checked.
//!
//! Prerequisites (the test fails, never skips, without them; e2e/run-tests.sh sets both):
//! - `MK_E2E_DOCKER_ENDPOINT`: a private dockerd from `e2e/scripts/dockerd-up.sh DIR` (which loads
//!   `mini-kubelet.local/busybox:1.36` and the pause image); the adapter runs in CNI mode on the
//!   network dockerd-up.sh writes, or on Docker's bridge with `MK_E2E_DOCKER_NETWORK=bridge`;
//! - `MK_E2E_CRICTL`: the crictl binary, built from cri-tools' Go module by
//!   `e2e/scripts/cri-tools-build.sh` (`export MK_E2E_CRICTL=$(e2e/scripts/cri-tools-build.sh | tail
//!   -n 1)/crictl`).
//!
//! The adapter binary is `MK_E2E_AGENT_BIN`, else the workspace's debug build of mini-kubelet.
//! Everything the test creates is removed through CRI whatever happens, then the adapter is stopped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mk_cri::{CriClient, CriMetrics, api};
use mk_e2e::cri_checks::{kubelet_namespaces, remove_pod_cgroups, unique};
use serde_json::Value;

const BUSYBOX: &str = "mini-kubelet.local/busybox:1.36";
const PAUSE: &str = "mini-kubelet.local/pause:3.10";

/// The crictl binary of `MK_E2E_CRICTL`. Panics with instructions when it is not set or not there.
fn crictl_binary() -> PathBuf {
    match std::env::var("MK_E2E_CRICTL") {
        Ok(path) if !path.is_empty() && Path::new(&path).is_file() => PathBuf::from(path),
        Ok(path) if !path.is_empty() => panic!(
            "MK_E2E_CRICTL={path} is not a file: build crictl with e2e/scripts/cri-tools-build.sh \
             and set MK_E2E_CRICTL=<the folder it prints>/crictl"
        ),
        _ => panic!(
            "MK_E2E_CRICTL is not set: this test needs crictl, built from cri-tools' Go module by \
             e2e/scripts/cri-tools-build.sh (export MK_E2E_CRICTL=$(e2e/scripts/cri-tools-build.sh \
             | tail -n 1)/crictl), or run it through e2e/run-tests.sh, which sets it."
        ),
    }
}

/// `mini-kubelet dockershim` serving CRI on a socket in its own temporary folder.
struct Adapter {
    dir: tempfile::TempDir,
    endpoint: String,
    child: Child,
}

impl Adapter {
    fn start() -> Result<Self> {
        let docker = mk_e2e::docker_endpoint();
        let dir = tempfile::Builder::new()
            .prefix("mk-crictl-")
            .tempdir()
            .context("creating the adapter's folder")?;
        let socket = dir.path().join("cri.sock");
        let endpoint = format!("unix://{}", socket.display());
        let mut command = Command::new(mk_e2e::agent_binary());
        command
            .args([
                "dockershim",
                "--listen",
                &endpoint,
                "--docker-endpoint",
                &docker,
            ])
            .args(["--pod-infra-container-image", PAUSE]);
        match mk_e2e::docker_cni() {
            Some(cni) => command
                .args(["--network-plugin", "cni", "--cni-bin-dir", "/usr/lib/cni"])
                .arg("--cni-conf-dir")
                .arg(&cni.conf_dir)
                .arg("--cni-cache-dir")
                .arg(&cni.cache_dir),
            None => command.args(["--network-plugin", "bridge"]),
        };
        let log = std::fs::File::create(dir.path().join("dockershim.log"))
            .context("creating the adapter's log")?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("the adapter's log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", mk_e2e::agent_binary().display()))?;
        let mut adapter = Self {
            dir,
            endpoint: endpoint.clone(),
            child,
        };
        let deadline = Instant::now() + mk_e2e::periods().agent_up();
        while !socket.exists() {
            if let Some(status) = adapter
                .child
                .try_wait()
                .context("waiting for the adapter")?
            {
                bail!("the adapter exited with {status}:\n{}", adapter.log());
            }
            if Instant::now() > deadline {
                bail!("the adapter did not serve {endpoint}:\n{}", adapter.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(adapter)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockershim.log")).unwrap_or_default()
    }

    /// SIGTERM (a graceful stop), then SIGKILL if it lingers.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// crictl pointed at the adapter, the way an operator configures it: a crictl.yaml, plus the
/// endpoint flag.
struct Crictl {
    binary: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Crictl {
    fn new(adapter: &Adapter) -> Result<Self> {
        let config = adapter.dir.path().join("crictl.yaml");
        std::fs::write(
            &config,
            format!(
                "runtime-endpoint: {0}\nimage-endpoint: {0}\ntimeout: 60\ndebug: false\n",
                adapter.endpoint
            ),
        )
        .context("writing crictl.yaml")?;
        Ok(Self {
            binary: crictl_binary(),
            config,
            endpoint: adapter.endpoint.clone(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config)
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--image-endpoint", &self.endpoint])
            .args(args);
        command
    }

    /// Runs crictl with `stdin`; returns its output whatever its exit status.
    fn output_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
        let mut command = self.command(args);
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().context("crictl's stdin")?;
            pipe.write_all(data).context("writing crictl's stdin")?;
        }
        child
            .wait_with_output()
            .with_context(|| format!("running crictl {}", args.join(" ")))
    }

    /// Runs crictl and returns its stdout; fails with both streams unless it exits 0.
    fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with(args, None)
    }

    fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let output = self.output_with(args, stdin)?;
        ensure!(
            output.status.success(),
            "crictl {} exited with {}:\nstdout: {}\nstderr: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).context("crictl's output is not UTF-8")
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let text = self.run(args)?;
        serde_json::from_str(&text)
            .with_context(|| format!("crictl {} printed no JSON: {text}", args.join(" ")))
    }
}

/// A string field of a JSON document, by path.
fn field<'a>(value: &'a Value, path: &[&str]) -> Result<&'a str> {
    let mut at = value;
    for key in path {
        at = at
            .get(key)
            .with_context(|| format!("no {} in {value}", path.join(".")))?;
    }
    at.as_str()
        .with_context(|| format!("{} is not a string in {value}", path.join(".")))
}

/// The one table row of `table` that contains `needle`, split into columns.
fn row(table: &str, needle: &str) -> Result<Vec<String>> {
    let rows: Vec<&str> = table.lines().filter(|l| l.contains(needle)).collect();
    ensure!(
        rows.len() == 1,
        "expected one row with {needle}, got {}:\n{table}",
        rows.len()
    );
    Ok(rows[0].split_whitespace().map(str::to_string).collect())
}

/// What the test created, for the clean-up.
struct Created {
    client: CriClient,
    sandbox: Option<String>,
    uid: String,
}

impl Created {
    async fn cleanup(&self) {
        if let Some(id) = &self.sandbox {
            let stop = self
                .client
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            if let Err(err) = stop {
                eprintln!("cleanup: StopPodSandbox {id}: {err}");
            }
            let remove = self
                .client
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            if let Err(err) = remove {
                eprintln!("cleanup: RemovePodSandbox {id}: {err}");
            }
        }
        remove_pod_cgroups(&self.uid);
    }
}

/// A pod as kubelet asks for a BestEffort one, with a busybox container that writes a line to
/// stdout and one to stderr, then sleeps (with a TERM handler, so it stops at once).
async fn create_pod(
    client: &CriClient,
    name: &str,
    uid: &str,
    logs: &Path,
) -> Result<(String, String, api::PodSandboxConfig)> {
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), name.to_string()),
        ("io.kubernetes.pod.namespace".to_string(), "default".into()),
        ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
        ("e2e.mini-kubelet/test".to_string(), "crictl".into()),
    ]);
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.to_string_lossy().into_owned(),
        labels,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .pod_sandbox_id;
    Ok((sandbox, uid.to_string(), config))
}

async fn create_container(
    client: &CriClient,
    sandbox: &str,
    config: &api::PodSandboxConfig,
) -> Result<String> {
    let script = "trap 'exit 0' TERM; echo crictl-out-line; echo crictl-err-line >&2; \
                  while true; do sleep 1; done";
    let container = client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(api::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), script.into()],
                log_path: "app/0.log".into(),
                labels: HashMap::from([("io.kubernetes.container.name".into(), "app".into())]),
                linux: Some(api::LinuxContainerConfig {
                    security_context: Some(api::LinuxContainerSecurityContext {
                        namespace_options: Some(kubelet_namespaces()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        })
        .await
        .context("CreateContainer")?
        .container_id;
    client
        .start_container(api::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .context("StartContainer")?;
    Ok(container)
}

/// Retries `check` until it passes or `limit` ran out; returns its last error.
fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_habits_on_the_docker_adapter() {
    // The prerequisites first: fail before starting anything when one is missing.
    crictl_binary();
    mk_e2e::docker_endpoint();
    let mut adapter = Adapter::start().expect("serving the Docker adapter alone");
    let crictl = Crictl::new(&adapter).expect("configuring crictl");
    let client = CriClient::new(
        &adapter.endpoint,
        Duration::from_secs(60),
        CriMetrics::default(),
    )
    .expect("a CRI client on the adapter");
    let logs = tempfile::Builder::new()
        .prefix("mk-crictl-logs-")
        .tempdir()
        .expect("a log folder");
    let name = unique("crictl");
    let mut created = Created {
        client: client.clone(),
        sandbox: None,
        uid: unique("uid"),
    };
    let outcome = async {
        let (sandbox, _, config) = create_pod(&client, &name, &created.uid, logs.path()).await?;
        created.sandbox = Some(sandbox.clone());
        let container = create_container(&client, &sandbox, &config).await?;
        let (name, sandbox, logs) = (name.clone(), sandbox.clone(), logs.path().to_path_buf());
        // crictl runs as a child process: off the runtime's threads.
        tokio::task::spawn_blocking(move || habits(&crictl, &name, &sandbox, &container, &logs))
            .await
            .context("the crictl checks panicked")?
    }
    .await;
    created.cleanup().await;
    let log = adapter.log();
    adapter.stop();
    if let Err(err) = outcome {
        panic!("{err:?}\n--- adapter log ---\n{log}");
    }
}

/// The crictl commands and what they must print.
fn habits(crictl: &Crictl, name: &str, sandbox: &str, container: &str, logs: &Path) -> Result<()> {
    let short = |id: &str| id.chars().take(13).collect::<String>();

    // version: the adapter names itself.
    let version = crictl.run(&["version"])?;
    ensure!(
        version.contains("RuntimeName:  docker") && version.contains("RuntimeApiVersion:  v1"),
        "crictl version: {version}"
    );

    // pods: the table and the JSON, filtered by name.
    let pods = crictl.run(&["pods", "--name", name])?;
    let columns = row(&pods, &short(sandbox))?;
    ensure!(
        columns.contains(&"Ready".to_string())
            && columns.contains(&name.to_string())
            && columns.contains(&"default".to_string()),
        "crictl pods: {pods}"
    );
    let pods = crictl.json(&["pods", "--name", name, "-o", "json"])?;
    let items = pods["items"].as_array().context("crictl pods: no items")?;
    ensure!(items.len() == 1, "crictl pods -o json: {pods}");
    ensure!(field(&items[0], &["id"])? == sandbox, "pod id: {pods}");
    ensure!(
        field(&items[0], &["state"])? == "SANDBOX_READY",
        "pod state: {pods}"
    );
    ensure!(
        field(&items[0], &["metadata", "name"])? == name,
        "pod name: {pods}"
    );
    let quiet = crictl.run(&[
        "pods",
        "-q",
        "--label",
        &format!("io.kubernetes.pod.name={name}"),
    ])?;
    ensure!(quiet.trim() == sandbox, "crictl pods -q --label: {quiet}");

    // ps: the container of the pod, running.
    let ps = eventually(Duration::from_secs(30), || {
        let ps = crictl.run(&["ps", "--pod", sandbox])?;
        let columns = row(&ps, &short(container))?;
        ensure!(columns.contains(&"Running".to_string()), "crictl ps: {ps}");
        Ok(ps)
    })?;
    let columns = row(&ps, &short(container))?;
    ensure!(
        columns.contains(&"app".to_string()) && columns.contains(&short(sandbox)),
        "crictl ps: {ps}"
    );
    let all = crictl.run(&["ps", "-a", "-q", "--name", "^app$", "--pod", sandbox])?;
    ensure!(all.trim() == container, "crictl ps -a -q: {all}");

    // images: busybox, by repository and tag, in the table and the JSON.
    let images = crictl.run(&["images"])?;
    let columns = row(&images, "mini-kubelet.local/busybox ")?;
    ensure!(
        columns.get(1).map(String::as_str) == Some("1.36"),
        "crictl images: {images}"
    );
    let images = crictl.json(&["images", "-o", "json"])?;
    let list = images["images"]
        .as_array()
        .context("crictl images: no images")?;
    ensure!(
        list.iter().any(|i| i["repoTags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == BUSYBOX))),
        "crictl images -o json: {images}"
    );
    let inspecti = crictl.json(&["inspecti", BUSYBOX])?;
    ensure!(
        inspecti["status"]["repoTags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == BUSYBOX)),
        "crictl inspecti: {inspecti}"
    );

    // inspect / inspectp: the statuses as JSON.
    let inspect = crictl.json(&["inspect", container])?;
    ensure!(
        field(&inspect, &["status", "id"])? == container,
        "inspect: {inspect}"
    );
    ensure!(
        field(&inspect, &["status", "state"])? == "CONTAINER_RUNNING",
        "inspect: {inspect}"
    );
    ensure!(
        field(&inspect, &["status", "metadata", "name"])? == "app",
        "inspect: {inspect}"
    );
    let log_path = field(&inspect, &["status", "logPath"])?;
    ensure!(
        Path::new(log_path) == logs.join("app/0.log"),
        "inspect logPath {log_path}, expected under {}",
        logs.display()
    );
    let inspectp = crictl.json(&["inspectp", sandbox])?;
    ensure!(
        field(&inspectp, &["status", "id"])? == sandbox,
        "inspectp: {inspectp}"
    );
    ensure!(
        field(&inspectp, &["status", "state"])? == "SANDBOX_READY",
        "inspectp: {inspectp}"
    );
    let ip = field(&inspectp, &["status", "network", "ip"])?;
    ensure!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "inspectp: pod IP {ip:?}"
    );

    // logs: stdout to stdout, stderr to stderr, from the CRI log file.
    eventually(Duration::from_secs(30), || {
        let output = crictl.output_with(&["logs", container], None)?;
        let (out, err) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        ensure!(
            output.status.success()
                && out.lines().any(|l| l == "crictl-out-line")
                && err.lines().any(|l| l == "crictl-err-line"),
            "crictl logs: {}\nstdout: {out}\nstderr: {err}",
            output.status
        );
        Ok(())
    })?;
    let tail = crictl.run(&["logs", "--tail", "1", container])?;
    ensure!(
        tail.trim() == "crictl-out-line" || tail.trim().is_empty(),
        "crictl logs --tail 1: {tail}"
    );

    // exec: ExecSync (-s), the streaming server (SPDY), stdin through it, and exit codes.
    let sync = crictl.run(&["exec", "-s", container, "sh", "-c", "echo $((6 * 7))"])?;
    // (crictl prints ExecSync's stdout, then its stderr, each with a line break of its own.)
    ensure!(sync.trim_end() == "42", "crictl exec -s: {sync:?}");
    let streamed = crictl.run(&["exec", container, "hostname"])?;
    ensure!(
        streamed.trim() == name,
        "crictl exec hostname: {streamed:?}"
    );
    let echoed = crictl.run_with(&["exec", "-i", container, "cat"], Some(b"through stdin\n"))?;
    ensure!(
        echoed == "through stdin\n",
        "crictl exec -i cat: {echoed:?}"
    );
    // crictl 1.37 itself exits 1 on any failed exec; the status the adapter sent over the
    // streaming error channel is in its message.
    let failed = crictl.output_with(&["exec", container, "sh", "-c", "exit 3"], None)?;
    let message = String::from_utf8_lossy(&failed.stderr);
    ensure!(
        !failed.status.success() && message.contains("exit code 3"),
        "crictl exec of `exit 3` exited with {}: {message}",
        failed.status
    );

    // stopp / rmp: the pod and its container go, as crictl shows.
    crictl.run(&["stopp", sandbox])?;
    let stopped = crictl.json(&["inspectp", sandbox])?;
    ensure!(
        field(&stopped, &["status", "state"])? == "SANDBOX_NOTREADY",
        "inspectp after stopp: {stopped}"
    );
    crictl.run(&["rmp", sandbox])?;
    let left = crictl.run(&["pods", "-q", "--name", name])?;
    ensure!(left.trim().is_empty(), "crictl pods after rmp: {left}");
    let left = crictl.run(&["ps", "-a", "-q", "--pod", sandbox])?;
    ensure!(left.trim().is_empty(), "crictl ps -a after rmp: {left}");
    Ok(())
}
