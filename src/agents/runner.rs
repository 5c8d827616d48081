//! The agent stage as part of a job: opens what the stage needs from the settings (routing
//! table, knowledge base, case store, backend), runs it on its own tokio runtime, feeds it the
//! job's deviations and writes the published actions.
//!
//! In: deviations on the crossbeam channel returned by [`AgentRunner::start`] (the job's
//! collector sends every deviation there without blocking). Out: `actions.jsonl` in the output
//! directory, the actions topic when Kafka output is on, the case store, and an
//! [`AgentSummary`] at the end.
//!
//! Startup problems (a bad routing file, an unusable database) stop the job before it starts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::backend::OpenAiBackend;
use super::orchestrator::{start, ActionMessage, Backend, CaseDesk, StageConfig, StageHandle};
use super::store::CaseStore;
use super::RoutingTable;
use crate::config::app::AppConfig;
use crate::model::records::Deviation;
use crate::rag::KnowledgeBase;
use crate::serve::live::LiveView;
use crate::sinks::kafka::{KafkaSink, KafkaSinkConfig};

/// What the stage did in this job.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentSummary {
    pub backend: String,
    pub database: String,
    /// Deviations handed to the stage.
    pub offered: u64,
    /// Cases in the store by status (all cases, also from earlier runs).
    pub cases_by_status: BTreeMap<String, i64>,
    pub runs: i64,
    pub actions: i64,
    /// Actions written to actions.jsonl / the actions topic in this job.
    pub actions_published: u64,
}

/// The running stage of a job.
pub struct AgentRunner {
    feeder: std::thread::JoinHandle<Result<AgentSummary>>,
    writer: std::thread::JoinHandle<Result<u64>>,
    desk: AgentDesk,
    /// Printed at start: which backend, which database.
    pub backend: String,
    pub database: String,
}

/// What the server needs to work with the stage while it runs: run async work on the stage's
/// runtime, hand over deviations, continue cases, read the case store. Every clone must be
/// dropped before [`AgentRunner::finish`], which waits for the stage's input to close.
#[derive(Clone)]
pub struct AgentDesk {
    pub runtime: tokio::runtime::Handle,
    pub cases: CaseDesk,
    pub store: Arc<CaseStore>,
    /// The stage's input (the same channel the job's collector sends to).
    pub deviations: crossbeam_channel::Sender<Deviation>,
    pub backend: String,
    pub database: String,
}

impl AgentRunner {
    /// Opens everything and starts the stage. The returned sender takes the job's deviations;
    /// the stage finishes its work once every clone of it is dropped.
    pub fn start(
        app: &AppConfig,
        kb: Arc<KnowledgeBase>,
        out_dir: Option<PathBuf>,
        kafka: Option<KafkaSinkConfig>,
        live: Option<Arc<LiveView>>,
    ) -> Result<(AgentRunner, crossbeam_channel::Sender<Deviation>)> {
        let cfg = &app.agents;
        // A checkpointed job resumes: its action log continues (the case store keeps every
        // action from being published twice).
        let append = app.checkpoint.enabled;
        let table = Arc::new(RoutingTable::load(&cfg.routing)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("agents")
            .enable_all()
            .build()
            .context("starting the agent runtime")?;
        let store = Arc::new(runtime.block_on(CaseStore::connect(&cfg.database))?);
        if kb.embedder_is_fallback() {
            tracing::warn!("agents retrieve policy with the hashed fallback embedder");
        }
        let backend = if cfg.uses_model(&app.openai) {
            Backend::OpenAi(Box::new(OpenAiBackend::new(
                &app.openai,
                &cfg.model,
                cfg.structured,
                cfg.max_attempts,
            )?))
        } else {
            Backend::Offline
        };
        let backend_label = match &backend {
            Backend::Offline => super::backend::OfflineBackend::LABEL.to_string(),
            Backend::OpenAi(b) => b.label(),
        };
        let (actions_tx, actions_rx) = crossbeam_channel::unbounded::<ActionMessage>();
        let stage_cfg = StageConfig {
            queue_capacity: cfg.queue_capacity,
            concurrency: cfg.concurrency,
            chunks_per_type: cfg.chunks_per_type,
        };
        let handle = runtime.block_on(start(
            stage_cfg,
            table,
            kb,
            store.clone(),
            backend,
            actions_tx,
        ))?;
        let writer = std::thread::Builder::new()
            .name("agent-actions".into())
            .spawn(move || write_actions(actions_rx, out_dir, kafka, live, append))
            .context("starting the action writer")?;
        let (tx, rx) = crossbeam_channel::unbounded::<Deviation>();
        let label = backend_label.clone();
        let database = super::store::redacted(&cfg.database);
        let db = database.clone();
        let desk = AgentDesk {
            runtime: runtime.handle().clone(),
            cases: handle.desk(),
            store: store.clone(),
            deviations: tx.clone(),
            backend: backend_label.clone(),
            database: database.clone(),
        };
        let feeder = std::thread::Builder::new()
            .name("agent-feeder".into())
            .spawn(move || feed(runtime, handle, rx, store, label, db))
            .context("starting the agent feeder")?;
        Ok((
            AgentRunner {
                feeder,
                writer,
                desk,
                backend: backend_label,
                database,
            },
            tx,
        ))
    }

    /// For the server; see [`AgentDesk`].
    pub fn desk(&self) -> AgentDesk {
        self.desk.clone()
    }

    /// Waits until every deviation handed over is worked on and every action written.
    pub fn finish(self) -> Result<AgentSummary> {
        drop(self.desk);
        let mut summary = self
            .feeder
            .join()
            .map_err(|_| anyhow::anyhow!("the agent feeder panicked"))??;
        summary.actions_published = self
            .writer
            .join()
            .map_err(|_| anyhow::anyhow!("the action writer panicked"))??;
        Ok(summary)
    }
}

/// Offers each deviation to the stage; while the stage's queue is full the deviation waits
/// here (the job's collector never waits).
fn feed(
    runtime: tokio::runtime::Runtime,
    handle: StageHandle,
    rx: crossbeam_channel::Receiver<Deviation>,
    store: Arc<CaseStore>,
    backend: String,
    database: String,
) -> Result<AgentSummary> {
    let mut offered = 0u64;
    for d in rx {
        let mut pending = d;
        let mut pause = Duration::from_micros(200);
        while let Some(back) = handle.offer(pending) {
            pending = back;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        offered += 1;
    }
    runtime.block_on(handle.finish());
    let (cases_by_status, runs, actions) = runtime.block_on(async {
        let by_status = store.status_counts().await?;
        let (_, runs, actions) = store.counts().await?;
        anyhow::Ok((by_status, runs, actions))
    })?;
    Ok(AgentSummary {
        backend,
        database,
        offered,
        cases_by_status,
        runs,
        actions,
        actions_published: 0,
    })
}

/// Writes actions to `actions.jsonl` and the actions topic until the stage is done.
fn write_actions(
    rx: crossbeam_channel::Receiver<ActionMessage>,
    out_dir: Option<PathBuf>,
    kafka: Option<KafkaSinkConfig>,
    live: Option<Arc<LiveView>>,
    append: bool,
) -> Result<u64> {
    let mut file = match &out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let path = dir.join("actions.jsonl");
            Some(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ))
        }
        None => None,
    };
    let mut producer = kafka.map(KafkaSink::new).transpose()?;
    let mut written = 0u64;
    loop {
        let a = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(a) => a,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Some(p) = producer.as_mut() {
                    p.service()?;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(f) = file.as_mut() {
            serde_json::to_writer(&mut *f, &a)?;
            f.write_all(b"\n")?;
            if rx.is_empty() {
                f.flush()?;
            }
        }
        if let Some(p) = producer.as_mut() {
            p.action(&a)?;
        }
        if let Some(v) = &live {
            v.on_action(&a);
        }
        written += 1;
    }
    if let Some(mut f) = file {
        f.flush()?;
    }
    if let Some(mut p) = producer {
        p.finish()?;
    }
    Ok(written)
}
