//! Exec, Attach and PortForward: the CRI calls hand out URLs of the shim's streaming server
//! ([`mk_streaming`]); the sessions behind them are Docker execs, Docker attaches, and TCP
//! connections made inside the sandbox's network namespace (as dockershim did with `nsenter`,
//! without the external tools: a short-lived thread enters the namespace, connects, and exits).

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{AttachContainerOptions, ResizeContainerTTYOptions};
use futures::{Stream, StreamExt};
use k8s_cri::v1 as api;
use mk_streaming::{StreamingRuntime, StreamingServer, Streams, TerminalSize};
use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream};

use crate::error::OpError;
use crate::{DockerShim, Inner};

/// The runtime side of the streaming server. It holds the shim weakly: the shim owns the server.
pub(crate) struct DockerStreams {
    shim: Weak<Inner>,
}

impl DockerStreams {
    pub(crate) fn new(shim: Weak<Inner>) -> Self {
        Self { shim }
    }

    fn shim(&self) -> Result<DockerShim, StreamError> {
        self.shim
            .upgrade()
            .map(|inner| DockerShim { inner })
            .ok_or_else(|| StreamError("the docker CRI shim is shutting down".into()))
    }
}

/// Why a session failed; its text reaches the client on the error stream.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StreamError(String);

impl From<OpError> for StreamError {
    fn from(e: OpError) -> Self {
        Self(e.to_string())
    }
}

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

impl DockerShim {
    /// The Docker ID of a running container named by its CRI ID.
    async fn running_container(&self, container_id: &str) -> Result<String, OpError> {
        let (inspect, _) = self
            .inspect_cri_container(container_id)
            .await?
            .ok_or_else(|| OpError::NotFound(format!("container {container_id} not found")))?;
        if !crate::sandbox::is_running(&inspect) {
            return Err(OpError::FailedPrecondition(format!(
                "container {container_id} is not running"
            )));
        }
        Ok(inspect.id.unwrap_or_else(|| container_id.to_owned()))
    }

    fn streaming_server(&self) -> Result<&StreamingServer, OpError> {
        self.inner.streaming.get().ok_or_else(|| {
            OpError::FailedPrecondition("the streaming server is not running".into())
        })
    }

    pub(crate) async fn exec(&self, req: api::ExecRequest) -> Result<api::ExecResponse, OpError> {
        self.running_container(&req.container_id).await?;
        self.streaming_server()?
            .get_exec(&req)
            .map_err(|e| OpError::InvalidArgument(e.to_string()))
    }

    pub(crate) async fn attach(
        &self,
        req: api::AttachRequest,
    ) -> Result<api::AttachResponse, OpError> {
        self.running_container(&req.container_id).await?;
        self.streaming_server()?
            .get_attach(&req)
            .map_err(|e| OpError::InvalidArgument(e.to_string()))
    }

    pub(crate) async fn port_forward(
        &self,
        req: api::PortForwardRequest,
    ) -> Result<api::PortForwardResponse, OpError> {
        self.sandbox_pid(&req.pod_sandbox_id).await?;
        self.streaming_server()?
            .get_port_forward(&req)
            .map_err(|e| OpError::InvalidArgument(e.to_string()))
    }

    /// The pid of a running sandbox's pause container (the owner of its network namespace).
    async fn sandbox_pid(&self, sandbox_id: &str) -> Result<i64, OpError> {
        let (inspect, _) = self
            .inspect_sandbox(sandbox_id)
            .await?
            .ok_or_else(|| OpError::NotFound(format!("pod sandbox {sandbox_id} not found")))?;
        let pid = inspect.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
        if !crate::sandbox::is_running(&inspect) || pid <= 0 {
            return Err(OpError::FailedPrecondition(format!(
                "pod sandbox {sandbox_id} is not running"
            )));
        }
        Ok(pid)
    }
}

impl StreamingRuntime for DockerStreams {
    type Error = StreamError;

    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        streams: Streams,
    ) -> Result<i32, StreamError> {
        let shim = self.shim()?;
        let id = shim.running_container(container_id).await?;
        let docker = shim.docker().clone();
        let exec = docker
            .create_exec(
                &id,
                CreateExecOptions::<String> {
                    attach_stdin: Some(streams.stdin.is_some()),
                    attach_stdout: Some(streams.stdout.is_some()),
                    attach_stderr: Some(streams.stderr.is_some()),
                    tty: Some(streams.tty),
                    cmd: Some(cmd.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| StreamError(format!("creating an exec in container {id}: {e}")))?;
        let started = docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: streams.tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| StreamError(format!("starting exec in container {id}: {e}")))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(StreamError("docker started the exec detached".into()));
        };
        let exec_id = exec.id.clone();
        let resize_docker = docker.clone();
        relay(output, input, streams, move |size| {
            let docker = resize_docker.clone();
            let exec_id = exec_id.clone();
            async move {
                let options = ResizeExecOptions {
                    height: size.height,
                    width: size.width,
                };
                if let Err(e) = docker.resize_exec(&exec_id, options).await {
                    tracing::debug!(error = %e, "resizing an exec's terminal failed");
                }
            }
        })
        .await;
        Ok(shim.exec_exit_code(&exec.id).await?)
    }

    async fn attach(&self, container_id: &str, streams: Streams) -> Result<(), StreamError> {
        let shim = self.shim()?;
        let id = shim.running_container(container_id).await?;
        let docker = shim.docker().clone();
        let attached = docker
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stdin: streams.stdin.is_some(),
                    stdout: streams.stdout.is_some(),
                    stderr: streams.stderr.is_some(),
                    stream: true,
                    logs: false,
                    detach_keys: None,
                }),
            )
            .await
            .map_err(|e| StreamError(format!("attaching to container {id}: {e}")))?;
        let container = id.clone();
        relay(attached.output, attached.input, streams, move |size| {
            let docker = docker.clone();
            let container = container.clone();
            async move {
                let options = ResizeContainerTTYOptions {
                    h: i32::from(size.height),
                    w: i32::from(size.width),
                };
                if let Err(e) = docker.resize_container_tty(&container, options).await {
                    tracing::debug!(error = %e, "resizing a container's terminal failed");
                }
            }
        })
        .await;
        Ok(())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: DuplexStream,
    ) -> Result<(), StreamError> {
        let shim = self.shim()?;
        let pid = shim.sandbox_pid(pod_sandbox_id).await?;
        let mut tcp = connect_in_netns(pid, port).await.map_err(|e| {
            StreamError(format!(
                "failed to connect to localhost:{port} inside the network namespace of pod sandbox {pod_sandbox_id}: {e}"
            ))
        })?;
        // Copies both ways; each side's EOF half-closes the other.
        match tokio::io::copy_bidirectional(&mut tcp, &mut stream).await {
            Ok(_) => Ok(()),
            // The client leaving mid-way is the usual end of a forwarded connection.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(StreamError(format!("forwarding port {port}: {e}"))),
        }
    }
}

/// Copies the client's stdin into Docker and Docker's output to the client's pipes until the
/// output ends (the process exited, or the client stopped reading); resizes go to `resize`.
async fn relay<F, Fut>(mut output: Output, mut input: Input, streams: Streams, resize: F)
where
    F: Fn(TerminalSize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let Streams {
        stdin,
        mut stdout,
        mut stderr,
        resize: sizes,
        tty,
    } = streams;
    let stdin_task = stdin.map(|mut stdin| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
            if tty {
                // On a terminal, end of input is ^D in the stream, and Docker would cut the
                // output off at a half-close: keep the input open until the session ends.
                std::future::pending::<()>().await;
            }
            // Docker closes the process's stdin when the attach/exec input half-closes.
            let _ = input.shutdown().await;
        })
    });
    let resize_task = sizes.map(|mut sizes| {
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                resize(size).await;
            }
        })
    });
    while let Some(item) = output.next().await {
        let (pipe, message) = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                (&mut stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => (&mut stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "reading docker stream output failed");
                break;
            }
        };
        // A TTY session's stderr is its stdout.
        let pipe = match pipe {
            Some(pipe) => Some(pipe),
            None => stdout.as_mut(),
        };
        if let Some(pipe) = pipe
            && pipe.write_all(&message).await.is_err()
        {
            // The client left.
            break;
        }
    }
    for task in [stdin_task, resize_task].into_iter().flatten() {
        task.abort();
    }
}

/// How long a connection inside a pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on localhost in the network namespace of `pid` (IPv4, then IPv6, as
/// kubelet's port-forwarding does). The connect happens on a thread of its own that enters the
/// namespace and then ends, so no pooled thread is ever left in a pod's namespace.
async fn connect_in_netns(pid: i64, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let result = nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|()| {
                    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                    std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT)
                        .or_else(|_| std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT))
                })
                .and_then(|tcp| tcp.set_nonblocking(true).map(|()| tcp));
            let _ = tx.send(result);
        })?;
    let tcp = rx
        .await
        .map_err(|_| std::io::Error::other("the namespace thread died"))??;
    tokio::net::TcpStream::from_std(tcp)
}

/// Starts the streaming server of `shim` (once).
pub(crate) async fn start(shim: &Arc<Inner>) -> Result<(), mk_streaming::StreamingError> {
    let runtime = Arc::new(DockerStreams::new(Arc::downgrade(shim)));
    let server = StreamingServer::start(shim.config.streaming.clone(), runtime).await?;
    // A second start keeps the first server.
    let _ = shim.streaming.set(server);
    Ok(())
}
