//! The live state the server answers from: current KPI values and their recent history, recent
//! deviations, a view of every recently active order, and the streams WebSocket clients follow.
//!
//! In: from the job's sink collector, every KPI record, deviation, applied order event and risk
//! score; from the agent stage, every published action. Out: queries for the REST handlers, and
//! two broadcast streams (KPIs, deviations + actions) published by [`LiveView::publish_pending`]
//! every few milliseconds, so the collector only ever takes a lock and appends.
//!
//! Memory is bounded: history keeps the newest [`HISTORY_POINTS`] windows per series,
//! deviations and orders are capped by `serve.keep_deviations` and `serve.keep_orders` (oldest
//! and least recently active go first), and the broadcast rings hold a fixed number of batches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::extract::ws::Utf8Bytes;
use compact_str::CompactString;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::agents::orchestrator::ActionMessage;
use crate::dataflow::{wall_clock_ms, RiskScore, SharedCounters};
use crate::model::event::{EventBody, OrderEvent};
use crate::model::records::{dims_key, Deviation, KpiRecord, KpiStatus};

/// Windows of history kept per KPI series.
pub const HISTORY_POINTS: usize = 200;
/// Timeline entries, risk points and deviation ids kept per order.
const PER_ORDER: usize = 64;

/// A KPI series: one KPI over one combination of dimension values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub kpi: String,
    /// `k=v,k=v`; empty for the global series.
    pub dims: String,
}

/// One window of a series: its newest version.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KpiPoint {
    pub window_start: i64,
    pub window_end: i64,
    pub value: Option<f64>,
    pub numerator: i64,
    pub denominator: i64,
    pub status: KpiStatus,
    pub version: u32,
    #[serde(rename = "final")]
    pub is_final: bool,
}

struct Series {
    dims: BTreeMap<String, String>,
    /// The dimension set, e.g. `region+ship_mode`, or `global`.
    dim_set: String,
    /// Oldest window first.
    points: VecDeque<KpiPoint>,
}

impl Series {
    fn latest(&self) -> Option<&KpiPoint> {
        self.points.back()
    }

    fn record(&self, kpi: &str, p: &KpiPoint) -> KpiRecord {
        KpiRecord {
            kpi: kpi.to_string(),
            dims: self.dims.clone(),
            window_start: p.window_start,
            window_end: p.window_end,
            value: p.value,
            numerator: p.numerator,
            denominator: p.denominator,
            status: p.status,
            version: p.version,
            is_final: p.is_final,
        }
    }
}

/// The dimension set of a record's dimensions: names joined by `+` in name order, or `global`.
pub fn dim_set(dims: &BTreeMap<String, String>) -> String {
    if dims.is_empty() {
        "global".into()
    } else {
        dims.keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// Which KPI series a client or a query wants; empty lists admit everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KpiFilter {
    pub kpis: Vec<String>,
    /// Dimension sets such as `global`, `region`, `region+ship_mode` (any order of names).
    pub dim_sets: Vec<String>,
}

impl KpiFilter {
    pub fn new(kpis: Vec<String>, dim_sets: Vec<String>) -> KpiFilter {
        let dim_sets = dim_sets
            .into_iter()
            .map(|s| {
                let mut parts: Vec<&str> = s.split('+').map(str::trim).collect();
                parts.sort_unstable();
                parts.join("+")
            })
            .collect();
        KpiFilter { kpis, dim_sets }
    }

    pub fn is_all(&self) -> bool {
        self.kpis.is_empty() && self.dim_sets.is_empty()
    }

    fn admits_series(&self, kpi: &str, set: &str) -> bool {
        (self.kpis.is_empty() || self.kpis.iter().any(|k| k == kpi))
            && (self.dim_sets.is_empty() || self.dim_sets.iter().any(|d| d == set))
    }

    pub fn admits(&self, r: &KpiRecord) -> bool {
        self.admits_series(&r.kpi, &dim_set(&r.dims))
    }
}

/// Which deviations a client or a query wants; empty lists admit everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviationFilter {
    pub severities: Vec<String>,
    pub types: Vec<String>,
    pub order_id: Option<String>,
}

impl DeviationFilter {
    pub fn is_all(&self) -> bool {
        self.severities.is_empty() && self.types.is_empty() && self.order_id.is_none()
    }

    pub fn admits(&self, d: &Deviation) -> bool {
        (self.severities.is_empty()
            || self
                .severities
                .iter()
                .any(|s| s.eq_ignore_ascii_case(severity_name(d))))
            && (self.types.is_empty() || self.types.iter().any(|t| t == d.kind.as_str()))
            && self
                .order_id
                .as_ref()
                .is_none_or(|o| d.order_id.as_deref() == Some(o.as_str()))
    }
}

pub fn severity_name(d: &Deviation) -> &'static str {
    match d.severity {
        crate::config::pipeline::Severity::Info => "info",
        crate::config::pipeline::Severity::Warning => "warning",
        crate::config::pipeline::Severity::Critical => "critical",
    }
}

/// An order as listed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OrderSummary {
    pub order_id: String,
    /// created | paid | payment_failed | shipped | exception | delivered | cancelled | returned
    pub status: &'static str,
    pub customer_id: Option<String>,
    pub segment: Option<String>,
    pub region: Option<String>,
    pub ship_mode: Option<String>,
    pub warehouse: Option<String>,
    pub carrier: Option<String>,
    pub amount: Option<f64>,
    pub created_ts: Option<i64>,
    pub promised_ts: Option<i64>,
    /// Event time of the newest event.
    pub last_ts: i64,
    /// Latest predicted probability of a late delivery (0..1).
    pub risk: Option<f64>,
    pub deviations: usize,
}

/// One event in an order's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub ts: i64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub detail: String,
}

/// One risk score of an order.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RiskPoint {
    /// Event time the score was computed at.
    pub at: i64,
    pub risk: f64,
}

/// An order with its history, as `GET /orders/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct OrderDetail {
    pub order: OrderSummary,
    pub timeline: Vec<TimelineEntry>,
    pub risk: Vec<RiskPoint>,
    pub deviations: Vec<Deviation>,
}

struct OrderView {
    summary: OrderSummary,
    status_ts: i64,
    timeline: VecDeque<TimelineEntry>,
    risk: VecDeque<RiskPoint>,
    deviation_ids: VecDeque<String>,
    /// Position in the recency order.
    seq: u64,
}

/// Filters of `GET /orders`.
#[derive(Clone, Debug, Default)]
pub struct OrderQuery {
    pub status: Option<String>,
    pub region: Option<String>,
    pub ship_mode: Option<String>,
    pub min_risk: Option<f64>,
    /// Created at or after (event time, epoch ms).
    pub from: Option<i64>,
    /// Created before.
    pub to: Option<i64>,
    /// Substring of the order id or the customer id (case-insensitive).
    pub q: Option<String>,
}

fn status_of(body: &EventBody) -> Option<&'static str> {
    Some(match body {
        EventBody::OrderCreated(_) => "created",
        EventBody::PaymentAuthorized => "paid",
        EventBody::PaymentFailed { .. } => "payment_failed",
        EventBody::Shipped { .. } | EventBody::CarrierCheckpoint | EventBody::OutForDelivery => {
            "shipped"
        }
        EventBody::CarrierException { .. } | EventBody::DeliveryFailed { .. } => "exception",
        EventBody::Delivered { .. } => "delivered",
        EventBody::ReturnRequested { .. } => "returned",
        EventBody::Cancelled { .. } => "cancelled",
        EventBody::RefundRequested { .. } | EventBody::TicketRaised { .. } => return None,
    })
}

fn detail_of(body: &EventBody) -> String {
    match body {
        EventBody::OrderCreated(c) => format!(
            "{} order of {:.2} for {} ({}), {} from {}",
            c.segment, c.amount, c.customer_id, c.region, c.ship_mode, c.warehouse
        ),
        EventBody::PaymentFailed { reason } => reason.to_string(),
        EventBody::Shipped { carrier, .. } => format!("with {carrier}"),
        EventBody::CarrierException { reason } => reason.to_string(),
        EventBody::DeliveryFailed { reason } | EventBody::Cancelled { reason } => {
            reason.as_deref().unwrap_or("").to_string()
        }
        EventBody::RefundRequested { reason, amount }
        | EventBody::ReturnRequested { reason, amount } => format!("{amount:.2}: {reason}"),
        EventBody::TicketRaised { reason } => reason.as_deref().unwrap_or("").to_string(),
        _ => String::new(),
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, item: T) {
    q.push_back(item);
    while q.len() > PER_ORDER {
        q.pop_front();
    }
}

#[derive(Default)]
struct KpiState {
    series: HashMap<SeriesKey, Series>,
}

#[derive(Default)]
struct DeviationState {
    /// Oldest first.
    deviations: VecDeque<Arc<Deviation>>,
    index: HashMap<String, Arc<Deviation>>,
}

#[derive(Default)]
struct OrderViews {
    orders: HashMap<CompactString, OrderView>,
    /// seq -> order id; the smallest is the least recently active.
    recency: BTreeMap<u64, CompactString>,
    next_seq: u64,
}

/// Waiting for the next publish: KPI records by key (coalesced), deviations, actions.
#[derive(Default)]
struct Pending {
    kpis: HashMap<String, KpiRecord>,
    deviations: Vec<Arc<Deviation>>,
    actions: Vec<ActionMessage>,
}

/// A batch of KPI updates as broadcast to WebSocket clients.
pub struct KpiPush {
    pub records: Vec<KpiRecord>,
    /// The whole batch as a `kpis` message, for clients without filters.
    pub message: Utf8Bytes,
    pub sent_wall: i64,
}

/// A batch of deviations or actions as broadcast to WebSocket clients.
pub enum DeviationPush {
    Deviations {
        items: Vec<Arc<Deviation>>,
        message: Utf8Bytes,
    },
    Actions {
        message: Utf8Bytes,
    },
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The live state; see the module doc.
pub struct LiveView {
    pub counters: Arc<SharedCounters>,
    pub started_wall: i64,
    finished: AtomicBool,
    keep_deviations: usize,
    keep_orders: usize,
    // One lock per area, so a query on orders never waits for a batch of KPI updates. Where
    // two are held, orders come before deviations.
    kpis: RwLock<KpiState>,
    deviations: RwLock<DeviationState>,
    orders: RwLock<OrderViews>,
    pending: Mutex<Pending>,
    kpi_tx: broadcast::Sender<Arc<KpiPush>>,
    deviation_tx: broadcast::Sender<Arc<DeviationPush>>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (orders, series, deviations) = self.sizes();
        f.debug_struct("LiveView")
            .field("orders", &orders)
            .field("series", &series)
            .field("deviations", &deviations)
            .finish()
    }
}

impl LiveView {
    /// `ring` is the number of batches each broadcast stream buffers for its slowest reader.
    pub fn new(keep_deviations: usize, keep_orders: usize, ring: usize) -> LiveView {
        LiveView {
            counters: Arc::default(),
            started_wall: wall_clock_ms(),
            finished: AtomicBool::new(false),
            keep_deviations: keep_deviations.max(1),
            keep_orders: keep_orders.max(1),
            kpis: RwLock::default(),
            deviations: RwLock::default(),
            orders: RwLock::default(),
            pending: Mutex::default(),
            kpi_tx: broadcast::channel(ring.max(1)).0,
            deviation_tx: broadcast::channel(ring.max(1)).0,
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job's input has ended and everything is processed.
    pub fn set_finished(&self) {
        self.finished.store(true, Ordering::Release);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Event time the dataflow has processed up to (epoch ms), once known.
    pub fn watermark_ms(&self) -> Option<i64> {
        let w = self.counters.watermark_ms.load(Ordering::Relaxed);
        (w > 0).then_some(w)
    }

    // ---- fed by the collector and the agent stage -------------------------------------------

    pub fn on_kpis(&self, records: &[KpiRecord]) {
        // Counted per batch: one metric lookup per (KPI, final), not one per record.
        let mut counts: BTreeMap<(&str, bool), u64> = BTreeMap::new();
        let mut state = write(&self.kpis);
        for r in records {
            *counts.entry((r.kpi.as_str(), r.is_final)).or_default() += 1;
            let key = SeriesKey {
                kpi: r.kpi.clone(),
                dims: dims_key(&r.dims),
            };
            let series = state.series.entry(key).or_insert_with(|| Series {
                dims: r.dims.clone(),
                dim_set: dim_set(&r.dims),
                points: VecDeque::new(),
            });
            let point = KpiPoint {
                window_start: r.window_start,
                window_end: r.window_end,
                value: r.value,
                numerator: r.numerator,
                denominator: r.denominator,
                status: r.status,
                version: r.version,
                is_final: r.is_final,
            };
            // Windows arrive nearly in order: search from the newest.
            match series
                .points
                .iter()
                .rposition(|p| p.window_start <= r.window_start)
            {
                Some(i) if series.points[i].window_start == r.window_start => {
                    if series.points[i].version <= r.version {
                        series.points[i] = point;
                    }
                }
                Some(i) => series.points.insert(i + 1, point),
                None => series.points.push_front(point),
            }
            while series.points.len() > HISTORY_POINTS {
                series.points.pop_front();
            }
        }
        drop(state);
        let metrics = super::metrics::global();
        for ((kpi, is_final), n) in counts {
            metrics
                .kpi_updates
                .with_label_values(&[kpi, if is_final { "true" } else { "false" }])
                .inc_by(n);
        }
        // Only WebSocket subscribers read the pending updates.
        if self.kpi_tx.receiver_count() > 0 {
            let mut pending = self.pending();
            for r in records {
                pending.kpis.insert(r.key(), r.clone());
            }
        }
    }

    pub fn on_deviations(&self, devs: &[Deviation]) {
        let metrics = super::metrics::global();
        let devs: Vec<Arc<Deviation>> = devs.iter().cloned().map(Arc::new).collect();
        {
            let mut orders = write(&self.orders);
            let mut state = write(&self.deviations);
            for d in &devs {
                metrics
                    .deviations
                    .with_label_values(&[d.kind.as_str(), severity_name(d)])
                    .inc();
                if let Some(view) = d.order_id.as_deref().and_then(|o| orders.orders.get_mut(o)) {
                    push_capped(&mut view.deviation_ids, d.id.clone());
                    view.summary.deviations += 1;
                }
                state.index.insert(d.id.clone(), d.clone());
                state.deviations.push_back(d.clone());
                while state.deviations.len() > self.keep_deviations {
                    if let Some(old) = state.deviations.pop_front() {
                        state.index.remove(&old.id);
                    }
                }
            }
        }
        if self.deviation_tx.receiver_count() > 0 {
            self.pending().deviations.extend(devs);
        }
    }

    pub fn on_order_events(&self, events: Vec<OrderEvent>) {
        let mut guard = write(&self.orders);
        let inner = &mut *guard;
        for e in events {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let view = inner
                .orders
                .entry(e.order_id.clone())
                .or_insert_with(|| OrderView {
                    summary: OrderSummary {
                        order_id: e.order_id.to_string(),
                        status: "created",
                        last_ts: e.ts,
                        ..OrderSummary::default()
                    },
                    status_ts: i64::MIN,
                    timeline: VecDeque::new(),
                    risk: VecDeque::new(),
                    deviation_ids: VecDeque::new(),
                    seq,
                });
            inner.recency.remove(&view.seq);
            view.seq = seq;
            inner.recency.insert(seq, e.order_id.clone());
            let s = &mut view.summary;
            s.last_ts = s.last_ts.max(e.ts);
            match &e.body {
                EventBody::OrderCreated(c) => {
                    s.customer_id = Some(c.customer_id.to_string());
                    s.segment = Some(c.segment.to_string());
                    s.region = Some(c.region.to_string());
                    s.ship_mode = Some(c.ship_mode.to_string());
                    s.warehouse = Some(c.warehouse.to_string());
                    s.amount = Some(c.amount);
                    s.created_ts = Some(e.ts);
                    s.promised_ts = Some(c.promised_delivery_ts);
                }
                EventBody::Shipped { carrier, .. } => s.carrier = Some(carrier.to_string()),
                _ => {}
            }
            if let Some(status) = status_of(&e.body) {
                if e.ts >= view.status_ts {
                    view.status_ts = e.ts;
                    s.status = status;
                }
            }
            let entry = TimelineEntry {
                ts: e.ts,
                event_id: e.event_id.to_string(),
                kind: e.body.event_type().as_str(),
                detail: detail_of(&e.body),
            };
            let at = view.timeline.iter().rposition(|t| t.ts <= e.ts);
            view.timeline.insert(at.map_or(0, |i| i + 1), entry);
            while view.timeline.len() > PER_ORDER {
                view.timeline.pop_front();
            }
        }
        while inner.orders.len() > self.keep_orders {
            let Some((_, id)) = inner.recency.pop_first() else {
                break;
            };
            inner.orders.remove(&id);
        }
    }

    pub fn on_risk_scores(&self, scores: &[RiskScore]) {
        let mut views = write(&self.orders);
        for s in scores {
            if let Some(view) = views.orders.get_mut(s.order_id.as_str()) {
                let risk = s.risk_ppm as f64 / 1e6;
                view.summary.risk = Some(risk);
                push_capped(&mut view.risk, RiskPoint { at: s.now, risk });
            }
        }
    }

    pub fn on_action(&self, a: &ActionMessage) {
        if self.deviation_tx.receiver_count() > 0 {
            self.pending().actions.push(a.clone());
        }
    }

    /// Broadcasts what arrived since the last call (KPI updates coalesced per key). Called by
    /// the server's publisher task.
    pub fn publish_pending(&self) {
        let Pending {
            kpis,
            deviations: devs,
            actions,
        } = std::mem::take(&mut *self.pending());
        if !kpis.is_empty() && self.kpi_tx.receiver_count() > 0 {
            let mut records: Vec<KpiRecord> = kpis.into_values().collect();
            records.sort_by(|a, b| (a.window_start, &a.kpi).cmp(&(b.window_start, &b.kpi)));
            let sent_wall = wall_clock_ms();
            let message = kpi_message("kpis", &records, Some(sent_wall));
            let _ = self.kpi_tx.send(Arc::new(KpiPush {
                records,
                message,
                sent_wall,
            }));
        }
        if !devs.is_empty() && self.deviation_tx.receiver_count() > 0 {
            let message = deviation_message("deviations", devs.iter().map(|d| &**d));
            let _ = self.deviation_tx.send(Arc::new(DeviationPush::Deviations {
                items: devs,
                message,
            }));
        }
        if !actions.is_empty() && self.deviation_tx.receiver_count() > 0 {
            let message = serde_json::json!({"type": "actions", "actions": actions})
                .to_string()
                .into();
            let _ = self
                .deviation_tx
                .send(Arc::new(DeviationPush::Actions { message }));
        }
    }

    pub fn subscribe_kpis(&self) -> broadcast::Receiver<Arc<KpiPush>> {
        self.kpi_tx.subscribe()
    }

    pub fn subscribe_deviations(&self) -> broadcast::Receiver<Arc<DeviationPush>> {
        self.deviation_tx.subscribe()
    }

    // ---- queries -------------------------------------------------------------------------

    /// The newest window's newest version of every admitted series (or, with `window`, the
    /// version of that window), ordered by KPI and dimensions.
    pub fn current_kpis(&self, filter: &KpiFilter, window: Option<i64>) -> Vec<KpiRecord> {
        let state = read(&self.kpis);
        let mut out: Vec<(&SeriesKey, KpiRecord)> = state
            .series
            .iter()
            .filter(|(k, s)| filter.admits_series(&k.kpi, &s.dim_set))
            .filter_map(|(k, s)| {
                let p = match window {
                    None => s.latest(),
                    Some(w) => s.points.iter().find(|p| p.window_start == w),
                }?;
                Some((k, s.record(&k.kpi, p)))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// The windows of one series, oldest first; `None` for an unknown series.
    pub fn kpi_history(&self, kpi: &str, dims: &BTreeMap<String, String>) -> Option<Vec<KpiPoint>> {
        let state = read(&self.kpis);
        let s = state.series.get(&SeriesKey {
            kpi: kpi.to_string(),
            dims: dims_key(dims),
        })?;
        Some(s.points.iter().copied().collect())
    }

    /// Admitted deviations, newest first: (total admitted, the page).
    pub fn deviations(
        &self,
        filter: &DeviationFilter,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<Deviation>) {
        let state = read(&self.deviations);
        if filter.is_all() {
            let page = state
                .deviations
                .iter()
                .rev()
                .skip(offset)
                .take(limit)
                .map(|d| (**d).clone())
                .collect();
            return (state.deviations.len(), page);
        }
        let mut total = 0;
        let mut page = Vec::new();
        for d in state.deviations.iter().rev().filter(|d| filter.admits(d)) {
            if total >= offset && page.len() < limit {
                page.push((**d).clone());
            }
            total += 1;
        }
        (total, page)
    }

    pub fn deviation(&self, id: &str) -> Option<Deviation> {
        read(&self.deviations).index.get(id).map(|d| (**d).clone())
    }

    /// The newest deviation of an order that the view still holds.
    pub fn newest_deviation_of(&self, order_id: &str) -> Option<Deviation> {
        let orders = read(&self.orders);
        let view = orders.orders.get(order_id)?;
        let state = read(&self.deviations);
        view.deviation_ids
            .iter()
            .rev()
            .find_map(|id| state.index.get(id))
            .map(|d| (**d).clone())
    }

    /// Admitted orders, most recently active first: (total admitted, the page).
    pub fn orders(
        &self,
        q: &OrderQuery,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<OrderSummary>) {
        let needle = q.q.as_ref().map(|s| s.to_lowercase());
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_ref().is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        let views = read(&self.orders);
        let unfiltered = q.status.is_none()
            && q.region.is_none()
            && q.ship_mode.is_none()
            && q.min_risk.is_none()
            && q.from.is_none()
            && q.to.is_none()
            && needle.is_none();
        if unfiltered {
            let page = views
                .recency
                .values()
                .rev()
                .skip(offset)
                .take(limit)
                .filter_map(|id| views.orders.get(id).map(|o| o.summary.clone()))
                .collect();
            return (views.orders.len(), page);
        }
        let mut total = 0;
        let mut page = Vec::new();
        for id in views.recency.values().rev() {
            let Some(o) = views.orders.get(id) else {
                continue;
            };
            let s = &o.summary;
            let admitted = q.status.as_ref().is_none_or(|st| st == s.status)
                && eq(&q.region, &s.region)
                && eq(&q.ship_mode, &s.ship_mode)
                && q.min_risk.is_none_or(|m| s.risk.is_some_and(|r| r >= m))
                && q.from.is_none_or(|f| s.created_ts.is_some_and(|c| c >= f))
                && q.to.is_none_or(|t| s.created_ts.is_some_and(|c| c < t))
                && needle.as_ref().is_none_or(|n| {
                    s.order_id.to_lowercase().contains(n)
                        || s.customer_id
                            .as_ref()
                            .is_some_and(|c| c.to_lowercase().contains(n))
                });
            if admitted {
                if total >= offset && page.len() < limit {
                    page.push(s.clone());
                }
                total += 1;
            }
        }
        (total, page)
    }

    pub fn order(&self, order_id: &str) -> Option<OrderDetail> {
        let views = read(&self.orders);
        let o = views.orders.get(order_id)?;
        let state = read(&self.deviations);
        Some(OrderDetail {
            order: o.summary.clone(),
            timeline: o.timeline.iter().cloned().collect(),
            risk: o.risk.iter().copied().collect(),
            deviations: o
                .deviation_ids
                .iter()
                .filter_map(|id| state.index.get(id).map(|d| (**d).clone()))
                .collect(),
        })
    }

    /// Orders, series and deviations held.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            read(&self.orders).orders.len(),
            read(&self.kpis).series.len(),
            read(&self.deviations).deviations.len(),
        )
    }
}

/// `{"type": kind, "sent_wall": ms, "kpis": [...]}`.
pub fn kpi_message(kind: &str, records: &[KpiRecord], sent_wall: Option<i64>) -> Utf8Bytes {
    let mut m = serde_json::json!({"type": kind, "kpis": records});
    if let Some(w) = sent_wall {
        m["sent_wall"] = w.into();
    }
    m.to_string().into()
}

/// `{"type": kind, "deviations": [...]}`.
pub fn deviation_message<'a>(kind: &str, devs: impl Iterator<Item = &'a Deviation>) -> Utf8Bytes {
    let items: Vec<&Deviation> = devs.collect();
    serde_json::json!({"type": kind, "deviations": items})
        .to_string()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::OrderCreated;

    fn record(kpi: &str, region: Option<&str>, window_start: i64, version: u32) -> KpiRecord {
        KpiRecord {
            kpi: kpi.into(),
            dims: region
                .map(|r| BTreeMap::from([("region".to_string(), r.to_string())]))
                .unwrap_or_default(),
            window_start,
            window_end: window_start + 10,
            value: Some(f64::from(version)),
            numerator: 1,
            denominator: 1,
            status: KpiStatus::Ok,
            version,
            is_final: false,
        }
    }

    #[test]
    fn kpis_keep_the_newest_version_per_window_and_coalesce_pending_updates() {
        let v = LiveView::new(10, 10, 8);
        let mut rx = v.subscribe_kpis();
        v.on_kpis(&[
            record("on_time_rate", None, 0, 1),
            record("on_time_rate", None, 0, 2),
            record("on_time_rate", Some("West"), 0, 1),
            record("on_time_rate", None, 20, 1),
            // A stale version arriving late does not replace the newer one.
            record("on_time_rate", None, 0, 1),
        ]);
        let global = v
            .kpi_history("on_time_rate", &BTreeMap::new())
            .expect("series");
        assert_eq!(
            global
                .iter()
                .map(|p| (p.window_start, p.version))
                .collect::<Vec<_>>(),
            vec![(0, 2), (20, 1)]
        );
        let current = v.current_kpis(&KpiFilter::new(vec![], vec!["global".into()]), None);
        assert_eq!(current.len(), 1);
        assert_eq!((current[0].window_start, current[0].version), (20, 1));
        let regional = v.current_kpis(&KpiFilter::new(vec![], vec!["region".into()]), None);
        assert_eq!(regional.len(), 1);
        v.publish_pending();
        let push = rx.try_recv().expect("one batch");
        // Three keys: (global, 0) coalesced from three updates, (West, 0), (global, 20).
        assert_eq!(push.records.len(), 3);
        assert!(rx.try_recv().is_err());
    }

    fn created(order: &str, ts: i64) -> OrderEvent {
        OrderEvent {
            event_id: format!("{order}-c").into(),
            order_id: order.into(),
            ts,
            body: EventBody::OrderCreated(Box::new(OrderCreated {
                customer_id: "C1".into(),
                segment: "Consumer".into(),
                region: "West".into(),
                ship_mode: "Standard Class".into(),
                warehouse: "W1".into(),
                qty: None,
                amount: 120.0,
                promised_delivery_ts: ts + 1000,
            })),
            extra: None,
        }
    }

    #[test]
    fn orders_follow_their_events_and_the_least_recently_active_go_first() {
        let v = LiveView::new(10, 2, 8);
        v.on_order_events(vec![created("A", 10), created("B", 20)]);
        v.on_order_events(vec![OrderEvent {
            event_id: "A-s".into(),
            order_id: "A".into(),
            ts: 30,
            body: EventBody::Shipped {
                carrier: "UPS".into(),
                tracking: None,
                qty: None,
            },
            extra: None,
        }]);
        // C pushes out B, the least recently active.
        v.on_order_events(vec![created("C", 40)]);
        assert!(v.order("B").is_none());
        let a = v.order("A").expect("A kept");
        assert_eq!(a.order.status, "shipped");
        assert_eq!(a.order.carrier.as_deref(), Some("UPS"));
        assert_eq!(
            a.timeline.iter().map(|t| t.kind).collect::<Vec<_>>(),
            vec!["order_created", "shipped"]
        );
        let (total, page) = v.orders(
            &OrderQuery {
                status: Some("shipped".into()),
                ..OrderQuery::default()
            },
            0,
            10,
        );
        assert_eq!((total, page[0].order_id.as_str()), (1, "A"));
        let (total, _) = v.orders(&OrderQuery::default(), 0, 10);
        assert_eq!(total, 2);
    }
}
