//! The HTTP server of `run`: REST API ([`api`]), WebSockets ([`ws`]), Prometheus metrics
//! ([`metrics`]), the OpenAPI document ([`openapi`]) and the dashboard (`web/`), on axum.
//!
//! In: the [`live::LiveView`] the job's collector feeds, the [`LiveSpec`] whose thresholds the
//! running dataflow reads, the knowledge base, and the agent stage's [`AgentDesk`] when agents
//! run. Out: HTTP answers and WebSocket streams. The server has its own tokio runtime on two
//! threads, so neither the dataflow's workers nor the agent stage wait for it.
//!
//! Errors are `application/problem+json`; request bodies are limited to `serve.max_body_bytes`;
//! with an API key, mutating endpoints and WebSockets (and, with `protect_reads`, every GET but
//! `/health` and `/metrics`) need it.

pub mod api;
pub mod bench;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::agents::runner::AgentDesk;
use crate::config::app::ServeConfig;
use crate::dataflow::live_spec::LiveSpec;
use crate::rag::KnowledgeBase;
use live::LiveView;

/// Reads the Kafka consumer lag (messages behind the end offsets), when consuming from Kafka.
pub type LagProbe = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Everything the handlers use.
pub struct AppState {
    pub live: Arc<LiveView>,
    pub spec: Arc<LiveSpec>,
    pub kb: Arc<KnowledgeBase>,
    pub agents: Option<AgentDesk>,
    pub config: ServeConfig,
    pub api_key: Option<String>,
    pub workers: usize,
    /// What the job reads, e.g. `kafka topic orders.events`.
    pub source: String,
    pub consumer_lag: Option<LagProbe>,
}

/// An error answer: `application/problem+json` (RFC 9457).
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    /// A failure of ours; the detail is logged and shown.
    pub fn internal(e: &anyhow::Error) -> Problem {
        tracing::error!(error = %format!("{e:#}"), "request failed");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// A JSON request body whose rejections (bad JSON, wrong content type, too large) are
/// problem+json too.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// Whether a request needs the API key.
fn needs_key(method: &Method, path: &str, protect_reads: bool) -> bool {
    if path.starts_with("/ws/") || !(method == Method::GET || method == Method::HEAD) {
        return method != Method::OPTIONS;
    }
    protect_reads
        && !matches!(
            path,
            "/health" | "/metrics" | "/" | "/app.js" | "/app.css" | "/openapi.json"
        )
}

fn presented_key(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        return v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|k| k.trim().to_string());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(percent_decode)
    })
}

/// Decodes `%XX` escapes and `+` of a query value.
pub fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn auth_and_count(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let response = match &app.api_key {
        Some(key)
            if needs_key(&method, req.uri().path(), app.config.protect_reads)
                && !presented_key(&req).is_some_and(|k| same_key(&k, key)) =>
        {
            let mut r = Problem::new(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the API key: `Authorization: Bearer KEY` (or `?token=KEY` on WebSocket URLs)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        _ => next.run(req).await,
    };
    metrics::global()
        .http_requests
        .with_label_values(&[method.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn not_found(req: Request<Body>) -> Problem {
    Problem::not_found(format!("no endpoint {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request<Body>) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// The whole application: routes, auth, limits, CORS.
pub fn router(app: Arc<AppState>) -> Result<Router> {
    let mut router = api::routes()
        .merge(ws::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth_and_count,
        ));
    if !app.config.cors_origins.is_empty() {
        let origins = app
            .config
            .cors_origins
            .iter()
            .map(|o| HeaderValue::from_str(o).with_context(|| format!("CORS origin `{o}`")))
            .collect::<Result<Vec<_>>>()?;
        router = router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::PUT])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(Duration::from_secs(600)),
        );
    }
    Ok(router.with_state(app))
}

/// Kernel send buffer of every accepted connection (Linux doubles the value asked for).
const SEND_BUFFER_BYTES: usize = 128 * 1024;

/// The running server.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `app.config.listen` (failing startup if it cannot) and serves on a runtime of
    /// its own until [`Server::stop`].
    pub fn start(app: AppState) -> Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("serve")
            .enable_all()
            .build()
            .context("starting the server runtime")?;
        let listen = app.config.listen.clone();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&listen))
            .with_context(|| format!("serve.listen: cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        // A small kernel send buffer: a WebSocket client that stops reading blocks the server's
        // writes after this much instead of after the autotuned maximum (4 MiB here), so its
        // stall limit starts within seconds. Responses larger than this just take more writes.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER_BYTES) {
                tracing::debug!(error = %e, "could not set the send buffer size");
            }
            let _ = tcp.set_nodelay(true);
        });
        let app = Arc::new(app);
        let router = router(app.clone())?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("serve-main".into())
            .spawn(move || {
                let publisher = app.clone();
                runtime.spawn(async move {
                    // Batches live updates for the WebSocket streams.
                    let mut tick = tokio::time::interval(Duration::from_millis(50));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    loop {
                        tick.tick().await;
                        publisher.live.publish_pending();
                        if let Some(lag) = &publisher.consumer_lag {
                            metrics::global().set_consumer_lag(lag());
                        }
                    }
                });
                let served = runtime.block_on(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = rx.await;
                        })
                        .await
                });
                if let Err(e) = served {
                    tracing::error!(error = %e, "the server stopped");
                }
                // WebSocket tasks and anything still running end here.
                runtime.shutdown_timeout(Duration::from_secs(2));
                drop(app);
            })
            .context("starting the server thread")?;
        Ok(Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops accepting, ends open connections and releases the agent desk.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_needed_for_writes_and_websockets_and_reads_when_protected() {
        assert!(needs_key(&Method::POST, "/trigger-agent", false));
        assert!(needs_key(&Method::PUT, "/settings/thresholds", false));
        assert!(needs_key(&Method::GET, "/ws/kpi", false));
        assert!(!needs_key(&Method::GET, "/kpis", false));
        assert!(needs_key(&Method::GET, "/kpis", true));
        assert!(!needs_key(&Method::GET, "/health", true));
        assert!(!needs_key(&Method::GET, "/metrics", true));
        assert!(!needs_key(&Method::OPTIONS, "/trigger-agent", false));
        assert!(same_key("abc", "abc") && !same_key("abc", "abd") && !same_key("abc", "ab"));
        assert_eq!(percent_decode("a%20b+c%2Fd%"), "a b c/d%");
    }
}
