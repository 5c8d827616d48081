"""Sentence encoders in plain numpy for the retrieval experiments: all-MiniLM-L6-v2 (BERT) and
all-mpnet-base-v2 (MPNet, relative position buckets), both mean-pooled over the tokens and
L2-normalised, as sentence-transformers configures them.

In: a model directory (model.safetensors, tokenizer.json, config.json) and texts. Out: unit
vectors, or per-token vectors for late-interaction scoring. run.py checks the MiniLM output
against the vectors the Rust knowledge base (candle) persisted.
"""
import json
import math

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def _erf(x):
    # Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
               + 0.254829592) * t * np.exp(-a * a)
    return s * y


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _mpnet_buckets(n, num_buckets=32, max_distance=128):
    """Relative position bucket of every (query, key) pair, bidirectional."""
    rel = np.arange(n)[None, :] - np.arange(n)[:, None]
    d = -rel
    half = num_buckets // 2
    out = (d < 0).astype(np.int64) * half
    d = np.abs(d)
    exact = half // 2
    far = exact + (np.log(np.maximum(d, 1) / exact) / math.log(max_distance / exact)
                   * (half - exact)).astype(np.int64)
    return out + np.where(d < exact, d, np.minimum(far, half - 1))


class Encoder:
    def __init__(self, model_dir, max_tokens):
        self.cfg = json.load(open(f"{model_dir}/config.json"))
        self.w = load_file(f"{model_dir}/model.safetensors")
        self.tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        self.tok.enable_truncation(max_tokens)
        self.tok.no_padding()
        self.mpnet = self.cfg["model_type"] == "mpnet"
        self.eps = self.cfg["layer_norm_eps"]
        self.heads = self.cfg["num_attention_heads"]

    def _ln(self, x, p):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + self.eps) * self.w[p + ".weight"] + self.w[p + ".bias"]

    def _lin(self, x, p):
        return x @ self.w[p + ".weight"].T + self.w[p + ".bias"]

    def tokens(self, text):
        """Per-token hidden states of the last layer and the token strings."""
        enc = self.tok.encode(text)
        ids, n = enc.ids, len(enc.ids)
        w, h = self.w, self.heads
        if self.mpnet:
            # Positions start after the padding index, as in the original model.
            pos = np.arange(n) + self.cfg["pad_token_id"] + 1
            x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][pos]
            bias = w["encoder.relative_attention_bias.weight"][_mpnet_buckets(n)].transpose(2, 0, 1)
            names = ("attention.attn.q", "attention.attn.k", "attention.attn.v",
                     "attention.attn.o", "attention.LayerNorm")
        else:
            x = (w["embeddings.word_embeddings.weight"][ids]
                 + w["embeddings.position_embeddings.weight"][:n]
                 + w["embeddings.token_type_embeddings.weight"][0])
            bias = 0.0
            names = ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense", "attention.output.LayerNorm")
        x = self._ln(x, "embeddings.LayerNorm")
        d = x.shape[1] // h
        for layer in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._lin(x, p + nm).reshape(n, h, d).transpose(1, 0, 2) for nm in names[:3])
            a = q @ k.transpose(0, 2, 1) / math.sqrt(d) + bias
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(1, 0, 2).reshape(n, h * d)
            x = self._ln(self._lin(ctx, p + names[3]) + x, p + names[4])
            y = self._lin(_gelu(self._lin(x, p + "intermediate.dense")), p + "output.dense")
            x = self._ln(y + x, p + "output.LayerNorm")
        return x, enc.tokens

    def embed(self, text):
        x, _ = self.tokens(text)
        e = x.mean(0)
        return (e / np.linalg.norm(e)).astype(np.float32)
