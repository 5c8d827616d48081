//! The order lifecycle model, shared by the generator and the Superstore replay: the tables
//! (regions, ship modes, segments, carriers, warehouses, the generated order mix), the trouble
//! model, and the seeded helpers both sources draw with.
//!
//! In: a [`Plan`] (creation time, ship mode, region, service level, quantity, amount, ship day), a
//! ChaCha8 stream and the order's [`Disruptions`] (incidents; [`Undisturbed`] for none). Out: the
//! order's [`SimEvent`]s in event-time order with strictly increasing timestamps, and its
//! [`Outcome`] (promise, carrier, tracking number).
//!
//! [`simulate`] turns one order into its events: payment (failures, retries, cancellations),
//! shipping on a given day, carrier checkpoints and exceptions, lost parcels, failed delivery
//! attempts, (partial) delivery, tickets (likelier when late) and refund/return requests. Transit
//! depends on ship mode, region and carrier with a late tail; USPS in the South is the weak route.
//! Ship-day distributions per ship mode are the ones observed in the Superstore data.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

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

/// Shares of the generated orders per region, ship mode and segment (the generator's mix).
pub(super) const REGION_MIX: [f64; 4] = [0.32, 0.285, 0.23, 0.165];
pub(super) const MODE_MIX: [f64; 4] = [0.60, 0.19, 0.15, 0.06];
pub(super) const SEGMENT_MIX: [f64; 3] = [0.52, 0.30, 0.18];
/// Days from order to shipment (0..=7) per ship mode, as in the Superstore data; last row: other.
pub(super) const SHIP_DAYS: [[f64; 8]; 5] = [
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

pub(super) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
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
pub(super) fn one_of<const N: usize>(
    rng: &mut ChaCha8Rng,
    items: &[&'static str; N],
) -> &'static str {
    items[rng.gen_range(0..N)]
}
pub(super) fn between(rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> i64 {
    rng.gen_range(lo..=hi.max(lo))
}
pub(super) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.gen::<f64>();
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
pub(super) fn exponential(rng: &mut ChaCha8Rng) -> f64 {
    -(1.0 - rng.gen::<f64>()).ln()
}
pub(super) fn cents(x: f64) -> f64 {
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

/// splitmix64's finaliser: a stable 64-bit mix.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
