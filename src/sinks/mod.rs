//! Sinks: the collector that receives everything the job emits (KPI records, deviations, dead
//! letters, late events, risk scores), writes it as JSONL files to an output directory and, when
//! configured, to Kafka topics ([`kafka`]), and builds the [`JobReport`](crate::dataflow::JobReport).
//!
//! In: [`SinkMessage`]s over a channel from the timely workers and the ingest loops. Out: files
//! `kpis.jsonl`, `deviations.jsonl`, `dead_letters.jsonl`, `late_events.jsonl`, Kafka messages,
//! and in-memory results. Deviations and dead letters are never dropped: the channel is
//! unbounded.

pub mod kafka;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataflow::checkpoint::SinkPositions;
use crate::dataflow::risk::RiskScore;
use crate::model::records::{Deviation, KpiRecord};

/// A raw event that could not be decoded, with where it came from and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    /// The event's bytes exactly as received (JSONL shows them as text, invalid UTF-8 replaced).
    #[serde(with = "bytes_as_text")]
    pub raw: Vec<u8>,
}

mod bytes_as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(raw: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(raw))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// An event that arrived behind its partition's watermark plus allowed lateness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateEvent {
    pub partition: u32,
    pub offset: u64,
    pub event_id: String,
    pub order_id: String,
    pub ts: i64,
    /// The partition frontier (tick) it was behind.
    pub frontier_tick: u64,
}

pub enum SinkMessage {
    Kpis(Vec<KpiRecord>),
    Deviations(Vec<Deviation>),
    DeadLetter(DeadLetter),
    Late(LateEvent),
    RiskScores(Vec<RiskScore>),
    /// Applied order events, for the server's order view (only when it runs).
    OrderEvents(Vec<crate::model::event::OrderEvent>),
    /// With checkpoints: open the output files, truncated to where a restored checkpoint left
    /// them (`Some`), or new (`None`). Messages before it wait.
    Open(Option<SinkPositions>),
    /// A checkpoint cut: flush and answer with the files' lengths.
    Checkpoint(crossbeam_channel::Sender<Option<SinkPositions>>),
}

/// What the collector keeps.
#[derive(Default)]
pub struct Collected {
    pub final_kpis: Vec<KpiRecord>,
    pub final_count: u64,
    pub kpi_updates: u64,
    pub deviations: Vec<Deviation>,
    pub dead_letters: Vec<DeadLetter>,
    pub late_events: Vec<LateEvent>,
    pub risk_scores: Vec<RiskScore>,
    /// Kafka delivery totals, when the Kafka sinks were on.
    pub kafka: Option<KafkaDelivery>,
}

/// What the Kafka sinks delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KafkaDelivery {
    pub produced: u64,
    pub delivered: u64,
    pub retried: u64,
    pub undelivered: u64,
}

struct Files {
    kpis: BufWriter<File>,
    deviations: BufWriter<File>,
    dead_letters: BufWriter<File>,
    late: BufWriter<File>,
}

impl Files {
    fn flush(&mut self) -> std::io::Result<()> {
        self.kpis.flush()?;
        self.deviations.flush()?;
        self.dead_letters.flush()?;
        self.late.flush()
    }

    /// Creates the files, or with `at`, truncates existing ones to those lengths and appends.
    fn open(dir: &Path, at: Option<SinkPositions>) -> std::io::Result<Files> {
        std::fs::create_dir_all(dir)?;
        let open = |name: &str, len: Option<u64>| -> std::io::Result<BufWriter<File>> {
            let path = dir.join(name);
            let Some(len) = len else {
                return Ok(BufWriter::new(File::create(path)?));
            };
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            if f.metadata()?.len() < len {
                return Err(std::io::Error::other(format!(
                    "{} is shorter than the checkpoint says ({len} bytes)",
                    path.display()
                )));
            }
            f.set_len(len)?;
            Ok(BufWriter::new(f))
        };
        Ok(Files {
            kpis: open("kpis.jsonl", at.map(|p| p.kpis))?,
            deviations: open("deviations.jsonl", at.map(|p| p.deviations))?,
            dead_letters: open("dead_letters.jsonl", at.map(|p| p.dead_letters))?,
            late: open("late_events.jsonl", at.map(|p| p.late_events))?,
        })
    }

    fn positions(&mut self) -> std::io::Result<SinkPositions> {
        self.flush()?;
        let len = |w: &BufWriter<File>| w.get_ref().metadata().map(|m| m.len());
        Ok(SinkPositions {
            kpis: len(&self.kpis)?,
            deviations: len(&self.deviations)?,
            dead_letters: len(&self.dead_letters)?,
            late_events: len(&self.late)?,
        })
    }
}

fn write_line<T: Serialize>(w: &mut BufWriter<File>, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, value)?;
    w.write_all(b"\n")
}

/// Options of the collector.
#[derive(Clone, Debug, Default)]
pub struct CollectorOptions {
    pub out_dir: Option<PathBuf>,
    /// Keep final KPIs, deviations, dead letters and late events in memory for the report.
    pub keep_in_memory: bool,
    /// Print deviations and final global KPIs to stdout as they arrive.
    pub echo: bool,
    /// Also produce KPIs, deviations, dead letters and late events to Kafka.
    pub kafka: Option<kafka::KafkaSinkConfig>,
    /// Every deviation is also handed here (the agent stage); unbounded, so never blocks.
    pub deviation_tap: Option<crossbeam_channel::Sender<Deviation>>,
    /// The server's live state: sees every KPI record, deviation, order event and risk score.
    pub live_view: Option<std::sync::Arc<crate::serve::live::LiveView>>,
    /// Wait for [`SinkMessage::Open`] before opening the files (checkpointed jobs).
    pub await_open: bool,
}

/// Receives until every sender is dropped; then drops the deviation tap, which tells the agent
/// stage that no more deviations come.
pub fn collect(
    rx: crossbeam_channel::Receiver<SinkMessage>,
    opts: CollectorOptions,
) -> anyhow::Result<Collected> {
    let mut files = if opts.await_open {
        None
    } else {
        opts.out_dir
            .as_deref()
            .map(|d| Files::open(d, None))
            .transpose()?
    };
    let mut producer = opts.kafka.clone().map(kafka::KafkaSink::new).transpose()?;
    let mut c = Collected::default();
    let mut held: Option<Vec<SinkMessage>> = opts.await_open.then(Vec::new);
    loop {
        let msg = match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(m) => m,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Some(p) = producer.as_mut() {
                    p.service()?;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            SinkMessage::Open(at) => {
                if let Some(dir) = opts.out_dir.as_deref() {
                    files = Some(Files::open(dir, at)?);
                    if at.is_some() {
                        reoffer_deviations(dir, &opts)?;
                    }
                }
                for m in held.take().unwrap_or_default() {
                    handle(m, &mut files, &mut producer, &mut c, &opts)?;
                }
            }
            SinkMessage::Checkpoint(reply) => {
                let at = files.as_mut().map(Files::positions).transpose()?;
                if let Some(p) = producer.as_mut() {
                    p.service()?;
                }
                let _ = reply.send(at);
            }
            m => match held.as_mut() {
                Some(h) => h.push(m),
                None => handle(m, &mut files, &mut producer, &mut c, &opts)?,
            },
        }
        // Flush whenever the channel runs dry, so files are readable while the job runs (and
        // whole lines survive an interrupt).
        if rx.is_empty() {
            if let Some(f) = files.as_mut() {
                f.flush()?;
            }
            if let Some(p) = producer.as_mut() {
                p.service()?;
            }
        }
    }
    if let Some(mut f) = files {
        f.flush()?;
    }
    if let Some(mut p) = producer {
        p.finish()?;
        let s = p.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        c.kafka = Some(KafkaDelivery {
            produced: load(&s.produced),
            delivered: load(&s.delivered),
            retried: load(&s.retried),
            undelivered: load(&s.undelivered),
        });
    }
    c.final_kpis.sort_by_key(|a| a.key());
    c.deviations.sort_by(|a, b| a.id.cmp(&b.id));
    c.risk_scores.sort();
    c.dead_letters.sort_by_key(|d| (d.partition, d.offset));
    c.late_events.sort_by_key(|d| (d.partition, d.offset));
    Ok(c)
}

/// Writes one message to the files, the Kafka sinks, the server's live view and the report.
fn handle(
    msg: SinkMessage,
    files: &mut Option<Files>,
    producer: &mut Option<kafka::KafkaSink>,
    c: &mut Collected,
    opts: &CollectorOptions,
) -> anyhow::Result<()> {
    match msg {
        SinkMessage::Kpis(records) => {
            c.kpi_updates += records.len() as u64;
            if let Some(v) = &opts.live_view {
                v.on_kpis(&records);
            }
            for r in records {
                if let Some(f) = files.as_mut() {
                    write_line(&mut f.kpis, &r)?;
                }
                if let Some(p) = producer.as_mut() {
                    p.kpi(&r)?;
                }
                if r.is_final {
                    c.final_count += 1;
                    if opts.echo && r.dims.is_empty() {
                        println!(
                            "KPI {:<26} window {} value {} ({:?})",
                            r.kpi,
                            crate::model::time::format_rfc3339(r.window_start),
                            r.value
                                .map(|v| format!("{v:.4}"))
                                .unwrap_or_else(|| "-".into()),
                            r.status
                        );
                    }
                    if opts.keep_in_memory {
                        c.final_kpis.push(r);
                    }
                }
            }
        }
        SinkMessage::Deviations(devs) => {
            if let Some(v) = &opts.live_view {
                v.on_deviations(&devs);
            }
            for d in devs {
                if let Some(f) = files.as_mut() {
                    write_line(&mut f.deviations, &d)?;
                }
                if let Some(p) = producer.as_mut() {
                    p.deviation(&d)?;
                }
                if let Some(tap) = &opts.deviation_tap {
                    let _ = tap.send(d.clone());
                }
                if opts.echo {
                    println!("DEVIATION {:?} {} {}", d.severity, d.id, d.summary);
                }
                if opts.keep_in_memory {
                    c.deviations.push(d);
                }
            }
        }
        SinkMessage::DeadLetter(d) => {
            if let Some(f) = files.as_mut() {
                write_line(&mut f.dead_letters, &d)?;
            }
            if let Some(p) = producer.as_mut() {
                p.dead_letter(&d)?;
            }
            if opts.keep_in_memory {
                c.dead_letters.push(d);
            }
        }
        SinkMessage::Late(l) => {
            if let Some(f) = files.as_mut() {
                write_line(&mut f.late, &l)?;
            }
            if let Some(p) = producer.as_mut() {
                p.late(&l)?;
            }
            if opts.keep_in_memory {
                c.late_events.push(l);
            }
        }
        SinkMessage::RiskScores(s) => {
            if let Some(v) = &opts.live_view {
                v.on_risk_scores(&s);
            }
            if opts.keep_in_memory {
                c.risk_scores.extend(s);
            }
        }
        SinkMessage::OrderEvents(events) => {
            if let Some(v) = &opts.live_view {
                v.on_order_events(events);
            }
        }
        // Handled by the collector loop.
        SinkMessage::Open(_) | SinkMessage::Checkpoint(_) => {}
    }
    Ok(())
}

/// After a restore, hands the deviations emitted before the checkpoint to the agent stage again:
/// ones that were queued in memory when the job died would otherwise be lost (the case store
/// ignores the ones it already has).
fn reoffer_deviations(dir: &Path, opts: &CollectorOptions) -> anyhow::Result<()> {
    let Some(tap) = &opts.deviation_tap else {
        return Ok(());
    };
    let text = std::fs::read_to_string(dir.join("deviations.jsonl"))?;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let _ = tap.send(serde_json::from_str(line)?);
    }
    Ok(())
}
