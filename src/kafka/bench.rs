//! Kafka benchmarks: (a) consume throughput of the full job against a bare rdkafka consumer
//! reading the same topic in the same run; (b) end-to-end latency from an event's produce time to
//! the KPI record it finalises arriving on the KPI topic, at a target input rate.
//!
//! In: a broker ([`KafkaConfig`]), the topic layout, a spec and a generated input. Each
//! measurement creates its own topics (names suffixed with a run id) so runs do not mix.
//! Out: [`ConsumeResult`] and [`LatencyResult`].
//!
//! Latency, exactly: a final KPI record for a window ending at `e` cannot exist before every
//! partition has delivered an event with `ts >= e + out_of_orderness + allowed_lateness` (the
//! watermark has to pass `e`). The latency of the record is its arrival time at a consumer of
//! the KPI topic minus the latest of those per-partition produce times. So the configured
//! watermark delay is not counted; everything the system adds (broker, consume, dataflow,
//! sinks, broker again, fetch) is.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::app::KafkaConfig;
use crate::config::PipelineSpec;
use crate::dataflow::{run_job, wall_clock_ms, JobOptions};
use crate::kafka::load::{produce, LoadOptions};
use crate::kafka::{client_config, create_topics, partition_count, Topics};
use crate::model::records::KpiRecord;
use crate::sinks::kafka::{KafkaSink, KafkaSinkConfig};
use crate::sources::kafka::{KafkaSource, KafkaSourceConfig, StartOffsets};
use crate::sources::memory::MemoryPartitions;
use crate::sources::{PollStatus, RawBatch, Source};

/// Topics of `topics` renamed with a run-unique suffix, created on the broker.
pub(crate) fn fresh_topics(kafka: &KafkaConfig, topics: &Topics, label: &str) -> Result<Topics> {
    let suffix = format!("-{label}-{}", wall_clock_ms());
    let mut t = topics.clone();
    for spec in [
        &mut t.order_events,
        &mut t.kpis,
        &mut t.deviations,
        &mut t.actions,
        &mut t.dead_letters,
        &mut t.late_events,
    ] {
        spec.name.push_str(&suffix);
    }
    create_topics(kafka, &t)?;
    Ok(t)
}

/// Consume throughput of one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumeResult {
    pub events: u64,
    pub bytes: u64,
    pub produce_events_per_sec: f64,
    pub bare_consumer_events_per_sec: f64,
    /// The job (source, dataflow, JSONL sinks) over the same topic.
    pub job_events_per_sec: f64,
    /// The job also producing its outputs to Kafka.
    pub job_with_kafka_sinks_events_per_sec: f64,
    pub job_over_bare: f64,
    pub job_with_kafka_sinks_over_bare: f64,
    pub workers: usize,
}

/// Reads the whole topic (to the end offsets at start) with a plain consumer; events/s.
pub fn bare_consume(kafka: &KafkaConfig, topic: &str) -> Result<(u64, f64)> {
    let consumer: BaseConsumer = client_config(
        kafka,
        &[
            ("group.id", "fulfillment-ai-bench"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "20"),
            ("queued.min.messages", "20000"),
        ],
    )
    .create()?;
    let timeout = Duration::from_secs(15);
    let n = partition_count(consumer.client(), topic, timeout)?;
    let mut remaining = 0i64;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        remaining += high - low;
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut events, mut bytes) = (0u64, 0u64);
    while (events as i64) < remaining {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("bare consumer stuck at {events} of {remaining}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                events += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None => {}
        }
    }
    std::hint::black_box(bytes);
    Ok((events, events as f64 / started.elapsed().as_secs_f64()))
}

fn job_consume(
    spec: &PipelineSpec,
    kafka: &KafkaConfig,
    topics: &Topics,
    workers: usize,
    kafka_sinks: bool,
) -> Result<(u64, f64)> {
    let source = KafkaSource::connect(KafkaSourceConfig {
        kafka: kafka.clone(),
        topic: topics.order_events.name.clone(),
        start: StartOffsets::Earliest,
        bounded: true,
    })?;
    let opts = JobOptions {
        workers,
        keep_in_memory: false,
        kafka_sink: kafka_sinks.then(|| KafkaSinkConfig {
            kafka: kafka.clone(),
            topics: topics.clone(),
            out_dir: None,
            message_timeout: Duration::from_secs(60),
        }),
        ..JobOptions::default()
    };
    let started = Instant::now();
    let report = run_job(spec, Arc::new(source), &opts)?;
    let secs = started.elapsed().as_secs_f64();
    Ok((
        report.counters.received,
        report.counters.received as f64 / secs,
    ))
}

/// Produces `input` to fresh topics, then reads it with a bare consumer, the job, and the job
/// with Kafka sinks, in that order.
pub fn consume_throughput(
    spec: &PipelineSpec,
    kafka: &KafkaConfig,
    topics: &Topics,
    input: &MemoryPartitions,
    workers: usize,
) -> Result<ConsumeResult> {
    let t = fresh_topics(kafka, topics, "consume")?;
    let load = produce(
        kafka,
        &t,
        input,
        &LoadOptions {
            topic: t.order_events.name.clone(),
            rate: None,
            max_events: None,
        },
        |_, _| {},
    )?;
    let (bare_events, bare) = bare_consume(kafka, &t.order_events.name)?;
    let (job_events, job) = job_consume(spec, kafka, &t, workers, false)?;
    let (sink_events, with_sinks) = job_consume(spec, kafka, &t, workers, true)?;
    if bare_events != load.events || job_events != load.events || sink_events != load.events {
        bail!(
            "read counts differ: produced {}, bare {bare_events}, job {job_events}, job+sinks {sink_events}",
            load.events
        );
    }
    Ok(ConsumeResult {
        events: load.events,
        bytes: load.bytes,
        produce_events_per_sec: load.events_per_sec(),
        bare_consumer_events_per_sec: bare,
        job_events_per_sec: job,
        job_with_kafka_sinks_events_per_sec: with_sinks,
        job_over_bare: job / bare,
        job_with_kafka_sinks_over_bare: with_sinks / bare,
        workers,
    })
}

/// End-to-end latency at one input rate.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyResult {
    /// Target rate (events/s); `None` = flat out.
    pub target_rate: Option<f64>,
    pub achieved_rate: f64,
    pub events: u64,
    /// Final KPI records measured.
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Consumer lag (events) when the producer finished, and seconds the job then needed to
    /// read everything.
    pub lag_at_end: i64,
    pub catch_up_seconds: f64,
    /// The job read everything within the catch-up limit.
    pub caught_up: bool,
    /// Least-squares slope of the consumer lag (events produced minus events the job read,
    /// sampled every 250 ms) over the second half of the produce phase, events/s; positive
    /// means the job falls further behind.
    pub lag_growth_per_sec: f64,
    /// (seconds since the producer started, lag in events), every 250 ms.
    #[serde(skip)]
    pub lag_samples: Vec<(f64, i64)>,
}

/// Per partition: (highest event time produced so far, wall ms when it was handed over).
type ProduceMarks = Vec<Vec<(i64, i64)>>;

/// How to drive one latency measurement.
#[derive(Clone, Debug)]
pub struct LatencyRun {
    pub workers: usize,
    /// Target input rate (events/s); `None` = flat out.
    pub rate: Option<f64>,
    /// Seconds of input.
    pub seconds: f64,
    /// How long the job may take to read everything once the producer stopped.
    pub catch_up_limit: Duration,
}

/// Runs the job on fresh topics while producing `input` at `run.rate` for up to `run.seconds`,
/// and measures how long final KPI records take to arrive after the watermark allows them.
/// After the producer stops, the job gets `run.catch_up_limit` to read everything; either way
/// it is then stopped and measured (`caught_up` says which).
pub fn latency(
    spec: &PipelineSpec,
    kafka: &KafkaConfig,
    topics: &Topics,
    input: &MemoryPartitions,
    run: &LatencyRun,
) -> Result<LatencyResult> {
    let LatencyRun {
        workers,
        rate,
        seconds,
        catch_up_limit,
    } = run.clone();
    let t = fresh_topics(kafka, topics, "latency")?;
    let partitions = t.order_events.partitions;

    // The job, unbounded, stopped by its handle.
    let source = KafkaSource::connect(KafkaSourceConfig {
        kafka: kafka.clone(),
        topic: t.order_events.name.clone(),
        start: StartOffsets::Earliest,
        bounded: false,
    })?;
    let stop = source.stop_handle();
    let progress = source.progress();
    let opts = JobOptions {
        workers,
        keep_in_memory: false,
        kafka_sink: Some(KafkaSinkConfig {
            kafka: kafka.clone(),
            topics: t.clone(),
            out_dir: None,
            message_timeout: Duration::from_secs(60),
        }),
        ..JobOptions::default()
    };
    let job_spec = spec.clone();
    let job = std::thread::spawn(move || run_job(&job_spec, Arc::new(source), &opts));

    // A reader of the KPI topic: (window_end, arrival wall ms) of every final record.
    let reader_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let kafka = kafka.clone();
        let topic = t.kpis.name.clone();
        let stop = reader_stop.clone();
        std::thread::spawn(move || -> Result<Vec<(i64, i64)>> {
            let consumer: BaseConsumer = client_config(
                &kafka,
                &[
                    ("group.id", "fulfillment-ai-bench"),
                    ("enable.auto.commit", "false"),
                    ("fetch.wait.max.ms", "5"),
                ],
            )
            .create()?;
            let n = partition_count(consumer.client(), &topic, Duration::from_secs(15))?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..n as i32 {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            consumer.assign(&tpl)?;
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let arrived = wall_clock_ms();
                    if let Some(r) = m
                        .payload()
                        .and_then(|p| serde_json::from_slice::<KpiRecord>(p).ok())
                    {
                        if r.is_final {
                            out.push((r.window_end, arrived));
                        }
                    }
                }
            }
            Ok(out)
        })
    };

    // The producer, here: small batches per partition, paced, marking event time vs wall time.
    let mut sink = KafkaSink::new(KafkaSinkConfig {
        kafka: kafka.clone(),
        topics: t.clone(),
        out_dir: None,
        message_timeout: Duration::from_secs(60),
    })?;
    let mut readers = input.readers(0, 1);
    let mut marks: ProduceMarks = vec![Vec::new(); readers.len()];
    let mut max_ts = vec![i64::MIN; readers.len()];
    let mut batch = RawBatch::default();
    let started = Instant::now();
    let mut events = 0u64;
    let mut lag_samples: Vec<(f64, i64)> = Vec::new();
    let mut next_lag_sample = Duration::ZERO;
    let per_poll = if rate.is_some() { 16 } else { 512 };
    'produce: loop {
        let mut any = false;
        for (i, r) in readers.iter_mut().enumerate() {
            batch.clear();
            if r.poll(per_poll, &mut batch) != PollStatus::Ready {
                continue;
            }
            any = true;
            let partition = (r.partition() % partitions) as i32;
            for raw in batch.iter() {
                if let Ok(e) = crate::model::decode_event(raw) {
                    max_ts[i] = max_ts[i].max(e.ts);
                }
                sink.raw(&t.order_events.name, partition, raw)?;
            }
            events += batch.len() as u64;
            marks[i].push((max_ts[i], wall_clock_ms()));
            let elapsed = started.elapsed();
            if elapsed >= next_lag_sample {
                next_lag_sample = elapsed + Duration::from_millis(250);
                let lag = events as i64 - progress.consumed().0 as i64;
                lag_samples.push((elapsed.as_secs_f64(), lag));
            }
            if let Some(rate) = rate {
                let due = Duration::from_secs_f64(events as f64 / rate);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
            if started.elapsed().as_secs_f64() >= seconds {
                break 'produce;
            }
        }
        sink.service()?;
        if !any {
            break;
        }
    }
    sink.finish()?;
    let produce_secs = started.elapsed().as_secs_f64();
    let finished_at = wall_clock_ms();
    let lag_at_end = events as i64 - progress.consumed().0 as i64;
    let catch_up = Instant::now();
    let mut caught_up = true;
    while progress.consumed().0 < events {
        if catch_up.elapsed() > catch_up_limit {
            caught_up = false;
            tracing::warn!(
                lag = events - progress.consumed().0,
                limit_s = catch_up_limit.as_secs_f64(),
                "the job did not catch up in time; stopping it"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let catch_up_seconds = catch_up.elapsed().as_secs_f64();
    // Let the last triggered records arrive, then stop (the end-of-input drain's records are
    // emitted after `stopped_at` and are not counted).
    std::thread::sleep(Duration::from_secs(2));
    let stopped_at = wall_clock_ms();
    stop.store(true, Ordering::SeqCst);
    job.join()
        .map_err(|_| anyhow::anyhow!("job thread panicked"))?
        .context("job")?;
    std::thread::sleep(Duration::from_millis(500));
    reader_stop.store(true, Ordering::SeqCst);
    let finals = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;

    let trail = spec.time.out_of_orderness.ms() + spec.time.allowed_lateness.ms();
    let mut latencies: Vec<f64> = Vec::new();
    let mut triggers: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    for (window_end, arrived) in finals {
        if arrived > stopped_at {
            continue;
        }
        let trigger = *triggers
            .entry(window_end)
            .or_insert_with(|| trigger_time(&marks, window_end + trail));
        if let Some(trigger) = trigger {
            if trigger <= finished_at {
                latencies.push((arrived - trigger) as f64);
            }
        }
    }
    if latencies.is_empty() {
        tracing::warn!("no final KPI record could be matched to its trigger");
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(LatencyResult {
        target_rate: rate,
        achieved_rate: events as f64 / produce_secs,
        events,
        samples: latencies.len(),
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: q(1.0),
        lag_at_end,
        catch_up_seconds,
        caught_up,
        lag_growth_per_sec: lag_growth(&lag_samples),
        lag_samples,
    })
}

/// Slope (events/s) of the lag over the second half of the samples' time span; 0 with too few.
pub fn lag_growth(samples: &[(f64, i64)]) -> f64 {
    let Some(&(end, _)) = samples.last() else {
        return 0.0;
    };
    let (xs, ys): (Vec<f64>, Vec<f64>) = samples
        .iter()
        .filter(|(t, _)| *t >= end / 2.0)
        .map(|&(t, lag)| (t, lag as f64))
        .unzip();
    crate::bench::least_squares_slope(&xs, &ys).unwrap_or(0.0)
}

/// Wall time when every partition had produced an event at or past `ts`.
fn trigger_time(marks: &ProduceMarks, ts: i64) -> Option<i64> {
    let mut latest = i64::MIN;
    for m in marks {
        let i = m.partition_point(|(max_ts, _)| *max_ts < ts);
        latest = latest.max(m.get(i)?.1);
    }
    Some(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_is_the_last_partition_to_pass() {
        let marks = vec![
            vec![(10, 100), (20, 200), (30, 300)],
            vec![(15, 150), (25, 250)],
        ];
        assert_eq!(trigger_time(&marks, 20), Some(250));
        assert_eq!(trigger_time(&marks, 11), Some(200));
        assert_eq!(trigger_time(&marks, 26), None);
    }
}
