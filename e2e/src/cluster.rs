//! The API server the cluster tests talk to: the cluster `KUBECONFIG` names when it is set (the same
//! tests then run against a real cluster), otherwise a stand-in API server started in-process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube_standin::{Standin, StandinHandle, StandinOptions};

pub struct Cluster {
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    standin: Option<StandinHandle>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Connects to `KUBECONFIG`'s cluster, or starts a stand-in on a free loopback port.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
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
                standin: None,
                _dir: dir,
            });
        }
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
            standin: Some(standin),
            _dir: dir,
        })
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
