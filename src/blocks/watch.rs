//! Hot reload and housekeeping: with `hot_reload`, a `notify` watcher on `scripts_dir`
//! (recursive, for `lib/`) and on the directory of every bound script, debounced, calling
//! `BlockEngine::reload_scripts`; always, purging expired kv entries every minute. Runs on its own
//! thread with a small current-thread runtime, holding only a weak reference to the engine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use super::engine::{BlockEngine, Inner};
use super::error::BlockError;
use super::plan::Plan;

/// Changes closer together than this are one reload (editors write files in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Expired kv entries are purged this often when nothing else happens.
const PURGE_EVERY: Duration = Duration::from_secs(60);

type Events = mpsc::Sender<notify::Result<notify::Event>>;

/// Dropping it stops the thread (its event channel disconnects).
pub(crate) struct Watcher {
    /// `Ok`: the file watcher (hot reload); `Err`: only the channel, to keep the thread alive.
    watcher: Result<RecommendedWatcher, Events>,
    watched: BTreeSet<(PathBuf, bool)>,
}

impl Watcher {
    pub fn start(engine: Weak<Inner>, plan: &Plan) -> Result<Watcher, BlockError> {
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let watcher = if plan.config.hot_reload {
            Ok(notify::recommended_watcher(move |ev| {
                let _ = tx.send(ev);
            })?)
        } else {
            Err(tx)
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(BlockError::Spawn)?;
        std::thread::Builder::new()
            .name("blocks-watch".into())
            .spawn(move || watch_loop(&engine, &rx, &runtime))
            .map_err(BlockError::Spawn)?;
        let mut w = Watcher {
            watcher,
            watched: BTreeSet::new(),
        };
        w.sync_paths(plan);
        Ok(w)
    }

    /// Watches what `plan` needs (nothing without `hot_reload`); directories that cannot be
    /// watched are retried on the next reload.
    pub fn sync_paths(&mut self, plan: &Plan) {
        let Ok(watcher) = &mut self.watcher else {
            return;
        };
        let mut want = BTreeSet::new();
        want.insert((plan.config.scripts_dir.clone(), true));
        for b in &plan.blocks {
            let dir = b.cfg.script.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            if !dir.starts_with(&plan.config.scripts_dir) {
                want.insert((dir, false));
            }
        }
        for old in self.watched.difference(&want).cloned().collect::<Vec<_>>() {
            let _ = watcher.unwatch(&old.0);
            self.watched.remove(&old);
        }
        for (dir, recursive) in want {
            if self.watched.contains(&(dir.clone(), recursive)) {
                continue;
            }
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            if !dir.exists() {
                tracing::info!(
                    target: "moonwire::blocks",
                    "{} does not exist, so it is not watched for hot reload",
                    dir.display()
                );
                continue;
            }
            match watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.watched.insert((dir, recursive));
                }
                Err(e) => tracing::warn!(
                    target: "moonwire::blocks",
                    "cannot watch {} for hot reload: {e}",
                    dir.display()
                ),
            }
        }
    }
}

fn relevant(ev: &notify::Result<notify::Event>) -> bool {
    match ev {
        Ok(ev) => {
            !matches!(ev.kind, EventKind::Access(_))
                && ev
                    .paths
                    .iter()
                    .any(|p| p.extension().is_some_and(|x| x == "lua"))
        }
        Err(_) => false,
    }
}

fn watch_loop(
    engine: &Weak<Inner>,
    rx: &mpsc::Receiver<notify::Result<notify::Event>>,
    runtime: &tokio::runtime::Runtime,
) {
    loop {
        match rx.recv_timeout(PURGE_EVERY) {
            Ok(ev) => {
                let mut reload = relevant(&ev);
                // Debounce: gather the burst.
                loop {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(ev) => reload |= relevant(&ev),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                if !reload {
                    continue;
                }
                let Some(engine) = BlockEngine::from_weak(engine) else {
                    return;
                };
                // Failures are logged, counted and shown in status by `reload` itself.
                let _ = runtime.block_on(engine.reload_scripts());
            }
            Err(RecvTimeoutError::Timeout) => {
                let Some(engine) = BlockEngine::from_weak(engine) else {
                    return;
                };
                if let Err(e) = engine.kv().purge_expired() {
                    tracing::warn!(target: "moonwire::blocks", "kv purge failed: {e}");
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
