//! Text embedders for the knowledge base: all-MiniLM-L6-v2 run with candle on the CPU (mean
//! pooling over the attention mask, L2-normalised, 384 dimensions), an OpenAI-compatible
//! embeddings endpoint (by config), and a deterministic hashed n-gram embedder used when the
//! model weights are absent or the endpoint is unreachable (and reported loudly as a fallback).
//!
//! In: texts. Out: unit-length vectors, and an identity string that changes whenever the vectors
//! would (model file hash or fallback name), so a persisted index knows when to rebuild.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// Dimension of MiniLM and of the hashed fallback.
pub const DIM: usize = 384;

/// Turns texts into unit vectors.
pub trait Embedder: Send + Sync {
    /// Identity of the vector space: equal identities give equal vectors.
    fn identity(&self) -> String;
    /// True when this is the hashed fallback, not a language model.
    fn is_fallback(&self) -> bool;
    /// Length of every vector.
    fn dim(&self) -> usize {
        DIM
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// all-MiniLM-L6-v2 with candle.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Mutex<Tokenizer>,
    identity: String,
}

impl MiniLm {
    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<MiniLm> {
        let weights = dir.join("model.safetensors");
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?,
        )
        .context("parsing the model's config.json")?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("loading {}/tokenizer.json: {e}", dir.display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        let bytes =
            std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
        let identity = format!("all-MiniLM-L6-v2:{:x}", Sha256::digest(&bytes));
        let vb = VarBuilder::from_buffered_safetensors(bytes, DTYPE, &Device::Cpu)
            .context("loading the model weights")?;
        let model = BertModel::load(vb, &config).context("building the BERT model")?;
        Ok(MiniLm {
            model,
            tokenizer: Mutex::new(tokenizer),
            identity,
        })
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .lock()
            .map_err(|_| anyhow!("tokenizer lock poisoned"))?
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let device = Device::Cpu;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| -> Result<Tensor> {
            let v: Vec<Tensor> = encodings
                .iter()
                .map(|e| Tensor::new(f(e).as_slice(), &device))
                .collect::<candle_core::Result<_>>()?;
            Ok(Tensor::stack(&v, 0)?)
        };
        let ids = rows(&|e| e.get_ids().to_vec())?;
        let type_ids = rows(&|e| e.get_type_ids().to_vec())?;
        let mask = rows(&|e| e.get_attention_mask().to_vec())?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // [b, n, 384]
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [b, n, 1]
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?; // [b, 384]
        let counts = mask_f.sum(1)?.clamp(1e-9, f64::MAX)?; // [b, 1]
        let mean = summed.broadcast_div(&counts)?;
        let mut out: Vec<Vec<f32>> = mean.to_vec2()?;
        out.iter_mut().for_each(|v| normalise(v));
        Ok(out)
    }
}

impl Embedder for MiniLm {
    fn identity(&self) -> String {
        self.identity.clone()
    }
    fn is_fallback(&self) -> bool {
        false
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        // Batches of similar length: padding to the longest text in a batch is wasted work.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for batch in order.chunks(16) {
            let batch_texts: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
            for (&i, v) in batch.iter().zip(self.embed_batch(&batch_texts)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Deterministic fallback: word unigrams and character trigrams hashed into 384 signed buckets.
pub struct HashedNgrams;

impl HashedNgrams {
    fn add(v: &mut [f32], feature: &str, weight: f32) {
        let h = Sha256::digest(feature.as_bytes());
        let bucket = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize % DIM;
        let sign = if h[4] & 1 == 0 { 1.0 } else { -1.0 };
        v[bucket] += sign * weight;
    }
}

impl Embedder for HashedNgrams {
    fn identity(&self) -> String {
        "hashed-ngrams-v1".into()
    }
    fn is_fallback(&self) -> bool {
        true
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; DIM];
                for word in crate::rag::bm25::tokens(t) {
                    Self::add(&mut v, &word, 1.0);
                    let padded: Vec<char> = format!(" {word} ").chars().collect();
                    for w in padded.windows(3) {
                        Self::add(&mut v, &w.iter().collect::<String>(), 0.5);
                    }
                }
                normalise(&mut v);
                v
            })
            .collect())
    }
}

/// The MiniLM model from `dir`, or the hashed fallback (with an error log saying why) when its
/// files are missing or do not load.
pub fn load_or_fallback(dir: &Path) -> Box<dyn Embedder> {
    match MiniLm::load(dir) {
        Ok(m) => Box::new(m),
        Err(e) => {
            tracing::error!(
                model_dir = %dir.display(),
                error = %format!("{e:#}"),
                "EMBEDDING MODEL NOT AVAILABLE: the knowledge base falls back to hashed n-gram \
                 vectors (much weaker retrieval); run scripts/fetch_model.sh"
            );
            Box::new(HashedNgrams)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn hashed_fallback_is_deterministic_and_unit_length() {
        let e = HashedNgrams;
        let v = e
            .embed(&[
                "refund after delivery",
                "refund after delivery",
                "carrier lost my parcel",
            ])
            .unwrap();
        assert_eq!(v[0], v[1]);
        assert!((cos(&v[0], &v[0]) - 1.0).abs() < 1e-5);
        assert!(cos(&v[0], &v[2]) < 0.5);
        assert!(e.is_fallback());
    }

    #[test]
    fn missing_model_falls_back() {
        let e = load_or_fallback(Path::new("/nonexistent/model"));
        assert!(e.is_fallback());
        assert_eq!(e.identity(), "hashed-ngrams-v1");
    }
}
