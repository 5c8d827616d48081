//! Ingest: reads a worker's partitions, decodes, applies per-partition watermarks and allowed
//! lateness, and feeds accepted events into the dataflow's input at the worker's frontier.
//!
//! In: [`PartitionReader`]s. Out: `OrderEvent`s into the timely input; dead letters and late
//! events to the sink channel; counters. The input time is the minimum over live partitions of
//! `tick_of(max_ts - out_of_orderness - allowed_lateness)`; an event below its partition's
//! frontier (or the worker's, once an idle partition was skipped) is late.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::pipeline::PipelineSpec;
use crate::dataflow::checkpoint::PartitionPosition;
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
    /// Entries held by the stateful operators.
    pub state: crate::dataflow::state_gauges::StateGauges,
    /// Partition reads skipped because the partition ran ahead of its worker's slowest
    /// (`time.max_partition_drift`).
    pub partition_alignment_waits: AtomicU64,
    /// Worker rounds skipped because the worker ran ahead of the slowest other worker
    /// (`time.max_worker_drift`).
    pub worker_alignment_waits: AtomicU64,
}

impl SharedCounters {
    /// The values a checkpoint keeps.
    /// The current values (the collector's KPI counts are zero here).
    pub fn values(&self) -> crate::dataflow::Counters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::dataflow::Counters {
            received: l(&self.received),
            accepted: l(&self.accepted),
            dead_lettered: l(&self.dead_lettered),
            late: l(&self.late),
            duplicates: l(&self.duplicates),
            facts: l(&self.facts),
            deviations: l(&self.deviations),
            kpi_updates: 0,
            final_kpis: 0,
        }
    }

    /// Continues counting from a checkpoint's values.
    pub fn restore(&self, v: &crate::dataflow::Counters) {
        let s = |a: &AtomicU64, x: u64| a.store(x, Ordering::Relaxed);
        s(&self.received, v.received);
        s(&self.accepted, v.accepted);
        s(&self.dead_lettered, v.dead_lettered);
        s(&self.late, v.late);
        s(&self.duplicates, v.duplicates);
        s(&self.facts, v.facts);
        s(&self.deviations, v.deviations);
    }
}

/// The input frontiers of this process's workers, so that a worker whose partitions are all
/// idle follows the others instead of holding the job's watermark back (the worker-level
/// counterpart of an idle partition), and a worker far ahead of the slowest waits for it
/// (watermark alignment between workers). Cluster mode: only this process's workers are known.
#[derive(Debug)]
pub struct LocalFrontiers(Box<[AtomicU64]>);

/// A worker that is idle or finished: it holds nothing back.
const NOT_HOLDING: u64 = u64::MAX;

impl LocalFrontiers {
    /// Every worker starts holding the frontier at 0.
    pub fn new(workers: usize) -> Self {
        LocalFrontiers((0..workers.max(1)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Publishes the input frontier of local worker `worker`; `None`: idle or finished.
    pub fn publish(&self, worker: usize, frontier: Option<u64>) {
        if let Some(slot) = self.0.get(worker) {
            slot.store(frontier.unwrap_or(NOT_HOLDING), Ordering::Relaxed);
        }
    }

    /// The lowest frontier among the other local workers that hold one.
    pub fn lowest_other(&self, worker: usize) -> Option<u64> {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != worker)
            .map(|(_, f)| f.load(Ordering::Relaxed))
            .filter(|f| *f != NOT_HOLDING)
            .min()
    }
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
    /// Next offset to read, once something was read.
    next_offset: Option<u64>,
    /// With checkpoints: per tick, the first accepted event's offset and the highest event time
    /// before it (where a restore must start reading to see that tick's events again).
    replay: BTreeMap<u64, (u64, Option<i64>)>,
    /// Offsets below this were read before the restored cut: their outputs are already out.
    replayed_until: u64,
}

/// One worker's ingest state.
pub struct Ingest {
    parts: Vec<PartitionCursor>,
    clock: TickClock,
    trail_ms: i64,
    /// Watermark alignment (0: off): see `TimeSpec::max_partition_drift`.
    max_drift_ms: i64,
    /// Alignment between workers (0: off): see `TimeSpec::max_worker_drift`.
    max_worker_drift_ms: i64,
    idle_timeout: Duration,
    batch: RawBatch,
    pacing: Pacing,
    pace_origin: Option<(Instant, i64)>,
    max_event_bytes: usize,
    /// Record replay positions for checkpoints.
    track_replay: bool,
    /// The cut restored from (accepted replayed events below it are already applied).
    restored_cut: u64,
}

/// Result of one ingest round.
pub struct Round {
    /// The worker's new input time, or `None` when every partition has finished.
    pub frontier: Option<u64>,
    pub accepted: usize,
    /// Raw events read this round (accepted, late or dead-lettered).
    pub received: u64,
    /// Every live partition is idle: the worker holds its frontier only for lack of data.
    pub all_idle: bool,
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
                    next_offset: None,
                    replay: BTreeMap::new(),
                    replayed_until: 0,
                })
                .collect(),
            clock: TickClock {
                tick_ms: spec.time.tick.ms(),
            },
            trail_ms: spec.time.out_of_orderness.ms() + spec.time.allowed_lateness.ms(),
            max_drift_ms: spec.time.max_partition_drift.ms(),
            max_worker_drift_ms: spec.time.max_worker_drift.ms(),
            idle_timeout: Duration::from_millis(spec.time.idle_timeout.ms().max(0) as u64),
            batch: RawBatch::default(),
            pacing,
            pace_origin: None,
            max_event_bytes,
            track_replay: false,
            restored_cut: 0,
        }
    }

    /// Records what a checkpoint needs to resume each partition.
    pub fn track_replay(&mut self) {
        self.track_replay = true;
    }

    /// Resumes from a checkpoint cut at `cut`: the readers were opened at each partition's
    /// `replay_from`. Events before `next_offset` were read before the cut: they are classified
    /// again (to rebuild the watermark exactly) but emit nothing, and only accepted ones at or
    /// after the cut are sent on.
    pub fn restore(&mut self, cut: u64, positions: &[PartitionPosition]) {
        self.restored_cut = cut;
        for p in positions {
            if let Some(c) = self
                .parts
                .iter_mut()
                .find(|c| c.reader.partition() == p.partition)
            {
                c.max_ts = p.replay_max_ts;
                c.replayed_until = p.next_offset;
            }
        }
    }

    /// Read positions at the cut `cut` (every tick below it is processed).
    pub fn positions(&mut self, cut: u64) -> Vec<PartitionPosition> {
        let mut out = Vec::new();
        for c in &mut self.parts {
            c.replay = c.replay.split_off(&cut);
            // Outputs were emitted up to the furthest offset read, in this run or the restored one.
            let Some(next_offset) = c.next_offset.map(|o| o.max(c.replayed_until)) else {
                continue;
            };
            let (replay_from, replay_max_ts) = c
                .replay
                .values()
                .min_by_key(|(offset, _)| *offset)
                .copied()
                .unwrap_or((next_offset, c.max_ts));
            out.push(PartitionPosition {
                partition: c.reader.partition(),
                next_offset,
                max_ts: c.max_ts,
                replay_from,
                replay_max_ts,
            });
        }
        out
    }

    fn partition_frontier(&self, max_ts: Option<i64>) -> u64 {
        max_ts.map_or(0, |m| self.clock.tick_of(m - self.trail_ms))
    }

    /// The largest event time a partition may have and still be read: the slowest live,
    /// non-idle partition's plus the allowed drift. `None` (read everything) while alignment
    /// is off or some partition has not been read yet.
    fn read_limit(&self) -> Option<i64> {
        if self.max_drift_ms <= 0 {
            return None;
        }
        let mut slowest: Option<i64> = None;
        for p in self.parts.iter().filter(|p| !p.finished && !p.idle) {
            let m = p.max_ts?;
            slowest = Some(slowest.map_or(m, |s| s.min(m)));
        }
        slowest.map(|s| s.saturating_add(self.max_drift_ms))
    }

    /// The drift allowed between this worker and the slowest other worker of the process, in
    /// ticks (`time.max_worker_drift` rounded up); `None` when that alignment is off.
    pub fn max_worker_drift_ticks(&self) -> Option<u64> {
        (self.max_worker_drift_ms > 0).then(|| {
            let tick = self.clock.tick_ms.max(1);
            ((self.max_worker_drift_ms + tick - 1) / tick) as u64
        })
    }

    /// A round without reading: the worker is more than the allowed drift ahead of the slowest
    /// other worker (watermark alignment between workers) and waits at `input_time`. Its
    /// partitions are held back by us, not silent, so none of them may turn idle meanwhile.
    pub fn hold(&mut self, input_time: u64, counters: &SharedCounters) -> Round {
        counters
            .worker_alignment_waits
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        for p in self.parts.iter_mut().filter(|p| !p.finished && !p.idle) {
            p.last_data = now;
        }
        Round {
            frontier: Some(input_time),
            accepted: 0,
            received: 0,
            all_idle: false,
        }
    }

    /// Polls every owned partition once (up to `per_partition` events each), pushing accepted
    /// events to `out`; a partition too far ahead in event time waits (watermark alignment).
    /// `input_time` is the worker's current input time.
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
        let read_limit = self.read_limit();
        for i in 0..self.parts.len() {
            if self.parts[i].finished {
                continue;
            }
            if let (Some(limit), Some(m)) = (read_limit, self.parts[i].max_ts) {
                if m > limit && !self.parts[i].idle {
                    // Held back by us, not silent: it must not turn idle meanwhile.
                    self.parts[i].last_data = Instant::now();
                    counters
                        .partition_alignment_waits
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
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
                    let first = self.batch.first_offset;
                    let cursor = &mut self.parts[i];
                    cursor.next_offset = Some(first + self.batch.len() as u64);
                    // The partition's watermark tick, recomputed only when `max_ts` rises.
                    let (clock, trail_ms) = (self.clock, self.trail_ms);
                    let watermark =
                        |max_ts: Option<i64>| max_ts.map_or(0, |m| clock.tick_of(m - trail_ms));
                    let mut wm = watermark(cursor.max_ts);
                    for (j, raw) in self.batch.iter().enumerate() {
                        let offset = first + j as u64;
                        if offset < cursor.replayed_until {
                            // Read before the restored cut: rebuild the watermark, emit nothing.
                            let Ok(ev) = decode_event(raw) else { continue };
                            let tick = clock.tick_of(ev.ts);
                            if raw.len() > self.max_event_bytes || tick < wm {
                                continue;
                            }
                            let resend = tick >= self.restored_cut;
                            if resend {
                                cursor.replay.entry(tick).or_insert((offset, cursor.max_ts));
                            }
                            if cursor.max_ts.is_none_or(|m| ev.ts > m) {
                                cursor.max_ts = Some(ev.ts);
                                wm = watermark(cursor.max_ts);
                            }
                            if resend {
                                out.push(ev);
                            }
                            continue;
                        }
                        received += 1;
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
                                let tick = clock.tick_of(ev.ts);
                                let frontier = wm.max(input_time);
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
                                    if self.track_replay {
                                        cursor
                                            .replay
                                            .entry(tick)
                                            .or_insert((offset, cursor.max_ts));
                                    }
                                    if cursor.max_ts.is_none_or(|m| ev.ts > m) {
                                        cursor.max_ts = Some(ev.ts);
                                        wm = watermark(cursor.max_ts);
                                    }
                                    accepted += 1;
                                    out.push(ev);
                                }
                            }
                        }
                    }
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
                all_idle: false,
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
            all_idle: holding.is_none(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::memory::MemoryPartitions;
    use crate::sources::Source;

    const MINUTE: i64 = 60_000;
    const T0: i64 = 1_700_006_400_000;

    fn created(order: usize, ts: i64) -> String {
        format!(
            r#"{{"v":1,"event_id":"o{order}-c","order_id":"o{order}","type":"order_created","ts":{ts},"customer_id":"c","segment":"Consumer","region":"West","ship_mode":"Standard Class","warehouse":"WH-W1","amount":10.0,"promised_delivery_ts":{ts}}}"#
        )
    }

    /// Partition 0 has an event a minute, partition 1 one every ten minutes: read in equal
    /// batches, partition 1 runs ahead in event time. Returns the largest event-time spread
    /// between the partitions after any round while both are live, the accepted count and the
    /// sorted event times read.
    fn read_all(drift: crate::config::Duration) -> (i64, u64, Vec<i64>) {
        let dense: Vec<String> = (0..600)
            .map(|i| created(i, T0 + i as i64 * MINUTE))
            .collect();
        let sparse: Vec<String> = (0..600)
            .map(|i| created(1000 + i, T0 + i as i64 * 10 * MINUTE))
            .collect();
        let source = MemoryPartitions::new("test", [dense, sparse]);
        let mut spec = crate::config::PipelineSpec::builtin();
        spec.time.max_partition_drift = drift;
        let mut ingest = Ingest::new(source.readers(0, 1), &spec, Pacing::MaxSpeed, 1 << 20);
        let (tx, _rx) = crossbeam_channel::unbounded();
        let counters = SharedCounters::default();
        let mut out = Vec::new();
        let mut widest = 0;
        let mut input_time = 0;
        loop {
            let round = ingest.round(10, input_time, &mut out, &tx, &counters);
            let live = !ingest.parts.iter().any(|p| p.finished);
            if let (true, [Some(a), Some(b)]) =
                (live, [ingest.parts[0].max_ts, ingest.parts[1].max_ts])
            {
                widest = widest.max((a - b).abs());
            }
            match round.frontier {
                Some(f) => input_time = f,
                None => break,
            }
        }
        let mut ts: Vec<i64> = out.iter().map(|e| e.ts).collect();
        ts.sort_unstable();
        (widest, counters.accepted.load(Ordering::Relaxed), ts)
    }

    #[test]
    fn alignment_bounds_the_event_time_spread_of_partitions() {
        let (unaligned, n_unaligned, ts_unaligned) = read_all(crate::config::Duration(0));
        let (aligned, n_aligned, ts_aligned) = read_all(crate::config::Duration(60 * MINUTE));
        // Without alignment, after round k the dense partition is at minute 10k - 1 and the
        // sparse one at 100k - 10: 5,391 minutes apart after the 60th.
        assert_eq!(unaligned, 5_391 * MINUTE);
        // With it, one partition is at most the drift plus one batch (10 x 10 minutes) ahead.
        assert!(aligned <= 160 * MINUTE, "spread {aligned} ms");
        // Nothing is dropped or held forever: the same 1,200 events, none late.
        assert_eq!((n_unaligned, n_aligned), (1200, 1200));
        assert_eq!(ts_unaligned, ts_aligned);
    }
}
