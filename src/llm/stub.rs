//! A scripted OpenAI-compatible server on loopback, for tests and benchmarks: no real model is
//! reachable from CI, so this stands in for one over real HTTP (axum on its own tokio runtime
//! thread) and can be told to misbehave.
//!
//! In: a script of behaviours consumed one per request (then [`Behaviour::Normal`]), a fixed
//! latency. Out: `POST /v1/embeddings` answers with deterministic hashed n-gram vectors
//! (meaningful enough to retrieve with); `POST /v1/chat/completions` answers with the scripted
//! content or tool call (by default the chat content set with [`StubServer::set_chat_content`]);
//! every request is recorded (path, authorization, body) for assertions.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::rag::embed::{Embedder, HashedNgrams};

/// What the stub does with one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// A well-formed answer.
    Normal,
    /// 429 with an OpenAI rate-limit error body and `Retry-After: <seconds>`.
    RateLimited { retry_after_secs: u64 },
    /// 500 with an OpenAI server error body.
    ServerError,
    /// Never answers (until the server stops).
    Hang,
    /// 200 with a body that is not the expected JSON.
    Malformed,
    /// A well-formed chat completion whose message content is this text.
    ChatContent(String),
    /// A well-formed chat completion calling `submit_resolution` with these arguments.
    ToolCall(String),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    pub at: Instant,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Behaviour>>,
    chat_content: Mutex<String>,
    requests: Mutex<Vec<RecordedRequest>>,
    latency: Mutex<Duration>,
}

impl Shared {
    fn record(&self, path: &str, headers: &HeaderMap, body: &Value) -> Behaviour {
        if let Ok(mut r) = self.requests.lock() {
            r.push(RecordedRequest {
                path: path.into(),
                at: Instant::now(),
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: body.clone(),
            });
        }
        self.script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or(Behaviour::Normal)
    }
}

/// The running stub; stops when dropped.
pub struct StubServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StubServer {
    /// Starts on `addr` (`127.0.0.1:0` picks a free port).
    pub fn start(addr: &str) -> Result<StubServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("llm-stub")
            .build()?;
        // Bound with std so that starting works from inside another runtime too.
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the LLM stub to {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("llm-stub".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "LLM stub cannot listen");
                            return;
                        }
                    };
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r { tracing::error!(error = %e, "LLM stub stopped"); }
                        }
                        _ = stopped => {}
                    }
                });
                // Hung handlers are abandoned, not awaited.
                rt.shutdown_background();
            })?;
        Ok(StubServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The API base to configure clients with (`http://127.0.0.1:<port>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next requests get these behaviours, in order; later ones are answered normally.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        if let Ok(mut s) = self.shared.script.lock() {
            s.extend(behaviours);
        }
    }

    /// What a normal chat completion answers (the message content).
    pub fn set_chat_content(&self, content: impl Into<String>) {
        if let Ok(mut c) = self.shared.chat_content.lock() {
            *c = content.into();
        }
    }

    /// Delay before every answer.
    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut l) = self.shared.latency.lock() {
            *l = latency;
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

/// Applies the latency and any misbehaviour; `None` means answer normally.
async fn misbehave(shared: &Shared, behaviour: Behaviour) -> Option<Response> {
    let latency = shared.latency.lock().map(|l| *l).unwrap_or_default();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match behaviour {
        Behaviour::Normal => None,
        Behaviour::RateLimited { retry_after_secs } => {
            let mut r = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Rate limit reached (stub)",
            );
            r.headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().ok()?);
            Some(r)
        }
        Behaviour::ServerError => Some(openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error (stub)",
        )),
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            None
        }
        Behaviour::Malformed => {
            Some((StatusCode::OK, "{\"data\": [ this is not json").into_response())
        }
        Behaviour::ChatContent(_) | Behaviour::ToolCall(_) => None,
    }
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let behaviour = shared.record("/v1/embeddings", &headers, &body);
    if let Some(r) = misbehave(&shared, behaviour).await {
        return r;
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if inputs.is_empty() || inputs.iter().any(|s| s.is_empty()) {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "input must be a non-empty string or array of non-empty strings",
        );
    }
    let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let Ok(mut vectors) = HashedNgrams.embed(&texts) else {
        return openai_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "embed");
    };
    if let Some(d) = body["dimensions"].as_u64() {
        for v in &mut vectors {
            v.truncate(d as usize);
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= n);
        }
    }
    let tokens: usize = inputs.iter().map(|s| s.split_whitespace().count()).sum();
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let behaviour = shared.record("/v1/chat/completions", &headers, &body);
    if let Some(r) = misbehave(&shared, behaviour.clone()).await {
        return r;
    }
    let prompt_tokens: usize = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| {
                    x["content"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0);
    let default_content = shared
        .chat_content
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let (message, finish) = match behaviour {
        Behaviour::ToolCall(args) => (
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_stub_1", "type": "function",
                "function": {"name": "submit_resolution", "arguments": args}
            }]}),
            "tool_calls",
        ),
        Behaviour::ChatContent(c) => (json!({"role": "assistant", "content": c}), "stop"),
        _ => (
            json!({"role": "assistant", "content": default_content}),
            "stop",
        ),
    };
    let completion_tokens = message.to_string().split_whitespace().count();
    Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
    .into_response()
}
