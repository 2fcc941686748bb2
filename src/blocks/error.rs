//! Errors of the blocks engine's public API. Script failures at run time are not errors of
//! the API: they become verdicts (`on_error`), counters and `status()` entries.

use std::fmt;
use std::path::PathBuf;

use super::config::ConfigError;
use super::kv::KvError;

/// A script that could not be compiled or initialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    pub block: String,
    pub script: PathBuf,
    /// Includes `file:line` when Lua reports one.
    pub message: String,
}

impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block `{}` ({}): {}",
            self.block,
            self.script.display(),
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("block `{block}`: cannot read script {}: {source}", path.display())]
    ReadScript {
        block: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", join(.0))]
    Load(Vec<LoadFailure>),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("cannot start a blocks worker: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot watch scripts for hot reload: {0}")]
    Watch(#[from] notify::Error),
    #[error("the blocks engine is shut down")]
    Stopped,
    #[error("dry run: {0}")]
    DryRun(String),
}

fn join(failures: &[LoadFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
