//! A command on a pseudo-terminal (portable-pty): what it printed so far,
//! keys typed into it, its exit code; killed when dropped. Shared by the
//! tests of everything that asks on a terminal.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use portable_pty::CommandBuilder;
use portable_pty::{PtySize, native_pty_system};

/// How long a test waits for text or an exit before it fails.
pub const PTY_PATIENCE: Duration = Duration::from_secs(30);

/// A running command on a pseudo-terminal.
pub struct Pty {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    screen: Arc<Mutex<Vec<u8>>>,
    writer: Box<dyn Write + Send>,
}

impl Pty {
    /// Starts `cmd` on a terminal of `rows` x `cols`.
    pub fn spawn(cmd: CommandBuilder, rows: u16, cols: u16) -> Pty {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            // keeps the master open until the child's side closes
            let _master = pair.master;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            screen,
            writer,
        }
    }

    /// Everything written to the terminal so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until `text` was written `count` times.
    pub fn wait_for_count(&self, text: &str, count: usize) {
        let began = Instant::now();
        while self.screen().matches(text).count() < count {
            assert!(
                began.elapsed() < PTY_PATIENCE,
                "no {text:?} (x{count}) on the terminal within {PTY_PATIENCE:?}:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `text` was written.
    pub fn wait_for(&self, text: &str) {
        self.wait_for_count(text, 1);
    }

    /// Types `keys` as they are.
    pub fn type_keys(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    /// Types `line` and Enter.
    pub fn type_line(&mut self, line: &str) {
        self.type_keys(&format!("{line}\r"));
    }

    /// Waits for the exit code (killing the command past `PTY_PATIENCE`),
    /// then a moment for the reader to take the last output.
    pub fn exit_code(&mut self) -> u32 {
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return status.exit_code();
            }
            if began.elapsed() > PTY_PATIENCE {
                let _ = self.child.kill();
                panic!("did not exit; terminal:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
