//! End-to-end smoke checks of `run_job`: on a handful of orders the job runs, counts what it
//! should, and produces the expected final KPI numbers for one day window; over a generated
//! stream every per-order and per-window state is released at the end of input.

use std::sync::Arc;

use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::{run_job, JobOptions};
use fulfillment_ai::model::DeviationType;
use fulfillment_ai::sources::memory::MemoryPartitions;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_700_006_400_000; // 2023-11-15T00:00:00Z, a day boundary

fn created(id: &str, order: &str, ts: i64, promised: i64) -> String {
    format!(
        r#"{{"v":1,"event_id":"{id}","order_id":"{order}","type":"order_created","ts":{ts},"customer_id":"c","segment":"Consumer","region":"West","ship_mode":"Standard Class","warehouse":"WH-W1","qty":2,"amount":100.0,"promised_delivery_ts":{promised}}}"#
    )
}

fn simple(id: &str, order: &str, kind: &str, ts: i64, extra: &str) -> String {
    format!(r#"{{"v":1,"event_id":"{id}","order_id":"{order}","type":"{kind}","ts":{ts}{extra}}}"#)
}

fn lines() -> Vec<String> {
    let mut v = Vec::new();
    // o1: on time. o2: late by 2 h. o3: never ships (ship-by breach).
    for (o, delay) in [("o1", -3_600_000i64), ("o2", 7_200_000)] {
        let promised = T0 + 3 * DAY;
        v.push(created(&format!("{o}-1"), o, T0 + 1000, promised));
        v.push(simple(
            &format!("{o}-2"),
            o,
            "payment_authorized",
            T0 + 60_000,
            "",
        ));
        v.push(simple(
            &format!("{o}-3"),
            o,
            "shipped",
            T0 + DAY,
            r#","carrier":"UPS","qty":2"#,
        ));
        v.push(simple(
            &format!("{o}-4"),
            o,
            "delivered",
            promised + delay,
            r#","qty":2"#,
        ));
    }
    v.push(created("o3-1", "o3", T0 + 2000, T0 + 9 * DAY));
    v.push("{broken".to_string());
    v.push(simple("o1-2", "o1", "payment_authorized", T0 + 60_000, "")); // duplicate
                                                                         // Arrival in event-time order (the broken line first).
    v.sort_by_key(|l| {
        l.split("\"ts\":")
            .nth(1)
            .map(|r| r.split([',', '}']).next().unwrap().parse::<i64>().unwrap())
            .unwrap_or(0)
    });
    v
}

#[test]
fn small_job_counts_and_final_kpis() {
    let spec = PipelineSpec::builtin();
    let input = MemoryPartitions::new("smoke", [lines()]);
    for workers in [1, 2] {
        let report = run_job(
            &spec,
            Arc::new(input.clone()),
            &JobOptions {
                workers,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(report.counters.received, 11);
        assert_eq!(report.counters.dead_lettered, 1);
        assert_eq!(report.counters.duplicates, 1);
        assert_eq!(
            report.dead_letters[0].reason.split(':').next(),
            Some("malformed JSON")
        );
        let on_time: Vec<_> = report
            .final_kpis
            .iter()
            .filter(|k| k.kpi == "on_time_rate" && k.dims.is_empty())
            .collect();
        // o1 delivered on day 2 (early), o2 on day 3 (late): two windows, one delivery each.
        assert_eq!(on_time.len(), 2, "{on_time:?}");
        assert_eq!((on_time[0].numerator, on_time[0].denominator), (1, 1));
        assert_eq!((on_time[1].numerator, on_time[1].denominator), (0, 1));
        let ids: Vec<&str> = report.deviations.iter().map(|d| d.id.as_str()).collect();
        assert!(ids.contains(&"sla_ship_breach:o3"), "{ids:?}");
        assert!(report
            .deviations
            .iter()
            .any(|d| d.kind == DeviationType::SlaDeliveryBreach
                && d.order_id.as_deref() == Some("o3")));
        let backlog: Vec<_> = report
            .final_kpis
            .iter()
            .filter(|k| k.kpi == "open_backlog" && k.dims.is_empty())
            .map(|k| (k.window_start, k.numerator))
            .collect();
        // Day 0: three orders created, none shipped -> 3; day 1: two shipped -> 1; o3 retired 60 days after its last event.
        assert_eq!(backlog[0], (T0, 3));
        assert_eq!(backlog[1], (T0 + DAY, 1));
        assert_eq!(backlog.last().unwrap().1, 0);
    }
}

#[test]
fn jsonl_outputs_match_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PipelineSpec::builtin();
    let input = MemoryPartitions::new("smoke", [lines()]);
    let opts = JobOptions {
        out_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let report = run_job(&spec, Arc::new(input), &opts).unwrap();
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let kpis = read("kpis.jsonl");
    let finals = kpis.iter().filter(|k| k["final"] == true).count();
    assert_eq!(finals, report.final_kpis.len());
    assert_eq!(read("deviations.jsonl").len(), report.deviations.len());
    let dlq = read("dead_letters.jsonl");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["raw"], "{broken");
    assert!(dlq[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("malformed JSON"));
    assert!(read("late_events.jsonl").is_empty());
}

#[test]
fn a_delivery_without_a_shipped_event_leaves_the_backlog_and_meets_ship_by() {
    let spec = PipelineSpec::builtin();
    let promised = T0 + 9 * DAY;
    let events = vec![
        created("x-1", "x", T0 + 1000, promised),
        simple("x-2", "x", "delivered", T0 + 2 * DAY, r#","qty":2"#),
    ];
    let report = run_job(
        &spec,
        Arc::new(MemoryPartitions::new("x", [events])),
        &JobOptions::default(),
    )
    .unwrap();
    let backlog: Vec<_> = report
        .final_kpis
        .iter()
        .filter(|k| k.kpi == "open_backlog" && k.dims.is_empty())
        .map(|k| (k.window_start, k.numerator))
        .collect();
    assert_eq!(backlog, [(T0, 1), (T0 + 2 * DAY, 0)]);
    assert!(
        report
            .deviations
            .iter()
            .all(|d| d.kind != DeviationType::SlaShipBreach),
        "{:?}",
        report.deviations
    );
}

/// The state gauges over a whole generated stream: state is held while it runs, and at the end
/// of input (event time to infinity: every timer fires, every window closes, every order is
/// retired) the per-order and per-window states are empty again. A state that leaks stays
/// non-zero here.
#[test]
fn operator_state_is_released_at_end_of_input() {
    use fulfillment_ai::dataflow::SharedCounters;
    use fulfillment_ai::sources::generator::{GeneratorConfig, GeneratorSource};
    let spec = PipelineSpec::builtin();
    let cfg = GeneratorConfig {
        seed: 5,
        partitions: spec.time.partitions,
        orders_per_partition: Some(300),
        duplicate_rate: 0.01,
        ..GeneratorConfig::default()
    };
    let counters = Arc::new(SharedCounters::default());
    let report = run_job(
        &spec,
        Arc::new(GeneratorSource::new(cfg, &spec)),
        &JobOptions {
            workers: 2,
            keep_in_memory: false,
            counters: Some(counters.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.peak_live_orders > 0);
    assert!(report.counters.duplicates > 0);
    let end = counters.state.values();
    let value = |name: &str| end.get(name).unwrap();
    for transient in [
        "order_records",
        "order_event_ids",
        "order_timers",
        "order_stashed_events",
        "risk_open_orders",
        "risk_checks",
        "kpi_cells",
        "kpi_closing",
    ] {
        assert_eq!(value(transient), 0, "{transient} left at the end");
    }
    // Statistics that outlive orders and windows: one entry per route and per series.
    assert!(value("risk_routes") > 0);
    assert!(value("kpi_series_baselines") > 0);
}
