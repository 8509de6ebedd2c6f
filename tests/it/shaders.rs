//! Every shader parses and validates with naga, without a GPU; the Rust parameter structs
//! have the sizes naga computes for their WGSL twins.

use wgpu_rnn::gpu::kernels::{source, BackParams, Family, GemmParams, StepParams, TrainParams, UtilParams};

fn module(src: &str) -> naga::Module {
    naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)))
}

fn validate(name: &str, src: &str) -> naga::Module {
    let m = module(src);
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&m)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    m
}

fn struct_size(m: &naga::Module, name: &str) -> u32 {
    for (_, ty) in m.types.iter() {
        if ty.name.as_deref() == Some(name) {
            if let naga::TypeInner::Struct { span, .. } = ty.inner {
                return span;
            }
        }
    }
    panic!("no struct {name}");
}

#[test]
fn every_shader_family_validates_with_naga() {
    for f in Family::ALL {
        validate(&format!("{f:?}"), f.source());
    }
    // The activations snippet on its own is valid WGSL too.
    validate("activations", source::ACTIVATIONS);
}

#[test]
fn every_shader_file_is_compiled_into_a_validated_family() {
    // No orphan files: each .wgsl under shaders/ is part of some family's module, and every
    // family validated above; the activations snippet also validates on its own (the
    // backward snippet needs its family's bindings).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files = Vec::new();
    for sub in [dir.clone(), dir.join("shared")] {
        for e in std::fs::read_dir(&sub).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "wgsl") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 5, "found {} shader files", files.len());
    for p in files {
        let src = std::fs::read_to_string(&p).unwrap();
        assert!(Family::ALL.iter().any(|f| f.source().contains(&src)), "{} is not part of any kernel family", p.display());
        if p.ends_with("shared/activations.wgsl") {
            validate(&p.display().to_string(), &src);
        }
    }
}

#[test]
fn parameter_structs_match_wgsl_sizes() {
    let m = module(Family::StepForward.source());
    assert_eq!(struct_size(&m, "StepParams") as usize, std::mem::size_of::<StepParams>());
    for f in [Family::StepBackward, Family::RecurrentGrad] {
        let m = module(f.source());
        assert_eq!(struct_size(&m, "BackParams") as usize, std::mem::size_of::<BackParams>());
    }
    let m = module(Family::Gemm.source());
    assert_eq!(struct_size(&m, "GemmParams") as usize, std::mem::size_of::<GemmParams>());
    let m = module(Family::Util.source());
    assert_eq!(struct_size(&m, "UtilParams") as usize, std::mem::size_of::<UtilParams>());
    let m = module(Family::Train.source());
    assert_eq!(struct_size(&m, "TrainParams") as usize, std::mem::size_of::<TrainParams>());
    for f in Family::ALL {
        assert!(f.param_size() <= wgpu_rnn::gpu::kernels::MAX_PARAM_BYTES as u64);
    }
}
