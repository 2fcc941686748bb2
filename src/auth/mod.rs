//! Who may connect and what they may touch: the users file (argon2id hashes), anonymous
//! policy, per-IP back-off after failed logins, certificate identities, and topic ACLs. The
//! users file and ACL are swapped atomically on reload; sessions read the current version.

mod acl;
mod backoff;
pub mod users;

pub use acl::{Access, Acl, Principal, Rule};
pub use backoff::Backoff;
pub use users::{Users, UsersError};

use crate::metrics::{DropReason, Metrics};
use crate::pipeline::{DropCode, Message, Stage, Step, Verdict};
use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("bad username or password")]
    BadCredentials,
    #[error("not authorized (anonymous clients are not allowed)")]
    NotAuthorized,
}

pub struct Auth {
    users: Option<ArcSwap<Users>>,
    allow_anonymous: bool,
    backoff: Backoff,
    /// argon2 is deliberately expensive: bound how many verifications run at once.
    verify_slots: Semaphore,
    acl: ArcSwap<Acl>,
    admins: HashSet<String>,
    metrics: Arc<Metrics>,
}

/// Settings for [`Auth::new`].
pub struct AuthSettings {
    pub users: Option<Users>,
    pub allow_anonymous: bool,
    pub failed_login_delay: Duration,
    pub max_failed_login_delay: Duration,
    pub max_tracked_ips: usize,
    pub acl: Acl,
    pub admins: Vec<String>,
}

impl Auth {
    pub fn new(s: AuthSettings, metrics: Arc<Metrics>) -> Auth {
        let slots = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Auth {
            users: s.users.map(ArcSwap::from_pointee),
            allow_anonymous: s.allow_anonymous,
            backoff: Backoff::new(
                s.failed_login_delay,
                s.max_failed_login_delay,
                s.max_tracked_ips,
            ),
            verify_slots: Semaphore::new(slots),
            acl: ArcSwap::from_pointee(s.acl),
            admins: s.admins.into_iter().collect(),
            metrics,
        }
    }

    /// Replaces the users table (file reload).
    pub fn set_users(&self, users: Users) {
        if let Some(u) = &self.users {
            u.store(Arc::new(users));
        }
    }

    /// Replaces the ACL (config or ACL file reload).
    pub fn set_acl(&self, acl: Acl) {
        self.acl.store(Arc::new(acl));
    }

    pub fn acl(&self) -> arc_swap::Guard<Arc<Acl>> {
        self.acl.load()
    }

    pub fn is_admin(&self, username: Option<&str>) -> bool {
        username.is_some_and(|u| self.admins.contains(u))
    }

    /// Decides a CONNECT. Returns the effective username: the certificate identity when there
    /// is one (a device cannot claim another identity by username), else the login name.
    pub async fn authenticate(
        &self,
        ip: IpAddr,
        login: Option<(&str, &[u8])>,
        cert_identity: Option<&str>,
    ) -> Result<Option<String>, AuthError> {
        if let Some(id) = cert_identity {
            return Ok(Some(id.to_string()));
        }
        let Some((user, password)) = login.filter(|(u, _)| !u.is_empty()) else {
            return if self.allow_anonymous {
                Ok(None)
            } else {
                self.metrics.dropped(DropReason::AuthFailed, 1);
                Err(AuthError::NotAuthorized)
            };
        };
        let Some(users) = &self.users else {
            // No users file: a username is just a label, as long as anonymous access is allowed.
            return if self.allow_anonymous {
                Ok(Some(user.to_string()))
            } else {
                self.metrics.dropped(DropReason::AuthFailed, 1);
                Err(AuthError::BadCredentials)
            };
        };
        let wait = self.backoff.delay(ip, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let ok = {
            let _slot = self.verify_slots.acquire().await;
            let users = users.load_full();
            let (user_owned, password) = (user.to_string(), password.to_vec());
            tokio::task::spawn_blocking(move || users.verify(&user_owned, &password))
                .await
                .unwrap_or(false)
        };
        if ok {
            self.backoff.succeeded(ip);
            Ok(Some(user.to_string()))
        } else {
            self.backoff.failed(ip, Instant::now());
            self.metrics.dropped(DropReason::AuthFailed, 1);
            Err(AuthError::BadCredentials)
        }
    }
}

/// Pipeline stage 1: may the origin publish here? Applies to clients, wills and blocks alike.
pub struct AclStage {
    pub auth: Arc<Auth>,
}

impl Stage for AclStage {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn wants(&self, topic: &str, _: usize) -> bool {
        !self.auth.acl.load().is_empty() || topic.starts_with("$SYS")
    }

    fn process(&self, msg: &Message) -> Step {
        if msg.origin.client_id == crate::mqtt::INTERNAL_CLIENT_ID {
            // The broker's own reports (frame losses); no client can use this id.
            return Step::Now(Verdict::Pass);
        }
        let who = Principal {
            username: msg.origin.username.as_deref(),
            client_id: &msg.origin.client_id,
            admin: false,
        };
        if self.auth.acl.load().can_publish(&who, &msg.topic) {
            Step::Now(Verdict::Pass)
        } else {
            self.auth.metrics.dropped(DropReason::AclDenied, 1);
            Step::Now(Verdict::Drop {
                code: DropCode::NotAuthorized,
                reason: format!("not authorized to publish to {}", msg.topic),
            })
        }
    }
}
