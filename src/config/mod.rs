//! Configuration: the serde tree, layered loading (embedded defaults → `--config FILE` →
//! `MOONWIRE__SECTION__KEY` environment variables) and validation into [`ConfigError`].

mod units;

pub use units::{ByteSize, parse_size};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded defaults, printed by `moonwire check-config --print-defaults`.
pub const DEFAULTS: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    File {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("invalid config: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("invalid config key `{key}`: {reason}")]
    Key { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub ws: WsConfig,
    pub http: HttpConfig,
    pub limits: LimitsConfig,
    pub router: RouterConfig,
    pub storage: StorageConfig,
    pub shutdown: ShutdownConfig,
    pub auth: AuthConfig,
    /// Topic access rules, tried in order (see `docs/SECURITY.md`).
    #[serde(default)]
    pub acl: Vec<crate::auth::Rule>,
    /// Camera frames, thumbnails and media storage.
    pub media: MediaConfig,
    /// Settings of the Lua blocks runtime.
    pub block_engine: BlockEngineConfig,
    /// Lua block bindings (`[[blocks]]`), run in this order (see `docs/BLOCKS.md`).
    #[serde(default)]
    pub blocks: Vec<crate::blocks::BlockConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    pub enabled: bool,
    /// Topics where the frame assembler runs (whole JPEG/PNG payloads and fchunk chunks).
    pub frame_topics: Vec<String>,
    pub max_frame_size: ByteSize,
    pub max_reassembly_memory: ByteSize,
    pub max_partial_frames_per_device: usize,
    #[serde(with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Thumbnail worker threads; 0 = one per core.
    pub workers: usize,
    /// Pending thumbnail jobs; when full the oldest of the same camera is dropped.
    pub queue: usize,
    pub thumb_width: u32,
    pub thumb_quality: u8,
    /// Largest image decoded, in pixels (decompression bombs).
    pub max_pixels: u64,
    pub max_decode_memory: ByteSize,
    pub retention_count: usize,
    pub retention_bytes: ByteSize,
}

impl MediaConfig {
    pub fn settings(&self) -> crate::media::service::MediaSettings {
        crate::media::service::MediaSettings {
            frame_topics: self.frame_topics.clone(),
            assembler: crate::media::assembler::AssemblerConfig {
                max_frame_bytes: self.max_frame_size.as_usize(),
                max_total_bytes: self.max_reassembly_memory.as_usize(),
                max_partial_per_device: self.max_partial_frames_per_device,
                idle_timeout: self.frame_timeout,
            },
            workers: self.workers,
            queue: self.queue,
            thumb_width: self.thumb_width,
            thumb_quality: self.thumb_quality,
            limits: crate::media::thumbnail::DecodeLimits {
                max_pixels: self.max_pixels,
                max_bytes: self.max_decode_memory.as_usize(),
            },
            retention: crate::media::store::Retention {
                max_count_per_camera: self.retention_count,
                max_bytes_per_camera: self.retention_bytes.0,
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEngineConfig {
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    pub queue_capacity: usize,
    pub after_queue_capacity: usize,
    pub max_hops: u8,
    pub max_publishes_per_call: u32,
    pub max_payload: ByteSize,
    pub scripts_dir: PathBuf,
    /// Empty: `<storage.data_dir>/blocks.redb`.
    pub kv_path: String,
    pub hot_reload: bool,
    /// Block publishes waiting to enter the pipeline; beyond it `mqtt.publish` fails.
    pub publish_queue: usize,
}

impl Config {
    /// The blocks engine's view of `[block_engine]` and `[[blocks]]`.
    pub fn blocks_config(&self) -> crate::blocks::BlocksConfig {
        let e = &self.block_engine;
        crate::blocks::BlocksConfig {
            workers: (e.workers > 0).then_some(e.workers),
            queue_capacity: e.queue_capacity,
            after_queue_capacity: e.after_queue_capacity,
            max_hops: e.max_hops,
            max_publishes_per_call: e.max_publishes_per_call,
            max_payload: crate::blocks::ByteSize(e.max_payload.0),
            scripts_dir: e.scripts_dir.clone(),
            kv_path: if e.kv_path.is_empty() {
                self.storage.data_dir.join("blocks.redb")
            } else {
                PathBuf::from(&e.kv_path)
            },
            hot_reload: e.hot_reload,
            blocks: self.blocks.clone(),
        }
    }
}

/// `auth.allow_anonymous`: `true`, `false` or `"auto"` (allowed only while every listener is
/// on loopback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousPolicy {
    Auto,
    Allow,
    Deny,
}

impl<'de> Deserialize<'de> for AnonymousPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(AnonymousPolicy::Allow),
            Raw::B(false) => Ok(AnonymousPolicy::Deny),
            Raw::S(s) => match s.as_str() {
                "auto" => Ok(AnonymousPolicy::Auto),
                "true" => Ok(AnonymousPolicy::Allow),
                "false" => Ok(AnonymousPolicy::Deny),
                other => Err(serde::de::Error::custom(format!(
                    "expected true, false or \"auto\", got `{other}`"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub users_file: String,
    pub allow_anonymous: AnonymousPolicy,
    #[serde(with = "humantime_serde")]
    pub failed_login_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_failed_login_delay: Duration,
    pub max_tracked_ips: usize,
    pub admins: Vec<String>,
    pub acl_file: String,
}

/// How a TLS client certificate names the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertIdentity {
    #[serde(rename = "")]
    None,
    Cn,
    San,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub require_client_cert: bool,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// Use the client certificate's CN or first DNS SAN as the username.
    pub identity: CertIdentity,
    /// PEM certificate revocation list, reloaded on change.
    pub crl: String,
}

impl TlsConfig {
    /// The TLS listener runs only when a certificate and key are configured.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() && !self.key.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_packet_size: ByteSize,
    pub max_connections: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_subscriptions: usize,
    pub receive_maximum: u16,
    pub max_connections_per_ip: usize,
    /// Publishes per second per client (token bucket); 0 disables.
    pub publish_rate: u32,
    /// Bucket size for `publish_rate` and `publish_bytes_rate` bursts, in seconds of rate.
    pub publish_burst: u32,
    /// Payload bytes per second per client; 0 disables.
    pub publish_bytes_rate: ByteSize,
    /// Payload budget per topic filter; the most specific matching filter wins.
    #[serde(default)]
    pub topic_payload: std::collections::BTreeMap<String, ByteSize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub max_segment_size: ByteSize,
    pub max_segment_count: usize,
    pub max_outgoing_packet_count: u64,
    /// How often the router frees log data every reader has passed; 0 never frees it.
    #[serde(with = "humantime_serde")]
    pub trim_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Keep retained messages, persistent sessions and their queues across restarts.
    pub persistence: bool,
    pub fsync: crate::store::Fsync,
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    pub max_queued_messages: u64,
    pub max_queued_bytes: ByteSize,
}

impl StorageConfig {
    pub fn store_settings(&self) -> crate::store::StoreSettings {
        crate::store::StoreSettings {
            data_dir: self.data_dir.clone(),
            fsync: self.fsync,
            fsync_interval: self.fsync_interval,
            max_queued_messages: self.max_queued_messages,
            max_queued_bytes: self.max_queued_bytes.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Config {
    /// Whether anonymous clients are allowed, resolving `"auto"` against the listeners.
    pub fn anonymous_allowed(&self) -> bool {
        match self.auth.allow_anonymous {
            AnonymousPolicy::Allow => true,
            AnonymousPolicy::Deny => false,
            AnonymousPolicy::Auto => self.listeners().iter().all(|a| a.ip().is_loopback()),
        }
    }

    /// Addresses of the enabled MQTT listeners.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        let mut v = vec![self.mqtt.listen];
        if self.tls.enabled() {
            v.push(self.tls.listen);
        }
        if self.ws.enabled {
            v.push(self.ws.listen);
        }
        v
    }

    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, so tests need not mutate the process.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            // Read the file ourselves so a missing file is an error that names the path.
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                source: config::ConfigError::Message(e.to_string()),
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("MOONWIRE__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("MOONWIRE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let cfg: Config = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The embedded defaults alone.
    pub fn defaults() -> Result<Config, ConfigError> {
        Self::load_with_env(None, std::iter::empty())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: &str| {
            Err(ConfigError::Key {
                key,
                reason: reason.to_owned(),
            })
        };
        let max_packet = self.limits.max_packet_size.0;
        if !(64..=268_435_455).contains(&max_packet) {
            return bad(
                "limits.max_packet_size",
                "must be between 64 bytes and 256MiB (the MQTT maximum)",
            );
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections", "must be at least 1");
        }
        if self.limits.receive_maximum == 0 {
            return bad("limits.receive_maximum", "must be at least 1");
        }
        if self.limits.max_topic_length == 0 || self.limits.max_topic_length > 65535 {
            return bad("limits.max_topic_length", "must be between 1 and 65535");
        }
        if self.router.max_segment_size.0 < 1024 {
            return bad("router.max_segment_size", "must be at least 1KiB");
        }
        if self.router.max_segment_count == 0 {
            return bad("router.max_segment_count", "must be at least 1");
        }
        if self.router.trim_interval > Duration::from_secs(3600) {
            return bad(
                "router.trim_interval",
                "must be at most 1h (\"0s\" turns trimming off)",
            );
        }
        if self.mqtt.connect_timeout.is_zero() {
            return bad("mqtt.connect_timeout", "must be greater than zero");
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return bad("tls.cert", "tls.cert and tls.key must be set together");
        }
        if self.tls.identity != CertIdentity::None && self.tls.client_ca.is_empty() {
            return bad("tls.identity", "needs tls.client_ca");
        }
        if self.limits.publish_rate > 0 && self.limits.publish_burst == 0 {
            return bad(
                "limits.publish_burst",
                "must be at least 1 when publish_rate is set",
            );
        }
        for (i, rule) in self.acl.iter().enumerate() {
            if !crate::pipeline::valid_filter(&rule.topic.replace("%u", "u").replace("%c", "c")) {
                return Err(ConfigError::Key {
                    key: "acl.topic",
                    reason: format!(
                        "rule {} has an invalid topic filter `{}`",
                        i + 1,
                        rule.topic
                    ),
                });
            }
        }
        if self
            .media
            .frame_topics
            .iter()
            .any(|f| !crate::pipeline::valid_filter(f))
        {
            return bad(
                "media.frame_topics",
                "every entry must be a valid topic filter",
            );
        }
        if self.media.thumb_width == 0 || self.media.thumb_width > 8192 {
            return bad("media.thumb_width", "must be between 1 and 8192");
        }
        if !(1..=100).contains(&self.media.thumb_quality) {
            return bad("media.thumb_quality", "must be between 1 and 100");
        }
        if self.media.max_partial_frames_per_device == 0 {
            return bad("media.max_partial_frames_per_device", "must be at least 1");
        }
        self.blocks_config()
            .validate()
            .map_err(|e| ConfigError::Key {
                key: "blocks",
                reason: e.to_string(),
            })?;
        if self.tls.require_client_cert && self.tls.client_ca.is_empty() {
            return bad("tls.require_client_cert", "needs tls.client_ca");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_listen_on_loopback() {
        let cfg = Config::defaults().unwrap();
        assert!(cfg.mqtt.listen.ip().is_loopback());
        assert!(cfg.ws.listen.ip().is_loopback());
        assert!(cfg.http.listen.ip().is_loopback());
        assert!(!cfg.tls.enabled());
        assert_eq!(cfg.limits.max_packet_size.0, 1 << 20);
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "[mqtt]\nlisten = \"127.0.0.1:1999\"\n[limits]\nmax_packet_size = \"2MiB\"\n",
        )
        .unwrap();
        let cfg = Config::load_with_env(
            Some(&file),
            env(&[("MOONWIRE__MQTT__LISTEN", "0.0.0.0:2883")]),
        )
        .unwrap();
        assert_eq!(cfg.mqtt.listen.port(), 2883);
        assert_eq!(cfg.limits.max_packet_size.0, 2 << 20);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "[mqtt]\nlisten_on = \"127.0.0.1:1999\"\n").unwrap();
        let err = Config::load_with_env(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load_with_env(None, env(&[("MOONWIRE__LIMITS__MAX_PACKET_SIZE", "10")]))
            .unwrap_err();
        assert!(err.to_string().contains("limits.max_packet_size"), "{err}");
        let err =
            Config::load_with_env(None, env(&[("MOONWIRE__MQTT__LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err =
            Config::load_with_env(None, env(&[("MOONWIRE__TLS__CERT", "a.pem")])).unwrap_err();
        assert!(err.to_string().contains("tls.cert"), "{err}");
        // The router thread waits up to this long at a time; a century would overflow.
        let err = Config::load_with_env(
            None,
            env(&[("MOONWIRE__ROUTER__TRIM_INTERVAL", "100years")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("router.trim_interval"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err =
            Config::load_with_env(Some(Path::new("/nonexistent/m.toml")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/m.toml"), "{err}");
    }
}
