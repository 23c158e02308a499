//! The static table of served resources.

/// Index of a resource in [`RESOURCES`].
pub type ResId = usize;

/// Which kind-specific behaviour a resource has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// core/v1 Pod.
    Pod,
    /// core/v1 Node.
    Node,
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 ConfigMap.
    ConfigMap,
    /// core/v1 Secret.
    Secret,
    /// core/v1 ServiceAccount.
    ServiceAccount,
    /// core/v1 Event.
    CoreEvent,
    /// events.k8s.io/v1 Event.
    Event,
    /// core/v1 Service.
    Service,
    /// core/v1 Endpoints.
    Endpoints,
    /// coordination.k8s.io/v1 Lease.
    Lease,
    /// certificates.k8s.io/v1 CertificateSigningRequest (with the `approval` subresource).
    CertificateSigningRequest,
}

/// Static description of one served resource.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group, `""` for core.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name used in paths.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Discovery categories.
    pub categories: &'static [&'static str],
    /// Whether a `status` subresource exists.
    pub status_subresource: bool,
    /// PUT of an absent object creates it.
    pub allow_create_on_update: bool,
    /// PUT without metadata.resourceVersion is allowed.
    pub allow_unconditional_update: bool,
    /// DELETE answers with the object (else with a `Status`).
    pub return_deleted_object: bool,
    /// Field selector labels, besides metadata.name and metadata.namespace.
    pub fields: &'static [&'static str],
    /// Kind-specific behaviour.
    pub behaviour: Behaviour,
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `PodList` etc.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `pods` or `leases.coordination.k8s.io`.
    pub fn qualified(&self) -> String {
        crate::error::qualified(self.group, self.plural)
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const EVENTS_K8S_IO_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingController",
    "reportingComponent",
    "type",
];

/// Every served resource.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        status_subresource: true,
        allow_create_on_update: false,
        allow_unconditional_update: true,
        return_deleted_object: true,
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        behaviour: Behaviour::Pod,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        status_subresource: true,
        allow_create_on_update: false,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: &["spec.unschedulable"],
        behaviour: Behaviour::Node,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        status_subresource: true,
        allow_create_on_update: false,
        allow_unconditional_update: true,
        return_deleted_object: true,
        fields: &["status.phase"],
        behaviour: Behaviour::Namespace,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        status_subresource: false,
        allow_create_on_update: false,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: &[],
        behaviour: Behaviour::ConfigMap,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status_subresource: false,
        allow_create_on_update: false,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: &["type"],
        behaviour: Behaviour::Secret,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        status_subresource: false,
        allow_create_on_update: false,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: &[],
        behaviour: Behaviour::ServiceAccount,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status_subresource: false,
        allow_create_on_update: true,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: EVENT_FIELDS,
        behaviour: Behaviour::CoreEvent,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        status_subresource: true,
        allow_create_on_update: true,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: &["spec.clusterIP", "spec.type"],
        behaviour: Behaviour::Service,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        status_subresource: false,
        allow_create_on_update: true,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: &[],
        behaviour: Behaviour::Endpoints,
    },
    ResourceDef {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status_subresource: false,
        allow_create_on_update: true,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: EVENTS_K8S_IO_FIELDS,
        behaviour: Behaviour::Event,
    },
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status_subresource: false,
        allow_create_on_update: true,
        allow_unconditional_update: false,
        return_deleted_object: false,
        fields: &[],
        behaviour: Behaviour::Lease,
    },
    ResourceDef {
        group: "certificates.k8s.io",
        version: "v1",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        kind: "CertificateSigningRequest",
        namespaced: false,
        short_names: &["csr"],
        categories: &[],
        status_subresource: true,
        allow_create_on_update: false,
        allow_unconditional_update: true,
        return_deleted_object: false,
        fields: &["spec.signerName"],
        behaviour: Behaviour::CertificateSigningRequest,
    },
];

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<ResId> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource with the given behaviour.
pub fn by_behaviour(b: Behaviour) -> ResId {
    RESOURCES
        .iter()
        .position(|r| r.behaviour == b)
        .unwrap_or_default()
}

/// The API groups served under `/apis` (group, version).
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Resource indices served under one group/version.
pub fn in_group_version(group: &str, version: &str) -> Vec<ResId> {
    RESOURCES
        .iter()
        .enumerate()
        .filter(|(_, r)| r.group == group && r.version == version)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(RESOURCES[pods].kind, "Pod");
        assert_eq!(by_behaviour(Behaviour::Pod), pods);
        let leases = find("coordination.k8s.io", "v1", "leases").unwrap();
        assert_eq!(RESOURCES[leases].qualified(), "leases.coordination.k8s.io");
        assert!(find("", "v1", "nope").is_none());
        assert_eq!(
            groups(),
            vec![
                ("events.k8s.io", "v1"),
                ("coordination.k8s.io", "v1"),
                ("certificates.k8s.io", "v1")
            ]
        );
    }
}
