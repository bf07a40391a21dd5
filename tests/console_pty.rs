//! The live status line on a real pseudo-terminal (portable-pty), with the
//! screen emulated by vt100: it fits the terminal's width (asked with
//! TIOCGWINSZ, not $COLUMNS) and follows a resize, never wraps or stays
//! behind as a stale line above transition lines, shows the latest `\r`
//! segment of a progress bar, names the step whose output it shows with
//! ANSI from the step stripped, and counts down a retry backoff.

mod common;

use std::io::Read;
use std::num::NonZeroU16;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

fn size(rows: u16, cols: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

fn nz(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

/// A status line: `[done/total] elapsed ...`.
fn is_status(row: &str) -> bool {
    let Some(rest) = row.strip_prefix('[') else {
        return false;
    };
    let Some((counts, _)) = rest.split_once("] ") else {
        return false;
    };
    counts
        .split_once('/')
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
}

/// Checks one screen; returns the status row's text, if one is shown.
fn check_screen(screen: &vt100::Screen, seen: &str) -> Option<String> {
    let (_, cols) = screen.size();
    let cols = cols.get();
    let rows: Vec<String> = screen.rows(0, cols).collect();
    let (cursor_row, _) = screen.cursor_position();
    let mut status = None;
    for (i, row) in rows.iter().enumerate() {
        let i = i as u16;
        if !is_status(row) {
            continue;
        }
        assert_eq!(
            i,
            cursor_row,
            "a stale status line stays above the cursor:\n{}\n--- after:\n{seen}",
            screen.contents()
        );
        assert!(
            !screen.row_wrapped(i),
            "the status line wrapped:\n{}",
            screen.contents()
        );
        assert!(
            unicode_width(row) < usize::from(cols),
            "the status line fills the width ({cols}): {row:?}"
        );
        status = Some(row.clone());
    }
    // nothing of the steps' colours or escapes reaches the screen
    for r in 0..screen.size().0.get() {
        for c in 0..cols {
            if let Some(cell) = screen.cell(r, c) {
                assert_eq!(
                    cell.fgcolor(),
                    vt100::Color::Default,
                    "coloured cell at {r},{c}:\n{}",
                    screen.contents()
                );
            }
        }
    }
    let contents = screen.contents();
    assert!(
        !contents.contains("[31m") && !contents.contains("\u{fffd}"),
        "{contents}"
    );
    status
}

fn unicode_width(text: &str) -> usize {
    text.chars().count()
}

#[test]
fn the_status_line_fits_the_terminal_and_follows_a_resize() {
    let lab = common::scratch::Scratch::new();
    let long = "x".repeat(150);
    let marker = lab.p("flaky-ran");
    let title = "a step whose title is far longer than the terminal is wide, so that its start line is cut to one row";
    let file = lab.runbook(
        "pty",
        "  {}",
        &format!(
            r#"  - id: progress
    run: |
      printf 'progress 10%%\r'; sleep 0.8; printf 'progress 55%%\r'; sleep 1.2; echo
  - id: noisy
    needs: [flaky]
    name: {title}
    run: |
      for i in $(seq 1 12); do printf '\033[31mred alert %s {long}\033[0m\n' $i; sleep 0.3; done
  - id: flaky
    needs: [progress]
    retry: {{ attempts: 2, delay: 2s }}
    run: test -e {marker} || {{ touch {marker}; exit 1; }}
"#
        ),
    );

    let pty = native_pty_system();
    let pair = pty.openpty(size(24, 80)).unwrap();
    let mut cmd = CommandBuilder::new(assert_cmd::cargo::cargo_bin("runbook"));
    cmd.args([
        "run",
        &file.display().to_string(),
        "--state-dir",
        &lab.state(),
    ]);
    cmd.cwd(common::repo_root());
    for (key, _) in std::env::vars() {
        if key.starts_with("RUNBOOK_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("NO_COLOR", "1");
    // wrong on purpose: the width must come from the terminal
    cmd.env("COLUMNS", "100");
    cmd.env("TERM", "xterm");
    let mut child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reading = std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut parser = vt100::Parser::new(nz(24), nz(80), 0);
    let mut raw = Vec::new();
    let began = Instant::now();
    let mut statuses_80 = Vec::new();
    let mut statuses_60 = Vec::new();
    let mut resized = false;
    let mut exited = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(bytes) => {
                parser.process(&bytes);
                raw.extend_from_slice(&bytes);
                let tail =
                    String::from_utf8_lossy(&raw[raw.len().saturating_sub(400)..]).into_owned();
                if let Some(status) = check_screen(parser.screen(), &tail) {
                    if resized {
                        statuses_60.push(status);
                    } else {
                        statuses_80.push(status);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if exited.is_none()
            && let Some(status) = child.try_wait().unwrap()
        {
            exited = Some(status);
        }
        // resize once the noisy step has been shown at 80 columns
        if !resized && statuses_80.iter().any(|s| s.contains("› noisy: red alert")) {
            pair.master.resize(size(24, 60)).unwrap();
            parser.set_size(nz(24), nz(60));
            resized = true;
        }
        if began.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("the run did not end:\n{}", parser.screen().contents());
        }
    }
    let status = match exited {
        Some(s) => s,
        None => child.wait().unwrap(),
    };
    drop(pair.master);
    reading.join().unwrap();
    let screen = parser.screen().contents();
    assert!(status.success(), "{screen}");

    // the width came from the terminal, not $COLUMNS, and was used
    assert!(
        statuses_80
            .iter()
            .any(|s| s.chars().count() == 79 && s.ends_with('…')),
        "no status line cut at 79 columns: {statuses_80:#?}"
    );
    assert!(
        statuses_80
            .iter()
            .any(|s| s.contains("› progress: progress 55%")),
        "the latest \\r segment of the progress bar was never shown: {statuses_80:#?}"
    );
    assert!(
        statuses_80.iter().any(|s| s.contains("flaky: retry in 2s")),
        "no retry countdown: {statuses_80:#?}"
    );
    assert!(
        statuses_80
            .iter()
            .any(|s| s.contains("› noisy: red alert") && !s.contains("[31m")),
        "{statuses_80:#?}"
    );
    // after the resize, lines are cut to the new width
    assert!(
        statuses_60
            .iter()
            .any(|s| s.chars().count() == 59 && s.ends_with('…')),
        "the resize to 60 columns was not followed: {statuses_60:#?}"
    );
    assert!(statuses_60.iter().all(|s| s.chars().count() <= 59));
    // elapsed times tick in whole seconds, never a frozen-looking "0ms"
    assert!(
        statuses_80
            .iter()
            .all(|s| !s.contains("ms ") && !s.contains("ms,")),
        "{statuses_80:#?}"
    );
    // a start line longer than the terminal is cut to one row
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.contains("▶ noisy: a step whose title is far longer") && !raw.contains(title),
        "the long start line was not cut to the terminal: {raw}"
    );
    // the end: no status line left, the outcome shown
    assert!(!screen.lines().any(is_status), "{screen}");
    assert!(screen.contains("succeeded in"), "{screen}");
}
