//! Faults of the chain itself: Anvil stopped and restarted from its saved state, a reorg of
//! the last blocks, and a node that drops connections, answers errors or never answers while
//! many operations of one account are in flight. Nothing may be lost, sent twice or paid twice.

use agora_evm::anvil::{find_anvil, Anvil, AnvilConfig};
use agora_evm::{
    deploy, ClientOptions, Deployment, EvmError, Finality, Params, SettlementClient, Submitted,
};
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHAIN_ID: u64 = 31_337;

/// One Anvil that can be stopped and started again on the same port from its state file.
struct Node {
    bin: PathBuf,
    config: AnvilConfig,
    anvil: Option<Anvil>,
    keys: Vec<PrivateKeySigner>,
    dir: PathBuf,
}

/// A free port below the kernel's ephemeral range (32768 and up), so that while a node is down
/// between a crash and its restart no outgoing connection of a test running beside it (nor a
/// listener on port 0) can take its port, which made the restart fail now and then.
fn restartable_port(seed: u128) -> anyhow::Result<u16> {
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = (seed % u128::from(SPAN)) as u16;
    for i in 0..SPAN {
        let port = LOW + (start + i) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in {LOW}..{}", LOW + SPAN)
}

impl Node {
    /// `None` (printing why) when Anvil is not installed.
    fn start(tag: &str) -> anyhow::Result<Option<Node>> {
        let Some(bin) = find_anvil() else {
            eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
            return Ok(None);
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("agora-evm-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut config = AnvilConfig {
            chain_id: CHAIN_ID,
            port: restartable_port(nanos)?,
            state: Some(dir.join("state.json")),
            ..AnvilConfig::default()
        };
        let anvil = Anvil::start_with(&bin, &config)?;
        config.port = anvil.port();
        anyhow::ensure!(config.port != 0, "anvil's port");
        Ok(Some(Node {
            bin,
            config,
            keys: anvil.keys().to_vec(),
            anvil: Some(anvil),
            dir,
        }))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.port)
    }

    /// Stops it the way an operator does: it writes its state and exits.
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut a) = self.anvil.take() {
            a.stop()?;
        }
        Ok(())
    }

    /// Kills it outright: it writes nothing, so a restart comes back without the blocks
    /// mined since its state was last written.
    fn crash(&mut self) {
        drop(self.anvil.take());
    }

    /// Starts it again on the same port from the state it wrote.
    fn restart(&mut self) -> anyhow::Result<()> {
        // Anvil now and then exits at once when started on the port it just left (seen only
        // under a loaded full suite; cause not yet known): a second and third try, as an
        // operator restarting a node would.
        let mut tries = 0;
        loop {
            match Anvil::start_with(&self.bin, &self.config) {
                Ok(a) => {
                    self.anvil = Some(a);
                    return Ok(());
                }
                Err(e) if tries < 2 => {
                    eprintln!("restart failed ({e}); trying again");
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.anvil.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fast() -> ClientOptions {
    ClientOptions {
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        poll: Duration::from_millis(10),
        request_timeout: Duration::from_secs(2),
        receipt_timeout: Duration::from_secs(15),
        final_timeout: Duration::from_secs(15),
        ..ClientOptions::default()
    }
}

async fn client(
    url: &str,
    key: &PrivateKeySigner,
    d: &Deployment,
    options: ClientOptions,
) -> anyhow::Result<Arc<SettlementClient>> {
    Ok(Arc::new(
        SettlementClient::connect_with(url, key.clone(), d.clone(), options).await?,
    ))
}

/// Every token minted is in an account or in the contract, and the contract holds exactly
/// what it records (stake, unbonding, escrow, audit pool, plant bonds, burned).
async fn assert_conserved(
    c: &SettlementClient,
    accounts: &[Address],
    channels: &[B256],
    minted: u128,
) -> anyhow::Result<()> {
    let settlement = c.deployment().expect("deployed").settlement;
    let held = c.token_balance(settlement).await?;
    let mut outside = 0;
    let mut recorded = c.audit_pool().await? + c.burned().await? + c.plant_bonds().await?;
    for a in accounts {
        outside += c.token_balance(*a).await?;
        let acc = c.account(*a).await?;
        recorded += acc.stake + acc.unbonding;
    }
    for ch in channels {
        recorded += c.channel(*ch).await?.map(|c| c.escrow()).unwrap_or(0);
    }
    assert_eq!(outside + held, minted, "tokens conserved");
    assert_eq!(held, recorded, "the contract holds what it records");
    Ok(())
}

async fn nonce(c: &SettlementClient, who: Address) -> anyhow::Result<u64> {
    Ok(c.provider().get_transaction_count(who).await?)
}

/// The epoch the next mined transaction lands in.
async fn next_epoch(c: &SettlementClient) -> anyhow::Result<u64> {
    let d = c.deployment().expect("deployed");
    let latest = c.provider().get_block_number().await?;
    Ok((latest + 1 - d.start_block) / d.params.epoch_blocks)
}

fn params() -> Params {
    Params {
        audit_fee_bps: 1_000,
        ..Params::devnet(200)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anvil_restarted_from_its_state_mid_run_loses_nothing_and_sends_nothing_twice(
) -> anyhow::Result<()> {
    let Some(mut node) = Node::start("restart")? else {
        return Ok(());
    };
    let url = node.url();
    let d = deploy(&url, node.keys[0].clone(), params()).await?;
    let admin = client(&url, &node.keys[0], &d, fast()).await?;
    let payer = client(&url, &node.keys[1], &d, fast()).await?;
    let prov = client(&url, &node.keys[2], &d, fast()).await?;
    let accounts = [admin.address(), payer.address(), prov.address()];
    admin.mint(payer.address(), 10_000).await?;
    admin.mint(prov.address(), 1_000).await?;
    let minted = 11_000;

    // Before: stake, a root, a channel with a claimed voucher.
    prov.stake(500).await?;
    let e = next_epoch(&prov).await?;
    prov.post_root(e, B256::repeat_byte(7), 4).await?;
    payer.ensure_allowance(10_000).await?;
    let (id, _) = payer.open_channel(prov.address(), 4_000, 10).await?;
    let v1000 = payer.sign_voucher(id, 1_000)?;
    prov.claim(id, 1_000, &v1000).await?;
    let (payer_n, prov_n) = (
        nonce(&admin, payer.address()).await?,
        nonce(&admin, prov.address()).await?,
    );
    assert_conserved(&admin, &accounts, &[id], minted).await?;

    // The node goes down; operations keep coming, two of them from the same account.
    node.stop()?;
    let v2500 = payer.sign_voucher(id, 2_500)?;
    let claim = {
        let prov = prov.clone();
        tokio::spawn(async move { prov.claim(id, 2_500, &v2500).await })
    };
    let top_up = {
        let payer = payer.clone();
        tokio::spawn(async move { payer.top_up(id, 500).await })
    };
    let stake = {
        let payer = payer.clone();
        tokio::spawn(async move { payer.stake(300).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !claim.is_finished() && !top_up.is_finished() && !stake.is_finished(),
        "nothing can finish while the node is down"
    );
    node.restart()?;
    let claimed = claim.await??;
    top_up.await??;
    stake.await??;

    // Nothing lost: the root, the earlier claim and stake are still there after the restart.
    assert_eq!(
        prov.root(prov.address(), e).await?.map(|r| r.receipts),
        Some(4)
    );
    let c = prov.channel(id).await?.expect("channel");
    assert_eq!((c.deposit, c.claimed), (4_500, 2_500));
    assert_eq!(prov.account(prov.address()).await?.stake, 500);
    assert_eq!(payer.account(payer.address()).await?.stake, 300);
    // 10% of each claim goes to the audit pool: 2,500 claimed in all.
    assert_eq!(prov.token_balance(prov.address()).await?, 500 + 2_250);
    assert_eq!(prov.audit_pool().await?, 250);
    // Nothing twice: one transaction per operation.
    assert_eq!(nonce(&admin, payer.address()).await?, payer_n + 2);
    assert_eq!(nonce(&admin, prov.address()).await?, prov_n + 1);
    assert_eq!(claimed.nonce, prov_n);
    assert_conserved(&admin, &accounts, &[id], minted).await?;

    // A client with little patience gives up with a clear error while the node is down,
    // having sent nothing; the same operation later lands once.
    let impatient = client(
        &url,
        &node.keys[1],
        &d,
        ClientOptions {
            attempts: 3,
            patience: Duration::from_millis(500),
            ..fast()
        },
    )
    .await?;
    node.stop()?;
    let t = Instant::now();
    let r = impatient.top_up(id, 100).await;
    let waited = t.elapsed();
    match &r {
        Err(e @ EvmError::Rpc { attempts, .. }) => {
            assert!(*attempts >= 3, "{attempts} attempts");
            assert!(e.to_string().contains("failed after"), "{e}");
        }
        other => panic!("expected an RPC error while the node is down, got {other:?}"),
    }
    assert!(
        waited < Duration::from_secs(5),
        "bounded: gave up after {waited:?}"
    );
    node.restart()?;
    assert_eq!(
        nonce(&admin, payer.address()).await?,
        payer_n + 2,
        "nothing was sent"
    );
    impatient.top_up(id, 100).await?;
    assert_eq!(nonce(&admin, payer.address()).await?, payer_n + 3);
    assert_eq!(payer.channel(id).await?.expect("channel").deposit, 4_600);
    assert_conserved(&admin, &accounts, &[id], minted).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_without_its_last_blocks_gets_them_back_from_the_clients(
) -> anyhow::Result<()> {
    let Some(mut node) = Node::start("crash")? else {
        return Ok(());
    };
    let url = node.url();
    let d = deploy(&url, node.keys[0].clone(), params()).await?;
    let admin = client(&url, &node.keys[0], &d, fast()).await?;
    let payer = client(&url, &node.keys[1], &d, fast()).await?;
    let prov = client(&url, &node.keys[2], &d, fast()).await?;
    let accounts = [admin.address(), payer.address(), prov.address()];
    admin.mint(payer.address(), 10_000).await?;
    admin.mint(prov.address(), 1_000).await?;
    let minted = 11_000;
    prov.stake(500).await?;
    payer.ensure_allowance(10_000).await?;
    let (id, _) = payer.open_channel(prov.address(), 4_000, 10).await?;
    // The state written here is what the node comes back with.
    node.stop()?;
    node.restart()?;
    let (payer_n, prov_n) = (
        nonce(&admin, payer.address()).await?,
        nonce(&admin, prov.address()).await?,
    );

    // A root, a claim and a top-up after the last save, then the node dies without writing.
    let e = next_epoch(&prov).await?;
    let root = prov.post_root(e, B256::repeat_byte(3), 2).await?;
    let v1000 = payer.sign_voucher(id, 1_000)?;
    let claim = prov.claim(id, 1_000, &v1000).await?;
    let top_up = payer.top_up(id, 500).await?;
    node.crash();
    node.restart()?;
    assert_eq!(
        prov.root(prov.address(), e).await?,
        None,
        "lost with the node"
    );
    assert_eq!(prov.finality(&claim, 1).await?, Finality::NotIncluded);
    assert_eq!(nonce(&admin, prov.address()).await?, prov_n);

    // The clients put them back, the same transactions, once.
    {
        let _miner = Miner::start(admin.clone());
        let deep = prov.claim_until_final(id, 1_000, &v1000, 3).await?;
        assert_eq!(deep.claimed, 1_000);
        assert!(matches!(prov.finality(&root, 1).await?, Finality::Final(_)));
        assert!(matches!(
            prov.finality(&claim, 1).await?,
            Finality::Final(_)
        ));
        let again = payer.until_final(top_up.clone(), 3).await?;
        assert_eq!(again.hash, top_up.hash);
    }
    assert_eq!(
        prov.root(prov.address(), e).await?.map(|r| r.receipts),
        Some(2)
    );
    let c = payer.channel(id).await?.expect("channel");
    assert_eq!((c.deposit, c.claimed), (4_500, 1_000));
    assert_eq!(nonce(&admin, prov.address()).await?, prov_n + 2);
    assert_eq!(nonce(&admin, payer.address()).await?, payer_n + 1);
    assert_eq!(prov.token_balance(prov.address()).await?, 500 + 900);
    assert_conserved(&admin, &accounts, &[id], minted).await?;
    Ok(())
}

async fn reorg(
    c: &SettlementClient,
    depth: u64,
    replay: Vec<(serde_json::Value, u64)>,
) -> anyhow::Result<()> {
    c.provider()
        .raw_request::<_, serde_json::Value>("anvil_reorg".into(), (depth, replay))
        .await?;
    Ok(())
}

/// Mines a block every 20 ms until dropped, so confirmations accrue.
struct Miner(Arc<AtomicBool>);

impl Miner {
    fn start(c: Arc<SettlementClient>) -> Miner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            while !flag.load(Ordering::SeqCst) {
                let _ = c.mine(1).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Miner(stop)
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_of_the_last_blocks_loses_no_voucher_and_pays_nothing_twice() -> anyhow::Result<()>
{
    let Some(node) = Node::start("reorg")? else {
        return Ok(());
    };
    let url = node.url();
    let d = deploy(&url, node.keys[0].clone(), params()).await?;
    let admin = client(&url, &node.keys[0], &d, fast()).await?;
    let payer = client(&url, &node.keys[1], &d, fast()).await?;
    let prov = client(&url, &node.keys[2], &d, fast()).await?;
    let accounts = [admin.address(), payer.address(), prov.address()];
    admin.mint(payer.address(), 10_000).await?;
    admin.mint(prov.address(), 1_000).await?;
    let minted = 11_000;
    prov.stake(500).await?;
    payer.ensure_allowance(10_000).await?;
    let (a, _) = payer.open_channel(prov.address(), 4_000, 10).await?;
    admin.mine(5).await?;

    // Four blocks a reorg will take away: a root, a claim, a channel opening, a top-up.
    let e = next_epoch(&prov).await?;
    let root = prov.post_root(e, B256::repeat_byte(9), 3).await?;
    let v1000 = payer.sign_voucher(a, 1_000)?;
    let claim = prov.claim(a, 1_000, &v1000).await?;
    let (b, open_b) = payer.open_channel(prov.address(), 1_000, 10).await?;
    let top_up = payer.top_up(a, 500).await?;
    assert_eq!(prov.finality(&claim, 4).await?, Finality::Confirming(3));
    assert_eq!(prov.finality(&root, 3).await?, Finality::Final(4));
    let prov_n = nonce(&admin, prov.address()).await?;

    reorg(&admin, 4, Vec::new()).await?;
    assert_eq!(
        prov.root(prov.address(), e).await?,
        None,
        "the root is gone"
    );
    assert_eq!(
        payer.channel(a).await?.map(|c| (c.deposit, c.claimed)),
        Some((4_000, 0))
    );
    assert_eq!(payer.channel(b).await?, None, "the opening is gone");
    assert_eq!(prov.finality(&claim, 1).await?, Finality::NotIncluded);
    assert_eq!(nonce(&admin, prov.address()).await?, prov_n - 2);

    // The provider's next operation puts its dropped root and claim back first (the same
    // bytes, the same nonces), then lands itself.
    let v1500 = payer.sign_voucher(a, 1_500)?;
    let next = prov.claim(a, 1_500, &v1500).await?;
    assert_eq!(next.nonce, prov_n);
    assert!(matches!(prov.finality(&root, 1).await?, Finality::Final(_)));
    assert!(matches!(
        prov.finality(&claim, 1).await?,
        Finality::Final(_)
    ));
    // The payer waits for its two operations to be final: the same transactions come back.
    {
        let _miner = Miner::start(admin.clone());
        let open_again = payer.until_final(open_b.clone(), 3).await?;
        let top_again = payer.until_final(top_up.clone(), 3).await?;
        assert_eq!(
            (open_again.hash, top_again.hash),
            (open_b.hash, top_up.hash)
        );
        let deep = prov.claim_until_final(a, 1_500, &v1500, 3).await?;
        assert_eq!(deep.claimed, 1_500);
    }
    assert_eq!(
        prov.root(prov.address(), e).await?.map(|r| r.receipts),
        Some(3)
    );
    assert_eq!(payer.channel(b).await?.map(|c| c.deposit), Some(1_000));
    let c = payer.channel(a).await?.expect("channel");
    assert_eq!((c.deposit, c.claimed), (4_500, 1_500));
    assert_eq!(prov.token_balance(prov.address()).await?, 500 + 1_350);
    assert_conserved(&admin, &accounts, &[a, b], minted).await?;

    // Two claims, then a reorg that replays both in the other order as new transactions of
    // the provider's (what a chain may do with transactions it saw): the later voucher pays
    // its increase, the earlier one is refused on chain, and the provider's client, waiting
    // for both to be final, sends nothing more and is refused when it signs one anew.
    admin.mine(5).await?;
    let v2000 = payer.sign_voucher(a, 2_000)?;
    let v3000 = payer.sign_voucher(a, 3_000)?;
    let c2000 = prov.claim(a, 2_000, &v2000).await?;
    let _c3000 = prov.claim(a, 3_000, &v3000).await?;
    let settlement = d.settlement;
    let replayed = |cumulative: u128, sig: [u8; 65]| {
        let input = alloy::sol_types::SolCall::abi_encode(
            &agora_evm::bindings::AgoraSettlement::claimCall {
                id: a,
                cumulative: alloy::primitives::U256::from(cumulative),
                payerSig: sig.to_vec().into(),
            },
        );
        serde_json::json!({
            "from": prov.address(),
            "to": settlement,
            "input": alloy::primitives::Bytes::from(input),
            "gas": "0x50000",
        })
    };
    let prov_n = nonce(&admin, prov.address()).await?;
    reorg(
        &admin,
        2,
        vec![(replayed(3_000, v3000), 0), (replayed(2_000, v2000), 0)],
    )
    .await?;
    assert_eq!(
        nonce(&admin, prov.address()).await?,
        prov_n,
        "both replayed"
    );
    assert_eq!(prov.finality(&c2000, 1).await?, Finality::NotIncluded);
    let before = prov.token_balance(prov.address()).await?;
    assert_eq!(before, 500 + 2_700, "3,000 paid once, less the fee");
    {
        let _miner = Miner::start(admin.clone());
        for (v, sig) in [(2_000, v2000), (3_000, v3000)] {
            let deep = prov.claim_until_final(a, v, &sig, 3).await?;
            assert_eq!(deep.claimed, 3_000);
        }
    }
    // Its own dropped claim, signed anew because its nonce was taken, is refused.
    match prov.ensure_included(&c2000).await {
        Err(e) => assert_eq!(
            e.settlement_refusal()
                .map(|r| format!("{r:?}"))
                .unwrap_or_default()
                .split('(')
                .next(),
            Some("DoubleClaim"),
            "{e}"
        ),
        Ok(s) => panic!("a claim of an already claimed voucher landed again: {s:?}"),
    }
    assert_eq!(prov.token_balance(prov.address()).await?, before);
    assert_eq!(payer.channel(a).await?.expect("channel").claimed, 3_000);
    assert_conserved(&admin, &accounts, &[a, b], minted).await?;

    // A claim is not final before its depth: a provider that cannot wait is told so.
    let hasty = client(
        &url,
        &node.keys[2],
        &d,
        ClientOptions {
            final_timeout: Duration::from_millis(300),
            ..fast()
        },
    )
    .await?;
    let v3500 = payer.sign_voucher(a, 3_500)?;
    let prov_n = nonce(&admin, prov.address()).await?;
    match hasty.claim_until_final(a, 3_500, &v3500, 3).await {
        Err(EvmError::NotFinal { depth: 3, .. }) => {}
        other => panic!("final without depth: {other:?}"),
    }
    {
        let _miner = Miner::start(admin.clone());
        let deep = prov.claim_until_final(a, 3_500, &v3500, 3).await?;
        assert_eq!(deep.claimed, 3_500);
    }
    assert_eq!(
        nonce(&admin, prov.address()).await?,
        prov_n + 1,
        "claimed once"
    );
    assert_eq!(prov.token_balance(prov.address()).await?, before + 450);
    assert_conserved(&admin, &accounts, &[a, b], minted).await?;
    Ok(())
}

/// A node in front of Anvil that misbehaves: refuses connections for a while (down),
/// answers a JSON-RPC error, loses the answer of a request it forwarded, or holds a
/// forwarded request without ever answering. One request per connection.
#[derive(Default)]
struct Faults {
    requests: AtomicU64,
    down: AtomicBool,
    errors: AtomicU64,
    lost: AtomicU64,
    hung: AtomicU64,
    sends: AtomicU64,
}

async fn read_request(c: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf[end + 4..end + 4 + len].to_vec());
            }
        }
    }
}

async fn forward(upstream: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await.ok()?;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {upstream}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(body).await.ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        return None;
    }
    Some(resp[split + 4..].to_vec())
}

async fn answer(c: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(head.as_bytes()).await;
    let _ = c.write_all(body).await;
    let _ = c.shutdown().await;
}

async fn faulty_node(upstream: String, faults: Arc<Faults>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let (upstream, faults) = (upstream.clone(), faults.clone());
            tokio::spawn(async move {
                if faults.down.load(Ordering::SeqCst) {
                    return; // the connection is dropped unanswered
                }
                let Some(body) = read_request(&mut c).await else {
                    return;
                };
                if body.windows(22).any(|w| w == b"eth_sendRawTransaction") {
                    faults.sends.fetch_add(1, Ordering::SeqCst);
                }
                match faults.requests.fetch_add(1, Ordering::SeqCst) % 11 {
                    2 | 7 => {
                        faults.errors.fetch_add(1, Ordering::SeqCst);
                        let id = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v.get("id").cloned())
                            .unwrap_or_default();
                        let e = serde_json::json!({
                            "jsonrpc": "2.0",
                            "id": id,
                            "error": {"code": -32603, "message": "internal error: backend unavailable"},
                        });
                        answer(&mut c, "200 OK", e.to_string().as_bytes()).await;
                    }
                    4 => {
                        // Forwarded, answer lost: the request may have had its effect.
                        faults.lost.fetch_add(1, Ordering::SeqCst);
                        let _ = forward(&upstream, &body).await;
                    }
                    9 => {
                        // Forwarded, and never answered (a node that hangs).
                        faults.hung.fetch_add(1, Ordering::SeqCst);
                        let _ = forward(&upstream, &body).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    _ => match forward(&upstream, &body).await {
                        Some(resp) => answer(&mut c, "200 OK", &resp).await,
                        None => answer(&mut c, "502 Bad Gateway", b"").await,
                    },
                }
            });
        }
    });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_under_many_operations_of_one_account_lands_each_exactly_once(
) -> anyhow::Result<()> {
    let Some(node) = Node::start("rpcfaults")? else {
        return Ok(());
    };
    let url = node.url();
    let d = deploy(&url, node.keys[0].clone(), params()).await?;
    let admin = client(&url, &node.keys[0], &d, fast()).await?;
    admin.mint(node.keys[1].address(), 10_000).await?;
    let faults = Arc::new(Faults::default());
    let faulty = faulty_node(url.trim_start_matches("http://").to_owned(), faults.clone()).await?;
    let payer = client(
        &faulty,
        &node.keys[1],
        &d,
        ClientOptions {
            request_timeout: Duration::from_millis(500),
            ..fast()
        },
    )
    .await?;
    let start_nonce = nonce(&admin, payer.address()).await?;

    // Sixteen transfers of different amounts to different accounts, all in flight at once,
    // with the node down for two seconds in the middle.
    let ops = 16u8;
    let mut tasks = Vec::new();
    for i in 0..ops {
        let payer = payer.clone();
        tasks.push(tokio::spawn(async move {
            payer
                .transfer(Address::repeat_byte(0x40 + i), u128::from(i) + 1)
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    faults.down.store(false, Ordering::SeqCst);
    let mut done: Vec<Submitted> = Vec::new();
    for t in tasks {
        done.push(tokio::time::timeout(Duration::from_secs(20), t).await???);
    }

    // Every operation landed exactly once, with gap-free nonces.
    let mut nonces: Vec<u64> = done.iter().map(|s| s.nonce).collect();
    nonces.sort_unstable();
    let expected: Vec<u64> = (start_nonce..start_nonce + u64::from(ops)).collect();
    assert_eq!(nonces, expected, "one nonce per operation, no gap");
    assert_eq!(
        nonce(&admin, payer.address()).await?,
        start_nonce + u64::from(ops),
        "no other transaction"
    );
    for i in 0..ops {
        assert_eq!(
            admin.token_balance(Address::repeat_byte(0x40 + i)).await?,
            u128::from(i) + 1
        );
    }
    let paid: u128 = (1..=u128::from(ops)).sum();
    assert_eq!(admin.token_balance(payer.address()).await?, 10_000 - paid);
    for s in &done {
        let tx = admin
            .provider()
            .get_transaction_by_hash(s.hash)
            .await?
            .expect("mined");
        assert_eq!(alloy::consensus::Transaction::nonce(&tx), s.nonce);
    }
    // The faults did happen.
    for (what, n) in [
        ("errors", &faults.errors),
        ("lost answers", &faults.lost),
        ("hung requests", &faults.hung),
    ] {
        assert!(n.load(Ordering::SeqCst) > 0, "no {what}");
    }
    assert!(
        faults.sends.load(Ordering::SeqCst) > u64::from(ops),
        "sends were retried"
    );
    Ok(())
}
