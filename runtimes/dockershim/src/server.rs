//! Serving a [`DockerShim`] on a unix socket.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

use crate::{DockerShim, DockerShimConfig, DockerShimError};

/// Largest message accepted or sent (kubelet's and containerd's 16 MiB).
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// How long [`ServerHandle::shutdown`] lets in-flight calls finish before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type ServeTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Connects to dockerd ([`DockerShim::connect`]), resumes copying the output of existing
/// containers into their CRI log files ([`DockerShim::resume_logs`]) and serves the CRI
/// RuntimeService and ImageService on a unix socket at `listen` (a path; `unix://` is stripped).
/// Must be called from within a tokio runtime; the server runs on it until the handle is shut
/// down or dropped.
pub async fn serve(
    listen: impl AsRef<Path>,
    config: DockerShimConfig,
) -> Result<ServerHandle, DockerShimError> {
    let shim = DockerShim::connect(config).await?;
    let resumed = shim.resume_logs().await;
    match resumed {
        Ok(n) => tracing::debug!(containers = n, "resumed copying container logs"),
        Err(e) => tracing::warn!(error = %e, "could not resume copying container logs"),
    }
    shim.serve_unix(listen)
}

impl DockerShim {
    /// The RuntimeService of this shim, for serving it some other way.
    pub fn runtime_service(&self) -> RuntimeServiceServer<DockerShim> {
        RuntimeServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The ImageService of this shim, for serving it some other way.
    pub fn image_service(&self) -> ImageServiceServer<DockerShim> {
        ImageServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Serves both CRI services on a unix socket at `listen` until the returned handle is shut
    /// down or dropped. A stale socket file is replaced and missing parent directories are
    /// created. Must be called from within a tokio runtime.
    pub fn serve_unix(&self, listen: impl AsRef<Path>) -> Result<ServerHandle, DockerShimError> {
        let path = crate::socket_path(&listen.as_ref().to_string_lossy())?;
        tokio::runtime::Handle::try_current().map_err(|_| DockerShimError::NoRuntime)?;
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| DockerShimError::Io {
                action,
                path,
                source,
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io("creating the directory of"))?;
        }
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing the stale socket")(err));
            }
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(io("binding"))?;
        let identity = socket_identity(&path);
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(self.runtime_service())
            .add_service(self.image_service());
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            async move {
                // A dropped sender means the handle is gone: shut down as well.
                let _ = stopped.await;
            },
        ));
        tracing::info!(
            socket = %path.display(),
            docker = %self.config().docker_endpoint,
            api_version = %self.api_version(),
            "docker CRI shim serving"
        );
        Ok(ServerHandle {
            shim: self.clone(),
            path,
            identity,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// A running CRI server. Shutting it down (or dropping it) stops accepting connections, closes
/// the existing ones gracefully, stops the log followers and removes the socket file. Containers
/// keep running in Docker; a new server adopts them.
#[derive(Debug)]
pub struct ServerHandle {
    shim: DockerShim,
    path: PathBuf,
    identity: Option<(u64, u64)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<ServeTask>,
}

impl ServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket as a CRI endpoint: `unix:///path/to/socket`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// The shim being served.
    pub fn shim(&self) -> &DockerShim {
        &self.shim
    }

    /// Stops the server and waits (up to 5 s) for in-flight calls to finish and connections to
    /// close; calls still running after that are abandoned.
    pub async fn shutdown(mut self) -> Result<(), DockerShimError> {
        self.signal_stop();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(joined) => joined?.map_err(DockerShimError::Serve),
            Err(_) => {
                tracing::warn!(socket = %self.path.display(), "docker CRI shim did not drain in time");
                task.abort();
                Ok(())
            }
        }
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            self.shim.stop_log_followers();
            // Only remove the socket if it is still the one we bound (not a successor's).
            if self.identity.is_some() && socket_identity(&self.path) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for ServerHandle {
    /// Signals the server to stop and removes the socket; the server drains in the background.
    fn drop(&mut self) {
        self.signal_stop();
    }
}
