//! Prometheus metrics of the process, served at `GET /metrics`.
//!
//! In: the job's shared counters and watermark (read at scrape time), KPI records and deviations
//! (from the live view), finished agent runs (from the agent stage's recorder), WebSocket client
//! events (from the server). Out: the Prometheus text format.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::agents::store::RunRecord;
use crate::dataflow::SharedCounters;

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    events_received: IntCounter,
    events_accepted: IntCounter,
    events_dead_lettered: IntCounter,
    events_late: IntCounter,
    events_duplicate: IntCounter,
    watermark: Gauge,
    watermark_lag: Gauge,
    consumer_lag: IntGauge,
    alignment_waits: IntCounterVec,
    pub kpi_updates: IntCounterVec,
    pub deviations: IntCounterVec,
    agent_runs: IntCounterVec,
    agent_run_seconds: HistogramVec,
    llm_tokens: IntCounterVec,
    pub ws_clients: IntGaugeVec,
    state_entries: IntGaugeVec,
    pub ws_messages: IntCounterVec,
    pub ws_dropped: IntCounterVec,
    pub http_requests: IntCounterVec,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let consumer_lag = IntGauge::new(
            "fulfillment_consumer_lag_messages",
            "Kafka source: messages between the consumed and the end offsets, all partitions (-1: not consuming from Kafka)",
        )
        .expect("valid metric");
        r.register(Box::new(consumer_lag.clone())).expect("unique");
        consumer_lag.set(-1);
        let agent_run_seconds = HistogramVec::new(
            HistogramOpts::new(
                "fulfillment_agent_run_seconds",
                "Wall time of an agent run: retrieval, model calls with retries, guardrails",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["agent"],
        )
        .expect("valid metric");
        r.register(Box::new(agent_run_seconds.clone()))
            .expect("unique");
        let ws_clients = IntGaugeVec::new(
            Opts::new("fulfillment_ws_clients", "Connected WebSocket clients"),
            &["stream"],
        )
        .expect("valid metric");
        r.register(Box::new(ws_clients.clone())).expect("unique");
        let state_entries = IntGaugeVec::new(
            Opts::new(
                "fulfillment_state_entries",
                "Entries held by the dataflow's stateful operators, all workers (order records, timers, KPI cells, ...)",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(state_entries.clone())).expect("unique");
        Metrics {
            events_received: counter(
                &r,
                "fulfillment_events_received_total",
                "Raw events read from the source",
            ),
            events_accepted: counter(
                &r,
                "fulfillment_events_accepted_total",
                "Events decoded and admitted into the dataflow",
            ),
            events_dead_lettered: counter(
                &r,
                "fulfillment_events_dead_lettered_total",
                "Malformed events sent to the dead-letter sink",
            ),
            events_late: counter(
                &r,
                "fulfillment_events_late_total",
                "Events behind the watermark plus allowed lateness",
            ),
            events_duplicate: counter(
                &r,
                "fulfillment_events_duplicate_total",
                "Redelivered events (same event id) ignored by the order state",
            ),
            watermark: gauge(
                "fulfillment_watermark_seconds",
                "Event time the dataflow has processed up to (Unix seconds)",
            ),
            watermark_lag: gauge(
                "fulfillment_watermark_lag_seconds",
                "Wall clock minus the watermark",
            ),
            consumer_lag,
            alignment_waits: counter_vec(
                &r,
                "fulfillment_alignment_waits_total",
                "Reads skipped by watermark alignment: a partition ahead of its worker's slowest \
                 (level=partition) or a worker ahead of the slowest other worker (level=worker)",
                &["level"],
            ),
            kpi_updates: counter_vec(
                &r,
                "fulfillment_kpi_updates_total",
                "KPI records emitted (intermediate and final)",
                &["kpi", "final"],
            ),
            deviations: counter_vec(
                &r,
                "fulfillment_deviations_total",
                "Deviations detected",
                &["type", "severity"],
            ),
            agent_runs: counter_vec(
                &r,
                "fulfillment_agent_runs_total",
                "Recorded agent runs",
                &["agent", "outcome"],
            ),
            agent_run_seconds,
            llm_tokens: counter_vec(
                &r,
                "fulfillment_llm_tokens_total",
                "Tokens reported by the model server",
                &["kind"],
            ),
            ws_clients,
            state_entries,
            ws_messages: counter_vec(
                &r,
                "fulfillment_ws_messages_total",
                "WebSocket messages sent",
                &["stream"],
            ),
            ws_dropped: counter_vec(
                &r,
                "fulfillment_ws_dropped_total",
                "WebSocket clients disconnected for not keeping up",
                &["stream"],
            ),
            http_requests: counter_vec(
                &r,
                "fulfillment_http_requests_total",
                "HTTP requests answered",
                &["method", "status"],
            ),
            registry: r,
        }
    }

    /// Counts a recorded agent run.
    pub fn observe_run(&self, run: &RunRecord) {
        self.agent_runs
            .with_label_values(&[run.agent.as_str(), run.outcome.as_str()])
            .inc();
        self.agent_run_seconds
            .with_label_values(&[run.agent.as_str()])
            .observe(run.latency_ms.max(0) as f64 / 1000.0);
        self.llm_tokens
            .with_label_values(&["prompt"])
            .inc_by(u64::from(run.prompt_tokens));
        self.llm_tokens
            .with_label_values(&["completion"])
            .inc_by(u64::from(run.completion_tokens));
    }

    pub fn set_consumer_lag(&self, lag: i64) {
        self.consumer_lag.set(lag);
    }

    /// Brings the counters owned by the job up to date, then renders every metric.
    pub fn render(&self, counters: &SharedCounters, now_wall_ms: i64) -> String {
        let sync = |c: &IntCounter, v: u64| {
            let seen = c.get();
            if v > seen {
                c.inc_by(v - seen);
            }
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        sync(&self.events_received, load(&counters.received));
        sync(&self.events_accepted, load(&counters.accepted));
        sync(&self.events_dead_lettered, load(&counters.dead_lettered));
        sync(&self.events_late, load(&counters.late));
        sync(&self.events_duplicate, load(&counters.duplicates));
        for (level, waits) in [
            ("partition", &counters.partition_alignment_waits),
            ("worker", &counters.worker_alignment_waits),
        ] {
            sync(
                &self.alignment_waits.with_label_values(&[level]),
                load(waits),
            );
        }
        let wm = counters.watermark_ms.load(Ordering::Relaxed);
        if wm > 0 {
            self.watermark.set(wm as f64 / 1000.0);
            self.watermark_lag.set((now_wall_ms - wm) as f64 / 1000.0);
        }
        let sizes = counters.state.values();
        for (name, value) in crate::dataflow::state_gauges::STATE_NAMES
            .iter()
            .zip(sizes.0)
        {
            self.state_entries
                .with_label_values(&[name])
                .set(value as i64);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}
