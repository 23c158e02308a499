//! The agent joined to a cluster: node registration, lease, pods bound to the node, status, deletion,
//! admission, mirror pods, and surviving API server history loss. Runs against the in-process stand-in
//! API server, or unchanged against a real cluster when `KUBECONFIG` is set (see README).
//! Run through `e2e/run-tests.sh`.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use mk_e2e::cluster::{Cluster, pod};
use mk_e2e::{Agent, periods};

const RUNNING: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref()?.phase.clone()
}

fn first_container(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn running_ready(p: &Pod) -> Option<()> {
    let cs = first_container(p)?;
    (phase(p).as_deref() == Some("Running") && cs.ready && cs.state?.running.is_some())
        .then_some(())
}

async fn wait_node_ready(cluster: &Cluster, agent: &mut Agent) -> anyhow::Result<Node> {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let timeout = periods().node_ready();
    let deadline = Instant::now() + timeout;
    loop {
        agent.assert_alive();
        if let Some(node) = nodes.get_opt(&agent.node).await? {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            if ready {
                return Ok(node);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {} not Ready within {timeout:?}\n{}",
            agent.node,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_turns_ready_and_renews_its_lease() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut agent = Agent::join("e2e-node", &cluster, "")?;
    let node = wait_node_ready(&cluster, &mut agent).await?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&agent.node));
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let status = node.status.clone().unwrap_or_default();
    let capacity = status.capacity.unwrap_or_default();
    for r in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(capacity.contains_key(r), "capacity lacks {r}: {capacity:?}");
    }
    let info = status.node_info.expect("nodeInfo");
    assert!(
        info.container_runtime_version
            .starts_with(&format!("{}://", mk_e2e::runtime_name())),
        "{}",
        info.container_runtime_version
    );
    assert!(
        status
            .addresses
            .unwrap_or_default()
            .iter()
            .any(|a| a.type_ == "InternalIP")
    );
    if !cluster.is_standin() {
        // The version skew policy: a kubelet at most three minors older than its API server,
        // never newer (kubeadm and `kubectl version` check the same).
        let server = cluster.client.apiserver_version().await?;
        let minor = |v: &str| -> Option<u32> {
            v.trim_start_matches('v')
                .split('.')
                .nth(1)?
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        };
        let server_minor = minor(&server.git_version).expect("the API server's version");
        let kubelet_minor = minor(&info.kubelet_version).expect("kubeletVersion");
        assert!(
            kubelet_minor <= server_minor && kubelet_minor + 3 >= server_minor,
            "kubeletVersion {} is outside the skew kubelets may have with API server {}",
            info.kubelet_version,
            server.git_version
        );
    }

    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let timeout = periods().lease_created();
    let deadline = Instant::now() + timeout;
    let first = loop {
        if let Some(lease) = leases.get_opt(&agent.node).await? {
            break lease;
        }
        anyhow::ensure!(Instant::now() < deadline, "no lease within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spec = first.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some(agent.node.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let first_renew = spec.renew_time.expect("renewTime").0;
    let timeout = periods().lease_renewed();
    let deadline = Instant::now() + timeout;
    loop {
        let renew = leases
            .get(&agent.node)
            .await?
            .spec
            .and_then(|s| s.renew_time)
            .expect("renewTime")
            .0;
        if renew > first_renew {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "lease not renewed within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_pods_run_report_status_and_finish_like_jobs() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut agent = Agent::join("e2e-pods", &cluster, "")?;
    wait_node_ready(&cluster, &mut agent).await?;
    let ns = "default";
    let name = format!("web-{}", agent.node);
    cluster
        .create_pod(ns, pod(&name, "Always", 5, RUNNING), &agent.node)
        .await?;
    cluster
        .wait_pod(ns, &name, periods().api_pod_start(), running_ready)
        .await?;
    let p = cluster.pods(ns).get(&name).await?;
    let status = p.status.clone().expect("status");
    assert!(status.pod_ip.is_some(), "podIP missing");
    assert!(status.host_ip.is_some(), "hostIP missing");
    assert!(status.start_time.is_some());
    let conditions = status.conditions.clone().unwrap_or_default();
    for kind in [
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodReadyToStartContainers",
    ] {
        let c = conditions
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind} condition"));
        assert_eq!(c.status, "True", "{kind}");
    }
    let cs = first_container(&p).expect("container status");
    assert!(
        cs.container_id
            .unwrap_or_default()
            .starts_with(&format!("{}://", mk_e2e::runtime_name()))
    );
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    // The agent posted the pod's events, as kubelet does.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.client.clone(), ns);
    let deadline = Instant::now() + periods().event_posted();
    loop {
        let list = events
            .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        if ["Pulled", "Created", "Started"]
            .iter()
            .all(|r| reasons.iter().any(|x| x == r))
        {
            let started = list
                .items
                .iter()
                .find(|e| e.reason.as_deref() == Some("Started"))
                .expect("Started");
            assert_eq!(
                started.source.as_ref().and_then(|s| s.component.as_deref()),
                Some("kubelet")
            );
            assert_eq!(
                started.involved_object.field_path.as_deref(),
                Some("spec.containers{main}")
            );
            break;
        }
        assert!(Instant::now() < deadline, "events missing, got {reasons:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Job-like pods: exit 0 → Succeeded, exit 3 → Failed with the exit code.
    let ok = format!("job-ok-{}", agent.node);
    let bad = format!("job-bad-{}", agent.node);
    cluster
        .create_pod(ns, pod(&ok, "Never", 2, "echo done"), &agent.node)
        .await?;
    cluster
        .create_pod(ns, pod(&bad, "Never", 2, "exit 3"), &agent.node)
        .await?;
    cluster
        .wait_pod(ns, &ok, periods().api_pod_complete(), |p| {
            (phase(p).as_deref() == Some("Succeeded")).then_some(())
        })
        .await?;
    let failed = cluster
        .wait_pod(ns, &bad, periods().api_pod_complete(), |p| {
            (phase(p).as_deref() == Some("Failed")).then(|| p.clone())
        })
        .await?;
    let terminated = first_container(&failed)
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    for n in [&name, &ok, &bad] {
        cluster.delete_pod(ns, n).await?;
    }
    for n in [&name, &ok, &bad] {
        cluster
            .wait_pod_deleted(ns, n, periods().api_pod_deleted(Duration::from_secs(5)))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_stops_within_its_grace_period_and_is_removed() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut agent = Agent::join("e2e-delete", &cluster, "")?;
    wait_node_ready(&cluster, &mut agent).await?;
    let ns = "default";
    let name = format!("stubborn-{}", agent.node);
    // Ignores SIGTERM: only the end of its 3 s grace period stops it.
    let grace = Duration::from_secs(3);
    cluster
        .create_pod(
            ns,
            pod(
                &name,
                "Always",
                grace.as_secs() as i64,
                "trap '' TERM; while true; do sleep 1; done",
            ),
            &agent.node,
        )
        .await?;
    cluster
        .wait_pod(ns, &name, periods().api_pod_start(), running_ready)
        .await?;
    let started = Instant::now();
    cluster.delete_pod(ns, &name).await?;
    // The agent's guarantee: the workload gets its whole grace period, then it is killed and the
    // pod deleted for good.
    let bound = periods().api_pod_deleted(grace);
    let took = cluster.wait_pod_deleted(ns, &name, bound).await?;
    // Not before the grace period (less the one second the API's timestamps may lose).
    assert!(
        took >= grace - Duration::from_secs(1),
        "removed before its grace period: {:?}",
        started.elapsed()
    );
    assert!(
        took < bound,
        "grace {grace:?}, removal took {took:?} (bound {bound:?})"
    );
    let deadline = Instant::now() + periods().leftovers_removed();
    while !agent.sandboxes().await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "sandbox left behind");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_do_not_fit_are_rejected_with_kubelets_reasons() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut agent = Agent::join("e2e-admit", &cluster, "maxPods: 1\n")?;
    wait_node_ready(&cluster, &mut agent).await?;
    let ns = "default";
    let first = format!("first-{}", agent.node);
    cluster
        .create_pod(ns, pod(&first, "Always", 2, RUNNING), &agent.node)
        .await?;
    cluster
        .wait_pod(ns, &first, periods().api_pod_start(), running_ready)
        .await?;

    let second = format!("second-{}", agent.node);
    cluster
        .create_pod(ns, pod(&second, "Always", 2, RUNNING), &agent.node)
        .await?;
    let rejected = cluster
        .wait_pod(ns, &second, periods().api_pod_rejected(), |p| {
            (phase(p).as_deref() == Some("Failed")).then(|| p.clone())
        })
        .await?;
    let status = rejected.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("OutOfpods"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .starts_with("Pod was rejected: Node didn't have enough resource: pods")
    );

    cluster.delete_pod(ns, &first).await?;
    cluster
        .wait_pod_deleted(
            ns,
            &first,
            periods().api_pod_deleted(Duration::from_secs(2)),
        )
        .await?;
    let picky = format!("picky-{}", agent.node);
    let mut p = pod(&picky, "Always", 2, RUNNING);
    p.spec.as_mut().expect("spec").node_selector =
        Some([("disktype".to_string(), "ssd".to_string())].into());
    cluster.create_pod(ns, p, &agent.node).await?;
    let rejected = cluster
        .wait_pod(ns, &picky, periods().api_pod_rejected(), |p| {
            (phase(p).as_deref() == Some("Failed")).then(|| p.clone())
        })
        .await?;
    assert_eq!(
        rejected.status.and_then(|s| s.reason).as_deref(),
        Some("NodeAffinity")
    );
    // Only the rejected pods are checked: the deleted first pod's sandbox may still be on its way
    // out.
    let sandboxes = agent.sandboxes().await?;
    assert!(
        !sandboxes.iter().any(|s| s
            .metadata
            .as_ref()
            .is_some_and(|m| m.name == second || m.name == picky)),
        "a rejected pod never gets a sandbox: {sandboxes:?}"
    );
    for n in [&second, &picky] {
        cluster.delete_pod(ns, n).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_restart_and_history_loss_do_not_restart_running_containers() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_standin().await?;
    let mut agent = Agent::join("e2e-gone", &cluster, "")?;
    wait_node_ready(&cluster, &mut agent).await?;
    let ns = "default";
    let name = format!("steady-{}", agent.node);
    cluster
        .create_pod(ns, pod(&name, "Always", 2, RUNNING), &agent.node)
        .await?;
    cluster
        .wait_pod(ns, &name, periods().api_pod_start(), running_ready)
        .await?;
    let before = agent.containers().await?;
    assert_eq!(before.len(), 1);
    // The API server goes down; meanwhile another replica binds a new pod to the node and the history
    // is compacted. When it is back, resuming the agent's watch gets 410 Gone: the agent must relist,
    // find the new pod, and leave what runs alone.
    let after_name = format!("after-{}", agent.node);
    let node_name = agent.node.clone();
    let new_pod = pod(&after_name, "Always", 2, RUNNING);
    let restarted = cluster
        .restart_api(|replica| async move {
            let mut p = new_pod;
            p.spec.get_or_insert_with(Default::default).node_name = Some(node_name);
            Api::<Pod>::namespaced(replica, ns)
                .create(&Default::default(), &p)
                .await?;
            Ok(())
        })
        .await?;
    // This test always runs on the stand-in: a real API server cannot be restarted and compacted on
    // demand.
    anyhow::ensure!(restarted, "the stand-in did not restart");
    cluster
        .wait_pod(ns, &after_name, periods().api_pod_start(), running_ready)
        .await?;
    let relists = agent
        .log()
        .matches("listed the node's pods from the API server")
        .count();
    assert!(
        relists >= 2,
        "the agent did not relist after the restart:\n{}",
        agent.log()
    );
    let still = agent.containers().await?;
    let original = still
        .iter()
        .find(|c| c.id == before[0].id)
        .expect("the first container still exists");
    assert_eq!(
        original.state,
        mk_cri::api::ContainerState::ContainerRunning as i32
    );
    let p = cluster.pods(ns).get(&name).await?;
    assert_eq!(first_container(&p).map(|c| c.restart_count), Some(0));
    for n in [&name, &after_name] {
        cluster.delete_pod(ns, n).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pod_has_a_mirror_pod() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut agent = Agent::join("e2e-mirror", &cluster, "")?;
    let node = wait_node_ready(&cluster, &mut agent).await?;
    agent.write_manifest(
        "static.yaml",
        &mk_e2e::busybox_pod("static", "Always", 2, RUNNING),
    )?;
    let name = format!("static-{}", agent.node);
    let mirror = cluster
        .wait_pod("default", &name, periods().mirror_created(), |p| {
            running_ready(p).map(|_| p.clone())
        })
        .await?;
    let annotations = mirror.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key("kubernetes.io/config.mirror"),
        "{annotations:?}"
    );
    let owner = &mirror.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", agent.node.as_str())
    );
    assert_eq!(Some(&owner.uid), node.metadata.uid.as_ref());

    // A deleted mirror pod comes back; the static pod itself never stopped.
    let container = agent.containers().await?[0].id.clone();
    cluster
        .pods("default")
        .delete(
            &name,
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    let old_uid = mirror.metadata.uid.clone();
    cluster
        .wait_pod("default", &name, periods().mirror_recreated(), |p| {
            (p.metadata.uid != old_uid).then_some(())
        })
        .await?;
    assert_eq!(agent.containers().await?[0].id, container);
    // Removing the manifest removes the mirror.
    agent.remove_manifest("static.yaml")?;
    cluster
        .wait_pod_deleted(
            "default",
            &name,
            periods().mirror_deleted(Duration::from_secs(2)),
        )
        .await?;
    Ok(())
}
