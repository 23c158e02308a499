//! Serves the in-memory CRI runtime (`mk-fake-runtime`) on a unix socket until SIGTERM or ctrl-c,
//! for running the CRI validation suite against it (`e2e/scripts/critest.sh fake SKIPLIST`).
//!
//!     fake-cri SOCKET_PATH
//!
//! The fake "pulls" any image, so critest's images need not be present beforehand (critest names
//! no pause image: sandboxes are the runtime's own business, and the fake has no image for them).

use anyhow::{Context, Result, bail};
use mk_fake_runtime::FakeRuntime;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        bail!("usage: fake-cri SOCKET_PATH");
    };
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let fake = FakeRuntime::new();
    let server = fake
        .serve_unix(&path)
        .with_context(|| format!("serving on {}", path.to_string_lossy()))?;
    eprintln!("fake-cri: serving {}", server.endpoint());
    tokio::select! {
        _ = term.recv() => eprintln!("fake-cri: SIGTERM, stopping"),
        r = tokio::signal::ctrl_c() => {
            r.context("listening for ctrl-c")?;
            eprintln!("fake-cri: interrupted, stopping");
        }
    }
    server.shutdown().await.context("stopping the server")?;
    Ok(())
}
