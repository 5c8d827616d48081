//! The agent stage: deviations from the dataflow are routed ([`routing`]) to specialist agents
//! that resolve them with money and eligibility computed from policy ([`policy_math`]); every
//! proposed [`resolution`] passes guardrails (tools, citations, amounts, approvals, personal
//! data via [`pii`]) before it is carried out.
//!
//! In: deviations, `config/agents.yaml`. Out: routing decisions and policy amounts; the
//! orchestrator, LLM backends, guardrails and the case store build on these.

pub mod backend;
pub mod orchestrator;
pub mod pii;
pub mod policy_math;
pub mod resolution;
pub mod routing;
pub mod store;

pub use routing::{AgentKind, Route, RouteInput, RoutingTable, Tool};
