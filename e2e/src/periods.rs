//! The one place that knows the periods the harness runs the agent with, and derives every
//! deadline of the end-to-end tests from them.
//!
//! A test waits for something the agent guarantees: "a static pod written into the folder runs
//! within fileCheckFrequency plus the time the runtime needs to start it", "a crashed container is
//! restarted at the next PLEG relist", "a pod whose grace period is 3 s is gone after 3 s plus the
//! time to stop it". Each deadline here is
//!
//! ```text
//!     the agent's own bound (its periods, back-offs, grace periods, as configured below)
//!   + LOAD_FACTOR × the unloaded cost of the work involved (CRI calls, container starts, API calls)
//! ```
//!
//! The periods are timers: a busy machine does not stretch them. The work is what a loaded machine
//! slows down (a 2-core machine beside a CPU hog and three other builds runs container starts 5–10×
//! slower than idle), and it is not the agent's to bound: the runtime's time is the runtime's. So the
//! allowance multiplies the work, never the periods, and there is exactly one allowance constant,
//! [`LOAD_FACTOR`].
//!
//! Lower bounds (the agent must NOT act before a back-off or a grace period ended) are asserted
//! exactly against the periods, without allowance: a loaded machine can only make the agent later.
//!
//! Where the periods come from (keep in step with the agent):
//! - `fileCheckFrequency`, `syncFrequency`: written by [`crate::Agent::start_with`] into the
//!   agent's KubeletConfiguration from [`HARNESS`];
//! - the PLEG relist period: `pleg_period` in `agent/src/main.rs` (1 s, not configurable);
//! - `nodeStatusUpdateFrequency` (10 s) and `nodeLeaseDurationSeconds` (40 s, renewed every quarter):
//!   KubeletConfiguration defaults in `agent/src/config.rs`, which the harness does not override;
//!   the runtime check every 5 s: `agent/src/node/runtime.rs`; registration retries back off to 7 s:
//!   `agent/src/node/mod.rs`;
//! - the crash-loop and image-pull back-off, 10 s doubling to 300 s: `agent/src/backoff.rs`;
//! - the retry after a failed sync (2 s): `ERROR_RETRY` in `agent/src/pod_workers.rs`;
//! - the status and mirror-pod resyncs (10 s): `agent/src/apiserver/{status_sync,mirror_pods}.rs`;
//! - housekeeping (2 s), which removes what is left of deleted pods: `agent/src/agent.rs`;
//! - how long the kubelet port remembers a denied SubjectAccessReview (30 s): `DENIED_TTL` in
//!   `agent/src/server/auth.rs`.
//!
//! The tests against the real control plane also wait on its controllers, whose periods are in
//! [`control_plane`].

use std::time::Duration;

/// How many times slower than on an idle machine the tests allow the work of an operation to be
/// (container starts, CRI calls, API calls, the agent's own loop). Generous on purpose: a loaded
/// 2-core machine was seen 5–10× slower for container starts; a deadline costs nothing when the
/// agent is on time, and a test that passes only on an idle machine tests the machine.
pub const LOAD_FACTOR: u32 = 10;

/// Unloaded costs of the work the deadlines allow for, rounded up from what was measured on these
/// machines (`/work/shared/MACHINE-NOTES.md`: pod start Run→Start 140 ms median, 181 ms p99; 30 pods
/// at once 2.5–3.8 s; Docker container start ≈ 200 ms) with room for the other test of the same
/// binary that runs beside (cargo runs two at once on two cores).
pub mod work {
    use std::time::Duration;

    /// Starting the agent process: config, CRI connection, first relist, HTTP servers up.
    pub const AGENT_START: Duration = Duration::from_secs(2);
    /// A pod with one container from nothing: sandbox with its network, image check, create, start.
    pub const POD_START: Duration = Duration::from_secs(2);
    /// One container started again in an existing sandbox.
    pub const CONTAINER_START: Duration = Duration::from_secs(1);
    /// A pod whose containers exit on SIGTERM stopped and removed: StopContainer, StopPodSandbox
    /// (network teardown), RemovePodSandbox.
    pub const POD_STOP: Duration = Duration::from_secs(2);
    /// One CRI call, or a container writing a line that the runtime copies into its log.
    pub const CRI_CALL: Duration = Duration::from_millis(500);
    /// One request to the API server (the in-process stand-in, or a real one on loopback).
    pub const API_CALL: Duration = Duration::from_millis(500);
    /// Pulling a small image from the loopback registry.
    pub const PULL: Duration = Duration::from_secs(1);
    /// One kubectl invocation against the real control plane: starting its 130 MB binary, discovery
    /// (`apply`, `rollout`), and its requests.
    pub const KUBECTL: Duration = Duration::from_secs(2);
}

/// The periods of the real control plane's controllers that the tests against it wait on:
/// kube-controller-manager v1.37's defaults, which `e2e/scripts/controlplane-up.sh` does not
/// override. Like the agent's periods they are timers, never stretched by the load allowance.
pub mod control_plane {
    use std::time::Duration;

    /// `--node-monitor-grace-period`: how long a node may go without a heartbeat (Lease renewal or
    /// status update) before the node lifecycle controller marks it Unknown (kubectl: NotReady)
    /// and queues the `node.kubernetes.io/unreachable` taint. 50 s since v1.32
    /// (`pkg/controller/nodelifecycle/config/v1alpha1/defaults.go`).
    pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(50);
    /// `--node-monitor-period`: how often that controller looks at the nodes' heartbeats (same file).
    pub const NODE_MONITOR_PERIOD: Duration = Duration::from_secs(5);
    /// The Job controller's delay before it replaces a failed pod (the first one; it doubles):
    /// `DefaultJobPodFailureBackOff` in `pkg/controller/job/job_controller.go`.
    pub const JOB_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
    /// metrics-server's `--metric-resolution` as `e2e/scripts/controlplane-up.sh` sets it (its
    /// upstream manifest's; it must exceed the 10 s scrape timeout): how often it scrapes every
    /// node's `/metrics/resource`.
    pub const METRICS_RESOLUTION: Duration = Duration::from_secs(15);
}

/// `work` as a loaded machine may take it.
pub fn allow(work: Duration) -> Duration {
    work * LOAD_FACTOR
}

/// The periods the agent runs with under the harness. See the module documentation for where each
/// comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// PLEG relist: runtime changes (a container exited) reach the pod worker within one relist.
    pub pleg_relist: Duration,
    /// `fileCheckFrequency`: the static pod folder is rescanned at least this often (inotify makes
    /// it immediate in practice; the rescan is the guarantee).
    pub file_check: Duration,
    /// `syncFrequency`: every pod worker syncs at least this often (volumes are refreshed on each).
    pub sync: Duration,
    /// `nodeStatusUpdateFrequency`.
    pub node_status_update: Duration,
    /// How often the node's runtime is checked for readiness.
    pub runtime_check: Duration,
    /// The longest wait between two node registration attempts.
    pub register_backoff_max: Duration,
    /// Lease renewal: a quarter of `nodeLeaseDurationSeconds` (40 s).
    pub lease_renew: Duration,
    /// Pod statuses are pushed on change; pushes that failed are retried at this period.
    pub status_resync: Duration,
    /// Mirror pods are reconciled on change and at this period (a deleted mirror comes back).
    pub mirror_resync: Duration,
    /// Housekeeping: leftovers of deleted pods (sandboxes, pod directories) are removed this often.
    pub housekeeping: Duration,
    /// The retry of a sync that failed on the runtime.
    pub error_retry: Duration,
    /// Crash-loop and image-pull back-off: first delay, doubling to the maximum.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// kubelet's `minimumGracePeriodInSeconds`.
    pub min_grace: Duration,
    /// How long the kubelet port keeps a denied authorization before it asks the API server again.
    pub authz_denied_ttl: Duration,
}

/// What the harness runs every agent with.
pub const HARNESS: Periods = Periods {
    pleg_relist: Duration::from_secs(1),
    file_check: Duration::from_secs(5),
    sync: Duration::from_secs(10),
    node_status_update: Duration::from_secs(10),
    runtime_check: Duration::from_secs(5),
    register_backoff_max: Duration::from_secs(7),
    lease_renew: Duration::from_secs(10),
    status_resync: Duration::from_secs(10),
    mirror_resync: Duration::from_secs(10),
    housekeeping: Duration::from_secs(2),
    error_retry: Duration::from_secs(2),
    backoff_initial: Duration::from_secs(10),
    backoff_max: Duration::from_secs(300),
    min_grace: Duration::from_secs(2),
    authz_denied_ttl: Duration::from_secs(30),
};

/// The periods of the agents the tests start.
pub fn periods() -> Periods {
    HARNESS
}

/// How often a wait for a state that the agent shows only for a while (ErrImagePull before
/// ImagePullBackOff) polls. It must be far shorter than the shortest window the agent guarantees
/// for such a state (see [`Periods::err_image_pull_visible`]).
pub const TRANSIENT_POLL: Duration = Duration::from_millis(50);

/// How often ordinary waits poll.
pub const POLL: Duration = Duration::from_millis(100);

impl Periods {
    /// The back-off before restart number `n` (1-based) after the first, immediate one:
    /// 10 s, 20 s, 40 s … capped at 300 s.
    pub fn backoff(&self, n: u32) -> Duration {
        let mut d = self.backoff_initial;
        for _ in 1..n {
            d = (d * 2).min(self.backoff_max);
        }
        d
    }

    /// How long ErrImagePull stays in a container's status after a failed pull before the agent
    /// reports ImagePullBackOff: the agent keeps the pull error visible for half the first image
    /// back-off (`ERR_IMAGE_PULL_VISIBLE` in agent/src/pod_workers/runtime_manager.rs, 5 s), so both
    /// states show in the first back-off cycle. The waits that must see the state poll every
    /// [`TRANSIENT_POLL`], well inside it.
    pub fn err_image_pull_visible(&self) -> Duration {
        self.backoff_initial / 2
    }

    /// A freshly started agent has its HTTP endpoints up.
    pub fn agent_up(&self) -> Duration {
        allow(work::AGENT_START)
    }

    /// A manifest written into the folder of a freshly started agent is a running pod in `/pods`:
    /// the folder is read within `fileCheckFrequency`, the pod is started, and its status follows
    /// the next relist.
    pub fn static_pod_start(&self) -> Duration {
        self.file_check + self.pleg_relist + allow(work::AGENT_START + work::POD_START)
    }

    /// A manifest that replaces a running pod (an edit: a new UID) runs: the old pod is stopped
    /// within its grace period and the new one started.
    pub fn static_pod_replace(&self, old_grace: Duration) -> Duration {
        self.file_check + old_grace + self.pleg_relist + allow(work::POD_STOP + work::POD_START)
    }

    /// A removed manifest's pod is gone from `/pods`: the folder is read within
    /// `fileCheckFrequency`, the containers get `grace`, then the pod is stopped and forgotten.
    pub fn static_pod_removed(&self, grace: Duration) -> Duration {
        self.file_check + grace + self.pleg_relist + allow(work::POD_STOP)
    }

    /// A container that exited is restarted without back-off (the first restart): the exit is seen
    /// at the next relist and the worker starts the container again.
    pub fn restart_immediate(&self) -> Duration {
        self.pleg_relist + allow(work::CONTAINER_START)
    }

    /// Restart number `n` (1-based, counting from the first backed-off one) after the container
    /// exited: its back-off, the relist that shows it, the start.
    pub fn restart_after_backoff(&self, n: u32) -> Duration {
        self.backoff(n) + self.pleg_relist + allow(work::CONTAINER_START)
    }

    /// A container that exited is reported (terminated, or waiting in CrashLoopBackOff).
    pub fn exit_reported(&self) -> Duration {
        self.pleg_relist + allow(work::CRI_CALL)
    }

    /// A failed pull is reported (ErrImagePull) and then backed off (ImagePullBackOff), counted
    /// from the pod being handed to a freshly started agent.
    pub fn pull_failure_then_backoff(&self) -> Duration {
        self.file_check
            + self.status_resync
            + self.backoff_initial
            + allow(work::AGENT_START + work::POD_START + work::PULL)
    }

    /// A container's line reaches its CRI log file once the container runs.
    pub fn container_output(&self) -> Duration {
        allow(work::CONTAINER_START)
    }

    /// Gauges and `/pods` follow the runtime at the next relist.
    pub fn relist_seen(&self) -> Duration {
        self.pleg_relist + allow(work::CRI_CALL)
    }

    /// A freshly started agent has registered its Node and reports it Ready: registration (with its
    /// back-off), the runtime check, a node status update.
    pub fn node_ready(&self) -> Duration {
        self.register_backoff_max
            + self.runtime_check
            + self.node_status_update
            + self.pleg_relist
            + allow(work::AGENT_START + work::API_CALL * 3)
    }

    /// The node's Lease exists once the node is registered (the first renewal creates it).
    pub fn lease_created(&self) -> Duration {
        self.lease_renew + allow(work::API_CALL * 2)
    }

    /// The Lease's renewTime moved on.
    pub fn lease_renewed(&self) -> Duration {
        self.lease_renew + allow(work::API_CALL * 2)
    }

    /// A pod bound to the node runs and its status reached the API server, counted from its
    /// creation (the agent may still be starting and registering).
    pub fn api_pod_start(&self) -> Duration {
        self.register_backoff_max
            + self.pleg_relist
            + allow(work::AGENT_START + work::POD_START + work::API_CALL * 3)
    }

    /// [`Periods::api_pod_start`] for a pod whose image is pulled from the loopback registry.
    pub fn api_pod_start_pulling(&self) -> Duration {
        self.api_pod_start() + allow(work::PULL)
    }

    /// A pod bound to the node whose pull fails reports ErrImagePull, then ImagePullBackOff once
    /// the worker's next sync finds the pull backed off.
    pub fn api_pull_failure_then_backoff(&self) -> Duration {
        self.api_pod_start_pulling() + self.backoff_initial + self.status_resync
    }

    /// A window long enough for the pod worker to have synced the pod again at least once
    /// (its retry after a failure that is not a pull, and its periodic resync), for checks that the
    /// agent keeps NOT doing something.
    pub fn worker_resynced(&self) -> Duration {
        self.backoff_initial.max(self.sync) + self.pleg_relist
    }

    /// [`Periods::api_pod_start`] for a pod whose `inits` init containers (or native sidecars) must
    /// finish (or start) first, running `run_time` of their own in all.
    pub fn api_pod_start_after_inits(&self, inits: u32, run_time: Duration) -> Duration {
        self.api_pod_start()
            + run_time
            + self.pleg_relist * inits
            + allow(work::CONTAINER_START * inits)
    }

    /// A pod that finishes on its own (restartPolicy Never) reached its final phase in the API.
    pub fn api_pod_complete(&self) -> Duration {
        self.api_pod_start() + self.pleg_relist + allow(work::CRI_CALL)
    }

    /// A pod deleted through the API is gone from it: its containers get `grace`, then the agent
    /// stops the pod and deletes it for good.
    pub fn api_pod_deleted(&self, grace: Duration) -> Duration {
        grace + self.pleg_relist + self.status_resync + allow(work::POD_STOP + work::API_CALL * 2)
    }

    /// A pod the agent refuses (admission) is Failed in the API.
    pub fn api_pod_rejected(&self) -> Duration {
        self.register_backoff_max + allow(work::AGENT_START + work::API_CALL * 3)
    }

    /// An event the agent recorded is in the API (events are posted as they happen, paced).
    pub fn event_posted(&self) -> Duration {
        allow(work::API_CALL * 2)
    }

    /// A mirror pod is created for a running static pod.
    pub fn mirror_created(&self) -> Duration {
        self.static_pod_start() + self.mirror_resync + allow(work::API_CALL * 2)
    }

    /// A deleted mirror pod is back.
    pub fn mirror_recreated(&self) -> Duration {
        self.mirror_resync + allow(work::API_CALL * 2)
    }

    /// A static pod's mirror is deleted once its manifest is removed.
    pub fn mirror_deleted(&self, grace: Duration) -> Duration {
        self.static_pod_removed(grace) + self.mirror_resync + allow(work::API_CALL * 2)
    }

    /// What is left of a pod that is gone (its sandbox, its directory under the root dir) is
    /// removed by housekeeping.
    pub fn leftovers_removed(&self) -> Duration {
        self.housekeeping + self.pleg_relist + allow(work::POD_STOP)
    }

    /// A changed Secret or ConfigMap reaches a running container's volume: at the pod's next sync.
    pub fn volume_refresh(&self) -> Duration {
        self.sync + allow(work::API_CALL * 2 + work::CRI_CALL)
    }

    /// A sync that failed (a missing volume source) shows its event or reason.
    pub fn sync_failure_reported(&self) -> Duration {
        self.api_pod_start() + self.error_retry + allow(work::API_CALL * 2)
    }

    /// A probe with `period` that needs `threshold` results in a row has decided, counted from the
    /// moment the container made the probe's outcome true (`after`), and the agent acted on it
    /// (readiness reported, or the container killed within `grace` and started again).
    pub fn probe_acted(
        &self,
        after: Duration,
        period: Duration,
        threshold: u32,
        grace: Duration,
    ) -> Duration {
        after
            + period * (threshold + 1)
            + grace
            + self.pleg_relist
            + allow(work::CRI_CALL * threshold + work::CONTAINER_START)
    }

    /// A workload that does `work` on its own CPU (e.g. filling memory until it is OOM-killed)
    /// has done it, from its pod's creation.
    pub fn workload(&self, work: Duration) -> Duration {
        self.api_pod_complete() + allow(work)
    }

    /// A runtime operation bounded by `limit` (a stop timeout, an exec timeout) returned: the
    /// limit, then the operation's own work. For the CRI suites, which test the runtimes and the
    /// Docker adapter directly.
    pub fn runtime_call(&self, limit: Duration) -> Duration {
        limit + allow(work::CRI_CALL * 2)
    }

    /// One kubectl command that talks to the API server only has answered.
    pub fn kubectl(&self) -> Duration {
        allow(work::KUBECTL)
    }

    /// One kubectl command that the API server forwards to the agent's port (logs, exec, attach,
    /// port-forward) has answered or set its stream up: the agent's authorization of the API
    /// server (a SubjectAccessReview), then the runtime's part (an exec, a log read).
    pub fn kubectl_to_node(&self) -> Duration {
        allow(work::KUBECTL + work::API_CALL * 2 + work::CRI_CALL * 2)
    }

    /// A namespace just created has its `default` ServiceAccount (the ServiceAccount controller
    /// makes it; pods cannot be created in the namespace before).
    pub fn namespace_ready(&self) -> Duration {
        allow(work::API_CALL * 4)
    }

    /// A pod the scheduler places on the node (by nodeSelector) runs and its status reached the
    /// API server: [`Periods::api_pod_start`] plus the scheduler's binding.
    pub fn scheduled_pod_start(&self) -> Duration {
        self.api_pod_start() + allow(work::API_CALL * 2)
    }

    /// `n` pods a controller (Deployment, DaemonSet, StatefulSet) creates at once are scheduled,
    /// run and are Ready in the API: one pod's start, then the runtime and the API server taking
    /// each of the others in turn (a sandbox and a container through CRI; the controller's create,
    /// the scheduler's binding and the agent's status patch).
    pub fn controller_pods_ready(&self, n: u32) -> Duration {
        self.scheduled_pod_start() + allow((work::CRI_CALL + work::API_CALL * 3) * n)
    }

    /// `n` pods whose containers exit on SIGTERM within `grace`, deleted at once by a controller,
    /// are gone from the API: one pod's deletion, then the runtime and the API server taking each
    /// of the others in turn (stop and remove through CRI; the agent's final delete).
    pub fn controller_pods_deleted(&self, n: u32, grace: Duration) -> Duration {
        self.api_pod_deleted(grace) + allow((work::CRI_CALL * 2 + work::API_CALL) * n)
    }

    /// A rolling update replacing `n` pods in `waves` steps (the Deployment's maxSurge and
    /// maxUnavailable decide them) completed: all new pods started, all old ones deleted, and at
    /// each step the controller waited for the step's pods to start and stop.
    pub fn rollout(&self, n: u32, waves: u32, grace: Duration) -> Duration {
        self.controller_pods_ready(n)
            + self.controller_pods_deleted(n, grace)
            + (grace + self.pleg_relist + allow(work::API_CALL * 2)) * waves
    }

    /// A Job whose pods all fail ended Failed after `failures` pods (its backoffLimit + 1): each
    /// pod started and failed in turn, the controller waiting its failure back-off (10 s,
    /// doubling) before each replacement.
    pub fn job_failed(&self, failures: u32) -> Duration {
        let mut backoffs = Duration::ZERO;
        let mut backoff = control_plane::JOB_POD_FAILURE_BACKOFF;
        for _ in 1..failures {
            backoffs += backoff;
            backoff *= 2;
        }
        (self.api_pod_complete() + allow(work::API_CALL * 2)) * failures
            + backoffs
            + allow(work::API_CALL * 2)
    }

    /// An agent stopped (killed) has its node marked Unknown (kubectl: NotReady), counted from the
    /// kill: its last heartbeat was before the kill, the controller noticed it within one monitor
    /// period, waited the grace period, and acts at its next pass.
    pub fn node_unreachable(&self) -> Duration {
        control_plane::NODE_MONITOR_GRACE
            + control_plane::NODE_MONITOR_PERIOD * 2
            + allow(work::API_CALL * 2)
    }

    /// A node marked Unknown got the `node.kubernetes.io/unreachable` NoExecute taint (queued at
    /// the same pass; the first node of a zone is not rate-limited), or a node Ready again lost it.
    pub fn node_taint_changed(&self) -> Duration {
        control_plane::NODE_MONITOR_PERIOD + allow(work::API_CALL * 2)
    }

    /// A pod that tolerates a NoExecute taint for 0 s was deleted by the taint-eviction
    /// controller once the taint is on its node.
    pub fn taint_eviction(&self) -> Duration {
        allow(work::API_CALL * 3)
    }

    /// A client newly granted access to the kubelet port is let in: the agent asks again once its
    /// remembered denial expired.
    pub fn authz_denial_expired(&self) -> Duration {
        self.authz_denied_ttl + allow(work::API_CALL * 2)
    }

    /// An in-place resize patched into a running pod was applied and reported: the pod's update
    /// reaches the agent and its worker (UpdateContainerResources), the next relist sees the
    /// container's new resources, the status patch carries them.
    pub fn resize_applied(&self) -> Duration {
        self.pleg_relist * 2 + allow(work::API_CALL * 3 + work::CRI_CALL * 2)
    }

    /// A resize the agent does not admit is reported PodResizePending.
    pub fn resize_refused(&self) -> Duration {
        self.pleg_relist + allow(work::API_CALL * 3)
    }

    /// A joined agent's serving CertificateSigningRequest (`serverTLSBootstrap`) exists, counted
    /// from node Ready (it is sent once the client identity is in place, before registration).
    pub fn serving_csr_sent(&self) -> Duration {
        allow(work::API_CALL * 2)
    }

    /// An approved CertificateSigningRequest was signed by the controller-manager and the agent
    /// took the certificate (it watches its request).
    pub fn csr_issued(&self) -> Duration {
        allow(work::API_CALL * 4)
    }

    /// `kubectl top` shows a running pod (and its node): metrics-server scraped the node twice
    /// (CPU is a rate between two samples; a container younger than one resolution needs one),
    /// the first scrape up to one resolution away, and the API server's aggregator and kubectl
    /// answered.
    pub fn top_shows_pod(&self) -> Duration {
        control_plane::METRICS_RESOLUTION * 3 + self.kubectl_to_node() + self.kubectl()
    }

    /// A runtime's own asynchronous work (a container's output in its log, a port that starts
    /// listening in a new container) is visible.
    pub fn runtime_settles(&self) -> Duration {
        allow(work::CONTAINER_START + work::CRI_CALL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let p = periods();
        assert_eq!(p.backoff(1), Duration::from_secs(10));
        assert_eq!(p.backoff(2), Duration::from_secs(20));
        assert_eq!(p.backoff(3), Duration::from_secs(40));
        assert_eq!(p.backoff(10), Duration::from_secs(300));
    }

    #[test]
    fn transient_polling_is_well_inside_the_windows() {
        let p = periods();
        assert!(TRANSIENT_POLL * 10 <= p.err_image_pull_visible());
    }

    #[test]
    fn upper_bounds_leave_the_lower_bounds_room() {
        // A deadline must exceed the thing the agent must wait for, or the lower-bound checks and
        // the waits contradict each other.
        let p = periods();
        let grace = Duration::from_secs(3);
        assert!(p.static_pod_removed(grace) > grace);
        assert!(p.api_pod_deleted(grace) > grace);
        assert!(p.restart_after_backoff(1) > p.backoff_initial);
    }
}
