//! Checkpoints: consistent snapshots of the job's state, written atomically to a state directory,
//! and the agreement between workers on when to take them and which one to resume from.
//!
//! In: each worker's operator states and ingest positions at a cut, and the sink collector's file
//! positions. Out: `<state_dir>/ckpt-<n>/worker-<i>.bin` (one per timely worker),
//! `process-<p>.bin` (per process: output file lengths and counters) and a `COMMITTED-<p>`
//! marker per process; on restart, the newest checkpoint every process committed.
//!
//! A cut is an event-time tick `c` that all workers agree on in advance. Each worker holds its
//! input at `c`; once the probe shows every operator has processed every tick below `c`, nothing
//! below `c` is in flight (operators emit a tick's outputs at a time no later than the tick), so
//! the operators' processed state is a consistent cut. Events at or after `c` (stashed or in
//! flight) are not saved: each partition records the offset of the first accepted event at or
//! after `c`, and a restore reads again from there, re-sending only those events and
//! suppressing what was already emitted. See docs/ARCHITECTURE.md, "Recovery".
//!
//! Workers vote after every cut (a broadcast over a small timely dataflow): the vote carries
//! each worker's natural frontier and worker 0's proposal of the next cut, spaced so that cuts
//! come about every `interval` of wall time whatever the event-time speed. A worker encodes its
//! state at the cut and a background thread writes it; the worker waits for that write before
//! its ballot at the next cut, so that vote proves the checkpoint durable everywhere and
//! commits it (the last one is committed by a final vote when the input has ended).
//!
//! Rescaling: a checkpoint resumes with another number of workers per process (the number of
//! processes must stay the same: output positions and counters are kept per process). Every
//! keyed state entry goes to the worker that the dataflow's exchange would send its key to now
//! ([`Owner`]), and every partition's read position to the worker that now reads it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dataflow::kpis::CellStateSnapshot;
use crate::dataflow::orders::OrderStateSnapshot;
use crate::dataflow::risk::RiskStateSnapshot;

/// Where and how often to checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    pub dir: PathBuf,
    /// Wall time between checkpoints (aimed at; cuts are placed in event time).
    pub interval: Duration,
    /// Resume from the newest committed checkpoint in `dir` (otherwise start fresh and
    /// overwrite).
    pub resume: bool,
}

/// The worker that owns a key hash among `peers` workers. timely's `Exchange` sends a record
/// whose key hashes to `h` to worker `h % peers` (it masks when `peers` is a power of two, which
/// is the same), so a restore that keeps the entries a worker owns gives each worker exactly the
/// state its inputs will be routed to; a test below checks this against timely itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub worker: usize,
    pub peers: usize,
}

impl Owner {
    pub fn owns(&self, hash: u64) -> bool {
        hash % self.peers.max(1) as u64 == self.worker as u64
    }
}

/// Appends the entries of a saved per-tick schedule (timers, checks, closing windows) that
/// `keep` selects to `into`, a schedule being restored.
pub fn merge_schedule<T>(
    into: &mut BTreeMap<u64, Vec<T>>,
    saved: BTreeMap<u64, Vec<T>>,
    keep: impl Fn(&T) -> bool,
) {
    for (tick, entries) in saved {
        let kept: Vec<T> = entries.into_iter().filter(|e| keep(e)).collect();
        if !kept.is_empty() {
            into.entry(tick).or_default().extend(kept);
        }
    }
}

/// Read position of one partition at a cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    pub partition: u32,
    /// Next offset to read: everything before it was read before the cut.
    pub next_offset: u64,
    /// Highest accepted event time at `next_offset`.
    pub max_ts: Option<i64>,
    /// Where a restore starts reading: the first accepted event at or after the cut.
    pub replay_from: u64,
    /// Highest accepted event time just before `replay_from`.
    pub replay_max_ts: Option<i64>,
}

/// One worker's part of a checkpoint (borrowing the operator states when saved).
#[derive(Serialize, Deserialize)]
pub struct WorkerSnapshot<'a> {
    pub cut: u64,
    pub peers: usize,
    pub worker: usize,
    pub positions: Vec<PartitionPosition>,
    pub orders: OrderStateSnapshot<'a>,
    pub risk: RiskStateSnapshot<'a>,
    pub cells: CellStateSnapshot<'a>,
}

/// Lengths of the collector's output files at a cut (a restore truncates them there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkPositions {
    pub kpis: u64,
    pub deviations: u64,
    pub dead_letters: u64,
    pub late_events: u64,
}

/// One process's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessSnapshot {
    pub cut: u64,
    /// Workers in the whole cluster when it was taken.
    pub peers: usize,
    pub sinks: Option<SinkPositions>,
    /// Job counters at the cut (the collector's KPI counts are not kept).
    pub counters: crate::dataflow::Counters,
}

/// A worker's ballot in a vote round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ballot {
    pub worker: usize,
    /// Round 0: checkpoints this worker can resume from. Later rounds: empty.
    pub committed: Vec<u64>,
    /// The worker's own input frontier (`u64::MAX` once its input has ended).
    pub natural: u64,
    /// Proposed distance to the next cut, in ticks.
    pub step: u64,
    pub finished: bool,
}

/// What a vote decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The next cut, or `None` once every worker's input has ended.
    pub next_cut: Option<u64>,
    /// Round 0: the checkpoint to resume from.
    pub resume: Option<u64>,
}

/// Decides a round from all ballots: resume from the newest checkpoint every worker has; the
/// next cut is past every worker's frontier by the step of the first worker still reading
/// (workers are held at the current cut, so any later tick is reachable for all).
pub fn decide(cut: u64, ballots: &[Ballot]) -> Decision {
    let resume = ballots
        .iter()
        .map(|b| b.committed.clone())
        .reduce(|a, b| a.into_iter().filter(|k| b.contains(k)).collect())
        .and_then(|common| common.into_iter().max());
    if ballots.iter().all(|b| b.finished) {
        return Decision {
            next_cut: None,
            resume,
        };
    }
    let ahead = ballots
        .iter()
        .filter(|b| !b.finished)
        .map(|b| b.natural)
        .max()
        .unwrap_or(cut);
    let step = ballots
        .iter()
        .filter(|b| !b.finished)
        .min_by_key(|b| b.worker)
        .map_or(1, |b| b.step.max(1));
    Decision {
        next_cut: Some(ahead.max(cut).saturating_add(step)),
        resume,
    }
}

/// Distance to the next cut so that it comes about `interval` of wall time from now, given that
/// event time advanced `ticks` in `elapsed`.
pub fn propose_step(ticks: u64, elapsed: Duration, interval: Duration) -> u64 {
    if elapsed.is_zero() || ticks == 0 {
        return 1;
    }
    let rate = ticks as f64 / elapsed.as_secs_f64();
    (rate * interval.as_secs_f64()).clamp(1.0, 1e15) as u64
}

/// The checkpoint directory `n`.
fn checkpoint_dir(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("ckpt-{n:010}"))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("checkpoint files live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    bincode::serialize(value).map_err(|e| std::io::Error::other(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let bytes = std::fs::read(path)?;
    bincode::deserialize(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

pub fn worker_path(dir: &Path, n: u64, worker: usize) -> PathBuf {
    checkpoint_dir(dir, n).join(format!("worker-{worker}.bin"))
}

pub fn process_path(dir: &Path, n: u64, process: usize) -> PathBuf {
    checkpoint_dir(dir, n).join(format!("process-{process}.bin"))
}

pub fn load_worker(dir: &Path, n: u64, worker: usize) -> std::io::Result<WorkerSnapshot<'static>> {
    decode(&worker_path(dir, n, worker))
}

/// How many processes wrote checkpoint `n` (one `process-<p>.bin` each).
pub fn processes_of(dir: &Path, n: u64) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(checkpoint_dir(dir, n))?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("process-") && name.ends_with(".bin")
        })
        .count())
}

pub fn save_process(
    dir: &Path,
    n: u64,
    process: usize,
    s: &ProcessSnapshot,
) -> std::io::Result<()> {
    write_atomic(&process_path(dir, n, process), &encode(s)?)
}

pub fn load_process(dir: &Path, n: u64, process: usize) -> std::io::Result<ProcessSnapshot> {
    decode(&process_path(dir, n, process))
}

/// A checkpoint's files being written in the background: the workers encode their state at
/// the cut (fast, in memory) and go on; the files must be durable before the worker's ballot at
/// the next cut, and that vote commits the checkpoint.
pub struct PendingWrite {
    pub number: u64,
    handle: std::thread::JoinHandle<std::io::Result<()>>,
}

impl PendingWrite {
    pub fn spawn(number: u64, files: Vec<(PathBuf, Vec<u8>)>) -> PendingWrite {
        let handle = std::thread::spawn(move || {
            for (path, bytes) in files {
                write_atomic(&path, &bytes)?;
            }
            Ok(())
        });
        PendingWrite { number, handle }
    }

    /// Waits until the files are written; returns the checkpoint's number.
    pub fn finish(self) -> std::io::Result<u64> {
        self.handle
            .join()
            .map_err(|_| std::io::Error::other("the checkpoint writer panicked"))??;
        Ok(self.number)
    }
}

/// Marks checkpoint `n` complete for `process` (every worker of the cluster has written its
/// part: a vote that each worker casts after its write has been counted) and removes this process's older
/// checkpoints but the previous one.
pub fn commit(dir: &Path, n: u64, process: usize) -> std::io::Result<()> {
    write_atomic(
        &checkpoint_dir(dir, n).join(format!("COMMITTED-{process}")),
        b"",
    )?;
    for old in committed(dir, process)?.into_iter().filter(|&k| k + 1 < n) {
        let _ = std::fs::remove_dir_all(checkpoint_dir(dir, old));
    }
    Ok(())
}

/// Checkpoints `process` has committed, oldest first.
pub fn committed(dir: &Path, process: usize) -> std::io::Result<Vec<u64>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("ckpt-"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().join(format!("COMMITTED-{process}")).exists() {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Removes every checkpoint (a fresh start).
pub fn clear(dir: &Path) -> std::io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("ckpt-") {
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Per-worker bookkeeping of the checkpoint schedule.
pub struct Schedule {
    pub opts: CheckpointOptions,
    /// Number of the next checkpoint.
    pub next_number: u64,
    /// The agreed next cut (`None` once the input ended everywhere).
    pub cut: Option<u64>,
    /// Number of the next vote round (round 0 agrees on where to resume).
    pub round: u64,
    /// This worker's frontier at its previous ballot, and when that was.
    last_natural: Option<u64>,
    last_wall: Instant,
}

impl Schedule {
    pub fn new(opts: CheckpointOptions) -> Self {
        Schedule {
            opts,
            next_number: 1,
            cut: None,
            round: 0,
            last_natural: None,
            last_wall: Instant::now(),
        }
    }

    /// This worker's ballot at the current cut.
    pub fn ballot(&self, worker: usize, natural: u64, finished: bool) -> Ballot {
        let step = match self.last_natural {
            Some(prev) if !finished => propose_step(
                natural.saturating_sub(prev),
                self.last_wall.elapsed(),
                self.opts.interval,
            ),
            _ => 1,
        };
        Ballot {
            worker,
            committed: Vec::new(),
            natural: if finished { u64::MAX } else { natural },
            step,
            finished,
        }
    }

    /// After rounds 0 and 1: the first cut is the tick after `at` (where the input starts).
    pub fn start(&mut self, at: u64) {
        self.cut = Some(at + 1);
        self.round = 2;
        self.last_wall = Instant::now();
    }

    /// Moves to the decided next cut; `natural` is the frontier this worker voted with.
    pub fn advance(&mut self, decision: &Decision, natural: u64) {
        self.last_natural = Some(natural);
        self.last_wall = Instant::now();
        self.cut = decision.next_cut;
        self.next_number += 1;
        self.round += 1;
    }

    /// Continues the numbering after restored checkpoint `number`.
    pub fn restored(&mut self, number: u64) {
        self.next_number = number + 1;
    }
}

/// Positions by partition, for [`crate::sources::Source::readers_from`].
pub fn replay_starts(positions: &[PartitionPosition]) -> BTreeMap<u32, u64> {
    positions
        .iter()
        .map(|p| (p.partition, p.replay_from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballot(worker: usize, natural: u64, step: u64, finished: bool) -> Ballot {
        Ballot {
            worker,
            committed: Vec::new(),
            natural,
            step,
            finished,
        }
    }

    #[test]
    fn next_cut_is_past_every_frontier_by_worker_zeros_step() {
        let d = decide(100, &[ballot(1, 130, 7, false), ballot(0, 120, 50, false)]);
        assert_eq!(d.next_cut, Some(180));
        // Finished workers do not pull the cut forward; all finished ends the schedule.
        let d = decide(
            100,
            &[ballot(0, 90, 5, false), ballot(1, u64::MAX, 9, true)],
        );
        assert_eq!(d.next_cut, Some(105));
        let d = decide(
            100,
            &[ballot(0, u64::MAX, 5, true), ballot(1, u64::MAX, 9, true)],
        );
        assert_eq!(d.next_cut, None);
    }

    #[test]
    fn resume_from_the_newest_checkpoint_every_worker_has() {
        let mut a = ballot(0, 0, 1, false);
        a.committed = vec![3, 4, 5];
        let mut b = ballot(1, 0, 1, false);
        b.committed = vec![3, 4];
        assert_eq!(decide(0, &[a.clone(), b]).resume, Some(4));
        let mut c = ballot(2, 0, 1, false);
        c.committed = vec![];
        assert_eq!(decide(0, &[a, c]).resume, None);
    }

    #[test]
    fn steps_follow_the_event_time_rate() {
        // 600 ticks in 2 s, 10 s apart: 3000 ticks.
        assert_eq!(
            propose_step(600, Duration::from_secs(2), Duration::from_secs(10)),
            3000
        );
        assert_eq!(
            propose_step(0, Duration::from_secs(2), Duration::from_secs(10)),
            1
        );
    }

    #[test]
    fn commit_keeps_the_previous_checkpoint_and_clear_removes_all() {
        let dir = tempfile::tempdir().unwrap();
        let p = ProcessSnapshot {
            cut: 7,
            ..Default::default()
        };
        for n in 1..=4 {
            save_process(dir.path(), n, 0, &p).unwrap();
            commit(dir.path(), n, 0).unwrap();
        }
        assert_eq!(committed(dir.path(), 0).unwrap(), vec![3, 4]);
        assert_eq!(committed(dir.path(), 1).unwrap(), Vec::<u64>::new());
        assert_eq!(load_process(dir.path(), 4, 0).unwrap().cut, 7);
        // An uncommitted (half-written) checkpoint is not offered.
        save_process(dir.path(), 5, 0, &p).unwrap();
        assert_eq!(committed(dir.path(), 0).unwrap(), vec![3, 4]);
        clear(dir.path()).unwrap();
        assert!(committed(dir.path(), 0).unwrap().is_empty());
    }

    /// `Owner` must agree with the exchange that routes the live data, or a rescaled restore
    /// would put state on one worker and its events on another.
    #[test]
    fn owner_matches_where_timely_exchanges_a_key() {
        use std::sync::{Arc, Mutex};
        use timely::dataflow::channels::pact::Exchange;
        use timely::dataflow::operators::{Operator, ToStream};
        for peers in [3usize, 4] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = seen.clone();
            timely::execute(timely::Config::process(peers), move |worker| {
                let me = worker.index();
                let sink = sink.clone();
                worker.dataflow::<u64, _, _>(|scope| {
                    let keys: Vec<u64> = if me == 0 {
                        (0..200u64)
                            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    keys.to_stream(scope).sink(
                        Exchange::new(|k: &u64| *k),
                        "Record",
                        move |(input, _frontier)| {
                            input.for_each(|_t, data| {
                                let mut s = sink.lock().unwrap();
                                s.extend(data.drain(..).map(|k| (k, me)));
                            });
                        },
                    );
                });
            })
            .unwrap();
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 200);
            for &(key, worker) in seen.iter() {
                assert!(
                    Owner { worker, peers }.owns(key),
                    "key {key} went to {worker} of {peers}"
                );
            }
        }
    }
}
