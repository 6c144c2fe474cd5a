//! End-to-end tests of the `agora` binary: the commands a user runs, as processes.

/// `agora devnet --cheater`: caught by audits over the network, slashed, dropped.
#[cfg(feature = "adversary")]
mod cheater;
/// `agora generate`, `agora model inspect|to-gguf` on small models the tests make.
mod cli;
/// The model the project ships loads, has the identity it claims, and generates.
mod default_model;
/// `agora train --islands`: DiLoCo across processes, with a killed island and a joiner.
mod diloco;
/// `agora keys show`'s EVM account, and `agora evm deploy|mint` against a real Anvil.
mod evm_cli;
/// `agora devnet --settlement evm`: the chain it prepares (contracts, funded parties, epochs
/// in time), and the network end to end on it.
mod evm_devnet;
/// `agora explorer --ledger URL`: the standalone explorer over a ledger process.
mod explorer;
/// The binary's own HTTP client, shared with the tests.
#[allow(dead_code)]
#[path = "../../src/http_client.rs"]
mod http_client;
/// `agora keys` and `agora ledger`: genesis, serve on a loopback port, transfer, a channel with
/// a voucher, a refused double claim, and recovery after kill -9.
mod ledger_cli;
/// `agora devnet` end to end: serve, pay exactly, fail over when a provider is killed.
mod network;
/// One provider, many concurrent streams through the gateway: receipts and payment exact.
mod serving;
/// `agora train` from a text file to an exported model, with resume.
mod train;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn agora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agora")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tiny random model in the Hugging Face layout.
pub fn tiny_model(dir: &Path) {
    agora_train::trainer::write_tiny_model(dir).expect("tiny model");
}
