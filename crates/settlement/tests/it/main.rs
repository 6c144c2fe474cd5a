//! The conformance suite: one scenario of every phase-1 operation and refusal runs on the
//! embedded ledger (a real `agora ledger serve` node on loopback) and on the EVM contracts (a
//! real Anvil); both must give the same outcome at every step and end with the same
//! balances. Without Anvil installed the EVM half prints why and the test passes.

use agora_core::{Amount, Keypair};
use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::{deploy, Params as EvmParams, SettlementClient};
use agora_ledger::client::Client;
use agora_ledger::server::{run, SequencerConfig, ServeConfig};
use agora_ledger::{Allocation, Genesis, Params};
use agora_settlement::evm::EvmSettlement;
use agora_settlement::ledger::LedgerSettlement;
use agora_settlement::{ChannelView, Refusal, Settlement, SettlementError, StakeView};
use std::future::Future;
use std::time::Duration;

const CHAIN: u64 = 7;
const EACH: u128 = 1_000;

/// Moves a settlement's epoch forward (the ledger's sequencer; mining on Anvil).
trait Clock {
    fn advance_to(&self, epoch: u64) -> impl Future<Output = anyhow::Result<()>>;
}

impl Clock for LedgerSettlement {
    async fn advance_to(&self, epoch: u64) -> anyhow::Result<()> {
        Ok(self.advance_to_epoch(epoch).await?)
    }
}

struct Miner(SettlementClient);

impl Clock for Miner {
    async fn advance_to(&self, epoch: u64) -> anyhow::Result<()> {
        Ok(self.0.mine_to_epoch(epoch).await?)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    steps: Vec<(&'static str, Result<(), Refusal>)>,
    balances: Vec<(u128, StakeView)>,
    channel: Option<ChannelView>,
}

fn outcome<T>(r: Result<T, SettlementError>) -> anyhow::Result<Result<(), Refusal>> {
    match r {
        Ok(_) => Ok(Ok(())),
        Err(SettlementError::Refused(r)) => Ok(Err(r)),
        Err(e) => Err(e.into()),
    }
}

/// Every phase-1 operation, honest and not, in one story: a payer, a provider, a verifier.
async fn scenario<S: Settlement>(who: &[S], clock: &impl Clock) -> anyhow::Result<Outcome> {
    let (payer, prov, ver) = (&who[0], &who[1], &who[2]);
    let mut steps = Vec::new();
    macro_rules! step {
        ($name:literal, $e:expr) => {
            steps.push(($name, outcome($e.await)?))
        };
    }
    let e = prov.epoch().await?;
    clock.advance_to(e + 1).await?;
    let e = e + 1;
    let root = [5u8; 32];
    step!("root without stake", prov.post_root(e, root, 10, false));
    step!("stake", prov.stake(500));
    step!(
        "root for the next epoch",
        prov.post_root(e + 1, root, 10, false)
    );
    step!("root with no receipts", prov.post_root(e, root, 0, false));
    step!("root", prov.post_root(e, root, 10, false));
    step!(
        "second root in an epoch",
        prov.post_root(e, [6; 32], 10, false)
    );
    step!(
        "channel timeout within the claim window",
        payer.open_channel(prov.account(), 300, 2)
    );
    step!(
        "channel to oneself",
        payer.open_channel(payer.account(), 300, 3)
    );
    let ch = payer.open_channel(prov.account(), 300, 3).await?;
    let v100 = payer.sign_voucher(ch, 100)?;
    step!("claim", prov.claim(ch, 100, &v100));
    step!("claim again", prov.claim(ch, 100, &v100));
    let v400 = payer.sign_voucher(ch, 400)?;
    step!("claim above the deposit", prov.claim(ch, 400, &v400));
    let forged = prov.sign_voucher(ch, 200)?;
    step!(
        "claim a voucher the provider signed",
        prov.claim(ch, 200, &forged)
    );
    let v200 = payer.sign_voucher(ch, 200)?;
    step!(
        "claim by another than the provider",
        ver.claim(ch, 200, &v200)
    );
    step!("top up", payer.top_up(ch, 100));
    step!("top up by another than the payer", prov.top_up(ch, 100));
    step!("close before the timeout", payer.request_close(ch));
    step!("unstake", prov.unstake(200));
    step!("withdraw while unbonding", prov.withdraw());
    step!(
        "register a verifier under the minimum",
        ver.register_verifier(99)
    );
    step!("register a verifier", ver.register_verifier(100));
    step!("stake more than the balance", payer.stake(5_000));
    clock.advance_to(e + 3).await?;
    step!("close by another than the payer", prov.request_close(ch));
    step!("close after the timeout", payer.request_close(ch));
    step!("finalize inside the claim window", payer.finalize_close(ch));
    let v350 = payer.sign_voucher(ch, 350)?;
    step!("claim inside the claim window", prov.claim(ch, 350, &v350));
    step!("top up while closing", payer.top_up(ch, 10));
    clock.advance_to(e + 5).await?;
    let v380 = payer.sign_voucher(ch, 380)?;
    step!("claim after the claim window", prov.claim(ch, 380, &v380));
    step!("finalize", payer.finalize_close(ch));
    clock.advance_to(e + 7).await?;
    step!("withdraw an epoch early", prov.withdraw());
    clock.advance_to(e + 8).await?;
    step!("withdraw when released", prov.withdraw());
    step!("late root", prov.post_root(e + 8, root, 5, true));
    step!(
        "root after a late root",
        prov.post_root(e + 8, root, 5, false)
    );
    let mut balances = Vec::new();
    for s in who {
        balances.push((
            s.balance(s.account()).await?,
            s.stake_of(s.account()).await?,
        ));
    }
    Ok(Outcome {
        steps,
        balances,
        channel: payer.channel(ch).await?,
    })
}

struct LedgerNode {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn ledger(keys: &[Keypair]) -> anyhow::Result<LedgerNode> {
    let dir = tempfile::tempdir()?;
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        db: dir.path().join("ledger.redb"),
        genesis: Some(Genesis {
            chain_id: CHAIN,
            sequencer: keys[0].account(),
            params: Params::default(),
            allocations: keys
                .iter()
                .map(|k| Allocation {
                    account: k.account(),
                    amount: Amount::new(EACH),
                })
                .collect(),
        }),
        sequencer_key: Some(keys[0].clone()),
        sequencer: SequencerConfig::default(),
    };
    tokio::spawn(async move {
        let r = run(
            cfg,
            move |a| {
                let _ = bound_tx.send(a);
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await;
        if let Err(e) = r {
            eprintln!("ledger failed: {e}");
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(20), bound_rx).await??;
    Ok(LedgerNode {
        url: format!("http://{addr}"),
        _stop: stop,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_and_evm_agree_on_every_phase1_operation() -> anyhow::Result<()> {
    let keys: Vec<Keypair> = (0..4).map(|i| Keypair::from_seed([i + 1; 32])).collect();
    let node = ledger(&keys).await?;
    let client = Client::new(&node.url)?;
    let sequencer = LedgerSettlement::new(client.clone(), keys[0].clone(), CHAIN);
    let on_ledger: Vec<LedgerSettlement> = keys[1..]
        .iter()
        .map(|k| LedgerSettlement::new(client.clone(), k.clone(), CHAIN))
        .collect();
    let ledger_outcome = scenario(&on_ledger, &sequencer).await?;
    use Refusal::*;
    #[rustfmt::skip]
    let expected: Vec<Result<(), Refusal>> = vec![
        Err(InsufficientStake), Ok(()), Err(WrongEpoch), Err(Malformed), Ok(()),
        Err(RootAlreadyPosted), Err(ChannelTimeout), Err(Malformed), Ok(()), Err(DoubleClaim),
        Err(OverClaim), Err(ForgedVoucher), Err(NotChannelProvider), Ok(()),
        Err(NotChannelPayer), Err(ChannelNotExpired), Ok(()), Err(StillUnbonding),
        Err(InsufficientStake), Ok(()), Err(Overdraft), Err(NotChannelPayer), Ok(()),
        Err(ChannelNotDue), Ok(()), Err(ChannelClosed), Err(ChannelClosed), Ok(()),
        Err(StillUnbonding), Ok(()), Ok(()), Err(RootAlreadyPosted),
    ];
    let got: Vec<_> = ledger_outcome
        .steps
        .iter()
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(
        got, expected,
        "the ledger's outcomes: {:?}",
        ledger_outcome.steps
    );
    // The story's own expectations, so agreement is not agreement on nonsense.
    assert_eq!(
        ledger_outcome.balances,
        vec![
            (650, StakeView::default()),
            (
                1_050,
                StakeView {
                    stake: 300,
                    unbonding: 0,
                    verifier: false
                }
            ),
            (
                900,
                StakeView {
                    stake: 100,
                    unbonding: 0,
                    verifier: true
                }
            ),
        ]
    );
    assert_eq!(
        ledger_outcome.channel,
        Some(ChannelView {
            deposit: 400,
            claimed: 350,
            closed: true
        })
    );

    let Some(bin) = find_anvil() else {
        eprintln!("SKIP (EVM half): anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = Anvil::start(&bin, 31_337)?;
    // The ledger's default rules; epochs long enough that no step crosses one by accident.
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), EvmParams::devnet(50)).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    let mut on_evm = Vec::new();
    for k in &anvil.keys()[1..4] {
        admin.mint(k.address(), EACH).await?;
        on_evm.push(EvmSettlement::new(
            SettlementClient::connect(anvil.url(), k.clone(), d.clone()).await?,
        ));
    }
    let evm_outcome = scenario(&on_evm, &Miner(admin)).await?;
    for (l, e) in ledger_outcome.steps.iter().zip(&evm_outcome.steps) {
        assert_eq!(l, e, "the ledger and the contracts disagree");
    }
    assert_eq!(ledger_outcome, evm_outcome);
    Ok(())
}
