//! Ledger duties: the provider follows the ledger's events and answers, before their deadline,
//! every `MaterialDemanded` (a verifier's on-ledger demand for a leaf's material) and every
//! `InclusionChallenged` (a payer saying a receipt is missing from its roots) that names it.
//! Left unanswered, either slashes the provider, honest or not, so this loop is what keeps
//! an honest provider's stake safe from any verifier or payer that merely asks.
//!
//! The answer to a demand commits, as `material`, to [`material_hash`] of the
//! [`Material`] the provider serves for that leaf (the same bytes its audit stream hands out).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agora_core::{codec, AccountId, Hash32, Keypair};
use agora_ledger::api::SubmitReceipt;
use agora_ledger::client::Client;
use agora_ledger::{BlockEvents, ClientError, Event, Tx, TxBody};
use agora_net::protocol::Material;

use crate::receipts::{LogError, ReceiptLog};

/// Domain of [`material_hash`].
pub const MATERIAL_DOMAIN: &[u8] = b"agora/material/v1";

/// What an `AnswerDemand` commits to: the content hash of the Borsh-encoded material.
pub fn material_hash(material: &Material) -> Hash32 {
    codec::hash(MATERIAL_DOMAIN, material)
}

/// Blocks looked back on a first start (no saved height): covers the answer window of any
/// demand or challenge made just before the provider (re)started, at a few blocks per epoch.
pub const FIRST_LOOKBACK_BLOCKS: u64 = 4096;

/// How often a submission is retried when another task of this provider took the nonce.
const NONCE_TRIES: u32 = 8;

/// Where the provider's receipt log is.
pub trait Log: Send + Sync {
    /// The log.
    fn log(&self) -> &ReceiptLog;
}

impl Log for ReceiptLog {
    fn log(&self) -> &ReceiptLog {
        self
    }
}

impl Log for crate::Service {
    fn log(&self) -> &ReceiptLog {
        &self.receipts
    }
}

/// Something the ledger asks of this provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Duty {
    /// Answer the demand for this leaf of the root of `epoch`.
    Demand {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
    },
    /// Prove this receipt is under the root of its epoch or the next.
    Inclusion {
        /// The receipt's hash.
        receipt: Hash32,
    },
}

/// The duties of `me` in these blocks, each with the height it appeared at.
pub fn duties_of(me: &AccountId, blocks: &[BlockEvents]) -> Vec<(u64, Duty)> {
    let mut out = vec![];
    for b in blocks {
        for ev in b.txs.iter().flat_map(|t| &t.events) {
            match ev {
                Event::MaterialDemanded {
                    provider,
                    epoch,
                    index,
                    ..
                } if provider == me => out.push((
                    b.height,
                    Duty::Demand {
                        epoch: *epoch,
                        index: *index,
                    },
                )),
                Event::InclusionChallenged {
                    receipt, provider, ..
                } if provider == me => out.push((b.height, Duty::Inclusion { receipt: *receipt })),
                _ => {}
            }
        }
    }
    out
}

/// Why a duty was not done.
#[derive(Debug, thiserror::Error)]
pub enum DutyError {
    /// The receipt log failed (retried).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The ledger could not be reached (retried).
    #[error("ledger: {0}")]
    Ledger(#[from] ClientError),
    /// The log does not hold the demanded leaf.
    #[error("leaf {index} of the root of epoch {epoch} is not in the receipt log")]
    MissingLeaf {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
    },
    /// No posted root holds the challenged receipt.
    #[error("receipt {0} is under none of this provider's posted roots")]
    NotIncluded(Hash32),
    /// The ledger refused the answer (already answered, past its deadline, ...).
    #[error("the ledger refused the answer: {code}: {message}")]
    Refused {
        /// The stable code.
        code: String,
        /// In words.
        message: String,
    },
}

impl DutyError {
    /// Whether trying again later may succeed.
    pub fn transient(&self) -> bool {
        match self {
            DutyError::Log(_) => true,
            DutyError::Ledger(e) => !matches!(e, ClientError::Rejected { .. }),
            _ => false,
        }
    }
}

/// The provider's duty loop.
pub struct Duties {
    chain_id: u64,
    key: Keypair,
    ledger: Client,
    log: Arc<dyn Log>,
    /// The next height to read, saved here so a restart resumes where it stopped.
    height_file: Option<PathBuf>,
    /// Long-poll wait per read.
    wait: Duration,
}

impl Duties {
    /// Duties of `key`'s account, answered from `log`; the next height to read is kept in
    /// `height_file` when given.
    pub fn new(
        chain_id: u64,
        key: Keypair,
        ledger: Client,
        log: Arc<dyn Log>,
        height_file: Option<PathBuf>,
    ) -> Duties {
        Duties {
            chain_id,
            key,
            ledger,
            log,
            height_file,
            wait: Duration::from_secs(2),
        }
    }

    /// Answers one duty on the ledger.
    pub fn answer(&self, duty: &Duty) -> Result<SubmitReceipt, DutyError> {
        let log = self.log.log();
        let body = match duty {
            Duty::Demand { epoch, index } => {
                let (material, proof, _next) =
                    log.material(*epoch, *index)?
                        .ok_or(DutyError::MissingLeaf {
                            epoch: *epoch,
                            index: *index,
                        })?;
                TxBody::AnswerDemand {
                    epoch: *epoch,
                    index: *index,
                    material: material_hash(&material),
                    receipt: material.receipt,
                    proof,
                }
            }
            Duty::Inclusion { receipt } => {
                let (epoch, index, proof) = log
                    .locate(receipt)?
                    .ok_or(DutyError::NotIncluded(*receipt))?;
                TxBody::AnswerInclusion {
                    receipt: *receipt,
                    epoch,
                    index,
                    proof,
                }
            }
        };
        self.submit(body)
    }

    /// Submits with the next nonce, again if another task of this provider took it.
    fn submit(&self, body: TxBody) -> Result<SubmitReceipt, DutyError> {
        let me = self.key.account();
        let mut last = None;
        for attempt in 0..NONCE_TRIES {
            let nonce = self.ledger.next_nonce(&me)?;
            let tx = Tx {
                chain_id: self.chain_id,
                from: me,
                nonce,
                body: body.clone(),
            }
            .sign(&self.key);
            match self.ledger.submit(&tx) {
                Ok(r) => return Ok(r),
                Err(ClientError::Rejected { code, message })
                    if code == "stale_nonce" || code == "future_nonce" =>
                {
                    last = Some(DutyError::Refused { code, message });
                    std::thread::sleep(Duration::from_millis(20 * u64::from(attempt + 1)));
                }
                Err(ClientError::Rejected { code, message }) => {
                    return Err(DutyError::Refused { code, message })
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or(DutyError::Refused {
            code: "stale_nonce".into(),
            message: "nonce taken on every try".into(),
        }))
    }

    /// Where to start reading: the saved height, else a look-back from the tip.
    fn start_height(&self) -> Result<u64, ClientError> {
        if let Some(h) = self
            .height_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return Ok(h.max(1));
        }
        let tip = self.ledger.status()?.height;
        Ok(tip.saturating_sub(FIRST_LOOKBACK_BLOCKS).max(1))
    }

    fn save_height(&self, height: u64) {
        let Some(path) = &self.height_file else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let saved =
            std::fs::write(&tmp, height.to_string()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = saved {
            tracing::warn!("saving the duties height: {e}");
        }
    }

    /// Answers each duty; keeps the ones worth retrying.
    fn work(&self, duties: Vec<(u64, Duty)>) -> Vec<(u64, Duty)> {
        let mut keep = vec![];
        for (height, duty) in duties {
            match self.answer(&duty) {
                Ok(r) => tracing::info!(?duty, height = r.height, "answered a ledger duty"),
                Err(e) if e.transient() => {
                    tracing::debug!(?duty, "ledger duty, retrying: {e}");
                    keep.push((height, duty));
                }
                Err(e) => tracing::warn!(?duty, "ledger duty not done: {e}"),
            }
        }
        keep
    }

    /// Follows the ledger until `stop` is set: long-polls events from the last height seen,
    /// answers this provider's duties, backs off on errors.
    pub fn run(&self, stop: &AtomicBool) {
        let me = self.key.account();
        let mut backoff = Duration::from_millis(100);
        let mut from = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match self.start_height() {
                Ok(h) => break h,
                Err(e) => {
                    tracing::warn!("duties: reading the ledger: {e}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        let mut pending: Vec<(u64, Duty)> = vec![];
        while !stop.load(Ordering::Relaxed) {
            let blocks = match self.ledger.events(from, self.wait) {
                Ok(b) => {
                    backoff = Duration::from_millis(100);
                    b
                }
                Err(e) => {
                    tracing::warn!(from, "duties: following the ledger: {e}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            if let Some(last) = blocks.last() {
                from = last.height.saturating_add(1);
            }
            pending.extend(duties_of(&me, &blocks));
            if !pending.is_empty() {
                pending = self.work(std::mem::take(&mut pending));
            }
            // A restart resumes at the oldest duty not yet done.
            self.save_height(pending.iter().map(|p| p.0).min().unwrap_or(from));
            if !pending.is_empty() && blocks.is_empty() {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    /// Runs [`Duties::run`] on its own thread until the handle is dropped.
    pub fn spawn(self) -> std::io::Result<DutiesHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("ledger-duties".into())
            .spawn(move || self.run(&flag))?;
        Ok(DutiesHandle { stop })
    }
}

/// Stops the duty loop when dropped (within one long-poll wait).
pub struct DutiesHandle {
    stop: Arc<AtomicBool>,
}

impl Drop for DutiesHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
