//! The broker pays a provider with EIP-712 vouchers on the Agora contracts of a real Anvil,
//! through the same channel books and the same provider `Payments` as on the ledger: an API
//! key's account (derived from its seed, its key bound on chain) opens a channel to a
//! provider key bound on chain, signs vouchers for two answers, and the provider keeps them
//! and claims them on chain with token balances exact. The attacks first: a ledger voucher
//! offered on a chain, a voucher signed by someone other than the channel's payer, and a
//! voucher for another channel are refused.

use agora_broker::channels::{opener_for, Channels};
use agora_core::{Amount, Hash32, Keypair};
use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::{deploy, Params as EvmParams, SettlementClient};
use agora_net::protocol::{Receipt, Sampling, SignedReceipt, SignedVoucher, VoucherSignature};
use agora_provider::Payments;
use agora_settlement::open::{evm_signer_for, Opened, SettlementTarget};
use agora_settlement::{Refusal, Settlement};
use agora_wire::Voucher;
use alloy::primitives::{Address, U256};
use alloy::providers::Provider;

const ONE_ETH: u128 = 1_000_000_000_000_000_000;

async fn nonce_of(admin: &SettlementClient, who: Address) -> anyhow::Result<u64> {
    Ok(admin.provider().get_transaction_count(who).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_pays_a_provider_with_eip712_vouchers_on_anvil() -> anyhow::Result<()> {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = Anvil::start(&bin, 31_337)?;
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), EvmParams::devnet(5)).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    let target = SettlementTarget::Evm {
        rpc: anvil.url().to_string(),
        deployment: d.clone(),
    };
    // An API key's custodial account and a provider, each one ed25519 seed; their EVM
    // accounts are derived from it and funded with gas (and the payer with tokens).
    let (payer, provider, stranger) = (
        Keypair::from_seed([3; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([4; 32]),
    );
    let payer_addr = evm_signer_for(&payer.seed()).address();
    let prov_addr = evm_signer_for(&provider.seed()).address();
    for a in [payer_addr, prov_addr] {
        admin.send_native(a, U256::from(ONE_ETH)).await?;
    }
    admin.mint(payer_addr, 1_000_000).await?;
    let prov = Opened::open(&target, &provider).await?;
    let Opened::Evm(prov_evm) = &prov else {
        anyhow::bail!("an EVM settlement");
    };
    prov_evm.client().bind_network_key(&provider).await?;
    let prov_net = prov.network();

    // The broker side: the payer's account opens (binding its key) and funds a channel to
    // the provider's key, for the least deposit.
    let channels = Channels::new(opener_for(target.clone()), Amount::new(1_000));
    let r1 = channels
        .reserve(&payer, provider.account(), Amount::new(100))
        .await?;
    let ch = r1.channel;
    let parties = prov_net.channel_parties(ch).await?.expect("the channel");
    assert_eq!(
        parties.payer,
        agora_settlement::network::Party::Address(payer_addr.0 .0)
    );
    assert_eq!(
        parties.provider,
        agora_settlement::network::Party::Address(prov_addr.0 .0)
    );
    assert_eq!(parties.deposit, Amount::new(1_000));
    assert_eq!(admin.token_balance(payer_addr).await?, 1_000_000 - 1_000);

    // The provider admits the request: the request's key stands for the channel's payer. A
    // stranger's key naming the payer's channel first is refused (it would run up answers the
    // payer never vouches for and block the channel).
    let payments = Payments::new(provider.account(), prov_net.clone());
    assert!(payments
        .check(ch, stranger.account(), Amount::new(1))
        .await
        .is_err());
    let held = payments
        .check(ch, payer.account(), Amount::new(100))
        .await?;
    payments.served(&ch, 40_000_000);
    drop(held);
    let s1 = channels
        .settle(&payer, provider.account(), r1, 40_000_000)
        .await;
    let v1 = s1.voucher.expect("a voucher");
    assert!(matches!(v1.sig, VoucherSignature::Eip712(_)), "{v1:?}");
    assert_eq!(v1.voucher.cumulative, Amount::new(40));

    // Attack 1: a ledger (ed25519) voucher by the payer's key, for more, pays nothing on a
    // chain: `Payments` refuses it, and a claim of it is refused before anything is sent.
    let ed = SignedVoucher::new(
        Voucher {
            chain_id: d.chain_id,
            channel: ch,
            cumulative: Amount::new(900),
        },
        &payer,
    );
    assert!(payments.accept_voucher(ed.clone()).is_err());
    let sent_before = nonce_of(&admin, prov_addr).await?;
    let claim = prov_net
        .claim_voucher(ch, Amount::new(900), ed.sig.clone())
        .await;
    assert!(
        matches!(
            claim.as_ref().err().and_then(|e| e.refusal()),
            Some(Refusal::ForgedVoucher)
        ),
        "{claim:?}"
    );
    assert_eq!(
        nonce_of(&admin, prov_addr).await?,
        sent_before,
        "a claim was sent"
    );

    // Attack 2: an EIP-712 voucher signed by someone other than the channel's payer (the
    // stranger's own EVM account) is refused.
    let stranger_acct = Opened::open(&target, &stranger).await?.network();
    let forged = SignedVoucher {
        voucher: Voucher {
            chain_id: d.chain_id,
            channel: ch,
            cumulative: Amount::new(900),
        },
        sig: stranger_acct.sign_voucher_for(ch, Amount::new(900))?,
    };
    assert!(payments.accept_voucher(forged).is_err());

    // Attack 3: the payer's genuine signature for another channel, presented for this one,
    // and a voucher naming a channel this provider never served, are refused.
    let payer_acct = Opened::open(&target, &payer).await?.network();
    let other = Hash32::of(b"another channel");
    let moved = SignedVoucher {
        voucher: Voucher {
            chain_id: d.chain_id,
            channel: ch,
            cumulative: Amount::new(900),
        },
        sig: payer_acct.sign_voucher_for(other, Amount::new(900))?,
    };
    assert!(payments.accept_voucher(moved).is_err());
    let elsewhere = SignedVoucher {
        voucher: Voucher {
            chain_id: d.chain_id,
            channel: other,
            cumulative: Amount::new(900),
        },
        sig: payer_acct.sign_voucher_for(other, Amount::new(900))?,
    };
    assert!(payments.accept_voucher(elsewhere).is_err());

    // The genuine vouchers for two answers are kept.
    assert_eq!(payments.accept_voucher(v1)?, Amount::ZERO);
    let r2 = channels
        .reserve(&payer, provider.account(), Amount::new(100))
        .await?;
    assert_eq!(r2.channel, ch, "the channel is reused");
    let held = payments
        .check(ch, payer.account(), Amount::new(100))
        .await?;
    payments.served(&ch, 25_000_000);
    drop(held);
    let v2 = channels
        .settle(&payer, provider.account(), r2, 25_000_000)
        .await
        .voucher
        .expect("a voucher");
    assert_eq!(v2.voucher.cumulative, Amount::new(65));
    assert_eq!(payments.accept_voucher(v2)?, Amount::ZERO);

    // The provider claims them on chain: exactly what was served moves, from the escrow.
    let before = admin.token_balance(prov_addr).await?;
    let claimed = payments.claim_all(&*prov_net).await?;
    assert_eq!(claimed, Amount::new(65));
    assert_eq!(admin.token_balance(prov_addr).await?, before + 65);
    let after = prov_net.channel_parties(ch).await?.expect("the channel");
    assert_eq!(after.claimed, Amount::new(65));
    assert_eq!(after.deposit, Amount::new(1_000));
    assert_eq!(admin.token_balance(payer_addr).await?, 1_000_000 - 1_000);
    // Nothing more to claim.
    assert_eq!(payments.claim_all(&*prov_net).await?, Amount::ZERO);
    Ok(())
}

fn receipt_of(
    provider: &Keypair,
    payer: &Keypair,
    channel: Hash32,
    chain_id: u64,
) -> SignedReceipt {
    Receipt {
        chain_id,
        epoch: 0,
        request_id: [7; 16],
        provider: provider.account(),
        payer: payer.account(),
        channel,
        model: Hash32::of(b"model"),
        prompt_hash: Hash32::of(b"prompt"),
        output_hash: Hash32::of(b"output"),
        prompt_tokens: 3,
        resumed_tokens: 0,
        output_tokens: 4,
        sampling: Sampling::default(),
        fingerprint_hash: Hash32::of(b"fingerprint"),
        price_in: Amount::new(1),
        price_out: Amount::new(1),
        cost_micros: 7,
        started_ms: 1,
        finished_ms: 2,
    }
    .sign(provider)
}

/// On a chain the broker can challenge a receipt's omission only with the provider's EIP-712
/// signature over it, so it pays for no receipt without a valid one: a missing signature,
/// one by another account and one over another receipt are refused, and a challenge
/// without one is refused before anything is sent. The provider's own holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_chain_only_a_receipt_the_provider_signed_in_eip712_is_paid() -> anyhow::Result<()> {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let anvil = Anvil::start(&bin, 31_337)?;
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), EvmParams::devnet(5)).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    let target = SettlementTarget::Evm {
        rpc: anvil.url().to_string(),
        deployment: d.clone(),
    };
    let (payer, provider, stranger) = (
        Keypair::from_seed([3; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([4; 32]),
    );
    let payer_addr = evm_signer_for(&payer.seed()).address();
    for a in [payer_addr, evm_signer_for(&provider.seed()).address()] {
        admin.send_native(a, U256::from(ONE_ETH)).await?;
    }
    let Opened::Evm(prov) = Opened::open(&target, &provider).await? else {
        anyhow::bail!("an EVM settlement");
    };
    prov.client().bind_network_key(&provider).await?;
    let Opened::Evm(other) = Opened::open(&target, &stranger).await? else {
        anyhow::bail!("an EVM settlement");
    };
    let broker = Opened::open(&target, &payer).await?.broker();
    let receipt = receipt_of(&provider, &payer, Hash32::of(b"channel"), d.chain_id);
    let genuine = Settlement::serve_receipt(&*prov, &receipt)?.sig.to_vec();

    assert!(!broker.receipt_commitment_holds(&receipt, None).await?);
    assert!(
        !broker
            .receipt_commitment_holds(&receipt, Some(&[1; 64]))
            .await?
    );
    let by_other = Settlement::serve_receipt(&*other, &receipt)?.sig.to_vec();
    assert!(
        !broker
            .receipt_commitment_holds(&receipt, Some(&by_other))
            .await?
    );
    let mut another = receipt.receipt.clone();
    another.cost_micros += 1;
    let another = another.sign(&provider);
    assert!(
        !broker
            .receipt_commitment_holds(&another, Some(&genuine))
            .await?
    );
    assert!(
        broker
            .receipt_commitment_holds(&receipt, Some(&genuine))
            .await?
    );

    let sent_before = nonce_of(&admin, payer_addr).await?;
    let refused = broker.challenge_receipt(&receipt, None).await;
    assert!(
        matches!(
            refused.as_ref().err().and_then(|e| e.refusal()),
            Some(Refusal::ForgedReceipt)
        ),
        "{refused:?}"
    );
    assert_eq!(
        nonce_of(&admin, payer_addr).await?,
        sent_before,
        "a challenge was sent"
    );
    Ok(())
}
