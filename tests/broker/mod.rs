//! A real Tansu broker for one test: started, restarted and stopped through `scripts/kafka.sh`
//! (the same script developers use) on a free loopback port with its own durable SQLite data
//! directory, plus helpers to read whole topics back.
//!
//! In: a temporary directory. Out: a running broker (stopped on drop), `KafkaConfig` pointing at
//! it, and topic contents as owned messages.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fulfillment_ai::config::app::KafkaConfig;
use fulfillment_ai::kafka::{partition_count, Topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub topics_file: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs `command` to the end and returns its stdout; panics with stdout and stderr unless it
/// succeeded.
pub fn stdout_of_success(mut command: Command) -> String {
    let out = command.output().expect("run the binary");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

impl Broker {
    /// The job binary with `args`, run from the repository, pointed at this broker, its topics
    /// file and the SQLite case store `db`.
    pub fn binary(&self, db: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fulfillment-ai"));
        c.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.kafka().bootstrap_servers)
            .env("FULFILLMENT_KAFKA_TOPICS_FILE", &self.topics_file)
            .env("DATABASE_URL", format!("sqlite://{}", db.display()));
        c
    }

    /// Starts a broker and creates the topics of `topics_yaml` (the shipped file when `None`).
    pub fn start(topics_yaml: Option<&str>) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let topics_file = dir.path().join("topics.yaml");
        let text = topics_yaml.map(str::to_owned).unwrap_or_else(|| {
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/kafka/topics.yaml"
            ))
            .expect("read config/kafka/topics.yaml")
        });
        // Tests read every KPI version back: keep compaction from removing old versions
        // during a slow run.
        let text = text.replace(
            r#"min.compaction.lag.ms: "60000""#,
            r#"min.compaction.lag.ms: "86400000""#,
        );
        std::fs::write(&topics_file, text).expect("write topics file");
        let mut b = Broker {
            port: free_port(),
            dir,
            topics_file,
        };
        // The free port can be taken by another process before Tansu binds it: try a new one.
        let mut failures = Vec::new();
        while let Err(e) = b.try_script("up") {
            failures.push(e);
            assert!(failures.len() < 3, "Tansu did not start: {failures:#?}");
            let _ = b.try_script("down");
            b.port = free_port();
        }
        b
    }

    pub fn script(&self, command: &str) -> String {
        self.try_script(command)
            .unwrap_or_else(|text| panic!("scripts/kafka.sh {command} failed: {text}"))
    }

    /// Runs `scripts/kafka.sh command` for this broker: its output, or the output of a failure.
    pub fn try_script(&self, command: &str) -> Result<String, String> {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(command)
            .env("FULFILLMENT_KAFKA_PORT", self.port.to_string())
            .env("FULFILLMENT_KAFKA_DIR", self.dir.path().join("broker"))
            .env("FULFILLMENT_KAFKA_STORAGE", "sqlite")
            .env("FULFILLMENT_KAFKA_TOPICS_FILE", &self.topics_file)
            .env("FULFILLMENT_BIN", env!("CARGO_BIN_EXE_fulfillment-ai"))
            .output()
            .expect("run scripts/kafka.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: format!("127.0.0.1:{}", self.port),
            topics_file: self.topics_file.clone(),
            properties: BTreeMap::new(),
        }
    }

    pub fn topics(&self) -> Topics {
        Topics::load(&self.topics_file).expect("topics file")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg("down")
            .env("FULFILLMENT_KAFKA_PORT", self.port.to_string())
            .env("FULFILLMENT_KAFKA_DIR", self.dir.path().join("broker"))
            .output();
    }
}

/// Every message of `topic`, partition by partition in offset order, up to the end offsets at
/// the time of the call.
pub fn read_topic(kafka: &KafkaConfig, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = fulfillment_ai::kafka::client_config(
        kafka,
        &[
            ("group.id", "fulfillment-ai-tests"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create()
    .expect("consumer");
    let timeout = Duration::from_secs(10);
    let n = partition_count(consumer.client(), topic, timeout).expect("topic exists");
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .expect("watermarks");
        ends.insert(p, high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&tpl).expect("assign");
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let mut out: BTreeMap<i32, Vec<OwnedMessage>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().any(|(p, o)| *o < ends[p]) {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: stuck at {next:?} of {ends:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                next.insert(m.partition(), m.offset() + 1);
                if m.offset() < ends[&m.partition()] {
                    out.entry(m.partition()).or_default().push(m.detach());
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out.into_values().flatten().collect()
}

/// A header's value as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == key)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}
