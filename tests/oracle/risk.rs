//! Oracle step 3 (SEMANTICS section 5): route statistics, risk scores (event scores and band
//! checks), risk facts and the `predicted_delay` deviation.
//!
//! In: the order facts and each record's risk updates from the order simulation. Out:
//! `(order, now, ppm)` scores, risk facts and `predicted_delay` deviations.
//!
//! Statistics: per route, the delivery (with a promise) and shipment facts summed per tick; a score
//! at tick `t` sees the facts of ticks `< t` only. Each record is then replayed on its own: at a
//! tick with events its pending band check is dropped and, if open, it is scored (`now` = its last
//! event there); after every score below the critical band a check is scheduled at the crossing
//! time of the next band (if after `now`), and runs, with `now` = that time, at its tick after the
//! tick's event score, until the record is retired.

use std::collections::HashMap;

use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::risk_model::{crossing_time, score, RouteStats};
use fulfillment_ai::model::facts::{ppm, Fact, FactField, FactFlag, FactKind};
use fulfillment_ai::model::{Deviation, DeviationType};

use super::orders::{deviation, dims_map, route_of, RiskTrack, RiskUpdate};
use super::tick_of;

type Route = (String, String, String);

pub struct Scored {
    pub scores: Vec<(String, i64, i64)>,
    pub risk_facts: Vec<Fact>,
    pub deviations: Vec<Deviation>,
}

/// Route statistics as a function of the tick.
struct StatsTimeline {
    /// Per route: (tick, statistics of all facts of ticks <= tick), ascending.
    by_route: HashMap<Route, Vec<(i64, RouteStats)>>,
}

impl StatsTimeline {
    fn new(spec: &PipelineSpec, facts: &[Fact]) -> StatsTimeline {
        let mut per_tick: HashMap<Route, std::collections::BTreeMap<i64, Vec<&Fact>>> =
            HashMap::new();
        for f in facts {
            let relevant = match f.kind {
                FactKind::Delivery => f.flag(FactFlag::HasPromise),
                FactKind::Shipment => f.field(FactField::OrderToShipMs).is_some(),
                _ => false,
            };
            if let (true, Some(route)) = (relevant, route_of(&f.dims)) {
                per_tick
                    .entry(route)
                    .or_default()
                    .entry(tick_of(spec, f.ts))
                    .or_default()
                    .push(f);
            }
        }
        let mut by_route = HashMap::new();
        for (route, ticks) in per_tick {
            let mut acc = RouteStats::default();
            let mut line = Vec::new();
            for (tick, fs) in ticks {
                for f in fs {
                    match f.kind {
                        FactKind::Delivery => {
                            acc.add_delivery(f.flag(FactFlag::Late), f.field(FactField::TransitMs))
                        }
                        _ => acc.add_shipment(
                            f.field(FactField::OrderToShipMs).expect("selected above"),
                        ),
                    }
                }
                line.push((tick, acc));
            }
            by_route.insert(route, line);
        }
        StatsTimeline { by_route }
    }

    /// Statistics of the facts of ticks `< t`.
    fn before(&self, route: &Route, t: i64) -> RouteStats {
        let Some(line) = self.by_route.get(route) else {
            return RouteStats::default();
        };
        let n = line.partition_point(|(tick, _)| *tick < t);
        if n == 0 {
            RouteStats::default()
        } else {
            line[n - 1].1
        }
    }
}

/// One record's risk state while it is replayed.
struct Replay<'a> {
    spec: &'a PipelineSpec,
    stats: &'a StatsTimeline,
    track: &'a RiskTrack,
    /// 0 none, 1 warning, 2 critical reported.
    band: u8,
    pending: Option<i64>,
    out: &'a mut Scored,
}

impl Replay<'_> {
    fn score_at(&mut self, u: &RiskUpdate, t: i64, now: i64) {
        let spec = self.spec;
        let snap = u.snapshot.as_ref().expect("open records are created");
        let route = u.route.as_ref().expect("created records have a route");
        let stats = self.stats.before(route, t);
        let p = ppm(score(
            snap,
            &stats,
            now,
            u.ship_within_ms,
            u.transit_ms,
            spec,
        ));
        self.out.scores.push((self.track.order_id.clone(), now, p));
        let mut f = Fact::new(FactKind::Risk, now, u.dims.clone().into());
        f.set_field(FactField::RiskPpm, p);
        self.out.risk_facts.push(f);
        // Bands are predictions: none once the promise has passed.
        if now <= snap.promised_ts {
            let reached = if p >= ppm(spec.risk.critical) {
                2
            } else if p >= ppm(spec.risk.warn) {
                1
            } else {
                0
            };
            if reached > self.band {
                self.band = reached;
                let rule = &spec.deviations.predicted_delay;
                if rule.enabled {
                    let (name, severity) = if reached == 2 {
                        ("critical", Severity::Critical)
                    } else {
                        ("warning", Severity::Warning)
                    };
                    let id = format!("predicted_delay:{}:{name}", self.track.order_id);
                    self.out.deviations.push(deviation(
                        id,
                        DeviationType::PredictedDelay,
                        severity,
                        Some(&self.track.order_id),
                        dims_map(&u.dims),
                        now,
                    ));
                }
            }
        }
        self.pending = None;
        if self.band < 2 {
            let next = ppm(if self.band == 0 {
                spec.risk.warn
            } else {
                spec.risk.critical
            });
            self.pending = crossing_time(
                snap,
                &stats,
                now,
                u.ship_within_ms,
                u.transit_ms,
                spec,
                next,
            )
            .filter(|&c| c > now);
        }
    }

    /// Runs the pending checks due before tick `limit`, in order (a check may schedule another).
    fn checks_before(&mut self, u: &RiskUpdate, limit: i64) {
        while let Some(c) = self.pending {
            let t = tick_of(self.spec, c);
            if t >= limit {
                return;
            }
            if self.track.retired_tick.is_some_and(|r| t >= r) {
                self.pending = None;
                return;
            }
            self.score_at(u, t, c);
        }
    }

    fn run(mut self) {
        let updates = &self.track.updates;
        for (i, u) in updates.iter().enumerate() {
            if i > 0 {
                self.checks_before(&updates[i - 1], u.tick);
            }
            self.pending = None;
            if u.open {
                self.score_at(u, u.tick, u.now);
            }
            self.checks_before(u, u.tick + 1);
        }
        if let Some(last) = updates.last() {
            self.checks_before(last, i64::MAX);
        }
    }
}

pub fn score_all(spec: &PipelineSpec, facts: &[Fact], tracks: &[RiskTrack]) -> Scored {
    let stats = StatsTimeline::new(spec, facts);
    let mut out = Scored {
        scores: Vec::new(),
        risk_facts: Vec::new(),
        deviations: Vec::new(),
    };
    for track in tracks {
        Replay {
            spec,
            stats: &stats,
            track,
            band: 0,
            pending: None,
            out: &mut out,
        }
        .run();
    }
    out.scores.sort();
    out
}
