//! Training: the single-machine loop (seeded data, AdamW, validation in bits per byte,
//! checkpoints, export); DiLoCo islands build on it.
//!
//! ```no_run
//! use agora_train::{data, trainer::{Trainer, TrainSettings}};
//! let text = std::fs::read_to_string("corpus.txt")?;
//! let (train, val) = data::split_holdout(&text, 0.05)?;
//! let tok = agora_model::TextTokenizer::train_bpe(std::iter::once(train), 1024)?;
//! let corpus = data::Corpus { train: data::tokenize(&tok, train)?, val: data::tokenize(&tok, val)? };
//! let config = agora_train::trainer::model_config(tok.vocab_size(), 4, 256, 4, 2, 688, 256);
//! let mut trainer = Trainer::new(config, TrainSettings::default(), tok)?;
//! trainer.run(&corpus, "runs/a".as_ref(), |_| {})?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adamw;
pub mod data;
pub mod error;
pub mod trainer;

pub use error::{Result, TrainError};
pub use trainer::{Eval, Progress, TrainSettings, Trainer};
