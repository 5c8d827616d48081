//! The synthetic source: seeded, finite or endless streams of realistic order traffic with
//! injectable incidents, and the order lifecycle model it shares with the Superstore replay.
//!
//! In: a [`GeneratorConfig`] (seed, partitions, order rate, disorder, duplicate and malformed
//! fractions, [`Incident`]s) and the spec's service levels. Out: a [`Source`] of independent keyed
//! partitions (order `g{p}-{n}` lives wholly in partition `p`) of JSON lines with `ts` and
//! `promised_delivery_ts` in epoch milliseconds. Each partition is in event-time order up to
//! `disorder_ms`, and is produced lazily from a schedule of the open orders' pending events, so an
//! endless stream uses bounded memory.
//!
//! The lifecycle model (`simulate`) turns one order into its events: payment (failures, retries,
//! cancellations), shipping on a given day, carrier checkpoints and exceptions, lost parcels, failed
//! delivery attempts, (partial) delivery, tickets (likelier when late) and refund/return requests.
//! Transit depends on ship mode, region and carrier with a late tail; USPS in the South is the weak
//! route. Ship-day distributions per ship mode are the ones observed in the Superstore data.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::memory::MemoryPartitions;
use super::{PartitionReader, PollStatus, RawBatch, Source};
use crate::config::PipelineSpec;

pub(crate) const MINUTE: i64 = 60_000;
pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 86_400_000;

pub const REGIONS: [&str; 4] = ["West", "East", "Central", "South"];
pub const SHIP_MODES: [&str; 4] = ["Standard Class", "Second Class", "First Class", "Same Day"];
pub const SEGMENTS: [&str; 3] = ["Consumer", "Corporate", "Home Office"];
pub const CARRIERS: [&str; 4] = ["UPS", "FedEx", "USPS", "DHL"];
/// Two warehouses per region, indexed like [`REGIONS`].
pub const WAREHOUSES: [[&str; 2]; 4] = [
    ["WH-WEST-1", "WH-WEST-2"],
    ["WH-EAST-1", "WH-EAST-2"],
    ["WH-CENTRAL-1", "WH-CENTRAL-2"],
    ["WH-SOUTH-1", "WH-SOUTH-2"],
];
/// Profile index for a region or ship mode outside the tables.
pub(crate) const OTHER: usize = 4;

const REGION_MIX: [f64; 4] = [0.32, 0.285, 0.23, 0.165];
const MODE_MIX: [f64; 4] = [0.60, 0.19, 0.15, 0.06];
const SEGMENT_MIX: [f64; 3] = [0.52, 0.30, 0.18];
/// Days from order to shipment (0..=7) per ship mode, as in the Superstore data; last row: other.
const SHIP_DAYS: [[f64; 8]; 5] = [
    [0.0, 0.0, 0.0, 0.0, 0.40, 0.30, 0.20, 0.10],
    [0.0, 0.0, 0.39, 0.20, 0.20, 0.21, 0.0, 0.0],
    [0.0, 0.21, 0.38, 0.41, 0.0, 0.0, 0.0, 0.0],
    [0.95, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
];
/// Carrier shares per ship mode (columns as [`CARRIERS`]), then a per-region preference.
const CARRIER_MIX: [[f64; 4]; 5] = [
    [0.35, 0.0, 0.45, 0.20],
    [0.40, 0.25, 0.35, 0.0],
    [0.50, 0.40, 0.0, 0.10],
    [0.40, 0.60, 0.0, 0.0],
    [0.40, 0.30, 0.30, 0.0],
];
const REGION_CARRIER_BIAS: [[f64; 4]; 5] = [
    [1.1, 1.0, 0.9, 1.2],
    [1.0, 1.1, 1.0, 0.9],
    [1.0, 0.9, 1.1, 1.0],
    [0.9, 1.0, 1.3, 0.8],
    [1.0; 4],
];
/// Median transit hours per ship mode, scaled per region and carrier.
const TRANSIT_MEDIAN_H: [f64; 5] = [72.0, 44.0, 26.0, 7.0, 60.0];
const REGION_TRANSIT: [f64; 5] = [1.0, 0.97, 1.05, 1.08, 1.0];
const CARRIER_TRANSIT: [f64; 4] = [0.95, 0.92, 1.08, 1.0];
/// Probability and median length of a major transit delay (calibrated so that, with the service
/// levels of pipelines/fulfillment.yaml, roughly 88% of deliveries keep their promise).
const MAJOR_DELAY_P: f64 = 0.15;
const MAJOR_DELAY_MEDIAN_H: f64 = 100.0;
/// (region, carrier) with a slower median and a much fatter late tail.
const WEAK_ROUTE: (usize, usize) = (3, 2);

const PAYMENT_FAILURES: [&str; 4] = [
    "card declined",
    "insufficient funds",
    "3-D Secure timeout",
    "fraud check failed",
];
const EXCEPTIONS: [&str; 4] = [
    "weather delay",
    "address correction needed",
    "missed hub connection",
    "vehicle breakdown",
];
const DELIVERY_FAILURES: [&str; 3] = [
    "recipient not available",
    "access code required",
    "business closed",
];
const LATE_TICKETS: [&str; 2] = ["where is my order", "delivery is late"];
const OTHER_TICKETS: [&str; 3] = ["invoice question", "damaged packaging", "product question"];
const REFUNDS: [&str; 3] = [
    "damaged item",
    "late delivery compensation",
    "price adjustment",
];
const RETURNS: [&str; 3] = ["wrong size", "not as described", "changed mind"];

/// One step of an order's life, as the lifecycle model produces it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Step {
    Created,
    PaymentAuthorized,
    PaymentFailed(&'static str),
    Shipped,
    Checkpoint,
    Exception(&'static str),
    OutForDelivery,
    DeliveryFailed(&'static str),
    Delivered(u32),
    Refund(&'static str, f64),
    Return(&'static str, f64),
    Ticket(&'static str),
    Cancelled(&'static str),
}

impl Step {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Step::Created => "order_created",
            Step::PaymentAuthorized => "payment_authorized",
            Step::PaymentFailed(_) => "payment_failed",
            Step::Shipped => "shipped",
            Step::Checkpoint => "carrier_checkpoint",
            Step::Exception(_) => "carrier_exception",
            Step::OutForDelivery => "out_for_delivery",
            Step::DeliveryFailed(_) => "delivery_failed",
            Step::Delivered(_) => "delivered",
            Step::Refund(..) => "refund_requested",
            Step::Return(..) => "return_requested",
            Step::Ticket(_) => "ticket_raised",
            Step::Cancelled(_) => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SimEvent {
    pub ts: i64,
    pub step: Step,
}

/// What the lifecycle model needs to know about an order.
pub(crate) struct Plan {
    pub created_ts: i64,
    /// Index into [`SHIP_MODES`] / [`REGIONS`], or [`OTHER`].
    pub mode: usize,
    pub region: usize,
    /// Service level of the ship mode: (ship_within, transit) in ms.
    pub service: (i64, i64),
    pub qty: u32,
    pub amount: f64,
    /// Epoch day on which the warehouse ships the order.
    pub ship_day: i64,
}

/// Per-order choices of the model that the events' fields need.
pub(crate) struct Outcome {
    pub promised_ts: i64,
    pub carrier: usize,
    pub tracking: u64,
}

/// External trouble (incidents) layered over the model.
pub(crate) trait Disruptions {
    /// Extra delay of a shipment planned at `planned_ts`.
    fn ship_delay(&self, _planned_ts: i64) -> i64 {
        0
    }
    /// `(exception ts, extra transit)` for a parcel in transit `[shipped, arrival)`, if disrupted.
    fn transit_delay(
        &self,
        _rng: &mut ChaCha8Rng,
        _carrier: usize,
        _shipped: i64,
        _arrival: i64,
    ) -> Option<(i64, i64)> {
        None
    }
}

pub(crate) struct Undisturbed;
impl Disruptions for Undisturbed {}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.gen::<f64>() < p
}
pub(crate) fn pick<const N: usize>(rng: &mut ChaCha8Rng, weights: &[f64; N]) -> usize {
    let mut x = rng.gen::<f64>() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}
fn one_of<const N: usize>(rng: &mut ChaCha8Rng, items: &[&'static str; N]) -> &'static str {
    items[rng.gen_range(0..N)]
}
fn between(rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> i64 {
    rng.gen_range(lo..=hi.max(lo))
}
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.gen::<f64>();
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
fn exponential(rng: &mut ChaCha8Rng) -> f64 {
    -(1.0 - rng.gen::<f64>()).ln()
}
fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Chooses the carrier of a shipment by ship mode and region.
fn choose_carrier(rng: &mut ChaCha8Rng, mode: usize, region: usize) -> usize {
    let mut w = CARRIER_MIX[mode.min(OTHER)];
    for (w, b) in w.iter_mut().zip(REGION_CARRIER_BIAS[region.min(OTHER)]) {
        *w *= b;
    }
    pick(rng, &w)
}

/// Simulates one order's life into `out` (cleared first), sorted by event time with strictly
/// increasing timestamps, `order_created` first.
pub(crate) fn simulate(
    rng: &mut ChaCha8Rng,
    plan: &Plan,
    dis: &impl Disruptions,
    out: &mut Vec<SimEvent>,
) -> Outcome {
    out.clear();
    let (mode, region) = (plan.mode.min(OTHER), plan.region.min(OTHER));
    let created = plan.created_ts;
    let promised_ts = created + plan.service.0 + plan.service.1;
    let carrier = choose_carrier(rng, mode, region);
    let outcome = Outcome {
        promised_ts,
        carrier,
        tracking: rng.gen(),
    };
    let push = |out: &mut Vec<SimEvent>, ts: i64, step: Step| out.push(SimEvent { ts, step });
    push(out, created, Step::Created);

    // Payment: ~3% fail; most are retried successfully hours later, the rest are cancelled.
    let paid = if chance(rng, 0.03) {
        let failed = created + between(rng, 10_000, 3 * MINUTE);
        push(
            out,
            failed,
            Step::PaymentFailed(one_of(rng, &PAYMENT_FAILURES)),
        );
        if chance(rng, 0.85) {
            let ok = failed + between(rng, HOUR, 12 * HOUR);
            push(out, ok, Step::PaymentAuthorized);
            ok
        } else {
            if chance(rng, 0.3) {
                push(
                    out,
                    failed + between(rng, HOUR, 6 * HOUR),
                    Step::Ticket("payment problem"),
                );
            }
            push(
                out,
                created + between(rng, DAY, 2 * DAY),
                Step::Cancelled("payment not completed"),
            );
            return finish(out, outcome);
        }
    } else {
        let ok = created
            + ((MINUTE as f64 * (0.8 * normal(rng)).exp()) as i64).clamp(5_000, 30 * MINUTE);
        push(out, ok, Step::PaymentAuthorized);
        ok
    };

    // Shipping: on the ship day in working hours, never before payment (+ handling time).
    let planned = (plan.ship_day * DAY + between(rng, 8 * HOUR, 18 * HOUR))
        .max(paid + between(rng, 30 * MINUTE, 2 * HOUR));
    let shipped = planned + dis.ship_delay(planned);
    push(out, shipped, Step::Shipped);

    // Transit: log-normal around the route's median, with a late tail and rare exceptions.
    let weak = (region, carrier) == WEAK_ROUTE;
    let median_h = TRANSIT_MEDIAN_H[mode]
        * REGION_TRANSIT[region]
        * CARRIER_TRANSIT[carrier]
        * if weak { 1.25 } else { 1.0 };
    let mut transit = (median_h * HOUR as f64 * (0.3 * normal(rng)).exp()) as i64;
    // Minor hold-ups (a missed sort, a day in a depot) are mostly absorbed by the promise;
    // major ones (network congestion, a misroute) run for days and usually break it.
    let (minor_p, major_p) = if weak {
        (0.25, MAJOR_DELAY_P * 2.6)
    } else {
        (0.15, MAJOR_DELAY_P)
    };
    if chance(rng, minor_p) {
        transit += (exponential(rng) * 20.0 * HOUR as f64) as i64;
    }
    if chance(rng, major_p) {
        transit += (MAJOR_DELAY_MEDIAN_H * HOUR as f64 * (0.45 * normal(rng)).exp()) as i64;
    }
    transit = transit.max(30 * MINUTE);
    let mut last = shipped;
    if chance(rng, 0.02) {
        let at = shipped + (transit as f64 * rng.gen_range(0.2..0.8)) as i64;
        let delay = between(rng, 12 * HOUR, 72 * HOUR);
        push(out, at, Step::Exception(one_of(rng, &EXCEPTIONS)));
        last = at + between(rng, 2 * HOUR, delay / 2);
        push(out, last, Step::Checkpoint);
        transit += delay;
    }
    if let Some((at, extra)) = dis.transit_delay(rng, carrier, shipped, shipped + transit) {
        let at = at.clamp(shipped + MINUTE, shipped + transit);
        push(out, at, Step::Exception("carrier network disruption"));
        let resumed = at + between(rng, HOUR, (extra / 2).max(HOUR));
        push(out, resumed, Step::Checkpoint);
        last = last.max(resumed);
        transit += extra;
    }

    // ~0.5% of parcels are lost: a ticket after the promise, often a refund request.
    if chance(rng, 0.005) {
        push(
            out,
            shipped + between(rng, 2 * HOUR, 12 * HOUR),
            Step::Checkpoint,
        );
        let ticket = promised_ts.max(shipped) + between(rng, DAY, 4 * DAY);
        push(out, ticket, Step::Ticket("parcel not received"));
        if chance(rng, 0.5) {
            push(
                out,
                ticket + between(rng, DAY, 3 * DAY),
                Step::Refund("item never arrived", cents(plan.amount)),
            );
        }
        return finish(out, outcome);
    }

    let n = (1 + transit / (36 * HOUR)).min(4);
    for i in 0..n {
        let at = shipped
            + (transit as f64 * (i as f64 + 0.5 + rng.gen_range(-0.3..0.3)) / (n + 1) as f64)
                as i64;
        push(out, at, Step::Checkpoint);
        last = last.max(at);
    }
    let mut delivered = shipped + transit;
    let mut ofd = delivered
        - ((transit as f64 * rng.gen_range(0.03..0.2)) as i64).min(between(rng, HOUR, 5 * HOUR));
    if chance(rng, 0.015) {
        ofd = ofd.max(last + MINUTE);
        push(out, ofd, Step::OutForDelivery);
        last = ofd + between(rng, HOUR, 4 * HOUR);
        push(
            out,
            last,
            Step::DeliveryFailed(one_of(rng, &DELIVERY_FAILURES)),
        );
        delivered = last + between(rng, 18 * HOUR, 26 * HOUR);
        ofd = delivered - between(rng, HOUR, 4 * HOUR);
    }
    ofd = ofd.max(last + MINUTE);
    delivered = delivered.max(ofd + 10 * MINUTE);
    push(out, ofd, Step::OutForDelivery);
    let qty = if plan.qty >= 2 && chance(rng, 0.01) {
        plan.qty - rng.gen_range(1..plan.qty)
    } else {
        plan.qty
    };
    push(out, delivered, Step::Delivered(qty));
    if qty < plan.qty && chance(rng, 0.6) {
        push(
            out,
            delivered + between(rng, 2 * HOUR, 2 * DAY),
            Step::Ticket("missing items"),
        );
    }

    // Tickets (much likelier when late) and refund/return requests after delivery.
    let late = delivered > promised_ts;
    if chance(rng, if late { 0.09 } else { 0.012 }) {
        if late {
            push(
                out,
                promised_ts + between(rng, 2 * HOUR, 30 * HOUR),
                Step::Ticket(one_of(rng, &LATE_TICKETS)),
            );
        } else {
            push(
                out,
                delivered + between(rng, HOUR, 5 * DAY),
                Step::Ticket(one_of(rng, &OTHER_TICKETS)),
            );
        }
    }
    if chance(rng, if late { 0.08 } else { 0.035 }) {
        let at = delivered + between(rng, DAY, 20 * DAY);
        let step = if chance(rng, 0.55) {
            let items = rng.gen_range(1..=plan.qty.max(1));
            Step::Return(
                one_of(rng, &RETURNS),
                cents(plan.amount * items as f64 / plan.qty.max(1) as f64),
            )
        } else {
            Step::Refund(
                one_of(rng, &REFUNDS),
                cents(plan.amount * rng.gen_range(0.1..=1.0)),
            )
        };
        push(out, at, step);
    }
    finish(out, outcome)
}

/// Sorts by event time and makes timestamps strictly increasing (ties pushed 1 s apart).
fn finish(out: &mut [SimEvent], outcome: Outcome) -> Outcome {
    out.sort_by_key(|e| e.ts);
    for i in 1..out.len() {
        if out[i].ts <= out[i - 1].ts {
            out[i].ts = out[i - 1].ts + 1_000;
        }
    }
    outcome
}

// ---------------------------------------------------------------------------------------------
// The generator.

/// Trouble injected into the generated traffic.
#[derive(Clone, Debug, PartialEq)]
pub enum Incident {
    /// Parcels of `carrier` in `region` in transit at any time during `[from_ms, to_ms)` are, with
    /// `probability`, held up by `extra_delay_ms` (with a `carrier network disruption` exception).
    CarrierCollapse {
        carrier: String,
        region: String,
        from_ms: i64,
        to_ms: i64,
        extra_delay_ms: i64,
        probability: f64,
    },
    /// Shipments of `warehouse` planned during `[from_ms, to_ms)` leave `extra_ship_delay_ms` later.
    WarehouseBacklog {
        warehouse: String,
        from_ms: i64,
        to_ms: i64,
        extra_ship_delay_ms: i64,
    },
}

#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub seed: u64,
    pub partitions: u32,
    /// Event time of the start of every partition's stream.
    pub start_ms: i64,
    /// Orders per partition; `None` = endless.
    pub orders_per_partition: Option<u64>,
    /// Mean event-time gap between orders within a partition (exponentially distributed).
    pub order_interval_ms: i64,
    /// Bound of the disorder: an event never arrives after one more than this later in event time.
    pub disorder_ms: i64,
    /// Fraction of events sent twice (the copy arrives later, within the disorder bound).
    pub duplicate_rate: f64,
    /// Fraction of lines replaced by bad input: truncated JSON, `order_created` without
    /// `promised_delivery_ts`, an unparseable `ts`, an unknown `type`.
    pub malformed_rate: f64,
    pub incidents: Vec<Incident>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            partitions: 4,
            start_ms: 1_704_067_200_000, // 2024-01-01T00:00:00Z
            orders_per_partition: Some(10_000),
            order_interval_ms: 10_000,
            disorder_ms: 10 * MINUTE,
            duplicate_rate: 0.0,
            malformed_rate: 0.0,
            incidents: Vec::new(),
        }
    }
}

/// An incident with its names resolved to table indices (`None`: matches nothing).
#[derive(Clone, Debug)]
enum Resolved {
    Collapse {
        carrier: Option<usize>,
        region: Option<usize>,
        from: i64,
        to: i64,
        extra: i64,
        p: f64,
    },
    Backlog {
        warehouse: Option<(usize, usize)>,
        from: i64,
        to: i64,
        extra: i64,
    },
}

struct Model {
    cfg: GeneratorConfig,
    /// (ship_within, transit) per ship mode index, [`OTHER`] = the default level.
    service: [(i64, i64); 5],
    incidents: Vec<Resolved>,
}

/// The synthetic source. Cheap to clone-share: readers hold an `Arc` of the model.
pub struct GeneratorSource {
    model: Arc<Model>,
}

impl GeneratorSource {
    pub fn new(cfg: GeneratorConfig, spec: &PipelineSpec) -> Self {
        let level = |m: &str| {
            let l = spec.service_levels.for_mode(m);
            (l.ship_within.ms(), l.transit.ms())
        };
        let d = &spec.service_levels.default;
        let service = [
            level(SHIP_MODES[0]),
            level(SHIP_MODES[1]),
            level(SHIP_MODES[2]),
            level(SHIP_MODES[3]),
            (d.ship_within.ms(), d.transit.ms()),
        ];
        let find =
            |table: &[&str], name: &str| table.iter().position(|x| x.eq_ignore_ascii_case(name));
        let incidents = cfg
            .incidents
            .iter()
            .map(|i| match i {
                Incident::CarrierCollapse {
                    carrier,
                    region,
                    from_ms,
                    to_ms,
                    extra_delay_ms,
                    probability,
                } => Resolved::Collapse {
                    carrier: find(&CARRIERS, carrier),
                    region: find(&REGIONS, region),
                    from: *from_ms,
                    to: *to_ms,
                    extra: *extra_delay_ms,
                    p: *probability,
                },
                Incident::WarehouseBacklog {
                    warehouse,
                    from_ms,
                    to_ms,
                    extra_ship_delay_ms,
                } => Resolved::Backlog {
                    warehouse: (0..4).find_map(|r| find(&WAREHOUSES[r], warehouse).map(|w| (r, w))),
                    from: *from_ms,
                    to: *to_ms,
                    extra: *extra_ship_delay_ms,
                },
            })
            .collect();
        GeneratorSource {
            model: Arc::new(Model {
                cfg,
                service,
                incidents,
            }),
        }
    }

    /// Reads every partition to its end, or to `max_events_per_partition` events.
    /// An endless generator needs the cap.
    pub fn materialize(&self, max_events_per_partition: Option<usize>) -> MemoryPartitions {
        let cfg = &self.model.cfg;
        assert!(
            cfg.orders_per_partition.is_some() || max_events_per_partition.is_some(),
            "materializing an endless generator needs max_events_per_partition"
        );
        let cap = max_events_per_partition.unwrap_or(usize::MAX);
        let parts: Vec<RawBatch> = (0..cfg.partitions)
            .map(|p| {
                let mut reader = GeneratorReader::new(self.model.clone(), p);
                let mut all = RawBatch::default();
                // `poll` appends, so the whole partition accumulates in one batch.
                while all.len() < cap
                    && reader.poll((cap - all.len()).min(1 << 16), &mut all) != PollStatus::Finished
                {
                }
                all
            })
            .collect();
        MemoryPartitions::new(self.describe(), parts.iter().map(RawBatch::iter))
    }
}

impl Source for GeneratorSource {
    fn partitions(&self) -> u32 {
        self.model.cfg.partitions
    }
    fn describe(&self) -> String {
        let c = &self.model.cfg;
        let orders = c
            .orders_per_partition
            .map_or("endless".to_string(), |n| format!("{n} orders"));
        format!(
            "generator (seed {}, {} partitions x {orders}, 1 order per {} ms, disorder {} ms, {} incidents)",
            c.seed,
            c.partitions,
            c.order_interval_ms,
            c.disorder_ms,
            c.incidents.len()
        )
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        (0..self.model.cfg.partitions)
            .filter(|p| *p as usize % peers.max(1) == worker)
            .map(|p| {
                Box::new(GeneratorReader::new(self.model.clone(), p)) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

/// Incidents as seen by one order (its region and warehouse).
struct OrderIncidents<'a> {
    incidents: &'a [Resolved],
    region: usize,
    warehouse: usize,
}

impl Disruptions for OrderIncidents<'_> {
    fn ship_delay(&self, planned: i64) -> i64 {
        self.incidents
            .iter()
            .map(|i| match i {
                Resolved::Backlog {
                    warehouse: Some(w),
                    from,
                    to,
                    extra,
                } if *w == (self.region, self.warehouse) && (*from..*to).contains(&planned) => {
                    *extra
                }
                _ => 0,
            })
            .sum()
    }
    fn transit_delay(
        &self,
        rng: &mut ChaCha8Rng,
        carrier: usize,
        shipped: i64,
        arrival: i64,
    ) -> Option<(i64, i64)> {
        for i in self.incidents {
            if let Resolved::Collapse {
                carrier: Some(c),
                region: Some(r),
                from,
                to,
                extra,
                p,
            } = i
            {
                if *c == carrier
                    && *r == self.region
                    && shipped < *to
                    && arrival > *from
                    && chance(rng, *p)
                {
                    return Some((shipped.max(*from) + between(rng, 0, 6 * HOUR), *extra));
                }
            }
        }
        None
    }
}

/// The static fields of an open order that its events' JSON needs.
#[derive(Clone, Copy, Default)]
struct OrderSlot {
    n: u64,
    customer: u32,
    segment: u8,
    region: u8,
    mode: u8,
    warehouse: u8,
    carrier: u8,
    qty: u32,
    amount: f64,
    promised_ts: i64,
    tracking: u64,
    /// Events still pending; the slot is reused at 0.
    pending: u32,
}

/// An event waiting to be emitted, ordered by arrival key (event time + jitter), then push order.
struct Pending {
    key: i64,
    seq: u64,
    ts: i64,
    slot: u32,
    k: u16,
    dup: bool,
    step: Step,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.key, self.seq) == (o.key, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    /// Reversed: `BinaryHeap` is a max-heap and we want the smallest key first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.key, o.seq).cmp(&(self.key, self.seq))
    }
}

/// Pending events in exact `(key, seq)` order: a small heap for the loaded hour of arrival keys,
/// a ring of hourly buckets for the next weeks, and a heap for anything later. (One big binary
/// heap spent most of the generator's time in cache misses.)
struct Schedule {
    near: BinaryHeap<Pending>,
    ring: Vec<Vec<Pending>>,
    far: BinaryHeap<Pending>,
    /// Bucket loaded into `near`: every pending key in it or before it is in `near`.
    bucket: i64,
    in_ring: usize,
}

const BUCKET_MS: i64 = HOUR;
const RING_BUCKETS: i64 = 1024;

impl Schedule {
    fn new(start_ms: i64) -> Self {
        let ring = (0..RING_BUCKETS).map(|_| Vec::new()).collect();
        Schedule {
            near: BinaryHeap::new(),
            ring,
            far: BinaryHeap::new(),
            bucket: start_ms.div_euclid(BUCKET_MS),
            in_ring: 0,
        }
    }
    fn len(&self) -> usize {
        self.near.len() + self.in_ring + self.far.len()
    }
    fn push(&mut self, p: Pending) {
        let b = p.key.div_euclid(BUCKET_MS);
        if b <= self.bucket {
            self.near.push(p);
        } else if b < self.bucket + RING_BUCKETS {
            self.ring[b.rem_euclid(RING_BUCKETS) as usize].push(p);
            self.in_ring += 1;
        } else {
            self.far.push(p);
        }
    }
    /// Loads buckets until `near` holds the earliest pending event (or nothing is pending).
    fn fill(&mut self) {
        while self.near.is_empty() && (self.in_ring > 0 || !self.far.is_empty()) {
            self.bucket = match self.far.peek() {
                Some(f) if self.in_ring == 0 => f.key.div_euclid(BUCKET_MS),
                _ => self.bucket + 1,
            };
            let slot = &mut self.ring[self.bucket.rem_euclid(RING_BUCKETS) as usize];
            self.in_ring -= slot.len();
            self.near.extend(slot.drain(..));
            while self
                .far
                .peek()
                .is_some_and(|f| f.key.div_euclid(BUCKET_MS) <= self.bucket)
            {
                self.near.push(self.far.pop().expect("peeked"));
            }
        }
    }
    fn peek_key(&mut self) -> Option<i64> {
        self.fill();
        self.near.peek().map(|p| p.key)
    }
    fn pop(&mut self) -> Option<Pending> {
        self.fill();
        self.near.pop()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Corruption {
    None,
    Truncated,
    MissingPromise,
    BadTs,
    UnknownType,
}

const BAD_TS: [&str; 4] = [
    "\"2024-03-05 14:22:01\"",
    "\"05/03/2024 14:22\"",
    "\"2024-02-30T10:00:00Z\"",
    "-1",
];
const BAD_TYPES: [&str; 4] = [
    "order_teleported",
    "ORDER_CREATED",
    "shipment_created",
    "delivered_partially",
];

struct GeneratorReader {
    model: Arc<Model>,
    partition: u32,
    /// Order content and arrival jitter.
    rng: ChaCha8Rng,
    /// Duplicates and malformed lines (a separate stream, so they do not change the content).
    transport: ChaCha8Rng,
    next_order: u64,
    next_created_ts: i64,
    pending: Schedule,
    seq: u64,
    slots: Vec<OrderSlot>,
    free: Vec<u32>,
    offset: u64,
    scratch: Vec<SimEvent>,
}

/// splitmix64's finaliser: a stable 64-bit mix.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl GeneratorReader {
    fn new(model: Arc<Model>, partition: u32) -> Self {
        let seed = mix64(model.cfg.seed ^ mix64(partition as u64 + 1));
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let mut transport = ChaCha8Rng::seed_from_u64(seed);
        transport.set_stream(1);
        let next_created_ts = model.cfg.start_ms;
        GeneratorReader {
            model,
            partition,
            rng,
            transport,
            next_order: 0,
            next_created_ts,
            pending: Schedule::new(next_created_ts),
            seq: 0,
            slots: Vec::new(),
            free: Vec::new(),
            offset: 0,
            scratch: Vec::with_capacity(16),
        }
    }

    fn orders_done(&self) -> bool {
        self.model
            .cfg
            .orders_per_partition
            .is_some_and(|m| self.next_order >= m)
    }

    /// Simulates the next order and queues its events.
    fn generate_order(&mut self) {
        let rng = &mut self.rng;
        let cfg = &self.model.cfg;
        let created = self.next_created_ts;
        let gap = (exponential(rng) * cfg.order_interval_ms.max(1) as f64) as i64;
        self.next_created_ts = created + gap.max(1);
        let region = pick(rng, &REGION_MIX);
        let mode = pick(rng, &MODE_MIX);
        let segment = pick(rng, &SEGMENT_MIX);
        let warehouse = usize::from(!chance(rng, 0.6));
        let customer = (rng.gen::<f64>().powi(2) * 200_000.0) as u32;
        let (mut qty, mut amount) = (0u32, 0.0f64);
        loop {
            let units = pick(rng, &[0.45, 0.25, 0.15, 0.10, 0.05]) as u32 + 1;
            let unit_price = (20.0 * (1.1 * normal(rng)).exp()).clamp(0.5, 5_000.0);
            qty += units;
            amount += units as f64 * unit_price;
            if qty >= 14 || !chance(rng, 0.45) {
                break;
            }
        }
        let ship_day = created.div_euclid(DAY) + pick(rng, &SHIP_DAYS[mode]) as i64;
        let plan = Plan {
            created_ts: created,
            mode,
            region,
            service: self.model.service[mode],
            qty,
            amount: cents(amount),
            ship_day,
        };
        let dis = OrderIncidents {
            incidents: &self.model.incidents,
            region,
            warehouse,
        };
        let outcome = simulate(rng, &plan, &dis, &mut self.scratch);

        let slot = OrderSlot {
            n: self.next_order,
            customer,
            segment: segment as u8,
            region: region as u8,
            mode: mode as u8,
            warehouse: warehouse as u8,
            carrier: outcome.carrier as u8,
            qty,
            amount: plan.amount,
            promised_ts: outcome.promised_ts,
            tracking: outcome.tracking,
            pending: self.scratch.len() as u32,
        };
        self.next_order += 1;
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let disorder = cfg.disorder_ms.max(0);
        for (k, e) in self.scratch.iter().enumerate() {
            let jitter = if disorder > 0 {
                rng.gen_range(0..=disorder)
            } else {
                0
            };
            self.seq += 1;
            self.pending.push(Pending {
                key: e.ts + jitter,
                seq: self.seq,
                ts: e.ts,
                slot: index,
                k: k as u16,
                dup: false,
                step: e.step,
            });
        }
    }

    /// Emits the earliest pending event into `batch`.
    fn emit(&mut self, batch: &mut RawBatch) {
        let p = self
            .pending
            .pop()
            .expect("emit is called with a pending event");
        let cfg = &self.model.cfg;
        let t = &mut self.transport;
        if cfg.duplicate_rate > 0.0 && !p.dup && t.gen::<f64>() < cfg.duplicate_rate {
            let latest = p.ts + cfg.disorder_ms.max(0);
            self.seq += 1;
            self.slots[p.slot as usize].pending += 1;
            self.pending.push(Pending {
                key: between(t, p.key, latest),
                seq: self.seq,
                dup: true,
                ..p
            });
        }
        let corruption = if cfg.malformed_rate > 0.0 && t.gen::<f64>() < cfg.malformed_rate {
            let kinds = [
                Corruption::Truncated,
                Corruption::BadTs,
                Corruption::UnknownType,
                Corruption::MissingPromise,
            ];
            kinds[t.gen_range(0..if p.step == Step::Created { 4 } else { 3 })]
        } else {
            Corruption::None
        };
        let slot = &mut self.slots[p.slot as usize];
        let start = batch.data.len();
        write_event(&mut batch.data, self.partition, slot, &p, corruption, t);
        if corruption == Corruption::Truncated {
            let len = batch.data.len() - start;
            batch.data.truncate(start + len * t.gen_range(40..90) / 100);
        }
        batch.ends.push(batch.data.len());
        self.offset += 1;
        slot.pending -= 1;
        if slot.pending == 0 {
            self.free.push(p.slot);
        }
    }
}

impl PartitionReader for GeneratorReader {
    fn partition(&self) -> u32 {
        self.partition
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        let first_offset = self.offset;
        let mut n = 0;
        while n < max_events {
            let orders_done = self.orders_done();
            match self.pending.peek_key() {
                // Every event not generated yet has ts (and so key) >= the next order's creation.
                Some(key) if orders_done || key <= self.next_created_ts => {
                    self.emit(batch);
                    n += 1;
                }
                _ if orders_done => break,
                _ => self.generate_order(),
            }
        }
        if n > 0 {
            batch.first_offset = first_offset;
            PollStatus::Ready
        } else if self.orders_done() && self.pending.len() == 0 {
            PollStatus::Finished
        } else {
            PollStatus::Ready
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON writing without intermediate values.

fn put_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn put_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    put_u64(buf, v.unsigned_abs());
}

fn put_padded(buf: &mut Vec<u8>, v: u64, width: usize) {
    let digits = if v == 0 { 1 } else { v.ilog10() as usize + 1 };
    buf.resize(buf.len() + width.saturating_sub(digits), b'0');
    put_u64(buf, v);
}

/// A money amount with two decimals.
fn put_money(buf: &mut Vec<u8>, x: f64) {
    let c = (x * 100.0).round().max(0.0) as u64;
    put_u64(buf, c / 100);
    buf.push(b'.');
    put_padded(buf, c % 100, 2);
}

fn put_str_field(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":\"");
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'"');
}

fn put_key(buf: &mut Vec<u8>, key: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
}

/// A tracking number in the carrier's usual shape.
pub(crate) fn put_tracking(buf: &mut Vec<u8>, carrier: usize, tracking: u64) {
    match carrier {
        0 => {
            buf.extend_from_slice(b"1Z");
            for shift in (0..16).rev() {
                buf.push(b"0123456789ABCDEF"[((tracking >> (shift * 4)) & 0xf) as usize]);
            }
        }
        1 => put_padded(buf, tracking % 1_000_000_000_000, 12),
        2 => {
            buf.extend_from_slice(b"94");
            put_padded(buf, tracking % 10_000_000_000_000_000_000, 20);
        }
        _ => put_padded(buf, tracking % 10_000_000_000, 10),
    }
}

fn write_event(
    buf: &mut Vec<u8>,
    partition: u32,
    o: &OrderSlot,
    p: &Pending,
    bad: Corruption,
    rng: &mut ChaCha8Rng,
) {
    buf.extend_from_slice(b"{\"v\":1,\"event_id\":\"g");
    put_u64(buf, partition as u64);
    buf.push(b'-');
    put_u64(buf, o.n);
    buf.push(b'-');
    put_u64(buf, p.k as u64);
    buf.extend_from_slice(b"\",\"order_id\":\"g");
    put_u64(buf, partition as u64);
    buf.push(b'-');
    put_u64(buf, o.n);
    let type_name = if bad == Corruption::UnknownType {
        one_of(rng, &BAD_TYPES)
    } else {
        p.step.type_name()
    };
    buf.extend_from_slice(b"\",\"type\":\"");
    buf.extend_from_slice(type_name.as_bytes());
    buf.extend_from_slice(b"\",\"ts\":");
    if bad == Corruption::BadTs {
        buf.extend_from_slice(one_of(rng, &BAD_TS).as_bytes());
    } else {
        put_i64(buf, p.ts);
    }
    match p.step {
        Step::Created => {
            buf.extend_from_slice(b",\"customer_id\":\"C-");
            put_padded(buf, o.customer as u64, 6);
            buf.push(b'"');
            put_str_field(buf, "segment", SEGMENTS[o.segment as usize]);
            put_str_field(buf, "region", REGIONS[o.region as usize]);
            put_str_field(buf, "ship_mode", SHIP_MODES[o.mode as usize]);
            put_str_field(
                buf,
                "warehouse",
                WAREHOUSES[o.region as usize][o.warehouse as usize],
            );
            put_key(buf, "qty");
            put_u64(buf, o.qty as u64);
            put_key(buf, "amount");
            put_money(buf, o.amount);
            if bad != Corruption::MissingPromise {
                put_key(buf, "promised_delivery_ts");
                put_i64(buf, o.promised_ts);
            }
        }
        Step::PaymentAuthorized | Step::Checkpoint | Step::OutForDelivery => {}
        Step::PaymentFailed(r)
        | Step::Exception(r)
        | Step::DeliveryFailed(r)
        | Step::Ticket(r)
        | Step::Cancelled(r) => put_str_field(buf, "reason", r),
        Step::Shipped => {
            put_str_field(buf, "carrier", CARRIERS[o.carrier as usize]);
            buf.extend_from_slice(b",\"tracking\":\"");
            put_tracking(buf, o.carrier as usize, o.tracking);
            buf.push(b'"');
            put_key(buf, "qty");
            put_u64(buf, o.qty as u64);
        }
        Step::Delivered(q) => {
            put_key(buf, "qty");
            put_u64(buf, q as u64);
        }
        Step::Refund(r, a) | Step::Return(r, a) => {
            put_str_field(buf, "reason", r);
            put_key(buf, "amount");
            put_money(buf, a);
        }
    }
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::{decode_event, DecodeError, EventBody, OrderEvent};

    fn spec() -> PipelineSpec {
        PipelineSpec::builtin()
    }

    fn small(seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            seed,
            partitions: 3,
            orders_per_partition: Some(3_000),
            order_interval_ms: 60_000,
            ..GeneratorConfig::default()
        }
    }

    fn lines(m: &MemoryPartitions, p: usize) -> Vec<Vec<u8>> {
        m.partition_events(p).map(<[u8]>::to_vec).collect()
    }

    fn decode_all(m: &MemoryPartitions) -> Vec<OrderEvent> {
        (0..m.partitions() as usize)
            .flat_map(|p| {
                m.partition_events(p)
                    .map(|l| decode_event(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Per order: (region, promised, created ts, carrier, shipped ts, delivered ts).
    #[derive(Default, Debug)]
    struct View {
        region: String,
        warehouse: String,
        promised: i64,
        created: i64,
        carrier: String,
        shipped: Option<i64>,
        delivered: Option<i64>,
    }

    fn views(events: &[OrderEvent]) -> HashMap<String, View> {
        let mut out: HashMap<String, View> = HashMap::new();
        for e in events {
            let v = out.entry(e.order_id.to_string()).or_default();
            match &e.body {
                EventBody::OrderCreated(c) => {
                    (v.region, v.warehouse, v.promised, v.created) = (
                        c.region.to_string(),
                        c.warehouse.to_string(),
                        c.promised_delivery_ts,
                        e.ts,
                    )
                }
                EventBody::Shipped { carrier, .. } => {
                    (v.carrier, v.shipped) = (carrier.to_string(), Some(e.ts))
                }
                EventBody::Delivered { .. } => v.delivered = Some(e.ts),
                _ => {}
            }
        }
        out
    }

    /// On-time rate of delivered orders matching `keep`.
    fn on_time(views: &HashMap<String, View>, keep: impl Fn(&View) -> bool) -> (f64, usize) {
        let hits: Vec<bool> = views
            .values()
            .filter(|v| keep(v))
            .filter_map(|v| v.delivered.map(|d| d <= v.promised))
            .collect();
        (
            hits.iter().filter(|h| **h).count() as f64 / hits.len().max(1) as f64,
            hits.len(),
        )
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let a = GeneratorSource::new(small(1), &spec()).materialize(None);
        let b = GeneratorSource::new(small(1), &spec()).materialize(None);
        let c = GeneratorSource::new(small(2), &spec()).materialize(None);
        for p in 0..3 {
            assert_eq!(lines(&a, p), lines(&b, p));
            assert_ne!(lines(&a, p), lines(&c, p));
        }
        assert_ne!(
            lines(&a, 0),
            lines(&a, 1),
            "partitions are independent streams"
        );
    }

    #[test]
    fn every_line_decodes_and_orders_are_sane() {
        let m = GeneratorSource::new(small(3), &spec()).materialize(None);
        let events = decode_all(&m);
        assert!(events.len() > 3 * 3_000 * 7, "{} events", events.len());
        let mut by_order: HashMap<&str, Vec<&OrderEvent>> = HashMap::new();
        for e in &events {
            by_order.entry(e.order_id.as_str()).or_default().push(e);
        }
        assert_eq!(by_order.len(), 9_000);
        for (id, evs) in &mut by_order {
            evs.sort_by_key(|e| e.ts);
            assert!(
                matches!(evs[0].body, EventBody::OrderCreated(_)),
                "{id} does not start with order_created"
            );
        }
        for p in 0..3 {
            let prefix = format!("g{p}-");
            assert!(m
                .partition_events(p)
                .all(|l| decode_event(l).unwrap().order_id.starts_with(&prefix)));
        }
        let v = views(&events);
        for (id, o) in &v {
            if let Some(d) = o.delivered {
                assert!(
                    d > o.shipped.unwrap() && o.shipped.unwrap() > o.created,
                    "{id}: {o:?}"
                );
            }
        }
        let (rate, n) = on_time(&v, |_| true);
        assert!(
            n > 8_500 && (0.83..0.94).contains(&rate),
            "on-time {rate} over {n}"
        );
        let (south_usps, _) = on_time(&v, |o| o.region == "South" && o.carrier == "USPS");
        assert!(
            south_usps < rate - 0.1,
            "the weak route stands out: {south_usps} vs {rate}"
        );
    }

    #[test]
    fn disorder_is_bounded_per_partition_and_duplicates_stay_within_it() {
        let cfg = GeneratorConfig {
            duplicate_rate: 0.03,
            disorder_ms: 5 * MINUTE,
            ..small(4)
        };
        let m = GeneratorSource::new(cfg, &spec()).materialize(None);
        let (mut total, mut dups, mut disordered) = (0, 0, 0);
        for p in 0..3 {
            let mut max_ts = i64::MIN / 2;
            let mut seen = std::collections::HashSet::new();
            for e in m.partition_events(p).map(|l| decode_event(l).unwrap()) {
                assert!(
                    e.ts >= max_ts - 5 * MINUTE,
                    "partition {p}: {} is {} ms behind",
                    e.event_id,
                    max_ts - e.ts
                );
                disordered += usize::from(e.ts < max_ts);
                max_ts = max_ts.max(e.ts);
                dups += usize::from(!seen.insert(e.event_id));
                total += 1;
            }
        }
        let rate = dups as f64 / total as f64;
        assert!((0.025..0.035).contains(&rate), "duplicate rate {rate}");
        assert!(
            disordered > total / 20,
            "the stream is actually disordered ({disordered} of {total})"
        );
    }

    #[test]
    fn malformed_lines_fail_with_their_intended_reason() {
        let clean = GeneratorSource::new(small(5), &spec()).materialize(None);
        let dirty = GeneratorSource::new(
            GeneratorConfig {
                malformed_rate: 0.05,
                ..small(5)
            },
            &spec(),
        )
        .materialize(None);
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        let mut total = 0;
        for p in 0..3 {
            let (c, d) = (lines(&clean, p), lines(&dirty, p));
            assert_eq!(c.len(), d.len());
            for (good, line) in c.iter().zip(&d) {
                total += 1;
                if good == line {
                    continue;
                }
                let reason = decode_event(line).expect_err("a replaced line must not decode");
                match &reason {
                    DecodeError::Malformed(_) => assert!(good.starts_with(line)),
                    DecodeError::MissingField { field, .. } => {
                        assert_eq!(*field, "promised_delivery_ts")
                    }
                    DecodeError::BadTimestamp { field, .. } => assert_eq!(*field, "ts"),
                    DecodeError::UnknownType(_) => {}
                    other => panic!(
                        "unintended reason {other} for {}",
                        String::from_utf8_lossy(line)
                    ),
                }
                *kinds.entry(reason.kind()).or_default() += 1;
            }
        }
        let bad: usize = kinds.values().sum();
        assert!(
            (0.04..0.06).contains(&(bad as f64 / total as f64)),
            "{kinds:?} of {total}"
        );
        assert_eq!(kinds.len(), 4, "{kinds:?}");
    }

    #[test]
    fn a_carrier_collapse_drops_that_carriers_on_time_rate_in_that_region() {
        let (from, to) = (1_704_067_200_000 + 3 * DAY, 1_704_067_200_000 + 5 * DAY);
        let base = GeneratorConfig {
            seed: 9,
            partitions: 2,
            orders_per_partition: Some(12_000),
            order_interval_ms: 60_000,
            ..GeneratorConfig::default()
        };
        let collapse = Incident::CarrierCollapse {
            carrier: "UPS".into(),
            region: "West".into(),
            from_ms: from,
            to_ms: to,
            extra_delay_ms: 5 * DAY,
            probability: 0.9,
        };
        let hit = GeneratorConfig {
            incidents: vec![collapse],
            ..base.clone()
        };
        let before = views(&decode_all(
            &GeneratorSource::new(base, &spec()).materialize(None),
        ));
        let after = views(&decode_all(
            &GeneratorSource::new(hit, &spec()).materialize(None),
        ));
        let in_window = |o: &View| o.shipped.is_some_and(|s| (from..to).contains(&s));
        let affected = |o: &View| o.carrier == "UPS" && o.region == "West" && in_window(o);
        let bystander = |o: &View| o.carrier == "UPS" && o.region == "East" && in_window(o);
        let ((b, n), (a, m)) = (on_time(&before, affected), on_time(&after, affected));
        assert!(n > 100 && m > 100, "{n} {m} deliveries");
        assert!(b > 0.8 && a < b - 0.4, "UPS/West on-time {b:.3} -> {a:.3}");
        let ((b2, _), (a2, _)) = (on_time(&before, bystander), on_time(&after, bystander));
        assert!(
            (b2 - a2).abs() < 0.08,
            "UPS/East unaffected: {b2:.3} -> {a2:.3}"
        );
    }

    #[test]
    fn a_warehouse_backlog_delays_its_shipments() {
        let (from, to) = (1_704_067_200_000 + 3 * DAY, 1_704_067_200_000 + 5 * DAY);
        let backlog = Incident::WarehouseBacklog {
            warehouse: "WH-EAST-1".into(),
            from_ms: from,
            to_ms: to,
            extra_ship_delay_ms: 2 * DAY,
        };
        let base = GeneratorConfig {
            order_interval_ms: 3 * MINUTE,
            ..small(11)
        };
        let hit = GeneratorConfig {
            incidents: vec![backlog],
            ..base.clone()
        };
        let before = views(&decode_all(
            &GeneratorSource::new(base, &spec()).materialize(None),
        ));
        let after = views(&decode_all(
            &GeneratorSource::new(hit, &spec()).materialize(None),
        ));
        let shipped_in_window = |v: &HashMap<String, View>, wh: &str| {
            v.values()
                .filter(|o| o.warehouse == wh && o.shipped.is_some_and(|s| (from..to).contains(&s)))
                .count()
        };
        let mean_ship_hours = |v: &HashMap<String, View>, wh: &str| {
            let d: Vec<i64> = v
                .values()
                .filter(|o| o.warehouse == wh)
                .filter_map(|o| o.shipped.map(|s| s - o.created))
                .collect();
            d.iter().sum::<i64>() as f64 / d.len().max(1) as f64 / HOUR as f64
        };
        let (b1, a1) = (
            shipped_in_window(&before, "WH-EAST-1"),
            shipped_in_window(&after, "WH-EAST-1"),
        );
        let (b2, a2) = (
            shipped_in_window(&before, "WH-EAST-2"),
            shipped_in_window(&after, "WH-EAST-2"),
        );
        assert!(
            b1 > 100 && a1 * 20 < b1,
            "WH-EAST-1 shipments during the backlog: {b1} -> {a1}"
        );
        assert!(a2 * 10 > b2 * 8, "WH-EAST-2 keeps shipping: {b2} -> {a2}");
        let (h1, h2) = (
            mean_ship_hours(&before, "WH-EAST-1"),
            mean_ship_hours(&after, "WH-EAST-1"),
        );
        assert!(
            h2 > h1 + 4.0,
            "WH-EAST-1 order-to-ship hours {h1:.1} -> {h2:.1}"
        );
    }

    #[test]
    fn an_endless_partition_is_lazy_and_bounded() {
        let cfg = GeneratorConfig {
            orders_per_partition: None,
            order_interval_ms: 10 * MINUTE,
            ..GeneratorConfig::default()
        };
        let source = GeneratorSource::new(cfg, &spec());
        let readers = source.readers(1, 2);
        assert_eq!(
            readers.iter().map(|r| r.partition()).collect::<Vec<_>>(),
            vec![1, 3]
        );
        let mut reader = GeneratorReader::new(source.model.clone(), 1);
        let mut batch = RawBatch::default();
        let (mut offset, mut peak) = (0, [0usize; 3]);
        for i in 0..150 {
            batch.clear();
            assert_eq!(reader.poll(2_000, &mut batch), PollStatus::Ready);
            assert_eq!((batch.len(), batch.first_offset), (2_000, offset));
            offset += 2_000;
            peak[i / 50] = peak[i / 50].max(reader.pending.len() + reader.slots.len());
        }
        // ~300k events = ~200 days of event time: the pending state stops growing after a few weeks.
        assert!(
            peak[2] < 10_000 && peak[2] * 10 < peak[1] * 13,
            "pending state per third: {peak:?}"
        );
    }

    #[test]
    fn a_finite_partition_finishes() {
        let cfg = GeneratorConfig {
            partitions: 1,
            orders_per_partition: Some(50),
            ..GeneratorConfig::default()
        };
        let mut reader = GeneratorSource::new(cfg, &spec())
            .readers(0, 1)
            .pop()
            .unwrap();
        let (mut batch, mut n) = (RawBatch::default(), 0);
        while reader.poll(64, &mut batch) == PollStatus::Ready {
            n += batch.len();
            batch.clear();
        }
        assert!(n > 300);
        assert_eq!(reader.poll(64, &mut batch), PollStatus::Finished);
    }

    /// `cargo test --release --lib generator_throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn generator_throughput() {
        let cfg = GeneratorConfig {
            orders_per_partition: Some(90_000),
            ..GeneratorConfig::default()
        };
        let source = GeneratorSource::new(cfg.clone(), &spec());
        let start = std::time::Instant::now();
        let (mut events, mut bytes) = (0, 0);
        for mut reader in source.readers(0, 1) {
            let mut batch = RawBatch::default();
            loop {
                batch.clear();
                if reader.poll(4096, &mut batch) == PollStatus::Finished {
                    break;
                }
                (events, bytes) = (events + batch.len(), bytes + batch.data.len());
            }
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "polled {events} events ({} MB) in {secs:.2} s: {:.0} events/s",
            bytes >> 20,
            events as f64 / secs
        );
        let start = std::time::Instant::now();
        let m = GeneratorSource::new(cfg, &spec()).materialize(None);
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "generated {} events ({} MB) in {secs:.2} s: {:.0} events/s",
            m.len(),
            m.bytes() >> 20,
            m.len() as f64 / secs
        );
    }
}
