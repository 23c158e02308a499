//! Container garbage collection end to end (kubelet's containerGC) on the real runtime, with
//! kubelet's default policy (one dead instance per container, no minimum age):
//!
//! * a static pod whose container exits over and over (restartPolicy Always) keeps a single dead
//!   instance, the newest, and its log file, where the pod workers alone keep two;
//! * a static pod removed while the agent was down, whose runtime objects another tool then
//!   removed, has its pod cgroup (in every hierarchy), pod directory and log directory removed
//!   once the agent runs again;
//! * a sandbox and dead containers labelled with another node's name (made here through CRI,
//!   with the UID of one of this agent's pods) are left alone.
//!
//! The agent collects every minute, as kubelet; these agents collect every [`GC_PERIOD`] through
//! the test-only `MK_CONTAINER_GC_PERIOD`, which the agent reads from the environment it inherits.
//! A test cannot set its own process's environment (that is `unsafe`), so each test runs itself
//! again in a child process with the variable set, and the deadlines derive from that period.
//! Runs on containerd and on the Docker adapter (`MK_E2E_RUNTIME=docker`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use mk_cri::{CriClient, CriMetrics, api};
use mk_e2e::periods::{POLL, allow, work};
use mk_e2e::{Agent, BUSYBOX, NODE_LABEL, UID_LABEL, busybox_pod, container_state, periods};

/// The agent's test-only setting of its collection period.
const PERIOD_ENV: &str = "MK_CONTAINER_GC_PERIOD";
/// The period these tests run the agents with.
const GC_PERIOD: Duration = Duration::from_secs(3);
/// What the agent logs (at debug, which the harness turns on) after every periodic round.
const ROUND_LINE: &str = "container garbage collection round";

/// The collection period of this process's agents, or `None` after the test ran (and passed) in
/// a child process with [`PERIOD_ENV`] set.
fn gc_period(test: &str) -> Result<Option<Duration>> {
    if let Ok(text) = std::env::var(PERIOD_ENV) {
        return parse_period(&text).map(Some);
    }
    let exe = std::env::current_exe().context("the test binary")?;
    let output = Command::new(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(PERIOD_ENV, format!("{}s", GC_PERIOD.as_secs()))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} {test}", exe.display()))?;
    std::io::stdout().write_all(&output.stdout)?;
    std::io::stderr().write_all(&output.stderr)?;
    ensure!(
        output.status.success(),
        "{test} failed in its child process ({})",
        output.status
    );
    ensure!(
        String::from_utf8_lossy(&output.stdout).contains("test result: ok. 1 passed"),
        "the child process ran no test named {test}"
    );
    Ok(None)
}

fn parse_period(text: &str) -> Result<Duration> {
    let text = text.trim();
    let period = if let Some(ms) = text.strip_suffix("ms") {
        Duration::from_millis(ms.parse()?)
    } else if let Some(s) = text.strip_suffix('s') {
        Duration::from_secs(s.parse()?)
    } else {
        bail!("{PERIOD_ENV}={text:?}: expected e.g. 3s or 500ms");
    };
    ensure!(!period.is_zero(), "{PERIOD_ENV} must be positive");
    Ok(period)
}

/// `rounds` collection rounds: their period each, and the work of a round (listing the runtime,
/// a few removals, a directory teardown).
fn rounds(period: Duration, rounds: u32) -> Duration {
    period * rounds + allow(work::CRI_CALL * 4)
}

fn rounds_logged(agent: &Agent) -> usize {
    agent.log().matches(ROUND_LINE).count()
}

/// Waits until the agent logged `n` more collection rounds than `before`.
async fn wait_rounds(agent: &mut Agent, before: usize, n: usize, period: Duration) -> Result<()> {
    let timeout = rounds(period, u32::try_from(n + 1).unwrap_or(u32::MAX));
    let deadline = Instant::now() + timeout;
    loop {
        agent.assert_alive();
        if rounds_logged(agent) >= before + n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "fewer than {n} collection rounds within {timeout:?}\nagent log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The agent's instances of container `main` of pod `uid`, by attempt.
async fn instances(agent: &Agent, uid: &str) -> Result<BTreeMap<u32, api::Container>> {
    Ok(agent
        .containers()
        .await?
        .into_iter()
        .filter(|c| c.labels.get(UID_LABEL).map(String::as_str) == Some(uid))
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == "main"))
        .map(|c| (c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0), c))
        .collect())
}

fn is_exited(c: &api::Container) -> bool {
    c.state == api::ContainerState::ContainerExited as i32
}

#[tokio::test]
async fn crash_looping_container_keeps_one_dead_instance() -> Result<()> {
    let Some(period) = gc_period("crash_looping_container_keeps_one_dead_instance")? else {
        return Ok(());
    };
    let p = periods();
    let mut agent = Agent::start("gc-crash")?;
    agent.write_manifest(
        "crash.yaml",
        &busybox_pod("crash", "Always", 2, "echo ran; exit 1"),
    )?;
    // Restarted twice: at once, then after the first back-off.
    let restarted = p.static_pod_start()
        + p.exit_reported()
        + p.restart_immediate()
        + p.exit_reported()
        + p.restart_after_backoff(1);
    let pod = agent
        .wait_pod("crash", restarted, |pod| {
            container_state(pod)
                .filter(|(_, _, restarts)| *restarts >= 2)
                .map(|_| pod.clone())
        })
        .await?;
    let uid = uid_of(&pod);

    // The pod workers keep the newest two instances; garbage collection keeps the newest dead
    // one: once the newest instance exited, it is alone within a round. Meanwhile the newest
    // instance never goes.
    let timeout = p.exit_reported() + rounds(period, 2);
    let deadline = Instant::now() + timeout;
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    let mut history = Vec::new();
    let kept = loop {
        agent.assert_alive();
        let now = instances(&agent, &uid).await?;
        history.push(
            now.iter()
                .map(|(a, c)| format!("{a}:{}", if is_exited(c) { "exited" } else { "live" }))
                .collect::<Vec<_>>()
                .join(","),
        );
        if let Some((newest, _)) = seen.last_key_value() {
            ensure!(
                now.keys().any(|a| a >= newest),
                "the newest instance ({newest}) went: {history:?}\nagent log:\n{}",
                agent.log()
            );
        }
        for (attempt, c) in &now {
            seen.insert(*attempt, c.id.clone());
        }
        if now.len() == 1
            && let Some((attempt, c)) = now.iter().next()
            && *attempt >= 2
            && is_exited(c)
        {
            break (*attempt, c.id.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "never a single dead instance within {timeout:?} (attempt:state per poll): \
                 {history:?}\nagent log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let (kept_attempt, kept_id) = kept;
    eprintln!(
        "kept instance {kept_attempt} ({kept_id}); instances seen {:?}; polls {}",
        seen.keys().collect::<Vec<_>>(),
        history.len()
    );
    // `kubectl logs --previous` still has the newest dead instance's log.
    let kept_log = agent.container_log_path(&pod, "main", kept_attempt);
    ensure!(
        kept_log.exists(),
        "{} of the kept instance is gone",
        kept_log.display()
    );
    // The instance before it went by garbage collection (the workers keep two), logged with the
    // pod and its attempt, and its log files with it.
    let log = agent.log();
    let pod_field = format!("pod=\"default/crash-{}\"", agent.node);
    let removed: Vec<u32> = log
        .lines()
        .filter(|l| l.contains("Removing container") && l.contains(&pod_field))
        .filter_map(|l| {
            let rest = l.split(" attempt=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ensure!(
        removed.contains(&(kept_attempt - 1)),
        "instance {} was not removed by garbage collection; removals logged: {removed:?}\n\
         agent log:\n{log}",
        kept_attempt - 1
    );
    for attempt in &removed {
        let path = agent.container_log_path(&pod, "main", *attempt);
        ensure!(
            !path.exists(),
            "{} of removed instance {attempt} is still there",
            path.display()
        );
    }
    eprintln!("instances removed by garbage collection: {removed:?}");
    // The pod goes on restarting.
    let status = agent
        .wait_pod("crash", p.relist_seen(), container_state)
        .await?;
    ensure!(status.2 >= 2, "restart count went back: {status:?}");
    Ok(())
}

#[tokio::test]
async fn removed_pods_directories_are_collected() -> Result<()> {
    let Some(period) = gc_period("removed_pods_directories_are_collected")? else {
        return Ok(());
    };
    let p = periods();
    let mut agent = Agent::start("gc-dirs")?;
    agent.write_manifest("left.yaml", &busybox_pod("left", "Always", 2, "sleep 3600"))?;
    let pod = agent
        .wait_pod("left", p.static_pod_start(), |pod| {
            container_state(pod)
                .filter(|(state, _, _)| state == "running")
                .map(|_| pod.clone())
        })
        .await?;
    let uid = uid_of(&pod);
    let pod_dir = agent.dir.path().join("root/pods").join(&uid);
    let log_dir = agent
        .container_log_path(&pod, "main", 0)
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("the pod's log directory")?;
    ensure!(pod_dir.is_dir(), "{} missing", pod_dir.display());
    ensure!(log_dir.is_dir(), "{} missing", log_dir.display());

    // Removed while the agent is down, and its runtime objects by another tool: nothing will
    // start a worker for it.
    agent.kill();
    agent.remove_manifest("left.yaml")?;
    mk_e2e::remove_node_objects(&agent.node).await?;
    ensure!(pod_dir.is_dir() && log_dir.is_dir());
    agent.spawn()?;

    // The sources list the folder, then the pod must stay removed for a period before its
    // directories go in the next round.
    let timeout = p.agent_up() + p.file_check + rounds(period, 3);
    let deadline = Instant::now() + timeout;
    while pod_dir.exists() || log_dir.exists() {
        agent.assert_alive();
        if Instant::now() > deadline {
            bail!(
                "{} or {} still there after {timeout:?}\nagent log:\n{}",
                pod_dir.display(),
                log_dir.display(),
                agent.log()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let log = agent.log();
    for message in [
        "Removed orphaned pod cgroup",
        "Removing orphaned pod directory",
        "Removing pod logs directory",
    ] {
        ensure!(
            log.lines()
                .any(|l| l.contains(message) && l.contains(&format!("podUID=\"{uid}\""))),
            "no {message:?} for {uid} in the agent log:\n{log}"
        );
    }
    ensure!(
        agent.pod_logs_dir().is_dir() && agent.dir.path().join("root/pods").is_dir(),
        "only the pod's own directories go"
    );
    // Its cgroup went before its directory, in every hierarchy the runtime had made it in.
    let left = mk_e2e::cri_checks::pod_cgroup_dirs(&uid);
    ensure!(left.is_empty(), "the pod's cgroup is still there: {left:?}");
    Ok(())
}

/// Objects made through CRI for another node, removed (with their pod cgroups) when dropped,
/// also after a failed assertion.
struct OtherNode {
    node: String,
    endpoint: String,
    cgroup_uid: String,
    logs: tempfile::TempDir,
}

impl OtherNode {
    fn cri(&self) -> Result<CriClient> {
        Ok(CriClient::new(
            &self.endpoint,
            Duration::from_secs(60),
            CriMetrics::default(),
        )?)
    }

    /// A sandbox of pod `uid` (named apart from this agent's) labelled for the other node.
    async fn sandbox(&self, uid: &str, attempt: u32) -> Result<(String, api::PodSandboxConfig)> {
        let name = "other-node-pod";
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt,
            }),
            hostname: name.into(),
            log_directory: self.logs.path().display().to_string(),
            labels: HashMap::from([
                (UID_LABEL.to_string(), uid.to_string()),
                ("io.kubernetes.pod.name".to_string(), name.to_string()),
                ("io.kubernetes.pod.namespace".to_string(), "default".into()),
                (NODE_LABEL.to_string(), self.node.clone()),
            ]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{}", self.cgroup_uid),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(mk_e2e::cri_checks::kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .cri()?
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .pod_sandbox_id;
        Ok((id, config))
    }

    /// Instance `attempt` of container `main` of pod `uid` that exits at once; waits until it
    /// has exited.
    async fn dead_container(
        &self,
        sandbox: &(String, api::PodSandboxConfig),
        uid: &str,
        attempt: u32,
    ) -> Result<String> {
        let cri = self.cri()?;
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: "main".into(),
                attempt,
            }),
            image: Some(api::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), "exit 1".into()],
            log_path: format!("main/{attempt}.log"),
            labels: HashMap::from([
                (UID_LABEL.to_string(), uid.to_string()),
                ("io.kubernetes.container.name".to_string(), "main".into()),
                (
                    "io.kubernetes.pod.name".to_string(),
                    "other-node-pod".into(),
                ),
                ("io.kubernetes.pod.namespace".to_string(), "default".into()),
                (NODE_LABEL.to_string(), self.node.clone()),
            ]),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(mk_e2e::cri_checks::kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = cri
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox.0.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox.1.clone()),
            })
            .await
            .context("CreateContainer")?
            .container_id;
        cri.start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("StartContainer")?;
        let timeout = allow(work::CONTAINER_START);
        let deadline = Instant::now() + timeout;
        loop {
            let status = cri
                .container_status(api::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .status;
            if status.is_some_and(|s| s.state == api::ContainerState::ContainerExited as i32) {
                return Ok(id);
            }
            ensure!(
                Instant::now() < deadline,
                "{id} did not exit within {timeout:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop_sandbox(&self, id: &str) -> Result<()> {
        self.cri()?
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .context("StopPodSandbox")?;
        Ok(())
    }

    /// The other node's sandbox and container IDs in the runtime.
    async fn objects(&self) -> Result<(Vec<String>, Vec<String>)> {
        let cri = self.cri()?;
        let selector = HashMap::from([(NODE_LABEL.to_string(), self.node.clone())]);
        let mut sandboxes: Vec<String> = cri
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: selector.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .items
            .into_iter()
            .map(|s| s.id)
            .collect();
        let mut containers: Vec<String> = cri
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    label_selector: selector,
                    ..Default::default()
                }),
            })
            .await?
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
        sandboxes.sort();
        containers.sort();
        Ok((sandboxes, containers))
    }
}

impl Drop for OtherNode {
    fn drop(&mut self) {
        let (endpoint, node) = (self.endpoint.clone(), self.node.clone());
        // Drop cannot await: clean up on a thread with its own runtime (and its own client).
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let cri =
                    CriClient::new(&endpoint, Duration::from_secs(60), CriMetrics::default())?;
                mk_e2e::remove_sandboxes(&cri, &node).await?;
                anyhow::Ok(())
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("cleanup of the other node's objects: {e}");
        }
        mk_e2e::cri_checks::remove_pod_cgroups(&self.cgroup_uid);
    }
}

/// The CRI endpoint the agent's runtime serves: the suite's, or on Docker the agent's adapter.
fn agent_endpoint(agent: &Agent) -> String {
    if mk_e2e::on_docker() {
        let socket = agent.dir.path().join("root/dockershim.sock");
        format!("unix://{}", socket.display())
    } else {
        mk_e2e::endpoint()
    }
}

#[tokio::test]
async fn another_nodes_objects_are_left_alone() -> Result<()> {
    let Some(period) = gc_period("another_nodes_objects_are_left_alone")? else {
        return Ok(());
    };
    let p = periods();
    let mut agent = Agent::start("gc-other")?;
    agent.write_manifest("mine.yaml", &busybox_pod("mine", "Always", 2, "sleep 3600"))?;
    let pod = agent
        .wait_pod("mine", p.static_pod_start(), |pod| {
            container_state(pod)
                .filter(|(state, _, _)| state == "running")
                .map(|_| pod.clone())
        })
        .await?;
    let uid = uid_of(&pod);
    let other = OtherNode {
        node: format!("{}-other", agent.node),
        endpoint: agent_endpoint(&agent),
        cgroup_uid: format!("{uid}-other"),
        logs: tempfile::Builder::new()
            .prefix("mk-e2e-gc-other-")
            .tempdir()?,
    };
    // The other node's pod has this agent's pod's UID: were the node label ignored, its dead
    // instances of `main` would be over the limit of this agent's running pod, and its older,
    // dead, empty sandbox would go.
    let old = other.sandbox(&uid, 0).await?;
    other.stop_sandbox(&old.0).await?;
    let current = other.sandbox(&uid, 1).await?;
    for attempt in 0..3 {
        other.dead_container(&current, &uid, attempt).await?;
    }
    other.stop_sandbox(&current.0).await?;
    let before = other.objects().await?;
    ensure!(
        before.0.len() == 2 && before.1.len() == 3,
        "made {before:?}"
    );

    let logged = rounds_logged(&agent);
    wait_rounds(&mut agent, logged, 3, period).await?;
    let after = other.objects().await?;
    ensure!(
        after == before,
        "the other node's objects changed: {before:?} -> {after:?}\nagent log:\n{}",
        agent.log()
    );
    // And this agent's pod never noticed them.
    let state = agent
        .wait_pod("mine", p.relist_seen(), container_state)
        .await?;
    ensure!(
        state.0 == "running" && state.2 == 0,
        "this agent's pod: {state:?}"
    );
    ensure!(
        !agent.log().lines().any(|l| l.contains("Removing")
            && (before.0.iter().chain(&before.1)).any(|id| l.contains(id.as_str()))),
        "the agent logged a removal of another node's object"
    );
    eprintln!(
        "after {} rounds: the other node's {} sandboxes and {} containers untouched",
        rounds_logged(&agent) - logged,
        after.0.len(),
        after.1.len()
    );
    Ok(())
}
