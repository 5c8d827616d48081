//! Windowed KPI aggregation: per-worker pre-aggregation of facts into cell partials, then the
//! cell operator that merges partials, tracks backlog levels, closes windows on the frontier and
//! fires threshold breaches and anomalies.
//!
//! In: [`Fact`]s (from the order-state and risk operators) and backlog counts (from differential's
//! `count_total`). Out: [`KpiOutput`]s: KPI records (intermediate versions and the final one per
//! cell) and KPI deviations. Partials are exchanged by series (kpi, dimension set, labels), so a
//! series' windows and its anomaly baseline live on one worker.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};

use crate::config::pipeline::{FactSel, Kpi, Measure, PipelineSpec, Severity};
use crate::dataflow::checkpoint::{merge_schedule, Owner};
use crate::dataflow::kpi_math::{anomaly_z, kpi_status, kpi_value, quantile_rank, status_count};
use crate::dataflow::orders::{BacklogKey, Labels};
use crate::model::facts::{Fact, FactKind};
use crate::model::records::{dims_key, Deviation, DeviationType, KpiRecord, KpiStatus};
use crate::model::time::TickClock;

/// Identity of a KPI cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellKey {
    pub kpi: u16,
    pub dimset: u16,
    pub labels_hash: u64,
    pub window_start: i64,
}

impl CellKey {
    /// Hash of the series (everything but the window), used to route partials.
    pub fn series(&self) -> u64 {
        series_hash(self.kpi, self.dimset, self.labels_hash)
    }
}

pub fn series_hash(kpi: u16, dimset: u16, labels_hash: u64) -> u64 {
    let mut h = FxHasher::default();
    (kpi, dimset, labels_hash).hash(&mut h);
    h.finish()
}

pub fn labels_hash(labels: &Labels) -> u64 {
    let mut h = FxHasher::default();
    for l in labels {
        l.as_str().hash(&mut h);
    }
    h.finish()
}

/// A partial aggregate of one cell.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    pub num: i64,
    pub den: i64,
    /// Raw values, for quantiles only.
    pub values: Vec<i64>,
}

/// Input of the cell operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KpiInput {
    Partial(CellKey, Labels, Partial),
    /// A change of differential's backlog count: `(key, count)` at `tick` with `diff`.
    Level(BacklogKey, i64, u64, isize),
}

impl KpiInput {
    pub fn route(&self) -> u64 {
        match self {
            KpiInput::Partial(k, _, _) => k.series(),
            KpiInput::Level((kpi, dimset, labels), _, _, _) => {
                series_hash(*kpi, *dimset, labels_hash(labels))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KpiOutput {
    Record(KpiRecord),
    Deviation(Box<Deviation>),
}

fn selects(sel: &FactSel, f: &Fact) -> bool {
    sel.kind == f.kind && sel.flags.iter().all(|(flag, want)| f.flag(*flag) == *want)
}

/// Per-worker pre-aggregation of facts into partials, keyed by cell.
pub struct Preaggregator {
    spec: std::sync::Arc<PipelineSpec>,
    /// KPI indices interested in each fact kind.
    by_kind: Vec<Vec<u16>>,
    cells: FxHashMap<CellKey, (Labels, Partial)>,
}

impl Preaggregator {
    pub fn new(spec: std::sync::Arc<PipelineSpec>) -> Self {
        let mut by_kind = vec![Vec::new(); FactKind::ALL.len()];
        for (i, k) in spec.compiled.iter().enumerate() {
            let kinds: Vec<FactKind> = match &k.measure {
                Measure::Count { sel }
                | Measure::Rate { sel, .. }
                | Measure::Mean { sel, .. }
                | Measure::Sum { sel, .. }
                | Measure::Quantile { sel, .. } => vec![sel.kind],
                Measure::Ratio { num, den } => vec![num.kind, den.kind],
                Measure::Gauge => vec![],
            };
            for kind in kinds {
                if !by_kind[kind as usize].contains(&(i as u16)) {
                    by_kind[kind as usize].push(i as u16);
                }
            }
        }
        Preaggregator {
            spec,
            by_kind,
            cells: FxHashMap::default(),
        }
    }

    pub fn add(&mut self, f: &Fact) {
        for &ki in &self.by_kind[f.kind as usize] {
            let kpi: &Kpi = &self.spec.compiled[ki as usize];
            let (num, den, value) = match &kpi.measure {
                Measure::Count { sel } => {
                    if !selects(sel, f) {
                        continue;
                    }
                    (1, 1, None)
                }
                Measure::Rate { sel, hit } => {
                    if !selects(sel, f) {
                        continue;
                    }
                    (
                        hit.iter().all(|(flag, want)| f.flag(*flag) == *want) as i64,
                        1,
                        None,
                    )
                }
                Measure::Ratio { num, den } => {
                    let (n, d) = (selects(num, f) as i64, selects(den, f) as i64);
                    if n + d == 0 {
                        continue;
                    }
                    (n, d, None)
                }
                Measure::Mean { sel, field } | Measure::Sum { sel, field } => match f.field(*field)
                {
                    Some(v) if selects(sel, f) => (v, 1, None),
                    _ => continue,
                },
                Measure::Quantile { sel, field, .. } => match f.field(*field) {
                    Some(v) if selects(sel, f) => (0, 1, Some(v)),
                    _ => continue,
                },
                Measure::Gauge => continue,
            };
            for (si, set) in kpi.dimension_sets.iter().enumerate() {
                let labels: Option<Labels> = set.iter().map(|d| f.dims.get(*d).cloned()).collect();
                let Some(labels) = labels else { continue };
                let lh = labels_hash(&labels);
                for window_start in kpi.window.windows_of(f.ts) {
                    let key = CellKey {
                        kpi: ki,
                        dimset: si as u16,
                        labels_hash: lh,
                        window_start,
                    };
                    let entry = self
                        .cells
                        .entry(key)
                        .or_insert_with(|| (labels.clone(), Partial::default()));
                    entry.1.num += num;
                    entry.1.den += den;
                    if let Some(v) = value {
                        entry.1.values.push(v);
                    }
                }
            }
        }
    }

    /// Takes the accumulated partials.
    pub fn drain(&mut self) -> impl Iterator<Item = KpiInput> + '_ {
        self.cells
            .drain()
            .map(|(k, (labels, p))| KpiInput::Partial(k, labels, p))
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Cell {
    labels: Labels,
    num: i64,
    den: i64,
    values: Vec<i64>,
    version: u32,
    dirty: bool,
}

/// The part of a [`CellState`] a checkpoint keeps: open windows, their closing schedule, backlog
/// levels and anomaly baselines. Pending level changes are empty at a cut.
#[derive(Serialize, Deserialize)]
pub struct CellStateSnapshot<'a> {
    cells: Cow<'a, FxHashMap<CellKey, Cell>>,
    closing: Cow<'a, BTreeMap<u64, Vec<CellKey>>>,
    levels: Cow<'a, FxHashMap<(u16, u16, u64), i64>>,
    history: Cow<'a, FxHashMap<(u16, u16, u64), VecDeque<f64>>>,
}

/// Per-worker state of the cell operator.
pub struct CellState {
    spec: std::sync::Arc<PipelineSpec>,
    clock: TickClock,
    cells: FxHashMap<CellKey, Cell>,
    closing: BTreeMap<u64, Vec<CellKey>>,
    levels_pending: BTreeMap<u64, Vec<(BacklogKey, i64, isize)>>,
    levels: FxHashMap<(u16, u16, u64), i64>,
    history: FxHashMap<(u16, u16, u64), VecDeque<f64>>,
    anomaly_kpis: Vec<bool>,
}

impl CellState {
    /// Rates from now on with `spec` (same KPIs, changed thresholds).
    pub fn set_spec(&mut self, spec: std::sync::Arc<PipelineSpec>) {
        self.spec = spec;
    }

    pub fn new(spec: std::sync::Arc<PipelineSpec>) -> Self {
        let clock = TickClock {
            tick_ms: spec.time.tick.ms(),
        };
        let anomaly_kpis = spec
            .compiled
            .iter()
            .map(|k| {
                spec.deviations.anomaly.enabled && spec.deviations.anomaly.kpis.contains(&k.name)
            })
            .collect();
        CellState {
            spec,
            clock,
            cells: FxHashMap::default(),
            closing: BTreeMap::new(),
            levels_pending: BTreeMap::new(),
            levels: FxHashMap::default(),
            history: FxHashMap::default(),
            anomaly_kpis,
        }
    }

    /// Entry counts for the state gauges.
    pub fn measure(&self, sizes: &mut crate::dataflow::state_gauges::StateSizes) {
        sizes.set("kpi_cells", self.cells.len());
        sizes.set("kpi_closing", self.closing.values().map(Vec::len).sum());
        sizes.set("kpi_levels", self.levels.len());
        sizes.set("kpi_series_baselines", self.history.len());
        sizes.set(
            "kpi_baseline_values",
            self.history.values().map(VecDeque::len).sum(),
        );
    }

    pub fn snapshot(&self) -> CellStateSnapshot<'_> {
        debug_assert!(
            self.levels_pending.is_empty(),
            "level changes pending at a cut"
        );
        CellStateSnapshot {
            cells: Cow::Borrowed(&self.cells),
            closing: Cow::Borrowed(&self.closing),
            levels: Cow::Borrowed(&self.levels),
            history: Cow::Borrowed(&self.history),
        }
    }

    /// Adds the series of a saved snapshot that `owner` owns (open windows, their closing
    /// schedule, backlog levels and anomaly baselines) to a state being restored.
    pub fn merge_restored(&mut self, snapshot: CellStateSnapshot, owner: Owner) {
        let mine =
            |&(kpi, dimset, labels): &(u16, u16, u64)| owner.owns(series_hash(kpi, dimset, labels));
        self.cells.extend(
            snapshot
                .cells
                .into_owned()
                .into_iter()
                .filter(|(key, _)| owner.owns(key.series())),
        );
        merge_schedule(&mut self.closing, snapshot.closing.into_owned(), |k| {
            owner.owns(k.series())
        });
        self.levels.extend(
            snapshot
                .levels
                .into_owned()
                .into_iter()
                .filter(|(k, _)| mine(k)),
        );
        self.history.extend(
            snapshot
                .history
                .into_owned()
                .into_iter()
                .filter(|(k, _)| mine(k)),
        );
    }

    fn cell(&mut self, key: CellKey, labels: &Labels) -> &mut Cell {
        let kpi = &self.spec.compiled[key.kpi as usize];
        let clock = self.clock;
        let closing = &mut self.closing;
        self.cells.entry(key).or_insert_with(|| {
            let end = key.window_start + kpi.window.size.ms();
            closing.entry(clock.tick_of(end)).or_default().push(key);
            Cell {
                labels: labels.clone(),
                num: 0,
                den: 0,
                values: Vec::new(),
                version: 0,
                dirty: false,
            }
        })
    }

    pub fn ingest(&mut self, input: KpiInput) {
        match input {
            KpiInput::Partial(key, labels, p) => {
                let c = self.cell(key, &labels);
                c.num += p.num;
                c.den += p.den;
                c.values.extend_from_slice(&p.values);
                c.dirty = true;
            }
            KpiInput::Level(key, count, tick, diff) => self
                .levels_pending
                .entry(tick)
                .or_default()
                .push((key, count, diff)),
        }
    }

    /// Applies backlog changes and closes windows below `frontier` (all, if `None`); with
    /// `intermediate`, also emits a new version of every changed open cell.
    pub fn advance(&mut self, frontier: Option<u64>, intermediate: bool, out: &mut Vec<KpiOutput>) {
        let bound = frontier.unwrap_or(u64::MAX);
        while let Some((&tick, _)) = self.levels_pending.first_key_value() {
            if tick >= bound {
                break;
            }
            let changes = self.levels_pending.remove(&tick).expect("present");
            let mut new_levels: BTreeMap<(u16, u16, u64), (Labels, i64)> = BTreeMap::new();
            for ((kpi, dimset, labels), count, diff) in changes {
                let series = (kpi, dimset, labels_hash(&labels));
                let e = new_levels.entry(series).or_insert((labels, 0));
                if diff > 0 {
                    e.1 = count;
                }
            }
            for (series, (labels, level)) in new_levels {
                let old = self.levels.get(&series).copied().unwrap_or(0);
                if old == level {
                    continue;
                }
                if level == 0 {
                    self.levels.remove(&series);
                } else {
                    self.levels.insert(series, level);
                }
                let kpi = &self.spec.compiled[series.0 as usize];
                let size = kpi.window.size.ms();
                let window_start = self.clock.start_of(tick).div_euclid(size) * size;
                let key = CellKey {
                    kpi: series.0,
                    dimset: series.1,
                    labels_hash: series.2,
                    window_start,
                };
                let c = self.cell(key, &labels);
                c.num = level;
                c.den = 1;
                c.dirty = true;
            }
        }
        while let Some((&close_tick, _)) = self.closing.first_key_value() {
            if close_tick > bound {
                break;
            }
            let mut keys = self.closing.remove(&close_tick).expect("present");
            keys.sort();
            for key in keys {
                if let Some(cell) = self.cells.remove(&key) {
                    self.finish(key, cell, out);
                }
            }
        }
        if intermediate {
            let spec = self.spec.clone();
            for (key, cell) in self.cells.iter_mut().filter(|(_, c)| c.dirty) {
                cell.dirty = false;
                cell.version += 1;
                out.push(KpiOutput::Record(record(
                    &spec.compiled[key.kpi as usize],
                    key,
                    cell,
                    false,
                )));
            }
        }
    }

    fn finish(&mut self, key: CellKey, mut cell: Cell, out: &mut Vec<KpiOutput>) {
        let spec = self.spec.clone();
        let kpi = &spec.compiled[key.kpi as usize];
        cell.version += 1;
        let rec = record(kpi, &key, &mut cell, true);
        if spec.deviations.kpi_breach.enabled
            && matches!(rec.status, KpiStatus::Warn | KpiStatus::Critical)
        {
            let th = kpi.thresholds.expect("rated implies thresholds");
            let severity = if rec.status == KpiStatus::Critical {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let mut evidence = BTreeMap::new();
            evidence.insert("value".into(), rec.value.unwrap_or(f64::NAN));
            evidence.insert("warn".into(), th.warn);
            evidence.insert("critical".into(), th.critical);
            evidence.insert("count".into(), rec.denominator as f64);
            out.push(KpiOutput::Deviation(Box::new(kpi_deviation(
                DeviationType::KpiThresholdBreach,
                severity,
                kpi,
                &rec,
                evidence,
            ))));
        }
        if self.anomaly_kpis[key.kpi as usize] && rec.status != KpiStatus::Unrated {
            if let Some(v) = rec.value {
                let rule = &spec.deviations.anomaly;
                let series = (key.kpi, key.dimset, key.labels_hash);
                let history = self.history.entry(series).or_default();
                let direction = kpi.thresholds.expect("validated").direction;
                if let Some(z) = anomaly_z(history.make_contiguous(), v, direction, rule) {
                    let n = history.len().min(rule.baseline_windows);
                    let base = history.iter().rev().take(n).sum::<f64>() / n as f64;
                    let mut evidence = BTreeMap::new();
                    evidence.insert("value".into(), v);
                    evidence.insert("baseline_mean".into(), base);
                    evidence.insert("z".into(), z);
                    out.push(KpiOutput::Deviation(Box::new(kpi_deviation(
                        DeviationType::KpiAnomaly,
                        rule.severity,
                        kpi,
                        &rec,
                        evidence,
                    ))));
                }
                history.push_back(v);
                while history.len() > rule.baseline_windows {
                    history.pop_front();
                }
            }
        }
        out.push(KpiOutput::Record(rec));
    }
}

fn record(kpi: &Kpi, key: &CellKey, cell: &mut Cell, is_final: bool) -> KpiRecord {
    let (numerator, denominator) = match &kpi.measure {
        Measure::Quantile { q, .. } => {
            if cell.values.is_empty() {
                (0, 0)
            } else {
                cell.values.sort_unstable();
                (
                    cell.values[quantile_rank(*q, cell.values.len()) - 1],
                    cell.values.len() as i64,
                )
            }
        }
        _ => (cell.num, cell.den),
    };
    let value = kpi_value(&kpi.measure, numerator, denominator);
    let set = &kpi.dimension_sets[key.dimset as usize];
    KpiRecord {
        kpi: kpi.name.clone(),
        dims: set
            .iter()
            .zip(cell.labels.iter())
            .map(|(d, l)| (d.as_str().to_string(), l.to_string()))
            .collect(),
        window_start: key.window_start,
        window_end: key.window_start + kpi.window.size.ms(),
        value,
        numerator,
        denominator,
        status: kpi_status(kpi, value, status_count(&kpi.measure, denominator)),
        version: cell.version,
        is_final,
    }
}

fn kpi_deviation(
    kind: DeviationType,
    severity: Severity,
    kpi: &Kpi,
    rec: &KpiRecord,
    evidence: crate::model::records::Evidence,
) -> Deviation {
    let dims = dims_key(&rec.dims);
    let scope = if dims.is_empty() {
        "globally".to_string()
    } else {
        format!("for {dims}")
    };
    let what = match kind {
        DeviationType::KpiAnomaly => "is anomalous",
        _ => "breached its threshold",
    };
    let mut context: crate::model::records::Context =
        rec.dims.iter().map(|(k, v)| (k.into(), v.into())).collect();
    context.insert("kpi".into(), kpi.name.as_str().into());
    Deviation {
        id: format!(
            "{}:{}:{}:{}",
            kind.as_str(),
            kpi.name,
            dims,
            rec.window_start
        ),
        kind,
        severity,
        order_id: None,
        context,
        evidence,
        summary: format!(
            "{} {what} {scope}: {} in window starting {}",
            kpi.name,
            rec.value
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "n/a".into()),
            crate::model::time::format_rfc3339(rec.window_start)
        ),
        event_time: rec.window_end,
        detected_at: crate::dataflow::wall_clock_ms(),
    }
}
