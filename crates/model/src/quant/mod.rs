//! Packed 4-, 5- and 6-bit weights (GGUF Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) multiplied by int8
//! activations, for decoding (one activation row), prefill and audits (tiles of rows). The
//! weights stay at about their file size (4 to 6 bits each plus f32 block scales) and are
//! unpacked to bytes in registers; the activations are quantized per block of 32 exactly as
//! [`crate::int8`] does.
//!
//! # Layout
//!
//! Every format is first read as, per weight row and block of 32 columns, 32 unsigned quants
//! `u` (0..16, 0..32 or 0..64) and f32 scales: a weight is `dw * (u - offset)` (Q4_0, Q6_K)
//! or `dw * u + mw` (Q4_1, Q4_K, Q5_K). Q6_K's two halves of 16 columns carry their own
//! integer sub-scales `sc0`, `sc1` under one `dw`. Weight rows are packed in groups of
//! [`LANES`] = 8, as in [`crate::int8`]: chunk `k` (0..8) of a block holds columns
//! `4k .. 4k + 4` of the group's 8 rows, row `j` at bytes `4j .. 4j + 4`, so one 32-byte
//! register of unpacked quants times 4 activation bytes broadcast gives each row's partial dot
//! product in its own 32-bit lane. Per group and block:
//!
//! * 128 bytes of nibbles: vector `v` (0..4), byte `4j + t` holds the low 4 bits of column
//!   `4v + t` (chunk `v`) in its low nibble and of column `4(v + 4) + t` (chunk `v + 4`) in
//!   its high nibble, of row `j`;
//! * Q5_K: 32 more bytes, byte `4j + t` bit `k` = bit 4 of column `4k + t`;
//! * Q6_K: 64 more bytes, vector `p` (0..2), byte `4j + t` bits `2(k - 4p) ..` = bits 4..6 of
//!   column `4k + t`, for chunks `k` in `4p .. 4p + 4`;
//! * the scales of the 8 rows side by side (`dw`, `mw`, `sc0`, `sc1` as the format has them).
//!
//! A last partial group is padded with zero quants and zero scales; its extra outputs are
//! dropped.
//!
//! # The one accumulation order
//!
//! With activation block `b` quantized to `x` (32 int8, never -128) with scale `dx`, its
//! integer half sums `X0 = sum x[0..16]`, `X1 = sum x[16..32]`, and `sx = dx * ((X0 + X1) as
//! f32)` (computed once per activation block), every output is
//!
//! ```text
//! acc = 0.0f32
//! for b in 0 .. cols / 32:                                  // blocks in increasing order
//!     P0, P1 = exact i32 sums of u * x over columns 0..16 and 16..32
//!     I0, I1 = P0 - offset * X0, P1 - offset * X1          // offset: 8 Q4_0, 32 Q6_K, else 0
//!     isum   = sc0 * I0 + sc1 * I1   (Q6_K)   |   I0 + I1   (others)
//!     acc = acc + ((isum as f32) * dw[b]) * dx[b]
//!     acc = acc + mw[b] * sx[b]                             // Q4_1, Q4_K, Q5_K only
//! ```
//!
//! with a separate f32 rounding for every product and sum (no fused multiply-add). The
//! integer sums are exact whatever their order (|isum| < 2^24 in every format, so `isum as
//! f32` is exact too), so the f32 lines above are the only roundings; the portable kernel
//! ([`portable::group`]) and the AVX2 kernels (`avx2::group` for up to 3 activation rows,
//! accumulators in registers; `avx2::group_rows` for tiles of [`WIDE_ROWS`], each group
//! block unpacked once for the whole tile) all perform exactly them, in that order, per
//! output. The number of activation rows sharing a call, the thread count
//! and the CPU never change a bit of any output. Q4_0 computes the same integer `isum` as
//! [`crate::int8`] does with the offset applied to the weights, so both give Q4_0 the same
//! bits.
//!
//! # Adding an instruction set
//!
//! [`Isa`] names the kernels; [`Isa::detect`] picks one at run time and [`kernel`] dispatches
//! to it. A new one (AVX-512 VNNI, NEON) is a module with a `group` function of the same
//! signature, a variant, a line in each, and a place in the bit tests, which compare every
//! kernel the CPU can run against the portable one.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::int8::quantize_activations;

mod portable;

#[cfg(target_arch = "x86_64")]
mod avx2;

const BLOCK: usize = 32;
/// Outputs (weight rows) per packed group: one per 32-bit lane of an AVX2 register.
const LANES: usize = 8;
/// Bytes of the nibble part of one packed group block.
const NIBBLES: usize = LANES * BLOCK / 2;
/// Multiply-adds per parallel task, at least (see [`crate::int8`]).
const MACS_PER_TASK: usize = 1 << 17;
/// Activation rows per pass over a group's weights in the portable kernel (and the AVX2
/// kernel for calls of fewer rows than [`WIDE_ROWS`], where its accumulators stay in
/// registers).
const ACT_ROWS: usize = 4;
/// Activation rows per pass of the wide AVX2 kernel: each group block is unpacked once into
/// registers and applied to this many rows (a tile of the prefill GEMM).
const WIDE_ROWS: usize = 16;

/// The packed formats, as the `F` parameter of the kernels.
pub(crate) const Q4_0: u8 = 0;
pub(crate) const Q4_1: u8 = 1;
pub(crate) const Q4K: u8 = 2;
pub(crate) const Q5K: u8 = 3;
pub(crate) const Q6K: u8 = 4;

/// Bits per quant.
const fn bits(f: u8) -> usize {
    match f {
        Q5K => 5,
        Q6K => 6,
        _ => 4,
    }
}

/// What is subtracted from every quant.
const fn offset(f: u8) -> i32 {
    match f {
        Q4_0 => 8,
        Q6K => 32,
        _ => 0,
    }
}

/// Whether the format adds `mw * sx` per block.
const fn has_min(f: u8) -> bool {
    matches!(f, Q4_1 | Q4K | Q5K)
}

/// Bytes of one packed group block.
const fn packed_bytes(f: u8) -> usize {
    NIBBLES + (bits(f) - 4) * LANES * BLOCK / 8
}

/// The kernels this build has, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The fastest kernel the CPU can run.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return Isa::Avx2;
        }
        Isa::Portable
    }

    /// Every kernel the CPU can run (the bit tests compare them all).
    #[cfg(test)]
    fn all() -> Vec<Self> {
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            all.push(Isa::Avx2);
        }
        all
    }
}

/// A (rows, cols) matrix in one of the packed formats.
#[derive(Debug)]
pub struct PackedMatrix {
    format: u8,
    rows: usize,
    cols: usize,
    /// `groups * blocks` packed group blocks of [`packed_bytes`] each.
    quants: Vec<u8>,
    /// `dw` of weight row `8g + j`, block `b` at `[g * blocks + b][j]`; likewise `mw` (empty
    /// without a min) and Q6_K's `sc` (`[.., ..][0]` for columns 0..16, `[1]` for 16..32).
    dw: Vec<[f32; LANES]>,
    mw: Vec<[f32; LANES]>,
    sc: Vec<[[i32; LANES]; 2]>,
}

/// One weight row's block as read from the file: quants and scales.
struct RowBlock {
    u: [u8; BLOCK],
    dw: f32,
    mw: f32,
    sc: [i32; 2],
}

fn f16_at(raw: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([raw[at], raw[at + 1]]).to_f32()
}

/// Q4_K/Q5_K's 6-bit scale and min of sub-block `j` (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The format of a ggml type, its bytes per file block and columns per file block.
fn format_of(dtype: GgmlDType) -> Option<(u8, usize, usize)> {
    Some(match dtype {
        GgmlDType::Q4_0 => (Q4_0, 18, 32),
        GgmlDType::Q4_1 => (Q4_1, 20, 32),
        GgmlDType::Q4K => (Q4K, 144, 256),
        GgmlDType::Q5K => (Q5K, 176, 256),
        GgmlDType::Q6K => (Q6K, 210, 256),
        _ => return None,
    })
}

/// The blocks of 32 of one file block, in column order (as ggml's `dequantize_row_*` reads
/// them).
fn read_file_block(format: u8, raw: &[u8], out: &mut Vec<RowBlock>) {
    let mut block = |u: [u8; BLOCK], dw: f32, mw: f32, sc: [i32; 2]| {
        out.push(RowBlock { u, dw, mw, sc });
    };
    let nibbles = |qs: &[u8]| -> [u8; BLOCK] {
        std::array::from_fn(|i| if i < 16 { qs[i] & 0xF } else { qs[i - 16] >> 4 })
    };
    match format {
        Q4_0 => block(nibbles(&raw[2..18]), f16_at(raw, 0), 0.0, [1, 1]),
        Q4_1 => block(nibbles(&raw[4..20]), f16_at(raw, 0), f16_at(raw, 2), [1, 1]),
        Q4K | Q5K => {
            let (d, dmin) = (f16_at(raw, 0), f16_at(raw, 2));
            let scales = &raw[4..16];
            let (qh, qs) = if format == Q5K {
                (&raw[16..48], &raw[48..176])
            } else {
                (&raw[0..0], &raw[16..144])
            };
            for pair in 0..4 {
                let ql = &qs[32 * pair..32 * pair + 32];
                for half in 0..2 {
                    let j = 2 * pair + half;
                    let (sc, m) = scale_min_k4(j, scales);
                    let u = std::array::from_fn(|l| {
                        let low = if half == 0 { ql[l] & 0xF } else { ql[l] >> 4 };
                        let high = if format == Q5K { (qh[l] >> j) & 1 } else { 0 };
                        low | (high << 4)
                    });
                    block(u, d * f32::from(sc), -(dmin * f32::from(m)), [1, 1]);
                }
            }
        }
        _ => {
            // Q6_K: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 int8 scales, d.
            let (ql, qh, scales) = (&raw[0..128], &raw[128..192], &raw[192..208]);
            let d = f16_at(raw, 208);
            for n in 0..2 {
                let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
                for quarter in 0..4 {
                    let u = std::array::from_fn(|l| {
                        let low = match quarter {
                            0 => ql[l] & 0xF,
                            1 => ql[l + 32] & 0xF,
                            2 => ql[l] >> 4,
                            _ => ql[l + 32] >> 4,
                        };
                        low | (((qh[l] >> (2 * quarter)) & 3) << 4)
                    });
                    let sc = |i: usize| i32::from(scales[8 * n + 2 * quarter + i] as i8);
                    block(u, d, 0.0, [sc(0), sc(1)]);
                }
            }
        }
    }
}

impl PackedMatrix {
    /// From a (rows, cols) tensor of a packed format; `None` for other types and shapes.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let (rows, cols) = match q.shape().dims() {
            [r, c] => (*r, *c),
            _ => return Ok(None),
        };
        let Some((format, file_bytes, file_cols)) = format_of(q.dtype()) else {
            return Ok(None);
        };
        let data = q.data()?;
        if cols == 0
            || rows == 0
            || !cols.is_multiple_of(file_cols)
            || data.len() != rows * (cols / file_cols) * file_bytes
        {
            return Ok(None);
        }
        let blocks = cols / BLOCK;
        let groups = rows.div_ceil(LANES);
        let bytes = packed_bytes(format);
        let mut m = Self {
            format,
            rows,
            cols,
            quants: vec![0u8; groups * blocks * bytes],
            dw: vec![[0f32; LANES]; groups * blocks],
            mw: if has_min(format) {
                vec![[0f32; LANES]; groups * blocks]
            } else {
                vec![]
            },
            sc: if format == Q6K {
                vec![[[0i32; LANES]; 2]; groups * blocks]
            } else {
                vec![]
            },
        };
        let mut row = Vec::with_capacity(blocks);
        for (r, raw_row) in data.chunks_exact(cols / file_cols * file_bytes).enumerate() {
            row.clear();
            for raw in raw_row.chunks_exact(file_bytes) {
                read_file_block(format, raw, &mut row);
            }
            for (b, rb) in row.iter().enumerate() {
                m.put(r, b, rb);
            }
        }
        Ok(Some(m))
    }

    /// Store block `b` of weight row `r`.
    fn put(&mut self, r: usize, b: usize, rb: &RowBlock) {
        let blocks = self.cols / BLOCK;
        let (g, j) = (r / LANES, r % LANES);
        let gb = g * blocks + b;
        let bytes = packed_bytes(self.format);
        let q = &mut self.quants[gb * bytes..(gb + 1) * bytes];
        for (c, &u) in rb.u.iter().enumerate() {
            let (k, t) = (c / 4, c % 4);
            let at = (k % 4) * 32 + 4 * j + t;
            q[at] |= if k < 4 { u & 0xF } else { (u & 0xF) << 4 };
            let high = u >> 4;
            match self.format {
                Q5K => q[NIBBLES + 4 * j + t] |= (high & 1) << k,
                Q6K => q[NIBBLES + (k / 4) * 32 + 4 * j + t] |= (high & 3) << (2 * (k % 4)),
                _ => {}
            }
        }
        self.dw[gb][j] = rb.dw;
        if has_min(self.format) {
            self.mw[gb][j] = rb.mw;
        }
        if self.format == Q6K {
            self.sc[gb][0][j] = rb.sc[0];
            self.sc[gb][1][j] = rb.sc[1];
        }
    }

    /// The unsigned quants of group block `gb`, `[row in group][column]` (the reference
    /// reading of the layout; the kernels unpack the same in registers).
    fn unpack(&self, gb: usize) -> [[u8; BLOCK]; LANES] {
        let bytes = packed_bytes(self.format);
        portable::unpack(self.format, &self.quants[gb * bytes..(gb + 1) * bytes])
    }

    /// The weights in f32, (rows, cols): `dw * (u - offset) * sc + mw` per block half.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let blocks = self.cols / BLOCK;
        let mut data = vec![0f32; self.rows * self.cols];
        for (r, row) in data.chunks_exact_mut(self.cols).enumerate() {
            let (g, j) = (r / LANES, r % LANES);
            for (b, out) in row.chunks_exact_mut(BLOCK).enumerate() {
                let gb = g * blocks + b;
                let u = self.unpack(gb)[j];
                for (c, v) in out.iter_mut().enumerate() {
                    let q = i32::from(u[c]) - offset(self.format);
                    *v = match self.format {
                        Q6K => self.dw[gb][j] * self.sc[gb][c / 16][j] as f32 * q as f32,
                        _ if has_min(self.format) => self.dw[gb][j] * q as f32 + self.mw[gb][j],
                        _ => self.dw[gb][j] * q as f32,
                    };
                }
            }
        }
        Ok(Tensor::from_vec(data, (self.rows, self.cols), device)?)
    }

    /// `xs` (..., cols) times the transposed weights: (..., rows). Each output is the same
    /// sum in the same order whatever the number of rows, threads or CPU (module comment).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_on(xs, Isa::detect())
    }

    fn forward_on(&self, xs: &Tensor, isa: Isa) -> Result<Tensor> {
        let mut shape = xs.dims().to_vec();
        let x: Vec<f32> = xs.flatten_all()?.to_vec1()?;
        let out = self.matmul(&x, isa);
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Ok(Tensor::from_vec(out, shape, xs.device())?)
    }

    /// Row-major `x` (m, cols) times the transposed weights: row-major (m, rows).
    fn matmul(&self, x: &[f32], isa: Isa) -> Vec<f32> {
        let acts = Acts::quantize(x, self.cols, isa);
        let m = acts.rows;
        let groups = self.rows.div_ceil(LANES);
        // (group, activation row, lane).
        let mut by_group = vec![0f32; groups * m * LANES];
        if m == 0 {
            return by_group;
        }
        // How groups are split across tasks changes no output: each is computed alone.
        let per_task = MACS_PER_TASK.div_ceil(LANES * self.cols * m).max(1);
        let task = |(task, chunk): (usize, &mut [f32])| {
            for (i, out) in chunk.chunks_exact_mut(m * LANES).enumerate() {
                self.group(task * per_task + i, &acts, out, isa);
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

    /// Group `g` times every activation row, into `out` (activation row, lane): on AVX2 from
    /// [`ACT_ROWS`] rows on in tiles of [`WIDE_ROWS`] rows (the wide kernel), otherwise in
    /// tiles of [`ACT_ROWS`] rows.
    fn group(&self, g: usize, acts: &Acts, out: &mut [f32], isa: Isa) {
        let blocks = self.cols / BLOCK;
        let span = g * blocks..(g + 1) * blocks;
        let bytes = packed_bytes(self.format);
        let w = Group {
            q: &self.quants[span.start * bytes..span.end * bytes],
            dw: &self.dw[span.clone()],
            mw: self.mw.get(span.clone()).unwrap_or(&[]),
            sc: self.sc.get(span).unwrap_or(&[]),
        };
        let outs = out.as_chunks_mut::<LANES>().0;
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 && outs.len() >= ACT_ROWS {
            for (t, ys) in outs.chunks_mut(WIDE_ROWS).enumerate() {
                let a = t * WIDE_ROWS;
                let rows: [ActRow; WIDE_ROWS] =
                    std::array::from_fn(|r| acts.row(a + r.min(ys.len() - 1)));
                let x = &rows[..ys.len()];
                match self.format {
                    Q4_0 => avx2::group_rows::<Q4_0>(&w, x, ys),
                    Q4_1 => avx2::group_rows::<Q4_1>(&w, x, ys),
                    Q4K => avx2::group_rows::<Q4K>(&w, x, ys),
                    Q5K => avx2::group_rows::<Q5K>(&w, x, ys),
                    _ => avx2::group_rows::<Q6K>(&w, x, ys),
                }
            }
            return;
        }
        let mut a = 0;
        while a < outs.len() {
            let n = ACT_ROWS.min(outs.len() - a);
            let ys = &mut outs[a..a + n];
            match n {
                ACT_ROWS => ys.copy_from_slice(&kernel::<ACT_ROWS>(self.format, &w, acts, a, isa)),
                3 => ys.copy_from_slice(&kernel::<3>(self.format, &w, acts, a, isa)),
                2 => ys.copy_from_slice(&kernel::<2>(self.format, &w, acts, a, isa)),
                _ => ys.copy_from_slice(&kernel::<1>(self.format, &w, acts, a, isa)),
            }
            a += n;
        }
    }
}

/// One group's packed blocks and scales (`mw`, `sc` empty where the format has none).
struct Group<'a> {
    q: &'a [u8],
    dw: &'a [[f32; LANES]],
    mw: &'a [[f32; LANES]],
    sc: &'a [[[i32; LANES]; 2]],
}

/// Quantized activation rows, per block: quants, scale `d`, integer half sums `x` and `sd`
/// (`d * (x[0] + x[1]) as f32`).
struct Acts {
    rows: usize,
    blocks: usize,
    q: Vec<[i8; BLOCK]>,
    d: Vec<f32>,
    sums: Vec<[i32; 2]>,
    sd: Vec<f32>,
}

impl Acts {
    fn quantize(x: &[f32], cols: usize, isa: Isa) -> Self {
        let blocks = cols / BLOCK;
        let rows = x.len() / cols;
        let (q, d) = quantize_activations(x, cols, isa != Isa::Portable);
        let q = q.as_chunks::<BLOCK>().0.to_vec();
        let sums: Vec<[i32; 2]> = q
            .iter()
            .map(|b| {
                let half = |h: &[i8]| h.iter().map(|&v| i32::from(v)).sum::<i32>();
                [half(&b[..16]), half(&b[16..])]
            })
            .collect();
        let sd = sums
            .iter()
            .zip(&d)
            .map(|(s, &d)| d * (s[0] + s[1]) as f32)
            .collect();
        Self {
            rows,
            blocks,
            q,
            d,
            sums,
            sd,
        }
    }

    /// Row `a`'s blocks.
    fn row(&self, a: usize) -> ActRow<'_> {
        let span = a * self.blocks..(a + 1) * self.blocks;
        ActRow {
            q: &self.q[span.clone()],
            d: &self.d[span.clone()],
            sums: &self.sums[span.clone()],
            sd: &self.sd[span],
        }
    }
}

#[derive(Clone, Copy)]
struct ActRow<'a> {
    q: &'a [[i8; BLOCK]],
    d: &'a [f32],
    sums: &'a [[i32; 2]],
    sd: &'a [f32],
}

/// Group `w` times activation rows `a .. a + R` on `isa`.
#[inline(always)]
fn kernel<const R: usize>(
    format: u8,
    w: &Group,
    acts: &Acts,
    a: usize,
    isa: Isa,
) -> [[f32; LANES]; R] {
    let x: [ActRow; R] = std::array::from_fn(|r| acts.row(a + r));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match format {
            Q4_0 => avx2::group::<Q4_0, R>(w, x),
            Q4_1 => avx2::group::<Q4_1, R>(w, x),
            Q4K => avx2::group::<Q4K, R>(w, x),
            Q5K => avx2::group::<Q5K, R>(w, x),
            _ => avx2::group::<Q6K, R>(w, x),
        },
        Isa::Portable => match format {
            Q4_0 => portable::group::<Q4_0, R>(w, x),
            Q4_1 => portable::group::<Q4_1, R>(w, x),
            Q4K => portable::group::<Q4K, R>(w, x),
            Q5K => portable::group::<Q5K, R>(w, x),
            _ => portable::group::<Q6K, R>(w, x),
        },
    }
}

#[cfg(test)]
mod tests;
