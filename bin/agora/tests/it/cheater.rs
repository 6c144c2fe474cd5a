//! `agora devnet --cheater` (test builds with `--features adversary`): a provider serving
//! Q4_0 weights under the model's id wins the auction on price, posts its receipt root, is
//! audited by two verifiers through the network, confirmed, slashed on the ledger, and
//! dropped by the market; the next request goes to an honest provider whose audits pass.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::network::{account_amount, http, Devnet};

fn stake(devnet: &Devnet, account: &str) -> u128 {
    account_amount(devnet, account, "stake")
}

fn ask(devnet: &Devnet, model: &str, seed: u64) -> String {
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

#[test]
fn a_cheating_provider_is_caught_slashed_and_dropped() {
    let dir = tempfile::tempdir().expect("tmp");
    let devnet = Devnet::start_with(dir.path(), 1, &["--cheater", "--epoch-secs", "3"]);
    let providers = devnet.info["providers"]
        .as_array()
        .expect("providers")
        .clone();
    let honest = providers[0]["account"].as_str().expect("id").to_string();
    let cheater = providers[1]["account"].as_str().expect("id").to_string();
    assert_eq!(providers[1]["name"], "cheater");
    let model = devnet.info["model"].as_str().expect("model").to_string();
    let staked = stake(&devnet, &cheater);

    // The cheater is cheapest, so it wins.
    for seed in 0..3 {
        assert_eq!(ask(&devnet, &model, seed), cheater);
    }
    // Within a few epochs: root posted, audited, confirmed, slashed.
    let deadline = Instant::now() + Duration::from_secs(90);
    while stake(&devnet, &cheater) == staked {
        assert!(Instant::now() < deadline, "the cheater was never slashed");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(stake(&devnet, &cheater) < staked);
    // The market dropped it: answers now come from the honest provider, whose audits pass
    // and whose stake is untouched.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ask(&devnet, &model, 9) == honest {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cheater is still being chosen"
        );
    }
    for seed in 10..13 {
        assert_eq!(ask(&devnet, &model, seed), honest);
    }
    let honest_stake = providers[0]["stake"]
        .as_str()
        .expect("s")
        .parse::<u128>()
        .expect("n");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        stake(&devnet, &honest),
        honest_stake,
        "the honest provider is never slashed"
    );
}
