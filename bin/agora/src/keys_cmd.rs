//! `agora keys new|show`: ed25519 key files (and the EVM account each one derives).

use agora_core::{AccountId, Keypair};
use agora_settlement::open::evm_signer_for;
use anyhow::{bail, Context};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Key files are tiny; refuse anything bigger.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Key commands.
#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Generate a new key and write it to a file readable only by you.
    New {
        /// Where to write the key file (JSON with the account id and the secret seed).
        #[arg(long, short)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the account id (public key, hex) of a key file, and on a second line, labelled
    /// `evm-address`, the EVM account the same key settles from on a chain (checksummed).
    Show {
        /// The key file.
        #[arg(long, short)]
        key: PathBuf,
        /// Print `{"account": HEX, "evm_address": "0x..."}` instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    account: AccountId,
    secret: String,
}

/// Runs a key command.
pub fn run(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::New { out, force } => {
            if out.exists() && !force {
                bail!("{} exists; pass --force to overwrite", out.display());
            }
            let key = Keypair::generate()?;
            write_key(&out, &key)?;
            tracing::info!(path = %out.display(), "key written");
            println!("{}", key.account());
        }
        KeysCmd::Show { key, json } => {
            let key = load_key(&key)?;
            let account = key.account().to_string();
            // The account `--settlement evm` opens for this key (one key file for both).
            let evm_address = evm_signer_for(&key.seed()).address().to_string();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "account": account, "evm_address": evm_address })
                );
            } else {
                // The first line stays the bare account id: scripts read it.
                println!("{account}\nevm-address {evm_address}");
            }
        }
    }
    Ok(())
}

pub fn write_key(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    let body = serde_json::to_string_pretty(&KeyFile {
        account: key.account(),
        secret: hex::encode(key.seed()),
    })?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, body.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Reads a key file written by `agora keys new`, checking the account matches the secret.
pub fn load_key(path: &Path) -> anyhow::Result<Keypair> {
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening key file {}", path.display()))?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        bail!("{} is too large for a key file", path.display());
    }
    let f: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("parsing key file {}", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(f.secret.trim(), &mut seed).context("secret must be 64 hex characters")?;
    let key = Keypair::from_seed(seed);
    if key.account() != f.account {
        bail!(
            "key file {}: account does not match the secret",
            path.display()
        );
    }
    Ok(key)
}
