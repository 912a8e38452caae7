//! Users' request keys for serverless (MOSS) requests: fetched from the key broker with fresh
//! evidence on a user's first request for a model, kept for [`USER_KEY_TTL`] (so a revoked grant
//! stops being served within that time), a refusal remembered for [`USER_KEY_RETRY`] (so requests
//! naming an ungranted user cannot hammer the broker), and at most [`MAX_USER_KEYS`] entries.
//! Concurrent first requests from one user share one fetch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enclava_proto::keys::payload::SecretKey;
use tokio::sync::OnceCell;

/// How long a fetched key is used before it is fetched again.
pub const USER_KEY_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is remembered.
pub const USER_KEY_RETRY: Duration = Duration::from_secs(10);
/// A key older than this that fails to open a request is fetched again once (the user may have
/// replaced it).
pub const USER_KEY_REFRESH: Duration = Duration::from_secs(5);
/// Keys (and refusals) kept at most.
pub const MAX_USER_KEYS: usize = 10_000;

/// Why a user's key is not available: a public message, and whether the broker refused (as
/// opposed to being unreachable).
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

impl Entry {
    fn fresh(&self, now: Instant) -> bool {
        let ttl = match self.cell.get() {
            Some(Err(_)) => USER_KEY_RETRY,
            _ => USER_KEY_TTL,
        };
        now.duration_since(self.created) < ttl
    }
}

/// The keys one node holds, by (model, user).
#[derive(Default)]
pub(crate) struct UserKeys {
    entries: Mutex<HashMap<(String, String), Arc<Entry>>>,
}

/// A key and how old it is.
pub(crate) struct Held {
    pub key: SecretKey,
    pub age: Duration,
}

impl UserKeys {
    /// `user`'s key for `model`, fetched with `fetch` unless a fresh one is held.
    pub async fn get<F, Fut>(&self, model: &str, user: &str, fetch: F) -> Result<Held, Unavailable>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        let entry = {
            let now = Instant::now();
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let id = (model.to_owned(), user.to_owned());
            match entries.get(&id) {
                Some(e) if e.fresh(now) => e.clone(),
                _ => {
                    if entries.len() >= MAX_USER_KEYS {
                        entries.retain(|_, e| e.fresh(now));
                    }
                    if entries.len() >= MAX_USER_KEYS {
                        return Err(Unavailable {
                            refused: false,
                            message: "this node holds too many users' keys; try again shortly".into(),
                        });
                    }
                    let e = Arc::new(Entry { cell: OnceCell::new(), created: now });
                    entries.insert(id, e.clone());
                    e
                }
            }
        };
        let key = entry.cell.get_or_init(fetch).await.clone()?;
        Ok(Held { key, age: entry.created.elapsed() })
    }

    /// Forgets `user`'s key for `model`, so the next request fetches it again.
    pub fn forget(&self, model: &str, user: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(&(model.to_owned(), user.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_first_requests_share_one_fetch_and_refusals_are_remembered() {
        let keys = Arc::new(UserKeys::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (keys, fetches) = (keys.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                keys.get("m", "u", || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(SecretKey::from_slice(&[1; 32]).expect("32 bytes"))
                })
                .await
                .map(|h| h.key)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("key").as_bytes(), &[1; 32]);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let refused = || async { Err(Unavailable { refused: true, message: "no".into() }) };
        assert!(keys.get("m", "v", refused).await.is_err());
        let held = keys.get("m", "v", || async { Ok(SecretKey::from_slice(&[2; 32]).expect("32")) }).await;
        assert!(held.is_err(), "the refusal is remembered for a while");

        keys.forget("m", "u");
        let again = keys.get("m", "u", || async { Ok(SecretKey::from_slice(&[3; 32]).expect("32")) }).await;
        assert_eq!(again.expect("refetched").key.as_bytes(), &[3; 32]);
    }
}
