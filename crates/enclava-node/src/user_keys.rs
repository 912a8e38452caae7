//! Users' request keys for serverless (MOSS) requests: fetched from the key broker with fresh
//! evidence on a user's first request for a model and kept for [`USER_KEY_TTL`], so a revoked
//! grant stops being served, and a replaced key starts being used, within that time. Concurrent
//! first requests from one user share one fetch.
//!
//! Requests are not authenticated until they open, so anyone can name a user this node has never
//! seen and make it ask the broker. That is bounded: at most [`MAX_CONCURRENT_FETCHES`] fetches at
//! once (a request that cannot get a turn within [`FETCH_WAIT`] gets 503), a refusal is remembered
//! for [`USER_KEY_RETRY`], and refusals are kept apart from granted keys ([`MAX_REFUSALS`]) so made-up
//! user ids can never crowd out real users' keys ([`MAX_USER_KEYS`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enclava_contracts::keys::payload::SecretKey;
use tokio::sync::{OnceCell, Semaphore};

/// How long a fetched key is used before it is fetched again.
pub const USER_KEY_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is remembered.
pub const USER_KEY_RETRY: Duration = Duration::from_secs(10);
/// Granted keys (and fetches under way) kept at most.
pub const MAX_USER_KEYS: usize = 10_000;
/// Refusals remembered at most; past it the oldest are forgotten.
pub const MAX_REFUSALS: usize = 1_000;
/// Fetches from the key broker under way at most.
pub const MAX_CONCURRENT_FETCHES: usize = 4;
/// How long a request waits for its turn to fetch.
pub const FETCH_WAIT: Duration = Duration::from_secs(2);

/// Why a user's key is not available: a public message, and whether the broker refused (as
/// opposed to being unreachable or this node being busy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unavailable {
    pub refused: bool,
    pub message: String,
}

type Fetched = Result<SecretKey, Unavailable>;

struct Entry {
    cell: OnceCell<Fetched>,
    created: Instant,
}

fn busy() -> Unavailable {
    Unavailable { refused: false, message: "this node is busy fetching users' keys; try again shortly".into() }
}

/// The keys one node holds, by (model, user).
pub(crate) struct UserKeys {
    keys: Mutex<HashMap<(String, String), Arc<Entry>>>,
    refusals: Mutex<HashMap<(String, String), (Unavailable, Instant)>>,
    fetches: Semaphore,
}

impl Default for UserKeys {
    fn default() -> Self {
        UserKeys { keys: Mutex::default(), refusals: Mutex::default(), fetches: Semaphore::new(MAX_CONCURRENT_FETCHES) }
    }
}

impl UserKeys {
    /// `user`'s key for `model`, fetched with `fetch` unless a fresh one (or a fresh refusal) is
    /// held.
    pub async fn get<F, Fut>(&self, model: &str, user: &str, fetch: F) -> Result<SecretKey, Unavailable>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        let id = (model.to_owned(), user.to_owned());
        let now = Instant::now();
        if let Some((refusal, at)) = self.refusals.lock().unwrap_or_else(|p| p.into_inner()).get(&id)
            && now.duration_since(*at) < USER_KEY_RETRY
        {
            return Err(refusal.clone());
        }
        let entry = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            match keys.get(&id) {
                Some(e) if now.duration_since(e.created) < USER_KEY_TTL => e.clone(),
                _ => {
                    if keys.len() >= MAX_USER_KEYS {
                        keys.retain(|_, e| now.duration_since(e.created) < USER_KEY_TTL);
                    }
                    if keys.len() >= MAX_USER_KEYS {
                        return Err(busy());
                    }
                    let e = Arc::new(Entry { cell: OnceCell::new(), created: now });
                    keys.insert(id.clone(), e.clone());
                    e
                }
            }
        };
        let result = entry
            .cell
            .get_or_init(|| async {
                let Ok(Ok(_turn)) = tokio::time::timeout(FETCH_WAIT, self.fetches.acquire()).await else {
                    return Err(busy());
                };
                fetch().await
            })
            .await
            .clone();
        if let Err(e) = &result {
            // Only keys are kept in `keys`: a failure is dropped from it (if it is still this
            // entry), and a refusal remembered apart.
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if keys.get(&id).is_some_and(|cur| Arc::ptr_eq(cur, &entry)) {
                keys.remove(&id);
            }
            drop(keys);
            if e.refused {
                let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
                if refusals.len() >= MAX_REFUSALS {
                    refusals.retain(|_, (_, at)| now.duration_since(*at) < USER_KEY_RETRY);
                }
                if refusals.len() >= MAX_REFUSALS
                    && let Some(oldest) = refusals.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
                {
                    refusals.remove(&oldest);
                }
                refusals.insert(id, (e.clone(), Instant::now()));
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(b: u8) -> SecretKey {
        SecretKey::from_slice(&[b; 32]).expect("32 bytes")
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_fetch_and_refusals_are_remembered_apart() {
        let keys = Arc::new(UserKeys::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (keys, fetches) = (keys.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                keys.get("m", "u", || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(key(1))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("key").as_bytes(), &[1; 32]);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let refused = || async { Err(Unavailable { refused: true, message: "no".into() }) };
        assert!(keys.get("m", "v", refused).await.is_err());
        let held = keys.get("m", "v", || async { Ok(key(2)) }).await;
        assert!(held.is_err(), "the refusal is remembered for a while");
        assert_eq!(keys.keys.lock().expect("lock").len(), 1, "refusals are not kept with keys");

        // An unreachable broker is not remembered: the next request tries again.
        let down = || async { Err(Unavailable { refused: false, message: "down".into() }) };
        assert!(keys.get("m", "w", down).await.is_err());
        assert_eq!(keys.get("m", "w", || async { Ok(key(3)) }).await.expect("fetched").as_bytes(), &[3; 32]);
    }

    #[tokio::test]
    async fn made_up_users_never_crowd_out_real_ones() {
        let keys = UserKeys::default();
        for i in 0..(MAX_REFUSALS + 50) {
            let refused = || async { Err(Unavailable { refused: true, message: "no".into() }) };
            assert!(keys.get("m", &format!("fake{i}"), refused).await.is_err());
        }
        assert_eq!(keys.refusals.lock().expect("lock").len(), MAX_REFUSALS);
        assert_eq!(keys.get("m", "real", || async { Ok(key(4)) }).await.expect("served").as_bytes(), &[4; 32]);
    }
}
