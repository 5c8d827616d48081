//! Whole replays against the oracle: the synthetic generator (incidents, disorder, duplicates and
//! malformed lines; ~50K events) and the real Superstore replay, each run through `run_job` with 1
//! and 2 workers and compared with the batch oracle on final KPIs, deviations, counters, late
//! events, dead letters and risk scores; plus checks that the numbers are plausible.
//!
//! The Superstore test needs `data/superstore/superstore.csv` (`scripts/fetch_dataset.sh`): without
//! it the test prints why and passes, unless `CI` is set, where a missing dataset is a failure.

mod common;
mod oracle;

mod dataset;
use dataset::superstore_dataset;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use common::{assert_same, deviation_counts, run_dataflow, Outcome};
use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::model::{DeviationType, KpiStatus};
use fulfillment_ai::sources::generator::{GeneratorConfig, GeneratorSource, Incident};
use fulfillment_ai::sources::memory::MemoryPartitions;
use fulfillment_ai::sources::superstore::{superstore_source, SuperstoreConfig};
use fulfillment_ai::sources::Source;

const DAY: i64 = 86_400_000;
const START: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

/// Oracle, then the dataflow with 1 and 2 workers compared with it (risk scores included).
fn compare_all(spec: &PipelineSpec, input: &MemoryPartitions, what: &str) -> Outcome {
    let t = Instant::now();
    let oracle = Outcome::from_oracle(&oracle::recompute(spec, input));
    eprintln!(
        "{what}: oracle {:.2?}: {} final KPIs, {} deviations {:?}, {} risk scores",
        t.elapsed(),
        oracle.final_kpis.len(),
        oracle.deviations.len(),
        deviation_counts(&oracle.deviations),
        oracle.risk_scores.len()
    );
    for workers in [1, 2] {
        let t = Instant::now();
        let df = run_dataflow(spec, input, workers, true);
        eprintln!(
            "{what}: dataflow with {workers} workers {:.2?}",
            t.elapsed()
        );
        assert_same(&oracle, &df, true, what);
    }
    oracle
}

/// Global on-time rate over all final windows: (on time, deliveries).
fn overall(o: &Outcome, kpi: &str, dims: &str) -> (i64, i64) {
    o.series(kpi, dims)
        .iter()
        .fold((0, 0), |(n, d), k| (n + k.numerator, d + k.denominator))
}

fn counts_at_least(o: &Outcome, kinds: &[DeviationType]) {
    let counts = deviation_counts(&o.deviations);
    for k in kinds {
        assert!(
            counts.get(k.as_str()).copied().unwrap_or(0) > 0,
            "no {} deviation: {counts:?}",
            k.as_str()
        );
    }
}

/// Lines that are not a valid event, judged without the crate's decoder: not a JSON object, an
/// unknown `type`, a `ts` that is not non-negative epoch milliseconds, or an `order_created` without
/// a promise. (The generator writes valid times as epoch milliseconds.)
/// Also returns how many valid lines repeat an `(order_id, event_id)` seen before.
fn malformed_and_repeats(input: &MemoryPartitions) -> (u64, u64) {
    const TYPES: [&str; 13] = [
        "order_created",
        "payment_authorized",
        "payment_failed",
        "shipped",
        "carrier_checkpoint",
        "carrier_exception",
        "out_for_delivery",
        "delivered",
        "delivery_failed",
        "refund_requested",
        "return_requested",
        "ticket_raised",
        "cancelled",
    ];
    let mut seen = HashSet::new();
    let (mut bad, mut repeats) = (0, 0);
    for p in 0..input.partitions() as usize {
        for line in input.partition_events(p) {
            let v: serde_json::Value = match serde_json::from_slice(line) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    bad += 1;
                    continue;
                }
            };
            let kind = v["type"].as_str().unwrap_or("");
            let epoch_ms = |x: &serde_json::Value| x.as_i64().is_some_and(|t| t >= 0);
            let valid = TYPES.contains(&kind)
                && epoch_ms(&v["ts"])
                && (kind != "order_created" || epoch_ms(&v["promised_delivery_ts"]));
            if !valid {
                bad += 1;
                continue;
            }
            let key = (
                v["order_id"].as_str().unwrap_or("").to_string(),
                v["event_id"].as_str().unwrap_or("").to_string(),
            );
            if !seen.insert(key) {
                repeats += 1;
            }
        }
    }
    (bad, repeats)
}

fn generator_input(spec: &PipelineSpec) -> MemoryPartitions {
    let cfg = GeneratorConfig {
        seed: 2024,
        partitions: 4,
        start_ms: START,
        orders_per_partition: Some(1_800),
        order_interval_ms: 8 * 60_000,
        disorder_ms: 10 * 60_000,
        duplicate_rate: 0.01,
        malformed_rate: 0.003,
        incidents: ["West", "East", "Central", "South"]
            .iter()
            .map(|region| Incident::CarrierCollapse {
                carrier: "USPS".into(),
                region: region.to_string(),
                from_ms: START + 9 * DAY,
                to_ms: START + 11 * DAY,
                extra_delay_ms: 4 * DAY,
                probability: 0.9,
            })
            .chain([Incident::WarehouseBacklog {
                warehouse: "WH-EAST-1".into(),
                from_ms: START + 3 * DAY,
                to_ms: START + 6 * DAY,
                extra_ship_delay_ms: 4 * DAY,
            }])
            .collect(),
    };
    GeneratorSource::new(cfg, spec).materialize(None)
}

#[test]
fn generator_replay_equals_oracle_and_is_plausible() {
    let spec = PipelineSpec::builtin();
    let input = generator_input(&spec);
    assert!(
        (40_000..70_000).contains(&input.len()),
        "{} events",
        input.len()
    );
    let (malformed, repeats) = malformed_and_repeats(&input);
    let o = compare_all(&spec, &input, "generator replay");

    assert!(malformed > 50, "{malformed} malformed lines");
    assert_eq!(o.dead_lettered, malformed, "dead letters = malformed lines");
    assert_eq!(o.dead_letters.len() as u64, malformed);
    assert_eq!(
        o.late, 0,
        "disorder stays within the out-of-orderness bound"
    );
    assert!(repeats > 200, "{repeats} repeated events");
    assert_eq!(
        o.duplicates, repeats,
        "duplicates = repeated (order, event id) lines"
    );

    let (ok, n) = overall(&o, "on_time_rate", "");
    let rate = ok as f64 / n as f64;
    assert!(
        (0.6..0.98).contains(&rate),
        "overall on-time rate {rate} ({ok}/{n})"
    );
    counts_at_least(
        &o,
        &[
            DeviationType::SlaShipBreach,
            DeviationType::SlaDeliveryBreach,
            DeviationType::FulfillmentGap,
            DeviationType::PaymentFailed,
            DeviationType::CarrierException,
            DeviationType::RefundRequested,
            DeviationType::TicketRaised,
            DeviationType::PredictedDelay,
            DeviationType::KpiThresholdBreach,
        ],
    );

    // The USPS collapse (parcels in transit on days 9-11 held up 4 days): USPS deliveries of days
    // 13-16 are far less often on time than UPS ones of the same days.
    let rate = |carrier: &str, from: i64, to: i64| {
        let (a, b) = o
            .series("on_time_rate", &format!("carrier={carrier}"))
            .iter()
            .filter(|k| (START + from * DAY..START + to * DAY).contains(&k.window_start))
            .fold((0, 0), |(a, b), k| (a + k.numerator, b + k.denominator));
        assert!(b > 150, "{carrier}: {b} deliveries on days {from}..{to}");
        a as f64 / b as f64
    };
    let (usps, ups) = (rate("USPS", 13, 17), rate("UPS", 13, 17));
    assert!(
        usps < ups - 0.15,
        "on-time rate after the USPS collapse: USPS {usps:.3}, UPS {ups:.3}"
    );
    assert!(
        rate("USPS", 6, 10) > 0.9,
        "USPS was fine before the collapse"
    );
    assert!(
        o.deviations_of(DeviationType::KpiThresholdBreach)
            .iter()
            .any(|d| d
                .id
                .starts_with("kpi_threshold_breach:on_time_rate:carrier=USPS:")),
        "the collapse breaches USPS's on-time rate"
    );
    // The WH-EAST-1 backlog (shipments planned on days 3-6 leave 4 days late): its open backlog
    // grows to about twice its sibling's, from about 1.3 times before.
    let peak = |warehouse: &str, from: i64, to: i64| {
        o.series("open_backlog", &format!("warehouse={warehouse}"))
            .iter()
            .filter(|k| (START + from * DAY..START + to * DAY).contains(&k.window_start))
            .map(|k| k.numerator)
            .max()
            .unwrap_or(0) as f64
    };
    let before = peak("WH-EAST-1", 0, 3) / peak("WH-EAST-2", 0, 3);
    let during = peak("WH-EAST-1", 5, 9) / peak("WH-EAST-2", 5, 9);
    assert!(
        before < 1.6 && during > 1.8,
        "WH-EAST-1 / WH-EAST-2 backlog: before {before:.2}, during {during:.2}"
    );
    // Final windows are rated where enough facts exist.
    assert!(o
        .final_kpis
        .iter()
        .any(|k| k.kpi == "on_time_rate" && k.status == KpiStatus::Ok));
    assert!(o.final_kpis.iter().all(|k| k.is_final));
}

#[test]
fn superstore_replay_equals_oracle_and_is_plausible() {
    let Some(path) = superstore_dataset() else {
        return;
    };
    let spec = PipelineSpec::builtin();
    let input = superstore_source(&path, &spec, &SuperstoreConfig::default())
        .expect("load the Superstore replay");
    let o = compare_all(&spec, &input, "superstore replay");

    assert_eq!((o.dead_lettered, o.late, o.duplicates), (0, 0, 0));
    // Every one of the 5,009 orders was created once.
    let (_, orders) = overall(&o, "order_value", "");
    assert_eq!(orders, 5_009);
    let (ok, n) = overall(&o, "on_time_rate", "");
    let rate = ok as f64 / n as f64;
    assert!(
        (0.8..=0.95).contains(&rate),
        "overall on-time rate {rate} ({ok}/{n})"
    );
    assert!(n as f64 > 0.95 * 5_009.0, "{n} deliveries");
    counts_at_least(
        &o,
        &[
            DeviationType::SlaDeliveryBreach,
            DeviationType::PredictedDelay,
            DeviationType::KpiThresholdBreach,
            DeviationType::RefundRequested,
        ],
    );
    let counts: BTreeMap<&str, usize> = deviation_counts(&o.deviations);
    assert!(counts.len() >= 6, "deviation kinds: {counts:?}");
    for r in ["Central", "East", "South", "West"] {
        let (a, b) = overall(&o, "on_time_rate", &format!("region={r}"));
        assert!(
            b > 200 && (0.6..=1.0).contains(&(a as f64 / b as f64)),
            "region {r}: {a}/{b}"
        );
    }
    // Risk: every order is scored while open, and orders that end up late were scored higher
    // (before their promise) than orders that arrive on time.
    assert!(
        o.risk_scores.len() > 5_009,
        "{} risk scores",
        o.risk_scores.len()
    );
    let outcome = delivery_outcomes(&input);
    let mut peak: BTreeMap<&str, i64> = BTreeMap::new();
    for (order, now, ppm) in &o.risk_scores {
        if let Some((promised, _)) = outcome.get(order.as_str()) {
            if now <= promised {
                let e = peak.entry(order.as_str()).or_default();
                *e = (*e).max(*ppm);
            }
        }
    }
    let mean = |late: bool| {
        let v: Vec<i64> = peak
            .iter()
            .filter(|(k, _)| outcome[**k].1 == late)
            .map(|(_, p)| *p)
            .collect();
        v.iter().sum::<i64>() as f64 / v.len().max(1) as f64 / 1e6
    };
    let (late, on_time) = (mean(true), mean(false));
    assert!(
        late > 3.0 * on_time && late > 0.01,
        "mean peak risk of late orders {late:.4}, of on-time orders {on_time:.4}"
    );
}

/// Per delivered order: (promised ts, delivered late).
fn delivery_outcomes(input: &MemoryPartitions) -> std::collections::HashMap<String, (i64, bool)> {
    use fulfillment_ai::model::{decode_event, EventBody};
    let mut promised = std::collections::HashMap::new();
    let mut delivered = std::collections::HashMap::new();
    for p in 0..input.partitions() as usize {
        for line in input.partition_events(p) {
            let Ok(e) = decode_event(line) else { continue };
            match e.body {
                EventBody::OrderCreated(c) => {
                    promised
                        .entry(e.order_id.to_string())
                        .or_insert(c.promised_delivery_ts);
                }
                EventBody::Delivered { .. } => {
                    let d = delivered.entry(e.order_id.to_string()).or_insert(e.ts);
                    *d = (*d).min(e.ts);
                }
                _ => {}
            }
        }
    }
    delivered
        .into_iter()
        .filter_map(|(o, d)| promised.get(&o).map(|&p| (o, (p, d > p))))
        .collect()
}
