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
                let capacity = capacity_for(needed, self.max_len);
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

/// Positions allocated to hold `needed` (whole chunks, at most the model's context).
pub fn capacity_for(needed: usize, max_len: usize) -> usize {
    needed
        .div_ceil(CHUNK)
        .saturating_mul(CHUNK)
        .min(max_len.max(needed))
}

/// A buffer of `capacity` positions holding the first `len` of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
    let (b, h, _, d) = like.dims4()?;
    let buf = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
    if let Some(old) = old {
        if len > 0 {
            // A view of the first `len` of a larger buffer is strided; slice_set copies only
            // contiguous sources.
            buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    fn positions(from: usize, t: usize) -> Tensor {
        // (1, 2 heads, t, 4): every entry names its position, so a misplaced copy shows.
        let v: Vec<f32> = (0..2 * t * 4)
            .map(|i| (from + (i / 4) % t) as f32)
            .collect();
        Tensor::from_vec(v, (1, 2, t, 4), &Device::Cpu).expect("tensor")
    }

    /// An audit prefills the prompt (a partly filled chunk), then appends the forced output
    /// in one call that needs a bigger buffer: the held prefix is a strided view then.
    #[test]
    fn growing_a_partly_filled_cache_keeps_its_contents() {
        let mut c = KvCache::new(1000);
        c.append(&positions(0, 10), &positions(0, 10))
            .expect("prefill");
        let (k, v) = c
            .append(&positions(10, 300), &positions(10, 300))
            .expect("grow past the first chunk");
        assert_eq!(k.dims(), &[1, 2, 310, 4]);
        for (x, t) in [(&k, 0), (&k, 9), (&k, 10), (&v, 309)] {
            let got: Vec<f32> = x.i((0, 1, t)).and_then(|r| r.to_vec1()).expect("row");
            assert_eq!(got, vec![t as f32; 4], "position {t}");
        }
        // And past a second chunk and up to a limit that is not a multiple of the chunk.
        let (k, _) = c
            .append(&positions(310, 690), &positions(310, 690))
            .expect("grow to the limit");
        let got: Vec<f32> = k.i((0, 0, 999)).and_then(|r| r.to_vec1()).expect("row");
        assert_eq!(got, vec![999.0; 4]);
    }
}
