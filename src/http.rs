//! The broker's HTTP server (axum): `/healthz`, `/metrics` and the admin API `/api/blocks`.

use crate::mqtt::Broker;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
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
        .with_state(broker)
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let mut text = broker.metrics.render(broker.router.queue_depth());
    if let Some(engine) = &broker.blocks {
        text.push_str(&crate::metrics::render_blocks(&engine.metrics()));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
