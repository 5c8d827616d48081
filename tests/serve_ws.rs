//! The WebSocket streams on a running job: auth, snapshot then filtered deltas, heartbeats,
//! re-subscribing, and a client that stops reading: it is disconnected once its socket stays
//! full past the stall limit, while a fast client on the same stream keeps getting every
//! heartbeat on time.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

mod serving;
use serving::{metric, RunningJob};

const KEY: &str = "ws-key";
/// 2018-01-01: after it, the live generator's data.
const LIVE_FROM_MS: i64 = 1_514_764_800_000;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame, within `limit`.
async fn next_json(ws: &mut Ws, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no socket error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON frame");
        }
    }
}

/// Frames until one of `kind` arrives (the others are returned too).
async fn until_type(ws: &mut Ws, kind: &str, limit: Duration) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let m = next_json(ws, deadline.saturating_duration_since(Instant::now())).await;
        if m["type"] == kind {
            return (m, seen);
        }
        seen.push(m);
    }
}

fn records(m: &Value, field: &str) -> Vec<Value> {
    m[field].as_array().expect("array").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_stream_snapshots_deltas_heartbeats_and_drop_a_stalled_client() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.yaml");
    std::fs::write(
        &config,
        "serve:\n  heartbeat: 500ms\n  ws_stall_limit: 2s\n  ws_buffer: 64\n",
    )
    .unwrap();
    let job = RunningJob::start(
        dir.path(),
        &[
            "--source",
            "default",
            "--rate",
            "3000",
            "--no-agents",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("FULFILLMENT_API_KEY", KEY)],
    );
    job.wait_for_health(Duration::from_secs(240), |h| {
        h["components"]["dataflow"]["watermark_ms"]
            .as_i64()
            .is_some_and(|w| w > LIVE_FROM_MS)
    });
    let base = format!("ws://{}", job.addr);

    // Without the key: 401 at the handshake.
    match tokio_tungstenite::connect_async(format!("{base}/ws/kpi")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }

    // Snapshot of just the filtered series, then deltas of them, and heartbeats.
    let (mut kpi, _) = tokio_tungstenite::connect_async(format!(
        "{base}/ws/kpi?token={KEY}&kpi=on_time_rate,late_deliveries&dims=global"
    ))
    .await
    .expect("connect");
    let snap = next_json(&mut kpi, Duration::from_secs(10)).await;
    assert_eq!(snap["type"], "snapshot");
    let kinds = |rs: &[Value]| -> Vec<String> {
        rs.iter()
            .map(|r| r["kpi"].as_str().unwrap().to_string())
            .collect()
    };
    let snap_records = records(&snap, "kpis");
    assert_eq!(snap_records.len(), 2, "{snap}");
    assert!(snap_records
        .iter()
        .all(|r| r["dims"].as_object().unwrap().is_empty()));
    let mut deltas = 0;
    let mut beats = Vec::new();
    let listen = Instant::now();
    while listen.elapsed() < Duration::from_secs(4) {
        let m = next_json(&mut kpi, Duration::from_secs(5)).await;
        match m["type"].as_str().unwrap() {
            "kpis" => {
                deltas += 1;
                let rs = records(&m, "kpis");
                assert!(kinds(&rs)
                    .iter()
                    .all(|k| k == "on_time_rate" || k == "late_deliveries"));
                assert!(rs.iter().all(|r| r["dims"].as_object().unwrap().is_empty()));
                assert!(m["sent_wall"].as_i64().unwrap() > 0);
            }
            "heartbeat" => {
                beats.push(m["wall"].as_i64().unwrap());
                assert!(m["watermark"].as_i64().unwrap() > LIVE_FROM_MS);
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert!(deltas >= 1, "no deltas in 4 s");
    // The interval, read off the server's clock: the median gap between heartbeats (a stall of
    // the loaded machine stretches single gaps, not the median).
    assert!(
        beats.len() >= 4,
        "{} heartbeats in 4 s at 500ms",
        beats.len()
    );
    let mut gaps: Vec<i64> = beats.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(
        (400..=700).contains(&median),
        "median heartbeat gap {median} ms at 500ms: {gaps:?}"
    );

    // Re-subscribe: a new snapshot with only the new selection.
    kpi.send(Message::Text(
        r#"{"type":"subscribe","kpi":["late_deliveries"],"dims":["region"]}"#.into(),
    ))
    .await
    .unwrap();
    let (snap, _) = until_type(&mut kpi, "snapshot", Duration::from_secs(10)).await;
    let rs = records(&snap, "kpis");
    assert!(rs.len() >= 4, "{snap}");
    assert!(rs.iter().all(|r| r["kpi"] == "late_deliveries"
        && r["dims"].as_object().unwrap().keys().eq(["region"].iter())));
    drop(kpi);

    // Deviations: a filtered snapshot (newest 100 at most), then live deviations.
    let (mut devs, _) = tokio_tungstenite::connect_async(format!(
        "{base}/ws/deviations?token={KEY}&severity=warning"
    ))
    .await
    .expect("connect");
    let snap = next_json(&mut devs, Duration::from_secs(10)).await;
    let ds = records(&snap, "deviations");
    assert!(!ds.is_empty() && ds.len() <= 100, "{}", ds.len());
    assert!(ds.iter().all(|d| d["severity"] == "warning"));
    let (live, _) = until_type(&mut devs, "deviations", Duration::from_secs(60)).await;
    assert!(records(&live, "deviations")
        .iter()
        .all(|d| d["severity"] == "warning"));
    drop(devs);

    // A client that never reads, with a tiny receive buffer, next to a fast one.
    let metrics_now = {
        let addr = job.addr.clone();
        move || {
            let addr = addr.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    serving::request(&addr, "GET", "/metrics", &[], None).body
                })
                .await
                .unwrap()
            }
        }
    };
    let dropped =
        |text: &str| metric(text, r#"fulfillment_ws_dropped_total{stream="kpi"}"#).unwrap_or(0.0);
    let dropped_before = dropped(&metrics_now().await);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(job.addr.parse().unwrap()).await.unwrap();
    let (stalled, _) =
        tokio_tungstenite::client_async(format!("{base}/ws/kpi?token={KEY}"), stream)
            .await
            .expect("stalled client handshake");
    let (mut fast, _) = tokio_tungstenite::connect_async(format!("{base}/ws/kpi?token={KEY}"))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut fast_messages = 0;
    let mut next_check = Instant::now();
    let dropped_at = loop {
        let m = next_json(&mut fast, Duration::from_secs(5)).await;
        fast_messages += 1;
        assert!(
            m["type"] != "snapshot" || fast_messages == 1,
            "the fast client fell behind"
        );
        max_gap = max_gap.max(last.elapsed());
        last = Instant::now();
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_millis(500);
            if dropped(&metrics_now().await) > dropped_before {
                break started.elapsed();
            }
            // The gap measures the server, not this loop's own metrics request.
            last = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the stalled client was not dropped within 90 s"
        );
    };
    // Keep reading a little after the drop: the fast client is unaffected.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(2) {
        next_json(&mut fast, Duration::from_secs(5)).await;
        fast_messages += 1;
        max_gap = max_gap.max(last.elapsed());
        last = Instant::now();
    }
    eprintln!(
        "stalled client dropped after {dropped_at:?}; fast client: {fast_messages} messages, longest gap {max_gap:?}"
    );
    assert!(
        max_gap < Duration::from_millis(1500),
        "the fast client waited {max_gap:?} between messages (heartbeat 500ms)"
    );
    // The stalled client's connection closes after its close frame's timeout: within 10 s only
    // the fast client is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = job.get("/health").json();
        if health["components"]["websocket"]["kpi_clients"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
}
