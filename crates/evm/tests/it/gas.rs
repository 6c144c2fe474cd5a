use crate::chain_or_skip;
use crate::common::params;
use alloy::primitives::B256;

/// Gas of each operation on Anvil (cancun), printed for docs/settlement.md
/// (`cargo test --release -p agora-evm --test it gas -- --nocapture`), with ceilings so a
/// change that makes an operation much dearer fails here.
#[tokio::test]
async fn gas_per_operation() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 10_000).await?;
    let prov = chain.funded(2, 10_000).await?;
    let ver = chain.funded(3, 10_000).await?;
    let mut rows: Vec<(&str, u64, u64)> = Vec::new();

    payer.ensure_allowance(10_000).await?;
    prov.ensure_allowance(10_000).await?;
    ver.ensure_allowance(10_000).await?;
    rows.push(("stake (first)", prov.stake(500).await?.gas_used, 100_000));
    rows.push(("stake (again)", prov.stake(100).await?.gas_used, 65_000));
    rows.push((
        "register verifier (first change of the set this epoch)",
        ver.register_verifier(100).await?.gas_used,
        210_000,
    ));
    let (id, s) = payer.open_channel(prov.address(), 5_000, 5).await?;
    rows.push(("open channel", s.gas_used, 160_000));
    rows.push(("top up", payer.top_up(id, 1_000).await?.gas_used, 70_000));
    let sig = payer.sign_voucher(id, 1_000)?;
    rows.push((
        "claim (first)",
        prov.claim(id, 1_000, &sig).await?.gas_used,
        75_000,
    ));
    let sig = payer.sign_voucher(id, 2_000)?;
    rows.push((
        "claim (later)",
        prov.claim(id, 2_000, &sig).await?.gas_used,
        75_000,
    ));
    let e = chain.next_epoch().await?;
    rows.push((
        "post receipt root",
        prov.post_root(e, B256::repeat_byte(1), 1_000)
            .await?
            .gas_used,
        80_000,
    ));
    rows.push(("unstake", prov.unstake(100).await?.gas_used, 65_000));
    chain.at_epoch(e + 5).await?;
    rows.push((
        "request close",
        payer.request_close(id).await?.gas_used,
        40_000,
    ));
    chain.at_epoch(e + 8).await?;
    rows.push(("withdraw", prov.withdraw().await?.gas_used, 55_000));
    rows.push((
        "finalize close",
        payer.finalize_close(id).await?.gas_used,
        60_000,
    ));
    let key = agora_core::Keypair::from_seed([4; 32]);
    rows.push((
        "bind network key",
        prov.bind_network_key(&key).await?.gas_used,
        130_000,
    ));

    eprintln!("| operation | gas |\n|---|---:|");
    for (op, gas, _) in &rows {
        eprintln!("| {op} | {gas} |");
    }
    for (op, gas, ceiling) in rows {
        assert!(
            gas <= ceiling,
            "{op} used {gas} gas, over its ceiling {ceiling}"
        );
    }
    Ok(())
}
