//! Errors of the sources that read files (the Superstore dataset; the generator cannot fail).
//!
//! In: I/O and CSV failures. Out: a [`SourceError`] whose message names the file, the row where
//! it applies, and what to do about it (a missing dataset points at `scripts/fetch_dataset.sh`).

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SourceError {
    /// The dataset file does not exist.
    #[error("dataset {} not found: run scripts/fetch_dataset.sh to download it (or point FULFILLMENT_DATA_DIR at a directory holding superstore/superstore.csv)", path.display())]
    DatasetMissing { path: PathBuf },
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The header lacks a column the source needs.
    #[error("{}: header has no column `{column}` (is this the Superstore CSV? scripts/fetch_dataset.sh fetches the expected file)", path.display())]
    MissingColumn { path: PathBuf, column: &'static str },
    /// A data row is malformed. `row` counts data rows from 1; `line` is the 1-based line in the file.
    #[error("{}: row {row} (line {line}): {reason}", path.display())]
    Csv {
        path: PathBuf,
        row: u64,
        line: u64,
        reason: String,
    },
}

impl SourceError {
    /// Whether retrying after an operator action (fetching the dataset) can succeed.
    pub fn is_missing_dataset(&self) -> bool {
        matches!(self, SourceError::DatasetMissing { .. })
    }
}
