//! BM25 (k1 = 1.2, b = 0.75) over the knowledge-base chunks, with the tokenizer shared by the
//! hashed fallback embedder.
//!
//! In: chunk texts (indexed by position) and queries. Out: `(position, score)` best first.

use std::collections::HashMap;

const K1: f32 = 1.2;
const B: f32 = 0.75;

const STOPWORDS: [&str; 72] = [
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "but", "by", "can", "could", "did", "do", "does", "for", "from", "get", "got", "had",
    "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "my", "no",
    "not", "of", "on", "or", "our", "out", "should", "so", "some", "than", "that", "the", "their",
    "them", "then", "there", "they", "this", "to", "up", "us", "was", "we", "were", "what", "when",
    "which", "who", "will", "with", "would", "you",
];

/// Lower-case alphanumeric words without stopwords, with a light plural/-ing/-ed stemming.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

fn stem(w: &str) -> String {
    for (suffix, min) in [("ies", 4), ("ing", 5), ("ed", 4), ("es", 4), ("s", 3)] {
        if w.len() > min && w.ends_with(suffix) && !w.ends_with("ss") {
            let base = &w[..w.len() - suffix.len()];
            if suffix == "ies" {
                return format!("{base}y");
            }
            // "shipping" -> "shipp" -> "ship"
            let b = base.as_bytes();
            let doubled = b.len() >= 3
                && b[b.len() - 1] == b[b.len() - 2]
                && !matches!(
                    b[b.len() - 1],
                    b'a' | b'e' | b'i' | b'o' | b'u' | b'l' | b's' | b'z'
                );
            return if doubled && (suffix == "ing" || suffix == "ed") {
                base[..base.len() - 1].to_string()
            } else {
                base.to_string()
            };
        }
    }
    w.to_string()
}

/// An inverted index over documents `0..n`; removed documents are `None`.
#[derive(Default, Debug)]
pub struct Bm25 {
    docs: Vec<Option<HashMap<String, u32>>>,
    lengths: Vec<u32>,
    df: HashMap<String, u32>,
    live: u32,
    total_len: u64,
}

impl Bm25 {
    /// Adds a document at the next position; returns the position.
    pub fn add(&mut self, text: &str) -> usize {
        let mut tf: HashMap<String, u32> = HashMap::new();
        let toks = tokens(text);
        for t in &toks {
            *tf.entry(t.clone()).or_default() += 1;
        }
        for t in tf.keys() {
            *self.df.entry(t.clone()).or_default() += 1;
        }
        self.lengths.push(toks.len() as u32);
        self.total_len += toks.len() as u64;
        self.live += 1;
        self.docs.push(Some(tf));
        self.docs.len() - 1
    }

    /// Removes the document at `pos` (its position is not reused).
    pub fn remove(&mut self, pos: usize) {
        if let Some(tf) = self.docs.get_mut(pos).and_then(Option::take) {
            for t in tf.keys() {
                if let Some(d) = self.df.get_mut(t) {
                    *d -= 1;
                }
            }
            self.total_len -= self.lengths[pos] as u64;
            self.live -= 1;
        }
    }

    /// Every live document with a positive score, best first.
    pub fn search(&self, query: &str) -> Vec<(usize, f32)> {
        if self.live == 0 {
            return Vec::new();
        }
        let q = tokens(query);
        let n = self.live as f32;
        let avg = self.total_len as f32 / n;
        let mut scores: Vec<(usize, f32)> = self
            .docs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let tf = d.as_ref()?;
                let len = self.lengths[i] as f32;
                let s: f32 = q
                    .iter()
                    .filter_map(|t| {
                        let f = *tf.get(t)? as f32;
                        let df = *self.df.get(t)? as f32;
                        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                        Some(idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * len / avg)))
                    })
                    .sum();
                (s > 0.0).then_some((i, s))
            })
            .collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_term_rarity_and_frequency() {
        let mut b = Bm25::default();
        b.add("refund within thirty days of delivery");
        b.add("the carrier lost the parcel; parcel trace");
        b.add("payment retries after a declined card");
        let r = b.search("lost parcels");
        assert_eq!(r[0].0, 1);
        assert_eq!(r.len(), 1);
        b.remove(1);
        assert!(b.search("lost parcels").is_empty());
        assert_eq!(b.search("declined payments")[0].0, 2);
    }

    #[test]
    fn tokens_drop_stopwords_and_stem() {
        assert_eq!(
            tokens("What are the Refunds for parcels?"),
            vec!["refund", "parcel"]
        );
        assert_eq!(
            tokens("retries delivered shipping"),
            vec!["retry", "deliver", "ship"]
        );
    }
}
