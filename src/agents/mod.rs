//! The agent stage: deviations from the dataflow are routed ([`routing`]) to specialist agents
//! that resolve them with money and eligibility computed from policy ([`policy_math`]); every
//! proposed [`resolution`] passes guardrails (tools, citations, amounts, approvals, personal
//! data via [`pii`]) before it is carried out.
//!
//! In: deviations, `config/agents.yaml`, the `agents` settings. Out: cases and runs in the case
//! [`store`], published actions ([`orchestrator`]); [`runner`] runs the stage inside a job.

pub mod backend;
pub mod bench;
pub mod orchestrator;
pub mod pii;
pub mod policy_math;
pub mod resolution;
pub mod routing;
pub mod runner;
pub mod store;

pub use routing::{AgentKind, Route, RouteInput, RoutingTable, Tool};
