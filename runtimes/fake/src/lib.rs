//! An in-memory CRI v1 runtime: a real gRPC server (RuntimeService + ImageService over a unix
//! socket) whose pods, containers and images only exist in memory. It is meant for the agent's
//! tests and for "hollow node" load tests, so it is cheap: one mutex, no processes, no timers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mk_fake_runtime::FakeError> {
//! use mk_fake_runtime::FakeRuntime;
//!
//! let fake = FakeRuntime::new();
//! fake.add_image("busybox");
//! let server = fake.serve_unix("/tmp/fake-cri.sock")?;
//! // ... point a CRI client at server.endpoint() ...
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Semantics
//!
//! Modelled on containerd's CRI plugin:
//!
//! * **Sandboxes** get a random 64-hex ID, state `SANDBOX_READY` and an IPv4 address handed out
//!   sequentially from `10.88.0.0/16` (or from the pod CIDR sent by `UpdateRuntimeConfig` /
//!   [`FakeRuntime::set_pod_cidr`]); host-network sandboxes get no IP. The name
//!   `name_namespace_uid_attempt` is reserved until removal, so a duplicate RunPodSandbox fails
//!   with `AlreadyExists`. Runtime handlers `""` and `"runc"` are known (see
//!   [`FakeRuntime::add_runtime_handler`]); others fail. `StopPodSandbox` kills running containers
//!   (exit 137, reason `Error`), marks the sandbox `SANDBOX_NOTREADY` and releases its IP;
//!   `RemovePodSandbox` also removes its containers. Both succeed for unknown IDs.
//!   `PodSandboxStatus` of an unknown ID is `NotFound`; it reports the namespace options of the
//!   config (kubelet compares them) and the IP.
//! * **Containers** need a ready sandbox (`NotFound` / `FailedPrecondition`) and an image present
//!   in the store (`NotFound`); the name `container_pod_namespace_uid_attempt` is reserved until
//!   removal; a security context with `run_as_group` but neither `run_as_user` nor
//!   `run_as_username` is `InvalidArgument`, as on containerd. The log path is the sandbox's log
//!   directory joined with the config's log path.
//!   `StartContainer` needs `CONTAINER_CREATED`. `StopContainer` of a running container exits it
//!   with 137 (or the code set by [`FakeRuntime::set_stop_exit_code`]) and is a no-op otherwise,
//!   unknown IDs included (CRI requires it to be idempotent; containerd 2.x, critest).
//!   `RemoveContainer` kills a running container and succeeds for unknown IDs. Reasons are
//!   `Completed` (exit 0) or `Error`, unless given to [`FakeRuntime::exit_container`]
//!   (e.g. `OOMKilled`). `ContainerStatus` reports the image by its first tag and digest, like
//!   containerd.
//! * **Auto-exit**: a container whose command + args is one of
//!   `true`, `false`, `sleep S`, `sh -c "exit N"`, `sh -c "sleep S; exit N"` (or `&&`), with
//!   `sh`, `bash`, `ash` or `dash` under any directory, exits by itself with that code after S
//!   seconds (immediately for `exit N`). Exits are evaluated lazily whenever the fake is looked
//!   at, with `finished_at` set to when the exit was due. `sleep infinity` and any other command
//!   run until stopped.
//! * **ExecSync** (running containers only) answers the result set for the container's name
//!   by [`FakeRuntime::set_exec_result_for`], else the one set by
//!   [`FakeRuntime::set_exec_result`], else: for the auto-exit commands above, their exit code
//!   (after their sleep), for anything else exit code 0 with stdout = the command joined by
//!   spaces. A result that takes longer than the request's timeout fails with
//!   `DeadlineExceeded`.
//! * **Images** are matched by ID (`sha256:...`) or by reference in any docker spelling
//!   (`busybox` = `docker.io/library/busybox:latest`). IDs and digests are derived
//!   deterministically from the reference. `PullImage` adds any image unless it was registered by
//!   [`FakeRuntime::set_unpullable`] (then `NotFound`, "failed to resolve reference"), and returns
//!   the image ID. `ImageStatus` answers `image: None` for an absent image. `RemoveImage` is
//!   idempotent. `ImageFsInfo` sums the image sizes.
//! * Also implemented: `Version` (runtime name `fake`, API `v1`), `Status` (RuntimeReady and
//!   NetworkReady, see [`FakeRuntime::set_network_ready`]; NetworkReady false also makes
//!   non-host-network RunPodSandbox fail like a CNI without config), `RuntimeConfig` (cgroupfs),
//!   `UpdateRuntimeConfig`, `UpdateContainerResources` (stored, reported in ContainerStatus),
//!   `ReopenContainerLog`, `ContainerStats` / `ListContainerStats` (all usage zero).
//! * **Not implemented** (`Unimplemented`): `Exec`, `Attach`, `PortForward`, `PodSandboxStats`,
//!   `ListPodSandboxStats`, `CheckpointContainer`, `ListMetricDescriptors`,
//!   `ListPodSandboxMetrics`; `GetContainerEvents` unless turned on by
//!   [`FakeRuntime::enable_container_events`].
//!
//! Every RPC, implemented or not, is recorded in the call log and subject to
//! [`FakeRuntime::set_latency`] and [`FakeRuntime::fail_next`].

mod error;
mod events;
mod image;
mod ops;
mod server;
mod service;
mod state;
mod types;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use error::FakeError;
pub use image::{DEFAULT_IMAGE_SIZE, FakeImage, normalize as normalize_image_reference};
pub use ops::{Op, UnknownOp};
pub use server::ServerHandle;
pub use state::{DEFAULT_CALL_LOG_LIMIT, DEFAULT_POD_CIDR, IMAGE_FS_MOUNTPOINT, KILLED_EXIT_CODE};
pub use types::{Call, ExecResult, FakeContainer, FakeSandbox};

/// The CRI v1 messages, re-exported.
pub use k8s_cri::v1 as api;

use state::State;

/// An in-memory CRI runtime. Cloning is cheap and every clone shares the same state.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    /// Set by [`FakeRuntime::enable_container_events`].
    events: Arc<Mutex<Option<events::EventFeed>>>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sandboxes, containers, images) = self.with_state(|s| s.counts());
        f.debug_struct("FakeRuntime")
            .field("sandboxes", &sandboxes)
            .field("containers", &containers)
            .field("images", &images)
            .finish()
    }
}

impl FakeRuntime {
    /// An empty runtime: no sandboxes, containers or images; ready; no latency.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the state, after letting due auto-exits happen.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.settle(state::now_ns());
        let result = f(&mut state);
        if let Some(feed) = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            feed.publish(&state);
        }
        result
    }

    /// Makes `GetContainerEvents` answer (it is `Unimplemented` otherwise, as on containerd 1.6):
    /// from now on every change of a sandbox's or container's state is sent to the subscribers as
    /// it is made, or, for auto-exits, when something next looks at the fake.
    pub fn enable_container_events(&self) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut feed = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if feed.is_none() {
            *feed = Some(events::EventFeed::new(&state));
        }
    }

    /// Ends every open `GetContainerEvents` stream (as a runtime restart would) and makes the call
    /// `Unimplemented` again.
    pub fn disable_container_events(&self) {
        let _state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *self.events.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Ends every open `GetContainerEvents` stream, as a runtime restart would; events stay on, so
    /// subscribing again works.
    pub fn restart_container_events(&self) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut feed = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if feed.is_some() {
            *feed = Some(events::EventFeed::new(&state));
        }
    }

    /// A subscription to the events, when they are enabled.
    pub(crate) fn subscribe_events(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<api::ContainerEventResponse>> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(events::EventFeed::subscribe)
    }

    // ----- images -----

    /// Makes an image present (as if pulled) with [`DEFAULT_IMAGE_SIZE`]; returns its ID.
    /// Adding a present image again is a no-op.
    pub fn add_image(&self, reference: &str) -> String {
        self.add_image_with_size(reference, DEFAULT_IMAGE_SIZE)
    }

    /// Makes an image of `size` bytes present; returns its ID.
    pub fn add_image_with_size(&self, reference: &str, size: u64) -> String {
        self.with_state(|s| s.add_image(reference, size))
    }

    /// Marks the present image(s) named by `reference` pinned (exempt from GC) or not; false if
    /// no image matched.
    pub fn set_image_pinned(&self, reference: &str, pinned: bool) -> bool {
        self.with_state(|s| s.set_image_pinned(reference, pinned))
    }

    /// Makes PullImage of `reference` fail with `NotFound` ("failed to resolve reference").
    pub fn set_unpullable(&self, reference: &str) {
        self.with_state(|s| s.set_unpullable(reference));
    }

    /// True when an image matching `reference` (any spelling, or its ID) is present.
    pub fn has_image(&self, reference: &str) -> bool {
        self.with_state(|s| s.has_image(reference))
    }

    /// The images present, in the order they arrived.
    pub fn images(&self) -> Vec<FakeImage> {
        self.with_state(|s| s.images())
    }

    // ----- containers and sandboxes -----

    /// Simulates a running container's process exiting with `exit_code`. The reason defaults to
    /// `Completed` (0) or `Error`; pass e.g. `Some("OOMKilled")` to override.
    pub fn exit_container(
        &self,
        container_id: &str,
        exit_code: i32,
        reason: Option<&str>,
    ) -> Result<(), FakeError> {
        self.with_state(|s| s.exit_container(container_id, exit_code, reason))
    }

    /// Simulates a sandbox dying: it turns `SANDBOX_NOTREADY` and loses its IP, its containers
    /// are left alone (kubelet is expected to notice and recreate the pod's sandbox).
    pub fn fail_sandbox(&self, sandbox_id: &str) -> Result<(), FakeError> {
        self.with_state(|s| s.fail_sandbox(sandbox_id))
    }

    /// Scripts the exit code StopContainer gives containers named `container_name` (the
    /// container's metadata name) instead of 137, e.g. 0 for a process that handles SIGTERM;
    /// `None` restores 137.
    pub fn set_stop_exit_code(&self, container_name: &str, exit_code: Option<i32>) {
        self.with_state(|s| s.set_stop_exit_code(container_name, exit_code));
    }

    /// Sets what every ExecSync answers (unless set per container name).
    pub fn set_exec_result(&self, result: ExecResult) {
        self.with_state(|s| s.set_exec_result(None, result));
    }

    /// Sets what ExecSync answers in containers named `container_name`.
    pub fn set_exec_result_for(&self, container_name: &str, result: ExecResult) {
        self.with_state(|s| s.set_exec_result(Some(container_name), result));
    }

    /// Restores the built-in ExecSync behaviour.
    pub fn clear_exec_results(&self) {
        self.with_state(|s| s.clear_exec_results());
    }

    /// All sandboxes, in creation order.
    pub fn sandboxes(&self) -> Vec<FakeSandbox> {
        self.with_state(|s| s.sandboxes())
    }

    /// All containers, in creation order.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.with_state(|s| s.containers())
    }

    /// One sandbox by ID.
    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        self.sandboxes().into_iter().find(|s| s.id == id)
    }

    /// One container by ID.
    pub fn container(&self, id: &str) -> Option<FakeContainer> {
        self.containers().into_iter().find(|c| c.id == id)
    }

    // ----- runtime conditions and configuration -----

    /// The RuntimeReady condition reported by Status.
    pub fn set_runtime_ready(&self, ready: bool) {
        self.with_state(|s| s.set_runtime_ready(ready));
    }

    /// The NetworkReady condition reported by Status; while false, RunPodSandbox fails for
    /// sandboxes not on the host network.
    pub fn set_network_ready(&self, ready: bool) {
        self.with_state(|s| s.set_network_ready(ready));
    }

    /// Accepts another runtime handler name in RunPodSandbox (`""` and `"runc"` always are).
    pub fn add_runtime_handler(&self, name: &str) {
        self.with_state(|s| s.add_runtime_handler(name));
    }

    /// Hands out future pod IPs from this IPv4 range (`a.b.c.d/8` to `/30`).
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<(), FakeError> {
        self.with_state(|s| s.set_pod_cidr(cidr))
    }

    /// The pod CIDR last set by UpdateRuntimeConfig or [`Self::set_pod_cidr`] (empty if none).
    pub fn pod_cidr(&self) -> String {
        self.with_state(|s| s.pod_cidr())
    }

    // ----- faults, latency and the call log -----

    /// Makes the next call of `op` fail with `code` (message "injected failure for <op>").
    /// Several injections for the same op queue up, one per call.
    pub fn fail_next(&self, op: Op, code: tonic::Code) {
        self.with_state(|s| s.fail_next(op, code));
    }

    /// Delays every call by `latency` before it is answered (`Duration::ZERO` to stop).
    pub fn set_latency(&self, latency: Duration) {
        self.with_state(|s| s.set_latency(latency));
    }

    /// Delays calls of one op, overriding [`Self::set_latency`]; `None` removes the override.
    pub fn set_op_latency(&self, op: Op, latency: Option<Duration>) {
        self.with_state(|s| s.set_op_latency(op, latency));
    }

    /// The most recent calls in arrival order (at most [`DEFAULT_CALL_LOG_LIMIT`] unless changed
    /// by [`Self::set_call_log_limit`]).
    pub fn calls(&self) -> Vec<Call> {
        self.with_state(|s| s.calls())
    }

    /// How many calls of `op` arrived (never truncated, only reset by [`Self::clear_calls`]).
    pub fn call_count(&self, op: Op) -> u64 {
        self.with_state(|s| s.call_count(op))
    }

    /// Empties the call log and the per-op counts.
    pub fn clear_calls(&self) {
        self.with_state(|s| s.clear_calls());
    }

    /// How many calls the log keeps (0 disables it; counts are kept regardless).
    pub fn set_call_log_limit(&self, limit: usize) {
        self.with_state(|s| s.set_call_log_limit(limit));
    }
}

#[cfg(test)]
mod tests;
