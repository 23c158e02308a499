//! The configuration pipeline end to end, on the real binary: `mini-kubelet config validate`
//! reports every error of a bad file (and the flags) with its field's path and exit code 1; an
//! agent refuses to start on a field it does not implement; a running agent serves the
//! configuration it runs with at `/configz` on the kubelet port (kubelet's shape), not on the
//! read-only port.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mk_e2e::kubelet_port::{client_identity, get};
use mk_e2e::{Agent, agent_binary, periods};

/// Runs `mini-kubelet args…`: exit code, stdout, stderr.
fn mini_kubelet(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(agent_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", agent_binary().display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn config_validate_lists_every_error_with_its_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         kubeReserved:\n  cpu: lots\nevictionHard:\n  memory.available: \"-1Gi\"\n\
         evictionSoft:\n  nodefs.available: 10%\nstaticPodURL: http://example.invalid/pods\n\
         cpuManagerPolicy: static\nfeatureGates:\n  NoSuchGate: true\n\
         enforceNodeAllocatable: [pods, system-reserved]\ncgroupDriver: openrc\n",
    )?;
    let bad = bad.display().to_string();
    let (code, out, err) = mini_kubelet(&["config", "validate", &bad, "--max-pods", "0"])?;
    ensure!(code == 1, "exit code {code}; stderr:\n{err}");
    ensure!(out.is_empty(), "an invalid configuration printed:\n{out}");
    for path in [
        "kubeReserved[cpu]:",
        "evictionHard[memory.available]:",
        "evictionSoftGracePeriod[nodefs.available]:",
        "staticPodURL:",
        "cpuManagerPolicy:",
        "featureGates[NoSuchGate]:",
        "enforceNodeAllocatable[1]:",
        "cgroupDriver:",
        // From the flag: checked with the file, named by the field it sets.
        "maxPods:",
    ] {
        ensure!(err.contains(path), "{path} missing from:\n{err}");
    }

    // A good file with a flag over it: the effective configuration, which validates again.
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "kind: KubeletConfiguration\nmaxPods: 12\nsyncFrequency: 90s\nkubeAPIQPS: 5\n",
    )?;
    let good = good.display().to_string();
    let (code, out, err) =
        mini_kubelet(&["config", "validate", "--config", &good, "--max-pods", "7"])?;
    ensure!(code == 0, "exit code {code}; stderr:\n{err}");
    ensure!(out.contains("maxPods: 7\n"), "the flag did not win:\n{out}");
    ensure!(out.contains("syncFrequency: 1m30s\n"), "{out}");
    ensure!(
        err.contains("kubeAPIQPS"),
        "no warning for an ignored field:\n{err}"
    );
    let printed = dir.path().join("printed.yaml");
    std::fs::write(&printed, &out)?;
    let (code, again, err) = mini_kubelet(&["config", "validate", &printed.display().to_string()])?;
    ensure!(code == 0, "the printed configuration is refused:\n{err}");
    ensure!(
        again == out,
        "printing it again differs:\n{out}\n---\n{again}"
    );
    Ok(())
}

#[test]
fn the_agent_does_not_start_on_a_field_it_does_not_implement() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kubelet.yaml");
    std::fs::write(
        &file,
        "kind: KubeletConfiguration\ntopologyManagerPolicy: single-numa-node\nport: 0\n\
         healthzPort: 0\n",
    )?;
    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let mut child = Command::new(agent_binary())
        .arg("--config")
        .arg(&file)
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--hostname-override")
        .arg("e2e-config-refused")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    // Validation comes before anything else the agent does.
    let deadline = Instant::now() + periods().agent_up();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.path().join("agent.log"))?;
    let status = status.with_context(|| format!("the agent kept running; its log:\n{log}"))?;
    ensure!(!status.success(), "the agent exited {status}; log:\n{log}");
    ensure!(
        log.contains("topologyManagerPolicy"),
        "the refusal does not name the field:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configz_serves_the_effective_configuration() -> Result<()> {
    let admin = client_identity("e2e-admin", "system:masters")?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &admin.ca_pem)?;
    let mut agent = Agent::start_with(
        "e2e-configz",
        None,
        &format!(
            "authorization:\n  mode: AlwaysAllow\nauthentication:\n  x509:\n    clientCAFile: {}\n\
             maxPods: 33\nkubeAPIQPS: 5\n",
            ca.display()
        ),
    )?;
    // The kubelet port is up once the agent has started.
    let deadline = Instant::now() + periods().agent_up();
    let (code, body) = loop {
        agent.assert_alive();
        match get(&agent, Some(&admin), "/configz").await {
            Ok(answer) => break answer,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("/configz never answered; log:\n{}", agent.log())));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    ensure!(code == 200, "/configz: {code} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).context("/configz is JSON")?;
    let object = v.as_object().context("/configz is an object")?;
    ensure!(
        object.keys().collect::<Vec<_>>() == ["kubeletconfig"],
        "/configz: {v}"
    );
    let c = &v["kubeletconfig"];
    ensure!(c["maxPods"] == 33, "maxPods: {c}");
    ensure!(c["port"] == agent.kubelet_port, "port: {c}");
    ensure!(c["readOnlyPort"] == agent.port, "readOnlyPort: {c}");
    ensure!(
        c["staticPodPath"] == agent.manifests().display().to_string(),
        "staticPodPath: {c}"
    );
    ensure!(
        c["syncFrequency"] == format!("{}s", periods().sync.as_secs()),
        "syncFrequency (a Go duration): {c}"
    );
    ensure!(c["authorization"]["mode"] == "AlwaysAllow", "{c}");
    ensure!(c["evictionHard"]["nodefs.available"] == "1Gi", "{c}");
    ensure!(
        c.get("kubeAPIQPS").is_none(),
        "an ignored field is served: {c}"
    );

    // Authenticated as every path of the kubelet port; kubelet does not serve it read-only.
    let (code, _) = get(&agent, None, "/configz").await?;
    ensure!(code == 401, "anonymous /configz answered {code}");
    let resp = reqwest::get(agent.url("/configz")).await?;
    ensure!(
        resp.status() == reqwest::StatusCode::NOT_FOUND,
        "the read-only port answered /configz with {}",
        resp.status()
    );
    // The ignored field was warned about.
    ensure!(
        agent.log().contains("kubeAPIQPS"),
        "no warning; log:\n{}",
        agent.log()
    );
    agent.assert_alive();
    Ok(())
}
