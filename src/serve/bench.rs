//! `fulfillment-ai bench --serve`: a load benchmark of the HTTP/WebSocket server (docs/API.md).
//!
//! In: the `fulfillment-ai` binary ([`ServeBenchOptions::binary`]), started as a child process
//! (`run --source default --rate 2000 --listen 127.0.0.1:0 --no-agents --out <temp dir>`, no API
//! key), and the load sizes. Everything runs on loopback; the child and its temp dir are removed at
//! the end. The load starts once the server's input rate is down to the live rate (`warm_up`:
//! the Superstore history is replayed first at full speed). Out: one JSON value with
//! - `ws`: `subscribers` clients on `/ws/kpi`, `stalled_fraction` of them never read their socket
//!   (4 KiB receive buffer); no client limits message sizes. The fast ones parse every message;
//!   delivery latency is the local wall clock at receipt minus the server's wall clock on the
//!   message (`sent_wall` on `kpis` deltas, `wall` on heartbeats), p50/p99/max over the measured
//!   `seconds` (after every client has connected), and how long connecting took. Also messages and bytes received, fast clients the server dropped (should be
//!   none), and stalled clients the server disconnected: as the clients see it (close 1008 or end
//!   of stream when their backlog is finally read) and `fulfillment_ws_dropped_total` of `/metrics`.
//! - `rest`: open-loop constant-rate load, `rest_rate` requests/s for `rest_seconds`, round robin
//!   over `GET /kpis`, `/deviations?limit=20`, `/health`, `/orders?limit=20`. Request `i` is due at
//!   `start + i / rest_rate` and its latency is measured from that due time (a request that waits
//!   for a free connection because the server is slow counts the wait: no coordinated omission);
//!   `service_ms` is from the actual send. p50/p99/max overall and per endpoint, and errors. A
//!   server far behind is not waited for: requests not sent 10 s after the schedule ends count
//!   as errors with the latency they had reached (`latency_is_lower_bound`).
//! - `wrk`: when `wrk` is on PATH, the same mix closed-loop at full speed for `rest_seconds` (wrk
//!   has no rate limit, so this is saturation throughput and latency, wrk's own numbers).
//! - `rss_mb`: the server's VmRSS (`/proc/PID/status`), sampled every second: at start of load,
//!   peak per phase, overall peak, and final. The WebSocket phase stops early (`ws.aborted`) if
//!   the server's RSS passes half the memory available at start.
//! - `cpu_seconds` per phase, of the server and of the benchmark's own clients (they share the
//!   machine's cores, so a busy client inflates the latencies it measures).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Input rate of the server's live generator during the benchmark (events/s).
pub const SERVER_RATE: u32 = 2000;
/// The REST mix, requested round robin.
pub const REST_PATHS: [&str; 4] = [
    "/kpis",
    "/deviations?limit=20",
    "/health",
    "/orders?limit=20",
];
/// Keep-alive connections of the constant-rate REST client.
const REST_CONNECTIONS: usize = 64;
/// Receive buffer of a stalled WebSocket client (the kernel rounds it up to its minimum).
const STALLED_RECV_BUFFER: u32 = 4096;
/// WebSocket handshakes in flight at once while connecting the subscribers.
const CONNECTS_IN_FLIGHT: usize = 64;
const SERVER_START: Duration = Duration::from_secs(180);
/// Longest wait for the history replay to end before the load starts.
const WARM_UP_LIMIT: Duration = Duration::from_secs(120);
/// How long the stalled clients' backlog is read at the end to see how each connection ended.
const STALLED_DRAIN: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Error messages kept (of each kind) for the report.
const ERRORS_SHOWN: usize = 5;

/// What to run: see the module documentation.
#[derive(Clone, Debug)]
pub struct ServeBenchOptions {
    /// The `fulfillment-ai` binary to start as the server.
    pub binary: PathBuf,
    /// WebSocket clients on `/ws/kpi` (1000).
    pub subscribers: usize,
    /// Share of the subscribers that never read (0.1).
    pub stalled_fraction: f64,
    /// Measured WebSocket seconds, after every client has connected.
    pub seconds: u64,
    /// Constant REST request rate, requests/s (1000).
    pub rest_rate: u32,
    /// Seconds of the constant-rate REST load (and of the wrk run).
    pub rest_seconds: u64,
}

impl Default for ServeBenchOptions {
    fn default() -> Self {
        ServeBenchOptions {
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fulfillment-ai")),
            subscribers: 1000,
            stalled_fraction: 0.1,
            seconds: 30,
            rest_rate: 1000,
            rest_seconds: 20,
        }
    }
}

/// Runs the whole benchmark against a fresh server process: see the module documentation.
pub fn run(opts: &ServeBenchOptions) -> Result<Value> {
    if !(0.0..=1.0).contains(&opts.stalled_fraction) {
        bail!(
            "stalled fraction {} is not between 0 and 1",
            opts.stalled_fraction
        );
    }
    if opts.rest_seconds > 0 && opts.rest_rate == 0 {
        bail!("REST rate 0 with {} REST seconds", opts.rest_seconds);
    }
    let load_at_start = load_average();
    let mut server = ServerProcess::start(&opts.binary)?;
    let rss = RssSampler::start(server.pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime for the benchmark clients")?;
    let outcome = rt.block_on(async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(REST_CONNECTIONS)
            .build()
            .context("HTTP client")?;
        wait_healthy(&http, &server).await?;
        let warm_up = warm_up(&http, server.addr).await?;
        let at_start = rss.now_mb();
        let guard = MemoryGuard {
            pid: server.pid,
            limit_mb: mem_available_mb().map(|mb| mb / 2.0),
        };
        let t_ws = rss.elapsed();
        let cpu = CpuMark::new(server.pid);
        let mut ws = ws_phase(&http, server.addr, opts, &guard).await?;
        ws["cpu_seconds"] = cpu.since();
        let t_rest = rss.elapsed();
        let cpu = CpuMark::new(server.pid);
        let mut rest = rest_phase(&http, server.addr, opts.rest_rate, opts.rest_seconds).await?;
        rest["cpu_seconds"] = cpu.since();
        let t_wrk = rss.elapsed();
        let wrk = wrk_phase(server.addr, opts.rest_seconds, &server.dir.0).await;
        let t_end = rss.elapsed();
        let metrics = get_text(&http, server.addr, "/metrics").await.ok();
        let phases = json!({"warm_up": warm_up, "ws": ws, "rest": rest, "wrk": wrk});
        anyhow::Ok((phases, at_start, [t_ws, t_rest, t_wrk, t_end], metrics))
    });
    let (phases, at_start, [t_ws, t_rest, t_wrk, t_end], metrics) = match outcome {
        Ok(o) => o,
        Err(e) => {
            let detail = server.diagnostics();
            return Err(e.context(detail));
        }
    };
    let final_mb = rss.now_mb();
    let samples = rss.stop();
    let peak_between = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, mb)| *mb)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let peak = samples.iter().map(|(_, mb)| *mb).fold(0.0, f64::max);
    let still_running = server.running();
    drop(server);
    Ok(json!({
        "load_average": {"at_start": load_at_start, "at_end": load_average()},
        "server": {
            "command": format!(
                "{} run --source default --rate {SERVER_RATE} --listen 127.0.0.1:0 --no-agents --out TMP",
                opts.binary.display()
            ),
            "rate": SERVER_RATE,
            "still_running_at_end": still_running,
            "ws_dropped_total_at_end": metrics.as_deref().map(ws_dropped),
        },
        "warm_up": phases["warm_up"],
        "ws": phases["ws"],
        "rest": phases["rest"],
        "wrk": phases["wrk"],
        "rss_mb": {
            "at_start": at_start.map(round3),
            "peak_ws": peak_between(t_ws, t_rest).map(round3),
            "peak_rest": peak_between(t_rest, t_wrk).map(round3),
            "peak_wrk": peak_between(t_wrk, t_end).map(round3),
            "peak": round3(peak),
            "final": final_mb.map(round3),
            "samples": samples.len(),
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// The server process

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server under test; killed (and its temp dir removed) when dropped.
struct ServerProcess {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    stdout_tail: Arc<Mutex<VecDeque<String>>>,
    // Declared last: removed after the child is gone.
    dir: TempDir,
}

impl ServerProcess {
    fn start(binary: &Path) -> Result<ServerProcess> {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "fulfillment-serve-bench-{}-{}",
            std::process::id(),
            wall_ms() as u64
        )));
        std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
        let stderr = File::create(dir.0.join("server.stderr"))?;
        let mut child = Command::new(binary)
            .args(["run", "--source", "default", "--rate"])
            .arg(SERVER_RATE.to_string())
            .args(["--listen", "127.0.0.1:0", "--no-agents", "--out"])
            .arg(dir.0.join("out"))
            .env_remove("FULFILLMENT_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let pipe = child.stdout.take().context("the server's stdout")?;
        let stdout_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let tail = Arc::clone(&stdout_tail);
        // Drains stdout for the whole run (a full pipe would stall the server); the first
        // `dashboard http://HOST:PORT/` line gives the address.
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = dashboard_addr(&line) {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == 50 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut server = ServerProcess {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout_tail,
            dir,
        };
        let deadline = Instant::now() + SERVER_START;
        loop {
            match addr_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(addr) => {
                    server.addr = addr;
                    return Ok(server);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "the server closed stdout without a `dashboard http://...` line{}",
                        server.diagnostics()
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !server.running() {
                        bail!("the server exited before serving{}", server.diagnostics());
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "no `dashboard http://...` line within {SERVER_START:?}{}",
                            server.diagnostics()
                        );
                    }
                }
            }
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's last stdout lines and stderr, for error messages.
    fn diagnostics(&self) -> String {
        let out: Vec<String> = self
            .stdout_tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.0.join("server.stderr")).unwrap_or_default();
        let mut at = err.len().saturating_sub(4000);
        while !err.is_char_boundary(at) {
            at += 1;
        }
        format!(
            "\n--- server stdout (last lines) ---\n{}\n--- server stderr (end) ---\n{}",
            out.join("\n"),
            &err[at..]
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dashboard http://127.0.0.1:PORT/` → the address.
fn dashboard_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("dashboard http://")?;
    rest.split('/').next()?.parse().ok()
}

async fn wait_healthy(http: &reqwest::Client, server: &ServerProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match http
            .get(format!("http://{}/health", server.addr))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("/health did not answer 200 within 60 s (last: {last})")
}

/// Waits until the server's input rate has come down to the live generator's (the Superstore
/// history is replayed first at full speed), so the load phases measure the steady state.
async fn warm_up(http: &reqwest::Client, addr: SocketAddr) -> Result<Value> {
    let started = Instant::now();
    let received = || async {
        let text = get_text(http, addr, "/health").await?;
        let v: Value = serde_json::from_str(&text).context("/health is not JSON")?;
        v["components"]["dataflow"]["events_received"]
            .as_f64()
            .context("/health has no components.dataflow.events_received")
    };
    let mut before = received().await?;
    let mut rate = f64::INFINITY;
    while started.elapsed() < WARM_UP_LIMIT {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = received().await?;
        rate = (now - before) / t.elapsed().as_secs_f64();
        before = now;
        if rate <= 1.5 * f64::from(SERVER_RATE) {
            break;
        }
    }
    Ok(json!({
        "seconds": round3(started.elapsed().as_secs_f64()),
        "events_received": before,
        "events_per_s_at_end": round3(rate),
        "steady": rate <= 1.5 * f64::from(SERVER_RATE),
    }))
}

async fn get_text(http: &reqwest::Client, addr: SocketAddr, path: &str) -> Result<String> {
    let r = http.get(format!("http://{addr}{path}")).send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("GET {path}: {status} {text}");
    }
    Ok(text)
}

/// `fulfillment_ws_dropped_total` samples of a Prometheus text page, by label set, and their sum.
fn ws_dropped(metrics: &str) -> Value {
    let mut by_labels = BTreeMap::new();
    let mut total = 0.0;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("fulfillment_ws_dropped_total") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            total += v;
            by_labels.insert(labels.trim().to_string(), v);
        }
    }
    json!({"total": total, "series": by_labels})
}

// ---------------------------------------------------------------------------------------------
// Server memory

/// Samples the server's VmRSS every second on a thread.
struct RssSampler {
    pid: u32,
    started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, f64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (Arc::clone(&stop), Arc::clone(&samples));
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    if let Some(mb) = rss_mb(pid) {
                        let t = started.elapsed().as_secs_f64();
                        v.lock().unwrap_or_else(|e| e.into_inner()).push((t, mb));
                    }
                    next += Duration::from_secs(1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            pid,
            started,
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Current RSS (also recorded as a sample).
    fn now_mb(&self) -> Option<f64> {
        let mb = rss_mb(self.pid)?;
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.elapsed(), mb));
        Some(mb)
    }

    /// Stops sampling; the samples `(seconds since start, MB)` in time order.
    fn stop(mut self) -> Vec<(f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut v = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// The WebSocket phase stops early when the server's RSS passes `limit_mb`.
struct MemoryGuard {
    pid: u32,
    limit_mb: Option<f64>,
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews the numbers).
fn load_average() -> Option<Value> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(json!(v))
}

/// MemAvailable of the machine in MB.
fn mem_available_mb() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// User + system CPU seconds of a process (`self` for this one), all threads, from
/// `/proc/PID/stat` (clock ticks of 1/100 s, the Linux value of `USER_HZ`).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3, `state`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds of the server and of this (client) process from a starting point.
struct CpuMark {
    server_pid: String,
    wall: Instant,
    server: Option<f64>,
    client: Option<f64>,
}

impl CpuMark {
    fn new(server_pid: u32) -> CpuMark {
        let server_pid = server_pid.to_string();
        CpuMark {
            server: cpu_seconds(&server_pid),
            client: cpu_seconds("self"),
            server_pid,
            wall: Instant::now(),
        }
    }

    fn since(&self) -> Value {
        let diff = |before: Option<f64>, now: Option<f64>| match (before, now) {
            (Some(b), Some(n)) => Some(round3(n - b)),
            _ => None,
        };
        json!({
            "wall": round3(self.wall.elapsed().as_secs_f64()),
            "server": diff(self.server, cpu_seconds(&self.server_pid)),
            "bench_client": diff(self.client, cpu_seconds("self")),
        })
    }
}

/// VmRSS of a process in MB (10^6 bytes).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

// ---------------------------------------------------------------------------------------------
// WebSocket subscribers

type Ws = WebSocketStream<TcpStream>;

/// The fields of a server message the benchmark reads; `kpis` is parsed in full and counted.
#[derive(Deserialize)]
struct WsMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    sent_wall: Option<f64>,
    #[serde(default)]
    wall: Option<f64>,
    #[serde(default)]
    kpis: Option<Vec<IgnoredAny>>,
}

/// What one fast client saw while measuring.
#[derive(Default)]
struct FastStats {
    kpis_latency_ms: Vec<f64>,
    heartbeat_latency_ms: Vec<f64>,
    snapshots: u64,
    kpis: u64,
    kpi_records: u64,
    heartbeats: u64,
    other: u64,
    unparsed: u64,
    kpis_without_sent_wall: u64,
    bytes: u64,
    /// Size of every snapshot received, measuring or not.
    snapshot_bytes: Vec<f64>,
    /// Set when the server ended the connection (a fast client should never be dropped).
    ended: Option<String>,
}

async fn connect_ws(addr: SocketAddr, url: &str, recv_buffer: Option<u32>) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    // No size limits of our own: the benchmark reports what the server sends, however large.
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

async fn ws_phase(
    http: &reqwest::Client,
    addr: SocketAddr,
    opts: &ServeBenchOptions,
    guard: &MemoryGuard,
) -> Result<Value> {
    let n = opts.subscribers;
    let n_stalled = ((n as f64 * opts.stalled_fraction).round() as usize).min(n);
    // Stalled clients spread evenly over the connection order.
    let is_stalled = |i: usize| n_stalled > 0 && (i * n_stalled) / n != ((i + 1) * n_stalled) / n;
    let url = format!("ws://{addr}/ws/kpi");
    let measuring = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT));

    let connect_started = Instant::now();
    let mut connects = tokio::task::JoinSet::new();
    let mut fast_tasks = Vec::new();
    for i in 0..n {
        let url = url.clone();
        let permits = Arc::clone(&permits);
        if is_stalled(i) {
            connects.spawn(async move {
                let _permit = permits.acquire_owned().await;
                connect_ws(addr, &url, Some(STALLED_RECV_BUFFER)).await
            });
        } else {
            let (measuring, stop) = (Arc::clone(&measuring), stop_rx.clone());
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                let ws = {
                    let _permit = permits.acquire_owned().await;
                    connect_ws(addr, &url, None).await
                };
                match ws {
                    Ok(ws) => {
                        let _ = ready_tx.send(Ok(()));
                        Some(read_fast(ws, measuring, stop).await)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        None
                    }
                }
            });
            fast_tasks.push((task, ready_rx));
        }
    }
    let mut connect_errors = Vec::new();
    let mut n_connect_errors = 0usize;
    let mut stalled = Vec::new();
    while let Some(r) = connects.join_next().await {
        match r.context("stalled client task")? {
            Ok(ws) => stalled.push(ws),
            Err(e) => {
                n_connect_errors += 1;
                if connect_errors.len() < ERRORS_SHOWN {
                    connect_errors.push(format!("stalled: {e:#}"));
                }
            }
        }
    }
    let mut fast_connected = 0usize;
    let mut handles = Vec::new();
    for (task, ready) in fast_tasks {
        match ready.await {
            Ok(Ok(())) => fast_connected += 1,
            Ok(Err(e)) => {
                n_connect_errors += 1;
                if connect_errors.len() < ERRORS_SHOWN {
                    connect_errors.push(format!("fast: {e:#}"));
                }
            }
            Err(_) => n_connect_errors += 1,
        }
        handles.push(task);
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let rss_connected = rss_mb(guard.pid);

    // Measure (ending early if the server's memory would endanger the machine).
    measuring.store(true, Ordering::Relaxed);
    let measure_started = Instant::now();
    let until = measure_started + Duration::from_secs(opts.seconds);
    let mut aborted = None;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        if let (Some(limit), Some(mb)) = (guard.limit_mb, rss_mb(guard.pid)) {
            if mb > limit {
                aborted = Some(format!(
                    "stopped early: server RSS {mb:.0} MB above {limit:.0} MB (half the memory available at start)"
                ));
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    let measured_seconds = measure_started.elapsed().as_secs_f64();
    let rss_measured = rss_mb(guard.pid);
    let mut all = FastStats::default();
    let mut fast_ended = Vec::new();
    let mut n_fast_ended = 0usize;
    for h in handles {
        if let Some(s) = h.await.context("fast client task")? {
            if let Some(why) = &s.ended {
                n_fast_ended += 1;
                if fast_ended.len() < ERRORS_SHOWN {
                    fast_ended.push(why.clone());
                }
            }
            all.kpis_latency_ms.extend(s.kpis_latency_ms);
            all.heartbeat_latency_ms.extend(s.heartbeat_latency_ms);
            all.snapshots += s.snapshots;
            all.kpis += s.kpis;
            all.kpi_records += s.kpi_records;
            all.heartbeats += s.heartbeats;
            all.other += s.other;
            all.unparsed += s.unparsed;
            all.kpis_without_sent_wall += s.kpis_without_sent_wall;
            all.bytes += s.bytes;
            all.snapshot_bytes.extend(s.snapshot_bytes);
        }
    }
    // The server's count before the stalled clients start reading.
    let dropped_metric = get_text(http, addr, "/metrics")
        .await
        .map(|m| ws_dropped(&m))
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));

    // Read each stalled client's backlog to see how its connection ended.
    let drains: Vec<_> = stalled
        .into_iter()
        .map(|ws| tokio::spawn(drain_stalled(ws)))
        .collect();
    let mut stalled_outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut stalled_disconnected = 0usize;
    let mut stalled_open = 0usize;
    for d in drains {
        let (how, disconnected) = d.await.context("stalled drain task")?;
        if disconnected {
            stalled_disconnected += 1;
        } else {
            stalled_open += 1;
        }
        *stalled_outcomes.entry(how).or_default() += 1;
    }

    Ok(json!({
        "subscribers": n,
        "fast": n - n_stalled,
        "stalled": n_stalled,
        "connected": fast_connected + stalled_disconnected + stalled_open,
        "connect_errors": n_connect_errors,
        "connect_error_examples": connect_errors,
        "connect_seconds": round3(connect_seconds),
        "measured_seconds": round3(measured_seconds),
        "server_rss_mb": {
            "all_connected": rss_connected.map(round3),
            "end_of_measurement": rss_measured.map(round3),
        },
        "snapshot_bytes": summary(all.snapshot_bytes),
        "aborted": aborted,
        "messages": {
            "snapshot": all.snapshots,
            "kpis": all.kpis,
            "heartbeat": all.heartbeats,
            "other": all.other,
            "unparsed": all.unparsed,
            "kpi_records": all.kpi_records,
            "bytes": all.bytes,
            "kpis_per_client_per_s": round3(all.kpis as f64 / fast_connected.max(1) as f64 / measured_seconds),
            "mb_per_s": round3(all.bytes as f64 / 1e6 / measured_seconds),
        },
        "kpis_latency_ms": summary(all.kpis_latency_ms),
        "heartbeat_latency_ms": summary(all.heartbeat_latency_ms),
        "kpis_without_sent_wall": all.kpis_without_sent_wall,
        "fast_disconnected": n_fast_ended,
        "fast_disconnect_examples": fast_ended,
        "stalled_disconnected": stalled_disconnected,
        "stalled_still_open": stalled_open,
        "stalled_outcomes": stalled_outcomes,
        "ws_dropped_total_metric": dropped_metric,
    }))
}

/// Reads every message until told to stop; only messages after `measuring` is set are counted.
async fn read_fast(
    mut ws: Ws,
    measuring: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> FastStats {
    let mut s = FastStats::default();
    loop {
        let next = tokio::select! {
            _ = stop.changed() => break,
            next = ws.next() => next,
        };
        let text = match next {
            None => {
                s.ended = Some("end of stream".into());
                break;
            }
            Some(Err(e)) => {
                s.ended = Some(format!("error: {e}"));
                break;
            }
            Some(Ok(Message::Close(frame))) => {
                s.ended = Some(match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason.as_str()),
                    None => "close".into(),
                });
                break;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        let received = wall_ms();
        let parsed = serde_json::from_str::<WsMessage>(text.as_str());
        // Snapshots are sized whenever they come (the first one arrives while connecting).
        if parsed.as_ref().is_ok_and(|m| m.kind == "snapshot") {
            s.snapshot_bytes.push(text.len() as f64);
        }
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        s.bytes += text.len() as u64;
        let Ok(m) = parsed else {
            s.unparsed += 1;
            continue;
        };
        match m.kind.as_str() {
            "kpis" => {
                s.kpis += 1;
                s.kpi_records += m.kpis.map_or(0, |k| k.len() as u64);
                match m.sent_wall {
                    Some(sent) => s.kpis_latency_ms.push(received - sent),
                    None => s.kpis_without_sent_wall += 1,
                }
            }
            "heartbeat" => {
                s.heartbeats += 1;
                if let Some(wall) = m.wall {
                    s.heartbeat_latency_ms.push(received - wall);
                }
            }
            "snapshot" => s.snapshots += 1,
            _ => s.other += 1,
        }
    }
    s
}

/// Reads a stalled client's backlog: how the connection ended, and whether the server ended it.
async fn drain_stalled(mut ws: Ws) -> (String, bool) {
    let until = tokio::time::Instant::now() + STALLED_DRAIN;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return ("still open".into(), false),
            Ok(None) => return ("end of stream".into(), true),
            Ok(Some(Err(e))) => return (format!("error: {e}"), true),
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (format!("close {}", u16::from(f.code)), true)
            }
            Ok(Some(Ok(Message::Close(None)))) => return ("close".into(), true),
            Ok(Some(Ok(_))) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// REST at a constant rate

/// Time the REST load may run past its schedule before requests are no longer sent.
const REST_GRACE: Duration = Duration::from_secs(10);
/// Error kind of a request not sent because the server was too far behind the schedule.
const NOT_SENT: &str = "not sent: server behind schedule at the deadline";

/// One request: endpoint index, latency from its due time and from its send (µs), error kind.
struct Sample {
    path: usize,
    latency_us: u64,
    /// None for a request not sent before the deadline.
    service_us: Option<u64>,
    error: Option<String>,
}

async fn rest_phase(
    http: &reqwest::Client,
    addr: SocketAddr,
    rate: u32,
    seconds: u64,
) -> Result<Value> {
    let total = u64::from(rate) * seconds;
    if total == 0 {
        return Ok(json!({"skipped": "no REST load asked for"}));
    }
    let connections = REST_CONNECTIONS.min(total as usize);
    // Open the keep-alive connections before the schedule starts.
    let warm: Vec<_> = (0..connections)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { http.get(format!("http://{addr}/health")).send().await })
        })
        .collect();
    for w in warm {
        w.await
            .context("warm-up task")?
            .context("warm-up request")?;
    }

    let period_ns = 1e9 / f64::from(rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    // A server that falls behind the schedule is not waited for beyond this: requests still
    // unsent then count with the latency they had reached (a lower bound).
    let deadline = start + Duration::from_secs(seconds) + REST_GRACE;
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (http, next) = (http.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_nanos((i as f64 * period_ns) as u64);
                    tokio::time::sleep_until(due).await;
                    let path = (i % REST_PATHS.len() as u64) as usize;
                    let sent = tokio::time::Instant::now();
                    if sent > deadline {
                        samples.push(Sample {
                            path,
                            latency_us: (sent - due).as_micros() as u64,
                            service_us: None,
                            error: Some(NOT_SENT.into()),
                        });
                        continue;
                    }
                    let error = match http
                        .get(format!("http://{addr}{}", REST_PATHS[path]))
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let status = r.status();
                            match r.bytes().await {
                                Ok(_) if status.is_success() => None,
                                Ok(_) => Some(format!("status {}", status.as_u16())),
                                Err(e) => Some(error_kind(&e)),
                            }
                        }
                        Err(e) => Some(error_kind(&e)),
                    };
                    let done = tokio::time::Instant::now();
                    samples.push(Sample {
                        path,
                        latency_us: (done - due).as_micros() as u64,
                        service_us: Some((done - sent).as_micros() as u64),
                        error,
                    });
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(total as usize);
    for w in workers {
        samples.extend(w.await.context("REST worker")?);
    }
    let elapsed = start.elapsed().as_secs_f64();

    let ms = |us: u64| us as f64 / 1000.0;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for s in &samples {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let n_errors: usize = errors.values().sum();
    let sent = samples.iter().filter(|s| s.service_us.is_some()).count();
    let completed = samples.iter().filter(|s| s.error.is_none()).count();
    let mut per_endpoint = serde_json::Map::new();
    for (p, path) in REST_PATHS.iter().enumerate() {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.path == p).collect();
        per_endpoint.insert(
            (*path).to_string(),
            json!({
                "requests": of.len(),
                "errors": of.iter().filter(|s| s.error.is_some()).count(),
                "latency_ms": summary(of.iter().map(|s| ms(s.latency_us)).collect()),
                "service_ms": summary(of.iter().filter_map(|s| s.service_us.map(ms)).collect()),
            }),
        );
    }
    Ok(json!({
        "rate": rate,
        "seconds": seconds,
        "connections": connections,
        "requests": samples.len(),
        "sent": sent,
        "errors": n_errors,
        "error_kinds": errors,
        "elapsed_seconds": round3(elapsed),
        "achieved_rate": round3(completed as f64 / elapsed),
        "latency_is_lower_bound": sent < samples.len(),
        "latency_ms": summary(samples.iter().map(|s| ms(s.latency_us)).collect()),
        "service_ms": summary(samples.iter().filter_map(|s| s.service_us.map(ms)).collect()),
        "per_endpoint": per_endpoint,
    }))
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "request".into()
    }
}

// ---------------------------------------------------------------------------------------------
// wrk (closed loop, full speed)

/// The REST mix for wrk, round robin per thread; `done` prints the summary as one JSON line.
const WRK_SCRIPT: &str = r#"-- Written by fulfillment-ai bench --serve.
local paths = {"/kpis", "/deviations?limit=20", "/health", "/orders?limit=20"}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}," ..
    "\"latency_us\":{\"mean\":%.1f,\"p50\":%d,\"p90\":%d,\"p99\":%d,\"max\":%d}}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
"#;
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 64;

async fn wrk_phase(addr: SocketAddr, seconds: u64, dir: &Path) -> Value {
    if seconds == 0 {
        return json!({"skipped": "no REST load asked for"});
    }
    let script = dir.join("mix.lua");
    if let Err(e) = std::fs::write(&script, WRK_SCRIPT) {
        return json!({"error": format!("writing {}: {e}", script.display())});
    }
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .args(["--timeout", "10s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}"));
    let output = command_output(cmd).await;
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return json!({"skipped": "wrk is not installed (scripts/setup.sh installs it)"})
        }
        Err(e) => return json!({"error": format!("running wrk: {e}")}),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(mut v) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
    else {
        return json!({
            "error": format!("wrk ({}) printed no summary", output.status),
            "stdout": stdout,
            "stderr": String::from_utf8_lossy(&output.stderr),
        });
    };
    let requests = v["requests"].as_f64().unwrap_or(0.0);
    let secs = v["duration_us"].as_f64().unwrap_or(0.0) / 1e6;
    let lat = |k: &str| v["latency_us"][k].as_f64().map(|us| round3(us / 1000.0));
    let latency_ms = json!({
        "mean": lat("mean"), "p50": lat("p50"), "p90": lat("p90"), "p99": lat("p99"), "max": lat("max"),
    });
    let obj = v.as_object_mut().expect("wrk summary is an object");
    obj.insert(
        "command".into(),
        json!(format!(
            "wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s --timeout 10s -s mix.lua http://{addr}"
        )),
    );
    obj.insert(
        "requests_per_s".into(),
        json!(round3(if secs > 0.0 { requests / secs } else { 0.0 })),
    );
    obj.insert("latency_ms".into(), latency_ms);
    v
}

/// Runs a command to completion on a blocking thread (off the async workers).
async fn command_output(mut cmd: Command) -> std::io::Result<std::process::Output> {
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

// ---------------------------------------------------------------------------------------------
// Numbers

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Count, p50, p99, max and mean of a sample (in the sample's unit).
fn summary(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!({"samples": 0});
    }
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({
        "samples": v.len(),
        "p50": round3(percentile(&v, 0.50)),
        "p99": round3(percentile(&v, 0.99)),
        "max": round3(v[v.len() - 1]),
        "mean": round3(mean),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_dashboard_line() {
        assert_eq!(
            dashboard_addr("dashboard http://127.0.0.1:41234/"),
            Some(SocketAddr::from(([127, 0, 0, 1], 41234)))
        );
        assert_eq!(dashboard_addr("  pipeline   p.yaml"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(summary(Vec::new())["samples"], 0);
        assert_eq!(summary(vec![3.0, 1.0, 2.0])["max"], 3.0);
    }

    #[test]
    fn sums_the_dropped_counter() {
        let m =
            "# HELP fulfillment_ws_dropped_total x\n# TYPE fulfillment_ws_dropped_total counter\n\
                 fulfillment_ws_dropped_total{stream=\"kpi\"} 90\n\
                 fulfillment_ws_dropped_total{stream=\"deviations\"} 1\nother 5\n";
        let v = ws_dropped(m);
        assert_eq!(v["total"], 91.0);
        assert_eq!(v["series"]["{stream=\"kpi\"}"], 90.0);
    }
}
