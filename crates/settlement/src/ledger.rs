//! The embedded ledger as [`Settlement`]: signed ledger transactions over its HTTP API.

use crate::{ChannelView, Refusal, Settlement, SettlementError, StakeView};
use agora_core::{AccountId, Amount, Hash32, Keypair, Signature};
use agora_ledger::api::SubmitReceipt;
use agora_ledger::client::Client;
use agora_ledger::{ClientError, Event, Tx, TxBody, Voucher};

/// One account on an `agora ledger serve` node.
#[derive(Clone)]
pub struct LedgerSettlement {
    client: Client,
    key: Keypair,
    chain_id: u64,
}

fn refusal(code: &str) -> Refusal {
    match code {
        "overdraft" => Refusal::Overdraft,
        "insufficient_stake" => Refusal::InsufficientStake,
        "unknown_channel" => Refusal::UnknownChannel,
        "channel_closed" => Refusal::ChannelClosed,
        "not_channel_payer" => Refusal::NotChannelPayer,
        "not_channel_provider" => Refusal::NotChannelProvider,
        "forged_voucher" => Refusal::ForgedVoucher,
        "double_claim" => Refusal::DoubleClaim,
        "over_claim" => Refusal::OverClaim,
        "channel_not_expired" => Refusal::ChannelNotExpired,
        "channel_timeout" => Refusal::ChannelTimeout,
        "wrong_epoch" => Refusal::WrongEpoch,
        "root_already_posted" => Refusal::RootAlreadyPosted,
        "malformed" => Refusal::Malformed,
        other => Refusal::Other { code: other.into() },
    }
}

fn ledger_err(e: ClientError) -> SettlementError {
    match e {
        ClientError::Rejected { code, .. } => SettlementError::Refused(refusal(&code)),
        other => SettlementError::Ledger(other),
    }
}

impl LedgerSettlement {
    /// `key`'s account on the ledger `client` talks to, whose chain id is `chain_id`.
    pub fn new(client: Client, key: Keypair, chain_id: u64) -> LedgerSettlement {
        LedgerSettlement {
            client,
            key,
            chain_id,
        }
    }

    /// Runs a blocking ledger call off the async runtime's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LedgerSettlement) -> Result<T, SettlementError> + Send + 'static,
    ) -> Result<T, SettlementError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me)).await?
    }

    fn send_blocking(&self, body: TxBody) -> Result<SubmitReceipt, SettlementError> {
        let from = self.key.account();
        let nonce = self.client.next_nonce(&from).map_err(ledger_err)?;
        let tx = Tx {
            chain_id: self.chain_id,
            from,
            nonce,
            body,
        }
        .sign(&self.key);
        self.client.submit(&tx).map_err(ledger_err)
    }

    async fn send(&self, body: TxBody) -> Result<SubmitReceipt, SettlementError> {
        self.blocking(move |me| me.send_blocking(body)).await
    }

    /// Advances the epoch until it is at least `epoch` (the sequencer's key only).
    pub async fn advance_to_epoch(&self, epoch: u64) -> Result<(), SettlementError> {
        while self.epoch().await? < epoch {
            self.send(TxBody::AdvanceEpoch).await?;
        }
        Ok(())
    }
}

fn amount(a: u128) -> Amount {
    Amount::new(a)
}

impl Settlement for LedgerSettlement {
    type Account = AccountId;
    type ChannelId = Hash32;
    type VoucherSig = (AccountId, Signature);

    fn account(&self) -> AccountId {
        self.key.account()
    }

    async fn balance(&self, who: AccountId) -> Result<u128, SettlementError> {
        self.blocking(move |me| {
            let a = me.client.account(&who).map_err(ledger_err)?;
            Ok(a.map_or(0, |a| a.balance.units()))
        })
        .await
    }

    async fn stake_of(&self, who: AccountId) -> Result<StakeView, SettlementError> {
        self.blocking(move |me| {
            let Some(a) = me.client.account(&who).map_err(ledger_err)? else {
                return Ok(StakeView::default());
            };
            Ok(StakeView {
                stake: a.stake.units(),
                unbonding: a.unbonding.iter().map(|u| u.amount.units()).sum(),
                verifier: a.verifier,
            })
        })
        .await
    }

    async fn epoch(&self) -> Result<u64, SettlementError> {
        self.blocking(|me| Ok(me.client.status().map_err(ledger_err)?.epoch))
            .await
    }

    async fn stake(&self, value: u128) -> Result<(), SettlementError> {
        self.send(TxBody::Stake {
            amount: amount(value),
        })
        .await
        .map(drop)
    }

    async fn unstake(&self, value: u128) -> Result<(), SettlementError> {
        self.send(TxBody::Unstake {
            amount: amount(value),
        })
        .await
        .map(drop)
    }

    /// The ledger releases matured unbonding itself at the epoch's end: this only checks
    /// that nothing is still unbonding.
    async fn withdraw(&self) -> Result<(), SettlementError> {
        let s = self.stake_of(self.account()).await?;
        if s.unbonding > 0 {
            return Err(SettlementError::Refused(Refusal::StillUnbonding));
        }
        Ok(())
    }

    async fn register_verifier(&self, extra: u128) -> Result<(), SettlementError> {
        self.send(TxBody::RegisterVerifier {
            stake: amount(extra),
        })
        .await
        .map(drop)
    }

    async fn open_channel(
        &self,
        provider: AccountId,
        value: u128,
        timeout_epochs: u64,
    ) -> Result<Hash32, SettlementError> {
        let r = self
            .send(TxBody::OpenChannel {
                provider,
                amount: amount(value),
                timeout_epochs,
            })
            .await?;
        r.events
            .iter()
            .find_map(|e| match e {
                Event::ChannelOpened { channel, .. } => Some(*channel),
                _ => None,
            })
            .ok_or(SettlementError::Refused(Refusal::Other {
                code: "no ChannelOpened event".into(),
            }))
    }

    async fn top_up(&self, channel: Hash32, value: u128) -> Result<(), SettlementError> {
        self.send(TxBody::TopUpChannel {
            channel,
            amount: amount(value),
        })
        .await
        .map(drop)
    }

    fn sign_voucher(
        &self,
        channel: Hash32,
        cumulative: u128,
    ) -> Result<(AccountId, Signature), SettlementError> {
        let v = Voucher {
            chain_id: self.chain_id,
            channel,
            cumulative: amount(cumulative),
        };
        Ok((self.key.account(), v.sign(&self.key)))
    }

    async fn claim(
        &self,
        channel: Hash32,
        cumulative: u128,
        sig: &(AccountId, Signature),
    ) -> Result<(), SettlementError> {
        self.send(TxBody::ClaimVoucher {
            voucher: Voucher {
                chain_id: self.chain_id,
                channel,
                cumulative: amount(cumulative),
            },
            payer: sig.0,
            payer_sig: sig.1,
        })
        .await
        .map(drop)
    }

    async fn request_close(&self, channel: Hash32) -> Result<(), SettlementError> {
        self.send(TxBody::CloseChannel { channel }).await.map(drop)
    }

    /// The ledger closes a due channel itself at the epoch's end: this only checks it did.
    async fn finalize_close(&self, channel: Hash32) -> Result<(), SettlementError> {
        match self.channel(channel).await? {
            None => Err(SettlementError::Refused(Refusal::UnknownChannel)),
            Some(c) if c.closed => Ok(()),
            Some(_) => Err(SettlementError::Refused(Refusal::ChannelNotDue)),
        }
    }

    async fn channel(&self, channel: Hash32) -> Result<Option<ChannelView>, SettlementError> {
        self.blocking(move |me| {
            let c = me.client.channel(&channel).map_err(ledger_err)?;
            Ok(c.map(|c| ChannelView {
                deposit: c.deposit.units(),
                claimed: c.claimed.units(),
                closed: c.closed,
            }))
        })
        .await
    }

    async fn post_root(
        &self,
        epoch: u64,
        root: [u8; 32],
        receipts: u64,
        late: bool,
    ) -> Result<(), SettlementError> {
        self.send(TxBody::receipt_root(
            epoch,
            Hash32::from_bytes(root),
            receipts,
            late,
        ))
        .await
        .map(drop)
    }
}
