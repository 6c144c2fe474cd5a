//! `agora train --islands N` starts a DiLoCo run that this process coordinates (and trains as
//! island 0); `agora train --join ADDR --run ID --island K` joins it from another process or
//! machine. See `agora_islands` and docs/diloco.md.

use std::path::PathBuf;
use std::time::Duration;

use agora_diloco::{CheckConfig, Codec, IslandConfig, OuterConfig};
use agora_islands::{
    coordinator::start_node, run_island, Coordinator, CoordinatorConfig, IslandOptions, Link,
    RunSpec,
};
use agora_net::{Multiaddr, NetConfig};
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::net_args::announce;
use crate::train_cmd::{fresh_setup, TrainArgs};

/// DiLoCo flags of `agora train`.
#[derive(Args, Debug)]
pub struct DilocoArgs {
    /// Start a DiLoCo run across this many islands: this process coordinates it and trains
    /// as island 0; the others join with --join. Rounds = --steps / --inner-steps.
    #[arg(long, conflicts_with = "join")]
    pub islands: Option<u64>,
    /// Join a DiLoCo run through its coordinator's address (ending in /p2p/<peer id>).
    #[arg(long, requires = "run")]
    pub join: Option<Multiaddr>,
    /// The run id to join (the coordinator prints it).
    #[arg(long)]
    pub run: Option<String>,
    /// This island's number: it picks the island's batches. The starter is island 0.
    #[arg(long, default_value_t = 0)]
    pub island: u64,
    /// Inner AdamW steps per round (H).
    #[arg(long, default_value_t = 100)]
    pub inner_steps: u64,
    /// Seconds a round waits for missing commitments, and then for missing reveals.
    #[arg(long, default_value_t = 600)]
    pub phase_secs: u64,
    /// Outer Nesterov learning rate (DiLoCo's 0.7 with momentum 0.9 suits runs of hundreds
    /// of rounds; over 8 to 32 rounds, 1.2 with momentum 0.5 and --scale-outer-lr measured
    /// better: see docs/BENCHMARKS.md, "DiLoCo").
    #[arg(long, default_value_t = 0.7)]
    pub outer_lr: f64,
    /// Outer Nesterov momentum.
    #[arg(long, default_value_t = 0.9)]
    pub outer_momentum: f64,
    /// In a round where only k of the --islands contribute, step at
    /// outer-lr * sqrt(k / islands): a smaller average cancels less noise (measured with half
    /// the islands dropped: see docs/BENCHMARKS.md, "DiLoCo").
    #[arg(long)]
    pub scale_outer_lr: bool,
    /// Coordinate only: train no island in this process.
    #[arg(long)]
    pub coordinate_only: bool,
    /// The coordinator serves Prometheus metrics on http://ADDR/metrics (port 0 picks one).
    #[arg(long, value_name = "ADDR", conflicts_with = "join")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Stop after training this many rounds (plays a late or dropped island).
    #[arg(long, hide = true)]
    pub max_rounds: Option<u64>,
    /// libp2p listen address.
    #[arg(long = "p2p-listen", default_value = "/ip4/0.0.0.0/tcp/0")]
    pub p2p_listen: Multiaddr,
}

fn hex32(s: &str) -> anyhow::Result<[u8; 32]> {
    let v = hex::decode(s.trim()).context("the run id is not hex")?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("the run id must be 32 bytes"))
}

fn net(listen: &Multiaddr, bootstrap: Vec<Multiaddr>) -> anyhow::Result<NetConfig> {
    Ok(NetConfig {
        key_seed: agora_core::Keypair::generate()?.seed(),
        listen: vec![listen.clone()],
        bootstrap,
        mdns: false,
        topics: vec![],
    })
}

/// Runs the DiLoCo side of `agora train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let d = &args.diloco;
    let key = agora_core::Keypair::generate()?;
    if let Some(addr) = &d.join {
        let run = hex32(d.run.as_deref().unwrap_or_default())?;
        let peer = match addr.iter().last() {
            Some(agora_net::Protocol::P2p(p)) => p,
            _ => bail!("--join must end in /p2p/<peer id>"),
        };
        return rt.block_on(async {
            let node = start_node(net(&d.p2p_listen, vec![addr.clone()])?).await?;
            let outcome = run_island(
                IslandOptions {
                    island: d.island,
                    key,
                    run,
                    text,
                    max_rounds: d.max_rounds,
                },
                Link::Remote { node, peer },
            )
            .await?;
            announce(&format!(
                "final state {} after {} rounds (contributed to {}; sent {} bytes, received {})",
                hex::encode(outcome.final_hash),
                outcome.rounds,
                outcome.contributed,
                outcome.traffic.sent,
                outcome.traffic.received
            ));
            Ok(())
        });
    }

    let islands = d.islands.unwrap_or(1).max(1);
    if d.inner_steps == 0 {
        bail!("--inner-steps must be positive");
    }
    let rounds = (args.steps / d.inner_steps).max(1);
    let (train_text, _) = agora_train::data::split_holdout(&text, args.holdout)?;
    let (model, mut settings, tokenizer) = fresh_setup(&args, train_text)?;
    // The inner schedule spans every inner step this island will take.
    settings.steps = rounds * d.inner_steps;
    let spec = RunSpec {
        name: args.name.clone(),
        model,
        settings,
        island: IslandConfig {
            run_seed: args.seed,
            inner_steps: d.inner_steps,
            codec: Codec::default(),
            check_batches: 1,
        },
        outer: OuterConfig {
            lr: d.outer_lr,
            momentum: d.outer_momentum,
            nesterov: true,
            lr_islands: d.scale_outer_lr.then_some(islands),
        },
        checks: CheckConfig::default(),
        rounds,
        islands,
        phase_ms: d.phase_secs.saturating_mul(1000),
        data_hash: agora_islands::data_hash(&text),
        holdout: args.holdout,
        tokenizer_json: tokenizer.to_json()?,
    };
    let run_dir: PathBuf = args.out.clone();
    let coordinator = Coordinator::new(CoordinatorConfig {
        spec,
        text: text.clone(),
        run_dir: run_dir.clone(),
        resume: args.resume,
    })?;
    let run = coordinator.run_id();
    rt.block_on(async {
        agora_metrics::diloco();
        if let Some(addr) = d.metrics {
            let bound = agora_metrics::listen(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the metrics listener {addr}: {e}"))?;
            announce(&format!("metrics http://{bound}/metrics"));
        }
        let node = start_node(net(&d.p2p_listen, vec![])?).await?;
        announce(&format!("run {}", hex::encode(run)));
        for addr in node.listen_addrs().await? {
            announce(&format!("p2p {addr}"));
        }
        tracing::info!(
            islands,
            rounds,
            inner_steps = d.inner_steps,
            "DiLoCo run: join with `agora train --data {} --join <p2p address above> --run {} --island K`",
            args.data.display(),
            hex::encode(run)
        );
        let bar = ProgressBar::new(rounds);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rounds {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let c2 = coordinator.clone();
        let b2 = bar.clone();
        let progress = tokio::spawn(async move {
            loop {
                let (hash, round) = c2.current();
                b2.set_position(round);
                b2.set_message(format!("state {}", &hex::encode(hash)[..12]));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let serve = {
            let (c, node) = (coordinator.clone(), node.clone());
            tokio::spawn(async move {
                c.serve(&node, Duration::from_secs(15), crate::shutdown::signal(false))
                    .await
            })
        };
        if !d.coordinate_only {
            let outcome = run_island(
                IslandOptions {
                    island: d.island,
                    key,
                    run,
                    text,
                    max_rounds: d.max_rounds,
                },
                Link::Local(coordinator.clone()),
            )
            .await?;
            tracing::info!(contributed = outcome.contributed, "island 0 done");
        }
        serve
            .await
            .map_err(|e| anyhow::anyhow!("coordinator task: {e}"))??;
        progress.abort();
        bar.finish_and_clear();
        if !coordinator.finished() {
            bail!("stopped before the run finished; continue with --resume");
        }
        let (hash, round) = coordinator.current();
        let (dir, eval) = tokio::task::spawn_blocking({
            let c = coordinator.clone();
            move || c.export()
        })
        .await??;
        announce(&format!("final state {} after {round} rounds", hex::encode(hash)));
        println!(
            "held-out bits per byte {:.4} over all {} held-out tokens (in {})",
            eval.bits_per_byte,
            eval.tokens,
            run_dir.join(agora_islands::coordinator::FINAL_EVAL).display()
        );
        println!(
            "exported {} (serve it with `agora provider --model {}`); rounds in {}, loss curve in {}",
            dir.display(),
            dir.display(),
            run_dir.join("rounds.jsonl").display(),
            run_dir.join("loss.svg").display()
        );
        anyhow::Ok(())
    })
}
