//! The case store on a real SQLite file and on a real PostgreSQL server (the same checks on
//! both): a deviation is accepted once (also when redelivered after a restart), queued cases
//! survive a restart, a case is finished by exactly one run even when two race, and follow-up
//! messages continue the conversation.

mod postgres;

use std::sync::Arc;

use fulfillment_ai::agents::store::{ActionRecord, CaseStatus, CaseStore, RunRecord};
use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::model::records::{Deviation, DeviationType};
use serde_json::json;

fn deviation(id: &str) -> Deviation {
    Deviation {
        id: id.into(),
        kind: DeviationType::PaymentFailed,
        severity: Severity::Warning,
        order_id: Some("CA-1".into()),
        context: Default::default(),
        evidence: Default::default(),
        summary: format!("payment failed ({id})"),
        event_time: 1,
        detected_at: 2,
    }
}

fn run(case: &str) -> RunRecord {
    RunRecord {
        case_id: case.into(),
        agent: "payment".into(),
        backend: "offline-rules-v1".into(),
        prompt_hash: "abc".into(),
        retrieved: vec!["payments/payment-retries".into()],
        output: Some(json!({"actions": []})),
        verdicts: json!([]),
        outcome: "accepted".into(),
        error: None,
        attempts: 1,
        latency_ms: 3,
        prompt_tokens: 0,
        completion_tokens: 0,
    }
}

fn retry_action() -> Vec<ActionRecord> {
    vec![ActionRecord {
        tool: "retry_payment".into(),
        params: json!({"attempt": 2}),
        status: "done".into(),
    }]
}

/// Runs `check` on a fresh SQLite file and on a fresh PostgreSQL server.
macro_rules! on_both_databases {
    ($sqlite:ident, $postgres:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            $check(&dir.path().join("cases.db").display().to_string()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let server = postgres::PgServer::start();
            $check(&server.url).await;
        }
    };
}

on_both_databases!(
    acted_on_once_across_redelivery_and_restart_sqlite,
    acted_on_once_across_redelivery_and_restart_postgres,
    a_deviation_is_acted_on_once_across_redelivery_and_restart
);
on_both_databases!(
    racing_runs_finish_a_case_exactly_once_sqlite,
    racing_runs_finish_a_case_exactly_once_postgres,
    racing_runs_finish_a_case_exactly_once
);
on_both_databases!(
    follow_up_messages_continue_the_case_sqlite,
    follow_up_messages_continue_the_case_postgres,
    follow_up_messages_continue_the_case
);

/// Ids of the cases still queued, oldest first.
async fn queued_ids(store: &CaseStore) -> Vec<String> {
    store
        .queued()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect()
}

async fn a_deviation_is_acted_on_once_across_redelivery_and_restart(db: &str) {
    let store = CaseStore::connect(db).await.unwrap();
    assert!(store.accept(&deviation("d1")).await.unwrap());
    assert!(store.accept(&deviation("d2")).await.unwrap());
    assert!(!store.accept(&deviation("d1")).await.unwrap(), "redelivery");
    drop(store);

    // Restart: both accepted deviations are still queued, in order.
    let store = CaseStore::connect(db).await.unwrap();
    let ids = queued_ids(&store).await;
    assert_eq!(ids, vec!["d1", "d2"]);
    assert!(store
        .finish_run(&run("d1"), &retry_action(), CaseStatus::Resolved, false)
        .await
        .unwrap());
    // The same case finished again (a redelivered run): refused, nothing recorded.
    assert!(!store
        .finish_run(&run("d1"), &retry_action(), CaseStatus::Resolved, false)
        .await
        .unwrap());
    assert_eq!(
        store.actions("d1").await.unwrap(),
        vec![("retry_payment".to_string(), "done".to_string())]
    );
    assert!(!store.accept(&deviation("d1")).await.unwrap());
    drop(store);

    let store = CaseStore::connect(db).await.unwrap();
    let ids = queued_ids(&store).await;
    assert_eq!(ids, vec!["d2"]);
    assert_eq!(
        store.status("d1").await.unwrap().as_deref(),
        Some("resolved")
    );
    assert_eq!(store.counts().await.unwrap(), (2, 1, 1));
}

async fn racing_runs_finish_a_case_exactly_once(db: &str) {
    let store = Arc::new(CaseStore::connect(db).await.unwrap());
    for i in 0..20 {
        store.accept(&deviation(&format!("r{i}"))).await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for i in 0..20 {
                if s.finish_run(
                    &run(&format!("r{i}")),
                    &retry_action(),
                    CaseStatus::Resolved,
                    false,
                )
                .await
                .unwrap()
                {
                    won += 1;
                }
            }
            won
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 20);
    assert_eq!(store.counts().await.unwrap(), (20, 20, 20));
}

async fn follow_up_messages_continue_the_case(db: &str) {
    let store = CaseStore::connect(db).await.unwrap();
    store.accept(&deviation("c1")).await.unwrap();
    store
        .finish_run(
            &run("c1"),
            &retry_action(),
            CaseStatus::PendingApproval,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .add_message("c1", "operator", "approve the retry")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.add_message("c1", "customer", "thanks").await.unwrap(),
        3
    );
    // A follow-up run reopens the case explicitly.
    assert!(store
        .finish_run(&run("c1"), &[], CaseStatus::Resolved, true)
        .await
        .unwrap());
    let m = store.messages("c1").await.unwrap();
    let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, vec!["deviation", "operator", "customer"]);
    assert_eq!(store.counts().await.unwrap(), (1, 2, 1));
    assert!(store.add_message("nope", "operator", "x").await.is_err());
}
