//! The GPU driver generic over the cell (`gpu::generic`): every golden case of every cell that
//! has a WGSL file, forward and backward, on lavapipe (Vulkan) and llvmpipe (GL), against the
//! expected values within the golden tolerances; and the cells without one are refused with a
//! typed error.

use crate::common::{golden_cases, variant_cases};
use crate::gpu_common::contexts;
use wgpu_rnn::case::{compare, Case};
use wgpu_rnn::gpu::kernels::Family;
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Error, Mode};

fn gpu_cells() -> Vec<Mode> {
    Mode::REGISTRY.iter().copied().filter(|&m| Family::all().contains(&Family::Cell(m))).collect()
}

#[test]
fn gpu_cells_golden_cases_vulkan_and_gl() {
    let cells = gpu_cells();
    assert!(cells.len() >= 5, "cells with kernels: {cells:?}");
    for ctx in contexts() {
        let backend = ctx.adapter_info().backend;
        let mut ran = std::collections::HashMap::new();
        for path in golden_cases().into_iter().chain(variant_cases()) {
            let file = TensorFile::read(&path).unwrap();
            let mode: Mode = file.metadata["mode"].parse().unwrap();
            if !cells.contains(&mode) {
                continue;
            }
            let name = format!("{backend:?} {}", path.file_name().unwrap().to_string_lossy());
            let case = Case::<f32>::from_file(&file).unwrap();
            let got = case.run_gpu_generic(ctx, true).unwrap_or_else(|e| panic!("{name}: {e}"));
            let report = compare(&got, &file, true);
            let states = case.config().states().len();
            assert_eq!(report.len(), 2 + 2 * states + case.weights.config.param_specs().len(), "{name}");
            for m in &report {
                assert_eq!(m.failures, 0, "{name}: {} fails in {}/{} (worst {:?}, ratio {})", m.name, m.failures, m.total, m.worst, m.worst_ratio);
            }
            // Inference writes the same forward results.
            let inf = case.run_gpu_generic(ctx, false).unwrap();
            assert_eq!(inf.float("output").unwrap().data, got.float("output").unwrap().data, "{name}: inference output");
            *ran.entry(mode).or_insert(0) += 1;
        }
        for m in &cells {
            assert!(ran.get(m).copied().unwrap_or(0) > 0, "{backend:?}: no case of {m} ran");
        }
    }
}

#[test]
fn gpu_cells_are_reproducible() {
    // Two runs of the same training pass give bitwise the same results.
    let Some(ctx) = contexts().first() else { return };
    for path in variant_cases().into_iter().filter(|p| p.to_string_lossy().ends_with("_5_2.safetensors")) {
        let file = TensorFile::read(&path).unwrap();
        let mode: Mode = file.metadata["mode"].parse().unwrap();
        if !gpu_cells().contains(&mode) {
            continue;
        }
        let case = Case::<f32>::from_file(&file).unwrap();
        let a = case.run_gpu_generic(ctx, true).unwrap();
        let b = case.run_gpu_generic(ctx, true).unwrap();
        for k in a.tensors.keys() {
            let (x, y) = (a.float(k).unwrap(), b.float(k).unwrap());
            let same = x.data.iter().zip(&y.data).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same && x.data.len() == y.data.len(), "{}: {k} differs between runs", path.display());
        }
    }
}

#[test]
fn cells_without_kernels_are_refused_on_the_gpu() {
    let Some(ctx) = contexts().first() else { return };
    for &m in Mode::REGISTRY.iter().filter(|m| !gpu_cells().contains(m)) {
        let path = variant_cases().into_iter().chain(golden_cases()).find(|p| {
            TensorFile::read(p).unwrap().metadata["mode"].parse::<Mode>().ok() == Some(m)
        });
        let Some(path) = path else { continue };
        let case = Case::<f32>::load(&path).unwrap();
        assert!(matches!(case.run_gpu_generic(ctx, true), Err(Error::Unsupported(_))), "{m}");
    }
}
