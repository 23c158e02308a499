//! `mini-kubelet logs CONTAINER`: the container's CRI log file (ContainerStatus `log_path`),
//! read by the same code that serves `kubectl logs` ([`crate::server::logs::stream_log`]):
//! partial records joined, `--tail` on whole lines, following across log rotation.

use std::io::Write as _;

use mk_cri::api;

use super::{CliError, Cri, resolve};
use crate::server::logs::{LogOptions, container_running, stream_log};

pub const EXAMPLES: &str =
    "The log is read from the file the runtime writes (the container's log_path), so this runs on
the node, with read access to the pod log directory (/var/log/pods). stdout and stderr are both
written to stdout, in the order the runtime logged them.

Examples:
  mini-kubelet logs main                    # the container named main (newest instance)
  mini-kubelet logs -f --tail 20 3f2a9c     # follow until the container exits or ctrl-c
  mini-kubelet logs -t 3f2a9c               # with the runtime's timestamps";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Container: ID, unique ID prefix, or name.
    pub container: String,
    /// Follow the log until the container exits (or ctrl-c), across log rotation.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// Prefix each line with its timestamp.
    #[arg(short, long)]
    pub timestamps: bool,
}

pub async fn run(cri: &Cri, args: &Args) -> Result<(), CliError> {
    let containers = resolve::all_containers(cri).await?;
    let id = resolve::container(&containers, &args.container)?.id.clone();
    let status = cri
        .client()
        .container_status(api::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .map_err(cri.err())?
        .status
        .ok_or_else(|| CliError::NotFound {
            kind: "container",
            query: id.clone(),
        })?;
    if status.log_path.is_empty() {
        return Err(CliError::Failed {
            what: format!("container {id}"),
            reason: "the runtime reports no log path".into(),
        });
    }
    let path = std::path::PathBuf::from(status.log_path);
    let opts = LogOptions {
        follow: args.follow,
        tail_lines: args.tail,
        timestamps: args.timestamps,
        ..LogOptions::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let client = cri.client().clone();
    let reader = tokio::spawn(async move {
        let running = || container_running(client.clone(), id.clone());
        stream_log(&path, &opts, tx, running).await
    });
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            chunk = rx.recv() => {
                let Some(chunk) = chunk else { break };
                let written = stdout.write_all(&chunk).and_then(|()| stdout.flush());
                match written {
                    Ok(()) => {}
                    // `| head`: the reader went away; stop quietly.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        reader.abort();
                        return Ok(());
                    }
                    Err(e) => {
                        reader.abort();
                        return Err(CliError::Io { context: "writing to stdout".into(), source: e });
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => {
                reader.abort();
                return Ok(());
            }
        }
    }
    match reader.await {
        Ok(result) => Ok(result?),
        Err(e) => Err(CliError::Failed {
            what: "reading the log".into(),
            reason: e.to_string(),
        }),
    }
}
