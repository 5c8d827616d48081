//! `fulfillment-ai run` with the agent stage on (the default), offline backend, over the
//! Superstore replay: every deviation becomes exactly one case in the SQLite store, the actions
//! file holds exactly the recorded actions, refunds above the $500 limit wait for approval and
//! none below it does, and running the same job again (every deviation redelivered) acts on
//! nothing twice. Once on a SQLite file, once on a PostgreSQL server (`DATABASE_URL`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use fulfillment_ai::agents::store::CaseStore;

mod postgres;

fn run_job(out: &Path, database: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_fulfillment-ai"))
        // A free port: the server runs alongside and stops when the replay ends.
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--source",
            "superstore",
            "--out",
        ])
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", database)
        .env("FULFILLMENT_LLM_BACKEND", "auto")
        .env("OPENAI_API_KEY", "")
        .output()
        .expect("run the binary");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "run failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The number printed right before `label` in the agent summary line.
fn number_before(text: &str, label: &str) -> i64 {
    let line = text
        .lines()
        .find(|l| l.starts_with("agents ("))
        .unwrap_or_else(|| panic!("no agent summary in: {text}"));
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("`{label}` not in: {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before `{label}` in: {line}"))
}

#[test]
fn run_resolves_every_deviation_once_and_a_rerun_acts_on_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("agents.sqlite").display());
    resolves_every_deviation_once(&dir.path().join("out"), &database);
}

#[test]
fn on_postgres_run_resolves_every_deviation_once_and_a_rerun_acts_on_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = postgres::PgServer::start();
    resolves_every_deviation_once(&dir.path().join("out"), &server.url);
}

fn resolves_every_deviation_once(out: &Path, database: &str) {
    let out = out.to_path_buf();
    let first = run_job(&out, database);
    assert!(
        first.contains("agents     offline-rules-v1 ->"),
        "no key: offline backend, said at start: {first}"
    );
    let deviations = lines(&out.join("deviations.jsonl"));
    let actions = lines(&out.join("actions.jsonl"));
    assert!(deviations.len() > 1000, "{} deviations", deviations.len());
    assert_eq!(
        number_before(&first, "deviations handed over") as usize,
        deviations.len()
    );
    assert_eq!(
        number_before(&first, "actions published") as usize,
        actions.len()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(CaseStore::connect(database)).unwrap();
    let (cases, runs, recorded) = rt.block_on(store.counts()).unwrap();
    assert_eq!(cases as usize, deviations.len(), "one case per deviation");
    assert_eq!(runs, cases, "one run per case");
    assert_eq!(recorded as usize, actions.len(), "file = store");
    let by_status = rt.block_on(store.status_counts()).unwrap();
    assert_eq!(by_status.get("queued"), None, "nothing left queued");

    // Every action belongs to a deviation of this job and says which backend produced it.
    let ids: BTreeSet<&str> = deviations
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let mut per_tool: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in &actions {
        assert!(ids.contains(a["case_id"].as_str().unwrap()), "{a}");
        assert_eq!(a["backend"], "offline-rules-v1");
        *per_tool
            .entry((
                a["tool"].as_str().unwrap().into(),
                a["status"].as_str().unwrap().into(),
            ))
            .or_default() += 1;
        // Refunds up to $500 are carried out; above it they wait for a supervisor.
        if a["tool"] == "issue_refund" {
            let cents = a["params"]["amount_cents"].as_i64().unwrap();
            match a["status"].as_str().unwrap() {
                "done" => assert!(cents <= 500_00, "{a}"),
                "pending_approval" => assert!(cents > 500_00, "{a}"),
                other => panic!("status {other}"),
            }
        }
    }
    let pending_refunds = per_tool
        .get(&("issue_refund".into(), "pending_approval".into()))
        .copied()
        .unwrap_or(0);
    assert!(pending_refunds > 0, "{per_tool:?}");
    assert_eq!(
        by_status.get("pending_approval").copied().unwrap_or(0) as usize,
        pending_refunds,
        "each case waiting for approval holds one refund: {per_tool:?}"
    );
    // Each payment failure gets one retry, except on orders above $1,000, which go to people.
    let order_value = |d: &serde_json::Value| d["evidence"]["order_value"].as_f64().unwrap_or(0.0);
    let payment_failures: Vec<&serde_json::Value> = deviations
        .iter()
        .filter(|d| d["type"] == "payment_failed")
        .collect();
    let high_value = payment_failures
        .iter()
        .filter(|d| order_value(d) > 1000.0)
        .count();
    assert!(high_value > 0);
    assert_eq!(
        per_tool.get(&("retry_payment".into(), "done".into())),
        Some(&(payment_failures.len() - high_value))
    );
    drop(store);

    // The same job again: every deviation is redelivered to the same store.
    let second = run_job(&out, database);
    assert_eq!(
        number_before(&second, "deviations handed over") as usize,
        deviations.len()
    );
    assert_eq!(number_before(&second, "actions published"), 0, "{second}");
    assert!(lines(&out.join("actions.jsonl")).is_empty());
    let store = rt.block_on(CaseStore::connect(database)).unwrap();
    assert_eq!(
        rt.block_on(store.counts()).unwrap(),
        (cases, runs, recorded),
        "nothing recorded twice"
    );
}
