//! Exact f32 kernels for decoding and auditing: a dense matmul and a per-row attention whose
//! every output value is computed in one fixed order of operations, whatever the number of
//! rows in the call, the blocking, the thread count or the CPU's vector width.
//!
//! Why: an audit recomputes all the output positions of an answer at once, and must get the
//! bits decode got one position at a time. A tiled GEMM sums in an order that depends on the
//! shape of the call, and the next layer's int8 activation rounding (quantized models) turns a
//! last-bit difference into a different token often enough to fail honest providers. Here a
//! dot product of length k is always: eight lane accumulators over k in chunks of eight
//! (`acc[l] += x[8c + l] * w[8c + l]`, a multiply then an add, never fused), the fixed
//! reduction `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`, then the tail in order.
//! Rust never contracts `a * b + c` into a fused multiply-add, so a build without AVX2 or FMA
//! gets the same bits as one with them; AVX2 only runs the same operations eight at a time.
//!
//! The matmul is register-blocked (four rows by two columns per micro-kernel, each weight
//! chunk loaded once for four rows) and split across threads by column blocks, so a batch of
//! n rows costs far less than n single-row passes.

use rayon::prelude::*;

const LANES: usize = 8;
/// Rows and columns of the multi-row micro-kernel.
const MR: usize = 4;
const NR: usize = 2;
/// Columns of the single-row micro-kernel (decode): independent accumulators for the adds.
const NR1: usize = 4;
/// Multiply-adds a parallel task should hold at least, to amortize scheduling.
const MIN_TASK_WORK: usize = 1 << 15;
/// Columns per task are a multiple of this (both micro-kernels' widths divide it).
const COL_ALIGN: usize = 4;

/// The fixed reduction of eight lanes, then the tail `x[i] * w[i]` added in order.
#[inline(always)]
fn finish(acc: &[f32; LANES], x_tail: &[f32], w_tail: &[f32]) -> f32 {
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (a, b) in x_tail.iter().zip(w_tail) {
        s += a * b;
    }
    s
}

/// One dot product in the fixed order (the reference every kernel below reproduces).
#[inline(always)]
fn dot_portable(x: &[f32], w: &[f32]) -> f32 {
    let (xc, xt) = x.as_chunks::<LANES>();
    let (wc, wt) = w.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (a, b) in xc.iter().zip(wc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    finish(&acc, xt, wt)
}

/// `R` rows by `C` columns, every element the fixed-order dot product of its row and column.
#[inline(always)]
fn micro<const R: usize, const C: usize>(
    xs: [&[[f32; LANES]]; R],
    ws: [&[[f32; LANES]]; C],
    chunks: usize,
) -> [[[f32; LANES]; C]; R] {
    let xs = xs.map(|x| &x[..chunks]);
    let ws = ws.map(|w| &w[..chunks]);
    let mut acc = [[[0f32; LANES]; C]; R];
    for c in 0..chunks {
        let wv: [[f32; LANES]; C] = std::array::from_fn(|j| ws[j][c]);
        for r in 0..R {
            let xv = xs[r][c];
            for j in 0..C {
                for l in 0..LANES {
                    acc[r][j][l] += xv[l] * wv[j][l];
                }
            }
        }
    }
    acc
}

/// The output of `x` (m, k) times the transposed block `w` (cols, k), written transposed into
/// `out` (cols, m).
#[inline(always)]
fn column_block_portable(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    let chunks = k / LANES;
    let tail = chunks * LANES;
    let xrows: Vec<&[f32]> = x.chunks_exact(k).take(m).collect();
    let xc: Vec<&[[f32; LANES]]> = xrows.iter().map(|r| r.as_chunks::<LANES>().0).collect();
    let wrows: Vec<&[f32]> = w.chunks_exact(k).collect();
    let wc: Vec<&[[f32; LANES]]> = wrows.iter().map(|r| r.as_chunks::<LANES>().0).collect();
    let cols = wrows.len();
    let mut put = |r: usize, j: usize, acc: &[f32; LANES]| {
        if let Some(o) = out.get_mut(j * m + r) {
            *o = finish(acc, &xrows[r][tail..], &wrows[j][tail..]);
        }
    };
    let wide = if m >= MR { NR } else { NR1 };
    let mut j = 0;
    while j + wide <= cols {
        let mut r = 0;
        if wide == NR {
            while r + MR <= m {
                let acc = micro::<MR, NR>(
                    std::array::from_fn(|i| xc[r + i]),
                    std::array::from_fn(|i| wc[j + i]),
                    chunks,
                );
                for (i, row) in acc.iter().enumerate() {
                    for (jj, a) in row.iter().enumerate() {
                        put(r + i, j + jj, a);
                    }
                }
                r += MR;
            }
            while r < m {
                let [row] = micro::<1, NR>([xc[r]], std::array::from_fn(|i| wc[j + i]), chunks);
                for (jj, a) in row.iter().enumerate() {
                    put(r, j + jj, a);
                }
                r += 1;
            }
        } else {
            while r < m {
                let [row] = micro::<1, NR1>([xc[r]], std::array::from_fn(|i| wc[j + i]), chunks);
                for (jj, a) in row.iter().enumerate() {
                    put(r, j + jj, a);
                }
                r += 1;
            }
        }
        j += wide;
    }
    while j < cols {
        for (r, xr) in xc.iter().enumerate() {
            let [[a]] = micro::<1, 1>([xr], [wc[j]], chunks);
            put(r, j, &a);
        }
        j += 1;
    }
}

fn column_block(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
        // calling a function compiled with it enabled.
        #[allow(unsafe_code)]
        return unsafe { column_block_avx2(x, m, w, k, out) };
    }
    column_block_portable(x, m, w, k, out)
}

/// The same operations as the portable kernel, eight lanes to a register. FMA stays off:
/// without it the compiler cannot fuse, and the bits are those of any other build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn column_block_avx2(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    column_block_portable(x, m, w, k, out)
}

/// `x` (m, k) times the transpose of `w` (n, k), both row-major: (m, n) row-major. Each
/// value is the fixed-order dot product of its row and column, so row i is bit-identical
/// whether it is computed alone or with other rows, on any number of threads. Returns `None`
/// when the slices do not hold m * k and n * k values.
pub fn matmul_t(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Option<Vec<f32>> {
    if k == 0 || x.len() != m.checked_mul(k)? || w.len() != n.checked_mul(k)? {
        return None;
    }
    let work = m * k;
    let cols = MIN_TASK_WORK
        .div_ceil(work.max(1))
        .next_multiple_of(COL_ALIGN)
        .clamp(COL_ALIGN, n.next_multiple_of(COL_ALIGN).max(COL_ALIGN));
    // Computed transposed, (n, m), so that each task owns a contiguous slice of the output.
    let mut by_col = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Some(by_col);
    }
    by_col
        .par_chunks_mut(cols * m)
        .zip(w.par_chunks(cols * k))
        .for_each(|(out, wb)| column_block(x, m, wb, k, out));
    if m == 1 {
        return Some(by_col);
    }
    let mut out = vec![0f32; m * n];
    for (j, col) in by_col.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            if let Some(o) = out.get_mut(i * n + j) {
                *o = *v;
            }
        }
    }
    Some(out)
}

/// Keys or values of a cache: (batch, kv_heads, time, head_dim) at the given strides, the
/// last one 1.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub batch_stride: usize,
    pub head_stride: usize,
    pub time_stride: usize,
}

impl KvView<'_> {
    fn row(&self, b: usize, g: usize, t: usize, d: usize) -> Option<&[f32]> {
        let at = self.offset + b * self.batch_stride + g * self.head_stride + t * self.time_stride;
        self.data.get(at..at + d)
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Query positions in this call, the last `t` of `total`.
    pub t: usize,
    /// Positions held in the cache, these `t` included.
    pub total: usize,
}

/// Causal attention of the last `t` positions, each row computed on its own exactly as a
/// decode step (t = 1) computes it: query position i sees keys 0..=total - t + i. Scores are
/// the fixed-order dot product times `scale`; softmax subtracts the maximum, exponentiates
/// and divides by the sum taken in key order; the output sums the weighted values in key
/// order. `q` is (batch, heads, t, head_dim) contiguous; the result is (batch, t, heads *
/// head_dim). `None` if the shapes do not fit the data.
pub fn attention(
    q: &[f32],
    k: KvView<'_>,
    v: KvView<'_>,
    s: AttnShape,
    scale: f32,
) -> Option<Vec<f32>> {
    let d = s.head_dim;
    if d == 0 || s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) || s.t > s.total {
        return None;
    }
    if q.len() != s.batch * s.heads * s.t * d {
        return None;
    }
    let rep = s.heads / s.kv_heads;
    let items = s.batch * s.t * s.heads;
    let mut out = vec![0f32; items * d];
    // Small calls (a decode step) stay on this thread.
    let min_len = (MIN_TASK_WORK / (s.total * d).max(1)).max(1);
    let failed = std::sync::atomic::AtomicBool::new(false);
    out.par_chunks_mut(d)
        .enumerate()
        .with_min_len(min_len)
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (item, o)| {
            // Output order (batch, t, heads).
            let h = item % s.heads;
            let i = (item / s.heads) % s.t;
            let b = item / (s.heads * s.t);
            let g = h / rep;
            let seen = s.total - s.t + i + 1;
            let qi = &q[((b * s.heads + h) * s.t + i) * d..][..d];
            if attend_row(qi, &k, &v, b, g, seen, d, scale, scores, o).is_none() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    if failed.into_inner() {
        return None;
    }
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn attend_row(
    q: &[f32],
    k: &KvView<'_>,
    v: &KvView<'_>,
    b: usize,
    g: usize,
    seen: usize,
    d: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Option<()> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
        // calling a function compiled with it enabled.
        #[allow(unsafe_code)]
        return unsafe { attend_row_avx2(q, k, v, b, g, seen, d, scale, scores, out) };
    }
    attend_row_portable(q, k, v, b, g, seen, d, scale, scores, out)
}

/// The same operations as the portable row, eight lanes to a register (no FMA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn attend_row_avx2(
    q: &[f32],
    k: &KvView<'_>,
    v: &KvView<'_>,
    b: usize,
    g: usize,
    seen: usize,
    d: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Option<()> {
    attend_row_portable(q, k, v, b, g, seen, d, scale, scores, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_row_portable(
    q: &[f32],
    k: &KvView<'_>,
    v: &KvView<'_>,
    b: usize,
    g: usize,
    seen: usize,
    d: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Option<()> {
    scores.clear();
    for j in 0..seen {
        scores.push(dot_portable(q, k.row(b, g, j, d)?) * scale);
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    out.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        let p = p / sum;
        for (o, x) in out.iter_mut().zip(v.row(b, g, j, d)?) {
            *o += p * x;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|l| f64::from(x[i * k + l]) * f64::from(w[j * k + l]))
                    .sum();
            }
        }
        out
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    #[test]
    fn rows_are_bit_identical_alone_in_batches_and_on_any_pool() {
        let mut rng = crate::init::SeededRng::new(7);
        // k with a tail (not a multiple of 8) and without; n with ragged column blocks.
        for (k, n) in [(256, 96), (203, 37), (5, 3), (688, 258)] {
            let m = 23;
            let x = rng.normals(m * k, 1.0);
            let w = rng.normals(n * k, 1.0);
            let full = matmul_t(&x, m, &w, n, k).expect("shapes");
            // Against an f64 reference, within f32 rounding of a sum of k products.
            let want = naive(&x, m, &w, n, k);
            for (a, b) in full.iter().zip(&want) {
                let tol = 1e-5 * (k as f64).sqrt() * (1.0 + b.abs());
                assert!((f64::from(*a) - b).abs() <= tol, "k {k}: {a} vs {b}");
            }
            // Every row alone, and inside batches of other sizes and offsets, on 1 to 3
            // threads: the same bits.
            for threads in [1, 2, 3] {
                pool(threads).install(|| {
                    for i in 0..m {
                        let alone = matmul_t(&x[i * k..(i + 1) * k], 1, &w, n, k).expect("row");
                        assert_eq!(alone, full[i * n..(i + 1) * n], "row {i} alone, k {k}");
                    }
                    for batch in [2, 3, 4, 5, 8, 13] {
                        for start in (0..m).step_by(batch) {
                            let rows = batch.min(m - start);
                            let part = matmul_t(&x[start * k..(start + rows) * k], rows, &w, n, k)
                                .expect("batch");
                            assert_eq!(
                                part,
                                full[start * n..(start + rows) * n],
                                "rows {start}..{} in a batch of {batch}, {threads} threads",
                                start + rows
                            );
                        }
                    }
                });
            }
            // The portable kernel (what a CPU without AVX2 runs) gives the same bits.
            let mut portable = vec![0f32; m * n];
            column_block_portable(&x, m, &w, k, &mut portable);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(portable[j * m + i], full[i * n + j]);
                }
            }
            for j in 0..n {
                assert_eq!(
                    dot_portable(&x[..k], &w[j * k..(j + 1) * k]),
                    full[j],
                    "dot, column {j}"
                );
            }
        }
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(matmul_t(&[1.0; 6], 2, &[1.0; 6], 2, 3).is_some());
        assert!(matmul_t(&[1.0; 5], 2, &[1.0; 6], 2, 3).is_none());
        assert!(matmul_t(&[1.0; 6], 2, &[1.0; 6], 2, 0).is_none());
        let kv = KvView {
            data: &[0.0; 8],
            offset: 0,
            batch_stride: 8,
            head_stride: 8,
            time_stride: 2,
        };
        let shape = AttnShape {
            batch: 1,
            heads: 1,
            kv_heads: 1,
            head_dim: 2,
            t: 1,
            total: 5,
        };
        // Five positions claimed, four held.
        assert!(attention(&[1.0, 2.0], kv, kv, shape, 1.0).is_none());
    }

    #[test]
    fn attention_rows_match_decode_steps_and_a_reference() {
        let mut rng = crate::init::SeededRng::new(9);
        let (batch, heads, kv_heads, d, total) = (2, 4, 2, 20, 11);
        let cap = 16;
        let kd = rng.normals(batch * kv_heads * cap * d, 1.0);
        let vd = rng.normals(batch * kv_heads * cap * d, 1.0);
        let view = |data| KvView {
            data,
            offset: 0,
            batch_stride: kv_heads * cap * d,
            head_stride: cap * d,
            time_stride: d,
        };
        let t = 6;
        let q = rng.normals(batch * heads * t * d, 1.0);
        let shape = AttnShape {
            batch,
            heads,
            kv_heads,
            head_dim: d,
            t,
            total,
        };
        let scale = 1.0 / (d as f32).sqrt();
        let all = attention(&q, view(&kd), view(&vd), shape, scale).expect("shapes");
        for threads in [1, 2] {
            pool(threads).install(|| {
                for i in 0..t {
                    // Row i as a decode step: one query, total - t + i + 1 keys.
                    let qi: Vec<f32> = (0..batch * heads)
                        .flat_map(|bh| q[(bh * t + i) * d..][..d].to_vec())
                        .collect();
                    let step = AttnShape {
                        t: 1,
                        total: total - t + i + 1,
                        ..shape
                    };
                    let one = attention(&qi, view(&kd), view(&vd), step, scale).expect("step");
                    for b in 0..batch {
                        let got = &all[(b * t + i) * heads * d..][..heads * d];
                        assert_eq!(got, &one[b * heads * d..][..heads * d], "row {i}");
                    }
                }
            });
        }
        // Against an f64 reference.
        for b in 0..batch {
            for i in 0..t {
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let seen = total - t + i + 1;
                    let qi = &q[((b * heads + h) * t + i) * d..][..d];
                    let at = |data: &[f32], j: usize| {
                        data[b * kv_heads * cap * d + g * cap * d + j * d..][..d].to_vec()
                    };
                    let sc: Vec<f64> = (0..seen)
                        .map(|j| {
                            qi.iter()
                                .zip(at(&kd, j))
                                .map(|(a, k)| f64::from(*a) * f64::from(k))
                                .sum::<f64>()
                                * f64::from(scale)
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 =
                            (0..seen).map(|j| e[j] / z * f64::from(at(&vd, j)[c])).sum();
                        let got = all[((b * t + i) * heads + h) * d + c];
                        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
                    }
                }
            }
        }
    }
}
