//! `agora ledger ...`: genesis, the node (`serve`), and commands that submit transactions.

use crate::keys_cmd::load_key;
use agora_core::{AccountId, Amount, Hash32, Keypair, Signature};
use agora_ledger::client::Client;
use agora_ledger::server::{run as serve, SequencerConfig, ServeConfig};
use agora_ledger::tx::channel_id;
use agora_ledger::{Allocation, Genesis, Params, Tx, TxBody, Voucher};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Genesis files above this size are refused.
const MAX_GENESIS_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_URL: &str = "http://127.0.0.1:7420";

/// Ledger commands.
#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Write a genesis file: chain id, sequencer, rule parameters and initial balances.
    Genesis(GenesisArgs),
    /// Run the ledger node: durable store, sequencer and HTTP/JSON API.
    Serve(ServeArgs),
    /// Show chain status: height, epoch, beacon, state hash.
    Status(UrlArg),
    /// Show an account's balance, nonce and stake.
    Balance {
        #[command(flatten)]
        url: UrlArg,
        /// The account id (hex); or use --key.
        account: Option<AccountId>,
        /// A key file whose account to show.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Transfer base units to another account.
    Transfer {
        #[command(flatten)]
        from: Sender,
        /// The recipient account id (hex).
        #[arg(long)]
        to: AccountId,
        /// Amount in base units.
        #[arg(long)]
        amount: Amount,
    },
    /// Bond balance as stake.
    Stake {
        #[command(flatten)]
        from: Sender,
        /// Amount in base units.
        #[arg(long)]
        amount: Amount,
    },
    /// Start unbonding stake; it returns to the balance after the unbonding delay.
    Unstake {
        #[command(flatten)]
        from: Sender,
        /// Amount in base units.
        #[arg(long)]
        amount: Amount,
    },
    /// Bond stake and register as a verifier.
    RegisterVerifier {
        #[command(flatten)]
        from: Sender,
        /// Extra stake to bond now, in base units.
        #[arg(long, default_value = "0")]
        stake: Amount,
    },
    /// Payment channels: open, top up, sign and claim vouchers, close, show.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Print blocks as JSON.
    Blocks {
        #[command(flatten)]
        url: UrlArg,
        /// First height.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// How many at most.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Print events as JSON lines, optionally following new blocks.
    Events {
        #[command(flatten)]
        url: UrlArg,
        /// First height.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep waiting for new blocks.
        #[arg(long)]
        follow: bool,
    },
}

/// Channel commands.
#[derive(Subcommand, Debug)]
pub enum ChannelCmd {
    /// Open a channel to a provider, escrowing an amount; prints the channel id.
    Open {
        #[command(flatten)]
        from: Sender,
        /// The provider's account id.
        #[arg(long)]
        provider: AccountId,
        /// Deposit in base units.
        #[arg(long)]
        amount: Amount,
        /// Epochs before the payer may close it.
        #[arg(long, default_value_t = 10)]
        timeout_epochs: u64,
    },
    /// Add to a channel's deposit (payer only).
    TopUp {
        #[command(flatten)]
        from: Sender,
        /// The channel id.
        #[arg(long)]
        channel: Hash32,
        /// Amount in base units.
        #[arg(long)]
        amount: Amount,
    },
    /// Sign a voucher as the payer (offline) and print it as JSON for the provider.
    Voucher {
        /// The payer's key file.
        #[arg(long)]
        key: PathBuf,
        /// The chain id.
        #[arg(long)]
        chain_id: u64,
        /// The channel id.
        #[arg(long)]
        channel: Hash32,
        /// Total the provider may have claimed, in base units.
        #[arg(long)]
        cumulative: Amount,
    },
    /// Claim a voucher as the provider; only the increase over earlier claims is paid.
    Claim {
        #[command(flatten)]
        from: Sender,
        /// A voucher file written by `agora ledger channel voucher`.
        #[arg(long)]
        voucher: PathBuf,
    },
    /// Close a channel after its timeout; the unclaimed rest returns to the payer.
    Close {
        #[command(flatten)]
        from: Sender,
        /// The channel id.
        #[arg(long)]
        channel: Hash32,
    },
    /// Show a channel.
    Show {
        #[command(flatten)]
        url: UrlArg,
        /// The channel id.
        channel: Hash32,
    },
}

/// Arguments of `agora ledger genesis`.
#[derive(Args, Debug)]
pub struct GenesisArgs {
    /// Chain id every transaction must name.
    #[arg(long)]
    chain_id: u64,
    /// The sequencer's account id (it signs epoch advances).
    #[arg(long)]
    sequencer: AccountId,
    /// An initial balance, ACCOUNT=AMOUNT; repeat for more. These are the only mint.
    #[arg(long = "alloc", value_parser = parse_alloc)]
    allocations: Vec<Allocation>,
    /// Epochs between unstaking and release.
    #[arg(long, default_value_t = Params::default().unbonding_epochs)]
    unbonding_epochs: u64,
    /// Share of stake slashed per confirmed fraud, basis points.
    #[arg(long, default_value_t = Params::default().slash_bps)]
    slash_bps: u16,
    /// Share of the slash paid to the verifier, basis points.
    #[arg(long, default_value_t = Params::default().bounty_bps)]
    bounty_bps: u16,
    /// Minimum bonded stake of a verifier.
    #[arg(long, default_value = "100")]
    min_verifier_stake: Amount,
    /// Minimum bonded stake of a provider posting receipt roots.
    #[arg(long, default_value = "100")]
    min_provider_stake: Amount,
    /// A new provider's first this many clean audits are audited at 100%.
    #[arg(long, default_value_t = 50)]
    probation_jobs: u64,
    /// Audit probability after probation, in parts per million.
    #[arg(long, default_value_t = 20_000)]
    audit_floor_ppm: u32,
    /// Share of every voucher claim that funds the audit pool, in basis points.
    #[arg(long, default_value_t = 200)]
    audit_fee_bps: u16,
    /// Paid from the audit pool for each revealed audit.
    #[arg(long, default_value = "1")]
    audit_fee: Amount,
    /// Share of a verifier's stake slashed for passing a planted fraud, in basis points.
    #[arg(long, default_value_t = 5_000)]
    lazy_slash_bps: u16,
    /// Epochs for committing audits of a root, and again for revealing them.
    #[arg(long, default_value_t = 1)]
    audit_window_epochs: u64,
    /// Epochs in which a verdict on a revealed failure may land.
    #[arg(long, default_value_t = Params::default().escalation_epochs)]
    escalation_epochs: u64,
    /// Where to write the genesis JSON.
    #[arg(long, short)]
    out: PathBuf,
}

fn parse_alloc(s: &str) -> Result<Allocation, String> {
    let (a, n) = s.split_once('=').ok_or("expected ACCOUNT=AMOUNT")?;
    Ok(Allocation {
        account: a.parse().map_err(|e| format!("{e}"))?,
        amount: n.parse().map_err(|e| format!("{e}"))?,
    })
}

/// Arguments of `agora ledger serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The database file (created on first start).
    #[arg(long, default_value = "agora-ledger.redb")]
    db: PathBuf,
    /// Genesis file; required on first start, checked against the database afterwards.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: std::net::SocketAddr,
    /// The sequencer's key file; without it epochs never advance.
    #[arg(long)]
    sequencer_key: Option<PathBuf>,
    /// Seconds per epoch.
    #[arg(long, default_value_t = 60)]
    epoch_secs: u64,
    /// Most transactions per block.
    #[arg(long, default_value_t = 4096)]
    max_batch: usize,
    /// How long a block waits for more transactions after its first, in ms.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Also stop when stdin reaches its end (how `agora devnet` stops its children).
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// The ledger node's URL.
#[derive(Args, Debug)]
pub struct UrlArg {
    /// The ledger node's base URL.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
}

/// Who sends a transaction, and where.
#[derive(Args, Debug)]
pub struct Sender {
    /// The sender's key file.
    #[arg(long)]
    key: PathBuf,
    /// The ledger node's base URL.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
}

/// A voucher with the payer's signature, as handed to the provider.
#[derive(Serialize, Deserialize)]
struct SignedVoucher {
    voucher: Voucher,
    payer: AccountId,
    payer_sig: Signature,
}

fn read_bounded(path: &Path, max: u64) -> anyhow::Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(max + 1)
        .read_to_string(&mut s)?;
    if s.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(s)
}

/// Signs `body` with the sender's next nonce, submits it and prints the receipt.
fn submit(from: &Sender, body: TxBody) -> anyhow::Result<(Keypair, u64)> {
    let key = load_key(&from.key)?;
    let c = Client::new(&from.url)?;
    let chain_id = c.status().context("reading chain status")?.chain_id;
    let nonce = c.next_nonce(&key.account())?;
    let tx = Tx {
        chain_id,
        from: key.account(),
        nonce,
        body,
    }
    .sign(&key);
    let receipt = c.submit(&tx)?;
    tracing::info!(tx = %receipt.tx_id, height = receipt.height, "committed");
    println!("{}", serde_json::to_string_pretty(&receipt)?);
    Ok((key, chain_id))
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a ledger command.
pub fn run(cmd: LedgerCmd) -> anyhow::Result<()> {
    match cmd {
        LedgerCmd::Genesis(a) => {
            let g = Genesis {
                chain_id: a.chain_id,
                sequencer: a.sequencer,
                params: Params {
                    unbonding_epochs: a.unbonding_epochs,
                    slash_bps: a.slash_bps,
                    bounty_bps: a.bounty_bps,
                    min_verifier_stake: a.min_verifier_stake,
                    min_provider_stake: a.min_provider_stake,
                    probation_jobs: a.probation_jobs,
                    audit_floor_ppm: a.audit_floor_ppm,
                    audit_fee_bps: a.audit_fee_bps,
                    audit_fee: a.audit_fee,
                    lazy_slash_bps: a.lazy_slash_bps,
                    audit_window_epochs: a.audit_window_epochs,
                    escalation_epochs: a.escalation_epochs,
                    ..Params::default()
                },
                allocations: a.allocations,
            };
            let supply = g.validate()?;
            std::fs::write(&a.out, serde_json::to_string_pretty(&g)?)
                .with_context(|| format!("writing {}", a.out.display()))?;
            tracing::info!(path = %a.out.display(), %supply, hash = %g.hash(), "genesis written");
        }
        LedgerCmd::Serve(a) => {
            let genesis = match &a.genesis {
                Some(p) => Some(
                    serde_json::from_str::<Genesis>(&read_bounded(p, MAX_GENESIS_BYTES)?)
                        .with_context(|| format!("parsing genesis {}", p.display()))?,
                ),
                None => None,
            };
            let sequencer_key = a.sequencer_key.as_deref().map(load_key).transpose()?;
            let cfg = ServeConfig {
                listen: a.listen,
                db: a.db,
                genesis,
                sequencer_key,
                sequencer: SequencerConfig {
                    max_batch: a.max_batch.max(1),
                    max_wait: Duration::from_millis(a.max_wait_ms),
                    epoch_interval: Some(Duration::from_secs(a.epoch_secs.max(1))),
                    ..SequencerConfig::default()
                },
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let stop_on_eof = a.stop_on_stdin_eof;
            rt.block_on(serve(
                cfg,
                |addr| {
                    use std::io::Write;
                    println!("listening on http://{addr}");
                    let _ = std::io::stdout().flush();
                },
                crate::shutdown::signal(stop_on_eof),
            ))?;
        }
        LedgerCmd::Status(u) => print_json(&Client::new(&u.url)?.status()?)?,
        LedgerCmd::Balance { url, account, key } => {
            let id = match (account, key) {
                (Some(a), _) => a,
                (None, Some(k)) => load_key(&k)?.account(),
                (None, None) => bail!("give an account id or --key"),
            };
            match Client::new(&url.url)?.account(&id)? {
                Some(a) => print_json(&a)?,
                None => bail!("unknown account {id}"),
            }
        }
        LedgerCmd::Transfer { from, to, amount } => {
            submit(&from, TxBody::Transfer { to, amount })?;
        }
        LedgerCmd::Stake { from, amount } => {
            submit(&from, TxBody::Stake { amount })?;
        }
        LedgerCmd::Unstake { from, amount } => {
            submit(&from, TxBody::Unstake { amount })?;
        }
        LedgerCmd::RegisterVerifier { from, stake } => {
            submit(&from, TxBody::RegisterVerifier { stake })?;
        }
        LedgerCmd::Channel(c) => run_channel(c)?,
        LedgerCmd::Blocks { url, from, limit } => {
            print_json(&Client::new(&url.url)?.blocks(from, limit)?)?
        }
        LedgerCmd::Events { url, from, follow } => {
            let c = Client::new(&url.url)?;
            let mut next = from.max(1);
            loop {
                let wait = if follow {
                    Duration::from_secs(25)
                } else {
                    Duration::ZERO
                };
                let batch = c.events(next, wait)?;
                for b in &batch {
                    println!("{}", serde_json::to_string(b)?);
                    next = b.height + 1;
                }
                if !follow {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn run_channel(cmd: ChannelCmd) -> anyhow::Result<()> {
    match cmd {
        ChannelCmd::Open {
            from,
            provider,
            amount,
            timeout_epochs,
        } => {
            let key = load_key(&from.key)?;
            let c = Client::new(&from.url)?;
            let chain_id = c.status()?.chain_id;
            let nonce = c.next_nonce(&key.account())?;
            let tx = Tx {
                chain_id,
                from: key.account(),
                nonce,
                body: TxBody::OpenChannel {
                    provider,
                    amount,
                    timeout_epochs,
                },
            }
            .sign(&key);
            let r = c.submit(&tx)?;
            let id = channel_id(chain_id, &key.account(), nonce);
            tracing::info!(channel = %id, height = r.height, "channel opened");
            println!("{id}");
        }
        ChannelCmd::TopUp {
            from,
            channel,
            amount,
        } => {
            submit(&from, TxBody::TopUpChannel { channel, amount })?;
        }
        ChannelCmd::Voucher {
            key,
            chain_id,
            channel,
            cumulative,
        } => {
            let key = load_key(&key)?;
            let voucher = Voucher {
                chain_id,
                channel,
                cumulative,
            };
            let sv = SignedVoucher {
                payer_sig: voucher.sign(&key),
                voucher,
                payer: key.account(),
            };
            print_json(&sv)?;
        }
        ChannelCmd::Claim { from, voucher } => {
            let sv: SignedVoucher = serde_json::from_str(&read_bounded(&voucher, 64 * 1024)?)
                .context("parsing voucher file")?;
            submit(
                &from,
                TxBody::ClaimVoucher {
                    voucher: sv.voucher,
                    payer: sv.payer,
                    payer_sig: sv.payer_sig,
                },
            )?;
        }
        ChannelCmd::Close { from, channel } => {
            submit(&from, TxBody::CloseChannel { channel })?;
        }
        ChannelCmd::Show { url, channel } => match Client::new(&url.url)?.channel(&channel)? {
            Some(ch) => print_json(&ch)?,
            None => bail!("unknown channel {channel}"),
        },
    }
    Ok(())
}
