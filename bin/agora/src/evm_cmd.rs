//! `agora evm deploy|mint`: put the settlement contracts on an EVM chain (any chain with a
//! JSON-RPC endpoint, not only the devnet's Anvil), and mint the test stablecoin.
//!
//! The deployer is the EVM account an ed25519 key file derives (`agora keys show` prints it),
//! the same account the services settle from, so one key file is all a party keeps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_core::Amount;
use agora_evm::bindings::AgoraSettlement::AgoraSettlementErrors;
use agora_evm::bindings::TestStablecoin::{self, TestStablecoinErrors};
use agora_evm::{Deployment, EvmError, Refusal, SettlementClient};
use agora_ledger::{Genesis, Params};
use agora_settlement::open::evm_signer_for;
use alloy::primitives::{Address, TxKind, U256};
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;

/// How long the first question to the RPC may take: an endpoint that does not answer it is
/// reported at once rather than retried (the services' clients retry; a command need not).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks per epoch when not given: the devnet's (10 one-second blocks).
const DEFAULT_EPOCH_BLOCKS: u64 = 10;
/// A genesis file larger than this is refused unread.
const MAX_GENESIS_BYTES: u64 = 64 << 20;

/// EVM chain commands.
#[derive(Subcommand, Debug)]
pub enum EvmCmd {
    /// Deploy the settlement contracts to a chain and write the deployment file that
    /// `--settlement evm --contracts FILE` reads.
    ///
    /// The deployer is the EVM account of `--key` (`agora keys show --key FILE` prints it); it
    /// needs the chain's native currency for gas. The rules are those of a ledger genesis
    /// file (`--genesis`), or the devnet's defaults; epochs are counted in blocks
    /// (`--epoch-blocks`). Over an existing ERC-20 with `--token`; without it, a test
    /// stablecoin (6 decimals) is deployed first, which only the deployer can mint
    /// (`agora evm mint`): not for real money.
    Deploy(DeployArgs),
    /// Mint the test stablecoin of a deployment (only its deployer can) to an account.
    Mint {
        /// The chain's JSON-RPC URL.
        #[arg(long, value_name = "URL")]
        rpc: String,
        /// The deployment file `agora evm deploy` wrote.
        #[arg(long, value_name = "FILE")]
        contracts: PathBuf,
        /// The key file that deployed it.
        #[arg(long, short, value_name = "FILE")]
        key: PathBuf,
        /// Who receives the tokens (0x...; `agora keys show` prints a key file's).
        #[arg(long, value_name = "ADDRESS", value_parser = parse_address)]
        to: Address,
        /// How many, in base units (the test stablecoin has 6 decimals: 1000000 is one).
        #[arg(long, value_name = "UNITS")]
        amount: Amount,
    },
}

/// Runs an EVM command.
pub fn run(cmd: EvmCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        EvmCmd::Deploy(args) => rt.block_on(deploy(args)),
        EvmCmd::Mint {
            rpc,
            contracts,
            key,
            to,
            amount,
        } => rt.block_on(mint(&rpc, &contracts, &key, to, amount)),
    }
}

/// An address from the command line: `0x` and 40 hex digits. All-lower or all-upper case is
/// taken as is; mixed case must be its EIP-55 checksum, so a mistyped digit is caught.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let s = s.trim();
    let Some(digits) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) else {
        return Err("an address starts with 0x".into());
    };
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "an address is 0x and 40 hex digits, got {} characters after 0x",
            digits.len()
        ));
    }
    let mixed = digits.bytes().any(|b| b.is_ascii_lowercase())
        && digits.bytes().any(|b| b.is_ascii_uppercase());
    if mixed {
        Address::parse_checksummed(format!("0x{digits}"), None).map_err(|_| {
            "the address's checksum (its mixed case) is wrong: a digit is mistyped".into()
        })
    } else {
        digits.parse::<Address>().map_err(|e| e.to_string())
    }
}

/// The settlement contract's rules for ledger rules `ledger`, with epochs of `epoch_blocks`
/// blocks: the same stake minimums, fee shares and windows (counted in epochs).
pub fn contract_rules(ledger: &Params, epoch_blocks: u64) -> agora_evm::Params {
    agora_evm::Params {
        epoch_blocks,
        unbonding_epochs: ledger.unbonding_epochs,
        audit_window_epochs: ledger.audit_window_epochs,
        escalation_epochs: ledger.escalation_epochs,
        answer_epochs: ledger.answer_epochs,
        claim_window_epochs: ledger.claim_window_epochs,
        min_provider_stake: ledger.min_provider_stake.units(),
        min_verifier_stake: ledger.min_verifier_stake.units(),
        audit_fee_bps: ledger.audit_fee_bps,
        slash_bps: ledger.slash_bps,
        bounty_bps: ledger.bounty_bps,
        lazy_slash_bps: ledger.lazy_slash_bps,
        false_alarm_bps: ledger.false_alarm_bps,
        audit_floor_ppm: ledger.audit_floor_ppm,
        probation_jobs: ledger.probation_jobs,
        audit_fee: ledger.audit_fee.units(),
        plant_bond: ledger.plant_bond.units(),
        challenge_bond: ledger.challenge_bond.units(),
    }
}

// What `agora evm deploy` takes (its help is the `Deploy` variant's).
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The chain's JSON-RPC URL (http://...).
    #[arg(long, value_name = "URL")]
    rpc: String,
    /// The deployer's key file (`agora keys new`); its EVM account pays the gas.
    #[arg(long, short, value_name = "FILE")]
    key: PathBuf,
    /// Where to write the deployment file (JSON: chain id, token, settlement address,
    /// start block, rules).
    #[arg(long, short, value_name = "FILE")]
    out: PathBuf,
    /// Overwrite an existing `--out`.
    #[arg(long)]
    force: bool,
    /// An ERC-20 already on the chain to pay and stake in (0x..., 40 hex digits; mixed
    /// case must be a valid checksum). Without it the test stablecoin is deployed.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_address)]
    token: Option<Address>,
    /// A ledger genesis file (`agora ledger genesis`) whose rules (`params`) the
    /// contract takes; its allocations are not minted. Default: the devnet's rules (the
    /// ledger's defaults with a 200 bps audit fee share and an audit fee of 1).
    #[arg(long, value_name = "FILE")]
    genesis: Option<PathBuf>,
    /// Refuse unless the RPC serves this chain id (a guard against deploying to the
    /// wrong network through a mistaken URL).
    #[arg(long, value_name = "ID")]
    chain_id: Option<u64>,
    /// Blocks per epoch: receipt roots are posted, and audited, once per epoch, and every
    /// window of the rules counts epochs. With 12-second blocks, 10 is two minutes.
    #[arg(long, default_value_t = DEFAULT_EPOCH_BLOCKS)]
    epoch_blocks: u64,
}

/// The ledger rules a deployment takes: the genesis file's, checked as the ledger checks
/// them (the constructor refuses the same sets; refusing here spends no gas), or the devnet's.
fn ledger_rules(genesis: Option<&Path>) -> anyhow::Result<Params> {
    let Some(path) = genesis else {
        return Ok(crate::devnet_cmd::default_rules());
    };
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading the genesis file {}", path.display()))?
        .len();
    if size > MAX_GENESIS_BYTES {
        bail!("{} is too large for a genesis file", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the genesis file {}", path.display()))?;
    let genesis: Genesis = serde_json::from_str(&text)
        .with_context(|| format!("parsing the genesis file {}", path.display()))?;
    // Only the rules go on chain: check them alone.
    Genesis {
        allocations: Vec::new(),
        ..genesis.clone()
    }
    .validate()
    .with_context(|| {
        format!(
            "the rules in {} are refused (the settlement contract refuses the same)",
            path.display()
        )
    })?;
    Ok(genesis.params)
}

/// Asks the RPC its chain id once, with a short timeout, so an unreachable endpoint is
/// reported at once and by its URL.
async fn probe_chain(rpc: &str) -> anyhow::Result<u64> {
    let url = rpc
        .parse()
        .map_err(|_| anyhow!("bad RPC URL {rpc:?} (expected http://host:port)"))?;
    let http = alloy::transports::http::reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_reqwest(http, url);
    provider
        .get_chain_id()
        .await
        .with_context(|| format!("cannot reach the chain's RPC at {rpc}"))
}

/// Fails unless `who` holds some of the chain's native currency to pay gas.
async fn require_gas(client: &SettlementClient, key: &Path) -> anyhow::Result<()> {
    let who = client.address();
    let balance = client
        .provider()
        .get_balance(who)
        .await
        .with_context(|| format!("reading the balance of {who}"))?;
    if balance.is_zero() {
        bail!(
            "{who}, the EVM account of {}, has none of chain {}'s native currency to pay gas: \
             send it some first",
            key.display(),
            client.chain_id()
        );
    }
    Ok(())
}

/// An [`EvmError`] in the user's words where the contract or the node said why.
fn explain(e: EvmError, who: Address) -> anyhow::Error {
    match &e {
        EvmError::Refused(Refusal::Settlement(AgoraSettlementErrors::BadParams(b))) => {
            anyhow!("the settlement contract refuses these rules: {}", b.reason)
        }
        EvmError::Refused(Refusal::Settlement(AgoraSettlementErrors::UnbondingTooShort(u))) => {
            anyhow!(
                "the settlement contract refuses these rules: unbonding_epochs {} is below the {} \
                 its windows need",
                u.unbonding,
                u.need
            )
        }
        EvmError::Refused(Refusal::Token(TestStablecoinErrors::NotMinter(_))) => {
            anyhow!("{who} may not mint this token: only the account that deployed it can")
        }
        EvmError::Rpc { source, .. }
            if source
                .to_string()
                .to_ascii_lowercase()
                .contains("insufficient funds") =>
        {
            anyhow!(e).context(format!(
                "{who} has too little of the chain's native currency to pay this gas"
            ))
        }
        _ => anyhow!(e),
    }
}

async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    // Everything that needs no chain first: a refusal here costs nothing.
    if args.out.is_dir() {
        bail!(
            "--out {} is a folder; name the file to write",
            args.out.display()
        );
    }
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to overwrite", args.out.display());
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "cannot write {}: {} is not a folder",
                args.out.display(),
                parent.display()
            );
        }
    }
    let deployer = evm_signer_for(&crate::keys_cmd::load_key(&args.key)?.seed());
    let rules = contract_rules(&ledger_rules(args.genesis.as_deref())?, args.epoch_blocks);
    if rules.epoch_blocks == 0 {
        bail!("--epoch-blocks must be at least 1");
    }

    let chain_id = probe_chain(&args.rpc).await?;
    if let Some(want) = args.chain_id.filter(|want| *want != chain_id) {
        bail!(
            "{} serves chain {chain_id}, not the --chain-id {want} asked for",
            args.rpc
        );
    }
    let who = deployer.address();
    tracing::info!(chain_id, deployer = %who, "deploying");
    let client = SettlementClient::connect_bare(&args.rpc, deployer.clone())
        .await
        .with_context(|| format!("connecting to {}", args.rpc))?;
    require_gas(&client, &args.key).await?;
    if let Some(token) = args.token {
        let code = client
            .provider()
            .get_code_at(token)
            .await
            .with_context(|| format!("reading the code at {token}"))?;
        if code.is_empty() {
            bail!("--token {token}: there is no contract at that address on chain {chain_id}");
        }
        TestStablecoin::new(token, client.provider())
            .totalSupply()
            .call()
            .await
            .map_err(|e| {
                anyhow!(
                    "--token {token} does not answer totalSupply(), so it is not an ERC-20: {e}"
                )
            })?;
    }

    // The test stablecoin in a transaction of its own (as `agora_evm::deploy` does), so that
    // if the settlement contract then fails, the token already paid for is named for reuse.
    let token = match args.token {
        Some(token) => token,
        None => {
            let created = client
                .submit(TxKind::Create, TestStablecoin::BYTECODE.clone(), U256::ZERO)
                .await
                .map_err(|e| explain(e, who).context("deploying the test stablecoin"))?;
            if created.address == Address::ZERO {
                bail!(
                    "deploying the test stablecoin: transaction {} made no contract",
                    created.hash
                );
            }
            tracing::info!(token = %created.address, "test stablecoin deployed");
            created.address
        }
    };
    let deployment = agora_evm::deploy_with_token(&args.rpc, deployer, token, rules)
        .await
        .map_err(|e| {
            let e = explain(e, who).context("deploying the settlement contract");
            if args.token.is_none() {
                e.context(format!(
                    "the test stablecoin is deployed at {token}: pass --token {token} to reuse it"
                ))
            } else {
                e
            }
        })?;

    if let Err(e) = write_deployment(&args.out, &deployment, args.force) {
        // The gas is spent: never lose where the contracts went.
        println!("{}", serde_json::to_string_pretty(&deployment)?);
        return Err(e.context(
            "the contracts are deployed (printed above: save it as the deployment file), but",
        ));
    }
    let path = args.out.canonicalize().unwrap_or(args.out.clone());
    println!("chain-id    {}", deployment.chain_id);
    println!("token       {}", deployment.token);
    println!("settlement  {}", deployment.settlement);
    println!("start-block {}", deployment.start_block);
    println!("contracts   {}", path.display());
    if args.token.is_none() {
        eprintln!(
            "the token is the test stablecoin: only {who} can mint it (agora evm mint); not for real money"
        );
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Writes the deployment file as [`Deployment::save`] does, refusing to replace a file that
/// appeared meanwhile unless `force`.
fn write_deployment(path: &Path, deployment: &Deployment, force: bool) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(deployment)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(&json)?;
    f.sync_all()?;
    Ok(())
}

async fn mint(
    rpc: &str,
    contracts: &Path,
    key: &Path,
    to: Address,
    amount: Amount,
) -> anyhow::Result<()> {
    if to == Address::ZERO {
        bail!("--to is the zero address: the tokens would be lost");
    }
    let deployment = Deployment::load(contracts)
        .with_context(|| format!("reading the deployment file {}", contracts.display()))?;
    let signer = evm_signer_for(&crate::keys_cmd::load_key(key)?.seed());
    let who = signer.address();
    probe_chain(rpc).await?;
    let client = SettlementClient::connect(rpc, signer, deployment.clone())
        .await
        .with_context(|| format!("connecting to {rpc}"))?;
    let token = TestStablecoin::new(deployment.token, client.provider());
    let minter = token.minter().call().await.map_err(|_| {
        anyhow!(
            "the token {} has no minter(): it is not the test stablecoin; send tokens from a wallet that holds them",
            deployment.token
        )
    })?;
    if minter != who {
        bail!(
            "{who}, the EVM account of {}, may not mint: only {minter}, which deployed the token, can",
            key.display()
        );
    }
    require_gas(&client, key).await?;
    client
        .mint(to, amount.units())
        .await
        .map_err(|e| explain(e, who).context(format!("minting {amount} to {to}")))?;
    let balance = client
        .token_balance(to)
        .await
        .with_context(|| format!("reading the balance of {to}"))?;
    println!("minted  {amount}");
    println!("to      {to}");
    println!("balance {balance}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_strictly() {
        let lower = "0x5fbdb2315678afecb367f032d93f642f64180aa3";
        let checksummed = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
        assert_eq!(parse_address(lower), parse_address(checksummed));
        assert!(parse_address(&lower.to_ascii_uppercase().replacen("0X", "0x", 1)).is_ok());
        // One letter's case flipped: a checksum that does not hold. A plain parse takes it
        // (the typo would go unnoticed); this one refuses it.
        let typo = "0x5FbDB2315678afecb367f032d93F642f64180Aa3";
        assert!(typo.parse::<Address>().is_ok());
        assert!(parse_address(typo).is_err());
        for bad in [
            "",
            "5fbdb2315678afecb367f032d93f642f64180aa3",
            "0x5fbdb2315678afecb367f032d93f642f64180aa",
            "0x5fbdb2315678afecb367f032d93f642f64180aa3ff",
            "0xzfbdb2315678afecb367f032d93f642f64180aa3",
            "0x",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_default_rules_are_the_devnets() {
        let rules = contract_rules(&crate::devnet_cmd::default_rules(), 10);
        assert_eq!(
            rules,
            agora_evm::Params {
                audit_fee_bps: 200,
                audit_fee: 1,
                ..agora_evm::Params::devnet(10)
            }
        );
    }

    #[test]
    fn the_contracts_refusals_are_said_in_words() {
        use agora_evm::bindings::AgoraSettlement::{BadParams, UnbondingTooShort};
        let who = Address::repeat_byte(7);
        let said = |e: EvmError| format!("{:#}", explain(e, who));
        let bad = EvmError::Refused(Refusal::Settlement(AgoraSettlementErrors::BadParams(
            BadParams {
                reason: "epochBlocks must be positive".into(),
            },
        )));
        assert_eq!(
            said(bad),
            "the settlement contract refuses these rules: epochBlocks must be positive"
        );
        let short = EvmError::Refused(Refusal::Settlement(
            AgoraSettlementErrors::UnbondingTooShort(UnbondingTooShort {
                unbonding: 2,
                need: U256::from(7),
            }),
        ));
        assert!(said(short).contains("unbonding_epochs 2 is below the 7"));
        let not_minter = EvmError::Refused(Refusal::Token(TestStablecoinErrors::NotMinter(
            TestStablecoin::NotMinter {},
        )));
        assert!(said(not_minter).contains(&format!("{who} may not mint")));
    }

    #[test]
    fn a_genesis_with_rules_the_contract_refuses_is_refused_before_the_chain() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("genesis.json");
        let genesis = Genesis {
            chain_id: 7,
            sequencer: agora_core::Keypair::from_seed([1; 32]).account(),
            params: Params {
                unbonding_epochs: 1,
                ..Params::default()
            },
            allocations: Vec::new(),
        };
        std::fs::write(&path, serde_json::to_string(&genesis).expect("json")).expect("write");
        let err = ledger_rules(Some(&path)).expect_err("refused");
        assert!(format!("{err:#}").contains("unbonding"), "{err:#}");
        std::fs::write(&path, "{").expect("write");
        assert!(ledger_rules(Some(&path)).is_err());
    }
}
