//! The API server the cluster tests talk to, in this order:
//! - the real control plane `e2e/scripts/controlplane-up.sh` started, when `MK_E2E_CONTROLPLANE` names
//!   its state directory (what `e2e/run-tests.sh` does): the tests act as its admin, and each agent
//!   joins as a node would (its own `system:node:<name>` identity, so the Node authorizer and
//!   NodeRestriction apply to everything it does);
//! - the cluster `KUBECONFIG` names, when it is set (the agent then uses that kubeconfig too);
//! - otherwise a stand-in API server started in-process, which the tests can also compact and
//!   restart (fault injection a real API server does not offer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_standin::{Standin, StandinHandle, StandinOptions};

/// The environment variable naming a `controlplane-up.sh` state directory.
pub const CONTROLPLANE_VAR: &str = "MK_E2E_CONTROLPLANE";

/// A control plane started by `controlplane-up.sh`, as its `controlplane.env` describes it.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub ca_cert: PathBuf,
}

impl ControlPlane {
    /// The control plane `MK_E2E_CONTROLPLANE` names, if it is set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(CONTROLPLANE_VAR) {
            Ok(dir) if !dir.is_empty() => Self::read(Path::new(&dir)).map(Some),
            _ => Ok(None),
        }
    }

    fn read(dir: &Path) -> Result<Self> {
        let file = dir.join("controlplane.env");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "reading {} ({CONTROLPLANE_VAR} must name a directory controlplane-up.sh set up)",
                file.display()
            )
        })?;
        let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let var = |name: &str| {
            vars.get(name)
                .map(PathBuf::from)
                .with_context(|| format!("{} lacks {name}", file.display()))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            admin_kubeconfig: var("ADMIN_KUBECONFIG")?,
            bootstrap_kubeconfig: var("BOOTSTRAP_KUBECONFIG")?,
            kubectl: var("KUBECTL")?,
            ca_cert: var("CA_CERT")?,
        })
    }
}

/// How an agent joins the cluster.
#[derive(Debug, Clone)]
pub enum Join {
    /// With this kubeconfig (the stand-in's, or `KUBECONFIG`'s).
    Kubeconfig(PathBuf),
    /// As a node of the real control plane, the way kubeadm joins one: the agent starts with the
    /// cluster's bootstrap kubeconfig (a bootstrap token), gets its `system:node:<name>` client
    /// certificate through a CertificateSigningRequest the controller-manager approves and signs,
    /// and writes `kubeconfig` to use it; `client_ca` verifies the API server's client certificate
    /// on the kubelet port. The harness removes the Node (as the admin) when the agent is dropped:
    /// dead nodes left behind would put the cluster's zone into disruption mode, where the node
    /// lifecycle controller stops tainting and evicting.
    Node {
        kubeconfig: PathBuf,
        bootstrap_kubeconfig: PathBuf,
        client_ca: PathBuf,
        control_plane: ControlPlane,
    },
}

pub struct Cluster {
    pub client: kube::Client,
    /// The tests' (administrator's) kubeconfig.
    pub kubeconfig: PathBuf,
    pub control_plane: Option<ControlPlane>,
    standin: Option<StandinHandle>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Connects to the real control plane of `MK_E2E_CONTROLPLANE`, or to `KUBECONFIG`'s cluster, or
    /// starts a stand-in on a free loopback port.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        if let Some(control_plane) = ControlPlane::from_env()? {
            let kubeconfig = control_plane.admin_kubeconfig.clone();
            let config = Kubeconfig::read_from(&kubeconfig)?;
            let config =
                kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
            return Ok(Self {
                client: kube::Client::try_from(config)?,
                kubeconfig,
                control_plane: Some(control_plane),
                standin: None,
                _dir: dir,
            });
        }
        if let Ok(path) = std::env::var("KUBECONFIG")
            && !path.is_empty()
        {
            let kubeconfig = PathBuf::from(&path);
            let client = kube::Client::try_default()
                .await
                .context("connecting with KUBECONFIG")?;
            return Ok(Self {
                client,
                kubeconfig,
                control_plane: None,
                standin: None,
                _dir: dir,
            });
        }
        Self::start_standin_in(dir).await
    }

    /// Always a stand-in, for the tests that need its fault injection ([`Cluster::restart_api`]).
    pub async fn start_standin() -> Result<Self> {
        Self::start_standin_in(tempfile::tempdir()?).await
    }

    async fn start_standin_in(dir: tempfile::TempDir) -> Result<Self> {
        let options = StandinOptions {
            bookmark_interval: Duration::from_secs(1),
            service_account_admission: false,
            ..Default::default()
        };
        let standin = Standin::start("127.0.0.1:0", options).await?;
        let kubeconfig = dir.path().join("kubeconfig");
        standin.write_kubeconfig(&kubeconfig)?;
        let config = kube::Config::new(standin.url().parse()?);
        let client = kube::Client::try_from(config)?;
        Ok(Self {
            client,
            kubeconfig,
            control_plane: None,
            standin: Some(standin),
            _dir: dir,
        })
    }

    /// How the agent of node `node`, whose files live in `dir`, joins this cluster.
    pub fn join(&self, dir: &Path) -> Join {
        match &self.control_plane {
            Some(cp) => Join::Node {
                kubeconfig: dir.join("kubelet.kubeconfig"),
                bootstrap_kubeconfig: cp.bootstrap_kubeconfig.clone(),
                client_ca: cp.ca_cert.clone(),
                control_plane: cp.clone(),
            },
            None => Join::Kubeconfig(self.kubeconfig.clone()),
        }
    }

    /// Runs the control plane's kubectl as its admin; returns its stdout, or fails with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let Some(cp) = &self.control_plane else {
            bail!("kubectl needs the real control plane ({CONTROLPLANE_VAR})");
        };
        let out = std::process::Command::new(&cp.kubectl)
            .arg("--kubeconfig")
            .arg(&cp.admin_kubeconfig)
            .args(args)
            .output()
            .with_context(|| format!("running {}", cp.kubectl.display()))?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// True when the tests run against the stand-in (which they can compact and restart).
    pub fn is_standin(&self) -> bool {
        self.standin.is_some()
    }

    /// Forgets the stand-in's watch history: a watch resumed from an older version gets 410 Gone, so the
    /// agent must relist (connected watches keep streaming, as on etcd).
    pub fn compact(&self) {
        if let Some(s) = &self.standin {
            s.compact();
        }
    }

    /// Takes the stand-in down, lets `while_down` write through a second API server over the same
    /// storage (as another replica would while this one restarts), compacts the history, and brings the
    /// stand-in back on the same address. Clients' watches end, and resuming them gets 410 Gone.
    /// Returns false on a real cluster, where it does nothing.
    pub async fn restart_api<F, Fut>(&mut self, while_down: F) -> Result<bool>
    where
        F: FnOnce(kube::Client) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let Some(standin) = self.standin.take() else {
            return Ok(false);
        };
        let (addr, store, options) = standin.stop().await;
        let replica =
            Standin::start_with_store("127.0.0.1:0".parse()?, store.clone(), options.clone())
                .await?;
        let replica_client = kube::Client::try_from(kube::Config::new(replica.url().parse()?))?;
        let written = while_down(replica_client).await;
        replica.compact();
        replica.shutdown().await;
        self.standin = Some(Standin::start_with_store(addr, store, options).await?);
        written?;
        Ok(true)
    }

    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates a pod bound to `node` (as the scheduler would bind it).
    pub async fn create_pod(&self, namespace: &str, mut pod: Pod, node: &str) -> Result<Pod> {
        pod.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
        Ok(self
            .pods(namespace)
            .create(&PostParams::default(), &pod)
            .await?)
    }

    /// Polls a pod until `check` returns Some; fails after `timeout` with the last pod seen.
    pub async fn wait_pod<T>(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        check: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        self.wait_pod_every(namespace, name, timeout, crate::periods::POLL, check)
            .await
    }

    /// [`Cluster::wait_pod`] polling every [`crate::periods::TRANSIENT_POLL`]: for checks that
    /// must see a state the agent reports only for a while (they record what they saw on each call).
    pub async fn wait_pod_closely<T>(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        check: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        self.wait_pod_every(
            namespace,
            name,
            timeout,
            crate::periods::TRANSIENT_POLL,
            check,
        )
        .await
    }

    async fn wait_pod_every<T>(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        poll: Duration,
        mut check: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(Some(pod)) = self.pods(namespace).get_opt(name).await {
                if let Some(v) = check(&pod) {
                    return Ok(v);
                }
                last = Some(pod);
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {namespace}/{name} did not reach the expected state within {timeout:?}; last seen: {}",
                    last.map(|p| serde_json::to_string_pretty(&p.status).unwrap_or_default())
                        .unwrap_or_else(|| "(absent)".into())
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Waits until the pod is gone from the API; returns how long that took.
    pub async fn wait_pod_deleted(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if self.pods(namespace).get_opt(name).await?.is_none() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("pod {namespace}/{name} still present after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes a pod as `kubectl delete` does (graceful).
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        self.pods(namespace)
            .delete(name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// A pod running busybox `script`, with restart policy and grace period.
pub fn pod(name: &str, restart_policy: &str, grace: i64, script: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "main", "image": crate::BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]}]
        }
    }))
    .unwrap_or_default()
}
