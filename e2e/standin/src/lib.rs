//! A stand-in Kubernetes API server for end-to-end tests of the node agent.
//!
//! It serves the core/v1 resources a kubelet uses (pods, nodes, namespaces, configmaps,
//! secrets, serviceaccounts and their tokens, events, services, endpoints) plus
//! `events.k8s.io/v1` events and `coordination.k8s.io/v1` leases, from memory, with the
//! semantics of kube-apiserver that clients depend on: one global resourceVersion, list
//! pagination and selectors, watches from a version with bookmarks and streaming lists,
//! `410 Gone` after compaction, optimistic concurrency, graceful pod deletion, finalizers,
//! status subresources, and JSON / merge / strategic-merge patches.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_standin::Error> {
//! let server = kube_standin::Standin::start("127.0.0.1:0", kube_standin::StandinOptions::default()).await?;
//! println!("{}", server.url());
//! server.compact(); // every older resourceVersion is now "too old" (410)
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod discovery;
pub mod error;
pub mod kinds;
pub mod openapi;
pub mod patch;
pub mod proto;
pub mod resources;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, Error};
pub use server::AppState;
pub use store::{Store, StoreConfig};

/// Options of the stand-in.
#[derive(Debug, Clone)]
pub struct StandinOptions {
    /// How often watches that allow bookmarks get a BOOKMARK event.
    pub bookmark_interval: Duration,
    /// How many events are retained for watches and exact lists before compaction.
    pub history_size: usize,
    /// Run ServiceAccount admission on pods: default `serviceAccountName`, require the
    /// account to exist, and inject the projected `kube-api-access-*` token volume.
    pub service_account_admission: bool,
}

impl Default for StandinOptions {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(5),
            history_size: 10_000,
            service_account_admission: true,
        }
    }
}

/// Entry point.
#[derive(Debug)]
pub struct Standin;

impl Standin {
    /// The router and its state, without a listener (for `tower::ServiceExt::oneshot`).
    pub fn app(options: &StandinOptions, server_address: &str) -> (axum::Router, AppState) {
        let store = Arc::new(Store::new(StoreConfig {
            history_size: options.history_size.max(1),
            service_account_admission: options.service_account_admission,
        }));
        let state = AppState {
            store,
            bookmark_interval: options.bookmark_interval,
            server_address: server_address.to_string(),
            shutdown: CancellationToken::new(),
        };
        (server::router(state.clone()), state)
    }

    /// Bind `addr` (port 0 picks a free port) and serve in the background.
    pub async fn start(
        addr: impl ToSocketAddrs,
        options: StandinOptions,
    ) -> Result<StandinHandle, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                addr: "listen address".into(),
                source,
            })?;
        let local = listener.local_addr()?;
        let (router, state) = Self::app(&options, &local.to_string());
        Ok(Self::serve(listener, router, state, options))
    }

    /// Serves `store` on `addr` (retrying while the address is still in use): a second API server over
    /// the same storage, or the same one after a restart.
    pub async fn start_with_store(
        addr: SocketAddr,
        store: Arc<Store>,
        options: StandinOptions,
    ) -> Result<StandinHandle, Error> {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(source) => {
                    return Err(Error::Bind {
                        addr: addr.to_string(),
                        source,
                    });
                }
            }
        };
        let local = listener.local_addr()?;
        let state = AppState {
            store,
            bookmark_interval: options.bookmark_interval,
            server_address: local.to_string(),
            shutdown: CancellationToken::new(),
        };
        let router = server::router(state.clone());
        Ok(Self::serve(listener, router, state, options))
    }

    fn serve(
        listener: TcpListener,
        router: axum::Router,
        state: AppState,
        options: StandinOptions,
    ) -> StandinHandle {
        let local = listener.local_addr().ok();
        let token = state.shutdown.clone();
        let wait = token.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                wait.cancelled().await;
            });
            if let Err(e) = serve.await {
                tracing::error!("serving: {e}");
            }
        });
        StandinHandle {
            addr: local.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            store: state.store,
            options,
            shutdown: token,
            task: Some(task),
        }
    }
}

/// A running stand-in. Dropping it stops the server (without waiting).
#[derive(Debug)]
pub struct StandinHandle {
    addr: SocketAddr,
    store: Arc<Store>,
    options: StandinOptions,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl StandinHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store, for direct inspection.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.current_rv()
    }

    /// Forget the event history: watches, exact lists and continue tokens from any older
    /// version now get `410 Gone` (a watch gets an ERROR event with a 410 Status).
    pub fn compact(&self) {
        self.store.compact();
    }

    /// A kubeconfig naming this server (YAML).
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// Write [`Self::kubeconfig`] to a file.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Restarts the server on the same address with the same stored objects, as an API server restart
    /// over a persistent etcd: every connection and watch ends, and clients must reconnect.
    pub async fn restart(self) -> Result<StandinHandle, Error> {
        let (addr, store, options) = self.stop().await;
        Standin::start_with_store(addr, store, options).await
    }

    /// Stops serving and hands back what a new server needs to take over: the address, the stored
    /// objects and the options.
    pub async fn stop(mut self) -> (SocketAddr, Arc<Store>, StandinOptions) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        (self.addr, self.store.clone(), self.options.clone())
    }

    /// Stop serving: end watch streams and wait for the server task.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!("server task: {e}");
        }
    }
}

impl Drop for StandinHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A kubeconfig for a plain-HTTP server at `url`, with context `kube-standin`.
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-standin
  cluster:
    server: {url}
contexts:
- name: kube-standin
  context:
    cluster: kube-standin
    user: kube-standin
    namespace: default
current-context: kube-standin
users:
- name: kube-standin
  user: {{}}
preferences: {{}}
"
    )
}
