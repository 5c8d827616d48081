//! The predicted-delay risk model: a pure function from an open order's snapshot, its route's
//! live statistics and the current event time to a late-delivery probability.
//!
//! In: [`RiskSnapshot`], [`RouteStats`], `now`, the spec. Out: probability in [0, 1]. The dataflow
//! (`dataflow::risk`) keeps the statistics incrementally; the batch oracle calls the same function
//! on statistics it recomputes itself.

use serde::{Deserialize, Serialize};

use crate::config::pipeline::PipelineSpec;

/// What the risk model needs to know about one open order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskSnapshot {
    pub created_ts: i64,
    pub promised_ts: i64,
    pub shipped_ts: Option<i64>,
    pub out_for_delivery: bool,
    /// 1 while a carrier exception is open, else 0.
    pub open_exceptions: u32,
    pub payment_failed_open: bool,
}

/// Outcome statistics of one route (region x ship_mode x warehouse), integer so they are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    pub deliveries: u64,
    pub late: u64,
    pub transit_sum_ms: i64,
    pub transit_n: u64,
    pub ship_sum_ms: i64,
    pub ship_n: u64,
}

impl RouteStats {
    /// Adds a delivery with a promise (`late`) and, if known, its transit time.
    pub fn add_delivery(&mut self, late: bool, transit_ms: Option<i64>) {
        self.deliveries += 1;
        self.late += late as u64;
        if let Some(t) = transit_ms {
            self.transit_sum_ms += t;
            self.transit_n += 1;
        }
    }
    pub fn add_shipment(&mut self, order_to_ship_ms: i64) {
        self.ship_sum_ms += order_to_ship_ms;
        self.ship_n += 1;
    }
}

/// What a route's statistics predict: its smoothed late rate and the expected transit and
/// order-to-ship times (the service level's until the route has history).
struct Expectations {
    late_rate: f64,
    transit: f64,
    ship: f64,
}

impl Expectations {
    fn of(route: &RouteStats, ship_within_ms: i64, transit_ms: i64, spec: &PipelineSpec) -> Self {
        let r = &spec.risk;
        let mean = |sum: i64, n: u64, default: i64| {
            if n > 0 {
                sum as f64 / n as f64
            } else {
                default as f64
            }
        };
        Expectations {
            late_rate: (route.late as f64 + r.prior_weight * r.prior_late_rate)
                / (route.deliveries as f64 + r.prior_weight),
            transit: mean(route.transit_sum_ms, route.transit_n, transit_ms),
            ship: mean(route.ship_sum_ms, route.ship_n, ship_within_ms),
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Late-delivery probability of an open order at event time `now`.
///
/// `ship_within_ms` and `transit_ms` are the service-level defaults for the order's ship mode,
/// used until the route has history.
pub fn score(
    s: &RiskSnapshot,
    route: &RouteStats,
    now: i64,
    ship_within_ms: i64,
    transit_ms: i64,
    spec: &PipelineSpec,
) -> f64 {
    if now > s.promised_ts {
        return 1.0;
    }
    let r = &spec.risk;
    let w = &r.weights;
    let Expectations {
        late_rate,
        transit: expected_transit,
        ship: expected_ship,
    } = Expectations::of(route, ship_within_ms, transit_ms, spec);
    // A stage already overdue still needs time: at least `overdue_floor` of its expectation.
    let floor = w.overdue_floor;
    let remaining = if s.out_for_delivery {
        0.0
    } else if let Some(shipped) = s.shipped_ts {
        (expected_transit - (now - shipped) as f64).max(floor * expected_transit)
    } else {
        (expected_ship - (now - s.created_ts) as f64).max(floor * expected_ship) + expected_transit
    };
    let time_left = (s.promised_ts - now) as f64;
    // The route term is centred on the prior: an average route adds nothing, so with no slack
    // either way (expected remaining time == time left) the score is sigmoid(bias).
    let route = logit(late_rate.clamp(1e-6, 1.0 - 1e-6)) - logit(r.prior_late_rate);
    let x = w.bias
        + w.route_logit * route
        + w.slack * (remaining - time_left) / w.slack_scale.ms() as f64
        + w.exception * s.open_exceptions as f64
        + if s.payment_failed_open {
            w.payment_failed
        } else {
            0.0
        };
    1.0 / (1.0 + (-x).exp())
}

/// The earliest event time in `[now, promised_ts]` at which the quantised score reaches
/// `threshold_ppm` if nothing about the order or its route changes, or `None` if it does not
/// before the promise. The score is non-decreasing in `now` for a fixed snapshot (time left
/// shrinks at least as fast as the expected remaining time), so a binary search finds it.
pub fn crossing_time(
    s: &RiskSnapshot,
    route: &RouteStats,
    now: i64,
    ship_within_ms: i64,
    transit_ms: i64,
    spec: &PipelineSpec,
    threshold_ppm: i64,
) -> Option<i64> {
    let reaches = |t: i64| {
        crate::model::facts::ppm(score(s, route, t, ship_within_ms, transit_ms, spec))
            >= threshold_ppm
    };
    if now > s.promised_ts || !reaches(s.promised_ts) {
        return None;
    }
    if reaches(now) {
        return Some(now);
    }
    // Invariant: !reaches(lo), reaches(hi). The analytic estimate is usually exact to the
    // millisecond (two evaluations confirm it); otherwise it narrows the bracket, and the search
    // below decides exactly, on the score itself.
    let (mut lo, mut hi) = (now, s.promised_ts);
    if let Some(guess) =
        crossing_estimate(s, route, ship_within_ms, transit_ms, spec, threshold_ppm)
    {
        let guess = guess.clamp(lo + 1, hi);
        if reaches(guess) {
            if !reaches(guess - 1) {
                return Some(guess);
            }
            hi = guess - 1;
            const SLOP: i64 = 64;
            let g_lo = (guess - SLOP).max(lo);
            if g_lo > lo && !reaches(g_lo) {
                lo = g_lo;
            }
        } else {
            lo = guess;
            const SLOP: i64 = 64;
            let g_hi = (guess + SLOP).min(hi);
            if g_hi < hi && reaches(g_hi) {
                hi = g_hi;
            }
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if reaches(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// Where the score would cross `threshold_ppm`, solving the model in closed form: the logit is
/// `base + slack * max(K, now + M) / scale` for constants K and M of the order's stage. `None`
/// when the slack weight is not positive (no monotone crossing to solve for).
fn crossing_estimate(
    s: &RiskSnapshot,
    route: &RouteStats,
    ship_within_ms: i64,
    transit_ms: i64,
    spec: &PipelineSpec,
    threshold_ppm: i64,
) -> Option<i64> {
    let r = &spec.risk;
    let w = &r.weights;
    if w.slack <= 0.0 {
        return None;
    }
    let Expectations {
        late_rate,
        transit: e_t,
        ship: e_s,
    } = Expectations::of(route, ship_within_ms, transit_ms, spec);
    let base = w.bias
        + w.route_logit * (logit(late_rate.clamp(1e-6, 1.0 - 1e-6)) - logit(r.prior_late_rate))
        + w.exception * s.open_exceptions as f64
        + if s.payment_failed_open {
            w.payment_failed
        } else {
            0.0
        };
    let p = s.promised_ts as f64;
    let m = if s.out_for_delivery {
        -p
    } else if s.shipped_ts.is_some() {
        w.overdue_floor * e_t - p
    } else {
        w.overdue_floor * e_s + e_t - p
    };
    let target_p = ((threshold_ppm as f64 - 0.5) / 1e6).clamp(1e-9, 1.0 - 1e-9);
    let g = (logit(target_p) - base) * w.slack_scale.ms() as f64 / w.slack;
    let t = g - m;
    t.is_finite().then(|| t.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> RiskSnapshot {
        RiskSnapshot {
            created_ts: 0,
            promised_ts: 5 * 86_400_000,
            shipped_ts: None,
            out_for_delivery: false,
            open_exceptions: 0,
            payment_failed_open: false,
        }
    }

    #[test]
    fn risk_rises_with_route_late_rate_and_trouble_and_is_certain_after_promise() {
        let spec = PipelineSpec::builtin();
        let day = 86_400_000;
        let calm = RouteStats {
            deliveries: 200,
            late: 4,
            ..Default::default()
        };
        let stormy = RouteStats {
            deliveries: 200,
            late: 120,
            ..Default::default()
        };
        let s = snapshot();
        let base = score(&s, &calm, day, day, 2 * day, &spec);
        assert!(score(&s, &stormy, day, day, 2 * day, &spec) > base);
        let troubled = RiskSnapshot {
            open_exceptions: 1,
            payment_failed_open: true,
            ..s.clone()
        };
        assert!(score(&troubled, &calm, day, day, 2 * day, &spec) > base);
        // Less time left for the same remaining work means more risk.
        assert!(
            score(&s, &calm, 4 * day, day, 2 * day, &spec)
                > score(&s, &calm, day, day, 2 * day, &spec)
        );
        assert_eq!(score(&s, &calm, 5 * day + 1, day, 2 * day, &spec), 1.0);
    }

    #[test]
    fn an_overdue_shipment_keeps_needing_time_and_an_average_route_is_neutral() {
        let mut spec = PipelineSpec::builtin();
        let day = 86_400_000;
        let route = RouteStats {
            transit_n: 10,
            transit_sum_ms: 20 * day,
            ..Default::default()
        }; // 2 days
        let shipped = RiskSnapshot {
            shipped_ts: Some(0),
            promised_ts: 4 * day,
            ..snapshot()
        };
        // Three days into a two-day transit, one day before the promise.
        let with_floor = score(&shipped, &route, 3 * day, day, 2 * day, &spec);
        spec.risk.weights.overdue_floor = 0.0;
        let without = score(&shipped, &route, 3 * day, day, 2 * day, &spec);
        assert!(with_floor > without, "{with_floor} vs {without}");
        // No history: the route term is zero, so with zero slack the score is sigmoid(bias).
        let s = RiskSnapshot {
            shipped_ts: Some(0),
            promised_ts: 2 * day,
            ..snapshot()
        };
        let p = score(&s, &RouteStats::default(), 0, day, 2 * day, &spec);
        let bias = spec.risk.weights.bias;
        assert!((p - 1.0 / (1.0 + (-bias).exp())).abs() < 1e-12);
    }

    #[test]
    fn crossing_time_is_the_first_moment_the_band_is_reached() {
        let spec = PipelineSpec::builtin();
        let day = 86_400_000;
        let calm = RouteStats {
            deliveries: 200,
            late: 4,
            ..Default::default()
        };
        let s = snapshot();
        let warn = crate::model::facts::ppm(spec.risk.warn);
        let t = crossing_time(&s, &calm, 0, day, 2 * day, &spec, warn)
            .expect("reached before the promise");
        assert!(t > 0 && t <= s.promised_ts);
        let p = |t| crate::model::facts::ppm(score(&s, &calm, t, day, 2 * day, &spec));
        assert!(p(t) >= warn && p(t - 1) < warn);
        // Already beyond the band: now.
        assert_eq!(
            crossing_time(&s, &calm, t + 10, day, 2 * day, &spec, warn),
            Some(t + 10)
        );
        // Never reached at an impossible threshold, and no crossing after the promise.
        assert_eq!(
            crossing_time(&s, &calm, 0, day, 2 * day, &spec, 1_000_001),
            None
        );
        assert_eq!(
            crossing_time(&s, &calm, s.promised_ts + 1, day, 2 * day, &spec, warn),
            None
        );
    }
}
