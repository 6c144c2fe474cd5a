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
use agora_core::{AccountId, Keypair};
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
    fn record(&self) -> KeyRecord {
        KeyRecord {
            id: self.id.clone(),
            label: self.label.clone(),
            account: self.account,
            created_ms: self.created_ms,
            revoked: self.revoked,
            account_seed: Seed(Some(self.seed)),
        }
    }
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
    db: Database,
    /// By id.
    keys: RwLock<HashMap<String, StoredKey>>,
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
        w.open_table(KEYS).map_err(KeyError::db)?;
        w.commit().map_err(KeyError::db)?;

        let mut keys = HashMap::new();
        {
            let r = db.begin_read().map_err(KeyError::db)?;
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
        })
    }

    fn write(&self, stored: &StoredKey) -> Result<(), KeyError> {
        let w = self.db.begin_write().map_err(KeyError::db)?;
        {
            let mut t = w.open_table(KEYS).map_err(KeyError::db)?;
            t.insert(
                stored.id.as_str(),
                borsh::to_vec(stored).map_err(KeyError::db)?.as_slice(),
            )
            .map_err(KeyError::db)?;
        }
        w.commit().map_err(KeyError::db)
    }

    /// New key with a fresh ledger account (random ed25519 seed). Returns the secret ONCE
    /// (`sk-agora-` + 48 hex characters) and the record; only its hash is stored.
    pub fn create(&self, label: &str) -> Result<(String, KeyRecord), KeyError> {
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
        let kp = Keypair::generate().map_err(|e| KeyError::Random(e.to_string()))?;
        let stored = StoredKey {
            id: id.clone(),
            label: label.to_string(),
            account: kp.account(),
            created_ms: now_ms(),
            revoked: false,
            secret_hash: hash,
            seed: kp.seed(),
        };
        self.write(&stored)?;
        let record = stored.record();
        keys.insert(id, stored);
        Ok((secret, record))
    }

    /// The live key whose secret is `secret` (looked up by its BLAKE3 hash).
    pub fn authenticate(&self, secret: &str) -> Result<KeyRecord, KeyError> {
        let hash = *blake3::hash(secret.as_bytes()).as_bytes();
        let keys = self.keys.read().map_err(|_| KeyError::Poisoned)?;
        match keys.get(&id_of(&hash)) {
            Some(k) if k.secret_hash == hash => {
                if k.revoked {
                    Err(KeyError::Revoked(k.id.clone()))
                } else {
                    Ok(k.record())
                }
            }
            _ => Err(KeyError::UnknownSecret),
        }
    }

    /// Every key, revoked ones included, oldest first (ties by id); seeds cleared.
    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let keys = self.keys.read().map_err(|_| KeyError::Poisoned)?;
        let mut out: Vec<KeyRecord> = keys
            .values()
            .map(|k| KeyRecord {
                account_seed: Seed(None),
                ..k.record()
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
            self.write(&stored)?;
            k.revoked = true;
        }
        Ok(KeyRecord {
            account_seed: Seed(None),
            ..k.record()
        })
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
