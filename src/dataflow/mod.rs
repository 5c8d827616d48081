//! The timely/differential dataflow of the streaming core, and [`run_job`] which runs it.
//!
//! ```text
//! ingest (per worker: decode, watermark, lateness; bad -> DLQ, late -> late sink)
//!   -> exchange(order_id) -> orders (order state, timers, per-order deviations)
//!        -> facts ----------------------------------> preaggregate -+
//!        -> backlog updates -> differential count_total ------------+-> exchange(series) -> cells
//!        -> risk updates -> exchange(route) -> risk -> facts -> preaggregate -+     (windows, KPI
//!                                             -> predicted_delay deviations       records, breaches,
//!        -> deviations                                                            anomalies)
//! ```
//! Timely timestamps are event-time ticks; an operator's input frontier is the watermark.
//! Every operator emits at the frontier it last saw and carries event time in the data, so one
//! message per invocation suffices. Outputs leave through a channel to the sink collector.

pub mod checkpoint;
pub mod ingest;
pub mod kpi_math;
pub mod kpis;
pub mod live_spec;
pub mod orders;
pub mod risk;
pub mod risk_model;
pub mod state_gauges;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::operators::count::CountTotal;
use differential_dataflow::AsCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat, Inspect, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

use crate::config::pipeline::PipelineSpec;
use crate::model::event::OrderEvent;
use crate::model::records::{Deviation, KpiRecord};
use crate::sinks::{CollectorOptions, DeadLetter, LateEvent, SinkMessage};
use crate::sources::Source;
use checkpoint::Ballot;

pub use ingest::{Pacing, SharedCounters};
pub use risk::RiskScore;

use crate::model::facts::Fact;
use kpis::{CellState, KpiInput, KpiOutput, Preaggregator};
use orders::{BacklogUpdate, OrderOutputs, OrderState, RiskUpdate};
use risk::{RiskOutputs, RiskState};

/// Milliseconds since the epoch, wall clock.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How to run a job.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Timely worker threads.
    pub workers: usize,
    pub pacing: Pacing,
    /// Keep every risk score (for quality evaluation).
    pub collect_risk_scores: bool,
    /// Write JSONL outputs here.
    pub out_dir: Option<std::path::PathBuf>,
    /// Keep final KPIs, deviations, dead letters and late events in the report.
    pub keep_in_memory: bool,
    /// Print deviations and final global KPIs as they come.
    pub echo: bool,
    /// Minimum wall time between intermediate KPI versions of a cell operator.
    pub kpi_update_interval: Duration,
    /// Events taken from each partition per ingest round.
    pub batch_per_partition: usize,
    /// Larger events are dead-lettered as oversize.
    pub max_event_bytes: usize,
    /// Also produce the outputs to Kafka topics.
    pub kafka_sink: Option<crate::sinks::kafka::KafkaSinkConfig>,
    /// Hand every deviation to the agent stage.
    pub deviation_tap: Option<crossbeam_channel::Sender<Deviation>>,
    /// Thresholds changed while the job runs; `None`: the spec passed to [`run_job`] as is.
    pub live_spec: Option<Arc<live_spec::LiveSpec>>,
    /// Live state for the server: fed by the collector, counters and watermark shared.
    pub live_view: Option<Arc<crate::serve::live::LiveView>>,
    /// Take checkpoints (and resume from the newest one).
    pub checkpoint: Option<checkpoint::CheckpointOptions>,
    /// Run as one process of a timely cluster.
    pub cluster: Option<ClusterOptions>,
    /// Count into these (to watch a running job); `None`: the live view's, or fresh ones.
    pub counters: Option<Arc<SharedCounters>>,
}

/// This process's place in a timely cluster: every process runs `workers` worker threads, and
/// worker `w` of process `p` is global worker `p * workers + w`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterOptions {
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            workers: 1,
            pacing: Pacing::MaxSpeed,
            collect_risk_scores: false,
            out_dir: None,
            keep_in_memory: true,
            echo: false,
            kpi_update_interval: Duration::from_millis(250),
            batch_per_partition: 2048,
            max_event_bytes: 1 << 20,
            kafka_sink: None,
            deviation_tap: None,
            live_spec: None,
            live_view: None,
            checkpoint: None,
            cluster: None,
            counters: None,
        }
    }
}

/// Counters of a finished job.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub received: u64,
    pub accepted: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub duplicates: u64,
    pub facts: u64,
    pub deviations: u64,
    pub kpi_updates: u64,
    pub final_kpis: u64,
}

/// What a finished job produced.
#[derive(Debug, Default)]
pub struct JobReport {
    /// Final KPI records, sorted by key.
    pub final_kpis: Vec<KpiRecord>,
    /// Deviations sorted by id.
    pub deviations: Vec<Deviation>,
    /// Risk scores sorted by (order, now), when collected.
    pub risk_scores: Vec<RiskScore>,
    pub counters: Counters,
    pub dead_letters: Vec<DeadLetter>,
    pub late_events: Vec<LateEvent>,
    /// Peak live order records summed over workers (each worker's own peak, measured per tick).
    pub peak_live_orders: u64,
    /// Process RSS after the input was processed up to the watermark, before the end-of-input
    /// drain (Linux only).
    pub rss_at_input_end: Option<u64>,
    pub elapsed: Duration,
    /// Kafka delivery totals, when the Kafka sinks were on.
    pub kafka: Option<crate::sinks::KafkaDelivery>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("timely could not start: {0}")]
    Timely(String),
    #[error("a worker failed: {0}")]
    Worker(String),
    #[error("writing outputs failed: {0}")]
    Output(#[from] std::io::Error),
    #[error("sink failed: {0:#}")]
    Sink(anyhow::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// Per-worker gauges reported back after the run.
#[derive(Default, Clone, Copy)]
struct WorkerStats {
    peak_live_orders: u64,
    /// Process RSS once the input is exhausted and processed up to the frontier, before the
    /// end-of-input drain fires every pending timer (worker 0 only).
    rss_at_input_end: Option<u64>,
}

/// Runs the pipeline over `source` until it ends.
pub fn run_job(
    spec: &PipelineSpec,
    source: Arc<dyn Source>,
    opts: &JobOptions,
) -> Result<JobReport, JobError> {
    let started = Instant::now();
    let spec = Arc::new(spec.clone());
    let (tx, rx) = crossbeam_channel::unbounded::<SinkMessage>();
    let collector_opts = CollectorOptions {
        out_dir: opts.out_dir.clone(),
        keep_in_memory: opts.keep_in_memory,
        echo: opts.echo,
        kafka: opts.kafka_sink.clone(),
        deviation_tap: opts.deviation_tap.clone(),
        live_view: opts.live_view.clone(),
        await_open: opts.checkpoint.is_some(),
    };
    if let Some(c) = &opts.checkpoint {
        if c.resume {
            check_resumable(c, opts)?;
        } else {
            checkpoint::clear(&c.dir)?;
        }
    }
    let collector = std::thread::Builder::new()
        .name("sink-collector".into())
        .spawn(move || crate::sinks::collect(rx, collector_opts))
        .map_err(JobError::Output)?;
    let counters = opts
        .counters
        .clone()
        .or_else(|| opts.live_view.as_ref().map(|v| v.counters.clone()))
        .unwrap_or_default();
    let worker_counters = counters.clone();
    let opts_w = opts.clone();
    let frontiers = Arc::new(ingest::LocalFrontiers::new(opts.workers));
    let config = match &opts.cluster {
        None => timely::Config::process(opts.workers.max(1)),
        Some(c) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: opts.workers.max(1),
                process: c.process,
                addresses: c.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
    };
    let guards = timely::execute(config, move |worker| {
        run_worker(
            worker,
            spec.clone(),
            source.clone(),
            &opts_w,
            tx.clone(),
            &worker_counters,
            &frontiers,
        )
    })
    .map_err(JobError::Timely)?;
    let mut peak = 0;
    let mut rss_at_input_end = None;
    for r in guards.join() {
        let stats = r.map_err(JobError::Worker)?;
        peak += stats.peak_live_orders;
        rss_at_input_end = rss_at_input_end.or(stats.rss_at_input_end);
    }
    let collected = collector
        .join()
        .map_err(|_| JobError::Worker("sink collector panicked".into()))?
        .map_err(JobError::Sink)?;
    let counters = Counters {
        kpi_updates: collected.kpi_updates,
        final_kpis: collected.final_count,
        ..counters.values()
    };
    Ok(JobReport {
        final_kpis: collected.final_kpis,
        deviations: collected.deviations,
        risk_scores: collected.risk_scores,
        counters,
        dead_letters: collected.dead_letters,
        late_events: collected.late_events,
        peak_live_orders: peak,
        rss_at_input_end,
        elapsed: started.elapsed(),
        kafka: collected.kafka,
    })
}

/// Refuses to resume from a checkpoint it cannot restore: one taken by a different number of
/// processes (output positions and counters are kept per process), or, in cluster mode, with a
/// different number of workers (a rescale reads every worker's file, and each process keeps
/// only its own). A single process resumes with any number of workers.
fn check_resumable(c: &checkpoint::CheckpointOptions, opts: &JobOptions) -> Result<(), JobError> {
    let process = opts.cluster.as_ref().map_or(0, |c| c.process);
    let processes = opts.cluster.as_ref().map_or(1, |c| c.addresses.len());
    let peers = opts.workers.max(1) * processes;
    if let Some(&n) = checkpoint::committed(&c.dir, process)?.last() {
        let saved_processes = checkpoint::processes_of(&c.dir, n)?;
        let saved_peers = checkpoint::load_process(&c.dir, n, process)?.peers;
        let refuse = |why: String| {
            Err(JobError::Checkpoint(format!(
                "{}: checkpoint {n} {why}, or start over with --fresh",
                c.dir.display()
            )))
        };
        if saved_processes != processes {
            return refuse(format!(
                "was taken by {saved_processes} processes, this job has {processes}; resume with the same --processes"
            ));
        }
        if processes > 1 && saved_peers != peers {
            return refuse(format!(
                "was taken with {saved_peers} workers in all, this job has {peers}; a cluster job resumes with the same --workers (a single process can change them)"
            ));
        }
    }
    Ok(())
}

fn frontier_of(f: &timely::progress::frontier::MutableAntichain<u64>) -> Option<u64> {
    f.frontier().iter().next().copied()
}

/// The earliest tick with work in either queue, if it is below the frontier (any tick, if the
/// frontier is empty). Operators process their stashed data and timers tick by tick with it.
pub(crate) fn next_due<A, B>(
    data: &std::collections::BTreeMap<u64, A>,
    timers: &std::collections::BTreeMap<u64, B>,
    frontier: Option<u64>,
) -> Option<u64> {
    let next = match (data.keys().next(), timers.keys().next()) {
        (Some(&a), Some(&b)) => a.min(b),
        (Some(&a), None) => a,
        (None, Some(&b)) => b,
        (None, None) => return None,
    };
    frontier.is_none_or(|f| next < f).then_some(next)
}

/// Downgrades `cap` to the frontier, or drops it when the frontier is empty.
fn follow_frontier(cap: &mut Option<Capability<u64>>, frontier: Option<u64>) {
    match (cap.as_mut(), frontier) {
        (Some(c), Some(f)) if *c.time() < f => c.downgrade(&f),
        (Some(_), None) => *cap = None,
        _ => {}
    }
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    spec: Arc<PipelineSpec>,
    source: Arc<dyn Source>,
    opts: &JobOptions,
    sink: crossbeam_channel::Sender<SinkMessage>,
    counters: &Arc<SharedCounters>,
    frontiers: &ingest::LocalFrontiers,
) -> WorkerStats {
    let index = worker.index();
    let local_index = index % opts.workers.max(1);
    let peers = worker.peers();
    let mut input = InputHandleVec::<u64, OrderEvent>::new();
    let probe = ProbeHandle::new();
    // Operator states, shared with this loop so that checkpoints can save and restore them.
    let order_state = Rc::new(RefCell::new(OrderState::new(spec.clone())));
    let risk_state = Rc::new(RefCell::new(RiskState::new(
        spec.clone(),
        opts.collect_risk_scores || opts.live_view.is_some(),
    )));
    let cell_state = Rc::new(RefCell::new(CellState::new(spec.clone())));

    worker.dataflow::<u64, _, _>(|scope| {
        let events = input.to_stream(scope);

        // Order state, exchanged by order id; three outputs plus deviations straight to the sink.
        let mut builder = OperatorBuilder::new("OrderState".to_owned(), scope);
        let mut events_in = builder.new_input(
            events,
            Exchange::new(|e: &OrderEvent| order_key(&e.order_id)),
        );
        let (facts_out, order_facts) = builder.new_output::<Vec<Fact>>();
        let (backlog_out, backlog) = builder.new_output::<Vec<BacklogUpdate>>();
        let (risk_out, risk_updates) = builder.new_output::<Vec<RiskUpdate>>();
        let mut facts_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<Fact>>>::from(facts_out);
        let mut backlog_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<BacklogUpdate>>>::from(backlog_out);
        let mut risk_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<RiskUpdate>>>::from(risk_out);
        let shared_orders = order_state.clone();
        let order_sink = sink.clone();
        let order_counters = counters.clone();
        let record_applied = opts.live_view.is_some();
        builder.build(move |capabilities| {
            let mut caps: Vec<Option<Capability<u64>>> =
                capabilities.into_iter().map(Some).collect();
            shared_orders.borrow_mut().record_applied = record_applied;
            let mut out = OrderOutputs::default();
            move |frontiers| {
                let mut state = shared_orders.borrow_mut();
                events_in.for_each(|_time, data| {
                    for e in data.drain(..) {
                        state.stash(e);
                    }
                });
                let f = frontier_of(&frontiers[0]);
                state.advance(f, &mut out);
                if let Some(c) = caps[0].as_ref() {
                    if !out.facts.is_empty() {
                        facts_out
                            .activate()
                            .session(c)
                            .give_iterator(out.facts.drain(..));
                    }
                }
                if let Some(c) = caps[1].as_ref() {
                    if !out.backlog.is_empty() {
                        backlog_out
                            .activate()
                            .session(c)
                            .give_iterator(out.backlog.drain(..));
                    }
                }
                if let Some(c) = caps[2].as_ref() {
                    if !out.risk.is_empty() {
                        risk_out
                            .activate()
                            .session(c)
                            .give_iterator(out.risk.drain(..));
                    }
                }
                // Events before the deviations they caused, so the server's order view has the
                // order when its deviation arrives.
                if !out.applied.is_empty() {
                    let _ =
                        order_sink.send(SinkMessage::OrderEvents(std::mem::take(&mut out.applied)));
                }
                if out.duplicates > 0 {
                    order_counters
                        .duplicates
                        .fetch_add(std::mem::take(&mut out.duplicates), Ordering::Relaxed);
                }
                if !out.deviations.is_empty() {
                    order_counters
                        .deviations
                        .fetch_add(out.deviations.len() as u64, Ordering::Relaxed);
                    let _ = order_sink
                        .send(SinkMessage::Deviations(std::mem::take(&mut out.deviations)));
                }
                for cap in caps.iter_mut() {
                    follow_frontier(cap, f);
                }
            }
        });

        // Risk, exchanged by route; facts downstream, deviations and scores to the sink.
        let shared_risk = risk_state.clone();
        let risk_sink = sink.clone();
        let risk_counters = counters.clone();
        let risk_facts = risk_updates
            .unary_frontier::<CapacityContainerBuilder<Vec<Fact>>, _, _, _>(
                Exchange::new(|u: &RiskUpdate| route_key(&u.route)),
                "Risk",
                move |cap, _info| {
                    let mut cap = Some(cap);
                    let mut out = RiskOutputs::default();
                    move |(input, frontier), output| {
                        let mut state = shared_risk.borrow_mut();
                        input.for_each(|_t, data| {
                            for u in data.drain(..) {
                                state.stash(u);
                            }
                        });
                        let f = frontier_of(frontier);
                        state.advance(f, &mut out);
                        if let Some(c) = cap.as_ref() {
                            if !out.facts.is_empty() {
                                output.session(c).give_iterator(out.facts.drain(..));
                            }
                        }
                        if !out.deviations.is_empty() {
                            risk_counters
                                .deviations
                                .fetch_add(out.deviations.len() as u64, Ordering::Relaxed);
                            let _ = risk_sink
                                .send(SinkMessage::Deviations(std::mem::take(&mut out.deviations)));
                        }
                        if !out.scores.is_empty() {
                            let _ = risk_sink
                                .send(SinkMessage::RiskScores(std::mem::take(&mut out.scores)));
                        }
                        follow_frontier(&mut cap, f);
                    }
                },
            );

        // Facts -> per-worker partials.
        let pre_spec = spec.clone();
        let fact_counters = counters.clone();
        let partials = order_facts
            .concat(risk_facts)
            .unary::<CapacityContainerBuilder<Vec<KpiInput>>, _, _, _>(
                Pipeline,
                "Preaggregate",
                move |_cap, _info| {
                    let mut pre = Preaggregator::new(pre_spec);
                    move |input, output| {
                        input.for_each(|time, data| {
                            for f in data.iter() {
                                pre.add(f);
                            }
                            fact_counters
                                .facts
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                            data.clear();
                            output.session(&time).give_iterator(pre.drain());
                        });
                    }
                },
            );

        // Backlog: a differential collection with retractions, counted per series.
        let levels = backlog.as_collection().count_total().inner.map(
            |((key, count), tick, diff): ((orders::BacklogKey, isize), u64, isize)| {
                KpiInput::Level(key, count as i64, tick, diff)
            },
        );

        // Cells: windows, records, breaches, anomalies.
        let shared_cells = cell_state.clone();
        let interval = opts.kpi_update_interval;
        let kpi_sink = sink.clone();
        let kpi_counters = counters.clone();
        let live_spec = opts.live_spec.clone();
        partials
            .concat(levels)
            .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Exchange::new(|i: &KpiInput| i.route()),
                "Cells",
                move |cap, _info| {
                    let mut spec_version = 0;
                    let mut cap = Some(cap);
                    let mut buffer = Vec::new();
                    let mut last_emit = Instant::now();
                    move |(input, frontier), _output| {
                        let mut state = shared_cells.borrow_mut();
                        if let Some((v, spec)) = live_spec
                            .as_ref()
                            .and_then(|l| l.changed_since(spec_version))
                        {
                            spec_version = v;
                            state.set_spec(spec);
                        }
                        input.for_each(|_t, data| {
                            for i in data.drain(..) {
                                state.ingest(i);
                            }
                        });
                        let f = frontier_of(frontier);
                        let intermediate = f.is_some() && last_emit.elapsed() >= interval;
                        if intermediate {
                            last_emit = Instant::now();
                        }
                        state.advance(f, intermediate, &mut buffer);
                        let mut records = Vec::new();
                        let mut devs = Vec::new();
                        for o in buffer.drain(..) {
                            match o {
                                KpiOutput::Record(r) => records.push(r),
                                KpiOutput::Deviation(d) => devs.push(*d),
                            }
                        }
                        if !devs.is_empty() {
                            kpi_counters
                                .deviations
                                .fetch_add(devs.len() as u64, Ordering::Relaxed);
                            let _ = kpi_sink.send(SinkMessage::Deviations(devs));
                        }
                        if !records.is_empty() {
                            let _ = kpi_sink.send(SinkMessage::Kpis(records));
                        }
                        follow_frontier(&mut cap, f);
                    }
                },
            )
            .probe_with(&probe);
    });

    // The first worker of each process reports the watermark and talks to its collector.
    let first_local = index.is_multiple_of(opts.workers.max(1));
    let process = opts.cluster.as_ref().map_or(0, |c| c.process);

    // Checkpoints: a small dataflow that broadcasts every worker's ballot, and the restore.
    let mut schedule = opts.checkpoint.clone().map(checkpoint::Schedule::new);
    let mut ballot_input = InputHandleVec::<u64, (u64, Ballot)>::new();
    let ballot_probe = ProbeHandle::new();
    let ballots: Rc<RefCell<Vec<(u64, Ballot)>>> = Rc::default();
    let mut resumed = None;
    let mut pending_write: Option<checkpoint::PendingWrite> = None;
    if let Some(sched) = schedule.as_mut() {
        let seen = ballots.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            ballot_input
                .to_stream(scope)
                .broadcast()
                .inspect(move |b| seen.borrow_mut().push(b.clone()))
                .probe_with(&ballot_probe);
        });
        let dir = sched.opts.dir.clone();
        let committed = if sched.opts.resume {
            checkpoint::committed(&dir, process)
                .unwrap_or_else(|e| panic!("reading checkpoints in {}: {e}", dir.display()))
        } else {
            Vec::new()
        };
        let mut ballot = sched.ballot(index, 0, false);
        ballot.committed = committed;
        let decision = vote(
            worker,
            &mut ballot_input,
            &ballot_probe,
            &ballots,
            0,
            0,
            ballot,
        );
        let mut sinks_at = None;
        if let Some(n) = decision.resume {
            let read =
                |e: std::io::Error| format!("reading checkpoint {n} in {}: {e}", dir.display());
            let saved_process = checkpoint::load_process(&dir, n, process)
                .unwrap_or_else(|e| panic!("{}", read(e)));
            // The same number of workers: this worker's own file. Another number (a rescale):
            // every worker's file, keeping the entries this worker now owns.
            let from: Vec<usize> = if saved_process.peers == peers {
                vec![index]
            } else {
                (0..saved_process.peers).collect()
            };
            let owner = checkpoint::Owner {
                worker: index,
                peers,
            };
            let mut cut = 0;
            let mut positions = Vec::new();
            for w in from {
                let saved =
                    checkpoint::load_worker(&dir, n, w).unwrap_or_else(|e| panic!("{}", read(e)));
                cut = saved.cut;
                positions.extend(saved.positions);
                order_state.borrow_mut().merge_restored(saved.orders, owner);
                risk_state.borrow_mut().merge_restored(saved.risk, owner);
                cell_state.borrow_mut().merge_restored(saved.cells, owner);
            }
            order_state.borrow_mut().finish_restore(cut);
            if first_local {
                counters.restore(&saved_process.counters);
                sinks_at = saved_process.sinks;
            }
            tracing::info!(
                worker = index,
                checkpoint = n,
                cut,
                saved_workers = saved_process.peers,
                workers = peers,
                "resuming from a checkpoint"
            );
            sched.restored(n);
            resumed = Some((cut, positions));
        }
        if first_local {
            let _ = sink.send(SinkMessage::Open(sinks_at));
        }
        // A barrier: no worker reads before the counters are restored.
        let at = resumed.as_ref().map_or(0, |r| r.0);
        let ballot = sched.ballot(index, at, false);
        vote(
            worker,
            &mut ballot_input,
            &ballot_probe,
            &ballots,
            1,
            at,
            ballot,
        );
        sched.start(at);
    }

    let readers = match &resumed {
        Some((_, positions)) => {
            source.readers_from(index, peers, &checkpoint::replay_starts(positions))
        }
        None => source.readers(index, peers),
    };
    let mut ingest = ingest::Ingest::new(readers, &spec, opts.pacing, opts.max_event_bytes);
    if schedule.is_some() {
        ingest.track_replay();
    }
    if let Some((cut, positions)) = &resumed {
        ingest.restore(*cut, positions);
        input.advance_to(*cut);
    }
    let tick_ms = spec.time.tick.ms();
    let mut batch = Vec::with_capacity(opts.batch_per_partition * 2);
    let mut stats = WorkerStats::default();
    let mut since_sync = 0usize;
    let ingest_started = Instant::now();
    let mut natural = *input.time();
    let drift_ticks = ingest.max_worker_drift_ticks();
    let mut finished = false;
    let mut sizes = state_gauges::StateSizes::default();
    let mut last_measured = Instant::now();
    loop {
        let cut = schedule.as_ref().and_then(|s| s.cut);
        let at_cut = cut.is_some_and(|c| finished || natural >= c);
        if !at_cut && !finished {
            // Watermark alignment between workers: reading on while far ahead of the slowest
            // worker of this process would only fill the operators' stashes with events that
            // wait for that worker's watermark. The slowest worker is never held, so this
            // cannot deadlock.
            let ahead = drift_ticks.is_some_and(|d| {
                frontiers
                    .lowest_other(local_index)
                    .is_some_and(|slowest| natural > slowest.saturating_add(d))
            });
            let round = if ahead {
                ingest.hold(natural, counters)
            } else {
                ingest.round(
                    opts.batch_per_partition,
                    *input.time(),
                    &mut batch,
                    &sink,
                    counters,
                )
            };
            if !batch.is_empty() {
                input.send_batch(&mut batch);
                batch.clear();
            }
            since_sync += round.accepted;
            match round.frontier {
                None => finished = true,
                Some(f) => natural = f,
            }
            // A worker with only idle partitions follows the other workers of this process, so
            // it does not hold the watermark back; its partitions' older data is then late.
            if round.all_idle {
                frontiers.publish(local_index, None);
                if let Some(others) = frontiers.lowest_other(local_index) {
                    natural = natural.max(others);
                }
            } else {
                frontiers.publish(local_index, (!finished).then_some(natural));
            }
            let target = cut.map_or(natural, |c| natural.min(c));
            if !finished && target > *input.time() {
                input.advance_to(target);
            }
            worker.step();
            if first_local {
                if let Some(tick) = probe.with_frontier(|f| f.iter().next().copied()) {
                    counters
                        .watermark_ms
                        .store(tick as i64 * tick_ms, Ordering::Relaxed);
                }
            }
            // Bound in-flight data without lock-stepping the workers: once a worker has pushed
            // `sync_every` events, it waits until the dataflow has caught up to where the input
            // stood `lag_ticks` ago.
            if since_sync >= SYNC_EVERY {
                since_sync = 0;
                let t = input.time().saturating_sub(LAG_TICKS);
                worker.step_while(|| probe.less_than(&t));
            }
            if last_measured.elapsed() >= STATE_GAUGE_INTERVAL {
                last_measured = Instant::now();
                publish_state_sizes(&order_state, &risk_state, &cell_state, counters, &mut sizes);
            }
            if round.received == 0 && !finished {
                // Nothing new: park briefly unless the dataflow has work, instead of spinning.
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
        let Some(sched) = schedule.as_mut() else {
            if finished {
                break;
            }
            continue;
        };
        let Some(c) = sched.cut else {
            break;
        };
        if !(finished || natural >= c) {
            continue;
        }
        // At the cut: hold the input there until every operator has processed every tick
        // below it, save, and vote on the next cut.
        if c > *input.time() {
            input.advance_to(c);
        }
        worker.step_while(|| probe.less_than(&c));
        let number = sched.next_number;
        let dir = sched.opts.dir.clone();
        let encoded = checkpoint::encode(&checkpoint::WorkerSnapshot {
            cut: c,
            peers,
            worker: index,
            positions: ingest.positions(c),
            orders: order_state.borrow().snapshot(),
            risk: risk_state.borrow().snapshot(),
            cells: cell_state.borrow().snapshot(),
        });
        let mut files = vec![(
            checkpoint::worker_path(&dir, number, index),
            encoded.unwrap_or_else(|e| panic!("encoding checkpoint {number}: {e}")),
        )];
        if first_local {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = sink.send(SinkMessage::Checkpoint(tx));
            let sinks = rx.recv().unwrap_or(None);
            let p = checkpoint::ProcessSnapshot {
                cut: c,
                peers,
                sinks,
                counters: counters.values(),
            };
            files.push((
                checkpoint::process_path(&dir, number, process),
                checkpoint::encode(&p)
                    .unwrap_or_else(|e| panic!("encoding checkpoint {number}: {e}")),
            ));
        }
        // The previous checkpoint's files are durable before this worker votes, so the vote
        // commits it everywhere.
        let durable = pending_write.take().map(finish_write);
        let round = sched.round;
        let ballot = sched.ballot(index, natural, finished);
        let decision = vote(
            worker,
            &mut ballot_input,
            &ballot_probe,
            &ballots,
            round,
            c,
            ballot,
        );
        if let (true, Some(m)) = (first_local, durable) {
            commit_checkpoint(&dir, m, process);
        }
        pending_write = Some(checkpoint::PendingWrite::spawn(number, files));
        tracing::debug!(
            worker = index,
            checkpoint = number,
            cut = c,
            "checkpoint taken"
        );
        sched.advance(&decision, natural);
        if decision.next_cut.is_none() {
            break;
        }
    }
    // The last checkpoint: durable everywhere, then committed.
    if let (Some(sched), Some(w)) = (schedule.as_ref(), pending_write.take()) {
        let m = finish_write(w);
        let ballot = sched.ballot(index, natural, true);
        vote(
            worker,
            &mut ballot_input,
            &ballot_probe,
            &ballots,
            sched.round,
            natural,
            ballot,
        );
        if first_local {
            commit_checkpoint(&sched.opts.dir, m, process);
        }
    }
    drop(ballot_input);
    let t = *input.time();
    worker.step_while(|| probe.less_than(&t));
    if first_local {
        stats.rss_at_input_end = crate::bench::rss_bytes();
    }
    let ingest_done = Instant::now();
    tracing::debug!(
        worker = index,
        ingest_ms = ingest_started.elapsed().as_millis() as u64,
        "input exhausted"
    );
    drop(input);
    while worker.step_or_park(None) {}
    tracing::debug!(
        worker = index,
        drain_ms = ingest_done.elapsed().as_millis() as u64,
        "input exhausted; final drain done"
    );
    stats.peak_live_orders = order_state.borrow().peak_live_orders() as u64;
    publish_state_sizes(&order_state, &risk_state, &cell_state, counters, &mut sizes);
    stats
}

/// Measures this worker's operator states and adds the change to the job-wide gauges.
fn publish_state_sizes(
    orders: &RefCell<OrderState>,
    risk: &RefCell<RiskState>,
    cells: &RefCell<CellState>,
    counters: &SharedCounters,
    last: &mut state_gauges::StateSizes,
) {
    let mut now = state_gauges::StateSizes::default();
    orders.borrow().measure(&mut now);
    risk.borrow().measure(&mut now);
    cells.borrow().measure(&mut now);
    counters.state.publish(last, now);
}

fn finish_write(w: checkpoint::PendingWrite) -> u64 {
    let n = w.number;
    w.finish()
        .unwrap_or_else(|e| panic!("writing checkpoint {n}: {e}"))
}

fn commit_checkpoint(dir: &std::path::Path, n: u64, process: usize) {
    checkpoint::commit(dir, n, process)
        .unwrap_or_else(|e| panic!("committing checkpoint {n}: {e}"));
}

/// One vote round: sends this worker's ballot, waits until every worker's ballot of the round
/// has arrived, and decides.
fn vote(
    worker: &mut timely::worker::Worker,
    input: &mut InputHandleVec<u64, (u64, Ballot)>,
    probe: &ProbeHandle<u64>,
    ballots: &Rc<RefCell<Vec<(u64, Ballot)>>>,
    round: u64,
    cut: u64,
    ballot: Ballot,
) -> checkpoint::Decision {
    input.send((round, ballot));
    input.advance_to(round + 1);
    worker.step_while(|| probe.less_than(&(round + 1)));
    let mut all = ballots.borrow_mut();
    let these: Vec<Ballot> = all
        .iter()
        .filter(|(r, _)| *r == round)
        .map(|(_, b)| b.clone())
        .collect();
    all.retain(|(r, _)| *r > round);
    assert_eq!(
        these.len(),
        worker.peers(),
        "every worker votes once per round"
    );
    checkpoint::decide(cut, &these)
}

/// Wall time between two measurements of a worker's state sizes.
const STATE_GAUGE_INTERVAL: Duration = Duration::from_millis(250);
/// Events a worker ingests between checks of the dataflow's progress.
const SYNC_EVERY: usize = 64 * 1024;
/// How far (in ticks) the dataflow may trail the input at a check.
const LAG_TICKS: u64 = 60;

/// The exchange key of an order: the order operator's state for it lives on the worker this
/// hash selects (see [`checkpoint::Owner`]).
pub(crate) fn order_key(order_id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(order_id.as_bytes());
    h.finish()
}

/// The exchange key of a route: the risk operator's statistics and open orders of a route live
/// on the worker this hash selects.
pub(crate) fn route_key(route: &orders::Route) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    (route.0.as_str(), route.1.as_str(), route.2.as_str()).hash(&mut h);
    h.finish()
}
