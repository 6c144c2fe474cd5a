//! The portable kernel: plain Rust, the reference every other kernel must equal bit for bit.

use super::{bits, has_min, offset, packed_bytes, ActRow, Group, BLOCK, LANES, NIBBLES, Q6K};

/// The unsigned quants of one packed group block, `[row in group][column]`.
#[inline(always)]
pub(super) fn unpack(format: u8, q: &[u8]) -> [[u8; BLOCK]; LANES] {
    let mut u = [[0u8; BLOCK]; LANES];
    let vecs = q.as_chunks::<32>().0;
    for (v, nv) in vecs.iter().take(4).enumerate() {
        for (j, row) in u.iter_mut().enumerate() {
            for t in 0..4 {
                let byte = nv[4 * j + t];
                row[4 * v + t] = byte & 0xF;
                row[4 * (v + 4) + t] = byte >> 4;
            }
        }
    }
    match bits(format) {
        5 => {
            let plane = &q[NIBBLES..NIBBLES + 32];
            for (j, row) in u.iter_mut().enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    *v |= ((plane[4 * j + c % 4] >> (c / 4)) & 1) << 4;
                }
            }
        }
        6 => {
            let planes = &q[NIBBLES..NIBBLES + 64];
            for (j, row) in u.iter_mut().enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    let k = c / 4;
                    let byte = planes[(k / 4) * 32 + 4 * j + c % 4];
                    *v |= ((byte >> (2 * (k % 4))) & 3) << 4;
                }
            }
        }
        _ => {}
    }
    u
}

/// One group's blocks times `R` activation rows, in the order of the module comment.
#[inline(always)]
pub(super) fn group<const F: u8, const R: usize>(w: &Group, x: [ActRow; R]) -> [[f32; LANES]; R] {
    let bytes = packed_bytes(F);
    let mut acc = [[0f32; LANES]; R];
    for (b, (q, dw)) in w.q.chunks_exact(bytes).zip(w.dw).enumerate() {
        let u = unpack(F, q);
        for (r, xr) in x.iter().enumerate() {
            let xb = &xr.q[b];
            let (x0, x1) = (xr.sums[b][0], xr.sums[b][1]);
            for j in 0..LANES {
                let dot = |cols: std::ops::Range<usize>| -> i32 {
                    u[j][cols.clone()]
                        .iter()
                        .zip(&xb[cols])
                        .map(|(&w, &x)| i32::from(w) * i32::from(x))
                        .sum()
                };
                let (p0, p1) = (dot(0..16), dot(16..32));
                let (i0, i1) = (p0 - offset(F) * x0, p1 - offset(F) * x1);
                let isum = if F == Q6K {
                    w.sc[b][0][j] * i0 + w.sc[b][1][j] * i1
                } else {
                    i0 + i1
                };
                acc[r][j] += isum as f32 * dw[j] * xr.d[b];
                if has_min(F) {
                    acc[r][j] += w.mw[b][j] * xr.sd[b];
                }
            }
        }
    }
    acc
}
