//! An [`Embedder`] backed by an OpenAI-compatible `/embeddings` endpoint (through async-openai),
//! chosen with `kb.embedder: openai`.
//!
//! In: texts (sent in batches of `kb.embedding_batch`). Out: unit vectors in input order; the
//! dimension is learned from a probe request at connect time and every answer is checked
//! against it (count, order, length), so a misbehaving server fails loudly instead of poisoning
//! the index. The identity names base URL, model and dimension, so switching any of them
//! re-embeds the persisted index.
//!
//! The calls run on a small runtime owned by the embedder; callers stay synchronous. From
//! inside another tokio runtime the call moves to a scoped thread, because a runtime cannot be
//! entered from within another.

use anyhow::{anyhow, bail, Context, Result};
use async_openai::config::OpenAIConfig;
use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EmbeddingInput};
use async_openai::Client;

use super::embed::Embedder;
use crate::llm::OpenAiSettings;

/// Embeddings from an OpenAI-compatible server.
pub struct RemoteEmbedder {
    rt: tokio::runtime::Runtime,
    client: Client<OpenAIConfig>,
    model: String,
    dimensions: Option<u32>,
    batch: usize,
    dim: usize,
    identity: String,
}

impl RemoteEmbedder {
    /// Connects and probes the dimension. `dimensions` is passed on to models that can shorten
    /// their vectors (text-embedding-3-*); `None` takes the model's own.
    pub fn connect(
        settings: &OpenAiSettings,
        model: &str,
        dimensions: Option<u32>,
        batch: usize,
    ) -> Result<RemoteEmbedder> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut e = RemoteEmbedder {
            rt,
            client: settings.client()?,
            model: model.to_string(),
            dimensions,
            batch: batch.max(1),
            dim: 0,
            identity: String::new(),
        };
        let probe = e.request(&["dimension probe"]).with_context(|| {
            format!(
                "probing embeddings model `{model}` at {}",
                settings.base_url
            )
        })?;
        e.dim = probe[0].len();
        if e.dim == 0 {
            bail!("embeddings model `{model}` returned an empty vector");
        }
        e.identity = format!(
            "openai:{}:{model}:{}",
            settings.base_url.trim_end_matches('/'),
            e.dim
        );
        Ok(e)
    }

    fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let req = {
            let mut b = CreateEmbeddingRequestArgs::default();
            b.model(self.model.clone())
                .input(EmbeddingInput::StringArray(
                    texts.iter().map(|t| t.to_string()).collect(),
                ));
            if let Some(d) = self.dimensions {
                b.dimensions(d);
            }
            b.build()?
        };
        let call = async { self.client.embeddings().create(req).await };
        let resp = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt.block_on(call))
                    .join()
                    .map_err(|_| anyhow!("embedding thread panicked"))
            })?
        } else {
            self.rt.block_on(call)
        }
        .map_err(|e| anyhow!("embeddings request failed: {e}"))?;
        let mut data = resp.data;
        if data.len() != texts.len() {
            bail!(
                "embeddings endpoint returned {} vectors for {} inputs",
                data.len(),
                texts.len()
            );
        }
        data.sort_by_key(|d| d.index);
        if data.iter().enumerate().any(|(i, d)| d.index as usize != i) {
            bail!("embeddings endpoint returned indexes that are not 0..n");
        }
        let mut out = Vec::with_capacity(data.len());
        for d in data {
            let mut v = d.embedding;
            if self.dim != 0 && v.len() != self.dim {
                bail!(
                    "embeddings endpoint returned {} dimensions, expected {}",
                    v.len(),
                    self.dim
                );
            }
            if v.iter().any(|x| !x.is_finite()) {
                bail!("embeddings endpoint returned a non-finite value");
            }
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                v.iter_mut().for_each(|x| *x /= n);
            }
            out.push(v);
        }
        Ok(out)
    }
}

impl Embedder for RemoteEmbedder {
    fn identity(&self) -> String {
        self.identity.clone()
    }
    fn is_fallback(&self) -> bool {
        false
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch) {
            out.extend(self.request(batch)?);
        }
        Ok(out)
    }
}
