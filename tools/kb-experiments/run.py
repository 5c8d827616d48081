"""Retrieval experiments behind BENCHMARKS.md "Policy knowledge base retrieval": what a second,
larger embedding model and four generic ranking changes do to hybrid recall@5 on the three
evaluation sets, above all the blind one.

In: the chunks and MiniLM passage vectors the Rust knowledge base persisted
(`fulfillment-ai kb index` -> data/kb/index), `kb eval --json` output of the Rust build for each
set, the question sets in tests/kb_eval/, and the two models under models/. Out: a table on
stdout. Before any experiment it checks that this numpy port reproduces the Rust side: MiniLM
vectors equal to the persisted ones, and dense / BM25 / hybrid metrics equal to `kb eval`.

The retrieval pieces below mirror src/rag (passages, BM25 with its stemmer and stop words,
duration normalisation, weighted RRF with k = 10, dense 1.0, BM25 0.5); the parity check is what
keeps them honest.
"""
import hashlib
import json
import math
import os
import pickle
import re
import sys

import numpy as np
import yaml

from encoders import Encoder

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.expanduser("~/.cache/fulfillment-ai/kb-experiments")
SETS = ("questions.yaml", "heldout.yaml", "blind.yaml")

# ---- the Rust knowledge base, mirrored -------------------------------------------------------
STOP = set("a about after all also am an and any are as at be been but by can could did do does "
           "for from get got had has have how i if in into is it its just me my no not of on or "
           "our out should so some than that the their them then there they this to up us was we "
           "were what when which who will with would you".split())


def stem(w):
    for suf, mn in (("ies", 4), ("ing", 5), ("ed", 4), ("es", 4), ("s", 3)):
        if len(w) > mn and w.endswith(suf) and not w.endswith("ss"):
            base = w[: -len(suf)]
            if suf == "ies":
                return base + "y"
            doubled = len(base) >= 3 and base[-1] == base[-2] and base[-1] not in "aeiolsz"
            return base[:-1] if doubled and suf in ("ing", "ed") else base
    return w


def tokens(text):
    words = (x.lower() for x in re.split(r"[^0-9A-Za-z\u00C0-\uFFFF]+", text) if x)
    return [stem(w) for w in words if w not in STOP]


class Bm25:
    def __init__(self, texts, k1=1.2, b=0.75):
        self.k1, self.b = k1, b
        self.tf = []
        self.df = {}
        for t in texts:
            tf = {}
            for x in tokens(t):
                tf[x] = tf.get(x, 0) + 1
            for x in tf:
                self.df[x] = self.df.get(x, 0) + 1
            self.tf.append(tf)
        self.lens = [sum(tf.values()) for tf in self.tf]
        self.n = len(texts)
        self.avg = sum(self.lens) / self.n

    def scores(self, weighted_terms):
        out = np.zeros(self.n)
        for t, wt in weighted_terms.items():
            df = self.df.get(t)
            if not df:
                continue
            idf = math.log((self.n - df + 0.5) / (df + 0.5) + 1)
            for i, tf in enumerate(self.tf):
                f = tf.get(t)
                if f:
                    norm = self.k1 * (1 - self.b + self.b * self.lens[i] / self.avg)
                    out[i] += wt * idf * f * (self.k1 + 1) / (f + norm)
        return out

    def ranked(self, query, expansions=None):
        terms = {}
        for t in tokens(query):
            terms[t] = terms.get(t, 0) + 1.0  # repeated query terms count again, as in Rust
        for t, wt in (expansions or {}).items():
            terms.setdefault(t, wt)
        s = self.scores(terms)
        return [i for i in np.argsort(-s, kind="stable") if s[i] > 0]


UNIT = {"day": 1, "days": 1, "week": 7, "weeks": 7, "month": 30, "months": 30}
COUNT = {"a": 1, "an": 1, "one": 1, "two": 2, "couple": 2, "three": 3, "four": 4, "five": 5,
         "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
         "few": 3}


def _count(w):
    if w in COUNT:
        return float(COUNT[w])
    try:
        v = float(w)
    except ValueError:
        return None
    return v if 0 < v < 10000 else None


def normalize(q):
    words = q.split()

    def bare(w):
        return re.sub(r"^[^0-9A-Za-z.]+|[^0-9A-Za-z.]+$", "", w).rstrip(".").lower()

    out, i = [], 0
    while i < len(words):
        parsed, n = None, _count(bare(words[i]))
        if n is not None:
            j = i + 1
            if bare(words[i]) == "a" and j < len(words) and bare(words[j]) == "couple":
                n, j = 2.0, j + 1
            if j < len(words) and bare(words[j]) == "of":
                j += 1
            if j < len(words) and bare(words[j]) in UNIT:
                d = UNIT[bare(words[j])]
                end, total = j + 1, n * d
                if [bare(w) for w in words[end:end + 3]] == ["and", "a", "half"]:
                    total, end = total + d / 2, end + 3
                if d > 1 and total <= 90:
                    parsed = (end, round(total), words[end - 1])
        if parsed:
            end, days, last = parsed
            out.append(f"{days} days{re.search(r'[^0-9A-Za-z]*$', last).group(0)}")
            i = end
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def indexed(c):
    return f"{c['doc_title']} - {c['section_title']}\n{c['text']}"


def passages(c):
    out, sentence = [indexed(c)], [""]
    prefix = f"{c['doc_title']} - {c['section_title']}: "

    def flush():
        t = sentence[0].strip()
        if len(t.split()) >= 4:
            out.append(prefix + t)
            sentence[0] = ""

    for line in c["text"].split("\n"):
        for i, part in enumerate(re.findall(r"[^.?!;]*[.?!;]|[^.?!;]+$", line.lstrip("-*| "))):
            if i > 0 or sentence[0]:
                sentence[0] += " "
            sentence[0] += part.strip()
            if part.endswith((".", "?", "!", ";")):
                flush()
        flush()
    if sentence[0].strip():
        out.append(prefix + sentence[0].strip())
    return out


def rrf(lists, weights, k=10.0):
    fused = {}
    for ranked, w in zip(lists, weights):
        for r, i in enumerate(ranked):
            fused[i] = fused.get(i, 0.0) + w / (k + r + 1)
    return [i for i, _ in sorted(fused.items(), key=lambda x: (-x[1], x[0]))]


def metrics(questions, ids, ranker):
    r1 = r5 = mrr = 0.0
    for q in questions:
        top = [ids[i] for i in ranker(q["q"])][:20]
        a = q["answers"]

        def found(k):
            return sum(1 for x in a if x in top[:k]) / max(1, min(len(a), k))

        r1, r5 = r1 + found(1), r5 + found(5)
        mrr += next((1 / (r + 1) for r, x in enumerate(top) if x in a), 0.0)
    n = len(questions)
    return r1 / n, r5 / n, mrr / n


# ---- cached encoders ---------------------------------------------------------------------------
class Cached:
    def __init__(self, name, model_dir, max_tokens):
        self.enc = Encoder(model_dir, max_tokens)
        self.path = f"{CACHE}/{name}.pkl"
        self.memo = pickle.load(open(self.path, "rb")) if os.path.exists(self.path) else {}
        self.dirty = 0

    def _get(self, key, fn):
        if key not in self.memo:
            self.memo[key] = fn()
            self.dirty += 1
            if self.dirty % 50 == 0:
                self.save()
        return self.memo[key]

    def embed(self, text):
        return self._get(("v", text), lambda: self.enc.embed(text))

    def token_vectors(self, text):
        def fn():
            x, toks = self.enc.tokens(text)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            keep = [i for i, s in enumerate(toks)
                    if re.match(r"^(##)?[a-z0-9]", s) and s.lstrip("#") not in STOP]
            return x[keep].astype(np.float32)
        return self._get(("t", text), fn)

    def save(self):
        os.makedirs(CACHE, exist_ok=True)
        pickle.dump(self.memo, open(self.path, "wb"))


def main(rust_eval_dir):
    manifest = json.load(open(f"{ROOT}/data/kb/index/manifest.json"))
    chunks = [c for c in manifest["chunks"] if c]
    per_chunk = [n for c, n in zip(manifest["chunks"], manifest["passages_per_chunk"]) if c]
    stored = np.fromfile(f"{ROOT}/data/kb/index/vectors.f32", dtype=np.float32).reshape(-1, 384)
    ids = [c["id"] for c in chunks]
    texts = [p for c in chunks for p in passages(c)]
    owner = np.repeat(np.arange(len(chunks)), [len(passages(c)) for c in chunks])
    assert [len(passages(c)) for c in chunks] == per_chunk, "passage split differs from Rust"

    mini = Cached("minilm", f"{ROOT}/models/all-MiniLM-L6-v2", 256)
    mpnet = Cached("mpnet", f"{ROOT}/models/all-mpnet-base-v2", 384)
    for j in range(0, len(texts), 97):
        cos = float(mini.embed(texts[j]) @ stored[j])
        assert cos > 0.9999, f"numpy MiniLM differs from the persisted vector {j}: cos {cos}"
    print(f"parity: numpy MiniLM = persisted candle vectors (cos > 0.9999 on {len(range(0, len(texts), 97))} passages)")
    mpnet_passages = np.stack([mpnet.embed(t) for t in texts])
    mpnet.save()
    bm25 = Bm25([indexed(c) for c in chunks])
    start = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])

    def best_passage(sims):
        out = np.full(len(chunks), -1.0)
        np.maximum.at(out, owner, sims)
        return out

    def order(scores):
        return list(np.argsort(-scores, kind="stable"))

    def dense_mini(nq):
        return order(best_passage(stored @ mini.embed(nq)))

    def dense_mpnet(nq):
        return order(best_passage(mpnet_passages @ mpnet.embed(nq)))

    def hybrid(q, dense=dense_mini):
        nq = normalize(q)
        return rrf([dense(nq), bm25.ranked(nq)], [1.0, 0.5])

    # Generic changes, each tried on the tuning set first.
    def clauses(q):
        """Query decomposition: each clause of a multi-part question adds its own dense list."""
        nq = normalize(q)
        parts = [p.strip() for p in re.split(r"[,;?!.]| and | but | so |\u2014", nq)
                 if len(p.split()) >= 3]
        lists, weights = [dense_mini(nq), bm25.ranked(nq)], [1.0, 0.5]
        if len(parts) > 1:
            lists += [dense_mini(p) for p in parts]
            weights += [0.5] * len(parts)
        return rrf(lists, weights)

    vocab = {}
    for c in chunks:
        for w in re.split(r"[^A-Za-z]+", indexed(c)):
            w = w.lower()
            if len(w) > 2 and w not in STOP:
                vocab.setdefault(stem(w), w)
    vocab_stems = list(vocab)
    vocab_vectors = np.stack([mini.embed(vocab[s]) for s in vocab_stems])

    def word_expansion(q):
        """BM25 query expansion: a query word absent from the corpus adds its two nearest corpus
        words by MiniLM similarity (>= 0.7), at half weight."""
        nq = normalize(q)
        extra = {}
        for w in re.split(r"[^A-Za-z0-9]+", nq.lower()):
            if len(w) < 3 or w in STOP or w.isdigit() or stem(w) in bm25.df:
                continue
            sims = vocab_vectors @ mini.embed(w)
            for j in np.argsort(-sims)[:2]:
                if sims[j] >= 0.7:
                    extra[vocab_stems[j]] = max(extra.get(vocab_stems[j], 0), 0.5 * float(sims[j]))
        return rrf([dense_mini(nq), bm25.ranked(nq, extra)], [1.0, 0.5])

    def aggregated(q):
        """A chunk scores best passage + 0.3 x whole section + 0.3 x mean of its two best
        sentences, instead of the best passage alone."""
        nq = normalize(q)
        s = stored @ mini.embed(nq)
        out = np.zeros(len(chunks))
        for c in range(len(chunks)):
            ss = s[start[c]:start[c] + per_chunk[c]]
            sent = np.sort(ss[1:])[::-1] if per_chunk[c] > 1 else ss[:1]
            out[c] = max(ss.max(), 0) + 0.3 * ss[0] + 0.3 * sent[:2].mean()
        return rrf([order(out), bm25.ranked(nq)], [1.0, 0.5])

    chunk_tokens = [mini.token_vectors(indexed(c)) for c in chunks]

    def late_interaction(q):
        """A third list: ColBERT-style MaxSim over MiniLM token vectors (no extra model)."""
        nq = normalize(q)
        qt = mini.token_vectors(nq)
        maxsim = np.array([(qt @ ct.T).max(1).mean() for ct in chunk_tokens])
        return rrf([dense_mini(nq), bm25.ranked(nq), order(maxsim)], [1.0, 0.5, 0.5])

    sets = {name: yaml.safe_load(open(f"{ROOT}/tests/kb_eval/{name}")) for name in SETS}
    # Parity with `kb eval --json` of the Rust build, mode by mode.
    rust_modes = {"dense": lambda q: dense_mini(normalize(q)),
                  "bm25": lambda q: bm25.ranked(normalize(q)), "hybrid": hybrid}
    for name, qs in sets.items():
        rust = json.load(open(f"{rust_eval_dir}/{name}.json"))["results"]
        for r in rust:
            mine = metrics(qs, ids, rust_modes[r["mode"]])
            want = (r["recall_at_1"], r["recall_at_5"], r["mrr"])
            assert np.allclose(mine, want, atol=1e-6), f"{name} {r['mode']}: {mine} != Rust {want}"
    print("parity: dense, BM25 and hybrid metrics = `kb eval` on all three sets")

    rows = [
        ("MiniLM dense", lambda q: dense_mini(normalize(q))),
        ("BM25", lambda q: bm25.ranked(normalize(q))),
        ("hybrid MiniLM + BM25 (shipped)", hybrid),
        ("MPNet dense", lambda q: dense_mpnet(normalize(q))),
        ("hybrid MPNet + BM25", lambda q: hybrid(q, dense_mpnet)),
        ("MiniLM + MPNet (0.5) + BM25", lambda q: rrf(
            [dense_mini(normalize(q)), dense_mpnet(normalize(q)), bm25.ranked(normalize(q))],
            [0.5, 1.0, 0.5])),
        ("hybrid + clause decomposition", clauses),
        ("hybrid + BM25 word expansion", word_expansion),
        ("hybrid, aggregated passages", aggregated),
        ("hybrid + MaxSim late interaction", late_interaction),
    ]
    print("\n| retriever | " + " | ".join(f"{n} ({len(q)})" for n, q in sets.items()) + " |")
    print("|---|" + "---|" * len(sets))
    for label, ranker in rows:
        cells = []
        for qs in sets.values():
            _, r5, mrr = metrics(qs, ids, ranker)
            cells.append(f"{r5:.3f} / {mrr:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\ncells: hybrid recall@5 / MRR")
    mini.save()
    mpnet.save()


if __name__ == "__main__":
    main(sys.argv[1])
