//! Int8 matrix-vector products for decoding: Q8_0 and Q4_0 weights held as contiguous int8
//! rows with f32 block scales, multiplied by an activation quantized the same way (as ggml
//! does). Scales are converted from f16 once at load, rows are split across threads, and the
//! inner loop is plain Rust that the compiler vectorizes with AVX2 where the CPU has it.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::Result;

const BLOCK: usize = 32;
/// Rows per parallel task: enough work to amortize scheduling.
const ROWS_PER_TASK: usize = 64;

#[derive(Debug)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
}

fn f16_bytes(lo: u8, hi: u8) -> f32 {
    half::f16::from_le_bytes([lo, hi]).to_f32()
}

impl Int8Matrix {
    /// From a (rows, cols) Q8_0 or Q4_0 tensor; `None` for other types.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let (rows, cols) = match q.shape().dims() {
            [r, c] => (*r, *c),
            _ => return Ok(None),
        };
        let block_bytes = match q.dtype() {
            GgmlDType::Q8_0 => 34,
            GgmlDType::Q4_0 => 18,
            _ => return Ok(None),
        };
        let data = q.data()?;
        let blocks = rows * cols / BLOCK;
        if cols % BLOCK != 0 || data.len() != blocks * block_bytes {
            return Ok(None);
        }
        let mut quants = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(blocks);
        for b in data.chunks_exact(block_bytes) {
            scales.push(f16_bytes(b[0], b[1]));
            match q.dtype() {
                GgmlDType::Q8_0 => quants.extend(b[2..].iter().map(|&v| v as i8)),
                _ => {
                    // Q4_0: low nibbles are elements 0..16, high nibbles 16..32, offset 8.
                    quants.extend(b[2..].iter().map(|&v| (v & 0x0F) as i8 - 8));
                    quants.extend(b[2..].iter().map(|&v| (v >> 4) as i8 - 8));
                }
            }
        }
        Ok(Some(Self {
            rows,
            cols,
            quants,
            scales,
        }))
    }

    /// The weights in f32, (rows, cols).
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let data: Vec<f32> = self
            .quants
            .par_chunks(BLOCK)
            .zip(self.scales.par_iter())
            .flat_map_iter(|(q, &d)| q.iter().map(move |&v| v as f32 * d))
            .collect();
        Ok(Tensor::from_vec(data, (self.rows, self.cols), device)?)
    }

    /// `xs` (..., cols) times the transposed weights: (..., rows).
    ///
    /// Each output is the same sum in the same order whatever the number of activation rows
    /// (decode computes one, an audit many): per block of 32 an exact integer dot product,
    /// then `acc += isum * weight scale * activation scale` block after block. With many
    /// rows each block of weights is loaded once for four activation rows.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let x: Vec<f32> = xs.flatten_all()?.to_vec1()?;
        let m = x.len() / self.cols;
        let acts: Vec<(Vec<i8>, Vec<f32>)> = x.chunks_exact(self.cols).map(quantize_row).collect();
        // (weight row, activation row); for one activation row that is the output itself.
        let mut by_weight = vec![0f32; m * self.rows];
        if m > 0 {
            by_weight
                .par_chunks_mut(ROWS_PER_TASK * m)
                .enumerate()
                .for_each(|(task, chunk)| self.task(task * ROWS_PER_TASK, &acts, chunk));
        }
        let out = if m == 1 {
            by_weight
        } else {
            let mut out = vec![0f32; m * self.rows];
            for (r, col) in by_weight.chunks_exact(m.max(1)).enumerate() {
                for (a, v) in col.iter().enumerate() {
                    if let Some(o) = out.get_mut(a * self.rows + r) {
                        *o = *v;
                    }
                }
            }
            out
        };
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Ok(Tensor::from_vec(out, shape, xs.device())?)
    }

    /// Weight rows from `first` times every activation row, into `out` (weight row,
    /// activation row).
    fn task(&self, first: usize, acts: &[(Vec<i8>, Vec<f32>)], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
            // calling a function compiled with it enabled.
            #[allow(unsafe_code)]
            return unsafe { self.task_avx2(first, acts, out) };
        }
        self.task_portable(first, acts, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn task_avx2(&self, first: usize, acts: &[(Vec<i8>, Vec<f32>)], out: &mut [f32]) {
        self.task_portable(first, acts, out)
    }

    #[inline(always)]
    fn task_portable(&self, first: usize, acts: &[(Vec<i8>, Vec<f32>)], out: &mut [f32]) {
        let m = acts.len();
        let blocks = self.cols / BLOCK;
        for (i, col) in out.chunks_exact_mut(m).enumerate() {
            let r = first + i;
            let (Some(q), Some(s)) = (
                self.quants.get(r * self.cols..(r + 1) * self.cols),
                self.scales.get(r * blocks..(r + 1) * blocks),
            ) else {
                return;
            };
            let mut a = 0;
            while a + ACT_ROWS <= m {
                let ys = dots::<ACT_ROWS>(
                    q,
                    s,
                    std::array::from_fn(|j| acts[a + j].0.as_slice()),
                    std::array::from_fn(|j| acts[a + j].1.as_slice()),
                );
                col[a..a + ACT_ROWS].copy_from_slice(&ys);
                a += ACT_ROWS;
            }
            while a < m {
                let [y] = dots::<1>(q, s, [&acts[a].0], [&acts[a].1]);
                col[a] = y;
                a += 1;
            }
        }
    }
}

/// Activation rows per weight-row pass in the multi-row kernel.
const ACT_ROWS: usize = 4;

/// ggml's Q8_0 activation quantization: per block of 32, scale amax / 127, rounded.
fn quantize_row(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut s = Vec::with_capacity(x.len() / BLOCK);
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        q.extend(block.iter().map(|v| (v * inv).round() as i8));
        // ggml stores the activation scale as f16; do the same so results match.
        s.push(half::f16::from_f32(d).to_f32());
    }
    (q, s)
}

/// One weight row (quants `q`, block scales `s`) dotted with `R` quantized activation rows.
/// Every row's result is the same operations in the same order as for `R` = 1.
#[inline(always)]
fn dots<const R: usize>(q: &[i8], s: &[f32], xq: [&[i8]; R], xs: [&[f32]; R]) -> [f32; R] {
    // Every slice cut to the same number of blocks, so the loop below needs no checks.
    let blocks = xq
        .iter()
        .zip(&xs)
        .fold(s.len().min(q.len() / BLOCK), |n, (x, sx)| {
            n.min(x.len() / BLOCK).min(sx.len())
        });
    let qb = &q.as_chunks::<BLOCK>().0[..blocks];
    let s = &s[..blocks];
    let xb = xq.map(|x| &x.as_chunks::<BLOCK>().0[..blocks]);
    let xs = xs.map(|x| &x[..blocks]);
    let mut acc = [0f32; R];
    for b in 0..blocks {
        let (qb, sw) = (&qb[b], s[b]);
        for r in 0..R {
            let xb = &xb[r][b];
            let mut isum = 0i32;
            for i in 0..BLOCK {
                isum += qb[i] as i32 * xb[i] as i32;
            }
            acc[r] += isum as f32 * sw * xs[r][b];
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle_quantized_matmul_for_q8_0_and_q4_0() {
        let mut rng = crate::init::SeededRng::new(4);
        let w = Tensor::from_vec(rng.normals(96 * 128, 1.0), (96, 128), &Device::Cpu).expect("w");
        let x = Tensor::from_vec(rng.normals(3 * 128, 1.0), (1, 3, 128), &Device::Cpu).expect("x");
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let m = Int8Matrix::from_qtensor(&q)
                .expect("ok")
                .expect("supported");
            let ours: Vec<f32> = m
                .forward(&x)
                .expect("fwd")
                .flatten_all()
                .expect("f")
                .to_vec1()
                .expect("v");
            let qm = candle_core::quantized::QMatMul::from_qtensor(q).expect("qmm");
            let theirs: Vec<f32> = candle_core::Module::forward(&qm, &x)
                .expect("fwd")
                .flatten_all()
                .expect("f")
                .to_vec1()
                .expect("v");
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "{dtype:?}: {a} vs {b}"
                );
            }
            let deq: Vec<f32> = m
                .dequantize(&Device::Cpu)
                .expect("d")
                .flatten_all()
                .expect("f")
                .to_vec1()
                .expect("v");
            let want: Vec<f32> = qm_dequant(&w, dtype);
            assert_eq!(deq, want);
        }
    }

    #[test]
    fn every_row_has_the_same_bits_alone_in_a_batch_and_on_any_pool() {
        let mut rng = crate::init::SeededRng::new(5);
        let (rows, cols, m) = (70, 96, 11);
        let w =
            Tensor::from_vec(rng.normals(rows * cols, 1.0), (rows, cols), &Device::Cpu).expect("w");
        let x = rng.normals(m * cols, 1.0);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let mat = Int8Matrix::from_qtensor(&q)
                .expect("ok")
                .expect("supported");
            let run = |x: &[f32], m: usize| -> Vec<f32> {
                let t = Tensor::from_vec(x.to_vec(), (m, cols), &Device::Cpu).expect("x");
                mat.forward(&t)
                    .expect("fwd")
                    .flatten_all()
                    .expect("f")
                    .to_vec1()
                    .expect("v")
            };
            let full = run(&x, m);
            // The reference: the scalar sum, block after block, of the decode kernel.
            for a in 0..m {
                let (xq, xs) = quantize_row(&x[a * cols..(a + 1) * cols]);
                for r in 0..rows {
                    let mut acc = 0f32;
                    for b in 0..cols / BLOCK {
                        let mut isum = 0i32;
                        for i in 0..BLOCK {
                            isum += mat.quants[r * cols + b * BLOCK + i] as i32
                                * xq[b * BLOCK + i] as i32;
                        }
                        acc += isum as f32 * mat.scales[r * cols / BLOCK + b] * xs[b];
                    }
                    assert_eq!(full[a * rows + r].to_bits(), acc.to_bits());
                }
            }
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                pool.install(|| {
                    for batch in [1, 2, 4, 5, 9] {
                        for start in (0..m).step_by(batch) {
                            let n = batch.min(m - start);
                            let part = run(&x[start * cols..(start + n) * cols], n);
                            assert_eq!(part, full[start * rows..(start + n) * rows]);
                        }
                    }
                });
            }
        }
    }

    fn qm_dequant(w: &Tensor, dtype: GgmlDType) -> Vec<f32> {
        QTensor::quantize(w, dtype)
            .expect("q")
            .dequantize(&Device::Cpu)
            .expect("d")
            .flatten_all()
            .expect("f")
            .to_vec1()
            .expect("v")
    }
}
