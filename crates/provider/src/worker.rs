//! The model thread: a continuous-batching scheduler. Requests share forward passes: every
//! step runs the next prefill chunk of newly admitted requests (in the order they arrived,
//! up to a number of prompt positions per step), each in its own pass, and one decode row of
//! every request that is generating, in the same pass as the step's last prefill chunk
//! where the model's kernels allow it. A request is admitted when the KV memory it could come to hold fits the
//! budget beside the running ones; the rest wait in arrival order, so none is passed over
//! for ever. A request whose reader went away is dropped at the next step and its memory
//! freed. Every request computes exactly the bits it computes alone
//! ([`agora_model::generate::Sequence`]), so its tokens, receipt and fingerprints do not
//! depend on its neighbours and its audit is that of a lone generation.
//!
//! Token events go out on an unbounded channel: a slow reader must not stall the batch, and
//! what a request can buffer is bounded by its `max_tokens`.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use agora_model::generate::{Event, FinishReason, GenerateOptions, Next, Sequence};
use agora_model::{Cache, LoadedModel};
use agora_verify::FingerprintBuilder;
use candle_core::IndexOp;
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
    /// Where events go. Dropping the receiver cancels the job.
    pub events: mpsc::UnboundedSender<WorkerEvent>,
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Every slot is taken.
    #[error("all {0} queue slots are busy")]
    Busy(usize),
    /// The job alone could hold more KV memory than the whole budget.
    #[error("the request could hold {need} bytes of KV cache; this provider's budget is {budget}")]
    TooLarge {
        /// Bytes the job could come to hold.
        need: usize,
        /// The budget.
        budget: usize,
    },
    /// The model thread is gone.
    #[error("the model thread stopped")]
    Stopped,
}

/// How the scheduler shares the model.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Requests held at once, waiting or running; more are refused as busy.
    pub max_requests: usize,
    /// Requests decoded together in one pass.
    pub max_batch: usize,
    /// Bytes of KV cache the running requests may come to hold together: each is counted at
    /// the most it could hold (prompt plus `max_tokens`), so a running request never runs
    /// out.
    pub kv_budget: usize,
    /// Prompt positions prefilled in one step beside the decode rows (at least one prefill
    /// chunk), so a long prompt delays the others' next tokens by a bounded amount.
    pub prefill_per_step: usize,
}

impl WorkerConfig {
    /// The defaults, with room for `slots` requests.
    pub fn with_slots(slots: usize) -> WorkerConfig {
        WorkerConfig {
            max_requests: slots.max(1),
            max_batch: 64,
            kv_budget: 1 << 30,
            prefill_per_step: 256,
        }
    }
}

/// The handle to the model thread.
#[derive(Clone)]
pub struct Worker {
    inbox: Sender<Job>,
    /// Jobs submitted and not yet ended.
    load: Arc<AtomicUsize>,
    model: Arc<LoadedModel>,
    cfg: WorkerConfig,
}

impl Worker {
    /// Starts the thread with room for `slots` requests and the default batching.
    pub fn start(model: Arc<LoadedModel>, slots: usize) -> std::io::Result<Worker> {
        Worker::start_with(model, WorkerConfig::with_slots(slots))
    }

    /// Starts the thread.
    pub fn start_with(model: Arc<LoadedModel>, cfg: WorkerConfig) -> std::io::Result<Worker> {
        let cfg = WorkerConfig {
            max_requests: cfg.max_requests.max(1),
            max_batch: cfg.max_batch.max(1),
            prefill_per_step: cfg.prefill_per_step.max(1),
            ..cfg
        };
        let (inbox, jobs) = channel::<Job>();
        let load = Arc::new(AtomicUsize::new(0));
        let scheduler = Scheduler {
            model: model.clone(),
            cfg,
            load: load.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            kv_used: 0,
        };
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || scheduler.run(jobs))?;
        Ok(Worker {
            inbox,
            load,
            model,
            cfg,
        })
    }

    /// Queues a job or refuses at once.
    pub fn submit(&self, job: Job) -> Result<(), QueueError> {
        let need = kv_need(&self.model, &job);
        if need > self.cfg.kv_budget {
            return Err(QueueError::TooLarge {
                need,
                budget: self.cfg.kv_budget,
            });
        }
        let taken = self
            .load
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cfg.max_requests).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(QueueError::Busy(self.cfg.max_requests));
        }
        self.inbox.send(job).map_err(|_| {
            self.load.fetch_sub(1, Ordering::AcqRel);
            QueueError::Stopped
        })
    }

    /// Requests waiting or running.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Acquire)
    }
}

/// The KV memory a job could come to hold.
fn kv_need(model: &LoadedModel, job: &Job) -> usize {
    let cfg = model.model.config();
    let positions = job
        .prompt
        .len()
        .saturating_add(job.opts.max_tokens)
        .min(cfg.max_seq_len);
    Cache::bytes_for(cfg, positions)
}

/// The last prefill position's state and its logits, computed as a lone generation does.
fn first_logits(
    model: &LoadedModel,
    hidden: &candle_core::Tensor,
) -> agora_model::Result<(candle_core::Tensor, Vec<f32>)> {
    let last = hidden.i(hidden.dim(0)?.saturating_sub(1))?;
    let logits = model
        .model
        .logits(&last.unsqueeze(0)?)?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    Ok((last, logits))
}

/// A request being computed.
struct Running {
    seq: Sequence,
    events: mpsc::UnboundedSender<WorkerEvent>,
    prints: FingerprintBuilder,
    resumed: usize,
    kv: usize,
    failure: Option<String>,
}

impl Running {
    /// Samples its next token from the state `hidden` and its `logits`, and sends it.
    fn step(&mut self, model: &LoadedModel, hidden: &candle_core::Tensor, logits: &[f32]) {
        let (prints, events) = (&mut self.prints, &self.events);
        let mut failure = None;
        let result = self.seq.step(model, hidden, logits, |e| match e {
            Event::Token {
                index,
                token,
                text,
                hidden,
                logprobs,
                ..
            } => {
                match hidden.to_vec1::<f32>() {
                    Ok(v) => prints.push(v),
                    Err(e) => {
                        failure = Some(e.to_string());
                        return ControlFlow::Break(());
                    }
                }
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
                match events.send(ev) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            }
            Event::Prefill { .. } | Event::Tail { .. } => ControlFlow::Continue(()),
        });
        if let Err(e) = result {
            failure = Some(e.to_string());
        }
        if failure.is_some() {
            self.fail(failure);
        }
    }

    fn fail(&mut self, failure: Option<String>) {
        self.failure = failure;
        self.seq.cancel();
    }

    /// Sends its last event.
    fn end(self) {
        if let Some(message) = self.failure {
            let _ = self.events.send(WorkerEvent::Failed(message));
            return;
        }
        let mut tail = String::new();
        let g = self.seq.finish(|e| {
            if let Event::Tail { text } = e {
                tail = text.to_string();
            }
            ControlFlow::Continue(())
        });
        let _ = self.events.send(WorkerEvent::Done {
            tokens: g.tokens[self.resumed.min(g.tokens.len())..].to_vec(),
            tail,
            finish: g.finish_reason,
            fingerprint: self.prints.finish().to_bytes(),
        });
    }
}

/// One forward pass over the next prefill chunk of `prefill` and a decode row of each of
/// `decode`; samples the tokens that pass yields and sends them.
fn run_pass(model: &LoadedModel, prefill: Option<&mut Running>, decode: &mut [&mut Running]) {
    let mut prefill: Vec<&mut Running> = prefill.into_iter().collect();
    let result = {
        let mut p: Vec<&mut Sequence> = prefill.iter_mut().map(|r| &mut r.seq).collect();
        let mut d: Vec<&mut Sequence> = decode.iter_mut().map(|r| &mut r.seq).collect();
        Sequence::pass_many(&model.model, &mut p, &mut d)
    };
    let pass = match result {
        Ok(pass) => pass,
        Err(e) => {
            tracing::error!("a batched pass failed: {e}");
            for r in prefill.iter_mut() {
                r.fail(Some(e.to_string()));
            }
            for r in decode.iter_mut() {
                r.fail(Some(e.to_string()));
            }
            return;
        }
    };
    for (r, hidden) in prefill.into_iter().zip(&pass.prefill) {
        if r.seq.prefill_left() == 0 {
            match first_logits(model, hidden) {
                Ok((last, logits)) => r.step(model, &last, &logits),
                Err(e) => r.fail(Some(e.to_string())),
            }
        }
    }
    for (i, r) in decode.iter_mut().enumerate() {
        match (pass.decode.i(i), pass.decode_logits.get(i)) {
            (Ok(h), Some(l)) => r.step(model, &h, l),
            _ => r.fail(Some("the batched pass lost a row".into())),
        }
    }
}

struct Scheduler {
    model: Arc<LoadedModel>,
    cfg: WorkerConfig,
    load: Arc<AtomicUsize>,
    /// Submitted, not yet admitted, in arrival order.
    waiting: VecDeque<Job>,
    /// Admitted, in admission order.
    running: Vec<Running>,
    kv_used: usize,
}

impl Scheduler {
    fn run(mut self, jobs: Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            self.waiting.extend(jobs.try_iter());
            self.drop_abandoned();
            self.admit();
            agora_metrics::provider()
                .queue_depth
                .set(i64::try_from(self.waiting.len()).unwrap_or(i64::MAX));
            self.step();
            self.reap();
        }
    }

    /// Forgets jobs whose reader went away: waiting ones at once, running ones at the end of
    /// this step (their memory is freed then).
    fn drop_abandoned(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|j| !j.events.is_closed());
        self.load
            .fetch_sub(before - self.waiting.len(), Ordering::AcqRel);
        for r in &mut self.running {
            if r.events.is_closed() {
                r.seq.cancel();
            }
        }
    }

    /// Admits waiting jobs in arrival order while the batch and the KV budget have room. The
    /// first in line is never passed over by a smaller one behind it.
    fn admit(&mut self) {
        while let Some(job) = self.waiting.front() {
            if self.running.len() >= self.cfg.max_batch {
                break;
            }
            let need = kv_need(&self.model, job);
            if !self.running.is_empty() && self.kv_used + need > self.cfg.kv_budget {
                break;
            }
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            match Sequence::new(&self.model, &job.prompt, &job.opts) {
                Ok(seq) => {
                    self.kv_used += need;
                    self.running.push(Running {
                        seq,
                        events: job.events,
                        prints: FingerprintBuilder::new(),
                        resumed: job.opts.resume.len(),
                        kv: need,
                        failure: None,
                    });
                }
                Err(e) => {
                    let _ = job.events.send(WorkerEvent::Failed(e.to_string()));
                    self.load.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// One step: the next prefill chunk of requests still prefilling, in admission order, up
    /// to the step's budget of prompt positions (at least one chunk), and a decode row for
    /// every request generating. Each prefill chunk is its own pass, so its first token goes
    /// out as soon as it is sampled (on these compute-bound kernels a pass costs about the
    /// sum of its rows, so sharing one pass among prompts would only hold the earlier first
    /// tokens back); the decode rows ride along in the last prefill's pass
    /// ([`Sequence::pass_many`]), or run alone when nothing is prefilling.
    fn step(&mut self) {
        let model = &*self.model;
        let mut budget = self.cfg.prefill_per_step;
        let (mut prefill, mut decode): (Vec<&mut Running>, Vec<&mut Running>) = (vec![], vec![]);
        for r in self.running.iter_mut() {
            match r.seq.next() {
                Next::Prefill if budget > 0 => {
                    let at = r.seq.positions();
                    let chunk = agora_model::llama::prefill_chunk_len(at, r.seq.prefill_left());
                    budget = budget.saturating_sub(chunk);
                    prefill.push(r);
                }
                Next::Decode(_) => decode.push(r),
                Next::Prefill | Next::Finished(_) => {}
            }
        }
        if !decode.is_empty() {
            agora_metrics::provider()
                .batch_size
                .observe(decode.len() as f64);
        }
        let last = prefill.pop();
        for r in prefill {
            run_pass(model, Some(r), &mut []);
        }
        if last.is_some() || !decode.is_empty() {
            run_pass(model, last, &mut decode);
        }
    }

    /// Ends the requests that finished, freeing their places and memory.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if matches!(self.running[i].seq.next(), Next::Finished(_)) {
                let r = self.running.remove(i);
                self.kv_used -= r.kv;
                self.load.fetch_sub(1, Ordering::AcqRel);
                r.end();
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The model thread itself, on the shipped model: answers computed among concurrent
    //! neighbours equal lone generations bit for bit (and pass the audit), the KV budget
    //! admits in arrival order without starving anyone, and a reader that goes away frees
    //! its place.

    use std::time::Duration;

    use agora_model::generate::GenerateOptions;
    use agora_model::{LoadOptions, SamplingParams};
    use agora_verify::{audit, generate_fingerprinted, Answer, Fingerprint, Thresholds};

    use super::*;

    fn model() -> Arc<LoadedModel> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/agora-shakespeare"
        );
        Arc::new(
            agora_model::load(std::path::Path::new(dir), &LoadOptions::default()).expect("load"),
        )
    }

    fn request(i: u64, max_tokens: usize) -> (Vec<u32>, GenerateOptions) {
        let prompt: Vec<u32> = (0..(3 + i * 7 % 40))
            .map(|k| (1 + (i * 31 + k * 17) % 2000) as u32)
            .collect();
        let opts = GenerateOptions {
            sampling: SamplingParams {
                temperature: [0.0, 0.8, 1.0][(i % 3) as usize],
                top_k: 0,
                top_p: 1.0,
                seed: 1000 + i,
                ..Default::default()
            },
            max_tokens,
            stop: vec![],
            stop_at_eos: i.is_multiple_of(2),
            resume: vec![],
        };
        (prompt, opts)
    }

    /// Everything one job sent: its tokens as streamed and its last event.
    async fn collect(mut rx: mpsc::UnboundedReceiver<WorkerEvent>) -> (Vec<u32>, WorkerEvent) {
        let mut streamed = vec![];
        while let Some(ev) = rx.recv().await {
            match ev {
                WorkerEvent::Token { token, .. } => streamed.push(token),
                last => return (streamed, last),
            }
        }
        panic!("the model thread dropped a job without a last event");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_answers_equal_lone_generations_and_pass_their_audit() {
        concurrent_answers_are_lone_generations(model()).await;
    }

    async fn concurrent_answers_are_lone_generations(model: Arc<LoadedModel>) {
        let worker = Worker::start_with(
            model.clone(),
            WorkerConfig {
                max_requests: 64,
                max_batch: 16,
                kv_budget: 1 << 30,
                prefill_per_step: 16,
            },
        )
        .expect("start");
        let mut jobs = vec![];
        for i in 0..24u64 {
            let (prompt, opts) = request(i, 8 + (i as usize * 5) % 24);
            let (tx, rx) = mpsc::unbounded_channel();
            // Arrivals spread over the first steps of the others.
            tokio::time::sleep(Duration::from_millis(i % 4)).await;
            worker
                .submit(Job {
                    prompt: prompt.clone(),
                    opts: opts.clone(),
                    events: tx,
                })
                .expect("submit");
            jobs.push((prompt, opts, tokio::spawn(collect(rx))));
        }
        for (prompt, opts, handle) in jobs {
            let (streamed, last) = handle.await.expect("join");
            let WorkerEvent::Done {
                tokens,
                finish,
                fingerprint,
                ..
            } = last
            else {
                panic!("a job failed: {last:?}");
            };
            let (g, print) =
                generate_fingerprinted(&model, &prompt, &opts, |_| ControlFlow::Continue(()))
                    .expect("alone");
            assert_eq!(tokens, g.tokens, "tokens differ from the lone generation");
            assert_eq!(streamed, g.tokens);
            assert_eq!(finish, g.finish_reason);
            assert_eq!(
                fingerprint,
                print.to_bytes(),
                "fingerprint differs from the lone generation"
            );
            let claimed = Fingerprint::from_bytes(&fingerprint, 1 << 16).expect("fingerprint");
            let report = audit(
                &model,
                &Answer {
                    model: model.id,
                    prompt: &prompt,
                    resumed: &[],
                    output: &tokens,
                    claimed_tokens: tokens.len(),
                    sampling: opts.sampling.clone(),
                    fingerprint: &claimed,
                    ended_at_eos: finish == FinishReason::Stop,
                },
                &Thresholds::default(),
            )
            .expect("audit");
            assert!(
                report.passed,
                "the audit of a batched answer failed: {:?}",
                report.reasons
            );
            assert_eq!(report.max_rel_err, 0.0, "the audit is not exact");
        }
        assert_eq!(worker.load(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_budget_for_two_serves_everyone_in_arrival_order() {
        let model = model();
        let (prompt, opts) = request(1, 20);
        let need = kv_need(
            &model,
            &Job {
                prompt,
                opts,
                events: mpsc::unbounded_channel().0,
            },
        );
        let worker = Worker::start_with(
            model.clone(),
            WorkerConfig {
                max_requests: 64,
                max_batch: 16,
                kv_budget: 2 * need,
                prefill_per_step: 64,
            },
        )
        .expect("start");
        let mut handles = vec![];
        for i in 0..8u64 {
            let (prompt, mut opts) = request(1, 20);
            opts.sampling.seed = i;
            opts.stop_at_eos = false;
            let (tx, rx) = mpsc::unbounded_channel();
            worker
                .submit(Job {
                    prompt,
                    opts,
                    events: tx,
                })
                .expect("submit");
            handles.push(tokio::spawn(async move {
                let out = collect(rx).await;
                (std::time::Instant::now(), out)
            }));
        }
        let mut ends = vec![];
        for h in handles {
            let (at, (_, last)) = h.await.expect("join");
            assert!(
                matches!(last, WorkerEvent::Done { ref tokens, .. } if tokens.len() == 20),
                "{last:?}"
            );
            ends.push(at);
        }
        // Two at a time, in arrival order: the later pairs end later.
        assert!(ends[7] > ends[1], "arrival order was not kept");
        // A job that alone needs more than the budget is refused at once.
        let small = Worker::start_with(
            model.clone(),
            WorkerConfig {
                kv_budget: need - 1,
                ..WorkerConfig::with_slots(4)
            },
        )
        .expect("start");
        let (prompt, opts) = request(2, 20);
        let err = small
            .submit(Job {
                prompt,
                opts,
                events: mpsc::unbounded_channel().0,
            })
            .expect_err("too large");
        assert!(matches!(err, QueueError::TooLarge { .. }));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_leaves_frees_its_place() {
        let model = model();
        let worker = Worker::start_with(
            model,
            WorkerConfig {
                max_requests: 1,
                max_batch: 16,
                kv_budget: 1 << 30,
                prefill_per_step: 64,
            },
        )
        .expect("start");
        let (prompt, mut opts) = request(3, 200);
        opts.stop_at_eos = false;
        let (tx, mut rx) = mpsc::unbounded_channel();
        worker
            .submit(Job {
                prompt: prompt.clone(),
                opts: opts.clone(),
                events: tx,
            })
            .expect("submit");
        assert!(matches!(rx.recv().await, Some(WorkerEvent::Token { .. })));
        // Full: the one place is taken.
        let (tx2, _rx2) = mpsc::unbounded_channel();
        assert!(matches!(
            worker.submit(Job {
                prompt: prompt.clone(),
                opts: opts.clone(),
                events: tx2
            }),
            Err(QueueError::Busy(1))
        ));
        drop(rx);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while worker.load() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned job kept its place"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        opts.max_tokens = 4;
        let (tx3, rx3) = mpsc::unbounded_channel();
        worker
            .submit(Job {
                prompt,
                opts,
                events: tx3,
            })
            .expect("the place is free again");
        let (_, last) = collect(rx3).await;
        assert!(matches!(last, WorkerEvent::Done { .. }), "{last:?}");
    }
}
