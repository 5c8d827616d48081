//! Ingest behaviour that needs live (non-replay) partitions, wall-clock pacing or a look at
//! what the readers are asked for: an idle partition (or a worker whose partitions are all idle)
//! stops holding back the watermark, so its late data is late; a worker far ahead in event time
//! of the other workers waits for them (watermark alignment between workers); a scaled replay is
//! paced by event time.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::{run_job, JobOptions, JobReport, Pacing, SharedCounters};
use fulfillment_ai::sources::memory::MemoryPartitions;
use fulfillment_ai::sources::{PartitionReader, PollStatus, RawBatch, Source};

const T0: i64 = 1_700_006_400_000;
const HOUR: i64 = 3_600_000;

fn created(order: &str, ts: i64) -> String {
    format!(
        r#"{{"v":1,"event_id":"{order}-c","order_id":"{order}","type":"order_created","ts":{ts},"customer_id":"c","segment":"Consumer","region":"West","ship_mode":"Standard Class","warehouse":"WH-W1","amount":10.0,"promised_delivery_ts":{}}}"#,
        ts + 100 * HOUR
    )
}

/// A scripted live partition: idle until `wake_after`, then its events (event `i` is available
/// from `wake_after + i * gap`), then idle until `finish_after`, then finished. `delivered`
/// counts the events it handed out; with `wake_when`, it also stays idle until that counter
/// (another partition's) reaches the given number and it has been polled a few times since, so
/// that its worker has gone round its loop after the other partition's data was read; with
/// `finish_when`, it finishes only once that other counter reaches the number.
struct Scripted {
    partition: u32,
    started: Instant,
    wake_after: Duration,
    gap: Duration,
    finish_after: Duration,
    events: Vec<String>,
    next: usize,
    delivered: Arc<AtomicUsize>,
    wake_when: Option<(Arc<AtomicUsize>, usize)>,
    finish_when: Option<(Arc<AtomicUsize>, usize)>,
    polls_since_other_done: usize,
}

impl PartitionReader for Scripted {
    fn partition(&self) -> u32 {
        self.partition
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        std::thread::sleep(Duration::from_millis(1));
        let elapsed = self.started.elapsed();
        if let Some((other, n)) = &self.wake_when {
            if other.load(Ordering::SeqCst) >= *n {
                self.polls_since_other_done += 1;
            }
            if self.polls_since_other_done < 3 {
                return PollStatus::Idle;
            }
        }
        if elapsed < self.wake_after {
            return PollStatus::Idle;
        }
        let due = if self.gap.is_zero() {
            self.events.len()
        } else {
            (((elapsed - self.wake_after).as_nanos() / self.gap.as_nanos()) as usize + 1)
                .min(self.events.len())
        };
        if self.next < due {
            batch.first_offset = self.next as u64;
            for e in self.events[self.next..due].iter().take(max_events) {
                batch.push(e.as_bytes());
                self.next += 1;
                self.delivered.fetch_add(1, Ordering::SeqCst);
            }
            return PollStatus::Ready;
        }
        if self.next < self.events.len() {
            return PollStatus::Idle;
        }
        let other_done = self
            .finish_when
            .as_ref()
            .is_none_or(|(other, n)| other.load(Ordering::SeqCst) >= *n);
        if elapsed < self.finish_after || !other_done {
            PollStatus::Idle
        } else {
            PollStatus::Finished
        }
    }
}

/// The busy and the sleepy partition's delivered-event counters, shared by both workers'
/// readers.
#[derive(Default)]
struct TwoLivePartitions {
    busy: Arc<AtomicUsize>,
    sleepy: Arc<AtomicUsize>,
}

impl Source for TwoLivePartitions {
    fn partitions(&self) -> u32 {
        2
    }
    fn describe(&self) -> String {
        "two scripted live partitions".into()
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        let started = Instant::now();
        // The busy partition delivers an event every 10 ms for 400 ms, so it is never idle
        // while the sleepy one is (idle timeout 100 ms): the frontier follows the busy one.
        let busy = Scripted {
            partition: 0,
            started,
            wake_after: Duration::ZERO,
            gap: Duration::from_millis(10),
            finish_after: Duration::from_millis(900),
            events: (0..40)
                .map(|i| created(&format!("a{i}"), T0 + i * 15 * 60_000))
                .collect(),
            next: 0,
            delivered: self.busy.clone(),
            wake_when: None,
            // Live until the sleepy partition's event is read, so that it carries the frontier.
            finish_when: Some((self.sleepy.clone(), 1)),
            polls_since_other_done: 0,
        };
        let sleepy = Scripted {
            partition: 1,
            started,
            wake_after: Duration::from_millis(500),
            gap: Duration::ZERO,
            finish_after: Duration::from_millis(600),
            events: vec![created("b0", T0)],
            next: 0,
            delivered: self.sleepy.clone(),
            // Not before the busy partition's 40 events are read, however late its worker
            // was scheduled.
            wake_when: Some((self.busy.clone(), 40)),
            finish_when: None,
            polls_since_other_done: 0,
        };
        [busy, sleepy]
            .into_iter()
            .filter(|s| s.partition as usize % peers == worker)
            .map(|s| Box::new(s) as Box<dyn PartitionReader>)
            .collect()
    }
}

/// Runs [`TwoLivePartitions`] on `workers` workers with a 100 ms idle timeout and checks that
/// exactly the sleepy partition's old event is late: partition 0 ran 10 h of event time ahead
/// while partition 1 was idle, so partition 1's event from T0 is behind the frontier
/// (T0 + 9h45m - 2h30m).
fn run_with_a_sleepy_partition(workers: usize) -> JobReport {
    let text = include_str!("../pipelines/fulfillment.yaml").replacen(
        "idle_timeout: 30s",
        "idle_timeout: 100ms",
        1,
    );
    let spec = PipelineSpec::parse(&text, "test.yaml").unwrap();
    let opts = JobOptions {
        workers,
        ..Default::default()
    };
    let report = run_job(&spec, Arc::new(TwoLivePartitions::default()), &opts).unwrap();
    assert_eq!(report.counters.received, 41);
    assert_eq!(
        report.counters.late, 1,
        "late events: {:?}",
        report.late_events
    );
    assert_eq!(report.late_events[0].order_id, "b0");
    assert_eq!(report.late_events[0].partition, 1);
    report
}

#[test]
fn idle_partition_stops_holding_the_watermark_and_its_old_data_is_late() {
    let report = run_with_a_sleepy_partition(1);
    let orders = report
        .final_kpis
        .iter()
        .filter(|k| k.kpi == "order_value" && k.dims.is_empty())
        .map(|k| k.denominator)
        .sum::<i64>();
    assert_eq!(orders, 40);
}

#[test]
fn a_worker_whose_partitions_are_all_idle_follows_the_other_workers() {
    // The same partitions on two workers: the sleepy partition is worker 1's only one. Worker 1
    // must not hold the job at tick 0 while it is idle, so the old event is late exactly as
    // with one worker (where the worker's other partition carries the frontier).
    let report = run_with_a_sleepy_partition(2);
    assert!(report.late_events[0].frontier_tick > 0);
}

#[test]
fn without_idleness_the_same_old_event_is_accepted() {
    // Same events as a finished replay: partition 1 holds the frontier at 0 until it has data.
    let a: Vec<String> = (0..40)
        .map(|i| created(&format!("a{i}"), T0 + i * 15 * 60_000))
        .collect();
    let input = MemoryPartitions::new("replay", [a, vec![created("b0", T0)]]);
    let report = run_job(
        &PipelineSpec::builtin(),
        Arc::new(input),
        &JobOptions::default(),
    )
    .unwrap();
    assert_eq!(report.counters.late, 0);
    assert_eq!(report.counters.accepted, 41);
}

#[test]
fn scaled_replay_is_paced_by_event_time() {
    // Two hours of event time at 3600x must take at least ~2 s of wall time.
    let events: Vec<String> = (0..=24)
        .map(|i| created(&format!("p{i}"), T0 + i * 5 * 60_000))
        .collect();
    let input = MemoryPartitions::new("paced", [events]);
    let started = Instant::now();
    let report = run_job(
        &PipelineSpec::builtin(),
        Arc::new(input),
        &JobOptions {
            pacing: Pacing::Scaled(3600.0),
            batch_per_partition: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.counters.accepted, 25);
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "took only {:?}",
        started.elapsed()
    );
}

/// Event times read so far per partition (`i64::MIN`: nothing yet, `i64::MAX`: finished) and
/// the largest gap seen between the two partitions while both were being read.
#[derive(Default)]
struct ReadPositions {
    latest: [AtomicI64; 2],
    peak_spread_ms: AtomicI64,
}

impl ReadPositions {
    fn new() -> Arc<Self> {
        let p = ReadPositions::default();
        p.latest
            .iter()
            .for_each(|t| t.store(i64::MIN, Ordering::SeqCst));
        Arc::new(p)
    }

    fn record(&self, partition: usize, ts: i64) {
        self.latest[partition].store(ts, Ordering::SeqCst);
        let [a, b] = [0, 1].map(|i| self.latest[i].load(Ordering::SeqCst));
        if a != i64::MIN && b != i64::MIN && a != i64::MAX && b != i64::MAX {
            self.peak_spread_ms
                .fetch_max((a - b).abs(), Ordering::SeqCst);
        }
    }
}

/// A finite partition that reports how far it has been read. With `last_after`, its last batch
/// waits (the partition reports no data) until partition 0 has been read up to that time.
struct Recorded {
    partition: u32,
    events: Vec<(i64, String)>,
    next: usize,
    positions: Arc<ReadPositions>,
    last_after: Option<i64>,
}

impl PartitionReader for Recorded {
    fn partition(&self) -> u32 {
        self.partition
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        if self.next == self.events.len() {
            self.positions.record(self.partition as usize, i64::MAX);
            return PollStatus::Finished;
        }
        let last_batch = self.next + max_events >= self.events.len();
        if last_batch
            && self
                .last_after
                .is_some_and(|t| self.positions.latest[0].load(Ordering::SeqCst) < t)
        {
            return PollStatus::Idle;
        }
        batch.first_offset = self.next as u64;
        for (ts, e) in self.events[self.next..].iter().take(max_events) {
            batch.push(e.as_bytes());
            self.next += 1;
            self.positions.record(self.partition as usize, *ts);
        }
        PollStatus::Ready
    }
}

/// Two partitions of 6,000 orders each, one per worker: partition 0 has an order a minute
/// (100 h of event time), partition 1 one a second (1 h 40 min). Read at equal batch sizes,
/// partition 0 runs days ahead in event time. The second field, if set, holds partition 1's
/// last batch until partition 0 has been read up to that time (so a run without alignment
/// shows the drift however the two workers happen to be scheduled).
struct UnevenPartitions(Arc<ReadPositions>, Option<i64>);

impl Source for UnevenPartitions {
    fn partitions(&self) -> u32 {
        2
    }
    fn describe(&self) -> String {
        "two partitions of very different event-time density".into()
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        [60_000, 1_000]
            .into_iter()
            .enumerate()
            .filter(|(p, _)| p % peers == worker)
            .map(|(p, gap)| {
                let events = (0..6_000)
                    .map(|i| {
                        let ts = T0 + i * gap;
                        (ts, created(&format!("p{p}-{i}"), ts))
                    })
                    .collect();
                Box::new(Recorded {
                    partition: p as u32,
                    events,
                    next: 0,
                    positions: self.0.clone(),
                    last_after: self.1.filter(|_| p == 1),
                }) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

/// Runs [`UnevenPartitions`] on two workers with `time.max_worker_drift` set to `drift`
/// (partition 1's last batch held until partition 0 reached `last_after`, if set); returns the
/// report, the largest event-time gap between the partitions while both were being read, and
/// how many rounds a worker skipped to wait.
fn run_uneven(drift: &str, last_after: Option<i64>) -> (JobReport, Duration, u64) {
    let text = include_str!("../pipelines/fulfillment.yaml").replacen(
        "max_worker_drift: 0s",
        &format!("max_worker_drift: {drift}"),
        1,
    );
    let spec = PipelineSpec::parse(&text, "test.yaml").unwrap();
    let positions = ReadPositions::new();
    let counters = Arc::new(SharedCounters::default());
    let opts = JobOptions {
        workers: 2,
        batch_per_partition: 16,
        counters: Some(counters.clone()),
        ..Default::default()
    };
    let source = UnevenPartitions(positions.clone(), last_after);
    let report = run_job(&spec, Arc::new(source), &opts).unwrap();
    assert_eq!(report.counters.accepted, 12_000);
    assert_eq!(report.counters.late, 0);
    let spread = positions.peak_spread_ms.load(Ordering::SeqCst);
    let waits = counters.worker_alignment_waits.load(Ordering::SeqCst);
    (report, Duration::from_millis(spread as u64), waits)
}

#[test]
fn a_worker_far_ahead_of_the_others_waits_for_them() {
    // Aligned (1 h): worker 0 reads on only while it is less than 1 h + 1 tick ahead of worker
    // 1's published frontier, which trails what worker 1 has read; one 16-minute batch more
    // makes 77 min at most (measured: 76 min; 99 h with the hold disabled).
    let (aligned, spread, waits) = run_uneven("1h", None);
    eprintln!("aligned: largest gap {spread:?}, {waits} rounds waited");
    assert!(waits > 0, "the worker ahead never waited");
    assert!(
        spread <= Duration::from_secs(77 * 60),
        "partitions on different workers drifted {spread:?} apart"
    );
    // Unaligned: nothing stops worker 0, and the gap grows towards the full 100 h. Partition 1
    // keeps its last batch until partition 0 is 12 h in, so that a worker 0 scheduled late
    // cannot hide the drift (with alignment on, this would stall both until the idle timeout).
    let (free, free_spread, free_waits) = run_uneven("0s", Some(T0 + 12 * 3_600_000));
    eprintln!("unaligned: largest gap {free_spread:?}");
    assert_eq!(free_waits, 0);
    assert!(
        free_spread >= Duration::from_secs(10 * 3600),
        "without alignment the gap was only {free_spread:?}"
    );
    // Waiting changes no result; only how often a window was revised before it closed (its
    // version) depends on the reading order.
    let values = |r: &JobReport| {
        r.final_kpis
            .iter()
            .map(|k| {
                let window = (k.window_start, k.window_end);
                (
                    k.kpi.clone(),
                    k.dims.clone(),
                    window,
                    k.numerator,
                    k.denominator,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&aligned), values(&free));
    assert!(values(&aligned).len() > 50);
    // Deviations too, but for the wall-clock time each was detected at.
    let detected = |r: &JobReport| {
        r.deviations
            .iter()
            .map(|d| (d.id.clone(), d.summary.clone(), d.event_time))
            .collect::<Vec<_>>()
    };
    assert_eq!(detected(&aligned), detected(&free));
    assert!(!aligned.deviations.is_empty());
}
