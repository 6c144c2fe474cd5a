//! The Hugging Face layout: `config.json`, `model.safetensors` (or shards with an index),
//! `tokenizer.json` and `tokenizer_config.json` (chat template, special tokens).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::model_id::{hash_bytes, Manifest};
use crate::tokenizer::TextTokenizer;
use crate::weights::TensorSource;
use crate::{LoadOptions, LoadedModel};

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))
}

/// The weight files of a directory: the shards named by `model.safetensors.index.json`, or
/// `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<String>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let json: serde_json::Value =
            serde_json::from_str(&read_to_string(&index)?).map_err(|e| ModelError::Json {
                path: index.clone(),
                source: e,
            })?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Safetensors {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if f.contains('/') || f.contains('\\') || f.contains("..") {
                return Err(ModelError::Safetensors {
                    path: index,
                    message: format!("shard name `{f}` is not a plain file name"),
                });
            }
        }
        return Ok(files);
    }
    Ok(vec!["model.safetensors".into()])
}

/// Read safetensors bytes into f32 tensors.
pub fn read_safetensors(
    path: &Path,
    bytes: &[u8],
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load_buffer(bytes, device).map_err(|e| {
        ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    tensors
        .into_iter()
        .map(|(name, t)| {
            Ok((
                name,
                if t.dtype() == DType::F32 {
                    t
                } else {
                    t.to_dtype(DType::F32)?
                },
            ))
        })
        .collect()
}

/// `tokenizer_config.json`: the chat template and the text of the BOS/EOS tokens.
fn tokenizer_config(dir: &Path) -> Result<(Option<String>, String, String)> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok((None, String::new(), String::new()));
    }
    let json: serde_json::Value =
        serde_json::from_str(&read_to_string(&path)?).map_err(|e| ModelError::Json {
            path: path.clone(),
            source: e,
        })?;
    // Special tokens appear as strings or as {"content": ...} objects.
    let token_text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    };
    let template = match &json["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        // A list of named templates: use the default one.
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(String::from),
        _ => None,
    };
    Ok((
        template,
        token_text(&json["bos_token"]),
        token_text(&json["eos_token"]),
    ))
}

pub fn load_hf_dir(dir: &Path, opts: &LoadOptions, device: Device) -> Result<LoadedModel> {
    let config = LlamaConfig::from_hf_json(&read_to_string(&dir.join("config.json"))?)
        .map_err(|e| ModelError::Config(format!("{}: {e}", dir.join("config.json").display())))?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer_bytes =
        std::fs::read(&tokenizer_path).map_err(|e| ModelError::io(&tokenizer_path, e))?;
    let tokenizer = TextTokenizer::from_json(&tokenizer_bytes)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
    let (template_src, bos, eos) = tokenizer_config(dir)?;
    let chat_template = template_src
        .as_deref()
        .map(|src| ChatTemplate::new(src, &bos, &eos))
        .transpose()?;

    let mut tensors = HashMap::new();
    let mut hashes = BTreeMap::new();
    let mut stored_dtype = None;
    for file in weight_files(dir)? {
        let path = dir.join(&file);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        hashes.insert(file, hash_bytes(&bytes));
        if stored_dtype.is_none() {
            stored_dtype = safetensors_dtype(&bytes);
        }
        tensors.extend(read_safetensors(&path, &bytes, &device)?);
    }
    let quantization = match opts.quantize {
        Some(q) => format!("{q:?}"),
        None => stored_dtype.unwrap_or_else(|| "F32".into()),
    };
    let manifest = Manifest {
        format: 1,
        config: config.clone(),
        quantization,
        weight_files: hashes,
        tokenizer: hash_bytes(&tokenizer_bytes),
        chat_template: template_src.as_deref().map(|s| hash_bytes(s.as_bytes())),
    };
    let mut source = TensorSource::new(tensors, device);
    if let Some(q) = opts.quantize {
        source = source.quantized(q);
    }
    LoadedModel::assemble(&mut source, manifest, tokenizer, chat_template, dir)
}

/// The dtype of the first tensor in a safetensors header, e.g. `F32`, `BF16`.
fn safetensors_dtype(bytes: &[u8]) -> Option<String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    let mut infos: Vec<_> = meta.tensors().into_iter().collect();
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    infos.first().map(|(_, info)| format!("{:?}", info.dtype))
}

/// Write a model in the Hugging Face layout, plus `manifest.json` with its ModelId.
pub fn write_hf_dir(
    dir: &Path,
    config: &LlamaConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &TextTokenizer,
    chat_template: Option<&str>,
) -> Result<Manifest> {
    if config.rope_freq_factors.is_some() {
        return Err(ModelError::Unsupported(
            "writing rotary frequency factors to config.json (export to GGUF instead)".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let write = |name: &str, body: &[u8]| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| ModelError::io(&path, e))
    };
    write("config.json", config.to_hf_json().as_bytes())?;
    let tokenizer_json = tokenizer.to_json()?;
    write("tokenizer.json", tokenizer_json.as_bytes())?;
    let eos = config
        .eos_token_ids
        .first()
        .and_then(|&id| tokenizer.inner().id_to_token(id))
        .unwrap_or_default();
    let tok_cfg = serde_json::json!({
        "chat_template": chat_template,
        "eos_token": eos,
        "bos_token": serde_json::Value::Null,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&tok_cfg)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let weights = dir.join("model.safetensors");
    let f32_tensors: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&f32_tensors, &weights).map_err(|e| {
        ModelError::Safetensors {
            path: weights.clone(),
            message: e.to_string(),
        }
    })?;
    let weight_bytes = std::fs::read(&weights).map_err(|e| ModelError::io(&weights, e))?;
    let manifest = Manifest {
        format: 1,
        config: config.clone(),
        quantization: "F32".into(),
        weight_files: [("model.safetensors".to_string(), hash_bytes(&weight_bytes))].into(),
        tokenizer: hash_bytes(tokenizer_json.as_bytes()),
        chat_template: chat_template.map(|s| hash_bytes(s.as_bytes())),
    };
    let body =
        serde_json::json!({ "model_id": manifest.model_id().to_string(), "manifest": manifest });
    write(
        "manifest.json",
        serde_json::to_string_pretty(&body)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(manifest)
}
