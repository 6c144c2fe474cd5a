//! `agora keys show` (the EVM account a key file settles from) and `agora evm deploy|mint`
//! against a real Anvil: a user joins a chain with `agora` commands alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::bindings::AgoraSettlement;
use agora_evm::{Deployment, SettlementClient};
use agora_ledger::{Genesis, Params};
use agora_settlement::open::evm_signer_for;
use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use serde_json::Value;

use crate::{stderr, stdout};

/// Gas money for the deployer: 10 ETH.
const GAS_WEI: u128 = 10_000_000_000_000_000_000;

/// A fresh Anvil and its RPC URL; `None` (a SKIP line printed) where Anvil is not installed.
fn anvil_or_skip() -> Option<(Anvil, String)> {
    let Some(bin) = find_anvil() else {
        eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
        return None;
    };
    let anvil = Anvil::start(&bin, 31337).expect("anvil");
    let rpc = anvil.url().to_string();
    Some((anvil, rpc))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn agora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agora")
}

fn ok(args: &[&str]) -> String {
    let out = agora(args);
    assert!(
        out.status.success(),
        "agora {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Runs a command that must fail with a message, not a panic, and returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = agora(args);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "agora {args:?} succeeded: {}",
        stdout(&out)
    );
    assert!(!err.contains("panicked"), "agora {args:?} panicked: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A new key file (`agora keys new`) and its ed25519 seed.
fn new_key(dir: &Path, name: &str) -> (PathBuf, [u8; 32]) {
    let path = dir.join(name);
    ok(&["keys", "new", "--out", s(&path)]);
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("key file")).expect("json");
    let seed: [u8; 32] = hex::decode(v["secret"].as_str().expect("secret"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    (path, seed)
}

/// `label value` lines, as `agora evm deploy` prints them.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(label))
                .then(|| parts.next())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no `{label}` line in {out:?}"))
}

/// Sends `wei` of Anvil's native currency from its first dev key to `to` (as the devnet
/// funds its parties' gas).
async fn send_gas(anvil: &Anvil, to: Address, wei: u128) {
    let payer = anvil.keys().first().expect("a dev key").clone();
    SettlementClient::connect_bare(anvil.url(), payer)
        .await
        .expect("connect")
        .send_native(to, U256::from(wei))
        .await
        .expect("send gas");
}

async fn nonce(anvil: &Anvil, who: Address) -> u64 {
    let reader = SettlementClient::connect_bare(anvil.url(), evm_signer_for(&[0xEE; 32]))
        .await
        .expect("connect");
    reader
        .provider()
        .get_transaction_count(who)
        .await
        .expect("nonce")
}

fn write_genesis(path: &Path, params: Params) {
    let genesis = Genesis {
        chain_id: 7,
        sequencer: agora_core::Keypair::from_seed([3; 32]).account(),
        params,
        allocations: Vec::new(),
    };
    std::fs::write(path, serde_json::to_string_pretty(&genesis).expect("json")).expect("write");
}

#[test]
fn keys_show_prints_the_evm_account_the_services_settle_from() {
    let dir = tempfile::tempdir().expect("tmp");
    let (key, seed) = new_key(dir.path(), "alice.json");
    let account = agora_core::Keypair::from_seed(seed).account().to_string();
    let evm = evm_signer_for(&seed).address();
    let shown = ok(&["keys", "show", "--key", s(&key)]);
    let lines: Vec<&str> = shown.lines().collect();
    // The first line is what it always was: the bare account id.
    assert_eq!(lines.first(), Some(&account.as_str()), "{shown}");
    assert_eq!(lines.get(1), Some(&format!("evm-address {evm}").as_str()));
    assert_eq!(lines.len(), 2, "{shown}");
    // Checksummed as the evm crate prints addresses (mixed case, EIP-55).
    assert_eq!(
        Address::parse_checksummed(field(&shown, "evm-address"), None).expect("checksum"),
        evm
    );
    let json: Value =
        serde_json::from_str(&ok(&["keys", "show", "--key", s(&key), "--json"])).expect("json");
    assert_eq!(json["account"], account.as_str());
    assert_eq!(json["evm_address"], evm.to_string().as_str());
    // Another key, another account.
    let (other, other_seed) = new_key(dir.path(), "bob.json");
    assert_ne!(evm_signer_for(&other_seed).address(), evm);
    assert!(ok(&["keys", "show", "--key", s(&other)]).contains(&format!(
        "evm-address {}",
        evm_signer_for(&other_seed).address()
    )));
}

#[test]
fn evm_help_names_every_subcommand_and_who_mints() {
    let top = ok(&["evm", "--help"]);
    for cmd in ["deploy", "mint"] {
        assert!(top.contains(cmd), "{top}");
    }
    let deploy = ok(&["evm", "deploy", "--help"]);
    for flag in [
        "--rpc",
        "--key",
        "--out",
        "--force",
        "--token",
        "--genesis",
        "--chain-id",
        "--epoch-blocks",
    ] {
        assert!(deploy.contains(flag), "{flag} in {deploy}");
    }
    assert!(
        deploy.contains("only the deployer can mint"),
        "the test stablecoin's minter: {deploy}"
    );
    let mint = ok(&["evm", "mint", "--help"]);
    for flag in ["--rpc", "--contracts", "--key", "--to", "--amount"] {
        assert!(mint.contains(flag), "{flag} in {mint}");
    }
}

#[test]
fn evm_deploy_on_anvil_writes_a_deployment_the_contract_answers_and_mints() {
    let Some((anvil, rpc)) = anvil_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (key, seed) = new_key(dir.path(), "deployer.json");
    let deployer = evm_signer_for(&seed).address();
    let rt = rt();
    rt.block_on(send_gas(&anvil, deployer, GAS_WEI));

    // Rules from a genesis file, epochs of 5 blocks.
    let genesis = dir.path().join("genesis.json");
    let ledger = Params {
        slash_bps: 4_000,
        audit_fee_bps: 150,
        min_provider_stake: agora_core::Amount::new(1_000),
        unbonding_epochs: 12,
        ..Params::default()
    };
    write_genesis(&genesis, ledger.clone());
    let out_path = dir.path().join("contracts.json");
    let out = ok(&[
        "evm",
        "deploy",
        "--rpc",
        &rpc,
        "--key",
        s(&key),
        "--out",
        s(&out_path),
        "--genesis",
        s(&genesis),
        "--epoch-blocks",
        "5",
    ]);
    let deployment = Deployment::load(&out_path).expect("the file loads as a Deployment");
    assert_eq!(field(&out, "chain-id"), "31337");
    assert_eq!(deployment.chain_id, 31337);
    assert_eq!(field(&out, "token"), deployment.token.to_string());
    assert_eq!(field(&out, "settlement"), deployment.settlement.to_string());
    assert_eq!(
        field(&out, "start-block"),
        deployment.start_block.to_string()
    );
    assert_eq!(
        Path::new(field(&out, "contracts")),
        out_path.canonicalize().expect("path")
    );
    assert_eq!(
        deployment.params,
        agora_evm::Params {
            epoch_blocks: 5,
            slash_bps: 4_000,
            audit_fee_bps: 150,
            min_provider_stake: 1_000,
            unbonding_epochs: 12,
            ..agora_evm::Params::devnet(5)
        }
    );

    rt.block_on(async {
        let chain =
            SettlementClient::connect(&rpc, evm_signer_for(&[0xEE; 32]), deployment.clone())
                .await
                .expect("connect");
        for a in [deployment.token, deployment.settlement] {
            let code = chain.provider().get_code_at(a).await.expect("code");
            assert!(!code.is_empty(), "no contract at {a}");
        }
        // The contract answers with the rules it was given.
        let settlement = AgoraSettlement::new(deployment.settlement, chain.provider());
        assert_eq!(
            settlement.token().call().await.expect("token"),
            deployment.token
        );
        assert_eq!(settlement.epochBlocks().call().await.expect("epoch"), 5);
        assert_eq!(settlement.auditFeeBps().call().await.expect("bps"), 150);
        assert_eq!(
            settlement.minProviderStake().call().await.expect("stake"),
            1_000
        );
        assert_eq!(
            settlement
                .unbondingEpochs()
                .call()
                .await
                .expect("unbonding"),
            12
        );
        assert_eq!(
            settlement.startBlock().call().await.expect("start"),
            U256::from(deployment.start_block)
        );
    });

    // The deployer mints the test stablecoin to a party, by its `keys show` address.
    let (party_key, party_seed) = new_key(dir.path(), "party.json");
    let party = ok(&["keys", "show", "--key", s(&party_key)]);
    let party_address = field(&party, "evm-address").to_string();
    assert_eq!(
        party_address,
        evm_signer_for(&party_seed).address().to_string()
    );
    let minted = ok(&[
        "evm",
        "mint",
        "--rpc",
        &rpc,
        "--contracts",
        s(&out_path),
        "--key",
        s(&key),
        "--to",
        &party_address,
        "--amount",
        "2500000",
    ]);
    assert_eq!(field(&minted, "balance"), "2500000");
    let balance = rt.block_on(async {
        SettlementClient::connect(&rpc, evm_signer_for(&[0xEE; 32]), deployment.clone())
            .await
            .expect("connect")
            .token_balance(evm_signer_for(&party_seed).address())
            .await
            .expect("balance")
    });
    assert_eq!(balance, 2_500_000);

    // Over an existing ERC-20 (the one just deployed), with the devnet's default rules.
    let second_path = dir.path().join("second.json");
    let token = deployment.token.to_string();
    let args = [
        "evm",
        "deploy",
        "--rpc",
        &rpc,
        "--key",
        s(&key),
        "--out",
        s(&second_path),
        "--token",
        &token,
    ];
    ok(&args);
    let second = Deployment::load(&second_path).expect("load");
    assert_eq!(second.token, deployment.token);
    assert_ne!(second.settlement, deployment.settlement);
    assert_eq!(
        second.params,
        agora_evm::Params {
            audit_fee_bps: 200,
            audit_fee: 1,
            ..agora_evm::Params::devnet(10)
        }
    );
    // An existing file is kept, and nothing is sent, unless --force.
    let before = rt.block_on(nonce(&anvil, deployer));
    let err = refused(&args);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(rt.block_on(nonce(&anvil, deployer)), before, "gas spent");
    assert_eq!(Deployment::load(&second_path).expect("load"), second);
    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    ok(&forced);
    let third = Deployment::load(&second_path).expect("load");
    assert_ne!(third.settlement, second.settlement);
}

#[test]
fn evm_deploy_and_mint_refuse_clearly_and_spend_nothing() {
    let Some((anvil, rpc)) = anvil_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let out_path = dir.path().join("contracts.json");
    let out = s(&out_path);
    let rt = rt();

    // A key whose account holds no gas.
    let (poor, poor_seed) = new_key(dir.path(), "poor.json");
    let poor_address = evm_signer_for(&poor_seed).address();
    let err = refused(&[
        "evm",
        "deploy",
        "--rpc",
        &rpc,
        "--key",
        s(&poor),
        "--out",
        out,
    ]);
    assert!(err.contains("native currency to pay gas"), "{err}");
    assert!(err.contains(&poor_address.to_string()), "{err}");
    assert_eq!(rt.block_on(nonce(&anvil, poor_address)), 0);
    assert!(!out_path.exists());

    let (key, seed) = new_key(dir.path(), "deployer.json");
    let deployer = evm_signer_for(&seed).address();
    rt.block_on(send_gas(&anvil, deployer, GAS_WEI));
    let deploy = |extra: &[&str]| -> String {
        let args: Vec<&str> = [
            "evm",
            "deploy",
            "--rpc",
            &rpc,
            "--key",
            s(&key),
            "--out",
            out,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
        refused(&args)
    };

    // Rules the constructor refuses: an unbonding shorter than the verdict windows.
    let genesis = dir.path().join("genesis.json");
    write_genesis(
        &genesis,
        Params {
            unbonding_epochs: 2,
            ..Params::default()
        },
    );
    let err = deploy(&["--genesis", s(&genesis)]);
    assert!(err.contains("unbonding"), "{err}");
    // A genesis file that is not one.
    std::fs::write(&genesis, "{\"chain_id\": 1}").expect("write");
    let err = deploy(&["--genesis", s(&genesis)]);
    assert!(err.contains("parsing the genesis file"), "{err}");
    let err = refused(&[
        "evm",
        "deploy",
        "--rpc",
        &rpc,
        "--key",
        s(&key),
        "--out",
        s(dir.path()),
        "--force",
    ]);
    assert!(err.contains("is a folder"), "{err}");
    let err = deploy(&["--epoch-blocks", "0"]);
    assert!(err.contains("--epoch-blocks"), "{err}");

    // Bad addresses: malformed, a mistyped checksum, no contract there.
    let err = deploy(&["--token", "0x1234"]);
    assert!(err.contains("40 hex digits"), "{err}");
    let err = deploy(&["--token", "0x5FbDB2315678afecb367f032d93F642f64180Aa3"]);
    assert!(err.contains("checksum"), "{err}");
    let err = deploy(&["--token", "0x0000000000000000000000000000000000000001"]);
    assert!(err.contains("no contract at that address"), "{err}");

    // An RPC nobody answers: a port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = refused(&[
        "evm",
        "deploy",
        "--rpc",
        &dead,
        "--key",
        s(&key),
        "--out",
        out,
    ]);
    assert!(err.contains("cannot reach the chain's RPC"), "{err}");
    assert!(started.elapsed().as_secs() < 10, "reported late");
    // The RPC serves another chain than the one asked for.
    let err = deploy(&["--chain-id", "1"]);
    assert!(
        err.contains("serves chain 31337, not the --chain-id 1"),
        "{err}"
    );
    let err = refused(&[
        "evm",
        "deploy",
        "--rpc",
        "not a url",
        "--key",
        s(&key),
        "--out",
        out,
    ]);
    assert!(err.contains("bad RPC URL"), "{err}");

    // Nothing above sent a transaction or wrote the file.
    assert_eq!(rt.block_on(nonce(&anvil, deployer)), 0, "gas spent");
    assert!(!out_path.exists());

    // Only the deployer mints the test stablecoin.
    ok(&[
        "evm",
        "deploy",
        "--rpc",
        &rpc,
        "--key",
        s(&key),
        "--out",
        out,
    ]);
    rt.block_on(send_gas(&anvil, poor_address, GAS_WEI));
    let to = deployer.to_string();
    let mint = |key: &Path, to: &str| -> Vec<String> {
        [
            "evm",
            "mint",
            "--rpc",
            &rpc,
            "--contracts",
            out,
            "--key",
            s(key),
            "--to",
            to,
            "--amount",
            "5",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let args = mint(&poor, &to);
    let err = refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("may not mint"), "{err}");
    assert_eq!(rt.block_on(nonce(&anvil, poor_address)), 0, "gas spent");
    let args = mint(&key, "0x0000000000000000000000000000000000000000");
    let err = refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("zero address"), "{err}");
    // A deployment file for another chain than the RPC's.
    let mut other: Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).expect("read")).expect("json");
    other["chain_id"] = 1.into();
    std::fs::write(&out_path, other.to_string()).expect("write");
    let args = mint(&key, &to);
    let err = refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("the RPC serves chain 31337"), "{err}");
    assert_eq!(
        rt.block_on(nonce(&anvil, deployer)),
        2,
        "only the deployment's two transactions"
    );
}
