//! Which client id is connected where. A second CONNECT with the same client id takes the
//! session over: the edge tells the old session to close and waits until it has handed its
//! link back to the router, so the router never sees two links for one client id. Also keeps
//! the edge-side part of persistent sessions (subscribed filters) and pending delayed wills.

use super::session::Carry;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

struct Entry {
    generation: u64,
    /// Fires to make the session close with "session taken over".
    kick: Option<oneshot::Sender<()>>,
    /// Completes (sender dropped) when the session has finished closing.
    done: Option<oneshot::Receiver<()>>,
}

#[derive(Default)]
struct Inner {
    next_generation: u64,
    live: HashMap<String, Entry>,
    /// Filters of persistent sessions that are offline.
    saved: HashMap<String, HashSet<String>>,
    /// Unfinished deliveries of persistent sessions that are offline, for the next connection.
    carried: HashMap<String, Carry>,
    /// Wills waiting for their delay interval, cancelled when the client comes back.
    pending_wills: HashMap<String, CancellationToken>,
    /// Session expiry timers of offline v5 sessions, cancelled when the client comes back.
    pending_expiry: HashMap<String, CancellationToken>,
}

/// Registration of one live session; dropping it without `release` is also safe.
pub struct Registration {
    pub generation: u64,
    pub kicked: oneshot::Receiver<()>,
    /// Dropped when the session has finished closing.
    pub done: oneshot::Sender<()>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    /// Registers `client_id`, taking over any live session with that id. Returns once the old
    /// session has closed (or after `wait`, if it hangs).
    pub async fn register(&self, client_id: &str, wait: Duration) -> Registration {
        let (kick_tx, kicked) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        let old_done = {
            let mut inner = self.inner.lock();
            inner.next_generation += 1;
            let generation = inner.next_generation;
            if let Some(token) = inner.pending_wills.remove(client_id) {
                token.cancel();
            }
            if let Some(token) = inner.pending_expiry.remove(client_id) {
                token.cancel();
            }
            let old = inner.live.insert(
                client_id.to_string(),
                Entry {
                    generation,
                    kick: Some(kick_tx),
                    done: Some(done_rx),
                },
            );
            let old_done = old.and_then(|mut e| {
                if let Some(k) = e.kick.take() {
                    let _ = k.send(());
                }
                e.done.take()
            });
            (old_done, generation)
        };
        let (old_done, generation) = old_done;
        if let Some(rx) = old_done {
            let _ = tokio::time::timeout(wait, rx).await;
        }
        Registration {
            generation,
            kicked,
            done,
        }
    }

    /// Removes the registration if it is still the current one for `client_id`.
    pub fn release(&self, client_id: &str, generation: u64) {
        let mut inner = self.inner.lock();
        if inner
            .live
            .get(client_id)
            .is_some_and(|e| e.generation == generation)
        {
            inner.live.remove(client_id);
        }
    }

    /// Whether a session with this id is connected.
    pub fn is_live(&self, client_id: &str) -> bool {
        self.inner.lock().live.contains_key(client_id)
    }

    /// Takes the saved filters of a persistent session (clean start discards them).
    pub fn restore_filters(&self, client_id: &str, clean: bool) -> HashSet<String> {
        let mut inner = self.inner.lock();
        let saved = inner.saved.remove(client_id);
        if clean {
            inner.carried.remove(client_id);
            HashSet::new()
        } else {
            saved.unwrap_or_default()
        }
    }

    /// Keeps the filters of a persistent session while it is offline.
    pub fn save_filters(&self, client_id: &str, filters: HashSet<String>) {
        self.inner
            .lock()
            .saved
            .insert(client_id.to_string(), filters);
    }

    /// Keeps what an offline persistent session owes its client on the next connection.
    pub(crate) fn save_carry(&self, client_id: &str, carry: Carry) {
        let mut inner = self.inner.lock();
        if carry.is_empty() {
            inner.carried.remove(client_id);
        } else {
            inner.carried.insert(client_id.to_string(), carry);
        }
    }

    /// Takes what the previous connection of a session left (`None` after a clean start).
    pub(crate) fn take_carry(&self, client_id: &str) -> Option<Carry> {
        self.inner.lock().carried.remove(client_id)
    }

    /// Records a session expiry timer so a reconnect can cancel it.
    pub fn pending_expiry(&self, client_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.inner
            .lock()
            .pending_expiry
            .insert(client_id.to_string(), token.clone());
        token
    }

    /// Registers `client_id` only if no session holds it (used to end an expired offline
    /// session without disturbing a client that came back).
    pub fn register_if_idle(&self, client_id: &str) -> Option<Registration> {
        let (kick_tx, kicked) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        if inner.live.contains_key(client_id) {
            return None;
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.live.insert(
            client_id.to_string(),
            Entry {
                generation,
                kick: Some(kick_tx),
                done: Some(done_rx),
            },
        );
        Some(Registration {
            generation,
            kicked,
            done,
        })
    }

    /// Records a delayed will so a reconnect can cancel it.
    pub fn pending_will(&self, client_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.inner
            .lock()
            .pending_wills
            .insert(client_id.to_string(), token.clone());
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takeover_kicks_the_old_session_and_waits_for_it() {
        let reg = std::sync::Arc::new(Registry::default());
        let first = reg.register("c", Duration::from_secs(5)).await;
        let reg2 = reg.clone();
        let second = tokio::spawn(async move { reg2.register("c", Duration::from_secs(5)).await });
        // The old session sees the kick, then finishes closing.
        first.kicked.await.unwrap();
        reg.release("c", first.generation);
        drop(first.done);
        let second = second.await.unwrap();
        assert!(second.generation > first.generation);
        // The stale release above did not remove the new registration.
        assert!(reg.is_live("c"));
        reg.release("c", second.generation);
        assert!(!reg.is_live("c"));
    }
}
