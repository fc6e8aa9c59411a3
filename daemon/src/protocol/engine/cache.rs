//! What the engine learns about a homeserver (its OAuth issuer, which rendezvous generation it
//! offers) kept for a short while, so that flows started one after another, or many at once, do
//! not each ask again. A short TTL bounds how long a changed server is misread. Simultaneous misses
//! of one key make one request (single flight): the others wait for its answer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

/// How long an answer is reused.
pub(super) const TTL: Duration = Duration::from_secs(60);

/// Answers by key, each for [`TTL`].
pub(super) struct Recent<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
    /// The key's request in flight: a miss takes its lock, and asks only if the answer is still
    /// missing once it has it.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<V: Clone> Default for Recent<V> {
    fn default() -> Self {
        Self::with_ttl(TTL)
    }
}

impl<V: Clone> Recent<V> {
    pub(super) fn with_ttl(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()), flights: Mutex::new(HashMap::new()) }
    }

    fn kept(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock");
        entries.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    /// The kept answer for `key`, or `ask`'s (kept when it is `Ok`). While one caller asks, the
    /// others missing the same key wait for it and take its answer; after an error the next waiter
    /// asks (errors are not kept).
    pub(super) async fn get_or<E>(&self, key: &str, ask: impl AsyncFnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some(v) = self.kept(key) {
            return Ok(v);
        }
        let flight = Flight::join(self, key);
        let _turn = flight.lock.lock().await;
        if let Some(v) = self.kept(key) {
            return Ok(v);
        }
        let v = ask().await?;
        let mut entries = self.entries.lock().expect("cache lock");
        entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        entries.insert(key.to_owned(), (Instant::now(), v.clone()));
        Ok(v)
    }
}

/// One caller's part in a key's flight; the last to leave removes the flight.
struct Flight<'a, V> {
    cache: &'a Recent<V>,
    key: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a, V> Flight<'a, V> {
    fn join(cache: &'a Recent<V>, key: &'a str) -> Self {
        let lock = cache.flights.lock().expect("cache lock").entry(key.to_owned()).or_default().clone();
        Self { cache, key, lock }
    }
}

impl<V> Drop for Flight<'_, V> {
    fn drop(&mut self) {
        let mut flights = self.cache.flights.lock().expect("cache lock");
        // The map holds one reference and we another: no one else is in this flight.
        if Arc::strong_count(&self.lock) <= 2 {
            flights.remove(self.key);
        }
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

    /// 100 flows that miss at once make one request; the answer goes to all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simultaneous_misses_make_one_request() {
        let cache = Arc::new(Recent::<u32>::default());
        let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let asking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, held) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (cache, asked, asking, mut held) =
                (cache.clone(), asked.clone(), asking.clone(), held.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or("hs", async || {
                        // The answer is held until every caller has missed.
                        asking.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = held.wait_for(|open| *open).await;
                        Ok::<u32, ()>(asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 7)
                    })
                    .await
            }));
        }
        // Every caller has missed: all 100 wait on the flight (it holds 100 + 1), or, were there
        // no single flight, all 100 ask.
        while cache.flights.lock().unwrap().get("hs").map_or(0, Arc::strong_count) < 101
            && asking.load(std::sync::atomic::Ordering::SeqCst) < 100
        {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "one request for 100 misses");
        assert!(cache.flights.lock().unwrap().is_empty(), "no flight left behind");
    }
}
