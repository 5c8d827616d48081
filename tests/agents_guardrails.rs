//! Guardrails on proposed resolutions: allowed tools, citations limited to retrieved chunks,
//! refund amounts within the policy entitlement, approvals above the limits, credit caps and
//! personal data in customer messages. Each case asserts the exact verdict.

use std::collections::BTreeSet;
use std::path::Path;

use fulfillment_ai::agents::resolution::{
    check, decide, CaseFacts, Outcome, ProposedAction, Resolution,
};
use fulfillment_ai::agents::{AgentKind, RoutingTable, Tool};
use serde_json::json;

fn table() -> RoutingTable {
    RoutingTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agents.yaml")).unwrap()
}

fn action(tool: Tool, cents: Option<i64>) -> ProposedAction {
    let params = match cents {
        Some(c) => json!({ "amount_cents": c }),
        None => json!({}),
    };
    ProposedAction {
        tool,
        params: params.as_object().unwrap().clone(),
    }
}

fn resolution(actions: Vec<ProposedAction>, cites: &[&str], message: Option<&str>) -> Resolution {
    Resolution {
        actions,
        customer_message: message.map(str::to_string),
        rationale: "per policy".into(),
        citations: cites.iter().map(|c| c.to_string()).collect(),
        confidence: 0.8,
    }
}

fn retrieved() -> BTreeSet<String> {
    [
        "refund/full-refund-30-days",
        "refund/partial-refund-30-60-days",
        "compensation/late-delivery",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// A $240 order delivered 45 days ago: entitled to $120 (refund/partial-refund-30-60-days).
fn facts() -> CaseFacts {
    CaseFacts {
        order_value: Some(240_00),
        days_since_delivery: Some(45),
        ..CaseFacts::default()
    }
}

fn outcome_of(r: &Resolution, agent: AgentKind, f: &CaseFacts) -> (Outcome, Vec<String>) {
    let t = table();
    let v = check(r, t.spec(agent), &retrieved(), f, &t.limits);
    let bad = v
        .iter()
        .filter(|v| v.outcome != Outcome::Pass)
        .map(|v| format!("{}: {}", v.guardrail, v.detail))
        .collect();
    (decide(&v), bad)
}

#[test]
fn a_refund_within_the_entitlement_passes() {
    let r = resolution(
        vec![action(Tool::IssueRefund, Some(120_00))],
        &["refund/partial-refund-30-60-days"],
        Some("Hi Ana, we refunded $120.00 for order CA-2016-1001 to the card ending 4242."),
    );
    assert_eq!(
        outcome_of(&r, AgentKind::Refund, &facts()),
        (Outcome::Pass, vec![])
    );
}

#[test]
fn money_above_the_entitlement_or_limits_is_caught() {
    // The model asks for the full price 45 days after delivery: rejected.
    let r = resolution(
        vec![action(Tool::IssueRefund, Some(240_00))],
        &["refund/partial-refund-30-60-days"],
        None,
    );
    let (o, why) = outcome_of(&r, AgentKind::Refund, &facts());
    assert_eq!(o, Outcome::Reject);
    assert!(
        why[0].contains("exceeds the policy entitlement $120.00"),
        "{why:?}"
    );
    // Within entitlement but the order's refunds would pass $500: the Refunds Supervisor.
    let f = CaseFacts {
        order_value: Some(900_00),
        days_since_delivery: Some(10),
        refunded_so_far: 450_00,
        ..facts()
    };
    let r = resolution(
        vec![action(Tool::IssueRefund, Some(100_00))],
        &["refund/full-refund-30-days"],
        None,
    );
    let (o, why) = outcome_of(&r, AgentKind::Refund, &f);
    assert_eq!(o, Outcome::NeedsApproval);
    assert!(
        why[0].contains("Refunds Supervisor") && why[0].contains("$550.00"),
        "{why:?}"
    );
    // Missing amount: rejected, not guessed.
    let r = resolution(
        vec![action(Tool::IssueRefund, None)],
        &["refund/full-refund-30-days"],
        None,
    );
    assert_eq!(
        outcome_of(&r, AgentKind::Refund, &facts()).0,
        Outcome::Reject
    );
    // Credit above the per-order cap: the excess needs Tier 2.
    let f = CaseFacts {
        credit_on_order: 140_00,
        ..facts()
    };
    let r = resolution(
        vec![action(Tool::ApplyCredit, Some(45_00))],
        &["compensation/late-delivery"],
        None,
    );
    let (o, why) = outcome_of(&r, AgentKind::Refund, &f);
    assert_eq!(o, Outcome::NeedsApproval);
    assert!(why[0].contains("$35.00 of $45.00"), "{why:?}");
}

#[test]
fn tools_citations_and_personal_data_are_enforced() {
    // The payment agent may not issue refunds.
    let r = resolution(
        vec![action(Tool::IssueRefund, Some(10_00))],
        &["refund/full-refund-30-days"],
        None,
    );
    let (o, why) = outcome_of(&r, AgentKind::Payment, &facts());
    assert_eq!(o, Outcome::Reject);
    assert!(
        why.iter().any(|w| w.starts_with("allowed_tools")),
        "{why:?}"
    );
    // Citing a chunk that was not retrieved rejects the resolution, as does citing nothing.
    let r = resolution(
        vec![action(Tool::CreateTicket, None)],
        &["escalation/legal-threats"],
        None,
    );
    let (o, why) = outcome_of(&r, AgentKind::Escalation, &facts());
    assert_eq!(o, Outcome::Reject);
    assert!(
        why[0].contains("not retrieved: escalation/legal-threats"),
        "{why:?}"
    );
    let r = resolution(vec![action(Tool::CreateTicket, None)], &[], None);
    assert_eq!(
        outcome_of(&r, AgentKind::Escalation, &facts()).0,
        Outcome::Reject
    );
    // A message with the customer's email and full card number is rejected.
    let r = resolution(
        vec![action(Tool::DraftCustomerMessage, None)],
        &["refund/full-refund-30-days"],
        Some("We wrote to ana@example.com about card 4242 4242 4242 4242."),
    );
    let (o, why) = outcome_of(&r, AgentKind::CustomerService, &facts());
    assert_eq!(o, Outcome::Reject);
    assert!(
        why[0].contains("Email") && why[0].contains("Card"),
        "{why:?}"
    );
    // Confidence out of range.
    let mut r = resolution(
        vec![action(Tool::CreateTicket, None)],
        &["refund/full-refund-30-days"],
        None,
    );
    r.confidence = 1.5;
    assert_eq!(
        outcome_of(&r, AgentKind::Escalation, &facts()).0,
        Outcome::Reject
    );
}

#[test]
fn the_schema_matches_what_serde_accepts() {
    let schema = Resolution::json_schema();
    let tools = schema["properties"]["actions"]["items"]["properties"]["tool"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(tools.len(), 12);
    assert!(tools.contains(&json!("request_human_approval")));
    let ok: Resolution = serde_json::from_value(json!({
        "actions": [{"tool": "issue_refund", "params": {"amount_cents": 12000}}],
        "customer_message": null, "rationale": "r", "citations": ["refund/lost-parcel"], "confidence": 0.9
    }))
    .unwrap();
    assert_eq!(ok.actions[0].amount_cents(), Some(12000));
    assert!(serde_json::from_value::<Resolution>(json!({
        "actions": [{"tool": "launch_rocket", "params": {}}],
        "customer_message": null, "rationale": "r", "citations": [], "confidence": 0.9
    }))
    .is_err());
}
