//! Storage precision of the GPU driver and its CPU twin: `F32` (every buffer f32) or `F16` (weights, layer
//! inputs and outputs, states, tape and gradients stored as f16, every product and sum
//! accumulated in f32 in registers). One home for the conversions the host does (`half`),
//! the WGSL that makes one shader source serve both (`alias S`), and the rounding the CPU
//! twin applies where the GPU stores.

use crate::error::{Error, Result};

/// How the GPU driver stores values (see the module docs). Arithmetic is f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Every buffer f32 (the default).
    #[default]
    F32,
    /// Every buffer the plan reads or writes f16 (IEEE binary16), accumulation in f32. Needs
    /// the adapter's `SHADER_F16` on the GPU.
    F16,
}

impl Precision {
    /// Bytes of one stored element.
    pub const fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// The name used by the command line and reports (`f32`, `f16`).
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// Parses `f32` or `f16` (the command line's `--precision`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            _ => Err(Error::InvalidConfig(format!("precision {s:?}: expected f32 or f16"))),
        }
    }

    /// What a WGSL module that stores in this precision starts with: the element type `S`
    /// of its storage arrays (and `enable f16;` for f16).
    pub(crate) const fn wgsl_prefix(self) -> &'static str {
        match self {
            Precision::F32 => "alias S = f32;\n",
            Precision::F16 => "enable f16;\nalias S = f16;\n",
        }
    }

    /// `x` as stored: f32 unchanged, f16 rounded to nearest even (and back to f32).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// [`Error::NonFinite`] naming `what` if a finite value of `v` overflows this precision
    /// (f16: beyond 65,504, which would be stored as infinity).
    pub fn check_range(self, what: &str, v: &[f32]) -> Result<()> {
        if self == Precision::F16 {
            if let Some(x) = v.iter().find(|x| x.is_finite() && half::f16::from_f32(**x).is_infinite()) {
                return Err(Error::NonFinite(format!("{what}: {x} overflows f16 storage (largest 65504)")));
            }
        }
        Ok(())
    }

    /// The bytes of `v` stored in this precision (little-endian).
    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            Precision::F32 => bytemuck::cast_slice(v).to_vec(),
            Precision::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        }
    }

    /// Values stored in this precision, widened to f32 (a trailing partial element is ignored).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Precision::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Precision::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounds_to_nearest_even() {
        let v = [1.0f32, -2.5, 65504.0, 1.0 + 1.0 / 2048.0, 1e-8];
        let p = Precision::F16;
        let back = p.decode(&p.encode(&v));
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even gives 1.
        assert_eq!(back, vec![1.0, -2.5, 65504.0, 1.0, 0.0]);
        assert_eq!(Precision::F32.decode(&Precision::F32.encode(&v)), v.to_vec());
        assert_eq!(p.round(70000.0), f32::INFINITY);
        assert_eq!(Precision::parse("F16").unwrap(), p);
        assert!(Precision::parse("f8").is_err());
    }
}
