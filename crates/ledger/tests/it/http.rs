use crate::common::{amt, genesis, keys, CHAIN};
use agora_core::Keypair;
use agora_ledger::client::Client;
use agora_ledger::server::{run, SequencerConfig, ServeConfig};
use agora_ledger::tx::channel_id;
use agora_ledger::{ClientError, Event, Tx, TxBody, Voucher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

struct Server {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

fn start(keys: &[Keypair], epoch_interval: Option<Duration>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        db: dir.path().join("ledger.redb"),
        genesis: Some(genesis(keys, 1000)),
        sequencer_key: Some(keys[0].clone()),
        sequencer: SequencerConfig {
            epoch_interval,
            ..SequencerConfig::default()
        },
    };
    rt.spawn(async move {
        let r = run(
            cfg,
            move |a| {
                let _ = bound_tx.send(a);
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await;
        if let Err(e) = r {
            eprintln!("server failed: {e}");
        }
    });
    let addr = bound_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server bound");
    Server {
        addr,
        _rt: rt,
        _stop: stop,
        _dir: dir,
    }
}

fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer and close before reading all of an oversized body.
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn round_trip_through_typed_client() {
    let k = keys(3);
    let srv = start(&k, None);
    let c = Client::new(&format!("http://{}", srv.addr)).expect("client");

    let st = c.status().expect("status");
    assert_eq!((st.chain_id, st.height, st.supply), (CHAIN, 0, amt(3000)));

    let t = Tx {
        chain_id: CHAIN,
        from: k[1].account(),
        nonce: 0,
        body: TxBody::Transfer {
            to: k[2].account(),
            amount: amt(250),
        },
    }
    .sign(&k[1]);
    let r = c.submit(&t).expect("submit");
    assert_eq!(r.tx_id, t.id());
    assert_eq!(r.height, 1);
    assert!(matches!(r.events[0], Event::Transfer { amount, .. } if amount == amt(250)));
    // Acknowledged means committed: the block and the index already hold it.
    assert_eq!(c.tx(&t.id()).expect("tx").map(|l| l.height), Some(1));
    let b = c.block(1).expect("block").expect("block 1");
    assert_eq!(b.header.hash(), r.block_hash);
    assert_eq!(c.blocks(1, 10).expect("blocks").len(), 1);

    let a = c
        .account(&k[2].account())
        .expect("account")
        .expect("exists");
    assert_eq!(a.balance, amt(1250));
    assert_eq!(c.next_nonce(&k[1].account()).expect("nonce"), 1);
    assert!(c
        .account(&Keypair::from_seed([77; 32]).account())
        .expect("query")
        .is_none());

    // The same transaction again: refused with its reason.
    match c.submit(&t) {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, "stale_nonce"),
        other => panic!("expected stale_nonce, got {other:?}"),
    }

    // Signed by someone else: refused before it reaches a block.
    let forged = Tx {
        nonce: 1,
        ..t.tx.clone()
    }
    .sign(&k[2]);
    match c.submit(&forged) {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, "bad_signature"),
        other => panic!("expected bad_signature, got {other:?}"),
    }

    // A channel and a voucher claim over HTTP.
    let open = Tx {
        chain_id: CHAIN,
        from: k[1].account(),
        nonce: 1,
        body: TxBody::OpenChannel {
            provider: k[2].account(),
            amount: amt(100),
            timeout_epochs: 3,
        },
    }
    .sign(&k[1]);
    c.submit(&open).expect("open");
    let ch = channel_id(CHAIN, &k[1].account(), 1);
    let voucher = Voucher {
        chain_id: CHAIN,
        channel: ch,
        cumulative: amt(40),
    };
    let claim = Tx {
        chain_id: CHAIN,
        from: k[2].account(),
        nonce: 0,
        body: TxBody::ClaimVoucher {
            payer_sig: voucher.sign(&k[1]),
            voucher: voucher.clone(),
            payer: k[1].account(),
        },
    }
    .sign(&k[2]);
    c.submit(&claim).expect("claim");
    let again = Tx {
        nonce: 1,
        ..claim.tx.clone()
    }
    .sign(&k[2]);
    match c.submit(&again) {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, "double_claim"),
        other => panic!("expected double_claim, got {other:?}"),
    }
    assert_eq!(
        c.channel(&ch).expect("channel").map(|c| c.claimed),
        Some(amt(40))
    );

    // Events: everything so far, and a long-poll that returns when a block lands.
    let evs = c.events(1, Duration::ZERO).expect("events");
    assert_eq!(evs.len(), 3);
    let height = c.status().expect("status").height;
    let poller = {
        let c = c.clone();
        std::thread::spawn(move || c.events(height + 1, Duration::from_secs(10)))
    };
    std::thread::sleep(Duration::from_millis(100));
    let t2 = Tx {
        chain_id: CHAIN,
        from: k[1].account(),
        nonce: 2,
        body: TxBody::Stake { amount: amt(10) },
    }
    .sign(&k[1]);
    c.submit(&t2).expect("stake");
    let got = poller.join().expect("poller").expect("events");
    assert_eq!(got.len(), 1);
    assert!(matches!(got[0].txs[0].events[0], Event::Staked { .. }));
    // The status is the last block's, cached when it was sealed (not rehashed per request).
    let st = c.status().expect("status");
    let tip = c.block(st.height).expect("block").expect("the tip block");
    assert_eq!(
        (st.state_hash, st.tip),
        (tip.header.state_hash, tip.header.hash())
    );

    // Malformed and oversized bodies are refused before the sequencer.
    let bad = raw(
        srv.addr,
        b"POST /v1/tx HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{bad}",
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("\"malformed\""), "{bad}");
    let big = vec![b'x'; 70 * 1024];
    let mut req = format!(
        "POST /v1/tx HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let resp = raw(srv.addr, &req);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let resp = raw(
        srv.addr,
        b"GET /v1/accounts/zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[test]
fn sequencer_advances_epochs_with_a_changing_beacon() {
    let k = keys(2);
    let srv = start(&k, Some(Duration::from_millis(30)));
    let c = Client::new(&format!("http://{}", srv.addr)).expect("client");
    let first = c.status().expect("status");
    let evs = c.events(1, Duration::from_secs(10)).expect("events");
    assert!(!evs.is_empty());
    std::thread::sleep(Duration::from_millis(200));
    let later = c.status().expect("status");
    assert!(later.epoch >= 2, "epoch {}", later.epoch);
    assert_ne!(later.beacon, first.beacon);
}
