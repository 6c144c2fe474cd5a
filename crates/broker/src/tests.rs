//! The buyer against a lying provider: a scripted provider side of the inference stream
//! (its frames fixed in advance) tries to overcharge, to stream past the answer's end and to
//! put words in the client's mouth. Each test is an attack that used to succeed.

use std::pin::Pin;
use std::task::{Context, Poll};

use agora_model::{ChatMessage, ModelId, PromptModel, TextTokenizer};
use agora_net::protocol::{Receipt, Sampling};

use super::*;

const TEXT: &str = "To be, or not to be, that is the question:\n\
    Whether 'tis nobler in the mind to suffer\n\
    The slings and arrows of outrageous fortune,\n";

/// A provider whose every frame is written before the request arrives.
struct Scripted {
    input: futures::io::Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl futures::AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl futures::AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.output).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn script(frames: &[Frame]) -> Scripted {
    let mut input = Vec::new();
    for f in frames {
        write_frame(&mut input, f).await.expect("frame");
    }
    Scripted {
        input: futures::io::Cursor::new(input),
        output: Vec::new(),
    }
}

fn payer() -> Keypair {
    Keypair::from_seed([1; 32])
}

fn provider() -> Keypair {
    Keypair::from_seed([2; 32])
}

fn model() -> Arc<PromptModel> {
    let tokenizer = TextTokenizer::train_bpe(std::iter::repeat_n(TEXT, 20), 300).expect("train");
    Arc::new(PromptModel {
        id: ModelId([7; 32]),
        tokenizer,
        chat_template: None,
        context_len: 4096,
        quantization: "F32".into(),
    })
}

fn request(resume: Vec<u32>, max_tokens: u32) -> InferenceRequest {
    InferenceRequest {
        chain_id: 9,
        request_id: [3; 16],
        payer: payer().account(),
        channel: Hash32::of(b"channel"),
        provider: provider().account(),
        model: Hash32::from_slice(&[7; 32]).expect("hash"),
        prompt: PromptSpec::Chat(vec![("user".into(), "To be".into())]),
        resume,
        max_tokens,
        stop: vec![],
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 5,
            ..Default::default()
        },
        price_in: Amount::new(1_000),
        price_out: Amount::new(2_000),
        issued_ms: now_ms(),
    }
}

fn answer(
    prompt: PromptCount,
    render: Option<Arc<PromptModel>>,
    req: &InferenceRequest,
) -> (Answer, oneshot::Receiver<Result<Started, BackendError>>) {
    let (first, first_rx) = oneshot::channel();
    let (events, events_rx) = mpsc::channel(1024);
    let a = Answer {
        first: Some((first, events_rx)),
        events,
        delivered: req.resume.clone(),
        prompt,
        reported_prompt: None,
        render: render.map(|m| (m, TextRenderer::new(&req.stop))),
        max_tokens: req.max_tokens,
        client_gone: false,
        epoch: 0,
        ledger_epoch: Arc::new(AtomicU64::new(0)),
    };
    (a, first_rx)
}

/// The receipt a provider signs for `output` new tokens after the request's resumed ones,
/// claiming `prompt_tokens` and charging `cost` (None: the honest cost).
fn receipt(
    req: &InferenceRequest,
    prompt: &[u32],
    prompt_tokens: u32,
    output: &[u32],
    cost: Option<u128>,
) -> SignedReceipt {
    let all: Vec<u32> = req.resume.iter().chain(output).copied().collect();
    let honest = agora_market::cost_micros(
        req.price_in,
        req.price_out,
        u64::from(prompt_tokens) + req.resume.len() as u64,
        output.len() as u64,
    )
    .unwrap_or(u128::MAX);
    Receipt {
        chain_id: req.chain_id,
        epoch: 0,
        request_id: req.request_id,
        provider: req.provider,
        payer: req.payer,
        channel: req.channel,
        model: req.model,
        prompt_hash: tokens_hash(prompt),
        output_hash: tokens_hash(&all),
        prompt_tokens,
        resumed_tokens: req.resume.len() as u32,
        output_tokens: output.len() as u32,
        sampling: req.sampling.clone(),
        fingerprint_hash: Hash32::default(),
        price_in: req.price_in,
        price_out: req.price_out,
        cost_micros: cost.unwrap_or(honest),
        started_ms: 0,
        finished_ms: 0,
    }
    .sign(&provider())
}

fn frames(
    req: &InferenceRequest,
    claimed_prompt: u32,
    output: &[u32],
    texts: &[&str],
    done: Option<SignedReceipt>,
) -> Vec<Frame> {
    let mut f = vec![Frame::Accepted {
        prompt_tokens: claimed_prompt,
    }];
    for (i, &t) in output.iter().enumerate() {
        f.push(Frame::Token {
            index: (req.resume.len() + i) as u32,
            token: t,
            text: texts.get(i).copied().unwrap_or_default().to_string(),
            logprobs: None,
        });
    }
    if let Some(r) = done {
        f.push(Frame::Done {
            finish: Finish::Stop,
            tail: String::new(),
            receipt: Box::new(r),
            chain_sig: None,
        });
    }
    f
}

const T: Timeouts = Timeouts {
    accept: Duration::from_secs(5),
    stall: Duration::from_secs(5),
};

fn chat_ids(m: &PromptModel) -> Vec<u32> {
    m.chat_ids(&[ChatMessage::new("user", "To be")])
        .expect("ids")
}

fn exact(m: &PromptModel) -> PromptCount {
    count_prompt(Some(m), &request(vec![], 4).prompt).expect("count")
}

/// Text the client was sent.
async fn client_text(first: oneshot::Receiver<Result<Started, BackendError>>) -> String {
    let Ok(Ok(mut started)) = first.await else {
        return String::new();
    };
    let mut out = String::new();
    while let Ok(Ok(StreamEvent::Text(t))) = started.events.try_recv() {
        out.push_str(&t);
    }
    out
}

#[tokio::test]
async fn honest_answer_is_paid_exactly_its_tokens() {
    let m = model();
    let req = request(vec![], 4);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" or not").expect("enc");
    let r = receipt(&req, &ids, ids.len() as u32, &out, None);
    let mut s = script(&frames(&req, ids.len() as u32, &out, &[], Some(r))).await;
    let (mut a, first) = answer(exact(&m), Some(m.clone()), &req);
    let (_, _, _, paid) = relay(&mut s, &payer(), &req, &mut a, T, || {})
        .await
        .unwrap_or_else(|_| panic!("honest answer refused"));
    let want = agora_market::cost_micros(
        req.price_in,
        req.price_out,
        ids.len() as u64,
        out.len() as u64,
    );
    assert_eq!(Some(paid), want);
    drop(a);
    assert_eq!(client_text(first).await, " or not");
}

#[tokio::test]
async fn provider_claiming_u32_max_prompt_tokens_is_not_paid() {
    let m = model();
    let req = request(vec![], 4);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" or").expect("enc");
    let r = receipt(&req, &ids, u32::MAX, &out, None);
    let mut s = script(&frames(&req, u32::MAX, &out, &[], Some(r))).await;
    let (mut a, _first) = answer(exact(&m), Some(m.clone()), &req);
    let got = relay(&mut s, &payer(), &req, &mut a, T, || {}).await;
    assert!(matches!(got, Err(Outcome::Failed(_))));
}

#[tokio::test]
async fn overclaimed_prompt_in_the_receipt_alone_is_not_paid() {
    // Honest in its Accepted frame, greedy in its signed receipt.
    let m = model();
    let req = request(vec![], 4);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" or").expect("enc");
    let r = receipt(&req, &ids, ids.len() as u32 + 1000, &out, None);
    let mut s = script(&frames(&req, ids.len() as u32, &out, &[], Some(r))).await;
    let (mut a, _first) = answer(exact(&m), Some(m.clone()), &req);
    let got = relay(&mut s, &payer(), &req, &mut a, T, || {}).await;
    assert!(matches!(got, Err(Outcome::Failed(_))));
}

#[tokio::test]
async fn receipt_naming_an_epoch_out_of_the_challenge_window_is_not_paid() {
    // A receipt for an epoch long past (or far ahead) could never be challenged for
    // missing from the provider's roots: the payer refuses it. A neighbouring epoch is fine.
    for (named, paid) in [
        (0u64, false),
        (8, false),
        (9, true),
        (10, true),
        (11, true),
        (50, false),
    ] {
        let got = is_paid_for_epoch(named, 10, None).await;
        assert_eq!(got, paid, "receipt for epoch {named} at epoch 10");
    }
}

/// Whether an answer started at epoch `start` is paid with a receipt naming epoch `named`,
/// the gateway's view of the ledger having moved to `now` (if given) when the receipt came.
async fn is_paid_for_epoch(named: u64, start: u64, now: Option<u64>) -> bool {
    let m = model();
    let req = request(vec![], 4);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" or").expect("enc");
    let mut r = receipt(&req, &ids, ids.len() as u32, &out, None).receipt;
    r.epoch = named;
    let r = r.sign(&provider());
    let mut s = script(&frames(&req, ids.len() as u32, &out, &[], Some(r))).await;
    let (mut a, _first) = answer(exact(&m), Some(m.clone()), &req);
    a.epoch = start;
    if let Some(now) = now {
        a.ledger_epoch.store(now, Ordering::Relaxed);
    }
    relay(&mut s, &payer(), &req, &mut a, T, || {})
        .await
        .is_ok()
}

#[tokio::test]
async fn an_answer_that_outlived_epochs_is_paid_for_an_epoch_it_ran_in() {
    // The provider names the epoch its answer ended in; the gateway used to check it against
    // the epoch the answer started in alone, so every answer that outlived an epoch (a long
    // one, or any under load) was refused and its payer left "behind". An epoch the answer
    // ran in, give or take one, is paid; one before its start or past its end is not.
    for (named, paid) in [
        (8u64, false),
        (9, true),
        (10, true),
        (12, true),
        (13, true),
        (14, true),
        (15, false),
        (50, false),
    ] {
        let got = is_paid_for_epoch(named, 10, Some(13)).await;
        assert_eq!(
            got, paid,
            "receipt for epoch {named}, answer from epoch 10 to 13"
        );
    }
}

#[tokio::test]
async fn resumed_answer_cannot_overclaim_the_prompt() {
    // The resume path used to skip the prompt check altogether.
    let m = model();
    let resume = m.tokenizer.encode(" or").expect("enc");
    let req = request(resume, 8);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" not").expect("enc");
    let r = receipt(&req, &ids, u32::MAX / 2, &out, None);
    let mut s = script(&frames(&req, u32::MAX / 2, &out, &[], Some(r))).await;
    let (mut a, _first) = answer(exact(&m), Some(m.clone()), &req);
    let got = relay(&mut s, &payer(), &req, &mut a, T, || {}).await;
    assert!(matches!(got, Err(Outcome::Failed(_))));
}

#[tokio::test]
async fn resumed_tokens_are_priced_like_prompt() {
    let m = model();
    let resume = m.tokenizer.encode(" or").expect("enc");
    let req = request(resume.clone(), 8);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" not").expect("enc");
    let r = receipt(&req, &ids, ids.len() as u32, &out, None);
    let mut s = script(&frames(&req, ids.len() as u32, &out, &[], Some(r))).await;
    let (mut a, _first) = answer(exact(&m), Some(m.clone()), &req);
    let (_, _, _, paid) = relay(&mut s, &payer(), &req, &mut a, T, || {})
        .await
        .unwrap_or_else(|_| panic!("honest resumed answer refused"));
    let prefill = (ids.len() + resume.len()) as u64;
    assert_eq!(
        Some(paid),
        agora_market::cost_micros(req.price_in, req.price_out, prefill, out.len() as u64)
    );
    // And never more than that.
    let r = receipt(&req, &ids, ids.len() as u32, &out, Some(paid + 1));
    let mut s = script(&frames(&req, ids.len() as u32, &out, &[], Some(r))).await;
    let (mut a, _first) = answer(exact(&m), Some(m.clone()), &req);
    let got = relay(&mut s, &payer(), &req, &mut a, T, || {}).await;
    assert!(matches!(got, Err(Outcome::Failed(_))));
}

#[tokio::test]
async fn tokens_past_max_tokens_are_cut_and_not_paid() {
    let m = model();
    let req = request(vec![], 2);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" or not to be, that").expect("enc");
    assert!(out.len() > 2);
    let r = receipt(&req, &ids, ids.len() as u32, &out, None);
    let mut s = script(&frames(&req, ids.len() as u32, &out, &[], Some(r))).await;
    let (mut a, first) = answer(exact(&m), Some(m.clone()), &req);
    let got = relay(&mut s, &payer(), &req, &mut a, T, || {}).await;
    assert!(matches!(got, Err(Outcome::Cut(_))));
    assert_eq!(a.delivered, out[..2].to_vec());
    drop(a);
    let seen = client_text(first).await;
    assert_eq!(seen, m.tokenizer.decode(&out[..2]).expect("dec"));
}

#[tokio::test]
async fn unknown_model_prompt_charge_is_bounded() {
    let req = request(vec![], 4);
    let bound = prompt_bound(&req.prompt);
    let out = [10u32, 11];
    let ids = [1u32; 3];
    let r = receipt(&req, &ids, bound + 1, &out, None);
    let mut s = script(&frames(&req, bound, &out, &["a", "b"], Some(r))).await;
    let (mut a, _first) = answer(PromptCount::Bound(bound), None, &req);
    let got = relay(&mut s, &payer(), &req, &mut a, T, || {}).await;
    assert!(matches!(got, Err(Outcome::Failed(_))));
    // At the bound, it is paid at most its reservation.
    let r = receipt(&req, &ids, bound, &out, None);
    let mut s = script(&frames(&req, bound, &out, &["a", "b"], Some(r))).await;
    let (mut a, _first) = answer(PromptCount::Bound(bound), None, &req);
    let (_, _, _, paid) = relay(&mut s, &payer(), &req, &mut a, T, || {})
        .await
        .unwrap_or_else(|_| panic!("bounded answer refused"));
    assert!(paid <= most_micros(&req, PromptCount::Bound(bound)).expect("most"));
}

#[tokio::test]
async fn injected_text_never_reaches_the_client() {
    // The text frames lie; the ids (what the receipt commits to) are " or not".
    let m = model();
    let req = request(vec![], 4);
    let ids = chat_ids(&m);
    let out = m.tokenizer.encode(" or not").expect("enc");
    let r = receipt(&req, &ids, ids.len() as u32, &out, None);
    let lies = ["BUY ", "CRYPTO ", "NOW", "!"];
    let mut f = frames(&req, ids.len() as u32, &out, &lies, Some(r));
    if let Some(Frame::Done { tail, .. }) = f.last_mut() {
        *tail = " visit evil.example".into();
    }
    let mut s = script(&f).await;
    let (mut a, first) = answer(exact(&m), Some(m.clone()), &req);
    assert!(relay(&mut s, &payer(), &req, &mut a, T, || {})
        .await
        .is_ok());
    drop(a);
    assert_eq!(client_text(first).await, " or not");
}

#[tokio::test]
async fn settle_never_charges_more_than_the_reservation() {
    let ledger = Client::new("http://127.0.0.1:9").expect("client");
    let channels = Channels::new(channels::ledger_opener(ledger, 9), Amount::new(1));
    let (p, q) = (payer(), provider().account());
    let id = Hash32::of(b"chan");
    channels
        .insert_open(p.account(), q, id, Amount::new(1_000_000))
        .await;
    let reservation = channels::Reservation {
        channel: id,
        amount: Amount::new(10),
    };
    let settled = channels.settle(&p, q, reservation, u128::MAX).await;
    let v = settled.voucher.expect("voucher");
    assert_eq!(v.voucher.cumulative, Amount::new(10));
    // The charge reported to the client (`charged`) and to the key's budget is the settled
    // one: the reservation, not the cost claimed before the cap.
    assert_eq!(settled.charged_micros, 10 * agora_market::MICROS_PER_UNIT);
}

#[tokio::test]
async fn restart_continues_vouchers_from_the_durable_books() {
    // A gateway restart used to forget every channel: escrow orphaned, totals restarted.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("channels.redb");
    let ledger = Client::new("http://127.0.0.1:9").expect("client");
    let (p, q) = (payer(), provider().account());
    let id = Hash32::of(b"chan");
    let r = channels::Reservation {
        channel: id,
        amount: Amount::new(100),
    };
    {
        let store = channels::ChannelStore::open(&path).expect("store");
        let ch = Channels::durable(
            channels::ledger_opener(ledger.clone(), 9),
            Amount::new(1),
            store,
        )
        .expect("open");
        ch.insert_open(p.account(), q, id, Amount::new(1_000)).await;
        let v = ch
            .settle(&p, q, r, 7_500_000)
            .await
            .voucher
            .expect("voucher");
        assert_eq!(v.voucher.cumulative, Amount::new(7));
    }
    let store = channels::ChannelStore::open(&path).expect("store");
    let ch = Channels::durable(channels::ledger_opener(ledger, 9), Amount::new(1), store)
        .expect("reopen");
    assert_eq!(ch.channel_of(&p.account(), &q).await, Some(id));
    assert_eq!(ch.spent_micros(&p.account(), &q).await, Some(7_500_000));
    let v = ch
        .settle(&p, q, r, 2_500_000)
        .await
        .voucher
        .expect("voucher");
    assert_eq!(v.voucher.cumulative, Amount::new(10));
}

/// The receipt document `GET /v1/receipts/{id}` serves is checkable by anyone: its signed
/// message is the receipt's signing bytes and verifies under the provider's key, and the id
/// is the hash of its encoding under the receipt-hash domain.
#[test]
fn receipt_document_verifies_independently() {
    let req = request(vec![], 4);
    let signed = receipt(&req, &[1, 2], 2, &[5, 6], None);
    let doc = receipt_document(&signed);
    let msg = hex::decode(doc["signed_message"].as_str().expect("message")).expect("hex");
    assert!(agora_core::sig::verify_one(
        &signed.receipt.provider,
        &msg,
        &signed.sig
    ));
    let encoded = hex::decode(doc["encoded"].as_str().expect("encoded")).expect("hex");
    let mut preimage = (RECEIPT_ID_DOMAIN.len() as u32).to_le_bytes().to_vec();
    preimage.extend_from_slice(RECEIPT_ID_DOMAIN.as_bytes());
    preimage.extend_from_slice(&encoded);
    assert_eq!(
        blake3::hash(&preimage).to_hex().to_string(),
        doc["id"].as_str().expect("id")
    );
    assert_eq!(doc["id"].as_str(), Some(signed.hash().to_string().as_str()));
    assert_eq!(
        doc["receipt"]["output_tokens"].as_u64(),
        Some(u64::from(signed.receipt.output_tokens))
    );
}

fn job() -> Job {
    Job {
        model: "m".into(),
        prompt: Prompt::Text("x".into()),
        max_tokens: 4,
        temperature: 1.0,
        top_p: 1.0,
        seed: None,
        stop: vec![],
        routing: ProviderPrefs::default(),
        budget: None,
        constraint: None,
        top_logprobs: None,
        tools: false,
    }
}

#[test]
fn a_request_needs_the_features_it_uses_and_is_refused_when_no_offer_serves_them() {
    assert_eq!(needs(&job()), Features::NONE);
    let constrained = Job {
        constraint: Some("{\"type\":\"object\"}".into()),
        tools: true,
        top_logprobs: Some(2),
        ..job()
    };
    assert_eq!(needs(&constrained), Features::ALL);
    assert_eq!(unserved(Features::ALL, needs(&constrained)), None);
    assert_eq!(unserved(Features::NONE, needs(&job())), None);
    let why = unserved(Features::LOGPROBS, needs(&constrained)).expect("refused");
    assert!(
        why.contains("tools") && why.contains("response_format"),
        "{why}"
    );
    assert!(!why.contains("logprobs"), "{why}");
}

/// The attack: a provider that also runs a verifier reveals "failed" on its rivals' leaves
/// assigned to it. Nothing confirms the failures (each is charged to it as a false alarm),
/// but each used to lower the rival's reputation at once, for good, and the attacker took the
/// rival's traffic. Now only passes move reputation; a real fraud ends in `Slashed`, which
/// drops the provider from the market.
#[test]
fn unconfirmed_failures_leave_reputation_where_passes_put_it() {
    let (rival, other) = (
        Keypair::from_seed([61; 32]).account(),
        Keypair::from_seed([62; 32]).account(),
    );
    let attacker = Keypair::from_seed([63; 32]).account();
    let revealed = |provider, index, passed| SettlementEvent::AuditRevealed {
        verifier: attacker,
        provider,
        epoch: 4,
        index,
        passed,
    };
    let mut tally = AuditTally::default();
    let mut last = std::collections::HashMap::new();
    let mut events = vec![];
    for i in 0..3 {
        events.push(revealed(rival, i, true));
        events.push(revealed(other, i, true));
    }
    // False failures on the rival's leaves only.
    for i in 3..8 {
        events.push(revealed(rival, i, false));
    }
    for ev in &events {
        if let Some((p, rep)) = tally.apply(ev) {
            last.insert(p, rep);
        }
    }
    let by_passes = (3.0 + 1.0) / (3.0 + 2.0);
    assert_eq!(last.get(&other), Some(&by_passes));
    assert_eq!(
        last.get(&rival),
        Some(&by_passes),
        "unconfirmed failures moved the rival's reputation"
    );
}
