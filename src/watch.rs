//! Calls back when a file changes (editors replace files, so the parent directory is watched
//! and events are filtered by name). Changes within a short window are coalesced.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

/// Watches `path` and runs `on_change` on a background thread after each burst of changes.
pub fn watch_file(path: &Path, on_change: impl Fn() + Send + 'static) -> notify::Result<FileWatch> {
    let path: PathBuf = std::path::absolute(path)?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let relevant = ev.is_ok_and(|ev| {
            ev.paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("file-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Coalesce the burst an editor's save produces.
                while rx.recv_timeout(DEBOUNCE).is_ok() {}
                on_change();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(FileWatch { _watcher: watcher })
}
