//! Criterion benchmarks of the streaming core: JSON decode + validation alone, and the full job
//! (decode, watermarks, order state, risk, KPIs, deviations) for 1 and 2 workers, on the same
//! generated input. `fulfillment-ai bench` runs the 3 M-event version with memory figures.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::dataflow::{run_job, JobOptions};
use fulfillment_ai::model::decode_event;
use fulfillment_ai::sources::generator::{GeneratorConfig, GeneratorSource};
use fulfillment_ai::sources::memory::MemoryPartitions;

fn input(spec: &PipelineSpec, per_partition: usize) -> MemoryPartitions {
    let cfg = GeneratorConfig {
        seed: 3,
        partitions: spec.time.partitions,
        orders_per_partition: None,
        order_interval_ms: 60_000,
        ..GeneratorConfig::default()
    };
    GeneratorSource::new(cfg, spec).materialize(Some(per_partition))
}

fn decode(c: &mut Criterion) {
    let spec = PipelineSpec::builtin();
    let data = input(&spec, 25_000);
    let lines: Vec<Vec<u8>> = (0..data.partitions_len())
        .flat_map(|p| {
            data.partition_events(p)
                .map(|e| e.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("decode_event", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for l in &lines {
                ok += decode_event(l).is_ok() as usize;
            }
            ok
        })
    });
    g.finish();
}

fn job(c: &mut Criterion) {
    let spec = PipelineSpec::builtin();
    let data = input(&spec, 50_000);
    let mut g = c.benchmark_group("job");
    g.sample_size(10);
    g.throughput(Throughput::Elements(data.len() as u64));
    for workers in [1, 2] {
        g.bench_function(format!("decode_and_dataflow/{workers}_workers"), |b| {
            b.iter_batched(
                || Arc::new(data.clone()),
                |source| {
                    run_job(
                        &spec,
                        source,
                        &JobOptions {
                            workers,
                            keep_in_memory: false,
                            ..Default::default()
                        },
                    )
                    .expect("job runs")
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, decode, job);
criterion_main!(benches);
