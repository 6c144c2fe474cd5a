//! The verifier's own checks, with in-process fakes for its neighbours (the ledger's
//! registry and the provider's answers) and the shipped model: a malicious first verifier
//! cannot get an honest provider's fraud confirmed, "cannot judge" is never a fault, and
//! receipts that are foreign, repeated or for another chain never pass.

use super::*;
use agora_model::generate::GenerateOptions;
use agora_model::{LoadedModel, SamplingParams};
use agora_net::protocol::{
    fingerprint_hash, tokens_hash, NextLeaf, Receipt, Sampling, SignedReceipt,
};
use std::ops::ControlFlow;
use std::path::Path;

const CHAIN: u64 = 1;
const EPOCH: u64 = 4;

fn shipped() -> LoadedModel {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/agora-shakespeare");
    agora_model::load(&path, &LoadOptions::default()).expect("load shipped model")
}

struct FakeLedger(Vec<AccountId>);

impl RegistryView for FakeLedger {
    fn is_verifier(&self, who: AccountId) -> BoxFuture<'_, Result<bool, String>> {
        let yes = self.0.contains(&who);
        Box::pin(async move { Ok(yes) })
    }
}

/// A ledger settlement that cannot be reached (the tests feed the verifier's events
/// themselves), for the key of seed 5.
fn offline_settlement() -> Arc<dyn VerifierSettlement> {
    Arc::new(agora_settlement::ledger::LedgerSettlement::new(
        agora_ledger::client::Client::new("http://127.0.0.1:1").expect("client"),
        Keypair::from_seed([5; 32]),
        CHAIN,
    ))
}

/// Answers every fetch with what the test set.
struct FakeSource(Mutex<Fetched>);

impl MaterialSource for FakeSource {
    fn fetch(&self, _: AccountId, _: u64, _: u64, _: Option<Hash32>) -> BoxFuture<'_, Fetched> {
        let f = lock(&self.0).clone();
        Box::pin(async move { f })
    }
}

fn receipt(
    provider: &Keypair,
    model: Hash32,
    prompt: &[u32],
    output: &[u32],
    print: &[u8],
) -> Receipt {
    Receipt {
        chain_id: CHAIN,
        epoch: EPOCH,
        request_id: [100; 16],
        provider: provider.account(),
        payer: Keypair::from_seed([3; 32]).account(),
        channel: Hash32::of(b"channel"),
        model,
        prompt_hash: tokens_hash(prompt),
        output_hash: tokens_hash(output),
        prompt_tokens: prompt.len() as u32,
        resumed_tokens: 0,
        output_tokens: output.len() as u32,
        sampling: Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 11,
            ..Default::default()
        },
        fingerprint_hash: fingerprint_hash(print),
        price_in: Amount::new(1_000_000),
        price_out: Amount::new(2_000_000),
        cost_micros: 5_000_000,
        started_ms: 1,
        finished_ms: 2,
    }
}

/// One root of three leaves by `provider`, in request id order; leaf 1 is `middle`.
struct Root {
    leaves: Vec<SignedReceipt>,
    posted: PostedRoot,
    middle: Material,
}

impl Root {
    fn new(provider: &Keypair, middle: Material) -> Root {
        let filler = |id: u8| {
            let mut r = middle.receipt.receipt.clone();
            r.request_id = [id; 16];
            r.sign(provider)
        };
        let leaves = vec![filler(1), middle.receipt.clone(), filler(200)];
        let hashes: Vec<Hash32> = leaves.iter().map(SignedReceipt::hash).collect();
        Root {
            posted: PostedRoot {
                root: agora_core::merkle::root(&hashes),
                receipts: 3,
                full_audit: false,
            },
            leaves,
            middle,
        }
    }

    fn proof(&self, i: usize) -> Vec<Hash32> {
        let hashes: Vec<Hash32> = self.leaves.iter().map(SignedReceipt::hash).collect();
        agora_core::merkle::proof(&hashes, i).expect("proof")
    }

    /// What an honest provider answers for leaf 1.
    fn answer(&self) -> Fetched {
        Fetched::Material {
            material: Box::new(self.middle.clone()),
            proof: self.proof(1),
            next: Some(Box::new(NextLeaf {
                receipt: self.leaves[2].clone(),
                proof: self.proof(2),
            })),
        }
    }

    fn fraud(&self) -> Fault {
        Fault::Fraud {
            receipt: self.middle.receipt.clone(),
            proof: self.proof(1),
        }
    }
}

struct Fixture {
    model: Arc<LoadedModel>,
    model_id: Hash32,
    provider: Keypair,
    requester: Keypair,
    honest: Material,
}

static MODEL: std::sync::OnceLock<Arc<LoadedModel>> = std::sync::OnceLock::new();

fn fixture() -> Fixture {
    let model = MODEL.get_or_init(|| Arc::new(shipped())).clone();
    let model_id = Hash32::from_slice(&model.id.0).expect("id");
    let provider = Keypair::from_seed([2; 32]);
    let prompt = model.tokenizer.encode("ROMEO.\nWhat light").expect("enc");
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 11,
            ..Default::default()
        },
        max_tokens: 24,
        stop: vec![],
        stop_at_eos: false,
        resume: vec![],
    };
    let (g, print) =
        agora_verify::generate_fingerprinted(&model, &prompt, &opts, |_| ControlFlow::Continue(()))
            .expect("generate");
    let fingerprint = print.to_bytes();
    let honest = Material {
        receipt: receipt(&provider, model_id, &prompt, &g.tokens, &fingerprint).sign(&provider),
        prompt,
        resumed: vec![],
        output: g.tokens,
        fingerprint,
    };
    Fixture {
        model,
        model_id,
        provider,
        requester: Keypair::from_seed([7; 32]),
        honest,
    }
}

/// A confirmer (verifier key seed 5) that audits `models`, hears the provider answer
/// `fetched`, and has read from the ledger: `root` posted, and the requester's failed
/// reveal of leaf 1 (when `revealed`).
async fn confirmer(
    f: &Fixture,
    root: &Root,
    with_model: bool,
    fetched: Fetched,
    revealed: bool,
) -> (Arc<Shared>, Arc<FakeSource>) {
    let (node, _gossip) = Node::start(NetConfig {
        key_seed: [9; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap: vec![],
        mdns: false,
        topics: vec![],
    })
    .await
    .expect("node");
    let cfg = offline_config([9; 32]);
    let models = if with_model {
        HashMap::from([(f.model_id, f.model.clone())])
    } else {
        HashMap::new()
    };
    let view = Arc::new(FakeLedger(vec![
        f.requester.account(),
        Keypair::from_seed([5; 32]).account(),
    ]));
    let source = Arc::new(FakeSource(Mutex::new(fetched)));
    let mut shared = Shared::new(
        cfg,
        Keypair::from_seed([5; 32]),
        offline_settlement(),
        view,
        source.clone(),
        node,
        models,
        Peers::default(),
    );
    shared.reveal_wait = Duration::from_millis(200);
    let shared = Arc::new(shared);
    shared.note_event(&VerifierEvent::RootPosted {
        provider: f.provider.account(),
        epoch: EPOCH,
        root: root.posted.root,
        receipts: root.posted.receipts,
    });
    if revealed {
        shared.note_event(&VerifierEvent::AuditRevealed {
            verifier: f.requester.account(),
            provider: f.provider.account(),
            epoch: EPOCH,
            index: 1,
            passed: false,
            tx: Hash32::of(b"reveal"),
        });
    }
    (shared, source)
}

fn request(f: &Fixture, fault: Fault, hint: Option<Material>) -> ConfirmRequest {
    ConfirmRequest {
        verdict: Verdict {
            chain_id: CHAIN,
            provider: f.provider.account(),
            epoch: EPOCH,
            index: 1,
            fault,
        },
        material: hint.map(Box::new),
    }
}

/// The attack that worked before: a first verifier tampers an honest answer's material (or
/// builds its own root around it) and asks for a co-signature. The confirmer reads the root
/// from the ledger and asks the provider itself, so it declines every variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_material_and_a_fake_root_frame_an_honest_provider() {
    let f = fixture();
    let root = Root::new(&f.provider, f.honest.clone());
    let mut tampered = f.honest.clone();
    tampered.output[0] = tampered.output[0].wrapping_add(1) % 300;

    // The provider answers: its own material passes, whatever the hint says.
    let (c, _) = confirmer(&f, &root, true, root.answer(), true).await;
    let r = c
        .recheck(
            f.requester.account(),
            &request(&f, root.fraud(), Some(tampered.clone())),
        )
        .await;
    assert!(r.is_err(), "co-signed a framed fraud: {r:?}");
    assert!(r.unwrap_err().contains("passes"));

    // The provider is unreachable: a tampered hint does not hold together.
    let down = Fetched::Unreachable("down".into());
    let (c, _) = confirmer(&f, &root, true, down.clone(), true).await;
    let r = c
        .recheck(
            f.requester.account(),
            &request(&f, root.fraud(), Some(tampered)),
        )
        .await;
    assert!(r.unwrap_err().contains("does not hold together"));

    // A receipt under a root of the attacker's making (not the one on the ledger).
    let mut other = f.honest.clone();
    other.receipt.receipt.request_id = [101; 16];
    other.receipt = other.receipt.receipt.clone().sign(&f.provider);
    let fake = Root::new(&f.provider, other.clone());
    let r = c
        .recheck(
            f.requester.account(),
            &request(&f, fake.fraud(), Some(other)),
        )
        .await;
    assert!(r.unwrap_err().contains("does not hold together"));

    // The honest hint itself, with the provider unreachable, passes: declined.
    let r = c
        .recheck(
            f.requester.account(),
            &request(&f, root.fraud(), Some(f.honest.clone())),
        )
        .await;
    assert!(r.unwrap_err().contains("passes"));

    // A verdict carrying another receipt than the leaf's (the ledger refunds from it) is
    // not co-signed, even one the provider signed with a higher cost.
    let Fault::Fraud { proof, .. } = root.fraud() else {
        unreachable!()
    };
    let mut pricier = f.honest.receipt.receipt.clone();
    pricier.cost_micros *= 100;
    let greedy = Fault::Fraud {
        receipt: pricier.sign(&f.provider),
        proof,
    };
    let (c, _) = confirmer(&f, &root, true, root.answer(), true).await;
    let r = c
        .recheck(f.requester.account(), &request(&f, greedy, None))
        .await;
    assert!(r.unwrap_err().contains("another receipt"));
}

/// A real fraud (the provider signed tokens its model did not sample) is still confirmed,
/// from the material the provider itself hands over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_fraud_is_confirmed_from_the_providers_own_material() {
    let f = fixture();
    let mut cheat = f.honest.clone();
    for t in cheat.output.iter_mut().skip(4) {
        *t = (*t + 7) % 200;
    }
    let mut r = cheat.receipt.receipt.clone();
    r.output_hash = tokens_hash(&cheat.output);
    cheat.receipt = r.sign(&f.provider);
    let root = Root::new(&f.provider, cheat);
    let (c, _) = confirmer(&f, &root, true, root.answer(), true).await;
    let r = c
        .recheck(f.requester.account(), &request(&f, root.fraud(), None))
        .await;
    assert!(r.is_ok(), "a real fraud was declined: {r:?}");
}

/// "I cannot judge" is never "fraud": a model the confirmer lacks, a provider that does not
/// answer (withheld is confirmed only when the provider refuses the confirmer too), a
/// requester whose failed reveal is not on the ledger or who is not a registered verifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cannot_judge_is_never_confirmed() {
    let f = fixture();
    let mut cheat = f.honest.clone();
    cheat.output[5] = (cheat.output[5] + 7) % 200;
    let mut r = cheat.receipt.receipt.clone();
    r.output_hash = tokens_hash(&cheat.output);
    cheat.receipt = r.sign(&f.provider);
    let root = Root::new(&f.provider, cheat);

    let (c, _) = confirmer(&f, &root, false, root.answer(), true).await;
    let r = c
        .recheck(f.requester.account(), &request(&f, root.fraud(), None))
        .await;
    assert!(r.unwrap_err().contains("cannot judge"));

    // Material that does not reach the confirmer is no fraud either.
    let down = Fetched::Unreachable("timed out".into());
    let (c, _) = confirmer(&f, &root, true, down, true).await;
    let r = c
        .recheck(f.requester.account(), &request(&f, root.fraud(), None))
        .await;
    assert!(r.unwrap_err().contains("cannot judge"));
}

/// A `Withheld` verdict is co-signed only from the ledger: the requester's own demand for
/// the leaf, unanswered, past its deadline. A refusal heard off the ledger, a demand the
/// provider may still answer, an answered one, or another verifier's, are all declined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_is_confirmed_only_from_an_unanswered_demand_past_its_deadline() {
    let f = fixture();
    let root = Root::new(&f.provider, f.honest.clone());
    let withheld = || request(&f, Fault::Withheld, None);
    let demand = |c: &Shared, by: AccountId| {
        c.note_event(&VerifierEvent::MaterialDemanded {
            verifier: by,
            provider: f.provider.account(),
            epoch: EPOCH,
            index: 1,
            due_epoch: EPOCH + 2,
        })
    };
    let epoch = |c: &Shared, e: u64| c.note_event(&VerifierEvent::EpochAdvanced { epoch: e });

    // The provider refuses the confirmer too, but nothing was demanded on the ledger.
    let refused = Fetched::Refused("CHEATING".into());
    let (c, _) = confirmer(&f, &root, true, refused.clone(), true).await;
    let r = c.recheck(f.requester.account(), &withheld()).await;
    assert!(r.unwrap_err().contains("no demand"));

    // Demanded; due by EPOCH + 2, and it is EPOCH + 2: the provider may still answer.
    demand(&c, f.requester.account());
    epoch(&c, EPOCH + 2);
    let r = c.recheck(f.requester.account(), &withheld()).await;
    assert!(r.unwrap_err().contains("may still answer"));

    // Past the deadline, unanswered: co-signed, whatever the provider now says off-ledger.
    epoch(&c, EPOCH + 3);
    let r = c.recheck(f.requester.account(), &withheld()).await;
    assert!(r.expect("co-signed").contains("withheld"));

    // Another verifier's demand is not the requester's to bring.
    let other = Keypair::from_seed([5; 32]).account();
    let (c, _) = confirmer(&f, &root, true, refused.clone(), true).await;
    demand(&c, other);
    epoch(&c, EPOCH + 3);
    let r = c.recheck(f.requester.account(), &withheld()).await;
    assert!(r.unwrap_err().contains("another verifier"));

    // Answered on the ledger: never withheld, even if the provider refuses the confirmer.
    let (c, _) = confirmer(&f, &root, true, refused, true).await;
    demand(&c, f.requester.account());
    c.note_event(&VerifierEvent::MaterialAnswered {
        provider: f.provider.account(),
        epoch: EPOCH,
        index: 1,
    });
    epoch(&c, EPOCH + 3);
    let r = c.recheck(f.requester.account(), &withheld()).await;
    assert!(r.unwrap_err().contains("answered"));

    // An unregistered requester.
    let stranger = Keypair::from_seed([66; 32]).account();
    let r = c.recheck(stranger, &withheld()).await;
    assert!(r.unwrap_err().contains("not a registered verifier"));
}

/// A provider that cannot be reached, refuses, or hands over material that is not under its
/// root is never revealed as failed (a false alarm costs stake, and a second verifier could
/// not check it): the leaf's material is demanded on the ledger instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_refusing_provider_is_demanded_never_failed() {
    let f = fixture();
    let root = Root::new(&f.provider, f.honest.clone());
    let mut tampered = f.honest.clone();
    tampered.output[0] = tampered.output[0].wrapping_add(1) % 300;
    for fetched in [
        Fetched::Unreachable("timed out".into()),
        Fetched::Refused("CHEATING".into()),
        Fetched::Material {
            material: Box::new(tampered),
            proof: root.proof(1),
            next: None,
        },
    ] {
        let (c, _) = confirmer(&f, &root, true, fetched.clone(), false).await;
        match c
            .audit_leaf(f.provider.account(), EPOCH, 1, root.posted)
            .await
        {
            LeafOutcome::Demand(_) => {}
            LeafOutcome::Failed(why, _) => panic!("{fetched:?} revealed as failed: {why}"),
            _ => panic!("{fetched:?} was neither demanded nor failed"),
        }
    }
    // The honest answer passes.
    let (c, _) = confirmer(&f, &root, true, root.answer(), false).await;
    assert!(matches!(
        c.audit_leaf(f.provider.account(), EPOCH, 1, root.posted)
            .await,
        LeafOutcome::Passed { receipt } if receipt == f.honest.receipt.hash()
    ));
}

/// Probation cannot be passed with other providers' receipts, copies of one receipt, or
/// receipts from another chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_duplicate_and_other_chain_receipts_never_pass() {
    let f = fixture();
    let judge = Judge {
        chain_id: CHAIN,
        auditor: ModelAuditor {
            models: HashMap::from([(f.model_id, f.model.clone())]),
            thresholds: Thresholds::default(),
        },
    };
    assert_eq!(
        judge.judge(&f.provider.account(), EPOCH, &f.honest),
        Judgement::Passed
    );
    // Another provider's honest receipt under this provider's root.
    let thief = Keypair::from_seed([8; 32]).account();
    assert!(matches!(
        judge.judge(&thief, EPOCH, &f.honest),
        Judgement::Failed(_)
    ));
    // Another chain.
    let mut other = f.honest.clone();
    let mut r = other.receipt.receipt.clone();
    r.chain_id = CHAIN + 1;
    other.receipt = r.sign(&f.provider);
    assert!(matches!(
        judge.judge(&f.provider.account(), EPOCH, &other),
        Judgement::Failed(_)
    ));
    // A receipt may sit under the root of its own epoch or the next, nowhere else: the
    // same receipt under two roots further apart fails.
    assert_eq!(
        judge.judge(&f.provider.account(), EPOCH + 1, &f.honest),
        Judgement::Passed
    );
    for e in [EPOCH - 1, EPOCH + 2, EPOCH + 40] {
        match judge.judge(&f.provider.account(), e, &f.honest) {
            Judgement::Failed(why) => assert!(why.contains("epoch"), "{why}"),
            j => panic!("a receipt of epoch {EPOCH} under the root of {e}: {j:?}"),
        }
    }
    // A provider back from an outage posts its overdue receipts under a late root, every
    // leaf audited (the ledger's inclusion challenge accepts them there): an honest one
    // passes. Never under a root of an earlier epoch than its own.
    assert_eq!(
        judge.judge_under(&f.provider.account(), EPOCH + 40, true, &f.honest),
        Judgement::Passed
    );
    assert!(matches!(
        judge.judge_under(&f.provider.account(), EPOCH - 1, true, &f.honest),
        Judgement::Failed(_)
    ));
    // Two copies of one receipt side by side under a root.
    let leaves = [f.honest.receipt.clone(), f.honest.receipt.clone()];
    let hashes: Vec<Hash32> = leaves.iter().map(SignedReceipt::hash).collect();
    let posted = PostedRoot {
        root: agora_core::merkle::root(&hashes),
        receipts: 2,
        full_audit: false,
    };
    let next = NextLeaf {
        receipt: leaves[1].clone(),
        proof: agora_core::merkle::proof(&hashes, 1).expect("proof"),
    };
    let err = judge::check_order(&posted, 0, &leaves[0], Some(&next)).unwrap_err();
    assert!(err.contains("twice"), "{err}");
    // Hiding the next leaf is not a way out.
    assert!(judge::check_order(&posted, 0, &leaves[0], None).is_err());

    // Through the first verifier's path: the copy is a failed audit with evidence.
    let (c, source) = confirmer(
        &f,
        &Root::new(&f.provider, f.honest.clone()),
        true,
        Fetched::Material {
            material: Box::new(f.honest.clone()),
            proof: agora_core::merkle::proof(&hashes, 0).expect("proof"),
            next: Some(Box::new(next)),
        },
        true,
    )
    .await;
    match c.audit_leaf(f.provider.account(), EPOCH, 0, posted).await {
        LeafOutcome::Failed(why, _) => assert!(why.contains("twice"), "{why}"),
        _ => panic!("a duplicated receipt was not failed"),
    }
    // The same receipt met again under another root is not counted as a clean audit.
    let single = PostedRoot {
        root: agora_core::merkle::root(&[f.honest.receipt.hash()]),
        receipts: 1,
        full_audit: false,
    };
    *lock(&source.0) = Fetched::Material {
        material: Box::new(f.honest.clone()),
        proof: agora_core::merkle::proof(&[f.honest.receipt.hash()], 0).expect("proof"),
        next: None,
    };
    assert!(matches!(
        c.audit_leaf(f.provider.account(), EPOCH + 1, 0, single)
            .await,
        // The reveal names the receipt (its ledger leaf): it earns probation credit once.
        LeafOutcome::Passed { receipt } if receipt == f.honest.receipt.hash()
    ));
    assert!(matches!(
        c.audit_leaf(f.provider.account(), EPOCH + 2, 0, single)
            .await,
        LeafOutcome::Skip(_)
    ));
}

/// Answers every fetch as unreachable and counts the fetches.
struct CountingSource(std::sync::atomic::AtomicUsize);

impl MaterialSource for CountingSource {
    fn fetch(&self, _: AccountId, _: u64, _: u64, _: Option<Hash32>) -> BoxFuture<'_, Fetched> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Fetched::Unreachable("down".into()) })
    }
}

/// Over real libp2p on loopback: confirm requests from a key the ledger does not list as a
/// verifier, or about a leaf with no failed reveal, are declined before the confirmer
/// fetches or audits anything; garbage gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_confirm_requests_cost_no_audit() {
    let f = fixture();
    let root = Root::new(&f.provider, f.honest.clone());
    let (node, gossip) = Node::start(NetConfig {
        key_seed: [19; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap: vec![],
        mdns: false,
        topics: vec![],
    })
    .await
    .expect("node");
    let addr = node.listen_addrs().await.expect("addrs")[0].clone();
    let cfg = offline_config([19; 32]);
    let source = Arc::new(CountingSource(Default::default()));
    let mut shared = Shared::new(
        cfg,
        Keypair::from_seed([5; 32]),
        offline_settlement(),
        Arc::new(FakeLedger(vec![f.requester.account()])),
        source.clone(),
        node,
        HashMap::from([(f.model_id, f.model.clone())]),
        Peers::default(),
    );
    shared.reveal_wait = Duration::from_millis(200);
    let shared = Arc::new(shared);
    let verifier = Verifier {
        shared: shared.clone(),
        gossip,
    };
    tokio::spawn(verifier.run(std::future::pending()));
    let (client, _g) = Node::start(NetConfig {
        key_seed: [20; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap: vec![addr],
        mdns: false,
        topics: vec![],
    })
    .await
    .expect("client");
    let peer = agora_net::peer_id_of([19; 32]);
    let ask = |signed: Vec<u8>| {
        let client = client.clone();
        async move {
            let mut s = client
                .control()
                .open_stream(peer, agora_net::StreamProtocol::new(CONFIRM_PROTOCOL))
                .await
                .expect("open");
            futures::AsyncWriteExt::write_all(&mut s, &signed)
                .await
                .expect("write");
            tokio::time::timeout(
                Duration::from_secs(30),
                read_frame::<_, ConfirmResponse>(&mut s),
            )
            .await
            .expect("answered in time")
        }
    };
    let frame = |v: &Signed<ConfirmRequest>| {
        let bytes = codec::encode(v);
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend(bytes);
        out
    };
    let stranger = Keypair::from_seed([66; 32]);
    let from_stranger = Signed::new(request(&f, root.fraud(), None), &stranger);
    let r = ask(frame(&from_stranger))
        .await
        .expect("read")
        .expect("answer");
    assert!(
        matches!(&r, ConfirmResponse::Declined { reason } if reason.contains("registered")),
        "{r:?}"
    );
    // A registered verifier, but no failed reveal of the leaf on the ledger.
    let unrevealed = Signed::new(request(&f, root.fraud(), None), &f.requester);
    let r = ask(frame(&unrevealed))
        .await
        .expect("read")
        .expect("answer");
    assert!(
        matches!(&r, ConfirmResponse::Declined { reason } if reason.contains("no failed reveal")),
        "{r:?}"
    );
    // Garbage and an oversized length get no answer.
    let _ = ask(vec![0, 0, 0, 3, 1, 2, 3]).await;
    let _ = ask(u32::MAX.to_be_bytes().to_vec()).await;
    assert_eq!(
        source.0.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "fetched for an unauthenticated request"
    );
}

/// Fake verifier Hellos used to fill the escalation list (each candidate could take 120 s).
/// A Hello counts only when the ledger lists its signer as a registered verifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_from_unregistered_keys_are_ignored() {
    let f = fixture();
    let root = Root::new(&f.provider, f.honest.clone());
    let (c, _) = confirmer(&f, &root, false, Fetched::Unreachable("-".into()), false).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(c.clone().listen(rx));
    let hello = |key: &Keypair| GossipMessage {
        topic: audits_topic(CHAIN),
        source: None,
        data: codec::encode(&AuditGossip::Hello(Signed::new(
            VerifierHello {
                chain_id: CHAIN,
                peer_id: agora_net::peer_id_of([30; 32]).to_bytes(),
                addrs: vec!["/ip4/127.0.0.1/tcp/9".into()],
                issued_ms: now_ms(),
            },
            key,
        ))),
    };
    let fake = Keypair::from_seed([77; 32]);
    tx.send(hello(&fake)).await.expect("send");
    tx.send(hello(&f.requester)).await.expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lock(&c.verifiers).contains_key(&f.requester.account()) {
        assert!(
            Instant::now() < deadline,
            "the registered verifier's Hello was lost"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !lock(&c.verifiers).contains_key(&fake.account()),
        "an unregistered key became a confirm candidate"
    );
}

/// A verifier's settings for tests: its ledger is unreachable and its network key is `key_seed`.
fn offline_config(key_seed: [u8; 32]) -> VerifierConfig {
    VerifierConfig {
        settlement: SettlementTarget::Ledger {
            url: "http://127.0.0.1:1".into(),
        },
        account_seed: [5; 32],
        net: NetConfig {
            key_seed,
            listen: vec![],
            bootstrap: vec![],
            mdns: false,
            topics: vec![],
        },
        models: vec![],
        stake: Amount::new(1),
        thresholds: Thresholds::default(),
        #[cfg(feature = "adversary")]
        lazy: false,
        #[cfg(feature = "adversary")]
        framer: false,
    }
}

/// The probation re-post: a provider on probation (every leaf of its roots audited) posts
/// old honest receipts again under its ordinary probation roots, so each passes once more and
/// counts toward leaving probation. Only a late root (`PostLateRoot`, whose passes the ledger
/// does not count toward probation) may hold receipts of epochs before its previous one; under
/// a probation root such a receipt fails, whatever the answer.
#[tokio::test]
async fn old_receipts_reposted_under_a_probation_root_fail() {
    let f = fixture();
    let judge = Judge {
        chain_id: CHAIN,
        auditor: ModelAuditor {
            models: HashMap::from([(f.model_id, f.model.clone())]),
            thresholds: Thresholds::default(),
        },
    };
    let root = agora_core::merkle::root(&[f.honest.receipt.hash()]);
    let plan = |late: bool| agora_ledger::AuditPlan {
        provider: f.provider.account(),
        epoch: EPOCH + 5,
        root,
        receipts: 1,
        beacon: Hash32::of(b"beacon"),
        audit_ppm: agora_ledger::FULL_AUDIT_PPM,
        leaves: vec![(0, Keypair::from_seed([5; 32]).account())],
        late,
    };
    let probation = judge::posted_root(&plan(false));
    match judge.judge_under(
        &f.provider.account(),
        EPOCH + 5,
        probation.full_audit,
        &f.honest,
    ) {
        Judgement::Failed(why) => assert!(why.contains("epoch"), "{why}"),
        j => panic!("an old receipt re-posted under a probation root: {j:?}"),
    }
    // Under a late root the same receipt is audited and passes (an honest provider back from
    // an outage is never failed for its overdue receipts).
    let late = judge::posted_root(&plan(true));
    assert_eq!(
        judge.judge_under(&f.provider.account(), EPOCH + 5, late.full_audit, &f.honest),
        Judgement::Passed
    );
    // Receipts of the root's own epoch and the one before still pass under a probation root.
    for e in [EPOCH, EPOCH + 1] {
        assert_eq!(
            judge.judge_under(&f.provider.account(), e, probation.full_audit, &f.honest),
            Judgement::Passed
        );
    }
}

mod evm;
