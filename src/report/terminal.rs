//! The terminal writer: reporters hand it lines and return at once; its own
//! thread writes them to stdout. A stdout that blocks (a pipe nobody reads,
//! `| less` not scrolled, XOFF, a stalled ssh) then stalls only that
//! thread, never the engine, its timers or the journal.
//!
//! The queue is bounded. Transition lines wait in a backlog of
//! `MAX_BACKLOG_LINES` (or `MAX_BACKLOG_BYTES`); past that they are counted
//! and shown as one "N lines not shown (terminal blocked)" line in their
//! place. Progress (live output lines) is dropped as soon as the writer falls
//! behind, and the status line of a terminal is redrawn from the latest
//! state only, never queued. `close` waits a bounded time for the writer,
//! so a run ends with its exit code even if stdout never unblocks.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most transition lines waiting for the terminal.
pub const MAX_BACKLOG_LINES: usize = 1000;
/// Most bytes of transition lines waiting for the terminal.
pub const MAX_BACKLOG_BYTES: usize = 1 << 20;
/// Most lines waiting for a terminal that streams step output.
pub const STREAM_BACKLOG_LINES: usize = 200_000;
/// Most bytes waiting for a terminal that streams step output.
pub const STREAM_BACKLOG_BYTES: usize = 32 << 20;
/// Progress lines are dropped once this many items wait.
const MAX_QUEUED_FOR_PROGRESS: usize = 64;
/// How often a terminal's status line is redrawn.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// How often a terminal's width is asked while the writer is idle.
const RESIZE_CHECK: Duration = Duration::from_millis(100);
/// After a write, lines arriving within this window go out together (one
/// write instead of one per line when steps finish every few hundred µs).
const BATCH_WINDOW: Duration = Duration::from_millis(3);

/// Text of the status line, computed by the writer thread when it redraws.
pub type StatusFn = Box<dyn FnMut() -> String + Send>;
/// The line shown in place of `n` lines that did not fit in the backlog.
pub type GapFn = fn(u64) -> Vec<u8>;

enum Item {
    Line(Vec<u8>),
    Progress(Vec<u8>),
    Gap(u64),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    lines: usize,
    bytes: usize,
    writer_waiting: bool,
    closed: bool,
    done: bool,
    not_shown: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    idle: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // a panic elsewhere must not silence the terminal
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Lines for a terminal (or any output), written by a thread of their own.
pub struct Terminal {
    shared: Arc<Shared>,
    /// Most transition lines waiting (`MAX_BACKLOG_LINES` unless raised).
    max_lines: usize,
    /// Most bytes waiting (`MAX_BACKLOG_BYTES` unless raised).
    max_bytes: usize,
    /// When the writer thread could not start: lines are written inline.
    inline: Option<Mutex<Box<dyn Write + Send>>>,
    gap: GapFn,
}

/// stdout or stderr, written with plain `write(2)` (no buffering, no lock
/// shared with the rest of the process).
struct Fd(libc::c_int);

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writing from a valid buffer to a descriptor we do not own
        // or close.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The plain-text gap line.
pub fn text_gap(n: u64) -> Vec<u8> {
    format!(
        "… {n} line{} not shown (terminal blocked); see `runbook status`\n",
        if n == 1 { "" } else { "s" }
    )
    .into_bytes()
}

impl Terminal {
    /// A writer for stdout; with `status`, a status line is kept at the
    /// bottom (for terminals).
    pub fn stdout(status: Option<StatusFn>, gap: GapFn) -> Arc<Terminal> {
        Terminal::new(Box::new(Fd(libc::STDOUT_FILENO)), status, gap)
    }

    /// A writer for stderr.
    pub fn stderr() -> Arc<Terminal> {
        Terminal::new(Box::new(Fd(libc::STDERR_FILENO)), None, text_gap)
    }

    /// A writer for `out`.
    pub fn new(out: Box<dyn Write + Send>, status: Option<StatusFn>, gap: GapFn) -> Arc<Terminal> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
        });
        // the writer owns `out`; if it cannot start, the caller writes
        let slot = Arc::new(Mutex::new(Some(out)));
        let for_thread = (shared.clone(), slot.clone());
        let started = std::thread::Builder::new()
            .name("terminal".into())
            .spawn(move || {
                let (shared, slot) = for_thread;
                let out = slot.lock().ok().and_then(|mut s| s.take());
                if let Some(out) = out {
                    writer_loop(&shared, out, status, gap);
                }
            });
        let inline = match started {
            Ok(_) => None,
            Err(_) => slot.lock().ok().and_then(|mut s| s.take()).map(Mutex::new),
        };
        Arc::new(Terminal {
            shared,
            max_lines: MAX_BACKLOG_LINES,
            max_bytes: MAX_BACKLOG_BYTES,
            inline,
            gap,
        })
    }

    /// A writer for stdout that carries every line of step output
    /// (`--stream`, `--log-format json`): its backlog holds
    /// `STREAM_BACKLOG_LINES` lines or `STREAM_BACKLOG_BYTES`, so that a
    /// burst of output is written, not dropped, while stdout keeps up;
    /// only a stdout that stays blocked loses lines (said by a gap line).
    pub fn stdout_streaming(status: Option<StatusFn>, gap: GapFn) -> Arc<Terminal> {
        let mut terminal = Terminal::stdout(status, gap);
        if let Some(t) = Arc::get_mut(&mut terminal) {
            t.max_lines = STREAM_BACKLOG_LINES;
            t.max_bytes = STREAM_BACKLOG_BYTES;
        }
        terminal
    }

    fn write_inline(&self, bytes: &[u8]) -> bool {
        match &self.inline {
            Some(out) => {
                if let Ok(mut out) = out.lock() {
                    let _ = out.write_all(bytes);
                }
                true
            }
            None => false,
        }
    }

    /// Queues a transition line (with its newline); beyond the backlog it is
    /// counted and shown as part of a "lines not shown" line.
    pub fn line(&self, bytes: Vec<u8>) {
        self.line_with(|| bytes);
    }

    /// As `line`, building the line only when it will be queued: a blocked
    /// stdout then costs a count per line, not its formatting.
    pub fn line_with(&self, make: impl FnOnce() -> Vec<u8>) {
        if self.inline.is_some() {
            self.write_inline(&make());
            return;
        }
        let mut q = self.shared.lock();
        if q.closed {
            return;
        }
        if q.lines >= self.max_lines || q.bytes >= self.max_bytes {
            q.not_shown += 1;
            match q.items.back_mut() {
                Some(Item::Gap(n)) => *n += 1,
                _ => q.items.push_back(Item::Gap(1)),
            }
            self.wake_writer(&q);
            return;
        }
        // formatted outside the lock: the writer thread may take the queue
        drop(q);
        let bytes = make();
        let mut q = self.shared.lock();
        if q.closed {
            return;
        }
        if q.lines >= self.max_lines || q.bytes + bytes.len() > self.max_bytes {
            q.not_shown += 1;
            match q.items.back_mut() {
                Some(Item::Gap(n)) => *n += 1,
                _ => q.items.push_back(Item::Gap(1)),
            }
        } else {
            q.lines += 1;
            q.bytes += bytes.len();
            q.items.push_back(Item::Line(bytes));
        }
        self.wake_writer(&q);
    }

    /// Queues a progress line, or drops it when the writer is behind.
    pub fn progress(&self, bytes: Vec<u8>) {
        if self.write_inline(&bytes) {
            return;
        }
        let mut q = self.shared.lock();
        if q.closed || q.items.len() >= MAX_QUEUED_FOR_PROGRESS {
            return;
        }
        q.items.push_back(Item::Progress(bytes));
        self.wake_writer(&q);
    }

    fn wake_writer(&self, q: &Queue) {
        // the writer only sleeps on the condvar when idle: no wake-up (and
        // no system call) per line while it is busy or gathering a batch
        if q.writer_waiting {
            self.shared.wake.notify_one();
        }
    }

    /// Queues a last line, past any bound, then waits up to `wait` for the
    /// writer to write everything. False if it could not (stdout blocked).
    pub fn close(&self, last: Option<Vec<u8>>, wait: Duration) -> bool {
        if let Some(bytes) = &last
            && self.write_inline(bytes)
        {
            return true;
        }
        if self.inline.is_some() {
            return true;
        }
        let deadline = Instant::now() + wait;
        let mut q = self.shared.lock();
        if !q.closed {
            q.items.extend(last.map(Item::Line));
            q.closed = true;
            self.shared.wake.notify_one();
        }
        while !q.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = match self.shared.idle.wait_timeout(q, left) {
                Ok((q, _)) => q,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    /// Transition lines not shown so far because the backlog was full.
    pub fn not_shown(&self) -> u64 {
        self.shared.lock().not_shown
    }

    /// The gap line for `n` lines (as this terminal prints it).
    pub fn gap_text(&self, n: u64) -> Vec<u8> {
        (self.gap)(n)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // an explicit close already waited (or gave up): do not wait twice
        let closed = self.shared.lock().closed;
        if !closed {
            self.close(None, Duration::from_secs(2));
        }
    }
}

fn writer_loop(
    shared: &Shared,
    mut out: Box<dyn Write + Send>,
    mut status: Option<StatusFn>,
    gap: GapFn,
) {
    let mut status_shown = false;
    let mut broken = false;
    let mut last_status = Instant::now();
    // a resize (SIGWINCH) is noticed by asking the width again every
    // RESIZE_CHECK: no signal handler, and the status line is redrawn to
    // the new width at once rather than at the next STATUS_EVERY
    let mut width = terminal_width();
    loop {
        let (items, closing) = {
            let mut q = shared.lock();
            while q.items.is_empty() && !q.closed {
                if status.is_some() {
                    if last_status.elapsed() >= STATUS_EVERY {
                        break;
                    }
                    let now = terminal_width();
                    if now != width {
                        width = now;
                        break;
                    }
                }
                q.writer_waiting = true;
                q = match &status {
                    Some(_) => match shared.wake.wait_timeout(q, RESIZE_CHECK) {
                        Ok((q, _)) => q,
                        Err(e) => e.into_inner().0,
                    },
                    None => shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                };
                q.writer_waiting = false;
            }
            q.lines = 0;
            q.bytes = 0;
            (std::mem::take(&mut q.items), q.closed)
        };
        let mut buffer = Vec::new();
        if status_shown {
            buffer.extend_from_slice(b"\r\x1b[2K");
            status_shown = false;
        }
        let wrote_lines = !items.is_empty();
        for item in items {
            match item {
                Item::Line(bytes) | Item::Progress(bytes) => buffer.extend_from_slice(&bytes),
                Item::Gap(n) => buffer.extend_from_slice(&gap(n)),
            }
        }
        if let Some(status) = status.as_mut()
            && !closing
        {
            buffer.extend_from_slice(status().as_bytes());
            status_shown = true;
            last_status = Instant::now();
        }
        // EPIPE and the like: nobody will read any more; keep draining the
        // queue so that nothing waits on us
        if !broken && !buffer.is_empty() && out.write_all(&buffer).is_err() {
            broken = true;
        }
        let mut q = shared.lock();
        if closing && q.items.is_empty() {
            q.done = true;
            shared.idle.notify_all();
            return;
        }
        drop(q);
        if wrote_lines && !closing {
            std::thread::sleep(BATCH_WINDOW);
        }
    }
}

/// Columns of the terminal on stdout: `TIOCGWINSZ` (asked again at each
/// redraw, so a resize is followed), else `$COLUMNS`, else 80.
pub fn terminal_width() -> usize {
    columns_of(libc::STDOUT_FILENO)
        .or_else(|| {
            std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.trim().parse().ok())
                .filter(|&c: &usize| c > 0)
        })
        .unwrap_or(80)
}

/// Columns of the terminal on descriptor `fd` (`TIOCGWINSZ`), if it is one.
pub fn columns_of(fd: libc::c_int) -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// Step output made safe to show on one line of a terminal: ANSI escape
/// sequences (CSI, OSC, and two-byte escapes) removed, tabs as spaces,
/// other control characters dropped, and of `\r`-redrawn progress only the
/// latest segment kept.
pub fn sanitize(text: &str) -> String {
    let text: &str = text
        .rsplit('\r')
        .find(|seg| !seg.trim().is_empty())
        .unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates, then a final byte
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS, PM, APC: up to BEL or ST (ESC \\)
                Some(']' | 'P' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // charset selection and the like take one more character
                Some('(' | ')' | '*' | '+' | '#' | '%') => {
                    chars.next();
                }
                _ => {}
            },
            // CSI as one C1 character
            '\u{9b}' => {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `width` terminal columns (wide characters count
/// two), ending in `…` when cut.
pub fn fit(text: &str, width: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    use unicode_width::UnicodeWidthStr;
    if text.width() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width - 1 {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn step_output_is_stripped_of_escapes_and_controls() {
        assert_eq!(sanitize("\x1b[1;31mred\x1b[0m text"), "red text");
        assert_eq!(sanitize("\x1b]0;title\x07after"), "after");
        assert_eq!(sanitize("a\tb\x08c\x00d"), "a bcd");
        assert_eq!(sanitize("  10%\r  55%\r"), "  55%");
        assert_eq!(
            sanitize("\x1b(Bplain\x1b]8;;http://x\x1b\\link"),
            "plainlink"
        );
    }

    #[test]
    fn fitting_counts_columns_not_bytes() {
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("abcdefghij", 5), "abcd…");
        // each of these takes two columns
        assert_eq!(fit("日本語テキスト", 7), "日本語…");
        assert!(unicode_width::UnicodeWidthStr::width(fit("日本語テキスト", 6).as_str()) <= 6);
    }

    #[test]
    fn a_blocked_output_never_blocks_the_caller_and_close_is_bounded() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let terminal = Terminal::new(Box::new(writer), None, text_gap);
        let began = Instant::now();
        let line = vec![b'x'; 199]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        // far more than the pipe (64 KiB) and the backlog hold
        for _ in 0..5000 {
            terminal.line(line.clone());
            terminal.progress(b"progress\n".to_vec());
        }
        assert!(terminal.not_shown() > 0);
        assert!(!terminal.close(Some(b"the end\n".to_vec()), Duration::from_millis(200)));
        assert!(began.elapsed() < Duration::from_secs(30));

        // once the reader reads, everything queued comes out in order, the
        // lines that did not fit as one line in their place
        let mut text = String::new();
        let reading = std::thread::spawn(move || {
            reader.read_to_string(&mut text).unwrap();
            text
        });
        assert!(terminal.close(None, Duration::from_secs(30)));
        drop(terminal);
        let text = reading.join().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"the end"));
        let gaps: Vec<&&str> = lines.iter().filter(|l| l.contains("not shown")).collect();
        assert!(!gaps.is_empty(), "{}", &text[text.len() - 500..]);
        let shown = lines.iter().filter(|l| l.starts_with('x')).count() as u64;
        let hidden: u64 = gaps
            .iter()
            .map(|l| {
                l.trim_start_matches("… ")
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(shown + hidden, 5000);
    }
}
