//! Public snapshots of the fake's objects and the scripted results tests hand to it.

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1 as api;

use crate::Op;

/// A pod sandbox as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSandbox {
    /// 64 random hex digits.
    pub id: String,
    pub metadata: api::PodSandboxMetadata,
    pub state: api::PodSandboxState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The pod IP while the sandbox is ready; empty for host-network sandboxes and once stopped.
    pub ip: String,
    /// The sandbox config asks for the node's network namespace.
    pub host_network: bool,
    pub runtime_handler: String,
    /// The config given to RunPodSandbox, unaltered (labels, annotations, log directory, ...).
    pub config: api::PodSandboxConfig,
    pub(crate) seq: u64,
}

impl FakeSandbox {
    pub fn labels(&self) -> &HashMap<String, String> {
        &self.config.labels
    }

    pub fn annotations(&self) -> &HashMap<String, String> {
        &self.config.annotations
    }
}

/// When a container started with a recognized command exits by itself (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AutoExit {
    pub after: Duration,
    pub code: i32,
}

/// A container as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    /// 64 random hex digits.
    pub id: String,
    pub sandbox_id: String,
    pub metadata: api::ContainerMetadata,
    pub state: api::ContainerState,
    /// Nanoseconds since the epoch; `started_at` and `finished_at` are 0 until they happen.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, ... once exited.
    pub reason: String,
    pub message: String,
    /// The image as the CreateContainer request named it.
    pub image: String,
    /// The ID (`sha256:...`) of the image the container was created from.
    pub image_id: String,
    /// The sandbox's log directory joined with the config's log path (empty if either is).
    pub log_path: String,
    /// The resources from the config, replaced by UpdateContainerResources.
    pub resources: Option<api::ContainerResources>,
    /// The config given to CreateContainer, unaltered.
    pub config: api::ContainerConfig,
    pub(crate) auto_exit: Option<AutoExit>,
    pub(crate) seq: u64,
}

impl FakeContainer {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn labels(&self) -> &HashMap<String, String> {
        &self.config.labels
    }

    pub fn annotations(&self) -> &HashMap<String, String> {
        &self.config.annotations
    }
}

/// What an ExecSync call answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// How long the command "runs". When it exceeds the request's timeout (if non-zero) the call
    /// fails with `DeadlineExceeded` after that timeout, as containerd does.
    pub delay: Duration,
}

impl ExecResult {
    /// A result with this exit code and no output.
    pub fn exit(exit_code: i32) -> Self {
        Self {
            exit_code,
            ..Self::default()
        }
    }

    pub fn with_stdout(mut self, stdout: impl Into<Vec<u8>>) -> Self {
        self.stdout = stdout.into();
        self
    }

    pub fn with_stderr(mut self, stderr: impl Into<Vec<u8>>) -> Self {
        self.stderr = stderr.into();
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One RPC received by the fake, in the call log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    /// What the call was about: the sandbox or container ID, the image reference, or for
    /// RunPodSandbox `namespace/name` and for CreateContainer `sandbox-id/container-name`;
    /// for ListPodSandbox / ListContainers filtered by the pod UID label, that UID; empty for
    /// calls about nothing in particular (Version, unfiltered List*, ...).
    pub target: String,
}
