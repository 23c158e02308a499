//! The in-memory state and the semantics of every implemented RPC, free of any transport.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as api;
use k8s_cri::v1::{ContainerState, PodSandboxState};
use tonic::{Code, Status};

use crate::image::{self, FakeImage};
use crate::types::AutoExit;
use crate::{Call, ExecResult, FakeContainer, FakeError, FakeSandbox, Op};

/// Exit code of a container killed by SIGKILL (StopContainer, StopPodSandbox).
pub const KILLED_EXIT_CODE: i32 = 137;
/// Mount point reported by ImageFsInfo and container stats (containerd's overlayfs snapshotter).
pub const IMAGE_FS_MOUNTPOINT: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs";
/// Default pod network (containerd's default CNI bridge config).
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";
/// How many calls the call log keeps by default (per-op counts are never truncated).
pub const DEFAULT_CALL_LOG_LIMIT: usize = 10_000;

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The reason containerd reports for an exit code when nothing more specific is known.
fn exit_reason(exit_code: i32) -> &'static str {
    if exit_code == 0 { "Completed" } else { "Error" }
}

fn state_name(state: ContainerState) -> &'static str {
    state.as_str_name()
}

fn container_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "an error occurred when try to find container {id:?}: not found"
    ))
}

fn sandbox_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "an error occurred when try to find sandbox {id:?}: not found"
    ))
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A pool of IPv4 addresses handed out sequentially, skipping the network address, the gateway
/// (`.1`) and the broadcast address.
#[derive(Debug)]
struct IpPool {
    base: u32,
    last: u32,
    cursor: u32,
    in_use: HashSet<u32>,
}

impl IpPool {
    fn parse(cidr: &str) -> Option<(u32, u32)> {
        let (addr, prefix) = cidr.trim().split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u32 = prefix.parse().ok()?;
        if !(8..=30).contains(&prefix) {
            return None;
        }
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(addr) & mask;
        Some((base, base | !mask))
    }

    fn new(cidr: &str) -> Option<Self> {
        let (base, broadcast) = Self::parse(cidr)?;
        Some(Self {
            base,
            last: broadcast - 1,
            cursor: base + 2,
            in_use: HashSet::new(),
        })
    }

    /// Switches to another range; addresses in use stay reserved until released.
    fn reset_range(&mut self, cidr: &str) -> bool {
        match Self::parse(cidr) {
            Some((base, broadcast)) => {
                self.base = base;
                self.last = broadcast - 1;
                self.cursor = base + 2;
                true
            }
            None => false,
        }
    }

    fn allocate(&mut self) -> Option<Ipv4Addr> {
        let first = self.base + 2;
        for _ in first..=self.last {
            let candidate = self.cursor;
            self.cursor = if self.cursor >= self.last {
                first
            } else {
                self.cursor + 1
            };
            if self.in_use.insert(candidate) {
                return Some(Ipv4Addr::from(candidate));
            }
        }
        None
    }

    fn release(&mut self, ip: &str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            self.in_use.remove(&u32::from(ip));
        }
    }
}

/// Everything the fake knows, behind one mutex.
#[derive(Debug)]
pub(crate) struct State {
    sandboxes: HashMap<String, FakeSandbox>,
    containers: HashMap<String, FakeContainer>,
    images: Vec<FakeImage>,
    unpullable: HashSet<String>,
    ips: IpPool,
    pod_cidr: String,
    seq: u64,
    /// containerd's name reservations: `name_namespace_uid_attempt` -> sandbox ID and
    /// `container_pod_namespace_uid_attempt` -> container ID.
    sandbox_names: HashMap<String, String>,
    container_names: HashMap<String, String>,
    exec_default: Option<ExecResult>,
    exec_by_name: HashMap<String, ExecResult>,
    stop_exit_codes: HashMap<String, i32>,
    runtime_ready: bool,
    network_ready: bool,
    runtime_handlers: BTreeSet<String>,
    // Test controls.
    latency: Duration,
    op_latency: HashMap<Op, Duration>,
    failures: HashMap<Op, VecDeque<Code>>,
    calls: VecDeque<Call>,
    call_log_limit: usize,
    call_counts: HashMap<Op, u64>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            sandboxes: HashMap::new(),
            containers: HashMap::new(),
            images: Vec::new(),
            unpullable: HashSet::new(),
            ips: IpPool::new(DEFAULT_POD_CIDR).unwrap_or(IpPool {
                base: 0x0a58_0000,
                last: 0x0a58_fffe,
                cursor: 0x0a58_0002,
                in_use: HashSet::new(),
            }),
            pod_cidr: String::new(),
            seq: 0,
            sandbox_names: HashMap::new(),
            container_names: HashMap::new(),
            exec_default: None,
            exec_by_name: HashMap::new(),
            stop_exit_codes: HashMap::new(),
            runtime_ready: true,
            network_ready: true,
            runtime_handlers: [String::new(), "runc".to_string()].into(),
            latency: Duration::ZERO,
            op_latency: HashMap::new(),
            failures: HashMap::new(),
            calls: VecDeque::new(),
            call_log_limit: DEFAULT_CALL_LOG_LIMIT,
            call_counts: HashMap::new(),
        }
    }
}

/// Recognizes the commands that make a container exit by itself (documented in the crate docs).
pub(crate) fn auto_exit(argv: &[String]) -> Option<AutoExit> {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let program = base(argv.first()?);
    match (program.as_str(), &argv[1..]) {
        ("true", []) => Some(AutoExit {
            after: Duration::ZERO,
            code: 0,
        }),
        ("false", []) => Some(AutoExit {
            after: Duration::ZERO,
            code: 1,
        }),
        ("sleep", [secs]) => parse_seconds(secs).map(|after| AutoExit { after, code: 0 }),
        ("sh" | "bash" | "ash" | "dash", ["-c", script]) => parse_script(script),
        _ => None,
    }
}

fn parse_seconds(raw: &str) -> Option<Duration> {
    let secs: f64 = raw.trim().trim_end_matches('s').parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn parse_exit(raw: &str) -> Option<i32> {
    let rest = raw.trim().strip_prefix("exit")?;
    if rest.is_empty() {
        return Some(0);
    }
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    rest.trim().parse().ok()
}

/// `exit N`, `sleep S`, `sleep S; exit N`, `sleep S && exit N`.
fn parse_script(script: &str) -> Option<AutoExit> {
    let script = script.trim();
    if let Some(code) = parse_exit(script) {
        return Some(AutoExit {
            after: Duration::ZERO,
            code,
        });
    }
    let (sleep, exit) = match script.split_once(';').or_else(|| script.split_once("&&")) {
        Some((sleep, exit)) => (sleep, Some(exit)),
        None => (script, None),
    };
    let after = parse_seconds(sleep.trim().strip_prefix("sleep ")?)?;
    let code = match exit {
        Some(exit) => parse_exit(exit)?,
        None => 0,
    };
    Some(AutoExit { after, code })
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn fresh_id(&self) -> String {
        loop {
            let id = image::random_hex64();
            if !self.sandboxes.contains_key(&id) && !self.containers.contains_key(&id) {
                return id;
            }
        }
    }

    // ----- call log, latency, injected failures -----

    /// Logs a call; returns the latency to apply and the failure to inject, if any.
    pub(crate) fn record(&mut self, op: Op, target: String) -> (Duration, Option<Code>) {
        *self.call_counts.entry(op).or_default() += 1;
        if self.call_log_limit > 0 {
            while self.calls.len() >= self.call_log_limit {
                self.calls.pop_front();
            }
            self.calls.push_back(Call { op, target });
        }
        let latency = self.op_latency.get(&op).copied().unwrap_or(self.latency);
        let failure = self.failures.get_mut(&op).and_then(VecDeque::pop_front);
        (latency, failure)
    }

    pub(crate) fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    pub(crate) fn set_op_latency(&mut self, op: Op, latency: Option<Duration>) {
        match latency {
            Some(latency) => self.op_latency.insert(op, latency),
            None => self.op_latency.remove(&op),
        };
    }

    pub(crate) fn fail_next(&mut self, op: Op, code: Code) {
        self.failures.entry(op).or_default().push_back(code);
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.iter().cloned().collect()
    }

    pub(crate) fn call_count(&self, op: Op) -> u64 {
        self.call_counts.get(&op).copied().unwrap_or(0)
    }

    pub(crate) fn clear_calls(&mut self) {
        self.calls.clear();
        self.call_counts.clear();
    }

    pub(crate) fn set_call_log_limit(&mut self, limit: usize) {
        self.call_log_limit = limit;
        while self.calls.len() > limit {
            self.calls.pop_front();
        }
    }

    // ----- other test controls -----

    pub(crate) fn add_image(&mut self, reference: &str, size: u64) -> String {
        let normalized = image::normalize(reference);
        if let Some(found) = self.images.iter().find(|i| i.matches(&normalized)) {
            return found.id.clone();
        }
        let image = FakeImage::for_reference(&normalized, size);
        let id = image.id.clone();
        self.images.push(image);
        id
    }

    pub(crate) fn set_image_pinned(&mut self, reference: &str, pinned: bool) -> bool {
        let mut found = false;
        for image in self.images.iter_mut().filter(|i| i.matches(reference)) {
            image.pinned = pinned;
            found = true;
        }
        found
    }

    pub(crate) fn set_unpullable(&mut self, reference: &str) {
        self.unpullable.insert(image::normalize(reference));
    }

    pub(crate) fn images(&self) -> Vec<FakeImage> {
        self.images.clone()
    }

    pub(crate) fn has_image(&self, reference: &str) -> bool {
        self.images.iter().any(|i| i.matches(reference))
    }

    pub(crate) fn set_exec_result(&mut self, container_name: Option<&str>, result: ExecResult) {
        match container_name {
            Some(name) => {
                self.exec_by_name.insert(name.to_string(), result);
            }
            None => self.exec_default = Some(result),
        }
    }

    pub(crate) fn clear_exec_results(&mut self) {
        self.exec_default = None;
        self.exec_by_name.clear();
    }

    pub(crate) fn set_stop_exit_code(&mut self, container_name: &str, exit_code: Option<i32>) {
        match exit_code {
            Some(code) => self
                .stop_exit_codes
                .insert(container_name.to_string(), code),
            None => self.stop_exit_codes.remove(container_name),
        };
    }

    pub(crate) fn set_runtime_ready(&mut self, ready: bool) {
        self.runtime_ready = ready;
    }

    pub(crate) fn set_network_ready(&mut self, ready: bool) {
        self.network_ready = ready;
    }

    pub(crate) fn add_runtime_handler(&mut self, name: &str) {
        self.runtime_handlers.insert(name.to_string());
    }

    pub(crate) fn set_pod_cidr(&mut self, cidr: &str) -> Result<(), FakeError> {
        if self.ips.reset_range(cidr) {
            self.pod_cidr = cidr.to_string();
            Ok(())
        } else {
            Err(FakeError::InvalidCidr(cidr.to_string()))
        }
    }

    pub(crate) fn pod_cidr(&self) -> String {
        self.pod_cidr.clone()
    }

    /// Simulates the container's process exiting by itself.
    pub(crate) fn exit_container(
        &mut self,
        id: &str,
        exit_code: i32,
        reason: Option<&str>,
    ) -> Result<(), FakeError> {
        let container = self
            .containers
            .get_mut(id)
            .ok_or_else(|| FakeError::NotFound {
                kind: "container",
                id: id.to_string(),
            })?;
        if container.state != ContainerState::ContainerRunning {
            return Err(FakeError::NotRunning {
                id: id.to_string(),
                state: state_name(container.state),
            });
        }
        let reason = reason.unwrap_or(exit_reason(exit_code));
        finish(container, exit_code, reason, now_ns());
        Ok(())
    }

    /// Simulates the sandbox dying (its pause process exiting): the sandbox turns NOTREADY and
    /// loses its IP; its containers are left as they are.
    pub(crate) fn fail_sandbox(&mut self, id: &str) -> Result<(), FakeError> {
        let sandbox = self
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| FakeError::NotFound {
                kind: "sandbox",
                id: id.to_string(),
            })?;
        sandbox.state = PodSandboxState::SandboxNotready;
        let ip = std::mem::take(&mut sandbox.ip);
        self.ips.release(&ip);
        Ok(())
    }

    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (
            self.sandboxes.len(),
            self.containers.len(),
            self.images.len(),
        )
    }

    pub(crate) fn sandboxes(&self) -> Vec<FakeSandbox> {
        let mut all: Vec<_> = self.sandboxes.values().cloned().collect();
        all.sort_by_key(|s| s.seq);
        all
    }

    pub(crate) fn containers(&self) -> Vec<FakeContainer> {
        let mut all: Vec<_> = self.containers.values().cloned().collect();
        all.sort_by_key(|c| c.seq);
        all
    }

    /// Lets containers whose auto-exit time has come exit (evaluated lazily on every access).
    pub(crate) fn settle(&mut self, now: i64) {
        for container in self.containers.values_mut() {
            if container.state != ContainerState::ContainerRunning {
                continue;
            }
            if let Some(auto) = container.auto_exit {
                let at = container.started_at.saturating_add(duration_ns(auto.after));
                if at <= now {
                    finish(container, auto.code, exit_reason(auto.code), at);
                }
            }
        }
    }

    // ----- RuntimeService -----

    pub(crate) fn version(&self) -> api::VersionResponse {
        api::VersionResponse {
            version: "0.1.0".to_string(),
            runtime_name: "fake".to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: "v1".to_string(),
        }
    }

    pub(crate) fn status(&self) -> api::StatusResponse {
        let condition =
            |kind: &str, ready: bool, reason: &str, message: &str| api::RuntimeCondition {
                r#type: kind.to_string(),
                status: ready,
                reason: if ready {
                    String::new()
                } else {
                    reason.to_string()
                },
                message: if ready {
                    String::new()
                } else {
                    message.to_string()
                },
            };
        api::StatusResponse {
            status: Some(api::RuntimeStatus {
                conditions: vec![
                    condition(
                        "RuntimeReady",
                        self.runtime_ready,
                        "RuntimeNotReady",
                        "fake runtime set not ready",
                    ),
                    condition(
                        "NetworkReady",
                        self.network_ready,
                        "NetworkPluginNotReady",
                        "Network plugin returns error: cni plugin not initialized",
                    ),
                ],
            }),
            info: HashMap::new(),
            runtime_handlers: self
                .runtime_handlers
                .iter()
                .map(|name| api::RuntimeHandler {
                    name: name.clone(),
                    features: Some(api::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: false,
                        user_namespaces: false,
                    }),
                })
                .collect(),
            features: Some(api::RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        }
    }

    pub(crate) fn runtime_config(&self) -> api::RuntimeConfigResponse {
        api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration {
                cgroup_driver: api::CgroupDriver::Cgroupfs as i32,
            }),
        }
    }

    /// kubelet sends the node's pod CIDR; the first IPv4 range in it becomes the IP pool.
    pub(crate) fn update_runtime_config(&mut self, request: api::UpdateRuntimeConfigRequest) {
        let cidr = request
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if let Some(v4) = cidr
            .split(',')
            .map(str::trim)
            .find(|c| IpPool::parse(c).is_some())
            && self.ips.reset_range(v4)
        {
            self.pod_cidr = v4.to_string();
        }
    }

    pub(crate) fn run_pod_sandbox(
        &mut self,
        request: api::RunPodSandboxRequest,
    ) -> Result<api::RunPodSandboxResponse, Status> {
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("sandbox config is required"))?;
        let metadata = config
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| Status::invalid_argument("sandbox config must include metadata.name"))?;
        if !self.runtime_handlers.contains(&request.runtime_handler) {
            return Err(Status::unknown(format!(
                "failed to get sandbox runtime: no runtime for {:?} is configured",
                request.runtime_handler
            )));
        }
        let name = format!(
            "{}_{}_{}_{}",
            metadata.name, metadata.namespace, metadata.uid, metadata.attempt
        );
        if let Some(holder) = self.sandbox_names.get(&name) {
            return Err(Status::already_exists(format!(
                "failed to reserve sandbox name {name:?}: name {name:?} is reserved for {holder:?}"
            )));
        }
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == api::NamespaceMode::Node as i32);
        let id = self.fresh_id();
        let ip = if host_network {
            String::new()
        } else {
            if !self.network_ready {
                return Err(Status::unknown(format!(
                    "failed to setup network for sandbox {id:?}: cni plugin not initialized"
                )));
            }
            match self.ips.allocate() {
                Some(ip) => ip.to_string(),
                None => {
                    return Err(Status::unknown(format!(
                        "failed to setup network for sandbox {id:?}: no IP addresses available in range set"
                    )));
                }
            }
        };
        let seq = self.next_seq();
        self.sandbox_names.insert(name, id.clone());
        self.sandboxes.insert(
            id.clone(),
            FakeSandbox {
                id: id.clone(),
                metadata,
                state: PodSandboxState::SandboxReady,
                created_at: now_ns(),
                ip,
                host_network,
                runtime_handler: request.runtime_handler,
                config,
                seq,
            },
        );
        Ok(api::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    fn kill_containers_of(&mut self, sandbox_id: &str) {
        let now = now_ns();
        for container in self.containers.values_mut() {
            if container.sandbox_id == sandbox_id
                && container.state == ContainerState::ContainerRunning
            {
                finish(
                    container,
                    KILLED_EXIT_CODE,
                    exit_reason(KILLED_EXIT_CODE),
                    now,
                );
            }
        }
    }

    /// Idempotent: stopping an unknown or already stopped sandbox succeeds.
    pub(crate) fn stop_pod_sandbox(&mut self, id: &str) {
        if !self.sandboxes.contains_key(id) {
            return;
        }
        self.kill_containers_of(id);
        if let Some(sandbox) = self.sandboxes.get_mut(id) {
            sandbox.state = PodSandboxState::SandboxNotready;
            let ip = std::mem::take(&mut sandbox.ip);
            self.ips.release(&ip);
        }
    }

    /// Idempotent: removing an unknown sandbox succeeds. Running containers are killed first.
    pub(crate) fn remove_pod_sandbox(&mut self, id: &str) {
        if !self.sandboxes.contains_key(id) {
            return;
        }
        self.stop_pod_sandbox(id);
        let doomed: Vec<String> = self
            .containers
            .values()
            .filter(|c| c.sandbox_id == id)
            .map(|c| c.id.clone())
            .collect();
        for container in doomed {
            self.remove_container(&container);
        }
        self.sandbox_names.retain(|_, holder| holder != id);
        self.sandboxes.remove(id);
    }

    pub(crate) fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<api::PodSandboxStatusResponse, Status> {
        let sandbox = self
            .sandboxes
            .get(id)
            .ok_or_else(|| sandbox_not_found(id))?;
        let namespace_options = sandbox
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        Ok(api::PodSandboxStatusResponse {
            status: Some(api::PodSandboxStatus {
                id: sandbox.id.clone(),
                metadata: Some(sandbox.metadata.clone()),
                state: sandbox.state as i32,
                created_at: sandbox.created_at,
                network: Some(api::PodSandboxNetworkStatus {
                    ip: sandbox.ip.clone(),
                    additional_ips: Vec::new(),
                }),
                linux: Some(api::LinuxPodSandboxStatus {
                    namespaces: Some(api::Namespace {
                        options: namespace_options,
                    }),
                }),
                labels: sandbox.config.labels.clone(),
                annotations: sandbox.config.annotations.clone(),
                runtime_handler: sandbox.runtime_handler.clone(),
            }),
            info: HashMap::new(),
            containers_statuses: Vec::new(),
            timestamp: now_ns(),
        })
    }

    pub(crate) fn list_pod_sandbox(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> api::ListPodSandboxResponse {
        let filter = filter.unwrap_or_default();
        let mut items: Vec<&FakeSandbox> = self
            .sandboxes
            .values()
            .filter(|s| filter.id.is_empty() || s.id == filter.id)
            .filter(|s| filter.state.is_none_or(|want| s.state as i32 == want.state))
            .filter(|s| labels_match(&s.config.labels, &filter.label_selector))
            .collect();
        items.sort_by_key(|s| s.seq);
        api::ListPodSandboxResponse {
            items: items
                .into_iter()
                .map(|s| api::PodSandbox {
                    id: s.id.clone(),
                    metadata: Some(s.metadata.clone()),
                    state: s.state as i32,
                    created_at: s.created_at,
                    labels: s.config.labels.clone(),
                    annotations: s.config.annotations.clone(),
                    runtime_handler: s.runtime_handler.clone(),
                })
                .collect(),
        }
    }

    pub(crate) fn create_container(
        &mut self,
        request: api::CreateContainerRequest,
    ) -> Result<api::CreateContainerResponse, Status> {
        let sandbox = self
            .sandboxes
            .get(&request.pod_sandbox_id)
            .ok_or_else(|| sandbox_not_found(&request.pod_sandbox_id))?;
        if sandbox.state != PodSandboxState::SandboxReady {
            return Err(Status::failed_precondition(format!(
                "sandbox container {:?} is not running",
                sandbox.id
            )));
        }
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let metadata = config
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument("container config must include metadata.name")
            })?;
        let image_ref = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Status::invalid_argument("container config must include an image"))?;
        let image_id = self
            .images
            .iter()
            .find(|i| i.matches(&image_ref))
            .map(|i| i.id.clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "failed to resolve image {image_ref:?}: image {image_ref:?}: not found"
                ))
            })?;
        if let Some(security) = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            && security.run_as_group.is_some()
            && security.run_as_user.is_none()
            && security.run_as_username.is_empty()
        {
            // containerd's (and runc's) refusal: a group alone names no user to run as.
            return Err(Status::invalid_argument(
                "user group is specified without user or username",
            ));
        }
        let name = format!(
            "{}_{}_{}_{}_{}",
            metadata.name,
            sandbox.metadata.name,
            sandbox.metadata.namespace,
            sandbox.metadata.uid,
            metadata.attempt
        );
        if let Some(holder) = self.container_names.get(&name) {
            return Err(Status::already_exists(format!(
                "failed to reserve container name {name:?}: name {name:?} is reserved for {holder:?}"
            )));
        }
        let log_directory = request
            .sandbox_config
            .as_ref()
            .map_or(&sandbox.config.log_directory, |c| &c.log_directory);
        let log_path = if log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(log_directory)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        };
        let sandbox_id = sandbox.id.clone();
        let argv: Vec<String> = config
            .command
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect();
        let resources = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|linux| api::ContainerResources {
                linux: Some(linux),
                windows: None,
            });
        let id = self.fresh_id();
        let seq = self.next_seq();
        self.container_names.insert(name, id.clone());
        self.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                sandbox_id,
                metadata,
                state: ContainerState::ContainerCreated,
                created_at: now_ns(),
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                image: image_ref,
                image_id,
                log_path,
                resources,
                auto_exit: auto_exit(&argv),
                config,
                seq,
            },
        );
        Ok(api::CreateContainerResponse { container_id: id })
    }

    pub(crate) fn start_container(&mut self, id: &str) -> Result<(), Status> {
        let container = self
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        if container.state != ContainerState::ContainerCreated {
            return Err(Status::failed_precondition(format!(
                "container is in {} state",
                state_name(container.state)
            )));
        }
        let sandbox_ready = self
            .sandboxes
            .get(&container.sandbox_id)
            .is_some_and(|s| s.state == PodSandboxState::SandboxReady);
        if !sandbox_ready {
            return Err(Status::failed_precondition(format!(
                "sandbox container {:?} is not running",
                container.sandbox_id
            )));
        }
        let now = now_ns();
        if let Some(container) = self.containers.get_mut(id) {
            container.state = ContainerState::ContainerRunning;
            container.started_at = now;
        }
        self.settle(now);
        Ok(())
    }

    /// Kills a running container (exit code 137, or the one scripted for its name). Stopping a
    /// container that is not running is a no-op.
    /// Idempotent: stopping an unknown container succeeds (CRI: "must not return an error if the
    /// container has already been stopped"; containerd 2.x, and critest's Idempotence spec).
    pub(crate) fn stop_container(&mut self, id: &str) -> Result<(), Status> {
        let Some(container) = self.containers.get_mut(id) else {
            return Ok(());
        };
        if container.state == ContainerState::ContainerRunning {
            let code = self
                .stop_exit_codes
                .get(&container.metadata.name)
                .copied()
                .unwrap_or(KILLED_EXIT_CODE);
            finish(container, code, exit_reason(code), now_ns());
        }
        Ok(())
    }

    /// Idempotent: removing an unknown container succeeds. A running one is killed first.
    pub(crate) fn remove_container(&mut self, id: &str) {
        if let Some(mut container) = self.containers.remove(id) {
            if container.state == ContainerState::ContainerRunning {
                finish(
                    &mut container,
                    KILLED_EXIT_CODE,
                    exit_reason(KILLED_EXIT_CODE),
                    now_ns(),
                );
            }
            self.container_names.retain(|_, holder| holder != id);
        }
    }

    pub(crate) fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> api::ListContainersResponse {
        let filter = filter.unwrap_or_default();
        let mut items: Vec<&FakeContainer> = self
            .containers
            .values()
            .filter(|c| filter.id.is_empty() || c.id == filter.id)
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.sandbox_id == filter.pod_sandbox_id)
            .filter(|c| filter.state.is_none_or(|want| c.state as i32 == want.state))
            .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
            .collect();
        items.sort_by_key(|c| c.seq);
        api::ListContainersResponse {
            containers: items
                .into_iter()
                .map(|c| api::Container {
                    id: c.id.clone(),
                    pod_sandbox_id: c.sandbox_id.clone(),
                    metadata: Some(c.metadata.clone()),
                    image: c.config.image.clone(),
                    image_ref: c.image_id.clone(),
                    state: c.state as i32,
                    created_at: c.created_at,
                    labels: c.config.labels.clone(),
                    annotations: c.config.annotations.clone(),
                    image_id: c.image_id.clone(),
                })
                .collect(),
        }
    }

    pub(crate) fn container_status(
        &self,
        id: &str,
    ) -> Result<api::ContainerStatusResponse, Status> {
        let c = self
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        // Like containerd: the image is reported by its first tag and its digest when the image
        // is still present, else as the container was created.
        let image = self.images.iter().find(|i| i.id == c.image_id);
        let image_spec = match image.and_then(|i| i.repo_tags.first()) {
            Some(tag) => api::ImageSpec {
                image: tag.clone(),
                ..Default::default()
            },
            None => c.config.image.clone().unwrap_or_default(),
        };
        let image_ref = image
            .and_then(|i| i.repo_digests.first())
            .cloned()
            .unwrap_or_else(|| c.image_id.clone());
        Ok(api::ContainerStatusResponse {
            status: Some(api::ContainerStatus {
                id: c.id.clone(),
                metadata: Some(c.metadata.clone()),
                state: c.state as i32,
                created_at: c.created_at,
                started_at: c.started_at,
                finished_at: c.finished_at,
                exit_code: c.exit_code,
                image: Some(image_spec),
                image_ref,
                reason: c.reason.clone(),
                message: c.message.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                mounts: c.config.mounts.clone(),
                log_path: c.log_path.clone(),
                resources: c.resources.clone(),
                image_id: c.image_id.clone(),
                user: None,
            }),
            info: HashMap::new(),
        })
    }

    pub(crate) fn update_container_resources(
        &mut self,
        request: api::UpdateContainerResourcesRequest,
    ) -> Result<(), Status> {
        let container = self
            .containers
            .get_mut(&request.container_id)
            .ok_or_else(|| container_not_found(&request.container_id))?;
        container.resources = Some(api::ContainerResources {
            linux: request.linux,
            windows: request.windows,
        });
        Ok(())
    }

    pub(crate) fn reopen_container_log(&self, id: &str) -> Result<(), Status> {
        let container = self
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        if container.state != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition("container is not running"));
        }
        Ok(())
    }

    /// The result an ExecSync call gets: the one scripted for the container's name, else the
    /// scripted default, else the built-in behaviour (see the crate docs).
    pub(crate) fn exec_sync(&self, id: &str, cmd: &[String]) -> Result<ExecResult, Status> {
        let container = self
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        if container.state != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container is in {} state",
                state_name(container.state)
            )));
        }
        if let Some(result) = self
            .exec_by_name
            .get(&container.metadata.name)
            .or(self.exec_default.as_ref())
        {
            return Ok(result.clone());
        }
        let code = match auto_exit(cmd) {
            Some(AutoExit { after, code }) => {
                return Ok(ExecResult {
                    exit_code: code,
                    delay: after,
                    ..ExecResult::default()
                });
            }
            None => 0,
        };
        Ok(ExecResult::exit(code).with_stdout(cmd.join(" ")))
    }

    fn container_stats(c: &FakeContainer, now: i64) -> api::ContainerStats {
        let zero = Some(api::UInt64Value { value: 0 });
        api::ContainerStats {
            attributes: Some(api::ContainerAttributes {
                id: c.id.clone(),
                metadata: Some(c.metadata.clone()),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: Some(api::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: zero,
                usage_nano_cores: zero,
            }),
            memory: Some(api::MemoryUsage {
                timestamp: now,
                working_set_bytes: zero,
                available_bytes: zero,
                usage_bytes: zero,
                rss_bytes: zero,
                page_faults: zero,
                major_page_faults: zero,
            }),
            writable_layer: Some(api::FilesystemUsage {
                timestamp: now,
                fs_id: Some(api::FilesystemIdentifier {
                    mountpoint: IMAGE_FS_MOUNTPOINT.to_string(),
                }),
                used_bytes: zero,
                inodes_used: zero,
            }),
            swap: None,
        }
    }

    pub(crate) fn container_stats_of(
        &self,
        id: &str,
    ) -> Result<api::ContainerStatsResponse, Status> {
        let container = self
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        Ok(api::ContainerStatsResponse {
            stats: Some(Self::container_stats(container, now_ns())),
        })
    }

    pub(crate) fn list_container_stats(
        &self,
        filter: Option<api::ContainerStatsFilter>,
    ) -> api::ListContainerStatsResponse {
        let filter = filter.unwrap_or_default();
        let now = now_ns();
        let mut items: Vec<&FakeContainer> = self
            .containers
            .values()
            .filter(|c| c.state == ContainerState::ContainerRunning)
            .filter(|c| filter.id.is_empty() || c.id == filter.id)
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.sandbox_id == filter.pod_sandbox_id)
            .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
            .collect();
        items.sort_by_key(|c| c.seq);
        api::ListContainerStatsResponse {
            stats: items
                .into_iter()
                .map(|c| Self::container_stats(c, now))
                .collect(),
        }
    }

    // ----- ImageService -----

    pub(crate) fn list_images(&self, filter: Option<api::ImageFilter>) -> api::ListImagesResponse {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        api::ListImagesResponse {
            images: self
                .images
                .iter()
                .filter(|i| wanted.as_ref().is_none_or(|w| i.matches(w)))
                .map(FakeImage::to_api)
                .collect(),
        }
    }

    pub(crate) fn image_status(&self, reference: &str) -> api::ImageStatusResponse {
        api::ImageStatusResponse {
            image: self
                .images
                .iter()
                .find(|i| i.matches(reference))
                .map(FakeImage::to_api),
            info: HashMap::new(),
        }
    }

    pub(crate) fn pull_image(&mut self, reference: &str) -> Result<String, Status> {
        if reference.trim().is_empty() {
            return Err(Status::invalid_argument("image reference is required"));
        }
        if let Some(found) = self.images.iter().find(|i| i.matches(reference)) {
            return Ok(found.id.clone());
        }
        let normalized = image::normalize(reference);
        if image::as_image_id(reference).is_some() || self.unpullable.contains(&normalized) {
            return Err(Status::not_found(format!(
                "failed to pull and unpack image {normalized:?}: failed to resolve reference \
                 {normalized:?}: {normalized}: not found"
            )));
        }
        Ok(self.add_image(&normalized, image::DEFAULT_IMAGE_SIZE))
    }

    /// Idempotent: removing an absent image succeeds.
    pub(crate) fn remove_image(&mut self, reference: &str) {
        self.images.retain(|i| !i.matches(reference));
    }

    pub(crate) fn image_fs_info(&self) -> api::ImageFsInfoResponse {
        let used: u64 = self.images.iter().map(|i| i.size).sum();
        api::ImageFsInfoResponse {
            image_filesystems: vec![api::FilesystemUsage {
                timestamp: now_ns(),
                fs_id: Some(api::FilesystemIdentifier {
                    mountpoint: IMAGE_FS_MOUNTPOINT.to_string(),
                }),
                used_bytes: Some(api::UInt64Value { value: used }),
                inodes_used: Some(api::UInt64Value {
                    value: self.images.len() as u64,
                }),
            }],
            container_filesystems: Vec::new(),
        }
    }
}

fn finish(container: &mut FakeContainer, exit_code: i32, reason: &str, at: i64) {
    container.state = ContainerState::ContainerExited;
    container.exit_code = exit_code;
    container.reason = reason.to_string();
    container.finished_at = at.max(container.started_at);
}
