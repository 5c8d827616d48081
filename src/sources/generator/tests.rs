//! Unit tests of the generator: determinism per seed, decodable and sane orders, bounded disorder
//! and duplicates, malformed lines with their intended reasons, incidents' effects, lazy endless
//! and finishing finite partitions.
//!
//! In: small [`GeneratorConfig`]s and the builtin spec. Out: assertions on the decoded events.

use std::collections::HashMap;

use super::lifecycle::HOUR;
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
