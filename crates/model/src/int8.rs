//! Int8 matrix products for decoding and auditing: Q8_0 and Q4_0 weights held as int8 with f32
//! block scales, multiplied by activations quantized the same way (as ggml does). Scales are
//! converted from f16 once at load.
//!
//! # Layout
//!
//! Weight rows (outputs) are packed in groups of [`LANES`] = 8: for group `g` and block `b`
//! (32 columns) the group's 8 x 32 quants are stored side by side in 8 chunks of 32 bytes,
//! chunk `k` holding columns `32b + 4k .. 32b + 4k + 4` of weight row `8g + j` at bytes
//! `4j .. 4j + 4`. One 32-byte load therefore holds 4 consecutive columns of 8 outputs, and a
//! broadcast of the matching 4 activation bytes multiplies all 8 at once: each output's
//! integer dot product ends up in its own 32-bit lane, with no horizontal sums. The 8 block
//! scales of a group sit side by side as well. A last partial group is padded with zero
//! weights and zero scales, and its extra outputs are dropped.
//!
//! # The one accumulation order
//!
//! Every output `y = sum over blocks` is computed as
//!
//! ```text
//! acc = 0.0f32
//! for b in 0 .. cols / 32:                       // blocks in increasing order
//!     isum = exact i32 dot of the 32 weight and 32 activation quants of block b
//!     acc = acc + ((isum as f32) * weight_scale[b]) * activation_scale[b]
//! ```
//!
//! with separate f32 roundings for each product and the sum (no fused multiply-add). The
//! integer dot is exact (|isum| <= 32 * 128 * 127 < 2^24, so `isum as f32` is exact too), so
//! the order of its terms does not matter; the f32 steps above are the only roundings, and
//! the portable path ([`group_portable`]) and the AVX2 path (`avx2::group`) both perform
//! exactly them, in that order, per output. The number of activation rows sharing a call,
//! the thread count and the CPU therefore never change a bit of any output.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::Result;

const BLOCK: usize = 32;
/// Outputs (weight rows) per packed group: one per 32-bit lane of an AVX2 register.
const LANES: usize = 8;
/// Bytes of one packed block of a group.
const PACKED: usize = LANES * BLOCK;
/// Multiply-adds per parallel task, at least: a few microseconds of work, enough to amortize
/// handing it to another thread (a decode step of a small matrix runs as one task).
const MACS_PER_TASK: usize = 1 << 17;
/// Activation rows per pass over a group's weights in the multi-row kernel.
const ACT_ROWS: usize = 4;

#[derive(Debug)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    /// Packed quants, `groups * blocks * PACKED` (see the module comment).
    quants: Vec<i8>,
    /// Packed scales, `groups * blocks * LANES`: scale of weight row `8g + j`, block `b` at
    /// `(g * blocks + b) * LANES + j`.
    scales: Vec<f32>,
}

fn f16_bytes(lo: u8, hi: u8) -> f32 {
    half::f16::from_le_bytes([lo, hi]).to_f32()
}

/// Where column `c` of weight row `r` lives in the packed quants.
fn packed_index(r: usize, c: usize, blocks: usize) -> usize {
    let (g, j) = (r / LANES, r % LANES);
    let (b, i) = (c / BLOCK, c % BLOCK);
    (g * blocks + b) * PACKED + (i / 4) * (LANES * 4) + j * 4 + i % 4
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
        let blocks = cols / BLOCK;
        if cols % BLOCK != 0 || cols == 0 || rows == 0 || data.len() != rows * blocks * block_bytes
        {
            return Ok(None);
        }
        let groups = rows.div_ceil(LANES);
        let mut quants = vec![0i8; groups * blocks * PACKED];
        let mut scales = vec![0f32; groups * blocks * LANES];
        let mut block = [0i8; BLOCK];
        for (n, raw) in data.chunks_exact(block_bytes).enumerate() {
            let (r, b) = (n / blocks, n % blocks);
            match q.dtype() {
                GgmlDType::Q8_0 => {
                    for (v, &x) in block.iter_mut().zip(&raw[2..]) {
                        *v = x as i8;
                    }
                }
                _ => {
                    // Q4_0: low nibbles are elements 0..16, high nibbles 16..32, offset 8.
                    for (i, &x) in raw[2..].iter().enumerate() {
                        block[i] = (x & 0x0F) as i8 - 8;
                        block[i + BLOCK / 2] = (x >> 4) as i8 - 8;
                    }
                }
            }
            for (i, &v) in block.iter().enumerate() {
                quants[packed_index(r, b * BLOCK + i, blocks)] = v;
            }
            scales[((r / LANES) * blocks + b) * LANES + r % LANES] = f16_bytes(raw[0], raw[1]);
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
        let (cols, blocks) = (self.cols, self.cols / BLOCK);
        let mut data = vec![0f32; self.rows * cols];
        data.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            for (c, v) in row.iter_mut().enumerate() {
                let scale = self.scales[((r / LANES) * blocks + c / BLOCK) * LANES + r % LANES];
                *v = self.quants[packed_index(r, c, blocks)] as f32 * scale;
            }
        });
        Ok(Tensor::from_vec(data, (self.rows, cols), device)?)
    }

    /// `xs` (..., cols) times the transposed weights: (..., rows).
    ///
    /// Each output is the same sum in the same order whatever the number of activation rows
    /// (decode computes one, an audit many), threads or CPU: see the module comment. With
    /// many rows each block of weights is loaded once for four activation rows.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, true)
    }

    /// [`Self::forward`], on the AVX2 kernel where `simd` and the CPU has it, else portable.
    fn forward_with(&self, xs: &Tensor, simd: bool) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let x: Vec<f32> = xs.flatten_all()?.to_vec1()?;
        let out = self.matmul(&x, simd);
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Ok(Tensor::from_vec(out, shape, xs.device())?)
    }

    /// Row-major `x` (m, cols) times the transposed weights: row-major (m, rows).
    fn matmul(&self, x: &[f32], simd: bool) -> Vec<f32> {
        let (cols, blocks) = (self.cols, self.cols / BLOCK);
        let m = x.len() / cols;
        let simd = simd && avx2_available();
        let (xq, xs) = quantize_activations(x, cols, simd);
        let acts = Acts {
            q: xq.as_chunks::<BLOCK>().0,
            s: &xs,
            blocks,
        };
        let groups = self.rows.div_ceil(LANES);
        // (group, activation row, lane).
        let mut by_group = vec![0f32; groups * m * LANES];
        if m == 0 {
            return by_group;
        }
        // How the groups are split across tasks changes no output: each is computed alone.
        let per_task = MACS_PER_TASK.div_ceil(LANES * cols * m).max(1);
        let task = |(task, chunk): (usize, &mut [f32])| {
            for (i, out) in chunk.chunks_exact_mut(m * LANES).enumerate() {
                self.group(task * per_task + i, &acts, out, simd);
            }
        };
        let chunk = per_task * m * LANES;
        // One task, or one thread: run here, without handing the work to the pool and
        // waiting for it (a decode step makes hundreds of these calls).
        if by_group.len() <= chunk || rayon::current_num_threads() == 1 {
            by_group.chunks_mut(chunk).enumerate().for_each(task);
        } else {
            by_group.par_chunks_mut(chunk).enumerate().for_each(task);
        }
        if m == 1 {
            by_group.truncate(self.rows);
            return by_group;
        }
        let mut out = vec![0f32; m * self.rows];
        for (g, per_group) in by_group.chunks_exact(m * LANES).enumerate() {
            let lanes = LANES.min(self.rows - g * LANES);
            for (a, ys) in per_group.chunks_exact(LANES).enumerate() {
                let at = a * self.rows + g * LANES;
                out[at..at + lanes].copy_from_slice(&ys[..lanes]);
            }
        }
        out
    }

    /// Group `g` times every activation row, into `out` (activation row, lane).
    fn group(&self, g: usize, acts: &Acts, out: &mut [f32], simd: bool) {
        let blocks = acts.blocks;
        let w = &self.quants.as_chunks::<PACKED>().0[g * blocks..(g + 1) * blocks];
        let s = &self.scales.as_chunks::<LANES>().0[g * blocks..(g + 1) * blocks];
        let outs = out.as_chunks_mut::<LANES>().0;
        let m = outs.len();
        let mut a = 0;
        while a < m {
            let n = ACT_ROWS.min(m - a);
            let ys = &mut outs[a..a + n];
            match n {
                ACT_ROWS => ys.copy_from_slice(&kernel::<ACT_ROWS>(w, s, acts, a, simd)),
                3 => ys.copy_from_slice(&kernel::<3>(w, s, acts, a, simd)),
                2 => ys.copy_from_slice(&kernel::<2>(w, s, acts, a, simd)),
                _ => ys.copy_from_slice(&kernel::<1>(w, s, acts, a, simd)),
            }
            a += n;
        }
    }
}

/// Quantized activation rows: `q` (m * blocks blocks of 32) and `s` (m * blocks scales).
struct Acts<'a> {
    q: &'a [[i8; BLOCK]],
    s: &'a [f32],
    blocks: usize,
}

impl Acts<'_> {
    /// Blocks and scales of activation row `a`.
    fn row(&self, a: usize) -> (&[[i8; BLOCK]], &[f32]) {
        let span = a * self.blocks..(a + 1) * self.blocks;
        (&self.q[span.clone()], &self.s[span])
    }
}

pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One group's packed blocks `w` and scales `s` times activation rows `a .. a + R`.
#[inline(always)]
fn kernel<const R: usize>(
    w: &[[i8; PACKED]],
    s: &[[f32; LANES]],
    acts: &Acts,
    a: usize,
    simd: bool,
) -> [[f32; LANES]; R] {
    let rows: [_; R] = std::array::from_fn(|r| acts.row(a + r));
    let xq = rows.map(|(q, _)| q);
    let xs = rows.map(|(_, s)| s);
    #[cfg(target_arch = "x86_64")]
    if simd {
        return avx2::group(w, s, xq, xs);
    }
    let _ = simd;
    group_portable(w, s, xq, xs)
}

/// Row-major `x` (m, cols) quantized per block of 32 by [`quantize_row`]: quants and scales,
/// on AVX2 where `simd` (the same bits either way).
pub(crate) fn quantize_activations(x: &[f32], cols: usize, simd: bool) -> (Vec<i8>, Vec<f32>) {
    if cols == 0 {
        return (vec![], vec![]);
    }
    let m = x.len() / cols;
    let mut xq = Vec::with_capacity(m * cols);
    let mut xs = Vec::with_capacity(m * cols / BLOCK);
    #[cfg(target_arch = "x86_64")]
    if simd && avx2_available() {
        avx2::quantize_rows(x, cols, &mut xq, &mut xs);
        return (xq, xs);
    }
    let _ = simd;
    for row in x.chunks_exact(cols) {
        quantize_row(row, &mut xq, &mut xs);
    }
    (xq, xs)
}

/// ggml's Q8_0 activation quantization: per block of 32, scale amax / 127, rounded half away
/// from zero, appended to `q` and `s`. Every quant is in -127..=127 (the AVX2 kernel relies on
/// it never being -128; the clamp only matters for non-finite input).
#[inline(always)]
fn quantize_row(x: &[f32], q: &mut Vec<i8>, s: &mut Vec<f32>) {
    for block in x.chunks_exact(BLOCK) {
        // The largest magnitude, in eight lanes then across them: `max` picks one of its
        // inputs (ignoring NaN, and never NaN from a start of 0), so any order gives the same
        // value, and this one vectorizes where a single running max cannot.
        let mut lanes = [0f32; 8];
        for eight in block.as_chunks::<8>().0 {
            for (m, v) in lanes.iter_mut().zip(eight) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |a, &m| a.max(m));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut quants = [0i8; BLOCK];
        for (o, v) in quants.iter_mut().zip(block) {
            *o = round_to_i8(v * inv);
        }
        q.extend_from_slice(&quants);
        // ggml stores the activation scale as f16; do the same so results match.
        s.push(half::f16::from_f32(d).to_f32());
    }
}

/// `y.round().clamp(-127.0, 127.0) as i8` (NaN to 0), without a call into libm so that the
/// loop above vectorizes: after the clamp `|y| <= 127`, so the truncation `t` and the
/// fraction `y - t` are exact, and rounding half away from zero adds one step away from zero
/// when the fraction's magnitude is at least one half (NaN compares false and casts to 0).
#[inline(always)]
fn round_to_i8(y: f32) -> i8 {
    let y = y.clamp(-127.0, 127.0);
    let t = y.trunc();
    let f = y - t;
    let r = t + f32::from(u8::from(f >= 0.5)) - f32::from(u8::from(f <= -0.5));
    r as i8
}

/// The portable kernel: one group's packed blocks `w` and scales `s` times `R` activation
/// rows (blocks `xq`, scales `xs`, each cut to the same number of blocks as `w`), following
/// the accumulation order of the module comment exactly.
#[inline(always)]
fn group_portable<const R: usize>(
    w: &[[i8; PACKED]],
    s: &[[f32; LANES]],
    xq: [&[[i8; BLOCK]]; R],
    xs: [&[f32]; R],
) -> [[f32; LANES]; R] {
    let mut acc = [[0f32; LANES]; R];
    for (b, (wb, sw)) in w.iter().zip(s).enumerate() {
        for r in 0..R {
            let xb = &xq[r][b];
            let mut isum = [0i32; LANES];
            for (k, chunk) in wb.as_chunks::<{ LANES * 4 }>().0.iter().enumerate() {
                for (j, sum) in isum.iter_mut().enumerate() {
                    for t in 0..4 {
                        *sum += chunk[j * 4 + t] as i32 * xb[k * 4 + t] as i32;
                    }
                }
            }
            for j in 0..LANES {
                acc[r][j] += isum[j] as f32 * sw[j] * xs[r][b];
            }
        }
    }
    acc
}

/// The AVX2 kernel, and all of this file's `unsafe`: two calls into functions compiled with
/// AVX2 after checking that the CPU has it, two loads and one store of 32 bytes from and to
/// arrays of exactly 32 bytes.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_abs_epi8, _mm256_add_epi32, _mm256_add_ps, _mm256_cvtepi32_ps,
        _mm256_loadu_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16,
        _mm256_mul_ps, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_setzero_si256, _mm256_sign_epi8, _mm256_storeu_ps,
    };

    use super::{BLOCK, LANES, PACKED};

    /// [`super::quantize_row`] for every row of `x`, compiled with AVX2 (the same scalar
    /// operations, so the same bits; the compiler only gets wider registers).
    pub(super) fn quantize_rows(x: &[f32], cols: usize, q: &mut Vec<i8>, s: &mut Vec<f32>) {
        assert!(
            std::is_x86_feature_detected!("avx2"),
            "AVX2 kernel without AVX2"
        );
        // SAFETY: the CPU supports AVX2 (asserted just above), the only requirement of
        // calling a function compiled with it enabled.
        unsafe { quantize_rows_avx2(x, cols, q, s) }
    }

    #[target_feature(enable = "avx2")]
    fn quantize_rows_avx2(x: &[f32], cols: usize, q: &mut Vec<i8>, s: &mut Vec<f32>) {
        for row in x.chunks_exact(cols) {
            super::quantize_row(row, q, s);
        }
    }

    /// [`super::group_portable`] with AVX2: the same results, bit for bit.
    pub(super) fn group<const R: usize>(
        w: &[[i8; PACKED]],
        s: &[[f32; LANES]],
        xq: [&[[i8; BLOCK]]; R],
        xs: [&[f32]; R],
    ) -> [[f32; LANES]; R] {
        assert!(
            std::is_x86_feature_detected!("avx2"),
            "AVX2 kernel without AVX2"
        );
        // SAFETY: the CPU supports AVX2 (asserted just above), the only requirement of
        // calling a function compiled with it enabled.
        unsafe { group_avx2(w, s, xq, xs) }
    }

    /// Per block, lane `j` of `isum` accumulates the exact dot product of weight row `j` of
    /// the group with the activation block: chunk `k` of the packed block holds columns
    /// `4k .. 4k + 4` of the 8 rows, multiplied by the same 4 activation bytes broadcast to
    /// every lane. `maddubs` multiplies unsigned by signed bytes, so the weight's sign is moved
    /// onto the activation (`|w| * (x * sign(w)) = w * x`, as ggml does): `|w|` is at most 128
    /// (the byte 0x80 of `abs(-128)` read unsigned) and `x * sign(w)` is in -127..=127
    /// because activation quants never are -128 ([`super::quantize_row`] clamps them), so a
    /// pair of products is at most 2 * 128 * 127 = 32512 in magnitude and never saturates
    /// i16. `madd` with ones widens pairs to i32 exactly; a lane's total is at most
    /// 32 * 128 * 127 < 2^24, so its conversion to f32 is exact. Then, as in the portable
    /// kernel, `acc = acc + (isum * weight scale) * activation scale` with separate
    /// multiplies and add (no FMA), block after block.
    #[target_feature(enable = "avx2")]
    fn group_avx2<const R: usize>(
        w: &[[i8; PACKED]],
        s: &[[f32; LANES]],
        xq: [&[[i8; BLOCK]]; R],
        xs: [&[f32]; R],
    ) -> [[f32; LANES]; R] {
        // Every slice cut to the same number of blocks, so the loop needs no checks.
        let n = xq.iter().zip(&xs).fold(w.len().min(s.len()), |n, (x, sx)| {
            n.min(x.len()).min(sx.len())
        });
        let (w, s) = (&w[..n], &s[..n]);
        let xq = xq.map(|x| &x[..n]);
        let xs = xs.map(|x| &x[..n]);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..n {
            let mut isum = [_mm256_setzero_si256(); R];
            for (k, chunk) in w[b].as_chunks::<32>().0.iter().enumerate() {
                // SAFETY: `chunk` is a `[i8; 32]`, exactly the 32 bytes an unaligned load
                // reads.
                let wv = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast::<__m256i>()) };
                let aw = _mm256_abs_epi8(wv);
                for r in 0..R {
                    let x = &xq[r][b];
                    let x4 = i32::from_le_bytes([
                        x[4 * k] as u8,
                        x[4 * k + 1] as u8,
                        x[4 * k + 2] as u8,
                        x[4 * k + 3] as u8,
                    ]);
                    let sx = _mm256_sign_epi8(_mm256_set1_epi32(x4), wv);
                    let pairs = _mm256_maddubs_epi16(aw, sx);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(pairs, ones));
                }
            }
            // SAFETY: `s[b]` is a `[f32; 8]`, exactly the 32 bytes an unaligned load reads.
            let sw = unsafe { _mm256_loadu_ps(s[b].as_ptr()) };
            for r in 0..R {
                let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[r]), sw);
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(scaled, _mm256_set1_ps(xs[r][b])));
            }
        }
        acc.map(|v| {
            let mut out = [0f32; LANES];
            // SAFETY: `out` is a `[f32; 8]`, exactly the 32 bytes an unaligned store writes.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().expect("f").to_vec1().expect("v")
    }

    fn matrix(
        rng: &mut crate::init::SeededRng,
        rows: usize,
        cols: usize,
        dtype: GgmlDType,
    ) -> (QTensor, Int8Matrix) {
        let w =
            Tensor::from_vec(rng.normals(rows * cols, 1.0), (rows, cols), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let m = Int8Matrix::from_qtensor(&q)
            .expect("ok")
            .expect("supported");
        (q, m)
    }

    /// Weight row `r`'s quants, read back from the packed layout.
    fn row_quants(m: &Int8Matrix, r: usize) -> Vec<i8> {
        (0..m.cols)
            .map(|c| m.quants[packed_index(r, c, m.cols / BLOCK)])
            .collect()
    }

    fn row_scales(m: &Int8Matrix, r: usize) -> Vec<f32> {
        let blocks = m.cols / BLOCK;
        (0..blocks)
            .map(|b| m.scales[((r / LANES) * blocks + b) * LANES + r % LANES])
            .collect()
    }

    #[test]
    fn activation_rounding_is_f32_round() {
        let want = |y: f32| y.round().clamp(-127.0, 127.0) as i8;
        let mut ys = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e30,
            -1e30,
        ];
        for k in -300..=300 {
            let h = k as f32 * 0.5;
            ys.extend([h, h.next_up(), h.next_down()]);
        }
        // Every 61st f32 from 0 to 200, both signs.
        let mut bits = 0u32;
        while f32::from_bits(bits) <= 200.0 {
            ys.extend([f32::from_bits(bits), -f32::from_bits(bits)]);
            bits += 61;
        }
        for y in ys {
            assert_eq!(round_to_i8(y), want(y), "{y:e}");
        }
    }

    #[test]
    fn matches_candle_quantized_matmul_for_q8_0_and_q4_0() {
        let mut rng = crate::init::SeededRng::new(4);
        for (rows, cols) in [(96, 128), (13, 32), (35, 96)] {
            let x = Tensor::from_vec(rng.normals(3 * cols, 1.0), (1, 3, cols), &Device::Cpu)
                .expect("x");
            for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
                let (q, m) = matrix(&mut rng, rows, cols, dtype);
                let ours = to_vec(&m.forward(&x).expect("fwd"));
                let want_deq = to_vec(&q.dequantize(&Device::Cpu).expect("d"));
                let qm = candle_core::quantized::QMatMul::from_qtensor(q).expect("qmm");
                let theirs = to_vec(&candle_core::Module::forward(&qm, &x).expect("fwd"));
                assert_eq!(ours.len(), theirs.len());
                for (a, b) in ours.iter().zip(&theirs) {
                    assert!(
                        (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                        "{dtype:?}: {a} vs {b}"
                    );
                }
                assert_eq!(to_vec(&m.dequantize(&Device::Cpu).expect("d")), want_deq);
            }
        }
    }

    /// Against the same quantized sums in f64: the f32 result is within rounding of it.
    #[test]
    fn agrees_with_an_f64_reference() {
        let mut rng = crate::init::SeededRng::new(6);
        let (rows, cols, m) = (21, 160, 5);
        let x = rng.normals(m * cols, 1.0);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let (_, mat) = matrix(&mut rng, rows, cols, dtype);
            let ys = mat.matmul(&x, true);
            for a in 0..m {
                let (mut xq, mut xs) = (Vec::new(), Vec::new());
                quantize_row(&x[a * cols..(a + 1) * cols], &mut xq, &mut xs);
                for r in 0..rows {
                    let (wq, ws) = (row_quants(&mat, r), row_scales(&mat, r));
                    let (mut sum, mut mag) = (0f64, 0f64);
                    for b in 0..cols / BLOCK {
                        let isum: i64 = (b * BLOCK..(b + 1) * BLOCK)
                            .map(|i| wq[i] as i64 * xq[i] as i64)
                            .sum();
                        let term = isum as f64 * ws[b] as f64 * xs[b] as f64;
                        sum += term;
                        mag += term.abs();
                    }
                    let y = ys[a * rows + r] as f64;
                    assert!(
                        (y - sum).abs() <= 1e-6 * mag + 1e-30,
                        "{dtype:?} {a} {r}: {y} vs {sum}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_row_has_the_same_bits_alone_in_a_batch_on_any_pool_and_any_cpu() {
        let mut rng = crate::init::SeededRng::new(5);
        let m = 13;
        // The last shape splits into several parallel tasks even for one row.
        for (rows, cols) in [
            (70, 96),
            (8, 32),
            (13, 32),
            (33, 160),
            (130, 64),
            (300, 512),
        ] {
            let x = rng.normals(m * cols, 1.0);
            for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
                let (_, mat) = matrix(&mut rng, rows, cols, dtype);
                let full = mat.matmul(&x, true);
                // The reference: the scalar sum, block after block, of the module comment.
                for a in 0..m {
                    let (mut xq, mut xs) = (Vec::new(), Vec::new());
                    quantize_row(&x[a * cols..(a + 1) * cols], &mut xq, &mut xs);
                    for r in 0..rows {
                        let (wq, ws) = (row_quants(&mat, r), row_scales(&mat, r));
                        let mut acc = 0f32;
                        for b in 0..cols / BLOCK {
                            let mut isum = 0i32;
                            for i in b * BLOCK..(b + 1) * BLOCK {
                                isum += wq[i] as i32 * xq[i] as i32;
                            }
                            acc += isum as f32 * ws[b] * xs[b];
                        }
                        assert_eq!(
                            full[a * rows + r].to_bits(),
                            acc.to_bits(),
                            "{rows}x{cols} {a} {r}"
                        );
                    }
                }
                // The portable kernel (what a CPU without AVX2 runs) gives the same bits.
                assert_eq!(mat.matmul(&x, false), full);
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("pool");
                    pool.install(|| {
                        for batch in 1..=m {
                            for start in (0..m).step_by(batch) {
                                let n = batch.min(m - start);
                                let part = &x[start * cols..(start + n) * cols];
                                let want = &full[start * rows..(start + n) * rows];
                                assert_eq!(mat.matmul(part, true), want, "{batch} {threads}");
                                if threads == 2 {
                                    assert_eq!(mat.matmul(part, false), want, "portable {batch}");
                                }
                            }
                        }
                    });
                }
                // And through the tensor interface, with leading dimensions.
                let t = Tensor::from_vec(x.clone(), (1, m, cols), &Device::Cpu).expect("x");
                let y = mat.forward_with(&t, true).expect("fwd");
                assert_eq!(y.dims(), [1, m, rows]);
                assert_eq!(to_vec(&y), full);
                assert_eq!(to_vec(&mat.forward_with(&t, false).expect("fwd")), full);
            }
        }
    }

    /// Q8_0 quants of -128 (which ggml's quantizer never writes, but a file may hold) and
    /// extreme activations: the sign trick still gives exact sums, no i16 saturation.
    #[test]
    fn extreme_quants_are_exact() {
        let (rows, cols) = (9, 64);
        let mut raw = Vec::new();
        for r in 0..rows {
            for b in 0..cols / BLOCK {
                raw.extend(half::f16::from_f32(0.5 + r as f32 * 0.25 + b as f32).to_le_bytes());
                raw.extend((0..BLOCK).map(|i| match (r + i + b) % 3 {
                    0 => 0x80u8, // -128
                    1 => 0x7F,   // 127
                    _ => 0x81,   // -127
                }));
            }
        }
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgmlDType::Q8_0,
            &raw,
            vec![rows, cols],
            &Device::Cpu,
        )
        .expect("q");
        let mat = Int8Matrix::from_qtensor(&q)
            .expect("ok")
            .expect("supported");
        // Activations that quantize to +-127 with the same or the opposite sign.
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| if (i / 7) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let ys = mat.matmul(&x, true);
        assert_eq!(mat.matmul(&x, false), ys);
        for a in 0..3 {
            let (mut xq, mut xs) = (Vec::new(), Vec::new());
            quantize_row(&x[a * cols..(a + 1) * cols], &mut xq, &mut xs);
            for r in 0..rows {
                let (wq, ws) = (row_quants(&mat, r), row_scales(&mat, r));
                let mut acc = 0f32;
                for b in 0..cols / BLOCK {
                    let isum: i32 = (b * BLOCK..(b + 1) * BLOCK)
                        .map(|i| wq[i] as i32 * xq[i] as i32)
                        .sum();
                    acc += isum as f32 * ws[b] * xs[b];
                }
                assert_eq!(ys[a * rows + r].to_bits(), acc.to_bits());
            }
        }
    }

    /// The kernel before packing (one weight row at a time, 32-wide dot and horizontal sum
    /// per block), kept to time against: `cargo test --release -p agora-model int8::tests::timing -- --ignored --nocapture`.
    mod before {
        use super::super::{quantize_row, BLOCK};

        pub fn matmul(q: &[i8], s: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
            use rayon::prelude::*;
            let m = x.len() / cols;
            let acts: Vec<(Vec<i8>, Vec<f32>)> = x
                .chunks_exact(cols)
                .map(|row| {
                    let (mut xq, mut xs) = (Vec::new(), Vec::new());
                    quantize_row(row, &mut xq, &mut xs);
                    (xq, xs)
                })
                .collect();
            let mut by_weight = vec![0f32; m * rows];
            by_weight
                .par_chunks_mut(64 * m)
                .enumerate()
                .for_each(|(task, chunk)| task_dispatch(q, s, cols, task * 64, &acts, chunk));
            by_weight
        }

        fn task_dispatch(
            q: &[i8],
            s: &[f32],
            cols: usize,
            first: usize,
            acts: &[(Vec<i8>, Vec<f32>)],
            out: &mut [f32],
        ) {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above), the only requirement
                // of calling a function compiled with it enabled.
                #[allow(unsafe_code)]
                return unsafe { task_avx2(q, s, cols, first, acts, out) };
            }
            task(q, s, cols, first, acts, out)
        }

        #[target_feature(enable = "avx2")]
        fn task_avx2(
            q: &[i8],
            s: &[f32],
            cols: usize,
            first: usize,
            acts: &[(Vec<i8>, Vec<f32>)],
            out: &mut [f32],
        ) {
            task(q, s, cols, first, acts, out)
        }

        #[inline(always)]
        fn task(
            q: &[i8],
            s: &[f32],
            cols: usize,
            first: usize,
            acts: &[(Vec<i8>, Vec<f32>)],
            out: &mut [f32],
        ) {
            let m = acts.len();
            let blocks = cols / BLOCK;
            for (i, col) in out.chunks_exact_mut(m).enumerate() {
                let r = first + i;
                let q = &q[r * cols..(r + 1) * cols];
                let s = &s[r * blocks..(r + 1) * blocks];
                let mut a = 0;
                while a + 4 <= m {
                    let ys = dots::<4>(
                        q,
                        s,
                        std::array::from_fn(|j| acts[a + j].0.as_slice()),
                        std::array::from_fn(|j| acts[a + j].1.as_slice()),
                    );
                    col[a..a + 4].copy_from_slice(&ys);
                    a += 4;
                }
                while a < m {
                    let [y] = dots::<1>(q, s, [&acts[a].0], [&acts[a].1]);
                    col[a] = y;
                    a += 1;
                }
            }
        }

        #[inline(always)]
        fn dots<const R: usize>(q: &[i8], s: &[f32], xq: [&[i8]; R], xs: [&[f32]; R]) -> [f32; R] {
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
    }

    /// The packed kernel gives the previous kernel's bits; with `AGORA_INT8_TIMING=1` it also
    /// times both (best of 3, on one thread, same run):
    /// `AGORA_INT8_TIMING=1 cargo test --release -p agora-model --lib int8::tests::timing -- --nocapture`.
    /// Without it each timing is one repetition, so the test stays quick.
    #[test]
    fn timing() {
        let full = std::env::var_os("AGORA_INT8_TIMING").is_some();
        let mut rng = crate::init::SeededRng::new(7);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        // A large matrix, then the shipped model's gate/up and output head.
        let cases = [
            (1024, 1024, GgmlDType::Q8_0),
            (1024, 1024, GgmlDType::Q4_0),
            (688, 256, GgmlDType::Q8_0),
            (2048, 256, GgmlDType::Q8_0),
        ];
        for (rows, cols, dtype) in cases {
            let (_, mat) = matrix(&mut rng, rows, cols, dtype);
            let q: Vec<i8> = (0..rows).flat_map(|r| row_quants(&mat, r)).collect();
            let s: Vec<f32> = (0..rows).flat_map(|r| row_scales(&mat, r)).collect();
            for m in [1, 100] {
                let x = rng.normals(m * cols, 1.0);
                let reps = if full {
                    (200_000_000 / (rows * cols * m)).max(2)
                } else {
                    1
                };
                let tries = if full { 3 } else { 1 };
                let time = |f: &dyn Fn() -> Vec<f32>| {
                    let mut best = f64::MAX;
                    for _ in 0..tries {
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            std::hint::black_box(f());
                        }
                        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                    }
                    best
                };
                pool.install(|| {
                    let old = before::matmul(&q, &s, rows, cols, &x);
                    let new = mat.matmul(&x, true);
                    // Same sums, same order: the same bits (old is (weight row, activation row)).
                    for a in 0..m {
                        for r in 0..rows {
                            assert_eq!(old[r * m + a].to_bits(), new[a * rows + r].to_bits());
                        }
                    }
                    let t_old = time(&|| before::matmul(&q, &s, rows, cols, &x));
                    let t_new = time(&|| mat.matmul(&x, true));
                    let t_port = time(&|| mat.matmul(&x, false));
                    let gmac = |t: f64| (rows * cols * m) as f64 / t / 1e9;
                    println!(
                        "{dtype:?} {rows}x{cols}, {m} rows, 1 thread: before {:.3} ms ({:.1} GMAC/s), after {:.3} ms ({:.1} GMAC/s, {:.1}x), portable {:.3} ms",
                        t_old * 1e3, gmac(t_old), t_new * 1e3, gmac(t_new), t_old / t_new, t_port * 1e3
                    );
                });
            }
        }
    }
}
