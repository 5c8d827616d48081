//! Kafka plumbing shared by the Kafka source, the Kafka sinks and the `produce` / `kafka`
//! commands: the topic layout (`config/kafka/topics.yaml`), librdkafka client settings, and topic
//! creation.
//!
//! In: [`KafkaConfig`] (bootstrap servers and pass-through librdkafka properties from
//! `config/app.yaml` and `KAFKA_*` variables) and the topics file. Out: `ClientConfig`s, topic
//! names by role, and created topics on the broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
pub mod bench;
pub mod load;
pub mod ramp;

use serde::{Deserialize, Serialize};

use crate::config::app::KafkaConfig;
use crate::config::pipeline::{parse_yaml, read_config_file};
use crate::config::SpecError;

/// One topic's layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    /// Replicas per partition (use 3 on a production cluster).
    #[serde(default = "one")]
    pub replication_factor: u32,
    /// Topic configuration passed to the broker (`cleanup.policy`, `retention.ms`, ...).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// The job's topics by role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub order_events: TopicSpec,
    pub kpis: TopicSpec,
    pub deviations: TopicSpec,
    pub actions: TopicSpec,
    pub dead_letters: TopicSpec,
    pub late_events: TopicSpec,
}

impl Topics {
    /// Reads and checks a topics file; errors name the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Topics, SpecError> {
        let (text, file) = read_config_file(path)?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Topics, SpecError> {
        let topics: Topics = parse_yaml(text, file)?;
        for (role, t) in topics.all() {
            let err = |field: &str, reason: &str| SpecError {
                file: file.into(),
                path: format!("{role}.{field}"),
                reason: reason.into(),
            };
            if t.name.is_empty()
                || t.name.len() > 249
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(err(
                    "name",
                    "a topic name is 1-249 characters of [a-zA-Z0-9._-]",
                ));
            }
            if t.partitions == 0 {
                return Err(err("partitions", "must be at least 1"));
            }
            if t.replication_factor == 0 {
                return Err(err("replication_factor", "must be at least 1"));
            }
        }
        let mut names: Vec<&str> = topics.all().iter().map(|(_, t)| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(SpecError {
                file: file.into(),
                path: "(root)".into(),
                reason: format!("topic `{}` is used for two roles", w[0]),
            });
        }
        Ok(topics)
    }

    /// Every topic with its role name.
    pub fn all(&self) -> [(&'static str, &TopicSpec); 6] {
        [
            ("order_events", &self.order_events),
            ("kpis", &self.kpis),
            ("deviations", &self.deviations),
            ("actions", &self.actions),
            ("dead_letters", &self.dead_letters),
            ("late_events", &self.late_events),
        ]
    }
}

/// Forwards a librdkafka log line to `tracing` at the matching level.
pub fn log_to_tracing(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", "{fac}: {message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
        _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
    }
}

/// A librdkafka client configuration: bootstrap servers, the pass-through properties, then
/// `overrides` (the caller's own settings win).
pub fn client_config(kafka: &KafkaConfig, overrides: &[(&str, &str)]) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    for (k, v) in overrides {
        cfg.set(*k, *v);
    }
    cfg
}

/// What [`create_topics`] did with one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExisted,
}

/// Creates every topic of `topics` that does not exist yet.
pub fn create_topics(kafka: &KafkaConfig, topics: &Topics) -> Result<Vec<(String, TopicOutcome)>> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, &[])
        .create()
        .context("creating a Kafka admin client")?;
    let specs: Vec<&TopicSpec> = topics.all().iter().map(|(_, t)| *t).collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(
                &t.name,
                t.partitions as i32,
                TopicReplication::Fixed(t.replication_factor as i32),
            );
            for (k, v) in &t.config {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_executor::block_on(admin.create_topics(&new_topics, &opts))
        .with_context(|| format!("creating topics on {}", kafka.bootstrap_servers))?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((name, TopicOutcome::AlreadyExisted))
            }
            Err((name, code)) => bail!("creating topic `{name}`: {code}"),
        }
    }
    Ok(out)
}

/// Partition count of `topic`, or an error naming the topic when it does not exist.
pub fn partition_count(
    client: &rdkafka::client::Client<impl rdkafka::client::ClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<u32> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading metadata of topic `{topic}`"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic `{topic}` not found");
    };
    if let Some(e) = t.error() {
        bail!(
            "topic `{topic}`: {} (create it with `fulfillment-ai kafka create-topics` or scripts/kafka.sh up)",
            RDKafkaErrorCode::from(e)
        );
    }
    if t.partitions().is_empty() {
        bail!("topic `{topic}` has no partitions");
    }
    Ok(t.partitions().len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_topics_file_parses() {
        let t = Topics::parse(
            include_str!("../../config/kafka/topics.yaml"),
            "config/kafka/topics.yaml",
        )
        .unwrap();
        assert_eq!(t.order_events.name, "fulfillment.order-events");
        assert_eq!(
            t.kpis.config.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
        assert!(t.all().iter().all(|(_, s)| s.replication_factor == 1));
    }

    #[test]
    fn bad_topics_are_named() {
        let text = include_str!("../../config/kafka/topics.yaml")
            .replace("name: fulfillment.kpis", "name: fulfillment kpis");
        let e = Topics::parse(&text, "topics.yaml").unwrap_err();
        assert_eq!(e.path, "kpis.name");
        let text = include_str!("../../config/kafka/topics.yaml")
            .replace("name: fulfillment.kpis", "name: fulfillment.deviations");
        let e = Topics::parse(&text, "topics.yaml").unwrap_err();
        assert!(e.reason.contains("two roles"), "{e}");
        let text =
            include_str!("../../config/kafka/topics.yaml").replace("partitions: 1", "partitons: 1");
        let e = Topics::parse(&text, "topics.yaml").unwrap_err();
        assert!(e.reason.contains("unknown field `partitons`"), "{e}");
    }
}
