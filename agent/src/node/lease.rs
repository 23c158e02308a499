//! The node's heartbeat Lease (`coordination.k8s.io/v1`, `kube-node-lease/<node>`), kept as
//! kubelet's `nodelease` controller keeps it: renewed every quarter of the lease duration with an
//! optimistic-concurrency PUT of the last lease seen (a conflict re-reads it), created when absent
//! (only once the Node exists, since it carries the Node as owner), with back-off from 200 ms
//! doubling to 7 s while the API server fails. It runs as its own task, so a slow API server never
//! delays node status updates, and vice versa.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{NodeError, call};

/// Where node leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// kubelet's `nodeLeaseRenewIntervalFraction`.
pub const RENEW_INTERVAL_FRACTION: f64 = 0.25;
/// `maxUpdateRetries` of the lease controller.
const MAX_UPDATE_RETRIES: usize = 5;
/// `maxBackoff` of the lease controller.
const MAX_BACKOFF: Duration = Duration::from_secs(7);

/// How often the lease is renewed: a quarter of its duration (10 s for the default 40 s).
pub fn renew_interval(lease_duration_seconds: i32) -> Duration {
    Duration::from_secs_f64(f64::from(lease_duration_seconds.max(1)) * RENEW_INTERVAL_FRACTION)
}

/// The owner reference kubelet puts on its lease: the Node, once its UID is known.
pub fn node_owner_reference(node: &Node) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.metadata.name.clone()?,
        uid: node.metadata.uid.clone()?,
        ..Default::default()
    })
}

/// `newLease`: a fresh lease (no `base`) or a copy of `base`, renewed at `now`; the owner is set
/// when the lease has none and one is known.
pub fn new_lease(
    base: Option<&Lease>,
    node_name: &str,
    lease_duration_seconds: i32,
    now: Timestamp,
    owner: Option<OwnerReference>,
) -> Lease {
    let mut lease = match base {
        Some(base) => base.clone(),
        None => Lease {
            metadata: ObjectMeta {
                name: Some(node_name.to_string()),
                namespace: Some(LEASE_NAMESPACE.to_string()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node_name.to_string()),
                lease_duration_seconds: Some(lease_duration_seconds),
                ..Default::default()
            }),
        },
    };
    lease.spec.get_or_insert_default().renew_time = Some(MicroTime(now));
    if lease
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(Vec::is_empty)
        && let Some(owner) = owner
    {
        lease.metadata.owner_references = Some(vec![owner]);
    }
    lease
}

/// Keeps the lease renewed until cancelled.
pub struct LeaseController {
    api: Api<Lease>,
    node_name: String,
    lease_duration_seconds: i32,
    renew_interval: Duration,
    request_timeout: Duration,
    node: watch::Receiver<Option<Node>>,
    latest: Option<Lease>,
}

enum Ensured {
    Created(Lease),
    Existing(Lease),
    /// The Node is not known yet: nothing created this round.
    NoOwner,
}

impl LeaseController {
    pub fn new(
        client: kube::Client,
        node_name: &str,
        lease_duration_seconds: i32,
        request_timeout: Duration,
        node: watch::Receiver<Option<Node>>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, LEASE_NAMESPACE),
            node_name: node_name.to_string(),
            lease_duration_seconds,
            renew_interval: renew_interval(lease_duration_seconds),
            request_timeout,
            node,
            latest: None,
        }
    }

    fn owner(&self) -> Option<OwnerReference> {
        self.node.borrow().as_ref().and_then(node_owner_reference)
    }

    fn renewed(&self, base: Option<&Lease>) -> Lease {
        new_lease(
            base,
            &self.node_name,
            self.lease_duration_seconds,
            Timestamp::now(),
            self.owner(),
        )
    }

    /// Renews every renew interval until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.renew_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Until the lease exists, the Node's appearance (its UID) is worth an early try.
            let waiting_for_node = self.latest.is_none() && self.owner().is_none();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => self.sync(&cancel).await,
                Ok(()) = self.node.changed(), if waiting_for_node => self.sync(&cancel).await,
            }
        }
    }

    async fn sync(&mut self, cancel: &CancellationToken) {
        if let Some(latest) = self.latest.clone() {
            // Assume nobody else touched the lease and skip the GET, as kubelet does.
            match self.retry_update(latest, cancel).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::info!(error = %e, "failed to update lease using latest lease, fallback to ensure lease");
                }
            }
        }
        match self.backoff_ensure(cancel).await {
            Some(Ensured::Created(lease)) => self.latest = Some(lease),
            Some(Ensured::Existing(lease)) => {
                self.latest = Some(lease.clone());
                if let Err(e) = self.retry_update(lease, cancel).await {
                    tracing::error!(error = %e, interval = ?self.renew_interval, "will retry updating lease");
                }
            }
            Some(Ensured::NoOwner) | None => {}
        }
    }

    async fn ensure(&self) -> Result<Ensured, NodeError> {
        let existing = call(
            "get lease",
            self.request_timeout,
            self.api.get_opt(&self.node_name),
        )
        .await?;
        if let Some(lease) = existing {
            return Ok(Ensured::Existing(lease));
        }
        if self.owner().is_none() {
            tracing::debug!(node = %self.node_name, "node not known yet; not creating its lease");
            return Ok(Ensured::NoOwner);
        }
        let lease = self.renewed(None);
        let created = call(
            "create lease",
            self.request_timeout,
            self.api.create(&PostParams::default(), &lease),
        )
        .await?;
        tracing::info!(node = %self.node_name, "created node lease");
        Ok(Ensured::Created(created))
    }

    /// `backoffEnsureLease`: retries with doubling waits until the lease is read or created.
    /// `None` when cancelled.
    async fn backoff_ensure(&self, cancel: &CancellationToken) -> Option<Ensured> {
        let mut sleep = Duration::from_millis(100);
        loop {
            match self.ensure().await {
                Ok(ensured) => return Some(ensured),
                Err(e) => {
                    sleep = (sleep * 2).min(MAX_BACKOFF);
                    tracing::error!(error = %e, interval = ?sleep, "failed to ensure lease exists, will retry");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(sleep) => {}
                    }
                }
            }
        }
    }

    /// `retryUpdateLease`: up to five PUTs; a conflict re-reads the lease first.
    async fn retry_update(
        &mut self,
        mut base: Lease,
        cancel: &CancellationToken,
    ) -> Result<(), NodeError> {
        let mut last_error = None;
        for _ in 0..MAX_UPDATE_RETRIES {
            let lease = self.renewed(Some(&base));
            match call(
                "update lease",
                self.request_timeout,
                self.api
                    .replace(&self.node_name, &PostParams::default(), &lease),
            )
            .await
            {
                Ok(updated) => {
                    self.latest = Some(updated);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "failed to update lease");
                    let conflict = e.is_conflict();
                    last_error = Some(e);
                    if conflict {
                        match self.backoff_ensure(cancel).await {
                            Some(Ensured::Created(lease) | Ensured::Existing(lease)) => {
                                base = lease
                            }
                            Some(Ensured::NoOwner) | None => break,
                        }
                    }
                }
            }
        }
        Err(last_error.unwrap_or(NodeError::Cancelled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uid: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                uid: uid.map(str::to_string),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn renews_at_a_quarter_of_the_duration() {
        assert_eq!(renew_interval(40), Duration::from_secs(10));
        assert_eq!(renew_interval(1), Duration::from_millis(250));
        assert_eq!(renew_interval(0), Duration::from_millis(250));
    }

    #[test]
    fn fresh_lease_names_holder_duration_and_owner() {
        let now = Timestamp::from_second(1_700_000_000).expect("ts");
        let owner = node_owner_reference(&node(Some("uid-1")));
        let lease = new_lease(None, "node-a", 40, now, owner);
        assert_eq!(lease.metadata.name.as_deref(), Some("node-a"));
        assert_eq!(lease.metadata.namespace.as_deref(), Some(LEASE_NAMESPACE));
        let spec = lease.spec.clone().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        let refs = lease.metadata.owner_references.expect("owner");
        assert_eq!(
            (
                refs[0].api_version.as_str(),
                refs[0].kind.as_str(),
                refs[0].name.as_str(),
                refs[0].uid.as_str()
            ),
            ("v1", "Node", "node-a", "uid-1")
        );
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(
            json["renewTime"], "2023-11-14T22:13:20.000000Z",
            "MicroTime keeps microseconds"
        );
    }

    #[test]
    fn renewal_keeps_the_base_and_adds_a_missing_owner() {
        let t0 = Timestamp::from_second(1_700_000_000).expect("ts");
        let t1 = Timestamp::from_second(1_700_000_010).expect("ts");
        let mut base = new_lease(None, "node-a", 40, t0, None);
        base.metadata.resource_version = Some("7".into());
        assert!(base.metadata.owner_references.is_none());
        assert!(
            node_owner_reference(&node(None)).is_none(),
            "no UID, no owner"
        );
        let renewed = new_lease(
            Some(&base),
            "node-a",
            40,
            t1,
            node_owner_reference(&node(Some("u"))),
        );
        assert_eq!(
            renewed.metadata.resource_version.as_deref(),
            Some("7"),
            "optimistic concurrency"
        );
        assert_eq!(
            renewed.spec.as_ref().and_then(|s| s.renew_time.clone()),
            Some(MicroTime(t1))
        );
        assert_eq!(
            renewed.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        let again = new_lease(
            Some(&renewed),
            "node-a",
            40,
            t1,
            node_owner_reference(&node(Some("other"))),
        );
        assert_eq!(
            again.metadata.owner_references.expect("owner")[0].uid,
            "u",
            "an existing owner is kept"
        );
    }
}
