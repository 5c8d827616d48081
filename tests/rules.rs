//! One test per rule of `docs/SEMANTICS.md` on a tiny hand-written input, asserting hand-computed
//! numbers on the batch oracle and, with the same assertions, on `run_job` (1 and 2 workers), then
//! that the dataflow equals the oracle on everything (risk scores included).
//!
//! The spec is the shipped one with its numbers pinned (`common::pinned_spec`: Standard Class ships
//! within 6d with 5d transit, Second Class 4d/3d, grace 2h, ...), `min_count: 1` (so single facts
//! are rated) and `idle_open: 20d` (shorter tails). `T0` is a day boundary; ticks are 1 minute.
//! Event ids are `{order}-{suffix}`.

mod common;
mod oracle;

use common::{
    assert_same, created, event, in_ts_order, pinned_spec, run_dataflow, set, set_min_count, yaml,
    Ev, OrderData, Outcome,
};
use fulfillment_ai::config::pipeline::Severity as S;
use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::risk_model::{score, RiskSnapshot, RouteStats};
use fulfillment_ai::model::facts::ppm;
use fulfillment_ai::model::{DeviationType as D, KpiStatus as K};
use fulfillment_ai::sources::memory::MemoryPartitions;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// 2023-11-15T00:00:00Z.
const T0: i64 = 1_700_006_400_000;

fn spec() -> PipelineSpec {
    pinned_spec(|v| {
        set_min_count(v, 1);
        set(v, "retention.idle_open", yaml("20d"));
    })
}

/// Runs the assertions on the oracle and on the dataflow with 1 and 2 workers, then compares the
/// dataflow with the oracle in full.
fn check(input: &MemoryPartitions, assertions: impl Fn(&Outcome)) {
    let spec = spec();
    let oracle = Outcome::from_oracle(&oracle::recompute(&spec, input));
    assertions(&oracle);
    for workers in [1, 2] {
        let df = run_dataflow(&spec, input, workers, true);
        assertions(&df);
        assert_same(&oracle, &df, true, "rule test");
    }
}

fn one_partition(evs: Vec<Ev>) -> MemoryPartitions {
    MemoryPartitions::new("rules", [in_ts_order(evs)])
}

/// `order_created` with id `{order}-c`.
fn new_order(order: &str, ts: i64, promised: i64, d: &OrderData) -> Ev {
    created(&format!("{order}-c"), order, ts, promised, d)
}

/// An event with id `{order}-{suffix}`.
fn ev(order: &str, suffix: &str, kind: &str, ts: i64, extra: &str) -> Ev {
    event(&format!("{order}-{suffix}"), order, kind, ts, extra)
}

const UPS: &str = r#","carrier":"UPS""#;

fn west() -> OrderData {
    OrderData::default()
}

fn in_region(region: &str) -> OrderData {
    OrderData {
        region: region.into(),
        ..west()
    }
}

fn at_warehouse(warehouse: &str) -> OrderData {
    OrderData {
        warehouse: warehouse.into(),
        ..west()
    }
}

/// An offset like `3d12h`, `-2h`, `30s` or `0`, in ms.
fn offset(text: &str) -> i64 {
    let (sign, mut rest) = match text.trim().strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, text.trim()),
    };
    let mut total = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: i64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad offset `{text}`"));
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += n * match &rest[..unit] {
            "d" => DAY,
            "h" => HOUR,
            "m" => MIN,
            "s" => 1000,
            "" | "ms" => 1,
            other => panic!("bad unit `{other}` in `{text}`"),
        };
        rest = &rest[unit..];
    }
    sign * total
}

/// `@3d` in a deviation id or KPI key stands for the epoch ms of `T0 + 3d`.
fn expand(text: &str) -> String {
    let mut out = String::new();
    let mut parts = text.split('@');
    out.push_str(parts.next().unwrap_or_default());
    for part in parts {
        let end = part.find([':', ',', '|']).unwrap_or(part.len());
        out.push_str(&(T0 + offset(&part[..end])).to_string());
        out.push_str(&part[end..]);
    }
    out
}

/// The rows of a `|`-separated table, cells trimmed; blank lines skipped.
fn rows(table: &str) -> Vec<Vec<&str>> {
    let lines = table.lines().filter(|l| !l.trim().is_empty());
    lines
        .map(|l| l.split('|').map(str::trim).collect())
        .collect()
}

/// Expected final KPI records, one per row: `kpi | dims | window start (offset from T0) | value
/// (- for none) | numerator | denominator | status`. Numerators in ms may be written as offsets
/// (`-2h`).
fn assert_kpis(o: &Outcome, table: &str) {
    for row in rows(table) {
        let [kpi, dims, start, value, numerator, denominator, status] = row[..] else {
            panic!("bad KPI row {row:?}")
        };
        let key = format!("{kpi}|{dims}|{}", T0 + offset(start));
        let value: Option<f64> = (value != "-").then(|| value.parse().expect("value"));
        let numerator = numerator.parse().unwrap_or_else(|_| offset(numerator));
        let denominator: i64 = denominator.parse().expect("denominator");
        let status = match status {
            "ok" => K::Ok,
            "warn" => K::Warn,
            "critical" => K::Critical,
            "unrated" => K::Unrated,
            other => panic!("bad status {other}"),
        };
        let k = o.kpi(&key);
        let value_ok = match (k.value, value) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            (a, b) => a == b,
        };
        let got = (k.numerator, k.denominator, k.status);
        let want = (numerator, denominator, status);
        assert!(
            value_ok && got == want,
            "{}: {key}: got value {:?} {got:?}, want {value:?} {want:?}",
            o.label,
            k.value
        );
        let size = if kpi == "on_time_rate_7d" {
            7 * DAY
        } else {
            DAY
        };
        assert!(
            k.is_final && k.window_end - k.window_start == size,
            "{}: {key}",
            o.label
        );
    }
}

/// Deviations that fired exactly once, one per row: `id (with @offsets) | severity | event time
/// (offset from T0)`. The kind is the id's prefix.
fn assert_deviations(o: &Outcome, table: &str) {
    for row in rows(table) {
        let [id, severity, at] = row[..] else {
            panic!("bad deviation row {row:?}")
        };
        let id = expand(id);
        let prefix = id.split(':').next().unwrap_or_default();
        let kind = ALL_KINDS
            .iter()
            .copied()
            .find(|k| k.as_str() == prefix)
            .expect("known kind");
        let severity = match severity {
            "info" => S::Info,
            "warning" => S::Warning,
            "critical" => S::Critical,
            other => panic!("bad severity {other}"),
        };
        o.assert_deviation(&id, kind, severity, T0 + offset(at));
    }
}

/// The deviations fired by order timers.
const TIMER_KINDS: &[D] = &[D::SlaShipBreach, D::SlaDeliveryBreach, D::FulfillmentGap];

const ALL_KINDS: [D; 11] = [
    D::SlaShipBreach,
    D::SlaDeliveryBreach,
    D::FulfillmentGap,
    D::PaymentFailed,
    D::CarrierException,
    D::PartialDelivery,
    D::RefundRequested,
    D::TicketRaised,
    D::PredictedDelay,
    D::KpiThresholdBreach,
    D::KpiAnomaly,
];

fn assert_ids(o: &Outcome, kinds: &[D], want: &[&str]) {
    assert_eq!(ids_of(o, kinds), want, "{}", o.label);
}

fn ids_of(o: &Outcome, kinds: &[D]) -> Vec<String> {
    let mut ids: Vec<String> = o
        .deviations
        .iter()
        .filter(|d| kinds.contains(&d.kind))
        .map(|d| d.id.clone())
        .collect();
    ids.sort();
    ids
}

/// Five deliveries on day 3 around the promise `T0 + 3d 12h`: -2h, -1h (1 of 2 units), 0, +1h,
/// +3h (East; the others West).
#[test]
fn delivery_kpis_on_time_late_delay_p95_otif() {
    let promised = T0 + offset("3d12h");
    let mut evs = Vec::new();
    let orders = [
        ("o1", "-2h", 2, "West"),
        ("o2", "-1h", 1, "West"),
        ("o3", "0", 2, "West"),
    ];
    for (o, delay, qty, region) in orders
        .into_iter()
        .chain([("o4", "1h", 2, "West"), ("o5", "3h", 2, "East")])
    {
        evs.push(new_order(o, T0 + HOUR, promised, &in_region(region)));
        evs.push(ev(
            o,
            "s",
            "shipped",
            T0 + DAY,
            r#","carrier":"UPS","qty":2"#,
        ));
        let qty = format!(r#","qty":{qty}"#);
        evs.push(ev(o, "d", "delivered", promised + offset(delay), &qty));
    }
    check(&one_partition(evs), |o| {
        // order_to_delivery: (3d 11h + delay) per order, 83 h + 0.2 h on average.
        assert_kpis(
            o,
            "
            on_time_rate             |             | 3d | 0.6   | 3    | 5 | critical
            on_time_rate             | region=West | 3d | 0.75  | 3    | 4 | critical
            on_time_rate             | region=East | 3d | 0.0   | 0    | 1 | critical
            on_time_rate             | carrier=UPS | 3d | 0.6   | 3    | 5 | critical
            late_deliveries          |             | 3d | 2.0   | 2    | 2 | unrated
            late_deliveries          | region=West | 3d | 1.0   | 1    | 1 | unrated
            avg_delivery_delay_hours |             | 3d | 0.2   | 1h   | 5 | unrated
            avg_delivery_delay_hours | region=West | 3d | -0.5  | -2h  | 4 | unrated
            p95_delivery_delay_hours |             | 3d | 3.0   | 3h   | 5 | unrated
            p95_delivery_delay_hours | region=West | 3d | 1.0   | 1h   | 4 | unrated
            otif_rate                |             | 3d | 0.4   | 2    | 5 | unrated
            order_to_delivery_hours  |             | 3d | 83.2  | 416h | 5 | unrated
            order_to_ship_hours      |             | 1d | 23.0  | 115h | 5 | ok
            refund_rate              |             | 3d | 0.0   | 0    | 5 | unrated
            order_value              | region=West | 0  | 400.0 | 40000| 4 | unrated
            ",
        );
        assert!(!o.has_kpi(&expand("late_deliveries|region=West|@2d")));
        // Exactly one late delivery is past the 2 h grace; one was partial.
        assert_ids(o, &[D::SlaDeliveryBreach], &["sla_delivery_breach:o5"]);
        assert_ids(o, &[D::PartialDelivery], &["partial_delivery:o2"]);
        assert_ids(o, &[D::SlaShipBreach, D::FulfillmentGap], &[]);
        assert_deviations(
            o,
            "
            sla_delivery_breach:o5                          | critical | 3d14h
            partial_delivery:o2                             | warning  | 3d11h
            kpi_threshold_breach:on_time_rate::@3d          | critical | 4d
            kpi_threshold_breach:on_time_rate:region=East:@3d | critical | 4d
            ",
        );
    });
}

/// Ship-by and delivery deadlines, their boundaries, fulfillment gaps and cancellations.
#[test]
fn sla_breaches_and_fulfillment_gap() {
    let c = T0 + HOUR;
    let second = OrderData {
        ship_mode: "Second Class".into(),
        ..at_warehouse("WH-B")
    };
    let evs = vec![
        // a: never ships: ship-by at c + 6d (Standard Class), delivery deadline at promise + 2h.
        new_order("a", c, T0 + 8 * DAY, &west()),
        // b: ships 30 s after its ship-by deadline, in the deadline's own tick: still a breach.
        new_order("b", c, T0 + 9 * DAY, &west()),
        ev("b", "s", "shipped", c + 6 * DAY + 30_000, UPS),
        ev("b", "d", "delivered", T0 + 8 * DAY, ""),
        // c: ships exactly at its ship-by deadline, delivers exactly at promise + grace: no breach.
        new_order("c", c, T0 + 9 * DAY, &west()),
        ev("c", "s", "shipped", c + 6 * DAY, UPS),
        ev("c", "d", "delivered", T0 + 9 * DAY + 2 * HOUR, ""),
        // g: Second Class, shipped on day 1, never delivered: gap at ship + 3d x 1.5.
        new_order("g", c, T0 + 10 * DAY, &second),
        ev("g", "s", "shipped", T0 + DAY, r#","carrier":"FedEx""#),
        // x: cancelled before any deadline: nothing fires.
        new_order("x", c, T0 + 8 * DAY, &west()),
        ev("x", "x", "cancelled", T0 + 2 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        let fired = ids_of(o, TIMER_KINDS);
        let want = [
            "fulfillment_gap:g",
            "sla_delivery_breach:a",
            "sla_delivery_breach:g",
        ];
        assert_eq!(
            fired,
            [&want[..], &["sla_ship_breach:a", "sla_ship_breach:b"]].concat()
        );
        assert_deviations(
            o,
            "
            sla_ship_breach:a     | warning  | 6d1h
            sla_ship_breach:b     | warning  | 6d1h
            sla_delivery_breach:a | critical | 8d2h
            sla_delivery_breach:g | critical | 10d2h
            fulfillment_gap:g     | warning  | 5d12h
            ",
        );
        assert_eq!(
            o.deviation("fulfillment_gap:g").order_id.as_deref(),
            Some("g")
        );
        assert_kpis(
            o,
            "
            fulfillment_gaps |               | 5d | 1.0 | 1 | 1 | unrated
            fulfillment_gaps | carrier=FedEx | 5d | 1.0 | 1 | 1 | unrated
            fulfillment_gaps | region=West   | 5d | 1.0 | 1 | 1 | unrated
            ",
        );
        let gaps = o
            .final_kpis
            .iter()
            .filter(|k| k.kpi == "fulfillment_gaps")
            .count();
        assert_eq!(gaps, 3, "{}", o.label);
    });
}

#[test]
fn payment_failed_fires_again_only_after_resolution() {
    let declined = r#","reason":"card declined""#;
    let evs = vec![
        new_order("p", T0 + HOUR, T0 + 8 * DAY, &west()),
        ev("p", "f1", "payment_failed", T0 + 2 * HOUR, declined),
        ev("p", "f2", "payment_failed", T0 + 3 * HOUR, declined),
        ev("p", "a", "payment_authorized", T0 + 4 * HOUR, ""),
        ev(
            "p",
            "f3",
            "payment_failed",
            T0 + 5 * HOUR,
            r#","reason":"insufficient funds""#,
        ),
    ];
    check(&one_partition(evs), |o| {
        assert_ids(
            o,
            &[D::PaymentFailed],
            &["payment_failed:p:1", "payment_failed:p:2"],
        );
        assert_deviations(
            o,
            "
            payment_failed:p:1 | warning | 2h
            payment_failed:p:2 | warning | 5h
            ",
        );
        assert_kpis(
            o,
            "
            payment_failure_rate |                  | 0 | 0.75 | 3 | 4 | critical
            payment_failure_rate | segment=Consumer | 0 | 0.75 | 3 | 4 | critical
            ",
        );
    });
}

#[test]
fn carrier_exception_fires_again_only_after_resolution() {
    let s = T0 + DAY;
    let evs = vec![
        new_order("e", T0 + HOUR, T0 + 8 * DAY, &west()),
        ev("e", "s", "shipped", s, UPS),
        ev(
            "e",
            "x1",
            "carrier_exception",
            s + 2 * HOUR,
            r#","reason":"weather""#,
        ),
        ev(
            "e",
            "x2",
            "carrier_exception",
            s + 3 * HOUR,
            r#","reason":"weather""#,
        ),
        ev("e", "k", "carrier_checkpoint", s + 4 * HOUR, ""),
        ev(
            "e",
            "x3",
            "carrier_exception",
            s + DAY,
            r#","reason":"hub""#,
        ),
        ev("e", "d", "delivered", s + 2 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        assert_ids(
            o,
            &[D::CarrierException],
            &["carrier_exception:e:1", "carrier_exception:e:2"],
        );
        assert_deviations(
            o,
            "
            carrier_exception:e:1 | warning | 1d2h
            carrier_exception:e:2 | warning | 2d
            ",
        );
        assert_kpis(
            o,
            "
            carrier_exceptions | carrier=UPS | 1d | 2.0 | 2 | 2 | unrated
            carrier_exceptions |             | 2d | 1.0 | 1 | 1 | unrated
            ",
        );
    });
}

#[test]
fn partial_delivery_refunds_and_tickets() {
    let d = T0 + 3 * DAY;
    let evs = vec![
        new_order(
            "r",
            T0 + HOUR,
            T0 + 5 * DAY,
            &OrderData {
                qty: Some(3),
                ..west()
            },
        ),
        ev(
            "r",
            "t",
            "ticket_raised",
            T0 + 5 * HOUR,
            r#","reason":"where is my order""#,
        ),
        ev("r", "s", "shipped", T0 + DAY, r#","carrier":"UPS","qty":3"#),
        ev("r", "d", "delivered", d, r#","qty":2"#),
        ev(
            "r",
            "r1",
            "refund_requested",
            d + HOUR,
            r#","reason":"damaged","amount":600.0"#,
        ),
        ev(
            "r",
            "r2",
            "return_requested",
            d + 2 * HOUR,
            r#","reason":"size","amount":20.0"#,
        ),
        ev(
            "r",
            "r3",
            "refund_requested",
            d + 3 * HOUR,
            r#","reason":"late","amount":500"#,
        ),
    ];
    check(&one_partition(evs), |o| {
        assert_deviations(
            o,
            "
            partial_delivery:r      | warning  | 3d
            refund_requested:r:r-r1 | critical | 3d1h
            refund_requested:r:r-r2 | info     | 3d2h
            refund_requested:r:r-r3 | critical | 3d3h
            ticket_raised:r:r-t     | info     | 5h
            ",
        );
        assert_eq!(o.deviations_of(D::RefundRequested).len(), 3);
        assert_eq!(
            o.deviation("partial_delivery:r").order_id.as_deref(),
            Some("r")
        );
        // Three refund/return facts per one delivery; one ticket per one order.
        assert_kpis(
            o,
            "
            refund_rate | region=West      | 3d | 3.0 | 3 | 1 | unrated
            ticket_rate | segment=Consumer | 0  | 1.0 | 1 | 1 | unrated
            otif_rate   |                  | 3d | 0.0 | 0 | 1 | unrated
            ",
        );
    });
}

/// With no route history the risk is the prior (late rate 0.1) plus the slack term. Standard Class
/// (ship within 6d, transit 5d), promised 10 days after creation at `T0`: the expected remaining
/// time exceeds the time left by 1 day until the ship-by time, so p = sigmoid(logit(0.1) + 2.5) =
/// 0.575121 (warning). After day 6 the excess is `now - 5d`, so the score would reach the critical
/// 0.8 at 5d + ln(36)/2.5 d = 6d 10h 24m 6s: the band check scheduled then fires critical there.
/// The same order shipped on day 2 (excess -3d, p = 0.000061) has its pending check replaced and
/// never turns critical. An order promised one day after creation jumps straight to critical.
#[test]
fn predicted_delay_warning_then_critical_and_straight_to_critical() {
    let evs = vec![
        new_order("k", T0, T0 + 10 * DAY, &at_warehouse("WH-R1")),
        new_order("j", T0 + HOUR, T0 + HOUR + DAY, &at_warehouse("WH-R2")),
        new_order("m", T0, T0 + 10 * DAY, &at_warehouse("WH-R3")),
        ev("m", "s", "shipped", T0 + 2 * DAY, UPS),
    ];
    let input = one_partition(evs);
    let crossing = T0 + offset("6d10h24m");
    check(&input, |o| {
        let crit = o.deviation("predicted_delay:k:critical");
        let c = crit.event_time;
        assert_eq!(crit.severity, S::Critical);
        assert!(
            (crossing..crossing + MIN).contains(&c),
            "{}: critical at T0 + {}",
            o.label,
            c - T0
        );
        assert_deviations(
            o,
            "
            predicted_delay:k:warning  | warning  | 0
            predicted_delay:j:critical | critical | 1h
            predicted_delay:m:warning  | warning  | 0
            ",
        );
        assert_eq!(ids_of(o, &[D::PredictedDelay]).len(), 4, "{}", o.label);
        let scores = |order: &str| -> Vec<(i64, i64)> {
            o.risk_scores
                .iter()
                .filter(|s| s.0 == order)
                .map(|s| (s.1, s.2))
                .collect()
        };
        let k = scores("k");
        assert_eq!(k.len(), 2, "{}: {k:?}", o.label);
        assert_eq!(k[0], (T0, 575_121), "{}", o.label);
        assert!(
            k[1].0 == c && (800_000..800_010).contains(&k[1].1),
            "{}: {k:?}",
            o.label
        );
        assert_eq!(scores("j"), [(T0 + HOUR, 1_000_000)], "{}", o.label);
        assert_eq!(
            scores("m"),
            [(T0, 575_121), (T0 + 2 * DAY, 61)],
            "{}",
            o.label
        );
        // segment_risk_score: day 0 has k, j and m's creation scores; day 6 k's band check.
        assert_eq!(
            o.kpi(&expand("segment_risk_score||@0")).denominator,
            3,
            "{}",
            o.label
        );
        let day6 = o.kpi(&expand("segment_risk_score||@6d"));
        assert_eq!(
            (day6.numerator, day6.denominator),
            (k[1].1, 1),
            "{}",
            o.label
        );
    });
    // The check time is the first millisecond the quantised score reaches the critical band.
    let spec = spec();
    let level = spec.service_levels.for_mode("Standard Class");
    let snap = RiskSnapshot {
        created_ts: T0,
        promised_ts: T0 + 10 * DAY,
        shipped_ts: None,
        out_for_delivery: false,
        open_exceptions: 0,
        payment_failed_open: false,
    };
    let (within, transit) = (level.ship_within.ms(), level.transit.ms());
    let p = |now: i64| {
        ppm(score(
            &snap,
            &RouteStats::default(),
            now,
            within,
            transit,
            &spec,
        ))
    };
    let oracle = oracle::recompute(&spec, &input);
    let c = oracle
        .deviation("predicted_delay:k:critical")
        .expect("fired")
        .event_time;
    assert!(
        p(c) >= 800_000 && p(c - 1) < 800_000,
        "p(c) = {}, p(c - 1) = {}",
        p(c),
        p(c - 1)
    );
}

/// A mean above its warn level (80 h order-to-ship: >= 72 h, < 120 h) breaches at window close,
/// in each of its series.
#[test]
fn kpi_threshold_breach_warn_and_critical() {
    let c = T0 + HOUR;
    let evs = vec![
        new_order("s", c, T0 + 6 * DAY, &west()),
        ev("s", "s", "shipped", c + 80 * HOUR, UPS),
        ev("s", "d", "delivered", T0 + 5 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        assert_kpis(
            o,
            "
            order_to_ship_hours |                | 3d | 80.0 | 80h | 1 | warn
            order_to_ship_hours | warehouse=WH-A | 3d | 80.0 | 80h | 1 | warn
            on_time_rate        |                | 5d | 1.0  | 1   | 1 | ok
            ",
        );
        assert_deviations(
            o,
            "
            kpi_threshold_breach:order_to_ship_hours::@3d               | warning | 4d
            kpi_threshold_breach:order_to_ship_hours:warehouse=WH-A:@3d | warning | 4d
            ",
        );
        let breaches = ids_of(o, &[D::KpiThresholdBreach]);
        let of = |kpi: &str| breaches.iter().filter(|id| id.contains(kpi)).count();
        assert_eq!(
            (of(":order_to_ship_hours:"), of(":on_time_rate:")),
            (2, 0),
            "{}",
            o.label
        );
    });
}

/// One delivery a day on days 2..=6: on time four times, then late. The fifth day's on-time rate
/// (0) is 50 floored standard deviations below a flat baseline of four 1.0s, in every series.
#[test]
fn kpi_anomaly_against_trailing_baseline() {
    let mut evs = Vec::new();
    for i in 0..5 {
        let o = format!("n{i}");
        let day = T0 + (2 + i) * DAY;
        evs.push(new_order(&o, T0 + HOUR, day + 12 * HOUR, &west()));
        evs.push(ev(&o, "s", "shipped", T0 + DAY, UPS));
        let at = if i < 4 {
            day + 10 * HOUR
        } else {
            day + 13 * HOUR
        };
        evs.push(ev(&o, "d", "delivered", at, ""));
    }
    check(&one_partition(evs), |o| {
        let values: Vec<Option<f64>> = o
            .series("on_time_rate", "")
            .iter()
            .map(|k| k.value)
            .collect();
        assert_eq!(
            values,
            [Some(1.0), Some(1.0), Some(1.0), Some(1.0), Some(0.0)],
            "{}",
            o.label
        );
        assert_deviations(
            o,
            "
            kpi_anomaly:on_time_rate::@6d                                    | warning | 7d
            kpi_anomaly:on_time_rate:region=West,ship_mode=Standard Class:@6d | warning | 7d
            ",
        );
        // One per dimension set of on_time_rate (7), none earlier (fewer than 4 baseline values).
        let anomalies = ids_of(o, &[D::KpiAnomaly]);
        assert_eq!(anomalies.len(), 7, "{}: {anomalies:?}", o.label);
        assert!(anomalies
            .iter()
            .all(|id| id.starts_with("kpi_anomaly:on_time_rate:")));
        assert!(anomalies.iter().all(|id| id.ends_with(&expand(":@6d"))));
    });
}

/// Lateness is per partition: `F = tick_of(max_ts - 30m - 2h)`; an event of tick `F` is accepted,
/// one tick earlier is late, counted and otherwise ignored.
#[test]
fn late_events_are_counted_and_excluded() {
    let frontier = T0 + offset("7h30m");
    let p0 = vec![
        new_order("l", T0 + HOUR, T0 + 5 * DAY, &west()).line,
        ev("z", "t", "ticket_raised", T0 + 10 * HOUR, "").line,
        // The frontier is now tick_of(T0 + 7h30m).
        ev("l", "f", "payment_failed", frontier, r#","reason":"x""#).line,
        ev("l", "d", "delivered", frontier - 1000, "").line,
        ev("l", "x", "cancelled", T0 + 3 * DAY, "").line,
    ];
    // Another partition has its own frontier: an early event there is fine.
    let p1 = vec![
        new_order("m", T0 + 2 * HOUR, T0 + 5 * DAY, &west()).line,
        ev("m", "d", "delivered", T0 + 3 * DAY, "").line,
    ];
    check(&MemoryPartitions::new("late", [p0, p1]), |o| {
        assert_eq!(o.late, 1, "{}", o.label);
        let late = (0, 3, "l-d".to_string(), "l".to_string(), frontier - 1000);
        assert_eq!(o.late_events, [late], "{}", o.label);
        assert_deviations(o, "payment_failed:l:1 | warning | 7h30m");
        // l was never delivered: only m's delivery counts.
        let deliveries: i64 = o
            .series("on_time_rate", "")
            .iter()
            .map(|k| k.denominator)
            .sum();
        assert_eq!(deliveries, 1, "{}", o.label);
        assert_kpis(o, "on_time_rate | | 3d | 1.0 | 1 | 1 | ok");
        assert!(o.has_deviation("ticket_raised:z:z-t"));
        assert_eq!((o.duplicates, o.dead_lettered), (0, 0));
    });
}

/// A repeated `(order_id, event_id)` is counted and ignored, in any partition; a second event of a
/// "first only" kind with a new id is not a duplicate but changes nothing.
#[test]
fn duplicates_are_no_ops() {
    let c = new_order("d", T0 + HOUR, T0 + 5 * DAY, &west());
    let f = ev(
        "d",
        "f",
        "payment_failed",
        T0 + 2 * HOUR,
        r#","reason":"x""#,
    );
    let s = ev("d", "s", "shipped", T0 + DAY, UPS);
    let dl = ev("d", "d", "delivered", T0 + 3 * DAY, "");
    let dl2 = ev("d", "d2", "delivered", T0 + 3 * DAY + HOUR, "");
    let p0 = in_ts_order(vec![c.clone(), c, f.clone(), s, dl.clone(), dl, dl2]);
    let p1 = in_ts_order(vec![f]);
    check(&MemoryPartitions::new("dups", [p0, p1]), |o| {
        assert_eq!((o.duplicates, o.late), (3, 0), "{}", o.label);
        assert_kpis(
            o,
            "
            on_time_rate             | | 3d | 1.0   | 1     | 1 | ok
            avg_delivery_delay_hours | | 3d | -48.0 | -2d   | 1 | unrated
            payment_failure_rate     | | 0  | 1.0   | 1     | 1 | critical
            order_value              | | 0  | 100.0 | 10000 | 1 | unrated
            ticket_rate              | | 0  | 0.0   | 0     | 1 | unrated
            ",
        );
        assert_ids(o, &[D::PaymentFailed], &["payment_failed:d:1"]);
    });
}

#[test]
fn malformed_lines_are_dead_lettered_and_the_rest_processed() {
    let lines = vec![
        new_order("g", T0 + HOUR, T0 + 5 * DAY, &west()).line,
        "{broken".to_string(),
        r#"{"v":1,"event_id":"h-s","order_id":"h","type":"shipped","ts":1700010000000}"#.into(),
        r#"{"v":1,"event_id":"h-t","order_id":"h","type":"teleported","ts":1700010000000}"#.into(),
        ev("g", "s", "shipped", T0 + DAY, UPS).line,
        ev("g", "d", "delivered", T0 + 3 * DAY, "").line,
    ];
    check(&MemoryPartitions::new("bad", [lines]), |o| {
        assert_eq!((o.dead_lettered, o.late), (3, 0), "{}", o.label);
        let dl = &o.dead_letters;
        assert_eq!(dl.len(), 3, "{}", o.label);
        assert!(
            dl[0].0 == 0 && dl[0].1 == 1 && dl[0].2.starts_with("malformed JSON"),
            "{dl:?}"
        );
        assert_eq!(
            dl[1],
            (0, 2, "missing field `carrier` for type `shipped`".into()),
            "{}",
            o.label
        );
        assert_eq!(
            dl[2],
            (0, 3, "unknown event type `teleported`".into()),
            "{}",
            o.label
        );
        assert_kpis(
            o,
            "
            on_time_rate        | | 3d | 1.0  | 1   | 1 | ok
            order_to_ship_hours | | 1d | 23.0 | 23h | 1 | ok
            ",
        );
    });
}

/// Backlog: day 0 three orders (A, A, B); day 1 one A ships and B is cancelled; day 3 an order is
/// created and shipped hours later (the level moves, so the day has a cell, at the same end
/// level); day 5 an order is created and shipped in the same tick (no change, no cell); the last
/// open A order is retired 20 days (idle_open) after its only event.
#[test]
fn backlog_gauge_levels() {
    let promised = T0 + 9 * DAY;
    let evs = vec![
        new_order("a1", T0 + HOUR, promised, &west()),
        new_order("a2", T0 + 2 * HOUR, promised, &west()),
        new_order("b1", T0 + 3 * HOUR, promised, &at_warehouse("WH-B")),
        ev("a2", "s", "shipped", T0 + DAY + HOUR, UPS),
        ev("b1", "x", "cancelled", T0 + DAY + 2 * HOUR, ""),
        new_order("a3", T0 + 3 * DAY + HOUR, promised, &west()),
        ev("a3", "s", "shipped", T0 + 3 * DAY + 5 * HOUR, UPS),
        new_order("a4", T0 + 5 * DAY + HOUR, promised, &west()),
        ev("a4", "s", "shipped", T0 + 5 * DAY + HOUR + 10_000, UPS),
    ];
    check(&one_partition(evs), |o| {
        let levels = |dims: &str| -> Vec<(i64, i64)> {
            let series = o.series("open_backlog", dims);
            series
                .iter()
                .map(|k| ((k.window_start - T0) / DAY, k.numerator))
                .collect()
        };
        assert_eq!(levels(""), [(0, 3), (1, 1), (3, 1), (20, 0)], "{}", o.label);
        assert_eq!(
            levels("warehouse=WH-A"),
            [(0, 2), (1, 1), (3, 1), (20, 0)],
            "{}",
            o.label
        );
        assert_eq!(levels("warehouse=WH-B"), [(0, 1), (1, 0)], "{}", o.label);
        assert_kpis(o, "open_backlog | | 0 | 3.0 | 3 | 1 | unrated");
    });
}

/// A 7-day window sliding by a day holds a fact in the seven windows starting on its day and the
/// six days before.
#[test]
fn sliding_window_membership() {
    let evs = vec![
        new_order("w1", T0 + 5 * DAY, T0 + 11 * DAY, &west()),
        ev("w1", "d", "delivered", T0 + 10 * DAY + 5 * HOUR, ""),
        new_order("w2", T0 + 5 * DAY, T0 + 11 * DAY, &in_region("East")),
        ev("w2", "d", "delivered", T0 + 12 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        let series = o.series("on_time_rate_7d", "");
        let windows: Vec<(i64, i64, i64)> = series
            .iter()
            .map(|k| ((k.window_start - T0) / DAY, k.numerator, k.denominator))
            .collect();
        let want: Vec<(i64, i64, i64)> = (4..=12)
            .map(|d| match d {
                4 | 5 => (d, 1, 1),
                6..=10 => (d, 1, 2),
                _ => (d, 0, 1),
            })
            .collect();
        assert_eq!(windows, want, "{}", o.label);
        let west = o.series("on_time_rate_7d", "region=West");
        let starts: Vec<i64> = west.iter().map(|k| (k.window_start - T0) / DAY).collect();
        assert_eq!(starts, (4..=10).collect::<Vec<_>>(), "{}", o.label);
        assert_kpis(o, "on_time_rate_7d | | 8d | 0.5 | 1 | 2 | critical");
    });
}

/// Retiring forgets the record with its timers: an order that reappears after retention (here a
/// ticket) is a new record, and the old record's pending deadlines must not fire against it.
/// Standard Class: the gap deadline (ship + 7.5d) and a far promise + 2h both fall after the
/// finished-order retention (7d after the last event) and after the new ticket.
#[test]
fn retired_order_timers_do_not_fire_on_a_new_record() {
    let wh = at_warehouse("WH-Q");
    let evs = vec![
        // q: shipped day 1, delivered 2 h later; retired at day 8 + 2h; gap deadline day 8 + 12h.
        new_order("q", T0 + HOUR, T0 + 3 * DAY, &wh),
        ev("q", "s", "shipped", T0 + DAY, UPS),
        ev("q", "d", "delivered", T0 + DAY + 2 * HOUR, ""),
        ev("q", "t", "ticket_raised", T0 + 8 * DAY + 6 * HOUR, ""),
        // v: promised on day 12, delivered on day 2, retired day 9; ticket on day 10.
        new_order("v", T0 + HOUR, T0 + 12 * DAY, &wh),
        ev("v", "s", "shipped", T0 + DAY, UPS),
        ev("v", "d", "delivered", T0 + 2 * DAY, ""),
        ev("v", "t", "ticket_raised", T0 + 10 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        let timers = ids_of(o, TIMER_KINDS);
        assert!(timers.is_empty(), "{}: {timers:?}", o.label);
        assert!(
            o.final_kpis.iter().all(|k| k.kpi != "fulfillment_gaps"),
            "{}",
            o.label
        );
        assert_deviations(
            o,
            "
            ticket_raised:q:q-t | info | 8d6h
            ticket_raised:v:v-t | info | 10d
            ",
        );
        // The tickets belong to records without order_created: global ticket facts, no dims.
        assert_kpis(o, "ticket_rate | | 10d | - | 1 | 0 | unrated");
        assert!(!o.has_kpi(&expand("ticket_rate|segment=Consumer|@10d")));
    });
}
