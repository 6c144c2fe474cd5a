//! The model thread: runs one generation at a time from a bounded queue. A full queue is
//! refused at once (the broker tries another provider), and a slow reader slows the
//! generation through the bounded token channel rather than buffering without limit.

use std::ops::ControlFlow;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use agora_model::generate::{Event, FinishReason, GenerateOptions};
use agora_model::LoadedModel;
use agora_verify::generate_fingerprinted;
use tokio::sync::mpsc;

/// What the model thread reports for a job.
#[derive(Debug)]
pub enum WorkerEvent {
    /// One output token (index counts resumed tokens) and its newly settled text.
    Token {
        /// Position in the output.
        index: u32,
        /// Token id.
        token: u32,
        /// Settled text.
        text: String,
        /// Its log-probabilities, when the request asked for them.
        logprobs: Option<agora_net::protocol::TokenLogprobs>,
    },
    /// The job ended.
    Done {
        /// New output tokens (the resumed ones are not repeated).
        tokens: Vec<u32>,
        /// Held-back text released at the end.
        tail: String,
        /// Why it ended (Cancelled when the reader went away).
        finish: FinishReason,
        /// Fingerprint bytes of the hidden states behind the new tokens.
        fingerprint: Vec<u8>,
    },
    /// The model refused or failed.
    Failed(String),
}

/// One generation for the model thread.
pub struct Job {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling, limits and resumed tokens.
    pub opts: GenerateOptions,
    /// Where events go; bounded, so a slow reader applies back-pressure.
    pub events: mpsc::Sender<WorkerEvent>,
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Every slot is taken.
    #[error("all {0} queue slots are busy")]
    Busy(usize),
    /// The model thread is gone.
    #[error("the model thread stopped")]
    Stopped,
}

/// The handle to the model thread.
#[derive(Clone)]
pub struct Worker {
    queue: SyncSender<Job>,
    slots: usize,
}

impl Worker {
    /// Starts the thread with room for `slots` waiting jobs.
    pub fn start(model: Arc<LoadedModel>, slots: usize) -> std::io::Result<Worker> {
        let (queue, jobs) = sync_channel::<Job>(slots.max(1));
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                for job in jobs {
                    run_job(&model, job);
                }
            })?;
        Ok(Worker {
            queue,
            slots: slots.max(1),
        })
    }

    /// Queues a job or refuses at once.
    pub fn submit(&self, job: Job) -> Result<(), QueueError> {
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Busy(self.slots),
            TrySendError::Disconnected(_) => QueueError::Stopped,
        })
    }
}

fn run_job(model: &LoadedModel, job: Job) {
    // The reader may have gone while the job waited.
    if job.events.is_closed() {
        return;
    }
    let resumed = job.opts.resume.len();
    let mut tail = String::new();
    let result = generate_fingerprinted(model, &job.prompt, &job.opts, |e| match e {
        Event::Token {
            index,
            token,
            text,
            logprobs,
            ..
        } => {
            let ev = WorkerEvent::Token {
                index: index as u32,
                token,
                text: text.to_string(),
                logprobs: logprobs.map(|lp| agora_net::protocol::TokenLogprobs {
                    // Borsh refuses NaN; a NaN logit never reaches a sampled token.
                    logprob: if lp.logprob.is_nan() {
                        f32::NEG_INFINITY
                    } else {
                        lp.logprob
                    },
                    top: lp.top.into_iter().filter(|(_, l)| !l.is_nan()).collect(),
                }),
            };
            match job.events.blocking_send(ev) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        }
        Event::Tail { text } => {
            tail = text.to_string();
            ControlFlow::Continue(())
        }
        Event::Prefill { .. } => ControlFlow::Continue(()),
    });
    let ev = match result {
        Ok((g, print)) => WorkerEvent::Done {
            tokens: g.tokens[resumed.min(g.tokens.len())..].to_vec(),
            tail,
            finish: g.finish_reason,
            fingerprint: print.to_bytes(),
        },
        Err(e) => WorkerEvent::Failed(e.to_string()),
    };
    let _ = job.events.blocking_send(ev);
}
