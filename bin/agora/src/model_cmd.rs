//! `agora model`: inspect a model's identity and configuration; convert between formats.

use std::path::PathBuf;

use agora_gguf::TensorType;
use agora_model::gguf_io::{write_gguf, GgufExport};
use agora_model::{load, GgmlDType, LoadOptions};
use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print a model's ModelId, configuration and manifest.
    Inspect {
        /// A .gguf file or a Hugging Face directory.
        path: PathBuf,
        /// Print the manifest as JSON only.
        #[arg(long)]
        json: bool,
    },
    /// Write a Hugging Face directory model as GGUF (f32, f16, q8_0, q4_0).
    ToGguf {
        /// A Hugging Face directory.
        path: PathBuf,
        /// The GGUF file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "q8_0", value_parser = parse_tensor_type)]
        r#type: TensorType,
    },
}

pub fn parse_quantization(s: &str) -> Result<GgmlDType, String> {
    match s.to_ascii_lowercase().as_str() {
        "q8_0" => Ok(GgmlDType::Q8_0),
        "q4_0" => Ok(GgmlDType::Q4_0),
        "q4_k" => Ok(GgmlDType::Q4K),
        "f16" => Ok(GgmlDType::F16),
        other => Err(format!(
            "unknown quantization `{other}` (q8_0, q4_0, q4_k, f16)"
        )),
    }
}

pub fn parse_tensor_type(s: &str) -> Result<TensorType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(TensorType::F32),
        "f16" => Ok(TensorType::F16),
        "q8_0" => Ok(TensorType::Q8_0),
        "q4_0" => Ok(TensorType::Q4_0),
        "q4_k" => Ok(TensorType::Q4K),
        other => Err(format!(
            "unknown tensor type `{other}` (f32, f16, q8_0, q4_0, q4_k)"
        )),
    }
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Inspect { path, json } => {
            let model = load(&path, &LoadOptions::default())
                .with_context(|| format!("loading {}", path.display()))?;
            if json {
                let body = serde_json::json!({ "model_id": model.id.to_string(), "manifest": model.manifest });
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let c = model.model.config();
            println!("model id      {}", model.id);
            println!("path          {}", path.display());
            println!("architecture  {}", c.architecture);
            println!("parameters    {}", c.parameter_count());
            println!("quantization  {}", model.manifest.quantization);
            println!("layers        {}", c.num_layers);
            println!("hidden        {}", c.hidden_size);
            println!("ffn           {}", c.intermediate_size);
            println!(
                "heads         {} (kv {}, head dim {})",
                c.num_heads, c.num_kv_heads, c.head_dim
            );
            println!("vocabulary    {}", c.vocab_size);
            println!("context       {}", c.max_seq_len);
            println!("rope          theta {} ({:?})", c.rope_theta, c.rope_style);
            println!("tied head     {}", c.tie_word_embeddings);
            println!(
                "chat template {}",
                if model.chat_template.is_some() {
                    "yes"
                } else {
                    "no"
                }
            );
            for (file, hash) in &model.manifest.weight_files {
                println!("weights       {file} blake3:{hash}");
            }
            println!("tokenizer     blake3:{}", model.manifest.tokenizer);
            Ok(())
        }
        ModelCommand::ToGguf { path, out, r#type } => {
            let dir = path.clone();
            let config_json = std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
            let config = agora_model::LlamaConfig::from_hf_json(&config_json)?;
            let bytes = std::fs::read(dir.join("model.safetensors"))
                .context("reading model.safetensors")?;
            let tensors = agora_model::safetensors_io::read_safetensors(
                &dir.join("model.safetensors"),
                &bytes,
                &candle_core::Device::Cpu,
            )?;
            let model = load(&path, &LoadOptions::default())?;
            let template = model.chat_template.as_ref().map(|t| t.source().to_string());
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            write_gguf(
                &out,
                &GgufExport {
                    name: &name,
                    config: &config,
                    tensors: &tensors,
                    tokenizer: &model.tokenizer,
                    chat_template: template.as_deref(),
                    matrix_type: r#type,
                },
            )?;
            let written = load(&out, &LoadOptions::default())?;
            println!(
                "wrote {} ({}), model id {}",
                out.display(),
                r#type.name(),
                written.id
            );
            Ok(())
        }
    }
}
