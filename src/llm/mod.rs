//! Language-model access: the client for any OpenAI-compatible server ([`openai`]), shared by
//! the knowledge base's remote embedder and the agents, and a scripted OpenAI-compatible stub
//! server ([`stub`]) for tests and benchmarks, since no real model is reachable from CI.
//!
//! In: the `openai` settings (base URL, key variable, timeout, retries). Out: configured
//! async-openai clients; for the stub, a real HTTP server on loopback.

pub mod openai;
pub mod stub;

pub use openai::OpenAiSettings;
