//! The JSON schema of the runbook format, generated from `spec::raw`.

use crate::spec::raw::RawRunbook;

/// The schema as pretty-printed JSON with a trailing newline, exactly as
/// committed in `schemas/runbook.schema.json`.
pub fn runbook_schema_json() -> String {
    let mut schema = schemars::schema_for!(RawRunbook);
    schema.insert(
        "$id".into(),
        "https://runbook.dev/schemas/runbook.schema.json".into(),
    );
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
