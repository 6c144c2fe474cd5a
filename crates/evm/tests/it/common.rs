use agora_evm::anvil::{find_anvil, Anvil};
use agora_evm::{deploy, Deployment, EvmError, Params, SettlementClient};
use alloy::signers::local::PrivateKeySigner;

pub const CHAIN_ID: u64 = 31_337;
/// Test epochs are 20 blocks: long enough that one test step does not cross a boundary
/// by accident, short enough to mine through unbonding in milliseconds.
pub const EPOCH_BLOCKS: u64 = 20;

pub struct Chain {
    pub anvil: Anvil,
    pub deployment: Deployment,
    /// The deployer: mints the test token.
    pub admin: SettlementClient,
}

impl Chain {
    /// A client for Anvil's dev key `i` (1..10; 0 is the admin).
    pub async fn user(&self, i: usize) -> anyhow::Result<SettlementClient> {
        Ok(SettlementClient::connect(
            self.anvil.url(),
            self.anvil.keys()[i].clone(),
            self.deployment.clone(),
        )
        .await?)
    }

    /// A client for key `i` holding `tokens` test tokens.
    pub async fn funded(&self, i: usize, tokens: u128) -> anyhow::Result<SettlementClient> {
        let c = self.user(i).await?;
        if tokens > 0 {
            self.admin.mint(c.address(), tokens).await?;
        }
        Ok(c)
    }

    pub fn key(&self, i: usize) -> PrivateKeySigner {
        self.anvil.keys()[i].clone()
    }

    /// The epoch the next mined transaction lands in.
    pub async fn next_epoch(&self) -> anyhow::Result<u64> {
        use alloy::providers::Provider;
        let latest = self.admin.provider().get_block_number().await?;
        Ok((latest + 1 - self.deployment.start_block) / self.deployment.params.epoch_blocks)
    }

    /// Mines to the first block of `epoch`, so the next several transactions land in it.
    pub async fn at_epoch(&self, epoch: u64) -> anyhow::Result<()> {
        self.admin.mine_to_epoch(epoch).await?;
        Ok(())
    }
}

/// Starts Anvil and deploys with `params`; `None` (printing why) when Anvil is not installed.
pub async fn start(params: Params) -> anyhow::Result<Option<Chain>> {
    let Some(bin) = find_anvil() else {
        eprintln!(
            "SKIP: anvil not found (set AGORA_ANVIL, put anvil on PATH, or run scripts/install-evm-tools)"
        );
        return Ok(None);
    };
    let anvil = Anvil::start(&bin, CHAIN_ID)?;
    let deployer = anvil.keys()[0].clone();
    let deployment = deploy(anvil.url(), deployer.clone(), params).await?;
    let admin = SettlementClient::connect(anvil.url(), deployer, deployment.clone()).await?;
    Ok(Some(Chain {
        anvil,
        deployment,
        admin,
    }))
}

pub fn params() -> Params {
    Params::devnet(EPOCH_BLOCKS)
}

/// Starts a chain or returns from the test (Anvil missing).
#[macro_export]
macro_rules! chain_or_skip {
    ($params:expr) => {
        match $crate::common::start($params).await? {
            Some(c) => c,
            None => return Ok(()),
        }
    };
}

/// The settlement contract's error name, if `r` is its refusal.
pub fn refusal<T: std::fmt::Debug>(r: Result<T, EvmError>) -> String {
    match r {
        Err(e) => match e.settlement_refusal() {
            Some(s) => format!("{s:?}"),
            None => format!("not a settlement refusal: {e}"),
        },
        Ok(v) => format!("accepted: {v:?}"),
    }
}

/// Asserts `r` is the settlement contract refusing with error `name`.
#[macro_export]
macro_rules! assert_refused {
    ($r:expr, $name:literal) => {{
        let got = $crate::common::refusal($r);
        assert!(
            got.starts_with(concat!($name, "(")),
            "expected the contract to refuse with {}, got {}",
            $name,
            got
        );
    }};
}
