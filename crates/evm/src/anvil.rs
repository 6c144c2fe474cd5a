//! A local Anvil node for tests and devnets: started on a free loopback port, killed on drop.

use crate::error::EvmError;
use alloy::signers::local::PrivateKeySigner;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Anvil binary is: `$AGORA_ANVIL`, else `anvil` on `PATH`, else the copy
/// `scripts/install-evm-tools` puts under `~/.cache/agora/npm` (or `$AGORA_NPM_PREFIX`).
pub fn find_anvil() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AGORA_ANVIL") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("anvil");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let prefix = std::env::var_os("AGORA_NPM_PREFIX")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agora/npm")))?;
    let platform = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "linux-amd64",
        ("linux", "aarch64") => "linux-arm64",
        ("macos", "x86_64") => "darwin-amd64",
        ("macos", "aarch64") => "darwin-arm64",
        _ => return None,
    };
    let p = prefix.join(format!(
        "node_modules/@foundry-rs/anvil-{platform}/bin/anvil"
    ));
    p.is_file().then_some(p)
}

/// How to start Anvil.
#[derive(Debug, Clone, Default)]
pub struct AnvilConfig {
    /// Chain id.
    pub chain_id: u64,
    /// Port on 127.0.0.1; 0 lets the OS pick one.
    pub port: u16,
    /// A state file: loaded at start if it exists, written when Anvil is stopped
    /// ([`Anvil::stop`]), so a restart from it continues the same chain.
    pub state: Option<PathBuf>,
    /// Mine a block every this long, with or without transactions (interval mining), so a
    /// chain whose epochs are counted in blocks advances with time alone. `None`: one block
    /// per transaction, and none without (so is a zero duration).
    pub block_time: Option<Duration>,
}

/// A running Anvil process.
pub struct Anvil {
    child: Child,
    url: String,
    port: u16,
    keys: Vec<PrivateKeySigner>,
}

impl Anvil {
    /// Starts `binary` on 127.0.0.1 with a port the OS picks, chain id `chain_id`, one block
    /// per transaction, and waits until it listens.
    pub fn start(binary: &std::path::Path, chain_id: u64) -> Result<Anvil, EvmError> {
        Self::start_with(
            binary,
            &AnvilConfig {
                chain_id,
                ..AnvilConfig::default()
            },
        )
    }

    /// [`Anvil::start`] on a chosen port, optionally from (and to) a state file.
    pub fn start_with(binary: &std::path::Path, config: &AnvilConfig) -> Result<Anvil, EvmError> {
        let mut cmd = Command::new(binary);
        cmd.args(["--host", "127.0.0.1", "--accounts", "10"])
            .args(["--port", &config.port.to_string()])
            .args(["--chain-id", &config.chain_id.to_string()]);
        if let Some(state) = &config.state {
            cmd.arg("--state").arg(state);
        }
        if let Some(every) = config.block_time.filter(|d| !d.is_zero()) {
            cmd.args(["--block-time", &every.as_secs_f64().to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| EvmError::AnvilStart {
                what: "spawn",
                source,
            })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EvmError::AnvilOutput("a stdout"));
        };
        // The kill on drop covers every early return from here on.
        let mut anvil = Anvil {
            child,
            url: String::new(),
            port: 0,
            keys: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut in_keys = false;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.map_err(|source| EvmError::AnvilStart {
                what: "read stdout",
                source,
            })?;
            if line.starts_with("Private Keys") {
                in_keys = true;
            } else if in_keys {
                if let Some(hex) = line.split_whitespace().nth(1) {
                    if let Ok(k) = hex.parse::<PrivateKeySigner>() {
                        anvil.keys.push(k);
                    }
                }
                if line.starts_with("Wallet") {
                    in_keys = false;
                }
            }
            if let Some(addr) = line.strip_prefix("Listening on ") {
                let addr = addr.trim();
                anvil.url = format!("http://{addr}");
                anvil.port = addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                break;
            }
            if Instant::now() > deadline {
                return Err(EvmError::AnvilOutput("its address in 30 s"));
            }
        }
        if anvil.url.is_empty() {
            return Err(EvmError::AnvilOutput("its address before exiting"));
        }
        if anvil.keys.is_empty() {
            return Err(EvmError::AnvilOutput("its dev keys"));
        }
        // Keep draining stdout so Anvil never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(anvil)
    }

    /// The HTTP RPC endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops Anvil the way an operator would (SIGTERM, so it writes its state file if it has
    /// one) and waits for it to exit. Killed outright if the signal cannot be sent.
    pub fn stop(&mut self) -> Result<(), EvmError> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            let _ = self.child.kill();
        }
        self.child.wait().map_err(|source| EvmError::AnvilStart {
            what: "wait for exit",
            source,
        })?;
        Ok(())
    }

    /// Anvil's funded dev keys (10 of them, 10,000 ETH each).
    pub fn keys(&self) -> &[PrivateKeySigner] {
        &self.keys
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
