//! The risk operator: live route statistics and a predicted-delay score for every open order.
//!
//! In: [`RiskUpdate`]s from the order-state operator, exchanged by route (region x ship_mode x
//! warehouse), so a route's statistics and its open orders live on one worker. Out:
//! [`RiskOutput`]s: a `risk` fact per score (feeding the segment risk KPI), `predicted_delay`
//! deviations when a score first reaches a band, and optionally the scores themselves.
//!
//! Tick order (docs/SEMANTICS.md section 5): at tick `t`, first the scores of orders updated in
//! `t`, then the band checks due in `t` (an order is re-scored at the moment its score would reach
//! the next band if nothing changed), then `t`'s outcomes enter the statistics. A score therefore
//! never sees the outcome it predicts, and an order costs a few scores, not one per time step.

use std::borrow::Cow;
use std::collections::BTreeMap;

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::config::pipeline::{PipelineSpec, Severity};
use crate::dataflow::checkpoint::{merge_schedule, Owner};
use crate::dataflow::orders::{dims_context, RiskInput, RiskUpdate, Route};
use crate::dataflow::risk_model::{crossing_time, score, RiskSnapshot, RouteStats};
use crate::model::facts::{ppm, Dims, Fact, FactField, FactKind};
use crate::model::records::{Deviation, DeviationType};
use crate::model::time::TickClock;

/// One score of one order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RiskScore {
    pub order_id: String,
    pub now: i64,
    pub risk_ppm: i64,
}

/// What the risk operator emits, one buffer per destination.
#[derive(Debug, Default)]
pub struct RiskOutputs {
    pub facts: Vec<Fact>,
    pub deviations: Vec<Deviation>,
    pub scores: Vec<RiskScore>,
}

#[derive(Clone, Serialize, Deserialize)]
struct OpenOrder {
    route: Route,
    snapshot: RiskSnapshot,
    dims: std::sync::Arc<Dims>,
    ship_within_ms: i64,
    transit_ms: i64,
    /// Highest band already reported: 0 none, 1 warning, 2 critical.
    fired: u8,
    /// The pending band check, if any (event time).
    check_at: Option<i64>,
}

/// The part of a [`RiskState`] a checkpoint keeps (all of it but the stash, which is empty at a
/// cut: the order operator emits risk updates only for ticks it has processed).
#[derive(Serialize, Deserialize)]
pub struct RiskStateSnapshot<'a> {
    stats: Cow<'a, FxHashMap<Route, RouteStats>>,
    open: Cow<'a, FxHashMap<CompactString, OpenOrder>>,
    checks: Cow<'a, BTreeMap<u64, Vec<(i64, CompactString)>>>,
}

pub struct RiskState {
    spec: std::sync::Arc<PipelineSpec>,
    clock: TickClock,
    warn_ppm: i64,
    critical_ppm: i64,
    collect_scores: bool,
    stats: FxHashMap<Route, RouteStats>,
    open: FxHashMap<CompactString, OpenOrder>,
    stash: BTreeMap<u64, Vec<RiskUpdate>>,
    /// Band checks by tick: (check time, order). Stale entries are skipped.
    checks: BTreeMap<u64, Vec<(i64, CompactString)>>,
}

impl RiskState {
    pub fn new(spec: std::sync::Arc<PipelineSpec>, collect_scores: bool) -> Self {
        let clock = TickClock {
            tick_ms: spec.time.tick.ms(),
        };
        let (warn_ppm, critical_ppm) = (ppm(spec.risk.warn), ppm(spec.risk.critical));
        RiskState {
            spec,
            clock,
            warn_ppm,
            critical_ppm,
            collect_scores,
            stats: FxHashMap::default(),
            open: FxHashMap::default(),
            stash: BTreeMap::new(),
            checks: BTreeMap::new(),
        }
    }

    /// Entry counts for the state gauges.
    pub fn measure(&self, sizes: &mut crate::dataflow::state_gauges::StateSizes) {
        sizes.set("risk_routes", self.stats.len());
        sizes.set("risk_open_orders", self.open.len());
        sizes.set("risk_checks", self.checks.values().map(Vec::len).sum());
    }

    pub fn snapshot(&self) -> RiskStateSnapshot<'_> {
        debug_assert!(self.stash.is_empty(), "risk updates pending at a cut");
        RiskStateSnapshot {
            stats: Cow::Borrowed(&self.stats),
            open: Cow::Borrowed(&self.open),
            checks: Cow::Borrowed(&self.checks),
        }
    }

    /// Adds the routes of a saved snapshot that `owner` owns (their statistics, open orders and
    /// band checks) to a state being restored. An order's route is fixed when it is created, so
    /// each open order is in one snapshot only.
    pub fn merge_restored(&mut self, snapshot: RiskStateSnapshot, owner: Owner) {
        let mine = |route: &Route| owner.owns(crate::dataflow::route_key(route));
        self.stats.extend(
            snapshot
                .stats
                .into_owned()
                .into_iter()
                .filter(|(route, _)| mine(route)),
        );
        let open = snapshot.open.into_owned();
        // A check whose order is no longer open is stale (skipped when due); it goes nowhere.
        merge_schedule(&mut self.checks, snapshot.checks.into_owned(), |(_, id)| {
            open.get(id).is_some_and(|o| mine(&o.route))
        });
        self.open
            .extend(open.into_iter().filter(|(_, o)| mine(&o.route)));
    }

    pub fn stash(&mut self, update: RiskUpdate) {
        self.stash.entry(update.tick).or_default().push(update);
    }

    /// Processes every tick `< frontier` (all, if `None`) that has updates or band checks.
    pub fn advance(&mut self, frontier: Option<u64>, out: &mut RiskOutputs) {
        while let Some(tick) = crate::dataflow::next_due(&self.stash, &self.checks, frontier) {
            self.process_tick(tick, out);
        }
    }

    fn process_tick(&mut self, tick: u64, out: &mut RiskOutputs) {
        let mut outcomes = Vec::new();
        if let Some(updates) = self.stash.remove(&tick) {
            for u in updates {
                match u.input {
                    RiskInput::Open {
                        order_id,
                        snapshot,
                        dims,
                        now,
                        ship_within_ms,
                        transit_ms,
                    } => {
                        let fired = self.open.get(&order_id).map_or(0, |o| o.fired);
                        self.open.insert(
                            order_id.clone(),
                            OpenOrder {
                                route: u.route,
                                snapshot,
                                dims,
                                ship_within_ms,
                                transit_ms,
                                fired,
                                check_at: None,
                            },
                        );
                        self.score_order(&order_id, now, out);
                    }
                    RiskInput::Closed { order_id } => {
                        self.open.remove(&order_id);
                    }
                    other => outcomes.push((u.route, other)),
                }
            }
        }
        // Band checks due in this tick (scoring may schedule more in the same tick).
        while let Some(mut due) = self.checks.remove(&tick) {
            due.sort();
            for (at, order_id) in due {
                if self
                    .open
                    .get(&order_id)
                    .is_some_and(|o| o.check_at == Some(at))
                {
                    self.score_order(&order_id, at, out);
                }
            }
        }
        for (route, outcome) in outcomes {
            let stats = self.stats.entry(route).or_default();
            match outcome {
                RiskInput::Delivered { late, transit_ms } => stats.add_delivery(late, transit_ms),
                RiskInput::Shipped { order_to_ship_ms } => stats.add_shipment(order_to_ship_ms),
                _ => {}
            }
        }
    }

    fn score_order(&mut self, order_id: &CompactString, now: i64, out: &mut RiskOutputs) {
        let Some(o) = self.open.get_mut(order_id) else {
            return;
        };
        let stats = self.stats.get(&o.route).copied().unwrap_or_default();
        let p = score(
            &o.snapshot,
            &stats,
            now,
            o.ship_within_ms,
            o.transit_ms,
            &self.spec,
        );
        let risk_ppm = ppm(p);
        let mut fact = Fact::new(FactKind::Risk, now, o.dims.clone());
        fact.set_field(FactField::RiskPpm, risk_ppm);
        out.facts.push(fact);
        if self.collect_scores {
            out.scores.push(RiskScore {
                order_id: order_id.to_string(),
                now,
                risk_ppm,
            });
        }
        let band = if risk_ppm >= self.critical_ppm {
            2
        } else if risk_ppm >= self.warn_ppm {
            1
        } else {
            0
        };
        if band > o.fired
            && now <= o.snapshot.promised_ts
            && self.spec.deviations.predicted_delay.enabled
        {
            o.fired = band;
            let (severity, label) = if band == 2 {
                (Severity::Critical, "critical")
            } else {
                (Severity::Warning, "warning")
            };
            let hours_left = (o.snapshot.promised_ts - now) as f64 / 3.6e6;
            let mut evidence = BTreeMap::new();
            evidence.insert("risk".into(), risk_ppm as f64 / 1e6);
            evidence.insert("hours_to_promise".into(), hours_left);
            evidence.insert("route_deliveries".into(), stats.deliveries as f64);
            evidence.insert("route_late".into(), stats.late as f64);
            out.deviations.push(Deviation {
                id: format!("predicted_delay:{order_id}:{label}"),
                kind: DeviationType::PredictedDelay,
                severity,
                order_id: Some(order_id.to_string()),
                context: dims_context(&o.dims),
                evidence,
                summary: format!("order {order_id} likely to miss its promise (risk {:.0}%, {hours_left:.1} h left)", risk_ppm as f64 / 1e4),
                event_time: now,
                detected_at: crate::dataflow::wall_clock_ms(),
            });
        }
        // Next band check: when the score would reach the next band if nothing changes.
        let target = match o.fired {
            0 => Some(self.warn_ppm),
            1 => Some(self.critical_ppm),
            _ => None,
        };
        o.check_at = target
            .and_then(|t| {
                crossing_time(
                    &o.snapshot,
                    &stats,
                    now,
                    o.ship_within_ms,
                    o.transit_ms,
                    &self.spec,
                    t,
                )
            })
            .filter(|&at| at > now);
        if let Some(at) = o.check_at {
            self.checks
                .entry(self.clock.tick_of(at))
                .or_default()
                .push((at, order_id.clone()));
        }
    }
}
