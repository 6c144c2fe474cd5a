//! An EVM chain as [`Settlement`]: the `AgoraSettlement` contract through `agora-evm`.

use crate::{ChannelView, Refusal, Settlement, SettlementError, StakeView};
use agora_evm::bindings::AgoraSettlement::AgoraSettlementErrors as E;
use agora_evm::{EvmError, SettlementClient};
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use std::sync::Arc;

/// One account on the settlement contract.
#[derive(Clone)]
pub struct EvmSettlement {
    client: Arc<SettlementClient>,
}

impl EvmSettlement {
    /// Wraps a connected client.
    pub fn new(client: SettlementClient) -> EvmSettlement {
        EvmSettlement {
            client: Arc::new(client),
        }
    }

    /// The client underneath.
    pub fn client(&self) -> &SettlementClient {
        &self.client
    }
}

fn refusal(e: &E) -> Refusal {
    match e {
        E::InsufficientStake(_) => Refusal::InsufficientStake,
        E::StillUnbonding(_) => Refusal::StillUnbonding,
        E::UnknownChannel(_) => Refusal::UnknownChannel,
        E::ChannelIsClosed(_) => Refusal::ChannelClosed,
        E::NotChannelPayer(_) => Refusal::NotChannelPayer,
        E::NotChannelProvider(_) => Refusal::NotChannelProvider,
        E::ForgedVoucher(_) => Refusal::ForgedVoucher,
        E::DoubleClaim(_) => Refusal::DoubleClaim,
        E::OverClaim(_) => Refusal::OverClaim,
        E::ChannelNotExpired(_) => Refusal::ChannelNotExpired,
        E::ChannelNotDue(_) => Refusal::ChannelNotDue,
        E::ChannelTimeoutTooShort(_) => Refusal::ChannelTimeout,
        E::WrongEpoch(_) => Refusal::WrongEpoch,
        E::RootAlreadyPosted(_) => Refusal::RootAlreadyPosted,
        // The token refused to move the sender's tokens: not enough of them.
        E::TokenCallFailed(_) => Refusal::Overdraft,
        E::ZeroAmount(_)
        | E::AmountTooLarge(_)
        | E::BadChannelParty(_)
        | E::BadReceiptCount(_)
        | E::BadNetworkKeyBinding(_) => Refusal::Malformed,
        other => Refusal::Other {
            code: format!("{other:?}"),
        },
    }
}

fn evm_err(e: EvmError) -> SettlementError {
    match &e {
        EvmError::Refused(agora_evm::Refusal::Settlement(s)) => {
            SettlementError::Refused(refusal(s))
        }
        EvmError::Refused(agora_evm::Refusal::Token(_)) => {
            SettlementError::Refused(Refusal::Overdraft)
        }
        _ => SettlementError::Evm(Box::new(e)),
    }
}

impl Settlement for EvmSettlement {
    type Account = Address;
    type ChannelId = B256;
    type VoucherSig = [u8; 65];

    fn account(&self) -> Address {
        self.client.address()
    }

    async fn balance(&self, who: Address) -> Result<u128, SettlementError> {
        self.client.token_balance(who).await.map_err(evm_err)
    }

    async fn stake_of(&self, who: Address) -> Result<StakeView, SettlementError> {
        let a = self.client.account(who).await.map_err(evm_err)?;
        Ok(StakeView {
            stake: a.stake,
            unbonding: a.unbonding,
            verifier: a.verifier,
        })
    }

    /// The epoch of the next block (where the next transaction lands).
    async fn epoch(&self) -> Result<u64, SettlementError> {
        let d = self
            .client
            .deployment()
            .ok_or(SettlementError::Evm(Box::new(EvmError::NotDeployed)))?;
        let latest = self
            .client
            .provider()
            .get_block_number()
            .await
            .map_err(|source| {
                SettlementError::Evm(Box::new(EvmError::Rpc {
                    what: "eth_blockNumber",
                    attempts: 1,
                    source,
                }))
            })?;
        Ok((latest + 1).saturating_sub(d.start_block) / d.params.epoch_blocks)
    }

    async fn stake(&self, value: u128) -> Result<(), SettlementError> {
        self.client.stake(value).await.map(drop).map_err(evm_err)
    }

    async fn unstake(&self, value: u128) -> Result<(), SettlementError> {
        self.client.unstake(value).await.map(drop).map_err(evm_err)
    }

    async fn withdraw(&self) -> Result<(), SettlementError> {
        self.client.withdraw().await.map(drop).map_err(evm_err)
    }

    async fn register_verifier(&self, extra: u128) -> Result<(), SettlementError> {
        self.client
            .register_verifier(extra)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn open_channel(
        &self,
        provider: Address,
        value: u128,
        timeout_epochs: u64,
    ) -> Result<B256, SettlementError> {
        self.client
            .open_channel(provider, value, timeout_epochs)
            .await
            .map(|(id, _)| id)
            .map_err(evm_err)
    }

    async fn top_up(&self, channel: B256, value: u128) -> Result<(), SettlementError> {
        self.client
            .top_up(channel, value)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    fn sign_voucher(&self, channel: B256, cumulative: u128) -> Result<[u8; 65], SettlementError> {
        self.client
            .sign_voucher(channel, cumulative)
            .map_err(evm_err)
    }

    async fn claim(
        &self,
        channel: B256,
        cumulative: u128,
        sig: &[u8; 65],
    ) -> Result<(), SettlementError> {
        self.client
            .claim(channel, cumulative, sig)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn request_close(&self, channel: B256) -> Result<(), SettlementError> {
        self.client
            .request_close(channel)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn finalize_close(&self, channel: B256) -> Result<(), SettlementError> {
        self.client
            .finalize_close(channel)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn channel(&self, channel: B256) -> Result<Option<ChannelView>, SettlementError> {
        let c = self.client.channel(channel).await.map_err(evm_err)?;
        Ok(c.map(|c| ChannelView {
            deposit: c.deposit,
            claimed: c.claimed,
            closed: c.closed,
        }))
    }

    async fn post_root(
        &self,
        epoch: u64,
        root: [u8; 32],
        receipts: u64,
        late: bool,
    ) -> Result<(), SettlementError> {
        let root = B256::from(root);
        let r = if late {
            self.client.post_late_root(epoch, root, receipts).await
        } else {
            self.client.post_root(epoch, root, receipts).await
        };
        r.map(drop).map_err(evm_err)
    }
}
