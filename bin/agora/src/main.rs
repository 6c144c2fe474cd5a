//! The `agora` command line: a thin edge over the library crates (clap, wiring, exit codes).

mod keys_cmd;
mod ledger_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Agora: an open network where idle GPUs and CPUs serve open models, paid per token out of
/// escrow and kept honest by sampled audits and slashing.
#[derive(Parser)]
#[command(name = "agora", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and inspect ed25519 identity keys.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCmd),
    /// Run the settlement ledger and send it transactions.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCmd),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(cmd) => keys_cmd::run(cmd),
        Command::Ledger(cmd) => ledger_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
