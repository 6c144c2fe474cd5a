//! The audit half on chain: selection from the beacon, commit and reveal, verdicts with
//! slash, bounty and refund, false alarms, and the canary's plants. Each attack is a test that
//! the contract refuses; the honest flows check every token.

use crate::common::{params, Chain};
use crate::{assert_refused, chain_or_skip};
use agora_evm::receipts::{receipt_proof, receipt_root, ReceiptLeaf};
use agora_evm::{FraudEvidence, Params, SettlementClient};
use alloy::primitives::B256;

/// Test epochs: the root's epoch `e`; commits in `e+1 ..= e+2`, reveals up to `e+3`, the
/// plant epoch `e+4`, verdicts in `e+5 ..= e+6`, alarms expire from `e+7` (w = 1, x = 2).
const W: u64 = 1;
const X: u64 = 2;

/// A payer with a paid channel to a provider on probation, one verifier in the frozen set,
/// a confirmer registered during the root's epoch (so it audits none of its leaves), and the
/// provider's root of four receipts (leaf 1 on the channel, costing 40).
struct Scene {
    chain: Chain,
    payer: SettlementClient,
    prov: SettlementClient,
    ver: SettlementClient,
    conf: SettlementClient,
    channel: B256,
    leaves: Vec<ReceiptLeaf>,
    /// The root's epoch.
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
                cost: if i == 1 { 40 } else { 10 },
            })
            .collect();
        prov.post_root(e, receipt_root(&leaves), 4).await?;
        Ok(Some(Scene {
            chain,
            payer,
            prov,
            ver,
            conf,
            channel,
            leaves,
            e,
        }))
    }

    fn evidence(&self, index: u64) -> FraudEvidence {
        FraudEvidence {
            provider: self.prov.address(),
            epoch: self.e,
            index,
            leaf: self.leaves[index as usize],
            proof: receipt_proof(&self.leaves, index as usize).expect("leaf"),
        }
    }

    async fn at(&self, offset: u64) -> anyhow::Result<()> {
        self.chain.at_epoch(self.e + offset).await
    }

    /// The verifier commits leaf 1 failed and leaf 0 passed, then reveals both.
    async fn audit_and_reveal(&self) -> anyhow::Result<()> {
        let p = self.prov.address();
        self.at(1).await?;
        self.ver.commit_audit(p, self.e, 1, false, salt(1)).await?;
        self.ver.commit_audit(p, self.e, 0, true, salt(0)).await?;
        self.at(2).await?;
        self.ver
            .reveal_audit(p, self.e, 1, false, B256::ZERO, salt(1))
            .await?;
        self.ver
            .reveal_audit(p, self.e, 0, true, self.leaves[0].hash(), salt(0))
            .await?;
        Ok(())
    }

    /// The contract's tokens equal everything it records as owed or kept.
    async fn conserved(&self) -> anyhow::Result<()> {
        let c = &self.chain.admin;
        let mut owed = c.audit_pool().await? + c.burned().await? + c.plant_bonds().await?;
        for who in [&self.payer, &self.prov, &self.ver, &self.conf] {
            let a = c.account(who.address()).await?;
            owed += a.stake + a.unbonding;
        }
        owed += c.channel(self.channel).await?.expect("channel").escrow();
        let held = c.token_balance(self.chain.deployment.settlement).await?;
        assert_eq!(held, owed, "the contract's tokens and its records differ");
        Ok(())
    }
}

fn salt(i: u8) -> B256 {
    B256::repeat_byte(0xa0 + i)
}

macro_rules! scene_or_skip {
    ($params:expr) => {
        match Scene::new($params).await? {
            Some(s) => s,
            None => return Ok(()),
        }
    };
}

#[tokio::test]
async fn honest_audit_pays_fees_and_a_confirmed_fraud_slashes_with_bounty_and_refund(
) -> anyhow::Result<()> {
    // 10% of claims to the pool, 5 per revealed audit.
    let s = scene_or_skip!(Params {
        audit_fee_bps: 1_000,
        audit_fee: 5,
        ..params()
    });
    let p = s.prov.address();
    // Probation: every leaf selected, all to the one verifier of the frozen set.
    assert_eq!(
        s.chain.admin.root(p, s.e).await?.expect("root").audit_ppm,
        1_000_000
    );
    s.at(1).await?;
    // The selecting block is the epoch's first: readable from the next block on.
    assert_eq!(s.ver.assignee(p, s.e, 0).await?, None);
    s.ver.record_beacon(s.e + 1).await?;
    for i in 0..4 {
        assert_eq!(s.ver.assignee(p, s.e, i).await?, Some(s.ver.address()));
    }
    assert_eq!(s.ver.verifier_set_at(s.e).await?, vec![s.ver.address()]);
    let ver_before = s.ver.token_balance(s.ver.address()).await?;
    s.audit_and_reveal().await?;
    // The pass paid its fee now (the pool held 10 from the claim); the failure pays nothing yet.
    assert_eq!(s.ver.token_balance(s.ver.address()).await?, ver_before + 5);
    assert_eq!(s.chain.admin.account(p).await?.clean_audits, 1);
    assert_eq!(s.chain.admin.account(s.ver.address()).await?.open_alarms, 1);
    s.conserved().await?;

    s.at(5).await?;
    let ev = s.evidence(1);
    let sig = s.conf.sign_verdict(&ev)?;
    let payer_before = s.payer.token_balance(s.payer.address()).await?;
    s.ver.fraud_verdict(&ev, s.conf.address(), &sig).await?;
    // 50% of 500 slashed; 20% of that (50) to the verifier with its withheld fee (5, the
    // pool's rest); the receipt's cost (40) to the payer of its channel; the rest burned.
    let pa = s.chain.admin.account(p).await?;
    assert_eq!((pa.stake, pa.frauds), (250, 1));
    assert_eq!(
        s.ver.token_balance(s.ver.address()).await?,
        ver_before + 5 + 50 + 5
    );
    assert_eq!(
        s.payer.token_balance(s.payer.address()).await?,
        payer_before + 40
    );
    assert_eq!(s.chain.admin.burned().await?, 160);
    assert_eq!(
        s.chain
            .admin
            .channel(s.channel)
            .await?
            .expect("ch")
            .refunded,
        40
    );
    assert_eq!(s.chain.admin.account(s.ver.address()).await?.open_alarms, 0);
    s.conserved().await?;
    // The next root is audited in full again (a confirmed fraud).
    let e2 = s.chain.next_epoch().await?;
    s.prov.post_root(e2, B256::repeat_byte(9), 1).await?;
    assert_eq!(
        s.chain.admin.root(p, e2).await?.expect("root").audit_ppm,
        1_000_000
    );
    Ok(())
}

#[tokio::test]
async fn the_beacon_is_unknown_while_roots_are_posted_and_sybils_joining_late_get_nothing(
) -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let prov = chain.funded(2, 1_000).await?;
    let ver = chain.funded(3, 1_000).await?;
    prov.stake(500).await?;
    ver.register_verifier(100).await?;
    let e = chain.next_epoch().await? + 1;
    chain.at_epoch(e).await?;
    prov.post_root(e, B256::repeat_byte(1), 16).await?;
    // Attack: learn (or fix) the selecting beacon while roots of e can still be posted.
    assert_refused!(prov.record_beacon(e + 1).await, "BeaconNotYet");
    assert_eq!(prov.assignee(prov.address(), e, 0).await?, None);
    // Attack: the provider registers sybil verifiers once its root is posted.
    let mut sybils = Vec::new();
    for i in 5..8 {
        let s = chain.funded(i, 1_000).await?;
        s.register_verifier(100).await?;
        sybils.push(s);
    }
    chain.at_epoch(e + 1).await?;
    prov.record_beacon(e + 1).await?;
    let beacon = prov.beacon(e + 1).await?.expect("recorded");
    // Recording again cannot re-draw it.
    prov.record_beacon(e + 1).await?;
    assert_eq!(prov.beacon(e + 1).await?, Some(beacon));
    for i in 0..16 {
        assert_eq!(
            prov.assignee(prov.address(), e, i).await?,
            Some(ver.address())
        );
    }
    for s in &sybils {
        assert_refused!(
            s.commit_audit(prov.address(), e, 0, true, salt(0)).await,
            "NotAssigned"
        );
    }
    // The sybils are in the set for the roots of e + 1 on (one draw each, not targeted).
    assert_eq!(ver.verifier_set_at(e + 1).await?.len(), 4);
    assert_eq!(ver.verifier_set_at(e).await?, vec![ver.address()]);
    Ok(())
}

#[tokio::test]
async fn a_beacon_nobody_recorded_for_256_blocks_is_drawn_once_from_a_later_block(
) -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let e = chain.next_epoch().await? + 1;
    chain.at_epoch(e).await?;
    chain.admin.mine(300).await?;
    chain.admin.record_beacon(e).await?;
    let b = chain.admin.beacon(e).await?.expect("recorded");
    chain.admin.mine(300).await?;
    chain.admin.record_beacon(e).await?;
    assert_eq!(chain.admin.beacon(e).await?, Some(b));
    Ok(())
}

#[tokio::test]
async fn commits_only_by_the_assignee_in_the_window_once() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    // Before the window (the root's own epoch): nobody may commit.
    assert_refused!(
        s.ver.commit_audit(p, s.e, 0, true, salt(0)).await,
        "AuditWindow"
    );
    s.at(1).await?;
    // The confirmer registered in the root's epoch: not assigned.
    assert_refused!(
        s.conf.commit_audit(p, s.e, 0, true, salt(0)).await,
        "NotAssigned"
    );
    // A leaf past the root's count.
    assert_refused!(
        s.ver.commit_audit(p, s.e, 4, true, salt(0)).await,
        "NotAssigned"
    );
    s.ver.commit_audit(p, s.e, 0, true, salt(0)).await?;
    assert_refused!(
        s.ver.commit_audit(p, s.e, 0, false, salt(1)).await,
        "AlreadyCommitted"
    );
    s.at(3).await?;
    assert_refused!(
        s.ver.commit_audit(p, s.e, 2, true, salt(2)).await,
        "AuditWindow"
    );
    Ok(())
}

#[tokio::test]
async fn reveals_without_commit_twice_early_late_or_changed_are_refused() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(1).await?;
    // Reveal without commit.
    assert_refused!(
        s.ver
            .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(0))
            .await,
        "BadReveal"
    );
    s.ver.commit_audit(p, s.e, 0, true, salt(0)).await?;
    s.ver.commit_audit(p, s.e, 1, false, salt(1)).await?;
    s.ver.commit_audit(p, s.e, 2, true, salt(2)).await?;
    // In the commit's own epoch (the outcome could follow others' commitments).
    assert_refused!(
        s.ver
            .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(0))
            .await,
        "AuditWindow"
    );
    s.at(2).await?;
    // Another outcome, another salt, another verifier.
    assert_refused!(
        s.ver
            .reveal_audit(p, s.e, 0, false, B256::ZERO, salt(0))
            .await,
        "BadReveal"
    );
    assert_refused!(
        s.ver
            .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(9))
            .await,
        "BadReveal"
    );
    assert_refused!(
        s.conf
            .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(0))
            .await,
        "BadReveal"
    );
    s.ver
        .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(0))
        .await?;
    // Double reveal.
    assert_refused!(
        s.ver
            .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(0))
            .await,
        "BadReveal"
    );
    s.ver
        .reveal_audit(p, s.e, 1, false, B256::ZERO, salt(1))
        .await?;
    // After the deadline (e + 2 + w).
    s.at(2 + W + 1).await?;
    assert_refused!(
        s.ver
            .reveal_audit(p, s.e, 2, true, s.leaves[2].hash(), salt(2))
            .await,
        "AuditWindow"
    );
    Ok(())
}

#[tokio::test]
async fn one_verifier_alone_cannot_slash_an_honest_provider() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.audit_and_reveal().await?;
    s.at(5).await?;
    let ev = s.evidence(1);
    // Its own signature as confirmer.
    let own = s.ver.sign_verdict(&ev)?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.ver.address(), &own).await,
        "ConflictedVerdict"
    );
    // Its own signature passed off as the confirmer's.
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.conf.address(), &own).await,
        "BadConfirmation"
    );
    // A confirmer that is not a registered verifier (the payer).
    let by_payer = s.payer.sign_verdict(&ev)?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.payer.address(), &by_payer).await,
        "NotVerifier"
    );
    // The provider cannot be its own confirmer (nor anyone's).
    let by_prov = s.prov.sign_verdict(&ev)?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, p, &by_prov).await,
        "ConflictedVerdict"
    );
    // The confirmer's signature over another leaf does not confirm this one.
    let other = s.conf.sign_verdict(&s.evidence(2))?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.conf.address(), &other).await,
        "BadConfirmation"
    );
    // The leaf the verifier passed (it revealed no failure there), with a real confirmation.
    let passed = s.evidence(0);
    let sig = s.conf.sign_verdict(&passed)?;
    assert_refused!(
        s.ver.fraud_verdict(&passed, s.conf.address(), &sig).await,
        "UnrevealedVerdict"
    );
    // The confirmer itself never committed: it cannot bring a verdict, even co-signed.
    let sig = s.ver.sign_verdict(&ev)?;
    assert_refused!(
        s.conf.fraud_verdict(&ev, s.ver.address(), &sig).await,
        "UnrevealedVerdict"
    );
    assert_eq!(s.chain.admin.account(p).await?.stake, 500);
    Ok(())
}

#[tokio::test]
async fn a_verdict_cannot_redirect_or_inflate_the_refund() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    s.audit_and_reveal().await?;
    // Another channel of the same provider, funded by another payer.
    let other_payer = s.chain.funded(6, 1_000).await?;
    let (other, _) = other_payer.open_channel(s.prov.address(), 500, 30).await?;
    let v = other_payer.sign_voucher(other, 500)?;
    s.prov.claim(other, 500, &v).await?;
    s.at(5).await?;
    let honest = s.evidence(1);
    for forged in [
        FraudEvidence {
            leaf: ReceiptLeaf {
                channel: other,
                ..honest.leaf
            },
            ..honest.clone()
        },
        FraudEvidence {
            leaf: ReceiptLeaf {
                cost: 400,
                ..honest.leaf
            },
            ..honest.clone()
        },
        // Another leaf's path.
        FraudEvidence {
            proof: s.evidence(2).proof,
            ..honest.clone()
        },
    ] {
        let sig = s.conf.sign_verdict(&forged)?;
        assert_refused!(
            s.ver.fraud_verdict(&forged, s.conf.address(), &sig).await,
            "BadReceiptProof"
        );
    }
    let sig = s.conf.sign_verdict(&honest)?;
    let before = other_payer.token_balance(other_payer.address()).await?;
    s.ver.fraud_verdict(&honest, s.conf.address(), &sig).await?;
    assert_eq!(
        other_payer.token_balance(other_payer.address()).await?,
        before
    );
    assert_eq!(
        s.chain
            .admin
            .channel(s.channel)
            .await?
            .expect("ch")
            .refunded,
        40
    );
    // Each leaf is judged once.
    assert_refused!(
        s.ver.fraud_verdict(&honest, s.conf.address(), &sig).await,
        "AlreadyJudged"
    );
    s.conserved().await?;
    Ok(())
}

#[tokio::test]
async fn a_receipt_naming_another_providers_channel_refunds_nothing() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let payer = chain.funded(1, 1_000).await?;
    let prov = chain.funded(2, 1_000).await?;
    let ver = chain.funded(3, 1_000).await?;
    let conf = chain.funded(4, 1_000).await?;
    let elsewhere = chain.funded(5, 1_000).await?;
    prov.stake(500).await?;
    ver.register_verifier(100).await?;
    conf.register_verifier(100).await?;
    // A channel of the payer to another provider: the cheater names it in its own leaf.
    let (foreign, _) = payer.open_channel(elsewhere.address(), 300, 30).await?;
    let e = chain.next_epoch().await? + 1;
    chain.at_epoch(e).await?;
    let leaves = vec![ReceiptLeaf {
        receipt: B256::repeat_byte(1),
        channel: foreign,
        cost: 40,
    }];
    prov.post_root(e, receipt_root(&leaves), 1).await?;
    chain.at_epoch(e + 1).await?;
    prov.record_beacon(e + 1).await?;
    // Two verifiers in the frozen set: whoever is assigned audits, the other confirms.
    let assigned = prov
        .assignee(prov.address(), e, 0)
        .await?
        .expect("selected");
    let (a, c) = if assigned == ver.address() {
        (&ver, &conf)
    } else {
        (&conf, &ver)
    };
    a.commit_audit(prov.address(), e, 0, false, salt(0)).await?;
    chain.at_epoch(e + 2).await?;
    a.reveal_audit(prov.address(), e, 0, false, B256::ZERO, salt(0))
        .await?;
    chain.at_epoch(e + 5).await?;
    let ev = FraudEvidence {
        provider: prov.address(),
        epoch: e,
        index: 0,
        leaf: leaves[0],
        proof: vec![],
    };
    let sig = c.sign_verdict(&ev)?;
    assert_refused!(
        a.fraud_verdict(&ev, c.address(), &sig).await,
        "NotChannelProvider"
    );
    Ok(())
}

#[tokio::test]
async fn verdicts_only_in_their_window() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    s.audit_and_reveal().await?;
    let ev = s.evidence(1);
    let sig = s.conf.sign_verdict(&ev)?;
    // The plant epoch (e + 3 + w): a canary may still open a plant here.
    s.at(3 + W).await?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.conf.address(), &sig).await,
        "AuditWindow"
    );
    s.at(4 + W + X).await?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.conf.address(), &sig).await,
        "AuditWindow"
    );
    Ok(())
}

#[tokio::test]
async fn an_unconfirmed_fraud_claim_costs_its_verifier() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.audit_and_reveal().await?;
    // The verifier leaves right after accusing: its stake waits for the accusation.
    s.ver.unstake(200).await?;
    assert_refused!(s.ver.expire_alarm(p, s.e, 0).await, "NoAlarm");
    s.at(3 + W + X).await?;
    assert_refused!(s.ver.expire_alarm(p, s.e, 1).await, "AlarmNotDue");
    s.at(4 + W + X).await?;
    // Nothing confirmed it: anyone charges it (1% of 200, burned).
    s.payer.expire_alarm(p, s.e, 1).await?;
    let a = s.chain.admin.account(s.ver.address()).await?;
    assert_eq!((a.stake + a.unbonding, a.open_alarms), (198, 0));
    assert_eq!(s.chain.admin.burned().await?, 2);
    assert_refused!(s.payer.expire_alarm(p, s.e, 1).await, "NoAlarm");
    // The provider it accused keeps its stake.
    assert_eq!(s.chain.admin.account(p).await?.stake, 500);
    s.conserved().await?;
    Ok(())
}

#[tokio::test]
async fn withdrawal_waits_for_open_alarms() -> anyhow::Result<()> {
    // The verifier unstakes as it commits: its release comes after the alarm is due, and
    // nobody has charged the alarm yet.
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(1).await?;
    s.ver.commit_audit(p, s.e, 1, false, salt(1)).await?;
    s.ver.unstake(200).await?;
    s.at(2).await?;
    s.ver
        .reveal_audit(p, s.e, 1, false, B256::ZERO, salt(1))
        .await?;
    s.at(1 + 8).await?;
    assert_refused!(s.ver.withdraw().await, "AlarmsOpen");
    s.prov.expire_alarm(p, s.e, 1).await?;
    s.ver.withdraw().await?;
    Ok(())
}

#[tokio::test]
async fn no_commitment_is_never_guilty() -> anyhow::Result<()> {
    // A verifier that cannot judge commits nothing: no verdict, no charge, no slash.
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(5).await?;
    let ev = s.evidence(1);
    let sig = s.conf.sign_verdict(&ev)?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.conf.address(), &sig).await,
        "UnrevealedVerdict"
    );
    s.at(4 + W + X).await?;
    assert_refused!(s.payer.expire_alarm(p, s.e, 1).await, "NoAlarm");
    assert_eq!(s.chain.admin.account(p).await?.stake, 500);
    assert_eq!(s.chain.admin.account(s.ver.address()).await?.stake, 200);
    Ok(())
}

/// Plants: `planter` commits for the provider's leaf in the root's epoch.
async fn plant_at(
    s: &Scene,
    planter: &SettlementClient,
    index: u64,
    sa: B256,
) -> anyhow::Result<()> {
    let c = planter.plant_commitment(s.prov.address(), s.e, index, sa)?;
    planter.plant(c).await?;
    Ok(())
}

#[tokio::test]
async fn a_caught_plant_pays_its_verifier_and_never_slashes_the_canary() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    // Committed from an unlinked key (the payer here), in the root's epoch.
    plant_at(&s, &s.payer, 1, salt(7)).await?;
    assert_eq!(s.chain.admin.plant_bonds().await?, 50);
    s.conserved().await?;
    s.audit_and_reveal().await?;
    let ver_before = s.ver.token_balance(s.ver.address()).await?;
    s.at(3 + W).await?;
    s.prov.reveal_plant(s.e, 1, salt(7), None).await?;
    assert_eq!(s.ver.token_balance(s.ver.address()).await?, ver_before + 50);
    let leaf = s.chain.admin.leaf_audit(s.prov.address(), s.e, 1).await?;
    assert!(leaf.judged && !leaf.alarm);
    s.at(5).await?;
    let ev = s.evidence(1);
    let sig = s.conf.sign_verdict(&ev)?;
    assert_refused!(
        s.ver.fraud_verdict(&ev, s.conf.address(), &sig).await,
        "AlreadyJudged"
    );
    assert_eq!(s.chain.admin.account(s.prov.address()).await?.stake, 500);
    s.conserved().await?;
    Ok(())
}

#[tokio::test]
async fn plants_open_only_by_their_provider_once_in_the_plant_epoch() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    plant_at(&s, &s.payer, 0, salt(7)).await?;
    plant_at(&s, &s.payer, 2, salt(8)).await?;
    // The same commitment twice.
    let c = s
        .payer
        .plant_commitment(s.prov.address(), s.e, 0, salt(7))?;
    assert_refused!(s.payer.plant(c).await, "PlantExists");
    // A plant committed after the root's epoch (the beacon may be known).
    s.at(1).await?;
    plant_at(&s, &s.payer, 3, salt(9)).await?;
    s.audit_and_reveal().await?;
    // Before the plant epoch.
    assert_refused!(
        s.prov.reveal_plant(s.e, 0, salt(7), None).await,
        "AuditWindow"
    );
    s.at(3 + W).await?;
    // The planter key (not the provider) and a verifier try to open it.
    assert_refused!(
        s.payer.reveal_plant(s.e, 0, salt(7), None).await,
        "BadReveal"
    );
    assert_refused!(s.ver.reveal_plant(s.e, 0, salt(7), None).await, "BadReveal");
    assert_refused!(
        s.prov.reveal_plant(s.e, 3, salt(9), None).await,
        "BadReveal"
    );
    s.prov.reveal_plant(s.e, 0, salt(7), None).await?;
    // One plant per root.
    assert_refused!(
        s.prov.reveal_plant(s.e, 2, salt(8), None).await,
        "OnePlantPerRoot"
    );
    Ok(())
}

#[tokio::test]
async fn a_lazy_verifier_is_slashed_only_with_a_third_verifiers_confirmation() -> anyhow::Result<()>
{
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    plant_at(&s, &s.payer, 0, salt(7)).await?;
    s.audit_and_reveal().await?; // leaf 0 passed: the lazy outcome.
    s.at(3 + W).await?;
    // The canary's key alone, or the lazy verifier confirming itself, or a non-verifier.
    let own = s.ver.sign_plant_confirmation(p, s.e, 0)?;
    assert_refused!(
        s.prov
            .reveal_plant(s.e, 0, salt(7), Some((s.ver.address(), own)))
            .await,
        "ConflictedVerdict"
    );
    let by_payer = s.payer.sign_plant_confirmation(p, s.e, 0)?;
    assert_refused!(
        s.prov
            .reveal_plant(s.e, 0, salt(7), Some((s.payer.address(), by_payer)))
            .await,
        "NotVerifier"
    );
    let forged = s.prov.sign_plant_confirmation(p, s.e, 0)?;
    assert_refused!(
        s.prov
            .reveal_plant(s.e, 0, salt(7), Some((s.conf.address(), forged)))
            .await,
        "BadConfirmation"
    );
    let sig = s.conf.sign_plant_confirmation(p, s.e, 0)?;
    let planter_before = s.payer.token_balance(s.payer.address()).await?;
    s.prov
        .reveal_plant(s.e, 0, salt(7), Some((s.conf.address(), sig)))
        .await?;
    // 50% of the lazy verifier's 200, burned; the bond back to the planter.
    assert_eq!(s.chain.admin.account(s.ver.address()).await?.stake, 100);
    assert_eq!(
        s.payer.token_balance(s.payer.address()).await?,
        planter_before + 50
    );
    s.conserved().await?;
    Ok(())
}

#[tokio::test]
async fn a_passed_plant_without_confirmation_slashes_nobody() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    plant_at(&s, &s.payer, 0, salt(7)).await?;
    s.audit_and_reveal().await?;
    s.at(3 + W).await?;
    s.prov.reveal_plant(s.e, 0, salt(7), None).await?;
    assert_eq!(s.chain.admin.account(s.ver.address()).await?.stake, 200);
    Ok(())
}

/// Gas of the audit operations on Anvil (cancun), printed for docs/settlement.md
/// (`cargo test --release -p agora-evm --test it gas -- --nocapture`), with ceilings.
#[tokio::test]
async fn gas_of_audit_operations() -> anyhow::Result<()> {
    let s = scene_or_skip!(Params {
        audit_fee_bps: 1_000,
        audit_fee: 5,
        ..params()
    });
    let p = s.prov.address();
    let mut rows: Vec<(&str, u64, u64)> = Vec::new();
    let c = s.payer.plant_commitment(p, s.e, 2, salt(7))?;
    s.payer.ensure_allowance(50).await?;
    rows.push(("plant", s.payer.plant(c).await?.gas_used, 125_000));
    s.at(1).await?;
    rows.push((
        "record beacon",
        s.ver.record_beacon(s.e + 1).await?.gas_used,
        52_000,
    ));
    rows.push((
        "commit audit",
        s.ver
            .commit_audit(p, s.e, 1, false, salt(1))
            .await?
            .gas_used,
        100_000,
    ));
    s.ver.commit_audit(p, s.e, 0, true, salt(0)).await?;
    s.ver.commit_audit(p, s.e, 3, false, salt(3)).await?;
    s.at(2).await?;
    rows.push((
        "reveal audit (passed on probation, fee paid)",
        s.ver
            .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(0))
            .await?
            .gas_used,
        // On probation the pass also records its receipt as credited (a new slot).
        110_000,
    ));
    rows.push((
        "reveal audit (failed)",
        s.ver
            .reveal_audit(p, s.e, 1, false, B256::ZERO, salt(1))
            .await?
            .gas_used,
        48_000,
    ));
    s.ver
        .reveal_audit(p, s.e, 3, false, B256::ZERO, salt(3))
        .await?;
    s.at(3 + W).await?;
    rows.push((
        "reveal plant",
        s.prov.reveal_plant(s.e, 2, salt(7), None).await?.gas_used,
        85_000,
    ));
    s.at(5).await?;
    let ev = s.evidence(1);
    let sig = s.conf.sign_verdict(&ev)?;
    rows.push((
        "fraud verdict (slash, bounty, refund)",
        s.ver
            .fraud_verdict(&ev, s.conf.address(), &sig)
            .await?
            .gas_used,
        172_000,
    ));
    s.at(4 + W + X).await?;
    rows.push((
        "expire alarm (false-alarm slash)",
        s.payer.expire_alarm(p, s.e, 3).await?.gas_used,
        55_000,
    ));
    let e2 = s.chain.next_epoch().await?;
    rows.push((
        "post receipt root (first of its epoch: records the beacon)",
        s.prov
            .post_root(e2, B256::repeat_byte(1), 1_000)
            .await?
            .gas_used,
        110_000,
    ));
    let joiner = s.chain.funded(7, 1_000).await?;
    rows.push((
        "register verifier (copies the set of 2)",
        joiner.register_verifier(100).await?.gas_used,
        295_000,
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

/// A provider on probation re-posts an audited honest receipt under late roots (audited in
/// full) to collect clean audits without serving anyone: a late root's passes earn no
/// probation credit, as on the ledger.
#[tokio::test]
async fn passes_under_a_late_root_earn_no_probation_credit() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(1).await?;
    // The same honest leaf, re-posted alone under a late root of the next epoch.
    let again = vec![s.leaves[0]];
    s.prov
        .post_late_root(s.e + 1, receipt_root(&again), 1)
        .await?;
    s.ver.record_beacon(s.e + 1).await?;
    s.ver.commit_audit(p, s.e, 0, true, salt(0)).await?;
    s.at(2).await?;
    s.ver.record_beacon(s.e + 2).await?;
    s.ver
        .reveal_audit(p, s.e, 0, true, s.leaves[0].hash(), salt(0))
        .await?;
    // The late root's epoch froze both verifiers: the beacon picks one.
    let who = s
        .ver
        .assignee(p, s.e + 1, 0)
        .await?
        .expect("a late leaf is selected");
    let late = if who == s.ver.address() {
        &s.ver
    } else {
        &s.conf
    };
    late.commit_audit(p, s.e + 1, 0, true, salt(1)).await?;
    s.at(3).await?;
    late.reveal_audit(p, s.e + 1, 0, true, s.leaves[0].hash(), salt(1))
        .await?;
    // The root of its own epoch counted; the late root's pass did not.
    assert_eq!(s.chain.admin.account(p).await?.clean_audits, 1);
    s.conserved().await?;
    Ok(())
}

/// The double count on chain: a provider on probation re-posts its honest receipts under its
/// (not late) root of the next epoch, where either verifier of the frozen set may audit them
/// (the contract cannot tell whether one verifier met a receipt twice). Each reveal names the
/// leaf it judged and a receipt earns probation credit once, so each counts once (before the
/// rule: 8).
#[tokio::test]
async fn a_receipt_under_two_consecutive_roots_earns_probation_credit_once() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(1).await?;
    // The four receipts of epoch `e`, again under the root of `e + 1` (which may hold them).
    s.prov
        .post_root(s.e + 1, receipt_root(&s.leaves), 4)
        .await?;
    s.ver.record_beacon(s.e + 1).await?;
    for i in 0..4u8 {
        s.ver
            .commit_audit(p, s.e, u64::from(i), true, salt(i))
            .await?;
    }
    s.at(2).await?;
    s.ver.record_beacon(s.e + 2).await?;
    for i in 0..4u8 {
        s.ver
            .reveal_audit(
                p,
                s.e,
                u64::from(i),
                true,
                s.leaves[usize::from(i)].hash(),
                salt(i),
            )
            .await?;
    }
    // The root of `e + 1` froze both verifiers: the beacon picks one per leaf.
    let mut auditors = Vec::new();
    for i in 0..4u8 {
        let who = s
            .ver
            .assignee(p, s.e + 1, u64::from(i))
            .await?
            .expect("a probation leaf is selected");
        let v = if who == s.ver.address() {
            &s.ver
        } else {
            &s.conf
        };
        v.commit_audit(p, s.e + 1, u64::from(i), true, salt(4 + i))
            .await?;
        auditors.push(v);
    }
    s.at(3).await?;
    for (i, v) in auditors.into_iter().enumerate() {
        v.reveal_audit(
            p,
            s.e + 1,
            i as u64,
            true,
            s.leaves[i].hash(),
            salt(4 + i as u8),
        )
        .await?;
    }
    assert_eq!(
        s.chain.admin.account(p).await?.clean_audits,
        4,
        "receipts under two consecutive roots counted twice toward probation"
    );
    s.conserved().await?;
    Ok(())
}

/// The honest case on chain: the production provider posts its root of epoch r during r, so
/// most receipts of r sit only under the root of r + 1. There they earn their probation
/// credit (a rule crediting only the root of the receipt's own epoch gave them none).
#[tokio::test]
async fn receipts_posted_only_under_the_next_root_earn_probation_credit() -> anyhow::Result<()> {
    let s = scene_or_skip!(params());
    let p = s.prov.address();
    s.at(1).await?;
    // Two receipts served late in `e`, first posted under the root of `e + 1`.
    let missed: Vec<ReceiptLeaf> = (0..2u8)
        .map(|i| ReceiptLeaf {
            receipt: B256::repeat_byte(0x10 + i),
            channel: s.channel,
            cost: 10,
        })
        .collect();
    s.prov.post_root(s.e + 1, receipt_root(&missed), 2).await?;
    s.ver.record_beacon(s.e + 1).await?;
    s.at(2).await?;
    s.ver.record_beacon(s.e + 2).await?;
    let mut auditors = Vec::new();
    for i in 0..2u8 {
        let who = s
            .ver
            .assignee(p, s.e + 1, u64::from(i))
            .await?
            .expect("a probation leaf is selected");
        let v = if who == s.ver.address() {
            &s.ver
        } else {
            &s.conf
        };
        v.commit_audit(p, s.e + 1, u64::from(i), true, salt(i))
            .await?;
        auditors.push(v);
    }
    s.at(3).await?;
    for (i, v) in auditors.into_iter().enumerate() {
        v.reveal_audit(p, s.e + 1, i as u64, true, missed[i].hash(), salt(i as u8))
            .await?;
    }
    assert_eq!(
        s.chain.admin.account(p).await?.clean_audits,
        2,
        "honest receipts under the next root earned no probation credit"
    );
    s.conserved().await?;
    Ok(())
}
