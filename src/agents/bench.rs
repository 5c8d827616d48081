//! Benchmarks of the agent stage for `fulfillment-ai bench --agents`: deviations resolved per
//! second with the offline backend, and with the OpenAI-compatible stub answering after a fixed
//! latency while the dataflow runs a throughput job on the same machine (its rate compared with
//! the rate it reaches alone).
//!
//! In: the settings (routing, knowledge base, stage sizes) and real deviations (from the job
//! over the Superstore replay and generated input). Out: [`StageRate`] results with the CPU
//! time each thread group used (from `/proc/self/task`); every run uses a fresh case store in
//! a temporary directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::backend::{OpenAiBackend, StructuredOutput};
use super::orchestrator::{start, ActionMessage, Backend, StageConfig};
use super::store::CaseStore;
use super::RoutingTable;
use crate::config::app::AppConfig;
use crate::llm::stub::StubServer;
use crate::llm::OpenAiSettings;
use crate::model::records::Deviation;
use crate::rag::KnowledgeBase;

/// One measured run of the stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageRate {
    pub backend: String,
    pub concurrency: usize,
    pub deviations: usize,
    pub seconds: f64,
    pub per_sec: f64,
    pub cases_by_status: BTreeMap<String, i64>,
    pub actions: usize,
    /// CPU seconds used during the run, by thread group (stub server, agent stage, case
    /// store, everything else: the dataflow when it runs alongside).
    pub cpu_seconds: BTreeMap<String, f64>,
}

/// Scheduler ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds used so far by this process's live threads, grouped by thread name.
fn cpu_seconds_by_group() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        // After the name: state (field 3), ..., utime (14), stime (15).
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let group = if name.starts_with("llm-stub") {
            "stub server"
        } else if name.starts_with("agents") {
            "agent stage"
        } else if name.starts_with("sqlx") {
            "case store (sqlx)"
        } else {
            "other (dataflow, main)"
        };
        *out.entry(group.to_string()).or_insert(0.0) += (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
    }
    out
}

/// The model's answer in the stub run: a valid resolution, checked like any other.
const STUB_RESOLUTION: &str = r#"{"actions":[{"tool":"create_ticket","params":{"priority":"P3"}}],"customer_message":null,"rationale":"Benchmark answer: open a ticket for follow-up.","citations":["escalation/handoff-procedure"],"confidence":0.6}"#;

/// Runs the stage over `deviations` with `backend` and a fresh store; the clock runs from the
/// first offer until every case is recorded and its actions published.
pub fn stage_rate(
    app: &AppConfig,
    kb: Arc<KnowledgeBase>,
    deviations: &[Deviation],
    backend: Backend,
    label: &str,
    concurrency: usize,
) -> Result<StageRate> {
    let dir = tempfile_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agents")
        .enable_all()
        .build()?;
    let table = Arc::new(RoutingTable::load(&app.agents.routing)?);
    let store = Arc::new(runtime.block_on(CaseStore::connect(
        &dir.join("cases.sqlite").display().to_string(),
    ))?);
    let (tx, rx) = crossbeam_channel::unbounded::<ActionMessage>();
    let cfg = StageConfig {
        queue_capacity: app.agents.queue_capacity,
        concurrency,
        chunks_per_type: app.agents.chunks_per_type,
    };
    let cpu_before = cpu_seconds_by_group();
    let started = Instant::now();
    let by_status = runtime.block_on(async {
        let handle = start(cfg, table, kb, store.clone(), backend, tx).await?;
        for d in deviations {
            let mut pending = d.clone();
            while let Some(back) = handle.offer(pending) {
                pending = back;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        handle.finish().await;
        store.status_counts().await
    })?;
    let seconds = started.elapsed().as_secs_f64();
    // Measured while the stage's threads still live (threads that ended are not counted).
    let mut cpu_seconds = cpu_seconds_by_group();
    for (group, used) in cpu_seconds.iter_mut() {
        *used -= cpu_before.get(group).copied().unwrap_or(0.0);
    }
    let actions = rx.try_iter().count();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(StageRate {
        backend: label.into(),
        concurrency,
        deviations: deviations.len(),
        seconds,
        per_sec: deviations.len() as f64 / seconds,
        cases_by_status: by_status,
        actions,
        cpu_seconds,
    })
}

/// The stub-backed run: an OpenAI-compatible stub on loopback answering every chat call after
/// `latency`.
pub fn stub_rate(
    app: &AppConfig,
    kb: Arc<KnowledgeBase>,
    deviations: &[Deviation],
    latency: Duration,
    concurrency: usize,
) -> Result<StageRate> {
    let stub = StubServer::start("127.0.0.1:0")?;
    stub.set_latency(latency);
    stub.set_chat_content(STUB_RESOLUTION);
    let settings = OpenAiSettings {
        base_url: stub.base_url(),
        api_key_env: "FULFILLMENT_BENCH_NO_KEY".into(),
        ..app.openai.clone()
    };
    let backend = OpenAiBackend::new(&settings, "stub-chat", StructuredOutput::JsonSchema, 3)?;
    let label = format!("{} via stub ({} ms)", backend.label(), latency.as_millis());
    stage_rate(
        app,
        kb,
        deviations,
        Backend::OpenAi(Box::new(backend)),
        &label,
        concurrency,
    )
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "fulfillment-agent-bench-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand::random::<u64>() as u128
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
