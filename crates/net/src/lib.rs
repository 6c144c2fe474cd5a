//! Agora's peer-to-peer layer.
//!
//! - [`node`]: a libp2p node (TCP, Noise, Yamux, identify, Kademlia, mDNS, gossipsub, raw
//!   streams) running on its own task, driven through the [`Node`] handle.
//! - [`protocol`]: the signed messages that travel on it: inference requests, token frames,
//!   receipts and vouchers, with bounded length-prefixed framing.
//!
//! Offers (from `agora-market`) travel on the gossip topic [`offers_topic`]; an inference is
//! one stream on [`protocol::INFERENCE_PROTOCOL`].

pub mod node;
pub mod protocol;

pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use node::{network_keypair, peer_id_of, GossipMessage, NetConfig, NetError, Node};

/// The gossip topic on which providers of chain `chain_id` announce their offers.
pub fn offers_topic(chain_id: u64) -> String {
    format!("agora/offers/v1/{chain_id}")
}

/// The gossip topic of audit outcomes and verifier announcements.
pub fn audits_topic(chain_id: u64) -> String {
    format!("agora/audits/v1/{chain_id}")
}

/// The stream protocol of an inclusion query (payer to provider).
pub fn inclusion_protocol() -> StreamProtocol {
    StreamProtocol::new(protocol::INCLUSION_PROTOCOL)
}

/// The stream protocol of an inference.
pub fn inference_protocol() -> StreamProtocol {
    StreamProtocol::new(protocol::INFERENCE_PROTOCOL)
}
