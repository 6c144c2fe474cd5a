//! The explorer against a real ledger over HTTP (in this process), its pages, its live
//! stream, what a hostile provider can put on a page, and the ledger's /metrics.

use agora_core::{Amount, Hash32, Keypair};
use agora_explorer::{Config, Explorer, OfferRow};
use agora_ledger::client::Client;
use agora_ledger::server::{run, SequencerConfig, ServeConfig};
use agora_ledger::{Allocation, Genesis, Params, Tx, TxBody};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHAIN: u64 = 7;

struct Net {
    ledger: String,
    explorer: SocketAddr,
    keys: Vec<Keypair>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn keys(n: usize) -> Vec<Keypair> {
    (0..n)
        .map(|i| Keypair::from_seed([i as u8 + 9; 32]))
        .collect()
}

/// A ledger served over HTTP and an explorer following it (with `offers` as its book).
fn start(offers: Vec<OfferRow>) -> Net {
    let keys = keys(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        db: dir.path().join("ledger.redb"),
        genesis: Some(Genesis {
            chain_id: CHAIN,
            sequencer: keys[0].account(),
            params: Params::default(),
            allocations: keys
                .iter()
                .map(|k| Allocation {
                    account: k.account(),
                    amount: Amount::new(1_000_000_000),
                })
                .collect(),
        }),
        sequencer_key: Some(keys[0].clone()),
        sequencer: SequencerConfig::default(),
    };
    rt.spawn(async move {
        let _ = run(
            cfg,
            move |a| {
                let _ = bound_tx.send(a);
            },
            std::future::pending(),
        )
        .await;
    });
    let addr: SocketAddr = bound_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ledger bound");
    let ledger = format!("http://{addr}");
    let mut cfg = Config::new(&ledger);
    cfg.offers = Some(Arc::new(move || offers.clone()));
    let explorer = rt.block_on(async {
        let ex = Explorer::new(cfg);
        ex.clone().follow();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = ex.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    Net {
        ledger,
        explorer,
        keys,
        rt,
        _dir: dir,
    }
}

impl Net {
    fn submit(&self, key: &Keypair, body: TxBody) {
        let c = Client::new(&self.ledger).expect("client");
        let nonce = c.next_nonce(&key.account()).expect("nonce");
        let tx = Tx {
            chain_id: CHAIN,
            from: key.account(),
            nonce,
            body,
        }
        .sign(key);
        c.submit(&tx).expect("accepted");
    }
}

/// GET over a fresh connection: (head, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn offer(provider: &Keypair, name: &str, hardware: &str, region: &str) -> OfferRow {
    OfferRow {
        provider: provider.account(),
        model: Hash32::of(b"model"),
        model_name: name.into(),
        price_in: Amount::new(1_000_000),
        price_out: Amount::new(2_000_000),
        hardware: hardware.into(),
        region: region.into(),
        capacity: 4,
        context_len: 2048,
        expires_ms: u64::MAX,
        reputation: 0.5,
        load: 0,
        latency_ms: Some(12.0),
    }
}

/// A provider controls its offer's hardware and region labels (and a name in a looser
/// book): none of it may run in a visitor's browser.
#[test]
fn a_script_in_a_provider_field_is_rendered_inert() {
    let k = keys(4);
    let hostile = "<script>window.pwned=1</script>";
    let attr = "\"><img src=x onerror=alert(1)>";
    let net = start(vec![offer(
        &k[1],
        "m</td><script>x()</script>",
        attr,
        hostile,
    )]);
    for page in [
        "/explorer/providers",
        "/explorer/models",
        "/explorer",
        &format!("/explorer/providers/{}", k[1].account()),
    ] {
        let (head, body) = get(net.explorer, page);
        assert!(head.starts_with("HTTP/1.1 200"), "{page}: {head}");
        assert!(
            !body.contains("<script>"),
            "{page} carries a live script tag"
        );
        assert!(!body.contains("<img"), "{page} carries a live img tag");
        if page.ends_with("providers") {
            assert!(
                body.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;"),
                "{page}"
            );
            assert!(
                body.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
                "{page}"
            );
        }
        let csp = head
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("content-security-policy:")
            })
            .expect("a CSP header");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    }
    // The lookup echoes the query: escaped too.
    let (_, body) = get(
        net.explorer,
        "/explorer/lookup?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    );
    assert!(!body.contains("<script>alert"));
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}

#[test]
fn the_index_follows_the_ledger_and_the_pages_show_it() {
    let net = start(vec![]);
    let k = &net.keys;
    net.submit(
        &k[1],
        TxBody::Stake {
            amount: Amount::new(500),
        },
    );
    net.submit(
        &k[2],
        TxBody::RegisterVerifier {
            stake: Amount::new(Params::default().min_verifier_stake.units()),
        },
    );
    net.submit(
        &k[3],
        TxBody::OpenChannel {
            provider: k[1].account(),
            amount: Amount::new(10_000),
            timeout_epochs: 10,
        },
    );
    wait_for(
        "three blocks on the blocks page",
        Duration::from_secs(20),
        || {
            let (_, body) = get(net.explorer, "/explorer/blocks");
            body.contains("OpenChannel")
                && body.contains("RegisterVerifier")
                && body.contains("Stake")
        },
    );
    let (_, providers) = get(net.explorer, "/explorer/providers");
    assert!(
        providers.contains(&k[1].account().to_string()[..12]),
        "the channel's provider is listed"
    );
    // Its stake is read back from the ledger.
    wait_for("the provider's stake", Duration::from_secs(10), || {
        get(net.explorer, "/explorer/providers").1.contains(">500<")
    });
    let (_, verifiers) = get(net.explorer, "/explorer/verifiers");
    assert!(verifiers.contains(&k[2].account().to_string()[..12]));
    let (head, _) = get(net.explorer, "/explorer/nowhere");
    assert!(head.starts_with("HTTP/1.1 404"));
    let (_, lookup) = get(net.explorer, "/explorer/lookup?q=2");
    assert!(lookup.contains("/explorer/blocks/2"));
    let _ = &net.rt;
}

/// An open page gets the re-rendered page pushed when the ledger moves: no reload.
#[test]
fn an_open_page_is_pushed_the_next_block() {
    let net = start(vec![]);
    let mut s = TcpStream::connect(net.explorer).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET /explorer/events?page=%2Fexplorer%2Fblocks HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    net.submit(
        &net.keys[1],
        TxBody::Stake {
            amount: Amount::new(7),
        },
    );
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut event = false;
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with("event: page") {
            event = true;
        }
        if event && line.starts_with("data: ") {
            let data: serde_json::Value =
                serde_json::from_str(line.trim_start_matches("data: ").trim()).expect("json");
            let html = data["html"].as_str().expect("html");
            assert!(
                html.contains("Stake"),
                "the pushed page shows the new block"
            );
            assert!(data["height"].as_u64().unwrap_or(0) >= 1);
            return;
        }
    }
    panic!("no page event after a block");
}

#[test]
fn events_refuse_pages_outside_the_explorer() {
    let net = start(vec![]);
    for bad in [
        "/explorer/events?page=%2Fv1%2Fstatus",
        "/explorer/events?page=%2Fexplorer%2Fevents",
        "/explorer/events",
    ] {
        let (head, _) = get(net.explorer, bad);
        assert!(head.starts_with("HTTP/1.1 400"), "{bad}: {head}");
    }
}

/// The ledger's /metrics parses as exposition text and its counters move with blocks.
#[test]
fn ledger_metrics_parse_and_move() {
    let net = start(vec![]);
    let addr: SocketAddr = net
        .ledger
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let read = || {
        let (head, body) = get(addr, "/metrics");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        agora_metrics::text::parse(&body).expect("valid exposition text")
    };
    let before = read();
    let txs = |s: &[agora_metrics::text::Sample]| {
        agora_metrics::text::sum(s, "agora_ledger_txs_total", &[("kind", "Stake")])
    };
    net.submit(
        &net.keys[1],
        TxBody::Stake {
            amount: Amount::new(3),
        },
    );
    let after = read();
    assert!(txs(&after) > txs(&before));
    assert!(agora_metrics::text::sum(&after, "agora_ledger_height", &[]) >= 1.0);
    assert!(agora_metrics::text::sum(&after, "agora_ledger_staked_base_units", &[]) >= 3.0);
    assert!(
        agora_metrics::text::sum(
            &after,
            "agora_http_requests_total",
            &[("route", "/v1/tx"), ("status", "200")]
        ) >= 1.0
    );
}

/// A coordinator's round log becomes the DiLoCo page: rounds, islands, bytes and the loss
/// curve; a refusal reason (an island's words) is escaped like everything else.
#[test]
fn the_diloco_page_reads_the_round_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = [
        r#"{"round":0,"accepted":[0,1],"refused":[],"missing":[],"loss_before":5.5,"loss_after":5.1,"heldout_bits_per_byte":3.25,"delta_bytes":1000,"hash":"aa"}"#,
        r#"{"round":1,"accepted":[0],"refused":[[1,"<script>x()</script>"]],"missing":[2],"loss_before":5.0,"loss_after":4.7,"heldout_bits_per_byte":3.0,"delta_bytes":500,"hash":"bb"}"#,
        "not json",
    ];
    std::fs::write(dir.path().join("rounds.jsonl"), lines.join("\n")).expect("write");
    let mut cfg = Config::new("http://127.0.0.1:9");
    cfg.diloco = Some(dir.path().to_path_buf());
    let ex = Explorer::new(cfg);
    let (_, html) =
        agora_explorer::pages::render(&ex, "/diloco", &Default::default()).expect("a page");
    assert!(html.contains("1500"), "bytes summed over rounds");
    assert!(html.contains("3.0000"), "the last held-out loss");
    assert!(html.contains("<polyline"), "a loss curve");
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;x()&lt;/script&gt;"));
}
