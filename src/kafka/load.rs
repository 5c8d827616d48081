//! Load generator: writes a source's raw events into the order-events topic, at a target rate or
//! flat out. Logical partition `p` goes to Kafka partition `p % partitions`, so each order's events
//! stay in one partition, in order. Events are written exactly as the source has them (malformed
//! lines included: they are the job's to dead-letter).
//!
//! In: a [`Source`] (generator, replay, JSONL file), a topic, a rate. Out: messages on the topic
//! and a [`LoadReport`]; progress through a callback.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::app::KafkaConfig;
use crate::kafka::{client_config, partition_count, Topics};
use crate::sinks::kafka::{KafkaSink, KafkaSinkConfig};
use crate::sources::{PollStatus, RawBatch, Source};

/// What to write.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub topic: String,
    /// Events per second over all partitions; `None` is flat out.
    pub rate: Option<f64>,
    /// Stop after this many events (a live source otherwise never ends).
    pub max_events: Option<u64>,
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub events: u64,
    pub bytes: u64,
    /// Until every message was acknowledged by the broker.
    pub seconds: f64,
    pub delivered: u64,
    pub undelivered: u64,
}

impl LoadReport {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Writes `source` to the topic; `progress(events, bytes)` is called about ten times a second.
pub fn produce(
    kafka: &KafkaConfig,
    topics: &Topics,
    source: &dyn Source,
    opts: &LoadOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<LoadReport> {
    let probe: BaseConsumer = client_config(kafka, &[]).create()?;
    let partitions = partition_count(probe.client(), &opts.topic, Duration::from_secs(15))?;
    drop(probe);
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("the rate must be a positive number of events per second");
    }
    let mut sink = KafkaSink::new(KafkaSinkConfig {
        kafka: kafka.clone(),
        topics: topics.clone(),
        out_dir: None,
        message_timeout: Duration::from_secs(60),
    })?;
    let mut readers = source.readers(0, 1);
    let mut done = vec![false; readers.len()];
    let mut batch = RawBatch::default();
    let started = Instant::now();
    let mut last_progress = started;
    let (mut events, mut bytes) = (0u64, 0u64);
    // Small batches at a target rate keep the pace smooth; large ones flat out.
    let per_poll = if opts.rate.is_some() { 64 } else { 4096 };
    'outer: while done.iter().any(|d| !d) {
        let mut idle = true;
        for (i, r) in readers.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            batch.clear();
            let limit = opts
                .max_events
                .map_or(per_poll, |m| per_poll.min((m - events) as usize));
            match r.poll(limit, &mut batch) {
                PollStatus::Finished => done[i] = true,
                PollStatus::Idle => {}
                PollStatus::Ready => {
                    idle = false;
                    let partition = (r.partition() % partitions) as i32;
                    for raw in batch.iter() {
                        sink.raw(&opts.topic, partition, raw)?;
                        bytes += raw.len() as u64;
                    }
                    events += batch.len() as u64;
                }
            }
            if let Some(rate) = opts.rate {
                let due = Duration::from_secs_f64(events as f64 / rate);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
            if opts.max_events.is_some_and(|m| events >= m) {
                break 'outer;
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(100) {
            last_progress = Instant::now();
            sink.service()?;
            progress(events, bytes);
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let undelivered = sink.finish()?;
    progress(events, bytes);
    let stats = sink.stats();
    Ok(LoadReport {
        events,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        delivered: stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
        undelivered,
    })
}
