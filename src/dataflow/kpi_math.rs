//! Pure KPI arithmetic shared by the incremental operators and the batch oracle: display scales,
//! the value of a cell from its integer numerator/denominator, threshold status, nearest-rank
//! quantiles and the anomaly z-score.
//!
//! In: integer aggregates. Out: display values and statuses. Keeping one implementation of this
//! arithmetic makes "incremental equals batch" a statement about the aggregation, not about
//! floating-point evaluation order.

use crate::config::pipeline::{AnomalyRule, Direction, Kpi, Measure};
use crate::model::facts::FactField;
use crate::model::records::KpiStatus;

/// Divisor from a field's base unit to its display unit (ms -> hours, cents -> currency, ppm -> p).
pub fn field_scale(f: FactField) -> f64 {
    match f {
        FactField::DelayMs
        | FactField::OrderToDeliveryMs
        | FactField::TransitMs
        | FactField::OrderToShipMs => 3_600_000.0,
        FactField::AmountCents => 100.0,
        FactField::RiskPpm => 1_000_000.0,
        FactField::Qty => 1.0,
    }
}

/// The displayed value of a cell. Numerator/denominator meaning per measure:
/// count (n, n); rate (hits, selected); ratio (num facts, den facts); mean and sum (sum in base
/// unit, n); quantile (the selected value in base unit, n); gauge (level, 1).
pub fn kpi_value(measure: &Measure, numerator: i64, denominator: i64) -> Option<f64> {
    match measure {
        Measure::Count { .. } | Measure::Gauge => Some(numerator as f64),
        Measure::Rate { .. } | Measure::Ratio { .. } => {
            (denominator > 0).then(|| numerator as f64 / denominator as f64)
        }
        Measure::Mean { field, .. } => {
            (denominator > 0).then(|| numerator as f64 / denominator as f64 / field_scale(*field))
        }
        Measure::Sum { field, .. } => Some(numerator as f64 / field_scale(*field)),
        Measure::Quantile { field, .. } => {
            (denominator > 0).then(|| numerator as f64 / field_scale(*field))
        }
    }
}

/// 1-based nearest rank of quantile `q` among `n` values: `ceil(q * n)`, at least 1.
pub fn quantile_rank(q: f64, n: usize) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n.max(1))
}

/// Threshold status of a value supported by `count` facts (the denominator; 1 for gauges).
pub fn kpi_status(kpi: &Kpi, value: Option<f64>, count: i64) -> KpiStatus {
    let (Some(th), Some(v)) = (kpi.thresholds.as_ref(), value) else {
        return KpiStatus::Unrated;
    };
    if count < th.min_count as i64 {
        return KpiStatus::Unrated;
    }
    let beyond = |level: f64| match th.direction {
        Direction::Above => v >= level,
        Direction::Below => v <= level,
    };
    if beyond(th.critical) {
        KpiStatus::Critical
    } else if beyond(th.warn) {
        KpiStatus::Warn
    } else {
        KpiStatus::Ok
    }
}

/// The count a status is judged on: the denominator, or 1 for gauges.
pub fn status_count(measure: &Measure, denominator: i64) -> i64 {
    match measure {
        Measure::Gauge => 1,
        _ => denominator,
    }
}

/// z-score of `value` against the last `rule.baseline_windows` entries of `history` (oldest
/// first), when at least `rule.min_baseline` exist and the deviation is in the bad direction.
pub fn anomaly_z(
    history: &[f64],
    value: f64,
    direction: Direction,
    rule: &AnomalyRule,
) -> Option<f64> {
    let base = &history[history.len().saturating_sub(rule.baseline_windows)..];
    if base.len() < rule.min_baseline {
        return None;
    }
    let n = base.len() as f64;
    let mean = base.iter().sum::<f64>() / n;
    let var = base.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let z = (value - mean) / var.sqrt().max(rule.min_std);
    let bad = match direction {
        Direction::Above => z >= rule.z,
        Direction::Below => z <= -rule.z,
    };
    bad.then_some(z)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineSpec;

    #[test]
    fn nearest_rank() {
        assert_eq!(quantile_rank(0.95, 20), 19);
        assert_eq!(quantile_rank(0.95, 1), 1);
        assert_eq!(quantile_rank(0.5, 4), 2);
        assert_eq!(quantile_rank(1.0, 7), 7);
    }

    #[test]
    fn status_follows_direction_and_min_count() {
        let spec = PipelineSpec::builtin();
        let on_time = &spec.compiled[spec.kpi_index("on_time_rate").unwrap()];
        assert_eq!(kpi_status(on_time, Some(0.95), 100), KpiStatus::Ok);
        assert_eq!(kpi_status(on_time, Some(0.85), 100), KpiStatus::Warn);
        assert_eq!(kpi_status(on_time, Some(0.80), 100), KpiStatus::Critical);
        assert_eq!(kpi_status(on_time, Some(0.10), 5), KpiStatus::Unrated);
        assert_eq!(kpi_status(on_time, None, 100), KpiStatus::Unrated);
    }

    #[test]
    fn anomaly_needs_baseline_and_bad_direction() {
        let spec = PipelineSpec::builtin();
        let rule = &spec.deviations.anomaly;
        let calm = [0.95, 0.96, 0.94, 0.95, 0.95];
        assert!(anomaly_z(&calm, 0.70, Direction::Below, rule).unwrap() < -3.0);
        assert_eq!(anomaly_z(&calm, 0.99, Direction::Below, rule), None);
        assert_eq!(anomaly_z(&calm[..3], 0.10, Direction::Below, rule), None);
    }
}
