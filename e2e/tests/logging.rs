//! The agent's own log in kubelet's formats, end to end: the real agent binary running a static pod
//! on the real runtime writes klog text lines by default, with kubelet's `pod="ns/name"` and
//! `podUID="..."` on the lines about the pod; with the configuration file's `logging.format: json`
//! every line is a component-base JSON object; `--logging-format` wins over the file and the error
//! of a configuration that cannot be read is itself a log line.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mk_e2e::periods::{POLL, allow, work};
use mk_e2e::{Agent, agent_binary, busybox_pod, container_state, periods};
use serde_json::Value;

const RUNNING: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn running_uid(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let (state, _, _) = container_state(pod)?;
    (state == "running").then(|| pod.metadata.uid.clone().unwrap_or_default())
}

/// Whether `line` has klog's header: `Lmmdd hh:mm:ss.uuuuuu <pid, 7 wide> file:line] "message"`.
fn is_klog(line: &str) -> bool {
    let b = line.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let Some((header, rest)) = line.split_once("] ") else {
        return false;
    };
    matches!(b.first(), Some(b'I' | b'W' | b'E'))
        && digits(1..5)
        && b.get(5) == Some(&b' ')
        && digits(6..8)
        && b.get(8) == Some(&b':')
        && digits(9..11)
        && b.get(11) == Some(&b':')
        && digits(12..14)
        && b.get(14) == Some(&b'.')
        && digits(15..21)
        && header
            .get(21..29)
            .is_some_and(|pid| pid.trim_start().parse::<u32>().is_ok())
        && header.get(29..30) == Some(" ")
        && header[30..]
            .rsplit_once(':')
            .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
        && rest.starts_with('"')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_are_klogs_and_carry_the_pod() -> Result<()> {
    let mut agent = Agent::start("e2e-klog")?;
    agent.write_manifest("web.yaml", &busybox_pod("web", "Always", 2, RUNNING))?;
    let uid = agent
        .wait_pod("web", periods().static_pod_start(), running_uid)
        .await?;
    agent.assert_alive();
    let log = agent.log();
    let bad: Vec<&str> = log.lines().filter(|l| !is_klog(l)).collect();
    ensure!(
        bad.is_empty(),
        "lines not in klog's form:\n{}",
        bad.join("\n")
    );
    // The static pod's name carries the node's; its lines name it as klog.KObj does.
    let pod = format!("pod=\"default/web-{}\"", agent.node);
    let pod_uid = format!("podUID=\"{uid}\"");
    let about: Vec<&str> = log.lines().filter(|l| l.contains(&pod_uid)).collect();
    ensure!(
        !about.is_empty(),
        "no line carries {pod_uid}; agent log:\n{log}"
    );
    ensure!(
        about.iter().all(|l| l.contains(&pod)),
        "lines with {pod_uid} but not {pod}:\n{}",
        about.join("\n")
    );
    eprintln!("{} lines about the pod, e.g.\n{}", about.len(), about[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_from_the_config_file_makes_every_line_json() -> Result<()> {
    let mut agent = Agent::start_with("e2e-jlog", None, "logging:\n  format: json\n")?;
    agent.write_manifest("web.yaml", &busybox_pod("web", "Always", 2, RUNNING))?;
    let uid = agent
        .wait_pod("web", periods().static_pod_start(), running_uid)
        .await?;
    agent.assert_alive();
    let log = agent.log();
    let mut about_pod = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("not a JSON line: {line}\nagent log:\n{log}"))?;
        ensure!(
            v["ts"].is_f64() || v["ts"].is_u64(),
            "ts is not a number: {line}"
        );
        ensure!(
            v["caller"].as_str().is_some_and(|c| c.contains(".rs:")),
            "caller: {line}"
        );
        ensure!(v["msg"].is_string(), "msg: {line}");
        ensure!(v["v"].is_u64(), "v: {line}");
        if v["podUID"] == uid.as_str() {
            ensure!(
                v["pod"]
                    == serde_json::json!({"name": format!("web-{}", agent.node), "namespace": "default"}),
                "pod is not KObj's object: {line}"
            );
            about_pod += 1;
        }
    }
    ensure!(about_pod > 0, "no line about pod {uid}; agent log:\n{log}");
    Ok(())
}

/// Runs the agent binary with `args` and its stderr into `log`, without a runtime.
fn run_agent(dir: &std::path::Path, args: &[&str]) -> Result<std::process::Child> {
    let log = std::fs::File::create(dir.join("agent.log"))?;
    Ok(Command::new(agent_binary())
        .args(args)
        .arg("--root-dir")
        .arg(dir.join("root"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_wins_over_the_file_and_config_errors_are_logged() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("mk-e2e-logflags-")
        .tempdir()?;
    // A configuration that cannot be read: the error is a JSON log line (logging starts before).
    let missing = dir.path().join("missing.yaml");
    let status = run_agent(
        dir.path(),
        &[
            "--logging-format",
            "json",
            "--config",
            missing.to_str().context("path")?,
        ],
    )?
    .wait()?;
    ensure!(!status.success(), "the agent ran without its config file");
    let log = std::fs::read_to_string(dir.path().join("agent.log"))?;
    let first: Value = serde_json::from_str(log.lines().next().unwrap_or_default())
        .with_context(|| format!("the first line is not JSON:\n{log}"))?;
    ensure!(
        first["msg"] == "Failed to load the kubelet configuration"
            && first["err"]
                .as_str()
                .is_some_and(|e| e.contains("missing.yaml")),
        "{log}"
    );

    // The file says json and -v=4; the flags say text and -v=0: text lines, no debug lines.
    let config = dir.path().join("kubelet.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             logging:\n  format: json\n  verbosity: 4\ncontainerRuntimeEndpoint: unix://{}\n\
             readOnlyPort: 0\nhealthzPort: {}\nport: {}\naddress: 127.0.0.1\n",
            dir.path().join("none.sock").display(),
            mk_e2e::free_port(),
            mk_e2e::free_port(),
        ),
    )?;
    let config = config.to_str().context("path")?;
    let log = run_until_retry(
        dir.path(),
        &["--logging-format", "text", "-v", "0", "--config", config],
    )
    .await?;
    let bad: Vec<&str> = log.lines().filter(|l| !is_klog(l)).collect();
    ensure!(bad.is_empty(), "lines not in klog's form:\n{log}");
    ensure!(
        log.lines().any(|l| l.starts_with('I')
            && l.contains("\"starting mini-kubelet\"")
            && l.contains("node=\"e2e-logflags\"")),
        "{log}"
    );
    // The failed CRI call is a debug (V(4)) line, logged before the retry: not at -v=0.
    ensure!(!log.contains(CRI_CALL_FAILED), "{log}");

    // Without the flags the file applies: JSON, and the V(4) line with its `v`.
    let log = run_until_retry(dir.path(), &["--config", config]).await?;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}\n{log}")))
        .collect::<Result<_>>()?;
    ensure!(
        lines
            .iter()
            .any(|l| l["msg"] == CRI_CALL_FAILED && l["v"] == 4),
        "{log}"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l["msg"] == "container runtime is not ready; retrying"
                && l["v"] == 0
                && l["err"].is_string()),
        "{log}"
    );
    Ok(())
}

/// The debug line of a CRI call that failed.
const CRI_CALL_FAILED: &str = "CRI call failed";

/// Runs the agent with `args` on a runtime endpoint that answers nothing until it logs that it
/// retries, and returns its log.
async fn run_until_retry(dir: &std::path::Path, args: &[&str]) -> Result<String> {
    let mut args = args.to_vec();
    args.extend(["--hostname-override", "e2e-logflags"]);
    let mut child = run_agent(dir, &args)?;
    let deadline = Instant::now() + allow(work::AGENT_START + work::CRI_CALL);
    let log = loop {
        let log = std::fs::read_to_string(dir.join("agent.log"))?;
        if log.contains("container runtime is not ready") {
            break log;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited ({status}):\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "no retry line within {:?}:\n{log}",
                allow(work::AGENT_START + work::CRI_CALL)
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(log)
}
