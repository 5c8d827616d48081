//! REST handlers (see `docs/API.md` and `/openapi.json`).
//!
//! In: HTTP requests with query strings and JSON bodies. Out: JSON answers read from the live
//! view, the case store, the knowledge base and the live spec; agent work (trigger, follow-up)
//! runs on the agent stage's runtime, knowledge-base work on the blocking pool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::live::{DeviationFilter, KpiFilter, OrderQuery};
use super::{AppState, JsonBody, Problem};
use crate::agents::runner::AgentDesk;
use crate::dataflow::live_spec::ThresholdChange;
use crate::dataflow::orders::{OrderOutputs, OrderState};
use crate::dataflow::wall_clock_ms;
use crate::model::time::TickClock;
use crate::rag::{Filters, Mode};

type ApiResult = Result<Response, Problem>;

/// Query parameters in order, percent-decoded; extraction never fails.
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let pairs = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (super::percent_decode(k), super::percent_decode(v))
            })
            .collect();
        Ok(Params(pairs))
    }
}

impl Params {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every comma-separated value of every occurrence.
    pub(super) fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }

    fn int(&self, name: &str) -> Result<Option<i64>, Problem> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    Problem::bad_request(format!("`{name}`: `{v}` is not a whole number"))
                })
            })
            .transpose()
    }

    fn float(&self, name: &str) -> Result<Option<f64>, Problem> {
        self.get(name)
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| Problem::bad_request(format!("`{name}`: `{v}` is not a number")))
            })
            .transpose()
    }

    /// `(offset, limit)`: limit 1..=1000 (default 50), offset >= 0.
    fn page(&self) -> Result<(usize, usize), Problem> {
        let limit = self.int("limit")?.unwrap_or(50);
        let offset = self.int("offset")?.unwrap_or(0);
        if limit < 1 || offset < 0 {
            return Err(Problem::bad_request(
                "`limit` must be at least 1 and `offset` at least 0",
            ));
        }
        Ok((
            offset.min(i64::from(u32::MAX)) as usize,
            limit.min(1000) as usize,
        ))
    }
}

fn json_ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

/// The routes of the REST API and the dashboard.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(dashboard))
        .route("/app.js", get(dashboard_js))
        .route("/app.css", get(dashboard_css))
        .route("/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/kpis", get(kpis))
        .route("/kpis/history", get(kpi_history))
        .route("/deviations", get(deviations))
        .route("/deviations/{id}", get(deviation))
        .route("/detect-deviation", post(detect_deviation))
        .route("/trigger-agent", post(trigger_agent))
        .route("/agent-response/{id}", get(case))
        .route("/cases", get(cases))
        .route("/cases/{id}", get(case))
        .route("/cases/{id}/messages", post(case_message))
        .route("/orders", get(orders))
        .route("/orders/{id}", get(order))
        .route("/kb/search", get(kb_search))
        .route("/kb/documents", post(kb_add))
        .route(
            "/settings/thresholds",
            get(thresholds_get).put(thresholds_put),
        )
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../../web/index.html"))
}

async fn dashboard_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../web/app.js"),
    )
}

async fn dashboard_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../web/app.css"),
    )
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics::global().render(&app.live.counters, wall_clock_ms()),
    )
}

async fn health(State(app): State<Arc<AppState>>) -> ApiResult {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &app.live.counters;
    let now = wall_clock_ms();
    let watermark = app.live.watermark_ms();
    let (orders, series, deviations) = app.live.sizes();
    let agents = match &app.agents {
        None => json!({"state": "disabled"}),
        Some(desk) => {
            let store = desk.store.clone();
            let counts = run_on_agents(desk, async move { store.status_counts().await })
                .await
                .ok();
            json!({
                "state": "running",
                "backend": desk.backend,
                "database": desk.database,
                "cases_by_status": counts,
            })
        }
    };
    let broker = match &app.consumer_lag {
        None => json!({"state": "not_used"}),
        Some(lag) => json!({"state": "consuming", "consumer_lag": lag()}),
    };
    let kb_fallback = app.kb.embedder_is_fallback();
    let job_state = if app.live.is_finished() {
        "finished"
    } else {
        "running"
    };
    let (kpi_clients, deviation_clients) = super::ws::client_counts();
    json_ok(json!({
        "status": if kb_fallback { "degraded" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": (now - app.live.started_wall) / 1000,
        "components": {
            "dataflow": {
                "state": job_state,
                "source": app.source,
                "workers": app.workers,
                "watermark_ms": watermark,
                "watermark_lag_ms": watermark.map(|w| now - w),
                "events_received": c.received.load(Relaxed),
                "events_accepted": c.accepted.load(Relaxed),
                "dead_lettered": c.dead_lettered.load(Relaxed),
                "late": c.late.load(Relaxed),
                "duplicates": c.duplicates.load(Relaxed),
                "deviations": c.deviations.load(Relaxed),
                "orders_in_view": orders,
                "kpi_series": series,
                "deviations_in_view": deviations,
            },
            "broker": broker,
            "agents": agents,
            "kb": {
                "embedder": app.kb.embedder_identity(),
                "fallback": kb_fallback,
                "content_hash": app.kb.content_hash(),
                "documents": app.kb.document_ids().len(),
            },
            "websocket": {"kpi_clients": kpi_clients, "deviation_clients": deviation_clients},
        }
    }))
}

fn kpi_filter(p: &Params) -> KpiFilter {
    KpiFilter::new(p.list("kpi"), p.list("dims"))
}

async fn kpis(State(app): State<Arc<AppState>>, p: Params) -> ApiResult {
    let window = match p.get("window") {
        None | Some("latest") => None,
        Some(w) => Some(w.parse::<i64>().map_err(|_| {
            Problem::bad_request(format!(
                "`window`: `{w}` is neither `latest` nor a window start in epoch ms"
            ))
        })?),
    };
    let items = app.live.current_kpis(&kpi_filter(&p), window);
    json_ok(json!({"watermark_ms": app.live.watermark_ms(), "items": items}))
}

/// `region=West,ship_mode=First Class` -> a dimension map; empty for the global series.
fn parse_dims(s: Option<&str>) -> Result<BTreeMap<String, String>, Problem> {
    let mut dims = BTreeMap::new();
    for part in s.unwrap_or("").split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| Problem::bad_request(format!("`dims`: `{part}` is not name=value")))?;
        dims.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(dims)
}

async fn kpi_history(State(app): State<Arc<AppState>>, p: Params) -> ApiResult {
    let kpi = p
        .get("kpi")
        .ok_or_else(|| Problem::bad_request("`kpi` is required"))?;
    let dims = parse_dims(p.get("dims"))?;
    let points = app.live.kpi_history(kpi, &dims).ok_or_else(|| {
        Problem::not_found(format!("no series of `{kpi}` with dims {dims:?} (yet)"))
    })?;
    json_ok(json!({"kpi": kpi, "dims": dims, "points": points}))
}

async fn deviations(State(app): State<Arc<AppState>>, p: Params) -> ApiResult {
    let (offset, limit) = p.page()?;
    let filter = DeviationFilter {
        severities: p.list("severity"),
        types: p.list("type"),
        order_id: p.get("order_id").map(String::from),
    };
    let (total, items) = app.live.deviations(&filter, offset, limit);
    json_ok(json!({"total": total, "items": items}))
}

async fn deviation(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let d = app
        .live
        .deviation(&id)
        .ok_or_else(|| Problem::not_found(format!("no deviation `{id}` in the live view")))?;
    let case = match &app.agents {
        Some(desk) => {
            let store = desk.store.clone();
            let case_id = id.clone();
            run_on_agents(desk, async move { store.status(&case_id).await }).await?
        }
        None => None,
    };
    let mut v = serde_json::to_value(&d).map_err(|e| Problem::internal(&e.into()))?;
    v["case_status"] = json!(case);
    json_ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectRequest {
    events: Vec<Value>,
    /// Evaluate as of this event time (epoch ms); absent: as if no further event arrives.
    at: Option<i64>,
}

/// Most events one detect request may carry.
const MAX_DETECT_EVENTS: usize = 1000;

async fn detect_deviation(
    State(app): State<Arc<AppState>>,
    JsonBody(req): JsonBody<DetectRequest>,
) -> ApiResult {
    if req.events.len() > MAX_DETECT_EVENTS {
        return Err(Problem::unprocessable(format!(
            "{} events; at most {MAX_DETECT_EVENTS} per request",
            req.events.len()
        )));
    }
    let spec = app.spec.current();
    let clock = TickClock {
        tick_ms: spec.time.tick.ms(),
    };
    let mut state = OrderState::new(spec);
    let mut rejected = Vec::new();
    let mut accepted = 0;
    for (index, raw) in req.events.iter().enumerate() {
        let bytes = serde_json::to_vec(raw).map_err(|e| Problem::internal(&e.into()))?;
        match crate::model::decode::decode_event(&bytes) {
            Ok(e) => {
                state.stash(e);
                accepted += 1;
            }
            Err(e) => rejected.push(json!({"index": index, "reason": e.to_string()})),
        }
    }
    let mut out = OrderOutputs::default();
    state.advance(req.at.map(|a| clock.tick_of(a) + 1), &mut out);
    json_ok(json!({
        "accepted": accepted,
        "rejected": rejected,
        "deviations": out.deviations,
    }))
}

/// Runs `fut` on the agent stage's runtime (the case store's connections live there).
async fn run_on_agents<T, F>(desk: &AgentDesk, fut: F) -> Result<T, Problem>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    desk.runtime
        .spawn(fut)
        .await
        .map_err(|e| Problem::internal(&anyhow::anyhow!("agent task failed: {e}")))?
        .map_err(|e| Problem::internal(&e))
}

fn desk(app: &AppState) -> Result<&AgentDesk, Problem> {
    app.agents.as_ref().ok_or_else(|| {
        Problem::unavailable(
            "the agents are off in this job (agents.enabled: false or --no-agents)",
        )
    })
}

/// A case with its conversation, runs and actions; `None` when there is no such case.
async fn case_json(desk: &AgentDesk, case_id: String) -> Result<Option<Value>, Problem> {
    let store = desk.store.clone();
    run_on_agents(desk, async move {
        let Some((deviation, status)) = store.case(&case_id).await? else {
            return Ok(None);
        };
        let messages = store.messages(&case_id).await?;
        let runs = store.runs(&case_id).await?;
        let actions = store.action_records(&case_id).await?;
        Ok(Some(json!({
            "case_id": case_id,
            "status": status,
            "deviation": deviation,
            "messages": messages,
            "runs": runs,
            "actions": actions,
        })))
    })
    .await
}

async fn case(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let desk = desk(&app)?;
    match case_json(desk, id.clone()).await? {
        Some(v) => json_ok(v),
        None => Err(Problem::not_found(format!("no case `{id}`"))),
    }
}

async fn cases(State(app): State<Arc<AppState>>, p: Params) -> ApiResult {
    let desk = desk(&app)?;
    let (_, limit) = p.page()?;
    let order_id = p.get("order_id").map(String::from);
    let store = desk.store.clone();
    let items = run_on_agents(desk, async move {
        store.recent_cases(limit as i64, order_id.as_deref()).await
    })
    .await?;
    json_ok(json!({"items": items}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerRequest {
    deviation_id: Option<String>,
    order_id: Option<String>,
    /// Passed to the agent as the operator's message.
    note: Option<String>,
}

/// Longest message accepted into a conversation.
const MAX_MESSAGE_CHARS: usize = 4000;

async fn trigger_agent(
    State(app): State<Arc<AppState>>,
    JsonBody(req): JsonBody<TriggerRequest>,
) -> ApiResult {
    let desk = desk(&app)?;
    let deviation = match (&req.deviation_id, &req.order_id) {
        (Some(id), _) => match app.live.deviation(id) {
            Some(d) => d,
            None => {
                let store = desk.store.clone();
                let case_id = id.clone();
                run_on_agents(desk, async move { store.case(&case_id).await })
                    .await?
                    .map(|(d, _)| d)
                    .ok_or_else(|| Problem::not_found(format!("no deviation `{id}`")))?
            }
        },
        (None, Some(order)) => app.live.newest_deviation_of(order).ok_or_else(|| {
            Problem::not_found(format!(
                "order `{order}` has no deviation for an agent to work on"
            ))
        })?,
        (None, None) => {
            return Err(Problem::unprocessable(
                "name a `deviation_id` or an `order_id`",
            ))
        }
    };
    let note = req
        .note
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "Operator asked the agent to look at this case again.".into());
    if note.chars().count() > MAX_MESSAGE_CHARS {
        return Err(Problem::unprocessable(format!(
            "`note` is longer than {MAX_MESSAGE_CHARS} characters"
        )));
    }
    let case_id = deviation.id.clone();
    let store = desk.store.clone();
    let id = case_id.clone();
    let existing = run_on_agents(desk, async move { store.status(&id).await }).await?;
    if existing.is_some() {
        let cases = desk.cases.clone();
        let id = case_id.clone();
        let status = run_on_agents(desk, async move {
            cases.follow_up(&id, "operator", &note).await
        })
        .await?;
        return Ok((
            StatusCode::OK,
            Json(json!({"case_id": case_id, "status": status})),
        )
            .into_response());
    }
    desk.deviations
        .send(deviation)
        .map_err(|_| Problem::unavailable("the agent stage is shutting down"))?;
    // The stage usually finishes a case within milliseconds (offline) or seconds (a model):
    // wait a little so the answer can say how it ended.
    let mut status = "queued".to_string();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let store = desk.store.clone();
        let id = case_id.clone();
        if let Some(s) = run_on_agents(desk, async move { store.status(&id).await }).await? {
            status = s;
            if status != "queued" {
                break;
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"case_id": case_id, "status": status})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    role: String,
    body: String,
}

async fn case_message(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<MessageRequest>,
) -> ApiResult {
    let desk = desk(&app)?;
    if !matches!(req.role.as_str(), "operator" | "customer") {
        return Err(Problem::unprocessable(format!(
            "`role` `{}`: use operator or customer",
            req.role
        )));
    }
    let body = req.body.trim().to_string();
    if body.is_empty() || body.chars().count() > MAX_MESSAGE_CHARS {
        return Err(Problem::unprocessable(format!(
            "`body` must have 1 to {MAX_MESSAGE_CHARS} characters"
        )));
    }
    let store = desk.store.clone();
    let case_id = id.clone();
    if run_on_agents(desk, async move { store.status(&case_id).await })
        .await?
        .is_none()
    {
        return Err(Problem::not_found(format!("no case `{id}`")));
    }
    let cases = desk.cases.clone();
    let case_id = id.clone();
    let role = req.role.clone();
    run_on_agents(desk, async move {
        cases.follow_up(&case_id, &role, &body).await
    })
    .await?;
    match case_json(desk, id.clone()).await? {
        Some(v) => json_ok(v),
        None => Err(Problem::not_found(format!("no case `{id}`"))),
    }
}

async fn orders(State(app): State<Arc<AppState>>, p: Params) -> ApiResult {
    let (offset, limit) = p.page()?;
    let min_risk = p.float("min_risk")?;
    let q = OrderQuery {
        status: p.get("status").map(String::from),
        region: p.get("region").map(String::from),
        ship_mode: p.get("ship_mode").map(String::from),
        min_risk,
        from: p.int("from")?,
        to: p.int("to")?,
        q: p.get("q").map(String::from),
    };
    let (total, items) = app.live.orders(&q, offset, limit);
    json_ok(json!({"total": total, "items": items}))
}

async fn order(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let detail = app.live.order(&id).ok_or_else(|| {
        Problem::not_found(format!(
            "no order `{id}` in the live view (it keeps the most recently active orders)"
        ))
    })?;
    let cases = match &app.agents {
        Some(desk) => {
            let store = desk.store.clone();
            let order_id = id.clone();
            run_on_agents(desk, async move {
                store.recent_cases(50, Some(&order_id)).await
            })
            .await?
        }
        None => Vec::new(),
    };
    let mut v = serde_json::to_value(&detail).map_err(|e| Problem::internal(&e.into()))?;
    v["cases"] = json!(cases);
    json_ok(v)
}

async fn kb_search(State(app): State<Arc<AppState>>, p: Params) -> ApiResult {
    let q = p
        .get("q")
        .ok_or_else(|| Problem::bad_request("`q` is required"))?
        .to_string();
    if q.chars().count() > 1000 {
        return Err(Problem::bad_request("`q` is longer than 1000 characters"));
    }
    let k = p.int("k")?.unwrap_or(5);
    if !(1..=50).contains(&k) {
        return Err(Problem::bad_request("`k` must be between 1 and 50"));
    }
    let mode = match p.get("mode").unwrap_or("hybrid") {
        "hybrid" => Mode::Hybrid,
        "dense" => Mode::Dense,
        "bm25" => Mode::Bm25,
        other => {
            return Err(Problem::bad_request(format!(
                "`mode` `{other}`: use hybrid, dense or bm25"
            )))
        }
    };
    let filters = Filters {
        policy_type: p.get("type").map(String::from),
        jurisdiction: p.get("jurisdiction").map(String::from),
    };
    let kb = app.kb.clone();
    let hits = tokio::task::spawn_blocking(move || kb.search(&q, k as usize, &filters, mode))
        .await
        .map_err(|e| Problem::internal(&anyhow::anyhow!("search task failed: {e}")))?
        .map_err(|e| Problem::internal(&e))?;
    json_ok(json!({"embedder": app.kb.embedder_identity(), "items": hits}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddDocument {
    /// File name the document is known by, e.g. `holiday-returns.md`.
    name: String,
    /// Markdown with front matter.
    text: String,
}

async fn kb_add(
    State(app): State<Arc<AppState>>,
    JsonBody(req): JsonBody<AddDocument>,
) -> ApiResult {
    let name = req.name.trim().to_string();
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Problem::unprocessable(
            "`name` must be 1-200 characters of letters, digits, `-`, `_` and `.`",
        ));
    }
    let kb = app.kb.clone();
    let added = tokio::task::spawn_blocking(move || kb.add_document(&req.text, &name))
        .await
        .map_err(|e| Problem::internal(&anyhow::anyhow!("indexing task failed: {e}")))?;
    match added {
        Ok(id) => Ok((
            StatusCode::CREATED,
            Json(json!({"document_id": id, "content_hash": app.kb.content_hash()})),
        )
            .into_response()),
        Err(e) => Err(Problem::unprocessable(format!("{e:#}"))),
    }
}

fn thresholds_json(app: &AppState) -> Value {
    json!({"version": app.spec.version(), "thresholds": app.spec.thresholds()})
}

async fn thresholds_get(State(app): State<Arc<AppState>>) -> ApiResult {
    json_ok(thresholds_json(&app))
}

async fn thresholds_put(
    State(app): State<Arc<AppState>>,
    JsonBody(changes): JsonBody<BTreeMap<String, ThresholdChange>>,
) -> ApiResult {
    app.spec.update(&changes).map_err(Problem::unprocessable)?;
    tracing::info!(kpis = ?changes.keys().collect::<Vec<_>>(), "thresholds changed");
    json_ok(thresholds_json(&app))
}
