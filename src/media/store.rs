//! On-disk media storage: frames and thumbnails per camera, written atomically, with retention.
//!
//! Layout: `<data_dir>/media/<camera>/<id>` where the id — also the file name and the
//! `/media/<id>` URL segment — is `<camera>.<unix_ms>.<seq>.<kind>.<ext>`, e.g.
//! `porch.1732638400123.42.thumb.jpg`. Every character is URL-safe, the camera name is
//! `[A-Za-z0-9_-]{1,64}`, and ids are parsed strictly and then looked up in the index, so no id
//! or camera name can name a path outside the data directory. The extension encodes the content
//! type (raw frames keep their dimensions: `rgb565-320x240`), which is how the index is rebuilt
//! from the directory listing on [`MediaStore::open`].
//!
//! Writes go to a temp file (`.tmp-…`) in the camera's directory, are fsynced and renamed into
//! place, so a crash never leaves a half-written file under a real id; leftover temp files are
//! removed at open. Retention keeps each camera within `max_count_per_camera` files and
//! `max_bytes_per_camera` bytes by deleting its oldest files first — except the newest file of
//! each kind, which is always kept so `latest.jpg` and `latest-thumb.jpg` keep working.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid camera name {0:?} (expected [A-Za-z0-9_-]{{1,64}})")]
    InvalidCamera(String),
    #[error("invalid media kind {0:?} (expected \"frame\" or \"thumb\")")]
    InvalidKind(String),
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    #[error("{bytes}-byte file exceeds the per-camera budget of {max} bytes")]
    TooLarge { bytes: u64, max: u64 },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Per-camera retention limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_count_per_camera: usize,
    pub max_bytes_per_camera: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_count_per_camera: 100,
            max_bytes_per_camera: 256 * 1024 * 1024,
        }
    }
}

/// What a stored file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Frame,
    Thumb,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Frame => "frame",
            Kind::Thumb => "thumb",
        }
    }

    /// Parses the Lua/HTTP spelling.
    pub fn parse(s: &str) -> Result<Kind, StoreError> {
        match s {
            "frame" => Ok(Kind::Frame),
            "thumb" => Ok(Kind::Thumb),
            _ => Err(StoreError::InvalidKind(s.to_owned())),
        }
    }
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// URL-safe id, also the file name.
    pub id: String,
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Store time, unix milliseconds.
    pub ts: u64,
    pub camera: String,
    pub kind: Kind,
    pub content_type: String,
}

/// Names temp files; can never parse as an id because ids start with a camera name.
const TMP_PREFIX: &str = ".tmp-";
const MAX_CAMERA_LEN: usize = 64;

/// True for names matching `[A-Za-z0-9_-]{1,64}`.
pub fn valid_camera(name: &str) -> bool {
    (1..=MAX_CAMERA_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The parts of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Id {
    camera: String,
    ts: u64,
    seq: u64,
    kind: Kind,
    ext: String,
}

impl Id {
    fn to_name(&self) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.camera,
            self.ts,
            self.seq,
            self.kind.as_str(),
            self.ext
        )
    }

    /// Strict parse: exactly five dot-separated fields, each from a closed grammar, and the
    /// canonical spelling (no leading zeros) so one file has exactly one id.
    fn parse(s: &str) -> Option<Id> {
        let mut parts = s.split('.');
        let (camera, ts, seq, kind, ext) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || !valid_camera(camera) {
            return None;
        }
        let id = Id {
            camera: camera.to_owned(),
            ts: parse_decimal(ts)?,
            seq: parse_decimal(seq)?,
            kind: Kind::parse(kind).ok()?,
            ext: ext.to_owned(),
        };
        content_type_for_ext(ext)?;
        Some(id)
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// Maps a content type to the file extension that preserves it. Raw frames keep their
/// dimensions in the extension.
fn ext_for_content_type(ct: &str) -> Option<String> {
    let mut parts = ct.split(';').map(str::trim);
    let base = parts.next()?.to_ascii_lowercase();
    let simple = match base.as_str() {
        "image/jpeg" => Some("jpg"),
        "image/png" => Some("png"),
        "application/octet-stream" => Some("bin"),
        _ => None,
    };
    if let Some(ext) = simple {
        return Some(ext.to_owned());
    }
    let raw = base.strip_prefix("image/x-raw-")?;
    if !matches!(raw, "rgb565" | "yuyv" | "gray8") {
        return None;
    }
    let (mut width, mut height) = (None, None);
    for p in parts {
        let (k, v) = p.split_once('=')?;
        let v: u32 = parse_decimal(v.trim())?.try_into().ok()?;
        match k.trim() {
            "width" => width = Some(v),
            "height" => height = Some(v),
            _ => return None,
        }
    }
    Some(format!("{raw}-{}x{}", width?, height?))
}

/// The inverse of [`ext_for_content_type`], with the canonical content-type spelling.
fn content_type_for_ext(ext: &str) -> Option<String> {
    match ext {
        "jpg" => return Some("image/jpeg".to_owned()),
        "png" => return Some("image/png".to_owned()),
        "bin" => return Some("application/octet-stream".to_owned()),
        _ => {}
    }
    let (raw, dims) = ext.split_once('-')?;
    if !matches!(raw, "rgb565" | "yuyv" | "gray8") {
        return None;
    }
    let (w, h) = dims.split_once('x')?;
    let (w, h) = (parse_decimal(w)?, parse_decimal(h)?);
    if w > u64::from(u32::MAX) || h > u64::from(u32::MAX) {
        return None;
    }
    Some(format!("image/x-raw-{raw};width={w};height={h}"))
}

struct Entry {
    id: Id,
    bytes: u64,
    content_type: String,
}

#[derive(Default)]
struct Index {
    /// Per camera, files by `seq` (store order; robust to wall-clock steps).
    cameras: HashMap<String, BTreeMap<u64, Entry>>,
    next_seq: u64,
}

/// The media store. Cheap to share (`&self` methods, internally locked); file writes happen
/// outside the lock.
pub struct MediaStore {
    root: PathBuf,
    retention: Retention,
    index: Mutex<Index>,
    /// When each camera directory was last fsynced (see [`DIR_SYNC_EVERY`]).
    dir_synced: Mutex<HashMap<String, Instant>>,
}

/// A camera directory is fsynced (making renames into it durable) at most this often. Frames
/// arrive many times a second and a directory fsync per file was a fifth of the broker's
/// storage CPU; each file's own data is still fsynced before its rename, so a crash can lose
/// the newest renames of the last second but never expose a partial file.
const DIR_SYNC_EVERY: Duration = Duration::from_secs(1);

impl MediaStore {
    /// Opens (creating if needed) `<data_dir>/media`, removes leftover temp files, rebuilds the
    /// index from the directory listing and applies retention.
    pub fn open(data_dir: impl AsRef<Path>, retention: Retention) -> Result<Self, StoreError> {
        let root = data_dir.as_ref().join("media");
        fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        let mut index = Index::default();
        for dir in fs::read_dir(&root).map_err(io_err("list", &root))? {
            let dir = dir.map_err(io_err("list", &root))?;
            let Some(camera) = dir.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_camera(&camera) || !dir.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let files = load_camera_dir(&dir.path(), &camera)?;
            if let Some(max) = files.keys().next_back() {
                index.next_seq = index.next_seq.max(max + 1);
            }
            index.cameras.insert(camera, files);
        }
        let store = MediaStore {
            root,
            retention,
            index: Mutex::new(index),
            dir_synced: Mutex::new(HashMap::new()),
        };
        let cameras: Vec<String> = store.lock().cameras.keys().cloned().collect();
        for camera in cameras {
            let victims = trim(&mut store.lock(), &store.retention, &camera);
            store.delete(victims);
        }
        Ok(store)
    }

    /// The `media` directory everything lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `bytes` for `camera` atomically and applies the camera's retention.
    pub fn store(
        &self,
        bytes: &[u8],
        camera: &str,
        kind: Kind,
        content_type: &str,
    ) -> Result<Stored, StoreError> {
        if !valid_camera(camera) {
            return Err(StoreError::InvalidCamera(camera.to_owned()));
        }
        let ext = ext_for_content_type(content_type)
            .ok_or_else(|| StoreError::UnsupportedContentType(content_type.to_owned()))?;
        let size = bytes.len() as u64;
        if size > self.retention.max_bytes_per_camera {
            return Err(StoreError::TooLarge {
                bytes: size,
                max: self.retention.max_bytes_per_camera,
            });
        }
        let seq = {
            let mut index = self.lock();
            let seq = index.next_seq;
            index.next_seq += 1;
            seq
        };
        let id = Id {
            camera: camera.to_owned(),
            ts: unix_ms(),
            seq,
            kind,
            ext,
        };
        let name = id.to_name();
        let dir = self.root.join(camera);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = dir.join(&name);
        write_atomic(&dir, &path, seq, bytes)?;
        self.sync_dir_now_and_then(camera, &dir);

        let content_type = content_type_for_ext(&id.ext).unwrap_or_default();
        let stored = Stored {
            id: name,
            path,
            bytes: size,
            ts: id.ts,
            camera: camera.to_owned(),
            kind,
            content_type: content_type.clone(),
        };
        let victims = {
            let mut index = self.lock();
            index.cameras.entry(camera.to_owned()).or_default().insert(
                seq,
                Entry {
                    id,
                    bytes: size,
                    content_type,
                },
            );
            trim(&mut index, &self.retention, camera)
        };
        self.delete(victims);
        Ok(stored)
    }

    /// The newest file of `kind` for `camera`.
    pub fn latest(&self, camera: &str, kind: Kind) -> Option<Stored> {
        let index = self.lock();
        let entry = index
            .cameras
            .get(camera)?
            .values()
            .rev()
            .find(|e| e.id.kind == kind)?;
        Some(self.stored(entry))
    }

    /// Path and content type of a stored file, or `None` for an unknown or malformed id.
    pub fn get(&self, id: &str) -> Option<(PathBuf, String)> {
        let parsed = Id::parse(id)?;
        let index = self.lock();
        let entry = index.cameras.get(&parsed.camera)?.get(&parsed.seq)?;
        (entry.id == parsed).then(|| (self.path_of(&entry.id), entry.content_type.clone()))
    }

    /// Every stored file of `camera`, oldest first.
    pub fn list(&self, camera: &str) -> Vec<Stored> {
        let index = self.lock();
        index
            .cameras
            .get(camera)
            .map(|files| files.values().map(|e| self.stored(e)).collect())
            .unwrap_or_default()
    }

    fn stored(&self, e: &Entry) -> Stored {
        Stored {
            id: e.id.to_name(),
            path: self.path_of(&e.id),
            bytes: e.bytes,
            ts: e.id.ts,
            camera: e.id.camera.clone(),
            kind: e.id.kind,
            content_type: e.content_type.clone(),
        }
    }

    fn path_of(&self, id: &Id) -> PathBuf {
        self.root.join(&id.camera).join(id.to_name())
    }

    /// The index lock is never held across user code or a panic-prone call, so a poisoned lock
    /// still guards a consistent index.
    fn sync_dir_now_and_then(&self, camera: &str, dir: &Path) {
        let now = Instant::now();
        {
            let mut synced = self
                .dir_synced
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match synced.get_mut(camera) {
                Some(at) if now.duration_since(*at) < DIR_SYNC_EVERY => return,
                Some(at) => *at = now,
                None => {
                    synced.insert(camera.to_owned(), now);
                }
            }
        }
        // Best effort: some filesystems refuse to fsync directories, and the file is complete
        // and visible either way.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes files already dropped from the index (paths relative to the root). A failure
    /// leaves an untracked file that the next `open` indexes and trims again; it does not fail
    /// the store that caused it.
    fn delete(&self, victims: Vec<PathBuf>) {
        for relative in victims {
            let _ = fs::remove_file(self.root.join(relative));
        }
    }
}

/// Drops the oldest files of `camera` from the index until it is within retention, sparing the
/// newest file of each kind, and returns their paths (relative to the root) for deletion.
fn trim(index: &mut Index, retention: &Retention, camera: &str) -> Vec<PathBuf> {
    let Some(files) = index.cameras.get_mut(camera) else {
        return Vec::new();
    };
    let newest_of = |files: &BTreeMap<u64, Entry>, kind: Kind| {
        files
            .iter()
            .rev()
            .find(|(_, e)| e.id.kind == kind)
            .map(|(s, _)| *s)
    };
    let protected = [newest_of(files, Kind::Frame), newest_of(files, Kind::Thumb)];
    let mut total: u64 = files.values().map(|e| e.bytes).sum();
    let mut victims = Vec::new();
    let candidates: Vec<u64> = files
        .keys()
        .copied()
        .filter(|s| !protected.contains(&Some(*s)))
        .collect();
    for seq in candidates {
        if files.len() <= retention.max_count_per_camera && total <= retention.max_bytes_per_camera
        {
            break;
        }
        if let Some(e) = files.remove(&seq) {
            total = total.saturating_sub(e.bytes);
            victims.push(PathBuf::from(&e.id.camera).join(e.id.to_name()));
        }
    }
    victims
}

/// Loads one camera directory: removes temp files, indexes valid ids, ignores anything else.
fn load_camera_dir(dir: &Path, camera: &str) -> Result<BTreeMap<u64, Entry>, StoreError> {
    let mut files = BTreeMap::new();
    for f in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let f = f.map_err(io_err("list", dir))?;
        let Some(name) = f.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with(TMP_PREFIX) {
            // A write that never reached its rename: not a file anyone may see.
            let _ = fs::remove_file(f.path());
            continue;
        }
        let Some(id) = Id::parse(&name) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        if id.camera != camera || !meta.is_file() {
            continue;
        }
        let content_type = content_type_for_ext(&id.ext).unwrap_or_default();
        files.insert(
            id.seq,
            Entry {
                bytes: meta.len(),
                content_type,
                id,
            },
        );
    }
    Ok(files)
}

/// Temp file in the destination directory, fsync (data and size), rename.
fn write_atomic(dir: &Path, path: &Path, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))
        .and_then(|mut f| {
            f.write_all(bytes).map_err(io_err("write", &tmp))?;
            f.sync_data().map_err(io_err("sync", &tmp))
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("rename", &tmp)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, retention: Retention) -> MediaStore {
        MediaStore::open(dir, retention).unwrap()
    }

    fn small(count: usize, bytes: u64) -> Retention {
        Retention {
            max_count_per_camera: count,
            max_bytes_per_camera: bytes,
        }
    }

    #[test]
    fn store_then_latest_and_get() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), Retention::default());
        let a = store
            .store(b"frame-1", "porch", Kind::Frame, "image/jpeg")
            .unwrap();
        let t = store
            .store(b"thumb-1", "porch", Kind::Thumb, "image/jpeg")
            .unwrap();
        let b = store
            .store(b"frame-2", "porch", Kind::Frame, "image/jpeg")
            .unwrap();
        assert_eq!(a.path, tmp.path().join("media/porch").join(&a.id));
        assert!(
            a.id.starts_with("porch.") && a.id.ends_with(".frame.jpg"),
            "{}",
            a.id
        );
        assert!(
            a.id.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        );
        assert_eq!(std::fs::read(&b.path).unwrap(), b"frame-2");
        assert_eq!(b.bytes, 7);
        assert!(b.ts >= a.ts && a.ts > 1_600_000_000_000);

        assert_eq!(store.latest("porch", Kind::Frame).unwrap().id, b.id);
        assert_eq!(store.latest("porch", Kind::Thumb).unwrap().id, t.id);
        assert!(store.latest("garage", Kind::Frame).is_none());
        assert_eq!(
            store.get(&a.id),
            Some((a.path.clone(), "image/jpeg".to_owned()))
        );
        assert_eq!(store.list("porch").len(), 3);
    }

    #[test]
    fn content_types_round_trip_including_raw() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), Retention::default());
        for ct in [
            "image/jpeg",
            "image/png",
            "application/octet-stream",
            "image/x-raw-rgb565;width=320;height=240",
            "image/x-raw-yuyv; height=2; width=4",
            "image/x-raw-gray8;width=8;height=8",
        ] {
            let s = store.store(b"x", "cam", Kind::Frame, ct).unwrap();
            let (_, got) = store.get(&s.id).unwrap();
            assert_eq!(got, s.content_type);
            assert_eq!(
                got.replace(' ', ""),
                ct.replace(' ', "")
                    .replace("height=2;width=4", "width=4;height=2")
            );
        }
        for bad in [
            "text/html",
            "image/x-raw-rgb565",
            "image/x-raw-rgb565;width=1",
            "image/x-raw-foo;width=1;height=1",
            "",
        ] {
            assert!(
                matches!(
                    store.store(b"x", "cam", Kind::Frame, bad),
                    Err(StoreError::UnsupportedContentType(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn camera_names_and_ids_cannot_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), Retention::default());
        let long = "a".repeat(65);
        for camera in [
            "",
            "..",
            ".",
            "../etc",
            "a/b",
            "a\\b",
            "cam.1",
            "cäm",
            "cam ",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    store.store(b"x", camera, Kind::Frame, "image/jpeg"),
                    Err(StoreError::InvalidCamera(_))
                ),
                "{camera:?}"
            );
        }
        assert!(
            store
                .store(b"x", &"a".repeat(64), Kind::Frame, "image/jpeg")
                .is_ok()
        );
        let ok = store.store(b"x", "cam", Kind::Frame, "image/jpeg").unwrap();
        // A secret next to the data dir that no id may reach.
        std::fs::write(tmp.path().join("secret.jpg"), b"secret").unwrap();
        let attempts = [
            "../secret.jpg".to_owned(),
            "../../secret.jpg".to_owned(),
            "cam/../../secret.jpg".to_owned(),
            "..%2Fsecret.jpg".to_owned(),
            "/etc/passwd".to_owned(),
            format!("{}/../../secret.jpg", ok.id),
            format!("../{}", ok.id),
            ok.id.replace("cam.", ".."),
            ok.id.replace(".frame.", ".frame/"),
            ok.id.replace(".frame.", "..frame."),
            ok.id.replace("cam.", "cam.0"),
            format!("{}.jpg", ok.id),
            ok.id.replace(".jpg", ".JPG"),
            ok.id.replace(".frame.", ".other."),
            String::new(),
        ];
        for id in &attempts {
            assert_eq!(store.get(id), None, "{id:?}");
        }
        assert!(store.get(&ok.id).is_some());
        assert!(matches!(
            Kind::parse("../frame"),
            Err(StoreError::InvalidKind(_))
        ));
    }

    #[test]
    fn retention_by_count_keeps_newest_of_each_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), small(3, u64::MAX));
        let thumb = store.store(b"t", "cam", Kind::Thumb, "image/jpeg").unwrap();
        let frames: Vec<Stored> = (0..5)
            .map(|i| store.store(&[i], "cam", Kind::Frame, "image/jpeg").unwrap())
            .collect();
        let left: Vec<String> = store.list("cam").into_iter().map(|s| s.id).collect();
        // The old thumbnail survives as the newest thumbnail; the oldest frames went first.
        assert_eq!(
            left,
            vec![thumb.id.clone(), frames[3].id.clone(), frames[4].id.clone()]
        );
        assert!(!frames[0].path.exists() && !frames[2].path.exists());
        assert!(thumb.path.exists() && frames[4].path.exists());
        // Other cameras are untouched by this camera's retention.
        let other = store
            .store(b"o", "other", Kind::Frame, "image/jpeg")
            .unwrap();
        assert!(other.path.exists());
    }

    #[test]
    fn retention_by_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), small(100, 25));
        let first = store
            .store(&[0; 10], "cam", Kind::Frame, "image/jpeg")
            .unwrap();
        store
            .store(&[0; 10], "cam", Kind::Frame, "image/jpeg")
            .unwrap();
        store
            .store(&[0; 10], "cam", Kind::Frame, "image/jpeg")
            .unwrap();
        let total: u64 = store.list("cam").iter().map(|s| s.bytes).sum();
        assert!(total <= 25, "{total}");
        assert!(!first.path.exists());
        assert!(matches!(
            store.store(&[0; 26], "cam", Kind::Frame, "image/jpeg"),
            Err(StoreError::TooLarge { bytes: 26, max: 25 })
        ));
    }

    #[test]
    fn survives_reopen_and_cleans_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = {
            let store = open(tmp.path(), Retention::default());
            let a = store
                .store(
                    b"one",
                    "cam",
                    Kind::Frame,
                    "image/x-raw-gray8;width=3;height=1",
                )
                .unwrap();
            let b = store
                .store(b"two", "cam", Kind::Thumb, "image/png")
                .unwrap();
            (a, b)
        };
        // A crash mid-write leaves a temp file; a stray file is not ours to touch.
        let dir = tmp.path().join("media/cam");
        std::fs::write(dir.join(".tmp-123-9"), b"half").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let store = open(tmp.path(), Retention::default());
        assert!(!dir.join(".tmp-123-9").exists());
        assert!(dir.join("notes.txt").exists());
        assert_eq!(
            store.get(&a.id),
            Some((
                a.path.clone(),
                "image/x-raw-gray8;width=3;height=1".to_owned()
            ))
        );
        assert_eq!(store.latest("cam", Kind::Thumb).unwrap(), b);
        // New ids continue after the old ones, so order (and retention) stays right.
        let c = store
            .store(b"three", "cam", Kind::Frame, "image/jpeg")
            .unwrap();
        assert_eq!(store.latest("cam", Kind::Frame).unwrap().id, c.id);
        assert_eq!(store.list("cam").len(), 3);
    }

    #[test]
    fn reopen_applies_smaller_retention() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path(), Retention::default());
            for i in 0..5 {
                store.store(&[i], "cam", Kind::Frame, "image/jpeg").unwrap();
            }
        }
        let store = open(tmp.path(), small(2, u64::MAX));
        assert_eq!(store.list("cam").len(), 2);
        let on_disk = std::fs::read_dir(tmp.path().join("media/cam"))
            .unwrap()
            .count();
        assert_eq!(on_disk, 2);
    }

    #[test]
    fn unwritable_locations_are_typed_errors() {
        let tmp = tempfile::tempdir().unwrap();
        // Root ignores permission bits, so make creation impossible instead: a data dir under a
        // regular file.
        let file = tmp.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let err = MediaStore::open(file.join("data"), Retention::default())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Io { op: "create", .. }), "{err}");

        // A camera directory that cannot be created: a file already has its name.
        let store = open(tmp.path(), Retention::default());
        std::fs::write(store.root().join("blocked"), b"").unwrap();
        let err = store
            .store(b"x", "blocked", Kind::Frame, "image/jpeg")
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert!(store.latest("blocked", Kind::Frame).is_none());
    }

    #[test]
    fn concurrent_stores_get_distinct_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), small(1000, u64::MAX));
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let store = &store;
                    s.spawn(move || {
                        (0..25)
                            .map(|i| {
                                store
                                    .store(&[t, i], "cam", Kind::Frame, "image/jpeg")
                                    .unwrap()
                                    .id
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 100);
        assert_eq!(store.list("cam").len(), 100);
    }
}
