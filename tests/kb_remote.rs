//! The knowledge base with `kb.embedder: openai`, against the scripted OpenAI-compatible stub
//! over real HTTP on loopback: the index is built and searched through the endpoint, persisted
//! under the endpoint's identity, and the client retries 429 (waiting out `Retry-After`) and 500,
//! times out on a hung server, rejects malformed answers, degrades hybrid search to BM25 when
//! the endpoint fails, and falls back to hashed vectors when it is unreachable at start.

use std::path::Path;
use std::time::{Duration, Instant};

use fulfillment_ai::config::app::{AppConfig, KbConfig};
use fulfillment_ai::config::duration::Duration as ConfigDuration;
use fulfillment_ai::llm::stub::{Behaviour, StubServer};
use fulfillment_ai::llm::OpenAiSettings;
use fulfillment_ai::rag::embed::Embedder;
use fulfillment_ai::rag::remote::RemoteEmbedder;
use fulfillment_ai::rag::{open_configured, Filters, Mode, OpenedFrom};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn settings(stub: &StubServer, timeout_ms: i64, max_retries: usize) -> OpenAiSettings {
    OpenAiSettings {
        base_url: stub.base_url(),
        // Cargo sets this for test processes; it stands in for a key variable without the
        // test mutating the environment.
        api_key_env: "CARGO_PKG_NAME".into(),
        timeout: ConfigDuration(timeout_ms),
        max_retries,
    }
}

fn kb_config(data: &Path) -> KbConfig {
    KbConfig {
        policies_dir: Path::new(ROOT).join("policies"),
        data_dir: data.to_path_buf(),
        embedder: "openai".into(),
        embedding_model: "stub-embed".into(),
        embedding_batch: 50,
        ..KbConfig::default()
    }
}

#[test]
fn index_is_built_searched_and_persisted_through_the_endpoint() {
    let stub = StubServer::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let openai = settings(&stub, 5_000, 0);
    let kb = open_configured(&kb_config(dir.path()), &openai).unwrap();
    assert!(!kb.embedder_is_fallback());
    assert_eq!(
        kb.embedder_identity(),
        format!("openai:{}:stub-embed:384", stub.base_url())
    );
    assert_eq!(kb.opened_from, OpenedFrom::Rebuilt);
    let reqs = stub.requests();
    // The probe, then every passage in batches of at most 50.
    let passages: usize = reqs[1..]
        .iter()
        .map(|r| r.body["input"].as_array().unwrap().len())
        .sum();
    assert!(reqs.len() >= 3, "{} requests", reqs.len());
    assert!(reqs[1..]
        .iter()
        .all(|r| r.path == "/v1/embeddings" && r.body["model"] == "stub-embed"));
    assert!(reqs[1..]
        .iter()
        .all(|r| r.body["input"].as_array().unwrap().len() <= 50));
    assert!(passages > kb.chunks().len(), "{passages} passages");
    let bearer = format!(
        "Bearer {}",
        std::env::var("CARGO_PKG_NAME").unwrap_or_default()
    );
    assert!(reqs
        .iter()
        .all(|r| r.authorization.as_deref().map(str::trim) == Some(bearer.trim())));

    let hits = kb
        .search(
            "refund 50% between 30 and 60 days",
            5,
            &Filters::default(),
            Mode::Dense,
        )
        .unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.dense_score.is_some()));
    assert_eq!(
        stub.requests().len(),
        reqs.len() + 1,
        "one request per query"
    );
    drop(kb);

    // Reopened: the persisted vectors are reused; only the probe goes out.
    let before = stub.requests().len();
    let kb = open_configured(&kb_config(dir.path()), &openai).unwrap();
    assert_eq!(kb.opened_from, OpenedFrom::Persisted);
    assert_eq!(stub.requests().len(), before + 1);
}

#[test]
fn rate_limits_and_server_errors_are_retried_with_retry_after_honoured() {
    let stub = StubServer::start("127.0.0.1:0").unwrap();
    let e = RemoteEmbedder::connect(&settings(&stub, 5_000, 3), "stub-embed", None, 8).unwrap();
    let n0 = stub.requests().len();
    stub.script([
        Behaviour::RateLimited {
            retry_after_secs: 1,
        },
        Behaviour::ServerError,
    ]);
    let t = Instant::now();
    let v = e.embed(&["lost parcel refund"]).unwrap();
    assert_eq!(v[0].len(), 384);
    let reqs = &stub.requests()[n0..];
    assert_eq!(reqs.len(), 3, "429, 500, then success");
    let waited = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "retried {waited:?} after a 429 with Retry-After: 1"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // Retries run out: the error says what the server said.
    stub.script(vec![Behaviour::ServerError; 4]);
    let err = e.embed(&["x y z"]).unwrap_err().to_string();
    assert!(err.contains("embeddings request failed"), "{err}");
}

#[test]
fn a_hung_or_malformed_endpoint_fails_fast_and_hybrid_search_falls_back_to_bm25() {
    let stub = StubServer::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A timeout well above a loaded machine's answer time and well below the hang.
    let openai = settings(&stub, 1500, 0);
    let kb = open_configured(&kb_config(dir.path()), &openai).unwrap();
    assert!(!kb.embedder_is_fallback(), "the stub answered at start");

    stub.script([Behaviour::Hang]);
    let t = Instant::now();
    let err = kb
        .search("damaged item", 3, &Filters::default(), Mode::Dense)
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(
        format!("{err:#}").contains("embedding the query"),
        "{err:#}"
    );

    stub.script([Behaviour::Malformed]);
    let hits = kb
        .search(
            "damaged item compensation",
            3,
            &Filters::default(),
            Mode::Hybrid,
        )
        .unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits
        .iter()
        .all(|h| h.dense_score.is_none() && h.bm25_score.is_some()));

    // The endpoint works again: dense scores come back.
    let hits = kb
        .search(
            "damaged item compensation",
            3,
            &Filters::default(),
            Mode::Hybrid,
        )
        .unwrap();
    assert!(hits.iter().any(|h| h.dense_score.is_some()));
}

#[test]
fn an_unreachable_endpoint_at_start_falls_back_to_hashed_vectors() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let openai = OpenAiSettings {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        timeout: ConfigDuration(500),
        max_retries: 0,
        ..OpenAiSettings::default()
    };
    let kb = open_configured(&kb_config(dir.path()), &openai).unwrap();
    assert!(kb.embedder_is_fallback());
    assert_eq!(kb.embedder_identity(), "hashed-ngrams-v1");
    assert!(!kb
        .search("refund", 3, &Filters::default(), Mode::Hybrid)
        .unwrap()
        .is_empty());
}

#[test]
fn openai_settings_are_validated_and_read_from_the_environment() {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let cfg = AppConfig::load(
        None,
        env(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:8089/v1"),
            ("FULFILLMENT_KB_EMBEDDER", "openai"),
            ("FULFILLMENT_KB_EMBEDDING_MODEL", "nomic-embed-text"),
            ("FULFILLMENT_OPENAI_TIMEOUT", "2s"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.openai.base_url, "http://127.0.0.1:8089/v1");
    assert_eq!(cfg.openai.timeout, ConfigDuration(2_000));
    assert_eq!(
        (cfg.kb.embedder.as_str(), cfg.kb.embedding_model.as_str()),
        ("openai", "nomic-embed-text")
    );
    let e = AppConfig::load(None, env(&[("OPENAI_BASE_URL", "localhost:8089")])).unwrap_err();
    assert_eq!(e.path, "openai.base_url");
    let e = AppConfig::parse("kb:\n  embedder: cohere\n", "config/app.yaml").unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.path.as_str(), e.reason.as_str()),
        (
            "config/app.yaml",
            "kb.embedder",
            "use `minilm`, `openai` or `hashed`"
        )
    );
}
