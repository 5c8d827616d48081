//! Synthetic generator (stub: being written).
