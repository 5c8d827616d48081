//! Test support for the server: a `fulfillment-ai run` child process serving on a free loopback
//! port with everything it writes in a temporary directory, and a small blocking HTTP/1.1
//! client (requests over real TCP, `Connection: close`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running job; killed when dropped.
pub struct RunningJob {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: PathBuf,
    stdout: Arc<Mutex<String>>,
}

impl RunningJob {
    /// Starts `run --listen 127.0.0.1:0 --out DIR/out` plus `args`, with the case store and the
    /// knowledge base's runtime data in `dir`, and waits for the dashboard line.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> RunningJob {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fulfillment-ai"));
        cmd.args(["run", "--listen", "127.0.0.1:0", "--out"])
            .arg(dir.join("out"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DATABASE_URL", dir.join("agents.sqlite"))
            .env("FULFILLMENT_KB_DATA_DIR", dir.join("kb"))
            .env("FULFILLMENT_LLM_BACKEND", "offline")
            .env_remove("FULFILLMENT_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("job.stderr")).expect("stderr file"),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start fulfillment-ai run");
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = BufReader::new(child.stdout.take().expect("piped stdout"));
        let captured = stdout.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("dashboard http://") {
                    let _ = tx.send(url.trim_end_matches('/').to_string());
                }
                let mut s = captured.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut job = RunningJob {
            child,
            addr: String::new(),
            dir: dir.to_path_buf(),
            stdout,
        };
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(addr) => job.addr = addr,
            Err(_) => panic!(
                "no dashboard line within 180 s. stdout:\n{}\nstderr:\n{}",
                job.stdout(),
                job.stderr()
            ),
        }
        job
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("job.stderr")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Response {
        request(&self.addr, "GET", path, &[], None)
    }

    pub fn send(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> Response {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        request(&self.addr, method, path, &headers, Some(body.as_bytes()))
    }

    /// `/health` once `ready` holds for it, within `limit`.
    pub fn wait_for_health(
        &self,
        limit: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let h = self.get("/health");
            if h.status == 200 && ready(&h.json()) {
                return h.json();
            }
            assert!(
                started.elapsed() < limit,
                "not ready within {limit:?}: {}\nstderr:\n{}",
                h.body,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!(
                "job stdout:\n{}\njob stderr (last lines):\n{}",
                self.stdout(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error answer in problem+json with this status; returns its detail.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        p["detail"].as_str().expect("detail").to_string()
    }
}

/// One request over a fresh connection.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        // A server may answer (413) and close before reading a large body.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// The value of a Prometheus sample line `name{labels} value` (labels as written, or none).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok())?
    })
}
