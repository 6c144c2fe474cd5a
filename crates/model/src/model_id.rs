//! ModelId: the BLAKE3 hash of a canonical manifest naming every part that changes what a
//! model computes: weight files, tokenizer, chat template, architecture and quantization.
//! Serving another file is serving another model.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelId(#[serde(with = "hex_bytes")] pub [u8; 32]);

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({self})")
    }
}

impl std::str::FromStr for ModelId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| ModelError::InvalidRequest(format!("model id `{s}`: {e}")))?;
        Ok(Self(out))
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// The canonical manifest. Field order is fixed by the struct and maps are sorted, so its
/// JSON encoding is canonical.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub config: LlamaConfig,
    /// e.g. `Q8_0` (the type of the matrices), `F32`.
    pub quantization: String,
    /// File name to BLAKE3 hex of its bytes.
    pub weight_files: BTreeMap<String, String>,
    /// BLAKE3 hex of the canonical tokenizer JSON.
    pub tokenizer: String,
    /// BLAKE3 hex of the chat template source, if the model has one.
    pub chat_template: Option<String>,
}

impl Manifest {
    pub fn canonical_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn model_id(&self) -> ModelId {
        ModelId(*blake3::hash(self.canonical_json().as_bytes()).as_bytes())
    }
}

pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// BLAKE3 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RopeStyle;

    fn manifest() -> Manifest {
        Manifest {
            format: 1,
            config: LlamaConfig {
                architecture: "llama".into(),
                vocab_size: 300,
                hidden_size: 64,
                intermediate_size: 128,
                num_layers: 2,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                rope_style: RopeStyle::Half,
                max_seq_len: 128,
                tie_word_embeddings: false,
                attention_bias: false,
                bos_token_id: None,
                eos_token_ids: vec![0],
            },
            quantization: "F32".into(),
            weight_files: [("model.safetensors".to_string(), hash_bytes(b"w"))].into(),
            tokenizer: hash_bytes(b"t"),
            chat_template: Some(hash_bytes(b"c")),
        }
    }

    #[test]
    fn model_id_changes_when_any_part_changes() {
        let base = manifest();
        let id = base.model_id();
        assert_eq!(id, manifest().model_id(), "deterministic");
        let mut variants = vec![];
        let mut m = manifest();
        m.weight_files
            .insert("model.safetensors".into(), hash_bytes(b"w2"));
        variants.push(m);
        let mut m = manifest();
        m.tokenizer = hash_bytes(b"t2");
        variants.push(m);
        let mut m = manifest();
        m.chat_template = None;
        variants.push(m);
        let mut m = manifest();
        m.config.rope_theta = 500000.0;
        variants.push(m);
        let mut m = manifest();
        m.quantization = "Q8_0".into();
        variants.push(m);
        for v in variants {
            assert_ne!(v.model_id(), id, "{}", v.canonical_json());
        }
        let parsed: ModelId = id.to_string().parse().expect("hex");
        assert_eq!(parsed, id);
    }
}
