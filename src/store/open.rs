//! What the store does before it takes writes: refuse a file that is not a moonwire store,
//! apply what the write-ahead log holds, and read back retained messages, sessions and their
//! queues, dropping what expired while the broker was down.

use super::*;

/// Applies what the write-ahead log holds (commits acknowledged since the last durable one),
/// makes it durable, and returns the emptied log.
pub(super) fn replay_wal(db: &Database, path: &Path) -> Result<wal::Wal, StoreError> {
    let (mut log, recovered) = wal::Wal::open(path).map_err(|e| match e {
        wal::WalError::Foreign { path } => StoreError::Foreign {
            path,
            found: "not a moonwire write-ahead log".into(),
        },
        wal::WalError::Corrupt {
            path,
            entry,
            reason,
        } => StoreError::Corrupt {
            path,
            what: "write-ahead log",
            reason: format!("entry {entry}: {reason}"),
        },
        wal::WalError::Io { path, source } => StoreError::Open {
            path,
            reason: source.to_string(),
        },
    })?;
    let groups = recovered.groups.len();
    if groups > 0 {
        let started = std::time::Instant::now();
        let replay_err =
            |e: Box<redb::Error>| StoreError::Write(format!("replaying {}: {e}", path.display()));
        // Records end at group boundaries (see `writer::commit`), so this writes what the
        // crashed process had written, under the same keys.
        writer::commit(db, &recovered.groups, redb::Durability::Immediate).map_err(replay_err)?;
        tracing::info!(
            groups,
            torn_bytes = recovered.torn_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replayed the write-ahead log"
        );
    } else if recovered.torn_bytes > 0 {
        tracing::info!(
            torn_bytes = recovered.torn_bytes,
            "write-ahead log ended in a torn write"
        );
    }
    log.reset().map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(log)
}

/// Refuses a file that is not ours (another program's redb file, an older format), and marks
/// a new one as ours.
pub(super) fn check_format(db: &Database, path: &Path, existed: bool) -> Result<(), StoreError> {
    let open = |e: &dyn std::fmt::Display| StoreError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let found = {
        let tx = db.begin_read().map_err(|e| open(&e))?;
        match tx.open_table(META) {
            Ok(t) => {
                let format = t
                    .get("format")
                    .map_err(|e| open(&e))?
                    .map(|v| v.value().to_string());
                let version = t
                    .get("version")
                    .map_err(|e| open(&e))?
                    .map(|v| v.value().to_string());
                Some((format, version))
            }
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(open(&e)),
        }
    };
    match found {
        Some((Some(f), Some(v))) if f == FORMAT && v == VERSION => Ok(()),
        Some((f, v)) => Err(StoreError::Foreign {
            path: path.to_owned(),
            found: format!("format {f:?}, version {v:?}; this broker reads {FORMAT} {VERSION}"),
        }),
        None if existed => {
            let tx = db.begin_read().map_err(|e| open(&e))?;
            let tables: Vec<String> = tx
                .list_tables()
                .map_err(|e| open(&e))?
                .map(|t| t.name().to_string())
                .collect();
            Err(StoreError::Foreign {
                path: path.to_owned(),
                found: format!("a redb file without moonwire's marker, tables {tables:?}"),
            })
        }
        None => {
            let tx = db.begin_write().map_err(|e| open(&e))?;
            {
                let mut t = tx.open_table(META).map_err(|e| open(&e))?;
                t.insert("format", FORMAT).map_err(|e| open(&e))?;
                t.insert("version", VERSION).map_err(|e| open(&e))?;
                tx.open_table(RETAINED).map_err(|e| open(&e))?;
                tx.open_table(SESSIONS).map_err(|e| open(&e))?;
                tx.open_table(QUEUE).map_err(|e| open(&e))?;
                tx.open_table(QOS2).map_err(|e| open(&e))?;
                tx.open_table(ACKED).map_err(|e| open(&e))?;
            }
            tx.commit().map_err(|e| open(&e))?;
            Ok(())
        }
    }
}

pub(super) type Loaded = (Restored, HashMap<String, SessionState>, u64);

/// Reads everything back, dropping expired sessions and messages (durably, before serving).
pub(super) fn load(db: &Database, path: &Path) -> Result<Loaded, StoreError> {
    let read = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
    let corrupt = |what: &'static str, e: &dyn std::fmt::Display| StoreError::Corrupt {
        path: path.to_owned(),
        what,
        reason: e.to_string(),
    };
    let now = now_ms();
    let mut restored = Restored {
        retained: vec![],
        sessions: vec![],
        queued: 0,
    };
    let mut sessions: HashMap<String, SessionState> = HashMap::new();
    let mut expired_retained = vec![];
    let mut ended = vec![];
    let mut next_seq = 0u64;
    {
        let tx = db.begin_read().map_err(|e| read(&e))?;
        let t = tx.open_table(RETAINED).map_err(|e| read(&e))?;
        for entry in t.iter().map_err(|e| read(&e))? {
            let (k, v) = entry.map_err(|e| read(&e))?;
            let mut m = decode_message(v.value()).map_err(|e| corrupt("retained message", &e))?;
            if m.age(now) {
                restored.retained.push(m);
            } else {
                expired_retained.push(k.value().to_string());
            }
        }
        let t = tx.open_table(SESSIONS).map_err(|e| read(&e))?;
        for entry in t.iter().map_err(|e| read(&e))? {
            let (k, v) = entry.map_err(|e| read(&e))?;
            let client = k.value().to_string();
            let mut record: SessionRecord = serde_json::from_slice(v.value())
                .map_err(|e| corrupt("session", &RecordError::Session(e)))?;
            // A session that was connected when the broker stopped went offline then.
            if record.disconnected_at_ms.is_none() {
                record.disconnected_at_ms = Some(now);
            }
            match record.expires_at_ms() {
                Some(at) if at <= now || record.expiry == 0 => {
                    ended.push(client);
                    continue;
                }
                at => restored.sessions.push(RestoredSession {
                    client_id: client.clone(),
                    filters: record.filters.clone(),
                    expires_in: at.map(|at| Duration::from_millis(at - now)),
                    will: record.will.clone(),
                }),
            }
            sessions.insert(
                client,
                SessionState {
                    record,
                    stats: Arc::default(),
                    store_only: true,
                },
            );
        }
        let t = tx.open_table(QUEUE).map_err(|e| read(&e))?;
        for entry in t.iter().map_err(|e| read(&e))? {
            let (k, v) = entry.map_err(|e| read(&e))?;
            let (client, _) = split_key(k.value()).map_err(|e| corrupt("queue key", &e))?;
            let entries = batch_entries(v.value()).map_err(|e| corrupt("queue record", &e))?;
            if let Some(last) = entries.last() {
                next_seq = next_seq.max(last.0 + 1);
            }
            if let Some(s) = sessions.get(client) {
                let n = entries.len() as u64;
                let bytes: u64 = entries.iter().map(|e| e.3.len() as u64).sum();
                s.stats.messages.fetch_add(n, Relaxed);
                s.stats.bytes.fetch_add(bytes, Relaxed);
                s.stats.pending.lock().extend(entries.iter().map(|e| e.0));
                restored.queued += n;
            }
        }
    }
    if !expired_retained.is_empty() || !ended.is_empty() {
        let tx = db.begin_write().map_err(|e| read(&e))?;
        {
            let mut r = tx.open_table(RETAINED).map_err(|e| read(&e))?;
            for t in &expired_retained {
                r.remove(t.as_str()).map_err(|e| read(&e))?;
            }
            let mut s = tx.open_table(SESSIONS).map_err(|e| read(&e))?;
            let mut q = tx.open_table(QUEUE).map_err(|e| read(&e))?;
            let mut q2 = tx.open_table(QOS2).map_err(|e| read(&e))?;
            let mut acked = tx.open_table(ACKED).map_err(|e| read(&e))?;
            for c in &ended {
                s.remove(c.as_str()).map_err(|e| read(&e))?;
                let (lo, hi) = client_range(c);
                q.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                    .map_err(|e| read(&e))?;
                q2.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                    .map_err(|e| read(&e))?;
                acked
                    .retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                    .map_err(|e| read(&e))?;
            }
        }
        tx.commit().map_err(|e| read(&e))?;
    }
    Ok((restored, sessions, next_seq))
}
