//! The Agora settlement ledger: a deterministic state machine over signed transactions, a
//! durable hash-chained block log, and the sequencer's HTTP API with a typed client.
//!
//! - [`State`] holds accounts, stake, payment channels, receipt roots and verdicts;
//!   [`State::apply`] is the whole rulebook, pure and deterministic (no I/O, no clock, no
//!   randomness). A rejected transaction returns a [`TxError`] naming the reason and changes
//!   nothing.
//! - [`Ledger`] chains blocks over the state; [`Store`] commits each block atomically and
//!   durably to redb and rebuilds the state from the log on restart.
//! - [`server`] is the embedded sequencer behind `agora ledger serve`; [`client::Client`] talks
//!   to it.
//!
//! ```
//! use agora_core::{Amount, Keypair};
//! use agora_ledger::{Allocation, Genesis, Ledger, Params, Tx, TxBody};
//!
//! let (alice, bob) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
//! let genesis = Genesis {
//!     chain_id: 7,
//!     sequencer: alice.account(),
//!     params: Params::default(),
//!     allocations: vec![Allocation { account: alice.account(), amount: Amount::new(100) }],
//! };
//! let mut ledger = Ledger::from_genesis(&genesis).unwrap();
//! let tx = Tx { chain_id: 7, from: alice.account(), nonce: 0,
//!               body: TxBody::Transfer { to: bob.account(), amount: Amount::new(30) } }
//!     .sign(&alice);
//! let ctx = ledger.next_ctx();
//! ledger.state.apply(&tx, &ctx).unwrap();
//! assert_eq!(ledger.state.account(&bob.account()).unwrap().balance, Amount::new(30));
//! // Replaying the same transaction is refused and changes nothing.
//! let before = ledger.state.hash();
//! assert!(ledger.state.apply(&tx, &ctx).is_err());
//! assert_eq!(ledger.state.hash(), before);
//! ```

pub mod api;
pub mod audit;
pub mod block;
pub mod client;
pub mod error;
pub mod genesis;
mod inclusion;
pub mod metrics;
pub mod server;
pub mod state;
pub mod store;
pub mod tx;

pub use audit::{AuditPlan, Windows};
pub use block::{Block, BlockHeader, Ledger};
pub use error::{
    BlockError, ClientError, GenesisError, InvariantError, ServeError, StoreError, TxError,
};
pub use genesis::{Allocation, Genesis, Params};
pub use state::{
    leaf_key, Account, Alarm, BlockCtx, Challenge, Channel, Demand, Event, LeafAudit, Plant, State,
    FULL_AUDIT_PPM,
};
pub use store::{BlockEvents, Store, TxEvents};
pub use tx::{
    audit_commitment, plant_commitment, plant_confirmation, sign_plant_confirmation, Fault,
    SignedTx, Tx, TxBody, Verdict, VerifiedTx, Voucher,
};
