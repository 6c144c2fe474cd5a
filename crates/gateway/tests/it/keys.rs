use agora_gateway::{KeyError, KeyStore};

#[test]
fn keys_persist_across_reopen_and_secrets_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.redb");
    let (s1, s2, r1, r2, seed1);
    {
        let store = KeyStore::open(&path).unwrap();
        (s1, r1) = store.create("alice").unwrap();
        (s2, r2) = store.create("bob").unwrap();
        seed1 = store.caller(&r1).unwrap().account_seed;
        assert_ne!(r1.account, r2.account);
        assert_ne!(s1, s2);
        store.revoke(&r2.id).unwrap();
        // One process owns the file.
        assert!(matches!(KeyStore::open(&path), Err(KeyError::Locked)));
    }
    let store = KeyStore::open(&path).unwrap();
    let a = store.authenticate(&s1).unwrap();
    assert_eq!(a.id, r1.id);
    assert_eq!(a.account, r1.account);
    assert_eq!(store.caller(&a).unwrap().account_seed, seed1);
    assert!(matches!(store.authenticate(&s2), Err(KeyError::Revoked(_))));
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|k| k.id == r2.id && k.revoked));
    assert!(list
        .iter()
        .any(|k| k.id == r1.id && !k.revoked && k.label == "alice"));
    drop(store);

    let bytes = std::fs::read(&path).unwrap();
    for secret in [&s1, &s2] {
        let hex_part = secret.strip_prefix("sk-agora-").unwrap();
        assert!(find(&bytes, secret.as_bytes()).is_none());
        assert!(find(&bytes, hex_part.as_bytes()).is_none());
        assert!(find(&bytes, &hex::decode(hex_part).unwrap()).is_none());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn list_never_shows_seeds_and_is_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(&dir.path().join("k.redb")).unwrap();
    let mut made = Vec::new();
    for i in 0..5 {
        let (_, r) = store.create(&format!("k{i}")).unwrap();
        made.push(r);
    }
    let list = store.list().unwrap();
    let json = serde_json::to_string(&list).unwrap();
    let debug = format!("{list:?}");
    for r in &made {
        let seed = hex::encode(store.caller(r).unwrap().account_seed);
        assert!(!json.contains(&seed));
        assert!(!debug.contains(&seed));
        // Not even the record fresh from create() serializes its seed.
        let one = serde_json::to_string(r).unwrap();
        assert!(!one.contains(&seed));
        assert!(!format!("{r:?}").contains(&seed));
        assert!(!format!("{:?}", store.caller(r)).contains(&seed));
    }
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&str> = v[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
    let mut sorted = list.clone();
    sorted.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    assert_eq!(sorted, list);
    assert!(list.windows(2).all(|w| w[0].created_ms <= w[1].created_ms));
    assert!(matches!(
        store.revoke("key_000000000000"),
        Err(KeyError::UnknownId(_))
    ));
}
