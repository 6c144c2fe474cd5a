//! Audit material on request, to the verifiers settlement names only (on a chain: the
//! contract's assignee, or a registered verifier once the leaf has a revealed failure). A leaf's prompt and
//! answer go to the verifier the ledger's plan assigns to that leaf, or to a confirmer: any
//! other registered verifier, once the ledger holds a reveal that the leaf failed its audit
//! (the confirmer names that reveal's transaction). Everyone else is denied. A request the
//! provider cannot check now (ledger unreachable) is denied too: a denial is never evidence
//! against the provider; only a refusal of a rightful request is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_core::{AccountId, Hash32};
use agora_ledger::client::Client;
use agora_ledger::TxBody;
use agora_net::protocol::{
    now_ms, read_frame, write_frame, AuditResponse, SignedAuditRequest, REQUEST_WINDOW_MS,
};
use futures::{AsyncRead, AsyncWrite};

use crate::serve::Service;

const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the ledger's answers are trusted.
const TTL: Duration = Duration::from_secs(10);
/// Most cached answers of each kind.
const CAP: usize = 4096;

/// The (leaf, verifier) pairs of one epoch's plan, and when they were read.
type Plan = (Instant, HashSet<(u64, AccountId)>);

/// Who may read which leaf, as the ledger says, with short-lived caches so a burst of
/// requests costs few ledger reads.
#[derive(Default)]
pub struct AuditGate {
    /// Per epoch: the (leaf, verifier) pairs of the plan, and when it was read.
    plans: Mutex<HashMap<u64, Plan>>,
    /// Whether keys are registered verifiers.
    registered: Mutex<HashMap<AccountId, (Instant, bool)>>,
    /// Leaves whose failed reveal was found on the ledger: (epoch, index, reveal tx).
    failed: Mutex<HashSet<(u64, u64, Hash32)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.len() >= CAP {
        map.clear();
    }
}

impl AuditGate {
    /// Whether `verifier` may read leaf `index` of `me`'s `epoch` root: `Ok(())`, or why not.
    /// Blocking (ledger HTTP).
    pub fn allow(
        &self,
        ledger: &Client,
        me: &AccountId,
        verifier: &AccountId,
        epoch: u64,
        index: u64,
        reveal_tx: Option<Hash32>,
    ) -> Result<(), String> {
        match reveal_tx {
            None => self.assigned(ledger, me, verifier, epoch, index),
            Some(tx) => self.confirmer(ledger, me, verifier, epoch, index, tx),
        }
    }

    fn assigned(
        &self,
        ledger: &Client,
        me: &AccountId,
        verifier: &AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<(), String> {
        if let Some((at, pairs)) = lock(&self.plans).get(&epoch) {
            if pairs.contains(&(index, *verifier)) {
                return Ok(());
            }
            if at.elapsed() < TTL {
                return Err("the ledger's plan does not assign this leaf to you".into());
            }
        }
        let plan = ledger
            .audit_plan(me, epoch)
            .map_err(|e| format!("cannot check the plan now: {e}"))?
            .ok_or("no audit plan for this root yet")?;
        let pairs: HashSet<(u64, AccountId)> = plan.leaves.into_iter().collect();
        let ok = pairs.contains(&(index, *verifier));
        let mut plans = lock(&self.plans);
        bounded(&mut plans);
        plans.insert(epoch, (Instant::now(), pairs));
        if ok {
            Ok(())
        } else {
            Err("the ledger's plan does not assign this leaf to you".into())
        }
    }

    fn confirmer(
        &self,
        ledger: &Client,
        me: &AccountId,
        verifier: &AccountId,
        epoch: u64,
        index: u64,
        tx: Hash32,
    ) -> Result<(), String> {
        if verifier == me {
            return Err("a provider does not confirm against itself".into());
        }
        let cached = lock(&self.registered).get(verifier).copied();
        let registered = match cached {
            Some((at, yes)) if at.elapsed() < TTL => yes,
            _ => {
                let yes = ledger
                    .account(verifier)
                    .map_err(|e| format!("cannot check the verifier now: {e}"))?
                    .is_some_and(|a| a.verifier);
                let mut reg = lock(&self.registered);
                bounded(&mut reg);
                reg.insert(*verifier, (Instant::now(), yes));
                yes
            }
        };
        if !registered {
            return Err("not a registered verifier".into());
        }
        if lock(&self.failed).contains(&(epoch, index, tx)) {
            return Ok(());
        }
        let at = ledger
            .tx(&tx)
            .map_err(|e| format!("cannot check the reveal now: {e}"))?
            .ok_or("no such transaction on the ledger")?;
        let block = ledger
            .block(at.height)
            .map_err(|e| format!("cannot check the reveal now: {e}"))?
            .ok_or("no such block on the ledger")?;
        let revealed = block.txs.iter().any(|t| {
            t.id() == tx
                && matches!(
                    t.tx.body,
                    TxBody::RevealAudit {
                        provider,
                        epoch: e,
                        index: i,
                        passed: false,
                        ..
                    } if provider == *me && e == epoch && i == index
                )
        });
        if !revealed {
            return Err("that transaction is not a failed reveal of this leaf".into());
        }
        let mut failed = lock(&self.failed);
        if failed.len() >= CAP {
            failed.clear();
        }
        failed.insert((epoch, index, tx));
        Ok(())
    }
}

impl Service {
    /// Answers one audit request: the material, its Merkle path and the next leaf to the
    /// verifiers the ledger names; a denial to anyone else.
    pub async fn answer_audit<S>(self: Arc<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let request: SignedAuditRequest =
            match tokio::time::timeout(READ_TIMEOUT, read_frame(&mut stream)).await {
                Ok(Ok(Some(r))) => r,
                _ => return,
            };
        let response = self.clone().audit_response(&request).await;
        let r = &request.request;
        let answered = match &response {
            AuditResponse::Material { .. } => "material",
            AuditResponse::Refused { .. } => "refused",
            AuditResponse::Denied { .. } => "denied",
        };
        tracing::info!(verifier = %r.verifier, epoch = r.epoch, index = r.index, answered, "audit request");
        let served = agora_metrics::families::label("outcome", answered);
        agora_metrics::provider()
            .audit_requests
            .get_or_create(&served)
            .inc();
        let _ = write_frame(&mut stream, &response).await;
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
    }

    async fn audit_response(self: Arc<Self>, request: &SignedAuditRequest) -> AuditResponse {
        let deny = |reason: &str| AuditResponse::Denied {
            reason: reason.to_string(),
        };
        let r = request.request.clone();
        if request.verify().is_err() {
            return deny("bad signature");
        }
        if r.chain_id != self.chain_id || r.provider != self.key.account() {
            return deny("not for this provider");
        }
        if r.issued_ms.abs_diff(now_ms()) > REQUEST_WINDOW_MS {
            return deny("outside the replay window");
        }
        let settlement = self.receipts.settlement().map(|s| (s, s.ledger_client()));
        let checked = match settlement {
            // A chain: its contract's assignment, or a failed reveal of the leaf on it.
            Some((s, None)) => {
                let entitled = match r.reveal_tx {
                    None => s.assigned_to(r.verifier, r.epoch, r.index).await,
                    Some(_) => s.may_confirm(r.verifier, r.epoch, r.index).await,
                };
                match entitled {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(match r.reveal_tx {
                        None => "the chain does not assign this leaf to you",
                        Some(_) => "not a registered verifier, or no failed reveal of this leaf",
                    }
                    .to_string()),
                    Err(e) => Err(format!("cannot check settlement now: {e}")),
                }
            }
            // A log opened without settlement names nobody: deny.
            None => Err("no settlement to check the request against".to_string()),
            Some((_, Some(ledger))) => {
                let service = self.clone();
                tokio::task::spawn_blocking(move || {
                    service.audit_gate.allow(
                        &ledger,
                        &service.key.account(),
                        &r.verifier,
                        r.epoch,
                        r.index,
                        r.reveal_tx,
                    )
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        if let Err(why) = checked {
            return deny(&why);
        }
        #[cfg(feature = "adversary")]
        if self.refuse_audits {
            return AuditResponse::Refused {
                reason: "CHEATING: withholding the material".into(),
            };
        }
        let (epoch, index) = (request.request.epoch, request.request.index);
        let service = self.clone();
        match tokio::task::spawn_blocking(move || service.receipts.material(epoch, index)).await {
            Ok(Ok(Some((material, proof, next)))) => AuditResponse::Material {
                material: Box::new(material),
                proof,
                next: next.map(Box::new),
            },
            Ok(Ok(None)) => AuditResponse::Refused {
                reason: "no such receipt".into(),
            },
            Ok(Err(e)) => {
                tracing::error!("reading audit material: {e}");
                deny("internal error")
            }
            Err(e) => deny(&e.to_string()),
        }
    }
}
