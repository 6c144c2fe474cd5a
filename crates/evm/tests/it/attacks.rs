use crate::common::{params, CHAIN_ID};
use crate::{assert_refused, chain_or_skip};
use agora_evm::{deploy, Deployment, EvmError, Params, SettlementClient};
use alloy::primitives::{Address, U256};

#[tokio::test]
async fn voucher_replayed_on_another_channel_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.user(2).await?;
    let (a, _) = payer.open_channel(prov.address(), 100, 5).await?;
    let (b, _) = payer.open_channel(prov.address(), 500, 5).await?;
    let sig = payer.sign_voucher(a, 100)?;
    assert_refused!(prov.claim(b, 100, &sig).await, "ForgedVoucher");
    prov.claim(a, 100, &sig).await?;
    Ok(())
}

#[tokio::test]
async fn voucher_replayed_on_another_contract_or_chain_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    // A second deployment on the same chain, with a channel of the same payer and provider.
    let other = deploy(chain.anvil.url(), chain.key(0), params()).await?;
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.user(2).await?;
    let payer2 = SettlementClient::connect(chain.anvil.url(), chain.key(1), other.clone()).await?;
    let prov2 = SettlementClient::connect(chain.anvil.url(), chain.key(2), other.clone()).await?;
    let admin2 = SettlementClient::connect(chain.anvil.url(), chain.key(0), other).await?;
    admin2.mint(payer.address(), 1_000).await?;
    let (id, _) = payer.open_channel(prov.address(), 100, 5).await?;
    let (id2, _) = payer2.open_channel(prov2.address(), 100, 5).await?;
    // Channel ids bind the contract too: the same payer's first channel differs per contract.
    assert_ne!(id, id2);
    // The payer's signature over (id2, 100) in the first contract's domain does not pay on
    // the second contract.
    let first = SignerOnly::new(chain.key(1), chain.deployment.clone());
    let sig = first.sign(id2, 100)?;
    assert_refused!(prov2.claim(id2, 100, &sig).await, "ForgedVoucher");
    let sig = payer2.sign_voucher(id2, 100)?;
    prov2.claim(id2, 100, &sig).await?;
    // Signed for another chain id (same contract address): refused.
    let elsewhere = Deployment {
        chain_id: CHAIN_ID + 1,
        ..chain.deployment.clone()
    };
    let payer_elsewhere = SignerOnly::new(chain.key(1), elsewhere);
    let sig = payer_elsewhere.sign(id, 100)?;
    assert_refused!(prov.claim(id, 100, &sig).await, "ForgedVoucher");
    Ok(())
}

/// Signs vouchers for a deployment without talking to its chain.
struct SignerOnly {
    key: alloy::signers::local::PrivateKeySigner,
    deployment: Deployment,
}

impl SignerOnly {
    fn new(key: alloy::signers::local::PrivateKeySigner, deployment: Deployment) -> Self {
        SignerOnly { key, deployment }
    }
    fn sign(&self, channel: alloy::primitives::B256, cumulative: u128) -> anyhow::Result<[u8; 65]> {
        use alloy::signers::SignerSync;
        use alloy::sol_types::{eip712_domain, SolStruct};
        let domain = eip712_domain! {
            name: "Agora",
            version: "1",
            chain_id: self.deployment.chain_id,
            verifying_contract: self.deployment.settlement,
        };
        let v = agora_evm::bindings::Voucher {
            channel,
            cumulative: U256::from(cumulative),
        };
        Ok(self
            .key
            .sign_hash_sync(&v.eip712_signing_hash(&domain))?
            .as_bytes())
    }
}

#[tokio::test]
async fn claim_above_deposit_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.user(2).await?;
    let (id, _) = payer.open_channel(prov.address(), 100, 5).await?;
    let sig = payer.sign_voucher(id, 101)?;
    assert_refused!(prov.claim(id, 101, &sig).await, "OverClaim");
    // A top-up makes the same voucher good: the deposit, not the voucher, is the cap.
    payer.top_up(id, 1).await?;
    prov.claim(id, 101, &sig).await?;
    assert_eq!(prov.token_balance(prov.address()).await?, 101);
    Ok(())
}

#[tokio::test]
async fn voucher_not_signed_by_the_payer_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.user(2).await?;
    let (id, _) = payer.open_channel(prov.address(), 100, 5).await?;
    let forged = prov.sign_voucher(id, 100)?;
    assert_refused!(prov.claim(id, 100, &forged).await, "ForgedVoucher");
    assert_refused!(prov.claim(id, 100, &[0u8; 65]).await, "ForgedVoucher");
    assert_refused!(prov.claim(id, 100, &[1u8; 12]).await, "ForgedVoucher");
    // The malleable twin of a good signature (s -> n - s, v flipped) is refused too.
    let good = payer.sign_voucher(id, 100)?;
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )?;
    let s = U256::from_be_slice(&good[32..64]);
    let mut twin = good;
    twin[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    twin[64] = if good[64] == 27 { 28 } else { 27 };
    assert_refused!(prov.claim(id, 100, &twin).await, "ForgedVoucher");
    prov.claim(id, 100, &good).await?;
    Ok(())
}

#[tokio::test]
async fn claim_by_someone_else_than_the_provider_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.user(2).await?;
    let thief = chain.user(3).await?;
    let (id, _) = payer.open_channel(prov.address(), 100, 5).await?;
    let sig = payer.sign_voucher(id, 100)?;
    assert_refused!(thief.claim(id, 100, &sig).await, "NotChannelProvider");
    assert_eq!(thief.token_balance(thief.address()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn close_before_timeout_or_by_another_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.user(2).await?;
    let e = chain.next_epoch().await?;
    // A timeout within the claim window would let the payer run before the provider claims.
    assert_refused!(
        payer.open_channel(prov.address(), 100, 2).await,
        "ChannelTimeoutTooShort"
    );
    let (id, _) = payer.open_channel(prov.address(), 100, 3).await?;
    assert_refused!(payer.request_close(id).await, "ChannelNotExpired");
    chain.at_epoch(e + 2).await?;
    assert_refused!(payer.request_close(id).await, "ChannelNotExpired");
    assert_refused!(payer.finalize_close(id).await, "ChannelNotDue");
    chain.at_epoch(e + 3).await?;
    assert_refused!(prov.request_close(id).await, "NotChannelPayer");
    payer.request_close(id).await?;
    assert_refused!(payer.request_close(id).await, "ChannelIsClosed");
    Ok(())
}

#[tokio::test]
async fn provider_unstaking_before_its_audit_window_ends_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let p = chain.funded(1, 1_000).await?;
    p.stake(100).await?;
    let e = chain.next_epoch().await?;
    p.post_root(e, alloy::primitives::B256::repeat_byte(3), 50)
        .await?;
    p.unstake(100).await?;
    // The root's last verdict can land in epoch e + 3 + w + x = e + 6 (ledger rules).
    let d = &chain.deployment.params;
    let last_verdict = e + 3 + d.audit_window_epochs + d.escalation_epochs;
    for epoch in e..=last_verdict {
        chain.at_epoch(epoch).await?;
        assert_refused!(p.withdraw().await, "StillUnbonding");
    }
    assert_eq!(p.token_balance(p.address()).await?, 900);
    Ok(())
}

#[tokio::test]
async fn deploy_with_unbonding_shorter_than_verdicts_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let short = Params {
        unbonding_epochs: 5, // needs 4 + w + x = 7
        ..params()
    };
    let r = deploy(chain.anvil.url(), chain.key(0), short).await;
    assert_refused!(r.map(|d| d.settlement), "UnbondingTooShort");
    let no_escalation = Params {
        escalation_epochs: 0,
        ..params()
    };
    let r = deploy(chain.anvil.url(), chain.key(0), no_escalation).await;
    assert_refused!(r.map(|d| d.settlement), "BadParams");
    let fee = Params {
        audit_fee_bps: 10_001,
        ..params()
    };
    let r = deploy(chain.anvil.url(), chain.key(0), fee).await;
    assert_refused!(r.map(|d| d.settlement), "BadParams");
    Ok(())
}

#[tokio::test]
async fn channel_to_self_or_zero_refused() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    assert_refused!(
        payer.open_channel(payer.address(), 100, 5).await,
        "BadChannelParty"
    );
    assert_refused!(
        payer.open_channel(Address::ZERO, 100, 5).await,
        "BadChannelParty"
    );
    assert_refused!(payer.stake(0).await, "ZeroAmount");
    Ok(())
}

#[tokio::test]
async fn only_the_deployer_mints() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let user = chain.user(1).await?;
    match user.mint(user.address(), 1).await {
        Err(EvmError::Refused(agora_evm::Refusal::Token(e))) => {
            assert!(format!("{e:?}").starts_with("NotMinter"), "{e:?}")
        }
        other => panic!("expected NotMinter, got {other:?}"),
    }
    Ok(())
}

mod hostile {
    alloy::sol!(
        #[sol(rpc)]
        ReentrantToken,
        "../../contracts/out/test/ReentrantToken.json"
    );
}

/// A token that calls back into the settlement contract from inside the transfer that pays a
/// channel's refund: the reentrant `finalizeClose` is refused by the lock, and the refund is
/// paid once.
#[tokio::test]
async fn reentrant_token_callback_refused() -> anyhow::Result<()> {
    use agora_evm::bindings::AgoraSettlement;
    use alloy::primitives::Bytes;
    use alloy::sol_types::{SolCall, SolError};
    let Some(bin) = agora_evm::anvil::find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = agora_evm::anvil::Anvil::start(&bin, CHAIN_ID)?;
    let admin = SettlementClient::connect_bare(anvil.url(), anvil.keys()[0].clone()).await?;
    let token = admin
        .submit(
            alloy::primitives::TxKind::Create,
            hostile::ReentrantToken::BYTECODE.clone(),
            U256::ZERO,
        )
        .await?
        .address;
    let d =
        agora_evm::deploy_with_token(anvil.url(), anvil.keys()[0].clone(), token, params()).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    let payer = SettlementClient::connect(anvil.url(), anvil.keys()[1].clone(), d.clone()).await?;
    let prov = SettlementClient::connect(anvil.url(), anvil.keys()[2].clone(), d.clone()).await?;
    admin.mint(payer.address(), 1_000).await?;
    let e = {
        use alloy::providers::Provider;
        let latest = admin.provider().get_block_number().await?;
        (latest + 1 - d.start_block) / d.params.epoch_blocks
    };
    let (id, _) = payer.open_channel(prov.address(), 300, 3).await?;
    let sig = payer.sign_voucher(id, 100)?;
    prov.claim(id, 100, &sig).await?;
    admin.mine_to_epoch(e + 3).await?;
    payer.request_close(id).await?;
    admin.mine_to_epoch(e + 5).await?;

    // Arm: the refund's transfer calls finalizeClose(id) again from inside the token.
    let again: Bytes = AgoraSettlement::finalizeCloseCall { id }
        .abi_encode()
        .into();
    let arm = hostile::ReentrantToken::armCall {
        target_: d.settlement,
        payload_: again,
    };
    admin
        .submit(
            alloy::primitives::TxKind::Call(token),
            arm.abi_encode().into(),
            U256::ZERO,
        )
        .await?;
    payer.finalize_close(id).await?;

    let t = hostile::ReentrantToken::new(token, admin.provider());
    assert!(t.attempted().call().await?, "the callback ran");
    assert!(!t.reentered().call().await?, "the reentrant call must fail");
    let result = t.reentryResult().call().await?;
    assert_eq!(
        result.as_ref(),
        AgoraSettlement::Reentered::SELECTOR.as_slice(),
        "refused by the reentrancy lock"
    );
    assert_eq!(payer.token_balance(payer.address()).await?, 700 + 200);
    assert_eq!(payer.token_balance(d.settlement).await?, 0);
    Ok(())
}
