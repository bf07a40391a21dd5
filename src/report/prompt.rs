//! The question at a `pause` gate, asked on the terminal while the run goes
//! on: the gate's message (the reporter's `⏸` line, or here when there is
//! no live display), who is approving, and `Approve STEP? [y/N] `. `y` or
//! `yes` approves; anything else, Enter alone, EOF or a withdrawn question
//! (Ctrl-C, the run stopping) does not.
//!
//! Keys are read one at a time (no echo, no line editing by the tty) on a
//! thread of its own, so the engine never waits on the keyboard. On a live
//! terminal display the question takes the place of the status line (the
//! typed answer drawn with it), so the status redraw cannot erase it and
//! step transitions keep printing above it; otherwise it is written to
//! stderr. The terminal's settings are restored when the question ends.

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::engine::GatePrompt;

/// Sets (or, with `None`, gives back) the text shown in place of the live
/// status line, and prints transition lines above it.
pub trait QuestionLine: Send + Sync {
    /// Shows `text` in place of the status line; `None` restores it.
    fn set(&self, text: Option<String>);
    /// Prints a line above it.
    fn line(&self, text: String);
}

/// Longest answer kept (the rest of a pasted text is ignored).
const MAX_ANSWER: usize = 32;

/// Asks at the terminal (stdin for keys).
pub struct TerminalPrompt {
    operator: String,
    view: Option<Arc<dyn QuestionLine>>,
    cancel: Mutex<Option<Arc<AtomicBool>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl TerminalPrompt {
    /// A prompt approving as `operator`, drawn on `view` when the run has a
    /// live display, else on stderr.
    pub fn new(operator: String, view: Option<Arc<dyn QuestionLine>>) -> TerminalPrompt {
        TerminalPrompt {
            operator,
            view,
            cancel: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    /// Withdraws an open question and waits (briefly) until the terminal
    /// is restored.
    pub fn close(&self) {
        self.cancel();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl GatePrompt for TerminalPrompt {
    fn ask(&self, step: &str, message: Option<&str>) -> oneshot::Receiver<Option<String>> {
        let (tx, rx) = oneshot::channel();
        // one question at a time: the engine asks the next after an answer
        self.close();
        let cancel = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = self.cancel.lock() {
            *c = Some(cancel.clone());
        }
        let question = Question {
            step: step.to_owned(),
            message: message.map(str::to_owned),
            operator: self.operator.clone(),
            view: self.view.clone(),
            cancel,
        };
        let spawned = std::thread::Builder::new()
            .name("gate-prompt".into())
            .spawn(move || {
                let approved = question.run();
                let _ = tx.send(approved.then(|| question.operator.clone()));
            });
        if let (Ok(handle), Ok(mut slot)) = (spawned, self.thread.lock()) {
            *slot = Some(handle);
        }
        // a thread that could not start dropped `tx`: the answer is `None`
        rx
    }

    fn cancel(&self) {
        if let Ok(c) = self.cancel.lock()
            && let Some(flag) = c.as_ref()
        {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

struct Question {
    step: String,
    message: Option<String>,
    operator: String,
    view: Option<Arc<dyn QuestionLine>>,
    cancel: Arc<AtomicBool>,
}

impl Question {
    fn say(&self, line: String) {
        match &self.view {
            Some(view) => view.line(line),
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    fn show(&self, text: &str) {
        match &self.view {
            Some(view) => view.set(Some(text.to_owned())),
            None => {
                let _ = write!(std::io::stderr(), "\r\x1b[2K{text}");
                let _ = std::io::stderr().flush();
            }
        }
    }

    /// Asks and reads the answer; true when approved.
    fn run(&self) -> bool {
        // a runner in the background (`&`, Ctrl-Z then `bg`) would be
        // stopped by the terminal the moment it read a key
        // SAFETY: plain queries of the calling process and its terminal.
        let foreground = unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp() };
        if !foreground {
            self.say(format!(
                "  Not asking about {}: runbook is not in the foreground of its terminal.",
                self.step
            ));
            return false;
        }
        if self.view.is_none()
            && let Some(message) = &self.message
        {
            self.say(format!("⏸ {}: {message}", self.step));
        }
        self.say(format!(
            "  Approving as {}. y continues this run; anything else leaves it paused.",
            self.operator
        ));
        let prompt = format!("Approve {}? [y/N] ", self.step);
        self.show(&prompt);
        let raw = RawInput::enter(libc::STDIN_FILENO);
        let mut answer = String::new();
        let finished = loop {
            if self.cancel.load(Ordering::SeqCst) {
                break false;
            }
            match read_key(libc::STDIN_FILENO, Duration::from_millis(100)) {
                Key::Nothing => continue,
                Key::End => break false,
                Key::Byte(b'\r' | b'\n') => break true,
                // Ctrl-D on an empty answer: no
                Key::Byte(4) if answer.is_empty() => break false,
                Key::Byte(0x7f | 0x08) => {
                    answer.pop();
                }
                // Ctrl-U: start over
                Key::Byte(0x15) => answer.clear(),
                Key::Byte(b) if b.is_ascii_graphic() || b == b' ' => {
                    if answer.len() < MAX_ANSWER {
                        answer.push(b as char);
                    }
                }
                Key::Byte(_) => {}
            }
            self.show(&format!("{prompt}{answer}"));
        };
        drop(raw);
        let approved =
            finished && matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes");
        let verdict = if approved {
            "approved".to_owned()
        } else if finished {
            "not approved: the run stops at this gate".to_owned()
        } else {
            "no answer: the run stops at this gate".to_owned()
        };
        match &self.view {
            Some(view) => {
                view.set(None);
                view.line(format!("{prompt}{answer}  ({verdict})"));
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{answer}  ({verdict})");
            }
        }
        approved
    }
}

enum Key {
    Nothing,
    End,
    Byte(u8),
}

/// Waits up to `wait` for one byte on `fd`.
fn read_key(fd: RawFd, wait: Duration) -> Key {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
    if ready < 0 {
        let err = std::io::Error::last_os_error();
        return if err.kind() == std::io::ErrorKind::Interrupted {
            Key::Nothing
        } else {
            Key::End
        };
    }
    if ready == 0 {
        return Key::Nothing;
    }
    let mut byte = 0u8;
    // SAFETY: reading one byte into a valid buffer.
    let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
    match n {
        1 => Key::Byte(byte),
        0 => Key::End,
        _ => {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ) {
                Key::Nothing
            } else {
                Key::End
            }
        }
    }
}

/// The terminal in character mode without echo (signals still on, so
/// Ctrl-C still interrupts the run) until dropped.
struct RawInput {
    fd: RawFd,
    saved: Option<libc::termios>,
}

impl RawInput {
    fn enter(fd: RawFd) -> RawInput {
        // SAFETY: an all-zero termios is a valid value to be overwritten.
        let mut term: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr on a descriptor with a valid termios pointer.
        if unsafe { libc::tcgetattr(fd, &mut term) } != 0 {
            return RawInput { fd, saved: None };
        }
        let saved = term;
        term.c_lflag &= !(libc::ICANON | libc::ECHO);
        term.c_cc[libc::VMIN] = 1;
        term.c_cc[libc::VTIME] = 0;
        // SAFETY: as above.
        let ok = unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) } == 0;
        RawInput {
            fd,
            saved: ok.then_some(saved),
        }
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restoring the settings read by tcgetattr.
            unsafe {
                libc::tcsetattr(self.fd, libc::TCSANOW, saved);
            }
        }
    }
}
