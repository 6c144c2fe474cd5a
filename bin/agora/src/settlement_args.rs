//! Settlement flags shared by `agora provider`, `agora verifier` and `agora gateway`:
//! `--settlement ledger --ledger URL` (the default) or
//! `--settlement evm --rpc URL --contracts FILE`.

use std::path::PathBuf;

use agora_settlement::open::SettlementTarget;
use anyhow::Context;
use clap::{Args, ValueEnum};

/// Which settlement a command joins.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SettlementChoice {
    /// The embedded ledger (`agora ledger serve`), at `--ledger`.
    #[default]
    Ledger,
    /// The Agora contracts on an EVM chain, at `--rpc`, named by `--contracts`.
    Evm,
}

/// Where settlement lives.
#[derive(Args, Debug, Clone)]
pub struct SettlementArgs {
    /// Which settlement to join.
    #[arg(long, value_enum, default_value_t = SettlementChoice::Ledger)]
    pub settlement: SettlementChoice,
    /// The ledger node (with `--settlement ledger`).
    #[arg(long, default_value = "http://127.0.0.1:7420")]
    pub ledger: String,
    /// The EVM chain's JSON-RPC URL (with `--settlement evm`).
    #[arg(long, value_name = "URL", required_if_eq("settlement", "evm"))]
    pub rpc: Option<String>,
    /// The deployment file (JSON: chain id, token, settlement contract, start block, rules)
    /// that `agora devnet --settlement evm` writes, or a deployment to a real chain
    /// (docs/settlement.md) (with `--settlement evm`).
    #[arg(long, value_name = "FILE", required_if_eq("settlement", "evm"))]
    pub contracts: Option<PathBuf>,
}

impl SettlementArgs {
    /// The settlement these flags name; reads the deployment file.
    pub fn target(&self) -> anyhow::Result<SettlementTarget> {
        Ok(match self.settlement {
            SettlementChoice::Ledger => SettlementTarget::Ledger {
                url: self.ledger.clone(),
            },
            SettlementChoice::Evm => {
                let rpc = self
                    .rpc
                    .clone()
                    .context("--settlement evm needs --rpc URL")?;
                let file = self
                    .contracts
                    .as_ref()
                    .context("--settlement evm needs --contracts FILE")?;
                let deployment = agora_evm::Deployment::load(file)
                    .with_context(|| format!("reading the deployment file {}", file.display()))?;
                SettlementTarget::Evm { rpc, deployment }
            }
        })
    }
}
