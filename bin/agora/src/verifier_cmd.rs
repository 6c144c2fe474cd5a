//! `agora verifier`: audit a sample of the network's answers and catch cheats.

use std::path::PathBuf;

use agora_core::Amount;
use agora_verifier::{Verifier, VerifierConfig};
use agora_verify::Thresholds;
use clap::Args;

use crate::net_args::{announce, NetArgs};
use crate::settlement_args::SettlementArgs;

/// Arguments of `agora verifier`.
#[derive(Args, Debug)]
pub struct VerifierArgs {
    /// The verifier's key file (`agora keys new`); bounties are paid to its account (on an
    /// EVM chain, the account derived from it).
    #[arg(long)]
    key: PathBuf,
    /// Stake to bond when registering, in base units.
    #[arg(long, default_value = "100")]
    stake: Amount,
    /// A model it can audit (repeatable): a .gguf file or a Hugging Face directory.
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Where it audits: `--settlement ledger --ledger URL` (the default) or
    /// `--settlement evm --rpc URL --contracts FILE`.
    #[command(flatten)]
    settlement: SettlementArgs,
    /// Test builds only (feature `adversary`): approve every assigned leaf without auditing.
    #[cfg(feature = "adversary")]
    #[arg(long)]
    lazy: bool,
    /// Test builds only (feature `adversary`): reveal every audited leaf as failed.
    #[cfg(feature = "adversary")]
    #[arg(long)]
    frame: bool,
    #[command(flatten)]
    net: NetArgs,
    /// Serve Prometheus metrics on http://ADDR/metrics (port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Also stop when stdin reaches its end (how `agora devnet` stops its children).
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// Runs a verifier until interrupted.
pub fn run(args: VerifierArgs) -> anyhow::Result<()> {
    let key = crate::keys_cmd::load_key(&args.key)?;
    let cfg = VerifierConfig {
        settlement: args.settlement.target()?,
        account_seed: key.seed(),
        net: args.net.config()?,
        models: args.models.clone(),
        stake: args.stake,
        thresholds: Thresholds::default(),
        #[cfg(feature = "adversary")]
        lazy: args.lazy,
        #[cfg(feature = "adversary")]
        framer: args.frame,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        agora_metrics::verifier();
        if let Some(addr) = args.metrics {
            let bound = agora_metrics::listen(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the metrics listener {addr}: {e}"))?;
            announce(&format!("metrics http://{bound}/metrics"));
        }
        let verifier = Verifier::start(cfg).await?;
        for addr in verifier.node().listen_addrs().await? {
            announce(&format!("p2p {addr}"));
        }
        announce(&format!("account {}", key.account()));
        verifier
            .run(crate::shutdown::signal(args.stop_on_stdin_eof))
            .await?;
        anyhow::Ok(())
    })
}
