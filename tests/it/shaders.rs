//! Every shader parses and validates with naga, without a GPU; the Rust parameter structs
//! have the sizes naga computes for their WGSL twins.

use wgpu_rnn::gpu::kernels::{source, Family, GemmParams, LoopShape, TrainParams, UtilParams};
use wgpu_rnn::{Precision, RnnConfig};

/// The capabilities a device needs for kernels storing in `precision`: f16 needs
/// `SHADER_F16` (naga's `SHADER_FLOAT16`); f32 needs none. With `subgroups` (a family whose
/// [`Family::features`] has `SUBGROUP`), naga's `SUBGROUP` too.
fn caps(precision: Precision, subgroups: bool) -> naga::valid::Capabilities {
    let c = match precision {
        Precision::F32 => naga::valid::Capabilities::empty(),
        Precision::F16 => naga::valid::Capabilities::SHADER_FLOAT16,
    };
    if subgroups {
        c | naga::valid::Capabilities::SUBGROUP
    } else {
        c
    }
}

/// A validator for a module storing in `precision`, with the subgroup operations wgpu allows
/// in compute shaders on a device with `SUBGROUP` where `subgroups`.
fn validator(precision: Precision, subgroups: bool) -> naga::valid::Validator {
    let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps(precision, subgroups));
    if subgroups {
        v.subgroup_stages(naga::valid::ShaderStages::COMPUTE).subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    v
}

fn needs_subgroups(f: Family) -> bool {
    f.features().contains(wgpu_rnn::wgpu::Features::SUBGROUP)
}

/// Whether kernel `k` runs on a device's subgroups: its family needs them, or it is the stage
/// kernel's subgroup twin (in its cell's module extended by `cells/stage_subgroup.wgsl`).
fn kernel_needs_subgroups(k: Kernel) -> bool {
    needs_subgroups(k.family()) || matches!(k, Kernel::CellStage { subgroups: true, .. })
}

/// The module source `k` is compiled from on a device that runs subgroup kernels where it
/// needs them.
fn kernel_source(k: Kernel, precision: Precision) -> String {
    k.family().module_family().source_with(precision, kernel_needs_subgroups(k))
}

fn module(src: &str) -> naga::Module {
    naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)))
}

fn validate(name: &str, src: &str) -> naga::Module {
    validate_at(name, src, Precision::F32, false)
}

fn validate_at(name: &str, src: &str, precision: Precision, subgroups: bool) -> naga::Module {
    let m = module(src);
    validator(precision, subgroups)
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
    for f in Family::all() {
        validate_at(&format!("{f:?}"), &f.source_at(Precision::F32), Precision::F32, needs_subgroups(f));
        if f.stores_precision() {
            validate_at(&format!("{f:?} f16"), &f.source_at(Precision::F16), Precision::F16, needs_subgroups(f));
        }
        // A module as a device that runs subgroup kernels has it (a per-unit cell's with
        // cell_stage_sg).
        let with = f.source_with(Precision::F32, true);
        if with != f.source_at(Precision::F32) {
            validate_at(&format!("{f:?} with subgroups"), &with, Precision::F32, true);
            validate_at(&format!("{f:?} f16 with subgroups"), &f.source_with(Precision::F16, true), Precision::F16, true);
        }
    }
    // Only the subgroup family needs SUBGROUP: the others validate without it (above), and
    // it does not.
    let sg = Family::GemmSubgroup.source_at(Precision::F32);
    assert!(validator(Precision::F32, false).validate(&module(&sg)).is_err(), "the subgroup GEMMs validate without SUBGROUP");
    // The activations snippet on its own is valid WGSL too.
    validate("activations", source::ACTIVATIONS);
}

/// The single-dispatch backward's runs are sized by a bound of its loop iterations that
/// assumes at most ROW_BACKWARD_LOOPS loops in a cell's `row_backward` (every cell file's loops
/// are counted: `unit_forward` has none); and the loop's backward runs exactly the cells with
/// a per-unit step that do not read the layer input (whose backward writes the input
/// gradient's binding, which the loop's table takes).
#[test]
fn cells_fit_the_single_dispatch_backward() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/cells");
    let mut checked = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let src = std::fs::read_to_string(e.unwrap().path()).unwrap();
        if let Some(at) = src.find("fn row_backward(") {
            // The function's body: up to the first closing brace at the start of a line.
            let body = &src[at..at + src[at..].find("\n}").expect("a closing brace")];
            let loops = body.matches("for (").count() + body.matches("loop {").count() + body.matches("while ").count();
            assert!(loops <= wgpu_rnn::gpu::kernels::ROW_BACKWARD_LOOPS, "{loops} loops in\n{src}");
            // Each loop over the units ends with the one-pass break (prelude.wgsl, "One-pass
            // loops"): without it the loop kernels run it as a divergent loop.
            let mut strided = 0;
            for (at, _) in body.match_indices("+= WG) {") {
                let open = at + "+= WG) ".len();
                let mut depth = 0;
                let close = open + body[open..].char_indices().find(|&(_, c)| {
                    depth += (c == '{') as i32 - (c == '}') as i32;
                    depth == 0
                }).expect("the loop's closing brace").0;
                assert!(body[open + 1..close].trim_end().ends_with("if (ONE_PASS_UNITS) { break; }"), "a unit loop without the one-pass break in\n{body}");
                strided += 1;
            }
            assert!(strided >= 1, "row_backward without a loop over the units in\n{body}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} cell files");
    for &m in Mode::REGISTRY {
        let uses_input = m.layout(RnnConfig::new(m, 8, 8).sizes(0)).uses_input;
        assert_eq!(m.loop_grad(), m.unit_step() && !uses_input, "{m}");
    }
}

#[test]
fn no_kernel_binds_more_storage_buffers_than_webgpu_allows() {
    for f in Family::all() {
        let n = f.storage_bindings().len() as u32;
        assert!(n <= wgpu_rnn::gpu::kernels::MAX_STORAGE_BINDINGS, "{f:?} binds {n} storage buffers");
    }
}

#[test]
fn every_shader_file_is_compiled_into_a_validated_family() {
    // No orphan files: each .wgsl under shaders/ is part of some family's module, and every
    // family validated above; the activations snippet also validates on its own (the
    // backward snippet needs its family's bindings).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files = Vec::new();
    for sub in [dir.clone(), dir.join("shared"), dir.join("cells")] {
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
        assert!(Family::all().iter().any(|f| f.source_with(Precision::F32, true).contains(&src)), "{} is not part of any kernel family", p.display());
        if p.ends_with("shared/activations.wgsl") {
            validate(&p.display().to_string(), &src);
        }
    }
}

#[test]
fn parameter_structs_match_wgsl_sizes() {
    let m = module(&Family::Gemm.source_at(Precision::F32));
    assert_eq!(struct_size(&m, "GemmParams") as usize, std::mem::size_of::<GemmParams>());
    let m = module(&Family::Util.source_at(Precision::F32));
    assert_eq!(struct_size(&m, "UtilParams") as usize, std::mem::size_of::<UtilParams>());
    let m = module(&Family::Rows.source_at(Precision::F32));
    assert_eq!(struct_size(&m, "RowsParams") as usize, std::mem::size_of::<wgpu_rnn::gpu::kernels::RowsParams>());
    let m = module(&Family::Cast.source_at(Precision::F32));
    assert_eq!(struct_size(&m, "CastParams") as usize, std::mem::size_of::<wgpu_rnn::gpu::kernels::CastParams>());
    let m = module(&Family::Train.source_at(Precision::F32));
    assert_eq!(struct_size(&m, "TrainParams") as usize, std::mem::size_of::<TrainParams>());
    for f in Family::all() {
        if let Family::Cell(_) = f {
            let m = module(&f.source_at(Precision::F32));
            assert_eq!(struct_size(&m, "CellParams") as usize, std::mem::size_of::<wgpu_rnn::gpu::kernels::CellParams>(), "{f:?}");
        }
        assert!(f.param_size() <= wgpu_rnn::gpu::kernels::MAX_PARAM_BYTES as u64);
    }
}

// ---- Metal and DX12: every kernel variant translates to MSL and HLSL ----------------------
//
// wgpu hands each pipeline's WGSL to naga's MSL writer on Metal and its HLSL writer on DX12,
// after substituting the pipeline's override constants. A construct one of those writers
// rejects would fail pipeline creation on a user's Mac or Windows machine; here it fails on
// Linux, for every entry point with every constant set the library compiles.

use naga::back::{hlsl, msl};
use wgpu_rnn::gpu::kernels::{Kernel, TrainKernel};
use wgpu_rnn::Mode;

/// Metal Shading Language versions tried: the oldest wgpu's Metal backend accepts for
/// compute work and a current one.
const MSL_VERSIONS: [(u8, u8); 2] = [(1, 2), (2, 4)];

/// The MSL version the f16 kernels are translated for (wgpu's Metal backend reports
/// SHADER_F16 from MSL 2.1 on Apple GPUs).
const MSL_F16_VERSION: (u8, u8) = (2, 4);

/// HLSL shader models tried: FXC's 5.1 and DXC's 6.0 (wgpu's two DX12 compilers).
const HLSL_MODELS: [hlsl::ShaderModel; 2] = [hlsl::ShaderModel::V5_1, hlsl::ShaderModel::V6_0];

fn train_kernels() -> Vec<TrainKernel> {
    use TrainKernel::*;
    // The match makes this list fail to compile when a training kernel is added.
    let all = vec![
        EmbedForward, EmbedBackward, Fill, BlocksToRows, RowsToBlocks, BceLogits, Mse, SoftmaxCe, RowMetrics, SumSq, OptBegin,
        Adam, Sgd, Dropout,
    ];
    for k in &all {
        match k {
            EmbedForward | EmbedBackward | Fill | BlocksToRows | RowsToBlocks | BceLogits | Mse | SoftmaxCe | RowMetrics | SumSq
            | OptBegin | Adam | Sgd | Dropout => {}
        }
    }
    all
}

/// Custom activation slots for a cell that has slots, one per slot: functions dealt from
/// every one in turn, complements, a clip (none for a cell without slots).
fn custom_slots(m: Mode) -> Vec<wgpu_rnn::cells::Pointwise> {
    use wgpu_rnn::cells::{Activation, Function, Pointwise};
    if m.slots().is_empty() {
        return Vec::new();
    }
    let n = m.slots().len();
    (0..4)
        .map(|i| {
            let acts: Vec<Activation> = (0..n)
                .map(|j| {
                    let a = Activation::with(Function::ALL[(i * n + j) % Function::ALL.len()], Some(0.5), Some(0.25)).unwrap();
                    if j == n - 1 && i % 2 == 1 {
                        a.complemented()
                    } else {
                        a
                    }
                })
                .collect();
            Pointwise::new(&acts, (i % 2 == 0).then_some(1.5)).unwrap()
        })
        .collect()
}

/// Every kernel variant the pipeline cache can hold (each entry point with each constant set).
fn all_kernels() -> Vec<Kernel> {
    use Kernel::*;
    let mut v = Vec::new();
    let b = [false, true];
    v.extend([Gemm, GemmNarrow, Gemm4, Gemm44, Gemm4T, Gemm44Sg, Gemm4TSg, GemmSg, GemmNarrowSg, Gemm4Sg, Transpose, ColSum, ColSum4, GatherRows, MoveRows, CastToStored, CastToF32]);
    v.extend(train_kernels().into_iter().map(Train));
    for f in Family::all() {
        if let Family::Cell(m) = f {
            // A cell has the whole-row forward or the fused stage kernel (Mode::unit_step).
            if m.unit_step() {
                for gates in 1..=wgpu_rnn::cells::MAX_GATES as u8 {
                    for subgroups in b {
                        v.extend([CellStage { cell: m, vec4: false, gates, pointwise: None, subgroups }, CellStage { cell: m, vec4: true, gates, pointwise: None, subgroups }]);
                    }
                }
                // Custom activation slots (every function among the cells' slots, a clip).
                for pw in custom_slots(m) {
                    v.push(CellStage { cell: m, vec4: true, gates: 1, pointwise: Some(pw), subgroups: false });
                }
                v.push(CellStageInput(m));
                // The loops are specialised for a layer's stages: the cell's shapes (with and
                // without a projection where it has one), inference and training.
                for proj in [0, 4] {
                    let cfg = RnnConfig::new(m, 8, 8).proj(proj);
                    if cfg.validate().is_err() {
                        continue;
                    }
                    let lay = m.layout(wgpu_rnn::cells::Sizes { input: 8, hidden: 8, proj, bias: true });
                    // Units within one pass of the loops' workgroup and beyond it.
                    for (training, units) in b.iter().flat_map(|&t| [(t, 8), (t, 65)]) {
                        let shape = LoopShape::of(&lay, training, units).expect("every cell's layers fit the loops' stages");
                        v.push(CellLoop { cell: m, shape, pointwise: None });
                        if !training {
                            v.extend(custom_slots(m).into_iter().map(|pw| CellLoop { cell: m, shape, pointwise: Some(pw) }));
                        }
                        if training && m.loop_grad() {
                            v.push(CellLoopGrad { cell: m, shape });
                        }
                    }
                }
            } else {
                v.push(CellForward(m));
            }
            v.extend([CellBackward(m), CellZoneout(m), CellZoneoutStash(m), CellZoneoutAdd(m), CellDropout(m)]);
            if m.derived(wgpu_rnn::cells::Sizes { input: 8, hidden: 8, proj: 0, bias: true }).is_some() {
                v.extend([CellDerive(m), CellDerivePolish(m), CellDeriveGrad(m), CellDeriveSum(m)]);
            }
        }
    }
    // The match makes this list fail to compile when a kernel variant is added.
    for k in &v {
        match k {
            Gemm | GemmNarrow | Gemm4 | Gemm44 | Gemm4T | Gemm44Sg | Gemm4TSg | GemmSg | GemmNarrowSg | Gemm4Sg
            | Transpose | ColSum | ColSum4 | GatherRows | MoveRows | Train(_) | CellForward(_) | CellStage { .. } | CellStageInput(_) | CellLoop { .. } | CellLoopGrad { .. } | CellBackward(_) | CellZoneout(_)
            | CellZoneoutStash(_) | CellZoneoutAdd(_) | CellDropout(_) | CellDerive(_) | CellDerivePolish(_) | CellDeriveGrad(_) | CellDeriveSum(_) | CastToStored | CastToF32 => {}
        }
    }
    v
}

/// WebGPU's default `maxComputeWorkgroupStorageSize`: what a browser's device grants unless
/// asked for more (lavapipe has 32 KiB, so only this check would notice).
const WEBGPU_WORKGROUP_STORAGE: u32 = 16_384;

/// No kernel uses more workgroup memory than WebGPU's default allows (the single-dispatch
/// loops keep rows of products and gradients there).
#[test]
fn no_kernel_uses_more_workgroup_memory_than_webgpu_allows() {
    for k in all_kernels() {
        let (m, info) = specialised(k, Precision::F32);
        let ep = m.entry_points.iter().position(|e| e.name == k.entry()).unwrap_or_else(|| panic!("{}: no entry point", k.label()));
        let uses = info.get_entry_point(ep);
        let bytes: u32 = m
            .global_variables
            .iter()
            .filter(|(h, g)| g.space == naga::AddressSpace::WorkGroup && !uses[*h].is_empty())
            .map(|(_, g)| m.types[g.ty].inner.size(m.to_ctx()))
            .sum();
        assert!(bytes <= WEBGPU_WORKGROUP_STORAGE, "{} uses {bytes} bytes of workgroup memory", k.label());
    }
}

/// The module with `k`'s override constants substituted, as wgpu does before handing it to a
/// backend writer; validated with the capabilities a device that runs it has (`SUBGROUP` for
/// the subgroup kernels, none else at f32).
fn specialised(k: Kernel, precision: Precision) -> (naga::Module, naga::valid::ModuleInfo) {
    let src = &kernel_source(k, precision);
    let m = module(src);
    let info = validator(precision, kernel_needs_subgroups(k))
        .validate(&m)
        .unwrap_or_else(|e| panic!("{} {precision}: {}", k.label(), e.emit_to_string(src)));
    let mut constants = naga::back::PipelineConstants::default();
    for (name, value) in k.constants() {
        constants.insert(name.to_string(), value);
    }
    let (m, info) =
        naga::back::pipeline_constants::process_overrides(&m, &info, Some((naga::ShaderStage::Compute, k.entry())), &constants)
            .unwrap_or_else(|e| panic!("{}: override constants: {e}", k.label()));
    (m.into_owned(), info.into_owned())
}

/// The value of the module-scope constant `name` (an override after substitution), if it is a
/// scalar literal.
fn constant_value(m: &naga::Module, name: &str) -> Option<f64> {
    let (_, c) = m.constants.iter().find(|(_, c)| c.name.as_deref() == Some(name))?;
    match m.global_expressions[c.init] {
        naga::Expression::Literal(l) => Some(match l {
            naga::Literal::U32(v) => v as f64,
            naga::Literal::I32(v) => v as f64,
            naga::Literal::F32(v) => v as f64,
            naga::Literal::Bool(v) => v as u8 as f64,
            other => panic!("{name}: unexpected literal {other:?}"),
        }),
        _ => None,
    }
}

/// Bounds-check policies for the shaders' checked (debug) and unchecked (release) builds.
fn policies(checked: bool) -> naga::proc::BoundsCheckPolicies {
    let p = if checked { naga::proc::BoundsCheckPolicy::Restrict } else { naga::proc::BoundsCheckPolicy::Unchecked };
    naga::proc::BoundsCheckPolicies { index: p, buffer: p, image_load: p, binding_array: naga::proc::BoundsCheckPolicy::Unchecked }
}

fn to_msl(k: Kernel, m: &naga::Module, info: &naga::valid::ModuleInfo, lang_version: (u8, u8), checked: bool) -> String {
    // Slots as wgpu's Metal backend assigns them for the family's layout: buffers in binding
    // order, then the buffer-sizes buffer that runtime-sized arrays need.
    let storage = k.family().storage_bindings();
    let mut resources = msl::BindingMap::default();
    resources.insert(
        naga::ResourceBinding { group: 0, binding: 0 },
        msl::BindTarget { buffer: Some(0), mutable: false, ..Default::default() },
    );
    for (i, &rw) in storage.iter().enumerate() {
        let slot = i as u8 + 1;
        resources.insert(
            naga::ResourceBinding { group: 0, binding: i as u32 + 1 },
            msl::BindTarget { buffer: Some(slot), mutable: rw, ..Default::default() },
        );
    }
    let ep = msl::EntryPointResources { resources, immediates_buffer: None, sizes_buffer: Some(storage.len() as u8 + 1) };
    let options = msl::Options {
        lang_version,
        per_entry_point_map: msl::EntryPointResourceMap::from([(k.entry().to_string(), ep)]),
        fake_missing_bindings: false,
        bounds_check_policies: policies(checked),
        force_loop_bounding: checked,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, k.entry().to_string())), ..Default::default() };
    let (out, tinfo) = msl::write_string(m, info, &options, &pipeline)
        .unwrap_or_else(|e| panic!("MSL {lang_version:?} checked={checked}: {}: {e:?}", k.label()));
    let names: Vec<&String> = tinfo.entry_point_names.iter().map(|r| r.as_ref().unwrap_or_else(|e| panic!("MSL: {}: {e:?}", k.label()))).collect();
    assert_eq!(names.len(), 1, "MSL: {}: one entry point written", k.label());
    assert!(out.contains(&format!("kernel void {}(", names[0])), "MSL: {}: no kernel function {}", k.label(), names[0]);
    out
}

fn to_hlsl(k: Kernel, m: &naga::Module, info: &naga::valid::ModuleInfo, shader_model: hlsl::ShaderModel, checked: bool) -> String {
    // Registers as wgpu's DX12 backend assigns them: the parameter block is a constant
    // buffer (b0), read-only storage buffers are SRVs (t0..), read-write ones UAVs (u0..).
    let mut binding_map = hlsl::BindingMap::default();
    let target = |register| hlsl::BindTarget {
        space: 0,
        register,
        binding_array_size: None,
        dynamic_storage_buffer_offsets_index: None,
        restrict_indexing: false,
    };
    binding_map.insert(naga::ResourceBinding { group: 0, binding: 0 }, target(0));
    let (mut srv, mut uav) = (0, 0);
    for (i, &rw) in k.family().storage_bindings().iter().enumerate() {
        let register = if rw { &mut uav } else { &mut srv };
        binding_map.insert(naga::ResourceBinding { group: 0, binding: i as u32 + 1 }, target(*register));
        *register += 1;
    }
    let options = hlsl::Options {
        shader_model,
        binding_map,
        fake_missing_bindings: false,
        restrict_indexing: checked,
        force_loop_bounding: checked,
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, k.entry().to_string())) };
    let mut out = String::new();
    let rinfo = hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(m, info, None)
        .unwrap_or_else(|e| panic!("HLSL {shader_model:?} checked={checked}: {}: {e:?}", k.label()));
    let names: Vec<&String> = rinfo.entry_point_names.iter().map(|r| r.as_ref().unwrap_or_else(|e| panic!("HLSL: {}: {e:?}", k.label()))).collect();
    assert_eq!(names.len(), 1, "HLSL: {}: one entry point written", k.label());
    assert!(out.contains(&format!("void {}(", names[0])), "HLSL: {}: no entry function {}", k.label(), names[0]);
    assert!(out.contains("[numthreads("), "HLSL: {}: no [numthreads]", k.label());
    out
}

#[test]
fn every_entry_point_has_a_kernel_variant() {
    // The translation tests below go through `all_kernels`; an entry point no variant names
    // would go untested on Metal and DX12.
    let kernels = all_kernels();
    let mut total = 0;
    // (Families that share a module, a cell's and its stage kernel's, name its entry points
    // between them.)
    // (A module as a device that runs subgroup kernels has it: a per-unit cell's with
    // cell_stage_sg.)
    for f in Family::all().into_iter().filter(|f| f.module_family() == *f) {
        let m = module(&f.source_with(Precision::F32, true));
        assert!(!m.entry_points.is_empty(), "{f:?} has no entry points");
        for ep in &m.entry_points {
            assert_eq!(ep.stage, naga::ShaderStage::Compute, "{f:?}::{}", ep.name);
            assert!(kernels.iter().any(|k| k.family().module_family() == f && k.entry() == ep.name), "{f:?}::{} has no Kernel variant", ep.name);
            total += 1;
        }
    }
    // And every variant names an entry point of its family.
    for k in &kernels {
        let m = module(&kernel_source(*k, Precision::F32));
        assert!(m.entry_points.iter().any(|ep| ep.name == k.entry()), "{}: no such entry point in {:?}", k.label(), k.family());
    }
    assert!(total >= 30, "only {total} entry points found");
}

#[test]
fn every_kernel_translates_to_msl_for_metal() {
    for k in all_kernels() {
        let (m, info) = specialised(k, Precision::F32);
        for v in MSL_VERSIONS {
            for checked in [true, false] {
                to_msl(k, &m, &info, v, checked);
            }
        }
        // f16 storage: Metal has `half` in every MSL version wgpu accepts for it (2.1 up).
        if k.family().stores_precision() {
            let (m, info) = specialised(k, Precision::F16);
            for checked in [true, false] {
                let out = to_msl(k, &m, &info, MSL_F16_VERSION, checked);
                assert!(out.contains("half"), "MSL f16: {} stores no half", k.label());
            }
        }
    }
}

#[test]
fn every_kernel_translates_to_hlsl_for_dx12() {
    for k in all_kernels() {
        let (m, info) = specialised(k, Precision::F32);
        for sm in HLSL_MODELS {
            for checked in [true, false] {
                to_hlsl(k, &m, &info, sm, checked);
            }
        }
        // f16 storage: 16-bit types need DXC and shader model 6.2.
        if k.family().stores_precision() {
            let (m, info) = specialised(k, Precision::F16);
            for checked in [true, false] {
                let out = to_hlsl(k, &m, &info, hlsl::ShaderModel::V6_2, checked);
                assert!(out.contains("half"), "HLSL f16: {} stores no half", k.label());
            }
        }
    }
}

#[test]
fn override_constants_reach_the_translated_shader() {
    // The substitution is real: each override becomes a constant holding the kernel's value,
    // and loops specialised for different stages translate to different MSL and HLSL.
    let mut checked = 0;
    for k in all_kernels() {
        let (m, _) = specialised(k, Precision::F32);
        for (name, value) in k.constants() {
            match constant_value(&m, name) {
                Some(v) => assert_eq!(v, value, "{}: {name}", k.label()),
                None => panic!("{}: {name} did not reach the shader", k.label()),
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} constants checked");
    let shape = |training| LoopShape::of(&Mode::Lstm.layout(wgpu_rnn::cells::Sizes { input: 8, hidden: 8, proj: 0, bias: true }), training, 8).unwrap();
    let inference = Kernel::CellLoop { cell: Mode::Lstm, shape: shape(false), pointwise: None };
    let training = Kernel::CellLoop { cell: Mode::Lstm, shape: shape(true), pointwise: None };
    let (mi, ii) = specialised(inference, Precision::F32);
    let (mt, it) = specialised(training, Precision::F32);
    assert_ne!(to_msl(inference, &mi, &ii, (2, 4), true), to_msl(training, &mt, &it, (2, 4), true));
    assert_ne!(
        to_hlsl(inference, &mi, &ii, hlsl::ShaderModel::V5_1, true),
        to_hlsl(training, &mt, &it, hlsl::ShaderModel::V5_1, true)
    );
}
