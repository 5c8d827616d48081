//! Pipeline spec validation: every bad spec is rejected with the file, the path inside it and the
//! reason; the shipped spec and a spec with an added KPI (no Rust change) are accepted.

use fulfillment_ai::config::{PipelineSpec, SpecError};

const SHIPPED: &str = include_str!("../pipelines/fulfillment.yaml");

fn parse_with(from: &str, to: &str) -> Result<PipelineSpec, SpecError> {
    assert!(
        SHIPPED.contains(from),
        "test edit target `{from}` not in the shipped spec"
    );
    PipelineSpec::parse(&SHIPPED.replacen(from, to, 1), "pipelines/edited.yaml")
}

fn rejected(from: &str, to: &str) -> SpecError {
    parse_with(from, to).expect_err("the edited spec must be rejected")
}

#[test]
fn shipped_spec_is_valid() {
    let spec = PipelineSpec::parse(SHIPPED, "pipelines/fulfillment.yaml").unwrap();
    assert_eq!(spec.compiled.len(), spec.kpis.len());
    assert!(spec.kpi_index("on_time_rate").is_some());
    assert!(spec.kpi_index("open_backlog").is_some());
}

#[test]
fn errors_name_file_path_and_reason() {
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("tick: 1m", "tick: 1 fortnight", "time.tick", "unknown duration unit"),
        ("partitions: 4", "partitions: 0", "time.partitions", "between 1 and 4096"),
        ("    aggregation: rate\n    fact: delivery\n    where: [has_promise]\n    hit: [on_time]\n    dimensions: [global, region, ship_mode, warehouse",
         "    aggregation: median\n    fact: delivery\n    where: [has_promise]\n    hit: [on_time]\n    dimensions: [global, region, ship_mode, warehouse",
         "kpis[0].aggregation", "unknown aggregation `median`"),
        ("hit: [on_time]", "hit: [punctual]", "kpis[0].hit", "unknown flag `punctual`"),
        ("dimensions: [global, region, ship_mode, warehouse, segment, carrier, region+ship_mode]",
         "dimensions: [global, planet]", "kpis[0].dimensions[1]", "unknown dimension `planet`"),
        ("window: { size: 7d, slide: 1d }", "window: { size: 7d, slide: 5d }", "kpis[1].window.slide", "divides window.size"),
        ("field: delay_ms\n    dimensions: [global, region, ship_mode]", "field: risk_ppm\n    dimensions: [global, region, ship_mode]", "kpis[3].field", "fact `delivery` has no field `risk_ppm`"),
        ("warn: 0.9, critical: 0.8, min_count: 20", "warn: 0.8, critical: 0.9, min_count: 20", "kpis[0].thresholds", "critical must be beyond warn"),
        ("kpis: [on_time_rate, payment_failure_rate]", "kpis: [on_time_rate, order_value]", "deviations.anomaly.kpis[1]", "has no thresholds"),
        ("  warn: 0.5\n", "  warn: 1.5\n", "risk.warn", "warn <= critical"),
        ("finished: 7d", "finished: 1h", "retention", "at least time.allowed_lateness"),
        ("  prior_weight: 20\n", "  prior_weight: 20\n  mood: optimistic\n", "risk", "unknown field `mood`"),
        ("version: 1", "version: 2", "version", "unsupported spec version 2"),
    ];
    for (from, to, path, reason) in cases {
        let e = rejected(from, to);
        assert_eq!(e.file, "pipelines/edited.yaml");
        assert!(
            e.path.starts_with(path),
            "path `{}` should start with `{path}` ({e})",
            e.path
        );
        assert!(
            e.reason.contains(reason),
            "reason `{}` should contain `{reason}`",
            e.reason
        );
        assert!(e.to_string().starts_with("pipelines/edited.yaml: "), "{e}");
    }
}

#[test]
fn a_new_kpi_of_an_existing_kind_needs_only_yaml() {
    let extra = "kpis:\n  - name: same_day_late_share\n    aggregation: rate\n    fact: delivery\n    where: [has_promise]\n    hit: [late]\n    dimensions: [carrier, region+carrier]\n    window: { size: 12h, slide: 6h }\n    unit: ratio\n\n";
    let spec = parse_with("kpis:\n", extra).unwrap();
    let k = &spec.compiled[spec.kpi_index("same_day_late_share").unwrap()];
    assert_eq!(k.dimension_sets.len(), 2);
    assert_eq!(k.window.slide_ms(), 6 * 3_600_000);
}

#[test]
fn missing_file_is_reported_with_its_name() {
    let e = PipelineSpec::load(std::path::Path::new("pipelines/does-not-exist.yaml")).unwrap_err();
    assert_eq!(e.file, "pipelines/does-not-exist.yaml");
    assert!(e.reason.to_lowercase().contains("no such file"), "{e}");
}
