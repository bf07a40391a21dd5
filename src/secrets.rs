//! Secret masking for everything shown or stored: a streaming scrubber for
//! step output and whole-string masking for messages and outputs.

/// Replaces secret values in a byte stream, holding back just enough bytes
/// to catch a secret split across reads.
#[derive(Debug)]
pub struct Scrubber {
    secrets: Vec<Vec<u8>>,
    hold: usize,
    carry: Vec<u8>,
}

/// What replaces a secret in logs.
pub const MASK: &[u8] = b"***";

impl Scrubber {
    /// A scrubber for these secret values (empty ones are ignored).
    pub fn new(secrets: &[String]) -> Scrubber {
        let mut secrets: Vec<Vec<u8>> = secrets
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec())
            .collect();
        // longest first, so a secret containing another is masked whole
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let hold = secrets
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Scrubber {
            secrets,
            hold,
            carry: Vec::new(),
        }
    }

    /// Feeds bytes; returns what can be written now.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        self.carry.extend_from_slice(chunk);
        let replaced = self.replace(&self.carry);
        let keep = self.hold.min(replaced.len());
        let emit_len = replaced.len() - keep;
        self.carry = replaced[emit_len..].to_vec();
        replaced[..emit_len].to_vec()
    }

    /// Whatever is still held back, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.replace(&rest)
    }

    fn replace(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'outer: while i < data.len() {
            for secret in &self.secrets {
                if data[i..].starts_with(secret) {
                    out.extend_from_slice(MASK);
                    i += secret.len();
                    continue 'outer;
                }
            }
            out.push(data[i]);
            i += 1;
        }
        out
    }

    /// Masks secrets in a whole string.
    pub fn mask(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_owned();
        }
        String::from_utf8_lossy(&self.replace(text.as_bytes())).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubber_masks_secrets_split_across_chunks() {
        let mut s = Scrubber::new(&["hunter2".to_owned()]);
        let mut out = Vec::new();
        for chunk in [&b"pass=hun"[..], b"ter2 and hunter", b"2!"] {
            out.extend(s.feed(chunk));
        }
        out.extend(s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "pass=*** and ***!");
    }
}
