//! Reuse of the CPU path's large per-call buffers (tape, gate gradients, packed weights).
//!
//! A training step allocates tens of MB of temporaries and frees them at the end. glibc hands
//! blocks that large back to the kernel (mmap/munmap, heap trimming), so the next call took
//! a page fault for every 4 KiB it touched: `perf stat` counted 166k faults in a C1 bench run
//! and its training median moved between 31 and 42 ms from run to run. Buffers handed back
//! here are kept (up to [`MAX_POOLED_BYTES`]) and zero-filled on reuse, in pages already
//! mapped. [`release`] frees them.

use std::any::Any;
use std::sync::Mutex;

/// Most bytes kept for reuse; a buffer that would go past it is freed instead.
pub const MAX_POOLED_BYTES: usize = 256 << 20;
/// Smaller buffers are left to the allocator (it keeps those mapped anyway).
pub const MIN_POOLED_BYTES: usize = 256 << 10;

struct Pool {
    bufs: Vec<(usize, Box<dyn Any + Send>)>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { bufs: Vec::new(), bytes: 0 });

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // The pool holds no invariant a panic could break: take it back after a poisoning.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A vector of `len` default values (zeros), reusing a kept buffer of the same type when
/// one fits without wasting more than half of it.
pub fn zeroed<T: Copy + Default + Send + 'static>(len: usize) -> Vec<T> {
    let bytes = len * std::mem::size_of::<T>();
    if bytes >= MIN_POOLED_BYTES {
        if let Some(v) = zeroed_from_pool(len) {
            return v;
        }
    }
    vec![T::default(); len]
}

/// A kept buffer of the same type resized to `len` zeros, when one fits without wasting more
/// than half of it.
fn zeroed_from_pool<T: Copy + Default + Send + 'static>(len: usize) -> Option<Vec<T>> {
    from_pool(len, true)
}

/// A kept buffer of the same type resized to `len`, when one fits without wasting more than
/// half of it: zeros when `zero`, else whatever values it held (zeros past its old length).
fn from_pool<T: Copy + Default + Send + 'static>(len: usize, zero: bool) -> Option<Vec<T>> {
    let bytes = len * std::mem::size_of::<T>();
    {
        let mut p = pool();
        let best = p
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, (size, b))| *size <= bytes.saturating_mul(2) && b.downcast_ref::<Vec<T>>().is_some_and(|v| v.capacity() >= len))
            .min_by_key(|(_, (size, _))| *size)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let (size, b) = p.bufs.swap_remove(i);
            p.bytes -= size;
            drop(p);
            let mut v = *b.downcast::<Vec<T>>().expect("type checked above");
            if zero || v.len() > len {
                v.truncate(if zero { 0 } else { len });
            }
            v.resize(len, T::default());
            return Some(v);
        }
    }
    None
}

/// As [`zeroed`], but a fresh allocation goes through a fallible reservation: one that
/// cannot be met is [`crate::Error::OutOfMemory`] (naming `what`), never an abort.
pub fn try_zeroed<T: Copy + Default + Send + 'static>(what: &str, len: usize) -> crate::Result<Vec<T>> {
    if len.checked_mul(std::mem::size_of::<T>()).is_some_and(|b| b >= MIN_POOLED_BYTES) {
        let v = zeroed_from_pool(len);
        if let Some(v) = v {
            return Ok(v);
        }
    }
    crate::tensor::try_filled(what, len, T::default())
}

/// As [`try_zeroed`], but a reused buffer keeps the values it held (a fresh one is zeros):
/// for buffers every element of which is written before it is read (the time loops' tape
/// and gradient rows, cleared a step at a time while they are in cache). Large buffers
/// cleared up front cost a pass over memory (C1's LSTM_LAYERNORM backward: 6% of its time).
pub fn try_reused<T: Copy + Default + Send + 'static>(what: &str, len: usize) -> crate::Result<Vec<T>> {
    if len.checked_mul(std::mem::size_of::<T>()).is_some_and(|b| b >= MIN_POOLED_BYTES) {
        if let Some(v) = from_pool(len, false) {
            return Ok(v);
        }
    }
    crate::tensor::try_filled(what, len, T::default())
}

/// Hands a buffer back for reuse (or frees it when small or when the pool is full).
pub fn recycle<T: Copy + Default + Send + 'static>(v: Vec<T>) {
    let size = v.capacity() * std::mem::size_of::<T>();
    if size < MIN_POOLED_BYTES {
        return;
    }
    let mut p = pool();
    if p.bytes + size <= MAX_POOLED_BYTES {
        p.bytes += size;
        p.bufs.push((size, Box::new(v)));
    }
}

/// Frees every kept buffer; returns how many bytes that gave back.
pub fn release() -> usize {
    let mut p = pool();
    let bytes = p.bytes;
    p.bufs.clear();
    p.bytes = 0;
    bytes
}

/// Bytes kept now.
pub fn pooled_bytes() -> usize {
    pool().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_buffers_come_back_zeroed_and_the_pool_stays_bounded() {
        let n = MIN_POOLED_BYTES / 4;
        let mut v = zeroed::<f32>(n);
        v.iter_mut().for_each(|x| *x = 7.0);
        recycle(v);
        let w = zeroed::<f32>(n - 10);
        assert_eq!(w.len(), n - 10);
        assert!(w.iter().all(|&x| x == 0.0));
        // A reused buffer keeps its values; what it grows by is zeros.
        let m = 4 * n;
        let mut v = Vec::with_capacity(m);
        v.resize(m - 10, 3.0f32);
        recycle(v);
        let r = try_reused::<f32>("test", m).unwrap();
        assert_eq!(r.len(), m);
        assert!(r[..m - 10].iter().all(|&x| x == 3.0) && r[m - 10..].iter().all(|&x| x == 0.0));
        recycle(r);
        let z = try_zeroed::<f32>("test", m).unwrap();
        assert!(z.iter().all(|&x| x == 0.0));
        // Small buffers are not kept; a buffer past the bound is freed.
        let before = pooled_bytes();
        recycle(vec![0f64; 8]);
        assert_eq!(pooled_bytes(), before);
        recycle(Vec::<u8>::with_capacity(MAX_POOLED_BYTES + 1));
        assert!(pooled_bytes() <= MAX_POOLED_BYTES);
    }
}
