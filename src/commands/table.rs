//! Tables for people (`status`, `runs`, `show`): columns sized to their
//! content, state words coloured when colour is on (`--color`, NO_COLOR,
//! whether stdout is a terminal).

use unicode_width::UnicodeWidthStr;

use crate::report::terminal::{columns_of, fit};

/// Whether and how to colour what goes to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paint {
    /// Colour on.
    pub on: bool,
}

impl Paint {
    /// The ANSI colour of a state word: succeeded green, failed red, paused
    /// magenta, running cyan, interrupted and blocked yellow, skipped dim.
    fn code(word: &str) -> Option<&'static str> {
        Some(match word {
            "succeeded" => "32",
            "failed" | "unreadable" => "31",
            "paused" => "35",
            "running" => "36",
            "interrupted" | "blocked" => "33",
            "skipped" => "2",
            _ => return None,
        })
    }

    /// `text` in the colour of the state `word`.
    pub fn colour(self, text: &str, word: &str) -> String {
        match (self.on, Self::code(word)) {
            (true, Some(code)) => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }

    /// The state word in its colour.
    pub fn state(self, word: &str) -> String {
        self.colour(word, word)
    }

    /// Bold (headings), when colour is on.
    pub fn bold(self, text: &str) -> String {
        if self.on {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// A table: a header and rows of cells, each cell optionally coloured as a
/// state word.
/// `text` (which may hold SGR colour sequences, counted as no width) cut
/// to `width` columns with `…`, colours reset after the cut.
fn fit_styled(text: &str, width: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    let plain_width: usize = {
        let mut w = 0;
        let mut in_escape = false;
        for c in text.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (true, _) => {}
                (false, c) => w += c.width().unwrap_or(0),
            }
        }
        w
    };
    if plain_width <= width || width == 0 {
        return text.to_owned();
    }
    let mut out = String::new();
    let (mut used, mut in_escape) = (0, false);
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => {
                in_escape = true;
                out.push(c);
            }
            (true, c) => {
                in_escape = c != 'm';
                out.push(c);
            }
            (false, c) => {
                let w = c.width().unwrap_or(0);
                if used + w > width - 1 {
                    break;
                }
                used += w;
                out.push(c);
            }
        }
    }
    out.push('…');
    if out.contains('\x1b') {
        out.push_str("\x1b[0m");
    }
    out
}

/// Indent of a last column shown under its row on a narrow terminal.
const BELOW_INDENT: usize = 6;

pub(crate) struct Table {
    headers: Vec<String>,
    right: Vec<usize>,
    rows: Vec<Vec<(String, Option<&'static str>)>>,
}

impl Table {
    /// A table with these headers; the columns in `right` are right-aligned.
    pub fn new(headers: &[&str], right: &[usize]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            right: right.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as headers).
    pub fn row(&mut self, cells: Vec<(String, Option<&'static str>)>) {
        self.rows.push(cells);
    }

    /// The table, each column as wide as its widest cell, two spaces
    /// between columns, no trailing spaces.
    pub fn render(&self, paint: Paint) -> String {
        // on a terminal, rows are cut to its width rather than wrapped
        self.render_within(paint, columns_of(libc::STDOUT_FILENO))
    }

    /// The table, its last column cut (with `…`) so that rows fit in
    /// `width` columns when given.
    pub fn render_within(&self, paint: Paint, width: Option<usize>) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.width()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.width());
            }
        }
        // the last column gets what the others leave; when that is too
        // little, it goes on a line of its own under its row
        let others: usize = widths.iter().take(n.saturating_sub(1)).map(|w| w + 2).sum();
        let (last_room, below) = match width {
            Some(width) if others + widths[n - 1] >= width => {
                let room = width.saturating_sub(others + 1);
                if room >= 16 {
                    (Some(room), None)
                } else {
                    (None, Some(width.saturating_sub(BELOW_INDENT + 1)))
                }
            }
            _ => (None, None),
        };
        let mut out = String::new();
        let line = |cells: Vec<(&str, Option<&str>)>, out: &mut String| {
            let mut text = String::new();
            let last = cells.len().saturating_sub(1);
            let mut under = None;
            for (i, (cell, word)) in cells.into_iter().enumerate() {
                if let Some(room) = below
                    && i == last
                {
                    if !cell.is_empty() {
                        under = Some(fit(cell, room));
                    }
                    continue;
                }
                if i > 0 {
                    text.push_str("  ");
                }
                let cut;
                let cell = match last_room {
                    Some(room) if i == last && cell.width() > room => {
                        cut = fit(cell, room);
                        cut.as_str()
                    }
                    _ => cell,
                };
                let pad = widths[i].saturating_sub(cell.width());
                let shown = match word {
                    Some(word) => paint.colour(cell, word),
                    None => cell.to_owned(),
                };
                if self.right.contains(&i) {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(&shown);
                } else {
                    text.push_str(&shown);
                    if i != last {
                        text.push_str(&" ".repeat(pad));
                    }
                }
            }
            match (below, width) {
                // even without the last column the row is too wide: cut it
                (Some(_), Some(width)) => out.push_str(&fit_styled(text.trim_end(), width - 1)),
                _ => out.push_str(text.trim_end()),
            }
            out.push('\n');
            if let Some(under) = under {
                out.push_str(&" ".repeat(BELOW_INDENT));
                out.push_str(&under);
                out.push('\n');
            }
        };
        line(
            self.headers.iter().map(|h| (h.as_str(), None)).collect(),
            &mut out,
        );
        for row in &self.rows {
            line(
                row.iter().map(|(c, w)| (c.as_str(), *w)).collect(),
                &mut out,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_longest_cell() {
        let mut t = Table::new(&["ID", "N", "NOTE"], &[1]);
        t.row(vec![
            ("a-very-long-step-id".into(), None),
            ("12".into(), None),
            ("x".into(), None),
        ]);
        t.row(vec![
            ("b".into(), None),
            ("3".into(), None),
            (String::new(), None),
        ]);
        let text = t.render(Paint { on: false });
        assert_eq!(
            text,
            "ID                    N  NOTE\na-very-long-step-id  12  x\nb                     3\n"
        );
    }

    #[test]
    fn colour_does_not_change_the_widths() {
        let mut t = Table::new(&["STATE", "X"], &[]);
        t.row(vec![("failed".into(), Some("failed")), ("1".into(), None)]);
        let text = t.render(Paint { on: true });
        assert!(text.contains("\x1b[31mfailed\x1b[0m  1"), "{text:?}");
    }

    #[test]
    fn on_a_narrow_terminal_the_last_column_is_cut_not_wrapped() {
        let mut t = Table::new(&["STEP", "NOTE"], &[]);
        t.row(vec![
            ("restore-db".into(), None),
            ("a note much longer than the terminal is wide".into(), None),
        ]);
        let text = t.render_within(Paint { on: false }, Some(30));
        for line in text.lines() {
            assert!(line.width() < 30, "{line:?}");
        }
        assert!(text.contains("restore-db  a note much long…"), "{text:?}");
        let wide = t.render_within(Paint { on: false }, None);
        assert!(wide.contains("than the terminal is wide"), "{wide:?}");
    }

    #[test]
    fn when_the_other_columns_fill_the_terminal_the_last_goes_under_its_row() {
        let mut t = Table::new(&["STEP", "NEEDS", "ACTION"], &[]);
        t.row(vec![
            ("restore-db".into(), None),
            ("check-backup,confirm".into(), None),
            ("run: pg_restore -d app /backups/app.dump".into(), None),
        ]);
        let text = t.render_within(Paint { on: false }, Some(40));
        assert_eq!(
            text,
            "STEP        NEEDS\n      ACTION\nrestore-db  check-backup,confirm\n      run: pg_restore -d app /backups/…\n"
        );
    }

    #[test]
    fn cutting_a_coloured_row_counts_only_what_shows() {
        let row = "\x1b[31mfailed\x1b[0m  a long note";
        assert_eq!(fit_styled(row, 10), "\x1b[31mfailed\x1b[0m  a…\x1b[0m");
        assert_eq!(fit_styled(row, 40), row);
    }
}
