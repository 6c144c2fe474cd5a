//! `agora gateway`: the OpenAI-compatible HTTP API in front of the network, and its API keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agora_broker::{Broker, BrokerBackend, BrokerConfig};
use agora_core::Amount;
use agora_gateway::{KeyStore, Limits};
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::net_args::{announce, NetArgs};
use crate::settlement_args::{SettlementArgs, SettlementChoice};

/// Arguments of `agora gateway`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GatewayArgs {
    #[command(subcommand)]
    keys: Option<GatewayCmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// `agora gateway keys ...`.
#[derive(Subcommand, Debug)]
enum GatewayCmd {
    /// Manage API keys (while the gateway is stopped: it holds the key file open).
    #[command(subcommand)]
    Keys(KeysCmd),
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Create an API key and the settlement account it pays from; prints the secret once.
    Create {
        /// The settlement the account is named for (an ed25519 account on the ledger, the
        /// 0x address derived from the same seed on an EVM chain).
        #[arg(long, value_enum, default_value_t = SettlementChoice::Ledger)]
        settlement: SettlementChoice,
        /// A label to recognise the key by.
        #[arg(long, default_value = "")]
        label: String,
        /// The key store.
        #[arg(long, default_value = "agora-gateway-keys.redb")]
        keys: PathBuf,
        /// The most the key (with the child keys it mints) may spend, in base units.
        #[arg(long)]
        budget: Option<Amount>,
        /// Requests per minute the key may make (default: the gateway's per-key rate).
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// Unix seconds after which the key stops working.
        #[arg(long)]
        expires_at: Option<u64>,
        /// A model (name or ModelId) the key may use (repeatable; default: any).
        #[arg(long = "model")]
        models: Vec<String>,
    },
    /// List keys (ids, labels, accounts; never secrets).
    List {
        /// The key store.
        #[arg(long, default_value = "agora-gateway-keys.redb")]
        keys: PathBuf,
    },
    /// Revoke a key by id; it stops working at once.
    Revoke {
        /// The key id (`key_...`).
        id: String,
        /// The key store.
        #[arg(long, default_value = "agora-gateway-keys.redb")]
        keys: PathBuf,
    },
}

/// Flags of the running gateway.
#[derive(Args, Debug)]
struct ServeArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The API key store.
    #[arg(long, default_value = "agora-gateway-keys.redb")]
    keys: PathBuf,
    #[command(flatten)]
    settlement: SettlementArgs,
    /// Highest price per million prompt tokens the gateway pays, in base units.
    #[arg(long)]
    max_price_in: Option<Amount>,
    /// Highest price per million output tokens the gateway pays, in base units.
    #[arg(long)]
    max_price_out: Option<Amount>,
    /// Least escrow put in a payment channel when it opens or is topped up, in base units.
    #[arg(long, default_value = "1000000")]
    min_deposit: Amount,
    /// Milliseconds without a token before a stream moves to another provider.
    #[arg(long, default_value_t = 10_000)]
    stall_ms: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Largest prompt in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_prompt_bytes: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens: u32,
    /// A model file (GGUF or Hugging Face directory) whose tokenizer and chat template the
    /// gateway uses to count prompt tokens and render text itself, bound to its ModelId
    /// (repeatable). For models without one, the prompt charge is capped by a byte bound
    /// and the text is the provider's.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Requests per second one API key may make, sustained (429 above).
    #[arg(long, default_value_t = 20)]
    key_rate: u32,
    /// Requests one API key may make at once above its sustained rate.
    #[arg(long, default_value_t = 100)]
    key_burst: u32,
    /// Answers one API key may have in flight at once.
    #[arg(long, default_value_t = 64)]
    key_concurrency: u32,
    /// The payment-channel books (redb), kept across restarts.
    #[arg(long, default_value = "agora-gateway-channels.redb")]
    channels: PathBuf,
    /// Least bonded stake (base units, read from the ledger) a provider needs to be routed to.
    #[arg(long, default_value = "100")]
    min_stake: Amount,
    #[command(flatten)]
    net: NetArgs,
    /// A DiLoCo coordinator's run folder, shown on the explorer's DiLoCo page.
    #[arg(long, value_name = "RUN_DIR")]
    explorer_diloco: Option<PathBuf>,
    /// Serve no explorer at /explorer.
    #[arg(long)]
    no_explorer: bool,
    /// Also stop when stdin reaches its end (how `agora devnet` stops its children).
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// Runs the gateway or a key command.
pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    match args.keys {
        Some(GatewayCmd::Keys(cmd)) => keys(cmd),
        None => serve(args.serve),
    }
}

fn open_keys(path: &std::path::Path) -> anyhow::Result<KeyStore> {
    KeyStore::open(path).with_context(|| format!("opening the key store {}", path.display()))
}

fn keys(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Create {
            settlement,
            label,
            keys,
            budget,
            requests_per_minute,
            expires_at,
            models,
        } => {
            let policy = agora_gateway::KeyPolicy {
                parent: None,
                budget,
                requests_per_minute: requests_per_minute.filter(|&r| r > 0),
                expires_ms: expires_at.map(|s| s.saturating_mul(1000)),
                models: (!models.is_empty()).then_some(models),
            };
            let store = open_keys(&keys)?;
            let (secret, record) = store.create_with(&label, policy)?;
            println!("{secret}");
            let seed = store
                .seed_of(&record.account)
                .context("the new key's account seed")?;
            let key = agora_core::Keypair::from_seed(seed);
            let account = match settlement {
                SettlementChoice::Ledger => format!("ledger account {}", record.account),
                SettlementChoice::Evm => format!(
                    "EVM account {} (tokens to spend and a little native gas for its transactions)",
                    agora_settlement::role_broker::party_label(
                        &agora_settlement::role_broker::payer_party(
                            agora_settlement::network::SettlementKind::Evm,
                            &key
                        )
                    )
                ),
            };
            eprintln!(
                "key {} pays from {account}; fund that account to give it credit. The secret is shown only now.",
                record.id
            );
        }
        KeysCmd::List { keys } => {
            for r in open_keys(&keys)?.list()? {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        KeysCmd::Revoke { id, keys } => {
            let r = open_keys(&keys)?.revoke(&id)?;
            eprintln!("revoked {}", r.id);
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let keys = Arc::new(open_keys(&args.keys)?);
    let target = args.settlement.target()?;
    if let agora_settlement::open::SettlementTarget::Evm { deployment, .. } = &target {
        tracing::info!(settlement = %deployment.settlement, chain = deployment.chain_id, "paying providers on the EVM settlement");
    }
    let escalation_epochs = match &target {
        agora_settlement::open::SettlementTarget::Evm { deployment, .. } => {
            Some(deployment.params.escalation_epochs)
        }
        agora_settlement::open::SettlementTarget::Ledger { .. } => None,
    };
    let mut cfg = BrokerConfig::new(target, args.net.config()?);
    if let Some(e) = escalation_epochs {
        cfg.escalation_epochs = e;
    }
    cfg.max_price_in = args.max_price_in;
    cfg.max_price_out = args.max_price_out;
    cfg.min_deposit = args.min_deposit;
    cfg.min_stake = args.min_stake;
    cfg.channel_store = Some(args.channels.clone());
    let seeds = keys.clone();
    cfg.payer_seeds = Some(agora_broker::PayerSeeds(Arc::new(move |a| {
        seeds.seed_of(a)
    })));
    cfg.stall_timeout = Duration::from_millis(args.stall_ms.max(1));
    for path in &args.models {
        let m = agora_model::PromptModel::load(path)
            .with_context(|| format!("loading the model {}", path.display()))?;
        tracing::info!(model = %m.id, path = %path.display(), "counting prompts and rendering text with this model's tokenizer");
        cfg.models.push(Arc::new(m));
    }
    if cfg.models.is_empty() {
        tracing::warn!("no --model given: prompt charges are capped by a byte bound and streamed text is the provider's, not checked against the receipt's token ids");
    }
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_prompt_bytes: args.max_prompt_bytes,
        max_tokens: args.max_tokens,
        per_key: agora_gateway::KeyLimits {
            per_second: args.key_rate,
            burst: args.key_burst,
            concurrent: args.key_concurrency,
        },
        ..Limits::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let broker = Broker::start(cfg).await?;
        for addr in broker.node().listen_addrs().await? {
            announce(&format!("p2p {addr}"));
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        announce(&format!("http http://{addr}"));
        tracing::info!(%addr, "gateway listening");
        // Every answer passes the explorer's tap (metrics, receipts); /metrics and the
        // explorer sit beside the API, outside its key checks.
        let answers = Arc::new(agora_explorer::RequestLog::new());
        let backend =
            agora_explorer::Tapped::new(Arc::new(BrokerBackend(broker.clone())), answers.clone());
        let mut router =
            agora_gateway::router(Arc::new(backend), keys, limits).merge(agora_metrics::router());
        // The explorer reads the ledger's blocks: served on the ledger only.
        if !args.no_explorer && args.settlement.settlement == SettlementChoice::Ledger {
            let mut cfg = agora_explorer::Config::new(&args.settlement.ledger);
            cfg.offers = Some(crate::explorer_cmd::offers_of(broker.clone()));
            cfg.requests = Some(answers);
            cfg.diloco = args.explorer_diloco.clone();
            let explorer = agora_explorer::Explorer::new(cfg);
            explorer.clone().follow();
            router = router.merge(explorer.router());
            announce(&format!("explorer http://{addr}/explorer"));
        }
        let router = router.layer(axum::middleware::from_fn(agora_metrics::track));
        agora_gateway::serve(
            listener,
            router,
            crate::shutdown::signal(args.stop_on_stdin_eof),
        )
        .await?;
        tracing::info!("gateway stopped");
        anyhow::Ok(())
    })
}
