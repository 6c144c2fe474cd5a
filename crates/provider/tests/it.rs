//! A real provider (real model, real ledger node, real libp2p on loopback) against a client
//! that sends it garbage, unsigned, tampered, replayed, misaddressed, underpriced and unpaid
//! requests: each gets a clear refusal and the provider goes on serving; then an honest,
//! paid request streams tokens and a receipt that checks out, and its voucher is claimed.

use std::sync::Arc;
use std::time::Duration;

use agora_core::{Amount, Hash32, Keypair};
use agora_ledger::client::Client;
use agora_ledger::tx::channel_id;
use agora_ledger::{Tx, TxBody, Voucher};
use agora_net::protocol::{
    new_request_id, now_ms, read_frame, tokens_hash, write_frame, ErrorCode, Frame,
    InferenceRequest, PromptSpec, Sampling, SignedVoucher,
};
use agora_net::{inference_protocol, peer_id_of, Multiaddr, NetConfig, Node, PeerId};
use agora_provider::{Provider, ProviderConfig};
use agora_settlement::ledger::LedgerSettlement;
use agora_settlement::open::SettlementTarget;
use futures::AsyncWriteExt;

mod common;
use common::{ledger, ledger_with_epochs, CHAIN};

fn tiny_model(dir: &std::path::Path) -> agora_model::LoadedModel {
    agora_train::trainer::write_tiny_model(dir).expect("tiny model");
    agora_model::load(dir, &agora_model::LoadOptions::default()).expect("load")
}

fn net(seed: u8, bootstrap: Vec<Multiaddr>) -> NetConfig {
    NetConfig {
        key_seed: [seed; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap,
        mdns: false,
        topics: vec![],
    }
}

/// Sends `bytes` raw on a fresh inference stream and returns the first frame back.
async fn exchange(client: &Node, peer: PeerId, bytes: &[u8]) -> Option<Frame> {
    let mut s = client
        .control()
        .open_stream(peer, inference_protocol())
        .await
        .expect("open stream");
    s.write_all(bytes).await.expect("write");
    s.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(30), read_frame(&mut s))
        .await
        .expect("answered in time")
        .expect("readable")
}

fn encode_frame<T: borsh::BorshSerialize>(v: &T) -> Vec<u8> {
    let bytes = agora_core::codec::encode(v);
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend(bytes);
    out
}

fn refusal(f: Option<Frame>) -> (ErrorCode, String) {
    match f {
        Some(Frame::Error { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The provider's payments over the ledger at `url`, kept in `path`.
async fn open_payments(
    url: &str,
    me: &Keypair,
    path: &std::path::Path,
) -> agora_provider::Payments {
    agora_provider::Payments::open(me.account(), Arc::new(settlement_of(url, me)), path)
        .await
        .expect("open payments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_refuses_bad_messages_and_serves_a_paid_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let (seq, provider_key, payer) = (
        Keypair::from_seed([1; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([3; 32]),
    );
    let ledger_url = ledger(dir.path(), &seq, &[&provider_key, &payer], 1_000_000_000).await;
    let model = tiny_model(&dir.path().join("model"));
    let model_id = Hash32::from_slice(&model.id.0).expect("id");
    let cfg = provider_config(&ledger_url, &provider_key, 10, dir.path(), 200);
    let provider = Provider::start(&cfg, model).await.expect("provider");
    let addr = provider.node().listen_addrs().await.expect("addrs")[0].clone();
    let peer = peer_id_of([10; 32]);
    tokio::spawn(provider.run(cfg.clone(), std::future::pending()));
    let (client, _gossip) = Node::start(net(11, vec![addr])).await.expect("client");

    // The payer opens a channel to the provider.
    let ledger = Client::new(&ledger_url).expect("client");
    let nonce = ledger.next_nonce(&payer.account()).expect("nonce");
    let open = Tx {
        chain_id: CHAIN,
        from: payer.account(),
        nonce,
        body: TxBody::OpenChannel {
            provider: provider_key.account(),
            amount: Amount::new(10_000),
            timeout_epochs: 5,
        },
    }
    .sign(&payer);
    let l2 = ledger.clone();
    tokio::task::spawn_blocking(move || l2.submit(&open))
        .await
        .expect("join")
        .expect("open");
    let channel = channel_id(CHAIN, &payer.account(), nonce);

    let request =
        |max_tokens: u32| hark_request(&payer, &provider_key, channel, model_id, max_tokens);

    // Garbage, an oversized length, an unsigned (tampered) request.
    let (code, _) = refusal(exchange(&client, peer, &[0, 0, 0, 5, 1, 2, 3, 4, 5]).await);
    assert_eq!(code, ErrorCode::BadRequest);
    let (code, msg) = refusal(exchange(&client, peer, &u32::MAX.to_be_bytes()).await);
    assert_eq!(code, ErrorCode::BadRequest, "{msg}");
    let mut tampered = request(8).sign(&payer);
    tampered.request.max_tokens = 9;
    let (code, msg) = refusal(exchange(&client, peer, &encode_frame(&tampered)).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(msg.contains("signature"), "{msg}");

    // Misaddressed, stale, another chain, underpriced, unknown model, unpaid channel.
    let cases: Vec<(InferenceRequest, ErrorCode, &str)> = vec![
        (
            InferenceRequest {
                provider: payer.account(),
                ..request(8)
            },
            ErrorCode::BadRequest,
            "another provider",
        ),
        (
            InferenceRequest {
                issued_ms: now_ms() - 3_600_000,
                ..request(8)
            },
            ErrorCode::BadRequest,
            "replay window",
        ),
        (
            InferenceRequest {
                chain_id: CHAIN + 1,
                ..request(8)
            },
            ErrorCode::BadRequest,
            "another chain",
        ),
        (
            InferenceRequest {
                price_out: Amount::new(1),
                ..request(8)
            },
            ErrorCode::Price,
            "price",
        ),
        (
            InferenceRequest {
                model: Hash32::of(b"other"),
                ..request(8)
            },
            ErrorCode::UnknownModel,
            "serves",
        ),
        (
            InferenceRequest {
                channel: Hash32::of(b"none"),
                ..request(8)
            },
            ErrorCode::Payment,
            "channel",
        ),
        (request(100_000), ErrorCode::Payment, "could cost"),
        (
            InferenceRequest {
                prompt: PromptSpec::Text("Hark ".repeat(200)),
                ..request(8)
            },
            ErrorCode::ContextLength,
            "context",
        ),
    ];
    for (req, want, words) in cases {
        let (code, msg) = refusal(exchange(&client, peer, &encode_frame(&req.sign(&payer))).await);
        assert_eq!(code, want, "{words}: {msg}");
        assert!(msg.contains(words), "{msg} should mention {words}");
    }

    // A replayed request id is refused the second time.
    let once = request(4).sign(&payer);
    let first = exchange(&client, peer, &encode_frame(&once)).await;
    assert!(matches!(first, Some(Frame::Accepted { .. })), "{first:?}");
    let (code, msg) = refusal(exchange(&client, peer, &encode_frame(&once)).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(msg.contains("replay"), "{msg}");

    // An honest, paid request: tokens, a receipt that matches them, a voucher claimed.
    let req = request(12);
    let mut s = client
        .control()
        .open_stream(peer, inference_protocol())
        .await
        .expect("open");
    write_frame(&mut s, &req.clone().sign(&payer))
        .await
        .expect("send");
    let mut tokens = vec![];
    let mut prompt_tokens = 0;
    let receipt = loop {
        match read_frame::<_, Frame>(&mut s)
            .await
            .expect("frame")
            .expect("open")
        {
            Frame::Accepted { prompt_tokens: n } => prompt_tokens = n,
            Frame::Token { index, token, .. } => {
                assert_eq!(index as usize, tokens.len());
                tokens.push(token);
            }
            Frame::Done { receipt, .. } => break receipt,
            Frame::Error { message, .. } => panic!("refused: {message}"),
        }
    };
    receipt.verify().expect("receipt signature");
    let r = &receipt.receipt;
    assert_eq!(r.output_hash, tokens_hash(&tokens));
    assert_eq!(r.output_tokens as usize, tokens.len());
    assert_eq!(r.prompt_tokens, prompt_tokens);
    assert_eq!(
        r.cost_micros,
        u128::from(prompt_tokens) * 1_000_000 + tokens.len() as u128 * 3_000_000
    );
    let owed = Amount::new(r.cost_micros / 1_000_000);
    let voucher = SignedVoucher::new(
        Voucher {
            chain_id: CHAIN,
            channel,
            cumulative: owed,
        },
        &payer,
    );
    write_frame(&mut s, &voucher).await.expect("voucher");
    s.close().await.expect("close");
    // The provider claims it; the channel shows exactly the cost.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let l = ledger.clone();
        let c = tokio::task::spawn_blocking(move || l.channel(&channel))
            .await
            .expect("join")
            .expect("ledger")
            .expect("channel");
        if c.claimed == owed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "claimed {} of {owed}",
            c.claimed
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    strangers_are_denied_audit_material(&ledger, &client, peer, &provider_key).await;
}

/// Anyone used to read every user's prompt and answer: an audit request signed by any key
/// got the material. Now a key that is neither the leaf's assigned verifier nor a
/// registered confirmer with a failed reveal on the ledger is denied.
async fn strangers_are_denied_audit_material(
    ledger: &Client,
    client: &Node,
    peer: PeerId,
    provider: &Keypair,
) {
    use agora_net::protocol::{AuditRequest, AuditResponse, AUDIT_PROTOCOL};
    // Wait for the root of the answer served above.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let epoch = loop {
        let l = ledger.clone();
        let blocks = tokio::task::spawn_blocking(move || l.events(0, Duration::ZERO))
            .await
            .expect("join")
            .expect("events");
        let posted = blocks
            .iter()
            .flat_map(|b| &b.txs)
            .flat_map(|t| &t.events)
            .find_map(|e| match e {
                agora_ledger::Event::ReceiptRootPosted {
                    provider: p, epoch, ..
                } if *p == provider.account() => Some(*epoch),
                _ => None,
            });
        if let Some(e) = posted {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no root posted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stranger = Keypair::from_seed([44; 32]);
    for reveal_tx in [None, Some(Hash32::of(b"not a reveal"))] {
        let req = AuditRequest {
            chain_id: CHAIN,
            verifier: stranger.account(),
            provider: provider.account(),
            epoch,
            index: 0,
            issued_ms: now_ms(),
            reveal_tx,
        }
        .sign(&stranger);
        let mut s = client
            .control()
            .open_stream(peer, agora_net::StreamProtocol::new(AUDIT_PROTOCOL))
            .await
            .expect("open");
        write_frame(&mut s, &req).await.expect("send");
        let answer: AuditResponse = read_frame(&mut s).await.expect("read").expect("answer");
        assert!(
            matches!(answer, AuditResponse::Denied { .. }),
            "a stranger got {answer:?}"
        );
    }
}

/// Opens a channel of `deposit` from `payer` to `provider` on the ledger at `url`.
async fn open_channel(url: &str, payer: &Keypair, provider: &Keypair, deposit: u128) -> Hash32 {
    let ledger = Client::new(url).expect("client");
    let payer = payer.clone();
    let provider = provider.account();
    tokio::task::spawn_blocking(move || {
        let nonce = ledger.next_nonce(&payer.account()).expect("nonce");
        let open = Tx {
            chain_id: CHAIN,
            from: payer.account(),
            nonce,
            body: TxBody::OpenChannel {
                provider,
                amount: Amount::new(deposit),
                timeout_epochs: 5,
            },
        }
        .sign(&payer);
        ledger.submit(&open).expect("open");
        channel_id(CHAIN, &payer.account(), nonce)
    })
    .await
    .expect("join")
}

/// `provider`'s account on the ledger at `url`, as the services see settlement.
fn settlement_of(url: &str, provider: &Keypair) -> LedgerSettlement {
    LedgerSettlement::new(Client::new(url).expect("client"), provider.clone(), CHAIN)
}

fn voucher(payer: &Keypair, channel: Hash32, cumulative: u128) -> SignedVoucher {
    SignedVoucher::new(
        Voucher {
            chain_id: CHAIN,
            channel,
            cumulative: Amount::new(cumulative),
        },
        payer,
    )
}

/// A payer that takes answers and sends no voucher used to be served until its deposit ran
/// out (admission looked at deposit minus vouchers, not at what was served). Now a channel's
/// next request waits for every finished answer on it to be vouched for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_that_does_not_vouch_is_not_served_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let (seq, provider, payer) = (
        Keypair::from_seed([1; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([3; 32]),
    );
    let url = ledger(dir.path(), &seq, &[&provider, &payer], 1_000_000_000).await;
    let channel = open_channel(&url, &payer, &provider, 10_000).await;
    let payments =
        agora_provider::Payments::new(provider.account(), Arc::new(settlement_of(&url, &provider)));
    {
        let _first = payments
            .check(channel, payer.account(), Amount::new(100))
            .await
            .expect("first request");
        payments.served(&channel, 50_000_000);
    }
    let second = payments
        .check(channel, payer.account(), Amount::new(100))
        .await;
    assert!(
        second.is_err(),
        "served again without a voucher for the last answer"
    );
    payments
        .accept_voucher(voucher(&payer, channel, 50))
        .expect("voucher");
    let _third = payments
        .check(channel, payer.account(), Amount::new(100))
        .await
        .expect("paid up");
}

/// A voucher above the deposit used to be kept as the best one; its claim failed and
/// stopped every other channel's claims. Now it is refused, and other channels claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_above_the_deposit_is_refused_and_blocks_no_other_claim() {
    let dir = tempfile::tempdir().expect("tmp");
    let (seq, provider, payer, other) = (
        Keypair::from_seed([1; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([3; 32]),
        Keypair::from_seed([4; 32]),
    );
    let url = ledger(
        dir.path(),
        &seq,
        &[&provider, &payer, &other],
        1_000_000_000,
    )
    .await;
    let bad = open_channel(&url, &payer, &provider, 100).await;
    let good = open_channel(&url, &other, &provider, 1_000).await;
    let payments =
        agora_provider::Payments::new(provider.account(), Arc::new(settlement_of(&url, &provider)));
    for (ch, who) in [(bad, &payer), (good, &other)] {
        let _r = payments
            .check(ch, who.account(), Amount::new(10))
            .await
            .expect("admit");
        payments.served(&ch, 10_000_000);
    }
    assert!(
        payments
            .accept_voucher(voucher(&payer, bad, 5_000))
            .is_err(),
        "kept a voucher above the deposit"
    );
    payments
        .accept_voucher(voucher(&other, good, 10))
        .expect("good voucher");
    let total = payments
        .claim_all(&settlement_of(&url, &provider))
        .await
        .expect("claim");
    assert_eq!(total, Amount::new(10));
}

/// A kept voucher whose claim the ledger refuses (here: recovered from the store for a
/// channel the ledger does not know) must not stop another channel's claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_claim_blocks_no_other_channels_claim() {
    let dir = tempfile::tempdir().expect("tmp");
    let (seq, provider, payer) = (
        Keypair::from_seed([1; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([3; 32]),
    );
    let url = ledger(dir.path(), &seq, &[&provider, &payer], 1_000_000_000).await;
    let good = open_channel(&url, &payer, &provider, 1_000).await;
    let path = dir.path().join("vouchers.redb");
    {
        let payments = open_payments(&url, &provider, &path).await;
        let _r = payments
            .check(good, payer.account(), Amount::new(10))
            .await
            .expect("admit");
        payments.served(&good, 30_000_000);
        payments
            .accept_voucher(voucher(&payer, good, 30))
            .expect("voucher");
    }
    // A voucher, validly signed, for a channel the ledger has never seen, kept beside it.
    let unknown = Hash32::from_bytes([9; 32]);
    {
        let db = redb::Database::create(&path).expect("store");
        let t: redb::TableDefinition<&[u8; 32], &[u8]> = redb::TableDefinition::new("vouchers");
        let w = db.begin_write().expect("write");
        let bytes = borsh::to_vec(&voucher(&payer, unknown, 500)).expect("encode");
        w.open_table(t)
            .expect("table")
            .insert(unknown.as_bytes(), bytes.as_slice())
            .expect("insert");
        w.commit().expect("commit");
    }
    let payments = open_payments(&url, &provider, &path).await;
    let total = payments
        .claim_all(&settlement_of(&url, &provider))
        .await
        .expect("claim");
    assert_eq!(
        total,
        Amount::new(30),
        "the good channel's claim was blocked"
    );
    // The refused voucher is still kept and retried: alone now, its refusal is the answer.
    assert!(
        payments
            .claim_all(&settlement_of(&url, &provider))
            .await
            .is_err(),
        "a voucher for an unknown channel was claimed"
    );
    let l = Client::new(&url).expect("client");
    let c = tokio::task::spawn_blocking(move || l.channel(&good))
        .await
        .expect("join")
        .expect("ledger")
        .expect("channel");
    assert_eq!(c.claimed, Amount::new(30));
}

/// Vouchers lived in memory: a crash lost the revenue they promised. Now the best voucher of
/// each channel is durable and a restarted provider claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vouchers_survive_a_restart_and_are_claimed() {
    let dir = tempfile::tempdir().expect("tmp");
    let (seq, provider, payer) = (
        Keypair::from_seed([1; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([3; 32]),
    );
    let url = ledger(dir.path(), &seq, &[&provider, &payer], 1_000_000_000).await;
    let channel = open_channel(&url, &payer, &provider, 1_000).await;
    let path = dir.path().join("vouchers.redb");
    {
        let payments = open_payments(&url, &provider, &path).await;
        let _r = payments
            .check(channel, payer.account(), Amount::new(10))
            .await
            .expect("admit");
        payments.served(&channel, 40_000_000);
        payments
            .accept_voucher(voucher(&payer, channel, 40))
            .expect("voucher");
        // The process dies here, before any claim.
    }
    let payments = open_payments(&url, &provider, &path).await;
    let total = payments
        .claim_all(&settlement_of(&url, &provider))
        .await
        .expect("claim");
    assert_eq!(total, Amount::new(40));
    let l = Client::new(&url).expect("client");
    let c = tokio::task::spawn_blocking(move || l.channel(&channel))
        .await
        .expect("join")
        .expect("ledger")
        .expect("channel");
    assert_eq!(c.claimed, Amount::new(40));
}

/// The writing half of an in-memory stream that holds one write at a time: a reader that
/// reads slowly holds the provider's answer back, as a slow client or a long answer does.
struct SlowPipe {
    request: futures::io::Cursor<Vec<u8>>,
    out: futures::channel::mpsc::Sender<Vec<u8>>,
}

impl futures::AsyncRead for SlowPipe {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.request).poll_read(cx, buf)
    }
}

impl futures::AsyncWrite for SlowPipe {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match self.out.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Ready(Ok(())) => Poll::Ready(
                self.out
                    .start_send(buf.to_vec())
                    .map(|()| buf.len())
                    .map_err(|_| std::io::ErrorKind::BrokenPipe.into()),
            ),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A receipt names the provider's view of the epoch when its answer ends, which used to come
/// from the claim loop alone (slow under load, and 0 until its first tick): the gateway
/// refuses an epoch outside the answer's life, give or take one. An answer held back across
/// three epoch boundaries must still name an epoch it ran in, and one recent enough to land
/// in the root of its epoch or the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_names_an_epoch_its_answer_ran_in() {
    let dir = tempfile::tempdir().expect("tmp");
    let (seq, provider_key, payer) = (
        Keypair::from_seed([1; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([3; 32]),
    );
    let epoch_ms = 150;
    let url = ledger_with_epochs(
        dir.path(),
        &seq,
        &[&provider_key, &payer],
        1_000_000_000,
        Some(Duration::from_millis(epoch_ms)),
    )
    .await;
    let channel = open_channel(&url, &payer, &provider_key, 10_000).await;
    let model = tiny_model(&dir.path().join("model"));
    let model_id = Hash32::from_slice(&model.id.0).expect("id");
    let cfg = provider_config(&url, &provider_key, 12, dir.path(), 50);
    let provider = Provider::start(&cfg, model).await.expect("provider");
    let service = provider.service().clone();
    tokio::spawn(provider.run(cfg.clone(), std::future::pending()));
    let ledger = Client::new(&url).expect("client");
    let epoch_now = || {
        let l = ledger.clone();
        async move {
            tokio::task::spawn_blocking(move || l.status().expect("status").epoch)
                .await
                .expect("join")
        }
    };
    // Let the provider settle into following the ledger.
    tokio::time::sleep(Duration::from_millis(4 * epoch_ms)).await;

    let request = hark_request(&payer, &provider_key, channel, model_id, 8);
    let (out, mut chunks) = futures::channel::mpsc::channel(0);
    let pipe = SlowPipe {
        request: futures::io::Cursor::new(encode_frame(&request.sign(&payer))),
        out,
    };
    let started = epoch_now().await;
    let answer = tokio::spawn(service.handle(pipe));
    use futures::StreamExt;
    let mut bytes = chunks.next().await.expect("the provider answers");
    // The answer is held back until three epoch boundaries have passed and the provider has
    // had time to see them.
    while epoch_now().await < started + 3 {
        tokio::time::sleep(Duration::from_millis(epoch_ms / 3)).await;
    }
    tokio::time::sleep(Duration::from_millis(4 * 50)).await;
    while let Some(chunk) = chunks.next().await {
        bytes.extend(chunk);
    }
    answer.await.expect("served");
    let mut frames = futures::io::Cursor::new(bytes);
    let receipt = loop {
        match read_frame::<_, Frame>(&mut frames).await.expect("frame") {
            Some(Frame::Done { receipt, .. }) => break receipt,
            Some(Frame::Error { message, .. }) => panic!("refused: {message}"),
            Some(_) => {}
            None => panic!("no receipt"),
        }
    };
    let (named, ended) = (receipt.receipt.epoch, epoch_now().await);
    assert!(
        named + 1 >= ended && named >= started && named <= ended,
        "the answer ran from epoch {started} to {ended}; its receipt names {named}"
    );
}

/// The tiny model's provider on `ledger_url`, listening with network seed `net_seed` and
/// claiming every `claim_ms`.
fn provider_config(
    ledger_url: &str,
    provider_key: &Keypair,
    net_seed: u8,
    dir: &std::path::Path,
    claim_ms: u64,
) -> ProviderConfig {
    ProviderConfig {
        settlement: SettlementTarget::Ledger {
            url: ledger_url.into(),
        },
        account_seed: provider_key.seed(),
        net: net(net_seed, vec![]),
        model_name: "tiny".into(),
        price_in: Amount::new(1_000_000),
        price_out: Amount::new(3_000_000),
        stake: Amount::new(500),
        capacity: 4,
        hardware: "cpu".into(),
        region: "test".into(),
        offer_ttl: Duration::from_secs(30),
        renew_every: Duration::from_secs(5),
        claim_every: Duration::from_millis(claim_ms),
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

/// "Hark, who goes" from `payer` to `provider_key` over `channel`, at the config's prices.
fn hark_request(
    payer: &Keypair,
    provider_key: &Keypair,
    channel: Hash32,
    model_id: Hash32,
    max_tokens: u32,
) -> InferenceRequest {
    InferenceRequest {
        chain_id: CHAIN,
        request_id: new_request_id(),
        payer: payer.account(),
        channel,
        provider: provider_key.account(),
        model: model_id,
        prompt: PromptSpec::Text("Hark, who goes".into()),
        resume: vec![],
        max_tokens,
        stop: vec![],
        sampling: Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 5,
            ..Default::default()
        },
        price_in: Amount::new(1_000_000),
        price_out: Amount::new(3_000_000),
        issued_ms: now_ms(),
    }
}

/// Sends `request` to `service` through an in-memory stream; the provider's last frame: its
/// refusal, or the answer's `Done`.
async fn answer_of(
    service: &std::sync::Arc<agora_provider::Service>,
    request: InferenceRequest,
    payer: &Keypair,
) -> Frame {
    use futures::StreamExt;
    let (out, chunks) = futures::channel::mpsc::channel(0);
    let pipe = SlowPipe {
        request: futures::io::Cursor::new(encode_frame(&request.sign(payer))),
        out,
    };
    let served = tokio::spawn({
        let service = service.clone();
        async move { service.handle(pipe).await }
    });
    let bytes: Vec<u8> = chunks.concat().await;
    served.await.expect("handled");
    let mut frames = futures::io::Cursor::new(bytes);
    let mut last = None;
    while let Some(f) = read_frame::<_, Frame>(&mut frames).await.expect("frame") {
        last = Some(f);
    }
    last.expect("the provider answered")
}

/// Issue 13, item 4 (provider part): the provider checked that a channel existed and was not
/// closed, never whether the payer had asked to close it. A payer whose channel has expired
/// asks to close it and keeps sending requests: the escrow goes back to it at the end of the
/// claim window, possibly before the provider holds, or can land, a voucher for what it
/// served. Now a closing channel is refused with a payment error naming it, while a channel
/// that stays open is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_payer_is_closing_is_not_served() {
    let dir = tempfile::tempdir().expect("tmp");
    let (seq, provider_key, payer, other) = (
        Keypair::from_seed([1; 32]),
        Keypair::from_seed([2; 32]),
        Keypair::from_seed([3; 32]),
        Keypair::from_seed([4; 32]),
    );
    let epoch_ms = 400;
    let url = ledger_with_epochs(
        dir.path(),
        &seq,
        &[&provider_key, &payer, &other],
        1_000_000_000,
        Some(Duration::from_millis(epoch_ms)),
    )
    .await;
    let closing = open_channel(&url, &payer, &provider_key, 10_000).await;
    let open = open_channel(&url, &other, &provider_key, 10_000).await;
    let model = tiny_model(&dir.path().join("model"));
    let model_id = Hash32::from_slice(&model.id.0).expect("id");
    let cfg = provider_config(&url, &provider_key, 13, dir.path(), 50);
    let provider = Provider::start(&cfg, model).await.expect("provider");
    let service = provider.service().clone();
    tokio::spawn(provider.run(cfg.clone(), std::future::pending()));
    let ledger = Client::new(&url).expect("client");
    let epoch_now = || {
        let l = ledger.clone();
        async move {
            tokio::task::spawn_blocking(move || l.status().expect("status").epoch)
                .await
                .expect("join")
        }
    };
    // A view of the channel cached while it was young must not outlive its expiry.
    let payments = agora_provider::Payments::new(
        provider_key.account(),
        Arc::new(settlement_of(&url, &provider_key)),
    );
    drop(
        payments
            .check_at(closing, payer.account(), Amount::new(1), epoch_now().await)
            .await
            .expect("a young channel is admitted"),
    );
    // Wait for the channel to expire, then ask to close it.
    let closes_epoch = loop {
        let (l, p) = (ledger.clone(), payer.clone());
        let closed = tokio::task::spawn_blocking(move || {
            let c = l.channel(&closing).expect("ledger").expect("channel");
            if l.status().expect("status").epoch < c.expires_epoch {
                return None;
            }
            let close = Tx {
                chain_id: CHAIN,
                from: p.account(),
                nonce: l.next_nonce(&p.account()).expect("nonce"),
                body: TxBody::CloseChannel { channel: closing },
            }
            .sign(&p);
            l.submit(&close).expect("close");
            loop {
                let c = l.channel(&closing).expect("ledger").expect("channel");
                if let Some(e) = c.closes_epoch {
                    return Some(e);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .expect("join");
        if let Some(e) = closed {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(epoch_ms / 4)).await;
    };
    let frame = answer_of(
        &service,
        hark_request(&payer, &provider_key, closing, model_id, 8),
        &payer,
    )
    .await;
    let cached = payments
        .check_at(closing, payer.account(), Amount::new(1), epoch_now().await)
        .await;
    assert!(
        matches!(
            cached,
            Err(agora_provider::payments::PaymentError::Closing { .. })
        ),
        "the cached view admitted a closing channel"
    );
    assert!(
        epoch_now().await < closes_epoch,
        "the test asked after the channel had closed"
    );
    match frame {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::Payment, "{message}");
            assert!(message.contains("closing"), "{message}");
        }
        other => panic!("served on a closing channel: {other:?}"),
    }
    let frame = answer_of(
        &service,
        hark_request(&other, &provider_key, open, model_id, 8),
        &other,
    )
    .await;
    assert!(
        matches!(frame, Frame::Done { .. }),
        "an open channel is served: {frame:?}"
    );
}
