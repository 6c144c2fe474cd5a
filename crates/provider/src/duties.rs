//! Settlement duties: the provider follows settlement (ledger blocks or the chain's logs,
//! through [`ProviderSettlement::duties_from`]) and answers, before their deadline, every
//! material demand (a verifier's demand on settlement for a leaf's material) and every
//! inclusion challenge (a payer saying a receipt is missing from its roots) that names it.
//! Left unanswered, either slashes the provider, honest or not, so this loop is what keeps
//! an honest provider's stake safe from any verifier or payer that merely asks.
//!
//! On a chain it also charges each unconfirmed failure revealed on its own leaves to the
//! verifier that revealed it ([`Duty::Alarm`], `expireAlarm` once the verdict window closed):
//! the contract charges a false alarm only when someone calls, and the provider is the party
//! it wronged. The ledger charges them itself.
//!
//! The answer to a demand commits, as `material`, to [`material_hash`] of the
//! [`Material`] the provider serves for that leaf (the same bytes its audit stream hands out);
//! the paths it carries are in the settlement's own tree (the receipt log's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agora_core::{codec, AccountId, Hash32};
use agora_ledger::BlockEvents;
use agora_net::protocol::Material;
use agora_settlement::role_provider::{ledger_duties_of, ProviderSettlement};
use agora_settlement::{Expiry, SettlementError};

use crate::receipts::{LogError, ReceiptLog};

pub use agora_settlement::role_provider::ProviderDuty as Duty;

/// Domain of [`material_hash`].
pub const MATERIAL_DOMAIN: &[u8] = b"agora/material/v1";

/// What an `AnswerDemand` commits to: the content hash of the Borsh-encoded material.
pub fn material_hash(material: &Material) -> Hash32 {
    codec::hash(MATERIAL_DOMAIN, material)
}

/// Blocks looked back on a first start (no saved height): covers the answer window of any
/// demand or challenge made just before the provider (re)started, at a few blocks per epoch.
pub const FIRST_LOOKBACK_BLOCKS: u64 = 4096;

/// Most unconfirmed failures awaiting their charge at once; past it a new one is logged and
/// left to any other caller (bounded memory against a verifier that fails every leaf).
pub const MAX_ALARMS: usize = 4096;

/// Unconfirmed failures on this provider's leaves, by (root epoch, leaf): the epoch of the
/// next try and the cursor the reveal was seen at.
#[derive(Debug, Default)]
struct Alarms(BTreeMap<(u64, u64), (u64, u64)>);

impl Alarms {
    fn add(&mut self, height: u64, epoch: u64, index: u64) {
        if self.0.len() >= MAX_ALARMS && !self.0.contains_key(&(epoch, index)) {
            tracing::warn!(
                epoch,
                index,
                "too many unconfirmed failures awaiting their charge; this one is not followed"
            );
            return;
        }
        self.0.entry((epoch, index)).or_insert((0, height));
    }

    fn oldest_height(&self) -> Option<u64> {
        self.0.values().map(|v| v.1).min()
    }
}

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

/// The duties of `me` in these ledger blocks, each with the height it appeared at.
pub fn duties_of(me: &AccountId, blocks: &[BlockEvents]) -> Vec<(u64, Duty)> {
    ledger_duties_of(me, blocks)
}

/// Why a duty was not done.
#[derive(Debug, thiserror::Error)]
pub enum DutyError {
    /// The receipt log failed (retried).
    #[error(transparent)]
    Log(#[from] LogError),
    /// Settlement could not be reached (retried) or refused the answer (already answered,
    /// past its deadline, ...).
    #[error("settlement: {0}")]
    Settlement(#[from] SettlementError),
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
}

impl DutyError {
    /// Whether trying again later may succeed.
    pub fn transient(&self) -> bool {
        match self {
            DutyError::Log(_) => true,
            DutyError::Settlement(e) => e.refusal().is_none(),
            _ => false,
        }
    }
}

/// The provider's duty loop.
pub struct Duties {
    settlement: Arc<dyn ProviderSettlement>,
    log: Arc<dyn Log>,
    /// The next cursor to read, saved here so a restart resumes where it stopped.
    height_file: Option<PathBuf>,
    /// Long-poll wait per read.
    wait: Duration,
}

impl Duties {
    /// Duties of `settlement`'s account, answered from `log`; the next cursor to read is
    /// kept in `height_file` when given.
    pub fn new(
        settlement: Arc<dyn ProviderSettlement>,
        log: Arc<dyn Log>,
        height_file: Option<PathBuf>,
    ) -> Duties {
        Duties {
            settlement,
            log,
            height_file,
            wait: Duration::from_secs(2),
        }
    }

    /// Answers one duty on settlement.
    pub async fn answer(&self, duty: &Duty) -> Result<(), DutyError> {
        match *duty {
            Duty::Demand { epoch, index } => {
                let log = self.log.clone();
                let (material, proof, _next) =
                    tokio::task::spawn_blocking(move || log.log().material(epoch, index))
                        .await
                        .map_err(SettlementError::from)??
                        .ok_or(DutyError::MissingLeaf { epoch, index })?;
                self.settlement
                    .answer_material_demand(
                        epoch,
                        index,
                        &material.receipt,
                        &proof,
                        material_hash(&material),
                    )
                    .await?;
            }
            Duty::Inclusion { receipt } => {
                let log = self.log.clone();
                let (epoch, index, proof) =
                    tokio::task::spawn_blocking(move || log.log().locate(&receipt))
                        .await
                        .map_err(SettlementError::from)??
                        .ok_or(DutyError::NotIncluded(receipt))?;
                self.settlement
                    .answer_inclusion_challenge(receipt, epoch, index, &proof)
                    .await?;
            }
            Duty::Alarm { epoch, index } => {
                // Only `run` schedules these by epoch; asked directly, one try.
                self.settlement.expire_false_alarm(epoch, index).await?;
            }
        }
        Ok(())
    }

    /// Tries each alarm whose try is due at `now`: charged or settled ones are dropped, ones
    /// not yet due wait for their epoch, failed calls are tried again next epoch.
    async fn charge_alarms(&self, alarms: &mut Alarms, now: u64) {
        let due: Vec<(u64, u64)> = alarms
            .0
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| *k)
            .collect();
        for (epoch, index) in due {
            let next = match self.settlement.expire_false_alarm(epoch, index).await {
                Ok(Expiry::Charged) => {
                    tracing::info!(
                        epoch,
                        index,
                        "an unconfirmed failure on our leaf charged to its verifier"
                    );
                    None
                }
                Ok(Expiry::Settled) => None,
                Ok(Expiry::NotDue { epoch: at }) => Some(at),
                Err(e) => {
                    tracing::debug!(epoch, index, "charging a false alarm, retrying: {e}");
                    Some(now.saturating_add(1))
                }
            };
            match next {
                Some(at) => {
                    if let Some(v) = alarms.0.get_mut(&(epoch, index)) {
                        v.0 = at;
                    }
                }
                None => {
                    alarms.0.remove(&(epoch, index));
                }
            }
        }
    }

    /// Where to start reading: the saved cursor, else a look-back from the tip.
    async fn start_height(&self) -> Result<u64, SettlementError> {
        if let Some(h) = self
            .height_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return Ok(h.max(1));
        }
        self.settlement.duties_start(FIRST_LOOKBACK_BLOCKS).await
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
    async fn work(&self, duties: Vec<(u64, Duty)>) -> Vec<(u64, Duty)> {
        let mut keep = vec![];
        for (height, duty) in duties {
            match self.answer(&duty).await {
                Ok(()) => tracing::info!(?duty, height, "answered a settlement duty"),
                Err(e) if e.transient() => {
                    tracing::debug!(?duty, "settlement duty, retrying: {e}");
                    keep.push((height, duty));
                }
                Err(e) => tracing::warn!(?duty, "settlement duty not done: {e}"),
            }
        }
        keep
    }

    /// Follows settlement for ever: long-polls duties from the last cursor seen, answers
    /// them, backs off on errors.
    pub async fn run(&self) {
        let mut backoff = Duration::from_millis(100);
        let mut from = loop {
            match self.start_height().await {
                Ok(h) => break h,
                Err(e) => {
                    tracing::warn!("duties: reading settlement: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        let mut pending: Vec<(u64, Duty)> = vec![];
        let mut alarms = Alarms::default();
        loop {
            let read = match self.settlement.duties_from(from, self.wait).await {
                Ok(r) => {
                    backoff = Duration::from_millis(100);
                    r
                }
                Err(e) => {
                    tracing::warn!(from, "duties: following settlement: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let advanced = read.next > from;
            from = from.max(read.next);
            for (height, duty) in read.duties {
                match duty {
                    Duty::Alarm { epoch, index } => alarms.add(height, epoch, index),
                    other => pending.push((height, other)),
                }
            }
            if !pending.is_empty() {
                pending = self.work(std::mem::take(&mut pending)).await;
            }
            if !alarms.0.is_empty() {
                match self.settlement.current_epoch().await {
                    Ok(now) => self.charge_alarms(&mut alarms, now).await,
                    Err(e) => tracing::debug!("duties: reading the epoch: {e}"),
                }
            }
            // A restart resumes at the oldest duty (or alarm) not yet done.
            let oldest = pending
                .iter()
                .map(|p| p.0)
                .chain(alarms.oldest_height())
                .min();
            self.save_height(oldest.unwrap_or(from));
            if !pending.is_empty() && !advanced {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    /// Runs [`Duties::run`] as a task until the handle is dropped.
    pub fn spawn(self) -> std::io::Result<DutiesHandle> {
        let task = tokio::spawn(async move { self.run().await });
        Ok(DutiesHandle { task })
    }
}

/// Stops the duty loop when dropped.
pub struct DutiesHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DutiesHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
