//! The in-memory object store: one global resourceVersion, an event history ring for watches
//! and consistent (exact-version) lists, and the write semantics of the generic registry.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::error::{ApiError, Cause};
use crate::kinds::{self, child, default_key, meta, meta_str};
use crate::patch::{self, PatchType};
use crate::resources::{Behaviour, RESOURCES, ResId, ResourceDef, by_behaviour};
use crate::selector::{FieldSelector, LabelSelector};
use crate::util;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Key = (String, String);

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One recorded change.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// The resource.
    pub res: ResId,
    /// What happened.
    pub etype: EventType,
    /// The object after the change (for deletions: the last state, with the new version).
    pub object: Arc<Value>,
    /// The object before the change.
    pub prev: Option<Arc<Value>>,
}

struct Watcher {
    res: ResId,
    tx: mpsc::UnboundedSender<Arc<Event>>,
}

/// How unknown fields in request bodies are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop silently.
    Ignore,
    /// Drop and answer a `Warning` header (the server default).
    #[default]
    Warn,
    /// Reject with 400.
    Strict,
}

/// Options common to writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOpts {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
}

/// The result of a create/update/patch.
#[derive(Debug)]
pub struct WriteResult {
    /// The object as stored (or as it would be, for dry runs).
    pub object: Arc<Value>,
    /// Whether the write created the object.
    pub created: bool,
    /// Warnings for the `Warning` header.
    pub warnings: Vec<String>,
}

/// The body of an update.
#[derive(Debug)]
pub enum UpdateBody<'a> {
    /// PUT: the full object.
    Put(Value),
    /// PATCH.
    Patch {
        /// The patch type.
        kind: PatchType,
        /// The raw patch.
        body: &'a [u8],
    },
}

/// DeleteOptions.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub rv: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// What a DELETE did.
#[derive(Debug)]
pub struct DeleteOutcome {
    /// The object (last state if removed).
    pub object: Arc<Value>,
    /// Whether the answer follows `ReturnDeletedObject` (object or `Status`), as for an
    /// actual removal or an already pending graceful deletion; else the object is answered.
    pub finalized: bool,
}

/// List parameters.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0 = none).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
}

/// Watch parameters (validated by the caller).
#[derive(Debug, Clone, Default)]
pub struct WatchQuery {
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
}

/// The start of a watch stream.
#[derive(Debug)]
pub enum WatchStart {
    /// The requested version is compacted: answer one ERROR event with a 410 Status.
    Expired(ApiError),
    /// Stream these then the live events.
    Stream(WatchStream),
}

/// The parts of a started watch.
#[derive(Debug)]
pub struct WatchStream {
    /// Objects to send as synthetic ADDED events first.
    pub initial: Vec<Arc<Value>>,
    /// Send the `k8s.io/initial-events-end` bookmark after `initial`, at this version.
    pub initial_end: Option<u64>,
    /// Recorded events after the start version.
    pub backlog: Vec<Arc<Event>>,
    /// Live events of the resource.
    pub rx: mpsc::UnboundedReceiver<Arc<Event>>,
    /// Events at or below this version are not sent.
    pub from_rv: u64,
}

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Number of events retained before the oldest are compacted.
    pub history_size: usize,
    /// Run ServiceAccount admission on pods (token volume, default service account).
    pub service_account_admission: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            history_size: 10_000,
            service_account_admission: true,
        }
    }
}

/// The store.
pub struct Store {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

struct Inner {
    cfg: StoreConfig,
    rv: u64,
    objects: Vec<BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    /// Events with `rv <= floor` are no longer retained.
    floor: u64,
    watchers: Vec<Watcher>,
    next_ip: u32,
}

/// Namespaces that exist at start.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// A fake CA certificate published as `kube-root-ca.crt` in every namespace.
pub const FAKE_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUS3RhbmRpbmZha2VjYWZvcnRlc3RzMAoGCCqGSM49BAMC\nMBUxEzARBgNVBAMMCmt1YmUtc3RhbmQwHhcNMjQwMTAxMDAwMDAwWhcNMzQwMTAx\nMDAwMDAwWjAVMRMwEQYDVQQDDAprdWJlLXN0YW5kMFkwEwYHKoZIzj0CAQYIKoZI\nzj0DAQcDQgAEc3RhbmRpbi1mYWtlLWNhLW5vdC1mb3ItdXNlLWluLXByb2R1Y3Rp\nb24tZW52aXJvbm1lbnRzLW9ubHktdGVzdHOjUzBRMB0GA1UdDgQWBBRzdGFuZGlu\nLWZha2UtY2EtMDAwMDAwMB8GA1UdIwQYMBaAFHN0YW5kaW4tZmFrZS1jYS0wMDAw\nMDAwMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAKs0c3RhbmRp\nbmZha2VjYWZvcnRlc3RzAiAgc3RhbmRpbmZha2VjYWZvcnRlc3RzMDAwMDAwMDA=\n-----END CERTIFICATE-----\n";

fn key_of(obj: &Value) -> Key {
    (
        meta_str(obj, "namespace").to_string(),
        meta_str(obj, "name").to_string(),
    )
}

fn set_rv(obj: &mut Value, rv: u64) {
    meta(obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

/// Check/default `apiVersion` and `kind` of a request body.
pub fn prepare_body(res: &ResourceDef, body: Value) -> Result<Value, ApiError> {
    let Value::Object(mut m) = body else {
        return Err(ApiError::bad_request(format!(
            "the body of the request must be a JSON object for {}",
            res.kind
        )));
    };
    let av = res.api_version();
    match m.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {}
        Some(v) if v == av => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )));
        }
    }
    match m.get("kind").and_then(Value::as_str) {
        None | Some("") => {}
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
    }
    m.insert("apiVersion".into(), Value::String(av));
    m.insert("kind".into(), Value::String(res.kind.to_string()));
    Ok(Value::Object(m))
}

fn normalize_checked(
    res: &ResourceDef,
    obj: Value,
    fv: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let (obj, unknown) = kinds::normalize(res, obj)?;
    let mut unknown: Vec<String> = unknown.into_iter().filter(|u| !u.is_empty()).collect();
    unknown.dedup();
    match fv {
        FieldValidation::Strict if !unknown.is_empty() => {
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field {u:?}"))
                .collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )))
        }
        FieldValidation::Warn => Ok((
            obj,
            unknown
                .iter()
                .map(|u| format!("unknown field {u:?}"))
                .collect(),
        )),
        _ => Ok((obj, Vec::new())),
    }
}

fn get_i64(obj: &Value, ptr: &str) -> Option<i64> {
    obj.pointer(ptr).and_then(Value::as_i64)
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

impl Store {
    /// A store holding the initial namespaces (with their default service account and
    /// `kube-root-ca.crt`) and the `kubernetes` service.
    pub fn new(cfg: StoreConfig) -> Self {
        let mut inner = Inner {
            cfg,
            rv: 0,
            objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
            history: VecDeque::new(),
            floor: 0,
            watchers: Vec::new(),
            next_ip: 1,
        };
        let ns_res = by_behaviour(Behaviour::Namespace);
        for ns in INITIAL_NAMESPACES {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            if let Err(e) = inner.create(ns_res, None, body, WriteOpts::default()) {
                tracing::error!("creating namespace {ns}: {e}");
            }
        }
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}});
        if let Err(e) = inner.create(
            by_behaviour(Behaviour::Service),
            Some("default"),
            svc,
            WriteOpts::default(),
        ) {
            tracing::error!("creating the kubernetes service: {e}");
        }
        Self {
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current (latest) resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Forget the whole event history: any version older than the current one is now
    /// "too old" (410) for watches, exact lists and continue tokens.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = inner.rv;
    }

    /// GET one object.
    pub fn get(&self, res: ResId, ns: Option<&str>, name: &str) -> Result<Arc<Value>, ApiError> {
        let inner = self.lock();
        inner.objects[res]
            .get(&(ns.unwrap_or("").to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&RESOURCES[res], name))
    }

    /// LIST.
    pub fn list(&self, res: ResId, ns: Option<&str>, q: &ListQuery) -> Result<Value, ApiError> {
        self.lock().list(res, ns, q)
    }

    /// POST (create).
    pub fn create(
        &self,
        res: ResId,
        ns: Option<&str>,
        body: Value,
        opts: WriteOpts,
    ) -> Result<WriteResult, ApiError> {
        self.lock().create(res, ns, body, opts)
    }

    /// PUT or PATCH of an object or its status.
    pub fn update(
        &self,
        res: ResId,
        ns: Option<&str>,
        name: &str,
        body: UpdateBody<'_>,
        status: bool,
        opts: WriteOpts,
    ) -> Result<WriteResult, ApiError> {
        self.lock().update(res, ns, name, body, status, opts)
    }

    /// DELETE.
    pub fn delete(
        &self,
        res: ResId,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<DeleteOutcome, ApiError> {
        let mut inner = self.lock();
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        if RESOURCES[res].behaviour == Behaviour::Namespace {
            inner.delete_namespace(name, opts)
        } else {
            inner.delete(res, key, opts)
        }
    }

    /// DELETE on a collection: delete every listed object; answers the list of them.
    pub fn delete_collection(
        &self,
        res: ResId,
        ns: Option<&str>,
        q: &ListQuery,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let mut list = inner.list(res, ns, q)?;
        let mut out = Vec::new();
        if let Some(items) = list.get("items").and_then(Value::as_array) {
            for item in items {
                let key = key_of(item);
                let r = if RESOURCES[res].behaviour == Behaviour::Namespace {
                    inner.delete_namespace(&key.1, opts)
                } else {
                    inner.delete(res, key, opts)
                };
                match r {
                    Ok(o) => out.push((*o.object).clone()),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(m) = list.as_object_mut() {
            m.insert("items".into(), Value::Array(out));
        }
        Ok(list)
    }

    /// Start a watch.
    pub fn watch(
        &self,
        res: ResId,
        ns: Option<&str>,
        q: &WatchQuery,
    ) -> Result<WatchStart, ApiError> {
        self.lock().watch(res, ns, q)
    }

    /// POST serviceaccounts/<name>/token.
    pub fn create_token(&self, ns: &str, sa: &str, body: Value) -> Result<Value, ApiError> {
        self.lock().create_token(ns, sa, body)
    }
}

impl Inner {
    // ------------------------------------------------------------ recording

    fn record(&mut self, ev: Event) {
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        while self.history.len() > self.cfg.history_size {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
        self.watchers.retain(|w| {
            if w.res == ev.res {
                w.tx.send(ev.clone()).is_ok()
            } else {
                !w.tx.is_closed()
            }
        });
    }

    fn put(&mut self, res: ResId, mut obj: Value, etype: EventType) -> Arc<Value> {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let key = key_of(&obj);
        let obj = Arc::new(obj);
        let prev = self.objects[res].insert(key, obj.clone());
        self.record(Event {
            rv: self.rv,
            res,
            etype,
            object: obj.clone(),
            prev,
        });
        obj
    }

    fn remove(&mut self, res: ResId, key: &Key) -> Option<Arc<Value>> {
        let prev = self.objects[res].remove(key)?;
        self.rv += 1;
        let mut last = (*prev).clone();
        set_rv(&mut last, self.rv);
        let last = Arc::new(last);
        self.record(Event {
            rv: self.rv,
            res,
            etype: EventType::Deleted,
            object: last.clone(),
            prev: Some(prev),
        });
        if RESOURCES[res].namespaced {
            self.maybe_finalize_namespace(&key.0);
        }
        Some(last)
    }

    /// The objects of a resource as they were at `rv`.
    fn snapshot_at(&self, res: ResId, rv: u64) -> Option<BTreeMap<Key, Arc<Value>>> {
        if rv < self.floor {
            return None;
        }
        let mut m = self.objects[res].clone();
        for ev in self.history.iter().rev() {
            if ev.rv <= rv {
                break;
            }
            if ev.res != res {
                continue;
            }
            let key = key_of(&ev.object);
            match (ev.etype, &ev.prev) {
                (EventType::Added, _) => {
                    m.remove(&key);
                }
                (_, Some(prev)) => {
                    m.insert(key, prev.clone());
                }
                (_, None) => {}
            }
        }
        Some(m)
    }

    // ------------------------------------------------------------ list

    fn list(&self, res_id: ResId, ns: Option<&str>, q: &ListQuery) -> Result<Value, ApiError> {
        let res = &RESOURCES[res_id];
        let (read_rv, start_after) = match &q.continue_token {
            Some(token) => {
                if q.resource_version.as_deref().is_some_and(|v| !v.is_empty()) {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rv, start) = decode_continue(token)?;
                (rv, Some(start))
            }
            None => {
                let rv = q.resource_version.as_deref().unwrap_or("");
                let exact = q.resource_version_match.as_deref() == Some("Exact");
                match rv {
                    "" | "0" => (self.rv, None),
                    v => {
                        let n = parse_rv(v)?;
                        if n > self.rv {
                            return Err(ApiError::too_large_resource_version(n, self.rv));
                        }
                        if exact { (n, None) } else { (self.rv, None) }
                    }
                }
            }
        };
        let snapshot;
        let objects = if read_rv == self.rv {
            &self.objects[res_id]
        } else {
            snapshot = self.snapshot_at(res_id, read_rv).ok_or_else(|| {
                if q.continue_token.is_some() {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                } else {
                    ApiError::expired(format!(
                        "The resourceVersion for the provided list is too old. (requested {read_rv}, oldest retained {})",
                        self.floor + 1
                    ))
                }
            })?;
            &snapshot
        };
        let mut items = Vec::new();
        let mut last_key: Option<Key> = None;
        let mut more = false;
        let mut remaining = 0usize;
        for (k, obj) in objects.iter() {
            if let Some(ns) = ns
                && k.0 != ns
            {
                continue;
            }
            if let Some(start) = &start_after
                && k <= start
            {
                continue;
            }
            if !q.labels.matches_object(obj) || !q.fields.matches(res, obj) {
                continue;
            }
            if q.limit > 0 && items.len() >= q.limit {
                more = true;
                remaining += 1;
                continue;
            }
            let mut item = (**obj).clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            items.push(item);
            last_key = Some(k.clone());
        }
        let mut metadata = Map::new();
        metadata.insert("resourceVersion".into(), json!(read_rv.to_string()));
        if more && let Some(last) = last_key {
            metadata.insert("continue".into(), json!(encode_continue(read_rv, &last)));
            if q.labels.is_empty() && q.fields.is_empty() {
                metadata.insert("remainingItemCount".into(), json!(remaining));
            }
        }
        Ok(json!({
            "kind": res.list_kind(),
            "apiVersion": res.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    // ------------------------------------------------------------ create

    fn check_namespace_for_create(&self, ns: &str) -> Result<(), ApiError> {
        let nsres = by_behaviour(Behaviour::Namespace);
        match self.objects[nsres].get(&(String::new(), ns.to_string())) {
            None => Err(ApiError::not_found(&RESOURCES[nsres], ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                let mut e = ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ));
                e.details = Some(
                    json!({"causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}),
                );
                Err(e)
            }
            Some(_) => Ok(()),
        }
    }

    fn alloc_ip(&mut self) -> String {
        // 10.96.0.0/12, sequential.
        let n = self.next_ip;
        self.next_ip += 1;
        format!("10.{}.{}.{}", 96 + (n >> 16), (n >> 8) & 0xff, n & 0xff)
    }

    fn create(
        &mut self,
        res_id: ResId,
        ns: Option<&str>,
        body: Value,
        opts: WriteOpts,
    ) -> Result<WriteResult, ApiError> {
        let res = &RESOURCES[res_id];
        let mut obj = prepare_body(res, body)?;
        let ns = if res.namespaced {
            let path_ns = ns.unwrap_or("");
            let body_ns = meta_str(&obj, "namespace").to_string();
            if !body_ns.is_empty() && body_ns != path_ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta(&mut obj).insert("namespace".into(), json!(path_ns));
            path_ns.to_string()
        } else {
            meta(&mut obj).remove("namespace");
            String::new()
        };
        let (mut obj, warnings) = normalize_checked(res, obj, opts.field_validation)?;
        if res.namespaced {
            self.check_namespace_for_create(&ns)?;
        }
        if !meta_str(&obj, "resourceVersion").is_empty() {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let generate =
            meta_str(&obj, "name").is_empty() && !meta_str(&obj, "generateName").is_empty();
        if meta_str(&obj, "name").is_empty() && !generate {
            return Err(ApiError::invalid(
                res.group,
                res.kind,
                "",
                vec![Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        {
            let m = meta(&mut obj);
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.insert("uid".into(), json!(util::uuid()));
            m.insert("creationTimestamp".into(), json!(util::now()));
        }
        self.prepare_for_create(res, &mut obj)?;
        let prefix: String = meta_str(&obj, "generateName").chars().take(58).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            if generate {
                meta(&mut obj).insert(
                    "name".into(),
                    json!(format!("{prefix}{}", util::name_suffix())),
                );
            }
            let key = key_of(&obj);
            if let Some(existing) = self.objects[res_id].get(&key) {
                if generate && attempt < 8 {
                    continue;
                }
                let mut e = ApiError::already_exists(res, &key.1);
                if existing.pointer("/metadata/deletionTimestamp").is_some() {
                    e.message = format!("object is being deleted: {}", e.message);
                }
                return Err(e);
            }
            break;
        }
        kinds::validate_create(res, &obj)?;
        if opts.dry_run {
            return Ok(WriteResult {
                object: Arc::new(obj),
                created: true,
                warnings,
            });
        }
        let stored = self.put(res_id, obj, EventType::Added);
        if res.behaviour == Behaviour::Namespace {
            self.populate_namespace(meta_str(&stored, "name"));
        }
        Ok(WriteResult {
            object: stored,
            created: true,
            warnings,
        })
    }

    /// What the service-account and root-CA controllers do for a new namespace.
    fn populate_namespace(&mut self, ns: &str) {
        let sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": FAKE_CA_PEM}});
        for (b, body) in [(Behaviour::ServiceAccount, sa), (Behaviour::ConfigMap, cm)] {
            if let Err(e) = self.create(by_behaviour(b), Some(ns), body, WriteOpts::default()) {
                tracing::warn!("populating namespace {ns}: {e}");
            }
        }
    }

    fn prepare_for_create(&mut self, res: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
        match res.behaviour {
            Behaviour::Pod => {
                kinds::default_pod(obj);
                let mirror = obj
                    .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                    .is_some();
                if mirror {
                    let sa = obj
                        .pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if !sa.is_empty() {
                        return Err(ApiError::forbidden(format!(
                            "pods {:?} is forbidden: a mirror pod may not reference service accounts",
                            meta_str(obj, "name")
                        )));
                    }
                } else if self.cfg.service_account_admission {
                    self.service_account_admission(obj)?;
                }
                meta(obj).insert("generation".into(), json!(1));
                let qos = kinds::pod_qos(obj);
                if let Some(m) = obj.as_object_mut() {
                    m.insert(
                        "status".into(),
                        json!({"phase": "Pending", "qosClass": qos}),
                    );
                }
            }
            Behaviour::Namespace => {
                let name = meta_str(obj, "name").to_string();
                child(meta(obj), "labels")
                    .insert("kubernetes.io/metadata.name".into(), json!(name));
                if let Some(m) = obj.as_object_mut() {
                    let spec = child(m, "spec");
                    let fins = spec
                        .entry("finalizers")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(f) = fins
                        && !f.iter().any(|x| x == "kubernetes")
                    {
                        f.push(json!("kubernetes"));
                    }
                    m.insert("status".into(), json!({"phase": "Active"}));
                }
            }
            Behaviour::Secret => kinds::fold_string_data(obj),
            // A new request has no status: approval and the certificate come later, through the
            // `approval` and `status` subresources.
            Behaviour::CertificateSigningRequest => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
            Behaviour::Service => {
                let needs_ip = obj.pointer("/spec/type").and_then(Value::as_str)
                    != Some("ExternalName")
                    && obj
                        .pointer("/spec/clusterIP")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty();
                let ip = if needs_ip {
                    self.alloc_ip()
                } else {
                    String::new()
                };
                kinds::default_service(obj, || ip);
            }
            _ => {}
        }
        Ok(())
    }

    fn service_account_admission(&self, pod: &mut Value) -> Result<(), ApiError> {
        let ns = meta_str(pod, "namespace").to_string();
        let name = meta_str(pod, "name").to_string();
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let sa_name = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                spec.get("serviceAccount")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or("default")
            .to_string();
        spec.insert("serviceAccountName".into(), json!(sa_name));
        spec.insert("serviceAccount".into(), json!(sa_name));
        let sa_res = by_behaviour(Behaviour::ServiceAccount);
        let Some(sa) = self.objects[sa_res].get(&(ns.clone(), sa_name.clone())) else {
            return Err(ApiError::forbidden(format!(
                "pods {name:?} is forbidden: error looking up service account {ns}/{sa_name}: serviceaccount {sa_name:?} not found"
            )));
        };
        let automount = spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool)
            .or_else(|| {
                sa.get("automountServiceAccountToken")
                    .and_then(Value::as_bool)
            })
            .unwrap_or(true);
        if automount {
            kinds::add_token_volume(pod, &format!("kube-api-access-{}", util::name_suffix()));
        }
        Ok(())
    }

    // ------------------------------------------------------------ update

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        res_id: ResId,
        ns: Option<&str>,
        name: &str,
        body: UpdateBody<'_>,
        status: bool,
        opts: WriteOpts,
    ) -> Result<WriteResult, ApiError> {
        let res = &RESOURCES[res_id];
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        let Some(current) = self.objects[res_id].get(&key).cloned() else {
            if let UpdateBody::Put(body) = body
                && res.allow_create_on_update
                && !status
            {
                let mut body = prepare_body(res, body)?;
                check_name(&body, name)?;
                meta(&mut body).remove("resourceVersion");
                return self.create(res_id, ns, body, opts);
            }
            return Err(ApiError::not_found(res, name));
        };
        let new = match body {
            UpdateBody::Put(body) => {
                let body = prepare_body(res, body)?;
                check_name(&body, name)?;
                let uid = meta_str(&body, "uid");
                let cur_uid = meta_str(&current, "uid");
                if !uid.is_empty() && uid != cur_uid {
                    return Err(ApiError::conflict_on(
                        res.group,
                        res.plural,
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {cur_uid}"
                        ),
                    ));
                }
                body
            }
            UpdateBody::Patch { kind, body } => {
                let patched = patch::apply(kind, res.behaviour, &current, body)?;
                let patched = prepare_body(res, patched)?;
                check_name(&patched, name)?;
                patched
            }
        };
        let body_ns = meta_str(&new, "namespace");
        if res.namespaced && !body_ns.is_empty() && body_ns != key.0 {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let (mut new, warnings) = normalize_checked(res, new, opts.field_validation)?;
        let cur_rv = meta_str(&current, "resourceVersion").to_string();
        let new_rv = meta_str(&new, "resourceVersion").to_string();
        if new_rv.is_empty() {
            if !res.allow_unconditional_update {
                return Err(ApiError::invalid(
                    res.group,
                    res.plural,
                    name,
                    vec![Cause::invalid(
                        "metadata.resourceVersion",
                        &json!(0),
                        "must be specified for an update",
                    )],
                ));
            }
        } else {
            parse_rv(&new_rv)?;
            if new_rv != cur_rv {
                return Err(ApiError::stale(res, name));
            }
        }
        // rest.BeforeUpdate
        {
            let cur_meta = current.get("metadata").cloned().unwrap_or_default();
            let m = meta(&mut new);
            m.insert("resourceVersion".into(), json!(cur_rv));
            if res.namespaced {
                m.insert("namespace".into(), json!(key.0));
            } else {
                m.remove("namespace");
            }
            if m.get("uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                m.insert(
                    "uid".into(),
                    cur_meta.get("uid").cloned().unwrap_or(Value::Null),
                );
            }
            for f in ["creationTimestamp", "generation"] {
                match cur_meta.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            if let Some(dt) = cur_meta.get("deletionTimestamp") {
                m.insert("deletionTimestamp".into(), dt.clone());
            }
            if let Some(g) = cur_meta.get("deletionGracePeriodSeconds")
                && !m.contains_key("deletionGracePeriodSeconds")
            {
                m.insert("deletionGracePeriodSeconds".into(), g.clone());
            }
        }
        prepare_for_update(res, &mut new, &current, status);
        kinds::validate_update(res, &new, &current, status)?;
        if new == *current {
            return Ok(WriteResult {
                object: current,
                created: false,
                warnings,
            });
        }
        let cur_grace = get_i64(&current, "/metadata/deletionGracePeriodSeconds");
        if finalizers_empty(&new)
            && current.pointer("/metadata/deletionTimestamp").is_some()
            && cur_grace.is_none_or(|g| g == 0)
        {
            if !opts.dry_run {
                self.remove(res_id, &key);
            }
            return Ok(WriteResult {
                object: Arc::new(new),
                created: false,
                warnings,
            });
        }
        if opts.dry_run {
            return Ok(WriteResult {
                object: Arc::new(new),
                created: false,
                warnings,
            });
        }
        let stored = self.put(res_id, new, EventType::Modified);
        Ok(WriteResult {
            object: stored,
            created: false,
            warnings,
        })
    }

    // ------------------------------------------------------------ delete

    fn delete(
        &mut self,
        res_id: ResId,
        key: Key,
        opts: &DeleteOpts,
    ) -> Result<DeleteOutcome, ApiError> {
        let res = &RESOURCES[res_id];
        let Some(current) = self.objects[res_id].get(&key).cloned() else {
            return Err(ApiError::not_found(res, &key.1));
        };
        check_preconditions(res, &current, opts)?;
        let mut obj = (*current).clone();
        let grace_opt = opts.grace.map(|g| if g < 0 { 1 } else { g });
        // rest.BeforeDelete
        let (graceful, pending_graceful, last_grace) = if res.behaviour == Behaviour::Pod {
            before_delete_pod(&mut obj, grace_opt)
        } else {
            (false, false, 0)
        };
        if pending_graceful {
            return Ok(DeleteOutcome {
                object: current,
                finalized: true,
            });
        }
        let pending_finalizers = !finalizers_empty(&obj);
        if graceful || pending_finalizers {
            if !graceful {
                // markAsDeleting
                let now = util::now();
                let m = meta(&mut obj);
                let later = m
                    .get("deletionTimestamp")
                    .and_then(Value::as_str)
                    .and_then(util::parse_time)
                    .is_some_and(|t| t > chrono::Utc::now());
                if !m.contains_key("deletionTimestamp") {
                    if let Some(g) = m
                        .get("generation")
                        .and_then(Value::as_i64)
                        .filter(|g| *g > 0)
                    {
                        m.insert("generation".into(), json!(g + 1));
                    }
                    m.insert("deletionTimestamp".into(), json!(now));
                } else if later {
                    m.insert("deletionTimestamp".into(), json!(now));
                }
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            let updated = if opts.dry_run || obj == *current {
                Arc::new(obj)
            } else {
                self.put(res_id, obj, EventType::Modified)
            };
            if pending_finalizers || last_grace > 0 {
                return Ok(DeleteOutcome {
                    object: updated,
                    finalized: false,
                });
            }
            // Graceful with a zero period: fall through to the removal.
        }
        if opts.dry_run {
            return Ok(DeleteOutcome {
                object: current,
                finalized: true,
            });
        }
        let last = self
            .remove(res_id, &key)
            .ok_or_else(|| ApiError::not_found(res, &key.1))?;
        Ok(DeleteOutcome {
            object: last,
            finalized: true,
        })
    }

    fn delete_namespace(
        &mut self,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<DeleteOutcome, ApiError> {
        let res_id = by_behaviour(Behaviour::Namespace);
        let res = &RESOURCES[res_id];
        let key = (String::new(), name.to_string());
        let Some(current) = self.objects[res_id].get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        if IMMORTAL_NAMESPACES.contains(&name) {
            let mut e = ApiError::forbidden(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            ));
            e.details = Some(json!({"name": name, "kind": "namespaces"}));
            return Err(e);
        }
        check_preconditions(res, &current, opts)?;
        if opts.dry_run {
            return Ok(DeleteOutcome {
                object: current,
                finalized: false,
            });
        }
        if current.pointer("/metadata/deletionTimestamp").is_none() {
            let mut obj = (*current).clone();
            {
                let m = meta(&mut obj);
                m.insert("deletionTimestamp".into(), json!(util::now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            if let Some(m) = obj.as_object_mut() {
                child(m, "status").insert("phase".into(), json!("Terminating"));
            }
            let updated = self.put(res_id, obj, EventType::Modified);
            self.namespace_controller(name);
            let object = self.objects[res_id].get(&key).cloned().unwrap_or(updated);
            return Ok(DeleteOutcome {
                object,
                finalized: false,
            });
        }
        let spec_fins_empty = current
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if spec_fins_empty && finalizers_empty(&current) {
            let last = self
                .remove(res_id, &key)
                .ok_or_else(|| ApiError::not_found(res, name))?;
            return Ok(DeleteOutcome {
                object: last,
                finalized: true,
            });
        }
        Ok(DeleteOutcome {
            object: current,
            finalized: false,
        })
    }

    /// What the namespace controller does for a terminating namespace: delete its content,
    /// then finalize and remove the namespace once nothing is left.
    fn namespace_controller(&mut self, ns: &str) {
        for (res_id, def) in RESOURCES.iter().enumerate() {
            if !def.namespaced {
                continue;
            }
            let keys: Vec<Key> = self.objects[res_id]
                .keys()
                .filter(|k| k.0 == ns)
                .cloned()
                .collect();
            for key in keys {
                if let Err(e) = self.delete(res_id, key, &DeleteOpts::default()) {
                    tracing::warn!("namespace controller: {e}");
                }
            }
        }
        self.maybe_finalize_namespace(ns);
    }

    fn maybe_finalize_namespace(&mut self, ns: &str) {
        let res_id = by_behaviour(Behaviour::Namespace);
        let key = (String::new(), ns.to_string());
        let Some(nsobj) = self.objects[res_id].get(&key).cloned() else {
            return;
        };
        if nsobj.pointer("/metadata/deletionTimestamp").is_none() {
            return;
        }
        let has_content = RESOURCES
            .iter()
            .enumerate()
            .any(|(i, r)| r.namespaced && self.objects[i].keys().any(|k| k.0 == ns));
        if has_content {
            return;
        }
        let has_spec_fins = nsobj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_spec_fins {
            let mut obj = (*nsobj).clone();
            if let Some(m) = obj.as_object_mut() {
                child(m, "spec").insert("finalizers".into(), json!([]));
            }
            self.put(res_id, obj, EventType::Modified);
        }
        if finalizers_empty(&nsobj) {
            self.remove(res_id, &key);
        }
    }

    // ------------------------------------------------------------ watch

    fn watch(
        &mut self,
        res: ResId,
        ns: Option<&str>,
        q: &WatchQuery,
    ) -> Result<WatchStart, ApiError> {
        let rv = q.resource_version.as_deref().unwrap_or("");
        let current_objects = |inner: &Inner| -> Vec<Arc<Value>> {
            inner.objects[res]
                .iter()
                .filter(|(k, _)| ns.is_none_or(|ns| k.0 == ns))
                .map(|(_, v)| v.clone())
                .collect()
        };
        let (initial, initial_end, from_rv) = match (q.send_initial_events, rv) {
            (Some(true), _) => (current_objects(self), Some(self.rv), self.rv),
            (Some(false), "" | "0") => (Vec::new(), None, self.rv),
            (None, "" | "0") => (current_objects(self), None, self.rv),
            (_, v) => (Vec::new(), None, parse_rv(v)?),
        };
        if from_rv < self.floor {
            return Ok(WatchStart::Expired(ApiError::expired(format!(
                "too old resource version: {from_rv} ({})",
                self.floor + 1
            ))));
        }
        let backlog: Vec<Arc<Event>> = self
            .history
            .iter()
            .filter(|e| e.rv > from_rv && e.res == res)
            .cloned()
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.push(Watcher { res, tx });
        Ok(WatchStart::Stream(WatchStream {
            initial,
            initial_end,
            backlog,
            rx,
            from_rv,
        }))
    }

    // ------------------------------------------------------------ tokens

    fn create_token(&mut self, ns: &str, sa_name: &str, body: Value) -> Result<Value, ApiError> {
        let sa_res = &RESOURCES[by_behaviour(Behaviour::ServiceAccount)];
        let Some(sa) = self.objects[by_behaviour(Behaviour::ServiceAccount)]
            .get(&(ns.to_string(), sa_name.to_string()))
            .cloned()
        else {
            return Err(ApiError::not_found(sa_res, sa_name));
        };
        let mut body = body;
        if let Some(m) = body.as_object_mut() {
            m.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
            m.insert("kind".into(), json!("TokenRequest"));
        }
        let mut req = kinds::normalize_token_request(body)?;
        let exp = get_i64(&req, "/spec/expirationSeconds").unwrap_or(3600);
        let mut causes = Vec::new();
        if exp < 600 {
            causes.push(Cause::invalid(
                "spec.expirationSeconds",
                &json!(exp),
                "may not specify a duration less than 10 minutes",
            ));
        }
        if exp > 1 << 32 {
            causes.push(Cause::invalid(
                "spec.expirationSeconds",
                &json!(exp),
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let mut claims_pod = Value::Null;
        if let Some(r) = req
            .pointer("/spec/boundObjectRef")
            .cloned()
            .filter(|r| !r.is_null())
        {
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
            let name = r.get("name").and_then(Value::as_str).unwrap_or("");
            let want_uid = r.get("uid").and_then(Value::as_str).unwrap_or("");
            let target = match kind {
                "Pod" => Some(by_behaviour(Behaviour::Pod)),
                "Secret" => Some(by_behaviour(Behaviour::Secret)),
                "Node" => Some(by_behaviour(Behaviour::Node)),
                _ => None,
            };
            match target {
                None => causes.push(Cause::not_supported(
                    "spec.boundObjectRef.kind",
                    kind,
                    &["Pod", "Secret", "Node"],
                )),
                Some(t) => {
                    if name.is_empty() {
                        causes.push(Cause::required("spec.boundObjectRef.name", ""));
                    } else {
                        let tns = if RESOURCES[t].namespaced { ns } else { "" };
                        let Some(obj) = self.objects[t].get(&(tns.to_string(), name.to_string()))
                        else {
                            return Err(ApiError::not_found(&RESOURCES[t], name));
                        };
                        let uid = meta_str(obj, "uid");
                        if !want_uid.is_empty() && want_uid != uid {
                            return Err(ApiError::conflict_on(
                                RESOURCES[t].group,
                                RESOURCES[t].plural,
                                name,
                                &format!(
                                    "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                                ),
                            ));
                        }
                        if kind == "Pod" {
                            claims_pod = json!({"name": name, "uid": uid});
                        }
                    }
                }
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                "authentication.k8s.io",
                "TokenRequest",
                sa_name,
                causes,
            ));
        }
        let audiences = req
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .cloned()
            .unwrap_or_else(|| vec![json!("https://kubernetes.default.svc.cluster.local")]);
        let now = chrono::Utc::now();
        let expiry = now + chrono::Duration::seconds(exp);
        let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": sa_name, "uid": meta_str(&sa, "uid")}});
        if !claims_pod.is_null()
            && let Some(m) = k8s.as_object_mut()
        {
            m.insert("pod".into(), claims_pod);
        }
        let claims = json!({
            "aud": audiences,
            "exp": expiry.timestamp(),
            "iat": now.timestamp(),
            "nbf": now.timestamp(),
            "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": util::uuid(),
            "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
            "kubernetes.io": k8s,
        });
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let sig: Vec<u8> = (0..4)
            .flat_map(|_| util::random_u64().to_be_bytes())
            .collect();
        let token = format!(
            "{}.{}.{}",
            b64.encode(json!({"alg": "RS256", "kid": "kube-standin"}).to_string()),
            b64.encode(claims.to_string()),
            b64.encode(sig)
        );
        if let Some(m) = req.as_object_mut() {
            let md = child(m, "metadata");
            md.insert("name".into(), json!(sa_name));
            md.insert("namespace".into(), json!(ns));
            md.insert("creationTimestamp".into(), json!(util::fmt_time(now)));
            let spec = child(m, "spec");
            spec.insert("audiences".into(), Value::Array(audiences));
            spec.insert("expirationSeconds".into(), json!(exp));
            default_key(spec, "boundObjectRef", Value::Null);
            if spec.get("boundObjectRef").is_some_and(Value::is_null) {
                spec.remove("boundObjectRef");
            }
            m.insert(
                "status".into(),
                json!({"token": token, "expirationTimestamp": util::fmt_time(expiry)}),
            );
        }
        Ok(req)
    }
}

fn check_name(obj: &Value, name: &str) -> Result<(), ApiError> {
    let body_name = meta_str(obj, "name");
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

fn check_preconditions(res: &ResourceDef, obj: &Value, opts: &DeleteOpts) -> Result<(), ApiError> {
    let name = meta_str(obj, "name");
    if let Some(uid) = &opts.uid {
        let cur = meta_str(obj, "uid");
        if uid != cur {
            return Err(ApiError::conflict_on(
                res.group,
                res.kind,
                name,
                &format!(
                    "the UID in the precondition ({uid}) does not match the UID in record ({cur}). The object might have been deleted and then recreated"
                ),
            ));
        }
    }
    if let Some(rv) = &opts.rv {
        let cur = meta_str(obj, "resourceVersion");
        if rv != cur {
            return Err(ApiError::conflict_on(
                res.group,
                res.kind,
                name,
                &format!(
                    "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({cur}). The object might have been modified"
                ),
            ));
        }
    }
    Ok(())
}

/// `rest.BeforeDelete` with the pod strategy's `CheckGracefulDelete`; returns
/// (graceful, pending graceful, the grace period set).
fn before_delete_pod(obj: &mut Value, grace: Option<i64>) -> (bool, bool, i64) {
    if get_i64(obj, "/metadata/deletionGracePeriodSeconds").is_some_and(|g| g < 0) {
        meta(obj).insert("deletionGracePeriodSeconds".into(), json!(1));
    }
    let existing_ts = obj
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(ts) = existing_ts {
        let Some(cur) = get_i64(obj, "/metadata/deletionGracePeriodSeconds").filter(|g| *g != 0)
        else {
            return (false, false, 0);
        };
        let Some(period) = grace else {
            return (false, true, cur);
        };
        if period >= cur {
            return (false, true, cur);
        }
        let base = util::parse_time(&ts).unwrap_or_else(chrono::Utc::now);
        let new_ts = base - chrono::Duration::seconds(cur) + chrono::Duration::seconds(period);
        let m = meta(obj);
        m.insert("deletionTimestamp".into(), json!(util::fmt_time(new_ts)));
        m.insert("deletionGracePeriodSeconds".into(), json!(period));
        return (true, false, period);
    }
    let mut period = grace
        .or_else(|| get_i64(obj, "/spec/terminationGracePeriodSeconds"))
        .unwrap_or(0);
    if obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        period = 0;
    }
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if phase == "Failed" || phase == "Succeeded" {
        period = 0;
    }
    if period < 0 {
        period = 1;
    }
    let ts = chrono::Utc::now() + chrono::Duration::seconds(period);
    let m = meta(obj);
    m.insert("deletionTimestamp".into(), json!(util::fmt_time(ts)));
    m.insert("deletionGracePeriodSeconds".into(), json!(period));
    if let Some(g) = m
        .get("generation")
        .and_then(Value::as_i64)
        .filter(|g| *g > 0)
    {
        m.insert("generation".into(), json!(g + 1));
    }
    (true, false, period)
}

/// The strategies' `PrepareForUpdate`: which parts a main-resource or status write keeps.
fn prepare_for_update(res: &ResourceDef, new: &mut Value, old: &Value, status: bool) {
    let Some(m) = new.as_object_mut() else { return };
    let keep = |m: &mut Map<String, Value>, field: &str| match old.get(field) {
        Some(v) => {
            m.insert(field.into(), v.clone());
        }
        None => {
            m.remove(field);
        }
    };
    if status {
        keep(m, "spec");
        if res.behaviour == Behaviour::Pod {
            let md = child(m, "metadata");
            match old.pointer("/metadata/ownerReferences") {
                Some(v) => md.insert("ownerReferences".into(), v.clone()),
                None => md.remove("ownerReferences"),
            };
            match old.pointer("/metadata/deletionTimestamp") {
                Some(v) => md.insert("deletionTimestamp".into(), v.clone()),
                None => md.remove("deletionTimestamp"),
            };
            let st = child(m, "status");
            if st
                .get("qosClass")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
                && let Some(q) = old.pointer("/status/qosClass")
            {
                st.insert("qosClass".into(), q.clone());
            }
        }
        return;
    }
    if res.status_subresource {
        keep(m, "status");
    }
    match res.behaviour {
        Behaviour::Pod => {
            kinds::default_pod_spec_only(m);
            if m.get("spec") != old.get("spec") {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                child(m, "metadata").insert("generation".into(), json!(g + 1));
            }
        }
        Behaviour::Namespace => {
            let name = old
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or(Value::Null);
            child(child(m, "metadata"), "labels")
                .insert("kubernetes.io/metadata.name".into(), name);
            let spec = child(m, "spec");
            match old.pointer("/spec/finalizers") {
                Some(v) => spec.insert("finalizers".into(), v.clone()),
                None => spec.remove("finalizers"),
            };
        }
        Behaviour::Secret => {
            let mut v = Value::Object(std::mem::take(m));
            kinds::fold_string_data(&mut v);
            if let Value::Object(o) = v {
                *m = o;
            }
        }
        Behaviour::Service => {
            let old_ip = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut v = Value::Object(std::mem::take(m));
            kinds::default_service(&mut v, || old_ip);
            if let Value::Object(o) = v {
                *m = o;
            }
            keep(m, "status");
        }
        _ => {}
    }
}

fn encode_continue(rv: u64, last: &Key) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": [last.0, last.1]}).to_string();
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_array).ok_or_else(bad)?;
    let part = |i: usize| start.get(i).and_then(Value::as_str).map(str::to_string);
    match (part(0), part(1)) {
        (Some(ns), Some(name)) => Ok((rv, (ns, name))),
        _ => Err(bad()),
    }
}
