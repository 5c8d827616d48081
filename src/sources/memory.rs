//! An in-memory partitioned source: the replay of a materialised event stream (the Superstore
//! replay, a loaded JSONL file, test inputs, benchmark inputs).
//!
//! In: raw events per partition. Out: [`PartitionReader`]s that replay them in order.

use std::sync::Arc;

use super::{PartitionReader, PollStatus, RawBatch, Source};

/// Raw events per partition, stored contiguously.
#[derive(Clone, Debug, Default)]
pub struct MemoryPartitions {
    parts: Arc<Vec<RawBatch>>,
    label: String,
}

impl MemoryPartitions {
    /// Builds from explicit per-partition event lists.
    pub fn new<I, P, E>(label: impl Into<String>, partitions: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: IntoIterator<Item = E>,
        E: AsRef<[u8]>,
    {
        let parts = partitions
            .into_iter()
            .map(|events| {
                let mut b = RawBatch::default();
                for e in events {
                    b.push(e.as_ref());
                }
                b
            })
            .collect();
        MemoryPartitions {
            parts: Arc::new(parts),
            label: label.into(),
        }
    }

    /// Spreads one ordered stream over `partitions` round-robin (event `i` -> `i % partitions`).
    pub fn round_robin<E: AsRef<[u8]>>(
        label: impl Into<String>,
        events: impl IntoIterator<Item = E>,
        partitions: u32,
    ) -> Self {
        let mut parts = vec![RawBatch::default(); partitions.max(1) as usize];
        let n = parts.len();
        for (i, e) in events.into_iter().enumerate() {
            parts[i % n].push(e.as_ref());
        }
        MemoryPartitions {
            parts: Arc::new(parts),
            label: label.into(),
        }
    }

    /// Total number of events.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Total bytes of raw events.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }
    /// Number of partitions.
    pub fn partitions_len(&self) -> usize {
        self.parts.len()
    }
    /// Raw events of one partition, in order.
    pub fn partition_events(&self, p: usize) -> impl Iterator<Item = &[u8]> {
        self.parts[p].iter()
    }
}

impl Source for MemoryPartitions {
    fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }
    fn describe(&self) -> String {
        format!(
            "{} ({} events in {} partitions)",
            self.label,
            self.len(),
            self.parts.len()
        )
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        (0..self.parts.len())
            .filter(|p| p % peers == worker)
            .map(|p| {
                Box::new(MemoryReader {
                    parts: self.parts.clone(),
                    partition: p,
                    next: 0,
                }) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

struct MemoryReader {
    parts: Arc<Vec<RawBatch>>,
    partition: usize,
    next: usize,
}

impl PartitionReader for MemoryReader {
    fn partition(&self) -> u32 {
        self.partition as u32
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        let part = &self.parts[self.partition];
        if self.next >= part.ends.len() {
            return PollStatus::Finished;
        }
        batch.first_offset = self.next as u64;
        let end = (self.next + max_events).min(part.ends.len());
        let start_byte = if self.next == 0 {
            0
        } else {
            part.ends[self.next - 1]
        };
        let end_byte = part.ends[end - 1];
        let base = batch.data.len();
        batch
            .data
            .extend_from_slice(&part.data[start_byte..end_byte]);
        batch.ends.extend(
            part.ends[self.next..end]
                .iter()
                .map(|e| e - start_byte + base),
        );
        self.next = end;
        PollStatus::Ready
    }
}
