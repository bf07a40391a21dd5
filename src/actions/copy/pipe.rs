//! Sync ends of the bounded channels between a blocking tar thread and the
//! async exec streams: a `Read` fed by received pieces and a `Write` that
//! sends pieces of [`PIECE`] bytes. At most the channel's capacity of
//! pieces is ever in memory.

use std::io::{self, Read, Write};

use tokio::sync::mpsc;

use super::remote::PIECE;

/// Pieces in flight per channel.
pub const DEPTH: usize = 8;

/// Reads what the channel receives; EOF when every sender is gone.
pub struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    /// Reads from `rx`.
    pub fn new(rx: mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            piece: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.blocking_recv() {
                Some(piece) => {
                    self.piece = piece;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Sends what is written in pieces; an error once the receiver is gone.
pub struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    piece: Vec<u8>,
}

impl ChannelWriter {
    /// Writes to `tx`.
    pub fn new(tx: mpsc::Sender<Vec<u8>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            piece: Vec::with_capacity(PIECE),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the exec stream is closed"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PIECE - self.piece.len());
        self.piece.extend_from_slice(&buf[..n]);
        if self.piece.len() == PIECE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_in_order_and_a_closed_receiver_is_an_error() {
        let (tx, rx) = mpsc::channel(DEPTH);
        let writer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            for i in 0..200_000u32 {
                w.write_all(&i.to_le_bytes()).unwrap();
            }
            w.flush().unwrap();
        });
        let mut all = Vec::new();
        ChannelReader::new(rx).read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        assert_eq!(all.len(), 800_000);
        assert_eq!(&all[4..8], &1u32.to_le_bytes());

        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChannelWriter::new(tx);
        w.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
