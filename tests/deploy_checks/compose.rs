//! `docker-compose-full.yml`: the services, Kafka in KRaft mode, pinned images, and the job's
//! port, environment and start order.

use std::collections::BTreeSet;

use fulfillment_ai::config::AppConfig;
use serde_yaml::Value;

use super::{environment, pinned, repo, str_of, strings, JOB, JOB_PORT, REQUIRED_SERVICES};

pub fn compose_problems(compose: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(services) = compose.get("services").and_then(Value::as_mapping) else {
        return vec!["no services".into()];
    };
    let names: Vec<String> = services.keys().map(str_of).collect();
    for want in REQUIRED_SERVICES.iter().chain([&JOB]) {
        if !names.iter().any(|n| n == want) {
            p.push(format!("service `{want}` missing"));
        }
    }
    let allowed: BTreeSet<&str> = AppConfig::ENV_VARS.iter().copied().collect();
    for (name, s) in services {
        let name = str_of(name);
        let image = s.get("image").map(str_of);
        if name.contains("zookeeper") || image.as_deref().is_some_and(|i| i.contains("zookeeper")) {
            p.push(format!(
                "service `{name}`: ZooKeeper (Kafka must run in KRaft mode)"
            ));
        }
        match (&image, s.get("build")) {
            (Some(i), _) if !pinned(i) => {
                p.push(format!("service `{name}`: image `{i}` not pinned"))
            }
            (None, None) => p.push(format!("service `{name}`: neither image nor build")),
            _ => {}
        }
        // Containers of the job's image read the code's settings: only names the code knows.
        if s.get("build").is_some() {
            for (k, _) in environment(s) {
                if !allowed.contains(k.as_str()) {
                    p.push(format!(
                        "service `{name}`: environment `{k}` is not in AppConfig::ENV_VARS"
                    ));
                }
            }
        }
        for v in s
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let v = str_of(v);
            if let Some(src) = v.strip_prefix("./").and_then(|r| r.split(':').next()) {
                if !repo(src).exists() {
                    p.push(format!("service `{name}`: mounts missing file `{src}`"));
                }
            }
        }
    }
    let empty = Value::Null;
    let service = |n: &str| services.get(n).unwrap_or(&empty);
    // Kafka: the official image in KRaft mode.
    let kafka = service("kafka");
    let kafka_env = environment(kafka);
    let kafka_var = |k: &str| {
        kafka_env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    if !kafka
        .get("image")
        .map(str_of)
        .unwrap_or_default()
        .starts_with("apache/kafka:")
    {
        p.push("kafka: not the official apache/kafka image".into());
    }
    if !kafka_var("KAFKA_PROCESS_ROLES").is_some_and(|r| r.contains("controller")) {
        p.push("kafka: KAFKA_PROCESS_ROLES with `controller` missing (KRaft)".into());
    }
    for k in ["KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_NODE_ID"] {
        if kafka_var(k).is_none() {
            p.push(format!("kafka: {k} missing (KRaft)"));
        }
    }
    if kafka_var("KAFKA_ZOOKEEPER_CONNECT").is_some() {
        p.push("kafka: KAFKA_ZOOKEEPER_CONNECT set".into());
    }
    for n in ["kafka", "postgres"] {
        if service(n).get("healthcheck").is_none() {
            p.push(format!("{n}: no healthcheck"));
        }
    }
    // The job: built here, runs the Kafka source, publishes 8000, reads .env, starts last.
    let job = service(JOB);
    if job.get("build").is_none() {
        p.push(format!("{JOB}: not built from the repository"));
    }
    let command = strings(job.get("command"));
    if !(command.first().is_some_and(|c| c == "run")
        && command
            .windows(2)
            .any(|w| w[0] == "--source" && w[1] == "kafka"))
    {
        p.push(format!(
            "{JOB}: command {command:?} is not `run --source kafka`"
        ));
    }
    let publishes = job
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .any(|port| match port {
            Value::Mapping(_) => {
                port.get("target").map(str_of) == Some(JOB_PORT.to_string())
                    && port.get("published").is_some()
            }
            _ => {
                let spec = str_of(port);
                let spec = spec.split('/').next().unwrap_or("");
                spec.contains(':') && spec.rsplit(':').next() == Some(&JOB_PORT.to_string())
            }
        });
    if !publishes {
        p.push(format!("{JOB}: does not publish port {JOB_PORT}"));
    }
    if !strings(job.get("env_file")).iter().any(|f| f == ".env") {
        p.push(format!("{JOB}: env_file .env missing"));
    }
    let job_env = environment(job);
    let job_var = |k: &str| job_env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if job_var("KAFKA_BOOTSTRAP_SERVERS").as_deref() != Some("kafka:9092") {
        p.push(format!(
            "{JOB}: KAFKA_BOOTSTRAP_SERVERS is not the kafka service"
        ));
    }
    if !job_var("DATABASE_URL")
        .is_some_and(|u| u.starts_with("postgres://") && u.contains("@postgres:"))
    {
        p.push(format!("{JOB}: DATABASE_URL is not the postgres service"));
    }
    if job_var("FULFILLMENT_LISTEN").as_deref() != Some("0.0.0.0:8000") {
        p.push(format!(
            "{JOB}: FULFILLMENT_LISTEN is not 0.0.0.0:{JOB_PORT}"
        ));
    }
    // A one-shot step creates the topics before the job starts.
    let creator = services.iter().find(|(_, s)| {
        strings(s.get("command"))
            .windows(2)
            .any(|w| w[0] == "kafka" && w[1] == "create-topics")
    });
    let condition = |dep: &str| {
        job.get("depends_on")
            .and_then(|d| d.get(dep))
            .and_then(|d| d.get("condition"))
            .map(str_of)
    };
    match creator {
        None => p.push("no service runs `kafka create-topics`".into()),
        Some((n, _))
            if condition(&str_of(n)).as_deref() != Some("service_completed_successfully") =>
        {
            p.push(format!(
                "{JOB}: does not wait for `{}` to complete",
                str_of(n)
            ))
        }
        _ => {}
    }
    for dep in ["kafka", "postgres"] {
        if condition(dep).as_deref() != Some("service_healthy") {
            p.push(format!("{JOB}: does not wait for a healthy {dep}"));
        }
    }
    p
}
