//! Unit-test support: the worker context and PLEG of a test node on a fake CRI runtime, and the
//! sync loop that drives its workers, as the pod worker, eviction and node shutdown tests run
//! their nodes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mk_cri::CriClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::runtime_manager::RuntimeManager;
use super::{KillRequest, PodKiller, PodWorkers, WorkerContext};
use crate::events::EventRecorder;
use crate::images::ImageManager;
use crate::metrics::Metrics;
use crate::pleg::{Pleg, PlegHealth, Relist};
use crate::pod_cache::PodCache;
use crate::prober::ProbeManager;
use crate::sources::PodSet;
use crate::status::StatusManager;

/// kubelet's runtime request timeout.
const CRI_TIMEOUT: Duration = Duration::from_secs(120);
/// kubelet's housekeeping period.
pub const HOUSEKEEPING: Duration = Duration::from_secs(2);

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

/// What a test sees of its node's sync loop beyond the workers' effects.
pub trait LoopHooks: Send + 'static {
    /// A kill request (eviction, node shutdown), before the workers take it.
    fn on_kill(&mut self, _request: &KillRequest) {}
    /// After every turn of the loop.
    fn after_turn(&mut self, _workers: &PodWorkers) {}
}

impl LoopHooks for () {}

/// A test node whose PLEG and sync loop run.
pub struct RunningNode {
    /// The pods the node's sources want.
    pub desired: watch::Sender<PodSet>,
    /// Kills pods through the sync loop, as eviction and node shutdown do.
    pub killer: PodKiller,
    /// The sync loop; it ends with the token [`run_node`] was given.
    pub driver: JoinHandle<()>,
}

/// Runs `pleg` and the workers of `ctx` under a sync loop like the agent's (without admission and
/// resizes): pod set updates, PLEG events, probe results, finished workers, kill requests, and
/// every [`HOUSEKEEPING`] the orphans of the last relist; both stop with `cancel`.
pub fn run_node(
    ctx: Arc<WorkerContext>,
    pleg: Pleg,
    probe_results: mpsc::UnboundedReceiver<String>,
    hooks: impl LoopHooks,
    cancel: CancellationToken,
) -> RunningNode {
    let (events_tx, events) = mpsc::channel(1024);
    let (relist_tx, relists) = watch::channel(None);
    tokio::spawn(pleg.run(events_tx, relist_tx, cancel.clone()));
    let (workers, finished) = PodWorkers::new(ctx);
    let (desired_tx, desired) = watch::channel(PodSet::default());
    let (killer, kills) = PodKiller::channel();
    let inputs = LoopInputs {
        finished,
        desired,
        events,
        probes: probe_results,
        relists,
        kills,
    };
    RunningNode {
        desired: desired_tx,
        killer,
        driver: tokio::spawn(sync_loop(workers, inputs, hooks, cancel)),
    }
}

struct LoopInputs {
    finished: mpsc::UnboundedReceiver<String>,
    desired: watch::Receiver<PodSet>,
    events: mpsc::Receiver<String>,
    probes: mpsc::UnboundedReceiver<String>,
    relists: watch::Receiver<Option<Relist>>,
    kills: mpsc::UnboundedReceiver<KillRequest>,
}

async fn sync_loop(
    mut workers: PodWorkers,
    mut inputs: LoopInputs,
    mut hooks: impl LoopHooks,
    cancel: CancellationToken,
) {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = inputs.desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let set = inputs.desired.borrow_and_update().clone();
                workers.update(&set);
            }
            Some(uid) = inputs.events.recv() => workers.wake(&uid),
            Some(uid) = inputs.probes.recv() => workers.wake_for_probe(&uid),
            Some(uid) = inputs.finished.recv() => workers.on_finished(&uid),
            Some(request) = inputs.kills.recv() => {
                hooks.on_kill(&request);
                let _ = request.reply.send(workers.kill(&request.uid, request.kill));
            }
            _ = housekeeping.tick() => {
                let relist = inputs.relists.borrow().clone();
                if let Some(relist) = relist {
                    workers.clean_up_orphans(&relist.pods);
                }
            }
        }
        hooks.after_turn(&workers);
    }
}
