//! Configuration: the declarative pipeline spec and duration parsing.

pub mod duration;
pub mod pipeline;

pub use duration::Duration;
pub use pipeline::{PipelineSpec, SpecError};
