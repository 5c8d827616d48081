//! Configuration: job settings (`config/app.yaml` + environment), the declarative pipeline spec,
//! and duration parsing.

pub mod app;
pub mod duration;
pub mod pipeline;

pub use app::AppConfig;
pub use duration::Duration;
pub use pipeline::{PipelineSpec, SpecError};
