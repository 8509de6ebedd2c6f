//! safetensors reading and writing: the one place that knows the container format.
//!
//! Float tensors of any dtype PyTorch saves (F64, F32, F16, BF16) are read into f64, so a
//! file keeps its precision whatever the compute type; integer tensors (I64, I32, I16, I8, U8)
//! into i64. Files are written as F32 (floats) and I32 (lengths), with string metadata.

use crate::error::{Error, Result};
use crate::tensor::{try_with_capacity, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use crate::precision::Precision;
use std::path::Path;

/// One tensor read from a file.
#[derive(Clone, Debug)]
pub enum Value {
    /// A float tensor (F64, F32, F16 or BF16 in the file), widened to f64.
    Float(Tensor<f64>),
    /// An integer tensor, widened to i64.
    Int(Tensor<i64>),
}

impl Value {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Float(t) => &t.shape,
            Value::Int(t) => &t.shape,
        }
    }
}

/// The contents of a safetensors file: metadata and named tensors.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// The file's `__metadata__` strings.
    pub metadata: HashMap<String, String>,
    /// The tensors by name.
    pub tensors: BTreeMap<String, Value>,
}

impl TensorFile {
    /// Parses a safetensors buffer.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, meta) = SafeTensors::read_metadata(bytes)?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(bytes)?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let d = view.data();
            // Integer and half-precision data widen to 8 bytes an element: fallible
            // allocations, so a large file is an error rather than an abort.
            let floats = |n: usize, conv: &dyn Fn(&[u8]) -> f64, width: usize| -> Result<Value> {
                let mut v = try_with_capacity(&name, n)?;
                v.extend(d.chunks_exact(width).map(conv));
                Ok(Value::Float(Tensor { shape: shape.clone(), data: v }))
            };
            let ints = |n: usize, conv: &dyn Fn(&[u8]) -> i64, width: usize| -> Result<Value> {
                let mut v = try_with_capacity(&name, n)?;
                v.extend(d.chunks_exact(width).map(conv));
                Ok(Value::Int(Tensor { shape: shape.clone(), data: v }))
            };
            let value = match view.dtype() {
                Dtype::F64 => floats(d.len() / 8, &|b| f64::from_le_bytes(b.try_into().expect("8 bytes")), 8)?,
                Dtype::F32 => floats(d.len() / 4, &|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64, 4)?,
                Dtype::F16 => floats(d.len() / 2, &|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64(), 2)?,
                Dtype::BF16 => floats(d.len() / 2, &|b| half::bf16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64(), 2)?,
                Dtype::I64 => ints(d.len() / 8, &|b| i64::from_le_bytes(b.try_into().expect("8 bytes")), 8)?,
                Dtype::I32 => ints(d.len() / 4, &|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64, 4)?,
                Dtype::I16 => ints(d.len() / 2, &|b| i16::from_le_bytes(b.try_into().expect("2 bytes")) as i64, 2)?,
                Dtype::I8 => ints(d.len(), &|b| b[0] as i8 as i64, 1)?,
                Dtype::U8 => ints(d.len(), &|b| b[0] as i64, 1)?,
                other => {
                    return Err(Error::UnsupportedDtype { name, dtype: format!("{other:?}") });
                }
            };
            tensors.insert(name, value);
        }
        Ok(TensorFile { metadata, tensors })
    }

    /// Reads a safetensors file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        Self::from_bytes(&bytes)
    }

    /// A float tensor by name.
    pub fn float(&self, name: &str) -> Result<&Tensor<f64>> {
        match self.tensors.get(name) {
            Some(Value::Float(t)) => Ok(t),
            Some(Value::Int(_)) => {
                Err(Error::UnsupportedDtype { name: name.into(), dtype: "integer (float expected)".into() })
            }
            None => Err(Error::MissingTensor(name.into())),
        }
    }

    /// An optional float tensor by name.
    pub fn float_opt(&self, name: &str) -> Result<Option<&Tensor<f64>>> {
        if self.tensors.contains_key(name) {
            self.float(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An integer tensor by name (floats holding whole numbers are accepted too).
    pub fn int(&self, name: &str) -> Result<Tensor<i64>> {
        match self.tensors.get(name) {
            Some(Value::Int(t)) => Ok(t.clone()),
            Some(Value::Float(t)) => {
                if t.data.iter().all(|v| v.fract() == 0.0 && v.is_finite()) {
                    Ok(t.map(|&v| v as i64))
                } else {
                    Err(Error::UnsupportedDtype { name: name.into(), dtype: "float (integers expected)".into() })
                }
            }
            None => Err(Error::MissingTensor(name.into())),
        }
    }

    /// Inserts a float tensor (written as F32).
    pub fn put_float(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f64>) {
        self.tensors.insert(name.into(), Value::Float(Tensor { shape, data }));
    }

    /// Inserts an integer tensor (written as I32 when it fits, else I64).
    pub fn put_int(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<i64>) {
        self.tensors.insert(name.into(), Value::Int(Tensor { shape, data }));
    }

    /// Serialises to safetensors bytes (floats as F32).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_as(Precision::F32)
    }

    /// Serialises to safetensors bytes, floats as F32 or F16 (rounded to nearest even).
    pub fn to_bytes_as(&self, precision: Precision) -> Result<Vec<u8>> {
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, v) in &self.tensors {
            match v {
                Value::Float(t) => {
                    if precision == Precision::F16 {
                        precision.check_range(name, &t.data.iter().map(|&x| x as f32).collect::<Vec<f32>>())?;
                    }
                    let (dtype, b): (Dtype, Vec<u8>) = match precision {
                        Precision::F32 => (Dtype::F32, t.data.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()),
                        Precision::F16 => (Dtype::F16, t.data.iter().flat_map(|&x| half::f16::from_f64(x).to_le_bytes()).collect()),
                    };
                    buffers.push((name.clone(), dtype, t.shape.clone(), b));
                }
                Value::Int(t) => {
                    if t.data.iter().all(|&x| i32::try_from(x).is_ok()) {
                        let b: Vec<u8> = t.data.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
                        buffers.push((name.clone(), Dtype::I32, t.shape.clone(), b));
                    } else {
                        let b: Vec<u8> = t.data.iter().flat_map(|&x| x.to_le_bytes()).collect();
                        buffers.push((name.clone(), Dtype::I64, t.shape.clone(), b));
                    }
                }
            }
        }
        let mut views = Vec::with_capacity(buffers.len());
        for (name, dtype, shape, bytes) in &buffers {
            views.push((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?));
        }
        let meta = if self.metadata.is_empty() { None } else { Some(self.metadata.clone()) };
        Ok(safetensors::serialize(views, meta)?)
    }

    /// Writes a safetensors file (floats as F32).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_as(path, Precision::F32)
    }

    /// Writes a safetensors file, floats as F32 or F16.
    pub fn write_as(&self, path: impl AsRef<Path>, precision: Precision) -> Result<()> {
        std::fs::write(path, self.to_bytes_as(precision)?)?;
        Ok(())
    }
}
