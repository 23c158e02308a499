//! kubelet's `containerLogManager`: every `containerLogMonitorInterval`, the running containers of
//! this node are listed through CRI and each one's live log file (its ContainerStatus
//! `log_path`) that reached `containerLogMaxSize` is rotated: leftovers removed, older rotated
//! files compressed and trimmed to `containerLogMaxFiles - 1`, the live file renamed to
//! `<path>.<YYYYMMDD-HHMMSS>`, and the runtime asked to `ReopenContainerLog` (if it refuses, the
//! file is renamed back, to be tried again next round). At most `containerLogMaxWorkers`
//! containers are rotated at once. A failure is logged with its container and never stops the
//! loop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use mk_cri::{CriClient, CriError, api};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::files::{self, FileError};
use super::rotation::{Decision, LogRotatePolicy, decide};
use crate::config::KubeletConfiguration;
use crate::kuberuntime::labels;

/// Why one container's log could not be rotated.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("reading the container's status: {0}")]
    Status(#[source] CriError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("reopening the log (renamed back from {}): {source}", rotated.display())]
    Reopen {
        rotated: PathBuf,
        #[source]
        source: CriError,
    },
    #[error(
        "reopening the log failed ({source}), and renaming it back from {} failed too: {rename}",
        rotated.display()
    )]
    RenameBack {
        rotated: PathBuf,
        source: CriError,
        rename: FileError,
    },
    #[error("reopening the missing log: {0}")]
    ReopenMissing(#[source] CriError),
    #[error("the file task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What happened to one container's log in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runtime writes no log file for it.
    NoLogPath,
    UnderLimit,
    /// A rotation this second happened already; next round.
    Postponed,
    /// The live file was missing and the runtime was asked to open it again.
    Reopened,
    /// The live file was renamed to this.
    Rotated(PathBuf),
}

/// The counts of one round, for tests and the debug log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Running containers of this node.
    pub containers: usize,
    pub rotated: usize,
    pub failed: usize,
}

/// Rotates the log files of this node's running containers.
#[derive(Debug, Clone)]
pub struct ContainerLogManager {
    cri: CriClient,
    node_name: String,
    policy: LogRotatePolicy,
    interval: Duration,
    max_workers: usize,
}

impl ContainerLogManager {
    pub fn new(
        cri: CriClient,
        node_name: String,
        policy: LogRotatePolicy,
        interval: Duration,
        max_workers: usize,
    ) -> Self {
        Self {
            cri,
            node_name,
            policy,
            interval,
            max_workers: max_workers.max(1),
        }
    }

    /// The manager the configuration asks for; None when rotation is off (a negative
    /// `containerLogMaxSize`).
    pub fn from_config(
        cri: CriClient,
        node_name: String,
        config: &KubeletConfiguration,
    ) -> Option<Self> {
        let max_size = config.container_log_max_bytes()?;
        Some(Self::new(
            cri,
            node_name,
            LogRotatePolicy {
                max_size,
                max_files: usize::try_from(config.container_log_max_files).unwrap_or(2),
            },
            config.container_log_monitor_interval,
            usize::try_from(config.container_log_max_workers).unwrap_or(1),
        ))
    }

    /// Runs a round at once and then every interval until `cancel` (a round under way is
    /// finished first, so no log is left renamed without its reopen).
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(
            max_size = self.policy.max_size,
            max_files = self.policy.max_files,
            interval = ?self.interval,
            workers = self.max_workers,
            "container log rotation started"
        );
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.rotate_logs().await {
                Ok(round) if round.rotated > 0 || round.failed > 0 => {
                    tracing::debug!(?round, "container log rotation round");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot list containers to rotate their logs"),
            }
        }
    }

    /// One round: lists the running containers of this node and rotates each one's log as
    /// needed, at most `max_workers` at once. Fails only when the containers cannot be listed.
    pub async fn rotate_logs(&self) -> Result<Round, CriError> {
        let running = self
            .cri
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    state: Some(api::ContainerStateValue {
                        state: api::ContainerState::ContainerRunning.into(),
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .containers;
        // Running only: a stopped container writes nothing more, so a fresh empty log for it
        // would be of no use (kubelet checks the state too, whatever the runtime filtered).
        let ids: Vec<String> = running
            .into_iter()
            .filter(|c| c.state == i32::from(api::ContainerState::ContainerRunning))
            .filter(|c| labels::owned_by(&c.labels, &self.node_name))
            .map(|c| c.id)
            .collect();
        let mut round = Round {
            containers: ids.len(),
            ..Round::default()
        };
        let outcomes: Vec<bool> = futures::stream::iter(ids)
            .map(|id| async move {
                match self.rotate_container(&id).await {
                    Ok(Outcome::Rotated(path)) => {
                        tracing::debug!(container = %id, rotated = %path.display(), "container log rotated");
                        Some(true)
                    }
                    Ok(outcome) => {
                        tracing::trace!(container = %id, ?outcome, "container log checked");
                        None
                    }
                    Err(e) => {
                        tracing::error!(container = %id, error = %e, "rotating the container's log failed");
                        Some(false)
                    }
                }
            })
            .buffer_unordered(self.max_workers)
            .filter_map(|done| async move { done })
            .collect()
            .await;
        round.rotated = outcomes.iter().filter(|ok| **ok).count();
        round.failed = outcomes.len() - round.rotated;
        Ok(round)
    }

    /// Checks one container's log and rotates it when it reached the limit.
    pub async fn rotate_container(&self, id: &str) -> Result<Outcome, RotationError> {
        let status = self
            .cri
            .container_status(api::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .map_err(RotationError::Status)?;
        let Some(log_path) = status.status.map(|s| s.log_path).filter(|p| !p.is_empty()) else {
            return Ok(Outcome::NoLogPath);
        };
        let live = PathBuf::from(log_path);
        let inspected = {
            let live = live.clone();
            tokio::task::spawn_blocking(move || files::inspect(&live)).await?
        };
        let (size, siblings) = match inspected {
            Ok(found) => found,
            Err(e) if e.is_not_found() => {
                // Lost, e.g. renamed by a rotation whose rename back failed: have it opened again.
                self.reopen(id)
                    .await
                    .map_err(RotationError::ReopenMissing)?;
                return Ok(Outcome::Reopened);
            }
            Err(e) => return Err(e.into()),
        };
        let live_name = file_name(&live);
        let now = jiff::Zoned::now().datetime();
        let plan = match decide(self.policy, &live_name, size, &siblings, now) {
            Decision::UnderLimit => return Ok(Outcome::UnderLimit),
            Decision::NameTaken(_) => return Ok(Outcome::Postponed),
            Decision::Rotate(plan) => plan,
        };
        let rotated = live.with_file_name(&plan.rotate_to);
        {
            let (live, rotated) = (live.clone(), rotated.clone());
            tokio::task::spawn_blocking(move || {
                files::prepare(&live, &plan)?;
                files::rename(&live, &rotated)
            })
            .await??;
        }
        if let Err(source) = self.reopen(id).await {
            // Back to where it was, to be rotated next round (kubelet does the same). A file the
            // runtime created meanwhile would be replaced: nothing writes there before a reopen.
            let back = {
                let (live, rotated) = (live.clone(), rotated.clone());
                tokio::task::spawn_blocking(move || files::rename(&rotated, &live)).await?
            };
            return Err(match back {
                Ok(()) => RotationError::Reopen { rotated, source },
                Err(rename) => RotationError::RenameBack {
                    rotated,
                    source,
                    rename,
                },
            });
        }
        Ok(Outcome::Rotated(rotated))
    }

    async fn reopen(&self, id: &str) -> Result<(), CriError> {
        self.cri
            .reopen_container_log(api::ReopenContainerLogRequest {
                container_id: id.to_owned(),
            })
            .await
            .map(drop)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Starts the rotation loop the configuration asks for (none when `containerLogMaxSize` is
/// negative).
pub fn spawn(
    cri: CriClient,
    node_name: String,
    config: &KubeletConfiguration,
    cancel: CancellationToken,
) {
    match ContainerLogManager::from_config(cri, node_name, config) {
        Some(manager) => {
            tokio::spawn(manager.run(cancel));
        }
        None => tracing::info!("container log rotation is off (containerLogMaxSize is negative)"),
    }
}
