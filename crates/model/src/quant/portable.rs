//! The portable kernel: plain Rust, the reference every other kernel must equal bit for bit.

use super::{bits, has_min, offset, packed_bytes, ActRow, Group, BLOCK, LANES, NIBBLES, Q6K};

/// The unsigned quants of one packed group block, `[row in group][column]`.
#[inline(always)]
pub(super) fn unpack(format: u8, q: &[u8]) -> [[u8; BLOCK]; LANES] {
    let mut u = [[0u8; BLOCK]; LANES];
    for (j, row) in u.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let (k, t) = (c / 4, c % 4);
            let byte = q[(k % 4) * 32 + 4 * j + t];
            let low = if k < 4 { byte & 0xF } else { byte >> 4 };
            let high = match bits(format) {
                5 => (q[NIBBLES + 4 * j + t] >> k) & 1,
                6 => (q[NIBBLES + (k / 4) * 32 + 4 * j + t] >> (2 * (k % 4))) & 3,
                _ => 0,
            };
            *v = low | (high << 4);
        }
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
                let (mut p0, mut p1) = (0i32, 0i32);
                for c in 0..BLOCK / 2 {
                    p0 += i32::from(u[j][c]) * i32::from(xb[c]);
                    p1 += i32::from(u[j][c + 16]) * i32::from(xb[c + 16]);
                }
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
