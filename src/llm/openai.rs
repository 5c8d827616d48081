//! The async-openai client for any OpenAI-compatible server (OpenAI, vLLM, llama.cpp server,
//! Ollama, LiteLLM, ...), configured once from the `openai` settings.
//!
//! In: base URL, the name of the environment variable holding the key, per-request timeout and
//! retry count. Out: an async-openai [`Client`] whose transport retries 429 (waiting for
//! `Retry-After` when the server sends it), 5xx and connection errors with exponential backoff,
//! and gives every HTTP attempt the configured timeout. async-openai sets no timeout itself.

use anyhow::{Context, Result};
use async_openai::config::OpenAIConfig;
use async_openai::middleware::retry::OpenAIRetryLayer;
use async_openai::middleware::ReqwestService;
use async_openai::Client;
use serde::{Deserialize, Serialize};

use crate::config::duration::Duration;

/// Where the OpenAI-compatible server is and how patient to be with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSettings {
    /// API base, including the version path (`OPENAI_BASE_URL`).
    pub base_url: String,
    /// Name of the environment variable that holds the API key; the key itself never goes into
    /// a settings file.
    pub api_key_env: String,
    /// Limit for one HTTP attempt (`FULFILLMENT_OPENAI_TIMEOUT`).
    pub timeout: Duration,
    /// Extra attempts after a 429, a 5xx or a connection error.
    pub max_retries: usize,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout: Duration(30_000),
            max_retries: 3,
        }
    }
}

impl OpenAiSettings {
    /// The API key from the configured environment variable, if set and non-empty.
    pub fn api_key(&self) -> Option<String> {
        std::env::var(&self.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty())
    }

    /// A client for this server. Without a key the requests carry an empty bearer token, which
    /// local servers accept.
    pub fn client(&self) -> Result<Client<OpenAIConfig>> {
        // Set every credential explicitly: async-openai's defaults read OPENAI_API_KEY and
        // OPENAI_ORG_ID, which would send an OpenAI key to whatever server is configured.
        let config = OpenAIConfig::new()
            .with_api_base(self.base_url.trim_end_matches('/'))
            .with_api_key(self.api_key().unwrap_or_default())
            .with_org_id("")
            .with_project_id("");
        let timeout = std::time::Duration::from_millis(self.timeout.ms().max(1) as u64);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
            .build()
            .context("building the HTTP client")?;
        let service = tower::ServiceBuilder::new()
            .layer(OpenAIRetryLayer::new(self.max_retries))
            .service(ReqwestService::new(http));
        Ok(Client::with_config(config).with_http_service(service))
    }
}
