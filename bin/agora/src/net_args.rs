//! Network flags shared by `agora provider` and `agora gateway`.

use std::path::PathBuf;

use agora_net::{Multiaddr, NetConfig};
use anyhow::Context;
use clap::Args;

/// Where a node listens and whom it dials first.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// libp2p listen address.
    #[arg(long = "p2p-listen", default_value = "/ip4/0.0.0.0/tcp/0")]
    pub p2p_listen: Vec<Multiaddr>,
    /// A peer to join through, ending in /p2p/<peer id> (repeatable).
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the local network by multicast DNS.
    #[arg(long)]
    pub mdns: bool,
    /// The node's network key file (made by `agora keys new`); a fresh key per run if absent.
    /// The network key is not the ledger key: offers bind the two by a signature.
    #[arg(long)]
    pub net_key: Option<PathBuf>,
}

impl NetArgs {
    /// The network configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<NetConfig> {
        let key_seed = match &self.net_key {
            Some(p) => crate::keys_cmd::load_key(p)
                .with_context(|| format!("reading network key {}", p.display()))?
                .seed(),
            None => agora_core::Keypair::generate()?.seed(),
        };
        Ok(NetConfig {
            key_seed,
            listen: self.p2p_listen.clone(),
            bootstrap: self.bootstrap.clone(),
            mdns: self.mdns,
            topics: vec![],
        })
    }
}

/// Prints a line on stdout at once (parents such as `agora devnet` read it).
pub fn announce(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}
