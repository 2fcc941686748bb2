//! The media service wired into the broker: the frame assembler as pipeline stage 3, the
//! `media.*` functions for Lua blocks (thumbnails on the bounded pool, atomic storage), and the
//! state the HTTP routes read.

use super::PixelFormat;
use super::assembler::{Accepted, Assembler, AssemblerConfig, Frame, Loss, LossReason};
use super::pool::{JobError, MediaPool};
use super::store::{Kind, MediaStore, Retention, StoreError};
use super::thumbnail::{self, DecodeLimits, ImageInput, OutputFormat, ThumbOptions};
use crate::blocks::broker::QueuePublisher;
use crate::blocks::mlua::{self, Lua, LuaString, Table, Value};
use crate::blocks::{BlockInfo, HostExtension, Publisher};
use crate::pipeline::{
    DropCode, Message, Origin, Props, Stage, Step, Verdict, filter_matches, now_ms,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Settings of the media service, from `[media]`.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub frame_topics: Vec<String>,
    pub assembler: AssemblerConfig,
    pub workers: usize,
    pub queue: usize,
    pub thumb_width: u32,
    pub thumb_quality: u8,
    pub limits: DecodeLimits,
    pub retention: Retention,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct MediaMetrics {
    pub frames_completed: AtomicU64,
    pub losses: [AtomicU64; 6],
    pub thumbnails: AtomicU64,
    pub thumbnail_errors: AtomicU64,
    pub stored: AtomicU64,
    pub store_errors: AtomicU64,
}

/// Frames, thumbnails and storage.
pub struct MediaService {
    pub settings: MediaSettings,
    pub pool: MediaPool,
    /// `None` when the data directory could not be opened: routing goes on, storing fails.
    pub store: Option<Arc<MediaStore>>,
    pub metrics: MediaMetrics,
    assembler: Mutex<Reassembly>,
    publisher: Arc<QueuePublisher>,
}

struct Reassembly {
    assembler: Assembler,
    /// Where each device's loss reports go (`<topic's parent>/status`).
    status_topic: HashMap<String, String>,
}

impl Reassembly {
    /// Pairs each loss with the status topic of the device it happened to.
    fn addressed(&self, losses: Vec<Loss>) -> Vec<(Loss, Option<String>)> {
        losses
            .into_iter()
            .map(|l| {
                let t = self.status_topic.get(&l.device).cloned();
                (l, t)
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MediaServiceError {
    #[error("media worker pool: {0}")]
    Pool(#[from] super::pool::PoolError),
}

impl MediaService {
    pub fn start(
        settings: MediaSettings,
        data_dir: &std::path::Path,
        publisher: Arc<QueuePublisher>,
    ) -> Result<Arc<MediaService>, MediaServiceError> {
        let store = match MediaStore::open(data_dir, settings.retention) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::error!(error = %e, "media store unavailable: frames are still routed, media.store fails");
                None
            }
        };
        let threads = if settings.workers == 0 {
            MediaPool::default_threads()
        } else {
            settings.workers
        };
        let pool = MediaPool::new(threads, settings.queue.max(1))?;
        Ok(Arc::new(MediaService {
            assembler: Mutex::new(Reassembly {
                assembler: Assembler::new(settings.assembler.clone()),
                status_topic: HashMap::new(),
            }),
            settings,
            pool,
            store,
            metrics: MediaMetrics::default(),
            publisher,
        }))
    }

    /// Bytes held by partial frames.
    pub fn reassembly_memory(&self) -> usize {
        self.assembler.lock().assembler.memory_used()
    }

    fn is_frame_topic(&self, topic: &str) -> bool {
        self.settings
            .frame_topics
            .iter()
            .any(|f| filter_matches(f, topic))
    }

    /// Drops partial frames idle past the timeout; call periodically.
    pub fn expire(&self) {
        let losses = {
            let mut r = self.assembler.lock();
            let losses = r.assembler.expire(Instant::now());
            r.addressed(losses)
        };
        self.report(losses);
    }

    /// A client disconnected: its partial frames are lost (reported as `timeout`).
    pub fn device_gone(&self, device: &str) {
        let losses = {
            let mut r = self.assembler.lock();
            let losses = r.assembler.remove_device(device);
            let losses = r.addressed(losses);
            r.status_topic.remove(device);
            losses
        };
        self.report(losses);
    }

    fn report(&self, losses: Vec<(Loss, Option<String>)>) {
        for (loss, topic) in losses {
            let i = LossReason::ALL
                .iter()
                .position(|r| *r == loss.reason)
                .unwrap_or(0);
            self.metrics.losses[i].fetch_add(1, Relaxed);
            tracing::debug!(device = loss.device, frame_id = ?loss.frame_id, reason = loss.reason.as_str(), "frame lost");
            let Some(topic) = topic else { continue };
            let msg = internal_message(&topic, loss.status_json().into_bytes(), Props::default());
            if let Err(e) = self.publisher.publish(msg) {
                tracing::warn!(error = e, "frame status not published");
            }
        }
    }

    fn frame_message(&self, original: &Message, frame: Frame) -> Message {
        let mut m = original.clone();
        m.payload = frame.data;
        m.props.content_type = Some(frame.content_type);
        if let Some(id) = frame.frame_id {
            m.props.user.push(("frame_id".into(), id.to_string()));
        }
        m
    }
}

fn status_topic(topic: &str) -> String {
    match topic.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/status"),
        None => "status".to_string(),
    }
}

/// A message the broker itself publishes (loss reports). The reserved client id is never a
/// client's, so the ACL treats it as the broker.
fn internal_message(topic: &str, payload: Vec<u8>, props: Props) -> Message {
    Message {
        topic: topic.to_string(),
        payload: payload.into(),
        qos: 0,
        retain: false,
        props,
        origin: Origin {
            client_id: crate::mqtt::INTERNAL_CLIENT_ID.to_string(),
            username: None,
            hop: 0,
        },
        received_at: now_ms(),
    }
}

/// Pipeline stage 3: whole frames pass with their content type; chunks are consumed until a
/// frame completes, which continues as one publish on the same topic.
pub struct FrameStage {
    pub media: Arc<MediaService>,
}

impl Stage for FrameStage {
    fn name(&self) -> &'static str {
        "frames"
    }

    fn wants(&self, topic: &str, _: usize) -> bool {
        self.media.is_frame_topic(topic)
    }

    fn process(&self, msg: &Message) -> Step {
        // Only what devices publish is reassembled: the broker's own reports and block
        // republishes pass, so a filter that also covers `…/status` cannot feed on itself.
        if msg.origin.hop > 0 || msg.origin.client_id == crate::mqtt::INTERNAL_CLIENT_ID {
            return Step::Now(Verdict::Pass);
        }
        let device = msg.origin.client_id.as_str();
        let (accepted, losses) = {
            let mut r = self.media.assembler.lock();
            if !r.status_topic.contains_key(device) {
                r.status_topic
                    .insert(device.to_string(), status_topic(&msg.topic));
            }
            match r
                .assembler
                .accept_bytes(device, &msg.payload, Instant::now())
            {
                Accepted::Chunk { complete, losses } => {
                    let losses = r.addressed(losses);
                    (
                        Accepted::Chunk {
                            complete,
                            losses: vec![],
                        },
                        losses,
                    )
                }
                Accepted::Rejected(loss) => {
                    let losses = r.addressed(vec![loss.clone()]);
                    (Accepted::Rejected(loss), losses)
                }
                whole => (whole, vec![]),
            }
        };
        let m = &self.media;
        m.report(losses);
        let verdict = match accepted {
            Accepted::Whole(frame) => {
                m.metrics.frames_completed.fetch_add(1, Relaxed);
                Verdict::Modify(m.frame_message(msg, frame))
            }
            Accepted::Chunk { complete, .. } => match complete {
                Some(frame) => {
                    m.metrics.frames_completed.fetch_add(1, Relaxed);
                    Verdict::Modify(m.frame_message(msg, frame))
                }
                None => Verdict::Consume,
            },
            Accepted::Rejected(loss) => {
                let reason = format!("not a frame: {}", loss.reason.as_str());
                Verdict::Drop {
                    code: DropCode::PayloadFormatInvalid,
                    reason,
                }
            }
        };
        Step::Now(verdict)
    }
}

/// `image/x-raw-rgb565;width=W;height=H` and friends → the raw format and size.
fn raw_from_content_type(ct: &str) -> Option<(PixelFormat, u32, u32)> {
    let mut parts = ct.split(';').map(str::trim);
    let format = match parts.next()? {
        "image/x-raw-rgb565" => PixelFormat::Rgb565Le,
        "image/x-raw-yuyv" => PixelFormat::Yuyv,
        "image/x-raw-gray8" => PixelFormat::Gray8,
        _ => return None,
    };
    let (mut w, mut h) = (None, None);
    for p in parts {
        match p.split_once('=') {
            Some(("width", v)) => w = v.parse().ok(),
            Some(("height", v)) => h = v.parse().ok(),
            _ => {}
        }
    }
    Some((format, w?, h?))
}

/// The `media` namespace for blocks.
pub struct MediaExtension {
    pub media: Arc<MediaService>,
}

fn opt_str(t: &Option<Table>, key: &str) -> mlua::Result<Option<String>> {
    match t {
        Some(t) => t.get::<Option<String>>(key),
        None => Ok(None),
    }
}

fn opt_u32(t: &Option<Table>, key: &str) -> mlua::Result<Option<u32>> {
    match t {
        Some(t) => t.get::<Option<u32>>(key),
        None => Ok(None),
    }
}

impl HostExtension for MediaExtension {
    fn name(&self) -> &str {
        "media"
    }

    fn install(&self, lua: &Lua, _block: &BlockInfo) -> mlua::Result<()> {
        let t = lua.create_table()?;

        // media.info(bytes [, content_type]) -> {format, width, height} | nil, err
        t.set(
            "info",
            lua.create_function(|lua, (bytes, ct): (LuaString, Option<String>)| {
                let info = match ct.as_deref().and_then(raw_from_content_type) {
                    Some((format, width, height)) => Ok(thumbnail::Info {
                        format,
                        width,
                        height,
                    }),
                    None => thumbnail::info(&bytes.as_bytes()),
                };
                match info {
                    Ok(i) => {
                        let r = lua.create_table()?;
                        r.set("format", i.format.as_str())?;
                        r.set("width", i.width)?;
                        r.set("height", i.height)?;
                        Ok((Value::Table(r), Value::Nil))
                    }
                    Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?))),
                }
            })?,
        )?;

        // media.thumbnail(bytes, {width, height, quality, format, camera, content_type})
        //   -> thumb, {width, height, content_type} | nil, err
        let media = self.media.clone();
        t.set(
            "thumbnail",
            lua.create_async_function(move |lua, (bytes, opts): (LuaString, Option<Table>)| {
                let media = media.clone();
                let data = bytes.as_bytes().to_vec();
                let parsed = (|| -> mlua::Result<_> {
                    let width = opt_u32(&opts, "width")?;
                    let height = opt_u32(&opts, "height")?;
                    let quality =
                        opt_u32(&opts, "quality")?.unwrap_or(media.settings.thumb_quality as u32);
                    let format = match opt_str(&opts, "format")?.as_deref() {
                        None | Some("jpeg") | Some("jpg") => OutputFormat::Jpeg,
                        Some("png") => OutputFormat::Png,
                        Some(other) => {
                            return Err(mlua::Error::runtime(format!(
                                "media.thumbnail: unknown format `{other}`"
                            )));
                        }
                    };
                    let (width, height) = match (width, height) {
                        (None, None) => (Some(media.settings.thumb_width), None),
                        wh => wh,
                    };
                    let camera = opt_str(&opts, "camera")?.unwrap_or_else(|| "-".into());
                    let raw = opt_str(&opts, "content_type")?
                        .as_deref()
                        .and_then(raw_from_content_type);
                    Ok((
                        ThumbOptions {
                            width,
                            height,
                            quality: quality.clamp(1, 100) as u8,
                            format,
                        },
                        camera,
                        raw,
                    ))
                })();
                async move {
                    let (opts, camera, raw) = parsed?;
                    let limits = media.settings.limits;
                    let job = media.pool.submit(&camera, move || {
                        let input = match raw {
                            Some((format, width, height)) => ImageInput::Raw {
                                format,
                                width,
                                height,
                                data: &data,
                            },
                            None => ImageInput::Encoded(&data),
                        };
                        thumbnail::thumbnail(input, &opts, &limits)
                    });
                    let result = match job {
                        Ok(handle) => match handle.await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(JobError::Dropped) => {
                                Err("dropped: a newer frame of this camera is waiting".to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        },
                        Err(e) => Err(e.to_string()),
                    };
                    match result {
                        Ok(thumb) => {
                            media.metrics.thumbnails.fetch_add(1, Relaxed);
                            let meta = lua.create_table()?;
                            meta.set("width", thumb.width)?;
                            meta.set("height", thumb.height)?;
                            meta.set("content_type", thumb.content_type)?;
                            Ok((
                                Value::String(lua.create_string(&thumb.bytes)?),
                                Value::Table(meta),
                            ))
                        }
                        Err(e) => {
                            media.metrics.thumbnail_errors.fetch_add(1, Relaxed);
                            Ok((Value::Nil, Value::String(lua.create_string(e)?)))
                        }
                    }
                }
            })?,
        )?;

        // media.store(bytes, {camera, kind, content_type}) -> {id, url, bytes, ts} | nil, err
        let media = self.media.clone();
        t.set(
            "store",
            lua.create_async_function(move |lua, (bytes, opts): (LuaString, Option<Table>)| {
                let media = media.clone();
                let data = bytes.as_bytes().to_vec();
                let parsed = (|| -> mlua::Result<_> {
                    let camera = opt_str(&opts, "camera")?
                        .ok_or_else(|| mlua::Error::runtime("media.store: camera is required"))?;
                    let kind = opt_str(&opts, "kind")?.unwrap_or_else(|| "frame".into());
                    let ct = opt_str(&opts, "content_type")?.unwrap_or_else(|| "image/jpeg".into());
                    Ok((camera, kind, ct))
                })();
                async move {
                    let (camera, kind, ct) = parsed?;
                    let result = match (&media.store, Kind::parse(&kind)) {
                        (None, _) => {
                            Err("media store unavailable (see the broker log)".to_string())
                        }
                        (_, Err(e)) => Err(e.to_string()),
                        (Some(store), Ok(kind)) => {
                            let store = store.clone();
                            // File I/O off the Lua worker.
                            tokio::task::spawn_blocking(move || {
                                store.store(&data, &camera, kind, &ct)
                            })
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r: Result<_, StoreError>| r.map_err(|e| e.to_string()))
                        }
                    };
                    match result {
                        Ok(stored) => {
                            media.metrics.stored.fetch_add(1, Relaxed);
                            let r = lua.create_table()?;
                            r.set("url", format!("/media/{}", stored.id))?;
                            r.set("id", stored.id)?;
                            r.set("bytes", stored.bytes)?;
                            r.set("ts", stored.ts)?;
                            Ok((Value::Table(r), Value::Nil))
                        }
                        Err(e) => {
                            media.metrics.store_errors.fetch_add(1, Relaxed);
                            Ok((Value::Nil, Value::String(lua.create_string(e)?)))
                        }
                    }
                }
            })?,
        )?;
        lua.globals().set("media", t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_content_types_parse() {
        assert_eq!(
            raw_from_content_type("image/x-raw-rgb565;width=320;height=240"),
            Some((PixelFormat::Rgb565Le, 320, 240))
        );
        assert_eq!(raw_from_content_type("image/jpeg"), None);
        assert_eq!(raw_from_content_type("image/x-raw-gray8;width=3"), None);
        assert_eq!(status_topic("cameras/porch/frame"), "cameras/porch/status");
    }
}
