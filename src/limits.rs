//! Limits the runner keeps whatever it is given: every input file (runbook,
//! params file, saved plan, a step's `$RUNBOOK_OUTPUT`) is read through
//! `read_bounded`, which stops one byte past its limit, so a FIFO, a pipe
//! or a device such as `/dev/zero` is refused instead of read forever.
//! Sizes given by people (`--log-limit 64MiB`) are parsed and shown here.

use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Largest params file accepted (`--params-file`): a mapping of names to
/// values, far below this in practice.
pub const MAX_PARAMS_FILE_BYTES: u64 = 1024 * 1024;

/// Largest saved plan accepted (`run --plan`): the plan of a 50,000-step
/// runbook is about 9 MiB.
pub const MAX_PLAN_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a bounded read failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// More than `limit` bytes: the rest was not read.
    #[error("{} is larger than the {} limit", path.display(), size(*limit))]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
}

/// Reads at most `limit` bytes of `path`, whatever it is (regular file,
/// FIFO, pipe, character device). A regular file known to be larger is
/// refused without reading it; anything else is read up to one byte past
/// the limit, which is enough to know it is too large.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let too_large = || ReadError::TooLarge {
        path: path.to_owned(),
        limit,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // a regular file says its size; a FIFO or a device says 0 or nothing
    let hint = match file.metadata() {
        Ok(meta) if meta.is_file() && meta.len() > limit => return Err(too_large()),
        Ok(meta) if meta.is_file() => meta.len() as usize,
        _ => 0,
    };
    let mut bytes = Vec::with_capacity(hint.min(64 * 1024 * 1024) + 1);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Parses a size as people write it: `65536`, `512K`, `64MiB`, `1G`
/// (K, M, G are powers of 1024; `KiB`, `MiB`, `GiB` and `KB`... the same).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 65536, 512K, 64MiB, 1G)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit (use K, M or G, e.g. 64MiB)"
            ));
        }
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes == 0 {
        return Err("a size limit must be at least 1 byte".into());
    }
    Ok(bytes)
}

/// A byte count for people: `16 MiB`, `1.5 KiB`, `300 bytes`.
pub fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            let whole = bytes / unit;
            let tenths = (bytes % unit) * 10 / unit;
            return if tenths == 0 {
                format!("{whole} {name}")
            } else {
                format!("{whole}.{tenths} {name}")
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(16 * 1024 * 1024), "16 MiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(300), "300 bytes");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn devices_are_cut_at_the_limit() {
        let err = read_bounded(Path::new("/dev/zero"), 1000).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit: 1000, .. }));
        assert_eq!(
            err.to_string(),
            "/dev/zero is larger than the 1000 bytes limit"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        assert!(read_bounded(&path, 4).is_err());
    }
}
