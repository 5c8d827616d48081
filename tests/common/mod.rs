//! Shared test helpers: run the dataflow and the oracle on the same input, put both results in one
//! shape ([`Outcome`]), and compare them with a readable diff of the first mismatches.
//!
//! In: a spec and a `MemoryPartitions`. Out: `Outcome`s and panics that list what differs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::{run_job, JobOptions};
use fulfillment_ai::model::{Deviation, DeviationType, KpiRecord};
use fulfillment_ai::sources::memory::MemoryPartitions;

use crate::oracle::OracleResult;

/// Mismatches listed in a failure message.
pub const SHOWN: usize = 20;

/// The comparable part of a job's (or the oracle's) result.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub label: String,
    pub final_kpis: Vec<KpiRecord>,
    pub deviations: Vec<Deviation>,
    /// `(order_id, now, risk_ppm)`, sorted; empty unless collected.
    pub risk_scores: Vec<(String, i64, i64)>,
    pub late: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// `(partition, offset, reason)`, sorted.
    pub dead_letters: Vec<(u32, u64, String)>,
    /// `(partition, offset, event_id, order_id, ts)`, sorted.
    pub late_events: Vec<(u32, u64, String, String, i64)>,
}

impl Outcome {
    pub fn from_oracle(o: &OracleResult) -> Outcome {
        Outcome {
            label: "oracle".into(),
            final_kpis: o.final_kpis.clone(),
            deviations: o.deviations.clone(),
            risk_scores: o.risk_scores.clone(),
            late: o.late,
            duplicates: o.duplicates,
            dead_lettered: o.dead_lettered,
            dead_letters: o.dead_letters.clone(),
            late_events: o.late_events.clone(),
        }
    }

    /// The final record with this key (`kpi|dims|window_start`).
    pub fn kpi(&self, key: &str) -> &KpiRecord {
        self.final_kpis
            .iter()
            .find(|k| k.key() == key)
            .unwrap_or_else(|| {
                let keys: Vec<String> = self
                    .final_kpis
                    .iter()
                    .map(|k| k.key())
                    .filter(|k| k.starts_with(key.split('|').next().unwrap_or("")))
                    .collect();
                panic!(
                    "{}: no final KPI `{key}`; records of that KPI: {keys:#?}",
                    self.label
                )
            })
    }
    pub fn has_kpi(&self, key: &str) -> bool {
        self.final_kpis.iter().any(|k| k.key() == key)
    }
    /// Final records of one KPI and dims (`k=v,k=v`), in window order.
    pub fn series(&self, kpi: &str, dims: &str) -> Vec<&KpiRecord> {
        let mut v: Vec<&KpiRecord> = self
            .final_kpis
            .iter()
            .filter(|k| k.kpi == kpi && fulfillment_ai::model::records::dims_key(&k.dims) == dims)
            .collect();
        v.sort_by_key(|k| k.window_start);
        v
    }
    pub fn deviation(&self, id: &str) -> &Deviation {
        let matching: Vec<&Deviation> = self.deviations.iter().filter(|d| d.id == id).collect();
        match matching.as_slice() {
            [d] => d,
            [] => panic!(
                "{}: no deviation `{id}`; have: {:#?}",
                self.label,
                self.deviation_ids()
            ),
            many => panic!(
                "{}: deviation `{id}` fired {} times: {many:#?}",
                self.label,
                many.len()
            ),
        }
    }
    pub fn has_deviation(&self, id: &str) -> bool {
        self.deviations.iter().any(|d| d.id == id)
    }
    pub fn deviation_ids(&self) -> Vec<&str> {
        self.deviations.iter().map(|d| d.id.as_str()).collect()
    }
    pub fn deviations_of(&self, kind: DeviationType) -> Vec<&Deviation> {
        self.deviations.iter().filter(|d| d.kind == kind).collect()
    }
    /// Asserts a deviation fired exactly once with this severity and event time.
    pub fn assert_deviation(
        &self,
        id: &str,
        kind: DeviationType,
        severity: Severity,
        event_time: i64,
    ) {
        let d = self.deviation(id);
        assert_eq!(
            (d.kind, d.severity, d.event_time),
            (kind, severity, event_time),
            "{}: deviation `{id}`: {d:#?}",
            self.label
        );
    }
}

/// Runs the dataflow over `input`.
pub fn run_dataflow(
    spec: &PipelineSpec,
    input: &MemoryPartitions,
    workers: usize,
    collect_risk_scores: bool,
) -> Outcome {
    let opts = JobOptions {
        workers,
        collect_risk_scores,
        ..Default::default()
    };
    let r = run_job(spec, Arc::new(input.clone()), &opts)
        .unwrap_or_else(|e| panic!("run_job with {workers} workers failed: {e}"));
    let mut risk_scores: Vec<(String, i64, i64)> = r
        .risk_scores
        .iter()
        .map(|s| (s.order_id.clone(), s.now, s.risk_ppm))
        .collect();
    risk_scores.sort();
    let mut dead_letters: Vec<(u32, u64, String)> = r
        .dead_letters
        .iter()
        .map(|d| (d.partition, d.offset, d.reason.clone()))
        .collect();
    dead_letters.sort();
    let mut late_events: Vec<(u32, u64, String, String, i64)> = r
        .late_events
        .iter()
        .map(|l| {
            (
                l.partition,
                l.offset,
                l.event_id.clone(),
                l.order_id.clone(),
                l.ts,
            )
        })
        .collect();
    late_events.sort();
    Outcome {
        label: format!(
            "dataflow ({workers} worker{})",
            if workers == 1 { "" } else { "s" }
        ),
        final_kpis: r.final_kpis,
        deviations: r.deviations,
        risk_scores,
        late: r.counters.late,
        duplicates: r.counters.duplicates,
        dead_lettered: r.counters.dead_lettered,
        dead_letters,
        late_events,
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn kpi_line(k: &KpiRecord) -> String {
    format!(
        "value {:?} num {} den {} status {:?}",
        k.value, k.numerator, k.denominator, k.status
    )
}

/// Differences between two sets of final KPI records, matched by key.
pub fn kpi_diff(expected: &[KpiRecord], actual: &[KpiRecord]) -> Vec<String> {
    let e: BTreeMap<String, &KpiRecord> = expected.iter().map(|k| (k.key(), k)).collect();
    let a: BTreeMap<String, &KpiRecord> = actual.iter().map(|k| (k.key(), k)).collect();
    let mut out = Vec::new();
    if e.len() != expected.len() {
        out.push(format!(
            "expected side has {} records but {} distinct keys",
            expected.len(),
            e.len()
        ));
    }
    if a.len() != actual.len() {
        out.push(format!(
            "actual side has {} records but {} distinct keys",
            actual.len(),
            a.len()
        ));
    }
    for (key, x) in &e {
        match a.get(key) {
            None => out.push(format!("missing   {key}: expected {}", kpi_line(x))),
            Some(y) => {
                let value_ok = match (x.value, y.value) {
                    (Some(p), Some(q)) => close(p, q),
                    (None, None) => true,
                    _ => false,
                };
                if !value_ok
                    || x.numerator != y.numerator
                    || x.denominator != y.denominator
                    || x.status != y.status
                    || x.window_end != y.window_end
                    || !y.is_final
                {
                    out.push(format!(
                        "differs   {key}: expected {} | actual {} (final {})",
                        kpi_line(x),
                        kpi_line(y),
                        y.is_final
                    ));
                }
            }
        }
    }
    for (key, y) in &a {
        if !e.contains_key(key) {
            out.push(format!("unexpected {key}: actual {}", kpi_line(y)));
        }
    }
    out
}

fn dev_tuple(d: &Deviation) -> (String, DeviationType, Severity, Option<String>, i64) {
    (
        d.id.clone(),
        d.kind,
        d.severity,
        d.order_id.clone(),
        d.event_time,
    )
}

/// Differences between two deviation lists on (id, kind, severity, order_id, event_time).
pub fn deviation_diff(expected: &[Deviation], actual: &[Deviation]) -> Vec<String> {
    let mut e: Vec<_> = expected.iter().map(dev_tuple).collect();
    let mut a: Vec<_> = actual.iter().map(dev_tuple).collect();
    e.sort_by(|x, y| (&x.0, x.4).cmp(&(&y.0, y.4)));
    a.sort_by(|x, y| (&x.0, x.4).cmp(&(&y.0, y.4)));
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < e.len() || j < a.len() {
        match (e.get(i), a.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 == y.0 => {
                out.push(format!(
                    "differs   {}: expected {:?} {:?} {:?} at {} | actual {:?} {:?} {:?} at {}",
                    x.0, x.1, x.2, x.3, x.4, y.1, y.2, y.3, y.4
                ));
                i += 1;
                j += 1;
            }
            (Some(x), y) if y.is_none_or(|y| (&x.0, x.4) < (&y.0, y.4)) => {
                out.push(format!(
                    "missing   {} ({:?} {:?} at {})",
                    x.0, x.1, x.2, x.4
                ));
                i += 1;
            }
            (_, Some(y)) => {
                out.push(format!(
                    "unexpected {} ({:?} {:?} at {})",
                    y.0, y.1, y.2, y.4
                ));
                j += 1;
            }
            (Some(_), None) | (None, None) => unreachable!(),
        }
    }
    out
}

/// Differences between two sorted lists of displayable items.
pub fn list_diff<T: PartialEq + Ord + std::fmt::Debug>(
    what: &str,
    expected: &[T],
    actual: &[T],
) -> Vec<String> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < actual.len() {
        match (expected.get(i), actual.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), y) if y.is_none_or(|y| x < y) => {
                out.push(format!("missing   {what} {x:?}"));
                i += 1;
            }
            (_, Some(y)) => {
                out.push(format!("unexpected {what} {y:?}"));
                j += 1;
            }
            (Some(_), None) | (None, None) => unreachable!(),
        }
    }
    out
}

/// Every difference between two outcomes (`expected` is normally the oracle).
pub fn outcome_diff(expected: &Outcome, actual: &Outcome, risk: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (what, x, y) in [
        ("late", expected.late, actual.late),
        ("duplicates", expected.duplicates, actual.duplicates),
        (
            "dead_lettered",
            expected.dead_lettered,
            actual.dead_lettered,
        ),
    ] {
        if x != y {
            out.push(format!("counter {what}: expected {x} | actual {y}"));
        }
    }
    out.extend(kpi_diff(&expected.final_kpis, &actual.final_kpis));
    out.extend(deviation_diff(&expected.deviations, &actual.deviations));
    out.extend(list_diff(
        "late event",
        &expected.late_events,
        &actual.late_events,
    ));
    out.extend(list_diff(
        "dead letter",
        &expected.dead_letters,
        &actual.dead_letters,
    ));
    if risk {
        out.extend(list_diff(
            "risk score",
            &expected.risk_scores,
            &actual.risk_scores,
        ));
    }
    out
}

/// Panics with the first [`SHOWN`] differences when `actual` is not `expected`.
pub fn assert_same(expected: &Outcome, actual: &Outcome, risk: bool, context: &str) {
    if let Some(msg) = difference_report(expected, actual, risk, context) {
        panic!("{msg}");
    }
}

/// The first [`SHOWN`] differences between two outcomes as a message, or `None` when equal.
pub fn difference_report(
    expected: &Outcome,
    actual: &Outcome,
    risk: bool,
    context: &str,
) -> Option<String> {
    let diff = outcome_diff(expected, actual, risk);
    if diff.is_empty() {
        return None;
    }
    let mut msg = format!(
        "{context}: {} differs from {} in {} places ({} vs {} final KPIs, {} vs {} deviations); first {}:\n",
        actual.label,
        expected.label,
        diff.len(),
        expected.final_kpis.len(),
        actual.final_kpis.len(),
        expected.deviations.len(),
        actual.deviations.len(),
        SHOWN.min(diff.len())
    );
    for line in diff.iter().take(SHOWN) {
        let _ = writeln!(msg, "  {line}");
    }
    Some(msg)
}

/// A YAML value from text.
pub fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("bad YAML `{text}`: {e}"))
}

/// Sets `path` (`a.b.c`; keys may contain spaces) in a YAML mapping, creating mappings on the way.
pub fn set(v: &mut serde_yaml::Value, path: &str, value: serde_yaml::Value) {
    let mut cur = v;
    for key in path.split('.') {
        let map = cur
            .as_mapping_mut()
            .unwrap_or_else(|| panic!("`{path}`: `{key}` is not inside a mapping"));
        cur = map
            .entry(serde_yaml::Value::from(key))
            .or_insert(serde_yaml::Value::Mapping(Default::default()));
    }
    *cur = value;
}

/// The KPI entries of a spec document.
pub fn kpis_mut(v: &mut serde_yaml::Value) -> &mut Vec<serde_yaml::Value> {
    v.get_mut("kpis")
        .and_then(|k| k.as_sequence_mut())
        .expect("spec has a kpis list")
}

/// The shipped `pipelines/fulfillment.yaml`, edited as a YAML document, then parsed and validated
/// by `PipelineSpec::parse`.
pub fn spec_with(edit: impl FnOnce(&mut serde_yaml::Value)) -> PipelineSpec {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/fulfillment.yaml"
    ))
    .expect("read pipelines/fulfillment.yaml");
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("pipelines/fulfillment.yaml is YAML");
    edit(&mut doc);
    let text = serde_yaml::to_string(&doc).expect("serialise spec");
    PipelineSpec::parse(&text, "test spec").unwrap_or_else(|e| panic!("test spec invalid: {e}"))
}

/// The shipped spec with every number the hand-computed tests rely on pinned (so edits of the
/// shipped values do not silently change them): 1m ticks, 30m out-of-orderness, 2h lateness,
/// 4 partitions; service levels (ship within / transit) Same Day 1d/1d, First Class 3d/2d, Second
/// Class 4d/3d, Standard Class 6d/5d, default 2d/4d; delivery grace 2h; gap factor 1.5; refund
/// critical at 500; anomaly baseline 7, min 4, z 3, min_std 0.02 on on_time_rate and
/// payment_failure_rate; the risk model as shipped at first; retention 7d finished, 60d open.
pub fn pinned_spec(extra: impl FnOnce(&mut serde_yaml::Value)) -> PipelineSpec {
    spec_with(|v| {
        set(v, "time", yaml("{tick: 1m, out_of_orderness: 30m, allowed_lateness: 2h, idle_timeout: 30s, partitions: 4}"));
        set(
            v,
            "service_levels",
            yaml(
                "{default: {ship_within: 2d, transit: 4d}, ship_modes: {Same Day: {ship_within: 1d, transit: 1d}, \
                 First Class: {ship_within: 3d, transit: 2d}, Second Class: {ship_within: 4d, transit: 3d}, \
                 Standard Class: {ship_within: 6d, transit: 5d}}}",
            ),
        );
        set(v, "deviations.sla_delivery.grace", yaml("2h"));
        set(v, "deviations.fulfillment_gap.transit_factor", yaml("1.5"));
        set(
            v,
            "deviations.refund_requested.critical_amount",
            yaml("500"),
        );
        set(
            v,
            "deviations.anomaly",
            yaml("{severity: warning, kpis: [on_time_rate, payment_failure_rate], baseline_windows: 7, min_baseline: 4, z: 3.0, min_std: 0.02}"),
        );
        // bias = logit(prior) and no overdue floor: with no route history the score is
        // sigmoid(logit(0.1) + slack term), the numbers the hand-computed risk tests use.
        set(
            v,
            "risk",
            yaml(
                "{prior_late_rate: 0.1, prior_weight: 20, warn: 0.5, critical: 0.8, weights: {bias: -2.197224577336219, \
                 route_logit: 1.0, slack: 2.5, slack_scale: 1d, exception: 1.2, payment_failed: 1.0, overdue_floor: 0.0}}",
            ),
        );
        set(v, "retention", yaml("{finished: 7d, idle_open: 60d}"));
        extra(v);
    })
}

/// Sets `min_count` of every KPI with thresholds.
pub fn set_min_count(v: &mut serde_yaml::Value, min_count: u64) {
    for k in kpis_mut(v) {
        if let Some(th) = k.get_mut("thresholds").and_then(|t| t.as_mapping_mut()) {
            th.insert("min_count".into(), min_count.into());
        }
    }
}

/// Summary counts of deviations by type, for messages.
pub fn deviation_counts(devs: &[Deviation]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for d in devs {
        *m.entry(d.kind.as_str()).or_default() += 1;
    }
    m
}

/// Static data of a test order.
#[derive(Clone, Debug)]
pub struct OrderData {
    pub region: String,
    pub ship_mode: String,
    pub warehouse: String,
    pub segment: String,
    pub qty: Option<u32>,
    pub amount: f64,
}

impl Default for OrderData {
    fn default() -> Self {
        OrderData {
            region: "West".into(),
            ship_mode: "Standard Class".into(),
            warehouse: "WH-A".into(),
            segment: "Consumer".into(),
            qty: Some(2),
            amount: 100.0,
        }
    }
}

/// One raw test event and its event time (for arranging arrival order).
#[derive(Clone, Debug)]
pub struct Ev {
    pub ts: i64,
    pub line: String,
}

/// An `order_created` line (timestamps as epoch ms).
pub fn created(event_id: &str, order_id: &str, ts: i64, promised: i64, d: &OrderData) -> Ev {
    let qty = d.qty.map(|q| format!(r#","qty":{q}"#)).unwrap_or_default();
    let line = format!(
        r#"{{"v":1,"event_id":"{event_id}","order_id":"{order_id}","type":"order_created","ts":{ts},"customer_id":"c-{order_id}","segment":"{}","region":"{}","ship_mode":"{}","warehouse":"{}"{qty},"amount":{:?},"promised_delivery_ts":{promised}}}"#,
        d.segment, d.region, d.ship_mode, d.warehouse, d.amount
    );
    Ev { ts, line }
}

/// Any other event; `extra` is appended inside the object (e.g. `,"carrier":"UPS"`).
pub fn event(event_id: &str, order_id: &str, kind: &str, ts: i64, extra: &str) -> Ev {
    Ev {
        ts,
        line: format!(
            r#"{{"v":1,"event_id":"{event_id}","order_id":"{order_id}","type":"{kind}","ts":{ts}{extra}}}"#
        ),
    }
}

/// Lines in event-time order (stable for equal times).
pub fn in_ts_order(mut evs: Vec<Ev>) -> Vec<String> {
    evs.sort_by_key(|e| e.ts);
    evs.into_iter().map(|e| e.line).collect()
}
