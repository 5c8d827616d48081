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
use tokio::sync::broadcast::error::RecvError;

use super::api::Params;
use super::live::{deviation_message, kpi_message, DeviationFilter, DeviationPush, KpiFilter};
use super::AppState;
use crate::dataflow::wall_clock_ms;

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

async fn kpi_upgrade(
    State(app): State<Arc<AppState>>,
    params: Params,
    ws: WebSocketUpgrade,
) -> Response {
    let filter = KpiFilter::new(params.list("kpi"), params.list("dims"));
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| kpi_client(app, socket, filter))
}

async fn kpi_client(app: Arc<AppState>, socket: WebSocket, mut filter: KpiFilter) {
    const STREAM: &str = "kpi";
    let _connected = Connected::new(STREAM, &KPI_CLIENTS);
    let stall = Duration::from_millis(app.config.ws_stall_limit.ms() as u64);
    let (mut tx, mut rx) = socket.split();
    let mut updates = app.live.subscribe_kpis();
    let mut beat = tokio::time::interval(Duration::from_millis(app.config.heartbeat.ms() as u64));
    beat.tick().await;
    let snapshot = |f: &KpiFilter| kpi_message("snapshot", &app.live.current_kpis(f, None), None);
    let end = 'client: {
        if let Err(e) = send(&mut tx, snapshot(&filter), stall, STREAM).await {
            break 'client e;
        }
        loop {
            let text = tokio::select! {
                update = updates.recv() => match update {
                    Ok(push) if filter.is_all() => push.message.clone(),
                    Ok(push) => {
                        let mine: Vec<_> =
                            push.records.iter().filter(|r| filter.admits(r)).cloned().collect();
                        if mine.is_empty() {
                            continue;
                        }
                        kpi_message("kpis", &mine, Some(push.sent_wall))
                    }
                    // Fell behind the ring: the current values replace what was missed.
                    Err(RecvError::Lagged(_)) => snapshot(&filter),
                    Err(RecvError::Closed) => break End::Gone,
                },
                _ = beat.tick() => heartbeat(&app),
                incoming = rx.next() => match incoming {
                    Some(Ok(Message::Text(t))) => match parse_subscribe(&t) {
                        Some(s) => {
                            filter = KpiFilter::new(s.kpi, s.dims);
                            snapshot(&filter)
                        }
                        None => continue,
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                    Some(Ok(_)) => continue,
                },
            };
            if let Err(e) = send(&mut tx, text, stall, STREAM).await {
                break e;
            }
        }
    };
    if let End::Slow = end {
        close_slow(tx, STREAM).await;
    }
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
        .on_upgrade(move |socket| deviation_client(app, socket, filter))
}

async fn deviation_client(app: Arc<AppState>, socket: WebSocket, mut filter: DeviationFilter) {
    const STREAM: &str = "deviations";
    let _connected = Connected::new(STREAM, &DEVIATION_CLIENTS);
    let stall = Duration::from_millis(app.config.ws_stall_limit.ms() as u64);
    let (mut tx, mut rx) = socket.split();
    let mut updates = app.live.subscribe_deviations();
    let mut beat = tokio::time::interval(Duration::from_millis(app.config.heartbeat.ms() as u64));
    beat.tick().await;
    let snapshot = |f: &DeviationFilter| {
        let (_, newest) = app.live.deviations(f, 0, SNAPSHOT_DEVIATIONS);
        deviation_message("snapshot", newest.iter())
    };
    let end = 'client: {
        if let Err(e) = send(&mut tx, snapshot(&filter), stall, STREAM).await {
            break 'client e;
        }
        loop {
            let text = tokio::select! {
                update = updates.recv() => match update {
                    Ok(push) => match &*push {
                        DeviationPush::Actions { message } => message.clone(),
                        DeviationPush::Deviations { message, .. } if filter.is_all() => {
                            message.clone()
                        }
                        DeviationPush::Deviations { items, .. } => {
                            let mine: Vec<_> =
                                items.iter().filter(|d| filter.admits(d)).map(|d| &**d).collect();
                            if mine.is_empty() {
                                continue;
                            }
                            deviation_message("deviations", mine.into_iter())
                        }
                    },
                    // Deviations were missed: the client must reconnect and re-read.
                    Err(RecvError::Lagged(_)) => break End::Slow,
                    Err(RecvError::Closed) => break End::Gone,
                },
                _ = beat.tick() => heartbeat(&app),
                incoming = rx.next() => match incoming {
                    Some(Ok(Message::Text(t))) => match parse_subscribe(&t) {
                        Some(s) => {
                            filter = DeviationFilter {
                                severities: s.severity,
                                types: s.types,
                                order_id: None,
                            };
                            snapshot(&filter)
                        }
                        None => continue,
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                    Some(Ok(_)) => continue,
                },
            };
            if let Err(e) = send(&mut tx, text, stall, STREAM).await {
                break e;
            }
        }
    };
    if let End::Slow = end {
        close_slow(tx, STREAM).await;
    }
}
