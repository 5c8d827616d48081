//! Source combinators: [`Chain`] replays one source's partitions and then continues with
//! another's (the default job: the Superstore history, then live generated orders), and
//! [`RateLimited`] caps a source at a wall-clock event rate.
//!
//! In: other [`Source`]s. Out: a [`Source`] with the same partition count.

use std::sync::Arc;
use std::time::Instant;

use super::{PartitionReader, PollStatus, RawBatch, Source};

/// `first`'s partitions, each followed by the same-numbered partition of `then`.
pub struct Chain {
    first: Arc<dyn Source>,
    then: Arc<dyn Source>,
}

impl Chain {
    /// Both sources must have the same number of partitions.
    pub fn new(first: Arc<dyn Source>, then: Arc<dyn Source>) -> Result<Chain, String> {
        if first.partitions() != then.partitions() {
            return Err(format!(
                "cannot chain {} partitions with {}",
                first.partitions(),
                then.partitions()
            ));
        }
        Ok(Chain { first, then })
    }
}

impl Source for Chain {
    fn partitions(&self) -> u32 {
        self.first.partitions()
    }
    fn describe(&self) -> String {
        format!("{}, then {}", self.first.describe(), self.then.describe())
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        let mut then: Vec<_> = self
            .then
            .readers(worker, peers)
            .into_iter()
            .map(Some)
            .collect();
        self.first
            .readers(worker, peers)
            .into_iter()
            .map(|a| {
                let slot = then
                    .iter_mut()
                    .find(|b| b.as_ref().is_some_and(|b| b.partition() == a.partition()))
                    .expect("same partitioning");
                let b = slot.take().expect("present");
                Box::new(ChainReader {
                    first: Some(a),
                    then: b,
                    offset_base: 0,
                    last_end: 0,
                }) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

struct ChainReader {
    first: Option<Box<dyn PartitionReader>>,
    then: Box<dyn PartitionReader>,
    /// Offsets of the second source continue after the first's.
    offset_base: u64,
    last_end: u64,
}

impl PartitionReader for ChainReader {
    fn partition(&self) -> u32 {
        self.then.partition()
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        if let Some(first) = self.first.as_mut() {
            match first.poll(max_events, batch) {
                PollStatus::Finished => {
                    self.first = None;
                    self.offset_base = self.last_end;
                }
                status => {
                    self.last_end = batch.first_offset + batch.len() as u64;
                    return status;
                }
            }
        }
        let status = self.then.poll(max_events, batch);
        batch.first_offset += self.offset_base;
        status
    }
}

/// Caps the total rate of a source (events per wall-clock second, spread over its partitions).
pub struct RateLimited {
    inner: Arc<dyn Source>,
    events_per_sec: f64,
}

impl RateLimited {
    pub fn new(inner: Arc<dyn Source>, events_per_sec: f64) -> Self {
        RateLimited {
            inner,
            events_per_sec,
        }
    }
}

impl Source for RateLimited {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    fn describe(&self) -> String {
        format!(
            "{} at {:.0} events/s",
            self.inner.describe(),
            self.events_per_sec
        )
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        let per_partition = self.events_per_sec / self.inner.partitions().max(1) as f64;
        self.inner
            .readers(worker, peers)
            .into_iter()
            .map(|r| {
                Box::new(RateLimitedReader {
                    inner: r,
                    per_sec: per_partition,
                    started: None,
                    emitted: 0,
                }) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

struct RateLimitedReader {
    inner: Box<dyn PartitionReader>,
    per_sec: f64,
    started: Option<Instant>,
    emitted: u64,
}

impl PartitionReader for RateLimitedReader {
    fn partition(&self) -> u32 {
        self.inner.partition()
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        let started = *self.started.get_or_insert_with(Instant::now);
        let allowed = (started.elapsed().as_secs_f64() * self.per_sec) as u64;
        let budget = allowed.saturating_sub(self.emitted).min(max_events as u64) as usize;
        if budget == 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            return PollStatus::Idle;
        }
        let before = batch.len();
        let status = self.inner.poll(budget, batch);
        self.emitted += (batch.len() - before) as u64;
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::memory::MemoryPartitions;

    #[test]
    fn chain_continues_each_partition_with_offsets_after_the_first() {
        let a = Arc::new(MemoryPartitions::new("a", [vec!["a0", "a1"], vec!["b0"]]));
        let b = Arc::new(MemoryPartitions::new("b", [vec!["a2"], vec!["b1", "b2"]]));
        let chain = Chain::new(a, b).unwrap();
        let mut readers = chain.readers(0, 1);
        let mut seen = Vec::new();
        for r in readers.iter_mut() {
            loop {
                let mut batch = RawBatch::default();
                if r.poll(10, &mut batch) == PollStatus::Finished {
                    break;
                }
                for (i, e) in batch.iter().enumerate() {
                    seen.push((
                        r.partition(),
                        batch.first_offset + i as u64,
                        String::from_utf8(e.to_vec()).unwrap(),
                    ));
                }
            }
        }
        let expect = [
            (0, 0, "a0"),
            (0, 1, "a1"),
            (0, 2, "a2"),
            (1, 0, "b0"),
            (1, 1, "b1"),
            (1, 2, "b2"),
        ];
        assert_eq!(seen, expect.map(|(p, o, s)| (p, o, s.to_string())));
    }
}
