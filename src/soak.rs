//! Soak test (`fulfillment-ai bench --soak`): pushes tens of millions of generated events through
//! the full job in one process, at full speed, and watches the process's memory while event time
//! advances, so windows close and finished orders are forgotten.
//!
//! In: a pipeline spec and [`SoakOptions`]. The input is the endless generator, cut after
//! `events` events (spread evenly over the partitions) and produced lazily inside the workers,
//! so the input itself takes no memory. Out: one [`SoakSample`] a second (process RSS, events
//! read, the input's event-time position) streamed to `samples.csv` under the output directory,
//! and a [`SoakReport`]: RSS when the first windows close and at the end of the warm-up,
//! min/median/max/last RSS after the warm-up and whether it stays within a tolerance of the
//! median, the drift (least-squares slope of RSS over events), throughput early and late in the
//! run, and bytes per live order.
//!
//! Live orders are not sampled during the run: the job exposes its live-order gauge only as the
//! peak in its final report, so bytes per live order divides the post-warm-up RSS above an empty
//! job's by that peak (see [`SoakReport::bytes_per_live_order`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::{least_squares_slope, peak_rss_bytes, rss_bytes};
use crate::config::PipelineSpec;
use crate::dataflow::state_gauges::{StateSizes, STATE_NAMES};
use crate::dataflow::{run_job, JobOptions, Pacing, SharedCounters};
use crate::sources::generator::{GeneratorConfig, GeneratorSource};
use crate::sources::memory::MemoryPartitions;
use crate::sources::{PartitionReader, PollStatus, RawBatch, Source};

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Events to push through (rounded up to a multiple of the partition count).
    pub events: u64,
    pub workers: usize,
    /// The warm-up covers at least this fraction of the events ...
    pub warmup_fraction: f64,
    /// ... and lasts until event time has passed the idle-order retention plus the longest window
    /// (see [`steady_state_at`]).
    pub sample_interval: Duration,
    /// RSS after the warm-up must stay within this fraction of its median (0.10 = +-10%).
    pub tolerance: f64,
    /// Mean event-time gap between orders of one generator partition.
    pub order_interval_ms: i64,
    pub seed: u64,
    /// `samples.csv` and `soak.json` go here.
    pub out_dir: PathBuf,
}

/// One sample of the running job.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SoakSample {
    /// Seconds since the job started.
    pub elapsed_s: f64,
    /// Events read by the job so far.
    pub events: u64,
    /// Event time the input has reached: the minimum over partitions of the latest event time
    /// read (ms since the epoch; 0 before every partition has been read).
    pub input_event_time_ms: i64,
    pub rss_bytes: u64,
    /// Entries held by the stateful operators (see [`STATE_NAMES`]).
    #[serde(skip)]
    pub state: StateSizes,
}

/// One operator state's entry count over the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StateGrowth {
    pub state: &'static str,
    pub at_warmup_end: u64,
    pub max_after_warmup: u64,
    /// At the last sample before the input ended.
    pub last: u64,
}

/// RSS statistics of a run of samples after the warm-up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Flatness {
    pub samples: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub last: f64,
    /// Largest |value - median| / median.
    pub max_deviation: f64,
    pub tolerance: f64,
    /// Every value within `tolerance` of the median.
    pub within_tolerance: bool,
}

/// Min, median, max and last of `values` (in order of time), and whether every value is within
/// `tolerance` (a fraction) of the median. The median of an even count is the mean of the two
/// middle values. `None` for no values.
pub fn flatness(values: &[f64], tolerance: f64) -> Option<Flatness> {
    let last = *values.last()?;
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let (min, max) = (sorted[0], sorted[n - 1]);
    let max_deviation = if median > 0.0 {
        (max - median).max(median - min) / median
    } else {
        f64::INFINITY
    };
    Some(Flatness {
        samples: n,
        min,
        median,
        max,
        last,
        max_deviation,
        tolerance,
        within_tolerance: max_deviation <= tolerance,
    })
}

/// Event time after which the job's state should have stopped growing: the input is past the
/// start by the idle-order retention (the longest an order record can outlive its last event)
/// plus the longest window plus the watermark's trail.
pub fn steady_state_at(spec: &PipelineSpec, start_ms: i64) -> i64 {
    start_ms
        + spec
            .retention
            .idle_open
            .ms()
            .max(spec.retention.finished.ms())
        + trail_and_window(spec)
}

/// Event time at which the first windows close: the shortest window plus the watermark's trail.
pub fn first_windows_close_at(spec: &PipelineSpec, start_ms: i64) -> i64 {
    let shortest = spec
        .kpis
        .iter()
        .map(|k| k.window.size.ms())
        .min()
        .unwrap_or(0);
    start_ms + shortest + trail(spec)
}

fn trail(spec: &PipelineSpec) -> i64 {
    spec.time.out_of_orderness.ms() + spec.time.allowed_lateness.ms()
}

fn trail_and_window(spec: &PipelineSpec) -> i64 {
    let longest = spec
        .kpis
        .iter()
        .map(|k| k.window.size.ms())
        .max()
        .unwrap_or(0);
    longest + trail(spec)
}

/// Index of the first sample that ends the warm-up: at least `fraction` of `total` events read
/// and the input's event time at or past `steady_ms`. `None` if no sample qualifies.
pub fn warmup_end(
    samples: &[SoakSample],
    total: u64,
    fraction: f64,
    steady_ms: i64,
) -> Option<usize> {
    let min_events = (total as f64 * fraction).ceil() as u64;
    samples
        .iter()
        .position(|s| s.events >= min_events && s.input_event_time_ms >= steady_ms)
}

/// Events per second over the shortest run of samples that covers `from..to` events: from the
/// last sample at or before `from` (or the first sample) to the first at or past `to`.
pub fn rate_between(samples: &[SoakSample], from: u64, to: u64) -> Option<f64> {
    let a = samples
        .iter()
        .rev()
        .find(|s| s.events <= from)
        .or(samples.first())?;
    let b = samples.iter().find(|s| s.events >= to)?;
    (b.elapsed_s > a.elapsed_s).then(|| (b.events - a.events) as f64 / (b.elapsed_s - a.elapsed_s))
}

/// The result of a soak run.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub events: u64,
    pub workers: usize,
    pub seconds: f64,
    /// Events read per second over the whole input phase (generation, decoding and the full
    /// dataflow; the end-of-input drain excluded).
    pub events_per_sec: f64,
    /// Rate over the first and the last tenth of the post-warm-up input, and last / first.
    pub early_events_per_sec: Option<f64>,
    pub late_events_per_sec: Option<f64>,
    pub late_over_early: Option<f64>,
    /// Event time covered by the input, in days.
    pub event_days: f64,
    pub warmup_fraction: f64,
    /// Event time (days from the start) by which state should stop growing.
    pub steady_state_after_days: f64,
    /// The warm-up ended inside the run (events and event time both past their marks).
    pub steady_state_reached: bool,
    /// RSS of an empty job in this process (same workers), the baseline.
    pub empty_job_rss_mb: f64,
    pub rss_when_first_windows_close_mb: Option<f64>,
    pub rss_at_warmup_end_mb: Option<f64>,
    /// Events read when the warm-up ended.
    pub warmup_end_events: Option<u64>,
    /// RSS after the warm-up (MB), until the input ended.
    pub after_warmup: Option<Flatness>,
    /// Least-squares slope of RSS over events after the warm-up: MB per 10 M events.
    pub drift_mb_per_10m_events: Option<f64>,
    /// Peak RSS of the process during the run (includes the end-of-input drain).
    pub peak_rss_mb: f64,
    /// Highest live order count of the run (summed over workers, from the job's report).
    pub peak_live_orders: u64,
    /// (post-warm-up median RSS - empty job RSS) / peak live orders. An upper bound of what an
    /// order costs: windows, arrangements, queues and allocator slack are charged to orders too.
    pub bytes_per_live_order: Option<f64>,
    /// Operator state sizes after the warm-up: a state still growing shows here.
    pub state_entries: Vec<StateGrowth>,
    pub final_kpis: u64,
    pub deviations: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub duplicates: u64,
    pub samples_csv: PathBuf,
}

/// Runs the soak; samples go to `out_dir/samples.csv` as they are taken.
pub fn run(spec: &PipelineSpec, opts: &SoakOptions) -> Result<SoakReport> {
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let counters = Arc::new(SharedCounters::default());
    let job_opts = JobOptions {
        workers: opts.workers.max(1),
        pacing: Pacing::MaxSpeed,
        keep_in_memory: false,
        counters: Some(counters.clone()),
        ..JobOptions::default()
    };

    // Baseline: the same job over no events, in this process.
    let empty = MemoryPartitions::new(
        "empty",
        (0..spec.time.partitions).map(|_| Vec::<&[u8]>::new()),
    );
    let empty_opts = JobOptions {
        counters: None,
        ..job_opts.clone()
    };
    let baseline = run_job(spec, Arc::new(empty), &empty_opts)
        .context("empty baseline job")?
        .rss_at_input_end
        .or_else(rss_bytes)
        .unwrap_or(0);

    let cfg = GeneratorConfig {
        seed: opts.seed,
        partitions: spec.time.partitions,
        orders_per_partition: None,
        order_interval_ms: opts.order_interval_ms,
        // Some duplicates and bad lines, so deduplication and the dead-letter path run too.
        duplicate_rate: 0.01,
        malformed_rate: 0.001,
        ..GeneratorConfig::default()
    };
    let start_ms = cfg.start_ms;
    let partitions = spec.time.partitions.max(1) as u64;
    let per_partition = opts.events.div_ceil(partitions);
    let total = per_partition * partitions;
    let source = Arc::new(Capped::new(
        Arc::new(GeneratorSource::new(cfg, spec)),
        per_partition,
    ));
    let gauges = source.gauges.clone();

    let csv_path = opts.out_dir.join("samples.csv");
    let mut csv = std::io::BufWriter::new(
        std::fs::File::create(&csv_path)
            .with_context(|| format!("creating {}", csv_path.display()))?,
    );
    writeln!(
        csv,
        "elapsed_s,events,events_per_s,input_event_time_ms,event_days,partition_skew_s,rss_mb,phase,{}",
        STATE_NAMES.join(",")
    )?;
    csv.flush()?;

    crate::bench::reset_peak_rss();
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = {
        let done = done.clone();
        let gauges = gauges.clone();
        let counters = counters.clone();
        let interval = opts.sample_interval.max(Duration::from_millis(50));
        std::thread::Builder::new()
            .name("soak-sampler".into())
            .spawn(move || -> std::io::Result<Vec<SoakSample>> {
                let mut samples: Vec<SoakSample> = Vec::new();
                let mut next = Instant::now();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    let s = SoakSample {
                        elapsed_s: started.elapsed().as_secs_f64(),
                        events: gauges.events.load(Ordering::Relaxed),
                        input_event_time_ms: gauges.input_event_time_ms(),
                        rss_bytes: rss_bytes().unwrap_or(0),
                        state: counters.state.values(),
                    };
                    let rate = samples.last().map_or(0.0, |p| {
                        (s.events - p.events) as f64 / (s.elapsed_s - p.elapsed_s).max(1e-9)
                    });
                    let days = if s.input_event_time_ms > 0 {
                        (s.input_event_time_ms - start_ms) as f64 / 86_400_000.0
                    } else {
                        0.0
                    };
                    let phase = if s.events >= total { "drain" } else { "input" };
                    let state: Vec<String> = s.state.0.iter().map(u64::to_string).collect();
                    writeln!(
                        csv,
                        "{:.3},{},{:.0},{},{:.3},{:.0},{:.1},{phase},{}",
                        s.elapsed_s,
                        s.events,
                        rate,
                        s.input_event_time_ms,
                        days,
                        gauges.partition_skew_ms() as f64 / 1000.0,
                        s.rss_bytes as f64 / 1e6,
                        state.join(",")
                    )?;
                    csv.flush()?;
                    samples.push(s);
                    if finished {
                        return Ok(samples);
                    }
                    next += interval;
                    // Wake early when the job ends, so the last sample is taken promptly.
                    while Instant::now() < next && !done.load(Ordering::SeqCst) {
                        let left = next.saturating_duration_since(Instant::now());
                        std::thread::sleep(left.min(Duration::from_millis(50)));
                    }
                    if next < Instant::now() {
                        next = Instant::now();
                    }
                }
            })
            .context("starting the sampler")?
    };
    let result = run_job(spec, source, &job_opts);
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?
        .context("writing samples.csv")?;
    let report = result.context("soak job")?;
    let peak_rss = peak_rss_bytes().unwrap_or(0);

    Ok(summarize(
        spec,
        opts,
        &samples,
        Summary {
            start_ms,
            total,
            seconds,
            baseline,
            peak_rss,
            peak_live_orders: report.peak_live_orders,
            counters: report.counters,
            samples_csv: csv_path,
        },
    ))
}

/// What [`summarize`] needs besides the samples.
struct Summary {
    start_ms: i64,
    total: u64,
    seconds: f64,
    baseline: u64,
    peak_rss: u64,
    peak_live_orders: u64,
    counters: crate::dataflow::Counters,
    samples_csv: PathBuf,
}

fn summarize(
    spec: &PipelineSpec,
    opts: &SoakOptions,
    samples: &[SoakSample],
    s: Summary,
) -> SoakReport {
    let mb = |b: u64| b as f64 / 1e6;
    let steady_ms = steady_state_at(spec, s.start_ms);
    let first_close_ms = first_windows_close_at(spec, s.start_ms);
    // Input phase: until the last event was read.
    let input: Vec<SoakSample> = samples
        .iter()
        .copied()
        .take_while(|x| x.events < s.total)
        .collect();
    let input_seconds = samples
        .iter()
        .find(|x| x.events >= s.total)
        .map_or(s.seconds, |x| x.elapsed_s);
    let warm = warmup_end(&input, s.total, opts.warmup_fraction, steady_ms);
    // Without a steady state inside the run, judge the samples after the warm-up fraction.
    let judged_from = warm.or_else(|| warmup_end(&input, s.total, opts.warmup_fraction, i64::MIN));
    let after: &[SoakSample] = judged_from.map_or(&[], |i| &input[i..]);
    let rss_after: Vec<f64> = after.iter().map(|x| mb(x.rss_bytes)).collect();
    let after_warmup = flatness(&rss_after, opts.tolerance);
    let drift = (after.len() >= 3)
        .then(|| {
            let xs: Vec<f64> = after.iter().map(|x| x.events as f64 / 1e7).collect();
            least_squares_slope(&xs, &rss_after)
        })
        .flatten();
    let (early, late) = match (after.first(), after.last()) {
        (Some(a), Some(b)) if b.events > a.events => {
            let span = b.events - a.events;
            (
                rate_between(after, a.events, a.events + span / 10),
                rate_between(after, b.events - span / 10, b.events),
            )
        }
        _ => (None, None),
    };
    let last_ts = input
        .iter()
        .map(|x| x.input_event_time_ms)
        .max()
        .unwrap_or(s.start_ms);
    let bytes_per_live_order = after_warmup.as_ref().and_then(|f| {
        (s.peak_live_orders > 0)
            .then(|| (f.median * 1e6 - s.baseline as f64) / s.peak_live_orders as f64)
    });
    let state_entries = match (judged_from, after.last()) {
        (Some(i), Some(last)) => STATE_NAMES
            .iter()
            .enumerate()
            .map(|(k, name)| StateGrowth {
                state: name,
                at_warmup_end: input[i].state.0[k],
                max_after_warmup: after.iter().map(|x| x.state.0[k]).max().unwrap_or(0),
                last: last.state.0[k],
            })
            .collect(),
        _ => Vec::new(),
    };
    SoakReport {
        events: s.counters.received,
        workers: opts.workers,
        seconds: s.seconds,
        events_per_sec: s.counters.received as f64 / input_seconds.max(1e-9),
        early_events_per_sec: early,
        late_events_per_sec: late,
        late_over_early: early.zip(late).map(|(e, l)| l / e),
        event_days: (last_ts - s.start_ms).max(0) as f64 / 86_400_000.0,
        warmup_fraction: opts.warmup_fraction,
        steady_state_after_days: (steady_ms - s.start_ms) as f64 / 86_400_000.0,
        steady_state_reached: warm.is_some(),
        empty_job_rss_mb: mb(s.baseline),
        rss_when_first_windows_close_mb: input
            .iter()
            .find(|x| x.input_event_time_ms >= first_close_ms)
            .map(|x| mb(x.rss_bytes)),
        rss_at_warmup_end_mb: warm.map(|i| mb(input[i].rss_bytes)),
        warmup_end_events: judged_from.map(|i| input[i].events),
        after_warmup,
        drift_mb_per_10m_events: drift,
        peak_rss_mb: mb(s.peak_rss),
        peak_live_orders: s.peak_live_orders,
        bytes_per_live_order,
        state_entries,
        final_kpis: s.counters.final_kpis,
        deviations: s.counters.deviations,
        dead_lettered: s.counters.dead_lettered,
        late: s.counters.late,
        duplicates: s.counters.duplicates,
        samples_csv: s.samples_csv,
    }
}

/// Shared gauges of a [`Capped`] source: events read, and the latest event time per partition.
#[derive(Debug)]
struct Gauges {
    events: AtomicU64,
    latest_ts: Vec<AtomicI64>,
}

impl Gauges {
    /// Latest event time of the partition furthest ahead minus that of the one furthest behind.
    fn partition_skew_ms(&self) -> i64 {
        let ts: Vec<i64> = self
            .latest_ts
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .filter(|t| *t != i64::MIN)
            .collect();
        match (ts.iter().max(), ts.iter().min()) {
            (Some(max), Some(min)) if ts.len() == self.latest_ts.len() => max - min,
            _ => 0,
        }
    }

    fn input_event_time_ms(&self) -> i64 {
        let min = self
            .latest_ts
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .min()
            .unwrap_or(i64::MIN);
        if min == i64::MIN {
            0
        } else {
            min
        }
    }
}

/// A source cut after `per_partition` events in each partition, counting what it hands out.
struct Capped {
    inner: Arc<dyn Source>,
    per_partition: u64,
    gauges: Arc<Gauges>,
}

impl Capped {
    fn new(inner: Arc<dyn Source>, per_partition: u64) -> Capped {
        let n = inner.partitions() as usize;
        Capped {
            inner,
            per_partition,
            gauges: Arc::new(Gauges {
                events: AtomicU64::new(0),
                latest_ts: (0..n).map(|_| AtomicI64::new(i64::MIN)).collect(),
            }),
        }
    }
}

impl Source for Capped {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    fn describe(&self) -> String {
        format!(
            "{}, cut after {} events per partition",
            self.inner.describe(),
            self.per_partition
        )
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        self.inner
            .readers(worker, peers)
            .into_iter()
            .map(|inner| {
                Box::new(CappedReader {
                    inner,
                    remaining: self.per_partition,
                    gauges: self.gauges.clone(),
                }) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

struct CappedReader {
    inner: Box<dyn PartitionReader>,
    remaining: u64,
    gauges: Arc<Gauges>,
}

impl PartitionReader for CappedReader {
    fn partition(&self) -> u32 {
        self.inner.partition()
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        if self.remaining == 0 {
            return PollStatus::Finished;
        }
        let before = batch.len();
        let status = self
            .inner
            .poll(max_events.min(self.remaining as usize), batch);
        let added = (batch.len() - before) as u64;
        if added > 0 {
            self.remaining = self.remaining.saturating_sub(added);
            self.gauges.events.fetch_add(added, Ordering::Relaxed);
            // One decode per poll: the event time of the batch's last event.
            if let Some(ts) = batch
                .iter()
                .last()
                .and_then(|raw| crate::model::decode_event(raw).ok())
                .map(|e| e.ts)
            {
                if let Some(g) = self.gauges.latest_ts.get(self.inner.partition() as usize) {
                    g.fetch_max(ts, Ordering::Relaxed);
                }
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(elapsed_s: f64, events: u64, ts: i64, rss_mb: u64) -> SoakSample {
        SoakSample {
            elapsed_s,
            events,
            input_event_time_ms: ts,
            rss_bytes: rss_mb * 1_000_000,
            state: StateSizes::default(),
        }
    }

    #[test]
    fn flatness_against_the_median() {
        let f = flatness(&[100.0, 104.0, 96.0, 109.0, 100.0], 0.10).unwrap();
        assert_eq!(
            (f.min, f.median, f.max, f.last),
            (96.0, 100.0, 109.0, 100.0)
        );
        assert!((f.max_deviation - 0.09).abs() < 1e-12);
        assert!(f.within_tolerance);
        // One value 11% above the median breaks the band; the median of four is the middle mean.
        let f = flatness(&[100.0, 100.0, 102.0, 113.0], 0.10).unwrap();
        assert_eq!(f.median, 101.0);
        assert!((f.max_deviation - 12.0 / 101.0).abs() < 1e-12);
        assert!(!f.within_tolerance);
        assert_eq!(f.last, 113.0);
        assert!(flatness(&[], 0.1).is_none());
    }

    #[test]
    fn warmup_needs_both_events_and_event_time() {
        let s = [
            sample(1.0, 50, 10, 1),
            sample(2.0, 150, 20, 1),
            sample(3.0, 250, 40, 1),
            sample(4.0, 350, 60, 1),
        ];
        // 10% of 1000 = 100 events: sample 1; event time 40 first at sample 2.
        assert_eq!(warmup_end(&s, 1000, 0.1, 40), Some(2));
        assert_eq!(warmup_end(&s, 1000, 0.3, 0), Some(3));
        assert_eq!(warmup_end(&s, 1000, 0.1, 61), None);
    }

    #[test]
    fn rate_between_samples() {
        let s = [
            sample(0.0, 0, 0, 1),
            sample(1.0, 100, 0, 1),
            sample(3.0, 500, 0, 1),
        ];
        assert_eq!(rate_between(&s, 100, 500), Some(200.0));
        assert_eq!(rate_between(&s, 0, 450), Some(500.0 / 3.0));
        // A span inside one interval is measured over that interval.
        assert_eq!(rate_between(&s, 450, 500), Some(200.0));
        assert_eq!(rate_between(&s, 0, 600), None);
        assert_eq!(rate_between(&s, 500, 500), None);
    }

    #[test]
    fn capped_reader_stops_and_counts() {
        let lines: Vec<String> = (0..10)
            .map(|i| {
                format!(
                    r#"{{"v":1,"event_id":"e{i}","order_id":"o{i}","type":"payment_authorized","ts":{}}}"#,
                    1000 + i
                )
            })
            .collect();
        let src = Capped::new(Arc::new(MemoryPartitions::round_robin("t", &lines, 2)), 3);
        let mut total = 0;
        for mut r in src.readers(0, 1) {
            let mut b = RawBatch::default();
            while r.poll(2, &mut b) != PollStatus::Finished {}
            assert_eq!(b.len(), 3);
            total += b.len();
        }
        assert_eq!(total, 6);
        assert_eq!(src.gauges.events.load(Ordering::Relaxed), 6);
        // Partition 0 holds events 0, 2, 4 (ts 1004 last); partition 1 holds 1, 3, 5 (ts 1005).
        assert_eq!(src.gauges.input_event_time_ms(), 1004);
    }
}
