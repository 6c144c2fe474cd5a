//! The conformance suite: scenarios of every operation and refusal run on the embedded ledger
//! (a real `agora ledger serve` node on loopback) and on the EVM contracts (a real Anvil);
//! both must give the same outcome at every step and end with the same balances. Without
//! Anvil installed the EVM half prints why and the test passes.

use agora_core::{Amount, Keypair};
use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::{deploy, Params as EvmParams, SettlementClient};
use agora_ledger::client::Client;
use agora_ledger::server::{run, SequencerConfig, ServeConfig};
use agora_ledger::{Allocation, Genesis, Params};
use agora_settlement::evm::EvmSettlement;
use agora_settlement::ledger::LedgerSettlement;
use agora_settlement::{
    ChannelView, Refusal, Settlement, SettlementError, SignedReceipt, StakeView,
};
use std::future::Future;
use std::time::Duration;

mod network;

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

async fn ledger(keys: &[Keypair], params: Params) -> anyhow::Result<LedgerNode> {
    let dir = tempfile::tempdir()?;
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        db: dir.path().join("ledger.redb"),
        genesis: Some(Genesis {
            chain_id: CHAIN,
            sequencer: keys[0].account(),
            params,
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
    let node = ledger(&keys, Params::default()).await?;
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
            closed: true,
            refunded: 0,
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

/// What a reveal names as the audited receipt (this test counts no probation credit).
fn receipt_id(i: u8) -> [u8; 32] {
    [0xa0 | i; 32]
}

fn salt(i: u8) -> [u8; 32] {
    [0xa0 + i; 32]
}

/// A receipt of `provider` (its ed25519 key) to `payer` on `channel`, served in `epoch`.
fn signed_receipt(
    chain_id: u64,
    provider: &Keypair,
    payer: &Keypair,
    channel: [u8; 32],
    epoch: u64,
    cost: u128,
    i: u8,
) -> SignedReceipt {
    use agora_core::Hash32;
    agora_wire::Receipt {
        chain_id,
        epoch,
        request_id: [i; 16],
        provider: provider.account(),
        payer: payer.account(),
        channel: Hash32::from_bytes(channel),
        model: Hash32::of(b"model"),
        prompt_hash: Hash32::of(&[i, 1]),
        output_hash: Hash32::of(&[i, 2]),
        prompt_tokens: 3,
        resumed_tokens: 0,
        output_tokens: 2,
        sampling: agora_wire::Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: u64::from(i),
            ..Default::default()
        },
        fingerprint_hash: Hash32::of(&[i, 3]),
        price_in: Amount::new(1),
        price_out: Amount::new(2),
        cost_micros: cost * agora_wire::MICROS_PER_UNIT,
        started_ms: 1,
        finished_ms: 2,
    }
    .sign(provider)
}

#[derive(Debug, PartialEq, Eq)]
struct AuditOutcome {
    steps: Vec<(&'static str, Result<(), Refusal>)>,
    /// Whether each leaf of the root went to the one verifier of the frozen set.
    selection: Vec<bool>,
    balances: Vec<(u128, StakeView)>,
    channel: Option<ChannelView>,
}

/// The audits in one story: a payer (also the canary's planter), a provider on probation
/// (every leaf selected), the one verifier of the frozen set, and a confirmer registered in
/// the root's epoch. `net` are the ed25519 keys receipts are signed with (payer, provider).
async fn audit_scenario<S: Settlement>(
    who: &[S],
    net: &[Keypair],
    clock: &impl Clock,
) -> anyhow::Result<AuditOutcome> {
    let (payer, prov, ver, conf) = (&who[0], &who[1], &who[2], &who[3]);
    let p = prov.account();
    let mut steps = Vec::new();
    macro_rules! step {
        ($name:literal, $e:expr) => {
            steps.push(($name, outcome($e.await)?))
        };
    }
    let e0 = prov.epoch().await? + 1;
    clock.advance_to(e0).await?;
    step!("stake", prov.stake(500));
    step!("register the verifier", ver.register_verifier(200));
    let e = e0 + 1;
    clock.advance_to(e).await?;
    step!(
        "register the confirmer in the root's epoch",
        conf.register_verifier(100)
    );
    let ch = payer.open_channel(p, 300, 30).await?;
    let v = payer.sign_voucher(ch, 100)?;
    step!("claim", prov.claim(ch, 100, &v));
    let leaves: Vec<S::Receipt> = (0..4u8)
        .map(|i| {
            let cost = if i == 1 { 40 } else { 10 };
            let r = signed_receipt(
                prov.chain_id(),
                &net[1],
                &net[0],
                S::channel_hash(ch),
                e,
                cost,
                i,
            );
            S::receipt(&r)
        })
        .collect();
    let proof = |i: usize| S::receipt_proof(&leaves, i);
    step!(
        "plant at leaf 2",
        payer.plant(payer.plant_commitment(p, e, 2, salt(7)))
    );
    step!(
        "plant at leaf 0",
        payer.plant(payer.plant_commitment(p, e, 0, salt(8)))
    );
    step!(
        "plant twice",
        payer.plant(payer.plant_commitment(p, e, 2, salt(7)))
    );
    step!(
        "root",
        prov.post_root(e, S::receipt_root(&leaves), 4, false)
    );
    step!(
        "commit in the root's epoch",
        ver.commit_audit(p, e, 0, true, salt(0))
    );
    clock.advance_to(e + 1).await?;
    step!(
        "plant after the root's epoch",
        payer.plant(payer.plant_commitment(p, e, 3, salt(9)))
    );
    // Selection once the selecting beacon exists (on a chain: one block into the epoch).
    let mut selection = Vec::new();
    for i in 0..4 {
        selection.push(ver.assignee(p, e, i).await? == Some(ver.account()));
    }
    step!(
        "commit by a verifier not assigned",
        conf.commit_audit(p, e, 0, true, salt(0))
    );
    step!("commit a pass", ver.commit_audit(p, e, 0, true, salt(0)));
    step!(
        "commit a failure",
        ver.commit_audit(p, e, 1, false, salt(1))
    );
    step!(
        "commit the plant's failure",
        ver.commit_audit(p, e, 2, false, salt(2))
    );
    step!(
        "commit a false alarm",
        ver.commit_audit(p, e, 3, false, salt(3))
    );
    step!("commit twice", ver.commit_audit(p, e, 0, false, salt(5)));
    step!(
        "reveal in the commit's epoch",
        ver.reveal_audit(p, e, 0, true, receipt_id(0), salt(0))
    );
    step!(
        "reveal without a commit",
        conf.reveal_audit(p, e, 1, false, [0; 32], salt(1))
    );
    clock.advance_to(e + 2).await?;
    step!(
        "reveal another outcome",
        ver.reveal_audit(p, e, 0, false, [0; 32], salt(0))
    );
    step!(
        "reveal the pass",
        ver.reveal_audit(p, e, 0, true, receipt_id(0), salt(0))
    );
    step!(
        "reveal the failure",
        ver.reveal_audit(p, e, 1, false, [0; 32], salt(1))
    );
    step!(
        "reveal the plant's failure",
        ver.reveal_audit(p, e, 2, false, [0; 32], salt(2))
    );
    step!(
        "reveal the false alarm",
        ver.reveal_audit(p, e, 3, false, [0; 32], salt(3))
    );
    step!(
        "reveal twice",
        ver.reveal_audit(p, e, 0, true, receipt_id(0), salt(0))
    );
    clock.advance_to(e + 4).await?;
    let c1 = conf.confirm_fraud(p, e, 1, &leaves[1], &proof(1))?;
    step!(
        "verdict in the plant epoch",
        ver.fraud_verdict(p, e, 1, &leaves[1], &proof(1), &c1)
    );
    step!(
        "plant opened by another than its provider",
        payer.reveal_plant(e, 2, salt(7), None)
    );
    step!(
        "plant committed after the root's epoch",
        prov.reveal_plant(e, 3, salt(9), None)
    );
    step!(
        "open the caught plant",
        prov.reveal_plant(e, 2, salt(7), None)
    );
    let lazy = conf.confirm_plant(p, e, 0)?;
    step!(
        "second plant under the root",
        prov.reveal_plant(e, 0, salt(8), Some(&lazy))
    );
    clock.advance_to(e + 5).await?;
    let own = ver.confirm_fraud(p, e, 1, &leaves[1], &proof(1))?;
    step!(
        "verdict confirmed by its own sender",
        ver.fraud_verdict(p, e, 1, &leaves[1], &proof(1), &own)
    );
    let by_payer = payer.confirm_fraud(p, e, 1, &leaves[1], &proof(1))?;
    step!(
        "verdict confirmed by a non-verifier",
        ver.fraud_verdict(p, e, 1, &leaves[1], &proof(1), &by_payer)
    );
    let swapped = conf.confirm_fraud(p, e, 1, &leaves[0], &proof(1))?;
    step!(
        "verdict on another receipt of the provider",
        ver.fraud_verdict(p, e, 1, &leaves[0], &proof(1), &swapped)
    );
    let c0 = conf.confirm_fraud(p, e, 0, &leaves[0], &proof(0))?;
    step!(
        "verdict on a leaf the verifier passed",
        ver.fraud_verdict(p, e, 0, &leaves[0], &proof(0), &c0)
    );
    step!(
        "verdict: slash, bounty, refund",
        ver.fraud_verdict(p, e, 1, &leaves[1], &proof(1), &c1)
    );
    step!(
        "verdict twice",
        ver.fraud_verdict(p, e, 1, &leaves[1], &proof(1), &c1)
    );
    let c2 = conf.confirm_fraud(p, e, 2, &leaves[2], &proof(2))?;
    step!(
        "verdict on the opened plant",
        ver.fraud_verdict(p, e, 2, &leaves[2], &proof(2), &c2)
    );
    clock.advance_to(e + 7).await?;
    step!("charge the unconfirmed alarm", payer.expire_alarm(p, e, 3));
    let mut balances = Vec::new();
    for s in who {
        balances.push((
            s.balance(s.account()).await?,
            s.stake_of(s.account()).await?,
        ));
    }
    Ok(AuditOutcome {
        steps,
        selection,
        balances,
        channel: payer.channel(ch).await?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_and_evm_agree_on_the_audits() -> anyhow::Result<()> {
    let keys: Vec<Keypair> = (0..5).map(|i| Keypair::from_seed([i + 1; 32])).collect();
    // 10% of claims to the audit pool, 5 per audit: fees are part of what must agree.
    let params = Params {
        audit_fee_bps: 1_000,
        audit_fee: Amount::new(5),
        ..Params::default()
    };
    let node = ledger(&keys, params).await?;
    let client = Client::new(&node.url)?;
    let sequencer = LedgerSettlement::new(client.clone(), keys[0].clone(), CHAIN);
    let on_ledger: Vec<LedgerSettlement> = keys[1..]
        .iter()
        .map(|k| LedgerSettlement::new(client.clone(), k.clone(), CHAIN))
        .collect();
    let l = audit_scenario(&on_ledger, &keys[1..], &sequencer).await?;
    use Refusal::*;
    #[rustfmt::skip]
    let expected: Vec<Result<(), Refusal>> = vec![
        Ok(()), Ok(()), Ok(()), Ok(()), Ok(()), Ok(()), Err(Malformed), Ok(()), Err(AuditWindow),
        Ok(()), Err(NotAssigned), Ok(()), Ok(()), Ok(()), Ok(()), Err(AlreadyCommitted),
        Err(AuditWindow), Err(BadReveal),
        Err(BadReveal), Ok(()), Ok(()), Ok(()), Ok(()), Err(BadReveal),
        Err(AuditWindow), Err(BadReveal), Err(BadReveal), Ok(()), Err(Malformed),
        Err(ConflictedVerdict), Err(NotVerifier), Err(BadReceiptProof), Err(UnrevealedVerdict),
        Ok(()), Err(AlreadyJudged), Err(AlreadyJudged), Ok(()),
    ];
    let got: Vec<_> = l.steps.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(got, expected, "the ledger's outcomes: {:?}", l.steps);
    assert_eq!(l.selection, vec![true; 4]);
    let view = |stake, verifier| StakeView {
        stake,
        unbonding: 0,
        verifier,
    };
    // Payer: 300 escrowed, three plant bonds (one caught, two never opened), refunded the
    // receipt's 40. Provider: paid 90 (10 to the pool), half its 500 slashed. Verifier: fees
    // 5 + 5, the caught plant's bond 50, the bounty 50 (20% of 250), 1% of 200 for the alarm
    // nothing confirmed.
    assert_eq!(
        l.balances,
        vec![
            (590, view(0, false)),
            (590, view(250, false)),
            (910, view(198, true)),
            (900, view(100, true)),
        ]
    );
    assert_eq!(
        l.channel,
        Some(ChannelView {
            deposit: 300,
            claimed: 100,
            closed: false,
            refunded: 40,
        })
    );

    let Some(bin) = find_anvil() else {
        eprintln!("SKIP (EVM half): anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = Anvil::start(&bin, 31_337)?;
    let p = EvmParams {
        audit_fee_bps: 1_000,
        audit_fee: 5,
        ..EvmParams::devnet(50)
    };
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), p).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    let mut on_evm = Vec::new();
    for k in &anvil.keys()[1..5] {
        admin.mint(k.address(), EACH).await?;
        on_evm.push(EvmSettlement::new(
            SettlementClient::connect(anvil.url(), k.clone(), d.clone()).await?,
        ));
    }
    let evm = audit_scenario(&on_evm, &keys[1..], &Miner(admin)).await?;
    for (l, e) in l.steps.iter().zip(&evm.steps) {
        assert_eq!(l, e, "the ledger and the contracts disagree");
    }
    assert_eq!(l, evm);
    Ok(())
}

/// Material demands, `Withheld` verdicts and inclusion challenges in one story: a payer, a
/// provider on probation, the one verifier of the frozen set, and a confirmer registered in
/// the root's epoch. The provider's root of epoch `e` holds four receipts; a fifth, of `e` and
/// costing 30, it signed for the payer and left out of every root.
async fn dispute_scenario<S: Settlement>(
    who: &[S],
    net: &[Keypair],
    clock: &impl Clock,
) -> anyhow::Result<Outcome> {
    let (payer, prov, ver, conf) = (&who[0], &who[1], &who[2], &who[3]);
    let p = prov.account();
    let mut steps = Vec::new();
    macro_rules! step {
        ($name:literal, $e:expr) => {
            steps.push(($name, outcome($e.await)?))
        };
    }
    let e0 = prov.epoch().await? + 1;
    clock.advance_to(e0).await?;
    step!("stake", prov.stake(500));
    step!("register the verifier", ver.register_verifier(200));
    let e = e0 + 1;
    clock.advance_to(e).await?;
    step!(
        "register the confirmer in the root's epoch",
        conf.register_verifier(100)
    );
    let ch = payer.open_channel(p, 300, 30).await?;
    let v = payer.sign_voucher(ch, 100)?;
    step!("claim", prov.claim(ch, 100, &v));
    let receipt = |i: u8, cost: u128| {
        signed_receipt(
            prov.chain_id(),
            &net[1],
            &net[0],
            S::channel_hash(ch),
            e,
            cost,
            i,
        )
    };
    let signed: Vec<SignedReceipt> = (0..4u8).map(|i| receipt(i, 10)).collect();
    let leaves: Vec<S::Receipt> = signed.iter().map(S::receipt).collect();
    let proof = |i: usize| S::receipt_proof(&leaves, i);
    let omitted = receipt(9, 30);
    let omitted_hash = *omitted.hash().as_bytes();
    step!(
        "root",
        prov.post_root(e, S::receipt_root(&leaves), 4, false)
    );
    step!("demand in the root's epoch", ver.demand_material(p, e, 0));
    clock.advance_to(e + 1).await?;
    step!(
        "demand by a verifier not assigned",
        conf.demand_material(p, e, 0)
    );
    step!("demand leaf 0", ver.demand_material(p, e, 0));
    step!("demand leaf 1", ver.demand_material(p, e, 1));
    step!("demand leaf 2", ver.demand_material(p, e, 2));
    step!("demand twice", ver.demand_material(p, e, 0));
    let m = [0x99; 32];
    step!(
        "answer by another than the provider",
        payer.answer_demand(e, 0, &leaves[0], &proof(0), m)
    );
    step!(
        "answer with another leaf's receipt",
        prov.answer_demand(e, 0, &leaves[1], &proof(0), m)
    );
    step!(
        "answer a leaf not demanded",
        prov.answer_demand(e, 3, &leaves[3], &proof(3), m)
    );
    step!(
        "answer leaf 0",
        prov.answer_demand(e, 0, &leaves[0], &proof(0), m)
    );
    step!(
        "answer twice",
        prov.answer_demand(e, 0, &leaves[0], &proof(0), m)
    );
    let served = prov.serve_receipt(&omitted)?;
    step!(
        "challenge before the receipt's next epoch ends",
        payer.challenge_inclusion(&served)
    );
    clock.advance_to(e + 2).await?;
    step!(
        "answer leaf 1 at its deadline",
        prov.answer_demand(e, 1, &leaves[1], &proof(1), m)
    );
    step!(
        "challenge by another than the payer",
        ver.challenge_inclusion(&served)
    );
    let forged = payer.serve_receipt(&omitted)?;
    step!(
        "challenge a receipt the payer signed",
        payer.challenge_inclusion(&forged)
    );
    step!(
        "challenge the omitted receipt",
        payer.challenge_inclusion(&served)
    );
    step!("challenge twice", payer.challenge_inclusion(&served));
    let included = prov.serve_receipt(&signed[3])?;
    step!(
        "challenge a receipt under the root",
        payer.challenge_inclusion(&included)
    );
    let h3 = *signed[3].hash().as_bytes();
    step!(
        "answer a challenge by another than the provider",
        ver.answer_inclusion(h3, e, 3, &proof(3))
    );
    step!(
        "answer the false challenge",
        prov.answer_inclusion(h3, e, 3, &proof(3))
    );
    step!(
        "answer the omitted receipt with another leaf's path",
        prov.answer_inclusion(omitted_hash, e, 0, &proof(0))
    );
    clock.advance_to(e + 3).await?;
    step!(
        "answer a demand past its deadline",
        prov.answer_demand(e, 2, &leaves[2], &proof(2), m)
    );
    clock.advance_to(e + 4).await?;
    step!(
        "charge the unanswered challenge",
        payer.expire_challenge(omitted_hash)
    );
    step!(
        "answer the challenge past its deadline",
        prov.answer_inclusion(omitted_hash, e, 0, &proof(0))
    );
    let w2 = conf.confirm_withheld(p, e, 2)?;
    step!(
        "withheld verdict in the plant epoch",
        ver.withheld_verdict(p, e, 2, &w2)
    );
    clock.advance_to(e + 5).await?;
    let w3 = conf.confirm_withheld(p, e, 3)?;
    step!(
        "withheld verdict without a demand",
        ver.withheld_verdict(p, e, 3, &w3)
    );
    let w0 = conf.confirm_withheld(p, e, 0)?;
    step!(
        "withheld verdict on an answered demand",
        ver.withheld_verdict(p, e, 0, &w0)
    );
    let own = ver.confirm_withheld(p, e, 2)?;
    step!(
        "withheld verdict confirmed by its own sender",
        ver.withheld_verdict(p, e, 2, &own)
    );
    let by_payer = payer.confirm_withheld(p, e, 2)?;
    step!(
        "withheld verdict confirmed by a non-verifier",
        ver.withheld_verdict(p, e, 2, &by_payer)
    );
    step!(
        "withheld verdict by another than the demander",
        conf.withheld_verdict(p, e, 2, &own)
    );
    step!(
        "withheld verdict: slash, bounty",
        ver.withheld_verdict(p, e, 2, &w2)
    );
    step!("withheld verdict twice", ver.withheld_verdict(p, e, 2, &w2));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_and_evm_agree_on_disputes() -> anyhow::Result<()> {
    let keys: Vec<Keypair> = (0..5).map(|i| Keypair::from_seed([i + 11; 32])).collect();
    let node = ledger(&keys, Params::default()).await?;
    let client = Client::new(&node.url)?;
    let sequencer = LedgerSettlement::new(client.clone(), keys[0].clone(), CHAIN);
    let on_ledger: Vec<LedgerSettlement> = keys[1..]
        .iter()
        .map(|k| LedgerSettlement::new(client.clone(), k.clone(), CHAIN))
        .collect();
    let l = dispute_scenario(&on_ledger, &keys[1..], &sequencer).await?;
    use Refusal::*;
    #[rustfmt::skip]
    let expected: Vec<Result<(), Refusal>> = vec![
        Ok(()), Ok(()), Ok(()), Ok(()), Ok(()),
        Err(AuditWindow), Err(NotAssigned), Ok(()), Ok(()), Ok(()), Err(Demand),
        Err(Demand), Err(BadReceiptProof), Err(Demand), Ok(()), Err(Demand),
        Err(AuditWindow),
        Ok(()), Err(NotChannelPayer), Err(ForgedReceipt), Ok(()), Err(AlreadyChallenged), Ok(()),
        Err(Malformed), Ok(()), Err(BadReceiptProof),
        Err(Demand),
        Ok(()), Err(Malformed), Err(AuditWindow),
        Err(Demand), Err(Demand), Err(ConflictedVerdict), Err(NotVerifier), Err(Demand),
        Ok(()), Err(AlreadyJudged),
    ];
    let got: Vec<_> = l.steps.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(got, expected, "the ledger's outcomes: {:?}", l.steps);
    let view = |stake, verifier| StakeView {
        stake,
        unbonding: 0,
        verifier,
    };
    // Payer: 300 escrowed, two bonds of 5 (one lost to the answered challenge, one back), the
    // omitted receipt's 30 refunded. Provider: paid 100 and the false challenge's bond; half
    // its 500 slashed for the omission, then half of the rest for the withheld material.
    // Verifier: the bounty, 20% of 125.
    assert_eq!(
        l.balances,
        vec![
            (725, view(0, false)),
            (605, view(125, false)),
            (825, view(200, true)),
            (900, view(100, true)),
        ]
    );
    assert_eq!(
        l.channel,
        Some(ChannelView {
            deposit: 300,
            claimed: 100,
            closed: false,
            refunded: 30,
        })
    );

    let Some(bin) = find_anvil() else {
        eprintln!("SKIP (EVM half): anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = Anvil::start(&bin, 31_337)?;
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), EvmParams::devnet(50)).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    let mut on_evm = Vec::new();
    for k in &anvil.keys()[1..5] {
        admin.mint(k.address(), EACH).await?;
        on_evm.push(EvmSettlement::new(
            SettlementClient::connect(anvil.url(), k.clone(), d.clone()).await?,
        ));
    }
    let evm = dispute_scenario(&on_evm, &keys[1..], &Miner(admin)).await?;
    for (l, e) in l.steps.iter().zip(&evm.steps) {
        assert_eq!(l, e, "the ledger and the contracts disagree");
    }
    assert_eq!(l, evm);
    Ok(())
}

/// A provider claims until final: a voucher, the same again, a later one, an earlier one,
/// one above the deposit. Returns each outcome and the payer's and provider's balances.
async fn final_claims<S: Settlement>(
    who: &[S],
    depth: u64,
) -> anyhow::Result<(Vec<Result<u128, Refusal>>, Vec<u128>)> {
    let (payer, prov) = (&who[0], &who[1]);
    let ch = payer.open_channel(prov.account(), 300, 5).await?;
    let mut got = Vec::new();
    for v in [100, 100, 250, 100, 400] {
        let sig = payer.sign_voucher(ch, v)?;
        got.push(match prov.claim_until_final(ch, v, &sig, depth).await {
            Ok(claimed) => Ok(claimed),
            Err(SettlementError::Refused(r)) => Err(r),
            Err(e) => return Err(e.into()),
        });
    }
    let balances = vec![
        payer.balance(payer.account()).await?,
        prov.balance(prov.account()).await?,
    ];
    Ok((got, balances))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_and_evm_agree_on_claims_until_final() -> anyhow::Result<()> {
    let keys: Vec<Keypair> = (0..3).map(|i| Keypair::from_seed([i + 21; 32])).collect();
    let node = ledger(&keys, Params::default()).await?;
    let client = Client::new(&node.url)?;
    let on_ledger: Vec<LedgerSettlement> = keys[1..]
        .iter()
        .map(|k| LedgerSettlement::new(client.clone(), k.clone(), CHAIN))
        .collect();
    let on_ledger = final_claims(&on_ledger, 3).await?;
    use Refusal::*;
    assert_eq!(
        on_ledger,
        (
            vec![Ok(100), Ok(100), Ok(250), Ok(250), Err(OverClaim)],
            vec![700, 1_250]
        )
    );

    let Some(bin) = find_anvil() else {
        eprintln!("SKIP (EVM half): anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = Anvil::start(&bin, 31_337)?;
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), EvmParams::devnet(50)).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    let mut on_evm = Vec::new();
    for k in &anvil.keys()[1..3] {
        admin.mint(k.address(), EACH).await?;
        on_evm.push(EvmSettlement::new(
            SettlementClient::connect(anvil.url(), k.clone(), d.clone()).await?,
        ));
    }
    // Blocks keep coming, so claims get deep.
    let miner = tokio::spawn(async move {
        loop {
            let _ = admin.mine(1).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let on_evm = final_claims(&on_evm, 3).await;
    miner.abort();
    assert_eq!(on_ledger, on_evm?);
    Ok(())
}
