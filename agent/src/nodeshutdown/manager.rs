//! The shutdown sequence: kubelet's `processShutdownEvent` and `podManager.killPods`.
//!
//! Waits for the trigger (SIGTERM), turns the node's [`super::ShutdownStatus`], records the start,
//! stops the active pods group by group ([`super::plan`]), each group for at most its seconds (a
//! kill still under way then goes on: the agent waits for it within the rest of the budget), waits
//! (within the budget, at least [`REPORT_GRACE`]) for the API server to show the node NotReady and
//! the node's pods terminal, records the end, and cancels the agent. Cancelling the agent during
//! the sequence (a second SIGTERM) ends it where it is.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Group, PodShutdown};
use super::state_file::{self, ShutdownTimes, StateFile};
use super::{NODE_NOT_READY_MESSAGE, NODE_SHUTDOWN_MESSAGE, NODE_SHUTDOWN_REASON};
use super::{ShutdownMetrics, ShutdownSwitch};
use crate::config::ShutdownGracePeriodByPodPriority;
use crate::pod_workers::{KillOutcome, KillPod, PodKiller};
use crate::sources::{CONFIG_MIRROR_ANNOTATION, PodSet, pod_key, pod_uid};
use crate::status::StatusManager;
use crate::sync::PodFailure;

/// After the pods have stopped, how long the agent waits at least for the API server to show the
/// node NotReady and the pods' final statuses, even when the groups used the whole budget.
pub const REPORT_GRACE: Duration = Duration::from_secs(2);
/// How often the API server is asked meanwhile.
const REPORT_POLL: Duration = Duration::from_millis(200);

/// Where the node reports, when it is joined to a cluster.
#[derive(Clone)]
pub struct ApiTarget {
    pub client: kube::Client,
    pub node_name: String,
}

/// What the manager works with.
pub struct ManagerOptions {
    /// The priority bands, low to high ([`plan::bands`]); not empty.
    pub bands: Vec<ShutdownGracePeriodByPodPriority>,
    /// Turns the node's shutdown status.
    pub switch: ShutdownSwitch,
    /// Stops pods through their workers.
    pub killer: PodKiller,
    /// The pods the node runs (the merged sources).
    pub pods: watch::Receiver<PodSet>,
    /// Their statuses: pods already in a terminal phase are not stopped again.
    pub status: StatusManager,
    pub metrics: ShutdownMetrics,
    /// kubelet's state file (start and end times), with the metrics (kubelet keeps both only with
    /// `GracefulNodeShutdownBasedOnPodPriority`, on by default).
    pub state_file: Option<StateFile>,
    /// The API server to wait for before exiting, when joined to a cluster.
    pub api: Option<ApiTarget>,
}

/// How one group went.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReport {
    pub priority: i32,
    pub budget_seconds: i64,
    /// The UIDs of its pods and the seconds each was given.
    pub pods: Vec<(String, i64)>,
    /// The group's seconds passed before every pod had stopped.
    pub timed_out: bool,
    pub took: Duration,
}

/// How the sequence went.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// The groups that had pods, in the order they were stopped.
    pub groups: Vec<GroupReport>,
    /// The agent was cancelled during the sequence (a second SIGTERM).
    pub aborted: bool,
    /// The API server showed the node NotReady and its pods terminal before the agent exited
    /// (true when not joined to a cluster).
    pub reported: bool,
}

/// kubelet's node shutdown manager, for one shutdown.
pub struct ShutdownManager {
    options: ManagerOptions,
}

impl ShutdownManager {
    /// The manager; its gauges start from the last sequence's state file, as kubelet's do.
    pub fn new(options: ManagerOptions) -> Self {
        if let Some(file) = &options.state_file {
            match file.load() {
                Ok(times) => {
                    options
                        .metrics
                        .start_time
                        .set(state_file::gauge_value(times.start));
                    options
                        .metrics
                        .end_time
                        .set(state_file::gauge_value(times.end));
                }
                Err(e) => tracing::error!(error = %e, "Failed to load graceful shutdown state"),
            }
        }
        tracing::info!(
            bands = ?options.bands,
            budget = ?plan::total_budget(&options.bands),
            "Creating node shutdown manager"
        );
        Self { options }
    }

    /// The whole shutdown budget (every group's seconds).
    pub fn budget(&self) -> Duration {
        plan::total_budget(&self.options.bands)
    }

    /// Waits for `trigger`, runs the shutdown sequence, then cancels `cancel` (the agent exits).
    /// Returns `None` when `cancel` came first (the agent stopped without a node shutdown).
    pub async fn run(
        self,
        trigger: CancellationToken,
        cancel: CancellationToken,
    ) -> Option<Report> {
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = trigger.cancelled() => {}
        }
        let report = self.shut_down(&cancel).await;
        cancel.cancel();
        Some(report)
    }

    async fn shut_down(&self, cancel: &CancellationToken) -> Report {
        let started = Instant::now();
        let budget = self.budget();
        tracing::info!(budget = ?budget, "Shutdown manager detected shutdown event; the node is shutting down");
        self.options.switch.begin();
        let start = Timestamp::now();
        self.record(ShutdownTimes {
            start: Some(start),
            end: None,
        });
        let groups = plan::group_by_priority(&self.options.bands, self.active_pods());
        let mut report = Report::default();
        // The pods of groups whose seconds ran out: still being stopped.
        let mut stragglers = Vec::new();
        for group in groups.iter().filter(|g| !g.pods.is_empty()) {
            tokio::select! {
                () = cancel.cancelled() => {
                    report.aborted = true;
                    break;
                }
                done = self.stop_group(group, &mut stragglers) => report.groups.push(done),
            }
        }
        if !report.aborted && !stragglers.is_empty() {
            // kubelet moves on and the machine shuts down around the kills still under way; this
            // agent exits instead, so it lets them finish within what is left of the budget.
            tokio::select! {
                () = cancel.cancelled() => report.aborted = true,
                _ = tokio::time::timeout_at(started + budget, join_all(stragglers)) => {}
            }
        }
        if report.aborted {
            tracing::warn!(
                "node shutdown sequence cut short: the agent is stopping now; pods not yet stopped keep running"
            );
        } else {
            let deadline = (started + budget).max(Instant::now() + REPORT_GRACE);
            report.reported = self.wait_until_reported(deadline, cancel).await;
        }
        self.record(ShutdownTimes {
            start: Some(start),
            end: Some(Timestamp::now()),
        });
        tracing::info!(took = ?started.elapsed(), "Shutdown manager completed processing shutdown event");
        report
    }

    /// kubelet's `GetActivePods`: the node's pods not in a terminal phase.
    fn active_pods(&self) -> Vec<Arc<Pod>> {
        let set = self.options.pods.borrow();
        set.pods
            .iter()
            .filter(|(uid, _)| {
                !self
                    .options
                    .status
                    .get(uid)
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p == "Succeeded" || p == "Failed")
            })
            .map(|(_, pod)| pod.clone())
            .collect()
    }

    /// Stops a group's pods together; waits for them at most the group's seconds. The kills still
    /// under way then go on, in `stragglers`.
    async fn stop_group(&self, group: &Group, stragglers: &mut Vec<JoinHandle<()>>) -> GroupReport {
        let began = Instant::now();
        tracing::info!(
            priority = group.priority,
            grace = group.budget_seconds,
            pods = group.pods.len(),
            "Shutdown manager killing the pods of a priority group"
        );
        let mut kills: Vec<JoinHandle<()>> = group
            .pods
            .iter()
            .map(|p| {
                // The pod's lines carry its `pod` and `podUID`.
                let span = crate::logging::pod_span_for(&p.pod);
                tokio::spawn(tracing::Instrument::instrument(
                    stop_pod(self.options.killer.clone(), p.clone()),
                    span,
                ))
            })
            .collect();
        let stopped = tokio::time::timeout(group.budget(), join_all(kills.iter_mut()))
            .await
            .is_ok();
        // Those not finished were never polled to completion: they can be awaited later.
        stragglers.extend(kills.into_iter().filter(|k| !k.is_finished()));
        if stopped {
            tracing::info!(
                priority = group.priority,
                grace = group.budget_seconds,
                "Done waiting for all pods in group to terminate"
            );
        } else {
            tracing::info!(
                priority = group.priority,
                grace = group.budget_seconds,
                "Shutdown manager pod killing time out"
            );
        }
        GroupReport {
            priority: group.priority,
            budget_seconds: group.budget_seconds,
            pods: group
                .pods
                .iter()
                .map(|p| (pod_uid(&p.pod).to_string(), p.grace_seconds))
                .collect(),
            timed_out: !stopped,
            took: began.elapsed(),
        }
    }

    /// The start and end times to the gauges and the state file.
    fn record(&self, times: ShutdownTimes) {
        let Some(file) = &self.options.state_file else {
            return;
        };
        let metrics = &self.options.metrics;
        metrics.start_time.set(state_file::gauge_value(times.start));
        metrics.end_time.set(state_file::gauge_value(times.end));
        if let Err(e) = file.store(times) {
            tracing::error!(error = %e, "Failed to store graceful shutdown state");
        }
    }

    /// Waits until the API server shows the node NotReady for its shutdown and the node's pods
    /// (those the agent knows: stopped, rejected, or done before) in a terminal phase or gone, or
    /// until `deadline`. True when it did.
    async fn wait_until_reported(&self, deadline: Instant, cancel: &CancellationToken) -> bool {
        let Some(api) = &self.options.api else {
            return true;
        };
        loop {
            // Pods that came while waiting were rejected: they count too.
            let known = self.options.pods.borrow().pods.keys().cloned().collect();
            match tokio::time::timeout_at(deadline, api.reported(&known)).await {
                Ok(Ok(Pending::Nothing)) => return true,
                Ok(Ok(pending)) => {
                    tracing::debug!(?pending, "waiting for the API server to show the shutdown");
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            ?pending,
                            "exiting before the API server showed the node's shutdown"
                        );
                        return false;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot read the node's shutdown back from the API server");
                    if Instant::now() >= deadline {
                        tracing::warn!(error = %e, "exiting before the API server showed the node's shutdown");
                        return false;
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        "exiting before the API server showed the node's shutdown: no answer in time"
                    );
                    return false;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(REPORT_POLL) => {}
            }
        }
    }
}

/// Has the node stop one pod and fail it with kubelet's shutdown reason; returns once it stopped.
async fn stop_pod(killer: PodKiller, p: PodShutdown) {
    let key = pod_key(&p.pod);
    tracing::info!(pod = %key, grace = p.grace_seconds, "Shutdown manager killing pod with gracePeriod");
    let kill = KillPod {
        failure: PodFailure {
            reason: NODE_SHUTDOWN_REASON.into(),
            message: NODE_SHUTDOWN_MESSAGE.into(),
        },
        grace_seconds: Some(p.grace_seconds),
        disruption: true,
    };
    match killer.kill(pod_uid(&p.pod), kill).await {
        KillOutcome::Terminated => {
            tracing::info!(pod = %key, "Shutdown manager finished killing pod");
        }
        KillOutcome::NotRunning => {
            tracing::debug!(pod = %key, "pod not running: nothing to stop");
        }
        KillOutcome::AgentStopping => {
            tracing::warn!(pod = %key, "Shutdown manager failed killing pod: the agent is stopping");
        }
    }
}

/// What the API server does not show yet.
#[derive(Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    /// The node's Ready condition does not say it is shutting down.
    NodeStatus,
    /// Pods (`namespace/name`) of the node not in a terminal phase.
    Pods(Vec<String>),
}

impl ApiTarget {
    /// What the API server does not show yet of the shutdown of the node whose pods have the UIDs
    /// `known` (a static pod's: the hash its mirror pod is annotated with).
    async fn reported(&self, known: &HashSet<String>) -> Result<Pending, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        // A node that is not registered has nothing to show.
        if let Some(node) = nodes.get_opt(&self.node_name).await?
            && !shows_shutdown(&node)
        {
            return Ok(Pending::NodeStatus);
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node_name));
        let running = not_terminal(&pods.list(&params).await?.items, known);
        if running.is_empty() {
            Ok(Pending::Nothing)
        } else {
            Ok(Pending::Pods(running))
        }
    }
}

/// The node's Ready condition is False for its shutdown.
pub fn shows_shutdown(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| {
            c.status == "False"
                && c.message
                    .as_deref()
                    .is_some_and(|m| m.contains(NODE_NOT_READY_MESSAGE))
        })
}

/// The pods of `listed` (`namespace/name`) that are among `known` (by UID, or for mirror pods by
/// the static pod's UID they carry) and not in a terminal phase. Pods the agent never saw (bound
/// to the node after it stopped looking) are not waited for.
pub fn not_terminal(listed: &[Pod], known: &HashSet<String>) -> Vec<String> {
    listed
        .iter()
        .filter(|p| {
            let mirror_of = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIG_MIRROR_ANNOTATION));
            let uid = mirror_of.map_or_else(|| pod_uid(p), String::as_str);
            known.contains(uid) && !is_terminal(p)
        })
        .map(pod_key)
        .collect()
}

fn is_terminal(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}
