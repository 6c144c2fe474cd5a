//! The ledger lets any assigned verifier demand a leaf's material and any payer challenge a
//! receipt's inclusion; an unanswered demand or challenge slashes the provider. Against a real
//! ledger node: a provider that does not follow the ledger is slashed for both although it
//! is honest (the attack), one running its duty loop answers both and keeps its stake, and a
//! receipt it really left out of its roots is still slashed.

use std::sync::Arc;
use std::time::Duration;

use agora_core::{Amount, Hash32, Keypair};
use agora_ledger::client::Client;
use agora_ledger::tx::channel_id;
use agora_ledger::{ClientError, Event, Fault, Params, Tx, TxBody, Verdict, Windows};
use agora_net::protocol::Material;
use agora_provider::duties::{material_hash, Duties};
use agora_provider::receipts::ReceiptLog;
use agora_settlement::open::{Opened, SettlementTarget};
use agora_wire::{Receipt, Sampling, SignedReceipt, MICROS_PER_UNIT};

mod common;
use common::{ledger, CHAIN};

fn send(
    l: &Client,
    k: &Keypair,
    body: TxBody,
) -> Result<agora_ledger::api::SubmitReceipt, ClientError> {
    let nonce = l.next_nonce(&k.account())?;
    l.submit(
        &Tx {
            chain_id: CHAIN,
            from: k.account(),
            nonce,
            body,
        }
        .sign(k),
    )
}

fn served(provider: &Keypair, payer: &Keypair, channel: Hash32, i: u8, epoch: u64) -> Material {
    let (prompt, output, fingerprint) = (vec![u32::from(i), 1, 2], vec![7, 8], vec![i, 3]);
    let receipt = Receipt {
        chain_id: CHAIN,
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
        cost_micros: 50 * MICROS_PER_UNIT,
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

/// What happened to the provider.
struct Outcome {
    demand_answered: bool,
    withheld: Result<Vec<Event>, ClientError>,
    inclusion_proven: Vec<Hash32>,
    omission_slashed: Vec<Hash32>,
    kept: SignedReceipt,
    omitted: SignedReceipt,
    stake_before: Amount,
    stake_after: Amount,
}

/// An honest provider serves two receipts in epoch `R` and posts both under its root; a third
/// one it serves it leaves out. The assigned verifier demands leaf 0, the payer challenges a
/// posted receipt and the omitted one; the epochs run past every deadline into the verdict
/// window, where the verifier asks for `Withheld` on leaf 0.
async fn scenario(answer: bool) -> Outcome {
    let dir = tempfile::tempdir().expect("tmp");
    let k: Vec<Keypair> = (1..=5u8).map(|i| Keypair::from_seed([i; 32])).collect();
    let (seq, provider, payer, v1, v2) = (&k[0], &k[1], &k[2], &k[3], &k[4]);
    let url = ledger(dir.path(), seq, &[provider, payer, v1, v2], 1_000_000).await;
    let l = Client::new(&url).expect("client");
    let log = Arc::new(ReceiptLog::open(&dir.path().join("receipts.redb")).expect("log"));
    let settlement = Opened::open(&SettlementTarget::Ledger { url: url.clone() }, provider)
        .await
        .expect("settlement")
        .provider();
    let duties = answer.then(|| {
        Duties::new(
            settlement,
            log.clone(),
            Some(dir.path().join("duties.height")),
        )
        .spawn()
        .expect("duties")
    });
    let k = k.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (seq, provider, payer, v1, v2) = (&k[0], &k[1], &k[2], &k[3], &k[4]);
        let advance = || send(&l, seq, TxBody::AdvanceEpoch).expect("advance");
        let epoch = || l.status().expect("status").epoch;
        send(
            &l,
            provider,
            TxBody::Stake {
                amount: Amount::new(1000),
            },
        )
        .expect("stake");
        for v in [v1, v2] {
            send(
                &l,
                v,
                TxBody::RegisterVerifier {
                    stake: Amount::new(100),
                },
            )
            .expect("register");
        }
        let nonce = l.next_nonce(&payer.account()).expect("nonce");
        let channel = channel_id(CHAIN, &payer.account(), nonce);
        send(
            &l,
            payer,
            TxBody::OpenChannel {
                provider: provider.account(),
                amount: Amount::new(500),
                timeout_epochs: 20,
            },
        )
        .expect("channel");
        // The verifier set is frozen at the start of the root's epoch.
        advance();
        let r = epoch();
        let (a, b, left_out) = (
            served(provider, payer, channel, 1, r),
            served(provider, payer, channel, 2, r),
            served(provider, payer, channel, 3, r),
        );
        log.record(&a).expect("record");
        log.record(&b).expect("record");
        let batch = log.pending_batch().expect("batch").expect("some");
        send(
            &l,
            provider,
            TxBody::PostReceiptRoot {
                epoch: r,
                root: batch.root,
                receipts: 2,
            },
        )
        .expect("root");
        log.mark_posted(&batch, r).expect("posted");
        let stake_before = l
            .account(&provider.account())
            .expect("acct")
            .expect("some")
            .stake;

        advance();
        let plan = l
            .audit_plan(&provider.account(), r)
            .expect("plan")
            .expect("some");
        let (index, by) = plan.leaves[0];
        let (demander, confirmer) = if by == v1.account() {
            (v1, v2)
        } else {
            (v2, v1)
        };
        send(
            &l,
            demander,
            TxBody::DemandMaterial {
                provider: provider.account(),
                epoch: r,
                index,
            },
        )
        .expect("demand");
        advance();
        for receipt in [&b.receipt, &left_out.receipt] {
            send(
                &l,
                payer,
                TxBody::ChallengeInclusion {
                    receipt: receipt.clone(),
                },
            )
            .expect("challenge");
        }
        // The epoch stays open until the duty loop answered both (or a generous timeout).
        let answered = || {
            let ev = l.events(1, Duration::ZERO).expect("events");
            let ev = || ev.iter().flat_map(|b| &b.txs).flat_map(|t| &t.events);
            ev().any(|e| matches!(e, Event::MaterialAnswered { .. }))
                && ev().any(|e| matches!(e, Event::InclusionProven { .. }))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(if answer { 60 } else { 2 });
        while !answered() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let params = Params::default();
        let verdicts = Windows::of(&params, r).expect("windows").verdict.0;
        let mut events = vec![];
        while epoch() < verdicts {
            events.extend(advance().events);
        }
        let v = Verdict {
            chain_id: CHAIN,
            provider: provider.account(),
            epoch: r,
            index,
            fault: Fault::Withheld,
        };
        let withheld = send(
            &l,
            demander,
            TxBody::AuditVerdict {
                confirmer_sig: v.sign(confirmer),
                verdict: v,
                confirmer: confirmer.account(),
            },
        )
        .map(|r| r.events);
        let all = l.events(1, Duration::ZERO).expect("events");
        let all: Vec<Event> = all
            .into_iter()
            .flat_map(|b| b.txs)
            .flat_map(|t| t.events)
            .collect();
        let demand_answered = all.iter().any(|e| {
            matches!(e, Event::MaterialAnswered { index: i, material, .. }
                if *i == index && *material == material_hash(if index == 0 { &a } else { &b }))
        });
        let inclusion_proven = all
            .iter()
            .filter_map(|e| match e {
                Event::InclusionProven { receipt, .. } => Some(*receipt),
                _ => None,
            })
            .collect();
        let omission_slashed = all
            .iter()
            .filter_map(|e| match e {
                Event::OmissionSlashed { receipt, .. } => Some(*receipt),
                _ => None,
            })
            .collect();
        let stake_after = l
            .account(&provider.account())
            .expect("acct")
            .expect("some")
            .stake;
        Outcome {
            demand_answered,
            withheld,
            inclusion_proven,
            omission_slashed,
            kept: b.receipt,
            omitted: left_out.receipt,
            stake_before,
            stake_after,
        }
    })
    .await
    .expect("scenario");
    drop(duties);
    result
}

/// The attack, against a provider that does not follow the ledger: a demand and a challenge
/// of receipts it did post, left unanswered, slash it although it is honest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_demand_and_challenge_slash_an_honest_provider() {
    let o = scenario(false).await;
    assert!(!o.demand_answered);
    let slashed = o.withheld.expect("Withheld accepted");
    assert!(
        slashed.iter().any(|e| matches!(e, Event::Slashed { .. })),
        "{slashed:?}"
    );
    assert!(o.omission_slashed.contains(&o.kept.hash()));
    assert!(o.stake_after < o.stake_before);
}

/// The fix: the provider's duty loop answers the demand with the leaf's receipt, path and
/// material hash, and proves the challenged receipt under its root: `Withheld` is refused
/// and the posted receipt is not slashed. The receipt it really left out cannot be proven and
/// is slashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_provider_answers_demands_and_challenges_and_keeps_its_stake() {
    let o = scenario(true).await;
    assert!(o.demand_answered, "the demand was answered");
    match &o.withheld {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, "demand"),
        other => panic!("Withheld must be refused, got {other:?}"),
    }
    assert_eq!(o.inclusion_proven, vec![o.kept.hash()]);
    assert_eq!(o.omission_slashed, vec![o.omitted.hash()]);
    // Only the omission cost it: half its stake once (slash_bps), not for the honest leaves.
    let half = Amount::new(o.stake_before.units() / 2);
    assert_eq!(o.stake_after, half);
}
