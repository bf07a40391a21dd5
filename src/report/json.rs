//! `--log-format json`: one `Record` per line on stdout (docs/events.md),
//! through the `Terminal` writer. Every output line of every step is a
//! `step_output` record, queued like any other record (never dropped for
//! being output); only a stdout that stays blocked past the backlog loses
//! records, and one `lines_not_shown` record stands in their place.

use std::sync::Arc;

use super::terminal::Terminal;
use crate::events::{EventSink, Record, RunEvent};

/// Prints every event, including live output lines, as JSON Lines.
pub struct JsonLines {
    terminal: Arc<Terminal>,
}

impl Default for JsonLines {
    fn default() -> Self {
        JsonLines::new()
    }
}

impl JsonLines {
    /// A reporter writing to stdout.
    pub fn new() -> JsonLines {
        JsonLines {
            terminal: Terminal::stdout_streaming(None, gap_record),
        }
    }

    /// The writer this reporter prints through.
    pub fn terminal(&self) -> Arc<Terminal> {
        self.terminal.clone()
    }
}

/// The record standing for `n` records that did not fit the backlog.
fn gap_record(n: u64) -> Vec<u8> {
    let record = serde_json::json!({
        "v": crate::events::FORMAT_VERSION,
        "at": crate::events::now_rfc3339(),
        "event": "lines_not_shown",
        "count": n,
        "message": format!("{n} lines not shown (terminal blocked); see `runbook status`"),
    });
    let mut line = serde_json::to_vec(&record).unwrap_or_default();
    line.push(b'\n');
    line
}

impl EventSink for JsonLines {
    fn emit(&self, event: &RunEvent) {
        // serialized only if it is going to be written (a blocked stdout
        // costs a count per record)
        self.terminal.line_with(|| {
            let mut line = serde_json::to_vec(&Record::now(event.clone())).unwrap_or_default();
            line.push(b'\n');
            line
        });
    }
}
