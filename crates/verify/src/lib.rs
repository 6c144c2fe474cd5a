//! Verified inference. A provider commits, in its signed receipt, to fingerprints of the
//! hidden states behind its answer ([`fingerprint`]); an auditor re-checks a sampled answer
//! with one prefill ([`audit`]): fingerprints, sampler replay and token counts.

pub mod audit;
pub mod econ;
pub mod fingerprint;

pub use audit::{audit, Answer, AuditError, AuditReport, Thresholds};
pub use fingerprint::{Fingerprint, FingerprintBuilder, CHUNK, TOP_K};

use std::ops::ControlFlow;

use agora_model::generate::{generate, Event, GenerateOptions, Generation};
use agora_model::LoadedModel;

/// Generates as [`agora_model::generate::generate`] does and fingerprints the hidden state
/// behind every new output token on the way; events pass through to `on_event`.
pub fn generate_fingerprinted(
    model: &LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>,
) -> Result<(Generation, Fingerprint), AuditError> {
    let mut builder = FingerprintBuilder::new();
    let mut failure = None;
    let g = generate(model, prompt, opts, |e| {
        if let Event::Token { hidden, .. } = &e {
            match hidden.to_vec1::<f32>() {
                Ok(v) => builder.push(v),
                Err(err) => {
                    failure = Some(err);
                    return ControlFlow::Break(());
                }
            }
        }
        on_event(e)
    })?;
    if let Some(err) = failure {
        return Err(err.into());
    }
    Ok((g, builder.finish()))
}
