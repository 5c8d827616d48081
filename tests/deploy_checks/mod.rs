//! Checks of the deployment files for `tests/deploy.rs`: each returns the problems it finds
//! (empty when the file is right), so the tests can also feed them broken copies.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

mod compose;
mod files;

pub use compose::compose_problems;
pub use files::{
    dashboard_problems, dockerfile_problems, env_example_problems, exported_metrics,
    prometheus_problems, runtime_dirs,
};

/// The job's service in the compose file and the port it serves on.
pub const JOB: &str = "fulfillment-ai";
pub const JOB_PORT: u64 = 8000;
/// The stack the issue asks for, besides the job.
pub const REQUIRED_SERVICES: [&str; 4] = ["kafka", "postgres", "prometheus", "grafana"];

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn yaml(text: &str) -> Value {
    let mut v: Value = serde_yaml::from_str(text).expect("valid YAML");
    v.apply_merge().expect("valid merge keys");
    v
}

pub fn compose() -> Value {
    yaml(&read("docker-compose-full.yml"))
}

pub fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// A string or a list of strings (`command`, `env_file`, `profiles`).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(s)) => s
            .iter()
            .map(|x| match x.get("path") {
                Some(p) => str_of(p),
                None => str_of(x),
            })
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        _ => Vec::new(),
    }
}

/// A service's `environment` as (name, value), from a map or a `NAME=value` list.
pub fn environment(service: &Value) -> Vec<(String, String)> {
    match service.get("environment") {
        Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (str_of(k), str_of(v))).collect(),
        Some(Value::Sequence(s)) => s
            .iter()
            .map(|x| {
                let x = str_of(x);
                let (k, v) = x.split_once('=').unwrap_or((&x, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An image reference has a tag (or digest) that is not `latest`.
pub fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    matches!(last.split_once(':'), Some((_, tag)) if !tag.is_empty() && tag != "latest")
}
