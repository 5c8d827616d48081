// Scratch: dumps generator/superstore output for a before/after byte comparison. Deleted afterwards.
use std::io::Write;

use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::sources::generator::{GeneratorConfig, GeneratorSource, Incident};
use fulfillment_ai::sources::superstore::{default_dataset_path, superstore_source, SuperstoreConfig};

fn dump(m: &fulfillment_ai::sources::memory::MemoryPartitions, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for p in 0..n {
        for e in m.partition_events(p) {
            out.extend_from_slice(e);
            out.push(b'\n');
        }
    }
    out
}

fn main() {
    let tag = std::env::args().nth(1).expect("tag");
    let spec = PipelineSpec::builtin();
    let m = GeneratorSource::new(GeneratorConfig::default(), &spec).materialize(Some(5000));
    let all = dump(&m, 4);
    std::fs::File::create(format!("/tmp/gen_{tag}.bin"))
        .unwrap()
        .write_all(&all[..all.len().min(200_000)])
        .unwrap();
    std::fs::write(format!("/tmp/gen_{tag}_full.bin"), &all).unwrap();
    // Extra: incidents, duplicates, malformed lines.
    let cfg = GeneratorConfig {
        seed: 9,
        duplicate_rate: 0.03,
        malformed_rate: 0.05,
        incidents: vec![
            Incident::CarrierCollapse {
                carrier: "UPS".into(),
                region: "West".into(),
                from_ms: 1_704_067_200_000 + 86_400_000,
                to_ms: 1_704_067_200_000 + 3 * 86_400_000,
                extra_delay_ms: 5 * 86_400_000,
                probability: 0.9,
            },
            Incident::WarehouseBacklog {
                warehouse: "WH-EAST-1".into(),
                from_ms: 1_704_067_200_000,
                to_ms: 1_704_067_200_000 + 2 * 86_400_000,
                extra_ship_delay_ms: 2 * 86_400_000,
            },
        ],
        ..GeneratorConfig::default()
    };
    let m = GeneratorSource::new(cfg, &spec).materialize(Some(20_000));
    std::fs::write(format!("/tmp/gen_{tag}_incidents.bin"), dump(&m, 4)).unwrap();
    let s = superstore_source(&default_dataset_path(), &spec, &SuperstoreConfig::default()).unwrap();
    std::fs::write(format!("/tmp/gen_{tag}_superstore.bin"), dump(&s, s.partitions_len())).unwrap();
}
