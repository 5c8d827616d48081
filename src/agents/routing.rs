//! Which agent handles a deviation: the routing table in `config/agents.yaml`, validated at
//! startup with the file, the key and the reason.
//!
//! In: the YAML text; per deviation its type, severity, segment and order value. Out: the agent
//! to run, the rule that chose it (or the fallback), and each agent's allowed tools and policy
//! filter. The highest `priority` among matching rules wins; equal priorities go to the rule
//! listed first. No match: the `fallback` agent (escalation).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::policy_math::PolicyLimits;
use crate::config::pipeline::{parse_yaml, read_config_file, Severity};
use crate::config::SpecError;
use crate::model::records::{Deviation, DeviationType};

/// The specialist agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    Shipment,
    CustomerService,
    Refund,
    Payment,
    Escalation,
}

impl AgentKind {
    pub const ALL: [AgentKind; 5] = [
        AgentKind::Shipment,
        AgentKind::CustomerService,
        AgentKind::Refund,
        AgentKind::Payment,
        AgentKind::Escalation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Shipment => "shipment",
            AgentKind::CustomerService => "customer_service",
            AgentKind::Refund => "refund",
            AgentKind::Payment => "payment",
            AgentKind::Escalation => "escalation",
        }
    }
}

/// The simulated tools an agent may call (recorded as if real).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    RescheduleShipment,
    ContactCarrier,
    TransferWarehouse,
    DraftCustomerMessage,
    ApplyCredit,
    CheckRefundEligibility,
    IssueRefund,
    RetryPayment,
    HoldOrder,
    CreateTicket,
    RequestHumanApproval,
    /// Passes the case to another agent (counts against the hop limit).
    HandOff,
}

/// What a rule matches; every given condition must hold, absent ones match anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleMatch {
    pub types: Vec<DeviationType>,
    pub severities: Vec<Severity>,
    /// Customer segments (Consumer, Corporate, Home Office).
    pub segments: Vec<String>,
    /// Order value bounds in dollars, inclusive.
    pub min_order_value: Option<f64>,
    pub max_order_value: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(rename = "match", default)]
    pub when: RuleMatch,
    pub agent: AgentKind,
}

/// An agent's allowed tools and the policy types its retrieval is filtered to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub tools: BTreeSet<Tool>,
    pub policy_types: Vec<String>,
}

/// `config/agents.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingTable {
    /// Hand-offs allowed per case before it is escalated.
    pub hop_limit: u32,
    pub fallback: AgentKind,
    pub agents: BTreeMap<AgentKind, AgentSpec>,
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub limits: PolicyLimits,
}

/// What routing needs to know about a deviation.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInput<'a> {
    pub kind: DeviationType,
    pub severity: Severity,
    pub segment: Option<&'a str>,
    /// Dollars, when known.
    pub order_value: Option<f64>,
}

impl<'a> RouteInput<'a> {
    /// From a deviation: segment from its context, order value from its evidence
    /// (`order_value`, else `amount`).
    pub fn of(d: &'a Deviation) -> RouteInput<'a> {
        RouteInput {
            kind: d.kind,
            severity: d.severity,
            segment: d.context.get("segment").map(|s| s.as_str()),
            order_value: d
                .evidence
                .get("order_value")
                .or_else(|| d.evidence.get("amount"))
                .copied(),
        }
    }
}

/// The routing decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub agent: AgentKind,
    /// The rule's name, or `fallback`.
    pub rule: String,
}

impl RuleMatch {
    fn admits(&self, input: &RouteInput) -> bool {
        (self.types.is_empty() || self.types.contains(&input.kind))
            && (self.severities.is_empty() || self.severities.contains(&input.severity))
            && (self.segments.is_empty()
                || input
                    .segment
                    .is_some_and(|s| self.segments.iter().any(|x| x.eq_ignore_ascii_case(s))))
            && self
                .min_order_value
                .is_none_or(|m| input.order_value.is_some_and(|v| v >= m))
            && self
                .max_order_value
                .is_none_or(|m| input.order_value.is_some_and(|v| v <= m))
    }
}

impl RoutingTable {
    pub fn load(path: &Path) -> Result<RoutingTable, SpecError> {
        let (text, file) = read_config_file(path)?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<RoutingTable, SpecError> {
        let table: RoutingTable = parse_yaml(text, file)?;
        table.validate(file)?;
        Ok(table)
    }

    fn validate(&self, file: &str) -> Result<(), SpecError> {
        let err = |path: String, reason: String| SpecError {
            file: file.into(),
            path,
            reason,
        };
        if !(1..=10).contains(&self.hop_limit) {
            return Err(err("hop_limit".into(), "must be between 1 and 10".into()));
        }
        for kind in AgentKind::ALL {
            let Some(spec) = self.agents.get(&kind) else {
                return Err(err(
                    format!("agents.{}", kind.as_str()),
                    "missing: every agent needs its tools and policy types".into(),
                ));
            };
            if spec.tools.is_empty() {
                return Err(err(
                    format!("agents.{}.tools", kind.as_str()),
                    "must allow at least one tool".into(),
                ));
            }
            for t in &spec.policy_types {
                if !crate::rag::policy::POLICY_TYPES.contains(&t.as_str()) {
                    return Err(err(
                        format!("agents.{}.policy_types", kind.as_str()),
                        format!(
                            "unknown policy type `{t}` (one of {})",
                            crate::rag::policy::POLICY_TYPES.join(", ")
                        ),
                    ));
                }
            }
        }
        let escalation = &self.agents[&AgentKind::Escalation];
        for needed in [Tool::CreateTicket, Tool::RequestHumanApproval] {
            if !escalation.tools.contains(&needed) {
                return Err(err(
                    "agents.escalation.tools".into(),
                    format!("must include {needed:?}: every failed case ends there"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if r.name.trim().is_empty() {
                return Err(err(format!("{at}.name"), "must not be empty".into()));
            }
            if !names.insert(r.name.as_str()) {
                return Err(err(
                    format!("{at}.name"),
                    format!("`{}` is used by an earlier rule", r.name),
                ));
            }
            if let (Some(lo), Some(hi)) = (r.when.min_order_value, r.when.max_order_value) {
                if lo > hi {
                    return Err(err(
                        format!("{at}.match.min_order_value"),
                        format!("{lo} is above max_order_value {hi}"),
                    ));
                }
            }
            for v in [r.when.min_order_value, r.when.max_order_value]
                .into_iter()
                .flatten()
            {
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        format!("{at}.match"),
                        format!("order value bound {v} must be a non-negative number"),
                    ));
                }
            }
        }
        self.limits
            .validate()
            .map_err(|(field, reason)| err(format!("limits.{field}"), reason))
    }

    /// The agent for a deviation.
    pub fn route(&self, input: &RouteInput) -> Route {
        let mut best: Option<&Rule> = None;
        for r in &self.rules {
            if r.when.admits(input) && best.is_none_or(|b| r.priority > b.priority) {
                best = Some(r);
            }
        }
        match best {
            Some(r) => Route {
                agent: r.agent,
                rule: r.name.clone(),
            },
            None => Route {
                agent: self.fallback,
                rule: "fallback".into(),
            },
        }
    }

    pub fn spec(&self, agent: AgentKind) -> &AgentSpec {
        &self.agents[&agent]
    }
}
