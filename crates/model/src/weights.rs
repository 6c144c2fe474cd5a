//! Where a model's weights come from: dense f32 tensors (safetensors, training variables)
//! or a GGUF file (quantized). The model definition asks for weights by their Hugging Face
//! names and shapes; each source maps and checks them.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::llama::Linear;

pub trait WeightSource {
    fn device(&self) -> Device;
    /// A linear layer `name.weight` of shape (out, inp), with `name.bias` (out) if `bias`.
    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear>;
    /// An f32 vector (norm weights).
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor>;
    /// The f32 token embedding table (vocab, hidden).
    fn embedding(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<Tensor>;
    /// The LM head when it shares the embedding table.
    fn tied_head(&mut self, embedding: &Tensor) -> Result<Linear>;
}

pub(crate) fn check_shape(name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(ModelError::WeightShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// Dense tensors by Hugging Face name. Matrices can be quantized on load for serving;
/// without quantization the same tensors (training variables) are used as they are, so
/// gradients reach them.
pub struct TensorSource {
    tensors: HashMap<String, Tensor>,
    quantize: Option<GgmlDType>,
    device: Device,
}

impl TensorSource {
    pub fn new(tensors: HashMap<String, Tensor>, device: Device) -> Self {
        Self {
            tensors,
            quantize: None,
            device,
        }
    }

    /// Quantize every matrix whose rows fit the block size (norms and biases stay f32).
    pub fn quantized(mut self, dtype: GgmlDType) -> Self {
        self.quantize = Some(dtype);
        self
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight(name.to_string()))?;
        check_shape(name, t, shape)?;
        Ok(if t.dtype() == DType::F32 {
            t.clone()
        } else {
            t.to_dtype(DType::F32)?
        })
    }

    fn matmul(&self, w: Tensor) -> Result<QMatMul> {
        match self.quantize {
            Some(dtype) if w.dim(1)? % dtype.block_size() == 0 => {
                Ok(QMatMul::from_qtensor(QTensor::quantize(&w, dtype)?)?)
            }
            _ => Ok(QMatMul::Tensor(w)),
        }
    }
}

impl WeightSource for TensorSource {
    fn device(&self) -> Device {
        self.device.clone()
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Linear::new(self.matmul(w)?, b)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        self.get(name, &[len])
    }

    fn embedding(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<Tensor> {
        self.get(name, &[vocab, hidden])
    }

    fn tied_head(&mut self, embedding: &Tensor) -> Result<Linear> {
        Linear::new(self.matmul(embedding.clone())?, None)
    }
}
