//! Seeded weight initialization. Candle's CPU RNG cannot be seeded, so weights come from our
//! own generator and the same seed gives the same model in every process.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::Result;

/// SplitMix64: small, fast and good enough for initialization and data sampling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n); n > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift; the bias is negligible for n far below 2^64.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal values (Box-Muller).
    pub fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = self.next_f64().max(f64::MIN_POSITIVE);
            let u2 = self.next_f64();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32 * std);
            out.push((r * theta.sin()) as f32 * std);
        }
        out.truncate(n);
        out
    }
}

/// Fresh weights by Hugging Face name: N(0, 0.02) matrices, output projections scaled down
/// by depth (GPT-2), unit norms, zero biases.
pub fn init_weights(
    cfg: &LlamaConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    cfg.validate()?;
    let mut rng = SeededRng::new(seed);
    let std = 0.02f32;
    let out_std = std / (2.0 * cfg.num_layers as f32).sqrt();
    let (h, q, kv, i) = (
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    );
    let mut shapes: Vec<(String, Vec<usize>, f32)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, h],
        std,
    )];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h], 1.0));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h], 1.0));
        shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h], std));
        shapes.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h], std));
        shapes.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h], std));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q], out_std));
        if cfg.attention_bias {
            shapes.push((format!("{p}.self_attn.q_proj.bias"), vec![q], 0.0));
            shapes.push((format!("{p}.self_attn.k_proj.bias"), vec![kv], 0.0));
            shapes.push((format!("{p}.self_attn.v_proj.bias"), vec![kv], 0.0));
        }
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h], std));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![i, h], std));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, i], out_std));
    }
    shapes.push(("model.norm.weight".into(), vec![h], 1.0));
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, h], std));
    }
    let mut out = HashMap::new();
    for (name, shape, scale) in shapes {
        let n: usize = shape.iter().product();
        let data = if shape.len() == 1 {
            vec![scale; n]
        } else {
            rng.normals(n, scale)
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = SeededRng::new(5);
        let mut b = SeededRng::new(5);
        assert_eq!(a.normals(10, 1.0), b.normals(10, 1.0));
        assert_ne!(SeededRng::new(6).next_u64(), SeededRng::new(5).next_u64());
        let xs = SeededRng::new(1).normals(100_000, 1.0);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }
}
