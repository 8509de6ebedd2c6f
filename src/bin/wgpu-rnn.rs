//! `wgpu-rnn`: run golden-format cases on the CPU or GPU, check them against their expected
//! tensors, and list the adapters wgpu sees.
//!
//! ```text
//! wgpu-rnn run CASE.safetensors --device cpu [--backward] --out OUT.safetensors
//! wgpu-rnn check CASE.safetensors... --device cpu [--backward]
//! wgpu-rnn info
//! ```

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use wgpu_rnn::gpu::Context;
use wgpu_rnn::case::{compare_at, Case};
use wgpu_rnn::io::TensorFile;

#[derive(Parser)]
#[command(name = "wgpu-rnn", version, about = "Fused RNN/LSTM/GRU kernels on wgpu, with a CPU reference")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Device {
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Precision {
    /// f32 everywhere.
    F32,
    /// f16 storage, f32 arithmetic (GPU needs SHADER_F16).
    F16,
    /// f64 (CPU only, for reference checks).
    F64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compute a case's outputs (and gradients with --backward) and write them as safetensors
    /// under the golden names. Expected tensors in the case are ignored.
    Run {
        case: PathBuf,
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
        #[arg(long)]
        backward: bool,
        #[arg(long)]
        out: PathBuf,
        /// Storage precision: f32, f16 (f32 arithmetic; on the GPU, or the CPU twin) or
        /// f64 (CPU only, for reference checks).
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
    },
    /// Run cases and compare with the expected tensors they carry, within the golden
    /// tolerances; exits non-zero if any element is out of tolerance.
    Check {
        #[arg(required = true)]
        cases: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
        #[arg(long)]
        backward: bool,
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
    },
    /// List the adapters wgpu sees: backend, device type, limits and features.
    Info,
    /// Run an ONNX model whose graph is one LSTM, GRU or RNN node on the tensors
    /// DATA/input_K.pb (the graph's K-th input not given by an initializer, onnx's backend-test
    /// layout) and write the node's outputs to OUT/output_K.pb.
    Onnx {
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time configurations on the CPU path and the GPU, forward and training, and print a
    /// table (median, min-max, GFLOP/s, share of the device's GEMM ceiling, GPU/CPU speedup).
    Bench {
        /// A configuration: `lstm,t=50,b=32,i=128,h=256[,layers=2][,bidir][,lengths=random][,dropout=0.3][,zoneout=0.1]`;
        /// repeat for several. Default: the DeepBench-derived set plus C1.
        #[arg(long)]
        config: Vec<String>,
        /// Write every row as a JSON array.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Merge rows from a JSON file (e.g. benches/pytorch_bench.py's output) into the table.
        #[arg(long)]
        merge: Vec<PathBuf>,
        /// Fewer repeats (for CI and smoke runs).
        #[arg(long)]
        quick: bool,
        /// Which devices to run.
        #[arg(long, value_enum, default_value = "both")]
        device: BenchDevice,
        /// How the GPU forward walks the steps (auto: single dispatch where it pays).
        #[arg(long, value_enum, default_value = "auto")]
        strategy: Strategy,
        /// After the table, GPU time per kernel for each configuration (timestamp queries
        /// inside passes, where the adapter has them).
        #[arg(long)]
        profile: bool,
        /// f16: also time every configuration with f16 storage on resident buffers (rows
        /// gpu-f16 beside the f32 rows gpu, each with the training plan's device memory).
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Strategy {
    Auto,
    PerStep,
    Single,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum BenchDevice {
    Cpu,
    Gpu,
    Both,
}

#[allow(clippy::too_many_arguments)]
fn bench(config: Vec<String>, json: Option<PathBuf>, merge: Vec<PathBuf>, quick: bool, device: BenchDevice, strategy: Strategy, profile: bool, precision: Precision) -> wgpu_rnn::Result<()> {
    let strategy = match strategy {
        Strategy::Auto => wgpu_rnn::gpu::StepStrategy::Auto,
        Strategy::PerStep => wgpu_rnn::gpu::StepStrategy::PerStep,
        Strategy::Single => wgpu_rnn::gpu::StepStrategy::SingleDispatch,
    };
    use wgpu_rnn::bench::*;
    let configs = if config.is_empty() {
        default_configs()
    } else {
        config.iter().map(|c| BenchConfig::parse(c)).collect::<wgpu_rnn::Result<Vec<_>>>()?
    };
    let timing = if quick { Timing::quick() } else { Timing::full() };
    if precision == Precision::F64 || (precision == Precision::F16 && device == BenchDevice::Cpu) {
        return Err(wgpu_rnn::Error::InvalidConfig("bench --precision f16 adds GPU rows (not with --device cpu); f64 is not benchmarked".into()));
    }
    let mut skipped: Vec<String> = Vec::new();
    let ctx = if device != BenchDevice::Cpu { Some(gpu_context()?) } else { None };
    if let Some(ctx) = &ctx {
        let emu = if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
            "  -- a CPU emulation, not a GPU: compare its figures only as ratios within one run"
        } else {
            ""
        };
        println!("GPU adapter: {}{emu}", ctx.describe());
    }
    println!("CPU path: {} (MATMUL_NUM_THREADS)", cpu_threads());
    let steps = configs.len() as u64 * if device == BenchDevice::Both { 2 } else { 1 } + 1;
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]").expect("template"));
    let mut records = Vec::new();
    bar.set_message("GEMM ceilings");
    if device != BenchDevice::Gpu {
        records.push(bench_cpu_gemm(timing)?);
    }
    if let Some(ctx) = &ctx {
        records.push(bench_gpu_gemm(ctx, timing)?);
    }
    bar.inc(1);
    for c in &configs {
        if device != BenchDevice::Gpu {
            bar.set_message(format!("{} cpu", c.name));
            records.extend(bench_cpu(c, timing)?);
            bar.inc(1);
        }
        if let Some(ctx) = &ctx {
            bar.set_message(format!("{} gpu", c.name));
            records.extend(bench_gpu(ctx, c, timing, strategy)?);
            if precision == Precision::F16 {
                // f16 storage beside the f32 rows above.
                if let Some(why) = c.mode.f16_refused() {
                    skipped.push(format!("{}: no f16 rows ({} refuses f16 storage: {why})", c.name, c.mode));
                } else {
                    bar.set_message(format!("{} gpu f16", c.name));
                    records.extend(bench_gpu_at(ctx, c, timing, strategy, wgpu_rnn::Precision::F16)?);
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if profile {
        match &ctx {
            Some(ctx) => {
                for c in &configs {
                    print!("{}", profile_gpu(ctx, c, strategy)?);
                }
            }
            None => println!("--profile: no GPU in this run (--device cpu)"),
        }
    }
    for m in &merge {
        let text = std::fs::read_to_string(m)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| wgpu_rnn::Error::InvalidConfig(format!("{}: {e}", m.display())))?;
        for r in v.as_array().into_iter().flatten() {
            let r = Record::from_json(r)?;
            if configs.iter().any(|c| c.name == r.name) {
                records.push(r);
            }
        }
    }
    // Group rows by configuration and mode.
    let order = |r: &Record| configs.iter().position(|c| c.name == r.name).map(|p| p + 1).unwrap_or(0);
    records.sort_by_key(|r| (order(r), r.mode.clone()));
    print!("{}", format_table(&records));
    for s in &skipped {
        println!("{s}");
    }
    if let Some(path) = json {
        let arr: Vec<serde_json::Value> = records.iter().map(|r| r.to_json()).collect();
        std::fs::write(&path, serde_json::to_string_pretty(&arr).expect("json"))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn gpu_context() -> wgpu_rnn::Result<Arc<Context>> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    if let Some(c) = CTX.get() {
        return Ok(c.clone());
    }
    let c = Context::new()?;
    eprintln!("adapter: {}", c.describe());
    Ok(CTX.get_or_init(|| c).clone())
}

fn run_case(path: &PathBuf, device: Device, backward: bool, precision: Precision) -> wgpu_rnn::Result<TensorFile> {
    let file = TensorFile::read(path)?;
    if device == Device::Gpu {
        return match precision {
            Precision::F32 => Case::<f32>::from_file(&file)?.run_gpu(&gpu_context()?, backward),
            Precision::F16 => Case::<f32>::from_file(&file)?.run_gpu_at(&gpu_context()?, backward, wgpu_rnn::Precision::F16),
            Precision::F64 => Err(wgpu_rnn::Error::Unsupported("--device gpu computes in f32 (storage f32 or f16), not f64".into())),
        };
    }
    match precision {
        Precision::F32 => Case::<f32>::from_file(&file)?.run_cpu(backward),
        Precision::F16 => Case::<f32>::from_file(&file)?.run_cpu_at(backward, wgpu_rnn::Precision::F16),
        Precision::F64 => Case::<f64>::from_file(&file)?.run_cpu(backward),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { case, device, backward, out, precision } => {
            match run_case(&case, device, backward, precision).and_then(|r| r.write(&out)) {
                Ok(()) => {
                    println!("wrote {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { cases, device, backward, precision } => {
            let mut failed = 0;
            for path in &cases {
                let res = run_case(path, device, backward, precision)
                    .and_then(|got| Ok((got, TensorFile::read(path)?)));
                match res {
                    Ok((got, want)) => {
                        let at = if precision == Precision::F16 { wgpu_rnn::Precision::F16 } else { wgpu_rnn::Precision::F32 };
                        let report = compare_at(&got, &want, backward, at);
                        let bad: Vec<_> = report.iter().filter(|m| m.failures > 0).collect();
                        let worst = report.iter().map(|m| m.worst_ratio).fold(0.0, f64::max);
                        if report.is_empty() {
                            println!("FAIL {}: no expected tensors to compare", path.display());
                            failed += 1;
                        } else if bad.is_empty() {
                            let max = |grad: bool| report.iter().filter(|m| m.name.starts_with("grad") == grad).map(|m| m.max_abs).fold(0.0, f64::max);
                            println!(
                                "ok   {} ({} tensors, worst error {:.3} of tolerance; max |error| forward {:.2e}, gradients {:.2e})",
                                path.display(),
                                report.len(),
                                worst,
                                max(false),
                                max(true)
                            );
                        } else {
                            failed += 1;
                            println!("FAIL {}", path.display());
                            for m in bad {
                                println!(
                                    "     {}: {}/{} out of tolerance, worst at {}: got {} want {}",
                                    m.name, m.failures, m.total, m.worst.0, m.worst.1, m.worst.2
                                );
                            }
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        println!("FAIL {}: {e}", path.display());
                    }
                }
            }
            println!("{} passed, {} failed", cases.len() - failed, failed);
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Bench { config, json, merge, quick, device, strategy, profile, precision } => match bench(config, json, merge, quick, device, strategy, profile, precision) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Onnx { model, data, device, out } => {
            let gpu = if device == Device::Gpu { gpu_context().map(Some) } else { Ok(None) };
            match gpu.and_then(|g| wgpu_rnn::onnx::file::run_files(&model, &data, &out, g.as_ref())) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Info => {
            let adapters = wgpu_rnn::info::adapters();
            if adapters.is_empty() {
                println!("no adapters found");
                return ExitCode::FAILURE;
            }
            for a in adapters {
                println!("{a}");
            }
            ExitCode::SUCCESS
        }
    }
}
