//! The orchestrator: takes deviations from the dataflow side through a bounded queue that never
//! blocks the caller, persists each as a case before acknowledging it, routes it, retrieves
//! policy for the chosen agent, asks the backend, checks the guardrails, records the run and
//! publishes the actions.
//!
//! In: deviations ([`StageHandle::offer`] gives the deviation back when the queue is full, so
//! the caller keeps it and offers it again). Out: case and run records in the
//! [`CaseStore`], and [`ActionMessage`]s on a channel for the sinks (actions topic, JSONL).
//!
//! Failures never lose a case: a tripped guardrail, a backend that keeps failing, or too many
//! hand-offs end in escalation (a P1/P2 ticket and a request for human approval) with the
//! reason recorded; cases left queued by a crash are worked on at the next start.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::backend::{AgentRequest, BackendReply, OfflineBackend, OpenAiBackend, RetrievedChunk};
use super::policy_math::Computed;
use super::resolution::{check, decide, CaseFacts, Outcome, ProposedAction, Verdict};
use super::routing::{AgentKind, RouteInput, RoutingTable, Tool};
use super::store::{ActionRecord, CaseStatus, CaseStore, FinishedRun, RunRecord};
use crate::config::pipeline::Severity;
use crate::model::records::{Deviation, DeviationType};
use crate::rag::{Filters, KnowledgeBase, Mode};

/// Which backend resolves cases.
pub enum Backend {
    Offline,
    OpenAi(Box<OpenAiBackend>),
}

/// An action carried out or awaiting approval, as published.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionMessage {
    pub case_id: String,
    pub agent: String,
    pub backend: String,
    pub tool: String,
    pub params: serde_json::Value,
    pub status: String,
}

/// Sizes of the stage.
#[derive(Clone, Copy, Debug)]
pub struct StageConfig {
    /// Deviations waiting to be persisted.
    pub queue_capacity: usize,
    /// Cases worked on at once (model calls in flight).
    pub concurrency: usize,
    /// Chunks retrieved per policy type of the agent.
    pub chunks_per_type: usize,
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            queue_capacity: 10_000,
            concurrency: 64,
            chunks_per_type: 2,
        }
    }
}

/// Retrieved chunks by (agent, query), valid for one version of the knowledge base. Each entry
/// is filled once: concurrent cases with the same key wait for the first one's search instead
/// of all embedding the same query.
#[derive(Default)]
struct RetrievalCache {
    kb_version: String,
    hits: HashMap<(AgentKind, String), Arc<tokio::sync::OnceCell<Vec<RetrievedChunk>>>>,
}

/// Entries kept before the cache starts over.
const RETRIEVAL_CACHE_CAPACITY: usize = 4096;

/// Finished runs waiting to be recorded; `done` learns whether the run was recorded.
struct ToRecord {
    finished: FinishedRun,
    done: Option<oneshot::Sender<bool>>,
}

struct Stage {
    table: Arc<RoutingTable>,
    kb: Arc<KnowledgeBase>,
    store: Arc<CaseStore>,
    backend: Backend,
    recorder: mpsc::UnboundedSender<ToRecord>,
    chunks_per_type: usize,
    cache: Mutex<RetrievalCache>,
}

/// The running stage.
pub struct StageHandle {
    tx: mpsc::Sender<Deviation>,
    stage: Arc<Stage>,
    worker: tokio::task::JoinHandle<()>,
    recorder: tokio::task::JoinHandle<()>,
}

impl StageHandle {
    /// Hands a deviation over without waiting. Returns it back (`Some`) when the queue is
    /// full, for the caller to keep and offer again; `None` when the stage took it.
    pub fn offer(&self, d: Deviation) -> Option<Deviation> {
        match self.tx.try_send(d) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d)) => {
                Some(d)
            }
        }
    }

    /// Continues a case with a message from an operator or a customer (see [`CaseDesk`]).
    pub async fn follow_up(&self, case_id: &str, role: &str, body: &str) -> Result<String> {
        self.desk().follow_up(case_id, role, body).await
    }

    /// A handle for working on cases from elsewhere (the server) while the stage runs. Drop
    /// every desk before [`StageHandle::finish`]: the stage finishes once they are gone.
    pub fn desk(&self) -> CaseDesk {
        CaseDesk {
            stage: self.stage.clone(),
        }
    }

    /// Closes the queue and waits until every accepted case has been worked on and recorded.
    pub async fn finish(self) {
        drop(self.tx);
        drop(self.stage);
        let _ = self.worker.await;
        let _ = self.recorder.await;
    }
}

/// Works on single cases at an operator's request.
#[derive(Clone)]
pub struct CaseDesk {
    stage: Arc<Stage>,
}

impl CaseDesk {
    /// Continues a case with a message from an operator or a customer: the message joins the
    /// conversation and the case's agent runs again with the history. Returns the case's new
    /// status.
    pub async fn follow_up(&self, case_id: &str, role: &str, body: &str) -> Result<String> {
        if !matches!(role, "operator" | "customer") {
            anyhow::bail!("role `{role}`: use operator or customer");
        }
        let Some((d, _)) = self.stage.store.case(case_id).await? else {
            anyhow::bail!("no case {case_id}");
        };
        self.stage.store.add_message(case_id, role, body).await?;
        let history: Vec<String> = self
            .stage
            .store
            .messages(case_id)
            .await?
            .into_iter()
            .skip(1) // the deviation itself is in the prompt already
            .map(|m| format!("{}: {}", m.role, m.body))
            .collect();
        let (done, recorded) = oneshot::channel();
        self.stage.work(d, history, Some(done)).await?;
        recorded.await.context("the recorder stopped")?;
        Ok(self.stage.store.status(case_id).await?.unwrap_or_default())
    }
}

/// Records finished runs in batches (one transaction each, so one disk sync for many cases)
/// and publishes the actions of every run that was recorded.
async fn record_batches(
    store: Arc<CaseStore>,
    mut rx: mpsc::UnboundedReceiver<ToRecord>,
    actions: crossbeam_channel::Sender<ActionMessage>,
) {
    let mut batch: Vec<ToRecord> = Vec::new();
    while rx.recv_many(&mut batch, 512).await > 0 {
        // A case worked on again (a follow-up) does not repeat an action it already has: the
        // same tool with the same parameters was carried out (or is awaiting approval).
        for r in batch.iter_mut().filter(|r| r.finished.reopen) {
            if let Ok(existing) = store.action_records(&r.finished.run.case_id).await {
                r.finished.actions.retain(|a| {
                    !existing
                        .iter()
                        .any(|e| e.tool == a.tool && e.params == a.params)
                });
            }
        }
        let runs: Vec<FinishedRun> = batch.iter().map(|r| r.finished.clone()).collect();
        let recorded = match store.finish_runs(&runs).await {
            Ok(r) => r,
            Err(e) => {
                // The cases stay queued and are worked on again at the next start.
                tracing::error!(cases = runs.len(), error = %format!("{e:#}"), "recording runs failed");
                vec![false; runs.len()]
            }
        };
        for (r, ok) in batch.drain(..).zip(recorded) {
            if ok {
                let run = &r.finished.run;
                crate::serve::metrics::global().observe_run(run);
                for a in &r.finished.actions {
                    let _ = actions.send(ActionMessage {
                        case_id: run.case_id.clone(),
                        agent: run.agent.clone(),
                        backend: run.backend.clone(),
                        tool: a.tool.clone(),
                        params: a.params.clone(),
                        status: a.status.clone(),
                    });
                }
            }
            if let Some(done) = r.done {
                let _ = done.send(ok);
            }
        }
    }
}

/// Starts the stage on the current tokio runtime; first works on cases a crash left queued.
pub async fn start(
    cfg: StageConfig,
    table: Arc<RoutingTable>,
    kb: Arc<KnowledgeBase>,
    store: Arc<CaseStore>,
    backend: Backend,
    actions: crossbeam_channel::Sender<ActionMessage>,
) -> Result<StageHandle> {
    let (tx, mut rx) = mpsc::channel::<Deviation>(cfg.queue_capacity.max(1));
    let (recorder_tx, recorder_rx) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_batches(store.clone(), recorder_rx, actions));
    let stage = Arc::new(Stage {
        table,
        kb,
        store,
        backend,
        recorder: recorder_tx,
        chunks_per_type: cfg.chunks_per_type,
        cache: Mutex::new(RetrievalCache::default()),
    });
    let leftover = stage.store.queued().await?;
    if !leftover.is_empty() {
        tracing::info!(cases = leftover.len(), "resuming queued cases");
    }
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let worker_stage = stage.clone();
    let worker = tokio::spawn(async move {
        let stage = worker_stage;
        let mut tasks = tokio::task::JoinSet::new();
        let work = |d: Deviation, tasks: &mut tokio::task::JoinSet<()>, permit| {
            let stage = stage.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let id = d.id.clone();
                if let Err(e) = stage.work(d, Vec::new(), None).await {
                    // The case stays queued and is resumed at the next start.
                    tracing::error!(case = %id, error = %format!("{e:#}"), "case not finished");
                }
            });
        };
        for d in leftover {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            work(d, &mut tasks, permit);
        }
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 512).await > 0 {
            // Persisted before anything else (many in one transaction): from here on a case
            // cannot be lost.
            let accepted = match stage.store.accept_many(&batch).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(deviations = batch.len(), error = %format!("{e:#}"), "case store refused deviations");
                    batch.clear();
                    continue;
                }
            };
            for (d, new) in batch.drain(..).zip(accepted) {
                if !new {
                    continue; // redelivered: already a case
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                work(d, &mut tasks, permit);
                while tasks.try_join_next().is_some() {}
            }
        }
        while tasks.join_next().await.is_some() {}
    });
    Ok(StageHandle {
        tx,
        stage,
        worker,
        recorder,
    })
}

/// The words of a retrieval query that say what kind of case it is: order ids, amounts and
/// other figures vary per case and would only make every query unique.
fn query_words(text: &str, order_id: Option<&str>) -> String {
    text.split_whitespace()
        .filter(|w| order_id.is_none_or(|o| !w.contains(o)))
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The resolution's actions as records; with `pending`, money actions wait for approval.
fn records_of(actions: &[ProposedAction], pending: bool) -> Vec<ActionRecord> {
    actions
        .iter()
        .map(|a| ActionRecord {
            tool: serde_json::to_value(a.tool)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            params: serde_json::Value::Object(a.params.clone()),
            status: if pending && matches!(a.tool, Tool::IssueRefund | Tool::ApplyCredit) {
                "pending_approval".into()
            } else {
                "done".into()
            },
        })
        .collect()
}

/// What the deviation says about the order, in the guardrails' terms.
fn facts_of(d: &Deviation) -> CaseFacts {
    let cents = |k: &str| d.evidence.get(k).map(|v| (v * 100.0).round() as i64);
    CaseFacts {
        order_value: cents("order_value").or_else(|| cents("amount")),
        days_since_delivery: d.evidence.get("days_since_delivery").map(|v| *v as i64),
        days_late: d.evidence.get("days_late").map(|v| *v as i64).or_else(|| {
            d.evidence
                .get("hours_late")
                .map(|h| (*h / 24.0).floor() as i64)
        }),
        lost: d.kind == DeviationType::FulfillmentGap && d.evidence.contains_key("declared_lost"),
        vip: d.context.get("vip").is_some_and(|v| v == "true"),
        ..CaseFacts::default()
    }
}

impl Stage {
    fn computed(&self, agent: AgentKind, facts: &CaseFacts) -> Vec<Computed> {
        let l = &self.table.limits;
        let mut out = Vec::new();
        if agent == AgentKind::Refund {
            if let (Some(days), Some(value)) = (facts.days_since_delivery, facts.order_value) {
                out.extend(l.refund(days, value));
            }
        }
        if let (Some(days), Some(value)) = (facts.days_late, facts.order_value) {
            if days > 0 {
                out.push(l.late_delivery_credit(days, value));
            }
        }
        out
    }

    async fn retrieve(
        &self,
        agent: AgentKind,
        d: &Deviation,
        computed: &[Computed],
    ) -> Vec<RetrievedChunk> {
        let spec = self.table.spec(agent);
        let mut query = format!("{} {}", d.kind.as_str().replace('_', " "), d.summary);
        for c in computed {
            query.push(' ');
            query.push_str(&c.basis);
        }
        let query = query_words(&query, d.order_id.as_deref());
        let kb_version = self.kb.content_hash();
        let cell = {
            let Ok(mut cache) = self.cache.lock() else {
                return Vec::new();
            };
            if cache.kb_version != kb_version || cache.hits.len() >= RETRIEVAL_CACHE_CAPACITY {
                cache.hits.clear();
                cache.kb_version = kb_version;
            }
            cache
                .hits
                .entry((agent, query.clone()))
                .or_default()
                .clone()
        };
        let kb = self.kb.clone();
        let types = spec.policy_types.clone();
        let k = self.chunks_per_type;
        let found = cell
            .get_or_try_init(|| async move {
                // faiss and the model are CPU work: off the async threads.
                let (out, complete) = tokio::task::spawn_blocking(move || {
                    let mut out: Vec<RetrievedChunk> = Vec::new();
                    let mut complete = true;
                    for t in types {
                        let f = Filters {
                            policy_type: Some(t),
                            jurisdiction: None,
                        };
                        match kb.search(&query, k, &f, Mode::Hybrid) {
                            Ok(hits) => out.extend(hits.into_iter().map(|h| RetrievedChunk {
                                chunk_id: h.chunk_id,
                                text: h.text,
                            })),
                            Err(e) => {
                                complete = false;
                                tracing::warn!(error = %format!("{e:#}"), "policy retrieval failed")
                            }
                        }
                    }
                    (out, complete)
                })
                .await
                .unwrap_or_default();
                // An incomplete answer is used once but not kept: the next case searches again.
                if complete {
                    Ok(out)
                } else {
                    Err(out)
                }
            })
            .await;
        match found {
            Ok(hits) => hits.clone(),
            Err(partial) => partial,
        }
    }

    async fn ask(&self, req: &AgentRequest) -> std::result::Result<BackendReply, String> {
        match &self.backend {
            Backend::Offline => Ok(OfflineBackend.resolve(req)),
            Backend::OpenAi(b) => b
                .resolve(req)
                .await
                .map_err(|(e, attempts)| format!("{e} (after {attempts} attempts)")),
        }
    }

    fn backend_label(&self) -> String {
        match &self.backend {
            Backend::Offline => OfflineBackend::LABEL.into(),
            Backend::OpenAi(b) => b.label(),
        }
    }

    /// Works a case to its end: resolution, approval or escalation. `history` carries earlier
    /// turns of a follow-up (which may finish a case that is no longer queued); `done` learns
    /// whether the run was recorded.
    async fn work(
        &self,
        d: Deviation,
        history: Vec<String>,
        done: Option<oneshot::Sender<bool>>,
    ) -> Result<()> {
        let reopen = !history.is_empty();
        let mut done = done;
        let route = self.table.route(&RouteInput::of(&d));
        let facts = facts_of(&d);
        let mut agent = route.agent;
        let mut hops = 0;
        loop {
            let started = Instant::now();
            let computed = self.computed(agent, &facts);
            let retrieved = self.retrieve(agent, &d, &computed).await;
            let ids: BTreeSet<String> = retrieved.iter().map(|r| r.chunk_id.clone()).collect();
            let req = AgentRequest {
                agent,
                deviation: d.clone(),
                facts: facts.clone(),
                computed,
                retrieved,
                history: history.clone(),
                allowed_tools: self.table.spec(agent).tools.iter().copied().collect(),
            };
            let reply = self.ask(&req).await;
            let latency_ms = started.elapsed().as_millis() as i64;
            let mut run = RunRecord {
                case_id: d.id.clone(),
                agent: agent.as_str().into(),
                backend: self.backend_label(),
                prompt_hash: req.prompt_hash(),
                retrieved: ids.iter().cloned().collect(),
                output: None,
                verdicts: json!([]),
                outcome: String::new(),
                error: None,
                attempts: 1,
                latency_ms,
                prompt_tokens: 0,
                completion_tokens: 0,
            };
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    run.outcome = "failed".into();
                    run.error = Some(e.clone());
                    return self.escalate(
                        run,
                        &d,
                        &format!("backend failed: {e}"),
                        reopen,
                        done.take(),
                    );
                }
            };
            run.backend = reply.backend.clone();
            run.attempts = reply.attempts;
            run.prompt_tokens = reply.usage.prompt_tokens;
            run.completion_tokens = reply.usage.completion_tokens;
            run.output = serde_json::to_value(&reply.resolution).ok();
            let verdicts: Vec<Verdict> = check(
                &reply.resolution,
                self.table.spec(agent),
                &ids,
                &facts,
                &self.table.limits,
            );
            run.verdicts = serde_json::to_value(&verdicts).unwrap_or_default();
            let outcome = decide(&verdicts);
            let hand_off = reply
                .resolution
                .actions
                .iter()
                .find(|a| a.tool == Tool::HandOff)
                .and_then(|a| a.params.get("to").cloned())
                .and_then(|v| serde_json::from_value::<AgentKind>(v).ok());
            match (outcome, hand_off) {
                (Outcome::Reject, _) => {
                    run.outcome = "rejected".into();
                    let why: Vec<String> = verdicts
                        .iter()
                        .filter(|v| v.outcome == Outcome::Reject)
                        .map(|v| format!("{}: {}", v.guardrail, v.detail))
                        .collect();
                    return self.escalate(
                        run,
                        &d,
                        &format!("guardrails: {}", why.join("; ")),
                        reopen,
                        done.take(),
                    );
                }
                (_, Some(next)) if next != agent => {
                    hops += 1;
                    if hops > self.table.hop_limit {
                        run.outcome = "rejected".into();
                        return self.escalate(
                            run,
                            &d,
                            &format!("hop limit {} reached", self.table.hop_limit),
                            reopen,
                            done.take(),
                        );
                    }
                    agent = next;
                    continue;
                }
                (Outcome::NeedsApproval, _) => {
                    run.outcome = "pending_approval".into();
                    let mut actions = records_of(&reply.resolution.actions, true);
                    let reasons: Vec<String> = verdicts
                        .iter()
                        .filter(|v| v.outcome == Outcome::NeedsApproval)
                        .map(|v| v.detail.clone())
                        .collect();
                    actions.push(ActionRecord {
                        tool: "request_human_approval".into(),
                        params: json!({ "reason": reasons.join("; ") }),
                        status: "done".into(),
                    });
                    return self.record(
                        run,
                        actions,
                        CaseStatus::PendingApproval,
                        reopen,
                        done.take(),
                    );
                }
                _ => {
                    run.outcome = "accepted".into();
                    let actions = records_of(&reply.resolution.actions, false);
                    return self.record(run, actions, CaseStatus::Resolved, reopen, done.take());
                }
            }
        }
    }

    /// Ends a case with people: a ticket by severity and a request for approval, with the reason.
    fn escalate(
        &self,
        mut run: RunRecord,
        d: &Deviation,
        reason: &str,
        reopen: bool,
        done: Option<oneshot::Sender<bool>>,
    ) -> Result<()> {
        let priority = match d.severity {
            Severity::Critical => "P1",
            _ => "P2",
        };
        run.agent = format!("{} -> escalation", run.agent);
        let actions = vec![
            ActionRecord {
                tool: "create_ticket".into(),
                params: json!({ "priority": priority, "summary": d.summary, "reason": reason }),
                status: "done".into(),
            },
            ActionRecord {
                tool: "request_human_approval".into(),
                params: json!({ "reason": reason }),
                status: "done".into(),
            },
        ];
        self.record(run, actions, CaseStatus::Escalated, reopen, done)
    }

    /// Hands the run to the recorder, which writes it (only if the case is still open to it)
    /// and then publishes its actions, so nothing is published twice.
    fn record(
        &self,
        run: RunRecord,
        actions: Vec<ActionRecord>,
        status: CaseStatus,
        reopen: bool,
        done: Option<oneshot::Sender<bool>>,
    ) -> Result<()> {
        self.recorder
            .send(ToRecord {
                finished: FinishedRun {
                    run,
                    actions,
                    status,
                    reopen,
                },
                done,
            })
            .map_err(|_| anyhow::anyhow!("the recorder stopped"))
    }
}
