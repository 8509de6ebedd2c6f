//! Rows moved by tables (engine API): a prepared list of [`RowMove`]s, each a block of rows
//! read from one of the caller's buffers and written to another, row `n` from source row
//! `pairs[n].0` to destination row `pairs[n].1`, recorded into the caller's encoder. What
//! changes layouts around a [`super::Plan`] without a readback: `crate::onnx` gathers ONNX's
//! padded tensors (time- or batch-major, sequences reversed) into the packed rows and
//! scatters the results back with it. Dispatches `shaders/rows.wgsl`.

use super::context::{Context, TrackedBuffer};
use super::kernels::{Kernel, RowsParams};
use super::record::{self, ParamBlocks, Recorder};
use crate::error::{Error, Result};
use std::sync::Arc;

/// One block of rows: from buffer `src` (an index into the buffers given at recording) to
/// buffer `dst`, `width` elements per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowMove {
    /// The source buffer's index.
    pub src: usize,
    /// The destination buffer's index.
    pub dst: usize,
    /// Elements per row.
    pub width: usize,
    /// The source's row stride and first column.
    pub src_ld: usize,
    /// The first column read.
    pub src_col: usize,
    /// The destination's row stride.
    pub dst_ld: usize,
    /// The first column written.
    pub dst_col: usize,
    /// `(source row, destination row)` per row moved.
    pub pairs: Vec<(u32, u32)>,
}

impl RowMove {
    /// Elements of buffer `buf` this move touches (the end of its last row, 0 if not; `None`
    /// when that overflows).
    fn extent(&self, buf: usize) -> Option<usize> {
        let end = |last: usize, ld: usize, col: usize| last.checked_mul(ld)?.checked_add(col)?.checked_add(self.width);
        let mut e = 0;
        if buf == self.src {
            e = e.max(end(self.pairs.iter().map(|p| p.0 as usize).max().unwrap_or(0), self.src_ld, self.src_col)?);
        }
        if buf == self.dst {
            e = e.max(end(self.pairs.iter().map(|p| p.1 as usize).max().unwrap_or(0), self.dst_ld, self.dst_col)?);
        }
        Some(e)
    }
}

/// Prepared [`RowMove`]s (f32 elements): tables and parameters uploaded, pipeline built.
pub struct RowMoves {
    ctx: Arc<Context>,
    moves: Vec<RowMove>,
    params: TrackedBuffer,
    tables: TrackedBuffer,
    offsets: Vec<u32>,
    pipeline: wgpu::ComputePipeline,
}

impl RowMoves {
    /// Prepares `moves` on `ctx`. Empty moves are dropped; `Limit` past 31-bit indexing.
    pub fn new(ctx: &Arc<Context>, moves: Vec<RowMove>) -> Result<Self> {
        let _serial = ctx.exclusive();
        let moves: Vec<RowMove> = moves.into_iter().filter(|m| m.width > 0 && !m.pairs.is_empty()).collect();
        let mut tab: Vec<u32> = Vec::new();
        let mut blocks = ParamBlocks::new(ctx);
        let mut offsets = Vec::new();
        for m in &moves {
            let big = [m.width.checked_mul(m.pairs.len()), m.extent(m.src), m.extent(m.dst), m.pairs.len().checked_mul(2).and_then(|p| p.checked_add(tab.len()))];
            if big.iter().any(|v| v.is_none_or(|v| v >= 1 << 31)) {
                return Err(Error::Limit("a row move past 31-bit indexing".into()));
            }
            let stab = tab.len() as u32;
            tab.extend(m.pairs.iter().map(|p| p.0));
            let dtab = tab.len() as u32;
            tab.extend(m.pairs.iter().map(|p| p.1));
            offsets.push(blocks.push(&RowsParams {
                rows: m.pairs.len() as u32,
                width: m.width as u32,
                src_ld: m.src_ld as u32,
                src_col: m.src_col as u32,
                stab,
                dst_ld: m.dst_ld as u32,
                dst_col: m.dst_col as u32,
                dtab,
                ..Default::default()
            }));
        }
        if tab.is_empty() {
            tab.push(0);
        }
        let params = blocks.upload(ctx, "row move parameters")?;
        let tables = ctx.buffer("row move tables", (tab.len() * 4) as u64, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST)?;
        super::readback::write(ctx, &tables, bytemuck::cast_slice(&tab))?;
        Ok(RowMoves { ctx: ctx.clone(), moves, params, tables, offsets, pipeline: ctx.pipeline(Kernel::MoveRows)? })
    }

    /// Elements buffer `i` must hold for the moves that touch it.
    pub fn needs(&self, i: usize) -> usize {
        // Every extent was checked below 2^31 when the moves were prepared.
        self.moves.iter().map(|m| m.extent(i).unwrap_or(usize::MAX)).max().unwrap_or(0)
    }

    /// Dispatches one recording issues.
    pub fn dispatches(&self) -> usize {
        self.moves.len()
    }

    /// Records the moves, in order, into `encoder` over `bufs` (each checked for its extent,
    /// `STORAGE`, alignment; a written buffer overlapping another of a move is refused).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, bufs: &[wgpu::BufferSlice<'_>]) -> Result<()> {
        for (i, b) in bufs.iter().enumerate() {
            let n = self.needs(i);
            if n > 0 {
                record::check_buffer(&self.ctx, &format!("row move buffer {i}"), *b, n)?;
            }
        }
        let mut groups = Vec::new();
        {
            let scope = super::context::ErrorScope::push(&self.ctx.device);
            let made: Result<Vec<wgpu::BindGroup>> = self
                .moves
                .iter()
                .map(|m| {
                    let (src, dst) = (*bufs.get(m.src).ok_or_else(|| missing(m.src))?, *bufs.get(m.dst).ok_or_else(|| missing(m.dst))?);
                    record::check_aliasing(&self.ctx, &[("row move source", Some(src), false), ("row move destination", Some(dst), true)])?;
                    record::bind_group(&self.ctx, Kernel::MoveRows, &self.params, &[src, self.tables.slice(..), dst])
                })
                .collect();
            scope.pop()?;
            groups.extend(made?);
        }
        let mut rec = Recorder::begin(encoder, "wgpu-rnn row moves", None);
        for ((m, bg), &off) in self.moves.iter().zip(&groups).zip(&self.offsets) {
            let wg = (m.width * m.pairs.len()).div_ceil(256) as u32;
            rec.dispatch(Kernel::MoveRows, &self.pipeline, bg, off, [wg.min(65535), wg.div_ceil(65535), 1]);
        }
        Ok(())
    }
}

fn missing(i: usize) -> Error {
    Error::InvalidConfig(format!("row moves name buffer {i}, which was not given"))
}
