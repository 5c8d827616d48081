//! The reader's pending state: the open orders' slots and their events waiting to be emitted.
//!
//! In: [`Pending`] events of newly simulated orders, keyed by arrival (event time + jitter), and
//! duplicates re-queued by the reader. Out: the earliest pending event by `(key, seq)`, exactly as
//! one binary heap would give it, from a small heap for the loaded hour of keys, a ring of hourly
//! buckets for the next weeks and a heap for anything later.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::lifecycle::{Step, HOUR};

/// The static fields of an open order that its events' JSON needs.
#[derive(Clone, Copy, Default)]
pub(super) struct OrderSlot {
    pub(super) n: u64,
    pub(super) customer: u32,
    pub(super) segment: u8,
    pub(super) region: u8,
    pub(super) mode: u8,
    pub(super) warehouse: u8,
    pub(super) carrier: u8,
    pub(super) qty: u32,
    pub(super) amount: f64,
    pub(super) promised_ts: i64,
    pub(super) tracking: u64,
    /// Events still pending; the slot is reused at 0.
    pub(super) pending: u32,
}

/// An event waiting to be emitted, ordered by arrival key (event time + jitter), then push order.
pub(super) struct Pending {
    pub(super) key: i64,
    pub(super) seq: u64,
    pub(super) ts: i64,
    pub(super) slot: u32,
    pub(super) k: u16,
    pub(super) dup: bool,
    pub(super) step: Step,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.key, self.seq) == (o.key, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    /// Reversed: `BinaryHeap` is a max-heap and we want the smallest key first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.key, o.seq).cmp(&(self.key, self.seq))
    }
}

/// Pending events in exact `(key, seq)` order: a small heap for the loaded hour of arrival keys,
/// a ring of hourly buckets for the next weeks, and a heap for anything later. (One big binary
/// heap spent most of the generator's time in cache misses.)
pub(super) struct Schedule {
    near: BinaryHeap<Pending>,
    ring: Vec<Vec<Pending>>,
    far: BinaryHeap<Pending>,
    /// Bucket loaded into `near`: every pending key in it or before it is in `near`.
    bucket: i64,
    in_ring: usize,
}

const BUCKET_MS: i64 = HOUR;
const RING_BUCKETS: i64 = 1024;

impl Schedule {
    pub(super) fn new(start_ms: i64) -> Self {
        let ring = (0..RING_BUCKETS).map(|_| Vec::new()).collect();
        Schedule {
            near: BinaryHeap::new(),
            ring,
            far: BinaryHeap::new(),
            bucket: start_ms.div_euclid(BUCKET_MS),
            in_ring: 0,
        }
    }
    pub(super) fn len(&self) -> usize {
        self.near.len() + self.in_ring + self.far.len()
    }
    pub(super) fn push(&mut self, p: Pending) {
        let b = p.key.div_euclid(BUCKET_MS);
        if b <= self.bucket {
            self.near.push(p);
        } else if b < self.bucket + RING_BUCKETS {
            self.ring[b.rem_euclid(RING_BUCKETS) as usize].push(p);
            self.in_ring += 1;
        } else {
            self.far.push(p);
        }
    }
    /// Loads buckets until `near` holds the earliest pending event (or nothing is pending).
    fn fill(&mut self) {
        while self.near.is_empty() && (self.in_ring > 0 || !self.far.is_empty()) {
            self.bucket = match self.far.peek() {
                Some(f) if self.in_ring == 0 => f.key.div_euclid(BUCKET_MS),
                _ => self.bucket + 1,
            };
            let slot = &mut self.ring[self.bucket.rem_euclid(RING_BUCKETS) as usize];
            self.in_ring -= slot.len();
            self.near.extend(slot.drain(..));
            while self
                .far
                .peek()
                .is_some_and(|f| f.key.div_euclid(BUCKET_MS) <= self.bucket)
            {
                self.near.push(self.far.pop().expect("peeked"));
            }
        }
    }
    pub(super) fn peek_key(&mut self) -> Option<i64> {
        self.fill();
        self.near.peek().map(|p| p.key)
    }
    pub(super) fn pop(&mut self) -> Option<Pending> {
        self.fill();
        self.near.pop()
    }
}
