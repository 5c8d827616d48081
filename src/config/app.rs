//! Job settings (`config/app.yaml`), layered: built-in defaults, then the file, then
//! `FULFILLMENT_*` environment variables; command-line flags override all of them in `main.rs`.
//!
//! In: an optional file path and the process environment. Out: an [`AppConfig`], or a
//! [`SpecError`] naming the file (or environment variable), the key and the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::duration::{parse_duration, Duration};
use crate::config::pipeline::{parse_yaml, read_config_file};
use crate::config::SpecError;
use crate::llm::OpenAiSettings;

/// Default location of the settings file, relative to the working directory.
pub const DEFAULT_APP_CONFIG: &str = "config/app.yaml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    pub pipeline: PathBuf,
    pub workers: usize,
    pub out_dir: PathBuf,
    pub source: String,
    pub rate: f64,
    pub speed: String,
    pub kpi_update_interval: Duration,
    /// Events larger than this many bytes are dead-lettered as oversize.
    pub max_event_bytes: usize,
    pub kafka: KafkaConfig,
    pub kb: KbConfig,
    /// The OpenAI-compatible server used by `kb.embedder: openai` and the agents.
    pub openai: OpenAiSettings,
    pub agents: AgentsConfig,
    pub serve: ServeConfig,
    pub checkpoint: CheckpointConfig,
}

/// Checkpoints of `run`: consistent snapshots of the job's state, to resume after a crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Take checkpoints and resume from the newest one at start (`FULFILLMENT_CHECKPOINT`:
    /// true | false; `run --state-dir` turns it on).
    pub enabled: bool,
    /// One directory per process (`FULFILLMENT_STATE_DIR`).
    pub dir: PathBuf,
    /// Wall time between checkpoints (`FULFILLMENT_CHECKPOINT_INTERVAL`).
    pub interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            enabled: false,
            dir: PathBuf::from("state"),
            interval: Duration(10_000),
        }
    }
}

/// The HTTP server of `run`: REST API, WebSockets, Prometheus metrics and the dashboard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Start the server with `run` (`FULFILLMENT_SERVE`: true | false).
    pub enabled: bool,
    /// Address to listen on; port 0 picks a free port (`FULFILLMENT_LISTEN`).
    pub listen: String,
    /// Name of the environment variable holding the API key. When that variable is set,
    /// POST/PUT endpoints and the WebSockets need `Authorization: Bearer KEY`. Keys never go
    /// in this file.
    pub api_key_env: String,
    /// With an API key: GET endpoints need it too (`/health` and `/metrics` stay open).
    pub protect_reads: bool,
    /// Origins allowed by CORS (exact, e.g. `https://ops.example.com`); empty: same origin only.
    pub cors_origins: Vec<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Batches (50 ms of updates each) the WebSocket broadcast ring keeps for slow readers; a KPI
    /// client further behind gets a fresh snapshot, a deviation client is disconnected.
    pub ws_buffer: usize,
    /// A WebSocket client whose queue stays full this long is disconnected.
    pub ws_stall_limit: Duration,
    /// Interval of WebSocket heartbeats.
    pub heartbeat: Duration,
    /// Deviations kept for the API (newest); older ones stay in deviations.jsonl.
    pub keep_deviations: usize,
    /// Orders kept for the API (most recently active).
    pub keep_orders: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            enabled: true,
            listen: "127.0.0.1:8000".into(),
            api_key_env: "FULFILLMENT_API_KEY".into(),
            protect_reads: false,
            cors_origins: Vec::new(),
            max_body_bytes: 1 << 20,
            ws_buffer: 64,
            ws_stall_limit: Duration(10_000),
            heartbeat: Duration(5_000),
            keep_deviations: 100_000,
            keep_orders: 200_000,
        }
    }
}

impl ServeConfig {
    /// The API key, when its variable is set and not empty.
    pub fn api_key(&self) -> Option<String> {
        std::env::var(&self.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty())
    }
}

/// The agent stage of `run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Resolve deviations with the agents (`FULFILLMENT_AGENTS`: true | false).
    pub enabled: bool,
    /// Routing rules, agents, tools and money limits.
    pub routing: PathBuf,
    /// The case store: a SQLite file, a `sqlite://` URL or a `postgres://` URL (`DATABASE_URL`).
    pub database: String,
    /// `auto` (the model when its API key is set, offline otherwise), `offline` or `openai`
    /// (`FULFILLMENT_LLM_BACKEND`).
    pub backend: String,
    /// Chat model of the `openai` backend (`FULFILLMENT_LLM_MODEL`).
    pub model: String,
    /// How the model is asked for the resolution: `json_schema` or `tool_call`.
    pub structured: crate::agents::backend::StructuredOutput,
    /// Attempts per case when the model answers malformed output or times out.
    pub max_attempts: u32,
    /// Deviations waiting for the stage; more wait in the job's collector.
    pub queue_capacity: usize,
    /// Cases worked on at once (model calls in flight).
    pub concurrency: usize,
    /// Policy chunks retrieved per policy type of the agent.
    pub chunks_per_type: usize,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            enabled: true,
            routing: PathBuf::from("config/agents.yaml"),
            database: "data/agents.sqlite".into(),
            backend: "auto".into(),
            model: "gpt-4o-mini".into(),
            structured: crate::agents::backend::StructuredOutput::JsonSchema,
            max_attempts: 3,
            queue_capacity: 10_000,
            concurrency: 64,
            chunks_per_type: 2,
        }
    }
}

impl AgentsConfig {
    /// Whether the model backend is used (`auto` with a key, or `openai`).
    pub fn uses_model(&self, openai: &OpenAiSettings) -> bool {
        match self.backend.as_str() {
            "openai" => true,
            "auto" => openai.api_key().is_some(),
            _ => false,
        }
    }
}

/// The policy knowledge base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KbConfig {
    /// Shipped policy documents.
    pub policies_dir: PathBuf,
    /// Runtime documents, deletions and the persisted index (`FULFILLMENT_KB_DATA_DIR`).
    pub data_dir: PathBuf,
    /// all-MiniLM-L6-v2 files (`scripts/fetch_model.sh`).
    pub model_dir: PathBuf,
    /// `minilm` (the hashed fallback when the model is missing), `openai` (the embeddings
    /// endpoint of the `openai` server; the hashed fallback when it cannot be reached) or
    /// `hashed` (`FULFILLMENT_KB_EMBEDDER`).
    pub embedder: String,
    /// Model asked for with `embedder: openai` (`FULFILLMENT_KB_EMBEDDING_MODEL`).
    pub embedding_model: String,
    /// Vector length to ask the model for (text-embedding-3-* can shorten); absent: the
    /// model's own.
    pub embedding_dimensions: Option<u32>,
    /// Texts per embeddings request.
    pub embedding_batch: usize,
}

impl Default for KbConfig {
    fn default() -> Self {
        KbConfig {
            policies_dir: PathBuf::from("policies"),
            data_dir: PathBuf::from("data/kb"),
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            embedder: "minilm".into(),
            embedding_model: "text-embedding-3-small".into(),
            embedding_dimensions: None,
            embedding_batch: 64,
        }
    }
}

/// Where the Kafka-compatible cluster is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers` (environment: `KAFKA_BOOTSTRAP_SERVERS`).
    pub bootstrap_servers: String,
    /// Topic names, partitions and retention of every role (order events, KPIs, ...).
    pub topics_file: PathBuf,
    /// Extra librdkafka properties for every client, e.g. `security.protocol: SASL_SSL`.
    /// Environment variables `KAFKA_<NAME>` add `<name>` with `_` read as `.`
    /// (`KAFKA_SASL_MECHANISMS` -> `sasl.mechanisms`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topics_file: PathBuf::from("config/kafka/topics.yaml"),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            pipeline: PathBuf::from("pipelines/fulfillment.yaml"),
            workers: 2,
            out_dir: PathBuf::from("out"),
            source: "default".into(),
            rate: 500.0,
            speed: "max".into(),
            kpi_update_interval: Duration(250),
            max_event_bytes: 1 << 20,
            kafka: KafkaConfig::default(),
            kb: KbConfig::default(),
            openai: OpenAiSettings::default(),
            agents: AgentsConfig::default(),
            serve: ServeConfig::default(),
            checkpoint: CheckpointConfig::default(),
        }
    }
}

impl AppConfig {
    /// Loads `path` (required to exist), or `config/app.yaml` if present, then applies the
    /// environment from `env` (pass `std::env::vars()`).
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<AppConfig, SpecError> {
        let default_path = Path::new(DEFAULT_APP_CONFIG);
        let file = match path {
            Some(p) => Some(p),
            None if default_path.exists() => Some(default_path),
            None => None,
        };
        let mut cfg = match file {
            None => AppConfig::default(),
            Some(p) => {
                let (text, name) = read_config_file(p)?;
                Self::parse(&text, &name)?
            }
        };
        cfg.apply_env(env)?;
        cfg.validate("(merged settings)")?;
        Ok(cfg)
    }

    pub fn parse(text: &str, file: &str) -> Result<AppConfig, SpecError> {
        let cfg: AppConfig = parse_yaml(text, file)?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Every environment variable the program reads, documented one by one in `.env.example`
    /// (`tests/deploy.rs` demands the same names there). All but [`Self::ENV_READ_ELSEWHERE`]
    /// are settings `apply_env` below understands; add a name here with its match arm. Besides
    /// these, every other `KAFKA_<NAME>` passes through as the librdkafka property `<name>`.
    pub const ENV_VARS: &'static [&'static str] = &[
        "FULFILLMENT_PIPELINE",
        "FULFILLMENT_WORKERS",
        "FULFILLMENT_OUT_DIR",
        "FULFILLMENT_SOURCE",
        "FULFILLMENT_RATE",
        "FULFILLMENT_SPEED",
        "FULFILLMENT_KPI_UPDATE_INTERVAL",
        "FULFILLMENT_MAX_EVENT_BYTES",
        "FULFILLMENT_DATA_DIR",
        "KAFKA_BOOTSTRAP_SERVERS",
        "FULFILLMENT_KAFKA_TOPICS_FILE",
        "FULFILLMENT_KB_DATA_DIR",
        "FULFILLMENT_KB_EMBEDDER",
        "FULFILLMENT_KB_EMBEDDING_MODEL",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "FULFILLMENT_OPENAI_TIMEOUT",
        "FULFILLMENT_AGENTS",
        "DATABASE_URL",
        "FULFILLMENT_LLM_BACKEND",
        "FULFILLMENT_LLM_MODEL",
        "FULFILLMENT_SERVE",
        "FULFILLMENT_LISTEN",
        "FULFILLMENT_API_KEY",
        "FULFILLMENT_CHECKPOINT",
        "FULFILLMENT_STATE_DIR",
        "FULFILLMENT_CHECKPOINT_INTERVAL",
        "RUST_LOG",
    ];

    /// The names of [`Self::ENV_VARS`] read outside `apply_env`: the API keys (the default
    /// values of `openai.api_key_env` and `serve.api_key_env`), the dataset directory of the
    /// Superstore source, and the log filter.
    pub const ENV_READ_ELSEWHERE: &'static [&'static str] = &[
        "OPENAI_API_KEY",
        "FULFILLMENT_API_KEY",
        "FULFILLMENT_DATA_DIR",
        "RUST_LOG",
    ];

    fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), SpecError> {
        for (key, value) in env {
            if let Some(property) = key.strip_prefix("KAFKA_") {
                let property = property.to_lowercase().replace('_', ".");
                if property == "bootstrap.servers" {
                    self.kafka.bootstrap_servers = value;
                } else if !property.is_empty() {
                    self.kafka.properties.insert(property, value);
                }
                continue;
            }
            if key == "OPENAI_BASE_URL" {
                self.openai.base_url = value;
                continue;
            }
            if key == "DATABASE_URL" {
                self.agents.database = value;
                continue;
            }
            let Some(field) = key.strip_prefix("FULFILLMENT_") else {
                continue;
            };
            let bad = |reason: String| SpecError {
                file: format!("environment variable {key}"),
                path: field.to_lowercase(),
                reason,
            };
            match field {
                "PIPELINE" => self.pipeline = PathBuf::from(value),
                "WORKERS" => {
                    self.workers = value
                        .parse()
                        .map_err(|_| bad(format!("`{value}` is not a whole number")))?
                }
                "OUT_DIR" => self.out_dir = PathBuf::from(value),
                "SOURCE" => self.source = value,
                "RATE" => {
                    self.rate = value
                        .parse()
                        .map_err(|_| bad(format!("`{value}` is not a number")))?
                }
                "SPEED" => self.speed = value,
                "MAX_EVENT_BYTES" => {
                    self.max_event_bytes = value
                        .parse()
                        .map_err(|_| bad(format!("`{value}` is not a whole number")))?
                }
                "KAFKA_TOPICS_FILE" => self.kafka.topics_file = PathBuf::from(value),
                "KB_DATA_DIR" => self.kb.data_dir = PathBuf::from(value),
                "KB_EMBEDDER" => self.kb.embedder = value,
                "KB_EMBEDDING_MODEL" => self.kb.embedding_model = value,
                "AGENTS" => {
                    self.agents.enabled = value
                        .parse()
                        .map_err(|_| bad(format!("`{value}`: use true or false")))?
                }
                "SERVE" => {
                    self.serve.enabled = value
                        .parse()
                        .map_err(|_| bad(format!("`{value}`: use true or false")))?
                }
                "LISTEN" => self.serve.listen = value,
                "CHECKPOINT" => {
                    self.checkpoint.enabled = value
                        .parse()
                        .map_err(|_| bad(format!("`{value}`: use true or false")))?
                }
                "STATE_DIR" => self.checkpoint.dir = PathBuf::from(value),
                "CHECKPOINT_INTERVAL" => {
                    self.checkpoint.interval = parse_duration(&value).map_err(bad)?
                }
                "LLM_BACKEND" => self.agents.backend = value,
                "LLM_MODEL" => self.agents.model = value,
                "OPENAI_TIMEOUT" => {
                    let d = parse_duration(&value).map_err(bad)?;
                    self.openai.timeout = d;
                }
                "KPI_UPDATE_INTERVAL" => {
                    self.kpi_update_interval = parse_duration(&value).map_err(bad)?
                }
                // Other FULFILLMENT_* variables (e.g. FULFILLMENT_CACHE, FULFILLMENT_DATA_DIR)
                // belong to the scripts and sources.
                _ => {}
            }
        }
        Ok(())
    }

    fn validate(&self, file: &str) -> Result<(), SpecError> {
        let err = |path: &str, reason: &str| SpecError {
            file: file.into(),
            path: path.into(),
            reason: reason.into(),
        };
        if self.workers == 0 || self.workers > 256 {
            return Err(err("workers", "must be between 1 and 256"));
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(err(
                "rate",
                "must be a positive number of events per second",
            ));
        }
        if self.speed != "max"
            && self
                .speed
                .strip_suffix('x')
                .and_then(|n| n.parse::<f64>().ok())
                .is_none_or(|f| f <= 0.0)
        {
            return Err(err("speed", "use `max` or a speed-up like `1x` or `3600x`"));
        }
        if self.serve.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "serve.listen",
                "must be an address with a port, such as 127.0.0.1:8000 or 0.0.0.0:8000",
            ));
        }
        if self.checkpoint.interval.ms() < 100 {
            return Err(err("checkpoint.interval", "must be at least 100ms"));
        }
        if self.serve.max_body_bytes < 1024 {
            return Err(err("serve.max_body_bytes", "must be at least 1024 bytes"));
        }
        if self.serve.ws_buffer < 4 {
            return Err(err("serve.ws_buffer", "must be at least 4 messages"));
        }
        if self.serve.heartbeat.ms() < 100 || self.serve.ws_stall_limit.ms() < 100 {
            return Err(err(
                "serve.heartbeat",
                "serve.heartbeat and serve.ws_stall_limit must be at least 100ms",
            ));
        }
        if let Some(o) =
            self.serve.cors_origins.iter().find(|o| {
                !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/')
            })
        {
            return Err(err(
                "serve.cors_origins",
                &format!("`{o}` is not an origin like https://ops.example.com"),
            ));
        }
        if self.max_event_bytes < 64 {
            return Err(err("max_event_bytes", "must be at least 64 bytes"));
        }
        if !matches!(self.kb.embedder.as_str(), "minilm" | "openai" | "hashed") {
            return Err(err("kb.embedder", "use `minilm`, `openai` or `hashed`"));
        }
        if self.kb.embedder == "openai" && self.kb.embedding_model.trim().is_empty() {
            return Err(err(
                "kb.embedding_model",
                "must name a model when kb.embedder is `openai`",
            ));
        }
        if self.kb.embedding_batch == 0 || self.kb.embedding_batch > 2048 {
            return Err(err("kb.embedding_batch", "must be between 1 and 2048"));
        }
        if self.kb.embedding_dimensions == Some(0) {
            return Err(err("kb.embedding_dimensions", "must be positive when set"));
        }
        if !(self.openai.base_url.starts_with("http://")
            || self.openai.base_url.starts_with("https://"))
        {
            return Err(err(
                "openai.base_url",
                "must be an http:// or https:// URL such as https://api.openai.com/v1",
            ));
        }
        if self.openai.timeout.ms() <= 0 {
            return Err(err("openai.timeout", "must be positive"));
        }
        if self.openai.max_retries > 10 {
            return Err(err("openai.max_retries", "must be at most 10"));
        }
        let a = &self.agents;
        if !matches!(a.backend.as_str(), "auto" | "offline" | "openai") {
            return Err(err("agents.backend", "use `auto`, `offline` or `openai`"));
        }
        if a.backend != "offline" && a.model.trim().is_empty() {
            return Err(err("agents.model", "must name a chat model"));
        }
        if a.database.trim().is_empty() {
            return Err(err(
                "agents.database",
                "must be a file path or a sqlite:// URL",
            ));
        }
        if a.database.contains("://")
            && !["sqlite://", "postgres://", "postgresql://"]
                .iter()
                .any(|p| a.database.starts_with(p))
        {
            return Err(err(
                "agents.database",
                "use a SQLite file path, a sqlite:// URL or a postgres:// URL",
            ));
        }
        if a.max_attempts == 0 || a.max_attempts > 10 {
            return Err(err("agents.max_attempts", "must be between 1 and 10"));
        }
        if a.queue_capacity == 0 {
            return Err(err("agents.queue_capacity", "must be positive"));
        }
        if a.concurrency == 0 || a.concurrency > 1024 {
            return Err(err("agents.concurrency", "must be between 1 and 1024"));
        }
        if a.chunks_per_type == 0 || a.chunks_per_type > 20 {
            return Err(err("agents.chunks_per_type", "must be between 1 and 20"));
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(err(
                "kafka.bootstrap_servers",
                "must name at least one host:port",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment made of these variables.
    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shipped_file_parses_to_the_defaults() {
        let cfg =
            AppConfig::parse(include_str!("../../config/app.yaml"), "config/app.yaml").unwrap();
        assert_eq!(cfg, AppConfig::default());
    }

    #[test]
    fn environment_overrides_the_file_and_bad_values_are_named() {
        let cfg = AppConfig::load(
            None,
            env(&[
                ("FULFILLMENT_WORKERS", "4"),
                ("FULFILLMENT_SPEED", "60x"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!((cfg.workers, cfg.speed.as_str()), (4, "60x"));
        let e = AppConfig::load(None, env(&[("FULFILLMENT_WORKERS", "lots")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable FULFILLMENT_WORKERS: workers: `lots` is not a whole number"
        );
        let e = AppConfig::load(None, env(&[("FULFILLMENT_SPEED", "fast")])).unwrap_err();
        assert_eq!(e.path, "speed");
        let cfg = AppConfig::load(
            None,
            env(&[
                ("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9093,broker-2:9093"),
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_SASL_MECHANISMS", "PLAIN"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.kafka.bootstrap_servers, "broker-1:9093,broker-2:9093");
        assert_eq!(
            cfg.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(
            cfg.kafka
                .properties
                .get("sasl.mechanisms")
                .map(String::as_str),
            Some("PLAIN")
        );
    }

    #[test]
    fn agent_settings_come_from_file_and_environment_and_are_checked() {
        let cfg = AppConfig::load(
            None,
            env(&[
                ("DATABASE_URL", "sqlite:///var/lib/fulfillment/cases.db"),
                ("FULFILLMENT_LLM_BACKEND", "offline"),
                ("FULFILLMENT_AGENTS", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.agents.database,
            "sqlite:///var/lib/fulfillment/cases.db"
        );
        assert_eq!(cfg.agents.backend, "offline");
        assert!(!cfg.agents.enabled);
        assert!(!cfg.agents.uses_model(&cfg.openai));
        let e = AppConfig::parse("agents: { backend: claude }\n", "config/app.yaml").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.path.as_str(), e.reason.as_str()),
            (
                "config/app.yaml",
                "agents.backend",
                "use `auto`, `offline` or `openai`"
            )
        );
        let cfg =
            AppConfig::load(None, env(&[("DATABASE_URL", "postgres://app@db/cases")])).unwrap();
        assert_eq!(cfg.agents.database, "postgres://app@db/cases");
        let e = AppConfig::load(None, env(&[("DATABASE_URL", "mysql://db/cases")])).unwrap_err();
        assert_eq!(e.path, "agents.database");
        let e = AppConfig::parse("agents: { concurrency: 0 }\n", "x.yaml").unwrap_err();
        assert_eq!(e.path, "agents.concurrency");
        let e = AppConfig::load(None, env(&[("FULFILLMENT_AGENTS", "maybe")])).unwrap_err();
        assert_eq!(e.file, "environment variable FULFILLMENT_AGENTS");
    }

    #[test]
    fn file_errors_name_file_and_key() {
        let e = AppConfig::parse("workers: 2\nwrokers: 3\n", "config/app.yaml").unwrap_err();
        assert_eq!(e.file, "config/app.yaml");
        assert!(e.reason.contains("unknown field `wrokers`"), "{e}");
        let e = AppConfig::parse("workers: 0\n", "config/app.yaml").unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.reason.as_str()),
            ("workers", "must be between 1 and 256")
        );
        let e = AppConfig::load(Some(Path::new("config/missing.yaml")), Vec::new()).unwrap_err();
        assert_eq!(e.file, "config/missing.yaml");
    }

    /// A valid value, different from the default, for each setting `apply_env` understands.
    fn sample_value(name: &str) -> &'static str {
        match name {
            "FULFILLMENT_PIPELINE" => "pipelines/other.yaml",
            "FULFILLMENT_WORKERS" => "3",
            "FULFILLMENT_OUT_DIR" => "/var/lib/fulfillment/out",
            "FULFILLMENT_SOURCE" => "kafka",
            "FULFILLMENT_RATE" => "42",
            "FULFILLMENT_SPEED" => "60x",
            "FULFILLMENT_KPI_UPDATE_INTERVAL" => "1s",
            "FULFILLMENT_MAX_EVENT_BYTES" => "4096",
            "KAFKA_BOOTSTRAP_SERVERS" => "kafka:9092",
            "FULFILLMENT_KAFKA_TOPICS_FILE" => "/etc/fulfillment/topics.yaml",
            "FULFILLMENT_KB_DATA_DIR" => "/var/lib/fulfillment/kb",
            "FULFILLMENT_KB_EMBEDDER" => "hashed",
            "FULFILLMENT_KB_EMBEDDING_MODEL" => "nomic-embed-text",
            "OPENAI_BASE_URL" => "http://llm:11434/v1",
            "FULFILLMENT_OPENAI_TIMEOUT" => "5s",
            "FULFILLMENT_AGENTS" => "false",
            "DATABASE_URL" => "postgres://app@db/cases",
            "FULFILLMENT_LLM_BACKEND" => "offline",
            "FULFILLMENT_LLM_MODEL" => "llama3.1",
            "FULFILLMENT_SERVE" => "false",
            "FULFILLMENT_LISTEN" => "0.0.0.0:8000",
            "FULFILLMENT_CHECKPOINT" => "true",
            "FULFILLMENT_STATE_DIR" => "/var/lib/fulfillment/state",
            "FULFILLMENT_CHECKPOINT_INTERVAL" => "30s",
            other => panic!("{other}: give it a sample value in this test"),
        }
    }

    #[test]
    fn every_listed_setting_is_applied_and_the_rest_are_read_elsewhere() {
        let mut names = AppConfig::ENV_VARS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            AppConfig::ENV_VARS.len(),
            "a name is listed twice"
        );
        for name in AppConfig::ENV_VARS {
            let mut cfg = AppConfig::default();
            let elsewhere = AppConfig::ENV_READ_ELSEWHERE.contains(name);
            let value = if elsewhere { "x" } else { sample_value(name) };
            cfg.apply_env(env(&[(name, value)])).unwrap();
            if elsewhere {
                assert_eq!(
                    cfg,
                    AppConfig::default(),
                    "{name} is not a settings variable"
                );
            } else {
                assert_ne!(cfg, AppConfig::default(), "{name} changed nothing");
                cfg.validate("test").unwrap();
            }
        }
        for name in AppConfig::ENV_READ_ELSEWHERE {
            assert!(
                AppConfig::ENV_VARS.contains(name),
                "{name} is not in ENV_VARS"
            );
        }
        // Where the other names are read.
        assert_eq!(
            AppConfig::default().serve.api_key_env,
            "FULFILLMENT_API_KEY"
        );
        assert_eq!(AppConfig::default().openai.api_key_env, "OPENAI_API_KEY");
        assert!(include_str!("../sources/superstore.rs").contains("\"FULFILLMENT_DATA_DIR\""));
        assert!(include_str!("../main.rs").contains("EnvFilter::try_from_default_env"));
    }

    #[test]
    fn env_list_names_every_variable_apply_env_matches() {
        // The body of `apply_env` in this file: every `key == "NAME"` and every
        // `"NAME" =>` arm (a FULFILLMENT_ suffix) must be listed.
        let src = include_str!("app.rs");
        let start = src.find("    fn apply_env(").expect("apply_env in app.rs");
        let end = start
            + src[start..]
                .find("    fn validate(")
                .expect("validate after it");
        let body = &src[start..end];
        let quoted = |line: &str| line.split('"').nth(1).map(str::to_string);
        let mut handled = vec!["KAFKA_BOOTSTRAP_SERVERS".to_string()];
        for line in body.lines().map(str::trim) {
            if line.starts_with("if key == \"") {
                handled.extend(quoted(line));
            } else if line.starts_with('"') && line.contains("\" =>") {
                handled.extend(quoted(line).map(|f| format!("FULFILLMENT_{f}")));
            }
        }
        assert!(handled.len() > 20, "parsed only {handled:?}");
        let mut listed: Vec<String> = AppConfig::ENV_VARS
            .iter()
            .filter(|n| !AppConfig::ENV_READ_ELSEWHERE.contains(n))
            .map(|n| n.to_string())
            .collect();
        listed.sort();
        handled.sort();
        assert_eq!(
            listed, handled,
            "AppConfig::ENV_VARS and apply_env disagree"
        );
    }
}
