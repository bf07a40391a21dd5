//! Tables for people (`status`, `runs`, `show`): columns sized to their
//! content, state words coloured when colour is on (`--color`, NO_COLOR,
//! whether stdout is a terminal).

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
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(&str, Option<&str>)>, out: &mut String| {
            let mut text = String::new();
            let last = cells.len().saturating_sub(1);
            for (i, (cell, word)) in cells.into_iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
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
            out.push_str(text.trim_end());
            out.push('\n');
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
}
