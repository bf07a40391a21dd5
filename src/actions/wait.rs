//! The `wait` action and the built-in conditions it shares with `done_if`:
//! the grammar of `for` ([`parse_condition`]), a small JSONPath subset
//! ([`parse_jsonpath`]), the judgement of one object ([`judge`]), one
//! evaluation against the cluster ([`check_once`], what `done_if` uses on
//! resume), and the deadline every waiting Kubernetes action
//! (`scale`, `rollout`, `wait`, `delete`) polls against ([`Deadline`]).
//!
//! Grammar of `for`:
//! - `condition=Type`: the object's condition `Type` has status `True`;
//!   `condition=Type=Value` another status (case-insensitive). A missing
//!   condition is not met, nor is one of an object whose controller has not
//!   yet observed its latest spec (`status.observedGeneration` below
//!   `metadata.generation`: a workload just scaled up still says
//!   `Available` from before), nor a condition whose own
//!   `observedGeneration` is below `metadata.generation`.
//! - `jsonpath={.status.phase}=Running`: the field's value, as text
//!   (numbers and booleans as written in JSON), equals `Running`;
//!   `jsonpath={.status.loadBalancer}` alone: the field is present and not
//!   null. Paths: dotted fields, `[N]` indices, `['key.with.dots']`.
//! - `exists`: the object exists; `delete`: it does not (for a selector:
//!   nothing matches).
//! - `replicas=N`: N ready replicas (`status.readyReplicas`, a DaemonSet's
//!   `status.numberReady`; absent counts as 0, as the API omits zeros).
//! - `ready`: a Pod's `Ready` condition is True; a workload has every
//!   desired replica ready (its spec observed); other kinds: `Ready` True.
//!
//! With a selector every matching object must satisfy the condition, and
//! a selector that matches nothing is not met (except for `delete`).

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use kube::api::{DynamicObject, ListParams};
use serde_json::Value;

use super::{ActionResult, AttemptCx, Failure};
use crate::cluster::{Cluster, Op, Resolved, describe, is_transient};
use crate::spec::raw::WaitAction;

/// How often waiting actions look again.
pub const POLL: Duration = Duration::from_millis(200);

/// How long a waiting action waits when its step has no `timeout`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// What `for` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `condition=Type[=Value]`.
    Status {
        /// Condition type.
        kind: String,
        /// Wanted status (`True` by default).
        status: String,
    },
    /// `jsonpath={...}[=value]`.
    JsonPath {
        /// The path as written.
        text: String,
        /// Parsed.
        path: Vec<Segment>,
        /// Wanted value as text; `None`: present and not null.
        value: Option<String>,
    },
    /// The object exists.
    Exists,
    /// The object is gone.
    Delete,
    /// That many ready replicas.
    Replicas(i64),
    /// Ready (kind-dependent, see the module doc).
    Ready,
}

/// One step of a JSONPath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A map key.
    Field(String),
    /// A list index.
    Index(usize),
}

/// Parses the `for` of a `wait` or a `done_if` condition.
pub fn parse_condition(text: &str) -> Result<Condition, String> {
    let text = text.trim();
    if text == "exists" {
        return Ok(Condition::Exists);
    }
    if text == "delete" || text == "deleted" {
        return Ok(Condition::Delete);
    }
    if text == "ready" {
        return Ok(Condition::Ready);
    }
    if let Some(rest) = text.strip_prefix("condition=") {
        let (kind, status) = match rest.split_once('=') {
            Some((kind, status)) => (kind.trim(), status.trim()),
            None => (rest.trim(), "True"),
        };
        if kind.is_empty() || status.is_empty() {
            return Err(format!(
                "`{text}`: give a condition type, e.g. `condition=Available`"
            ));
        }
        return Ok(Condition::Status {
            kind: kind.to_owned(),
            status: status.to_owned(),
        });
    }
    if let Some(rest) = text.strip_prefix("replicas=") {
        return rest
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Condition::Replicas)
            .ok_or_else(|| format!("`{text}`: the replica count must be a whole number >= 0"));
    }
    if let Some(rest) = text.strip_prefix("jsonpath=") {
        // the path may be quoted as on a kubectl command line
        let unquoted = match rest.trim().strip_prefix('\'') {
            Some(r) => r.replacen('\'', "", 1),
            None => rest.trim().to_owned(),
        };
        let rest = unquoted.as_str();
        let (path_text, value) = if rest.starts_with('{') {
            let end = rest
                .find('}')
                .ok_or_else(|| format!("`{text}`: the path has no closing `}}`"))?;
            let value = rest[end + 1..].trim();
            let value = match value.strip_prefix('=') {
                Some(v) => Some(v.trim().trim_matches(|c| c == '\'' || c == '"').to_owned()),
                None if value.is_empty() => None,
                None => return Err(format!("`{text}`: expected `=VALUE` after the path")),
            };
            (&rest[..=end], value)
        } else {
            match rest.split_once('=') {
                Some((p, v)) => (p, Some(v.trim().to_owned())),
                None => (rest, None),
            }
        };
        let path = parse_jsonpath(path_text).map_err(|e| format!("`{text}`: {e}"))?;
        return Ok(Condition::JsonPath {
            text: path_text.trim().to_owned(),
            path,
            value,
        });
    }
    Err(format!(
        "`{text}` is none of `condition=TYPE[=STATUS]`, `jsonpath={{PATH}}[=VALUE]`, `exists`, `delete`, `replicas=N`, `ready`"
    ))
}

/// Parses a JSONPath of the subset `wait` understands: `{.a.b[0]['c.d']}`
/// (braces and a leading `$` optional).
pub fn parse_jsonpath(text: &str) -> Result<Vec<Segment>, String> {
    let mut rest = text.trim();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner
            .strip_suffix('}')
            .ok_or("the path has no closing `}`")?
            .trim();
    }
    rest = rest.strip_prefix('$').unwrap_or(rest);
    let chars: Vec<char> = rest.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                if name.is_empty() {
                    return Err(format!("empty field name at position {start} of `{text}`"));
                }
                if name.contains(['*', '?', '@', '(', ')', ' ']) {
                    return Err(format!(
                        "`{name}`: only plain fields, `[N]` and `['key']` are supported"
                    ));
                }
                out.push(Segment::Field(name));
                i = end;
            }
            '[' => {
                let close = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .map(|p| p + i)
                    .ok_or_else(|| format!("unclosed `[` in `{text}`"))?;
                let inner: String = chars[i + 1..close].iter().collect();
                let inner = inner.trim();
                let quoted = (inner.starts_with('\'') && inner.ends_with('\''))
                    || (inner.starts_with('"') && inner.ends_with('"'));
                if quoted && inner.len() >= 2 {
                    out.push(Segment::Field(inner[1..inner.len() - 1].to_owned()));
                } else {
                    let index = inner.parse::<usize>().map_err(|_| {
                        format!("`[{inner}]`: only `[N]` indices and `['key']` are supported")
                    })?;
                    out.push(Segment::Index(index));
                }
                i = close + 1;
            }
            c => {
                return Err(format!(
                    "unexpected `{c}` in `{text}`: paths look like `{{.status.phase}}`"
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("`{text}` names no field"));
    }
    Ok(out)
}

/// The value at `path` in `object`, if present.
pub fn lookup<'a>(object: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter()
        .try_fold(object, |value, segment| match segment {
            Segment::Field(name) => value.get(name),
            Segment::Index(i) => value.get(*i),
        })
}

/// A JSON value as `kubectl get -o jsonpath` prints it.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn int_at(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}

/// The condition `kind` of an object's `status.conditions`.
pub fn condition_of<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| {
            c.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case(kind))
        })
}

fn describe_condition(c: &Value) -> String {
    let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
    let mut s = format!("{} is {}", text("type"), text("status"));
    match (text("reason"), text("message")) {
        ("", "") => {}
        (reason, "") => s.push_str(&format!(" ({reason})")),
        ("", message) => s.push_str(&format!(" ({message})")),
        (reason, message) => s.push_str(&format!(" ({reason}: {message})")),
    }
    s
}

/// Whether one existing object of kind `kind` satisfies `condition`, and
/// what was seen (for the error of a wait that timed out).
pub fn judge(kind: &str, object: &Value, condition: &Condition) -> (bool, String) {
    match condition {
        Condition::Exists => (true, "exists".into()),
        Condition::Delete => (
            false,
            if object.pointer("/metadata/deletionTimestamp").is_some() {
                "still exists (terminating)".into()
            } else {
                "still exists".into()
            },
        ),
        Condition::Status { kind: ty, status } => {
            if let Some(stale) = stale_status(object) {
                return (false, stale);
            }
            match condition_of(object, ty) {
                None => (false, format!("condition {ty} is missing")),
                Some(c) => {
                    if let Some(stale) = stale_condition(object, c) {
                        return (false, stale);
                    }
                    let actual = c.get("status").and_then(Value::as_str).unwrap_or("");
                    (
                        actual.eq_ignore_ascii_case(status),
                        format!("condition {}", describe_condition(c)),
                    )
                }
            }
        }
        Condition::JsonPath { text, path, value } => {
            // a Secret's values never reach a log or an error
            let shown = |v: &Value| {
                if kind == "Secret" {
                    "set (a Secret's value: not shown)".to_owned()
                } else {
                    format!("`{}`", as_text(v))
                }
            };
            match (lookup(object, path), value) {
                (None | Some(Value::Null), _) => (false, format!("{text} is missing")),
                (Some(found), None) => (true, format!("{text} is {}", shown(found))),
                (Some(found @ (Value::Array(_) | Value::Object(_))), Some(want)) => (
                    false,
                    format!(
                        "{text} is a list or map ({}), not a value comparable to `{want}`",
                        shown(found)
                    ),
                ),
                (Some(found), Some(want)) => (
                    &as_text(found) == want,
                    format!("{text} is {} (want `{want}`)", shown(found)),
                ),
            }
        }
        Condition::Replicas(want) => {
            let ready = ready_replicas(kind, object);
            (
                ready == *want,
                format!("{ready} ready replica(s), want {want}"),
            )
        }
        Condition::Ready => judge_ready(kind, object),
    }
}

/// Why an object's conditions are not yet about its current spec: its
/// controller reports `status.observedGeneration` below
/// `metadata.generation` (a Deployment just scaled up still says
/// Available from before). `None` when current, or when the object does not
/// report an observed generation.
fn stale_status(object: &Value) -> Option<String> {
    let generation = int_at(object, "/metadata/generation")?;
    let observed = int_at(object, "/status/observedGeneration")?;
    (observed < generation).then(|| {
        format!("status not yet updated for the latest change (observedGeneration {observed} < generation {generation})")
    })
}

/// Why a condition is about an older spec: it carries its own
/// `observedGeneration` (as `metav1.Condition` does; custom resources often
/// report no `status.observedGeneration` at all) below
/// `metadata.generation`.
fn stale_condition(object: &Value, condition: &Value) -> Option<String> {
    let generation = int_at(object, "/metadata/generation")?;
    let observed = condition
        .get("observedGeneration")
        .and_then(Value::as_i64)?;
    (observed < generation).then(|| {
        format!(
            "condition {}, but for an older change (its observedGeneration {observed} < generation {generation})",
            describe_condition(condition)
        )
    })
}

fn ready_replicas(kind: &str, object: &Value) -> i64 {
    if kind == "DaemonSet" {
        int_at(object, "/status/numberReady").unwrap_or(0)
    } else {
        int_at(object, "/status/readyReplicas").unwrap_or(0)
    }
}

fn judge_ready(kind: &str, object: &Value) -> (bool, String) {
    let observed = || {
        let generation = int_at(object, "/metadata/generation").unwrap_or(0);
        let observed = int_at(object, "/status/observedGeneration").unwrap_or(0);
        (
            observed >= generation,
            format!("observedGeneration {observed} < generation {generation}"),
        )
    };
    match kind {
        "Pod" => {
            if object.pointer("/metadata/deletionTimestamp").is_some() {
                return (false, "terminating".into());
            }
            judge(
                kind,
                object,
                &Condition::Status {
                    kind: "Ready".into(),
                    status: "True".into(),
                },
            )
        }
        "DaemonSet" => {
            let (seen, why) = observed();
            if !seen {
                return (false, why);
            }
            let Some(desired) = int_at(object, "/status/desiredNumberScheduled") else {
                return (false, "status.desiredNumberScheduled is missing".into());
            };
            let ready = ready_replicas(kind, object);
            (
                ready == desired,
                format!("{ready} of {desired} scheduled pod(s) ready"),
            )
        }
        _ if object.pointer("/spec/replicas").is_some()
            || [
                "Deployment",
                "StatefulSet",
                "ReplicaSet",
                "DeploymentConfig",
            ]
            .contains(&kind) =>
        {
            let (seen, why) = observed();
            if !seen {
                return (false, why);
            }
            let desired = int_at(object, "/spec/replicas").unwrap_or(1);
            let ready = ready_replicas(kind, object);
            (
                ready >= desired,
                format!("{ready} of {desired} replica(s) ready"),
            )
        }
        _ => judge(
            kind,
            object,
            &Condition::Status {
                kind: "Ready".into(),
                status: "True".into(),
            },
        ),
    }
}

/// The limit a waiting action polls against: just before the step's
/// `timeout` (so that the action, not the engine, reports what it saw
/// last), else [`DEFAULT_WAIT`].
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    limit: Duration,
    /// The step's timeout, if it has one.
    step_timeout: Option<Duration>,
}

impl Deadline {
    /// The deadline of the current attempt.
    pub fn of_step(cx: &AttemptCx) -> Deadline {
        Deadline::new(cx.step().timeout)
    }

    /// A deadline for a step timeout (or none).
    pub fn new(timeout: Option<Duration>) -> Deadline {
        let limit = match timeout {
            // leave a little of the step's time to report what was seen
            Some(t) => t.saturating_sub((t / 10).min(Duration::from_secs(2))),
            None => DEFAULT_WAIT,
        };
        Deadline {
            at: Instant::now() + limit,
            limit,
            step_timeout: timeout,
        }
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Sleeps one poll interval (less if the deadline comes first).
    pub async fn pause(&self) {
        let left = self.at.saturating_duration_since(Instant::now());
        tokio::time::sleep(POLL.min(left)).await;
    }

    /// "within the step's timeout (2s)" / "within 10m (the default ...)".
    pub fn describe(&self) -> String {
        if let Some(timeout) = self.step_timeout {
            format!(
                "within the step's timeout ({})",
                crate::model::fmt_duration(timeout)
            )
        } else {
            format!(
                "within {} (the default limit of a step without `timeout`; set `timeout:` on the step to wait longer)",
                crate::model::fmt_duration(self.limit)
            )
        }
    }
}

/// Where an object or a set of objects is, for messages.
pub struct Place<'a> {
    /// The kind resolved.
    pub resolved: &'a Resolved,
    /// Its namespace (ignored for cluster-scoped kinds).
    pub namespace: &'a str,
}

impl Place<'_> {
    /// `deployment/web in namespace `ns``, `deployments -l app=web in ...`.
    pub fn describe(&self, name: Option<&str>, selector: Option<&str>) -> String {
        let kind = self.resolved.resource.kind.to_ascii_lowercase();
        let what = match (name, selector) {
            (Some(name), _) => format!("{kind}/{name}"),
            (None, Some(selector)) => format!("{kind} objects matching `{selector}`"),
            (None, None) => kind,
        };
        if self.resolved.namespaced() {
            format!("{what} in namespace `{}`", self.namespace)
        } else {
            what
        }
    }

    fn ns(&self) -> Option<&str> {
        self.resolved.namespaced().then_some(self.namespace)
    }

    /// An operation on this place, for error messages.
    pub fn op(&self, verb: &str) -> Op {
        Op::new(verb, &self.resolved.resource_name(), self.ns())
    }
}

/// A request that failed: transient ones are tried again while waiting.
pub struct Refused {
    /// The operator's line.
    pub failure: Failure,
    /// Whether another try may succeed.
    pub transient: bool,
}

impl Refused {
    /// From a kube error on `op`.
    pub fn of(error: &kube::Error, op: &Op) -> Refused {
        Refused {
            failure: describe(error, op),
            transient: is_transient(error),
        }
    }
}

/// The objects a `name` or `selector` addresses (none when the named one
/// is missing).
pub async fn fetch(
    cluster: &Cluster,
    place: &Place<'_>,
    name: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<DynamicObject>, Refused> {
    let api = cluster.api(place.resolved, place.namespace);
    match (name, selector) {
        (Some(name), _) => {
            let op = place.op("get").named(name);
            api.get_opt(name)
                .await
                .map(|o| o.into_iter().collect())
                .map_err(|e| Refused::of(&e, &op))
        }
        (None, Some(selector)) => {
            let op = place.op("list");
            let mut items = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| Refused::of(&e, &op))?
                .items;
            items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            Ok(items)
        }
        (None, None) => Err(Refused {
            failure: Failure::permanent("names no object: give `name` or `selector`"),
            transient: false,
        }),
    }
}

/// Whether the objects (as fetched for `name` or `selector`) satisfy
/// `condition`, and what was seen.
pub fn judge_all(
    kind: &str,
    objects: &[DynamicObject],
    condition: &Condition,
    by_selector: bool,
) -> (bool, String) {
    if objects.is_empty() {
        return match condition {
            Condition::Delete => (true, "gone".into()),
            _ if by_selector => (false, "nothing matches the selector".into()),
            _ => (false, "not found".into()),
        };
    }
    let mut unmet = Vec::new();
    for object in objects {
        let value = serde_json::to_value(object).unwrap_or(Value::Null);
        let (met, seen) = judge(kind, &value, condition);
        if !met {
            if objects.len() == 1 {
                return (false, seen);
            }
            unmet.push(format!(
                "{}: {seen}",
                object.metadata.name.as_deref().unwrap_or("?")
            ));
        }
    }
    if unmet.is_empty() {
        let seen = if objects.len() == 1 {
            let value = serde_json::to_value(&objects[0]).unwrap_or(Value::Null);
            judge(kind, &value, condition).1
        } else {
            format!("all {} objects", objects.len())
        };
        (true, seen)
    } else {
        let shown: Vec<String> = unmet.iter().take(5).cloned().collect();
        let more = unmet.len().saturating_sub(5);
        let mut seen = format!(
            "{} of {} not yet: {}",
            unmet.len(),
            objects.len(),
            shown.join("; ")
        );
        if more > 0 {
            seen.push_str(&format!("; and {more} more"));
        }
        (false, seen)
    }
}

/// The first of the `fail_if` conditions that holds for any of the objects
/// (`delete`: for none left), and what was seen.
pub fn first_failure<'c>(
    kind: &str,
    objects: &[DynamicObject],
    fail_if: &[(&'c str, Condition)],
) -> Option<(&'c str, String)> {
    for (text, condition) in fail_if {
        if matches!(condition, Condition::Delete) {
            if objects.is_empty() {
                return Some((text, "gone".into()));
            }
            continue;
        }
        for object in objects {
            let value = serde_json::to_value(object).unwrap_or(Value::Null);
            let (met, seen) = judge(kind, &value, condition);
            if met {
                // "(want `Failed`)" reads oddly for a condition that failed
                let seen = seen.split(" (want `").next().unwrap_or_default().to_owned();
                let seen = if objects.len() == 1 {
                    seen
                } else {
                    format!("{}: {seen}", object.metadata.name.as_deref().unwrap_or("?"))
                };
                return Some((text, seen));
            }
        }
    }
    None
}

/// One attempt of a `wait` step: polls until the condition holds, or the
/// deadline passes (the error says what was seen last).
pub async fn run(cx: &AttemptCx, spec: &Value) -> ActionResult {
    let action: WaitAction = super::fields(spec)?;
    let condition = parse_condition(&action.condition)
        .map_err(|e| Failure::permanent(format!("`for`: {e}")))?;
    let fail_if = action
        .fail_if
        .iter()
        .map(|text| {
            parse_condition(text)
                .map(|c| (text.as_str(), c))
                .map_err(|e| Failure::permanent(format!("`fail_if` `{text}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = cx.ctx.services.cluster()?;
    let namespace = cx.namespace(action.namespace.as_deref())?;
    let resolved = cluster.resolve(&action.kind).await?;
    let place = Place {
        resolved: &resolved,
        namespace: &namespace,
    };
    let (name, selector) = (action.name.as_deref(), action.selector.as_deref());
    let what = place.describe(name, selector);
    let deadline = Deadline::of_step(cx);
    let started = Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        match fetch(cluster, &place, name, selector).await {
            Ok(objects) => {
                if let Some((fail, seen)) =
                    first_failure(&resolved.resource.kind, &objects, &fail_if)
                {
                    return Err(Failure::permanent(format!(
                        "{what}: `{fail}` holds ({seen}), so `{}` will not: not waiting any longer",
                        action.condition
                    )));
                }
                let (met, seen) = judge_all(
                    &resolved.resource.kind,
                    &objects,
                    &condition,
                    name.is_none(),
                );
                if met {
                    cx.say(&format!(
                        "{what}: {} holds after {} ({seen})",
                        action.condition,
                        crate::model::fmt_duration(started.elapsed())
                    ));
                    let mut outputs = IndexMap::new();
                    outputs.insert("matched".into(), objects.len().to_string());
                    return Ok(outputs);
                }
                if seen != last {
                    cx.say(&format!("{what}: waiting for {}: {seen}", action.condition));
                }
                last = seen;
            }
            Err(refused) if refused.transient => {
                last = format!("{} (will try again)", refused.failure.message);
            }
            Err(refused) => return Err(refused.failure),
        }
        if deadline.passed() {
            return Err(Failure::permanent(format!(
                "{what}: `{}` did not hold {}; last seen: {last}",
                action.condition,
                deadline.describe()
            )));
        }
        deadline.pause().await;
    }
}

/// One evaluation of a condition with the fields of `wait` (rendered), no
/// waiting: what a `done_if` condition does on resume. Returns whether it
/// holds and what was seen; an error (unreachable cluster, 403) does not
/// hold and says why.
pub async fn check_once(cluster: &Cluster, spec: &Value) -> (bool, String) {
    match evaluate_once(cluster, spec).await {
        Ok(verdict) => verdict,
        Err(failure) => (false, failure.message),
    }
}

async fn evaluate_once(cluster: &Cluster, spec: &Value) -> Result<(bool, String), Failure> {
    let action: WaitAction = super::fields(spec)?;
    let condition = parse_condition(&action.condition)
        .map_err(|e| Failure::permanent(format!("`for`: {e}")))?;
    let namespace = cluster.namespace(action.namespace.as_deref());
    let resolved = cluster.resolve(&action.kind).await?;
    let place = Place {
        resolved: &resolved,
        namespace: &namespace,
    };
    let (name, selector) = (action.name.as_deref(), action.selector.as_deref());
    let what = place.describe(name, selector);
    // a transient refusal is tried a few times: a resume should not re-run
    // a step because of one throttled request
    let mut tries = 0;
    let objects = loop {
        tries += 1;
        match fetch(cluster, &place, name, selector).await {
            Ok(objects) => break objects,
            Err(refused) if refused.transient && tries < 4 => {
                tokio::time::sleep(POLL * tries).await;
            }
            Err(refused) => return Err(refused.failure),
        }
    };
    let (met, seen) = judge_all(
        &resolved.resource.kind,
        &objects,
        &condition,
        name.is_none(),
    );
    Ok((met, format!("{what}: `{}`: {seen}", action.condition)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_for_grammar() {
        assert_eq!(
            parse_condition("condition=Available"),
            Ok(Condition::Status {
                kind: "Available".into(),
                status: "True".into()
            })
        );
        assert_eq!(
            parse_condition("condition=Ready=False"),
            Ok(Condition::Status {
                kind: "Ready".into(),
                status: "False".into()
            })
        );
        assert_eq!(parse_condition("replicas=0"), Ok(Condition::Replicas(0)));
        assert_eq!(parse_condition("delete"), Ok(Condition::Delete));
        assert_eq!(parse_condition("exists"), Ok(Condition::Exists));
        assert_eq!(parse_condition("ready"), Ok(Condition::Ready));
        match parse_condition("jsonpath={.status.phase}=Running") {
            Ok(Condition::JsonPath { path, value, .. }) => {
                assert_eq!(
                    path,
                    vec![
                        Segment::Field("status".into()),
                        Segment::Field("phase".into())
                    ]
                );
                assert_eq!(value.as_deref(), Some("Running"));
            }
            other => panic!("{other:?}"),
        }
        match parse_condition("jsonpath='{.status.loadBalancer.ingress[0].ip}'") {
            Ok(Condition::JsonPath { path, value, .. }) => {
                assert_eq!(path.len(), 5);
                assert_eq!(path[4], Segment::Field("ip".into()));
                assert_eq!(path[3], Segment::Index(0));
                assert_eq!(value, None);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "replicas=-1",
            "replicas=x",
            "condition=",
            "available",
            "jsonpath={.a",
            "jsonpath={.a[*]}=1",
            "jsonpath={.a}x",
        ] {
            assert!(parse_condition(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_jsonpath_subset() {
        let object = json!({
            "metadata": {"annotations": {"app.kubernetes.io/name": "web"}},
            "status": {"phase": "Running", "ready": true, "count": 3,
                       "items": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}
        });
        let at = |p: &str| lookup(&object, &parse_jsonpath(p).unwrap()).cloned();
        assert_eq!(at("{.status.phase}"), Some(json!("Running")));
        assert_eq!(at(".status.items[1].ip"), Some(json!("10.0.0.2")));
        assert_eq!(at("{$.status.count}"), Some(json!(3)));
        assert_eq!(
            at("{.metadata.annotations['app.kubernetes.io/name']}"),
            Some(json!("web"))
        );
        assert_eq!(
            at("{.metadata.annotations[\"app.kubernetes.io/name\"]}"),
            Some(json!("web"))
        );
        assert_eq!(at("{.status.items[5].ip}"), None);
        assert_eq!(at("{.status.nothing}"), None);
        assert!(parse_jsonpath("{}").is_err());
        assert!(parse_jsonpath("{.a..b}").is_err());
        assert!(parse_jsonpath("{.a[?(@.x)]}").is_err());
        // numbers and booleans compare as their JSON text
        let c = parse_condition("jsonpath={.status.ready}=true").unwrap();
        assert!(judge("Pod", &object, &c).0);
        let c = parse_condition("jsonpath={.status.count}=3").unwrap();
        assert!(judge("Pod", &object, &c).0);
        let c = parse_condition("jsonpath={.status.items}=x").unwrap();
        assert!(!judge("Pod", &object, &c).0);
        // a Secret's data is never shown
        let secret = json!({"data": {"password": "c2VjcmV0"}});
        let c = parse_condition("jsonpath={.data.password}=eA==").unwrap();
        let (met, seen) = judge("Secret", &secret, &c);
        assert!(!met);
        assert!(!seen.contains("c2VjcmV0"), "{seen}");
        let c = parse_condition("jsonpath={.data.password}").unwrap();
        assert!(!judge("Secret", &secret, &c).1.contains("c2VjcmV0"));
    }

    #[test]
    fn a_fail_if_condition_ends_the_wait_on_any_object() {
        let object = |name: &str, phase: &str| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "velero.io/v1", "kind": "PodVolumeBackup",
                "metadata": { "name": name }, "status": { "phase": phase }
            }))
            .unwrap()
        };
        let fail_if = [
            (
                "jsonpath={.status.phase}=Failed",
                parse_condition("jsonpath={.status.phase}=Failed").unwrap(),
            ),
            ("delete", Condition::Delete),
        ];
        let two = [object("a", "Completed"), object("b", "Failed")];
        let (which, seen) = first_failure("PodVolumeBackup", &two, &fail_if).unwrap();
        assert_eq!(which, "jsonpath={.status.phase}=Failed");
        assert_eq!(seen, "b: {.status.phase} is `Failed`");
        assert!(first_failure("PodVolumeBackup", &two[..1], &fail_if).is_none());
        assert_eq!(
            first_failure("PodVolumeBackup", &[], &fail_if).unwrap().0,
            "delete"
        );
        assert!(first_failure("PodVolumeBackup", &[], &fail_if[..1]).is_none());
    }

    #[test]
    fn a_missing_condition_is_not_met() {
        let object = json!({"status": {"conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "no"}
        ]}});
        let available = parse_condition("condition=Available").unwrap();
        let (met, seen) = judge("Deployment", &object, &available);
        assert!(!met);
        assert_eq!(
            seen,
            "condition Available is False (MinimumReplicasUnavailable: no)"
        );
        let unavailable = parse_condition("condition=available=false").unwrap();
        assert!(judge("Deployment", &object, &unavailable).0);
        let progressing = parse_condition("condition=Progressing").unwrap();
        assert_eq!(
            judge("Deployment", &object, &progressing),
            (false, "condition Progressing is missing".into())
        );
        let progressing_false = parse_condition("condition=Progressing=False").unwrap();
        assert!(!judge("Deployment", &object, &progressing_false).0);
    }

    #[test]
    fn a_condition_from_before_the_latest_change_is_not_met() {
        // scaled from 0 to 1: the controller has not looked yet, Available is
        // still the True it was for 0 replicas
        let scaled = json!({"metadata": {"generation": 3}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 2, "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}});
        let available = parse_condition("condition=Available").unwrap();
        assert_eq!(
            judge("Deployment", &scaled, &available),
            (
                false,
                "status not yet updated for the latest change (observedGeneration 2 < generation 3)"
                    .into()
            )
        );
        let mut observed = scaled.clone();
        observed["status"]["observedGeneration"] = json!(3);
        assert!(judge("Deployment", &observed, &available).0);
        // a custom resource that reports no observedGeneration is judged on its conditions
        let mut no_observed = scaled;
        no_observed["status"]
            .as_object_mut()
            .unwrap()
            .remove("observedGeneration");
        assert!(judge("APIManager", &no_observed, &available).0);
        // an observedGeneration that is not a number is as good as none
        let mut text = no_observed.clone();
        text["status"]["observedGeneration"] = json!("2");
        assert!(judge("APIManager", &text, &available).0);
        // a custom resource whose conditions carry their own observedGeneration
        let mut per_condition = no_observed;
        per_condition["status"]["conditions"][0]["observedGeneration"] = json!(2);
        let (met, seen) = judge("Widget", &per_condition, &available);
        assert!(!met);
        assert!(
            seen.ends_with(", but for an older change (its observedGeneration 2 < generation 3)"),
            "{seen}"
        );
        per_condition["status"]["conditions"][0]["observedGeneration"] = json!(3);
        assert!(judge("Widget", &per_condition, &available).0);
    }

    #[test]
    fn ready_replicas_and_readiness() {
        let deployment = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2}});
        assert!(judge("Deployment", &deployment, &Condition::Replicas(2)).0);
        assert!(!judge("Deployment", &deployment, &Condition::Replicas(0)).0);
        // the spec change is not observed yet
        assert!(!judge("Deployment", &deployment, &Condition::Ready).0);
        let scaled_down = json!({"metadata": {"generation": 3}, "spec": {"replicas": 0},
            "status": {"observedGeneration": 3}});
        assert!(judge("Deployment", &scaled_down, &Condition::Replicas(0)).0);
        assert!(judge("Deployment", &scaled_down, &Condition::Ready).0);
        let daemonset = json!({"metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "numberReady": 2}});
        assert_eq!(
            judge("DaemonSet", &daemonset, &Condition::Ready),
            (false, "2 of 3 scheduled pod(s) ready".into())
        );
        let terminating = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(!judge("Pod", &terminating, &Condition::Ready).0);
    }

    #[test]
    fn a_deadline_leaves_room_to_report_before_the_step_timeout() {
        let d = Deadline::new(Some(Duration::from_secs(2)));
        assert_eq!(d.limit, Duration::from_millis(1800));
        let d = Deadline::new(Some(Duration::from_secs(600)));
        assert_eq!(d.limit, Duration::from_secs(598));
        let d = Deadline::new(None);
        assert_eq!(d.limit, DEFAULT_WAIT);
        assert!(d.describe().contains("set `timeout:`"));
    }
}
