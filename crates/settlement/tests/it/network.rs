//! `NetworkSettlement`, the services' view of settlement, on a real ledger node and on a real
//! Anvil: network keys to staked accounts (and the attacks on the EVM key binding), vouchers
//! of each settlement's own kind (and vouchers made for another chain or contract), events.

use crate::{ledger, CHAIN};
use agora_core::{Amount, Hash32, Keypair};
use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::{deploy, sign_key_binding, Params as EvmParams, SettlementClient};
use agora_ledger::client::Client;
use agora_ledger::Params;
use agora_settlement::evm::EvmSettlement;
use agora_settlement::ledger::LedgerSettlement;
use agora_settlement::network::{
    voucher_is_payers, NetworkSettlement, Party, SettlementEvent, SettlementKind, VoucherSignature,
};
use agora_settlement::Settlement;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_network_keys_are_accounts_and_vouchers_are_ed25519() -> anyhow::Result<()> {
    let keys: Vec<Keypair> = (0..4).map(|i| Keypair::from_seed([i + 31; 32])).collect();
    let node = ledger(&keys, Params::default()).await?;
    let client = Client::new(&node.url)?;
    let seq = LedgerSettlement::new(client.clone(), keys[0].clone(), CHAIN);
    let payer = LedgerSettlement::new(client.clone(), keys[1].clone(), CHAIN);
    let prov = LedgerSettlement::new(client.clone(), keys[2].clone(), CHAIN);
    let net: &dyn NetworkSettlement = &payer;
    assert_eq!(net.kind(), SettlementKind::Ledger);
    assert_eq!(net.network_chain_id(), CHAIN);

    // Stake is read for the key itself; an unknown key has no account.
    prov.stake(500).await?;
    assert_eq!(
        net.stake_of_key(keys[2].account()).await?,
        Some(Amount::new(500))
    );
    assert_eq!(
        net.stake_of_key(keys[1].account()).await?,
        Some(Amount::ZERO)
    );
    let ghost = Keypair::from_seed([99; 32]).account();
    assert_eq!(net.stake_of_key(ghost).await?, None);

    // The payer's voucher is its ed25519 signature; the provider's own is not the payer's;
    // an EIP-712 signature is not a ledger voucher at all; another amount or chain fails.
    let ch = payer.open_channel(prov.account(), 300, 3).await?;
    let parties = net.channel_parties(ch).await?.expect("the channel exists");
    assert_eq!(parties.payer, Party::Key(keys[1].account()));
    assert_eq!(parties.provider, Party::Key(keys[2].account()));
    assert_eq!(parties.deposit, Amount::new(300));
    let v = net.sign_voucher_for(ch, Amount::new(100))?;
    assert!(voucher_is_payers(
        net,
        ch,
        Amount::new(100),
        &v,
        parties.payer
    ));
    assert!(!voucher_is_payers(
        net,
        ch,
        Amount::new(101),
        &v,
        parties.payer
    ));
    let forged = prov.sign_voucher_for(ch, Amount::new(100))?;
    assert!(!voucher_is_payers(
        net,
        ch,
        Amount::new(100),
        &forged,
        parties.payer
    ));
    assert!(net
        .voucher_signer(ch, Amount::new(100), &VoucherSignature::Eip712([7; 65]))
        .is_none());
    let other_chain = LedgerSettlement::new(client.clone(), keys[1].clone(), CHAIN + 1);
    let elsewhere = other_chain.sign_voucher_for(ch, Amount::new(100))?;
    assert!(!voucher_is_payers(
        net,
        ch,
        Amount::new(100),
        &elsewhere,
        parties.payer
    ));

    // Events: the epoch and the root, in the ledger's order, and the cursor moves on.
    let e = seq.epoch().await?;
    seq.advance_to_epoch(e + 1).await?;
    prov.post_root(e + 1, [5; 32], 3, false).await?;
    let mut from = 0;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let got = net.events_from(from, Duration::from_millis(200)).await?;
        from = got.next;
        seen.extend(got.events);
        if seen
            .iter()
            .any(|e| matches!(e, SettlementEvent::ReceiptRootPosted { .. }))
        {
            break;
        }
    }
    let epoch_at = seen
        .iter()
        .position(|x| *x == SettlementEvent::EpochAdvanced { epoch: e + 1 })
        .expect("the epoch advanced");
    let root_at = seen
        .iter()
        .position(|x| {
            *x == SettlementEvent::ReceiptRootPosted {
                provider: keys[2].account(),
                epoch: e + 1,
                root: Hash32::from_bytes([5; 32]),
                receipts: 3,
            }
        })
        .expect("the root was posted");
    assert!(epoch_at < root_at);
    let again = net.events_from(from, Duration::from_millis(50)).await?;
    assert!(again.events.is_empty(), "{:?}", again.events);
    Ok(())
}

struct Chain {
    anvil: Anvil,
    d: agora_evm::Deployment,
    admin: SettlementClient,
}

async fn chain(bin: &std::path::Path, chain_id: u64) -> anyhow::Result<Chain> {
    let anvil = Anvil::start(bin, chain_id)?;
    let d = deploy(anvil.url(), anvil.keys()[0].clone(), EvmParams::devnet(5)).await?;
    let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone()).await?;
    Ok(Chain { anvil, d, admin })
}

impl Chain {
    async fn account(&self, i: usize) -> anyhow::Result<EvmSettlement> {
        let k = self.anvil.keys()[i].clone();
        self.admin.mint(k.address(), 10_000).await?;
        Ok(EvmSettlement::new(
            SettlementClient::connect(self.anvil.url(), k, self.d.clone()).await?,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evm_offer_keys_stand_only_for_their_verified_staked_account() -> anyhow::Result<()> {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let c = chain(&bin, 31_337).await?;
    let (prov, thief, reader) = (
        c.account(1).await?,
        c.account(2).await?,
        c.account(3).await?,
    );
    let net: &dyn NetworkSettlement = &reader;
    assert_eq!(net.kind(), SettlementKind::Evm);
    let key = Keypair::from_seed([41; 32]);

    // Nobody bound the key: nobody stands behind offers signed by it.
    assert_eq!(net.stake_of_key(key.account()).await?, None);

    // The thief records the key with a signature that is not the key's binding of the
    // thief's address: the chain takes it, peers do not.
    thief
        .client()
        .bind_network_key_raw(*key.account().as_bytes(), [9; 64])
        .await?;
    thief.stake(5_000).await?;
    assert_eq!(net.stake_of_key(key.account()).await?, None);

    // The thief records the key 70 times more from its one account, before its owner
    // binds it, to push the genuine binding out of what peers look at: each account is
    // checked once.
    for _ in 0..70 {
        thief
            .client()
            .bind_network_key_raw(*key.account().as_bytes(), [8; 64])
            .await?;
    }
    assert_eq!(net.stake_of_key(key.account()).await?, None);

    // The provider binds it for real, unstaked: the key stands for an account with no stake
    // (the broker's minimum refuses it).
    prov.client().bind_network_key(&key).await?;
    assert_eq!(net.stake_of_key(key.account()).await?, Some(Amount::ZERO));
    prov.stake(300).await?;
    assert_eq!(
        net.stake_of_key(key.account()).await?,
        Some(Amount::new(300))
    );

    // The thief replays the provider's genuine binding signature for its own address: it
    // binds the provider's address, not the thief's, so it still does not verify.
    let genuine = sign_key_binding(&key, c.d.chain_id, c.d.settlement, prov.account());
    thief
        .client()
        .bind_network_key_raw(*key.account().as_bytes(), *genuine.as_bytes())
        .await?;
    assert_eq!(
        net.stake_of_key(key.account()).await?,
        Some(Amount::new(300)),
        "the thief's stake must never stand behind the provider's key"
    );

    // The key's owner binds it to a second account too: which account it is paid through is
    // ambiguous, so it stands for nobody.
    let second = c.account(4).await?;
    second.client().bind_network_key(&key).await?;
    assert_eq!(net.stake_of_key(key.account()).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evm_vouchers_for_another_chain_or_contract_pay_nothing() -> anyhow::Result<()> {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let c = chain(&bin, 31_337).await?;
    let (payer, prov) = (c.account(1).await?, c.account(2).await?);
    let net: &dyn NetworkSettlement = &prov;
    let ch = payer.open_channel(prov.account(), 1_000, 3).await?;
    let ch32 = Hash32::from_bytes(ch.0);
    let parties = net
        .channel_parties(ch32)
        .await?
        .expect("the channel exists");
    assert_eq!(parties.payer, Party::Address(payer.account().0 .0));
    assert_eq!(parties.provider, Party::Address(prov.account().0 .0));
    let amount = Amount::new(400);

    // The payer's own voucher on this chain and contract is the payer's, and the contract
    // pays it.
    let good = payer.sign_voucher_for(ch32, amount)?;
    assert!(voucher_is_payers(net, ch32, amount, &good, parties.payer));
    assert!(!voucher_is_payers(
        net,
        ch32,
        Amount::new(401),
        &good,
        parties.payer
    ));

    // The same payer key, the same channel id and amount, for another contract on this chain.
    let other = deploy(
        c.anvil.url(),
        c.anvil.keys()[0].clone(),
        EvmParams::devnet(5),
    )
    .await?;
    assert_ne!(other.settlement, c.d.settlement);
    let payer_there = EvmSettlement::new(
        SettlementClient::connect(c.anvil.url(), c.anvil.keys()[1].clone(), other).await?,
    );
    let other_contract = payer_there.sign_voucher_for(ch32, amount)?;
    assert!(!voucher_is_payers(
        net,
        ch32,
        amount,
        &other_contract,
        parties.payer
    ));

    // ... and for the same contract address on another chain (Anvil's keys and nonces make
    // the address equal: only the chain id differs).
    let c2 = chain(&bin, 31_338).await?;
    assert_eq!(c2.d.settlement, c.d.settlement);
    let payer_on_c2 = EvmSettlement::new(
        SettlementClient::connect(c2.anvil.url(), c2.anvil.keys()[1].clone(), c2.d.clone()).await?,
    );
    let other_chain = payer_on_c2.sign_voucher_for(ch32, amount)?;
    assert!(!voucher_is_payers(
        net,
        ch32,
        amount,
        &other_chain,
        parties.payer
    ));

    // The malleable twin (s -> n - s, v flipped) of the good voucher is refused, as the
    // contract refuses it; a ledger-kind signature is no EVM voucher.
    let VoucherSignature::Eip712(sig) = good.clone() else {
        panic!("an EVM voucher is EIP-712");
    };
    let s = alloy::primitives::Signature::from_raw(&sig)?;
    let n = alloy::primitives::U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )?;
    let twin = alloy::primitives::Signature::new(s.r(), n - s.s(), !s.v());
    let twin = VoucherSignature::Eip712(twin.as_bytes());
    assert!(!voucher_is_payers(net, ch32, amount, &twin, parties.payer));
    let ed = VoucherSignature::Ed25519 {
        payer: Keypair::from_seed([1; 32]).account(),
        sig: Keypair::from_seed([1; 32]).sign(agora_wire::VOUCHER_DOMAIN, &1u8),
    };
    assert!(net.voucher_signer(ch32, amount, &ed).is_none());

    // What the contract does with each: the foreign ones are forgeries, the good one pays.
    for bad in [&other_contract, &other_chain] {
        let VoucherSignature::Eip712(b) = bad else {
            panic!("EIP-712")
        };
        let r = prov.claim(ch, amount.units(), b).await;
        assert_eq!(
            r.err().and_then(|e| e.refusal().cloned()),
            Some(agora_settlement::Refusal::ForgedVoucher)
        );
    }
    prov.claim(ch, amount.units(), &sig).await?;
    assert_eq!(prov.channel(ch).await?.map(|c| c.claimed), Some(400));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evm_events_name_providers_by_their_network_keys() -> anyhow::Result<()> {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let c = chain(&bin, 31_337).await?;
    let (prov, unbound, reader) = (
        c.account(1).await?,
        c.account(2).await?,
        c.account(3).await?,
    );
    let key = Keypair::from_seed([51; 32]);
    prov.client().bind_network_key(&key).await?;
    prov.stake(500).await?;
    unbound.stake(500).await?;
    let net: &dyn NetworkSettlement = &reader;
    let start = c.d.start_block;
    let e = prov.epoch().await?;
    c.admin.mine_to_epoch(e + 1).await?;
    prov.post_root(e + 1, [6; 32], 4, false).await?;
    // An account without a network key posts too: no service can name it, so no event.
    unbound.post_root(e + 1, [7; 32], 4, false).await?;
    // Everything is mined already: read until the cursor stops moving.
    let mut from = start;
    let mut seen = Vec::new();
    loop {
        let got = net.events_from(from, Duration::from_millis(100)).await?;
        if got.next == from {
            break;
        }
        from = got.next;
        seen.extend(got.events);
    }
    let roots: Vec<_> = seen
        .iter()
        .filter(|e| matches!(e, SettlementEvent::ReceiptRootPosted { .. }))
        .collect();
    assert_eq!(
        roots,
        vec![&SettlementEvent::ReceiptRootPosted {
            provider: key.account(),
            epoch: e + 1,
            root: Hash32::from_bytes([6; 32]),
            receipts: 4,
        }]
    );
    let epochs: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            SettlementEvent::EpochAdvanced { epoch } => Some(*epoch),
            _ => None,
        })
        .collect();
    assert_eq!(
        epochs,
        (1..=e + 1).collect::<Vec<_>>(),
        "each epoch once, in order"
    );
    Ok(())
}

/// The money path on both settlements through the services' interface: a channel opened to a
/// network key, a voucher of the settlement's own kind claimed (the other kind refused before
/// anything is sent), and a root of real signed receipts in the settlement's own tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_claims_and_roots_through_the_services_interface() -> anyhow::Result<()> {
    use agora_settlement::Refusal;
    let refusal = |r: Result<(), agora_settlement::SettlementError>| {
        r.err().and_then(|e| e.refusal().cloned())
    };
    // The ledger.
    let keys: Vec<Keypair> = (0..3).map(|i| Keypair::from_seed([i + 71; 32])).collect();
    let node = ledger(&keys, Params::default()).await?;
    let client = Client::new(&node.url)?;
    let payer = LedgerSettlement::new(client.clone(), keys[1].clone(), CHAIN);
    let prov = LedgerSettlement::new(client.clone(), keys[2].clone(), CHAIN);
    prov.stake(500).await?;
    let ch = payer
        .open_channel_to(keys[2].account(), Amount::new(300), 3)
        .await?;
    let v = payer.sign_voucher_for(ch, Amount::new(120))?;
    assert_eq!(
        refusal(
            prov.claim_voucher(ch, Amount::new(120), VoucherSignature::Eip712([1; 65]))
                .await
        ),
        Some(Refusal::ForgedVoucher)
    );
    prov.claim_voucher(ch, Amount::new(120), v).await?;
    assert_eq!(
        NetworkSettlement::channel_parties(&prov, ch)
            .await?
            .map(|c| c.claimed),
        Some(Amount::new(120))
    );
    let e = prov.current_epoch().await?;
    let receipts: Vec<_> = (0..3)
        .map(|i| crate::signed_receipt(CHAIN, &keys[2], &keys[1], *ch.as_bytes(), e, 40, i))
        .collect();
    let root = prov.receipt_root_of(&receipts);
    let hashes: Vec<Hash32> = receipts.iter().map(|r| r.hash()).collect();
    assert_eq!(
        root,
        agora_core::merkle::root(&hashes),
        "the ledger's BLAKE3 tree"
    );
    prov.post_receipt_root(e, root, 3, false).await?;
    let (mut from, mut posted) = (0, None);
    while posted.is_none() {
        let got = prov.events_from(from, Duration::from_millis(200)).await?;
        anyhow::ensure!(got.next > from, "the root never showed");
        from = got.next;
        posted = got.events.into_iter().find_map(|ev| match ev {
            SettlementEvent::ReceiptRootPosted { provider, root, .. }
                if provider == keys[2].account() =>
            {
                Some(root)
            }
            _ => None,
        });
    }
    assert_eq!(posted, Some(root));

    // An EVM chain.
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP (EVM half): anvil not found (run scripts/install-evm-tools)");
        return Ok(());
    };
    let c = chain(&bin, 31_337).await?;
    let (payer, prov, thief) = (
        c.account(1).await?,
        c.account(2).await?,
        c.account(3).await?,
    );
    let key = Keypair::from_seed([72; 32]);
    let stolen = Keypair::from_seed([73; 32]);
    prov.client().bind_network_key(&key).await?;
    prov.stake(500).await?;
    // A key the thief recorded without its owner's binding: no channel can be opened to it.
    thief
        .client()
        .bind_network_key_raw(*stolen.account().as_bytes(), [5; 64])
        .await?;
    assert_eq!(
        payer
            .open_channel_to(stolen.account(), Amount::new(300), 3)
            .await
            .err()
            .and_then(|e| e.refusal().cloned()),
        Some(Refusal::Other {
            code: "UnknownAccount".into()
        })
    );
    let ch = payer
        .open_channel_to(key.account(), Amount::new(300), 3)
        .await?;
    let parties = NetworkSettlement::channel_parties(&prov, ch)
        .await?
        .expect("the channel exists");
    assert_eq!(parties.provider, Party::Address(prov.account().0 .0));
    let ed = LedgerSettlement::new(client.clone(), keys[1].clone(), CHAIN)
        .sign_voucher_for(ch, Amount::new(120))?;
    assert_eq!(
        refusal(prov.claim_voucher(ch, Amount::new(120), ed).await),
        Some(Refusal::ForgedVoucher)
    );
    let v = payer.sign_voucher_for(ch, Amount::new(120))?;
    prov.claim_voucher(ch, Amount::new(120), v).await?;
    assert_eq!(
        NetworkSettlement::channel_parties(&prov, ch)
            .await?
            .map(|c| c.claimed),
        Some(Amount::new(120))
    );
    let e = prov.current_epoch().await?;
    let receipts: Vec<_> = (0..3)
        .map(|i| crate::signed_receipt(31_337, &key, &keys[1], *ch.as_bytes(), e, 40, i))
        .collect();
    let root = prov.receipt_root_of(&receipts);
    let leaves: Vec<_> = receipts
        .iter()
        .map(agora_evm::receipts::ReceiptLeaf::of)
        .collect();
    assert_eq!(
        root.as_bytes(),
        &agora_evm::receipts::receipt_root(&leaves).0,
        "the chain's keccak tree of receipt leaves"
    );
    prov.post_receipt_root(e, root, 3, false).await?;
    assert_eq!(
        prov.client()
            .root(prov.account(), e)
            .await?
            .map(|r| r.root.0),
        Some(*root.as_bytes())
    );
    Ok(())
}
