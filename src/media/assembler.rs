//! Frame reassembly: turns what a camera publishes on its frame topic into whole frames.
//!
//! The [`Assembler`] owns every partial frame in the broker and the memory they use. It is pure
//! and synchronous: the caller passes `now`, calls [`Assembler::expire`] periodically and
//! [`Assembler::remove_device`] when a session ends, and publishes each returned [`Loss`] on
//! `cameras/<id>/status` with [`Loss::status_json`].
//!
//! Rules (DESIGN §3):
//! - Partial frames are keyed by the caller's device key (the session's client id) *and* the
//!   frame id, so a device cannot inject into another's frame and two devices using the same
//!   frame id never mix.
//! - Chunks are accepted in any order; duplicates are ignored. So are late chunks of a frame that
//!   recently finished, whether it completed or was lost: a QoS 1 resend must not start a phantom
//!   partial that later times out, and the rest of an evicted frame must not restart it (which
//!   would evict another frame in turn). Each frame is therefore reported at most once.
//! - At most `max_partial_per_device` partial frames per device: starting one more evicts that
//!   device's oldest (`evicted`). A chunk with a known frame id but a different frame description
//!   (length, CRC, format, ...) means the camera reused the id (reboot, wrap): the old partial is
//!   dropped as `evicted` and the new frame starts.
//! - A partial frame idle for longer than `idle_timeout` is dropped by `expire` (`timeout`). A
//!   device that disconnects mid-frame loses its partials with reason `timeout` too: from the
//!   status topic's point of view the rest of the frame never arrived in time, and the fixed
//!   reason vocabulary has no better word.
//! - The CRC is checked on completion, before the frame leaves this module (`crc`).
//! - `max_frame_bytes` caps each frame (`too_large`) and `max_total_bytes` caps the sum of every
//!   partial frame's allocation. A new partial that would exceed the total first expires idle
//!   partials, then evicts partials oldest-first (`memory`) — first those that are not their
//!   device's newest, then the others — so each device's newest frame survives longest and fresh
//!   frames win over stale ones. A frame that cannot fit even in an empty assembler, or whose
//!   buffer cannot be allocated, is refused (`memory`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::PixelFormat;
use super::fchunk::{self, ChunkHeader, FchunkError};

/// Limits of the assembler. Defaults follow DESIGN §3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Largest frame accepted, whole or chunked (`too_large` above it).
    pub max_frame_bytes: usize,
    /// Cap on the memory held by all partial frames together (`memory` when exceeded).
    pub max_total_bytes: usize,
    /// Partial frames one device may have in flight; the oldest is evicted beyond it. Values
    /// below 1 are treated as 1.
    pub max_partial_per_device: usize,
    /// A partial frame that received no new chunk for this long is dropped by `expire`.
    pub idle_timeout: Duration,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            max_frame_bytes: 2 * 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
            max_partial_per_device: 2,
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// A complete, CRC-checked frame ready to continue down the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The fchunk frame id; `None` for a whole JPEG/PNG payload, which has none.
    pub frame_id: Option<u16>,
    pub format: PixelFormat,
    /// Pixel dimensions: from the fchunk header, or read from the JPEG/PNG header (0 when the
    /// header could not be read: the assembler passes images on, it does not judge them).
    pub width: u32,
    pub height: u32,
    pub data: Bytes,
    /// MIME type to publish the frame with (see [`PixelFormat::content_type`]).
    pub content_type: String,
}

/// Why a frame was lost. The strings are the `error` values of the status topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossReason {
    Crc,
    Timeout,
    Evicted,
    TooLarge,
    BadChunk,
    Memory,
}

impl LossReason {
    /// Every reason, for registering metric labels up front.
    pub const ALL: [LossReason; 6] = [
        LossReason::Crc,
        LossReason::Timeout,
        LossReason::Evicted,
        LossReason::TooLarge,
        LossReason::BadChunk,
        LossReason::Memory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::Crc => "crc",
            LossReason::Timeout => "timeout",
            LossReason::Evicted => "evicted",
            LossReason::TooLarge => "too_large",
            LossReason::BadChunk => "bad_chunk",
            LossReason::Memory => "memory",
        }
    }
}

/// One lost frame (or rejected payload), to count and to report to the device that sent it.
/// `device` may differ from the device whose publish caused it (memory eviction, expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub device: String,
    pub frame_id: Option<u16>,
    pub reason: LossReason,
}

impl Loss {
    /// The status-topic payload: `{"frame_id":N|null,"error":"…"}`, keys in that order.
    pub fn status_json(&self) -> String {
        // Written by hand: both values are from a closed set (a number or null, and one of the
        // fixed reason words), and the documented key order is kept.
        match self.frame_id {
            Some(id) => format!(r#"{{"frame_id":{id},"error":"{}"}}"#, self.reason.as_str()),
            None => format!(r#"{{"frame_id":null,"error":"{}"}}"#, self.reason.as_str()),
        }
    }
}

/// What became of one payload.
#[derive(Debug)]
pub enum Accepted {
    /// A whole JPEG/PNG payload, passed through.
    Whole(Frame),
    /// An fchunk chunk: the frame it completed, if any, and every loss it caused (including its
    /// own refusal, and losses of other devices' frames evicted to make room).
    Chunk {
        complete: Option<Frame>,
        losses: Vec<Loss>,
    },
    /// A payload that is neither an image nor a chunk (`bad_chunk`), or a whole image over the
    /// frame cap (`too_large`).
    Rejected(Loss),
}

impl Accepted {
    /// Flattens the outcome for callers that handle every case the same way.
    pub fn into_parts(self) -> (Option<Frame>, Vec<Loss>) {
        match self {
            Accepted::Whole(frame) => (Some(frame), Vec::new()),
            Accepted::Chunk { complete, losses } => (complete, losses),
            Accepted::Rejected(loss) => (None, vec![loss]),
        }
    }
}

/// How many recently finished frames per device are remembered to ignore their late chunks.
const RECENT_PER_DEVICE: usize = 4;

struct Partial {
    /// Header of the first chunk received; later chunks must describe the same frame.
    header: ChunkHeader,
    buf: Vec<u8>,
    /// One bit per chunk: received or not.
    received: Vec<u64>,
    missing: u32,
    /// Creation order, global across devices: smaller is older.
    seq: u64,
    last_seen: Instant,
    /// Bytes this partial is charged in `used`, fixed at creation.
    cost: usize,
}

/// A frame that finished recently: completed, or lost for any reason but a disconnect.
struct Recent {
    frame_id: u16,
    frame_len: u32,
    crc32: u32,
    at: Instant,
}

#[derive(Default)]
struct DeviceState {
    /// Ascending `seq`; at most `max_partial_per_device` entries.
    partials: Vec<Partial>,
    recent: VecDeque<Recent>,
}

/// The per-broker reassembler. See the module docs for the rules.
pub struct Assembler {
    cfg: AssemblerConfig,
    devices: HashMap<String, DeviceState>,
    /// Age indexes for memory eviction, `seq → (device, frame_id)`: partials that are not their
    /// device's newest, and each device's newest.
    older: BTreeMap<u64, (String, u16)>,
    newest: BTreeMap<u64, (String, u16)>,
    used: usize,
    next_seq: u64,
}

impl Assembler {
    pub fn new(mut cfg: AssemblerConfig) -> Self {
        cfg.max_partial_per_device = cfg.max_partial_per_device.max(1);
        Assembler {
            cfg,
            devices: HashMap::new(),
            older: BTreeMap::new(),
            newest: BTreeMap::new(),
            used: 0,
            next_seq: 0,
        }
    }

    pub fn config(&self) -> &AssemblerConfig {
        &self.cfg
    }

    /// Bytes currently charged to partial frames: their frame buffers, chunk bitmaps and
    /// bookkeeping. Never above `max_total_bytes`.
    pub fn memory_used(&self) -> usize {
        self.used
    }

    /// Number of partial frames in flight, all devices together.
    pub fn partial_count(&self) -> usize {
        self.older.len() + self.newest.len()
    }

    /// What a partial frame of `frame_len` bytes in `chunk_cnt` chunks from `device` is charged:
    /// the frame buffer, the received-chunk bitmap, and the bookkeeping (the partial itself and
    /// the device key held in the age index).
    pub fn partial_cost(device: &str, frame_len: u32, chunk_cnt: u16) -> usize {
        let bitmap = usize::from(chunk_cnt).div_ceil(64) * std::mem::size_of::<u64>();
        frame_len as usize
            + bitmap
            + std::mem::size_of::<Partial>()
            + std::mem::size_of::<(u64, (String, u16))>()
            + device.len()
    }

    /// Accepts one payload published by `device` on a frame topic. Copies whole images; use
    /// [`Assembler::accept_bytes`] to pass them through without a copy.
    pub fn accept(&mut self, device: &str, payload: &[u8], now: Instant) -> Accepted {
        match whole_format(payload) {
            Some(format) => self.accept_whole(device, format, || Bytes::copy_from_slice(payload)),
            None => self.accept_other(device, payload, now),
        }
    }

    /// Like [`Assembler::accept`], but a whole image shares `payload`'s buffer.
    pub fn accept_bytes(&mut self, device: &str, payload: &Bytes, now: Instant) -> Accepted {
        match whole_format(payload) {
            Some(format) => self.accept_whole(device, format, || payload.clone()),
            None => self.accept_other(device, payload, now),
        }
    }

    /// Drops every partial frame idle for longer than `idle_timeout` (`timeout`) and forgets
    /// devices with nothing left in flight.
    pub fn expire(&mut self, now: Instant) -> Vec<Loss> {
        let timeout = self.cfg.idle_timeout;
        let idle = |t: Instant| now.saturating_duration_since(t) > timeout;
        let stale: Vec<(String, u16)> = self
            .devices
            .iter()
            .flat_map(|(device, state)| {
                state
                    .partials
                    .iter()
                    .filter(|p| idle(p.last_seen))
                    .map(move |p| (device.clone(), p.header.frame_id))
            })
            .collect();
        let losses = stale
            .into_iter()
            .filter_map(|(device, frame_id)| {
                self.drop_partial(&device, frame_id, now, LossReason::Timeout)
            })
            .collect();
        self.devices.retain(|_, state| {
            state.recent.retain(|r| !idle(r.at));
            !state.partials.is_empty() || !state.recent.is_empty()
        });
        losses
    }

    /// Forgets a device whose session ended; its partial frames are lost with reason `timeout`.
    pub fn remove_device(&mut self, device: &str) -> Vec<Loss> {
        let ids: Vec<u16> = self
            .devices
            .get(device)
            .map(|s| s.partials.iter().map(|p| p.header.frame_id).collect())
            .unwrap_or_default();
        let losses = ids
            .into_iter()
            .filter_map(|id| {
                self.take_partial(device, id)
                    .map(|_| loss(device, Some(id), LossReason::Timeout))
            })
            .collect();
        self.devices.remove(device);
        losses
    }

    fn accept_whole(
        &mut self,
        device: &str,
        format: PixelFormat,
        data: impl FnOnce() -> Bytes,
    ) -> Accepted {
        let data = data();
        if data.len() > self.cfg.max_frame_bytes {
            return Accepted::Rejected(loss(device, None, LossReason::TooLarge));
        }
        let (width, height) = probe_dimensions(&data);
        Accepted::Whole(Frame {
            frame_id: None,
            format,
            width,
            height,
            content_type: format.content_type(width, height),
            data,
        })
    }

    fn accept_other(&mut self, device: &str, payload: &[u8], now: Instant) -> Accepted {
        if !fchunk::is_fchunk(payload) {
            return Accepted::Rejected(loss(device, None, LossReason::BadChunk));
        }
        let mut losses = Vec::new();
        let complete = self.accept_chunk(device, payload, now, &mut losses);
        Accepted::Chunk { complete, losses }
    }

    fn accept_chunk(
        &mut self,
        device: &str,
        payload: &[u8],
        now: Instant,
        losses: &mut Vec<Loss>,
    ) -> Option<Frame> {
        let chunk = match fchunk::parse(payload, self.cfg.max_frame_bytes) {
            Ok(chunk) => chunk,
            Err(e) => {
                let reason = match e {
                    FchunkError::TooLarge { .. } => LossReason::TooLarge,
                    _ => LossReason::BadChunk,
                };
                if reason == LossReason::TooLarge {
                    // Report an oversized frame once, not once per chunk.
                    if let Ok(c) = fchunk::parse(payload, usize::MAX) {
                        if self.recently_finished(device, &c.header) {
                            return None;
                        }
                        self.remember(device, &c.header, now);
                    }
                }
                losses.push(loss(device, fchunk::peek_frame_id(payload), reason));
                return None;
            }
        };
        let h = chunk.header;
        let existing = self
            .partial_mut(device, h.frame_id)
            .map(|p| p.header.same_frame(&h));
        match existing {
            Some(true) => {}
            Some(false) => {
                losses.extend(self.drop_partial(device, h.frame_id, now, LossReason::Evicted));
                self.start_partial(device, h, now, losses)?;
            }
            None => {
                if self.recently_finished(device, &h) {
                    return None;
                }
                self.start_partial(device, h, now, losses)?;
            }
        }

        let partial = self.partial_mut(device, h.frame_id)?;
        let idx = usize::from(h.chunk_idx);
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        let seen = partial.received.get_mut(word)?;
        if *seen & bit != 0 {
            return None; // duplicate
        }
        *seen |= bit;
        let offset = h.offset();
        partial
            .buf
            .get_mut(offset..offset + chunk.data.len())?
            .copy_from_slice(chunk.data);
        partial.missing = partial.missing.saturating_sub(1);
        partial.last_seen = now;
        if partial.missing > 0 {
            return None;
        }
        self.finish(device, h.frame_id, now, losses)
    }

    /// Moves a complete partial out, checks its CRC and builds the frame.
    fn finish(
        &mut self,
        device: &str,
        frame_id: u16,
        now: Instant,
        losses: &mut Vec<Loss>,
    ) -> Option<Frame> {
        let partial = self.take_partial(device, frame_id)?;
        let h = partial.header;
        self.remember(device, &h, now);
        if crc32fast::hash(&partial.buf) != h.crc32 {
            losses.push(loss(device, Some(frame_id), LossReason::Crc));
            return None;
        }
        let data = Bytes::from(partial.buf);
        let (mut width, mut height) = (u32::from(h.width), u32::from(h.height));
        if h.format == PixelFormat::Jpeg && (width == 0 || height == 0) {
            (width, height) = probe_dimensions(&data);
        }
        Some(Frame {
            frame_id: Some(frame_id),
            format: h.format,
            width,
            height,
            content_type: h.format.content_type(width, height),
            data,
        })
    }

    /// Makes room for and allocates a new partial frame. `None` when the frame was refused (the
    /// loss is already pushed).
    fn start_partial(
        &mut self,
        device: &str,
        h: ChunkHeader,
        now: Instant,
        losses: &mut Vec<Loss>,
    ) -> Option<()> {
        let cost = Self::partial_cost(device, h.frame_len, h.chunk_cnt);
        if cost > self.cfg.max_total_bytes {
            losses.push(loss(device, Some(h.frame_id), LossReason::Memory));
            // Its later chunks are ignored rather than reported again.
            self.remember(device, &h, now);
            return None;
        }
        // Per-device limit: the newest frame wins.
        while self.device_partials(device) >= self.cfg.max_partial_per_device {
            let oldest = self.devices.get(device)?.partials.first()?.header.frame_id;
            losses.extend(self.drop_partial(device, oldest, now, LossReason::Evicted));
        }
        if self.used + cost > self.cfg.max_total_bytes {
            losses.extend(self.expire(now));
        }
        while self.used + cost > self.cfg.max_total_bytes {
            let Some((victim, id)) = self.memory_victim(device) else {
                losses.push(loss(device, Some(h.frame_id), LossReason::Memory));
                self.remember(device, &h, now);
                return None;
            };
            losses.extend(self.drop_partial(&victim, id, now, LossReason::Memory));
        }

        let frame_len = h.frame_len as usize;
        let mut buf = Vec::new();
        if buf.try_reserve_exact(frame_len).is_err() {
            losses.push(loss(device, Some(h.frame_id), LossReason::Memory));
            // Its later chunks are ignored rather than reported again.
            self.remember(device, &h, now);
            return None;
        }
        buf.resize(frame_len, 0);
        let partial = Partial {
            header: h,
            buf,
            received: vec![0; usize::from(h.chunk_cnt).div_ceil(64)],
            missing: u32::from(h.chunk_cnt),
            seq: self.next_seq,
            last_seen: now,
            cost,
        };
        self.next_seq += 1;
        self.used += cost;
        let state = self.devices.entry(device.to_owned()).or_default();
        state.partials.push(partial);
        self.reindex(device);
        Some(())
    }

    /// The partial to evict for memory: the oldest that is not its device's newest — counting
    /// every partial of `incoming` as not-newest, since the frame being started will be — and
    /// only then the oldest of the rest.
    fn memory_victim(&self, incoming: &str) -> Option<(String, u16)> {
        let older = self.older.first_key_value();
        let own_newest = self
            .devices
            .get(incoming)
            .and_then(|s| s.partials.last())
            .map(|p| (p.seq, p.header.frame_id));
        let pick = match (older, own_newest) {
            (Some((&seq, _)), Some((own_seq, own_id))) if own_seq < seq => {
                (incoming.to_owned(), own_id)
            }
            (Some((_, entry)), _) => entry.clone(),
            (None, Some((_, own_id))) => (incoming.to_owned(), own_id),
            (None, None) => self.newest.first_key_value()?.1.clone(),
        };
        Some(pick)
    }

    fn device_partials(&self, device: &str) -> usize {
        self.devices.get(device).map_or(0, |s| s.partials.len())
    }

    fn partial_mut(&mut self, device: &str, frame_id: u16) -> Option<&mut Partial> {
        self.devices
            .get_mut(device)?
            .partials
            .iter_mut()
            .find(|p| p.header.frame_id == frame_id)
    }

    fn recently_finished(&self, device: &str, h: &ChunkHeader) -> bool {
        self.devices.get(device).is_some_and(|s| {
            s.recent.iter().any(|r| {
                r.frame_id == h.frame_id && r.frame_len == h.frame_len && r.crc32 == h.crc32
            })
        })
    }

    /// Drops a partial frame as lost, remembering it so its late chunks are ignored.
    fn drop_partial(
        &mut self,
        device: &str,
        frame_id: u16,
        now: Instant,
        reason: LossReason,
    ) -> Option<Loss> {
        let partial = self.take_partial(device, frame_id)?;
        self.remember(device, &partial.header, now);
        Some(loss(device, Some(frame_id), reason))
    }

    fn remember(&mut self, device: &str, h: &ChunkHeader, now: Instant) {
        let state = self.devices.entry(device.to_owned()).or_default();
        if state.recent.len() >= RECENT_PER_DEVICE {
            state.recent.pop_front();
        }
        state.recent.push_back(Recent {
            frame_id: h.frame_id,
            frame_len: h.frame_len,
            crc32: h.crc32,
            at: now,
        });
    }

    /// Removes a partial frame and releases its memory. The device entry stays (it may hold
    /// recent-frame memory); `expire` and `remove_device` drop empty entries.
    fn take_partial(&mut self, device: &str, frame_id: u16) -> Option<Partial> {
        let state = self.devices.get_mut(device)?;
        let pos = state
            .partials
            .iter()
            .position(|p| p.header.frame_id == frame_id)?;
        let partial = state.partials.remove(pos);
        self.older.remove(&partial.seq);
        self.newest.remove(&partial.seq);
        self.used = self.used.saturating_sub(partial.cost);
        self.reindex(device);
        Some(partial)
    }

    /// Re-files a device's partials in the age indexes after its list changed.
    fn reindex(&mut self, device: &str) {
        let Some(state) = self.devices.get(device) else {
            return;
        };
        let last = state.partials.len().saturating_sub(1);
        for (i, p) in state.partials.iter().enumerate() {
            let entry = (device.to_owned(), p.header.frame_id);
            if i == last {
                self.older.remove(&p.seq);
                self.newest.insert(p.seq, entry);
            } else {
                self.newest.remove(&p.seq);
                self.older.insert(p.seq, entry);
            }
        }
    }
}

fn loss(device: &str, frame_id: Option<u16>, reason: LossReason) -> Loss {
    Loss {
        device: device.to_owned(),
        frame_id,
        reason,
    }
}

fn whole_format(payload: &[u8]) -> Option<PixelFormat> {
    if payload.starts_with(&[0xFF, 0xD8]) {
        Some(PixelFormat::Jpeg)
    } else if payload.starts_with(&[0x89, b'P', b'N', b'G']) {
        Some(PixelFormat::Png)
    } else {
        None
    }
}

fn probe_dimensions(data: &[u8]) -> (u32, u32) {
    super::thumbnail::info(data).map_or((0, 0), |i| (i.width, i.height))
}

#[cfg(test)]
#[path = "assembler_tests.rs"]
mod tests;
