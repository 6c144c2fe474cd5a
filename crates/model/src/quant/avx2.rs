//! The AVX2 kernel, and all of this module's `unsafe`: one call into a function compiled with
//! AVX2 after checking that the CPU has it, 32-byte loads from arrays of exactly 32 bytes and
//! one 32-byte store into one.

#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256i, _mm256_add_epi16, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256,
    _mm256_cvtepi32_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_madd_epi16,
    _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_mullo_epi32, _mm256_or_si256, _mm256_set1_epi16,
    _mm256_set1_epi32, _mm256_set1_epi8, _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256,
    _mm256_slli_epi16, _mm256_srl_epi16, _mm256_srli_epi16, _mm256_storeu_ps, _mm256_sub_epi32,
    _mm_cvtsi32_si128,
};

use super::{bits, has_min, offset, packed_bytes, ActRow, Group, LANES, Q6K};

pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// [`super::portable::group`] with AVX2: the same results, bit for bit.
pub(super) fn group<const F: u8, const R: usize>(w: &Group, x: [ActRow; R]) -> [[f32; LANES]; R] {
    assert!(available(), "AVX2 kernel without AVX2");
    // SAFETY: the CPU supports AVX2 (asserted just above), the only requirement of calling a
    // function compiled with it enabled.
    unsafe { group_avx2::<F, R>(w, x) }
}

/// A 32-byte load.
#[inline(always)]
fn load(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: `bytes` is exactly the 32 bytes an unaligned load reads.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast::<__m256i>()) }
}

#[inline(always)]
fn load_ps(v: &[f32; LANES]) -> std::arch::x86_64::__m256 {
    // SAFETY: `v` is exactly the 32 bytes an unaligned load reads.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[inline(always)]
fn load_epi32(v: &[i32; LANES]) -> __m256i {
    // SAFETY: `v` is exactly the 32 bytes an unaligned load reads.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast::<__m256i>()) }
}

/// Four activation quants as one i32, to broadcast to every lane.
#[inline(always)]
fn four(x: &[i8; 32], at: usize) -> i32 {
    i32::from_le_bytes([
        x[at] as u8,
        x[at + 1] as u8,
        x[at + 2] as u8,
        x[at + 3] as u8,
    ])
}

/// Per block, chunk `k` of the unpacked quants (one 32-byte register: 4 columns of the 8
/// rows) meets the 4 matching activation bytes broadcast to every lane: `maddubs` multiplies
/// the unsigned quants by the signed activations and adds pairs into i16, exactly (a pair is
/// at most 2 * 63 * 127). Those i16 partial sums are added over as many chunks as cannot
/// overflow i16 (8 chunks of 4-bit quants: 16 * 15 * 127 = 30480; 4 of 5-bit: 8 * 31 * 127 =
/// 31496; 2 of 6-bit: 4 * 63 * 127 = 32004) and widened to i32 by `madd` with ones, exactly.
/// Columns 0..16 (chunks 0..4) and 16..32 (chunks 4..8) are kept apart where Q6_K needs its
/// two sub-scales. Then the integer `isum` and the f32 steps of the module comment, with
/// separate multiplies and adds (no FMA), block after block.
#[target_feature(enable = "avx2")]
fn group_avx2<const F: u8, const R: usize>(w: &Group, x: [ActRow; R]) -> [[f32; LANES]; R] {
    let bytes = packed_bytes(F);
    // Every slice cut to the same number of blocks, so the loop needs no checks.
    let mut n = (w.q.len() / bytes).min(w.dw.len());
    if has_min(F) {
        n = n.min(w.mw.len());
    }
    if F == Q6K {
        n = n.min(w.sc.len());
    }
    for xr in &x {
        n = n
            .min(xr.q.len())
            .min(xr.d.len())
            .min(xr.sums.len())
            .min(xr.sd.len());
    }
    let low = _mm256_set1_epi8(0x0F);
    let high_mask = _mm256_set1_epi8(if bits(F) == 5 { 1 } else { 3 });
    let ones = _mm256_set1_epi16(1);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..n {
        let q = &w.q[b * bytes..(b + 1) * bytes];
        let vecs = q.as_chunks::<32>().0;
        let (h0, h1) = match bits(F) {
            5 => (load(&vecs[4]), zero),
            6 => (load(&vecs[4]), load(&vecs[5])),
            _ => (zero, zero),
        };
        // i16 partial sums of columns 0..16 and 16..32, and their i32 totals.
        let mut a0 = [zero; R];
        let mut a1 = [zero; R];
        let mut s0 = [zero; R];
        let mut s1 = [zero; R];
        for (v, nibbles) in vecs.iter().take(4).enumerate() {
            let nv = load(nibbles);
            let mut lo = _mm256_and_si256(nv, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(nv), low);
            // The high bits of chunks v and v + 4, moved to bit 4 (a shifted-in bit from the
            // neighbouring byte is masked off: the shifts are at most 7).
            let (shift_lo, shift_hi, plane_hi) = match bits(F) {
                5 => (v as i32, v as i32 + 4, h0),
                _ => (2 * v as i32, 2 * v as i32, h1),
            };
            if bits(F) > 4 {
                let part = |plane, shift| {
                    let at = _mm256_srl_epi16(plane, _mm_cvtsi32_si128(shift));
                    _mm256_slli_epi16::<4>(_mm256_and_si256(at, high_mask))
                };
                lo = _mm256_or_si256(lo, part(h0, shift_lo));
                hi = _mm256_or_si256(hi, part(plane_hi, shift_hi));
            }
            for r in 0..R {
                let xb = &x[r].q[b];
                let xl = _mm256_set1_epi32(four(xb, 4 * v));
                let xh = _mm256_set1_epi32(four(xb, 4 * v + 16));
                a0[r] = _mm256_add_epi16(a0[r], _mm256_maddubs_epi16(lo, xl));
                a1[r] = _mm256_add_epi16(a1[r], _mm256_maddubs_epi16(hi, xh));
                if bits(F) == 6 && v % 2 == 1 {
                    s0[r] = _mm256_add_epi32(s0[r], _mm256_madd_epi16(a0[r], ones));
                    s1[r] = _mm256_add_epi32(s1[r], _mm256_madd_epi16(a1[r], ones));
                    a0[r] = zero;
                    a1[r] = zero;
                }
            }
        }
        let dw = load_ps(&w.dw[b]);
        for r in 0..R {
            let xr = &x[r];
            let isum = match bits(F) {
                4 => _mm256_madd_epi16(_mm256_add_epi16(a0[r], a1[r]), ones),
                5 => _mm256_add_epi32(
                    _mm256_madd_epi16(a0[r], ones),
                    _mm256_madd_epi16(a1[r], ones),
                ),
                _ => {
                    let [x0, x1] = xr.sums[b];
                    let i0 = _mm256_sub_epi32(s0[r], _mm256_set1_epi32(offset(F) * x0));
                    let i1 = _mm256_sub_epi32(s1[r], _mm256_set1_epi32(offset(F) * x1));
                    _mm256_add_epi32(
                        _mm256_mullo_epi32(load_epi32(&w.sc[b][0]), i0),
                        _mm256_mullo_epi32(load_epi32(&w.sc[b][1]), i1),
                    )
                }
            };
            let isum = if F != Q6K && offset(F) != 0 {
                let [x0, x1] = xr.sums[b];
                _mm256_sub_epi32(isum, _mm256_set1_epi32(offset(F) * (x0 + x1)))
            } else {
                isum
            };
            let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dw);
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(scaled, _mm256_set1_ps(xr.d[b])));
            if has_min(F) {
                let m = _mm256_mul_ps(load_ps(&w.mw[b]), _mm256_set1_ps(xr.sd[b]));
                acc[r] = _mm256_add_ps(acc[r], m);
            }
        }
    }
    acc.map(|v| {
        let mut out = [0f32; LANES];
        // SAFETY: `out` is a `[f32; 8]`, exactly the 32 bytes an unaligned store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    })
}

/// [`super::portable::group`] with AVX2 over any number of activation rows at once: the
/// same results, bit for bit. Each group block is unpacked once into eight registers and
/// applied to every row of `x`; the f32 accumulators live in `out` (zeroed here), so the
/// number of rows is not bounded by the register file.
pub(super) fn group_rows<const F: u8>(w: &Group, x: &[ActRow], out: &mut [[f32; LANES]]) {
    assert!(available(), "AVX2 kernel without AVX2");
    // SAFETY: the CPU supports AVX2 (asserted just above), the only requirement of calling a
    // function compiled with it enabled.
    unsafe { group_rows_avx2::<F>(w, x, out) }
}

#[inline(always)]
fn load_acc(v: &[f32; LANES]) -> std::arch::x86_64::__m256 {
    load_ps(v)
}

#[inline(always)]
fn store_acc(v: &mut [f32; LANES], acc: std::arch::x86_64::__m256) {
    // SAFETY: `v` is a `[f32; 8]`, exactly the 32 bytes an unaligned store writes.
    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), acc) }
}

/// The integer sums are exact in any order (i16 partial sums bounded as in
/// [`group_avx2`]: 8 chunks of 4-bit quants, 4 of 5-bit, 2 of 6-bit per i16 sum), so they
/// are taken as a tree; the f32 steps are those of the module comment, per row and block,
/// in block order.
#[target_feature(enable = "avx2")]
fn group_rows_avx2<const F: u8>(w: &Group, x: &[ActRow], out: &mut [[f32; LANES]]) {
    let bytes = packed_bytes(F);
    let rows = x.len().min(out.len());
    let (x, out) = (&x[..rows], &mut out[..rows]);
    // Every slice cut to the same number of blocks.
    let mut n = (w.q.len() / bytes).min(w.dw.len());
    if has_min(F) {
        n = n.min(w.mw.len());
    }
    if F == Q6K {
        n = n.min(w.sc.len());
    }
    for xr in x {
        n = n
            .min(xr.q.len())
            .min(xr.d.len())
            .min(xr.sums.len())
            .min(xr.sd.len());
    }
    let low = _mm256_set1_epi8(0x0F);
    let high_mask = _mm256_set1_epi8(if bits(F) == 5 { 1 } else { 3 });
    let ones = _mm256_set1_epi16(1);
    let zero = _mm256_setzero_si256();
    for o in out.iter_mut() {
        *o = [0f32; LANES];
    }
    for b in 0..n {
        let q = &w.q[b * bytes..(b + 1) * bytes];
        let vecs = q.as_chunks::<32>().0;
        let (h0, h1) = match bits(F) {
            5 => (load(&vecs[4]), zero),
            6 => (load(&vecs[4]), load(&vecs[5])),
            _ => (zero, zero),
        };
        // u[k]: chunk k of the block, columns 4k .. 4k + 4 of the 8 rows, unsigned quants.
        let mut u = [zero; 8];
        for (v, nibbles) in vecs.iter().take(4).enumerate() {
            let nv = load(nibbles);
            let mut lo = _mm256_and_si256(nv, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(nv), low);
            let (shift_lo, shift_hi, plane_hi) = match bits(F) {
                5 => (v as i32, v as i32 + 4, h0),
                _ => (2 * v as i32, 2 * v as i32, h1),
            };
            if bits(F) > 4 {
                let part = |plane, shift| {
                    let at = _mm256_srl_epi16(plane, _mm_cvtsi32_si128(shift));
                    _mm256_slli_epi16::<4>(_mm256_and_si256(at, high_mask))
                };
                lo = _mm256_or_si256(lo, part(h0, shift_lo));
                hi = _mm256_or_si256(hi, part(plane_hi, shift_hi));
            }
            u[v] = lo;
            u[v + 4] = hi;
        }
        let dw = load_ps(&w.dw[b]);
        let mw = if has_min(F) {
            load_ps(&w.mw[b])
        } else {
            _mm256_setzero_ps()
        };
        let (sc0, sc1) = if F == Q6K {
            (load_epi32(&w.sc[b][0]), load_epi32(&w.sc[b][1]))
        } else {
            (zero, zero)
        };
        for (xr, o) in x.iter().zip(out.iter_mut()) {
            let xb = &xr.q[b];
            let m = |k: usize| _mm256_maddubs_epi16(u[k], _mm256_set1_epi32(four(xb, 4 * k)));
            let pair = |k: usize| _mm256_add_epi16(m(k), m(k + 1));
            let isum = match bits(F) {
                4 => {
                    let s = _mm256_add_epi16(
                        _mm256_add_epi16(pair(0), pair(2)),
                        _mm256_add_epi16(pair(4), pair(6)),
                    );
                    let s = _mm256_madd_epi16(s, ones);
                    if offset(F) != 0 {
                        let [x0, x1] = xr.sums[b];
                        _mm256_sub_epi32(s, _mm256_set1_epi32(offset(F) * (x0 + x1)))
                    } else {
                        s
                    }
                }
                5 => _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_add_epi16(pair(0), pair(2)), ones),
                    _mm256_madd_epi16(_mm256_add_epi16(pair(4), pair(6)), ones),
                ),
                _ => {
                    let [x0, x1] = xr.sums[b];
                    let s0 = _mm256_add_epi32(
                        _mm256_madd_epi16(pair(0), ones),
                        _mm256_madd_epi16(pair(2), ones),
                    );
                    let s1 = _mm256_add_epi32(
                        _mm256_madd_epi16(pair(4), ones),
                        _mm256_madd_epi16(pair(6), ones),
                    );
                    let i0 = _mm256_sub_epi32(s0, _mm256_set1_epi32(offset(F) * x0));
                    let i1 = _mm256_sub_epi32(s1, _mm256_set1_epi32(offset(F) * x1));
                    _mm256_add_epi32(_mm256_mullo_epi32(sc0, i0), _mm256_mullo_epi32(sc1, i1))
                }
            };
            let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dw);
            let mut acc = load_acc(o);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(scaled, _mm256_set1_ps(xr.d[b])));
            if has_min(F) {
                acc = _mm256_add_ps(acc, _mm256_mul_ps(mw, _mm256_set1_ps(xr.sd[b])));
            }
            store_acc(o, acc);
        }
    }
}
