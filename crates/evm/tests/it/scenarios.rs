use crate::common::params;
use crate::{assert_refused, chain_or_skip};
use alloy::primitives::B256;

#[tokio::test]
async fn stake_unbond_withdraw() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let p = chain.funded(1, 1_000).await?;
    p.stake(500).await?;
    assert_eq!(p.account(p.address()).await?.stake, 500);
    assert_eq!(p.token_balance(p.address()).await?, 500);

    let e = chain.next_epoch().await?;
    p.unstake(200).await?;
    let a = p.account(p.address()).await?;
    assert_eq!((a.stake, a.unbonding), (300, 200));
    assert_eq!(a.release_epoch, e + 8);
    assert_refused!(p.withdraw().await, "StillUnbonding");
    chain.at_epoch(e + 7).await?;
    assert_refused!(p.withdraw().await, "StillUnbonding");
    chain.at_epoch(e + 8).await?;
    p.withdraw().await?;
    assert_eq!(p.token_balance(p.address()).await?, 700);
    let a = p.account(p.address()).await?;
    assert_eq!((a.stake, a.unbonding), (300, 0));
    assert_refused!(p.withdraw().await, "NothingToWithdraw");
    Ok(())
}

#[tokio::test]
async fn channel_voucher_claim_timeout_close() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.user(2).await?;
    let e = chain.next_epoch().await?;
    let (id, _) = payer.open_channel(prov.address(), 300, 3).await?;
    let c = payer.channel(id).await?.expect("channel exists");
    assert_eq!((c.deposit, c.claimed, c.expires_epoch), (300, 0, e + 3));
    assert_eq!(payer.token_balance(payer.address()).await?, 700);

    // Cumulative vouchers: each claim takes only the increase.
    let v100 = payer.sign_voucher(id, 100)?;
    prov.claim(id, 100, &v100).await?;
    assert_eq!(prov.token_balance(prov.address()).await?, 100);
    let v250 = payer.sign_voucher(id, 250)?;
    prov.claim(id, 250, &v250).await?;
    assert_eq!(prov.token_balance(prov.address()).await?, 250);
    assert_refused!(prov.claim(id, 250, &v250).await, "DoubleClaim");
    assert_refused!(prov.claim(id, 100, &v100).await, "DoubleClaim");

    payer.top_up(id, 50).await?;
    assert_eq!(payer.channel(id).await?.expect("open").deposit, 350);

    assert_refused!(payer.request_close(id).await, "ChannelNotExpired");
    chain.at_epoch(e + 3).await?;
    let closing = chain.next_epoch().await?;
    payer.request_close(id).await?;
    let c = payer.channel(id).await?.expect("closing");
    assert_eq!(c.closes_epoch, closing + 2);
    assert_refused!(payer.top_up(id, 10).await, "ChannelIsClosed");
    assert_refused!(payer.finalize_close(id).await, "ChannelNotDue");
    // The provider keeps its claim window after the payer's request.
    let v300 = payer.sign_voucher(id, 300)?;
    prov.claim(id, 300, &v300).await?;
    chain.at_epoch(closing + 2).await?;
    let v320 = payer.sign_voucher(id, 320)?;
    assert_refused!(prov.claim(id, 320, &v320).await, "ChannelIsClosed");
    // Anyone may finalize; the refund goes to the payer only.
    prov.finalize_close(id).await?;
    assert_eq!(payer.token_balance(payer.address()).await?, 700 - 50 + 50);
    assert_eq!(prov.token_balance(prov.address()).await?, 300);
    assert!(payer.channel(id).await?.expect("kept").closed);
    assert_refused!(payer.finalize_close(id).await, "ChannelIsClosed");
    Ok(())
}

#[tokio::test]
async fn receipt_roots_for_the_current_epoch_once() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let p = chain.funded(1, 1_000).await?;
    let root = B256::repeat_byte(7);
    let e = chain.next_epoch().await?;
    assert_refused!(p.post_root(e, root, 10).await, "InsufficientStake");
    p.stake(100).await?;
    chain.at_epoch(e + 2).await?;
    let e = chain.next_epoch().await?;
    assert_refused!(p.post_root(e - 1, root, 10).await, "WrongEpoch");
    assert_refused!(p.post_root(e + 1, root, 10).await, "WrongEpoch");
    assert_refused!(p.post_root(e, root, 0).await, "BadReceiptCount");
    assert_refused!(p.post_root(e, root, (1 << 20) + 1).await, "BadReceiptCount");
    p.post_root(e, root, 10).await?;
    let r = p.root(p.address(), e).await?.expect("posted");
    assert_eq!((r.root, r.receipts, r.full), (root, 10, false));
    assert_refused!(
        p.post_root(e, B256::repeat_byte(8), 10).await,
        "RootAlreadyPosted"
    );
    assert_refused!(p.post_late_root(e, root, 10).await, "RootAlreadyPosted");
    Ok(())
}

#[tokio::test]
async fn late_root_holds_unbonding_stake() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let p = chain.funded(1, 1_000).await?;
    p.stake(300).await?;
    let e = chain.next_epoch().await?;
    p.unstake(100).await?;
    assert_eq!(p.account(p.address()).await?.release_epoch, e + 8);
    chain.at_epoch(e + 3).await?;
    let late = chain.next_epoch().await?;
    p.post_late_root(late, B256::repeat_byte(1), 4).await?;
    assert!(p.root(p.address(), late).await?.expect("posted").full);
    // Every leaf of the late root is audited: the unbonding stake stays until its verdicts.
    assert_eq!(p.account(p.address()).await?.release_epoch, late + 8);
    chain.at_epoch(e + 8).await?;
    assert_refused!(p.withdraw().await, "StillUnbonding");
    chain.at_epoch(late + 8).await?;
    p.withdraw().await?;
    Ok(())
}

#[tokio::test]
async fn verifier_registration_and_deregistration() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let v = chain.funded(1, 1_000).await?;
    assert_refused!(v.register_verifier(99).await, "InsufficientStake");
    // Stake bonded earlier counts toward the minimum.
    v.stake(60).await?;
    v.register_verifier(40).await?;
    let a = v.account(v.address()).await?;
    assert!(a.verifier);
    assert_eq!(a.stake, 100);
    // Falling under the minimum ends the registration.
    v.unstake(1).await?;
    assert!(!v.account(v.address()).await?.verifier);
    Ok(())
}

#[tokio::test]
async fn network_key_binding_checked_by_peers_not_the_chain() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let a = chain.user(1).await?;
    let squatter = chain.user(2).await?;
    let reader = chain.user(3).await?;
    let key = agora_core::Keypair::from_seed([9; 32]);
    assert_refused!(
        a.bind_network_key_raw([0; 32], [1; 64]).await,
        "BadNetworkKeyBinding"
    );
    a.bind_network_key(&key).await?;
    assert_eq!(
        reader.verified_network_key(a.address()).await?,
        Some(key.account())
    );
    // Anyone can record someone else's key (the chain cannot check ed25519), but without the
    // key's signature over *its* address peers refuse the binding.
    squatter
        .bind_network_key_raw(*key.account().as_bytes(), [7; 64])
        .await?;
    assert_eq!(
        squatter.network_key(squatter.address()).await?,
        B256::from(*key.account().as_bytes())
    );
    assert_eq!(reader.verified_network_key(squatter.address()).await?, None);
    // Replaying a's genuine binding signature for the squatter's address fails too.
    let d = &chain.deployment;
    let sig = agora_evm::sign_key_binding(&key, d.chain_id, d.settlement, a.address());
    squatter
        .bind_network_key_raw(*key.account().as_bytes(), *sig.as_bytes())
        .await?;
    assert_eq!(reader.verified_network_key(squatter.address()).await?, None);
    assert_eq!(reader.verified_network_key(reader.address()).await?, None);
    Ok(())
}
