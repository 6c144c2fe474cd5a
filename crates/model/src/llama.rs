//! The Llama-family transformer: RMSNorm, rotary embeddings, SwiGLU MLP and grouped-query
//! attention. One definition serves (quantized matmuls, fused kernels, KV cache) and trains
//! (f32 variables, unfused ops that record gradients).

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Storage, Tensor, D};

use crate::cache::KvCache;
use crate::config::{LlamaConfig, RopeStyle};
use crate::error::Result;
use crate::int8::Int8Matrix;
use crate::quant::PackedMatrix;
use crate::weights::WeightSource;

/// Which kernels a forward pass uses. Fused kernels record no backward pass, so training
/// takes the unfused forms; both compute the same function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Train,
    /// Serve's kernels, except that matmuls and attention take the decode kernels for any
    /// number of rows (the int8 row kernel, the exact dense kernel and the exact per-row
    /// attention of [`crate::dense`]): an audit recomputes many output positions at once, and
    /// each row then computes exactly as it did when it was decoded alone.
    Audit,
}

/// Input rows from which a quantized matmul dequantizes its weight and runs in f32.
const DEQUANTIZE_FROM_ROWS: usize = 16;

fn rows(xs: &Tensor) -> usize {
    let dims = xs.dims();
    dims[..dims.len().saturating_sub(1)].iter().product()
}

/// A linear layer whose weight is either a dense tensor (trainable) or a quantized one.
#[derive(Clone, Debug)]
enum Weight {
    Candle(QMatMul),
    /// Q8_0 weights held as int8 rows with f32 scales.
    Int8(std::sync::Arc<Int8Matrix>),
    /// Q4_0, Q4_1, Q4_K, Q5_K and Q6_K weights kept packed.
    Packed(std::sync::Arc<PackedMatrix>),
}

#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Result<Self> {
        let weight = match &weight {
            QMatMul::QTensor(q) => match PackedMatrix::from_qtensor(q)? {
                Some(m) => Weight::Packed(std::sync::Arc::new(m)),
                None => match Int8Matrix::from_qtensor(q)? {
                    Some(m) => Weight::Int8(std::sync::Arc::new(m)),
                    None => Weight::Candle(weight),
                },
            },
            _ => Weight::Candle(weight),
        };
        Ok(Self { weight, bias })
    }

    /// Whether every row of a call computes the bits it computes alone in every mode: the
    /// int8 and packed kernels do; candle's GEMMs (dense, or dequantized from many rows) do not.
    fn rows_exact(&self) -> bool {
        matches!(self.weight, Weight::Int8(_) | Weight::Packed(_))
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let many_rows = mode != Mode::Audit && rows(xs) >= DEQUANTIZE_FROM_ROWS;
        let ys = match &self.weight {
            // Int8 kernels for any number of rows: prefill runs them over tiles of activation
            // rows (faster than dequantizing to an f32 GEMM), and every row gets the bits it
            // gets alone.
            Weight::Int8(m) => m.forward(xs)?,
            Weight::Packed(m) => m.forward(xs)?,
            Weight::Candle(QMatMul::QTensor(q)) if many_rows => {
                QMatMul::Tensor(q.dequantize(xs.device())?).forward(xs)?
            }
            // Dense weights in decode (few rows) and in an audit (any number of rows) take the
            // exact kernel: every row computes the same bits however many rows share the call,
            // which a batched GEMM does not (the next int8 layer's activation rounding can
            // amplify a last-bit difference).
            Weight::Candle(QMatMul::Tensor(w))
                if mode == Mode::Audit
                    || (mode == Mode::Serve && rows(xs) < DEQUANTIZE_FROM_ROWS) =>
            {
                match dense_forward(w, xs)? {
                    Some(ys) => ys,
                    None => QMatMul::Tensor(w.clone()).forward(xs)?,
                }
            }
            Weight::Candle(weight) => weight.forward(xs)?,
        };
        Ok(match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        })
    }
}

/// `xs` (..., k) times the transpose of the f32 weight `w` (n, k) with the exact kernel
/// ([`crate::dense`]); `None` when the tensors are not f32 in CPU memory (candle then runs it).
fn dense_forward(w: &Tensor, xs: &Tensor) -> Result<Option<Tensor>> {
    if w.dtype() != DType::F32 || xs.dtype() != DType::F32 || !w.device().is_cpu() {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    if xs.rank() == 0 || xs.dim(D::Minus1)? != k {
        return Ok(None);
    }
    let x: Vec<f32> = xs.flatten_all()?.to_vec1()?;
    let m = x.len() / k.max(1);
    let ys = {
        let (storage, layout) = w.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        let Some(data) = cpu.as_slice::<f32>()?.get(start..end) else {
            return Ok(None);
        };
        match crate::dense::matmul_t(&x, m, data, n, k) {
            Some(ys) => ys,
            None => return Ok(None),
        }
    };
    let mut shape = xs.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok(Some(Tensor::from_vec(ys, shape, xs.device())?))
}

#[derive(Clone, Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match mode {
            Mode::Serve | Mode::Audit => {
                candle_nn::ops::rms_norm(xs, &self.weight, self.eps as f32)?
            }
            Mode::Train => candle_nn::ops::rms_norm_slow(xs, &self.weight, self.eps as f32)?,
        })
    }
}

/// Precomputed rotary tables, (max_seq_len, head_dim / 2).
#[derive(Clone, Debug)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rotary {
    fn new(cfg: &LlamaConfig, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let factor = cfg.rope_freq_factors.as_ref().map_or(1.0, |f| f[i]);
                1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64) as f32 / factor
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, cfg.max_seq_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_seq_len, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            style: cfg.rope_style,
        })
    }

    /// Rotate (b, heads, t, head_dim) starting at absolute position `offset`.
    fn apply(&self, xs: &Tensor, offset: usize, mode: Mode) -> Result<Tensor> {
        let t = xs.dim(2)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let xs = xs.contiguous()?;
        Ok(match (self.style, mode) {
            (RopeStyle::Half, Mode::Serve | Mode::Audit) => {
                candle_nn::rotary_emb::rope(&xs, &cos, &sin)?
            }
            (RopeStyle::Half, Mode::Train) => candle_nn::rotary_emb::rope_slow(&xs, &cos, &sin)?,
            (RopeStyle::Interleaved, Mode::Serve | Mode::Audit) => {
                candle_nn::rotary_emb::rope_i(&xs, &cos, &sin)?
            }
            (RopeStyle::Interleaved, Mode::Train) => {
                candle_nn::rotary_emb::rope_i_slow(&xs, &cos, &sin)?
            }
        })
    }
}

impl Rotary {
    /// Rotate (b, heads, 1, head_dim), row i at absolute position `positions[i]`: the same
    /// operations [`Rotary::apply`] performs on each row alone.
    fn apply_rows(&self, xs: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let b = xs.dim(0)?;
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let ids = Tensor::new(ids.as_slice(), xs.device())?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&ids, 0)?.reshape((b, 1, half))?;
        let sin = self.sin.index_select(&ids, 0)?.reshape((b, 1, half))?;
        let xs = xs.contiguous()?;
        Ok(match self.style {
            RopeStyle::Half => candle_nn::rotary_emb::rope(&xs, &cos, &sin)?,
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&xs, &cos, &sin)?,
        })
    }
}

#[derive(Clone, Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(src: &mut dyn WeightSource, prefix: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (h, q, kv) = (
            cfg.hidden_size,
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: src.linear(&format!("{prefix}.self_attn.q_proj"), q, h, bias)?,
            k_proj: src.linear(&format!("{prefix}.self_attn.k_proj"), kv, h, bias)?,
            v_proj: src.linear(&format!("{prefix}.self_attn.v_proj"), kv, h, bias)?,
            o_proj: src.linear(&format!("{prefix}.self_attn.o_proj"), h, q, false)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        offset: usize,
        cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let q = self.q_proj.forward(xs, mode)?;
        let k = self.k_proj.forward(xs, mode)?;
        let v = self.v_proj.forward(xs, mode)?;
        let q = q
            .reshape((b, t, self.num_heads, self.head_dim))?
            .transpose(1, 2)?;
        let k = k
            .reshape((b, t, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let v = v
            .reshape((b, t, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rotary.apply(&q, offset, mode)?;
        let k = rotary.apply(&k, offset, mode)?;
        let out = self.attend(&q, k, v, cache, mode)?;
        self.o_proj.forward(&out, mode)
    }

    /// Attention of the rotated queries `q` (b, heads, t, d) over the cache extended by the
    /// rotated keys `k` and values `v` (b, kv_heads, t, d): (b, t, heads * d), before `o_proj`.
    fn attend(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let total = k.dim(2)?;
        let rep = self.num_heads / self.num_kv_heads;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // Decode steps and audits take the exact per-row attention, so an audited row
        // computes the bits its decode step computed.
        if mode == Mode::Audit || (mode == Mode::Serve && t == 1) {
            let shape = crate::dense::AttnShape {
                batch: b,
                heads: self.num_heads,
                kv_heads: self.num_kv_heads,
                head_dim: self.head_dim,
                t,
                total,
            };
            if let Some(out) = exact_attention(q, &k, &v, shape, scale as f32)? {
                return Ok(out);
            }
        }

        // Grouped-query attention without copying K/V: the query heads that share a KV head
        // are contiguous, so fold them into the time axis: (b, kv_heads, rep * t, d).
        let q = q
            .contiguous()?
            .reshape((b, self.num_kv_heads, rep * t, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = if t > 1 {
            let mask = causal_mask(t, total, rep, q.device())?;
            scores.broadcast_add(&mask)?
        } else {
            scores
        };
        let probs = match mode {
            Mode::Serve | Mode::Audit => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Train => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let out = probs.matmul(&v)?; // (b, kv_heads, rep * t, d)
        Ok(out
            .reshape((b, self.num_heads, t, self.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?)
    }
}

impl Attention {
    /// One decode step of `b` sequences at once, `xs` (b, 1, hidden): the projections run
    /// over all rows with the row-exact kernels, then each row is rotated at its own
    /// position, appended to its own cache and attends over it alone with the exact
    /// attention. Every row computes the bits it computes when decoded alone.
    fn forward_rows(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        positions: &[usize],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let b = xs.dim(0)?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.q_proj.forward(xs, Mode::Audit)?;
        let k = self.k_proj.forward(xs, Mode::Audit)?;
        let v = self.v_proj.forward(xs, Mode::Audit)?;
        let q = q.reshape((b, 1, h, d))?.transpose(1, 2)?;
        let k = k.reshape((b, 1, kvh, d))?.transpose(1, 2)?;
        let v = v.reshape((b, 1, kvh, d))?.transpose(1, 2)?.contiguous()?;
        let q = rotary.apply_rows(&q, positions)?;
        let k = rotary.apply_rows(&k, positions)?;
        let out = self.attend_rows(&q, &k, &v, caches)?;
        self.o_proj.forward(&out, Mode::Audit)
    }

    /// Row i of the rotated `q` (b, heads, 1, d), `k` and `v` (b, kv_heads, 1, d) appended to
    /// `caches[i]` and attending over it alone with the exact attention: (b, 1, heads * d).
    fn attend_rows(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let b = q.dim(0)?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let mut out = Vec::with_capacity(b * h * d);
        for (i, cache) in caches.iter_mut().enumerate() {
            let (kc, vc) = cache.append(&k.narrow(0, i, 1)?, &v.narrow(0, i, 1)?)?;
            let shape = crate::dense::AttnShape {
                batch: 1,
                heads: h,
                kv_heads: kvh,
                head_dim: d,
                t: 1,
                total: kc.dim(2)?,
            };
            let (ks, kl) = kc.storage_and_layout();
            let (vs, vl) = vc.storage_and_layout();
            let (Some(kview), Some(vview)) = (kv_view(&ks, kl, shape)?, kv_view(&vs, vl, shape)?)
            else {
                return Err(unsupported(
                    "batched decoding needs f32 caches in CPU memory",
                ));
            };
            let qi = qv
                .get(i * h * d..(i + 1) * h * d)
                .ok_or_else(|| unsupported("query rows"))?;
            let row = crate::dense::attention(qi, kview, vview, shape, scale)
                .ok_or_else(|| unsupported("attention shapes"))?;
            out.extend_from_slice(&row);
        }
        Ok(Tensor::from_vec(out, (b, 1, h * d), q.device())?)
    }

    /// The attention of a mixed pass, `h` (1, n, hidden) normed: the rows of `prefill[j]`
    /// (its next `t` positions) are rotated from its cache's length and attend as
    /// [`Attention::forward`] computes them alone; the `decode` rows that follow, one per
    /// cache, as [`Attention::forward_rows`] does. Returns (1, n, hidden) after `o_proj`.
    fn forward_mixed(
        &self,
        h: &Tensor,
        rotary: &Rotary,
        prefill: &mut [(usize, usize, &mut KvCache)],
        decode: (&[usize], &mut [&mut KvCache]),
    ) -> Result<Tensor> {
        let (nh, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.q_proj.forward(h, Mode::Serve)?;
        let k = self.k_proj.forward(h, Mode::Serve)?;
        let v = self.v_proj.forward(h, Mode::Serve)?;
        let mut parts = Vec::with_capacity(prefill.len() + 1);
        let mut at = 0;
        for (t, offset, cache) in prefill.iter_mut() {
            let (t, offset) = (*t, *offset);
            let seg = |x: &Tensor, heads: usize| -> Result<Tensor> {
                Ok(x.narrow(1, at, t)?
                    .reshape((1, t, heads, d))?
                    .transpose(1, 2)?)
            };
            let qs = rotary.apply(&seg(&q, nh)?, offset, Mode::Serve)?;
            let ks = rotary.apply(&seg(&k, kvh)?, offset, Mode::Serve)?;
            let vs = seg(&v, kvh)?.contiguous()?;
            parts.push(self.attend(&qs, ks, vs, Some(&mut **cache), Mode::Serve)?);
            at += t;
        }
        let (positions, caches) = decode;
        let b = positions.len();
        if b > 0 {
            let rows = |x: &Tensor, heads: usize| -> Result<Tensor> {
                Ok(x.narrow(1, at, b)?
                    .reshape((b, 1, heads, d))?
                    .transpose(1, 2)?)
            };
            let qd = rotary.apply_rows(&rows(&q, nh)?, positions)?;
            let kd = rotary.apply_rows(&rows(&k, kvh)?, positions)?;
            let vd = rows(&v, kvh)?.contiguous()?;
            let out = self.attend_rows(&qd, &kd, &vd, caches)?;
            parts.push(out.reshape((1, b, nh * d))?);
        }
        let out = match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 1)?,
        };
        self.o_proj.forward(&out, Mode::Serve)
    }
}

fn unsupported(what: &str) -> crate::ModelError {
    crate::ModelError::InvalidRequest(format!("unsupported in batched decoding: {what}"))
}

/// [`crate::dense::attention`] over candle tensors: `q` (b, heads, t, d), `k` and `v` (b,
/// kv_heads, total, d) views of the cache; `None` when they are not f32 in CPU memory with
/// unit stride along `d`. Returns (b, t, heads * d).
fn exact_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    s: crate::dense::AttnShape,
    scale: f32,
) -> Result<Option<Tensor>> {
    if [q, k, v]
        .iter()
        .any(|x| x.dtype() != DType::F32 || !x.device().is_cpu())
    {
        return Ok(None);
    }
    let qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Some(kv), Some(vv)) = (kv_view(&ks, kl, s)?, kv_view(&vs, vl, s)?) else {
        return Ok(None);
    };
    let Some(out) = crate::dense::attention(&qv, kv, vv, s, scale) else {
        return Ok(None);
    };
    drop((ks, vs));
    Ok(Some(Tensor::from_vec(
        out,
        (s.batch, s.t, s.heads * s.head_dim),
        q.device(),
    )?))
}

/// A cache tensor's data as a [`crate::dense::KvView`], if it has the expected shape.
fn kv_view<'a>(
    storage: &'a Storage,
    layout: &candle_core::Layout,
    s: crate::dense::AttnShape,
) -> Result<Option<crate::dense::KvView<'a>>> {
    let Storage::Cpu(cpu) = storage else {
        return Ok(None);
    };
    let (dims, stride) = (layout.dims(), layout.stride());
    if dims != [s.batch, s.kv_heads, s.total, s.head_dim] || stride.len() != 4 || stride[3] != 1 {
        return Ok(None);
    }
    Ok(Some(crate::dense::KvView {
        data: cpu.as_slice::<f32>()?,
        offset: layout.start_offset(),
        batch_stride: stride[0],
        head_stride: stride[1],
        time_stride: stride[2],
    }))
}

/// Additive mask (rep * t, total): query i (of the last t positions) sees keys 0..=total-t+i.
fn causal_mask(t: usize, total: usize, rep: usize, device: &Device) -> Result<Tensor> {
    let past = total - t;
    let mut mask = Vec::with_capacity(rep * t * total);
    for _ in 0..rep {
        for i in 0..t {
            mask.extend((0..total).map(|j| {
                if j <= past + i {
                    0f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    Ok(Tensor::from_vec(mask, (rep * t, total), device)?)
}

#[derive(Clone, Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(src: &mut dyn WeightSource, prefix: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: src.linear(&format!("{prefix}.mlp.gate_proj"), i, h, false)?,
            up_proj: src.linear(&format!("{prefix}.mlp.up_proj"), i, h, false)?,
            down_proj: src.linear(&format!("{prefix}.mlp.down_proj"), h, i, false)?,
        })
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(xs, mode)?)?;
        let up = self.up_proj.forward(xs, mode)?;
        self.down_proj.forward(&(gate * up)?, mode)
    }
}

#[derive(Clone, Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    span: tracing::Span,
}

impl Block {
    fn load(src: &mut dyn WeightSource, layer: usize, cfg: &LlamaConfig) -> Result<Self> {
        let prefix = format!("model.layers.{layer}");
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm {
                weight: src.vector(&format!("{prefix}.input_layernorm.weight"), cfg.hidden_size)?,
                eps,
            },
            self_attn: Attention::load(src, &prefix, cfg)?,
            post_attention_layernorm: RmsNorm {
                weight: src.vector(
                    &format!("{prefix}.post_attention_layernorm.weight"),
                    cfg.hidden_size,
                )?,
                eps,
            },
            mlp: Mlp::load(src, &prefix, cfg)?,
            span: tracing::trace_span!("block", layer),
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        offset: usize,
        cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = self.input_layernorm.forward(xs, mode)?;
        let xs = (xs + self.self_attn.forward(&h, rotary, offset, cache, mode)?)?;
        let h = self.post_attention_layernorm.forward(&xs, mode)?;
        Ok((&xs + self.mlp.forward(&h, mode)?)?)
    }
}

impl Block {
    fn forward_rows(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        positions: &[usize],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = self.input_layernorm.forward(xs, Mode::Audit)?;
        let xs = (xs + self.self_attn.forward_rows(&h, rotary, positions, caches)?)?;
        let h = self.post_attention_layernorm.forward(&xs, Mode::Audit)?;
        Ok((&xs + self.mlp.forward(&h, Mode::Audit)?)?)
    }
}

impl Block {
    fn forward_mixed(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        prefill: &mut [(usize, usize, &mut KvCache)],
        decode: (&[usize], &mut [&mut KvCache]),
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = self.input_layernorm.forward(xs, Mode::Serve)?;
        let xs = (xs + self.self_attn.forward_mixed(&h, rotary, prefill, decode)?)?;
        let h = self.post_attention_layernorm.forward(&xs, Mode::Serve)?;
        Ok((&xs + self.mlp.forward(&h, Mode::Serve)?)?)
    }

    fn rows_exact(&self) -> bool {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
        .iter()
        .all(|l| l.rows_exact())
    }
}

/// Positions a [`Mode::Serve`] prefill computes in one pass. A longer prefill is cut at
/// multiples of this (counted from the first position), wherever it is run from: one call,
/// or one chunk at a time between other sequences' decode steps; both compute the same bits.
pub const PREFILL_CHUNK: usize = 512;

/// A loaded model. Cheap to clone (tensors are reference counted).
#[derive(Clone, Debug)]
pub struct Llama {
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    config: LlamaConfig,
    device: Device,
}

impl Llama {
    pub fn load(src: &mut dyn WeightSource, config: &LlamaConfig) -> Result<Self> {
        config.validate()?;
        let device = src.device();
        let embed_tokens = src.embedding(
            "model.embed_tokens.weight",
            config.vocab_size,
            config.hidden_size,
        )?;
        let blocks = (0..config.num_layers)
            .map(|layer| Block::load(src, layer, config))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm {
            weight: src.vector("model.norm.weight", config.hidden_size)?,
            eps: config.rms_norm_eps,
        };
        let lm_head = if config.tie_word_embeddings {
            src.tied_head(&embed_tokens)?
        } else {
            src.linear("lm_head", config.vocab_size, config.hidden_size, false)?
        };
        Ok(Self {
            embed_tokens,
            blocks,
            norm,
            lm_head,
            rotary: Rotary::new(config, &device)?,
            config: config.clone(),
            device,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh KV cache for `batch` sequences decoded in lockstep.
    pub fn new_cache(&self) -> Cache {
        Cache::new(&self.config)
    }

    /// Runs the transformer over `tokens` (b, t) and returns the last hidden state of every
    /// position (b, t, hidden): the input of the LM head, which fingerprints are built from.
    /// With a cache, positions continue from what the cache holds and it is extended; in
    /// [`Mode::Serve`] a long input is computed in passes cut at multiples of
    /// [`PREFILL_CHUNK`], so a scheduler may run those passes one at a time.
    pub fn forward_hidden(
        &self,
        tokens: &Tensor,
        cache: Option<&mut Cache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (_b, t) = tokens.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if offset + t > self.config.max_seq_len {
            return Err(crate::ModelError::InvalidRequest(format!(
                "sequence of {} tokens exceeds the model's context of {}",
                offset + t,
                self.config.max_seq_len
            )));
        }
        match (mode, cache) {
            (Mode::Serve, Some(cache)) => {
                let mut parts = Vec::with_capacity(1);
                let mut at = 0;
                while at < t {
                    let n = prefill_chunk_len(offset + at, t - at);
                    let chunk = if n == t {
                        tokens.clone()
                    } else {
                        tokens.narrow(1, at, n)?.contiguous()?
                    };
                    parts.push(self.forward_pass(&chunk, Some(&mut *cache), mode)?);
                    at += n;
                }
                if parts.len() == 1 {
                    Ok(parts.remove(0))
                } else {
                    Ok(Tensor::cat(&parts, 1)?)
                }
            }
            (_, cache) => self.forward_pass(tokens, cache, mode),
        }
    }

    /// One pass of the transformer over `tokens` (b, t), continuing the cache if given.
    fn forward_pass(
        &self,
        tokens: &Tensor,
        cache: Option<&mut Cache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let t = tokens.dim(1)?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let mut xs = self.embed(tokens)?;
        match cache {
            Some(cache) => {
                for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
                    xs = block.forward(&xs, &self.rotary, offset, Some(layer_cache), mode)?;
                }
                cache.len += t;
            }
            None => {
                for block in &self.blocks {
                    xs = block.forward(&xs, &self.rotary, offset, None, mode)?;
                }
            }
        }
        self.norm.forward(&xs, mode)
    }

    /// One decode step of several sequences at once: row i feeds `rows[i].0` at the next
    /// position of the cache `rows[i].1` and returns its last hidden state, row i of (b,
    /// hidden). Each row computes exactly the bits that [`Llama::forward_hidden`] in
    /// [`Mode::Serve`] computes for that one token alone with that cache, whatever the other
    /// rows, their lengths and their number: the matmuls take the row-exact kernels and each
    /// row attends over its own cache with the exact attention.
    pub fn decode_batch(&self, rows: &mut [(u32, &mut Cache)]) -> Result<Tensor> {
        let b = rows.len();
        if b == 0 {
            return Ok(Tensor::zeros(
                (0, self.config.hidden_size),
                candle_core::DType::F32,
                &self.device,
            )?);
        }
        let positions: Vec<usize> = rows.iter().map(|(_, c)| c.len()).collect();
        if let Some(&p) = positions.iter().find(|&&p| p >= self.config.max_seq_len) {
            return Err(crate::ModelError::InvalidRequest(format!(
                "sequence of {} tokens exceeds the model's context of {}",
                p + 1,
                self.config.max_seq_len
            )));
        }
        let ids: Vec<u32> = rows.iter().map(|(t, _)| *t).collect();
        let mut xs = self.embed(&Tensor::from_vec(ids, (b, 1), &self.device)?)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let mut caches: Vec<&mut KvCache> = Vec::with_capacity(b);
            for (_, cache) in rows.iter_mut() {
                let layer = cache
                    .layers
                    .get_mut(l)
                    .ok_or_else(|| unsupported("a cache of another model"))?;
                caches.push(layer);
            }
            xs = block.forward_rows(&xs, &self.rotary, &positions, &mut caches)?;
        }
        for (_, cache) in rows.iter_mut() {
            cache.len += 1;
        }
        Ok(self.norm.forward(&xs, Mode::Audit)?.squeeze(1)?)
    }

    /// Whether [`Llama::forward_mixed`] may run: every matmul of the blocks computes each
    /// row's bits whatever rows share the call (int8 and packed weights).
    pub fn mixes_rows(&self) -> bool {
        self.blocks.iter().all(Block::rows_exact)
    }

    /// One pass over the next prefill chunk of several sequences and a decode step of
    /// several others: `prefill[j]` feeds its tokens (at most up to the next multiple of
    /// [`PREFILL_CHUNK`]) after what its cache holds, `decode[i]` one token. The matmuls run
    /// over all rows at once; each sequence's rotation, cache and attention are its own.
    /// Returns the hidden states of each prefill's positions, (t_j, hidden), and of the
    /// decode rows, (b, hidden): each the bits that [`Llama::forward_hidden`] in
    /// [`Mode::Serve`] computes for that sequence alone. Only for a model whose
    /// [`Llama::mixes_rows`] holds.
    pub fn forward_mixed(
        &self,
        prefill: &mut [(&[u32], &mut Cache)],
        decode: &mut [(u32, &mut Cache)],
    ) -> Result<(Vec<Tensor>, Tensor)> {
        if !self.mixes_rows() {
            return Err(unsupported(
                "mixed passes over weights without row-exact kernels",
            ));
        }
        let mut ids: Vec<u32> = vec![];
        let mut spans = Vec::with_capacity(prefill.len());
        for (tokens, cache) in prefill.iter() {
            let at = cache.len();
            if tokens.is_empty() || tokens.len() != prefill_chunk_len(at, tokens.len()) {
                return Err(unsupported("a prefill chunk across a chunk boundary"));
            }
            if at + tokens.len() > self.config.max_seq_len {
                return Err(crate::ModelError::InvalidRequest(format!(
                    "sequence of {} tokens exceeds the model's context of {}",
                    at + tokens.len(),
                    self.config.max_seq_len
                )));
            }
            spans.push((tokens.len(), at));
            ids.extend_from_slice(tokens);
        }
        let positions: Vec<usize> = decode.iter().map(|(_, c)| c.len()).collect();
        if let Some(&p) = positions.iter().find(|&&p| p >= self.config.max_seq_len) {
            return Err(crate::ModelError::InvalidRequest(format!(
                "sequence of {} tokens exceeds the model's context of {}",
                p + 1,
                self.config.max_seq_len
            )));
        }
        ids.extend(decode.iter().map(|(t, _)| *t));
        let n = ids.len();
        if n == 0 {
            return Ok((vec![], self.decode_batch(decode)?));
        }
        let mut xs = self.embed(&Tensor::from_vec(ids, (1, n), &self.device)?)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let mut segs = Vec::with_capacity(prefill.len());
            for ((_, cache), &(t, at)) in prefill.iter_mut().zip(&spans) {
                let layer = cache
                    .layers
                    .get_mut(l)
                    .ok_or_else(|| unsupported("a cache of another model"))?;
                segs.push((t, at, layer));
            }
            let mut caches: Vec<&mut KvCache> = Vec::with_capacity(decode.len());
            for (_, cache) in decode.iter_mut() {
                let layer = cache
                    .layers
                    .get_mut(l)
                    .ok_or_else(|| unsupported("a cache of another model"))?;
                caches.push(layer);
            }
            xs = block.forward_mixed(&xs, &self.rotary, &mut segs, (&positions, &mut caches))?;
        }
        let xs = self.norm.forward(&xs, Mode::Serve)?.squeeze(0)?;
        let mut out = Vec::with_capacity(prefill.len());
        let mut at = 0;
        for ((_, cache), &(t, _)) in prefill.iter_mut().zip(&spans) {
            cache.len += t;
            out.push(xs.narrow(0, at, t)?);
            at += t;
        }
        for (_, cache) in decode.iter_mut() {
            cache.len += 1;
        }
        Ok((out, xs.narrow(0, at, decode.len())?))
    }

    /// Logits (…, vocab) from hidden states (…, hidden).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden, Mode::Serve)
    }

    /// Logits as [`Mode::Audit`] computes them: every row as if it were decoded alone.
    pub fn logits_audit(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden, Mode::Audit)
    }

    /// Full forward: logits of every position, (b, t, vocab).
    pub fn forward(
        &self,
        tokens: &Tensor,
        cache: Option<&mut Cache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(tokens, cache, mode)?;
        self.logits(&hidden)
    }

    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let flat = tokens.flatten_all()?;
        Ok(self
            .embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, t, self.config.hidden_size))?)
    }
}

/// How many of `left` positions starting at `position` one prefill pass computes: up to the
/// next multiple of [`PREFILL_CHUNK`].
pub fn prefill_chunk_len(position: usize, left: usize) -> usize {
    let end = (position / PREFILL_CHUNK + 1) * PREFILL_CHUNK;
    (end - position).min(left)
}

/// Per-layer key/value caches of a batch of sequences decoded in lockstep.
///
/// Layout (batch, kv_heads, time, head_dim) per layer, so batching sequences of different
/// lengths needs only per-row offsets and a padding mask, not another layout.
#[derive(Clone, Debug)]
pub struct Cache {
    layers: Vec<KvCache>,
    len: usize,
}

impl Cache {
    fn new(cfg: &LlamaConfig) -> Self {
        Self {
            layers: (0..cfg.num_layers)
                .map(|_| KvCache::new(cfg.max_seq_len))
                .collect(),
            len: 0,
        }
    }

    /// Positions already held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the caches of one sequence of `positions` positions hold at most (f32 keys and
    /// values, allocated in whole chunks).
    pub fn bytes_for(cfg: &LlamaConfig, positions: usize) -> usize {
        let held = crate::cache::capacity_for(positions, cfg.max_seq_len);
        2 * 4 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * held
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(KvCache::reset);
        self.len = 0;
    }
}
