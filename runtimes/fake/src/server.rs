//! Serving a [`FakeRuntime`] on a unix socket.

use std::path::Path;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use mk_cri::server::{MAX_MESSAGE_SIZE, UnixServer};

use crate::{FakeError, FakeRuntime};

impl FakeRuntime {
    /// The RuntimeService of this fake, for serving it some other way.
    pub fn runtime_service(&self) -> RuntimeServiceServer<FakeRuntime> {
        RuntimeServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The ImageService of this fake, for serving it some other way.
    pub fn image_service(&self) -> ImageServiceServer<FakeRuntime> {
        ImageServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Serves both CRI services on a unix socket at `path` until the returned handle is shut down
    /// or dropped. A stale socket file at `path` is replaced and missing parent directories are
    /// created. Must be called from within a tokio runtime.
    ///
    /// The same `FakeRuntime` may be served again (on the same path or another) after the handle
    /// is gone: the state lives in the `FakeRuntime`, not in the server, which is how a runtime
    /// restart is simulated.
    pub fn serve_unix(&self, path: impl AsRef<Path>) -> Result<ServerHandle, FakeError> {
        tokio::runtime::Handle::try_current().map_err(|_| FakeError::NoRuntime)?;
        let router = mk_cri::server::builder()
            .add_service(self.runtime_service())
            .add_service(self.image_service());
        let server = UnixServer::bind(path.as_ref(), router)?;
        tracing::debug!(socket = %server.path().display(), "fake CRI runtime serving");
        Ok(ServerHandle { server })
    }
}

/// A running fake CRI server. Shutting it down (or dropping it) stops accepting connections,
/// closes the existing ones gracefully and removes the socket file.
#[derive(Debug)]
pub struct ServerHandle {
    server: UnixServer,
}

impl ServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        self.server.path()
    }

    /// The socket as a CRI endpoint: `unix:///path/to/socket`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// Stops the server and waits (up to 5 s) for in-flight calls to finish and connections to
    /// close; calls still running after that are abandoned.
    pub async fn shutdown(self) -> Result<(), FakeError> {
        Ok(self.server.shutdown().await?)
    }
}
