//! The users file: one `username:argon2id-hash` per line (`#` comments allowed), and the
//! `moonwire passwd` operations on it.

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("users file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("users file {path} line {line}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("invalid username `{0}`: must be non-empty without `:`, whitespace, `/`, `+` or `#`")]
    BadUsername(String),
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("user `{0}` not found")]
    NoSuchUser(String),
}

/// Username → PHC-format argon2 hash.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

/// A hash of a random password, verified against for unknown users so that "no such user"
/// takes as long as "wrong password".
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy-password-never-matches").unwrap_or_default())
}

pub fn valid_username(u: &str) -> bool {
    !u.is_empty() && !u.contains([':', '/', '+', '#']) && !u.chars().any(char::is_whitespace)
}

pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

impl Users {
    pub fn parse(path: &str, text: &str) -> Result<Users, UsersError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| UsersError::Parse {
                path: path.to_string(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected username:hash"))?;
            if !valid_username(user) {
                return Err(err("invalid username"));
            }
            let parsed = PasswordHash::new(hash).map_err(|_| err("not a PHC password hash"))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(err("only argon2 hashes are accepted"));
            }
            hashes.insert(user.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks a password. Costs one argon2 verification whether or not the user exists; run
    /// it on a blocking thread.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (decoy(), false),
        };
        let ok = PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(password, &h).is_ok())
            .unwrap_or(false);
        ok && known
    }
}

/// Adds or replaces `user` in the users file (created if missing), keeping other lines.
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<(), UsersError> {
    if !valid_username(user) {
        return Err(UsersError::BadUsername(user.to_string()));
    }
    let hash = hash_password(password)?;
    rewrite(path, user, Some(&hash))
}

/// Removes `user` from the users file.
pub fn delete_user(path: &Path, user: &str) -> Result<(), UsersError> {
    rewrite(path, user, None)
}

fn rewrite(path: &Path, user: &str, hash: Option<&str>) -> Result<(), UsersError> {
    let io = |source| UsersError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let prefix = format!("{user}:");
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with(&prefix) {
            found = true;
            if let Some(h) = hash {
                out.push_str(&format!("{user}:{h}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    match (found, hash) {
        (false, Some(h)) => out.push_str(&format!("{user}:{h}\n")),
        (false, None) => return Err(UsersError::NoSuchUser(user.to_string())),
        _ => {}
    }
    // Write next to the file and rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_verify_delete() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("users");
        set_password(&f, "alice", "s3cret").unwrap();
        set_password(&f, "bob", "hunter2").unwrap();
        set_password(&f, "alice", "changed").unwrap();
        let users = Users::load(&f).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", b"changed"));
        assert!(!users.verify("alice", b"s3cret"));
        assert!(!users.verify("carol", b"changed"));
        delete_user(&f, "bob").unwrap();
        assert!(!Users::load(&f).unwrap().verify("bob", b"hunter2"));
        assert!(matches!(
            delete_user(&f, "bob"),
            Err(UsersError::NoSuchUser(_))
        ));
        assert!(matches!(
            set_password(&f, "a:b", "x"),
            Err(UsersError::BadUsername(_))
        ));
    }

    #[test]
    fn rejects_plaintext_and_garbage() {
        assert!(Users::parse("f", "alice:plaintext").is_err());
        assert!(Users::parse("f", "no-colon").is_err());
        assert!(Users::parse("f", "# comment\n\n").unwrap().is_empty());
    }
}
