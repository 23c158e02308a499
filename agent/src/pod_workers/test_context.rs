//! Unit-test support: the worker context and PLEG of a test node on a fake CRI runtime, as the
//! pod worker, eviction and node shutdown tests build their nodes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mk_cri::CriClient;
use tokio::sync::{mpsc, watch};

use super::WorkerContext;
use super::runtime_manager::RuntimeManager;
use crate::events::EventRecorder;
use crate::images::ImageManager;
use crate::metrics::Metrics;
use crate::pleg::{Pleg, PlegHealth};
use crate::pod_cache::PodCache;
use crate::prober::ProbeManager;
use crate::status::StatusManager;

/// kubelet's runtime request timeout.
const CRI_TIMEOUT: Duration = Duration::from_secs(120);

/// A test node's shared parts, before its workers and PLEG run.
pub struct TestContext {
    pub ctx: Arc<WorkerContext>,
    pub metrics: Metrics,
    pub status: StatusManager,
    /// The prober's wakes (the sync loop's probe results).
    pub probe_results: mpsc::UnboundedReceiver<String>,
    /// The PLEG filling the context's pod cache; run it with [`Pleg::run`].
    pub pleg: Pleg,
}

/// The worker context of node `node` on the runtime at `endpoint`, its files under `root`, its PLEG
/// relisting every `relist` (following container events when `evented`).
pub fn test_context(
    endpoint: &str,
    root: &Path,
    node: &str,
    events: EventRecorder,
    relist: Duration,
    evented: bool,
) -> TestContext {
    let metrics = Metrics::default();
    let cri = CriClient::new(endpoint, CRI_TIMEOUT, metrics.cri.clone()).expect("endpoint");
    let (probe_tx, probe_results) = mpsc::unbounded_channel();
    let prober = ProbeManager::new(
        cri.clone(),
        events.clone(),
        metrics.prober.clone(),
        probe_tx,
    );
    let (_node_tx, node_rx) = watch::channel(None);
    let cache = PodCache::default();
    let status = StatusManager::default();
    let ctx = Arc::new(WorkerContext {
        runtime: RuntimeManager {
            cri: cri.clone(),
            images: ImageManager::new(cri.clone(), None),
            metrics: metrics.clone(),
            events,
            node_name: node.into(),
            pod_logs_dir: root.join("logs"),
            cgroups: {
                // A recorded cgroup v1 tree: the pod cgroups the workers make land here.
                for controller in ["cpu", "cpuacct", "memory", "pids"] {
                    std::fs::create_dir_all(root.join("cgroup").join(controller))
                        .expect("cgroup tree");
                }
                crate::cm::PodCgroups::new(&crate::cm::CgroupSettings {
                    driver: crate::cm::CgroupDriver::Cgroupfs,
                    cgroup_root: "/".into(),
                    cgroups_per_qos: true,
                    mount: root.join("cgroup"),
                })
            },
            host_ip: Some("127.0.0.1".into()),
            client: None,
            volumes: crate::volumes::VolumeManager::new(root.join("root"), None),
            root_dir: root.join("root"),
            dns: crate::kuberuntime::security::DnsSettings {
                cluster_dns: vec![],
                cluster_domain: "cluster.local".into(),
                host_resolv_conf: String::new(),
            },
            node: node_rx,
            applied: Default::default(),
        },
        cache: cache.clone(),
        status: status.clone(),
        prober,
        metrics: metrics.clone(),
        runtime_name: "fake".into(),
        resync: Duration::from_secs(60),
    });
    let pleg = Pleg {
        cri,
        node_name: node.into(),
        period: relist,
        evented,
        metrics: metrics.clone(),
        health: PlegHealth::default(),
        cache,
    };
    TestContext {
        ctx,
        metrics,
        status,
        probe_results,
        pleg,
    }
}
