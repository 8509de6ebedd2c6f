//! The shaders, their bind-group layouts (one per kernel family: the layout is the kernel's
//! signature), the kernel variants the pipeline cache is keyed by, and the parameter structs
//! shared with WGSL (a test checks their sizes against naga's).

use crate::cells::{Mode, Pointwise};
use crate::precision::Precision;
use bytemuck::{Pod, Zeroable};

/// WGSL sources, shared snippets joined in front at compile time. Every file is plain WGSL.
pub mod source {
    /// `shared/activations.wgsl`: the activation functions every cell kernel uses.
    pub const ACTIVATIONS: &str = include_str!("../../shaders/shared/activations.wgsl");
    /// `gemm.wgsl` after `shared/gemm_io.wgsl`: the strided matrix product with bias.
    pub const GEMM: &str = concat!(include_str!("../../shaders/shared/gemm_io.wgsl"), include_str!("../../shaders/gemm.wgsl"));
    /// `gemm_subgroup.wgsl` after `shared/gemm_io.wgsl`: `gemm.wgsl`'s kernels with A shared
    /// through subgroup broadcasts (devices with `SUBGROUP`, see `Context::subgroup_kernels`).
    pub const GEMM_SUBGROUP: &str = concat!(include_str!("../../shaders/shared/gemm_io.wgsl"), include_str!("../../shaders/gemm_subgroup.wgsl"));
    /// `util.wgsl`: row gathers between orders, transposes, column sums.
    pub const UTIL: &str = include_str!("../../shaders/util.wgsl");
    /// `rows.wgsl`: rows moved by tables (`gpu::RowMoves`).
    pub const ROWS: &str = include_str!("../../shaders/rows.wgsl");
    /// `cast.wgsl`: conversions between f32 and the storage precision (mixed-precision training).
    pub const CAST: &str = include_str!("../../shaders/cast.wgsl");
    /// `cells/stage_subgroup.wgsl`: `cell_stage_sg`, joined after a per-unit cell's module
    /// (which ends with `cells/stage.wgsl`) on devices that run subgroup kernels
    /// ([`super::Family::source_with`]).
    pub const STAGE_SUBGROUP: &str = include_str!("../../shaders/cells/stage_subgroup.wgsl");
    /// `train.wgsl` after `shared/random.wgsl`: the training kit (embedding, losses, optimisers, dropout).
    pub const TRAIN: &str = concat!(include_str!("../../shaders/shared/random.wgsl"), include_str!("../../shaders/train.wgsl"));
}

/// The most storage buffers any kernel binds (the cells' kernels: 8, WebGPU's default limit).
pub const MAX_STORAGE_BINDINGS: u32 = 8;

/// The most loops over a row's units a cell's `row_backward` (`shaders/cells/<cell>.wgsl`) has,
/// for the bound of the single-dispatch backward's loop iterations (`cell_loop_grad`; a test
/// counts every cell file's loops).
pub const ROW_BACKWARD_LOOPS: usize = 4;

/// The largest parameter block; blocks are laid out at a stride that rounds this up to the
/// device's uniform offset alignment.
pub const MAX_PARAM_BYTES: u32 = 208;

/// A kernel family: one WGSL module and one bind-group layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// The strided matrix product (`gemm.wgsl`, [`GemmParams`]).
    Gemm,
    /// The same products with A shared through subgroup broadcasts (`gemm_subgroup.wgsl`
    /// after `gemm.wgsl`, the same bindings and [`GemmParams`]): a module only a device with
    /// `SUBGROUP` compiles ([`Family::features`]).
    GemmSubgroup,
    /// Row movement and column sums (`util.wgsl`, [`UtilParams`]).
    Util,
    /// The training kit (`train.wgsl`, [`TrainParams`]).
    Train,
    /// Rows moved by tables (`rows.wgsl`, [`RowsParams`]; `gpu::RowMoves`).
    Rows,
    /// Conversions between f32 and the storage precision (`cast.wgsl`, [`CastParams`]).
    Cast,
    /// A cell's pointwise kernels (`shaders/cells/<cell>.wgsl` after `shaders/cells/prelude.wgsl`),
    /// run by the GPU driver generic over the cell (`gpu::generic`).
    Cell(Mode),
    /// The fused stage kernel of a cell with [`Mode::unit_step`] (`cell_stage` in
    /// `shaders/cells/stage.wgsl`): the cell's module, another layout (bindings 7 and 8 its
    /// read-only vec4 views instead of the backward's buffers, so that no kernel binds more
    /// than [`MAX_STORAGE_BINDINGS`]).
    Stage(Mode),
    /// The single-dispatch loop's backward of a cell with [`Mode::unit_step`]
    /// (`cell_loop_grad` in stage.wgsl): the cell's module, the prelude's layout up to @7 and
    /// the loop table read-only at @8.
    LoopGrad(Mode),
}

impl Family {
    /// The families that do not depend on a cell.
    pub const FIXED: [Family; 6] = [Family::Gemm, Family::GemmSubgroup, Family::Util, Family::Train, Family::Cast, Family::Rows];

    /// Every family: the fixed ones, one per registered cell, and the stage kernels' layouts.
    pub fn all() -> Vec<Family> {
        let mut v = Family::FIXED.to_vec();
        v.extend(Mode::REGISTRY.iter().map(|&m| Family::Cell(m)));
        v.extend(Mode::REGISTRY.iter().filter(|m| m.unit_step()).map(|&m| Family::Stage(m)));
        v.extend(Mode::REGISTRY.iter().filter(|m| m.loop_grad()).map(|&m| Family::LoopGrad(m)));
        v
    }

    /// The family whose WGSL module this family's kernels use (the stage kernels share their
    /// cell's).
    pub fn module_family(self) -> Family {
        match self {
            Family::Stage(m) | Family::LoopGrad(m) => Family::Cell(m),
            f => f,
        }
    }

    /// Whether the family's storage arrays hold the plan's precision (`alias S`, see
    /// [`Precision`]): every family the driver runs (the GEMMs, the row utilities, the
    /// cells) and the casts. The training kit is f32 only.
    pub fn stores_precision(self) -> bool {
        !matches!(self, Family::Train)
    }

    /// The family's WGSL as compiled for `precision`: [`Precision`]'s prefix (the element
    /// type `S`) in front of [`Family::source`] for the families that
    /// [`Family::stores_precision`], the source alone for the others (always f32).
    pub fn source_at(self, precision: Precision) -> String {
        if self.stores_precision() {
            format!("{}{}", precision.wgsl_prefix(), self.source())
        } else {
            self.source().to_string()
        }
    }

    /// [`Family::source_at`], and with `subgroups` (a device that runs subgroup kernels) a
    /// per-unit cell's module extended by [`source::STAGE_SUBGROUP`] (`cell_stage_sg`, for
    /// [`Kernel::CellStage`] with `subgroups`).
    pub fn source_with(self, precision: Precision, subgroups: bool) -> String {
        let s = self.source_at(precision);
        match self {
            Family::Cell(m) if subgroups && m.unit_step() => s + source::STAGE_SUBGROUP,
            _ => s,
        }
    }

    /// The family's WGSL source, shared snippets included (without the precision prefix:
    /// see [`Family::source_at`]).
    pub fn source(self) -> &'static str {
        match self {
            Family::Cell(m) | Family::Stage(m) | Family::LoopGrad(m) => m.wgsl(),
            Family::Gemm => source::GEMM,
            Family::GemmSubgroup => source::GEMM_SUBGROUP,
            Family::Util => source::UTIL,
            Family::Train => source::TRAIN,
            Family::Cast => source::CAST,
            Family::Rows => source::ROWS,
        }
    }

    /// The device features the family's module needs beyond what every kernel needs:
    /// `SUBGROUP` for [`Family::GemmSubgroup`]. A context builds such a module only when it
    /// first runs one of its kernels, which it chooses only where the device has them.
    pub fn features(self) -> wgpu::Features {
        match self {
            Family::GemmSubgroup => wgpu::Features::SUBGROUP,
            _ => wgpu::Features::empty(),
        }
    }

    /// Whether the family's kernels are the matrix products ([`GemmParams`]).
    pub fn is_gemm(self) -> bool {
        matches!(self, Family::Gemm | Family::GemmSubgroup)
    }

    /// Read-only (false) or read-write (true) for storage bindings 1.., after the uniform @0.
    pub fn storage_bindings(self) -> &'static [bool] {
        match self {
            // a, b, c (rw), bias, b as vec4, a as vec4
            Family::Gemm | Family::GemmSubgroup => &[false, false, true, false, false, false],
            // src, src as vec4, seq, dst (rw)
            Family::Util => &[false, false, false, true],
            // a, b, idx (u32), out (rw), out2 (rw), state (rw)
            Family::Train => &[false, false, false, true, true, true],
            // a32, a_s, d32 (rw), d_s (rw), optimiser state
            Family::Cast => &[false, false, true, true, false],
            // src, tables (u32), dst (rw)
            Family::Rows => &[false, false, true],
            // weights, layer input, tape (rw), states (rw), scratch (rw), output (rw),
            // backward workspace (rw), input gradient (rw): see shaders/cells/prelude.wgsl
            Family::Cell(_) => &[false, false, true, true, true, true, true, true],
            // the same up to the output, then the weights and the product's input as vec4s:
            // see shaders/cells/stage.wgsl
            Family::Stage(_) => &[false, false, true, true, true, true, false, false],
            // the prelude's up to the backward workspace, then the loop table
            Family::LoopGrad(_) => &[false, false, true, true, true, true, true, false],
        }
    }

    /// Size of the family's parameter struct.
    pub fn param_size(self) -> u64 {
        (match self {
            Family::Gemm | Family::GemmSubgroup => std::mem::size_of::<GemmParams>(),
            Family::Util => std::mem::size_of::<UtilParams>(),
            Family::Train => std::mem::size_of::<TrainParams>(),
            Family::Cast => std::mem::size_of::<CastParams>(),
            Family::Rows => std::mem::size_of::<RowsParams>(),
            Family::Cell(_) | Family::Stage(_) | Family::LoopGrad(_) => std::mem::size_of::<CellParams>(),
        }) as u64
    }
}

/// A kernel variant: everything that changes the compiled pipeline (entry point and
/// override constants). The pipeline cache is keyed by this alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The generic strided product (`gemm`), one column per invocation.
    Gemm,
    /// The generic product for n <= 128 (`gemm` with 4 adjacent columns per invocation).
    GemmNarrow,
    /// `gemm4`: B's rows read as vec4s (4-aligned, contiguous).
    Gemm4,
    /// `gemm44`: A's and B's rows read as vec4s.
    Gemm44,
    /// `gemm4t`: B's rows and A's columns (A transposed) read as vec4s.
    Gemm4T,
    /// `gemm44_sg`: `gemm44` over 16 rows an invocation, A shared by subgroup broadcasts.
    Gemm44Sg,
    /// `gemm_sg`: `gemm` likewise.
    GemmSg,
    /// `gemm_sg` with `ADJACENT` (as [`Kernel::GemmNarrow`]).
    GemmNarrowSg,
    /// `gemm4_sg`: `gemm4` likewise.
    Gemm4Sg,
    /// `gemm4t_sg`: `gemm4t` over 16 rows an invocation, A shared by subgroup broadcasts.
    Gemm4TSg,
    /// `gather_rows`: rows moved between orders and strides by a table (states between the
    /// caller's order and a cell plan's own).
    GatherRows,
    /// `transpose`: a `[rows, width]` block transposed (weights for the kernels).
    Transpose,
    /// `move_rows` (rows.wgsl): rows moved by tables.
    MoveRows,
    /// `colsum`: column sums in row order (bias gradients, no atomics).
    ColSum,
    /// `colsum4`: the same sums, 4 adjacent columns per invocation read as vec4s (offset,
    /// row stride and width multiples of 4).
    ColSum4,
    /// Training kit (shaders/train.wgsl), one variant per entry point.
    Train(TrainKernel),
    /// A cell's pointwise forward of one stage for the step's rows, a workgroup per row (the
    /// cells without [`Mode::unit_step`]).
    CellForward(Mode),
    /// The fused stage kernel (shaders/cells/stage.wgsl): a stage's product and pointwise
    /// forward in one dispatch (the cells with [`Mode::unit_step`]).
    CellStage {
        /// The cell.
        cell: Mode,
        /// The product's `R` and k align to vec4s: its rows are read as vec4s.
        vec4: bool,
        /// The product's gates per unit ([`crate::cells::Product::gates`]; 1 without one).
        gates: u8,
        /// The direction's activation slots (`None`: the cell's own), as override constants.
        pointwise: Option<Pointwise>,
        /// `cell_stage_sg` (shaders/cells/stage_subgroup.wgsl): the product's input rows
        /// shared through subgroup broadcasts, 16 rows a workgroup (the same bits).
        subgroups: bool,
    },
    /// The fused stage kernel's input: a stage's product input rows copied to a buffer it
    /// reads as vec4s, and in training the step's states to the tape (stage.wgsl).
    CellStageInput(Mode),
    /// The single-dispatch loop of a cell with [`Mode::unit_step`] (`cell_loop` in
    /// stage.wgsl): a run of steps of a layer-direction, every stage, in one dispatch,
    /// specialised for the layer's stages.
    CellLoop {
        /// The cell.
        cell: Mode,
        /// The layer's stages.
        shape: LoopShape,
        /// The direction's activation slots (`None`: the cell's own), as override constants.
        pointwise: Option<Pointwise>,
    },
    /// The single-dispatch loop's backward (`cell_loop_grad` in loop_grad.wgsl).
    CellLoopGrad {
        /// The cell.
        cell: Mode,
        /// The layer's stages.
        shape: LoopShape,
    },
    /// A cell's pointwise backward of one stage.
    CellBackward(Mode),
    /// Zoneout of h after a step's last stage (prelude).
    CellZoneout(Mode),
    /// Zoneout's backward before a step's last stage: the gradients of the units that kept
    /// their previous value set aside (prelude).
    CellZoneoutStash(Mode),
    /// Zoneout's backward after a step: those gradients added to the previous h's (prelude).
    CellZoneoutAdd(Mode),
    /// Inverted dropout of a layer's output or of its gradient (prelude).
    CellDropout(Mode),
    /// A cell's derived product matrix from its parameters (`cell_derive`, see
    /// [`crate::cells::Derived`]): the weights bound read_write at @7.
    CellDerive(Mode),
    /// The derived matrix made unitary to rounding and written to the weights
    /// (`cell_derive_polish`).
    CellDerivePolish(Mode),
    /// The derived matrix's backward: per column, the partial gradients of the parameters it
    /// is made of (`cell_derive_grad`).
    CellDeriveGrad(Mode),
    /// Those partials summed into the parameters' gradients, and the matrix's own gradient
    /// cleared (`cell_derive_sum`).
    CellDeriveSum(Mode),
    /// `to_stored`: f32 to the storage precision (cast.wgsl).
    CastToStored,
    /// `to_f32`: the storage precision to f32 (cast.wgsl).
    CastToF32,
}

/// The training kit's entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrainKernel {
    /// `embed_forward`: embedding rows looked up by token id.
    EmbedForward,
    /// `embed_backward`: the embedding gradient summed per id in row order (no atomics).
    EmbedBackward,
    /// `fill`: `out[i] = f0`.
    Fill,
    /// `blocks_to_rows`: `count` blocks `[n, width]` side by side as rows `[n, count * width]`.
    BlocksToRows,
    /// `rows_to_blocks`: the inverse of `blocks_to_rows`.
    RowsToBlocks,
    /// `bce_logits`: binary cross-entropy with logits, its gradient and metrics.
    BceLogits,
    /// `mse`: mean squared error and its gradient.
    Mse,
    /// `softmax_ce`: softmax cross-entropy per row, its gradient, loss and hit.
    SoftmaxCe,
    /// `row_metrics`: `softmax_ce`'s per-row losses and hits added to the metric block.
    RowMetrics,
    /// `sumsq`: the sum of squares of a parameter group (for the global gradient norm).
    SumSq,
    /// `opt_begin`: starts an optimiser step (norm, clipping scale, step count, bias corrections).
    OptBegin,
    /// `adam`: PyTorch's Adam on one parameter group.
    Adam,
    /// `sgd`: SGD with momentum, PyTorch's form.
    Sgd,
    /// `dropout`: inverted dropout (also its backward, on the gradient).
    Dropout,
}

impl TrainKernel {
    /// The entry point's name in `train.wgsl`.
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
    /// The family whose module and bind-group layout the kernel uses.
    pub fn family(self) -> Family {
        use Kernel::*;
        match self {
            Gemm | GemmNarrow | Gemm4 | Gemm44 | Gemm4T => Family::Gemm,
            Gemm44Sg | Gemm4TSg | GemmSg | GemmNarrowSg | Gemm4Sg => Family::GemmSubgroup,
            GatherRows | Transpose | ColSum | ColSum4 => Family::Util,
            MoveRows => Family::Rows,
            Train(_) => Family::Train,
            CastToStored | CastToF32 => Family::Cast,
            CellStage { cell: m, .. } | CellLoop { cell: m, .. } => Family::Stage(m),
            CellLoopGrad { cell: m, .. } => Family::LoopGrad(m),
            CellForward(m) | CellStageInput(m) | CellBackward(m) | CellZoneout(m) | CellZoneoutStash(m) | CellZoneoutAdd(m) | CellDropout(m) | CellDerive(m) | CellDerivePolish(m) | CellDeriveGrad(m) | CellDeriveSum(m) => Family::Cell(m),
        }
    }

    /// The kernel's subgroup twin (the same bits, the shared operand loaded once a lane and
    /// broadcast; see `super::Context::subgroup_kernels`), if it has one.
    pub fn subgroup_twin(self) -> Option<Kernel> {
        use Kernel::*;
        match self {
            Gemm => Some(GemmSg),
            GemmNarrow => Some(GemmNarrowSg),
            Gemm4 => Some(Gemm4Sg),
            Gemm44 => Some(Gemm44Sg),
            Gemm4T => Some(Gemm4TSg),
            CellStage { cell, vec4, gates, pointwise, subgroups: false } => Some(CellStage { cell, vec4, gates, pointwise, subgroups: true }),
            _ => None,
        }
    }

    /// The entry point's name in the family's WGSL.
    pub fn entry(self) -> &'static str {
        use Kernel::*;
        match self {
            Gemm => "gemm",
            GemmNarrow => "gemm",
            Gemm4 => "gemm4",
            Gemm44 => "gemm44",
            Gemm4T => "gemm4t",
            Gemm44Sg => "gemm44_sg",
            GemmSg | GemmNarrowSg => "gemm_sg",
            Gemm4Sg => "gemm4_sg",
            Gemm4TSg => "gemm4t_sg",
            GatherRows => "gather_rows",
            MoveRows => "move_rows",
            Transpose => "transpose",
            ColSum => "colsum",
            ColSum4 => "colsum4",
            Train(k) => k.entry(),
            CellForward(_) => "cell_forward",
            CellStage { subgroups: false, .. } => "cell_stage",
            CellStage { subgroups: true, .. } => "cell_stage_sg",
            CellStageInput(_) => "stage_input",
            CellLoop { .. } => "cell_loop",
            CellLoopGrad { .. } => "cell_loop_grad",
            CellBackward(_) => "cell_backward",
            CellZoneout(_) => "zoneout",
            CellZoneoutStash(_) => "zoneout_stash",
            CellZoneoutAdd(_) => "zoneout_add",
            CellDropout(_) => "dropout_rows",
            CellDerive(_) => "cell_derive",
            CellDerivePolish(_) => "cell_derive_polish",
            CellDeriveGrad(_) => "cell_derive_grad",
            CellDeriveSum(_) => "cell_derive_sum",
            CastToStored => "to_stored",
            CastToF32 => "to_f32",
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

    /// Pipeline-overridable constants.
    pub fn constants(self) -> Vec<(&'static str, f64)> {
        use Kernel::*;
        match self {
            GemmNarrow | GemmNarrowSg => vec![("ADJACENT", 1.0)],
            CellStage { vec4, gates, pointwise, .. } => {
                let mut v = vec![("VEC4", vec4 as u8 as f64), ("GATES", gates as f64)];
                v.extend(pointwise.map(|p| p.constants()).unwrap_or_default());
                v
            }
            CellLoop { shape, pointwise, .. } => {
                let mut v = shape.constants();
                v.extend(pointwise.map(|p| p.constants()).unwrap_or_default());
                v
            }
            CellLoopGrad { shape, .. } => shape.constants(),
            _ => vec![],
        }
    }
}

/// Most stages a layer may have for the cell loops ([`LoopShape`]).
pub const LOOP_STAGES: usize = 2;

/// What a cell loop kernel (`cell_loop`, `cell_loop_grad`) is specialised for: a layer's
/// stages, as pipeline-overridable constants, so the compiler drops what a layer does not
/// have (on lavapipe a per-step read of the stages' descriptors from a buffer cost as much
/// as a small step's work). The products' sizes and offsets come in the parameters
/// ([`CellParams`]: stage 0's in `pg..pa_state`, stage 1's in `q_*`). Stage 1's product,
/// if any, reads the tape ([`crate::cells::Layout::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoopShape {
    /// Gates per unit of stage 0's and stage 1's products (0: none).
    gates: [u8; LOOP_STAGES],
    /// Stages: 1 or 2.
    stages: u8,
    /// Whether stage 0's product reads a state (else the tape).
    state: bool,
    /// Training (the forward saves the states to the tape; tape rows are packed rows).
    training: bool,
    /// The layer's units are at most [`LOOP_WG`]: every unit loop takes one pass
    /// (`ONE_PASS_UNITS` in shaders/cells/prelude.wgsl).
    one_pass_units: bool,
    /// Every product's rows and k are at most [`LOOP_WG`] (`ONE_PASS_PRODUCTS`).
    one_pass_products: bool,
}

/// Invocations of a cell loop kernel's workgroup (`WG` in shaders/cells/prelude.wgsl).
pub const LOOP_WG: usize = 64;

impl LoopShape {
    /// The shape of a layer with `layout` and `units` (the invocations per row its unit
    /// loops cover: at least `H`), or `None` when it has more than [`LOOP_STAGES`] stages.
    pub fn of(layout: &crate::cells::Layout, training: bool, units: usize) -> Option<Self> {
        let n = layout.stages.len();
        if n == 0 || n > LOOP_STAGES {
            return None;
        }
        let mut gates = [0u8; LOOP_STAGES];
        for (g, st) in gates.iter_mut().zip(&layout.stages) {
            *g = st.as_ref().map_or(0, |p| p.gates as u8);
        }
        let state = matches!(layout.stages[0].as_ref().map(|p| p.src), Some(crate::cells::Src::State(_)));
        let one_pass_units = units <= LOOP_WG;
        let one_pass_products = layout.stages.iter().flatten().all(|p| p.rows <= LOOP_WG && p.k <= LOOP_WG);
        Some(LoopShape { gates, stages: n as u8, state, training, one_pass_units, one_pass_products })
    }

    /// Its override constants.
    fn constants(self) -> Vec<(&'static str, f64)> {
        vec![
            ("LOOP_STAGES", self.stages as f64),
            ("LOOP_G0", self.gates[0] as f64),
            ("LOOP_G1", self.gates[1] as f64),
            ("LOOP_S0", self.state as u8 as f64),
            ("LOOP_TRAIN", self.training as u8 as f64),
            ("ONE_PASS_UNITS", self.one_pass_units as u8 as f64),
            ("ONE_PASS_PRODUCTS", self.one_pass_products as u8 as f64),
        ]
    }
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

/// One shader module per family and precision: the f32 modules of the families that need no
/// device feature built with the context, the others (f16, and [`Family::features`]' families)
/// when first asked for (the caller checked the device has what they need).
pub(crate) struct Modules {
    f32: Vec<(Family, wgpu::ShaderModule)>,
    lazy: std::sync::Mutex<Vec<(Family, Precision, wgpu::ShaderModule)>>,
    /// Every storage binding read-write ([`super::Context::with_shared_buffers`]).
    shared: bool,
    /// The device runs subgroup kernels: the per-unit cells' modules have `cell_stage_sg`
    /// ([`super::Family::source_with`]).
    subgroups: bool,
}

/// `source` with every storage binding read-write (a context with
/// [`super::Context::with_shared_buffers`]), or as it is.
fn bindings_as(source: String, shared: bool) -> String {
    if shared {
        source.replace("var<storage, read>", "var<storage, read_write>")
    } else {
        source
    }
}

fn create_module(device: &wgpu::Device, f: Family, precision: Precision, shared: bool, subgroups: bool) -> wgpu::ShaderModule {
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(f.source().lines().next().unwrap_or("wgpu-rnn")),
        source: wgpu::ShaderSource::Wgsl(bindings_as(f.source_with(precision, subgroups), shared).into()),
    };
    if runtime_checks() {
        device.create_shader_module(desc)
    } else {
        // SAFETY: every index the kernels compute is bounded by sizes the plan
        // validated against the bound buffers (Plan::check, MatMul::record);
        // debug builds and WGPU_RNN_CHECKED=1 keep naga's bounds checks.
        unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
    }
}

impl Modules {
    /// The modules of a device; `subgroups`: it runs subgroup kernels (see
    /// [`super::Context::subgroup_kernels`]).
    pub(crate) fn new(device: &wgpu::Device, shared: bool, subgroups: bool) -> Self {
        Modules {
            f32: Family::all()
                .iter()
                .filter(|f| f.module_family() == **f && f.features().is_empty())
                .map(|&f| (f, create_module(device, f, Precision::F32, shared, subgroups)))
                .collect(),
            lazy: std::sync::Mutex::new(Vec::new()),
            shared,
            subgroups,
        }
    }

    /// Whether every storage binding is read-write ([`super::Context::with_shared_buffers`]).
    pub(crate) fn shared(&self) -> bool {
        self.shared
    }

    /// The module of family `f` storing in `precision` (only the families that
    /// [`Family::stores_precision`] have f16 modules; the caller checked `SHADER_F16`, and
    /// the family's [`Family::features`]).
    pub(crate) fn get(&self, device: &wgpu::Device, f: Family, precision: Precision) -> wgpu::ShaderModule {
        let precision = if f.stores_precision() { precision } else { Precision::F32 };
        let f = f.module_family();
        if precision == Precision::F32 {
            if let Some((_, m)) = self.f32.iter().find(|(g, _)| *g == f) {
                return m.clone();
            }
        }
        let mut v = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, m)) = v.iter().find(|(g, p, _)| *g == f && *p == precision) {
            return m.clone();
        }
        let m = create_module(device, f, precision, self.shared, self.subgroups);
        v.push((f, precision, m.clone()));
        m
    }
}

/// Bind-group and pipeline layouts, written by hand, one per family.
pub(crate) struct Layouts(Vec<(Family, wgpu::BindGroupLayout, wgpu::PipelineLayout)>);

impl Layouts {
    /// The layouts; with `shared` every storage binding read-write
    /// ([`super::Context::with_shared_buffers`]).
    pub(crate) fn new(device: &wgpu::Device, shared: bool) -> Self {
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
                                ty: wgpu::BufferBindingType::Storage { read_only: !(rw || shared) },
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

/// Bytes of B one run of a weight-gradient GEMM streams ([`GemmParams::row_run`]): small
/// enough to stay in a CPU cache while every workgroup reads it.
pub const GEMM_CHUNK_BYTES: usize = 1 << 20;

impl GemmParams {
    /// The kernel for these strides: `gemm4` when B's rows are 4-aligned and contiguous;
    /// with `subgroups` (the context's [`super::Context::subgroup_kernels`]) its subgroup
    /// twin, which gives the same bits.
    pub fn kernel(&self, subgroups: bool) -> Kernel {
        let b4 = self.b_cs == 1 && self.b_off.is_multiple_of(4) && self.b_rs.is_multiple_of(4) && self.n.is_multiple_of(4);
        let a4 = self.a_cs == 1 && self.a_off.is_multiple_of(4) && self.a_rs.is_multiple_of(4) && self.k.is_multiple_of(4);
        let a4t = self.a_rs == 1 && self.a_off.is_multiple_of(4) && self.a_cs.is_multiple_of(4) && self.m.is_multiple_of(8);
        let plain = if b4 && a4 {
            Kernel::Gemm44
        } else if b4 && a4t {
            Kernel::Gemm4T
        } else if b4 {
            Kernel::Gemm4
        } else if self.n <= 128 {
            Kernel::GemmNarrow
        } else {
            Kernel::Gemm
        };
        match plain.subgroup_twin() {
            Some(twin) if subgroups => twin,
            _ => plain,
        }
    }

    /// Workgroups to dispatch for `kernel` (one of [`GemmParams::kernel`]'s): 256 columns x 8
    /// rows a workgroup, 16 rows for the subgroup kernels.
    pub fn groups(&self, kernel: Kernel) -> [u32; 3] {
        let rows = if kernel.family() == Family::GemmSubgroup { 16 } else { 8 };
        [self.n.div_ceil(256), self.m.div_ceil(rows), 1]
    }

    /// The run of k for a weight-gradient GEMM (k = all rows) with `elem_bytes` per stored
    /// element: one pass streams the whole of B through every workgroup, which falls out of
    /// cache once B passes a few MiB, so k is cut into runs whose slice of B
    /// ([`GEMM_CHUNK_BYTES`]) stays cached. Measured on lavapipe: dW_hh (512 x 128, k 16384)
    /// went from 18x the k = 2048 time to 8x; LSTM T 25 B 64 H 512's two weight gradients on
    /// the cell driver from 647 to about 490 ms.
    pub fn row_run(&self, elem_bytes: usize) -> u32 {
        (GEMM_CHUNK_BYTES / (elem_bytes * self.n as usize).max(1)).clamp(256, 4096) as u32 / 64 * 64
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
/// The default is zeros with no product bias (`pb`: [`NONE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CellParams {
    /// Active rows of the step.
    pub rows: u32,
    /// First packed row of the step.
    pub o: u32,
    /// Stage of the cell's layout the dispatch runs.
    pub stage: u32,
    /// `H`.
    pub hidden: u32,
    /// `P`, or 0 without projection.
    pub proj: u32,
    /// Layer input width.
    pub inw: u32,
    /// Offset of the layer input in the input buffer.
    pub x_off: u32,
    /// Width of the input projection `[N, gx]` in the tape buffer.
    pub gx: u32,
    /// Offset of the input projection.
    pub xp_off: u32,
    /// Width of the products `[B, rw]` in the scratch buffer.
    pub rw: u32,
    /// Offset of the products.
    pub r_off: u32,
    /// Width of the states `[B, sw]` in the state buffer.
    pub sw: u32,
    /// Offset of the states.
    pub s_off: u32,
    /// Width of the tape rows `[.., tw]` in the tape buffer.
    pub tw: u32,
    /// Offset of the tape rows.
    pub tape_off: u32,
    /// First tape row (the packed row in training).
    pub trow: u32,
    /// States before each packed row `[N, sw]` in the tape buffer.
    pub sprev_off: u32,
    /// Width of the pointwise parameters in the weights buffer.
    pub ew: u32,
    /// Offset of the pointwise parameters.
    pub e_off: u32,
    /// Width of the output rows `[N, out_w]`.
    pub out_w: u32,
    /// This direction's first output column.
    pub col: u32,
    /// Backward: offset of the tape gradients `[B, tw]` in the scratch buffer.
    pub dtape_off: u32,
    /// Backward: offset of `dxp [N, gx]` in the backward workspace.
    pub dxp_off: u32,
    /// Backward: offset of `dr [N, rw]` in the backward workspace.
    pub dr_off: u32,
    /// Backward: offset of `de` (`[B, ew]` or `[N, ew]`, `de_acc`) in the backward workspace.
    pub de_off: u32,
    /// Regularisers (dropout, zoneout): the mask stream's seed.
    pub seed: u32,
    /// The mask's hit threshold (probability times 2^32).
    pub thresh: u32,
    /// The dropout scale `1 / (1 - p)` or the zoneout probability `p`.
    pub f: f32,
    /// Stage kernel and loops: invocations per row along x (the units).
    pub units: u32,
    /// Stage kernel: the stage's product's gates per unit (0: no product).
    pub pg: u32,
    /// The product's rows.
    pub prows: u32,
    /// The product's k.
    pub pk: u32,
    /// Offset of its `R [prows, pk]` (row-major) in the weights.
    pub pw: u32,
    /// Offset of its bias in the weights, or [`NONE`].
    pub pb: u32,
    /// Its first column in the products `r`.
    pub pcol: u32,
    /// Offset of its input `v` (row `row` at `pa_off + row * pa_ld`) in the states
    /// (`pa_state` 1) or the tape buffer.
    pub pa_off: u32,
    /// Row stride of `v`.
    pub pa_ld: u32,
    /// 1: `v` is in the states buffer.
    pub pa_state: u32,
    /// 1: `stage_input` copies the step's states to the tape's states before each row
    /// (training and zoneout, stage 0).
    pub save: u32,
    /// Single-dispatch loop (`cell_loop`): the run's steps.
    pub steps: u32,
    /// The run's first step in the loop table (pairs of first packed row and active rows).
    pub ltab: u32,
    /// Single-dispatch loop: stage 1's product (stage 0's is in `pg..pa_state`; its gates
    /// and source are the kernel's [`LoopShape`]): rows, k, `R`, bias or [`NONE`], first
    /// column in `r`, input offset at tape row 0 and row stride.
    pub q_rows: u32,
    /// Its k.
    pub q_k: u32,
    /// Offset of its `R`.
    pub q_w: u32,
    /// Offset of its bias, or [`NONE`].
    pub q_b: u32,
    /// Its first column in `r`.
    pub q_col: u32,
    /// Offset of its input in the tape at tape row 0.
    pub q_off: u32,
    /// Row stride of its input.
    pub q_ld: u32,
    /// Backward: 1 when `de` holds one row per batch row, each step's terms added (f32
    /// storage); 0: one row per packed row (`[N, ew]`, f16 storage), summed after the loop.
    pub de_acc: u32,
}

impl Default for CellParams {
    fn default() -> Self {
        CellParams { pb: NONE, q_b: NONE, ..Zeroable::zeroed() }
    }
}

/// `GemmParams` in gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GemmParams {
    /// Rows of C.
    pub m: u32,
    /// Columns of C.
    pub n: u32,
    /// Inner dimension.
    pub k: u32,
    /// Offset of op(A); element `(i, k)` at `a_off + i*a_rs + k*a_cs`.
    pub a_off: u32,
    /// Row stride of op(A).
    pub a_rs: u32,
    /// Column stride of op(A).
    pub a_cs: u32,
    /// Offset of op(B); element `(k, j)` at `b_off + k*b_rs + j*b_cs`.
    pub b_off: u32,
    /// Row stride of op(B).
    pub b_rs: u32,
    /// Column stride of op(B).
    pub b_cs: u32,
    /// Offset of C; `C[i, j]` at `c_off + i*ldc + j`.
    pub c_off: u32,
    /// Row stride of C.
    pub ldc: u32,
    /// Offset of the bias added to each row (`bias[bias_off + j]`), or [`NONE`].
    pub bias_off: u32,
    /// Scale of the product: `C = alpha op(A) op(B) + beta C + bias`.
    pub alpha: f32,
    /// Scale of C's previous value; C is not read when 0 (NaN-safe).
    pub beta: f32,
    /// Padding to the WGSL struct's size.
    pub _pad0: u32,
    /// Padding.
    pub _pad1: u32,
}

/// `CastParams` in cast.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CastParams {
    /// Rows of the block.
    pub rows: u32,
    /// Columns of the block.
    pub width: u32,
    /// Offset in the source.
    pub src_off: u32,
    /// Row stride of the source.
    pub src_ld: u32,
    /// Offset in the target.
    pub dst_off: u32,
    /// Row stride of the target.
    pub dst_ld: u32,
    /// Where the loss scale is in the optimiser state, or [`NONE`] for a factor of 1.
    pub scale_off: u32,
    /// 1: divide by the loss scale instead of multiplying.
    pub invert: u32,
}

/// `UtilParams` in util.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct UtilParams {
    /// Rows of the block.
    pub rows: u32,
    /// Columns of the block.
    pub width: u32,
    /// Offset in the source.
    pub src_off: u32,
    /// Row stride of the source.
    pub src_ld: u32,
    /// First column in the source (`gather_rows`).
    pub src_col: u32,
    /// Offset of `gather_rows`' row table in the tables buffer.
    pub seq_off: u32,
    /// Offset in the destination.
    pub dst_off: u32,
    /// Row stride of dst (`gather_rows`).
    pub dst_ld: u32,
    /// `colsum`: 1 adds to dst (a later run of rows), 0 overwrites it.
    pub accumulate: u32,
    /// Padding to the WGSL struct's size.
    pub _pad0: u32,
    /// Padding.
    pub _pad1: u32,
    /// Padding.
    pub _pad2: u32,
}

/// `rows.wgsl`'s parameters (one block per dispatch of `move_rows`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct RowsParams {
    /// Rows moved.
    pub rows: u32,
    /// Elements per row.
    pub width: u32,
    /// Offset in the source.
    pub src_off: u32,
    /// Row stride of the source.
    pub src_ld: u32,
    /// First column read.
    pub src_col: u32,
    /// Offset of the source row table in the tables.
    pub stab: u32,
    /// Offset in the destination.
    pub dst_off: u32,
    /// Row stride of the destination.
    pub dst_ld: u32,
    /// First column written.
    pub dst_col: u32,
    /// Offset of the destination row table in the tables.
    pub dtab: u32,
    /// Padding to the WGSL struct's size.
    pub _pad0: u32,
    /// Padding.
    pub _pad1: u32,
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
    /// Elements or rows the entry point covers.
    pub n: u32,
    /// Row width (`dropout`: the drop threshold, probability times 2^32).
    pub width: u32,
    /// Offset of the main input `a`.
    pub a_off: u32,
    /// Offset of the second input `b` (targets).
    pub b_off: u32,
    /// Offset of the u32 data (token ids, sort tables, class targets; `dropout`: the seed).
    pub idx_off: u32,
    /// Offset of the main output `out`.
    pub out_off: u32,
    /// Offset of the second output `out2` (per-row losses, optimiser moments).
    pub out2_off: u32,
    /// Offset of the optimiser state or metric block in `state`.
    pub state_off: u32,
    /// A count (distinct ids, blocks, parameter groups; `dropout`: 1 reads the counter from `state`).
    pub count: u32,
    /// A second count (embed_backward: the vocabulary).
    pub extra: u32,
    /// Padding to the WGSL struct's size.
    pub _pad1: u32,
    /// Padding.
    pub _pad2: u32,
    /// First scalar argument (e.g. the fill value, loss scale, learning rate, clipping norm).
    pub f0: f32,
    /// Second scalar argument (e.g. beta1, momentum, dropout scale).
    pub f1: f32,
    /// Third scalar argument (e.g. beta2).
    pub f2: f32,
    /// Fourth scalar argument (e.g. Adam's eps).
    pub f3: f32,
}

const _: () = assert!(std::mem::size_of::<TrainParams>() as u32 <= MAX_PARAM_BYTES);
const _: () = assert!(std::mem::size_of::<CellParams>() as u32 <= MAX_PARAM_BYTES);
const _: () = assert!(std::mem::size_of::<GemmParams>() as u32 <= MAX_PARAM_BYTES);
const _: () = assert!(std::mem::size_of::<UtilParams>() as u32 <= MAX_PARAM_BYTES);
const _: () = assert!(std::mem::size_of::<CastParams>() as u32 <= MAX_PARAM_BYTES);
