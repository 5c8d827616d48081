//! Production behaviour of the `run` binary on a real broker (Tansu).
//!
//! Crash recovery: the job consumes a topic with checkpoints on, is killed with SIGKILL at
//! random points (each after a fresh checkpoint, so every restart resumes from a different one)
//! and is restarted until it finishes, each time with another number of workers (a rescale from
//! the checkpoint). Its final KPIs, deviations, dead letters and late events must equal an
//! uninterrupted run's, no deviation may be lost or written twice, and the agent stage may not
//! publish an action twice.
//!
//! Scale-out: two processes of one worker each, in timely's cluster mode on loopback, must
//! produce together exactly what one process produces.
//!
//! Wall-clock fields (`version` of a KPI record, which counts intermediate updates, and a
//! deviation's `detected_at`) differ between any two runs and are left out of the comparisons.

mod broker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::Broker;
use serde_json::Value;

fn command(broker: &Broker, db: &Path, args: &[&str]) -> Command {
    let mut c = broker.binary(db, args);
    c.env("FULFILLMENT_LLM_BACKEND", "offline");
    c
}

fn run_to_end(broker: &Broker, db: &Path, args: &[&str]) -> String {
    broker::stdout_of_success(command(broker, db, args))
}

fn job_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "--source",
        "kafka",
        "--until-end",
        "--no-serve",
        "--workers",
        "2",
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

/// Lines of a JSONL file as values with the wall-clock fields removed.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("a JSON line");
            if let Some(o) = v.as_object_mut() {
                o.remove("version");
                o.remove("detected_at");
                o.remove("at");
                o.remove("created_at");
            }
            v
        })
        .collect()
}

/// Final KPI records by (kpi, dims, window): exactly one each.
fn final_kpis(dir: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in lines(&dir.join("kpis.jsonl")) {
        if r["final"] == Value::Bool(true) {
            let key = format!("{} {} {}", r["kpi"], r["dims"], r["window_start"]);
            assert!(
                out.insert(key.clone(), r).is_none(),
                "final KPI written twice: {key}"
            );
        }
    }
    out
}

/// Deviations by id: each exactly once.
fn deviations(dir: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for d in lines(&dir.join("deviations.jsonl")) {
        let id = d["id"].as_str().expect("id").to_owned();
        assert!(
            out.insert(id.clone(), d).is_none(),
            "deviation {id} written twice"
        );
    }
    out
}

fn sorted(dir: &Path, file: &str) -> Vec<String> {
    let mut v: Vec<String> = lines(&dir.join(file))
        .iter()
        .map(Value::to_string)
        .collect();
    v.sort();
    v
}

/// Published actions as (case, tool, parameters); each at most once.
fn actions(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in lines(&dir.join("actions.jsonl")) {
        let key = format!("{} {} {}", a["case_id"], a["tool"], a["params"]);
        assert!(out.insert(key.clone()), "action published twice: {key}");
    }
    out
}

fn committed(state: &Path) -> usize {
    std::fs::read_dir(state).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().join("COMMITTED-0").exists())
            .count()
    })
}

fn newest_checkpoint(state: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("COMMITTED-0").exists())
        .collect();
    v.sort();
    v.pop()
}

/// A small deterministic generator of kill delays.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn kill(child: &mut Child) {
    child.kill().expect("SIGKILL the job");
    let status = child.wait().expect("reap the job");
    assert!(!status.success(), "the job was killed, not finished");
}

#[test]
fn sigkill_and_restarts_with_other_worker_counts_change_no_number_and_duplicate_no_action() {
    let broker = Broker::start(None);
    let tmp = broker.data_dir().to_path_buf();
    let produced = run_to_end(
        &broker,
        &tmp.join("unused.sqlite"),
        &["produce", "--events", "40000", "--quiet"],
    );
    assert!(produced.starts_with("produced 40000 events"), "{produced}");

    // The uninterrupted run.
    let reference = tmp.join("reference");
    let ref_out = reference.to_str().unwrap().to_owned();
    let text = run_to_end(
        &broker,
        &tmp.join("reference.sqlite"),
        &job_args(&ref_out, &[]),
    );
    assert!(text.contains("40000 events"), "{text}");
    let store_ref = store_totals(&text);

    // The crashing run: paced, so that it lasts long enough to be killed five times.
    let crashed = tmp.join("crashed");
    let crash_out = crashed.to_str().unwrap().to_owned();
    let state = tmp.join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let crash_db = tmp.join("crashed.sqlite");
    let args = job_args(
        &crash_out,
        &[
            "--state-dir",
            &state_arg,
            "--checkpoint-interval",
            "200ms",
            "--speed",
            "20000x",
        ],
    );
    // The uninterrupted run has 2 workers; every restart has another number than the run before
    // it, so each resumes by re-partitioning the saved state (1 <-> 4 workers included).
    let workers = ["2", "3", "1", "4", "2", "3"];
    let with_workers = |n: &'static str| {
        let mut a = args.clone();
        a[6] = n;
        a
    };
    let mut rng = Lcg(0x5eed_2026);
    let mut cuts = Vec::new();
    for kill_no in 1..=5 {
        let before = newest_checkpoint(&state);
        let mut child = command(&broker, &crash_db, &with_workers(workers[kill_no - 1]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the job");
        // Wait for a checkpoint this process wrote, then kill at a random moment after it.
        let deadline = Instant::now() + Duration::from_secs(120);
        while newest_checkpoint(&state) == before {
            assert!(
                Instant::now() < deadline,
                "kill {kill_no}: no new checkpoint"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "kill {kill_no}: the job ended before it could be killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let delay = rng.below(600);
        std::thread::sleep(Duration::from_millis(delay));
        assert!(
            child.try_wait().unwrap().is_none(),
            "kill {kill_no}: the job ended before it could be killed"
        );
        kill(&mut child);
        cuts.push((newest_checkpoint(&state).unwrap(), delay));
    }
    assert!(committed(&state) >= 1);
    // Every restart resumed from a newer checkpoint than the one before.
    for w in cuts.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "checkpoints advance between kills: {cuts:?}"
        );
    }
    let text = run_to_end(&broker, &crash_db, &with_workers(workers[5]));
    assert!(text.contains("40000 events"), "{text}");
    let store_crash = store_totals(&text);

    let (k_ref, k_crash) = (final_kpis(&reference), final_kpis(&crashed));
    assert!(k_ref.len() > 200, "{} final KPIs", k_ref.len());
    let missing: Vec<&String> = k_ref.keys().filter(|k| !k_crash.contains_key(*k)).collect();
    let extra: Vec<&String> = k_crash.keys().filter(|k| !k_ref.contains_key(*k)).collect();
    let changed: Vec<&String> = k_ref
        .iter()
        .filter(|(k, v)| k_crash.get(*k).is_some_and(|c| c != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && changed.is_empty(),
        "final KPIs: {} missing {:?}, {} extra {:?}, {} changed {:?}",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>(),
        changed.len(),
        changed.iter().take(3).collect::<Vec<_>>()
    );
    let (d_ref, d_crash) = (deviations(&reference), deviations(&crashed));
    assert!(d_ref.len() > 100, "{} deviations", d_ref.len());
    assert_eq!(
        d_ref.keys().collect::<Vec<_>>(),
        d_crash.keys().collect::<Vec<_>>(),
        "the same deviations"
    );
    assert!(d_ref == d_crash, "deviations have the same content");
    for file in ["dead_letters.jsonl", "late_events.jsonl"] {
        assert_eq!(sorted(&reference, file), sorted(&crashed, file), "{file}");
    }
    // Agents: the case store holds as many cases by status and actions as after the
    // uninterrupted run, and the action log names no action twice and none the uninterrupted
    // run did not publish. (An action the store recorded just before a kill may miss the log:
    // the store, not the log, is the record.)
    assert_eq!(store_ref, store_crash, "case store totals");
    let (a_ref, a_crash) = (actions(&reference), actions(&crashed));
    assert!(!a_ref.is_empty());
    let unknown: Vec<&String> = a_crash.difference(&a_ref).collect();
    assert!(
        unknown.is_empty(),
        "actions not in the uninterrupted run: {unknown:?}"
    );
}

/// The agent stage's closing line: `store ...: <cases by status> (<runs> runs, <n> actions)`,
/// without the run count (a case killed mid-run is run again).
fn store_totals(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("agents ("))
        .unwrap_or_else(|| panic!("no agent summary in {text}"));
    let store = line.split("; store ").nth(1).expect("store part");
    let (cases, counts) = store.rsplit_once(" (").expect("counts");
    let actions = counts.split(", ").nth(1).expect("actions count");
    let cases = cases.split_once(": ").map_or(cases, |(_, c)| c);
    format!("{cases}; {actions}")
}

/// `n` distinct free loopback ports (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

#[test]
fn two_processes_of_one_worker_equal_one_process() {
    let broker = Broker::start(None);
    let tmp = broker.data_dir().to_path_buf();
    let db = tmp.join("unused.sqlite");
    let produced = run_to_end(&broker, &db, &["produce", "--events", "20000", "--quiet"]);
    assert!(produced.starts_with("produced 20000 events"), "{produced}");
    let one = tmp.join("one");
    let one_out = one.to_str().unwrap().to_owned();
    let mut args = job_args(&one_out, &["--no-agents"]);
    args[6] = "1";
    let text = run_to_end(&broker, &db, &args);
    assert!(text.contains("20000 events"), "{text}");

    // Two processes on loopback, one worker each: the topic's 4 partitions are spread over
    // both, and each process writes the outputs of its own worker.
    let hostfile = tmp.join("hosts.txt");
    let ports = free_ports(2);
    let host_lines = format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]);
    std::fs::write(&hostfile, host_lines).unwrap();
    let hosts = hostfile.to_str().unwrap().to_owned();
    let outs: Vec<PathBuf> = (0..2).map(|p| tmp.join(format!("part-{p}"))).collect();
    let children: Vec<Child> = (0..2)
        .map(|p| {
            let out = outs[p].to_str().unwrap().to_owned();
            let index = p.to_string();
            let mut args = job_args(
                &out,
                &[
                    "--no-agents",
                    "--processes",
                    "2",
                    "--hostfile",
                    &hosts,
                    "--process",
                    &index,
                ],
            );
            args[6] = "1";
            command(&broker, &db, &args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a process")
        })
        .collect();
    let mut events = 0u64;
    for child in children {
        let out = child.wait_with_output().expect("wait for a process");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "a process failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: u64 = text
            .split("done in ")
            .nth(1)
            .and_then(|t| t.split(": ").nth(1))
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no event count in {text}"));
        assert!(n > 0, "each process reads some partitions: {text}");
        events += n;
    }
    assert_eq!(events, 20000, "the processes read every event once");

    let mut kpis = BTreeMap::new();
    let mut devs = BTreeMap::new();
    for out in &outs {
        for (k, v) in final_kpis(out) {
            assert!(
                kpis.insert(k.clone(), v).is_none(),
                "{k} from both processes"
            );
        }
        for (k, v) in deviations(out) {
            assert!(
                devs.insert(k.clone(), v).is_none(),
                "{k} from both processes"
            );
        }
    }
    let k_one = final_kpis(&one);
    assert!(k_one.len() > 100, "{} final KPIs", k_one.len());
    assert_eq!(k_one.len(), kpis.len(), "as many final KPIs");
    assert!(k_one == kpis, "the same final KPIs");
    let d_one = deviations(&one);
    assert!(!d_one.is_empty());
    assert!(d_one == devs, "the same deviations");
}
