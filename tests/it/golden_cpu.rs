//! Every golden case on the CPU reference, forward and backward, in f32 (the real path) and
//! f64, within the golden tolerances.

use crate::common::{assert_close, golden_cases};
use wgpu_rnn::case::{tolerance::*, Case};
use wgpu_rnn::cpu::Float;
use wgpu_rnn::io::TensorFile;

fn check_all<T: Float>() {
    for path in golden_cases() {
        let file = TensorFile::read(&path).unwrap();
        let case = Case::<T>::from_file(&file).unwrap();
        let got = case.run_cpu(true).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let mut compared = 0;
        for (tname, want) in &file.tensors {
            let is_fwd = ["output", "h_n", "c_n"].contains(&tname.as_str());
            let is_grad = tname.starts_with("grad_input") || tname == "grad_h0" || tname == "grad_c0" || tname.starts_with("grad.");
            if !is_fwd && !is_grad {
                continue;
            }
            let want = match want {
                wgpu_rnn::io::Value::Float(t) => t,
                _ => panic!("{name}: {tname} is not float"),
            };
            let g = got.float(tname).unwrap_or_else(|_| panic!("{name}: result lacks {tname}"));
            assert_eq!(g.shape, want.shape, "{name}: {tname} shape");
            let (atol, rtol) = if is_fwd { (FORWARD_ATOL, FORWARD_RTOL) } else { (GRAD_ATOL, GRAD_RTOL) };
            assert_close(&format!("{name}: {tname}"), &g.data, &want.data, atol, rtol);
            compared += 1;
        }
        // output, h_n, grad_input, grad_h0 and at least weight_ih/weight_hh gradients.
        assert!(compared >= 6, "{name}: only {compared} tensors compared");
    }
}

#[test]
fn golden_cases_f32() {
    check_all::<f32>();
}

#[test]
fn golden_cases_f64() {
    check_all::<f64>();
}

#[test]
fn golden_cli_round_trip() {
    // `wgpu-rnn run --backward` writes a file that `compare` accepts against the case.
    let exe = env!("CARGO_BIN_EXE_wgpu-rnn");
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for path in golden_cases().iter().take(4) {
        let out = dir.join("out.safetensors");
        let st = std::process::Command::new(exe)
            .args(["run", path.to_str().unwrap(), "--device", "cpu", "--backward", "--out", out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        let got = TensorFile::read(&out).unwrap();
        let want = TensorFile::read(path).unwrap();
        let report = wgpu_rnn::case::compare(&got, &want, true);
        assert!(report.len() >= 6);
        for m in report {
            assert_eq!(m.failures, 0, "{}: {} out of tolerance", path.display(), m.name);
        }
    }
    // `check` compares on its own and fails (non-zero exit) on a tampered expectation.
    let mut file = TensorFile::read(&golden_cases()[0]).unwrap();
    if let Some(wgpu_rnn::io::Value::Float(t)) = file.tensors.get_mut("output") {
        t.data[0] += 1.0;
    }
    let bad = dir.join("tampered.safetensors");
    file.write(&bad).unwrap();
    let ok = std::process::Command::new(exe).args(["check", golden_cases()[0].to_str().unwrap()]).output().unwrap();
    assert!(ok.status.success());
    let st = std::process::Command::new(exe).args(["check", bad.to_str().unwrap()]).output().unwrap();
    assert!(!st.status.success(), "check must fail on a wrong expectation");
    assert!(String::from_utf8_lossy(&st.stdout).contains("FAIL"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The examples' CI checks compare with `case::worst_ratio`: a NaN anywhere, or a short read,
/// must fail them (a plain `fold(0.0, f64::max)` skips NaN).
#[test]
fn worst_ratio_fails_on_nan_and_short_reads() {
    use wgpu_rnn::case::worst_ratio;
    let want = [1.0f32, 2.0, 3.0];
    assert!(worst_ratio(&want, &want, 1e-5, 1e-4) == 0.0);
    assert!(worst_ratio(&[1.0, f32::NAN, 3.0], &want, 1e-5, 1e-4) == f64::INFINITY);
    assert!(worst_ratio(&[f32::NAN; 3], &want, 1e-5, 1e-4) == f64::INFINITY);
    assert!(worst_ratio(&want, &[1.0, 2.0, f32::NAN], 1e-5, 1e-4) == f64::INFINITY);
    assert!(worst_ratio(&want[..2], &want, 1e-5, 1e-4) == f64::INFINITY);
    let r = worst_ratio(&[1.0, 2.0, 3.001], &want, 1e-5, 1e-4);
    assert!(r > 1.0 && r.is_finite(), "{r}");
}
