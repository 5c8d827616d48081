//! The order-state operator: every open order's state, kept per worker for the orders whose id
//! hashes to it, advanced tick by tick in event time.
//!
//! In: accepted `OrderEvent`s (exchanged by order id), and the input frontier (the watermark).
//! Out: one stream of [`OrderOutput`]: facts for the KPIs, per-order deviations, backlog changes
//! (a differential collection with retractions), and snapshots for the risk operator.
//!
//! Events are stashed by tick and applied once the frontier has passed their tick, in the order
//! `(ts, event_id, type)`; then timers due in that tick fire. That makes every output a function
//! of the set of accepted events, whatever order they arrived in (docs/SEMANTICS.md sections 2-3).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use compact_str::CompactString;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::config::pipeline::{Kpi, Measure, PipelineSpec, Severity};
use crate::dataflow::checkpoint::{merge_schedule, Owner};
use crate::dataflow::risk_model::RiskSnapshot;
use crate::model::event::{EventBody, OrderEvent};
use crate::model::facts::{cents, Dims, Fact, FactField, FactFlag, FactKind};
use crate::model::records::{Context, Deviation, DeviationType};
use crate::model::time::TickClock;

/// Labels of a dimension set, in the set's order.
pub type Labels = SmallVec<[CompactString; 2]>;

/// A backlog series: (gauge KPI index, dimension-set index, labels).
pub type BacklogKey = (u16, u16, Labels);

/// Route of an order for the risk model: (region, ship_mode, warehouse).
pub type Route = (CompactString, CompactString, CompactString);

/// What the risk operator learns about an order or a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RiskInput {
    /// The order is open after this tick's events; `now` is its last event's ts.
    Open {
        order_id: CompactString,
        snapshot: RiskSnapshot,
        dims: Arc<Dims>,
        now: i64,
        ship_within_ms: i64,
        transit_ms: i64,
    },
    /// The order finished or was retired.
    Closed { order_id: CompactString },
    /// A delivery with a promise on the route.
    Delivered { late: bool, transit_ms: Option<i64> },
    /// A shipment of a created order on the route.
    Shipped { order_to_ship_ms: i64 },
}

/// A risk input with the tick it belongs to and the route it concerns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RiskUpdate {
    pub tick: u64,
    pub route: Route,
    pub input: RiskInput,
}

/// A differential update `(key, tick, diff)` of the backlog collection.
pub type BacklogUpdate = (BacklogKey, u64, isize);

/// Everything the order-state operator emits, one buffer per output stream.
#[derive(Debug, Default)]
pub struct OrderOutputs {
    pub facts: Vec<Fact>,
    pub deviations: Vec<Deviation>,
    pub backlog: Vec<BacklogUpdate>,
    pub risk: Vec<RiskUpdate>,
    /// Duplicates seen (bookkeeping for the job report).
    pub duplicates: u64,
    /// Every applied (not duplicate) event, when [`OrderState::record_applied`] is on.
    pub applied: Vec<OrderEvent>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum TimerKind {
    ShipBy,
    Delivery,
    Gap,
    Retention,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Created {
    ts: i64,
    promised_ts: i64,
    qty: Option<u32>,
    amount_cents: i64,
    ship_within_ms: i64,
    transit_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct OrderRecord {
    dims: Arc<Dims>,
    created: Option<Created>,
    shipped: Option<(i64, Option<u32>)>,
    delivered_ts: Option<i64>,
    cancelled_ts: Option<i64>,
    out_for_delivery: bool,
    exception_open: bool,
    exceptions_fired: u32,
    payment_failed_open: bool,
    payment_failures_fired: u32,
    in_backlog: bool,
    risk_open: bool,
    last_ts: i64,
    /// Distinguishes this record from an earlier, retired record of the same order id, so the
    /// earlier record's timers do not fire against it.
    generation: u64,
    /// Deadline of the earliest pending retention check.
    retention_check: Option<i64>,
    /// Hashes of processed event ids (64-bit FxHash; a collision would drop an event).
    seen: SmallVec<[u64; 8]>,
}

impl OrderRecord {
    fn finished(&self) -> bool {
        self.delivered_ts.is_some() || self.cancelled_ts.is_some()
    }
}

/// The part of an [`OrderState`] a checkpoint keeps: everything derived from the ticks already
/// processed. Stashed events (ticks at or after the cut) are not in it; the source replays them.
/// Borrowed when saved (no copy of the state), owned when loaded.
#[derive(Serialize, Deserialize)]
pub struct OrderStateSnapshot<'a> {
    orders: Cow<'a, FxHashMap<CompactString, OrderRecord>>,
    timers: Cow<'a, Timers>,
    next_generation: u64,
}

/// Deadline timers by tick: (deadline, kind, order id, generation of the order's record).
type Timers = BTreeMap<u64, Vec<(i64, TimerKind, CompactString, u64)>>;

/// Per-worker state of the operator.
pub struct OrderState {
    spec: std::sync::Arc<PipelineSpec>,
    clock: TickClock,
    orders: FxHashMap<CompactString, OrderRecord>,
    stash: BTreeMap<u64, Vec<OrderEvent>>,
    timers: Timers,
    next_generation: u64,
    /// Gauge KPIs: (kpi index, dimension sets).
    gauges: Vec<(u16, Vec<Vec<crate::model::facts::Dimension>>)>,
    touched: FxHashSet<CompactString>,
    /// Copy every applied event to [`OrderOutputs::applied`] (the server's order view).
    pub record_applied: bool,
    /// Backlog updates that rebuild differential's counts after a restore.
    reinject: Vec<BacklogUpdate>,
    /// Most live order records held at once, measured after each tick's events are applied.
    peak_orders: usize,
    /// Event ids remembered over all live orders (for duplicate detection), kept as a running
    /// count so that the state gauge does not walk every order.
    event_ids: usize,
}

fn hash_str(s: &str) -> u64 {
    let mut h = FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

impl OrderState {
    pub fn new(spec: std::sync::Arc<PipelineSpec>) -> Self {
        let gauges = spec
            .compiled
            .iter()
            .enumerate()
            .filter(|(_, k)| matches!(k.measure, Measure::Gauge))
            .map(|(i, k): (usize, &Kpi)| (i as u16, k.dimension_sets.clone()))
            .collect();
        let clock = TickClock {
            tick_ms: spec.time.tick.ms(),
        };
        OrderState {
            spec,
            clock,
            orders: FxHashMap::default(),
            stash: BTreeMap::new(),
            timers: BTreeMap::new(),
            next_generation: 0,
            gauges,
            touched: FxHashSet::default(),
            record_applied: false,
            reinject: Vec::new(),
            peak_orders: 0,
            event_ids: 0,
        }
    }

    /// The most live order records this state has held at once. Measured inside the tick, after
    /// its events and before its retention timers, so a job whose frontier jumps past every
    /// order in one step still reports the orders it held.
    pub fn peak_live_orders(&self) -> usize {
        self.peak_orders
    }

    /// Entry counts for the state gauges.
    pub fn measure(&self, sizes: &mut crate::dataflow::state_gauges::StateSizes) {
        sizes.set("order_records", self.orders.len());
        debug_assert_eq!(
            self.event_ids,
            self.orders.values().map(|r| r.seen.len()).sum::<usize>(),
            "running count of event ids"
        );
        sizes.set("order_event_ids", self.event_ids);
        sizes.set("order_timers", self.timers.values().map(Vec::len).sum());
        sizes.set(
            "order_stashed_events",
            self.stash.values().map(Vec::len).sum(),
        );
    }

    /// The processed part of the state, at a cut where every tick below the frontier is done.
    pub fn snapshot(&self) -> OrderStateSnapshot<'_> {
        OrderStateSnapshot {
            orders: Cow::Borrowed(&self.orders),
            timers: Cow::Borrowed(&self.timers),
            next_generation: self.next_generation,
        }
    }

    /// Adds the orders of a saved snapshot that `owner` owns, with their timers, to a state being
    /// restored. A restore with the saved number of workers passes the worker's own snapshot
    /// (every entry is its own); a rescaled one passes every worker's. Then [`Self::finish_restore`].
    pub fn merge_restored(&mut self, snapshot: OrderStateSnapshot, owner: Owner) {
        let mine = |id: &str| owner.owns(crate::dataflow::order_key(id));
        self.orders.extend(
            snapshot
                .orders
                .into_owned()
                .into_iter()
                .filter(|(id, _)| mine(id)),
        );
        merge_schedule(&mut self.timers, snapshot.timers.into_owned(), |t| {
            mine(&t.2)
        });
        // Generations only need to be unique per order id; above every restored one is enough.
        self.next_generation = self.next_generation.max(snapshot.next_generation);
    }

    /// Completes a restore at `cut`. Differential's backlog count is not in the snapshot: every
    /// order in the backlog is emitted again at tick `cut - 1`, which rebuilds the counts without
    /// changing a level the cell operator already holds.
    pub fn finish_restore(&mut self, cut: u64) {
        self.peak_orders = self.peak_orders.max(self.orders.len());
        self.event_ids = self.orders.values().map(|r| r.seen.len()).sum();
        let tick = cut.saturating_sub(1);
        let backlog: Vec<Arc<Dims>> = self
            .orders
            .values()
            .filter(|r| r.in_backlog)
            .map(|r| r.dims.clone())
            .collect();
        let mut out = OrderOutputs::default();
        for dims in backlog {
            self.emit_backlog(tick, &dims, 1, &mut out);
        }
        self.reinject = out.backlog;
    }

    /// Stashes an accepted event until its tick is complete.
    pub fn stash(&mut self, event: OrderEvent) {
        self.stash
            .entry(self.clock.tick_of(event.ts))
            .or_default()
            .push(event);
    }

    /// Applies every stashed event and due timer of ticks `< frontier` (all, if `None`), in tick order.
    pub fn advance(&mut self, frontier: Option<u64>, out: &mut OrderOutputs) {
        out.backlog.append(&mut self.reinject);
        while let Some(tick) = crate::dataflow::next_due(&self.stash, &self.timers, frontier) {
            self.process_tick(tick, out);
        }
    }

    fn process_tick(&mut self, tick: u64, out: &mut OrderOutputs) {
        if let Some(mut events) = self.stash.remove(&tick) {
            events.sort_by(|a, b| a.processing_key().cmp(&b.processing_key()));
            for event in events {
                self.apply(tick, event, out);
            }
            self.peak_orders = self.peak_orders.max(self.orders.len());
        }
        // One risk snapshot per order touched in this tick, after all its events.
        let mut touched = std::mem::take(&mut self.touched);
        for order_id in touched.drain() {
            self.emit_risk_state(tick, &order_id, out);
        }
        self.touched = touched;
        if let Some(mut due) = self.timers.remove(&tick) {
            // Deadline timers by (deadline, rule, order); retention checks after all of them.
            due.sort_by(|a, b| {
                let retention = |k: TimerKind| k == TimerKind::Retention;
                (retention(a.1), a.0, a.1, &a.2).cmp(&(retention(b.1), b.0, b.1, &b.2))
            });
            for (deadline, kind, order_id, generation) in due {
                if self
                    .orders
                    .get(&order_id)
                    .is_some_and(|r| r.generation == generation)
                {
                    self.fire_timer(tick, deadline, kind, &order_id, out);
                }
            }
        }
    }

    fn schedule(
        &mut self,
        deadline: i64,
        kind: TimerKind,
        order_id: &CompactString,
        generation: u64,
    ) {
        let tick = self.clock.tick_of(deadline);
        self.timers
            .entry(tick)
            .or_default()
            .push((deadline, kind, order_id.clone(), generation));
    }

    fn retention_deadline(&self, r: &OrderRecord) -> i64 {
        let keep = if r.finished() {
            self.spec.retention.finished.ms()
        } else {
            self.spec.retention.idle_open.ms()
        };
        r.last_ts + keep
    }

    fn apply(&mut self, tick: u64, e: OrderEvent, out: &mut OrderOutputs) {
        let id_hash = hash_str(&e.event_id);
        let next_generation = &mut self.next_generation;
        let rec = self.orders.entry(e.order_id.clone()).or_insert_with(|| {
            *next_generation += 1;
            OrderRecord {
                generation: *next_generation,
                ..OrderRecord::default()
            }
        });
        if rec.seen.contains(&id_hash) {
            out.duplicates += 1;
            return;
        }
        rec.seen.push(id_hash);
        self.event_ids += 1;
        if self.record_applied {
            out.applied.push(e.clone());
        }
        if !self.touched.contains(&e.order_id) {
            self.touched.insert(e.order_id.clone());
        }
        rec.last_ts = rec.last_ts.max(e.ts);
        let spec = &self.spec;
        let dev = &spec.deviations;
        let mut timers: SmallVec<[(i64, TimerKind); 3]> = SmallVec::new();
        let mut backlog_change = 0isize;
        let order_id = &e.order_id;
        let ts = e.ts;
        match &e.body {
            EventBody::OrderCreated(c) => {
                if rec.created.is_none() {
                    let level = spec.service_levels.for_mode(&c.ship_mode);
                    let dims = Arc::make_mut(&mut rec.dims);
                    dims.region = Some(c.region.clone());
                    dims.ship_mode = Some(c.ship_mode.clone());
                    dims.warehouse = Some(c.warehouse.clone());
                    dims.segment = Some(c.segment.clone());
                    rec.created = Some(Created {
                        ts,
                        promised_ts: c.promised_delivery_ts,
                        qty: c.qty,
                        amount_cents: cents(c.amount),
                        ship_within_ms: level.ship_within.ms(),
                        transit_ms: level.transit.ms(),
                    });
                    let mut f = Fact::new(FactKind::Order, ts, rec.dims.clone());
                    f.set_field(FactField::AmountCents, cents(c.amount));
                    if let Some(q) = c.qty {
                        f.set_field(FactField::Qty, q as i64);
                    }
                    out.facts.push(f);
                    if dev.sla_ship.enabled {
                        timers.push((ts + level.ship_within.ms(), TimerKind::ShipBy));
                    }
                    if dev.sla_delivery.enabled {
                        timers.push((
                            c.promised_delivery_ts + dev.sla_delivery.grace.ms(),
                            TimerKind::Delivery,
                        ));
                    }
                    if rec.shipped.is_none()
                        && rec.cancelled_ts.is_none()
                        && rec.delivered_ts.is_none()
                    {
                        rec.in_backlog = true;
                        backlog_change = 1;
                    }
                }
            }
            EventBody::PaymentAuthorized | EventBody::PaymentFailed { .. } => {
                let failed = matches!(e.body, EventBody::PaymentFailed { .. });
                let mut f = Fact::new(FactKind::Payment, ts, rec.dims.clone());
                f.set_flag(FactFlag::Failed, failed);
                if let Some(c) = &rec.created {
                    f.set_field(FactField::AmountCents, c.amount_cents);
                }
                out.facts.push(f);
                if !failed {
                    rec.payment_failed_open = false;
                } else if !rec.payment_failed_open {
                    rec.payment_failed_open = true;
                    rec.payment_failures_fired += 1;
                    if dev.payment_failed.enabled {
                        let reason = match &e.body {
                            EventBody::PaymentFailed { reason } => reason.to_string(),
                            _ => String::new(),
                        };
                        let n = rec.payment_failures_fired;
                        out.deviations.push(order_deviation(
                            DeviationType::PaymentFailed,
                            dev.payment_failed.severity,
                            format!("payment_failed:{order_id}:{n}"),
                            order_id,
                            rec,
                            ts,
                            vec![
                                ("attempt", n as f64),
                                (
                                    "amount",
                                    rec.created
                                        .as_ref()
                                        .map_or(0.0, |c| c.amount_cents as f64 / 100.0),
                                ),
                            ],
                            format!("payment failed for order {order_id}: {reason}"),
                        ));
                    }
                }
            }
            EventBody::Shipped { carrier, qty, .. } => {
                if rec.shipped.is_none() {
                    rec.shipped = Some((ts, *qty));
                    Arc::make_mut(&mut rec.dims).carrier = Some(carrier.clone());
                    let mut f = Fact::new(FactKind::Shipment, ts, rec.dims.clone());
                    if let Some(c) = &rec.created {
                        f.set_field(FactField::OrderToShipMs, ts - c.ts);
                        if let Some(route) = route_of(&rec.dims) {
                            out.risk.push(RiskUpdate {
                                tick,
                                route,
                                input: RiskInput::Shipped {
                                    order_to_ship_ms: ts - c.ts,
                                },
                            });
                        }
                    }
                    out.facts.push(f);
                    if rec.in_backlog {
                        rec.in_backlog = false;
                        backlog_change = -1;
                    }
                    if dev.fulfillment_gap.enabled {
                        let transit = rec
                            .created
                            .as_ref()
                            .map_or(spec.service_levels.default.transit.ms(), |c| c.transit_ms);
                        let window =
                            (transit as f64 * dev.fulfillment_gap.transit_factor).round() as i64;
                        timers.push((ts + window, TimerKind::Gap));
                    }
                }
            }
            EventBody::CarrierCheckpoint => rec.exception_open = false,
            EventBody::OutForDelivery => {
                rec.exception_open = false;
                rec.out_for_delivery = true;
            }
            EventBody::CarrierException { reason } => {
                out.facts
                    .push(Fact::new(FactKind::Exception, ts, rec.dims.clone()));
                if !rec.exception_open {
                    rec.exception_open = true;
                    rec.exceptions_fired += 1;
                    if dev.carrier_exception.enabled {
                        let n = rec.exceptions_fired;
                        out.deviations.push(order_deviation(
                            DeviationType::CarrierException,
                            dev.carrier_exception.severity,
                            format!("carrier_exception:{order_id}:{n}"),
                            order_id,
                            rec,
                            ts,
                            vec![("exception", n as f64)],
                            format!("carrier exception on order {order_id}: {reason}"),
                        ));
                    }
                }
            }
            EventBody::Delivered { qty } => {
                if rec.delivered_ts.is_none() {
                    rec.delivered_ts = Some(ts);
                    rec.exception_open = false;
                    // A delivery without a shipped event still means it left the warehouse.
                    if rec.in_backlog {
                        rec.in_backlog = false;
                        backlog_change = -1;
                    }
                    let delivered_qty = qty.or(rec.shipped.and_then(|s| s.1));
                    let mut f = Fact::new(FactKind::Delivery, ts, rec.dims.clone());
                    if let Some(c) = &rec.created {
                        let on_time = ts <= c.promised_ts;
                        f.set_flag(FactFlag::HasPromise, true)
                            .set_flag(FactFlag::OnTime, on_time)
                            .set_flag(FactFlag::Late, !on_time);
                        f.set_field(FactField::DelayMs, ts - c.promised_ts)
                            .set_field(FactField::OrderToDeliveryMs, ts - c.ts);
                    }
                    let transit = rec.shipped.map(|(s, _)| ts - s);
                    if let Some(t) = transit {
                        f.set_field(FactField::TransitMs, t);
                    }
                    if let Some(q) = delivered_qty {
                        f.set_field(FactField::Qty, q as i64);
                    }
                    let ordered = rec.created.as_ref().and_then(|c| c.qty);
                    if let (Some(o), Some(d)) = (ordered, delivered_qty) {
                        let in_full = d >= o;
                        f.set_flag(FactFlag::HasQty, true)
                            .set_flag(FactFlag::InFull, in_full);
                        f.set_flag(FactFlag::Otif, in_full && f.flag(FactFlag::OnTime));
                        if !in_full && dev.partial_delivery.enabled {
                            out.deviations.push(order_deviation(
                                DeviationType::PartialDelivery,
                                dev.partial_delivery.severity,
                                format!("partial_delivery:{order_id}"),
                                order_id,
                                rec,
                                ts,
                                vec![("ordered_qty", o as f64), ("delivered_qty", d as f64)],
                                format!("order {order_id} delivered {d} of {o} units"),
                            ));
                        }
                    }
                    if let (Some(c), Some(route)) = (&rec.created, route_of(&rec.dims)) {
                        out.risk.push(RiskUpdate {
                            tick,
                            route,
                            input: RiskInput::Delivered {
                                late: ts > c.promised_ts,
                                transit_ms: transit,
                            },
                        });
                    }
                    out.facts.push(f);
                }
            }
            EventBody::DeliveryFailed { .. } => {}
            EventBody::RefundRequested { reason, amount }
            | EventBody::ReturnRequested { reason, amount } => {
                let is_return = matches!(e.body, EventBody::ReturnRequested { .. });
                let mut f = Fact::new(FactKind::Refund, ts, rec.dims.clone());
                f.set_field(FactField::AmountCents, cents(*amount))
                    .set_flag(FactFlag::IsReturn, is_return);
                out.facts.push(f);
                let rule = &dev.refund_requested;
                if rule.enabled {
                    let severity = if *amount >= rule.critical_amount {
                        Severity::Critical
                    } else {
                        rule.severity
                    };
                    let what = if is_return { "return" } else { "refund" };
                    out.deviations.push(order_deviation(
                        DeviationType::RefundRequested,
                        severity,
                        format!("refund_requested:{order_id}:{}", e.event_id),
                        order_id,
                        rec,
                        ts,
                        vec![("amount", *amount), ("is_return", is_return as u8 as f64)],
                        format!("{what} of {amount:.2} requested for order {order_id}: {reason}"),
                    ));
                }
            }
            EventBody::TicketRaised { reason } => {
                out.facts
                    .push(Fact::new(FactKind::Ticket, ts, rec.dims.clone()));
                if dev.ticket_raised.enabled {
                    out.deviations.push(order_deviation(
                        DeviationType::TicketRaised,
                        dev.ticket_raised.severity,
                        format!("ticket_raised:{order_id}:{}", e.event_id),
                        order_id,
                        rec,
                        ts,
                        vec![],
                        format!(
                            "ticket raised on order {order_id}{}",
                            reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
            EventBody::Cancelled { .. } => {
                if rec.cancelled_ts.is_none() {
                    rec.cancelled_ts = Some(ts);
                    out.facts
                        .push(Fact::new(FactKind::Cancel, ts, rec.dims.clone()));
                    if rec.in_backlog {
                        rec.in_backlog = false;
                        backlog_change = -1;
                    }
                }
            }
        }
        if backlog_change != 0 {
            let dims = rec.dims.clone();
            self.emit_backlog(tick, &dims, backlog_change, out);
        }
        // One pending retention check per record: a new one only when the deadline moves earlier
        // (the order finished); a check that finds the deadline moved later re-arms itself.
        let deadline = self.retention_deadline(&self.orders[&e.order_id]);
        let rec = self.orders.get_mut(&e.order_id).expect("present");
        let generation = rec.generation;
        if rec.retention_check.is_none_or(|at| deadline < at) {
            rec.retention_check = Some(deadline);
            timers.push((deadline, TimerKind::Retention));
        }
        for (deadline, kind) in timers {
            self.schedule(deadline, kind, &e.order_id, generation);
        }
    }

    fn emit_backlog(&self, tick: u64, dims: &Dims, diff: isize, out: &mut OrderOutputs) {
        for (kpi, sets) in &self.gauges {
            for (set_index, set) in sets.iter().enumerate() {
                let labels: Option<Labels> = set.iter().map(|d| dims.get(*d).cloned()).collect();
                if let Some(labels) = labels {
                    out.backlog
                        .push(((*kpi, set_index as u16, labels), tick, diff));
                }
            }
        }
    }

    fn emit_risk_state(&mut self, tick: u64, order_id: &CompactString, out: &mut OrderOutputs) {
        let Some(rec) = self.orders.get_mut(order_id) else {
            return;
        };
        let Some(c) = &rec.created else { return };
        let Some(route) = route_of(&rec.dims) else {
            return;
        };
        if rec.finished() {
            if rec.risk_open {
                rec.risk_open = false;
                out.risk.push(RiskUpdate {
                    tick,
                    route,
                    input: RiskInput::Closed {
                        order_id: order_id.clone(),
                    },
                });
            }
            return;
        }
        rec.risk_open = true;
        let snapshot = RiskSnapshot {
            created_ts: c.ts,
            promised_ts: c.promised_ts,
            shipped_ts: rec.shipped.map(|s| s.0),
            out_for_delivery: rec.out_for_delivery,
            open_exceptions: rec.exception_open as u32,
            payment_failed_open: rec.payment_failed_open,
        };
        let input = RiskInput::Open {
            order_id: order_id.clone(),
            snapshot,
            dims: rec.dims.clone(),
            now: rec.last_ts,
            ship_within_ms: c.ship_within_ms,
            transit_ms: c.transit_ms,
        };
        out.risk.push(RiskUpdate { tick, route, input });
    }

    fn fire_timer(
        &mut self,
        tick: u64,
        deadline: i64,
        kind: TimerKind,
        order_id: &CompactString,
        out: &mut OrderOutputs,
    ) {
        let Some(rec) = self.orders.get(order_id) else {
            return;
        };
        let open_at = |r: &OrderRecord| r.cancelled_ts.is_none_or(|c| c > deadline);
        let dev = &self.spec.deviations;
        match kind {
            TimerKind::ShipBy => {
                let Some(c) = rec.created.as_ref() else {
                    return;
                };
                if open_at(rec)
                    && rec.shipped.is_none_or(|s| s.0 > deadline)
                    && rec.delivered_ts.is_none_or(|d| d > deadline)
                {
                    out.deviations.push(order_deviation(
                        DeviationType::SlaShipBreach,
                        dev.sla_ship.severity,
                        format!("sla_ship_breach:{order_id}"),
                        order_id,
                        rec,
                        deadline,
                        vec![
                            ("ship_within_hours", c.ship_within_ms as f64 / 3.6e6),
                            ("hours_since_order", (deadline - c.ts) as f64 / 3.6e6),
                        ],
                        format!(
                            "order {order_id} not shipped within {:.0} h of creation",
                            c.ship_within_ms as f64 / 3.6e6
                        ),
                    ));
                }
            }
            TimerKind::Delivery => {
                if open_at(rec) && rec.delivered_ts.is_none_or(|d| d > deadline) {
                    let promised = rec.created.as_ref().map_or(deadline, |c| c.promised_ts);
                    out.deviations.push(order_deviation(
                        DeviationType::SlaDeliveryBreach,
                        dev.sla_delivery.severity,
                        format!("sla_delivery_breach:{order_id}"),
                        order_id,
                        rec,
                        deadline,
                        vec![
                            ("promised_ts", promised as f64),
                            ("grace_hours", dev.sla_delivery.grace.ms() as f64 / 3.6e6),
                        ],
                        format!(
                            "order {order_id} not delivered by its promise (+{} grace)",
                            dev.sla_delivery.grace.ms() / 60_000
                        ),
                    ));
                }
            }
            TimerKind::Gap => {
                if open_at(rec) && rec.delivered_ts.is_none_or(|d| d > deadline) {
                    let shipped = rec.shipped.map_or(deadline, |s| s.0);
                    out.facts
                        .push(Fact::new(FactKind::Gap, deadline, rec.dims.clone()));
                    out.deviations.push(order_deviation(
                        DeviationType::FulfillmentGap,
                        dev.fulfillment_gap.severity,
                        format!("fulfillment_gap:{order_id}"),
                        order_id,
                        rec,
                        deadline,
                        vec![("hours_in_transit", (deadline - shipped) as f64 / 3.6e6)],
                        format!("order {order_id} shipped but not delivered within the expected transit window"),
                    ));
                }
            }
            TimerKind::Retention => {
                let current = self.retention_deadline(rec);
                if self.clock.tick_of(current) > tick {
                    // The order had events since; check again at its new deadline, unless an
                    // earlier check is already pending.
                    if rec.retention_check == Some(deadline) {
                        let generation = rec.generation;
                        self.orders
                            .get_mut(order_id)
                            .expect("present")
                            .retention_check = Some(current);
                        self.schedule(current, TimerKind::Retention, order_id, generation);
                    }
                } else {
                    let rec = self.orders.remove(order_id).expect("present");
                    self.event_ids -= rec.seen.len();
                    if rec.in_backlog {
                        self.emit_backlog(tick, &rec.dims, -1, out);
                    }
                    if rec.risk_open {
                        if let Some(route) = route_of(&rec.dims) {
                            out.risk.push(RiskUpdate {
                                tick,
                                route,
                                input: RiskInput::Closed {
                                    order_id: order_id.clone(),
                                },
                            });
                        }
                    }
                }
            }
        }
    }
}

fn route_of(d: &Dims) -> Option<Route> {
    Some((
        d.region.clone()?,
        d.ship_mode.clone()?,
        d.warehouse.clone()?,
    ))
}

/// The dims of an order as deviation context.
pub fn dims_context(d: &Dims) -> Context {
    use crate::model::facts::Dimension;
    Dimension::ALL
        .iter()
        .filter_map(|dim| {
            d.get(*dim)
                .map(|v| (CompactString::const_new(dim.as_str()), v.clone()))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn order_deviation(
    kind: DeviationType,
    severity: Severity,
    id: String,
    order_id: &str,
    rec: &OrderRecord,
    event_time: i64,
    mut evidence: Vec<(&'static str, f64)>,
    summary: String,
) -> Deviation {
    // What every agent needs to know about the order: its value and, once delivered, how long
    // ago (the refund tiers count days since delivery).
    if let Some(c) = &rec.created {
        evidence.push(("order_value", c.amount_cents as f64 / 100.0));
    }
    if let Some(delivered) = rec.delivered_ts {
        evidence.push((
            "days_since_delivery",
            ((event_time - delivered).max(0) / 86_400_000) as f64,
        ));
    }
    Deviation {
        id,
        kind,
        severity,
        order_id: Some(order_id.to_string()),
        context: dims_context(&rec.dims),
        evidence: evidence
            .into_iter()
            .map(|(k, v)| (CompactString::const_new(k), v))
            .collect(),
        summary,
        event_time,
        detected_at: crate::dataflow::wall_clock_ms(),
    }
}
