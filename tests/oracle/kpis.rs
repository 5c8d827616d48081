//! Oracle step 4 (SEMANTICS sections 4 and 6): KPI cells by brute force, backlog gauges, threshold
//! breaches and anomalies.
//!
//! In: every fact (risk facts included) and the backlog level changes. Out: final KPI records sorted
//! by key and the KPI deviations. Each fact's contribution to each cell is collected first and only
//! then folded, so a cell's value never depends on the order facts arrived in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fulfillment_ai::config::pipeline::{FactSel, Kpi, Measure, PipelineSpec, Severity};
use fulfillment_ai::dataflow::kpi_math::{
    anomaly_z, kpi_status, kpi_value, quantile_rank, status_count,
};
use fulfillment_ai::model::facts::{Dimension, Fact};
use fulfillment_ai::model::records::dims_key;
use fulfillment_ai::model::{Deviation, DeviationType, KpiRecord, KpiStatus};

use super::orders::{deviation, BacklogChange};

/// What one fact gives one cell.
#[derive(Clone, Copy, Debug)]
enum Contribution {
    /// A selected fact (count), with whether it is a hit (rate).
    Selected {
        hit: bool,
    },
    Numerator,
    Denominator,
    /// A selected fact's field value (mean, sum, quantile).
    Value(i64),
}

fn selects(sel: &FactSel, f: &Fact) -> bool {
    f.kind == sel.kind && sel.flags.iter().all(|&(flag, want)| f.flag(flag) == want)
}

fn contributions(measure: &Measure, f: &Fact) -> Vec<Contribution> {
    let mut out = Vec::new();
    match measure {
        Measure::Count { sel } => {
            if selects(sel, f) {
                out.push(Contribution::Selected { hit: false });
            }
        }
        Measure::Rate { sel, hit } => {
            if selects(sel, f) {
                out.push(Contribution::Selected {
                    hit: hit.iter().all(|&(flag, want)| f.flag(flag) == want),
                });
            }
        }
        Measure::Ratio { num, den } => {
            if selects(num, f) {
                out.push(Contribution::Numerator);
            }
            if selects(den, f) {
                out.push(Contribution::Denominator);
            }
        }
        Measure::Mean { sel, field }
        | Measure::Sum { sel, field }
        | Measure::Quantile { sel, field, .. } => {
            // A fact without the measured field is not a measurement of it.
            if let (true, Some(v)) = (selects(sel, f), f.field(*field)) {
                out.push(Contribution::Value(v));
            }
        }
        Measure::Gauge => {}
    }
    out
}

/// `(numerator, denominator)` of a cell from its contributions.
fn fold(measure: &Measure, cs: &[Contribution]) -> (i64, i64) {
    let values = || {
        cs.iter().filter_map(|c| {
            if let Contribution::Value(v) = c {
                Some(*v)
            } else {
                None
            }
        })
    };
    match measure {
        Measure::Count { .. } => (cs.len() as i64, cs.len() as i64),
        Measure::Rate { .. } => {
            let hits = cs
                .iter()
                .filter(|c| matches!(c, Contribution::Selected { hit: true }))
                .count();
            (hits as i64, cs.len() as i64)
        }
        Measure::Ratio { .. } => {
            let num = cs
                .iter()
                .filter(|c| matches!(c, Contribution::Numerator))
                .count();
            let den = cs
                .iter()
                .filter(|c| matches!(c, Contribution::Denominator))
                .count();
            (num as i64, den as i64)
        }
        Measure::Mean { .. } | Measure::Sum { .. } => (values().sum(), values().count() as i64),
        Measure::Quantile { q, .. } => {
            let mut v: Vec<i64> = values().collect();
            v.sort_unstable();
            let rank = quantile_rank(*q, v.len());
            (v[rank - 1], v.len() as i64)
        }
        Measure::Gauge => unreachable!("gauges are not folded from facts"),
    }
}

fn dim_name(d: Dimension) -> String {
    d.as_str().to_string()
}

/// The fact's values for a dimension set, when all are known.
fn dims_values(
    set: &[Dimension],
    dims: &fulfillment_ai::model::facts::Dims,
) -> Option<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for &d in set {
        m.insert(dim_name(d), dims.get(d)?.to_string());
    }
    Some(m)
}

fn record(
    kpi: &Kpi,
    dims: BTreeMap<String, String>,
    start: i64,
    numerator: i64,
    denominator: i64,
) -> KpiRecord {
    let value = kpi_value(&kpi.measure, numerator, denominator);
    KpiRecord {
        kpi: kpi.name.clone(),
        dims,
        window_start: start,
        window_end: start + kpi.window.size.ms(),
        value,
        numerator,
        denominator,
        status: kpi_status(kpi, value, status_count(&kpi.measure, denominator)),
        version: 0,
        is_final: true,
    }
}

fn fact_cells(kpi: &Kpi, facts: &[Fact]) -> Vec<KpiRecord> {
    let mut cells: HashMap<(BTreeMap<String, String>, i64), Vec<Contribution>> = HashMap::new();
    for f in facts {
        let cs = contributions(&kpi.measure, f);
        if cs.is_empty() {
            continue;
        }
        for set in &kpi.dimension_sets {
            let Some(dims) = dims_values(set, &f.dims) else {
                continue;
            };
            for start in kpi.window.windows_of(f.ts) {
                cells
                    .entry((dims.clone(), start))
                    .or_default()
                    .extend_from_slice(&cs);
            }
        }
    }
    cells
        .into_iter()
        .map(|((dims, start), cs)| {
            let (n, d) = fold(&kpi.measure, &cs);
            record(kpi, dims, start, n, d)
        })
        .collect()
}

fn gauge_cells(spec: &PipelineSpec, kpi: &Kpi, changes: &[BacklogChange]) -> Vec<KpiRecord> {
    let tick_ms = spec.time.tick.ms();
    let size = kpi.window.size.ms();
    let mut out = Vec::new();
    for set in &kpi.dimension_sets {
        // Net change per (dims values, tick).
        let mut deltas: BTreeMap<BTreeMap<String, String>, BTreeMap<i64, i64>> = BTreeMap::new();
        for c in changes {
            let Some(dims) = dims_values(set, &c.dims) else {
                continue;
            };
            *deltas.entry(dims).or_default().entry(c.tick).or_default() += c.delta;
        }
        for (dims, by_tick) in deltas {
            // Windows in which the level changed at some tick.
            let windows: BTreeSet<i64> = by_tick
                .iter()
                .filter(|(_, d)| **d != 0)
                .map(|(t, _)| (t * tick_ms).div_euclid(size) * size)
                .collect();
            for start in windows {
                let last_tick = (start + size) / tick_ms - 1;
                let level: i64 = by_tick.range(..=last_tick).map(|(_, d)| d).sum();
                out.push(record(kpi, dims.clone(), start, level, 1));
            }
        }
    }
    out
}

/// Final records of every KPI (sorted by key) and the breach and anomaly deviations.
pub fn aggregate(
    spec: &PipelineSpec,
    facts: &[Fact],
    backlog: &[BacklogChange],
) -> (Vec<KpiRecord>, Vec<Deviation>) {
    let mut records = Vec::new();
    let mut deviations = Vec::new();
    for kpi in &spec.compiled {
        let mut cells = match kpi.measure {
            Measure::Gauge => gauge_cells(spec, kpi, backlog),
            _ => fact_cells(kpi, facts),
        };
        cells.sort_by(|a, b| (&a.dims, a.window_start).cmp(&(&b.dims, b.window_start)));
        if spec.deviations.kpi_breach.enabled {
            for c in &cells {
                let severity = match c.status {
                    KpiStatus::Warn => Severity::Warning,
                    KpiStatus::Critical => Severity::Critical,
                    _ => continue,
                };
                let id = format!(
                    "kpi_threshold_breach:{}:{}:{}",
                    kpi.name,
                    dims_key(&c.dims),
                    c.window_start
                );
                deviations.push(deviation(
                    id,
                    DeviationType::KpiThresholdBreach,
                    severity,
                    None,
                    c.dims.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                    c.window_end,
                ));
            }
        }
        let rule = &spec.deviations.anomaly;
        if rule.enabled && rule.kpis.contains(&kpi.name) {
            let direction = kpi
                .thresholds
                .expect("anomaly KPIs have thresholds")
                .direction;
            // Cells are sorted by (dims, window start): each series is a run, in window order.
            let mut history: Vec<f64> = Vec::new();
            let mut series: Option<&BTreeMap<String, String>> = None;
            for c in &cells {
                if series != Some(&c.dims) {
                    series = Some(&c.dims);
                    history.clear();
                }
                // Only rated values (enough facts) are judged and form the history.
                let (Some(v), false) = (c.value, c.status == KpiStatus::Unrated) else {
                    continue;
                };
                if anomaly_z(&history, v, direction, rule).is_some() {
                    let id = format!(
                        "kpi_anomaly:{}:{}:{}",
                        kpi.name,
                        dims_key(&c.dims),
                        c.window_start
                    );
                    deviations.push(deviation(
                        id,
                        DeviationType::KpiAnomaly,
                        rule.severity,
                        None,
                        c.dims.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                        c.window_end,
                    ));
                }
                history.push(v);
            }
        }
        records.extend(cells);
    }
    records.sort_by_key(|r| r.key());
    (records, deviations)
}
