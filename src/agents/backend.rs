//! Where resolutions come from: an OpenAI-compatible model through async-openai (structured
//! output by `json_schema`, or a `submit_resolution` tool call), or the offline deterministic
//! backend, which is the default when no API key is configured and labels every record as such.
//!
//! In: an [`AgentRequest`] (agent, prompts with personal data already redacted, retrieved
//! chunks, amounts computed from policy, facts). Out: a [`BackendReply`] with the parsed
//! [`Resolution`], the backend label, attempts and token usage, or a [`BackendError`] saying
//! whether retrying could help.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionTool, ChatCompletionToolChoiceOption,
    ChatCompletionTools, CreateChatCompletionRequestArgs, FunctionObjectArgs, ResponseFormat,
    ResponseFormatJsonSchema,
};
use async_openai::Client;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::policy_math::{dollars, Computed};
use super::resolution::{CaseFacts, ProposedAction, Resolution};
use super::routing::{AgentKind, Tool};
use crate::llm::OpenAiSettings;
use crate::model::records::{Deviation, DeviationType};

/// A retrieved policy chunk as the agent sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievedChunk {
    pub chunk_id: String,
    pub text: String,
}

/// Everything a backend needs for one run.
#[derive(Clone, Debug)]
pub struct AgentRequest {
    pub agent: AgentKind,
    pub deviation: Deviation,
    pub facts: CaseFacts,
    pub computed: Vec<Computed>,
    pub retrieved: Vec<RetrievedChunk>,
    /// Earlier turns of the case (operator or customer messages, previous resolutions).
    pub history: Vec<String>,
    pub allowed_tools: Vec<Tool>,
}

impl AgentRequest {
    pub fn system_prompt(&self) -> String {
        let role = match self.agent {
            AgentKind::Shipment => "the shipment agent: late, stuck and lost shipments",
            AgentKind::CustomerService => "the customer service agent: tickets and messages",
            AgentKind::Refund => "the refund agent: refunds, returns and compensation",
            AgentKind::Payment => "the payment agent: failed payments and holds",
            AgentKind::Escalation => "the escalation agent: cases that need people",
        };
        let tools: Vec<String> = self
            .allowed_tools
            .iter()
            .map(|t| {
                serde_json::to_value(t)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .collect();
        format!(
            "You are {role} of an order-fulfillment team. Resolve the deviation using only the \
             policy sections provided and cite their ids exactly. Amounts are computed from \
             policy and given to you; use them as they are (amount_cents), never invent money. \
             Allowed tools: {}. Never put email addresses, phone numbers, card numbers or street \
             addresses in a customer message. Answer with the resolution JSON only.",
            tools.join(", ")
        )
    }

    pub fn user_prompt(&self) -> String {
        let d = &self.deviation;
        let mut p = format!(
            "Deviation {} ({}, {:?}): {}\nOrder: {}\nContext: {}\nEvidence: {}\n",
            d.id,
            d.kind.as_str(),
            d.severity,
            d.summary,
            d.order_id.as_deref().unwrap_or("-"),
            serde_json::to_string(&d.context).unwrap_or_default(),
            serde_json::to_string(&d.evidence).unwrap_or_default(),
        );
        p.push_str(&format!(
            "Facts: {}\n",
            serde_json::to_string(&self.facts).unwrap_or_default()
        ));
        for c in &self.computed {
            p.push_str(&format!(
                "Computed from policy: {} ({}; cite {})\n",
                dollars(c.amount),
                c.basis,
                c.cites.join(", ")
            ));
        }
        p.push_str("Policy sections:\n");
        for r in &self.retrieved {
            p.push_str(&format!("[{}] {}\n", r.chunk_id, r.text));
        }
        for (i, h) in self.history.iter().enumerate() {
            p.push_str(&format!("Earlier turn {}: {h}\n", i + 1));
        }
        p
    }

    /// sha256 of both prompts: the audit record's prompt identity.
    pub fn prompt_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.system_prompt().as_bytes());
        h.update([0]);
        h.update(self.user_prompt().as_bytes());
        format!("{:x}", h.finalize())
    }
}

/// Tokens used by one run (model backends only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendReply {
    pub resolution: Resolution,
    /// `offline-rules-v1` or `openai:<model>`.
    pub backend: String,
    pub attempts: u32,
    pub usage: TokenUsage,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("model call timed out after {0:?}")]
    Timeout(Duration),
    #[error("model server error: {0}")]
    Api(String),
    #[error("model answer is not a valid resolution: {0}")]
    Malformed(String),
    #[error("model refused: {0}")]
    Refused(String),
}

impl BackendError {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, BackendError::Refused(_))
    }
}

/// How a model is asked for structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    JsonSchema,
    ToolCall,
}

/// An OpenAI-compatible chat model.
pub struct OpenAiBackend {
    client: Client<OpenAIConfig>,
    model: String,
    structured: StructuredOutput,
    call_timeout: Duration,
    max_attempts: u32,
}

impl OpenAiBackend {
    pub fn new(
        settings: &OpenAiSettings,
        model: &str,
        structured: StructuredOutput,
        max_attempts: u32,
    ) -> anyhow::Result<OpenAiBackend> {
        Ok(OpenAiBackend {
            client: settings.client()?,
            model: model.to_string(),
            structured,
            // The whole call, transport retries included, gets a bound of its own.
            call_timeout: Duration::from_millis(settings.timeout.ms().max(1) as u64)
                * (settings.max_retries as u32 + 1),
            max_attempts: max_attempts.max(1),
        })
    }

    pub fn label(&self) -> String {
        format!("openai:{}", self.model)
    }

    async fn attempt(&self, req: &AgentRequest) -> Result<(Resolution, TokenUsage), BackendError> {
        let messages: Vec<ChatCompletionRequestMessage> = vec![
            ChatCompletionRequestSystemMessageArgs::default()
                .content(req.system_prompt())
                .build()
                .map_err(|e| BackendError::Api(e.to_string()))?
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content(req.user_prompt())
                .build()
                .map_err(|e| BackendError::Api(e.to_string()))?
                .into(),
        ];
        let mut b = CreateChatCompletionRequestArgs::default();
        b.model(self.model.clone())
            .messages(messages)
            .temperature(0.0);
        match self.structured {
            StructuredOutput::JsonSchema => {
                b.response_format(ResponseFormat::JsonSchema {
                    json_schema: ResponseFormatJsonSchema {
                        description: Some("A policy-grounded resolution".into()),
                        name: "resolution".into(),
                        schema: Resolution::json_schema(),
                        strict: Some(false),
                    },
                });
            }
            StructuredOutput::ToolCall => {
                let f = FunctionObjectArgs::default()
                    .name("submit_resolution")
                    .description("Submit the resolution for this deviation")
                    .parameters(Resolution::json_schema())
                    .build()
                    .map_err(|e| BackendError::Api(e.to_string()))?;
                b.tools(vec![ChatCompletionTools::Function(ChatCompletionTool {
                    function: f,
                })])
                .tool_choice(ChatCompletionToolChoiceOption::Mode(
                    async_openai::types::chat::ToolChoiceOptions::Required,
                ));
            }
        }
        let request = b.build().map_err(|e| BackendError::Api(e.to_string()))?;
        let resp = tokio::time::timeout(self.call_timeout, self.client.chat().create(request))
            .await
            .map_err(|_| BackendError::Timeout(self.call_timeout))?
            .map_err(|e| match e {
                async_openai::error::OpenAIError::JSONDeserialize(e, body) => {
                    BackendError::Malformed(format!("{e}: {}", truncate(&body, 200)))
                }
                async_openai::error::OpenAIError::Reqwest(e) if e.is_timeout() => {
                    BackendError::Timeout(self.call_timeout)
                }
                other => BackendError::Api(other.to_string()),
            })?;
        let usage = resp
            .usage
            .as_ref()
            .map(|u| TokenUsage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            })
            .unwrap_or_default();
        let choice = resp
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::Malformed("no choices".into()))?;
        if let Some(r) = choice.message.refusal {
            return Err(BackendError::Refused(r));
        }
        let text = match choice.message.tool_calls.as_ref().and_then(|c| c.first()) {
            Some(async_openai::types::chat::ChatCompletionMessageToolCalls::Function(call)) => {
                call.function.arguments.clone()
            }
            _ => choice.message.content.unwrap_or_default(),
        };
        let resolution: Resolution = serde_json::from_str(strip_fences(&text))
            .map_err(|e| BackendError::Malformed(format!("{e}: {}", truncate(&text, 200))))?;
        Ok((resolution, usage))
    }

    /// Up to `max_attempts` calls, with backoff between them, while the error is retryable.
    pub async fn resolve(&self, req: &AgentRequest) -> Result<BackendReply, (BackendError, u32)> {
        let mut total = TokenUsage::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(req).await {
                Ok((resolution, usage)) => {
                    total.prompt_tokens += usage.prompt_tokens;
                    total.completion_tokens += usage.completion_tokens;
                    return Ok(BackendReply {
                        resolution,
                        backend: self.label(),
                        attempts: attempt,
                        usage: total,
                    });
                }
                Err(e) if e.retryable() && attempt < self.max_attempts => {
                    tracing::warn!(error = %e, attempt, "model call failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << (attempt - 1).min(6))).await;
                }
                Err(e) => return Err((e, attempt)),
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Models often wrap JSON in a Markdown fence; accept that.
fn strip_fences(s: &str) -> &str {
    let t = s.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .unwrap_or(t);
    t.strip_suffix("```").unwrap_or(t).trim()
}

/// Deterministic rules producing the same schema, labelled `offline-rules-v1`.
pub struct OfflineBackend;

impl OfflineBackend {
    pub const LABEL: &'static str = "offline-rules-v1";

    pub fn resolve(&self, req: &AgentRequest) -> BackendReply {
        let retrieved: Vec<&str> = req.retrieved.iter().map(|r| r.chunk_id.as_str()).collect();
        // Cite the sections that set the amounts when they were retrieved; else the best hit.
        let mut citations: Vec<String> = req
            .computed
            .iter()
            .flat_map(|c| c.cites.iter())
            .filter(|c| retrieved.contains(c))
            .map(|c| c.to_string())
            .collect();
        citations.dedup();
        let grounded = !citations.is_empty();
        if citations.is_empty() {
            citations.extend(retrieved.first().map(|c| c.to_string()));
        }
        let d = &req.deviation;
        let order = d.order_id.as_deref().unwrap_or("your order");
        let allowed = |t: Tool| req.allowed_tools.contains(&t);
        let mut actions = Vec::new();
        let mut add = |tool: Tool, params: serde_json::Value| {
            if allowed(tool) {
                actions.push(ProposedAction {
                    tool,
                    params: params.as_object().cloned().unwrap_or_default(),
                });
            }
        };
        let money = |tool: Tool| {
            req.computed
                .iter()
                .find(|c| c.amount > 0 && matches!(tool, Tool::IssueRefund | Tool::ApplyCredit))
                .map(|c| c.amount)
        };
        let message;
        match (req.agent, d.kind) {
            (AgentKind::Refund, _) => {
                add(Tool::CheckRefundEligibility, json!({"order_id": order}));
                if let Some(a) = money(Tool::IssueRefund) {
                    add(
                        Tool::IssueRefund,
                        json!({"order_id": order, "amount_cents": a}),
                    );
                    message = format!(
                        "We have issued a refund of {} for order {order}. It reaches your original payment method within 5-10 business days.",
                        dollars(a)
                    );
                } else {
                    message = format!(
                        "We reviewed order {order} against our refund policy; no refund applies at this point, and we have explained why below."
                    );
                }
                add(
                    Tool::DraftCustomerMessage,
                    json!({"template": "refund-confirmation"}),
                );
            }
            (AgentKind::Payment, _) => {
                let attempt = d.evidence.get("attempt").copied().unwrap_or(1.0);
                if attempt < 3.0 {
                    add(
                        Tool::RetryPayment,
                        json!({"order_id": order, "attempt": attempt as i64 + 1}),
                    );
                } else {
                    add(
                        Tool::HoldOrder,
                        json!({"order_id": order, "reason": "payment failed 3 times"}),
                    );
                }
                add(
                    Tool::DraftCustomerMessage,
                    json!({"template": "payment-failed"}),
                );
                message = format!(
                    "We could not take payment for order {order}. Please check your payment details; we will try again automatically."
                );
            }
            (AgentKind::Shipment, DeviationType::SlaShipBreach) => {
                add(Tool::TransferWarehouse, json!({"order_id": order}));
                add(
                    Tool::DraftCustomerMessage,
                    json!({"template": "delay-notice"}),
                );
                message = format!("Order {order} is taking longer to leave our warehouse than promised. We have moved it to the next available warehouse and will send tracking as soon as it ships.");
            }
            // A segment-level deviation (a KPI breach): no order, no customer to write to.
            (AgentKind::Shipment, _) if d.order_id.is_none() => {
                let segment: serde_json::Map<String, serde_json::Value> = d
                    .context
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.as_str())))
                    .collect();
                add(Tool::ContactCarrier, json!({"segment": segment}));
                message = format!(
                    "Operations note: {}. The carriers serving this segment have been contacted to recover delivery times.",
                    d.summary
                );
            }
            (AgentKind::Shipment, _) => {
                add(Tool::ContactCarrier, json!({"order_id": order}));
                add(Tool::RescheduleShipment, json!({"order_id": order}));
                add(
                    Tool::DraftCustomerMessage,
                    json!({"template": "delay-notice"}),
                );
                message = format!("Order {order} is delayed in transit. We have contacted the carrier and will update you with a new delivery date.");
            }
            (AgentKind::CustomerService, _) => {
                add(Tool::DraftCustomerMessage, json!({"template": "apology"}));
                add(Tool::CreateTicket, json!({"priority": "P3"}));
                message = match &d.order_id {
                    Some(o) => format!("We are sorry about the trouble with order {o}. A member of our team is looking into it."),
                    None => format!("Operations note: {}. A member of the team is looking into it.", d.summary),
                };
            }
            (AgentKind::Escalation, _) => {
                let priority = match d.severity {
                    crate::config::pipeline::Severity::Critical => "P1",
                    crate::config::pipeline::Severity::Warning => "P2",
                    crate::config::pipeline::Severity::Info => "P3",
                };
                add(
                    Tool::CreateTicket,
                    json!({"priority": priority, "summary": d.summary}),
                );
                add(Tool::RequestHumanApproval, json!({"reason": d.summary}));
                message = match &d.order_id {
                    Some(o) => format!(
                        "Your case about order {o} has been passed to a senior member of our team."
                    ),
                    None => format!(
                        "Operations note: {}. Passed to a senior member of the team.",
                        d.summary
                    ),
                };
            }
        }
        let rationale = if req.computed.is_empty() {
            format!(
                "{}: handled by the {} rules",
                d.kind.as_str(),
                req.agent.as_str()
            )
        } else {
            req.computed
                .iter()
                .map(|c| c.basis.clone())
                .collect::<Vec<_>>()
                .join("; ")
        };
        BackendReply {
            resolution: Resolution {
                actions,
                customer_message: Some(message),
                rationale,
                citations,
                confidence: if grounded { 0.9 } else { 0.6 },
            },
            backend: Self::LABEL.into(),
            attempts: 1,
            usage: TokenUsage::default(),
        }
    }
}
