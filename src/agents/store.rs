//! The case store: SQLite (default) or PostgreSQL (a `postgres://` `DATABASE_URL`) through
//! sqlx's Any driver, with the migrations in `migrations/` embedded in the binary. Every
//! statement and migration is written once, in SQL both databases accept. A case per deviation (keyed by its id) with its conversation, every agent run
//! (agent, backend, prompt hash, retrieved chunk ids, output, guardrail verdicts, outcome,
//! latency, tokens) and every action.
//!
//! In: accepted deviations, finished runs, follow-up messages. Out: the queued cases to work on
//! (also after a restart), case histories, the audit trail.
//!
//! Exactly-once effect: [`CaseStore::accept`] inserts the case before the deviation is
//! acknowledged (a redelivered deviation finds it and is not queued twice), and
//! [`CaseStore::finish_run`] writes the run, its actions and the case's new status in one
//! transaction, only if the case is still queued; a second finish of the same case is refused,
//! so no action is ever recorded twice.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

use crate::model::records::Deviation;

/// Rows per multi-row INSERT. Binding looks each parameter up by name, which costs time linear
/// in the statement's parameter count, so statements stay small (about 450 parameters).
const ROWS_PER_STATEMENT: usize = 64;

/// One set of migrations for both databases.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `<head> VALUES ($1, .., $columns), (...)` for `rows` rows, numbered as both databases read.
fn multi_row_insert(head: &str, columns: usize, rows: usize) -> String {
    let mut sql = format!("{head} VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * columns + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Where a case stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    Queued,
    Resolved,
    PendingApproval,
    Escalated,
}

impl CaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Queued => "queued",
            CaseStatus::Resolved => "resolved",
            CaseStatus::PendingApproval => "pending_approval",
            CaseStatus::Escalated => "escalated",
        }
    }
}

/// One finished agent run, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub case_id: String,
    pub agent: String,
    pub backend: String,
    pub prompt_hash: String,
    pub retrieved: Vec<String>,
    /// The resolution as JSON, when the backend produced one.
    pub output: Option<serde_json::Value>,
    pub verdicts: serde_json::Value,
    /// accepted | pending_approval | rejected | failed
    pub outcome: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub latency_ms: i64,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// An action to record with a run.
#[derive(Clone, Debug, Serialize)]
pub struct ActionRecord {
    pub tool: String,
    pub params: serde_json::Value,
    /// done | pending_approval
    pub status: String,
}

/// A recorded run as read back.
#[derive(Clone, Debug, Serialize)]
pub struct StoredRun {
    pub agent: String,
    pub backend: String,
    pub outcome: String,
    pub retrieved: Vec<String>,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: i64,
    pub latency_ms: i64,
    /// Wall clock, epoch ms.
    pub at: i64,
}

/// A case as listed: newest first.
#[derive(Clone, Debug, Serialize)]
pub struct CaseSummary {
    pub case_id: String,
    pub status: String,
    pub agent: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: String,
    pub order_id: Option<String>,
    pub summary: String,
    /// Wall clock, epoch ms.
    pub updated: i64,
}

/// A run to record with its actions and the case's new status.
#[derive(Clone, Debug)]
pub struct FinishedRun {
    pub run: RunRecord,
    pub actions: Vec<ActionRecord>,
    pub status: CaseStatus,
    /// Record even though the case is no longer queued (an operator follow-up).
    pub reopen: bool,
}

/// A message in a case's conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseMessage {
    pub seq: i64,
    pub role: String,
    pub body: String,
    pub at: i64,
}

pub struct CaseStore {
    pool: AnyPool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl CaseStore {
    /// Opens the configured database and applies the migrations: a SQLite file path or
    /// `sqlite://` URL (created if missing), or a `postgres://` / `postgresql://` URL.
    pub async fn connect(database: &str) -> Result<CaseStore> {
        sqlx::any::install_default_drivers();
        let slow = std::time::Duration::from_secs(10);
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            let opts = AnyConnectOptions::from_str(database)
                .with_context(|| format!("case store URL {}", redacted(database)))?
                .log_slow_statements(log::LevelFilter::Warn, slow);
            let pool = AnyPoolOptions::new()
                .max_connections(8)
                .connect_with(opts)
                .await
                .with_context(|| format!("connecting to the case store {}", redacted(database)))?;
            MIGRATOR
                .run(&pool)
                .await
                .context("migrating the case store")?;
            return Ok(CaseStore { pool });
        }
        let path = database.strip_prefix("sqlite://").unwrap_or(database);
        if path.contains("://") {
            anyhow::bail!(
                "case store `{}`: use a SQLite file path, a sqlite:// URL or a postgres:// URL",
                redacted(database)
            );
        }
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let opts = AnyConnectOptions::from_str(&format!("sqlite://{path}?mode=rwc"))?
            // A batch of hundreds of cases is one statement stream in one transaction; that is
            // not slow, so only really slow statements are reported.
            .log_slow_statements(log::LevelFilter::Warn, slow);
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL, and durable at commit: an accepted deviation survives a crash.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .with_context(|| format!("opening the case store {path}"))?;
        MIGRATOR
            .run(&pool)
            .await
            .context("migrating the case store")?;
        Ok(CaseStore { pool })
    }

    /// Records a deviation as a queued case. Returns false when the case already exists
    /// (a redelivery): nothing changes then.
    pub async fn accept(&self, d: &Deviation) -> Result<bool> {
        Ok(self.accept_many(std::slice::from_ref(d)).await?[0])
    }

    /// [`accept`](Self::accept) for many deviations in one transaction (one disk sync, a few
    /// statements for the whole batch).
    pub async fn accept_many(&self, devs: &[Deviation]) -> Result<Vec<bool>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut new_ids: HashSet<String> = HashSet::new();
        for chunk in devs.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<(String, String)> = chunk
                .iter()
                .map(|d| Ok((d.id.clone(), serde_json::to_string(d)?)))
                .collect::<Result<_>>()?;
            let sql = multi_row_insert(
                "INSERT INTO cases (id, deviation, status, hops, created_at, updated_at)",
                6,
                rows.len(),
            ) + " ON CONFLICT (id) DO NOTHING RETURNING id";
            let mut insert = sqlx::query(&sql);
            for (id, json) in rows {
                insert = insert
                    .bind(id)
                    .bind(json)
                    .bind("queued")
                    .bind(0i64)
                    .bind(now)
                    .bind(now);
            }
            let inserted = insert.fetch_all(&mut *tx).await?;
            let inserted: HashSet<String> = inserted.iter().map(|r| r.get(0)).collect();
            let first_messages: Vec<(String, String)> = chunk
                .iter()
                .filter(|d| inserted.contains(&d.id) && !new_ids.contains(&d.id))
                .map(|d| (d.id.clone(), d.summary.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect();
            if !first_messages.is_empty() {
                let sql = multi_row_insert(
                    "INSERT INTO case_messages (case_id, seq, role, body, at)",
                    5,
                    first_messages.len(),
                );
                let mut messages = sqlx::query(&sql);
                for (id, summary) in first_messages {
                    messages = messages
                        .bind(id)
                        .bind(1i64)
                        .bind("deviation")
                        .bind(summary)
                        .bind(now);
                }
                messages.execute(&mut *tx).await?;
            }
            new_ids.extend(inserted);
        }
        tx.commit().await?;
        // The first occurrence of a new id is the accepted one; repeats in the batch are not.
        Ok(devs.iter().map(|d| new_ids.remove(&d.id)).collect())
    }

    /// The deviation a case was opened for, and the case's status.
    pub async fn case(&self, case_id: &str) -> Result<Option<(Deviation, String)>> {
        let row = sqlx::query("SELECT deviation, status FROM cases WHERE id = $1")
            .bind(case_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                serde_json::from_str(r.get::<String, _>(0).as_str())?,
                r.get(1),
            ))
        })
        .transpose()
    }

    /// Deviations of the cases still queued, oldest first (work left by a crash).
    pub async fn queued(&self) -> Result<Vec<Deviation>> {
        let rows = sqlx::query(
            "SELECT deviation FROM cases WHERE status = 'queued' ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(serde_json::from_str(r.get::<String, _>(0).as_str())?))
            .collect()
    }

    /// Adds a message to a case's conversation; returns its sequence number.
    pub async fn add_message(&self, case_id: &str, role: &str, body: &str) -> Result<i64> {
        // One statement: a read-then-write transaction would fail at once on SQLite ("database
        // is locked") whenever another connection committed in between.
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO case_messages (case_id, seq, role, body, at) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM case_messages \
             WHERE case_id = $1 RETURNING seq",
        )
        .bind(case_id)
        .bind(role)
        .bind(body)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .with_context(|| format!("no case {case_id}"))?;
        Ok(seq)
    }

    pub async fn messages(&self, case_id: &str) -> Result<Vec<CaseMessage>> {
        let rows = sqlx::query(
            "SELECT seq, role, body, at FROM case_messages WHERE case_id = $1 ORDER BY seq",
        )
        .bind(case_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| CaseMessage {
                seq: r.get(0),
                role: r.get(1),
                body: r.get(2),
                at: r.get(3),
            })
            .collect())
    }

    /// Records a finished run, its actions and the case's new status, atomically, if the case is
    /// still queued (or `reopen` is set, for operator follow-ups). Returns false, recording
    /// nothing, when another run already finished the case.
    pub async fn finish_run(
        &self,
        run: &RunRecord,
        actions: &[ActionRecord],
        status: CaseStatus,
        reopen: bool,
    ) -> Result<bool> {
        let one = FinishedRun {
            run: run.clone(),
            actions: actions.to_vec(),
            status,
            reopen,
        };
        Ok(self.finish_runs(std::slice::from_ref(&one)).await?[0])
    }

    /// [`finish_run`](Self::finish_run) for many runs in one transaction (one disk sync).
    pub async fn finish_runs(&self, runs: &[FinishedRun]) -> Result<Vec<bool>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(runs.len());
        // (action id, case id, run id, tool, params, status) of every recorded run.
        let mut actions: Vec<(String, String, String, String, String, String)> = Vec::new();
        for f in runs {
            let run = &f.run;
            let claimed = sqlx::query(
                "UPDATE cases SET status = $2, agent = $3, updated_at = $4 \
                 WHERE id = $1 AND (status = 'queued' OR $5)",
            )
            .bind(&run.case_id)
            .bind(f.status.as_str())
            .bind(&run.agent)
            .bind(now)
            .bind(f.reopen)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            out.push(claimed);
            if !claimed {
                continue;
            }
            // Run ids number a case's runs: <case id>#1, #2, ...
            let run_id: String = sqlx::query_scalar(
                "INSERT INTO agent_runs (id, case_id, agent, backend, prompt_hash, retrieved, output, \
                 verdicts, outcome, error, attempts, latency_ms, prompt_tokens, completion_tokens, at) \
                 VALUES ($1 || '#' || (SELECT COUNT(*) + 1 FROM agent_runs WHERE case_id = $1), \
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
            )
            .bind(&run.case_id)
            .bind(&run.agent)
            .bind(&run.backend)
            .bind(&run.prompt_hash)
            .bind(serde_json::to_string(&run.retrieved)?)
            .bind(run.output.as_ref().map(|o| o.to_string()))
            .bind(run.verdicts.to_string())
            .bind(&run.outcome)
            .bind(&run.error)
            .bind(run.attempts as i64)
            .bind(run.latency_ms)
            .bind(run.prompt_tokens as i64)
            .bind(run.completion_tokens as i64)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for (i, a) in f.actions.iter().enumerate() {
                actions.push((
                    format!("{run_id}/{}", i + 1),
                    run.case_id.clone(),
                    run_id.clone(),
                    a.tool.clone(),
                    a.params.to_string(),
                    a.status.clone(),
                ));
            }
            let said = run.output.as_ref().and_then(|o| {
                o.get("customer_message")
                    .or_else(|| o.get("rationale"))
                    .and_then(|m| m.as_str())
            });
            if let Some(body) = said {
                sqlx::query(
                    "INSERT INTO case_messages (case_id, seq, role, body, at) VALUES \
                     ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM case_messages WHERE case_id = $1), \
                     'agent', $2, $3)",
                )
                .bind(&run.case_id)
                .bind(body)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        for chunk in actions.chunks(ROWS_PER_STATEMENT) {
            let sql = multi_row_insert(
                "INSERT INTO actions (id, case_id, run_id, tool, params, status, at)",
                7,
                chunk.len(),
            );
            let mut insert = sqlx::query(&sql);
            for a in chunk.iter().cloned() {
                insert = insert
                    .bind(a.0)
                    .bind(a.1)
                    .bind(a.2)
                    .bind(a.3)
                    .bind(a.4)
                    .bind(a.5)
                    .bind(now);
            }
            insert.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    pub async fn status(&self, case_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT status FROM cases WHERE id = $1")
            .bind(case_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every run of a case, oldest first.
    pub async fn runs(&self, case_id: &str) -> Result<Vec<StoredRun>> {
        let rows = sqlx::query(
            "SELECT agent, backend, outcome, retrieved, output, error, attempts, latency_ms, at \
             FROM agent_runs WHERE case_id = $1 ORDER BY at, id",
        )
        .bind(case_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let output: Option<String> = r.get(4);
                Ok(StoredRun {
                    agent: r.get(0),
                    backend: r.get(1),
                    outcome: r.get(2),
                    retrieved: serde_json::from_str(&r.get::<String, _>(3))?,
                    output: output.map(|o| serde_json::from_str(&o)).transpose()?,
                    error: r.get(5),
                    attempts: r.get(6),
                    latency_ms: r.get(7),
                    at: r.get(8),
                })
            })
            .collect()
    }

    /// (tool, status) of every action on a case, in order.
    pub async fn actions(&self, case_id: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT tool, status FROM actions WHERE case_id = $1 ORDER BY id")
            .bind(case_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every action on a case with its parameters, in order.
    pub async fn action_records(&self, case_id: &str) -> Result<Vec<ActionRecord>> {
        let rows =
            sqlx::query("SELECT tool, params, status FROM actions WHERE case_id = $1 ORDER BY id")
                .bind(case_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(ActionRecord {
                    tool: r.get(0),
                    params: serde_json::from_str(&r.get::<String, _>(1))?,
                    status: r.get(2),
                })
            })
            .collect()
    }

    /// The most recently updated cases, newest first; with `order_id`, only that order's.
    pub async fn recent_cases(
        &self,
        limit: i64,
        order_id: Option<&str>,
    ) -> Result<Vec<CaseSummary>> {
        let rows = match order_id {
            // Case ids of order rules start with the rule and the order id; the deviation JSON
            // is checked below, so the prefix filter only narrows the scan.
            Some(o) => sqlx::query(
                "SELECT id, status, agent, updated_at, deviation FROM cases \
                 WHERE deviation LIKE $1 ORDER BY updated_at DESC, id LIMIT $2",
            )
            .bind(format!("%\"order_id\":\"{}\"%", o.replace(['%', '_'], "")))
            .bind(limit),
            None => sqlx::query(
                "SELECT id, status, agent, updated_at, deviation FROM cases \
                 ORDER BY updated_at DESC, id LIMIT $1",
            )
            .bind(limit),
        }
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let d: Deviation = serde_json::from_str(&r.get::<String, _>(4))?;
            if order_id.is_some_and(|o| d.order_id.as_deref() != Some(o)) {
                continue;
            }
            out.push(CaseSummary {
                case_id: r.get(0),
                status: r.get(1),
                agent: r.get(2),
                kind: d.kind.as_str().to_string(),
                severity: format!("{:?}", d.severity).to_lowercase(),
                order_id: d.order_id.clone(),
                summary: d.summary.clone(),
                updated: r.get(3),
            });
        }
        Ok(out)
    }

    /// Number of cases per status.
    pub async fn status_counts(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM cases GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Counts for the audit: cases, runs, actions.
    pub async fn counts(&self) -> Result<(i64, i64, i64)> {
        let one = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool);
        Ok((
            one("SELECT COUNT(*) FROM cases").await?,
            one("SELECT COUNT(*) FROM agent_runs").await?,
            one("SELECT COUNT(*) FROM actions").await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_and_sql_is_numbered_for_both_databases() {
        assert_eq!(
            super::redacted("postgres://app:s3cret@db:5432/cases"),
            "postgres://app:***@db:5432/cases"
        );
        assert_eq!(super::redacted("data/agents.sqlite"), "data/agents.sqlite");
        assert_eq!(
            super::multi_row_insert("INSERT INTO t (a, b)", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
    }
}
