//! The HTTP surface: parses every request path into discovery or a resource operation,
//! applies fault rules and the deny list, and serves get/list/watch/create/update/patch/
//! delete, dry-run, the `scale` and `status` subresources, DeploymentConfig `instantiate`,
//! SelfSubjectAccessReview and CRD registration. Bad input is always a `Status`, never a panic.

use crate::Shared;
use crate::catalog::{Catalog, ResourceDef};
use crate::crd::crd_def;
use crate::faults::FaultAction;
use crate::managed::{conflicts, pointer, record_manager, release_paths};
use crate::patch::{self, PatchError, PatchKind};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Store, now_rfc3339, set_rv, spec_part};
use crate::table;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type Res = Result<Response, ApiError>;

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Request-wide facts the operations need.
struct Req {
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    fn dry_run(&self) -> bool {
        self.q("dryRun").is_some_and(|v| v == "All")
    }
    fn json_body(&self) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Ok(v)
    }
    /// The manager a write is recorded under: `fieldManager`, else the User-Agent's program.
    fn manager(&self) -> String {
        if let Some(m) = self.q("fieldManager") {
            return m.to_string();
        }
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    }
}

/// The axum entry point for every path.
pub async fn dispatch(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let fault = shared
        .faults
        .lock()
        .map(|mut f| f.check(parts.method.as_str(), &path_q))
        .ok()
        .flatten();
    match fault {
        Some(FaultAction::Error(code)) => {
            let reason = if code == 503 {
                "ServiceUnavailable"
            } else {
                "InternalError"
            };
            return ApiError::new(code, reason, "fault injected by the fake API server")
                .into_response();
        }
        Some(FaultAction::TooManyRequests { retry_after_secs }) => {
            let mut e = ApiError::new(
                429,
                "TooManyRequests",
                "fault injected: too many requests, please try again later",
            );
            e.retry_after = Some(retry_after_secs);
            return e.into_response();
        }
        Some(FaultAction::Status {
            code,
            reason,
            message,
        }) => return ApiError::new(code, reason, message).into_response(),
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultAction::DropConnection) => {
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "fault injected",
                ))
            });
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(stream),
            )
                .into_response();
        }
        None => {}
    }
    if parts.method == Method::GET {
        let segs: Vec<String> = parts
            .uri
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if let [a, v, n, ns, p, pod, e] = segs.as_slice()
            && (a, v, n, p, e)
                == (
                    &"api".into(),
                    &"v1".into(),
                    &"namespaces".into(),
                    &"pods".into(),
                    &"exec".into(),
                )
        {
            return crate::exec::serve(shared.clone(), ns, pod, &mut parts).await;
        }
        if let [a, v, n, ns, p, pod, l] = segs.as_slice()
            && (a, v, n, p, l)
                == (
                    &"api".into(),
                    &"v1".into(),
                    &"namespaces".into(),
                    &"pods".into(),
                    &"log".into(),
                )
        {
            let allowed = shared
                .access
                .lock()
                .is_ok_and(|acc| acc.allowed("get", "pods/log", Some(ns)));
            if !allowed {
                return ApiError::forbidden("get", "", "pods/log", Some(ns)).into_response();
            }
            return crate::kubelet::serve_log(&shared, ns, pod, parts.uri.query().unwrap_or(""));
        }
    }
    let body = match axum::body::to_bytes(body, 256 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(format!("cannot read the request body: {e}"))
                .into_response();
        }
    };
    let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = if ct.contains("protobuf") {
        // Only the SelfSubjectAccessReview of `kubectl auth can-i` is understood in protobuf.
        match crate::protobuf::self_subject_access_review(&body) {
            Some(v) => Bytes::from(v.to_string()),
            None => return ApiError::unsupported_media_type(ct).into_response(),
        }
    } else if ct.contains("cbor") {
        return ApiError::unsupported_media_type(ct).into_response();
    } else {
        body
    };
    let r = Req {
        method: parts.method,
        query,
        headers: parts.headers,
        body,
    };
    match route(&shared, parts.uri.path(), &r) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn route(shared: &Arc<Shared>, path: &str, r: &Req) -> Res {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get_only = |v: Value| -> Res {
        if r.method != Method::GET {
            return Err(ApiError::method_not_allowed(path));
        }
        Ok(json_response(StatusCode::OK, &v))
    };
    let lock = || {
        shared
            .store
            .lock()
            .map_err(|_| ApiError::new(500, "InternalError", "store lock poisoned"))
    };
    match segs.as_slice() {
        ["version"] => get_only(Catalog::version_doc()),
        ["api"] => get_only(Catalog::api_versions_doc()),
        ["apis"] => get_only(lock()?.catalog.api_groups_doc()),
        ["healthz" | "readyz" | "livez"] => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
        }
        ["apis", group] => {
            let doc = lock()?
                .catalog
                .api_group_doc(group)
                .ok_or_else(|| ApiError::not_found_path(path))?;
            get_only(doc)
        }
        ["api", version] => {
            let doc = lock()?
                .catalog
                .resource_list_doc("", version)
                .ok_or_else(|| ApiError::not_found_path(path))?;
            get_only(doc)
        }
        ["apis", group, version] => {
            let doc = lock()?
                .catalog
                .resource_list_doc(group, version)
                .ok_or_else(|| ApiError::not_found_path(path))?;
            get_only(doc)
        }
        ["api", version, rest @ ..] => resource(shared, "", version, rest, r, path),
        ["apis", group, version, rest @ ..] => resource(shared, group, version, rest, r, path),
        _ => Err(ApiError::not_found_path(path)),
    }
}

/// What a resource path names.
struct Target {
    def: ResourceDef,
    /// The request's namespace; `None` for cluster resources and all-namespace lists.
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    fn ns(&self) -> &str {
        self.ns.as_deref().unwrap_or("")
    }
    fn key(&self) -> String {
        self.def.store_key()
    }
}

fn parse_target(
    store: &Store,
    group: &str,
    version: &str,
    rest: &[&str],
    path: &str,
) -> Result<Target, ApiError> {
    let namespaced_path =
        rest.len() >= 3 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize");
    let (ns, plural, name, sub, extra) = if namespaced_path {
        (
            Some(rest[1]),
            rest[2],
            rest.get(3),
            rest.get(4),
            rest.len() > 5,
        )
    } else {
        (None, rest[0], rest.get(1), rest.get(2), rest.len() > 3)
    };
    if extra {
        return Err(ApiError::not_found_path(path));
    }
    let def = store
        .catalog
        .find(group, version, plural)
        .cloned()
        .ok_or_else(|| ApiError::not_found_path(path))?;
    if ns.is_some() && !def.namespaced {
        return Err(ApiError::not_found_path(path));
    }
    if let Some(s) = sub
        && !def.has_sub(s)
    {
        return Err(ApiError::not_found_path(path));
    }
    // A namespaced resource named without a namespace is only a list across namespaces.
    if def.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::not_found_path(path));
    }
    Ok(Target {
        def,
        ns: ns.map(String::from),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    })
}

fn verb_of(r: &Req, t: &Target) -> &'static str {
    let watch = matches!(r.q("watch"), Some("true" | "1"));
    match (&r.method, t.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

fn resource(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    r: &Req,
    path: &str,
) -> Res {
    let t = {
        let store = shared
            .store
            .lock()
            .map_err(|_| ApiError::new(500, "InternalError", "store lock poisoned"))?;
        parse_target(&store, group, version, rest, path)?
    };
    let verb = verb_of(r, &t);
    let res_name = match &t.sub {
        Some(s) => format!("{}/{}", t.def.plural, s),
        None => t.def.plural.clone(),
    };
    let allowed = shared
        .access
        .lock()
        .map(|a| a.allowed(verb, &res_name, t.ns.as_deref()))
        .unwrap_or(true);
    if !allowed {
        return Err(ApiError::forbidden(verb, group, &res_name, t.ns.as_deref()));
    }
    if verb == "watch" {
        let w = crate::watch::WatchRequest {
            key: t.key(),
            ns: t.ns.clone(),
            rv: r.q("resourceVersion"),
            label_selector: r.q("labelSelector"),
            field_selector: r.q("fieldSelector"),
            timeout: r.q("timeoutSeconds"),
            table_kind: table::wants_table(&r.headers).then(|| t.def.kind.clone()),
        };
        return crate::watch::watch(shared, w);
    }
    let mut store = shared
        .store
        .lock()
        .map_err(|_| ApiError::new(500, "InternalError", "store lock poisoned"))?;
    let on_collection = t.name.is_none();
    if (on_collection && matches!(verb, "update" | "patch"))
        || (!on_collection && verb == "create" && t.sub.is_none())
    {
        return Err(ApiError::method_not_allowed(path));
    }
    let op = Op {
        shared,
        store: &mut store,
        t: &t,
        r,
    };
    match (verb, t.sub.as_deref()) {
        ("get", None) => op.get(),
        ("list", None) => op.list(),
        ("create", None) => op.create(),
        ("update", None) => op.update(None),
        ("patch", None) => op.patch(None),
        ("delete", None) => op.delete(),
        ("deletecollection", None) => op.delete_collection(),
        ("get", Some("status")) => op.get(),
        ("update", Some("status")) => op.update(Some("status")),
        ("patch", Some("status")) => op.patch(Some("status")),
        ("get", Some("scale")) => op.get_scale(),
        ("update" | "patch", Some("scale")) => op.write_scale(),
        ("create", Some("instantiate")) => op.instantiate(),
        _ => Err(ApiError::method_not_allowed(path)),
    }
}

struct Op<'a> {
    shared: &'a Arc<Shared>,
    store: &'a mut Store,
    t: &'a Target,
    r: &'a Req,
}

impl Op<'_> {
    fn name(&self) -> &str {
        self.t.name.as_deref().unwrap_or("")
    }

    fn current(&self) -> Result<Value, ApiError> {
        self.store
            .get(&self.t.key(), self.t.ns(), self.name())
            .cloned()
            .ok_or_else(|| ApiError::not_found(&self.t.def.group, &self.t.def.plural, self.name()))
    }

    fn get(&self) -> Res {
        let obj = self.current()?;
        if table::wants_table(&self.r.headers) && self.t.sub.is_none() {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Ok(json_response(
                StatusCode::OK,
                &table::table(&self.t.def.kind, std::slice::from_ref(&obj), rv, true),
            ));
        }
        Ok(json_response(StatusCode::OK, &obj))
    }

    fn list(&self) -> Res {
        let ls = LabelSelector::parse(self.r.q("labelSelector").unwrap_or(""))?;
        let fs = FieldSelector::parse(self.r.q("fieldSelector").unwrap_or(""))?;
        let items: Vec<Value> = self
            .store
            .list(&self.t.key(), self.t.ns.as_deref())
            .filter(|o| ls.matches(o) && fs.matches(o))
            .cloned()
            .collect();
        if table::wants_table(&self.r.headers) {
            let t = table::table(&self.t.def.kind, &items, &self.store.rv.to_string(), true);
            return Ok(json_response(StatusCode::OK, &t));
        }
        let list = json!({
            "kind": format!("{}List", self.t.def.kind),
            "apiVersion": self.t.def.api_version(),
            "metadata": { "resourceVersion": self.store.rv.to_string() },
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    /// Fills server-set fields of a new object and stores it (unless dry-run).
    fn create_object(&mut self, mut obj: Value, manager: &str) -> Result<Value, ApiError> {
        let def = &self.t.def;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            let Some(prefix) = obj["metadata"]["generateName"]
                .as_str()
                .filter(|p| !p.is_empty())
            else {
                return Err(ApiError::invalid(
                    &def.group,
                    &def.plural,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(5)
                .collect();
            name = format!("{prefix}{suffix}");
            obj["metadata"]["name"] = json!(name);
        }
        if let Some(want) = self.t.name.as_deref()
            && want != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({want})"
            )));
        }
        if def.namespaced {
            let ns = self.t.ns();
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
        }
        if def.namespaced
            && self.store.strict_namespaces
            && self.store.get("/namespaces", "", self.t.ns()).is_none()
        {
            return Err(ApiError::not_found("", "namespaces", self.t.ns()));
        }
        if self
            .store
            .get(&def.store_key(), self.t.ns(), &name)
            .is_some()
        {
            return Err(ApiError::already_exists(&def.group, &def.plural, &name));
        }
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            crd_def(&obj)?;
        }
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!(def.kind);
        let m = &mut obj["metadata"];
        m["uid"] = json!(uuid::Uuid::new_v4().to_string());
        m["creationTimestamp"] = json!(now_rfc3339());
        m["generation"] = json!(1);
        if let Some(o) = m.as_object_mut() {
            o.remove("resourceVersion");
            o.remove("deletionTimestamp");
        }
        let mut paths = Vec::new();
        patch::leaf_paths(&spec_part(&obj), "", &mut paths);
        record_manager(
            &mut obj,
            manager,
            if self.r.method == Method::PATCH {
                "Apply"
            } else {
                "Update"
            },
            &paths,
        );
        if self.r.dry_run() {
            set_rv(&mut obj, self.store.rv);
            return Ok(obj);
        }
        let rv = self.store.next_rv();
        set_rv(&mut obj, rv);
        if let Ok(new_def) =
            crd_def(&obj).map(|d| d.filter(|_| def.plural == "customresourcedefinitions"))
        {
            for d in new_def.into_iter().flatten() {
                self.store.catalog.register(d);
            }
        }
        self.store.put(
            &self.shared.events,
            (&def.store_key(), self.t.ns(), &name),
            obj.clone(),
            rv,
            "ADDED",
        );
        Ok(obj)
    }

    fn create(mut self) -> Res {
        if self.t.def.kind == "SelfSubjectAccessReview" {
            return self.access_review();
        }
        let obj = self.r.json_body()?;
        let manager = self.r.manager();
        let out = self.create_object(obj, &manager)?;
        Ok(json_response(StatusCode::CREATED, &out))
    }

    /// Stores `new` as the next version of `old`: keeps identity, bumps generation on a
    /// spec change, keeps status on the main resource and takes only status on `status`.
    fn commit_update(
        &mut self,
        old: &Value,
        mut new: Value,
        sub: Option<&str>,
        manager: &str,
        operation: &str,
    ) -> Result<Value, ApiError> {
        let def = &self.t.def;
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if sub == Some("status") {
            let mut merged = old.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            new = merged;
        } else if def.has_sub("status") {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        if new["metadata"]["name"].as_str() != Some(self.name()) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                new["metadata"]["name"].as_str().unwrap_or(""),
                self.name()
            )));
        }
        for k in ["uid", "creationTimestamp", "namespace", "generation"] {
            new["metadata"][k] = old["metadata"][k].clone();
        }
        if let Some(o) = new["metadata"].as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        new["apiVersion"] = json!(def.api_version());
        new["kind"] = json!(def.kind);
        if spec_part(old) != spec_part(&new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let mut changed = Vec::new();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        patch::leaf_paths(&spec_part(&new), "", &mut a);
        patch::leaf_paths(&spec_part(old), "", &mut b);
        for p in a {
            if !b.contains(&p) || pointer(&new, &p) != pointer(old, &p) {
                changed.push(p);
            }
        }
        if !changed.is_empty() || operation == "Apply" {
            record_manager(&mut new, manager, operation, &changed);
        }
        if self.r.dry_run() {
            return Ok(new);
        }
        let rv = self.store.next_rv();
        set_rv(&mut new, rv);
        let t = self.t;
        self.store.put(
            &self.shared.events,
            (&def.store_key(), t.ns(), t.name.as_deref().unwrap_or("")),
            new.clone(),
            rv,
            "MODIFIED",
        );
        Ok(new)
    }

    fn check_rv(&self, old: &Value, new: &Value) -> Result<(), ApiError> {
        let want = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let have = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !want.is_empty() && want != have {
            return Err(ApiError::conflict(
                &self.t.def.group,
                &self.t.def.plural,
                self.name(),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Ok(())
    }

    fn update(mut self, sub: Option<&str>) -> Res {
        let new = self.r.json_body()?;
        let old = self.current()?;
        self.check_rv(&old, &new)?;
        let manager = self.r.manager();
        let out = self.commit_update(&old, new, sub, &manager, "Update")?;
        Ok(json_response(StatusCode::OK, &out))
    }

    fn patch_kind(&self) -> Result<PatchKind, ApiError> {
        let ct = self
            .r
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        PatchKind::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))
    }

    fn patch_body(&self, kind: PatchKind) -> Result<Value, ApiError> {
        if kind == PatchKind::Apply {
            return serde_yaml::from_slice(&self.r.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
        }
        serde_json::from_slice(&self.r.body)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))
    }

    /// Applies a patch document of `kind` to `target`.
    fn apply_patch(
        &self,
        kind: PatchKind,
        target: &mut Value,
        body: &Value,
    ) -> Result<(), ApiError> {
        let def = &self.t.def;
        match kind {
            PatchKind::Merge => patch::merge(target, body),
            PatchKind::Strategic | PatchKind::Apply => patch::strategic(target, body),
            PatchKind::Json => patch::json_patch(target, body).map_err(|e| match e {
                PatchError::Malformed(m) => ApiError::bad_request(m),
                PatchError::Failed(m) => {
                    ApiError::invalid(&def.group, &def.plural, self.name(), &m)
                }
            })?,
        }
        Ok(())
    }

    fn patch(mut self, sub: Option<&str>) -> Res {
        let kind = self.patch_kind()?;
        let body = self.patch_body(kind)?;
        if kind == PatchKind::Apply {
            return self.server_side_apply(body, sub);
        }
        let old = self.current()?;
        let mut new = old.clone();
        self.apply_patch(kind, &mut new, &body)?;
        self.check_rv(&old, &new)?;
        let manager = self.r.manager();
        let out = self.commit_update(&old, new, sub, &manager, "Update")?;
        Ok(json_response(StatusCode::OK, &out))
    }

    fn server_side_apply(mut self, body: Value, sub: Option<&str>) -> Res {
        let def = self.t.def.clone();
        let Some(manager) = self
            .r
            .q("fieldManager")
            .filter(|m| !m.is_empty())
            .map(String::from)
        else {
            return Err(ApiError::invalid(
                &def.group,
                &def.plural,
                self.name(),
                "fieldManager: Required value: is required for apply patch",
            ));
        };
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration must be an object",
            ));
        }
        let force = matches!(self.r.q("force"), Some("true" | "1"));
        let old = match self.store.get(&def.store_key(), self.t.ns(), self.name()) {
            Some(o) => o.clone(),
            None => {
                let out = self.create_object(body, &manager)?;
                return Ok(json_response(StatusCode::CREATED, &out));
            }
        };
        let mut applied = Vec::new();
        patch::leaf_paths(&spec_part(&body), "", &mut applied);
        if !force {
            let conflicts = conflicts(&old, &body, &manager, &applied);
            if !conflicts.is_empty() {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflict(s): {}",
                        conflicts.len(),
                        conflicts.join("; ")
                    ),
                ));
            }
        }
        let mut new = old.clone();
        let mut clean = body.clone();
        if let Some(m) = clean["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        self.apply_patch(PatchKind::Apply, &mut new, &clean)?;
        self.check_rv(&old, &body)?;
        release_paths(&mut new, &manager, &applied);
        let out = self.commit_update(&old, new, sub, &manager, "Apply")?;
        Ok(json_response(StatusCode::OK, &out))
    }

    fn delete(mut self) -> Res {
        let old = self.current()?;
        // DeleteOptions may carry preconditions on uid and resourceVersion.
        if !self.r.body.is_empty() {
            let opts = self.r.json_body()?;
            for (field, ptr) in [
                ("uid", "/metadata/uid"),
                ("resourceVersion", "/metadata/resourceVersion"),
            ] {
                if let Some(want) = opts
                    .pointer(&format!("/preconditions/{field}"))
                    .and_then(Value::as_str)
                    && old.pointer(ptr).and_then(Value::as_str) != Some(want)
                {
                    let have = old.pointer(ptr).and_then(Value::as_str).unwrap_or("");
                    let why =
                        format!("Precondition failed: {field}: {want}, object has {field}: {have}");
                    return Err(ApiError::conflict(
                        &self.t.def.group,
                        &self.t.def.plural,
                        self.name(),
                        &why,
                    ));
                }
            }
        }
        let out = self.delete_object(old)?;
        Ok(json_response(StatusCode::OK, &out))
    }

    fn delete_object(&mut self, mut old: Value) -> Result<Value, ApiError> {
        if self.r.dry_run() {
            return Ok(old);
        }
        let key = self.t.key();
        let ns = old
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = old
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if key == "/pods" && crate::kubelet::runs_processes(&old) {
            return Ok(self.delete_pod_gracefully(old, &ns, &name));
        }
        let rv = self.store.next_rv();
        set_rv(&mut old, rv);
        self.store.put(
            &self.shared.events,
            (&key, &ns, &name),
            old.clone(),
            rv,
            "DELETED",
        );
        if self.t.def.plural == "namespaces" && self.t.def.group.is_empty() {
            // Everything in a deleted namespace goes with it.
            let doomed: Vec<(String, Value)> = self
                .store
                .objects
                .iter()
                .flat_map(|(k, m)| {
                    m.iter()
                        .filter(|((n, _), _)| *n == name)
                        .map(move |(_, v)| (k.clone(), v.clone()))
                })
                .collect();
            for (k, mut v) in doomed {
                let n = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let rv = self.store.next_rv();
                set_rv(&mut v, rv);
                self.store
                    .put(&self.shared.events, (&k, &name, &n), v, rv, "DELETED");
            }
        }
        if let Some(defs) = crd_def(&old)
            .ok()
            .flatten()
            .filter(|_| self.t.def.plural == "customresourcedefinitions")
        {
            for d in defs {
                self.store.catalog.unregister(&d.group, &d.plural);
                self.store.objects.remove(&d.store_key());
            }
        }
        Ok(old)
    }

    /// A pod whose containers run processes is not removed at once: it gets
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` (DeleteOptions'
    /// `gracePeriodSeconds`, else the pod's `terminationGracePeriodSeconds`, else 30) and
    /// stays Terminating until the kubelet has stopped its processes (kubelet.rs).
    fn delete_pod_gracefully(&mut self, mut pod: Value, ns: &str, name: &str) -> Value {
        let asked = self
            .r
            .q("gracePeriodSeconds")
            .and_then(|g| g.parse::<u64>().ok())
            .or_else(|| {
                serde_json::from_slice::<Value>(&self.r.body)
                    .ok()
                    .and_then(|o| o["gracePeriodSeconds"].as_u64())
            });
        let current = pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_u64);
        let grace = asked
            .or_else(|| {
                pod.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_u64)
            })
            .unwrap_or(crate::kubelet::DEFAULT_GRACE_SECONDS);
        if pod.pointer("/metadata/deletionTimestamp").is_some()
            && current.is_some_and(|c| c <= grace)
        {
            return pod;
        }
        if pod.pointer("/metadata/deletionTimestamp").is_none() {
            pod["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        }
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if let Some(cs) = pod["status"]["conditions"].as_array_mut() {
            for c in cs {
                if c["type"] == "Ready" {
                    c["status"] = json!("False");
                }
            }
        }
        let rv = self.store.next_rv();
        set_rv(&mut pod, rv);
        self.store.put(
            &self.shared.events,
            ("/pods", ns, name),
            pod.clone(),
            rv,
            "MODIFIED",
        );
        pod
    }

    fn delete_collection(mut self) -> Res {
        let ls = LabelSelector::parse(self.r.q("labelSelector").unwrap_or(""))?;
        let fs = FieldSelector::parse(self.r.q("fieldSelector").unwrap_or(""))?;
        let doomed: Vec<Value> = self
            .store
            .list(&self.t.key(), self.t.ns.as_deref())
            .filter(|o| ls.matches(o) && fs.matches(o))
            .cloned()
            .collect();
        let mut items = Vec::new();
        for o in doomed {
            items.push(self.delete_object(o)?);
        }
        let list = json!({
            "kind": format!("{}List", self.t.def.kind),
            "apiVersion": self.t.def.api_version(),
            "metadata": { "resourceVersion": self.store.rv.to_string() },
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    /// The Scale of the target: autoscaling/v1, or extensions/v1beta1 for DeploymentConfigs.
    fn scale_of(&self, obj: &Value) -> Value {
        let openshift = self.t.def.group == "apps.openshift.io";
        let selector_map = if openshift || self.t.def.kind == "ReplicationController" {
            obj.pointer("/spec/selector").cloned()
        } else {
            obj.pointer("/spec/selector/matchLabels").cloned()
        }
        .unwrap_or(json!({}));
        let selector_str = selector_map
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let replicas = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let status_replicas = obj
            .pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let meta = json!({
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        });
        if openshift {
            json!({
                "kind": "Scale",
                "apiVersion": "extensions/v1beta1",
                "metadata": meta,
                "spec": { "replicas": replicas },
                "status": { "replicas": status_replicas, "selector": selector_map, "targetSelector": selector_str },
            })
        } else {
            json!({
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": meta,
                "spec": { "replicas": replicas },
                "status": { "replicas": status_replicas, "selector": selector_str },
            })
        }
    }

    fn get_scale(&self) -> Res {
        Ok(json_response(
            StatusCode::OK,
            &self.scale_of(&self.current()?),
        ))
    }

    fn write_scale(mut self) -> Res {
        let old = self.current()?;
        let scale = self.scale_of(&old);
        let new_scale = if self.r.method == Method::PATCH {
            let kind = self.patch_kind()?;
            let body = self.patch_body(kind)?;
            let mut s = scale.clone();
            self.apply_patch(kind, &mut s, &body)?;
            s
        } else {
            self.r.json_body()?
        };
        self.check_rv(&old, &new_scale)?;
        let def = &self.t.def;
        let replicas = new_scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .filter(|r| *r >= 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    &def.group,
                    &def.plural,
                    self.name(),
                    "spec.replicas: Invalid value: must be a non-negative integer",
                )
            })?;
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        let manager = self.r.manager();
        let out = self.commit_update(&old, new, None, &manager, "Update")?;
        Ok(json_response(StatusCode::OK, &self.scale_of(&out)))
    }

    /// `oc rollout latest`: bumps `status.latestVersion` of a DeploymentConfig.
    fn instantiate(mut self) -> Res {
        let old = self.current()?;
        let req = self.r.json_body()?;
        if req["name"].as_str().is_some_and(|n| n != self.name()) {
            return Err(ApiError::bad_request(
                "the DeploymentRequest's name does not match the URL",
            ));
        }
        let mut new = old.clone();
        let latest = old
            .pointer("/status/latestVersion")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        new["status"]["latestVersion"] = json!(latest + 1);
        let manager = self.r.manager();
        let out = self.commit_update(&old, new, Some("status"), &manager, "Update")?;
        Ok(json_response(StatusCode::CREATED, &out))
    }

    /// SelfSubjectAccessReview: answers from the deny list; stores nothing.
    fn access_review(self) -> Res {
        let mut review = self.r.json_body()?;
        let attrs = review
            .pointer("/spec/resourceAttributes")
            .cloned()
            .unwrap_or(Value::Null);
        let (allowed, reason) = if attrs.is_object() {
            let verb = attrs["verb"].as_str().unwrap_or("");
            let mut res = attrs["resource"].as_str().unwrap_or("").to_string();
            if let Some(sub) = attrs["subresource"].as_str().filter(|s| !s.is_empty()) {
                res = format!("{res}/{sub}");
            }
            let ns = attrs["namespace"].as_str().filter(|s| !s.is_empty());
            let ok = self
                .shared
                .access
                .lock()
                .map(|a| a.allowed(verb, &res, ns))
                .unwrap_or(true);
            (
                ok,
                if ok {
                    "allowed by the fake API server"
                } else {
                    "denied by the fake API server's deny list"
                },
            )
        } else {
            (true, "non-resource request: allowed")
        };
        review["apiVersion"] = json!("authorization.k8s.io/v1");
        review["kind"] = json!("SelfSubjectAccessReview");
        review["metadata"]["creationTimestamp"] = Value::Null;
        review["status"] = json!({ "allowed": allowed, "reason": reason });
        if !allowed {
            review["status"]["denied"] = json!(true);
        }
        Ok(json_response(StatusCode::CREATED, &review))
    }
}

pub(crate) fn stream_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn watch_timeout(t: Option<&str>) -> Result<Option<Duration>, ApiError> {
    match t {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(|n| Some(Duration::from_secs(n)))
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}"))),
    }
}
