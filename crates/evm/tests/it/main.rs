//! Integration tests of the settlement contracts through a real Anvil process: each test
//! starts its own Anvil on a free loopback port (killed on drop), deploys the contracts
//! and drives them with `SettlementClient`. Without Anvil installed (scripts/install-evm-tools)
//! they print why and pass; CI installs it.

/// Each rule's attack, refused by the contract.
mod attacks;
/// Audits on chain: selection, commit, reveal, verdicts, false alarms, plants.
mod audits;
/// Starting a chain, deploying, funding accounts.
mod common;
/// Random operation sequences keep every token accounted for.
mod conservation;
/// Material demands, Withheld verdicts and inclusion challenges.
mod disputes;
/// Faults of the chain: Anvil restarted from its state, reorgs, a failing node.
mod faults;
/// Gas per operation, printed for docs/settlement.md.
mod gas;
/// RPC failures and lost answers are retried without a second transaction.
mod retry;
/// The honest flows: stake and unbonding, channels and vouchers, roots, verifiers.
mod scenarios;
