//! The write-ahead log behind `storage.fsync = "batch"` and `"never"`: it lets a commit be
//! acknowledged once it is in the OS, without waiting for the disk.
//!
//! redb cannot do that by itself on Linux: its `Durability::Eventual` is an `fdatasync` there,
//! and its `Durability::None` keeps a commit in the process's memory, which a `kill -9` loses.
//! So the writer appends each group's operations here with one `write`, which a crash of the
//! process cannot undo, and acknowledges it. It applies the logged groups to redb later, many
//! per commit (see `writer::run`); every `storage.fsync_interval` it commits redb durably and
//! empties the log. After a crash, `Store::open` applies the log's groups before reading
//! anything. Applying a group that redb already holds changes nothing (every operation is
//! keyed, and queue records end with their group and are keyed by its first sequence), so a
//! crash between the durable commit and the reset is harmless.
//!
//! Layout: the 8-byte magic, then entries of `len u32 LE | crc32 u32 LE | payload`, one per
//! commit group. A power cut can leave a torn last entry; replay stops at the first entry that
//! is incomplete or fails its checksum, which only a cut or crash in the middle of its write can
//! cause, and that entry was never acknowledged.

use super::writer::Op;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"MWWAL\x00\x00\x01";
/// An entry larger than this is not one the writer wrote.
const MAX_ENTRY: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a moonwire write-ahead log")]
    Foreign { path: PathBuf },
    #[error("{path}: entry {entry} passed its checksum but does not decode: {reason}")]
    Corrupt {
        path: PathBuf,
        entry: usize,
        reason: &'static str,
    },
}

pub struct Wal {
    file: File,
    path: PathBuf,
    has_magic: bool,
    /// Bytes appended since the last reset.
    appended: u64,
}

/// What `Wal::open` found.
pub struct Recovered {
    /// Commit groups to apply again, oldest first.
    pub groups: Vec<Vec<Op>>,
    /// Bytes after the last whole entry (a torn write), ignored.
    pub torn_bytes: u64,
}

impl Wal {
    /// Opens or creates the log and reads the groups it holds. The caller applies them, makes
    /// them durable, then calls `reset` before appending.
    pub fn open(path: &Path) -> Result<(Wal, Recovered), WalError> {
        let io = |source| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io)?;
        let recovered = if data.is_empty() {
            Recovered {
                groups: Vec::new(),
                torn_bytes: 0,
            }
        } else if data.len() < MAGIC.len() && MAGIC.starts_with(&data) {
            // The magic itself was torn: nothing was ever logged after it.
            Recovered {
                groups: Vec::new(),
                torn_bytes: data.len() as u64,
            }
        } else if !data.starts_with(MAGIC) {
            return Err(WalError::Foreign {
                path: path.to_path_buf(),
            });
        } else {
            parse(&data[MAGIC.len()..], path)?
        };
        let has_magic = data.starts_with(MAGIC);
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((
            Wal {
                file,
                path: path.to_path_buf(),
                has_magic,
                appended: 0,
            },
            recovered,
        ))
    }

    /// Appends one commit group with a single `write`; a group with no operations writes
    /// nothing.
    pub fn append<'a>(&mut self, ops: impl IntoIterator<Item = &'a Op>) -> Result<(), WalError> {
        // The header's length and checksum are filled in once the payload is encoded behind it.
        let mut entry = vec![0u8; 8];
        for op in ops {
            encode(op, &mut entry);
        }
        if entry.len() == 8 {
            return Ok(());
        }
        let payload_len = (entry.len() - 8) as u32;
        let crc = crc32fast::hash(&entry[8..]);
        entry[..4].copy_from_slice(&payload_len.to_le_bytes());
        entry[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&entry).map_err(|source| WalError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.appended += entry.len() as u64;
        Ok(())
    }

    /// Bytes appended since the last reset.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Empties the log; called once everything in it is durable in redb.
    pub fn reset(&mut self) -> std::io::Result<()> {
        if self.has_magic {
            // Truncating down to the magic keeps it, so a failure here never leaves a log
            // that the next start would refuse as foreign.
            self.file.set_len(MAGIC.len() as u64)?;
        } else {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(MAGIC)?;
            self.has_magic = true;
        }
        self.file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        self.appended = 0;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn parse(mut rest: &[u8], path: &Path) -> Result<Recovered, WalError> {
    let mut groups = Vec::new();
    loop {
        if rest.len() < 8 {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_ENTRY || rest.len() - 8 < len {
            break;
        }
        let payload = &rest[8..8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let ops = decode(payload).map_err(|reason| WalError::Corrupt {
            path: path.to_path_buf(),
            entry: groups.len(),
            reason,
        })?;
        groups.push(ops);
        rest = &rest[8 + len..];
    }
    Ok(Recovered {
        groups,
        torn_bytes: rest.len() as u64,
    })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn encode(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::PutRetained(topic, value) => {
            out.push(1);
            put_bytes(out, topic.as_bytes());
            put_bytes(out, value);
        }
        Op::DelRetained(topic) => {
            out.push(2);
            put_bytes(out, topic.as_bytes());
        }
        Op::PutSession(client, value) => {
            out.push(3);
            put_bytes(out, client.as_bytes());
            put_bytes(out, value);
        }
        Op::DelSession(client) => {
            out.push(4);
            put_bytes(out, client.as_bytes());
        }
        Op::Enqueue(client, seq, qos, at, frame) => {
            out.push(5);
            put_bytes(out, client.as_bytes());
            put_u64(out, *seq);
            out.push(*qos);
            put_u64(out, *at);
            put_bytes(out, frame);
        }
        Op::Acked(client, seq) => {
            out.push(6);
            put_bytes(out, client.as_bytes());
            put_u64(out, *seq);
        }
        Op::DropRecord(key, client, first, last) => {
            out.push(7);
            put_bytes(out, key);
            put_bytes(out, client.as_bytes());
            put_u64(out, *first);
            put_u64(out, *last);
        }
        Op::ClearQueue(client) => {
            out.push(8);
            put_bytes(out, client.as_bytes());
        }
        Op::AckedBelow(client, seq) => {
            out.push(11);
            put_bytes(out, client.as_bytes());
            put_u64(out, *seq);
        }
        Op::PutQos2(key) => {
            out.push(9);
            put_bytes(out, key);
        }
        Op::DelQos2(key) => {
            out.push(10);
            put_bytes(out, key);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated field");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let b = self.take(4)?;
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, &'static str> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "text is not UTF-8")
    }
}

fn decode(payload: &[u8]) -> Result<Vec<Op>, &'static str> {
    let mut r = Reader(payload);
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let op = match r.u8()? {
            1 => Op::PutRetained(r.string()?, r.bytes()?.to_vec()),
            2 => Op::DelRetained(r.string()?),
            3 => Op::PutSession(r.string()?, r.bytes()?.to_vec()),
            4 => Op::DelSession(r.string()?),
            5 => {
                let client: Arc<str> = Arc::from(r.string()?);
                let (seq, qos, at) = (r.u64()?, r.u8()?, r.u64()?);
                Op::Enqueue(
                    client,
                    seq,
                    qos,
                    at,
                    bytes::Bytes::copy_from_slice(r.bytes()?),
                )
            }
            6 => Op::Acked(r.string()?, r.u64()?),
            7 => Op::DropRecord(r.bytes()?.to_vec(), r.string()?, r.u64()?, r.u64()?),
            8 => Op::ClearQueue(r.string()?),
            11 => Op::AckedBelow(r.string()?, r.u64()?),
            9 => Op::PutQos2(r.bytes()?.to_vec()),
            10 => Op::DelQos2(r.bytes()?.to_vec()),
            _ => return Err("unknown operation"),
        };
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ops() -> Vec<Op> {
        vec![
            Op::PutRetained("home/a".into(), vec![1, 2, 3]),
            Op::DelRetained("home/b".into()),
            Op::PutSession("dev1".into(), b"{}".to_vec()),
            Op::DelSession("dev2".into()),
            Op::Enqueue(
                Arc::from("dev3"),
                7,
                1,
                1_700_000_000_000,
                bytes::Bytes::from_static(&[9u8, 8]),
            ),
            Op::Acked("dev3".into(), 7),
            Op::DropRecord(vec![0, 1], "dev3".into(), 7, 9),
            Op::ClearQueue("dev4".into()),
            Op::AckedBelow("dev4".into(), 12),
            Op::PutQos2(vec![5]),
            Op::DelQos2(vec![]),
        ]
    }

    fn encoded(ops: &[Op]) -> Vec<Vec<u8>> {
        ops.iter()
            .map(|op| {
                let mut out = Vec::new();
                encode(op, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn groups_come_back_in_order_and_the_log_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.wal");
        let (mut wal, rec) = Wal::open(&path).unwrap();
        assert!(rec.groups.is_empty());
        wal.reset().unwrap();
        let ops = all_ops();
        wal.append(&ops[..4]).unwrap();
        wal.append(&ops[4..]).unwrap();
        assert_eq!(
            wal.appended() + MAGIC.len() as u64,
            std::fs::metadata(&path).unwrap().len()
        );
        drop(wal);

        let (mut wal, rec) = Wal::open(&path).unwrap();
        assert_eq!(rec.groups.len(), 2);
        assert_eq!(rec.torn_bytes, 0);
        let back: Vec<Op> = rec.groups.into_iter().flatten().collect();
        assert_eq!(encoded(&back), encoded(&ops));
        // Opening alone keeps the groups until the caller has made them durable elsewhere.
        assert!(std::fs::read(&path).unwrap().len() > MAGIC.len());
        wal.reset().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), MAGIC);
        wal.append(&ops[..1]).unwrap();
        drop(wal);
        let (_, rec) = Wal::open(&path).unwrap();
        assert_eq!(rec.groups.len(), 1);
    }

    #[test]
    fn a_torn_last_entry_is_ignored_and_earlier_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.reset().unwrap();
        let ops = all_ops();
        wal.append([&ops[0]]).unwrap();
        wal.append([&ops[1], &ops[4]]).unwrap();
        drop(wal);
        let full = std::fs::read(&path).unwrap();
        for cut in [full.len() - 1, full.len() - 5, full.len() - 12] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (_, rec) = Wal::open(&path).unwrap();
            assert_eq!(rec.groups.len(), 1, "cut at {cut}");
            assert!(rec.torn_bytes > 0);
        }
        // A flipped byte in the last entry fails its checksum the same way.
        let mut bad = full.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        std::fs::write(&path, &bad).unwrap();
        let (_, rec) = Wal::open(&path).unwrap();
        assert_eq!(rec.groups.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.wal");
        std::fs::write(&path, b"hello, this is not a log").unwrap();
        assert!(matches!(Wal::open(&path), Err(WalError::Foreign { .. })));
        // Left as it was, for the operator to look at.
        assert_eq!(std::fs::read(&path).unwrap(), b"hello, this is not a log");
    }

    #[test]
    fn an_entry_with_a_valid_checksum_that_does_not_decode_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.wal");
        let payload = [42u8, 0, 0];
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
        std::fs::write(&path, &data).unwrap();
        assert!(matches!(
            Wal::open(&path),
            Err(WalError::Corrupt { entry: 0, .. })
        ));
    }
}
