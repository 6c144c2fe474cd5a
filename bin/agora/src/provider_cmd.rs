//! `agora provider`: serve a model on the network and get paid per token.

use std::path::PathBuf;
use std::time::Duration;

use agora_core::Amount;
use agora_provider::{Provider, ProviderConfig};
use anyhow::Context;
use clap::Args;

use crate::net_args::{announce, NetArgs};
use crate::settlement_args::SettlementArgs;

/// Arguments of `agora provider`.
#[derive(Args, Debug)]
pub struct ProviderArgs {
    /// The model: a .gguf file or a Hugging Face directory.
    #[arg(long)]
    model: PathBuf,
    /// The name clients ask for (default: the file or directory name).
    #[arg(long)]
    name: Option<String>,
    /// The provider's key file (`agora keys new`): its ledger account, or on an EVM chain
    /// the seed of the account it is paid into.
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    settlement: SettlementArgs,
    /// Price per million prompt tokens, in base units.
    #[arg(long, default_value = "1000000")]
    price_in: Amount,
    /// Price per million output tokens, in base units.
    #[arg(long, alias = "price", default_value = "2000000")]
    price_out: Amount,
    /// Stake to keep bonded, in base units (bonded at start if short).
    #[arg(long, default_value = "0")]
    stake: Amount,
    /// Requests that may wait for the model at once; more are refused as busy.
    #[arg(long, default_value_t = 64)]
    capacity: u32,
    /// Hardware class announced in offers (default: cpu-<architecture>).
    #[arg(long)]
    hardware: Option<String>,
    /// Region announced in offers.
    #[arg(long, default_value = "local")]
    region: String,
    /// Seconds an offer lives unless renewed.
    #[arg(long, default_value_t = 30)]
    offer_ttl_secs: u64,
    /// Seconds between offer renewals.
    #[arg(long, default_value_t = 5)]
    renew_secs: u64,
    /// Seconds between voucher claims on settlement.
    #[arg(long, default_value_t = 10)]
    claim_secs: u64,
    /// Where the receipt log (audit material) is kept.
    #[arg(long, default_value = "agora-provider-data")]
    data: PathBuf,
    #[command(flatten)]
    net: NetArgs,
    /// Serve Prometheus metrics on http://ADDR/metrics (port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Also stop when stdin reaches its end (how `agora devnet` stops its children).
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
    /// Plant a fake fraud in about one answer in N, to catch verifiers that approve without
    /// auditing. On the ledger the key must be its planter; users still get honest answers.
    #[arg(long, value_name = "N")]
    plant_one_in: Option<u32>,
    /// Test builds only (feature `adversary`): cheat this way, to show audits catch it.
    #[cfg(feature = "adversary")]
    #[arg(long, value_enum)]
    cheat: Option<Cheat>,
}

/// How an adversarial provider cheats (test builds only).
#[cfg(feature = "adversary")]
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Cheat {
    /// Serve Q4_0 weights while claiming the announced model.
    Quantized,
    /// Serve honestly but refuse to hand over audit material.
    Refuse,
    /// Serve honestly but leave every second receipt out of the posted roots.
    Omit,
    /// Serve honestly but claim and charge a thousand times the prompt's tokens.
    Overcharge,
}

/// Runs a provider until interrupted.
pub fn run(args: ProviderArgs) -> anyhow::Result<()> {
    #[allow(unused_mut)]
    let mut model = agora_model::load(&args.model, &agora_model::LoadOptions::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    #[cfg(feature = "adversary")]
    if let Some(Cheat::Quantized) = args.cheat {
        let claimed = (model.id, model.manifest.clone());
        model = agora_model::load(
            &args.model,
            &agora_model::LoadOptions {
                quantize: Some(candle_core::quantized::GgmlDType::Q4_0),
            },
        )?;
        (model.id, model.manifest) = claimed;
        tracing::warn!("CHEATING: serving Q4_0 weights under the model's id");
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    };
    let key = crate::keys_cmd::load_key(&args.key)?;
    let cfg = ProviderConfig {
        settlement: args.settlement.target()?,
        account_seed: key.seed(),
        net: args.net.config()?,
        model_name: name.clone(),
        price_in: args.price_in,
        price_out: args.price_out,
        stake: args.stake,
        capacity: args.capacity,
        hardware: args
            .hardware
            .clone()
            .unwrap_or_else(|| format!("cpu-{}", std::env::consts::ARCH)),
        region: args.region.clone(),
        offer_ttl: Duration::from_secs(args.offer_ttl_secs.max(1)),
        renew_every: Duration::from_secs(args.renew_secs.max(1)),
        claim_every: Duration::from_secs(args.claim_secs.max(1)),
        data_dir: args.data.clone(),
        plant_one_in: args.plant_one_in,
        #[cfg(feature = "adversary")]
        refuse_audits: matches!(args.cheat, Some(Cheat::Refuse)),
        #[cfg(feature = "adversary")]
        omit_receipts: matches!(args.cheat, Some(Cheat::Omit)),
        #[cfg(feature = "adversary")]
        overcharge: matches!(args.cheat, Some(Cheat::Overcharge)),
    };
    tracing::info!(model = %model.id, %name, "model loaded");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        agora_metrics::provider();
        if let Some(addr) = args.metrics {
            let bound = agora_metrics::listen(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the metrics listener {addr}: {e}"))?;
            announce(&format!("metrics http://{bound}/metrics"));
        }
        let provider = Provider::start(&cfg, model).await?;
        for addr in provider.node().listen_addrs().await? {
            announce(&format!("p2p {addr}"));
        }
        announce(&format!("account {}", key.account()));
        provider
            .run(cfg, crate::shutdown::signal(args.stop_on_stdin_eof))
            .await?;
        anyhow::Ok(())
    })
}
