//! The independent batch oracle: a plain, single-threaded recompute of everything the streaming
//! dataflow produces, written straight from `docs/SEMANTICS.md`.
//!
//! In: a pipeline spec and a partitioned input (`MemoryPartitions`). Out: [`OracleResult`] with the
//! final KPI records, deviations, risk scores and the late/duplicate/dead-letter counts.
//!
//! Nothing here is shared with `src/dataflow` except the pure helpers the contract names
//! (`kpi_math` for values, statuses, quantile ranks and anomaly z; `risk_model::score` and
//! `risk_model::crossing_time`) and the model and config types. The order of work is the
//! contract's, made obvious:
//! 1. [`ingest`]: decode each partition in order, apply the per-partition lateness rule;
//! 2. [`orders`]: per order, events sorted by `(ts, event_id, type ordinal)`, simulated tick by tick
//!    with a timer queue, dedup and retention, collecting facts, order deviations, backlog changes
//!    and each record's state after every tick with events;
//! 3. [`risk`]: route statistics rebuilt from delivery and shipment facts; each record replayed
//!    through its event scores and band checks: scores, risk facts and `predicted_delay`;
//! 4. [`kpis`]: every fact's contribution to every cell collected, then folded; gauges from the
//!    backlog changes; threshold breaches and anomalies of the closed cells.
#![allow(dead_code)]

pub mod ingest;
pub mod kpis;
pub mod orders;
pub mod risk;

use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::model::facts::Fact;
use fulfillment_ai::model::{Deviation, KpiRecord};
use fulfillment_ai::sources::memory::MemoryPartitions;

/// Everything the oracle recomputes.
#[derive(Clone, Debug, Default)]
pub struct OracleResult {
    /// Final KPI records (version 0, `is_final`), sorted by [`KpiRecord::key`].
    pub final_kpis: Vec<KpiRecord>,
    /// Deviations sorted by id (then event time); summary and evidence are minimal, detected_at 0.
    pub deviations: Vec<Deviation>,
    /// `(order_id, now, risk_ppm)`, sorted.
    pub risk_scores: Vec<(String, i64, i64)>,
    pub late: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// Events decoded and not late (duplicates included).
    pub accepted: u64,
    /// `(partition, offset, reason)` of every dead-lettered event, in partition/offset order.
    pub dead_letters: Vec<(u32, u64, String)>,
    /// `(partition, offset, event_id, order_id, ts)` of every late event.
    pub late_events: Vec<(u32, u64, String, String, i64)>,
    /// Every fact (order facts and risk facts), for diagnostics.
    pub facts: Vec<Fact>,
}

impl OracleResult {
    /// The final KPI record with this key, if any.
    pub fn kpi(&self, key: &str) -> Option<&KpiRecord> {
        self.final_kpis.iter().find(|k| k.key() == key)
    }
    /// The deviation with this id, if any.
    pub fn deviation(&self, id: &str) -> Option<&Deviation> {
        self.deviations.iter().find(|d| d.id == id)
    }
}

/// `floor(ts / tick_ms)`, 0 for `ts <= 0`.
pub fn tick_of(spec: &PipelineSpec, ts: i64) -> i64 {
    if ts <= 0 {
        0
    } else {
        ts / spec.time.tick.ms()
    }
}

/// Recomputes every output of the job from the partitioned input.
pub fn recompute(spec: &PipelineSpec, input: &MemoryPartitions) -> OracleResult {
    let ing = ingest::ingest(spec, input);
    let sim = orders::simulate(spec, &ing.accepted);
    let scored = risk::score_all(spec, &sim.facts, &sim.risk_tracks);

    let mut facts = sim.facts;
    facts.extend(scored.risk_facts);
    let (final_kpis, kpi_deviations) = kpis::aggregate(spec, &facts, &sim.backlog_changes);

    let mut deviations = sim.deviations;
    deviations.extend(scored.deviations);
    deviations.extend(kpi_deviations);
    deviations.sort_by(|a, b| (&a.id, a.event_time).cmp(&(&b.id, b.event_time)));

    OracleResult {
        final_kpis,
        deviations,
        risk_scores: scored.scores,
        late: ing.late_events.len() as u64,
        duplicates: sim.duplicates,
        dead_lettered: ing.dead_letters.len() as u64,
        accepted: ing.accepted.len() as u64,
        dead_letters: ing.dead_letters,
        late_events: ing.late_events,
        facts,
    }
}
