use candle_core::quantized::ggml_file::qtensor_from_ggml;

use super::*;
use crate::init::SeededRng;

const ALL: [GgmlDType; 5] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("f").to_vec1().expect("v")
}

fn quantized(rng: &mut SeededRng, rows: usize, cols: usize, dtype: GgmlDType) -> QTensor {
    let w = Tensor::from_vec(rng.normals(rows * cols, 1.0), (rows, cols), &Device::Cpu).expect("w");
    QTensor::quantize(&w, dtype).expect("quantize")
}

/// Random bytes in every field (every quant and sub-scale pattern a file can hold), with the
/// f16 scales set to small finite values.
fn random_bytes(rng: &mut SeededRng, rows: usize, cols: usize, dtype: GgmlDType) -> QTensor {
    let (_, bytes, per) = format_of(dtype).expect("packed");
    let mut raw = Vec::new();
    for _ in 0..rows * cols / per {
        let mut block: Vec<u8> = (0..bytes).map(|_| (rng.next_u64() >> 13) as u8).collect();
        let mut f16 = |at: usize, rng: &mut SeededRng| {
            let v = half::f16::from_f32(rng.normals(1, 0.01)[0]);
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        match dtype {
            GgmlDType::Q4_0 => f16(0, rng),
            GgmlDType::Q6K => f16(208, rng),
            _ => {
                f16(0, rng);
                f16(2, rng);
            }
        }
        raw.extend(block);
    }
    qtensor_from_ggml(dtype, &raw, vec![rows, cols], &Device::Cpu).expect("q")
}

fn packed(q: &QTensor) -> PackedMatrix {
    PackedMatrix::from_qtensor(q).expect("ok").expect("packed")
}

/// Every output as the module comment writes it, one scalar step at a time, from the
/// dequantization's own reading of the file (quants, scales) and [`crate::int8`]'s
/// activation quantization.
fn reference(m: &PackedMatrix, x: &[f32]) -> Vec<f32> {
    let (cols, blocks) = (m.cols, m.cols / BLOCK);
    let f = m.format;
    let mut out = Vec::new();
    for row in x.chunks_exact(cols) {
        let (xq, xd) = quantize_activations(row, cols, false);
        for r in 0..m.rows {
            let (g, j) = (r / LANES, r % LANES);
            let mut acc = 0f32;
            for b in 0..blocks {
                let gb = g * blocks + b;
                let u = m.unpack(gb)[j];
                let xb = &xq[b * BLOCK..(b + 1) * BLOCK];
                let half = |h: usize| -> i32 {
                    (16 * h..16 * h + 16)
                        .map(|c| (i32::from(u[c]) - offset(f)) * i32::from(xb[c]))
                        .sum()
                };
                let isum = if f == Q6K {
                    m.sc[gb][0][j] * half(0) + m.sc[gb][1][j] * half(1)
                } else {
                    half(0) + half(1)
                };
                acc += (isum as f32 * m.dw[gb][j]) * xd[b];
                if has_min(f) {
                    let xsum: i32 = xb.iter().map(|&v| i32::from(v)).sum();
                    acc += m.mw[gb][j] * (xd[b] * xsum as f32);
                }
            }
            out.push(acc);
        }
    }
    out
}

#[test]
fn reads_every_format_as_candle_dequantizes_it() {
    let mut rng = SeededRng::new(11);
    for dtype in ALL {
        for (rows, cols) in [(13, 256), (8, 512), (1, 256)] {
            for q in [
                quantized(&mut rng, rows, cols, dtype),
                random_bytes(&mut rng, rows, cols, dtype),
            ] {
                let want = to_vec(&q.dequantize(&Device::Cpu).expect("d"));
                let ours = to_vec(&packed(&q).dequantize(&Device::Cpu).expect("d"));
                for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} {rows}x{cols} at {i}");
                }
            }
        }
    }
}

#[test]
fn other_types_and_shapes_are_not_packed() {
    let mut rng = SeededRng::new(12);
    let q = quantized(&mut rng, 4, 64, GgmlDType::Q8_0);
    assert!(PackedMatrix::from_qtensor(&q).expect("ok").is_none());
    let w = Tensor::from_vec(rng.normals(64, 1.0), (64,), &Device::Cpu).expect("w");
    let v = QTensor::quantize(&w, GgmlDType::Q4_1).expect("q");
    assert!(PackedMatrix::from_qtensor(&v).expect("ok").is_none());
}

/// The kernel bit test: on every kernel this CPU has, for odd shapes, 1 to 37 activation
/// rows per call (under, at and across the wide kernel's tiles of [`WIDE_ROWS`]) and 1 to 3
/// threads, every output has the reference's bits.
#[test]
fn every_kernel_gives_the_reference_bits_alone_in_a_batch_on_any_pool() {
    let mut rng = SeededRng::new(13);
    let m = 2 * WIDE_ROWS + 5;
    let isas = Isa::all();
    println!("kernels on this CPU: {isas:?}");
    for dtype in ALL {
        let per = format_of(dtype).expect("f").2;
        // Odd row counts (partial groups), one block to several; the last splits one
        // activation row into several parallel tasks.
        let mut shapes = vec![(13, per), (8, 2 * per), (70, per), (1, per), (300, 2 * per)];
        if per == BLOCK {
            shapes.extend([(35, 96), (9, 32)]);
        }
        for (rows, cols) in shapes {
            let x = rng.normals(m * cols, 1.0);
            for q in [
                quantized(&mut rng, rows, cols, dtype),
                random_bytes(&mut rng, rows, cols, dtype),
            ] {
                let mat = packed(&q);
                let want = reference(&mat, &x);
                for &isa in &isas {
                    let full = mat.matmul(&x, isa);
                    for (i, (a, b)) in full.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{dtype:?} {rows}x{cols} {isa:?} {i}"
                        );
                    }
                    for threads in [1, 2, 3] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .expect("pool");
                        pool.install(|| {
                            for batch in [1, 2, 3, 4, 5, 8, 13, WIDE_ROWS, WIDE_ROWS + 1, m] {
                                for start in (0..m).step_by(batch) {
                                    let n = batch.min(m - start);
                                    let part = &x[start * cols..(start + n) * cols];
                                    let got = mat.matmul(part, isa);
                                    assert!(
                                        got == want[start * rows..(start + n) * rows],
                                        "{dtype:?} {rows}x{cols} {isa:?} batch {batch} threads {threads}"
                                    );
                                }
                            }
                        });
                    }
                }
                // Through the tensor interface, with leading dimensions.
                let t = Tensor::from_vec(x.clone(), (1, m, cols), &Device::Cpu).expect("x");
                let y = mat.forward(&t).expect("fwd");
                assert_eq!(y.dims(), [1, m, rows]);
                assert_eq!(to_vec(&y), want);
            }
        }
    }
}

/// Largest quants against activations of +-127 with every sign pattern: no i16 sum may
/// saturate (the reference sums in i32).
#[test]
fn extreme_quants_are_exact() {
    let mut rng = SeededRng::new(14);
    for dtype in ALL {
        let (_, bytes, per) = format_of(dtype).expect("f");
        let (rows, cols) = (9, 2 * per);
        let mut raw = Vec::new();
        for n in 0..rows * cols / per {
            let mut block = vec![0xFFu8; bytes];
            let d = half::f16::from_f32(0.5 + n as f32).to_le_bytes();
            match dtype {
                GgmlDType::Q4_0 => block[..2].copy_from_slice(&d),
                GgmlDType::Q6K => {
                    block[208..].copy_from_slice(&d);
                    // Sub-scales of -128 and 127 (the extremes of the product with u - 32).
                    for (i, s) in block[192..208].iter_mut().enumerate() {
                        *s = if (i + n) % 2 == 0 { 0x80 } else { 0x7F };
                    }
                }
                _ => {
                    block[..2].copy_from_slice(&d);
                    block[2..4].copy_from_slice(&d);
                }
            }
            raw.extend(block);
        }
        let q = qtensor_from_ggml(dtype, &raw, vec![rows, cols], &Device::Cpu).expect("q");
        let mat = packed(&q);
        // 3 rows take the narrow kernels, WIDE_ROWS + 3 the wide one.
        for m in [3, WIDE_ROWS + 3] {
            let signs: Vec<f32> = (0..m * cols)
                .map(|i| if (i / 7) % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            for x in [
                vec![1.0; m * cols],
                vec![-1.0; m * cols],
                signs,
                rng.normals(m * cols, 1.0),
            ] {
                let want = reference(&mat, &x);
                for isa in Isa::all() {
                    assert_eq!(mat.matmul(&x, isa), want, "{dtype:?} {isa:?} {m} rows");
                }
            }
        }
    }
}

/// Q4_0 packed gives the bits of the int8 kernel (the same integer sums and f32 steps).
#[test]
fn q4_0_packed_equals_the_int8_kernel() {
    let mut rng = SeededRng::new(15);
    for (rows, cols) in [(13, 64), (70, 96), (300, 512)] {
        let q = quantized(&mut rng, rows, cols, GgmlDType::Q4_0);
        let int8 = crate::int8::Int8Matrix::from_qtensor(&q)
            .expect("ok")
            .expect("int8");
        let x = Tensor::from_vec(rng.normals(5 * cols, 1.0), (5, cols), &Device::Cpu).expect("x");
        let a = to_vec(&int8.forward(&x).expect("int8"));
        let b = to_vec(&packed(&q).forward(&x).expect("packed"));
        assert_eq!(a, b);
    }
}

/// Close to candle's own quantized matmul (which quantizes activations differently for the
/// K formats, so only approximately).
#[test]
fn agrees_with_candle_quantized_matmul() {
    let mut rng = SeededRng::new(16);
    for dtype in ALL {
        let per = format_of(dtype).expect("f").2;
        let (rows, cols) = (19, 2 * per);
        let q = quantized(&mut rng, rows, cols, dtype);
        let x = Tensor::from_vec(rng.normals(3 * cols, 1.0), (3, cols), &Device::Cpu).expect("x");
        let ours = to_vec(&packed(&q).forward(&x).expect("fwd"));
        let dense = q.dequantize(&Device::Cpu).expect("d");
        let exact = to_vec(&x.matmul(&dense.t().expect("t")).expect("mm"));
        for (a, b) in ours.iter().zip(&exact) {
            // Activation quantization error: about 1/254 of each block's largest value.
            assert!(
                (a - b).abs() <= 0.02 * (cols as f32).sqrt(),
                "{dtype:?}: {a} vs {b}"
            );
        }
    }
}

/// Packed decode and prefill against the int8 kernel they replace and candle's dequantize +
/// f32 GEMM, one thread, same run:
/// `AGORA_QUANT_TIMING=1 cargo test --release -p agora-model --lib quant::tests::timing -- --nocapture`.
#[test]
fn timing() {
    let full = std::env::var_os("AGORA_QUANT_TIMING").is_some();
    let mut rng = SeededRng::new(17);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    // SmolLM2's gate/up and down shapes.
    for dtype in ALL {
        for (rows, cols) in [(1536, 512), (512, 1536)] {
            let q = quantized(&mut rng, rows, cols, dtype);
            let mat = packed(&q);
            for m in [1, 64] {
                let x = rng.normals(m * cols, 1.0);
                let reps = if full {
                    (100_000_000 / (rows * cols * m)).max(3)
                } else {
                    1
                };
                let time = |f: &dyn Fn()| {
                    let mut best = f64::MAX;
                    for _ in 0..if full { 3 } else { 1 } {
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            f();
                        }
                        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                    }
                    best
                };
                pool.install(|| {
                    let t_avx = time(&|| {
                        std::hint::black_box(mat.matmul(&x, Isa::detect()));
                    });
                    let t_port = time(&|| {
                        std::hint::black_box(mat.matmul(&x, Isa::Portable));
                    });
                    let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).expect("x");
                    let t_f32 = time(&|| {
                        let w = q.dequantize(&Device::Cpu).expect("d");
                        std::hint::black_box(xt.matmul(&w.t().expect("t")).expect("mm"));
                    });
                    let gmac = |t: f64| (rows * cols * m) as f64 / t / 1e9;
                    println!(
                        "{dtype:?} {rows}x{cols}, {m} rows: packed {:.3} ms ({:.1} GMAC/s), portable {:.3} ms, dequantize+f32 {:.3} ms ({:.1} GMAC/s)",
                        t_avx * 1e3, gmac(t_avx), t_port * 1e3, t_f32 * 1e3, gmac(t_f32)
                    );
                });
            }
        }
    }
}
