//! The deployment files checked without Docker: `docker-compose-full.yml` (services, KRaft,
//! pinned images, the job's port, environment and start order), `.env.example` against the
//! code's list of environment variables, `deploy/prometheus/prometheus.yml` against the job's
//! service, the Grafana dashboard's metric names against `src/serve/metrics.rs`, and the
//! `Dockerfile` (stages, runtime base, what it copies).
//!
//! Each check returns its problems; `checks_fail_on_broken_files` breaks each file in the way
//! the check is meant to catch and demands a problem, so no check passes vacuously.

mod deploy_checks;

use std::collections::BTreeSet;

use deploy_checks::*;

fn assert_none(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn compose_file_has_the_stack() {
    assert_none(compose_problems(&compose()));
}

#[test]
fn env_example_documents_exactly_the_code_settings() {
    assert_none(env_example_problems(&read(".env.example")));
}

#[test]
fn prometheus_scrapes_the_job() {
    assert_none(prometheus_problems(&yaml(&read(
        "deploy/prometheus/prometheus.yml",
    ))));
}

#[test]
fn dashboard_queries_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/fulfillment.json")).unwrap();
    assert_none(dashboard_problems(
        &dashboard,
        &read("src/serve/metrics.rs"),
    ));
}

#[test]
fn dockerfile_builds_in_stages_and_ships_what_the_binary_reads() {
    assert_eq!(
        runtime_dirs(),
        BTreeSet::from(["config", "models", "pipelines", "policies"].map(String::from)),
    );
    assert_none(dockerfile_problems(&read("Dockerfile")));
}

/// `text` without the lines starting with `prefix`.
fn without_line(text: &str, prefix: &str) -> String {
    assert!(text.contains(prefix), "`{prefix}` not in the text");
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(prefix)).collect();
    kept.join("\n")
}

/// `problems` finds something containing `want` after `edit`.
fn catches(what: &str, problems: Vec<String>, want: &str) {
    assert!(
        problems.iter().any(|p| p.contains(want)),
        "{what}: expected a problem with `{want}`, got {problems:?}"
    );
}

#[test]
fn checks_fail_on_broken_files() {
    let text = read("docker-compose-full.yml");
    let edit = |from: &str, to: &str| {
        assert!(text.contains(from), "`{from}` not in the compose file");
        compose_problems(&yaml(&text.replacen(from, to, 1)))
    };
    catches(
        "no grafana",
        edit("\n  grafana:\n", "\n  graphite:\n"),
        "service `grafana` missing",
    );
    catches(
        "no job",
        edit("\n  fulfillment-ai:\n", "\n  job:\n"),
        "service `fulfillment-ai` missing",
    );
    catches(
        "no KRaft",
        edit("KAFKA_PROCESS_ROLES", "KAFKA_ROLES"),
        "KAFKA_PROCESS_ROLES",
    );
    catches(
        "zookeeper",
        edit(
            "\nservices:\n",
            "\nservices:\n  zookeeper:\n    image: zookeeper:3.9.2\n",
        ),
        "ZooKeeper",
    );
    catches(
        "latest",
        edit("grafana/grafana:11.4.0", "grafana/grafana:latest"),
        "not pinned",
    );
    catches(
        "no tag",
        edit("postgres:15.13-bookworm", "postgres"),
        "not pinned",
    );
    catches(
        "port",
        edit("\"8000:8000\"", "\"8080:8080\""),
        "does not publish port 8000",
    );
    catches(
        "unknown env",
        edit(
            "      FULFILLMENT_LISTEN: 0.0.0.0:8000\n",
            "      FULFILLMENT_LISTEN: 0.0.0.0:8000\n      FULFILLMENT_COLOUR: blue\n",
        ),
        "FULFILLMENT_COLOUR",
    );
    catches(
        "no topics",
        edit("\"create-topics\"", "\"topics\""),
        "create-topics",
    );
    catches(
        "no .env",
        edit("      - .env\n", "      - job.env\n"),
        "env_file",
    );

    let env = read(".env.example");
    catches(
        "undocumented",
        env_example_problems(&without_line(&env, "RUST_LOG=")),
        "`RUST_LOG`",
    );
    catches(
        "extra",
        env_example_problems(&format!("{env}# x\nFULFILLMENT_COLOUR=blue\n")),
        "FULFILLMENT_COLOUR",
    );
    catches(
        "no comment",
        env_example_problems(&without_line(&env, "# Log filter of the job")),
        "no comment above it",
    );
    catches(
        "bad value",
        env_example_problems(&env.replace("WORKERS=2", "WORKERS=two")),
        "rejected",
    );

    let prom = read("deploy/prometheus/prometheus.yml");
    catches(
        "target",
        prometheus_problems(&yaml(
            &prom.replace("fulfillment-ai:8000", "fulfillment:8000"),
        )),
        "no scrape",
    );
    catches(
        "path",
        prometheus_problems(&yaml(
            &prom.replace("metrics_path: /metrics", "metrics_path: /stats"),
        )),
        "no scrape",
    );

    let metrics = read("src/serve/metrics.rs");
    let exported = exported_metrics(&metrics);
    assert!(exported.contains("fulfillment_agent_run_seconds_bucket"));
    assert!(
        !exported.contains("fulfillment_agent_run_seconds"),
        "a histogram has no bare series"
    );
    assert!(
        !exported.contains("fulfillment_events_received"),
        "counters are named with _total"
    );
    let dash = read("deploy/grafana/dashboards/fulfillment.json");
    let broken = |from: &str, to: &str| {
        assert!(dash.contains(from), "`{from}` not in the dashboard");
        dashboard_problems(
            &serde_json::from_str(&dash.replace(from, to)).unwrap(),
            &metrics,
        )
    };
    catches(
        "renamed",
        broken("fulfillment_ws_clients", "fulfillment_websocket_clients"),
        "fulfillment_websocket_clients",
    );
    catches(
        "no _total",
        broken(
            "fulfillment_http_requests_total",
            "fulfillment_http_requests",
        ),
        "`fulfillment_http_requests` is not",
    );
    catches(
        "bare histogram",
        broken(
            "fulfillment_agent_run_seconds_bucket",
            "fulfillment_agent_run_seconds",
        ),
        "`fulfillment_agent_run_seconds` is not",
    );

    let docker = read("Dockerfile");
    let last_from = docker.rfind("\nFROM ").unwrap();
    let single = docker[last_from..].replace(
        "FROM debian:12.11-slim AS runtime",
        "FROM rust:1.95.0-bookworm",
    );
    catches("one stage", dockerfile_problems(&single), "multi-stage");
    catches(
        "rust runtime",
        dockerfile_problems(&single),
        "final stage runs on `rust",
    );
    catches(
        "no policies",
        dockerfile_problems(&docker.replace("COPY policies/ policies/", "")),
        "`policies/`",
    );
    catches(
        "latest base",
        dockerfile_problems(
            &docker.replace("debian:12.11-slim AS runtime", "debian:latest AS runtime"),
        ),
        "not pinned",
    );
    catches(
        "root",
        dockerfile_problems(&docker.replace("USER fulfillment", "USER root")),
        "root",
    );
}
