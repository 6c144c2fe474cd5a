use agora_core::{Amount, Keypair};
use agora_ledger::{Allocation, Genesis, Ledger, Params, SignedTx, Tx, TxBody};

pub const CHAIN: u64 = 42;

pub fn keys(n: usize) -> Vec<Keypair> {
    (0..n)
        .map(|i| Keypair::from_seed([i as u8 + 1; 32]))
        .collect()
}

/// Key 0 is the sequencer; every key gets `each`.
pub fn genesis(keys: &[Keypair], each: u128) -> Genesis {
    Genesis {
        chain_id: CHAIN,
        sequencer: keys[0].account(),
        params: Params::default(),
        allocations: keys
            .iter()
            .map(|k| Allocation {
                account: k.account(),
                amount: Amount::new(each),
            })
            .collect(),
    }
}

pub fn ledger(keys: &[Keypair], each: u128) -> Ledger {
    Ledger::from_genesis(&genesis(keys, each)).expect("valid genesis")
}

/// A transaction from `key` with its next nonce.
pub fn tx(l: &Ledger, key: &Keypair, body: TxBody) -> SignedTx {
    let nonce = l.state.account(&key.account()).map_or(0, |a| a.nonce);
    Tx {
        chain_id: CHAIN,
        from: key.account(),
        nonce,
        body,
    }
    .sign(key)
}

pub fn amt(n: u128) -> Amount {
    Amount::new(n)
}

/// A receipt of `provider` on `channel` (paid by `payer`) costing `cost` whole units;
/// `i` makes it unique.
pub fn receipt(
    provider: &Keypair,
    payer: &Keypair,
    channel: agora_core::Hash32,
    cost: u128,
    i: u8,
) -> agora_wire::SignedReceipt {
    receipt_at(provider, payer, channel, cost, i, 0)
}

/// [`receipt`], served in ledger epoch `epoch`.
pub fn receipt_at(
    provider: &Keypair,
    payer: &Keypair,
    channel: agora_core::Hash32,
    cost: u128,
    i: u8,
    epoch: u64,
) -> agora_wire::SignedReceipt {
    use agora_core::Hash32;
    agora_wire::Receipt {
        chain_id: CHAIN,
        epoch,
        request_id: [i; 16],
        provider: provider.account(),
        payer: payer.account(),
        channel,
        model: Hash32::of(b"model"),
        prompt_hash: Hash32::of(&[i, 1]),
        output_hash: Hash32::of(&[i, 2]),
        prompt_tokens: 3,
        resumed_tokens: 0,
        output_tokens: 2,
        sampling: agora_wire::Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: u64::from(i),
            ..Default::default()
        },
        fingerprint_hash: Hash32::of(&[i, 3]),
        price_in: Amount::new(1),
        price_out: Amount::new(2),
        cost_micros: cost * agora_wire::MICROS_PER_UNIT,
        started_ms: 1,
        finished_ms: 2,
    }
    .sign(provider)
}
