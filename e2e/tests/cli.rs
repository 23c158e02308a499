//! The node CLI (`mini-kubelet pods|ps|images|inspect|logs|exec|stats|pull|version`) end to end:
//! the real binary against the runtime a real agent runs its static pods on, reaching it through
//! the agent's own flags (`--config` with `containerRuntimeEndpoint` on containerd;
//! `--container-runtime docker --root-dir` on the Docker adapter the agent serves). Tables and
//! `-o json` are parsed and compared with what CRI says. `pull` uses the private registry of
//! `e2e/scripts/registry-up.sh` (`MK_E2E_REGISTRY`). Runs on containerd and again on the Docker
//! adapter (`MK_E2E_RUNTIME=docker`).

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mk_cri::api;
use mk_e2e::periods::{allow, work};
use mk_e2e::{
    Agent, BUSYBOX, NODE_LABEL, agent_binary, busybox_pod, container_state, on_docker, periods,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

const REGISTRY_VAR: &str = "MK_E2E_REGISTRY";

/// The registry's `host:port`. Panics with instructions when it is not set: the test never skips.
fn registry() -> String {
    match std::env::var(REGISTRY_VAR) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{REGISTRY_VAR} is not set: `pull` needs the private registry e2e/scripts/registry-up.sh \
             starts. Run through e2e/run-tests.sh, or by hand: \
             `export {REGISTRY_VAR}=$(e2e/scripts/registry-up.sh /tmp/mk-reg target/e2e-images | tail -n 1)`."
        ),
    }
}

/// Prints to stdout and stderr, then runs until told to stop.
const WEB: &str =
    "trap 'exit 0' TERM; echo hello-cli; echo to-stderr >&2; while true; do sleep 1; done";
/// Prints three lines and exits 0.
const DONE: &str = "echo one; echo two; echo three";
/// Waits for /tmp/go (made with `exec`), then prints and exits: `logs -f` must follow it.
const FOLLOWED: &str =
    "echo waiting; while [ ! -f /tmp/go ]; do sleep 0.2; done; echo tick-1; sleep 0.5; echo tick-2";

/// How long one CLI command may take: a few CRI calls on a loaded machine.
fn command_limit() -> Duration {
    allow(work::CRI_CALL) * 4
}

/// The agent's runtime flags, which the CLI takes to reach the same runtime.
fn runtime_flags(agent: &Agent) -> Vec<OsString> {
    let mut flags: Vec<OsString> = vec![
        "--config".into(),
        agent.dir.path().join("kubelet.yaml").into(),
        "--root-dir".into(),
        agent.dir.path().join("root").into(),
    ];
    if on_docker() {
        flags.extend(["--container-runtime".into(), "docker".into()]);
    }
    flags
}

/// `mini-kubelet [the agent's runtime flags] ARGS`.
fn cli(agent: &Agent, args: &[&str]) -> Command {
    let mut command = Command::new(agent_binary());
    command
        .args(runtime_flags(agent))
        .args(args)
        .kill_on_drop(true);
    command
}

async fn run_with(agent: &Agent, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    let mut command = cli(agent, args);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting the CLI")?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::io::AsyncWriteExt::write_all(&mut pipe, data).await?;
    }
    tokio::time::timeout(command_limit(), child.wait_with_output())
        .await
        .with_context(|| {
            format!(
                "mini-kubelet {args:?} did not finish within {:?}",
                command_limit()
            )
        })?
        .context("waiting for the CLI")
}

/// Runs `args`; its stdout, which must have come with exit code 0.
async fn run(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = run_with(agent, args, None).await?;
    ensure!(
        out.status.success(),
        "mini-kubelet {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

async fn run_json(agent: &Agent, args: &[&str]) -> Result<Value> {
    let text = run(agent, args).await?;
    serde_json::from_str(&text).with_context(|| format!("{args:?} printed no JSON: {text}"))
}

/// The cells of a table row (columns are separated by at least three spaces).
fn cells(line: &str) -> Vec<&str> {
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The table row whose first cell is `first`.
fn row<'a>(table: &'a str, first: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .skip(1)
        .map(cells)
        .find(|c| c.first() == Some(&first))
}

fn short(id: &str) -> String {
    id.strip_prefix("sha256:")
        .unwrap_or(id)
        .chars()
        .take(13)
        .collect()
}

fn container_of<'a>(containers: &'a [api::Container], pod: &str) -> Result<&'a api::Container> {
    containers
        .iter()
        .find(|c| {
            c.labels
                .get("io.kubernetes.pod.name")
                .is_some_and(|p| p.starts_with(pod))
        })
        .with_context(|| format!("no container of pod {pod} in {containers:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cli_lists_inspects_logs_execs_and_pulls() -> Result<()> {
    let registry = registry();
    let mut agent = Agent::start("e2e-cli")?;
    let node = agent.node.clone();
    let label = format!("--label={NODE_LABEL}={node}");
    agent.write_manifest("web.yaml", &busybox_pod("web", "Always", 2, WEB))?;
    agent.write_manifest("done.yaml", &busybox_pod("done", "Never", 2, DONE))?;
    agent.write_manifest(
        "followed.yaml",
        &busybox_pod("followed", "Never", 2, FOLLOWED),
    )?;
    let running = |p: &k8s_openapi::api::core::v1::Pod| {
        container_state(p)
            .filter(|(state, _, _)| state == "running")
            .map(|_| p.clone())
    };
    let web_status = agent
        .wait_pod("web", periods().static_pod_start(), running)
        .await?;
    // Both lines are in the log before `logs` reads it.
    agent
        .wait_output(
            &web_status,
            "main",
            0,
            "to-stderr",
            allow(work::CONTAINER_START),
        )
        .await?;
    agent
        .wait_output(
            &web_status,
            "main",
            0,
            "hello-cli",
            allow(work::CONTAINER_START),
        )
        .await?;
    agent
        .wait_pod("followed", periods().static_pod_start(), running)
        .await?;
    let done_status = agent
        .wait_pod(
            "done",
            periods().static_pod_start() + periods().exit_reported(),
            |p| {
                container_state(p)
                    .filter(|(state, _, _)| state == "terminated")
                    .map(|_| p.clone())
            },
        )
        .await?;
    agent
        .wait_output(&done_status, "main", 0, "three", allow(work::CRI_CALL))
        .await?;
    let web_pod = format!("web-{node}");
    let sandboxes = agent.sandboxes().await?;
    let containers = agent.containers().await?;
    let web = container_of(&containers, "web-")?.clone();
    let done = container_of(&containers, "done-")?.clone();
    let followed = container_of(&containers, "followed-")?.clone();
    let web_sandbox = sandboxes
        .iter()
        .find(|s| s.id == web.pod_sandbox_id)
        .context("web's sandbox")?
        .clone();

    // version: the agent's and the runtime's, as CRI Version says.
    let cri_version = agent.cri().version(api::VersionRequest::default()).await?;
    let version = run_json(&agent, &["version", "-o", "json"]).await?;
    assert_eq!(version["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["runtimeName"], cri_version.runtime_name.as_str());
    assert_eq!(
        version["runtimeVersion"],
        cri_version.runtime_version.as_str()
    );
    let table = run(&agent, &["version"]).await?;
    assert!(
        table.contains("RuntimeName:") && table.contains(&cri_version.runtime_name),
        "{table}"
    );

    // pods: this node's sandboxes, in the table and as JSON.
    let table = run(&agent, &["pods", &label]).await?;
    println!("mini-kubelet pods:\n{table}");
    assert_eq!(
        cells(table.lines().next().unwrap_or_default()),
        [
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME"
        ]
    );
    assert_eq!(table.lines().count(), 1 + sandboxes.len(), "{table}");
    let web_row = row(&table, &short(&web_sandbox.id)).context("web's row")?;
    assert_eq!(
        web_row[2..],
        ["Ready", web_pod.as_str(), "default", "0", "(default)"]
    );
    let doc = run_json(&agent, &["pods", &label, "-o", "json"]).await?;
    let mut ids: Vec<&str> = doc["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = sandboxes.iter().map(|s| s.id.as_str()).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    let item = doc["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == web_sandbox.id.as_str()))
        .context("web's item")?;
    assert_eq!(item["state"], "SANDBOX_READY");
    assert_eq!(item["metadata"]["name"], web_pod.as_str());

    // ps: running containers only; ps -a the exited one too.
    let table = run(&agent, &["ps", &label]).await?;
    println!("mini-kubelet ps:\n{table}");
    let web_row = row(&table, &short(&web.id)).context("web's container")?;
    // Containers are created from the image ID: the column names the image by one of its tags
    // (the busybox image has another one once `pull` below has run).
    let busybox = agent
        .cri()
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .image
        .context("the busybox image")?;
    assert!(
        busybox.repo_tags.iter().any(|t| t == web_row[1]),
        "{table} {busybox:?}"
    );
    assert_eq!(
        web_row[3..],
        [
            "Running",
            "main",
            "0",
            &short(&web.pod_sandbox_id),
            &web_pod
        ]
    );
    assert!(row(&table, &short(&done.id)).is_none(), "{table}");
    let table = run(&agent, &["ps", "-a", &label]).await?;
    println!("mini-kubelet ps -a:\n{table}");
    let done_row = row(&table, &short(&done.id)).context("the exited container")?;
    assert_eq!(done_row[3], "Exited");
    let doc = run_json(&agent, &["ps", "-a", &label, "-o", "json"]).await?;
    let listed = doc["containers"].as_array().context("containers")?;
    assert_eq!(listed.len(), containers.len(), "{doc}");
    let state_of = |id: &str| {
        listed
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["state"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(state_of(&web.id).as_deref(), Some("CONTAINER_RUNNING"));
    assert_eq!(state_of(&done.id).as_deref(), Some("CONTAINER_EXITED"));

    // images: the busybox image the pods run.
    let (repo, tag) = BUSYBOX.rsplit_once(':').context("tagged")?;
    let table = run(&agent, &["images"]).await?;
    assert!(
        table.lines().any(|l| cells(l).starts_with(&[repo, tag])),
        "{table}"
    );
    let doc = run_json(&agent, &["images", "-o", "json"]).await?;
    assert!(
        doc["images"]
            .as_array()
            .is_some_and(|images| images.iter().any(|i| i["repoTags"]
                .as_array()
                .is_some_and(|tags| tags.iter().any(|t| t == BUSYBOX)))),
        "{doc}"
    );

    // inspect: a container by ID prefix, a sandbox by pod name, an image by reference.
    let doc = run_json(&agent, &["inspect", &web.id[..10]]).await?;
    assert_eq!(doc["status"]["id"], web.id.as_str());
    assert_eq!(doc["status"]["state"], "CONTAINER_RUNNING");
    assert!(
        doc["status"]["logPath"]
            .as_str()
            .is_some_and(|p| p.ends_with("0.log")),
        "{doc}"
    );
    let doc = run_json(&agent, &["inspect", &web_pod]).await?;
    assert_eq!(doc["status"]["id"], web_sandbox.id.as_str());
    assert_eq!(doc["status"]["state"], "SANDBOX_READY");
    let doc = run_json(&agent, &["inspect", BUSYBOX]).await?;
    assert!(
        doc["status"]["repoTags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == BUSYBOX)),
        "{doc}"
    );

    // logs: the CRI log file, stdout and stderr (whose relative order the runtime's two pipes
    // do not keep); in order and --tail on whole lines with stdout alone.
    let out = run(&agent, &["logs", &web.id[..12]]).await?;
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["hello-cli", "to-stderr"], "{out}");
    assert!(out.ends_with('\n'), "{out}");
    assert_eq!(
        run(&agent, &["logs", "--tail", "1", &done.id]).await?,
        "three\n"
    );
    assert_eq!(run(&agent, &["logs", &done.id]).await?, "one\ntwo\nthree\n");

    // logs -f follows until the container exits.
    let mut follow = cli(&agent, &["logs", "-f", &followed.id]);
    let mut follow = follow
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(command_limit(), lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("waiting"));
    let go = run_with(
        &agent,
        &["exec", &followed.id, "--", "touch", "/tmp/go"],
        None,
    )
    .await?;
    assert!(go.status.success(), "{go:?}");
    // The container prints two lines over half a second and exits; the follow notices within
    // its once-a-second look at the container's state.
    let rest = async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await? {
            rest.push(line);
        }
        anyhow::Ok((rest, follow.wait().await?))
    };
    let (rest, status) = tokio::time::timeout(
        Duration::from_secs(2) + periods().exit_reported() + command_limit(),
        rest,
    )
    .await
    .context("logs -f did not end with its container")??;
    assert_eq!(rest, ["tick-1", "tick-2"]);
    assert!(status.success(), "logs -f exited with {status}");

    // exec: ExecSync's output and exit code; with -i, stdin through the streaming server.
    let out = run_with(
        &agent,
        &[
            "exec",
            &web.id[..12],
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    )
    .await?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = run_with(
        &agent,
        &[
            "exec",
            "-i",
            &web.id,
            "--",
            "sh",
            "-c",
            "cat; echo done >&2; exit 4",
        ],
        Some(b"piped in\n"),
    )
    .await?;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped in\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n");
    let out = run_with(
        &agent,
        &["exec", "-i", &web.id, "--", "cat"],
        Some(b"zero\n"),
    )
    .await?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "zero\n");

    // stats: the running container's usage as CRI ListContainerStats reports it. The runtimes
    // report different parts: containerd 1.6 here the writable layer, and CPU and memory only
    // now and then; the Docker adapter CPU and memory, no writable layer. (The agent's
    // /stats/summary falls back to cgroups; a crictl-like view shows what CRI says.)
    let doc = run_json(&agent, &["stats", &web.id[..12], "-o", "json"]).await?;
    let stats = doc["stats"].as_array().context("stats")?;
    assert_eq!(stats.len(), 1, "{doc}");
    assert_eq!(stats[0]["attributes"]["id"], web.id.as_str());
    assert_eq!(stats[0]["attributes"]["metadata"]["name"], "main");
    assert!(
        stats[0]["writableLayer"]["usedBytes"]["value"].is_u64()
            || stats[0]["memory"]["workingSetBytes"]["value"].is_u64(),
        "{doc}"
    );
    let table = run(&agent, &["stats", &web.id]).await?;
    let stats_row = row(&table, &short(&web.id)).context("stats row")?;
    assert_eq!(stats_row[1], "main");
    assert_eq!(stats_row.len(), 6, "{table}");

    // pull: from the private registry, with credentials; then listed.
    let image = format!("{registry}/e2e/busybox:1.36");
    let out = run_with(&agent, &["pull", "--creds", "e2e:e2e-secret", &image], None).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("Image is up to date for "), "{stdout}");
    assert!(stderr.contains(&format!("pulled {image} in ")), "{stderr}");
    let listed = run(&agent, &["images", "-q", &image]).await?;
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let out = run_with(
        &agent,
        &["pull", &format!("{registry}/e2e/no-such-image:1")],
        None,
    )
    .await?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // A runtime that is not there: one line naming the endpoint.
    let missing = agent.dir.path().join("missing.sock");
    let endpoint = format!("unix://{}", missing.display());
    let mut command = Command::new(agent_binary());
    let out = tokio::time::timeout(
        command_limit(),
        command
            .args(["--container-runtime-endpoint", &endpoint, "pods"])
            .output(),
    )
    .await??;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");

    // A name in two pods is refused, as ambiguous.
    let out = run_with(&agent, &["inspect", "main"], None).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ambiguous"),
        "{out:?}"
    );

    agent.assert_alive();
    Ok(())
}

/// What a pseudo-terminal's master has received so far, read by a thread of its own.
struct Screen {
    chunks: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    text: String,
}

impl Screen {
    fn new(master: OwnedFd) -> Self {
        let (tx, chunks) = tokio::sync::mpsc::unbounded_channel();
        let mut master = std::fs::File::from(master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no one has the slave open any more.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Self {
            chunks,
            text: String::new(),
        }
    }

    /// Waits until the text since `from` contains `wanted`; where it ends.
    async fn wait_for(&mut self, from: usize, wanted: &str) -> Result<usize> {
        let limit = command_limit();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(at) = self.text[from..].find(wanted) {
                return Ok(from + at + wanted.len());
            }
            match tokio::time::timeout_at(deadline, self.chunks.recv()).await {
                Ok(Some(chunk)) => self.text.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => anyhow::bail!(
                    "the terminal closed before {wanted:?} came; it shows {:?}",
                    self.text
                ),
                Err(_) => anyhow::bail!(
                    "no {wanted:?} on the terminal within {limit:?}; it shows {:?}",
                    self.text
                ),
            }
        }
    }
}

/// The settings of the terminal at `path` as `stty -a` prints them, one flag per word.
fn stty_flags(path: &std::path::Path) -> Result<Vec<String>> {
    let out = std::process::Command::new("stty")
        .arg("-F")
        .arg(path)
        .arg("-a")
        .output()
        .context("running stty")?;
    ensure!(out.status.success(), "stty -a: {out:?}");
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .map(|w| w.trim_end_matches(';').to_string())
        .collect())
}

/// `mini-kubelet exec -it CONTAINER -- COMMAND` on the pseudo-terminal `slave`, made the CLI's
/// controlling terminal by `setsid -c` so that resizing it sends the CLI a SIGWINCH.
fn exec_on_terminal(
    agent: &Agent,
    slave: &OwnedFd,
    container: &str,
    command: &[&str],
) -> Result<tokio::process::Child> {
    let mut setsid = std::process::Command::new("setsid");
    setsid
        .args(["-c", "-w"])
        .arg(agent_binary())
        .args(runtime_flags(agent))
        .args(["exec", "-it", container, "--"])
        .args(command)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    tokio::process::Command::from(setsid)
        .kill_on_drop(true)
        .spawn()
        .context("starting exec -it")
}

/// The terminal `slave` (at `path`) has the settings it had before (`cooked`).
fn assert_restored(
    path: &std::path::Path,
    slave: &OwnedFd,
    cooked: &nix::sys::termios::Termios,
) -> Result<()> {
    let flags = stty_flags(path)?;
    assert!(
        flags.contains(&"icanon".to_string()) && flags.contains(&"echo".to_string()),
        "{flags:?}"
    );
    let now = nix::sys::termios::tcgetattr(slave)?;
    assert_eq!(now.local_flags, cooked.local_flags);
    assert_eq!(now.input_flags, cooked.input_flags);
    assert_eq!(now.output_flags, cooked.output_flags);
    Ok(())
}

/// `exec -i` streams stdin while the command runs (a line is answered before the next is
/// typed); `exec -t` without a terminal still gets the runtime's terminal; `exec -it` under a
/// real pseudo-terminal gives a shell on a terminal of the size of ours, follows a resize, puts
/// ours in raw mode and back, and exits with the shell's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_stdin_and_drives_a_terminal() -> Result<()> {
    let mut agent = Agent::start("e2e-cli-tty")?;
    agent.write_manifest("web.yaml", &busybox_pod("web", "Always", 2, WEB))?;
    agent
        .wait_pod("web", periods().static_pod_start(), |p| {
            container_state(p)
                .filter(|(state, _, _)| state == "running")
                .map(|_| p.clone())
        })
        .await?;
    let containers = agent.containers().await?;
    let web = container_of(&containers, "web-")?.clone();

    // -i: the second line is written only once the answer to the first is out, so a client that
    // read stdin to its end before sending anything would never get there.
    let mut child = cli(
        &agent,
        &[
            "exec",
            "-i",
            &web.id,
            "--",
            "sh",
            "-c",
            "read x; echo got-$x; read y; echo got-$y; exit 5",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .context("starting exec -i")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    stdin.write_all(b"first\n").await?;
    let line = tokio::time::timeout(command_limit(), lines.next_line())
        .await
        .context("no answer to the first line while stdin is open")??;
    assert_eq!(line.as_deref(), Some("got-first"));
    stdin.write_all(b"second\n").await?;
    let line = tokio::time::timeout(command_limit(), lines.next_line()).await??;
    assert_eq!(line.as_deref(), Some("got-second"));
    let status = tokio::time::timeout(command_limit(), child.wait()).await??;
    assert_eq!(status.code(), Some(5));

    // -t with stdin not a terminal: still a terminal in the container (whose output ends lines
    // with CR LF), nothing done to ours.
    let out = run_with(&agent, &["exec", "-t", &web.id, "--", "tty"], None).await?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        tty.starts_with("/dev/pts/") && tty.ends_with("\r\n"),
        "{tty:?}"
    );

    // -it on a pseudo-terminal of 40 rows and 100 columns. `setsid -c` makes it the CLI's
    // controlling terminal, so that resizing it sends the CLI a SIGWINCH.
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).context("openpty")?;
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))?;
    let cooked = nix::sys::termios::tcgetattr(&pty.slave)?;
    let mut session = exec_on_terminal(&agent, &pty.slave, &web.id, &["sh"])?;
    let mut screen = Screen::new(pty.master.try_clone()?);
    let mut keyboard = std::fs::File::from(pty.master);
    // busybox sh's prompt, then what it prints for a line typed at once. `$((6*7))` keeps the
    // echoed line from containing the answer.
    let at = screen.wait_for(0, "# ").await?;
    keyboard.write_all(b"tty; stty size; echo $((6*7))\n")?;
    let end = screen.wait_for(at, "\r\n42\r\n").await?;
    let shown = screen.text[at..end].to_string();
    println!("exec -it showed: {shown:?}");
    assert!(shown.contains("\r\n/dev/pts/"), "{shown:?}");
    assert!(shown.contains("\r\n40 100\r\n"), "{shown:?}");
    // While in session, ours is raw: no line editing, no echo (the echo above is the remote's).
    let raw = stty_flags(&slave_path)?;
    assert!(
        raw.contains(&"-icanon".to_string()) && raw.contains(&"-echo".to_string()),
        "{raw:?}"
    );

    // A resize reaches the container's terminal.
    let out = std::process::Command::new("stty")
        .arg("-F")
        .arg(&slave_path)
        .args(["rows", "50", "cols", "120"])
        .output()?;
    ensure!(out.status.success(), "stty rows/cols: {out:?}");
    keyboard.write_all(
        b"until [ \"$(stty size)\" = '50 120' ]; do sleep 0.1; done; echo resized-$((1+1))\n",
    )?;
    let at = screen.wait_for(end, "resized-2\r\n").await?;

    keyboard.write_all(b"exit 3\n")?;
    let status = tokio::time::timeout(command_limit(), session.wait())
        .await
        .with_context(|| format!("exec -it did not end; the terminal shows {:?}", screen.text))??;
    assert_eq!(status.code(), Some(3), "{:?}", &screen.text[at..]);
    // Ours is back as it was.
    assert_restored(&slave_path, &pty.slave, &cooked)?;

    // Killed while in session: ours is restored all the same, and the code says how it ended.
    let waiting = ["sh", "-c", "echo ready-$((2+3)); read x"];
    let mut session = exec_on_terminal(&agent, &pty.slave, &web.id, &waiting)?;
    screen.wait_for(at, "ready-5").await?;
    let pid = session.id().context("exec -it's pid")?;
    let out = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()?;
    ensure!(out.status.success(), "kill: {out:?}");
    let status = tokio::time::timeout(command_limit(), session.wait())
        .await
        .context("exec -it did not end at SIGTERM")??;
    assert_eq!(status.code(), Some(128 + 15));
    assert_restored(&slave_path, &pty.slave, &cooked)?;

    agent.assert_alive();
    Ok(())
}
