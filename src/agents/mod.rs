//! The agent stage: deviations from the dataflow are routed ([`routing`]) to specialist agents
//! that resolve them with money and eligibility computed from policy ([`policy_math`]).
//!
//! In: deviations, `config/agents.yaml`. Out: routing decisions and policy amounts; the
//! orchestrator, LLM backends, guardrails and the case store build on these.

pub mod policy_math;
pub mod routing;

pub use routing::{AgentKind, Route, RouteInput, RoutingTable, Tool};
