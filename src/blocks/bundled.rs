//! The example scripts compiled into the binary, so the embedded default config works from any
//! directory. A file on disk always wins; the bundled copy is used only when the path the
//! default config names does not exist.

use std::path::Path;

const BUNDLED: &[(&str, &str)] = &[
    (
        "scripts/validate_sensors.lua",
        include_str!("../../scripts/validate_sensors.lua"),
    ),
    (
        "scripts/fanout_sensors.lua",
        include_str!("../../scripts/fanout_sensors.lua"),
    ),
    (
        "scripts/enrich_motion.lua",
        include_str!("../../scripts/enrich_motion.lua"),
    ),
    (
        "scripts/debounce_alerts.lua",
        include_str!("../../scripts/debounce_alerts.lua"),
    ),
    (
        "scripts/heartbeat.lua",
        include_str!("../../scripts/heartbeat.lua"),
    ),
    (
        "scripts/camera_thumbs.lua",
        include_str!("../../scripts/camera_thumbs.lua"),
    ),
    (
        "scripts/lib/home.lua",
        include_str!("../../scripts/lib/home.lua"),
    ),
];

/// Reads `path`, falling back to the bundled example of the same path when it is missing.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let wanted = path.to_string_lossy().replace('\\', "/");
            let wanted = wanted.trim_start_matches("./");
            match BUNDLED.iter().find(|(p, _)| *p == wanted) {
                Some((p, src)) => {
                    tracing::info!(script = p, "using the bundled copy (no file on disk)");
                    Ok(src.as_bytes().to_vec())
                }
                None => Err(e),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default config must run from any directory: every script it names is
    /// bundled.
    #[test]
    fn every_default_block_script_is_bundled() {
        let cfg = crate::config::Config::load(None).unwrap();
        assert!(!cfg.blocks.is_empty());
        for b in &cfg.blocks {
            let script = b.script.to_string_lossy().replace('\\', "/");
            assert!(
                BUNDLED.iter().any(|(p, _)| *p == script),
                "{script} is not bundled"
            );
        }
    }
}
