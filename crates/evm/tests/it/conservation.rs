use crate::common::{params, CHAIN_ID};
use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::{deploy, ClientOptions, EvmError, Params, SettlementClient};
use alloy::primitives::B256;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::time::Duration;

const ACTORS: usize = 4;
const MINT: u128 = 1_000;

#[derive(Debug, Clone)]
enum Op {
    Stake(usize, u128),
    Unstake(usize, u128),
    Withdraw(usize),
    RegisterVerifier(usize, u128),
    Open(usize, usize, u128, u64),
    TopUp(usize, u128),
    Claim(usize, u128),
    RequestClose(usize),
    Finalize(usize),
    Mine(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..ACTORS;
    let amt = 0u128..400;
    prop_oneof![
        (who.clone(), amt.clone()).prop_map(|(a, x)| Op::Stake(a, x)),
        (who.clone(), amt.clone()).prop_map(|(a, x)| Op::Unstake(a, x)),
        who.clone().prop_map(Op::Withdraw),
        (who.clone(), 0u128..150).prop_map(|(a, x)| Op::RegisterVerifier(a, x)),
        (who.clone(), who.clone(), amt.clone(), 2u64..6)
            .prop_map(|(a, b, x, t)| Op::Open(a, b, x, t)),
        (0usize..8, amt.clone()).prop_map(|(c, x)| Op::TopUp(c, x)),
        (0usize..8, 0u128..500).prop_map(|(c, x)| Op::Claim(c, x)),
        (0usize..8, 0u128..500).prop_map(|(c, x)| Op::Claim(c, x)),
        (0usize..8).prop_map(Op::RequestClose),
        (0usize..8).prop_map(Op::Finalize),
        (0u64..10).prop_map(Op::Mine),
    ]
}

/// Applies one op; refusals are expected (random ops break rules), other errors are not.
async fn apply(
    actors: &[SettlementClient],
    channels: &mut Vec<B256>,
    op: &Op,
) -> Result<(), EvmError> {
    // Any index names some channel once one exists, so most channel ops do something.
    let pick = |c: &usize, channels: &Vec<B256>| {
        (!channels.is_empty()).then(|| channels[*c % channels.len()])
    };
    let r = match op {
        Op::Stake(a, x) => actors[*a].stake(*x).await.map(drop),
        Op::Unstake(a, x) => actors[*a].unstake(*x).await.map(drop),
        Op::Withdraw(a) => actors[*a].withdraw().await.map(drop),
        Op::RegisterVerifier(a, x) => actors[*a].register_verifier(*x).await.map(drop),
        Op::Open(a, b, x, t) => match actors[*a].open_channel(actors[*b].address(), *x, *t).await {
            Ok((id, _)) => {
                channels.push(id);
                Ok(())
            }
            Err(e) => Err(e),
        },
        Op::TopUp(c, x) => match pick(c, channels) {
            Some(id) => {
                let payer = payer_of(actors, id).await?;
                actors[payer].top_up(id, *x).await.map(drop)
            }
            None => Ok(()),
        },
        Op::Claim(c, x) => match pick(c, channels) {
            Some(id) => {
                let payer = payer_of(actors, id).await?;
                let prov = provider_of(actors, id).await?;
                let sig = actors[payer].sign_voucher(id, *x)?;
                actors[prov].claim(id, *x, &sig).await.map(drop)
            }
            None => Ok(()),
        },
        Op::RequestClose(c) => match pick(c, channels) {
            Some(id) => {
                let payer = payer_of(actors, id).await?;
                actors[payer].request_close(id).await.map(drop)
            }
            None => Ok(()),
        },
        Op::Finalize(c) => match pick(c, channels) {
            Some(id) => actors[0].finalize_close(id).await.map(drop),
            None => Ok(()),
        },
        Op::Mine(blocks) => actors[0].mine(*blocks * 7).await,
    };
    match r {
        Ok(()) | Err(EvmError::Refused(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn payer_of(actors: &[SettlementClient], id: B256) -> Result<usize, EvmError> {
    let c = actors[0]
        .channel(id)
        .await?
        .expect("tracked channel exists");
    Ok(actors
        .iter()
        .position(|a| a.address() == c.payer)
        .expect("an actor"))
}

async fn provider_of(actors: &[SettlementClient], id: B256) -> Result<usize, EvmError> {
    let c = actors[0]
        .channel(id)
        .await?
        .expect("tracked channel exists");
    Ok(actors
        .iter()
        .position(|a| a.address() == c.provider)
        .expect("an actor"))
}

/// Every token is somewhere: with the actors, or held by the contract for exactly the stake,
/// unbonding stake, channel escrow, audit pool, plant bonds and burned slashes it records.
async fn check(actors: &[SettlementClient], channels: &[B256]) -> Result<(), TestCaseError> {
    let c = &actors[0];
    let settlement = c.deployment().expect("deployed").settlement;
    let held = c.token_balance(settlement).await.map_err(fail)?;
    let mut owed = c.audit_pool().await.map_err(fail)?
        + c.plant_bonds().await.map_err(fail)?
        + c.burned().await.map_err(fail)?;
    let mut outside = 0;
    for a in actors {
        let acct = c.account(a.address()).await.map_err(fail)?;
        owed += acct.stake + acct.unbonding;
        outside += c.token_balance(a.address()).await.map_err(fail)?;
    }
    for id in channels {
        owed += c
            .channel(*id)
            .await
            .map_err(fail)?
            .expect("exists")
            .escrow();
    }
    prop_assert_eq!(held, owed, "contract holds what it owes");
    prop_assert_eq!(held + outside, MINT * ACTORS as u128, "supply is conserved");
    Ok(())
}

fn fail(e: EvmError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

async fn run_case(anvil: &Anvil, p: Params, ops: &[Op]) -> Result<(), TestCaseError> {
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), p)
        .await
        .map_err(fail)?;
    let fast = ClientOptions {
        poll: Duration::from_millis(5),
        ..ClientOptions::default()
    };
    let admin =
        SettlementClient::connect_with(anvil.url(), anvil.keys()[0].clone(), d.clone(), fast)
            .await
            .map_err(fail)?;
    let mut actors = Vec::new();
    for i in 1..=ACTORS {
        let a =
            SettlementClient::connect_with(anvil.url(), anvil.keys()[i].clone(), d.clone(), fast)
                .await
                .map_err(fail)?;
        admin.mint(a.address(), MINT).await.map_err(fail)?;
        actors.push(a);
    }
    let mut channels = Vec::new();
    for op in ops {
        apply(&actors, &mut channels, op).await.map_err(fail)?;
        check(&actors, &channels).await?;
    }
    Ok(())
}

/// Random sequences of every operation (most of them breaking some rule) never create or
/// lose a token, with a 10% audit fee so the pool is exercised (a claim that paid the
/// provider the fee too fails here).
#[test]
fn conservation_over_random_operations() -> anyhow::Result<()> {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = Anvil::start(&bin, CHAIN_ID)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let p = Params {
        audit_fee_bps: 1_000,
        ..params()
    };
    let mut runner = TestRunner::new(Config {
        cases: 4,
        max_shrink_iters: 8,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 12..24), |ops| {
            rt.block_on(run_case(&anvil, p, &ops))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
