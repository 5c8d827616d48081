//! The REST API against its own OpenAPI document: `fulfillment-ai run` serves on a free loopback
//! port (default source, agents on the offline backend, an API key), and schemathesis (pinned in
//! `scripts/requirements-test.txt`, installed by `scripts/setup.sh` into
//! `$FULFILLMENT_CACHE/venv`) generates valid and invalid requests for every operation of
//! `/openapi.json`. The check is `not_a_server_error`: whatever it sends, the server answers
//! without a 5xx and without dropping the connection. The run is seeded, so it is the same cases
//! every time.
//!
//! Without the venv (or the Superstore dataset) the test prints why and passes, unless `CI` is
//! set, where that means setup is broken.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod dataset;
mod serving;
use serving::RunningJob;

const API_KEY: &str = "test-key";
/// Generated cases per operation and phase; keeps the whole run well under three minutes.
const MAX_EXAMPLES: &str = "20";
const SEED: &str = "20240601";
const SERVER_START: Duration = Duration::from_secs(180);
const SCHEMATHESIS_LIMIT: Duration = Duration::from_secs(600);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The venv `scripts/setup.sh` makes: `$FULFILLMENT_CACHE/venv` (default
/// `~/.cache/fulfillment-ai/venv`).
fn venv() -> PathBuf {
    let cache = std::env::var_os("FULFILLMENT_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/fulfillment-ai")
        });
    cache.join("venv")
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Panics with the job's output.
fn fail(job: &RunningJob, what: &str) -> ! {
    panic!(
        "{what}\n--- job stdout ---\n{}\n--- job stderr (last 4000 bytes) ---\n{}",
        job.stdout(),
        tail(&job.stderr(), 4000)
    );
}

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The number after `Tested:` in the summary's `API Operations:` block.
fn operations_tested(output: &str) -> Option<u64> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Tested:"))
        .find_map(|n| n.trim().parse().ok())
}

#[test]
fn every_operation_survives_generated_requests_without_a_server_error() {
    let schemathesis = venv().join("bin").join("schemathesis");
    if !schemathesis.exists() {
        assert!(
            !ci(),
            "{} is missing under CI: run scripts/setup.sh",
            schemathesis.display()
        );
        eprintln!(
            "skipping the schemathesis test: {} not found (run scripts/setup.sh)",
            schemathesis.display()
        );
        return;
    }
    if dataset::superstore_dataset().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = RunningJob::start(
        dir.path(),
        &["--source", "default"],
        &[
            ("FULFILLMENT_API_KEY", API_KEY),
            ("FULFILLMENT_LLM_BACKEND", "auto"),
            ("OPENAI_API_KEY", ""),
        ],
    );
    server.wait_for_health(SERVER_START, |_| true);

    let reports = dir.path().join("schemathesis");
    let junit = reports.join("junit.xml");
    let log_path = dir.path().join("schemathesis.log");
    let log = File::create(&log_path).unwrap();
    let mut cmd = Command::new(&schemathesis);
    cmd.arg("run")
        .arg(format!("http://{}/openapi.json", server.addr))
        .args(["--checks", "not_a_server_error"])
        .args(["--header", &format!("Authorization: Bearer {API_KEY}")])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        .args(["--request-timeout", "20"])
        .args(["--generation-database", "none"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&reports)
        .arg("--report-junit-path")
        .arg(&junit)
        .arg("--no-color")
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let mut st = KillOnDrop(cmd.spawn().expect("start schemathesis"));
    let status = loop {
        if let Some(status) = st.0.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > SCHEMATHESIS_LIMIT {
            let _ = st.0.kill();
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            fail(
                &server,
                &format!(
                    "schemathesis still running after {SCHEMATHESIS_LIMIT:?}: {shown}\n{}",
                    tail(&output, 20_000)
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!(
        "schemathesis finished in {:.0} s: {status}",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        fail(
            &server,
            &format!(
                "schemathesis failed ({status}): {shown}\n{}",
                tail(&output, 20_000)
            ),
        );
    }
    let tested = operations_tested(&output)
        .unwrap_or_else(|| panic!("no `Tested: N` in the schemathesis output:\n{output}"));
    assert!(tested > 0, "schemathesis tested no operation:\n{output}");
    let report = std::fs::read_to_string(&junit)
        .unwrap_or_else(|e| panic!("JUnit report {}: {e}", junit.display()));
    assert!(report.contains("<testcase"), "empty JUnit report: {report}");
    eprintln!("schemathesis tested {tested} operations");
    drop(server);
}

#[test]
fn parses_the_summary() {
    let summary = "API Operations:\n  Selected: 17/17\n  Tested: 17\n\nTest Phases:";
    assert_eq!(operations_tested(summary), Some(17));
    assert_eq!(operations_tested("nothing"), None);
}
