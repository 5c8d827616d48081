//! Superstore replay (stub: being written).
