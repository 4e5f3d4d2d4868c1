//! Identities: which person an address belongs to, and the `/link` codes that join two of them.
//!
//! An unknown address becomes a new, isolated user, so nothing crosses between strangers. Two
//! users become one only by an operator's link or by the person proving they hold both
//! addresses: `/link` on one channel issues a one-time code, `/link CODE` on the other redeems it.
//! Codes are 8 characters from a 32-letter alphabet (no 0/O, 1/I), expire after
//! [`CODE_TTL`], work once, and an address that guesses wrong [`MAX_FAILURES`] times is locked
//! out for [`FAILURE_WINDOW`].
//!
//! Resolution is cached in memory in a bounded LRU (`gateway.identity_cache_size` addresses,
//! least recently resolved evicted first). A link, attach or unlink drops only the addresses it
//! touched: every address of the user that remains after a link (both sides, since the merged
//! user's addresses are now its own), or the address that moved; everything else stays cached.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
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
/// The default of `gateway.identity_cache_size`.
pub const DEFAULT_CACHE_SIZE: usize = 100_000;
/// Wrong-code records kept before expired ones are pruned.
const FAILURES_PRUNE_AT: usize = 1024;

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
    cache: Mutex<LruCache<Address, UserId>>,
    capacity: NonZeroUsize,
    generation: AtomicU64,
    failures: Mutex<HashMap<Address, (u32, Instant)>>,
    /// Every resolution reads the store ([`Identity::uncached`]).
    uncached: bool,
}

impl Identity {
    /// Identity service over `store`, caching up to [`DEFAULT_CACHE_SIZE`] addresses.
    pub fn new(store: SharedStore, events: EventBus) -> Self {
        Self::with_cache_size(store, events, DEFAULT_CACHE_SIZE)
    }

    /// Identity service over `store`, caching up to `cache_size` addresses (at least 1).
    pub fn with_cache_size(store: SharedStore, events: EventBus, cache_size: usize) -> Self {
        let capacity = NonZeroUsize::new(cache_size).unwrap_or(NonZeroUsize::MIN);
        Self {
            store,
            events,
            cache: Mutex::new(LruCache::new(capacity)),
            capacity,
            generation: AtomicU64::new(0),
            failures: Mutex::new(HashMap::new()),
            uncached: false,
        }
    }

    /// Resolution without the cache: every call reads the store. Multi-instance mode uses it,
    /// because a link made on another instance would not drop this instance's cached entries.
    pub fn uncached(store: SharedStore, events: EventBus) -> Self {
        Self {
            uncached: true,
            ..Self::with_cache_size(store, events, 1)
        }
    }

    /// Addresses in the resolution cache now, and the most it holds.
    pub fn cache_stats(&self) -> (usize, usize) {
        let entries = self.cache.lock().map_or(0, |c| c.len());
        (entries, self.capacity.get())
    }

    /// The user `address` belongs to; an unknown address becomes a new user.
    pub async fn resolve(&self, address: &Address) -> Result<UserId, StoreError> {
        if self.uncached {
            return self.store.resolve_address(address).await;
        }
        if let Some(id) = self
            .cache
            .lock()
            .ok()
            .and_then(|mut c| c.get(address).copied())
        {
            return Ok(id);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let id = self.store.resolve_address(address).await?;
        if let Ok(mut cache) = self.cache.lock() {
            // A link or unlink that ran meanwhile may have made `id` stale: do not cache it.
            // (The generation only moves under this lock, so the check and the insert agree.)
            if self.generation.load(Ordering::Acquire) == generation {
                cache.put(address.clone(), id);
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
        self.invalidate_user(keep).await;
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
        self.invalidate(std::slice::from_ref(address));
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
        self.invalidate(std::slice::from_ref(address));
        self.events.publish(Event::IdentityUnlinked {
            user: previous,
            new_user,
        });
        Ok((previous, new_user))
    }

    /// Drops `addresses` from the cache, and stops resolutions already under way from caching
    /// what they read before the change.
    fn invalidate(&self, addresses: &[Address]) {
        if let Ok(mut cache) = self.cache.lock() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            for a in addresses {
                cache.pop(a);
            }
        }
    }

    /// Drops every address of `user` (read from the store after a change) from the cache; if
    /// they cannot be read, the whole cache.
    async fn invalidate_user(&self, user: UserId) {
        match self.store.user(user).await {
            Ok(record) => self.invalidate(&record.addresses),
            Err(error) => {
                tracing::warn!(%error, user = %user, "Cannot read a linked user's addresses; clearing the identity cache.");
                if let Ok(mut cache) = self.cache.lock() {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    cache.clear();
                }
            }
        }
    }

    /// The cached user of `address`, without touching its recency.
    #[cfg(test)]
    fn cached(&self, address: &Address) -> Option<UserId> {
        self.cache.lock().ok()?.peek(address).copied()
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
            // Records older than the window count for nothing: forget them now and then, so
            // wrong guesses from ever new addresses do not pile up.
            if failures.len() > FAILURES_PRUNE_AT {
                failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            }
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
        let web = addr(ChannelKind::new("webchat"), "w1");
        let http = addr(ChannelKind::new("http"), "h1");
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

        let stranger = addr(ChannelKind::new("http"), "mallory");
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

    fn open(dir: &tempfile::TempDir, cache_size: usize) -> Identity {
        let store = Arc::new(SqliteStore::open(&dir.path().join("g.db")).expect("open"));
        Identity::with_cache_size(store, EventBus::new(16), cache_size)
    }

    #[tokio::test]
    async fn cache_is_bounded_and_evicts_the_least_recently_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = open(&dir, 3);
        let a: Vec<Address> = (0..5)
            .map(|i| addr(ChannelKind::new("http"), &format!("u{i}")))
            .collect();
        let mut users = Vec::new();
        for x in &a[..3] {
            users.push(id.resolve(x).await.expect("resolve"));
        }
        assert_eq!(id.cache_stats(), (3, 3));
        // u0 is used again, so u1 is now the least recently resolved.
        assert_eq!(id.resolve(&a[0]).await.expect("resolve"), users[0]);
        for x in &a[3..] {
            users.push(id.resolve(x).await.expect("resolve"));
        }
        assert_eq!(id.cache_stats(), (3, 3), "never more than the capacity");
        assert_eq!(id.cached(&a[0]), Some(users[0]));
        assert_eq!(id.cached(&a[1]), None);
        assert_eq!(id.cached(&a[2]), None);
        assert_eq!(id.cached(&a[3]), Some(users[3]));
        assert_eq!(id.cached(&a[4]), Some(users[4]));
        // An evicted address resolves to the same user again, from the store.
        assert_eq!(id.resolve(&a[1]).await.expect("resolve"), users[1]);
        assert_eq!(id.cached(&a[1]), Some(users[1]));
    }

    #[tokio::test]
    async fn link_and_unlink_invalidate_only_the_addresses_they_touch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = open(&dir, 100);
        let web = addr(ChannelKind::new("webchat"), "w1");
        let http = addr(ChannelKind::new("http"), "h1");
        let tg = addr(ChannelKind::new("telegram"), "t1");
        let other = addr(ChannelKind::new("discord"), "bystander");
        let a = id.resolve(&web).await.expect("a");
        let b = id.resolve(&http).await.expect("b");
        let c = id.resolve(&other).await.expect("c");
        assert_eq!(id.cache_stats().0, 3);

        // Link: both sides are dropped, the bystander stays cached.
        id.link(a, b).await.expect("link");
        assert_eq!(id.cached(&web), None);
        assert_eq!(id.cached(&http), None);
        assert_eq!(
            id.cached(&other),
            Some(c),
            "an unrelated entry stays cached"
        );
        assert_eq!(id.resolve(&http).await.expect("merged"), a);
        assert_eq!(id.resolve(&web).await.expect("kept"), a);

        // Attach an address that has a user of its own with other addresses: only it moves.
        let t = id.resolve(&tg).await.expect("t");
        let tg2 = addr(ChannelKind::new("telegram"), "t2");
        id.attach(t, &tg2).await.expect("attach to t");
        assert_eq!(id.resolve(&tg2).await.expect("t2"), t);
        assert_eq!(id.resolve(&tg).await.expect("t1"), t);
        assert_eq!(id.attach(a, &tg2).await.expect("attach"), t);
        assert_eq!(id.cached(&tg2), None);
        assert_eq!(
            id.cached(&tg),
            Some(t),
            "the address left behind stays cached"
        );
        assert_eq!(id.cached(&web), Some(a));
        assert_eq!(id.resolve(&tg2).await.expect("moved"), a);

        // Unlink: only the unlinked address is dropped.
        let (previous, fresh) = id.unlink(&http).await.expect("unlink");
        assert_eq!(previous, a);
        assert_eq!(id.cached(&http), None);
        assert_eq!(id.cached(&web), Some(a));
        assert_eq!(id.cached(&other), Some(c));
        assert_eq!(id.resolve(&http).await.expect("split"), fresh);
        assert_ne!(fresh, a);
    }

    #[test]
    fn wrong_code_records_older_than_the_window_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = open(&dir, 10);
        let old = Instant::now()
            .checked_sub(FAILURE_WINDOW + Duration::from_secs(1))
            .expect("an instant in the past");
        if let Ok(mut f) = id.failures.lock() {
            for i in 0..FAILURES_PRUNE_AT {
                f.insert(addr(ChannelKind::new("http"), &format!("g{i}")), (1, old));
            }
        }
        id.record_failure(&addr(ChannelKind::new("http"), "fresh"));
        let f = id.failures.lock().expect("lock");
        assert_eq!(f.len(), 1, "only the fresh record is left");
    }
}
