//! Retrieval over company policy for the agents: policy documents ([`policy`]), embedders
//! ([`embed`]: MiniLM with candle, or a hashed fallback), BM25 ([`bm25`]), the knowledge base
//! with faiss and hybrid search ([`index`]), and retrieval evaluation ([`evaluate`]).
//!
//! In: `policies/*.md`, the model under `models/`, a data directory. Out: search hits for the
//! agent stage and the CLI (`fulfillment-ai kb ...`), and evaluation numbers.

pub mod bm25;
pub mod embed;
pub mod index;
pub mod policy;
pub mod query;
pub mod remote;

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use index::{Filters, Hit, KbPaths, KnowledgeBase, Mode, OpenedFrom};

use crate::config::app::KbConfig;
use crate::llm::OpenAiSettings;

/// Opens the knowledge base configured in the settings: MiniLM when its weights are there, the
/// OpenAI-compatible embeddings endpoint when configured and reachable, and otherwise the hashed
/// fallback (logged as an error).
pub fn open_configured(cfg: &KbConfig, openai: &OpenAiSettings) -> Result<KnowledgeBase> {
    let embedder = match cfg.embedder.as_str() {
        "hashed" => Box::new(embed::HashedNgrams) as Box<dyn embed::Embedder>,
        "openai" => match remote::RemoteEmbedder::connect(
            openai,
            &cfg.embedding_model,
            cfg.embedding_dimensions,
            cfg.embedding_batch,
        ) {
            Ok(e) => Box::new(e) as Box<dyn embed::Embedder>,
            Err(e) => {
                tracing::error!(
                    base_url = %openai.base_url,
                    model = %cfg.embedding_model,
                    error = %format!("{e:#}"),
                    "EMBEDDINGS ENDPOINT NOT AVAILABLE: the knowledge base falls back to hashed \
                     n-gram vectors (much weaker retrieval)"
                );
                Box::new(embed::HashedNgrams)
            }
        },
        _ => embed::load_or_fallback(&cfg.model_dir),
    };
    KnowledgeBase::open(
        KbPaths {
            policies_dir: cfg.policies_dir.clone(),
            data_dir: cfg.data_dir.clone(),
        },
        embedder,
    )
    .context("opening the policy knowledge base")
}

/// One evaluation question and the chunk ids that answer it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub q: String,
    pub answers: Vec<String>,
}

pub fn load_questions(path: &Path) -> Result<Vec<Question>> {
    let (text, file) = crate::config::pipeline::read_config_file(path)?;
    Ok(crate::config::pipeline::parse_yaml(&text, &file)?)
}

/// Retrieval quality of one mode.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub mode: String,
    pub questions: usize,
    /// Mean over questions of (answer chunks in the top k) / min(answer chunks, k), k = 1, 5.
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    /// Mean reciprocal rank of the first answer chunk (0 when not in the top 20).
    pub mrr: f64,
    /// Questions with no answer chunk in the top 5.
    pub misses_at_5: Vec<String>,
    /// For every question, the 1-based rank of each answer chunk in the top 20 (None: not there).
    pub answer_ranks: Vec<QuestionRanks>,
}

/// Where one question's answer chunks ranked.
#[derive(Clone, Debug, Serialize)]
pub struct QuestionRanks {
    pub q: String,
    pub ranks: Vec<(String, Option<usize>)>,
}

pub fn evaluate(kb: &KnowledgeBase, questions: &[Question], mode: Mode) -> Result<EvalResult> {
    let (mut r1, mut r5, mut mrr) = (0.0, 0.0, 0.0);
    let mut misses = Vec::new();
    let mut answer_ranks = Vec::new();
    for q in questions {
        let hits = kb.search(&q.q, 20, &Filters::default(), mode)?;
        let ids: Vec<&str> = hits.iter().map(|h| h.chunk_id.as_str()).collect();
        // Answer chunks in the top k over the most the top k can hold, min(answers, k).
        let found = |k: usize| {
            q.answers
                .iter()
                .filter(|a| ids.iter().take(k).any(|id| id == a))
                .count() as f64
                / q.answers.len().min(k).max(1) as f64
        };
        r1 += found(1);
        r5 += found(5);
        if found(5) == 0.0 {
            misses.push(q.q.clone());
        }
        if let Some(rank) = ids.iter().position(|id| q.answers.iter().any(|a| a == id)) {
            mrr += 1.0 / (rank as f64 + 1.0);
        }
        answer_ranks.push(QuestionRanks {
            q: q.q.clone(),
            ranks: q
                .answers
                .iter()
                .map(|a| (a.clone(), ids.iter().position(|id| id == a).map(|r| r + 1)))
                .collect(),
        });
    }
    let n = questions.len().max(1) as f64;
    Ok(EvalResult {
        mode: format!("{mode:?}").to_lowercase(),
        questions: questions.len(),
        recall_at_1: r1 / n,
        recall_at_5: r5 / n,
        mrr: mrr / n,
        misses_at_5: misses,
        answer_ranks,
    })
}
