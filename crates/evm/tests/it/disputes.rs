//! Disputes on chain (AgoraDisputes, run at the settlement's address): material demands and
//! `Withheld` verdicts, inclusion challenges of receipts left out of the roots. First the two
//! attacks the contract had no answer to (a paid receipt omitted from the roots goes
//! unpunished; a provider that withholds its material cannot be slashed), then every way of
//! abusing the new rules, each refused.

use crate::assert_refused;
use crate::common::{params, Chain};
use agora_evm::bindings::{AgoraDisputes, Receipt};
use agora_evm::receipts::{receipt_proof, receipt_root, ReceiptLeaf};
use agora_evm::{Deployment, Params, ReceiptCommitment, SettlementClient};
use alloy::primitives::{Bytes, TxKind, B256, U256};
use alloy::signers::SignerSync;
use alloy::sol_types::{eip712_domain, SolCall, SolStruct};

// Test epochs: the root's epoch `e`; demands in `e+1 ..= e+2` (w = 1), each due one epoch
// later (a = 1); verdicts in `e+5 ..= e+6` (x = 2). A receipt of epoch `r` is challenged in
// `r+2 ..= r+3`.

/// A payer with a paid channel (100 claimed) to a provider staking 500 on probation, one
/// verifier in the frozen set, a confirmer registered in the root's epoch, the provider's root
/// of four receipts of epoch `e`, and a fifth receipt of `e` (cost 30) the provider signed for
/// the payer but left out of the root.
struct Scene {
    chain: Chain,
    payer: SettlementClient,
    prov: SettlementClient,
    ver: SettlementClient,
    conf: SettlementClient,
    /// Anyone else.
    other: SettlementClient,
    channel: B256,
    leaves: Vec<ReceiptLeaf>,
    omitted: ReceiptLeaf,
    e: u64,
}

impl Scene {
    async fn new(p: Params) -> anyhow::Result<Option<Scene>> {
        let Some(chain) = crate::common::start(p).await? else {
            return Ok(None);
        };
        let payer = chain.funded(1, 1_000).await?;
        let prov = chain.funded(2, 1_000).await?;
        let ver = chain.funded(3, 1_000).await?;
        let conf = chain.funded(4, 1_000).await?;
        let other = chain.funded(5, 1_000).await?;
        prov.stake(500).await?;
        ver.register_verifier(200).await?;
        let e = chain.next_epoch().await? + 1;
        chain.at_epoch(e).await?;
        conf.register_verifier(100).await?;
        let (channel, _) = payer.open_channel(prov.address(), 300, 30).await?;
        let sig = payer.sign_voucher(channel, 100)?;
        prov.claim(channel, 100, &sig).await?;
        let leaves: Vec<ReceiptLeaf> = (0..4u8)
            .map(|i| ReceiptLeaf {
                receipt: B256::repeat_byte(i + 1),
                channel,
                cost: 10,
            })
            .collect();
        prov.post_root(e, receipt_root(&leaves), 4).await?;
        let omitted = ReceiptLeaf {
            receipt: B256::repeat_byte(0x55),
            channel,
            cost: 30,
        };
        Ok(Some(Scene {
            chain,
            payer,
            prov,
            ver,
            conf,
            other,
            channel,
            leaves,
            omitted,
            e,
        }))
    }

    async fn at(&self, offset: u64) -> anyhow::Result<()> {
        self.chain.at_epoch(self.e + offset).await
    }

    fn proof(&self, index: u64) -> Vec<B256> {
        receipt_proof(&self.leaves, index as usize).expect("leaf")
    }

    /// The provider's signed commitment to leaf `index` of its root (or the omitted receipt).
    fn signed(&self, leaf: &ReceiptLeaf) -> anyhow::Result<ReceiptCommitment> {
        Ok(self.prov.sign_receipt(leaf, self.e)?)
    }

    /// The contract's tokens equal everything it records as owed or kept.
    async fn conserved(&self) -> anyhow::Result<()> {
        let c = &self.chain.admin;
        let mut owed = c.audit_pool().await? + c.burned().await? + c.plant_bonds().await?;
        for who in [&self.payer, &self.prov, &self.ver, &self.conf, &self.other] {
            let a = c.account(who.address()).await?;
            owed += a.stake + a.unbonding;
        }
        owed += c.channel(self.channel).await?.expect("channel").escrow();
        let mut bonds = 0;
        for leaf in self.leaves.iter().chain([&self.omitted]) {
            if let Some(ch) = c.challenge(leaf.receipt).await? {
                bonds += if ch.open { ch.bond } else { 0 };
            }
        }
        let held = c.token_balance(self.chain.deployment.settlement).await?;
        assert_eq!(
            held,
            owed + bonds,
            "the contract's tokens and its records differ"
        );
        Ok(())
    }
}

macro_rules! scene_or_skip {
    ($params:expr) => {
        match Scene::new($params).await? {
            Some(s) => s,
            None => return Ok(()),
        }
    };
}

// ----- the two attacks -----

#[tokio::test]
async fn a_paid_receipt_left_out_of_the_roots_slashes_its_provider_and_refunds_the_payer(
) -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    let receipt = s.signed(&s.omitted)?;
    // The provider leaves it out of its root of e + 1 too.
    s.at(1).await?;
    s.prov
        .post_root(s.e + 1, receipt_root(&s.leaves[..2]), 2)
        .await?;
    s.prov.unstake(100).await?;
    s.at(2).await?;
    let payer_before = s.payer.token_balance(s.payer.address()).await?;
    s.payer.challenge_inclusion(&receipt).await?;
    assert_eq!(
        s.payer.token_balance(s.payer.address()).await?,
        payer_before - 5,
        "the bond is escrowed"
    );
    s.conserved().await?;
    // It cannot answer: no root of its holds the receipt.
    for (epoch, index, proof) in [(s.e, 1, s.proof(1)), (s.e + 1, 0, vec![s.leaves[1].hash()])] {
        assert_refused!(
            s.prov
                .answer_inclusion(s.omitted.receipt, epoch, index, &proof)
                .await,
            "BadReceiptProof"
        );
    }
    // While the challenge is open its stake cannot leave, and it cannot be charged yet.
    assert_refused!(s.prov.withdraw().await, "AlarmsOpen");
    assert_refused!(
        s.other.expire_challenge(s.omitted.receipt).await,
        "ChallengeNotDue"
    );
    // Due at e + 3; from e + 4 anyone charges it.
    s.at(4).await?;
    s.other.expire_challenge(s.omitted.receipt).await?;
    // 50% of 500 (400 bonded, 100 unbonding) slashed; the receipt's cost and the bond back to
    // the payer; the rest burned.
    let a = s.chain.admin.account(p).await?;
    assert_eq!((a.stake + a.unbonding, a.open_alarms), (250, 0));
    assert_eq!(
        s.payer.token_balance(s.payer.address()).await?,
        payer_before + 30
    );
    assert_eq!(s.chain.admin.burned().await?, 220);
    assert_eq!(
        s.chain
            .admin
            .channel(s.channel)
            .await?
            .expect("ch")
            .refunded,
        30
    );
    assert_refused!(
        s.other.expire_challenge(s.omitted.receipt).await,
        "NotOpenToAnswer"
    );
    s.conserved().await?;
    Ok(())
}

#[tokio::test]
async fn a_provider_that_withholds_its_material_is_slashed_after_an_unanswered_demand(
) -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(1).await?;
    s.ver.record_beacon(s.e + 1).await?;
    s.ver.demand_material(p, s.e, 2).await?;
    let d = s.chain.admin.demand(p, s.e, 2).await?.expect("demand");
    assert_eq!(
        (d.verifier, d.due_epoch, d.answered),
        (s.ver.address(), s.e + 2, None)
    );
    // The provider never answers. In the verdict window the verifier brings it, co-signed.
    s.at(5).await?;
    let sig = s.conf.sign_withheld(p, s.e, 2)?;
    let ver_before = s.ver.token_balance(s.ver.address()).await?;
    s.ver
        .withheld_verdict(p, s.e, 2, s.conf.address(), &sig)
        .await?;
    let a = s.chain.admin.account(p).await?;
    assert_eq!((a.stake, a.frauds), (250, 1));
    assert_eq!(
        s.ver.token_balance(s.ver.address()).await?,
        ver_before + 50,
        "20% of the slash as bounty"
    );
    assert_eq!(s.chain.admin.burned().await?, 200);
    assert!(s.chain.admin.leaf_audit(p, s.e, 2).await?.judged);
    assert_refused!(
        s.ver
            .withheld_verdict(p, s.e, 2, s.conf.address(), &sig)
            .await,
        "AlreadyJudged"
    );
    s.conserved().await?;
    Ok(())
}

// ----- inclusion challenges: abuse refused -----

#[tokio::test]
async fn a_false_inclusion_challenge_costs_the_challenger_its_bond() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    let receipt = s.signed(&s.leaves[1])?;
    s.at(2).await?;
    let payer_before = s.payer.token_balance(s.payer.address()).await?;
    let prov_before = s.prov.token_balance(p).await?;
    s.payer.challenge_inclusion(&receipt).await?;
    // Only the provider answers, and only with the right path.
    assert_refused!(
        s.other
            .answer_inclusion(s.leaves[1].receipt, s.e, 1, &s.proof(1))
            .await,
        "NotOpenToAnswer"
    );
    assert_refused!(
        s.payer
            .answer_inclusion(s.leaves[1].receipt, s.e, 1, &s.proof(1))
            .await,
        "NotOpenToAnswer"
    );
    assert_refused!(
        s.prov
            .answer_inclusion(s.leaves[1].receipt, s.e, 2, &s.proof(2))
            .await,
        "BadReceiptProof"
    );
    assert_refused!(
        s.prov
            .answer_inclusion(s.leaves[1].receipt, s.e - 1, 1, &s.proof(1))
            .await,
        "WrongEpoch"
    );
    s.prov
        .answer_inclusion(s.leaves[1].receipt, s.e, 1, &s.proof(1))
        .await?;
    assert_eq!(s.prov.token_balance(p).await?, prov_before + 5);
    assert_eq!(
        s.payer.token_balance(s.payer.address()).await?,
        payer_before - 5
    );
    let a = s.chain.admin.account(p).await?;
    assert_eq!((a.stake, a.frauds, a.open_alarms), (500, 0, 0));
    // Answered once; it can neither be charged later nor challenged again.
    s.at(4).await?;
    assert_refused!(
        s.other.expire_challenge(s.leaves[1].receipt).await,
        "NotOpenToAnswer"
    );
    assert_refused!(
        s.prov
            .answer_inclusion(s.leaves[1].receipt, s.e, 1, &s.proof(1))
            .await,
        "NotOpenToAnswer"
    );
    assert_eq!(s.chain.admin.burned().await?, 0);
    s.conserved().await?;
    Ok(())
}

#[tokio::test]
async fn challenges_with_forged_or_foreign_provider_signatures_are_refused() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    s.at(2).await?;
    let honest = s.signed(&s.omitted)?;
    // The payer signs for the provider.
    let by_payer = s.payer.sign_receipt(&s.omitted, s.e)?;
    assert_refused!(
        s.payer.challenge_inclusion(&by_payer).await,
        "ForgedReceipt"
    );
    // The provider's signature over another cost, another channel or another epoch.
    let dearer = ReceiptCommitment {
        leaf: ReceiptLeaf {
            cost: 300,
            ..s.omitted
        },
        ..honest
    };
    assert_refused!(s.payer.challenge_inclusion(&dearer).await, "ForgedReceipt");
    let later = ReceiptCommitment {
        epoch: s.e + 1,
        ..honest
    };
    assert_refused!(s.payer.challenge_inclusion(&later).await, "ForgedReceipt");
    // The provider's signature for another chain, and for another settlement contract.
    let sign_for = |chain_id: u64, contract| -> anyhow::Result<[u8; 65]> {
        let digest = Receipt {
            receipt: s.omitted.receipt,
            channel: s.omitted.channel,
            cost: s.omitted.cost,
            epoch: s.e,
        }
        .eip712_signing_hash(&eip712_domain! {
            name: "Agora",
            version: "1",
            chain_id: chain_id,
            verifying_contract: contract,
        });
        Ok(s.chain.key(2).sign_hash_sync(&digest)?.as_bytes())
    };
    let d = &s.chain.deployment;
    // The same digest the client signs is accepted below: the variants differ only in domain.
    assert_eq!(sign_for(d.chain_id, d.settlement)?, honest.sig);
    for sig in [
        sign_for(1, d.settlement)?,
        sign_for(d.chain_id, s.prov.disputes_code_address()?)?,
        sign_for(d.chain_id, d.token)?,
    ] {
        let foreign = ReceiptCommitment { sig, ..honest };
        assert_refused!(s.payer.challenge_inclusion(&foreign).await, "ForgedReceipt");
    }
    // Garbage and a malleable (high-s) twin of the honest signature.
    let mut twin = honest.sig;
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )?;
    let s_val = U256::from_be_slice(&twin[32..64]);
    twin[32..64].copy_from_slice(&(n - s_val).to_be_bytes::<32>());
    twin[64] ^= 1;
    for sig in [[7u8; 65], twin] {
        let bad = ReceiptCommitment { sig, ..honest };
        assert_refused!(s.payer.challenge_inclusion(&bad).await, "ForgedReceipt");
    }
    // Nothing was escrowed; the honest one is accepted.
    assert!(s.chain.admin.challenge(s.omitted.receipt).await?.is_none());
    s.payer.challenge_inclusion(&honest).await?;
    s.conserved().await?;
    Ok(())
}

#[tokio::test]
async fn challenges_only_by_the_payer_in_their_window_once() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let receipt = s.signed(&s.omitted)?;
    // Before r + 2: the provider may still put it under its root of r + 1.
    s.at(1).await?;
    assert_refused!(s.payer.challenge_inclusion(&receipt).await, "AuditWindow");
    s.at(2).await?;
    // Only the payer of the receipt's channel.
    assert_refused!(
        s.other.challenge_inclusion(&receipt).await,
        "NotChannelPayer"
    );
    assert_refused!(
        s.prov.challenge_inclusion(&receipt).await,
        "NotChannelPayer"
    );
    let unknown = s.prov.sign_receipt(
        &ReceiptLeaf {
            channel: B256::repeat_byte(0xcc),
            ..s.omitted
        },
        s.e,
    )?;
    assert_refused!(
        s.payer.challenge_inclusion(&unknown).await,
        "UnknownChannel"
    );
    s.payer.challenge_inclusion(&receipt).await?;
    assert_refused!(
        s.payer.challenge_inclusion(&receipt).await,
        "AlreadyChallenged"
    );
    // After r + 1 + x the window is shut.
    let late = s.signed(&s.leaves[0])?;
    s.at(4).await?;
    assert_refused!(s.payer.challenge_inclusion(&late).await, "AuditWindow");
    // Past its deadline the provider's answer is refused (and the payer's bond is safe).
    assert_refused!(
        s.prov
            .answer_inclusion(s.omitted.receipt, s.e, 0, &s.proof(0))
            .await,
        "NotOpenToAnswer"
    );
    Ok(())
}

#[tokio::test]
async fn a_receipt_under_a_later_root_counts_only_if_that_root_is_audited_in_full(
) -> anyhow::Result<()> {
    // No probation: ordinary roots are sampled, late roots audited in full.
    let s = scene_or_skip!(Params {
        probation_jobs: 0,
        ..params()
    });
    let p = s.prov.address();
    let receipt = s.signed(&s.omitted)?;
    s.at(2).await?;
    // An ordinary root of r + 2 holds it: too late, and sampled.
    let later = vec![s.omitted, s.leaves[0]];
    s.prov.post_root(s.e + 2, receipt_root(&later), 2).await?;
    s.prov.unstake(100).await?;
    s.payer.challenge_inclusion(&receipt).await?;
    let path = receipt_proof(&later, 0).expect("leaf");
    assert_refused!(
        s.prov
            .answer_inclusion(s.omitted.receipt, s.e + 2, 0, &path)
            .await,
        "LateReceiptRoot"
    );
    // A late root (every leaf audited) of r + 3 does, and holds its unbonding stake.
    s.at(3).await?;
    s.prov
        .post_late_root(s.e + 3, receipt_root(&later), 2)
        .await?;
    s.prov
        .answer_inclusion(s.omitted.receipt, s.e + 3, 0, &path)
        .await?;
    assert_eq!(
        s.chain.admin.account(p).await?.release_epoch,
        s.e + 3 + s.chain.deployment.params.unbonding_epochs
    );
    Ok(())
}

// ----- material demands and Withheld verdicts: abuse refused -----

#[tokio::test]
async fn demands_only_by_the_assignee_in_the_commit_window_once() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    // In the root's epoch: nothing is selected yet.
    assert_refused!(s.ver.demand_material(p, s.e, 0).await, "AuditWindow");
    s.at(1).await?;
    s.ver.record_beacon(s.e + 1).await?;
    // Not assigned: the confirmer (outside the frozen set), the payer, the provider itself.
    for c in [&s.conf, &s.payer, &s.prov] {
        assert_refused!(c.demand_material(p, s.e, 0).await, "NotAssigned");
    }
    // A leaf past the root's count is selected for nobody.
    assert_refused!(s.ver.demand_material(p, s.e, 4).await, "NotAssigned");
    s.ver.demand_material(p, s.e, 0).await?;
    assert_refused!(s.ver.demand_material(p, s.e, 0).await, "DemandClosed");
    s.at(3).await?;
    assert_refused!(s.ver.demand_material(p, s.e, 1).await, "AuditWindow");
    Ok(())
}

#[tokio::test]
async fn answers_by_anyone_but_the_provider_in_time_do_nothing() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(1).await?;
    s.ver.record_beacon(s.e + 1).await?;
    s.ver.demand_material(p, s.e, 0).await?;
    s.ver.demand_material(p, s.e, 1).await?;
    let material = B256::repeat_byte(0x99);
    // Another account's answer is about its own (absent) leaf: nothing is answered.
    for c in [&s.other, &s.ver, &s.payer] {
        assert_refused!(
            c.answer_demand(s.e, 0, &s.leaves[0], &s.proof(0), material)
                .await,
            "NoDemand"
        );
    }
    assert_eq!(
        s.chain.admin.demand(p, s.e, 0).await?.expect("d").answered,
        None
    );
    // The provider's answer must be the leaf under its root.
    assert_refused!(
        s.prov
            .answer_demand(s.e, 0, &s.leaves[1], &s.proof(0), material)
            .await,
        "BadReceiptProof"
    );
    assert_refused!(
        s.prov
            .answer_demand(s.e, 2, &s.leaves[2], &s.proof(2), material)
            .await,
        "NoDemand"
    );
    s.prov
        .answer_demand(s.e, 0, &s.leaves[0], &s.proof(0), material)
        .await?;
    assert_eq!(
        s.chain.admin.demand(p, s.e, 0).await?.expect("d").answered,
        Some(material)
    );
    assert_refused!(
        s.prov
            .answer_demand(s.e, 0, &s.leaves[0], &s.proof(0), material)
            .await,
        "DemandClosed"
    );
    // Due at e + 2: at e + 3 the answer comes too late.
    s.at(3).await?;
    assert_refused!(
        s.prov
            .answer_demand(s.e, 1, &s.leaves[1], &s.proof(1), material)
            .await,
        "DemandClosed"
    );
    Ok(())
}

#[tokio::test]
async fn withheld_verdicts_need_an_unanswered_demand_a_second_verifier_and_their_window(
) -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    let (ver, conf) = (&s.ver, &s.conf);
    s.at(1).await?;
    ver.record_beacon(s.e + 1).await?;
    // Leaf 0 demanded and answered, leaf 1 demanded and not, leaf 2 never demanded.
    ver.demand_material(p, s.e, 0).await?;
    ver.demand_material(p, s.e, 1).await?;
    s.prov
        .answer_demand(s.e, 0, &s.leaves[0], &s.proof(0), B256::repeat_byte(9))
        .await?;
    let sig = |i: u64| conf.sign_withheld(p, s.e, i);
    // Before the verdict window (the plant epoch e + 4): the provider's chance is not over.
    s.at(4).await?;
    assert_refused!(
        ver.withheld_verdict(p, s.e, 1, conf.address(), &sig(1)?)
            .await,
        "AuditWindow"
    );
    s.at(5).await?;
    assert_refused!(
        ver.withheld_verdict(p, s.e, 2, conf.address(), &sig(2)?)
            .await,
        "NoDemand"
    );
    assert_refused!(
        ver.withheld_verdict(p, s.e, 0, conf.address(), &sig(0)?)
            .await,
        "DemandClosed"
    );
    // One verifier alone: its own signature, passed off as the confirmer's or as itself.
    let own = ver.sign_withheld(p, s.e, 1)?;
    assert_refused!(
        ver.withheld_verdict(p, s.e, 1, ver.address(), &own).await,
        "ConflictedVerdict"
    );
    assert_refused!(
        ver.withheld_verdict(p, s.e, 1, conf.address(), &own).await,
        "BadConfirmation"
    );
    // The provider or a non-verifier confirming; a confirmation of another leaf.
    let by_prov = s.prov.sign_withheld(p, s.e, 1)?;
    assert_refused!(
        ver.withheld_verdict(p, s.e, 1, p, &by_prov).await,
        "ConflictedVerdict"
    );
    let by_payer = s.payer.sign_withheld(p, s.e, 1)?;
    assert_refused!(
        ver.withheld_verdict(p, s.e, 1, s.payer.address(), &by_payer)
            .await,
        "NotVerifier"
    );
    assert_refused!(
        ver.withheld_verdict(p, s.e, 1, conf.address(), &sig(3)?)
            .await,
        "BadConfirmation"
    );
    // Another verifier cannot bring the demand's verdict, even confirmed by the demander.
    assert_refused!(
        conf.withheld_verdict(p, s.e, 1, ver.address(), &own).await,
        "DemandClosed"
    );
    assert_eq!(s.chain.admin.account(p).await?.stake, 500);
    // After the window: never.
    s.at(7).await?;
    assert_refused!(
        ver.withheld_verdict(p, s.e, 1, conf.address(), &sig(1)?)
            .await,
        "AuditWindow"
    );
    assert_eq!(s.chain.admin.account(p).await?.stake, 500);
    Ok(())
}

#[tokio::test]
async fn the_disputes_code_refuses_calls_at_its_own_address() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let at_code = Deployment {
        settlement: s.payer.disputes_code_address()?,
        ..s.chain.deployment.clone()
    };
    let direct = SettlementClient::connect(s.chain.anvil.url(), s.chain.key(6), at_code).await?;
    s.at(2).await?;
    let receipt = s.signed(&s.omitted)?;
    assert_refused!(direct.challenge_inclusion(&receipt).await, "NotSettlement");
    assert_refused!(
        direct.demand_material(s.prov.address(), s.e, 0).await,
        "NotSettlement"
    );
    assert_refused!(
        direct.expire_challenge(s.omitted.receipt).await,
        "NotSettlement"
    );
    // Its reads are served at the settlement's address, with the settlement's rules.
    let d = &s.chain.deployment;
    let at_settlement = AgoraDisputes::new(d.settlement, s.chain.admin.provider());
    let p = at_settlement.params().call().await?;
    assert_eq!(
        (p.epochBlocks, p.challengeBond, p.plantBond, p.answerEpochs),
        (
            d.params.epoch_blocks,
            d.params.challenge_bond,
            d.params.plant_bond,
            d.params.answer_epochs
        )
    );
    Ok(())
}

/// Gas of the dispute operations on Anvil (cancun), printed for docs/settlement.md
/// (`cargo test --release -p agora-evm --test it gas -- --nocapture`), with ceilings. It also
/// measures what answering a demand with the material in calldata would cost at least: the
/// same answer with 16 KiB appended (the ABI decoder ignores it; the chain charges for it).
#[tokio::test]
async fn gas_of_dispute_operations() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    let mut rows: Vec<(&str, u64, u64)> = Vec::new();
    s.payer.ensure_allowance(1_000).await?;
    s.at(1).await?;
    s.ver.record_beacon(s.e + 1).await?;
    rows.push((
        "demand material",
        s.ver.demand_material(p, s.e, 0).await?.gas_used,
        80_000,
    ));
    s.ver.demand_material(p, s.e, 1).await?;
    s.ver.demand_material(p, s.e, 2).await?;
    let material = B256::repeat_byte(0x99);
    rows.push((
        "answer demand (material hash)",
        s.prov
            .answer_demand(s.e, 0, &s.leaves[0], &s.proof(0), material)
            .await?
            .gas_used,
        75_000,
    ));
    let mut input = AgoraDisputes::answerDemandCall {
        epoch: s.e,
        index: 1,
        receipt: s.leaves[1].receipt,
        channel: s.leaves[1].channel,
        cost: s.leaves[1].cost,
        proof: s.proof(1),
        material,
    }
    .abi_encode();
    input.extend(std::iter::repeat_n(0x5a_u8, 16 * 1024));
    rows.push((
        "answer demand with 16 KiB of material in calldata",
        s.prov
            .submit(
                TxKind::Call(s.chain.deployment.settlement),
                Bytes::from(input),
                U256::ZERO,
            )
            .await?
            .gas_used,
        750_000,
    ));
    s.at(2).await?;
    let r_out = s.signed(&s.omitted)?;
    let r_in = s.signed(&s.leaves[3])?;
    rows.push((
        "challenge inclusion (bond escrowed)",
        s.payer.challenge_inclusion(&r_out).await?.gas_used,
        195_000,
    ));
    s.payer.challenge_inclusion(&r_in).await?;
    rows.push((
        "answer inclusion (bond to the provider)",
        s.prov
            .answer_inclusion(s.leaves[3].receipt, s.e, 3, &s.proof(3))
            .await?
            .gas_used,
        80_000,
    ));
    s.at(4).await?;
    rows.push((
        "expire challenge (slash, refund, bond back)",
        s.other.expire_challenge(s.omitted.receipt).await?.gas_used,
        125_000,
    ));
    s.at(5).await?;
    let sig = s.conf.sign_withheld(p, s.e, 2)?;
    rows.push((
        "withheld verdict (slash, bounty)",
        s.ver
            .withheld_verdict(p, s.e, 2, s.conf.address(), &sig)
            .await?
            .gas_used,
        135_000,
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
    s.conserved().await?;
    Ok(())
}
