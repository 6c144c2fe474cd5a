use crate::common::{amt, genesis, keys, CHAIN};
use agora_core::{codec, merkle, Hash32, Keypair};
use agora_ledger::{
    audit_commitment, Block, Fault, Ledger, SignedTx, Store, Tx, TxBody, TxEvents, Verdict, Voucher,
};
use proptest::prelude::*;

const N: usize = 5;

#[derive(Debug, Clone)]
enum Op {
    Transfer {
        from: usize,
        to: usize,
        amount: u128,
    },
    Stake {
        who: usize,
        amount: u128,
    },
    Unstake {
        who: usize,
        amount: u128,
    },
    Open {
        payer: usize,
        provider: usize,
        amount: u128,
        timeout: u64,
    },
    TopUp {
        who: usize,
        ch: usize,
        amount: u128,
    },
    Claim {
        who: usize,
        ch: usize,
        cumulative: u128,
        forge: bool,
    },
    Close {
        who: usize,
        ch: usize,
    },
    Register {
        who: usize,
        amount: u128,
    },
    PostRoot {
        who: usize,
        receipts: u64,
        epoch_delta: u64,
    },
    Verdict {
        by: usize,
        conf: usize,
        root: usize,
        leaf: usize,
    },
    /// The assigned verifier (or `who` when there is none) commits to, or reveals, the audit
    /// of a leaf.
    Audit {
        who: usize,
        root: usize,
        leaf: usize,
        reveal: bool,
        passed: bool,
    },
    Advance {
        who: usize,
    },
    /// The payer `who` challenges a leaf's receipt (or, `omitted`, a receipt of the same epoch
    /// that is under no root).
    Challenge {
        who: usize,
        root: usize,
        leaf: usize,
        omitted: bool,
    },
    /// The provider proves a leaf's inclusion.
    AnswerInclusion {
        root: usize,
        leaf: usize,
    },
    /// The assigned verifier (or `who`) demands a leaf's material; or the provider answers.
    Demand {
        who: usize,
        root: usize,
        leaf: usize,
        answer: bool,
    },
    /// `who` commits a plant at a leaf; or the provider opens it (confirmed by `who`).
    Plant {
        who: usize,
        root: usize,
        leaf: usize,
        open: bool,
    },
    /// 0: wrong chain, 1: future nonce, 2: stale nonce, 3: signed by another key.
    Corrupt {
        how: u8,
        op: Box<Op>,
    },
    Seal,
}

fn who() -> impl Strategy<Value = usize> {
    0..N
}

fn money() -> impl Strategy<Value = u128> {
    prop_oneof![0..400u128, Just(u128::MAX)]
}

fn plain_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (who(), who(), money()).prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        2 => (who(), money()).prop_map(|(who, amount)| Op::Stake { who, amount }),
        2 => (who(), money()).prop_map(|(who, amount)| Op::Unstake { who, amount }),
        3 => (who(), who(), money(), prop_oneof![0..6u64, Just(u64::MAX)])
            .prop_map(|(payer, provider, amount, timeout)| Op::Open { payer, provider, amount, timeout }),
        1 => (who(), any::<usize>(), money()).prop_map(|(who, ch, amount)| Op::TopUp { who, ch, amount }),
        4 => (who(), any::<usize>(), 0..500u128, proptest::bool::weighted(0.2))
            .prop_map(|(who, ch, cumulative, forge)| Op::Claim { who, ch, cumulative, forge }),
        2 => (who(), any::<usize>()).prop_map(|(who, ch)| Op::Close { who, ch }),
        1 => (who(), 0..200u128).prop_map(|(who, amount)| Op::Register { who, amount }),
        2 => (who(), 1..6u64, 0..2u64).prop_map(|(who, receipts, epoch_delta)| Op::PostRoot { who, receipts, epoch_delta }),
        2 => (who(), who(), any::<usize>(), any::<usize>())
            .prop_map(|(by, conf, root, leaf)| Op::Verdict { by, conf, root, leaf }),
        3 => (who(), any::<usize>(), any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(who, root, leaf, reveal, passed)| Op::Audit { who, root, leaf, reveal, passed }),
        2 => prop_oneof![4 => Just(0usize), 1 => who()].prop_map(|who| Op::Advance { who }),
        2 => (who(), any::<usize>(), any::<usize>(), any::<bool>())
            .prop_map(|(who, root, leaf, omitted)| Op::Challenge { who, root, leaf, omitted }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(root, leaf)| Op::AnswerInclusion { root, leaf }),
        2 => (who(), any::<usize>(), any::<usize>(), any::<bool>())
            .prop_map(|(who, root, leaf, answer)| Op::Demand { who, root, leaf, answer }),
        2 => (who(), any::<usize>(), any::<usize>(), any::<bool>())
            .prop_map(|(who, root, leaf, open)| Op::Plant { who, root, leaf, open }),
        2 => Just(Op::Seal),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => plain_op(),
        1 => (0..4u8, plain_op()).prop_map(|(how, op)| Op::Corrupt { how, op: Box::new(op) }),
    ]
}

/// Receipt roots posted so far: (provider index, epoch, leaves).
type Roots = Vec<(usize, u64, Vec<agora_wire::SignedReceipt>)>;

/// `n` receipts of `k[who]` for `epoch`, on its first channel (a made-up one if none).
fn leaves(
    l: &Ledger,
    k: &[Keypair],
    who: usize,
    epoch: u64,
    n: u64,
) -> Vec<agora_wire::SignedReceipt> {
    let provider = k[who].account();
    let channel = l
        .state
        .channels
        .iter()
        .find(|(_, c)| c.provider == provider)
        .map_or(Hash32::of(b"no channel"), |(id, _)| *id);
    (0..n)
        .map(|i| {
            let tag = codec::hash(b"test/receipt", &(who as u64, epoch, i));
            crate::common::receipt(
                &k[who],
                &k[0],
                channel,
                u128::from(i % 7),
                tag.as_bytes()[0],
            )
        })
        .collect()
}

/// A posted root (or a made-up one when none is): (provider index, epoch, receipts).
fn pick_root(
    l: &Ledger,
    k: &[Keypair],
    roots: &Roots,
    root: usize,
) -> (usize, u64, Vec<agora_wire::SignedReceipt>) {
    if roots.is_empty() {
        (1, 0, leaves(l, k, 1, 0, 1))
    } else {
        roots[root % roots.len()].clone()
    }
}

fn hashes(r: &[agora_wire::SignedReceipt]) -> Vec<Hash32> {
    r.iter().map(|r| r.hash()).collect()
}

fn pick_channel(l: &Ledger, ch: usize) -> Hash32 {
    let n = l.state.channels.len();
    if n == 0 {
        return Hash32::of(b"no channel");
    }
    l.state
        .channels
        .keys()
        .nth(ch % n)
        .copied()
        .unwrap_or(Hash32::ZERO)
}

fn build(l: &Ledger, k: &[Keypair], roots: &Roots, op: &Op) -> Option<SignedTx> {
    let sign = |who: usize, body: TxBody| {
        let nonce = l.state.account(&k[who].account()).map_or(0, |a| a.nonce);
        Some(
            Tx {
                chain_id: CHAIN,
                from: k[who].account(),
                nonce,
                body,
            }
            .sign(&k[who]),
        )
    };
    match op {
        Op::Transfer { from, to, amount } => sign(
            *from,
            TxBody::Transfer {
                to: k[*to].account(),
                amount: amt(*amount),
            },
        ),
        Op::Stake { who, amount } => sign(
            *who,
            TxBody::Stake {
                amount: amt(*amount),
            },
        ),
        Op::Unstake { who, amount } => sign(
            *who,
            TxBody::Unstake {
                amount: amt(*amount),
            },
        ),
        Op::Open {
            payer,
            provider,
            amount,
            timeout,
        } => sign(
            *payer,
            TxBody::OpenChannel {
                provider: k[*provider].account(),
                amount: amt(*amount),
                timeout_epochs: *timeout,
            },
        ),
        Op::TopUp { who, ch, amount } => sign(
            *who,
            TxBody::TopUpChannel {
                channel: pick_channel(l, *ch),
                amount: amt(*amount),
            },
        ),
        Op::Claim {
            who,
            ch,
            cumulative,
            forge,
        } => {
            let channel = pick_channel(l, *ch);
            let payer_idx = l
                .state
                .channel(&channel)
                .and_then(|c| k.iter().position(|key| key.account() == c.payer))
                .unwrap_or(0);
            let voucher = Voucher {
                chain_id: CHAIN,
                channel,
                cumulative: amt(*cumulative),
            };
            let signer = if *forge {
                &k[(payer_idx + 1) % N]
            } else {
                &k[payer_idx]
            };
            sign(
                *who,
                TxBody::ClaimVoucher {
                    payer_sig: voucher.sign(signer),
                    voucher,
                    payer: k[payer_idx].account(),
                },
            )
        }
        Op::Close { who, ch } => sign(
            *who,
            TxBody::CloseChannel {
                channel: pick_channel(l, *ch),
            },
        ),
        Op::Register { who, amount } => sign(
            *who,
            TxBody::RegisterVerifier {
                stake: amt(*amount),
            },
        ),
        Op::PostRoot {
            who,
            receipts,
            epoch_delta,
        } => {
            let epoch = l.state.epoch.saturating_sub(*epoch_delta);
            let root = merkle::root(&hashes(&leaves(l, k, *who, epoch, *receipts)));
            sign(
                *who,
                TxBody::PostReceiptRoot {
                    epoch,
                    root,
                    receipts: *receipts,
                },
            )
        }
        Op::Verdict {
            by,
            conf,
            root,
            leaf,
        } => {
            let (provider, epoch, ls) = if roots.is_empty() {
                (1, 0, leaves(l, k, 1, 0, 1))
            } else {
                roots[root % roots.len()].clone()
            };
            let index = leaf % ls.len();
            let verdict = Verdict {
                chain_id: CHAIN,
                provider: k[provider].account(),
                epoch,
                index: index as u64,
                fault: Fault::Fraud {
                    receipt: ls[index].clone(),
                    proof: merkle::proof(&hashes(&ls), index).unwrap_or_default(),
                },
            };
            sign(
                *by,
                TxBody::AuditVerdict {
                    confirmer_sig: verdict.sign(&k[*conf]),
                    verdict,
                    confirmer: k[*conf].account(),
                },
            )
        }
        Op::Audit {
            who,
            root,
            leaf,
            reveal,
            passed,
        } => {
            let (provider, epoch, ls) = if roots.is_empty() {
                (1, 0, leaves(l, k, 1, 0, 1))
            } else {
                roots[root % roots.len()].clone()
            };
            let index = (leaf % ls.len()) as u64;
            let provider = k[provider].account();
            let by = l
                .state
                .leaf_assignee(&provider, epoch, index)
                .and_then(|v| k.iter().position(|key| key.account() == v))
                .unwrap_or(*who);
            let salt = Hash32::of(&index.to_le_bytes());
            let body = if *reveal {
                TxBody::RevealAudit {
                    provider,
                    epoch,
                    index,
                    passed: *passed,
                    receipt: ls[index as usize].hash(),
                    salt,
                }
            } else {
                TxBody::CommitAudit {
                    provider,
                    epoch,
                    index,
                    commitment: audit_commitment(
                        CHAIN,
                        &k[by].account(),
                        &provider,
                        epoch,
                        index,
                        *passed,
                        &salt,
                    ),
                }
            };
            sign(by, body)
        }
        Op::Advance { who } => sign(*who, TxBody::AdvanceEpoch),
        Op::Challenge {
            who,
            root,
            leaf,
            omitted,
        } => {
            let (provider, epoch, ls) = pick_root(l, k, roots, *root);
            let index = leaf % ls.len();
            let receipt = if *omitted {
                let channel = ls[index].receipt.channel;
                crate::common::receipt_at(&k[provider], &k[0], channel, 3, 200, epoch)
            } else {
                ls[index].clone()
            };
            sign(*who, TxBody::ChallengeInclusion { receipt })
        }
        Op::AnswerInclusion { root, leaf } => {
            let (provider, epoch, ls) = pick_root(l, k, roots, *root);
            let index = leaf % ls.len();
            sign(
                provider,
                TxBody::AnswerInclusion {
                    receipt: ls[index].hash(),
                    epoch,
                    index: index as u64,
                    proof: merkle::proof(&hashes(&ls), index).unwrap_or_default(),
                },
            )
        }
        Op::Demand {
            who,
            root,
            leaf,
            answer,
        } => {
            let (provider, epoch, ls) = pick_root(l, k, roots, *root);
            let index = leaf % ls.len();
            if *answer {
                sign(
                    provider,
                    TxBody::AnswerDemand {
                        epoch,
                        index: index as u64,
                        receipt: ls[index].clone(),
                        proof: merkle::proof(&hashes(&ls), index).unwrap_or_default(),
                        material: Hash32::of(b"material"),
                    },
                )
            } else {
                let p = k[provider].account();
                let by = l
                    .state
                    .leaf_assignee(&p, epoch, index as u64)
                    .and_then(|v| k.iter().position(|key| key.account() == v))
                    .unwrap_or(*who);
                sign(
                    by,
                    TxBody::DemandMaterial {
                        provider: p,
                        epoch,
                        index: index as u64,
                    },
                )
            }
        }
        Op::Plant {
            who,
            root,
            leaf,
            open,
        } => {
            let (provider, epoch, ls) = pick_root(l, k, roots, *root);
            let index = (leaf % ls.len()) as u64;
            let p = k[provider].account();
            let salt = Hash32::of(b"props plant");
            if *open {
                sign(
                    provider,
                    TxBody::RevealPlant {
                        provider: p,
                        epoch,
                        index,
                        salt,
                        confirmation: Some((
                            k[*who].account(),
                            agora_ledger::sign_plant_confirmation(
                                &k[*who], CHAIN, &p, epoch, index,
                            ),
                        )),
                    },
                )
            } else {
                sign(
                    *who,
                    TxBody::PlantFraud {
                        commitment: agora_ledger::plant_commitment(CHAIN, &p, epoch, index, &salt),
                    },
                )
            }
        }
        Op::Corrupt { how, op } => {
            let t = build(l, k, roots, op)?;
            let from = k
                .iter()
                .position(|key| key.account() == t.tx.from)
                .unwrap_or(0);
            Some(match how {
                0 => Tx {
                    chain_id: CHAIN + 1,
                    ..t.tx
                }
                .sign(&k[from]),
                1 => Tx {
                    nonce: t.tx.nonce + 1,
                    ..t.tx
                }
                .sign(&k[from]),
                2 => Tx {
                    nonce: t.tx.nonce.wrapping_sub(1),
                    ..t.tx
                }
                .sign(&k[from]),
                _ => t.tx.sign(&k[(from + 1) % N]),
            })
        }
        Op::Seal => None,
    }
}

struct Run {
    keys: Vec<Keypair>,
    chain: Ledger,
    probe: Ledger,
    roots: Roots,
    pending: Vec<(SignedTx, bool)>,
    blocks: Vec<(Block, Vec<TxEvents>)>,
}

impl Run {
    fn seal(&mut self) -> Result<(), TestCaseError> {
        let mut verified = Vec::new();
        let mut expected = Vec::new();
        for (t, ok) in self.pending.drain(..) {
            match t.verify() {
                Ok(v) => {
                    verified.push(v);
                    expected.push(ok);
                }
                Err(_) => {
                    prop_assert!(!ok, "a transaction accepted one by one failed verification")
                }
            }
        }
        let (block, outcomes) = self.chain.build_block(verified, 0);
        let got: Vec<bool> = outcomes.iter().map(|(_, r)| r.is_ok()).collect();
        prop_assert_eq!(
            got,
            expected,
            "block outcomes differ from one-by-one outcomes"
        );
        prop_assert_eq!(self.chain.state.hash(), self.probe.state.hash());
        self.probe.height = self.chain.height;
        self.probe.tip = self.chain.tip;
        let events = outcomes
            .into_iter()
            .filter_map(|(tx_id, r)| r.ok().map(|events| TxEvents { tx_id, events }))
            .collect();
        self.blocks.push((block, events));
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if matches!(op, Op::Seal) {
            return self.seal();
        }
        let Some(t) = build(&self.probe, &self.keys, &self.roots, op) else {
            return Ok(());
        };
        let before = self.probe.state.hash();
        let ctx = self.probe.next_ctx();
        let ok = match self.probe.state.apply(&t, &ctx) {
            Ok(_) => {
                if let Op::PostRoot { who, receipts, .. } = op {
                    if let TxBody::PostReceiptRoot { epoch, .. } = t.tx.body {
                        self.roots.push((
                            *who,
                            epoch,
                            leaves(&self.probe, &self.keys, *who, epoch, *receipts),
                        ));
                    }
                }
                true
            }
            Err(e) => {
                prop_assert_eq!(
                    self.probe.state.hash(),
                    before,
                    "rejected ({}) but state changed",
                    e
                );
                false
            }
        };
        if let Err(e) = self.probe.state.check_invariants() {
            return Err(TestCaseError::fail(format!(
                "invariant broken after {op:?}: {e}"
            )));
        }
        self.pending.push((t, ok));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Supply is conserved, channels never over-claimed, rejections change nothing, block
    /// building agrees with one-by-one application, and the stored log rebuilds the state.
    #[test]
    fn random_transactions_keep_invariants_and_replay(ops in proptest::collection::vec(op(), 1..80)) {
        let keys = keys(N);
        let mut g = genesis(&keys, 1000);
        // Claims feed the audit pool and reveals draw fees from it.
        g.params.audit_fee_bps = 500;
        g.params.audit_fee = amt(3);
        let chain = Ledger::from_genesis(&g).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut run = Run { keys, probe: chain.clone(), chain, roots: Vec::new(), pending: Vec::new(), blocks: Vec::new() };
        for op in &ops {
            run.step(op)?;
        }
        run.seal()?;
        prop_assert_eq!(run.chain.state.supply, amt(1000 * N as u128));

        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("p.redb");
        {
            let (store, _) = Store::open(&path, Some(&g)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut replay = Ledger::from_genesis(&g).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (b, ev) in &run.blocks {
                replay.apply_block(b).map_err(|e| TestCaseError::fail(e.to_string()))?;
                store.commit(b, ev, &replay).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(replay.state.hash(), run.chain.state.hash());
        }
        let (store, recovered) = Store::open(&path, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(recovered.state.hash(), run.chain.state.hash());
        prop_assert_eq!(recovered.tip, run.chain.tip);
        store.rebuild_and_check(&recovered).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
