//! WebSocket streams `/ws/kpi` and `/ws/deviations` (protocol in `docs/API.md`).
//!
//! In: the live view's broadcast streams, and subscribe messages from the client. Out: a
//! snapshot, then deltas and heartbeats, as JSON text frames.
//!
//! Slow clients: every client reads the same bounded broadcast ring, so a client that falls
//! behind costs no memory of its own. A KPI client that fell behind gets a fresh snapshot of
//! its series instead of the updates it missed (the coalesced state). A deviation client that
//! fell behind would miss deviations, so it is closed with 1008. A client whose socket does not
//! take a frame within `serve.ws_stall_limit` is dropped. Each client has its own task, so a
//! stalled one never delays the others.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::api::Params;
use super::live::{
    deviation_message, kpi_message, DeviationFilter, DeviationPush, KpiFilter, KpiPush,
};
use super::AppState;
use crate::dataflow::wall_clock_ms;
use crate::model::records::Deviation;

/// Deviations in a snapshot.
const SNAPSHOT_DEVIATIONS: usize = 100;

static KPI_CLIENTS: AtomicI64 = AtomicI64::new(0);
static DEVIATION_CLIENTS: AtomicI64 = AtomicI64::new(0);

/// Connected clients: (KPI stream, deviation stream).
pub fn client_counts() -> (i64, i64) {
    (
        KPI_CLIENTS.load(Ordering::Relaxed),
        DEVIATION_CLIENTS.load(Ordering::Relaxed),
    )
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ws/kpi", get(kpi_upgrade))
        .route("/ws/deviations", get(deviation_upgrade))
}

/// Counts a client for its lifetime.
struct Connected {
    stream: &'static str,
    count: &'static AtomicI64,
}

impl Connected {
    fn new(stream: &'static str, count: &'static AtomicI64) -> Connected {
        count.fetch_add(1, Ordering::Relaxed);
        super::metrics::global()
            .ws_clients
            .with_label_values(&[stream])
            .inc();
        Connected { stream, count }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        super::metrics::global()
            .ws_clients
            .with_label_values(&[self.stream])
            .dec();
    }
}

/// Why a client's loop ended.
enum End {
    /// The client closed or the connection broke.
    Gone,
    /// The client could not keep up.
    Slow,
}

/// Sends one frame, giving up after the stall limit.
async fn send(
    socket: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    text: Utf8Bytes,
    stall: Duration,
    stream: &'static str,
) -> Result<(), End> {
    match tokio::time::timeout(stall, socket.send(Message::Text(text))).await {
        Ok(Ok(())) => {
            super::metrics::global()
                .ws_messages
                .with_label_values(&[stream])
                .inc();
            Ok(())
        }
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Slow),
    }
}

async fn close_slow(
    mut socket: futures_util::stream::SplitSink<WebSocket, Message>,
    stream: &'static str,
) {
    super::metrics::global()
        .ws_dropped
        .with_label_values(&[stream])
        .inc();
    let frame = Message::Close(Some(CloseFrame {
        code: 1008,
        reason: "slow consumer".into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
}

fn heartbeat(app: &AppState) -> Utf8Bytes {
    serde_json::json!({
        "type": "heartbeat",
        "wall": wall_clock_ms(),
        "watermark": app.live.watermark_ms(),
    })
    .to_string()
    .into()
}

#[derive(Deserialize)]
struct Subscribe {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    kpi: Vec<String>,
    #[serde(default)]
    dims: Vec<String>,
    #[serde(default)]
    severity: Vec<String>,
    #[serde(default, rename = "type_")]
    types: Vec<String>,
}

fn parse_subscribe(text: &str) -> Option<Subscribe> {
    serde_json::from_str::<Subscribe>(text)
        .ok()
        .filter(|s| s.kind == "subscribe")
}

/// What differs between the two streams; [`client`] is the one loop both run.
trait StreamKind {
    const NAME: &'static str;
    type Filter: Send + 'static;
    type Push: Send + Sync + 'static;
    fn clients() -> &'static AtomicI64;
    fn subscribe(app: &AppState) -> broadcast::Receiver<Arc<Self::Push>>;
    fn snapshot(app: &AppState, filter: &Self::Filter) -> Utf8Bytes;
    /// The frame for a client with `filter`; `None`: nothing in it for this client.
    fn frame(push: &Self::Push, filter: &Self::Filter) -> Option<Utf8Bytes>;
    /// After falling behind the ring: what to send instead, or `None` to drop the client.
    fn caught_up(app: &AppState, filter: &Self::Filter) -> Option<Utf8Bytes>;
    fn filter_of(s: Subscribe) -> Self::Filter;
}

struct KpiStream;

impl StreamKind for KpiStream {
    const NAME: &'static str = "kpi";
    type Filter = KpiFilter;
    type Push = KpiPush;

    fn clients() -> &'static AtomicI64 {
        &KPI_CLIENTS
    }

    fn subscribe(app: &AppState) -> broadcast::Receiver<Arc<KpiPush>> {
        app.live.subscribe_kpis()
    }

    fn snapshot(app: &AppState, filter: &KpiFilter) -> Utf8Bytes {
        kpi_message("snapshot", &app.live.current_kpis(filter, None), None)
    }

    fn frame(push: &KpiPush, filter: &KpiFilter) -> Option<Utf8Bytes> {
        if filter.is_all() {
            return Some(push.message.clone());
        }
        let mine: Vec<_> = push
            .records
            .iter()
            .filter(|r| filter.admits(r))
            .cloned()
            .collect();
        (!mine.is_empty()).then(|| kpi_message("kpis", &mine, Some(push.sent_wall)))
    }

    /// The current values replace the updates that were missed (the coalesced state).
    fn caught_up(app: &AppState, filter: &KpiFilter) -> Option<Utf8Bytes> {
        Some(Self::snapshot(app, filter))
    }

    fn filter_of(s: Subscribe) -> KpiFilter {
        KpiFilter::new(s.kpi, s.dims)
    }
}

struct DeviationStream;

impl StreamKind for DeviationStream {
    const NAME: &'static str = "deviations";
    type Filter = DeviationFilter;
    type Push = DeviationPush;

    fn clients() -> &'static AtomicI64 {
        &DEVIATION_CLIENTS
    }

    fn subscribe(app: &AppState) -> broadcast::Receiver<Arc<DeviationPush>> {
        app.live.subscribe_deviations()
    }

    fn snapshot(app: &AppState, filter: &DeviationFilter) -> Utf8Bytes {
        let (_, newest) = app.live.deviations(filter, 0, SNAPSHOT_DEVIATIONS);
        deviation_message("snapshot", newest.iter())
    }

    fn frame(push: &DeviationPush, filter: &DeviationFilter) -> Option<Utf8Bytes> {
        match push {
            DeviationPush::Actions { message } => Some(message.clone()),
            DeviationPush::Deviations { message, .. } if filter.is_all() => Some(message.clone()),
            DeviationPush::Deviations { items, .. } => {
                let mine: Vec<&Deviation> = items
                    .iter()
                    .filter(|d| filter.admits(d))
                    .map(|d| &**d)
                    .collect();
                (!mine.is_empty()).then(|| deviation_message("deviations", mine.into_iter()))
            }
        }
    }

    /// Deviations were missed: the client must reconnect and read them again.
    fn caught_up(_: &AppState, _: &DeviationFilter) -> Option<Utf8Bytes> {
        None
    }

    fn filter_of(s: Subscribe) -> DeviationFilter {
        DeviationFilter {
            severities: s.severity,
            types: s.types,
            order_id: None,
        }
    }
}

async fn kpi_upgrade(
    State(app): State<Arc<AppState>>,
    params: Params,
    ws: WebSocketUpgrade,
) -> Response {
    let filter = KpiFilter::new(params.list("kpi"), params.list("dims"));
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| client::<KpiStream>(app, socket, filter))
}

async fn deviation_upgrade(
    State(app): State<Arc<AppState>>,
    params: Params,
    ws: WebSocketUpgrade,
) -> Response {
    let filter = DeviationFilter {
        severities: params.list("severity"),
        types: params.list("type"),
        order_id: None,
    };
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| client::<DeviationStream>(app, socket, filter))
}

/// One client: a snapshot, then its frames of every push, heartbeats, and new snapshots when it
/// subscribes again.
async fn client<K: StreamKind>(app: Arc<AppState>, socket: WebSocket, mut filter: K::Filter) {
    let _connected = Connected::new(K::NAME, K::clients());
    let stall = Duration::from_millis(app.config.ws_stall_limit.ms() as u64);
    let (mut tx, mut rx) = socket.split();
    let mut updates = K::subscribe(&app);
    let mut beat = tokio::time::interval(Duration::from_millis(app.config.heartbeat.ms() as u64));
    // After a stall (a slow send), the next heartbeat comes one interval later, not as a burst
    // of the missed ones.
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let end = 'client: {
        if let Err(e) = send(&mut tx, K::snapshot(&app, &filter), stall, K::NAME).await {
            break 'client e;
        }
        loop {
            let text = tokio::select! {
                update = updates.recv() => match update {
                    Ok(push) => match K::frame(&push, &filter) {
                        Some(text) => text,
                        None => continue,
                    },
                    Err(RecvError::Lagged(_)) => match K::caught_up(&app, &filter) {
                        Some(text) => text,
                        None => break End::Slow,
                    },
                    Err(RecvError::Closed) => break End::Gone,
                },
                _ = beat.tick() => heartbeat(&app),
                incoming = rx.next() => match incoming {
                    Some(Ok(Message::Text(t))) => match parse_subscribe(&t) {
                        Some(s) => {
                            filter = K::filter_of(s);
                            K::snapshot(&app, &filter)
                        }
                        None => continue,
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                    Some(Ok(_)) => continue,
                },
            };
            if let Err(e) = send(&mut tx, text, stall, K::NAME).await {
                break e;
            }
        }
    };
    if let End::Slow = end {
        close_slow(tx, K::NAME).await;
    }
}
