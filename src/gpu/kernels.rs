//! The shaders, their bind-group layouts (one per kernel family: the layout is the kernel's
//! signature), the kernel variants the pipeline cache is keyed by, and the parameter structs
//! shared with WGSL (a test checks their sizes against naga's).

use crate::cells::Mode;
use bytemuck::{Pod, Zeroable};

/// WGSL sources, shared snippets joined in front at compile time. Every file is plain WGSL.
pub mod source {
    pub const ACTIVATIONS: &str = include_str!("../../shaders/shared/activations.wgsl");
    pub const STEP_FORWARD: &str =
        concat!(include_str!("../../shaders/shared/activations.wgsl"), include_str!("../../shaders/step_forward.wgsl"));
    pub const BACKWARD_SHARED: &str = include_str!("../../shaders/shared/backward.wgsl");
    pub const STEP_BACKWARD: &str = concat!(
        include_str!("../../shaders/shared/activations.wgsl"),
        include_str!("../../shaders/shared/backward.wgsl"),
        include_str!("../../shaders/step_backward.wgsl")
    );
    pub const RECURRENT_GRAD: &str = concat!(
        include_str!("../../shaders/shared/activations.wgsl"),
        include_str!("../../shaders/shared/backward.wgsl"),
        include_str!("../../shaders/recurrent_grad.wgsl")
    );
    pub const GEMM: &str = include_str!("../../shaders/gemm.wgsl");
    pub const UTIL: &str = include_str!("../../shaders/util.wgsl");
    pub const TRAIN: &str = concat!(include_str!("../../shaders/shared/random.wgsl"), include_str!("../../shaders/train.wgsl"));
}

/// The most storage buffers any kernel binds (recurrent_grad: 8, WebGPU's default limit).
pub const MAX_STORAGE_BINDINGS: u32 = 8;

/// The largest parameter block; blocks are laid out at a stride that rounds this up to the
/// device's uniform offset alignment.
pub const MAX_PARAM_BYTES: u32 = 128;

/// A kernel family: one WGSL module and one bind-group layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    StepForward,
    StepBackward,
    RecurrentGrad,
    Gemm,
    Util,
    Train,
    /// A cell's pointwise kernels (`shaders/cells/<cell>.wgsl` after `shaders/cells/prelude.wgsl`),
    /// run by the GPU driver generic over the cell (`gpu::generic`).
    Cell(Mode),
}

impl Family {
    pub const FIXED: [Family; 6] = [Family::StepForward, Family::StepBackward, Family::RecurrentGrad, Family::Gemm, Family::Util, Family::Train];

    /// Every family: the fixed ones, and one per registered cell.
    pub fn all() -> Vec<Family> {
        let mut v = Family::FIXED.to_vec();
        v.extend(Mode::REGISTRY.iter().map(|&m| Family::Cell(m)));
        v
    }

    pub fn source(self) -> &'static str {
        match self {
            Family::Cell(m) => m.wgsl(),
            Family::StepForward => source::STEP_FORWARD,
            Family::StepBackward => source::STEP_BACKWARD,
            Family::RecurrentGrad => source::RECURRENT_GRAD,
            Family::Gemm => source::GEMM,
            Family::Util => source::UTIL,
            Family::Train => source::TRAIN,
        }
    }

    /// Read-only (false) or read-write (true) for storage bindings 1.., after the uniform @0.
    pub fn storage_bindings(self) -> &'static [bool] {
        match self {
            // wt, xp, out (rw), tape (rw), seq, wt as vec4, gathered states as vec4
            Family::StepForward => &[false, false, true, true, false, false, false],
            // weights, dy, tape, prev, seq, bw (rw), dg (rw)
            Family::StepBackward => &[false, false, false, false, false, true, true],
            // wt, dg, dy, tape, seq, bw (rw), wt as vec4, dg as vec4
            Family::RecurrentGrad => &[false, false, false, false, false, true, false, false],
            // a, b, c (rw), bias, b as vec4, a as vec4
            Family::Gemm => &[false, false, true, false, false, false],
            // src, state0, seq, dst (rw)
            Family::Util => &[false, false, false, true],
            // a, b, idx (u32), out (rw), out2 (rw), state (rw)
            Family::Train => &[false, false, false, true, true, true],
            // weights, layer input, tape (rw), states (rw), scratch (rw), output (rw),
            // backward workspace (rw), input gradient (rw): see shaders/cells/prelude.wgsl
            Family::Cell(_) => &[false, false, true, true, true, true, true, true],
        }
    }

    /// Size of the family's parameter struct.
    pub fn param_size(self) -> u64 {
        (match self {
            Family::StepForward => std::mem::size_of::<StepParams>(),
            Family::StepBackward | Family::RecurrentGrad => std::mem::size_of::<BackParams>(),
            Family::Gemm => std::mem::size_of::<GemmParams>(),
            Family::Util => std::mem::size_of::<UtilParams>(),
            Family::Train => std::mem::size_of::<TrainParams>(),
            Family::Cell(_) => std::mem::size_of::<CellParams>(),
        }) as u64
    }
}

/// A kernel variant: everything that changes the compiled pipeline (entry point and
/// override constants). The pipeline cache is keyed by this alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// One step of `cell`, one of the cells the fused kernels run ([`Mode::fused_step`]).
    Step { cell: Mode, vec4: bool },
    /// Every step of a small problem in one dispatch.
    LoopStep { cell: Mode, small: bool },
    ProjForward,
    /// One backward step's gate gradients of `cell`.
    CellGrad { cell: Mode },
    /// Every backward step of a small problem in one dispatch.
    LoopGrad { cell: Mode, small: bool },
    /// `dh_prev = dG W_hh` for `cell`'s gates.
    RecurrentGrad { cell: Mode, vec4: bool, wide: bool },
    ProjGrad,
    Gemm,
    /// The generic product for n <= 128 (`gemm` with 4 adjacent columns per invocation).
    GemmNarrow,
    Gemm4,
    Gemm44,
    Gemm4T,
    GatherPrev,
    GatherLast,
    ScatterLast,
    Copy,
    CopyState,
    Transpose,
    ColSum,
    PadRows,
    /// Training kit (shaders/train.wgsl), one variant per entry point.
    Train(TrainKernel),
    /// A cell's pointwise forward of one stage for the step's rows.
    CellForward(Mode),
    /// A cell's pointwise backward of one stage.
    CellBackward(Mode),
    /// Copies the step's state rows to the tape (prelude).
    CellSave(Mode),
    /// Zoneout of h after a step's last stage (prelude).
    CellZoneout(Mode),
    /// Zoneout's backward before a step's last stage: the gradients of the units that kept
    /// their previous value set aside (prelude).
    CellZoneoutStash(Mode),
    /// Zoneout's backward after a step: those gradients added to the previous h's (prelude).
    CellZoneoutAdd(Mode),
    /// Inverted dropout of a layer's output or of its gradient (prelude).
    CellDropout(Mode),
}

/// The training kit's entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrainKernel {
    EmbedForward,
    EmbedBackward,
    Fill,
    BlocksToRows,
    RowsToBlocks,
    BceLogits,
    Mse,
    SoftmaxCe,
    RowMetrics,
    SumSq,
    OptBegin,
    Adam,
    Sgd,
    Dropout,
}

impl TrainKernel {
    pub fn entry(self) -> &'static str {
        use TrainKernel::*;
        match self {
            EmbedForward => "embed_forward",
            EmbedBackward => "embed_backward",
            Fill => "fill",
            BlocksToRows => "blocks_to_rows",
            RowsToBlocks => "rows_to_blocks",
            BceLogits => "bce_logits",
            Mse => "mse",
            SoftmaxCe => "softmax_ce",
            RowMetrics => "row_metrics",
            SumSq => "sumsq",
            OptBegin => "opt_begin",
            Adam => "adam",
            Sgd => "sgd",
            Dropout => "dropout",
        }
    }
}

impl Kernel {
    pub fn family(self) -> Family {
        use Kernel::*;
        match self {
            Step { .. } | LoopStep { .. } | ProjForward => Family::StepForward,
            CellGrad { .. } | LoopGrad { .. } | ProjGrad => Family::StepBackward,
            RecurrentGrad { .. } => Family::RecurrentGrad,
            Gemm | GemmNarrow | Gemm4 | Gemm44 | Gemm4T => Family::Gemm,
            GatherPrev | GatherLast | ScatterLast | Copy | CopyState | Transpose | ColSum | PadRows => Family::Util,
            Train(_) => Family::Train,
            CellForward(m) | CellBackward(m) | CellSave(m) | CellZoneout(m) | CellZoneoutStash(m) | CellZoneoutAdd(m) | CellDropout(m) => Family::Cell(m),
        }
    }

    pub fn entry(self) -> &'static str {
        use Kernel::*;
        match self {
            Step { .. } => "step",
            LoopStep { small: false, .. } => "loop_step",
            LoopStep { small: true, .. } => "loop_step_64",
            ProjForward => "proj_forward",
            CellGrad { .. } => "cell_grad_step",
            LoopGrad { small: false, .. } => "loop_grad",
            LoopGrad { small: true, .. } => "loop_grad_64",
            RecurrentGrad { .. } => "recurrent_grad",
            ProjGrad => "proj_grad",
            Gemm => "gemm",
            GemmNarrow => "gemm",
            Gemm4 => "gemm4",
            Gemm44 => "gemm44",
            Gemm4T => "gemm4t",
            GatherPrev => "gather_prev",
            GatherLast => "gather_last",
            ScatterLast => "scatter_last",
            Copy => "copy",
            CopyState => "copy_state",
            Transpose => "transpose",
            ColSum => "colsum",
            PadRows => "pad_rows",
            Train(k) => k.entry(),
            CellForward(_) => "cell_forward",
            CellBackward(_) => "cell_backward",
            CellSave(_) => "save_states",
            CellZoneout(_) => "zoneout",
            CellZoneoutStash(_) => "zoneout_stash",
            CellZoneoutAdd(_) => "zoneout_add",
            CellDropout(_) => "dropout_rows",
        }
    }

    /// The entry point and its override constants, for reports.
    pub fn label(self) -> String {
        let c = self.constants();
        if c.is_empty() {
            return self.entry().to_string();
        }
        let c: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} ({})", self.entry(), c.join(" "))
    }

    /// The cell of a fused step kernel whose cell the fused kernels do not run: such a
    /// kernel has no pipeline (`Context::pipeline` refuses it).
    pub fn unsupported_cell(self) -> Option<Mode> {
        use Kernel::*;
        match self {
            Step { cell, .. } | LoopStep { cell, .. } | CellGrad { cell } | LoopGrad { cell, .. } | RecurrentGrad { cell, .. } => {
                cell.fused_step().is_none().then_some(cell)
            }
            _ => None,
        }
    }

    /// Pipeline-overridable constants (`GATES` 0 for a cell the fused kernels do not run:
    /// see [`Kernel::unsupported_cell`]).
    pub fn constants(self) -> Vec<(&'static str, f64)> {
        use Kernel::*;
        match self {
            Step { cell, vec4 } => {
                let (gates, relu) = fused(cell);
                vec![("GATES", gates as f64), ("RELU", relu as u8 as f64), ("VEC4", vec4 as u8 as f64)]
            }
            LoopStep { cell, .. } | CellGrad { cell } | LoopGrad { cell, .. } => {
                let (gates, relu) = fused(cell);
                vec![("GATES", gates as f64), ("RELU", relu as u8 as f64)]
            }
            ProjForward | ProjGrad => vec![("GATES", 4.0)],
            RecurrentGrad { cell, vec4, wide } => vec![("GATES", fused(cell).0 as f64), ("VEC4", vec4 as u8 as f64), ("WIDE", wide as u8 as f64)],
            GemmNarrow => vec![("ADJACENT", 1.0)],
            _ => vec![],
        }
    }
}

/// The fused step kernels' `(GATES, RELU)` for `cell` ([`Mode::fused_step`]).
fn fused(cell: Mode) -> (u32, bool) {
    cell.fused_step().unwrap_or((0, false))
}

/// Whether shaders keep naga's runtime bounds checks: `WGPU_RNN_CHECKED=1` / `=0` decides;
/// otherwise debug builds keep them and release builds drop them (C1 forward on lavapipe:
/// 332 -> 218 ms when they were dropped).
pub fn runtime_checks() -> bool {
    match std::env::var("WGPU_RNN_CHECKED") {
        Ok(v) => v != "0",
        Err(_) => cfg!(debug_assertions),
    }
}

/// One shader module per family, built once per context.
pub(crate) struct Modules(Vec<(Family, wgpu::ShaderModule)>);

impl Modules {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        Modules(
            Family::all()
                .iter()
                .map(|&f| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(f.source().lines().next().unwrap_or("wgpu-rnn")),
                        source: wgpu::ShaderSource::Wgsl(f.source().into()),
                    };
                    let m = if runtime_checks() {
                        device.create_shader_module(desc)
                    } else {
                        // SAFETY: every index the kernels compute is bounded by sizes the plan
                        // validated against the bound buffers (Plan::check, MatMul::record);
                        // debug builds and WGPU_RNN_CHECKED=1 keep naga's bounds checks.
                        unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
                    };
                    (f, m)
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, f: Family) -> &wgpu::ShaderModule {
        &self.0.iter().find(|(g, _)| *g == f).expect("every family has a module").1
    }
}

/// Bind-group and pipeline layouts, written by hand, one per family.
pub(crate) struct Layouts(Vec<(Family, wgpu::BindGroupLayout, wgpu::PipelineLayout)>);

impl Layouts {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        Layouts(
            Family::all()
                .iter()
                .map(|&f| {
                    let mut entries = vec![wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: true,
                            min_binding_size: std::num::NonZeroU64::new(f.param_size()),
                        },
                        count: None,
                    }];
                    for (i, &rw) in f.storage_bindings().iter().enumerate() {
                        entries.push(wgpu::BindGroupLayoutEntry {
                            binding: i as u32 + 1,
                            visibility: wgpu::ShaderStages::COMPUTE,
                            ty: wgpu::BindingType::Buffer {
                                ty: wgpu::BufferBindingType::Storage { read_only: !rw },
                                has_dynamic_offset: false,
                                min_binding_size: None,
                            },
                            count: None,
                        });
                    }
                    let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(f.source().lines().next().unwrap_or("wgpu-rnn")),
                        entries: &entries,
                    });
                    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: None,
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                    (f, bgl, pl)
                })
                .collect(),
        )
    }

    pub(crate) fn bind_group_layout(&self, f: Family) -> &wgpu::BindGroupLayout {
        &self.0.iter().find(|(g, _, _)| *g == f).expect("every family has a layout").1
    }

    pub(crate) fn pipeline_layout(&self, f: Family) -> &wgpu::PipelineLayout {
        &self.0.iter().find(|(g, _, _)| *g == f).expect("every family has a layout").2
    }
}

/// "Absent" offset (no bias, no h0, ...), as in the shaders.
pub const NONE: u32 = u32::MAX;

/// `StepParams` in step_forward.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct StepParams {
    pub row_off: u32,
    pub rows: u32,
    pub hidden: u32,
    pub out_size: u32,
    pub out_ld: u32,
    pub out_col: u32,
    pub wt_hh: u32,
    pub b_hh: u32,
    pub wt_hr: u32,
    pub prev_off: u32,
    pub gates_off: u32,
    pub c_off: u32,
    pub aux_off: u32,
    pub hs_off: u32,
    pub training: u32,
    pub w4_off: u32,
    pub steps: u32,
    pub reverse: u32,
    pub off_tab: u32,
    pub bs_tab: u32,
    pub init_off: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// Sorted rows per workgroup and the most hidden units of the single-dispatch path
/// (`LOOP_ROWS`, `LOOP_UNITS` in step_forward.wgsl).
pub const LOOP_ROWS: usize = 4;
pub const LOOP_UNITS: usize = 256;

/// Rows of a block in the register-blocked step kernels (`RB` in the shaders).
pub const ROW_BLOCK: usize = 8;

/// `BackParams` in step_backward.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BackParams {
    pub row_off: u32,
    pub rows: u32,
    pub hidden: u32,
    pub out_size: u32,
    pub out_ld: u32,
    pub out_col: u32,
    pub w_hh: u32,
    pub w_hr: u32,
    pub prev_off: u32,
    pub n_rows: u32,
    pub gates_off: u32,
    pub c_off: u32,
    pub aux_off: u32,
    pub hprev_off: u32,
    pub cprev_off: u32,
    pub dh_off: u32,
    pub dc_off: u32,
    pub dhtot_off: u32,
    pub dhpre_off: u32,
    pub dgx_off: u32,
    pub dgh_off: u32,
    pub proj: u32,
    pub wt_hh: u32,
    pub w_hh_flat: u32,
    pub steps: u32,
    pub reverse: u32,
    pub off_tab: u32,
    pub bs_tab: u32,
    pub init_off: u32,
    pub last_off: u32,
    pub _pad: u32,
}

impl GemmParams {
    /// The kernel for these strides: `gemm4` when B's rows are 4-aligned and contiguous.
    pub fn kernel(&self) -> Kernel {
        let b4 = self.b_cs == 1 && self.b_off.is_multiple_of(4) && self.b_rs.is_multiple_of(4) && self.n.is_multiple_of(4);
        let a4 = self.a_cs == 1 && self.a_off.is_multiple_of(4) && self.a_rs.is_multiple_of(4) && self.k.is_multiple_of(4);
        let a4t = self.a_rs == 1 && self.a_off.is_multiple_of(4) && self.a_cs.is_multiple_of(4) && self.m.is_multiple_of(8);
        if b4 && a4 {
            Kernel::Gemm44
        } else if b4 && a4t {
            Kernel::Gemm4T
        } else if b4 {
            Kernel::Gemm4
        } else if self.n <= 128 {
            Kernel::GemmNarrow
        } else {
            Kernel::Gemm
        }
    }

    /// Workgroups to dispatch (both kernels cover 256 columns x 8 rows per workgroup).
    pub fn groups(&self) -> [u32; 3] {
        [self.n.div_ceil(256), self.m.div_ceil(8), 1]
    }

    /// The product with k walked in runs of at most `run`: one dispatch each, the later ones
    /// adding to C (beta 1) and without the bias, so C is summed over k in a fixed order.
    pub fn runs(self, run: u32) -> Vec<GemmParams> {
        let mut v = Vec::new();
        let mut start = 0u32;
        loop {
            let k = run.min(self.k - start);
            v.push(GemmParams {
                k,
                a_off: self.a_off + start * self.a_cs,
                b_off: self.b_off + start * self.b_rs,
                beta: if start == 0 { self.beta } else { 1.0 },
                bias_off: if start == 0 { self.bias_off } else { NONE },
                ..self
            });
            start += k;
            if start >= self.k {
                return v;
            }
        }
    }
}

/// `CellParams` in shaders/cells/prelude.wgsl: one cell dispatch (offsets in f32 elements).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CellParams {
    /// Active rows of the step, its first packed row, the stage.
    pub rows: u32,
    pub o: u32,
    pub stage: u32,
    pub hidden: u32,
    pub proj: u32,
    /// Layer input width and its offset in the input buffer.
    pub inw: u32,
    pub x_off: u32,
    /// Input projection `[N, gx]` in the tape buffer.
    pub gx: u32,
    pub xp_off: u32,
    /// Products `[B, rw]` in the scratch buffer.
    pub rw: u32,
    pub r_off: u32,
    /// States `[B, sw]` in the state buffer.
    pub sw: u32,
    pub s_off: u32,
    /// Tape rows `[.., tw]` in the tape buffer, from row `trow` (the packed row in training).
    pub tw: u32,
    pub tape_off: u32,
    pub trow: u32,
    /// States before each packed row `[N, sw]` in the tape buffer.
    pub sprev_off: u32,
    /// Pointwise parameters in the weights buffer.
    pub ew: u32,
    pub e_off: u32,
    /// Output rows `[N, out_w]`, this direction's columns from `col`.
    pub out_w: u32,
    pub col: u32,
    /// Backward: tape gradients `[B, tw]` (scratch buffer); dxp `[N, gx]`, dr `[N, rw]`,
    /// de `[N, ew]` (backward workspace).
    pub dtape_off: u32,
    pub dxp_off: u32,
    pub dr_off: u32,
    pub de_off: u32,
    /// Regularisers (dropout, zoneout): the mask stream's seed and hit threshold, and the
    /// dropout scale or the zoneout probability.
    pub seed: u32,
    pub thresh: u32,
    pub f: f32,
}

/// `GemmParams` in gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub c_off: u32,
    pub ldc: u32,
    pub bias_off: u32,
    pub alpha: f32,
    pub beta: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// `UtilParams` in util.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct UtilParams {
    pub rows: u32,
    pub width: u32,
    pub src_off: u32,
    pub src_ld: u32,
    pub src_col: u32,
    pub state_off: u32,
    pub seq_off: u32,
    pub dst_off: u32,
    /// Row stride of dst (`pad_rows`).
    pub dst_ld: u32,
    /// `colsum`: 1 adds to dst (a later run of rows), 0 overwrites it.
    pub accumulate: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

impl UtilParams {
    /// `colsum` of `rows` rows of `width` columns (row stride `src_ld`) into `dst_off`, in runs
    /// of at most `run` rows, the later runs adding to the first's sums in row order.
    pub fn colsum_runs(rows: usize, width: usize, src_off: usize, src_ld: usize, dst_off: usize, run: usize) -> Vec<UtilParams> {
        (0..rows)
            .step_by(run)
            .map(|r0| UtilParams {
                rows: run.min(rows - r0) as u32,
                width: width as u32,
                src_off: (src_off + r0 * src_ld) as u32,
                src_ld: src_ld as u32,
                dst_off: dst_off as u32,
                accumulate: u32::from(r0 > 0),
                ..Default::default()
            })
            .collect()
    }
}

/// `TrainParams` in train.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct TrainParams {
    pub n: u32,
    pub width: u32,
    pub a_off: u32,
    pub b_off: u32,
    pub idx_off: u32,
    pub out_off: u32,
    pub out2_off: u32,
    pub state_off: u32,
    pub count: u32,
    /// A second count (embed_backward: the vocabulary).
    pub extra: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    pub f0: f32,
    pub f1: f32,
    pub f2: f32,
    pub f3: f32,
}

const _: () = assert!(std::mem::size_of::<BackParams>() as u32 <= MAX_PARAM_BYTES);
const _: () = assert!(std::mem::size_of::<TrainParams>() as u32 <= MAX_PARAM_BYTES);
