//! Wiring: the sources feed the desired pod set, the sync loop hands it to the pod workers, PLEG wakes
//! them, housekeeping removes what nobody wants, and the HTTP servers report.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mk_cri::{CriClient, api};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfiguration;
use crate::events::EventRecorder;
use crate::images::ImageManager;
use crate::metrics::Metrics;
use crate::pleg::{Pleg, PlegHealth, Relist};
use crate::pod_workers::{PodWorkers, WorkerContext};
use crate::server::{self, ServerState};
use crate::sources::{self, PodSet};
use crate::status::StatusManager;

/// kubelet's housekeeping period.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Cri(#[from] mk_cri::CriError),
    #[error("invalid address {0}")]
    Address(String),
    #[error("HTTP server on {addr}: {source}")]
    Server {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything the agent needs to run, resolved from the config file and flags.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config: KubeletConfiguration,
    pub node_name: String,
    pub root_dir: PathBuf,
    pub cgroup_mount: PathBuf,
    pub pleg_period: Duration,
}

fn now_version_name(v: &api::VersionResponse) -> String {
    if v.runtime_name.is_empty() {
        "cri".into()
    } else {
        v.runtime_name.clone()
    }
}

/// Runs the agent until `cancel`. Running pods are left running on exit, as kubelet does.
pub async fn run(options: AgentOptions, cancel: CancellationToken) -> Result<(), AgentError> {
    let metrics = Metrics::default();
    let config = &options.config;
    let cri = CriClient::new(
        &config.container_runtime_endpoint,
        config.runtime_request_timeout,
        metrics.cri.clone(),
    )?;
    let status = StatusManager::default();
    let pleg_health = PlegHealth::default();
    let server_state = ServerState {
        status: status.clone(),
        registry: Arc::new(metrics.registry()),
        pleg: pleg_health.clone(),
    };
    start_servers(config, server_state, &cancel).await?;

    // Wait for the runtime, as kubelet does before it starts pods.
    let version = loop {
        match cri
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        {
            Ok(v) => break v,
            Err(e) => {
                tracing::error!(endpoint = %config.container_runtime_endpoint, error = %e, "container runtime is not ready; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    tracing::info!(
        runtime = %version.runtime_name,
        version = %version.runtime_version,
        api = %version.runtime_api_version,
        node = %options.node_name,
        "connected to container runtime"
    );

    let ctx = Arc::new(WorkerContext {
        images: ImageManager::new(cri.clone(), config.serialize_image_pulls),
        cri: cri.clone(),
        status,
        metrics: metrics.clone(),
        events: EventRecorder::log_only(),
        node_name: options.node_name.clone(),
        runtime_name: now_version_name(&version),
        pod_logs_dir: config.pod_logs_dir.clone(),
        cgroup_root: config.cgroup_root.clone(),
        cgroup_mount: options.cgroup_mount.clone(),
        host_ip: None,
        resync: config.sync_frequency,
    });

    let (desired_tx, desired_rx) = watch::channel(PodSet::default());
    match &config.static_pod_path {
        Some(dir) => {
            tokio::spawn(sources::file::run(
                dir.clone(),
                options.node_name.clone(),
                config.file_check_frequency,
                desired_tx,
                cancel.clone(),
            ));
        }
        None => {
            tracing::info!("no staticPodPath configured; no static pods");
            desired_tx.send_replace(PodSet {
                synced: true,
                ..Default::default()
            });
        }
    }

    let (events_tx, events_rx) = mpsc::channel(1024);
    let (relist_tx, relist_rx) = watch::channel(None);
    let pleg = Pleg {
        cri,
        node_name: options.node_name.clone(),
        period: options.pleg_period,
        metrics,
        health: pleg_health,
    };
    tokio::spawn(pleg.run(events_tx, relist_tx, cancel.clone()));

    sync_loop(
        PodWorkers::new(ctx),
        desired_rx,
        events_rx,
        relist_rx,
        cancel,
    )
    .await;
    Ok(())
}

async fn start_servers(
    config: &KubeletConfiguration,
    state: ServerState,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let mut servers = Vec::new();
    if config.healthz_port != 0 {
        let ip: IpAddr = config
            .healthz_bind_address
            .parse()
            .map_err(|_| AgentError::Address(config.healthz_bind_address.clone()))?;
        servers.push((
            SocketAddr::new(ip, config.healthz_port),
            server::healthz_router(state.clone()),
        ));
    }
    if config.read_only_port != 0 {
        let ip: IpAddr = config
            .address
            .parse()
            .map_err(|_| AgentError::Address(config.address.clone()))?;
        servers.push((
            SocketAddr::new(ip, config.read_only_port),
            server::read_only_router(state),
        ));
    }
    for (addr, router) in servers {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Server { addr, source })?;
        let cancel = cancel.clone();
        tracing::info!(address = %addr, "serving HTTP");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
            {
                tracing::error!(address = %addr, error = %e, "HTTP server stopped");
            }
        });
    }
    Ok(())
}

async fn sync_loop(
    mut workers: PodWorkers,
    mut desired: watch::Receiver<PodSet>,
    mut events: mpsc::Receiver<String>,
    relists: watch::Receiver<Option<Relist>>,
    cancel: CancellationToken,
) {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let set = desired.borrow_and_update().clone();
                workers.update(&set);
            }
            Some(uid) = events.recv() => workers.wake(&uid),
            _ = housekeeping.tick() => {
                let set = desired.borrow().clone();
                // Until every source has listed once, a pod missing from the set may just be unread.
                if !set.synced {
                    continue;
                }
                let relist = relists.borrow().clone();
                if let Some(relist) = relist {
                    workers.clean_up_orphans(&relist.pods, &set);
                } else {
                    workers.reap();
                }
            }
        }
    }
}
