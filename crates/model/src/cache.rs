//! One layer's key/value cache, preallocated in chunks so decoding appends in place
//! instead of concatenating the whole history every step.

use candle_core::Tensor;

use crate::error::Result;

const CHUNK: usize = 256;

#[derive(Clone, Debug)]
pub struct KvCache {
    /// Key and value buffers of `capacity` positions, of which the first `len` are used.
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    max_len: usize,
}

impl KvCache {
    pub fn new(max_len: usize) -> Self {
        Self {
            buffers: None,
            len: 0,
            capacity: 0,
            max_len,
        }
    }

    pub fn reset(&mut self) {
        *self = Self::new(self.max_len);
    }

    /// Appends (b, heads, t, d) keys and values; returns views of everything held.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let needed = self.len + t;
        let (kb, vb) = match self.buffers.take() {
            Some(buffers) if needed <= self.capacity => buffers,
            old => {
                let capacity = needed
                    .div_ceil(CHUNK)
                    .saturating_mul(CHUNK)
                    .min(self.max_len.max(needed));
                let (old_k, old_v) = match &old {
                    Some((ok, ov)) => (Some(ok), Some(ov)),
                    None => (None, None),
                };
                self.capacity = capacity;
                (
                    grow(old_k, k, self.len, capacity)?,
                    grow(old_v, v, self.len, capacity)?,
                )
            }
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        let views = (kb.narrow(2, 0, self.len)?, vb.narrow(2, 0, self.len)?);
        self.buffers = Some((kb, vb));
        Ok(views)
    }
}

/// A buffer of `capacity` positions holding the first `len` of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
    let (b, h, _, d) = like.dims4()?;
    let buf = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
    if let Some(old) = old {
        if len > 0 {
            buf.slice_set(&old.narrow(2, 0, len)?, 2, 0)?;
        }
    }
    Ok(buf)
}
