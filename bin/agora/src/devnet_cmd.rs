//! `agora devnet`: a whole network on one machine. A ledger, a gateway and N providers run as
//! separate processes joined by real libp2p over loopback, serving a real model; a genesis
//! funds an API key's account and the providers' stake.
//!
//! With `--settlement evm` an Anvil chain stands in for the ledger: the devnet deploys the
//! test stablecoin and the settlement contract with the rules its ledger genesis would have,
//! funds every party's EVM account (tokens and gas), and starts the services with
//! `--settlement evm --rpc URL --contracts FILE`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agora_core::{AccountId, Amount, Keypair};
use agora_evm::anvil::{find_anvil, Anvil, AnvilConfig};
use agora_evm::{Deployment, SettlementClient};
use agora_ledger::{Allocation, Genesis, Params};
use agora_settlement::open::evm_signer_for;
use alloy::primitives::{Address, U256};
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::settlement_args::SettlementChoice;

/// Arguments of `agora devnet`.
#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// Where the network settles: `ledger` starts a ledger node; `evm` starts a local Anvil
    /// chain (a block a second), deploys the Agora contracts on it and funds every party.
    #[arg(long, value_enum, default_value_t = SettlementChoice::Ledger)]
    settlement: SettlementChoice,
    /// With `--settlement evm`: start the chain, deploy, fund, write `contracts.json` and
    /// `devnet.json`, and wait for Ctrl-C without starting any service.
    #[arg(long, hide = true)]
    prepare_only: bool,
    /// How many providers to start (the last one charges twice the price); raised to the
    /// number of models when smaller.
    #[arg(long, default_value_t = 3)]
    providers: usize,
    /// A model to serve (repeatable; default `models/agora-shakespeare`). Providers are
    /// spread over the models in turn (provider i serves model i mod M); each model is named
    /// by its file stem and can be asked for by that name or its ModelId.
    #[arg(long = "model", value_name = "PATH")]
    models: Vec<PathBuf>,
    /// Where the devnet keeps its keys, ledger and `devnet.json` (default: a new temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The gateway's HTTP port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Price per million prompt tokens, in base units.
    #[arg(long, default_value = "1000000")]
    price_in: Amount,
    /// Price per million output tokens, in base units.
    #[arg(long, default_value = "2000000")]
    price_out: Amount,
    /// Milliseconds without a token before the gateway moves a stream to another provider.
    #[arg(long, default_value_t = 3000)]
    stall_ms: u64,
    /// Seconds between the providers' voucher claims.
    #[arg(long, default_value_t = 2)]
    claim_secs: u64,
    /// Kernel threads per provider (default: all cores).
    #[arg(long)]
    provider_threads: Option<usize>,
    /// Answers the devnet's API key may have in flight at once at the gateway.
    #[arg(long, default_value_t = 64)]
    key_concurrency: u32,
    /// Requests the devnet's API key may make at once above its sustained rate.
    #[arg(long, default_value_t = 100)]
    key_burst: u32,
    /// Requests each provider holds at once, waiting or generating (more are refused as busy).
    #[arg(long, default_value_t = 64)]
    provider_capacity: u32,
    /// How many verifiers audit the providers (a fraud needs two to slash).
    #[arg(long, default_value_t = 2)]
    verifiers: usize,
    /// Seconds per ledger epoch (receipt roots are posted, and audited, once per epoch). On
    /// EVM, epochs are counted in blocks: this many one-second blocks.
    #[arg(long, default_value_t = 10)]
    epoch_secs: u64,
    /// Add a cheating provider at the cheapest price, to watch it get caught, slashed and
    /// dropped: `quantized` serves Q4_0 weights under the model's id, `refuse` withholds its
    /// audit material. Needs a build with `--features adversary`.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "quantized")]
    cheater: Option<CheaterKind>,
    /// Add a canary provider, the ledger's planter, that plants a fake fraud in about one
    /// answer in N to catch verifiers that approve without auditing.
    #[arg(long, value_name = "N")]
    canary: Option<u32>,
    /// Make the last verifier lazy: it approves without auditing (to watch the canary catch
    /// it). Needs a build with `--features adversary`.
    #[arg(long)]
    lazy_verifier: bool,
    /// Make the last verifier a framer: it reveals every leaf it audits as failed (to watch
    /// the confirmer decline and the framer pay). Needs a build with `--features adversary`.
    #[arg(long, conflicts_with = "lazy_verifier")]
    framing_verifier: bool,
    /// Share of every payment that funds audits, in basis points.
    #[arg(long, default_value_t = DEFAULT_AUDIT_FEE_BPS)]
    audit_fee_bps: u16,
    /// Paid from that pool for each revealed audit, in base units.
    #[arg(long, default_value_t = Amount::new(DEFAULT_AUDIT_FEE))]
    audit_fee: Amount,
}

/// How the devnet's cheating provider cheats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheaterKind {
    /// Q4_0 weights under the model's id.
    Quantized,
    /// Honest answers, but the audit material is withheld.
    Refuse,
    /// Honest answers, but every second receipt is left out of the posted roots.
    Omit,
    /// Honest answers, but a thousand times the prompt's tokens claimed and charged.
    Overcharge,
}

impl CheaterKind {
    fn flag(self) -> &'static str {
        match self {
            CheaterKind::Quantized => "quantized",
            CheaterKind::Refuse => "refuse",
            CheaterKind::Omit => "omit",
            CheaterKind::Overcharge => "overcharge",
        }
    }
}

/// The model a devnet serves when given none.
const DEFAULT_MODEL: &str = "models/agora-shakespeare";
/// The chain id of every devnet.
pub const DEVNET_CHAIN_ID: u64 = 1337;
/// What the API key's account starts with.
const USER_FUNDS: u128 = 1_000_000_000_000;
/// What each provider starts with, and bonds as stake.
const PROVIDER_FUNDS: u128 = 1_000_000_000;
const PROVIDER_STAKE: u128 = 100_000_000;
/// Seconds between the blocks of an EVM devnet's chain.
const EVM_BLOCK_SECS: u64 = 1;
/// Native currency each party gets on an EVM devnet to pay its gas (10 ETH, in wei).
const EVM_GAS_WEI: u128 = 10_000_000_000_000_000_000;
/// The devnet's audit fee share (bps) and fee per revealed audit (base units).
const DEFAULT_AUDIT_FEE_BPS: u16 = 200;
const DEFAULT_AUDIT_FEE: u128 = 1;

/// The rules of a devnet started with the default flags (what `agora evm deploy` takes
/// without `--genesis`).
pub fn default_rules() -> Params {
    Params {
        audit_fee_bps: DEFAULT_AUDIT_FEE_BPS,
        audit_fee: Amount::new(DEFAULT_AUDIT_FEE),
        ..Params::default()
    }
}

/// What `devnet.json` records for tests and scripts.
#[derive(Serialize)]
struct DevnetInfo {
    /// `ledger` or `evm`.
    settlement: &'static str,
    endpoint: String,
    /// The explorer's pages (none on EVM: the explorer follows the ledger only).
    #[serde(skip_serializing_if = "Option::is_none")]
    explorer: Option<String>,
    /// Each process's Prometheus /metrics URL, by name.
    metrics: BTreeMap<String, String>,
    api_key: String,
    /// The ledger node's URL (ledger settlement).
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger: Option<String>,
    /// The chain, its contracts and the parties' accounts (EVM settlement).
    #[serde(flatten)]
    evm: Option<EvmInfo>,
    chain_id: u64,
    /// The first model's name (what the banner's example asks for).
    model: String,
    /// Every model served, with the providers serving it.
    models: Vec<ModelInfo>,
    user_account: AccountId,
    user_funds: Amount,
    gateway_pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_pid: Option<u32>,
    providers: Vec<ProviderInfo>,
    verifiers: Vec<AccountId>,
}

/// What `devnet.json` records about an EVM devnet's chain.
#[derive(Serialize, Clone)]
struct EvmInfo {
    /// Anvil's JSON-RPC URL (what the services get as `--rpc`).
    rpc: String,
    /// The deployment file (what the services get as `--contracts`).
    contracts: PathBuf,
    anvil_pid: u32,
    /// Seconds between blocks; an epoch is `epoch_blocks` of them.
    block_secs: u64,
    epoch_blocks: u64,
    /// Every funded party's EVM account, by key file stem (`provider-1`, `verifier-1`,
    /// `canary`, `cheater`) and `user` for the API key's account.
    evm_accounts: BTreeMap<String, Address>,
    /// Tokens minted to each party, by the same names.
    evm_funds: BTreeMap<String, Amount>,
    /// Native currency sent to each party for gas, in wei (a decimal string).
    evm_gas_wei: String,
}

/// What `devnet.json` records after `--prepare-only`: the chain and nothing else.
#[derive(Serialize)]
struct PreparedInfo {
    settlement: &'static str,
    prepared_only: bool,
    #[serde(flatten)]
    evm: EvmInfo,
    chain_id: u64,
    api_key: String,
    user_account: AccountId,
}

#[derive(Serialize)]
struct ModelInfo {
    name: String,
    path: PathBuf,
    providers: Vec<String>,
}

#[derive(Serialize)]
struct ProviderInfo {
    name: String,
    model: String,
    account: AccountId,
    pid: u32,
    price_in: Amount,
    price_out: Amount,
    funds: Amount,
    stake: Amount,
}

/// A child process whose stderr is forwarded with a name in front, and whose stdin, when
/// closed, tells it to stop.
struct Node {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Node {
    fn spawn(name: &str, args: &[String], threads: Option<usize>) -> anyhow::Result<Node> {
        let exe = std::env::current_exe().context("finding the agora binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .arg("--stop-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = threads {
            cmd.env("AGORA_THREADS", t.to_string());
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let label = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("{label:>10} | {line}");
                }
            });
        }
        Ok(Node {
            name: name.into(),
            child,
            stdin,
            lines,
        })
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest.
    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "{} did not print `{prefix}` within {timeout:?} (exit status: {status:?})",
                        self.name
                    );
                }
            }
        }
    }

    /// Closes stdin and waits up to `grace` for a clean exit, then kills.
    fn stop(&mut self, grace: Duration) {
        self.stdin.take();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(node = %self.name, "did not stop in time; killing");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the devnet until Ctrl-C.
pub fn run(args: DevnetArgs) -> anyhow::Result<()> {
    if args.providers == 0 {
        bail!("--providers must be at least 1");
    }
    let odd_verifier = args.lazy_verifier || args.framing_verifier;
    if (args.cheater.is_some() || odd_verifier) && !cfg!(feature = "adversary") {
        bail!("this agora was built without the test-only adversaries; rebuild with `--features adversary` to use --cheater, --lazy-verifier or --framing-verifier");
    }
    if odd_verifier && args.verifiers == 0 {
        bail!("--lazy-verifier and --framing-verifier need at least one verifier");
    }
    let on_evm = args.settlement == SettlementChoice::Evm;
    if args.prepare_only && !on_evm {
        bail!("--prepare-only prepares an EVM chain; it needs --settlement evm");
    }
    // Before any file is written: without Anvil there is no EVM devnet.
    let anvil_bin = if on_evm {
        Some(find_anvil().context(
            "Anvil not found: run `bash scripts/install-evm-tools` (it installs the npm package \
             @foundry-rs/anvil under ~/.cache/agora/npm), put `anvil` on PATH, or set \
             AGORA_ANVIL to an anvil binary",
        )?)
    } else {
        None
    };
    let mut models = args.models.clone();
    if models.is_empty() {
        models.push(PathBuf::from(DEFAULT_MODEL));
    }
    for m in &models {
        if !m.exists() {
            bail!(
                "model {} not found; run from the repository root or pass --model",
                m.display()
            );
        }
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("agora-devnet-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let models = models
        .iter()
        .map(|m| m.canonicalize().with_context(|| format!("{}", m.display())))
        .collect::<anyhow::Result<Vec<PathBuf>>>()?;
    let n_providers = args.providers.max(models.len());
    tracing::info!(dir = %dir.display(), "devnet folder");

    // Keys and genesis.
    let sequencer = Keypair::generate()?;
    if !on_evm {
        crate::keys_cmd::write_key(&dir.join("sequencer.json"), &sequencer)?;
    }
    let keys_path = dir.join("keys.redb");
    let _ = std::fs::remove_file(&keys_path);
    let (api_key, user, user_seed) = {
        let store = agora_gateway::KeyStore::open(&keys_path)?;
        let (secret, record) = store.create("devnet")?;
        let seed = store
            .seed_of(&record.account)
            .context("the new API key's account seed")?;
        (secret, record.account, seed)
    };
    let mut providers = Vec::new();
    for i in 0..n_providers {
        let key = Keypair::generate()?;
        let path = dir.join(format!("provider-{}.json", i + 1));
        crate::keys_cmd::write_key(&path, &key)?;
        let pricier = n_providers > 1 && i + 1 == n_providers;
        let factor = if pricier { 2 } else { 1 };
        let price_in = Amount::new(args.price_in.units().saturating_mul(factor));
        let price_out = Amount::new(args.price_out.units().saturating_mul(factor));
        providers.push((key, path, price_in, price_out));
    }
    let half = |a: Amount| Amount::new((a.units() / 2).max(1));
    if args.canary.is_some() {
        let key = Keypair::generate()?;
        let path = dir.join("canary.json");
        crate::keys_cmd::write_key(&path, &key)?;
        providers.push((key, path, half(args.price_in), half(args.price_out)));
    }
    if args.cheater.is_some() {
        let key = Keypair::generate()?;
        let path = dir.join("cheater.json");
        crate::keys_cmd::write_key(&path, &key)?;
        providers.push((key, path, half(args.price_in), half(args.price_out)));
    }
    let mut verifiers = Vec::new();
    for i in 0..args.verifiers {
        let key = Keypair::generate()?;
        let path = dir.join(format!("verifier-{}.json", i + 1));
        crate::keys_cmd::write_key(&path, &key)?;
        verifiers.push((key, path));
    }
    let mut allocations = vec![Allocation {
        account: user,
        amount: Amount::new(USER_FUNDS),
    }];
    for key in providers
        .iter()
        .map(|p| &p.0)
        .chain(verifiers.iter().map(|v| &v.0))
    {
        allocations.push(Allocation {
            account: key.account(),
            amount: Amount::new(PROVIDER_FUNDS),
        });
    }
    let genesis = Genesis {
        chain_id: DEVNET_CHAIN_ID,
        sequencer: sequencer.account(),
        params: Params {
            audit_fee_bps: args.audit_fee_bps,
            audit_fee: args.audit_fee,
            ..Params::default()
        },
        allocations,
    };
    genesis.validate()?;

    let mut chain = None;
    if let Some(bin) = anvil_bin {
        // The same parties, funds and rules on the chain: every party's account is the one
        // its key's seed derives, as the services open it.
        let mut parties = vec![("user".to_string(), user_seed, user)];
        for (key, path) in providers
            .iter()
            .map(|p| (&p.0, &p.1))
            .chain(verifiers.iter().map(|v| (&v.0, &v.1)))
        {
            parties.push((stem_of(path), key.seed(), key.account()));
        }
        let funds: BTreeMap<String, Amount> = parties
            .iter()
            .map(|(name, _, account)| {
                let genesis_funds = genesis
                    .allocations
                    .iter()
                    .find(|a| a.account == *account)
                    .map_or(Amount::ZERO, |a| a.amount);
                (name.clone(), genesis_funds)
            })
            .collect();
        let parties: Vec<(String, [u8; 32])> = parties
            .into_iter()
            .map(|(name, seed, _)| (name, seed))
            .collect();
        chain = Some(start_evm_chain(
            &bin,
            &dir,
            &genesis.params,
            args.epoch_secs,
            &parties,
            &funds,
        )?);
    } else {
        std::fs::write(
            dir.join("genesis.json"),
            serde_json::to_string_pretty(&genesis)?,
        )?;
        let ledger_db = dir.join("ledger.redb");
        let _ = std::fs::remove_file(&ledger_db);
    }

    if args.prepare_only {
        let Some(chain) = chain.as_mut() else {
            bail!("--prepare-only needs --settlement evm");
        };
        let result = wait_prepared(&dir, chain, &api_key, user);
        stop_chain(chain);
        return result;
    }

    let mut nodes: Vec<Node> = Vec::new();
    let result = start_and_wait(
        &args,
        &dir,
        &models,
        n_providers,
        &api_key,
        user,
        &providers,
        &verifiers,
        chain.as_ref(),
        &mut nodes,
    );
    // Providers first (they claim their vouchers on the way out), then gateway, then ledger.
    for node in nodes.iter_mut().rev() {
        node.stop(Duration::from_secs(15));
    }
    // The chain last: the services settle on it until they stop.
    if let Some(chain) = chain.as_mut() {
        stop_chain(chain);
    }
    if result.is_ok() {
        eprintln!("devnet stopped; its files are in {}", dir.display());
    }
    result
}

/// An EVM devnet's chain: Anvil (killed on drop), the contracts on it, and the parties'
/// accounts.
struct EvmChain {
    anvil: Anvil,
    deployment: Deployment,
    /// Anvil's first dev key: it deployed the contracts and may mint the test stablecoin.
    deployer: alloy::signers::local::PrivateKeySigner,
    info: EvmInfo,
}

/// The settlement contract's rules for a devnet whose ledger genesis has `ledger`, with
/// epochs of `epoch_secs` seconds counted as one-second blocks: the same stake minimums
/// and fee shares, and windows (counted in epochs) as long in seconds.
fn evm_params(ledger: &Params, epoch_secs: u64) -> agora_evm::Params {
    crate::evm_cmd::contract_rules(ledger, (epoch_secs / EVM_BLOCK_SECS).max(1))
}

/// Starts Anvil mining a block every [`EVM_BLOCK_SECS`], deploys the test stablecoin and
/// the settlement contract, writes `contracts.json`, and funds each of `parties` (name,
/// ed25519 seed) with its `funds` in tokens and [`EVM_GAS_WEI`] for gas.
fn start_evm_chain(
    bin: &Path,
    dir: &Path,
    ledger_params: &Params,
    epoch_secs: u64,
    parties: &[(String, [u8; 32])],
    funds: &BTreeMap<String, Amount>,
) -> anyhow::Result<EvmChain> {
    let params = evm_params(ledger_params, epoch_secs);
    let anvil = Anvil::start_with(
        bin,
        &AnvilConfig {
            chain_id: DEVNET_CHAIN_ID,
            port: 0,
            state: None,
            block_time: Some(Duration::from_secs(EVM_BLOCK_SECS)),
        },
    )
    .with_context(|| format!("starting {}", bin.display()))?;
    let rpc = anvil.url().to_string();
    tracing::info!(%rpc, "anvil up");
    let keys = anvil.keys().to_vec();
    let (deployer, gas_payers) = keys
        .split_first()
        .filter(|(_, rest)| !rest.is_empty())
        .context("anvil printed fewer than two dev keys")?;
    let accounts: BTreeMap<String, Address> = parties
        .iter()
        .map(|(name, seed)| (name.clone(), evm_signer_for(seed).address()))
        .collect();
    let contracts = dir.join("contracts.json");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deployment = rt.block_on(async {
        let deployment = agora_evm::deploy(&rpc, deployer.clone(), params)
            .await
            .context("deploying the contracts")?;
        deployment.save(&contracts)?;
        tracing::info!(settlement = %deployment.settlement, token = %deployment.token, "contracts deployed");
        // Gas from the other dev keys, in parallel with the deployer's mints (one
        // transaction a block per sender).
        let mut gas = tokio::task::JoinSet::new();
        for (k, payer) in gas_payers.iter().enumerate() {
            let to: Vec<Address> = accounts
                .values()
                .enumerate()
                .filter(|(i, _)| i % gas_payers.len() == k)
                .map(|(_, a)| *a)
                .collect();
            if to.is_empty() {
                continue;
            }
            let (rpc, payer) = (rpc.clone(), payer.clone());
            gas.spawn(async move {
                let c = SettlementClient::connect_bare(&rpc, payer).await?;
                for a in to {
                    c.send_native(a, U256::from(EVM_GAS_WEI))
                        .await
                        .with_context(|| format!("sending gas money to {a}"))?;
                }
                anyhow::Ok(())
            });
        }
        let minter = SettlementClient::connect(&rpc, deployer.clone(), deployment.clone()).await?;
        for (name, account) in &accounts {
            let value = funds.get(name).map(|a| a.units()).unwrap_or(0);
            if value > 0 {
                minter
                    .mint(*account, value)
                    .await
                    .with_context(|| format!("minting {value} to {name} ({account})"))?;
            }
        }
        while let Some(done) = gas.join_next().await {
            done??;
        }
        anyhow::Ok(deployment)
    })?;
    let info = EvmInfo {
        rpc,
        contracts,
        anvil_pid: anvil.pid(),
        block_secs: EVM_BLOCK_SECS,
        epoch_blocks: params.epoch_blocks,
        evm_accounts: accounts,
        evm_funds: funds.clone(),
        evm_gas_wei: EVM_GAS_WEI.to_string(),
    };
    Ok(EvmChain {
        anvil,
        deployment,
        deployer: deployer.clone(),
        info,
    })
}

/// Stops Anvil (its chain lives in memory only, and goes with it).
fn stop_chain(chain: &mut EvmChain) {
    if let Err(e) = chain.anvil.stop() {
        tracing::warn!(error = %e, "stopping anvil");
    }
}

/// `--prepare-only`: records the chain in `devnet.json`, prints it, and waits for Ctrl-C.
fn wait_prepared(
    dir: &Path,
    chain: &EvmChain,
    api_key: &str,
    user: AccountId,
) -> anyhow::Result<()> {
    let info_path = dir.join("devnet.json");
    let info = PreparedInfo {
        settlement: "evm",
        prepared_only: true,
        evm: chain.info.clone(),
        chain_id: chain.deployment.chain_id,
        api_key: api_key.into(),
        user_account: user,
    };
    std::fs::write(&info_path, serde_json::to_string_pretty(&info)?)?;
    println!(
        "\nAgora devnet chain is ready (no services started).\n\n  settlement evm\n  rpc        {}\n  contracts  {}\n  details    {}\n\nCtrl-C stops Anvil.\n",
        chain.info.rpc,
        chain.info.contracts.display(),
        info_path.display()
    );
    let _ = std::io::stdout().flush();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::shutdown::signal(false));
    Ok(())
}

/// A key file's stem (`provider-1.json` -> `provider-1`).
fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn start_and_wait(
    args: &DevnetArgs,
    dir: &Path,
    models: &[PathBuf],
    n_providers: usize,
    api_key: &str,
    user: AccountId,
    providers: &[(Keypair, PathBuf, Amount, Amount)],
    verifiers: &[(Keypair, PathBuf)],
    chain: Option<&EvmChain>,
    nodes: &mut Vec<Node>,
) -> anyhow::Result<()> {
    let path = |p: &Path| p.display().to_string();
    let mut metrics = BTreeMap::new();
    // What every service is told about settlement, and the ledger node if there is one.
    let (settle_flags, ledger_node): (Vec<String>, Option<(String, u32)>) = match chain {
        Some(c) => (
            vec![
                "--settlement".into(),
                "evm".into(),
                "--rpc".into(),
                c.info.rpc.clone(),
                "--contracts".into(),
                path(&c.info.contracts),
            ],
            None,
        ),
        None => {
            let (url, pid) = start_ledger(args, dir, nodes)?;
            metrics.insert("ledger".to_string(), format!("{url}/metrics"));
            (vec!["--ledger".into(), url.clone()], Some((url, pid)))
        }
    };

    let mut gateway = Node::spawn(
        "gateway",
        &[
            "gateway".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--keys".into(),
            path(&dir.join("keys.redb")),
            "--channels".into(),
            path(&dir.join("channels.redb")),
        ]
        .into_iter()
        .chain(settle_flags.iter().cloned())
        .chain([
            "--p2p-listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--stall-ms".into(),
            args.stall_ms.to_string(),
            "--key-concurrency".into(),
            args.key_concurrency.to_string(),
            "--key-burst".into(),
            args.key_burst.to_string(),
        ])
        // The explorer follows the ledger only.
        .chain(chain.map(|_| "--no-explorer".to_string()))
        // The gateway counts prompt tokens and renders text with the models' own files.
        .chain(models.iter().flat_map(|m| ["--model".to_string(), path(m)]))
        .collect::<Vec<String>>(),
        None,
    )?;
    let bootstrap = gateway.wait_for("p2p ", Duration::from_secs(60))?;
    let endpoint = gateway.wait_for("http ", Duration::from_secs(60))?;
    let gateway_pid = gateway.child.id();
    nodes.push(gateway);
    tracing::info!(%endpoint, "gateway up");

    metrics.insert("gateway".to_string(), format!("{endpoint}/metrics"));
    let mut infos = Vec::new();
    for (i, (key, key_path, price_in, price_out)) in providers.iter().enumerate() {
        // The extra providers come last: the canary, then the cheater.
        let cheater = args.cheater.filter(|_| i + 1 == providers.len());
        let canary = args.canary.filter(|_| i == n_providers);
        // The regular providers take the models in turn; the canary and cheater the first.
        let model = if i < n_providers {
            &models[i % models.len()]
        } else {
            &models[0]
        };
        let (name, extra): (String, Vec<String>) = match (cheater, canary) {
            (Some(kind), _) => ("cheater".into(), vec!["--cheat".into(), kind.flag().into()]),
            (None, Some(n)) => (
                "canary".into(),
                vec!["--plant-one-in".into(), n.to_string()],
            ),
            (None, None) => (format!("provider-{}", i + 1), vec![]),
        };
        let node = Node::spawn(
            &name,
            &[
                "provider".into(),
                "--model".into(),
                path(model),
                "--key".into(),
                path(key_path),
            ]
            .into_iter()
            .chain(settle_flags.iter().cloned())
            .chain([
                "--price-in".into(),
                price_in.to_string(),
                "--price-out".into(),
                price_out.to_string(),
                "--stake".into(),
                PROVIDER_STAKE.to_string(),
                "--claim-secs".into(),
                args.claim_secs.to_string(),
                "--capacity".into(),
                args.provider_capacity.to_string(),
                "--data".into(),
                path(&dir.join(format!("provider-{}-data", i + 1))),
                "--p2p-listen".into(),
                "/ip4/127.0.0.1/tcp/0".into(),
                "--bootstrap".into(),
                bootstrap.clone(),
                "--metrics".into(),
                "127.0.0.1:0".into(),
            ])
            .chain(extra)
            .collect::<Vec<String>>(),
            args.provider_threads,
        )?;
        let mut node = node;
        metrics.insert(
            name.clone(),
            node.wait_for("metrics ", Duration::from_secs(120))?,
        );
        infos.push(ProviderInfo {
            model: name_of(model),
            name,
            account: key.account(),
            pid: node.child.id(),
            price_in: *price_in,
            price_out: *price_out,
            funds: Amount::new(PROVIDER_FUNDS),
            stake: Amount::new(PROVIDER_STAKE),
        });
        nodes.push(node);
    }

    let mut verifier_accounts = Vec::new();
    for (i, (key, key_path)) in verifiers.iter().enumerate() {
        let last = i + 1 == verifiers.len();
        let (name, extra): (String, Vec<String>) = match (args.lazy_verifier, args.framing_verifier)
        {
            (true, _) if last => ("lazy-verifier".into(), vec!["--lazy".into()]),
            (_, true) if last => ("framing-verifier".into(), vec!["--frame".into()]),
            _ => (format!("verifier-{}", i + 1), vec![]),
        };
        let node = Node::spawn(
            &name,
            &["verifier".into(), "--key".into(), path(key_path)]
                .into_iter()
                .chain(settle_flags.iter().cloned())
                .chain([
                    "--stake".into(),
                    PROVIDER_STAKE.to_string(),
                    "--p2p-listen".into(),
                    "/ip4/127.0.0.1/tcp/0".into(),
                    "--bootstrap".into(),
                    bootstrap.clone(),
                    "--metrics".into(),
                    "127.0.0.1:0".into(),
                ])
                .chain(models.iter().flat_map(|m| ["--model".to_string(), path(m)]))
                .chain(extra)
                .collect::<Vec<String>>(),
            args.provider_threads,
        )?;
        let mut node = node;
        metrics.insert(
            name.clone(),
            node.wait_for("metrics ", Duration::from_secs(120))?,
        );
        verifier_accounts.push(key.account());
        nodes.push(node);
    }

    // Ready when the gateway has heard every provider's offer, for every model.
    let mut want: Vec<(String, usize)> = Vec::new();
    for p in &infos {
        match want.iter_mut().find(|(n, _)| *n == p.model) {
            Some((_, c)) => *c += 1,
            None => want.push((p.model.clone(), 1)),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let model_name = name_of(&models[0]);
    loop {
        if offers_heard(&endpoint, api_key, &want) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway did not hear {} offers within 120 s",
                providers.len()
            );
        }
        for n in nodes.iter_mut() {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!("{} exited during start-up: {status}", n.name);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // And when every verifier is in the set that audits new roots: the ledger freezes each
    // epoch's verifier set at its start, so a root posted in the epoch a verifier registered
    // in is audited without it (in a fresh devnet, by nobody).
    match (chain, &ledger_node) {
        (Some(chain), _) => {
            let accounts: Vec<Address> = verifiers
                .iter()
                .filter_map(|(_, p)| chain.info.evm_accounts.get(&stem_of(p)).copied())
                .collect();
            wait_evm_audit_set(chain, &accounts, args.epoch_secs)?;
        }
        (None, Some((ledger_url, _))) => {
            wait_ledger_audit_set(ledger_url, &verifier_accounts, args.epoch_secs)?;
        }
        (None, None) => bail!("a devnet settles on a ledger or a chain"),
    }
    // The explorer follows the ledger only: on a chain the gateway serves none.
    let explorer = chain.is_none().then(|| format!("{endpoint}/explorer"));
    let metrics_lines: String = metrics
        .iter()
        .map(|(name, url)| format!("  metrics   {name:<14} {url}\n"))
        .collect();
    let info = DevnetInfo {
        settlement: if chain.is_some() { "evm" } else { "ledger" },
        endpoint: endpoint.clone(),
        explorer: explorer.clone(),
        metrics,
        api_key: api_key.into(),
        ledger: ledger_node.as_ref().map(|(url, _)| url.clone()),
        evm: chain.map(|c| c.info.clone()),
        chain_id: chain.map_or(DEVNET_CHAIN_ID, |c| c.deployment.chain_id),
        model: model_name.clone(),
        models: models
            .iter()
            .map(|m| ModelInfo {
                name: name_of(m),
                path: m.clone(),
                providers: infos
                    .iter()
                    .filter(|p| p.model == name_of(m))
                    .map(|p| p.name.clone())
                    .collect(),
            })
            .collect(),
        user_account: user,
        user_funds: Amount::new(USER_FUNDS),
        gateway_pid,
        ledger_pid: ledger_node.as_ref().map(|(_, pid)| *pid),
        providers: infos,
        verifiers: verifier_accounts,
    };
    let info_path = dir.join("devnet.json");
    std::fs::write(&info_path, serde_json::to_string_pretty(&info)?)?;
    let (settled_by, settlement_lines) = match (chain, &explorer) {
        (Some(c), _) => (
            "an EVM chain (Anvil)",
            format!(
                "  settlement evm: a block every {} s, {} blocks an epoch\n  rpc       {}\n  contracts {}\n  explorer  not started: it follows the ledger only (--settlement ledger)\n",
                c.info.block_secs,
                c.info.epoch_blocks,
                c.info.rpc,
                c.info.contracts.display()
            ),
        ),
        (None, Some(explorer)) => ("a ledger", format!("  explorer  {explorer}\n")),
        (None, None) => ("a ledger", String::new()),
    };
    let banner = format!(
        "\nAgora devnet is up: {settled_by}, a gateway, {n} providers serving {served} and {v} verifiers auditing them.\n\n  endpoint  {endpoint}/v1\n  API key   {api_key}\n{settlement_lines}  details   {info}\n{metrics_lines}\nTry it:\n\n  curl {endpoint}/v1/chat/completions \\\n    -H \"Authorization: Bearer {api_key}\" -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{model_name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Speak, ROMEO.\"}}], \"max_tokens\": 60}}'\n\nOr any OpenAI client with base_url={endpoint}/v1. Ctrl-C stops everything.\n",
        n = providers.len(),
        served = models
            .iter()
            .map(|m| format!("`{}`", name_of(m)))
            .collect::<Vec<_>>()
            .join(", "),
        v = verifiers.len(),
        info = info_path.display(),
    );
    println!("{banner}");
    let _ = std::io::stdout().flush();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::shutdown::signal(false));
    Ok(())
}

/// Waits until every verifier is in the set that audits new roots: the ledger freezes each
/// epoch's verifier set at its start, so a root posted in the epoch a verifier registered
/// in is audited without it (in a fresh devnet, by nobody).
fn wait_ledger_audit_set(
    ledger_url: &str,
    verifier_accounts: &[AccountId],
    epoch_secs: u64,
) -> anyhow::Result<()> {
    let ledger = agora_ledger::client::Client::new(ledger_url)?;
    let deadline = Instant::now() + Duration::from_secs(60 + 3 * epoch_secs);
    let mut registered_by: Option<u64> = None;
    while !verifier_accounts.is_empty() {
        let status = ledger.status().ok();
        match (registered_by, status) {
            (None, Some(st)) => {
                let all = verifier_accounts
                    .iter()
                    .all(|v| ledger.account(v).ok().flatten().is_some_and(|a| a.verifier));
                if all {
                    registered_by = Some(st.epoch);
                }
            }
            (Some(e), Some(st)) if st.epoch > e => break,
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("the verifiers did not join the ledger's audit set in time");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// [`wait_ledger_audit_set`] on the chain: every verifier account registered, then the
/// next epoch begun (the contract freezes each epoch's verifier set too).
fn wait_evm_audit_set(
    chain: &EvmChain,
    verifiers: &[Address],
    epoch_secs: u64,
) -> anyhow::Result<()> {
    if verifiers.is_empty() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let reader = SettlementClient::connect(
            &chain.info.rpc,
            chain.deployer.clone(),
            chain.deployment.clone(),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60 + 3 * epoch_secs);
        let mut registered_by: Option<u64> = None;
        loop {
            let epoch = reader.current_epoch().await.ok();
            match (registered_by, epoch) {
                (None, Some(e)) => {
                    let mut all = true;
                    for v in verifiers {
                        all &= reader.account(*v).await.is_ok_and(|a| a.verifier);
                    }
                    if all {
                        registered_by = Some(e);
                    }
                }
                (Some(e), Some(now)) if now > e => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("the verifiers did not join the contract's audit set in time");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Starts the ledger node from the devnet's genesis; returns its URL and process id.
fn start_ledger(
    args: &DevnetArgs,
    dir: &Path,
    nodes: &mut Vec<Node>,
) -> anyhow::Result<(String, u32)> {
    let path = |p: &Path| p.display().to_string();
    let mut ledger = Node::spawn(
        "ledger",
        &[
            "ledger".into(),
            "serve".into(),
            "--db".into(),
            path(&dir.join("ledger.redb")),
            "--genesis".into(),
            path(&dir.join("genesis.json")),
            "--sequencer-key".into(),
            path(&dir.join("sequencer.json")),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--epoch-secs".into(),
            args.epoch_secs.to_string(),
        ],
        None,
    )?;
    let ledger_url = ledger.wait_for("listening on ", Duration::from_secs(60))?;
    let ledger_pid = ledger.child.id();
    nodes.push(ledger);
    tracing::info!(url = %ledger_url, "ledger up");
    Ok((ledger_url, ledger_pid))
}

/// The name a provider announces for `path` (its file stem, as `agora provider` does).
fn name_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Whether `/v1/models` lists every wanted model name with at least its count of providers.
fn offers_heard(endpoint: &str, api_key: &str, want: &[(String, usize)]) -> bool {
    let Ok((200, body)) = crate::http_client::request(endpoint, "GET", "/v1/models", api_key, None)
    else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    let Some(data) = v["data"].as_array() else {
        return false;
    };
    want.iter().all(|(name, n)| {
        data.iter().any(|m| {
            m["id"].as_str() == Some(name.as_str())
                && m["providers"].as_u64().unwrap_or(0) >= *n as u64
        })
    })
}
