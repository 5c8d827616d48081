//! Event sources. A source is a fixed set of logical partitions, each an ordered sequence of raw
//! event bytes; each timely worker reads the partitions `p` with `p % peers == index`.
//!
//! In: a dataset, a generator seed, a JSONL file, a Kafka topic. Out: raw bytes
//! in [`RawBatch`]es, decoded downstream by `dataflow::ingest`. Sources never decode: a malformed
//! line is the ingest stage's to reject.

pub mod chain;
pub mod error;
pub mod generator;
pub mod jsonl;
pub mod kafka;
pub mod memory;
pub mod superstore;

/// A batch of raw events from one partition: event `i` is `data[ends[i-1]..ends[i]]`.
#[derive(Default, Debug, Clone)]
pub struct RawBatch {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
    /// Offset (position in the partition) of the first event in the batch.
    pub first_offset: u64,
}

impl RawBatch {
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
    pub fn push(&mut self, event: &[u8]) {
        self.data.extend_from_slice(event);
        self.ends.push(self.data.len());
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = &self.data[start..end];
            start = end;
            s
        })
    }
}

/// What a poll of a partition found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    /// Events were appended (possibly fewer than asked).
    Ready,
    /// Nothing available right now; the partition is live.
    Idle,
    /// The partition has ended; nothing more will come.
    Finished,
}

/// Reads one partition.
pub trait PartitionReader: Send {
    fn partition(&self) -> u32;
    /// Appends up to `max_events` events to `batch` (which the caller cleared), setting
    /// `batch.first_offset` when it appends.
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus;
}

/// Creates the readers of the partitions a worker owns.
pub trait Source: Send + Sync {
    /// Number of logical partitions.
    fn partitions(&self) -> u32;
    /// Human-readable description for logs.
    fn describe(&self) -> String;
    /// Readers for partitions `p` with `p % peers == worker`.
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>>;
    /// Readers positioned at `start` (next offset per partition; unlisted partitions from
    /// their beginning), for resuming from a checkpoint. By default the partitions are read
    /// from the beginning and the events before `start` are skipped; sources that can seek
    /// (Kafka) override this.
    fn readers_from(
        &self,
        worker: usize,
        peers: usize,
        start: &std::collections::BTreeMap<u32, u64>,
    ) -> Vec<Box<dyn PartitionReader>> {
        self.readers(worker, peers)
            .into_iter()
            .map(|r| match start.get(&r.partition()) {
                Some(&from) if from > 0 => Box::new(SkipTo {
                    inner: r,
                    from,
                    scratch: RawBatch::default(),
                }) as Box<dyn PartitionReader>,
                _ => r,
            })
            .collect()
    }
}

/// A reader that drops the events before offset `from` (resuming a source that cannot seek).
struct SkipTo {
    inner: Box<dyn PartitionReader>,
    from: u64,
    scratch: RawBatch,
}

impl PartitionReader for SkipTo {
    fn partition(&self) -> u32 {
        self.inner.partition()
    }

    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        loop {
            self.scratch.clear();
            let status = self.inner.poll(max_events, &mut self.scratch);
            if status != PollStatus::Ready {
                return status;
            }
            let first = self.scratch.first_offset;
            let mut appended = false;
            for (i, raw) in self.scratch.iter().enumerate() {
                let offset = first + i as u64;
                if offset >= self.from {
                    if !appended {
                        batch.first_offset = offset;
                        appended = true;
                    }
                    batch.push(raw);
                }
            }
            if appended {
                return PollStatus::Ready;
            }
        }
    }
}

/// Partition of an order id for keyed sources (stable across runs and platforms: FNV-1a).
pub fn partition_of(order_id: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in order_id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions as u64) as u32
}
