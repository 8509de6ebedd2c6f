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
use wgpu_rnn::case::{compare, Case};
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
    F32,
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
        /// Compute type of the CPU path (f32 is the real path; f64 for reference checks).
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
        if precision != Precision::F32 {
            return Err(wgpu_rnn::Error::Unsupported("--device gpu computes in f32 only".into()));
        }
        return Case::<f32>::from_file(&file)?.run_gpu(&gpu_context()?, backward);
    }
    match precision {
        Precision::F32 => Case::<f32>::from_file(&file)?.run_cpu(backward),
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
                        let report = compare(&got, &want, backward);
                        let bad: Vec<_> = report.iter().filter(|m| m.failures > 0).collect();
                        let worst = report.iter().map(|m| m.worst_ratio).fold(0.0, f64::max);
                        if report.is_empty() {
                            println!("FAIL {}: no expected tensors to compare", path.display());
                            failed += 1;
                        } else if bad.is_empty() {
                            println!("ok   {} ({} tensors, worst error {:.3} of tolerance)", path.display(), report.len(), worst);
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
