//! The Superstore dataset for tests: its path when present; when missing, a skip message, or a
//! failure under CI (where `scripts/test.sh` fetches it first, so missing means broken setup).

use std::path::PathBuf;

use fulfillment_ai::sources::superstore::default_dataset_path;

pub fn superstore_dataset() -> Option<PathBuf> {
    let path = default_dataset_path();
    if path.exists() {
        return Some(path);
    }
    let ci = std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false);
    assert!(
        !ci,
        "{} is missing under CI: run scripts/fetch_dataset.sh first",
        path.display()
    );
    eprintln!(
        "skipping a Superstore test: {} not found (run scripts/fetch_dataset.sh)",
        path.display()
    );
    None
}
