//! Kafka source: the order-events topic, read with rdkafka by explicit partition assignment (no
//! consumer-group rebalancing). Kafka partition `p` is logical partition `p`, so it belongs to
//! the timely worker `p % peers`; each worker runs one consumer whose partitions are split into
//! their own queues, so the ingest stage keeps a watermark per Kafka partition.
//!
//! In: a topic on a Kafka-compatible cluster, start offsets (earliest, latest, or explicit per
//! partition, e.g. from a snapshot). Out: raw message payloads in [`RawBatch`]es with their Kafka
//! offsets; per-partition progress ([`KafkaProgress`]: next offset, high watermark, lag) for
//! metrics and snapshots. Empty (tombstone) messages are passed on as empty events, which the
//! ingest stage dead-letters with a reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{PartitionReader, PollStatus, RawBatch, Source};
use crate::config::app::KafkaConfig;
use crate::kafka::{client_config, partition_count};

/// Where each partition starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartOffsets {
    Earliest,
    Latest,
    /// Next offset to read per partition; partitions not listed start at the earliest offset.
    At(BTreeMap<u32, i64>),
}

/// How to read the topic.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    pub kafka: KafkaConfig,
    pub topic: String,
    pub start: StartOffsets,
    /// Stop each partition at the end offset it had when the job started (a bounded replay of
    /// what is in the topic). Otherwise the source never ends.
    pub bounded: bool,
}

/// Per-partition read progress, shared by the readers and whoever reports or snapshots it.
#[derive(Debug)]
pub struct KafkaProgress {
    pub topic: String,
    /// Next offset to read per partition (-1 until the first message).
    next_offset: Vec<AtomicI64>,
    /// Latest high watermark per partition from the client's statistics (-1 unknown).
    high_watermark: Vec<AtomicI64>,
    consumed: AtomicU64,
    consumed_bytes: AtomicU64,
}

impl KafkaProgress {
    fn new(topic: &str, partitions: u32) -> Self {
        let v = || (0..partitions).map(|_| AtomicI64::new(-1)).collect();
        KafkaProgress {
            topic: topic.into(),
            next_offset: v(),
            high_watermark: v(),
            consumed: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.next_offset.len() as u32
    }

    /// Next offset to read per partition, for partitions that have delivered a message: what a
    /// snapshot stores and [`StartOffsets::At`] resumes from.
    pub fn positions(&self) -> BTreeMap<u32, i64> {
        self.next_offset
            .iter()
            .enumerate()
            .filter_map(|(p, o)| {
                let o = o.load(Ordering::Acquire);
                (o >= 0).then_some((p as u32, o))
            })
            .collect()
    }

    /// Messages behind the high watermark per partition (`None` until both are known).
    pub fn lag(&self, partition: u32) -> Option<i64> {
        let p = partition as usize;
        let hw = self.high_watermark.get(p)?.load(Ordering::Relaxed);
        let next = self.next_offset.get(p)?.load(Ordering::Relaxed);
        (hw >= 0).then(|| (hw - next.max(0)).max(0))
    }

    /// Sum of the known partition lags.
    pub fn total_lag(&self) -> i64 {
        (0..self.partitions()).filter_map(|p| self.lag(p)).sum()
    }

    pub fn consumed(&self) -> (u64, u64) {
        (
            self.consumed.load(Ordering::Relaxed),
            self.consumed_bytes.load(Ordering::Relaxed),
        )
    }

    fn record_high_watermark(&self, partition: i32, hw: i64) {
        if let Some(a) = self.high_watermark.get(partition as usize) {
            if hw >= 0 {
                a.store(hw, Ordering::Relaxed);
            }
        }
    }
}

/// Client context: logs through `tracing` and feeds high watermarks from statistics.
pub struct SourceContext {
    progress: Arc<KafkaProgress>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(t) = statistics.topics.get(&self.progress.topic) {
            for (p, s) in &t.partitions {
                if *p >= 0 {
                    self.progress.record_high_watermark(*p, s.hi_offset);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker restarts and timeouts surface here; librdkafka reconnects on its own.
        tracing::warn!(target: "librdkafka", "consumer: {error}: {reason}");
    }
}

impl ConsumerContext for SourceContext {}

type SourceConsumer = BaseConsumer<SourceContext>;

/// The order-events topic as a [`Source`].
pub struct KafkaSource {
    cfg: KafkaSourceConfig,
    partitions: u32,
    /// Per-partition end offsets when bounded.
    end_offsets: Option<Vec<i64>>,
    progress: Arc<KafkaProgress>,
    stop: Arc<AtomicBool>,
}

impl KafkaSource {
    /// Connects once to read the topic's partitions (and end offsets when bounded).
    pub fn connect(cfg: KafkaSourceConfig) -> Result<KafkaSource> {
        let probe: BaseConsumer = client_config(&cfg.kafka, &[("group.id", "fulfillment-ai")])
            .create()
            .context("creating a Kafka consumer (check `kafka.properties` in the settings and KAFKA_* environment variables)")?;
        let timeout = Duration::from_secs(15);
        let partitions =
            partition_count(probe.client(), &cfg.topic, timeout).with_context(|| {
                format!(
                    "reading topic `{}` on {}",
                    cfg.topic, cfg.kafka.bootstrap_servers
                )
            })?;
        let end_offsets = if cfg.bounded {
            let mut ends = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                let (_low, high) = probe
                    .fetch_watermarks(&cfg.topic, p as i32, timeout)
                    .with_context(|| format!("reading the end offset of {}/{p}", cfg.topic))?;
                ends.push(high);
            }
            Some(ends)
        } else {
            None
        };
        let progress = Arc::new(KafkaProgress::new(&cfg.topic, partitions));
        if let StartOffsets::At(at) = &cfg.start {
            for (p, o) in at {
                if let Some(a) = progress.next_offset.get(*p as usize) {
                    a.store(*o, Ordering::Release);
                }
            }
        }
        Ok(KafkaSource {
            cfg,
            partitions,
            end_offsets,
            progress,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Setting this flag ends every partition at its next poll: the job then drains, fires its
    /// pending timers, flushes its sinks and returns (a graceful stop).
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Read progress of every partition (offsets for snapshots, lag for metrics).
    pub fn progress(&self) -> Arc<KafkaProgress> {
        self.progress.clone()
    }

    fn consumer(&self, owned: &[u32], start: &StartOffsets) -> Result<Arc<SourceConsumer>> {
        let consumer: SourceConsumer = client_config(
            &self.cfg.kafka,
            &[
                // Offsets are tracked by the job (and snapshotted by the recovery layer), not
                // committed to a group: assignment is explicit.
                ("group.id", "fulfillment-ai"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
                ("statistics.interval.ms", "1000"),
                ("fetch.wait.max.ms", "20"),
                ("queued.min.messages", "20000"),
            ],
        )
        .create_with_context(SourceContext {
            progress: self.progress.clone(),
        })
        .context("creating a Kafka consumer")?;
        let mut tpl = TopicPartitionList::new();
        for &p in owned {
            let offset = match start {
                StartOffsets::Earliest => Offset::Beginning,
                StartOffsets::Latest => Offset::End,
                StartOffsets::At(at) => {
                    at.get(&p).map_or(Offset::Beginning, |&o| Offset::Offset(o))
                }
            };
            tpl.add_partition_offset(&self.cfg.topic, p as i32, offset)
                .context("building the partition assignment")?;
        }
        consumer.assign(&tpl).context("assigning partitions")?;
        Ok(Arc::new(consumer))
    }
}

impl Source for KafkaSource {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn describe(&self) -> String {
        format!(
            "Kafka topic {} ({} partitions{}) on {}",
            self.cfg.topic,
            self.partitions,
            if self.cfg.bounded {
                ", bounded at the start's end offsets"
            } else {
                ""
            },
            self.cfg.kafka.bootstrap_servers
        )
    }

    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        self.readers_at(worker, peers, &self.cfg.start)
    }

    fn readers_from(
        &self,
        worker: usize,
        peers: usize,
        start: &BTreeMap<u32, u64>,
    ) -> Vec<Box<dyn PartitionReader>> {
        let at = start.iter().map(|(&p, &o)| (p, o as i64)).collect();
        self.readers_at(worker, peers, &StartOffsets::At(at))
    }
}

impl KafkaSource {
    fn readers_at(
        &self,
        worker: usize,
        peers: usize,
        start: &StartOffsets,
    ) -> Vec<Box<dyn PartitionReader>> {
        let owned: Vec<u32> = (0..self.partitions)
            .filter(|p| *p as usize % peers == worker)
            .collect();
        if owned.is_empty() {
            return Vec::new();
        }
        let consumer = match self.consumer(&owned, start) {
            Ok(c) => c,
            Err(e) => panic!("worker {worker}: {e:#}"),
        };
        owned
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let queue = consumer
                    .split_partition_queue(&self.cfg.topic, p as i32)
                    .expect("topic name and partition are valid");
                let end = self.end_offsets.as_ref().map(|e| e[p as usize]);
                Box::new(KafkaPartitionReader {
                    partition: p,
                    consumer: consumer.clone(),
                    // One reader per consumer serves its callbacks (statistics, errors).
                    serves_consumer: i == 0,
                    queue,
                    end,
                    pending: None,
                    progress: self.progress.clone(),
                    last_served: Instant::now(),
                    stop: self.stop.clone(),
                }) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

struct KafkaPartitionReader {
    partition: u32,
    consumer: Arc<SourceConsumer>,
    serves_consumer: bool,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<SourceContext>,
    /// Bounded: the partition ends at this offset.
    end: Option<i64>,
    /// A message that could not join the current batch because its offset is not contiguous.
    pending: Option<(i64, Vec<u8>)>,
    progress: Arc<KafkaProgress>,
    last_served: Instant,
    stop: Arc<AtomicBool>,
}

impl KafkaPartitionReader {
    fn next_offset(&self) -> i64 {
        self.progress.next_offset[self.partition as usize].load(Ordering::Relaxed)
    }

    fn reached_end(&self) -> bool {
        self.end
            .is_some_and(|end| end <= 0 || (self.next_offset() >= end))
    }
}

/// Appends a message to `batch` if its offset continues the batch; otherwise keeps it in
/// `pending` for the next batch and returns false.
fn append(
    progress: &KafkaProgress,
    partition: u32,
    pending: &mut Option<(i64, Vec<u8>)>,
    batch: &mut RawBatch,
    offset: i64,
    payload: &[u8],
) -> bool {
    if batch.is_empty() {
        batch.first_offset = offset as u64;
    } else if batch.first_offset + batch.len() as u64 != offset as u64 {
        *pending = Some((offset, payload.to_vec()));
        return false;
    }
    batch.push(payload);
    progress.next_offset[partition as usize].store(offset + 1, Ordering::Release);
    progress.consumed.fetch_add(1, Ordering::Relaxed);
    progress
        .consumed_bytes
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    true
}

impl PartitionReader for KafkaPartitionReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        if self.stop.load(Ordering::Relaxed) {
            return PollStatus::Finished;
        }
        if self.serves_consumer && self.last_served.elapsed() >= Duration::from_millis(100) {
            self.last_served = Instant::now();
            // Every partition has its own queue, so this only serves callbacks.
            if let Some(Ok(m)) = self.consumer.poll(Duration::ZERO) {
                tracing::error!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "message on the main consumer queue; partition queues were not split"
                );
            }
        }
        if let Some((offset, payload)) = self.pending.take() {
            append(
                &self.progress,
                self.partition,
                &mut self.pending,
                batch,
                offset,
                &payload,
            );
        }
        let mut eof = false;
        while batch.len() < max_events && self.pending.is_none() {
            if self.end.is_some_and(|end| self.next_offset() >= end) {
                break;
            }
            match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let offset = m.offset();
                    let payload = m.payload().unwrap_or(&[]);
                    if !append(
                        &self.progress,
                        self.partition,
                        &mut self.pending,
                        batch,
                        offset,
                        payload,
                    ) {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    eof = true;
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(partition = self.partition, error = %e, "consume error; retrying");
                    break;
                }
            }
        }
        if !batch.is_empty() {
            PollStatus::Ready
        } else if self.reached_end() || (eof && self.end.is_some()) {
            PollStatus::Finished
        } else {
            PollStatus::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_high_watermark_minus_next_offset_once_both_are_known() {
        let p = KafkaProgress::new("t", 3);
        assert_eq!(p.lag(0), None, "no statistics yet");
        p.record_high_watermark(0, 100);
        assert_eq!(p.lag(0), Some(100), "nothing read yet");
        p.next_offset[0].store(60, Ordering::Relaxed);
        p.record_high_watermark(1, 5);
        p.next_offset[1].store(5, Ordering::Relaxed);
        assert_eq!((p.lag(0), p.lag(1), p.lag(2)), (Some(40), Some(0), None));
        assert_eq!(p.total_lag(), 40);
        p.record_high_watermark(0, -1);
        assert_eq!(
            p.lag(0),
            Some(40),
            "unknown watermarks from statistics are ignored"
        );
        assert_eq!(p.positions(), BTreeMap::from([(0, 60), (1, 5)]));
        assert_eq!(p.lag(7), None);
    }
}
