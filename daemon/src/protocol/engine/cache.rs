//! What the engine learns about a homeserver (its OAuth issuer, which rendezvous generation it
//! offers) kept for a short while, so that flows started one after another, or many at once, do
//! not each ask again. A short TTL bounds how long a changed server is misread.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// How long an answer is reused.
pub(super) const TTL: Duration = Duration::from_secs(60);

/// Answers by key, each for [`TTL`].
pub(super) struct Recent<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> Default for Recent<V> {
    fn default() -> Self {
        Self::with_ttl(TTL)
    }
}

impl<V: Clone> Recent<V> {
    pub(super) fn with_ttl(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The kept answer for `key`, or `ask`'s (kept when it is `Ok`).
    pub(super) async fn get_or<E>(&self, key: &str, ask: impl AsyncFnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some((at, v)) = self.entries.lock().expect("cache lock").get(key)
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let v = ask().await?;
        let mut entries = self.entries.lock().expect("cache lock");
        entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        entries.insert(key.to_owned(), (Instant::now(), v.clone()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_reused_until_they_expire_and_errors_are_not_kept() {
        // Long enough that no stall of a loaded machine expires the entry between two calls.
        let ttl = Duration::from_secs(2);
        let cache = Recent::<u32>::with_ttl(ttl);
        let asked = std::sync::atomic::AtomicU32::new(0);
        let ask =
            async || -> Result<u32, ()> { Ok(asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) };
        assert_eq!(cache.get_or("a", ask).await, Ok(0));
        assert_eq!(cache.get_or("a", ask).await, Ok(0));
        assert_eq!(cache.get_or("b", ask).await, Ok(1));
        tokio::time::sleep(ttl).await;
        assert_eq!(cache.get_or("a", ask).await, Ok(2));
        assert_eq!(cache.get_or("c", async || Err::<u32, ()>(())).await, Err(()));
        assert_eq!(cache.get_or("c", ask).await, Ok(3));
    }
}
