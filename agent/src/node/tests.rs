//! The node agent against the project's stand-in API server (`kube-standin`) and the in-memory CRI
//! runtime (`mk-fake-runtime`), with host facts read from a fake `/proc` tree.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube_standin::{Standin, StandinHandle, StandinOptions};
use mk_cri::CriClient;
use mk_fake_runtime::{FakeRuntime, ServerHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;

const NODE: &str = "node-int";
const WAIT: Duration = Duration::from_secs(20);

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// A fake host: 2 CPUs, 8 GiB with plenty free, plenty of PIDs.
fn fake_host(root: &Path) -> HostPaths {
    write(root, "proc/cpuinfo", "processor : 0\n\nprocessor : 1\n");
    write(
        root,
        "proc/meminfo",
        "MemTotal:  8388608 kB\nMemFree:  4194304 kB\nInactive(file):  1048576 kB\nSwapTotal:  0 kB\n",
    );
    write(root, "proc/sys/kernel/osrelease", "6.1.0-test\n");
    write(root, "proc/sys/kernel/random/boot_id", "boot-1\n");
    write(root, "proc/sys/kernel/pid_max", "4194304\n");
    write(root, "proc/sys/kernel/threads-max", "100000\n");
    write(root, "proc/loadavg", "0.00 0.00 0.00 1/300 42\n");
    write(root, "etc/machine-id", "machine-1\n");
    write(root, "etc/os-release", "PRETTY_NAME=\"Test Linux\"\n");
    HostPaths::under(root)
}

struct Harness {
    _dir: tempfile::TempDir,
    _standin: StandinHandle,
    fake: FakeRuntime,
    _cri_server: ServerHandle,
    cri: CriClient,
    client: kube::Client,
    paths: HostPaths,
    root_dir: std::path::PathBuf,
}

impl Harness {
    async fn start() -> Self {
        let standin = Standin::start("127.0.0.1:0", StandinOptions::default())
            .await
            .expect("stand-in API server");
        Self::with_standin(standin).await
    }

    async fn with_standin(standin: StandinHandle) -> Self {
        let crate::test_cri::FakeCri {
            dir,
            fake,
            server: cri_server,
            cri,
        } = crate::test_cri::serve_fake(&["busybox"]);
        let client = client_for(&standin.url());
        let paths = fake_host(&dir.path().join("host"));
        let root_dir = dir.path().join("var/lib/kubelet");
        Self {
            _dir: dir,
            _standin: standin,
            fake,
            _cri_server: cri_server,
            cri,
            client,
            paths,
            root_dir,
        }
    }

    fn config() -> KubeletConfiguration {
        KubeletConfiguration {
            node_status_update_frequency: Duration::from_millis(200),
            node_status_report_frequency: Duration::from_secs(300),
            node_lease_duration_seconds: 1,
            kube_reserved: BTreeMap::from([("cpu".into(), "500m".into())]),
            // Only the memory threshold: the disk of the machine running the tests is not ours.
            eviction_hard: BTreeMap::from([("memory.available".into(), "100Mi".into())]),
            register_with_taints: vec![Taint {
                key: "example.com/dedicated".into(),
                value: Some("edge".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
            ..Default::default()
        }
    }

    fn options(&self) -> NodeOptions {
        let mut options = NodeOptions::new(NODE, &self.root_dir);
        options.node_ip = Some("10.1.2.3".parse().expect("ip"));
        options.node_labels = BTreeMap::from([("role".into(), "edge".into())]);
        options.host_paths = self.paths.clone();
        options
    }

    /// Starts the agent with a PLEG that has relisted (healthy).
    fn run(
        &self,
        config: &KubeletConfiguration,
    ) -> (NodeHandle, JoinHandle<()>, CancellationToken) {
        let cancel = CancellationToken::new();
        let agent = NodeAgent::new(
            self.client.clone(),
            self.cri.clone(),
            config,
            self.options(),
            healthy_pleg(&self.cri, &cancel),
        )
        .expect("valid config");
        let handle = agent.handle();
        let task = tokio::spawn(agent.run(cancel.clone()));
        (handle, task, cancel)
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), lease::LEASE_NAMESPACE)
    }
}

fn client_for(url: &str) -> kube::Client {
    let mut config = kube::Config::new(url.parse().expect("url"));
    config.connect_timeout = Some(Duration::from_secs(1));
    kube::Client::try_from(config).expect("kube client")
}

/// A real PLEG relisting the fake runtime, so its health is the agent's.
fn healthy_pleg(cri: &CriClient, cancel: &CancellationToken) -> PlegHealth {
    let health = PlegHealth::default();
    let pleg = crate::pleg::Pleg {
        cri: cri.clone(),
        node_name: NODE.into(),
        period: Duration::from_millis(100),
        evented: false,
        metrics: crate::metrics::Metrics::default(),
        health: health.clone(),
        cache: crate::pod_cache::PodCache::default(),
    };
    let (events, mut events_rx) = tokio::sync::mpsc::channel(16);
    let (relists, _) = tokio::sync::watch::channel(None);
    tokio::spawn(pleg.run(events, relists, cancel.clone()));
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    health
}

/// Polls `check` every 50 ms until it returns `Some`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition(node: &Node, kind: &str) -> Option<NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .cloned()
}

fn is_ready(node: &Node) -> bool {
    condition(node, status::READY).is_some_and(|c| c.status == "True")
}

async fn ready_node(api: &Api<Node>) -> Node {
    eventually("a Ready node", || async {
        api.get_opt(NODE).await.ok().flatten().filter(is_ready)
    })
    .await
}

fn quantities(node: &Node, allocatable: bool) -> BTreeMap<String, String> {
    let status = node.status.clone().unwrap_or_default();
    let list = if allocatable {
        status.allocatable
    } else {
        status.capacity
    };
    list.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

#[tokio::test]
async fn registers_the_node_with_kubelets_labels_capacity_and_conditions() {
    let h = Harness::start().await;
    let (handle, task, cancel) = h.run(&Harness::config());
    let node = ready_node(&h.nodes()).await;

    let labels = node.metadata.labels.clone().unwrap_or_default();
    let arch = host::architecture();
    for (k, v) in [
        ("kubernetes.io/hostname", NODE),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch.as_str()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch.as_str()),
        ("role", "edge"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    assert!(!labels.contains_key(status::LABEL_INSTANCE_TYPE));
    let taints = node.spec.clone().and_then(|s| s.taints).unwrap_or_default();
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0].key, "example.com/dedicated");

    let capacity = quantities(&node, false);
    assert_eq!(capacity["cpu"], "2");
    assert_eq!(capacity["memory"], "8Gi");
    assert_eq!(capacity["pods"], "110");
    assert!(capacity.contains_key("ephemeral-storage"));
    let allocatable = quantities(&node, true);
    assert_eq!(allocatable["cpu"], "1500m");
    assert_eq!(allocatable["memory"], "8092Mi");
    assert_eq!(allocatable["pods"], "110");

    for (kind, status, reason) in [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ] {
        let c = condition(&node, kind).unwrap_or_else(|| panic!("{kind}"));
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            (status, Some(reason)),
            "{kind}"
        );
    }
    let status = node.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    assert!(
        info.container_runtime_version.starts_with("fake://"),
        "{info:?}"
    );
    assert_eq!(info.kubelet_version, KUBELET_VERSION);
    assert_eq!(info.os_image, "Test Linux");
    assert_eq!(info.kernel_version, "6.1.0-test");
    assert_eq!(info.machine_id, "machine-1");
    assert_eq!(info.boot_id, "boot-1");
    let addresses: Vec<(String, String)> = status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert_eq!(
        addresses,
        vec![
            ("InternalIP".to_string(), "10.1.2.3".to_string()),
            ("Hostname".to_string(), NODE.to_string()),
        ]
    );
    assert_eq!(
        status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        Some(10250)
    );
    let images = status.images.unwrap_or_default();
    assert!(
        images
            .iter()
            .flat_map(|i| i.names.iter().flatten())
            .any(|n| n.contains("busybox")),
        "{images:?}"
    );

    // The handle shows the node as the server has it.
    let seen = eventually("the handle", || async { handle.node().filter(is_ready) }).await;
    assert_eq!(seen.metadata.uid, node.metadata.uid);
    assert_eq!(handle.labels()["role"], "edge");
    assert_eq!(handle.allocatable()["cpu"].milli_value(), 1500);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent stops when cancelled")
        .expect("no panic");
}

#[tokio::test]
async fn status_is_patched_only_when_it_changes() {
    let h = Harness::start().await;
    let (_handle, _task, cancel) = h.run(&Harness::config());
    let api = h.nodes();
    let node = ready_node(&api).await;
    // Let the first post-registration update land, then watch ten update periods go by.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = api.get(NODE).await.expect("node");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api.get(NODE).await.expect("node");
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "heartbeat-only changes are not written"
    );
    let memory_since = condition(&after, "MemoryPressure").and_then(|c| c.last_transition_time);

    h.fake.set_network_ready(false);
    let not_ready = eventually("Ready=False", || async {
        api.get_opt(NODE)
            .await
            .ok()
            .flatten()
            .filter(|n| condition(n, "Ready").is_some_and(|c| c.status == "False"))
    })
    .await;
    let ready = condition(&not_ready, "Ready").expect("Ready");
    assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some(
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady \
             message:Network plugin returns error: cni plugin not initialized"
        )
    );
    assert_ne!(
        ready.last_transition_time,
        condition(&node, "Ready").and_then(|c| c.last_transition_time)
    );
    assert_eq!(
        condition(&not_ready, "MemoryPressure").and_then(|c| c.last_transition_time),
        memory_since,
        "unchanged conditions keep their transition time"
    );

    h.fake.set_network_ready(true);
    ready_node(&api).await;
    cancel.cancel();
}

#[tokio::test]
async fn lease_is_created_with_the_node_as_owner_and_renewed() {
    let h = Harness::start().await;
    let (_handle, _task, cancel) = h.run(&Harness::config());
    let node = ready_node(&h.nodes()).await;
    let leases = h.leases();
    let first = eventually("the lease", || async {
        leases.get_opt(NODE).await.ok().flatten()
    })
    .await;
    let spec = first.spec.clone().expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(NODE));
    assert_eq!(spec.lease_duration_seconds, Some(1));
    let owners = first.metadata.owner_references.clone().expect("owner");
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].api_version.as_str(), owners[0].kind.as_str()),
        ("v1", "Node")
    );
    assert_eq!(owners[0].name, NODE);
    assert_eq!(Some(owners[0].uid.clone()), node.metadata.uid);

    let first_renewal = spec.renew_time.expect("renewTime").0;
    let later = eventually("a renewal", || async {
        let lease = leases.get_opt(NODE).await.ok().flatten()?;
        let renewed = lease.spec.clone()?.renew_time?.0;
        (renewed > first_renewal).then_some(lease)
    })
    .await;
    assert_ne!(
        later.metadata.resource_version,
        first.metadata.resource_version
    );

    // Someone else writes the lease: the next renewal conflicts, re-reads and succeeds.
    let mut foreign = later.clone();
    if let Some(s) = foreign.spec.as_mut() {
        s.lease_duration_seconds = Some(1);
        s.holder_identity = Some(NODE.into());
    }
    foreign.metadata.labels = Some(BTreeMap::from([("touched".into(), "yes".into())]));
    let foreign = leases
        .replace(NODE, &PostParams::default(), &foreign)
        .await
        .expect("foreign update");
    let after_conflict = eventually("a renewal after a conflict", || async {
        let lease = leases.get_opt(NODE).await.ok().flatten()?;
        let newer = lease.metadata.resource_version != foreign.metadata.resource_version;
        newer.then_some(lease)
    })
    .await;
    assert_eq!(
        after_conflict
            .metadata
            .labels
            .and_then(|l| l.get("touched").cloned())
            .as_deref(),
        Some("yes"),
        "the renewal was based on the re-read lease"
    );
    cancel.cancel();
}

#[tokio::test]
async fn an_existing_node_is_adopted() {
    let h = Harness::start().await;
    let api = h.nodes();
    let existing = Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/arch".into(), "s390x".into()),
                ("custom".into(), "kept".into()),
            ])),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![Taint {
                key: "admin/cordon".into(),
                effect: "NoExecute".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &existing)
        .await
        .expect("pre-existing node");
    let (_handle, _task, cancel) = h.run(&Harness::config());
    let adopted = ready_node(&api).await;
    assert_eq!(
        adopted.metadata.uid, created.metadata.uid,
        "the same object"
    );
    let labels = adopted.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels["kubernetes.io/arch"],
        host::architecture(),
        "default labels reconciled"
    );
    assert_eq!(labels["kubernetes.io/hostname"], NODE);
    assert_eq!(labels["custom"], "kept");
    assert!(
        !labels.contains_key("role"),
        "--node-labels only apply at registration"
    );
    let taints = adopted
        .spec
        .clone()
        .and_then(|s| s.taints)
        .unwrap_or_default();
    assert_eq!(taints.len(), 1, "taints are left alone");
    assert_eq!(taints[0].key, "admin/cordon");
    assert_eq!(quantities(&adopted, false)["cpu"], "2");
    cancel.cancel();
}

#[tokio::test]
async fn registration_waits_for_an_unreachable_api_server() {
    // Find a free port, start the agent against it, and only then start the API server there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let crate::test_cri::FakeCri {
        dir,
        fake: _fake,
        server: _server,
        cri,
    } = crate::test_cri::serve_fake(&[]);
    let mut options = NodeOptions::new(NODE, dir.path());
    options.host_paths = fake_host(&dir.path().join("host"));
    let cancel = CancellationToken::new();
    let pleg = healthy_pleg(&cri, &cancel);
    let agent =
        NodeAgent::new(client_for(&url), cri, &Harness::config(), options, pleg).expect("agent");
    tokio::spawn(agent.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let standin = Standin::start(("127.0.0.1", port), StandinOptions::default())
        .await
        .expect("stand-in on the reserved port");
    let client = client_for(&standin.url());
    let started = std::time::Instant::now();
    let node = ready_node(&Api::all(client)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "registration back-off is capped at 7 s"
    );
    assert!(node.metadata.uid.is_some());
    cancel.cancel();
}

#[tokio::test]
async fn without_register_node_the_node_is_not_created() {
    let h = Harness::start().await;
    let config = KubeletConfiguration {
        register_node: false,
        ..Harness::config()
    };
    let (handle, _task, cancel) = h.run(&config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.nodes().get_opt(NODE).await.expect("get").is_none());
    assert!(handle.node().is_none());
    assert!(
        h.leases().get_opt(NODE).await.expect("get").is_none(),
        "no owner, no lease"
    );
    // Created by someone else: its status is kept from then on.
    h.nodes()
        .create(
            &PostParams::default(),
            &Node {
                metadata: ObjectMeta {
                    name: Some(NODE.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create");
    ready_node(&h.nodes()).await;
    eventually("the lease", || async {
        h.leases().get_opt(NODE).await.ok().flatten()
    })
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn an_unchanged_status_is_still_reported_every_report_frequency() {
    let h = Harness::start().await;
    let config = KubeletConfiguration {
        node_status_report_frequency: Duration::from_millis(600),
        ..Harness::config()
    };
    let (_handle, _task, cancel) = h.run(&config);
    let api = h.nodes();
    let first = ready_node(&api).await;
    let heartbeat = |n: &Node| condition(n, "Ready").and_then(|c| c.last_heartbeat_time);
    let transition = |n: &Node| condition(n, "Ready").and_then(|c| c.last_transition_time);
    let later = eventually("a heartbeat-only report", || async {
        let node = api.get_opt(NODE).await.ok().flatten()?;
        (heartbeat(&node) > heartbeat(&first)).then_some(node)
    })
    .await;
    assert_eq!(transition(&later), transition(&first));
    cancel.cancel();
}

/// Graceful node shutdown: the node reports NotReady with kubelet's `node is shutting down` as soon
/// as it shuts down, not at its next status update (an hour away here), and shows it on its handle.
#[tokio::test]
async fn a_node_that_shuts_down_reports_not_ready_at_once() {
    let h = Harness::start().await;
    let config = KubeletConfiguration {
        node_status_update_frequency: Duration::from_secs(3600),
        ..Harness::config()
    };
    let cancel = CancellationToken::new();
    let (switch, shutdown) = crate::nodeshutdown::channel();
    let agent = NodeAgent::new(
        h.client.clone(),
        h.cri.clone(),
        &config,
        h.options(),
        healthy_pleg(&h.cri, &cancel),
    )
    .expect("valid config")
    .with_shutdown(shutdown);
    let handle = agent.handle();
    let task = tokio::spawn(agent.run(cancel.clone()));
    let api = h.nodes();
    ready_node(&api).await;

    switch.begin();
    let not_ready = eventually("Ready=False at once", || async {
        api.get_opt(NODE)
            .await
            .ok()
            .flatten()
            .filter(|n| condition(n, status::READY).is_some_and(|c| c.status == "False"))
    })
    .await;
    let condition_now = condition(&not_ready, status::READY).expect("Ready");
    assert_eq!(condition_now.reason.as_deref(), Some("KubeletNotReady"));
    assert_eq!(
        condition_now.message.as_deref(),
        Some("node is shutting down")
    );
    eventually("the handle shows it", || async {
        handle
            .node()
            .filter(crate::nodeshutdown::manager::shows_shutdown)
    })
    .await;
    cancel.cancel();
    let _ = task.await;
}
