//! The random masks of the regularisers, drawn the same way on the CPU and in WGSL
//! (`shaders/shared/random.wgsl`): dropout between stacked layers (PyTorch's `dropout`
//! argument) and zoneout, and the training kit's dropout (`gpu::train::OpBuilder::dropout`).
//!
//! Element `i` of a mask stream with seed `s` at step counter `c` is *hit* (dropped, or for
//! zoneout: keeps its previous value) when `hash32(hash32(i ^ s) + c * 0x9e3779b9) <
//! threshold(p)`, `threshold(p) = p * 2^32`. The counter is an optimiser's step count on the
//! GPU (read from its state buffer, so a prepared plan draws a new mask each step without a
//! host write) and [`Draw::counter`] on the CPU.

use crate::error::{Error, Result};

/// A probability `0 <= p < 1`, valid by construction (compared and hashed by its bits).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Prob(u32);

impl std::fmt::Debug for Prob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Prob {
    /// Probability 0: the regulariser is off.
    pub const ZERO: Prob = Prob(0);

    /// `p` in `[0, 1)`, else [`Error::InvalidConfig`] (NaN included).
    pub fn new(p: f32) -> Result<Prob> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidConfig(format!("probability {p} is outside [0, 1)")));
        }
        // -0.0 is 0.
        Ok(Prob((p + 0.0).to_bits()))
    }
    /// The probability.
    pub fn get(self) -> f32 {
        f32::from_bits(self.0)
    }
    /// Whether the probability is 0 (the regulariser is off).
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
    /// The hit threshold: an element is hit when its hash is below it.
    pub fn threshold(self) -> u32 {
        threshold(self.get())
    }
    /// Inverted dropout's scale for kept elements, `1 / (1 - p)`, in f64.
    pub fn scale(self) -> f64 {
        1.0 / (1.0 - self.get() as f64)
    }
}

/// Where the masks of a training pass come from: a seed fixed per model and a counter that
/// changes every step. The same draw gives the same masks on the CPU and the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Draw {
    /// Fixed per model (per plan on the GPU).
    pub seed: u32,
    /// The step counter (on the GPU, the f32 at element 0 of a caller's buffer).
    pub counter: u32,
}

/// A 32-bit integer hash (lowbias32).
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The hit threshold for probability `p` (`p * 2^32`, saturating).
pub fn threshold(p: f32) -> u32 {
    ((p as f64) * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// Whether element `index` of the stream `seed` is hit at `counter`.
pub fn hit(index: u32, seed: u32, counter: u32, threshold: u32) -> bool {
    hash32(hash32(index ^ seed).wrapping_add(counter.wrapping_mul(0x9e37_79b9))) < threshold
}

/// The seed of one of a model's streams (`tag`: which regulariser and where), so that the
/// dropout after each layer and the zoneout of each layer-direction draw independent masks.
pub fn stream(seed: u32, tag: u32) -> u32 {
    seed ^ hash32(tag.wrapping_mul(0x85eb_ca6b).wrapping_add(0x6a09_e667))
}

/// The stream of the dropout applied to layer `layer`'s output.
pub fn dropout_stream(seed: u32, layer: usize) -> u32 {
    stream(seed, layer as u32)
}

/// The stream of the zoneout of layer-direction `k` (`layer * D + direction`).
pub fn zoneout_stream(seed: u32, k: usize) -> u32 {
    stream(seed, 0x8000_0000 | k as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_checked() {
        assert!(Prob::new(1.0).is_err());
        assert!(Prob::new(-0.1).is_err());
        assert!(Prob::new(f32::NAN).is_err());
        assert_eq!(Prob::new(-0.0).unwrap(), Prob::ZERO);
        assert_eq!(Prob::new(0.25).unwrap().get(), 0.25);
    }

    #[test]
    fn hit_rate_follows_p() {
        let th = threshold(0.3);
        let hits = (0..100_000u32).filter(|&i| hit(i, stream(7, 1), 3, th)).count();
        assert!((hits as f64 / 1e5 - 0.3).abs() < 0.01, "{hits}");
        assert_eq!((0..1000u32).filter(|&i| hit(i, 7, 3, 0)).count(), 0);
    }
}
