//! Replay of a JSONL event file: one event per line, spread round-robin over the spec's logical
//! partitions (line `i` -> partition `i % partitions`). Blank lines are skipped.
//!
//! In: a file path. Out: a [`MemoryPartitions`] source.

use std::path::Path;

use super::memory::MemoryPartitions;

pub fn load_jsonl(path: &Path, partitions: u32) -> std::io::Result<MemoryPartitions> {
    let data = std::fs::read(path)?;
    let lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    Ok(MemoryPartitions::round_robin(
        format!("jsonl replay of {}", path.display()),
        lines,
        partitions,
    ))
}
