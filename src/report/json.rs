//! `--log-format json`: one `Record` per line on stdout (docs/events.md).

use std::io::Write;

use crate::events::{EventSink, Record, RunEvent};

/// Prints every event, including live output lines, as JSON Lines.
#[derive(Debug, Default)]
pub struct JsonLines;

impl EventSink for JsonLines {
    fn emit(&self, event: &RunEvent) {
        let Ok(mut line) = serde_json::to_vec(&Record::now(event.clone())) else {
            return;
        };
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        // a closed terminal must not stop the run
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }
}
