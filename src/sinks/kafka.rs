//! Kafka sinks: KPI versions, deviations, dead letters and late events produced to their topics
//! by one idempotent producer.
//!
//! In: records from the sink collector. Out: messages on the topics of `config/kafka/topics.yaml`:
//! - KPIs keyed `kpi|dims|window_start` (a compacted topic keeps the latest version per key);
//! - deviations keyed by deviation id; late events keyed by order id (JSON values);
//! - dead letters with the original bytes as value and `dlq.reason`, `dlq.source.topic`,
//!   `dlq.source.partition`, `dlq.source.offset` headers.
//!
//! Delivery: `enable.idempotence` (librdkafka retries without duplicating or reordering). A
//! message whose delivery still fails is re-sent by the sink, up to [`MAX_ATTEMPTS`] in all; one
//! that never makes it is counted, logged as an error and written to `undelivered.jsonl` in the
//! output directory. Nothing is dropped silently.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;

use super::{DeadLetter, LateEvent};
use crate::config::app::KafkaConfig;
use crate::kafka::{client_config, Topics};
use crate::model::records::{Deviation, KpiRecord};

/// Delivery attempts per message (each one already retried inside librdkafka).
pub const MAX_ATTEMPTS: usize = 5;

/// Where the sinks write.
#[derive(Clone, Debug)]
pub struct KafkaSinkConfig {
    pub kafka: KafkaConfig,
    pub topics: Topics,
    /// Directory for `undelivered.jsonl` (messages that failed every attempt).
    pub out_dir: Option<PathBuf>,
    /// How long one librdkafka delivery attempt may take before it fails.
    pub message_timeout: Duration,
}

impl KafkaSinkConfig {
    /// The job's outputs as configured in `kafka` settings (topics from its topics file).
    pub fn from_settings(kafka: &KafkaConfig, out_dir: Option<PathBuf>) -> Result<Self> {
        Ok(KafkaSinkConfig {
            topics: Topics::load(&kafka.topics_file)?,
            kafka: kafka.clone(),
            out_dir,
            message_timeout: Duration::from_secs(60),
        })
    }
}

/// Delivery counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub produced: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub undelivered: AtomicU64,
}

/// A message that failed delivery, as it will be re-sent.
struct Failed {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    attempt: usize,
    error: String,
}

struct DeliveryContext {
    failed: crossbeam_channel::Sender<Failed>,
    stats: Arc<SinkStats>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", "producer: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, attempt: usize) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                let _ = self.failed.send(Failed {
                    topic: m.topic().to_owned(),
                    partition: Some(m.partition()).filter(|p| *p >= 0),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers: m.headers().map(|h| h.detach()),
                    attempt,
                    error: e.to_string(),
                });
            }
        }
    }
}

/// The producer behind the Kafka sinks.
pub struct KafkaSink {
    cfg: KafkaSinkConfig,
    producer: ThreadedProducer<DeliveryContext>,
    failed_tx: crossbeam_channel::Sender<Failed>,
    failed_rx: crossbeam_channel::Receiver<Failed>,
    stats: Arc<SinkStats>,
    undelivered: Option<std::io::BufWriter<std::fs::File>>,
    names: TopicNames,
    buffer: Vec<u8>,
}

/// Output topic names, shared so that sending a record does not copy its topic's name.
struct TopicNames {
    kpis: Arc<str>,
    deviations: Arc<str>,
    actions: Arc<str>,
    late_events: Arc<str>,
    dead_letters: Arc<str>,
    /// The input topic, named in dead-letter headers.
    order_events: Arc<str>,
}

impl TopicNames {
    fn new(t: &Topics) -> Self {
        TopicNames {
            kpis: t.kpis.name.as_str().into(),
            deviations: t.deviations.name.as_str().into(),
            actions: t.actions.name.as_str().into(),
            late_events: t.late_events.name.as_str().into(),
            dead_letters: t.dead_letters.name.as_str().into(),
            order_events: t.order_events.name.as_str().into(),
        }
    }
}

impl KafkaSink {
    pub fn new(cfg: KafkaSinkConfig) -> Result<KafkaSink> {
        let (failed_tx, failed_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(SinkStats::default());
        let producer = Self::producer(&cfg, failed_tx.clone(), stats.clone())?;
        Ok(KafkaSink {
            names: TopicNames::new(&cfg.topics),
            cfg,
            producer,
            failed_tx,
            failed_rx,
            stats,
            undelivered: None,
            buffer: Vec::with_capacity(512),
        })
    }

    fn producer(
        cfg: &KafkaSinkConfig,
        failed: crossbeam_channel::Sender<Failed>,
        stats: Arc<SinkStats>,
    ) -> Result<ThreadedProducer<DeliveryContext>> {
        let timeout = cfg.message_timeout.as_millis().to_string();
        client_config(
            &cfg.kafka,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("message.timeout.ms", &timeout),
                ("queue.buffering.max.messages", "500000"),
            ],
        )
        .create_with_context(DeliveryContext { failed, stats })
        .context("creating the Kafka producer (check `kafka.properties` in the settings and KAFKA_* environment variables)")
    }

    /// Delivery counters.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    pub fn kpi(&mut self, r: &KpiRecord) -> Result<()> {
        let key = r.key();
        self.json(self.names.kpis.clone(), key.as_bytes(), r)
    }

    pub fn deviation(&mut self, d: &Deviation) -> Result<()> {
        self.json(self.names.deviations.clone(), d.id.as_bytes(), d)
    }

    /// An agent action, keyed by its case (the deviation id).
    pub fn action(&mut self, a: &crate::agents::orchestrator::ActionMessage) -> Result<()> {
        self.json(self.names.actions.clone(), a.case_id.as_bytes(), a)
    }

    pub fn late(&mut self, l: &LateEvent) -> Result<()> {
        self.json(self.names.late_events.clone(), l.order_id.as_bytes(), l)
    }

    pub fn dead_letter(&mut self, d: &DeadLetter) -> Result<()> {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.reason",
                value: Some(d.reason.as_str()),
            })
            .insert(Header {
                key: "dlq.source.topic",
                value: Some(&*self.names.order_events),
            })
            .insert(Header {
                key: "dlq.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "dlq.source.offset",
                value: Some(offset.as_str()),
            });
        let key = format!("{partition}:{offset}");
        let topic = self.names.dead_letters.clone();
        self.send(
            &topic,
            None,
            Some(key.as_bytes()),
            Some(&d.raw),
            Some(headers),
            1,
        )
    }

    fn json<T: Serialize>(&mut self, topic: Arc<str>, key: &[u8], value: &T) -> Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        serde_json::to_writer(&mut buffer, value).context("serialising a record")?;
        let r = self.send(&topic, None, Some(key), Some(&buffer), None, 1);
        self.buffer = buffer;
        r
    }

    /// Enqueues one raw message to a partition (the load generator's path).
    pub fn raw(&mut self, topic: &str, partition: i32, payload: &[u8]) -> Result<()> {
        self.send(topic, Some(partition), None, Some(payload), None, 1)
    }

    /// Enqueues one message, waiting while the local queue is full.
    fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        attempt: usize,
    ) -> Result<()> {
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, attempt);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    if attempt == 1 {
                        self.stats.produced.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Backpressure: the background thread is delivering; wait for room.
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                    self.service()?;
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| format!("producing to `{topic}`"));
                }
            }
        }
    }

    /// Re-sends messages whose delivery failed (recreating the producer after a fatal error),
    /// and records those out of attempts.
    pub fn service(&mut self) -> Result<()> {
        while let Ok(f) = self.failed_rx.try_recv() {
            if let Some(fatal) = self.producer.client().fatal_error() {
                tracing::error!(error = ?fatal, "Kafka producer hit a fatal error; recreating it");
                let _ = self.producer.flush(Duration::from_secs(1));
                self.producer =
                    Self::producer(&self.cfg, self.failed_tx.clone(), self.stats.clone())?;
            }
            if f.attempt < MAX_ATTEMPTS {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %f.topic, attempt = f.attempt, error = %f.error, "delivery failed; re-sending");
                self.send(
                    &f.topic,
                    f.partition,
                    f.key.as_deref(),
                    f.payload.as_deref(),
                    f.headers,
                    f.attempt + 1,
                )?;
            } else {
                self.give_up(f)?;
            }
        }
        Ok(())
    }

    fn give_up(&mut self, f: Failed) -> Result<()> {
        self.stats.undelivered.fetch_add(1, Ordering::Relaxed);
        tracing::error!(topic = %f.topic, attempts = f.attempt, error = %f.error, "message undeliverable after every attempt");
        if self.undelivered.is_none() {
            if let Some(dir) = &self.cfg.out_dir {
                std::fs::create_dir_all(dir)?;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("undelivered.jsonl"))?;
                self.undelivered = Some(std::io::BufWriter::new(file));
            }
        }
        if let Some(w) = self.undelivered.as_mut() {
            let line = serde_json::json!({
                "topic": f.topic,
                "key": f.key.as_deref().map(String::from_utf8_lossy),
                "payload": f.payload.as_deref().map(String::from_utf8_lossy),
                "error": f.error,
            });
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
            w.flush()?;
        }
        Ok(())
    }

    /// Waits until every message is delivered or has used its attempts; returns how many were
    /// undeliverable in the whole run.
    pub fn finish(&mut self) -> Result<u64> {
        let deadline = Instant::now() + self.cfg.message_timeout * (MAX_ATTEMPTS as u32 + 1);
        loop {
            let _ = self.producer.flush(Duration::from_millis(500));
            self.service()?;
            if self.producer.in_flight_count() == 0 && self.failed_rx.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} messages still undelivered at shutdown",
                    self.producer.in_flight_count()
                );
            }
        }
        Ok(self.stats.undelivered.load(Ordering::Relaxed))
    }
}
