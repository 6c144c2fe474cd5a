//! One Llama-family model definition that trains and serves, with GGUF and safetensors
//! loaders and writers, tokenizer, chat templates and a replayable sampler.
//!
//! ```no_run
//! use agora_model::{load, LoadOptions, generate::{generate, GenerateOptions}};
//! let model = load("models/agora-shakespeare".as_ref(), &LoadOptions::default())?;
//! let prompt = model.tokenizer.encode("ROMEO.\n")?;
//! let out = generate(&model, &prompt, &GenerateOptions::default(), |_| std::ops::ControlFlow::Continue(()))?;
//! println!("{} ({})", out.text, model.id);
//! # Ok::<(), agora_model::ModelError>(())
//! ```

pub mod cache;
pub mod chat;
pub mod config;
pub mod constrain;
pub mod dense;
pub mod error;
pub mod generate;
pub mod gguf_io;
pub mod init;
pub mod int8;
pub mod llama;
pub mod model_id;
pub mod prompt;
pub mod quant;
pub mod safetensors_io;
pub mod sampler;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use candle_core::quantized::GgmlDType;
pub use chat::{ChatMessage, ChatTemplate};
pub use config::{LlamaConfig, RopeStyle};
pub use error::{ModelError, Result};
pub use llama::{Cache, Llama, Mode};
pub use model_id::{Manifest, ModelId};
pub use prompt::{chat_prompt_ids, PromptModel, TextRenderer};
pub use sampler::SamplingParams;
pub use tokenizer::TextTokenizer;

/// A model ready to serve: weights, tokenizer, template and identity.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub manifest: Manifest,
    pub id: ModelId,
    pub path: PathBuf,
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Quantize dense (safetensors) matrices on load; GGUF files are served as they are.
    pub quantize: Option<GgmlDType>,
}

impl LoadedModel {
    /// Load the weights the manifest's config names from `source` and bind the identity.
    pub(crate) fn assemble(
        source: &mut dyn weights::WeightSource,
        manifest: Manifest,
        tokenizer: TextTokenizer,
        chat_template: Option<ChatTemplate>,
        path: &Path,
    ) -> Result<Self> {
        Ok(Self {
            model: Llama::load(source, &manifest.config)?,
            tokenizer,
            chat_template,
            id: manifest.model_id(),
            manifest,
            path: path.to_path_buf(),
        })
    }

    /// Token ids that end generation.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids = self.model.config().eos_token_ids.clone();
        for special in [tokenizer::END_OF_TEXT, tokenizer::IM_END] {
            if let Some(id) = self.tokenizer.token_id(special) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Render a conversation with the model's template (ChatML when it has none).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, true),
            None => ChatTemplate::new(chat::CHATML_TEMPLATE, "", "")?.render(messages, true),
        }
    }
}

/// Load a model from a `.gguf` file or a Hugging Face directory (`config.json`,
/// `*.safetensors`, `tokenizer.json`, optional `tokenizer_config.json`).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let device = candle_core::Device::Cpu;
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_gguf {
        return load_gguf(path, device);
    }
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    } else {
        return Err(ModelError::Unsupported(format!(
            "{}: expected a .gguf file or a directory with config.json and safetensors",
            path.display()
        )));
    };
    safetensors_io::load_hf_dir(&dir, opts, device)
}

fn load_gguf(path: &Path, device: candle_core::Device) -> Result<LoadedModel> {
    let (header, mut file) = gguf_io::open(path)?;
    let mut config = gguf_io::config_from_gguf(&header)?;
    config.rope_freq_factors = gguf_io::rope_freq_factors(&header, &mut file)?;
    config.validate()?;
    let tokenizer = gguf_io::tokenizer_from_gguf(&header)?;
    let template_src = header
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let quantization = dominant_matrix_type(&header);
    let chat_template = template_src
        .as_deref()
        .map(|src| ChatTemplate::new(src, "", ""))
        .transpose()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let manifest = Manifest {
        format: 1,
        config: config.clone(),
        quantization,
        weight_files: [(name, model_id::hash_file(path)?)].into(),
        tokenizer: model_id::hash_bytes(tokenizer.to_json()?.as_bytes()),
        chat_template: template_src
            .as_deref()
            .map(|s| model_id::hash_bytes(s.as_bytes())),
    };
    let mut source = gguf_io::GgufSource::new(header, file, device);
    LoadedModel::assemble(&mut source, manifest, tokenizer, chat_template, path)
}

/// The type most 2-D tensors of a GGUF file have, e.g. `Q8_0`.
fn dominant_matrix_type(header: &agora_gguf::GgufHeader) -> String {
    let mut counts = std::collections::BTreeMap::<&'static str, usize>::new();
    for t in header.tensors.iter().filter(|t| t.dims.len() == 2) {
        *counts.entry(t.ty.name()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(name, n)| (*n, *name))
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| "F32".into())
}
