//! The orchestrated agent stage end to end on a real SQLite store and a real faiss/BM25 knowledge
//! base: every offered deviation becomes exactly one case with one run, actions are published
//! once, redelivery after a restart changes nothing, cases a crash left queued are finished at
//! the next start, a full queue hands deviations back instead of blocking, and a model that
//! hangs ends in escalation with the reason recorded. The main case also runs on PostgreSQL.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fulfillment_ai::agents::backend::{OpenAiBackend, StructuredOutput};
use fulfillment_ai::agents::orchestrator::{start, ActionMessage, Backend, StageConfig};
use fulfillment_ai::agents::store::CaseStore;
use fulfillment_ai::agents::RoutingTable;
use fulfillment_ai::config::duration::Duration as ConfigDuration;
use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::llm::stub::{Behaviour, StubServer};
use fulfillment_ai::llm::OpenAiSettings;
use fulfillment_ai::model::records::{Deviation, DeviationType as T};
use fulfillment_ai::rag::embed::HashedNgrams;
use fulfillment_ai::rag::{KbPaths, KnowledgeBase};

mod postgres;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn dev(id: &str, kind: T, severity: Severity, evidence: &[(&str, f64)]) -> Deviation {
    Deviation {
        id: id.into(),
        kind,
        severity,
        order_id: Some(format!("CA-{id}")),
        context: [("segment".into(), "Consumer".into())]
            .into_iter()
            .collect(),
        evidence: evidence.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
        summary: format!("{} on order CA-{id}", kind.as_str()),
        event_time: 0,
        detected_at: 0,
    }
}

fn deviations() -> Vec<Deviation> {
    let mut v = Vec::new();
    for i in 0..10 {
        v.push(dev(
            &format!("pay{i}"),
            T::PaymentFailed,
            Severity::Warning,
            &[("amount", 80.0), ("attempt", 1.0 + (i % 3) as f64)],
        ));
        v.push(dev(
            &format!("ref{i}"),
            T::RefundRequested,
            Severity::Info,
            &[
                ("amount", 100.0),
                ("days_since_delivery", 10.0 + 10.0 * i as f64),
            ],
        ));
        v.push(dev(
            &format!("gap{i}"),
            T::FulfillmentGap,
            Severity::Warning,
            &[("hours_in_transit", 90.0)],
        ));
        v.push(dev(
            &format!("tix{i}"),
            T::TicketRaised,
            Severity::Info,
            &[],
        ));
    }
    v.push(dev(
        "big",
        T::PaymentFailed,
        Severity::Warning,
        &[("amount", 1500.0)],
    ));
    v.push(dev(
        "kpi",
        T::KpiThresholdBreach,
        Severity::Critical,
        &[("value", 0.4)],
    ));
    // A full refund of $600 is above the $500 agent limit: it waits for the Refunds Supervisor.
    v.push(dev(
        "ref-big",
        T::RefundRequested,
        Severity::Info,
        &[("amount", 600.0), ("days_since_delivery", 10.0)],
    ));
    v
}

struct Fixture {
    _dir: tempfile::TempDir,
    table: Arc<RoutingTable>,
    kb: Arc<KnowledgeBase>,
    /// The case store: a SQLite file, or a PostgreSQL URL.
    db: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(
        KbPaths {
            policies_dir: Path::new(ROOT).join("policies"),
            data_dir: dir.path().join("kb"),
        },
        Box::new(HashedNgrams),
    )
    .unwrap();
    Fixture {
        table: Arc::new(RoutingTable::load(&Path::new(ROOT).join("config/agents.yaml")).unwrap()),
        kb: Arc::new(kb),
        db: dir.path().join("cases.db").display().to_string(),
        _dir: dir,
    }
}

async fn run_stage(
    f: &Fixture,
    backend: Backend,
    cfg: StageConfig,
    input: &[Deviation],
) -> Vec<ActionMessage> {
    let store = Arc::new(CaseStore::connect(&f.db).await.unwrap());
    let (tx, rx) = crossbeam_channel::unbounded();
    let stage = start(cfg, f.table.clone(), f.kb.clone(), store, backend, tx)
        .await
        .unwrap();
    for d in input {
        let mut d = d.clone();
        // A full queue gives the deviation back; the caller keeps it and offers it again.
        loop {
            match stage.offer(d) {
                None => break,
                Some(back) => {
                    d = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    stage.finish().await;
    rx.try_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deviation_is_resolved_once_and_redelivery_changes_nothing() {
    resolved_once_across_restart_and_redelivery(fixture()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_every_deviation_is_resolved_once_and_redelivery_changes_nothing() {
    let server = postgres::PgServer::start();
    let mut f = fixture();
    f.db = server.url.clone();
    resolved_once_across_restart_and_redelivery(f).await;
}

async fn resolved_once_across_restart_and_redelivery(f: Fixture) {
    let input = deviations();
    let cfg = StageConfig {
        queue_capacity: 2,
        ..StageConfig::default()
    };
    let published = run_stage(&f, Backend::Offline, cfg, &input).await;
    let store = CaseStore::connect(&f.db).await.unwrap();
    let (cases, runs, actions) = store.counts().await.unwrap();
    assert_eq!((cases, runs), (43, 43));
    assert_eq!(actions as usize, published.len());
    assert!(store.queued().await.unwrap().is_empty());
    // Refund within 30 days: resolved by a refund of the full $100, cited.
    assert_eq!(
        store.status("ref0").await.unwrap().as_deref(),
        Some("resolved")
    );
    let refund = published
        .iter()
        .find(|a| a.case_id == "ref0" && a.tool == "issue_refund")
        .unwrap();
    assert_eq!(refund.params["amount_cents"], 100_00);
    assert_eq!(refund.backend, "offline-rules-v1");
    // Day 70: no refund is issued.
    assert!(!published
        .iter()
        .any(|a| a.case_id == "ref6" && a.tool == "issue_refund"));
    // Over $1,000: routed to people.
    let big: Vec<&str> = published
        .iter()
        .filter(|a| a.case_id == "big")
        .map(|a| a.tool.as_str())
        .collect();
    assert!(big.contains(&"request_human_approval"), "{big:?}");
    assert_eq!(
        store.status("ref-big").await.unwrap().as_deref(),
        Some("pending_approval")
    );
    let big_refund: Vec<(&str, &str)> = published
        .iter()
        .filter(|a| a.case_id == "ref-big")
        .map(|a| (a.tool.as_str(), a.status.as_str()))
        .collect();
    assert!(
        big_refund.contains(&("issue_refund", "pending_approval")),
        "{big_refund:?}"
    );
    assert!(
        big_refund.contains(&("request_human_approval", "done")),
        "{big_refund:?}"
    );
    // The third failed payment holds the order instead of retrying.
    assert!(published
        .iter()
        .any(|a| a.case_id == "pay2" && a.tool == "hold_order"));
    drop(store);

    // Restart and redeliver everything: no new runs, nothing published.
    let again = run_stage(&f, Backend::Offline, StageConfig::default(), &input).await;
    assert!(again.is_empty(), "{again:?}");
    let store = CaseStore::connect(&f.db).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), (43, 43, actions));

    // A case accepted just before a crash is finished at the next start.
    let late = dev("late", T::TicketRaised, Severity::Info, &[]);
    assert!(store.accept(&late).await.unwrap());
    drop(store);
    let resumed = run_stage(&f, Backend::Offline, StageConfig::default(), &[]).await;
    assert!(resumed.iter().all(|a| a.case_id == "late") && !resumed.is_empty());
    let store = CaseStore::connect(&f.db).await.unwrap();
    assert_eq!(store.counts().await.unwrap().1, 44);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_model_ends_in_escalation_with_the_reason() {
    let f = fixture();
    let stub = StubServer::start("127.0.0.1:0").unwrap();
    stub.script(vec![Behaviour::Hang; 100]);
    let settings = OpenAiSettings {
        base_url: stub.base_url(),
        api_key_env: "FULFILLMENT_TEST_NO_KEY".into(),
        // Long enough that a loaded stub has recorded each request before the client gives up.
        timeout: ConfigDuration(1000),
        max_retries: 0,
    };
    let backend = Backend::OpenAi(Box::new(
        OpenAiBackend::new(&settings, "stub-chat", StructuredOutput::JsonSchema, 3).unwrap(),
    ));
    let input: Vec<Deviation> = deviations().into_iter().take(6).collect();
    let published = run_stage(&f, backend, StageConfig::default(), &input).await;
    let store = CaseStore::connect(&f.db).await.unwrap();
    assert_eq!(store.counts().await.unwrap().0, 6);
    for d in &input {
        assert_eq!(
            store.status(&d.id).await.unwrap().as_deref(),
            Some("escalated"),
            "{}",
            d.id
        );
        let tools: Vec<&str> = published
            .iter()
            .filter(|a| a.case_id == d.id)
            .map(|a| a.tool.as_str())
            .collect();
        assert_eq!(tools, vec!["create_ticket", "request_human_approval"]);
    }
    let reason = published[0].params["reason"].as_str().unwrap();
    assert!(
        reason.contains("timed out") && reason.contains("after 3 attempts"),
        "{reason}"
    );
    // Three attempts per case reached the stub.
    assert_eq!(stub.requests().len(), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_continues_the_case_with_its_history() {
    let f = fixture();
    let stub = StubServer::start("127.0.0.1:0").unwrap();
    stub.set_chat_content(
        r#"{"actions":[{"tool":"draft_customer_message","params":{"template":"apology"}}],
            "customer_message":"We are sorry for the wait; an update follows today.",
            "rationale":"Apologise and update the customer.",
            "citations":["communication/apology"],"confidence":0.7}"#,
    );
    let settings = OpenAiSettings {
        base_url: stub.base_url(),
        api_key_env: "FULFILLMENT_TEST_NO_KEY".into(),
        timeout: ConfigDuration(5_000),
        max_retries: 0,
    };
    let backend = Backend::OpenAi(Box::new(
        OpenAiBackend::new(&settings, "stub-chat", StructuredOutput::JsonSchema, 1).unwrap(),
    ));
    let store = Arc::new(CaseStore::connect(&f.db).await.unwrap());
    let (tx, _rx) = crossbeam_channel::unbounded();
    let stage = start(
        StageConfig::default(),
        f.table.clone(),
        f.kb.clone(),
        store.clone(),
        backend,
        tx,
    )
    .await
    .unwrap();
    assert!(stage
        .offer(dev("tix", T::TicketRaised, Severity::Info, &[]))
        .is_none());
    // Wait until the first run is recorded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.counts().await.unwrap().1 != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run was not recorded in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = stage
        .follow_up("tix", "customer", "I still have not heard back")
        .await
        .unwrap();
    assert!(
        ["resolved", "escalated"].contains(&status.as_str()),
        "{status}"
    );
    assert!(stage.follow_up("nope", "customer", "hello").await.is_err());
    assert!(stage.follow_up("tix", "robot", "hello").await.is_err());
    stage.finish().await;

    // Two runs on the case; the second prompt carried the conversation so far.
    let chats: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 2);
    let second = chats[1].body.to_string();
    assert!(
        second.contains("customer: I still have not heard back"),
        "{second}"
    );
    assert!(
        second.contains("agent: We are sorry for the wait"),
        "{second}"
    );
    assert!(!chats[0].body.to_string().contains("Earlier turn"));
    let roles: Vec<String> = store
        .messages("tix")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.role)
        .collect();
    assert_eq!(roles, ["deviation", "agent", "customer", "agent"]);
    assert_eq!(store.counts().await.unwrap().1, 2);
}

/// Each agent on the real MiniLM knowledge base: the deviation reaches the intended agent,
/// retrieval stays within that agent's policy types, the resolution cites only retrieved
/// sections, passes the guardrails and uses the agent's own tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_resolves_from_its_own_retrieved_policy() {
    let f = fixture();
    let model = Path::new(ROOT).join("models/all-MiniLM-L6-v2");
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(
        KbPaths {
            policies_dir: Path::new(ROOT).join("policies"),
            data_dir: dir.path().join("kb"),
        },
        fulfillment_ai::rag::embed::load_or_fallback(&model),
    )
    .unwrap();
    assert!(
        !kb.embedder_is_fallback(),
        "the MiniLM model is missing: run scripts/setup.sh"
    );
    let policy_type: std::collections::HashMap<String, String> = kb
        .chunks()
        .into_iter()
        .map(|c| (c.id, c.policy_type))
        .collect();
    let cases = [
        (
            dev(
                "ship",
                T::SlaDeliveryBreach,
                Severity::Warning,
                &[("order_value", 80.0)],
            ),
            "shipment",
            "contact_carrier",
        ),
        (
            dev(
                "care",
                T::TicketRaised,
                Severity::Info,
                &[("order_value", 50.0)],
            ),
            "customer_service",
            "draft_customer_message",
        ),
        (
            dev(
                "refund",
                T::RefundRequested,
                Severity::Info,
                &[
                    ("amount", 240.0),
                    ("order_value", 240.0),
                    ("days_since_delivery", 45.0),
                ],
            ),
            "refund",
            "issue_refund",
        ),
        (
            dev(
                "pay",
                T::PaymentFailed,
                Severity::Warning,
                &[("attempt", 1.0), ("order_value", 80.0)],
            ),
            "payment",
            "retry_payment",
        ),
        (
            dev(
                "region",
                T::KpiThresholdBreach,
                Severity::Critical,
                &[("value", 0.41)],
            ),
            "escalation",
            "create_ticket",
        ),
    ];
    let kb = Arc::new(kb);
    let store = Arc::new(CaseStore::connect(&f.db).await.unwrap());
    let (tx, rx) = crossbeam_channel::unbounded();
    let stage = start(
        StageConfig::default(),
        f.table.clone(),
        kb,
        store.clone(),
        Backend::Offline,
        tx,
    )
    .await
    .unwrap();
    for (d, _, _) in &cases {
        assert!(stage.offer(d.clone()).is_none());
    }
    stage.finish().await;
    let published: Vec<ActionMessage> = rx.try_iter().collect();
    for (d, agent, tool) in &cases {
        let runs = store.runs(&d.id).await.unwrap();
        assert_eq!(runs.len(), 1, "{}", d.id);
        let run = &runs[0];
        assert_eq!(
            (run.agent.as_str(), run.outcome.as_str()),
            (*agent, "accepted"),
            "{}: {run:?}",
            d.id
        );
        let allowed = &f
            .table
            .spec(serde_json::from_value(serde_json::json!(agent)).unwrap())
            .policy_types;
        assert!(!run.retrieved.is_empty());
        for id in &run.retrieved {
            assert!(
                allowed.contains(&policy_type[id]),
                "{}: retrieved {id} outside {allowed:?}",
                d.id
            );
        }
        let citations: Vec<String> =
            serde_json::from_value(run.output.as_ref().unwrap()["citations"].clone()).unwrap();
        assert!(!citations.is_empty(), "{}", d.id);
        assert!(
            citations.iter().all(|c| run.retrieved.contains(c)),
            "{}: cited {citations:?}, retrieved {:?}",
            d.id,
            run.retrieved
        );
        assert!(
            published
                .iter()
                .any(|a| a.case_id == d.id && a.tool == *tool && a.status == "done"),
            "{}: {published:?}",
            d.id
        );
    }
    // The refund is the policy's worked example: $240 at day 45 is a 50% refund.
    let refund = published
        .iter()
        .find(|a| a.case_id == "refund" && a.tool == "issue_refund")
        .unwrap();
    assert_eq!(refund.params["amount_cents"], 120_00);
    // A critical regional breach is a P1 ticket.
    let ticket = published
        .iter()
        .find(|a| a.case_id == "region" && a.tool == "create_ticket")
        .unwrap();
    assert_eq!(ticket.params["priority"], "P1");
}
