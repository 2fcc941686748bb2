//! moonwire: an MQTT 3.1.1/5.0 broker for home-automation and security devices.
//!
//! Module map (a PUBLISH flows top to bottom):
//! - [`auth`]: users file (argon2), anonymous policy, login back-off, topic ACLs.
//! - [`blocks`]: Lua blocks — sandboxed scripts bound to topics, connects, subscribes, timers.
//! - [`certs`]: `moonwire certs` — local CA, server and device certificates.
//! - [`config`]: layered configuration (defaults → file → environment) and validation.
//! - [`app`]: wiring; [`app::App::start`] returns the bound addresses and a shutdown handle.
//! - [`edge`]: TCP, TLS and WebSocket listeners with connection limits.
//! - [`mqtt`]: sessions — codec, CONNECT, keep alive, wills, takeover, acks.
//! - [`pipeline`]: the ordered stages every publish passes before routing, and after-publish taps.
//! - [`router`]: the only module that uses `rumqttd` (routing, subscriptions, retained, sessions).
//! - [`http`]: `/healthz` and `/metrics`.
//! - [`media`]: camera frames — fchunk reassembly, thumbnails, worker pool, storage.
//! - [`metrics`]: counters and their Prometheus rendering.
//! - [`watch`]: file change notifications for hot reload.

pub mod app;
pub mod auth;
pub mod blocks;
pub mod certs;
pub mod config;
pub mod edge;
pub mod http;
pub mod media;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod router;
pub mod store;
pub mod watch;
