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
