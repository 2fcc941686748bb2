//! The persistent key-value store behind `kv.*`: one redb file shared by every worker,
//! namespaced per block, with per-key TTLs honoured on read and purged lazily.
//!
//! Layout: one table `kv`, key = `<block name> NUL <key bytes>` (block names cannot contain
//! NUL, so namespaces never overlap), value = `tag u8 | expires_at_ms u64 LE (0 = never) | data`.
//! Every mutation is one redb write transaction, and redb serialises write transactions, so
//! `incr` is atomic across workers. Commits use `Durability::Eventual` (written, not fsynced):
//! a crash of the machine may lose the last writes, a crash or restart of the broker does not.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const HEADER: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("cannot open kv store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("cannot create kv directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Boxed: redb's error is large and this travels on every kv call's `Result`.
    #[error("kv storage error: {0}")]
    Storage(Box<redb::Error>),
    #[error("kv value is corrupt")]
    Corrupt,
    #[error("value is not an integer")]
    NotInteger,
    #[error("integer overflow")]
    Overflow,
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for KvError {
            fn from(e: $t) -> Self { KvError::Storage(Box::new(e.into())) }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

/// A value `kv` can hold. Tables are not stored: encode them with `json.encode` first.
#[derive(Debug, Clone, PartialEq)]
pub enum KvValue {
    Str(Vec<u8>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl KvValue {
    fn encode(&self, expires_at: u64) -> Vec<u8> {
        let (tag, data): (u8, Vec<u8>) = match self {
            KvValue::Str(s) => (0, s.clone()),
            KvValue::Int(i) => (1, i.to_le_bytes().to_vec()),
            KvValue::Float(f) => (2, f.to_le_bytes().to_vec()),
            KvValue::Bool(b) => (3, vec![u8::from(*b)]),
        };
        let mut out = Vec::with_capacity(HEADER + data.len());
        out.push(tag);
        out.extend_from_slice(&expires_at.to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    fn decode(raw: &[u8]) -> Result<(KvValue, u64), KvError> {
        if raw.len() < HEADER {
            return Err(KvError::Corrupt);
        }
        let (head, data) = raw.split_at(HEADER);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&head[1..HEADER]);
        let eight =
            |d: &[u8]| -> Result<[u8; 8], KvError> { d.try_into().map_err(|_| KvError::Corrupt) };
        let v = match head[0] {
            0 => KvValue::Str(data.to_vec()),
            1 => KvValue::Int(i64::from_le_bytes(eight(data)?)),
            2 => KvValue::Float(f64::from_le_bytes(eight(data)?)),
            3 => KvValue::Bool(data.first().copied().unwrap_or(0) != 0),
            _ => return Err(KvError::Corrupt),
        };
        Ok((v, u64::from_le_bytes(exp)))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn expiry(ttl: Option<Duration>, now: u64) -> u64 {
    match ttl {
        // Never 0 (which means "no expiry"), even for a zero TTL.
        Some(t) => now
            .saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            .max(1),
        None => 0,
    }
}

fn live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

fn full_key(ns: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + key.len());
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

pub struct KvStore {
    db: std::sync::Arc<Database>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvStore")
    }
}

impl KvStore {
    /// Opens (or creates) the store file, creating its directory if needed.
    pub fn open(path: &Path) -> Result<KvStore, KvError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KvError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|source| KvError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        Self::init(db)
    }

    /// A store that lives in memory only (dry runs without a kv file, tests).
    pub fn in_memory() -> Result<KvStore, KvError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::init(db)
    }

    /// A store in an already open database (the broker's own store file), in its own table.
    pub fn shared(db: std::sync::Arc<Database>) -> Result<KvStore, KvError> {
        let store = KvStore { db };
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    fn init(db: Database) -> Result<KvStore, KvError> {
        let store = KvStore {
            db: std::sync::Arc::new(db),
        };
        // Create the table up front so read transactions never see it missing.
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    fn write<R>(
        &self,
        f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Eventual);
        let out = {
            let mut table = tx.open_table(TABLE)?;
            f(&mut table)?
        };
        tx.commit()?;
        Ok(out)
    }

    pub fn get(&self, ns: &str, key: &[u8]) -> Result<Option<KvValue>, KvError> {
        let k = full_key(ns, key);
        let now = now_ms();
        let found = {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(TABLE)?;
            match table.get(k.as_slice())? {
                Some(v) => Some(KvValue::decode(v.value())?),
                None => None,
            }
        };
        match found {
            Some((v, exp)) if live(exp, now) => Ok(Some(v)),
            Some(_) => {
                // Expired: purge lazily, re-checking inside the write txn in case of a racing set.
                self.write(|t| {
                    let expired = match t.get(k.as_slice())? {
                        Some(v) => !live(KvValue::decode(v.value())?.1, now),
                        None => false,
                    };
                    if expired {
                        t.remove(k.as_slice())?;
                    }
                    Ok(())
                })?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    pub fn set(
        &self,
        ns: &str,
        key: &[u8],
        value: &KvValue,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        let k = full_key(ns, key);
        let v = value.encode(expiry(ttl, now_ms()));
        self.write(|t| {
            t.insert(k.as_slice(), v.as_slice())?;
            Ok(())
        })
    }

    /// Adds `by` to an integer (absent or expired counts as 0) and returns the new value. The
    /// TTL, when given, applies only when the key is created; an existing key keeps its expiry.
    pub fn incr(
        &self,
        ns: &str,
        key: &[u8],
        by: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        let k = full_key(ns, key);
        let now = now_ms();
        self.write(|t| {
            let current = match t.get(k.as_slice())? {
                Some(raw) => match KvValue::decode(raw.value())? {
                    (KvValue::Int(i), exp) if live(exp, now) => Some((i, exp)),
                    (_, exp) if !live(exp, now) => None,
                    _ => return Err(KvError::NotInteger),
                },
                None => None,
            };
            let (next, exp) = match current {
                Some((i, exp)) => (i.checked_add(by).ok_or(KvError::Overflow)?, exp),
                None => (by, expiry(ttl, now)),
            };
            let v = KvValue::Int(next).encode(exp);
            t.insert(k.as_slice(), v.as_slice())?;
            Ok(next)
        })
    }

    /// Removes a key; returns whether a live value was there.
    pub fn del(&self, ns: &str, key: &[u8]) -> Result<bool, KvError> {
        let k = full_key(ns, key);
        let now = now_ms();
        self.write(|t| {
            let old = t.remove(k.as_slice())?;
            match old {
                Some(v) => Ok(live(KvValue::decode(v.value())?.1, now)),
                None => Ok(false),
            }
        })
    }

    /// Removes every expired entry; returns how many. Run from housekeeping, off the
    /// message path.
    pub fn purge_expired(&self) -> Result<usize, KvError> {
        let now = now_ms();
        self.write(|t| {
            let before = t.len()?;
            t.retain(|_, v| {
                KvValue::decode(v)
                    .map(|(_, e)| live(e, now))
                    .unwrap_or(true)
            })?;
            let after = t.len()?;
            Ok(usize::try_from(before.saturating_sub(after)).unwrap_or(usize::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_namespaces_are_separate() {
        let kv = KvStore::in_memory().unwrap();
        kv.set("a", b"k", &KvValue::Str(vec![0, 255, 1]), None)
            .unwrap();
        kv.set("b", b"k", &KvValue::Float(1.5), None).unwrap();
        kv.set("a", b"t", &KvValue::Bool(true), None).unwrap();
        assert_eq!(
            kv.get("a", b"k").unwrap(),
            Some(KvValue::Str(vec![0, 255, 1]))
        );
        assert_eq!(kv.get("b", b"k").unwrap(), Some(KvValue::Float(1.5)));
        assert_eq!(kv.get("a", b"t").unwrap(), Some(KvValue::Bool(true)));
        assert_eq!(kv.get("c", b"k").unwrap(), None);
        assert!(kv.del("a", b"k").unwrap());
        assert!(!kv.del("a", b"k").unwrap());
    }

    #[test]
    fn ttl_expires_and_incr_restarts() {
        let kv = KvStore::in_memory().unwrap();
        kv.set("a", b"k", &KvValue::Int(1), Some(Duration::from_millis(30)))
            .unwrap();
        assert_eq!(kv.incr("a", b"k", 2, None).unwrap(), 3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(kv.get("a", b"k").unwrap(), None);
        assert_eq!(kv.incr("a", b"k", 5, None).unwrap(), 5);
        kv.set("a", b"s", &KvValue::Str(b"x".to_vec()), None)
            .unwrap();
        assert!(matches!(
            kv.incr("a", b"s", 1, None),
            Err(KvError::NotInteger)
        ));
        kv.set("a", b"m", &KvValue::Int(i64::MAX), None).unwrap();
        assert!(matches!(
            kv.incr("a", b"m", 1, None),
            Err(KvError::Overflow)
        ));
    }

    #[test]
    fn purge_removes_only_expired() {
        let kv = KvStore::in_memory().unwrap();
        kv.set("a", b"old", &KvValue::Int(1), Some(Duration::ZERO))
            .unwrap();
        kv.set("a", b"new", &KvValue::Int(1), None).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.purge_expired().unwrap(), 1);
        assert_eq!(kv.get("a", b"new").unwrap(), Some(KvValue::Int(1)));
    }

    #[test]
    fn incr_is_atomic_across_threads_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kv.redb");
        {
            let kv = std::sync::Arc::new(KvStore::open(&path).unwrap());
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let kv = kv.clone();
                    std::thread::spawn(move || {
                        for _ in 0..250 {
                            kv.incr("n", b"c", 1, None).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        let kv = KvStore::open(&path).unwrap();
        assert_eq!(kv.get("n", b"c").unwrap(), Some(KvValue::Int(1000)));
    }
}
