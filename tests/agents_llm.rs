//! The model backends: the OpenAI-compatible backend against the scripted stub server over real
//! HTTP (structured output, tool calls, malformed answers, 429 with Retry-After, 500s, hangs),
//! and the offline backend on policy retrieved from the real knowledge base, checked by the
//! guardrails.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use fulfillment_ai::agents::backend::{
    AgentRequest, BackendError, OfflineBackend, OpenAiBackend, RetrievedChunk, StructuredOutput,
};
use fulfillment_ai::agents::resolution::{check, decide, CaseFacts, Outcome};
use fulfillment_ai::agents::{AgentKind, RoutingTable, Tool};
use fulfillment_ai::config::duration::Duration as ConfigDuration;
use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::llm::stub::{Behaviour, StubServer};
use fulfillment_ai::llm::OpenAiSettings;
use fulfillment_ai::model::records::{Deviation, DeviationType};
use fulfillment_ai::rag::{embed, Filters, KbPaths, KnowledgeBase, Mode};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn table() -> RoutingTable {
    RoutingTable::load(&Path::new(ROOT).join("config/agents.yaml")).unwrap()
}

fn refund_deviation() -> Deviation {
    Deviation {
        id: "refund_requested:CA-2016-1001".into(),
        kind: DeviationType::RefundRequested,
        severity: Severity::Info,
        order_id: Some("CA-2016-1001".into()),
        context: [("segment".into(), "Consumer".into())]
            .into_iter()
            .collect(),
        evidence: [("amount".into(), 240.0)].into_iter().collect(),
        summary: "refund requested for order CA-2016-1001, 45 days after delivery".into(),
        event_time: 0,
        detected_at: 0,
    }
}

fn request(retrieved: Vec<RetrievedChunk>) -> AgentRequest {
    let t = table();
    let facts = CaseFacts {
        order_value: Some(240_00),
        days_since_delivery: Some(45),
        ..CaseFacts::default()
    };
    AgentRequest {
        agent: AgentKind::Refund,
        deviation: refund_deviation(),
        computed: vec![t.limits.refund(45, 240_00).unwrap()],
        facts,
        retrieved,
        history: vec![],
        allowed_tools: t.spec(AgentKind::Refund).tools.iter().copied().collect(),
    }
}

fn chunks(ids: &[&str]) -> Vec<RetrievedChunk> {
    ids.iter()
        .map(|id| RetrievedChunk {
            chunk_id: id.to_string(),
            text: format!("text of {id}"),
        })
        .collect()
}

const GOOD: &str = r#"{"actions":[{"tool":"issue_refund","params":{"amount_cents":12000}}],
  "customer_message":"Hi, we refunded $120.00 for order CA-2016-1001.",
  "rationale":"day 45 is in the 50% window","citations":["refund/partial-refund-30-60-days"],
  "confidence":0.85}"#;

fn backend(
    stub: &StubServer,
    timeout_ms: i64,
    retries: usize,
    mode: StructuredOutput,
) -> OpenAiBackend {
    let s = OpenAiSettings {
        base_url: stub.base_url(),
        api_key_env: "FULFILLMENT_TEST_NO_KEY".into(),
        timeout: ConfigDuration(timeout_ms),
        max_retries: retries,
    };
    OpenAiBackend::new(&s, "stub-chat", mode, 3).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_and_tool_calls_parse_into_resolutions() {
    let stub = StubServer::start("127.0.0.1:0").unwrap();
    stub.set_chat_content(GOOD);
    let req = request(chunks(&["refund/partial-refund-30-60-days"]));
    let b = backend(&stub, 5_000, 0, StructuredOutput::JsonSchema);
    let reply = b.resolve(&req).await.unwrap();
    assert_eq!(
        (reply.backend.as_str(), reply.attempts),
        ("openai:stub-chat", 1)
    );
    assert_eq!(reply.resolution.actions[0].amount_cents(), Some(120_00));
    assert!(reply.usage.prompt_tokens > 50 && reply.usage.completion_tokens > 0);
    let sent = stub.requests()[0].body.clone();
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["model"], "stub-chat");
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("[refund/partial-refund-30-60-days]") && user.contains("$120.00"));

    // Tool-call mode: the resolution arrives as the arguments of submit_resolution.
    let b = backend(&stub, 5_000, 0, StructuredOutput::ToolCall);
    stub.script([Behaviour::ToolCall(GOOD.into())]);
    let reply = b.resolve(&req).await.unwrap();
    assert_eq!(
        reply.resolution.citations,
        vec!["refund/partial-refund-30-60-days"]
    );
    let sent = stub.requests().last().unwrap().body.clone();
    assert_eq!(sent["tools"][0]["function"]["name"], "submit_resolution");
    assert_eq!(sent["tool_choice"], "required");

    // A fenced answer is accepted.
    stub.script([Behaviour::ChatContent(format!("```json\n{GOOD}\n```"))]);
    assert!(backend(&stub, 5_000, 0, StructuredOutput::JsonSchema)
        .resolve(&req)
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_rate_limits_errors_and_hangs_are_retried_then_reported() {
    let stub = StubServer::start("127.0.0.1:0").unwrap();
    stub.set_chat_content(GOOD);
    let req = request(chunks(&["refund/partial-refund-30-60-days"]));
    // A timeout a loaded machine's stub always answers within; the hangs below get a short one.
    let b = backend(&stub, 3_000, 1, StructuredOutput::JsonSchema);

    // Malformed twice, then good: three attempts, success.
    stub.script([
        Behaviour::ChatContent("I think a refund is fair".into()),
        Behaviour::Malformed,
    ]);
    let reply = b.resolve(&req).await.unwrap();
    assert_eq!(reply.attempts, 3);

    // Malformed every time: the error and the attempts come back for escalation.
    stub.script(vec![Behaviour::ChatContent("{\"actions\": 5}".into()); 3]);
    let (err, attempts) = b.resolve(&req).await.unwrap_err();
    assert!(matches!(err, BackendError::Malformed(_)), "{err}");
    assert_eq!(attempts, 3);

    // 429 with Retry-After: 1 is waited out by the transport, inside one attempt.
    let n0 = stub.requests().len();
    stub.script([Behaviour::RateLimited {
        retry_after_secs: 1,
    }]);
    let reply = b.resolve(&req).await.unwrap();
    let reqs = &stub.requests()[n0..];
    assert_eq!((reply.attempts, reqs.len()), (1, 2));
    assert!(reqs[1].at.duration_since(reqs[0].at) >= Duration::from_millis(950));

    // 500 twice exhausts one attempt's transport retry (max_retries 1); the next attempt works.
    stub.script([Behaviour::ServerError, Behaviour::ServerError]);
    assert_eq!(b.resolve(&req).await.unwrap().attempts, 2);

    // Hangs: each attempt is cut by the timeout; three hangs fail within a bound.
    stub.script(vec![Behaviour::Hang; 6]);
    let b = backend(&stub, 800, 1, StructuredOutput::JsonSchema);
    let t = Instant::now();
    let (err, attempts) = b.resolve(&req).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout(_)), "{err}");
    assert_eq!(attempts, 3);
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
}

#[test]
fn offline_refund_agent_resolves_from_retrieved_policy_and_passes_the_guardrails() {
    let model = Path::new(ROOT).join("models/all-MiniLM-L6-v2");
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(
        KbPaths {
            policies_dir: Path::new(ROOT).join("policies"),
            data_dir: dir.path().to_path_buf(),
        },
        embed::load_or_fallback(&model),
    )
    .unwrap();
    let t = table();
    let mut req = request(vec![]);
    let spec = t.spec(AgentKind::Refund);
    let mut retrieved = Vec::new();
    for ty in &spec.policy_types {
        let f = Filters {
            policy_type: Some(ty.clone()),
            jurisdiction: None,
        };
        let query = format!("{} {}", req.deviation.summary, req.computed[0].basis);
        for h in kb.search(&query, 2, &f, Mode::Hybrid).unwrap() {
            retrieved.push(RetrievedChunk {
                chunk_id: h.chunk_id,
                text: h.text,
            });
        }
    }
    let ids: BTreeSet<String> = retrieved.iter().map(|r| r.chunk_id.clone()).collect();
    assert!(
        ids.contains("refund/partial-refund-30-60-days"),
        "retrieved {ids:?}"
    );
    req.retrieved = retrieved;
    let reply = OfflineBackend.resolve(&req);
    assert_eq!(reply.backend, "offline-rules-v1");
    let r = &reply.resolution;
    let refund = r
        .actions
        .iter()
        .find(|a| a.tool == Tool::IssueRefund)
        .unwrap();
    assert_eq!(refund.amount_cents(), Some(120_00));
    assert_eq!(r.citations, vec!["refund/partial-refund-30-60-days"]);
    assert!(r.customer_message.as_deref().unwrap().contains("$120.00"));
    let verdicts = check(r, spec, &ids, &req.facts, &t.limits);
    assert_eq!(decide(&verdicts), Outcome::Pass, "{verdicts:?}");
}
