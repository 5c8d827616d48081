//! Oracle step 3 (SEMANTICS section 5): route statistics, risk scores, risk facts and the
//! `predicted_delay` deviation.
//!
//! In: the order facts and the score requests of the order simulation. Out: `(order, now, ppm)`
//! scores, risk facts and `predicted_delay` deviations. A request at tick `t` sees the statistics of
//! delivery (with a promise) and shipment facts with `tick_of(ts) < t` only, so the statistics are
//! rebuilt by a sweep over the facts sorted by tick.

use std::collections::HashMap;

use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::risk_model::{score, RouteStats};
use fulfillment_ai::model::facts::{ppm, Fact, FactField, FactFlag, FactKind};
use fulfillment_ai::model::{Deviation, DeviationType};

use super::orders::{deviation, dims_map, route_of, ScoreRequest};
use super::tick_of;

pub struct Scored {
    pub scores: Vec<(String, i64, i64)>,
    pub risk_facts: Vec<Fact>,
    pub deviations: Vec<Deviation>,
}

enum StatUpdate {
    Delivery { late: bool, transit_ms: Option<i64> },
    Shipment { order_to_ship_ms: i64 },
}

pub fn score_all(spec: &PipelineSpec, facts: &[Fact], requests: &[ScoreRequest]) -> Scored {
    // Statistic updates by tick.
    let mut updates: Vec<(i64, (String, String, String), StatUpdate)> = Vec::new();
    for f in facts {
        let Some(route) = route_of(&f.dims) else { continue };
        match f.kind {
            FactKind::Delivery if f.flag(FactFlag::HasPromise) => updates.push((
                tick_of(spec, f.ts),
                route,
                StatUpdate::Delivery { late: f.flag(FactFlag::Late), transit_ms: f.field(FactField::TransitMs) },
            )),
            FactKind::Shipment => {
                if let Some(ms) = f.field(FactField::OrderToShipMs) {
                    updates.push((tick_of(spec, f.ts), route, StatUpdate::Shipment { order_to_ship_ms: ms }));
                }
            }
            _ => {}
        }
    }
    updates.sort_by_key(|u| u.0);

    // Requests by tick; each sees the updates of earlier ticks.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].tick);
    let mut stats: HashMap<(String, String, String), RouteStats> = HashMap::new();
    let mut next = 0;
    let mut ppms = vec![0i64; requests.len()];
    for i in order {
        let req = &requests[i];
        while next < updates.len() && updates[next].0 < req.tick {
            let s = stats.entry(updates[next].1.clone()).or_default();
            match updates[next].2 {
                StatUpdate::Delivery { late, transit_ms } => s.add_delivery(late, transit_ms),
                StatUpdate::Shipment { order_to_ship_ms } => s.add_shipment(order_to_ship_ms),
            }
            next += 1;
        }
        let route = stats.get(&req.route).copied().unwrap_or_default();
        ppms[i] = ppm(score(&req.snapshot, &route, req.now, req.ship_within_ms, req.transit_ms, spec));
    }

    // Facts, scores and bands, in each record's own order (requests of a record are contiguous
    // and chronological, the event score of a tick before its eval score).
    let mut out = Scored { scores: Vec::new(), risk_facts: Vec::new(), deviations: Vec::new() };
    let mut bands: HashMap<(String, u32), (bool, bool)> = HashMap::new();
    let rule = &spec.deviations.predicted_delay;
    for (req, &p) in requests.iter().zip(&ppms) {
        out.scores.push((req.order_id.clone(), req.now, p));
        let mut f = Fact::new(FactKind::Risk, req.now, req.dims.clone());
        f.set_field(FactField::RiskPpm, p);
        out.risk_facts.push(f);
        let (warned, critical) = bands.entry((req.order_id.clone(), req.generation)).or_default();
        let prob = p as f64 / 1_000_000.0;
        let fired = if prob >= spec.risk.critical && !*critical {
            *critical = true;
            *warned = true;
            Some(("critical", Severity::Critical))
        } else if prob >= spec.risk.warn && !*warned {
            *warned = true;
            Some(("warning", Severity::Warning))
        } else {
            None
        };
        if let (Some((band, severity)), true) = (fired, rule.enabled) {
            let id = format!("predicted_delay:{}:{band}", req.order_id);
            out.deviations.push(deviation(id, DeviationType::PredictedDelay, severity, Some(&req.order_id), dims_map(&req.dims), req.now));
        }
    }
    out.scores.sort();
    out
}
