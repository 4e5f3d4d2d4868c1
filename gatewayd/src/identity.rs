//! Identities: which person an address belongs to, and the `/link` codes that join two of them.
//!
//! An unknown address becomes a new, isolated user, so nothing crosses between strangers. Two
//! users become one only by an operator's link or by the person proving they hold both
//! addresses: `/link` on one channel issues a one-time code, `/link CODE` on the other redeems it.
//! Codes are 8 characters from a 32-letter alphabet (no 0/O, 1/I), expire after
//! [`CODE_TTL`], work once, and an address that guesses wrong [`MAX_FAILURES`] times is locked
//! out for [`FAILURE_WINDOW`]. Resolution is cached in memory; a link or unlink clears the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::events::{Event, EventBus};
use crate::message::{Address, UserId, now_ms};
use crate::store::{SharedStore, StoreError, UserRecord};

/// How long a link code stays valid.
pub const CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Wrong codes an address may try within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The window over which wrong codes are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 8;

/// Why an identity operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The code is unknown, used, or expired.
    #[error(
        "that code is not valid (codes work once and expire after 10 minutes); send /link on your other channel for a new one"
    )]
    BadCode,
    /// Too many wrong codes from this address.
    #[error("too many wrong codes; try again in {0} minute(s)")]
    TooManyAttempts(u64),
    /// The code belongs to the same user.
    #[error("these addresses are already linked")]
    AlreadyLinked,
}

/// The outcome of a successful link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linked {
    /// The user that remains.
    pub user: UserId,
    /// The user merged into it.
    pub merged: UserId,
}

/// Resolves addresses to users and links them.
pub struct Identity {
    store: SharedStore,
    events: EventBus,
    cache: Mutex<HashMap<Address, UserId>>,
    generation: AtomicU64,
    failures: Mutex<HashMap<Address, (u32, Instant)>>,
}

impl Identity {
    /// Identity service over `store`.
    pub fn new(store: SharedStore, events: EventBus) -> Self {
        Self {
            store,
            events,
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The user `address` belongs to; an unknown address becomes a new user.
    pub async fn resolve(&self, address: &Address) -> Result<UserId, StoreError> {
        if let Some(id) = self.cache.lock().ok().and_then(|c| c.get(address).copied()) {
            return Ok(id);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let id = self.store.resolve_address(address).await?;
        if let Ok(mut cache) = self.cache.lock() {
            // A link or unlink that ran meanwhile may have made `id` stale: do not cache it.
            if self.generation.load(Ordering::Acquire) == generation {
                cache.insert(address.clone(), id);
            }
        }
        Ok(id)
    }

    /// A user and their addresses.
    pub async fn user(&self, id: UserId) -> Result<UserRecord, StoreError> {
        self.store.user(id).await
    }

    /// Issues a new one-time link code for `user`, replacing any earlier one.
    pub async fn issue_code(&self, user: UserId) -> Result<String, StoreError> {
        let code: String = {
            let mut rng = rand::rng();
            (0..CODE_LEN)
                .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
                .collect()
        };
        let ttl_ms = i64::try_from(CODE_TTL.as_millis()).unwrap_or(i64::MAX);
        self.store
            .put_link_code(&code, user, now_ms().saturating_add(ttl_ms))
            .await?;
        Ok(code)
    }

    /// Redeems `code` for the user at `address`: the code's user stays, the redeemer merges in.
    pub async fn redeem(&self, address: &Address, code: &str) -> Result<Linked, IdentityError> {
        if let Some(minutes) = self.locked_out(address) {
            return Err(IdentityError::TooManyAttempts(minutes));
        }
        let code = code.trim().to_ascii_uppercase();
        let owner = self.store.take_link_code(&code, now_ms()).await?;
        let Some(keep) = owner else {
            self.record_failure(address);
            return Err(IdentityError::BadCode);
        };
        let merge = self.resolve(address).await?;
        if merge == keep {
            return Err(IdentityError::AlreadyLinked);
        }
        self.link(keep, merge).await?;
        if let Ok(mut f) = self.failures.lock() {
            f.remove(address);
        }
        Ok(Linked {
            user: keep,
            merged: merge,
        })
    }

    /// Merges user `merge` into `keep` (operator action, or a redeemed code).
    pub async fn link(&self, keep: UserId, merge: UserId) -> Result<(), StoreError> {
        self.store.link_users(keep, merge).await?;
        self.invalidate();
        self.events.publish(Event::IdentityLinked {
            user: keep,
            merged: merge,
        });
        Ok(())
    }

    /// Attaches `address` to `user` (operator action). If the address is its user's only one,
    /// the two users merge (histories too); otherwise just the address moves. Returns the user
    /// the address came from.
    pub async fn attach(&self, user: UserId, address: &Address) -> Result<UserId, StoreError> {
        let current = self.resolve(address).await?;
        if current == user {
            return Ok(user);
        }
        let record = self.store.user(current).await?;
        if record.addresses.len() <= 1 {
            self.link(user, current).await?;
            return Ok(current);
        }
        self.store.attach_address(user, address).await?;
        self.invalidate();
        self.events.publish(Event::IdentityLinked {
            user,
            merged: current,
        });
        Ok(current)
    }

    /// Splits `address` off into a new user; returns (previous user, new user).
    pub async fn unlink(&self, address: &Address) -> Result<(UserId, UserId), StoreError> {
        let previous = self.resolve(address).await?;
        let new_user = self.store.unlink_address(address).await?;
        self.invalidate();
        self.events.publish(Event::IdentityUnlinked {
            user: previous,
            new_user,
        });
        Ok((previous, new_user))
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    fn locked_out(&self, address: &Address) -> Option<u64> {
        let failures = self.failures.lock().ok()?;
        let (count, since) = failures.get(address)?;
        let elapsed = since.elapsed();
        (*count >= MAX_FAILURES && elapsed < FAILURE_WINDOW)
            .then(|| (FAILURE_WINDOW - elapsed).as_secs().div_ceil(60).max(1))
    }

    fn record_failure(&self, address: &Address) {
        if let Ok(mut failures) = self.failures.lock() {
            let entry = failures
                .entry(address.clone())
                .or_insert((0, Instant::now()));
            if entry.1.elapsed() >= FAILURE_WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ChannelKind;
    use crate::store::sqlite::SqliteStore;
    use std::sync::Arc;

    fn addr(c: ChannelKind, s: &str) -> Address {
        Address {
            channel: c,
            sender_id: s.to_owned(),
        }
    }

    #[tokio::test]
    async fn codes_link_once_and_wrong_guesses_lock_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("g.db")).expect("open"));
        let id = Identity::new(store, EventBus::new(16));
        let web = addr(ChannelKind::Webchat, "w1");
        let http = addr(ChannelKind::Http, "h1");
        let a = id.resolve(&web).await.expect("a");
        let b = id.resolve(&http).await.expect("b");
        assert_ne!(a, b);
        let code = id.issue_code(a).await.expect("code");
        assert_eq!(code.len(), 8);
        let linked = id.redeem(&http, &code.to_lowercase()).await.expect("link");
        assert_eq!(linked, Linked { user: a, merged: b });
        assert_eq!(id.resolve(&http).await.expect("resolve"), a);
        assert!(matches!(
            id.redeem(&http, &code).await,
            Err(IdentityError::BadCode)
        ));

        let stranger = addr(ChannelKind::Http, "mallory");
        for _ in 1..MAX_FAILURES {
            assert!(matches!(
                id.redeem(&stranger, "WRONG000").await,
                Err(IdentityError::BadCode)
            ));
        }
        let _ = id.redeem(&stranger, "WRONG001").await;
        let fresh = id.issue_code(a).await.expect("code");
        assert!(matches!(
            id.redeem(&stranger, &fresh).await,
            Err(IdentityError::TooManyAttempts(_))
        ));
    }
}
