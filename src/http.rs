//! The broker's HTTP server (axum): `/healthz`, `/metrics`, the admin API `/api/blocks`, and
//! stored camera media under `/media/`.

use crate::media::store::Kind;
use crate::mqtt::Broker;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The routes, testable without a socket.
pub fn app(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/blocks", get(blocks))
        .route("/api/sessions", get(sessions))
        .route("/media/{camera}/latest.jpg", get(latest_frame))
        .route("/media/{camera}/latest-thumb.jpg", get(latest_thumb))
        .route("/media/{id}", get(media_by_id))
        .with_state(broker)
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let mut text = broker
        .metrics
        .render(broker.router.queue_depth(), broker.router.log_stats());
    if let Some(engine) = &broker.blocks {
        text.push_str(&crate::metrics::render_blocks(&engine.metrics()));
    }
    if let Some(media) = &broker.media {
        text.push_str(&crate::metrics::render_media(media));
    }
    if let Some(store) = &broker.store {
        text.push_str(&store.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Persistent sessions with their queues (what is waiting for offline devices, and what
/// their queue limits dropped).
async fn sessions(State(broker): State<Arc<Broker>>) -> Json<Value> {
    let sessions = broker
        .store
        .as_ref()
        .map(|s| s.sessions())
        .unwrap_or_default();
    Json(json!({
        "persistence": broker.store.is_some(),
        "sessions": sessions,
    }))
}

/// Every bound block with its version, load time, counters and last error.
async fn blocks(State(broker): State<Arc<Broker>>) -> Json<Value> {
    let Some(engine) = &broker.blocks else {
        return Json(json!({ "blocks": [], "reload": null }));
    };
    let blocks: Vec<Value> = engine
        .status()
        .into_iter()
        .map(|b| {
            let c = &b.counters;
            json!({
                "name": b.name,
                "event": b.event.as_str(),
                "topics": b.topics,
                "script": b.script.display().to_string(),
                "version": b.version,
                "loaded_at": unix_ms(b.loaded_at),
                "last_error": b.last_error.map(|e| json!({ "at": unix_ms(e.at), "message": e.message })),
                "invocations": c.invocations,
                "verdicts": { "pass": c.pass, "modify": c.modify, "drop": c.drop, "consume": c.consume },
                "errors": c.errors,
                "timeouts": c.timeouts,
                "publishes": c.publishes,
                "hop_refused": c.hop_refused,
                "latency_p99_le_seconds": c.latency.quantile_upper_bound(0.99),
            })
        })
        .collect();
    let r = engine.reload_status();
    Json(json!({
        "blocks": blocks,
        "reload": {
            "generation": r.generation,
            "ok": r.reloads_ok,
            "failed": r.reloads_failed,
            "last_error": r.last_error.map(|e| json!({ "at": unix_ms(e.at), "message": e.message })),
        }
    }))
}

/// Errors of the media routes, each one HTTP status.
#[derive(Debug, thiserror::Error)]
enum MediaHttpError {
    #[error("not found")]
    NotFound,
    #[error("media storage is unavailable")]
    Unavailable,
    #[error("reading stored media failed")]
    Io,
}

impl IntoResponse for MediaHttpError {
    fn into_response(self) -> Response {
        let status = match self {
            MediaHttpError::NotFound => StatusCode::NOT_FOUND,
            MediaHttpError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            MediaHttpError::Io => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{self}\n")).into_response()
    }
}

async fn latest_frame(
    State(b): State<Arc<Broker>>,
    Path(camera): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MediaHttpError> {
    latest(&b, &camera, Kind::Frame, &headers).await
}

async fn latest_thumb(
    State(b): State<Arc<Broker>>,
    Path(camera): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MediaHttpError> {
    latest(&b, &camera, Kind::Thumb, &headers).await
}

async fn latest(
    b: &Broker,
    camera: &str,
    kind: Kind,
    headers: &HeaderMap,
) -> Result<Response, MediaHttpError> {
    let store = b
        .media
        .as_ref()
        .and_then(|m| m.store.clone())
        .ok_or(MediaHttpError::Unavailable)?;
    if !crate::media::store::valid_camera(camera) {
        return Err(MediaHttpError::NotFound);
    }
    let stored = store.latest(camera, kind).ok_or(MediaHttpError::NotFound)?;
    // The latest image changes: clients revalidate every time and get 304 while it has not.
    send_file(
        &stored.path,
        &stored.content_type,
        &stored.id,
        "no-cache",
        headers,
    )
    .await
}

async fn media_by_id(
    State(b): State<Arc<Broker>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MediaHttpError> {
    let store = b
        .media
        .as_ref()
        .and_then(|m| m.store.clone())
        .ok_or(MediaHttpError::Unavailable)?;
    let (path, content_type) = store.get(&id).ok_or(MediaHttpError::NotFound)?;
    // An id names one stored file forever.
    send_file(
        &path,
        &content_type,
        &id,
        "public, max-age=31536000, immutable",
        &headers,
    )
    .await
}

async fn send_file(
    path: &std::path::Path,
    content_type: &str,
    id: &str,
    cache: &'static str,
    headers: &HeaderMap,
) -> Result<Response, MediaHttpError> {
    let etag = format!("\"{id}\"");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_string()),
            ],
        )
            .into_response());
    }
    let body = match tokio::fs::read(path).await {
        Ok(b) => b,
        // Retention may have removed it between lookup and read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MediaHttpError::NotFound),
        Err(_) => return Err(MediaHttpError::Io),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache.to_string()),
        ],
        body,
    )
        .into_response())
}
