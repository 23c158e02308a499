//! `mini-kubelet pods|ps|images|logs|inspect|exec|stats|pull|version`: a crictl-like CLI for
//! people on the node, reaching the runtime the agent uses through the same CRI client
//! ([`mk_cri::CriClient`]) and the same endpoint flags.
//!
//! One file per verb; [`output`] renders tables (comfy-table) and JSON/YAML with crictl's field
//! names, [`resolve`] turns the IDs, unique ID prefixes and names people type into runtime objects.

mod exec;
mod images;
mod inspect;
mod logs;
mod output;
mod pods;
mod ps;
mod pull;
mod resolve;
mod stats;
mod terminal;
mod version;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use mk_cri::{CriClient, CriError, CriMetrics};

pub use output::Format;

/// The endpoint when neither a flag nor the config file names one (kubelet's default).
pub const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// How long one CRI call may take (kubelet's `runtimeRequestTimeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The node commands, subcommands of `mini-kubelet`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCommand {
    /// The agent's version and the CRI runtime's name and version.
    #[command(after_help = version::EXAMPLES)]
    Version(version::Args),
    /// List pod sandboxes (as `crictl pods`).
    #[command(after_help = pods::EXAMPLES)]
    Pods(pods::Args),
    /// List containers (as `crictl ps`).
    #[command(after_help = ps::EXAMPLES)]
    Ps(ps::Args),
    /// List images (as `crictl images`).
    #[command(after_help = images::EXAMPLES)]
    Images(images::Args),
    /// Print a container's log from its CRI log file (as `crictl logs`).
    #[command(after_help = logs::EXAMPLES)]
    Logs(logs::Args),
    /// Show the status of a container, pod sandbox or image (as `crictl inspect`, `inspectp`,
    /// `inspecti`).
    #[command(after_help = inspect::EXAMPLES)]
    Inspect(inspect::Args),
    /// Run a command in a running container (as `crictl exec`).
    #[command(after_help = exec::EXAMPLES)]
    Exec(exec::Args),
    /// Containers' resource usage (as `crictl stats`).
    #[command(after_help = stats::EXAMPLES)]
    Stats(stats::Args),
    /// Pull an image through the runtime (as `crictl pull`).
    #[command(after_help = pull::EXAMPLES)]
    Pull(pull::Args),
}

/// Where the runtime is: the agent's own global flags, so the CLI talks to what the agent runs on.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--container-runtime-endpoint`.
    pub endpoint: Option<String>,
    /// `--config`: its `containerRuntimeEndpoint` counts when the flag is not given.
    pub config: Option<PathBuf>,
    /// `--container-runtime docker`: the running agent's Docker adapter at
    /// `<root_dir>/dockershim.sock`.
    pub docker: bool,
    /// `--root-dir`.
    pub root_dir: PathBuf,
}

/// Why a node command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Endpoint(CriError),
    #[error("container runtime at {endpoint}: {source}")]
    Runtime {
        endpoint: String,
        #[source]
        source: CriError,
    },
    #[error("no {kind} matches {query:?}")]
    NotFound { kind: &'static str, query: String },
    #[error("{kind} {query:?} is ambiguous, it matches: {matches}")]
    Ambiguous {
        kind: &'static str,
        query: String,
        matches: String,
    },
    #[error("{what}: {reason}")]
    Failed { what: String, reason: String },
    #[error("rendering JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("rendering YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Log(#[from] crate::server::logs::LogError),
    #[error("{0}")]
    Streaming(#[from] mk_streaming::StreamingError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The CRI endpoint `target` names: the Docker adapter's socket in the root directory with
/// `--container-runtime docker`, else `--container-runtime-endpoint`, else the config file's
/// `containerRuntimeEndpoint`, else [`DEFAULT_ENDPOINT`].
pub fn endpoint(target: &Target) -> Result<String, CliError> {
    let endpoint = if target.docker {
        format!(
            "unix://{}",
            target.root_dir.join("dockershim.sock").display()
        )
    } else if let Some(endpoint) = &target.endpoint {
        endpoint.clone()
    } else if let Some(path) = &target.config {
        crate::config::KubeletConfiguration::load(path)?
            .config
            .container_runtime_endpoint
    } else {
        DEFAULT_ENDPOINT.to_string()
    };
    mk_cri::parse_endpoint(&endpoint).map_err(CliError::Endpoint)?;
    Ok(endpoint)
}

/// The CRI client of a command, with errors that name the endpoint.
#[derive(Debug, Clone)]
pub struct Cri {
    client: CriClient,
}

impl Cri {
    pub fn connect(endpoint: &str) -> Result<Self, CliError> {
        let client = CriClient::new(endpoint, CALL_TIMEOUT, CriMetrics::default())
            .map_err(CliError::Endpoint)?;
        Ok(Self { client })
    }

    pub fn client(&self) -> &CriClient {
        &self.client
    }

    /// Maps a CRI error of this endpoint.
    pub fn err(&self) -> impl Fn(CriError) -> CliError + '_ {
        |source| CliError::Runtime {
            endpoint: self.client.endpoint().to_string(),
            source,
        }
    }
}

/// Runs `command` against the runtime of `target`; the process's exit code (the command's own
/// with `exec`).
pub async fn run(command: &NodeCommand, target: &Target) -> Result<i32, CliError> {
    let cri = Cri::connect(&endpoint(target)?)?;
    let text = match command {
        NodeCommand::Version(args) => version::run(&cri, args).await?,
        NodeCommand::Pods(args) => pods::run(&cri, args).await?,
        NodeCommand::Ps(args) => ps::run(&cri, args).await?,
        NodeCommand::Images(args) => images::run(&cri, args).await?,
        NodeCommand::Inspect(args) => inspect::run(&cri, args).await?,
        NodeCommand::Stats(args) => stats::run(&cri, args).await?,
        NodeCommand::Logs(args) => return logs::run(&cri, args).await.map(|()| 0),
        NodeCommand::Exec(args) => return exec::run(&cri, args).await,
        NodeCommand::Pull(args) => pull::run(&cri, args).await?,
    };
    output::print(&text)?;
    Ok(0)
}
