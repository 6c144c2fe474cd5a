//! Setup shared by the provider's test binaries: the chain and a real ledger node.

use agora_core::{Amount, Keypair};
use agora_ledger::server::{run, SequencerConfig, ServeConfig};
use agora_ledger::{Allocation, Genesis, Params};

pub const CHAIN: u64 = 9;

/// Starts a ledger node on a loopback port with `seq` as sequencer and `each` units for every
/// one of `accounts`; returns its URL once it is bound.
pub async fn ledger(
    dir: &std::path::Path,
    seq: &Keypair,
    accounts: &[&Keypair],
    each: u128,
) -> String {
    ledger_with_epochs(dir, seq, accounts, each, None).await
}

/// [`ledger`] whose sequencer advances the epoch every `epoch_interval`.
#[allow(dead_code)] // not every test binary advances epochs
pub async fn ledger_with_epochs(
    dir: &std::path::Path,
    seq: &Keypair,
    accounts: &[&Keypair],
    each: u128,
    epoch_interval: Option<std::time::Duration>,
) -> String {
    let genesis = Genesis {
        chain_id: CHAIN,
        sequencer: seq.account(),
        params: Params::default(),
        allocations: accounts
            .iter()
            .map(|k| Allocation {
                account: k.account(),
                amount: Amount::new(each),
            })
            .collect(),
    };
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        db: dir.join("ledger.redb"),
        genesis: Some(genesis),
        sequencer_key: Some(seq.clone()),
        sequencer: SequencerConfig {
            epoch_interval,
            ..SequencerConfig::default()
        },
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = run(
            cfg,
            move |a| {
                let _ = tx.send(a);
            },
            std::future::pending(),
        )
        .await;
    });
    format!("http://{}", rx.await.expect("bound"))
}
