//! Ingest: reads a worker's partitions, decodes, applies per-partition watermarks and allowed
//! lateness, and feeds accepted events into the dataflow's input at the worker's frontier.
//!
//! In: [`PartitionReader`]s. Out: `OrderEvent`s into the timely input; dead letters and late
//! events to the sink channel; counters. The input time is the minimum over live partitions of
//! `tick_of(max_ts - out_of_orderness - allowed_lateness)`; an event below its partition's
//! frontier (or the worker's, once an idle partition was skipped) is late.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::pipeline::PipelineSpec;
use crate::model::decode_event;
use crate::model::event::OrderEvent;
use crate::model::time::TickClock;
use crate::sinks::{DeadLetter, LateEvent, SinkMessage};
use crate::sources::{PartitionReader, PollStatus, RawBatch};

/// Job-wide counters, shared by all workers.
#[derive(Debug, Default)]
pub struct SharedCounters {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub late: AtomicU64,
    pub duplicates: AtomicU64,
    pub facts: AtomicU64,
    pub deviations: AtomicU64,
    /// Event time (epoch ms) the whole dataflow has processed up to; 0 before the first
    /// progress.
    pub watermark_ms: std::sync::atomic::AtomicI64,
}

/// Wall-clock pacing of a replay.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Pacing {
    /// As fast as possible.
    #[default]
    MaxSpeed,
    /// Event time advances `factor` times faster than wall time (1.0 = original pace).
    Scaled(f64),
}

struct PartitionCursor {
    reader: Box<dyn PartitionReader>,
    max_ts: Option<i64>,
    finished: bool,
    last_data: Instant,
    idle: bool,
}

/// One worker's ingest state.
pub struct Ingest {
    parts: Vec<PartitionCursor>,
    clock: TickClock,
    trail_ms: i64,
    idle_timeout: Duration,
    batch: RawBatch,
    pacing: Pacing,
    pace_origin: Option<(Instant, i64)>,
    max_event_bytes: usize,
}

/// Result of one ingest round.
pub struct Round {
    /// The worker's new input time, or `None` when every partition has finished.
    pub frontier: Option<u64>,
    pub accepted: usize,
    /// Raw events read this round (accepted, late or dead-lettered).
    pub received: u64,
}

impl Ingest {
    pub fn new(
        readers: Vec<Box<dyn PartitionReader>>,
        spec: &PipelineSpec,
        pacing: Pacing,
        max_event_bytes: usize,
    ) -> Self {
        let now = Instant::now();
        Ingest {
            parts: readers
                .into_iter()
                .map(|reader| PartitionCursor {
                    reader,
                    max_ts: None,
                    finished: false,
                    last_data: now,
                    idle: false,
                })
                .collect(),
            clock: TickClock {
                tick_ms: spec.time.tick.ms(),
            },
            trail_ms: spec.time.out_of_orderness.ms() + spec.time.allowed_lateness.ms(),
            idle_timeout: Duration::from_millis(spec.time.idle_timeout.ms().max(0) as u64),
            batch: RawBatch::default(),
            pacing,
            pace_origin: None,
            max_event_bytes,
        }
    }

    fn partition_frontier(&self, max_ts: Option<i64>) -> u64 {
        max_ts.map_or(0, |m| self.clock.tick_of(m - self.trail_ms))
    }

    /// Polls every owned partition once (up to `per_partition` events each), pushing accepted
    /// events to `out`. `input_time` is the worker's current input time.
    pub fn round(
        &mut self,
        per_partition: usize,
        input_time: u64,
        out: &mut Vec<OrderEvent>,
        sink: &crossbeam_channel::Sender<SinkMessage>,
        counters: &SharedCounters,
    ) -> Round {
        let mut accepted = 0;
        let (mut received, mut dead, mut late) = (0u64, 0u64, 0u64);
        for i in 0..self.parts.len() {
            if self.parts[i].finished {
                continue;
            }
            self.batch.clear();
            let status = self.parts[i].reader.poll(per_partition, &mut self.batch);
            let partition = self.parts[i].reader.partition();
            match status {
                PollStatus::Finished => self.parts[i].finished = true,
                PollStatus::Idle => {
                    if !self.parts[i].idle && self.parts[i].last_data.elapsed() >= self.idle_timeout
                    {
                        tracing::info!(
                            partition,
                            "partition idle; no longer holding back the watermark"
                        );
                        self.parts[i].idle = true;
                    }
                }
                PollStatus::Ready => {
                    self.parts[i].last_data = Instant::now();
                    self.parts[i].idle = false;
                    let mut max_ts = self.parts[i].max_ts;
                    let mut frontier = self.partition_frontier(max_ts).max(input_time);
                    let first = self.batch.first_offset;
                    for (j, raw) in self.batch.iter().enumerate() {
                        received += 1;
                        let offset = first + j as u64;
                        let decoded = if raw.len() > self.max_event_bytes {
                            Err(format!(
                                "oversize event: {} bytes, the limit is {} (max_event_bytes)",
                                raw.len(),
                                self.max_event_bytes
                            ))
                        } else {
                            decode_event(raw).map_err(|e| e.to_string())
                        };
                        match decoded {
                            Err(e) => {
                                dead += 1;
                                tracing::debug!(partition, offset, error = %e, "dead-lettering malformed event");
                                let _ = sink.send(SinkMessage::DeadLetter(DeadLetter {
                                    partition,
                                    offset,
                                    reason: e,
                                    raw: raw.to_vec(),
                                }));
                            }
                            Ok(ev) => {
                                let tick = self.clock.tick_of(ev.ts);
                                if tick < frontier {
                                    late += 1;
                                    let _ = sink.send(SinkMessage::Late(LateEvent {
                                        partition,
                                        offset,
                                        event_id: ev.event_id.to_string(),
                                        order_id: ev.order_id.to_string(),
                                        ts: ev.ts,
                                        frontier_tick: frontier,
                                    }));
                                } else {
                                    if max_ts.is_none_or(|m| ev.ts > m) {
                                        max_ts = Some(ev.ts);
                                        frontier = self.partition_frontier(max_ts).max(input_time);
                                    }
                                    accepted += 1;
                                    out.push(ev);
                                }
                            }
                        }
                    }
                    self.parts[i].max_ts = max_ts;
                }
            }
        }
        counters.received.fetch_add(received, Ordering::Relaxed);
        counters.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        counters.late.fetch_add(late, Ordering::Relaxed);
        counters
            .accepted
            .fetch_add(accepted as u64, Ordering::Relaxed);
        self.pace(out);
        let live: Vec<&PartitionCursor> = self.parts.iter().filter(|p| !p.finished).collect();
        if live.is_empty() {
            return Round {
                frontier: None,
                accepted,
                received,
            };
        }
        let holding = live
            .iter()
            .filter(|p| !p.idle)
            .map(|p| self.partition_frontier(p.max_ts))
            .min();
        // When every live partition is idle, hold the frontier where it is.
        Round {
            frontier: Some(holding.unwrap_or(input_time).max(input_time)),
            accepted,
            received,
        }
    }

    /// Sleeps so that event time does not run ahead of scaled wall time.
    fn pace(&mut self, out: &[OrderEvent]) {
        let Pacing::Scaled(factor) = self.pacing else {
            return;
        };
        let Some(latest) = out.iter().map(|e| e.ts).max() else {
            return;
        };
        let (origin_wall, origin_ts) = *self.pace_origin.get_or_insert((Instant::now(), latest));
        let due = Duration::from_secs_f64(
            ((latest - origin_ts).max(0) as f64 / factor.max(1e-9)) / 1000.0,
        );
        let elapsed = origin_wall.elapsed();
        if due > elapsed {
            std::thread::sleep((due - elapsed).min(Duration::from_secs(5)));
        }
    }
}
