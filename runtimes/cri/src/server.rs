//! Serving CRI services on a unix socket: shared by every CRI server of the project (the Docker
//! adapter, the fake runtime) so they bind, replace stale sockets and shut down the same way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

pub use crate::deadline::DeadlineLayer;

/// Largest message accepted or sent (kubelet's and containerd's 16 MiB).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// How long [`UnixServer::shutdown`] lets in-flight calls finish before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a CRI server could not be started or stopped cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serving CRI: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the CRI server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The server every CRI service of the project is served by: tonic's, with [`DeadlineLayer`] so an
/// expired `grpc-timeout` is answered `DEADLINE_EXCEEDED` (tonic alone says `CANCELLED`).
pub fn builder() -> Server<Stack<DeadlineLayer, Identity>> {
    Server::builder().layer(DeadlineLayer)
}

/// A router made from [`builder`].
pub type CriRouter = Router<Stack<DeadlineLayer, Identity>>;

fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// A tonic router served on a unix socket. Shutting it down (or dropping it) stops accepting
/// connections, lets the open ones drain and removes the socket file (unless a successor bound it).
#[derive(Debug)]
pub struct UnixServer {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl UnixServer {
    /// Binds `path` (creating its directory, replacing a stale socket) and serves `router` on it
    /// in a task of the current tokio runtime.
    pub fn bind(path: &Path, router: CriRouter) -> Result<Self, ServeError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| ServeError::Io {
                action,
                path,
                source,
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io("creating the directory of"))?;
        }
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing the stale socket")(err));
            }
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(io("binding"))?;
        let identity = socket_identity(path);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            async move {
                // A dropped sender means the handle is gone: shut down as well.
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            path: path.to_path_buf(),
            identity,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket as a CRI endpoint: `unix:///path/to/socket`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Stops the server and waits (up to 5 s) for in-flight calls to finish and connections to
    /// close; calls still running after that are abandoned.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.signal_stop();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(joined) => Ok(joined??),
            Err(_) => {
                tracing::warn!(socket = %self.path.display(), "CRI server did not drain in time");
                task.abort();
                Ok(())
            }
        }
    }

    /// Stops accepting connections and removes the socket (if it is still ours).
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            if self.identity.is_some() && socket_identity(&self.path) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for UnixServer {
    /// Signals the server to stop and removes the socket; the server drains in the background.
    fn drop(&mut self) {
        self.signal_stop();
    }
}
