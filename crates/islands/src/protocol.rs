//! The wire protocol between islands and the coordinator, on one libp2p stream protocol:
//! one signed request, one response, per stream. Requests name the run (so nothing is
//! replayed across runs) and the round (so nothing is replayed across rounds); a commit or
//! reveal for another round is refused, and a repeated one changes nothing.

use agora_core::{AccountId, Keypair, Signature};
use borsh::{BorshDeserialize, BorshSerialize};

/// The stream protocol.
pub const PROTOCOL: &str = "/agora/diloco/1";
/// Largest message: a full f32 state of a model of up to ~60M parameters with its momentum.
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;
const REQUEST_DOMAIN: &[u8] = b"agora/diloco/request/v1";

/// What an island asks.
#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub enum Request {
    /// Join as `island`: the answer is the run's spec.
    Join {
        /// The island number (it picks its data).
        island: u64,
    },
    /// The current global state (content-addressed: the answer carries its hash). The blob
    /// is left out when the island already `have`s that state.
    State {
        /// The state the island holds.
        have: Option<[u8; 32]>,
    },
    /// Commit to a contribution for `round`, trained from `base`.
    Commit {
        /// The island.
        island: u64,
        /// The round.
        round: u64,
        /// The state it trained from.
        base: [u8; 32],
        /// blake3 of the encoded delta.
        commitment: [u8; 32],
    },
    /// Reveal the contribution (borsh of `agora_diloco::Contribution`).
    Reveal {
        /// The island.
        island: u64,
        /// The round.
        round: u64,
        /// The contribution.
        contribution: Vec<u8>,
    },
    /// Where round `round` stands.
    Status {
        /// The round.
        round: u64,
    },
    /// A contribution of a closed round, by its commitment.
    Blob {
        /// The commitment.
        commitment: [u8; 32],
    },
}

/// A request with the run it is for and the island's signature.
#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct SignedRequest {
    /// The run id (hash of its spec).
    pub run: [u8; 32],
    /// The request.
    pub request: Request,
    /// The island's key.
    pub signer: AccountId,
    /// Over `REQUEST_DOMAIN || borsh(run, request)`.
    pub sig: Signature,
}

impl SignedRequest {
    /// Signs `request` for `run`.
    pub fn new(run: [u8; 32], request: Request, key: &Keypair) -> SignedRequest {
        let sig = key.sign(REQUEST_DOMAIN, &(run, &request));
        SignedRequest {
            run,
            request,
            signer: key.account(),
            sig,
        }
    }

    /// Whether the signature holds.
    pub fn verify(&self) -> bool {
        self.signer
            .verify(REQUEST_DOMAIN, &(self.run, &self.request), &self.sig)
            .is_ok()
    }
}

/// Where a round stands.
#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub enum RoundStatus {
    /// Taking commitments.
    Committing,
    /// Commitments closed; taking reveals from the committed islands.
    Revealing {
        /// The islands that committed.
        committed: Vec<u64>,
    },
    /// Closed: the accepted contributions (island, commitment) in island order and the
    /// resulting state's hash.
    Closed {
        /// Accepted.
        accepted: Vec<(u64, [u8; 32])>,
        /// The next state's hash.
        next: [u8; 32],
    },
    /// The run is further on, or over: fetch the state.
    Gone {
        /// The coordinator's current round.
        current: u64,
        /// Whether the run is over.
        finished: bool,
    },
}

/// The coordinator's answer.
#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub enum Response {
    /// The run's spec, as JSON.
    Spec {
        /// [`crate::RunSpec`] as JSON.
        json: String,
    },
    /// The current state.
    State {
        /// Rounds completed.
        round: u64,
        /// blake3 of `blob`.
        hash: [u8; 32],
        /// The state's bytes (empty when the island already has this state).
        blob: Vec<u8>,
        /// Whether training is over.
        finished: bool,
    },
    /// Taken.
    Ack,
    /// Not taken, and why.
    Refused {
        /// Why.
        reason: String,
    },
    /// A round's status.
    Status(RoundStatus),
    /// A contribution's bytes.
    Blob(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_run_and_the_request() {
        let key = Keypair::from_seed([3; 32]);
        let r = SignedRequest::new([1; 32], Request::Status { round: 2 }, &key);
        assert!(r.verify());
        let mut other_run = r.clone();
        other_run.run = [2; 32];
        assert!(!other_run.verify());
        let mut other_round = r.clone();
        other_round.request = Request::Status { round: 3 };
        assert!(!other_round.verify());
        let mut other_signer = r;
        other_signer.signer = Keypair::from_seed([4; 32]).account();
        assert!(!other_signer.verify());
    }
}
