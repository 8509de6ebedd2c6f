//! The benchmark's configuration parser, FLOP count and JSON records.

use wgpu_rnn::bench::{default_configs, format_table, BenchConfig, Record};
use wgpu_rnn::{Error, Mode};

#[test]
fn parses_configurations_and_rejects_bad_ones() {
    let c = BenchConfig::parse("gru,t=7,b=3,i=5,h=9,layers=2,bidir,lengths=random").unwrap();
    assert_eq!((c.mode, c.t, c.b, c.input, c.hidden, c.layers, c.bidirectional), (Mode::Gru, 7, 3, 5, 9, 2, true));
    let l = c.lengths();
    assert_eq!(l.len(), 3);
    assert!(l.iter().all(|&x| (1..=7).contains(&x)) && l[0] == 7);
    assert!(matches!(BenchConfig::parse("qrnn,t=1"), Err(Error::UnknownMode(_))));
    assert!(matches!(BenchConfig::parse("lstm,t=0"), Err(Error::EmptyBatch(_))));
    assert!(matches!(BenchConfig::parse("lstm,t=x"), Err(Error::InvalidConfig(_))));
    assert!(matches!(BenchConfig::parse("lstm,q=1"), Err(Error::InvalidConfig(_))));
    assert!(default_configs().iter().any(|c| c.name == "C1"));
}

#[test]
fn flops_count_the_gemms() {
    // C1: 2 * N * 4H * (I + H) = 2 * 1600 * 1024 * 384.
    let c = BenchConfig::parse("lstm,t=50,b=32,i=128,h=256").unwrap();
    assert_eq!(c.flops(false), 2.0 * 1600.0 * 1024.0 * 384.0);
    assert_eq!(c.flops(true), 3.0 * c.flops(false));
}

#[test]
fn records_round_trip_through_json_and_print() {
    let v = serde_json::json!([{
        "name": "C1", "cell": "LSTM", "t": 50, "b": 32, "input": 128, "hidden": 256, "layers": 1,
        "bidirectional": false, "device": "pytorch-cpu", "mode": "forward", "median_ms": 7.0,
        "min_ms": 6.5, "max_ms": 7.5, "gflops": 180.0, "adapter": "PyTorch CPU (2 threads)"
    }]);
    let r = Record::from_json(&v[0]).unwrap();
    assert_eq!(r.to_json(), v[0]);
    let mut cpu = r.clone();
    cpu.device = "cpu".into();
    cpu.median_ms = 14.0;
    let table = format_table(&[cpu, r]);
    assert!(table.contains("pytorch-cpu") && table.contains("2.00x"), "{table}");
}
