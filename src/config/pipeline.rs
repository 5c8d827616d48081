//! The declarative pipeline spec (`pipelines/*.yaml`): event-time settings, service levels per ship
//! mode, the KPI catalog, deviation rules and the risk model.
//!
//! In: YAML text and its file name. Out: a validated [`PipelineSpec`] whose KPIs are compiled to
//! [`Kpi`]s the dataflow can evaluate, or a [`SpecError`] naming the file, the path inside it and the
//! reason. Adding a KPI of an existing kind (a new predicate, field, dimension set or window) is a
//! YAML change only.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::duration::Duration;
use crate::model::facts::{Dimension, FactField, FactFlag, FactKind};

/// A configuration error: which file, where in it, and why.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{file}: {path}: {reason}")]
pub struct SpecError {
    pub file: String,
    pub path: String,
    pub reason: String,
}

/// Reads a configuration file; a failure names the file. Returns the text and the file's name.
pub fn read_config_file(path: &std::path::Path) -> Result<(String, String), SpecError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(e) => Err(SpecError {
            file,
            path: "(file)".into(),
            reason: e.to_string(),
        }),
    }
}

/// Deserialises YAML; an error names `file`, the key path inside it, and the reason with the
/// line and column when known.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, SpecError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let location = inner
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        SpecError {
            file: file.into(),
            path: if path == "." { "(root)".into() } else { path },
            reason: format!("{inner}{location}"),
        }
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub version: u32,
    pub time: TimeSpec,
    pub service_levels: ServiceLevels,
    pub kpis: Vec<KpiSpec>,
    pub deviations: DeviationSpec,
    pub risk: RiskSpec,
    pub retention: RetentionSpec,
    /// Compiled KPIs, filled by validation.
    #[serde(skip)]
    pub compiled: Vec<Kpi>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// Width of a timely timestamp in event time. Windows and deadlines resolve to ticks.
    pub tick: Duration,
    /// Bounded out-of-orderness: a partition's watermark trails its largest event time by this.
    pub out_of_orderness: Duration,
    /// Events this far behind the watermark are still accepted; older ones are late.
    pub allowed_lateness: Duration,
    /// A live partition silent for this long (wall clock) stops holding back the watermark.
    pub idle_timeout: Duration,
    /// Logical partitions of replayed sources (Kafka brings its own). Fixed, so results do not
    /// depend on the worker count.
    pub partitions: u32,
    /// Watermark alignment: a worker stops reading a partition whose largest event time is this
    /// far ahead of its slowest live partition's, until that one catches up. Bounds the events
    /// held back by the slowest partition (memory) without changing any result; 0 turns it off.
    #[serde(default = "default_max_partition_drift")]
    pub max_partition_drift: Duration,
    /// Watermark alignment between workers: a worker stops reading while its input frontier is
    /// this far ahead of the slowest other worker of its process. Halves the operators' stash
    /// but idles the worker that waits (BENCHMARKS.md: -6% RSS, -8 to -19% throughput on 2
    /// cores), so it is off (0) unless memory matters more than speed.
    #[serde(default)]
    pub max_worker_drift: Duration,
}

fn default_max_partition_drift() -> Duration {
    Duration(3_600_000)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLevel {
    /// The warehouse should ship within this time of order creation.
    pub ship_within: Duration,
    /// Expected carrier transit time.
    pub transit: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLevels {
    pub default: ServiceLevel,
    #[serde(default)]
    pub ship_modes: BTreeMap<String, ServiceLevel>,
}

impl ServiceLevels {
    pub fn for_mode(&self, ship_mode: &str) -> &ServiceLevel {
        self.ship_modes.get(ship_mode).unwrap_or(&self.default)
    }
}

/// A KPI as written in YAML.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `count`, `rate`, `ratio`, `mean`, `sum`, `quantile` or `gauge`.
    pub aggregation: String,
    /// The fact kind counted (all but `ratio`).
    #[serde(default)]
    pub fact: Option<String>,
    /// Flags that must hold for a fact to be selected (`late`, `!on_time`).
    #[serde(default, rename = "where")]
    pub where_: Vec<String>,
    /// For `rate`: flags of the selected facts that count as hits.
    #[serde(default)]
    pub hit: Vec<String>,
    /// For `mean`, `sum`, `quantile`: the measured field.
    #[serde(default)]
    pub field: Option<String>,
    /// For `quantile`: the quantile in (0, 1].
    #[serde(default)]
    pub q: Option<f64>,
    /// For `ratio`: numerator and denominator selections.
    #[serde(default)]
    pub numerator: Option<Selection>,
    #[serde(default)]
    pub denominator: Option<Selection>,
    /// Dimension sets: `global`, `region`, `region+ship_mode`, ...
    pub dimensions: Vec<String>,
    pub window: WindowSpec,
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
    #[serde(default)]
    pub unit: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub fact: String,
    #[serde(default, rename = "where")]
    pub where_: Vec<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub size: Duration,
    /// Present for sliding windows; must divide `size`.
    #[serde(default)]
    pub slide: Option<Duration>,
}

impl WindowSpec {
    pub fn slide_ms(&self) -> i64 {
        self.slide.unwrap_or(self.size).ms()
    }
    /// Starts of every window containing `ts`, oldest first.
    pub fn windows_of(&self, ts: i64) -> impl Iterator<Item = i64> {
        let size = self.size.ms();
        let slide = self.slide_ms();
        let last = ts.div_euclid(slide) * slide;
        let count = size / slide;
        (0..count).rev().map(move |k| last - k * slide)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Bad when the value rises above the thresholds.
    Above,
    /// Bad when the value falls below the thresholds.
    Below,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub direction: Direction,
    pub warn: f64,
    pub critical: f64,
    /// Windows with fewer selected facts than this never breach.
    #[serde(default)]
    pub min_count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviationSpec {
    pub sla_ship: OrderRule,
    pub sla_delivery: SlaDeliveryRule,
    pub fulfillment_gap: GapRule,
    pub payment_failed: OrderRule,
    pub carrier_exception: OrderRule,
    pub partial_delivery: OrderRule,
    pub refund_requested: RefundRule,
    pub ticket_raised: OrderRule,
    pub predicted_delay: OrderRule,
    pub kpi_breach: ToggleRule,
    pub anomaly: AnomalyRule,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub severity: Severity,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaDeliveryRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub severity: Severity,
    /// Grace after the promised delivery time before the breach fires.
    pub grace: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub severity: Severity,
    /// A shipped order is a gap when not delivered within `transit x transit_factor` of shipping.
    pub transit_factor: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub severity: Severity,
    /// Refunds at or above this amount are critical.
    pub critical_amount: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToggleRule {
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub severity: Severity,
    /// KPIs watched for anomalies (each needs thresholds, whose direction says which way is bad).
    pub kpis: Vec<String>,
    /// Trailing closed windows forming the baseline.
    pub baseline_windows: usize,
    /// Baseline windows needed before anything fires.
    pub min_baseline: usize,
    /// Fire when the value is this many standard deviations off the baseline mean, the bad way.
    pub z: f64,
    /// Floor on the baseline standard deviation, so flat series do not fire on noise.
    pub min_std: f64,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSpec {
    /// Late rate assumed for a route with no history.
    pub prior_late_rate: f64,
    /// Weight of the prior, in deliveries.
    pub prior_weight: f64,
    /// Risk bands: at or above `warn` is a warning, at or above `critical` is critical.
    pub warn: f64,
    pub critical: f64,
    /// Logistic model weights.
    pub weights: RiskWeights,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskWeights {
    pub bias: f64,
    /// Weight of the logit of the route's smoothed late rate.
    pub route_logit: f64,
    /// Weight of (expected remaining time - time left) / scale.
    pub slack: f64,
    /// Scale of the slack term.
    pub slack_scale: Duration,
    /// Per unresolved carrier exception.
    pub exception: f64,
    /// When a payment failure is unresolved.
    pub payment_failed: f64,
    /// An overdue stage (not shipped, or in transit, longer than expected) is assumed to need at
    /// least this fraction of its expected duration still.
    #[serde(default = "default_overdue_floor")]
    pub overdue_floor: f64,
}

fn default_overdue_floor() -> f64 {
    0.25
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// A finished order (delivered, cancelled) is forgotten this long after its last event.
    pub finished: Duration,
    /// An unfinished order is forgotten this long after its last event.
    pub idle_open: Duration,
}

/// How a compiled KPI aggregates facts.
#[derive(Clone, Debug, PartialEq)]
pub enum Measure {
    Count {
        sel: FactSel,
    },
    Rate {
        sel: FactSel,
        hit: Vec<(FactFlag, bool)>,
    },
    Ratio {
        num: FactSel,
        den: FactSel,
    },
    Mean {
        sel: FactSel,
        field: FactField,
    },
    Sum {
        sel: FactSel,
        field: FactField,
    },
    Quantile {
        sel: FactSel,
        field: FactField,
        q: f64,
    },
    /// Level of open, unshipped orders at the window end.
    Gauge,
}

/// A compiled fact selection: kind plus required flags (flag, expected value).
#[derive(Clone, Debug, PartialEq)]
pub struct FactSel {
    pub kind: FactKind,
    pub flags: Vec<(FactFlag, bool)>,
}

/// A compiled KPI.
#[derive(Clone, Debug, PartialEq)]
pub struct Kpi {
    pub name: String,
    pub measure: Measure,
    pub dimension_sets: Vec<Vec<Dimension>>,
    pub window: WindowSpec,
    pub thresholds: Option<Thresholds>,
    pub unit: String,
}

impl PipelineSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<PipelineSpec, SpecError> {
        let (text, file) = read_config_file(path)?;
        Self::parse(&text, &file)
    }

    /// Parses and validates spec text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<PipelineSpec, SpecError> {
        let mut spec: PipelineSpec = parse_yaml(text, file)?;
        spec.validate(file)?;
        Ok(spec)
    }

    /// The spec shipped in `pipelines/fulfillment.yaml`, embedded at build time.
    pub fn builtin() -> PipelineSpec {
        Self::parse(
            include_str!("../../pipelines/fulfillment.yaml"),
            "pipelines/fulfillment.yaml",
        )
        .expect("the shipped pipeline spec is valid")
    }

    pub fn kpi_index(&self, name: &str) -> Option<usize> {
        self.compiled.iter().position(|k| k.name == name)
    }

    fn validate(&mut self, file: &str) -> Result<(), SpecError> {
        let err = |path: String, reason: String| SpecError {
            file: file.into(),
            path,
            reason,
        };
        if self.version != 1 {
            return Err(err(
                "version".into(),
                format!("unsupported spec version {} (expected 1)", self.version),
            ));
        }
        let t = &self.time;
        if t.tick.ms() <= 0 {
            return Err(err("time.tick".into(), "must be positive".into()));
        }
        for (name, d) in [
            ("out_of_orderness", t.out_of_orderness),
            ("allowed_lateness", t.allowed_lateness),
            ("max_partition_drift", t.max_partition_drift),
            ("max_worker_drift", t.max_worker_drift),
        ] {
            if d.ms() < 0 {
                return Err(err(format!("time.{name}"), "must not be negative".into()));
            }
        }
        if t.partitions == 0 || t.partitions > 4096 {
            return Err(err(
                "time.partitions".into(),
                "must be between 1 and 4096".into(),
            ));
        }
        let mut levels: Vec<(String, &ServiceLevel)> = vec![(
            "service_levels.default".into(),
            &self.service_levels.default,
        )];
        for (mode, l) in &self.service_levels.ship_modes {
            levels.push((format!("service_levels.ship_modes.{mode}"), l));
        }
        for (path, l) in levels {
            if l.ship_within.ms() <= 0 || l.transit.ms() <= 0 {
                return Err(err(path, "ship_within and transit must be positive".into()));
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut compiled = Vec::with_capacity(self.kpis.len());
        for (i, k) in self.kpis.iter().enumerate() {
            let at = |field: &str| format!("kpis[{i}].{field}");
            if k.name.is_empty()
                || !k
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(err(
                    at("name"),
                    format!("`{}` must be non-empty snake_case", k.name),
                ));
            }
            if !names.insert(k.name.clone()) {
                return Err(err(at("name"), format!("duplicate KPI name `{}`", k.name)));
            }
            compiled.push(compile_kpi(k, t.tick, &at).map_err(|(p, r)| err(p, r))?);
        }
        let dev = &self.deviations;
        if dev.fulfillment_gap.transit_factor <= 0.0 {
            return Err(err(
                "deviations.fulfillment_gap.transit_factor".into(),
                "must be positive".into(),
            ));
        }
        for (j, name) in dev.anomaly.kpis.iter().enumerate() {
            let path = format!("deviations.anomaly.kpis[{j}]");
            match compiled.iter().find(|k| &k.name == name) {
                None => return Err(err(path, format!("unknown KPI `{name}`"))),
                Some(k) if k.thresholds.is_none() => {
                    return Err(err(
                        path,
                        format!("KPI `{name}` has no thresholds, so no bad direction"),
                    ))
                }
                Some(_) => {}
            }
        }
        if dev.anomaly.baseline_windows == 0
            || dev.anomaly.min_baseline == 0
            || dev.anomaly.min_baseline > dev.anomaly.baseline_windows
        {
            return Err(err(
                "deviations.anomaly.min_baseline".into(),
                "need 1 <= min_baseline <= baseline_windows".into(),
            ));
        }
        let r = &self.risk;
        if !(0.0 < r.prior_late_rate && r.prior_late_rate < 1.0) {
            return Err(err(
                "risk.prior_late_rate".into(),
                "must be in (0, 1)".into(),
            ));
        }
        if !(0.0 < r.warn && r.warn <= r.critical && r.critical <= 1.0) {
            return Err(err(
                "risk.warn".into(),
                "need 0 < warn <= critical <= 1".into(),
            ));
        }
        if r.weights.slack_scale.ms() <= 0 {
            return Err(err(
                "risk.weights.slack_scale".into(),
                "must be positive".into(),
            ));
        }
        if self.retention.finished.ms() < t.allowed_lateness.ms()
            || self.retention.idle_open.ms() < t.allowed_lateness.ms()
        {
            return Err(err(
                "retention".into(),
                "retention must be at least time.allowed_lateness".into(),
            ));
        }
        self.compiled = compiled;
        Ok(())
    }
}

fn compile_kpi(
    k: &KpiSpec,
    tick: Duration,
    at: &dyn Fn(&str) -> String,
) -> Result<Kpi, (String, String)> {
    let fact = |path: &str, name: &Option<String>| -> Result<FactKind, (String, String)> {
        let name = name
            .as_deref()
            .ok_or((at(path), "required for this aggregation".to_string()))?;
        FactKind::parse(name).ok_or((
            at(path),
            format!("unknown fact `{name}` (one of: {})", FactKind::names()),
        ))
    };
    let flags = |path: &str,
                 kind: FactKind,
                 list: &[String]|
     -> Result<Vec<(FactFlag, bool)>, (String, String)> {
        list.iter()
            .map(|w| {
                let (name, want) = match w.strip_prefix('!') {
                    Some(rest) => (rest, false),
                    None => (w.as_str(), true),
                };
                let flag = FactFlag::parse(name).ok_or((
                    at(path),
                    format!("unknown flag `{name}` (one of: {})", FactFlag::names()),
                ))?;
                if !kind.has_flag(flag) {
                    return Err((
                        at(path),
                        format!("fact `{}` has no flag `{name}`", kind.as_str()),
                    ));
                }
                Ok((flag, want))
            })
            .collect()
    };
    let field = |kind: FactKind| -> Result<FactField, (String, String)> {
        let name = k
            .field
            .as_deref()
            .ok_or((at("field"), "required for this aggregation".to_string()))?;
        let f = FactField::parse(name).ok_or((
            at("field"),
            format!("unknown field `{name}` (one of: {})", FactField::names()),
        ))?;
        if !kind.has_field(f) {
            return Err((
                at("field"),
                format!("fact `{}` has no field `{name}`", kind.as_str()),
            ));
        }
        Ok(f)
    };
    let measure = match k.aggregation.as_str() {
        "count" => {
            let kind = fact("fact", &k.fact)?;
            Measure::Count {
                sel: FactSel {
                    kind,
                    flags: flags("where", kind, &k.where_)?,
                },
            }
        }
        "rate" => {
            let kind = fact("fact", &k.fact)?;
            if k.hit.is_empty() {
                return Err((at("hit"), "a rate needs at least one hit flag".into()));
            }
            Measure::Rate {
                sel: FactSel {
                    kind,
                    flags: flags("where", kind, &k.where_)?,
                },
                hit: flags("hit", kind, &k.hit)?,
            }
        }
        "ratio" => {
            let sel = |path: &str, s: &Option<Selection>| -> Result<FactSel, (String, String)> {
                let s = s
                    .as_ref()
                    .ok_or((at(path), "required for a ratio".to_string()))?;
                let kind = fact(&format!("{path}.fact"), &Some(s.fact.clone()))?;
                Ok(FactSel {
                    kind,
                    flags: flags(&format!("{path}.where"), kind, &s.where_)?,
                })
            };
            Measure::Ratio {
                num: sel("numerator", &k.numerator)?,
                den: sel("denominator", &k.denominator)?,
            }
        }
        "mean" | "sum" | "quantile" => {
            let kind = fact("fact", &k.fact)?;
            let sel = FactSel {
                kind,
                flags: flags("where", kind, &k.where_)?,
            };
            let f = field(kind)?;
            match k.aggregation.as_str() {
                "mean" => Measure::Mean { sel, field: f },
                "sum" => Measure::Sum { sel, field: f },
                _ => {
                    let q =
                        k.q.ok_or((at("q"), "required for a quantile".to_string()))?;
                    if !(q > 0.0 && q <= 1.0) {
                        return Err((at("q"), format!("{q} is not in (0, 1]")));
                    }
                    Measure::Quantile { sel, field: f, q }
                }
            }
        }
        "gauge" => {
            if k.fact.as_deref() != Some("backlog") {
                return Err((at("fact"), "a gauge measures the `backlog` fact".into()));
            }
            Measure::Gauge
        }
        other => {
            return Err((
                at("aggregation"),
                format!(
                "unknown aggregation `{other}` (count, rate, ratio, mean, sum, quantile, gauge)"
            ),
            ))
        }
    };
    if k.dimensions.is_empty() {
        return Err((
            at("dimensions"),
            "list at least one dimension set (`global` for none)".into(),
        ));
    }
    let mut dimension_sets = Vec::new();
    for (j, d) in k.dimensions.iter().enumerate() {
        let set = if d == "global" {
            Vec::new()
        } else {
            d.split('+')
                .map(|p| {
                    Dimension::parse(p.trim()).ok_or((
                        at(&format!("dimensions[{j}]")),
                        format!("unknown dimension `{p}` (global, {})", Dimension::names()),
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        if matches!(measure, Measure::Gauge) && set.contains(&Dimension::Carrier) {
            return Err((
                at(&format!("dimensions[{j}]")),
                "unshipped backlog has no carrier".into(),
            ));
        }
        if dimension_sets.contains(&set) {
            return Err((
                at(&format!("dimensions[{j}]")),
                format!("duplicate dimension set `{d}`"),
            ));
        }
        dimension_sets.push(set);
    }
    let w = k.window;
    if w.size.ms() <= 0 || w.size.ms() % tick.ms() != 0 {
        return Err((
            at("window.size"),
            "must be a positive multiple of time.tick".into(),
        ));
    }
    if let Some(slide) = w.slide {
        if matches!(measure, Measure::Gauge) {
            return Err((
                at("window.slide"),
                "a gauge has tumbling windows only".into(),
            ));
        }
        if slide.ms() <= 0 || slide.ms() % tick.ms() != 0 || w.size.ms() % slide.ms() != 0 {
            return Err((
                at("window.slide"),
                "must be a positive multiple of time.tick that divides window.size".into(),
            ));
        }
    }
    if let Some(th) = &k.thresholds {
        let ordered = match th.direction {
            Direction::Above => th.warn <= th.critical,
            Direction::Below => th.warn >= th.critical,
        };
        if !ordered {
            return Err((
                at("thresholds"),
                "critical must be beyond warn in the bad direction".into(),
            ));
        }
    }
    Ok(Kpi {
        name: k.name.clone(),
        measure,
        dimension_sets,
        window: w,
        thresholds: k.thresholds,
        unit: k.unit.clone(),
    })
}
