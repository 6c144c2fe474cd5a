//! The provider on the Agora contracts (a real Anvil, the real contracts): it bonds its stake
//! and binds its network key at start, so brokers find its stake by its key; the root it
//! posts is the contract's keccak tree over its receipts' `ReceiptLeaf`s; the paths it hands
//! auditors verify under that root; the EIP-712 receipt signature it sends with each receipt
//! is what the contract takes for an inclusion challenge; and its duty loop answers that
//! challenge on chain.
//!
//! The attack: a provider whose root is in the ledger's BLAKE3 tree (what every provider
//! posted before the roots followed the settlement's tree) cannot answer an inclusion
//! challenge on chain (`BadReceiptProof`), and its auditor's path does not verify: it would be
//! slashed although honest.
//!
//! Skipped, with the reason printed, only where Anvil is not installed
//! (`scripts/install-evm-tools`).

use std::sync::Arc;
use std::time::Duration;

use agora_core::{Amount, Hash32, Keypair};
use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::receipts::{receipt_root, ReceiptLeaf};
use agora_evm::{deploy, Params, ReceiptCommitment, SettlementClient};
use agora_net::protocol::Material;
use agora_net::NetConfig;
use agora_provider::duties::{Duties, Duty};
use agora_provider::receipts::ReceiptLog;
use agora_provider::{Provider, ProviderConfig};
use agora_settlement::network::NetworkSettlement;
use agora_settlement::open::{evm_signer_for, Opened, SettlementTarget};
use agora_settlement::{Refusal, SettlementError};
use agora_wire::{Receipt, Sampling, SignedReceipt, MICROS_PER_UNIT};
use alloy::primitives::{B256, U256};

const TOKENS: u128 = 1_000_000;
const STAKE: u128 = 500;

fn tiny_model(dir: &std::path::Path) -> agora_model::LoadedModel {
    agora_train::trainer::write_tiny_model(dir).expect("tiny model");
    agora_model::load(dir, &agora_model::LoadOptions::default()).expect("load")
}

fn net(seed: u8) -> NetConfig {
    NetConfig {
        key_seed: [seed; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap: vec![],
        mdns: false,
        topics: vec![],
    }
}

/// One answer's material: a receipt of `provider` to `payer` on `channel` in `epoch`.
fn served(
    chain_id: u64,
    provider: &Keypair,
    payer: &Keypair,
    channel: Hash32,
    i: u8,
    epoch: u64,
) -> Material {
    let (prompt, output, fingerprint) = (vec![u32::from(i), 1, 2], vec![7, 8], vec![i, 3]);
    let receipt = Receipt {
        chain_id,
        epoch,
        request_id: [i; 16],
        provider: provider.account(),
        payer: payer.account(),
        channel,
        model: Hash32::of(b"model"),
        prompt_hash: agora_wire::tokens_hash(&prompt),
        output_hash: agora_wire::tokens_hash(&output),
        prompt_tokens: 3,
        resumed_tokens: 0,
        output_tokens: 2,
        sampling: Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: u64::from(i),
            ..Default::default()
        },
        fingerprint_hash: agora_wire::fingerprint_hash(&fingerprint),
        price_in: Amount::new(1),
        price_out: Amount::new(2),
        cost_micros: 5 * MICROS_PER_UNIT,
        started_ms: 1,
        finished_ms: 2,
    }
    .sign(provider);
    Material {
        receipt,
        prompt,
        resumed: vec![],
        output,
        fingerprint,
    }
}

/// A fresh Anvil with the contracts deployed (devnet rules, 10-block epochs), its deployer's
/// client and the settlement target the services open; `None` (a SKIP line printed) where
/// Anvil is not installed.
struct Chain {
    anvil: Anvil,
    dir: tempfile::TempDir,
    d: agora_evm::Deployment,
    admin: SettlementClient,
    target: SettlementTarget,
}

impl Chain {
    async fn start() -> Option<Chain> {
        let Some(bin) = find_anvil() else {
            eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tmp");
        let anvil = Anvil::start(&bin, 31_337).expect("anvil");
        let d = deploy(anvil.url(), anvil.keys()[0].clone(), Params::devnet(10))
            .await
            .expect("deploy");
        let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone())
            .await
            .expect("admin");
        let target = SettlementTarget::Evm {
            rpc: anvil.url().to_string(),
            deployment: d.clone(),
        };
        Some(Chain {
            anvil,
            dir,
            d,
            admin,
            target,
        })
    }
}

fn config(target: SettlementTarget, key: &Keypair, dir: &std::path::Path) -> ProviderConfig {
    ProviderConfig {
        settlement: target,
        account_seed: key.seed(),
        net: net(40),
        model_name: "tiny".into(),
        price_in: Amount::new(1_000_000),
        price_out: Amount::new(3_000_000),
        stake: Amount::new(STAKE),
        capacity: 2,
        hardware: "cpu".into(),
        region: "test".into(),
        offer_ttl: Duration::from_secs(30),
        renew_every: Duration::from_secs(5),
        claim_every: Duration::from_millis(200),
        data_dir: dir.join("provider"),
        plant_one_in: None,
        #[cfg(feature = "adversary")]
        refuse_audits: false,
        #[cfg(feature = "adversary")]
        omit_receipts: false,
        #[cfg(feature = "adversary")]
        overcharge: false,
    }
}

/// The payer's inclusion challenge of `receipt`, with the provider's EIP-712 signature.
async fn challenge(payer: &SettlementClient, receipt: &SignedReceipt, sig: &[u8]) {
    let sig: [u8; 65] = sig.try_into().expect("a 65-byte EIP-712 signature");
    payer
        .challenge_inclusion(&ReceiptCommitment {
            leaf: ReceiptLeaf::of(receipt),
            epoch: receipt.receipt.epoch,
            sig,
        })
        .await
        .expect("the chain takes the provider's receipt signature for a challenge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_on_the_contracts_binds_its_key_posts_keccak_roots_and_answers_challenges() {
    // Bound, not `_`: the chain lives as long as the test.
    let Some(Chain {
        anvil: _anvil,
        dir,
        d,
        admin,
        target,
    }) = Chain::start().await
    else {
        return;
    };
    // The honest provider, a provider still on BLAKE3 roots, and a payer: each party's EVM
    // account is derived from its key seed, funded with tokens and gas.
    let (honest, blake3, payer) = (
        Keypair::from_seed([21; 32]),
        Keypair::from_seed([22; 32]),
        Keypair::from_seed([23; 32]),
    );
    for k in [&honest, &blake3, &payer] {
        let a = evm_signer_for(&k.seed()).address();
        admin.mint(a, TOKENS).await.expect("mint");
        admin
            .send_native(a, U256::from(10u128.pow(20)))
            .await
            .expect("gas");
    }
    let chain_id = d.chain_id;

    // Before start nobody stands behind the provider's key.
    let reader = Opened::open(&target, &payer).await.expect("open");
    let payer_evm = match &reader {
        Opened::Evm(s) => s.clone(),
        Opened::Ledger(_) => unreachable!("an EVM target opens an EVM settlement"),
    };
    assert_eq!(
        reader
            .network()
            .stake_of_key(honest.account())
            .await
            .expect("stake"),
        None
    );
    let provider = Provider::start(
        &config(target.clone(), &honest, dir.path()),
        tiny_model(&dir.path().join("model")),
    )
    .await
    .expect("the provider starts on the contracts");
    assert_eq!(
        reader
            .network()
            .stake_of_key(honest.account())
            .await
            .expect("stake"),
        Some(Amount::new(STAKE)),
        "stake bonded and the network key bound: brokers find the stake by the key"
    );
    // A restart bonds nothing more and binds nothing again.
    let again = Opened::open(&target, &honest)
        .await
        .expect("open")
        .provider();
    again
        .bond_provider_stake(&honest, Amount::new(STAKE))
        .await
        .expect("idempotent");
    assert_eq!(
        reader
            .network()
            .stake_of_key(honest.account())
            .await
            .expect("stake"),
        Some(Amount::new(STAKE))
    );

    // The stale provider, bonded and bound the same way, its log in the BLAKE3 tree.
    let stale = Opened::open(&target, &blake3)
        .await
        .expect("open")
        .provider();
    stale
        .bond_provider_stake(&blake3, Amount::new(STAKE))
        .await
        .expect("bond");

    // The payer opens a channel to each (by network key) and is served in epoch r.
    let to_honest = reader
        .network()
        .open_channel_to(honest.account(), Amount::new(1000), 20)
        .await
        .expect("channel");
    let to_stale = reader
        .network()
        .open_channel_to(blake3.account(), Amount::new(1000), 20)
        .await
        .expect("channel");
    // A fresh epoch: room for the root, the plant and the stale root in it.
    let start = reader.network().current_epoch().await.expect("epoch");
    admin.mine_to_epoch(start + 1).await.expect("mine");
    let r = reader.network().current_epoch().await.expect("epoch");
    let service = provider.service().clone();
    let honest_served: Vec<Material> = (1..=3)
        .map(|i| served(chain_id, &honest, &payer, to_honest, i, r))
        .collect();
    for m in &honest_served {
        service.receipts.record(m).expect("record");
    }
    let stale_log = Arc::new(ReceiptLog::open(&dir.path().join("stale.redb")).expect("log"));
    let stale_served: Vec<Material> = (1..=3)
        .map(|i| served(chain_id, &blake3, &payer, to_stale, i, r))
        .collect();
    for m in &stale_served {
        stale_log.record(m).expect("record");
    }

    // The honest provider posts its root: the contract's keccak tree over the leaves.
    let mut last = None;
    provider.post_root(&mut last).await;
    let posted = last.expect("a root was posted");
    // The canary's plant on leaf 1, committed in the root's own epoch (the contract's rule).
    let plant_salt = Hash32::of(b"plant salt");
    again
        .commit_plant(posted, 1, plant_salt)
        .await
        .expect("plant committed in the root's epoch");
    assert!(
        posted == r || posted == r + 1,
        "in the receipts' epoch or the next"
    );
    let receipts: Vec<SignedReceipt> = honest_served.iter().map(|m| m.receipt.clone()).collect();
    let leaves: Vec<ReceiptLeaf> = receipts.iter().map(ReceiptLeaf::of).collect();
    let honest_addr = evm_signer_for(&honest.seed()).address();
    let on_chain = admin
        .root(honest_addr, posted)
        .await
        .expect("root")
        .expect("a root on chain");
    assert_eq!(
        on_chain.root,
        receipt_root(&leaves),
        "the keccak ReceiptLeaf tree"
    );
    assert_eq!(on_chain.receipts, 3);
    let blake3_root =
        agora_core::merkle::root(&receipts.iter().map(SignedReceipt::hash).collect::<Vec<_>>());
    assert_ne!(on_chain.root.0, *blake3_root.as_bytes());

    // The stale provider posts the BLAKE3 root of its log, as every provider did before.
    let batch = stale_log.pending_batch().expect("batch").expect("pending");
    let stale_epoch = stale.current_epoch().await.expect("epoch");
    stale
        .post_receipt_root(stale_epoch, batch.root, batch.leaves.len() as u64, false)
        .await
        .expect("the chain takes any 32 bytes as a root");
    stale_log.mark_posted(&batch, stale_epoch).expect("mark");

    // What auditors get: the honest path verifies under the keccak root on chain; the stale
    // one does not under its own root (the verifier rejects it).
    let (material, proof, next) = service
        .receipts
        .material(posted, 1)
        .expect("log")
        .expect("leaf 1");
    let root = Hash32::from_bytes(on_chain.root.0);
    assert!(payer_evm.receipt_proof_holds(&root, 3, 1, &material.receipt, &proof));
    let next = next.expect("leaf 2 follows");
    assert!(payer_evm.receipt_proof_holds(&root, 3, 2, &next.receipt, &next.proof));
    let (stale_material, stale_proof, _) = stale_log
        .material(stale_epoch, 1)
        .expect("log")
        .expect("leaf");
    assert!(!payer_evm.receipt_proof_holds(
        &batch.root,
        3,
        1,
        &stale_material.receipt,
        &stale_proof
    ));

    // The EIP-712 signature the provider sends in `Done` (and the stale one's, signed the
    // same way) is what the payer's challenge carries; the chain takes it from epoch r + 2.
    let honest_sig = service
        .receipts
        .chain_receipt_sig(&receipts[0])
        .expect("a chain signature on EVM");
    assert_eq!(honest_sig.len(), 65);
    let stale_sig = stale
        .chain_receipt_sig(&stale_served[0].receipt)
        .expect("a chain signature on EVM");
    admin.mine_to_epoch(r + 2).await.expect("mine");
    let payer_client = payer_evm.client();
    challenge(payer_client, &receipts[0], &honest_sig).await;
    challenge(payer_client, &stale_served[0].receipt, &stale_sig).await;

    // The honest provider's duty loop follows the chain's logs and answers with its keccak
    // path.
    let duties = Duties::new(again.clone(), service.clone(), None)
        .spawn()
        .expect("duties");
    let honest_hash = B256::from(*receipts[0].hash().as_bytes());
    let mut answered = false;
    for _ in 0..120 {
        let c = admin
            .challenge(honest_hash)
            .await
            .expect("read")
            .expect("challenged");
        if !c.open {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(duties);
    assert!(
        answered,
        "the duty loop answered the inclusion challenge on chain"
    );

    // The stale provider answers with its BLAKE3 path: the contract refuses it.
    let stale_duties = Duties::new(stale.clone(), stale_log.clone(), None);
    let refused = stale_duties
        .answer(&Duty::Inclusion {
            receipt: stale_served[0].receipt.hash(),
        })
        .await
        .expect_err("a BLAKE3 path under a keccak check");
    assert!(
        matches!(
            refused,
            agora_provider::duties::DutyError::Settlement(SettlementError::Refused(
                Refusal::BadReceiptProof
            ))
        ),
        "{refused}"
    );
    // The canary opens its plant in the one epoch the contract allows.
    let plant_epoch = again
        .plant_epoch(posted)
        .await
        .expect("read")
        .expect("an epoch");
    assert_eq!(plant_epoch, posted + 3 + d.params.audit_window_epochs);
    admin.mine_to_epoch(plant_epoch).await.expect("mine");
    again
        .reveal_plant_at(posted, 1, plant_salt)
        .await
        .expect("the plant opens in its epoch");
    assert!(
        admin
            .root(honest_addr, posted)
            .await
            .expect("root")
            .expect("root")
            .plant_opened
    );

    let stale_hash = B256::from(*stale_served[0].receipt.hash().as_bytes());
    assert!(
        admin
            .challenge(stale_hash)
            .await
            .expect("read")
            .expect("challenged")
            .open,
        "left open: the stale provider is slashed when it expires"
    );
}

/// The attack: a verifier reveals "failed" on an honest provider's leaf. Nothing confirms it
/// (no verdict, no plant), so the contract charges it to the verifier, but only when someone
/// calls `expireAlarm`; before the provider called it, nobody did, and a verifier could
/// reveal false failures for free on a chain. Now the provider's own duty loop, following the
/// chain's `AuditRevealed` logs, calls it once due (and not before): `FalseAlarm`, the
/// verifier's stake lower.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_running_provider_charges_a_false_failure_on_its_leaf_once_due() {
    use agora_evm::bindings::AgoraSettlement;
    use alloy::providers::Provider as _;
    use alloy::rpc::types::Filter;
    use alloy::sol_types::SolEvent;

    let Some(Chain {
        anvil,
        dir,
        d,
        admin,
        target,
    }) = Chain::start().await
    else {
        return;
    };
    let honest = Keypair::from_seed([31; 32]);
    let prov_addr = evm_signer_for(&honest.seed()).address();
    admin.mint(prov_addr, TOKENS).await.expect("mint");
    admin
        .send_native(prov_addr, U256::from(10u128.pow(20)))
        .await
        .expect("gas");
    // The verifier, in the verifier set before the root's epoch: it audits every leaf of a
    // provider on probation.
    let ver = SettlementClient::connect(anvil.url(), anvil.keys()[1].clone(), d.clone())
        .await
        .expect("verifier");
    admin.mint(ver.address(), TOKENS).await.expect("mint");
    ver.register_verifier(200).await.expect("register");
    let ver_stake = ver.account(ver.address()).await.expect("acct").stake;

    let cfg = config(target.clone(), &honest, dir.path());
    let provider = Provider::start(&cfg, tiny_model(&dir.path().join("model")))
        .await
        .expect("the provider starts on the contracts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(provider.run(cfg, async {
        let _ = stopped.await;
    }));
    let own = Opened::open(&target, &honest)
        .await
        .expect("open")
        .provider();
    let start = own.current_epoch().await.expect("epoch");
    admin.mine_to_epoch(start + 1).await.expect("mine");
    let e = own.current_epoch().await.expect("epoch");
    let leaves: Vec<ReceiptLeaf> = (0..2u8)
        .map(|i| ReceiptLeaf {
            receipt: B256::repeat_byte(i + 1),
            channel: B256::repeat_byte(0xcc),
            cost: 10,
        })
        .collect();
    own.post_receipt_root(e, Hash32::from_bytes(receipt_root(&leaves).0), 2, false)
        .await
        .expect("root");

    // The verifier commits and reveals a failure of leaf 0 (an honest leaf: nobody will
    // confirm it).
    let salt = B256::repeat_byte(0x5a);
    admin.mine_to_epoch(e + 1).await.expect("mine");
    ver.record_beacon(e + 1).await.expect("beacon");
    assert_eq!(
        ver.assignee(prov_addr, e, 0).await.expect("assignee"),
        Some(ver.address())
    );
    ver.commit_audit(prov_addr, e, 0, false, salt)
        .await
        .expect("commit");
    admin.mine_to_epoch(e + 2).await.expect("mine");
    ver.reveal_audit(prov_addr, e, 0, false, B256::ZERO, salt)
        .await
        .expect("reveal");

    let false_alarms = || async {
        let filter = Filter::new()
            .address(d.settlement)
            .event_signature(AgoraSettlement::FalseAlarm::SIGNATURE_HASH)
            .from_block(d.start_block);
        admin
            .provider()
            .get_logs(&filter)
            .await
            .expect("logs")
            .len()
    };
    // The verdict window is still open at e + 6: nothing is charged yet.
    let w = d.params.audit_window_epochs + d.params.escalation_epochs;
    admin.mine_to_epoch(e + 3 + w).await.expect("mine");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        false_alarms().await,
        0,
        "charged before its verdict window closed"
    );
    assert!(ver.leaf_audit(prov_addr, e, 0).await.expect("leaf").alarm);

    // Due: the provider's loop charges it.
    admin.mine_to_epoch(e + 4 + w).await.expect("mine");
    let mut charged = false;
    for _ in 0..120 {
        if false_alarms().await == 1 {
            charged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(charged, "the provider charged the false alarm once due");
    assert!(!ver.leaf_audit(prov_addr, e, 0).await.expect("leaf").alarm);
    let after = ver.account(ver.address()).await.expect("acct").stake;
    assert_eq!(
        after,
        ver_stake - ver_stake * u128::from(d.params.false_alarm_bps) / 10_000,
        "the verifier paid falseAlarmBps of its stake"
    );
    let _ = stop.send(());
    let _ = running.await;
}
