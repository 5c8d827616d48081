//! What an agent proposes ([`Resolution`]: actions with parameters, a customer message, a
//! rationale, policy citations, a confidence) and the guardrails it must pass before anything
//! is carried out.
//!
//! In: a resolution from a backend (offline rules or a model), the agent's allowed tools, the
//! chunk ids retrieved for the run, facts about the order, the policy limits. Out: one verdict
//! per guardrail and the overall decision: accept, send to the human approval queue, or reject
//! (the orchestrator escalates a rejected case with the reasons).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::pii;
use super::policy_math::{dollars, Cents, PolicyLimits};
use super::routing::{AgentSpec, Tool};

/// One tool call the agent wants carried out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposedAction {
    pub tool: Tool,
    #[serde(default)]
    pub params: Map<String, Value>,
}

impl ProposedAction {
    /// An integer parameter in cents (`amount_cents`).
    pub fn amount_cents(&self) -> Option<Cents> {
        self.params.get("amount_cents").and_then(Value::as_i64)
    }
}

/// The structured answer every backend must produce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    pub actions: Vec<ProposedAction>,
    pub customer_message: Option<String>,
    pub rationale: String,
    /// Chunk ids (`doc/section`) of retrieved policy the resolution relies on.
    pub citations: Vec<String>,
    pub confidence: f64,
}

impl Resolution {
    /// JSON schema of [`Resolution`], for structured output (`response_format: json_schema`).
    pub fn json_schema() -> Value {
        let tools: Vec<Value> = ALL_TOOLS
            .iter()
            .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
            .collect();
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["actions", "customer_message", "rationale", "citations", "confidence"],
            "properties": {
                "actions": {"type": "array", "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["tool", "params"],
                    "properties": {
                        "tool": {"type": "string", "enum": tools},
                        "params": {"type": "object"}
                    }
                }},
                "customer_message": {"type": ["string", "null"]},
                "rationale": {"type": "string"},
                "citations": {"type": "array", "items": {"type": "string"}},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1}
            }
        })
    }
}

/// Every tool, for the schema.
pub const ALL_TOOLS: [Tool; 12] = [
    Tool::RescheduleShipment,
    Tool::ContactCarrier,
    Tool::TransferWarehouse,
    Tool::DraftCustomerMessage,
    Tool::ApplyCredit,
    Tool::CheckRefundEligibility,
    Tool::IssueRefund,
    Tool::RetryPayment,
    Tool::HoldOrder,
    Tool::CreateTicket,
    Tool::RequestHumanApproval,
    Tool::HandOff,
];

/// What the guardrails know about the order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseFacts {
    pub order_value: Option<Cents>,
    /// Days since the carrier-recorded delivery; `None` when not delivered.
    pub days_since_delivery: Option<i64>,
    pub days_late: Option<i64>,
    /// The parcel was declared lost: refunds follow refund/lost-parcel.
    pub lost: bool,
    pub shipping_fee: Cents,
    pub vip: bool,
    pub refunded_so_far: Cents,
    pub credit_on_order: Cents,
    pub credit_customer_30d: Cents,
}

/// How one guardrail judged the resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    /// Allowed only with a person's approval.
    NeedsApproval,
    Reject,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub guardrail: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// The overall decision: the worst verdict.
pub fn decide(verdicts: &[Verdict]) -> Outcome {
    if verdicts.iter().any(|v| v.outcome == Outcome::Reject) {
        Outcome::Reject
    } else if verdicts.iter().any(|v| v.outcome == Outcome::NeedsApproval) {
        Outcome::NeedsApproval
    } else {
        Outcome::Pass
    }
}

/// Runs every guardrail. Money is checked against what the policy entitles (computed here,
/// not taken from the model), citations against what was retrieved, tools against the agent's
/// allowance, and the customer message against the data-protection rules.
pub fn check(
    res: &Resolution,
    spec: &AgentSpec,
    retrieved: &BTreeSet<String>,
    facts: &CaseFacts,
    limits: &PolicyLimits,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut push = |guardrail: &str, outcome: Outcome, detail: String| {
        out.push(Verdict {
            guardrail: guardrail.into(),
            outcome,
            detail,
        })
    };
    // Shape.
    if res.actions.is_empty() || res.rationale.trim().is_empty() {
        push(
            "schema",
            Outcome::Reject,
            "a resolution needs at least one action and a rationale".into(),
        );
    } else if !(0.0..=1.0).contains(&res.confidence) || !res.confidence.is_finite() {
        push(
            "schema",
            Outcome::Reject,
            format!("confidence {} is outside 0..1", res.confidence),
        );
    } else {
        push("schema", Outcome::Pass, String::new());
    }
    // Tools.
    let forbidden: Vec<String> = res
        .actions
        .iter()
        .filter(|a| !spec.tools.contains(&a.tool))
        .map(|a| format!("{:?}", a.tool))
        .collect();
    if forbidden.is_empty() {
        push("allowed_tools", Outcome::Pass, String::new());
    } else {
        push(
            "allowed_tools",
            Outcome::Reject,
            format!("not allowed for this agent: {}", forbidden.join(", ")),
        );
    }
    // Citations: at least one, all retrieved.
    let unknown: Vec<&str> = res
        .citations
        .iter()
        .filter(|c| !retrieved.contains(*c))
        .map(String::as_str)
        .collect();
    if res.citations.is_empty() {
        push("citations", Outcome::Reject, "no policy cited".into());
    } else if !unknown.is_empty() {
        push(
            "citations",
            Outcome::Reject,
            format!(
                "cites chunks that were not retrieved: {}",
                unknown.join(", ")
            ),
        );
    } else {
        push("citations", Outcome::Pass, String::new());
    }
    // Refund amounts: within the policy entitlement, approval above the limits.
    let refunds: Vec<Option<Cents>> = res
        .actions
        .iter()
        .filter(|a| a.tool == Tool::IssueRefund)
        .map(ProposedAction::amount_cents)
        .collect();
    if !refunds.is_empty() {
        let entitled = match (facts.lost, facts.days_since_delivery, facts.order_value) {
            (true, _, Some(v)) => Some(limits.lost_parcel(v, facts.shipping_fee).0.amount),
            (false, Some(d), Some(v)) => limits.refund(d, v).map(|c| c.amount),
            _ => None,
        };
        let total: Option<Cents> = refunds.iter().try_fold(0, |acc, a| Some(acc + (*a)?));
        match (total, entitled) {
            (None, _) => push(
                "refund_amount",
                Outcome::Reject,
                "issue_refund needs an integer amount_cents".into(),
            ),
            (Some(t), _) if t <= 0 => push(
                "refund_amount",
                Outcome::Reject,
                format!("refund amount {} is not positive", dollars(t)),
            ),
            (Some(t), Some(e)) if t > e => push(
                "refund_amount",
                Outcome::Reject,
                format!(
                    "refund {} exceeds the policy entitlement {}",
                    dollars(t),
                    dollars(e)
                ),
            ),
            (Some(t), None) => push(
                "refund_amount",
                Outcome::NeedsApproval,
                format!(
                    "entitlement unknown (no delivery date or order value): {} needs a person",
                    dollars(t)
                ),
            ),
            (Some(t), Some(_)) => match limits.refund_approval(
                t,
                facts.refunded_so_far,
                facts.order_value.unwrap_or(0),
                facts.vip,
            ) {
                Some(a) => push(
                    "refund_approval",
                    Outcome::NeedsApproval,
                    format!("{} approves ({}): {}", a.approver, a.cites, a.reason),
                ),
                None => push("refund_amount", Outcome::Pass, dollars(t)),
            },
        }
    }
    // Store credit: within the caps.
    let credits: Vec<Option<Cents>> = res
        .actions
        .iter()
        .filter(|a| a.tool == Tool::ApplyCredit)
        .map(ProposedAction::amount_cents)
        .collect();
    if !credits.is_empty() {
        match credits.iter().try_fold(0, |acc, a| Some(acc + (*a)?)) {
            Some(t) if t > 0 => {
                let capped = limits.cap_credit(t, facts.credit_on_order, facts.credit_customer_30d);
                if capped.needs_approval > 0 {
                    push(
                        "credit_caps",
                        Outcome::NeedsApproval,
                        format!(
                            "{} of {} is above the caps (compensation/caps-and-stacking): Tier 2 approves",
                            dollars(capped.needs_approval),
                            dollars(t)
                        ),
                    );
                } else {
                    push("credit_caps", Outcome::Pass, dollars(t));
                }
            }
            _ => push(
                "credit_caps",
                Outcome::Reject,
                "apply_credit needs a positive integer amount_cents".into(),
            ),
        }
    }
    // Personal data in the customer message.
    if let Some(msg) = &res.customer_message {
        let found = pii::find(msg);
        if found.is_empty() {
            push("customer_message_pii", Outcome::Pass, String::new());
        } else {
            push(
                "customer_message_pii",
                Outcome::Reject,
                format!("message contains {found:?} (data-protection/customer-message-data)"),
            );
        }
    }
    out
}
