//! One libp2p node: TCP, Noise, Yamux, identify, Kademlia (bootstrap peers), optional mDNS,
//! gossipsub for offers, and raw streams for inference. The swarm runs on its own task;
//! [`Node`] is a cheap handle that publishes, subscribes and opens streams.

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity;
use libp2p::kad;
use libp2p::mdns;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot};

/// The largest gossip message (an offer is well under this).
pub const MAX_GOSSIP_BYTES: usize = 16 * 1024;
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/kad/1.0.0");

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The 32-byte seed of the node's network key (not its ledger key).
    pub key_seed: [u8; 32],
    /// Where to listen, e.g. `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start; each must end in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN by multicast DNS.
    pub mdns: bool,
    /// Gossip topics to join.
    pub topics: Vec<String>,
}

/// A gossip message that arrived.
#[derive(Debug, Clone)]
pub struct GossipMessage {
    /// Its topic.
    pub topic: String,
    /// The peer that published it (gossipsub signs messages with the publisher's key).
    pub source: Option<PeerId>,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Why the network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The transport or behaviour could not be built.
    #[error("building the swarm: {0}")]
    Build(String),
    /// A listen address was refused.
    #[error("listening on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A bootstrap address without a peer id.
    #[error("bootstrap address {0} must end in /p2p/<peer id>")]
    Bootstrap(Multiaddr),
    /// The swarm task ended.
    #[error("the network task stopped")]
    Stopped,
    /// Publishing failed (for example, no peers yet on the topic).
    #[error("publish: {0}")]
    Publish(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossipsub: gossipsub::Behaviour,
    stream: libp2p_stream::Behaviour,
}

enum Command {
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    Listening {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// A handle to a running node. Dropping every handle stops the swarm.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    control: libp2p_stream::Control,
    commands: mpsc::Sender<Command>,
}

/// The libp2p key for a 32-byte seed.
pub fn network_keypair(seed: [u8; 32]) -> identity::Keypair {
    let mut seed = seed;
    match identity::ed25519::SecretKey::try_from_bytes(&mut seed) {
        Ok(secret) => identity::Keypair::from(identity::ed25519::Keypair::from(secret)),
        // A 32-byte slice is always a valid ed25519 secret; keep a fresh key rather than panic.
        Err(_) => identity::Keypair::generate_ed25519(),
    }
}

/// The peer id of a network key seed.
pub fn peer_id_of(seed: [u8; 32]) -> PeerId {
    network_keypair(seed).public().to_peer_id()
}

impl Node {
    /// Builds the swarm, starts listening and dialing, and spawns its task on the current
    /// Tokio runtime. Returns the handle and the stream of gossip messages.
    pub async fn start(cfg: NetConfig) -> Result<(Node, mpsc::Receiver<GossipMessage>), NetError> {
        let key = network_keypair(cfg.key_seed);
        let peer_id = key.public().to_peer_id();
        let mdns_on = cfg.mdns;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetError::Build(e.to_string()))?
            .with_behaviour(|key| {
                let gossip_cfg = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(500))
                    .validation_mode(ValidationMode::Strict)
                    .max_transmit_size(MAX_GOSSIP_BYTES)
                    .build()
                    .map_err(|e| e.to_string())?;
                let gossipsub =
                    gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_cfg)
                        .map_err(|e| e.to_string())?;
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kad::Config::new(KAD_PROTOCOL),
                );
                // Loopback and LAN nodes have no confirmed external address; serve anyway.
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(
                        mdns::Config::default(),
                        peer_id,
                    )?)
                } else {
                    None
                };
                Ok(Behaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/agora/id/1.0.0".into(),
                        key.public(),
                    )),
                    kad,
                    mdns: Toggle::from(mdns),
                    gossipsub,
                    stream: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(|e| NetError::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();

        for topic in &cfg.topics {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(topic.clone()))
                .map_err(|e| NetError::Build(e.to_string()))?;
        }
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        for addr in &cfg.bootstrap {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(NetError::Bootstrap(addr.clone()));
            };
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "dialing bootstrap peer: {e}");
            }
        }
        if !cfg.bootstrap.is_empty() {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let control = swarm.behaviour().stream.new_control();
        let (commands, rx) = mpsc::channel(256);
        let (gossip_tx, gossip_rx) = mpsc::channel(1024);
        tokio::spawn(run_swarm(swarm, rx, gossip_tx));
        let node = Node {
            peer_id,
            control,
            commands,
        };
        Ok((node, gossip_rx))
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The stream control: open streams to peers and accept them on protocols.
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Publishes `data` on `topic`.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish {
                topic: topic.into(),
                data,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Tells the swarm where `peer` can be dialled (from a signed offer, for example).
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.commands
            .send(Command::AddAddress { peer, addr })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// The addresses the node listens on, each with `/p2p/<peer id>` appended.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        // Listeners bind asynchronously; wait briefly for the first.
        for _ in 0..200 {
            let (reply, rx) = oneshot::channel();
            self.commands
                .send(Command::Listening { reply })
                .await
                .map_err(|_| NetError::Stopped)?;
            let addrs = rx.await.map_err(|_| NetError::Stopped)?;
            if !addrs.is_empty() {
                return Ok(addrs
                    .into_iter()
                    .map(|a| a.with(Protocol::P2p(self.peer_id)))
                    .collect());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(vec![])
    }

    /// Peers with an open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Peers { reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }
}

async fn run_swarm(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    gossip: mpsc::Sender<GossipMessage>,
) {
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break,
                Some(cmd) => handle_command(&mut swarm, cmd),
            },
            event = swarm.select_next_some() => handle_event(&mut swarm, event, &gossip),
        }
    }
    tracing::debug!("network task stopped");
}

fn handle_command(swarm: &mut Swarm<Behaviour>, cmd: Command) {
    match cmd {
        Command::Publish { topic, data, reply } => {
            let r = swarm
                .behaviour_mut()
                .gossipsub
                .publish(IdentTopic::new(topic), data)
                .map(|_| ())
                .map_err(|e| NetError::Publish(e.to_string()));
            let _ = reply.send(r);
        }
        Command::AddAddress { peer, addr } => {
            swarm.add_peer_address(peer, addr.clone());
            swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
        Command::Listening { reply } => {
            let _ = reply.send(swarm.listeners().cloned().collect());
        }
        Command::Peers { reply } => {
            let _ = reply.send(swarm.connected_peers().copied().collect());
        }
    }
}

fn handle_event(
    swarm: &mut Swarm<Behaviour>,
    event: SwarmEvent<BehaviourEvent>,
    gossip: &mpsc::Sender<GossipMessage>,
) {
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
            message,
            ..
        })) => {
            let msg = GossipMessage {
                topic: message.topic.into_string(),
                source: message.source,
                data: message.data,
            };
            // A slow consumer loses gossip rather than stalling the swarm; offers are renewed.
            if gossip.try_send(msg).is_err() {
                tracing::debug!("gossip consumer is behind; dropped a message");
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            for addr in info.listen_addrs {
                swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
            for (peer, addr) in found {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                swarm.behaviour_mut().gossipsub.add_explicit_peer(&peer);
                if let Err(e) = swarm.dial(addr) {
                    tracing::debug!(%peer, "dialing an mDNS peer: {e}");
                }
            }
        }
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::debug!(%address, "listening");
        }
        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
            tracing::debug!(%peer_id, "connected");
        }
        SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
            tracing::debug!(%peer_id, ?cause, "disconnected");
        }
        SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
            tracing::debug!(?peer_id, "dial failed: {error}");
        }
        _ => {}
    }
}
