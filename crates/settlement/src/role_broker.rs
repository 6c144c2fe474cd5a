//! What the broker (the gateway's buyer) needs of settlement beyond [`NetworkSettlement`]:
//! [`BrokerSettlement`], one payer account's channel lifecycle, balance, the id of the
//! channel it opens next (so a crash between sending an open and booking it loses nothing),
//! and inclusion challenges with the provider's commitment of the settlement's own kind.
//!
//! Each API key pays from its own account: on the ledger its ed25519 key; on an EVM chain
//! the secp256k1 account [`crate::open::evm_signer_for`] derives from the same seed, which
//! binds the ed25519 key on chain ([`BrokerSettlement::prepare_payer`]) so a provider can
//! tell that a request signed by the key comes from the channel's payer.

use crate::evm::{evm_err, EvmSettlement};
use crate::ledger::{ledger_err, LedgerSettlement};
use crate::network::{NetworkSettlement, Party, SettlementFuture, SettlementKind};
use crate::open::Opened;
use crate::{Expiry, Refusal, Settlement, SettlementError, SignedReceipt};
use agora_core::{Amount, Hash32, Keypair};
use agora_evm::bindings::AgoraSettlement;
use agora_evm::receipts::ReceiptLeaf;
use agora_evm::{EvmError, ReceiptCommitment};
use alloy::primitives::B256;
use std::sync::Arc;

/// One payer account's settlement, as the broker uses it; see the module docs.
pub trait BrokerSettlement: NetworkSettlement {
    /// This account as its settlement names it: the ed25519 key in hex on the ledger, the
    /// `0x` address on a chain (what an operator funds).
    fn account_label(&self) -> String;
    /// This account.
    fn own_party(&self) -> Party;
    /// What this account can spend (ledger balance; token balance on a chain).
    fn own_balance(&self) -> SettlementFuture<'_, Amount>;
    /// The id the next channel this account opens will have.
    fn next_channel_id(&self) -> SettlementFuture<'_, Hash32>;
    /// Makes this account the one `key` (the payer's network key, which signs its requests)
    /// stands for: nothing on the ledger (the key is the account); on a chain it binds the
    /// key unless it is bound already.
    fn prepare_payer<'a>(&'a self, key: &'a Keypair) -> SettlementFuture<'a, ()>;
    /// Asks to close this account's channel (after its timeout).
    fn request_channel_close(&self, channel: Hash32) -> SettlementFuture<'_, ()>;
    /// Ends a channel whose claim window passed, refunding this account (the ledger does it
    /// itself at the epoch's end; there this only confirms it did).
    fn finalize_channel_close(&self, channel: Hash32) -> SettlementFuture<'_, ()>;
    /// Whether the provider's commitment to `receipt` would carry an inclusion challenge on
    /// this settlement: the receipt's own ed25519 signature on the ledger; on a chain
    /// `chain_sig`, the EIP-712 `Receipt` signature of the account the receipt's provider
    /// key stands for. An answer without one is not paid for: its omission could not be
    /// challenged.
    fn receipt_commitment_holds<'a>(
        &'a self,
        receipt: &'a SignedReceipt,
        chain_sig: Option<&'a [u8]>,
    ) -> SettlementFuture<'a, bool>;
    /// As the payer of the receipt's channel, challenges its omission from the provider's
    /// roots (with `chain_sig` on a chain; refused as `ForgedReceipt` without a 65-byte one
    /// before anything is sent).
    fn challenge_receipt<'a>(
        &'a self,
        receipt: &'a SignedReceipt,
        chain_sig: Option<&'a [u8]>,
    ) -> SettlementFuture<'a, ()>;
    /// Slashes the provider of this account's inclusion challenge of `receipt` (its BLAKE3
    /// hash) if it was left unanswered past its deadline, refunding this account its bond and
    /// the receipt's cost. On a chain nobody else has to call it; the ledger does it itself
    /// when an epoch starts ([`Expiry::Settled`] there).
    fn expire_receipt_challenge(&self, receipt: Hash32) -> SettlementFuture<'_, Expiry>;
}

/// A shared handle on one payer account.
pub type SharedBrokerSettlement = Arc<dyn BrokerSettlement>;

impl Opened {
    /// This account as the broker uses it.
    pub fn broker(&self) -> SharedBrokerSettlement {
        match self {
            Opened::Ledger(s) => s.clone(),
            Opened::Evm(s) => s.clone(),
        }
    }
}

/// The account a payer with ed25519 seed `seed` pays from on a `kind` settlement.
pub fn payer_party(kind: SettlementKind, key: &Keypair) -> Party {
    match kind {
        SettlementKind::Ledger => Party::Key(key.account()),
        SettlementKind::Evm => {
            Party::Address(crate::open::evm_signer_for(&key.seed()).address().0 .0)
        }
    }
}

/// How a [`Party`] is written for an operator.
pub fn party_label(p: &Party) -> String {
    match p {
        Party::Key(k) => k.to_string(),
        Party::Address(a) => alloy::primitives::Address::from(*a).to_checksum(None),
    }
}

fn refused(r: Refusal) -> SettlementError {
    SettlementError::Refused(r)
}

// ----- the embedded ledger -----

impl BrokerSettlement for LedgerSettlement {
    fn account_label(&self) -> String {
        Settlement::account(self).to_string()
    }

    fn own_party(&self) -> Party {
        Party::Key(Settlement::account(self))
    }

    fn own_balance(&self) -> SettlementFuture<'_, Amount> {
        Box::pin(async move {
            let units = Settlement::balance(self, Settlement::account(self)).await?;
            Ok(Amount::new(units))
        })
    }

    /// The ledger names a channel by its payer's nonce when it opens.
    fn next_channel_id(&self) -> SettlementFuture<'_, Hash32> {
        Box::pin(async move {
            let (client, me) = (self.client().clone(), Settlement::account(self));
            let nonce = tokio::task::spawn_blocking(move || client.next_nonce(&me))
                .await?
                .map_err(ledger_err)?;
            Ok(agora_ledger::tx::channel_id(
                Settlement::chain_id(self),
                &me,
                nonce,
            ))
        })
    }

    fn prepare_payer<'a>(&'a self, _key: &'a Keypair) -> SettlementFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn request_channel_close(&self, channel: Hash32) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::request_close(self, channel))
    }

    fn finalize_channel_close(&self, channel: Hash32) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::finalize_close(self, channel))
    }

    fn receipt_commitment_holds<'a>(
        &'a self,
        receipt: &'a SignedReceipt,
        _chain_sig: Option<&'a [u8]>,
    ) -> SettlementFuture<'a, bool> {
        Box::pin(async move { Ok(receipt.verify().is_ok()) })
    }

    fn challenge_receipt<'a>(
        &'a self,
        receipt: &'a SignedReceipt,
        _chain_sig: Option<&'a [u8]>,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(Settlement::challenge_inclusion(self, receipt))
    }

    /// `expire_challenges` runs at each epoch's start.
    fn expire_receipt_challenge(&self, _receipt: Hash32) -> SettlementFuture<'_, Expiry> {
        Box::pin(async { Ok(Expiry::Settled) })
    }
}

// ----- an EVM chain -----

impl EvmSettlement {
    /// The provider's commitment to `receipt` on this chain, if `chain_sig` is 65 bytes.
    fn commitment(receipt: &SignedReceipt, chain_sig: Option<&[u8]>) -> Option<ReceiptCommitment> {
        let sig: [u8; 65] = chain_sig?.try_into().ok()?;
        Some(ReceiptCommitment {
            leaf: ReceiptLeaf::of(receipt),
            epoch: receipt.receipt.epoch,
            sig,
        })
    }
}

impl BrokerSettlement for EvmSettlement {
    fn account_label(&self) -> String {
        self.client().address().to_checksum(None)
    }

    fn own_party(&self) -> Party {
        Party::Address(self.client().address().0 .0)
    }

    fn own_balance(&self) -> SettlementFuture<'_, Amount> {
        Box::pin(async move {
            let units = Settlement::balance(self, self.client().address()).await?;
            Ok(Amount::new(units))
        })
    }

    /// The contract names a channel by its payer's channel nonce.
    fn next_channel_id(&self) -> SettlementFuture<'_, Hash32> {
        Box::pin(async move {
            let d = self
                .client()
                .deployment()
                .ok_or_else(|| evm_err(EvmError::NotDeployed))?;
            let c = AgoraSettlement::new(d.settlement, self.client().provider());
            let me = self.client().address();
            let call = |what: &'static str| {
                move |e: alloy::contract::Error| {
                    SettlementError::Evm(Box::new(EvmError::Read {
                        what,
                        source: Box::new(e),
                    }))
                }
            };
            let nonce = c
                .channelNonce(me)
                .call()
                .await
                .map_err(call("channelNonce"))?;
            let id = c
                .channelId(me, nonce)
                .call()
                .await
                .map_err(call("channelId"))?;
            Ok(Hash32::from_bytes(id.0))
        })
    }

    fn prepare_payer<'a>(&'a self, key: &'a Keypair) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let me = self.client().address();
            let bound = self
                .client()
                .verified_network_key(me)
                .await
                .map_err(evm_err)?;
            if bound != Some(key.account()) {
                self.client().bind_network_key(key).await.map_err(evm_err)?;
            }
            Ok(())
        })
    }

    fn request_channel_close(&self, channel: Hash32) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::request_close(
            self,
            B256::from(*channel.as_bytes()),
        ))
    }

    fn finalize_channel_close(&self, channel: Hash32) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::finalize_close(
            self,
            B256::from(*channel.as_bytes()),
        ))
    }

    /// Recovers the signer of the receipt's EIP-712 digest (low `s` only, as the contract)
    /// and compares it with the account the receipt's provider key stands for.
    fn receipt_commitment_holds<'a>(
        &'a self,
        receipt: &'a SignedReceipt,
        chain_sig: Option<&'a [u8]>,
    ) -> SettlementFuture<'a, bool> {
        Box::pin(async move {
            if receipt.verify().is_err() {
                return Ok(false);
            }
            let Some(c) = EvmSettlement::commitment(receipt, chain_sig) else {
                return Ok(false);
            };
            if !crate::network::low_s(&c.sig) {
                return Ok(false);
            }
            let Ok(digest) = self.client().receipt_digest(&c.leaf, c.epoch) else {
                return Ok(false);
            };
            let Ok(sig) = alloy::primitives::Signature::from_raw(&c.sig) else {
                return Ok(false);
            };
            let Ok(signer) = sig.recover_address_from_prehash(&digest) else {
                return Ok(false);
            };
            let provider = self.account_of_key(receipt.receipt.provider).await?;
            Ok(provider == Some(signer))
        })
    }

    fn challenge_receipt<'a>(
        &'a self,
        receipt: &'a SignedReceipt,
        chain_sig: Option<&'a [u8]>,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let Some(c) = EvmSettlement::commitment(receipt, chain_sig) else {
                return Err(refused(Refusal::ForgedReceipt));
            };
            Settlement::challenge_inclusion(self, &c).await
        })
    }

    /// Reads the challenge first: a call before the deadline passed, or after an answer,
    /// would only be refused.
    fn expire_receipt_challenge(&self, receipt: Hash32) -> SettlementFuture<'_, Expiry> {
        Box::pin(async move {
            let key = B256::from(*receipt.as_bytes());
            let c = self.client().challenge(key).await.map_err(evm_err)?;
            let Some(c) = c.filter(|c| c.open) else {
                return Ok(Expiry::Settled);
            };
            // `expireChallenge` takes it once the epoch is past the due one.
            let due = c.due_epoch.saturating_add(1);
            if Settlement::epoch(self).await? < due {
                return Ok(Expiry::NotDue { epoch: due });
            }
            match Settlement::expire_challenge(self, *receipt.as_bytes()).await {
                Ok(()) => Ok(Expiry::Charged),
                // `NotOpenToAnswer`: answered or charged between the read and the call.
                Err(SettlementError::Refused(Refusal::Malformed)) => Ok(Expiry::Settled),
                Err(e) => Err(e),
            }
        })
    }
}
