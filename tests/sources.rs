//! Tests of the Superstore replay against the real dataset (`scripts/fetch_dataset.sh`).
//!
//! Without the CSV these tests print why and pass, unless `CI` is set: CI fetches the data first,
//! so there a missing dataset is a failure.

mod dataset;
use dataset::superstore_dataset;
use std::collections::{BTreeMap, HashMap, HashSet};

use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::model::{decode_event, EventBody, OrderEvent};
use fulfillment_ai::sources::superstore::{
    lifecycle_events, load_orders, superstore_source, SuperstoreConfig,
};
use fulfillment_ai::sources::Source;

/// Per-order summary of a replay: (created ts, promised ts, region, shipped ts, carrier, delivered ts).
#[derive(Default)]
struct OrderView {
    created: Option<(i64, i64, String)>,
    shipped: Option<(i64, String)>,
    delivered: Option<i64>,
    first_ts: Option<i64>,
}

fn by_order(events: &[OrderEvent]) -> HashMap<&str, OrderView> {
    let mut sorted: Vec<&OrderEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.processing_key());
    let mut orders: HashMap<&str, OrderView> = HashMap::new();
    for e in sorted {
        let o = orders.entry(e.order_id.as_str()).or_default();
        o.first_ts.get_or_insert(e.ts);
        match &e.body {
            EventBody::OrderCreated(c) => {
                o.created
                    .get_or_insert((e.ts, c.promised_delivery_ts, c.region.to_string()));
            }
            EventBody::Shipped { carrier, .. } => {
                o.shipped.get_or_insert((e.ts, carrier.to_string()));
            }
            EventBody::Delivered { .. } => {
                o.delivered.get_or_insert(e.ts);
            }
            _ => {}
        }
    }
    orders
}

#[test]
fn superstore_orders_match_the_csv() {
    let Some(path) = superstore_dataset() else {
        return;
    };
    let orders = load_orders(&path).unwrap();
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let id_col = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "Order ID")
        .unwrap();
    let mut ids = HashSet::new();
    let mut lines = 0;
    for r in reader.records() {
        ids.insert(r.unwrap()[id_col].to_string());
        lines += 1;
    }
    assert_eq!(lines, 9994);
    assert_eq!(ids.len(), 5009);
    assert_eq!(orders.len(), ids.len());
    assert_eq!(
        orders.iter().map(|o| o.lines as usize).sum::<usize>(),
        lines
    );
    assert!(orders
        .iter()
        .all(|o| o.qty > 0 && o.amount > 0.0 && o.ship_day >= o.order_day));
}

#[test]
fn superstore_replay_is_sane_and_on_time_rate_is_realistic() {
    let Some(path) = superstore_dataset() else {
        return;
    };
    let spec = PipelineSpec::builtin();
    let cfg = SuperstoreConfig::default();
    let orders = load_orders(&path).unwrap();
    let events = lifecycle_events(&orders, &spec, &cfg);

    // Every event survives the wire format.
    for e in &events {
        assert_eq!(&decode_event(e.to_json().as_bytes()).unwrap(), e);
    }
    // Arrival order: an event never arrives after one more than `disorder` later in event time.
    let mut max_ts = i64::MIN / 2;
    for e in &events {
        assert!(
            e.ts >= max_ts - cfg.disorder_ms,
            "{} arrived {} ms too late",
            e.event_id,
            max_ts - e.ts
        );
        max_ts = max_ts.max(e.ts);
    }
    let ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no duplicates by default");

    let view = by_order(&events);
    assert_eq!(view.len(), orders.len());
    let (mut delivered, mut on_time) = (0usize, 0usize);
    let mut per_region: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for (id, o) in &view {
        let (created, promised, region) = o
            .created
            .as_ref()
            .unwrap_or_else(|| panic!("{id} has no order_created"));
        assert_eq!(
            o.first_ts,
            Some(*created),
            "{id}: order_created is not first"
        );
        if let Some(d) = o.delivered {
            let (shipped, carrier) = o
                .shipped
                .as_ref()
                .unwrap_or_else(|| panic!("{id} delivered but never shipped"));
            assert!(
                d > *shipped && *shipped > *created,
                "{id}: created {created} shipped {shipped} delivered {d}"
            );
            delivered += 1;
            on_time += usize::from(d <= *promised);
            let cell = per_region
                .entry((region.clone(), carrier.clone()))
                .or_default();
            cell.0 += 1;
            cell.1 += usize::from(d <= *promised);
        }
    }
    let rate = on_time as f64 / delivered as f64;
    eprintln!(
        "superstore replay: {} orders, {} events, {delivered} delivered, on-time rate {rate:.4}",
        orders.len(),
        events.len()
    );
    for ((region, carrier), (n, ok)) in &per_region {
        eprintln!(
            "  {region:8} {carrier:6} {n:5} deliveries, on-time {:.3}",
            *ok as f64 / *n as f64
        );
    }
    assert!((0.80..=0.95).contains(&rate), "on-time rate {rate}");
    assert!(delivered as f64 > 0.95 * orders.len() as f64);
}

#[test]
fn superstore_replay_is_deterministic_and_seeded() {
    let Some(path) = superstore_dataset() else {
        return;
    };
    let spec = PipelineSpec::builtin();
    let orders = load_orders(&path).unwrap();
    let cfg = SuperstoreConfig::default();
    let a = lifecycle_events(&orders, &spec, &cfg);
    assert_eq!(a, lifecycle_events(&orders, &spec, &cfg));
    let b = lifecycle_events(
        &orders,
        &spec,
        &SuperstoreConfig {
            seed: 7,
            ..cfg.clone()
        },
    );
    assert_ne!(a, b);
    // An order's simulation does not depend on the other orders.
    let alone = lifecycle_events(&orders[100..101], &spec, &cfg);
    let within: Vec<_> = a
        .iter()
        .filter(|e| e.order_id == orders[100].order_id)
        .cloned()
        .collect();
    let mut alone_sorted = alone.clone();
    alone_sorted.sort_by_key(|e| e.event_id.clone());
    let mut within_sorted = within;
    within_sorted.sort_by_key(|e| e.event_id.clone());
    assert_eq!(alone_sorted, within_sorted);
}

#[test]
fn superstore_source_partitions_by_order_and_keeps_arrival_order() {
    let Some(path) = superstore_dataset() else {
        return;
    };
    let spec = PipelineSpec::builtin();
    let cfg = SuperstoreConfig {
        duplicate_rate: 0.02,
        ..SuperstoreConfig::default()
    };
    let source = superstore_source(&path, &spec, &cfg).unwrap();
    assert_eq!(source.partitions(), spec.time.partitions);
    let events = lifecycle_events(&load_orders(&path).unwrap(), &spec, &cfg);
    assert_eq!(source.len(), events.len());
    let mut home: HashMap<String, usize> = HashMap::new();
    let mut duplicates = 0;
    for p in 0..spec.time.partitions as usize {
        let mut seen = HashSet::new();
        let mut max_ts = i64::MIN / 2;
        for raw in source.partition_events(p) {
            let e = decode_event(raw).unwrap();
            assert_eq!(
                *home.entry(e.order_id.to_string()).or_insert(p),
                p,
                "order {} in two partitions",
                e.order_id
            );
            assert!(e.ts >= max_ts - cfg.disorder_ms);
            max_ts = max_ts.max(e.ts);
            duplicates += usize::from(!seen.insert(e.event_id.clone()));
        }
    }
    let rate = duplicates as f64 / events.len() as f64;
    assert!((0.01..0.03).contains(&rate), "duplicate rate {rate}");
}
