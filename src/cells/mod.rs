//! The recurrent cells: one module per cell, each a [`Cell`] description, and the registry
//! (`registry!` below) that names them.
//!
//! A cell is described by data and two pointwise functions:
//! - its **parameters** ([`ParamDef`]): PyTorch-style names and shapes, and where each lives in
//!   a layer-direction's [`Slot`]s (an input matrix `W_x`, the recurrent matrices, their
//!   biases, the projection, and the pointwise parameters);
//! - its **states** ([`StateDef`]), e.g. `h` and `c`, kept per row concatenated in that order;
//! - its **step** ([`Layout`]): one input projection `xp = W_x x + b_x` for all rows up front,
//!   then a list of stages, each an optional dense product `r_k = R_k v_k + b_k` (v_k a
//!   previous state or a value an earlier stage wrote to the tape) followed by the cell's
//!   pointwise function for stage k;
//! - [`Cell::forward`] / [`Cell::backward`]: the pointwise step of one row for one stage.
//!
//! The time-loop drivers (the CPU engine, `cpu::forward`) are generic over `C: Cell` and never
//! ask which cell they run. Adding a cell: one module here, one line in `registry!` (see ARCHITECTURE.md).

use crate::error::{Error, Result};
use crate::float::Float;
pub use activation::{Activation, Function, Pointwise, Slots, Standard};
use std::fmt;
use std::str::FromStr;

pub mod activation;
pub(crate) mod gru;
pub(crate) mod gru_reset_before;
pub(crate) mod indrnn;
pub(crate) mod jordan;
pub(crate) mod lstm;
pub(crate) mod lstm_cifg;
pub(crate) mod lstm_layernorm;
pub(crate) mod lstm_peephole;
pub(crate) mod mut1;
pub(crate) mod rnn;
pub(crate) mod scrn;
pub(crate) mod sru;
pub(crate) mod urnn;

/// The sizes a layer-direction's description depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// This layer's input width (I for layer 0, D * H_out above).
    pub input: usize,
    /// H.
    pub hidden: usize,
    /// P (LSTM projection), 0 for none.
    pub proj: usize,
    /// PyTorch's `bias` flag (the built-in cells only; the others always have their biases).
    pub bias: bool,
}

/// Where a parameter's elements live in a layer-direction (see [`crate::weights::DirParams`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `W_x [Gx, in]`: every matrix applied to the layer input, rows concatenated.
    WeightIh,
    /// The recurrent matrices of the stages, concatenated.
    WeightHh,
    /// `b_x [Gx]`, the input projection's bias.
    BiasIh,
    /// The stages' product biases, concatenated.
    BiasHh,
    /// LSTM's projection `W_hr [P, H]`.
    WeightHr,
    /// Parameters the pointwise functions read (peepholes, layer-norm gains, ...).
    Pointwise,
}

impl Slot {
    /// Every slot, in the order a layer-direction's parameters are stored.
    pub const ALL: [Slot; 6] = [Slot::WeightIh, Slot::WeightHh, Slot::BiasIh, Slot::BiasHh, Slot::WeightHr, Slot::Pointwise];
}

/// How a parameter is initialised by [`crate::Weights::init_uniform`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// PyTorch's `U(-1/sqrt(H), 1/sqrt(H))`.
    Uniform,
    /// All ones (layer-norm gains).
    Ones,
    /// All zeros (layer-norm shifts).
    Zeros,
    /// Uniform in `[lo, hi)` (the uRNN's phases and reflections).
    Range(f64, f64),
    /// Glorot's uniform `U(-sqrt(6 / (fan_in + fan_out)), ..)` over a `[fan_out, fan_in]` matrix.
    Glorot,
    /// A random permutation of `0..len` (a [`ParamDef::fixed`] index tensor).
    Permutation,
}

/// One named parameter tensor of a layer-direction.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDef {
    /// The name without `_l{k}` / `_reverse`, e.g. `weight_hh`.
    pub stem: &'static str,
    /// PyTorch's shape, row-major (e.g. `[G*H, H_out]`).
    pub shape: Vec<usize>,
    /// The slot the tensor lives in.
    pub slot: Slot,
    /// First element inside the slot.
    pub offset: usize,
    /// How [`crate::Weights::init_uniform`] fills it.
    pub init: Init,
    /// A fixed tensor of whole numbers (the uRNN's permutation): int32 in files, no gradient,
    /// never trained; part of [`Derived::fixed`].
    pub fixed: bool,
}

impl ParamDef {
    /// A parameter at `offset` elements into `slot`, initialised uniformly.
    pub fn new(stem: &'static str, shape: Vec<usize>, slot: Slot, offset: usize) -> Self {
        ParamDef { stem, shape, slot, offset, init: Init::Uniform, fixed: false }
    }
    /// The same parameter as a fixed tensor of whole numbers ([`ParamDef::fixed`]).
    pub fn fixed(mut self) -> Self {
        self.fixed = true;
        self
    }
    /// The same parameter with another initialisation.
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// Elements in the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One recurrent state of a cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDef {
    /// `h`, `c`, `s`, `y`: the golden files' `{s}0`, `{s}_n`, `grad_{s}0`, `grad_{s}_n`.
    pub name: &'static str,
    /// Columns of the state per row.
    pub width: usize,
}

/// What a stage's product multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// A state as it was before the step (index into [`Cell::states`]).
    State(usize),
    /// Values an earlier stage wrote to the row's tape from `offset` (the product's `k` of them).
    Tape {
        /// First tape column of the values.
        offset: usize,
    },
}

/// `r = R v + b`, with `R [rows, k]` stored row-major in `slot` at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    /// The slot holding `R`.
    pub slot: Slot,
    /// First element of `R` in the slot.
    pub offset: usize,
    /// Rows of `R`: the product's width.
    pub rows: usize,
    /// How the rows split into units: `gates` blocks of `rows / gates`, row `g * (rows /
    /// gates) + j` belonging to unit j (LSTM's i, f, g, o rows of unit j: 4). For cells with
    /// [`Cell::UNIT_STEP`], the stage's pointwise function of unit j reads only unit j's
    /// columns of this product: the fused stage kernel computes them in the same invocation.
    pub gates: usize,
    /// Columns of `R`: the width of `v`.
    pub k: usize,
    /// `(slot, offset)` of a `[rows]` bias.
    pub bias: Option<(Slot, usize)>,
    /// What `v` is: a previous state or tape values.
    pub src: Src,
}

/// Most gates a product's unit may have ([`Product::gates`]).
pub const MAX_GATES: usize = 4;

/// The shape of a cell's step for one layer-direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Gx: rows of `W_x` (slot `WeightIh`); `b_x` (slot `BiasIh`) when `input_bias`.
    pub xp: usize,
    /// Whether the input projection has the bias `b_x`.
    pub input_bias: bool,
    /// One entry per stage: its product, if any. Stage k's product lands at column
    /// `sum of earlier rows` of the row's product vector `r`.
    pub stages: Vec<Option<Product>>,
    /// Values a row keeps for backward (and the stages' product inputs).
    pub tape: usize,
    /// Length of the `Pointwise` slot.
    pub pointwise: usize,
    /// How a row's pointwise-parameter gradients (`BwdRow::de`) map to the parameters' (empty:
    /// `de` is `pointwise` wide, column j the gradient of parameter j). Otherwise each block
    /// adds the column sums of `de[de..de + len]` to parameters `param..param + len`, every
    /// parameter in exactly one block; several blocks may read the same columns (parameters
    /// whose gradients are equal, as LSTM_LAYERNORM's three gate biases), so the cell writes
    /// them once ([`Layout::de_width`]).
    pub de_blocks: Vec<GradBlock>,
    /// Whether the pointwise functions read the layer input itself (SRU's highway, MUT1's
    /// tanh(x)); their backward then adds to the input gradient directly.
    pub uses_input: bool,
    /// Output width per direction.
    pub out: usize,
}

/// A product matrix the cell computes from its pointwise parameters ([`Cell::derive`]), as
/// the uRNN's unitary W from phases and reflections: the `WeightHh` slot's first `len`
/// elements, which are no parameter (not in [`Cell::params`], files or gradients). The
/// engines compose it at the start of every forward and backward call (the GPU into the
/// caller's weights buffer, which therefore has room for it), and map the product's gradient
/// back with [`Cell::derive_backward`] (the GPU leaves zeros in that gradient region).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    /// Elements of the `WeightHh` slot, from 0.
    pub len: usize,
    /// Pointwise parameters whose gradients [`Cell::derive_backward`] gives.
    pub grads: std::ops::Range<usize>,
    /// Pointwise parameters without gradients (the [`ParamDef::fixed`] ones).
    pub fixed: std::ops::Range<usize>,
    /// Elements of the GPU plan's scratch its derive kernels use (the driver sizes the
    /// scratch for it).
    pub scratch: usize,
    /// Workgroups of `cell_derive`, `cell_derive_polish` and `cell_derive_grad` (the uRNN's:
    /// one per complex column).
    pub groups: usize,
}

/// A block of pointwise-parameter gradients ([`Layout::de_blocks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradBlock {
    /// First column in a row's `de`.
    pub de: usize,
    /// First parameter in the `Pointwise` slot.
    pub param: usize,
    /// Columns.
    pub len: usize,
}

impl Layout {
    /// Width of a row's pointwise-parameter gradients (`BwdRow::de`).
    pub fn de_width(&self) -> usize {
        if self.de_blocks.is_empty() {
            self.pointwise
        } else {
            self.de_blocks.iter().map(|b| b.de + b.len).max().unwrap_or(0)
        }
    }

    /// The blocks of [`Layout::de_blocks`], the identity when it is empty.
    pub fn grad_blocks(&self) -> Vec<GradBlock> {
        if self.de_blocks.is_empty() {
            if self.pointwise == 0 {
                return Vec::new();
            }
            return vec![GradBlock { de: 0, param: 0, len: self.pointwise }];
        }
        self.de_blocks.clone()
    }

    /// The drivers' rule: a product that reads a state is in stage 0 (later stages may have
    /// changed the state already, and the backward adds a state's product gradient as a
    /// gradient of the state before the step). Every registered cell keeps it (tested).
    pub fn check(&self, derived: Option<&Derived>) -> std::result::Result<(), String> {
        for (k, st) in self.stages.iter().enumerate() {
            let Some(p) = st else { continue };
            if let Src::State(_) = p.src {
                if k > 0 {
                    return Err(format!("stage {k}'s product reads a state; only stage 0's may"));
                }
            }
            // The fused stage kernel keeps a unit's gates in one vec4.
            if !(1..=MAX_GATES).contains(&p.gates) || p.rows % p.gates != 0 {
                return Err(format!("stage {k}'s product: {} rows in {} gates (1 to {MAX_GATES}, dividing the rows)", p.rows, p.gates));
            }
        }
        // Every pointwise parameter's gradient comes from exactly one block (or from the
        // derived matrix's, or it is fixed).
        let mut covered = vec![0u8; self.pointwise];
        for b in self.grad_blocks() {
            if b.len == 0 || b.param + b.len > self.pointwise {
                return Err(format!("gradient block {b:?} outside the {} pointwise parameters", self.pointwise));
            }
            covered[b.param..b.param + b.len].iter_mut().for_each(|c| *c += 1);
        }
        if let Some(d) = derived {
            for r in [d.grads.clone(), d.fixed.clone()] {
                if r.end > self.pointwise {
                    return Err(format!("derived matrix's range {r:?} outside the {} pointwise parameters", self.pointwise));
                }
                covered[r].iter_mut().for_each(|c| *c += 1);
            }
            let st = self.stages.first().copied().flatten();
            if !st.is_some_and(|p| p.slot == Slot::WeightHh && p.offset == 0 && p.rows * p.k == d.len) {
                return Err("a derived matrix must be stage 0's product, the whole WeightHh slot".into());
            }
        }
        if let Some(j) = covered.iter().position(|&c| c != 1) {
            return Err(format!("pointwise parameter {j}'s gradient comes from {} blocks, not one", covered[j]));
        }
        Ok(())
    }

    /// Multiply-adds of one row's products (every stage's `rows * k`; the input projection's
    /// `xp * in` comes on top).
    pub fn product_macs(&self) -> usize {
        self.stages.iter().flatten().map(|p| p.rows * p.k).sum()
    }

    /// Column of stage k's product in the row's product vector, and the vector's width.
    pub fn product_offsets(&self) -> (Vec<usize>, usize) {
        let mut v = Vec::with_capacity(self.stages.len());
        let mut at = 0;
        for s in &self.stages {
            v.push(at);
            at += s.map_or(0, |p| p.rows);
        }
        (v, at)
    }
}

/// One row's view for a stage's forward. Slices are exactly one row wide.
pub struct FwdRow<'a, T> {
    /// The layer input row `[in]`.
    pub x: &'a [T],
    /// `W_x x + b_x` `[Gx]`.
    pub xp: &'a [T],
    /// The products of the stages so far, each with its bias (see [`Layout::product_offsets`]).
    pub r: &'a [T],
    /// The pointwise parameters.
    pub e: &'a [T],
    /// The states, concatenated: the previous ones on entry to stage 0, the new ones after the
    /// last stage.
    pub s: &'a mut [T],
    /// The row's tape (`Layout::tape` values).
    pub tape: &'a mut [T],
    /// The output row `[out]`, written by the last stage.
    pub out: &'a mut [T],
}

/// One row's view for a stage's backward (stages run last to first).
pub struct BwdRow<'a, T> {
    /// The layer input row `[in]`.
    pub x: &'a [T],
    /// `W_x x + b_x` `[Gx]` for cells with [`Cell::BACKWARD_READS_XP`], else empty.
    pub xp: &'a [T],
    /// The pointwise parameters.
    pub e: &'a [T],
    /// The states before the step.
    pub s_prev: &'a [T],
    /// The row's tape as the forward left it (`Layout::tape` values).
    pub tape: &'a [T],
    /// Gradient of the output row.
    pub dout: &'a [T],
    /// On entry to the last stage: the gradient of the new states. After stage 0: the
    /// gradient of the previous states, except what flows through the products (the driver
    /// adds that).
    pub ds: &'a mut [T],
    /// Gradients of tape values; the driver adds `dr_k R_k` here for products that read the
    /// tape, before the stage that wrote those values runs. Only those regions are defined:
    /// the CPU zeroes the row at the start of its step, the GPU writes just the regions
    /// products read (a cell must not use the rest).
    pub dtape: &'a mut [T],
    /// Gradient of `xp` (overwritten by the cell's stages together; zero on entry).
    pub dxp: &'a mut [T],
    /// Gradient of the products `r`: a stage's columns must be final when the driver uses them,
    /// right after that stage's backward (a later stage may write an earlier stage's columns,
    /// as GRU_RESET_BEFORE's stage 1 writes z's). Stage 0's columns are not the cell's to
    /// write when [`Cell::DR_IS_DXP`]; empty when that is the only product.
    pub dr: &'a mut [T],
    /// The pointwise parameters' gradient: add this row's terms to it (never overwrite or read
    /// it), each element at most once a stage, as the GPU's `de_add`. With f32 and f64 it is
    /// the batch row's sum over the steps so far; with f16 storage a cleared row the driver
    /// rounds and adds to that sum.
    pub de: &'a mut [T],
    /// Direct input gradient, added to (cells with `uses_input`).
    pub dx: &'a mut [T],
}

/// A recurrent cell. All functions are pure: the drivers call them per layer-direction
/// (descriptions) and per row and stage (pointwise).
pub trait Cell: 'static {
    /// The registry's name, as in the golden files' `mode`.
    const NAME: &'static str;
    /// Whether `proj_size` > 0 is allowed (LSTM only).
    const PROJECTION: bool = false;
    /// Whether PyTorch's `bias=False` applies (the built-in cells); the others always have
    /// their biases.
    const OPTIONAL_BIAS: bool = false;
    /// Why f16 storage ([`crate::Precision::F16`]) is refused for this cell, if it is: a cell
    /// whose results move beyond the f16 tolerances when only its weights are rounded to f16
    /// cannot be run that way honestly (`RnnConfig::validate` refuses it).
    const F16_REFUSED: Option<&'static str> = None;
    /// Whether the pointwise backward reads `BwdRow::xp` (the CPU's training tape then keeps
    /// the input projection; otherwise `BwdRow::xp` is empty).
    const BACKWARD_READS_XP: bool = false;
    /// Whether stage 0's product gradient is the input projection's, column for column (the
    /// gates see `W_x x` and the product alike): the cell's stage 0 then writes `dxp` only and
    /// leaves stage 0's columns of `dr` alone. The CPU engine reads the product's gradient from
    /// `dxp` when stage 0's is the only product (`dr` is then empty), else copies it into `dr`
    /// after stage 0. The WGSL side is the cell's own.
    const DR_IS_DXP: bool = false;
    /// Whether `forward` (its stages together) writes every element of its tape row, and
    /// `backward` every element of its `dxp` row (assigned, not added to): the CPU engine then
    /// leaves those rows as its pool hands them out instead of clearing them at every step (C1
    /// LSTM training spent 3% of its time in those clears). Debug builds, the tests', fill them
    /// with NaN instead, so a cell that claims this and leaves an element the engine reads
    /// fails the golden cases.
    const WRITES_WHOLE_ROWS: bool = false;
    /// The cell's GPU kernels: `shaders/cells/prelude.wgsl`, the cell's file and, for cells
    /// with [`Cell::UNIT_STEP`], `shaders/cells/stage.wgsl` (else
    /// `shaders/cells/row_step.wgsl`); see `cell_wgsl!`.
    const WGSL: &'static str;
    /// Whether every stage's pointwise forward is per unit: the cell's WGSL defines
    /// `unit_forward(row, j)`, which reads and writes only unit j's columns of the states, of
    /// the stage's product ([`Product::gates`]) and of the tape, so the fused stage kernel
    /// (`cell_stage` in `shaders/cells/stage.wgsl`) computes the product and the update in one
    /// dispatch. Otherwise (`cell_wgsl!(rows ..)`: a pointwise step that reduces over the
    /// row, as layer norm does) the file defines the whole-row `row_forward(row, l)` and the
    /// entry point `cell_backward`, and each stage is a product GEMM and row_step.wgsl's
    /// `cell_forward` over `row_forward`.
    const UNIT_STEP: bool = true;
    /// Rules on sizes beyond positivity (e.g. input == hidden), as a message.
    fn check(_s: Sizes) -> std::result::Result<(), String> {
        Ok(())
    }
    /// The parameters in `state_dict` order.
    fn params(s: Sizes) -> Vec<ParamDef>;
    /// The recurrent states, in the order of the state row.
    fn states(s: Sizes) -> Vec<StateDef>;
    /// The step's shape: input projection, stages, tape and pointwise widths.
    fn layout(s: Sizes) -> Layout;
    /// The cell's activation slots ([`activation`]): its own function for each, in order
    /// (for the gated cells f for the gates, g for the candidate, h for the output). A config
    /// may set other functions for them ([`crate::RnnConfig::pointwise`]) only where a cell
    /// lists slots.
    const SLOTS: &'static [Function] = &[];
    /// The pointwise forward of `stage` for one row; the nonlinearities of [`Cell::SLOTS`]
    /// through `a` ([`Standard`]: the cell's own).
    fn forward<T: Float, A: Slots>(stage: usize, s: Sizes, row: FwdRow<'_, T>, a: A);
    /// The pointwise backward of `stage` for one row (called last stage to first).
    fn backward<T: Float>(stage: usize, s: Sizes, row: BwdRow<'_, T>);
    /// The product matrix the cell derives from its parameters, if any ([`Derived`]); the
    /// cell's WGSL then has the entry points `cell_derive` (the matrix, into the scratch or
    /// the weights), `cell_derive_polish` (a second pass that writes it to the weights),
    /// `cell_derive_grad` and `cell_derive_sum` (see `shaders/cells/urnn.wgsl`).
    fn derived(_s: Sizes) -> Option<Derived> {
        None
    }
    /// Rules on the parameters' values (the uRNN's permutation and reflections), checked
    /// with every [`crate::Weights::validate`]; `e` is the pointwise slot.
    fn check_params<T: Float>(_s: Sizes, _e: &[T]) -> std::result::Result<(), String> {
        Ok(())
    }
    /// The derived matrix ([`Cell::derived`]) from the pointwise parameters `e` into `w`
    /// (`Derived::len` elements), for parameters [`Cell::check_params`] accepts.
    fn derive<T: Float>(_s: Sizes, _e: &[T], _w: &mut [T]) {}
    /// Adds the gradients of the pointwise parameters in `Derived::grads` to `de` (the
    /// pointwise slot's gradients) from the derived matrix's gradient `dw`.
    fn derive_backward<T: Float>(_s: Sizes, _e: &[T], _dw: &[T], _de: &mut [T]) {}
    /// Constants the cell's GPU derive kernels read at binding @2, computed on the host (the
    /// uRNN's DFT twiddles, in f64: a device's sin and cos are not exact enough). The driver
    /// uploads them once per plan.
    fn derive_table(_s: Sizes) -> Vec<f32> {
        Vec::new()
    }
}

/// Column offsets of each state in the concatenated state row, and its width.
pub fn state_offsets(states: &[StateDef]) -> (Vec<usize>, usize) {
    let mut v = Vec::with_capacity(states.len());
    let mut at = 0;
    for s in states {
        v.push(at);
        at += s.width;
    }
    (v, at)
}

/// A cell's WGSL: the prelude (bindings, parameters, row accessors), then `$file` from
/// `shaders/cells/`.
/// `cell_wgsl!("x.wgsl")` for a cell with [`Cell::UNIT_STEP`] (the fused stage kernel and
/// the single-dispatch loops follow), `cell_wgsl!(input "x.wgsl")` for one that also reads the
/// layer input ([`Layout::uses_input`]: the loop's backward is left out, see
/// [`Mode::loop_grad`]), `cell_wgsl!(rows "x.wgsl")` for one without a per-unit step.
macro_rules! cell_wgsl {
    (rows $file:literal) => {
        concat!(
            include_str!("../../shaders/shared/activations.wgsl"),
            include_str!("../../shaders/shared/random.wgsl"),
            include_str!("../../shaders/cells/prelude.wgsl"),
            include_str!(concat!("../../shaders/cells/", $file)),
            include_str!("../../shaders/cells/row_step.wgsl")
        )
    };
    (input $file:literal) => {
        concat!(
            include_str!("../../shaders/shared/activations.wgsl"),
            include_str!("../../shaders/shared/random.wgsl"),
            include_str!("../../shaders/cells/prelude.wgsl"),
            include_str!(concat!("../../shaders/cells/", $file)),
            include_str!("../../shaders/cells/stage.wgsl")
        )
    };
    ($file:literal $(, $prefix:literal)?) => {
        concat!(
            include_str!("../../shaders/shared/activations.wgsl"),
            include_str!("../../shaders/shared/random.wgsl"),
            include_str!("../../shaders/cells/prelude.wgsl"),
            $($prefix,)?
            include_str!(concat!("../../shaders/cells/", $file)),
            include_str!("../../shaders/cells/stage.wgsl"),
            include_str!("../../shaders/cells/loop_grad.wgsl")
        )
    };
}
pub(crate) use cell_wgsl;

/// The logistic function's derivative from its value.
#[inline(always)]
pub(crate) fn dsigmoid<T: Float>(y: T) -> T {
    y * (T::one() - y)
}

/// tanh's derivative from its value.
#[inline(always)]
pub(crate) fn dtanh<T: Float>(y: T) -> T {
    T::one() - y * y
}

/// The registry: one line per cell, `Variant => module::Type, "doc"`. It defines [`Mode`]
/// (the cell id), its names, and [`with_cell!`], which runs generic code for a `Mode`.
macro_rules! registry {
    ($($variant:ident => $module:ident :: $ty:ident, $doc:literal;)*) => {
        /// The recurrent cell (PyTorch's `nn.RNNBase.mode` for the built-in four).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Mode {
            $(#[doc = $doc] $variant,)*
        }

        impl Mode {
            /// Every registered cell.
            pub const REGISTRY: &'static [Mode] = &[$(Mode::$variant,)*];

            /// The registry's name (`LSTM`, `LSTM_PEEPHOLE`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Mode::$variant => <$module::$ty as Cell>::NAME,)*
                }
            }

            /// The mode with this registry name, any case.
            pub fn from_name(s: &str) -> Option<Mode> {
                let u = s.trim().to_ascii_uppercase();
                $(if u == <$module::$ty as Cell>::NAME { return Some(Mode::$variant); })*
                None
            }
        }

        /// Runs `$body` with `$c` the cell type of `$mode`.
        macro_rules! with_cell {
            ($mode:expr, $c:ident => $body:expr) => {
                match $mode {
                    $($crate::cells::Mode::$variant => { type $c = $crate::cells::$module::$ty; $body })*
                }
            };
        }
    };
}

registry! {
    RnnTanh => rnn::Tanh, "Elman: `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`.";
    RnnRelu => rnn::Relu, "`h' = relu(W_ih x + b_ih + W_hh h + b_hh)`.";
    Lstm => lstm::Lstm, "Gates i, f, g, o; `c' = f*c + i*g`, `h' = o*tanh(c')` (then `W_hr` with projection).";
    Gru => gru::Gru, "Gates r, z, n; `n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`, `h' = (1-z)*n + z*h`.";
    LstmPeephole => lstm_peephole::LstmPeephole, "LSTM with peepholes from c to i, f and (from c') to o.";
    LstmCifg => lstm_cifg::LstmCifg, "LSTM with coupled input and forget gates: `c' = f c + (1-f) g`.";
    GruResetBefore => gru_reset_before::GruResetBefore, "GRU with the reset applied before the product: `n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)`.";
    LstmLayerNorm => lstm_layernorm::LstmLayerNorm, "Layer-normalised LSTM (as in haste).";
    IndRnn => indrnn::IndRnn, "IndRNN: `h' = relu(W_ih x + b_ih + u * h)`.";
    Sru => sru::Sru, "Simple recurrent unit (needs input size == hidden size).";
    Mut1 => mut1::Mut1, "MUT1 of Jozefowicz et al. 2015 (needs input size == hidden size).";
    Jordan => jordan::Jordan, "Jordan network: the output feeds back.";
    Scrn => scrn::Scrn, "Structurally constrained RNN (context state of size max(1, H/2)).";
    Urnn => urnn::Urnn, "Unitary evolution RNN (Arjovsky et al. 2016): N = H/2 complex units, unitary W from phases, reflections, DFTs and a fixed permutation; modReLU.";
}

pub(crate) use with_cell;

impl Mode {
    /// The four cells of PyTorch's `nn.RNN`, `nn.LSTM`, `nn.GRU` (those whose `bias` flag
    /// applies, [`Mode::optional_bias`]; a test keeps the two in step).
    pub const PYTORCH: [Mode; 4] = [Mode::RnnTanh, Mode::RnnRelu, Mode::Lstm, Mode::Gru];

    /// Rows of `W_x` per hidden unit (the gate count G of PyTorch's cells: `weight_ih` has
    /// `G * H` rows): the input projection's width at H = 1.
    pub fn gates(self) -> usize {
        self.layout(Sizes { input: 1, hidden: 1, proj: 0, bias: true }).xp.max(1)
    }

    /// Every registered cell's name, comma-separated (for messages).
    pub fn names() -> String {
        Mode::REGISTRY.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The cell's parameters in `state_dict` order ([`Cell::params`]).
    pub fn params(self, s: Sizes) -> Vec<ParamDef> {
        with_cell!(self, C => C::params(s))
    }
    /// The cell's states ([`Cell::states`]).
    pub fn states(self, s: Sizes) -> Vec<StateDef> {
        with_cell!(self, C => C::states(s))
    }
    /// The cell's step layout ([`Cell::layout`]).
    pub fn layout(self, s: Sizes) -> Layout {
        with_cell!(self, C => C::layout(s))
    }
    /// The cell's derived product matrix, if any ([`Cell::derived`]).
    pub fn derived(self, s: Sizes) -> Option<Derived> {
        with_cell!(self, C => C::derived(s))
    }
    /// The constants of the cell's derive kernels ([`Cell::derive_table`]).
    pub fn derive_table(self, s: Sizes) -> Vec<f32> {
        with_cell!(self, C => C::derive_table(s))
    }
    /// The drivers' rules on the cell's layout ([`Layout::check`]).
    pub fn check_layout(self, s: Sizes) -> std::result::Result<(), String> {
        with_cell!(self, C => C::layout(s).check(C::derived(s).as_ref()))
    }
    /// The cell's rules on parameter values ([`Cell::check_params`]); `e` is the pointwise slot.
    pub fn check_params<T: Float>(self, s: Sizes, e: &[T]) -> std::result::Result<(), String> {
        with_cell!(self, C => C::check_params(s, e))
    }
    /// The cell's size rules ([`Cell::check`]); `Err` holds the message.
    pub fn check(self, s: Sizes) -> std::result::Result<(), String> {
        with_cell!(self, C => C::check(s))
    }
    /// Whether `proj_size` > 0 is allowed ([`Cell::PROJECTION`]).
    pub fn projection(self) -> bool {
        with_cell!(self, C => C::PROJECTION)
    }
    /// The cell's WGSL (see [`Cell::WGSL`]).
    pub fn wgsl(self) -> &'static str {
        with_cell!(self, C => C::WGSL)
    }
    /// Whether PyTorch's `bias=False` applies ([`Cell::OPTIONAL_BIAS`]).
    pub fn optional_bias(self) -> bool {
        with_cell!(self, C => C::OPTIONAL_BIAS)
    }
    /// The cell's activation slots, its own functions ([`Cell::SLOTS`]).
    pub fn slots(self) -> &'static [Function] {
        with_cell!(self, C => C::SLOTS)
    }
    /// Why f16 storage is refused for this cell, if it is ([`Cell::F16_REFUSED`]).
    pub fn f16_refused(self) -> Option<&'static str> {
        with_cell!(self, C => C::F16_REFUSED)
    }
    /// Whether the fused stage kernel runs the cell ([`Cell::UNIT_STEP`]).
    pub fn unit_step(self) -> bool {
        with_cell!(self, C => C::UNIT_STEP)
    }
    /// Whether the single-dispatch loop's backward (`cell_loop_grad`) runs the cell: a cell
    /// with a per-unit step whose WGSL is joined with shaders/cells/loop_grad.wgsl, all but
    /// those that read the layer input (`cell_wgsl!(input ..)`: their backward adds to the
    /// input gradient, whose binding the loop's table takes).
    pub fn loop_grad(self) -> bool {
        self.unit_step() && self.wgsl().contains("fn cell_loop_grad(")
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;
    /// The registry names, and PyTorch's module names (`RNN` = tanh), any case.
    fn from_str(s: &str) -> Result<Mode> {
        if let Some(m) = Mode::from_name(s) {
            return Ok(m);
        }
        match s.trim().to_ascii_uppercase().as_str() {
            "RNN" | "TANH" => Ok(Mode::RnnTanh),
            "RELU" => Ok(Mode::RnnRelu),
            _ => Err(Error::UnknownMode(s.to_string())),
        }
    }
}
