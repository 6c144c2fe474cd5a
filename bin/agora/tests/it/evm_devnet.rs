//! `agora devnet --settlement evm`: the chain the devnet prepares (Anvil, the contracts at the
//! addresses `contracts.json` names, every party's account funded with tokens and gas, epochs
//! advancing with time alone, Ctrl-C stopping Anvil), and the network end to end on it with
//! every balance read from the chain.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agora_evm::anvil::find_anvil;
use agora_evm::bindings::AgoraSettlement;
use agora_evm::{Deployment, SettlementClient};
use agora_settlement::open::evm_signer_for;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use serde_json::{json, Value};

use crate::network::{alive, charged, fail_over_mid_stream, http, signal, Devnet};
use crate::repo_root;

/// What the devnet mints: the API key's account, and each provider and verifier.
const USER_FUNDS: u128 = 1_000_000_000_000;
const PARTY_FUNDS: u128 = 1_000_000_000;
/// What it stakes for each provider and verifier.
const STAKE: u128 = 100_000_000;
/// Gas money for every party: 10 ETH.
const GAS_WEI: u128 = 10_000_000_000_000_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The ed25519 seed in a key file `agora keys new` (and the devnet) writes.
fn seed_of_key_file(path: &Path) -> [u8; 32] {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("key file")).expect("json");
    let bytes = hex::decode(v["secret"].as_str().expect("secret")).expect("hex");
    bytes.try_into().expect("32 bytes")
}

fn info_address(info: &Value, name: &str) -> Address {
    info["evm_accounts"][name]
        .as_str()
        .unwrap_or_else(|| panic!("evm_accounts.{name} in {info}"))
        .parse()
        .expect("address")
}

/// A reader of the devnet's chain: connects with a throwaway key (reads need no funds).
async fn reader(info: &Value) -> (SettlementClient, Deployment) {
    let rpc = info["rpc"].as_str().expect("rpc");
    let deployment =
        Deployment::load(Path::new(info["contracts"].as_str().expect("contracts"))).expect("load");
    let client = SettlementClient::connect(rpc, evm_signer_for(&[0xEE; 32]), deployment.clone())
        .await
        .expect("connect");
    (client, deployment)
}

struct Prepared {
    child: Child,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn evm_devnet_deploys_funds_every_party_and_advances_epochs_with_time() {
    if find_anvil().is_none() {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["devnet", "--settlement", "evm", "--prepare-only"])
        .args(["--providers", "2", "--verifiers", "2", "--canary", "5"])
        .args(["--epoch-secs", "2", "--model"])
        .arg(repo_root().join("models/agora-shakespeare"))
        .arg("--dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start devnet");
    let mut prepared = Prepared { child };
    let info_path = dir.path().join("devnet.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !info_path.exists() {
        assert!(Instant::now() < deadline, "the chain was not prepared");
        assert!(
            prepared.child.try_wait().expect("wait").is_none(),
            "devnet exited while preparing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).expect("read")).expect("json");
    assert_eq!(info["settlement"], "evm");
    assert_eq!(info["prepared_only"], true);
    let contracts_path = dir
        .path()
        .canonicalize()
        .expect("dir")
        .join("contracts.json");
    assert_eq!(
        info["contracts"].as_str(),
        Some(contracts_path.to_str().expect("utf-8"))
    );
    // No ledger on an EVM devnet.
    assert!(!dir.path().join("genesis.json").exists());
    assert!(info.get("ledger").is_none());

    rt().block_on(async {
        let (chain, deployment) = reader(&info).await;
        assert_eq!(deployment.chain_id, info["chain_id"].as_u64().expect("id"));
        // The contracts are where the file says: code at both addresses, and the settlement
        // contract runs on that token with the ledger genesis's rules, epochs in 1 s blocks.
        for a in [deployment.token, deployment.settlement] {
            let code = chain.provider().get_code_at(a).await.expect("code");
            assert!(!code.is_empty(), "no contract at {a}");
        }
        let settlement = AgoraSettlement::new(deployment.settlement, chain.provider());
        assert_eq!(
            settlement.token().call().await.expect("token"),
            deployment.token
        );
        assert_eq!(settlement.epochBlocks().call().await.expect("epoch"), 2);
        let ledger = agora_ledger::Params::default();
        assert_eq!(
            deployment.params,
            agora_evm::Params {
                audit_fee_bps: 200,
                audit_fee: 1,
                ..agora_evm::Params::devnet(2)
            }
        );
        assert_eq!(
            settlement.minProviderStake().call().await.expect("min"),
            ledger.min_provider_stake.units()
        );
        assert_eq!(
            settlement.minVerifierStake().call().await.expect("min"),
            ledger.min_verifier_stake.units()
        );
        assert_eq!(
            settlement.auditFeeBps().call().await.expect("bps"),
            200,
            "the devnet's default --audit-fee-bps"
        );
        assert_eq!(
            settlement
                .unbondingEpochs()
                .call()
                .await
                .expect("unbonding"),
            ledger.unbonding_epochs
        );

        // Every party's account is the one its key file's seed derives (as the services
        // open it), funded with its tokens and gas.
        let mut parties: Vec<(String, [u8; 32], u128)> = Vec::new();
        for name in [
            "provider-1",
            "provider-2",
            "canary",
            "verifier-1",
            "verifier-2",
        ] {
            let seed = seed_of_key_file(&dir.path().join(format!("{name}.json")));
            parties.push((name.into(), seed, PARTY_FUNDS));
        }
        let store =
            agora_gateway::KeyStore::open(&dir.path().join("keys.redb")).expect("key store");
        let user: agora_core::AccountId = info["user_account"]
            .as_str()
            .expect("user")
            .parse()
            .expect("account id");
        let user_seed = store.seed_of(&user).expect("the API key's account seed");
        parties.push(("user".into(), user_seed, USER_FUNDS));
        assert_eq!(
            info["evm_accounts"].as_object().expect("accounts").len(),
            parties.len()
        );
        for (name, seed, funds) in &parties {
            let account = evm_signer_for(seed).address();
            assert_eq!(info_address(&info, name), account, "{name}'s account");
            assert_eq!(
                chain.token_balance(account).await.expect("balance"),
                *funds,
                "{name}'s tokens"
            );
            assert_eq!(
                chain
                    .provider()
                    .get_balance(account)
                    .await
                    .expect("balance"),
                U256::from(GAS_WEI),
                "{name}'s gas money"
            );
        }

        // Epochs advance with time alone: nobody sends a transaction from here on.
        let first = chain.current_epoch().await.expect("epoch");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = chain.current_epoch().await.expect("epoch");
            if now >= first + 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "epoch stuck at {now} (from {first})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });

    // Ctrl-C stops the devnet and Anvil with it.
    let anvil_pid = info["anvil_pid"].as_u64().expect("pid") as u32;
    assert!(alive(anvil_pid));
    signal(prepared.child.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = prepared.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "devnet did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "devnet exit: {status}");
    assert!(!alive(anvil_pid), "anvil still running after Ctrl-C");
}

#[test]
fn evm_devnet_without_anvil_names_the_install_script() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["devnet", "--settlement", "evm", "--model"])
        .arg(repo_root().join("models/agora-shakespeare"))
        .arg("--dir")
        .arg(dir.path())
        // AGORA_ANVIL naming no file: found nowhere.
        .env("AGORA_ANVIL", dir.path().join("no-anvil-here"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/install-evm-tools"), "{err}");
    // Nothing was started or written before the check.
    assert!(!dir.path().join("contracts.json").exists());
    assert!(!dir.path().join("devnet.json").exists());
}

/// Sums of the `VoucherClaimed` events of `provider`: (claimed, audit fees), checking each
/// event's fee is the contract's `amount * auditFeeBps / 10_000`.
async fn claims_of(chain: &SettlementClient, d: &Deployment, provider: Address) -> (u128, u128) {
    let filter = Filter::new()
        .address(d.settlement)
        .event_signature(AgoraSettlement::VoucherClaimed::SIGNATURE_HASH)
        .topic2(provider.into_word())
        .from_block(d.start_block);
    let logs = chain.provider().get_logs(&filter).await.expect("logs");
    let (mut claimed, mut fees) = (0u128, 0u128);
    for l in &logs {
        let ev = AgoraSettlement::VoucherClaimed::decode_log_data(l.data()).expect("event");
        let amount = u128::try_from(ev.amount).expect("u128");
        let fee = u128::try_from(ev.auditFee).expect("u128");
        assert_eq!(
            fee,
            amount * u128::from(d.params.audit_fee_bps) / 10_000,
            "the contract's fee share"
        );
        claimed += amount;
        fees += fee;
    }
    (claimed, fees)
}

/// The channels `payer` opened.
async fn channels_of(chain: &SettlementClient, d: &Deployment, payer: Address) -> Vec<B256> {
    let filter = Filter::new()
        .address(d.settlement)
        .event_signature(AgoraSettlement::ChannelOpened::SIGNATURE_HASH)
        .topic2(payer.into_word())
        .from_block(d.start_block);
    chain
        .provider()
        .get_logs(&filter)
        .await
        .expect("logs")
        .iter()
        .filter_map(|l| l.topics().get(1).copied())
        .collect()
}

/// Waits until `account` holds exactly `want` tokens (providers claim every second).
fn wait_tokens(
    rt: &tokio::runtime::Runtime,
    chain: &SettlementClient,
    account: Address,
    want: u128,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rt.block_on(chain.token_balance(account)).expect("balance");
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "token balance of {account} is {got}, expected exactly {want}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn evm_devnet_serves_pays_exactly_and_fails_over_mid_stream() {
    if find_anvil().is_none() {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // The default audit fee share (200 bps): every claim pays it into the audit pool.
    let mut devnet = Devnet::start_with(dir.path(), 2, &["--settlement", "evm"]);
    assert_eq!(devnet.info["settlement"], "evm");
    assert!(
        devnet.info.get("explorer").is_none(),
        "no explorer on EVM: {}",
        devnet.info
    );
    let rt = rt();
    let (chain, deployment) = rt.block_on(reader(&devnet.info));
    let providers = devnet.info["providers"]
        .as_array()
        .expect("providers")
        .clone();
    let cheap = &providers[0];
    let pricey = &providers[1];
    let cheap_id = cheap["account"].as_str().expect("id").to_string();
    let pricey_id = pricey["account"].as_str().expect("id").to_string();
    let cheap_addr = info_address(&devnet.info, cheap["name"].as_str().expect("name"));
    let pricey_addr = info_address(&devnet.info, pricey["name"].as_str().expect("name"));
    let user_addr = info_address(&devnet.info, "user");
    let model = devnet.info["model"].as_str().expect("model").to_string();
    // Each provider's wallet after staking.
    let start_tokens = PARTY_FUNDS - STAKE;
    for a in [cheap_addr, pricey_addr] {
        assert_eq!(rt.block_on(chain.account(a)).expect("account").stake, STAKE);
    }
    // What a provider's wallet gains for `claimed`: the claims less the contract's fee share.
    let net = |p: Address| {
        let (claimed, fees) = rt.block_on(claims_of(&chain, &deployment, p));
        (claimed, fees, claimed - fees)
    };

    // A whole answer goes to the cheaper provider and is paid exactly.
    let (status, body) = http(
        &devnet.endpoint(),
        "POST",
        "/v1/chat/completions",
        Some(&devnet.key()),
        Some(
            &json!({"model": model, "messages": [{"role": "user", "content": "Speak."}],
                     "max_tokens": 24, "seed": 5})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let whole: Value = serde_json::from_str(&body).expect("json");
    let receipts = &whole["agora"]["receipts"];
    assert_eq!(receipts.as_array().expect("r").len(), 1);
    assert_eq!(receipts[0]["provider"], cheap_id.as_str());
    let usage = &whole["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().expect("p") as u128,
        usage["completion_tokens"].as_u64().expect("c") as u128,
    );
    assert!(c > 0);
    assert_eq!(charged(receipts, &cheap_id), p + 2 * c);
    let cheap_earned = charged(receipts, &cheap_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    while net(cheap_addr).0 < cheap_earned {
        assert!(
            Instant::now() < deadline,
            "the cheap provider never claimed"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (claimed, _, gained) = net(cheap_addr);
    assert_eq!(claimed, cheap_earned, "claimed exactly what was charged");
    wait_tokens(&rt, &chain, cheap_addr, start_tokens + gained);

    // A long streamed answer, failed over mid-stream when its provider is killed.
    let pricey_total = fail_over_mid_stream(&devnet, &model, cheap, &pricey_id);
    // On chain: each provider claimed exactly what it charged, its wallet gained that less
    // the contract's fee share, and the killed one kept what it had claimed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while net(pricey_addr).0 < pricey_total {
        assert!(
            Instant::now() < deadline,
            "the pricier provider never claimed"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (pricey_claimed, pricey_fees, pricey_gained) = net(pricey_addr);
    assert_eq!(pricey_claimed, pricey_total);
    wait_tokens(&rt, &chain, pricey_addr, start_tokens + pricey_gained);
    let (cheap_claimed, cheap_fees, cheap_gained) = net(cheap_addr);
    assert_eq!(cheap_claimed, cheap_earned);
    assert_eq!(
        rt.block_on(chain.token_balance(cheap_addr))
            .expect("balance"),
        start_tokens + cheap_gained
    );

    // The user's spend (what its channels paid out) is what the providers got plus the
    // audit fee share, and its wallet lost exactly what it escrowed.
    let (mut spent, mut escrowed) = (0u128, 0u128);
    for id in rt.block_on(channels_of(&chain, &deployment, user_addr)) {
        let ch = rt
            .block_on(chain.channel(id))
            .expect("channel")
            .expect("exists");
        assert_eq!(ch.payer, user_addr);
        assert!(
            !ch.closed && ch.refunded == 0,
            "no channel closed or refunded"
        );
        spent += ch.claimed;
        escrowed += ch.deposit;
    }
    assert_eq!(
        spent,
        cheap_gained + pricey_gained + cheap_fees + pricey_fees,
        "the user's spend is the providers' gain plus the audit fee share"
    );
    assert_eq!(spent, cheap_earned + pricey_total);
    assert_eq!(
        rt.block_on(chain.token_balance(user_addr))
            .expect("balance"),
        USER_FUNDS - escrowed
    );

    // Stopping the devnet stops every process it started, Anvil included.
    let status = devnet.stop();
    assert!(status.success(), "devnet exit: {status}");
    for pid in [
        devnet.info["gateway_pid"].as_u64().expect("pid"),
        devnet.info["anvil_pid"].as_u64().expect("pid"),
        pricey["pid"].as_u64().expect("pid"),
    ] {
        assert!(!alive(pid as u32), "process {pid} still running");
    }
}

/// The `Slashed` events against `provider` on the settlement contract.
#[cfg(feature = "adversary")]
async fn slashes_of(
    chain: &SettlementClient,
    d: &Deployment,
    provider: Address,
) -> Vec<AgoraSettlement::Slashed> {
    let filter = Filter::new()
        .address(d.settlement)
        .event_signature(AgoraSettlement::Slashed::SIGNATURE_HASH)
        .topic1(provider.into_word())
        .from_block(d.start_block);
    chain
        .provider()
        .get_logs(&filter)
        .await
        .expect("logs")
        .iter()
        .map(|l| AgoraSettlement::Slashed::decode_log_data(l.data()).expect("event"))
        .collect()
}

/// Who served one 40-token answer (status 200 asserted).
#[cfg(feature = "adversary")]
fn served_by(devnet: &Devnet, model: &str, seed: u64) -> String {
    let (status, body) = http(
        &devnet.endpoint(),
        "POST",
        "/v1/chat/completions",
        Some(&devnet.key()),
        Some(
            &json!({"model": model, "messages": [{"role": "user", "content": "Speak."}],
                     "max_tokens": 40, "seed": seed})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["agora"]["receipts"][0]["provider"]
        .as_str()
        .expect("provider")
        .to_string()
}

/// `cheater::a_quantized_cheater_is_caught_slashed_and_dropped` on the EVM settlement: a
/// provider serving Q4_0 weights under the model's id wins on price, posts its receipt root on
/// the contract, is audited (assigned, committed, revealed, confirmed) and slashed there, and
/// the gateway stops routing to it; the honest provider's stake never moves.
#[cfg(feature = "adversary")]
#[test]
fn an_evm_cheater_is_caught_slashed_and_dropped() {
    if find_anvil().is_none() {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return;
    }
    const EPOCH_SECS: u64 = 4;
    let dir = tempfile::tempdir().expect("tmp");
    let mut devnet = Devnet::start_with(
        dir.path(),
        1,
        &[
            "--settlement",
            "evm",
            "--cheater",
            "quantized",
            "--epoch-secs",
            &EPOCH_SECS.to_string(),
        ],
    );
    assert_eq!(devnet.info["settlement"], "evm");
    let rt = rt();
    let (chain, deployment) = rt.block_on(reader(&devnet.info));
    let providers = devnet.info["providers"]
        .as_array()
        .expect("providers")
        .clone();
    assert_eq!(providers[1]["name"], "cheater");
    let honest = providers[0]["account"].as_str().expect("id").to_string();
    let cheater = providers[1]["account"].as_str().expect("id").to_string();
    let honest_addr = info_address(&devnet.info, providers[0]["name"].as_str().expect("n"));
    let cheater_addr = info_address(&devnet.info, "cheater");
    // The address the cheater's services sign with is the one its key file derives.
    assert_eq!(
        cheater_addr,
        evm_signer_for(&seed_of_key_file(&dir.path().join("cheater.json"))).address()
    );
    let model = devnet.info["model"].as_str().expect("model").to_string();
    let stake_of = |a: Address| rt.block_on(chain.account(a)).expect("account").stake;
    assert_eq!(stake_of(cheater_addr), STAKE);
    assert_eq!(stake_of(honest_addr), STAKE);

    // The cheater is cheapest, so it serves.
    for seed in 0..3 {
        assert_eq!(served_by(&devnet, &model, seed), cheater);
    }
    // Within some epochs: root posted, audited, committed, revealed, confirmed, slashed.
    let deadline = Instant::now() + Duration::from_secs(30 * EPOCH_SECS);
    while stake_of(cheater_addr) == STAKE {
        assert!(Instant::now() < deadline, "the cheater was never slashed");
        std::thread::sleep(Duration::from_millis(500));
    }
    let slashes = rt.block_on(slashes_of(&chain, &deployment, cheater_addr));
    assert!(!slashes.is_empty(), "a fraud verdict against the cheater");
    let taken: u128 = slashes
        .iter()
        .map(|s| u128::try_from(s.amount).expect("u128"))
        .sum();
    assert!(taken > 0);
    assert!(
        slashes.iter().all(|s| s.verifier != Address::ZERO),
        "a verifier caught it: {slashes:?}"
    );
    let now = stake_of(cheater_addr);
    assert!(now < STAKE, "the cheater's bonded stake fell");

    // The market dropped it: answers now come from the honest provider.
    let deadline = Instant::now() + Duration::from_secs(10 * EPOCH_SECS);
    let mut seed = 100;
    while served_by(&devnet, &model, seed) != honest {
        assert!(
            Instant::now() < deadline,
            "the cheater is still being chosen"
        );
        seed += 1;
    }
    for seed in 200..203 {
        assert_eq!(served_by(&devnet, &model, seed), honest);
    }
    // Two more epochs for any verdict in flight: the honest provider is never slashed.
    std::thread::sleep(Duration::from_secs(2 * EPOCH_SECS));
    assert_eq!(
        stake_of(honest_addr),
        STAKE,
        "the honest provider keeps its stake"
    );
    assert!(rt
        .block_on(slashes_of(&chain, &deployment, honest_addr))
        .is_empty());
    let status = devnet.stop();
    assert!(status.success(), "devnet exit: {status}");
}
