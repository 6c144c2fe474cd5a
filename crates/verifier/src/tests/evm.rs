//! The verifier on the Agora contracts on a real Anvil: two verifiers register with stake
//! (binding their network keys), follow a provider's keccak root of receipts it signed,
//! commit and reveal their assigned leaves on chain; the honest answer is revealed passed,
//! the dishonest one (output tokens its model did not sample) is revealed failed, confirmed
//! by the other verifier with its EIP-712 signature, and slashed on chain (stake drops, the
//! bounty is paid). The provider's material comes from an in-test source, as in the ledger
//! tests. And the attack: a confirmer shown a path under a root the requester made up (not
//! the posted one) declines.

use super::*;
use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::{deploy, Params as EvmParams, SettlementClient};
use agora_settlement::evm::EvmSettlement;
use agora_settlement::network::NetworkSettlement;
use agora_settlement::open::evm_signer_for;
use agora_settlement::Settlement;

/// Long epochs: the verifiers' own transactions (one block each) must not move the epoch;
/// the test mines to each next epoch itself.
const EPOCH_BLOCKS: u64 = 40;
const PROVIDER_STAKE: u128 = 1_000;

/// Serves each leaf's material as the provider would.
struct LeafSource(HashMap<u64, Fetched>);

impl MaterialSource for LeafSource {
    fn fetch(&self, _: AccountId, _: u64, index: u64, _: Option<Hash32>) -> BoxFuture<'_, Fetched> {
        let f = self
            .0
            .get(&index)
            .cloned()
            .unwrap_or_else(|| Fetched::Unreachable("no such leaf".into()));
        Box::pin(async move { f })
    }
}

struct Chain {
    anvil: Anvil,
    d: agora_evm::Deployment,
    admin: SettlementClient,
}

impl Chain {
    async fn start(bin: &Path) -> Chain {
        let anvil = Anvil::start(bin, 31_337).expect("anvil");
        let d = deploy(
            anvil.url(),
            anvil.keys()[0].clone(),
            EvmParams::devnet(EPOCH_BLOCKS),
        )
        .await
        .expect("deploy");
        let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone())
            .await
            .expect("admin");
        Chain { anvil, d, admin }
    }

    fn target(&self) -> SettlementTarget {
        SettlementTarget::Evm {
            rpc: self.anvil.url().to_string(),
            deployment: self.d.clone(),
        }
    }

    /// Gas and tokens for the account `key`'s seed stands for.
    async fn fund(&self, key: &Keypair) {
        let addr = evm_signer_for(&key.seed()).address();
        self.admin
            .send_native(addr, alloy::primitives::U256::from(10u128.pow(20)))
            .await
            .expect("gas");
        self.admin.mint(addr, 10_000).await.expect("tokens");
    }

    /// `key`'s account on the contract.
    async fn settlement(&self, key: &Keypair) -> EvmSettlement {
        EvmSettlement::new(
            SettlementClient::connect(
                self.anvil.url(),
                evm_signer_for(&key.seed()),
                self.d.clone(),
            )
            .await
            .expect("connect"),
        )
    }

    async fn epoch(&self) -> u64 {
        self.admin.current_epoch().await.expect("epoch")
    }
}

/// A registered verifier on `chain` with network seed `seed`, serving `source`, listening on
/// loopback (bootstrapping to `bootstrap`), not yet running.
async fn verifier(
    chain: &Chain,
    seed: [u8; 32],
    f: &Fixture,
    source: Arc<dyn MaterialSource>,
    bootstrap: Vec<Multiaddr>,
) -> Verifier {
    let key = Keypair::from_seed(seed);
    chain.fund(&key).await;
    let settlement = Opened::open(&chain.target(), &key)
        .await
        .expect("open")
        .verifier();
    settlement
        .register_verifier_key(&key, Amount::new(200))
        .await
        .expect("register");
    // Registering twice is harmless (a restart).
    settlement
        .register_verifier_key(&key, Amount::new(200))
        .await
        .expect("register again");
    assert!(settlement
        .is_verifier_key(key.account())
        .await
        .expect("read"));
    let chain_id = settlement.network_chain_id();
    let (node, gossip) = Node::start(NetConfig {
        key_seed: seed,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap,
        mdns: false,
        topics: vec![audits_topic(chain_id), offers_topic(chain_id)],
    })
    .await
    .expect("node");
    let mut cfg = offline_config(seed);
    cfg.settlement = chain.target();
    cfg.account_seed = seed;
    let timeline = settlement.audit_timeline().await.expect("timeline");
    let view = Arc::new(SettlementRegistry(settlement.clone()));
    let mut shared = Shared::new(
        cfg,
        key,
        settlement,
        view,
        source,
        node,
        HashMap::from([(f.model_id, f.model.clone())]),
        Peers::default(),
    );
    shared.timeline = timeline;
    Verifier {
        shared: Arc::new(shared),
        gossip,
    }
}

/// `material` as a receipt of `chain_id` and `epoch` with request id `id`, signed again.
fn on_chain(
    f: &Fixture,
    material: &Material,
    chain_id: u64,
    epoch: u64,
    id: u8,
    channel: Hash32,
) -> Material {
    let mut m = material.clone();
    let mut r = m.receipt.receipt.clone();
    r.chain_id = chain_id;
    r.epoch = epoch;
    r.request_id = [id; 16];
    r.channel = channel;
    r.output_hash = tokens_hash(&m.output);
    m.receipt = r.sign(&f.provider);
    m
}

/// The fixture's answer with output tokens its model did not sample.
fn dishonest(f: &Fixture) -> Material {
    let mut cheat = f.honest.clone();
    for t in cheat.output.iter_mut().skip(4) {
        *t = (*t + 7) % 200;
    }
    cheat
}

async fn until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A provider bound on chain with stake, a channel to it, and its two-leaf keccak root of
/// `epoch` (leaf 0 honest, leaf 1 dishonest) with each leaf's material.
async fn provider_root(
    chain: &Chain,
    f: &Fixture,
    epoch_now: u64,
) -> (EvmSettlement, HashMap<u64, Fetched>, Hash32) {
    chain.fund(&f.provider).await;
    let prov = chain.settlement(&f.provider).await;
    prov.client()
        .bind_network_key(&f.provider)
        .await
        .expect("bind");
    Settlement::stake(&prov, PROVIDER_STAKE)
        .await
        .expect("stake");
    let payer = Keypair::from_seed([3; 32]);
    chain.fund(&payer).await;
    let payer = chain.settlement(&payer).await;
    let channel = Settlement::open_channel(&payer, prov.account(), 500, 10)
        .await
        .expect("channel");
    let channel = Hash32::from_bytes(channel.0);
    let chain_id = NetworkSettlement::network_chain_id(&prov);
    let honest = on_chain(f, &f.honest, chain_id, epoch_now, 1, channel);
    let cheat = on_chain(f, &dishonest(f), chain_id, epoch_now, 2, channel);
    let leaves = vec![honest.receipt.clone(), cheat.receipt.clone()];
    let root = prov.receipt_root_of(&leaves);
    let proof = |i| prov.receipt_proof_of(&leaves, i).expect("proof");
    let materials = HashMap::from([
        (
            0,
            Fetched::Material {
                material: Box::new(honest),
                proof: proof(0),
                next: Some(Box::new(agora_net::protocol::NextLeaf {
                    receipt: leaves[1].clone(),
                    proof: proof(1),
                })),
            },
        ),
        (
            1,
            Fetched::Material {
                material: Box::new(cheat),
                proof: proof(1),
                next: None,
            },
        ),
    ]);
    prov.post_receipt_root(epoch_now, root, 2, false)
        .await
        .expect("post root");
    (prov, materials, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_verifiers_audit_on_chain_pass_the_honest_and_slash_the_cheat() {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return;
    };
    let f = fixture();
    let chain = Chain::start(&bin).await;
    // The materials are known only once the root's epoch is; the source reads them then.
    let shared_source: Arc<Mutex<HashMap<u64, Fetched>>> = Arc::default();
    struct Late(Arc<Mutex<HashMap<u64, Fetched>>>);
    impl MaterialSource for Late {
        fn fetch(&self, p: AccountId, e: u64, i: u64, t: Option<Hash32>) -> BoxFuture<'_, Fetched> {
            let src = LeafSource(lock(&self.0).clone());
            Box::pin(async move { src.fetch(p, e, i, t).await })
        }
    }
    let a = verifier(
        &chain,
        [41; 32],
        &f,
        Arc::new(Late(shared_source.clone())),
        vec![],
    )
    .await;
    let a_addr = a.node().listen_addrs().await.expect("addrs")[0].clone();
    let b = verifier(
        &chain,
        [42; 32],
        &f,
        Arc::new(Late(shared_source.clone())),
        vec![a_addr],
    )
    .await;
    let (a_shared, b_shared) = (a.shared.clone(), b.shared.clone());
    tokio::spawn(a.run(std::future::pending()));
    tokio::spawn(b.run(std::future::pending()));

    // The set that assigns a root of epoch e is frozen before e: post in the next epoch.
    let e = chain.epoch().await + 1;
    chain.admin.mine_to_epoch(e).await.expect("mine");
    let (prov, materials, _root) = provider_root(&chain, &f, e).await;
    *lock(&shared_source) = materials;
    let prov_addr = prov.account();
    let admin = &chain.admin;
    let balance_before = |who: [u8; 32]| {
        let addr = evm_signer_for(&who).address();
        async move { admin.token_balance(addr).await.expect("balance") }
    };
    let before = [
        balance_before([41; 32]).await,
        balance_before([42; 32]).await,
    ];

    // Every leaf of a new provider is audited; each goes to one of the two verifiers, which
    // commit in e + 1.
    chain.admin.mine_to_epoch(e + 1).await.expect("mine");
    until("both leaves committed", 120, || async {
        let mut all = true;
        for i in 0..2 {
            let l = chain.admin.leaf_audit(prov_addr, e, i).await.expect("leaf");
            all &= l.verifier != alloy::primitives::Address::ZERO;
        }
        all
    })
    .await;
    // Revealed in e + 2: the honest leaf passed, the dishonest one failed.
    chain.admin.mine_to_epoch(e + 2).await.expect("mine");
    until("both leaves revealed", 120, || async {
        let mut all = true;
        for i in 0..2 {
            let l = chain.admin.leaf_audit(prov_addr, e, i).await.expect("leaf");
            all &= l.passed.is_some();
        }
        all
    })
    .await;
    let honest = chain.admin.leaf_audit(prov_addr, e, 0).await.expect("leaf");
    let cheat = chain.admin.leaf_audit(prov_addr, e, 1).await.expect("leaf");
    assert_eq!(
        honest.passed,
        Some(true),
        "the honest answer was not passed"
    );
    assert_eq!(
        cheat.passed,
        Some(false),
        "the cheat was not revealed failed"
    );
    let finder = cheat.verifier;
    assert!(
        [41u8, 42]
            .iter()
            .any(|s| evm_signer_for(&[*s; 32]).address() == finder),
        "the failure was revealed by neither verifier"
    );

    // The verdict window: the finder escalates, the other confirms with its EIP-712
    // signature, and the provider is slashed on chain.
    chain.admin.mine_to_epoch(e + 5).await.expect("mine");
    until("the provider slashed", 180, || async {
        chain.admin.account(prov_addr).await.expect("account").stake < PROVIDER_STAKE
    })
    .await;
    let slashed = chain.admin.account(prov_addr).await.expect("account");
    assert_eq!(
        slashed.stake,
        PROVIDER_STAKE / 2,
        "half the stake is slashed"
    );
    assert_eq!(slashed.frauds, 1);
    let leaf = chain.admin.leaf_audit(prov_addr, e, 1).await.expect("leaf");
    assert!(leaf.judged);
    // The bounty (a fifth of the slashed 500) went to the verifier that found the fraud.
    let finder_seed = if evm_signer_for(&[41; 32]).address() == finder {
        0
    } else {
        1
    };
    let after = [
        balance_before([41; 32]).await,
        balance_before([42; 32]).await,
    ];
    assert_eq!(after[finder_seed], before[finder_seed] + 100, "no bounty");
    assert_eq!(after[1 - finder_seed], before[1 - finder_seed]);
    // The honest leaf stays unjudged.
    assert!(
        !chain
            .admin
            .leaf_audit(prov_addr, e, 0)
            .await
            .expect("leaf")
            .judged
    );
    drop((a_shared, b_shared));
}

/// The attack: a requester shows a confirmer a receipt with a keccak path under a root it
/// made up (holding a receipt of its choice), not the root the provider posted. The
/// confirmer reads the posted root from the chain itself and declines, even with the
/// provider unreachable and the made-up root in its own event record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_path_under_a_made_up_root_is_not_confirmed_on_chain() {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return;
    };
    let f = fixture();
    let chain = Chain::start(&bin).await;
    let down: Arc<dyn MaterialSource> = Arc::new(LeafSource(HashMap::new()));
    let requester = verifier(&chain, [43; 32], &f, down.clone(), vec![]).await;
    let confirmer = verifier(&chain, [44; 32], &f, down, vec![]).await;
    let e = chain.epoch().await + 1;
    chain.admin.mine_to_epoch(e).await.expect("mine");
    let (prov, _, posted) = provider_root(&chain, &f, e).await;
    let chain_id = NetworkSettlement::network_chain_id(&prov);

    // The requester's own root over a dishonest receipt of its making (which the provider
    // signed for another request: a real fraud, but not under the posted root).
    let mut fake = dishonest(&f);
    fake = on_chain(&f, &fake, chain_id, e, 9, Hash32::of(b"elsewhere"));
    let other = on_chain(&f, &f.honest, chain_id, e, 1, Hash32::of(b"elsewhere"));
    let leaves = vec![other.receipt.clone(), fake.receipt.clone()];
    let made_up = prov.receipt_root_of(&leaves);
    assert_ne!(made_up, posted);
    let proof = prov.receipt_proof_of(&leaves, 1).expect("proof");
    let c = confirmer.shared.clone();
    // Its event record is poisoned with the made-up root and a failed reveal by the
    // requester: only the chain's own root may decide.
    c.note_event(&VerifierEvent::RootPosted {
        provider: f.provider.account(),
        epoch: e,
        root: made_up,
        receipts: 2,
    });
    c.note_event(&VerifierEvent::AuditRevealed {
        verifier: requester.shared.key.account(),
        provider: f.provider.account(),
        epoch: e,
        index: 1,
        passed: false,
        tx: Hash32::of(b"reveal"),
    });
    let req = ConfirmRequest {
        verdict: Verdict {
            chain_id,
            provider: f.provider.account(),
            epoch: e,
            index: 1,
            fault: Fault::Fraud {
                receipt: fake.receipt.clone(),
                proof: proof.clone(),
            },
        },
        material: Some(Box::new(fake.clone())),
    };
    let r = c.recheck(requester.shared.key.account(), &req).await;
    let why = r.expect_err("co-signed a fraud under a made-up root");
    assert!(why.contains("does not hold together"), "{why}");
    // The same evidence under the made-up root does hold together (the decline is the
    // posted root's doing, not a broken path).
    assert!(prov.receipt_proof_holds(&made_up, 2, 1, &fake.receipt, &proof));
}
