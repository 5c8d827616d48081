//! The REST API over real HTTP on a running job (`run --source default`: the Superstore replay,
//! then the live generator; agents on the offline backend; an API key; one CORS origin).
//! Answers are checked against what the job computed: filters, paging, KPI arithmetic, order
//! timelines, agent cases and conversations, knowledge-base search and uploads, thresholds
//! applied to the running dataflow, auth, body limits, problem+json errors and the metrics.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod serving;
use serving::{metric, request, RunningJob};

const KEY: &str = "k-test-1";
/// Events in the Superstore replay: beyond it, the live generator is running.
const HISTORY_EVENTS: u64 = 38_398;
/// 2018-01-01: the replay ends the day before, the live generator starts an hour after it.
const LIVE_FROM_MS: i64 = 1_514_764_800_000;

fn start(dir: &std::path::Path) -> RunningJob {
    let config = dir.join("app.yaml");
    std::fs::write(
        &config,
        "serve:\n  cors_origins: [http://ops.example]\n  max_body_bytes: 65536\n",
    )
    .unwrap();
    let job = RunningJob::start(
        dir,
        &["--source", "default", "--config", config.to_str().unwrap()],
        &[("FULFILLMENT_API_KEY", KEY)],
    );
    // Ready once the whole replay is processed (the watermark is in the live part) and the
    // collector, which may trail the dataflow, has handed the replay's KPIs to the live view.
    job.wait_for_health(Duration::from_secs(240), |h| {
        h["components"]["dataflow"]["watermark_ms"]
            .as_i64()
            .is_some_and(|w| w > LIVE_FROM_MS)
    });
    let started = Instant::now();
    while job.get("/kpis/history?kpi=on_time_rate").status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no global on-time series"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    job
}

fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().expect("items")
}

#[test]
fn rest_api_answers_from_the_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let job = start(dir.path());

    // Health names every component and the real embedder.
    let h = job.get("/health").json();
    assert_eq!(h["status"], "ok", "{h}");
    let c = &h["components"];
    assert_eq!(c["dataflow"]["state"], "running");
    assert!(
        c["dataflow"]["watermark_ms"]
            .as_i64()
            .is_some_and(|w| w > LIVE_FROM_MS),
        "{h}"
    );
    assert!(c["dataflow"]["watermark_lag_ms"].as_i64().unwrap() > 0);
    assert_eq!(c["broker"]["state"], "not_used");
    assert_eq!(c["agents"]["backend"], "offline-rules-v1");
    assert!(c["kb"]["embedder"]
        .as_str()
        .unwrap()
        .starts_with("all-MiniLM-L6-v2"));
    assert_eq!(c["kb"]["fallback"], false);

    // The OpenAPI document lists every route the server has.
    let doc = job.get("/openapi.json").json();
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "/health",
        "/metrics",
        "/kpis",
        "/kpis/history",
        "/deviations",
        "/deviations/{id}",
        "/detect-deviation",
        "/trigger-agent",
        "/agent-response/{id}",
        "/cases",
        "/cases/{id}",
        "/cases/{id}/messages",
        "/orders",
        "/orders/{id}",
        "/kb/search",
        "/kb/documents",
        "/settings/thresholds",
    ]
    .into();
    assert_eq!(paths, expected);

    // KPIs: the dimension-set filter, and every value is numerator / denominator.
    let heat = job
        .get("/kpis?kpi=on_time_rate&dims=ship_mode%2Bregion")
        .json();
    assert!(items(&heat).len() >= 8, "{heat}");
    for r in items(&heat) {
        assert_eq!(r["kpi"], "on_time_rate");
        let dims: BTreeSet<&str> = r["dims"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(dims, ["region", "ship_mode"].into());
        if let Some(v) = r["value"].as_f64() {
            let (n, d) = (
                r["numerator"].as_f64().unwrap(),
                r["denominator"].as_f64().unwrap(),
            );
            assert!((v - n / d).abs() < 1e-9 && (0.0..=1.0).contains(&v), "{r}");
        }
    }
    let all = job.get("/kpis").json();
    assert!(items(&all).len() > items(&heat).len());
    // History: one point per window, oldest first, newest equal to the current value's window.
    let hist = job.get("/kpis/history?kpi=on_time_rate").json();
    let starts: Vec<i64> = hist["points"]
        .as_array()
        .unwrap_or_else(|| panic!("{hist}"))
        .iter()
        .map(|p| p["window_start"].as_i64().unwrap())
        .collect();
    assert!(starts.len() >= 30, "{} points", starts.len());
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
    job.get("/kpis/history?kpi=no_such_kpi").problem(404);
    job.get("/kpis/history").problem(400);
    job.get("/kpis?window=yesterday").problem(400);

    // Deviations: paging and filters. The live generator keeps adding deviations (newest
    // first), so the pages are compared only when no deviation arrived between the requests
    // (the same total before and after); on a live job that takes a few tries.
    let ids = |v: &Value| -> Vec<String> {
        items(v)
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut pages = None;
    for _ in 0..50 {
        let ten = job.get("/deviations?limit=10").json();
        let first = job.get("/deviations?limit=5").json();
        let second = job.get("/deviations?limit=5&offset=5").json();
        if ten["total"] == first["total"] && first["total"] == second["total"] {
            pages = Some((ten, first, second));
            break;
        }
    }
    let (ten, first, second) = pages.expect("three pages read while no deviation arrived");
    let total = first["total"].as_u64().unwrap();
    assert!(total > 1000, "{total}");
    assert_eq!(ids(&first).len(), 5);
    assert_eq!(ids(&second).len(), 5);
    assert!(ids(&first).iter().all(|i| !ids(&second).contains(i)));
    assert_eq!([ids(&first), ids(&second)].concat(), ids(&ten));
    let critical = job.get("/deviations?severity=critical&limit=1000").json();
    assert!(!items(&critical).is_empty());
    assert!(items(&critical).iter().all(|d| d["severity"] == "critical"));
    // The oldest payment failure: the agent stage works oldest first, so its case is done first.
    let failed = job.get("/deviations?type=payment_failed&limit=1").json();
    let oldest = failed["total"].as_u64().unwrap() - 1;
    let failed = job
        .get(&format!(
            "/deviations?type=payment_failed&limit=1&offset={oldest}"
        ))
        .json();
    let payment = items(&failed)[0].clone();
    assert_eq!(payment["type"], "payment_failed");
    let one = job
        .get(&format!("/deviations/{}", payment["id"].as_str().unwrap()))
        .json();
    assert_eq!(one["id"], payment["id"]);
    job.get("/deviations/nope").problem(404);
    job.get("/deviations?limit=0").problem(400);
    job.get("/deviations?limit=ten").problem(400);

    // The agent stage works through the replay's deviations behind the dataflow: wait for the
    // payment failure's case to be finished.
    let case_id = payment["id"].as_str().unwrap();
    let started = Instant::now();
    loop {
        let c = job.get(&format!("/cases/{case_id}"));
        if c.status == 200 && c.json()["status"] != "queued" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "case {case_id} not finished: {}",
            c.body
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Orders: filters, and a drill-down whose timeline starts with the order's creation.
    let delivered = job.get("/orders?status=delivered&limit=3").json();
    assert_eq!(items(&delivered).len(), 3);
    assert!(items(&delivered).iter().all(|o| o["status"] == "delivered"));
    let west = job.get("/orders?region=west&limit=50").json();
    assert!(items(&west).iter().all(|o| o["region"] == "West"));
    let order_id = payment["order_id"].as_str().unwrap();
    let detail = job.get(&format!("/orders/{order_id}")).json();
    let timeline = detail["timeline"].as_array().unwrap();
    assert_eq!(timeline[0]["type"], "order_created", "{detail}");
    assert!(timeline.iter().any(|e| e["type"] == "payment_failed"));
    let ts: Vec<i64> = timeline.iter().map(|e| e["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    assert!(detail["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == payment["id"]));
    // The order's cases (it may have others, e.g. a predicted delay) include the payment's.
    assert!(
        detail["cases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["case_id"] == payment["id"]),
        "{detail}"
    );
    let found = job.get(&format!("/orders?q={order_id}")).json();
    assert!(items(&found).iter().any(|o| o["order_id"] == order_id));
    job.get("/orders/nope").problem(404);

    // Detect without ingesting: a payment failure fires the rule, nothing reaches the job.
    let before = job.get("/health").json()["components"]["dataflow"]["events_received"]
        .as_u64()
        .unwrap();
    let events = json!({"events": [
        {"v":1,"event_id":"probe-1-0","order_id":"probe-1","type":"order_created","ts":1704067200000u64,
         "customer_id":"C-1","segment":"Consumer","region":"West","ship_mode":"Standard Class",
         "warehouse":"WH-WEST-1","qty":1,"amount":80.0,"promised_delivery_ts":1704672000000u64},
        {"v":1,"event_id":"probe-1-1","order_id":"probe-1","type":"payment_failed","ts":1704067260000u64,"reason":"card_declined"},
        {"v":1,"type":"teleported"}
    ], "at": 1704067300000u64});
    job.send("POST", "/detect-deviation", None, &events.to_string())
        .problem(401);
    job.send(
        "POST",
        "/detect-deviation",
        Some("wrong"),
        &events.to_string(),
    )
    .problem(401);
    let detected = job
        .send("POST", "/detect-deviation", Some(KEY), &events.to_string())
        .json();
    assert_eq!(detected["accepted"], 2, "{detected}");
    assert_eq!(detected["rejected"][0]["index"], 2);
    let kinds: Vec<&str> = detected["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["payment_failed"], "{detected}");
    job.get("/orders/probe-1").problem(404);
    assert!(job.get("/deviations?order_id=probe-1").json()["total"] == 0);
    let after = job.get("/health").json()["components"]["dataflow"]["events_received"]
        .as_u64()
        .unwrap();
    assert!(after >= before);
    job.send("POST", "/detect-deviation", Some(KEY), "{not json")
        .problem(400);
    job.send("POST", "/detect-deviation", Some(KEY), r#"{"evnts": []}"#)
        .problem(422);
    let big = format!(r#"{{"events": [], "pad": "{}"}}"#, "x".repeat(100_000));
    job.send("POST", "/detect-deviation", Some(KEY), &big)
        .problem(413);

    // Agents: the payment failure's case exists (the stage took it from the job); a trigger
    // runs the agent again with the operator's note, a follow-up continues the conversation.
    let case = job.get(&format!("/cases/{case_id}")).json();
    let runs_before = case["runs"].as_array().unwrap().len();
    let actions_before = case["actions"].as_array().unwrap().clone();
    assert!(!actions_before.is_empty(), "{case}");
    assert!(runs_before >= 1, "{case}");
    assert_eq!(case["runs"][0]["agent"], "payment");
    let trigger = json!({"deviation_id": case_id, "note": "Customer called twice about this."});
    job.send("POST", "/trigger-agent", None, &trigger.to_string())
        .problem(401);
    let t = job.send("POST", "/trigger-agent", Some(KEY), &trigger.to_string());
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.json()["case_id"], case_id);
    let reply = job.send(
        "POST",
        &format!("/cases/{case_id}/messages"),
        Some(KEY),
        &json!({"role": "customer", "body": "Can you retry my card today?"}).to_string(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let conv = reply.json();
    let roles: Vec<&str> = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    let n = roles.len();
    assert_eq!(
        &roles[n - 4..],
        ["operator", "agent", "customer", "agent"],
        "{roles:?}"
    );
    assert_eq!(conv["runs"].as_array().unwrap().len(), runs_before + 2);
    // The offline payment agent proposes the same retry again: it is not carried out twice.
    assert_eq!(
        conv["actions"].as_array().unwrap(),
        &actions_before,
        "{conv}"
    );
    let same = job.get(&format!("/agent-response/{case_id}")).json();
    assert_eq!(same["messages"], conv["messages"]);
    job.send(
        "POST",
        &format!("/cases/{case_id}/messages"),
        Some(KEY),
        r#"{"role": "robot", "body": "hi"}"#,
    )
    .problem(422);
    job.send(
        "POST",
        "/cases/nope/messages",
        Some(KEY),
        r#"{"role": "operator", "body": "hi"}"#,
    )
    .problem(404);
    job.send(
        "POST",
        "/trigger-agent",
        Some(KEY),
        r#"{"order_id": "nope"}"#,
    )
    .problem(404);
    let recent = job.get("/cases?limit=5").json();
    assert_eq!(items(&recent).len(), 5);
    let of_order = job.get(&format!("/cases?order_id={order_id}")).json();
    assert!(
        items(&of_order).iter().all(|c| c["order_id"] == order_id),
        "{of_order}"
    );
    assert!(
        items(&of_order).iter().any(|c| c["case_id"] == case_id),
        "{of_order}"
    );

    // Knowledge base: search, a rejected upload with its reason, an accepted one found next.
    let hits = job
        .get("/kb/search?q=how%20much%20refund%20after%2045%20days&k=3")
        .json();
    assert_eq!(items(&hits).len(), 3);
    assert_eq!(items(&hits)[0]["policy_type"], "refund", "{hits}");
    let reason = job
        .send(
            "POST",
            "/kb/documents",
            Some(KEY),
            &json!({"name": "bad.md", "text": "no front matter here"}).to_string(),
        )
        .problem(422);
    assert!(reason.contains("front matter"), "{reason}");
    let doc = "---\nid: holiday-cutoff\ntitle: Holiday shipping cut-off\npolicy_type: shipping\neffective_date: 2026-11-01\njurisdiction: [US]\nversion: 1\nsections: [holiday-cutoff]\n---\n# Holiday shipping cut-off\n\n## [holiday-cutoff] Holiday cut-off\n\nOrders placed after the fourteenth of December ship with the expedited penguin courier at no extra charge.\n";
    let added = job.send(
        "POST",
        "/kb/documents",
        Some(KEY),
        &json!({"name": "holiday-cutoff.md", "text": doc}).to_string(),
    );
    assert_eq!(added.status, 201, "{}", added.body);
    let hits = job
        .get("/kb/search?q=penguin%20courier&k=1&mode=bm25")
        .json();
    assert_eq!(
        items(&hits)[0]["doc_id"],
        added.json()["document_id"],
        "{hits}"
    );
    job.get("/kb/search?q=x&k=0").problem(400);
    job.get("/kb/search?q=x&mode=magic").problem(400);

    // Thresholds apply to the running dataflow: with levels no rate can pass, the next
    // versions of the global on-time rate are rated critical.
    let th = job.get("/settings/thresholds").json();
    assert_eq!(th["thresholds"]["on_time_rate"]["direction"], "below");
    let change = json!({"on_time_rate": {"warn": 1.5, "critical": 1.2, "min_count": 0}});
    job.send("PUT", "/settings/thresholds", None, &change.to_string())
        .problem(401);
    let bad = json!({"on_time_rate": {"warn": 0.5, "critical": 0.9}});
    let why = job
        .send("PUT", "/settings/thresholds", Some(KEY), &bad.to_string())
        .problem(422);
    assert!(why.contains("critical"), "{why}");
    let put = job.send(
        "PUT",
        "/settings/thresholds",
        Some(KEY),
        &change.to_string(),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["thresholds"]["on_time_rate"]["critical"], 1.2);
    assert!(put.json()["version"].as_u64().unwrap() > th["version"].as_u64().unwrap());
    let started = Instant::now();
    loop {
        let now = job.get("/kpis?kpi=on_time_rate&dims=global").json();
        if items(&now)
            .iter()
            .any(|r| r["status"] == "critical" && r["value"].is_number())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the running dataflow never rated on_time_rate with the new thresholds: {now}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // CORS: only the configured origin.
    let preflight = |origin: &str| {
        request(
            &job.addr,
            "OPTIONS",
            "/trigger-agent",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization,content-type",
                ),
            ],
            None,
        )
    };
    assert_eq!(
        preflight("http://ops.example").header("access-control-allow-origin"),
        Some("http://ops.example")
    );
    assert_eq!(
        preflight("http://evil.example").header("access-control-allow-origin"),
        None
    );

    // Unknown routes and methods are problem+json too.
    job.get("/nope").problem(404);
    job.send("DELETE", "/kpis", Some(KEY), "").problem(405);

    // Metrics: the job's counters, KPI and deviation counters, agent runs, requests.
    let m = job.get("/metrics");
    assert_eq!(m.status, 200);
    let text = &m.body;
    let received = metric(text, "fulfillment_events_received_total").unwrap();
    assert!(received > HISTORY_EVENTS as f64);
    // State gauges: every operator state is reported, and the running job holds live orders
    // (no more than the events it read) and open KPI cells.
    for state in fulfillment_ai::dataflow::state_gauges::STATE_NAMES {
        let gauge = format!(r#"fulfillment_state_entries{{state="{state}"}}"#);
        assert!(metric(text, &gauge).is_some(), "{gauge} missing");
    }
    let orders = metric(text, r#"fulfillment_state_entries{state="order_records"}"#).unwrap();
    assert!(orders > 0.0 && orders <= received, "{orders} order records");
    assert!(metric(text, r#"fulfillment_state_entries{state="kpi_cells"}"#).unwrap() > 0.0);
    assert!(metric(text, "fulfillment_watermark_lag_seconds").unwrap() > 0.0);
    // Alignment waits of both levels are exported; the worker level is off by default.
    let waits = |level: &str| {
        metric(
            text,
            &format!(r#"fulfillment_alignment_waits_total{{level="{level}"}}"#),
        )
    };
    assert!(waits("partition").is_some_and(|w| w >= 0.0));
    assert_eq!(waits("worker"), Some(0.0));
    assert_eq!(
        metric(text, "fulfillment_consumer_lag_messages"),
        Some(-1.0)
    );
    assert!(
        metric(
            text,
            r#"fulfillment_deviations_total{severity="warning",type="payment_failed"}"#
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            text,
            r#"fulfillment_kpi_updates_total{final="true",kpi="on_time_rate"}"#
        )
        .unwrap()
            >= 30.0
    );
    assert!(text.contains(r#"fulfillment_agent_runs_total{agent="payment",outcome="#));
    assert!(text.contains(r#"fulfillment_agent_run_seconds_bucket{agent="payment""#));
    assert!(
        metric(
            text,
            r#"fulfillment_http_requests_total{method="POST",status="401"}"#
        )
        .unwrap()
            >= 3.0
    );
}
