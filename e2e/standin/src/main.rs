//! `kube-standin`: serve the stand-in API server over plain HTTP.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube_standin::{Standin, StandinOptions};

/// A stand-in Kubernetes API server with real list/watch/patch semantics, for tests.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Write a kubeconfig naming the server to this file.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Interval of BOOKMARK events on watches that allow them (e.g. `5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    bookmark_interval: Duration,
    /// Number of events retained for watches before the oldest are compacted.
    #[arg(long, default_value_t = 10_000)]
    history_size: usize,
    /// Do not run ServiceAccount admission on pods (no token volume is injected).
    #[arg(long)]
    no_service_account_admission: bool,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    #[arg(long, default_value = "warn")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .context("parsing the log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let options = StandinOptions {
        bookmark_interval: cli.bookmark_interval,
        history_size: cli.history_size,
        service_account_admission: !cli.no_service_account_admission,
    };
    let server = Standin::start(cli.listen.as_str(), options)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    if let Some(path) = &cli.kubeconfig_out {
        server
            .write_kubeconfig(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
