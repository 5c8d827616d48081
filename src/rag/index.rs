//! The policy knowledge base: section chunks of the policy documents, a faiss `IdMap<Flat>`
//! inner-product index over normalised embeddings of each chunk and of each of its sentences
//! (a chunk scores as its best passage), BM25 over the same chunks, and hybrid search merging
//! both by weighted reciprocal rank fusion, with policy-type and jurisdiction filters. Queries
//! are normalised first ([`super::query`]: short durations in days).
//!
//! In: the shipped policies directory, a data directory, an embedder. Out: search hits; runtime
//! add / replace / delete of documents, persisted in the data directory and surviving restarts.
//!
//! Data directory layout: `documents/<id>.md` (documents added or replaced at run time; they
//! override a shipped document with the same id), `deleted.json` (ids of shipped documents
//! deleted at run time), `index/manifest.json` (content hash, embedder identity, chunk
//! metadata) and `index/vectors.f32` (the chunk embeddings). The effective document set is the
//! shipped one overlaid by the runtime changes; its hash together with the embedder identity
//! decides whether the persisted embeddings are reused or everything is re-embedded. The faiss
//! index is rebuilt from the stored vectors at open (a copy, no model work).
//!
//! Concurrency: searches share a read lock (faiss `IdMap<Flat>` search takes `&self`); document
//! changes take the write lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::{anyhow, bail, Context, Result};
use faiss::selector::IdSelector;
use faiss::{ConcurrentIndex, IdMap, Index};
use faiss::{FlatIndex, Idx};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bm25::Bm25;
use super::embed::Embedder;
use super::policy::PolicyDocument;

/// Reciprocal rank fusion constant. 10 rather than the customary 60: with only ~70 chunks the
/// top few ranks of each list carry the signal, and a flatter curve let mid-list agreement
/// between two weak rankings outvote a strong dense hit. Chosen with the weights below.
const RRF_K: f32 = 10.0;

/// Weights of the dense and BM25 lists in the fusion. Both constants were chosen on the
/// odd-numbered evaluation questions only (k 10/30/60 x BM25 weight 0.2-1.0) and checked on the
/// even-numbered ones and on the held-out set (BENCHMARKS.md): on these paraphrased questions
/// BM25 alone is the weaker ranker, and at full weight its misses pushed dense hits out of the
/// top 5.
const RRF_WEIGHTS: (f32, f32) = (1.0, 0.5);

/// Version of how chunks are cut into passages; part of the content hash, so changing
/// [`Chunk::passages`] re-embeds persisted indexes instead of mixing two formats.
const PASSAGE_FORMAT: u32 = 1;

/// One retrievable chunk: a section of a policy document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// `<document id>/<section id>`.
    pub id: String,
    pub doc_id: String,
    pub doc_title: String,
    pub section_id: String,
    pub section_title: String,
    pub policy_type: String,
    pub jurisdiction: Vec<String>,
    pub effective_date: String,
    pub text: String,
}

impl Chunk {
    /// What BM25 indexes and the first passage embeds: document and section titles, then the
    /// text.
    fn indexed_text(&self) -> String {
        format!("{} - {}\n{}", self.doc_title, self.section_title, self.text)
    }

    /// The passages embedded for this chunk: the whole section, then each sentence with the
    /// titles in front. A short question matches one sentence far better than a mean-pooled
    /// 150-word section; the chunk's dense score is its best passage's.
    fn passages(&self) -> Vec<String> {
        let mut out = vec![self.indexed_text()];
        let mut sentence = String::new();
        let flush = |sentence: &mut String, out: &mut Vec<String>| {
            let t = sentence.trim();
            if t.split_whitespace().count() >= 4 {
                out.push(format!("{} - {}: {t}", self.doc_title, self.section_title));
                sentence.clear();
            }
        };
        for line in self.text.lines() {
            let line = line.trim_start_matches(['-', '*', '|', ' ']);
            for (i, part) in line.split_inclusive(['.', '?', '!', ';']).enumerate() {
                if i > 0 || !sentence.is_empty() {
                    sentence.push(' ');
                }
                sentence.push_str(part.trim());
                if part.ends_with(['.', '?', '!', ';']) {
                    flush(&mut sentence, &mut out);
                }
            }
            flush(&mut sentence, &mut out);
        }
        if !sentence.trim().is_empty() {
            out.push(format!(
                "{} - {}: {}",
                self.doc_title,
                self.section_title,
                sentence.trim()
            ));
        }
        out
    }
}

/// Embeds every passage of `chunks` in one pass; returns each chunk's passage vectors.
fn embed_chunks(embedder: &dyn Embedder, chunks: &[Chunk]) -> Result<Vec<Vec<Vec<f32>>>> {
    let per_chunk: Vec<Vec<String>> = chunks.iter().map(Chunk::passages).collect();
    let flat: Vec<&str> = per_chunk.iter().flatten().map(String::as_str).collect();
    let mut vectors = embedder.embed(&flat)?.into_iter();
    Ok(per_chunk
        .iter()
        .map(|p| vectors.by_ref().take(p.len()).collect())
        .collect())
}

/// Search filters (all optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    pub policy_type: Option<String>,
    /// Matches chunks whose document lists this jurisdiction or `global`.
    pub jurisdiction: Option<String>,
}

impl Filters {
    fn admits(&self, c: &Chunk) -> bool {
        self.policy_type
            .as_ref()
            .is_none_or(|t| &c.policy_type == t)
            && self.jurisdiction.as_ref().is_none_or(|j| {
                c.jurisdiction
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(j) || x == "global")
            })
    }
}

/// Which retriever answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dense,
    Bm25,
    Hybrid,
}

/// A search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub chunk_id: String,
    pub doc_id: String,
    pub doc_title: String,
    pub section_id: String,
    pub section_title: String,
    pub policy_type: String,
    pub text: String,
    /// Cosine similarity, when the dense retriever ranked it.
    pub dense_score: Option<f32>,
    pub bm25_score: Option<f32>,
    /// The score the result list is ordered by (fused for hybrid).
    pub score: f32,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    content_hash: String,
    embedder: String,
    dim: usize,
    /// Position = BM25 position; `None` for removed chunks.
    chunks: Vec<Option<Chunk>>,
    /// Passage vectors per chunk (in `vectors.f32`, chunk by chunk).
    passages_per_chunk: Vec<usize>,
}

struct Inner {
    chunks: Vec<Option<Chunk>>,
    /// Each chunk's passage vectors.
    vectors: Vec<Option<Vec<Vec<f32>>>>,
    /// faiss id -> chunk position (`usize::MAX` once removed).
    passages: Vec<usize>,
    faiss: IdMap<FlatIndex>,
    bm25: Bm25,
    content_hash: String,
}

impl Inner {
    fn insert_vectors(&mut self, pos: usize, vectors: &[Vec<f32>]) -> Result<()> {
        for v in vectors {
            let id = self.passages.len() as u64;
            self.passages.push(pos);
            self.faiss.add_with_ids(v, &[Idx::new(id)])?;
        }
        Ok(())
    }
}

/// Where the knowledge base lives.
#[derive(Clone, Debug)]
pub struct KbPaths {
    /// Shipped policy documents (`policies/`).
    pub policies_dir: PathBuf,
    /// Runtime documents, tombstones and the persisted index.
    pub data_dir: PathBuf,
}

/// How [`KnowledgeBase::open`] got its vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenedFrom {
    /// The persisted embeddings matched the documents and the embedder.
    Persisted,
    /// Everything was embedded (first run, or documents or embedder changed).
    Rebuilt,
}

pub struct KnowledgeBase {
    paths: KbPaths,
    embedder: Box<dyn Embedder>,
    inner: RwLock<Inner>,
    pub opened_from: OpenedFrom,
}

fn read_documents(dir: &Path) -> Result<BTreeMap<String, (String, PolicyDocument)>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md") && !p.ends_with("README.md"))
        .collect();
    paths.sort();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let doc = PolicyDocument::parse(&text, &p.display().to_string())?;
        if out.contains_key(&doc.id) {
            bail!("{}: document id `{}` is used twice", p.display(), doc.id);
        }
        out.insert(doc.id.clone(), (text, doc));
    }
    Ok(out)
}

fn chunks_of(doc: &PolicyDocument) -> Vec<Chunk> {
    doc.sections
        .iter()
        .map(|s| Chunk {
            id: format!("{}/{}", doc.id, s.id),
            doc_id: doc.id.clone(),
            doc_title: doc.title.clone(),
            section_id: s.id.clone(),
            section_title: s.title.clone(),
            policy_type: doc.policy_type.clone(),
            jurisdiction: doc.jurisdiction.clone(),
            effective_date: doc.effective_date.clone(),
            text: s.text.clone(),
        })
        .collect()
}

impl KnowledgeBase {
    /// Opens the knowledge base, re-embedding only when the documents or the embedder changed.
    pub fn open(paths: KbPaths, embedder: Box<dyn Embedder>) -> Result<KnowledgeBase> {
        let docs = Self::effective_documents(&paths)?;
        let content_hash = Self::hash(&docs, embedder.identity().as_str());
        let dim = embedder.dim();
        let manifest_path = paths.data_dir.join("index/manifest.json");
        let vectors_path = paths.data_dir.join("index/vectors.f32");
        let persisted = std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            .filter(|m| {
                m.content_hash == content_hash
                    && m.embedder == embedder.identity()
                    && m.dim == embedder.dim()
            })
            .and_then(|m| {
                let raw = std::fs::read(&vectors_path).ok()?;
                let floats: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let total: usize = m.passages_per_chunk.iter().sum();
                (floats.len() == total * dim && m.passages_per_chunk.len() == m.chunks.len())
                    .then_some((m, floats))
            });
        let (chunks, vectors, opened_from) = match persisted {
            Some((m, floats)) => {
                let mut it = floats.chunks_exact(dim);
                let vectors: Vec<Option<Vec<Vec<f32>>>> = m
                    .chunks
                    .iter()
                    .zip(&m.passages_per_chunk)
                    .map(|(c, n)| {
                        let v: Vec<Vec<f32>> = it.by_ref().take(*n).map(<[f32]>::to_vec).collect();
                        c.as_ref().map(|_| v)
                    })
                    .collect();
                (m.chunks, vectors, OpenedFrom::Persisted)
            }
            None => {
                let chunks: Vec<Chunk> = docs.values().flat_map(|(_, d)| chunks_of(d)).collect();
                let vectors = embed_chunks(embedder.as_ref(), &chunks)
                    .context("embedding the policy chunks")?;
                (
                    chunks.into_iter().map(Some).collect(),
                    vectors.into_iter().map(Some).collect(),
                    OpenedFrom::Rebuilt,
                )
            }
        };
        let mut inner = Inner {
            chunks: Vec::new(),
            vectors: Vec::new(),
            passages: Vec::new(),
            faiss: IdMap::new(FlatIndex::new_ip(dim as u32)?)?,
            bm25: Bm25::default(),
            content_hash,
        };
        for (pos, (c, v)) in chunks.iter().zip(&vectors).enumerate() {
            let p = inner
                .bm25
                .add(&c.as_ref().map(Chunk::indexed_text).unwrap_or_default());
            debug_assert_eq!(p, pos);
            match (c, v) {
                (Some(_), Some(v)) => inner.insert_vectors(pos, v)?,
                _ => inner.bm25.remove(pos),
            }
        }
        inner.chunks = chunks;
        inner.vectors = vectors;
        let kb = KnowledgeBase {
            paths,
            embedder,
            inner: RwLock::new(inner),
            opened_from,
        };
        if opened_from == OpenedFrom::Rebuilt {
            let inner = kb.inner.read().map_err(|_| anyhow!("lock poisoned"))?;
            kb.persist(&inner)?;
            drop(inner);
        }
        Ok(kb)
    }

    /// The shipped documents overlaid by runtime ones, minus deleted ids: id -> (text, doc).
    fn effective_documents(paths: &KbPaths) -> Result<BTreeMap<String, (String, PolicyDocument)>> {
        let mut docs = read_documents(&paths.policies_dir)?;
        docs.extend(read_documents(&paths.data_dir.join("documents"))?);
        for id in Self::deleted(paths)? {
            docs.remove(&id);
        }
        Ok(docs)
    }

    fn deleted(paths: &KbPaths) -> Result<BTreeSet<String>> {
        let p = paths.data_dir.join("deleted.json");
        if !p.exists() {
            return Ok(BTreeSet::new());
        }
        serde_json::from_slice(&std::fs::read(&p)?)
            .with_context(|| format!("reading {}", p.display()))
    }

    fn hash(docs: &BTreeMap<String, (String, PolicyDocument)>, embedder: &str) -> String {
        let mut h = Sha256::new();
        h.update(embedder.as_bytes());
        h.update(PASSAGE_FORMAT.to_le_bytes());
        for (id, (text, _)) in docs {
            h.update([0u8]);
            h.update(id.as_bytes());
            h.update([0u8]);
            h.update(text.as_bytes());
        }
        format!("{:x}", h.finalize())
    }

    fn persist(&self, inner: &Inner) -> Result<()> {
        let dir = self.paths.data_dir.join("index");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut raw = Vec::with_capacity(inner.passages.len() * self.embedder.dim() * 4);
        for v in inner.vectors.iter().flatten().flatten() {
            for x in v {
                raw.extend_from_slice(&x.to_le_bytes());
            }
        }
        let manifest = Manifest {
            content_hash: inner.content_hash.clone(),
            embedder: self.embedder.identity(),
            dim: self.embedder.dim(),
            chunks: inner.chunks.clone(),
            passages_per_chunk: inner
                .vectors
                .iter()
                .map(|v| v.as_ref().map_or(0, Vec::len))
                .collect(),
        };
        // Vectors first, manifest last: a crash in between leaves a manifest that does not
        // match and the next open rebuilds.
        write_atomically(&dir.join("vectors.f32"), &raw)?;
        write_atomically(&dir.join("manifest.json"), &serde_json::to_vec(&manifest)?)
    }

    /// Whether the embedder is the hashed fallback.
    pub fn embedder_is_fallback(&self) -> bool {
        self.embedder.is_fallback()
    }

    /// Hash of the effective documents and the embedder: changes with every add or delete.
    pub fn content_hash(&self) -> String {
        self.inner
            .read()
            .map(|i| i.content_hash.clone())
            .unwrap_or_default()
    }

    pub fn embedder_identity(&self) -> String {
        self.embedder.identity()
    }

    /// Live chunks, in index order.
    pub fn chunks(&self) -> Vec<Chunk> {
        self.inner
            .read()
            .map(|i| i.chunks.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Ids of the documents in the knowledge base.
    pub fn document_ids(&self) -> BTreeSet<String> {
        self.chunks().into_iter().map(|c| c.doc_id).collect()
    }

    /// The best `k` chunks for `query` under `filters`.
    pub fn search(&self, query: &str, k: usize, filters: &Filters, mode: Mode) -> Result<Vec<Hit>> {
        let normalized = super::query::normalize(query);
        let query = normalized.as_str();
        let embedded = match mode {
            Mode::Bm25 => None,
            _ => Some(
                self.embedder
                    .embed(&[query])
                    .and_then(|mut v| v.pop().ok_or_else(|| anyhow!("no query embedding"))),
            ),
        };
        // A failing embedder (an unreachable embeddings endpoint) degrades hybrid search to
        // BM25 instead of failing the agent that asked; dense search has nothing to fall back to.
        let (qv, mode) = match embedded {
            None => (None, mode),
            Some(Ok(v)) => (Some(v), mode),
            Some(Err(e)) if mode == Mode::Hybrid => {
                tracing::warn!(error = %format!("{e:#}"), "query embedding failed; BM25 only");
                (None, Mode::Bm25)
            }
            Some(Err(e)) => return Err(e.context("embedding the query")),
        };
        let inner = self.inner.read().map_err(|_| anyhow!("lock poisoned"))?;
        let admitted = |pos: usize| {
            inner
                .chunks
                .get(pos)
                .and_then(Option::as_ref)
                .filter(|c| filters.admits(c))
        };
        // Dense: every passage by similarity; a chunk ranks by its best passage.
        let mut dense: Vec<(usize, f32)> = Vec::new();
        if let Some(qv) = &qv {
            let n = inner.faiss.ntotal() as usize;
            if n > 0 {
                let r = inner.faiss.search(qv, n)?;
                let mut seen = std::collections::HashSet::new();
                for (label, d) in r.labels.iter().zip(&r.distances) {
                    let Some(pos) = label.get().and_then(|id| inner.passages.get(id as usize))
                    else {
                        continue;
                    };
                    if admitted(*pos).is_some() && seen.insert(*pos) {
                        dense.push((*pos, *d));
                    }
                }
            }
        }
        let lexical: Vec<(usize, f32)> = if mode == Mode::Dense {
            Vec::new()
        } else {
            inner
                .bm25
                .search(query)
                .into_iter()
                .filter(|(pos, _)| admitted(*pos).is_some())
                .collect()
        };
        let dense_score: HashMap<usize, f32> = dense.iter().copied().collect();
        let bm25_score: HashMap<usize, f32> = lexical.iter().copied().collect();
        let ranked: Vec<(usize, f32)> = match mode {
            Mode::Dense => dense.clone(),
            Mode::Bm25 => lexical.clone(),
            Mode::Hybrid => {
                let mut fused: HashMap<usize, f32> = HashMap::new();
                let (wd, wb) = RRF_WEIGHTS;
                for (list, w) in [(&dense, wd), (&lexical, wb)] {
                    for (rank, (pos, _)) in list.iter().enumerate() {
                        *fused.entry(*pos).or_default() += w / (RRF_K + rank as f32 + 1.0);
                    }
                }
                let mut v: Vec<(usize, f32)> = fused.into_iter().collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                v
            }
        };
        Ok(ranked
            .into_iter()
            .take(k)
            .filter_map(|(pos, score)| {
                let c = admitted(pos)?;
                Some(Hit {
                    chunk_id: c.id.clone(),
                    doc_id: c.doc_id.clone(),
                    doc_title: c.doc_title.clone(),
                    section_id: c.section_id.clone(),
                    section_title: c.section_title.clone(),
                    policy_type: c.policy_type.clone(),
                    text: c.text.clone(),
                    dense_score: dense_score.get(&pos).copied(),
                    bm25_score: bm25_score.get(&pos).copied(),
                    score,
                })
            })
            .collect())
    }

    /// Adds a document, or replaces the one with the same id; persisted. Returns its id.
    pub fn add_document(&self, text: &str, source_name: &str) -> Result<String> {
        let doc = PolicyDocument::parse(text, source_name)?;
        let new_chunks = chunks_of(&doc);
        let vectors = embed_chunks(self.embedder.as_ref(), &new_chunks)?;
        let mut inner = self.inner.write().map_err(|_| anyhow!("lock poisoned"))?;
        Self::remove_chunks(&mut inner, &doc.id)?;
        for (c, v) in new_chunks.into_iter().zip(vectors) {
            let pos = inner.bm25.add(&c.indexed_text());
            inner.insert_vectors(pos, &v)?;
            inner.chunks.push(Some(c));
            inner.vectors.push(Some(v));
        }
        let docs_dir = self.paths.data_dir.join("documents");
        std::fs::create_dir_all(&docs_dir)?;
        write_atomically(&docs_dir.join(format!("{}.md", doc.id)), text.as_bytes())?;
        let mut deleted = Self::deleted(&self.paths)?;
        if deleted.remove(&doc.id) {
            write_atomically(
                &self.paths.data_dir.join("deleted.json"),
                &serde_json::to_vec(&deleted)?,
            )?;
        }
        self.refresh_hash_and_persist(&mut inner)?;
        Ok(doc.id)
    }

    /// Deletes a document; persisted. Errors when no such document exists.
    pub fn delete_document(&self, id: &str) -> Result<usize> {
        let mut inner = self.inner.write().map_err(|_| anyhow!("lock poisoned"))?;
        let removed = Self::remove_chunks(&mut inner, id)?;
        if removed == 0 {
            bail!("no document `{id}` in the knowledge base");
        }
        let runtime = self
            .paths
            .data_dir
            .join("documents")
            .join(format!("{id}.md"));
        if runtime.exists() {
            std::fs::remove_file(&runtime)?;
        }
        if read_documents(&self.paths.policies_dir)?.contains_key(id) {
            let mut deleted = Self::deleted(&self.paths)?;
            deleted.insert(id.to_string());
            std::fs::create_dir_all(&self.paths.data_dir)?;
            write_atomically(
                &self.paths.data_dir.join("deleted.json"),
                &serde_json::to_vec(&deleted)?,
            )?;
        }
        self.refresh_hash_and_persist(&mut inner)?;
        Ok(removed)
    }

    fn remove_chunks(inner: &mut Inner, doc_id: &str) -> Result<usize> {
        let positions: Vec<usize> = inner
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.doc_id == doc_id))
            .map(|(i, _)| i)
            .collect();
        if !positions.is_empty() {
            let mut ids: Vec<Idx> = Vec::new();
            for (id, owner) in inner.passages.iter_mut().enumerate() {
                if positions.contains(owner) {
                    ids.push(Idx::new(id as u64));
                    *owner = usize::MAX;
                }
            }
            inner.faiss.remove_ids(&IdSelector::batch(&ids)?)?;
            for &p in &positions {
                inner.bm25.remove(p);
                inner.chunks[p] = None;
                inner.vectors[p] = None;
            }
        }
        Ok(positions.len())
    }

    fn refresh_hash_and_persist(&self, inner: &mut Inner) -> Result<()> {
        let docs = Self::effective_documents(&self.paths)?;
        inner.content_hash = Self::hash(&docs, &self.embedder.identity());
        self.persist(inner)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
