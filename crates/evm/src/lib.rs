//! Agora settlement on an EVM chain: the compiled contracts' bindings, deployment, and a
//! client for stake, channels, vouchers, receipt roots and audits.
//!
//! The contracts live in `contracts/src` and are compiled by `scripts/build-contracts` into
//! `contracts/out/*.json`, which [`bindings`] binds at compile time. [`deploy`] puts a test
//! stablecoin and the settlement contract on a chain; [`SettlementClient`] is one account's
//! handle on them: it signs every transaction locally with an explicit nonce and, when an RPC
//! call fails or times out, re-sends the same signed bytes, so a retry can never pay twice.
//! [`anvil::Anvil`] runs a local chain for tests and devnets.
//!
//! ```no_run
//! # async fn run() -> Result<(), agora_evm::EvmError> {
//! use agora_evm::{anvil::{find_anvil, Anvil}, deploy, Params, SettlementClient};
//! let anvil = Anvil::start(&find_anvil().expect("anvil installed"), 31337)?;
//! let deployer = anvil.keys()[0].clone();
//! let deployment = deploy(anvil.url(), deployer.clone(), Params::devnet(10)).await?;
//! let admin = SettlementClient::connect(anvil.url(), deployer, deployment.clone()).await?;
//! let provider = SettlementClient::connect(anvil.url(), anvil.keys()[1].clone(), deployment).await?;
//! admin.mint(provider.address(), 1_000).await?;
//! provider.stake(500).await?;
//! # Ok(()) }
//! ```

pub mod anvil;
mod client;
mod deploy;
mod error;
pub mod receipts;

pub use client::{
    audit_commitment, plant_commitment, sign_key_binding, verify_key_binding, Account, Challenge,
    Channel, ClientOptions, Demand, Finality, FraudEvidence, LeafAudit, ReceiptCommitment,
    ReceiptRoot, SettlementClient, Submitted, KEY_BINDING_DOMAIN,
};
pub use deploy::{deploy, deploy_with_token, Deployment, Params};
pub use error::{EvmError, Refusal};

/// Bindings generated from the committed artifacts in `contracts/out`.
pub mod bindings {
    // Generated from the ABI: the `Slashed` event's constructor takes its ten fields.
    #![allow(clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc, all_derives)]
        AgoraSettlement,
        "../../contracts/out/AgoraSettlement.json"
    );
    // The dispute functions, called at the settlement's address (its fallback runs them). In
    // a module of their own: their shared structs (`AgoraState::*`) are AgoraSettlement's too.
    pub use disputes::AgoraDisputes;
    mod disputes {
        alloy::sol!(
            #[sol(rpc, all_derives)]
            AgoraDisputes,
            "../../contracts/out/AgoraDisputes.json"
        );
    }
    alloy::sol!(
        #[sol(rpc, all_derives)]
        TestStablecoin,
        "../../contracts/out/TestStablecoin.json"
    );
    alloy::sol! {
        /// What a payer signs (EIP-712): the provider may have claimed `cumulative` in total
        /// from `channel`. The domain is ("Agora", "1", chain id, settlement contract).
        #[derive(Debug, PartialEq, Eq)]
        struct Voucher {
            bytes32 channel;
            uint256 cumulative;
        }

        /// What a confirming verifier signs (EIP-712): leaf `index` of `provider`'s root of
        /// `epoch` is the receipt leaf (receipt, channel, cost), and it failed its audit.
        #[derive(Debug, PartialEq, Eq)]
        struct Verdict {
            address provider;
            uint64 epoch;
            uint64 index;
            bytes32 receipt;
            bytes32 channel;
            uint128 cost;
        }

        /// What a provider signs (EIP-712) with each receipt it hands out: the receipt leaf it
        /// must put under its root of `epoch` or the next.
        #[derive(Debug, PartialEq, Eq)]
        struct Receipt {
            bytes32 receipt;
            bytes32 channel;
            uint128 cost;
            uint64 epoch;
        }

        /// What a confirming verifier signs (EIP-712): the provider withheld the leaf's
        /// material from it too.
        #[derive(Debug, PartialEq, Eq)]
        struct Withheld {
            address provider;
            uint64 epoch;
            uint64 index;
        }

        /// What a confirming verifier signs (EIP-712): the planted answer at the leaf fails.
        #[derive(Debug, PartialEq, Eq)]
        struct PlantConfirmation {
            address provider;
            uint64 epoch;
            uint64 index;
        }
    }
}
