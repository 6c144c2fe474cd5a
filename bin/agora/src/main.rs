//! The Agora command line: one binary for every role in the network.

mod bench_cmd;
mod bench_net;
mod bench_serve;
mod devnet_cmd;
mod diloco_cmd;
mod econ_cmd;
mod evm_cmd;
mod explorer_cmd;
mod gateway_cmd;
mod generate_cmd;
mod http_client;
mod keys_cmd;
mod ledger_cmd;
mod model_cmd;
mod net_args;
mod provider_cmd;
mod settlement_args;
mod shutdown;
mod sim_cmd;
mod train_cmd;
mod verifier_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Agora: an open network that serves and trains open models, paid per token and kept honest by sampled verification."
)]
struct Cli {
    /// Worker threads for tensor kernels (default: all cores).
    #[arg(long, global = true, env = "AGORA_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A whole network on this machine: ledger, gateway and providers serving a real model.
    Devnet(devnet_cmd::DevnetArgs),
    /// Serve a model on the network and be paid per token.
    Provider(provider_cmd::ProviderArgs),
    /// Audit a sample of the network's answers; catch and slash cheats.
    Verifier(verifier_cmd::VerifierArgs),
    /// Check that audits, slashing and escrow make cheating lose money.
    Econ(econ_cmd::EconArgs),
    /// The deterministic simulation of the trust protocol: attacks over many seeds.
    Sim(sim_cmd::SimArgs),
    /// The OpenAI-compatible API in front of the network (`gateway keys ...` manages API keys).
    Gateway(gateway_cmd::GatewayArgs),
    /// The network's explorer on its own: providers, verifiers, blocks, audits, live.
    Explorer(explorer_cmd::ExplorerArgs),
    /// Generate text with a model, streamed, with prompt and decode speed at the end.
    Generate(generate_cmd::GenerateArgs),
    /// Train a model on a text file on this machine.
    Train(train_cmd::TrainArgs),
    /// Benchmarks that print their anchor beside them.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// Inspect and convert model files.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Create and inspect ed25519 identity keys.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCmd),
    /// Run the settlement ledger and send it transactions.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCmd),
    /// Deploy the settlement contracts to an EVM chain; mint its test stablecoin.
    #[command(subcommand)]
    Evm(evm_cmd::EvmCmd),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Candle's matmul and quantized kernels and our rayon pool size themselves from this
    // variable; set it before any kernel runs.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let result = match cli.command {
        Command::Devnet(args) => devnet_cmd::run(args),
        Command::Provider(args) => provider_cmd::run(args),
        Command::Gateway(args) => gateway_cmd::run(args),
        Command::Verifier(args) => verifier_cmd::run(args),
        Command::Econ(args) => econ_cmd::run(args),
        Command::Sim(args) => sim_cmd::run(args, threads),
        Command::Explorer(args) => explorer_cmd::run(args),
        Command::Generate(args) => generate_cmd::run(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Bench(cmd) => bench_cmd::run(cmd, threads),
        Command::Keys(cmd) => keys_cmd::run(cmd),
        Command::Ledger(cmd) => ledger_cmd::run(cmd),
        Command::Evm(cmd) => evm_cmd::run(cmd),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
