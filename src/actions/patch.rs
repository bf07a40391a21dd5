//! The `patch` action: a merge, JSON or strategic merge patch of any
//! resource (kind resolved by discovery), or `edit:`, a list of text edits
//! of one ConfigMap data key (literal or regex find/replace, comment out or
//! uncomment lines) applied with optimistic concurrency: read, edit, then a
//! JSON patch that `test`s `metadata.resourceVersion` before it `replace`s
//! the key; a concurrent write makes the test fail (409/422) and the key is
//! read and edited again. An edit whose result is already in place writes
//! nothing, so the step is safe to repeat. Output `changed`.

use std::time::Duration;

use indexmap::IndexMap;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::{ActionResult, AttemptCx, Failure};
use crate::cluster::{Op, describe, is_transient, with_retries};
use crate::secrets::SecretSet;
use crate::spec::raw::{PatchAction, PatchType, TextEdit};

/// Tries of a read or an idempotent patch that failed transiently.
const TRIES: u32 = 5;

/// Rounds of read-edit-write when the ConfigMap keeps changing under us.
const EDIT_ROUNDS: u32 = 8;

/// One attempt of a `patch` step.
pub async fn run(cx: &AttemptCx, spec: &serde_json::Value) -> ActionResult {
    let action: PatchAction = super::fields(spec)?;
    match (&action.edit, &action.patch) {
        (Some(_), None) => edit(cx, &action).await,
        (None, Some(_)) => patch(cx, &action).await,
        _ => Err(Failure::permanent(
            "give `patch` either a `patch` document or `edit` (exactly one)",
        )),
    }
}

fn changed(value: bool) -> IndexMap<String, String> {
    let mut outputs = IndexMap::new();
    outputs.insert("changed".into(), value.to_string());
    outputs
}

/// What a patch can change: the object without its resourceVersion,
/// managed fields and status (a controller may write those meanwhile).
fn content(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["resourceVersion", "managedFields", "generation"] {
            meta.remove(field);
        }
    }
    value
}

fn resource_version(object: &DynamicObject) -> String {
    object.metadata.resource_version.clone().unwrap_or_default()
}

/// A merge, JSON or strategic merge patch.
async fn patch(cx: &AttemptCx, action: &PatchAction) -> ActionResult {
    let cluster = cx.ctx.services.cluster()?;
    let resolved = cluster.resolve(&action.kind).await?;
    let namespace = resolved
        .namespaced()
        .then(|| cluster.namespace(action.namespace.as_deref()));
    let api = cluster.api(&resolved, namespace.as_deref().unwrap_or_default());
    let resource = resolved.resource_name();
    let mut document = action.patch.clone().unwrap_or(Value::Null);
    // a patch given as text (a template that renders a whole document)
    if let Value::String(text) = &document {
        document = serde_yaml::from_str(text).map_err(|e| {
            Failure::permanent(format!("the `patch` text is not valid YAML or JSON: {e}"))
        })?;
    }
    let mask = secret_mask(&resolved.resource.kind, &document);

    let get = Op::new("get", &resource, namespace.as_deref()).named(&action.name);
    let before = with_retries(&get, TRIES, || api.get(&action.name))
        .await
        .map_err(|f| masked(f, &mask))?;
    let op = Op::new("patch", &resource, namespace.as_deref()).named(&action.name);
    let params = PatchParams::default();
    let after = match action.patch_type {
        PatchType::Merge => {
            let body = Patch::Merge(&document);
            with_retries(&op, TRIES, || api.patch(&action.name, &params, &body)).await
        }
        PatchType::Strategic => {
            let body = Patch::Strategic(&document);
            with_retries(&op, TRIES, || api.patch(&action.name, &params, &body)).await
        }
        PatchType::Json => {
            let operations: json_patch::Patch =
                serde_json::from_value(document.clone()).map_err(|e| {
                    Failure::permanent(format!(
                        "the `patch` of `type: json` is not a list of JSON patch operations: {e}"
                    ))
                })?;
            // a JSON patch (`add` to a list) may not be safe to send twice:
            // one request; a broken one may have taken effect
            api.patch(&action.name, &params, &Patch::Json::<()>(operations))
                .await
                .map_err(|e| {
                    let mut failure = describe(&e, &op);
                    failure.uncertain = is_transient(&e);
                    failure
                })
        }
    }
    .map_err(|f| masked(f, &mask))?;
    let did = content(&before) != content(&after);
    cx.say(&format!(
        "{} {}/{}{}",
        if did {
            "patched"
        } else {
            "unchanged (the patch was already in place):"
        },
        resolved.resource.kind,
        action.name,
        namespace
            .as_deref()
            .map(|n| format!(" in namespace {n}"))
            .unwrap_or_default()
    ));
    Ok(changed(did))
}

/// A Secret's values in a patch document, to keep out of messages.
fn secret_mask(kind: &str, document: &Value) -> Option<SecretSet> {
    let values = super::manifest::secret_values(&json!({
        "kind": kind,
        "data": document.get("data"),
        "stringData": document.get("stringData"),
    }));
    (!values.is_empty()).then(|| SecretSet::new(values.iter().map(|v| ("secret", v.as_str()))))
}

fn masked(mut failure: Failure, mask: &Option<SecretSet>) -> Failure {
    if let Some(mask) = mask {
        failure.message = mask.mask(&failure.message);
    }
    failure
}

/// The data key the edits change: the step's `key`, else the one the
/// edits name (they must agree).
pub fn edit_key(action: &PatchAction) -> Result<String, String> {
    let mut keys: Vec<&str> = action.key.iter().map(String::as_str).collect();
    if let Some(edits) = &action.edit {
        keys.extend(edits.items().iter().filter_map(|e| e.key.as_deref()));
    }
    keys.retain(|k| !k.is_empty());
    keys.dedup();
    match keys.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err("`edit` needs the ConfigMap data key it changes: set `key`".into()),
        several => Err(format!(
            "`edit` changes one data key, but names {}: make them one, or use one step per key",
            several
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

/// Text edits of one ConfigMap key, with optimistic concurrency.
async fn edit(cx: &AttemptCx, action: &PatchAction) -> ActionResult {
    let key = edit_key(action).map_err(Failure::permanent)?;
    let edits = action.edit.as_ref().map(|e| e.items()).unwrap_or_default();
    let cluster = cx.ctx.services.cluster()?;
    let resolved = cluster.resolve(&action.kind).await?;
    if resolved.resource.kind != "ConfigMap" {
        return Err(Failure::permanent(format!(
            "`edit` changes a ConfigMap's text; `{}` is a {}: use a `patch` document instead",
            action.kind, resolved.resource.kind
        )));
    }
    let namespace = cluster.namespace(action.namespace.as_deref());
    let api = cluster.api(&resolved, &namespace);
    let get = Op::new("get", "configmaps", Some(&namespace)).named(&action.name);
    let put = Op::new("patch", "configmaps", Some(&namespace)).named(&action.name);
    let place = format!(
        "data key `{key}` of ConfigMap `{}` in namespace `{namespace}`",
        action.name
    );
    // a write whose answer was lost may have gone through
    let mut maybe_wrote = false;
    let mut delay = Duration::from_millis(100);
    for round in 1..=EDIT_ROUNDS {
        let current = with_retries(&get, TRIES, || api.get(&action.name)).await?;
        let rv = resource_version(&current);
        let Some(text) = current
            .data
            .get("data")
            .and_then(|d| d.get(&key))
            .and_then(Value::as_str)
        else {
            let keys: Vec<String> = current
                .data
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.keys().map(|k| format!("`{k}`")).collect())
                .unwrap_or_default();
            return Err(Failure::permanent(format!(
                "the {place} does not exist (its keys: {})",
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                }
            )));
        };
        let edited = apply_edits(text, edits).map_err(|e| {
            let message = format!("{place}: {e}");
            if maybe_wrote {
                Failure::uncertain(message)
            } else {
                Failure::permanent(message)
            }
        })?;
        if edited == text {
            cx.say(&format!("the edits of the {place} are already in place"));
            return Ok(changed(maybe_wrote));
        }
        let operations: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "replace", "path": format!("/data/{}", pointer_token(&key)), "value": edited},
        ]))
        .map_err(|e| Failure::permanent(format!("internal: the edit patch: {e}")))?;
        match api
            .patch(
                &action.name,
                &PatchParams::default(),
                &Patch::Json::<()>(operations),
            )
            .await
        {
            Ok(_) => {
                cx.say(&format!("edited the {place} ({} edits)", edits.len()));
                return Ok(changed(true));
            }
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 422 => {
                cx.say(&format!(
                    "the ConfigMap changed since it was read (round {round}); reading it again"
                ));
            }
            Err(e) if is_transient(&e) => {
                maybe_wrote = true;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                let mut failure = describe(&e, &put);
                failure.uncertain = maybe_wrote;
                return Err(failure);
            }
        }
    }
    let message = format!(
        "the {place} kept changing while it was edited ({EDIT_ROUNDS} rounds): another writer (an operator?) is updating it; pause it and run the step again"
    );
    Err(if maybe_wrote {
        Failure::uncertain(message)
    } else {
        Failure::permanent(message)
    })
}

/// A JSON pointer token (RFC 6901: `~` and `/` escaped).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Applies the edits in order. An edit whose result is already there
/// changes nothing; an edit that finds nothing to change and whose result
/// is not there is an error naming the text.
pub fn apply_edits(text: &str, edits: &[TextEdit]) -> Result<String, String> {
    let mut current = text.to_owned();
    for (i, edit) in edits.iter().enumerate() {
        let which = if edits.len() > 1 {
            format!("edit {} of {}: ", i + 1, edits.len())
        } else {
            String::new()
        };
        current = apply_edit(&current, edit).map_err(|e| format!("{which}{e}"))?;
    }
    Ok(current)
}

fn apply_edit(text: &str, edit: &TextEdit) -> Result<String, String> {
    let replace = edit.replace.as_deref().unwrap_or("");
    let prefix = edit.prefix.as_deref().unwrap_or("#");
    if let Some(find) = &edit.find {
        replace_literal(text, find, replace)
    } else if let Some(pattern) = &edit.regex {
        replace_regex(text, pattern, replace)
    } else if let Some(line) = &edit.comment_out {
        comment_lines(text, line, prefix, true)
    } else if let Some(line) = &edit.uncomment {
        comment_lines(text, line, prefix, false)
    } else {
        Err("an edit needs one of `find`, `regex`, `comment_out`, `uncomment`".into())
    }
}

/// Every occurrence of `find` replaced, except those that are already part
/// of `replace` (so `find: a, replace: a b` does not grow on each run).
fn replace_literal(text: &str, find: &str, replace: &str) -> Result<String, String> {
    if find.is_empty() {
        return Err("`find` is empty".into());
    }
    let inner: Vec<usize> = replace.match_indices(find).map(|(k, _)| k).collect();
    let covered = |m: usize| {
        inner
            .iter()
            .any(|&k| m >= k && text[m - k..].starts_with(replace))
    };
    let todo: Vec<usize> = text
        .match_indices(find)
        .map(|(m, _)| m)
        .filter(|&m| !covered(m))
        .collect();
    if todo.is_empty() {
        if text.contains(find) || replace.is_empty() || text.contains(replace) {
            return Ok(text.to_owned());
        }
        return Err(format!(
            "the text {find:?} was not found, nor its replacement {replace:?}"
        ));
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for m in todo {
        out.push_str(&text[at..m]);
        out.push_str(replace);
        at = m + find.len();
    }
    out.push_str(&text[at..]);
    Ok(out)
}

fn multi_line(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .multi_line(true)
        .build()
        .map_err(|e| format!("the regex {pattern:?} is not valid: {e}"))
}

fn replace_regex(text: &str, pattern: &str, replace: &str) -> Result<String, String> {
    let re = multi_line(pattern)?;
    if re.is_match(text) {
        return Ok(re.replace_all(text, replace).into_owned());
    }
    // nothing matches: done already when the replacement's shape is there
    let shape = replacement_shape(replace);
    let present = replace.is_empty() || multi_line(&shape).is_ok_and(|s| s.is_match(text));
    if present {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "the regex {pattern:?} matches nothing, and its replacement {replace:?} is not there either"
        ))
    }
}

/// A regex matching what `replace` produces: its literal text, with each
/// group reference (`$1`, `${name}`) matching any text on the line.
fn replacement_shape(replace: &str) -> String {
    let mut out = String::new();
    let mut literal = String::new();
    let mut chars = replace.chars().peekable();
    let flush = |literal: &mut String, out: &mut String| {
        out.push_str(&regex::escape(literal));
        literal.clear();
    };
    while let Some(c) = chars.next() {
        if c != '$' {
            literal.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                literal.push('$');
            }
            Some('{') => {
                chars.next();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                flush(&mut literal, &mut out);
                out.push_str(".*?");
            }
            Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
                while chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    chars.next();
                }
                flush(&mut literal, &mut out);
                out.push_str(".*?");
            }
            _ => literal.push('$'),
        }
    }
    flush(&mut literal, &mut out);
    out
}

/// Comments out (or uncomments) the lines equal to `line` (blanks around
/// ignored) or matching it as a whole-line regex; indentation is kept.
fn comment_lines(text: &str, line: &str, prefix: &str, comment: bool) -> Result<String, String> {
    if prefix.is_empty() {
        return Err("the comment `prefix` is empty".into());
    }
    let wanted = line.trim();
    let whole = regex::Regex::new(&format!("^(?:{wanted})$")).ok();
    let matches = |s: &str| s == wanted || whole.as_ref().is_some_and(|re| re.is_match(s));
    let mut changed = 0;
    let mut already = false;
    let mut out: Vec<String> = Vec::new();
    for l in text.split('\n') {
        let body = l.trim_start();
        let indent = &l[..l.len() - body.len()];
        let commented = body.strip_prefix(prefix).map(str::trim_start);
        match (commented, comment) {
            (Some(rest), true) => {
                already |= matches(rest.trim_end());
                out.push(l.to_owned());
            }
            (None, true) if matches(body.trim_end()) => {
                out.push(format!("{indent}{prefix}{body}"));
                changed += 1;
            }
            (Some(rest), false) if matches(rest.trim_end()) => {
                out.push(format!("{indent}{rest}"));
                changed += 1;
            }
            (None, false) => {
                already |= !body.is_empty() && matches(body.trim_end());
                out.push(l.to_owned());
            }
            _ => out.push(l.to_owned()),
        }
    }
    if changed == 0 && !already {
        let (verb, state) = if comment {
            ("comment out", "uncommented or commented")
        } else {
            ("uncomment", "commented (with `{prefix}`) or uncommented")
        };
        return Err(format!(
            "no line to {verb}: no {} line is {line:?}",
            state.replace("{prefix}", prefix)
        ));
    }
    Ok(out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(find: &str, replace: &str) -> TextEdit {
        TextEdit {
            find: Some(find.into()),
            replace: Some(replace.into()),
            ..TextEdit::default()
        }
    }

    fn regex(regex: &str, replace: &str) -> TextEdit {
        TextEdit {
            regex: Some(regex.into()),
            replace: Some(replace.into()),
            ..TextEdit::default()
        }
    }

    /// Applies the edits, then again: the second time changes nothing.
    fn twice(text: &str, edits: &[TextEdit]) -> String {
        let once = apply_edits(text, edits).unwrap();
        assert_eq!(apply_edits(&once, edits).unwrap(), once, "not idempotent");
        once
    }

    const REDIS: &str = "save 900 1\nsave 300 10\nsave 60 10000\nappendonly yes\n";

    #[test]
    fn literal_edits_are_idempotent_and_a_missing_text_is_an_error() {
        let out = twice(
            REDIS,
            &[
                find(
                    "save 900 1\nsave 300 10\nsave 60 10000",
                    "#save 900 1\n#save 300 10\n#save 60 10000\nsave \"\"",
                ),
                find("appendonly yes", "appendonly no"),
            ],
        );
        assert_eq!(
            out,
            "#save 900 1\n#save 300 10\n#save 60 10000\nsave \"\"\nappendonly no\n"
        );
        // the replacement contains the text: it does not grow
        assert_eq!(twice("a\n", &[find("a", "a b")]), "a b\n");
        let err = apply_edits(REDIS, &[find("appendfsync always", "appendfsync no")]).unwrap_err();
        assert_eq!(
            err,
            "the text \"appendfsync always\" was not found, nor its replacement \"appendfsync no\""
        );
        let err =
            apply_edits(REDIS, &[find("appendonly yes", "x"), find("nope", "y")]).unwrap_err();
        assert!(err.starts_with("edit 2 of 2: the text \"nope\""), "{err}");
    }

    #[test]
    fn regex_edits_use_groups_and_recognise_their_own_result() {
        let out = twice(REDIS, &[regex(r"^save (\d+) (\d+)$", "#save $1 $2")]);
        assert_eq!(
            out,
            "#save 900 1\n#save 300 10\n#save 60 10000\nappendonly yes\n"
        );
        assert_eq!(
            twice(REDIS, &[regex("^appendonly .*$", "appendonly no")]),
            "save 900 1\nsave 300 10\nsave 60 10000\nappendonly no\n"
        );
        let err = apply_edits(REDIS, &[regex("^maxmemory (.*)$", "maxmemory-x $1")]).unwrap_err();
        assert!(err.contains("matches nothing"), "{err}");
        let err = apply_edits(REDIS, &[regex("(", "x")]).unwrap_err();
        assert!(err.contains("is not valid"), "{err}");
    }

    #[test]
    fn comment_out_and_uncomment_lines() {
        let comment = TextEdit {
            comment_out: Some(r"save \d+ \d+".into()),
            ..TextEdit::default()
        };
        let out = twice("  save 900 1\nsave 60 10000\nappendonly yes", &[comment]);
        assert_eq!(out, "  #save 900 1\n#save 60 10000\nappendonly yes");
        let uncomment = TextEdit {
            uncomment: Some("save 900 1".into()),
            ..TextEdit::default()
        };
        assert_eq!(
            twice(&out, &[uncomment]),
            "  save 900 1\n#save 60 10000\nappendonly yes"
        );
        let slashes = TextEdit {
            comment_out: Some("listen 80;".into()),
            prefix: Some("//".into()),
            ..TextEdit::default()
        };
        assert_eq!(twice("listen 80;\n", &[slashes]), "//listen 80;\n");
        let missing = TextEdit {
            comment_out: Some("bind 0.0.0.0".into()),
            ..TextEdit::default()
        };
        let err = apply_edits(REDIS, &[missing]).unwrap_err();
        assert!(err.contains("no line to comment out"), "{err}");
        assert!(err.contains("\"bind 0.0.0.0\""), "{err}");
    }
}
