//! API keys, stored hashed in a redb file.
//!
//! A key's secret is `sk-agora-` followed by 48 hex characters (24 random bytes). Only
//! `blake3(secret)` is stored; the secret is shown once, by [`KeyStore::create`]. Each key has
//! its own ledger account whose ed25519 seed the gateway holds (custodial: app developers
//! never see a wallet), so the file is created readable by its owner only.
//!
//! One process owns the file: the running gateway, or `agora gateway keys ...` when the
//! gateway is stopped (redb locks the file; a second opener gets [`KeyError::Locked`]).
//! Every key is also held in memory, so [`KeyStore::authenticate`] is one hash and one map
//! lookup; writes go to disk first and then to memory, so a revocation takes effect for the
//! very next request.

use crate::backend::Caller;
use agora_core::{AccountId, Amount, Keypair};
use borsh::{BorshDeserialize, BorshSerialize};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "sk-agora-";

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");
/// Key id -> borsh [`KeyPolicy`] (absent: no limits beyond the gateway's).
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("key_policies");
/// Key id -> what it has spent, base units, u128 little-endian (its descendants' spend
/// included).
pub(crate) const SPEND: TableDefinition<&str, &[u8]> = TableDefinition::new("key_spend");
/// Receipt id (hex) -> borsh (paying key id, the signed receipt's JSON document).
const RECEIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("receipts");

/// Deepest chain of child keys (a root key is depth 0).
pub const MAX_KEY_DEPTH: usize = 8;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file is open in another process (is the gateway running?).
    #[error("the key store is open in another process (stop the gateway, or use its process)")]
    Locked,
    /// The embedded database failed.
    #[error("key store database: {0}")]
    Db(String),
    /// A stored record did not decode.
    #[error("corrupt key record {id}: {detail}")]
    Corrupt {
        /// Which record.
        id: String,
        /// The decoder's message.
        detail: String,
    },
    /// The secret matches no key.
    #[error("unknown API key")]
    UnknownSecret,
    /// The secret's key was revoked.
    #[error("API key {0} was revoked")]
    Revoked(String),
    /// No key has this id.
    #[error("no API key with id {0}")]
    UnknownId(String),
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// The key store's lock was poisoned by a panic elsewhere.
    #[error("key store lock poisoned")]
    Poisoned,
    /// The key (or a key above it) has expired.
    #[error("API key {0} has expired")]
    Expired(String),
    /// A child key asked for more than its parent may give.
    #[error("{message}")]
    Refused {
        /// The request field at fault.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl KeyError {
    fn db(e: impl fmt::Display) -> KeyError {
        KeyError::Db(e.to_string())
    }
}

/// The account seed a record carries; prints as `<redacted>` and is never serialized.
#[derive(Clone, Copy, Default, PartialEq)]
struct Seed(Option<[u8; 32]>);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a key may do beyond the gateway's defaults. A child key (minted by another key with
/// `POST /v1/keys`) pays from its parent's account, and its spend counts against every key
/// above it, so a parent's budget bounds the parent and all its descendants together.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub struct KeyPolicy {
    /// The key that minted this one (`None`: made by the operator).
    pub parent: Option<String>,
    /// The most this key (with its descendants) may spend, base units (`None`: no budget;
    /// the ledger account's balance still bounds it).
    pub budget: Option<Amount>,
    /// Requests per minute (a token bucket of this size refilled over a minute); `None`: the
    /// gateway's per-key rate.
    pub requests_per_minute: Option<u32>,
    /// Unix milliseconds after which the key no longer authenticates.
    pub expires_ms: Option<u64>,
    /// The models (names or ModelIds, as requests give them) the key may use; `None`: any.
    pub models: Option<Vec<String>>,
}

/// One API key as operators see it: no secret, and the account seed never serializes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    /// `key_` + the first 12 hex characters of `blake3(secret)`; safe to show and log.
    pub id: String,
    /// The operator's note (who it is for).
    pub label: String,
    /// The ledger account that pays for this key's requests; fund it to give credit.
    pub account: AccountId,
    /// Unix milliseconds when it was created.
    pub created_ms: u64,
    /// Revoked keys stay listed but no longer authenticate.
    pub revoked: bool,
    /// Budget, rate, expiry, models and parent.
    #[serde(default)]
    pub policy: KeyPolicy,
    /// The account's seed: present on records from [`KeyStore::create`] and
    /// [`KeyStore::authenticate`], cleared by [`KeyStore::list`], never serialized.
    #[serde(skip)]
    account_seed: Seed,
}

/// The on-disk form (borsh): the record plus the secret's full hash and the account seed.
#[derive(BorshSerialize, BorshDeserialize)]
struct StoredKey {
    id: String,
    label: String,
    account: AccountId,
    created_ms: u64,
    revoked: bool,
    secret_hash: [u8; 32],
    seed: [u8; 32],
}

impl StoredKey {
    fn record(&self, policy: Option<&KeyPolicy>) -> KeyRecord {
        KeyRecord {
            id: self.id.clone(),
            label: self.label.clone(),
            account: self.account,
            created_ms: self.created_ms,
            revoked: self.revoked,
            policy: policy.cloned().unwrap_or_default(),
            account_seed: Seed(Some(self.seed)),
        }
    }
}

/// What a key has spent and holds reserved, base units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SpendState {
    /// Settled charges (durable).
    pub(crate) spent: u128,
    /// Reserved by answers in flight (memory only: an answer dies with the gateway).
    pub(crate) reserved: u128,
}

/// A key's spend and limits, as `GET /v1/key` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// Settled charges of the key and its descendants, base units.
    pub spent: u128,
    /// Reserved by answers in flight.
    pub reserved: u128,
    /// What the key may still reserve: the least over it and its ancestors of budget minus
    /// spent minus reserved (`None`: no budget anywhere above it).
    pub remaining: Option<u128>,
}

/// What a key asks for when it mints a child (`POST /v1/keys`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildRequest {
    /// A note.
    pub label: String,
    /// Required: at most the parent's remaining budget.
    pub budget: u128,
    /// At most the parent's rate (the parent's when absent).
    pub requests_per_minute: Option<u32>,
    /// No later than the parent's expiry (the parent's when absent).
    pub expires_ms: Option<u64>,
    /// A subset of the parent's models (the parent's when absent).
    pub models: Option<Vec<String>>,
}

fn id_of(hash: &[u8; 32]) -> String {
    format!("key_{}", hex::encode(&hash[..6]))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// API keys, hashed on disk and mirrored in memory.
pub struct KeyStore {
    pub(crate) db: Database,
    /// By id.
    keys: RwLock<HashMap<String, StoredKey>>,
    /// By id; keys without one have the default policy.
    policies: RwLock<HashMap<String, KeyPolicy>>,
    /// By id. One lock for every key's spend, so a reservation checks and takes from a key
    /// and all its ancestors at once: concurrent answers can never overspend a budget.
    pub(crate) spend: std::sync::Mutex<HashMap<String, SpendState>>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore").finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Opens the key file at `path`, creating it (owner-only permissions) if missing.
    pub fn open(path: &Path) -> Result<KeyStore, KeyError> {
        let existed = path.exists();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => KeyError::Locked,
            e => KeyError::db(e),
        })?;
        if !existed {
            restrict_permissions(path);
        }
        let w = db.begin_write().map_err(KeyError::db)?;
        for table in [KEYS, POLICIES, SPEND, RECEIPTS] {
            w.open_table(table).map_err(KeyError::db)?;
        }
        w.commit().map_err(KeyError::db)?;

        let mut keys = HashMap::new();
        let mut policies = HashMap::new();
        let mut spend = HashMap::new();
        {
            let r = db.begin_read().map_err(KeyError::db)?;
            let t = r.open_table(POLICIES).map_err(KeyError::db)?;
            for entry in t.iter().map_err(KeyError::db)? {
                let (k, v) = entry.map_err(KeyError::db)?;
                let id = k.value().to_string();
                let p: KeyPolicy = borsh::from_slice(v.value()).map_err(|e| KeyError::Corrupt {
                    id: id.clone(),
                    detail: e.to_string(),
                })?;
                policies.insert(id, p);
            }
            let t = r.open_table(SPEND).map_err(KeyError::db)?;
            for entry in t.iter().map_err(KeyError::db)? {
                let (k, v) = entry.map_err(KeyError::db)?;
                let id = k.value().to_string();
                let bytes: [u8; 16] = v.value().try_into().map_err(|_| KeyError::Corrupt {
                    id: id.clone(),
                    detail: "spend is not 16 bytes".into(),
                })?;
                spend.insert(
                    id,
                    SpendState {
                        spent: u128::from_le_bytes(bytes),
                        reserved: 0,
                    },
                );
            }
            let t = r.open_table(KEYS).map_err(KeyError::db)?;
            for entry in t.iter().map_err(KeyError::db)? {
                let (k, v) = entry.map_err(KeyError::db)?;
                let id = k.value().to_string();
                let stored: StoredKey =
                    borsh::from_slice(v.value()).map_err(|e| KeyError::Corrupt {
                        id: id.clone(),
                        detail: e.to_string(),
                    })?;
                keys.insert(id, stored);
            }
        }
        Ok(KeyStore {
            db,
            keys: RwLock::new(keys),
            policies: RwLock::new(policies),
            spend: std::sync::Mutex::new(spend),
        })
    }

    fn write(&self, stored: &StoredKey, policy: Option<&KeyPolicy>) -> Result<(), KeyError> {
        let w = self.db.begin_write().map_err(KeyError::db)?;
        {
            let mut t = w.open_table(KEYS).map_err(KeyError::db)?;
            t.insert(
                stored.id.as_str(),
                borsh::to_vec(stored).map_err(KeyError::db)?.as_slice(),
            )
            .map_err(KeyError::db)?;
            if let Some(p) = policy {
                let mut t = w.open_table(POLICIES).map_err(KeyError::db)?;
                t.insert(
                    stored.id.as_str(),
                    borsh::to_vec(p).map_err(KeyError::db)?.as_slice(),
                )
                .map_err(KeyError::db)?;
            }
        }
        w.commit().map_err(KeyError::db)
    }

    /// New key with a fresh ledger account (random ed25519 seed). Returns the secret ONCE
    /// (`sk-agora-` + 48 hex characters) and the record; only its hash is stored.
    pub fn create(&self, label: &str) -> Result<(String, KeyRecord), KeyError> {
        self.create_with(label, KeyPolicy::default())
    }

    /// [`KeyStore::create`] with a policy (budget, rate, expiry, models); its `parent` is
    /// ignored (an operator's key has none).
    pub fn create_with(
        &self,
        label: &str,
        policy: KeyPolicy,
    ) -> Result<(String, KeyRecord), KeyError> {
        let kp = Keypair::generate().map_err(|e| KeyError::Random(e.to_string()))?;
        self.insert_new(
            label,
            kp.account(),
            kp.seed(),
            KeyPolicy {
                parent: None,
                ..policy
            },
        )
    }

    fn insert_new(
        &self,
        label: &str,
        account: AccountId,
        seed: [u8; 32],
        policy: KeyPolicy,
    ) -> Result<(String, KeyRecord), KeyError> {
        let mut keys = self.keys.write().map_err(|_| KeyError::Poisoned)?;
        let (secret, hash, id) = loop {
            let mut raw = [0u8; 24];
            getrandom::fill(&mut raw).map_err(|e| KeyError::Random(e.to_string()))?;
            let secret = format!("{SECRET_PREFIX}{}", hex::encode(raw));
            let hash = *blake3::hash(secret.as_bytes()).as_bytes();
            let id = id_of(&hash);
            // 48-bit ids: a collision is astronomically unlikely, but never overwrite a key.
            if !keys.contains_key(&id) {
                break (secret, hash, id);
            }
        };
        let stored = StoredKey {
            id: id.clone(),
            label: label.to_string(),
            account,
            created_ms: now_ms(),
            revoked: false,
            secret_hash: hash,
            seed,
        };
        let policy = (policy != KeyPolicy::default()).then_some(policy);
        self.write(&stored, policy.as_ref())?;
        let record = stored.record(policy.as_ref());
        keys.insert(id.clone(), stored);
        if let Some(p) = policy {
            self.policies
                .write()
                .map_err(|_| KeyError::Poisoned)?
                .insert(id, p);
        }
        Ok((secret, record))
    }

    /// The policy of key `id` (the default for keys without one).
    pub fn policy(&self, id: &str) -> KeyPolicy {
        self.policies
            .read()
            .ok()
            .and_then(|p| p.get(id).cloned())
            .unwrap_or_default()
    }

    /// `id` then its ancestors up to the root key (at most [`MAX_KEY_DEPTH`] + 1 ids).
    pub fn chain(&self, id: &str) -> Vec<String> {
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        let mut out = vec![id.to_string()];
        let mut cur = id;
        while let Some(parent) = policies.get(cur).and_then(|p| p.parent.as_deref()) {
            if out.len() > MAX_KEY_DEPTH || out.iter().any(|x| x == parent) {
                break;
            }
            out.push(parent.to_string());
            cur = parent;
        }
        out
    }

    /// What key `id` has spent and may still spend.
    pub fn usage(&self, id: &str) -> KeyUsage {
        let chain = self.chain(id);
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        let spend = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        let own = spend.get(id).copied().unwrap_or_default();
        let mut remaining: Option<u128> = None;
        for k in &chain {
            if let Some(b) = policies.get(k).and_then(|p| p.budget) {
                let s = spend.get(k).copied().unwrap_or_default();
                let left = b.units().saturating_sub(s.spent).saturating_sub(s.reserved);
                remaining = Some(remaining.map_or(left, |r| r.min(left)));
            }
        }
        KeyUsage {
            spent: own.spent,
            reserved: own.reserved,
            remaining,
        }
    }

    /// Mints a child of `parent` (`POST /v1/keys`): it pays from the parent's account, its
    /// spend counts against the parent (and the parent's ancestors), and it may have no more
    /// than the parent: a budget within the parent's remaining one, a rate, expiry and model
    /// list no wider than the parent's.
    pub fn create_child(
        &self,
        parent: &KeyRecord,
        req: ChildRequest,
    ) -> Result<(String, KeyRecord), KeyError> {
        let refuse = |param: &'static str, message: String| KeyError::Refused { param, message };
        let chain = self.chain(&parent.id);
        if chain.len() > MAX_KEY_DEPTH {
            return Err(refuse(
                "budget",
                format!("Keys may be nested at most {MAX_KEY_DEPTH} deep."),
            ));
        }
        if req.budget == 0 {
            return Err(refuse(
                "budget",
                "A child key needs a budget above 0.".into(),
            ));
        }
        if let Some(left) = self.usage(&parent.id).remaining {
            if req.budget > left {
                return Err(refuse(
                    "budget",
                    format!(
                        "The budget {} is more than this key has left ({left}).",
                        req.budget
                    ),
                ));
            }
        }
        let pp = self.policy(&parent.id);
        let requests_per_minute = match (req.requests_per_minute, pp.requests_per_minute) {
            (Some(0), _) => {
                return Err(refuse(
                    "requests_per_minute",
                    "requests_per_minute must be at least 1.".into(),
                ))
            }
            (Some(c), Some(p)) if c > p => {
                return Err(refuse(
                    "requests_per_minute",
                    format!("requests_per_minute {c} is above this key's own {p}."),
                ))
            }
            (c, p) => c.or(p),
        };
        let expires_ms = match (req.expires_ms, pp.expires_ms) {
            (Some(c), Some(p)) if c > p => {
                return Err(refuse(
                    "expires_at",
                    "A child key cannot outlive the key that mints it.".into(),
                ))
            }
            (Some(c), _) if c <= now_ms() => {
                return Err(refuse("expires_at", "expires_at is in the past.".into()))
            }
            (c, p) => c.or(p),
        };
        let models = match (req.models, pp.models) {
            (Some(c), Some(p)) => {
                if let Some(m) = c.iter().find(|m| !p.contains(m)) {
                    return Err(refuse(
                        "models",
                        format!("The model `{m}` is not among this key's models."),
                    ));
                }
                Some(c)
            }
            (c, p) => c.or(p),
        };
        let seed = self
            .keys
            .read()
            .map_err(|_| KeyError::Poisoned)?
            .get(&parent.id)
            .map(|k| k.seed)
            .ok_or_else(|| KeyError::UnknownId(parent.id.clone()))?;
        self.insert_new(
            &req.label,
            parent.account,
            seed,
            KeyPolicy {
                parent: Some(parent.id.clone()),
                budget: Some(Amount::new(req.budget)),
                requests_per_minute,
                expires_ms,
                models,
            },
        )
    }

    /// Stores a signed receipt (its JSON document) paid by key `key_id`.
    pub fn save_receipt(&self, key_id: &str, receipt_id: &str, doc: &str) -> Result<(), KeyError> {
        let w = self.db.begin_write().map_err(KeyError::db)?;
        {
            let mut t = w.open_table(RECEIPTS).map_err(KeyError::db)?;
            let v = borsh::to_vec(&(key_id.to_string(), doc.to_string())).map_err(KeyError::db)?;
            t.insert(receipt_id, v.as_slice()).map_err(KeyError::db)?;
        }
        w.commit().map_err(KeyError::db)
    }

    /// A stored receipt: the paying key's id and the JSON document.
    pub fn receipt(&self, receipt_id: &str) -> Result<Option<(String, String)>, KeyError> {
        let r = self.db.begin_read().map_err(KeyError::db)?;
        let t = r.open_table(RECEIPTS).map_err(KeyError::db)?;
        let Some(v) = t.get(receipt_id).map_err(KeyError::db)? else {
            return Ok(None);
        };
        borsh::from_slice(v.value())
            .map(Some)
            .map_err(|e| KeyError::Corrupt {
                id: receipt_id.to_string(),
                detail: e.to_string(),
            })
    }

    /// The live key whose secret is `secret` (looked up by its BLAKE3 hash). A key whose
    /// ancestor is revoked or expired is refused too.
    pub fn authenticate(&self, secret: &str) -> Result<KeyRecord, KeyError> {
        let hash = *blake3::hash(secret.as_bytes()).as_bytes();
        let chain = self.chain(&id_of(&hash));
        let keys = self.keys.read().map_err(|_| KeyError::Poisoned)?;
        let policies = self.policies.read().map_err(|_| KeyError::Poisoned)?;
        match keys.get(&id_of(&hash)) {
            Some(k) if k.secret_hash == hash => {
                let now = now_ms();
                for id in &chain {
                    if keys.get(id).is_some_and(|a| a.revoked) {
                        return Err(KeyError::Revoked(k.id.clone()));
                    }
                    if policies
                        .get(id)
                        .and_then(|p| p.expires_ms)
                        .is_some_and(|e| e <= now)
                    {
                        return Err(KeyError::Expired(k.id.clone()));
                    }
                }
                Ok(k.record(policies.get(&k.id)))
            }
            _ => Err(KeyError::UnknownSecret),
        }
    }

    /// Every key, revoked ones included, oldest first (ties by id); seeds cleared.
    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let keys = self.keys.read().map_err(|_| KeyError::Poisoned)?;
        let policies = self.policies.read().map_err(|_| KeyError::Poisoned)?;
        let mut out: Vec<KeyRecord> = keys
            .values()
            .map(|k| KeyRecord {
                account_seed: Seed(None),
                ..k.record(policies.get(&k.id))
            })
            .collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// Revokes the key `id` (durably, then in memory: the next request with it gets 401).
    /// Revoking a revoked key is not an error.
    pub fn revoke(&self, id: &str) -> Result<KeyRecord, KeyError> {
        let mut keys = self.keys.write().map_err(|_| KeyError::Poisoned)?;
        let Some(k) = keys.get_mut(id) else {
            return Err(KeyError::UnknownId(id.to_string()));
        };
        if !k.revoked {
            let stored = StoredKey {
                revoked: true,
                id: k.id.clone(),
                label: k.label.clone(),
                account: k.account,
                created_ms: k.created_ms,
                secret_hash: k.secret_hash,
                seed: k.seed,
            };
            self.write(&stored, None)?;
            k.revoked = true;
        }
        Ok(KeyRecord {
            account_seed: Seed(None),
            ..k.record(Some(&self.policy(id)))
        })
    }

    /// The seed of the account `account` pays from, if a key of this store (revoked or not)
    /// pays from it: the broker signs the inclusion challenges of receipts it paid before a
    /// restart with it.
    pub fn seed_of(&self, account: &AccountId) -> Option<[u8; 32]> {
        let keys = self.keys.read().ok()?;
        keys.values()
            .find(|k| k.account == *account)
            .map(|k| k.seed)
    }

    /// Who pays for requests made with `record`'s key: its id, account and account seed.
    /// The seed comes from the store (records from [`KeyStore::list`] carry none). A record
    /// whose seed is unknown, or does not make its account, is an error: never a default
    /// seed, whose account anyone could sign for.
    pub fn caller(&self, record: &KeyRecord) -> Result<Caller, KeyError> {
        let seed = self
            .keys
            .read()
            .ok()
            .and_then(|keys| keys.get(&record.id).map(|k| k.seed))
            .or(record.account_seed.0)
            .ok_or_else(|| KeyError::UnknownId(record.id.clone()))?;
        if agora_core::Keypair::from_seed(seed).account() != record.account {
            return Err(KeyError::Corrupt {
                id: record.id.clone(),
                detail: "its seed does not make its account".into(),
            });
        }
        Ok(Caller {
            key_id: record.id.clone(),
            account: record.account,
            account_seed: seed,
        })
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "could not restrict key store permissions");
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("keys.redb")).unwrap();
        let (secret, rec) = store.create("alice").unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(secret.len(), SECRET_PREFIX.len() + 48);
        assert_eq!(rec.id.len(), 4 + 12);
        let got = store.authenticate(&secret).unwrap();
        assert_eq!(got, rec);
        let caller = store.caller(&got).unwrap();
        assert_eq!(
            Keypair::from_seed(caller.account_seed).account(),
            rec.account
        );
        assert!(matches!(
            store.authenticate("sk-agora-nope"),
            Err(KeyError::UnknownSecret)
        ));
        store.revoke(&rec.id).unwrap();
        assert!(matches!(
            store.authenticate(&secret),
            Err(KeyError::Revoked(_))
        ));
        assert!(matches!(store.revoke("key_x"), Err(KeyError::UnknownId(_))));
        // A listed record has no seed, but the store still knows who pays.
        let listed = store.list().unwrap();
        let c = store.caller(&listed[0]).unwrap();
        assert_eq!(Keypair::from_seed(c.account_seed).account(), rec.account);
        assert!(!format!("{listed:?}").contains(&hex::encode(c.account_seed)));
    }

    #[test]
    fn unknown_key_never_pays_with_the_zero_seed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("keys.redb")).unwrap();
        let (_, rec) = store.create("alice").unwrap();
        let mut stranger = store.list().unwrap().remove(0);
        stranger.id = "key_notinstore".into();
        assert!(matches!(
            store.caller(&stranger),
            Err(KeyError::UnknownId(_))
        ));
        assert_eq!(store.caller(&rec).unwrap().account, rec.account);
    }
}
