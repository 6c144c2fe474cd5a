use crate::chain_or_skip;
use crate::common::params;
use agora_evm::{ClientOptions, SettlementClient};
use alloy::providers::Provider;
use axum::body::Bytes;
use axum::http::StatusCode;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A JSON-RPC proxy in front of Anvil that loses answers to `eth_sendRawTransaction`:
/// `lost_after` of them reach Anvil and their answer is replaced by a 502 (the worst case: the
/// transaction is in, the sender does not know); `lost_before` never reach Anvil.
#[derive(Default)]
struct Faults {
    lost_after: AtomicU32,
    lost_before: AtomicU32,
    sends: AtomicU32,
}

async fn forward(upstream: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let (upstream, body) = (upstream.to_owned(), body.to_vec());
    tokio::task::spawn_blocking(move || forward_blocking(&upstream, &body))
        .await
        .map_err(std::io::Error::other)?
}

fn forward_blocking(upstream: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let addr = upstream.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr)?;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let mut body = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < i + 2 + n {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[(i + 4 + n).min(b.len())..];
    }
    out
}

async fn proxy(upstream: String, faults: Arc<Faults>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: Bytes| {
            let upstream = upstream.clone();
            let faults = faults.clone();
            async move {
                let is_send = body.windows(22).any(|w| w == b"eth_sendRawTransaction");
                if is_send {
                    faults.sends.fetch_add(1, Ordering::SeqCst);
                    let take = |n: &AtomicU32| {
                        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                            .is_ok()
                    };
                    if take(&faults.lost_before) {
                        return (StatusCode::BAD_GATEWAY, Vec::new());
                    }
                    if take(&faults.lost_after) {
                        let _ = forward(&upstream, &body).await;
                        return (StatusCode::BAD_GATEWAY, Vec::new());
                    }
                }
                match forward(&upstream, &body).await {
                    Ok((status, body)) => (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                        body,
                    ),
                    Err(_) => (StatusCode::BAD_GATEWAY, Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_send_answers_are_retried_without_a_second_transaction() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    let faults = Arc::new(Faults::default());
    let url = proxy(chain.anvil.url().to_owned(), faults.clone()).await?;
    let fast = ClientOptions {
        backoff: Duration::from_millis(20),
        poll: Duration::from_millis(10),
        ..ClientOptions::default()
    };
    chain.admin.mint(chain.key(1).address(), 1_000).await?;
    let payer =
        SettlementClient::connect_with(&url, chain.key(1), chain.deployment.clone(), fast).await?;
    let prov =
        SettlementClient::connect_with(&url, chain.key(2), chain.deployment.clone(), fast).await?;
    payer.ensure_allowance(1_000).await?;

    // The stake reaches Anvil but its answer is lost: the client looks its hash up before
    // re-sending, learns the transaction is in, and stakes exactly once.
    faults.lost_after.store(1, Ordering::SeqCst);
    payer.stake(100).await?;
    assert_eq!(payer.account(payer.address()).await?.stake, 100);
    assert_eq!(payer.token_balance(payer.address()).await?, 900);
    assert_eq!(faults.lost_after.load(Ordering::SeqCst), 0, "the fault hit");

    // Sends that never arrive are simply re-sent.
    faults.lost_before.store(2, Ordering::SeqCst);
    let (id, _) = payer.open_channel(prov.address(), 300, 5).await?;
    assert_eq!(payer.token_balance(payer.address()).await?, 600);

    // A claim whose answer is lost pays once.
    faults.lost_after.store(1, Ordering::SeqCst);
    let sig = payer.sign_voucher(id, 120)?;
    prov.claim(id, 120, &sig).await?;
    assert_eq!(prov.token_balance(prov.address()).await?, 120);
    assert_eq!(payer.channel(id).await?.expect("open").claimed, 120);

    // One transaction per operation: approve, stake, open for the payer; claim for the provider.
    let n = chain
        .admin
        .provider()
        .get_transaction_count(payer.address())
        .await?;
    assert_eq!(n, 3);
    let n = chain
        .admin
        .provider()
        .get_transaction_count(prov.address())
        .await?;
    assert_eq!(n, 1);
    assert_eq!(
        faults.lost_before.load(Ordering::SeqCst),
        0,
        "the faults hit"
    );
    assert!(
        faults.sends.load(Ordering::SeqCst) >= 4 + 2,
        "faults were exercised"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_rpc_fails_with_the_attempt_count() -> anyhow::Result<()> {
    let chain = chain_or_skip!(params());
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", l.local_addr()?)
    };
    let fast = ClientOptions {
        attempts: 3,
        backoff: Duration::from_millis(5),
        patience: Duration::ZERO,
        ..ClientOptions::default()
    };
    let r =
        SettlementClient::connect_with(&dead, chain.key(1), chain.deployment.clone(), fast).await;
    match r {
        Err(agora_evm::EvmError::Rpc { attempts, .. }) => assert_eq!(attempts, 3),
        Err(e) => panic!("expected an RPC error, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    Ok(())
}
