//! Serving a [`DockerShim`] on a unix socket.

use std::path::Path;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use mk_cri::server::{MAX_MESSAGE_SIZE, UnixServer};

use crate::{DockerShim, DockerShimConfig, DockerShimError};

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
        let router = mk_cri::server::builder()
            .add_service(self.runtime_service())
            .add_service(self.image_service());
        let server = UnixServer::bind(&path, router)?;
        tracing::info!(
            socket = %path.display(),
            docker = %self.config().docker_endpoint,
            api_version = %self.api_version(),
            "docker CRI shim serving"
        );
        Ok(ServerHandle {
            shim: self.clone(),
            path,
            server: Some(server),
        })
    }
}

/// A running CRI server. Shutting it down (or dropping it) stops accepting connections, closes
/// the existing ones gracefully, stops the log followers and removes the socket file. Containers
/// keep running in Docker; a new server adopts them.
#[derive(Debug)]
pub struct ServerHandle {
    shim: DockerShim,
    path: std::path::PathBuf,
    /// None once shut down.
    server: Option<UnixServer>,
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
        self.shim.stop_log_followers();
        match self.server.take() {
            Some(server) => Ok(server.shutdown().await?),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    /// Stops the log followers; the server itself stops when its handle drops.
    fn drop(&mut self) {
        self.shim.stop_log_followers();
    }
}
