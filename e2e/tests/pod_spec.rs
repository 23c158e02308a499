//! The everyday pod spec, through the real agent and containerd, against the stand-in API server (or a
//! real cluster with `KUBECONFIG`). Each test checks what a user would: what the container prints,
//! its status, its events. Run through `e2e/run-tests.sh`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, Secret};
use kube::Api;
use kube::api::PostParams;
use mk_e2e::cluster::Cluster;
use mk_e2e::{Agent, periods};

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("pod")
}

fn status_of(p: &Pod, name: &str) -> Option<ContainerStatus> {
    let s = p.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .cloned()
}

async fn joined(prefix: &str, extra: &str) -> anyhow::Result<(Cluster, Agent)> {
    let cluster = Cluster::start().await?;
    let agent = Agent::join(prefix, &cluster, extra)?;
    Ok((cluster, agent))
}

async fn create(cluster: &Cluster, agent: &Agent, p: Pod) -> anyhow::Result<Pod> {
    cluster.create_pod("default", p, &agent.node).await
}

fn busybox() -> &'static str {
    mk_e2e::BUSYBOX
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_from_configmaps_secrets_and_the_downward_api() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-env", "").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), "default");
    let cm_name = format!("cfg-{}", agent.node);
    let secret_name = format!("creds-{}", agent.node);
    cms.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": cm_name}, "data": {"mode": "fast", "level": "3"}}))?).await?;
    secrets.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": secret_name}, "stringData": {"password": "hunter2"}}))?).await?;
    let name = format!("env-{}", agent.node);
    let p = create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "env"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": busybox(), "command": ["sh", "-c", "env | sort"],
            "resources": {"limits": {"memory": "64Mi"}},
            "envFrom": [{"configMapRef": {"name": cm_name}, "prefix": "CFG_"}],
            "env": [
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "password"}}},
                {"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "GREETING", "value": "hello $(MY_POD)"}
            ]
        }]}
    }))).await?;
    let done = cluster
        .wait_pod("default", &name, periods().api_pod_complete(), |p| {
            (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then(|| p.clone())
        })
        .await?;
    let ip = done
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("podIP");
    let out = agent
        .wait_output(&p, "main", 0, "PASSWORD=", periods().container_output())
        .await?;
    for line in [
        "CFG_mode=fast".to_string(),
        "CFG_level=3".to_string(),
        "PASSWORD=hunter2".to_string(),
        format!("MY_POD={name}"),
        "MY_APP=env".to_string(),
        format!("MY_NODE={}", agent.node),
        format!("MY_IP={ip}"),
        "MEM_MI=64".to_string(),
        format!("GREETING=hello {name}"),
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line} in:\n{out}");
    }

    // A missing non-optional reference keeps the container waiting with CreateContainerConfigError.
    let broken = format!("broken-{}", agent.node);
    create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": broken},
        "spec": {"containers": [{"name": "main", "image": busybox(), "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}]}
    }))).await?;
    let waiting = cluster
        .wait_pod("default", &broken, periods().api_pod_start(), |p| {
            let w = status_of(p, "main")?.state?.waiting?;
            (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(w)
        })
        .await?;
    assert_eq!(
        waiting.message.as_deref(),
        Some("configmap \"nope\" not found")
    );
    for n in [&name, &broken] {
        cluster.delete_pod("default", n).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_before_the_app() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-init", "").await?;
    let name = format!("init-{}", agent.node);
    let p = create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "initContainers": [
                {"name": "first", "image": busybox(), "command": ["sh", "-c", "echo first; sleep 1"]},
                {"name": "second", "image": busybox(), "command": ["sh", "-c", "echo second"]}
            ],
            "containers": [{"name": "main", "image": busybox(), "command": ["sh", "-c", "echo app; trap 'exit 0' TERM; while true; do sleep 1; done"]}]
        }
    }))).await?;
    let running = cluster
        .wait_pod(
            "default",
            &name,
            periods().api_pod_start_after_inits(2, Duration::from_secs(1)),
            |p| (p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| p.clone()),
        )
        .await?;
    let finished = |c: &str| {
        status_of(&running, c)
            .and_then(|s| s.state?.terminated)
            .expect("terminated init container")
    };
    let (first, second) = (finished("first"), finished("second"));
    assert_eq!(
        (first.exit_code, first.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert!(
        first.finished_at.as_ref().map(|t| t.0) <= second.started_at.as_ref().map(|t| t.0),
        "second started before first finished"
    );
    let app_started = status_of(&running, "main")
        .and_then(|s| s.state?.running?.started_at)
        .expect("app running")
        .0;
    assert!(second.finished_at.expect("finished").0 <= app_started);
    let initialized = running
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    assert!(
        initialized
            .iter()
            .any(|c| c.type_ == "Initialized" && c.status == "True")
    );
    agent
        .wait_output(&p, "main", 0, "app", periods().container_output())
        .await?;
    cluster.delete_pod("default", &name).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_runs_before_sigterm_and_post_start_runs_after_start() -> anyhow::Result<()> {
    const HOOKS_GRACE: Duration = Duration::from_secs(10);
    let (cluster, agent) = joined("e2e-hooks", "").await?;
    let name = format!("hooks-{}", agent.node);
    let p = create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": HOOKS_GRACE.as_secs(), "containers": [{
            "name": "main", "image": busybox(),
            "command": ["sh", "-c", "trap 'echo got-sigterm; exit 0' TERM; echo started; while true; do sleep 0.2; done"],
            "lifecycle": {
                // StartContainer returns once runc has started the container's init; PID 1 may
                // still be runc's non-dumpable init, whose /proc/1/fd is closed to others, when
                // the hook runs (a loaded CI run saw EACCES). The hook waits, boundedly, for PID 1
                // to be the container's own command, as a real postStart would for its app.
                "postStart": {"exec": {"command": ["sh", "-c",
                    "i=0; while [ $i -lt 100 ]; do echo post-start 2>/dev/null >/proc/1/fd/1 && exit 0; i=$((i+1)); sleep 0.1; done; exit 1"]}},
                "preStop": {"exec": {"command": ["sh", "-c", "echo pre-stop > /proc/1/fd/1; sleep 1"]}}
            }
        }]}
    }))).await?;
    cluster
        .wait_pod("default", &name, periods().api_pod_start(), |p| {
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await?;
    agent
        .wait_output(&p, "main", 0, "post-start", periods().container_output())
        .await?;
    // Held open: the agent removes the pod's logs soon after the pod is gone.
    let mut output = agent.watch_output(&p, "main", 0)?;
    cluster.delete_pod("default", &name).await?;
    let out = output
        .wait_for("got-sigterm", periods().api_pod_deleted(HOOKS_GRACE))
        .await?;
    let pre = out
        .find("pre-stop")
        .unwrap_or_else(|| panic!("no pre-stop output:\n{out}"));
    let term = out.find("got-sigterm").expect("sigterm");
    assert!(pre < term, "preStop must run before SIGTERM:\n{out}");
    cluster
        .wait_pod_deleted("default", &name, periods().api_pod_deleted(HOOKS_GRACE))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_termination_message_and_oom_killed() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-sec", "").await?;
    let user = format!("user-{}", agent.node);
    let p = create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": user},
        "spec": {"restartPolicy": "Never", "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "supplementalGroups": [4000]},
            "containers": [{"name": "main", "image": busybox(), "command": ["sh", "-c", "id; echo all done > /dev/termination-log"]}]}
    }))).await?;
    let done = cluster
        .wait_pod("default", &user, periods().api_pod_complete(), |p| {
            (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then(|| p.clone())
        })
        .await?;
    let out = agent
        .wait_output(&p, "main", 0, "uid=", periods().container_output())
        .await?;
    assert!(
        out.contains("uid=1000(app) gid=1000(app)") && out.contains("4000"),
        "{out}"
    );
    let terminated = status_of(&done, "main")
        .and_then(|s| s.state?.terminated)
        .expect("terminated");
    assert_eq!(terminated.message.as_deref(), Some("all done\n"));

    // A container's runAsGroup alone: the image's user (root in the test image) runs with that
    // group. (A pod-level one alone reaches the sandbox too, where containerd refuses it, as it
    // does under kubelet.)
    let group = format!("group-{}", agent.node);
    let g = create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": group},
        "spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": busybox(), "securityContext": {"runAsGroup": 2000},
                "command": ["sh", "-c", "echo ids $(id -u) $(id -g)"]}]}
    }))).await?;
    cluster
        .wait_pod("default", &group, periods().api_pod_complete(), |p| {
            (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(())
        })
        .await?;
    let out = agent
        .wait_output(&g, "main", 0, "ids ", periods().container_output())
        .await?;
    assert!(out.contains("ids 0 2000"), "{out}");

    let fallback = format!("fallback-{}", agent.node);
    create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": fallback},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": busybox(), "terminationMessagePolicy": "FallbackToLogsOnError", "command": ["sh", "-c", "echo something broke; exit 2"]}]}
    }))).await?;
    let failed = cluster
        .wait_pod("default", &fallback, periods().api_pod_complete(), |p| {
            (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then(|| p.clone())
        })
        .await?;
    let terminated = status_of(&failed, "main")
        .and_then(|s| s.state?.terminated)
        .expect("terminated");
    assert_eq!(terminated.exit_code, 2);
    assert_eq!(terminated.message.as_deref(), Some("something broke"));

    // 20 MiB limit, 60 MB held in a shell variable: the kernel kills it and the status says OOMKilled.
    let oom = format!("oom-{}", agent.node);
    create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": oom},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": busybox(),
            "resources": {"limits": {"memory": "20Mi"}},
            "command": ["sh", "-c", "x=$(head -c 60000000 /dev/zero | tr '\\0' 'x'); sleep 30"]}]}
    }))).await?;
    let killed = cluster
        // Filling 60 MB through a pipe: a fraction of a second idle; the workload's own CPU.
        .wait_pod(
            "default",
            &oom,
            periods().workload(Duration::from_secs(3)),
            |p| (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then(|| p.clone()),
        )
        .await?;
    let terminated = status_of(&killed, "main")
        .and_then(|s| s.state?.terminated)
        .expect("terminated");
    assert_eq!(
        terminated.reason.as_deref(),
        Some("OOMKilled"),
        "{terminated:?}"
    );
    assert_eq!(
        killed.status.and_then(|s| s.qos_class).as_deref(),
        Some("Burstable")
    );
    for n in [&user, &group, &fallback, &oom] {
        cluster.delete_pod("default", n).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_dns_and_host_aliases_reach_the_container() -> anyhow::Result<()> {
    // Far longer than deleting a finished pod may take, so that waiting it out would show.
    const LONG_GRACE: Duration = Duration::from_secs(300);
    let (cluster, agent) = joined(
        "e2e-res",
        "clusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\n",
    )
    .await?;
    let name = format!("res-{}", agent.node);
    let p = create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": LONG_GRACE.as_secs(),
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db.example"]}],
            "containers": [{"name": "main", "image": busybox(),
                "resources": {"requests": {"cpu": "250m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "64Mi"}},
                "command": ["sh", "-c", "echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) shares=$(cat /sys/fs/cgroup/cpu/cpu.shares) mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); cat /etc/resolv.conf /etc/hosts"]}]}
    }))).await?;
    cluster
        .wait_pod("default", &name, periods().api_pod_complete(), |p| {
            (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(())
        })
        .await?;
    let out = agent
        .wait_output(&p, "main", 0, "quota=", periods().container_output())
        .await?;
    assert!(
        out.contains(&format!("quota=50000 shares=256 mem={}", 64 * 1024 * 1024)),
        "{out}"
    );
    assert!(out.contains("nameserver 10.96.0.10"), "{out}");
    assert!(
        out.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{out}"
    );
    assert!(out.contains("options ndots:5"), "{out}");
    assert!(out.contains("10.1.2.3\tdb.example"), "{out}");
    assert!(out.contains("# Kubernetes-managed hosts file."), "{out}");
    // Its container has exited: deleting the pod does not wait out the grace period.
    let bound = periods().api_pod_deleted(Duration::ZERO);
    assert!(bound < LONG_GRACE, "the check below would not tell");
    let started = Instant::now();
    cluster.delete_pod("default", &name).await?;
    cluster.wait_pod_deleted("default", &name, bound).await?;
    assert!(started.elapsed() < bound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_flip_readiness_and_restart_on_liveness_failure() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-probe", "").await?;
    let name = format!("probed-{}", agent.node);
    create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
            "name": "main", "image": busybox(),
            "command": ["sh", "-c", "trap 'exit 0' TERM; touch /tmp/alive; sleep 3; touch /tmp/ready; sleep 3; rm /tmp/alive; while true; do sleep 1; done"],
            "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2}
        }]}
    }))).await?;
    // Running but not ready until the readiness file exists.
    let t0 = Instant::now();
    cluster
        .wait_pod("default", &name, periods().api_pod_start(), |p| {
            let cs = status_of(p, "main")?;
            (cs.state?.running.is_some() && !cs.ready).then_some(())
        })
        .await?;
    cluster
        // The file appears 3 s into the container; one successful probe (period 1 s) flips it.
        .wait_pod(
            "default",
            &name,
            periods().probe_acted(
                Duration::from_secs(3),
                Duration::from_secs(1),
                1,
                Duration::ZERO,
            ),
            |p| status_of(p, "main")?.ready.then_some(()),
        )
        .await?;
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "ready before the readiness file existed"
    );
    // Then the liveness file goes away: the container is killed and restarted.
    let restarted = cluster
        // The liveness file goes 3 s after the readiness file; two failed probes (period 1 s), the
        // kill within the 2 s grace, the restart.
        .wait_pod(
            "default",
            &name,
            periods().probe_acted(
                Duration::from_secs(3),
                Duration::from_secs(1),
                2,
                Duration::from_secs(2),
            ),
            |p| {
                let cs = status_of(p, "main")?;
                (cs.restart_count >= 1).then_some(cs)
            },
        )
        .await?;
    assert!(
        restarted.last_state.and_then(|l| l.terminated).is_some(),
        "lastState of the killed run"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.client.clone(), "default");
    let list = events
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    let messages: Vec<String> = list
        .items
        .iter()
        .filter_map(|e| Some(format!("{}: {}", e.reason.clone()?, e.message.clone()?)))
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Unhealthy: Liveness probe failed")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m == "Killing: Container main failed liveness probe, will be restarted"),
        "{messages:#?}"
    );
    // The probes counted where kubelet serves them (`/metrics/probes`, not `/metrics`), while the
    // pod's probe workers live.
    let probes = agent.get("/metrics/probes").await?;
    for series in [
        format!(
            "prober_probe_total{{probe_type=\"Liveness\",result=\"failed\",container=\"main\",pod=\"{name}\",namespace=\"default\""
        ),
        format!(
            "prober_probe_total{{probe_type=\"Readiness\",result=\"successful\",container=\"main\",pod=\"{name}\",namespace=\"default\""
        ),
        "# HELP prober_probe_total [BETA] ".to_string(),
        "process_start_time_seconds ".to_string(),
    ] {
        assert!(
            probes.contains(&series),
            "no {series:?} in /metrics/probes:\n{probes}"
        );
    }
    let metrics = agent.get("/metrics").await?;
    assert!(!metrics.contains("prober_probe_total"), "{metrics}");
    cluster.delete_pod("default", &name).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_carry_files_and_secret_updates_reach_them() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-vol", "").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), "default");
    let cm = format!("vol-cfg-{}", agent.node);
    let secret = format!("vol-sec-{}", agent.node);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            serde_json::json!({"metadata": {"name": cm}, "data": {"app.conf": "mode=fast"}}),
        )?,
    )
    .await?;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                serde_json::json!({"metadata": {"name": secret}, "stringData": {"token": "v1"}}),
            )?,
        )
        .await?;
    let host_dir = agent.dir.path().join("host-data");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("from-host"), "hello from the host")?;
    let name = format!("vol-{}", agent.node);
    let p = create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": name, "labels": {"tier": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
                {"name": "cfg", "configMap": {"name": cm}},
                {"name": "sec", "secret": {"secretName": secret, "defaultMode": 0o400}},
                {"name": "host", "hostPath": {"path": host_dir.to_string_lossy(), "type": "Directory"}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
            ],
            "initContainers": [{"name": "seed", "image": busybox(), "command": ["sh", "-c", "echo seeded > /scratch/seed"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
            "containers": [{"name": "main", "image": busybox(),
                "command": ["sh", "-c", "cat /scratch/seed /cfg/app.conf /host/from-host; echo; cat /info/labels; echo; grep -c ' /mem tmpfs' /proc/mounts; while true; do echo token=$(cat /sec/token); sleep 1; done"],
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "mem", "mountPath": "/mem"},
                    {"name": "cfg", "mountPath": "/cfg", "readOnly": true},
                    {"name": "sec", "mountPath": "/sec"},
                    {"name": "host", "mountPath": "/host"},
                    {"name": "info", "mountPath": "/info"}
                ]}]
        }
    }))).await?;
    cluster
        .wait_pod(
            "default",
            &name,
            periods().api_pod_start_after_inits(1, Duration::ZERO),
            |p| (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(()),
        )
        .await?;
    let out = agent
        .wait_output(&p, "main", 0, "token=v1", periods().container_output())
        .await?;
    for expected in [
        "seeded",
        "mode=fast",
        "hello from the host",
        "tier=\"web\"",
        "token=v1",
    ] {
        assert!(out.contains(expected), "missing {expected} in:\n{out}");
    }
    // The Secret changes: the running container sees the new value without a restart.
    secrets
        .patch(
            &secret,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"stringData": {"token": "v2"}})),
        )
        .await?;
    agent
        .wait_output(
            &p,
            "main",
            0,
            "token=v2",
            periods().volume_refresh() + periods().container_output(),
        )
        .await?;

    // A volume that cannot be set up: the pod stays Pending with a FailedMount event.
    let broken = format!("nocfg-{}", agent.node);
    create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": broken},
        "spec": {"volumes": [{"name": "cfg", "configMap": {"name": "does-not-exist"}}],
            "containers": [{"name": "main", "image": busybox(), "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]}
    }))).await?;
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.client.clone(), "default");
    // On the real API server the first set-up may be refused: the Node authorizer learns of the
    // pod's reference to the ConfigMap from its own watch, a moment after the pod is bound to the
    // node ("no relationship found between node … and this object"). kubelet and the agent report
    // that attempt and retry; the retry reads "not found".
    let deadline = Instant::now() + periods().sync_failure_reported() + periods().error_retry;
    loop {
        let list = events
            .list(
                &kube::api::ListParams::default().fields(&format!("involvedObject.name={broken}")),
            )
            .await?;
        let messages: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedMount"))
            .map(|e| e.message.clone().unwrap_or_default())
            .collect();
        for message in &messages {
            assert!(
                message.contains("configmap \"does-not-exist\" not found")
                    || message.contains("no relationship found between node"),
                "{message}"
            );
        }
        if messages.iter().any(|m| m.contains("not found")) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no FailedMount event saying the ConfigMap is not found: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pending = cluster.pods("default").get(&broken).await?;
    assert_eq!(
        pending.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    assert!(
        agent
            .sandboxes()
            .await?
            .iter()
            .all(|s| s.metadata.as_ref().is_none_or(|m| m.name != broken)),
        "no sandbox before its volumes"
    );

    // Deleting the pod unmounts and removes its volumes.
    let uid = p.metadata.uid.clone().unwrap_or_default();
    cluster.delete_pod("default", &name).await?;
    cluster
        .wait_pod_deleted(
            "default",
            &name,
            periods().api_pod_deleted(Duration::from_secs(2)),
        )
        .await?;
    let pod_dir = agent.dir.path().join("root/pods").join(&uid);
    let deadline = Instant::now() + periods().leftovers_removed();
    while pod_dir.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} left behind",
            pod_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    assert!(
        !mounts.contains(&uid),
        "a mount of the pod is left:\n{mounts}"
    );
    assert!(
        std::fs::read_to_string(host_dir.join("from-host"))?.contains("hello"),
        "hostPath contents untouched"
    );
    cluster.delete_pod("default", &broken).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sidecar_starts_first_and_keeps_running() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-sidecar", "").await?;
    let name = format!("sidecar-{}", agent.node);
    create(&cluster, &agent, pod(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 2,
            "initContainers": [{"name": "proxy", "image": busybox(), "restartPolicy": "Always",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}],
            "containers": [{"name": "main", "image": busybox(), "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}
    }))).await?;
    let running = cluster
        .wait_pod(
            "default",
            &name,
            periods().api_pod_start_after_inits(1, Duration::ZERO),
            |p| {
                let ok = p.status.as_ref()?.phase.as_deref() == Some("Running")
                    && status_of(p, "main")?.state?.running.is_some();
                ok.then(|| p.clone())
            },
        )
        .await?;
    let sidecar = status_of(&running, "proxy").expect("sidecar status");
    let sidecar_started = sidecar
        .state
        .and_then(|s| s.running)
        .and_then(|r| r.started_at)
        .expect("sidecar running")
        .0;
    let app_started = status_of(&running, "main")
        .and_then(|s| s.state?.running?.started_at)
        .expect("app running")
        .0;
    assert!(
        sidecar_started <= app_started,
        "the sidecar starts before the app"
    );
    let conditions = running
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Initialized" && c.status == "True"),
        "{conditions:?}"
    );
    cluster.delete_pod("default", &name).await?;
    Ok(())
}
