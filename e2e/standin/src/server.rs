//! The HTTP layer: path routing, query parsing, responses, and watch streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::discovery;
use crate::error::{ApiError, Cause};
use crate::openapi;
use crate::patch::PatchType;
use crate::proto;
use crate::resources::{self, Behaviour, RESOURCES, ResId, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{
    DeleteOpts, Event, EventType, FieldValidation, ListQuery, Store, UpdateBody, WatchQuery,
    WatchStart, WatchStream, WriteOpts, WriteResult,
};
use crate::table;

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<Store>,
    /// Interval of watch bookmarks (when the client allows them).
    pub bookmark_interval: Duration,
    /// `host:port` announced in `/api`.
    pub server_address: String,
    /// Cancelled at shutdown: ends watch streams.
    pub shutdown: CancellationToken,
}

/// The router serving the whole API.
pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

const MAX_BODY: usize = 16 << 20;

fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (code, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w.clone()));
        if let Ok(v) = HeaderValue::from_str(&text) {
            h.append(header::WARNING, v);
        }
    }
    resp
}

fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status(), &[])
}

/// Query parameters.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("" | "0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "invalid boolean value for {key}: {v:?}"
            ))),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid integer value for {key}: {v:?}"))
            }),
        }
    }

    fn write_opts(&self) -> Result<WriteOpts, ApiError> {
        let dry_run = match self.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "dryRun: Unsupported value: {v:?}: supported values: \"All\""
                )));
            }
        };
        let field_validation = match self.get("fieldValidation") {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Ignore") => FieldValidation::Ignore,
            Some("Strict") => FieldValidation::Strict,
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation: Unsupported value: {v:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
                )));
            }
        };
        Ok(WriteOpts {
            dry_run,
            field_validation,
        })
    }
}

/// What a request path names.
#[derive(Debug)]
enum Target {
    Root,
    Version,
    Health,
    Compact,
    Api,
    ApiGroupList,
    ApiGroup(String),
    ResourceList(String, String),
    OpenApiV3Root,
    OpenApiV3(String),
    Resource {
        res: ResId,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<String>,
        watch_prefix: bool,
    },
}

fn route(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [] => Ok(Target::Root),
        ["version"] => Ok(Target::Version),
        ["healthz" | "livez" | "readyz", ..] => Ok(Target::Health),
        ["standin", "compact"] => Ok(Target::Compact),
        ["api"] => Ok(Target::Api),
        ["api", "v1"] => Ok(Target::ResourceList(String::new(), "v1".into())),
        ["api", "v1", rest @ ..] => resource_target("", "v1", rest),
        ["apis"] => Ok(Target::ApiGroupList),
        ["apis", g] => Ok(Target::ApiGroup((*g).to_string())),
        ["apis", g, v] => Ok(Target::ResourceList((*g).to_string(), (*v).to_string())),
        ["apis", g, v, rest @ ..] => resource_target(g, v, rest),
        ["openapi", "v3"] => Ok(Target::OpenApiV3Root),
        ["openapi", "v3", rest @ ..] => Ok(Target::OpenApiV3(rest.join("/"))),
        _ => Err(ApiError::path_not_found()),
    }
}

fn resource_target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (watch_prefix, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let namespaced_form = rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
    let (ns, plural, name, sub) = if namespaced_form {
        if rest.len() > 5 {
            return Err(ApiError::path_not_found());
        }
        (
            Some(rest[1]),
            rest[2],
            rest.get(3).copied(),
            rest.get(4).copied(),
        )
    } else {
        if rest.is_empty() || rest.len() > 3 {
            return Err(ApiError::path_not_found());
        }
        (None, rest[0], rest.get(1).copied(), rest.get(2).copied())
    };
    let res = resources::find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
    let def = &RESOURCES[res];
    if def.namespaced != ns.is_some() && !(def.namespaced && name.is_none()) {
        return Err(ApiError::path_not_found());
    }
    if let Some(s) = sub {
        let ok = (s == "status" && def.status_subresource)
            || (s == "token" && def.behaviour == Behaviour::ServiceAccount)
            || (s == "approval" && def.behaviour == Behaviour::CertificateSigningRequest);
        if !ok {
            return Err(ApiError::path_not_found());
        }
    }
    Ok(Target::Resource {
        res,
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
        watch_prefix,
    })
}

async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("reading the body: {e}")));
        }
    };
    tracing::debug!(%method, %uri, "request");
    match dispatch(&state, &method, uri.path(), uri.query(), &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, code = e.code, "error: {}", e.message);
            error_response(&e)
        }
    }
}

fn ok(v: &Value) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, v, &[]))
}

async fn dispatch(
    state: &AppState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let target = route(path)?;
    let get_only = |v: Value| -> Result<Response, ApiError> {
        if method == Method::GET {
            ok(&v)
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match target {
        Target::Root => get_only(discovery::root_paths()),
        Target::Version => get_only(discovery::version()),
        Target::Health => {
            if method == Method::GET {
                Ok((StatusCode::OK, "ok").into_response())
            } else {
                Err(ApiError::method_not_allowed())
            }
        }
        Target::Compact => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed());
            }
            state.store.compact();
            ok(&json!({"compactedAt": state.store.current_rv().to_string()}))
        }
        Target::Api => get_only(discovery::api_versions(&state.server_address)),
        Target::ApiGroupList => get_only(discovery::api_group_list()),
        Target::ApiGroup(g) => {
            get_only(discovery::api_group(&g).ok_or_else(ApiError::path_not_found)?)
        }
        Target::OpenApiV3Root => get_only(openapi::root()),
        Target::OpenApiV3(p) => {
            get_only(openapi::group_version(&p).ok_or_else(ApiError::path_not_found)?)
        }
        Target::ResourceList(g, v) => {
            get_only(discovery::api_resource_list(&g, &v).ok_or_else(ApiError::path_not_found)?)
        }
        Target::Resource {
            res,
            ns,
            name,
            sub,
            watch_prefix,
        } => {
            let q = Query::parse(query);
            let ctx = Ctx {
                state,
                res,
                ns: ns.as_deref(),
                q: &q,
                headers,
                body,
            };
            match (name.as_deref(), sub.as_deref()) {
                (None, _) => match *method {
                    Method::GET => {
                        if watch_prefix || q.bool("watch")?.unwrap_or(false) {
                            ctx.watch(None)
                        } else {
                            ctx.list()
                        }
                    }
                    Method::POST => ctx.create(),
                    Method::DELETE => ctx.delete_collection(),
                    _ => Err(ApiError::method_not_allowed()),
                },
                (Some(name), None) => match *method {
                    Method::GET if watch_prefix => ctx.watch(Some(name)),
                    Method::GET => ctx.get(name),
                    Method::PUT => ctx.update(name, false),
                    Method::PATCH => ctx.patch(name, false),
                    Method::DELETE => ctx.delete(name),
                    _ => Err(ApiError::method_not_allowed()),
                },
                (Some(name), Some("status")) => match *method {
                    Method::GET => ctx.get(name),
                    Method::PUT => ctx.update(name, true),
                    Method::PATCH => ctx.patch(name, true),
                    _ => Err(ApiError::method_not_allowed()),
                },
                (Some(name), Some("approval")) => match *method {
                    Method::GET => ctx.get(name),
                    Method::PUT => ctx.update_approval(name),
                    _ => Err(ApiError::method_not_allowed()),
                },
                (Some(name), Some(_token)) => match *method {
                    Method::POST => ctx.token(name),
                    _ => Err(ApiError::method_not_allowed()),
                },
            }
        }
    }
}

struct Ctx<'a> {
    state: &'a AppState,
    res: ResId,
    ns: Option<&'a str>,
    q: &'a Query,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        "" | "application/json" | "*/*" => parse_json_body(body),
        proto::CONTENT_TYPE => proto::decode(body),
        _ => Err(ApiError::unsupported_media_type(ct)),
    }
}

fn parse_json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

impl Ctx<'_> {
    fn def(&self) -> &'static ResourceDef {
        &RESOURCES[self.res]
    }

    fn wants_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(table::accepts_table)
    }

    fn body_value(&self) -> Result<Value, ApiError> {
        parse_body(self.headers, self.body)
    }

    fn list_query(&self) -> Result<ListQuery, ApiError> {
        let labels = LabelSelector::parse(self.q.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(self.q.get("fieldSelector").unwrap_or(""), self.def())?;
        let limit = self.q.int("limit")?.unwrap_or(0).max(0) as usize;
        Ok(ListQuery {
            labels,
            fields,
            limit,
            continue_token: self
                .q
                .get("continue")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            resource_version: self.q.get("resourceVersion").map(str::to_string),
            resource_version_match: self
                .q
                .get("resourceVersionMatch")
                .filter(|m| !m.is_empty())
                .map(str::to_string),
        })
    }

    fn list(&self) -> Result<Response, ApiError> {
        let lq = self.list_query()?;
        let mut causes = Vec::new();
        if let Some(m) = &lq.resource_version_match {
            if lq.resource_version.as_deref().unwrap_or("").is_empty() {
                causes.push(Cause::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if lq.continue_token.is_some() {
                causes.push(Cause::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if m != "Exact" && m != "NotOlderThan" {
                causes.push(Cause::not_supported(
                    "resourceVersionMatch",
                    m,
                    &["Exact", "NotOlderThan", ""],
                ));
            }
            if m == "Exact" && lq.resource_version.as_deref() == Some("0") {
                causes.push(Cause::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if self.q.get("sendInitialEvents").is_some() {
            causes.push(Cause::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes));
        }
        let list = self.state.store.list(self.res, self.ns, &lq)?;
        if self.wants_table() {
            return ok(&table::list_to_table(self.def(), &list));
        }
        ok(&list)
    }

    fn get(&self, name: &str) -> Result<Response, ApiError> {
        let obj = self.state.store.get(self.res, self.ns, name)?;
        if self.wants_table() {
            return ok(&table::object_to_table(self.def(), &obj));
        }
        ok(&obj)
    }

    fn watch(&self, single: Option<&str>) -> Result<Response, ApiError> {
        let mut lq = self.list_query()?;
        if let Some(name) = single {
            let sel = format!("metadata.name={name}");
            lq.fields = FieldSelector::parse(&sel, self.def())?;
        }
        let send_initial_events = self.q.bool("sendInitialEvents")?;
        let rvm = lq.resource_version_match.clone();
        let mut causes = Vec::new();
        if send_initial_events.is_some() && rvm.as_deref() != Some("NotOlderThan") {
            causes.push(Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if let Some(m) = &rvm {
            if send_initial_events.is_none() {
                causes.push(Cause::forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
            }
            if m != "NotOlderThan" {
                causes.push(Cause::not_supported(
                    "resourceVersionMatch",
                    m,
                    &["NotOlderThan"],
                ));
            }
            if lq.continue_token.is_some() {
                causes.push(Cause::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes));
        }
        let bookmarks = self.q.bool("allowWatchBookmarks")?.unwrap_or(false);
        let timeout = self
            .q
            .int("timeoutSeconds")?
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t as u64));
        let wq = WatchQuery {
            resource_version: lq.resource_version.clone(),
            send_initial_events,
        };
        let start = self.state.store.watch(self.res, self.ns, &wq)?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
        match start {
            WatchStart::Expired(e) => {
                let line = event_line("ERROR", &e.to_status());
                tokio::spawn(async move {
                    let _ = tx.send(Ok(line)).await;
                });
            }
            WatchStart::Stream(stream) => {
                let w = Watch {
                    state: self.state.clone(),
                    res: self.res,
                    ns: self.ns.map(str::to_string),
                    labels: lq.labels,
                    fields: lq.fields,
                    bookmarks,
                    timeout,
                    table: self.wants_table(),
                    tx,
                };
                tokio::spawn(w.run(stream));
            }
        }
        let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        Ok(resp)
    }

    fn write_response(&self, r: WriteResult, code: StatusCode) -> Result<Response, ApiError> {
        Ok(json_response(code, &r.object, &r.warnings))
    }

    fn create(&self) -> Result<Response, ApiError> {
        let opts = self.q.write_opts()?;
        let body = self.body_value()?;
        let r = self.state.store.create(self.res, self.ns, body, opts)?;
        self.write_response(r, StatusCode::CREATED)
    }

    fn update(&self, name: &str, status: bool) -> Result<Response, ApiError> {
        let opts = self.q.write_opts()?;
        let body = self.body_value()?;
        let r = self.state.store.update(
            self.res,
            self.ns,
            name,
            UpdateBody::Put(body),
            status,
            opts,
        )?;
        let code = if r.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        self.write_response(r, code)
    }

    /// PUT of a CertificateSigningRequest's `approval`: as kube-apiserver's approval strategy,
    /// only the conditions change; the spec and the issued certificate stay as stored.
    fn update_approval(&self, name: &str) -> Result<Response, ApiError> {
        let opts = self.q.write_opts()?;
        let mut body = self.body_value()?;
        let current = self.state.store.get(self.res, self.ns, name)?;
        let issued = current.pointer("/status/certificate").cloned();
        if let Some(status) = body.get_mut("status").and_then(Value::as_object_mut) {
            match issued {
                Some(certificate) => status.insert("certificate".into(), certificate),
                None => status.remove("certificate"),
            };
        }
        let r =
            self.state
                .store
                .update(self.res, self.ns, name, UpdateBody::Put(body), true, opts)?;
        self.write_response(r, StatusCode::OK)
    }

    fn patch(&self, name: &str, status: bool) -> Result<Response, ApiError> {
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let kind = PatchType::from_content_type(ct)?;
        let opts = self.q.write_opts()?;
        let r = self.state.store.update(
            self.res,
            self.ns,
            name,
            UpdateBody::Patch {
                kind,
                body: self.body,
            },
            status,
            opts,
        )?;
        self.write_response(r, StatusCode::OK)
    }

    fn delete_opts(&self) -> Result<DeleteOpts, ApiError> {
        let mut opts = DeleteOpts {
            grace: self.q.int("gracePeriodSeconds")?,
            dry_run: self.q.write_opts()?.dry_run,
            ..DeleteOpts::default()
        };
        if !self.body.is_empty() {
            let b = self.body_value()?;
            if let Some(g) = b.get("gracePeriodSeconds").filter(|g| !g.is_null()) {
                opts.grace = Some(g.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?);
            }
            if let Some(p) = b.get("preconditions") {
                opts.uid = p.get("uid").and_then(Value::as_str).map(str::to_string);
                opts.rv = p
                    .get("resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            if let Some(d) = b.get("dryRun").and_then(Value::as_array) {
                for v in d {
                    match v.as_str() {
                        Some("All") => opts.dry_run = true,
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "dryRun: Unsupported value: {v}: supported values: \"All\""
                            )));
                        }
                    }
                }
            }
        }
        Ok(opts)
    }

    fn delete(&self, name: &str) -> Result<Response, ApiError> {
        let opts = self.delete_opts()?;
        let out = self.state.store.delete(self.res, self.ns, name, &opts)?;
        let def = self.def();
        if out.finalized && !def.return_deleted_object {
            let mut details = serde_json::Map::new();
            details.insert("name".into(), json!(name));
            if !def.group.is_empty() {
                details.insert("group".into(), json!(def.group));
            }
            details.insert("kind".into(), json!(def.plural));
            details.insert(
                "uid".into(),
                out.object
                    .pointer("/metadata/uid")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            return ok(&json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }));
        }
        ok(&out.object)
    }

    fn delete_collection(&self) -> Result<Response, ApiError> {
        let opts = self.delete_opts()?;
        let lq = self.list_query()?;
        let list = self
            .state
            .store
            .delete_collection(self.res, self.ns, &lq, &opts)?;
        ok(&list)
    }

    fn token(&self, name: &str) -> Result<Response, ApiError> {
        let body = if self.body.is_empty() {
            json!({})
        } else {
            self.body_value()?
        };
        let ns = self.ns.unwrap_or("");
        let tr = self.state.store.create_token(ns, name, body)?;
        Ok(json_response(StatusCode::CREATED, &tr, &[]))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A bookmark object: kind, apiVersion and metadata.resourceVersion only.
pub fn bookmark_object(def: &ResourceDef, rv: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end && let Some(m) = metadata.as_object_mut() {
        m.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": metadata})
}

struct Watch {
    state: AppState,
    res: ResId,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    timeout: Option<Duration>,
    table: bool,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
}

impl Watch {
    fn def(&self) -> &'static ResourceDef {
        &RESOURCES[self.res]
    }

    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self.ns.as_deref().is_none_or(|ns| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        });
        ns_ok && self.labels.matches_object(obj) && self.fields.matches(self.def(), obj)
    }

    async fn send(&self, kind: &str, obj: &Value) -> bool {
        let line = if self.table && kind != "BOOKMARK" && kind != "ERROR" {
            event_line(kind, &table::object_to_table(self.def(), obj))
        } else {
            event_line(kind, obj)
        };
        self.tx.send(Ok(line)).await.is_ok()
    }

    /// Translate a stored event for this watcher, as the watch cache does: an object that
    /// starts or stops matching the selectors is sent as ADDED or DELETED.
    async fn process(&self, ev: &Event, last_rv: &mut u64) -> bool {
        if ev.rv <= *last_rv {
            return true;
        }
        *last_rv = ev.rv;
        let now = self.matches(&ev.object);
        let before = ev.prev.as_deref().is_some_and(|p| self.matches(p));
        let kind = match (ev.etype, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            (EventType::Deleted, true, _) => "DELETED",
            _ => return true,
        };
        self.send(kind, &ev.object).await
    }

    async fn run(self, mut stream: WatchStream) {
        let mut last_rv = stream.from_rv;
        for obj in std::mem::take(&mut stream.initial) {
            if self.matches(&obj) && !self.send("ADDED", &obj).await {
                return;
            }
        }
        if let Some(rv) = stream.initial_end
            && !self
                .send("BOOKMARK", &bookmark_object(self.def(), rv, true))
                .await
        {
            return;
        }
        for ev in std::mem::take(&mut stream.backlog) {
            if !self.process(&ev, &mut last_rv).await {
                return;
            }
        }
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let period = self.state.bookmark_interval.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let expire = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.state.shutdown.cancelled() => break,
                _ = expire => break,
                _ = self.tx.closed() => break,
                ev = stream.rx.recv() => match ev {
                    Some(ev) => {
                        if !self.process(&ev, &mut last_rv).await {
                            break;
                        }
                    }
                    None => break,
                },
                _ = ticker.tick(), if self.bookmarks => {
                    // Every event up to `current` is already queued (events are queued under
                    // the store lock), so after draining, `current` is a valid progress mark.
                    let current = self.state.store.current_rv();
                    while let Ok(ev) = stream.rx.try_recv() {
                        if !self.process(&ev, &mut last_rv).await {
                            return;
                        }
                    }
                    let rv = current.max(last_rv);
                    last_rv = rv;
                    if !self.send("BOOKMARK", &bookmark_object(self.def(), rv, false)).await {
                        break;
                    }
                }
            }
        }
    }
}
