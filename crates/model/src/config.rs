//! Architecture configuration: one runtime `LlamaConfig` for Llama 2/3, Mistral and Qwen2,
//! read from a Hugging Face `config.json` or from GGUF metadata.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// Hugging Face layout: dimension i pairs with i + d/2 ("rotate half", GPT-NeoX).
    Half,
    /// GGUF `llama` layout: dimension 2i pairs with 2i + 1 (llama.cpp permutes q/k on export).
    Interleaved,
}

/// The runtime configuration. Serialized canonically (field order fixed) into the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    pub max_seq_len: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2 puts biases on the q, k and v projections.
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Limits that keep a hostile config from asking for absurd allocations.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;

impl LlamaConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        match self.architecture.as_str() {
            "llama" | "mistral" | "qwen2" => {}
            other => {
                return bad(format!(
                    "unsupported architecture `{other}` (llama, mistral, qwen2)"
                ))
            }
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 || v > MAX_DIM {
                return bad(format!("{name} = {v} is out of range 1..={MAX_DIM}"));
            }
        }
        if self.num_layers == 0 || self.num_layers > MAX_LAYERS {
            return bad(format!("num_layers = {} is out of range", self.num_layers));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return bad(format!(
                "rms_norm_eps {} is out of range",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!("rope_theta {} is out of range", self.rope_theta));
        }
        Ok(())
    }

    /// Number of parameters (weights only), for logs and the manifest.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let kv = self.num_kv_heads * self.head_dim;
        let q = self.num_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h + if self.attention_bias { q + 2 * kv } else { 0 };
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        embed + head + self.num_layers * per_layer + h
    }

    /// Build from a Hugging Face `config.json` body.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(json)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        hf.into_config()
    }

    /// The Hugging Face `config.json` for this configuration.
    pub fn to_hf_json(&self) -> String {
        let (arch_class, model_type) = match self.architecture.as_str() {
            "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
            "mistral" => ("MistralForCausalLM", "mistral"),
            _ => ("LlamaForCausalLM", "llama"),
        };
        let eos: serde_json::Value = match self.eos_token_ids.as_slice() {
            [one] => (*one).into(),
            many => many.to_vec().into(),
        };
        let json = serde_json::json!({
            "architectures": [arch_class],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_seq_len,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }
}

/// Mirror of the fields of `config.json` that these architectures use.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default = "default_ctx")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<EosIds>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

impl HfConfig {
    fn into_config(self) -> Result<LlamaConfig> {
        let architecture = self.model_type.unwrap_or_else(|| "llama".into());
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "hidden_act `{act}` is not supported (silu)"
                )));
            }
        }
        if let Some(scaling) = &self.rope_scaling {
            if !scaling.is_null() {
                return Err(ModelError::Unsupported(format!("rope_scaling {scaling}")));
            }
        }
        if self.num_attention_heads == 0 {
            return Err(ModelError::Config("num_attention_heads is 0".into()));
        }
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads);
        let cfg = LlamaConfig {
            attention_bias: self.attention_bias.unwrap_or(architecture == "qwen2"),
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_style: RopeStyle::Half,
            max_seq_len: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            bos_token_id: self.bos_token_id,
            eos_token_ids: match self.eos_token_id {
                None => vec![],
                Some(EosIds::One(id)) => vec![id],
                Some(EosIds::Many(ids)) => ids,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen2_config_implies_bias_and_roundtrips() {
        let json = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,
            "intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,
            "num_key_value_heads":2,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
            "max_position_embeddings":32768,"tie_word_embeddings":true,"eos_token_id":151645}"#;
        let cfg = LlamaConfig::from_hf_json(json).expect("valid config");
        assert!(cfg.attention_bias);
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.eos_token_ids, vec![151645]);
        let again = LlamaConfig::from_hf_json(&cfg.to_hf_json()).expect("round trip");
        assert_eq!(cfg, again);
        // Qwen2.5-0.5B has about 494M parameters.
        let n = cfg.parameter_count();
        assert!((490_000_000..500_000_000).contains(&n), "{n}");
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let base = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2}"#;
        let err = LlamaConfig::from_hf_json(base).unwrap_err().to_string();
        assert!(err.contains("multiple"), "{err}");
        let err = LlamaConfig::from_hf_json("{").unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        let gelu = base.replace(
            "\"num_attention_heads\":3",
            "\"num_attention_heads\":2,\"hidden_act\":\"gelu\"",
        );
        assert!(LlamaConfig::from_hf_json(&gelu)
            .unwrap_err()
            .to_string()
            .contains("gelu"));
    }
}
