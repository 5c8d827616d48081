//! The policy knowledge base with the real all-MiniLM-L6-v2 weights (`scripts/fetch_model.sh`),
//! real faiss and BM25: retrieval quality on the three hand-written evaluation sets, filters, runtime
//! add / replace / delete surviving a reopen, rebuilding only when documents or the embedder
//! change, bad documents rejected, concurrent searches, and the hashed fallback.
//!
//! Without the model files the model tests print why and pass, unless `CI` is set, where a
//! missing model is a failure (`scripts/test.sh` fetches it first).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fulfillment_ai::rag::embed::{self, Embedder, HashedNgrams, MiniLm};
use fulfillment_ai::rag::{
    evaluate, load_questions, Filters, KbPaths, KnowledgeBase, Mode, OpenedFrom,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn model_dir() -> Option<PathBuf> {
    let dir = Path::new(ROOT).join("models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "{} is missing under CI: run scripts/fetch_model.sh",
        dir.display()
    );
    eprintln!(
        "skipping: {} not found (run scripts/fetch_model.sh)",
        dir.display()
    );
    None
}

fn paths(data: &Path) -> KbPaths {
    KbPaths {
        policies_dir: Path::new(ROOT).join("policies"),
        data_dir: data.to_path_buf(),
    }
}

fn minilm() -> Option<Box<dyn Embedder>> {
    Some(Box::new(MiniLm::load(&model_dir()?).expect("load MiniLM")))
}

const NEW_DOC: &str = "---\nid: gift-cards\ntitle: Gift card policy\npolicy_type: refund\neffective_date: 2026-03-01\njurisdiction: [EU]\nversion: 1\nsections: [no-cash-out, expiry]\n---\n# Gift card policy\n\n## [no-cash-out] Gift cards are never exchanged for cash\n\nA gift card balance can only be spent on orders. Agents must not convert a balance into a bank transfer or card refund, whatever the amount.\n\n## [expiry] Gift card expiry\n\nGift cards expire five years after purchase. Expired balances are not restored.\n";

#[test]
fn minilm_embeddings_are_unit_384_vectors_that_rank_paraphrases_close() {
    let Some(e) = minilm() else { return };
    let v = e
        .embed(&[
            "my parcel never arrived",
            "the package was lost in transit",
            "what is the warranty on a desk chair",
        ])
        .unwrap();
    assert!(v.iter().all(|x| x.len() == 384));
    let norm = |a: &[f32]| a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(v.iter().all(|x| (norm(x) - 1.0).abs() < 1e-4));
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let close = cos(&v[0], &v[1]);
    let far = cos(&v[0], &v[2]);
    assert!(
        close > 0.5 && far < 0.3 && close > far + 0.3,
        "close {close} far {far}"
    );
    // Batching and padding do not change a text's vector.
    let alone = e.embed(&["my parcel never arrived"]).unwrap();
    assert!(cos(&alone[0], &v[0]) > 0.9999);
}

#[test]
fn hybrid_retrieval_beats_dense_and_bm25_and_holds_its_measured_recall() {
    let Some(e) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(paths(dir.path()), e).unwrap();
    let ids: std::collections::BTreeSet<String> = kb.chunks().into_iter().map(|c| c.id).collect();
    let questions = |file: &str| {
        let qs = load_questions(&Path::new(ROOT).join("tests/kb_eval").join(file)).unwrap();
        for q in &qs {
            for a in &q.answers {
                assert!(
                    ids.contains(a),
                    "question {:?} cites unknown chunk {a}",
                    q.q
                );
            }
        }
        qs
    };
    // The tuning set: RRF constants and query normalisation were chosen on it (odd questions).
    let tuning = questions("questions.yaml");
    // Written before any of those choices and never used to make one.
    let heldout = questions("heldout.yaml");
    // Written by a separate author from the policies alone, without seeing the other two sets
    // or any result, and never used to choose anything.
    let blind = questions("blind.yaml");
    assert!(tuning.len() >= 40 && heldout.len() >= 30 && blind.len() >= 40);
    for (qs, at_least, mrr_at_least) in [
        (&tuning, 0.86, 0.75),
        (&heldout, 0.94, 0.75),
        (&blind, 0.81, 0.68),
    ] {
        let hybrid = evaluate(&kb, qs, Mode::Hybrid).unwrap();
        let dense = evaluate(&kb, qs, Mode::Dense).unwrap();
        let bm25 = evaluate(&kb, qs, Mode::Bm25).unwrap();
        eprintln!("dense {dense:?}\nbm25 {bm25:?}\nhybrid {hybrid:?}");
        // Measured 0.873 (tuning), 0.971 (held out) and 0.833 (blind), BENCHMARKS.md; each
        // bound is about one question below. The 0.90 target is NOT met on the tuning
        // and blind sets.
        assert!(
            hybrid.recall_at_5 >= at_least,
            "hybrid recall@5 {:.3} < {at_least}; misses: {:#?}",
            hybrid.recall_at_5,
            hybrid.misses_at_5
        );
        assert!(hybrid.recall_at_5 > dense.recall_at_5 && hybrid.recall_at_5 > bm25.recall_at_5);
        assert!(hybrid.mrr > mrr_at_least, "hybrid MRR {}", hybrid.mrr);
    }
}

#[test]
fn filters_restrict_results_by_policy_type_and_jurisdiction() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(paths(dir.path()), Box::new(HashedNgrams)).unwrap();
    let hits = kb
        .search(
            "refund for a late parcel",
            10,
            &Filters {
                policy_type: Some("shipping".into()),
                jurisdiction: None,
            },
            Mode::Hybrid,
        )
        .unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.policy_type == "shipping"));
    let eu = kb
        .search(
            "cancel within fourteen days",
            20,
            &Filters {
                policy_type: None,
                jurisdiction: Some("EU".into()),
            },
            Mode::Hybrid,
        )
        .unwrap();
    assert!(
        eu.iter().all(|h| h.doc_id != "shipping"),
        "shipping is US-only"
    );
    assert!(eu
        .iter()
        .any(|h| h.chunk_id == "returns/eu-withdrawal-right"));
}

#[test]
fn documents_added_replaced_and_deleted_at_run_time_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || KnowledgeBase::open(paths(dir.path()), Box::new(HashedNgrams)).unwrap();
    let kb = open();
    assert_eq!(kb.opened_from, OpenedFrom::Rebuilt);
    let shipped = kb.chunks().len();
    drop(kb);
    let kb = open();
    assert_eq!(
        kb.opened_from,
        OpenedFrom::Persisted,
        "nothing changed: no rebuild"
    );

    assert_eq!(
        kb.add_document(NEW_DOC, "gift-cards.md").unwrap(),
        "gift-cards"
    );
    let top = kb
        .search(
            "can I turn my gift card balance into cash",
            1,
            &Filters::default(),
            Mode::Hybrid,
        )
        .unwrap();
    assert_eq!(top[0].chunk_id, "gift-cards/no-cash-out");
    // Replace: same id, one section.
    let replaced = NEW_DOC
        .replace("sections: [no-cash-out, expiry]", "sections: [no-cash-out]")
        .split("## [expiry]")
        .next()
        .unwrap()
        .to_string();
    kb.add_document(&replaced, "gift-cards.md").unwrap();
    assert_eq!(kb.chunks().len(), shipped + 1);
    // Delete a shipped document.
    assert_eq!(kb.delete_document("warranty").unwrap(), 8);
    assert!(kb.delete_document("warranty").is_err());
    let after = kb.chunks().len();
    drop(kb);

    let kb = open();
    assert_eq!(
        kb.opened_from,
        OpenedFrom::Persisted,
        "runtime changes were persisted"
    );
    assert_eq!(kb.chunks().len(), after);
    assert!(kb.document_ids().contains("gift-cards"));
    assert!(!kb.document_ids().contains("warranty"));
    let hits = kb
        .search(
            "warranty claim for a broken chair",
            20,
            &Filters::default(),
            Mode::Hybrid,
        )
        .unwrap();
    assert!(hits.iter().all(|h| h.doc_id != "warranty"));
    // Adding the shipped document back removes the deletion.
    let warranty = std::fs::read_to_string(Path::new(ROOT).join("policies/warranty.md")).unwrap();
    kb.add_document(&warranty, "warranty.md").unwrap();
    drop(kb);
    assert!(open().document_ids().contains("warranty"));
}

#[test]
fn a_changed_embedder_or_document_triggers_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    for f in ["refund.md", "shipping.md"] {
        std::fs::copy(
            Path::new(ROOT).join("policies").join(f),
            policies.path().join(f),
        )
        .unwrap();
    }
    let p = KbPaths {
        policies_dir: policies.path().to_path_buf(),
        data_dir: dir.path().to_path_buf(),
    };
    let kb = KnowledgeBase::open(p.clone(), Box::new(HashedNgrams)).unwrap();
    assert_eq!(kb.opened_from, OpenedFrom::Rebuilt);
    drop(kb);
    assert_eq!(
        KnowledgeBase::open(p.clone(), Box::new(HashedNgrams))
            .unwrap()
            .opened_from,
        OpenedFrom::Persisted
    );
    let text = std::fs::read_to_string(policies.path().join("refund.md")).unwrap();
    std::fs::write(
        policies.path().join("refund.md"),
        text.replace("100% of the item price", "the full item price"),
    )
    .unwrap();
    assert_eq!(
        KnowledgeBase::open(p.clone(), Box::new(HashedNgrams))
            .unwrap()
            .opened_from,
        OpenedFrom::Rebuilt,
        "an edited policy is re-embedded"
    );
    if let Some(e) = minilm() {
        assert_eq!(
            KnowledgeBase::open(p, e).unwrap().opened_from,
            OpenedFrom::Rebuilt,
            "another embedder re-embeds"
        );
    }
}

#[test]
fn bad_documents_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(paths(dir.path()), Box::new(HashedNgrams)).unwrap();
    let before = kb.chunks();
    let err = |text: &str| format!("{:#}", kb.add_document(text, "upload.md").unwrap_err());
    assert!(err("").contains("the document is empty"));
    assert!(err("# Just a title\n\n## [a] A\nText\n").contains("no front matter"));
    assert!(err(&"y".repeat(300_000)).contains("the limit is 262144"));
    assert!(
        err(&NEW_DOC.replace("policy_type: refund", "policy_type: snacks"))
            .contains("policy_type `snacks`")
    );
    assert_eq!(kb.chunks(), before);
    assert!(!dir.path().join("documents/gift-cards.md").exists());
}

#[test]
fn concurrent_searches_and_a_writer_do_not_interfere() {
    let dir = tempfile::tempdir().unwrap();
    let kb = Arc::new(KnowledgeBase::open(paths(dir.path()), Box::new(HashedNgrams)).unwrap());
    let ids = |hits: Vec<fulfillment_ai::rag::Hit>| -> Vec<String> {
        hits.into_iter().map(|h| h.chunk_id).collect()
    };
    let expected = ids(kb
        .search(
            "payment declined retry",
            3,
            &Filters::default(),
            Mode::Hybrid,
        )
        .unwrap());
    assert!(
        expected.iter().all(|id| id.starts_with("payments/")),
        "{expected:?}"
    );
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let kb = kb.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let got = ids(kb
                        .search(
                            "payment declined retry",
                            3,
                            &Filters::default(),
                            Mode::Hybrid,
                        )
                        .unwrap());
                    assert_eq!(got, expected, "the new documents are about gift cards");
                }
            })
        })
        .collect();
    for i in 0..20 {
        let doc = NEW_DOC.replace("id: gift-cards", &format!("id: gift-cards-{i}"));
        kb.add_document(&doc, "doc.md").unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(kb.document_ids().len(), 9 + 20);
}

#[test]
fn the_hashed_fallback_is_used_and_reported_when_the_model_is_missing() {
    let e = embed::load_or_fallback(Path::new("/nonexistent"));
    assert!(e.is_fallback());
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(paths(dir.path()), e).unwrap();
    assert!(kb.embedder_is_fallback());
    assert_eq!(kb.embedder_identity(), "hashed-ngrams-v1");
}
