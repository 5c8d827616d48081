//! One test per rule of `docs/SEMANTICS.md` on a tiny hand-written input, asserting hand-computed
//! numbers on the batch oracle and, with the same assertions, on `run_job` (1 and 2 workers), then
//! that the dataflow equals the oracle on everything (risk scores included).
//!
//! The spec is the shipped one with its numbers pinned (`common::pinned_spec`: Standard Class ships
//! within 6d with 5d transit, Second Class 4d/3d, grace 2h, ...), `min_count: 1` (so single facts
//! are rated) and `idle_open: 20d` (shorter tails). `T0` is a day boundary; ticks are 1 minute.

mod common;
mod oracle;

use common::{
    assert_same, created, event, in_ts_order, pinned_spec, run_dataflow, set, set_min_count, yaml,
    Ev, OrderData, Outcome,
};
use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::risk_model::{score, RiskSnapshot, RouteStats};
use fulfillment_ai::model::facts::ppm;
use fulfillment_ai::model::{DeviationType, KpiStatus};
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
/// dataflow with the oracle in full. Returns the oracle's outcome.
fn check(input: &MemoryPartitions, assertions: impl Fn(&Outcome)) -> Outcome {
    let spec = spec();
    let oracle = Outcome::from_oracle(&oracle::recompute(&spec, input));
    assertions(&oracle);
    for workers in [1, 2] {
        let df = run_dataflow(&spec, input, workers, true);
        assertions(&df);
        assert_same(&oracle, &df, true, "rule test");
    }
    oracle
}

fn one_partition(evs: Vec<Ev>) -> MemoryPartitions {
    MemoryPartitions::new("rules", [in_ts_order(evs)])
}

fn key(kpi: &str, dims: &str, start: i64) -> String {
    format!("{kpi}|{dims}|{start}")
}

fn assert_kpi(
    o: &Outcome,
    key: &str,
    value: Option<f64>,
    numerator: i64,
    denominator: i64,
    status: KpiStatus,
) {
    let k = o.kpi(key);
    let value_ok = match (k.value, value) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        (a, b) => a == b,
    };
    assert!(
        value_ok && (k.numerator, k.denominator, k.status) == (numerator, denominator, status),
        "{}: {key}: got value {:?} num {} den {} status {:?}, want {value:?} {numerator} {denominator} {status:?}",
        o.label,
        k.value,
        k.numerator,
        k.denominator,
        k.status
    );
    assert!(k.is_final, "{}: {key} is not final", o.label);
    assert_eq!(
        k.window_end - k.window_start,
        if k.kpi == "on_time_rate_7d" {
            7 * DAY
        } else {
            DAY
        }
    );
}

fn west() -> OrderData {
    OrderData::default()
}

fn east() -> OrderData {
    OrderData {
        region: "East".into(),
        ..OrderData::default()
    }
}

/// Five deliveries on day 3 around the promise `T0 + 3d 12h`: -2h, -1h (1 of 2 units), 0, +1h,
/// +3h (East; the others West).
#[test]
fn delivery_kpis_on_time_late_delay_p95_otif() {
    let promised = T0 + 3 * DAY + 12 * HOUR;
    let mut evs = Vec::new();
    for (i, delay_h, qty, d) in [
        (1, -2, 2, west()),
        (2, -1, 1, west()),
        (3, 0, 2, west()),
        (4, 1, 2, west()),
        (5, 3, 2, east()),
    ] {
        let o = format!("o{i}");
        evs.push(created(&format!("{o}-c"), &o, T0 + HOUR, promised, &d));
        evs.push(event(
            &format!("{o}-s"),
            &o,
            "shipped",
            T0 + DAY,
            r#","carrier":"UPS","qty":2"#,
        ));
        evs.push(event(
            &format!("{o}-d"),
            &o,
            "delivered",
            promised + delay_h * HOUR,
            &format!(r#","qty":{qty}"#),
        ));
    }
    let day3 = T0 + 3 * DAY;
    check(&one_partition(evs), |o| {
        use KpiStatus::*;
        assert_kpi(o, &key("on_time_rate", "", day3), Some(0.6), 3, 5, Critical);
        assert_kpi(
            o,
            &key("on_time_rate", "region=West", day3),
            Some(0.75),
            3,
            4,
            Critical,
        );
        assert_kpi(
            o,
            &key("on_time_rate", "region=East", day3),
            Some(0.0),
            0,
            1,
            Critical,
        );
        assert_kpi(
            o,
            &key("on_time_rate", "carrier=UPS", day3),
            Some(0.6),
            3,
            5,
            Critical,
        );
        assert_kpi(
            o,
            &key("late_deliveries", "", day3),
            Some(2.0),
            2,
            2,
            Unrated,
        );
        assert_kpi(
            o,
            &key("late_deliveries", "region=West", day3),
            Some(1.0),
            1,
            1,
            Unrated,
        );
        assert_kpi(
            o,
            &key("avg_delivery_delay_hours", "", day3),
            Some(0.2),
            HOUR,
            5,
            Unrated,
        );
        assert_kpi(
            o,
            &key("avg_delivery_delay_hours", "region=West", day3),
            Some(-0.5),
            -2 * HOUR,
            4,
            Unrated,
        );
        assert_kpi(
            o,
            &key("p95_delivery_delay_hours", "", day3),
            Some(3.0),
            3 * HOUR,
            5,
            Unrated,
        );
        assert_kpi(
            o,
            &key("p95_delivery_delay_hours", "region=West", day3),
            Some(1.0),
            HOUR,
            4,
            Unrated,
        );
        assert_kpi(o, &key("otif_rate", "", day3), Some(0.4), 2, 5, Unrated);
        // (3d 11h + delay) per order: 83 h + 0.2 h on average.
        assert_kpi(
            o,
            &key("order_to_delivery_hours", "", day3),
            Some(83.2),
            5 * (83 * HOUR) + HOUR,
            5,
            Unrated,
        );
        assert_kpi(
            o,
            &key("order_to_ship_hours", "", T0 + DAY),
            Some(23.0),
            5 * 23 * HOUR,
            5,
            Ok,
        );
        assert_kpi(o, &key("refund_rate", "", day3), Some(0.0), 0, 5, Unrated);
        assert_kpi(
            o,
            &key("order_value", "region=West", T0),
            Some(400.0),
            40_000,
            4,
            Unrated,
        );
        assert!(!o.has_kpi(&key("late_deliveries", "region=West", T0 + 2 * DAY)));
        // Exactly one late delivery is past the 2 h grace; one was partial.
        assert_eq!(
            o.deviations_of(DeviationType::SlaDeliveryBreach).len(),
            1,
            "{}",
            o.label
        );
        o.assert_deviation(
            "sla_delivery_breach:o5",
            DeviationType::SlaDeliveryBreach,
            Severity::Critical,
            promised + 2 * HOUR,
        );
        assert_eq!(
            o.deviations_of(DeviationType::PartialDelivery).len(),
            1,
            "{}",
            o.label
        );
        o.assert_deviation(
            "partial_delivery:o2",
            DeviationType::PartialDelivery,
            Severity::Warning,
            promised - HOUR,
        );
        o.assert_deviation(
            &format!("kpi_threshold_breach:on_time_rate::{day3}"),
            DeviationType::KpiThresholdBreach,
            Severity::Critical,
            day3 + DAY,
        );
        o.assert_deviation(
            &format!("kpi_threshold_breach:on_time_rate:region=East:{day3}"),
            DeviationType::KpiThresholdBreach,
            Severity::Critical,
            day3 + DAY,
        );
        assert!(
            o.deviations_of(DeviationType::SlaShipBreach).is_empty()
                && o.deviations_of(DeviationType::FulfillmentGap).is_empty()
        );
    });
}

/// Ship-by and delivery deadlines, their boundaries, fulfillment gaps and cancellations.
#[test]
fn sla_breaches_and_fulfillment_gap() {
    let c = T0 + HOUR;
    let second = OrderData {
        ship_mode: "Second Class".into(),
        warehouse: "WH-B".into(),
        ..west()
    };
    let evs = vec![
        // Never ships: ship-by at c + 6d (Standard Class), delivery deadline at promise + 2h.
        created("a-c", "a", c, T0 + 8 * DAY, &west()),
        // Ships 30 s after its ship-by deadline, in the deadline's own tick: still a breach.
        created("b-c", "b", c, T0 + 9 * DAY, &west()),
        event(
            "b-s",
            "b",
            "shipped",
            c + 6 * DAY + 30_000,
            r#","carrier":"UPS""#,
        ),
        event("b-d", "b", "delivered", T0 + 8 * DAY, ""),
        // Ships exactly at its ship-by deadline and delivers exactly at promise + grace: no breach.
        created("c-c", "c", c, T0 + 9 * DAY, &west()),
        event("c-s", "c", "shipped", c + 6 * DAY, r#","carrier":"UPS""#),
        event("c-d", "c", "delivered", T0 + 9 * DAY + 2 * HOUR, ""),
        // Second Class, shipped on day 1, never delivered: gap at ship + 3d x 1.5.
        created("g-c", "g", c, T0 + 10 * DAY, &second),
        event("g-s", "g", "shipped", T0 + DAY, r#","carrier":"FedEx""#),
        // Cancelled before any deadline: nothing fires.
        created("x-c", "x", c, T0 + 8 * DAY, &west()),
        event("x-x", "x", "cancelled", T0 + 2 * DAY, ""),
    ];
    let gap_at = T0 + DAY + 4 * DAY + 12 * HOUR;
    check(&one_partition(evs), |o| {
        let mut ids: Vec<&str> = o
            .deviations
            .iter()
            .filter(|d| {
                matches!(
                    d.kind,
                    DeviationType::SlaShipBreach
                        | DeviationType::SlaDeliveryBreach
                        | DeviationType::FulfillmentGap
                )
            })
            .map(|d| d.id.as_str())
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                "fulfillment_gap:g",
                "sla_delivery_breach:a",
                "sla_delivery_breach:g",
                "sla_ship_breach:a",
                "sla_ship_breach:b"
            ],
            "{}",
            o.label
        );
        o.assert_deviation(
            "sla_ship_breach:a",
            DeviationType::SlaShipBreach,
            Severity::Warning,
            c + 6 * DAY,
        );
        o.assert_deviation(
            "sla_ship_breach:b",
            DeviationType::SlaShipBreach,
            Severity::Warning,
            c + 6 * DAY,
        );
        o.assert_deviation(
            "sla_delivery_breach:a",
            DeviationType::SlaDeliveryBreach,
            Severity::Critical,
            T0 + 8 * DAY + 2 * HOUR,
        );
        o.assert_deviation(
            "fulfillment_gap:g",
            DeviationType::FulfillmentGap,
            Severity::Warning,
            gap_at,
        );
        assert_eq!(
            o.deviation("fulfillment_gap:g").order_id.as_deref(),
            Some("g")
        );
        let gap_day = T0 + 5 * DAY;
        assert_kpi(
            o,
            &key("fulfillment_gaps", "", gap_day),
            Some(1.0),
            1,
            1,
            KpiStatus::Unrated,
        );
        assert_kpi(
            o,
            &key("fulfillment_gaps", "carrier=FedEx", gap_day),
            Some(1.0),
            1,
            1,
            KpiStatus::Unrated,
        );
        assert_eq!(
            o.final_kpis
                .iter()
                .filter(|k| k.kpi == "fulfillment_gaps")
                .count(),
            3,
            "{}",
            o.label
        );
    });
}

#[test]
fn payment_failed_fires_again_only_after_resolution() {
    let evs = vec![
        created("p-c", "p", T0 + HOUR, T0 + 8 * DAY, &west()),
        event(
            "p-f1",
            "p",
            "payment_failed",
            T0 + 2 * HOUR,
            r#","reason":"card declined""#,
        ),
        event(
            "p-f2",
            "p",
            "payment_failed",
            T0 + 3 * HOUR,
            r#","reason":"card declined""#,
        ),
        event("p-a", "p", "payment_authorized", T0 + 4 * HOUR, ""),
        event(
            "p-f3",
            "p",
            "payment_failed",
            T0 + 5 * HOUR,
            r#","reason":"insufficient funds""#,
        ),
    ];
    check(&one_partition(evs), |o| {
        assert_eq!(
            o.deviations_of(DeviationType::PaymentFailed).len(),
            2,
            "{}: {:?}",
            o.label,
            o.deviation_ids()
        );
        o.assert_deviation(
            "payment_failed:p:1",
            DeviationType::PaymentFailed,
            Severity::Warning,
            T0 + 2 * HOUR,
        );
        o.assert_deviation(
            "payment_failed:p:2",
            DeviationType::PaymentFailed,
            Severity::Warning,
            T0 + 5 * HOUR,
        );
        assert_kpi(
            o,
            &key("payment_failure_rate", "", T0),
            Some(0.75),
            3,
            4,
            KpiStatus::Critical,
        );
        assert_kpi(
            o,
            &key("payment_failure_rate", "segment=Consumer", T0),
            Some(0.75),
            3,
            4,
            KpiStatus::Critical,
        );
    });
}

#[test]
fn carrier_exception_fires_again_only_after_resolution() {
    let s = T0 + DAY;
    let evs = vec![
        created("e-c", "e", T0 + HOUR, T0 + 8 * DAY, &west()),
        event("e-s", "e", "shipped", s, r#","carrier":"UPS""#),
        event(
            "e-x1",
            "e",
            "carrier_exception",
            s + 2 * HOUR,
            r#","reason":"weather""#,
        ),
        event(
            "e-x2",
            "e",
            "carrier_exception",
            s + 3 * HOUR,
            r#","reason":"weather""#,
        ),
        event("e-k", "e", "carrier_checkpoint", s + 4 * HOUR, ""),
        event(
            "e-x3",
            "e",
            "carrier_exception",
            s + DAY,
            r#","reason":"hub""#,
        ),
        event("e-d", "e", "delivered", s + 2 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        assert_eq!(
            o.deviations_of(DeviationType::CarrierException).len(),
            2,
            "{}",
            o.label
        );
        o.assert_deviation(
            "carrier_exception:e:1",
            DeviationType::CarrierException,
            Severity::Warning,
            s + 2 * HOUR,
        );
        o.assert_deviation(
            "carrier_exception:e:2",
            DeviationType::CarrierException,
            Severity::Warning,
            s + DAY,
        );
        assert_kpi(
            o,
            &key("carrier_exceptions", "carrier=UPS", s),
            Some(2.0),
            2,
            2,
            KpiStatus::Unrated,
        );
        assert_kpi(
            o,
            &key("carrier_exceptions", "", s + DAY),
            Some(1.0),
            1,
            1,
            KpiStatus::Unrated,
        );
    });
}

#[test]
fn partial_delivery_refunds_and_tickets() {
    let d = T0 + 3 * DAY;
    let three = OrderData {
        qty: Some(3),
        ..west()
    };
    let evs = vec![
        created("r-c", "r", T0 + HOUR, T0 + 5 * DAY, &three),
        event(
            "r-t",
            "r",
            "ticket_raised",
            T0 + 5 * HOUR,
            r#","reason":"where is my order""#,
        ),
        event(
            "r-s",
            "r",
            "shipped",
            T0 + DAY,
            r#","carrier":"UPS","qty":3"#,
        ),
        event("r-d", "r", "delivered", d, r#","qty":2"#),
        event(
            "r-r1",
            "r",
            "refund_requested",
            d + HOUR,
            r#","reason":"damaged","amount":600.0"#,
        ),
        event(
            "r-r2",
            "r",
            "return_requested",
            d + 2 * HOUR,
            r#","reason":"wrong size","amount":20.0"#,
        ),
        event(
            "r-r3",
            "r",
            "refund_requested",
            d + 3 * HOUR,
            r#","reason":"late","amount":500"#,
        ),
    ];
    check(&one_partition(evs), |o| {
        o.assert_deviation(
            "partial_delivery:r",
            DeviationType::PartialDelivery,
            Severity::Warning,
            d,
        );
        o.assert_deviation(
            "refund_requested:r:r-r1",
            DeviationType::RefundRequested,
            Severity::Critical,
            d + HOUR,
        );
        o.assert_deviation(
            "refund_requested:r:r-r2",
            DeviationType::RefundRequested,
            Severity::Info,
            d + 2 * HOUR,
        );
        o.assert_deviation(
            "refund_requested:r:r-r3",
            DeviationType::RefundRequested,
            Severity::Critical,
            d + 3 * HOUR,
        );
        o.assert_deviation(
            "ticket_raised:r:r-t",
            DeviationType::TicketRaised,
            Severity::Info,
            T0 + 5 * HOUR,
        );
        assert_eq!(o.deviations_of(DeviationType::RefundRequested).len(), 3);
        assert_eq!(
            o.deviation("partial_delivery:r").order_id.as_deref(),
            Some("r")
        );
        // Three refund/return facts per one delivery; one ticket per one order.
        assert_kpi(
            o,
            &key("refund_rate", "region=West", d),
            Some(3.0),
            3,
            1,
            KpiStatus::Unrated,
        );
        assert_kpi(
            o,
            &key("ticket_rate", "segment=Consumer", T0),
            Some(1.0),
            1,
            1,
            KpiStatus::Unrated,
        );
        assert_kpi(
            o,
            &key("otif_rate", "", d),
            Some(0.0),
            0,
            1,
            KpiStatus::Unrated,
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
    let data = |wh: &str| OrderData {
        warehouse: wh.into(),
        ..west()
    };
    let evs = vec![
        created("k-c", "k", T0, T0 + 10 * DAY, &data("WH-R1")),
        created("j-c", "j", T0 + HOUR, T0 + HOUR + DAY, &data("WH-R2")),
        created("m-c", "m", T0, T0 + 10 * DAY, &data("WH-R3")),
        event("m-s", "m", "shipped", T0 + 2 * DAY, r#","carrier":"UPS""#),
    ];
    let input = one_partition(evs);
    check(&input, |o| {
        o.assert_deviation(
            "predicted_delay:k:warning",
            DeviationType::PredictedDelay,
            Severity::Warning,
            T0,
        );
        let crit = o.deviation("predicted_delay:k:critical");
        assert_eq!(crit.severity, Severity::Critical);
        let c = crit.event_time;
        assert!(
            (T0 + 6 * DAY + 10 * HOUR + 24 * MIN..T0 + 6 * DAY + 10 * HOUR + 25 * MIN).contains(&c),
            "{}: critical at T0 + {} ms",
            o.label,
            c - T0
        );
        o.assert_deviation(
            "predicted_delay:j:critical",
            DeviationType::PredictedDelay,
            Severity::Critical,
            T0 + HOUR,
        );
        o.assert_deviation(
            "predicted_delay:m:warning",
            DeviationType::PredictedDelay,
            Severity::Warning,
            T0,
        );
        assert!(
            !o.has_deviation("predicted_delay:j:warning")
                && !o.has_deviation("predicted_delay:m:critical"),
            "{}",
            o.label
        );
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
        assert_eq!(k[1].0, c);
        assert!((800_000..800_010).contains(&k[1].1), "{}: {k:?}", o.label);
        assert_eq!(scores("j"), [(T0 + HOUR, 1_000_000)], "{}", o.label);
        assert_eq!(
            scores("m"),
            [(T0, 575_121), (T0 + 2 * DAY, 61)],
            "{}",
            o.label
        );
        // segment_risk_score: day 0 has k, j and m's creation scores; day 6 k's band check.
        assert_eq!(
            o.kpi(&key("segment_risk_score", "", T0)).denominator,
            3,
            "{}",
            o.label
        );
        assert_eq!(
            o.kpi(&key("segment_risk_score", "", T0 + 6 * DAY))
                .numerator,
            k[1].1,
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
    let p = |now: i64| {
        ppm(score(
            &snap,
            &RouteStats::default(),
            now,
            level.ship_within.ms(),
            level.transit.ms(),
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
        "p({c}) = {}, p(c - 1) = {}",
        p(c),
        p(c - 1)
    );
}

/// A mean above its warn level and a rate at its critical level breach at window close.
#[test]
fn kpi_threshold_breach_warn_and_critical() {
    let c = T0 + HOUR;
    let evs = vec![
        // 80 h order-to-ship: warn (>= 72 h, < 120 h).
        created("s-c", "s", c, T0 + 6 * DAY, &west()),
        event("s-s", "s", "shipped", c + 80 * HOUR, r#","carrier":"UPS""#),
        event("s-d", "s", "delivered", T0 + 5 * DAY, ""),
    ];
    let ship_day = T0 + 3 * DAY;
    check(&one_partition(evs), |o| {
        assert_kpi(
            o,
            &key("order_to_ship_hours", "", ship_day),
            Some(80.0),
            80 * HOUR,
            1,
            KpiStatus::Warn,
        );
        assert_kpi(
            o,
            &key("order_to_ship_hours", "warehouse=WH-A", ship_day),
            Some(80.0),
            80 * HOUR,
            1,
            KpiStatus::Warn,
        );
        assert_kpi(
            o,
            &key("on_time_rate", "", T0 + 5 * DAY),
            Some(1.0),
            1,
            1,
            KpiStatus::Ok,
        );
        let breaches: Vec<&str> = o
            .deviations_of(DeviationType::KpiThresholdBreach)
            .iter()
            .map(|d| d.id.as_str())
            .filter(|id| id.contains(":order_to_ship_hours:"))
            .collect();
        assert_eq!(breaches.len(), 2, "{}: {breaches:?}", o.label);
        o.assert_deviation(
            &format!("kpi_threshold_breach:order_to_ship_hours::{ship_day}"),
            DeviationType::KpiThresholdBreach,
            Severity::Warning,
            ship_day + DAY,
        );
        o.assert_deviation(
            &format!("kpi_threshold_breach:order_to_ship_hours:warehouse=WH-A:{ship_day}"),
            DeviationType::KpiThresholdBreach,
            Severity::Warning,
            ship_day + DAY,
        );
        assert!(
            o.deviations_of(DeviationType::KpiThresholdBreach)
                .iter()
                .all(|d| !d.id.contains(":on_time_rate:")),
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
        evs.push(created(
            &format!("{o}-c"),
            &o,
            T0 + HOUR,
            day + 12 * HOUR,
            &west(),
        ));
        evs.push(event(
            &format!("{o}-s"),
            &o,
            "shipped",
            T0 + DAY,
            r#","carrier":"UPS""#,
        ));
        let at = if i < 4 {
            day + 10 * HOUR
        } else {
            day + 13 * HOUR
        };
        evs.push(event(&format!("{o}-d"), &o, "delivered", at, ""));
    }
    let day6 = T0 + 6 * DAY;
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
        o.assert_deviation(
            &format!("kpi_anomaly:on_time_rate::{day6}"),
            DeviationType::KpiAnomaly,
            Severity::Warning,
            day6 + DAY,
        );
        o.assert_deviation(
            &format!("kpi_anomaly:on_time_rate:region=West,ship_mode=Standard Class:{day6}"),
            DeviationType::KpiAnomaly,
            Severity::Warning,
            day6 + DAY,
        );
        // One per dimension set of on_time_rate (7), none earlier (fewer than 4 baseline values).
        let anomalies = o.deviations_of(DeviationType::KpiAnomaly);
        assert_eq!(anomalies.len(), 7, "{}: {:?}", o.label, o.deviation_ids());
        assert!(anomalies.iter().all(|d| d.id.ends_with(&format!(":{day6}"))
            && d.id.starts_with("kpi_anomaly:on_time_rate:")));
    });
}

/// Lateness is per partition: `F = tick_of(max_ts - 30m - 2h)`; an event of tick `F` is accepted,
/// one tick earlier is late, counted and otherwise ignored.
#[test]
fn late_events_are_counted_and_excluded() {
    let p0 = vec![
        created("l-c", "l", T0 + HOUR, T0 + 5 * DAY, &west()).line,
        event("z-t", "z", "ticket_raised", T0 + 10 * HOUR, "").line,
        // Frontier now tick_of(T0 + 7h30m).
        event(
            "l-f",
            "l",
            "payment_failed",
            T0 + 7 * HOUR + 30 * MIN,
            r#","reason":"x""#,
        )
        .line,
        event(
            "l-d",
            "l",
            "delivered",
            T0 + 7 * HOUR + 29 * MIN + 59_000,
            "",
        )
        .line,
        event("l-x", "l", "cancelled", T0 + 3 * DAY, "").line,
    ];
    // Another partition has its own frontier: an early event there is fine.
    let p1 = vec![
        created("m-c", "m", T0 + 2 * HOUR, T0 + 5 * DAY, &west()).line,
        event("m-d", "m", "delivered", T0 + 3 * DAY, "").line,
    ];
    let input = MemoryPartitions::new("late", [p0, p1]);
    check(&input, |o| {
        assert_eq!(o.late, 1, "{}", o.label);
        assert_eq!(
            o.late_events,
            [(
                0,
                3,
                "l-d".to_string(),
                "l".to_string(),
                T0 + 7 * HOUR + 29 * MIN + 59_000
            )],
            "{}",
            o.label
        );
        o.assert_deviation(
            "payment_failed:l:1",
            DeviationType::PaymentFailed,
            Severity::Warning,
            T0 + 7 * HOUR + 30 * MIN,
        );
        // l was never delivered: only m's delivery counts.
        let deliveries: i64 = o
            .final_kpis
            .iter()
            .filter(|k| k.kpi == "on_time_rate" && k.dims.is_empty())
            .map(|k| k.denominator)
            .sum();
        assert_eq!(deliveries, 1, "{}", o.label);
        assert_kpi(
            o,
            &key("on_time_rate", "", T0 + 3 * DAY),
            Some(1.0),
            1,
            1,
            KpiStatus::Ok,
        );
        assert!(o.has_deviation("ticket_raised:z:z-t"));
        assert_eq!((o.duplicates, o.dead_lettered), (0, 0));
    });
}

/// A repeated `(order_id, event_id)` is counted and ignored, in any partition; a second event of a
/// "first only" kind with a new id is not a duplicate but changes nothing.
#[test]
fn duplicates_are_no_ops() {
    let c = created("d-c", "d", T0 + HOUR, T0 + 5 * DAY, &west());
    let f = event(
        "d-f",
        "d",
        "payment_failed",
        T0 + 2 * HOUR,
        r#","reason":"x""#,
    );
    let s = event("d-s", "d", "shipped", T0 + DAY, r#","carrier":"UPS""#);
    let dl = event("d-d", "d", "delivered", T0 + 3 * DAY, "");
    let dl2 = event("d-d2", "d", "delivered", T0 + 3 * DAY + HOUR, "");
    let p0 = in_ts_order(vec![c.clone(), c, f.clone(), s, dl.clone(), dl, dl2]);
    let p1 = in_ts_order(vec![f]);
    check(&MemoryPartitions::new("dups", [p0, p1]), |o| {
        assert_eq!(o.duplicates, 3, "{}", o.label);
        assert_eq!(o.late, 0);
        assert_kpi(
            o,
            &key("on_time_rate", "", T0 + 3 * DAY),
            Some(1.0),
            1,
            1,
            KpiStatus::Ok,
        );
        assert_kpi(
            o,
            &key("avg_delivery_delay_hours", "", T0 + 3 * DAY),
            Some(-48.0),
            -2 * DAY,
            1,
            KpiStatus::Unrated,
        );
        assert_kpi(
            o,
            &key("payment_failure_rate", "", T0),
            Some(1.0),
            1,
            1,
            KpiStatus::Critical,
        );
        assert_kpi(
            o,
            &key("order_value", "", T0),
            Some(100.0),
            10_000,
            1,
            KpiStatus::Unrated,
        );
        assert_kpi(
            o,
            &key("ticket_rate", "", T0),
            Some(0.0),
            0,
            1,
            KpiStatus::Unrated,
        );
        assert_eq!(o.deviations_of(DeviationType::PaymentFailed).len(), 1);
    });
}

#[test]
fn malformed_lines_are_dead_lettered_and_the_rest_processed() {
    let lines = vec![
        created("g-c", "g", T0 + HOUR, T0 + 5 * DAY, &west()).line,
        "{broken".to_string(),
        r#"{"v":1,"event_id":"h-s","order_id":"h","type":"shipped","ts":1700010000000}"#
            .to_string(),
        r#"{"v":1,"event_id":"h-t","order_id":"h","type":"teleported","ts":1700010000000}"#
            .to_string(),
        event("g-s", "g", "shipped", T0 + DAY, r#","carrier":"UPS""#).line,
        event("g-d", "g", "delivered", T0 + 3 * DAY, "").line,
    ];
    check(&MemoryPartitions::new("bad", [lines]), |o| {
        assert_eq!(o.dead_lettered, 3, "{}", o.label);
        assert_eq!(o.dead_letters.len(), 3, "{}", o.label);
        assert_eq!((o.dead_letters[0].0, o.dead_letters[0].1), (0, 1));
        assert!(
            o.dead_letters[0].2.starts_with("malformed JSON"),
            "{}: {:?}",
            o.label,
            o.dead_letters
        );
        assert_eq!(
            o.dead_letters[1],
            (
                0,
                2,
                "missing field `carrier` for type `shipped`".to_string()
            ),
            "{}",
            o.label
        );
        assert_eq!(
            o.dead_letters[2],
            (0, 3, "unknown event type `teleported`".to_string()),
            "{}",
            o.label
        );
        assert_kpi(
            o,
            &key("on_time_rate", "", T0 + 3 * DAY),
            Some(1.0),
            1,
            1,
            KpiStatus::Ok,
        );
        assert_kpi(
            o,
            &key("order_to_ship_hours", "", T0 + DAY),
            Some(23.0),
            23 * HOUR,
            1,
            KpiStatus::Ok,
        );
        assert_eq!(o.late, 0);
    });
}

/// Backlog: day 0 three orders (A, A, B); day 1 one A ships and B is cancelled; day 3 an order is
/// created and shipped hours later (the level moves, so the day has a cell, at the same end
/// level); day 5 an order is created and shipped in the same tick (no change, no cell); the last
/// open A order is retired 20 days (idle_open) after its only event.
#[test]
fn backlog_gauge_levels() {
    let b = OrderData {
        warehouse: "WH-B".into(),
        ..west()
    };
    let evs = vec![
        created("a1-c", "a1", T0 + HOUR, T0 + 9 * DAY, &west()),
        created("a2-c", "a2", T0 + 2 * HOUR, T0 + 9 * DAY, &west()),
        created("b1-c", "b1", T0 + 3 * HOUR, T0 + 9 * DAY, &b),
        event(
            "a2-s",
            "a2",
            "shipped",
            T0 + DAY + HOUR,
            r#","carrier":"UPS""#,
        ),
        event("b1-x", "b1", "cancelled", T0 + DAY + 2 * HOUR, ""),
        created("a3-c", "a3", T0 + 3 * DAY + HOUR, T0 + 9 * DAY, &west()),
        event(
            "a3-s",
            "a3",
            "shipped",
            T0 + 3 * DAY + 5 * HOUR,
            r#","carrier":"UPS""#,
        ),
        created("a4-c", "a4", T0 + 5 * DAY + HOUR, T0 + 9 * DAY, &west()),
        event(
            "a4-s",
            "a4",
            "shipped",
            T0 + 5 * DAY + HOUR + 10_000,
            r#","carrier":"UPS""#,
        ),
    ];
    check(&one_partition(evs), |o| {
        let levels = |dims: &str| -> Vec<(i64, i64)> {
            o.series("open_backlog", dims)
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
        let k = o.kpi(&key("open_backlog", "", T0));
        assert_eq!(
            (k.value, k.denominator, k.status),
            (Some(3.0), 1, KpiStatus::Unrated)
        );
    });
}

/// A 7-day window sliding by a day holds a fact in the seven windows starting on its day and the
/// six days before.
#[test]
fn sliding_window_membership() {
    let evs = vec![
        created("w1-c", "w1", T0 + 5 * DAY, T0 + 11 * DAY, &west()),
        event("w1-d", "w1", "delivered", T0 + 10 * DAY + 5 * HOUR, ""),
        created("w2-c", "w2", T0 + 5 * DAY, T0 + 11 * DAY, &east()),
        event("w2-d", "w2", "delivered", T0 + 12 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        let windows: Vec<(i64, i64, i64)> = o
            .series("on_time_rate_7d", "")
            .iter()
            .map(|k| ((k.window_start - T0) / DAY, k.numerator, k.denominator))
            .collect();
        let want: Vec<(i64, i64, i64)> = (4..=12)
            .map(|d| {
                if d < 6 {
                    (d, 1, 1)
                } else if d <= 10 {
                    (d, 1, 2)
                } else {
                    (d, 0, 1)
                }
            })
            .collect();
        assert_eq!(windows, want, "{}", o.label);
        let west: Vec<i64> = o
            .series("on_time_rate_7d", "region=West")
            .iter()
            .map(|k| (k.window_start - T0) / DAY)
            .collect();
        assert_eq!(west, (4..=10).collect::<Vec<_>>(), "{}", o.label);
        assert_kpi(
            o,
            &key("on_time_rate_7d", "", T0 + 8 * DAY),
            Some(0.5),
            1,
            2,
            KpiStatus::Critical,
        );
    });
}

/// Retiring forgets the record with its timers: an order that reappears after retention (here a
/// ticket) is a new record, and the old record's pending deadlines must not fire against it.
/// Standard Class: the gap deadline (ship + 7.5d) and a far promise + 2h both fall after the
/// finished-order retention (7d after the last event) and after the new ticket.
#[test]
fn retired_order_timers_do_not_fire_on_a_new_record() {
    let early = OrderData {
        warehouse: "WH-Q".into(),
        ..west()
    };
    let evs = vec![
        // q: shipped day 1, delivered 2 h later; retired at day 8 + 2h; gap deadline day 8 + 12h.
        created("q-c", "q", T0 + HOUR, T0 + 3 * DAY, &early),
        event("q-s", "q", "shipped", T0 + DAY, r#","carrier":"UPS""#),
        event("q-d", "q", "delivered", T0 + DAY + 2 * HOUR, ""),
        event("q-t", "q", "ticket_raised", T0 + 8 * DAY + 6 * HOUR, ""),
        // v: promised on day 12, delivered on day 2, retired day 9; ticket on day 10.
        created("v-c", "v", T0 + HOUR, T0 + 12 * DAY, &early),
        event("v-s", "v", "shipped", T0 + DAY, r#","carrier":"UPS""#),
        event("v-d", "v", "delivered", T0 + 2 * DAY, ""),
        event("v-t", "v", "ticket_raised", T0 + 10 * DAY, ""),
    ];
    check(&one_partition(evs), |o| {
        let timers: Vec<&str> = o
            .deviations
            .iter()
            .filter(|d| {
                matches!(
                    d.kind,
                    DeviationType::SlaShipBreach
                        | DeviationType::SlaDeliveryBreach
                        | DeviationType::FulfillmentGap
                )
            })
            .map(|d| d.id.as_str())
            .collect();
        assert!(timers.is_empty(), "{}: {timers:?}", o.label);
        assert!(
            o.final_kpis.iter().all(|k| k.kpi != "fulfillment_gaps"),
            "{}",
            o.label
        );
        o.assert_deviation(
            "ticket_raised:q:q-t",
            DeviationType::TicketRaised,
            Severity::Info,
            T0 + 8 * DAY + 6 * HOUR,
        );
        o.assert_deviation(
            "ticket_raised:v:v-t",
            DeviationType::TicketRaised,
            Severity::Info,
            T0 + 10 * DAY,
        );
        // The tickets belong to records without order_created: global ticket facts, no dims.
        assert_kpi(
            o,
            &key("ticket_rate", "", T0 + 10 * DAY),
            None,
            1,
            0,
            KpiStatus::Unrated,
        );
        assert!(!o.has_kpi(&key("ticket_rate", "segment=Consumer", T0 + 10 * DAY)));
    });
}
