//! `.env.example`, the Prometheus and Grafana files under `deploy/`, and the `Dockerfile`,
//! each against the code: the list of environment variables, the job's service, the metrics
//! `src/serve/metrics.rs` registers, and the paths the binary reads.

use std::collections::BTreeSet;
use std::path::PathBuf;

use fulfillment_ai::config::app::DEFAULT_APP_CONFIG;
use fulfillment_ai::config::AppConfig;
use regex::Regex;
use serde_yaml::Value;

use super::{pinned, read, str_of, strings, yaml, JOB, JOB_PORT};

/// The keys of a dotenv file (`NAME=value` lines; comments and blanks skipped).
fn env_keys(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

pub fn env_example_problems(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    let pairs = env_keys(text);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let set: BTreeSet<&str> = keys.iter().copied().collect();
    if set.len() != keys.len() {
        p.push(format!(".env.example: a name appears twice in {keys:?}"));
    }
    let code: BTreeSet<&str> = AppConfig::ENV_VARS.iter().copied().collect();
    for k in code.difference(&set) {
        p.push(format!(
            ".env.example: `{k}` (in AppConfig::ENV_VARS) is not documented"
        ));
    }
    for k in set.difference(&code) {
        p.push(format!(".env.example: `{k}` is not in AppConfig::ENV_VARS"));
    }
    // Every setting has its comment line right above it.
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for (i, l) in lines.iter().enumerate() {
        let setting = !l.is_empty() && !l.starts_with('#');
        // (A section heading `# --- ... ---` is not a setting's comment.)
        let commented =
            i > 0 && lines[i - 1].starts_with("# ") && !lines[i - 1].starts_with("# ---");
        if setting && !commented {
            p.push(format!(".env.example: `{l}` has no comment above it"));
        }
    }
    // The values are valid settings.
    if let Err(e) = AppConfig::load(None, pairs) {
        p.push(format!(".env.example: the values are rejected: {e}"));
    }
    p
}

pub fn prometheus_problems(prometheus: &Value) -> Vec<String> {
    let target = format!("{JOB}:{JOB_PORT}");
    let scrapes = prometheus
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .any(|sc| {
            let path_ok = sc
                .get("metrics_path")
                .is_none_or(|m| str_of(m) == "/metrics");
            let has_target = sc
                .get("static_configs")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .flat_map(|s| strings(s.get("targets")))
                .any(|t| t == target);
            path_ok && has_target
        });
    if scrapes {
        Vec::new()
    } else {
        vec![format!(
            "prometheus.yml: no scrape of http://{target}/metrics"
        )]
    }
}

/// Every series `src/serve/metrics.rs` exports: its metric names as registered (counters carry
/// `_total` in the name; the prometheus crate adds nothing), histograms as their `_bucket`,
/// `_sum` and `_count` series.
pub fn exported_metrics(src: &str) -> BTreeSet<String> {
    let name = Regex::new(r#""(fulfillment_[a-z0-9_]+)""#).unwrap();
    let histogram = Regex::new(r#"HistogramOpts::new\(\s*"(fulfillment_[a-z0-9_]+)""#).unwrap();
    let histograms: BTreeSet<&str> = histogram
        .captures_iter(src)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let mut out = BTreeSet::new();
    for c in name.captures_iter(src) {
        let n = c.get(1).unwrap().as_str();
        if histograms.contains(n) {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{n}{suffix}"));
            }
        } else {
            out.insert(n.to_string());
        }
    }
    out
}

/// The metric names in every `expr` of a Grafana dashboard.
pub fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, re: &Regex, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(e)) => {
                            out.extend(re.find_iter(e).map(|m| m.as_str().to_string()))
                        }
                        _ => walk(x, re, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, re, out)),
            _ => {}
        }
    }
    let re = Regex::new(r"\bfulfillment_[a-z0-9_]+").unwrap();
    let mut out = BTreeSet::new();
    walk(dashboard, &re, &mut out);
    out
}

pub fn dashboard_problems(dashboard: &serde_json::Value, metrics_src: &str) -> Vec<String> {
    let mut p = Vec::new();
    let exported = exported_metrics(metrics_src);
    let used = dashboard_metrics(dashboard);
    for m in used.difference(&exported) {
        p.push(format!(
            "dashboard: `{m}` is not exported by src/serve/metrics.rs"
        ));
    }
    // The areas the dashboard must show.
    for want in [
        "fulfillment_events_received_total",
        "fulfillment_events_dead_lettered_total",
        "fulfillment_watermark_lag_seconds",
        "fulfillment_consumer_lag_messages",
        "fulfillment_kpi_updates_total",
        "fulfillment_deviations_total",
        "fulfillment_agent_runs_total",
        "fulfillment_agent_run_seconds_bucket",
        "fulfillment_ws_clients",
        "fulfillment_http_requests_total",
    ] {
        if !used.contains(want) {
            p.push(format!("dashboard: no panel uses `{want}`"));
        }
    }
    // Panels use the provisioned data source.
    let ds = yaml(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ));
    let uid = ds["datasources"][0]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let url = ds["datasources"][0]["url"].as_str().unwrap_or_default();
    if url != "http://prometheus:9090" {
        p.push(format!(
            "datasource url `{url}` is not the prometheus service"
        ));
    }
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let got = panel["datasource"]["uid"].as_str().unwrap_or_default();
        if panel["type"] != "row" && got != uid {
            p.push(format!(
                "panel {}: data source `{got}`, not `{uid}`",
                panel["title"]
            ));
        }
    }
    p
}

/// Top-level directories the binary reads at run time, from the code's default paths.
pub fn runtime_dirs() -> BTreeSet<String> {
    let d = AppConfig::default();
    [
        PathBuf::from(DEFAULT_APP_CONFIG),
        d.pipeline,
        d.agents.routing,
        d.kafka.topics_file,
        d.kb.policies_dir,
        d.kb.model_dir,
    ]
    .iter()
    .map(|p| p.iter().next().unwrap().to_string_lossy().into_owned())
    .collect()
}

pub fn dockerfile_problems(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut stages: Vec<(String, Vec<&str>)> = Vec::new();
    let mut names = BTreeSet::new();
    for l in &lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words[0].eq_ignore_ascii_case("FROM") {
            let args: Vec<&str> = words[1..]
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let image = args.first().copied().unwrap_or("").to_string();
            if !names.contains(&image) && !pinned(&image) {
                p.push(format!("Dockerfile: base image `{image}` not pinned"));
            }
            if let [_, as_, name] = args[..] {
                if as_.eq_ignore_ascii_case("AS") {
                    names.insert(name.to_string());
                }
            }
            stages.push((image, Vec::new()));
        } else if let Some((_, body)) = stages.last_mut() {
            body.push(l);
        }
    }
    if stages.len() < 2 {
        p.push(format!(
            "Dockerfile: {} FROM stage(s), want a multi-stage build",
            stages.len()
        ));
    }
    let Some((base, body)) = stages.last() else {
        return p;
    };
    if base.starts_with("rust") || base.contains("/rust") {
        p.push(format!("Dockerfile: the final stage runs on `{base}`"));
    }
    let copied: BTreeSet<String> = body
        .iter()
        .filter(|l| l.starts_with("COPY "))
        .filter_map(|l| l.split_whitespace().last())
        .map(|d| {
            d.trim_start_matches("./")
                .trim_start_matches("/app/")
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    for dir in runtime_dirs() {
        if !copied.contains(&dir) {
            p.push(format!(
                "Dockerfile: the final stage does not copy `{dir}/`"
            ));
        }
    }
    let has = |prefix: &str, needle: &str| {
        body.iter()
            .any(|l| l.starts_with(prefix) && l.contains(needle))
    };
    if !has("EXPOSE", &JOB_PORT.to_string()) {
        p.push("Dockerfile: no EXPOSE 8000".into());
    }
    if !has("HEALTHCHECK", "/health") {
        p.push("Dockerfile: no HEALTHCHECK on /health".into());
    }
    match body.iter().rev().find(|l| l.starts_with("USER ")) {
        Some(u) if !matches!(u.split_whitespace().nth(1), Some("root" | "0")) => {}
        _ => p.push("Dockerfile: the final stage runs as root".into()),
    }
    for l in body.iter().filter(|l| l.starts_with("ENV ")) {
        for assignment in l[4..].split_whitespace() {
            let name = assignment.split('=').next().unwrap_or_default();
            if !AppConfig::ENV_VARS.contains(&name) {
                p.push(format!(
                    "Dockerfile: ENV `{name}` is not in AppConfig::ENV_VARS"
                ));
            }
        }
    }
    p
}
