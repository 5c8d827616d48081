//! Oracle step 2 (SEMANTICS sections 1-4): every order simulated on its own, tick by tick.
//!
//! In: accepted events. Out: facts (all but risk), order deviations (all but predicted_delay),
//! backlog level changes per tick, each record's risk updates (its state after every tick with
//! events, and when it was retired) and the duplicate count.
//!
//! At a tick `t` of one order: its events with `tick_of(ts) = t` in `(ts, event_id, type ordinal)`
//! order, then its timers due at `t` in `(deadline, rule)` order, then the retention check. The
//! ticks visited are the union of event ticks, timer ticks and the retention tick.

use std::collections::{BTreeMap, HashSet};

use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::risk_model::RiskSnapshot;
use fulfillment_ai::model::facts::{cents, Dims, Fact, FactField, FactFlag, FactKind};
use fulfillment_ai::model::records::{dims_key, Context};
use fulfillment_ai::model::{Deviation, DeviationType, EventBody, EventType, OrderEvent};

use super::ingest::Accepted;
use super::tick_of;

/// A backlog level change: the order's dims, the tick, +1 or -1.
#[derive(Clone, Debug)]
pub struct BacklogChange {
    pub dims: Dims,
    pub tick: i64,
    pub delta: i64,
}

/// What the risk stage learns about an order record at a tick where it had events: its state
/// after them.
#[derive(Clone, Debug)]
pub struct RiskUpdate {
    pub tick: i64,
    /// ts of the record's last event in the tick.
    pub now: i64,
    /// Created, not finished (so scored).
    pub open: bool,
    /// Present when created.
    pub snapshot: Option<RiskSnapshot>,
    /// (region, ship_mode, warehouse), present when created.
    pub route: Option<(String, String, String)>,
    pub ship_within_ms: i64,
    pub transit_ms: i64,
    pub dims: Dims,
}

/// The risk-relevant history of one order record (one incarnation of an order id).
#[derive(Clone, Debug)]
pub struct RiskTrack {
    pub order_id: String,
    pub generation: u32,
    pub updates: Vec<RiskUpdate>,
    /// The tick at whose end the record was retired.
    pub retired_tick: Option<i64>,
}

#[derive(Default)]
pub struct Simulated {
    pub facts: Vec<Fact>,
    pub deviations: Vec<Deviation>,
    pub backlog_changes: Vec<BacklogChange>,
    pub risk_tracks: Vec<RiskTrack>,
    pub duplicates: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    Ship,
    Delivery,
    Gap,
}

#[derive(Clone, Copy, Debug)]
struct Timer {
    due_tick: i64,
    deadline: i64,
    rule: Rule,
}

#[derive(Clone, Debug)]
struct Created {
    created_ts: i64,
    promised_ts: i64,
    qty: Option<u32>,
    amount_cents: i64,
}

/// One live order record.
struct Record {
    generation: u32,
    /// Index of the record's entry in `Simulated::risk_tracks`.
    track: usize,
    dims: Dims,
    created: Option<Created>,
    shipped_ts: Option<i64>,
    shipped_qty: Option<u32>,
    delivered_ts: Option<i64>,
    cancelled_ts: Option<i64>,
    payment_failure_open: bool,
    payment_failures: u32,
    exception_open: bool,
    exceptions: u32,
    out_for_delivery: bool,
    in_backlog: bool,
    seen: HashSet<String>,
    last_ts: i64,
    timers: Vec<Timer>,
}

impl Record {
    fn new(generation: u32, track: usize) -> Record {
        Record {
            generation,
            track,
            dims: Dims::default(),
            created: None,
            shipped_ts: None,
            shipped_qty: None,
            delivered_ts: None,
            cancelled_ts: None,
            payment_failure_open: false,
            payment_failures: 0,
            exception_open: false,
            exceptions: 0,
            out_for_delivery: false,
            in_backlog: false,
            seen: HashSet::new(),
            last_ts: 0,
            timers: Vec::new(),
        }
    }
    fn finished(&self) -> bool {
        self.delivered_ts.is_some() || self.cancelled_ts.is_some()
    }
    /// Open for risk scoring: created and not finished (a retired record no longer exists).
    fn open_for_risk(&self) -> bool {
        self.created.is_some() && !self.finished()
    }
    /// Not cancelled by the deadline.
    fn open_at(&self, deadline: i64) -> bool {
        !matches!(self.cancelled_ts, Some(c) if c <= deadline)
    }
    fn retention_ms(&self, spec: &PipelineSpec) -> i64 {
        if self.finished() {
            spec.retention.finished.ms()
        } else {
            spec.retention.idle_open.ms()
        }
    }
}

/// The context map of a per-order deviation: the order's known dims.
pub fn dims_map(d: &Dims) -> Context {
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("region", &d.region),
        ("ship_mode", &d.ship_mode),
        ("warehouse", &d.warehouse),
        ("segment", &d.segment),
        ("carrier", &d.carrier),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.as_str().into());
        }
    }
    m
}

pub fn deviation(
    id: String,
    kind: DeviationType,
    severity: Severity,
    order_id: Option<&str>,
    context: Context,
    event_time: i64,
) -> Deviation {
    Deviation {
        summary: format!("{} ({})", kind.as_str(), dims_key(&context)),
        id,
        kind,
        severity,
        order_id: order_id.map(str::to_string),
        context,
        evidence: BTreeMap::new(),
        event_time,
        detected_at: 0,
    }
}

struct Sim<'a> {
    spec: &'a PipelineSpec,
    out: Simulated,
}

pub fn simulate(spec: &PipelineSpec, accepted: &[Accepted]) -> Simulated {
    let mut by_order: BTreeMap<&str, Vec<&OrderEvent>> = BTreeMap::new();
    for a in accepted {
        by_order
            .entry(a.event.order_id.as_str())
            .or_default()
            .push(&a.event);
    }
    let mut sim = Sim {
        spec,
        out: Simulated::default(),
    };
    for (order_id, mut events) in by_order {
        events.sort_by(|a, b| {
            let ka = (a.ts, a.event_id.as_str(), type_ordinal(a.event_type()));
            let kb = (b.ts, b.event_id.as_str(), type_ordinal(b.event_type()));
            ka.cmp(&kb)
        });
        sim.order(order_id, &events);
    }
    sim.out
}

fn type_ordinal(t: EventType) -> usize {
    EventType::ALL
        .iter()
        .position(|x| *x == t)
        .expect("every type is in ALL")
}

impl Sim<'_> {
    fn tick(&self, ts: i64) -> i64 {
        tick_of(self.spec, ts)
    }

    /// The next tick after `t` at which anything happens to the record.
    fn next_record_tick(&self, r: &Record, t: i64) -> i64 {
        let mut next = self.tick(r.last_ts + r.retention_ms(self.spec));
        for timer in &r.timers {
            next = next.min(timer.due_tick);
        }
        next.max(t + 1)
    }

    fn order(&mut self, order_id: &str, events: &[&OrderEvent]) {
        let mut i = 0;
        let mut rec: Option<Record> = None;
        let mut generation = 0u32;
        let mut last_tick: Option<i64> = None;
        loop {
            let next_event = events.get(i).map(|e| self.tick(e.ts));
            let next_rec = rec.as_ref().map(|r| {
                self.next_record_tick(r, last_tick.expect("a record exists only after a tick"))
            });
            let t = match (next_event, next_rec) {
                (None, None) => break,
                (Some(a), None) | (None, Some(a)) => a,
                (Some(a), Some(b)) => a.min(b),
            };
            if let Some(prev) = last_tick {
                assert!(t > prev, "oracle bug: tick {t} after {prev} for {order_id}");
            }
            last_tick = Some(t);

            // 1. Events of this tick.
            let mut last_event_ts = None;
            while i < events.len() && self.tick(events[i].ts) == t {
                let e = events[i];
                i += 1;
                let r = rec.get_or_insert_with(|| {
                    generation += 1;
                    self.out.risk_tracks.push(RiskTrack {
                        order_id: order_id.to_string(),
                        generation,
                        updates: Vec::new(),
                        retired_tick: None,
                    });
                    Record::new(generation, self.out.risk_tracks.len() - 1)
                });
                if !r.seen.insert(e.event_id.to_string()) {
                    self.out.duplicates += 1;
                    continue;
                }
                r.last_ts = e.ts;
                last_event_ts = Some(e.ts);
                self.apply(order_id, r, e, t);
            }
            let Some(r) = rec.as_mut() else { continue };
            // 2. Timers due at this tick, by deadline then rule.
            loop {
                let due = r
                    .timers
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.due_tick <= t)
                    .min_by_key(|(_, x)| (x.deadline, x.rule));
                let Some((k, _)) = due else { break };
                let timer = r.timers.remove(k);
                self.fire(order_id, r, timer);
            }
            // 3. The risk stage learns the state after this tick's events.
            if let Some(now) = last_event_ts {
                self.risk_update(r, t, now);
            }
            // 4. Retention.
            if self.tick(r.last_ts + r.retention_ms(self.spec)) <= t {
                if r.in_backlog {
                    self.backlog(&r.dims, t, -1);
                }
                self.out.risk_tracks[r.track].retired_tick = Some(t);
                rec = None;
            }
        }
    }

    fn risk_update(&mut self, r: &Record, t: i64, now: i64) {
        let level = self
            .spec
            .service_levels
            .for_mode(r.dims.ship_mode.as_deref().unwrap_or_default());
        let snapshot = r.created.as_ref().map(|c| RiskSnapshot {
            created_ts: c.created_ts,
            promised_ts: c.promised_ts,
            shipped_ts: r.shipped_ts,
            out_for_delivery: r.out_for_delivery,
            open_exceptions: r.exception_open as u32,
            payment_failed_open: r.payment_failure_open,
        });
        let update = RiskUpdate {
            tick: t,
            now,
            open: r.open_for_risk(),
            snapshot,
            route: route_of(&r.dims).filter(|_| r.created.is_some()),
            ship_within_ms: level.ship_within.ms(),
            transit_ms: level.transit.ms(),
            dims: r.dims.clone(),
        };
        self.out.risk_tracks[r.track].updates.push(update);
    }

    fn backlog(&mut self, dims: &Dims, tick: i64, delta: i64) {
        self.out.backlog_changes.push(BacklogChange {
            dims: dims.clone(),
            tick,
            delta,
        });
    }

    fn fact(&mut self, kind: FactKind, ts: i64, r: &Record) -> &mut Fact {
        self.out
            .facts
            .push(Fact::new(kind, ts, r.dims.clone().into()));
        self.out.facts.last_mut().expect("just pushed")
    }

    fn order_deviation(
        &mut self,
        id: String,
        kind: DeviationType,
        severity: Severity,
        order_id: &str,
        r: &Record,
        event_time: i64,
    ) {
        self.out.deviations.push(deviation(
            id,
            kind,
            severity,
            Some(order_id),
            dims_map(&r.dims),
            event_time,
        ));
    }

    fn schedule(&self, r: &mut Record, t: i64, deadline: i64, rule: Rule) {
        // A deadline already in the past when scheduled is due at the current tick.
        r.timers.push(Timer {
            due_tick: self.tick(deadline).max(t),
            deadline,
            rule,
        });
    }

    fn apply(&mut self, order_id: &str, r: &mut Record, e: &OrderEvent, t: i64) {
        let spec = self.spec;
        let dev = &spec.deviations;
        let ts = e.ts;
        match &e.body {
            EventBody::OrderCreated(c) => {
                if r.created.is_some() {
                    return;
                }
                r.dims.region = Some(c.region.clone());
                r.dims.ship_mode = Some(c.ship_mode.clone());
                r.dims.warehouse = Some(c.warehouse.clone());
                r.dims.segment = Some(c.segment.clone());
                r.created = Some(Created {
                    created_ts: ts,
                    promised_ts: c.promised_delivery_ts,
                    qty: c.qty,
                    amount_cents: cents(c.amount),
                });
                let level = spec.service_levels.for_mode(&c.ship_mode);
                self.schedule(r, t, ts + level.ship_within.ms(), Rule::Ship);
                self.schedule(
                    r,
                    t,
                    c.promised_delivery_ts + dev.sla_delivery.grace.ms(),
                    Rule::Delivery,
                );
                if r.shipped_ts.is_none() && r.cancelled_ts.is_none() && r.delivered_ts.is_none() {
                    r.in_backlog = true;
                    self.backlog(&r.dims, t, 1);
                }
                let f = self.fact(FactKind::Order, ts, r);
                f.set_field(FactField::AmountCents, cents(c.amount));
                if let Some(q) = c.qty {
                    f.set_field(FactField::Qty, q as i64);
                }
            }
            EventBody::PaymentAuthorized | EventBody::PaymentFailed { .. } => {
                let failed = matches!(e.body, EventBody::PaymentFailed { .. });
                if failed {
                    if !r.payment_failure_open {
                        r.payment_failure_open = true;
                        r.payment_failures += 1;
                        if dev.payment_failed.enabled {
                            let id = format!("payment_failed:{order_id}:{}", r.payment_failures);
                            self.order_deviation(
                                id,
                                DeviationType::PaymentFailed,
                                dev.payment_failed.severity,
                                order_id,
                                r,
                                ts,
                            );
                        }
                    }
                } else {
                    r.payment_failure_open = false;
                }
                let amount = r.created.as_ref().map(|c| c.amount_cents);
                let f = self.fact(FactKind::Payment, ts, r);
                f.set_flag(FactFlag::Failed, failed);
                if let Some(a) = amount {
                    f.set_field(FactField::AmountCents, a);
                }
            }
            EventBody::Shipped { carrier, qty, .. } => {
                if r.shipped_ts.is_some() {
                    return;
                }
                r.shipped_ts = Some(ts);
                r.shipped_qty = *qty;
                r.dims.carrier = Some(carrier.clone());
                if r.in_backlog {
                    r.in_backlog = false;
                    self.backlog(&r.dims, t, -1);
                }
                let transit = spec
                    .service_levels
                    .for_mode(r.dims.ship_mode.as_deref().unwrap_or_default())
                    .transit
                    .ms();
                let gap_deadline =
                    ts + (transit as f64 * dev.fulfillment_gap.transit_factor).round() as i64;
                self.schedule(r, t, gap_deadline, Rule::Gap);
                let to_ship = r.created.as_ref().map(|c| ts - c.created_ts);
                let f = self.fact(FactKind::Shipment, ts, r);
                if let Some(ms) = to_ship {
                    f.set_field(FactField::OrderToShipMs, ms);
                }
            }
            EventBody::CarrierCheckpoint => r.exception_open = false,
            EventBody::OutForDelivery => {
                r.exception_open = false;
                r.out_for_delivery = true;
            }
            EventBody::CarrierException { .. } => {
                if !r.exception_open {
                    r.exception_open = true;
                    r.exceptions += 1;
                    if dev.carrier_exception.enabled {
                        let id = format!("carrier_exception:{order_id}:{}", r.exceptions);
                        self.order_deviation(
                            id,
                            DeviationType::CarrierException,
                            dev.carrier_exception.severity,
                            order_id,
                            r,
                            ts,
                        );
                    }
                }
                self.fact(FactKind::Exception, ts, r);
            }
            EventBody::Delivered { qty } => {
                if r.delivered_ts.is_some() {
                    return;
                }
                r.delivered_ts = Some(ts);
                r.exception_open = false;
                if r.in_backlog {
                    r.in_backlog = false;
                    self.backlog(&r.dims, t, -1);
                }
                let delivered_qty = qty.or(r.shipped_qty);
                let created = r.created.clone();
                let shipped_ts = r.shipped_ts;
                let f = self.fact(FactKind::Delivery, ts, r);
                let mut on_time = false;
                if let Some(c) = &created {
                    on_time = ts <= c.promised_ts;
                    f.set_flag(FactFlag::HasPromise, true);
                    f.set_flag(FactFlag::OnTime, on_time);
                    f.set_flag(FactFlag::Late, !on_time);
                    f.set_field(FactField::DelayMs, ts - c.promised_ts);
                    f.set_field(FactField::OrderToDeliveryMs, ts - c.created_ts);
                }
                if let Some(s) = shipped_ts {
                    f.set_field(FactField::TransitMs, ts - s);
                }
                if let Some(q) = delivered_qty {
                    f.set_field(FactField::Qty, q as i64);
                }
                let ordered = created.as_ref().and_then(|c| c.qty);
                if let (Some(o), Some(d)) = (ordered, delivered_qty) {
                    let in_full = d >= o;
                    f.set_flag(FactFlag::HasQty, true);
                    f.set_flag(FactFlag::InFull, in_full);
                    f.set_flag(FactFlag::Otif, on_time && in_full);
                    if d < o && dev.partial_delivery.enabled {
                        let id = format!("partial_delivery:{order_id}");
                        self.order_deviation(
                            id,
                            DeviationType::PartialDelivery,
                            dev.partial_delivery.severity,
                            order_id,
                            r,
                            ts,
                        );
                    }
                }
            }
            EventBody::DeliveryFailed { .. } => {}
            EventBody::RefundRequested { amount, .. }
            | EventBody::ReturnRequested { amount, .. } => {
                let is_return = matches!(e.body, EventBody::ReturnRequested { .. });
                let f = self.fact(FactKind::Refund, ts, r);
                f.set_field(FactField::AmountCents, cents(*amount));
                f.set_flag(FactFlag::IsReturn, is_return);
                let rule = &dev.refund_requested;
                if rule.enabled {
                    let severity = if *amount >= rule.critical_amount {
                        Severity::Critical
                    } else {
                        rule.severity
                    };
                    let id = format!("refund_requested:{order_id}:{}", e.event_id);
                    self.order_deviation(
                        id,
                        DeviationType::RefundRequested,
                        severity,
                        order_id,
                        r,
                        ts,
                    );
                }
            }
            EventBody::TicketRaised { .. } => {
                self.fact(FactKind::Ticket, ts, r);
                if dev.ticket_raised.enabled {
                    let id = format!("ticket_raised:{order_id}:{}", e.event_id);
                    self.order_deviation(
                        id,
                        DeviationType::TicketRaised,
                        dev.ticket_raised.severity,
                        order_id,
                        r,
                        ts,
                    );
                }
            }
            EventBody::Cancelled { .. } => {
                if r.cancelled_ts.is_some() {
                    return;
                }
                r.cancelled_ts = Some(ts);
                if r.in_backlog {
                    r.in_backlog = false;
                    self.backlog(&r.dims, t, -1);
                }
                self.fact(FactKind::Cancel, ts, r);
            }
        }
    }

    fn fire(&mut self, order_id: &str, r: &Record, timer: Timer) {
        let dev = &self.spec.deviations;
        let d = timer.deadline;
        if !r.open_at(d) {
            return;
        }
        match timer.rule {
            Rule::Ship => {
                let shipped_in_time = matches!(r.shipped_ts, Some(s) if s <= d)
                    || matches!(r.delivered_ts, Some(x) if x <= d);
                if r.created.is_some() && !shipped_in_time && dev.sla_ship.enabled {
                    let id = format!("sla_ship_breach:{order_id}");
                    self.order_deviation(
                        id,
                        DeviationType::SlaShipBreach,
                        dev.sla_ship.severity,
                        order_id,
                        r,
                        d,
                    );
                }
            }
            Rule::Delivery | Rule::Gap => {
                if matches!(r.delivered_ts, Some(x) if x <= d) {
                    return;
                }
                if timer.rule == Rule::Delivery {
                    if dev.sla_delivery.enabled {
                        let id = format!("sla_delivery_breach:{order_id}");
                        self.order_deviation(
                            id,
                            DeviationType::SlaDeliveryBreach,
                            dev.sla_delivery.severity,
                            order_id,
                            r,
                            d,
                        );
                    }
                } else {
                    if dev.fulfillment_gap.enabled {
                        let id = format!("fulfillment_gap:{order_id}");
                        self.order_deviation(
                            id,
                            DeviationType::FulfillmentGap,
                            dev.fulfillment_gap.severity,
                            order_id,
                            r,
                            d,
                        );
                    }
                    self.fact(FactKind::Gap, d, r);
                }
            }
        }
    }
}

/// (region, ship_mode, warehouse) when all are known.
pub fn route_of(d: &Dims) -> Option<(String, String, String)> {
    Some((
        d.region.as_ref()?.to_string(),
        d.ship_mode.as_ref()?.to_string(),
        d.warehouse.as_ref()?.to_string(),
    ))
}
